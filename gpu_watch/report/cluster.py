"""The cluster view: the ranks of one multi-worker run side by side, and its straggler.

Each worker of a multi-worker run writes its own run folder, named ``<run>-rank<N>`` (see
`gpu_watch.runlog.new_run_dir`). This module finds the folders that belong together, reads from
each what the straggler rule needs (`gpu_watch.judging.cluster.judge_cluster`) and what a reader
compares (host, verdict, this training's utilization, data-wait share, step time), and lays it out
as one table that `gpu-watch report` prints and every rank's `report.html` shows.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from gpu_watch import runlog
from gpu_watch.judging.cluster import (
    STRAGGLER,
    UNKNOWN,
    ClusterJudgement,
    RankFigures,
    judge_cluster,
)
from gpu_watch.judging.data_wait import MIN_WAIT_TICKS, seen_at_work
from gpu_watch.runlog import Run, RunFolderError, RunRecord, find_runs, load_run
from gpu_watch.sensing.job import SHARED_SOURCES

RANK_NAME = re.compile(r"(?P<base>.+)-rank(?P<rank>\d+)(?:-\d+)?")
# Workers whose default names differ (each picks its own random suffix) belong to one run when
# they share the number of workers and started within this many seconds of each other.
WORKER_START_WINDOW_S = 60.0

UNREADABLE = "unreadable"  # the status of a rank whose run folder cannot be read
Member = tuple[int | None, Path, RunRecord]  # rank (None: not a worker), folder, run.json


def run_groups(log_dir: str | os.PathLike) -> dict[str, list[Member]]:
    """The runs in `log_dir`, newest first, with the workers of one multi-worker run together.

    Rank folders (``<base>-rank<N>`` of a run with more than one worker) whose `run.json`
    names a job id its launcher shares with every rank (`gpu_watch.sensing.job`) are grouped by it;
    rank folders from before job ids, or without a shared one, by `base`, and lone workers
    whose names differ are joined by their start times (see `WORKER_START_WINDOW_S`). A run
    of one process is a group of one, with rank None. A group is named by its ranks' common
    base, else by its job id.

    Args:
        log_dir: A folder of run folders.

    Returns:
        Group name -> members, each (rank, folder, `run.json` contents).
    """
    by_key: dict[str, list[Member]] = {}
    bases: dict[str, set[str]] = {}
    for path in find_runs(log_dir):
        try:
            record = runlog.read_record(path)
        except runlog.RunFolderError:
            record = RunRecord.from_json({"verdict": "unreadable run.json"})
        match = RANK_NAME.fullmatch(path.name)
        if match and (record.world_size or 2) > 1:
            job = shared_job_id(record)
            key = f"job:{job}" if job is not None else f"base:{match['base']}"
            by_key.setdefault(key, []).append((int(match["rank"]), path, record))
            bases.setdefault(key, set()).add(match["base"])
        else:
            by_key[f"run:{path.name}"] = [(None, path, record)]
            bases[f"run:{path.name}"] = {path.name}
    groups: dict[str, list[Member]] = {}
    for key, members in by_key.items():
        [name] = bases[key] if len(bases[key]) == 1 else [key.split(":", 1)[1]]
        if name in groups:  # two jobs of one run name: the job id tells them apart
            name = f"{name} (job {key.split(':', 1)[1]})"
        groups[name] = members
    _join_lone_workers(groups)
    return groups


def shared_job_id(record: RunRecord) -> str | None:
    """The job id of a rank's `run.json` when its launcher gives every rank the same one;
    None for a run from before job ids, or whose id is its own folder's name."""
    job = record.job_id
    return str(job) if job and record.job_id_from in SHARED_SOURCES else None


def _join_lone_workers(groups: dict[str, list[Member]]) -> None:
    lone = [(base, members[0]) for base, members in groups.items()
            if len(members) == 1 and members[0][0] is not None
            and shared_job_id(members[0][2]) is None]  # a shared job id already decided
    lone.sort(key=lambda item: str(item[1][2].started_at or ""))
    jobs: list[list[Member]] = []
    for base, member in lone:
        rank, _, record = member
        start = _started(record)
        for job in jobs:
            first = job[0][2]
            first_start = _started(first)
            if (first.world_size == record.world_size and start and first_start
                    and abs((start - first_start).total_seconds()) <= WORKER_START_WINDOW_S
                    and rank not in {m[0] for m in job}):
                job.append(member)
                del groups[base]
                break
        else:
            jobs.append(groups[base])


