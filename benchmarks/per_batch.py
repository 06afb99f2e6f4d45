"""What GPUWatch adds to each batch, through Keras: the batch hooks of a `CallbackList`, called as
`fit` calls them, with no callback, a no-op callback that has both batch hooks, and GPUWatch
(on a simulated GPU) with its loop clock attached as `fit` attaches it (the callback list's
hooks wrapped, the steps timed on the calling thread) and without it (its own hooks only).

The configurations are interleaved, round after round and in rotated order, so that drift in the
machine's speed hits them alike; each figure is the median over the rounds of microseconds per
batch, and each difference the median (with its quartiles) of the differences within each round.
The target (docs/performance.md): GPUWatch at most 5 µs above the no-op callback. GPUWatch is
`async_safe`, so it is also set beside a no-op callback that is: on JAX, Keras runs the end
hooks of such callbacks on its thread pool, a cost of Keras' own that a callback that is not
async-safe avoids only by making Keras wait for each step's logs (a sync with the device).

With `--fit`, the same callbacks train a tiny MLP for real (a step of a fraction of a
millisecond, the worst case for a per-step cost), interleaved round after round; each figure is
the median over the rounds of a steady-state epoch's time per step. On JAX this includes the
loop clock's timing of each step from the device's side, which a `CallbackList` driven alone
does not exercise.

With `--fit --where`, one fit with GPUWatch, each of GPUWatch's functions on the per-step path
(on the training thread, Keras' pool and the sampler thread) timed as it runs, inclusive of the
functions it calls, in microseconds per step of the timed epochs: where a step's cost goes. Each
timed call adds about 0.3 µs of its own.

Usage:
    python benchmarks/per_batch.py                 # TensorFlow
    KERAS_BACKEND=jax python benchmarks/per_batch.py              # 15 rounds of 10,000 batches
    KERAS_BACKEND=jax python benchmarks/per_batch.py --fit --rounds 9
    KERAS_BACKEND=jax python benchmarks/per_batch.py --fit --where
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import statistics
import tempfile
import threading
import time
import warnings
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

from gpu_watch import GPUWatch  # noqa: E402
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess  # noqa: E402
from gpu_watch.training import keras_internals  # noqa: E402


class NoOp(keras.callbacks.Callback):
    """Has both batch hooks and does nothing: the floor of any per-batch callback."""

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass


class AsyncNoOp(NoOp):
    """The same, safe to run on Keras' thread pool (`async_safe`), as GPUWatch is: on JAX,
    Keras then hands the end hooks to its pool instead of waiting for each step's logs, and
    this pool is what every async-safe callback pays for, whatever it does."""

    def __init__(self):
        super().__init__()
        self.async_safe = True


def watching(log_dir: str) -> GPUWatch:
    """GPUWatch on a simulated GPU this process keeps busy, with no figures drawn."""
    gpu = FakeGPU(util_pct=50, processes=[FakeProcess(used_mib=100)])
    return GPUWatch(nvml=FakeNVML([gpu]), plot=False, verbose=0, log_dir=log_dir)


class _Frame:
    """Stands for fit's frame: the callback list is what the loop clock wraps."""

    def __init__(self, callbacks):
        self.f_locals = {"callbacks": callbacks}


