"""The figures: `utilization.png` (the timeline) and `epochs.png` (the per-epoch summary).

Built on `matplotlib.figure.Figure` with the Agg canvas and no pyplot: the callback redraws them
from a background thread, where pyplot's global state is not safe. Missing readings are drawn as
gaps, never as zeros.
"""

from __future__ import annotations

import io
import math
import textwrap
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from gpu_watch.report.view import (
    GAPS_ONLY,
    NO_VERDICT_COLOUR,
    VERDICT_COLOURS,
    GPUSeries,
    banner_for,
    floats,
    gpu_series,
    is_simulated,
    pct_text,
    subtitle_for,
    threshold_pct,
    util_text,
    verdict_title,
)
from gpu_watch.runlog import Run

# Beyond twice this many points a series is drawn as a per-bucket mean with a min/max band:
# about one bucket per pixel column, so no spike or dip is lost and drawing time stays flat.
ENVELOPE_BUCKETS = 1200
DPI = 100

_WIDTH_IN = 14.0
_UTIL_COLOUR = "#1565c0"
_PROC_COLOUR = "#00897b"
_MEM_COLOUR = "#6a1b9a"
_WAIT_COLOUR = "#ef6c00"
_IDLE_SHADE = "#ffb74d"
_COMPILE_SHADE = "#cfd8dc"
_OTHERS_COLOUR = "#c62828"
_OTHERS_BAND = (0.9, 1.0)  # axes fraction: a strip along the top of each utilization row
_DOT_COLOUR = "#263238"
_SM_COLOUR = "#c2185b"
_ENERGY_COLOUR = "#546e7a"
# The epochs figure's x axis spans at least this many epochs, so one bar (0.8 wide) takes a
# sixth of it, not all of it; up to this many epochs each gets a tick of its own.
_MIN_EPOCH_SPAN = 5.0
_MAX_EPOCH_TICKS = 20


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


def _join_spans(spans: np.ndarray, span_s: float) -> np.ndarray:
    """Join stretches closer than about a pixel, so a GPU that flaps for a week draws as
    bands rather than millions of slivers."""
    if len(spans) <= 1:
        return spans
    tolerance_s = span_s / (2 * ENVELOPE_BUCKETS)
    breaks = spans[1:, 0] - spans[:-1, 1] > tolerance_s
    begin = np.flatnonzero(np.r_[True, breaks])
    end = np.flatnonzero(np.r_[breaks, True])
    return np.column_stack((spans[begin, 0], spans[end, 1]))


def _shade_idle(ax: Any, gpu: GPUSeries, span_s: float, threshold_pct: float) -> None:
    spans = _join_spans(gpu.idle_spans, span_s)
    verts = np.empty((len(spans), 4, 2))
    verts[:, :, 0] = spans[:, [0, 0, 1, 1]]
    verts[:, :, 1] = [0, 1, 1, 0]
    ax.add_collection(PolyCollection(
        verts, transform=ax.get_xaxis_transform(), facecolor=_IDLE_SHADE, alpha=0.35,
        edgecolor="none", label=f"idle (< {threshold_pct:g}%)", gid=f"idle-gpu{gpu.index}",
    ), autolim=False)


