"""What does `GPUWatch()` cost a training run? Times Keras `fit` side by side with and without it.

The same two small models (an MLP of about 1 ms per step and the demo CNN) train with TensorFlow
on the CPU under each callback configuration. The configurations are interleaved: each round
runs every one once, in rotated order, so that drift in the machine's speed hits all of them
alike, and a fit during which other processes took more than a tenth of a core is run again.
For each configuration the table gives the median wall time of `fit` and of a steady-state
epoch, their ratio to training with no callback (per round, then the median), and the ratio of
the fastest runs. One GPUWatch row redraws the figures at every epoch end it can (the default
holds redraws to 2% of training time and none in the first 10 s), to show that drawing in the
background leaves the training that goes on meanwhile alone. GPUWatch's own costs are then broken
down: its per-batch hooks (timed inside the process), its fixed costs per `fit`, the CPU time of
its sampler thread per second of training, and the figures drawn by its drawing process.

The live batch keys (the latest readings GPUWatch adds to each batch's `logs`) are priced apart:
GPUWatch's batch hooks driven directly for many batches with `log_metrics=True` and `False`,
interleaved, and the copy of the keys alone (target: a couple of microseconds per batch).

A further section measures the fixed cost per `fit`: many short fits (10 steps of a small MLP), with
no callback, a no-op callback, `GPUWatch(plot=False)` and `GPUWatch()`, interleaved; for each the
median wall time of `fit`, its extra over no callback, and `on_train_begin` + `on_train_end`
timed inside the process (target: at most 25 ms with the default options).

One GPUWatch row also exports to Prometheus (`export=Prometheus()`) while a scraper thread reads
its `/metrics` endpoint every second, as a Prometheus server would, only 30 times more often than
dcgm-exporter's default; after the table, the scrapes answered and their latency.

The GPUWatch rows read a simulated GPU (`gpu_watch.testing.FakeNVML`, one busy GPU with this
process on it), so that the sampler thread does the work it does on a GPU machine.

Usage:
    python benchmarks/overhead.py                       # about 8 minutes on 2 cores
    python benchmarks/overhead.py --repeats 9 --epochs 5 --models cnn --fixed-repeats 15

The TensorBoard row needs the `tensorboard` package (``pip install -e ".[bench]"`` or
``pip install tensorboard``), the Prometheus row `prometheus-client` (``pip install -e
".[prometheus]"``); without them the rows are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import gpu_watch  # noqa: E402
from gpu_watch import GPUWatch, GPUWatchWarning  # noqa: E402
from gpu_watch.demo import build_model, make_images  # noqa: E402
from gpu_watch.sensing.nvml import NVML, Reading  # noqa: E402
from gpu_watch.sensing.sampler import DEFAULT_INTERVAL_S, Sampler  # noqa: E402
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess  # noqa: E402
from gpu_watch.training.process_facts import PROCESS_FACTS  # noqa: E402
from gpu_watch.views import drawing  # noqa: E402

SAMPLER_THREAD = "gpu-watch-sampler"


# -- the models --------------------------------------------------------------------------------


@dataclass
class Workload:
    """A compiled model and its data; `fit` trains it for the benchmark's epochs."""

    name: str
    model: Any
    x: np.ndarray
    y: np.ndarray
    batch_size: int

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def fit(self, epochs: int, callbacks: list) -> None:
        self.model.fit(self.x, self.y, epochs=epochs, batch_size=self.batch_size, verbose=0,
                       shuffle=False, callbacks=callbacks)


def mlp() -> Workload:
    """A 3-layer MLP on random data: about 1 ms per step of 32 on 2 cores."""
    rng = np.random.default_rng(0)
    x = rng.random((32_000, 64), dtype=np.float32)
    y = rng.random((32_000, 1), dtype=np.float32)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer="adam", loss="mse")
    return Workload("MLP", model, x, y, batch_size=32)


def cnn() -> Workload:
    """`gpu_watch.demo`'s CNN on its generated images: about 5 ms per step of 64 on 2 cores."""
    x, y = make_images(9_600)
    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return Workload("CNN", model, x, y, batch_size=64)


WORKLOADS = {"mlp": mlp, "cnn": cnn}


# -- the callbacks under test ------------------------------------------------------------------


class NoOpBatchCallback(keras.callbacks.Callback):
    """Overrides the per-batch hooks and does nothing: the floor of any per-batch callback."""

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass


