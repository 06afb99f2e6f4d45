"""Plain-text summaries: one run, or the runs of a log folder."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpu_watch import runlog
from gpu_watch.impact import cause_totals, joules_text, run_cost, run_impacts
from gpu_watch.report.view import (
    banner_for,
    cause_impact_text,
    cause_message,
    duration_of,
    energy_line,
    epoch_table,
    gpu_line,
    gpu_series,
    impact_line,
    placement_line,
    verdict_title,
)
from gpu_watch.runlog import Run, RunFolderError, find_runs, load_run

_RANK_NAME = re.compile(r"(?P<base>.+)-rank(?P<rank>\d+)(?:-\d+)?")


def text_table(headings: Sequence[str], rows: Sequence[Sequence[str]],
                left: Sequence[int] = (), indent: str = "  ") -> list[str]:
    """Fixed-width lines; numbers right-aligned, the columns in `left` left-aligned."""
    widths = [max(len(str(x)) for x in column) for column in zip(headings, *rows, strict=True)]
    lines = []
    for row in [list(headings), *rows]:
        cells = [str(c).ljust(w) if i in left else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def summary_text(run: Run) -> str:
    """A plain-text summary: verdict, banner, status, GPUs, causes with remedies, epochs.

    Args:
        run: A loaded run.

    Returns:
        Several lines, each ending in a newline.
    """
    gpus = gpu_series(run)
    title, _ = verdict_title(run)
    lines = [f"Run {run.info.get('run_name') or run.path.name}  ({run.path})",
             f"Verdict: {title}"]
    impact = impact_line(run)
    if impact:
        lines.append(f"Cost: {impact}")
    banner = banner_for(run, gpus, with_impact=False)
    if banner:
        lines.append(f"  >>> {banner}")
    status = f"Status: {run.status}"
    duration = duration_of(run)
    if duration is not None:
        status += f", {duration:,.1f} s"
    if run.info.get("started_at"):
        status += f", started {run.info['started_at']}"
    if run.info.get("backend"):
        status += f", backend {run.info['backend']}"
    lines.append(status)
    error = run.info.get("error") or {}
    if error:
        lines.append(f"Error: {error.get('type', '')}: {error.get('message', '')}")
    if gpus:
        lines.append("GPUs:")
        lines += [f"  {gpu_line(g)}" for g in gpus]
    else:
        nvml_error = (run.info.get("nvml") or {}).get("error")
        lines.append("GPUs: none watched" + (f" (NVML: {nvml_error})" if nvml_error else ""))
    energy = energy_line(run)
    if energy:
        lines.append(f"Energy: {energy}")
    lines.append(f"Placement: {placement_line(run)}")
    causes = run_impacts(run)
    if causes:
        lines.append("Causes:")
        for number, item in enumerate(causes, 1):
            lines.append(f"  {number}. [{item.get('severity', '?')}] {item.get('code', '?')}: "
                         f"{cause_message(item)}")
            if item.get("remedy"):
                lines.append(f"     Remedy: {item['remedy']}")
            cost = cause_impact_text(item, duration)
            if cost:
                lines.append(f"     Cost: {cost}")
    else:
        lines.append("Causes: none found")
    headings, rows = epoch_table(run)
    if rows:
        lines.append("Epochs:")
        lines += text_table(headings, rows)
    else:
        lines.append("Epochs: none finished")
    lines += [f"Note: {warning}" for warning in run.warnings]
    return "\n".join(lines) + "\n"


def list_runs_text(log_dir: str | os.PathLike) -> str:
    """The runs in `log_dir`, newest first, with status, verdict and duration.

    Workers of one multi-worker run (folders named ``<base>-rank<N>``) are grouped under their
    base name, one line per rank. Workers whose default names differ (each picks its own
    suffix) are grouped too when they share the number of workers and started within
    `WORKER_START_WINDOW_S` of each other.

    Args:
        log_dir: A folder of run folders (e.g. ``gpu_watch_logs``).

    Returns:
        Several lines, each ending in a newline.
    """
    runs = find_runs(log_dir)
    groups: dict[str, list[tuple[int | None, Path, dict[str, Any]]]] = {}
    for path in runs:
        try:
            info = json.loads((path / runlog.RUN_JSON).read_text())
        except (OSError, ValueError):
            info = None
        if not isinstance(info, dict):
            info = {"verdict": "unreadable run.json"}
        match = _RANK_NAME.fullmatch(path.name)
        if match and (info.get("world_size") or 2) > 1:
            groups.setdefault(match["base"], []).append((int(match["rank"]), path, info))
        else:
            groups[path.name] = [(None, path, info)]
    _join_lone_workers(groups)
    rows = []
    for base, members in groups.items():
        if len(members) > 1 or members[0][0] is not None:
            started = min(str(info.get("started_at") or "") for _, _, info in members)
            noun = "worker" if len(members) == 1 else "workers"
            rows.append([started, f"{base} ({len(members)} {noun})", "", "", ""])
            for rank, path, info in sorted(members, key=lambda m: m[0] or 0):
                rows.append(["", f"  rank{rank}", *_run_cells(path, info)])
        else:
            _, path, info = members[0]
            rows.append([str(info.get("started_at") or ""), path.name, *_run_cells(path, info)])
    noun = "run" if len(runs) == 1 else "runs"
    lines = [f"{len(runs)} {noun} in {log_dir}, newest first:"]
    lines += text_table(["started", "run", "status", "verdict", "duration"], rows,
                         left=(0, 1, 2, 3))
    lines += cost_lines(runs)
    return "\n".join(lines) + "\n"


COSTLIEST_RUNS = 10  # runs listed under "Costliest runs"


def cost_lines(runs: Sequence[Path]) -> list[str]:
    """What the causes cost over `runs`: per cause, the GPU-hours left idle, the energy the
    GPUs drew meanwhile and the wall time lost, the costliest first; then the costliest runs.
    A run recorded before impacts were stored has them computed from its files."""
    costs = []
    for path in runs:
        try:
            run = load_run(path)
            causes = run_impacts(run)
        except (RunFolderError, OSError, ValueError, KeyError, TypeError):
            continue  # an unreadable run is listed above; its cost is unknown
        costs.append((path.name, run.verdict, causes))
    totals = cause_totals(causes for _, _, causes in costs)
    if not totals:
        return []
    noun = "run" if len(costs) == 1 else "runs"
    lines = [f"Cost by cause over {len(costs)} {noun} (GPU time left idle, the energy the "
             "GPUs drew meanwhile, wall time lost):"]
    lines += text_table(
        ["cause", "runs", "measured", "GPU-hours", "energy", "wall lost"],
        [[t.code, str(t.runs), str(t.measured_runs), f"{t.gpu_idle_s / 3600:.3f}",
          joules_text(t.energy_lost_j), f"{t.wall_lost_s:,.1f} s"] for t in totals],
        left=(0,))
    ranked = sorted(((run_cost(causes), name, verdict, causes)
                     for name, verdict, causes in costs), key=lambda r: (-r[0][0], -r[0][1], r[1]))
    ranked = [r for r in ranked if r[0][0] > 0 or r[0][1] > 0][:COSTLIEST_RUNS]
    if ranked:
        lines.append("Costliest runs:")
        lines += text_table(
            ["run", "verdict", "GPU-hours", "energy", "costliest cause"],
            [[name, str(verdict or "pending"), f"{idle / 3600:.3f}", joules_text(energy),
              _costliest_code(causes)] for (idle, energy), name, verdict, causes in ranked],
            left=(0, 1, 4))
    return lines


def _costliest_code(causes: Sequence[dict[str, Any]]) -> str:
    def idle(item: dict[str, Any]) -> float:
        return (item.get("impact") or {}).get("gpu_idle_s") or 0.0

    return str(max(causes, key=idle).get("code")) if causes else ""


WORKER_START_WINDOW_S = 60.0


def _join_lone_workers(groups: dict[str, list[tuple[int | None, Path, dict[str, Any]]]]) -> None:
    lone = [(base, members[0]) for base, members in groups.items()
            if len(members) == 1 and members[0][0] is not None]
    lone.sort(key=lambda item: str(item[1][2].get("started_at") or ""))
    jobs: list[list[tuple[int | None, Path, dict[str, Any]]]] = []
    for base, member in lone:
        rank, _, info = member
        start = _started(info)
        for job in jobs:
            first = job[0][2]
            first_start = _started(first)
            if (first.get("world_size") == info.get("world_size") and start and first_start
                    and abs((start - first_start).total_seconds()) <= WORKER_START_WINDOW_S
                    and rank not in {m[0] for m in job}):
                job.append(member)
                del groups[base]
                break
        else:
            jobs.append(groups[base])


def _started(info: dict[str, Any]) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(info.get("started_at")).replace("Z", "+00:00"))
    except ValueError:
        return None


def _run_cells(path: Path, info: dict[str, Any]) -> list[str]:
    status = Run(path, info, None, None, None).status if "schema_version" in info else "?"
    duration = info.get("duration_s")
    return [status, str(info.get("verdict") or "pending"),
            "" if duration is None else f"{float(duration):,.1f} s"]
