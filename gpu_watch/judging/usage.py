"""How much a training used each GPU it watched: the one place that decides it.

Every output that speaks of this training's use of a GPU (the verdicts, what each cause cost,
the figures and the report, `gpu-watch watch`, the exporters, `rejudge`) reads what this module
computed, and applies no rule of its own:

- the idle threshold and its default (`DEFAULT_IDLE_THRESHOLD_PCT`), and the two comparisons
  against it: `idle` (under it) and `busy` (at or over it);
- the figure each reading is judged by (`ReadingJudge`: this process's own utilization where
  NVML attributes it, else the device's where that can only be this training's), stored with
  the reading as `judged_util_pct`;
- running statistics per GPU and span (`SpanStats`: histograms with the idle share, the other
  processes, the GPM means) and the energy of a span (`EnergyMeter`);
- the run's rows summed into seconds after step 0, idle seconds, idle GPU-seconds and the
  energy drawn meanwhile (`UsageMeter`, `RunUsage`), as a run writes them or reads them back.

Step 0 (compilation and the first batch) counts in none of the figures of use: the timeline
and `UsageMeter` both cut at its end.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpu_watch.judging.verdict import GPUStats, OtherUse
from gpu_watch.runlog import RECORDED_INTERVAL_S, RunRecord
from gpu_watch.sensing.nvml import Reading

DEFAULT_IDLE_THRESHOLD_PCT = 10.0  # GPUWatch's default; a run records the one it used

# The utilization columns of `samples.csv` that `UsageMeter` sums, by the basis they measure:
# the judged figure, this process's own, the device's.
BASIS_COLUMNS = {"judged": "judged_util_pct", "process": "proc_util_pct", "device": "util_pct"}


def idle(util_pct: Any, threshold_pct: float) -> Any:
    """Whether a utilization is idle: under the threshold (percent). Works element-wise on
    NumPy arrays; the caller decides what an unknown value (None, NaN) means."""
    return util_pct < threshold_pct


def busy(util_pct: Any, threshold_pct: float) -> Any:
    """Whether a utilization is busy: at or over the threshold (percent); element-wise on
    NumPy arrays. Used of the other processes' use of a GPU, and of this training's."""
    return util_pct >= threshold_pct


def recorded_threshold_pct(config: Mapping[str, Any]) -> float:
    """The idle threshold a run used, from its `run.json` "config"; the default for a run
    that did not record one."""
    value = config.get("idle_threshold_pct")
    return DEFAULT_IDLE_THRESHOLD_PCT if value is None else float(value)


def unjudged_fallback_pct(own_pct: float, device_pct: float) -> float:
    """This training's figure in a reading recorded before runs stored their judged figure
    (`gpu-watch watch` on an old run folder): its own where measured (not NaN), else the
    device's. Runs now store `judged_util_pct` (`ReadingJudge`), which is read instead."""
    return own_pct if not math.isnan(own_pct) else device_pct


def missing(value: Any) -> bool:
    """Whether a cell is not measured: None, or NaN as pandas reads an empty cell."""
    return value is None or (isinstance(value, float) and math.isnan(value))


class ReadingJudge:
    """Sets each reading's judged figure: this training's utilization of its GPU, percent.

    Args:
        threshold_pct: The idle threshold, percent.
    """

    def __init__(self, threshold_pct: float) -> None:
        self.threshold = threshold_pct
        self._own_seen: set[int] = set()  # GPUs that gave this process a figure of its own

    def judge(self, r: Reading) -> float | None:
        """This training's utilization of a GPU in one reading, percent; None when the reading
        cannot tell.

        Its own SM utilization where NVML attributes one. Without it, the device's stands in
        when it is idle (the device's figure bounds any one process's, so the training was
        idle too), or when no other process is listed and this GPU never gave this process a
        figure of its own (the device's work is then taken as this training's, as in a
        container's PID namespace). Otherwise another process may have done the work, or NVML
        has no new sample of this process yet. Remembers the GPUs that gave this process a
        figure of its own.
        """
        if r.proc_util_pct is not None:
            self._own_seen.add(r.gpu)
            return r.proc_util_pct
        if r.util_pct is None:
            return None
        if idle(r.util_pct, self.threshold):
            return r.util_pct
        if r.gpu in self._own_seen or (r.procs or 0) > 1:
            return None
        return r.util_pct


# -- statistics of a span --------------------------------------------------------------------

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
        if idle(pct, threshold_pct):
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


