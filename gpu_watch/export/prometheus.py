"""Prometheus: a `/metrics` endpoint while `fit` runs, and the final figures pushed to a
Pushgateway for batch jobs that end between two scrapes.

Built on `prometheus-client` (``pip install "gpu-watch[prometheus]"``), imported only when a run
exports to Prometheus. Names follow Prometheus' conventions: base units, ratios from 0 to 1,
counters ending in `_total`. The metrics are rendered at scrape time from the run's latest
`Figures`, so a scrape costs the training nothing and a figure not measured has no series.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from gpu_watch import runlog
from gpu_watch.errors import GPUWatchWarning, swallowed
from gpu_watch.export.figures import Figures, GPUFigures, RunLabels, Snapshot
from gpu_watch.judging.verdict import VERDICTS

PATH = "/metrics"
JOB = "gpu_watch"
PUSH_TIMEOUT_S = 5.0
# Launchers that start several workers per host say which one a process is; the first set wins.
LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK")
# `job_id` is shared by every rank of one training, `run` is this rank's own; the Kubernetes
# labels are empty (no label at all) outside a pod.
RUN_LABELS = ("job_id", "run", "rank", "host", "backend", "namespace", "pod", "container")
# dcgm-exporter's names, so its series join these without renaming: `UUID` (a MIG instance's
# parent GPU, with `GPU_I_ID` its instance), `Hostname`; `minor_number` is the host's GPU
# number where `gpu` is this process's NVML index (a container counts its GPUs from 0).
GPU_LABELS = (*RUN_LABELS, "gpu", "UUID", "GPU_I_ID", "minor_number", "Hostname")
STATUSES = (runlog.STATUS_RUNNING, runlog.STATUS_COMPLETED, runlog.STATUS_STOPPED_IDLE,
            runlog.STATUS_INTERRUPTED, runlog.STATUS_FAILED)

# GPU figures: (metric name, type, help, Figures.gpus attribute).
GPU_METRICS = (
    ("gpu_watch_gpu_utilization_ratio", "gauge",
     "The device's utilization: share of the last sample period in which a kernel ran, any "
     "process's (NVML), 0-1.", "util_ratio"),
    ("gpu_watch_training_gpu_utilization_ratio", "gauge",
     "This training's own utilization of the GPU as the verdict judges it, 0-1.",
     "training_util_ratio"),
    ("gpu_watch_gpu_memory_used_bytes", "gauge", "Memory used on the device, any process's.",
     "memory_used_bytes"),
    ("gpu_watch_gpu_memory_total_bytes", "gauge", "The device's memory.", "memory_total_bytes"),
    ("gpu_watch_training_gpu_memory_used_bytes", "gauge",
     "Memory this training's process holds on the GPU.", "training_memory_bytes"),
    ("gpu_watch_gpu_sm_active_ratio", "gauge",
     "Share of the GPU's SMs busy (NVML GPM, Hopper and newer), 0-1.", "sm_active_ratio"),
    ("gpu_watch_gpu_energy_joules", "counter",
     "Energy the whole GPU used since this run started (NVML has no per-process energy).",
     "energy_j"),
    ("gpu_watch_gpu_power_watts", "gauge", "The whole GPU's power draw.", "power_watts"),
    ("gpu_watch_gpu_other_processes_utilization_ratio", "gauge",
     "Summed SM utilization of the other processes on the GPU, 0-1.", "others_util_ratio"),
    ("gpu_watch_gpu_other_processes", "gauge",
     "Other compute processes NVML lists on the GPU.", "other_processes"),
)


def local_port(port: int, rank: int, environ: dict[str, str] | None = None) -> int:
    """The port a worker serves on: `port` plus its local rank on the host (the launcher's
    LOCAL_RANK, SLURM_LOCALID or OMPI_COMM_WORLD_LOCAL_RANK, else the worker's rank), so
    several workers on one host never ask for the same port. Port 0 (any free port) stays 0."""
    if port == 0:
        return 0
    environ = os.environ if environ is None else environ
    offset = rank
    for name in LOCAL_RANK_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            offset = int(value)
            break
    return port + offset


def families(figures: Figures) -> Iterator[Any]:
    """The metric families of one snapshot (prometheus_client's custom-collector objects)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        StateSetMetricFamily,
    )

    labels = figures.labels
    run = [labels.job_id, labels.run, str(labels.rank), labels.host, labels.backend,
           labels.namespace, labels.pod, labels.container]
    info = GaugeMetricFamily("gpu_watch_run_info", "The run's facts as labels; always 1.",
                             labels=(*RUN_LABELS, "version", "world_size"))
    info.add_metric([*run, labels.version, str(labels.world_size)], 1.0)
    yield info
    for name, kind, text, attribute in GPU_METRICS:
        cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        family = cls(name, text, labels=GPU_LABELS)
        for gpu in figures.gpus:
            value = getattr(gpu, attribute)
            if value is not None:
                family.add_metric([*run, *gpu_labels(gpu, labels.node)], float(value))
        yield family
    steps = CounterMetricFamily("gpu_watch_steps", "Training steps run so far.",
                                labels=RUN_LABELS)
    steps.add_metric(run, float(figures.steps))
    yield steps
    for name, text, value in (
            ("gpu_watch_compute_seconds", "Time spent in training steps so far; over "
             "gpu_watch_steps_total, the mean step time.", figures.step_seconds),
            ("gpu_watch_data_wait_seconds", "Time the training loop spent waiting for data "
             "so far; its rate over gpu_watch_loop_seconds_total's is the recent share.",
             figures.wait_seconds),
            ("gpu_watch_other_seconds", "Time between steps spent neither computing nor "
             "waiting for data (other callbacks, Keras' own bookkeeping) so far.",
             figures.other_seconds),
            ("gpu_watch_loop_seconds", "The training loop's time so far: compute, data wait "
             "and other seconds together.", figures.loop_seconds),
            ("gpu_watch_input_busy_seconds", "Time of the loop the stack sampler saw the input "
             "pipeline at work so far (fetching, or a Python producer behind tf.data "
             "running); 0 where every fetch is timed. Not a wait: a pipeline that reads ahead "
             "works while the loop does not wait for it.", figures.input_seconds)):
        counter = CounterMetricFamily(name, text, labels=RUN_LABELS)
        counter.add_metric(run, value)
        yield counter
    wait = GaugeMetricFamily("gpu_watch_data_wait_ratio",
                             "Share of the training loop's time spent waiting for data, 0-1, "
                             "cumulative since the run began (the verdict's figure); rate() "
                             "the seconds counters for a recent window.", labels=RUN_LABELS)
    if figures.wait_ratio is not None:
        wait.add_metric(run, figures.wait_ratio)
    yield wait
    verdict = StateSetMetricFamily("gpu_watch_verdict",
                                   "The run's verdict so far: 1 for the current one.",
                                   labels=RUN_LABELS)
    verdict.add_metric(run, {v: v == figures.verdict for v in VERDICTS})
    yield verdict
    causes = GaugeMetricFamily("gpu_watch_cause", "The causes the run's verdict names now.",
                               labels=(*RUN_LABELS, "cause"))
    for code in figures.causes:
        causes.add_metric([*run, code], 1.0)
    yield causes
    status = StateSetMetricFamily("gpu_watch_run_status",
                                  "Whether the run is running, or how it ended.",
                                  labels=RUN_LABELS)
    status.add_metric(run, {s: s == figures.status for s in STATUSES})
    yield status


def gpu_labels(gpu: GPUFigures, node: str) -> list[str]:
    """The GPU labels after the run's (see `GPU_LABELS`); "" (no label) where unknown."""
    mig = gpu.parent_uuid is not None
    return [str(gpu.index), gpu.parent_uuid if mig else gpu.uuid,
            "" if gpu.gpu_instance_id is None else str(gpu.gpu_instance_id),
            "" if gpu.minor_number is None else str(gpu.minor_number), node]


def grouping_key(labels: RunLabels) -> dict[str, str]:
    """The Pushgateway group of one rank's run (after job `gpu_watch`): the job, the run, the
    rank and the host, so two runs of one name on two hosts never replace each other."""
    return {"job_id": labels.job_id, "run": labels.run, "rank": str(labels.rank),
            "host": labels.host}


class _Collector:
    """Renders the run's latest figures at every scrape."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        yield from families(self._snapshot.figures())


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: Any) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.registry = registry
        self.errors = 0
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics and nothing else (other paths 404, other methods 501)."""

    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if urlsplit(self.path).path != PATH:
            self.send_error(404, f"only {PATH} is served here")
            return
        from prometheus_client.exposition import choose_encoder

        try:
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            body = encoder(self.server.registry)
        except Exception as exc:  # a failed scrape must never reach training
            swallowed("export.scrape", exc)  # our collector's bug: the scraper gets a 500
            self.server.errors += 1
            if self.server.errors == 1:
                warnings.warn(f"gpu-watch could not render its metrics for a scrape ({exc!r}); "
                              "training and the run folder go on.", GPUWatchWarning,
                              stacklevel=2)
            self.send_error(500, "gpu-watch could not render its metrics")
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Scrapes are not logged: they come every few seconds for as long as training runs."""


class _Lingering:
    """Endpoints of finished runs that still serve their final figures, by (address, port):
    each closes when its time is up, or when the next run asks for its port."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[tuple[str, int], _Server] = {}

    def keep(self, address: str, server: _Server, seconds: float) -> None:
        key = (address, server.server_address[1])
        with self._lock:
            self._servers[key] = server
        timer = threading.Timer(seconds, self._end, (key, server))
        timer.daemon = True
        timer.start()

    def release(self, address: str, port: int) -> None:
        """Close the finished run's endpoint on this port now, if one is still serving."""
        with self._lock:
            server = self._servers.pop((address, port), None)
        if server is not None:
            _stop(server)

    def _end(self, key: tuple[str, int], server: _Server) -> None:
        with self._lock:
            if self._servers.get(key) is not server:
                return  # taken over by a later run, and closed then
            del self._servers[key]
        _stop(server)


def _stop(server: _Server) -> None:
    server.shutdown()
    server.server_close()


_lingering = _Lingering()


def close_lingering() -> None:
    """Close now every finished run's endpoint that still serves its final figures."""
    with _lingering._lock:
        servers, _lingering._servers = list(_lingering._servers.values()), {}
    for server in servers:
        _stop(server)


class PrometheusExporter:
    """A live Prometheus export of one run: the endpoint (when it could bind) and the push.

    Attributes:
        url: The endpoint's address, None when it is not served.
    """

    def __init__(self, settings: Any, snapshot: Snapshot) -> None:
        from prometheus_client import CollectorRegistry

        self._settings = settings
        self._snapshot = snapshot
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(snapshot))
        self._server: _Server | None = None
        self.url: str | None = None
        if settings.port is not None:
            self._serve()

    def _serve(self) -> None:
        labels = self._snapshot.figures().labels
        port = local_port(self._settings.port, labels.rank)
        address = self._settings.address
        if port:
            _lingering.release(address, port)
        try:
            server = _Server((address, port), self.registry)
        except OSError as exc:
            rule = "" if port == self._settings.port else (
                f" (port {self._settings.port} + local rank {port - self._settings.port})")
            warnings.warn(
                f"gpu-watch could not serve Prometheus metrics on {address}:{port}{rule}: "
                f"{exc}. Training goes on without the endpoint"
                f"{'; the final figures are still pushed' if self._settings.pushgateway else ''}"
                ". Pick a base port whose next ports are free: Prometheus(port=...).",
                GPUWatchWarning, stacklevel=2)
            return
        self._server = server
        host = f"[{address}]" if ":" in address else address
        self.url = f"http://{host}:{server.server_address[1]}{PATH}"
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                         name="gpu-watch-metrics", daemon=True).start()

    def close(self) -> None:
        """Push the final figures (if a Pushgateway is named), then stop serving: at once, or
        after `linger_s`, serving the final figures until then."""
        try:
            if self._settings.pushgateway:
                self._push()
        finally:
            server, self._server = self._server, None
            if server is not None:
                if self._settings.linger_s > 0:
                    _lingering.keep(self._settings.address, server, self._settings.linger_s)
                else:
                    _stop(server)

    def _push(self) -> None:
        from prometheus_client import push_to_gateway

        labels = self._snapshot.figures().labels
        try:
            push_to_gateway(self._settings.pushgateway, job=JOB, registry=self.registry,
                            grouping_key=grouping_key(labels), timeout=PUSH_TIMEOUT_S)
        except Exception as exc:  # unreachable, refused, timed out: one warning, nothing lost
            warnings.warn(f"gpu-watch could not push its final figures to the Pushgateway at "
                          f"{self._settings.pushgateway} ({exc}); the run folder has them.",
                          GPUWatchWarning, stacklevel=2)
