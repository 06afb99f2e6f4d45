"""Figures, text summaries and `report.html`, drawn from a run folder.

Everything here reads a :class:`~gpu_watch.runlog.Run` and never the framework, so a run can be
reviewed on any machine. Figures are built on `matplotlib.figure.Figure` with the Agg canvas and
no pyplot: the callback redraws them from a background thread at each epoch end, where pyplot's
global state is not safe.

What a reader must see first is whether the GPU worked: each timeline carries a banner when
training ran on the CPU, a GPU sat idle, or utilization could not be read. Missing readings stay
NaN and are drawn as gaps, never as zeros, because "not measured" must not read as "idle".
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import html
import io
import json
import math
import os
import re
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from gpu_watch import runlog
from gpu_watch.runlog import Run, RunFolderError, find_runs, load_run

VERDICT_COLOURS = {
    "ok": "#2e7d32",
    "idle": "#e65100",
    "cpu_fallback": "#c62828",
    "unmonitored": "#6a1b9a",
}
NO_VERDICT_COLOUR = "#757575"
VERDICT_WORDS = {
    "ok": "OK: training kept the GPU busy",
    "idle": "IDLE: training ran on the GPU but left it idle much of the time",
    "cpu_fallback": "CPU FALLBACK: training ran on the CPU, not the GPU",
    "unmonitored": "UNMONITORED: training uses a GPU, but its utilization could not be read",
}
DEFAULT_IDLE_THRESHOLD_PCT = 10.0
DEFAULT_INTERVAL_S = 1.0
# Beyond twice this many points a series is drawn as a per-bucket mean with a min/max band:
# about one bucket per pixel column, so no spike or dip is lost and drawing time stays flat.
ENVELOPE_BUCKETS = 1200
DPI = 100
EXIT_OK = 0
EXIT_ERROR = 2

_WIDTH_IN = 14.0
_UTIL_COLOUR = "#1565c0"
_PROC_COLOUR = "#00897b"
_MEM_COLOUR = "#6a1b9a"
_WAIT_COLOUR = "#ef6c00"
_IDLE_SHADE = "#ffb74d"
_DOT_COLOUR = "#263238"
_RANK_NAME = re.compile(r"(?P<base>.+)-rank(?P<rank>\d+)(?:-\d+)?")


# -- reading the run -------------------------------------------------------------------------


def _floats(frame: pd.DataFrame | None, column: str) -> np.ndarray:
    """A column as floats, NaN where empty; all NaN when the column is absent."""
    if frame is None:
        return np.empty(0)
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)


def _config(run: Run) -> dict[str, Any]:
    return run.info.get("config") or {}


def _threshold_pct(run: Run) -> float:
    value = _config(run).get("idle_threshold_pct")
    return DEFAULT_IDLE_THRESHOLD_PCT if value is None else float(value)


@dataclass(frozen=True)
class _Idle:
    """Where a GPU's utilization stayed under the idle threshold.

    `spans` holds (start_s, end_s) rows; `idle_s` and `measured_s` are the seconds covered by
    idle readings and by readings at all, so a missing reading counts as neither.
    """

    spans: np.ndarray
    idle_s: float
    measured_s: float

    @property
    def fraction(self) -> float | None:
        return self.idle_s / self.measured_s if self.measured_s > 0 else None


def _idle(time_s: np.ndarray, util_pct: np.ndarray, threshold_pct: float,
          interval_s: float) -> _Idle:
    if time_s.size == 0:
        return _Idle(np.empty((0, 2)), 0.0, 0.0)
    gaps = np.diff(time_s)
    typical_s = float(np.median(gaps)) if gaps.size else interval_s
    # NVML's utilization is the share of the last sample period, so a reading stands for the
    # time since the previous one; the first for one interval, but none before training began.
    starts = np.empty_like(time_s)
    starts[1:] = time_s[:-1]
    starts[0] = max(time_s[0] - typical_s, min(time_s[0], 0.0))
    durations = time_s - starts
    measured = ~np.isnan(util_pct)
    idle = measured & (np.nan_to_num(util_pct, nan=math.inf) < threshold_pct)
    edges = np.diff(np.concatenate(([0], idle.astype(np.int8), [0])))
    first = np.flatnonzero(edges == 1)
    last = np.flatnonzero(edges == -1) - 1
    spans = np.column_stack((starts[first], time_s[last]))
    return _Idle(spans, float(durations[idle].sum()), float(durations[measured].sum()))


@dataclass
class _GPU:
    """One watched GPU's readings, sorted by time."""

    index: int
    name: str
    verdict: str | None
    time_s: np.ndarray
    util_pct: np.ndarray
    proc_util_pct: np.ndarray
    mem_used_mib: np.ndarray
    proc_mem_mib: np.ndarray
    mem_total_mib: float
    idle: _Idle

    @property
    def util_mean_pct(self) -> float | None:
        known = self.util_pct[~np.isnan(self.util_pct)]
        return float(known.mean()) if known.size else None

    @property
    def mem_peak_mib(self) -> float | None:
        known = self.mem_used_mib[~np.isnan(self.mem_used_mib)]
        return float(known.max()) if known.size else None

    @property
    def proc_mem_peak_mib(self) -> float | None:
        known = self.proc_mem_mib[~np.isnan(self.proc_mem_mib)]
        return float(known.max()) if known.size else None


