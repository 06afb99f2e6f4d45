"""The training loop's clock: steps, waits for data and the time between steps, from stamps the
training thread takes (driven here stamp by stamp), and the wrappers that take them in a fit."""

from __future__ import annotations

import threading
import time

import pytest
from waiting import wait_until

from gpu_watch.errors import take_swallowed
from gpu_watch.judging.data_wait import DataTick
from gpu_watch.sensing.loop_clock import FETCH_TIMED, READY_TIMED, LoopClock, StackSampler
from gpu_watch.sensing.steps import Step
from gpu_watch.testing import ManualClock
from gpu_watch.training import keras_internals


def clock(measure=None, t0=0.0):
    steps: list[Step] = []
    c = LoopClock(lambda: 0.0, t0, steps.extend)
    if measure is not None:  # else as a clock with no fetch probe attached has it
        c.measure = measure
    return c, steps


def test_a_fetch_inside_the_step_is_its_wait_and_not_its_compute():
    c, steps = clock(FETCH_TIMED, t0=10.0)
    c.epoch_begin(10.0)
    c.begin(0, 10.5)
    c.fetched(10.5, 10.75)  # JAX: the step pulls its batch inside train_function
    step = c.end(0, 11.0)
    assert steps == [step]
    assert step == Step(0, 0, 0.5, 1.0, 0.25, None, compute_s=0.25, other_s=0.5,
                        measure=FETCH_TIMED)


def test_a_fetch_between_steps_is_the_next_step_s_wait():
    c, _ = clock(FETCH_TIMED)
    c.epoch_begin(0.0)
    c.begin(0, 0.0)
    c.end(0, 1.0)
    c.fetched(1.25, 1.75)  # torch: the epoch iterator pulls the batch before the begin hooks
    c.begin(1, 2.0)
    step = c.end(1, 3.0)
    # 2 s since the last step's end: 1 s of compute, 0.5 s of wait, 0.5 s elsewhere.
    assert (step.compute_s, step.wait_s, step.other_s) == (1.0, 0.5, 0.5)
    assert step.compute_s + step.wait_s + step.other_s == 3.0 - 1.0


def test_without_a_fetch_probe_the_wait_is_not_measured_and_the_gap_is_elsewhere():
    c, _ = clock(None)
    c.epoch_begin(0.0)
    c.begin(0, 0.5)
    step = c.end(0, 1.0)
    assert (step.wait_s, step.measure, step.compute_s, step.other_s) == (None, None, 0.5, 0.5)


def test_the_first_step_of_an_epoch_counts_from_the_epoch_s_begin_only():
    c, _ = clock(FETCH_TIMED)
    c.begin(0, 0.5)  # no epoch begin seen: nothing to count the time before from
    assert c.end(0, 1.0).other_s is None
    c.fetched(1.0, 1.5)  # after the last step of an epoch: dropped with the epoch
    c.epoch_begin(5.0)
    c.begin(0, 5.25)
    step = c.end(0, 6.0)
    assert (step.wait_s, step.other_s) == (0.0, 0.25)


def test_an_end_whose_begin_was_not_seen_is_a_step_of_no_time():
    c, _ = clock(FETCH_TIMED)
    c.epoch_begin(0.0)
    step = c.end(3, 2.0)
    assert (step.first_batch, step.last_batch, step.begin_s, step.end_s) == (3, 3, 2.0, 2.0)
    assert (step.compute_s, step.other_s) == (0.0, 2.0)
    c.begin(4, 2.5)
    c.end(4, 3.0)
    step = c.end(5, 3.5)  # a begin is used once: the next end without one has none either
    assert (step.first_batch, step.begin_s, step.compute_s, step.other_s) == (5, 3.5, 0.0, 0.5)


def test_an_end_before_any_begin_hook_is_a_step_of_no_time_with_nothing_before_it():
    c, _ = clock(FETCH_TIMED)
    step = c.end(3, 2.0)  # attached mid-epoch: no epoch begin and no batch begin seen
    assert step == Step(3, 3, 2.0, 2.0, 0.0, None, compute_s=0.0, other_s=None,
                        measure=FETCH_TIMED)


def test_each_fetch_counts_in_the_wait_whether_before_the_step_or_inside_it():
    c, _ = clock(FETCH_TIMED)
    c.epoch_begin(0.0)
    c.fetched(0.0, 0.25)  # torch: pulled before the begin hooks
    c.fetched(0.25, 0.5)
    c.begin(0, 1.0)
    c.fetched(1.0, 1.25)  # JAX: pulled inside the step, out of its compute
    c.fetched(1.25, 1.5)
    step = c.end(3, 2.0)  # steps_per_execution=4: one end hook for batches 0-3
    assert (step.wait_s, step.compute_s, step.other_s) == (1.0, 0.5, 0.5)


# -- a step after a pause ----------------------------------------------------------------------


def _steps_straight_after_another(c, computes, t=0.0):
    """Steps with no gap between them, each of the given compute; returns the last end."""
    for batch, compute in enumerate(computes):
        c.begin(batch, t)
        t += compute
        c.end(batch, t)
    return t


def test_what_a_step_after_a_pause_takes_over_one_after_another_goes_to_the_pause():
    c, _ = clock(FETCH_TIMED)
    c.epoch_begin(0.0)
    t = _steps_straight_after_another(c, [0.5, 0.5])  # each 0.5 s, straight after another
    c.fetched(t + 0.25, t + 1.0)  # 0.75 s of fetch, 0.25 s elsewhere before it
    c.begin(2, t + 1.0)
    step = c.end(2, t + 2.0)  # a second of compute where a step takes 0.5 s
    # The 0.5 s it lost restarting goes to the pause, by the pause's shares: 3/4 to the wait.
    assert (step.compute_s, step.wait_s, step.other_s) == (0.5, 1.125, 0.375)
    assert step.compute_s + step.wait_s + step.other_s == 2.0


def test_a_step_after_time_elsewhere_alone_gets_no_wait_for_what_it_lost():
    c, _ = clock(FETCH_TIMED)
    c.epoch_begin(0.0)
    t = _steps_straight_after_another(c, [0.5, 0.5])  # the first compiles
    c.begin(2, t + 1.0)  # a slow callback: a second between the steps, no fetch
    step = c.end(2, t + 2.0)
    assert (step.compute_s, step.wait_s, step.other_s) == (0.5, 0.0, 1.5)


def test_a_step_after_a_pause_quicker_than_one_after_another_gives_the_difference_back():
    c, _ = clock(FETCH_TIMED)
    c.epoch_begin(0.0)
    t = _steps_straight_after_another(c, [0.5, 0.5])
    c.fetched(t + 0.5, t + 1.0)  # half a second of fetch, half a second elsewhere
    c.begin(2, t + 1.0)
    step = c.end(2, t + 1.25)  # 0.25 s quicker than the steps before: the noise of its time
    assert (step.compute_s, step.wait_s, step.other_s) == (0.5, 0.375, 0.375)


def test_a_step_after_a_pause_gives_back_no_more_than_the_pause():
    c, _ = clock(FETCH_TIMED)
    c.epoch_begin(0.0)
    t = _steps_straight_after_another(c, [1.0, 1.0])
    c.fetched(t, t + 0.25)
    c.begin(2, t + 0.25)
    step = c.end(2, t + 0.5)  # 0.75 s quicker, after a pause of 0.25 s
    assert (step.compute_s, step.wait_s, step.other_s) == (0.5, 0.0, 0.0)


def test_before_any_step_straight_after_another_nothing_moves():
    c, _ = clock(FETCH_TIMED)
    c.epoch_begin(0.0)
    c.fetched(0.0, 1.0)
    c.begin(0, 1.0)
    first = c.end(0, 3.0)
    c.fetched(3.0, 4.0)
    c.begin(1, 4.0)
    second = c.end(1, 5.0)
    assert [(s.compute_s, s.wait_s) for s in (first, second)] == [(2.0, 1.0), (1.0, 1.0)]


