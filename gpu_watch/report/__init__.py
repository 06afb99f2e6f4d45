"""Figures, text summaries and `report.html`, drawn from a run folder.

Everything here reads a :class:`~gpu_watch.runlog.Run` and never the framework, so a run can be
reviewed on any machine. What a reader must see first is whether the GPU worked: each timeline
carries a banner when training ran on the CPU, a GPU sat idle, or utilization could not be read.

The parts:

- `advice`: the causes in words, in the order to fix them (the one place that builds them);
- `view`: the run as a reader sees it (per-GPU series, idle stretches, verdict words, banner,
  the epoch table), shared by everything below;
- `figures`: `utilization.png` and `epochs.png`;
- `text`: the plain-text summary of a run and the listing of a log folder;
- `html`: the self-contained `report.html`;
- `files`: writing them into the run folder, and the `gpu-watch report` command.
"""

from __future__ import annotations

import importlib
from typing import Any

# Where each public name lives. They are imported when first used, so that a training process
# that prints a summary line (`gpu_watch.report.text`) never imports matplotlib: the figures
# are drawn in a process of their own.
_HOMES = {
    "DPI": "figures",
    "ENVELOPE_BUCKETS": "figures",
    "plot_epochs": "figures",
    "plot_utilization": "figures",
    "EXIT_ERROR": "files",
    "EXIT_OK": "files",
    "render": "files",
    "run_report_command": "files",
    "report_html": "html",
    "list_runs_text": "text",
    "summary_text": "text",
    "VERDICT_COLOURS": "view",
    "VERDICT_WORDS": "view",
    "banner_text": "view",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


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