def _started(record: RunRecord) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(record.started_at).replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RankRow:
    """One rank of a multi-worker run, as the cluster table shows it.

    Attributes:
        rank: The worker's rank.
        path: Its run folder.
        host: The host it ran on (None when its folder does not say).
        status: Its run's status (`completed`, `running`, ...); `UNREADABLE` for a folder
            that cannot be read.
        verdict: Its run verdict, or None before one is decided.
        util_pct: This training's mean utilization of its GPUs, percent; None when unknown.
        wait_fraction: Share of its loop's time spent waiting for data, 0-1; None when unknown.
        step_s: Its loop's time per step, seconds (see `step_time_s`); None when unknown.
        input_fraction: Share of its loop's time the sampler saw its input at work (see
            `input_fraction`); None when the sampler did not judge it.
    """

    rank: int
    path: Path
    host: str | None
    status: str
    verdict: str | None
    util_pct: float | None
    wait_fraction: float | None
    step_s: float | None
    input_fraction: float | None = None


@dataclass(frozen=True, slots=True)
class ClusterView:
    """A multi-worker run: its name, one row per rank (by rank), and its run-level verdict."""

    name: str
    rows: tuple[RankRow, ...]
    judgement: ClusterJudgement


def rank_row(rank: int, run: Run) -> RankRow:
    """What the cluster table shows of one rank's run."""
    return RankRow(rank, run.path, (run.record.writer or {}).get("host"), run.status,
                   run.verdict, judged_util_pct(run), wait_fraction(run), step_time_s(run),
                   input_fraction(run))


def judged_util_pct(run: Run) -> float | None:
    """This training's mean utilization of its GPUs, percent, as the verdict judged it.

    `run.json`'s ``judged`` (per GPU, step 0 left out) where the run has it; else the mean of
    `samples.csv`'s own utilization (``proc_util_pct``), else of the device's (``util_pct``).
    """
    judged = run.record.judged if run.record.has("judged") else None
    if isinstance(judged, dict):
        means = [g.get("util_mean_pct") for g in judged.values() if isinstance(g, dict)]
        means = [float(m) for m in means if m is not None]
        return statistics.fmean(means) if means else None
    for column in ("proc_util_pct", "util_pct"):
        if column in run.samples.columns:
            values = run.samples[column].dropna()
            if len(values):
                return float(values.mean())
    return None


def wait_fraction(run: Run) -> float | None:
    """The run's share of loop time spent waiting for data, 0-1: `run.json`'s
    ``wait.fraction`` where the run has it (None there means too few ticks to tell), else the
    mean of `epochs.csv`'s ``wait_fraction``."""
    wait = run.record.wait
    if isinstance(wait, dict):
        fraction = wait.get("fraction")
        return None if fraction is None else float(fraction)
    if "wait_fraction" not in run.epochs.columns:
        return None
    values = run.epochs["wait_fraction"].dropna()
    return float(values.mean()) if len(values) else None


def input_fraction(run: Run) -> float | None:
    """The share of the sampler's looks (`run.json` ``wait``) that found the run's input at
    work: the training thread fetching, or a Python producer behind tf.data running. None with
    fewer looks than a sampled wait needs (``min_ticks``, `MIN_WAIT_TICKS` where the run does
    not say), or none recorded."""
    wait = run.record.wait
    if not isinstance(wait, dict):
        return None
    return seen_at_work(wait.get("ticks") or 0, wait.get("fetching_ticks") or 0,
                        wait.get("producing_ticks") or 0, wait.get("min_ticks", MIN_WAIT_TICKS))


