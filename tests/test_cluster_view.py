"""The cluster view on synthetic run folders: which figures each rank's row reads (the run's
judged utilization and wait share where `run.json` has them, else the CSVs), how the ranks of
a run are found, and what `gpu-watch report` and `report.html` show."""

from __future__ import annotations

import io

import pytest
from runfolders import run_info, write_run

from gpu_watch.judging.cluster import BALANCED, STRAGGLER, UNKNOWN
from gpu_watch.judging.data_wait import MIN_WAIT_TICKS
from gpu_watch.report import run_report_command
from gpu_watch.report.cluster import (
    UNREADABLE,
    cluster_of,
    clusters,
    input_fraction,
    judged_util_pct,
    step_time_s,
    wait_fraction,
)
from gpu_watch.report.files import render
from gpu_watch.runlog import REPORT_HTML, load_run


def batches(step_s: float, wait_s: float, epochs: int = 2, per_epoch: int = 5) -> list[dict]:
    rows, t = [], 0.0
    for epoch in range(epochs):
        for batch in range(per_epoch):
            first = batch == 0
            # Each epoch's first step is slow (compile, a new iterator), with no wait before it.
            step = 10 * step_s if first else step_s
            t += step + (0 if first else wait_s)
            rows.append({"epoch": epoch, "batch": batch, "steps": 1, "time_s": t,
                         "step_s": step, "wait_s": None if first else wait_s})
    return rows


def epochs(*waits: float | None) -> list[dict]:
    return [{"epoch": i, "batches": 5, "duration_s": 1.0, "wait_fraction": w,
             "verdict": "ok"} for i, w in enumerate(waits)]


def rank_run(log_dir, name: str, rank: int, *, wait: float | None, step_s: float,
             world_size: int = 2, **extra) -> None:
    info = run_info(name, rank=rank, world_size=world_size, **extra)
    write_run(log_dir, f"{name}-rank{rank}", info, batches=batches(step_s, 0.0),
              epochs=epochs(wait, wait))


def test_the_wait_share_is_the_runs_where_run_json_has_it(tmp_path):
    info = run_info("a")
    path = write_run(tmp_path, "a", info, epochs=epochs(0.2, 0.4, None))
    assert wait_fraction(load_run(path)) == pytest.approx(0.3)  # the epochs' mean, NaN left out
    info["wait"] = {"fraction": 0.75, "wait_s": 3.0, "loop_s": 4.0, "measure": "batch_gaps",
                    "ticks": 40}
    path = write_run(tmp_path, "b", info, epochs=epochs(0.2, 0.4))
    assert wait_fraction(load_run(path)) == 0.75
    # Too few ticks to tell: the run says None, and the epochs' figures do not stand in.
    info["wait"] = {"fraction": None, "wait_s": 0.0, "loop_s": 0.1, "measure": None, "ticks": 2}
    path = write_run(tmp_path, "c", info, epochs=epochs(0.2, 0.4))
    assert wait_fraction(load_run(path)) is None
    path = write_run(tmp_path, "d", run_info("d"), epochs=epochs(None))
    assert wait_fraction(load_run(path)) is None


def test_the_input_seen_at_work_is_the_share_of_the_sampler_s_looks(tmp_path):
    info = run_info("a")
    info["wait"] = {"fraction": 0.0, "wait_s": 0.0, "loop_s": 4.0, "measure": "sampled_ticks",
                    "ticks": 40, "fetching_ticks": 2, "producing_ticks": 28, "min_ticks": 20}
    assert input_fraction(load_run(write_run(tmp_path, "a", info))) == pytest.approx(0.75)
    info["wait"].update(ticks=19, fetching_ticks=0, producing_ticks=19)  # too few looks
    assert input_fraction(load_run(write_run(tmp_path, "b", info))) is None
    info["wait"].update(ticks=0, producing_ticks=0, min_ticks=0)  # every fetch timed, no look
    assert input_fraction(load_run(write_run(tmp_path, "c", info))) is None
    # A run that does not say how many looks a share needs: the sampled wait's own minimum.
    info["wait"] = {"ticks": MIN_WAIT_TICKS - 1, "producing_ticks": 5}
    assert input_fraction(load_run(write_run(tmp_path, "e", info))) is None
    info["wait"]["ticks"] = MIN_WAIT_TICKS
    assert input_fraction(load_run(write_run(tmp_path, "f", info))) == pytest.approx(
        5 / MIN_WAIT_TICKS)
    del info["wait"]
    assert input_fraction(load_run(write_run(tmp_path, "d", info))) is None


