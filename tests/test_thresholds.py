"""The rules behind the statistics' properties and the module-level thresholds, pinned with
literal values at and beside each boundary (never the module's own constants, which would only
check the operator), so that `make mutate` kills a changed rule or a changed number."""

from __future__ import annotations

import pynvml
import pytest

from gpu_watch.judging.causes import RunFacts
from gpu_watch.judging.timeline import Timeline
from gpu_watch.judging.usage import SpanStats
from gpu_watch.judging.verdict import (
    BY_DEVICE,
    BY_PROCESS,
    OK,
    UNMONITORED,
    GPUStats,
    OtherUse,
    Setting,
    gpu_verdict,
    judge,
    judged_util_mean,
)
from gpu_watch.sensing import nvml as nvml_module
from gpu_watch.sensing.nvml import NVML, OtherProcess, Reading
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

ON_GPU = Setting(compute_on_gpu=True, framework_gpus=1, nvml_gpus=1, visible_gpus=1,
                 cuda_build=True)


def device_judged(**kw):
    """A busy GPU judged by the device's figures (NVML gave this process none of its own)."""
    values = {"util_samples": 100, "util_mean": 85.0, "device_idle_fraction": 0.0,
              "proc_seen": True}
    values.update(kw)
    return GPUStats(0, **values)


def codes(judgement):
    return [c.code for c in judgement.causes]


# -- GPUStats.judged_by and judged_idle_fraction ------------------------------------------------


def test_this_process_s_own_figures_decide_from_one_reading():
    own = GPUStats(0, util_samples=10, device_idle_fraction=0.1, proc_util_samples=1,
                   proc_idle_fraction=0.9)
    assert (own.judged_by, own.judged_idle_fraction) == (BY_PROCESS, 0.9)
    device = GPUStats(0, util_samples=10, device_idle_fraction=0.1, proc_util_samples=0,
                      proc_idle_fraction=None)
    assert (device.judged_by, device.judged_idle_fraction) == (BY_DEVICE, 0.1)


# -- GPUStats.shared ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "shared"), [
    # NVML knows this process's PID here: any other listed process shares the GPU.
    ({"proc_seen": True}, False),
    ({"proc_seen": True, "others_seen": True}, True),
    ({"proc_seen": True, "others": (OtherUse(7),)}, True),
    ({"proc_seen": True, "procs_max": 2}, False),  # the count alone cannot tell ours apart
    ({"proc_util_samples": 5, "others_seen": True}, True),  # measured here: known here
    ({"proc_util_samples": 5, "procs_max": 3}, False),
    # Where this PID is unknown, any listed PID may be ours: two at once are needed.
    ({"procs_max": None}, False),
    ({"procs_max": 1}, False),
    ({"procs_max": 1, "others_seen": True}, False),
    ({"procs_max": 2}, True),
])
def test_shared_needs_another_process_beside_a_known_pid_or_two_listed_at_once(kw, shared):
    assert GPUStats(0, **kw).shared is shared


# -- GPUStats.others_worked ----------------------------------------------------------------------


@pytest.mark.parametrize(("others", "worked"), [
    ((OtherUse(7, util_mean_pct=0.0),), False),  # memory held, no kernels: measured at 0 %
    ((OtherUse(7, util_mean_pct=0.0), OtherUse(8, util_mean_pct=0.0)), False),
    ((OtherUse(7, util_mean_pct=0.0), OtherUse(8, util_mean_pct=0.5)), True),
    ((OtherUse(7, util_mean_pct=None),), True),  # not measured: may have worked
    ((), True),  # a run recorded without per-process details: only that it was shared
])
def test_others_worked_unless_all_were_measured_running_none(others, worked):
    stats = GPUStats(0, proc_seen=True, others_seen=True, others=others)
    assert stats.shared and stats.others_worked is worked


def test_others_did_not_work_on_a_gpu_nobody_else_was_on():
    alone = GPUStats(0, proc_seen=True, others=())
    assert not alone.shared and alone.others_worked is False


def test_a_device_judged_gpu_beside_a_process_holding_memory_is_unmonitored():
    # The device's 85 % may be anyone's; the other process ran no kernels, so it is not named
    # as a shared GPU, but this training's own use is still unknown.
    gpu = device_judged(others_seen=True,
                        others=(OtherUse(7, util_mean_pct=0.0, mem_peak_mib=500.0),))
    assert gpu_verdict(gpu, None) == UNMONITORED
    j = judge(ON_GPU, [gpu], None)
    assert j.verdict == UNMONITORED and "gpu_shared" not in codes(j)


def test_a_device_judged_gpu_used_alone_is_ok():
    assert gpu_verdict(device_judged(procs_max=1), None) == OK


def test_own_figures_without_a_device_figure_decide_the_run():
    tl = Timeline([0], 10.0, 60.0, 0.25)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 0.01, None)
    for i in range(8):
        tl.add_readings([Reading(time_s=0.25 * (i + 1), gpu=0, proc_util_pct=90.0,
                                 proc_listed=True, procs=1)])
    (run,) = tl.run_stats()
    assert (run.proc_util_samples, run.proc_util_mean, run.util_samples) == (8, 90.0, 0)
    j = judge(ON_GPU, [run], None)
    assert (j.verdict, j.judged_by) == (OK, {0: BY_PROCESS})


