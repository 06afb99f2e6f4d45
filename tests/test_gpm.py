"""GPU Performance Monitoring (GPM): SM activity, tensor-core activity, DRAM bandwidth and PCIe,
from FakeNVML's Hopper-class GPUs through the NVML seam, the sampler, the span statistics, the
`low_sm_activity` and `tensor_cores_unused` rules, the run folder and the report; and NaN with no
rule on GPUs without GPM."""

from __future__ import annotations

import dataclasses
import math
import threading
from pathlib import Path

import pandas as pd
import pynvml
import pytest
from matplotlib.text import Text

from gpu_watch import report, runlog
from gpu_watch.judging.causes import RunFacts
from gpu_watch.judging.timeline import Timeline
from gpu_watch.judging.usage import SpanStats
from gpu_watch.judging.verdict import OK, GPUStats, Setting, judge
from gpu_watch.report import figures
from gpu_watch.report.view import epoch_table
from gpu_watch.sensing.nvml import GPM_INTERVAL_S, GPM_METRICS, GPM_MIN_GAP_S, NVML, Reading
from gpu_watch.sensing.sampler import Sampler
from gpu_watch.testing import (
    DrivenSampler,
    FakeGPU,
    FakeNVML,
    FakeProcess,
    ManualClock,
    architecture_of,
)
from gpu_watch.training.config import Config
from gpu_watch.training.monitor import Monitor

SCRIPT = {"sm_active_pct": 12.0, "sm_occupancy_pct": 9.0, "tensor_active_pct": 0.5,
          "dram_bw_pct": 21.0, "fp32_active_pct": 4.0, "fp16_active_pct": 0.0,
          "pcie_tx_mib_s": 150.0, "pcie_rx_mib_s": 900.0}
ON_GPU = Setting(compute_on_gpu=True, framework_gpus=1, nvml_gpus=1, visible_gpus=1,
                 cuda_build=True)


def hopper(**kw) -> FakeGPU:
    values = {"util_pct": 96.0, **SCRIPT}
    values.update(kw)
    return FakeGPU(**values)


def session(*gpus: FakeGPU, clock=None, gpm_interval_s: float = 0.2) -> tuple[FakeNVML, NVML]:
    """A simulated session that takes a GPM sample every `gpm_interval_s` (0.2 s: every tick
    of the tests below; the cadence itself is tested on its own)."""
    fake = FakeNVML(list(gpus), clock=clock) if clock else FakeNVML(list(gpus))
    nvml = NVML(fake)
    nvml.gpm_interval_s = gpm_interval_s
    return fake, nvml


def gpm_of(reading: Reading) -> dict[str, float | None]:
    return {name: getattr(reading, name) for name in GPM_METRICS}


# -- the NVML seam over FakeNVML ----------------------------------------------------------------


def test_hopper_reports_every_metric_once_two_samples_exist(clock):
    fake, nvml = session(hopper(), clock=clock)
    (device,) = nvml.devices()
    first = nvml.read(device, 0.0)
    assert set(gpm_of(first).values()) == {None}  # one sample: nothing to compare it with
    clock.advance(0.2)
    assert gpm_of(nvml.read(device, 0.2)) == SCRIPT
    assert nvml.faults == [] and nvml.switched_off == []


def test_a_gpm_sample_a_second_by_default(clock):
    fake = FakeNVML([hopper()], clock=clock)
    nvml = NVML(fake)
    assert nvml.gpm_interval_s == GPM_INTERVAL_S == 1.0
    (device,) = nvml.devices()
    seen = {}
    for t in (0.0, 0.2, 0.4, 0.6, 0.8, 0.99, 1.2, 1.4):
        seen[t] = nvml.read(device, t).sm_active_pct
    # A tick a little early (0.99 s) still samples: jitter must not push every sample a tick late.
    assert [t for t, sm in seen.items() if sm is not None] == [0.99]
    assert fake.calls[("nvmlGpmSampleGet", "MainThread")] == 2
    assert fake.calls[("nvmlGpmMetricsGet", "MainThread")] == 1


