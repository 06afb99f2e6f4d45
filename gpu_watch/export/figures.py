"""The figures every exporter publishes, kept once per run as the latest snapshot.

The sampler thread hands each tick's readings over, the monitor hands the run's record over
whenever the verdict changes (step 0, each epoch end, the end of the run); an exporter reads a
frozen `Figures` whenever it is asked (a scrape, an OpenTelemetry collection, the final push).
Units are those of the exporters: ratios 0-1, bytes, joules, seconds. A figure not measured is
None and becomes no series at all, never 0: "not measured" must not read as "idle".
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gpu_watch.judging.data_wait import LoopTotals
from gpu_watch.judging.usage import EnergyMeter
from gpu_watch.runlog import RunRecord
from gpu_watch.sensing.nvml import Device, Reading

_BYTES_PER_MIB = 1024 * 1024
# Not every tick brings every figure: NVML samples processes every 1/6 s to 1 s, GPM is read
# once a second, and slow-changing figures may be read at a slower rate. A figure stands until
# a newer one, for at most this long; then it has no series (NVML's reading turns a listed
# process without a sample for 2 s into 0 %, so an idle process is never held as busy).
HOLD_S = 5.0


@dataclass(frozen=True)
class RunLabels:
    """Who the figures are about: bounded labels only (no PIDs, no process names).

    Attributes:
        job_id: The id every rank of the training shares (`run.json` `job_id`).
        run: This rank's run folder name. rank: Its rank. host: The host it runs on.
        backend: The Keras backend. version: gpu-watch's version. world_size: The ranks.
        node: The node's name as the cluster knows it (in a Kubernetes pod, `NODE_NAME` set
            from the downward API's `spec.nodeName`; else `host`): dcgm-exporter's `Hostname`.
        namespace, pod, container: The Kubernetes pod, from the environment variables
            `POD_NAMESPACE`, `POD_NAME` (the downward API's `metadata.namespace` and
            `metadata.name`) and `CONTAINER_NAME` (the container's name, written in the pod
            spec); "" outside a pod (no `KUBERNETES_SERVICE_HOST`) or where unset.
    """

    run: str
    rank: int
    host: str
    backend: str
    job_id: str = ""
    version: str = ""
    world_size: int = 1
    node: str = ""
    namespace: str = ""
    pod: str = ""
    container: str = ""

    @classmethod
    def from_record(cls, record: RunRecord,
                    environ: Mapping[str, str] | None = None) -> RunLabels:
        """The labels of a run from its `run.json` record and the environment."""
        environ = os.environ if environ is None else environ
        host = (record.writer or {}).get("host") or socket.gethostname()
        # Every pod has KUBERNETES_SERVICE_HOST; outside one, names such as NODE_NAME or
        # CONTAINER_NAME may mean something else entirely.
        pod = environ if environ.get("KUBERNETES_SERVICE_HOST") else {}
        return cls(run=str(record.run_name), rank=int(record.rank or 0), host=host,
                   backend=str(record.backend or ""),
                   job_id=str(record.job_id or record.run_name),
                   version=str(record.gpu_watch_version or ""),
                   world_size=int(record.world_size or 1),
                   node=pod.get("NODE_NAME", "").strip() or host,
                   namespace=pod.get("POD_NAMESPACE", "").strip(),
                   pod=pod.get("POD_NAME", "").strip(),
                   container=pod.get("CONTAINER_NAME", "").strip())


@dataclass(frozen=True)
class GPUFigures:
    """One watched GPU at the latest tick.

    Attributes:
        index: NVML index (the process's: a container counts its GPUs from 0).
        uuid: `GPU-...` or `MIG-...`.
        minor_number: The host's number of the GPU (`/dev/nvidia<N>`), None when unknown.
        parent_uuid: A MIG instance's parent GPU; None for a whole GPU.
        gpu_instance_id: A MIG instance's GPU instance id; None for a whole GPU.
        util_ratio: The device's utilization (any process), 0-1.
        training_util_ratio: This training's own utilization of it, 0-1, as the verdict
            judges it; None when the reading cannot tell.
        memory_used_bytes, memory_total_bytes: The device's memory.
        training_memory_bytes: Memory this process holds on it.
        sm_active_ratio: Share of the SMs busy (GPM, Hopper and newer), 0-1.
        energy_j: Energy the whole GPU used since the run started, joules.
        energy_counter_j: NVML's energy counter of the whole GPU: joules since the driver
            loaded (it does not restart with a run).
        power_watts: The whole GPU's power draw.
        memory_util_ratio: The memory used over the device's memory, 0-1.
        pcie_transmit_bytes, pcie_receive_bytes: PCIe traffic from and to the GPU since this
            process first watched it, bytes (GPM's throughput summed over time; Hopper and
            newer).
        others_util_ratio: Summed SM utilization of the other processes on it, 0-1.
        other_processes: How many other compute processes NVML lists on it.
        ecc_corrected_errors, ecc_uncorrected_errors: ECC errors in the whole GPU's memory
            since its driver loaded (NVML's volatile counts); None on a GPU without ECC.
    """

    index: int
    uuid: str
    minor_number: int | None = None
    parent_uuid: str | None = None
    gpu_instance_id: int | None = None
    util_ratio: float | None = None
    training_util_ratio: float | None = None
    memory_used_bytes: float | None = None
    memory_total_bytes: float | None = None
    training_memory_bytes: float | None = None
    sm_active_ratio: float | None = None
    energy_j: float | None = None
    energy_counter_j: float | None = None
    power_watts: float | None = None
    memory_util_ratio: float | None = None
    pcie_transmit_bytes: float | None = None
    pcie_receive_bytes: float | None = None
    others_util_ratio: float | None = None
    other_processes: int | None = None
    ecc_corrected_errors: int | None = None
    ecc_uncorrected_errors: int | None = None


@dataclass(frozen=True)
class Figures:
    """The run at one moment: its labels, each GPU, the loop and the judgement.

    Attributes:
        steps: Training steps so far. step_seconds: Their summed duration (compute), seconds.
        wait_seconds: Seconds the loop waited for data so far. other_seconds: Seconds between
            steps spent elsewhere (other callbacks, Keras' own bookkeeping).
        wait_ratio: The run's judged share of the loop's time spent waiting for data, 0-1,
            cumulative since the run began (step 0 left out); a rate of `wait_seconds` over
            `loop_seconds` shows a recent window.
        input_seconds: Seconds of the loop the stack sampler saw the input at work (0 where
            every fetch is timed and it does not look).
        verdict: The run's verdict so far (None before any). causes: Its cause codes.
        status: `running`, then how the run ended (`completed`, `failed`, ...).
    """

    labels: RunLabels
    gpus: tuple[GPUFigures, ...] = ()
    steps: int = 0
    step_seconds: float = 0.0
    wait_seconds: float = 0.0
    other_seconds: float = 0.0
    wait_ratio: float | None = None
    input_seconds: float = 0.0
    verdict: str | None = None
    causes: tuple[str, ...] = ()
    status: str = "running"

    @property
    def loop_seconds(self) -> float:
        """The loop's seconds so far: computing, waiting for data and the rest between steps."""
        return self.step_seconds + self.wait_seconds + self.other_seconds


def training_util_pct(reading: Reading) -> float | None:
    """This training's utilization in one reading, percent, as the verdicts judge it (the
    timeline sets it on every reading before the exporters see it)."""
    return reading.judged_util_pct


class Snapshot:
    """The latest `Figures` of one run, safe to update and read from any thread."""

    def __init__(self, record: RunRecord, devices: Sequence[Device]) -> None:
        self._lock = threading.Lock()
        self._devices = {d.nvml_index: d for d in devices}
        self._energy = {d.nvml_index: EnergyMeter() for d in devices}
        self._gpus = {d.nvml_index: _gpu_figures(d) for d in devices}
        self._held: dict[tuple[int, str], tuple[float, float]] = {}
        self._pcie_last_s: dict[int, float] = {}
        self._figures = Figures(labels=RunLabels.from_record(record))
        self.judged(record)

    def tick(self, readings: Sequence[Reading], totals: LoopTotals) -> None:
        """Take one sampler tick: the readings and the loop's totals at that moment."""
        with self._lock:
            for r in readings:
                if r.gpu not in self._gpus:
                    continue
                meter = self._energy[r.gpu]
                meter.add(r)
                read = {
                    "util_ratio": _ratio(r.util_pct),
                    "training_util_ratio": _ratio(training_util_pct(r)),
                    "memory_used_bytes": _bytes(r.mem_used_mib),
                    "memory_total_bytes": _bytes(r.mem_total_mib),
                    "training_memory_bytes": _bytes(r.proc_mem_mib),
                    "sm_active_ratio": _ratio(r.sm_active_pct),
                    "energy_j": meter.result()["energy_j"],
                    "energy_counter_j": None if r.energy_counter_mj is None
                    else r.energy_counter_mj / 1000.0,
                    "power_watts": r.power_w,
                    "memory_util_ratio": None if r.mem_used_mib is None or not r.mem_total_mib
                    else r.mem_used_mib / r.mem_total_mib,
                    **self._pcie_bytes(r),
                    "others_util_ratio": _ratio(r.others_util_pct),
                    "other_processes": None if r.procs is None or r.proc_listed is None
                    else r.procs - int(r.proc_listed),
                    "ecc_corrected_errors": r.ecc_corrected_errors,
                    "ecc_uncorrected_errors": r.ecc_uncorrected_errors,
                }
                self._gpus[r.gpu] = _gpu_figures(
                    self._devices[r.gpu],
                    **{name: self._hold(r, name, value) for name, value in read.items()})
            self._figures = replace(self._figures, gpus=tuple(self._gpus.values()),
                                    steps=totals.steps, step_seconds=totals.step_s,
                                    wait_seconds=totals.wait_s,
                                    other_seconds=totals.other_s,
                                    wait_ratio=totals.wait_fraction,
                                    input_seconds=totals.input_s)

    def _pcie_bytes(self, r: Reading) -> dict[str, float | None]:
        """GPM's PCIe throughput (MiB/s since the previous sample) over the time since this
        GPU's previous reading with one, added to the process's totals for the device."""
        uuid = self._devices[r.gpu].uuid
        if r.pcie_tx_mib_s is not None and r.pcie_rx_mib_s is not None:
            last_s = self._pcie_last_s.get(r.gpu)
            self._pcie_last_s[r.gpu] = r.time_s
            seconds = 0.0 if last_s is None else max(0.0, r.time_s - last_s)
            _pcie.add(uuid, r.pcie_tx_mib_s * _BYTES_PER_MIB * seconds,
                      r.pcie_rx_mib_s * _BYTES_PER_MIB * seconds)
        totals = _pcie.totals(uuid)
        return {"pcie_transmit_bytes": None if totals is None else totals[0],
                "pcie_receive_bytes": None if totals is None else totals[1]}

    def _hold(self, r: Reading, name: str, value: float | None) -> float | None:
        """A figure of this reading, or the GPU's last one if it is recent enough."""
        key = (r.gpu, name)
        if value is not None:
            self._held[key] = (r.time_s, value)
            return value
        held = self._held.get(key)
        return held[1] if held is not None and r.time_s - held[0] <= HOLD_S else None

    def judged(self, record: RunRecord) -> None:
        """Take the run's record (`run.json`): its verdict, causes and status."""
        causes = tuple(dict.fromkeys(c["code"] for c in record.causes or ()))
        with self._lock:
            self._figures = replace(self._figures, verdict=record.verdict, causes=causes,
                                    status=str(record.status or "running"))

    def figures(self) -> Figures:
        """The latest figures (a frozen copy)."""
        with self._lock:
            return self._figures


def _gpu_figures(device: Device, **read: Any) -> GPUFigures:
    return GPUFigures(index=device.nvml_index, uuid=device.uuid,
                      minor_number=device.minor_number, parent_uuid=device.parent_uuid,
                      gpu_instance_id=device.gpu_instance_id, **read)


class _PcieBytes:
    """PCIe bytes each GPU moved since this process first watched it, per device UUID and kept
    for the process's life, so a device counter never restarts when a new run begins."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, tuple[float, float]] = {}  # uuid -> (sent, received) bytes

    def add(self, uuid: str, sent: float, received: float) -> tuple[float, float]:
        """Add bytes moved; the totals so far."""
        with self._lock:
            total = self._totals.get(uuid, (0.0, 0.0))
            total = self._totals[uuid] = (total[0] + sent, total[1] + received)
            return total

    def totals(self, uuid: str) -> tuple[float, float] | None:
        """The totals so far; None before any throughput was read."""
        with self._lock:
            return self._totals.get(uuid)


_pcie = _PcieBytes()


def _ratio(pct: float | None) -> float | None:
    return None if pct is None else pct / 100.0


def _bytes(mib: float | None) -> float | None:
    return None if mib is None else mib * _BYTES_PER_MIB