def _gpus(run: Run) -> list[_GPU]:
    devices = {}
    for device in run.info.get("devices") or []:
        if isinstance(device, dict) and device.get("nvml_index") is not None:
            devices[int(device["nvml_index"])] = device
    samples = run.samples
    sample_gpu = _floats(samples, "gpu")
    seen = {int(g) for g in np.unique(sample_gpu[~np.isnan(sample_gpu)])}
    verdicts = run.info.get("gpu_verdicts") or {}
    threshold = _threshold_pct(run)
    interval_s = float(_config(run).get("interval_s") or DEFAULT_INTERVAL_S)
    gpus = []
    for index in sorted(set(devices) | seen):
        if index in seen:
            frame = samples[sample_gpu == index]
            columns = {name: _floats(frame, name) for name in (
                "time_s", "util_pct", "proc_util_pct", "mem_used_mib", "proc_mem_mib",
                "mem_total_mib")}
        else:
            # No sampler rows for this GPU (an older run, or samples.csv lost): the readings
            # the batches carry are the next best timeline.
            batches = run.batches
            columns = {
                "time_s": _floats(batches, "time_s"),
                "util_pct": _floats(batches, f"gpu{index}_util_pct"),
                "mem_used_mib": _floats(batches, f"gpu{index}_mem_used_mib"),
            }
            for name in ("proc_util_pct", "proc_mem_mib", "mem_total_mib"):
                columns[name] = np.full(columns["time_s"].size, np.nan)
        keep = ~np.isnan(columns["time_s"])
        order = np.argsort(columns["time_s"][keep], kind="stable")
        columns = {name: values[keep][order] for name, values in columns.items()}
        device = devices.get(index, {})
        totals = columns.pop("mem_total_mib")
        total = device.get("mem_total_mib")
        if total is None and not np.isnan(totals).all():
            total = float(np.nanmax(totals))
        gpus.append(_GPU(
            index=index,
            name=str(device.get("name") or "unknown GPU"),
            verdict=verdicts.get(str(index)),
            mem_total_mib=math.nan if total is None else float(total),
            idle=_idle(columns["time_s"], columns["util_pct"], threshold, interval_s),
            **columns,
        ))
    return gpus


def _lead_cause(run: Run) -> dict[str, Any] | None:
    """The cause to name first: the first that stops the GPU from being used, else the first."""
    causes = [c for c in run.causes if isinstance(c, dict)]
    for item in causes:
        if item.get("severity") == "error":
            return item
    return causes[0] if causes else None


def _cause_message(item: dict[str, Any]) -> str:
    return str(item.get("message") or item.get("code") or "unknown cause")


def _pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{round(100 * fraction)}%"


def _idle_gpus(run: Run, gpus: Sequence[_GPU]) -> list[_GPU]:
    flagged = [g for g in gpus if g.verdict == "idle"]
    if flagged or run.verdict != "idle":
        return flagged
    return list(gpus)  # a run judged idle without per-GPU verdicts: every GPU shares the blame


def _banner(run: Run, gpus: Sequence[_GPU]) -> str | None:
    verdict = run.verdict
    lead = _lead_cause(run)
    if verdict == "cpu_fallback":
        return "Training ran on the CPU" + (f": {_cause_message(lead)}" if lead else "")
    idle = _idle_gpus(run, gpus)
    if idle:
        text = "; ".join(
            f"GPU {g.index} idle {_pct(g.idle.fraction)} of training"
            if g.idle.fraction is not None else f"GPU {g.index} idle" for g in idle)
        return text + (f". {_cause_message(lead)}" if lead else "")
    if verdict == "unmonitored":
        error = (run.info.get("nvml") or {}).get("error")
        return "GPU utilization unknown: NVML could not be read" + (f" ({error})" if error else "")
    return None


def banner_text(run: Run) -> str | None:
    """The one line a reader must see first, or None when the GPU did its work.

    Args:
        run: A loaded run.

    Returns:
        "Training ran on the CPU: <cause>" for CPU fallback; "GPU <i> idle <p>% of training"
        for each idle GPU (p is the share of the measured time under the idle threshold,
        missing readings excluded); "GPU utilization unknown: ..." when unmonitored; else None.
    """
    return _banner(run, _gpus(run))


def _title(run: Run) -> tuple[str, str]:
    verdict = run.verdict
    if verdict in VERDICT_WORDS:
        return VERDICT_WORDS[verdict], VERDICT_COLOURS[verdict]
    if verdict:
        return f"{verdict.upper()}: unrecognised verdict", NO_VERDICT_COLOUR
    if run.status == runlog.STATUS_RUNNING:
        return "No verdict yet: the run is still going", NO_VERDICT_COLOUR
    return f"No verdict: the run ended without one (status {run.status})", NO_VERDICT_COLOUR


def _duration_s(run: Run) -> float | None:
    duration = run.info.get("duration_s")
    if duration is not None:
        return float(duration)
    times = _floats(run.batches, "time_s")
    return float(np.nanmax(times)) if times.size and not np.isnan(times).all() else None


def _placement_line(run: Run) -> str:
    placement = run.info.get("placement") or {}
    if not placement:
        return "placement: not checked"
    on_gpu = placement.get("compute_on_gpu")
    words = {True: "on the GPU", False: "on the CPU", None: "unknown"}.get(on_gpu, str(on_gpu))
    line = f"step 0 compute: {words}"
    counts = placement.get("op_counts") or {}
    if counts:
        line += " (ops: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"
    return line


def _simulated(run: Run) -> bool:
    """Whether the readings came from a scripted NVML (`FakeNVML`), not a real GPU."""
    return bool((run.info.get("nvml") or {}).get("simulated"))


def _subtitle(run: Run, gpus: Sequence[_GPU]) -> str:
    parts = [str(run.info.get("run_name") or run.path.name), f"status {run.status}"]
    if _simulated(run):
        parts.insert(0, "SIMULATED GPU readings (FakeNVML)")
    duration = _duration_s(run)
    if duration is not None:
        parts.append(f"{duration:,.1f} s")
    if run.info.get("backend"):
        parts.append(f"backend {run.info['backend']}")
    if gpus:
        parts.append(f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''} watched")
    else:
        error = (run.info.get("nvml") or {}).get("error")
        parts.append("no GPU watched" + (f" (NVML: {error})" if error else ""))
    parts.append(_placement_line(run))
    return "  ·  ".join(parts)


# -- drawing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Envelope:
    """A series ready to draw: raw points, or per-bucket mean with the bucket's min and max."""

    time_s: np.ndarray
    low: np.ndarray
    mean: np.ndarray
    high: np.ndarray
    aggregated: bool


