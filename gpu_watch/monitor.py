"""One monitored training run, independent of Keras: configuration, lifecycle and the run folder.

`Monitor` wires the layers together: NVML readings from the sampler go into the `Timeline`,
rows go to the run folder every few seconds from the sampler thread (never from the training
thread per batch), and at each epoch end and at the end of the run the verdict rules judge what
was seen. A run that ends by an exception is noticed and closed with `failed` or `interrupted`,
so what was measured is never lost.
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import signal
import sys
import threading
import time
import warnings
import weakref
from dataclasses import asdict, dataclass
from typing import Any

from gpu_watch import drawing, runlog
from gpu_watch._version import __version__
from gpu_watch.assessment import epoch_row, run_record, setting_of
from gpu_watch.errors import GPUWatchWarning
from gpu_watch.export import Exports, check_targets
from gpu_watch.impact import UsageMeter, with_impacts
from gpu_watch.live import LiveFigures
from gpu_watch.nvml import NVML
from gpu_watch.sampler import DEFAULT_INTERVAL_S, Sampler, check_interval
from gpu_watch.timeline import DataTick, EpochSpan, IdleEvent, Timeline
from gpu_watch.verdict import CPU_FALLBACK, Judgement, Setting, judge

ON_IDLE = ("warn", "stop", "raise")
ON_LOG_ERROR = ("raise", "warn")
FLUSH_S = 2.0  # rows reach the disk at least this often, and at every epoch end
FLUSH_ROWS = 10_000  # rows written per chunk: a flush never holds more in memory
# The figures are drawn by another process (`gpu_watch.drawing`), which still spends CPU: an
# epoch-end redraw costs a few hundred milliseconds of it, so redraws may take at most this share
# of training time, and none happens in the first seconds.
RENDER_SHARE = 0.02
FIRST_RENDER_S = 10.0
# Code that fetches training data: Keras' data adapters, torch's DataLoader, and the thread
# tf.data runs a Python generator on.
_GENERATOR_CODE = ("from_generator_op.py",)
_DATA_CODE = (f"{os.sep}data_adapters{os.sep}", f"torch{os.sep}utils{os.sep}data{os.sep}",
              *_GENERATOR_CODE)
_MAX_DEPTH = 200


@dataclass(frozen=True)
class Config:
    """GPUWatch's options, validated on construction (see `GPUWatch` for their meaning)."""

    log_dir: str = "gpu_watch_logs"
    run_name: str | None = None
    interval_s: float = DEFAULT_INTERVAL_S
    idle_threshold_pct: float = 10.0
    idle_patience_s: float = 60.0
    on_idle: str = "warn"
    require_gpu: bool = False
    check_placement: bool = True
    plot: bool = True
    on_log_error: str = "raise"
    log_metrics: bool = True
    export: tuple[Any, ...] = ()
    measure_gpu_speedup: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.log_dir, (str, os.PathLike)) or not str(self.log_dir):
            raise ValueError(f"log_dir must be a non-empty path, got {self.log_dir!r}")
        object.__setattr__(self, "log_dir", os.fspath(self.log_dir))
        if self.run_name is not None and (
            not isinstance(self.run_name, str) or not self.run_name.strip()
            or any(ch in self.run_name for ch in "/\\\0") or self.run_name in (".", "..")
        ):
            raise ValueError(
                f"run_name must be None or a folder name without '/' or '\\', "
                f"got {self.run_name!r}"
            )
        check_interval(self.interval_s)
        _check_number("idle_threshold_pct", self.idle_threshold_pct, 0, 100, "percent")
        _check_number("idle_patience_s", self.idle_patience_s, 0, None, "seconds")
        for name, value, allowed in (("on_idle", self.on_idle, ON_IDLE),
                                     ("on_log_error", self.on_log_error, ON_LOG_ERROR)):
            if value not in allowed:
                raise ValueError(
                    f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
                )
        for name in ("require_gpu", "check_placement", "plot", "log_metrics",
                     "measure_gpu_speedup"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        object.__setattr__(self, "export", check_targets(self.export))


def _check_number(name: str, value: Any, low: float, high: float | None, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a number ({unit}), got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {allowed} {unit}, got {value!r}")


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


_open_monitors: weakref.WeakSet[Monitor] = weakref.WeakSet()


@dataclass(frozen=True)
class EpochEnd:
    """What closing an epoch produced.

    Attributes:
        judgement: The epoch's verdict and causes.
        row: The epoch's row of `epochs.csv` (column -> value; None when not measured),
            the Keras logs included.
    """

    judgement: Judgement
    row: dict[str, Any]


class Monitor:
    """Monitors one training run and owns its run folder.

    Args:
        config: The options.
        nvml: The NVML session (shared across runs of one GPUWatch).
        backend: The Keras backend's name, for `run.json`.
        rank: This process's rank and the number of processes (multi-worker training).
        framework: Facts about the framework: version, GPUs it sees, CUDA build.
        environment: The doctor's report (a dict with "findings") or None.
        setup: What the user's training is set up with: ``data`` (what feeds `fit`, see
            `placement.data_source`) and ``distribution``; they pick the remedies that fit.
    """

    def __init__(self, config: Config, nvml: NVML, backend: str, rank: tuple[int, int],
                 framework: dict[str, Any], environment: dict[str, Any] | None,
                 setup: dict[str, Any] | None = None) -> None:
        self.config = config
        self.nvml = nvml
        self.clock = time.perf_counter
        self.t0 = self.clock()
        self.t0_unix = time.time()
        self.status = runlog.STATUS_RUNNING
        self.judgement: Judgement | None = None
        self.placement: dict[str, Any] | None = None
        self.error: dict[str, str] | None = None
        self.idle_events: list[dict] = []
        self.write_errors = 0
        self._lock = threading.RLock()
        self._finished = False
        self._drawing: drawing.Drawing | None = None
        self._drawing_asked_s = 0.0
        self._first_render_s = FIRST_RENDER_S
        self._last_flush = self.t0
        self._interrupted = False
        self._sampling_closed = False
        self._closed = threading.Event()
        self._written: dict[int, EpochEnd] = {}  # epochs written by a flush, not yet returned
        self._watch: tuple[int, Any] | None = None
        self._previous_sigint: Any = None

        nvml.clear_faults()
        self.devices = nvml.devices() if nvml.available else []
        self.run_dir = runlog.new_run_dir(config.log_dir, config.run_name, *rank)
        self.info: dict[str, Any] = {
            "schema_version": runlog.SCHEMA_VERSION,
            "gpu_watch_version": __version__,
            "run_name": self.run_dir.name,
            "rank": rank[0],
            "world_size": rank[1],
            "writer": runlog.run_identity(),
            "status": self.status,
            "started_at": _now_iso(),
            "ended_at": None,
            "duration_s": None,
            "backend": backend,
            "framework": framework,
            "devices": [d.to_dict() for d in self.devices],
            "nvml": {
                "available": nvml.available,
                "error": nvml.error,
                "driver_version": nvml.driver_version(),
                "cuda_driver_version": nvml.cuda_driver_version(),
                "gpus_seen": len(nvml.all_devices()),
                "simulated": nvml.simulated,
            },
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "environment": environment,
            "data": (setup or {}).get("data"),
            "distribution": (setup or {}).get("distribution"),
            "placement": None,
            "verdict": None,
            "causes": [],
            "gpu_verdicts": {},
            "gpu_judged_by": {},
            "judged": {},
            "wait": None,
            "first_step_s": None,
            "idle": {"events": self.idle_events},
            "faults": [],
            "error": None,
            "config": asdict(config),
        }
        gpus = [d.nvml_index for d in self.devices]
        self.timeline = Timeline(gpus, config.idle_threshold_pct, config.idle_patience_s,
                                 config.interval_s)
        # The rows written, summed for what each cause cost (`gpu_watch.impact`).
        self.usage = UsageMeter(config.idle_threshold_pct, config.interval_s)
        self._write_json()
        self.samples = runlog.CsvTable(self.run_dir / runlog.SAMPLES_CSV, runlog.SAMPLE_COLUMNS)
        self.batches = runlog.CsvTable(self.run_dir / runlog.BATCHES_CSV,
                                       runlog.batch_columns(gpus))
        self.epochs = runlog.CsvTable(self.run_dir / runlog.EPOCHS_CSV, self._epoch_columns())
        self.exports = Exports(config.export, self.info, self.devices)
        # The latest readings for the live displays, deposited by the sampler thread.
        self.live = LiveFigures(config.interval_s)
        self.sampler = Sampler(nvml, self.devices, self._on_tick, config.interval_s,
                               clock=self.clock, t0=self.t0)
        _open_monitors.add(self)
        self.sampler.start()
        if config.plot:  # the drawing process imports matplotlib while training goes on
            drawing.painter().start()

    def _epoch_columns(self) -> list[str]:
        columns = list(runlog.EPOCH_COLUMNS)
        for d in self.devices:
            columns += [f"gpu{d.nvml_index}_util_mean", f"gpu{d.nvml_index}_proc_util_mean",
                        f"gpu{d.nvml_index}_verdict"]
        return columns

    # -- the training thread's side ----------------------------------------------------------

    def elapsed_s(self) -> float:
        """Seconds since the run started (the time axis of every file)."""
        return self.clock() - self.t0

    def watch_thread(self, frame: Any) -> None:
        """Close the run as `failed`/`interrupted` if `frame` (the `fit` call on the current
        thread) leaves the stack without `finish` being called: Keras does not call
        `on_train_end` when training raises. Without a frame (hooks called directly), only the
        end of the interpreter closes an unfinished run."""
        if frame is None:
            return
        self._watch = (threading.get_ident(), frame)
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if callable(previous):
                self._previous_sigint = previous
                signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self._interrupted = True
        self._previous_sigint(signum, frame)

    def begin_epoch(self, epoch: int) -> None:
        """An epoch starts."""
        self.timeline.begin_epoch(epoch, self.elapsed_s())

    def first_step(self, placement: dict[str, Any] | None) -> Judgement:
        """Record step 0's placement; return the verdict it implies so far."""
        with self._lock:
            self.placement = placement
            self.info["placement"] = placement
            verdict = judge(self.setting(), [], None)
            if self._finished:  # closed meanwhile: never overwrite the final run.json
                return verdict
            if verdict.verdict == CPU_FALLBACK:
                self.info["verdict"] = CPU_FALLBACK
                self.info["causes"] = [c.to_dict() for c in verdict.causes]
                self.exports.judged(self.info)
            self._write_json()
        return verdict

    def end_epoch(self, epoch: int, logs: dict[str, Any]) -> EpochEnd:
        """Close an epoch: write its row (with the Keras logs) once its figures are complete;
        return its verdict and row.

        An epoch shorter than the sampling interval has no reading of its own yet: its row is
        written when the reading that covers it comes, and the row returned now has its loop
        figures, with the GPU figures and the verdict None (not measured yet)."""
        span = self.timeline.end_epoch(self.elapsed_s(), logs)
        with self._lock:
            if self._finished or span is None:
                if span is None:
                    return EpochEnd(judge(self.setting(), [], None), {"epoch": epoch})
                judgement, row = epoch_row(span, self.setting())
                return EpochEnd(judgement, row)
            self.flush()
            written = self._written.pop(span.epoch, None)
            self._written.clear()
            self.judgement = self._judge_run()
            self._write_json()
            self._export_tick([])
            self.exports.judged(self.info)
        self._render(final=False)
        if written is None:
            judgement, row = epoch_row(span, self.setting())
            row = {**row, **dict.fromkeys(_GPU_FIGURES)}
            if judgement.verdict == CPU_FALLBACK:  # the placement decided: no reading needed
                row["verdict"] = CPU_FALLBACK
            return EpochEnd(judgement, row)
        return written

    def record_idle(self, event: IdleEvent, action: str) -> None:
        """Record what was done about an idle stretch."""
        self.idle_events.append({**event.to_dict(), "action": action})

    def finish(self, status: str, error: BaseException | None = None) -> None:
        """End the run: stop sampling, write every remaining row and the verdict, and ask for
        the figures (drawn by another process: `wait_for_drawing` waits for them). Safe to call
        more than once and from any thread; only the first call counts, and `wait_closed`
        waits for it. A step that fails is recorded in `run.json` ("close_errors") and the
        others still run, so the final status is written whatever happens."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
        try:
            self._close(status, error)
        finally:
            self._closed.set()
            _open_monitors.discard(self)

    def _close(self, status: str, error: BaseException | None) -> None:
        failures: list[str] = []

        def attempt(step: Any) -> None:
            try:
                step()
            except Exception as exc:  # recorded below: the final status must still be written
                failures.append(f"{getattr(step, '__name__', 'step')}: "
                                f"{type(exc).__name__}: {exc}")

        attempt(lambda: self.sampler.stop(closing_tick=True))
        self._sampling_closed = True
        self._watch = None  # the fit frame holds the user's data: let it go
        attempt(self.restore_sigint)
        with self._lock:
            self.status = status
            if error is not None:
                self.error = {"type": type(error).__name__, "message": str(error)[:2000]}
            attempt(lambda: self.flush(final=True))
            self.info["duration_s"] = round(self.elapsed_s(), 3)  # the impacts' wall time too
            attempt(self._judge_final)
            self.info.update(status=status, ended_at=_now_iso(), error=self.error)
            if failures:
                self.info["close_errors"] = failures
            self._write_json()
            self._export_tick([])
            self.exports.finish(self.info)
        self._render(final=True)

    def _judge_final(self) -> None:
        self.judgement = self._judge_run()

    def add_gpu_trial(self, trial: dict[str, Any]) -> None:
        """Record, after `finish`, the GPU timed on this run's model (`gpu_watch.gpu_trial`),
        and the causes' impacts it completes; the figures are asked for again."""
        with self._lock:
            self.info["gpu_trial"] = trial
            self.info["causes"] = with_impacts(self.info,
                                               self.usage.usage(self.info["duration_s"]))
            self._write_json()
        self._render(final=True)

    def wait_closed(self, timeout_s: float) -> bool:
        """Wait until `finish`, called from any thread, has written the final status; at most
        `timeout_s` seconds. Returns whether it has."""
        return self._closed.wait(timeout_s)

    @property
    def finished(self) -> bool:
        """Whether `finish` has run."""
        return self._finished

    # -- the sampler thread's side -----------------------------------------------------------

    def _on_tick(self, readings: list) -> None:
        if self._sampling_closed:  # a tick that outlived `finish` (a read that hung)
            return
        watch = self._watch
        self.timeline.add_readings(
            readings, None if watch is None else self._data_tick(watch[0]))
        self.live.add(readings)
        self._export_tick(readings)
        if self._finished:  # the closing tick: `finish` writes it
            return
        if self.clock() - self._last_flush >= FLUSH_S:
            self.flush()
        watch = self._watch
        if watch is not None and not self._finished and self._left_watched_frame(watch):
            self.finish(runlog.STATUS_INTERRUPTED if self._interrupted
                        else runlog.STATUS_FAILED)

    def _export_tick(self, readings: list) -> None:
        """Hand the exporters the readings and the loop's totals (the steps the training thread
        recorded since the last tick are counted at epoch and run ends too)."""
        totals = self.timeline.run_loop()
        self.exports.tick(readings, totals.steps, totals.step_s,
                          self.timeline.run_wait_fraction())

    @staticmethod
    def _data_tick(ident: int) -> DataTick:
        """What the input pipeline is doing right now.

        Keras fetches the next batch inside the training step on TensorFlow and JAX, so the
        gap between batch hooks misses most of the wait; a look at the stacks does not. The
        training thread is fetching when it runs the data adapters or a torch DataLoader;
        another thread is producing when it runs the Python generator behind a `tf.data`
        pipeline (which runs ahead of the step: see `Loop.wait`)."""
        fetching = producing = False
        for thread, frame in sys._current_frames().items():
            mine = thread == ident
            if _runs(frame, _DATA_CODE if mine else _GENERATOR_CODE):
                if mine:
                    fetching = True
                else:
                    producing = True
        return DataTick(fetching, producing)

    @staticmethod
    def _left_watched_frame(watch: tuple[int, Any]) -> bool:
        ident, frame = watch
        current = sys._current_frames().get(ident)
        while current is not None:
            if current is frame:
                return False
            current = current.f_back
        return True

    def flush(self, final: bool = False) -> None:
        """Write the readings, batch rows and epoch rows that are ready, a bounded chunk at a
        time."""
        with self._lock:
            self._last_flush = self.clock()
            while True:
                samples, rows = self.timeline.drain(final=final, limit=FLUSH_ROWS)
                sample_rows = [{**asdict(r), "time_s": round(r.time_s, 4)} for r in samples]
                self.usage.add_batches(rows)  # first: the first row ends step 0
                self.usage.add_samples(sample_rows)
                if sample_rows:
                    self._guard_write(self.samples.append, sample_rows)
                if rows:
                    self._guard_write(self.batches.append, rows)
                if len(rows) < FLUSH_ROWS:
                    break
            for span in self.timeline.ready_epochs(final=final):
                self._write_epoch(span)

    def _write_epoch(self, span: EpochSpan) -> None:
        judgement, row = epoch_row(span, self.setting())
        self._written[span.epoch] = EpochEnd(judgement, row)
        self._guard_write(lambda: (self.epochs.widen(list(row)), self.epochs.append([row])))

    def _guard_write(self, write, *args: Any) -> None:
        try:
            write(*args)
        except OSError as exc:
            self.write_errors += 1
            if self.write_errors == 1:
                warnings.warn(
                    f"gpu-watch could not write to {self.run_dir} ({exc}); training goes on, "
                    "and the rows of this flush are lost.",
                    GPUWatchWarning,
                    stacklevel=3,
                )

    # -- verdicts ----------------------------------------------------------------------------

    def setting(self) -> Setting:
        """The run's facts as the verdict rules take them."""
        return setting_of(self.info, self.nvml.switched_off)

    def _judge_run(self) -> Judgement:
        """Judge the run so far and record the judgement in `run.json`'s record."""
        judgement, record = run_record(self.timeline, self.setting())
        self.info.update(record)
        self.info["faults"] = [
            {**asdict(f), "time_s": round(f.unix_time - self.t0_unix, 3)}
            for f in self.nvml.faults
        ]
        self.info["nvml"]["switched_off"] = self.nvml.switched_off
        self.info["sampler"] = {"ticks": self.sampler.ticks,
                                "skipped_ticks": self.sampler.skipped_ticks,
                                "errors": self.sampler.errors}
        self.info["write_errors"] = self.write_errors
        duration = self.info["duration_s"] if self._finished else round(self.elapsed_s(), 3)
        self.info["causes"] = with_impacts({**self.info, "duration_s": duration},
                                           self.usage.usage(duration))
        return judgement

    def _write_json(self) -> None:
        self._guard_write(lambda: runlog.write_run_json(self.run_dir, self.info))

    def restore_sigint(self) -> None:
        """Put back the SIGINT handler this run wrapped. Only the main thread may: a run closed
        from another thread keeps its (delegating) wrapper until the next call from there."""
        if self._previous_sigint is None or threading.current_thread() is not \
                threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, self._previous_sigint)
        self._previous_sigint = None

    # -- plots -------------------------------------------------------------------------------

    def _render(self, final: bool) -> None:
        """Ask for the figures: at the end of the run always, at an epoch end when the last
        drawing is done and the redraw budget allows."""
        if not self.config.plot:
            return
        painter = drawing.painter()
        painter.poll()
        last, now = self._drawing, self.elapsed_s()
        if not final:
            if now < self._first_render_s:
                return
            if last is not None and not last.done:
                return  # the last one is still being drawn; a later epoch catches up
            if last is not None and last.cpu_s is not None and (
                    now < self._drawing_asked_s + last.cpu_s / RENDER_SHARE):
                return
        self._drawing_asked_s = now
        self._drawing = painter.request(self.run_dir)

    def wait_for_drawing(self, timeout_s: float) -> bool:
        """Wait until the last figures asked for are drawn, at most `timeout_s` seconds.

        Returns:
            True when they are drawn, or none were asked for; False when drawing failed (a
            `GPUWatchWarning` says why) or is still going on.
        """
        last = self._drawing
        if last is None:
            return True
        return drawing.painter().wait([last], timeout_s) and last.error is None


def idle_message(event: IdleEvent, config: Config) -> str:
    """A sentence with the evidence for an idle stretch: this training's use of each GPU and,
    where other processes kept it busier, the device's."""
    parts = []
    for gpu, util in event.util_mean_pct.items():
        device = event.device_util_mean_pct.get(gpu)
        text = f"GPU {gpu} {util:.0f}%"
        if device is not None and device >= config.idle_threshold_pct:
            text += f" (the device {device:.0f}%: other processes kept it busy)"
        parts.append(text)
    return (
        f"GPU idle: this training's use of every watched GPU stayed under "
        f"{config.idle_threshold_pct:g}% utilization for {event.end_s - event.start_s:.1f} s "
        f"(from {event.start_s:.1f} s into training; mean {', '.join(parts)})."
    )


# The GPU figures of an epoch row: None in the row returned for an epoch whose covering
# reading has not come yet.
_GPU_FIGURES = ("gpu_util_mean", "proc_util_mean", "judged_util_mean", "gpu_util_p95",
                "gpu_mem_peak_mib", "idle_fraction", "verdict", "gpu_sm_active_mean",
                "gpu_energy_j")


def _runs(frame: Any, markers: tuple[str, ...]) -> bool:
    """Whether a thread's stack, from `frame` down, runs code from a file matching `markers`."""
    depth = 0
    while frame is not None and depth < _MAX_DEPTH:
        if any(marker in frame.f_code.co_filename for marker in markers):
            return True
        frame = frame.f_back
        depth += 1
    return False


# How long the exit handler waits for a run that another thread is closing (the sampler
# thread closes a run whose `fit` left the stack): a daemon thread dies with the interpreter.
CLOSE_AT_EXIT_S = 10.0


@atexit.register
def _finish_open_runs() -> None:
    """A script that dies with an exception still leaves a closed run folder: each run still
    open is closed as `interrupted` (Ctrl-C) or `failed`, and a run another thread is closing
    is waited for. A failure is recorded in the run's `run.json` by `finish` itself."""
    interrupted = getattr(sys, "last_type", None) is KeyboardInterrupt
    for monitor in list(_open_monitors):
        monitor.finish(runlog.STATUS_INTERRUPTED if interrupted or monitor._interrupted
                       else runlog.STATUS_FAILED)
        monitor.wait_closed(CLOSE_AT_EXIT_S)