@dataclass(slots=True)
class _RunningMean:
    """A running mean: the sum of the values counted and how many there were."""

    total: float = 0.0
    readings: int = 0

    def add(self, value: float) -> None:
        self.total += value
        self.readings += 1

    def mean(self) -> float | None:
        """The mean; None before the first value."""
        return self.total / self.readings if self.readings else None


@dataclass(slots=True)
class _OtherProcess:
    """Another process's use of one GPU over a span, as it is counted (see `OtherUse`)."""

    name: str | None = None
    sm_util: _RunningMean = field(default_factory=_RunningMean)
    mem_peak_mib: float | None = None


class SpanStats:
    """Running statistics of one GPU over a span: the device's utilization and this process's
    own (histograms), the other processes seen, peaks, flags, and running means of the GPM
    readings.

    Each figure is named after the `GPUStats` field it becomes: `gpu_util` is the device's
    utilization (`Reading.util_pct`), `proc_util` this process's own (`Reading.proc_util_pct`).
    """

    __slots__ = ("readings", "gpu_util", "proc_util", "mem_peak_mib", "proc_mem_peak_mib",
                 "proc_seen", "others_seen", "lost", "others_util", "others_busy", "contended",
                 "others_mem_peak_mib", "procs_max", "others", "activity")

    def __init__(self) -> None:
        self.readings = 0
        self.gpu_util = _Histogram()
        self.proc_util = _Histogram()
        self.mem_peak_mib: float | None = None
        self.proc_mem_peak_mib: float | None = None
        self.proc_seen = False
        self.others_seen = False
        self.lost = False
        self.others_util = _RunningMean()  # the other processes' summed SM utilization
        self.others_busy = 0  # readings in which the others were at or above the threshold
        self.contended = 0  # readings in which this process and the others both worked
        self.others_mem_peak_mib: float | None = None
        self.procs_max: int | None = None
        self.others: dict[int, _OtherProcess] = {}  # by PID
        self.activity = {name: _RunningMean() for name, _ in ACTIVITY_FIELDS}  # by Reading field

    def add(self, r: Reading, threshold_pct: float) -> None:
        """Count one reading; readings without a value change nothing (NaN is not idle)."""
        self.readings += 1
        if r.util_pct is not None:
            self.gpu_util.add(r.util_pct, threshold_pct)
        if r.proc_util_pct is not None:
            self.proc_util.add(r.proc_util_pct, threshold_pct)
        if r.mem_used_mib is not None:
            self.mem_peak_mib = _max(self.mem_peak_mib, r.mem_used_mib)
        if r.proc_mem_mib is not None:
            self.proc_mem_peak_mib = _max(self.proc_mem_peak_mib, r.proc_mem_mib)
        self._count_listing(r)
        self._count_others(r, threshold_pct)
        self.lost = self.lost or r.lost
        for name, running in self.activity.items():
            value = getattr(r, name)
            if value is not None:
                running.add(value)

    def _count_listing(self, r: Reading) -> None:
        """Whether NVML listed this process, and other processes, on the GPU."""
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

    def _count_others(self, r: Reading, threshold_pct: float) -> None:
        """The other processes' use of the GPU: together, and each on its own (the first
        `MAX_OTHER_PIDS` seen)."""
        if r.others_util_pct is not None:
            self.others_util.add(r.others_util_pct)
            if busy(r.others_util_pct, threshold_pct):
                self.others_busy += 1
                if r.proc_util_pct is not None and busy(r.proc_util_pct, threshold_pct):
                    self.contended += 1
        if r.others_mem_mib is not None:
            self.others_mem_peak_mib = _max(self.others_mem_peak_mib, r.others_mem_mib)
        for other in r.others or ():
            entry = self.others.get(other.pid)
            if entry is None:
                if len(self.others) >= MAX_OTHER_PIDS:
                    continue
                entry = self.others[other.pid] = _OtherProcess()
            entry.name = entry.name or other.name
            if other.sm_util_pct is not None:
                entry.sm_util.add(other.sm_util_pct)
            if other.used_mib is not None:
                entry.mem_peak_mib = _max(entry.mem_peak_mib, other.used_mib)

    def activity_means(self) -> dict[str, float | None]:
        """The GPM means as GPUStats keywords; None for a field never read."""
        return {field: self.activity[name].mean() for name, field in ACTIVITY_FIELDS}

    def stats(self, gpu: int) -> GPUStats:
        """The span's statistics as the verdict rules take them."""
        util_n, util_mean, util_p95, util_idle = self.gpu_util.summary()
        proc_n, proc_mean, proc_p95, proc_idle = self.proc_util.summary()
        others_n = self.others_util.readings
        others = tuple(OtherUse(pid, o.name, o.sm_util.mean(), o.mem_peak_mib)
                       for pid, o in self.others.items())
        return GPUStats(
            gpu, util_samples=util_n, util_mean=util_mean, util_p95=util_p95,
            device_idle_fraction=util_idle, mem_peak_mib=self.mem_peak_mib,
            proc_mem_peak_mib=self.proc_mem_peak_mib, proc_seen=self.proc_seen,
            others_seen=self.others_seen, lost=self.lost,
            proc_util_samples=proc_n, proc_util_mean=proc_mean, proc_util_p95=proc_p95,
            proc_idle_fraction=proc_idle,
            others_util_mean=self.others_util.mean(),
            others_busy_fraction=self.others_busy / others_n if others_n else None,
            contended_fraction=self.contended / others_n if others_n else None,
            others_mem_peak_mib=self.others_mem_peak_mib, procs_max=self.procs_max,
            others=others, readings=self.readings, **self.activity_means(),
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


# -- the run's rows, summed ------------------------------------------------------------------


@dataclass(slots=True)
class BasisUse:
    """One GPU's time as one utilization figure judges it, after step 0.

    Attributes:
        measured_s: Seconds covered by readings with that figure.
        idle_s: Of them, seconds under the idle threshold.
        idle_energy_j: Power integrated over the idle seconds that had a power reading, J.
        idle_power_s: The idle seconds that had a power reading.
        starved_s: Idle seconds in which other processes were at or above the threshold.
        starved_energy_j: Power integrated over those of them that had a power reading, J.
        starved_power_s: The starved seconds that had a power reading.
    """

    measured_s: float = 0.0
    idle_s: float = 0.0
    idle_energy_j: float = 0.0
    idle_power_s: float = 0.0
    starved_s: float = 0.0
    starved_energy_j: float = 0.0
    starved_power_s: float = 0.0

    @property
    def idle_fraction(self) -> float | None:
        """Share of the measured seconds that were idle, 0-1."""
        return self.idle_s / self.measured_s if self.measured_s > 0 else None

    @property
    def idle_power_w(self) -> float | None:
        """Mean power over the idle seconds, W."""
        return self.idle_energy_j / self.idle_power_s if self.idle_power_s > 0 else None

    @property
    def starved_energy_all_j(self) -> float | None:
        """The energy of every starved second, J: the mean power of those with a reading over
        all of them (a second without one is unknown, not 0 W); None with no reading at all."""
        if self.starved_power_s <= 0:
            return None
        return self.starved_energy_j / self.starved_power_s * self.starved_s


@dataclass(frozen=True)
class RunUsage:
    """What the impact rules need from a run's rows, summed.

    Attributes:
        duration_s: The run's wall time, seconds.
        step0_end_s: When step 0 (compile and first batch) ended, seconds since training
            began; None before it ended.
        loop_s: The training loop's seconds after step 0: the batches' steps and the time
            before each (waiting for data, or spent elsewhere).
        batches: Batch rows after step 0.
        epoch_starts: Batch rows after step 0 that began an epoch: fetched before their hook
            began, their wait was not measured.
        gpus: Per NVML index, per basis ("judged", "process", "device"), the GPU's use.
    """

    duration_s: float | None
    step0_end_s: float | None
    loop_s: float
    batches: int
    gpus: Mapping[int, Mapping[str, BasisUse]] = field(default_factory=dict)
    epoch_starts: int = 0

    @property
    def span_s(self) -> float | None:
        """The run's seconds after step 0."""
        if self.duration_s is None:
            return None
        return max(0.0, self.duration_s - (self.step0_end_s or 0.0))


EARLY_READINGS = 1000  # readings kept while step 0's row has not come (see UsageMeter)


class UsageMeter:
    """Sums a run's rows, as they are written or read back, into a `RunUsage`.

    Each reading stands for the time since the previous reading of its GPU (NVML's utilization
    covers the sample period before it), cut at the end of step 0, which no figure counts.
    Batch rows must come before the readings of the same time: the first one ends step 0.

    Args:
        idle_threshold_pct: Utilization under this is idle, percent.
        interval_s: The sampler's interval: the time the first reading of a GPU stands for.
    """

    def __init__(self, idle_threshold_pct: float, interval_s: float) -> None:
        self.threshold = idle_threshold_pct
        self.interval = interval_s
        self.step0_end_s: float | None = None
        self.loop_s = 0.0
        self.batches = 0
        self.epoch_starts = 0
        self._last_row: tuple[Any, float] | None = None  # the epoch and end of the last row
        self._last_s: dict[int, float] = {}
        self._gpus: dict[int, dict[str, BasisUse]] = {}
        # Readings that came before the first batch row: the sampler may write a reading taken
        # after step 0 ended before the training thread has recorded step 0's row. Bounded: a
        # long compile keeps only its latest readings, the ones that can count.
        self._early: deque[Mapping[str, Any]] = deque(maxlen=EARLY_READINGS)

    def add_batches(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Count batch rows (`batches.csv`'s `epoch`, `time_s`, `step_s`, `wait_s`, `other_s`).

        A batch's time is the time since the batch before it ended, in the same epoch: its
        step and the time before it, counted once. The first batch of a later epoch counts its
        own step, wait and time spent elsewhere, leaving out the time between epochs
        (validation)."""
        for row in rows:
            if missing(row.get("time_s")):
                continue  # a row torn by a crash and repaired on read
            end_s, epoch = float(row["time_s"]), row.get("epoch")
            last, self._last_row = self._last_row, (epoch, end_s)
            if last is None:  # step 0's row: it ends step 0
                self.step0_end_s = end_s
                self.add_samples(self._early)  # the readings that came early count now
                self._early.clear()
                continue
            last_epoch, last_end_s = last
            if last_epoch == epoch:
                seconds = max(0.0, end_s - last_end_s)
            else:
                seconds = sum(0.0 if missing(row.get(c)) else float(row[c])
                              for c in ("step_s", "wait_s", "other_s"))
                self.epoch_starts += missing(row.get("wait_s"))
            self.loop_s += seconds
            self.batches += 1

    def add_samples(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Count readings (`samples.csv` rows: `time_s`, `gpu`, the utilization figures,
        `power_w`, `others_util_pct`)."""
        for row in rows:
            if missing(row.get("gpu")) or missing(row.get("time_s")):
                continue
            if self.step0_end_s is None:
                self._early.append(row)
                continue
            gpu, time_s = int(row["gpu"]), float(row["time_s"])
            last = self._last_s.get(gpu, time_s - self.interval)
            self._last_s[gpu] = time_s
            # Nothing for a reading at or before step 0's end, nor one at its GPU's last time.
            seconds = time_s - max(last, self.step0_end_s)
            if seconds <= 0:
                continue
            power = row.get("power_w")
            power = None if missing(power) else float(power)
            others = row.get("others_util_pct")
            starved = not missing(others) and busy(float(others), self.threshold)
            uses = self._gpus.setdefault(gpu, {})
            for basis, column in BASIS_COLUMNS.items():
                if column not in row:
                    continue
                value = row[column]
                use = uses.setdefault(basis, BasisUse())
                if missing(value):
                    continue
                use.measured_s += seconds
                if not idle(float(value), self.threshold):
                    continue
                use.idle_s += seconds
                if power is not None:
                    use.idle_energy_j += power * seconds
                    use.idle_power_s += seconds
                if starved:
                    use.starved_s += seconds
                    if power is not None:  # a second without a reading is unknown, not 0 W
                        use.starved_energy_j += power * seconds
                        use.starved_power_s += seconds

    def usage(self, duration_s: float | None) -> RunUsage:
        """The sums so far, for a run of `duration_s` seconds."""
        return RunUsage(duration_s, self.step0_end_s, self.loop_s, self.batches,
                        {g: dict(uses) for g, uses in self._gpus.items()}, self.epoch_starts)


def usage_of_frames(record: RunRecord, samples: Any, batches: Any) -> RunUsage:
    """A `RunUsage` from a run read back (`runlog.Run`'s `record`, `samples`, `batches`)."""
    config = record.config or {}
    meter = UsageMeter(recorded_threshold_pct(config),
                       float(config.get("interval_s") or RECORDED_INTERVAL_S))
    meter.add_batches(_in_time_order(batches))
    meter.add_samples(_in_time_order(samples))
    duration = record.duration_s
    if duration is None and meter.step0_end_s is not None:  # step 0's row came: batches did
        duration = float(batches["time_s"].max())
    return meter.usage(None if duration is None else float(duration))


def _in_time_order(frame: Any) -> list[dict[str, Any]]:
    """A frame's rows by time, rows of one time in the order they were written (batch hooks
    may run on several threads); none for a missing or empty frame."""
    if frame is None or not len(frame):
        return []
    return frame.sort_values("time_s", kind="stable").to_dict("records")