def _envelope(time_s: np.ndarray, values: np.ndarray,
              buckets: int = ENVELOPE_BUCKETS) -> _Envelope:
    """Aggregate a time-sorted series into `buckets` equal time buckets when it is long."""
    if time_s.size <= 2 * buckets or time_s[-1] <= time_s[0]:
        return _Envelope(time_s, values, values, values, False)
    width_s = (time_s[-1] - time_s[0]) / buckets
    ids = np.minimum(((time_s - time_s[0]) / width_s).astype(np.int64), buckets - 1)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    measured = ~np.isnan(values)
    counts = np.add.reduceat(measured.astype(np.int64), starts)
    sums = np.add.reduceat(np.where(measured, values, 0.0), starts)
    with np.errstate(invalid="ignore"):
        mean = sums / counts  # 0/0: a bucket with no readings stays a gap
    return _Envelope(
        time_s=time_s[0] + (ids[starts] + 0.5) * width_s,
        low=np.fmin.reduceat(values, starts),  # fmin/fmax skip NaN: one reading is enough
        mean=mean,
        high=np.fmax.reduceat(values, starts),
        aggregated=True,
    )


def _draw(ax: Any, time_s: np.ndarray, values: np.ndarray, colour: str, label: str,
          gid: str, linewidth: float = 1.2, linestyle: str = "-") -> _Envelope:
    env = _envelope(time_s, values)
    if env.aggregated:
        # Edges drawn too: a one-bucket spike is a sliver that a fill alone would hide.
        ax.fill_between(env.time_s, env.low, env.high, color=colour, alpha=0.4,
                        linewidth=0.6, gid=f"{gid}-envelope")
    # Markers keep a lone reading between two gaps visible; a line needs two points.
    marker = "o" if not env.aggregated and time_s.size <= 200 else None
    ax.plot(env.time_s, env.mean, color=colour, linewidth=linewidth, linestyle=linestyle,
            label=label, gid=gid, marker=marker, markersize=1.8)
    return env


def _shade_idle(ax: Any, gpu: _GPU, span_s: float, threshold_pct: float) -> None:
    spans = gpu.idle.spans
    if len(spans) > 1:
        # Join stretches closer than about a pixel, so a GPU that flaps for a week draws as
        # bands rather than millions of slivers.
        tolerance_s = span_s / (2 * ENVELOPE_BUCKETS)
        breaks = spans[1:, 0] - spans[:-1, 1] > tolerance_s
        begin = np.flatnonzero(np.r_[True, breaks])
        end = np.flatnonzero(np.r_[breaks, True])
        spans = np.column_stack((spans[begin, 0], spans[end, 1]))
    verts = np.empty((len(spans), 4, 2))
    verts[:, :, 0] = spans[:, [0, 0, 1, 1]]
    verts[:, :, 1] = [0, 1, 1, 0]
    ax.add_collection(PolyCollection(
        verts, transform=ax.get_xaxis_transform(), facecolor=_IDLE_SHADE, alpha=0.35,
        edgecolor="none", label=f"idle (< {threshold_pct:g}%)", gid=f"idle-gpu{gpu.index}",
    ), autolim=False)


def _epoch_starts(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """Each epoch's number and the time its first batch began, seconds since train start."""
    epoch = _floats(run.batches, "epoch")
    if epoch.size == 0:
        return np.empty(0), np.empty(0)
    time_s = _floats(run.batches, "time_s")
    step_s = np.nan_to_num(_floats(run.batches, "step_s"))
    first = np.flatnonzero(np.r_[True, epoch[1:] != epoch[:-1]])
    return epoch[first], np.maximum(time_s[first] - step_s[first], 0.0)


def _mark_epochs(ax: Any, starts_s: np.ndarray) -> None:
    if starts_s.size:
        # Fainter when there are many, so a hundred epochs do not hatch over the data.
        ax.vlines(starts_s, 0, 1, transform=ax.get_xaxis_transform(), colors="0.35",
                  linestyles=":", linewidth=0.8, alpha=0.9 if starts_s.size <= 40 else 0.35,
                  gid="epoch-starts")


def _label_epochs(ax: Any, epochs: np.ndarray, starts_s: np.ndarray) -> None:
    every = max(1, math.ceil(len(epochs) / 30))
    for number, start in list(zip(epochs, starts_s, strict=True))[::every]:
        ax.text(start, 0.97, f" e{int(number)}", transform=ax.get_xaxis_transform(),
                fontsize=7, color="0.3", va="top", ha="left")


def _empty_note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10,
            color="0.35")


