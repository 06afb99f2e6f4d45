"""Real run folders from an NVIDIA H200 (tests/data/h200, see its README): what `load_run`, the
report and the verdict rules make of real NVML readings.

The replay feeds each folder's readings and batches through a `Timeline` in time order, as the
sampler and the training thread did, and judges them with the run's own facts from `run.json`.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from gpu_watch import load_run
from gpu_watch.causes import Cause
from gpu_watch.nvml import Reading
from gpu_watch.report import summary_text
from gpu_watch.runlog import SAMPLE_COLUMNS
from gpu_watch.timeline import Timeline
from gpu_watch.verdict import OK, GPUStats, Judgement, Setting, judge

H200 = Path(__file__).parent / "data" / "h200"
VALUES = ("util_pct", "mem_util_pct", "mem_used_mib", "mem_total_mib", "proc_mem_mib",
          "proc_util_pct", "procs", "power_w", "temp_c", "sm_clock_mhz")
# run folder -> (status, verdict, cause codes, batch rows, sample rows, epochs), as recorded
RECORDED = {
    "jax-healthy": ("completed", "ok", [], 1410, 41, 89),
    "torch-healthy": ("completed", "ok", [], 197, 41, 13),
    "jax-starved": ("stopped_idle", "idle", ["input_bound"], 19, 28, 1),
    "torch-hidden": ("completed", "cpu_fallback", ["gpus_hidden"], 64, 0, 2),
    "jax-shared-starved": ("completed", "ok", [], 30, 52, 2),
}
# Epochs the rules judge differently from the recorded verdict, which judged the device's
# utilization: in jax-healthy's epoch 0 the two readings after step 0 have the device at 0 % and
# 6 %, but this process at 20 % and 2 %: half its own readings idle is not more than half.
REJUDGED = {"jax-healthy": {0: "ok"}}


def _value(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def setting_of(info: dict) -> Setting:
    """The facts a Monitor judges with, as recorded in run.json."""
    placement = info.get("placement") or {}
    framework = info["framework"]
    return Setting(
        compute_on_gpu=placement.get("compute_on_gpu"),
        framework_gpus=len(framework["gpus"]),
        nvml_error=info["nvml"]["error"],
        nvml_gpus=info["nvml"]["gpus_seen"],
        visible_gpus=len(info["devices"]),
        cuda_visible_devices=info["cuda_visible_devices"],
        cuda_build=framework.get("cuda_build"),
        cpu_compute_examples=tuple(placement.get("cpu_compute_examples") or ()),
        environment=tuple(Cause.from_dict(f) for f in info["environment"]["findings"]),
        idle_threshold_pct=info["config"]["idle_threshold_pct"],
        no_process_utilization=tuple(off["gpu"] for off in info["nvml"]["switched_off"]
                                     if off["metric"] == "proc_util"),
    )


def replay(run) -> tuple[Judgement, list[str], list[GPUStats]]:
    """The run's verdict, its epochs' verdicts and its GPU statistics, judged anew."""
    config = run.info["config"]
    gpus = [d["nvml_index"] for d in run.info["devices"]]
    tl = Timeline(gpus, config["idle_threshold_pct"], config["idle_patience_s"],
                  config["interval_s"])
    setting = setting_of(run.info)
    events = []
    for time_s, rows in run.samples.groupby("time_s", sort=True):
        events.append((float(time_s), 1, [
            Reading(time_s=float(time_s), gpu=int(r.gpu), lost=bool(r.lost),
                    **{name: _value(getattr(r, name)) for name in VALUES})
            for r in rows.itertuples()]))
    events += [(float(b.time_s), 0, b) for b in run.batches.itertuples()]
    epoch, epoch_verdicts = None, []
    for _, kind, payload in sorted(events, key=lambda e: e[:2]):
        if kind:
            tl.add_readings(payload)
            continue
        if payload.epoch != epoch:
            if epoch is not None:
                epoch_verdicts.append(judge(setting, tl.epoch_stats(), None).verdict)
            epoch = payload.epoch
            tl.begin_epoch(epoch)
        tl.add_batch(int(payload.epoch), int(payload.batch), int(payload.steps),
                     payload.time_s - payload.step_s, payload.time_s, _value(payload.wait_s))
    epoch_verdicts.append(judge(setting, tl.epoch_stats(), None).verdict)
    # Where training waited inside a step the sampler saw it, and only epochs.csv kept that.
    epochs = run.epochs
    wait = float((epochs.wait_fraction * epochs.duration_s).sum() / epochs.duration_s.sum())
    return judge(setting, tl.run_stats(), wait), epoch_verdicts, tl.run_stats()


@pytest.fixture(scope="module")
def runs():
    return {name: load_run(H200 / name) for name in RECORDED}


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
def test_the_rules_reach_the_recorded_verdicts_from_the_real_readings(runs, name):
    run = runs[name]
    judgement, epoch_verdicts, _ = replay(run)
    assert judgement.verdict == run.verdict
    assert [c.code for c in judgement.causes] == [c["code"] for c in run.causes]
    assert judgement.gpu_verdicts == {int(k): v for k, v in run.info["gpu_verdicts"].items()}
    expected = list(run.epochs["verdict"])
    for epoch, verdict in REJUDGED.get(name, {}).items():
        assert epoch_verdicts[epoch] == verdict != expected[epoch]
        expected[epoch] = verdict
    # A reading that lands between two epochs may count to either: compare the tallies.
    assert Counter(epoch_verdicts) == Counter(expected)


def test_a_short_real_epoch_without_a_reading_is_unmonitored_never_idle(runs):
    epochs = runs["jax-healthy"].epochs
    unread = epochs[epochs["gpu_util_mean"].isna()]
    assert len(unread) > 0 and unread["verdict"].eq("unmonitored").all()
    assert epochs["verdict"].iloc[0] == "idle"  # step 0 compiles for 2.9 s in the first epoch


def test_the_real_starved_run_is_idle_and_input_bound(runs):
    judgement, _, (gpu,) = replay(runs["jax-starved"])
    assert (gpu.util_mean, gpu.idle_fraction, gpu.proc_seen, gpu.others_seen) == (
        0.0, 1.0, True, False)
    assert judgement.causes[0].evidence["wait_fraction"] > 0.9
    assert runs["jax-starved"].info["idle"]["events"][0]["action"] == "stop"


def test_the_real_shared_gpu_shows_another_process_busy_and_this_one_idle(runs):
    run = runs["jax-shared-starved"]
    samples = run.samples
    assert samples["util_pct"].ge(99).all() and samples["proc_util_pct"].eq(0).all()
    assert samples["procs"].eq(2).all()
    _, _, (gpu,) = replay(run)
    assert (gpu.proc_seen, gpu.others_seen) == (True, True)
    assert run.epochs["wait_fraction"].min() > 0.9


def test_a_gpu_kept_busy_by_another_process_is_not_ok_for_this_training(runs):
    judgement, epoch_verdicts, _ = replay(runs["jax-shared-starved"])
    assert judgement.verdict != OK
    assert OK not in epoch_verdicts


@pytest.mark.parametrize(("name", "lines"), [
    ("jax-healthy", ["Verdict: OK", "Status: completed, 8.0 s", "backend jax",
                     "GPU 0 (NVIDIA H200) [ok]: mean util this process 52% (device 52%)",
                     "(this process 107,988 MiB)", "Causes: none found"]),
    ("torch-healthy", ["GPU 0 (NVIDIA H200) [ok]: mean util this process 37% (device 36%)",
                       "(this process 2,472 MiB)"]),
    ("jax-starved", ["Verdict: IDLE", "Status: stopped_idle",
                     "mean util this process 0% (device 0%), idle 100% of measured time",
                     "1. [warning] input_bound: The training loop waited for data 96%"]),
    ("torch-hidden", ["Verdict: CPU", "GPUs: none watched", "1. [error] gpus_hidden:",
                      "Placement: step 0 compute: on the CPU"]),
    ("jax-shared-starved", ["mean util this process 0% (device 100%)",
                            "(this process 107,984 MiB)"]),
])
def test_the_report_text_of_the_real_runs(runs, name, lines):
    text = summary_text(runs[name])
    for line in lines:
        assert line in text, line
    assert "Epochs:" in text and "n/a" not in text.split("Epochs:")[0]
