"""One monitored training run, independent of Keras: configuration, lifecycle and the run folder.

`Monitor` wires the layers together: NVML readings from the sampler go into the `Timeline`,
rows go to the run folder every few seconds from the sampler thread (never from the training
thread per batch), and at each epoch end and at the end of the run the verdict rules judge what
was seen. A run that ends by an exception is noticed and closed with `failed` or `interrupted`,
so what was measured is never lost.
"""

from __future__ import annotations

import atexit
import contextlib
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
from gpu_watch.causes import Cause, RunFacts
from gpu_watch.errors import GPUWatchWarning
from gpu_watch.impact import UsageMeter, with_impacts
from gpu_watch.nvml import NVML
from gpu_watch.sampler import DEFAULT_INTERVAL_S, Sampler, check_interval
from gpu_watch.timeline import IdleEvent, Timeline, activity_row, energy_summary
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
            "idle": {"events": self.idle_events},
            "faults": [],
            "error": None,
            "config": asdict(config),
        }
        self.environment_findings = [
            Cause.from_dict(f) for f in (environment or {}).get("findings", [])
        ]
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
        self._epoch_start_s = 0.0
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
        self._epoch_start_s = self.elapsed_s()
        self.timeline.begin_epoch(epoch)

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
            self._write_json()
        return verdict

    def end_epoch(self, epoch: int, logs: dict[str, Any]) -> EpochEnd:
        """Close an epoch: write its row (with the Keras logs); return its verdict and row."""
        batches, step_s, _, _ = self.timeline.epoch_loop()
        stats = self.timeline.epoch_stats()
        wait_fraction = self.timeline.epoch_wait_fraction()
        verdict = judge(self.setting(), stats, wait_fraction)
        with_util = [s for s in stats if s.util_mean is not None]
        row: dict[str, Any] = {
            "epoch": epoch,
            "batches": batches,
            "duration_s": self.elapsed_s() - self._epoch_start_s,
            "step_s_mean": step_s / batches if batches else None,
            "wait_fraction": wait_fraction,
            "gpu_util_mean": _mean([s.util_mean for s in with_util]),
            "proc_util_mean": _mean([s.proc_util_mean for s in stats]),
            "gpu_util_p95": max((s.util_p95 for s in with_util), default=None),
            "gpu_mem_peak_mib": max((s.mem_peak_mib for s in stats if s.mem_peak_mib is not None),
                                    default=None),
            # The share that decided the verdict: this process's own where NVML measured it.
            "idle_fraction": _mean([s.judged_idle_fraction for s in stats]),
            "verdict": verdict.verdict,
        }
        for s in stats:
            row[f"gpu{s.gpu}_util_mean"] = s.util_mean
            row[f"gpu{s.gpu}_proc_util_mean"] = s.proc_util_mean
            row[f"gpu{s.gpu}_verdict"] = verdict.gpu_verdicts.get(s.gpu)
        row.update(activity_row(stats))
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = float(value)
        with self._lock:
            if self._finished:
                return EpochEnd(verdict, row)
            self.flush()
            self._guard_write(lambda: (self.epochs.widen(list(row)), self.epochs.append([row])))
            self.judgement = self._judge_run()
            self._store_judgement(self.judgement)
            self._write_json()
        self._render(final=False)
        return EpochEnd(verdict, row)

    def record_idle(self, event: IdleEvent, action: str) -> None:
        """Record what was done about an idle stretch."""
        self.idle_events.append({**event.to_dict(), "action": action})

    def finish(self, status: str, error: BaseException | None = None) -> None:
        """End the run: stop sampling, write every remaining row and the verdict, and ask for
        the figures (drawn by another process: `wait_for_drawing` waits for them). Safe to call
        more than once and from any thread; only the first call counts."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
        _open_monitors.discard(self)
        self.sampler.stop()
        self._watch = None  # the fit frame holds the user's data: let it go
        self.restore_sigint()
        with self._lock:
            self.status = status
            if error is not None:
                self.error = {"type": type(error).__name__, "message": str(error)[:2000]}
            self.flush(final=True)
            self.info["duration_s"] = round(self.elapsed_s(), 3)  # the impacts' wall time too
            self.judgement = self._judge_run()
            self._store_judgement(self.judgement)
            self.info.update(status=status, ended_at=_now_iso(), error=self.error)
            self._write_json()
        self._render(final=True)

    def add_gpu_trial(self, trial: dict[str, Any]) -> None:
        """Record, after `finish`, the GPU timed on this run's model (`gpu_watch.gpu_trial`),
        and the causes' impacts it completes; the figures are asked for again."""
        with self._lock:
            self.info["gpu_trial"] = trial
            self.info["causes"] = with_impacts(self.info,
                                               self.usage.usage(self.info["duration_s"]))
            self._write_json()
        self._render(final=True)

    @property
    def finished(self) -> bool:
        """Whether `finish` has run."""
        return self._finished

    # -- the sampler thread's side -----------------------------------------------------------

    def _on_tick(self, readings: list) -> None:
        if self._finished:  # a tick that outlived `finish` (a read that hung) writes nothing
            return
        self.timeline.add_readings(readings)
        watch = self._watch
        if watch is not None:
            self.timeline.add_data_tick(self._fetching_data(watch[0]))
        if self.clock() - self._last_flush >= FLUSH_S:
            self.flush()
        watch = self._watch
        if watch is not None and not self._finished and self._left_watched_frame(watch):
            self.finish(runlog.STATUS_INTERRUPTED if self._interrupted
                        else runlog.STATUS_FAILED)

    @staticmethod
    def _fetching_data(ident: int) -> bool:
        """Whether training is busy with its input pipeline right now.

        Keras fetches the next batch inside the training step on TensorFlow and JAX, so the
        gap between batch hooks misses most of the wait; a look at the stacks does not. The
        training thread counts when it runs the data adapters or a torch DataLoader; any
        thread counts when it runs the Python generator behind a `tf.data` pipeline."""
        for thread, frame in sys._current_frames().items():
            markers = _DATA_CODE if thread == ident else _GENERATOR_CODE
            depth = 0
            while frame is not None and depth < _MAX_DEPTH:
                filename = frame.f_code.co_filename
                if any(marker in filename for marker in markers):
                    return True
                frame = frame.f_back
                depth += 1
        return False

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
        """Write the readings and batch rows that are ready, a bounded chunk at a time."""
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
                    return

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
        placement = self.placement or {}
        framework = self.info["framework"]
        gpus = framework.get("gpus")
        return Setting(
            compute_on_gpu=placement.get("compute_on_gpu"),
            framework_gpus=None if gpus is None else len(gpus),
            nvml_error=self.nvml.error,
            nvml_gpus=self.info["nvml"]["gpus_seen"],
            visible_gpus=len(self.devices),
            cuda_visible_devices=self.info["cuda_visible_devices"],
            cuda_build=framework.get("cuda_build"),
            cpu_compute_examples=tuple(placement.get("cpu_compute_examples") or ()),
            environment=tuple(self.environment_findings),
            idle_threshold_pct=self.config.idle_threshold_pct,
            facts=RunFacts.from_run(self.info),
            no_process_utilization=tuple(
                off["gpu"] for off in self.nvml.switched_off if off["metric"] == "proc_util"),
        )

    def _judge_run(self) -> Judgement:
        return judge(self.setting(), self.timeline.run_stats(), self.timeline.run_wait_fraction())

    def _store_judgement(self, judgement: Judgement) -> None:
        self.info["verdict"] = judgement.verdict
        self.info["causes"] = [c.to_dict() for c in judgement.causes]
        self.info["gpu_verdicts"] = {str(k): v for k, v in judgement.gpu_verdicts.items()}
        self.info["gpu_judged_by"] = {str(k): v for k, v in judgement.judged_by.items()}
        self.info["faults"] = [
            {**asdict(f), "time_s": round(f.unix_time - self.t0_unix, 3)}
            for f in self.nvml.faults
        ]
        self.info["nvml"]["switched_off"] = self.nvml.switched_off
        self.info["sampler"] = {"ticks": self.sampler.ticks,
                                "skipped_ticks": self.sampler.skipped_ticks,
                                "errors": self.sampler.errors}
        self.info["write_errors"] = self.write_errors
        self.info["energy"] = energy_summary(self.timeline.run_stats())
        duration = self.info["duration_s"] if self._finished else round(self.elapsed_s(), 3)
        self.info["causes"] = with_impacts({**self.info, "duration_s": duration},
                                           self.usage.usage(duration))

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


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


@atexit.register
def _finish_open_runs() -> None:
    """A script that dies with an exception still leaves a closed run folder."""
    interrupted = getattr(sys, "last_type", None) is KeyboardInterrupt
    for monitor in list(_open_monitors):
        with contextlib.suppress(Exception):
            monitor.finish(runlog.STATUS_INTERRUPTED if interrupted or monitor._interrupted
                           else runlog.STATUS_FAILED)