def sampled_ranks(log_dir, name: str, *ranks: tuple[float, int]) -> None:
    """A two-rank run whose waits were sampled: each rank's wait share, and of 40 looks, how
    many found its producer at work."""
    for rank, (wait, producing) in enumerate(ranks):
        info = run_info(name, rank=rank, world_size=len(ranks))
        info["wait"] = {"fraction": wait, "wait_s": 4 * wait, "loop_s": 4.0,
                        "measure": "sampled_ticks", "ticks": 40, "fetching_ticks": 0,
                        "producing_ticks": producing, "min_ticks": 20}
        write_run(log_dir, f"{name}-rank{rank}", info, batches=batches(0.1, 0.0))


def test_held_ranks_whose_inputs_were_busy_as_long_make_a_balanced_run(tmp_path):
    # Two ranks fed alike by slow producers that read ahead: rank 0 waited for its data, rank 1
    # found each batch ready while held at the collective, its producer at work 80% of the time.
    sampled_ranks(tmp_path, "exp", (0.9, 36), (0.0, 32))
    [view] = clusters(tmp_path)
    assert (view.judgement.verdict, view.judgement.straggler) == (BALANCED, None)
    out = io.StringIO()
    assert run_report_command(str(tmp_path), plots=False, out=out) == 0
    assert ("Run exp (2 workers): balanced, no straggler (the rank that waits most waits 90%; "
            "the other ranks wait 0% and take 1.00x its time per step; their own inputs were "
            "seen at work 80% of their loop's time)") in out.getvalue()
    # Where the inputs show no busier than the ranks wait (to the percent), the line says it once.
    sampled_ranks(tmp_path, "exp2", (0.9, 36), (0.8512, 34))
    out = io.StringIO()
    assert run_report_command(str(tmp_path), plots=False, out=out) == 0
    assert ("Run exp2 (2 workers): balanced, no straggler (the rank that waits most waits 90%; "
            "the other ranks wait 85% and take 1.00x its time per step)\n") in out.getvalue()


def test_utilization_is_the_judged_one_where_run_json_has_it(tmp_path):
    samples = [{"time_s": t, "gpu": 0, "util_pct": 90.0, "proc_util_pct": p}
               for t, p in ((0.5, 10.0), (1.0, 30.0), (1.5, None))]
    info = run_info("a", gpus=(0, 1))
    del info["judged"]  # a run recorded before run.json held its judged figures
    path = write_run(tmp_path, "a", info, samples=samples)
    assert judged_util_pct(load_run(path)) == pytest.approx(20.0)  # own, where measured
    device_only = [{"time_s": t, "gpu": 0, "util_pct": u} for t, u in ((0.5, 40.0), (1.0, 60.0))]
    path = write_run(tmp_path, "b", info, samples=device_only)
    assert judged_util_pct(load_run(path)) == pytest.approx(50.0)
    path = write_run(tmp_path, "c", info, samples=[])
    assert judged_util_pct(load_run(path)) is None
    info["judged"] = {"0": {"by": "process", "util_mean_pct": 70.0, "idle_fraction": 0.1,
                            "readings": 9},
                      "1": {"by": "device", "util_mean_pct": 30.0, "idle_fraction": 0.5,
                            "readings": 9},
                      "2": {"by": "device", "util_mean_pct": None, "idle_fraction": None,
                            "readings": 0}}
    path = write_run(tmp_path, "d", info, samples=samples)
    assert judged_util_pct(load_run(path)) == pytest.approx(50.0)  # over GPUs with a figure