def _epoch_starts(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """Each epoch's number and the time its first batch began, seconds since train start."""
    epoch = floats(run.batches, "epoch")
    if epoch.size == 0:
        return np.empty(0), np.empty(0)
    time_s = floats(run.batches, "time_s")
    step_s = np.nan_to_num(floats(run.batches, "step_s"))
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


# Each figure's header height (banner, title, subtitle), inches from the top: `png_pair`
# leaves it out of the copy that report.html embeds under its own headline and banner.
_HEADERS: weakref.WeakKeyDictionary[Figure, float] = weakref.WeakKeyDictionary()


def _new_figure(run: Run, height_in: float, header_in: float) -> Figure:
    fig = Figure(figsize=(_WIDTH_IN, height_in), dpi=DPI)
    _HEADERS[fig] = header_in
    FigureCanvasAgg(fig)
    if is_simulated(run):
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
        # Cause messages are shown as written: a "$" in them is not mathtext.
        ax.text(0.5, 0.5, "\n".join(lines), transform=ax.transAxes, ha="center",
                va="center", color="white", fontsize=15, fontweight="bold", gid="banner",
                parse_math=False)
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
    """The batch rows, step 0 left out of the step times: it compiles, and would set the
    scale for every step after it (it is drawn as its own span, see `_first_step`)."""
    time_s = floats(run.batches, "time_s")
    keep = ~np.isnan(time_s)
    order = np.argsort(time_s[keep], kind="stable")
    time_s = time_s[keep][order]
    step_s = floats(run.batches, "step_s")[keep][order]
    if step_s.size:
        step_s[0] = np.nan
    wait_s = floats(run.batches, "wait_s")[keep][order]
    epoch = floats(run.batches, "epoch")[keep][order]
    breaks = np.flatnonzero(epoch[1:] != epoch[:-1]) + 1
    return _Batches(
        time_s=np.insert(time_s, breaks, time_s[breaks]),
        step_s=np.insert(step_s, breaks, np.nan),
        wait_s=np.insert(wait_s, breaks, np.nan),
        rows=len(order),
    )


def _first_step(run: Run) -> tuple[float, float] | None:
    """(start_s, end_s) of step 0, the first batch (compilation included)."""
    time_s = floats(run.batches, "time_s")
    step_s = floats(run.batches, "step_s")
    known = ~(np.isnan(time_s) | np.isnan(step_s))
    if not known.any():
        return None
    first = int(np.flatnonzero(known)[np.argmin(time_s[known])])
    return max(time_s[first] - step_s[first], 0.0), float(time_s[first])


def _mark_first_step(ax: Any, span: tuple[float, float] | None, label: bool) -> None:
    """Shade step 0 (compilation): its readings are left out of every verdict."""
    if span is None:
        return
    ax.axvspan(*span, facecolor=_COMPILE_SHADE, alpha=0.5, edgecolor="none", zorder=0,
               gid="first-step")
    if label:
        ax.text((span[0] + span[1]) / 2, 0.5, f"step 0 (compile)\n{span[1] - span[0]:.2f} s",
                transform=ax.get_xaxis_transform(), ha="center", va="center", fontsize=8,
                color="0.3")


def plot_utilization(run: Run) -> Figure:
    """The run's timeline: GPU utilization, memory, step time and data wait against time.

    One row per watched GPU: utilization in percent (device, and this process where NVML can
    attribute it), with SM activity beside it where GPM measures it (Hopper and newer; a GPU
    "busy" with most SMs idle shows as a gap between the two), the stretches under the idle
    threshold shaded (judged by this process's own utilization where NVML measured it, as the
    verdict is), a red strip along the top where other processes kept the GPU busy, and memory
    in MiB with a percent-of-total axis. Below, step time and the wait for data per batch, in
    seconds, step 0 (compilation, left out of every verdict) shaded and labelled rather than
    drawn, so that it does not set the scale. Epoch starts are dotted lines. A banner (see
    :func:`banner_text`, with every cause that blocks the GPU and the first remedy) tops the
    figure
    when the GPU was not used, sat idle, was shared or could not be read. Series longer than
    twice :data:`ENVELOPE_BUCKETS` points are drawn as per-bucket means with a min/max band.

    Args:
        run: A loaded run (see :func:`gpu_watch.load_run`).

    Returns:
        A `matplotlib.figure.Figure` on the Agg canvas, 14 inches wide at :data:`DPI`.
    """
    gpus = gpu_series(run)
    threshold = threshold_pct(run)
    title, colour = verdict_title(run)
    banner = banner_for(run, gpus)
    # Under an "ok" verdict (or none yet) a banner is about a GPU left idle or shared.
    banner_colour = colour if run.verdict in ("cpu_fallback", "idle", "unmonitored") \
        else VERDICT_COLOURS["idle"]

    row_in = 1.5 if len(gpus) <= 4 else 1.1
    row_gap_in = 0.45
    legend_in = 0.35 if gpus else 0.0
    step_in = 1.9 if gpus else 2.8
    step_gap_in = 0.75 if gpus else 0.45  # room for the last GPU row's time axis
    subtitle = subtitle_for(run, gpus)
    top_in = 0.1 + _header_in(banner, subtitle)
    height_in = (top_in + legend_in + len(gpus) * (row_in + row_gap_in) + step_gap_in
                 + step_in + 0.6)
    fig = _new_figure(run, height_in, top_in)
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
        handles = _gpu_legend(threshold, aggregated)
        if any(g.sm_active_mean_pct is not None for g in gpus):
            handles.insert(1, Line2D([], [], color=_SM_COLOUR, label="SM activity (GPM)"))
        fig.legend(handles=handles, loc="upper left", ncols=8,
                   fontsize=8, frameon=False,
                   bbox_to_anchor=(left_in / _WIDTH_IN, 1 - (top_in + 0.02) / height_in))

    batches = _batches(run)
    ends = [batches.time_s[-1]] if batches.rows else []
    ends += [g.time_s[-1] for g in gpus if g.time_s.size]
    end_s = max(ends) if ends else 1.0
    start_s = min([0.0] + [g.idle_spans[0, 0] for g in gpus if len(g.idle_spans)])
    epochs, epoch_starts = _epoch_starts(run)
    first_step = _first_step(run)

    y_in = height_in - top_in - legend_in
    for row, gpu in enumerate(gpus):
        y_in -= row_gap_in + row_in
        util_ax = fig.add_axes((left_in / _WIDTH_IN, y_in / height_in, util_w,
                                row_in / height_in), sharex=step_ax)
        mem_ax = fig.add_axes((mem_x, y_in / height_in, mem_w, row_in / height_in),
                              sharex=step_ax)
        _draw_gpu(util_ax, mem_ax, gpu, threshold, end_s - start_s)
        for ax in (util_ax, mem_ax):
            _mark_first_step(ax, first_step, label=False)
            _mark_epochs(ax, epoch_starts)
            ax.tick_params(labelsize=8, labelbottom=row == len(gpus) - 1)
            ax.grid(alpha=0.25)

    _draw_steps(step_ax, run, batches)
    # Labelled where the span has room for its words (a few percent of the axis).
    _mark_first_step(step_ax, first_step,
                     label=first_step is not None
                     and first_step[1] - first_step[0] >= 0.08 * (end_s - start_s))
    _mark_epochs(step_ax, epoch_starts)
    _label_epochs(step_ax, epochs, epoch_starts)
    for event in ((run.record.idle or {}).get("events") or [])[:20]:
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
        Patch(facecolor=_OTHERS_COLOUR, alpha=0.6, label="other processes busy"),
        Line2D([], [], color=VERDICT_COLOURS["idle"], linestyle="--", linewidth=0.8,
               label="idle threshold"),
        Line2D([], [], color="0.4", linestyle="--", linewidth=0.8, label="total memory"),
        Line2D([], [], color="0.35", linestyle=":", linewidth=0.8, label="epoch start"),
        Patch(facecolor=_COMPILE_SHADE, alpha=0.5, label="step 0 (compile): not judged"),
    ]
    if aggregated:
        handles.append(Patch(facecolor="0.6", alpha=0.3, label="min to max per bucket"))
    return handles


