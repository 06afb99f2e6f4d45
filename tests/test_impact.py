"""What each cause cost, and what a fix could buy: exact figures on scripted runs.

Each scenario scripts a run whose right answer is known to the second and the joule: rows fed
to the rules directly, run folders written by `runfolders`, and a `Monitor` on a fake GPU
driven by `monitors`, whose `run.json` must carry the same figures.
"""

from __future__ import annotations

import html
import io
import json
import time
import warnings

import keras
import numpy as np
import pytest
from monitors import FrameworkWithGPUs, monitor_on_gpu
from pacing import Pause
from runfolders import run_info, synthetic_run, write_run

from gpu_watch import GPUWatch, GPUWatchWarning, load_run, report
from gpu_watch.cli import main as cli_main
from gpu_watch.judging.causes import cause
from gpu_watch.judging.impact import (
    Impact,
    cause_impacts,
    cause_totals,
    first_impact_line,
    impact_sentence,
    measured_speedup,
    run_impacts,
    with_impacts,
)
from gpu_watch.judging.usage import UsageMeter, usage_of_frames
from gpu_watch.runlog import RunRecord
from gpu_watch.sensing.nvml import Reading
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess
from gpu_watch.training import placement as placement_module

THRESHOLD = 10.0


def batches(ends, epoch=0, step_s=0.5, wait_s=None):
    return [{"epoch": epoch, "batch": i, "steps": 1, "time_s": t, "step_s": step_s,
             "wait_s": wait_s} for i, t in enumerate(ends)]


def loop(step0_end_s=1.0, batches_after=10, seconds=1.0):
    """Step 0 ending at `step0_end_s`, then `batches_after` batches of `seconds` each."""
    ends = [step0_end_s] + [step0_end_s + seconds * i for i in range(1, batches_after + 1)]
    return batches(ends, step_s=seconds)


def samples(gpu, times, util, power_w=100.0, others=None, column="util_pct", **extra):
    return [{"time_s": t, "gpu": gpu, column: util, "power_w": power_w,
             "others_util_pct": others, **extra} for t in times]


def usage(batch_rows, sample_rows, duration_s, interval_s=0.5):
    meter = UsageMeter(THRESHOLD, interval_s)
    meter.add_batches(batch_rows)
    meter.add_samples(sample_rows)
    return meter.usage(duration_s)


def info_for(causes, verdict="idle", gpus=(0,), **extra):
    return RunRecord.from_json({"verdict": verdict, "causes": [c.to_dict() for c in causes],
            "devices": [{"nvml_index": g} for g in gpus],
            "gpu_verdicts": {str(g): verdict for g in gpus if verdict in ("ok", "idle")},
            "gpu_judged_by": {str(g): "device" for g in gpus}, **extra})


# -- the meter -------------------------------------------------------------------------------


def test_the_meter_leaves_step_zero_out_and_weighs_each_reading_by_its_period():
    # Step 0 ends at 1.0 s; readings every 0.5 s; idle (0 %) from 3.0 s on, power 100 W then.
    rows = samples(0, [0.5, 1.0, 1.5, 2.0, 2.5], 90.0, power_w=300.0)
    rows += samples(0, [3.0, 3.5, 4.0], 0.0, power_w=100.0)
    use = usage(batches([1.0, 2.0, 3.0, 4.0]), rows, duration_s=4.0)
    device = use.gpus[0]["device"]
    assert use.step0_end_s == 1.0 and use.loop_s == 3.0 and use.batches == 3
    assert device.measured_s == 3.0  # 1.0 s to 4.0 s: step 0's readings count nothing
    assert device.idle_s == 1.5 and device.idle_fraction == 0.5
    assert device.idle_power_w == 100.0 and device.idle_energy_j == 150.0
    assert use.span_s == 3.0


def test_overlapping_hooks_count_each_second_once():
    # On JAX and torch, Keras dispatches steps ahead: a batch's hooks span several steps, so
    # summed step times exceed the wall time. The time since the batch before it does not.
    rows = [{"epoch": 0, "time_s": 1.0, "step_s": 1.0, "wait_s": None}]
    rows += [{"epoch": 0, "time_s": 1.0 + 0.1 * i, "step_s": 0.7, "wait_s": None}
             for i in range(1, 11)]
    rows += [{"epoch": 1, "time_s": 3.0, "step_s": 0.2, "wait_s": 0.05},
             {"epoch": 1, "time_s": 3.1, "step_s": 0.7, "wait_s": None}]
    use = usage(rows, [], duration_s=3.1)
    assert use.loop_s == pytest.approx(1.0 + 0.25 + 0.1)  # the pause between epochs left out
    assert use.batches == 12


