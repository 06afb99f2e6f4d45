"""Fit on the backend `KERAS_BACKEND` names and print where the loop's time went beside the
fit's own wall time, as one line: "RESULT {json}".

Usage: KERAS_BACKEND=jax python loop_fit.py LOG_DIR

Five fits with known ground truth: a `keras.utils.PyDataset` that sleeps 50 ms a batch (a
starved input pipeline, on the training thread); one that sleeps 200 ms in every second batch
only, for a model whose step takes milliseconds (a pipeline that stalls now and then, the
batches between quick); in-memory arrays with a callback that sleeps
50 ms a batch (no wait for data at all, time lost between steps) while a simulated GPU sits
idle under a training whose step 0 ran on it; plain in-memory arrays; and a `PyDataset` whose
`on_epoch_begin` sleeps 0.3 s (an epoch's setup, before its first batch).
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import keras
import numpy as np
from on_gpu import step_0_on_a_gpu  # beside this script

from gpu_watch import GPUWatch, load_run
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

SAMPLES, BATCH, EPOCHS = 128, 16, 3
SLEEP_S = 0.05  # far longer than a step of this model, even on a loaded machine
SETUP_S = 0.3
# A stall now and then: long enough that what a step after it gives back to the noise of steps'
# times on a loaded machine (tens of milliseconds) leaves most of it (`LoopClock._after_pause`).
STALL_S = 0.2
WIDE_BATCH, WIDE_FEATURES = 128, 64


class Batches(keras.utils.PyDataset):
    """Batches that take `batch_s` each to make (every `every`-th one only), on the thread that
    asks for them, in epochs whose start takes `setup_s`."""

    def __init__(self, x, y, batch_s=0.0, setup_s=0.0, every=1, batch=BATCH):
        super().__init__(workers=0)
        self.x, self.y = x, y
        self.batch_s, self.setup_s, self.every, self.batch = batch_s, setup_s, every, batch

    def __len__(self):
        return len(self.x) // self.batch

    def __getitem__(self, index):
        if index % self.every == self.every - 1:
            time.sleep(self.batch_s)
        batch = slice(index * self.batch, (index + 1) * self.batch)
        return self.x[batch], self.y[batch]

    def on_epoch_begin(self):
        time.sleep(self.setup_s)


class SlowCallback(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        time.sleep(SLEEP_S)


def build(features: int = 8, units: int = 16) -> keras.Model:
    model = keras.Sequential([keras.Input((features,)),
                              keras.layers.Dense(units, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


def fit(log_dir: str, data: dict, callbacks=(), nvml=None, model=None) -> dict:
    watch = GPUWatch(log_dir=log_dir, plot=False, verbose=0, nvml=nvml)
    model = model or build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model.fit(**data, epochs=EPOCHS, verbose=0, callbacks=[watch, *callbacks])
        wall_s = time.perf_counter() - start
    run = load_run(watch.run_dir)
    rows = run.batches.fillna({"wait_s": 0.0, "other_s": 0.0})
    rows["loop_s"] = rows["step_s"] + rows["wait_s"] + rows["other_s"]
    per_epoch = rows.groupby("epoch")["loop_s"].sum()
    durations = dict(zip(run.epochs["epoch"], run.epochs["duration_s"], strict=True))
    epochs = run.epochs.fillna({"data_wait_s": 0.0})
    return {
        "epochs": [{"duration_s": float(e.duration_s), "compute_s": float(e.compute_s),
                    "wait_s": float(e.data_wait_s), "other_s": float(e.other_s)}
                   for e in epochs.itertuples()],
        "wall_s": wall_s,
        "rows_loop_s": float(rows["loop_s"].sum()),
        "rows_step_s": float(rows["step_s"].sum()),
        "epochs_over": [(int(e), float(s), float(durations[e])) for e, s in per_epoch.items()
                        if s > durations[e]],
        "wait": run.info["wait"],
        "breakdown": run.info["breakdown"],
        "causes": [{"code": c["code"], "evidence": c["evidence"]} for c in run.causes],
        "probes": {k: run.info["keras_probes"][k] for k in ("loop_clock", "data_fetch")},
    }


def main(log_dir: str) -> dict:
    rng = np.random.default_rng(0)
    x = rng.random((SAMPLES, 8), dtype=np.float32)
    y = rng.random((SAMPLES, 1), dtype=np.float32)
    arrays = {"x": x, "y": y, "batch_size": BATCH}
    wide_x = rng.random((8 * WIDE_BATCH, WIDE_FEATURES), dtype=np.float32)
    wide_y = rng.random((8 * WIDE_BATCH, 1), dtype=np.float32)
    # A training that still runs a few kernels: NVML has a sample of it (2 %), so its own use
    # decides, and the GPU reads idle.
    idle_gpu = FakeNVML([FakeGPU(util_pct=2, processes=[FakeProcess(used_mib=9, sm_util_pct=2)])])
    with step_0_on_a_gpu():
        slow_callback = fit(log_dir, arrays, [SlowCallback()], nvml=idle_gpu)
    return {
        "backend": keras.backend.backend(),
        "starved": fit(log_dir, {"x": Batches(x, y, batch_s=SLEEP_S)}),
        # Steps of a few milliseconds: still running on JAX's device as the next fetch begins.
        "stalls": fit(log_dir, {"x": Batches(wide_x, wide_y, batch_s=STALL_S, every=2,
                                             batch=WIDE_BATCH)},
                      model=build(WIDE_FEATURES, 512)),
        "slow_callback": slow_callback,
        "arrays": fit(log_dir, arrays),
        "slow_setup": fit(log_dir, {"x": Batches(x, y, setup_s=SETUP_S)}),
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1])))