def _mark_others(ax: Any, gpu: GPUSeries, threshold: float, span_s: float) -> None:
    """A strip along the top of the row where other processes were at or above the idle
    threshold: the time someone else kept this GPU busy."""
    spans = _join_spans(gpu.others_busy_spans(threshold), span_s)
    if not len(spans):
        return
    low, high = _OTHERS_BAND
    verts = np.empty((len(spans), 4, 2))
    verts[:, :, 0] = spans[:, [0, 0, 1, 1]]
    verts[:, :, 1] = [low, high, high, low]
    ax.add_collection(PolyCollection(
        verts, transform=ax.get_xaxis_transform(), facecolor=_OTHERS_COLOUR, alpha=0.6,
        edgecolor="none", label="other processes busy", gid=f"others-gpu{gpu.index}",
    ), autolim=False)


def _draw_gpu(util_ax: Any, mem_ax: Any, gpu: GPUSeries, threshold: float, span_s: float) -> None:
    _shade_idle(util_ax, gpu, span_s, threshold)
    _mark_others(util_ax, gpu, threshold, span_s)
    if not np.isnan(gpu.proc_util_pct).all():
        _draw(util_ax, gpu.time_s, gpu.proc_util_pct, _PROC_COLOUR, "this process",
              f"proc-util-gpu{gpu.index}", linewidth=1.0, linestyle="--")
    _draw(util_ax, gpu.time_s, gpu.util_pct, _UTIL_COLOUR, "GPU utilization",
          f"util-gpu{gpu.index}")
    sm_mean = gpu.sm_active_mean_pct
    if sm_mean is not None:
        # Beside utilization, so a GPU that is "busy" with most SMs idle shows as a gap.
        _draw(util_ax, gpu.time_s, gpu.sm_active_pct, _SM_COLOUR, "SM activity",
              f"sm-active-gpu{gpu.index}")
    util_ax.axhline(threshold, color=VERDICT_COLOURS["idle"], linestyle="--", linewidth=0.8)
    util_ax.set_ylim(0, 105)
    util_ax.set_ylabel("util %", fontsize=9)
    heading = f"GPU {gpu.index} · {gpu.name}"
    util = util_text(gpu, short=True)
    if util is None:
        _empty_note(util_ax, "no utilization readings (NVML could not read them)")
    else:
        heading += f" · {util} · idle {pct_text(gpu.idle_fraction)}"
    if sm_mean is not None:
        heading += f" · SM active {sm_mean:.0f}%"
    others = gpu.others_busy_fraction(threshold)
    if others:
        heading += f" · others busy {pct_text(others)}"
    if gpu.verdict:
        heading += f" · {gpu.verdict.upper()}"
    # A long heading (a shared GPU with GPM says the most) gets a smaller font, so it stays
    # clear of the memory panel's title beside it.
    util_ax.set_title(heading, loc="left", fontsize=10 if len(heading) <= 80 else 8.5,
                      fontweight="bold", color=VERDICT_COLOURS.get(gpu.verdict or "", "0.15"))

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
    steps = floats(run.batches, "steps")
    if steps.size and np.nanmax(np.r_[steps, 1.0]) > 1:
        title += f"; each row covers up to {np.nanmax(steps):.0f} steps"
    ax.set_title(title + ")", loc="left", fontsize=10)
    ax.set_ylabel("seconds", fontsize=9)
    top = np.nanmax(np.r_[env.high, wait, 0.0])
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)  # headroom for the epoch labels
    ax.legend(loc="lower right", bbox_to_anchor=(1, 1), fontsize=8, ncols=2, frameon=False)


