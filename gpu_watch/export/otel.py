"""OpenTelemetry: the same figures as metrics over OTLP.

Built on the OpenTelemetry SDK and its OTLP/HTTP exporter (``pip install "gpu-watch[otel]"``),
imported only when a run exports to OpenTelemetry. The device's figures follow OpenTelemetry's
hardware semantic conventions (`hw.gpu.utilization`, `hw.gpu.memory.*`, `hw.power`,
`hw.energy`, `hw.gpu.io`, `hw.errors`, with `hw.id` the GPU's UUID and `hw.type` "gpu") and
carry the device's attributes only; the training's own figures are named under `gpu_watch.`
and carry the run's. Every instrument is observable: the SDK reads the run's latest `Figures`
when it collects, so recording costs the training nothing.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from typing import Any

from gpu_watch import runlog
from gpu_watch._version import __version__
from gpu_watch.errors import GPUWatchWarning
from gpu_watch.export.figures import Figures, GPUFigures, Snapshot
from gpu_watch.judging.verdict import VERDICTS

EXPORT_TIMEOUT_S = 5.0
STATUSES = (runlog.STATUS_RUNNING, runlog.STATUS_COMPLETED, runlog.STATUS_STOPPED_IDLE,
            runlog.STATUS_INTERRUPTED, runlog.STATUS_FAILED)

# The device's own figures, by OpenTelemetry's hardware conventions: (instrument, kind, unit,
# description, Figures.gpus attribute, extra attributes). Their attributes name the device
# only (`hw.id`, `hw.type`), never the run: two trainings on one GPU report one device, and a
# counter such as `hw.energy` goes on across runs.
_ECC_ERRORS = ("ECC errors in the GPU's memory since its driver loaded (NVML's volatile counts), "
               "by error.type: corrected or uncorrected. No series on a GPU without ECC.")
DEVICE_INSTRUMENTS = (
    ("hw.gpu.utilization", "gauge", "1",
     "The device's utilization (any process's), 0-1.", "util_ratio",
     {"hw.gpu.task": "general"}),
    ("hw.gpu.memory.usage", "updown", "By", "Memory used on the device.", "memory_used_bytes",
     {}),
    ("hw.gpu.memory.limit", "updown", "By", "The device's memory.", "memory_total_bytes", {}),
    ("hw.gpu.memory.utilization", "gauge", "1", "Share of the device's memory in use, 0-1.",
     "memory_util_ratio", {}),
    ("hw.power", "gauge", "W", "The whole GPU's power draw.", "power_watts", {}),
    ("hw.energy", "counter", "J",
     "Energy the whole GPU used since its driver loaded (NVML's counter).", "energy_counter_j",
     {}),
    ("hw.gpu.io", "counter", "By",
     "PCIe bytes the GPU sent since this process first watched it (GPM, Hopper and newer).",
     "pcie_transmit_bytes", {"network.io.direction": "transmit"}),
    ("hw.gpu.io", "counter", "By",
     "PCIe bytes the GPU received since this process first watched it (GPM, Hopper and newer).",
     "pcie_receive_bytes", {"network.io.direction": "receive"}),
    ("hw.errors", "counter", "{error}", _ECC_ERRORS, "ecc_corrected_errors",
     {"error.type": "corrected"}),
    ("hw.errors", "counter", "{error}", _ECC_ERRORS, "ecc_uncorrected_errors",
     {"error.type": "uncorrected"}),
    ("gpu_watch.gpu.sm_active", "gauge", "1",
     "Share of the GPU's SMs busy (NVML GPM, Hopper and newer), 0-1.", "sm_active_ratio", {}),
)
# This training's figures on each GPU: the run's attributes and the device's.
TRAINING_GPU_INSTRUMENTS = (
    ("gpu_watch.training.gpu.utilization", "gauge", "1",
     "This training's own utilization of the GPU as the verdict judges it, 0-1.",
     "training_util_ratio"),
    ("gpu_watch.training.gpu.memory.usage", "updown", "By",
     "Memory this training's process holds on the GPU.", "training_memory_bytes"),
    ("gpu_watch.gpu.other_processes.utilization", "gauge", "1",
     "Summed SM utilization of the processes on the GPU other than this training's, 0-1.",
     "others_util_ratio"),
    ("gpu_watch.gpu.other_processes", "updown", "{process}",
     "Compute processes NVML lists on the GPU other than this training's.", "other_processes"),
)


def run_attributes(figures: Figures) -> dict[str, Any]:
    """The attributes that say which job, run, worker and host a figure is about."""
    labels = figures.labels
    return {"gpu_watch.job_id": labels.job_id, "gpu_watch.run": labels.run,
            "gpu_watch.rank": labels.rank, "host.name": labels.host,
            "gpu_watch.backend": labels.backend}


def device_attributes(gpu: GPUFigures) -> dict[str, Any]:
    """The attributes that name a device: its UUID, and a MIG instance's parent."""
    found: dict[str, Any] = {"hw.id": gpu.uuid, "hw.type": "gpu"}
    if gpu.parent_uuid is not None:
        found["hw.parent"] = gpu.parent_uuid
    return found


