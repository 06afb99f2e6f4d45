"""Energy per epoch and per run: NVML's energy counter (millijoules since the driver loaded),
power readings integrated where the counter is unsupported or was reset, and how the run folder
and the report show it."""

from __future__ import annotations

import pynvml
import pytest

from gpu_watch import report, runlog
from gpu_watch.judging.activity import activity_row, energy_summary
from gpu_watch.judging.timeline import Timeline
from gpu_watch.judging.usage import EnergyMeter
from gpu_watch.judging.verdict import GPUStats
from gpu_watch.report import figures
from gpu_watch.sensing.nvml import NVML, Reading
from gpu_watch.testing import DrivenSampler, FakeGPU, FakeNVML, FakeProcess, ManualClock
from gpu_watch.training.config import Config
from gpu_watch.training.monitor import Monitor


def reading(t: float, counter_mj: int | None = None, power_w: float | None = None) -> Reading:
    return Reading(time_s=t, gpu=0, util_pct=90.0, energy_counter_mj=counter_mj, power_w=power_w)


def test_the_fake_counter_is_millijoules_of_its_power(clock):
    fake = FakeNVML([FakeGPU(power_w=250.0)], clock=clock)
    nvml = NVML(fake)
    (device,) = nvml.devices()
    start = nvml.read(device, 0.0).energy_counter_mj
    clock.advance(2.0)
    assert nvml.read(device, 2.0).energy_counter_mj - start == 500_000  # 250 W * 2 s in mJ


@pytest.mark.parametrize("gpu", [FakeGPU(name="Tesla P100-PCIE-16GB"),
                                 FakeGPU(name="NVIDIA H100", architecture="maxwell")],
                         ids=["pascal", "maxwell"])
def test_no_counter_before_volta(gpu):
    nvml = NVML(FakeNVML([gpu]))
    (device,) = nvml.devices()
    r = nvml.read(device, 0.0)
    assert r.energy_counter_mj is None and r.power_w == 70.0
    assert {"metric": "energy", "gpu": 0} in nvml.switched_off


def test_no_counter_on_a_mig_instance():
    mig = FakeGPU(uuid="MIG-dddddddd-1111-5000-8000-000000000000")
    nvml = NVML(FakeNVML([FakeGPU(mig_devices=[mig])]))
    (device,) = nvml.devices(visible=mig.uuid)
    assert nvml.read(device, 0.0).energy_counter_mj is None


def test_a_failing_counter_is_contained(clock):
    gpu = FakeGPU(power_w=100.0)
    gpu.fail("energy", pynvml.NVMLError_Unknown, from_s=1.0, until_s=2.0)
    nvml = NVML(FakeNVML([gpu], clock=clock))
    (device,) = nvml.devices()
    values = []
    for t in (0.0, 1.5, 3.0):
        clock.now = t
        values.append(nvml.read(device, t).energy_counter_mj)
    assert values[1] is None and values[2] - values[0] == 300_000
    assert [(f.metric, f.error) for f in nvml.faults] == [("energy", "NVMLError_Unknown")]


def test_the_counter_gives_the_energy_between_readings():
    meter = EnergyMeter()
    for t, mj in [(0.0, 5_000_000), (1.0, 5_200_000), (2.0, None), (3.0, 5_650_000)]:
        meter.add(reading(t, mj, power_w=1.0))
    result = meter.result()
    assert result["energy_j"] == pytest.approx(650.0)  # a missing read loses nothing
    assert result["energy_method"] == "counter"
    assert result["power_mean_w"] == pytest.approx(650.0 / 3.0)


def test_a_counter_reset_falls_back_on_power():
    meter = EnergyMeter()
    for t, mj, w in [(0.0, 9_000_000, 100.0), (1.0, 9_100_000, 100.0), (2.0, 1_000, 300.0)]:
        meter.add(reading(t, mj, w))  # the driver reloaded between 1 s and 2 s
    result = meter.result()
    assert result["energy_method"] == "power"
    assert result["energy_j"] == pytest.approx(100.0 + 200.0)  # trapezoids: 100 W, then 100-300
    assert result["power_mean_w"] == pytest.approx(150.0)


