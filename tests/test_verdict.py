"""Every verdict and cause from synthetic inputs, edges included."""

from __future__ import annotations

import dataclasses

import pytest

from gpu_watch.judging.causes import CATALOGUE, cause
from gpu_watch.judging.verdict import (
    BUSY_UTIL_PCT,
    BY_DEVICE,
    CPU_FALLBACK,
    IDLE,
    IDLE_FRACTION_LIMIT,
    INPUT_BOUND_WAIT_FRACTION,
    OK,
    UNMEASURED,
    UNMONITORED,
    GPUStats,
    OtherUse,
    Setting,
    judge,
)

ON_GPU = Setting(compute_on_gpu=True, framework_gpus=1, nvml_gpus=1, visible_gpus=1,
                 cuda_build=True)
NO_DRIVER = "NVMLError_LibraryNotFound: NVML Shared Library Not Found"


def busy(gpu=0, **kw):
    """A GPU this process uses alone: its own figures are the device's unless given."""
    values = {"util_samples": 50, "util_mean": 85.0, "util_p95": 99.0, "device_idle_fraction": 0.05,
              "mem_peak_mib": 9000.0, "proc_mem_peak_mib": 8000.0, "proc_seen": True,
              "procs_max": 1}
    values.update(kw)
    values.setdefault("proc_util_samples", values["util_samples"])
    values.setdefault("proc_util_mean", values["util_mean"])
    values.setdefault("proc_idle_fraction", values["device_idle_fraction"])
    return GPUStats(gpu, **values)


def codes(judgement):
    return [c.code for c in judgement.causes]


def test_ok_when_the_gpu_is_busy():
    j = judge(ON_GPU, [busy()], wait_fraction=0.01)
    assert (j.verdict, j.causes, j.gpu_verdicts) == (OK, [], {0: OK})


def test_a_span_without_a_reading_of_any_gpu_is_unmeasured_and_says_so_for_each():
    j = judge(ON_GPU, [GPUStats(0, readings=0), GPUStats(3, readings=0)], None)
    assert j.verdict == UNMEASURED
    assert j.gpu_verdicts == {0: UNMEASURED, 3: UNMEASURED}
    assert j.judged_by == {0: BY_DEVICE, 3: BY_DEVICE}


def test_idle_when_more_than_the_limit_of_readings_are_idle():
    j = judge(ON_GPU, [busy(device_idle_fraction=0.9, util_mean=3.0)], wait_fraction=0.0)
    assert j.verdict == IDLE and j.gpu_verdicts == {0: IDLE}


def test_idle_fraction_exactly_at_the_limit_is_not_idle():
    assert judge(ON_GPU, [busy(device_idle_fraction=IDLE_FRACTION_LIMIT)], None).verdict == OK
    above = busy(device_idle_fraction=IDLE_FRACTION_LIMIT + 0.01)
    assert judge(ON_GPU, [above], None).verdict == IDLE


def test_no_utilization_readings_is_unmonitored_not_idle():
    j = judge(ON_GPU, [busy(util_samples=0, util_mean=None, util_p95=None,
                            device_idle_fraction=None)], None)
    assert j.verdict == UNMONITORED


def test_nvml_unavailable_while_the_framework_uses_a_gpu_is_unmonitored():
    setting = Setting(compute_on_gpu=True, framework_gpus=1, nvml_error=NO_DRIVER)
    j = judge(setting, [], None)
    assert j.verdict == UNMONITORED


def test_a_lost_gpu_is_unmonitored():
    j = judge(ON_GPU, [busy(lost=True)], None)
    assert j.verdict == UNMONITORED and j.gpu_verdicts == {0: UNMONITORED}


def test_input_bound_explains_idle_above_the_wait_limit_only():
    idle = [busy(device_idle_fraction=0.8, util_mean=5.0)]
    j = judge(ON_GPU, idle, wait_fraction=INPUT_BOUND_WAIT_FRACTION + 0.2)
    assert j.verdict == IDLE and codes(j) == ["input_bound"]
    assert j.causes[0].evidence["wait_fraction"] == pytest.approx(0.5)
    assert "50%" in j.causes[0].message
    assert codes(judge(ON_GPU, idle, wait_fraction=INPUT_BOUND_WAIT_FRACTION)) == []