def test_without_a_wait_measured_per_step_nothing_moves_and_no_step_is_taken_as_warm():
    c, _ = clock(None)  # no fetch probe: the gap is elsewhere, and stays as it is
    c.epoch_begin(0.0)
    t = _steps_straight_after_another(c, [0.5, 0.5])
    c.begin(2, t + 1.0)
    step = c.end(2, t + 3.0)
    assert (step.compute_s, step.wait_s, step.other_s) == (2.0, None, 1.0)
    c.measure = FETCH_TIMED  # measured from here: the steps above were never taken as warm
    c._after_pause(7.0, 0.0, 0.0)  # the run's first measured step: it compiles
    c.fetched(t + 3.0, t + 4.0)
    c.begin(3, t + 4.0)
    assert c.end(3, t + 6.0).compute_s == 2.0


@pytest.mark.parametrize(("pause", "moved"), [(0.00095, False), (0.001, True)])
def test_a_pause_is_a_millisecond_or_more(pause, moved):
    c, _ = clock(FETCH_TIMED)
    c._after_pause(9.0, 0.0, 0.0)  # the run's first step: it compiles
    c._after_pause(0.5, 0.0, 0.0)  # a step straight after another: the median is 0.5
    compute, wait, other = c._after_pause(1.5, pause, 0.0)
    assert (compute, wait) == ((0.5, pause + 1.0) if moved else (1.5, pause))
    assert other == 0.0


def test_the_steps_straight_after_another_are_the_latest_sixty_four():
    c, _ = clock(FETCH_TIMED)
    c._after_pause(50.0, 0.0, 0.0)  # the run's first step: it compiles, and is none of them
    # 65 steps, each taking 1.0 s but 8 quick and 8 slow ones; the oldest, 100 s, drops out.
    for compute in [100.0] + [0.0] * 8 + [1.0] * 48 + [10.0] * 8:
        c._after_pause(compute, 0.0, 0.0)
    compute, wait, other = c._after_pause(6.0, 1.0, 1.0)
    assert (compute, wait, other) == (1.0, 3.5, 3.5)


@pytest.mark.parametrize(("quick", "typical", "slow", "mean"), [
    (8, 48, 8, 1.0),  # one in eight at each end left out: the 1.0 s steps alone
    (9, 46, 9, (0.0 + 46 + 10.0) / 48),  # one more at each end: one of each in the mean
    (1, 5, 1, 15 / 7),  # under eight steps: all of them
])
def test_the_mean_leaves_out_one_step_in_eight_at_each_end(quick, typical, slow, mean):
    c, _ = clock(FETCH_TIMED)
    c._after_pause(50.0, 0.0, 0.0)
    for compute in [0.0] * quick + [1.0] * typical + [10.0] * slow:
        c._after_pause(compute, 0.0, 0.0)
    assert c._after_pause(6.0, 2.0, 0.0) == pytest.approx((mean, 2.0 + 6.0 - mean, 0.0))


def test_the_run_s_first_step_compiles_and_is_neither_measured_nor_a_measure():
    c, _ = clock(FETCH_TIMED)
    assert c._after_pause(9.0, 1.0, 0.0) == (9.0, 1.0, 0.0)  # after a pause: left alone
    assert c._after_pause(2.0, 1.0, 0.0) == (2.0, 1.0, 0.0)  # no step straight after another
    c._after_pause(0.5, 0.0, 0.0)
    assert c._after_pause(1.5, 1.0, 0.0) == (0.5, 2.0, 0.0)


def test_a_batch_made_ready_after_the_step_began_is_waited_for_inside_it():
    c, _ = clock(READY_TIMED)
    c.epoch_begin(0.0)
    c.ready(0.0)  # ready before the step began: no wait
    c.begin(0, 0.25)
    first = c.end(0, 0.5)
    c.ready(0.875)  # tf.data's thread: the batch left the generator 0.25 s into the step
    c.begin(1, 0.625)
    second = c.end(1, 1.0)
    assert (first.wait_s, first.compute_s) == (0.0, 0.25)
    assert (second.wait_s, second.compute_s, second.measure) == (0.25, 0.125, READY_TIMED)


def test_a_ready_stamp_never_gives_a_wait_longer_than_the_step():
    c, _ = clock(READY_TIMED)
    c.ready(9.0)
    c.begin(0, 2.0)
    assert c.end(0, 3.0).wait_s == 1.0


@pytest.mark.parametrize(("readies", "begin", "end", "wait"), [
    # Made one by one as the step asks (no prefetch): 0.25 s each, 0.25 s of compute each.
    ((1.25, 1.75, 2.25), 1.0, 2.5, 0.75),
    ((1.25, 1.75), 1.0, 2.0, 0.5),
    # A source that keeps up: every batch ready before the step needs it.
    ((0.0, 0.5, 1.5), 1.0, 2.0, 0.0),
    # A prefetching source that is the bottleneck: one batch every 0.5 s, 0.25 s of compute.
    ((1.0, 1.5, 2.0), 0.75, 2.25, 0.75),
    # A slow first batch, the others ready with it: the step waits for the first alone.
    ((1.0, 1.0, 1.0), 0.0, 1.75, 1.0),
    # Stamps later than the step's end (never so in a fit): all of the step, never more.
    ((1.0, 3.0, 4.0), 0.0, 2.0, 2.0),
])
def test_a_step_of_several_batches_waits_for_those_not_ready_when_it_needs_them(
        readies, begin, end, wait):
    c, _ = clock(READY_TIMED)
    for t in readies:
        c.ready(t, asked=t)  # asked counts for one batch alone
    c.begin(0, begin)
    step = c.end(len(readies) - 1, end)  # steps_per_execution=3: one end hook for batches 0-2
    assert (step.steps, step.wait_s, step.compute_s) == (len(readies), wait, end - begin - wait)
    assert not c._ready  # the step took each of its batches


def test_an_end_that_names_an_earlier_batch_than_its_begin_takes_no_ready_batch():
    c, _ = clock(READY_TIMED)
    c.ready(1.5)
    c.begin(1, 0.5)
    assert c.end(0, 1.0).wait_s == 0.0  # hooks out of order: no batch taken, nothing raised
    c.begin(3, 1.0)
    assert c.end(1, 1.5).wait_s == 0.0  # two batches earlier: still none taken
    c.begin(2, 1.0)
    assert c.end(2, 2.0).wait_s == 0.5  # the batch made ready is the next step's


def test_a_step_that_took_a_batch_never_made_ready_stops_the_ready_measure():
    c, _ = clock(READY_TIMED)
    c.begin(0, 0.0)
    step = c.end(0, 1.0)
    assert (step.wait_s, step.measure) == (None, None)  # no wait: no measure claimed
    assert c.ready_lost == ("a step took a batch its source had not made ready: the source "
                            "seen is not the one the training reads")
    c.ready(1.5)
    c.begin(1, 1.25)
    assert c.end(1, 2.0).wait_s is None  # once lost, not measured again


def test_a_source_that_makes_batches_no_step_takes_stops_the_ready_measure():
    c, _ = clock(READY_TIMED)
    for _ in range(10_000):
        c.ready(0.0)
    assert c.ready_lost is None  # ten thousand batches ahead of the steps are still followed
    c.ready(0.0)
    assert c.ready_lost == ("more than 10000 batches were made ready that no step took: the "
                            "source seen is not the one the training reads")
    c.begin(0, 0.0)
    assert c.end(0, 1.0).wait_s is None


def test_a_new_pass_of_the_source_drops_the_batches_no_step_took():
    c, _ = clock(READY_TIMED)
    c.ready(0.0)
    c.ready(0.5)
    c.source_restarted()
    c.ready(3.0)
    c.begin(0, 2.0)
    assert c.end(0, 4.0).wait_s == 1.0