def observations(figures: Figures) -> dict[str, list[tuple[float, dict[str, Any]]]]:
    """Each instrument's (value, attributes) pairs for one snapshot."""
    run = run_attributes(figures)
    out: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for name, _, _, _, attribute, extra in DEVICE_INSTRUMENTS:
        out.setdefault(name, []).extend(
            (float(value), {**device_attributes(gpu), **extra})
            for gpu in figures.gpus if (value := getattr(gpu, attribute)) is not None)
    for name, _, _, _, attribute in TRAINING_GPU_INSTRUMENTS:
        out[name] = [
            (float(value), {**run, **device_attributes(gpu), "gpu_watch.gpu": gpu.index})
            for gpu in figures.gpus if (value := getattr(gpu, attribute)) is not None]
    out["gpu_watch.steps"] = [(float(figures.steps), run)]
    out["gpu_watch.compute.time"] = [(figures.step_seconds, run)]
    out["gpu_watch.data_wait.time"] = [(figures.wait_seconds, run)]
    out["gpu_watch.other.time"] = [(figures.other_seconds, run)]
    out["gpu_watch.loop.time"] = [(figures.loop_seconds, run)]
    out["gpu_watch.input_busy.time"] = [(figures.input_seconds, run)]
    out["gpu_watch.data_wait"] = ([] if figures.wait_ratio is None
                                  else [(figures.wait_ratio, run)])
    out["gpu_watch.run.info"] = [(1.0, {**run, "gpu_watch.version": figures.labels.version,
                                        "gpu_watch.world_size": figures.labels.world_size})]
    out["gpu_watch.verdict"] = [(float(v == figures.verdict), {**run, "gpu_watch.verdict": v})
                                for v in VERDICTS]
    out["gpu_watch.cause"] = [(1.0, {**run, "gpu_watch.cause": code})
                              for code in figures.causes]
    out["gpu_watch.run.status"] = [(float(s == figures.status),
                                    {**run, "gpu_watch.run.status": s}) for s in STATUSES]
    return out


RUN_INSTRUMENTS = (
    ("gpu_watch.steps", "counter", "{step}", "Training steps run so far."),
    ("gpu_watch.compute.time", "counter", "s", "Time spent in training steps so far."),
    ("gpu_watch.data_wait.time", "counter", "s",
     "Time the training loop spent waiting for data so far."),
    ("gpu_watch.other.time", "counter", "s",
     "Time between steps spent neither computing nor waiting for data so far."),
    ("gpu_watch.loop.time", "counter", "s",
     "The training loop's time so far: compute, data wait and other time together."),
    ("gpu_watch.input_busy.time", "counter", "s",
     "Time of the loop the stack sampler saw the input pipeline at work so far."),
    ("gpu_watch.data_wait", "gauge", "1",
     "Share of the training loop's time spent waiting for data, 0-1, cumulative since the run "
     "began."),
    ("gpu_watch.run.info", "gauge", "1", "The run's facts as attributes; always 1."),
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
        specs = {n: (k, u, d) for n, k, u, d, *_ in DEVICE_INSTRUMENTS}  # one per name
        specs.update({n: (k, u, d) for n, k, u, d, _ in TRAINING_GPU_INSTRUMENTS})
        specs.update({n: (k, u, d) for n, k, u, d in RUN_INSTRUMENTS})
        for name, (kind, unit, description) in specs.items():
            def observe(options: Any, _name: str = name) -> Iterator[Any]:
                for value, attributes in self._observe(_name):
                    yield Observation(value, attributes)

            create[kind](name, callbacks=[observe], unit=unit, description=description)

    def _observe(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            snapshots = list(self._runs)
        # Runs on one GPU observe the same device: one point per set of attributes (the
        # newest run's), never a duplicate the SDK would have to drop.
        found: dict[frozenset, tuple[float, dict[str, Any]]] = {}
        for snapshot in snapshots:
            for value, attributes in observations(snapshot.figures())[name]:
                found[frozenset(attributes.items())] = (value, attributes)
        return list(found.values())

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
