"""`gpu-watch watch`: a terminal view that follows a run folder while its training runs.

Built on `rich` (a dependency of Keras 3 already): in a terminal one screen redrawn in place;
when the output is not a terminal (a pipe, a log file, CI) plain lines, one per refresh that
brought something new. It reads only the run folder (`gpu_watch.views.follow`), so it works over
ssh on the training node, on a run another process or user writes, and on a finished run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from gpu_watch import runlog
from gpu_watch.errors import EXIT_ERROR, EXIT_OK
from gpu_watch.report.advice import fixes
from gpu_watch.views.follow import WINDOW_S, GPUView, RunFollower, Snapshot, find_run

REFRESH_S = 1.0
SPARK_WIDTH = 60
_BARS = "▁▂▃▄▅▆▇█"
# How each verdict word reads on screen: healthy green, then warmer the worse.
_VERDICT_STYLES = {"ok": "bold green", "idle": "bold dark_orange", "cpu_fallback": "bold red",
                   "unmonitored": "bold magenta", "unmeasured": "bold magenta"}
_MIB_PER_GIB = 1024.0


def sparkline(points: Sequence[tuple[float, float]], end_s: float, window_s: float,
              width: int = SPARK_WIDTH) -> str:
    """Percentages (time_s, 0-100) over the `window_s` seconds up to `end_s` as `width`
    block characters, oldest first: each the mean of its time bucket, a space where nothing
    was measured (never drawn as 0)."""
    bucket_s = window_s / width
    start = end_s - window_s
    sums = [0.0] * width
    counts = [0] * width
    for t, value in points:
        if math.isnan(value) or t < start or t > end_s:
            continue
        i = min(width - 1, int((t - start) / bucket_s))
        sums[i] += value
        counts[i] += 1
    chars = []
    for total, n in zip(sums, counts, strict=True):
        if not n:
            chars.append(" ")
            continue
        level = min(100.0, max(0.0, total / n))
        chars.append(_BARS[min(len(_BARS) - 1, int(level / 100 * len(_BARS)))])
    return "".join(chars)


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.0f}%"


def _gib(mib: float) -> str:
    return "n/a" if math.isnan(mib) else f"{mib / _MIB_PER_GIB:.1f}"


def _age(seconds: float | None) -> str:
    return "no row yet" if seconds is None else f"last row {seconds:.1f} s ago"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "0:00"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours
            else f"{rest // 60}:{rest % 60:02d}")


def verdict_word(snap: Snapshot) -> str:
    """The run's verdict as `run.json` says it, or "not judged yet"."""
    return str(snap.record.verdict or "not judged yet")


def gpu_facts(snap: Snapshot, gpu: GPUView) -> str:
    """Memory, power and temperature, the GPU's verdict and its judged idle share."""
    memory = f"memory {_gib(gpu.mem_used_mib)} / {_gib(gpu.mem_total_mib)} GiB"
    if not math.isnan(gpu.proc_mem_mib):
        memory += f" (this training {_gib(gpu.proc_mem_mib)} GiB)"
    parts = [memory]
    if not math.isnan(gpu.power_w):
        parts.append(f"power {gpu.power_w:.0f} W")
    if not math.isnan(gpu.temp_c):
        parts.append(f"{gpu.temp_c:.0f} °C")
    verdict = (snap.record.gpu_verdicts or {}).get(str(gpu.index))
    if verdict:
        parts.append(f"verdict {verdict}")
    judged = (snap.record.judged or {}).get(str(gpu.index)) or {}
    if isinstance(judged.get("idle_fraction"), (int, float)):
        parts.append(f"idle {judged['idle_fraction']:.0%} of readings")
    if gpu.lost:
        parts.append("LOST (NVML no longer answers for it)")
    return " · ".join(parts)


def loop_line(snap: Snapshot) -> str:
    """Steps per second, the shares of the loop spent waiting for data and between steps
    elsewhere, and the age of the last row."""
    rate = "n/a" if snap.steps_per_s is None else f"{snap.steps_per_s:.1f}"
    wait = ("n/a" if snap.wait_fraction is None else f"{snap.wait_fraction:.0%}")
    other = ("" if snap.other_fraction is None
             else f" · between steps {snap.other_fraction:.0%}")
    return (f"loop: {rate} steps/s · data wait {wait}{other} · epochs done: {snap.epochs} · "
            f"{_age(snap.last_row_age_s)}")


def cause_lines(snap: Snapshot) -> list[tuple[str, str]]:
    """("First: code: message", the remedy's first line) per cause in `run.json`, worded and
    ordered as every other output does (`gpu_watch.report.advice`)."""
    lines = []
    for fix in fixes(snap.record.causes or []):
        remedy = fix.remedy.strip().splitlines()
        lines.append((f"{fix.label}{fix.code}: {fix.message}", remedy[0] if remedy else ""))
    return lines


def header(snap: Snapshot) -> str:
    """Whether the run still runs, for how long, on which backend."""
    state = ("running" if snap.running else f"ended: {snap.status}")
    backend = snap.record.backend or "?"
    return f"gpu-watch watch · {state} · {_duration(snap.elapsed_s)} · {backend}"