def test_slow_callbacks_says_where_the_time_between_steps_went_rounded_to_milliseconds():
    idle = [busy(device_idle_fraction=0.9, util_mean=2.0)]
    j = judge(ON_GPU, idle, 0.1, 0.612345, [("SlowLogger", 1.23456), ("Silent", 0.0)])
    (found,) = j.causes
    assert found.message == (
        "The training loop spent 61% of its time after step 0 between steps, in callbacks and "
        "Keras' bookkeeping: most in SlowLogger, leaving GPU 0 idle.")
    assert found.evidence == {"other_fraction": 0.612,
                              "callbacks": [{"name": "SlowLogger", "hook_s": 1.235}]}
    (untimed,) = judge(ON_GPU, idle, 0.1, 0.6).causes
    assert untimed.message == (
        "The training loop spent 60% of its time after step 0 between steps, in callbacks and "
        "Keras' bookkeeping (no callback's batch hooks were timed), leaving GPU 0 idle.")


def test_one_idle_gpu_among_busy_ones_is_named():
    j = judge(ON_GPU, [busy(0), busy(1, device_idle_fraction=1.0, util_mean=0.0)], None)
    assert j.verdict == IDLE
    assert j.gpu_verdicts == {0: OK, 1: IDLE}
    (c,) = j.causes
    assert c.evidence == {"idle_gpus": [1], "busy_gpus": [0]}
    assert "GPU 1" in c.message


def test_cpu_fallback_without_driver_names_no_nvidia_driver():
    setting = Setting(compute_on_gpu=False, framework_gpus=0, nvml_error=NO_DRIVER,
                      cuda_build=True)
    j = judge(setting, [], None)
    assert j.verdict == CPU_FALLBACK and codes(j) == ["no_nvidia_driver"]
    assert j.causes[0].evidence["nvml_error"] == NO_DRIVER


def test_driver_not_loaded_is_also_no_driver():
    setting = Setting(framework_gpus=0, nvml_error="NVMLError_DriverNotLoaded: Driver Not Loaded")
    assert codes(judge(setting, [], None)) == ["no_nvidia_driver"]


@pytest.mark.parametrize("visible", ["", "-1"])
def test_cpu_fallback_with_hidden_gpus(visible):
    setting = Setting(framework_gpus=0, nvml_gpus=2, visible_gpus=0, cuda_visible_devices=visible,
                      cuda_build=True)
    j = judge(setting, [], None)
    assert j.verdict == CPU_FALLBACK and codes(j) == ["gpus_hidden"]
    assert j.causes[0].evidence == {"cuda_visible_devices": visible, "nvml_gpus": 2}


def test_forced_cpu_placement_when_the_framework_sees_a_gpu_but_step0_ran_on_cpu():
    setting = Setting(compute_on_gpu=False, framework_gpus=1, nvml_gpus=1, visible_gpus=1,
                      cuda_build=True, cpu_compute_examples=("MatMul", "Relu"))
    j = judge(setting, [busy(util_mean=0.0, proc_seen=False)], None)
    assert j.verdict == CPU_FALLBACK and codes(j) == ["forced_cpu_placement"]
    assert "MatMul" in j.causes[0].message


def test_cpu_only_build():
    setting = Setting(framework_gpus=0, nvml_gpus=1, visible_gpus=1, cuda_build=False)
    assert codes(judge(setting, [], None)) == ["cpu_only_build"]


def test_cuda_build_that_sees_no_gpu_while_nvml_does_is_missing_libraries():
    setting = Setting(framework_gpus=0, nvml_gpus=1, visible_gpus=1, cuda_build=True)
    j = judge(setting, [busy(util_mean=0.0, proc_seen=False)], None)
    assert j.verdict == CPU_FALLBACK and codes(j) == ["cuda_libs_missing"]


def test_environment_findings_explain_the_fallback_first():
    too_old = cause("driver_too_old", "driver CUDA 11.8 < build CUDA 12.5", driver="11.8")
    setting = Setting(framework_gpus=0, nvml_gpus=1, visible_gpus=1, cuda_build=True,
                      environment=(too_old,))
    j = judge(setting, [], None)
    assert codes(j) == ["driver_too_old"]
    assert j.causes[0].evidence == {"driver": "11.8"}


def test_a_gpu_busy_with_another_process_is_never_ok_for_us():
    setting = Setting(framework_gpus=0, nvml_gpus=1, visible_gpus=1, cuda_build=True)
    other = busy(util_mean=95.0, proc_seen=False, others_seen=True, proc_mem_peak_mib=0.0)
    j = judge(setting, [other], None)
    assert j.verdict == CPU_FALLBACK
    assert codes(j) == ["cuda_libs_missing", "process_not_on_gpu"]
    below = busy(util_mean=BUSY_UTIL_PCT - 1, proc_seen=False, others_seen=True)
    assert "process_not_on_gpu" not in codes(judge(setting, [below], None))


