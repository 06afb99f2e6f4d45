"""Where batches meet readings: per-batch rows, per-span statistics and the idle detector.

The training thread adds batch timings (a tuple append); the sampler thread adds NVML readings.
`drain` pairs each batch with the readings that overlap it and hands back rows ready to write.
Statistics are kept as running sums and 0-100 % histograms (the device's utilization and this
process's own) per GPU and span, so memory stays flat over days.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gpu_watch.nvml import Reading
from gpu_watch.verdict import GPUStats, OtherUse


@dataclass(frozen=True)
class IdleEvent:
    """This training left every watched GPU under the threshold from `start_s` to `end_s`
    (seconds since training started).

    `util_mean_pct` is each GPU's mean utilization over that stretch as judged: this process's
    own where NVML attributes it, else the device's (see `Timeline`). `device_util_mean_pct`
    is the device's, whoever used it: far above the other when another process kept the GPU
    busy meanwhile.
    """

    start_s: float
    end_s: float
    util_mean_pct: dict[int, float]
    device_util_mean_pct: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON-ready record written to `run.json` and carried by `GPUIdleError`."""
        return {
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "duration_s": round(self.end_s - self.start_s, 3),
            "util_mean_pct": {str(k): round(v, 1) for k, v in self.util_mean_pct.items()},
            "device_util_mean_pct": {str(k): round(v, 1)
                                     for k, v in self.device_util_mean_pct.items()},
        }


# Other processes tracked per GPU and span: enough for any real GPU, and memory stays flat.
MAX_OTHER_PIDS = 32
# GPM readings averaged per span: (Reading field, GPUStats field).
ACTIVITY_FIELDS = (
    ("sm_active_pct", "sm_active_mean"),
    ("sm_occupancy_pct", "sm_occupancy_mean"),
    ("tensor_active_pct", "tensor_active_mean"),
    ("dram_bw_pct", "dram_bw_mean"),
    ("fp32_active_pct", "fp32_active_mean"),
    ("fp16_active_pct", "fp16_active_mean"),
)


class _Histogram:
    """Counts of 0-100 % readings with their sum and how many were under the threshold."""

    __slots__ = ("counts", "total", "idle")

    def __init__(self) -> None:
        self.counts = [0] * 101
        self.total = 0.0
        self.idle = 0

    def add(self, pct: float, threshold_pct: float) -> None:
        self.counts[min(100, max(0, int(round(pct))))] += 1
        self.total += pct
        if pct < threshold_pct:
            self.idle += 1

    def summary(self) -> tuple[int, float | None, float | None, float | None]:
        """(readings, mean, p95, share under the threshold); None without readings."""
        n = sum(self.counts)
        if not n:
            return 0, None, None, None
        target, seen, p95 = 0.95 * n, 0, 100
        for pct, c in enumerate(self.counts):
            seen += c
            if seen >= target:
                p95 = pct
                break
        return n, self.total / n, float(p95), self.idle / n


