"""One monitored training run, independent of Keras: its lifecycle, from the first `run.json` to
the last.

`Monitor` wires the layers together and owns none of their rules: NVML readings from the
sampler go into the `Timeline`, which also pairs the batch hooks into steps; rows go to the run
folder every few seconds from the sampler thread (never from the training thread per batch);
at each epoch end and at the end of the run `assessment` judges what was seen and `run.json` is
replaced. A `fit` that ends by an exception is noticed by the `FitWatchdog` and the run closed
as `failed` or `interrupted`, so what was measured is never lost. The options are checked by
`config.Config` before a `Monitor` exists; the figures are asked for within `drawing.Redraws`'
budget.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from gpu_watch import runlog
from gpu_watch.errors import GPUWatchWarning
from gpu_watch.export import Exports
from gpu_watch.judging.assessment import epoch_row, record_judgement, setting_of
from gpu_watch.judging.data_wait import DataTick
from gpu_watch.judging.idle_watch import IdleEvent
from gpu_watch.judging.impact import with_impacts
from gpu_watch.judging.timeline import EpochSpan, Timeline
from gpu_watch.judging.usage import UsageMeter, busy
from gpu_watch.judging.verdict import CPU_FALLBACK, Judgement, Setting, judge
from gpu_watch.sensing.job import find_job_id
from gpu_watch.sensing.loop_clock import LoopClock, StackSampler
from gpu_watch.sensing.nvml import NVML
from gpu_watch.sensing.sampler import Sampler
from gpu_watch.training.config import Config
from gpu_watch.training.watchdog import FitWatchdog
from gpu_watch.views import drawing
from gpu_watch.views.live import LiveFigures

# The idle stretch `Monitor.take_idle_event` hands out, for the callback to act on.
__all__ = ["EpochEnd", "IdleEvent", "Monitor", "idle_message"]

FLUSH_S = 2.0  # rows reach the disk at least this often, and at every epoch end
FLUSH_ROWS = 10_000  # rows written per chunk: a flush never holds more in memory


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
            `keras_internals.data_source`) and ``distribution``, which pick the remedies that
            fit, and ``keras_probes`` (`keras_internals.outcomes`).
        steps_per_execution: The model's `steps_per_execution`: how many steps one batch hook
            may close (see `steps.BatchPairing`).
        clock: Monotonic clock in seconds, the time axis of every file (and of the sampler).
            Default `time.perf_counter`; a test hands one it moves by hand.
        sampler: Builds the sampler from `Sampler`'s arguments. Default `Sampler` (a daemon
            thread); `gpu_watch.testing.DrivenSampler` has no thread and ticks when told.
        data_tick: Given the ident of the thread that runs `fit`, what the input pipeline is
            doing now (`keras_internals.data_tick`: a `Probed` whose value is a `DataTick`).
            Default None: the loop's wait for data is seen only from the batch gaps.
    """

    def __init__(self, config: Config, nvml: NVML, backend: str, rank: tuple[int, int],
                 framework: dict[str, Any], environment: dict[str, Any] | None,
                 setup: dict[str, Any] | None = None, steps_per_execution: int = 1, *,
                 clock: Callable[[], float] = time.perf_counter,
                 sampler: Callable[..., Sampler] = Sampler,
                 data_tick: Callable[[int], Any] | None = None) -> None:
        self.config = config
        self.nvml = nvml
        self.clock = clock
        self._probe_data_tick = data_tick
        self._data_tick_failed = False
        self.t0 = self.clock()
        self.t0_unix = time.time()
        self.status = runlog.STATUS_RUNNING
        self.judgement: Judgement | None = None
        self.placement: dict[str, Any] | None = None
        self.error: dict[str, str] | None = None
        self.write_errors = 0
        self.watchdog = FitWatchdog()
        self._lock = threading.RLock()
        self._finished = False
        self._last_flush = self.t0
        self._sampling_closed = False
        self._idle_taken = False
        self._closed = threading.Event()
        self._written: dict[int, EpochEnd] = {}  # epochs written by a flush, not yet returned
        # Told once the run is closed, from the thread that closed it: the callback prints its
        # summary line there when the run ends without `on_train_end` (Ctrl-C, an error).
        self.on_close: Callable[[Monitor], None] | None = None

        nvml.clear_faults()
        self.devices = nvml.devices() if nvml.available else []
        self.run_dir = runlog.new_run_dir(config.log_dir, config.run_name, *rank)
        self.redraws = drawing.Redraws(self.run_dir) if config.plot else None
        job = find_job_id(config.job_id, config.run_name, self.run_dir.name)
        self.record = runlog.new_run_record(
            self.run_dir, rank, backend, framework, [d.to_dict() for d in self.devices], {
                "available": nvml.available,
                "error": nvml.error,
                "driver_version": nvml.driver_version(),
                "cuda_driver_version": nvml.cuda_driver_version(),
                "gpus_seen": len(nvml.all_devices()),
                "simulated": nvml.simulated,
            }, environment, setup, asdict(config), job.value, job.source)
        self.idle_events: list[dict] = self.record.idle["events"]
        gpus = [d.nvml_index for d in self.devices]
        self.timeline = Timeline(gpus, config.idle_threshold_pct, config.idle_patience_s,
                                 config.interval_s, steps_per_execution)
        # The training thread's stamps, where `fit`'s callback list could be wrapped
        # (`time_loop`); else the callback's own hooks time the steps (`batch_begin`).
        self.loop_clock = LoopClock(self.clock, self.t0, self.timeline.add_steps)
        self.stacks: StackSampler | None = None
        self._detach: Any = None
        self._first_end_seen = False
        # The rows written, summed for what each cause cost (`gpu_watch.judging.impact`).
        self.usage = UsageMeter(config.idle_threshold_pct, config.interval_s)
        self._write_json()
        self.samples = runlog.CsvTable(self.run_dir / runlog.SAMPLES_CSV, runlog.SAMPLE_COLUMNS)
        self.batches = runlog.CsvTable(self.run_dir / runlog.BATCHES_CSV,
                                       runlog.batch_columns(gpus))
        self.epochs = runlog.CsvTable(self.run_dir / runlog.EPOCHS_CSV,
                                      runlog.epoch_columns(gpus))
        self.exports = Exports(config.export, self.record, self.devices)
        # The latest readings for the live displays, deposited by the sampler thread.
        self.live = LiveFigures(config.interval_s)
        self.sampler = sampler(nvml, self.devices, self._on_tick, config.interval_s,
                               clock=self.clock, t0=self.t0)
        _open_monitors.add(self)
        self.sampler.start()
        if config.plot:  # the drawing process imports matplotlib while training goes on
            drawing.painter().start()

    # -- the training thread's side ----------------------------------------------------------

    def elapsed_s(self) -> float:
        """Seconds since the run started (the time axis of every file)."""
        return self.clock() - self.t0

    def watch_thread(self, frame: Any, stop: Any = None) -> None:
        """Close the run as `failed`/`interrupted` if `frame` (the `fit` call on the current
        thread) leaves the stack without `finish` being called; `stop` ends that `fit` at the
        end of its batch, where a Ctrl-C's KeyboardInterrupt was swallowed inside it (see
        `watchdog.FitWatchdog`)."""
        self.watchdog.watch(frame, stop)

    def time_loop(self, detach: Any, look: Any = None) -> None:
        """The loop is timed on the training thread (`loop_clock` gets the stamps); `detach`
        takes the wrappers off when the run ends. Where no fetch of a batch is timed
        (`loop_clock.measure` is None), `look` (what the input pipeline is doing, a `DataTick`
        or None) is sampled `loop_clock.STACK_HZ` times a second instead."""
        self._detach = detach
        if look is not None and self.loop_clock.measure is None:
            self.stacks = StackSampler(
                look, lambda tick: self.timeline.add_data_tick(tick.fetching, tick.producing))
            self.stacks.start()

    def record_probes(self, outcomes: dict[str, str]) -> None:
        """Add the outcomes of Keras probes attached after the run began to `keras_probes`."""
        # A new dict: a writer on another thread may be reading the old one.
        self.record.keras_probes = {**self.record.keras_probes, **outcomes}

    def batch_begin(self, batch: int) -> None:
        """Keras' begin hook of `batch` (timed here only where the loop clock is not)."""
        if not self.loop_clock.attached:
            self.timeline.batch_begin(batch, self.elapsed_s())

    def batch_end(self, batch: int, logs: Any) -> bool:
        """Keras' end hook of `batch`; returns whether step 0 ended with it (the first end hook
        to run, where the loop clock times the steps)."""
        if self.loop_clock.attached:
            if self._first_end_seen:  # every end hook but the first: no lock to take
                return False
            with self._lock:
                first, self._first_end_seen = not self._first_end_seen, True
            return first
        return self.timeline.batch_end(batch, self.elapsed_s(), logs) is not None

    def end_batches(self) -> bool:
        """The epoch's batch hooks are over; returns whether step 0 completed only now."""
        return self.timeline.end_batches() is not None

    @property
    def in_first_step(self) -> bool:
        """Whether step 0 (the one that compiles) has not ended yet."""
        return self.timeline.first_step_end_s is None

    @property
    def idle_happened(self) -> bool:
        """Whether an idle stretch lasted `idle_patience_s` (taken or not): cheap to ask."""
        return self.timeline.idle_event is not None

    def take_idle_event(self) -> IdleEvent | None:
        """The idle stretch that lasted `idle_patience_s`, the first time it is asked for after
        it happened (it is acted on once per run); None otherwise."""
        event = self.timeline.idle_event
        if event is None:
            return None
        with self._lock:
            if self._idle_taken:
                return None
            self._idle_taken = True
        return event

    def validating(self, running: bool) -> None:
        """Validation inside `fit` starts (True) or ends (False): its first step compiles and
        its data loads, so the GPU idling meanwhile says nothing about training."""
        self.timeline.idle_paused = running

    def begin_epoch(self, epoch: int) -> None:
        """An epoch starts."""
        self.timeline.begin_epoch(epoch, self.elapsed_s())

    def first_step(self, placement: dict[str, Any] | None) -> Judgement:
        """Record step 0's placement; return the verdict it implies so far."""
        with self._lock:
            self.placement = placement
            self.record.placement = placement
            verdict = judge(self.setting(), [], None)
            if self._finished:  # closed meanwhile: never overwrite the final run.json
                return verdict
            if verdict.verdict == CPU_FALLBACK:
                self.record.verdict = CPU_FALLBACK
                self.record.causes = [c.to_dict() for c in verdict.causes]
                self.exports.judged(self.record)
            self._write_json()
        return verdict

    def end_epoch(self, epoch: int, logs: dict[str, Any]) -> EpochEnd:
        """Close an epoch: write its row (with the Keras logs) once its figures are complete;
        return its verdict and row.

        An epoch shorter than the sampling interval has no reading of its own yet: its row is
        written when the reading that covers it comes, and the row returned now has its loop
        figures, with the GPU figures and the verdict None (not measured yet)."""
        self.loop_clock.settle()  # the steps the device still ran, timed before the epoch ends
        span = self.timeline.end_epoch(self.elapsed_s(), logs)
        with self._lock:
            if self._finished or span is None:
                if span is None:
                    return EpochEnd(judge(self.setting(), [], None), {"epoch": epoch})
                judgement, row = epoch_row(span, self.setting(),
                                           self.loop_clock.slowest_hooks())
                return EpochEnd(judgement, row)
            self.flush()
            written = self._written.pop(span.epoch, None)
            self._written.clear()
            self.judgement = self._judge_run()
            self._write_json()
            self._export_tick([])
            self.exports.judged(self.record)
        self._render(final=False)
        if written is None:
            judgement, row = epoch_row(span, self.setting(), self.loop_clock.slowest_hooks())
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
        self.watchdog.release()  # first: a Ctrl-C still being sent again stops here
        try:
            self._close(status, error)
        finally:
            self._closed.set()
            _open_monitors.discard(self)
        if self.on_close is not None:
            try:
                self.on_close(self)
            except Exception as exc:  # telling the user must not turn a closed run into an error
                warnings.warn(f"gpu-watch could not print the run's summary: {exc!r}",
                              GPUWatchWarning, stacklevel=2)

    def _close(self, status: str, error: BaseException | None) -> None:
        failures: list[str] = []

        def attempt(step: Any) -> None:
            try:
                step()
            except Exception as exc:  # recorded below: the final status must still be written
                failures.append(f"{getattr(step, '__name__', 'step')}: "
                                f"{type(exc).__name__}: {exc}")

        if self._detach is not None:  # no stamp comes after this
            attempt(self._detach)
        attempt(self.loop_clock.close)  # the steps the device still ran are counted
        attempt(lambda: self.sampler.stop(closing_tick=True))
        self._sampling_closed = True
        if self.stacks is not None:
            attempt(self.stacks.stop)
        attempt(self.watchdog.restore_sigint)
        with self._lock:
            self.status = status
            if error is not None:
                self.error = {"type": type(error).__name__, "message": str(error)[:2000]}
            attempt(lambda: self.flush(final=True))
            self.record.duration_s = round(self.elapsed_s(), 3)  # the impacts' wall time too
            attempt(self._judge_final)
            self.record.status = status
            self.record.ended_at = runlog.now_iso()
            self.record.error = self.error
            if failures:
                self.record.close_errors = failures
            self._write_json()
            self._export_tick([])
            self.exports.finish(self.record)
        self._render(final=True)

    def _judge_final(self) -> None:
        self.judgement = self._judge_run()

    def add_gpu_trial(self, trial: dict[str, Any]) -> None:
        """Record, after `finish`, the GPU timed on this run's model
        (`gpu_watch.training.gpu_trial`), and the causes' impacts it completes; the figures are
        asked for again."""
        with self._lock:
            self.record.gpu_trial = trial
            self.record.causes = with_impacts(self.record,
                                              self.usage.usage(self.record.duration_s))
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
        thread = self.watchdog.thread
        self.timeline.add_readings(
            readings, None if thread is None or self._probe_data_tick is None
            else self._data_tick(thread))
        self.live.add(readings)
        self._export_tick(readings)
        if self._finished:  # the closing tick: `finish` writes it
            return
        if self.clock() - self._last_flush >= FLUSH_S:
            self.flush()
        if not self._finished and self.watchdog.fit_left():
            self.finish(runlog.STATUS_INTERRUPTED if self.watchdog.interrupted
                        else runlog.STATUS_FAILED)

    def _export_tick(self, readings: list) -> None:
        """Hand the exporters the readings and the loop's totals (the steps the training thread
        recorded since the last tick are counted at epoch and run ends too)."""
        self.exports.tick(readings, self.timeline.run_loop())

    def _data_tick(self, ident: int) -> DataTick | None:
        """What the input pipeline is doing right now (`keras_internals.data_tick`); None when
        the look at the stacks fails, and the first failure's reason goes to `run.json`."""
        probed = self._probe_data_tick(ident)
        if probed.reason is not None and not self._data_tick_failed:
            self._data_tick_failed = True
            # A new dict: a writer on another thread may be reading the old one.
            self.record.keras_probes = {**self.record.keras_probes, "data_ticks": probed.reason}
        return probed.value

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
        judgement, row = epoch_row(span, self.setting(), self.loop_clock.slowest_hooks())
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
        return setting_of(self.record, self.nvml.switched_off)

    def _judge_run(self) -> Judgement:
        """Judge the run so far and record the judgement in `run.json`'s record."""
        judgement = record_judgement(self.record, self.timeline, self.setting(),
                                     self.loop_clock.slowest_hooks())
        self.record.faults = [
            {**asdict(f), "time_s": round(f.unix_time - self.t0_unix, 3)}
            for f in self.nvml.faults
        ]
        self.record.nvml["switched_off"] = self.nvml.switched_off
        self.record.sampler = {"ticks": self.sampler.ticks,
                               "skipped_ticks": self.sampler.skipped_ticks,
                               "errors": self.sampler.errors}
        self.record.write_errors = self.write_errors
        duration = self.record.duration_s if self._finished else round(self.elapsed_s(), 3)
        self.record.causes = with_impacts(self.record, self.usage.usage(duration))
        return judgement

    def _write_json(self) -> None:
        self._guard_write(lambda: runlog.write_run_json(self.run_dir, self.record))

    # -- plots -------------------------------------------------------------------------------

    def _render(self, final: bool) -> None:
        """Ask for the figures (at an epoch end only within the redraw budget)."""
        if self.redraws is not None:
            self.redraws.ask(self.elapsed_s(), final)

    def wait_for_drawing(self, timeout_s: float) -> bool:
        """Wait until the last figures asked for are drawn, at most `timeout_s` seconds.

        Returns:
            True when they are drawn, or none were asked for; False when drawing failed (a
            `GPUWatchWarning` says why) or is still going on.
        """
        return self.redraws is None or self.redraws.wait(timeout_s)


def idle_message(event: IdleEvent, config: Config) -> str:
    """A sentence with the evidence for an idle stretch: this training's use of each GPU and,
    where other processes kept it busier, the device's."""
    parts = []
    for gpu, util in event.util_mean_pct.items():
        device = event.device_util_mean_pct.get(gpu)
        text = f"GPU {gpu} {util:.0f}%"
        if device is not None and busy(device, config.idle_threshold_pct):
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
        monitor.finish(runlog.STATUS_INTERRUPTED if interrupted or monitor.watchdog.interrupted
                       else runlog.STATUS_FAILED)
        monitor.wait_closed(CLOSE_AT_EXIT_S)