def test_the_slowest_callbacks_come_first_and_add_up_per_callback():
    c, _ = clock()
    c.add_hook_time((0, "Tiny"), 0.125)
    c.add_hook_time((1, "Logger"), 0.5)
    c.add_hook_time((2, "Meter"), 0.25)
    c.add_hook_time((1, "Logger"), 0.5)
    c.add_hook_time((3, "Slow"), 2.0)
    assert c.slowest_hooks(2) == [("Slow", 2.0), ("Logger", 1.0)]
    assert c.slowest_hooks() == [("Slow", 2.0), ("Logger", 1.0), ("Meter", 0.25)]  # three


# -- steps dispatched ahead of the device (JAX) -----------------------------------------------


class _Device:
    """Outputs that exist once the test says so, at the time it sets on the clock."""

    def __init__(self):
        self.t = 0.0

    def now(self):
        return self.t

    def finish(self, clock, outputs, at):
        self.t = at
        outputs.set()
        assert clock.settle(10.0)


def _three_steps_on_a_device():
    """A clock whose steps a `_Device` finishes, an epoch begun at 0, and three steps' outputs."""
    device = _Device()
    steps: list[Step] = []
    c = LoopClock(device.now, 0.0, steps.extend)
    c.measure = FETCH_TIMED
    c.device_done = threading.Event.wait
    c.epoch_begin(0.0)
    return device, c, steps, [threading.Event() for _ in range(3)]


def test_a_step_dispatched_ahead_is_timed_from_the_device_s_side():
    device, c, steps, outputs = _three_steps_on_a_device()
    # Step 0: the device waits while the batch is fetched (0 to 0.5), then runs to 1.0.
    c.begin(0, 0.0)
    c.fetched(0.0, 0.5)
    assert c.end(0, 0.6, outputs[0]) is None  # timed once the device is done
    device.finish(c, outputs[0], at=1.0)
    # Step 1: fetched (0.6 to 0.9) while the device still ran step 0: no wait, all compute.
    c.begin(1, 0.6)
    c.fetched(0.6, 0.9)
    c.end(1, 0.95, outputs[1])
    device.finish(c, outputs[1], at=1.5)
    # Step 2: the fetch (1.0 to 2.0) outlasts step 1 on the device: idle from 1.5 to 2.0.
    c.begin(2, 1.0)
    c.fetched(1.0, 2.0)
    c.end(2, 2.1, outputs[2])
    device.finish(c, outputs[2], at=2.5)
    c.close()
    assert [(s.begin_s, s.end_s, s.compute_s, s.wait_s, s.other_s) for s in steps] == [
        (0.5, 1.0, 0.5, 0.5, 0.0), (1.0, 1.5, 0.5, 0.0, 0.0), (2.0, 2.5, 0.5, 0.5, 0.0)]
    assert c.device_error is None and not c._watcher.is_alive()


def test_a_step_the_device_ran_after_sitting_idle_gives_what_it_lost_to_the_wait():
    device, c, steps, outputs = _three_steps_on_a_device()
    # (begin, fetch, dispatched, done): step 0 compiles; step 1 is dispatched while the device
    # runs step 0, straight after it, 0.5 s; step 2 is fetched from 0.5 to 2.0, the device
    # idle from 1.0, then takes 1.0 s on the device, not 0.5.
    timeline = [(0.0, None, 0.25, 0.5), (0.25, None, 0.5, 1.0), (0.5, (0.5, 2.0), 2.1, 3.0)]
    for batch, (begin, fetch, dispatched, done) in enumerate(timeline):
        c.begin(batch, begin)
        if fetch is not None:
            c.fetched(*fetch)
        c.end(batch, dispatched, outputs[batch])
        device.finish(c, outputs[batch], at=done)
    c.close()
    assert [(s.begin_s, s.end_s, s.compute_s, s.wait_s, s.other_s) for s in steps][1:] == [
        (0.5, 1.0, 0.5, 0.0, 0.0), (2.0, 3.0, 0.5, 1.5, 0.0)]


def test_a_step_dispatched_before_any_epoch_begin_is_timed_from_its_dispatch():
    device = _Device()
    steps: list[Step] = []
    threads = []

    def done(outputs):
        threads.append(threading.current_thread())
        outputs.wait()

    c = LoopClock(device.now, 100.0, steps.extend)
    c.measure = FETCH_TIMED
    c.device_done = done
    outputs = threading.Event()
    c.begin(0, 100.0)  # attached mid-epoch: when the device finished its last step is unknown
    c.fetched(100.0, 100.25)
    c.end(1, 100.5, outputs)  # steps_per_execution=2: one end hook for batches 0-1
    device.finish(c, outputs, at=101.0)
    c.close()
    # Dispatched once its batch was fetched; the fetch is its wait, nothing else is known.
    assert steps == [Step(0, 1, 0.25, 1.0, 0.25, None, compute_s=0.75, other_s=None,
                          measure=FETCH_TIMED)]
    # Its own thread, one that never keeps the interpreter from exiting.
    assert [(t.name, t.daemon) for t in threads] == [("gpu-watch-device-steps", True)]


def test_a_step_timed_on_the_device_s_side_claims_no_measure_it_did_not_take():
    steps: list[Step] = []
    c = LoopClock(lambda: 1.0, 0.0, steps.extend)
    c.measure = READY_TIMED  # ready stamps are matched on the training thread only
    c.device_done = lambda outputs: None
    c.epoch_begin(0.0)
    c.begin(0, 0.25)
    c.end(0, 0.5, object())
    assert c.settle(10.0)
    c.close()
    assert [(s.wait_s, s.measure, s.compute_s, s.other_s) for s in steps] == [
        (None, None, 0.75, 0.25)]


def test_a_step_without_outputs_is_timed_at_once_from_the_dispatched_step_s_end():
    c, _ = clock(FETCH_TIMED)
    c.device_done = lambda outputs: None
    c.epoch_begin(0.0)
    c.begin(0, 0.0)
    assert c.end(0, 1.0, object()) is None  # dispatched: timed on the device's side
    c.begin(1, 1.25)
    step = c.end(1, 2.25)  # no outputs to wait for (no logs): timed on the training thread
    assert (step.compute_s, step.wait_s, step.other_s) == (1.0, 0.0, 0.25)
    assert c.settle(10.0)
    c.close()


def test_without_a_device_to_wait_for_a_step_with_outputs_is_timed_at_once():
    c, steps = clock()
    c.begin(0, 0.5)
    step = c.end(0, 1.0, {"loss": 1.0})
    assert steps == [step] and (step.begin_s, step.end_s, step.compute_s) == (0.5, 1.0, 0.5)


class _Outputs:
    """A step's outputs as the training thread looks at them: done once the test says so; a
    look or a wait on another thread is counted."""

    def __init__(self, done=False):
        self.done = done
        self.looks = 0
        self.waited_on: list[str] = []

    def ready(self):
        self.looks += 1
        return self.done

    def wait(self):
        self.waited_on.append(threading.current_thread().name)
        self.done = True


def looked_at(device, measure=FETCH_TIMED):
    """A clock whose dispatched steps the training thread looks at (JAX's `device_ready`)."""
    steps: list[Step] = []
    c = LoopClock(device.now, 0.0, steps.extend)
    c.measure = measure
    c.device_done = _Outputs.wait
    c.device_ready = _Outputs.ready
    return c, steps


