"""Does GPUWatch's "up to N x faster" hold once the problem is fixed? Seeded bottlenecks, each
trained twice with real Keras: once with the problem, once fixed.

For each input-bound case the table puts the bound GPUWatch predicted from the problem run
(its wall time over the wall time with the waiting removed, `gpu_watch.judging.impact`) beside the
speed-up measured when the fixed pipeline trained the same model for the same steps, and the
wall seconds it said the waiting cost beside the seconds the fix removed. The goal: the bound
within 15 % of the measured speed-up, and never below it by more than noise.

The cases:

- a Python generator that sleeps a share of each step (10 % to 80 %), against the same
  generator without the sleep;
- a `keras.utils.PyDataset` whose `__getitem__` sleeps, with `workers=0` against the workers
  the `input_bound` remedy names (threads: the cost is a wait, as reading files is);
- a `tf.data` pipeline whose `map` sleeps, without and with `num_parallel_calls` and
  `prefetch`;
- a 4-GPU machine where training uses one GPU: the idle GPU-seconds reported against those
  the simulated machine left idle.

No GPU here: what NVML would show comes from `gpu_watch.testing.FakeNVML`. Its GPU is busy
while the model computes and idle while the slow part of the pipeline runs on the training's
path (the problem runs are serial, so that is when the training waits), and a placement probe
reports the first step on the GPU, as on a machine where the framework trains there. The time
measures are real: Keras `fit`, the batch hooks and GPUWatch's sampler.

It runs on the torch backend (on the CPU), where Keras fetches every input on the training
thread, as it does on a GPU; TensorFlow's `fit` wraps a generator in a prefetching `tf.data`
pipeline, which already overlaps a cost under one step.

Usage:
    python benchmarks/impact_check.py            # about 10 minutes on 2 busy cores
    python benchmarks/impact_check.py --epoch-s 4 --cases generator,py_dataset
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pynvml  # noqa: E402

from gpu_watch import GPUWatch, GPUWatchWarning, load_run  # noqa: E402
from gpu_watch.judging.impact import input_bound_impact, run_impacts  # noqa: E402
from gpu_watch.judging.usage import usage_of_frames  # noqa: E402
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess  # noqa: E402
from gpu_watch.training import placement as placement_module  # noqa: E402
from gpu_watch.training.placement import Probe  # noqa: E402

BATCH = 256
FEATURES = 32
DEVICE_STEP_S = 0.3  # the simulated device's time per step: most of a step, as on a GPU
INTERVAL_S = 0.05  # 20 ticks a second: a wait share from hundreds of ticks per epoch
EPOCHS = 2
GOAL = 0.15


class OnGPU(Probe):
    """What a framework that trains on the visible GPUs reports after step 0."""

    def __init__(self, backend: str, gpus: int) -> None:
        super().__init__()
        self.backend = backend
        self.gpus = gpus

    def framework_gpus(self) -> list[str]:
        return [f"/physical_device:GPU:{i}" for i in range(self.gpus)]

    def cuda_build(self) -> bool:
        return True

    def after_first_step(self, model, logs):
        return self._report("variables", {"GPU": 2})


# Set while the simulated device computes a step: the fake GPU is busy then, idle otherwise.
DEVICE_BUSY = threading.Event()


def busy_while_computing(_t: float) -> float:
    return 95.0 if DEVICE_BUSY.is_set() else 0.0


def fake_machine(gpus: int = 1) -> FakeNVML:
    """One GPU that follows the training (busy while a step computes, idle otherwise) and
    `gpus - 1` more that nothing uses; with several, the first is busy throughout."""
    util = busy_while_computing if gpus == 1 else 95.0
    mine = FakeProcess(used_mib=4000, sm_util_pct=util)
    first = FakeGPU(util_pct=util, processes=[mine], power_w=lambda t: (
        400.0 if gpus > 1 or DEVICE_BUSY.is_set() else 90.0))
    # The fake's utilization is the state at the moment of the reading, not a period's mean:
    # its per-process samples would read only the busy moments (NVML has no sample of a
    # process that ran no kernels), so the device's figure, read at every tick, decides.
    first.fail("proc_util", pynvml.NVMLError_NotSupported)
    rest = [FakeGPU(util_pct=0.0, power_w=70.0) for _ in range(gpus - 1)]
    return FakeNVML([first, *rest])


def slow(seconds: float) -> None:
    """The costly part of a pipeline: a wait, as reading and decoding files is."""
    if seconds > 0:
        time.sleep(seconds)


class DeviceStep(keras.layers.Layer):
    """The step's work on the device: the host waits `seconds` for it in every forward pass,
    as it waits for a GPU, without taking CPU from the rest (this machine's cores are shared).
    The torch backend runs it eagerly, once per step."""

    def __init__(self, seconds: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seconds = seconds

    def call(self, x):
        DEVICE_BUSY.set()
        time.sleep(self.seconds)
        DEVICE_BUSY.clear()
        return x


def make_model() -> keras.Model:
    model = keras.Sequential([keras.Input((FEATURES,)), DeviceStep(DEVICE_STEP_S),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


RNG = np.random.default_rng(0)
X = RNG.random((BATCH, FEATURES), dtype=np.float32)
Y = RNG.random((BATCH, 1), dtype=np.float32)


def generator(sleep_s: float):
    while True:
        slow(sleep_s)
        yield X, Y


class SlowDataset(keras.utils.PyDataset):
    """A PyDataset whose `__getitem__` waits `sleep_s` for each batch."""

    def __init__(self, batches: int, sleep_s: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.batches, self.sleep_s = batches, sleep_s

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int):
        slow(self.sleep_s)
        return X, Y


def slow_tf_data(batches: int, sleep_s: float, fixed: bool):
    import tensorflow as tf

    def load(i):
        def work(_):
            slow(sleep_s)
            return X, Y
        x, y = tf.numpy_function(work, [i], (tf.float32, tf.float32))
        x.set_shape((BATCH, FEATURES))
        y.set_shape((BATCH, 1))
        return x, y

    dataset = tf.data.Dataset.range(batches).repeat()
    if fixed:
        return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return dataset.map(load)


@dataclass
class Fit:
    wall_s: float
    run: object


def fit(data, steps: int, log_dir: Path, name: str, gpus: int = 1) -> Fit:
    """One fit of a fresh model with GPUWatch on the simulated machine; its wall time and run."""
    placement_module.probe_for = lambda backend: OnGPU(backend, gpus)
    watch = GPUWatch(log_dir=log_dir, run_name=name, nvml=fake_machine(gpus), plot=False,
                     verbose=0, interval_s=INTERVAL_S, idle_patience_s=3600)
    model = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        start = time.perf_counter()
        if isinstance(data, keras.utils.PyDataset):
            model.fit(data, epochs=EPOCHS, verbose=0, callbacks=[watch])
        else:
            model.fit(data, steps_per_epoch=steps, epochs=EPOCHS, verbose=0, callbacks=[watch])
        wall = time.perf_counter() - start
    return Fit(wall, load_run(watch.run_dir))


def step_time(log_dir: Path) -> float:
    """The model's step time on this machine with data that costs nothing, seconds."""
    run = fit(generator(0.0), 30, log_dir, "calibrate").run
    ends = run.batches[run.batches["epoch"] == run.batches["epoch"].max()]["time_s"]
    return float(ends.diff().median())


@dataclass
class Row:
    case: str
    flagged: str
    wait_pct: float | None
    lost_s: float | None
    removed_s: float
    bound: float | None
    measured: float
    fixed_wait_pct: float | None = None

    @property
    def error(self) -> float | None:
        return None if self.bound is None else self.bound / self.measured - 1


def predicted(run) -> tuple[str, float | None, float | None]:
    """What GPUWatch says of a run: whether it flagged `input_bound`, and the wall seconds lost
    and the bound. Where it did not flag it, the figures its wait share implies."""
    causes = {c["code"]: c for c in run_impacts(run)}
    item = causes.get("input_bound")
    if item is not None:
        impact = item["impact"]
        return "input_bound", impact["wall_lost_s"], impact["speedup_bound_x"]
    usage = usage_of_frames(run.record, run.samples, run.batches)
    share = (run.record.wait or {}).get("fraction")
    if share is None:
        share = _recorded_wait_share(run)
    impact = input_bound_impact(run.record, usage, {"wait_fraction": share})
    return f"no ({run.verdict})", impact.wall_lost_s, impact.speedup_bound_x


def compare(case: str, problem: Fit, fixed: Fit) -> Row:
    """The bound GPUWatch predicted from the problem run beside the measured speed-up, and the
    wait GPUWatch still sees in the fixed run."""
    flagged, lost, bound = predicted(problem.run)
    _, fixed_lost, _ = predicted(fixed.run)
    wall = float(problem.run.record.duration_s)
    fixed_wall = float(fixed.run.record.duration_s)
    wait = None if lost is None else 100 * lost / wall
    fixed_wait = None if fixed_lost is None else 100 * fixed_lost / fixed_wall
    return Row(case, flagged, wait, lost, wall - fixed_wall, bound, wall / fixed_wall,
               fixed_wait)


def _recorded_wait_share(run) -> float | None:
    """The run's wait share where `run.json` does not record it: the loop's time-weighted mean
    of the epochs' shares (`epochs.csv`)."""
    epochs = run.epochs
    if "wait_fraction" not in epochs or epochs["wait_fraction"].isna().all():
        return None
    known = epochs.dropna(subset=["wait_fraction"])
    weights = known["duration_s"].astype(float)
    return float((known["wait_fraction"] * weights).sum() / weights.sum())


def median_row(rows: list[Row]) -> Row:
    """The median of each figure over the repeats of one case."""
    def med(values):
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    flags = sorted({r.flagged for r in rows})
    return Row(rows[0].case, " / ".join(flags), med([r.wait_pct for r in rows]),
               med([r.lost_s for r in rows]), med([r.removed_s for r in rows]),
               med([r.bound for r in rows]), med([r.measured for r in rows]),
               med([r.fixed_wait_pct for r in rows]))


def run_cases(cases: list[str], epoch_s: float, shares: list[float], repeats: int) -> list[Row]:
    """Each case's problem run and fixed run, interleaved, `repeats` times; the medians."""
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        step_s = step_time(logs)
        print(f"step time with free data: {1000 * step_s:.1f} ms", flush=True)

        def steps_for(sleep_s: float) -> int:
            return max(10, int(epoch_s / (step_s + sleep_s)))

        # name -> (steps, the problem's data, the fixed data), each a function of the steps
        plans: dict[str, tuple[int, Callable, Callable]] = {}
        if "generator" in cases:
            for share in shares:
                sleep_s = step_s * share / (1 - share)
                plans[f"generator sleeping {share:.0%} of each step"] = (
                    steps_for(sleep_s), lambda n, s=sleep_s: generator(s),
                    lambda n: generator(0.0))
        if "py_dataset" in cases:
            sleep_s = 2 * step_s
            plans["PyDataset, workers=0 vs the remedy's"] = (
                steps_for(sleep_s),
                lambda n, s=sleep_s: SlowDataset(n, s, workers=0, use_multiprocessing=False),
                "remedy")
        if "tf_data" in cases:
            sleep_s = 1.5 * step_s
            plans["tf.data slow map vs num_parallel_calls + prefetch"] = (
                steps_for(sleep_s), lambda n, s=sleep_s: slow_tf_data(n, s, False),
                lambda n, s=sleep_s: slow_tf_data(n, s, True))
        rows: dict[str, list[Row]] = {name: [] for name in plans}
        for repeat in range(repeats):
            for number, (name, (steps, problem_data, fixed_data)) in enumerate(plans.items()):
                tag = f"{number}-{repeat}"
                problem = fit(problem_data(steps), steps, logs, f"problem-{tag}")
                if fixed_data == "remedy":  # the PyDataset's workers, as the remedy names them
                    workers = _remedy_workers(problem.run)
                    name_fixed = name.replace("the remedy's", str(workers))
                    remedied = SlowDataset(steps, 2 * step_s, workers=workers,
                                           use_multiprocessing=False, max_queue_size=2 * workers)
                    row = compare(name_fixed, problem, fit(remedied, steps, logs,
                                                           f"fixed-{tag}"))
                else:
                    row = compare(name, problem, fit(fixed_data(steps), steps, logs,
                                                     f"fixed-{tag}"))
                rows[name].append(row)
                print(row, flush=True)
        if "multi_gpu" in cases:
            print_multi_gpu(logs, steps_for(0.0))
    return [median_row(found) for found in rows.values() if found]


def _remedy_workers(run) -> int:
    """The workers the `input_bound` remedy names for this run's PyDataset (8 by default)."""
    import re

    for item in run.causes:
        match = re.search(r"workers=(\d+)", item.get("remedy") or "")
        if item.get("code") == "input_bound" and match:
            return int(match.group(1))
    return 8


def print_multi_gpu(logs: Path, steps: int) -> None:
    """Four GPUs, training on one: the idle GPU-seconds reported against the truth, which is
    three GPUs idle for the whole run after step 0."""
    run = fit(generator(0.0), steps, logs, "four-gpus", gpus=4).run
    causes = {c["code"]: c for c in run_impacts(run)}
    item = causes.get("process_not_on_gpu")
    first_step_end = float(run.batches["time_s"].iloc[0])
    truth = 3 * (float(run.record.duration_s) - first_step_end)
    print(f"\n4 GPUs, training on GPU 0 (verdict {run.verdict}):")
    if item is None:
        print("  process_not_on_gpu not flagged: causes", list(causes))
        return
    impact = item["impact"]
    print(f"  idle GPU-seconds reported {impact['gpu_idle_s']:.1f}, the machine's "
          f"{truth:.1f} ({impact['gpu_idle_s'] / truth - 1:+.1%}); energy "
          f"{impact['energy_lost_j']:.0f} J ({impact['energy_method']}); bound "
          f"{impact['speedup_bound_x']:.2f}x with all four GPUs")


def print_table(rows: list[Row]) -> None:
    print("\n| case | flagged | wait (GPUWatch) | wall lost, reported | wall removed by the "
          "fix | bound predicted | speed-up measured | bound / measured | wait seen after "
          "the fix |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        wait = "n/a" if r.wait_pct is None else f"{r.wait_pct:.0f} %"
        lost = "n/a" if r.lost_s is None else f"{r.lost_s:.1f} s"
        bound = "n/a" if r.bound is None else f"{r.bound:.2f}x"
        error = "n/a" if r.error is None else f"{r.error:+.1%}"
        after = "n/a" if r.fixed_wait_pct is None else f"{r.fixed_wait_pct:.0f} %"
        print(f"| {r.case} | {r.flagged} | {wait} | {lost} | {r.removed_s:.1f} s | {bound} | "
              f"{r.measured:.2f}x | {error} | {after} |")
    within = [r for r in rows if r.error is not None and abs(r.error) <= GOAL]
    print(f"\n{len(within)} of {len(rows)} within {GOAL:.0%} of the measured speed-up")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epoch-s", type=float, default=6.0,
                        help="seconds per epoch of a problem run (default 6)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each case, problem and fix interleaved (default 3)")
    parser.add_argument("--cases", default="generator,py_dataset,tf_data,multi_gpu")
    parser.add_argument("--shares", default="0.1,0.3,0.6,0.8",
                        help="the generator's sleep shares of a step")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    shares = [float(s) for s in args.shares.split(",") if s]
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    rows = run_cases(cases, args.epoch_s, shares, args.repeats)
    if rows:
        print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