def test_samples_closer_than_nvml_allows_keep_the_previous_one(clock):
    fake, nvml = session(hopper(), clock=clock, gpm_interval_s=0.01)
    (device,) = nvml.devices()
    nvml.read(device, 0.0)
    too_soon = nvml.read(device, GPM_MIN_GAP_S / 2)
    assert too_soon.sm_active_pct is None
    later = nvml.read(device, GPM_MIN_GAP_S * 1.2)  # measured against the sample at 0.0
    assert later.sm_active_pct == SCRIPT["sm_active_pct"]
    assert fake.calls[("nvmlGpmSampleGet", "MainThread")] == 2
    assert fake.calls[("nvmlGpmMetricsGet", "MainThread")] == 1


def test_a_new_time_axis_starts_gpm_afresh(clock):
    fake, nvml = session(hopper(), clock=clock)
    (device,) = nvml.devices()
    nvml.read(device, 50.0)
    assert nvml.read(device, 0.0).sm_active_pct is None  # a new run's clock: no stale pair
    assert nvml.read(device, 0.3).sm_active_pct == SCRIPT["sm_active_pct"]


def test_sm_activity_follows_utilization_unless_scripted(clock):
    fake, nvml = session(FakeGPU(util_pct=[40, 80]), clock=clock)
    (device,) = nvml.devices()
    nvml.read(device, 0.0)
    clock.advance(1.5)
    r = nvml.read(device, 1.5)
    assert (r.util_pct, r.sm_active_pct, r.sm_occupancy_pct) == (80, 80, 80)


@pytest.mark.parametrize("name, arch", [
    ("NVIDIA H100 80GB HBM3", "hopper"), ("NVIDIA H200", "hopper"),
    ("NVIDIA GH200 480GB", "hopper"), ("NVIDIA B200", "blackwell"),
    ("NVIDIA A100-SXM4-80GB", "ampere"), ("NVIDIA L4", "ada"),
    ("NVIDIA GeForce RTX 4090", "ada"), ("NVIDIA GeForce RTX 3090 Ti", "ampere"),
    ("Tesla V100-SXM2-16GB", "volta"), ("Tesla T4", "turing"), ("Tesla P100-PCIE-16GB", "pascal"),
    ("Tesla K80", "kepler"), ("Some Future GPU", None),
])
def test_architecture_from_the_product_name(name, arch):
    assert architecture_of(name) == arch


@pytest.mark.parametrize("gpu", [
    FakeGPU(name="NVIDIA A100-SXM4-80GB", util_pct=96),
    FakeGPU(name="NVIDIA L40S", util_pct=96),
    FakeGPU(util_pct=96, gpm=False),  # an H100 name, GPM switched off by the flag
], ids=["ampere", "ada", "flag"])
def test_gpus_without_gpm_read_none_and_are_asked_once(clock, gpu):
    fake, nvml = session(gpu, clock=clock)
    (device,) = nvml.devices()
    for t in (0.0, 0.2, 0.4, 0.6):
        clock.now = t
        r = nvml.read(device, t)
        assert set(gpm_of(r).values()) == {None}
        assert r.util_pct == 96  # everything else still read
    assert fake.calls[("nvmlGpmQueryDeviceSupport", "MainThread")] == 1
    assert fake.calls[("nvmlGpmSampleGet", "MainThread")] == 0
    assert {"metric": "gpm", "gpu": 0} in nvml.switched_off
    assert nvml.faults == []  # an older GPU is not a fault
    assert fake.gpm_samples_allocated == 0


def test_gpm_flag_turns_it_on_for_any_name(clock):
    fake, nvml = session(FakeGPU(name="NVIDIA A100-SXM4-80GB", gpm=True, sm_active_pct=5),
                         clock=clock)
    (device,) = nvml.devices()
    nvml.read(device, 0.0)
    assert nvml.read(device, 0.3).sm_active_pct == 5


