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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpu_watch.nvml import Reading
from gpu_watch.steps import BatchPairing, Step
from gpu_watch.usage import EnergyMeter, ReadingJudge, SpanStats, idle
from gpu_watch.verdict import GPUStats


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


def known_mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are known (not None); None when none is."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def activity_row(stats: Sequence[GPUStats]) -> dict[str, Any]:
    """The GPM and energy cells of an `epochs.csv` row (see `runlog.EPOCH_ACTIVITY_COLUMNS`):
    percentages averaged over the GPUs that have them, energy and power summed, each GPU's own;
    None where no GPU measured it."""
    def total(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    row: dict[str, Any] = {
        "gpu_sm_active_mean": known_mean([s.sm_active_mean for s in stats]),
        "gpu_tensor_active_mean": known_mean([s.tensor_active_mean for s in stats]),
        "gpu_dram_bw_mean": known_mean([s.dram_bw_mean for s in stats]),
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


# A share of stack samples is a sample: from n samples its standard error is at most
# 0.5 / sqrt(n), 11 points at 20 samples (0.2 s at the stack sampler's 100 per second). Fewer
# give no sampled wait share.
MIN_WAIT_TICKS = 20
# The measure of waiting for data where no fetch was timed (see `Loop.wait`): the share of the
# stack sampler's looks that found the input pipeline busy.
SAMPLED_TICKS = "sampled_ticks"


# A Python producer behind `tf.data` (a `tf.py_function` in a `map`, or a generator that could
# not be timed) runs on a thread of its own, ahead of the step: busy in fewer samples than this
# share, it keeps up and delays nothing. Busier, it is the bottleneck, and the share of samples
# it was busy bounds the wait from above (the step's own work overlapped it). A producer that is
# the bottleneck reads 0.85-0.9 busy, not 1, because tf.data's own code runs between its items:
# the threshold sits under that range.
PRODUCER_SATURATED = 0.8


@dataclass(frozen=True, slots=True)
class DataTick:
    """What the input pipeline was doing at one look at the threads' stacks: the training
    thread fetching data (it waits meanwhile), or another thread producing it (Python code
    behind tf.data)."""

    fetching: bool
    producing: bool = False


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


@dataclass(frozen=True)
class Wait:
    """How a span of the training loop spent its time: computing, waiting for data, elsewhere.

    Attributes:
        fraction: The share of the loop's time spent waiting for data, 0-1; None when it was
            not measured.
        measure: How: `loop_clock.FETCH_TIMED` (each fetch on the training thread, timed),
            `loop_clock.READY_TIMED` (each batch timed as it left a Python source behind
            tf.data, against the step that took it) or `SAMPLED_TICKS` (the share of the stack
            sampler's looks that found the pipeline busy); None with no fraction.
        wait_s: Seconds spent waiting for data (for `SAMPLED_TICKS`, the share times the loop).
        loop_s: Seconds of the loop: the steps and the time between them, step 0 left out.
        ticks: Stack samples counted, of which `fetching_ticks` found the training thread
            fetching data and `producing_ticks` another thread producing it.
        compute_s: Seconds of the steps themselves, their wait for data left out.
        other_s: Seconds between steps spent neither computing nor fetching: the callbacks'
            hooks, Keras' own bookkeeping.
    """

    fraction: float | None
    measure: str | None
    wait_s: float
    loop_s: float
    ticks: int
    fetching_ticks: int
    producing_ticks: int
    compute_s: float
    other_s: float

    @property
    def other_fraction(self) -> float | None:
        """The share of the loop spent between steps elsewhere, 0-1; None without a loop."""
        return _share(self.other_s, self.loop_s)

    @property
    def compute_fraction(self) -> float | None:
        """The share of the loop spent in the steps themselves, 0-1; None without a loop."""
        return _share(self.compute_s, self.loop_s)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready record written to `run.json` as "wait"."""
        return {"fraction": _round4(self.fraction), "measure": self.measure,
                "wait_s": round(self.wait_s, 4), "loop_s": round(self.loop_s, 4),
                "ticks": self.ticks, "fetching_ticks": self.fetching_ticks,
                "producing_ticks": self.producing_ticks, "min_ticks": MIN_WAIT_TICKS}

    def breakdown(self) -> dict[str, Any]:
        """The JSON-ready record written to `run.json` as "breakdown": the loop's seconds by
        where they went, each as a share of the loop too."""
        known = self.fraction is not None
        return {"compute_s": round(self.compute_s, 4),
                "data_wait_s": round(self.wait_s, 4) if known else None,
                "other_s": round(self.other_s, 4), "loop_s": round(self.loop_s, 4),
                "compute_fraction": _round4(self.compute_fraction),
                "data_wait_fraction": _round4(self.fraction),
                "other_fraction": _round4(self.other_fraction),
                "wait_measure": self.measure}


def _round4(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass(slots=True)
class Loop:
    """The training loop's counts over a span, step 0 left out (it compiles).

    `step_s` is the steps' compute, `wait_s` the measured wait for data, `other_s` the time
    between steps spent elsewhere; `timed` counts the batches whose wait was measured, by
    `measure`.
    """

    batches: int = 0
    steps: int = 0
    step_s: float = 0.0
    wait_s: float = 0.0
    other_s: float = 0.0
    timed: int = 0
    measure: str | None = None
    ticks: int = 0
    fetching_ticks: int = 0
    producing_ticks: int = 0

    def add_batch(self, steps: int, step_s: float, wait_s: float | None,
                  other_s: float | None = None, measure: str | None = None) -> None:
        self.batches += 1
        self.steps += steps
        self.step_s += step_s
        self.other_s += other_s or 0.0
        if wait_s is not None:
            self.wait_s += wait_s
            self.timed += 1
            self.measure = measure or self.measure

    def add_tick(self, tick: DataTick) -> None:
        self.ticks += 1
        self.fetching_ticks += tick.fetching
        self.producing_ticks += tick.producing and not tick.fetching

    def wait(self) -> Wait:
        """Where the loop's time went, and the share spent waiting for data.

        Where every batch's fetch was timed, the wait is their sum: exact. Where none was, the
        stack samples give a share from `MIN_WAIT_TICKS` on: of the looks, those that found the
        training thread fetching, or, with a Python producer behind tf.data busy in at least
        `PRODUCER_SATURATED` of them, those that found it busy (the wait then sits inside the
        steps, and comes out of their compute). The time between steps is never taken for a
        wait: the callbacks and Keras' own bookkeeping spend it too.
        """
        loop_s = self.step_s + self.wait_s + self.other_s
        if self.batches and self.timed == self.batches:
            return Wait(_share(self.wait_s, loop_s), self.measure, self.wait_s, loop_s,
                        self.ticks, self.fetching_ticks, self.producing_ticks, self.step_s,
                        self.other_s)
        if self.ticks < MIN_WAIT_TICKS:
            return Wait(None, None, 0.0, loop_s, self.ticks, self.fetching_ticks,
                        self.producing_ticks, self.step_s + self.wait_s, self.other_s)
        sampled = self.fetching_ticks / self.ticks
        producing = (self.fetching_ticks + self.producing_ticks) / self.ticks
        if producing >= PRODUCER_SATURATED:
            sampled = producing
        wait_s = sampled * loop_s
        # The sampled wait sits inside the steps (tf.data fetches there) or between them:
        # either way it is neither compute nor other work, taken from the steps first.
        compute_s = self.step_s + self.wait_s
        from_compute = min(compute_s, wait_s)
        other_s = max(0.0, self.other_s - (wait_s - from_compute))
        return Wait(sampled, SAMPLED_TICKS, wait_s, loop_s, self.ticks, self.fetching_ticks,
                    self.producing_ticks, compute_s - from_compute, other_s)


@dataclass(frozen=True, slots=True)
class LoopTotals:
    """The run's loop so far as a counter wants it: every step, step 0 included, their summed
    seconds (the compute), the seconds spent waiting for data, the seconds between steps spent
    elsewhere (other callbacks, Keras' own bookkeeping), and the run's judged share of its
    loop spent waiting for data (0-1, step 0 left out; None while unknown)."""

    steps: int
    step_s: float
    wait_s: float
    other_s: float = 0.0
    wait_fraction: float | None = None


class EpochSpan:
    """One epoch's readings and loop counts, from its begin until its figures are complete.

    An epoch takes the readings whose NVML sample period overlaps it, by the rule batch rows
    use: the readings inside it, or, for an epoch shorter than the sampling interval, the
    first reading after its end (NVML's utilization describes the period before a reading).
    Readings taken while step 0 ran are left out, as they are from the run's figures.
    """

    __slots__ = ("epoch", "start_s", "end_s", "stats", "energy", "loop", "first_step_s",
                 "logs", "readings", "ready")

    def __init__(self, epoch: int, start_s: float, gpus: Sequence[int],
                 run_energy: dict[int, EnergyMeter]) -> None:
        self.epoch = epoch
        self.start_s = start_s
        self.end_s: float | None = None
        self.stats = {g: SpanStats() for g in gpus}
        self.energy = {g: EnergyMeter().follow(run_energy[g]) for g in gpus}
        self.loop = Loop()
        self.first_step_s: float | None = None
        self.logs: dict[str, Any] = {}
        self.readings = 0  # ticks counted into `stats`
        self.ready = False

    def gpu_stats(self) -> list[GPUStats]:
        """Each watched GPU's statistics over the epoch, its energy included."""
        return _with_energy([s.stats(g) for g, s in self.stats.items()], self.energy)


class Timeline:
    """Batch timings and NVML readings of one run, paired up.

    Each reading gets this training's judged utilization of its GPU (`judge_reading`), stored
    with it in `samples.csv`; the idle detector and the statistics that decide the verdicts
    are built on the same readings. Step 0 (compilation, the first batch) is left out of the
    run's and every epoch's figures, and of the loop counts; its duration is kept apart.

    Args:
        gpus: NVML indices of the watched GPUs (the per-GPU columns of `batches.csv`).
        idle_threshold_pct: Utilization under this counts as idle, percent.
        idle_patience_s: Seconds all GPUs must stay idle before an `IdleEvent` fires.
        interval_s: The sampler's interval, seconds (how far after a batch a reading may lie
            and still describe it: NVML's utilization covers the period before the reading).
    """

    def __init__(self, gpus: Sequence[int], idle_threshold_pct: float, idle_patience_s: float,
                 interval_s: float, steps_per_execution: int = 1) -> None:
        self.gpus = list(gpus)
        self.threshold = idle_threshold_pct
        self.patience = idle_patience_s
        self.interval = interval_s
        self._lock = threading.Lock()
        self._batches: deque[_BatchRow] = deque()
        self._samples: list[Reading] = []
        self._recent: dict[int, deque[Reading]] = {g: deque() for g in self.gpus}
        self._last_tick_s = -math.inf
        self.first_step_end_s: float | None = None
        self.first_step_s: float | None = None
        self._run_stats = {g: SpanStats() for g in self.gpus}
        # Energy counts every reading, step 0 included: compiling costs energy too.
        self._run_energy = {g: EnergyMeter() for g in self.gpus}
        self._open: EpochSpan | None = None
        self._closing: list[EpochSpan] = []  # ended, waiting for a reading that covers them
        self._last_batch_end_s = -math.inf
        self._idle_since: float | None = None
        self._idle_sums: dict[int, _IdleSums] = {}
        self._judge = ReadingJudge(idle_threshold_pct)
        self._last_judged: dict[int, float] = {}  # each GPU's latest judged utilization
        self.idle_event: IdleEvent | None = None
        self.idle_paused = False  # set while validation runs (it compiles and loads data too)
        self._run_loop = Loop()
        self._steps = 0  # every step, step 0 included
        self._every_step = Loop()  # every step, step 0 included: the counters' sums
        self._last_totals: LoopTotals | None = None  # what run_loop returned last
        self._pairing = BatchPairing(steps_per_execution)
        self._pairing_lock = threading.Lock()  # batch hooks may run on several threads at once
        self._epoch_number = 0  # the epoch the batch hooks belong to

    @property
    def epoch(self) -> int | None:
        """The epoch running now, or None between epochs."""
        span = self._open
        return None if span is None else span.epoch

    # -- training thread -------------------------------------------------------------------------

    def begin_epoch(self, epoch: int, start_s: float = 0.0) -> None:
        """Start counting a new epoch that began `start_s` seconds into training (an epoch
        still open, which Keras never ended, ends there)."""
        if self._open is not None:
            self.end_epoch(start_s)
        with self._pairing_lock:
            self._pairing.new_epoch()
            self._epoch_number = epoch
        with self._lock:
            self._open = EpochSpan(epoch, start_s, self.gpus, self._run_energy)

    def end_epoch(self, end_s: float, logs: dict[str, Any] | None = None) -> EpochSpan | None:
        """Close the running epoch at `end_s`, keeping the Keras `logs` for its row. It is
        ready at once when it has readings of its own or no GPU is watched; else once the
        reading that covers it comes (`ready_epochs`)."""
        with self._lock:
            span, self._open = self._open, None
            if span is None:
                return None
            span.end_s = end_s
            span.logs = dict(logs or {})
            span.ready = bool(span.readings) or not self.gpus
            self._closing.append(span)
            return span

    def ready_epochs(self, final: bool = False) -> list[EpochSpan]:
        """Take the closed epochs whose figures are complete, oldest first; with `final`,
        every closed epoch (the run is over: no reading will come)."""
        with self._lock:
            ready = []
            while self._closing and (final or self._closing[0].ready):
                ready.append(self._closing.pop(0))
            return ready

    def batch_begin(self, batch: int, now_s: float) -> None:
        """Keras' begin hook of `batch`, `now_s` seconds into training."""
        with self._pairing_lock:
            self._pairing.begin(batch, now_s)

    def batch_end(self, batch: int, now_s: float, logs: Any) -> Step | None:
        """Keras' end hook of `batch`: record the steps it completes (see `steps.BatchPairing`);
        return step 0 when it is one of them."""
        with self._pairing_lock:
            return self._add_steps(self._pairing.end(batch, now_s, logs))

    def end_batches(self) -> Step | None:
        """The epoch's batch hooks are over: record the steps still to pair, forget begins that
        never ended; return step 0 when it is one of them."""
        with self._pairing_lock:
            return self._add_steps(self._pairing.end_epoch())

    def add_steps(self, steps: Sequence[Step]) -> Step | None:
        """Record steps timed on the training thread (`loop_clock.LoopClock`), in order; return
        step 0 when it is one of them."""
        with self._pairing_lock:
            return self._add_steps(steps)

    def _add_steps(self, steps: Sequence[Step]) -> Step | None:
        first = None
        for step in steps:
            if self.first_step_end_s is None:
                first = step
            self.add_batch(self._epoch_number, step.last_batch, step.steps, step.begin_s,
                           step.end_s, step.wait_s, step.compute_s, step.other_s, step.measure)
        return first

    def add_batch(self, epoch: int, batch: int, steps: int, begin_s: float, end_s: float,
                  wait_s: float | None, compute_s: float | None = None,
                  other_s: float | None = None, measure: str | None = None) -> None:
        """Record one batch hook's timing (seconds since training started): the step from
        `begin_s` to `end_s`, its compute (default all of it), its measured wait for data
        (None when not measured) and the time since the step before spent elsewhere (see
        `steps.Step`). Cheap: no lock but the first time."""
        compute = end_s - begin_s if compute_s is None else compute_s
        self._batches.append(_BatchRow(epoch, batch, steps, begin_s, end_s, compute, wait_s,
                                       other_s))
        self._last_batch_end_s = max(self._last_batch_end_s, end_s)
        self._steps += steps
        self._every_step.add_batch(steps, compute, wait_s, other_s)  # the measure is run_wait's
        span = self._open
        if self.first_step_end_s is None:
            with self._lock:
                self.first_step_s = end_s - begin_s
                self.first_step_end_s = end_s
                if span is not None:
                    span.first_step_s = self.first_step_s
            return
        if span is not None:
            span.loop.add_batch(steps, compute, wait_s, other_s, measure)
        self._run_loop.add_batch(steps, compute, wait_s, other_s, measure)

    def add_data_tick(self, fetching: bool, producing: bool = False) -> None:
        """Count one sampler tick inside the training loop (an epoch open, after its first
        batch, not validating): whether the training thread was fetching data at that moment,
        and whether another thread was producing it."""
        span = self._open
        if span is None or self.idle_paused or not (span.loop.batches or span.first_step_s):
            # Outside the loop: step 0 compiling, an epoch setting up its data before its first
            # batch, validation, the time between epochs. Waiting there is not the loop's.
            return
        tick = DataTick(fetching, producing)
        span.loop.add_tick(tick)
        self._run_loop.add_tick(tick)

    def epoch_wait(self) -> Wait:
        """How long the running epoch has waited for data so far (see `Loop.wait`)."""
        span = self._open
        return (span.loop if span is not None else Loop()).wait()

    def run_wait(self) -> Wait:
        """How long the run has waited for data so far, step 0 left out (see `Loop.wait`)."""
        return self._run_loop.wait()

    def epoch_wait_fraction(self) -> float | None:
        """Share of the running epoch's loop spent waiting for data, 0-1."""
        return self.epoch_wait().fraction

    def run_wait_fraction(self) -> float | None:
        """Share of the run's loop spent waiting for data, 0-1."""
        return self.run_wait().fraction

    def run_loop(self) -> LoopTotals:
        """The run's loop so far as counters want it: every step, step 0 included, and its
        seconds by where they went. Where the wait was sampled (`Loop.wait`), the run's sampled
        share (step 0 left out) splits the seconds; a share moves as samples come, so each
        total is kept from ever going down: a counter that drops reads as a restart."""
        wait = self.run_wait()
        every = self._every_step
        compute, data, other = every.step_s, every.wait_s, every.other_s
        if wait.measure == SAMPLED_TICKS:
            loop = compute + data + other
            data = wait.fraction * loop
            compute = max(0.0, every.step_s + every.wait_s - data)
            other = max(0.0, loop - compute - data)
        with self._lock:
            last = self._last_totals
            if last is not None:
                compute, data = max(last.step_s, compute), max(last.wait_s, data)
                other = max(last.other_s, other)
            totals = LoopTotals(self._steps, compute, data, other, wait.fraction)
            self._last_totals = totals
        return totals

    def epoch_loop(self) -> Loop:
        """The running epoch's loop counts so far, step 0 left out (a copy)."""
        span = self._open
        return dataclasses.replace(span.loop) if span is not None else Loop()

    # -- sampler thread --------------------------------------------------------------------------

    def add_readings(self, readings: Sequence[Reading], data: DataTick | None = None
                     ) -> IdleEvent | None:
        """Take one sampler tick, and what the input pipeline was doing at that moment (None
        when not looked at); return an `IdleEvent` the first time idleness lasts the patience
        (it fires once per run)."""
        with self._lock:
            counted = self.first_step_end_s is not None
            spans = self._spans_for(readings[0].time_s) if readings and counted else []
            for r in readings:
                r.judged_util_pct = self.judge_reading(r)
                if r.judged_util_pct is not None and r.gpu in self._run_stats:
                    # Before step 0 ends too: what a GPU was last seen doing stands until the
                    # loop brings a new figure of it (see `_track_idle`).
                    self._last_judged[r.gpu] = r.judged_util_pct
                if data is not None:
                    r.fetching_data, r.producing_data = data.fetching, data.producing
                self._samples.append(r)
                self._add_energy(r)
                recent = self._recent.get(r.gpu)
                if recent is not None:
                    recent.append(r)
                if not counted or r.gpu not in self._run_stats:
                    continue
                self._run_stats[r.gpu].add(r, self.threshold)
                for span in spans:
                    span.stats[r.gpu].add(r, self.threshold)
            for span in spans:
                span.readings += 1
            if readings:
                self._last_tick_s = readings[0].time_s
                self._settle_closing(self._last_tick_s)
                return self._track_idle(readings) if counted else None
            return None

    def _spans_for(self, time_s: float) -> list[EpochSpan]:
        """The epochs a tick at `time_s` describes: the running one, and a closed one that has
        no reading yet and ended at most two intervals before it."""
        spans = [self._open] if self._open is not None else []
        spans += [s for s in self._closing if not s.ready and s.end_s is not None
                  and s.readings == 0 and 0.0 <= time_s - s.end_s <= 2 * self.interval]
        return spans

    def _settle_closing(self, time_s: float) -> None:
        for span in self._closing:
            if span.readings or (span.end_s is not None
                                 and time_s - span.end_s > 2 * self.interval):
                span.ready = True

    def _add_energy(self, r: Reading) -> None:
        meter = self._run_energy.get(r.gpu)
        if meter is not None:
            meter.add(r)
        if self._open is not None:
            meter = self._open.energy.get(r.gpu)
            if meter is not None:
                meter.add(r)

    def _track_idle(self, readings: Sequence[Reading]) -> IdleEvent | None:
        now = readings[0].time_s
        # A GPU without a judged value this tick (no new NVML sample of this process yet,
        # unsupported, lost, a failed read, busy with work that may be someone else's) keeps
        # its latest one (`add_readings` keeps them, from the run's first reading on): NVML
        # samples processes every 1/6 s to 1 s, so most ticks bring no new figure of a busy
        # training, and a GPU that last worked, even just before step 0 ended, must not let the
        # others' idleness stand for all. A GPU never judged is not evidence either way; at
        # least one GPU must have been judged idle this tick.
        measured = [r for r in readings
                    if r.gpu in self._run_stats and r.judged_util_pct is not None]
        all_idle = (not self.idle_paused and bool(measured)
                    and all(idle(u, self.threshold) for u in self._last_judged.values()))
        if not all_idle:
            self._idle_since = None
            self._idle_sums = {}
            return None
        if self._idle_since is None:
            self._idle_since = now
        for r in measured:
            sums = self._idle_sums.setdefault(r.gpu, _IdleSums())
            sums.judged_pct += r.judged_util_pct
            sums.judged_n += 1
            if r.util_pct is not None:
                sums.device_pct += r.util_pct
                sums.device_n += 1
        if self.idle_event is None and now - self._idle_since >= self.patience:
            means = {g: s.judged_pct / s.judged_n for g, s in self._idle_sums.items()
                     if s.judged_n}
            device = {g: s.device_pct / s.device_n for g, s in self._idle_sums.items()
                      if s.device_n}
            self.idle_event = IdleEvent(self._idle_since, now, means, device)
            return self.idle_event
        return None

    def judge_reading(self, r: Reading) -> float | None:
        """This training's utilization of a GPU in one reading, percent; None when the reading
        cannot tell (the rule is `usage.ReadingJudge.judge`)."""
        return self._judge.judge(r)

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
                b = self._batches[0]
                if not final and self.gpus and b.end_s > self._last_tick_s:
                    break
                self._batches.popleft()
                row = {"epoch": b.epoch, "batch": b.batch, "steps": b.steps, "time_s": b.end_s,
                       "step_s": b.compute_s, "wait_s": b.wait_s, "other_s": b.other_s}
                for gpu in self.gpus:
                    util, mem = self._overlap(*recent[gpu], b.begin_s, b.end_s)
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
        horizon = self._batches[0].begin_s if self._batches else self._last_batch_end_s
        for recent in self._recent.values():
            while len(recent) > 1 and recent[1].time_s <= horizon:
                recent.popleft()

    def epoch_stats(self) -> list[GPUStats]:
        """Each watched GPU's statistics over the running epoch so far, step 0 left out."""
        with self._lock:
            span = self._open
            if span is None:
                return [SpanStats().stats(g) for g in self.gpus]
            return span.gpu_stats()

    def run_stats(self) -> list[GPUStats]:
        """Each watched GPU's statistics over the run so far, step 0 left out."""
        with self._lock:
            return _with_energy([self._run_stats[g].stats(g) for g in self.gpus],
                                self._run_energy)


@dataclass(slots=True)  # made per step: not frozen, which costs more to make
class _BatchRow:
    """A batch hook's timing waiting for the reading that covers it (see `Timeline.drain`)."""

    epoch: int
    batch: int
    steps: int
    begin_s: float
    end_s: float
    compute_s: float
    wait_s: float | None
    other_s: float | None


@dataclass(slots=True)
class _IdleSums:
    """Running sums of an idle stretch on one GPU: the judged figure and the device's."""

    judged_pct: float = 0.0
    judged_n: int = 0
    device_pct: float = 0.0
    device_n: int = 0


def _with_energy(stats: list[GPUStats], meters: dict[int, EnergyMeter]) -> list[GPUStats]:
    return [dataclasses.replace(s, **meters[s.gpu].result()) if s.gpu in meters else s
            for s in stats]