def test_step_time_is_the_loops_pace_without_each_epochs_first_step(tmp_path):
    rows = batches(step_s=0.04, wait_s=0.01)
    rows[3]["steps"] = 2  # a hook that closed two steps (steps_per_execution)
    rows[3]["step_s"] = 0.09
    path = write_run(tmp_path, "a", run_info("a"), batches=rows)
    # 8 rows (4 per epoch, the first left out), 9 steps; each row's step plus its wait.
    assert step_time_s(load_run(path)) == pytest.approx((7 * 0.05 + 0.10) / 9)
    path = write_run(tmp_path, "b", run_info("b"), batches=rows[:1])
    assert step_time_s(load_run(path)) is None
    for row in rows:  # recorded with the time between steps spent elsewhere: part of the pace
        row["other_s"] = 0.02
    path = write_run(tmp_path, "c", run_info("c"), batches=rows)
    assert step_time_s(load_run(path)) == pytest.approx((7 * 0.07 + 0.12) / 9)


def test_a_log_folder_gets_one_table_per_run_naming_its_straggler(tmp_path):
    for rank, wait in enumerate((0.02, 0.01, 0.6)):
        rank_run(tmp_path, "exp1", rank, wait=wait, step_s=0.1, world_size=3)
    for rank in range(2):
        rank_run(tmp_path, "exp2", rank, wait=0.5, step_s=0.1,
                 started_at="2026-11-26T11:00:00Z")
    write_run(tmp_path, "alone", run_info("alone"))
    views = {v.name: v for v in clusters(tmp_path)}
    assert sorted(views) == ["exp1", "exp2"]  # a run of one process has no cluster view
    assert (views["exp1"].judgement.verdict, views["exp1"].judgement.straggler) == (STRAGGLER, 2)
    assert views["exp2"].judgement.verdict == BALANCED
    out = io.StringIO()
    assert run_report_command(str(tmp_path), plots=False, out=out) == 0
    text = out.getvalue()
    assert text.index("Run exp2 (2 workers): balanced") < text.index(
        "Run exp1 (3 workers): straggler rank2: it waits for data 60% of its loop's time, "
        "while the other ranks wait 2% and take 1.00x its time per step")  # newest first
    table = text.split("Run exp1 (3 workers)")[1].splitlines()[1:5]
    assert table[0].split() == ["rank", "host", "status", "verdict", "util", "%", "data",
                                "wait", "%", "step", "ms"]
    assert table[1].split() == ["rank0", "test-host", "completed", "ok", "n/a", "2", "100.0"]
    assert table[3].split() == ["rank2", "(straggler)", "test-host", "completed", "ok", "n/a",
                                "60", "100.0"]
    assert not list(tmp_path.glob(f"*/{REPORT_HTML}"))  # --no-plots writes nothing


def test_each_rank_report_html_gets_the_table(tmp_path):
    for rank, wait in enumerate((0.0, 0.7)):
        rank_run(tmp_path, "exp1", rank, wait=wait, step_s=0.1)
    write_run(tmp_path, "alone", run_info("alone"))
    out = io.StringIO()
    assert run_report_command(str(tmp_path), plots=True, out=out) == 0
    assert "Wrote the table into report.html of 2 rank folders" in out.getvalue()
    for rank in range(2):
        page = (tmp_path / f"exp1-rank{rank}" / REPORT_HTML).read_text()
        assert '<p id="cluster-verdict">Run exp1 (2 workers): straggler rank1' in page
        assert "<td>rank1 (straggler)</td><td>test-host</td>" in page
    assert not (tmp_path / "alone" / REPORT_HTML).exists()
    # Drawing a rank's report (as the callback does after fit) includes the table too; a run
    # of one process gets none.
    render(tmp_path / "exp1-rank0")
    assert 'id="cluster"' in (tmp_path / "exp1-rank0" / REPORT_HTML).read_text()
    render(tmp_path / "alone")
    assert 'id="cluster"' not in (tmp_path / "alone" / REPORT_HTML).read_text()


def test_a_rank_folder_finds_the_ranks_beside_it(tmp_path):
    for rank in range(2):
        rank_run(tmp_path, "exp1", rank, wait=0.1, step_s=0.1)
    view = cluster_of(tmp_path / "exp1-rank1")
    assert view is not None and [r.rank for r in view.rows] == [0, 1]
    assert cluster_of(write_run(tmp_path, "alone", run_info("alone"))) is None
    out = io.StringIO()
    assert run_report_command(str(tmp_path / "exp1-rank1"), plots=False, out=out) == 0
    assert "Run exp1 (2 workers): balanced, no straggler" in out.getvalue()