def test_a_failing_metric_is_none_alone_and_not_supported_switches_it_off(clock):
    gpu = hopper()
    gpu.fail("gpm_tensor_active", pynvml.NVMLError_Unknown, until_s=0.5)
    gpu.fail("gpm_dram_bw", pynvml.NVMLError_NotSupported)
    fake, nvml = session(gpu, clock=clock)
    (device,) = nvml.devices()
    nvml.read(device, 0.0)
    clock.now = 0.2
    r = nvml.read(device, 0.2)
    assert r.tensor_active_pct is None and r.dram_bw_pct is None
    assert r.sm_active_pct == SCRIPT["sm_active_pct"]  # the others come through
    assert {(f.metric, f.error) for f in nvml.faults} == {
        ("tensor_active_pct", "NVMLError_Unknown"), ("dram_bw_pct", "NVMLError_NotSupported")}
    assert {"metric": "dram_bw_pct", "gpu": 0} in nvml.switched_off
    clock.now = 0.6
    r = nvml.read(device, 0.6)
    assert r.tensor_active_pct == SCRIPT["tensor_active_pct"]  # an error is not permanent
    assert r.dram_bw_pct is None  # NotSupported is


@pytest.mark.parametrize("error, recovers", [(pynvml.NVMLError_Timeout, True),
                                             (pynvml.NVMLError_NotSupported, False)])
def test_a_failing_gpm_call_is_contained(clock, error, recovers):
    gpu = hopper()
    gpu.fail("gpm", error, from_s=0.1, until_s=0.5)
    fake, nvml = session(gpu, clock=clock)
    (device,) = nvml.devices()
    seen = []
    for t in (0.0, 0.2, 0.4, 0.6, 0.8):
        clock.now = t
        r = nvml.read(device, t)
        seen.append(r.sm_active_pct)
        assert r.util_pct == 96
    assert seen[:3] == [None, None, None]
    assert (seen[4] == SCRIPT["sm_active_pct"]) is recovers
    assert nvml.faults[0].metric == "gpm" and nvml.faults[0].error == error.__name__


def test_mig_instances_are_sampled_through_their_parent(clock):
    mig = FakeGPU(name="MIG 3g.40gb", uuid="MIG-aaaaaaaa-1111-5000-8000-000000000000",
                  util_pct=0, sm_active_pct=33.0)
    parent = FakeGPU(mig_devices=[FakeGPU(uuid="MIG-bbbbbbbb-1111-5000-8000-000000000000"),
                                  mig])
    fake, nvml = session(parent, clock=clock)
    (device,) = nvml.devices(visible=mig.uuid)
    nvml.read(device, 0.0)
    clock.now = 0.2
    r = nvml.read(device, 0.2)
    assert r.sm_active_pct == 33.0  # the instance's own, not its sibling's or the parent's
    assert r.util_pct is None  # NVML refuses utilization on MIG
    assert fake.calls[("nvmlGpmMigSampleGet", "MainThread")] == 2
    assert fake.calls[("nvmlGpmSampleGet", "MainThread")] == 0


def test_the_fake_refuses_what_nvml_refuses():
    fake = FakeNVML([hopper(mig_devices=[FakeGPU(uuid="MIG-cccccccc-1111-5000-8000-0000")])])
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    mig = fake.nvmlDeviceGetMigDeviceHandleByIndex(handle, 0)
    one, two = fake.nvmlGpmSampleAlloc(), fake.nvmlGpmSampleAlloc()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlGpmSampleGet(mig, one)  # a MIG instance needs nvmlGpmMigSampleGet
    fake.nvmlGpmSampleGet(handle, one)
    fake.nvmlGpmSampleGet(handle, two)
    request = pynvml.c_nvmlGpmMetricsGet_t()  # version left 0, as pynvml leaves it
    request.sample1, request.sample2, request.numMetrics = one, two, 1
    request.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        fake.nvmlGpmMetricsGet(request)
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.sample2 = one
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlGpmMetricsGet(request)  # one sample twice
    request.sample2, request.numMetrics = two, 2
    request.metrics[1].metricId = pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL  # not served
    fake.nvmlGpmMetricsGet(request)
    assert (request.metrics[0].nvmlReturn, request.metrics[0].value) == (0, SCRIPT["sm_active_pct"])
    assert request.metrics[1].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    fake.nvmlGpmSampleFree(one)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlGpmSampleFree(one)  # freed twice
    with pytest.raises(ValueError, match="'volta2'"):
        FakeGPU(architecture="volta2")