class EpochClock(keras.callbacks.Callback):
    """Records when each epoch ends. It has epoch hooks only, so it leaves Keras' batch loop as
    it is; every configuration carries one, last in the list, so its clock sees the other
    callbacks' epoch-end work too."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    def on_train_begin(self, logs=None):
        self.ends = [time.perf_counter()]

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter())

    def steady_periods_s(self) -> list[float]:
        """The epoch periods after the first epoch (which includes the first step)."""
        periods = [b - a for a, b in zip(self.ends[1:], self.ends[2:], strict=False)]
        return periods or [self.ends[-1] - self.ends[0]]


def simulated_gpu() -> FakeNVML:
    """One busy H100 with this process on it, so every sampler read has something to do."""
    me = FakeProcess(used_mib=lambda t: 6000.0 + t % 7, sm_util_pct=lambda t: 80 + 10 * (t % 1))
    gpu = FakeGPU(util_pct=lambda t: 85 + 10 * (t % 1), mem_util_pct=40.0, processes=[me])
    return FakeNVML([gpu])


@contextlib.contextmanager
def redraw_every_epoch() -> Iterator[None]:
    """Lift GPUWatch's redraw budget: a redraw at every epoch end whose last drawing is done."""
    saved = drawing.FIRST_RENDER_S, drawing.RENDER_SHARE
    drawing.FIRST_RENDER_S, drawing.RENDER_SHARE = 0.0, 1.0
    try:
        yield
    finally:
        drawing.FIRST_RENDER_S, drawing.RENDER_SHARE = saved


@dataclass
class Config:
    """One row of the table: a name and a factory for the callbacks of one `fit`."""

    name: str
    make: Callable[[Path], list]
    note: str = ""  # set on the GPUWatch rows: they read a simulated GPU
    plots: bool = False  # GPUWatch draws its plots
    around: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