class SpanStats:
    """Running statistics of one GPU over a span: the device's utilization and this process's
    own (histograms), the other processes seen, peaks, flags, and running sums of the GPM
    readings."""

    __slots__ = ("device", "own", "mem_peak", "proc_peak", "proc_seen", "others_seen", "lost",
                 "others_sum", "others_n", "others_busy", "contended", "others_mem_peak",
                 "procs_max", "others", "activity")

    def __init__(self) -> None:
        self.device = _Histogram()
        self.own = _Histogram()
        self.mem_peak: float | None = None
        self.proc_peak: float | None = None
        self.proc_seen = False
        self.others_seen = False
        self.lost = False
        self.others_sum = 0.0
        self.others_n = 0
        self.others_busy = 0
        self.contended = 0  # readings in which this process and the others both worked
        self.others_mem_peak: float | None = None
        self.procs_max: int | None = None
        self.others: dict[int, list] = {}  # pid -> [name, util sum, util readings, mem peak]
        self.activity = [[0.0, 0] for _ in ACTIVITY_FIELDS]  # [sum, readings] per field

    @property
    def measured(self) -> bool:
        """Whether any reading gave a utilization figure, the device's or this process's."""
        return _measured(self)

    def add(self, r: Reading, threshold_pct: float) -> None:
        """Count one reading; readings without a value change nothing (NaN is not idle)."""
        if r.util_pct is not None:
            self.device.add(r.util_pct, threshold_pct)
        if r.proc_util_pct is not None:
            self.own.add(r.proc_util_pct, threshold_pct)
        if r.mem_used_mib is not None:
            self.mem_peak = _max(self.mem_peak, r.mem_used_mib)
        if r.proc_mem_mib is not None:
            self.proc_peak = _max(self.proc_peak, r.proc_mem_mib)
        listed = r.proc_listed
        if listed is None and r.proc_mem_mib is not None:
            # Readings without the flag (read back from a run folder): memory held means listed.
            listed = r.proc_mem_mib > 0
        if listed:
            self.proc_seen = True
        if r.procs is not None:
            self.procs_max = r.procs if self.procs_max is None else max(self.procs_max, r.procs)
            if listed is not None and r.procs > int(listed):
                self.others_seen = True
        if r.others_util_pct is not None:
            self.others_sum += r.others_util_pct
            self.others_n += 1
            if r.others_util_pct >= threshold_pct:
                self.others_busy += 1
                if r.proc_util_pct is not None and r.proc_util_pct >= threshold_pct:
                    self.contended += 1
        if r.others_mem_mib is not None:
            self.others_mem_peak = _max(self.others_mem_peak, r.others_mem_mib)
        for other in r.others or ():
            entry = self.others.get(other.pid)
            if entry is None:
                if len(self.others) >= MAX_OTHER_PIDS:
                    continue
                entry = self.others[other.pid] = [other.name, 0.0, 0, None]
            entry[0] = entry[0] or other.name
            if other.sm_util_pct is not None:
                entry[1] += other.sm_util_pct
                entry[2] += 1
            if other.used_mib is not None:
                entry[3] = _max(entry[3], other.used_mib)
        self.lost = self.lost or r.lost
        for (name, _), running in zip(ACTIVITY_FIELDS, self.activity, strict=True):
            value = getattr(r, name)
            if value is not None:
                running[0] += value
                running[1] += 1

    def activity_means(self) -> dict[str, float | None]:
        """The GPM means as GPUStats keywords; None for a field never read."""
        return {field: (total / n if n else None)
                for (_, field), (total, n) in zip(ACTIVITY_FIELDS, self.activity, strict=True)}

    def stats(self, gpu: int) -> GPUStats:
        """The span's statistics as the verdict rules take them."""
        n, mean, p95, idle = self.device.summary()
        own_n, own_mean, own_p95, own_idle = self.own.summary()
        others = tuple(
            OtherUse(pid, name, util_sum / util_n if util_n else None, mem_peak)
            for pid, (name, util_sum, util_n, mem_peak) in self.others.items()
        )
        return GPUStats(
            gpu, n, mean, p95, idle, self.mem_peak, self.proc_peak, self.proc_seen,
            self.others_seen, self.lost,
            proc_util_samples=own_n, proc_util_mean=own_mean, proc_util_p95=own_p95,
            proc_idle_fraction=own_idle,
            others_util_mean=self.others_sum / self.others_n if self.others_n else None,
            others_busy_fraction=self.others_busy / self.others_n if self.others_n else None,
            contended_fraction=self.contended / self.others_n if self.others_n else None,
            others_mem_peak_mib=self.others_mem_peak, procs_max=self.procs_max, others=others,
            **self.activity_means(),
        )


def _max(current: float | None, value: float) -> float:
    return value if current is None else max(current, value)