def test_an_unreadable_rank_is_a_row_and_no_part_of_the_verdict(tmp_path):
    rank_run(tmp_path, "exp1", 0, wait=0.0, step_s=0.1)
    rank_run(tmp_path, "exp1", 1, wait=0.9, step_s=0.1)
    (tmp_path / "exp1-rank1" / "epochs.csv").write_text("not,a\n\"csv")
    [view] = clusters(tmp_path)
    assert [r.status for r in view.rows] == ["completed", UNREADABLE]
    assert view.rows[1].wait_fraction is None and view.rows[1].step_s is None
    assert view.judgement.verdict == UNKNOWN
    out = io.StringIO()
    assert run_report_command(str(tmp_path), plots=True, out=out) == 0
    assert "Run exp1 (2 workers): no straggler can be named" in out.getvalue()
    assert (tmp_path / "exp1-rank0" / REPORT_HTML).exists()


def test_a_rank_with_figures_gpu_watch_never_writes_is_unreadable_not_fatal(tmp_path):
    rank_run(tmp_path, "exp1", 0, wait=0.0, step_s=0.1)
    rank_run(tmp_path, "exp1", 1, wait=0.5, step_s=0.1)
    batches_csv = tmp_path / "exp1-rank1" / "batches.csv"
    batches_csv.write_text(batches_csv.read_text().replace("0.1,", "fast,"))
    [view] = clusters(tmp_path)
    assert [r.status for r in view.rows] == ["completed", UNREADABLE]
    render(tmp_path / "exp1-rank0")  # the rank's own report is still drawn, with the table
    assert "<td>rank1</td><td>n/a</td><td>unreadable</td>" in (
        tmp_path / "exp1-rank0" / REPORT_HTML).read_text()


def job_rank_run(log_dir, folder: str, rank: int, job_id: str, wait: float,
                 started_at: str = "2026-11-26T10:00:00Z") -> None:
    """A rank's folder whose `run.json` names the job its launcher (Slurm here) shares."""
    info = {**run_info(folder, rank=rank, world_size=2, started_at=started_at),
            "job_id": job_id, "job_id_from": "SLURM_JOB_ID"}
    write_run(log_dir, folder, info, batches=batches(0.1, 0.0), epochs=epochs(wait, wait))


def test_ranks_with_default_names_are_one_run_by_their_job_id(tmp_path):
    # Default names differ per worker, and rank 1 started long after rank 0 (a slow node):
    # the start times could not join them, the job id does.
    job_rank_run(tmp_path, "20261126-100000-aaaaaa-rank0", 0, "4242.0", 0.0)
    job_rank_run(tmp_path, "20261126-103000-bbbbbb-rank1", 1, "4242.0", 0.7,
                 started_at="2026-11-26T10:30:00Z")
    [view] = clusters(tmp_path)
    assert view.name == "4242.0" and [r.rank for r in view.rows] == [0, 1]
    assert (view.judgement.verdict, view.judgement.straggler) == (STRAGGLER, 1)
    out = io.StringIO()
    assert run_report_command(str(tmp_path), plots=False, out=out) == 0
    assert "Run 4242.0 (2 workers): straggler rank1" in out.getvalue()


def test_two_jobs_of_one_run_name_are_two_runs(tmp_path):
    job_rank_run(tmp_path, "exp1-rank0", 0, "100.0", 0.0)
    job_rank_run(tmp_path, "exp1-rank1", 1, "100.0", 0.7)
    job_rank_run(tmp_path, "exp1-rank0-2", 0, "200.0", 0.4, "2026-11-26T11:00:00Z")
    job_rank_run(tmp_path, "exp1-rank1-2", 1, "200.0", 0.4, "2026-11-26T11:00:00Z")
    views = {v.name: v for v in clusters(tmp_path)}
    assert sorted(views) == ["exp1", "exp1 (job 100.0)"]
    assert views["exp1 (job 100.0)"].judgement.straggler == 1
    assert views["exp1"].judgement.verdict == BALANCED
    assert {r.path.name for r in views["exp1"].rows} == {"exp1-rank0-2", "exp1-rank1-2"}