@dataclass
class Scrapes:
    """What the scraper thread of the Prometheus row saw, across its fits."""

    port: int
    answered_ms: list[float] = field(default_factory=list)
    refused: int = 0

    @contextlib.contextmanager
    def every_second(self) -> Iterator[None]:
        """Scrape the endpoint once a second while the fit runs (its first scrape at once)."""
        stop = threading.Event()

        def scrape() -> None:
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    with urllib.request.urlopen(
                            f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
                        response.read()
                    self.answered_ms.append(1e3 * (time.perf_counter() - start))
                except OSError:  # the endpoint opens just after the fit starts
                    self.refused += 1
                stop.wait(1.0)

        thread = threading.Thread(target=scrape, name="bench-scraper", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(10)


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configurations(has_tensorboard: bool, scrapes: Scrapes | None = None) -> list[Config]:
    rows = [
        Config("no callback", lambda d: []),
        Config("no-op per-batch callback", lambda d: [NoOpBatchCallback()]),
        Config("GPUWatch()", lambda d: [GPUWatch(log_dir=d, nvml=simulated_gpu(), verbose=0)],
               "simulated GPU", plots=True),
        Config("GPUWatch(), redrawn every epoch",
               lambda d: [GPUWatch(log_dir=d, nvml=simulated_gpu(), verbose=0)],
               "simulated GPU", plots=True, around=redraw_every_epoch),
        Config("GPUWatch(plot=False)",
               lambda d: [GPUWatch(log_dir=d, nvml=simulated_gpu(), plot=False, verbose=0)],
               "simulated GPU"),
        Config("CSVLogger", lambda d: [keras.callbacks.CSVLogger(str(d / "log.csv"))]),
    ]
    if scrapes is not None:
        from gpu_watch.export import Prometheus

        rows.append(Config(
            "GPUWatch(plot=False, export=Prometheus()), scraped every 1 s",
            lambda d: [GPUWatch(log_dir=d, nvml=simulated_gpu(), plot=False, verbose=0,
                                export=Prometheus(port=scrapes.port))],
            "simulated GPU", around=scrapes.every_second))
    if has_tensorboard:
        rows.append(Config('TensorBoard(update_freq="batch")',
                           lambda d: [keras.callbacks.TensorBoard(log_dir=str(d),
                                                                  update_freq="batch")]))
    return rows


# -- what GPUWatch's threads spend ------------------------------------------------------------


@dataclass
class ThreadCosts:
    """CPU seconds spent by GPUWatch's sampler thread, and the drawings it asked for, collected
    across fits."""

    sampler_cpu_s: float = 0.0
    sampler_ticks: int = 0
    drawings: list[drawing.Drawing] = field(default_factory=list)
    watched_s: float = 0.0  # wall time of every fit with GPUWatch, reruns included
    plotted_fits: int = 0  # fits with GPUWatch(plot=True), reruns included
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextlib.contextmanager
def measure_threads(costs: ThreadCosts) -> Iterator[None]:
    """Wrap the sampler's thread body to read `time.thread_time()` on its thread, and keep every
    drawing asked of the drawing process (each reports the CPU time it took there). The wrappers
    run once per thread and once per drawing, never per batch or per tick, so they do not change
    what is measured."""
    run, request = Sampler._run, drawing.Painter.request

    def timed_run(self: Sampler) -> None:
        try:
            run(self)
        finally:
            with costs.lock:
                costs.sampler_cpu_s += time.thread_time()
                costs.sampler_ticks += self.ticks

    def kept_request(self: drawing.Painter, run_dir: Any) -> drawing.Drawing:
        asked = request(self, run_dir)
        with costs.lock:
            costs.drawings.append(asked)
        return asked

    Sampler._run, drawing.Painter.request = timed_run, kept_request
    try:
        yield
    finally:
        Sampler._run, drawing.Painter.request = run, request


# -- GPUWatch's hooks, timed during one extra fit ---------------------------------------------


HOOKS = ("on_train_begin", "on_epoch_begin", "on_train_batch_begin", "on_train_batch_end",
         "on_epoch_end", "on_train_end")


def time_hooks(callback: keras.callbacks.Callback) -> dict[str, list[float]]:
    """Replace `callback`'s hooks on the instance by timed wrappers; return the durations (s)
    each records, per hook, in call order."""
    durations: dict[str, list[float]] = {name: [] for name in HOOKS}
    for name in HOOKS:
        bound = getattr(callback, name)
        record = durations[name].append

        def timed(*args, _bound=bound, _record=record, **kwargs):
            start = time.perf_counter_ns()
            try:
                return _bound(*args, **kwargs)
            finally:
                _record((time.perf_counter_ns() - start) * 1e-9)

        setattr(callback, name, timed)
    return durations


@dataclass
class HookCosts:
    """What GPUWatch's hooks took during one fit."""

    per_batch_us: list[float]
    first_batch_ms: float
    begin_ms: float
    epoch_end_ms: float
    end_ms: float


def hook_costs(durations: dict[str, list[float]]) -> HookCosts:
    begins, ends = durations["on_train_batch_begin"], durations["on_train_batch_end"]
    per_batch = [(b + e) * 1e6 for b, e in zip(begins, ends, strict=True)]
    return HookCosts(
        per_batch_us=per_batch[1:],  # batch 0 checks placement: reported on its own
        first_batch_ms=per_batch[0] / 1e3,
        begin_ms=durations["on_train_begin"][0] * 1e3,
        epoch_end_ms=statistics.median(durations["on_epoch_end"]) * 1e3,
        end_ms=durations["on_train_end"][0] * 1e3,
    )


# -- running and printing ----------------------------------------------------------------------


@dataclass
class Timing:
    fit_s: list[float] = field(default_factory=list)
    periods_s: list[float] = field(default_factory=list)  # every steady epoch of every fit


def machine_busy_s() -> float | None:
    """CPU seconds this machine has spent busy (all processes, plus time stolen by the
    hypervisor), from /proc/stat; None where there is no /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Fit:
    """One timed fit, and how much of a core other processes took from it meanwhile."""

    fit_s: float
    periods_s: list[float]
    others_cores: float


def run_once(work: Workload, config: Config, epochs: int, root: Path,
             costs: ThreadCosts | None = None) -> Fit:
    folder = Path(tempfile.mkdtemp(dir=root))
    clock = EpochClock()
    callbacks = [*config.make(folder), clock]
    with config.around():
        busy, own = machine_busy_s(), own_cpu_s()
        start = time.perf_counter()
        work.fit(epochs, callbacks)
        fit_s = time.perf_counter() - start
    if costs is not None and config.note:
        costs.watched_s += fit_s
        costs.plotted_fits += config.plots
    others = 0.0
    if busy is not None:
        others = max(0.0, (machine_busy_s() - busy) - (own_cpu_s() - own)) / fit_s
    return Fit(fit_s, clock.steady_periods_s(), others)


def run_quietly(work: Workload, config: Config, epochs: int, root: Path, tries: int,
                max_others_cores: float, costs: ThreadCosts) -> tuple[Fit, int]:
    """Run a fit until other processes took at most `max_others_cores` of a core meanwhile,
    at most `tries` times; return the quietest fit and the number of reruns. On a shared
    machine a burst of someone else's work slows a fit by far more than any callback does."""
    best = run_once(work, config, epochs, root, costs)
    reruns = 0
    while best.others_cores > max_others_cores and reruns < tries - 1:
        reruns += 1
        fit = run_once(work, config, epochs, root, costs)
        if fit.others_cores < best.others_cores:
            best = fit
    return best, reruns


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def paired(values: list[float], base: list[float]) -> list[float]:
    """Each repeat's time over the baseline's time in the same round: a burst of load from
    elsewhere on the machine slows both and cancels out."""
    return [v / b for v, b in zip(values, base, strict=True)]


def ratio_cell(ratios: list[float]) -> str:
    """Median ratio and its interquartile range, e.g. "1.004 (0.991-1.012)"."""
    return (f"{statistics.median(ratios):.3f} ({percentile(ratios, 25):.3f}-"
            f"{percentile(ratios, 75):.3f})")


def print_table(configs: list[Config], timings: dict[str, Timing]) -> None:
    base = timings[configs[0].name]
    rows = [("callbacks", "fit s", "fit ratio (IQR)", "best fit", "epoch s", "epoch ratio",
             "best epoch")]
    for config in configs:
        t = timings[config.name]
        rows.append((
            config.name + ("*" if config.note else ""),
            f"{statistics.median(t.fit_s):.3f}",
            ratio_cell(paired(t.fit_s, base.fit_s)),
            f"{min(t.fit_s) / min(base.fit_s):.3f}",
            f"{statistics.median(t.periods_s):.3f}",
            f"{statistics.median(t.periods_s) / statistics.median(base.periods_s):.3f}",
            f"{min(t.periods_s) / min(base.periods_s):.3f}",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                         strict=True)]
        print("  ".join(cells))
        if n == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))