def test_rows_without_a_time_or_gpu_are_skipped():
    nan = float("nan")
    use = usage(batches([1.0, nan, 2.0]), [{"time_s": nan, "gpu": 0, "util_pct": 0.0},
                                           {"time_s": 1.5, "gpu": nan, "util_pct": 0.0}],
                duration_s=2.0)
    assert use.loop_s == 1.0 and use.batches == 1 and use.gpus == {}


def test_the_verdicts_own_column_decides_where_the_run_has_it():
    rows = samples(0, [1.5, 2.0], 50.0, judged_util_pct=0.0, proc_util_pct=90.0)
    use = usage(batches([1.0, 2.0]), rows, duration_s=2.0)
    assert use.gpus[0]["judged"].idle_s == 1.0
    assert use.gpus[0]["process"].idle_s == 0.0 and use.gpus[0]["device"].idle_s == 0.0


# -- the rules, one cause at a time ----------------------------------------------------------


def test_input_bound_costs_the_wait_and_bounds_the_speed_up():
    # Step 0 ends at 1 s, ten batches of 1 s follow, the run lasts 12 s; 40 % of the loop
    # waiting, the GPU idle at 80 W. Step 0's own batch waited as the mean batch did: 0.4 s.
    rows = samples(0, [1.0 + 0.5 * i for i in range(1, 23)], 0.0, power_w=80.0)
    use = usage(loop(), rows, duration_s=12.0)
    info = info_for([cause("input_bound", wait_fraction=0.4)])
    [impact] = cause_impacts(info, use)
    assert impact.wall_lost_s == pytest.approx(4.4)
    assert impact.gpu_idle_s == pytest.approx(4.4)
    assert impact.energy_lost_j == pytest.approx(352.0)
    assert impact.speedup_bound_x == pytest.approx(12.0 / 7.6)
    assert "mean power while idle" in impact.energy_method and impact.not_measured is None
    assert "plus 0.40 s for the batches whose wait was not measured" in impact.method
    assert impact_sentence("input_bound", impact, 12.0) == (
        "input_bound: training waited for data 37% of the run's time (4.4 of 12.0 s) with the GPU "
        "idle, about 0.4 kJ; a pipeline that keeps up would make it up to 1.6x faster.")


def test_step_zero_never_waited_longer_than_it_took():
    use = usage(loop(step0_end_s=0.1, batches_after=2), [], duration_s=2.1)
    [impact] = cause_impacts(info_for([cause("input_bound", wait_fraction=0.5)]), use)
    assert impact.wall_lost_s == pytest.approx(1.1)  # 1.0 s of the loop, 0.1 s of step 0


def test_each_epochs_first_batch_waited_as_the_mean_batch():
    # Epoch 1's first batch was fetched before its hook began: its wait is unmeasured (None).
    rows = loop() + [{"epoch": 1, "batch": 0, "steps": 1, "time_s": 13.0, "step_s": 1.0,
                      "wait_s": None}]
    use = usage(rows, [], duration_s=13.0)
    assert use.epoch_starts == 1 and use.batches == 11 and use.loop_s == 11.0
    [impact] = cause_impacts(info_for([cause("input_bound", wait_fraction=0.5)]), use)
    mean_wait = 5.5 / 11
    assert impact.wall_lost_s == pytest.approx(5.5 + 2 * mean_wait)  # step 0's, epoch 1's


def test_input_bound_reads_the_recorded_wait_share_and_loop_first():
    use = usage(loop(), samples(0, [2.0], 0.0), duration_s=12.0)
    info = info_for([cause("input_bound", wait_fraction=0.4)],
                    wait={"fraction": 0.25, "wait_s": 2.0, "loop_s": 8.0,
                          "measure": "sampled_ticks", "ticks": 40})
    [impact] = cause_impacts(info, use)
    assert impact.wall_lost_s == pytest.approx(2.2)
    assert impact.speedup_bound_x == pytest.approx(12.0 / 9.8)
    assert "sampled_ticks" in impact.method


