"""Pairing Keras' batch hooks into steps (`gpu_watch.sensing.steps`), and the timeline that counts
them.

No framework: the hooks' calls are played by hand, in the orders Keras makes them (in order on
TensorFlow, from a thread pool on JAX and torch, several batch indices per call under
`steps_per_execution`).
"""

from __future__ import annotations

import signal
import sys
import threading

import pytest

from gpu_watch.judging.data_wait import LoopTotals
from gpu_watch.judging.timeline import Timeline
from gpu_watch.sensing.steps import BatchPairing, Step
from gpu_watch.training.watchdog import FitWatchdog


def test_hooks_in_order_give_one_step_each_with_the_time_between_them():
    pairing = BatchPairing()
    pairing.begin(0, 1.0)
    assert pairing.end(0, 3.0, {"loss": 1}) == [Step(0, 0, 1.0, 3.0, None, {"loss": 1})]
    pairing.begin(1, 3.25)
    (step,) = pairing.end(1, 3.5, None)
    assert (step.first_batch, step.last_batch, step.steps) == (1, 1, 1)
    # From the end of batch 0 to this begin: time spent elsewhere, not a measured wait for data
    # (the hooks alone cannot tell the two apart).
    assert step.other_s == pytest.approx(0.25) and step.wait_s is None


def test_an_end_that_comes_early_waits_for_the_batches_before_it():
    pairing = BatchPairing()
    for batch, begin in ((0, 0.0), (1, 1.0), (2, 2.0)):
        pairing.begin(batch, begin)
    assert pairing.end(1, 2.5, "b1") == []  # batch 0 has not ended: nothing is final yet
    assert pairing.end(2, 3.0, "b2") == []
    steps = pairing.end(0, 3.5, "b0")
    assert [(s.last_batch, s.logs) for s in steps] == [(0, "b0"), (1, "b1"), (2, "b2")]
    # Steps run in sequence: one that was seen to end earlier ends no sooner than the one
    # before it.
    assert [s.end_s for s in steps] == [3.5, 3.5, 3.5]


def test_the_time_between_steps_is_only_measured_after_the_batch_just_before():
    pairing = BatchPairing()
    pairing.begin(0, 0.0)
    pairing.end(0, 1.0, None)
    pairing.begin(2, 1.5)  # batch 1's hooks were never seen
    (step,) = pairing.end(2, 2.0, None)
    assert step.other_s is None and step.wait_s is None


def test_a_new_epoch_does_not_wait_for_the_last_one():
    pairing = BatchPairing()
    pairing.begin(0, 0.0)
    pairing.end(0, 1.0, None)
    pairing.new_epoch()
    pairing.begin(1, 5.0)  # the same index as the step after: still no wait across epochs
    (step,) = pairing.end(1, 6.0, None)
    assert step.other_s is None and step.end_s == 6.0


def test_one_end_closes_several_steps_under_steps_per_execution():
    pairing = BatchPairing(steps_per_execution=4)
    pairing.begin(0, 0.0)
    (step,) = pairing.end(3, 2.0, None)  # one call for batches 0-3
    assert (step.first_batch, step.last_batch, step.steps) == (0, 3, 4)
    pairing.begin(4, 2.5)
    (step,) = pairing.end(5, 3.0, None)  # the last call of an epoch may close fewer
    assert step.steps == 2 and step.other_s == pytest.approx(0.5)


def test_an_end_past_the_reach_of_a_begin_is_a_step_of_its_own():
    pairing = BatchPairing(steps_per_execution=2)
    pairing.begin(0, 0.0)
    # Batch 3 is out of reach of begin 0 (which closes 0 or 1): it begins where it ends.
    assert pairing.end(3, 1.0, None) == []
    first, second = pairing.end(1, 1.5, None)
    assert (first.first_batch, first.last_batch) == (0, 1)
    # It ended before batch 1, as seen, but steps run in sequence.
    assert (second.first_batch, second.last_batch, second.begin_s, second.end_s) == (
        3, 3, 1.0, 1.5)
    assert pairing.end_epoch() == []


def test_an_end_without_a_begin_begins_where_it_ends():
    pairing = BatchPairing()
    (step,) = pairing.end(0, 2.0, None)
    assert (step.begin_s, step.end_s, step.wait_s) == (2.0, 2.0, None)


def test_an_end_whose_begin_was_never_seen_closes_no_batch_begun_after_it():
    pairing = BatchPairing()
    pairing.begin(5, 1.0)
    # Batch 4's begin was never seen: its end begins where it ends, and batch 5, which began
    # first, is still running; neither the batch before 5 nor any earlier one closes it.
    assert pairing.end(4, 1.5, "b4") == []
    assert pairing.end(5, 2.0, "b5") == [Step(5, 5, 1.0, 2.0, None, "b5"),
                                         Step(4, 4, 1.5, 2.0, None, "b4")]


