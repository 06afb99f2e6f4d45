"""Distributed training: GPUWatch runs once per process, and each worker of a multi-worker run
writes its own run folder with its rank in the name and in `run.json`. Real TensorFlow
strategies and real JAX processes on this machine's CPU, in child processes on loopback."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import wait_until

from gpu_watch import report
from gpu_watch.judging.cluster import BALANCED, STRAGGLER, UNKNOWN, RankFigures
from gpu_watch.report.cluster import clusters
from gpu_watch.runlog import REPORT_HTML, find_runs

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "scripts" / "distributed_fit.py"
TIMEOUT_S = 240
STEPS, EPOCHS = 8, 2  # distributed_fit.py: 128 samples in global batches of 16
RUN_NAME = "cluster-run"
SLOW_S = 0.3  # seconds a slowed input takes per global batch (half of it per worker step,
# well over the step itself: the input, not the step, sets the pace)


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def child_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "KERAS_BACKEND")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(overrides)
    return env


class Child:
    """A child process running distributed_fit.py, its output in files (a full pipe would
    block a cluster member, and the other members would wait for it)."""

    def __init__(self, logs: Path, name: str, *args: str, **env: str) -> None:
        self.name = name
        self.stdout = logs / f"{name}.out"
        self.stderr = logs / f"{name}.err"
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.process = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT,
                                            env=child_env(**env), stdout=out, stderr=err)

    def result(self) -> dict:
        [line] = [x for x in self.stdout.read_text().splitlines() if x.startswith("RESULT ")]
        return json.loads(line[len("RESULT "):])


def collect(children: list[Child]) -> dict[str, dict]:
    """Each child's RESULT, once all have finished; on the first failure or at the deadline,
    every child still running is killed."""

    def all_done() -> bool:
        codes = [child.process.poll() for child in children]
        for child, code in zip(children, codes, strict=True):
            if code not in (None, 0):
                pytest.fail(f"{child.name} exited with {code}:\n"
                            f"{child.stderr.read_text()[-4000:]}")
        return all(code == 0 for code in codes)

    try:
        wait_until(all_done, "every child to finish", timeout_s=TIMEOUT_S)
        return {child.name: child.result() for child in children}
    finally:
        for child in children:
            if child.process.poll() is None:
                child.process.kill()
                child.process.wait()


@pytest.fixture(scope="module")
def tensorflow_runs(tmp_path_factory) -> tuple[dict[str, dict], Path, Path]:
    """A MirroredStrategy run, and the two workers of a MultiWorkerMirroredStrategy run."""
    mirrored_dir = tmp_path_factory.mktemp("mirrored")
    cluster_dir = tmp_path_factory.mktemp("cluster")
    logs = tmp_path_factory.mktemp("output")
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    children = [Child(logs, "mirrored", "mirrored", str(mirrored_dir))]
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        children.append(Child(logs, f"worker{index}", "multi_worker", str(cluster_dir),
                              RUN_NAME, TF_CONFIG=json.dumps(config)))
    return collect(children), mirrored_dir, cluster_dir


def test_mirrored_strategy_gives_one_run_per_process(tensorflow_runs):
    results, mirrored_dir, _ = tensorflow_runs
    run = results["mirrored"]
    assert run["replicas"] == 2
    assert find_runs(mirrored_dir) == [Path(run["run_dir"])]
    assert "-rank" not in Path(run["run_dir"]).name
    assert (run["rank"], run["world_size"]) == (0, 1)
    assert run["batches"] == EPOCHS * STEPS  # one row per global batch, not per replica
    assert run["status"] == "completed" and run["verdict"] == "cpu_fallback"
    assert run["placement"]["compute_on_gpu"] is False


def test_each_worker_writes_its_own_run_with_its_rank(tensorflow_runs):
    results, _, cluster_dir = tensorflow_runs
    workers = [results["worker0"], results["worker1"]]
    assert [w["replicas"] for w in workers] == [2, 2]
    assert sorted(p.name for p in find_runs(cluster_dir)) == [f"{RUN_NAME}-rank0",
                                                              f"{RUN_NAME}-rank1"]
    jobs = set()
    for rank, worker in enumerate(workers):
        assert Path(worker["run_dir"]).name == f"{RUN_NAME}-rank{rank}"
        assert (worker["rank"], worker["world_size"]) == (rank, 2)
        info = json.loads((Path(worker["run_dir"]) / "run.json").read_text())
        assert (info["rank"], info["world_size"]) == (rank, 2)
        assert info["job_id_from"] == "TF_CONFIG" and info["job_id"].startswith("tf-")
        jobs.add(info["job_id"])
        # Each worker trains on its shard: half of each global batch, every step.
        assert worker["batches"] == EPOCHS * STEPS
        assert worker["status"] == "completed" and worker["verdict"] == "cpu_fallback"
    assert len(jobs) == 1  # one cluster, one job


def test_the_report_lists_the_workers_side_by_side(tensorflow_runs):
    _, _, cluster_dir = tensorflow_runs
    out = io.StringIO()
    assert report.run_report_command(str(cluster_dir), plots=False, out=out) == 0
    text = out.getvalue()
    assert f"{RUN_NAME} (2 workers)" in text
    listing = text.split("\n\n")[0]  # the run's own table follows
    rows = [line.split() for line in listing.splitlines() if re.match(r"\s+rank\d", line)]
    assert [row[:3] for row in rows] == [["rank0", "completed", "cpu_fallback"],
                                         ["rank1", "completed", "cpu_fallback"]]


def test_a_balanced_run_names_no_straggler(tensorflow_runs):
    _, _, cluster_dir = tensorflow_runs
    [view] = clusters(cluster_dir)
    # Balanced; or, where a wait share needs more ticks than these few seconds give, unknown.
    # Either way no rank is named (the slowed runs below judge with ticks to spare).
    assert view.judgement.verdict in (BALANCED, UNKNOWN) and view.judgement.straggler is None
    assert [row.rank for row in view.rows] == [0, 1]
    assert all(row.host == socket.gethostname() for row in view.rows)
    out = io.StringIO()
    assert report.run_report_command(str(cluster_dir), plots=False, out=out) == 0
    assert (f"Run {RUN_NAME} (2 workers): balanced, no straggler" in out.getvalue()
            or f"Run {RUN_NAME} (2 workers): no straggler can be named" in out.getvalue())
    assert "(straggler)" not in out.getvalue()


def start_cluster(log_dir: Path, logs: Path, name: str, delays: str) -> list[Child]:
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    children = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        children.append(Child(logs, f"{name}{index}", "multi_worker", str(log_dir), name,
                              delays, TF_CONFIG=json.dumps(config)))
    return children


@pytest.fixture(scope="module")
def slowed_runs(tmp_path_factory) -> Path:
    """Two MultiWorkerMirroredStrategy runs in one log folder: "slow-rank1", whose rank 1
    reads its input from a generator that takes `SLOW_S` per batch while rank 0's is instant,
    and "slow-both", where both ranks' inputs take about that long, rank 1's a tenth less. The
    strategy's dataset reads ahead, so rank 1, held at the collective by rank 0, finds each
    batch ready and waits for no data of its own: the wait shares alone would name rank 0
    (inputs that take exactly as long come to the same whenever other work on the CPU makes
    one a hair slower)."""
    log_dir = tmp_path_factory.mktemp("slowed")
    logs = tmp_path_factory.mktemp("slowed-output")
    collect(start_cluster(log_dir, logs, "slow-rank1", f"0,{SLOW_S}")
            + start_cluster(log_dir, logs, "slow-both", f"{SLOW_S},{0.9 * SLOW_S}"))
    return log_dir


def cluster_rows(text: str, name: str) -> list[list[str]]:
    """The rows of `name`'s table in the report's text."""
    block = text.split(f"Run {name} (")[1].split("\n\n")[0]
    return [line.split() for line in block.splitlines()[2:] if line.startswith("  rank")]


def test_the_cluster_view_names_the_rank_whose_input_was_slowed(slowed_runs):
    out = io.StringIO()
    assert report.run_report_command(str(slowed_runs), plots=True, out=out) == 0
    text = out.getvalue()
    assert "Run slow-rank1 (2 workers): straggler rank1: it waits for data" in text
    assert text.count("Wrote the table into report.html of 2 rank folders") == 2
    rows = cluster_rows(text, "slow-rank1")
    assert [row[0] for row in rows] == ["rank0", "rank1"]
    assert rows[1][1] == "(straggler)"
    # rank, host, status, verdict, util %, data wait %, step ms: no GPU here, so no utilization;
    # the slowed rank waits, the other does not, and both move at the slowed rank's pace.
    rank0, rank1 = rows[0], rows[1][1:]
    assert rank0[1:5] == [socket.gethostname(), "completed", "cpu_fallback", "n/a"]
    assert rank1[1:5] == [socket.gethostname(), "completed", "cpu_fallback", "n/a"]
    wait0, wait1 = float(rank0[5]), float(rank1[5])
    step0, step1 = float(rank0[6]), float(rank1[6])
    assert wait1 >= 50 and wait0 <= 25, text
    assert step1 >= 1000 * SLOW_S / 2 * 0.8 and step0 >= 0.8 * step1, text
    [view] = [v for v in clusters(slowed_runs) if v.name == "slow-rank1"]
    assert (view.judgement.verdict, view.judgement.straggler) == (STRAGGLER, 1)
    # Each rank's report.html has the same table and verdict.
    for row in view.rows:
        page = (row.path / REPORT_HTML).read_text()
        assert '<table id="cluster">' in page
        assert "straggler rank1: it waits for data" in page
        assert "<td>rank1 (straggler)</td>" in page and "<td>rank0</td>" in page


def test_ranks_that_all_wait_alike_name_no_straggler(slowed_runs):
    out = io.StringIO()
    assert report.run_report_command(str(slowed_runs), plots=False, out=out) == 0
    text = out.getvalue()
    assert "Run slow-both (2 workers): balanced, no straggler" in text
    rows = cluster_rows(text, "slow-both")
    assert [row[0] for row in rows] == ["rank0", "rank1"]
    # Both input bound: each rank waits for its data, or, where its input read ahead while the
    # other held it at the collective, the sampler saw its producer at work that long.
    [view] = [v for v in clusters(slowed_runs) if v.name == "slow-both"]
    shares = [RankFigures(r.rank, r.wait_fraction, r.step_s, r.input_fraction).input_share
              for r in view.rows]
    assert min(shares) >= 0.5, (shares, text)


def test_a_rank_folder_shows_its_run_table(slowed_runs):
    out = io.StringIO()
    assert report.run_report_command(str(slowed_runs / "slow-rank1-rank0"), plots=False,
                                     out=out) == 0
    assert "Run slow-rank1 (2 workers): straggler rank1" in out.getvalue()


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_processes_each_write_a_run_with_their_process_index(tmp_path):
    coordinator = f"127.0.0.1:{free_ports(1)[0]}"
    log_dir = tmp_path / "logs"
    results = collect([
        Child(tmp_path, f"process{i}", "jax_process", str(log_dir), coordinator, str(i),
              KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
        for i in range(2)
    ])
    names = sorted(p.name for p in find_runs(log_dir))
    assert len(names) == 2
    for rank in range(2):
        run = results[f"process{rank}"]
        assert run["backend"] == "jax"
        assert re.fullmatch(rf"\d{{8}}-\d{{6}}-[0-9a-f]{{6}}-rank{rank}",
                            Path(run["run_dir"]).name)
        assert (run["rank"], run["world_size"]) == (rank, 2)
        assert run["placement"]["default_backend"] == "cpu"
        assert run["batches"] == EPOCHS * STEPS
        assert run["tensorflow_imported"] is False
