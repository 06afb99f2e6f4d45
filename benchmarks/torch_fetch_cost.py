"""What making its batches costs a torch fit on the CPU, beside the wait gpu-watch reports.

On torch the training thread pulls each batch in order with the step, so making the batches is
a wait even where nothing sleeps. `wait_accuracy.py` takes that cost from pulls timed alone,
with no step between them. This script measures it as a sleep's cost is measured there: one fit
(the same model, GPUWatch on, no sleep anywhere) whose odd epochs get their batches free (the
first batch the input made, handed over again at the cost of a generator's step) and whose even
epochs pull them from the input. The true wait of a pulled epoch is 1 - (the mean of its two
free neighbours' loops) / its own loop, each loop timed by this script from the epoch's first
pull to its end; beside it, the epoch's `wait_fraction` in `epochs.csv`, and the same batches
pulled alone.

Usage:
    python benchmarks/torch_fetch_cost.py                    # tf.data, generator, arrays
    python benchmarks/torch_fetch_cost.py --inputs tf_data --epochs 21
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

INPUTS = ("tf_data", "generator", "arrays")
BATCH, FEATURES, BATCHES = 128, 64, 120


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=INPUTS)
    parser.add_argument("--epochs", type=int, default=17,
                        help="epochs of each fit, odd: the pulled ones sit between free ones")
    args = parser.parse_args()
    if args.epochs < 5 or args.epochs % 2 == 0:
        parser.error(f"--epochs {args.epochs}: an odd number of at least 5 is needed, so that "
                     "each pulled epoch from 2 on sits between two free ones")

    import keras
    import numpy as np
    import pandas as pd
    from keras.src.backend.torch.trainer import TorchEpochIterator

    from gpu_watch import GPUWatch

    rng = np.random.default_rng(0)
    x = rng.random((BATCHES * BATCH, FEATURES), dtype=np.float32)
    y = rng.random((BATCHES * BATCH, 1), dtype=np.float32)
    free, made, pulled = [False], [], []

    class Switch:
        """What the epoch iterator iterates: the input's batches, or, while `free`, the first
        one the input made."""

        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            batches = iter(self.loader)
            while True:
                if not pulled:
                    pulled.append(time.perf_counter())
                if free[0] and made:
                    yield made[0]
                    continue
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                made[:] = made or [batch]
                yield batch

    class Alternate(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.loops: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            free[0] = epoch % 2 == 1
            pulled.clear()

        def on_epoch_end(self, epoch, logs=None):
            self.loops.append(time.perf_counter() - pulled[0])

    def source(kind: str) -> dict:
        if kind == "arrays":
            return {"x": x, "y": y, "batch_size": BATCH}
        if kind == "generator":
            def generator():
                while True:
                    for i in range(BATCHES):
                        yield x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
            return {"x": generator(), "steps_per_epoch": BATCHES}
        import tensorflow as tf

        def through_python(a, b):
            def same(a, b):
                return a, b
            a, b = tf.numpy_function(same, [a, b], (tf.float32, tf.float32))
            a.set_shape((None, FEATURES))
            b.set_shape((None, 1))
            return a, b

        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).map(through_python)
        return {"x": dataset.repeat(), "steps_per_epoch": BATCHES}

    def alone(kind: str) -> float:
        """Seconds an epoch's batches take to pull with no step between them (after a pass to
        warm up), as `wait_accuracy.py` takes them."""
        seconds = []
        for _ in range(2):
            iterator = iter(TorchEpochIterator(**source(kind))._get_iterator())
            start = time.perf_counter()
            for _ in range(BATCHES):
                next(iterator)
            seconds.append(time.perf_counter() - start)
        return seconds[-1]

    make = TorchEpochIterator._get_iterator
    TorchEpochIterator._get_iterator = lambda self: Switch(make(self))
    log_dir = tempfile.mkdtemp(prefix="torch_fetch_cost_")
    print(f"{'input':10} {'true wait: median [range]':28} {'reported: median [range]':28} "
          f"{'pulled alone'}")
    for kind in args.inputs:
        made.clear()
        model = keras.Sequential([keras.Input((FEATURES,)),
                                  keras.layers.Dense(512, activation="relu"),
                                  keras.layers.Dense(512, activation="relu"),
                                  keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        alternate = Alternate()
        watch = GPUWatch(log_dir=log_dir, plot=False, verbose=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(**source(kind), epochs=args.epochs, verbose=0,
                      callbacks=[watch, alternate])
        reported = pd.read_csv(Path(watch.run_dir) / "epochs.csv")["wait_fraction"]
        loops = alternate.loops
        pulled_epochs = range(2, args.epochs - 1, 2)
        truth = [1 - (loops[e - 1] + loops[e + 1]) / 2 / loops[e] for e in pulled_epochs]
        waits = [float(reported[e]) for e in pulled_epochs]
        free[0] = False
        TorchEpochIterator._get_iterator = make
        cost_alone = alone(kind) / statistics.median(loops[e] for e in pulled_epochs)
        TorchEpochIterator._get_iterator = lambda self: Switch(make(self))
        print(f"{kind:10} {statistics.median(truth):.2f} [{min(truth):.2f}-{max(truth):.2f}]"
              f"{'':15} {statistics.median(waits):.2f} [{min(waits):.2f}-{max(waits):.2f}]"
              f"{'':15} {cost_alone:.2f}")


if __name__ == "__main__":
    main()