def render(snap: Snapshot, run_dir: Path, window_s: float = WINDOW_S):
    """The screen for a terminal, as a rich renderable."""
    from rich.console import Group
    from rich.text import Text

    verdict = verdict_word(snap)
    style = _VERDICT_STYLES.get(verdict, "bold")
    rows: list = [Text(header(snap), style="bold"), Text(f"run folder {run_dir}", style="dim")]
    line = Text("verdict: ")
    line.append(verdict, style=style)
    if not snap.running:
        line.append("  (final)")
    rows.append(line)
    end = snap.elapsed_s or 0.0
    if not snap.gpus:
        rows.append(Text("No GPU watched (NVML saw none): nothing to draw.", style="dim"))
    for gpu in snap.gpus:
        rows.append(Text(f"GPU {gpu.index} {gpu.name}".rstrip(), style="bold cyan"))
        for label, series in (("this training", "judged_util_pct"), ("device", "util_pct")):
            spark = sparkline(getattr(gpu, series), end, window_s)
            text = Text(f"  {label:<13} ")
            text.append(f"│{spark}│", style="green" if series == "judged_util_pct" else "blue")
            text.append(f" {_pct(gpu.latest(series)):>4}")
            rows.append(text)
        rows.append(Text(f"  {gpu_facts(snap, gpu)}"))
    if snap.gpus:
        rows.append(Text(f"  (last {window_s:.0f} s of readings, oldest left; blank: not "
                         "measured)", style="dim"))
    rows.append(Text(loop_line(snap)))
    causes = cause_lines(snap)
    if causes:
        rows.append(Text("causes:", style="bold"))
        for message, remedy in causes:
            rows.append(Text(f"  - {message}"))
            if remedy:
                rows.append(Text(f"    remedy: {remedy}", style="italic"))
    return Group(*rows)


def plain_line(snap: Snapshot) -> str:
    """One line for output that is not a terminal."""
    parts = [f"[{_duration(snap.elapsed_s)}] {snap.status}", f"verdict {verdict_word(snap)}"]
    for gpu in snap.gpus:
        parts.append(f"GPU {gpu.index}: this training {_pct(gpu.latest('judged_util_pct'))}, "
                     f"device {_pct(gpu.latest('util_pct'))}, {_gib(gpu.mem_used_mib)} GiB")
    parts.append(loop_line(snap))
    return " | ".join(parts)


def final_lines(snap: Snapshot) -> list[str]:
    """What a plain output ends with: the final verdict and its causes."""
    lines = [f"run ended: {snap.status}, verdict {verdict_word(snap)}"]
    for message, remedy in cause_lines(snap):
        lines.append(f"  - {message}")
        if remedy:
            lines.append(f"    remedy: {remedy}")
    return lines


def run_watch_command(path: str, out: TextIO, refresh_s: float = REFRESH_S,
                      window_s: float = WINDOW_S,
                      sleep: Callable[[float], None] = time.sleep) -> int:
    """`gpu-watch watch [PATH]`: follow a run until it ends.

    Args:
        path: A run folder, or a folder of runs (its newest is followed).
        out: Where to draw; a terminal gets one screen redrawn in place, anything else plain
            lines.
        refresh_s: Seconds between reads of the run folder.
        window_s: Seconds of readings the sparklines cover.
        sleep: Waits between reads (tests pass their own).

    Returns:
        0 when the run has ended (or at Ctrl-C); 2 when `path` is not a run or a folder of
        runs, or the run folder disappears or cannot be read (one line says which).
    """
    from rich.console import Console

    try:
        run_dir = find_run(path)
        follower = RunFollower(run_dir, window_s=window_s)
        snap = follower.poll()
    except runlog.RunFolderError as exc:
        out.write(f"gpu-watch watch: {exc}\n")
        return EXIT_ERROR
    console = Console(file=out, highlight=False)
    try:
        if console.is_terminal:
            return _watch_screen(console, follower, snap, run_dir, refresh_s, window_s, sleep)
        return _watch_plain(out, follower, snap, refresh_s, sleep)
    except KeyboardInterrupt:
        return EXIT_OK


def _watch_screen(console, follower: RunFollower, snap: Snapshot, run_dir: Path,
                  refresh_s: float, window_s: float, sleep: Callable[[float], None]) -> int:
    from rich.live import Live

    with Live(render(snap, run_dir, window_s), console=console, auto_refresh=False,
              redirect_stdout=False, redirect_stderr=False) as live:
        while snap.running:
            sleep(refresh_s)
            try:
                snap = follower.poll()
            except runlog.RunFolderError as exc:
                live.stop()
                console.file.write(f"gpu-watch watch: {exc}\n")
                return EXIT_ERROR
            live.update(render(snap, run_dir, window_s), refresh=True)
    return EXIT_OK


def _watch_plain(out: TextIO, follower: RunFollower, snap: Snapshot, refresh_s: float,
                 sleep: Callable[[float], None]) -> int:
    out.write(f"gpu-watch watch: following {follower.run_dir}\n")
    shown = None
    while True:
        key = (snap.elapsed_s, snap.status, snap.record.verdict, snap.epochs)
        if key != shown:
            out.write(plain_line(snap) + "\n")
            out.flush()
            shown = key
        if not snap.running:
            out.write("\n".join(final_lines(snap)) + "\n")
            return EXIT_OK
        sleep(refresh_s)
        try:
            snap = follower.poll()
        except runlog.RunFolderError as exc:
            out.write(f"gpu-watch watch: {exc}\n")
            return EXIT_ERROR