def test_a_device_that_keeps_up_is_timed_by_the_training_thread_alone():
    device = _Device()
    c, steps = looked_at(device)
    c.epoch_begin(0.0)
    outputs = [_Outputs() for _ in range(3)]
    for batch, out in enumerate(outputs):
        c.begin(batch, float(batch))
        device.t = batch + 0.25
        c.fetched(batch + 0.0, batch + 0.25)
        device.t = batch + 0.5
        c.end(batch, batch + 0.5, out)
        out.done = True  # done before the next fetch ends: found then, at 1.25 and 2.25
    device.t = 3.0
    assert c.settle(10.0)
    c.close()
    assert c._watcher is None  # no thread, no switch of Python's lock between threads
    assert [o.waited_on for o in outputs] == [[], [], []]
    # Stamped when the training thread looked: as the next fetch ended, then in `settle`.
    assert [(s.end_s, s.compute_s, s.wait_s) for s in steps] == [
        (1.25, 1.0, 0.25), (2.25, 1.0, 0.0), (3.0, 0.75, 0.0)]


def test_a_device_that_falls_behind_has_its_older_steps_waited_for_on_a_thread():
    device = _Device()
    c, steps = looked_at(device)
    c.epoch_begin(0.0)
    outputs = [_Outputs() for _ in range(3)]
    for batch, out in enumerate(outputs):
        c.begin(batch, float(batch))
        c.end(batch, batch + 0.5, out)  # none done: the device is behind
    assert c._pending.outputs is outputs[2]  # the newest stays with the training thread
    assert c.settle(10.0)
    c.close()
    assert [o.waited_on for o in outputs] == [["gpu-watch-device-steps"]] * 3
    assert [s.last_batch for s in steps] == [0, 1, 2]


def test_a_step_found_done_as_a_fetch_begins_ended_before_the_fetch():
    device = _Device()
    c, steps = looked_at(device)
    c.epoch_begin(0.0)
    first, second = _Outputs(), _Outputs()
    c.begin(0, 0.0)
    c.end(0, 0.5, first)
    first.done = True
    device.t = 0.75
    c.begin(1, 0.75)
    c.fetch_begins()  # done by now: the device idles through the fetch
    c.fetched(0.75, 1.75)
    c.end(1, 2.0, second)
    second.done, device.t = True, 2.5
    assert c.settle(10.0)
    assert [(s.end_s, s.wait_s) for s in steps] == [(0.75, 0.0), (2.5, 1.0)]


def test_after_a_slow_fetch_the_running_step_is_waited_for_as_the_next_fetch_begins():
    c, _ = looked_at(_Device())
    c.epoch_begin(10.0)
    running = _Outputs()
    c.begin(0, 10.0)
    c.end(0, 10.001, running)
    c.fetch_begins()  # no fetch yet: the step stays with the training thread
    assert c._pending is not None and c._put_count == 0
    c.fetched(10.001, 10.001245)  # just under SLOW_FETCH_S: the next fetch leaves it alone
    c.fetch_begins()
    assert c._pending is not None and c._put_count == 0
    c.fetched(10.002, 10.002255)  # just over: slow
    assert running.looks == 4  # looked at as each fetch began and as it ended
    c.fetch_begins()
    assert c._pending is None and c._put_count == 1  # its end will fall inside the fetch
    assert c.settle(10.0)
    c.close()
    assert running.waited_on == ["gpu-watch-device-steps"]


def test_a_fetch_of_exactly_a_quarter_of_a_millisecond_is_slow():
    c, _ = looked_at(_Device())
    c.begin(0, 0.0)
    c.end(0, 0.0, _Outputs())
    c.fetch_begins()  # the step runs on
    c.fetched(0.0, 0.00025)
    c.fetch_begins()
    assert c._pending is None and c._put_count == 1
    assert c.settle(10.0)
    c.close()


def _fetch_with_a_step_running(c, batch, start, end):
    """A step dispatched and still running as a fetch begins, then the fetch: whether the fetch
    handed the step to the waiting thread."""
    c.begin(batch, start)
    c.end(batch, start, _Outputs())
    handed = c._put_count
    c.fetch_begins()
    handed = c._put_count > handed
    c.fetched(start, end)
    return handed


@pytest.fixture
def reaching():
    """A clock whose dispatched steps the training thread looks at, in its first epoch; after
    the test, every step handed to the waiting thread is waited for and the thread ended."""
    c, _ = looked_at(_Device())
    c.epoch_begin(0.0)
    yield c
    assert c.settle(10.0)
    c.close()


def test_for_fifty_times_a_slow_fetch_s_length_each_fetch_hands_the_running_step_over(reaching):
    c = reaching
    # Times a float holds exactly: a slow fetch of 2/4096 s reaches 100/4096 s past its end;
    # one of 1/4096 s (just under a quarter of a millisecond) is quick.
    u = 1 / 4096
    assert not _fetch_with_a_step_running(c, 0, 0 * u, 2 * u)  # nothing slow before it
    assert _fetch_with_a_step_running(c, 1, 2 * u, 3 * u)  # the last fetch was slow
    assert _fetch_with_a_step_running(c, 2, 100 * u, 101 * u)  # quick ones since
    assert _fetch_with_a_step_running(c, 3, 101 * u, 102 * u)  # the last ended in reach
    assert not _fetch_with_a_step_running(c, 4, 102 * u, 103 * u)  # ended at its end


def test_a_shorter_slow_fetch_never_cuts_the_reach_of_a_longer_one(reaching):
    c = reaching
    _fetch_with_a_step_running(c, 0, 0.0, 0.01)  # reaches to 0.51
    _fetch_with_a_step_running(c, 1, 0.01, 0.011)  # slow, reaching to 0.061 alone
    _fetch_with_a_step_running(c, 2, 0.3, 0.3001)
    assert _fetch_with_a_step_running(c, 3, 0.4, 0.4001)  # the last ended within 0.51 only
    assert c._hand_over_until == pytest.approx(0.51)


def test_a_quick_fetch_reaches_nothing(reaching):
    c = reaching
    _fetch_with_a_step_running(c, 0, 0.0, 0.01)  # reaches to 0.51
    _fetch_with_a_step_running(c, 1, 0.6, 0.6001)  # ends out of reach: would reach 0.6051
    assert not _fetch_with_a_step_running(c, 2, 0.6001, 0.6002)


def test_a_slow_fetch_with_no_step_running_is_timed_whole_and_reaches_nothing(reaching):
    """An epoch's first pull, the device idle: the look as it began found no step, so the wait
    is the fetch's own, and a slow one hands nothing over after it."""
    c = reaching
    done = _Outputs(done=True)
    c.begin(0, 0.0)
    c.end(0, 0.0, done)
    c.fetch_begins()  # found done: nothing runs
    assert c._pending is None
    c.fetched(0.0, 0.5)
    assert not _fetch_with_a_step_running(c, 1, 0.5, 0.5001)


def test_a_fetch_timed_with_no_look_as_it_began_reaches_nothing(reaching):
    c = reaching
    c.begin(0, 0.0)
    c.end(0, 0.0, _Outputs())
    c.fetched(0.0, 0.5)  # no `fetch_begins`: whether a step ran as it began is unknown
    c.fetch_begins()
    assert c._pending is not None and c._put_count == 0


def test_closing_ends_the_waiting_thread_cleanly(monkeypatch):
    failures = []
    monkeypatch.setattr(threading, "excepthook", failures.append)
    c, _ = looked_at(_Device())
    c.device_ready = None  # every step to the waiting thread
    c.begin(0, 0.0)
    c.end(0, 0.5, _Outputs())
    c.close()
    assert not c._watcher.is_alive() and failures == []


def test_a_callback_s_hook_looks_at_the_step_on_the_training_thread_only():
    device = _Device()
    c, steps = looked_at(device)
    c.epoch_begin(0.0)
    out = _Outputs()
    c.begin(0, 0.0)
    c.end(0, 0.5, out)
    out.done, device.t = True, 0.75
    elsewhere = threading.Thread(target=c.hook_begins)
    elsewhere.start()
    elsewhere.join()
    assert out.looks == 0 and c._pending is not None  # a hook on Keras' pool leaves it
    c.hook_begins()  # a hook on the training thread: Keras has waited for the logs
    assert out.looks == 1 and c._pending is None
    device.t = 5.0  # the hook took its time: the step was stamped before it
    assert c.settle(10.0)
    assert [s.end_s for s in steps] == [0.75]