# -- RunFacts.cpu_scope and data_source ----------------------------------------------------------


@pytest.mark.parametrize(("scope", "cpu"), [
    (None, False), ("", False), ("gpu:0", False), ("cpu:0", True), ("/device:CPU:0", True),
])
def test_a_cpu_scope_is_one_that_names_the_cpu(scope, cpu):
    assert RunFacts(device_scope=scope).cpu_scope is cpu


def test_the_data_source_is_unknown_unless_recorded():
    assert RunFacts().data_source == "unknown"
    assert RunFacts(data={"source": "grain"}).data_source == "grain"


# -- GPM thresholds: SM activity, tensor cores, float32 math -------------------------------------


def gpm(**kw):
    values = {"util_samples": 50, "util_mean": 100.0, "device_idle_fraction": 0.0,
              "proc_seen": True, "procs_max": 1, "proc_util_samples": 50, "proc_util_mean": 100.0,
              "proc_idle_fraction": 0.0}
    values.update(kw)
    return GPUStats(0, **values)


@pytest.mark.parametrize(("util", "sm", "fires"), [
    (100.0, 49.9, True), (100.0, 50.0, False), (100.0, 50.1, False),  # under 50 %
    (60.0, 29.9, True), (60.0, 30.0, True), (60.0, 30.1, False),  # at most half of util
])
def test_low_sm_activity_under_fifty_percent_and_at_most_half_of_utilization(util, sm, fires):
    j = judge(ON_GPU, [gpm(util_mean=util, sm_active_mean=sm)], 0.0)
    assert j.verdict == OK and ("low_sm_activity" in codes(j)) is fires


@pytest.mark.parametrize(("tensor", "fp32", "fp16", "fires"), [
    (0.99, 35.0, 0.0, True), (1.0, 35.0, 0.0, False), (1.01, 35.0, 0.0, False),  # under 1 %
    (0.2, 0.99, 0.0, False), (0.2, 1.0, 0.0, True), (0.2, 1.01, 0.0, True),  # fp32 at least 1 %
    (0.2, 20.0, 20.0, False), (0.2, 20.0, 19.9, True),  # more float32 than float16 math
])
def test_tensor_cores_unused_under_one_percent_with_float32_math(tensor, fp32, fp16, fires):
    stats = gpm(sm_active_mean=80.0, tensor_active_mean=tensor, fp32_active_mean=fp32,
                fp16_active_mean=fp16)
    j = judge(ON_GPU, [stats], 0.0)
    assert j.verdict == OK and ("tensor_cores_unused" in codes(j)) is fires


# -- NVML: the quiet period, GPM's minimum gap, the ids NVML defines ----------------------------


def test_a_listed_process_reads_zero_after_two_seconds_without_a_sample(clock):
    gpu = FakeGPU(processes=[FakeProcess(used_mib=500, sm_util_pct=0)])
    nvml = NVML(FakeNVML([gpu], clock=clock))
    (device,) = nvml.devices()
    assert nvml.read(device, 0.0).proc_util_pct is None
    clock.advance(1.9)
    assert nvml.read(device, clock.now).proc_util_pct is None  # 1.9 s: not yet
    clock.advance(0.1)
    assert nvml.read(device, clock.now).proc_util_pct == 0.0  # 2.0 s: a measured 0 %


def test_gpm_samples_need_a_tenth_of_a_second_between_them(clock):
    fake = FakeNVML([FakeGPU(name="NVIDIA H100 80GB HBM3")], clock=clock)
    nvml = NVML(fake)
    nvml.gpm_interval_s = 0.01  # asks for more often than NVML allows
    (device,) = nvml.devices()
    nvml.read(device, 0.0)
    assert nvml.read(device, 0.095).sm_active_pct is None  # 95 ms: too soon, kept for later
    assert fake.calls[("nvmlGpmSampleGet", "MainThread")] == 1
    assert nvml.read(device, 0.1).sm_active_pct is not None  # 100 ms: enough
    assert fake.calls[("nvmlGpmSampleGet", "MainThread")] == 2


def test_gpm_is_sampled_once_a_second_by_default():
    assert NVML(FakeNVML([])).gpm_interval_s == 1.0


def test_the_nvml_ids_are_those_of_nvml_h():
    # Spelled out in gpu_watch.sensing.nvml so a stand-in library need not define them; the bindings
    # carry nvml.h's values.
    ours = (nvml_module._TEMPERATURE_GPU, nvml_module._CLOCK_SM,
            nvml_module._CLOCK_EVENT_GPU_IDLE, nvml_module.GPM_METRICS_GET_VERSION)
    assert ours == (pynvml.NVML_TEMPERATURE_GPU, pynvml.NVML_CLOCK_SM,
                    pynvml.nvmlClocksEventReasonGpuIdle, pynvml.NVML_GPM_METRICS_GET_VERSION)
    assert nvml_module.GPM_METRICS == {
        "sm_active_pct": pynvml.NVML_GPM_METRIC_SM_UTIL,
        "sm_occupancy_pct": pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
        "tensor_active_pct": pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
        "dram_bw_pct": pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
        "fp32_active_pct": pynvml.NVML_GPM_METRIC_FP32_UTIL,
        "fp16_active_pct": pynvml.NVML_GPM_METRIC_FP16_UTIL,
        "pcie_tx_mib_s": pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC,
        "pcie_rx_mib_s": pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC,
    }