def per_batch_us(callbacks: list, model: keras.Model, batches: int, clock: bool) -> float:
    listed = keras.callbacks.CallbackList(callbacks, model=model, add_history=False,
                                          add_progbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        listed.on_train_begin()
        attachment = keras_internals.Attachment()
        if clock:
            watch = callbacks[0]
            keras_internals.attach_loop_clock(_Frame(listed), watch.monitor.loop_clock,
                                              attachment, skip=watch)
        listed.on_epoch_begin(0)
        logs = {"loss": 1.0}
        listed.on_train_batch_begin(0)  # step 0: the placement check, timed apart
        listed.on_train_batch_end(0, logs)
        start = time.perf_counter()
        for batch in range(1, batches):
            listed.on_train_batch_begin(batch)
            listed.on_train_batch_end(batch, logs)
        seconds = time.perf_counter() - start
        listed.on_epoch_end(0, {})
        listed.on_train_end()
        attachment.detach()
    return seconds / (batches - 1) * 1e6


class EpochClock(keras.callbacks.Callback):
    """The last epoch's wall time, by this script. Async-safe (it has no batch hooks), so that
    on JAX Keras need not wait for each step's logs on its account."""

    def __init__(self):
        super().__init__()
        self.async_safe = True

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def fit_step_us(callbacks: list, steps: int) -> float:
    """A tiny MLP fitted for three epochs of `steps` steps: the last epoch's microseconds a
    step (the first compiles)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((steps * 128, 32), dtype=np.float32)
    y = rng.random((steps * 128, 1), dtype=np.float32)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    clock = EpochClock()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, batch_size=128, epochs=3, verbose=0, callbacks=[*callbacks, clock])
    return clock.seconds / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--fit", action="store_true", help="time real fits of a tiny MLP")
    parser.add_argument("--steps", type=int, default=1000, help="steps an epoch with --fit")
    parser.add_argument("--where", action="store_true",
                        help="with --fit: time GPUWatch's functions inside one fit")
    args = parser.parse_args()
    if args.fit and args.where:
        main_where(args)
        return
    if args.fit:
        main_fit(args)
        return
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with tempfile.TemporaryDirectory() as log_dir:
        configs = {
            "no callback": (lambda: [], False),
            "no-op per-batch callback": (lambda: [NoOp()], False),
            "async-safe no-op per-batch callback": (lambda: [AsyncNoOp()], False),
            "GPUWatch, its own hooks only": (lambda: [watching(log_dir)], False),
            "GPUWatch, loop clock attached (as in fit)": (lambda: [watching(log_dir)], True),
        }
        times: dict[str, list[float]] = {name: [] for name in configs}
        names = list(configs)
        for round_ in range(args.rounds):
            for i in range(len(names)):  # rotated each round: no configuration always first
                name = names[(i + round_) % len(names)]
                make, clock = configs[name]
                times[name].append(per_batch_us(make(), model, args.batches, clock))
    noop = times["no-op per-batch callback"]
    async_noop = times["async-safe no-op per-batch callback"]
    print(f"Keras {keras.__version__} on {keras.backend.backend()}: microseconds per batch "
          f"through a CallbackList (median of {args.rounds} rounds of {args.batches} batches; "
          "the differences are paired within each round, median [quartiles])")
    print(f"  {'':<44} {'':>7}   {'vs no-op':>20}   {'vs async-safe no-op':>20}")
    for name, values in times.items():
        print(f"  {name:<44} {statistics.median(values):7.2f}   {paired(values, noop):>20}   "
              f"{paired(values, async_noop):>20}")


def paired(values: list[float], base: list[float]) -> str:
    """The median and quartiles of the per-round differences: the machine's drift between
    rounds (large on a shared VM, and larger through Keras' thread pool) cancels out."""
    differences = sorted(v - b for v, b in zip(values, base, strict=True))
    if len(differences) < 2:
        return f"{differences[0]:+.2f}"
    low, _, high = statistics.quantiles(differences, n=4)
    return f"{statistics.median(differences):+.2f} [{low:+.1f}, {high:+.1f}]"


def main_fit(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as log_dir:
        configs = {
            "async-safe no-op per-batch callback": lambda: [AsyncNoOp()],
            "GPUWatch": lambda: [watching(log_dir)],
        }
        times: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(args.rounds):
            for name, make in configs.items():
                times[name].append(fit_step_us(make(), args.steps))
    base = statistics.median(times["async-safe no-op per-batch callback"])
    print(f"Keras {keras.__version__} on {keras.backend.backend()}: microseconds per step of a "
          f"tiny MLP's fit, steady-state epoch of {args.steps} steps (median of {args.rounds} "
          "rounds)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<44} {median:8.1f}   {median - base:+7.1f}   "
              f"{median / base:6.3f}x")


def _timed_parts() -> list[tuple[Any, str]]:
    """GPUWatch's functions on the per-step path, by owner."""
    from gpu_watch.judging.timeline import Timeline
    from gpu_watch.judging.usage import UsageMeter
    from gpu_watch.runlog import CsvTable
    from gpu_watch.sensing.loop_clock import LoopClock
    from gpu_watch.training.monitor import Monitor

    return [
        (LoopClock, "end"), (LoopClock, "_look"), (LoopClock, "_drain"),
        (LoopClock, "_device_step"), (LoopClock, "fetch_begins"), (LoopClock, "fetched"),
        (LoopClock, "begin"), (LoopClock, "hook_begins"), (Timeline, "add_steps"),
        (Monitor, "batch_begin"), (Monitor, "batch_end"), (Monitor, "_on_tick"),
        (Monitor, "flush"), (Timeline, "drain"), (CsvTable, "append"),
        (UsageMeter, "add_batches"),
    ]


def main_where(args: argparse.Namespace) -> None:
    spent: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    threads: dict[str, set[str]] = collections.defaultdict(set)
    timing = {"on": False}
    originals = []

    def timed(owner: Any, name: str) -> None:
        function = getattr(owner, name)
        key = f"{owner.__name__}.{name}"

        @functools.wraps(function)
        def wrapper(*a, **k):
            if not timing["on"]:
                return function(*a, **k)
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                spent[key] += time.perf_counter() - start
                calls[key] += 1
                threads[key].add("training" if threading.current_thread() is
                                 threading.main_thread() else threading.current_thread().name)

        originals.append((owner, name, function))
        setattr(owner, name, wrapper)

    class Timing(keras.callbacks.Callback):
        """Times from the second epoch's begin (the first compiles) to the fit's end."""

        def __init__(self):
            super().__init__()
            self.async_safe = True

        def on_epoch_begin(self, epoch, logs=None):
            timing["on"] = timing["on"] or epoch >= 1

    for owner, name in _timed_parts():
        timed(owner, name)
    try:
        with tempfile.TemporaryDirectory() as log_dir:
            step_us = fit_step_us([Timing(), watching(log_dir)], args.steps)
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)
    steps = 2 * args.steps
    print(f"Keras {keras.__version__} on {keras.backend.backend()}: a tiny MLP's fit with "
          f"GPUWatch, {step_us:.1f} µs a step in its last epoch; GPUWatch's functions from "
          f"epoch 1 on, inclusive, µs a step over {steps} steps")
    for key, seconds in spent.most_common():
        print(f"  {key:<26} {seconds / steps * 1e6:7.1f}   {calls[key]:7d} calls   "
              f"{', '.join(sorted(threads[key]))}")


if __name__ == "__main__":
    main()
