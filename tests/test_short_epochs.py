"""Epochs and the readings that describe them (`Timeline.end_epoch`, `ready_epochs`): an epoch
with readings of its own is complete when it ends; one shorter than the sampling interval takes
the first reading up to two intervals after its end, and is complete once that reading, or a
later one, comes."""

from __future__ import annotations

import pytest

from gpu_watch.judging.assessment import epoch_row
from gpu_watch.judging.data_wait import DataTick
from gpu_watch.judging.timeline import EpochSpan, Timeline
from gpu_watch.judging.usage import EnergyMeter
from gpu_watch.judging.verdict import Setting
from gpu_watch.sensing.nvml import Reading

INTERVAL_S = 0.25


def reading(t, util=None, gpu=0, **kw):
    return Reading(time_s=t, gpu=gpu, util_pct=util, **kw)


def after_step_0(gpus=(0,)):
    """A timeline whose epoch 0 began at 0 s and whose step 0 ended at 0.5 s."""
    tl = Timeline(list(gpus), 10.0, 60.0, INTERVAL_S)
    tl.begin_epoch(0, 0.0)
    tl.add_batch(0, 0, 1, 0.0, 0.5, None)
    return tl


def util_readings(span):
    (stats,) = span.gpu_stats()
    return stats.util_samples, stats.util_mean


def test_an_epoch_with_readings_of_its_own_is_ready_when_it_ends():
    tl = after_step_0()
    tl.add_readings([reading(0.75, 40.0)])
    tl.add_readings([reading(1.0, 60.0)])
    span = tl.end_epoch(1.1, {"loss": 0.5})
    assert (span.ready, span.readings, span.logs) == (True, 2, {"loss": 0.5})
    assert tl.ready_epochs() == [span]
    assert util_readings(span) == (2, 50.0)
    assert tl.ready_epochs() == []


def test_an_epoch_without_readings_waits_for_the_one_that_covers_it():
    tl = after_step_0()
    tl.end_epoch(0.6)  # shorter than the interval: no reading inside it
    tl.begin_epoch(1, 0.6)
    tl.add_batch(1, 0, 1, 0.6, 0.65, None)
    tl.end_epoch(0.7)
    assert tl.ready_epochs() == []
    tl.add_readings([reading(0.75, 30.0)])  # covers both
    first, second = tl.ready_epochs()
    assert (first.epoch, first.readings, util_readings(first)) == (0, 1, (1, 30.0))
    assert (second.epoch, second.readings, util_readings(second)) == (1, 1, (1, 30.0))


def test_without_gpus_an_epoch_is_ready_at_once():
    tl = Timeline([], 10.0, 60.0, INTERVAL_S)
    tl.begin_epoch(0, 0.0)
    span = tl.end_epoch(0.1)
    assert span.ready is True and tl.ready_epochs() == [span]
    assert tl.end_epoch(0.2) is None  # no epoch open


@pytest.mark.parametrize(("after_s", "taken"), [
    (0.0, True),  # a reading exactly at the end: its period covers the epoch
    (0.5, True),  # two intervals after the end, the last that covers it
    (0.625, False),
    (1.0, False),
])
def test_a_short_epoch_takes_a_reading_up_to_two_intervals_after_its_end(after_s, taken):
    tl = after_step_0()
    tl.end_epoch(1.0)
    tl.add_readings([reading(1.0 + after_s, 70.0)])
    (span,) = tl.ready_epochs()  # complete either way: nothing later can cover it
    assert (span.readings, util_readings(span)) == ((1, (1, 70.0)) if taken else (0, (0, None)))


def test_a_reading_taken_before_the_epoch_ended_does_not_complete_it():
    tl = after_step_0()
    tl.end_epoch(1.0)
    tl.add_readings([reading(0.875, 70.0)])  # read before the end, handed over after it
    assert tl.ready_epochs() == []
    tl.add_readings([reading(1.125, 20.0)])
    (span,) = tl.ready_epochs()
    assert util_readings(span) == (1, 20.0)


