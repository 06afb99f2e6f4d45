"""The one usage rule (`gpu_watch.judging.usage`): the threshold, its default, idle and busy at and
beside it, and the figure a reading is judged by."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pandas as pd
import pytest

from gpu_watch.judging.usage import (
    DEFAULT_IDLE_THRESHOLD_PCT,
    ReadingJudge,
    RunUsage,
    UsageMeter,
    busy,
    idle,
    missing,
    recorded_threshold_pct,
    unjudged_fallback_pct,
    usage_of_frames,
)
from gpu_watch.runlog import RunRecord
from gpu_watch.sensing.nvml import Reading
from gpu_watch.training.config import Config


def test_the_default_threshold_is_one_value_everywhere_it_is_given():
    from gpu_watch.training.callback import GPUWatch

    signature = inspect.signature(GPUWatch).parameters["idle_threshold_pct"].default
    assert DEFAULT_IDLE_THRESHOLD_PCT == 10.0
    assert Config().idle_threshold_pct == signature == DEFAULT_IDLE_THRESHOLD_PCT
    assert recorded_threshold_pct({}) == DEFAULT_IDLE_THRESHOLD_PCT  # a run that kept none


@pytest.mark.parametrize(("pct", "is_idle"), [(9.99, True), (10.0, False), (10.01, False),
                                              (0.0, True)])
def test_idle_is_under_the_threshold_and_busy_at_or_over_it(pct, is_idle):
    assert idle(pct, 10.0) is is_idle
    assert busy(pct, 10.0) is (not is_idle)


def test_the_rules_apply_element_wise_to_arrays():
    values = np.array([0.0, 9.5, 10.0, 50.0])
    assert idle(values, 10.0).tolist() == [True, True, False, False]
    assert busy(values, 10.0).tolist() == [False, False, True, True]


@pytest.mark.parametrize(("config", "threshold"), [
    ({}, 10.0), ({"idle_threshold_pct": None}, 10.0), ({"idle_threshold_pct": 0}, 0.0),
    ({"idle_threshold_pct": 25}, 25.0), ({"idle_threshold_pct": "5.5"}, 5.5),
])
def test_a_run_is_judged_by_the_threshold_it_recorded(config, threshold):
    assert recorded_threshold_pct(config) == threshold


def reading(util=None, own=None, procs=None, gpu=0):
    return Reading(time_s=1.0, gpu=gpu, util_pct=util, proc_util_pct=own, procs=procs)


def test_the_judged_figure_takes_this_process_s_own_then_the_device_s_where_it_can_tell():
    judge = ReadingJudge(10.0)
    assert judge.judge(reading(util=90.0, own=30.0, procs=2)) == 30.0  # its own, measured
    assert judge.judge(reading(util=9.9, procs=3)) == 9.9  # idle device: the training was idle
    assert judge.judge(reading(util=10.0, procs=3)) is None  # at the threshold: may be others'
    assert judge.judge(reading(util=80.0, procs=1)) is None  # GPU 0 gave its own figure before
    assert judge.judge(reading(util=80.0, procs=1, gpu=1)) == 80.0  # alone, never attributed
    assert judge.judge(reading(util=80.0, procs=2, gpu=1)) is None  # another process listed
    assert judge.judge(reading(util=None, procs=1, gpu=1)) is None


def test_the_usage_meter_counts_idle_seconds_by_the_same_rule():
    meter = UsageMeter(10.0, 0.5)
    meter.add_batches([{"epoch": 0, "time_s": 1.0, "step_s": 1.0, "wait_s": None}])
    meter.add_samples([
        {"time_s": 1.5, "gpu": 0, "judged_util_pct": 9.99, "others_util_pct": 10.0,
         "power_w": 100.0},
        {"time_s": 2.0, "gpu": 0, "judged_util_pct": 10.0, "others_util_pct": 9.99,
         "power_w": 100.0},
    ])
    use = meter.usage(2.0).gpus[0]["judged"]
    assert (use.measured_s, use.idle_s, use.idle_energy_j, use.idle_power_s) == (
        1.0, 0.5, 50.0, 0.5)
    assert (use.starved_s, use.starved_energy_j) == (0.5, 50.0)  # others busy at 10.0


def test_a_reading_recorded_without_a_judged_figure_falls_back_to_its_own_then_the_device_s():
    nan = float("nan")
    assert unjudged_fallback_pct(40.0, 90.0) == 40.0
    assert unjudged_fallback_pct(0.0, 90.0) == 0.0  # measured idle is a figure, not a gap
    assert unjudged_fallback_pct(nan, 90.0) == 90.0
    assert math.isnan(unjudged_fallback_pct(nan, nan))


@pytest.mark.parametrize(("value", "is_missing"), [
    (None, True), (float("nan"), True), (0.0, False), (0, False), ("", False)])
def test_only_none_and_nan_are_not_measured(value, is_missing):
    assert missing(value) is is_missing


def test_readings_written_before_step_0_s_row_are_kept_to_a_bound_and_counted_after_it():
    """The sampler may write readings taken after step 0 ended before the training thread has
    written step 0's row; the meter keeps the latest 1,000 of them, no more."""
    meter = UsageMeter(10.0, 0.0005)
    readings = [{"time_s": 1.0 + 0.001 * i, "gpu": 0, "judged_util_pct": 50.0}
                for i in range(1, 1002)]  # one more than is kept
    meter.add_samples(readings)
    meter.add_batches([{"epoch": 0, "time_s": 1.0, "step_s": 1.0, "wait_s": None}])
    use = meter.usage(3.0).gpus[0]["judged"]
    # The first was dropped: the second stands for its interval only, not the millisecond
    # since the first.
    assert use.measured_s == pytest.approx(readings[-1]["time_s"] - (1.002 - 0.0005))
    assert use.idle_s == 0.0 and use.idle_power_s == 0.0