def test_input_bound_on_every_idle_gpu_and_without_power():
    use = usage(loop(),
                samples(0, [2.0], 0.0, power_w=None) + samples(1, [2.0], 0.0, power_w=None),
                duration_s=12.0)
    info = info_for([cause("input_bound", wait_fraction=0.5)], gpus=(0, 1))
    [impact] = cause_impacts(info, use)
    assert impact.wall_lost_s == pytest.approx(5.5) and impact.gpu_idle_s == pytest.approx(11.0)
    assert impact.energy_lost_j is None and impact.energy_method.startswith("not measured")


def test_input_bound_falls_back_on_the_runs_mean_power():
    use = usage(loop(), samples(0, [2.0], 0.0, power_w=None), duration_s=12.0)
    info = info_for([cause("input_bound", wait_fraction=0.5)],
                    energy={"gpus": {"0": {"power_mean_w": 200.0}}})
    [impact] = cause_impacts(info, use)
    assert impact.energy_lost_j == pytest.approx(1100.0)
    assert "over the run" in impact.energy_method


def test_input_bound_with_no_time_left_has_no_bound():
    use = usage(batches([0.0, 10.0], step_s=10.0), [], duration_s=10.0)
    [impact] = cause_impacts(info_for([cause("input_bound", wait_fraction=1.0)]), use)
    assert impact.wall_lost_s == 10.0 and impact.speedup_bound_x is None
    assert "all its time waiting" in impact.not_measured


def test_input_bound_without_a_wait_share_is_not_measured():
    use = usage(batches([1.0, 2.0]), [], duration_s=2.0)
    [impact] = cause_impacts(info_for([cause("input_bound")]), use)
    assert impact == Impact(not_measured="no wait share was measured")


def test_slow_callbacks_cost_the_named_hooks_time_at_most_the_time_between_steps():
    use = usage(loop(), samples(0, [2.0], 0.0, power_w=None), duration_s=12.0)
    named = cause("slow_callbacks", other_fraction=0.5,
                  callbacks=[{"name": "SlowLogger", "hook_s": 3.0},
                             {"name": "ProgbarLogger", "hook_s": 0.5}])
    info = info_for([named], breakdown={"other_s": 5.0, "loop_s": 10.0})
    [impact] = cause_impacts(info, use)
    assert impact.wall_lost_s == pytest.approx(3.5) and impact.gpu_idle_s == pytest.approx(3.5)
    assert impact.speedup_bound_x == pytest.approx(12.0 / 8.5)
    assert impact.method.startswith("the named callbacks' batch hooks, timed,")
    # Hooks that took longer than the time between steps (they ran on a pool thread, beside
    # the loop) cost no more than that time.
    capped = info_for([named], breakdown={"other_s": 2.0, "loop_s": 10.0})
    assert cause_impacts(capped, use)[0].wall_lost_s == pytest.approx(2.0)
    untimed = info_for([cause("slow_callbacks", other_fraction=0.5, callbacks=[])],
                       breakdown={"other_s": 5.0, "loop_s": 10.0})
    [impact] = cause_impacts(untimed, use)
    assert impact.wall_lost_s == pytest.approx(5.0) and "no callback's hooks" in impact.method
    sentence = impact_sentence("slow_callbacks", impact, 12.0)
    assert sentence.startswith("slow_callbacks: callbacks' batch hooks took 42% of the run's")
    assert "up to 1.7x faster" in sentence


def test_slow_callbacks_from_the_share_where_the_breakdown_is_missing():
    use = usage(loop(), [], duration_s=12.0)
    assert use.loop_s == 10.0
    [impact] = cause_impacts(info_for([cause("slow_callbacks", other_fraction=0.5)]), use)
    assert impact.wall_lost_s == pytest.approx(5.0)
    [missing] = cause_impacts(info_for([cause("slow_callbacks")]), use)
    assert missing == Impact(not_measured="the time between steps was not measured")


def four_gpus_one_used(judged=None):
    """Four GPUs, step 0 ends at 2 s, the run at 12 s; GPU 0 busy, GPUs 1-3 idle at 60 W."""
    times = [2.0 + 0.5 * i for i in range(1, 21)]
    rows = samples(0, times, 95.0, power_w=400.0)
    for gpu in (1, 2, 3):
        rows += samples(gpu, times, 0.0, power_w=60.0)
    use = usage(batches([2.0, 12.0], step_s=10.0), rows, duration_s=12.0)
    found = cause("process_not_on_gpu", idle_gpus=[1, 2, 3], busy_gpus=[0])
    info = info_for([found], gpus=(0, 1, 2, 3))
    info.gpu_verdicts = {"0": "ok", "1": "idle", "2": "idle", "3": "idle"}
    if judged:
        info.judged = judged
    return info, use