def test_without_a_counter_power_is_integrated_and_without_either_nothing_is_claimed():
    meter = EnergyMeter()
    for t, w in [(0.0, 200.0), (0.5, None), (1.0, 200.0)]:
        meter.add(reading(t, None, w))
    assert meter.result() == {"energy_j": pytest.approx(200.0), "energy_method": "power",
                              "power_mean_w": pytest.approx(200.0)}
    empty = EnergyMeter()
    empty.add(reading(0.0))
    assert empty.result() == {"energy_j": None, "energy_method": None, "power_mean_w": None}


def test_epochs_add_up_to_the_run_with_nothing_counted_twice():
    tl = Timeline([0], 10.0, 60.0, 0.5)
    counter = 0
    tl.add_readings([reading(0.0, counter)])  # before the first epoch: compiling, say
    for epoch in range(3):
        tl.begin_epoch(epoch)
        if epoch == 0:
            tl.add_batch(0, 0, 1, 0.0, 0.1, None)
        for k in range(4):
            counter += 1000 * (epoch + 1)
            tl.add_readings([reading(0.5 + epoch * 2 + k * 0.5, counter)])
        (stats,) = tl.end_epoch(2.0 + epoch * 2).gpu_stats()
        assert stats.energy_j == pytest.approx(4 * (epoch + 1))  # 4 readings of (e+1) J
    (run,) = tl.run_stats()
    assert run.energy_j == pytest.approx(4 + 8 + 12)


def test_the_run_summary_names_method_and_scope():
    stats = [GPUStats(0, energy_j=100.0, energy_method="counter", power_mean_w=50.0),
             GPUStats(1, energy_j=20.0, energy_method="power", power_mean_w=10.0),
             GPUStats(2)]
    summary = energy_summary(stats)
    assert summary["total_j"] == 120.0 and summary["method"] == "mixed"
    assert "whole GPU" in summary["scope"]
    assert summary["gpus"]["2"] == {"energy_j": None, "method": None, "power_mean_w": None}
    assert energy_summary([GPUStats(0)])["total_j"] is None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    gpu = FakeGPU(util_pct=90, power_w=400.0, processes=[FakeProcess(used_mib=1000)])
    clock = ManualClock()
    nvml = NVML(FakeNVML([gpu], clock=clock))
    monitor = Monitor(Config(log_dir=str(tmp_path_factory.mktemp("energy")), run_name="e",
                             interval_s=0.05, plot=False), nvml, "torch", (0, 1),
                      {"gpus": ["cuda:0"]}, None, clock=clock, sampler=DrivenSampler)
    monitor.first_step({"compute_on_gpu": True})
    for epoch in range(2):
        monitor.begin_epoch(epoch)
        begin = monitor.elapsed_s()
        monitor.sampler.run_for(0.4)
        monitor.timeline.add_batch(epoch, 0, 1, begin, monitor.elapsed_s(), 0.0)
        monitor.end_epoch(epoch, {"loss": 1.0})
    monitor.finish(runlog.STATUS_COMPLETED)
    return runlog.load_run(monitor.run_dir)


def test_epochs_csv_and_run_json_carry_energy_and_power(run):
    epochs = run.epochs
    # The counter advances between NVML calls, the time axis between ticks: a few ms apart.
    assert epochs["gpu_power_mean_w"].tolist() == pytest.approx([400.0, 400.0], rel=0.1)
    covered_s = epochs["gpu_energy_j"] / 400.0
    assert ((covered_s > 0.3) & (covered_s <= epochs["duration_s"] + 0.1)).all()
    assert epochs["gpu0_energy_j"].tolist() == epochs["gpu_energy_j"].tolist()
    energy = run.info["energy"]
    assert energy["method"] == "counter"
    assert energy["total_j"] >= epochs["gpu_energy_j"].sum() - 1e-6  # the run holds the epochs
    assert energy["gpus"]["0"]["method"] == "counter"


