"""Following a run folder while another process writes it: what `gpu-watch watch` shows.

It reads only the run folder, through `runlog` (the one reader of its files), never NVML or the
training: `run.json` (replaced atomically by its writer) whole at each poll, and the rows
appended to `samples.csv` and `batches.csv` since the last poll. A row whose end has not been
written yet (a torn last line) waits for the next poll; a file that shrinks was rewritten and is
read again from its start. The run may belong to another process or user, or be finished
already.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu_watch import runlog
from gpu_watch.judging.usage import unjudged_fallback_pct

WINDOW_S = 120.0  # seconds of readings kept per GPU, for the sparklines
RATE_WINDOW_S = 20.0  # steps per second: over this much training time
# A run written on another host (a shared file system) cannot have its writer checked: it counts
# as running while rows keep coming (they reach the disk every 2 s) and `run.json` says so.
REMOTE_QUIET_S = 60.0


def _float(text: str | None) -> float:
    """A CSV cell as a float; empty or unreadable is NaN (not measured)."""
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


@dataclass
class GPUView:
    """One watched GPU as the run folder shows it.

    `judged_util_pct` is this training's utilization as the verdict judges it (the column of
    that name where the run has it, else its own SM utilization, else the device's); `util_pct`
    the whole GPU's. Both are (time_s, percent) over the last `WINDOW_S` seconds, NaN where not
    measured.
    """

    index: int
    name: str = ""
    judged_util_pct: deque = field(default_factory=deque)
    util_pct: deque = field(default_factory=deque)
    mem_used_mib: float = math.nan
    mem_total_mib: float = math.nan
    proc_mem_mib: float = math.nan
    power_w: float = math.nan
    temp_c: float = math.nan
    lost: bool = False

    def latest(self, series: str) -> float:
        """The latest measured value of `judged_util_pct` or `util_pct` (NaN when none in the
        window)."""
        for _, value in reversed(getattr(self, series)):
            if not math.isnan(value):
                return value
        return math.nan


@dataclass
class Snapshot:
    """What a poll found.

    Attributes:
        record: `run.json`.
        status: Its status, "incomplete" when its writer died without closing it.
        gpus: The watched GPUs.
        elapsed_s: Training time of the newest row (seconds since the run started).
        steps_per_s: Training steps per second over the last `RATE_WINDOW_S` (None before two
            batch rows).
        wait_fraction: The share of the loop spent waiting for data (`run.json`'s "wait" where
            it has one, else the last epoch's), None before any.
        other_fraction: The share of the loop spent between steps elsewhere: callbacks,
            Keras' bookkeeping (`run.json`'s "breakdown", else the last epoch's), None before
            any.
        last_row_age_s: Seconds since a row last reached `samples.csv` or `batches.csv`.
        epochs: Epochs finished.
        torn: Whether a file ended in an unfinished row at this poll (read at the next one).
    """

    record: runlog.RunRecord
    status: str
    gpus: list[GPUView]
    elapsed_s: float | None
    steps_per_s: float | None
    wait_fraction: float | None
    other_fraction: float | None
    last_row_age_s: float | None
    epochs: int
    torn: bool

    @property
    def running(self) -> bool:
        """Whether the run is still being written."""
        return self.status == runlog.STATUS_RUNNING


class RunFollower:
    """Follows one run folder; `poll` reads what is new.

    Args:
        run_dir: The run folder.
        window_s: Seconds of readings kept for the sparklines. Default `WINDOW_S`.
        clock: Wall clock (seconds since the epoch), for the age of the last row.

    Raises:
        runlog.RunFolderError: From `poll`, when the folder is not (or no longer) a run folder.
    """

    def __init__(self, run_dir: str | os.PathLike, window_s: float = WINDOW_S,
                 clock: Any = time.time) -> None:
        self.run_dir = Path(run_dir)
        self.window_s = window_s
        self.clock = clock
        self.record: runlog.RunRecord | None = None
        self._gpus: dict[int, GPUView] = {}
        self._samples = runlog.TailReader(self.run_dir / runlog.SAMPLES_CSV)
        self._batches = runlog.TailReader(self.run_dir / runlog.BATCHES_CSV)
        self._steps: deque = deque()  # (time_s, steps) of recent batch rows
        self._elapsed_s: float | None = None
        self._epochs_size = -1
        self._epochs: list[dict[str, str]] = []

    def poll(self) -> Snapshot:
        """Read what is new in the run folder."""
        self._read_record()
        try:
            samples = self._samples.read()
            batches = self._batches.read()
            self._read_epochs()
        except FileNotFoundError:
            raise self._gone() from None
        except OSError as exc:
            raise runlog.RunFolderError(f"{self.run_dir}: cannot be read ({exc})") from None
        for row in samples:
            self._add_sample(row)
        for row in batches:
            t = _float(row.get("time_s"))
            if not math.isnan(t):
                self._steps.append((t, _float(row.get("steps")) if row.get("steps") else 1.0))
                self._elapsed_s = max(self._elapsed_s or 0.0, t)
        while self._steps and self._steps[0][0] < self._steps[-1][0] - RATE_WINDOW_S:
            self._steps.popleft()
        age = self._last_row_age()
        return Snapshot(
            record=self.record or runlog.RunRecord(),
            status=self._status(age),
            gpus=[self._gpus[g] for g in sorted(self._gpus)],
            elapsed_s=self._elapsed_s,
            steps_per_s=self._rate(),
            wait_fraction=self._wait_fraction(),
            other_fraction=self._other_fraction(),
            last_row_age_s=age,
            epochs=len(self._epochs),
            torn=self._samples.torn or self._batches.torn,
        )

    def _status(self, last_row_age_s: float | None) -> str:
        record = self.record or runlog.RunRecord()
        status = runlog.Run(self.run_dir, record, None, None, None).status
        remote = (record.writer or {}).get("host") != socket.gethostname()
        if (status == runlog.STATUS_INCOMPLETE and record.status == runlog.STATUS_RUNNING
                and remote and last_row_age_s is not None
                and last_row_age_s < REMOTE_QUIET_S):
            return runlog.STATUS_RUNNING
        return status

    def _gone(self) -> runlog.RunFolderError:
        return runlog.RunFolderError(
            f"{self.run_dir}: the run folder disappeared while being watched")

    def _read_record(self) -> None:
        try:
            record = runlog.read_record(self.run_dir)
        except runlog.RunFolderError:
            if self.record is None:
                if not self.run_dir.is_dir():
                    raise runlog.RunFolderError(f"{self.run_dir}: no such folder") from None
                raise
            if not (self.run_dir / runlog.RUN_JSON).exists():
                raise self._gone() from None
            return  # replaced atomically, so not by its writer: keep the last one read
        self.record = record
        for device in record.devices or []:
            try:
                index = int(device["nvml_index"])
            except (KeyError, TypeError, ValueError):
                continue
            view = self._gpus.setdefault(index, GPUView(index))
            view.name = str(device.get("name") or "")
            if math.isnan(view.mem_total_mib) and device.get("mem_total_mib"):
                view.mem_total_mib = _float(str(device["mem_total_mib"]))

    def _add_sample(self, row: dict[str, str]) -> None:
        try:
            index = int(float(row.get("gpu", "")))
        except ValueError:
            return
        t = _float(row.get("time_s"))
        if math.isnan(t):
            return
        view = self._gpus.setdefault(index, GPUView(index))
        device = _float(row.get("util_pct"))
        view.util_pct.append((t, device))
        view.judged_util_pct.append((t, judged_util(row)))
        for series in (view.util_pct, view.judged_util_pct):
            while series and series[0][0] < t - self.window_s:
                series.popleft()
        for name in ("mem_used_mib", "mem_total_mib", "proc_mem_mib", "power_w", "temp_c"):
            value = _float(row.get(name))
            if not math.isnan(value) or name in ("proc_mem_mib", "power_w"):
                setattr(view, name, value)
        view.lost = row.get("lost", "").strip().lower() in ("true", "1", "1.0")
        self._elapsed_s = max(self._elapsed_s or 0.0, t)

    def _read_epochs(self) -> None:
        path = self.run_dir / runlog.EPOCHS_CSV
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            if not self.run_dir.is_dir():
                raise
            return
        if size == self._epochs_size:
            return
        self._epochs = runlog.read_whole_rows(path)
        self._epochs_size = size

    def _rate(self) -> float | None:
        if len(self._steps) < 2:
            return None
        span = self._steps[-1][0] - self._steps[0][0]
        steps = sum(s for _, s in list(self._steps)[1:])
        return steps / span if span > 0 else None

    def _wait_fraction(self) -> float | None:
        wait = self.record.wait if self.record is not None else None
        if isinstance(wait, dict) and isinstance(wait.get("fraction"), (int, float)):
            return float(wait["fraction"])
        for row in reversed(self._epochs):
            value = _float(row.get("wait_fraction"))
            if not math.isnan(value):
                return value
        return None

    def _other_fraction(self) -> float | None:
        breakdown = self.record.breakdown if self.record is not None else None
        if isinstance(breakdown, dict) and isinstance(breakdown.get("other_fraction"),
                                                      (int, float)):
            return float(breakdown["other_fraction"])
        for row in reversed(self._epochs):
            value = _float(row.get("other_fraction"))
            if not math.isnan(value):
                return value
        return None

    def _last_row_age(self) -> float | None:
        times = []
        for name in (runlog.SAMPLES_CSV, runlog.BATCHES_CSV):
            try:
                times.append((self.run_dir / name).stat().st_mtime)
            except OSError:
                continue
        return max(0.0, self.clock() - max(times)) if times else None


def judged_util(row: dict[str, str]) -> float:
    """This training's utilization in one `samples.csv` row, as the verdict judges it: the
    run's `judged_util_pct` where the run has that column (NaN there means the reading could
    not tell), else `usage.unjudged_fallback_pct`."""
    if "judged_util_pct" in row:
        return _float(row["judged_util_pct"])
    return unjudged_fallback_pct(_float(row.get("proc_util_pct")), _float(row.get("util_pct")))


def find_run(path: str | os.PathLike) -> Path:
    """The run folder to follow: `path` itself when it is one, else the newest run in it.

    Raises:
        runlog.RunFolderError: `path` is missing, or neither a run folder nor a folder of runs.
    """
    folder = Path(path)
    if not folder.exists():
        raise runlog.RunFolderError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise runlog.RunFolderError(f"{folder}: not a folder (expected a run folder or a "
                                    "folder of runs such as gpu_watch_logs)")
    if (folder / runlog.RUN_JSON).is_file():
        return folder
    try:
        runs = runlog.find_runs(folder)
    except OSError as exc:
        raise runlog.RunFolderError(f"{folder}: cannot be read ({exc})") from None
    if not runs:
        raise runlog.RunFolderError(
            f"{folder}: neither a gpu-watch run folder (no {runlog.RUN_JSON}) nor a folder of "
            "runs")
    return runs[0]
