"""How close gpu-watch's wait for data comes to the truth, per backend and input pipeline.

For each Keras backend (TensorFlow, JAX, torch; one child process each, as Keras picks its
backend once) and each input (in-memory arrays, a `tf.data` pipeline with a slow `map`, a
Python generator, a `keras.utils.PyDataset` with `workers=0` and with 4 worker threads, a torch
`DataLoader`), one small model is fitted with GPUWatch for 22 epochs of about 1 s (42 on torch,
see below), some of them
with a known sleep in the making of each batch (`PLAN`): each epoch that sleeps sits between two
that do not, and each sleep comes five times. The true wait is what the sleep cost: (the epoch's
loop - the mean of its two neighbours') / the epoch's loop, per epoch (timed by a callback of
this script's own, not by gpu-watch) and over the epochs of one sleep (the run). An epoch's loop
is its wall time less its setup, from its begin hooks to its first batch's, where Keras' `fit`
starts a pass over the input and ends the last (a tf.data iterator's end waits for its threads,
0-0.6 s at random): gpu-watch leaves that setup out of the loop too.
A new epoch ends the sleeps the last one began, so an epoch set to sleep nowhere does not
wait for one (a producer on a thread of its own runs ahead into it). The sleep is set from the
step time of an epoch without it, to aim at about 30 % and 80 % of
the epoch; what it really cost is measured, not assumed (a pipeline that runs ahead of the step
hides part of it). Neighbouring epochs of one fit share the model, its compiled step and the
machine's state of the moment. Beside it, the share gpu-watch reported per epoch
(`epochs.csv` `wait_fraction`) and over the same epochs (their data wait over their loop).

On torch the training thread makes each batch in order with the step, so making the batches is
a wait even where nothing sleeps. There each epoch, with a sleep or without, sits between two
epochs whose batches come free (the first batch the input made, handed over again;
`TORCH_PLAN`, 42 epochs), and its truth is what the making of its batches and its sleep cost
together: 1 - (the mean of its free neighbours' loops) / its own. Pulls timed alone, with no
step between them, cost half or less of what they cost between steps on this machine (the
step's threads, tf.data's and Python's lock share its cores), too little for a truth.

A slow callback (arrays, a callback sleeping in each batch's end hook) adds no wait: its time is
the loop's time spent elsewhere, reported as `other_fraction`, beside the true share of the time
it cost (against neighbours that pulled their batches); its epochs' true wait is 0 (on torch,
the wait reported in those neighbours, which pull the same batches with no callback: the
callback must add none).

With `--producer work` each batch's making keeps the CPU busy in Python for that time instead of
sleeping (a producer that decodes or augments, not one that waits for a disk): its thread holds
Python's lock and a core, which the step may need.

Epoch 0 is left out (it compiles). The target: the median epoch's reported share within 0.10 of
the median epoch's truth, and the run's of the run's, and no epoch's wait above 0.05 where the
truth is 0 by construction (no sleep in the data on TensorFlow and JAX, a slow callback; on
torch, no more than that above the wait of its neighbours without the callback).

Usage:
    python benchmarks/wait_accuracy.py               # every backend installed, a table
    python benchmarks/wait_accuracy.py --busy        # the same, with one core kept busy
    python benchmarks/wait_accuracy.py --producer work  # batches made by busy Python, no sleep
    python benchmarks/wait_accuracy.py --backends jax --inputs arrays generator
    python benchmarks/wait_accuracy.py --markdown    # also the table as docs/judging.md has it
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("tensorflow", "jax", "torch")
INPUTS = ("arrays", "tf_data", "generator", "py_dataset_0", "py_dataset_4", "torch_dataloader")
SHARES = (0.0, 0.3, 0.8)
PRODUCERS = ("sleep", "work")
# Each fit's epochs, by the share of its time each aims to sleep: epoch 0 compiles, epoch 1 times
# the step (the sleeps are set from it), and each epoch that sleeps sits between two that do not,
# the truth's reference, on the same model and machine a second away. Each sleep comes
# `REPEATS` times: an epoch of this shared VM runs up to half again as long as the one before
# for reasons of its own (seen without gpu-watch too), so one epoch's truth is noise within
# about 0.25; the median of five is not.
REPEATS = 5
PLAN = (0.0, 0.0) + (0.3, 0.0, 0.8, 0.0) * REPEATS
# On torch the training thread makes each batch in order with the step, so making the batches
# is a wait even where nothing sleeps, and the truth's reference is an epoch whose batches come
# free (`FREE`: the first batch the input made, handed over again): each epoch that sleeps, and
# each that does not, sits between two of them. Pulls timed alone, with no step between them,
# cost half or less of what they cost between steps on this VM, too little for a reference.
FREE = "free"
TORCH_PLAN = (0.0, FREE) + (0.3, FREE, 0.0, FREE, 0.8, FREE, 0.0, FREE) * REPEATS
BATCH, FEATURES = 128, 64
EPOCH_S = 1.0  # the fit without a sleep: about this long an epoch (the batches are counted so)
MIN_BATCHES, MAX_BATCHES = 40, 1000
TOLERANCE = 0.10
ZERO_TOLERANCE = 0.05


# -- the child: one backend -------------------------------------------------------------------


def _child(backend: str, inputs: list[str], log_dir: str, busy: bool = False,
           producer: str = "sleep") -> list[dict]:

    import keras
    import numpy as np

    if busy and backend == "torch":
        # torch's intra-op threads, one per core by default, fight the busy loop: each op waits
        # at a barrier for the thread that shares its core, and an epoch without any sleep took
        # 11-15 s against 1.6 s quiet. As PyTorch advises on a shared machine, one thread per
        # core left free.
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))

    from gpu_watch import GPUWatch, load_run

    rng = np.random.default_rng(0)
    x = rng.random((MAX_BATCHES * BATCH, FEATURES), dtype=np.float32)
    y = rng.random((MAX_BATCHES * BATCH, 1), dtype=np.float32)
    batches = MIN_BATCHES
    # What the epoch running now sleeps: in the making of each batch, or in a callback's end
    # hook after each batch. `Schedule` sets it as each epoch begins, before its first batch is
    # asked for.
    knob = {"sleep": 0.0, "callback": 0.0}
    # A new epoch ends the naps the last one began: a producer running ahead on a thread of its
    # own (tf.data's, a PyDataset's workers) would otherwise carry the last epoch's sleep into
    # the first batches of one that sleeps nowhere, whose true wait is taken to be 0.
    epoch_begun = threading.Condition()
    epoch_count = [0]
    # When the training thread first asked for a batch in the epoch running now (torch's epoch
    # iterator pulls each batch before the begin hooks): where the epoch's setup ends, if that
    # comes before its first batch's begin hooks.
    first_pull: list[float] = []
    # Whether the epoch running now gets its batches free (`FREE`, torch), and the batch it
    # gets.
    free, made = [False], []

    class Switch:
        """What torch's epoch iterator iterates: the input's batches, or, in a free epoch, the
        first one the input made, at the cost of a generator's step."""

        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            batches_ = iter(self.loader)
            while True:
                if not first_pull:
                    first_pull.append(time.perf_counter())
                if free[0] and made:
                    yield made[0]
                    continue
                try:
                    batch = next(batches_)
                except StopIteration:
                    return
                if not made:
                    made.append(batch)
                yield batch

    class Schedule(keras.callbacks.Callback):
        """Sets each epoch's sleep by its plan (aimed by the step time of epoch 1, which sleeps
        nowhere), and times each epoch: the ground truth's clock, this script's own."""

        def __init__(self, what: str, plan: tuple):
            super().__init__()
            self.what = what
            self.plan = plan
            self.seconds: list[float] = []
            # Each epoch's setup: from its begin to its first batch's begin hooks, or to the
            # first pull of a batch on the training thread if that came first.
            self.starts: list[float] = []
            self.slept: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            share = self.plan[epoch]
            free[0] = share == FREE
            share = 0.0 if free[0] else share
            step_s = self.seconds[1] / batches if len(self.seconds) > 1 else 0.0
            knob[self.what] = step_s * share / (1 - share)
            self.slept.append(knob[self.what])
            with epoch_begun:
                epoch_count[0] += 1
                epoch_begun.notify_all()
            first_pull.clear()
            self._start = time.perf_counter()
            self._first = True

        def on_train_batch_begin(self, batch, logs=None):
            if self._first:
                end = min([time.perf_counter(), *first_pull])
                self.starts.append(end - self._start)
                self._first = False

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    class SlowCallback(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if knob["callback"]:
                time.sleep(knob["callback"])

    def nap() -> None:
        if not first_pull and threading.current_thread() is threading.main_thread():
            first_pull.append(time.perf_counter())
        epoch = epoch_count[0]  # before the sleep: an epoch sets its sleep, then counts itself
        seconds = knob["sleep"]
        if not seconds:
            return
        if producer == "sleep":
            with epoch_begun:
                epoch_begun.wait_for(lambda: epoch_count[0] != epoch, timeout=seconds)
            return
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and epoch_count[0] == epoch:  # Python at work
            pass

    def batch_of(i):
        return x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]

    def source(kind: str):
        if kind == "arrays":
            return {"x": x[:batches * BATCH], "y": y[:batches * BATCH], "batch_size": BATCH}
        if kind == "tf_data":
            import tensorflow as tf

            def slow(a, b):
                def napped(a, b):
                    nap()
                    return a, b
                a, b = tf.numpy_function(napped, [a, b], (tf.float32, tf.float32))
                a.set_shape((None, FEATURES))
                b.set_shape((None, 1))
                return a, b

            # One pass for the whole fit: the end of a pass of tf.data's iterator takes 0-0.6 s
            # at random on this VM, timed as a wait where JAX's fit pays for it (as the next
            # epoch starts), and noise to a truth made of neighbouring epochs.
            dataset = tf.data.Dataset.from_tensor_slices(
                (x[:batches * BATCH], y[:batches * BATCH])).batch(BATCH)
            return {"x": dataset.map(slow).repeat(), "steps_per_epoch": batches}
        if kind == "generator":
            def generator():
                while True:
                    for i in range(batches):
                        nap()
                        yield batch_of(i)
            return {"x": generator(), "steps_per_epoch": batches}
        if kind.startswith("py_dataset"):
            workers = int(kind.rsplit("_", 1)[1])

            class Batches(keras.utils.PyDataset):
                def __len__(self):
                    return batches

                def __getitem__(self, i):
                    nap()
                    return batch_of(i)

            return {"x": Batches(workers=workers, use_multiprocessing=False)}
        if kind == "torch_dataloader":
            import torch

            class Batches(torch.utils.data.Dataset):
                def __len__(self):
                    return batches

                def __getitem__(self, i):
                    nap()
                    a, b = batch_of(i)
                    return torch.from_numpy(a), torch.from_numpy(b)

            return {"x": torch.utils.data.DataLoader(Batches(), batch_size=None)}
        raise ValueError(kind)

    def fit(kind: str, plan: tuple, what: str = "sleep") -> dict:
        model = keras.Sequential([keras.Input((FEATURES,)),
                                  keras.layers.Dense(512, activation="relu"),
                                  keras.layers.Dense(512, activation="relu"),
                                  keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        schedule = Schedule(what, plan)
        watch = GPUWatch(log_dir=log_dir, plot=False, verbose=0)
        callbacks = [watch, schedule] + ([SlowCallback()] if what == "callback" else [])
        made.clear()
        if FREE in plan:
            from keras.src.backend.torch.trainer import TorchEpochIterator

            make = TorchEpochIterator._get_iterator
            TorchEpochIterator._get_iterator = lambda self: Switch(make(self))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(**source(kind), epochs=len(plan), verbose=0, callbacks=callbacks)
        finally:
            if FREE in plan:
                TorchEpochIterator._get_iterator = make
        knob.update(sleep=0.0, callback=0.0)
        free[0] = False
        epochs = load_run(watch.run_dir).epochs
        return {"seconds": schedule.seconds, "starts": schedule.starts, "slept": schedule.slept,
                "wait": [None if v != v else float(v) for v in epochs["wait_fraction"]],
                "other": [None if v != v else float(v) for v in epochs["other_fraction"]],
                "measure": next((m for m in epochs["wait_measure"] if isinstance(m, str)), None),
                "wait_s": [float(v) if v == v else 0.0 for v in epochs["data_wait_s"]],
                "other_s": [float(v) if v == v else 0.0 for v in epochs["other_s"]],
                "loop_s": [float(c) + float(w if w == w else 0) + float(o) for c, w, o in
                           zip(epochs["compute_s"], epochs["data_wait_s"], epochs["other_s"],
                               strict=True)]}

    def compare(kind: str, target: float, run: dict, figure: str, plan: tuple) -> dict:
        """The row of the epochs after epoch 1 that slept `target` of their time, each beside
        the mean of the two epochs around it: on torch's plan epochs whose batches came free
        (what the epoch would take with batches that cost nothing to make, so its truth counts
        their making as well as the sleep), elsewhere epochs that slept nowhere (the row of
        `target` 0 is then 0 by construction). A slow callback's row compares with epochs
        that slept nowhere (its truth is the callback's cost), and its epochs' true wait is 0,
        on torch the wait reported in those neighbours, which pull the same batches with no
        callback (`neighbour_wait`; the arrays' own wait is checked against free epochs in their
        row, a truth too noisy for a bound of 0.05). Each epoch is its loop: its wall time less
        its setup (`starts`)."""
        loops = [s - start for s, start in zip(run["seconds"], run["starts"], strict=True)]
        chosen = [e for e, share in enumerate(plan) if share == target and e > 1]
        if target or FREE in plan:
            free_ = [(loops[e - 1] + loops[e + 1]) / 2 for e in chosen]
        else:
            free_ = [loops[e] for e in chosen]
        truth = [max(0.0, 1 - f / loops[e]) for f, e in zip(free_, chosen, strict=True)]
        neighbour_wait = None
        if figure == "other" and backend == "torch":
            neighbour_wait = [(run["wait_s"][e - 1] + run["wait_s"][e + 1]) / 2 / run["loop_s"][e]
                           for e in chosen]
        loop = sum(run["loop_s"][e] for e in chosen)
        waited = sum(run["wait_s" if figure == "wait" else "other_s"][e] for e in chosen)
        return {"backend": backend, "input": kind, "target": target, "figure": figure,
                "batches": batches, "epochs": chosen, "slept": [run["slept"][e] for e in chosen],
                "other": [run["other"][e] for e in chosen], "measure": run["measure"],
                "truth": truth, "reported": [run[figure][e] for e in chosen],
                "reference": "free" if FREE in plan else "slept nowhere",
                "neighbour_wait": neighbour_wait,
                "run_truth": max(0.0, 1 - sum(free_) / sum(loops[e] for e in chosen)),
                "run_reported": waited / loop if loop else None,
                "data_wait": [run["wait"][e] for e in chosen], "seconds": run["seconds"],
                "starts": run["starts"]}

    rows = []
    warm = fit("arrays", (0.0, 0.0, 0.0))  # warm up (imports, the first compile), count batches
    rows.append({"backend": backend, "costs": _probe_costs()})
    batches = int(min(MAX_BATCHES, max(MIN_BATCHES, MIN_BATCHES * EPOCH_S / warm["seconds"][-1])))
    plan = TORCH_PLAN if backend == "torch" else PLAN
    for kind in inputs:
        if kind != "arrays":
            run = fit(kind, plan)
            rows.extend(compare(kind, share, run, "wait", plan) for share in SHARES)
            continue
        run = fit(kind, PLAN, "callback")
        # The arrays' own wait; on torch, what making their batches costs, with free epochs.
        rows.append(compare(kind, 0.0, fit(kind, plan) if FREE in plan else run, "wait", plan))
        rows.extend(compare("slow_callback", share, run, "other", PLAN) for share in SHARES[1:])
    return rows


def _probe_costs(n: int = 200_000, looks: int = 2_000) -> dict[str, float]:
    """What the probes cost: a timed fetch per batch beside a plain `next`, a batch stamped as
    it leaves a Python source behind tf.data beside a plain call (microseconds), and one look
    at the threads' stacks (microseconds; the stack sampler takes 100 a second),
    with this process's threads (the framework's among them) as they are."""
    import statistics
    import threading

    from gpu_watch.sensing.loop_clock import STACK_HZ, LoopClock
    from gpu_watch.training import keras_internals

    data = list(range(n))

    def plain() -> float:
        start, iterator = time.perf_counter(), iter(data)
        for _ in range(n):
            next(iterator)
        return time.perf_counter() - start

    def timed() -> float:
        clock = LoopClock(time.perf_counter, 0.0, lambda steps: None)
        start, iterator = time.perf_counter(), iter(keras_internals._TimedSource(data, clock))
        for i in range(n):
            next(iterator)
            if i % 64 == 0:
                clock._fetches.clear()  # as each step's end does
        return time.perf_counter() - start

    def call(*batch):
        return batch

    def calls(function) -> float:
        start = time.perf_counter()
        for i in range(n):
            function(i)
        return time.perf_counter() - start

    def stamped() -> float:
        clock = LoopClock(time.perf_counter, 0.0, lambda steps: None)
        wrapped = keras_internals._ready_timed_call(call, clock)
        start = time.perf_counter()
        for i in range(n):
            wrapped(i)
            if i % 64 == 0:
                clock._ready.clear()  # as the steps that take the batches do
        return time.perf_counter() - start

    fetch_us = (statistics.median(timed() for _ in range(5))
                - statistics.median(plain() for _ in range(5))) / n * 1e6
    ready_us = (statistics.median(stamped() for _ in range(5))
                - statistics.median(calls(call) for _ in range(5))) / n * 1e6
    ident = threading.get_ident()
    start = time.perf_counter()
    for _ in range(looks):
        keras_internals.data_tick(ident)
    look_us = (time.perf_counter() - start) / looks * 1e6
    return {"fetch_us": fetch_us, "ready_us": ready_us, "look_us": look_us,
            "sampler_core_pct": look_us * STACK_HZ / 1e4}


# -- the parent: every backend, one after the other ---------------------------------------------


def _busy() -> None:
    while True:
        pass


def _median(values: list) -> float | None:
    import statistics

    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _wait_truth(row: dict) -> list[float]:
    """A slow callback's epochs' true wait: 0, and on torch the wait its neighbours reported,
    which pull the same batches with no callback (`neighbour_wait`, a share of each epoch's
    loop)."""
    return row.get("neighbour_wait") or [0.0] * len(row["epochs"])


def _judge(row: dict, run: bool = False) -> str:
    """Where the truth is 0 by construction (no sleep in the data, or a slow callback), every
    epoch's reported wait and the run's (a slow callback's, above what making torch's batches
    takes); elsewhere the median epoch's reported share beside the median epoch's truth, or,
    with `run`, the run's beside the run's."""
    if row["figure"] == "other":
        waits = row["data_wait"]
        if any(w is None for w in waits):
            return "n/a"
        return "ok" if all(w <= t + ZERO_TOLERANCE
                           for w, t in zip(waits, _wait_truth(row), strict=True)) else "FAIL"
    if row["target"] == 0.0 and row.get("reference") != "free":  # 0 by construction
        reported = row["reported"] + [row["run_reported"]]
        if any(r is None for r in reported):
            return "n/a"
        return "ok" if all(r <= ZERO_TOLERANCE for r in reported) else "FAIL"
    truth, reported = ((row["run_truth"], row["run_reported"]) if run
                       else (_median(row["truth"]), _median(row["reported"])))
    if reported is None:
        return "n/a"
    return "ok" if abs(truth - reported) <= TOLERANCE else "FAIL"


def _tally(rows: list[dict]) -> str:
    within = sum(_judge(r) != "FAIL" for r in rows)
    within_run = sum(_judge(r, run=True) != "FAIL" for r in rows)
    return (f"{within} of {len(rows)} rows within the target in the median epoch, {within_run} "
            f"in the run (|reported - truth| <= {TOLERANCE}; every epoch's wait <= "
            f"{ZERO_TOLERANCE} where the truth is 0)")


def _spread(values: list) -> str:
    """The median of an epoch figure and its range: `0.74 [0.58-0.77]`."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    return f"{_median(known):.2f} [{min(known):.2f}-{max(known):.2f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=INPUTS)
    parser.add_argument("--busy", action="store_true", help="keep one core busy meanwhile")
    parser.add_argument("--producer", choices=PRODUCERS, default="sleep",
                        help="how the making of each batch takes its time: asleep (waiting "
                        "for a disk or the network) or at work in Python (decoding, augmenting)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the table as docs/judging.md shows it")
    parser.add_argument("--from-json", help="print the table of rows written by --json, "
                        "without fitting anything")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--log-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("ROWS " + json.dumps(_child(args.child, args.inputs, args.log_dir, args.busy,
                                          args.producer)))
        return 0
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())
        print("\n".join(markdown_table(rows)))
        print("\n" + _tally(rows))
        return 0
    hog = multiprocessing.Process(target=_busy, daemon=True) if args.busy else None
    if hog is not None:
        hog.start()
    rows: list[dict] = []
    try:
        with tempfile.TemporaryDirectory() as log_dir:
            for backend in args.backends:
                env = {**os.environ, "KERAS_BACKEND": backend,
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                   os.environ.get("PYTHONPATH")]))}
                done = subprocess.run(
                    [sys.executable, __file__, "--child", backend, "--log-dir", log_dir,
                     *(["--busy"] if args.busy else []), "--producer", args.producer,
                     "--inputs", *args.inputs], env=env,
                    capture_output=True, text=True,
                    check=False)
                lines = [x for x in done.stdout.splitlines() if x.startswith("ROWS ")]
                if done.returncode or not lines:
                    print(f"{backend}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
                    continue
                rows += json.loads(lines[-1][len("ROWS "):])
    finally:
        if hog is not None:
            hog.terminate()
    costs = [r for r in rows if "costs" in r]
    rows = [r for r in rows if "costs" not in r]
    for row in costs:
        c = row["costs"]
        print(f"{row['backend']}: a timed fetch costs {c['fetch_us']:.2f} us a batch, a batch "
              f"stamped as ready {c.get('ready_us', float('nan')):.2f} us (on tf.data's "
              f"thread); a look at the stacks {c['look_us']:.1f} us ({c['sampler_core_pct']:.2f} "
              f"% of a core at 100 a second, only where no fetch is timed)")
    print()
    print(f"{'backend':<11}{'input':<23}{'aim':>4}  {'measure':<14}{'truth, epochs':<19}"
          f"{'reported, epochs':<19}{'run truth':>9}{'reported':>9}  epoch / run")
    for row in rows:
        name = row["input"] + (" (other)" if row["figure"] == "other" else "")
        run_reported = "  -" if row["run_reported"] is None else f"{row['run_reported']:.2f}"
        print(f"{row['backend']:<11}{name:<23}{row['target']:>4.0%}  "
              f"{row['measure'] or '-':<14}{_spread(row['truth']):<19}"
              f"{_spread(row['reported']):<19}{row['run_truth']:>9.2f}{run_reported:>9}  "
              f"{_judge(row)} / {_judge(row, run=True)}")
    print("\n" + _tally(rows) + (" with one core kept busy" if args.busy else "")
          + (", each batch made by Python at work" if args.producer == "work" else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.markdown:
        print()
        print("\n".join(markdown_table(rows)))
    return 0


INPUT_NAMES = {"arrays": "arrays", "tf_data": "`tf.data`, slow `map`", "generator": "generator",
               "py_dataset_0": "`PyDataset`, `workers=0`",
               "py_dataset_4": "`PyDataset`, `workers=4`",
               "torch_dataloader": "torch `DataLoader`",
               "slow_callback": "arrays + slow callback"}


def markdown_table(rows: list[dict]) -> list[str]:
    """The rows as docs/judging.md shows them. A slow callback's truth is the share of the time
    its sleep cost, set beside the share reported as spent elsewhere; its wait's truth is 0
    (on torch, what making the batches takes)."""
    lines = ["| backend | input | aim | measure | true wait, epochs: median [range] | reported "
             "wait, epochs | reported elsewhere, epochs | run: true | run: reported | within: "
             "epoch, run |", "| --- " * 10 + "|"]
    for row in rows:
        truth = _spread(row["truth"])
        if row["figure"] == "other":
            truth = f"{_spread(_wait_truth(row))} (the callback's time: {truth})"
            reported = _spread(row["data_wait"])
        else:
            reported = _spread(row["reported"])
        run_reported = "-" if row["run_reported"] is None else f"{row['run_reported']:.2f}"
        within = ", ".join({"ok": "ok", "FAIL": "no"}.get(_judge(row, run), "n/a")
                           for run in (False, True))
        lines.append(f"| {row['backend']} | {INPUT_NAMES[row['input']]} | {row['target']:.0%} | "
                     f"`{row['measure']}` | {truth} | {reported} | {_spread(row['other'])} | "
                     f"{row['run_truth']:.2f} | {run_reported} | {within} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
