"""The numbers the README promises, pinned at and beside each boundary with literal values (never
the module's own constants, which would only check the operator), and the order of causes."""

from __future__ import annotations

import pytest

from gpu_watch import load_run
from gpu_watch.judging.causes import cause
from gpu_watch.judging.timeline import Timeline
from gpu_watch.judging.verdict import IDLE, OK, GPUStats, Setting, judge
from gpu_watch.sensing.nvml import NVML, Reading
from gpu_watch.testing import FakeGPU, FakeNVML
from gpu_watch.training.config import Config
from gpu_watch.training.monitor import Monitor

ON_GPU = Setting(compute_on_gpu=True, framework_gpus=1, nvml_gpus=1, visible_gpus=1,
                 cuda_build=True)
CPU_ONLY = Setting(framework_gpus=0, nvml_gpus=1, visible_gpus=1, cuda_build=True)
NO_DRIVER = "NVMLError_LibraryNotFound: NVML Shared Library Not Found"


def stats(gpu=0, **kw):
    """A GPU judged by the device's figures: NVML gave this process none of its own."""
    values = {"util_samples": 100, "util_mean": 85.0, "util_p95": 99.0, "device_idle_fraction": 0.0,
              "mem_peak_mib": 9000.0, "proc_mem_peak_mib": 8000.0, "proc_seen": True}
    values.update(kw)
    return GPUStats(gpu, **values)


def mine(gpu=0, **kw):
    """A GPU this process uses alone, judged by its own figures (the device's, unless given)."""
    values = {"util_samples": 100, "util_mean": 85.0, "device_idle_fraction": 0.0, "procs_max": 1}
    values.update(kw)
    values.setdefault("proc_util_samples", values["util_samples"])
    values.setdefault("proc_util_mean", values["util_mean"])
    values.setdefault("proc_idle_fraction", values["device_idle_fraction"])
    return stats(gpu, **values)


def codes(judgement):
    return [c.code for c in judgement.causes]


def timeline_after_step_0(gpus=(0,), threshold=10.0, patience_s=60.0):
    tl = Timeline(list(gpus), threshold, patience_s, 0.25)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 0.01, None)
    return tl


def feed(tl, utils, gpu=0, start_s=0.25, step_s=0.25):
    """One reading per value, `step_s` apart; returns the IdleEvents fired, by reading time."""
    fired = {}
    for i, util in enumerate(utils):
        t = start_s + i * step_s
        event = tl.add_readings([Reading(time_s=t, gpu=gpu, util_pct=util, mem_used_mib=100.0)])
        if event is not None:
            fired[t] = event
    return fired


# -- idle: "under the idle threshold (default 10 %) for more than half the readings" -------------


@pytest.mark.parametrize("judged_by", ["process", "device"])
@pytest.mark.parametrize(("idle_fraction", "verdict"),
                         [(0.0, OK), (0.49, OK), (0.5, OK), (0.51, IDLE), (0.7, IDLE), (1.0, IDLE)])
def test_idle_means_more_than_half_the_readings(idle_fraction, verdict, judged_by):
    if judged_by == "process":  # the device's figures say the opposite: they do not decide
        gpu = mine(proc_idle_fraction=idle_fraction, device_idle_fraction=1.0 - idle_fraction)
    else:
        gpu = stats(device_idle_fraction=idle_fraction)
    j = judge(ON_GPU, [gpu], None)
    assert (j.verdict, j.judged_by) == (verdict, {0: judged_by})


@pytest.mark.parametrize(("idle_readings", "verdict"), [(5, OK), (6, IDLE)])
def test_half_of_ten_readings_idle_is_ok_six_is_idle(idle_readings, verdict):
    tl = timeline_after_step_0()
    feed(tl, [0.0] * idle_readings + [90.0] * (10 - idle_readings))
    (span,) = tl.run_stats()
    assert span.device_idle_fraction == idle_readings / 10
    assert judge(ON_GPU, [span], None).verdict == verdict


def test_the_idle_threshold_itself_is_not_idle():
    tl = timeline_after_step_0(patience_s=0.5)
    assert feed(tl, [10.0] * 8) == {}  # exactly the threshold: busy enough
    (span,) = tl.run_stats()
    assert span.device_idle_fraction == 0.0
    tl = timeline_after_step_0(patience_s=0.5)
    assert feed(tl, [9.9] * 8) != {}
    assert tl.run_stats()[0].device_idle_fraction == 1.0