def test_idle_gpus_of_a_multi_gpu_training():
    info, use = four_gpus_one_used()
    [impact] = cause_impacts(info, use)
    assert impact.gpu_idle_s == 30.0  # three GPUs, 10 s each after step 0
    assert impact.energy_lost_j == 1800.0
    assert impact.wall_lost_s == 7.5  # the 10 s loop spread over four GPUs takes 2.5 s
    assert impact.speedup_bound_x == pytest.approx(12.0 / 4.5)
    assert first_impact_line([{"code": "process_not_on_gpu", "impact": impact.to_dict()}],
                             12.0) == ("process_not_on_gpu: 30.0 s of GPU time left idle, about "
                                       "1.8 kJ; a fix would make it up to 2.7x faster.")


def test_idle_gpus_use_the_judged_idle_share_where_the_run_records_it():
    info, use = four_gpus_one_used(judged={str(g): {"by": "device", "idle_fraction": 0.5,
                                                    "util_mean_pct": 5.0, "readings": 20}
                                           for g in (1, 2, 3)})
    [impact] = cause_impacts(info, use)
    assert impact.gpu_idle_s == 15.0 and impact.energy_lost_j == 900.0


def test_training_on_the_cpu_leaves_every_gpu_unused():
    info = info_for([cause("forced_cpu_placement"), cause("gpu_memory_limited")],
                    verdict="cpu_fallback", gpus=(0, 1),
                    energy={"total_j": 5000.0, "gpus": {}})
    use = usage(batches([1.0, 2.0, 3.0, 4.0, 5.0]), [], duration_s=25.0)
    lead, other = cause_impacts(info, use)
    assert lead.gpu_idle_s == 50.0 and lead.energy_lost_j == 5000.0
    assert lead.speedup_measured_x is None and lead.wall_lost_s is None
    assert "measure_gpu_speedup=True" in lead.not_measured
    assert other.not_measured == "the GPU time left unused is counted once, under " \
                                 "forced_cpu_placement"
    # Timed on the GPU after training: a CPU step of 1.0 s against 0.1 s.
    info.gpu_trial = {"cpu_step_s": 1.0, "gpu_step_s": 0.1, "steps": 5}
    lead, _ = cause_impacts(info, use)
    assert lead.speedup_measured_x == 10.0
    assert lead.wall_lost_s == pytest.approx(4.0 * 0.9)  # the loop's 4 s, a tenth of it left
    assert lead.not_measured is None


def test_hidden_gpus_count_without_their_energy():
    info = info_for([cause("gpus_hidden")], verdict="cpu_fallback", gpus=(),
                    nvml={"gpus_seen": 4})
    [impact] = cause_impacts(info, usage([], [], duration_s=10.0))
    assert impact.gpu_idle_s == 40.0 and impact.energy_lost_j is None


def test_no_driver_costs_nothing_measured():
    info = info_for([cause("no_nvidia_driver")], verdict="cpu_fallback", gpus=())
    [impact] = cause_impacts(info, usage([], [], duration_s=10.0))
    assert impact.gpu_idle_s is None and "no GPU could be seen" in impact.not_measured