def test_usage_counts_no_epoch_start_it_was_not_told_of():
    assert RunUsage(None, None, 0.0, 0).epoch_starts == 0


# -- the usage meter: batch rows -------------------------------------------------------------


def test_each_later_epoch_s_first_batch_counts_its_step_wait_and_time_elsewhere():
    """Not the time since the epoch before ended (validation ran then); an unmeasured wait
    (the batch was fetched before its hook began) makes it an epoch start, each counted."""
    meter = UsageMeter(10.0, 0.5)
    meter.add_batches([
        {"epoch": 0, "time_s": 1.0, "step_s": 1.0, "wait_s": None, "other_s": None},  # step 0
        {"epoch": 0, "time_s": 2.0, "step_s": 0.5, "wait_s": 0.25, "other_s": 0.25},
        {"epoch": 1, "time_s": 9.0, "step_s": 0.5, "wait_s": None, "other_s": 0.125},
        {"epoch": 1, "time_s": 10.0, "step_s": 0.5, "wait_s": 0.25, "other_s": 0.25},
        {"epoch": 2, "time_s": 20.0, "step_s": 0.5, "wait_s": None, "other_s": 0.0625},
        {"epoch": 3, "time_s": 30.0, "step_s": 0.5, "wait_s": 0.5, "other_s": None},
    ])
    run = meter.usage(30.0)
    assert run.loop_s == 1.0 + 0.625 + 1.0 + 0.5625 + 1.0
    assert (run.batches, run.epoch_starts, run.step0_end_s) == (5, 2, 1.0)


# -- the usage meter: readings ---------------------------------------------------------------


def step_0_until(end_s, interval_s=0.5):
    meter = UsageMeter(10.0, interval_s)
    meter.add_batches([{"epoch": 0, "time_s": end_s, "step_s": end_s, "wait_s": None}])
    return meter


def test_a_torn_reading_is_skipped_and_the_readings_after_it_still_count():
    meter = step_0_until(1.0)
    meter.add_samples([{"time_s": 1.5, "gpu": float("nan"), "judged_util_pct": 0.0},
                       {"time_s": float("nan"), "gpu": 0, "judged_util_pct": 0.0},
                       {"time_s": 1.5, "gpu": 0, "judged_util_pct": 0.0}])
    use = meter.usage(2.0).gpus[0]["judged"]
    assert (use.measured_s, use.idle_s) == (0.5, 0.5)


def test_a_reading_that_stands_for_no_time_after_step_0_counts_nothing():
    """One taken as step 0 ended, or again at its GPU's last time, covers no second after
    step 0: it adds no GPU to the sums, and the readings after it still count."""
    meter = step_0_until(1.0)
    meter.add_samples([{"time_s": 0.9, "gpu": 1, "judged_util_pct": 0.0},
                       {"time_s": 1.0, "gpu": 0, "judged_util_pct": 0.0}])
    assert meter.usage(1.0).gpus == {}
    meter.add_samples([{"time_s": 1.0, "gpu": 0, "judged_util_pct": 0.0},
                       {"time_s": 1.25, "gpu": 0, "judged_util_pct": 0.0},
                       {"time_s": 1.25, "gpu": 0, "judged_util_pct": 90.0},
                       {"time_s": 1.5, "gpu": 1, "judged_util_pct": 90.0}])
    gpus = meter.usage(1.5).gpus
    assert (gpus[0]["judged"].measured_s, gpus[0]["judged"].idle_s) == (0.25, 0.25)
    assert (gpus[1]["judged"].measured_s, gpus[1]["judged"].idle_s) == (0.5, 0.0)


def test_a_figure_missing_from_a_reading_leaves_the_other_figures_counted():
    meter = step_0_until(1.0)
    meter.add_samples([{"time_s": 1.5, "gpu": 0, "judged_util_pct": float("nan"),
                        "proc_util_pct": None, "util_pct": 5.0}])
    uses = meter.usage(1.5).gpus[0]
    assert uses["judged"].measured_s == uses["process"].measured_s == 0.0
    assert (uses["device"].measured_s, uses["device"].idle_s) == (0.5, 0.5)