# -- idle patience: "seconds every watched GPU must stay idle" -----------------------------------


def test_idle_patience_fires_exactly_when_the_stretch_reaches_it():
    tl = timeline_after_step_0(patience_s=1.0)
    fired = feed(tl, [0.0] * 8)  # readings at 0.25, 0.5, ... 2.0 s
    assert list(fired) == [1.25]  # 1.25 - 0.25 == 1.0: reached, not exceeded
    (event,) = fired.values()
    assert (event.start_s, event.end_s) == (0.25, 1.25)


def test_idle_patience_one_reading_short_does_not_fire():
    tl = timeline_after_step_0(patience_s=1.0)
    assert feed(tl, [0.0] * 4) == {}  # 0.25 .. 1.0 s: 0.75 s idle
    assert feed(tl, [0.0], start_s=1.25) != {}


def test_zero_patience_fires_on_the_first_idle_reading():
    tl = timeline_after_step_0(patience_s=0.0)
    assert list(feed(tl, [50.0, 0.0])) == [0.5]


# -- input bound: waiting for data for more than 30 % of the loop's time --------------------------


@pytest.mark.parametrize(("wait_fraction", "expected"),
                         [(None, []), (0.0, []), (0.3, []), (0.31, ["input_bound"]),
                          (0.9, ["input_bound"])])
def test_input_bound_above_thirty_percent_of_the_time(wait_fraction, expected):
    j = judge(ON_GPU, [mine(device_idle_fraction=0.9, util_mean=2.0)], wait_fraction)
    assert j.verdict == IDLE and codes(j) == expected


def test_input_bound_is_never_a_cause_of_an_ok_run():
    assert codes(judge(ON_GPU, [mine()], 0.9)) == []


def test_input_bound_comes_first():
    busy = stats(0)
    idle = stats(1, device_idle_fraction=1.0, util_mean=0.0, proc_seen=False, others_seen=True)
    j = judge(ON_GPU, [busy, idle], 0.5)
    assert codes(j) == ["input_bound", "process_not_attributable", "process_not_on_gpu"]
    assert j.causes[0].evidence == {"wait_fraction": 0.5}
    assert "50%" in j.causes[0].message and "GPU 1" in j.causes[0].message
    assert j.causes[2].evidence == {"idle_gpus": [1], "busy_gpus": [0]}


# -- slow callbacks: time between steps spent elsewhere for more than 30 % of the loop ------------


@pytest.mark.parametrize(("other_fraction", "expected"),
                         [(None, []), (0.0, []), (0.3, []), (0.31, ["slow_callbacks"]),
                          (0.9, ["slow_callbacks"])])
def test_slow_callbacks_above_thirty_percent_of_the_time(other_fraction, expected):
    j = judge(ON_GPU, [mine(device_idle_fraction=0.9, util_mean=2.0)], 0.0, other_fraction)
    assert j.verdict == IDLE and codes(j) == expected


def test_slow_callbacks_is_never_a_cause_of_an_ok_run():
    assert codes(judge(ON_GPU, [mine()], 0.0, 0.9, [("SlowLogger", 3.0)])) == []


def test_slow_callbacks_names_the_slowest_three_callbacks_that_took_time():
    hooks = [("SlowLogger", 3.0), ("ProgbarLogger", 0.5), ("Meter", 0.25), ("Fourth", 0.125),
             ("Silent", 0.0)]
    j = judge(ON_GPU, [mine(device_idle_fraction=0.9, util_mean=2.0)], 0.1, 0.6, hooks)
    (found,) = j.causes
    assert found.code == "slow_callbacks"
    assert found.evidence == {"other_fraction": 0.6, "callbacks": [
        {"name": "SlowLogger", "hook_s": 3.0}, {"name": "ProgbarLogger", "hook_s": 0.5},
        {"name": "Meter", "hook_s": 0.25}]}
    assert "60%" in found.message and "most in SlowLogger, ProgbarLogger, Meter" in found.message
    assert "SlowLogger, ProgbarLogger, Meter" in found.remedy
    silent = judge(ON_GPU, [mine(device_idle_fraction=0.9, util_mean=2.0)], 0.1, 0.6,
                   [("Silent", 0.0)])
    assert silent.causes[0].evidence["callbacks"] == []
    assert "no callback's batch hooks were timed" in silent.causes[0].message