def test_a_shared_gpu_costs_the_time_this_training_was_starved():
    rows = samples(0, [1.5, 2.0, 2.5, 3.0], 0.0, others=80.0, column="proc_util_pct",
                   power_w=200.0)
    rows += samples(0, [3.5, 4.0], 50.0, others=80.0, column="proc_util_pct")
    rows += samples(0, [4.5], 0.0, others=0.0, column="proc_util_pct")
    use = usage(batches([1.0, 4.5], step_s=3.5), rows, duration_s=4.5)
    info = info_for([cause("gpu_shared", gpu=0)])
    info.gpu_judged_by = {"0": "process"}
    [impact] = cause_impacts(info, use)
    assert impact.wall_lost_s == 2.0 and impact.gpu_idle_s == 2.0
    assert impact.energy_lost_j == 400.0
    assert "overlap" in impact.not_measured
    # Half the starved seconds without a power reading: at the others' mean, not 0 W.
    rows[0]["power_w"] = rows[1]["power_w"] = None
    [impact] = cause_impacts(info, usage(batches([1.0, 4.5], step_s=3.5), rows,
                                         duration_s=4.5))
    assert impact.energy_lost_j == 400.0 and "mean of those with one" in impact.energy_method
    for row in rows[:4]:
        row["power_w"] = None  # none while starved, though the later idle second has one
    [impact] = cause_impacts(info, usage(batches([1.0, 4.5], step_s=3.5), rows,
                                         duration_s=4.5))
    assert impact.energy_lost_j is None and impact.energy_method.startswith("not measured")
    info.gpu_judged_by = {"0": "device"}  # no figure of its own: when starved is unknown
    [impact] = cause_impacts(info, usage(batches([1.0, 4.5]),
                                         samples(0, [2.0], 0.0, others=80.0), duration_s=4.5))
    assert impact.gpu_idle_s is None and "no figure of this training's own" in \
        impact.not_measured


@pytest.mark.parametrize("code", ["low_sm_activity", "tensor_cores_unused",
                                  "process_not_attributable"])
def test_causes_nothing_measures_say_why(code):
    [impact] = cause_impacts(info_for([cause(code)], verdict="ok"), usage([], [], 1.0))
    assert impact.gpu_idle_s is None and impact.wall_lost_s is None and impact.not_measured


def test_measured_speedup_needs_both_times():
    assert measured_speedup(0.3, 0.1) == pytest.approx(3.0)
    assert measured_speedup(None, 0.1) is None and measured_speedup(0.3, 0.0) is None
    assert measured_speedup(float("nan"), 0.1) is None


def test_an_impact_survives_json():
    impact = Impact(1.23456, 2.0, 3.0, "m", 1.5, None, "how", None)
    again = Impact.from_dict(json.loads(json.dumps(impact.to_dict())))
    assert again == Impact(1.235, 2.0, 3.0, "m", 1.5, None, "how", None)


# -- run folders: stored, recomputed, totalled -----------------------------------------------


def input_bound_folder(log_dir, name, wait_fraction=0.5, started_at="2026-11-26T10:00:00Z"):
    """Three epochs of 10 batches of 0.1 s after 0.1 s waits, readings every 0.5 s at 0 %
    (the generator's power: 70 W at 0 %), judged idle and input bound."""
    return synthetic_run(log_dir, name, epochs=3, batches_per_epoch=10, step_s=0.1,
                         wait_s=0.1, util=lambda t, g: t * 0.0, verdict="idle",
                         causes=[cause("input_bound", wait_fraction=wait_fraction).to_dict()],
                         started_at=started_at)


def test_a_recorded_run_gets_its_impact_from_its_files(tmp_path):
    run = load_run(input_bound_folder(tmp_path, "old"))
    [item] = run_impacts(run)
    # 30 batches of 0.2 s end at 6.0 s; step 0 ends at 0.2 s: a loop of 5.8 s (29 batches),
    # half waiting: 2.9 s, and step 0's batch waited 0.1 s as well.
    assert item["impact"]["wall_lost_s"] == 3.0
    assert item["impact"]["gpu_idle_s"] == 3.0
    assert item["impact"]["energy_lost_j"] == 210.0  # 70 W idle
    assert item["impact"]["speedup_bound_x"] == 2.0
    text = report.summary_text(run)
    lines = text.splitlines()
    assert lines[1].startswith("Verdict: IDLE")
    assert lines[2] == ("Cost: input_bound: training waited for data 50% of the run's time (3.0 of "
                        "6.0 s) with the GPU idle, about 0.2 kJ; a pipeline that keeps up would "
                        "make it up to 2.0x faster.")
    assert "     Cost: training waited for data 50% of the run's time" in text
    assert lines[2][len("Cost: "):] in report.banner_text(run)
    page = html.unescape(report.report_html(run, None, None))
    assert "Cost: training waited for data 50% of the run's time (3.0 of 6.0 s)" in page
    assert "input_bound: training waited for data 50% of the run's time" in page  # the banner