def _new_figure(run: Run, height_in: float) -> Figure:
    fig = Figure(figsize=(_WIDTH_IN, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    if _simulated(run):
        # Across the whole figure, so a cropped or shared copy still says what it is.
        fig.text(0.5, 0.5, "SIMULATED", ha="center", va="center", rotation=20, fontsize=90,
                 fontweight="bold", color="0.5", alpha=0.12, zorder=0, gid="simulated")
    return fig


def _banner_lines(banner: str | None) -> list[str]:
    return textwrap.wrap(banner, 100) if banner else []


def _subtitle_lines(subtitle: str) -> list[str]:
    return textwrap.wrap(subtitle, 165) or [""]


def _header_in(banner: str | None, subtitle: str) -> float:
    """Height of the banner, title and subtitle, inches."""
    lines = _banner_lines(banner)
    banner_in = 0.3 + 0.3 * len(lines) if lines else 0.0
    return banner_in + 0.65 + 0.17 * len(_subtitle_lines(subtitle))


def _header(fig: Figure, top_in: float, height_in: float, banner: str | None,
            banner_colour: str, title: str, colour: str, subtitle: str) -> None:
    """Draw the banner (when there is one), the title and the subtitle from `top_in` down."""
    used = 0.0
    lines = _banner_lines(banner)
    if lines:
        banner_in = 0.3 + 0.3 * len(lines)
        ax = fig.add_axes((0, (height_in - top_in - banner_in) / height_in, 1,
                           banner_in / height_in))
        ax.set_facecolor(banner_colour)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.text(0.5, 0.5, "\n".join(lines), transform=ax.transAxes, ha="center",
                va="center", color="white", fontsize=15, fontweight="bold", gid="banner")
        used += banner_in
    title_y = height_in - top_in - used - 0.15
    fig.text(0.75 / _WIDTH_IN, title_y / height_in, title, color=colour, fontsize=16,
             fontweight="bold", va="top", gid="verdict-title")
    fig.text(0.75 / _WIDTH_IN, (title_y - 0.38) / height_in,
             "\n".join(_subtitle_lines(subtitle)), color="0.3", fontsize=9.5, va="top")


@dataclass(frozen=True)
class _Batches:
    """Batch rows sorted by time, with a NaN row before each new epoch so that lines break
    over validation instead of drawing a slope across it."""

    time_s: np.ndarray
    step_s: np.ndarray
    wait_s: np.ndarray
    rows: int


def _batches(run: Run) -> _Batches:
    time_s = _floats(run.batches, "time_s")
    keep = ~np.isnan(time_s)
    order = np.argsort(time_s[keep], kind="stable")
    time_s = time_s[keep][order]
    step_s = _floats(run.batches, "step_s")[keep][order]
    wait_s = _floats(run.batches, "wait_s")[keep][order]
    epoch = _floats(run.batches, "epoch")[keep][order]
    breaks = np.flatnonzero(epoch[1:] != epoch[:-1]) + 1
    return _Batches(
        time_s=np.insert(time_s, breaks, time_s[breaks]),
        step_s=np.insert(step_s, breaks, np.nan),
        wait_s=np.insert(wait_s, breaks, np.nan),
        rows=len(order),
    )


def plot_utilization(run: Run) -> Figure:
    """The run's timeline: GPU utilization, memory, step time and data wait against time.

    One row per watched GPU: utilization in percent (device, and this process where NVML can
    attribute it) with the stretches under the idle threshold shaded, and memory in MiB with a
    percent-of-total axis. Below, step time and the wait for data per batch, in seconds. Epoch
    starts are dotted lines. A banner (see :func:`banner_text`) tops the figure when the GPU
    was not used, sat idle, or could not be read. Series longer than twice
    :data:`ENVELOPE_BUCKETS` points are drawn as per-bucket means with a min/max band.

    Args:
        run: A loaded run (see :func:`gpu_watch.load_run`).

    Returns:
        A `matplotlib.figure.Figure` on the Agg canvas, 14 inches wide at :data:`DPI`.
    """
    gpus = _gpus(run)
    threshold = _threshold_pct(run)
    title, colour = _title(run)
    banner = _banner(run, gpus)
    # Under an "ok" verdict (or none yet) a banner can only be about a GPU left idle.
    banner_colour = colour if run.verdict in ("cpu_fallback", "idle", "unmonitored") \
        else VERDICT_COLOURS["idle"]

    row_in = 1.5 if len(gpus) <= 4 else 1.1
    row_gap_in = 0.45
    legend_in = 0.35 if gpus else 0.0
    step_in = 1.9 if gpus else 2.8
    step_gap_in = 0.75 if gpus else 0.45  # room for the last GPU row's time axis
    subtitle = _subtitle(run, gpus)
    top_in = 0.1 + _header_in(banner, subtitle)
    height_in = (top_in + legend_in + len(gpus) * (row_in + row_gap_in) + step_gap_in
                 + step_in + 0.6)
    fig = _new_figure(run, height_in)
    _header(fig, 0.1, height_in, banner, banner_colour, title, colour, subtitle)

    left_in, right_in, middle_in = 0.75, 0.85, 1.0
    full_w = (_WIDTH_IN - left_in - right_in) / _WIDTH_IN
    # Utilization is the signal a reader came for: it gets the wider column.
    util_w = 0.62 * (full_w - middle_in / _WIDTH_IN)
    mem_w = full_w - middle_in / _WIDTH_IN - util_w
    mem_x = (_WIDTH_IN - right_in) / _WIDTH_IN - mem_w
    step_ax = fig.add_axes((left_in / _WIDTH_IN, 0.6 / height_in, full_w, step_in / height_in))
    if gpus:
        aggregated = any(g.time_s.size > 2 * ENVELOPE_BUCKETS for g in gpus)
        fig.legend(handles=_gpu_legend(threshold, aggregated), loc="upper left", ncols=8,
                   fontsize=8, frameon=False,
                   bbox_to_anchor=(left_in / _WIDTH_IN, 1 - (top_in + 0.02) / height_in))

    batches = _batches(run)
    ends = [batches.time_s[-1]] if batches.rows else []
    ends += [g.time_s[-1] for g in gpus if g.time_s.size]
    end_s = max(ends) if ends else 1.0
    start_s = min([0.0] + [g.idle.spans[0, 0] for g in gpus if len(g.idle.spans)])
    epochs, epoch_starts = _epoch_starts(run)

    y_in = height_in - top_in - legend_in
    for row, gpu in enumerate(gpus):
        y_in -= row_gap_in + row_in
        util_ax = fig.add_axes((left_in / _WIDTH_IN, y_in / height_in, util_w,
                                row_in / height_in), sharex=step_ax)
        mem_ax = fig.add_axes((mem_x, y_in / height_in, mem_w, row_in / height_in),
                              sharex=step_ax)
        _draw_gpu(util_ax, mem_ax, gpu, threshold, end_s - start_s)
        for ax in (util_ax, mem_ax):
            _mark_epochs(ax, epoch_starts)
            ax.tick_params(labelsize=8, labelbottom=row == len(gpus) - 1)
            ax.grid(alpha=0.25)

    _draw_steps(step_ax, run, batches)
    _mark_epochs(step_ax, epoch_starts)
    _label_epochs(step_ax, epochs, epoch_starts)
    for event in ((run.info.get("idle") or {}).get("events") or [])[:20]:
        if isinstance(event, dict) and event.get("end_s") is not None:
            step_ax.axvline(float(event["end_s"]), color=VERDICT_COLOURS["idle"], linewidth=1.2)
            step_ax.text(float(event["end_s"]), 0.5, f" idle: {event.get('action', '')}",
                         transform=step_ax.get_xaxis_transform(), fontsize=8, rotation=90,
                         color=VERDICT_COLOURS["idle"], va="center")
    step_ax.set_xlim(start_s, end_s if end_s > start_s else start_s + 1.0)
    step_ax.set_xlabel("time since training started (s)")
    step_ax.tick_params(labelsize=8)
    step_ax.grid(alpha=0.25)
    return fig


def _gpu_legend(threshold: float, aggregated: bool) -> list[Any]:
    """One legend for every GPU row, so no row's data hides behind a legend box."""
    handles = [
        Line2D([], [], color=_UTIL_COLOUR, label="GPU utilization"),
        Line2D([], [], color=_MEM_COLOUR, label="memory used (all processes)"),
        Line2D([], [], color=_PROC_COLOUR, linestyle="--", label="this process"),
        Patch(facecolor=_IDLE_SHADE, alpha=0.35, label=f"idle (< {threshold:g}%)"),
        Line2D([], [], color=VERDICT_COLOURS["idle"], linestyle="--", linewidth=0.8,
               label="idle threshold"),
        Line2D([], [], color="0.4", linestyle="--", linewidth=0.8, label="total memory"),
        Line2D([], [], color="0.35", linestyle=":", linewidth=0.8, label="epoch start"),
    ]
    if aggregated:
        handles.append(Patch(facecolor="0.6", alpha=0.3, label="min to max per bucket"))
    return handles


def _draw_gpu(util_ax: Any, mem_ax: Any, gpu: _GPU, threshold: float, span_s: float) -> None:
    _shade_idle(util_ax, gpu, span_s, threshold)
    if not np.isnan(gpu.proc_util_pct).all():
        _draw(util_ax, gpu.time_s, gpu.proc_util_pct, _PROC_COLOUR, "this process",
              f"proc-util-gpu{gpu.index}", linewidth=1.0, linestyle="--")
    _draw(util_ax, gpu.time_s, gpu.util_pct, _UTIL_COLOUR, "GPU utilization",
          f"util-gpu{gpu.index}")
    util_ax.axhline(threshold, color=VERDICT_COLOURS["idle"], linestyle="--", linewidth=0.8)
    util_ax.set_ylim(0, 105)
    util_ax.set_ylabel("util %", fontsize=9)
    heading = f"GPU {gpu.index} · {gpu.name}"
    mean = gpu.util_mean_pct
    if mean is None:
        _empty_note(util_ax, "no utilization readings (NVML could not read them)")
    else:
        heading += f" · mean {mean:.0f}% · idle {_pct(gpu.idle.fraction)} of measured time"
    if gpu.verdict:
        heading += f" · {gpu.verdict.upper()}"
    util_ax.set_title(heading, loc="left", fontsize=10, fontweight="bold",
                      color=VERDICT_COLOURS.get(gpu.verdict or "", "0.15"))

    _draw(mem_ax, gpu.time_s, gpu.mem_used_mib, _MEM_COLOUR, "used (all processes)",
          f"mem-gpu{gpu.index}")
    if not np.isnan(gpu.proc_mem_mib).all():
        _draw(mem_ax, gpu.time_s, gpu.proc_mem_mib, _PROC_COLOUR, "this process",
              f"proc-mem-gpu{gpu.index}", linewidth=1.0, linestyle="--")
    mem_ax.yaxis.set_major_formatter(FuncFormatter(lambda mib, _: f"{mib:,.0f}"))
    mem_ax.set_ylabel("MiB", fontsize=9)
    total = gpu.mem_total_mib
    heading = f"GPU {gpu.index} memory"
    if gpu.mem_peak_mib is not None:
        heading += f" · peak {gpu.mem_peak_mib:,.0f} MiB"
    if gpu.proc_mem_peak_mib is not None:
        heading += f" (this process {gpu.proc_mem_peak_mib:,.0f})"
    if total > 0:
        heading += f" of {total:,.0f} MiB"
        mem_ax.axhline(total, color="0.4", linestyle="--", linewidth=0.8, label="total")
        mem_ax.set_ylim(0, total * 1.05)
        pct_axis = mem_ax.secondary_yaxis(
            "right", functions=(lambda mib: mib / total * 100, lambda pct: pct * total / 100))
        pct_axis.set_ylabel("% of total", fontsize=9)
        pct_axis.tick_params(labelsize=8)
    if gpu.mem_peak_mib is None:
        _empty_note(mem_ax, "no memory readings")
    mem_ax.set_title(heading, loc="left", fontsize=10)


def _draw_steps(ax: Any, run: Run, batches: _Batches) -> None:
    if batches.rows == 0:
        _empty_note(ax, "no batches recorded yet")
        ax.set_title("step time and data wait per batch", loc="left", fontsize=10)
        return
    env = _draw(ax, batches.time_s, batches.step_s, _UTIL_COLOUR, "step time", "step")
    wait = batches.wait_s
    if not np.isnan(wait).all():
        _draw(ax, batches.time_s, wait, _WAIT_COLOUR, "waiting for data", "wait",
              linewidth=0.9)
    title = f"step time and data wait per batch ({batches.rows:,} batches"
    if env.aggregated:
        title += f"; {ENVELOPE_BUCKETS:,} time buckets: line mean, band min to max"
    steps = _floats(run.batches, "steps")
    if steps.size and np.nanmax(np.r_[steps, 1.0]) > 1:
        title += f"; each row covers up to {np.nanmax(steps):.0f} steps"
    ax.set_title(title + ")", loc="left", fontsize=10)
    ax.set_ylabel("seconds", fontsize=9)
    top = np.nanmax(np.r_[env.high, wait, 0.0])
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)  # headroom for the epoch labels
    ax.legend(loc="lower right", bbox_to_anchor=(1, 1), fontsize=8, ncols=2, frameon=False)


def plot_epochs(run: Run) -> Figure:
    """Per-epoch summary: mean and p95 GPU utilization, peak memory, step time and data wait.

    Each epoch's bars take the colour of its verdict (ok green, idle orange, cpu_fallback red,
    unmonitored purple).

    Args:
        run: A loaded run.

    Returns:
        A `matplotlib.figure.Figure` on the Agg canvas.
    """
    frame = run.epochs
    epoch = _floats(frame, "epoch")
    verdicts = [str(v) for v in frame["verdict"]] if "verdict" in frame.columns else []
    colours = [VERDICT_COLOURS.get(v, NO_VERDICT_COLOUR) for v in verdicts]
    title, colour = _title(run)
    panel_in, gap_in = 1.9, 0.5
    subtitle = _subtitle(run, _gpus(run))
    height_in = 0.1 + _header_in(None, subtitle) + 3 * (panel_in + gap_in) + 0.5
    fig = _new_figure(run, height_in)
    _header(fig, 0.1, height_in, None, colour, title, colour, subtitle)
    present = list(dict.fromkeys(verdicts))
    if present:
        fig.legend(handles=[Patch(color=VERDICT_COLOURS.get(v, NO_VERDICT_COLOUR), label=v)
                            for v in present],
                   loc="upper right", fontsize=8, title="epoch verdict", title_fontsize=8,
                   bbox_to_anchor=(1 - 0.3 / _WIDTH_IN, 1 - 0.1 / height_in))
    width = (_WIDTH_IN - 0.75 - 0.85) / _WIDTH_IN
    axes = []
    for i in range(3):
        bottom_in = 0.5 + (2 - i) * (panel_in + gap_in)
        axes.append(fig.add_axes((0.75 / _WIDTH_IN, bottom_in / height_in, width,
                                  panel_in / height_in), sharex=axes[0] if axes else None))
    util_ax, mem_ax, step_ax = axes

    _bars(util_ax, epoch, _floats(frame, "gpu_util_mean"), colours, "no utilization readings")
    p95 = _floats(frame, "gpu_util_p95")
    if not np.isnan(p95).all():
        util_ax.plot(epoch, p95, linestyle="none", marker="_", markersize=14,
                     markeredgewidth=2, color="0.1", gid="util-p95")
    util_ax.axhline(_threshold_pct(run), color=VERDICT_COLOURS["idle"], linestyle="--",
                    linewidth=0.8)
    util_ax.set_ylim(0, 105)
    util_ax.set_ylabel("util %", fontsize=9)
    util_ax.set_title("GPU utilization per epoch: bar mean, tick p95", loc="left", fontsize=10)
    util_ax.legend(handles=[Line2D([], [], color="0.1", marker="_", linestyle="none",
                                   markersize=12, markeredgewidth=2, label="p95"),
                            Line2D([], [], color=VERDICT_COLOURS["idle"], linestyle="--",
                                   label="idle threshold")],
                   loc="upper left", fontsize=7, framealpha=0.8)

    _bars(mem_ax, epoch, _floats(frame, "gpu_mem_peak_mib"), colours, "no memory readings")
    mem_ax.set_ylabel("MiB", fontsize=9)
    mem_ax.yaxis.set_major_formatter(FuncFormatter(lambda mib, _: f"{mib:,.0f}"))
    mem_ax.set_title("peak GPU memory per epoch", loc="left", fontsize=10)

    _bars(step_ax, epoch, _floats(frame, "step_s_mean"), colours, "no batches")
    step_ax.set_ylabel("seconds", fontsize=9)
    step_ax.set_title("mean step time per epoch; dots: share of the epoch spent waiting for data",
                      loc="left", fontsize=10)
    wait = _floats(frame, "wait_fraction")
    if not np.isnan(wait).all():
        wait_ax = step_ax.twinx()
        # Dark dots: they sit on bars of any verdict colour, orange included.
        wait_ax.plot(epoch, wait * 100, linestyle="none", marker="o", markersize=5,
                     color=_DOT_COLOUR, markeredgecolor="white", gid="wait-fraction")
        wait_ax.set_ylim(0, 105)
        wait_ax.set_ylabel("% waiting for data", fontsize=9)
        wait_ax.tick_params(labelsize=8)
    step_ax.set_xlabel("epoch")
    step_ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes:
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25, axis="y")
    return fig


