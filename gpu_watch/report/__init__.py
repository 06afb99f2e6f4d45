"""Figures, text summaries and `report.html`, drawn from a run folder.

Everything here reads a :class:`~gpu_watch.runlog.Run` and never the framework, so a run can be
reviewed on any machine. What a reader must see first is whether the GPU worked: each timeline
carries a banner when training ran on the CPU, a GPU sat idle, or utilization could not be read.

The parts:

- `view`: the run as a reader sees it (per-GPU series, idle stretches, verdict words, banner,
  the epoch table), shared by everything below;
- `figures`: `utilization.png` and `epochs.png`;
- `text`: the plain-text summary of a run and the listing of a log folder;
- `html`: the self-contained `report.html`;
- `files`: writing them into the run folder, and the `gpu-watch report` command.
"""

from gpu_watch.report.figures import DPI, ENVELOPE_BUCKETS, plot_epochs, plot_utilization
from gpu_watch.report.files import EXIT_ERROR, EXIT_OK, render, run_report_command
from gpu_watch.report.html import report_html
from gpu_watch.report.text import list_runs_text, summary_text
from gpu_watch.report.view import VERDICT_COLOURS, VERDICT_WORDS, banner_text

__all__ = [
    "DPI",
    "ENVELOPE_BUCKETS",
    "EXIT_ERROR",
    "EXIT_OK",
    "VERDICT_COLOURS",
    "VERDICT_WORDS",
    "banner_text",
    "list_runs_text",
    "plot_epochs",
    "plot_utilization",
    "render",
    "report_html",
    "run_report_command",
    "summary_text",
]