def test_a_cost_no_run_measured_reads_not_measured_never_zero(tmp_path):
    info = run_info("no-driver", verdict="cpu_fallback", gpus=(), duration_s=60.0,
                    causes=["no_nvidia_driver"])
    info["causes"][0]["impact"] = Impact(not_measured="no GPU could be seen").to_dict()
    write_run(tmp_path, "no-driver", info)
    out = io.StringIO()
    assert cli_main(["report", str(tmp_path)], out=out) == 0
    [row] = [line for line in out.getvalue().splitlines()
             if line.strip().startswith("no_nvidia_driver")]
    assert row.split() == ["no_nvidia_driver", "1", "0", "not", "measured", "not", "measured",
                           "not", "measured"]
    assert "Costliest runs:" not in out.getvalue()  # a run that cost nothing measured


def test_a_stored_impact_is_read_not_recomputed(tmp_path):
    info = run_info("stored", verdict="idle", duration_s=100.0)
    stored = {**cause("input_bound", wait_fraction=0.5).to_dict(),
              "impact": Impact(wall_lost_s=40.0, gpu_idle_s=40.0, energy_lost_j=4000.0,
                               speedup_bound_x=100 / 60).to_dict()}
    info["causes"] = [stored]
    run = load_run(write_run(tmp_path, "stored", info))
    assert run_impacts(run) == [stored]
    assert report.summary_text(run).splitlines()[2] == (
        "Cost: input_bound: training waited for data 40% of the run's time (40.0 of 100.0 s) with "
        "the GPU idle, about 4.0 kJ; a pipeline that keeps up would make it up to 1.7x faster.")


def test_the_report_of_a_log_folder_totals_the_cost_worst_runs_first(tmp_path):
    input_bound_folder(tmp_path, "half", 0.5, "2026-11-26T10:00:00Z")
    input_bound_folder(tmp_path, "tenth", 0.1, "2026-11-26T11:00:00Z")
    hidden = run_info("hidden", verdict="cpu_fallback", gpus=(), duration_s=3600.0,
                      causes=["gpus_hidden"], started_at="2026-11-26T12:00:00Z")
    hidden["nvml"]["gpus_seen"] = 2
    write_run(tmp_path, "hidden", hidden)
    write_run(tmp_path, "fine", run_info("fine", started_at="2026-11-26T09:00:00Z"))
    out = io.StringIO()
    assert cli_main(["report", str(tmp_path)], out=out) == 0
    lines = out.getvalue().splitlines()
    start = lines.index("Cost by cause over 4 runs (GPU time left idle, the energy the GPUs "
                        "drew meanwhile, wall time lost):")
    assert [line.split()[:6] for line in lines[start + 1:start + 4]] == [
        ["cause", "runs", "measured", "GPU-hours", "energy", "wall"],
        # No energy reading without a GPU watched: not measured, never 0 J.
        ["gpus_hidden", "1", "1", "2.000", "not", "measured"],
        ["input_bound", "2", "2", "0.001", "0.3", "kJ"],  # 3.0 s + 0.6 s; 210 J + 42 J
    ]
    worst = lines.index("Costliest runs:")
    assert [line.split()[0] for line in lines[worst + 2:]] == ["hidden", "half", "tenth"]
    # The hidden run's energy was never measured: said so, not 0 J.
    assert lines[worst + 2].split()[:5] == ["hidden", "cpu_fallback", "2.000", "not", "measured"]


def test_cause_totals_keep_unmeasured_causes_apart():
    runs = [[{"code": "low_sm_activity", "impact": Impact(not_measured="x").to_dict()}],
            [{"code": "input_bound", "impact": Impact(1.0, 2.0, 3.0).to_dict()},
             {"code": "low_sm_activity"}]]
    totals = {t.code: t for t in cause_totals(runs)}
    assert (totals["low_sm_activity"].runs, totals["low_sm_activity"].measured_runs) == (2, 0)
    assert (totals["input_bound"].gpu_idle_s, totals["input_bound"].energy_lost_j,
            totals["input_bound"].wall_lost_s) == (2.0, 3.0, 1.0)


def test_with_impacts_leaves_the_run_as_it_was():
    info = info_for([cause("input_bound", wait_fraction=0.5)])
    before = json.dumps(info.to_json(), sort_keys=True)
    [item] = with_impacts(info, usage(loop(batches_after=2), [], duration_s=3.0))
    assert item["impact"]["wall_lost_s"] == 1.5
    assert json.dumps(info.to_json(), sort_keys=True) == before


# -- a Monitor on a fake GPU: run.json carries the same figures ------------------------------


