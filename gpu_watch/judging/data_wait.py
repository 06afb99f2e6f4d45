"""Where the training loop's time went, and the share of it spent waiting for data.

`Loop` counts a span's steps (their compute, the wait for data measured around them, the time
between them spent elsewhere) and the stack sampler's looks at the input pipeline (`DataTick`);
`Loop.wait` turns the counts into a `Wait`, the figures an epoch row and `run.json` show.
`LoopTotals` is the run's loop as the exporters' counters want it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# A share of stack samples is a sample: from n samples its standard error is at most
# 0.5 / sqrt(n), 11 points at 20 samples (0.2 s at the stack sampler's 100 per second). Fewer
# give no sampled wait share.
MIN_WAIT_TICKS = 20
# The measure of waiting for data where no fetch was timed (see `Loop.wait`): the share of the
# stack sampler's looks that found the input pipeline busy.
SAMPLED_TICKS = "sampled_ticks"


# A Python producer behind `tf.data` that could not be timed (a `tf.py_function` mapped over
# elements rather than batches, a `Dataset.from_generator` whose items tf.data batches) runs
# on a thread of its own, ahead of the step: busy in fewer samples than this share, it keeps
# up and delays nothing. Busier, it is the bottleneck, and the share of samples it was busy
# bounds the wait from above (the step's own work overlapped it). A producer that is the
# bottleneck reads 0.85-0.9 busy, not 1, because tf.data's own code runs between its items:
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


def seen_at_work(ticks: int, fetching_ticks: int, producing_ticks: int,
                 min_ticks: int = MIN_WAIT_TICKS) -> float | None:
    """The share of the stack sampler's looks that found the input pipeline at work (the
    training thread fetching, or another thread producing), 0-1; None under `min_ticks` looks.

    It is not a wait: a pipeline that reads ahead works while the loop computes, or waits at a
    collective step for other ranks. Beside the wait it tells how slow the input itself is."""
    if ticks <= 0 or ticks < min_ticks:
        return None
    return (fetching_ticks + producing_ticks) / ticks


@dataclass(frozen=True)
class Wait:
    """How a span of the training loop spent its time: computing, waiting for data, elsewhere.

    Attributes:
        fraction: The share of the loop's time spent waiting for data, 0-1; None when it was
            not measured.
        measure: How: `loop_clock.FETCH_TIMED` (each fetch on the training thread, timed),
            `loop_clock.READY_TIMED` (each batch timed as it left a Python source behind
            tf.data, or from the one Python function a tf.data pipeline runs per batch,
            against the step that took it) or `SAMPLED_TICKS` (the share of the stack
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
    def input_fraction(self) -> float | None:
        """The share of the sampler's looks that found the input at work (`seen_at_work`)."""
        return seen_at_work(self.ticks, self.fetching_ticks, self.producing_ticks)

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
        """Count one batch hook's steps: their compute, their wait for data (None when not
        measured, `measure` says how when it was) and the time before them spent elsewhere."""
        self.batches += 1
        self.steps += steps
        self.step_s += step_s
        self.other_s += other_s or 0.0
        if wait_s is not None:
            self.wait_s += wait_s
            self.timed += 1
            self.measure = measure or self.measure

    def add_loop(self, other: Loop) -> None:
        """Count the batches another `Loop` counted (its ticks are not counted)."""
        self.batches += other.batches
        self.steps += other.steps
        self.step_s += other.step_s
        self.other_s += other.other_s
        self.wait_s += other.wait_s
        self.timed += other.timed
        self.measure = other.measure or self.measure

    def add_tick(self, tick: DataTick) -> None:
        """Count one look at the input pipeline; a thread producing data counts only while the
        training thread is not fetching (that look is a wait already)."""
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
        at_work = seen_at_work(self.ticks, self.fetching_ticks, self.producing_ticks)
        if at_work is None:
            return Wait(None, None, 0.0, loop_s, self.ticks, self.fetching_ticks,
                        self.producing_ticks, self.step_s + self.wait_s, self.other_s)
        sampled = self.fetching_ticks / self.ticks
        if at_work >= PRODUCER_SATURATED:
            sampled = at_work
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
    elsewhere (other callbacks, Keras' own bookkeeping), the run's judged share of its
    loop spent waiting for data (0-1, step 0 left out; None while unknown), and the seconds
    the stack sampler saw the input at work (`Wait.input_fraction` of the loop; 0 where it
    does not look)."""

    steps: int
    step_s: float
    wait_s: float
    other_s: float = 0.0
    wait_fraction: float | None = None
    input_s: float = 0.0
