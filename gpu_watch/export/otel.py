"""OpenTelemetry: the same figures as metrics over OTLP.

Built on the OpenTelemetry SDK and its OTLP/HTTP exporter (``pip install "gpu-watch[otel]"``),
imported only when a run exports to OpenTelemetry. The GPU figures follow OpenTelemetry's
hardware semantic conventions (`hw.gpu.utilization`, `hw.gpu.memory.usage`,
`hw.gpu.memory.limit`, `hw.energy`, with `hw.id` the GPU's UUID and `hw.type` "gpu"); the rest
are named under `gpu_watch.`. Every instrument is observable: the SDK reads the run's latest
`Figures` when it collects, so recording costs the training nothing.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from typing import Any

from gpu_watch import runlog
from gpu_watch._version import __version__
from gpu_watch.errors import GPUWatchWarning
from gpu_watch.export.figures import Figures, Snapshot
from gpu_watch.verdict import VERDICTS

EXPORT_TIMEOUT_S = 5.0
STATUSES = (runlog.STATUS_RUNNING, runlog.STATUS_COMPLETED, runlog.STATUS_STOPPED_IDLE,
            runlog.STATUS_INTERRUPTED, runlog.STATUS_FAILED)

# GPU figures: (instrument, kind, unit, description, Figures.gpus attribute).
GPU_INSTRUMENTS = (
    ("hw.gpu.utilization", "gauge", "1",
     "The device's utilization (any process's), 0-1.", "util_ratio"),
    ("hw.gpu.memory.usage", "updown", "By", "Memory used on the device.", "memory_used_bytes"),
    ("hw.gpu.memory.limit", "updown", "By", "The device's memory.", "memory_total_bytes"),
    ("hw.energy", "counter", "J", "Energy the whole GPU used since this run started.",
     "energy_j"),
    ("gpu_watch.training.gpu.utilization", "gauge", "1",
     "This training's own utilization of the GPU as the verdict judges it, 0-1.",
     "training_util_ratio"),
    ("gpu_watch.training.gpu.memory.usage", "updown", "By",
     "Memory this training's process holds on the GPU.", "training_memory_bytes"),
    ("gpu_watch.gpu.sm_active", "gauge", "1",
     "Share of the GPU's SMs busy (NVML GPM, Hopper and newer), 0-1.", "sm_active_ratio"),
    ("gpu_watch.gpu.other_processes.utilization", "gauge", "1",
     "Summed SM utilization of the other processes on the GPU, 0-1.", "others_util_ratio"),
    ("gpu_watch.gpu.other_processes", "updown", "{process}",
     "Other compute processes NVML lists on the GPU.", "other_processes"),
)


def run_attributes(figures: Figures) -> dict[str, Any]:
    """The attributes that say which run, worker and host a figure is about."""
    labels = figures.labels
    return {"gpu_watch.run": labels.run, "gpu_watch.rank": labels.rank,
            "host.name": labels.host, "gpu_watch.backend": labels.backend}


def observations(figures: Figures) -> dict[str, list[tuple[float, dict[str, Any]]]]:
    """Each instrument's (value, attributes) pairs for one snapshot."""
    run = run_attributes(figures)
    out: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for name, _, _, _, attribute in GPU_INSTRUMENTS:
        out[name] = [
            (float(value), {**run, "hw.id": gpu.uuid, "hw.type": "gpu",
                            "gpu_watch.gpu": gpu.index})
            for gpu in figures.gpus if (value := getattr(gpu, attribute)) is not None]
    out["gpu_watch.steps"] = [(float(figures.steps), run)]
    out["gpu_watch.step.time"] = [(figures.step_seconds, run)]
    out["gpu_watch.data_wait"] = ([] if figures.wait_ratio is None
                                  else [(figures.wait_ratio, run)])
    out["gpu_watch.verdict"] = [(float(v == figures.verdict), {**run, "gpu_watch.verdict": v})
                                for v in VERDICTS]
    out["gpu_watch.cause"] = [(1.0, {**run, "gpu_watch.cause": code})
                              for code in figures.causes]
    out["gpu_watch.run.status"] = [(float(s == figures.status),
                                    {**run, "gpu_watch.run.status": s}) for s in STATUSES]
    return out


RUN_INSTRUMENTS = (
    ("gpu_watch.steps", "counter", "{step}", "Training steps run so far."),
    ("gpu_watch.step.time", "counter", "s", "Time spent in training steps so far."),
    ("gpu_watch.data_wait", "gauge", "1",
     "Share of the training loop's time spent waiting for data, 0-1."),
    ("gpu_watch.verdict", "gauge", "1", "The run's verdict so far: 1 for the current one."),
    ("gpu_watch.cause", "gauge", "1", "The causes the run's verdict names now."),
    ("gpu_watch.run.status", "gauge", "1", "Whether the run is running, or how it ended."),
)