def machine_lines() -> list[str]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB memory"
    versions = [f"Python {platform.python_version()}", f"TensorFlow {tf.__version__}",
                f"Keras {keras.__version__}", f"NumPy {np.__version__}",
                f"gpu-watch {gpu_watch.__version__}"]
    if importlib.util.find_spec("tensorboard") is not None:
        from tensorboard import version

        versions.append(f"TensorBoard {version.VERSION}")
    return [f"machine: {model}, {usable} cores usable ({os.cpu_count()} online){memory}, "
            f"{platform.system()} {platform.release()}",
            f"versions: {', '.join(versions)}",
            f"devices TensorFlow trains on: "
            f"{', '.join(d.name for d in tf.config.list_logical_devices()) or 'none'}"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed fits per configuration and model (default: 5)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per fit, at least 2 (default: 3)")
    parser.add_argument("--tries", type=int, default=3,
                        help="runs of a fit at most while other processes load the machine "
                             "(default: 3)")
    parser.add_argument("--max-others", type=float, default=0.1,
                        help="cores other processes may use during a fit before it is rerun "
                             "(default: 0.1)")
    parser.add_argument("--models", default="mlp,cnn",
                        help="comma-separated, from: mlp, cnn; empty for the fixed cost per fit "
                             "alone (default: mlp,cnn)")
    parser.add_argument("--live-batches", type=int, default=20_000,
                        help="batches per round for the price of the live batch keys; 0 skips "
                             "it (default: 20000)")
    parser.add_argument("--fixed-repeats", type=int, default=15,
                        help="rounds of short fits for the fixed cost per fit; 0 skips it "
                             "(default: 15)")
    args = parser.parse_args(argv)
    if args.live_batches < 0:
        parser.error(f"--live-batches must be at least 0, got {args.live_batches}")
    if args.fixed_repeats < 0:
        parser.error(f"--fixed-repeats must be at least 0, got {args.fixed_repeats}")
    if args.tries < 1:
        parser.error(f"--tries must be at least 1, got {args.tries}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.epochs < 2:
        parser.error(f"--epochs must be at least 2 (the first epoch is left out of the epoch "
                     f"column), got {args.epochs}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in WORKLOADS]
    if unknown or not (args.models or args.fixed_repeats or args.live_batches):
        parser.error(f"--models takes {', '.join(WORKLOADS)} (or nothing, with --fixed-repeats "
                     f"or --live-batches), got {','.join(unknown) or '?'}")
    return args


def benchmark(work: Workload, configs: list[Config], args: argparse.Namespace,
              root: Path, scrapes: Scrapes | None = None) -> None:
    """Time every configuration on `work`, then GPUWatch's parts; print the results."""
    print(f"\n{work.name}: {work.model.count_params():,} parameters, "
          f"{work.steps_per_epoch} steps of {work.batch_size} per epoch, {args.epochs} epochs "
          f"per fit")
    for config in (configs[0], configs[2]):  # untimed: tracing, first imports of GPUWatch's
        run_once(work, config, 2, root)

    costs = ThreadCosts()
    timings = {c.name: Timing() for c in configs}
    reruns, busy = 0, []
    with measure_threads(costs):
        for repeat in range(args.repeats):
            shift = repeat % len(configs)  # rotate, so no row always runs first
            for config in configs[shift:] + configs[:shift]:
                fit, tries = run_quietly(work, config, args.epochs, root, args.tries,
                                         args.max_others, costs)
                reruns += tries
                busy.append(fit.others_cores)
                timings[config.name].fit_s.append(fit.fit_s)
                timings[config.name].periods_s.extend(fit.periods_s)
    print_table(configs, timings)
    if scrapes is not None and scrapes.answered_ms:
        print(f"Prometheus row: {len(scrapes.answered_ms)} scrapes answered, median "
              f"{statistics.median(scrapes.answered_ms):.1f} ms, p99 "
              f"{percentile(scrapes.answered_ms, 99):.1f} ms (on the endpoint's thread); "
              f"{scrapes.refused} refused while the endpoint was not yet open")
        scrapes.answered_ms.clear()
        scrapes.refused = 0
    noisy = sum(b > args.max_others for b in busy)
    print(f"other processes on this machine: median {statistics.median(busy):.2f} of a core "
          f"during the fits kept; {reruns} fits rerun because they took more than "
          f"{args.max_others:g}; {noisy} of {len(busy)} kept anyway after {args.tries} tries")
    print("* reads a simulated GPU (FakeNVML: one H100, this process on it), so that the "
          "sampler does the reads it does on a GPU machine")
    print("fit s: median wall time of fit; fit ratio: median over rounds of the fit's time / "
          "no callback's in the same round (interquartile range); epoch s: median period of "
          "the epochs after the first in every fit, epoch ratio: its ratio to no callback's; "
          "best: fastest / fastest of no callback (load elsewhere only ever slows a run down)")

    watch = GPUWatch(log_dir=root / "hooks", nvml=simulated_gpu(), verbose=0)
    noop = NoOpBatchCallback()
    watch_durations, noop_durations = time_hooks(watch), time_hooks(noop)
    work.fit(args.epochs, [noop, watch])
    hook, floor = hook_costs(watch_durations), hook_costs(noop_durations).per_batch_us
    hook_us = statistics.median(hook.per_batch_us)
    print(f"GPUWatch per-batch hooks (on_train_batch_begin + end, timed in-process during a "
          f"fit): median {hook_us:.1f} µs, mean {statistics.fmean(hook.per_batch_us):.1f} µs, "
          f"p99 {percentile(hook.per_batch_us, 99):.1f} µs; a no-op callback timed the same "
          f"way: {statistics.median(floor):.1f} µs")
    print(f"GPUWatch once per fit: on_train_begin {hook.begin_ms:.0f} ms, first batch "
          f"(placement check) {hook.first_batch_ms:.1f} ms, on_train_end {hook.end_ms:.0f} ms "
          f"(it asks the drawing process for the figures); once per epoch: on_epoch_end "
          f"{hook.epoch_end_ms:.1f} ms")
    watched_s = costs.watched_s
    sampler_ms_per_s = 1e3 * costs.sampler_cpu_s / watched_s
    print(f"sampler thread ({SAMPLER_THREAD}): {sampler_ms_per_s:.2f} ms CPU per second of "
          f"training ({costs.sampler_ticks / watched_s:.1f} ticks/s, "
          f"{1e6 * costs.sampler_cpu_s / max(costs.sampler_ticks, 1):.0f} µs CPU per tick, "
          f"flushes to disk included)")
    if costs.drawings:
        painter = drawing.painter()
        painter.wait(costs.drawings, 300.0)
        cpu_ms = [1e3 * d.cpu_s for d in costs.drawings if d.cpu_s is not None]
        print(f"figures (both GPUWatch() rows): "
              f"{len(costs.drawings) / max(costs.plotted_fits, 1):.1f} "
              f"drawings per fit (the final one and epoch-end redraws), median "
              f"{statistics.median(cpu_ms or [0]):.0f} ms CPU each, all in the drawing process "
              f"(lowest CPU priority), none on the training thread; "
              f"{sum(d.error is not None for d in costs.drawings)} failed")
    step_s = statistics.median(timings[configs[0].name].periods_s) / work.steps_per_epoch
    parts_us = hook_us + sampler_ms_per_s * step_s * 1e3
    print(f"GPUWatch(plot=False) per step from its parts: {hook_us:.1f} µs hooks + "
          f"{sampler_ms_per_s * step_s * 1e3:.1f} µs sampler CPU = {parts_us:.1f} µs of a "
          f"{step_s * 1e3:.2f} ms step: {100 * parts_us / (step_s * 1e6):.2f}%")


# -- the fixed cost per fit ----------------------------------------------------------------------

FIXED_STEPS = 10
FIXED_TARGET_MS = 25.0


def short_fit_workload() -> Workload:
    """A small MLP and 10 batches of 32: a fit short enough that fixed costs show."""
    rng = np.random.default_rng(1)
    x = rng.random((FIXED_STEPS * 32, 64), dtype=np.float32)
    y = rng.random((FIXED_STEPS * 32, 1), dtype=np.float32)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return Workload("short MLP", model, x, y, batch_size=32)


@dataclass
class ShortFits:
    """Timings of one configuration's short fits."""

    fit_s: list[float] = field(default_factory=list)
    begin_end_s: list[float] = field(default_factory=list)
    figures_s: list[float] = field(default_factory=list)  # fit's return -> figures drawn


def fixed_cost(repeats: int, root: Path) -> None:
    """Time many 10-step fits under each configuration, interleaved, and print the table."""
    work = short_fit_workload()
    # One NVML session for every fit, as GPUWatch() shares the real NVML within a process.
    session = NVML(simulated_gpu())
    makers: dict[str, Callable[[Path], list]] = {
        "no callback": lambda d: [],
        "no-op per-batch callback": lambda d: [NoOpBatchCallback()],
        "GPUWatch(plot=False)": lambda d: [GPUWatch(log_dir=d, nvml=session, plot=False,
                                                    verbose=0)],
        "GPUWatch()": lambda d: [GPUWatch(log_dir=d, nvml=session, verbose=0)],
    }
    names = list(makers)
    print(f"\nFixed cost per fit: {work.name}, {work.model.count_params():,} parameters, "
          f"{FIXED_STEPS} steps of {work.batch_size}, 1 epoch per fit; {repeats} rounds, "
          f"rotated order")
    first_begin_ms = None
    PROCESS_FACTS.clear()  # as in a fresh process: the first fit gathers them
    for name in names:  # untimed: tracing, and everything GPUWatch does once per process
        callbacks = makers[name](root)
        durations = [time_hooks(c) for c in callbacks]
        work.fit(1, callbacks)
        for one, timed in zip(callbacks, durations, strict=True):
            if isinstance(one, GPUWatch):
                if first_begin_ms is None:
                    first_begin_ms = 1e3 * timed["on_train_begin"][0]
                one.wait_for_report(120.0)
    results = {name: ShortFits() for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            callbacks = makers[name](root)
            durations = [time_hooks(c) for c in callbacks if isinstance(c, GPUWatch)]
            start = time.perf_counter()
            work.fit(1, callbacks)
            end = time.perf_counter()
            results[name].fit_s.append(end - start)
            for timed in durations:
                results[name].begin_end_s.append(timed["on_train_begin"][0]
                                                 + timed["on_train_end"][0])
            watch = next((c for c in callbacks if isinstance(c, GPUWatch)), None)
            if watch is not None and watch.config.plot:
                watch.wait_for_report(120.0)  # outside the timed fit: the next fit runs quiet
                results[name].figures_s.append(time.perf_counter() - end)
    base = results["no callback"].fit_s
    rows = [("callbacks", "fit ms", "extra ms (IQR)", "begin+end ms", "figures after fit s")]
    for name in names:
        r = results[name]
        extra = [1e3 * (a - b) for a, b in zip(r.fit_s, base, strict=True)]
        rows.append((
            name,
            f"{1e3 * statistics.median(r.fit_s):.1f}",
            f"{statistics.median(extra):+.1f} ({percentile(extra, 25):+.1f} to "
            f"{percentile(extra, 75):+.1f})",
            f"{1e3 * statistics.median(r.begin_end_s):.1f}" if r.begin_end_s else "",
            f"{statistics.median(r.figures_s):.2f}" if r.figures_s else "",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join([row[0].ljust(widths[0])]
                        + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]))
        if n == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for name in ("GPUWatch()", "GPUWatch(plot=False)"):
        ms = 1e3 * statistics.median(results[name].begin_end_s)
        verdict = "within" if ms <= FIXED_TARGET_MS else "OVER"
        print(f"{name}: on_train_begin + on_train_end {ms:.1f} ms per fit, {verdict} the "
              f"{FIXED_TARGET_MS:.0f} ms target")
    print(f"extra ms: the fit's wall time minus no callback's in the same round (median and "
          f"interquartile range; it includes the per-batch hooks and the first step's placement "
          f"check); begin+end: the two hooks timed inside the process; figures after fit: from "
          f"fit's return until the drawing process has written the figures and report.html "
          f"(waited for outside the timed fits). The first GPUWatch fit of a process pays "
          f"more: {first_begin_ms:.0f} ms in on_train_begin here, for the environment check and "
          f"the framework's facts, gathered once per process.")


# -- the sampler's cost with GPM and the energy counter -----------------------------------------


@dataclass
class GpmCost:
    """CPU of the sampler thread per tick, reads only (no disk), with GPM and the energy counter
    read ("on") and switched off ("off"); `gpm_readings` counts readings with SM activity."""

    on_us: list[float] = field(default_factory=list)
    off_us: list[float] = field(default_factory=list)
    gpm_readings: int = 0
    gpus: int = 0


def _hook_s_per_batch(log_metrics: bool, batches: int, root: Path) -> float:
    """GPUWatch's two batch hooks driven directly on a simulated GPU: seconds per batch."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    watch = GPUWatch(log_dir=root, nvml=simulated_gpu(), plot=False, verbose=0,
                     check_placement=False, log_metrics=log_metrics)
    watch.set_model(model)
    watch.on_train_begin()
    watch.on_epoch_begin(0)
    time.sleep(0.5)  # the sampler has deposited readings: the keys carry numbers, not NaN
    begin, end = watch.on_train_batch_begin, watch.on_train_batch_end
    start = time.perf_counter()
    for batch in range(batches):
        begin(batch, None)
        end(batch, {"loss": 0.5})  # Keras hands every batch a new dict
    elapsed = time.perf_counter() - start
    watch.on_epoch_end(0, {"loss": 0.5})
    watch.on_train_end()
    return elapsed / batches


def live_keys_cost(batches: int, root: Path, rounds: int = 5) -> None:
    """The price of the live batch keys: the batch hooks with and without them, interleaved
    (medians of `rounds`), and the copy of the keys alone."""
    import timeit

    from gpu_watch.views.live import LiveFigures

    per_batch: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds):
        for flag in ((True, False) if r % 2 == 0 else (False, True)):
            per_batch[flag].append(_hook_s_per_batch(flag, batches, root))
    with_keys = statistics.median(per_batch[True]) * 1e6
    without = statistics.median(per_batch[False]) * 1e6
    live = LiveFigures(DEFAULT_INTERVAL_S)
    live.add([Reading(time_s=1.0, gpu=0, util_pct=90, proc_util_pct=85, mem_used_mib=6000)])

    def copy() -> None:
        logs = {"loss": 0.5}
        for key, value in live.values.items():
            logs.setdefault(key, value)

    def bare() -> None:
        logs = {"loss": 0.5}  # noqa: F841  (the dict Keras makes anyway)

    n = 200_000
    copy_us = (min(timeit.repeat(copy, number=n, repeat=5))
               - min(timeit.repeat(bare, number=n, repeat=5))) / n * 1e6
    print()
    print(f"Live batch keys ({batches:,} batches per round, {rounds} rounds, simulated GPU; "
          f"medians):")
    print(f"  batch hooks with the keys    {with_keys:6.2f} us per batch")
    print(f"  batch hooks without them     {without:6.2f} us per batch "
          f"(log_metrics=False)")
    print(f"  difference                   {with_keys - without:+6.2f} us per batch")
    print(f"  the copy of the keys alone   {copy_us:6.2f} us per batch")


def gpm_sampler_cost(make_nvml: Callable[[], NVML], rounds: int = 3, seconds: float = 2.0,
                     interval_s: float = DEFAULT_INTERVAL_S) -> GpmCost:
    """Run the sampler for `seconds` with GPM and energy on, then off, `rounds` times (a fresh
    NVML session from `make_nvml` each time), and time its thread's CPU per tick."""
    cost = GpmCost()
    for _ in range(rounds):
        for gpm_on in (True, False):
            nvml = make_nvml()
            devices = nvml.devices()
            cost.gpus = len(devices)
            if not gpm_on:
                for device in devices:
                    nvml.switch_off("gpm", device.nvml_index)
                    nvml.switch_off("energy", device.nvml_index)
            seen: list[Reading] = []
            threads = ThreadCosts()
            with measure_threads(threads):
                sampler = Sampler(nvml, devices, seen.extend, interval_s)
                sampler.start()
                time.sleep(seconds)
                sampler.stop()
            nvml.shutdown()
            per_tick_us = 1e6 * threads.sampler_cpu_s / max(threads.sampler_ticks, 1)
            (cost.on_us if gpm_on else cost.off_us).append(per_tick_us)
            if gpm_on:
                cost.gpm_readings += sum(r.sm_active_pct is not None for r in seen)
    return cost


def print_gpm_cost(make_nvml: Callable[[], NVML], label: str) -> None:
    """One line: the sampler's CPU per tick with GPM and energy on and off, side by side."""
    cost = gpm_sampler_cost(make_nvml)
    on, off = statistics.median(cost.on_us), statistics.median(cost.off_us)
    ticks_per_s = 1 / DEFAULT_INTERVAL_S
    print(f"sampler reads with GPM and the energy counter ({label}, {cost.gpus} GPU(s), "
          f"{cost.gpm_readings} readings with SM activity): {on:.0f} µs CPU per tick "
          f"({on * ticks_per_s / 1e3:.2f} ms per second at {ticks_per_s:g} ticks/s); with both "
          f"switched off {off:.0f} µs ({off * ticks_per_s / 1e3:.2f} ms per second); medians of "
          f"{len(cost.on_us)} rounds, disk writes not included")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("ignore", GPUWatchWarning)  # "training runs on the CPU": known here
    has_tensorboard = importlib.util.find_spec("tensorboard") is not None
    has_prometheus = importlib.util.find_spec("prometheus_client") is not None
    scrapes = Scrapes(free_port()) if has_prometheus else None
    configs = configurations(has_tensorboard, scrapes)
    print("gpu-watch overhead benchmark: Keras fit with TensorFlow on the CPU")
    for line in machine_lines():
        print(line)
    print(f"{args.repeats} rounds; each round runs every row once, in rotated order")
    if not has_tensorboard:
        print('TensorBoard row skipped: tensorboard is not installed (pip install -e ".[bench]" '
              "or pip install tensorboard)")
    if not has_prometheus:
        print('Prometheus row skipped: prometheus-client is not installed (pip install -e '
              '".[prometheus]")')
    with tempfile.TemporaryDirectory(prefix="gpu-watch-bench-") as tmp:
        for key in args.models:
            benchmark(WORKLOADS[key](), configs, args, Path(tmp), scrapes)
        if args.live_batches:
            live_keys_cost(args.live_batches, Path(tmp))
        if args.fixed_repeats:
            fixed_cost(args.fixed_repeats, Path(tmp))
    print()
    print_gpm_cost(lambda: NVML(simulated_gpu()), "simulated H100")
    if NVML().available:
        print_gpm_cost(NVML, "this machine's NVML")
    return 0


if __name__ == "__main__":
    sys.exit(main())