def test_a_look_that_fails_hands_the_step_to_the_waiting_thread():
    c, steps = looked_at(_Device())

    def ready(outputs):
        raise RuntimeError("an array deleted under the look")

    c.device_ready = ready
    c.epoch_begin(0.0)
    c.begin(0, 0.0)
    c.end(0, 0.5, _Outputs())
    c.begin(1, 0.5)
    c.end(1, 1.0, _Outputs())
    assert c.settle(10.0)
    c.close()
    assert [s.last_batch for s in steps] == [0, 1] and c._put_count == 2


def test_steps_reach_the_sink_in_order_and_never_end_before_the_one_before():
    device = _Device()
    c, steps = looked_at(device)
    released = threading.Event()

    def late(outputs):  # the waiting thread gets to stamp only once the test lets it
        released.wait(10.0)

    c.device_done = late
    c.epoch_begin(0.0)
    first, second = _Outputs(), _Outputs()
    c.begin(0, 0.0)
    c.end(0, 0.5, first)
    c.begin(1, 0.5)
    c.end(1, 1.0, second)  # the device is behind: the first goes to the waiting thread
    second.done, device.t = True, 2.0
    c.hook_begins()  # the second is found done at 2.0 on the training thread
    assert steps == []  # and waits for the first
    device.t = 3.0
    released.set()  # the first is stamped late, at 3.0
    assert c.settle(10.0)
    assert [(s.last_batch, s.end_s, s.compute_s) for s in steps] == [(0, 3.0, 3.0), (1, 3.0, 0.0)]
    c.close()


class _Polls:
    """`settle`'s clock and sleep: each sleep moves the clock on at once by what it asked."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
        if len(self.sleeps) > 100_000:
            raise AssertionError("settle never gives up")


def test_a_device_that_never_finishes_is_waited_for_five_seconds_then_one_at_close():
    polls = _Polls()
    c = LoopClock(lambda: 0.0, 0.0, lambda steps: None, monotonic=polls.monotonic,
                  sleep=polls.sleep)
    released = threading.Event()
    threads = []

    def hung(outputs):
        threads.append(threading.current_thread())
        released.wait(30.0)

    c.device_done = hung
    c.epoch_begin(0.0)
    c.begin(0, 0.0)
    c.end(0, 1.0, object())
    try:
        assert c.settle() is False
        # Looked at every millisecond, for five seconds (the clock here moves only by them).
        assert set(polls.sleeps) == {0.001} and polls.now == pytest.approx(5.0, abs=0.002)
        polls.sleeps.clear()
        assert c.settle(0.0) is False and polls.sleeps == []  # no time left: no wait
        began = time.monotonic()
        c.close()  # settles (five seconds on this clock), then waits a second for the thread
        waited = time.monotonic() - began
        assert waited < 2.0 and threads[0].is_alive()  # it gave up on the hung device
    finally:
        released.set()
    threads[0].join(10.0)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_device_thread_that_died_is_not_waited_for():
    polls = _Polls()
    died = threading.Event()
    main = threading.current_thread()

    def now():
        if threading.current_thread() is main:
            return 0.0
        died.set()
        raise RuntimeError("a clock that fails on the waiting thread")

    c = LoopClock(now, 0.0, lambda steps: None, monotonic=polls.monotonic, sleep=polls.sleep)
    c.device_done = lambda outputs: None
    c.begin(0, 0.0)
    c.end(0, 1.0, object())
    assert died.wait(10.0)
    c._watcher.join(10.0)
    assert c.settle() is False and polls.sleeps == []  # the step will never be timed


def test_a_sink_that_raises_loses_its_steps_never_the_training():
    threads = []

    def sink(steps):
        threads.append(threading.current_thread())
        raise RuntimeError("a bug in the timeline")

    c = LoopClock(lambda: 0.0, 0.0, sink)
    c.begin(0, 0.0)
    assert c.end(0, 1.0) is not None  # returned: the training's hook goes on
    c.device_done = lambda outputs: None
    c.begin(1, 1.0)
    assert c.end(1, 2.0, object()) is None
    assert c.settle(10.0)
    c.close()
    # Steps reach the sink on the training thread, the device's ones too.
    assert threads == [threading.current_thread()] * 2
    assert [s.error for s in take_swallowed("loop_clock.sink")] == [
        "RuntimeError: a bug in the timeline"] * 2


def test_a_step_the_device_failed_is_timed_as_handed_over_and_says_why():
    def failed(outputs):
        raise RuntimeError("XLA ran out of memory")

    steps: list[Step] = []
    c = LoopClock(lambda: 0.0, 0.0, steps.extend)
    c.device_done = failed
    c.epoch_begin(0.0)
    c.begin(0, 0.25)
    c.end(0, 0.5, object())
    assert c.settle(10.0)
    assert c.device_error == "RuntimeError: XLA ran out of memory"
    assert [(s.end_s, s.compute_s, s.wait_s, s.other_s, s.measure) for s in steps] == [
        (0.5, 0.25, None, 0.25, None)]  # no fetch timed: no wait
    c.close()


# -- the stack sampler -----------------------------------------------------------------------


def test_the_stack_sampler_hands_each_look_on_until_stopped():
    seen: list[DataTick] = []
    looks = []
    looked = threading.Event()

    def look():
        looks.append(threading.current_thread())
        if len(seen) >= 3:
            looked.set()
        return DataTick(True) if len(looks) % 2 else None  # None: could not tell, not counted

    sampler = StackSampler(look, seen.append, rate_hz=1000.0)
    sampler.start()
    assert looked.wait(10.0)
    sampler.stop()
    count = len(seen)
    assert count >= 3 and sampler.samples == count and all(t.fetching for t in seen)
    assert not looks[0].is_alive()  # stopped: the thread that looked has ended, no look after


def _scheduled(clock, looks_before_stop):
    """A sampler's wait on `clock` (a `ManualClock`): it moves the clock on by the delay
    asked, records it, and ends the sampling after `looks_before_stop` looks."""
    delays: list[float] = []
    ended = threading.Event()

    def wait(seconds):
        delays.append(seconds)
        clock.advance(seconds)
        if len(delays) == looks_before_stop:
            ended.set()
            return True
        return False

    return wait, delays, ended


def test_the_stack_sampler_looks_a_hundred_times_a_second_on_a_daemon_thread():
    clock = ManualClock(100.0)
    looks = []

    def look():
        looks.append((clock.now, threading.current_thread()))
        return DataTick(True)

    wait, delays, ended = _scheduled(clock, 3)
    seen: list[DataTick] = []
    sampler = StackSampler(look, seen.append, clock=clock, wait=wait)
    sampler.start()
    assert ended.wait(10.0)
    sampler.stop()
    assert [t for t, _ in looks] == pytest.approx([100.0, 100.01, 100.02])
    assert delays == pytest.approx([0.01] * 3) and len(seen) == sampler.samples == 3
    # Its own thread, one that never keeps the interpreter from exiting.
    assert {(thread.name, thread.daemon) for _, thread in looks} == {("gpu-watch-stacks", True)}


def test_a_stack_sampler_that_falls_behind_skips_the_missed_looks_instead_of_a_burst():
    clock = ManualClock(0.0)
    looks = []

    def look():
        looks.append(clock.now)
        if len(looks) == 2:
            clock.advance(0.035)  # a slow look: three and a half periods
        return None  # could not tell: nothing counted

    wait, delays, ended = _scheduled(clock, 4)
    sampler = StackSampler(look, lambda tick: None, rate_hz=100.0, clock=clock, wait=wait)
    sampler.start()
    assert ended.wait(10.0)
    sampler.stop()
    # The looks due at 0.02, 0.03 and 0.04 are gone: one at once, then a period apart again.
    assert looks == pytest.approx([0.0, 0.01, 0.045, 0.055])
    assert delays == pytest.approx([0.01, 0.0, 0.01, 0.01]) and sampler.samples == 0


def test_a_sampler_can_be_stopped_before_it_starts_and_from_its_own_look():
    StackSampler(lambda: None, lambda tick: None).stop()  # never started: nothing to wait for
    looked = threading.Event()
    seen: list[DataTick] = []

    def look():
        looked.set()
        sampler.stop()  # on the sampler's own thread, which cannot wait for itself
        return DataTick(False)

    sampler = StackSampler(look, seen.append)
    sampler.start()
    assert looked.wait(10.0)
    sampler.stop()
    assert seen == [DataTick(False)]  # the look under way is handed on, then no other


def test_stopping_waits_a_second_at_most_for_a_look_that_hangs():
    looking, released = threading.Event(), threading.Event()

    def look():
        looking.set()
        released.wait(30.0)

    sampler = StackSampler(look, lambda tick: None)
    sampler.start()
    assert looking.wait(10.0)
    began = time.monotonic()
    sampler.stop()
    waited = time.monotonic() - began
    released.set()
    sampler.stop()  # the look is over: the thread ends at once
    assert waited < 2.0


def test_a_look_that_fails_ends_the_sampling_and_is_recorded_as_a_bug():
    looks = []

    def look():
        looks.append(1)
        raise RuntimeError("stack gone")

    sampler = StackSampler(look, lambda tick: None, rate_hz=1000.0)
    sampler.start()
    caught = wait_until(lambda: take_swallowed("loop_clock.stacks"), "the failure recorded",
                        timeout_s=10.0, every_s=0.005)
    sampler.stop()
    assert [s.error for s in caught] == ["RuntimeError: stack gone"]
    assert looks == [1] and sampler.samples == 0


# -- the wrappers ----------------------------------------------------------------------------


class _List:
    """A callback list as Keras' `fit` holds it, recording the calls it gets."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)
        self.calls: list[tuple] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch", epoch))

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("end", batch, logs))
        for callback in self.callbacks:
            callback.on_train_batch_end(batch, logs=logs)