def test_slow_callbacks_explains_no_gpu_idle_beside_one_the_loop_kept_busy():
    busy = stats(0)
    idle = stats(1, device_idle_fraction=1.0, util_mean=0.0)
    j = judge(ON_GPU, [busy, idle], 0.0, 0.9, [("SlowLogger", 3.0)])
    assert "slow_callbacks" not in codes(j) and "process_not_on_gpu" in codes(j)


def test_a_loop_both_waiting_and_slow_between_steps_gets_both_causes_data_first():
    j = judge(ON_GPU, [mine(device_idle_fraction=0.9, util_mean=2.0)], 0.4, 0.4)
    assert codes(j) == ["input_bound", "slow_callbacks"]


# -- busy with another process: 20 % ----------------------------------------------------------


@pytest.mark.parametrize(("util_mean", "fires"),
                         [(19.9, False), (20.0, True), (20.1, True), (95.0, True)])
def test_busy_with_another_process_from_twenty_percent(util_mean, fires):
    other = stats(util_mean=util_mean, proc_seen=False, others_seen=True, proc_mem_peak_mib=0.0)
    j = judge(CPU_ONLY, [other], None)
    assert ("process_not_on_gpu" in codes(j)) is fires
    if fires:
        assert j.causes[-1].evidence == {"gpu": 0, "util_mean": round(util_mean, 1)}
        assert f"{util_mean:.0f}% busy" in j.causes[-1].message


@pytest.mark.parametrize(("proc_seen", "others_seen"), [(True, True), (False, False)])
def test_busy_without_another_process_or_with_ours_is_not_someone_else_s(proc_seen, others_seen):
    gpu = stats(util_mean=95.0, proc_seen=proc_seen, others_seen=others_seen)
    assert "process_not_on_gpu" not in codes(judge(CPU_ONLY, [gpu], None))


# -- the p95 of utilization in epochs.csv --------------------------------------------------------


def test_p95_is_the_nearest_rank_95th_percentile_of_spread_readings():
    tl = timeline_after_step_0()
    feed(tl, [float(u) for u in range(100)])  # 0, 1, ... 99 %: the median is 49.5
    (span,) = tl.run_stats()
    assert span.util_p95 == 94.0  # 95 of the 100 readings are at or under 94 %
    assert span.util_mean == pytest.approx(49.5)
    tl = timeline_after_step_0()
    feed(tl, [0.0] * 18 + [100.0] * 2)  # 90 % of readings at 0: the p95 is the top
    assert tl.run_stats()[0].util_p95 == 100.0
    tl = timeline_after_step_0()
    feed(tl, [0.0] * 19 + [100.0])  # 95 % at 0
    assert tl.run_stats()[0].util_p95 == 0.0


def test_epochs_csv_carries_each_epoch_s_own_figures(tmp_path):
    monitor = Monitor(Config(log_dir=str(tmp_path), plot=False, interval_s=60.0),
                      NVML(FakeNVML([FakeGPU(), FakeGPU()])), "tensorflow", (0, 1),
                      {"name": "tensorflow", "gpus": ["GPU:0", "GPU:1"], "cuda_build": True},
                      None)
    monitor.sampler.stop()  # readings come from the test, not the clock
    tl = monitor.timeline
    monitor.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 0.01, None)
    monitor.first_step({"compute_on_gpu": True})
    gpu0 = [float(u) for u in range(100)]
    gpu1 = [0.0] * 50 + [60.0] * 50
    for i, (a, b) in enumerate(zip(gpu0, gpu1, strict=True)):
        t = 0.02 + i * 0.01
        tl.add_readings([Reading(time_s=t, gpu=0, util_pct=a, mem_used_mib=1000.0 + i),
                         Reading(time_s=t, gpu=1, util_pct=b, mem_used_mib=500.0)])
    monitor.end_epoch(0, {"loss": 0.5})
    monitor.begin_epoch(1)
    for i in range(10):
        t = 2.0 + i * 0.01
        tl.add_readings([Reading(time_s=t, gpu=0, util_pct=90.0, mem_used_mib=800.0),
                         Reading(time_s=t, gpu=1, util_pct=5.0, mem_used_mib=800.0)])
    monitor.end_epoch(1, {"loss": 0.25})
    monitor.finish("completed")
    epochs = load_run(monitor.run_dir).epochs
    first, second = epochs.iloc[0], epochs.iloc[1]
    assert first["gpu_util_p95"] == 94.0  # the larger of the GPUs' p95s (94 and 60)
    assert first["gpu0_util_mean"] == pytest.approx(49.5)
    assert first["gpu1_util_mean"] == pytest.approx(30.0)
    assert first["gpu_util_mean"] == pytest.approx((49.5 + 30.0) / 2)
    assert first["idle_fraction"] == pytest.approx((0.10 + 0.50) / 2)
    assert first["gpu_mem_peak_mib"] == 1099.0
    assert (first["verdict"], first["gpu0_verdict"], first["gpu1_verdict"]) == ("ok", "ok", "ok")
    assert second["gpu_util_p95"] == 90.0 and second["gpu_mem_peak_mib"] == 800.0
    assert second["idle_fraction"] == pytest.approx(0.5)
    assert (second["verdict"], second["gpu1_verdict"]) == ("idle", "idle")
    assert second["loss"] == 0.25


