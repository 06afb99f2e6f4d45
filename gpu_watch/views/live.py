"""The latest figures while a training runs, for the displays a user already watches.

The sampler thread deposits each tick's readings here; the training thread only copies the
values it finds (a few dict operations per batch) into the batch `logs`, so Keras' progress bar
and `TensorBoard(update_freq="batch")` show them live, and the training thread never calls NVML.
In a notebook a thread of its own redraws one line under the cell, at most once a second.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from gpu_watch.errors import swallowed
from gpu_watch.sensing.nvml import Reading

# Batch logs key -> the reading it shows, with the epoch keys' names and units (see
# `callback.LOG_KEYS`): at batch level each is the latest reading, and a peak over one reading
# is that reading. "mean" / "max" say how the watched GPUs are combined, as the epoch keys do.
LIVE_KEYS: dict[str, tuple[str, str]] = {
    "gpu_util": ("util_pct", "mean"),  # percent, the device's
    "gpu_proc_util": ("proc_util_pct", "mean"),  # percent, this process's own
    "gpu_mem_peak_gib": ("mem_used_mib", "max"),  # GiB (converted from MiB)
    "gpu_sm_active": ("sm_active_pct", "mean"),  # percent of SMs busy (GPM)
}
_MIB_PER_GIB = 1024.0
# A reading lacks a value now and then although nothing changed: NVML has no new per-process
# sample at every tick (the driver samples every 1/6 s to 1 s), and GPM is read once a second.
# The latest value stands for this long (or for 2.5 ticks when ticks are slower), then its key
# is left out.
HOLD_S = 2.0
NOTEBOOK_PERIOD_S = 1.0  # the notebook line is redrawn at most this often


class LiveFigures:
    """The latest reading of each watched GPU, as batch `logs` values.

    `values` holds only the keys that have a reading (never NaN: the progress bar would show
    "nan", and JSON has none), so a run that watches no GPU adds nothing to the batch logs.
    `add` runs on the sampler thread and replaces `values` with a new dict (one reference
    assignment, so a reader on another thread sees the old dict or the new one, never a mix).

    Args:
        interval_s: The sampler's interval; a value stands for `HOLD_S` seconds or 2.5 ticks,
            whichever is longer.
    """

    def __init__(self, interval_s: float) -> None:
        self.hold_s = max(HOLD_S, 2.5 * interval_s)
        self.values: dict[str, float] = {}
        self.time_s: float | None = None  # the time of the latest reading taken
        self._latest: dict[tuple[int, str], tuple[float, float]] = {}

    def add(self, readings: Sequence[Reading]) -> None:
        """Take one sampler tick's readings (one per watched GPU)."""
        if not readings:
            return
        now = readings[0].time_s
        gpus = []
        for r in readings:
            gpus.append(r.gpu)
            for field, _ in LIVE_KEYS.values():
                value = getattr(r, field)
                if value is not None and not r.lost:
                    self._latest[(r.gpu, field)] = (now, float(value))
        values = {}
        for key, (field, combine) in LIVE_KEYS.items():
            present = [v for t, v in (self._latest.get((g, field), (None, None)) for g in gpus)
                       if t is not None and now - t <= self.hold_s]
            if not present:
                continue
            value = max(present) if combine == "max" else sum(present) / len(present)
            values[key] = value / _MIB_PER_GIB if field.endswith("_mib") else value
        self.values = values
        self.time_s = now


def live_line(values: dict[str, float], verdict: str | None, status: str,
              elapsed_s: float, gpus: int = 1) -> str:
    """The notebook's one line: utilization, memory, verdict; on a run that watches no GPU
    (`gpus` 0), that, instead of three figures that can never come."""

    def pct(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.0f}%"

    memory = values.get("gpu_mem_peak_gib", math.nan)
    parts = ["no GPU watched"] if gpus == 0 else [
        f"GPU util {pct(values.get('gpu_util', math.nan))}",
        f"this training {pct(values.get('gpu_proc_util', math.nan))}",
        "memory n/a" if math.isnan(memory) else f"memory {memory:.1f} GiB"]
    parts.append(f"verdict {verdict or 'not judged yet'}")
    return f"gpu-watch [{status}, {elapsed_s:.0f} s]: " + " | ".join(parts)


def notebook_display() -> Any:
    """A display handle for one line under the running notebook cell, or None outside a
    notebook (a script, a terminal IPython). Called on the training thread: the cell that runs
    `fit` owns the line."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return None
    from IPython.display import display

    return display({"text/plain": "gpu-watch: starting"}, raw=True, display_id=True)


class NotebookLine:
    """Redraws one line under the notebook cell from a thread of its own, at most once a
    second while training runs; `stop` draws the last one (a run closed some other way, as by
    an exception, ends the thread after its next redraw: `finished()` says so).

    Args:
        handle: Where to draw: an IPython `DisplayHandle` (anything with `update(obj, raw=)`).
        text: Makes the line from what the run holds now; called on this class's thread.
        finished: Whether the run is closed (a training that raised never calls `stop`).
        period_s: Seconds between redraws. Default `NOTEBOOK_PERIOD_S`.
    """

    def __init__(self, handle: Any, text: Callable[[], str], finished: Callable[[], bool],
                 period_s: float = NOTEBOOK_PERIOD_S) -> None:
        self._handle = handle
        self._text = text
        self._finished = finished
        self._period_s = period_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._last_draw = -math.inf
        self._thread = threading.Thread(target=self._run, name="gpu-watch-notebook",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self._draw()
            if self._finished():
                return

    def _draw(self, final: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not final and now - self._last_draw < self._period_s:
                return
            try:
                self._handle.update({"text/plain": self._text()}, raw=True)
            except Exception as exc:  # a closed notebook, or a bug in the line: training goes on
                swallowed("live.draw", exc)
                return
            self._last_draw = now

    def stop(self) -> None:
        """Stop redrawing and draw the final line now (once more, whatever the period: the
        training is over, and `fit` does not wait for the next second)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * self._period_s)
        self._draw(final=True)