class _Frame:
    def __init__(self, **local):
        self.f_locals = local


class _Ticking:
    """A clock that moves one second a reading."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0
        return self.t


def test_the_list_s_hooks_are_wrapped_timed_and_taken_off_again():
    import keras

    class Own(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            return "own"

    plain, own = keras.callbacks.Callback(), Own()
    callbacks = _List([plain, own])
    steps: list[Step] = []
    ticking = _Ticking()
    c = LoopClock(ticking, 0.0, steps.extend)
    attachment = keras_internals.Attachment()
    probed = keras_internals.attach_loop_clock(_Frame(callbacks=callbacks), c, attachment)
    assert probed == keras_internals.Probed(True) and c.attached
    assert "on_train_batch_end" in vars(own) and "on_train_batch_end" not in vars(plain)
    callbacks.on_epoch_begin(0)  # left at 1
    assert c.starting_pass
    callbacks.on_train_batch_begin(0)  # entered at 2 (the loop begins), left at 3
    assert not c.starting_pass
    callbacks.on_train_batch_end(0, {"loss": 1.0})  # entered at 4; Own's hook 5 to 6
    callbacks.on_train_batch_begin(1)  # the epoch's second batch: left at 7, one stamp
    callbacks.on_train_batch_end(1, {"loss": 1.0})  # entered at 8; Own's hook 9 to 10
    assert callbacks.calls[:3] == [("epoch", 0), ("begin", 0), ("end", 0, {"loss": 1.0})]
    assert steps == [Step(0, 0, 3.0, 4.0, None, None, compute_s=1.0, other_s=1.0),
                     Step(1, 1, 7.0, 8.0, None, None, compute_s=1.0, other_s=3.0)]
    assert c.slowest_hooks() == [("Own", 2.0)]
    attachment.detach()
    assert vars(callbacks).keys() == {"callbacks", "calls"}
    assert "on_train_batch_end" not in vars(own)
    assert own.on_train_batch_end(0) == "own"


def test_a_list_without_the_hooks_is_not_wrapped_and_says_why():
    class Odd:
        callbacks = []

    c, _ = clock()
    probed = keras_internals.attach_loop_clock(_Frame(callbacks=Odd()), c,
                                               keras_internals.Attachment())
    assert probed.value is False and c.attached is False
    assert probed.reason == "loop_clock: fit's 'callbacks' (Odd) has no method 'on_epoch_begin'"
    missing = keras_internals.attach_loop_clock(_Frame(), c, keras_internals.Attachment())
    assert missing.reason == "loop_clock: Keras' fit frame has no local 'callbacks'"


class _EpochIterator:
    def __init__(self, source):
        self.source = source

    def _get_iterator(self):
        return self.source


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_each_pull_from_the_epoch_iterator_is_a_timed_fetch(backend):
    iterator = _EpochIterator([10, 20])
    ticking = _Ticking()
    c = LoopClock(ticking, 0.0, lambda steps: None)
    attachment = keras_internals.Attachment()
    probed = keras_internals.attach_fetch_timer(_Frame(epoch_iterator=iterator), backend, c,
                                                attachment)
    assert probed.value == FETCH_TIMED == c.measure
    source = iter(iterator._get_iterator())  # a pass starts in an epoch's setup: not timed
    assert [next(source), next(source)] == [10, 20]  # 1 to 2, 3 to 4
    with pytest.raises(StopIteration):
        next(source)  # 5 to 6: the pull that finds the end is timed as well
    assert c._fetches == [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)]
    attachment.detach()
    assert iterator._get_iterator() == [10, 20]


def test_on_jax_each_pull_first_looks_at_the_device_s_steps():
    iterator = _EpochIterator([10])
    ticking = _Ticking()
    c = LoopClock(ticking, 0.0, lambda steps: None)
    c.device_ready = lambda outputs: True
    looks = []
    c.fetch_begins = lambda: looks.append(ticking.t)
    keras_internals.attach_fetch_timer(_Frame(epoch_iterator=iterator), "jax", c,
                                       keras_internals.Attachment())
    source = iter(iterator._get_iterator())
    next(source)  # looked at before the pull's start: 1 to 2
    assert looks == [0.0] and c._fetches == [(1.0, 2.0)]


class _Pass:
    """One pass's iterator whose end takes `end_s` on the clock, as a tf.data iterator's does
    (it waits for its threads)."""

    def __init__(self, clock, items, end_s):
        self.clock, self.items, self.end_s = clock, list(items), end_s

    def __iter__(self):
        return self

    def __next__(self):
        if not self.items:
            raise StopIteration
        return self.items.pop(0)

    def __del__(self):
        self.clock.t += self.end_s


class _Passes:
    """An epoch iterator that makes a new pass each time, held by nothing else."""

    def __init__(self, make):
        self.make = make

    def _get_iterator(self):
        return self.make()


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_end_of_the_last_pass_is_the_epoch_s_setup_and_no_step_s(backend):
    """Keras' fit holds the last pass's iterator in its loop variable until the next epoch
    asks for its first batch: ending it there (100 s, as a tf.data iterator waits for its
    threads) and starting the new pass come before the epoch's loop begins."""
    ticking = _Ticking()
    iterator = _Passes(lambda: _Pass(ticking, [10], end_s=100.0))
    callbacks = _List()
    steps: list[Step] = []
    c = LoopClock(ticking, 0.0, steps.extend)
    attachment = keras_internals.Attachment()
    keras_internals.attach_loop_clock(_Frame(callbacks=callbacks), c, attachment)
    keras_internals.attach_fetch_timer(_Frame(epoch_iterator=iterator), backend, c, attachment)
    c.device_done = c.device_ready = None  # the steps timed where they end, as on torch
    for epoch in range(2):
        callbacks.on_epoch_begin(epoch)
        source = iter(iterator._get_iterator())  # the second epoch: the last pass ends, 100 s
        if backend == "torch":
            next(source)  # torch's epoch iterator pulls the batch before the begin hooks
        callbacks.on_train_batch_begin(0)  # the loop begins, at the pull if one came before
        if backend == "jax":
            next(source)  # JAX's step pulls inside itself
        callbacks.on_train_batch_end(0, {})
    first, second = steps
    # The pull took a second, the begin hooks one (torch: from the pull on), the step two.
    expected = (1.0, 2.0, 1.0) if backend == "jax" else (1.0, 1.0, 2.0)
    assert (first.wait_s, first.compute_s, first.other_s) == expected
    assert (second.wait_s, second.compute_s, second.other_s) == expected