def plot_epochs(run: Run) -> Figure:
    """Per-epoch summary: mean and p95 GPU utilization (with SM activity where GPM measures
    it), peak memory, step time and data wait, and, where measured, where each epoch's time in
    the training loop went (compute, waiting for data, the rest: `epochs.csv`'s `compute_s`,
    `data_wait_s`, `other_s`) and the whole GPU's energy and mean power.

    Each epoch's bars take the colour of its verdict (ok green, idle orange, cpu_fallback red,
    unmonitored purple).

    Args:
        run: A loaded run.

    Returns:
        A `matplotlib.figure.Figure` on the Agg canvas.
    """
    frame = run.epochs
    epoch = floats(frame, "epoch")
    verdicts = [str(v) for v in frame["verdict"]] if "verdict" in frame.columns else []
    colours = [VERDICT_COLOURS.get(v, NO_VERDICT_COLOUR) for v in verdicts]
    title, colour = verdict_title(run)
    panel_in, gap_in, note_in = 1.9, 0.5, 0.45
    subtitle = subtitle_for(run, gpu_series(run))
    energy = floats(frame, "gpu_energy_j")
    judged = floats(frame, "judged_util_mean")
    device = floats(frame, "gpu_util_mean")
    if np.isnan(judged).all():  # a run recorded before the judged figure was
        judged = device
    memory = floats(frame, "gpu_mem_peak_mib")
    read = not (np.isnan(judged).all() and np.isnan(device).all() and np.isnan(memory).all())
    # Without a single GPU reading, one line says why instead of empty utilization and
    # memory panels; where the loop's time went and energy only where they were measured.
    split = any(not np.isnan(floats(frame, column)).all() for _, column, _ in _LOOP_PARTS)
    panels = (3 if read else 1) + split + (not np.isnan(energy).all())
    top_in = 0.1 + _header_in(None, subtitle)
    height_in = top_in + (0 if read else note_in) + panels * (panel_in + gap_in) + 0.5
    fig = _new_figure(run, height_in, top_in)
    _header(fig, 0.1, height_in, None, colour, title, colour, subtitle)
    width = (_WIDTH_IN - 0.75 - 0.85) / _WIDTH_IN
    axes = []
    for i in range(panels):
        bottom_in = 0.5 + (panels - 1 - i) * (panel_in + gap_in)
        axes.append(fig.add_axes((0.75 / _WIDTH_IN, bottom_in / height_in, width,
                                  panel_in / height_in), sharex=axes[0] if axes else None))
    present = list(dict.fromkeys(verdicts))
    if present:  # beside the bars whose colours it explains, above the first panel
        # Added as an artist: the panel's own legend (`Axes.legend`) would replace it.
        axes[0].add_artist(axes[0].legend(
            handles=[Patch(color=VERDICT_COLOURS.get(v, NO_VERDICT_COLOUR), label=v)
                     for v in present],
            loc="lower right", bbox_to_anchor=(1, 1.02), fontsize=8, ncols=len(present),
            title="bar colour: the epoch's verdict", title_fontsize=8, frameon=False,
            alignment="right"))
    if not read:
        fig.text(0.75 / _WIDTH_IN, (height_in - top_in - 0.1) / height_in,
                 _no_readings_text(run), ha="left", va="top", fontsize=11, color="0.3",
                 gid="no-readings")
        _draw_epoch_steps(axes[0], run, epoch, colours)
        if split:
            _draw_loop_parts(axes[1], epoch, frame)
        _finish_epoch_axes(axes, epoch, energy, frame, colours, panels)
        return fig
    util_ax, mem_ax, step_ax = axes[:3]

    _bars(util_ax, epoch, judged, colours, "no utilization readings after step 0")
    p95 = floats(frame, "gpu_util_p95")
    if not np.isnan(p95).all():
        util_ax.plot(epoch, p95, linestyle="none", marker="_", markersize=14,
                     markeredgewidth=2, color="0.1", gid="util-p95")
    if not np.isnan(device).all() and not np.array_equal(device, judged, equal_nan=True):
        util_ax.plot(epoch, device, linestyle="none", marker="o", markersize=6,
                     color=_UTIL_COLOUR, markeredgecolor="white", gid="device-util")
    util_ax.axhline(threshold_pct(run), color=VERDICT_COLOURS["idle"], linestyle="--",
                    linewidth=0.8)
    util_ax.set_ylim(0, 105)
    util_ax.set_ylabel("util %", fontsize=9)
    util_title = ("GPU utilization per epoch (step 0 left out): bar this training's mean, "
                  "the verdict's figure; tick device p95")
    util_handles = [Line2D([], [], color="0.1", marker="_", linestyle="none", markersize=12,
                           markeredgewidth=2, label="device p95"),
                    Line2D([], [], color=VERDICT_COLOURS["idle"], linestyle="--",
                           label="idle threshold")]
    if not np.isnan(device).all() and not np.array_equal(device, judged, equal_nan=True):
        util_title += "; dot: the device's mean, whoever used it"
        util_handles.append(Line2D([], [], color=_UTIL_COLOUR, marker="o", linestyle="none",
                                   label="device"))
    sm_active = floats(frame, "gpu_sm_active_mean")
    if not np.isnan(sm_active).all():
        util_ax.plot(epoch, sm_active, linestyle="none", marker="D", markersize=6,
                     color=_SM_COLOUR, markeredgecolor="white", gid="sm-active-epochs")
        util_title += "; diamond: SM activity (share of SMs busy, GPM)"
        util_handles.append(Line2D([], [], color=_SM_COLOUR, marker="D", linestyle="none",
                                   label="SM activity"))
    util_ax.set_title(util_title, loc="left", fontsize=10)
    util_ax.legend(handles=util_handles, loc="upper left", fontsize=7, framealpha=0.8)

    _bars(mem_ax, epoch, floats(frame, "gpu_mem_peak_mib"), colours, "no memory readings")
    mem_ax.set_ylabel("MiB", fontsize=9)
    mem_ax.yaxis.set_major_formatter(FuncFormatter(lambda mib, _: f"{mib:,.0f}"))
    mem_ax.set_title("peak GPU memory per epoch", loc="left", fontsize=10)

    _draw_epoch_steps(step_ax, run, epoch, colours)
    if split:
        _draw_loop_parts(axes[3], epoch, frame)
    _finish_epoch_axes(axes, epoch, energy, frame, colours, panels)
    return fig