def step_time_s(run: Run) -> float | None:
    """The training loop's pace: seconds per step, the time before each step included, over
    every step but each epoch's first (step 0 compiles; an epoch's first step also waits for
    its data iterator to start). Ranks held at a collective step keep one pace, however their
    time splits between computing, waiting for data and waiting for each other."""
    batches = run.batches
    if not len(batches):
        return None
    rest = batches[batches["epoch"].duplicated()]  # each epoch's first row left out
    steps = rest["steps"].fillna(1).clip(lower=1).sum()
    if not steps:
        return None
    seconds = rest["step_s"].fillna(0.0) + rest["wait_s"].fillna(0.0)
    if "other_s" in rest.columns:  # recorded since the time between steps is its own figure
        seconds = seconds + rest["other_s"].fillna(0.0)
    return float(seconds.sum() / steps)


def cluster_view(name: str, members: list[Member]) -> ClusterView:
    """Read each member's run folder and judge the run; a folder that cannot be read is a row
    that says so and takes no part in the verdict."""
    rows = []
    for rank, path, _ in sorted(members, key=lambda m: m[0] or 0):
        try:
            rows.append(rank_row(rank or 0, load_run(path)))
        except (RunFolderError, ValueError, TypeError, KeyError):
            # One rank's folder that cannot be read (or holds what gpu-watch never writes)
            # must not take the others' table, or a rank's own report, down with it.
            rows.append(RankRow(rank or 0, path, None, UNREADABLE, None, None, None, None))
    judgement = judge_cluster([RankFigures(r.rank, r.wait_fraction, r.step_s, r.input_fraction)
                               for r in rows])
    return ClusterView(name, tuple(rows), judgement)


def clusters(log_dir: str | os.PathLike) -> list[ClusterView]:
    """The multi-worker runs in `log_dir`, newest first (runs of one process are left out)."""
    return [cluster_view(name, members) for name, members in run_groups(log_dir).items()
            if any(rank is not None for rank, _, _ in members)]


def cluster_of(run_dir: str | os.PathLike) -> ClusterView | None:
    """The multi-worker run that the run folder `run_dir` is a rank of, from the folders
    beside it; None for a run of one process."""
    folder = Path(run_dir).resolve()
    for name, members in run_groups(folder.parent).items():
        if any(path.resolve() == folder for _, path, _ in members):
            if any(rank is not None for rank, _, _ in members):
                return cluster_view(name, members)
            return None
    return None


def verdict_line(view: ClusterView) -> str:
    """The run-level verdict in one sentence."""
    judgement = view.judgement
    noun = "worker" if len(view.rows) == 1 else "workers"
    head = f"Run {view.name} ({len(view.rows)} {noun}): "
    if judgement.verdict == UNKNOWN:
        return head + ("no straggler can be named: fewer than two ranks have both a data-wait "
                       "share and a step time")
    others = (f"the other ranks wait {_pct(judgement.others_wait_fraction)} and take "
              f"{judgement.step_ratio:.2f}x its time per step" if judgement.step_ratio is not None
              else f"the other ranks wait {_pct(judgement.others_wait_fraction)}")
    if judgement.verdict == STRAGGLER:
        return head + (f"straggler rank{judgement.straggler}: it waits for data "
                       f"{_pct(judgement.wait_fraction)} of its loop's time, while {others}, "
                       "held at the collective step; speeding up its input speeds up the run")
    inputs = ""
    if (judgement.others_input_fraction is not None
            and _pct(judgement.others_input_fraction) != _pct(judgement.others_wait_fraction)):
        inputs = (f"; their own inputs were seen at work {_pct(judgement.others_input_fraction)}"
                  " of their loop's time")
    return head + (f"balanced, no straggler (the rank that waits most waits "
                   f"{_pct(judgement.wait_fraction)}; {others}{inputs})")


CLUSTER_HEADINGS = ("rank", "host", "status", "verdict", "util %", "data wait %", "step ms")


def cluster_table(view: ClusterView) -> list[list[str]]:
    """The table's rows as text cells under `CLUSTER_HEADINGS` ("n/a" where unknown); the
    straggler's rank is marked."""
    rows = []
    for row in view.rows:
        mark = " (straggler)" if row.rank == view.judgement.straggler else ""
        rows.append([f"rank{row.rank}{mark}", row.host or "n/a", row.status,
                     row.verdict or "pending", _number(row.util_pct),
                     _number(None if row.wait_fraction is None else 100 * row.wait_fraction),
                     _number(None if row.step_s is None else 1000 * row.step_s, digits=1)])
    return rows


def _pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.0f}%"


def _number(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"