def test_unknown_placement_falls_back_to_the_framework_gpu_count():
    assert judge(Setting(compute_on_gpu=None, framework_gpus=0), [], None).verdict == CPU_FALLBACK
    assert judge(Setting(compute_on_gpu=None, framework_gpus=1, nvml_gpus=1, visible_gpus=1),
                 [busy()], None).verdict == OK


def test_process_not_attributable_when_our_pid_never_appears():
    alone = busy(proc_seen=False, others_seen=True, proc_util_samples=0)  # its host PID
    j = judge(ON_GPU, [alone], None)
    assert j.verdict == OK and codes(j) == ["process_not_attributable"]
    assert j.causes[0].evidence == {"gpus": [0], "pid_not_listed": [0],
                                    "process_list_unreadable": [], "no_process_utilization": [],
                                    "no_sample_yet": []}
    assert "PID namespace" in j.causes[0].message and "--pid=host" in j.causes[0].remedy


def test_every_cause_in_the_catalogue_has_a_message_and_remedy():
    for code, spec in CATALOGUE.items():
        c = cause(code)
        assert c.message and c.remedy and c.group == spec.group, code
    with pytest.raises(ValueError, match="'no_such_code'"):
        cause("no_such_code")


# -- a GPU shared with other processes ----------------------------------------------------------

OTHER_PID = 4242


def beside_others(**kw):
    """GPU 0, where NVML listed this process and another one."""
    values = {"util_samples": 40, "util_mean": 95.0, "util_p95": 99.0, "device_idle_fraction": 0.0,
              "proc_seen": True, "others_seen": True, "procs_max": 2}
    return GPUStats(0, **{**values, **kw})


def test_processes_that_only_hold_memory_are_not_named():
    idle_others = (OtherUse(1, "notebook", 0.0, 9000.0), OtherUse(2, "notebook", 0.0, 500.0))
    mine = beside_others(proc_util_samples=40, proc_util_mean=90.0, proc_idle_fraction=0.0,
                         others=idle_others, others_util_mean=0.0, others_busy_fraction=0.0)
    assert judge(ON_GPU, [mine], None).causes == []
    busy = (*idle_others, OtherUse(3, "job", 0.5, 100.0))
    [shared] = judge(ON_GPU, [dataclasses.replace(mine, others=busy)], None).causes
    assert shared.code == "gpu_shared" and [p["pid"] for p in shared.evidence["processes"]] == [
        3, 1, 2]


def test_more_than_three_others_are_counted_in_the_message_and_all_kept_as_evidence():
    others = tuple(OtherUse(10 + i, f"p{i}", 10.0 + i, 100.0) for i in range(5))
    gpu = beside_others(proc_util_samples=40, proc_util_mean=50.0, proc_idle_fraction=0.0,
                        others=others, procs_max=6)
    j = judge(ON_GPU, [gpu], None)
    [shared] = j.causes
    assert "PID 14 (p4) [14% SM, 100 MiB]" in shared.message and "and 2 more" in shared.message
    assert len(shared.evidence["processes"]) == 5
    assert "your steps may have run slower" in shared.message  # overlap not measured


def test_gpm_causes_are_not_given_for_a_gpu_other_processes_worked_on():
    # GPM measures the whole GPU: beside another process, its SM figures are not this training's.
    alone = beside_others(proc_util_samples=40, proc_util_mean=90.0, proc_idle_fraction=0.0,
                          others_seen=False, procs_max=1, sm_active_mean=5.0)
    assert [c.code for c in judge(ON_GPU, [alone], None).causes] == ["low_sm_activity"]
    beside = dataclasses.replace(alone, others_seen=True, procs_max=2,
                                 others=(OtherUse(OTHER_PID, "job", 40.0, 100.0),))
    assert [c.code for c in judge(ON_GPU, [beside], None).causes] == ["gpu_shared"]


def test_an_unreadable_process_list_falls_back_to_the_device_and_says_why():
    j = judge(ON_GPU, [beside_others(proc_seen=False, others_seen=False, procs_max=None)], None)
    assert j.verdict == OK and [c.code for c in j.causes] == ["process_not_attributable"]
    assert j.causes[0].evidence["process_list_unreadable"] == [0]
    assert "could not list the processes" in j.causes[0].message
