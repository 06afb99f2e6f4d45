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
import time
from pathlib import Path

import pytest

from gpu_watch import report
from gpu_watch.runlog import find_runs

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "scripts" / "distributed_fit.py"
TIMEOUT_S = 240
STEPS, EPOCHS = 8, 2  # distributed_fit.py: 128 samples in global batches of 16
RUN_NAME = "cluster-run"


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
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while True:
            codes = [child.process.poll() for child in children]
            for child, code in zip(children, codes, strict=True):
                if code not in (None, 0):
                    pytest.fail(f"{child.name} exited with {code}:\n"
                                f"{child.stderr.read_text()[-4000:]}")
            if all(code == 0 for code in codes):
                return {child.name: child.result() for child in children}
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {TIMEOUT_S} s")
            time.sleep(0.1)
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
    for rank, worker in enumerate(workers):
        assert Path(worker["run_dir"]).name == f"{RUN_NAME}-rank{rank}"
        assert (worker["rank"], worker["world_size"]) == (rank, 2)
        info = json.loads((Path(worker["run_dir"]) / "run.json").read_text())
        assert (info["rank"], info["world_size"]) == (rank, 2)
        # Each worker trains on its shard: half of each global batch, every step.
        assert worker["batches"] == EPOCHS * STEPS
        assert worker["status"] == "completed" and worker["verdict"] == "cpu_fallback"


def test_the_report_lists_the_workers_side_by_side(tensorflow_runs):
    _, _, cluster_dir = tensorflow_runs
    out = io.StringIO()
    assert report.run_report_command(str(cluster_dir), plots=False, out=out) == 0
    text = out.getvalue()
    assert f"{RUN_NAME} (2 workers)" in text
    rows = [line.split() for line in text.splitlines() if re.match(r"\s+rank\d", line)]
    assert [row[:3] for row in rows] == [["rank0", "completed", "cpu_fallback"],
                                         ["rank1", "completed", "cpu_fallback"]]


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