def test_the_report_shows_energy_as_the_whole_gpus(run):
    text = report.summary_text(run)
    (line,) = [t for t in text.splitlines() if t.startswith("Energy: ")]
    assert "the whole GPU: NVML has no per-process energy" in line
    watts = float(line.split(" W on average")[0].rsplit(" ", 1)[1])
    assert watts == pytest.approx(400.0, rel=0.1) and "energy counter" in line
    assert "energy J" in text and "power W" in text  # epoch table columns
    assert "the whole GPU" in report.report_html(run, None, None)
    fig = figures.plot_epochs(run)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert any(t.startswith("energy per epoch, whole GPU") for t in titles)
    (dots,) = [a for a in fig.findobj() if a.get_gid() == "power-epochs"]
    assert dots.get_ydata().tolist() == pytest.approx([400.0, 400.0], rel=0.1)


def test_no_energy_panel_without_energy(tmp_path):
    from runfolders import synthetic_run

    cpu = runlog.load_run(synthetic_run(tmp_path, "cpu", gpus=(), epochs=2, batches_per_epoch=4,
                                        step_s=0.1, verdict="cpu_fallback"))
    titles = [ax.get_title(loc="left") for ax in figures.plot_epochs(cpu).axes]
    assert not any("energy" in t for t in titles)
    assert "Energy:" not in report.summary_text(cpu)


def test_a_counter_that_does_not_move_is_no_reset():
    meter = EnergyMeter()
    for t, mj in [(0.0, 7_000), (1.0, 7_000), (2.0, 9_000)]:
        meter.add(reading(t, mj, power_w=500.0))
    assert meter.result() == {"energy_j": pytest.approx(2.0), "energy_method": "counter",
                              "power_mean_w": pytest.approx(1.0)}


def test_power_is_integrated_by_trapezoids_over_the_time_between_readings():
    meter = EnergyMeter()
    for t, w in [(0.0, 100.0), (2.0, 200.0), (2.0, 200.0), (5.0, 200.0)]:
        meter.add(reading(t, None, w))
    assert meter.result() == {"energy_j": pytest.approx(300.0 + 600.0),
                              "energy_method": "power", "power_mean_w": pytest.approx(180.0)}


def test_counter_readings_at_one_moment_give_energy_without_a_mean_power():
    meter = EnergyMeter()
    meter.add(reading(1.0, 5_000))
    meter.add(reading(1.0, 5_000))
    assert meter.result() == {"energy_j": 0.0, "energy_method": "counter", "power_mean_w": None}


def test_the_epoch_row_s_activity_and_energy_cells():
    stats = [GPUStats(0, sm_active_mean=10.0, tensor_active_mean=1.0, dram_bw_mean=20.0,
                      energy_j=100.0, power_mean_w=50.0),
             GPUStats(1, sm_active_mean=30.0, tensor_active_mean=None, dram_bw_mean=40.0,
                      energy_j=20.0, power_mean_w=10.0)]
    assert activity_row(stats) == {
        "gpu_sm_active_mean": 20.0, "gpu_tensor_active_mean": 1.0, "gpu_dram_bw_mean": 30.0,
        "gpu_energy_j": 120.0, "gpu_power_mean_w": 60.0,
        "gpu0_sm_active_mean": 10.0, "gpu0_energy_j": 100.0, "gpu0_power_mean_w": 50.0,
        "gpu1_sm_active_mean": 30.0, "gpu1_energy_j": 20.0, "gpu1_power_mean_w": 10.0}
    assert activity_row([GPUStats(2)]) == {
        "gpu_sm_active_mean": None, "gpu_tensor_active_mean": None, "gpu_dram_bw_mean": None,
        "gpu_energy_j": None, "gpu_power_mean_w": None,
        "gpu2_sm_active_mean": None, "gpu2_energy_j": None, "gpu2_power_mean_w": None}


def test_the_run_summary_word_for_word():
    stats = [GPUStats(0, energy_j=100.12345, energy_method="counter", power_mean_w=50.12345),
             GPUStats(1, energy_j=20.00049, energy_method="counter", power_mean_w=None)]
    assert energy_summary(stats) == {
        "total_j": 120.124, "method": "counter",
        "scope": "whole GPU: NVML does not measure energy per process",
        "gpus": {"0": {"energy_j": 100.123, "method": "counter", "power_mean_w": 50.12},
                 "1": {"energy_j": 20.0, "method": "counter", "power_mean_w": None}}}
    assert energy_summary([GPUStats(0)])["method"] is None