def _bars(ax: Any, epoch: np.ndarray, values: np.ndarray, colours: list[str],
          empty: str) -> None:
    known = ~np.isnan(values) & ~np.isnan(epoch)
    if not known.any():
        _empty_note(ax, empty if epoch.size else "no epoch finished yet")
        ax.set_yticks([])  # an empty axis's ticks (0, 0.2, ...) would read as measured values
        return
    ax.bar(epoch[known], values[known], width=0.8,
           color=[c for c, k in zip(colours, known, strict=True) if k])
    if epoch.size <= 60:
        for number in epoch[~known & ~np.isnan(epoch)]:
            ax.text(number, 0, "n/a", ha="center", va="bottom", fontsize=7, color="0.4")


# -- files -----------------------------------------------------------------------------------


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _replace(path: Path, data: bytes) -> None:
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
    utilization = _png(plot_utilization(run))
    epochs = _png(plot_epochs(run))
    files = {
        runlog.UTILIZATION_PNG: utilization,
        runlog.EPOCHS_PNG: epochs,
        runlog.REPORT_HTML: report_html(run, utilization, epochs).encode("utf-8"),
    }
    paths = []
    for name, data in files.items():
        _replace(run.path / name, data)
        paths.append(run.path / name)
    return paths


# -- text ------------------------------------------------------------------------------------


