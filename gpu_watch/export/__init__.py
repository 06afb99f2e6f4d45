"""Exporters: GPUWatch's figures and verdicts where a cluster's monitoring already looks.

``GPUWatch(export=[Prometheus(), OpenTelemetry()])`` names the targets. Each target is a small
frozen settings object; at each run it opens a live exporter (`Exporter`: it reads the run's
latest `Figures` when asked, and `close` sends the final ones). The monitor talks to one
`Exports` per run, never to an exporter:

- on the sampler thread, `tick` with each tick's readings and the loop's totals;
- when the verdict changes (step 0, each epoch end), `judged` with the run's record;
- when the run ends, `finish` with the final record.

Those calls only update a snapshot under a lock. Opening (imports, binding a port) and closing
(the final push, the last OTLP export) run on one export thread shared by the process, in order,
so a run's endpoint is closed before the next run's opens on the same port. A target that fails
is one `GPUWatchWarning`; training and the run folder never notice. `prometheus-client` and the
OpenTelemetry SDK are imported only when a run exports to them.
"""

from __future__ import annotations

import atexit
import importlib.util
import queue
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass
from typing import Any, Protocol

from gpu_watch.errors import GPUWatchWarning, swallowed
from gpu_watch.export.figures import Figures, Snapshot
from gpu_watch.judging.data_wait import LoopTotals
from gpu_watch.runlog import RunRecord
from gpu_watch.sensing.nvml import Device, Reading

__all__ = ["Exporter", "Exports", "Figures", "OpenTelemetry", "Prometheus", "check_targets"]

DEFAULT_PORT = 9445  # clear of node_exporter (9100), dcgm-exporter (9400) and Prometheus (909x)
DEFAULT_OTLP_ENDPOINT = "http://127.0.0.1:4318/v1/metrics"
EXIT_WAIT_S = 10.0  # Python's exit waits this long at most for the final pushes
_QUEUE_SIZE = 64


class Exporter(Protocol):
    """A live export of one run, opened by its target with the run's `Snapshot`."""

    def close(self) -> None:
        """Send the final figures (already in the snapshot) and stop serving."""


def _needs(module: str, extra: str, what: str) -> None:
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing too
        found = False
    if not found:
        raise ImportError(f"{what} needs the {module.split('.')[0]} package: "
                          f'pip install "gpu-watch[{extra}]"')


@dataclass(frozen=True)
class Prometheus:
    """Serve `/metrics` while `fit` runs, and push the final figures to a Pushgateway.

    Args:
        port: Base TCP port of the endpoint. Each worker serves on `port` plus its local rank
            on the host (the launcher's LOCAL_RANK, SLURM_LOCALID or
            OMPI_COMM_WORLD_LOCAL_RANK, else the worker's rank), so workers on one host never
            collide. A port already taken is one warning and no endpoint for that run. 0 lets
            the system pick a free port; None serves nothing (push only). Default 9445.
        address: Address to bind. Default "127.0.0.1" (this host only); name another, such
            as "0.0.0.0", for a Prometheus on another machine.
        pushgateway: Pushgateway address ("host:port" or a URL) that gets the final figures
            when the run ends, under job "gpu_watch" and the grouping key `job_id`, `run`,
            `rank`, `host` (groups are kept until the operator deletes them: see
            docs/cluster.md); None pushes nothing. Default None.
        linger_s: Seconds the endpoint keeps serving the final figures after the run ends,
            so a scrape in that time sees how it ended (`completed`, `failed`, ...); the next
            run of this process on the same port takes the port over at once, and Python's
            exit does not wait for it. 0 closes the endpoint when the run ends. Default 30
            (two scrapes at Prometheus' usual 15 s); allowed 0 to 3600.

    Example:
        >>> GPUWatch(export=Prometheus())                        # http://127.0.0.1:9445/metrics
        >>> GPUWatch(export=Prometheus(pushgateway="127.0.0.1:9091"))
    """

    port: int | None = DEFAULT_PORT
    address: str = "127.0.0.1"
    pushgateway: str | None = None
    linger_s: float = 30.0

    def __post_init__(self) -> None:
        if self.port is not None and (isinstance(self.port, bool) or not isinstance(
                self.port, int) or not 0 <= self.port <= 65535):
            raise ValueError(f"port must be None or a TCP port from 0 to 65535, got "
                             f"{self.port!r}")
        if not isinstance(self.address, str) or not self.address.strip():
            raise ValueError(f"address must be a host address such as '127.0.0.1', got "
                             f"{self.address!r}")
        if self.pushgateway is not None and (not isinstance(self.pushgateway, str)
                                             or not self.pushgateway.strip()):
            raise ValueError(f"pushgateway must be None or an address such as "
                             f"'127.0.0.1:9091', got {self.pushgateway!r}")
        if isinstance(self.linger_s, bool) or not isinstance(
                self.linger_s, (int, float)) or not 0 <= self.linger_s <= 3600:
            raise ValueError(f"linger_s must be between 0 and 3600 seconds, got "
                             f"{self.linger_s!r}")
        if self.port is None and self.pushgateway is None:
            raise ValueError("Prometheus(port=None) needs a pushgateway: with neither, "
                             "nothing is exported")
        _needs("prometheus_client", "prometheus", "Prometheus export")

    def open(self, snapshot: Snapshot) -> Exporter:
        """Start exporting one run."""
        from gpu_watch.export.prometheus import PrometheusExporter

        return PrometheusExporter(self, snapshot)