def test_the_sampler_frees_the_buffers_on_its_own_thread_when_it_stops(clock):
    fake, nvml = session(hopper(), hopper(), clock=clock)
    readings: list[Reading] = []
    measured, allocated = threading.Event(), []

    def sink(tick):
        readings.extend(tick)
        if len(readings) == 8:  # four ticks of two GPUs: GPM has had its two samples
            allocated.append(fake.gpm_samples_allocated)
            measured.set()
            sampler.stop()  # from the sampler thread: its loop ends, then it frees the buffers

    sampler = Sampler(nvml, nvml.devices(), sink, interval_s=0.2, clock=clock,
                      wait=clock.advance)
    sampler.start()
    assert measured.wait(30.0)
    for thread in [t for t in threading.enumerate() if t.name == "gpu-watch-sampler"]:
        thread.join(10.0)
    assert any(r.sm_active_pct is not None for r in readings)
    assert allocated == [4]  # two per GPU, swapped, never more
    assert fake.gpm_samples_allocated == 0
    gpm_calls = {thread for (name, thread) in fake.calls if name.startswith("nvmlGpm")}
    assert gpm_calls == {"gpu-watch-sampler"}  # alloc, sample, metrics and free alike
    assert sampler.errors == []


def test_release_frees_buffers_after_gpm_was_switched_off(clock):
    gpu = hopper()
    gpu.fail("gpm", pynvml.NVMLError_NotSupported, from_s=0.1)
    fake, nvml = session(gpu, clock=clock)
    (device,) = nvml.devices()
    nvml.read(device, 0.0)
    clock.now = 0.2
    nvml.read(device, 0.2)
    assert fake.gpm_samples_allocated == 2
    nvml.release_gpm([device])
    assert fake.gpm_samples_allocated == 0


# -- statistics and rules -----------------------------------------------------------------------


def test_span_means_skip_missing_readings():
    tl = Timeline([0], 10.0, 60.0, 0.2)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 0.1, None)
    for t, sm in [(0.2, None), (0.4, 10.0), (0.6, 30.0), (0.8, None)]:
        tl.add_readings([Reading(time_s=t, gpu=0, util_pct=90.0, sm_active_pct=sm,
                                 tensor_active_pct=None)])
    (stats,) = tl.end_epoch(1.0).gpu_stats()
    assert stats.sm_active_mean == pytest.approx(20.0)  # not 10: None is not 0
    assert stats.tensor_active_mean is None


def busy(**kw) -> GPUStats:
    """A GPU this process uses alone: its own utilization is the device's unless given."""
    values = {"util_samples": 50, "util_mean": 95.0, "util_p95": 99.0, "device_idle_fraction": 0.0,
              "proc_seen": True, "procs_max": 1}
    values.update(kw)
    values.setdefault("proc_util_samples", values["util_samples"])
    values.setdefault("proc_util_mean", values["util_mean"])
    values.setdefault("proc_idle_fraction", values["device_idle_fraction"])
    return GPUStats(0, **values)


def codes(judgement) -> list[str]:
    return [c.code for c in judgement.causes]