def test_the_epoch_end_drops_begins_that_never_ended():
    pairing = BatchPairing()
    pairing.begin(0, 0.0)
    pairing.end(0, 1.0, None)
    pairing.begin(1, 1.0)  # the data ran out: batch 1 never ends
    assert pairing.end_epoch() == []
    pairing.new_epoch()
    pairing.begin(0, 2.0)
    assert [s.begin_s for s in pairing.end(0, 3.0, None)] == [2.0]


def test_an_end_of_an_earlier_epoch_does_not_pair_with_the_next_one():
    pairing = BatchPairing()
    pairing.begin(0, 0.0)
    pairing.end(1, 0.5, None)  # an end whose begin never came: it is a step of its own
    assert len(pairing.end_epoch()) == 1  # batch 0's begin never ended and is dropped
    pairing.begin(1, 2.0)
    assert pairing.end_epoch() == []  # the end seen last epoch is gone


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4", None])
def test_steps_per_execution_must_be_a_whole_number(bad):
    with pytest.raises(ValueError, match=f"steps_per_execution must be a whole number, at "
                                         f"least 1, got {bad!r}"):
        BatchPairing(bad)


def test_the_timeline_counts_what_the_hooks_pair_and_names_step_0():
    tl = Timeline([], 10.0, 60.0, 0.2)
    tl.begin_epoch(0, 0.0)
    tl.batch_begin(0, 0.0)
    first = tl.batch_end(0, 2.0, {"loss": 3})  # step 0: compilation
    assert first is not None and first.logs == {"loss": 3}
    assert tl.first_step_s == 2.0
    tl.batch_begin(1, 2.5)
    assert tl.batch_end(1, 3.0, None) is None  # not step 0
    assert tl.end_batches() is None
    # Step 0's 2 s count as compute; the 0.5 s between the steps are spent elsewhere, and no
    # wait for data was measured.
    assert tl.run_loop() == LoopTotals(steps=2, step_s=2.5, wait_s=0.0, other_s=0.5)
    loop = tl.end_epoch(3.0).loop
    assert (loop.batches, loop.steps) == (1, 1)  # step 0 stays out of the epoch's loop
    rows = tl.drain(final=True)[1]
    assert [(r["epoch"], r["batch"]) for r in rows] == [(0, 0), (0, 1)]


def test_the_timeline_pairs_one_batch_per_end_hook_by_default():
    tl = Timeline([], 10.0, 60.0, 0.2)
    tl.batch_begin(0, 0.0)
    assert tl.batch_end(1, 1.0, None) is None  # batch 1 alone: batch 0 is still running
    assert tl.end_batches().last_batch == 1  # begin 0 never ended: dropped
    assert tl.run_loop().steps == 1
    # Hooks before any epoch began belong to epoch 0.
    assert [(r["epoch"], r["batch"], r["steps"]) for r in tl.drain()[1]] == [(0, 1, 1)]


def test_the_epoch_of_each_row_is_the_one_its_hooks_ran_in():
    tl = Timeline([], 10.0, 60.0, 0.2)
    for epoch in (0, 1):
        tl.begin_epoch(epoch, float(epoch))
        tl.batch_begin(0, epoch + 0.1)
        tl.batch_end(0, epoch + 0.2, None)
        tl.end_batches()
        tl.end_epoch(epoch + 0.5)
    assert [r["epoch"] for r in tl.drain(final=True)[1]] == [0, 1]


def test_step_0_completed_only_at_the_epoch_end_is_named_then():
    tl = Timeline([], 10.0, 60.0, 0.2, steps_per_execution=4)
    tl.begin_epoch(0, 0.0)
    tl.batch_begin(0, 0.0)
    assert tl.batch_end(5, 1.0, None) is None  # out of reach of begin 0: waits for it
    step = tl.end_batches()  # begin 0 never ended: dropped; batch 5 is step 0
    assert step is not None and step.last_batch == 5


# -- the watchdog ------------------------------------------------------------------------------


def test_the_watchdog_sees_a_fit_frame_leave_its_thread():
    watchdog = FitWatchdog()
    assert not watchdog.fit_left() and watchdog.thread is None  # nothing watched
    seen = {}

    def fit():
        watchdog.watch(sys._getframe())
        seen["inside"] = watchdog.fit_left()

    worker = threading.Thread(target=fit)
    worker.start()
    worker.join()
    assert seen["inside"] is False
    assert watchdog.fit_left() is True  # the thread is gone, and the frame with it
    watchdog.release()
    assert watchdog.fit_left() is False and watchdog.thread is None


def test_the_watchdog_notes_ctrl_c_and_passes_it_on():
    passed = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: passed.append(signum))
    try:
        watchdog = FitWatchdog()
        watchdog.watch(sys._getframe())
        assert watchdog.thread == threading.get_ident()
        signal.raise_signal(signal.SIGINT)
        assert watchdog.interrupted and passed == [signal.SIGINT]
        watchdog.restore_sigint()
        signal.raise_signal(signal.SIGINT)  # the handler is the user's again
        assert passed == [signal.SIGINT, signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is not watchdog._on_sigint
    finally:
        signal.signal(signal.SIGINT, previous)
