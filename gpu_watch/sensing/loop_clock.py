"""The training loop's clock: each step's compute, its wait for data and the time between steps
spent elsewhere, stamped on the thread that runs the loop.

Keras runs `on_train_batch_end` on a thread pool on JAX and torch, so a callback's own hooks
cannot time the loop there. `keras_internals.attach_loop_clock` wraps the hooks of `fit`'s
callback list instead: the wrappers run on the training thread, before Keras hands anything to
the pool, and call `LoopClock.epoch_begin`, `begin` and `end` with the time on entering and on
leaving the list's hook. The fetch of each batch is timed where Keras makes it
(`keras_internals.attach_fetch_timer`):

- on JAX and torch the training thread pulls each batch from the epoch's iterator: `fetched`
  gets the start and end of each pull, the exact wait (`FETCH_TIMED`);
- on TensorFlow a Python source (a generator, a `PyDataset`, a torch `DataLoader`, or a
  `tf.data` pipeline's one Python function run per batch) runs on a thread of
  tf.data's: `ready` gets the moment each batch left it, and the step that took the batch
  waited from its begin until then, if it began earlier (`READY_TIMED`; a step of several
  batches, see `_ready_wait`);
- elsewhere (a `tf.data` pipeline of TensorFlow ops, or one that calls Python per element; a
  source of another kind) no batch is seen: the `StackSampler` looks at the threads' stacks
  100 times a second instead (see `data_wait.Loop`).

A step's loop time runs from the end of the step before (or the start of the epoch's loop) to
its own end (entering its end hooks). Of it, the data wait is what the fetch took; the compute
is the step itself (from leaving the begin hooks to entering the end hooks) less the wait inside
it; the rest (the callbacks' hooks, Keras' own bookkeeping between steps) is `other_s`. An
epoch's loop begins with its first batch: the pass over the input starting before it is not the
loop's (`pass_started`). The three add up to the loop time, and the loop times of one epoch to
no more than its duration. A step that follows a pause (a wait for data, time elsewhere) and
runs slower than steps straight after another gives what it lost to that pause
(`LoopClock._after_pause`): removing the pause would buy it back too.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpu_watch.errors import swallowed
from gpu_watch.sensing.steps import Step

# How a step's wait for data was measured (`Wait.measure`, `epochs.csv` `wait_measure`).
FETCH_TIMED = "fetch_timed"
READY_TIMED = "ready_timed"
# Batches made ready but not yet taken by a step, kept at most: a source that makes batches no
# step takes (it does not feed the training) stops the measure instead of growing.
MAX_READY = 10_000
STACK_HZ = 100.0  # the stack sampler's rate (see `StackSampler`)
SETTLE_POLL_S = 0.001  # how often `LoopClock.settle` looks whether the device's steps are timed
# A fetch at least this long that began while the device ran a step is slow. Until this many
# times its length after it ended, each fetch that follows one that ended by then hands the
# device's running step to the waiting thread as it begins, which stamps the step's end inside
# the fetch (the training thread, pulling, would only look once the fetch is over, and its wait
# would read 0). A stall that comes back within that time is caught from its second on; one of
# the same length that comes back later is at most 1/50 of the loop, unmeasured. A pull of a
# batch that is ready takes 40-150 µs on two cores (arrays, a generator, a `PyDataset`, with
# workers or without) and hands nothing over; a `tf.data` iterator's 0.6 ms does, each step,
# where handing each step over costs about 20 µs (a tiny MLP's fit on JAX), a switch of
# Python's lock between threads. A slow pull with no step running (an epoch's first, waiting
# for a `PyDataset`'s workers to start) is timed whole, and reaches nothing.
SLOW_FETCH_S = 0.00025
SLOW_FETCH_REACH = 50
# Steps are handed on to the sink once this many wait, or this long (the clock's seconds) after
# the last hand-on, whichever comes first; an epoch's first step at once (see `LoopClock.end`).
DRAIN_STEPS = 64
DRAIN_S = 0.05
# A step that follows a pause at least this long (its device idle: waiting for data, or for work
# elsewhere) has restarted, and what it took over a step straight after another is the pause's
# cost (see `LoopClock._after_pause`). Shorter gaps are a loop's own bookkeeping.
PAUSE_S = 0.001
# The steps straight after another whose mean compute is what such a step takes (`_warm`):
# the latest this many. A step's own time varies by half either way, and an epoch's first steps
# run longer than its last: the mean of many is what an epoch's wall time is made of. A few take
# a hundred times as long (a new batch shape compiles, the garbage collector runs): the mean
# leaves out one in this many of them at each end, the quickest and the slowest.
WARM_STEPS = 64
WARM_TRIM = 8


class LoopClock:
    """Turns the training thread's stamps into `Step` records, one per end hook, in order.

    The stamps are the clock's raw readings (the wrappers pay for one call each); the steps
    handed on are in seconds since `t0`, the run's time axis.

    Args:
        now: The clock, seconds (e.g. `time.perf_counter`).
        t0: The clock's reading when training started.
        sink: Takes the steps as they end (the timeline counts them).
        monotonic: The clock that bounds `settle`'s wait, seconds. Default `time.monotonic`.
        sleep: Waits that many seconds between `settle`'s looks. Default `time.sleep`.
    """

    def __init__(self, now: Callable[[], float], t0: float,
                 sink: Callable[[list[Step]], Any], *,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        self.now = now
        self.t0 = t0
        self._sink = sink
        self._monotonic = monotonic
        self._sleep = sleep
        # Seconds spent in each callback's own batch hooks, by (position in the list, class
        # name): which callbacks spend the loop's time.
        self.hook_s: dict[tuple[int, str], float] = {}
        self.attached: bool = False  # the callback list's hooks are wrapped: stamps come from here
        self.measure: str | None = None  # FETCH_TIMED or READY_TIMED once a fetch probe attached
        self.ready_lost: str | None = None  # why the ready stamps stopped matching the steps
        # From an epoch's begin until its first batch's begin hooks are entered, Keras' fit runs
        # its epoch iterator alone: the input pipeline starts its pass (see `pass_started`).
        self.starting_pass = False
        self._epoch_number = None  # the epoch's begin among the things to time (an int)
        self._mark: float | None = None  # end of the last step, or the epoch's loop's start
        self._begin: tuple[int, float] | None = None  # batch, when the begin hooks were left
        self._fetches: list[tuple[float, float]] = []  # training thread: since the last step
        # (asked, ready) per batch: the producer thread appends, the training thread pops.
        self._ready: deque[tuple[float, float]] = deque()
        # Where the framework dispatches steps ahead of the device (JAX): a function that
        # blocks until a step's outputs exist, run on a thread of its own (`_watch`), and one
        # that says at once whether they do (see `_look`).
        self.device_done: Callable[[Any], Any] | None = None
        self.device_ready: Callable[[Any], bool] | None = None
        self.device_error: str | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._put_count = 0  # items handed to the waiting thread (training thread only)
        self._done_count = 0  # and dealt with (waiting thread only)
        self._watcher: threading.Thread | None = None
        self._issued = 0  # numbers given to dispatched steps and epoch begins, in order
        # The newest dispatched step, which the training thread looks at itself; None when
        # there is none. The thread that runs the loop holds it: its ident, set with the first.
        self._pending: _Dispatched | None = None
        self._loop_thread = None
        # Until when (the clock's seconds) a fetch hands the running step over as it begins
        # (see `SLOW_FETCH_REACH`), whether the last fetch ended before then, and whether the
        # device ran a step as the fetch going on began.
        self._hand_over_until = -math.inf
        self._in_reach = False
        self._fetch_overlaps = False
        # What either thread timed: number -> (step or epoch begin, when its outputs existed).
        # The training thread turns them into steps in order (`_drain`), and the timeline is
        # fed from one thread.
        self._timed: dict[int, tuple[Any, float]] = {}
        self._drained = 0  # the number of the next one to turn into a step
        # When steps were last handed on (the last one's end hooks entered, on the clock), and
        # the steps timed here since, waiting to be (see `end`).
        self._drained_at = -math.inf
        self._ended: list[Step] = []
        self._drain_lock = threading.Lock()
        self._device_free: float | None = None  # when the device finished the last step
        # The compute of the latest steps straight after another (see `_after_pause`); None
        # until the run's first step, which compiles, has passed.
        self._warm: deque[float] | None = None

    # -- the training thread ---------------------------------------------------------------------

    def epoch_begin(self, t: float) -> None:
        """The epoch's begin hooks were left at `t`: its setup starts, and its first step's
        loop time counts from here until `pass_started` says when the loop began."""
        self._mark = t
        self._begin = None
        self._fetches.clear()
        self.starting_pass = True
        self._drained_at = -math.inf  # the epoch's first step is handed on at once
        if self.device_done is not None:
            self._epoch_number = self._number()
            self._timed[self._epoch_number] = (_EPOCH_BEGIN, t)

    def fetch_begins(self) -> None:
        """The training thread starts to pull a batch (where the device's steps are looked
        at): a step found done ended before the fetch; after a fetch that ended within the
        reach of a slow one (`SLOW_FETCH_REACH`), the running one is handed to the waiting
        thread, whose stamp comes while the fetch goes on."""
        self._look()
        self._fetch_overlaps = self._pending is not None
        if self._in_reach:
            self._hand_over()

    def fetched(self, start: float, end: float) -> None:
        """The training thread pulled a batch from `start` to `end` (`FETCH_TIMED`)."""
        self._fetches.append((start, end))
        if self.device_ready is not None:
            if self._fetch_overlaps and end - start >= SLOW_FETCH_S:
                self._hand_over_until = max(self._hand_over_until,
                                            end + SLOW_FETCH_REACH * (end - start))
            self._in_reach = end < self._hand_over_until
            self._look()

    def hook_begins(self) -> None:
        """A callback's own batch hook starts: on the training thread, Keras has waited for the
        step's logs (a callback not safe to run on its pool asks for them), so the step is
        looked at before the hook's time passes."""
        if self._pending is not None and threading.get_ident() == self._loop_thread:
            self._look()

    def pass_started(self, t: float) -> None:
        """The begin hooks of the epoch's first batch were entered at `t`: the epoch's loop
        begins, at the first pull of a batch if one came before (torch's epoch iterator pulls
        each batch before the begin hooks).

        Since the epoch's begin hooks were left, Keras' `fit` ran its epoch iterator alone
        (and, on torch, switched the model to training mode): the data adapter's start of an
        epoch (a `PyDataset`'s `on_epoch_begin`, its workers' start), a new pass's iterator
        (a torch `DataLoader` starts its workers there; the wait for them to make a first batch
        is in its pull) and, as `fit` lets go of it, the end of the last pass (a tf.data
        iterator waits for its threads: 0.2-0.6 s in some epochs on two cores, for arrays in
        memory too). That is the epoch's setup, as its tail after the last batch is (the
        pass's end, validation): in the epoch's duration, and in none of its steps. Counted as
        a wait, the arrays of a short epoch would read as input-bound; as time elsewhere, as
        slow callbacks. Where the device's steps are timed from its side, the device is free
        for the loop from its start."""
        self.starting_pass = False
        if self._mark is None:
            return
        self._mark = min(t, self._fetches[0][0]) if self._fetches else t
        if self._epoch_number in self._timed:  # not turned into steps yet: none came since
            self._timed[self._epoch_number] = (_EPOCH_BEGIN, self._mark)

    def begin(self, batch: int, left_s: float) -> None:
        """The begin hooks of `batch` were left at `left_s`: the step starts."""
        self._begin = (batch, left_s)

    def end(self, batch: int, entered_s: float, outputs: Any = None) -> Step | None:
        """The end hooks of `batch` were entered at `entered_s`: the step's compute is over,
        or, where the framework dispatches ahead (`device_done` set), handed to the device,
        whose `outputs` are waited for on another thread. Returns the step (also handed to the
        sink), or None when it is timed once the device is done. The end hooks' own time is
        counted in the next step's `other_s` (the last step of an epoch leaves it to the
        epoch's tail)."""
        first, begin = self._begin if self._begin is not None else (batch, entered_s)
        self._begin = None
        fetches, self._fetches = self._fetches, []
        if self.device_done is not None and outputs is not None:
            self._mark = entered_s
            item = _Dispatched(self._issued, first, batch, begin, entered_s, fetches, outputs)
            self._issued += 1
            if self.device_ready is None:
                self._put(item)
            else:
                if self._pending is not None:
                    self._look()
                    self._hand_over()  # not done yet: the device is behind, its step waited for
                else:
                    self._loop_thread = threading.get_ident()
                self._pending = item
            # Steps go on in bunches, as below.
            if self._drained in self._timed and (
                    len(self._timed) >= DRAIN_STEPS or entered_s - self._drained_at >= DRAIN_S):
                self._drain()
            return None
        mark = self._mark
        inside = outside = 0.0
        for start, end in fetches:
            if start >= begin:
                inside += end - start
            else:
                outside += end - start
        wait: float | None = None
        if self.measure == FETCH_TIMED:
            wait = inside + outside
        elif self.measure == READY_TIMED:
            wait = self._ready_wait(batch - first + 1, begin, entered_s)
            inside = wait or 0.0
        step_s = entered_s - begin
        compute = max(0.0, step_s - inside)
        other = None
        if mark is not None:
            loop = max(entered_s - mark, step_s)
            other = max(0.0, loop - compute - (wait or 0.0))
            compute, wait, other = self._after_pause(compute, wait, other)
        self._mark = entered_s
        # Positional: keywords cost a step 0.2 µs more.
        step = Step(first, batch, begin - self.t0, entered_s - self.t0, wait, None, compute, other,
                    self.measure if wait is not None else None)
        # Steps go on in bunches: a hand-on costs more than a step's own arithmetic. An
        # epoch's first step goes at once, the rest once `DRAIN_STEPS` wait or `DRAIN_S` of
        # the loop's time passed since the last hand-on, and all by `settle` at the epoch's end.
        self._ended.append(step)
        if len(self._ended) >= DRAIN_STEPS or entered_s - self._drained_at >= DRAIN_S:
            self._drained_at = entered_s
            self._hand_on_ended()
        return step

    # -- steps dispatched ahead of the device ------------------------------------------------------

    def _number(self) -> int:
        self._issued += 1
        return self._issued - 1

    def _look(self) -> None:
        """Time the dispatched step the training thread holds, if the device has finished it,
        as of now: the training thread's own look costs a call, where each step handed to the
        waiting thread costs a switch of Python's lock between threads (tens of microseconds
        on a small machine). The training thread holds a step only while the device keeps up
        with it: it looks at the next end hook, and as fetches and callbacks' hooks begin and
        fetches end, so the stamp is at most that late."""
        if self._pending is None:
            return
        item = self._pending
        try:
            done = self.device_ready(item.outputs)
        except Exception:  # the waiting thread's own wait says what went wrong
            self._hand_over()
            return
        if done:
            self._pending = None
            self._timed[item.number] = (item, self.now())

    def _hand_over(self) -> None:
        """Hand the step the training thread holds, if any, to the waiting thread."""
        if self._pending is not None:
            item, self._pending = self._pending, None
            self._put(item)

    def _put(self, item: _Dispatched) -> None:
        # A C-level queue: the training thread pays a fraction of a microsecond a step, and the
        # waiting thread blocks without Python's lock.
        self._put_count += 1
        self._queue.put(item)
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, daemon=True,
                                             name="gpu-watch-device-steps")
            self._watcher.start()

    def settle(self, timeout_s: float = 5.0) -> bool:
        """Wait until every step handed to the device is timed (Keras waits for the device at
        each epoch's end, so this is quick there); at most `timeout_s`. Returns whether all
        are."""
        self._hand_on_ended()
        self._look()
        self._hand_over()
        deadline = self._monotonic() + timeout_s
        while self._done_count < self._put_count:
            # A step was handed over, so the waiting thread exists; one that died times
            # nothing more.
            if self._monotonic() >= deadline or not self._watcher.is_alive():
                self._drain()
                return False
            self._sleep(SETTLE_POLL_S)
        self._drain()
        return True

    def close(self) -> None:
        """Time what is still waiting for the device (briefly), then end the waiting thread."""
        self.settle()
        if self._watcher is None:
            return
        self._queue.put(_STOP)
        self._watcher.join(timeout=1.0)

    def _watch(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self.device_done(item.outputs)
            except Exception as exc:  # a step that failed on the device: timed as dispatched
                self.device_error = self.device_error or f"{type(exc).__name__}: {exc}"
            self._timed[item.number] = (item, self.now())
            self._done_count += 1

    def _drain(self) -> None:
        """Turn what was timed so far into steps, in order, and hand them on: a step timed by
        the training thread waits for the earlier ones the waiting thread times."""
        if self._drained not in self._timed:
            return
        steps = []
        with self._drain_lock:
            while self._drained in self._timed:
                item, done = self._timed.pop(self._drained)
                self._drained += 1
                if item is _EPOCH_BEGIN:
                    self._device_free = done
                else:
                    # The device runs its steps in order: one is done no earlier than the one
                    # before it, whichever thread stamped either, and late.
                    free = self._device_free if self._device_free is not None else done
                    steps.append(self._device_step(item, max(done, item.entered, free)))
                    self._drained_at = item.entered
        if steps:
            self._hand_on(steps)

    def _hand_on_ended(self) -> None:
        """Hand on the steps `end` timed and kept, if any."""
        if self._ended:
            steps, self._ended = self._ended, []
            self._hand_on(steps)

    def _hand_on(self, steps: list[Step]) -> None:
        # On the training thread: a bug past the clock is recorded and its steps are lost; the
        # training goes on.
        try:
            self._sink(steps)
        except Exception as exc:
            swallowed("loop_clock.sink", exc)

    def _device_step(self, item: _Dispatched, done: float) -> Step:
        """A step timed from the device's side: it ran from when the device was free and the
        step's work was dispatched (once its batch was fetched) until its outputs existed.
        Before that the device sat idle from its last step's end: the part of that time the
        training thread spent fetching is the wait for data, the rest was spent elsewhere. A
        fetch that overlapped the device's work on earlier steps cost nothing.

        The device's end is stamped when the training thread next looks (`_look`) or, for a
        step handed over, when the waiting thread gets to run after the outputs exist: never
        early, and a little late on a busy machine, or while the other thread holds Python's
        lock. That makes the idle time look shorter, never longer: a wait may read low, none
        is invented.
        """
        dispatch = item.begin
        for fetch_start, fetch_end in item.fetches:  # loops, not lists: this runs every step
            if fetch_start >= item.begin:
                dispatch = max(dispatch, fetch_end)
        free = self._device_free
        start = dispatch if free is None else max(free, dispatch)
        wait: float | None = None
        if self.measure == FETCH_TIMED:
            idle_from = -math.inf if free is None else free
            wait = 0.0
            for fetch_start, fetch_end in item.fetches:
                wait += max(0.0, min(fetch_end, dispatch) - max(fetch_start, idle_from))
        compute = max(0.0, done - start)
        other = None
        if free is not None:
            other = max(0.0, (done - free) - compute - (wait or 0.0))
            compute, wait, other = self._after_pause(compute, wait, other)
        self._device_free = done
        return Step(item.first, item.last, start - self.t0, done - self.t0, wait, None, compute,
                    other, self.measure if wait is not None else None)  # positional: see `end`

    def _after_pause(self, compute: float, wait: float | None, other: float
                     ) -> tuple[float, float | None, float]:
        """A step's compute, wait for data and time elsewhere, with what the step lost to the
        pause before it counted with that pause.

        A step that follows a pause of at least `PAUSE_S` (the training thread fetching data,
        or running callbacks, while the device had nothing to do) runs slower than one straight
        after another: its dispatch and the copy of its batch no longer overlap the step before,
        and a CPU that computes it has parked its threads and cooled its caches. The time it
        takes over the mean of the latest `WARM_STEPS` steps straight after another (less one
        in `WARM_TRIM` at each end, the quickest and the slowest) is what the pause cost beyond
        its own length, and what removing it would buy too: it goes to the wait and to the
        time elsewhere, each by its share of the pause. A step quicker than that mean gives
        the difference back to its compute, at most the pause: one step's figure is an
        estimate either way, and over an epoch the noise of steps' times cancels instead of
        adding up to a wait. The run's first step compiles: it is neither measured against the
        others nor one of them. Before the first step straight after another, nothing moves.
        Where the wait is not measured per step (None), nothing is taken for one, and nothing
        moves.
        """
        if wait is None:
            return compute, wait, other
        if self._warm is None:  # the run's first step: it compiles
            self._warm = deque(maxlen=WARM_STEPS)
            return compute, wait, other
        pause = wait + other
        if pause < PAUSE_S:
            self._warm.append(compute)  # a paused step pays for the mean; this one, an append
            return compute, wait, other
        if not self._warm:
            return compute, wait, other
        # Signed: a step's time varies either way, and one after a pause that was quicker than
        # the mean gives time back, at most the pause, or the noise would add up to a wait.
        warm = sorted(self._warm)
        cut = len(warm) // WARM_TRIM
        warm = warm[cut:len(warm) - cut]
        excess = max(-pause, compute - sum(warm) / len(warm))
        to_wait = excess * wait / pause
        return compute - excess, wait + to_wait, other + excess - to_wait

    def add_hook_time(self, key: tuple[int, str], seconds: float) -> None:
        """A callback's batch hook took `seconds` (on whichever thread Keras ran it)."""
        self.hook_s[key] = self.hook_s.get(key, 0.0) + seconds

    def slowest_hooks(self, count: int = 3) -> list[tuple[str, float]]:
        """The callbacks whose batch hooks took longest, slowest first: (class name, seconds)."""
        ranked = sorted(self.hook_s.items(), key=lambda item: -item[1])[:count]
        return [(name, seconds) for (_, name), seconds in ranked]

    def _ready_wait(self, batches: int, begin: float, end: float) -> float | None:
        """The wait of a step that took `batches` batches made ready by another thread.

        One batch: from the step's begin, or from when the source was asked for it if that
        came later (the time tf.data took to ask is its own, not the source's), until it was
        ready, within the step. Several (`steps_per_execution`): the step asks for each batch
        inside one call, out of Python's sight, so it is taken to compute each for the same
        time and wait for any batch not ready when it finished the one before; the one time
        per batch that makes the step end when it did gives the wait (the step's time less
        its batches' compute). A batch made ready before the step needed it adds nothing.
        """
        ready = self._ready
        if self.ready_lost is not None or len(ready) < batches:
            if self.ready_lost is None:
                self.ready_lost = ("a step took a batch its source had not made ready: the "
                                   "source seen is not the one the training reads")
            return None
        if batches < 2:
            asked = last = begin  # no batch taken (an end that names an earlier batch): no wait
            if batches > 0:
                asked, last = ready.popleft()
            return min(max(0.0, last - max(begin, asked)), end - begin)
        # The step's end is the latest of: its begin plus every batch's compute, and each
        # batch's ready time plus its own compute and that of the batches after it. Each is a
        # line in the time per batch; the step ended at `end`, where the first of them meets it.
        per_batch = (end - begin) / batches
        for left in range(batches, 0, -1):
            per_batch = min(per_batch, (end - ready.popleft()[1]) / left)
        return end - begin - batches * max(0.0, per_batch)

    # -- the producer's thread ---------------------------------------------------------------------

    def ready(self, t: float, asked: float = -math.inf) -> None:
        """A batch left the Python source behind tf.data at `t`, asked for at `asked` (where
        that is seen) (`READY_TIMED`)."""
        if len(self._ready) >= MAX_READY:
            self.ready_lost = (f"more than {MAX_READY} batches were made ready that no step "
                               "took: the source seen is not the one the training reads")
            self._ready.clear()
            return
        self._ready.append((asked, t))

    def source_restarted(self) -> None:
        """The source began a new pass: batches it made ready before and no step took (tf.data
        prefetches ahead) are gone."""
        self._ready.clear()


class StackSampler:
    """A daemon thread that looks at the threads' stacks `STACK_HZ` times a second, where no
    fetch of a batch can be timed: `look` returns what the input pipeline is doing (a
    `data_wait.DataTick`, or None when it cannot tell) and `sink` counts it.

    The look compares file names on the stacks and costs tens of microseconds; its cost beside
    a training is measured by `benchmarks/wait_accuracy.py`. A look that raises (a bug: the
    monitor's look turns its own failures into None) ends the sampling, never the training;
    the exception goes to `errors.swallowed` as "loop_clock.stacks".

    Args:
        look: What the input pipeline is doing now.
        sink: Takes each tick that `look` returned.
        rate_hz: Looks a second. Default `STACK_HZ`.
        clock: Monotonic clock in seconds. Default `time.perf_counter`.
        wait: Waits that many seconds, returning True when the sampling should end. Default:
            the wait on `stop`'s event.
    """

    def __init__(self, look: Callable[[], Any], sink: Callable[[Any], Any],
                 rate_hz: float = STACK_HZ, clock: Callable[[], float] = time.perf_counter,
                 wait: Callable[[float], bool] | None = None) -> None:
        self._look = look
        self._sink = sink
        self._period_s = 1.0 / rate_hz
        self._clock = clock
        self._stop = threading.Event()
        self._wait = wait if wait is not None else self._stop.wait
        self._thread = threading.Thread(target=self._run, name="gpu-watch-stacks", daemon=True)
        self.samples = 0

    def start(self) -> None:
        """Start sampling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread, which ends after the look under way; a look
        that hangs is waited for a second at most. Safe before `start` and from a look."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        next_t = self._clock()
        while not self._stop.is_set():
            try:
                tick = self._look()
                if tick is not None:
                    self._sink(tick)
                    self.samples += 1
            except Exception as exc:  # a look that fails stops the sampling, never training
                swallowed("loop_clock.stacks", exc)
                return
            now = self._clock()
            # Behind (a busy machine, a slow look): the missed looks are skipped, not made up
            # in a burst that would weigh the slow moment more.
            next_t = max(next_t + self._period_s, now)
            if self._wait(next_t - now):
                return


_STOP = object()  # the waiting thread's last item
_EPOCH_BEGIN = object()  # an epoch began: the device had finished the last one (Keras waits)


@dataclass(slots=True)  # made per step: not frozen, which costs more to make
class _Dispatched:
    """A step the training thread handed to the device, waiting for its outputs: the
    `number`-th thing to time (steps and epoch begins, in order)."""

    number: int
    first: int
    last: int
    begin: float
    entered: float
    fetches: list[tuple[float, float]]
    outputs: Any