@pytest.mark.parametrize("util, sm, fires", [
    (95.0, 8.0, True),
    (100.0, 49.9, True),
    (100.0, 50.0, False),  # DCGM's 0.5: at it, not "likely ineffective"
    (25.0, 1.0, True),  # a host-bound step: kernels run a quarter of the time, on few SMs
    (60.0, 30.0, True),  # SMs busy exactly half the time kernels ran
    (60.0, 31.0, False),  # more than half: the SMs are not "mostly idle"
    (40.0, 35.0, False),  # a GPU that waits, but fills its SMs when it works
    (95.0, None, False),  # no GPM: no rule
])
def test_low_sm_activity_thresholds(util, sm, fires):
    j = judge(ON_GPU, [busy(util_mean=util, sm_active_mean=sm)], wait_fraction=0.0)
    assert j.verdict == OK  # a warning, never a verdict
    assert ("low_sm_activity" in codes(j)) is fires


def test_low_sm_activity_names_the_gpu_and_the_gap():
    j = judge(ON_GPU, [busy(util_mean=96.0, sm_active_mean=7.5)], wait_fraction=0.0)
    (found,) = [c for c in j.causes if c.code == "low_sm_activity"]
    assert found.severity == "warning"
    assert "utilization was 96%" in found.message and "8% of the time" in found.message
    assert "88 points apart" in found.message and "about 8% of its SMs" in found.message
    assert found.evidence == {"gpu": 0, "util_mean": 96.0, "sm_active_mean": 7.5,
                              "gap_pct": 88.5}
    assert "steps_per_execution" in found.remedy and "batch_size" in found.remedy
    on_torch = dataclasses.replace(ON_GPU, facts=RunFacts(backend="torch"))
    (torch_cause,) = judge(on_torch, [busy(util_mean=96.0, sm_active_mean=7.5)], 0.0).causes
    assert "jit_compile=True" in torch_cause.remedy  # torch has no steps_per_execution
    assert "steps_per_execution=32)" not in torch_cause.remedy


def test_gpm_rules_leave_idle_and_cpu_runs_alone():
    idle = busy(util_mean=60.0, device_idle_fraction=0.9, sm_active_mean=2.0,
                tensor_active_mean=0.0, fp32_active_mean=30.0)
    assert judge(ON_GPU, [idle], 0.0).verdict == "idle"
    assert not {"low_sm_activity", "tensor_cores_unused"} & set(codes(judge(ON_GPU, [idle], 0.0)))
    cpu = judge(Setting(compute_on_gpu=False), [busy(sm_active_mean=2.0)], 0.0)
    assert cpu.verdict == "cpu_fallback" and "low_sm_activity" not in codes(cpu)


@pytest.mark.parametrize("tensor, fp32, fp16, fires", [
    (0.2, 35.0, 0.0, True),
    (1.0, 35.0, 0.0, False),  # tensor cores in use
    (0.2, 0.9, 0.0, False),  # no float math to speak of
    (0.2, 20.0, 25.0, False),  # half precision, not float32
    (None, 35.0, 0.0, False),  # no GPM
])
def test_tensor_cores_unused_is_a_hint_for_float32_training(tensor, fp32, fp16, fires):
    stats = busy(sm_active_mean=80.0, tensor_active_mean=tensor, fp32_active_mean=fp32,
                 fp16_active_mean=fp16)
    j = judge(ON_GPU, [stats], 0.0)
    assert j.verdict == OK
    found = [c for c in j.causes if c.code == "tensor_cores_unused"]
    assert bool(found) is fires
    if fires:
        assert found[0].severity == "info" and "mixed_bfloat16" in found[0].remedy


# -- a monitored run, end to end ----------------------------------------------------------------