@pytest.mark.parametrize("measure", [READY_TIMED, FETCH_TIMED, None])
def test_an_epoch_s_loop_begins_as_its_first_batch_s_begin_hooks_are_entered(measure):
    c, steps = clock(measure)
    assert c.starting_pass is False  # no epoch has begun
    c.epoch_begin(8.0)
    assert c.starting_pass
    c.ready(8.25)  # tf.data's thread: the batch was ready during the setup
    c.pass_started(8.5)  # the last pass ended, a new one started: untimed
    assert c.starting_pass is False
    c.begin(0, 8.75)
    first = c.end(0, 9.0)
    waited = None if measure is None else 0.0
    assert (first.wait_s, first.compute_s, first.other_s) == (waited, 0.25, 0.25)
    c.ready(9.0)
    c.begin(1, 9.25)
    second = c.end(1, 9.5)
    assert (second.wait_s, second.compute_s, second.other_s) == (waited, 0.25, 0.25)


def test_a_pull_before_the_first_begin_hooks_starts_the_loop_and_is_its_wait():
    """torch's epoch iterator pulls each batch before its begin hooks: the epoch's loop begins
    with the first pull (a `DataLoader`'s workers making their first batch is a wait)."""
    c, _ = clock(FETCH_TIMED)
    c.epoch_begin(8.0)
    c.fetched(8.25, 8.375)  # the pull of batch 0
    c.pass_started(8.5)
    c.begin(0, 8.75)
    step = c.end(0, 9.0)
    assert (step.wait_s, step.compute_s, step.other_s) == (0.125, 0.25, 0.375)


def test_a_pass_started_without_an_epoch_begin_changes_nothing():
    c, _ = clock(FETCH_TIMED)
    c.fetched(0.125, 0.25)
    c.pass_started(0.5)
    c.begin(0, 0.75)
    step = c.end(0, 1.0)
    assert (step.wait_s, step.other_s) == (0.125, None)


class _Array:
    def __init__(self, ready):
        self.ready = ready

    def block_until_ready(self):
        return self

    def is_ready(self):
        return self.ready


def test_a_jax_step_s_outputs_exist_when_its_first_array_of_logs_does():
    ready = keras_internals._outputs_ready
    assert ready({"epoch": 1, "loss": _Array(False), "acc": _Array(True)}) is False
    assert ready({"loss": _Array(True), "acc": _Array(False)}) is True
    assert ready({"loss": 0.5}) is True and ready(None) is True  # nothing to wait for


def _tf_data(*steps):
    """A tf.data pipeline of 32 rows, with `steps` (a name each) after its source: "batch" (of
    8), "numpy" or "py" (a map of a `tf.numpy_function` or `tf.py_function`), "ops" (a map of
    TensorFlow ops alone), "prefetch", "shuffle", "unbatch". A first step "generator" makes
    the source a `Dataset.from_generator` of 4 batches of 8."""
    import numpy as np
    import tensorflow as tf

    def same(x):
        return x

    def batches():
        yield from np.arange(32, dtype="float32").reshape(4, 8)

    if steps[:1] == ("generator",):
        dataset = tf.data.Dataset.from_generator(
            batches, output_signature=tf.TensorSpec((8,), tf.float32))
        steps = steps[1:]
    else:
        dataset = tf.data.Dataset.from_tensor_slices(np.arange(32, dtype="float32"))
    for step in steps:
        if step == "batch":
            dataset = dataset.batch(8)
        elif step == "unbatch":
            dataset = dataset.unbatch()
        elif step == "ops":
            dataset = dataset.map(lambda x: x + 1)  # TensorFlow ops alone
        elif step in ("numpy", "py"):
            call = tf.numpy_function if step == "numpy" else tf.py_function
            dataset = dataset.map(lambda x, call=call: call(same, [x], tf.float32))
        elif step == "prefetch":
            dataset = dataset.prefetch(2)
        else:
            dataset = dataset.shuffle(4)
    return dataset


def _attach_to(dataset, validation=None):
    from keras.src.trainers.data_adapters.tf_dataset_adapter import TFDatasetAdapter

    class EpochIterator:
        def __init__(self):
            self.data_adapter = TFDatasetAdapter(dataset)

        def _get_iterator(self):
            return self.data_adapter.get_tf_dataset()

    iterator = EpochIterator()
    c = LoopClock(_Ticking(), 0.0, lambda steps: None)
    attachment = keras_internals.Attachment()
    probed = keras_internals.attach_fetch_timer(
        _Frame(epoch_iterator=iterator, validation_data=validation), "tensorflow", c,
        attachment)
    return probed, iterator, c, attachment


@pytest.mark.parametrize("steps", [("batch", "numpy", "prefetch"), ("batch", "py", "prefetch"),
                                   ("generator", "prefetch")])
def test_a_python_function_run_once_per_batch_stamps_each_batch_as_it_returns(steps):
    probed, iterator, c, attachment = _attach_to(_tf_data(*steps))
    assert probed.value == READY_TIMED == c.measure
    c.ready(99.0)  # left over from an earlier pass: dropped when a new one starts
    assert len(list(iterator._get_iterator())) == 4
    assert list(c._ready) == [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0), (7.0, 8.0)]  # (asked, ready)
    attachment.detach()
    assert "_get_iterator" not in vars(iterator)
    c._ready.clear()
    assert len(list(iterator._get_iterator())) == 4 and not c._ready  # the function as it was


@pytest.mark.parametrize(("steps", "why"), [
    (("batch",), "TensorFlow reads the TFDatasetAdapter's batches inside the step, out of "
                 "Python's sight"),
    (("numpy", "batch"), "the tf.data pipeline calls Python (pyfunc_"),  # once per element
    (("batch", "numpy", "shuffle"), "the tf.data pipeline calls Python (pyfunc_"),
    (("batch", "numpy", "py"), "the tf.data pipeline calls 2 Python functions (pyfunc_"),
    (("generator", "unbatch", "batch"), "the tf.data pipeline calls Python (pyfunc_"),
    (("batch", "numpy", *["ops"] * 50), "the tf.data pipeline has over 50 transformations to "
                                        "look through"),
])
def test_a_tf_data_pipeline_not_calling_python_once_per_batch_is_sampled_and_says_why(
        steps, why):
    probed, iterator, c, attachment = _attach_to(_tf_data(*steps))
    assert probed.value is None and c.measure is None  # the monitor samples stacks instead
    assert probed.reason.startswith(f"data_fetch: {why}")
    assert probed.reason.endswith("the wait is sampled from the threads' stacks")
    list(iterator._get_iterator())
    assert not c._ready and "_get_iterator" not in vars(iterator)  # nothing was wrapped


