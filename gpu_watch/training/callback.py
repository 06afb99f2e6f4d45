"""`GPUWatch`: the Keras callback. Glue only: it maps Keras' hooks onto a `Monitor`."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

try:
    import keras
except ModuleNotFoundError as exc:  # Keras imports its backend's framework, an extra of ours
    from gpu_watch.doctor.backends import BACKENDS, missing_framework_message

    missing = (exc.name or "").partition(".")[0]
    if missing not in BACKENDS:
        raise
    raise ModuleNotFoundError(missing_framework_message(missing, os.environ),
                              name=exc.name) from exc

from gpu_watch import runlog
from gpu_watch.errors import GPUIdleError, GPUIdleWarning, GPUNotUsedError, user_site, warn
from gpu_watch.judging.verdict import CPU_FALLBACK, IDLE, OK, UNMONITORED
from gpu_watch.report.advice import cause_codes_in_order, cpu_banner
from gpu_watch.report.text import no_run_line, summary_line
from gpu_watch.sensing.nvml import NVML
from gpu_watch.training import keras_internals, placement
from gpu_watch.training.config import Config
from gpu_watch.training.gpu_trial import gpu_trial
from gpu_watch.training.monitor import IdleEvent, Monitor, idle_message
from gpu_watch.training.process_facts import PROCESS_FACTS
from gpu_watch.views import live

# What GPUWatch adds to the epoch `logs` that Keras hands every callback after it (the progress
# bar, History, CSVLogger, TensorBoard, trackers' callbacks): logs key -> the epochs.csv column
# it comes from. One prefix keeps them together in the progress bar and in TensorBoard's tags.
LOG_KEYS = {
    "gpu_util": "gpu_util_mean",  # percent, mean over the watched GPUs
    "gpu_proc_util": "proc_util_mean",  # percent, this process's own share
    "gpu_mem_peak_gib": "gpu_mem_peak_mib",  # GiB, reads better than MiB at 4 decimals
    "gpu_idle_frac": "idle_fraction",  # 0-1, share of readings under the idle threshold
    "gpu_verdict": "verdict",  # VERDICT_CODES
    "gpu_sm_active": "gpu_sm_active_mean",  # percent of SMs busy (GPM: Hopper and newer)
    "gpu_energy_kj": "gpu_energy_j",  # kJ the watched GPUs used in the epoch (whole GPUs)
}
# The epoch's verdict as a number for charts: 0 is healthy, the higher the worse.
VERDICT_CODES = {OK: 0, UNMONITORED: 1, IDLE: 2, CPU_FALLBACK: 3}
# The start of the warning a CPU fall-back brings where a GPU is there (a filter can match it).
CPU_FALLBACK_WARNING = "gpu-watch: training is running on the CPU"
_MIB_PER_GIB = 1024.0
_J_PER_KJ = 1000.0


class GPUWatch(keras.callbacks.Callback):
    """Watch the GPU while a Keras model trains, and say plainly whether it was used.

    While `fit` runs, a background thread samples NVML (GPU utilization and memory, and this
    process's own share); the first training step's op placement is checked; and a run folder
    is written under `log_dir`: `run.json`, `samples.csv`, `batches.csv`, `epochs.csv` and the
    plots. Every epoch and the whole run get a verdict: `ok`, `idle`, `cpu_fallback`,
    `unmonitored` or `unmeasured`, with the causes, in the order to fix them, and their
    remedies.

    Args:
        log_dir: Folder that holds the run folders. Default "gpu_watch_logs".
        run_name: Name of this run's folder. Default: start time plus a random suffix (a name
            already taken gets "-2", "-3", ...: a run folder is never shared).
        interval_s: Seconds between NVML samples. Default 0.2; allowed 0.02 to 60.
        idle_threshold_pct: Utilization under this percentage counts as idle. Default 10.
        idle_patience_s: Seconds every watched GPU must stay idle (not counting the first
            step or validation, which include compilation) before `on_idle` acts. Default 60.
        on_idle: What to do then, once per run: "warn" (a `GPUIdleWarning`), "stop" (end
            training after the current batch; status `stopped_idle`) or "raise" (a
            `GPUIdleError` carrying the evidence). Default "warn".
        require_gpu: Raise `GPUNotUsedError` right after the first step if training runs on the
            CPU, naming the causes. Default False: a `GPUWatchWarning` where a GPU was there to
            use, and on a machine without any GPU only the summary line (so test suites that
            turn warnings into errors pass on GPU-less CI).
        check_placement: Check where the first step's ops ran. Default True.
        plot: Draw `utilization.png`, `epochs.png` and `report.html` at the end of training,
            and redraw them at epoch ends while that takes under 2% of training time. They are
            drawn by a separate, low-priority process, so training never waits for them; they
            appear in the run folder shortly after `fit` returns (`wait_for_report` waits for
            them; a normal exit of Python does too). A fit too short to pay for them (their
            drawing would cost more than a quarter of the CPU time the fit took) leaves them
            until they are asked for: `wait_for_report`, `gpu-watch report`, or the exit of
            Python for the process's last run. Default True.
        nvml: The NVML bindings: default the `pynvml` module; a `gpu_watch.testing.FakeNVML`
            simulates GPUs.
        on_log_error: When the run folder cannot be created: "raise" (an `OSError` before any
            training time is spent) or "warn" (a `GPUWatchWarning`, and the run is logged in a
            new temporary folder instead; without one either, training goes on unwatched).
            Default "raise".
        verbose: 1 prints a summary (verdict, status, what was measured, run folder, causes
            in the order to fix them) when the run ends, Ctrl-C and errors included, and, in
            a Jupyter notebook, keeps a live line under the cell (utilization, memory,
            verdict; redrawn at most once a second by a thread of its own); 0 is silent.
            Default 1.
        log_metrics: Add the epoch's GPU figures to the epoch `logs`, where the progress bar,
            `History`, `CSVLogger`, `TensorBoard` and trackers' callbacks placed after GPUWatch
            find them: `gpu_util` and `gpu_proc_util` (mean utilization of the watched GPUs
            and this process's share, percent), `gpu_mem_peak_gib` (peak memory used, GiB),
            `gpu_idle_frac` (share of readings under the idle threshold, 0-1) and
            `gpu_verdict` (0 ok, 1 unmonitored, 2 idle, 3 cpu_fallback), `gpu_sm_active` (SM
            activity, percent, where the GPU has GPM) and `gpu_energy_kj` (the watched GPUs'
            energy in the epoch, kJ, whole GPUs). Only figures that were measured, never NaN:
            a run that watches no GPU adds `gpu_verdict` alone. The keys are decided at the
            first epoch end and kept, so `History` and `CSVLogger` keep stable columns; an
            epoch without one of its figures leaves that key out. A key already in the logs
            is left as it is. During the epoch the batch `logs` carry `gpu_util`,
            `gpu_proc_util`, `gpu_mem_peak_gib` and `gpu_sm_active` where a recent reading
            has them (`live.LIVE_KEYS`), so the progress bar and
            `TensorBoard(update_freq="batch")` show them live.
            Default True.
        export: Where else to publish the run's figures and verdicts while it trains:
            `gpu_watch.export.Prometheus(...)` (a `/metrics` endpoint on 127.0.0.1 and a
            final push to a Pushgateway), `gpu_watch.export.OpenTelemetry(...)` (OTLP), or a
            list of them. Served and sent off the training thread; a failure is one
            `GPUWatchWarning`. Needs the extras `gpu-watch[prometheus]` / `gpu-watch[otel]`.
            Default None (the run folder only). See docs/cluster.md.
        measure_gpu_speedup: When training ran on the CPU although a GPU is usable in the
            process (`forced_cpu_placement`), time a few steps of copies of the model on the
            GPU and on the CPU after training, with random inputs of its shapes, and state the
            measured speed-up in the cause's impact. It costs time after `fit` (a compile and
            a few steps on each device) and GPU memory (a copy of the model and a batch), so
            it is off by default. Default False.
        job_id: The name every rank of one multi-worker training shares, recorded in
            `run.json` and exported as the `job_id` label, so the ranks are judged together.
            Default None: the launcher's (torchrun's `TORCHELASTIC_RUN_ID`, Slurm's
            `SLURM_JOB_ID` and step, a Kubernetes JobSet or Job name, TensorFlow's `TF_CONFIG`
            cluster), else `run_name`, else the run folder's name (see `gpu_watch.sensing.job`).

    Example:
        >>> model.fit(x, y, epochs=3, callbacks=[GPUWatch(), keras.callbacks.CSVLogger("log.csv")])
        >>> GPUWatch(on_idle="stop", idle_patience_s=120, require_gpu=True)
    """

    def __init__(
        self,
        log_dir: str | os.PathLike = "gpu_watch_logs",
        run_name: str | None = None,
        interval_s: float = 0.2,
        idle_threshold_pct: float = 10.0,
        idle_patience_s: float = 60.0,
        on_idle: str = "warn",
        require_gpu: bool = False,
        check_placement: bool = True,
        plot: bool = True,
        nvml: Any = None,
        on_log_error: str = "raise",
        verbose: int = 1,
        log_metrics: bool = True,
        export: Any = None,
        measure_gpu_speedup: bool = False,
        job_id: str | None = None,
    ) -> None:
        super().__init__()
        self.config = Config(
            log_dir=log_dir, run_name=run_name, interval_s=interval_s,
            idle_threshold_pct=idle_threshold_pct, idle_patience_s=idle_patience_s,
            on_idle=on_idle, require_gpu=require_gpu, check_placement=check_placement,
            plot=plot, on_log_error=on_log_error, log_metrics=log_metrics, export=export,
            measure_gpu_speedup=measure_gpu_speedup, job_id=job_id,
        )
        if verbose not in (0, 1) or isinstance(verbose, bool):
            raise ValueError(f"verbose must be 0 or 1, got {verbose!r}")
        if nvml is not None and not isinstance(nvml, NVML) and not hasattr(nvml, "nvmlInit"):
            raise ValueError(
                f"nvml must be None, a gpu_watch.sensing.nvml.NVML, or NVML bindings such as "
                f"gpu_watch.testing.FakeNVML, got {nvml!r}"
            )
        self.verbose = verbose
        # Keras may dispatch batch hooks from a worker thread: nothing here needs the
        # training thread, so JAX and torch keep their asynchronous dispatch.
        self.async_safe = True
        self._lib = nvml
        self._nvml: NVML | None = nvml if isinstance(nvml, NVML) else None
        self.monitor: Monitor | None = None
        self._live: live.LiveFigures | None = None
        self._bars: list[Any] = []
        self._unwatch: Any = None  # takes off what on_fit_error wrapped
        self._line: live.NotebookLine | None = None
        self._begin_done = False  # the batch begin hook has nothing left to do in this fit

    @property
    def run_dir(self) -> Path | None:
        """The folder of the current (or last) run."""
        return self.monitor.run_dir if self.monitor is not None else None

    @property
    def verdict(self) -> str | None:
        """The current (or last) run's verdict: "ok", "idle", "cpu_fallback", "unmonitored"
        or "unmeasured"; None before the first step was judged, or without a run.

        Example:
            >>> model.fit(x, y, callbacks=[watch := GPUWatch()])
            >>> assert watch.verdict == "ok", watch.verdict
        """
        return self.monitor.record.verdict if self.monitor is not None else None

    def wait_for_report(self, timeout_s: float = 60.0) -> bool:
        """Wait until the last run's figures and `report.html` are in its run folder.

        They are drawn by another process after `fit` returns, usually within a second or two
        (the first time in a Python process, its imports add about a second). Call this before
        reading them in the same script; a normal exit of Python waits for them on its own. For
        a fit too short to pay for its figures (see `plot`), this is what asks for them.

        Args:
            timeout_s: Seconds to wait at most. Default 60.

        Returns:
            True when they are drawn, or there is nothing to draw (`plot=False`, no run yet);
            False when drawing failed (a `GPUWatchWarning` says why; the run's data is
            complete) or took longer than `timeout_s`.

        Example:
            >>> model.fit(x, y, callbacks=[watch := GPUWatch()])
            >>> watch.wait_for_report()
            >>> Image(filename=watch.run_dir / "utilization.png")
        """
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (
                timeout_s >= 0):
            raise ValueError(f"timeout_s must be a number of seconds, at least 0, got "
                             f"{timeout_s!r}")
        if self.monitor is None:
            return True
        return self.monitor.wait_for_drawing(float(timeout_s))

    # -- lifecycle ---------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        if self.monitor is not None:
            self.monitor.finish(runlog.STATUS_FAILED)  # no-op unless the last fit died unseen
            self.monitor.watchdog.restore_sigint()
        self._unwatch_fit()
        self.monitor = None
        self._live = None
        self._begin_done = False
        self._probe = placement.probe_for(keras.backend.backend())
        self._nvml = self._nvml or (NVML(self._lib) if self._lib is not None
                                    else PROCESS_FACTS.nvml())
        frame = keras_internals.fit_frame()
        bars = keras_internals.progress_bars(frame.value)
        # Warnings from hooks on Keras' worker threads name the line that called `fit`.
        self._site = user_site()
        self._unwatched: str | None = None
        self._log_keys: dict[str, str] | None = None
        args = (self._nvml, keras.backend.backend(), self._probe.rank(),
                PROCESS_FACTS.framework(self._probe, keras.__version__),
                PROCESS_FACTS.environment(self._nvml, keras.backend.backend()),
                self._setup(frame, bars),
                int(getattr(self._model, "steps_per_execution", 1) or 1))
        try:
            self.monitor = _monitor(self.config, args)
        except OSError as exc:
            message = (f"gpu-watch cannot write its run folder under "
                       f"log_dir={self.config.log_dir!r}: {exc}")
            self._unwatch_fit()
            if self.config.on_log_error == "raise":
                raise OSError(f"{message}. Pass a writable log_dir, or on_log_error='warn' to "
                              "log the run in a temporary folder instead.") from exc
            self.monitor = _monitor_in_temporary_folder(self.config, args)
            if self.monitor is None:
                self._unwatched = f"no run folder could be written under {self.config.log_dir}"
                warn(f"{message}; training goes on without it.", site=self._site)
                return
            warn(f"{message}; this run is logged in {self.monitor.run_dir} instead.",
                 site=self._site)
        if self.verbose:  # a run closed without `on_train_end` (Ctrl-C, an error) still says so
            self.monitor.on_close = _print_summary
        self.monitor.watch_thread(frame.value, self._stop_training)
        self._time_loop(frame.value)
        # Wrapped over the loop clock's wrappers, and taken off before them (`on_train_end`,
        # `_fit_raised`): each puts back what it found.
        raised = keras_internals.on_fit_error(frame.value, self._fit_raised)
        self._unwatch = raised.value
        self.monitor.record_probes({"fit_errors": raised.outcome})
        # The batch logs get the latest readings (`live.LIVE_KEYS`) from this object, which the
        # sampler thread keeps current: a dict lookup per key and batch, never an NVML call.
        self._live = self.monitor.live if self.config.log_metrics else None
        self._bars = bars.value if self._live is not None else []
        self._line = None
        if self.verbose:
            handle = live.notebook_display()
            if handle is not None:
                monitor = self.monitor
                self._line = live.NotebookLine(handle, lambda: _live_line(monitor),
                                               lambda: monitor.finished)
        self._stopped_idle = False

    def on_epoch_begin(self, epoch, logs=None):
        if self.monitor is not None:
            self.monitor.begin_epoch(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        monitor = self.monitor
        if monitor is None or self._begin_done:
            return
        monitor.batch_begin(batch)
        if self.config.check_placement and monitor.in_first_step:
            self._probe.before_first_step()

    def on_train_batch_end(self, batch, logs=None):
        monitor = self.monitor
        if monitor is None:
            return
        # Once step 0 is acted on and the loop clock times the steps, only an idle stretch is
        # left to act on here: a look at one attribute per batch.
        if not self._begin_done or monitor.idle_happened:
            self._after_steps(monitor.batch_end(batch, logs), logs)
        if self._live is not None and logs is not None:
            for key, value in self._live.values.items():
                logs.setdefault(key, value)  # never overwrite what another callback put there
            if self._bars:  # Keras < 3.15 would show a running mean of the readings
                self._bars = keras_internals.show_as_is(self._bars, live.LIVE_KEYS)

    def on_test_begin(self, logs=None):
        if self.monitor is not None:
            self.monitor.validating(True)

    def on_test_end(self, logs=None):
        if self.monitor is not None:
            self.monitor.validating(False)

    def on_epoch_end(self, epoch, logs=None):
        row: dict[str, Any] = {}
        if self.monitor is not None:  # Keras has waited for every batch hook of the epoch
            self._after_steps(self.monitor.end_batches(), None)
            row = self.monitor.end_epoch(epoch, logs or {}).row
        if self.config.log_metrics and logs is not None and self.monitor is not None:
            values = log_values(row)
            if self._log_keys is None:  # the first epoch decides the columns (see `log_keys`)
                self._log_keys = log_keys(values, bool(self.monitor.devices))
            for key in self._log_keys:
                if values[key] is not None:
                    logs.setdefault(key, values[key])  # never overwrite another callback's

    def on_train_end(self, logs=None):
        monitor = self.monitor
        if monitor is None:
            if self.verbose and getattr(self, "_unwatched", None):
                print(no_run_line(self._unwatched), file=sys.stdout)
            return
        self._unwatch_fit()
        # A Ctrl-C pressed just before `fit` returned is raised here, not lost.
        monitor.watchdog.deliver_pending_interrupt()
        monitor.on_close = None  # printed below, once the GPU trial has added its figures
        monitor.finish(runlog.STATUS_STOPPED_IDLE if self._stopped_idle
                       else runlog.STATUS_COMPLETED)
        if self.config.measure_gpu_speedup and any(
                c["code"] == "forced_cpu_placement" for c in monitor.record.causes):
            data = monitor.record.data or {}
            monitor.add_gpu_trial(gpu_trial(self._model, keras.backend.backend(),
                                            data.get("batch_size")))
        if self._line is not None:
            self._line.stop()
        if self.verbose:
            _print_summary(monitor)

    # -- what the hooks decide ---------------------------------------------------------------

    def _after_steps(self, first_step_ended: bool, logs: Any) -> None:
        """Act on what the steps just recorded brought: step 0's placement, an idle stretch."""
        if first_step_ended:
            self._after_first_step(logs)
        event = self.monitor.take_idle_event()
        if event is not None:
            self._act_on_idle(event)

    def _after_first_step(self, logs) -> None:
        # From now on the begin hook has nothing to do where the loop clock times the steps.
        self._begin_done = self.monitor.loop_clock.attached
        report = None
        if self.config.check_placement:
            try:
                report = self._probe.after_first_step(self._model, logs)
            except Exception as exc:  # an unexpected model must not stop training
                warn(f"gpu-watch could not check placement: {exc!r}", site=self._site)
        judgement = self.monitor.first_step(report)
        if judgement.verdict != CPU_FALLBACK:
            return
        codes = [c.code for c in judgement.causes]
        causes = [c.to_dict() for c in judgement.causes]
        if self.config.require_gpu:
            error = GPUNotUsedError(
                f"{cpu_banner(causes)} Run folder: {self.monitor.run_dir}", codes)
            self.monitor.finish(runlog.STATUS_FAILED, error)
            raise error
        if not _gpu_on_machine(self.monitor.record):
            # Nothing to be surprised about: the summary line says cpu_fallback and why. A
            # project whose tests turn warnings into errors keeps passing on CI without a GPU.
            return
        # One line: the causes' words come once, in the summary and the run folder.
        order = cause_codes_in_order(causes)
        warn(f"{CPU_FALLBACK_WARNING}, not the GPU ({order}); why and what to do: "
             f"gpu-watch report {self.monitor.run_dir}", site=self._site)

    def _act_on_idle(self, event: IdleEvent) -> None:
        action = self.config.on_idle
        message = idle_message(event, self.config)
        self.monitor.record_idle(event, action)
        if action == "warn":
            warn(message, GPUIdleWarning, site=self._site)
        elif action == "stop":
            self._stopped_idle = True
            self._model.stop_training = True
        else:
            error = GPUIdleError(message, event.to_dict())
            self.monitor.finish(runlog.STATUS_STOPPED_IDLE, error)
            raise error

    def _time_loop(self, frame: Any) -> None:
        """Time the loop on the training thread and each fetch of a batch where Keras makes it
        (see `loop_clock`); where no fetch can be timed, sample the threads' stacks."""
        monitor = self.monitor
        attachment = keras_internals.Attachment()
        clock = keras_internals.attach_loop_clock(frame, monitor.loop_clock, attachment,
                                                  skip=self)
        fetch = (keras_internals.attach_fetch_timer(frame, keras.backend.backend(),
                                                    monitor.loop_clock, attachment)
                 if clock.value else keras_internals.Probed(None, "data_fetch: the loop "
                                                            "clock is not attached"))
        monitor.record_probes({"loop_clock": clock.outcome, "data_fetch": fetch.outcome})
        ident = threading.get_ident()
        look = (lambda: keras_internals.data_tick(ident).value) if frame is not None else None
        monitor.time_loop(attachment.detach, look)

    def _setup(self, frame: keras_internals.Probed,
               bars: keras_internals.Probed) -> dict[str, Any]:
        """What the training is set up with, read as it begins (device scopes are per thread),
        and what the probes of Keras' internals found."""
        try:
            distribution = self._probe.before_training(self._model)
        except Exception as exc:  # an unexpected setup must not stop training
            warn(f"gpu-watch could not read the training setup: {exc!r}", site=self._site)
            distribution = None
        data = keras_internals.data_source(frame.value)
        return {"data": data.value, "distribution": distribution,
                "keras_probes": keras_internals.outcomes(frame, data_source=data,
                                                         progress_bars=bars)}

    def _fit_raised(self, error: BaseException) -> None:
        """`fit` is raising `error` (Keras calls no `on_train_end` then): close the run now, on
        the training thread, so the sampler stops and the SIGINT handler is put back."""
        self._unwatch_fit()
        monitor = self.monitor
        if monitor is None or monitor.finished:  # closed already (GPUWatch raised it, or an
            return                               # earlier wrapper this error passed through)
        monitor.finish(runlog.STATUS_INTERRUPTED if isinstance(error, KeyboardInterrupt)
                       else runlog.STATUS_FAILED, error)
        if self._line is not None:
            self._line.stop()

    def _stop_training(self) -> None:
        """End `fit` at the end of its batch (Keras looks after each one)."""
        self._model.stop_training = True

    def _unwatch_fit(self) -> None:
        """Take off what `keras_internals.on_fit_error` wrapped: the model and a callback list
        passed to `fit` outlive the call."""
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            unwatch()