# -- the most specific explanation of a CPU fall-back comes first ----------------------------------


def finding(code):
    return cause(code, f"the doctor found {code}", source="doctor")


def test_no_driver_first_then_the_other_error_findings_in_their_order():
    setting = Setting(framework_gpus=0, nvml_error=NO_DRIVER, cuda_build=True, environment=(
        finding("cuda_libs_missing"), finding("gpu_memory_contention"),
        finding("no_nvidia_driver"), finding("cpu_only_build")))
    j = judge(setting, [], None)
    assert codes(j) == ["no_nvidia_driver", "cuda_libs_missing", "cpu_only_build"]
    assert j.causes[0].message == "the doctor found no_nvidia_driver"  # the doctor's, not a copy


def test_a_driver_error_without_the_doctor_s_finding_is_explained_all_the_same():
    setting = Setting(framework_gpus=0, nvml_error="NVMLError_DriverNotLoaded: Driver Not Loaded",
                      environment=(finding("cpu_only_build"),))
    j = judge(setting, [], None)
    assert codes(j) == ["no_nvidia_driver", "cpu_only_build"]
    assert "NVMLError_DriverNotLoaded" in j.causes[0].message


def test_hidden_gpus_first():
    setting = Setting(framework_gpus=0, nvml_gpus=2, visible_gpus=0, cuda_visible_devices="",
                      environment=(finding("driver_too_old"), finding("gpus_hidden")))
    assert codes(judge(setting, [], None)) == ["gpus_hidden", "driver_too_old"]


def test_forced_placement_first():
    setting = Setting(compute_on_gpu=False, framework_gpus=1, nvml_gpus=1, visible_gpus=1,
                      environment=(finding("cuda_libs_missing"),))
    assert codes(judge(setting, [], None)) == ["forced_cpu_placement", "cuda_libs_missing"]


def test_cpu_only_build_first():
    setting = Setting(framework_gpus=0, nvml_gpus=1, visible_gpus=1, cuda_build=False,
                      environment=(finding("driver_too_old"), finding("cpu_only_build")))
    j = judge(setting, [], None)
    assert codes(j) == ["cpu_only_build", "driver_too_old"]
    assert j.causes[0].message == "the doctor found cpu_only_build"


def test_an_old_driver_explains_missing_libraries_before_anything_else():
    setting = Setting(framework_gpus=0, nvml_gpus=1, visible_gpus=1, cuda_build=True,
                      environment=(finding("cuda_libs_missing"), finding("gpus_hidden"),
                                   finding("driver_too_old")))
    assert codes(judge(setting, [], None)) == ["driver_too_old", "cuda_libs_missing",
                                               "gpus_hidden"]


def test_another_process_s_load_comes_after_every_finding():
    other = stats(util_mean=95.0, proc_seen=False, others_seen=True, proc_mem_peak_mib=0.0)
    setting = Setting(framework_gpus=0, nvml_gpus=1, visible_gpus=1, cuda_build=True,
                      environment=(finding("gpus_hidden"),))
    assert codes(judge(setting, [other], None)) == ["cuda_libs_missing", "gpus_hidden",
                                                    "process_not_on_gpu"]


def test_no_fallback_cause_at_all_when_nothing_explains_it():
    assert codes(judge(Setting(framework_gpus=0), [], None)) == []