def _no_readings_text(run: Run) -> str:
    error = (run.record.nvml or {}).get("error")
    if run.verdict == "cpu_fallback":
        return "No GPU readings: training ran on the CPU" + (
            " and NVML could not be used" if error else "")
    if error:
        return f"No GPU readings: NVML could not be used ({error})"
    return "No GPU readings after step 0: each epoch ended before NVML's next sample"


def _draw_epoch_steps(ax: Any, run: Run, epoch: np.ndarray, colours: list[str]) -> None:
    """Mean step time per epoch (step 0 left out, its compile time written over its epoch's
    bar) and the share of each epoch spent waiting for data; a share from batch gaps alone
    (too few ticks to see a wait inside a step) is a lower bound, drawn hollow."""
    frame = run.epochs
    step_s = floats(frame, "step_s_mean")
    _bars(ax, epoch, step_s, colours, "no batches")
    ax.set_ylabel("seconds", fontsize=9)
    ax.set_title("mean step time per epoch (step 0 left out)", loc="left", fontsize=10)
    first = floats(frame, "first_step_s")
    if not np.isnan(step_s).all():
        # Room above the tallest bar for step 0's label and the legend: neither sits on a bar.
        ax.set_ylim(0, float(np.nanmax(step_s)) * 1.35)
    for x, seconds in zip(epoch, first, strict=True):
        if not np.isnan(seconds):
            ax.text(x, 0.97, f"step 0: {seconds:.2f} s (compile)", ha="center", va="top",
                    transform=ax.get_xaxis_transform(), fontsize=8, color="0.3",
                    gid="first-step-label")
    wait = floats(frame, "wait_fraction")
    if np.isnan(wait).all():
        return
    lower = np.array([m == GAPS_ONLY for m in frame.get("wait_measure", [None] * len(frame))])
    wait_ax = ax.twinx()
    # Dark dots: they sit on bars of any verdict colour, orange included.
    handles = []
    for mask, face, gid, label in (
            (~lower, _DOT_COLOUR, "wait-fraction", "waiting for data, % of the epoch"),
            (lower, "white", "wait-fraction-lower-bound",
             "at least this much waiting (too few readings to see waits inside steps)")):
        if mask.any():
            wait_ax.plot(epoch[mask], wait[mask] * 100, linestyle="none", marker="o",
                         markersize=5, color=_DOT_COLOUR, markerfacecolor=face, gid=gid)
            handles.append(Line2D([], [], linestyle="none", marker="o", markersize=5,
                                  color=_DOT_COLOUR, markerfacecolor=face, label=label))
    # Top right: step 0's label sits at the top of its epoch, from the left.
    wait_ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.85)
    wait_ax.set_ylim(0, 105)
    wait_ax.set_ylabel("% waiting for data", fontsize=9)
    wait_ax.tick_params(labelsize=8)


