"""Where batches meet readings: per-batch rows and the epochs' spans.

The training thread adds batch timings (a row appended per step); the sampler thread adds NVML
readings. `drain` pairs each batch with the readings that overlap it and hands back rows ready
to write. Each epoch's span, and the run's, keeps its GPUs' running statistics
(`usage.SpanStats`: sums and 0-100 % histograms, so memory stays flat over days), its energy
(`usage.EnergyMeter`) and its loop's counts (`data_wait.Loop`); the idle detector
(`idle_watch.IdleWatch`) watches the same judged readings.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gpu_watch.judging.data_wait import SAMPLED_TICKS, DataTick, Loop, LoopTotals, Wait
from gpu_watch.judging.idle_watch import IdleEvent, IdleWatch
from gpu_watch.judging.usage import EnergyMeter, ReadingJudge, SpanStats
from gpu_watch.judging.verdict import GPUStats
from gpu_watch.sensing.nvml import Reading
from gpu_watch.sensing.steps import BatchPairing, Step


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
        idle_patience_s: Seconds all GPUs must stay idle before an `IdleEvent` fires (see
            `idle_watch.IdleWatch`).
        interval_s: The sampler's interval, seconds (how far after a batch a reading may lie
            and still describe it: NVML's utilization covers the period before the reading).
    """

    def __init__(self, gpus: Sequence[int], idle_threshold_pct: float, idle_patience_s: float,
                 interval_s: float, steps_per_execution: int = 1) -> None:
        self.gpus = list(gpus)
        self.threshold = idle_threshold_pct
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
        self._judge = ReadingJudge(idle_threshold_pct)
        self._idle = IdleWatch(self.gpus, idle_threshold_pct, idle_patience_s)
        self.idle_paused = False  # set while validation runs (it compiles and loads data too)
        self._run_loop = Loop()
        self._every_step = Loop()  # every step, step 0 included: the counters' sums
        self._last_totals: LoopTotals | None = None  # what run_loop returned last
        self._pairing = BatchPairing(steps_per_execution)
        self._pairing_lock = threading.Lock()  # batch hooks may run on several threads at once
        self._epoch_number = 0  # the epoch the batch hooks belong to

    @property
    def idle_event(self) -> IdleEvent | None:
        """The idle stretch that lasted the patience, once it happened (once per run)."""
        return self._idle.event

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

    def _add_steps(self, steps: Sequence[Step], epoch: int | None = None) -> Step | None:
        """Record `steps` (of the open epoch, or of `epoch`) in order: a row each, and their
        loop figures counted once per bunch (the clock hands steps on in bunches, and this runs
        for every step of the training). Step 0 is in no loop's counts but the counters' sums:
        it compiles, and its measure counts for nothing. Return step 0 when it is one of them."""
        epoch = self._epoch_number if epoch is None else epoch
        first = None
        if steps and self.first_step_end_s is None:
            first = steps[0]
            self._every_step.add_batch(first.steps, self._row(epoch, first), first.wait_s,
                                       first.other_s)
            with self._lock:
                self.first_step_s = first.end_s - first.begin_s
                self.first_step_end_s = first.end_s
                if self._open is not None:
                    self._open.first_step_s = self.first_step_s
            steps = steps[1:]
        if not steps:
            return first
        bunch = Loop()
        for step in steps:
            bunch.add_batch(step.steps, self._row(epoch, step), step.wait_s, step.other_s,
                            step.measure)
        self._every_step.add_loop(bunch)
        span = self._open
        if span is not None:
            span.loop.add_loop(bunch)
        self._run_loop.add_loop(bunch)
        return first

    def _row(self, epoch: int, step: Step) -> float:
        """Add `step`'s `batches.csv` row; return its compute."""
        compute = step.step_s
        self._batches.append(_BatchRow(epoch, step.last_batch, step.steps, step.begin_s,
                                       step.end_s, compute, step.wait_s, step.other_s))
        self._last_batch_end_s = max(self._last_batch_end_s, step.end_s)
        return compute

    def add_batch(self, epoch: int, batch: int, steps: int, begin_s: float, end_s: float,
                  wait_s: float | None, compute_s: float | None = None,
                  other_s: float | None = None, measure: str | None = None) -> None:
        """Record one batch hook's timing (seconds since training started): the `steps` steps
        up to `batch`, from `begin_s` to `end_s`, their compute (default all of it), their
        measured wait for data (None when not measured) and the time since the row before
        spent elsewhere (see `steps.Step`). Cheap: no lock but the first time."""
        self._add_steps((Step(batch - steps + 1, batch, begin_s, end_s, wait_s, None, compute_s,
                              other_s, measure),), epoch)

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

    def run_wait(self) -> Wait:
        """How long the run has waited for data so far, step 0 left out (see `Loop.wait`)."""
        return self._run_loop.wait()

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
        seen = wait.input_fraction
        seen_s = 0.0 if seen is None else seen * (compute + data + other)
        with self._lock:
            last = self._last_totals
            if last is not None:
                compute, data = max(last.step_s, compute), max(last.wait_s, data)
                other, seen_s = max(last.other_s, other), max(last.input_s, seen_s)
            totals = LoopTotals(every.steps, compute, data, other, wait.fraction, seen_s)
            self._last_totals = totals
        return totals

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
                self._idle.see(r)
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
                return self._idle.track(readings, self.idle_paused) if counted else None
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


def _with_energy(stats: list[GPUStats], meters: dict[int, EnergyMeter]) -> list[GPUStats]:
    return [dataclasses.replace(s, **meters[s.gpu].result()) if s.gpu in meters else s
            for s in stats]
