"""Training steps from Keras' batch hooks: which begin pairs with which end.

On TensorFlow the hooks come in order on the training thread. On JAX and torch, Keras runs
`on_train_batch_end` on a thread pool, several batches at a time and not always in order; with
`steps_per_execution=k` one pair of hook calls covers up to k steps, and the last call of an
epoch may close fewer. `BatchPairing` turns the hook calls into `Step` records, one per pair,
oldest first, each exactly once, whatever order the ends came in. It only pairs timestamps: the
`Timeline` owns it and counts the steps.

The pairing is what is left when the training thread's own stamps cannot be had (the hooks
called directly, not by `fit`; a Keras whose callback list cannot be wrapped): a hook run on a
pool thread is stamped when that thread gets to it, which may be long after the step ended, so
`loop_clock.LoopClock` times the loop wherever it can.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)  # not frozen: one is made per step, and frozen fields cost 0.7 µs more
class Step:
    """One `batches.csv` row's timing: the steps from `first_batch` to `last_batch`. Made once
    and never changed after.

    Attributes:
        first_batch: The batch index whose begin hook opened it.
        last_batch: The batch index whose end hook closed it.
        begin_s: Seconds since training started, when the step began (its begin hooks were
            left).
        end_s: Seconds since training started, when the step's compute was over (its end hooks
            were entered; never before the previous step's end: steps run in sequence).
        wait_s: Seconds the step waited for data, before it or inside it; None when not
            measured.
        logs: The Keras logs of the end hook (None where the step was timed on the training
            thread: the callback's own hook gets them).
        compute_s: Seconds of the step itself, its wait for data inside it left out; None means
            all of `end_s - begin_s`.
        other_s: Seconds since the previous step (or the epoch's begin) spent neither in this
            step nor fetching its data: the callbacks' hooks, Keras' own bookkeeping; None when
            not known (the first step of an epoch seen only by the callback's own hooks).
        measure: How `wait_s` was measured (`loop_clock.FETCH_TIMED`, `READY_TIMED`); None
            when it was not.
    """

    first_batch: int
    last_batch: int
    begin_s: float
    end_s: float
    wait_s: float | None
    logs: Any
    compute_s: float | None = None
    other_s: float | None = None
    measure: str | None = None

    @property
    def steps(self) -> int:
        """How many training steps the row covers."""
        return self.last_batch - self.first_batch + 1

    @property
    def step_s(self) -> float:
        """The step's compute, seconds (`batches.csv` `step_s`)."""
        return self.end_s - self.begin_s if self.compute_s is None else self.compute_s


class BatchPairing:
    """Pairs batch begins with batch ends, in the order the batches began. Not thread-safe on
    its own: the caller holds one lock around each call.

    Args:
        steps_per_execution: The model's `steps_per_execution` (how many batch indices one
            end hook may close).
    """

    def __init__(self, steps_per_execution: int = 1) -> None:
        if isinstance(steps_per_execution, bool) or not isinstance(steps_per_execution, int) \
                or steps_per_execution < 1:
            raise ValueError(f"steps_per_execution must be a whole number, at least 1, got "
                             f"{steps_per_execution!r}")
        self.steps_per_execution = steps_per_execution
        self._begins: dict[int, tuple[float, float | None]] = {}  # batch -> (begin, gap)
        self._ends: dict[int, tuple[float, Any]] = {}
        self._last_end: tuple[int, float] | None = None  # (batch, seconds) of the last step

    def new_epoch(self) -> None:
        """An epoch begins: nothing before its first step is counted as the loop's."""
        self._last_end = None

    def begin(self, batch: int, now_s: float) -> None:
        """The begin hook of `batch`, `now_s` seconds into training."""
        last = self._last_end
        gap = now_s - last[1] if last is not None and last[0] == batch - 1 else None
        self._begins[batch] = (now_s, gap)

    def end(self, batch: int, now_s: float, logs: Any) -> list[Step]:
        """The end hook of `batch`; returns the steps it completes, oldest first (none while an
        earlier batch has not ended). An end whose begin was never seen begins where it ends."""
        if batch not in self._begins and not any(
                b in self._begins for b in range(batch, batch - self.steps_per_execution, -1)):
            self._begins[batch] = (now_s, None)
        self._ends[batch] = (now_s, logs)
        return self._pair(final=False)

    def end_epoch(self) -> list[Step]:
        """The epoch ended (Keras has waited for each of its batch hooks): return the steps
        still to pair, and drop begins that never ended (a data set that ran out)."""
        steps = self._pair(final=True)
        self._ends.clear()
        return steps

    def _pair(self, final: bool) -> list[Step]:
        steps = []
        while self._begins:
            first = next(iter(self._begins))
            last = first if first in self._ends else next(
                (b for b in range(first + 1, first + self.steps_per_execution)
                 if b in self._ends), None)
            if last is None:
                if not final:
                    break
                del self._begins[first]
                continue
            begin, gap = self._begins.pop(first)
            end, logs = self._ends.pop(last)
            if self._last_end is not None:  # steps run in sequence: none ends before the last
                end = max(end, self._last_end[1])
            self._last_end = (last, end)
            # The hooks alone cannot tell a wait for data from other work between steps: the
            # gap is time spent elsewhere, and the wait is not measured.
            steps.append(Step(first, last, begin, end, None, logs, other_s=gap))
        return steps