def test_a_complete_epoch_takes_no_reading_after_its_end():
    tl = after_step_0()
    tl.add_readings([reading(0.75, 40.0)])
    tl.end_epoch(1.0)
    tl.add_readings([reading(1.125, 90.0)])  # after the end, before anyone took the epoch
    (span,) = tl.ready_epochs()
    assert (span.readings, util_readings(span)) == (1, (1, 40.0))


@pytest.mark.parametrize(("after_s", "ready"), [(0.5, False), (0.625, True), (1.0, True)])
def test_an_epoch_no_reading_can_describe_is_complete_two_intervals_after_its_end(
        after_s, ready):
    # Step 0 is still running: no reading counts towards any epoch, so only time completes it.
    tl = Timeline([0], 10.0, 60.0, INTERVAL_S)
    tl.begin_epoch(0, 0.0)
    tl.end_epoch(1.0)
    tl.add_readings([reading(1.0 + after_s, 70.0)])
    spans = tl.ready_epochs()
    assert [(s.epoch, s.readings) for s in spans] == ([(0, 0)] if ready else [])


def test_every_closed_epoch_is_handed_over_at_the_end_of_the_run():
    tl = after_step_0()
    tl.end_epoch(1.0)
    tl.begin_epoch(1, 1.0)
    tl.end_epoch(1.1)
    assert tl.ready_epochs() == []
    assert [s.epoch for s in tl.ready_epochs(final=True)] == [0, 1]
    assert tl.ready_epochs(final=True) == []


@pytest.mark.parametrize(("tick", "counted"), [
    (DataTick(fetching=True), (1, 1, 0)),
    (DataTick(fetching=False, producing=True), (1, 0, 1)),
    (DataTick(fetching=False), (1, 0, 0)),
])
def test_a_stack_sample_is_counted_and_a_reading_s_data_state_written(tick, counted):
    tl = after_step_0()
    tl.add_data_tick(tick.fetching, tick.producing)  # the stack sampler's look
    tl.add_readings([reading(0.75, 50.0)], data=tick)  # the NVML tick's: written, not counted
    loop = tl.end_epoch(1.0).loop
    assert (loop.ticks, loop.fetching_ticks, loop.producing_ticks) == counted
    wait = tl.run_wait()
    assert (wait.ticks, wait.fetching_ticks, wait.producing_ticks) == counted
    (sample,), _ = tl.drain()
    assert (sample.fetching_data, sample.producing_data) == (tick.fetching, tick.producing)


def test_a_tick_without_a_data_state_counts_no_tick():
    tl = after_step_0()
    tl.add_readings([reading(0.75, 50.0)])
    assert tl.end_epoch(1.0).loop.ticks == tl.run_wait().ticks == 0
    (sample,), _ = tl.drain()
    assert (sample.fetching_data, sample.producing_data) == (None, None)


def test_an_epoch_still_running_has_no_end_and_no_duration():
    span = EpochSpan(2, 1.0, [0], {0: EnergyMeter()})
    assert (span.end_s, span.ready, span.readings) == (None, False, 0)
    _, row = epoch_row(span, Setting(compute_on_gpu=True))
    assert (row["epoch"], row["duration_s"], row["batches"]) == (2, None, 0)


def test_an_epoch_begun_again_ends_the_one_keras_never_ended():
    tl = Timeline([0], 10.0, 60.0, INTERVAL_S)
    tl.begin_epoch(0)  # at the start of training by default
    tl.begin_epoch(1, 2.0)
    (span,) = tl.ready_epochs(final=True)
    assert (span.epoch, span.start_s, span.end_s) == (0, 0.0, 2.0)
    assert tl.epoch == 1


def test_step_0_s_duration_is_kept_apart_for_the_run_and_its_epoch():
    tl = Timeline([0], 10.0, 60.0, INTERVAL_S)
    assert tl.first_step_s is None and tl.first_step_end_s is None
    tl.begin_epoch(0, 0.125)
    tl.add_batch(0, 0, 1, 0.25, 1.0, None)
    assert (tl.first_step_s, tl.first_step_end_s) == (0.75, 1.0)
    span = tl.end_epoch(1.5)
    assert (span.first_step_s, span.loop.batches) == (0.75, 0)