def log_values(row: dict[str, Any]) -> dict[str, float | None]:
    """The `LOG_KEYS` values for an epoch's `epochs.csv` row: floats, None when not measured
    (never NaN: JSON has no NaN, and `RemoteMonitor(send_as_json=True)` would lose the
    epoch)."""
    values: dict[str, float | None] = {}
    for key, column in LOG_KEYS.items():
        value = row.get(column)
        if column == "verdict":
            value = VERDICT_CODES.get(value)
        elif column.endswith("_mib") and value is not None:
            value = value / _MIB_PER_GIB
        elif column.endswith("_j") and value is not None:
            value = value / _J_PER_KJ
        number = None if value is None else float(value)
        values[key] = None if number is None or math.isnan(number) else number
    return values


# What every watched GPU's readings give; the other GPU keys need what some GPUs or setups lack
# (a per-process sample, GPM, an energy counter or power readings).
_CORE_GPU_KEYS = ("gpu_util", "gpu_mem_peak_gib", "gpu_idle_frac")


def log_keys(first: dict[str, float | None], watching_gpus: bool) -> dict[str, str]:
    """The keys a run adds to its epoch logs, decided at its first epoch end and kept for the
    rest of the run, so `History` and `CSVLogger` (whose columns are its first epoch's keys)
    keep stable columns: `gpu_verdict` always; the core GPU figures when a GPU is watched; the
    others when the first epoch measured them."""
    return {key: column for key, column in LOG_KEYS.items()
            if key == "gpu_verdict" or watching_gpus and (
                key in _CORE_GPU_KEYS or first.get(key) is not None)}