def test_a_starved_second_without_a_power_reading_adds_no_energy():
    """Its power is unknown, not 0 W nor any other figure: the seconds count as starved, the
    joules only where power was read."""
    meter = step_0_until(1.0)
    meter.add_samples([
        {"time_s": 1.5, "gpu": 0, "judged_util_pct": 0.0, "others_util_pct": 80.0,
         "power_w": None},
        {"time_s": 2.0, "gpu": 0, "judged_util_pct": 0.0, "others_util_pct": 80.0,
         "power_w": 120.0},
    ])
    use = meter.usage(2.0).gpus[0]["judged"]
    assert (use.starved_s, use.starved_energy_j, use.starved_power_s) == (1.0, 60.0, 0.5)
    assert (use.idle_s, use.idle_energy_j, use.idle_power_s) == (1.0, 60.0, 0.5)
    # Every starved second at the mean power of those with a reading: 120 W for 1 s.
    assert use.starved_energy_all_j == 120.0


def test_starved_seconds_with_no_power_reading_at_all_have_no_energy():
    meter = step_0_until(1.0)
    meter.add_samples([
        {"time_s": 1.5, "gpu": 0, "judged_util_pct": 0.0, "others_util_pct": 80.0,
         "power_w": None},
        {"time_s": 2.0, "gpu": 0, "judged_util_pct": 0.0, "others_util_pct": 0.0,
         "power_w": 90.0},  # idle with a reading, but alone on the GPU: not starved
    ])
    use = meter.usage(2.0).gpus[0]["judged"]
    assert (use.starved_s, use.starved_power_s, use.idle_power_s) == (0.5, 0.0, 0.5)
    assert use.starved_energy_all_j is None  # unknown, never 0 J


# -- a run read back -------------------------------------------------------------------------


def frame(rows):
    return pd.DataFrame(rows)


def test_a_run_read_back_is_summed_by_the_threshold_and_interval_it_recorded():
    batches = frame([{"epoch": 0, "time_s": 1.0, "step_s": 1.0, "wait_s": None},
                     {"epoch": 0, "time_s": 9.0, "step_s": 8.0, "wait_s": 0.0}])
    samples = frame([{"time_s": 4.0, "gpu": 0, "judged_util_pct": 20.0}])
    info = {"duration_s": 9.0, "config": {"idle_threshold_pct": 25.0, "interval_s": 2.0}}
    use = usage_of_frames(RunRecord.from_json(info), samples, batches).gpus[0]["judged"]
    # The first reading stands for the recorded interval before it (2 s, not 0.2 s), idle
    # under the recorded 25 % (it is busy by the default 10 %).
    assert (use.measured_s, use.idle_s) == (2.0, 2.0)
    use = usage_of_frames(RunRecord(duration_s=9.0), samples, batches).gpus[0]["judged"]
    assert (use.measured_s, use.idle_s) == (pytest.approx(0.2), 0.0)  # the defaults


def test_a_run_read_back_without_a_duration_lasts_until_its_last_batch():
    batches = frame([{"epoch": 0, "time_s": 1.0, "step_s": 1.0, "wait_s": None},
                     {"epoch": 0, "time_s": 3.5, "step_s": 2.5, "wait_s": 0.0},
                     {"epoch": 0, "time_s": float("nan"), "step_s": 1.0, "wait_s": 0.0}])
    assert usage_of_frames(RunRecord(), None, batches).duration_s == 3.5
    assert usage_of_frames(RunRecord(duration_s=10), None, batches).duration_s == 10.0
    never = batches.iloc[0:0]  # step 0 never ended
    assert usage_of_frames(RunRecord(), None, never).duration_s is None


@pytest.mark.parametrize("empty", [None, pd.DataFrame(),
                                   pd.DataFrame(columns=["epoch", "time_s", "gpu"])])
def test_a_run_read_back_without_rows_sums_nothing(empty):
    assert usage_of_frames(RunRecord(), empty, empty) == RunUsage(None, None, 0.0, 0, {}, 0)


def test_rows_read_back_count_in_time_order_and_rows_of_one_time_as_they_were_written():
    """Batch hooks may run on several threads, so rows may be written out of time order. Here
    each epoch's first batch is written right after the last batch of the epoch before, at
    the same time; otherwise the rows are out of order, the last epoch's first."""
    blocks = [[{"epoch": 0, "time_s": 1.0, "step_s": 1.0, "wait_s": None, "other_s": None}]]
    for epoch in range(30):
        blocks.append([{"epoch": e, "time_s": epoch + 2.0, "step_s": 0.5, "wait_s": None,
                        "other_s": 0.25} for e in (epoch, epoch + 1)])
    batches = frame([row for block in reversed(blocks) for row in block])
    run = usage_of_frames(RunRecord(), None, batches)
    # Each epoch's last batch: 1 s since the batch before it; each first: its 0.75 s, an
    # epoch start (its wait unmeasured).
    assert (run.loop_s, run.batches, run.epoch_starts) == (30 * 1.0 + 30 * 0.75, 60, 30)
    assert (run.step0_end_s, run.duration_s) == (1.0, 31.0)
