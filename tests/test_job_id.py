"""The job id: one name shared by every rank of a training, read from its launcher, recorded
in `run.json` and checked like every other option."""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import pytest

from gpu_watch import GPUWatch, GPUWatchWarning
from gpu_watch.sensing.job import (
    FROM_JOBSET,
    FROM_KUBERNETES_JOB,
    FROM_OPTION,
    FROM_RUN_FOLDER,
    FROM_RUN_NAME,
    FROM_SLURM,
    FROM_TF_CONFIG,
    FROM_TORCHELASTIC,
    find_job_id,
)

CLUSTER = {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}


def tf_config(index: int, cluster=CLUSTER) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


@pytest.mark.parametrize("environ, expected", [
    ({"TORCHELASTIC_RUN_ID": "exp7"}, ("exp7", FROM_TORCHELASTIC)),
    ({"TORCHELASTIC_RUN_ID": "none", "SLURM_JOB_ID": "88"}, ("88", FROM_SLURM)),
    ({"SLURM_JOB_ID": "88", "SLURM_STEP_ID": "2"}, ("88.2", FROM_SLURM)),
    ({"SLURM_JOB_ID": "88", "JOBSET_NAME": "js"}, ("88", FROM_SLURM)),
    ({"JOBSET_NAME": "js", "JOB_NAME": "j", "KUBERNETES_SERVICE_HOST": "10.0.0.1"},
     ("js", FROM_JOBSET)),
    ({"JOB_NAME": "train-3", "KUBERNETES_SERVICE_HOST": "10.0.0.1"},
     ("train-3", FROM_KUBERNETES_JOB)),
    ({"JOB_NAME": "nightly-build"}, ("folder", FROM_RUN_FOLDER)),  # not a pod: not the job
    ({"TF_CONFIG": "not json"}, ("folder", FROM_RUN_FOLDER)),
    ({"TORCHELASTIC_RUN_ID": "  "}, ("folder", FROM_RUN_FOLDER)),
])
def test_the_launcher_names_the_job_first_set_wins(environ, expected):
    found = find_job_id(None, None, "folder", environ)
    assert (found.value, found.source) == expected


def test_the_option_wins_over_every_launcher():
    found = find_job_id("mine", "name", "folder", {"TORCHELASTIC_RUN_ID": "x",
                                                  "SLURM_JOB_ID": "1"})
    assert (found.value, found.source, found.shared) == ("mine", FROM_OPTION, True)


def test_every_worker_of_one_tf_cluster_gets_one_id_and_another_cluster_another():
    ids = {find_job_id(None, None, f"f{i}", {"TF_CONFIG": tf_config(i)}) for i in range(2)}
    assert len(ids) == 1
    [found] = ids
    assert found.source == FROM_TF_CONFIG and found.value.startswith("tf-")
    other = find_job_id(None, None, "f", {"TF_CONFIG": tf_config(0, {"worker": ["a:1", "b:1"]})})
    assert other.value != found.value


def test_without_a_launcher_the_run_name_then_the_folder_names_the_job():
    assert find_job_id(None, "exp1", "exp1-rank0", {}).source == FROM_RUN_NAME
    alone = find_job_id(None, None, "20261206-101010-abcdef", {})
    assert (alone.value, alone.source, alone.shared) == ("20261206-101010-abcdef",
                                                         FROM_RUN_FOLDER, False)


@pytest.mark.parametrize("job_id", ["", "   ", 7, "a" * 129, "line\nbreak"])
def test_a_bad_job_id_is_named_with_what_is_allowed(job_id):
    with pytest.raises(ValueError, match=r"job_id must be None or a printable name of 1 to "
                                         r"128 characters") as caught:
        GPUWatch(job_id=job_id)
    assert repr(job_id) in str(caught.value)


def fit(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    watch = GPUWatch(log_dir=tmp_path, plot=False, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        model.fit(np.zeros((32, 4), "float32"), np.zeros((32, 1), "float32"), batch_size=16,
                  epochs=1, verbose=0, callbacks=[watch])
    return json.loads((watch.run_dir / "run.json").read_text()), watch.run_dir.name


def test_two_ranks_of_one_slurm_job_record_one_job_id(tmp_path, monkeypatch):
    """Two workers of Slurm job 4242, step 0, one per LOCAL_RANK, default run names: each
    writes its own folder, and both record the job."""
    for name in ("TORCHELASTIC_RUN_ID", "JOBSET_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    runs = []
    for rank in range(2):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("TF_CONFIG", tf_config(rank))  # this worker's rank, for GPUWatch
        runs.append(fit(tmp_path))
    (first, first_name), (second, second_name) = runs
    assert first_name != second_name
    assert first_name.endswith("-rank0") and second_name.endswith("-rank1")
    assert [(r["rank"], r["world_size"]) for r, _ in runs] == [(0, 2), (1, 2)]
    assert first["job_id"] == second["job_id"] == "4242.0"
    assert first["job_id_from"] == second["job_id_from"] == FROM_SLURM
