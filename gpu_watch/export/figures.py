"""The figures every exporter publishes, kept once per run as the latest snapshot.

The sampler thread hands each tick's readings over, the monitor hands the run's record over
whenever the verdict changes (step 0, each epoch end, the end of the run); an exporter reads a
frozen `Figures` whenever it is asked (a scrape, an OpenTelemetry collection, the final push).
Units are those of the exporters: ratios 0-1, bytes, joules, seconds. A figure not measured is
None and becomes no series at all, never 0: "not measured" must not read as "idle".
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from gpu_watch.nvml import Device, Reading
from gpu_watch.timeline import LoopTotals
from gpu_watch.usage import EnergyMeter

_BYTES_PER_MIB = 1024 * 1024
# Not every tick brings every figure: NVML samples processes every 1/6 s to 1 s, GPM is read
# once a second, and slow-changing figures may be read at a slower rate. A figure stands until
# a newer one, for at most this long; then it has no series (NVML's reading turns a listed
# process without a sample for 2 s into 0 %, so an idle process is never held as busy).
HOLD_S = 5.0


@dataclass(frozen=True)
class RunLabels:
    """Who the figures are about: bounded labels only (no PIDs, no process names)."""

    run: str
    rank: int
    host: str
    backend: str

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> RunLabels:
        """The labels of a run from its `run.json` record."""
        host = (info.get("writer") or {}).get("host") or socket.gethostname()
        return cls(run=str(info["run_name"]), rank=int(info.get("rank") or 0), host=host,
                   backend=str(info.get("backend") or ""))


@dataclass(frozen=True)
class GPUFigures:
    """One watched GPU at the latest tick.

    Attributes:
        index: NVML index. uuid: `GPU-...` or `MIG-...`.
        util_ratio: The device's utilization (any process), 0-1.
        training_util_ratio: This training's own utilization of it, 0-1, as the verdict
            judges it; None when the reading cannot tell.
        memory_used_bytes, memory_total_bytes: The device's memory.
        training_memory_bytes: Memory this process holds on it.
        sm_active_ratio: Share of the SMs busy (GPM, Hopper and newer), 0-1.
        energy_j: Energy the whole GPU used since the run started, joules.
        others_util_ratio: Summed SM utilization of the other processes on it, 0-1.
        other_processes: How many other compute processes NVML lists on it.
    """

    index: int
    uuid: str
    util_ratio: float | None = None
    training_util_ratio: float | None = None
    memory_used_bytes: float | None = None
    memory_total_bytes: float | None = None
    training_memory_bytes: float | None = None
    sm_active_ratio: float | None = None
    energy_j: float | None = None
    others_util_ratio: float | None = None
    other_processes: int | None = None


@dataclass(frozen=True)
class Figures:
    """The run at one moment: its labels, each GPU, the loop and the judgement.

    Attributes:
        steps: Training steps so far. step_seconds: Their summed duration, seconds.
        wait_seconds: Seconds the loop waited for data so far. other_seconds: Seconds between
            steps spent elsewhere (other callbacks, Keras' own bookkeeping).
        wait_ratio: Share of the loop's time spent waiting for data, 0-1, since the run began.
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
    verdict: str | None = None
    causes: tuple[str, ...] = ()
    status: str = "running"


def training_util_pct(reading: Reading) -> float | None:
    """This training's utilization in one reading, percent, as the verdicts judge it (the
    timeline sets it on every reading before the exporters see it)."""
    return reading.judged_util_pct


class Snapshot:
    """The latest `Figures` of one run, safe to update and read from any thread."""

    def __init__(self, info: dict[str, Any], devices: Sequence[Device]) -> None:
        self._lock = threading.Lock()
        self._uuids = {d.nvml_index: d.uuid for d in devices}
        self._energy = {d.nvml_index: EnergyMeter() for d in devices}
        self._gpus = {d.nvml_index: GPUFigures(d.nvml_index, d.uuid) for d in devices}
        self._held: dict[tuple[int, str], tuple[float, float]] = {}
        self._figures = Figures(labels=RunLabels.from_info(info))
        self.judged(info)

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
                    "others_util_ratio": _ratio(r.others_util_pct),
                    "other_processes": None if r.procs is None or r.proc_listed is None
                    else r.procs - int(r.proc_listed),
                }
                self._gpus[r.gpu] = GPUFigures(
                    index=r.gpu, uuid=self._uuids[r.gpu],
                    **{name: self._hold(r, name, value) for name, value in read.items()})
            self._figures = replace(self._figures, gpus=tuple(self._gpus.values()),
                                    steps=totals.steps, step_seconds=totals.step_s,
                                    wait_seconds=totals.wait_s,
                                    other_seconds=totals.other_s,
                                    wait_ratio=totals.wait_fraction)

    def _hold(self, r: Reading, name: str, value: float | None) -> float | None:
        """A figure of this reading, or the GPU's last one if it is recent enough."""
        key = (r.gpu, name)
        if value is not None:
            self._held[key] = (r.time_s, value)
            return value
        held = self._held.get(key)
        return held[1] if held is not None and r.time_s - held[0] <= HOLD_S else None

    def judged(self, info: dict[str, Any]) -> None:
        """Take the run's record (`run.json`): its verdict, causes and status."""
        causes = tuple(dict.fromkeys(c["code"] for c in info.get("causes") or ()))
        with self._lock:
            self._figures = replace(self._figures, verdict=info.get("verdict"), causes=causes,
                                    status=str(info.get("status") or "running"))

    def figures(self) -> Figures:
        """The latest figures (a frozen copy)."""
        with self._lock:
            return self._figures


def _ratio(pct: float | None) -> float | None:
    return None if pct is None else pct / 100.0


def _bytes(mib: float | None) -> float | None:
    return None if mib is None else mib * _BYTES_PER_MIB