class _Instruments:
    """The observable instruments of one meter provider, created once per provider (a
    provider refuses a second instrument of the same name) and fed by every run exporting
    through it: the running ones, and the last finished ones until another run starts."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.metrics import Observation

        self.provider = provider
        self._lock = threading.Lock()
        self._runs: dict[Snapshot, bool] = {}  # snapshot -> finished
        meter = provider.get_meter("gpu_watch", __version__)
        create = {"gauge": meter.create_observable_gauge,
                  "updown": meter.create_observable_up_down_counter,
                  "counter": meter.create_observable_counter}
        specs = [(n, k, u, d) for n, k, u, d, _ in GPU_INSTRUMENTS] + list(RUN_INSTRUMENTS)
        for name, kind, unit, description in specs:
            def observe(options: Any, _name: str = name) -> Iterator[Any]:
                for value, attributes in self._observe(_name):
                    yield Observation(value, attributes)

            create[kind](name, callbacks=[observe], unit=unit, description=description)

    def _observe(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            snapshots = list(self._runs)
        found = []
        for snapshot in snapshots:
            found += observations(snapshot.figures())[name]
        return found

    def add(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._runs = {s: done for s, done in self._runs.items() if not done}
            self._runs[snapshot] = False

    def finished(self, snapshot: Snapshot) -> None:
        with self._lock:
            if snapshot in self._runs:
                self._runs[snapshot] = True


_providers: dict[int, _Instruments] = {}
_providers_lock = threading.Lock()


def _instruments(provider: Any) -> _Instruments:
    with _providers_lock:
        found = _providers.get(id(provider))
        if found is None or found.provider is not provider:
            found = _providers[id(provider)] = _Instruments(provider)
        return found


def _warn_on_failure(exporter: Any, endpoint: str) -> Any:
    """`exporter` wrapped so that a failed export is one warning per run, not an exception."""
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

    class WarnOnFailure(MetricExporter):
        def __init__(self) -> None:
            super().__init__(preferred_temporality=exporter._preferred_temporality,
                             preferred_aggregation=exporter._preferred_aggregation)
            self.failures = 0

        def export(self, metrics_data: Any, timeout_millis: float = 10_000,
                   **kwargs: Any) -> Any:
            try:
                result = exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
            except Exception as exc:  # a collector down or refusing must never reach training
                result, reason = MetricExportResult.FAILURE, repr(exc)
            else:
                reason = "the collector did not accept them"
            if result is MetricExportResult.FAILURE:
                self.failures += 1
                if self.failures == 1:
                    warnings.warn(f"gpu-watch could not export its metrics over OTLP to "
                                  f"{endpoint} ({reason}); training and the run folder go on.",
                                  GPUWatchWarning, stacklevel=2)
            return result

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return exporter.force_flush(timeout_millis)

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            exporter.shutdown(timeout_millis=timeout_millis, **kwargs)

    return WarnOnFailure()


class OpenTelemetryExporter:
    """A live OpenTelemetry export of one run.

    With no meter provider given, it builds its own: a periodic reader sending OTLP/HTTP to
    the endpoint, shut down (after a last export) when the run ends. With the user's provider,
    it only adds its instruments to it and flushes it when the run ends.
    """

    def __init__(self, settings: Any, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._own = settings.meter_provider is None
        provider = settings.meter_provider
        if provider is None:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.resources import Resource

            otlp = OTLPMetricExporter(endpoint=settings.endpoint, timeout=EXPORT_TIMEOUT_S)
            reader = PeriodicExportingMetricReader(
                _warn_on_failure(otlp, settings.endpoint),
                export_interval_millis=settings.interval_s * 1000,
                export_timeout_millis=EXPORT_TIMEOUT_S * 1000)
            resource = Resource.create({"service.name": "gpu-watch",
                                        "host.name": snapshot.figures().labels.host})
            provider = MeterProvider(metric_readers=[reader], resource=resource)
        self._provider = provider
        self._instruments = _instruments(provider)
        self._instruments.add(snapshot)

    def close(self) -> None:
        """Export the final figures and, for its own provider, shut it down."""
        timeout_ms = EXPORT_TIMEOUT_S * 1000
        if self._own:
            self._provider.shutdown(timeout_millis=timeout_ms)  # a last collection and export
            with _providers_lock:
                _providers.pop(id(self._provider), None)
        else:
            self._instruments.finished(self._snapshot)
            self._provider.force_flush(timeout_millis=timeout_ms)
