"""The job a run belongs to: one id shared by every rank of one training.

Each worker of a multi-worker training writes its own run folder, named for its rank (and, by
default, with a random part of its own), so the run's name cannot tie the ranks together. The
launcher that started them can: torchrun, Slurm, TensorFlow's `TF_CONFIG`, a Kubernetes JobSet
or Job each give every worker the same name for the job. `job_id` reads it, in a fixed order,
so two ranks of one training record (and export) the same `job_id`, and two trainings never do.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

# Where the id came from, recorded in `run.json` as `job_id_from`.
FROM_OPTION = "option"
FROM_TORCHELASTIC = "TORCHELASTIC_RUN_ID"
FROM_SLURM = "SLURM_JOB_ID"
FROM_JOBSET = "JOBSET_NAME"
FROM_KUBERNETES_JOB = "JOB_NAME"
FROM_TF_CONFIG = "TF_CONFIG"
FROM_RUN_NAME = "run_name"
FROM_RUN_FOLDER = "run folder"
# Sources every rank of one training shares; a job id from the run folder is this rank's own.
SHARED_SOURCES = (FROM_OPTION, FROM_TORCHELASTIC, FROM_SLURM, FROM_JOBSET, FROM_KUBERNETES_JOB,
                  FROM_TF_CONFIG, FROM_RUN_NAME)
# torchrun's --rdzv-id defaults to this word, the same for every job started without one.
_TORCHELASTIC_UNSET = "none"
MAX_LENGTH = 128  # a label value, not a document


@dataclass(frozen=True, slots=True)
class JobId:
    """A run's job id and where it came from (one of the ``FROM_*`` names)."""

    value: str
    source: str

    @property
    def shared(self) -> bool:
        """Whether every rank of the training has the same id (not a per-rank fallback)."""
        return self.source in SHARED_SOURCES


def check_job_id(value: object) -> None:
    """Raise ValueError naming `value` unless it is None or a usable job id."""
    if value is None:
        return
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_LENGTH or any(
            not ch.isprintable() for ch in value):
        raise ValueError(f"job_id must be None or a printable name of 1 to {MAX_LENGTH} "
                         f"characters shared by every rank of the training, got {value!r}")


def find_job_id(option: str | None, run_name: str | None, run_folder: str,
                environ: Mapping[str, str] | None = None) -> JobId:
    """The job id of this process's run.

    The first that is set wins: the `job_id` option; torchrun's `TORCHELASTIC_RUN_ID`;
    Slurm's `SLURM_JOB_ID`, with `.SLURM_STEP_ID` when the run is a job step; a JobSet's
    `JOBSET_NAME`; a Kubernetes Job's `JOB_NAME` (set from the pod's
    `batch.kubernetes.io/job-name` label by the downward API) inside a pod; a short hash of
    `TF_CONFIG`'s cluster (the same on every worker of the cluster); the `run_name` option;
    else the run folder's name (a run of its own).

    Args:
        option: `GPUWatch(job_id=...)`, or None.
        run_name: `GPUWatch(run_name=...)`, or None.
        run_folder: The run folder's name.
        environ: The environment. Default: this process's.

    Returns:
        The id and its source.
    """
    environ = os.environ if environ is None else environ
    if option is not None:
        return JobId(option, FROM_OPTION)

    def value(name: str) -> str | None:
        found = (environ.get(name) or "").strip()
        return found[:MAX_LENGTH] if found else None

    elastic = value("TORCHELASTIC_RUN_ID")
    if elastic is not None and elastic.lower() != _TORCHELASTIC_UNSET:
        return JobId(elastic, FROM_TORCHELASTIC)
    slurm = value("SLURM_JOB_ID")
    if slurm is not None:
        step = value("SLURM_STEP_ID")
        return JobId(f"{slurm}.{step}" if step is not None else slurm, FROM_SLURM)
    jobset = value("JOBSET_NAME")
    if jobset is not None:
        return JobId(jobset, FROM_JOBSET)
    kubernetes_job = value("JOB_NAME")
    if kubernetes_job is not None and value("KUBERNETES_SERVICE_HOST") is not None:
        return JobId(kubernetes_job, FROM_KUBERNETES_JOB)
    cluster = _tf_cluster(environ.get("TF_CONFIG"))
    if cluster is not None:
        return JobId(cluster, FROM_TF_CONFIG)
    if run_name is not None:
        return JobId(run_name, FROM_RUN_NAME)
    return JobId(run_folder, FROM_RUN_FOLDER)


def _tf_cluster(raw: str | None) -> str | None:
    """`tf-` and a hash of TF_CONFIG's cluster: every worker has the same cluster, and each
    its own task, so the cluster alone names the training."""
    if raw is None:
        return None
    try:
        cluster = json.loads(raw).get("cluster")
    except (ValueError, AttributeError):
        return None
    if not isinstance(cluster, dict) or not cluster:
        return None
    text = json.dumps(cluster, sort_keys=True, separators=(",", ":"))
    return "tf-" + hashlib.sha256(text.encode()).hexdigest()[:12]
