"""Train a tiny model with GPUWatch in a child process, for tests that signal or kill it.

Usage: python train_child.py LOG_DIR [--run-name NAME] [--epochs N] [--batches N]
    [--sleep SECONDS] [--started-after N] [--verbose]
    [--swallow-first-interrupt | --swallow-every-interrupt]
Prints "STARTED <run dir>" once the first `--started-after` batches (default 1) ended, and
trains `--batches` batches an epoch (default 8); `--sleep` slows each batch; `--verbose` lets
GPUWatch print its summary line; `--swallow-first-interrupt` catches the first
KeyboardInterrupt that lands in that sleep and trains on, as code that catches every exception
does (Keras' `pythonify_logs`, in every batch hook); `--swallow-every-interrupt` catches every
one, where the sleep and the hook are the whole batch.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from gpu_watch import GPUWatch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("log_dir")
    parser.add_argument("--run-name")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--started-after", type=int, default=1)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--swallow-first-interrupt", action="store_true")
    parser.add_argument("--swallow-every-interrupt", action="store_true")
    args = parser.parse_args()
    # As in a terminal's foreground, where Ctrl-C reaches Python's own handler: a child of a
    # test suite run as a background job inherits SIGINT ignored, and Ctrl-C would not exist.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # A child that outlives its test's 60 s wait has its threads' stacks on stderr first.
    faulthandler.dump_traceback_later(50, exit=False)

    watch = GPUWatch(log_dir=args.log_dir, run_name=args.run_name, plot=False,
                     verbose=int(args.verbose))

    class Pace(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == args.started_after and self.params.get("started") is None:
                self.params["started"] = True
                print(f"STARTED {watch.run_dir}", flush=True)
            try:
                time.sleep(args.sleep)
            except KeyboardInterrupt:
                if not args.swallow_every_interrupt and (
                        not args.swallow_first_interrupt or self.params.get("swallowed")):
                    raise
                self.params["swallowed"] = self.params.get("swallowed", 0) + 1
                print("SWALLOWED", file=sys.stderr, flush=True)

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((8 * args.batches, 4), dtype="float32")
    y = np.zeros((8 * args.batches, 1), dtype="float32")
    model.fit(x, y, epochs=args.epochs, batch_size=8, verbose=0, callbacks=[watch, Pace()])
    print(f"DONE {watch.run_dir}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