def _number(value: Any, digits: int = 4) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a" if value is None else str(value)
    if math.isnan(number):
        return "n/a"
    if number.is_integer() and abs(number) < 1e15:
        return f"{int(number):,}"
    return f"{number:.{digits}g}"


_EPOCH_HEADINGS = {
    "epoch": "epoch",
    "batches": "batches",
    "duration_s": "time s",
    "step_s_mean": "step s",
    "wait_fraction": "wait %",
    "gpu_util_mean": "util %",
    "gpu_util_p95": "p95 %",
    "gpu_mem_peak_mib": "mem MiB",
    "idle_fraction": "idle %",
    "verdict": "verdict",
}


def _epoch_table(run: Run) -> tuple[list[str], list[list[str]]]:
    """The epoch table as headings and formatted cells ("n/a" for missing values)."""
    frame = run.epochs
    columns = [c for c in _EPOCH_HEADINGS if c in frame.columns]
    per_gpu = [c for c in frame.columns if re.fullmatch(r"gpu\d+_util_mean", c)]
    logs = [c for c in frame.columns if c not in _EPOCH_HEADINGS and c not in per_gpu]
    headings = [_EPOCH_HEADINGS[c] for c in columns]
    headings += [c.replace("_util_mean", " util %") for c in per_gpu] + logs
    rows = []
    for record in frame.to_dict("records"):
        cells = []
        for column in columns + per_gpu + logs:
            value = record.get(column)
            if column in ("wait_fraction", "idle_fraction"):
                value = _number(None if pd.isna(value) else round(100 * float(value)))
            elif column in ("gpu_util_mean", "gpu_util_p95", "gpu_mem_peak_mib") or \
                    column in per_gpu:
                value = _number(None if pd.isna(value) else round(float(value)))
            elif column == "verdict":
                value = "n/a" if pd.isna(value) else str(value)
            else:
                value = _number(None if pd.isna(value) else value)
            cells.append(value)
        rows.append(cells)
    return headings, rows