def monitored_run(log_dir, gpu: FakeGPU, name: str):
    """Two short epochs on a GPU the placement check put training on, read every 0.12 s."""
    clock = ManualClock()
    nvml = NVML(FakeNVML([gpu], clock=clock))
    nvml.gpm_interval_s = 0.12  # every tick: a short run still has GPM readings in each epoch
    monitor = Monitor(Config(log_dir=str(log_dir), run_name=name, interval_s=0.12, plot=False),
                      nvml, "jax", (0, 1), {"gpus": ["cuda:0"]}, None, clock=clock,
                      sampler=DrivenSampler)
    monitor.first_step({"compute_on_gpu": True})
    for epoch in range(2):
        monitor.begin_epoch(epoch)
        for batch in range(6):
            begin = monitor.elapsed_s()
            clock.advance(0.06)
            if batch % 2:  # a reading every 0.12 s, as the thread would take it
                monitor.sampler.tick()
            monitor.timeline.add_batch(epoch, batch, 1, begin, monitor.elapsed_s(), 0.0)
        monitor.end_epoch(epoch, {"loss": 1.0})
    monitor.finish(runlog.STATUS_COMPLETED)
    return runlog.load_run(monitor.run_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("gpm-logs")
    me = [FakeProcess(used_mib=3000, sm_util_pct=96)]
    return {
        "hopper": monitored_run(log_dir, hopper(processes=me, power_w=300.0), "hopper"),
        "ampere": monitored_run(log_dir, FakeGPU(name="NVIDIA A100-SXM4-80GB", util_pct=96,
                                                 processes=me, power_w=300.0), "ampere"),
    }


def test_a_hopper_run_records_gpm_and_warns_of_idle_sms(runs):
    run = runs["hopper"]
    assert run.verdict == OK
    assert "low_sm_activity" in [c["code"] for c in run.causes]
    # The first tick has no earlier sample to compare with; the closing one, read when training
    # ended, comes too soon after the last.
    samples = run.samples.iloc[1:-1]
    for name, value in SCRIPT.items():
        measured = samples[name].dropna()
        assert len(measured) >= len(samples) - 1 and (measured == value).all(), name
    assert run.epochs["gpu_sm_active_mean"].tolist() == pytest.approx([12.0, 12.0])
    assert run.epochs["gpu0_sm_active_mean"].tolist() == pytest.approx([12.0, 12.0])
    assert run.epochs["gpu_tensor_active_mean"].tolist() == pytest.approx([0.5, 0.5])


def test_an_older_gpu_run_has_nan_columns_and_no_gpm_rule(runs):
    run = runs["ampere"]
    assert run.verdict == OK
    assert not {"low_sm_activity", "tensor_cores_unused"} & {c["code"] for c in run.causes}
    for name in GPM_METRICS:
        assert name in run.samples.columns and run.samples[name].isna().all(), name
    assert run.epochs["gpu_sm_active_mean"].isna().all()
    assert {"metric": "gpm", "gpu": 0} in run.info["nvml"]["switched_off"]
    assert run.epochs["gpu_energy_j"].notna().all()  # energy does not need GPM


def test_the_figures_draw_sm_activity_beside_utilization_only_where_measured(runs):
    hopper_fig = figures.plot_utilization(runs["hopper"])
    line = [a for a in hopper_fig.findobj() if a.get_gid() == "sm-active-gpu0"]
    assert len(line) == 1
    y = line[0].get_ydata()
    assert y[~(y != y)].tolist() and set(y[~(y != y)]) == {12.0}  # NaN stays a gap
    titles = [t.get_text() for t in hopper_fig.findobj(Text)]
    assert any("SM active 12%" in t for t in titles)
    assert any(t == "SM activity (GPM)" for t in titles)  # legend entry
    ampere_fig = figures.plot_utilization(runs["ampere"])
    assert not [a for a in ampere_fig.findobj() if a.get_gid() == "sm-active-gpu0"]
    assert not any("SM activ" in t.get_text() for t in ampere_fig.findobj(Text))

    epochs_fig = figures.plot_epochs(runs["hopper"])
    (marks,) = [a for a in epochs_fig.findobj() if a.get_gid() == "sm-active-epochs"]
    assert marks.get_ydata().tolist() == pytest.approx([12.0, 12.0])
    assert not [a for a in figures.plot_epochs(runs["ampere"]).findobj()
                if a.get_gid() == "sm-active-epochs"]


def test_the_text_and_html_reports_show_sm_activity_where_measured(runs):
    headings, rows = epoch_table(runs["hopper"])
    column = headings.index("SM active %")
    assert [row[column] for row in rows] == ["12", "12"]
    per_gpu = [h for h in headings if h.endswith(runlog.EPOCH_GPU_ACTIVITY_COLUMNS)]
    assert per_gpu == []  # per-GPU activity stays in the CSV
    old_headings, _ = epoch_table(runs["ampere"])
    assert "SM active %" not in old_headings  # not a column of n/a
    text = report.summary_text(runs["hopper"])
    assert "SM activity 12% (share of SMs busy, from GPM)" in text
    assert "low_sm_activity" in text
    html = report.report_html(runs["hopper"], None, None)
    assert "SM activity 12%" in html and "SM active %" in html
    assert "SM activity" not in report.summary_text(runs["ampere"])


def test_runs_written_before_gpm_read_back_with_nan_columns(tmp_path):
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    old = {"schema_version": 1, "status": "completed"}  # the keys of a run long ago
    runlog.write_run_json(run_dir, runlog.RunRecord.from_json(old))
    newer = (*runlog.SAMPLE_ACTIVITY_COLUMNS, "others_util_pct", "others_mem_mib",
             "judged_util_pct", "fetching_data", "producing_data")
    old_samples = [c for c in runlog.SAMPLE_COLUMNS if c not in newer]
    old_epochs = [c for c in runlog.EPOCH_COLUMNS if c not in runlog.EPOCH_ACTIVITY_COLUMNS]
    (run_dir / runlog.SAMPLES_CSV).write_text(",".join(old_samples) + "\n"
                                              + "0.2,0" + "," * (len(old_samples) - 2) + "\n")
    (run_dir / runlog.BATCHES_CSV).write_text(",".join(runlog.BATCH_COLUMNS) + "\n")
    (run_dir / runlog.EPOCHS_CSV).write_text(",".join(old_epochs) + "\n")
    run = runlog.load_run(run_dir)
    assert list(run.samples.columns) == list(runlog.SAMPLE_COLUMNS)
    assert math.isnan(run.samples["sm_active_pct"].iloc[0])
    assert "gpu_energy_j" in run.epochs.columns
    (run_dir / runlog.SAMPLES_CSV).write_text("time_s,gpu\n")
    with pytest.raises(runlog.RunFolderError, match="util_pct"):
        runlog.load_run(run_dir)  # only the new columns are optional


# -- real readings from an H200 -----------------------------------------------------------------

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name, verdict, expected", [
    ("jax-healthy", "ok", set()),
    ("jax-small_kernels", "ok", {"low_sm_activity"}),
    ("torch-healthy", "ok", {"tensor_cores_unused"}),  # float32 on torch: no TF32 by default
    ("torch-small_kernels", "idle", set()),  # host-bound: the idle verdict says it first
])
def test_real_h200_readings_through_the_rules(name, verdict, expected):
    """samples.csv of `benchmarks/gpu_check.py`'s runs on an H200 (see data/README.md),
    replayed through the span statistics and the rules."""
    frame = pd.read_csv(DATA / f"h200-{name}-samples.csv")
    fields = {f.name for f in dataclasses.fields(Reading)}
    span = SpanStats()
    for row in frame.to_dict("records"):
        span.add(Reading(**{k: None if pd.isna(v) else v for k, v in row.items() if k in fields}),
                 10.0)
    stats = span.stats(0)
    assert stats.sm_active_mean is not None and stats.sm_active_mean <= stats.util_mean
    j = judge(ON_GPU, [stats], wait_fraction=0.0)
    assert j.verdict == verdict
    assert {c.code for c in j.causes} == expected
