"""Writing the report into a run folder, and the `gpu-watch report` command."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TextIO

from gpu_watch import runlog
from gpu_watch.report.figures import plot_epochs, plot_utilization, png_bytes
from gpu_watch.report.html import report_html
from gpu_watch.report.text import list_runs_text, summary_text
from gpu_watch.runlog import Run, RunFolderError, find_runs, load_run

EXIT_OK = 0
EXIT_ERROR = 2



def replace_file(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so no reader ever sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is for sharing, like the CSVs
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def render(run_or_path: Run | str | os.PathLike) -> list[Path]:
    """Draw `utilization.png`, `epochs.png` and `report.html` into the run folder.

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
    utilization = png_bytes(plot_utilization(run))
    epochs = png_bytes(plot_epochs(run))
    files = {
        runlog.UTILIZATION_PNG: utilization,
        runlog.EPOCHS_PNG: epochs,
        runlog.REPORT_HTML: report_html(run, utilization, epochs).encode("utf-8"),
    }
    paths = []
    for name, data in files.items():
        replace_file(run.path / name, data)
        paths.append(run.path / name)
    return paths



def run_report_command(path: str, plots: bool, out: TextIO, rejudge: bool = False) -> int:
    """`gpu-watch report PATH`: summarise a run folder, or list the runs in a log folder.

    A run recorded before the run folder held its judged figures is judged again with
    today's rules (see `gpu_watch.rejudge`) before it is summarised; so is any run with
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
            return EXIT_OK
        out.write(f"gpu-watch report: {folder}: not a gpu-watch run folder (no "
                  f"{runlog.RUN_JSON}) and no run folders inside\n")
        return EXIT_ERROR
    try:
        run = load_run(folder)
        if rejudge or "judged" not in run.info:
            from gpu_watch.assessment import rejudge as judge_again

            run = judge_again(run)
    except RunFolderError as exc:
        out.write(f"gpu-watch report: {exc}\n")
        return EXIT_ERROR
    out.write(summary_text(run))
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