def _live_line(monitor: Monitor) -> str:
    """The notebook's live line for a run: its latest readings and current verdict."""
    return live.live_line(monitor.live.values, monitor.record.verdict, monitor.status,
                          monitor.elapsed_s(), len(monitor.devices))


def _print_summary(monitor: Monitor) -> None:
    """Print the run's summary line (`gpu_watch.report.text.summary_line`)."""
    print(summary_line(monitor.record, monitor.run_dir, monitor.batches.rows_written,
                       monitor.epochs.rows_written), file=sys.stdout, flush=True)


def _monitor(config: Config, args: tuple) -> Monitor:
    """A `Monitor` for one run, handed the clock it times the run by and the look at the
    threads' stacks it takes on each sampler tick."""
    return Monitor(config, *args, clock=time.perf_counter, data_tick=keras_internals.data_tick)


def _monitor_in_temporary_folder(config: Config, args: tuple) -> Monitor | None:
    """A run logged in a new temporary folder, for `on_log_error="warn"` when `log_dir` cannot
    be written: the run is still watched and judged; None when that fails too."""
    try:
        folder = tempfile.mkdtemp(prefix="gpu-watch-")
        return _monitor(dataclasses.replace(config, log_dir=folder), args)
    except OSError:
        return None


def _gpu_on_machine(record: runlog.RunRecord) -> bool:
    """Whether NVML or the framework saw a GPU: training on the CPU is then a surprise."""
    nvml = record.nvml or {}
    framework = record.framework or {}
    return bool(nvml.get("gpus_seen") or framework.get("gpus"))