@dataclass(frozen=True)
class OpenTelemetry:
    """Export the figures as OpenTelemetry metrics over OTLP/HTTP.

    Args:
        endpoint: The OTLP/HTTP metrics endpoint, usually a collector on this host. Default
            "http://127.0.0.1:4318/v1/metrics".
        interval_s: Seconds between exports. Default 10; allowed 1 to 3600.
        meter_provider: An OpenTelemetry SDK `MeterProvider` of yours to add the instruments
            to instead (`endpoint` and `interval_s` are then its readers' business). Default
            None: GPUWatch builds one per run and shuts it down when the run ends.

    Example:
        >>> GPUWatch(export=OpenTelemetry())
    """

    endpoint: str = DEFAULT_OTLP_ENDPOINT
    interval_s: float = 10.0
    meter_provider: InitVar[Any] = None

    def __post_init__(self, meter_provider: Any) -> None:
        if not isinstance(self.endpoint, str) or not self.endpoint.startswith(
                ("http://", "https://")):
            raise ValueError(f"endpoint must be an http:// or https:// URL, got "
                             f"{self.endpoint!r}")
        if isinstance(self.interval_s, bool) or not isinstance(
                self.interval_s, (int, float)) or not 1 <= self.interval_s <= 3600:
            raise ValueError(f"interval_s must be between 1 and 3600 seconds, got "
                             f"{self.interval_s!r}")
        _needs("opentelemetry.sdk", "otel", "OpenTelemetry export")
        if meter_provider is None:
            _needs("opentelemetry.exporter.otlp.proto.http", "otel", "OTLP export")
        # Not a field: the run's recorded config holds the settings, not the provider.
        object.__setattr__(self, "meter_provider", meter_provider)

    def open(self, snapshot: Snapshot) -> Exporter:
        """Start exporting one run."""
        from gpu_watch.export.otel import OpenTelemetryExporter

        return OpenTelemetryExporter(self, snapshot)


Target = Prometheus | OpenTelemetry


def check_targets(export: Any) -> tuple[Target, ...]:
    """`GPUWatch`'s `export` option as a tuple of targets; ValueError naming a bad one."""
    if export is None:
        return ()
    targets = (export,) if isinstance(export, (Prometheus, OpenTelemetry)) else export
    if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence) or not all(
            isinstance(t, (Prometheus, OpenTelemetry)) for t in targets):
        raise ValueError(f"export must be None, gpu_watch.export.Prometheus(...), "
                         f"gpu_watch.export.OpenTelemetry(...) or a list of them, got "
                         f"{export!r}")
    return tuple(targets)


# The export thread ends this long after its last job (a run's close); the next run starts it
# again, so no thread outlives the trainings that need it.
_IDLE_EXIT_S = 1.0