def test_the_monitor_stores_each_causes_impact(tmp_path):
    # The sampler ticks once at start (interval 60 s); the readings are scripted: this
    # process's own utilization 0 % at 80 W every 0.5 s after step 0 (0 to 1 s), and four
    # batches of 0.5 s, each after waiting 1.0 s. The run lasts 8 s by its clock.
    monitor = monitor_on_gpu(tmp_path, FakeNVML([FakeGPU()]), interval_s=60.0)
    monitor.begin_epoch(0)
    monitor.timeline.add_batch(0, 0, 1, 0.0, 1.0, None)
    monitor.first_step({"compute_on_gpu": True})
    for i, end in enumerate((2.5, 4.0, 5.5, 7.0), 1):
        monitor.timeline.add_batch(0, i, 1, end - 0.5, end, 1.0)
    for i in range(1, 13):
        monitor.timeline.add_readings([Reading(
            time_s=1.0 + 0.5 * i, gpu=0, util_pct=0.0, proc_util_pct=0.0, power_w=80.0,
            procs=1, proc_listed=True, proc_mem_mib=500.0, mem_used_mib=800.0)])
    t0 = monitor.t0
    monitor.clock = lambda: t0 + 8.0
    monitor.end_epoch(0, {})
    monitor.finish("completed")
    info = json.loads((monitor.run_dir / "run.json").read_text())
    assert info["verdict"] == "idle"
    found = {c["code"]: c for c in info["causes"]}
    wait = info.get("wait") or {}
    fraction = wait.get("fraction", found["input_bound"]["evidence"]["wait_fraction"])
    loop_s = wait.get("loop_s", 6.0)  # four batches of 1.5 s after step 0
    lost = fraction * loop_s
    lost += min(lost / 4, 1.0)  # step 0's batch: the mean of the four after it
    impact = found["input_bound"]["impact"]
    assert impact["wall_lost_s"] == pytest.approx(lost, abs=1e-3)
    assert impact["gpu_idle_s"] == pytest.approx(lost, abs=1e-3)
    assert impact["energy_lost_j"] == pytest.approx(80.0 * lost, abs=0.1)
    assert impact["speedup_bound_x"] == pytest.approx(8.0 / (8.0 - lost), abs=1e-3)
    if "wait" not in info:  # today's wait share: 4 s waiting of 7 s of loop, step 0 included
        assert impact["wall_lost_s"] == pytest.approx(0.571 * 6.0 * 1.25, abs=1e-3)
    assert all("impact" in c for c in info["causes"])
    # Read back, the run gives the same figures from its stored records.
    assert run_impacts(load_run(monitor.run_dir)) == info["causes"]
    again = usage_of_frames(RunRecord.from_json(info), load_run(monitor.run_dir).samples,
                            load_run(monitor.run_dir).batches)
    assert again.loop_s == 6.0 and again.gpus[0]["process"].idle_s == 6.0


def test_the_summary_names_the_cost_after_the_verdict(tmp_path):
    from gpu_watch.report.text import summary_line

    monitor = monitor_on_gpu(tmp_path, FakeNVML([FakeGPU()]), interval_s=60.0)
    monitor.begin_epoch(0)
    monitor.timeline.add_batch(0, 0, 1, 0.0, 1.0, None)
    monitor.first_step({"compute_on_gpu": True})
    monitor.timeline.add_batch(0, 1, 1, 3.0, 3.5, 2.0)
    for t in (1.5, 2.0, 2.5, 3.0, 3.5):
        monitor.timeline.add_readings([Reading(time_s=t, gpu=0, util_pct=0.0,
                                               proc_util_pct=0.0, power_w=50.0, procs=1,
                                               proc_listed=True)])
    t0 = monitor.t0
    monitor.clock = lambda: t0 + 4.0
    monitor.finish("completed")
    lines = summary_line(monitor.record, monitor.run_dir).splitlines()
    assert lines[0].startswith("gpu-watch: verdict idle")
    assert lines[1].startswith("  cost: input_bound: training waited for data ")
    assert "a pipeline that keeps up would make it up to" in lines[1]


# -- a real Keras fit: the live record and the run folder read back agree --------------------