class EnergyMeter:
    """The energy one GPU used over a span, from NVML's energy counter or, where that is
    unsupported or was reset, from power readings integrated over time.

    The counter counts millijoules since the driver loaded, so a span's energy is the sum of
    its differences; a negative difference (a driver reload) makes the counter unusable for
    the span. Power readings are joined by trapezoids. `follow` carries the last reading over
    from the span before, so that the time between two spans is counted once.
    """

    __slots__ = ("counter_mj", "counter_s", "counter_pairs", "reset", "power_j", "power_s",
                 "last_mj", "last_mj_s", "last_w", "last_w_s")

    def __init__(self) -> None:
        self.counter_mj = 0.0
        self.counter_s = 0.0
        self.counter_pairs = 0
        self.reset = False
        self.power_j = 0.0
        self.power_s = 0.0
        self.last_mj: int | None = None
        self.last_mj_s = 0.0
        self.last_w: float | None = None
        self.last_w_s = 0.0

    def follow(self, other: EnergyMeter) -> EnergyMeter:
        """Start where `other` stands (its last counter and power readings). Returns self."""
        self.last_mj, self.last_mj_s = other.last_mj, other.last_mj_s
        self.last_w, self.last_w_s = other.last_w, other.last_w_s
        return self

    def add(self, r: Reading) -> None:
        """Count one reading."""
        if r.energy_counter_mj is not None:
            if self.last_mj is not None:
                delta = r.energy_counter_mj - self.last_mj
                if delta < 0:
                    self.reset = True
                else:
                    self.counter_mj += delta
                    self.counter_s += r.time_s - self.last_mj_s
                    self.counter_pairs += 1
            self.last_mj, self.last_mj_s = r.energy_counter_mj, r.time_s
        if r.power_w is not None:
            if self.last_w is not None and r.time_s > self.last_w_s:
                elapsed_s = r.time_s - self.last_w_s
                self.power_j += (self.last_w + r.power_w) / 2 * elapsed_s
                self.power_s += elapsed_s
            self.last_w, self.last_w_s = r.power_w, r.time_s

    def result(self) -> dict[str, Any]:
        """`energy_j`, `energy_method` and `power_mean_w` as GPUStats keywords."""
        if self.counter_pairs and not self.reset:
            joules, seconds, method = self.counter_mj / 1000.0, self.counter_s, "counter"
        elif self.power_s > 0:
            joules, seconds, method = self.power_j, self.power_s, "power"
        else:
            return {"energy_j": None, "energy_method": None, "power_mean_w": None}
        return {"energy_j": joules, "energy_method": method,
                "power_mean_w": joules / seconds if seconds > 0 else None}