def test_a_distributed_dataset_is_not_looked_through_and_says_why():
    class DistributedDataset:  # what a strategy's experimental_distribute_dataset gives
        pass

    class TFDatasetAdapter:
        def get_tf_dataset(self):
            return DistributedDataset()

    iterator = _EpochIterator(None)
    iterator.data_adapter = TFDatasetAdapter()
    c, _ = clock()
    probed = keras_internals.attach_fetch_timer(_Frame(epoch_iterator=iterator), "tensorflow",
                                                c, keras_internals.Attachment())
    assert probed.value is None and c.measure is None
    assert probed.reason == ("data_fetch: the DistributedDataset is not a tf.data pipeline to "
                             "look through for Python functions: the wait is sampled from the "
                             "threads' stacks")


def test_a_python_function_that_validation_calls_too_is_not_taken_for_the_training_s():
    dataset = _tf_data("batch", "numpy")
    probed, _, c, _ = _attach_to(dataset, validation=dataset)
    assert probed.value is None and c.measure is None
    assert probed.reason.startswith("data_fetch: validation reads the same tf.data pipeline's "
                                    "Python function (pyfunc_")
    probed, _, c, _ = _attach_to(dataset, validation=_tf_data("batch", "numpy"))
    assert probed.value == READY_TIMED  # a pipeline of its own: its own function


def test_a_generator_behind_tf_data_stamps_each_batch_as_it_leaves():
    class GeneratorDataAdapter:
        def generator(self):
            yield from ("a", "b")

    adapter = GeneratorDataAdapter()
    iterator = _EpochIterator(None)
    iterator.data_adapter = adapter
    ticking = _Ticking()
    c = LoopClock(ticking, 0.0, lambda steps: None)
    attachment = keras_internals.Attachment()
    probed = keras_internals.attach_fetch_timer(_Frame(epoch_iterator=iterator), "tensorflow",
                                                c, attachment)
    assert probed.value == READY_TIMED
    c.ready(99.0)  # left over from an earlier pass: dropped when a new one starts
    assert list(adapter.generator()) == ["a", "b"]
    assert list(c._ready) == [(1.0, 2.0), (3.0, 4.0)]  # (asked, ready) per batch
    attachment.detach()
    assert "generator" not in vars(adapter)


def test_a_batch_asked_for_after_the_step_began_waits_only_for_the_source():
    c, _ = clock(READY_TIMED)
    c.ready(0.75, asked=0.5)  # tf.data took 0.5 s to ask (its own time), the source 0.25 s
    c.begin(0, 0.0)
    step = c.end(0, 1.0)
    assert (step.wait_s, step.compute_s) == (0.25, 0.75)


def test_a_pydataset_with_workers_is_stamped_where_tf_data_takes_from_their_queue():
    class Enqueuer:
        def get(self):
            yield from ("a", "b")

    class PyDatasetAdapter:
        def __init__(self):
            self.enqueuer = Enqueuer()

    adapter = PyDatasetAdapter()
    iterator = _EpochIterator(None)
    iterator.data_adapter = adapter
    c = LoopClock(_Ticking(), 0.0, lambda steps: None)
    attachment = keras_internals.Attachment()
    probed = keras_internals.attach_fetch_timer(_Frame(epoch_iterator=iterator), "tensorflow",
                                                c, attachment)
    assert probed.value == READY_TIMED
    assert list(adapter.enqueuer.get()) == ["a", "b"]
    assert list(c._ready) == [(1.0, 2.0), (3.0, 4.0)]
    attachment.detach()
    assert "get" not in vars(adapter.enqueuer)


# -- steps handed on in bunches ------------------------------------------------------------------


def test_steps_go_on_in_bunches_of_64_or_every_50_ms_and_an_epoch_s_first_at_once():
    c, steps = clock(FETCH_TIMED)
    c.epoch_begin(0.0)
    c.end(0, 0.0)
    assert len(steps) == 1  # an epoch's first step: at once
    for batch in range(1, 64):  # 63 more, 1 µs apart: under 50 ms since the last hand-on
        c.end(batch, batch * 1e-6)
    assert len(steps) == 1
    c.end(64, 64e-6)  # the 64th waiting
    assert [s.last_batch for s in steps] == list(range(65))
    c.end(65, 64e-6 + 0.049)  # 49 ms after the last hand-on: kept
    assert len(steps) == 65
    c.end(66, 64e-6 + 0.05)  # 50 ms: handed on
    assert [s.last_batch for s in steps[65:]] == [65, 66]
    c.end(67, 0.06)
    c.epoch_begin(0.07)
    c.end(0, 0.08)  # a new epoch's first step goes at once, the one before it too
    assert [s.last_batch for s in steps[67:]] == [67, 0]
    c.end(1, 0.081)
    assert c.settle(1.0) and [s.last_batch for s in steps[69:]] == [1]  # the epoch's end


def test_steps_timed_from_the_device_side_go_on_in_the_same_bunches():
    device = _Device()
    c, steps = looked_at(device)
    c.epoch_begin(0.0)
    outputs = [_Outputs() for _ in range(70)]
    for batch, out in enumerate(outputs[:66]):
        t = batch * 1e-6
        device.t = t
        c.begin(batch, t)
        c.end(batch, t, out)  # the step before it is looked at here: done, timed
        out.done = True
    # Step 0 went at the first end that found it timed; 64 timed steps go together.
    assert [s.last_batch for s in steps] == list(range(65))
    device.t = 0.049
    c.end(66, 64e-6 + 0.049, outputs[66])  # 49 ms after the last step handed on: kept
    outputs[66].done = True
    assert len(steps) == 65
    device.t = 0.05
    c.end(67, 64e-6 + 0.05, outputs[67])
    assert [s.last_batch for s in steps[65:]] == [65, 66]
    outputs[67].done = True
    assert c.settle(1.0) and [s.last_batch for s in steps[67:]] == [67]
    c.close()


def test_a_second_epoch_on_the_device_side_numbers_on_from_the_first():
    device = _Device()
    c, steps = looked_at(device)
    for epoch_start in (0.0, 10.0):
        c.epoch_begin(epoch_start)
        for batch in range(3):
            out = _Outputs()
            c.begin(batch, epoch_start + batch)
            c.end(batch, epoch_start + batch + 0.5, out)
            out.done, device.t = True, epoch_start + batch + 0.75
        assert c.settle(10.0)
    c.close()
    assert [(s.last_batch, s.end_s) for s in steps] == [
        (0, 0.75), (1, 1.75), (2, 2.75), (0, 10.75), (1, 11.75), (2, 12.75)]


def test_on_the_device_side_the_device_is_free_for_the_loop_once_the_pass_started():
    device = _Device()
    c, steps = looked_at(device)
    c.epoch_begin(10.0)  # Keras waited for the device at the last epoch's end
    c.pass_started(10.5)  # the last pass ended and a new one started: untimed
    out = _Outputs()
    c.begin(0, 10.5)
    c.fetched(10.5, 10.625)  # the step's own fetch, with the device idle
    c.end(0, 10.75, out)
    out.done, device.t = True, 11.0
    assert c.settle(10.0)
    c.close()
    (step,) = steps
    assert (step.begin_s, step.wait_s, step.compute_s, step.other_s) == (
        10.625, 0.125, 0.375, 0.0)


def test_every_fetch_a_device_step_waited_for_counts():
    """Two fetches while the device sat idle (a step of two batches): both are its wait."""
    device = _Device()
    c, steps = looked_at(device)
    c.epoch_begin(0.0)
    first = _Outputs()
    c.begin(0, 0.0)
    c.end(0, 0.25, first)
    first.done, device.t = True, 0.5
    c.fetch_begins()  # found done: the device is free from 0.5
    c.fetched(0.5, 1.0)
    c.fetched(1.0, 1.25)
    c.begin(1, 1.25)
    second = _Outputs(done=True)
    device.t = 1.75  # as long as the step before: it lost nothing to the pause
    c.end(2, 1.5, second)
    assert c.settle(10.0)
    c.close()
    assert steps[-1].wait_s == 0.75