# Where an epoch's time in the training loop went: (label, epochs.csv column, colour).
_LOOP_PARTS = (("compute", "compute_s", _UTIL_COLOUR),
               ("waiting for data", "data_wait_s", _WAIT_COLOUR),
               ("other (callbacks, the loop itself)", "other_s", "0.6"))


def _draw_loop_parts(ax: Any, epoch: np.ndarray, frame: Any) -> None:
    """Each epoch's seconds in the training loop, stacked: compute, waiting for data and the
    rest. A part the run did not measure adds nothing (it is not drawn as 0 s)."""
    bottom = np.zeros(epoch.size)
    handles = []
    for label, column, colour in _LOOP_PARTS:
        seconds = floats(frame, column)
        known = ~np.isnan(seconds) & ~np.isnan(epoch)
        if not known.any():
            continue
        ax.bar(epoch[known], seconds[known], width=0.8, bottom=bottom[known], color=colour,
               gid=f"loop-{column}")
        bottom[known] += seconds[known]
        handles.append(Patch(color=colour, label=label))
    ax.set_ylim(0, max(float(bottom.max()), 1e-9) * 1.3)  # room for the legend
    ax.set_ylabel("seconds", fontsize=9)
    ax.set_title("where each epoch's time in the training loop went", loc="left", fontsize=10)
    ax.legend(handles=handles, loc="upper right", fontsize=7, ncols=len(handles),
              framealpha=0.85)