def _text_table(headings: Sequence[str], rows: Sequence[Sequence[str]],
                left: Sequence[int] = (), indent: str = "  ") -> list[str]:
    """Fixed-width lines; numbers right-aligned, the columns in `left` left-aligned."""
    widths = [max(len(str(x)) for x in column) for column in zip(headings, *rows, strict=True)]
    lines = []
    for row in [list(headings), *rows]:
        cells = [str(c).ljust(w) if i in left else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def _gpu_line(gpu: _GPU) -> str:
    mean = gpu.util_mean_pct
    line = f"GPU {gpu.index} ({gpu.name})"
    if gpu.verdict:
        line += f" [{gpu.verdict}]"
    if mean is None:
        line += ": no utilization readings"
    else:
        line += f": mean util {mean:.0f}%, idle {_pct(gpu.idle.fraction)} of measured time"
    if gpu.mem_peak_mib is not None:
        line += f", peak memory {gpu.mem_peak_mib:,.0f}"
        line += f" of {gpu.mem_total_mib:,.0f} MiB" if gpu.mem_total_mib > 0 else " MiB"
    if gpu.proc_mem_peak_mib is not None:
        line += f" (this process {gpu.proc_mem_peak_mib:,.0f} MiB)"
    return line


def summary_text(run: Run) -> str:
    """A plain-text summary: verdict, banner, status, GPUs, causes with remedies, epochs.

    Args:
        run: A loaded run.

    Returns:
        Several lines, each ending in a newline.
    """
    gpus = _gpus(run)
    title, _ = _title(run)
    lines = [f"Run {run.info.get('run_name') or run.path.name}  ({run.path})",
             f"Verdict: {title}"]
    banner = _banner(run, gpus)
    if banner:
        lines.append(f"  >>> {banner}")
    status = f"Status: {run.status}"
    duration = _duration_s(run)
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
        lines += [f"  {_gpu_line(g)}" for g in gpus]
    else:
        nvml_error = (run.info.get("nvml") or {}).get("error")
        lines.append("GPUs: none watched" + (f" (NVML: {nvml_error})" if nvml_error else ""))
    lines.append(f"Placement: {_placement_line(run)}")
    causes = [c for c in run.causes if isinstance(c, dict)]
    if causes:
        lines.append("Causes:")
        for number, item in enumerate(causes, 1):
            lines.append(f"  {number}. [{item.get('severity', '?')}] {item.get('code', '?')}: "
                         f"{_cause_message(item)}")
            if item.get("remedy"):
                lines.append(f"     Remedy: {item['remedy']}")
    else:
        lines.append("Causes: none found")
    headings, rows = _epoch_table(run)
    if rows:
        lines.append("Epochs:")
        lines += _text_table(headings, rows)
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
    lines += _text_table(["started", "run", "status", "verdict", "duration"], rows,
                         left=(0, 1, 2, 3))
    return "\n".join(lines) + "\n"


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


def run_report_command(path: str, plots: bool, out: TextIO) -> int:
    """`gpu-watch report PATH`: summarise a run folder, or list the runs in a log folder.

    Args:
        path: A run folder (redrawn and summarised) or a folder of runs (listed).
        plots: Whether to redraw `utilization.png`, `epochs.png` and `report.html`.
        out: Where to print.

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


# -- HTML ------------------------------------------------------------------------------------


_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1450px;
       padding: 0 1em; color: #212121; }
h1 { font-size: 1.6em; margin: 0.2em 0; }
.banner { color: #fff; font-weight: bold; font-size: 1.25em; padding: 0.6em 0.9em;
          border-radius: 4px; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.15em 1em; }
dl.facts dt { color: #616161; }
dl.facts dd { margin: 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.2em 0.6em; border-bottom: 1px solid #e0e0e0; text-align: right; }
th { background: #f5f5f5; }
code, pre { background: #f5f5f5; padding: 0.1em 0.3em; border-radius: 3px; }
pre { padding: 0.6em; overflow-x: auto; }
img { max-width: 100%; border: 1px solid #e0e0e0; }
li { margin-bottom: 0.6em; }
.muted { color: #757575; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _facts(pairs: Sequence[tuple[str, Any]]) -> str:
    body = "".join(
        f"<dt>{_e(k)}</dt><dd>{_e(('yes' if v else 'no') if isinstance(v, bool) else v)}</dd>"
        for k, v in pairs if v is not None and v != "")
    return f'<dl class="facts">{body}</dl>'


def _html_list(items: Sequence[Any] | dict[str, Any]) -> str:
    if isinstance(items, dict):
        items = [f"{key}: {value}" for key, value in items.items()]
    if not items:
        return '<p class="muted">none</p>'
    cells = "".join(
        f"<li>{_e(json.dumps(i, sort_keys=True) if isinstance(i, (dict, list)) else i)}</li>"
        for i in items)
    return f"<ul>{cells}</ul>"


def _html_causes(causes: Sequence[Any]) -> str:
    if not causes:
        return '<p class="muted">No cause found.</p>'
    items = []
    for item in causes:
        if not isinstance(item, dict):
            items.append(f"<li>{_e(item)}</li>")
            continue
        text = (f"<li><strong>[{_e(item.get('severity', '?'))}] {_e(item.get('code', '?'))}"
                f"</strong>: {_e(_cause_message(item))}")
        if item.get("remedy"):
            text += f"<br>Remedy: <code>{_e(item['remedy'])}</code>"
        if item.get("evidence"):
            text += (f"<details><summary>evidence</summary><pre>"
                     f"{_e(json.dumps(item['evidence'], indent=2, default=str))}</pre></details>")
        items.append(text + "</li>")
    return f"<ol>{''.join(items)}</ol>"


def _html_table(headings: Sequence[str], rows: Sequence[Sequence[str]], table_id: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{_e(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _html_image(png: bytes | None, alt: str) -> str:
    if not png:
        return '<p class="muted">not drawn</p>'
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def report_html(run: Run, utilization_png: bytes | None, epochs_png: bytes | None) -> str:
    """`report.html`: one self-contained page with the verdict, causes and remedies, GPUs,
    both figures (embedded as base64 PNG), the epoch table and the placement report.

    Args:
        run: A loaded run.
        utilization_png: The timeline PNG's bytes, or None to leave it out.
        epochs_png: The epoch figure's bytes, or None to leave it out.

    Returns:
        The page as text; every value from the run is HTML-escaped.
    """
    gpus = _gpus(run)
    title, colour = _title(run)
    banner = _banner(run, gpus)
    info = run.info
    name = info.get("run_name") or run.path.name
    nvml = info.get("nvml") or {}
    writer = info.get("writer") or {}
    parts = [
        f'<header><p class="muted">gpu-watch run {_e(name)}</p>'
        f'<h1 id="verdict" style="color:{colour}">{_e(title)}</h1>',
        f'<p class="banner" id="banner" style="background:{colour}">{_e(banner)}</p>'
        if banner else "",
        _facts([
            ("verdict", run.verdict or "none yet"),
            ("status", run.status),
            ("started", info.get("started_at")),
            ("ended", info.get("ended_at")),
            ("duration", None if _duration_s(run) is None else f"{_duration_s(run):,.1f} s"),
            ("backend", info.get("backend")),
            ("worker", f"rank {info.get('rank')} of {info.get('world_size')}"
             if (info.get("world_size") or 1) > 1 else None),
            ("host", writer.get("host")),
            ("readings", "SIMULATED (FakeNVML), not from a real GPU"
             if _simulated(run) else None),
            ("NVML", "available, driver " + str(nvml.get("driver_version"))
             if nvml.get("available") else f"not available ({nvml.get('error')})"
             if nvml else None),
            ("run folder", run.path),
        ]),
        "</header>",
    ]
    error = info.get("error") or {}
    if error:
        parts.append(f"<h2>Error</h2><p><code>{_e(error.get('type', ''))}</code>: "
                     f"{_e(error.get('message', ''))}</p>")
    parts.append(f"<h2>Causes and remedies</h2>{_html_causes(run.causes)}")
    if gpus:
        parts.append("<h2>GPUs</h2><ul>" + "".join(f"<li>{_e(_gpu_line(g))}</li>" for g in gpus)
                     + "</ul>")
    else:
        parts.append('<h2>GPUs</h2><p class="muted">No GPU was watched.</p>')
    parts.append("<h2>Timeline</h2>" + _html_image(
        utilization_png, "GPU utilization, memory, step time and data wait against time"))
    headings, rows = _epoch_table(run)
    parts.append("<h2>Per epoch</h2>" + _html_image(epochs_png, "per-epoch summary"))
    parts.append(_html_table(headings, rows, "epochs") if rows
                 else '<p class="muted">No epoch finished.</p>')
    placement = info.get("placement") or {}
    parts.append("<h2>Where the training step ran</h2>")
    if placement:
        parts.append(_facts([
            ("summary", _placement_line(run)),
            ("backend", placement.get("backend")),
            ("compute on GPU", placement.get("compute_on_gpu")),
        ]))
        parts.append("<h3>CPU compute ops (examples)</h3>"
                     + _html_list(placement.get("cpu_compute_examples") or []))
        parts.append("<h3>Variable devices</h3>"
                     + _html_list(placement.get("variable_devices") or []))
        parts.append("<details><summary>full placement report</summary><pre>"
                     f"{_e(json.dumps(placement, indent=2, default=str))}</pre></details>")
    else:
        parts.append('<p class="muted">Not checked.</p>')
    findings = (info.get("environment") or {}).get("findings") or []
    if findings:
        parts.append("<h2>Environment findings</h2>" + _html_causes(findings))
    notes = [*run.warnings]
    notes += [f"idle event: {json.dumps(e, default=str)}"
              for e in (info.get("idle") or {}).get("events") or []]
    notes += [f"NVML fault: {json.dumps(f, default=str)}" for f in info.get("faults") or []]
    if notes:
        parts.append("<h2>Notes</h2>" + _html_list(notes))
    parts.append(f'<p class="muted">gpu-watch {_e(info.get("gpu_watch_version", ""))}, '
                 f"schema {_e(info.get('schema_version', ''))}</p>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>gpu-watch: {_e(name)}: {_e(run.verdict or 'no verdict')}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")