def test_another_process_s_name_is_cut_to_120_characters():
    names = {2001: "n" * 120, 2002: "n" * 121, 2003: "n" * 400}
    gpu = FakeGPU(processes=[FakeProcess(pid=pid, name=name) for pid, name in names.items()])
    nvml = NVML(FakeNVML([gpu]))
    assert nvml.process_name(2001) == "n" * 120  # at the limit: whole
    assert nvml.process_name(2002) == "n" * 117 + "..."  # one over: cut to 120 with "..."
    assert nvml.process_name(2003) == "n" * 117 + "..."


def test_at_most_200_faults_are_kept():
    fake = FakeNVML([FakeGPU()])

    def failing():
        raise pynvml.NVMLError_Unknown()

    fake.nvmlDeviceGetCount = failing
    nvml = NVML(fake)
    for k in range(199):
        nvml.query(f"metric{k}", None, "nvmlDeviceGetCount")
    assert len(nvml.faults) == 199
    nvml.query("metric199", None, "nvmlDeviceGetCount")
    assert len(nvml.faults) == 200
    nvml.query("metric200", None, "nvmlDeviceGetCount")
    assert len(nvml.faults) == 200 and nvml.faults[-1].metric == "metric199"


def test_at_most_32_other_processes_are_tracked_per_gpu_and_span():
    span = SpanStats()
    first = tuple(OtherProcess(pid, f"p{pid}", used_mib=1.0, sm_util_pct=10.0)
                  for pid in range(100, 133))
    span.add(Reading(0.25, 0, procs=34, others=first), 10.0)
    assert [o.pid for o in span.stats(0).others] == list(range(100, 132))  # 32 of the 33
    # One more is still left out, and a process already tracked, listed after it, counted.
    span.add(Reading(0.5, 0, procs=3, others=(
        OtherProcess(133, "late", used_mib=2.0, sm_util_pct=50.0),
        OtherProcess(131, None, used_mib=4.0, sm_util_pct=30.0))), 10.0)
    others = span.stats(0).others
    assert len(others) == 32
    assert others[-1] == OtherUse(131, "p131", 20.0, 4.0)


# -- the records' defaults -----------------------------------------------------------------------


def test_a_gpu_without_readings_is_unmonitored_by_default():
    assert gpu_verdict(GPUStats(0, proc_seen=True), None) == UNMONITORED


def test_a_setting_without_gpu_counts_explains_no_fallback_and_hides_nothing():
    # NVML's and the visible counts default to 0: no GPU NVML saw can have been hidden.
    assert codes(judge(Setting(compute_on_gpu=False), [], None)) == []
    # With NVML's count given and no visible one, every GPU it saw was hidden.
    hidden = judge(Setting(compute_on_gpu=False, nvml_gpus=2), [], None)
    assert codes(hidden) == ["gpus_hidden"]


def test_switched_off_lists_session_metrics_then_each_gpu_s_then_the_lost_gpus():
    disabled = {("power", 1), ("gpm", 0), ("processes", None), ("energy", 1), ("util", 0)}
    assert nvml_module._switched_off(disabled, {3, 2}) == [
        {"metric": "processes", "gpu": None},
        {"metric": "gpm", "gpu": 0}, {"metric": "util", "gpu": 0},
        {"metric": "energy", "gpu": 1}, {"metric": "power", "gpu": 1},
        {"metric": "*", "gpu": 2, "lost": True}, {"metric": "*", "gpu": 3, "lost": True},
    ]


def test_switched_off_orders_one_gpu_s_metrics_by_name_whatever_order_they_came_in():
    came_in = [("util", 0), ("processes", 0), ("power", 0), ("gpm", 0), ("energy", 0)]
    assert [entry["metric"] for entry in nvml_module._switched_off(came_in, set())] == [
        "energy", "gpm", "power", "processes", "util"]


def test_this_training_s_mean_is_unknown_on_a_shared_gpu_it_has_no_figure_of_its_own_on():
    own = GPUStats(0, util_samples=4, util_mean=100.0, proc_util_samples=2, proc_util_mean=3.0,
                   procs_max=2, others_seen=True, proc_seen=True)
    assert judged_util_mean(own) == 3.0
    shared_device = GPUStats(0, util_samples=4, util_mean=100.0, procs_max=2)
    assert judged_util_mean(shared_device) is None
    alone = GPUStats(0, util_samples=4, util_mean=100.0, procs_max=1)
    assert judged_util_mean(alone) == 100.0
