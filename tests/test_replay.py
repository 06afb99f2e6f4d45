"""Real run folders from an NVIDIA H200 (tests/data/h200, see its README): what `load_run`, the
report and the verdict rules make of real NVML readings.

`gpu_watch.rejudge` feeds each folder's readings and batches through a `Timeline` in time order,
as the sampler and the training thread did, and judges them with today's rules and the run's own
facts from `run.json`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from gpu_watch import load_run, rejudge
from gpu_watch.judging.verdict import OK
from gpu_watch.report import summary_text
from gpu_watch.runlog import SAMPLE_COLUMNS

H200 = Path(__file__).parent / "data" / "h200"
# run folder -> (status, verdict, cause codes, batch rows, sample rows, epochs), as recorded
RECORDED = {
    "jax-healthy": ("completed", "ok", [], 1410, 41, 89),
    "torch-healthy": ("completed", "ok", [], 197, 41, 13),
    "jax-starved": ("stopped_idle", "idle", ["input_bound"], 19, 28, 1),
    "torch-hidden": ("completed", "cpu_fallback", ["gpus_hidden"], 64, 0, 2),
    "jax-shared-starved": ("completed", "ok", [], 30, 52, 2),
}
@pytest.fixture(scope="module")
def runs():
    return {name: load_run(H200 / name) for name in RECORDED}


@pytest.fixture(scope="module")
def rejudged(runs):
    return {name: rejudge(run) for name, run in runs.items()}


@pytest.mark.parametrize("name", RECORDED)
def test_load_run_reads_the_real_run_folders(runs, name):
    status, verdict, causes, batches, samples, epochs = RECORDED[name]
    run = runs[name]
    assert (run.status, run.verdict, [c["code"] for c in run.causes]) == (status, verdict, causes)
    assert (len(run.batches), len(run.samples), len(run.epochs)) == (batches, samples, epochs)
    assert list(run.samples.columns) == list(SAMPLE_COLUMNS)
    assert run.warnings == []
    assert run.samples["util_pct"].between(0, 100).all()
    assert run.samples["proc_util_pct"].between(0, 100).all()
    assert (run.samples["proc_mem_mib"] <= run.samples["mem_used_mib"]).all()
    assert run.epochs["batches"].sum() == len(run.batches)
    assert list(run.epochs["epoch"]) == list(range(epochs))
    assert run.batches.groupby("epoch").size().tolist() == run.epochs["batches"].tolist()


def test_on_the_h200_this_process_s_utilization_tracks_the_device_s(runs):
    for name in ("jax-healthy", "torch-healthy"):
        samples = runs[name].samples
        assert samples["proc_util_pct"].notna().all() and samples["procs"].eq(1).all()
        assert samples["proc_util_pct"].mean() == pytest.approx(samples["util_pct"].mean(),
                                                                abs=1.0)


@pytest.mark.parametrize("name", ["jax-healthy", "torch-healthy", "jax-starved", "torch-hidden"])
def test_today_s_rules_reach_the_recorded_verdicts_from_the_real_readings(runs, rejudged, name):
    run, again = runs[name], rejudged[name]
    assert again.verdict == run.verdict
    assert [c["code"] for c in again.causes] == [c["code"] for c in run.causes]
    assert again.info["gpu_verdicts"] == run.info["gpu_verdicts"]
    assert again.info["rejudged"]["recorded_verdict"] == run.verdict
    assert list(again.epochs["epoch"]) == list(run.epochs["epoch"])
    assert again.epochs["batches"].tolist() == run.epochs["batches"].tolist()
    assert again.epochs["loss"].tolist() == pytest.approx(run.epochs["loss"].tolist())
    assert len(again.samples) == len(run.samples)


def test_the_real_healthy_jax_run_tells_one_story(rejudged):
    run = rejudged["jax-healthy"]
    epochs = run.epochs
    # Recorded: 64 epochs "unmonitored" (shorter than the interval) and epoch 0 "idle" (the
    # compile step). Each short epoch now takes the reading whose period covers it; the last
    # epoch (12 ms, after the last reading of a run recorded without a closing reading) has
    # none and says so.
    assert Counter(epochs["verdict"]) == {"ok": 88, "unmeasured": 1}
    assert epochs["verdict"].iloc[-1] == "unmeasured"
    assert epochs["verdict"].iloc[0] == "ok"
    assert epochs["first_step_s"].iloc[0] == pytest.approx(2.8898, abs=1e-3)
    assert epochs["first_step_s"].iloc[1:].isna().all()
    judged = run.info["judged"]["0"]
    assert (judged["by"], judged["readings"]) == ("process", 26)
    assert judged["idle_fraction"] == pytest.approx(1 / 26, abs=1e-4)
    text = summary_text(run)
    assert "Verdict: OK" in text and "idle 4% of its readings after step 0" in text
    assert "unmonitored" not in text


def test_each_reading_keeps_this_training_s_judged_figure(rejudged):
    samples = rejudged["jax-shared-starved"].samples
    assert samples["judged_util_pct"].eq(samples["proc_util_pct"]).all()  # its own: 0 %
    assert rejudged["torch-hidden"].samples.empty


def test_the_real_starved_run_is_idle_and_input_bound(rejudged):
    run = rejudged["jax-starved"]
    assert run.info["judged"]["0"]["idle_fraction"] == 1.0
    assert run.info["wait"]["measure"] == "sampled_ticks"
    assert run.causes[0]["evidence"]["wait_fraction"] > 0.9
    assert run.info["idle"]["events"][0]["action"] == "stop"


def test_the_real_shared_gpu_shows_another_process_busy_and_this_one_idle(runs):
    samples = runs["jax-shared-starved"].samples
    assert samples["util_pct"].ge(99).all() and samples["proc_util_pct"].eq(0).all()
    assert samples["procs"].eq(2).all()
    assert runs["jax-shared-starved"].epochs["wait_fraction"].min() > 0.9


def test_a_gpu_kept_busy_by_another_process_is_not_ok_for_this_training(rejudged):
    run = rejudged["jax-shared-starved"]
    assert run.verdict == "idle" and run.info["rejudged"]["recorded_verdict"] == OK
    assert [c["code"] for c in run.causes] == ["input_bound", "gpu_shared"]
    assert OK not in set(run.epochs["verdict"])


@pytest.mark.parametrize(("name", "lines"), [
    ("jax-healthy", ["Verdict: OK", "Status: completed, 8.0 s", "backend jax",
                     "GPU 0 (NVIDIA H200) [ok]: mean util this process 79% (device 78%), idle "
                     "4% of its readings after step 0", "(this process 107,988 MiB)",
                     "Causes: none found", "step 0 s"]),
    ("torch-healthy", ["GPU 0 (NVIDIA H200) [ok]: mean util this process 46% (device 45%)",
                       "(this process 2,472 MiB)"]),
    ("jax-starved", ["Verdict: IDLE", "Status: stopped_idle",
                     "mean util this process 0% (device 0%), idle 100% of its readings",
                     "1. [warning] input_bound: The training loop waited for data 96%"]),
    ("torch-hidden", ["Verdict: CPU", "GPUs: none watched", "1. [error] gpus_hidden:",
                      "Placement: step 0 compute: on the CPU"]),
    ("jax-shared-starved", ["Verdict: IDLE", "mean util this process 0% (device 100%)",
                            "(this process 107,984 MiB)", "the run recorded the verdict ok"]),
])
def test_the_report_text_of_the_real_runs(rejudged, name, lines):
    text = summary_text(rejudged[name])
    for line in lines:
        assert line in text, line
    assert "Epochs:" in text and "n/a" not in text.split("Epochs:")[0]
