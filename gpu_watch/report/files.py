"""Writing the report into a run folder, and the `gpu-watch report` command."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from gpu_watch import runlog
from gpu_watch.errors import EXIT_ERROR, EXIT_OK
from gpu_watch.report.cluster import UNREADABLE, ClusterView, cluster_of, clusters
from gpu_watch.report.figures import plot_epochs, plot_utilization, png_pair, without_header
from gpu_watch.report.html import report_html
from gpu_watch.report.text import cluster_text, list_runs_text, summary_text
from gpu_watch.runlog import Run, RunFolderError, find_runs, load_run


def render(run_or_path: Run | str | os.PathLike) -> list[Path]:
    """Draw `utilization.png`, `epochs.png` and `report.html` into the run folder.

    For a rank of a multi-worker run, `report.html` holds the table of all its ranks, as the
    folders beside it show them now.

    Each file is replaced atomically. Safe to call from a background thread while training
    goes on (no pyplot).

    Args:
        run_or_path: A loaded run, or the path of a run folder.

    Returns:
        The paths written: the timeline PNG, the epoch PNG and the HTML report.

    Raises:
        RunFolderError: `run_or_path` is a path that is not a readable run folder.
        OSError: A file could not be written.
    """
    run = run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)
    utilization, utilization_body = png_pair(plot_utilization(run))
    epochs, epochs_body = png_pair(plot_epochs(run))
    files = {
        runlog.UTILIZATION_PNG: utilization,
        runlog.EPOCHS_PNG: epochs,
        runlog.REPORT_HTML: report_html(run, utilization_body, epochs_body,
                                        _cluster_or_none(run)).encode("utf-8"),
    }
    paths = []
    for name, data in files.items():
        runlog.replace_file(run.path / name, data)
        paths.append(run.path / name)
    return paths


def _cluster_or_none(run: Run) -> ClusterView | None:
    """The multi-worker run that `run` is a rank of; None for a run of one process, or when
    the folders beside it cannot be listed (the rank's own report still gets written)."""
    if (run.record.world_size or 1) <= 1:
        return None
    try:
        return cluster_of(run.path)
    except OSError:
        return None


def render_cluster_html(run_dir: Path) -> Path:
    """Rewrite `report.html` of one rank with the cluster table as it stands now, reusing the
    figures already in the folder (a missing figure is left out of the page, not redrawn).

    Raises:
        RunFolderError: `run_dir` is not a readable run folder.
        OSError: The page could not be written.
    """
    run = load_run(run_dir)
    pngs = []
    for name in (runlog.UTILIZATION_PNG, runlog.EPOCHS_PNG):
        try:
            pngs.append(without_header((run.path / name).read_bytes()))
        except OSError:
            pngs.append(None)
    page = report_html(run, pngs[0], pngs[1], _cluster_or_none(run))
    runlog.replace_file(run.path / runlog.REPORT_HTML, page.encode("utf-8"))
    return run.path / runlog.REPORT_HTML


def run_report_command(path: str, plots: bool, out: TextIO, rejudge: bool = False) -> int:
    """`gpu-watch report PATH`: summarise a run folder, or list the runs in a log folder.

    A folder of runs also gets one table per multi-worker run (each rank's host, verdict,
    utilization, data-wait share and step time, and the straggler, if any), and, with `plots`,
    that table in each rank's `report.html`. A rank's run folder gets its run's table after
    its summary. A run recorded before the run folder held its judged figures is judged again
    with today's rules (see `gpu_watch.rejudge`) before it is summarised; so is any run with
    `rejudge`. The run folder's own `run.json` and CSV files are left as they are.

    Args:
        path: A run folder (redrawn and summarised) or a folder of runs (listed).
        plots: Whether to redraw `utilization.png`, `epochs.png` and `report.html`.
        out: Where to print.
        rejudge: Judge the run again with today's rules even if it records its judgement.

    Returns:
        0 on success; 2 when `path` is missing, not a run folder and holds no runs, or its
        files cannot be read or the plots cannot be written.
    """
    folder = Path(path)
    if folder.is_dir() and not (folder / runlog.RUN_JSON).exists():
        if find_runs(folder):
            out.write(list_runs_text(folder))
            return _report_clusters(folder, plots, out)
        out.write(f"gpu-watch report: {folder}: not a gpu-watch run folder (no "
                  f"{runlog.RUN_JSON}) and no run folders inside\n")
        return EXIT_ERROR
    try:
        run = load_run(folder)
        if rejudge or not run.record.has("judged"):
            from gpu_watch.judging.assessment import rejudge as judge_again

            run = judge_again(run)
    except RunFolderError as exc:
        out.write(f"gpu-watch report: {exc}\n")
        return EXIT_ERROR
    out.write(summary_text(run))
    cluster = _cluster_or_none(run)
    if cluster is not None:
        out.write(cluster_text(cluster))
    if not plots:
        return EXIT_OK
    try:
        written = render(run)
    except OSError as exc:
        out.write(f"gpu-watch report: could not write the plots in {folder}: "
                  f"{exc.strerror or exc}\n")
        return EXIT_ERROR
    out.write("Wrote " + ", ".join(p.name for p in written) + f" in {folder}\n")
    return EXIT_OK


def _report_clusters(folder: Path, plots: bool, out: TextIO) -> int:
    """Print each multi-worker run's table; with `plots`, put it in each rank's report.html."""
    code = EXIT_OK
    for view in clusters(folder):
        out.write("\n" + cluster_text(view))
        if not plots:
            continue
        written = 0
        for row in view.rows:
            if row.status == UNREADABLE:
                continue  # its row says so; there is no page of its own to put the table in
            try:
                render_cluster_html(row.path)
                written += 1
            except (RunFolderError, OSError) as exc:
                out.write(f"gpu-watch report: could not write {runlog.REPORT_HTML} in "
                          f"{row.path}: {getattr(exc, 'strerror', None) or exc}\n")
                code = EXIT_ERROR
        if written:
            out.write(f"Wrote the table into {runlog.REPORT_HTML} of {written} rank "
                      f"folder{'s' if written > 1 else ''}\n")
    return code
