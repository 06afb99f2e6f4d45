"""Plain-text summaries: one run, or the runs of a log folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpu_watch.judging.impact import (
    cause_totals,
    first_impact_line,
    joules_text,
    run_cost,
    run_impacts,
)
from gpu_watch.report.advice import fixes
from gpu_watch.report.cluster import (
    CLUSTER_HEADINGS,
    ClusterView,
    cluster_table,
    run_groups,
    verdict_line,
)
from gpu_watch.report.view import (
    WAIT_LOWER_BOUND_NOTE,
    banner_for,
    breakdown_text,
    cause_impact_text,
    duration_of,
    energy_line,
    epoch_table,
    gpu_line,
    gpu_series,
    impact_line,
    nvml_error_told,
    placement_line,
    verdict_title,
)
from gpu_watch.runlog import Run, RunFolderError, RunRecord, find_runs, load_run


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
    lines = [f"Run {run.record.run_name or run.path.name}  ({run.path})",
             f"Verdict: {title}"]
    impact = impact_line(run)
    if impact:
        lines.append(f"Cost: {impact}")
    banner = banner_for(run, gpus, causes=False, with_impact=False)
    if banner:
        lines.append(f"  >>> {banner}")
    status = f"Status: {run.status}"
    duration = duration_of(run)
    if duration is not None:
        status += f", {duration:,.1f} s"
    if run.record.started_at:
        status += f", started {run.record.started_at}"
    if run.record.backend:
        status += f", backend {run.record.backend}"
    lines.append(status)
    loop = breakdown_text(run.record.breakdown)
    if loop:
        lines.append(f"Time: {loop}")
    error = run.record.error or {}
    if error:
        lines.append(f"Error: {error.get('type', '')}: {error.get('message', '')}")
    if gpus:
        lines.append("GPUs:")
        lines += [f"  {gpu_line(g)}" for g in gpus]
    else:
        nvml_error = None if nvml_error_told(run) else (run.record.nvml or {}).get("error")
        lines.append("GPUs: none watched" + (f" (NVML: {nvml_error})" if nvml_error else ""))
    energy = energy_line(run)
    if energy:
        lines.append(f"Energy: {energy}")
    lines.append(f"Placement: {placement_line(run)}")
    causes = fixes(run_impacts(run))
    if causes:
        ordered = any(fix.order for fix in causes)
        lines.append("Causes, in the order to fix them:" if ordered else "Causes:")
        for number, fix in enumerate(causes, 1):
            lines.append(f"  {number}. {fix.label}[{fix.severity}] {fix.code}: {fix.message}")
            if fix.remedy:
                lines.append(f"     Remedy: {fix.remedy}")
            cost = cause_impact_text(dict(fix.item), duration)
            if cost:
                lines.append(f"     Cost: {cost}")
    else:
        lines.append("Causes: none found")
    headings, rows = epoch_table(run)
    if rows:
        lines.append("Epochs:")
        lines += text_table(headings, rows)
        if any(str(cell).startswith(">=") for row in rows for cell in row):
            lines.append(f"  {WAIT_LOWER_BOUND_NOTE}")
        lines += [f"  and {text}" for text in unfinished_text(run)]
    else:
        lines.append("; ".join(["Epochs: none finished", *unfinished_text(run)]))
    rejudged = run.record.rejudged
    if isinstance(rejudged, dict):
        lines.append(f"Note: judged again with the rules of gpu-watch "
                     f"{rejudged.get('gpu_watch_version')}; the run recorded the verdict "
                     f"{rejudged.get('recorded_verdict') or 'none'}")
    lines += [f"Note: {warning}" for warning in run.warnings]
    return "\n".join(lines) + "\n"


def list_runs_text(log_dir: str | os.PathLike) -> str:
    """The runs in `log_dir`, newest first, with status, verdict and duration.

    Workers of one multi-worker run (folders named ``<base>-rank<N>``) are grouped under their
    base name, one line per rank (see `gpu_watch.report.cluster.run_groups`).

    Args:
        log_dir: A folder of run folders (e.g. ``gpu_watch_logs``).

    Returns:
        Several lines, each ending in a newline.
    """
    groups = run_groups(log_dir)
    count = sum(len(members) for members in groups.values())
    rows = []
    for base, members in groups.items():
        if len(members) > 1 or members[0][0] is not None:
            started = min(str(record.started_at or "") for _, _, record in members)
            noun = "worker" if len(members) == 1 else "workers"
            rows.append([started, f"{base} ({len(members)} {noun})", "", "", ""])
            for rank, path, record in sorted(members, key=lambda m: m[0] or 0):
                rows.append(["", f"  rank{rank}", *_run_cells(path, record)])
        else:
            _, path, record = members[0]
            rows.append([str(record.started_at or ""), path.name, *_run_cells(path, record)])
    noun = "run" if count == 1 else "runs"
    lines = [f"{count} {noun} in {log_dir}, newest first:"]
    lines += text_table(["started", "run", "status", "verdict", "duration"], rows,
                         left=(0, 1, 2, 3))
    lines += cost_lines(find_runs(log_dir))
    return "\n".join(lines) + "\n"


def cluster_text(view: ClusterView) -> str:
    """A multi-worker run as one table: each rank's host, status, verdict, this training's
    utilization, data-wait share and step time, under the run-level verdict that names a
    straggler, if any.

    Args:
        view: The run (see `gpu_watch.report.cluster.clusters`).

    Returns:
        Several lines, each ending in a newline.
    """
    lines = [verdict_line(view)]
    lines += text_table(CLUSTER_HEADINGS, cluster_table(view), left=(0, 1, 2, 3))
    return "\n".join(lines) + "\n"


def _run_cells(path: Path, record: RunRecord) -> list[str]:
    status = Run(path, record, None, None, None).status if record.has("schema_version") else "?"
    duration = record.duration_s
    return [status, str(record.verdict or "pending"),
            "" if duration is None else f"{float(duration):,.1f} s"]


COSTLIEST_RUNS = 10  # runs listed under "Costliest runs"
NOT_MEASURED = "not measured"  # a cost no run measured: never 0


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
        [[t.code, str(t.runs), str(t.measured_runs),
          NOT_MEASURED if t.gpu_idle_s is None else f"{t.gpu_idle_s / 3600:.3f}",
          NOT_MEASURED if t.energy_lost_j is None else joules_text(t.energy_lost_j),
          NOT_MEASURED if t.wall_lost_s is None else f"{t.wall_lost_s:,.1f} s"]
         for t in totals],
        left=(0,))
    ranked = sorted(((run_cost(causes), name, verdict, causes)
                     for name, verdict, causes in costs),
                    key=lambda r: (-(r[0][0] or 0.0), -(r[0][1] or 0.0), r[1]))
    ranked = [r for r in ranked if (r[0][0] or 0.0) > 0 or (r[0][1] or 0.0) > 0]
    if ranked:
        lines.append("Costliest runs:")
        lines += text_table(
            ["run", "verdict", "GPU-hours", "energy", "costliest cause"],
            [[name, str(verdict or "pending"),
              NOT_MEASURED if idle is None else f"{idle / 3600:.3f}",
              NOT_MEASURED if energy is None else joules_text(energy), _costliest_code(causes)]
             for (idle, energy), name, verdict, causes in ranked[:COSTLIEST_RUNS]],
            left=(0, 1, 4))
    return lines


def _costliest_code(causes: Sequence[dict[str, Any]]) -> str:
    def idle(item: dict[str, Any]) -> float:
        return (item.get("impact") or {}).get("gpu_idle_s") or 0.0

    return str(max(causes, key=idle).get("code")) if causes else ""


def unfinished_text(run: Run) -> list[str]:
    """What was measured of each epoch that did not finish (a run stopped mid-epoch), e.g.
    "5,543 batches measured in epoch 1, which did not finish"."""
    return [f"{count:,} batch{'es' if count != 1 else ''} measured in epoch {epoch}, which "
            "did not finish" for epoch, count in unfinished_batches(run).items()]


def unfinished_batches(run: Run) -> dict[int, int]:
    """Batches per epoch for the epochs in `batches.csv` that `epochs.csv` has no row for."""
    batches, epochs = run.batches, run.epochs
    if batches is None or "epoch" not in batches.columns or batches.empty:
        return {}
    finished = set()
    if epochs is not None and "epoch" in epochs.columns:
        finished = {int(e) for e in epochs["epoch"].dropna()}
    counts = batches["epoch"].dropna().astype(int).value_counts().sort_index()
    return {int(e): int(n) for e, n in counts.items() if int(e) not in finished}


def summary_line(record: RunRecord, run_dir: Path | None, batches: int | None = None,
                 epochs: int | None = None) -> str:
    """What `GPUWatch` prints when a run ends, however it ends: the verdict, the status, the
    run folder, what was measured, what the costliest cause cost, where the loop's time went
    (where the run records it), then each cause in the order to fix it with its remedy.

    Args:
        record: The run's `run.json` record as it stands at the end.
        run_dir: Its run folder.
        batches: Training batches measured (rows of `batches.csv`), None when unknown.
        epochs: Epochs that finished (rows of `epochs.csv`), None when unknown.

    Returns:
        Lines joined by newlines, without a final one.
    """
    head = f"gpu-watch: verdict {record.verdict or 'none'} ({record.status})"
    if batches is not None:
        head += f"; measured {batches:,} batch{'es' if batches != 1 else ''}"
        if epochs is not None:
            head += f" in {epochs:,} finished epoch{'s' if epochs != 1 else ''}"
    lines = [f"{head}; run folder {run_dir}"]
    causes = record.causes or []
    impact = first_impact_line(causes, record.duration_s)
    if impact:  # what it cost comes first: it decides whether the fix is worth the time
        lines.append(f"  cost: {impact}")
    loop = breakdown_text(record.breakdown)
    if loop:
        lines.append(f"  time: {loop}")
    for fix in fixes(causes):
        lines.append(f"  - {fix.label}{fix.code}: {fix.message}")
        if fix.remedy:
            lines.append(f"    remedy: {fix.remedy}")
    return "\n".join(lines)


def no_run_line(reason: str) -> str:
    """What `GPUWatch` prints at the end of a training it could not watch at all."""
    return f"gpu-watch: no verdict: this training was not watched ({reason})"
