"""Three fits that raise in a step, on the backend KERAS_BACKEND names: prints, as one JSON
line, whether each run was closed as fit raised, its status, its error's type, and whether the
SIGINT handler was as before it."""

from __future__ import annotations

import json
import signal
import tempfile
import warnings

import keras
import numpy as np

from gpu_watch import GPUWatch, load_run
from gpu_watch.testing import FakeGPU, FakeNVML


class FailingStep(keras.layers.Layer):
    """A layer that fails in training on a batch of ones, as a step with a bad batch would."""

    def call(self, inputs, training=None):
        if training and float(keras.ops.convert_to_numpy(keras.ops.max(inputs))) > 0:
            raise RuntimeError("the step failed")
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def main() -> None:
    handler = signal.getsignal(signal.SIGINT)
    x = np.zeros((16, 2), "float32")
    x[8:12] = 1.0  # the third batch of the first epoch
    runs = []
    for _ in range(3):
        model = keras.Sequential([keras.Input((2,)), FailingStep(), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
        watch = GPUWatch(log_dir=tempfile.mkdtemp(), plot=False, verbose=0,
                         check_placement=False, nvml=FakeNVML([FakeGPU(util_pct=50)]))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(x, np.zeros((16, 1), "float32"), batch_size=4, epochs=2,
                          shuffle=False, verbose=0, callbacks=[watch])
        except RuntimeError:
            pass
        closed = watch.monitor.finished
        watch.monitor.wait_closed(30.0)
        run = load_run(watch.run_dir)
        runs.append({"closed_at_once": closed, "status": run.status,
                     "error": (run.info.get("error") or {}).get("type"),
                     "handler_as_before": signal.getsignal(signal.SIGINT) == handler})
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
