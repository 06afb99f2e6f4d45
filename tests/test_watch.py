"""`gpu-watch watch`: following a run folder while it is written. The reader on its own
(torn rows, rewritten files, a folder that vanishes), the command's plain output, and the rich
screen in a real terminal: tmux runs the command against a training another process is
running, and `capture-pane` reads the screen."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from waiting import wait_until

from gpu_watch import runlog
from gpu_watch.cli import main
from gpu_watch.runlog import TailReader
from gpu_watch.views.follow import REMOTE_QUIET_S, RunFollower, find_run, judged_util
from gpu_watch.views.terminal import loop_line, run_watch_command, sparkline
from tests.runfolders import synthetic_run

ROOT = Path(__file__).resolve().parent.parent
LIVE_FIT = ROOT / "tests" / "scripts" / "live_fit.py"


def mark_running(run_dir: Path) -> None:
    """Make a written run read as one this process is still writing."""
    info = json.loads((run_dir / runlog.RUN_JSON).read_text())
    info.update(status=runlog.STATUS_RUNNING, writer=runlog.run_identity(), verdict=None,
                ended_at=None)
    runlog.write_run_json(run_dir, runlog.RunRecord.from_json(info))


# -- the pieces ------------------------------------------------------------------------------


def test_sparkline_draws_bucket_means_and_leaves_gaps_blank():
    points = [(t, 100.0 if t < 5 else 0.0) for t in range(10)] + [(3.5, math.nan)]
    assert sparkline(points, end_s=10, window_s=10, width=10) == "█████▁▁▁▁▁"
    assert sparkline([(9.5, 50.0)], end_s=10, window_s=10, width=5) == "    ▅"
    assert sparkline([(1.0, 50.0), (1.2, 100.0)], end_s=2, window_s=2, width=2) == " ▇"
    assert sparkline([(-5.0, 90.0)], end_s=10, window_s=10, width=4) == "    "  # too old


def test_a_torn_last_row_waits_for_its_end(tmp_path):
    path = tmp_path / "samples.csv"
    path.write_text("time_s,gpu,util_pct\n0.2,0,50\n0.4,0,6")
    reader = TailReader(path)
    assert reader.read() == [{"time_s": "0.2", "gpu": "0", "util_pct": "50"}]
    assert reader.torn
    with open(path, "a") as handle:
        handle.write("0\n0.6,0,")
    assert reader.read() == [{"time_s": "0.4", "gpu": "0", "util_pct": "60"}]
    with open(path, "a") as handle:
        handle.write("70\n")
    assert reader.read() == [{"time_s": "0.6", "gpu": "0", "util_pct": "70"}]
    assert not reader.torn and reader.read() == []


def test_a_rewritten_file_is_read_again_and_a_missing_one_is_empty(tmp_path):
    path = tmp_path / "epochs.csv"
    reader = TailReader(path)
    assert reader.read() == []
    path.write_text("epoch,loss\n0,1.0\n1,0.5\n")
    assert len(reader.read()) == 2
    path.write_text("epoch,x\n0,9\n")  # shorter: rewritten with a new header
    assert reader.read() == [{"epoch": "0", "x": "9"}]


def test_a_long_file_is_read_from_near_its_end(tmp_path):
    path = tmp_path / "samples.csv"
    path.write_text("time_s,util_pct\n" + "".join(f"{i},{i % 100}\n" for i in range(10_000)))
    rows = TailReader(path, tail_bytes=1000).read()
    assert 50 < len(rows) < 200
    assert rows[-1] == {"time_s": "9999", "util_pct": "99"}
    assert all(set(r) == {"time_s", "util_pct"} and r["time_s"].isdigit() for r in rows)


def test_this_trainings_utilization_is_the_judged_figure_where_the_run_has_it():
    assert judged_util({"judged_util_pct": "", "proc_util_pct": "40", "util_pct": "90"}) != 40
    assert math.isnan(judged_util({"judged_util_pct": "", "proc_util_pct": "40"}))
    assert judged_util({"judged_util_pct": "12", "proc_util_pct": "40"}) == 12.0
    assert judged_util({"proc_util_pct": "40", "util_pct": "90"}) == 40.0
    assert judged_util({"proc_util_pct": "", "util_pct": "90"}) == 90.0
    assert math.isnan(judged_util({"proc_util_pct": "", "util_pct": ""}))


def test_the_follower_reads_a_finished_run(tmp_path):
    run_dir = synthetic_run(tmp_path, "done", epochs=2, batches_per_epoch=50, step_s=0.1,
                            wait_s=0.025, util=lambda t, gpu: (t > 5) * 90.0,
                            causes=["input_bound"])
    snap = RunFollower(run_dir, clock=lambda: time.time() + 5).poll()
    assert snap.status == runlog.STATUS_COMPLETED and not snap.running
    (gpu,) = snap.gpus
    assert gpu.index == 0 and gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.latest("judged_util_pct") == 90.0 and gpu.latest("util_pct") == 90.0
    assert gpu.mem_total_mib == 81559.0 and gpu.proc_mem_mib == 2048.0
    assert snap.steps_per_s == pytest.approx(8.0, rel=0.01)  # a step every 0.125 s
    assert snap.wait_fraction == pytest.approx(0.2, abs=0.01)  # from the last epoch's row
    assert snap.epochs == 2
    assert snap.last_row_age_s == pytest.approx(5, abs=1)
    assert snap.elapsed_s == pytest.approx(12.5, abs=0.5)


def test_the_runs_wait_share_comes_first_where_run_json_has_one(tmp_path):
    run_dir = synthetic_run(tmp_path, "waits", wait_s=0.05)
    info = json.loads((run_dir / runlog.RUN_JSON).read_text())
    info["wait"] = {"fraction": 0.37, "wait_s": 1.0, "loop_s": 2.7, "measure": "batch_gaps",
                    "ticks": 40}
    runlog.write_run_json(run_dir, runlog.RunRecord.from_json(info))
    assert RunFollower(run_dir).poll().wait_fraction == 0.37


def test_the_loop_line_shows_the_share_spent_between_steps_from_the_breakdown(tmp_path):
    run_dir = synthetic_run(tmp_path, "elsewhere", wait_s=0.05)
    info = json.loads((run_dir / runlog.RUN_JSON).read_text())
    info["wait"] = {"fraction": 0.1, "wait_s": 0.27, "loop_s": 2.7, "measure": "fetch_timed"}
    info["breakdown"] = {"compute_s": 0.81, "data_wait_s": 0.27, "other_s": 1.62,
                         "loop_s": 2.7, "other_fraction": 0.6, "data_wait_fraction": 0.1}
    runlog.write_run_json(run_dir, runlog.RunRecord.from_json(info))
    snap = RunFollower(run_dir).poll()
    assert (snap.wait_fraction, snap.other_fraction) == (0.1, 0.6)
    assert "data wait 10% · between steps 60% · epochs done" in loop_line(snap)
    del info["breakdown"]  # an older run: no share between steps to show
    runlog.write_run_json(run_dir, runlog.RunRecord.from_json(info))
    assert "between steps" not in loop_line(RunFollower(run_dir).poll())


def test_a_run_written_on_another_host_runs_while_its_rows_keep_coming(tmp_path):
    run_dir = synthetic_run(tmp_path, "remote", epochs=1)
    info = json.loads((run_dir / runlog.RUN_JSON).read_text())
    info.update(status=runlog.STATUS_RUNNING, writer={"host": "elsewhere", "pid": 4242})
    runlog.write_run_json(run_dir, runlog.RunRecord.from_json(info))
    assert RunFollower(run_dir, clock=lambda: time.time() + 5).poll().running
    quiet = RunFollower(run_dir, clock=lambda: time.time() + REMOTE_QUIET_S + 1).poll()
    assert quiet.status == runlog.STATUS_INCOMPLETE


def test_find_run_takes_the_newest_run_of_a_log_folder(tmp_path):
    synthetic_run(tmp_path, "old", started_at="2026-11-26T10:00:00Z")
    new = synthetic_run(tmp_path, "new", started_at="2026-11-27T10:00:00Z")
    assert find_run(tmp_path) == new
    assert find_run(new) == new


# -- the command -----------------------------------------------------------------------------


def watch(path, sleep=lambda s: None) -> tuple[int, str]:
    out = io.StringIO()
    code = run_watch_command(str(path), out=out, refresh_s=0.01, sleep=sleep)
    return code, out.getvalue()


def test_a_finished_run_gives_plain_lines_and_the_final_verdict(tmp_path):
    run_dir = synthetic_run(tmp_path, "done", causes=["input_bound"], verdict="idle")
    code, text = watch(tmp_path)
    assert code == 0
    lines = text.splitlines()
    assert lines[0] == f"gpu-watch watch: following {run_dir}"
    assert "completed | verdict idle | GPU 0: this training 90%, device 90%, 2.3 GiB" in lines[1]
    assert lines[2] == "run ended: completed, verdict idle"
    assert lines[3].startswith("  - input_bound: ")
    assert lines[4].startswith("    remedy: ") and "\n" not in lines[4]


def test_the_final_causes_come_in_the_order_to_fix_them(tmp_path):
    synthetic_run(tmp_path, "cpu", gpus=(), causes=["no_nvidia_driver", "gpus_hidden"],
                  verdict="cpu_fallback")
    code, text = watch(tmp_path)
    assert code == 0
    causes = [line for line in text.splitlines() if line.startswith("  - ")]
    assert [line.split(":")[:2] for line in causes] == [
        ["  - First", " no_nvidia_driver"], ["  - Then", " gpus_hidden"]]


def test_a_running_run_is_followed_until_it_ends(tmp_path):
    run_dir = synthetic_run(tmp_path, "live", epochs=1)
    mark_running(run_dir)
    polls = []

    def sleep(seconds):
        polls.append(seconds)
        if len(polls) == 2:
            info = json.loads((run_dir / runlog.RUN_JSON).read_text())
            info.update(status=runlog.STATUS_COMPLETED, verdict="ok")
            runlog.write_run_json(run_dir, runlog.RunRecord.from_json(info))

    code, text = watch(run_dir, sleep)
    assert code == 0 and len(polls) == 2
    assert "running | verdict not judged yet" in text
    assert text.splitlines()[-1] == "run ended: completed, verdict ok"


@pytest.mark.parametrize("make, expected", [
    (lambda p: p / "missing", "{p}/missing: no such folder"),
    (lambda p: p, "{p}: neither a gpu-watch run folder (no run.json) nor a folder of runs"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt",
     "{p}/f.txt: not a folder (expected a run folder or a folder of runs such as "
     "gpu_watch_logs)"),
])
def test_what_is_not_a_run_gives_one_line_and_exit_2(tmp_path, make, expected):
    code, text = watch(make(tmp_path))
    assert code == 2
    assert text == "gpu-watch watch: " + expected.format(p=tmp_path) + "\n"


def test_a_run_json_that_is_not_gpu_watchs_gives_one_line_and_exit_2(tmp_path):
    (tmp_path / "run.json").write_text("{not json")
    code, text = watch(tmp_path)
    assert code == 2 and text.count("\n") == 1
    assert text.startswith(f"gpu-watch watch: {tmp_path}/run.json: not valid JSON (")
    (tmp_path / "run.json").write_text('{"a": 1}')
    assert watch(tmp_path)[1] == (f"gpu-watch watch: {tmp_path}/run.json: not written by "
                                  "gpu-watch (no schema_version)\n")


def test_a_folder_that_disappears_gives_one_line_and_exit_2(tmp_path):
    run_dir = synthetic_run(tmp_path, "gone", epochs=1)
    mark_running(run_dir)
    code, text = watch(run_dir, sleep=lambda s: shutil.rmtree(run_dir))
    assert code == 2
    assert text.splitlines()[-1] == (f"gpu-watch watch: {run_dir}: the run folder "
                                     "disappeared while being watched")
    assert "Traceback" not in text


def test_a_row_torn_while_the_command_reads_is_read_once_whole(tmp_path):
    run_dir = synthetic_run(tmp_path, "torn", epochs=1, batches_per_epoch=10)
    mark_running(run_dir)
    samples = run_dir / runlog.SAMPLES_CSV
    header = samples.read_text().splitlines()[0].split(",")
    row = {c: "" for c in header} | {"time_s": "99.0", "gpu": "0", "util_pct": "33",
                                     "proc_util_pct": "31", "judged_util_pct": "31"}
    line = ",".join(row[c] for c in header) + "\n"
    steps = iter([line[:12], line[12:], "finish"])

    def sleep(seconds):
        step = next(steps)
        if step == "finish":
            info = json.loads((run_dir / runlog.RUN_JSON).read_text())
            info.update(status=runlog.STATUS_COMPLETED, verdict="ok")
            runlog.write_run_json(run_dir, runlog.RunRecord.from_json(info))
            return
        with open(samples, "a") as handle:
            handle.write(step)

    code, text = watch(run_dir, sleep)
    assert code == 0, text
    assert "this training 31%, device 33%" in text
    assert "Traceback" not in text


def test_the_cli_runs_watch(tmp_path):
    synthetic_run(tmp_path, "done")
    out = io.StringIO()
    assert main(["watch", str(tmp_path), "--refresh", "0.5"], out=out) == 0
    assert "run ended: completed, verdict ok" in out.getvalue()
    out = io.StringIO()
    assert main(["watch", str(tmp_path / "nope")], out=out) == 2


# -- in a real terminal ----------------------------------------------------------------------


def tmux_or_skip() -> str:
    tmux = shutil.which("tmux")
    if tmux is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tmux is not installed: .ci/run installs it before the tests")
        pytest.skip("tmux is not installed (apt-get install tmux)")
    return tmux


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "TMUX")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["KERAS_BACKEND"] = "tensorflow"
    return env


def screen(tmux: str, socket: str) -> str:
    # -J: lines the terminal wrapped come back whole
    return subprocess.run([tmux, "-L", socket, "capture-pane", "-p", "-J", "-t", "watch"],
                          capture_output=True, text=True, timeout=10).stdout


def wait_for_screen(tmux: str, socket: str, check, timeout_s: float) -> str:
    """The screen once `check` accepts it; a timeout fails showing the last screen read."""
    last = [""]

    def shown():
        last[0] = screen(tmux, socket)
        return check(last[0]) and last[0]

    try:
        return wait_until(shown, "the screen to show what was expected", timeout_s=timeout_s,
                          every_s=0.5)
    except AssertionError as error:
        raise AssertionError(f"{error}; last screen:\n{last[0]}") from None


def test_watch_in_tmux_follows_a_training_another_process_runs(tmp_path):
    tmux = tmux_or_skip()
    log_dir = tmp_path / "logs"
    trainer = subprocess.Popen(
        [sys.executable, str(LIVE_FIT), str(log_dir), "--epochs", "3", "--steps", "40",
         "--on-gpu"], cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    socket = f"gpu-watch-test-{os.getpid()}"
    try:
        started = trainer.stdout.readline()
        assert started.startswith("STARTED "), started
        run_dir = Path(started.split(" ", 1)[1].strip())
        command = (f"{sys.executable} -m gpu_watch watch {log_dir} --window 30; "
                   "echo EXIT=$?; sleep 60")
        subprocess.run([tmux, "-L", socket, "-f", "/dev/null", "new-session", "-d", "-s",
                        "watch", "-x", "120", "-y", "40", "-c", str(ROOT), command],
                       env=child_env(), check=True, timeout=20)
        live = wait_for_screen(tmux, socket, lambda s: "running" in s and "this training │" in s
                               and any(c in s for c in "▅▆▇█"), 90)
        assert "gpu-watch watch · running · 0:" in live and f"run folder {run_dir}" in live
        assert "GPU 0 NVIDIA H100 80GB HBM3" in live
        assert "memory " in live and "/ 79.6 GiB" in live and "power " in live
        assert "steps/s" in live and "last row " in live
        assert trainer.stdout.readline().startswith("DONE "), "the training did not finish"
        assert trainer.wait(timeout=60) == 0
        final = wait_for_screen(tmux, socket, lambda s: "EXIT=" in s, 30)
        assert "gpu-watch watch · ended: completed · 0:" in final
        assert "verdict: ok  (final)" in final
        assert "epochs done: 3" in final
        assert "EXIT=0" in final
        assert "Traceback" not in final
    finally:
        subprocess.run([tmux, "-L", socket, "kill-server"], capture_output=True, timeout=10)
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
