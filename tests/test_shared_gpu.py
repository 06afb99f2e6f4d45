"""A shared GPU: this training's own use decides, and the other processes are named.

Real Keras training on this machine's CPU, with a placement probe that reports step 0 on the GPU
(TensorFlow here has none) and FakeNVML for what NVML shows on a GPU that other processes use.
Each scenario's answer differs from what the device's utilization alone would give.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pynvml
import pytest
from monitors import FrameworkWithGPUs
from pacing import Pause

from gpu_watch import GPUWatch, GPUWatchWarning, load_run, report
from gpu_watch.cli import main as cli_main
from gpu_watch.judging.timeline import Timeline
from gpu_watch.judging.verdict import IDLE, OK, UNMONITORED, Setting, judge
from gpu_watch.report.text import summary_line
from gpu_watch.sensing.nvml import PROC_UTIL_QUIET_S, PROCESS_NAME_MAX_CHARS, Reading
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess
from gpu_watch.training import placement as placement_module

OTHER = 4242
STEPS = 10
REPLAY = Path("/work/shared/measurements/h200-2026-11-27/runs/jax-shared-starved")


@pytest.fixture
def on_gpu(monkeypatch):
    def install(gpus: int = 1) -> None:
        monkeypatch.setattr(placement_module, "probe_for", lambda backend: FrameworkWithGPUs(gpus))

    install()
    return install


def make_model():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def train(fake, epochs=2, starved=False, **options):
    """Fit a small model with GPUWatch on `fake`; return the loaded run and the history."""
    options = {"interval_s": 0.02, "plot": False, "verbose": 0, **options}
    watch = GPUWatch(log_dir=options.pop("log_dir"), nvml=fake, **options)
    rng = np.random.default_rng(0)
    x = rng.random((STEPS * 8, 8), dtype=np.float32)
    y = rng.random((STEPS * 8, 1), dtype=np.float32)

    def slow_batches():
        while True:
            time.sleep(0.1)  # a slow input pipeline: the loop waits for data, even on a busy CPU
            yield x[:8], y[:8]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        if starved:
            history = make_model().fit(slow_batches(), steps_per_epoch=STEPS, epochs=epochs,
                                       verbose=0, callbacks=[watch])
        else:
            history = make_model().fit(x, y, batch_size=8, epochs=epochs, verbose=0,
                                       callbacks=[Pause(0.02), watch])
    return load_run(watch.run_dir), history, watch


def codes(run):
    return [c["code"] for c in run.causes]


def shared_cause(run, gpu=0):
    [found] = [c for c in run.causes if c["code"] == "gpu_shared"
               and c["evidence"]["gpu"] == gpu]
    return found


def test_ours_idle_while_another_process_keeps_the_gpu_busy(tmp_path, on_gpu):
    mine = FakeProcess(used_mib=2000, sm_util_pct=0)
    other = FakeProcess(pid=OTHER, used_mib=30000, sm_util_pct=99, name="burn.py")
    fake = FakeNVML([FakeGPU(util_pct=100, processes=[mine, other])])
    run, history, _ = train(fake, epochs=30, starved=True, log_dir=tmp_path, on_idle="stop",
                            idle_patience_s=0.3)

    assert len(history.epoch) < 30 and run.status == "stopped_idle"  # on_idle="stop" acted
    [event] = run.info["idle"]["events"]
    assert event["util_mean_pct"] == {"0": 0.0} and event["device_util_mean_pct"] == {"0": 100.0}
    # NVML has no sample of a process that runs no kernels: its 0 % comes once it has been
    # listed for PROC_UTIL_QUIET_S without one, never sooner, and the stop follows from there.
    assert PROC_UTIL_QUIET_S <= event["start_s"] < PROC_UTIL_QUIET_S + 0.5
    assert run.verdict == IDLE and run.info["gpu_verdicts"] == {"0": IDLE}
    assert run.info["gpu_judged_by"] == {"0": "process"}
    assert codes(run)[0] == "input_bound" and "gpu_shared" in codes(run)
    shared = shared_cause(run)
    assert shared["severity"] == "warning"
    assert shared["evidence"]["processes"] == [
        {"pid": OTHER, "name": "burn.py", "sm_util_mean_pct": 99.0, "mem_peak_mib": 30000.0}]
    assert shared["evidence"]["others_busy_fraction"] == 1.0
    assert "your training was idle" in shared["message"]
    assert f"busy with PID {OTHER}" in shared["message"]
    epochs = run.epochs
    assert epochs["gpu_util_mean"].tolist() == pytest.approx([100] * len(epochs))
    # Before its 0 % is known, this training's own use of the busy, shared GPU is unknown:
    # unmonitored, never ok. From then on, idle.
    known = epochs["proc_util_mean"].notna()
    assert not known.iloc[0] and known.iloc[-1] and known.is_monotonic_increasing
    assert epochs.loc[~known, "verdict"].eq(UNMONITORED).all()
    assert epochs.loc[known, "verdict"].eq(IDLE).all()
    assert epochs.loc[known, "proc_util_mean"].eq(0).all()
    assert epochs.loc[known, "gpu0_proc_util_mean"].eq(0).all()
    assert epochs.loc[known, "idle_fraction"].eq(1.0).all()
    assert run.samples["others_util_pct"].dropna().eq(99).all()
    assert run.samples["others_mem_mib"].dropna().eq(30000).all()

    banner = report.banner_text(run)
    assert banner.startswith("GPU 0 idle 100% of training")
    assert f"GPU 0 shared with PID {OTHER}, busy with them 100% of the time" in banner
    summary = report.summary_text(run)
    assert "mean util this process 0% (device 100%)" in summary
    # The epoch table: this training's figure ("util %") beside the device's.
    assert "util %" in summary and "device util %" in summary
    # Before NVML has a figure of this process's own (PROC_UTIL_QUIET_S), the busy device's
    # figure may be the other's work: unknown, never 100 % for this training.
    judged = run.epochs["judged_util_mean"]
    assert judged.dropna().eq(0).all() and judged.notna().any()
    assert run.epochs["gpu_util_mean"].eq(100).all()


def test_both_busy_is_ok_with_the_shared_warning(tmp_path, on_gpu):
    mine = FakeProcess(used_mib=2000, sm_util_pct=60)
    other = FakeProcess(pid=OTHER, used_mib=8000, sm_util_pct=35, name="train_b.py")
    fake = FakeNVML([FakeGPU(util_pct=98, processes=[mine, other])])
    run, _, _ = train(fake, log_dir=tmp_path, idle_patience_s=0.2)

    assert run.verdict == OK and run.info["gpu_verdicts"] == {"0": OK}
    assert codes(run) == ["gpu_shared"]
    shared = shared_cause(run)
    assert "both ran kernels 100% of the time, and your steps ran slower then" in \
        shared["message"]
    assert shared["evidence"]["contended_fraction"] == 1.0
    assert "PID 4242 (train_b.py) [35% SM, 8,000 MiB]" in shared["message"]
    assert run.epochs["proc_util_mean"].tolist() == pytest.approx([60, 60])
    assert run.info["idle"]["events"] == []
    assert report.banner_text(run).startswith(f"GPU 0 shared with PID {OTHER}")


def test_ours_busy_alone_is_ok_without_a_warning(tmp_path, on_gpu):
    mine = FakeProcess(used_mib=2000, sm_util_pct=85)
    fake = FakeNVML([FakeGPU(util_pct=90, processes=[mine])])
    run, _, _ = train(fake, log_dir=tmp_path)

    assert run.verdict == OK and run.causes == []
    assert run.info["gpu_judged_by"] == {"0": "process"}
    assert run.epochs["proc_util_mean"].tolist() == pytest.approx([85, 85])
    assert run.epochs["gpu_util_mean"].tolist() == pytest.approx([90, 90])
    assert run.samples["others_util_pct"].dropna().eq(0).all()  # nobody else: 0 %, measured
    assert report.banner_text(run) is None


def test_without_per_process_utilization_the_device_decides_and_says_so(tmp_path, on_gpu):
    alone = FakeGPU(util_pct=90, processes=[FakeProcess(used_mib=2000)])
    alone.fail("proc_util", pynvml.NVMLError_NotSupported)
    run, _, _ = train(FakeNVML([alone]), log_dir=tmp_path / "alone")
    assert run.verdict == OK and codes(run) == ["process_not_attributable"]
    [note] = run.causes
    assert note["evidence"] == {"gpus": [0], "pid_not_listed": [], "process_list_unreadable": [],
                                "no_process_utilization": [0], "no_sample_yet": []}
    assert "no per-process utilization" in note["message"]
    assert run.info["gpu_judged_by"] == {"0": "device"}
    assert run.epochs["proc_util_mean"].isna().all()  # not measured, never 0

    # Another process on it: the device's work may be theirs, so this training's is unknown.
    shared = FakeGPU(util_pct=90, processes=[
        FakeProcess(used_mib=2000), FakeProcess(pid=OTHER, used_mib=500, name="other")])
    shared.fail("proc_util", pynvml.NVMLError_NotSupported)
    run, _, _ = train(FakeNVML([shared]), log_dir=tmp_path / "shared")
    assert run.verdict == "unmonitored"
    assert codes(run) == ["process_not_attributable", "gpu_shared"]
    assert "own use is unknown" in run.causes[0]["message"]
    assert shared_cause(run)["evidence"]["processes"][0]["sm_util_mean_pct"] is None


def test_in_a_pid_namespace_the_device_decides_and_says_so(tmp_path, on_gpu):
    host_pid = FakeProcess(pid=987654, used_mib=2000, sm_util_pct=80)  # this process, by host
    run, _, _ = train(FakeNVML([FakeGPU(util_pct=85, processes=[host_pid])]), log_dir=tmp_path)
    assert run.verdict == OK and codes(run) == ["process_not_attributable"]
    assert run.causes[0]["evidence"]["pid_not_listed"] == [0]
    assert "--pid=host" in run.causes[0]["remedy"]
    assert run.samples["others_util_pct"].isna().all()  # which PID is ours is unknown


def test_ours_on_one_gpu_another_process_on_the_other(tmp_path, on_gpu):
    on_gpu(gpus=2)
    ours = FakeGPU(util_pct=92, processes=[FakeProcess(used_mib=4000, sm_util_pct=90)])
    theirs = FakeGPU(util_pct=97, processes=[
        FakeProcess(pid=OTHER, used_mib=20000, sm_util_pct=97, name="someone_else.py")])
    run, _, _ = train(FakeNVML([ours, theirs]), log_dir=tmp_path)

    assert run.info["gpu_verdicts"] == {"0": OK, "1": IDLE}
    assert run.verdict == IDLE
    assert codes(run) == ["process_not_on_gpu", "gpu_shared"]
    assert shared_cause(run, gpu=1)["evidence"]["processes"][0]["pid"] == OTHER
    assert "GPU 1 was shared with PID 4242 (someone_else.py)" in shared_cause(run, 1)["message"]
    # NVML lists this process on GPU 0 and not on GPU 1: there it ran nothing, a measured 0 %.
    by_gpu = run.samples.groupby("gpu")["proc_util_pct"]
    assert by_gpu.max().to_dict() == {0: 90.0, 1: 0.0}
    assert run.epochs["gpu1_proc_util_mean"].tolist() == pytest.approx([0, 0])
    assert run.epochs["gpu1_util_mean"].tolist() == pytest.approx([97, 97])


HOSTILE = ("<script>alert('x')</script>\x1b[31mRED\x1b[0m\r\nfake line\u202e$x^2$"
           + "A" * 10_000)


def test_a_hostile_process_name_reaches_every_output_harmless(tmp_path, on_gpu, capsys):
    mine = FakeProcess(used_mib=2000, sm_util_pct=50)
    other = FakeProcess(pid=OTHER, used_mib=100, sm_util_pct=40, name=HOSTILE)
    run, _, watch = train(FakeNVML([FakeGPU(util_pct=95, processes=[mine, other])]),
                          log_dir=tmp_path, plot=True)

    name = shared_cause(run)["evidence"]["processes"][0]["name"]
    assert len(name) <= PROCESS_NAME_MAX_CHARS and name.endswith("...")
    assert name.startswith("<script>alert('x')</script>?[31mRED?[0m??fake line?$x^2$AAA")
    raw = (run.path / "run.json").read_text()
    assert "\\u001b" not in raw and "\\r" not in raw and "A" * 200 not in raw
    assert json.loads(raw)["causes"][0]["evidence"]["processes"][0]["name"] == name

    line = summary_line(watch.monitor.record, watch.run_dir)
    assert "\x1b" not in line and "\r" not in line and "\u202e" not in line
    assert "<script>alert" in line  # plain text in a terminal: shown, not interpreted

    assert watch.wait_for_report(timeout_s=60)  # drawn in a separate process
    page = (run.path / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)" in page

    assert cli_main(["report", str(run.path), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\u202e" not in printed


# -- the bug as seen on an H200 --------------------------------------------------------------


def replay(folder: Path) -> tuple[Timeline, float]:
    """Feed a real run folder's readings and batches through the Timeline, tick by tick."""
    info = json.loads((folder / "run.json").read_text())
    config = info["config"]
    samples = pd.read_csv(folder / "samples.csv")
    batches = pd.read_csv(folder / "batches.csv")
    timeline = Timeline(sorted(samples["gpu"].unique()), config["idle_threshold_pct"],
                        config["idle_patience_s"], config["interval_s"])
    pending = batches.to_dict("records")
    for time_s, tick in samples.groupby("time_s", sort=True):
        while pending and pending[0]["time_s"] <= time_s:
            row = pending.pop(0)
            if timeline.epoch != row["epoch"]:
                timeline.begin_epoch(int(row["epoch"]))
            timeline.add_batch(int(row["epoch"]), int(row["batch"]), int(row["steps"]),
                               row["time_s"] - row["step_s"], row["time_s"], None)
        timeline.add_readings([
            Reading(time_s=time_s, gpu=int(r["gpu"]), util_pct=r["util_pct"],
                    mem_used_mib=r["mem_used_mib"], proc_mem_mib=r["proc_mem_mib"],
                    proc_util_pct=r["proc_util_pct"], procs=int(r["procs"]))
            for r in tick.to_dict("records")])
    wait = pd.read_csv(folder / "epochs.csv")["wait_fraction"].mean()
    return timeline, float(wait)


@pytest.mark.skipif(not REPLAY.is_dir(), reason="the H200 measurements are not on this machine")
def test_the_h200_shared_starved_run_is_idle_by_the_new_rules():
    info = json.loads((REPLAY / "run.json").read_text())
    assert info["verdict"] == "ok"  # what the old rules said on the H200
    timeline, wait = replay(REPLAY)
    setting = Setting(compute_on_gpu=True, framework_gpus=1, nvml_gpus=1, visible_gpus=1,
                      cuda_build=True)
    judgement = judge(setting, timeline.run_stats(), wait)
    assert judgement.verdict == IDLE and judgement.judged_by == {0: "process"}
    assert [c.code for c in judgement.causes] == ["input_bound", "gpu_shared"]
    assert "while the GPU was 100% busy with another process" in judgement.causes[1].message
    (stats,) = timeline.run_stats()
    assert stats.util_mean > 99 and stats.proc_util_mean == 0
    # With its patience (3 s), on_idle would have acted: the idle detector fired.
    event = timeline.idle_event
    assert event is not None and event.util_mean_pct == {0: 0.0}
    assert event.device_util_mean_pct[0] > 99