class _Worker:
    """The process's export thread: runs jobs one at a time, in the order they came."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue(
            _QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending: list[threading.Event] = []

    def submit(self, job: Callable[[], None]) -> threading.Event | None:
        """Queue `job`; the event is set when it has run. None when the queue is full."""
        done = threading.Event()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="gpu-watch-export",
                                                daemon=True)
                self._thread.start()
            try:
                self._jobs.put_nowait((job, done))
            except queue.Full:
                return None
            self._pending = [e for e in self._pending if not e.is_set()] + [done]
        return done

    def _run(self) -> None:
        while True:
            try:
                job, done = self._jobs.get(timeout=_IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:  # `submit` starts a new thread for the next job
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            try:
                job()
            finally:
                done.set()

    def wait(self, timeout_s: float) -> bool:
        """Wait until every job queued so far has run, at most `timeout_s`."""
        with self._lock:
            pending = list(self._pending)
        deadline = time.monotonic() + timeout_s
        return all(event.wait(max(0.0, deadline - time.monotonic())) for event in pending)


_worker = _Worker()


class Exports:
    """The exports of one run: what the monitor calls (see the module's docstring).

    Args:
        targets: Where to export (`Prometheus`, `OpenTelemetry`); none makes every call a no-op.
        record: The run's record (`run.json`): its name, rank, backend, verdict and status.
        devices: The watched GPUs.
    """

    def __init__(self, targets: Sequence[Target], record: RunRecord,
                 devices: Sequence[Device]) -> None:
        self.targets = tuple(targets)
        self.snapshot = Snapshot(record, devices) if self.targets else None
        self._opened: list[tuple[Target, Exporter]] = []
        self._warned: set[str] = set()
        self._closed: threading.Event | None = None
        for target in self.targets:
            self._submit(lambda t=target: self._opened.append((t, t.open(self.snapshot))),
                         target)

    @property
    def exporters(self) -> list[Exporter]:
        """The live exporters (those that opened)."""
        return [exporter for _, exporter in self._opened]

    def tick(self, readings: Sequence[Reading], totals: LoopTotals) -> None:
        """One sampler tick (sampler thread): the readings and the loop's totals."""
        if self.snapshot is not None:
            self.snapshot.tick(readings, totals)

    def judged(self, record: RunRecord) -> None:
        """The run's record changed: its verdict, causes or status."""
        if self.snapshot is not None:
            self.snapshot.judged(record)

    def finish(self, record: RunRecord) -> None:
        """The run ended: take its final record, then push and close on the export thread."""
        if self.snapshot is None or self._closed is not None:
            return
        self.snapshot.judged(record)
        self._closed = self._submit(self._close, None) or threading.Event()

    def _close(self) -> None:
        for target, exporter in self._opened:
            try:
                exporter.close()
            except Exception as exc:  # one exporter that fails to close must not keep others open
                swallowed("export.close", exc)
                self._warn(target, exc)

    def wait_handed(self, timeout_s: float) -> bool:
        """Wait until every tick handed so far has reached the exporters (the export thread
        runs behind the sampler), at most `timeout_s`. True when it has."""
        return _worker.wait(timeout_s)

    def wait(self, timeout_s: float) -> bool:
        """Wait until the final figures are sent and the endpoints closed (after `finish`), at
        most `timeout_s`. True when done, or nothing to do."""
        if self._closed is None:
            return self.snapshot is None
        return self._closed.wait(timeout_s)

    def _submit(self, job: Callable[[], None], target: Target | None) -> threading.Event | None:
        def guarded() -> None:
            try:
                job()
            except Exception as exc:  # a failing exporter must never reach training
                swallowed("export.job", exc)
                self._warn(target, exc)

        done = _worker.submit(guarded)
        if done is None:
            self._warn(target, RuntimeError("too many exports waiting"))
        return done

    def _warn(self, target: Target | None, exc: BaseException) -> None:
        name = type(target).__name__ if target is not None else "export"
        if name in self._warned:
            return
        self._warned.add(name)
        warnings.warn(f"gpu-watch's {name} export failed ({exc!r}); training and the run "
                      "folder go on without it.", GPUWatchWarning, stacklevel=2)


@atexit.register
def _wait_for_exports() -> None:
    """A script that ends right after `fit` still sends its final figures (bounded wait)."""
    _worker.wait(EXIT_WAIT_S)
