"""Train with GPUWatch on a simulated busy GPU for a while, slowly, so that another process can
watch the run folder being written.

Usage: python live_fit.py LOG_DIR [--epochs N] [--batch-s SECONDS] [--steps N] [--on-gpu]
Prints "STARTED <run dir>" once the first batch ended, and "DONE <run dir>" at the end.
`--on-gpu` has the placement probe report step 0 on the (simulated) GPU, as on a GPU machine;
without it the verdict is the truth of this machine: the training ran on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from on_gpu import step_0_on_a_gpu  # noqa: E402  (beside this script)

from gpu_watch import GPUWatch, GPUWatchWarning  # noqa: E402
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("log_dir")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-s", type=float, default=0.1)
    parser.add_argument("--verbose", type=int, default=0)
    parser.add_argument("--on-gpu", action="store_true")
    args = parser.parse_args()
    with step_0_on_a_gpu() if args.on_gpu else contextlib.nullcontext():
        train(args)


def train(args: argparse.Namespace) -> None:
    # Busy for 8 s, then a stretch of idle, then busy again: the sparklines show the dip.
    util = [92, 95, 97, 90, 94, 96, 93, 95] + [3] * 4 + [88, 91, 94, 96] * 20
    gpu = FakeGPU(name="NVIDIA H100 80GB HBM3", util_pct=util,
                  mem_used_mib=[9000, 14000, 18000, 18500], power_w=[310, 420, 455, 460],
                  processes=[FakeProcess(used_mib=17000, sm_util_pct=[u - 2 for u in util])])
    watch = GPUWatch(log_dir=args.log_dir, nvml=FakeNVML([gpu]), plot=False, verbose=0)

    class Pace(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.params.get("started") is None:
                self.params["started"] = True
                print(f"STARTED {watch.run_dir}", flush=True)
            time.sleep(args.batch_s)

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).random((args.steps * 8, 4), dtype=np.float32)
    y = x.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)  # "training runs on the CPU"
        model.fit(x, y, epochs=args.epochs, batch_size=8, verbose=args.verbose,
                  callbacks=[Pace(), watch])  # the pace counts as step time, not as a wait
    print(f"DONE {watch.run_dir}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
