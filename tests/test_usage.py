"""The one usage rule (`gpu_watch.usage`): the threshold, its default, idle and busy at and
beside it, and the figure a reading is judged by."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

from gpu_watch.config import Config
from gpu_watch.nvml import Reading
from gpu_watch.usage import (
    DEFAULT_IDLE_THRESHOLD_PCT,
    ReadingJudge,
    RunUsage,
    UsageMeter,
    busy,
    idle,
    missing,
    recorded_threshold_pct,
    unjudged_fallback_pct,
)


def test_the_default_threshold_is_one_value_everywhere_it_is_given():
    from gpu_watch.callback import GPUWatch

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