def _finish_epoch_axes(axes: list[Any], epoch: np.ndarray, energy: np.ndarray, frame: Any,
                       colours: list[str], panels: int) -> None:
    if len(axes) == panels and not np.isnan(energy).all():
        _draw_energy(axes[-1], epoch, energy, floats(frame, "gpu_power_mean_w"), colours)
    axes[-1].set_xlabel("epoch")
    _epoch_axis(axes[-1], epoch)
    for ax in axes:
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25, axis="y")


def _draw_energy(ax: Any, epoch: np.ndarray, energy_j: np.ndarray, power_w: np.ndarray,
                 colours: list[str]) -> None:
    """Energy per epoch as bars (kJ once large), mean power as dots on a second axis."""
    scale, unit = (1e3, "kJ") if np.nanmax(energy_j) >= 1e4 else (1.0, "J")
    _bars(ax, epoch, energy_j / scale, colours, "no energy readings")
    ax.set_ylabel(unit, fontsize=9)
    ax.set_title("energy per epoch, whole GPU (NVML has no per-process energy); dots: mean "
                 "power", loc="left", fontsize=10)
    if not np.isnan(power_w).all():
        power_ax = ax.twinx()
        power_ax.plot(epoch, power_w, linestyle="none", marker="o", markersize=5,
                      color=_ENERGY_COLOUR, markeredgecolor="white", gid="power-epochs")
        power_ax.set_ylim(0, np.nanmax(power_w) * 1.15)
        power_ax.set_ylabel("mean power W", fontsize=9)
        power_ax.tick_params(labelsize=8)


def _epoch_axis(ax: Any, epoch: np.ndarray) -> None:
    """Whole epoch numbers only, over a range that keeps one or a few bars narrow: left to
    itself, matplotlib spans a single epoch over -0.4 to 0.4 with fractional ticks."""
    known = np.unique(epoch[~np.isnan(epoch)])
    if not known.size:
        return
    centre = (known[0] + known[-1]) / 2
    half = max((known[-1] - known[0]) / 2 + 0.6, _MIN_EPOCH_SPAN / 2)
    ax.set_xlim(centre - half, centre + half)
    if known.size <= _MAX_EPOCH_TICKS:
        ax.set_xticks(known)  # no tick for an epoch that did not run (e.g. -1, or 2.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0f}"))


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


# The PNG text field that holds a figure's header height in pixels, so that a figure read back
# from its file can still be embedded without its header (`without_header`).
HEADER_PX_KEY = "gpu-watch-header-px"


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG, its header height recorded in the file (`HEADER_PX_KEY`)."""
    return _encode(_pixels(fig), _header_px(fig))


def png_pair(fig: Figure) -> tuple[bytes, bytes]:
    """The figure as PNG, whole and without its banner, title and subtitle (for report.html,
    which states them once above its figures), from one drawing."""
    pixels = _pixels(fig)
    top = _header_px(fig)
    return _encode(pixels, top), _encode(pixels[top:], 0)


def without_header(png: bytes) -> bytes:
    """A figure's PNG (as `png_bytes` writes it) without its header; a PNG that does not say
    how tall its header is comes back as it is."""
    with Image.open(io.BytesIO(png)) as image:
        top = image.info.get(HEADER_PX_KEY)
        if top is None or not str(top).isdigit():
            return png
        pixels = np.asarray(image.convert("RGBA"))
    return _encode(pixels[int(top):], 0)


def _pixels(fig: Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())


def _header_px(fig: Figure) -> int:
    return int(round(_HEADERS.get(fig, 0.0) * fig.dpi))


def _encode(pixels: np.ndarray, header_px: int) -> bytes:
    info = PngInfo()
    info.add_text(HEADER_PX_KEY, str(header_px))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png", pnginfo=info, dpi=(DPI, DPI))
    return buffer.getvalue()