def activity_row(stats: Sequence[GPUStats]) -> dict[str, Any]:
    """The GPM and energy cells of an `epochs.csv` row (see `runlog.EPOCH_ACTIVITY_COLUMNS`):
    percentages averaged over the GPUs that have them, energy and power summed, each GPU's own;
    None where no GPU measured it."""
    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    def total(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    row: dict[str, Any] = {
        "gpu_sm_active_mean": mean([s.sm_active_mean for s in stats]),
        "gpu_tensor_active_mean": mean([s.tensor_active_mean for s in stats]),
        "gpu_dram_bw_mean": mean([s.dram_bw_mean for s in stats]),
        "gpu_energy_j": total([s.energy_j for s in stats]),
        "gpu_power_mean_w": total([s.power_mean_w for s in stats]),
    }
    for s in stats:
        row[f"gpu{s.gpu}_sm_active_mean"] = s.sm_active_mean
        row[f"gpu{s.gpu}_energy_j"] = s.energy_j
        row[f"gpu{s.gpu}_power_mean_w"] = s.power_mean_w
    return row


def energy_summary(stats: Sequence[GPUStats]) -> dict[str, Any]:
    """The run's energy as `run.json` records it: the total over the watched GPUs, how it was
    measured, and each GPU's share. It is the whole GPUs' energy, whoever used them."""
    known = [s for s in stats if s.energy_j is not None]
    methods = sorted({s.energy_method for s in known})
    return {
        "total_j": round(sum(s.energy_j for s in known), 3) if known else None,
        "method": None if not methods else methods[0] if len(methods) == 1 else "mixed",
        "scope": "whole GPU: NVML does not measure energy per process",
        "gpus": {str(s.gpu): {"energy_j": None if s.energy_j is None else round(s.energy_j, 3),
                              "method": s.energy_method,
                              "power_mean_w": None if s.power_mean_w is None
                              else round(s.power_mean_w, 2)}
                 for s in stats},
    }


class Timeline:
    """Batch timings and NVML readings of one run, paired up.

    The idle detector judges this training's own use of each GPU: its SM utilization where NVML
    attributes one (`Reading.proc_util_pct`). Without that figure in a reading, the device's
    utilization stands in when it is under the threshold (the device's figure bounds any one
    process's, so the training was idle too), or when no other process is listed and this GPU
    never gave this process a figure of its own (the device's work is then taken as this
    training's, as in a container's PID namespace). Otherwise the reading says nothing either
    way (another process may have done the work, or NVML has no new sample of this process
    yet), and the GPU's latest judged figure stands: training counts as idle only while every
    GPU judged so far last read idle.

    Args:
        gpus: NVML indices of the watched GPUs (the per-GPU columns of `batches.csv`).
        idle_threshold_pct: Utilization under this counts as idle, percent.
        idle_patience_s: Seconds all GPUs must stay idle before an `IdleEvent` fires.
        interval_s: The sampler's interval, seconds (how far after a batch a reading may lie
            and still describe it: NVML's utilization covers the period before the reading).
    """

    def __init__(self, gpus: Sequence[int], idle_threshold_pct: float, idle_patience_s: float,
                 interval_s: float) -> None:
        self.gpus = list(gpus)
        self.threshold = idle_threshold_pct
        self.patience = idle_patience_s
        self.interval = interval_s
        self._lock = threading.Lock()
        self._batches: deque[tuple] = deque()
        self._samples: list[Reading] = []
        self._recent: dict[int, deque[Reading]] = {g: deque() for g in self.gpus}
        self._last_tick_s = -math.inf
        self.epoch: int | None = None
        self.first_step_end_s: float | None = None
        self._first_step_epoch: int | None = None
        self._epoch_stats: dict[int, SpanStats] = {}
        self._run_stats = {g: SpanStats() for g in self.gpus}
        self._warmup_stats = {g: SpanStats() for g in self.gpus}  # readings during step 0
        # Energy counts every reading, step 0 included: compiling costs energy too.
        self._run_energy = {g: EnergyMeter() for g in self.gpus}
        self._epoch_energy: dict[int, EnergyMeter] = {}
        self._last_batch_end_s = -math.inf
        self._idle_since: float | None = None
        self._idle_sums: dict[int, list[float]] = {}
        self._own_seen: set[int] = set()  # GPUs that gave this process a figure of its own
        self._last_judged: dict[int, float] = {}  # each GPU's latest judged utilization
        self.idle_event: IdleEvent | None = None
        self.idle_paused = False  # set while validation runs (it compiles and loads data too)
        self._epoch_loop = [0, 0.0, 0.0, 0.0]  # batches, step_s sum, wait_s sum, steps
        self._run_loop = [0.0, 0.0]  # step_s sum, wait_s sum
        self._epoch_data_ticks = [0, 0]  # ticks fetching data, ticks
        self._run_data_ticks = [0, 0]

    # -- training thread -------------------------------------------------------------------------

    def begin_epoch(self, epoch: int) -> None:
        """Start counting a new epoch."""
        with self._lock:
            self.epoch = epoch
            self._epoch_stats = {g: SpanStats() for g in self.gpus}
            self._epoch_energy = {g: EnergyMeter().follow(self._run_energy[g]) for g in self.gpus}
            self._epoch_loop = [0, 0.0, 0.0, 0.0]
            self._epoch_data_ticks = [0, 0]

    def add_batch(self, epoch: int, batch: int, steps: int, begin_s: float, end_s: float,
                  wait_s: float | None) -> None:
        """Record one batch hook's timing (seconds since training started). Cheap: no lock."""
        self._batches.append((epoch, batch, steps, begin_s, end_s, wait_s))
        loop = self._epoch_loop
        loop[0] += 1
        loop[1] += end_s - begin_s
        loop[2] += wait_s or 0.0
        loop[3] += steps
        run = self._run_loop
        run[0] += end_s - begin_s
        run[1] += wait_s or 0.0
        self._last_batch_end_s = max(self._last_batch_end_s, end_s)
        if self.first_step_end_s is None:
            self.first_step_end_s = end_s
            self._first_step_epoch = epoch

    def add_data_tick(self, fetching: bool) -> None:
        """Count one sampler tick, and whether training was fetching data at that moment."""
        if self.first_step_end_s is None:
            return
        for counts in (self._epoch_data_ticks, self._run_data_ticks):
            counts[0] += fetching
            counts[1] += 1

    def epoch_wait_fraction(self) -> float | None:
        """Share of this epoch's time spent waiting for data, 0-1 (see `run_wait_fraction`)."""
        _, step_s, wait_s, _ = self._epoch_loop
        return _wait_fraction(step_s, wait_s, self._epoch_data_ticks)

    def run_wait_fraction(self) -> float | None:
        """Share of the run's time spent waiting for data, 0-1: the gaps between batches, or,
        when larger, the share of ticks that found training fetching data (the wait inside a
        step, where TensorFlow and JAX fetch the next batch)."""
        step_s, wait_s = self._run_loop
        return _wait_fraction(step_s, wait_s, self._run_data_ticks)

    def epoch_loop(self) -> tuple[int, float, float, int]:
        """This epoch's batches, summed step seconds, summed wait seconds and steps."""
        batches, step_s, wait_s, steps = self._epoch_loop
        return int(batches), step_s, wait_s, int(steps)

    # -- sampler thread --------------------------------------------------------------------------

    def add_readings(self, readings: Sequence[Reading]) -> IdleEvent | None:
        """Take one sampler tick; return an `IdleEvent` the first time idleness lasts the
        patience (it fires once per run)."""
        with self._lock:
            counted = self.first_step_end_s is not None
            for r in readings:
                self._samples.append(r)
                self._add_energy(r)
                recent = self._recent.get(r.gpu)
                if recent is not None:
                    recent.append(r)
                if not counted:
                    if r.gpu in self._warmup_stats:
                        self._warmup_stats[r.gpu].add(r, self.threshold)
                    continue
                self._run_stats[r.gpu].add(r, self.threshold)
                if self.epoch is not None and r.gpu in self._epoch_stats:
                    self._epoch_stats[r.gpu].add(r, self.threshold)
            if readings:
                self._last_tick_s = readings[0].time_s
                return self._track_idle(readings) if counted else None
            return None

    def _add_energy(self, r: Reading) -> None:
        for meters in (self._run_energy, self._epoch_energy):
            meter = meters.get(r.gpu)
            if meter is not None:
                meter.add(r)

    def _track_idle(self, readings: Sequence[Reading]) -> IdleEvent | None:
        now = readings[0].time_s
        # A GPU without a judged value this tick (no new NVML sample of this process yet,
        # unsupported, lost, a failed read, busy with work that may be someone else's) keeps
        # its latest one: NVML samples processes every 1/6 s to 1 s, so most ticks bring no new
        # figure of a busy training, and a GPU that last worked must not let the others'
        # idleness stand for all. A GPU never judged is not evidence either way; at least one
        # GPU must have been judged idle this tick.
        judged = [(r, self._judged_util(r)) for r in readings if r.gpu in self._run_stats]
        measured = [(r, u) for r, u in judged if u is not None]
        self._last_judged.update((r.gpu, u) for r, u in measured)
        idle = (not self.idle_paused and bool(measured)
                and all(u < self.threshold for u in self._last_judged.values()))
        if not idle:
            self._idle_since = None
            self._idle_sums = {}
            return None
        if self._idle_since is None:
            self._idle_since = now
        for r, util in measured:
            total = self._idle_sums.setdefault(r.gpu, [0.0, 0, 0.0, 0])
            total[0] += util
            total[1] += 1
            if r.util_pct is not None:
                total[2] += r.util_pct
                total[3] += 1
        if self.idle_event is None and now - self._idle_since >= self.patience:
            means = {g: s / n for g, (s, n, _, _) in self._idle_sums.items() if n}
            device = {g: s / n for g, (_, _, s, n) in self._idle_sums.items() if n}
            self.idle_event = IdleEvent(self._idle_since, now, means, device)
            return self.idle_event
        return None

    def _judged_util(self, r: Reading) -> float | None:
        """This training's utilization of a GPU in one reading, percent, as the idle detector
        judges it (see the class docstring); None when the reading cannot tell. Remembers the
        GPUs that gave this process a figure of its own."""
        if r.proc_util_pct is not None:
            self._own_seen.add(r.gpu)
            return r.proc_util_pct
        if r.util_pct is None:
            return None
        if r.util_pct < self.threshold:
            return r.util_pct
        if r.gpu in self._own_seen or (r.procs or 0) > 1:
            return None
        return r.util_pct

    # -- either thread (under the lock) ----------------------------------------------------------

    def drain(self, final: bool = False, limit: int | None = None
              ) -> tuple[list[Reading], list[dict]]:
        """Take the readings and batch rows ready to write (at most `limit` rows).

        A batch is ready once a reading at or after its end exists (that reading's period
        covers the batch), at the end of the run, or at once when no GPU is watched.
        """
        with self._lock:
            samples, self._samples = self._samples, []
            rows = []
            recent = {g: (list(d), [r.time_s for r in d]) for g, d in self._recent.items()}
            while self._batches and (limit is None or len(rows) < limit):
                epoch, batch, steps, begin, end, wait = self._batches[0]
                if not final and self.gpus and end > self._last_tick_s:
                    break
                self._batches.popleft()
                row = {"epoch": epoch, "batch": batch, "steps": steps, "time_s": end,
                       "step_s": end - begin, "wait_s": wait}
                for gpu in self.gpus:
                    util, mem = self._overlap(*recent[gpu], begin, end)
                    row[f"gpu{gpu}_util_pct"] = util
                    row[f"gpu{gpu}_mem_used_mib"] = mem
                rows.append(row)
            self._trim()
            return samples, rows

    def _overlap(self, readings: list[Reading], times: list[float], begin: float, end: float):
        """Mean utilization and peak memory of the readings inside [begin, end]; for a batch
        shorter than the interval, the first reading after it, whose period covers it."""
        lo = bisect.bisect_left(times, begin)
        hi = bisect.bisect_right(times, end)
        inside = readings[lo:hi]
        if not inside and hi < len(times) and times[hi] - end <= 2 * self.interval:
            inside = [readings[hi]]
        utils = [r.util_pct for r in inside if r.util_pct is not None]
        mems = [r.mem_used_mib for r in inside if r.mem_used_mib is not None]
        return (sum(utils) / len(utils) if utils else None), (max(mems) if mems else None)

    def _trim(self) -> None:
        """Forget readings older than any batch still waiting to be paired, or than the end of
        the last batch (the batch running now began after it)."""
        horizon = self._batches[0][3] if self._batches else self._last_batch_end_s
        for recent in self._recent.values():
            while len(recent) > 1 and recent[1].time_s <= horizon:
                recent.popleft()

    def epoch_stats(self) -> list[GPUStats]:
        """Each watched GPU's statistics over the current epoch. The epoch that ran the first
        step, too short for a reading after it, falls back on the readings taken during it (see
        `run_stats`); any other epoch has only its own readings."""
        with self._lock:
            stats = []
            for g in self.gpus:
                span = self._epoch_stats.get(g) or SpanStats()
                if self.epoch == self._first_step_epoch and not self._run_stats[g].measured:
                    stats.append(self._or_warmup(span, g))
                else:
                    stats.append(span.stats(g))
            return _with_energy(stats, self._epoch_energy)

    def run_stats(self) -> list[GPUStats]:
        """Each watched GPU's statistics over the run so far, after the first step; a run too
        short for a reading after it falls back on the readings taken during it."""
        with self._lock:
            return _with_energy([self._or_warmup(self._run_stats[g], g) for g in self.gpus],
                                self._run_energy)

    def _or_warmup(self, span: SpanStats | None, gpu: int) -> GPUStats:
        if span is not None and span.measured:
            return span.stats(gpu)
        return self._warmup_stats[gpu].stats(gpu)


def _measured(span: SpanStats) -> bool:
    """`SpanStats.measured`'s rule, in a plain function where the mutation run reaches it."""
    return any(span.device.counts) or any(span.own.counts)


def _wait_fraction(step_s: float, wait_s: float, data_ticks: list[int]) -> float | None:
    gaps = wait_s / (step_s + wait_s) if step_s + wait_s > 0 else None
    sampled = data_ticks[0] / data_ticks[1] if data_ticks[1] else None
    known = [f for f in (gaps, sampled) if f is not None]
    return max(known) if known else None


def _with_energy(stats: list[GPUStats], meters: dict[int, EnergyMeter]) -> list[GPUStats]:
    return [dataclasses.replace(s, **meters[s.gpu].result()) if s.gpu in meters else s
            for s in stats]