def test_a_starved_keras_fit_records_what_its_files_give(tmp_path, monkeypatch):
    monkeypatch.setattr(placement_module, "probe_for", lambda backend: FrameworkWithGPUs())
    fake = FakeNVML([FakeGPU(util_pct=0, power_w=75.0,
                             processes=[FakeProcess(used_mib=900, sm_util_pct=0)])])
    watch = GPUWatch(log_dir=tmp_path, nvml=fake, plot=False, verbose=0, interval_s=0.02)
    x = np.zeros((8, 4), np.float32)

    def starved():  # 0.1 s waiting before each step of 0.05 s or more: about 60 % waiting
        while True:
            time.sleep(0.1)
            yield x, x[:, :1]

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        model.fit(starved(), steps_per_epoch=8, epochs=2, verbose=0,
                  callbacks=[Pause(0.05), watch])
    run = load_run(watch.run_dir)
    stored = {c["code"]: c["impact"] for c in run.causes}
    assert run.verdict == "idle" and "input_bound" in stored
    fresh = {c["code"]: c["impact"] for c in with_impacts(
        run.record, usage_of_frames(run.record, run.samples, run.batches))}
    for field in ("wall_lost_s", "gpu_idle_s", "energy_lost_j", "speedup_bound_x"):
        assert stored["input_bound"][field] == pytest.approx(fresh["input_bound"][field],
                                                             rel=0.01), field
    impact = stored["input_bound"]
    # Energy is stored to 0.1 J, the idle seconds to the millisecond.
    assert impact["energy_lost_j"] == pytest.approx(75.0 * impact["gpu_idle_s"], abs=0.05 + 0.075)
    assert 0 < impact["wall_lost_s"] < run.info["duration_s"]
    # From the stored figures, rounded to the millisecond: near a high bound that moves it more.
    assert impact["speedup_bound_x"] == pytest.approx(
        run.info["duration_s"] / (run.info["duration_s"] - impact["wall_lost_s"]), rel=1e-2)


def test_readings_written_before_step_0_s_row_count_once_it_comes():
    """The sampler may write a reading taken after step 0 ended before the training thread has
    recorded step 0's row: the tally is the same in either order."""
    batches = [{"epoch": 0, "time_s": 1.0, "step_s": 1.0, "wait_s": None},
               {"epoch": 0, "time_s": 2.0, "step_s": 0.5, "wait_s": 0.5}]
    samples = [{"time_s": t, "gpu": 0, "judged_util_pct": u, "power_w": 100.0}
               for t, u in ((0.5, 0.0), (1.5, 0.0), (2.0, 90.0))]
    in_order, racing = UsageMeter(10.0, 0.5), UsageMeter(10.0, 0.5)
    in_order.add_batches(batches)
    in_order.add_samples(samples)
    racing.add_samples(samples[:2])  # the reading at 1.5 s before step 0's row (ends at 1.0 s)
    racing.add_batches(batches)
    racing.add_samples(samples[2:])
    assert racing.usage(2.0) == in_order.usage(2.0)
    use = racing.usage(2.0).gpus[0]["judged"]
    assert (use.measured_s, use.idle_s) == (1.0, 0.5)


def test_a_wall_time_cost_reads_in_seconds_where_the_run_s_duration_is_unknown():
    impact = Impact(wall_lost_s=2.0, gpu_idle_s=2.0, speedup_bound_x=1.5)
    assert impact_sentence("slow_callbacks", impact, None) == (
        "slow_callbacks: callbacks' batch hooks took 2.0 s with the GPU idle; cheaper or rarer "
        "hooks would make it up to 1.5x faster.")
    assert impact_sentence("input_bound", impact, 4.0).startswith(
        "input_bound: training waited for data 50% of the run's time (2.0 of 4.0 s) with")


def test_the_impact_benchmark_s_simulated_machines_build():
    """`benchmarks/impact_check.py` runs for minutes and outside CI: the machines it simulates
    are built here, so a renamed FakeNVML fault or figure fails the suite, not the benchmark."""
    import importlib.util
    import sys
    from pathlib import Path

    import pynvml

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "impact_check.py"
    spec = importlib.util.spec_from_file_location("impact_check", script)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up by name
    try:
        spec.loader.exec_module(bench)
        for gpus in (1, 4):
            nvml = bench.fake_machine(gpus)
            nvml.nvmlInit()
            assert nvml.nvmlDeviceGetCount() == gpus
            first = nvml.nvmlDeviceGetHandleByIndex(0)
            with pytest.raises(pynvml.NVMLError_NotSupported):  # no per-process samples
                nvml.nvmlDeviceGetProcessUtilization(first, 0)
    finally:
        sys.modules.pop(spec.name, None)
