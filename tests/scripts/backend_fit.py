"""Train a tiny Keras model with GPUWatch on the backend `KERAS_BACKEND` names, and print what
the run folder and a few spies show, as one line: "RESULT {json}".

Usage: KERAS_BACKEND=jax python backend_fit.py LOG_DIR

Keras picks its backend when it is first imported, so each backend needs a process of its own.
The spies record the threads the batch-end hook runs on, every read of `GPUWatch.model` and, on
JAX, every `jax_state_sync` (the copy of all weights that reading `Callback.model` triggers)
made from gpu-watch's code.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import keras
import numpy as np

from gpu_watch import GPUWatch, GPUWatchWarning, load_run

PACKAGE_DIR = str(Path(sys.modules["gpu_watch"].__file__).parent)
SAMPLES, BATCH, EPOCHS = 128, 16, 2


def from_gpu_watch() -> bool:
    """Whether gpu-watch's code is on the current call stack."""
    return any(frame.filename.startswith(PACKAGE_DIR) for frame in traceback.extract_stack())


def main(log_dir: str) -> dict:
    hook_threads: set[str] = set()
    model_reads: list[str] = []
    syncs = {"total": 0, "from_gpu_watch": 0}

    hook = GPUWatch.on_train_batch_end

    def spied_hook(self, batch, logs=None):
        hook_threads.add(threading.current_thread().name)
        return hook(self, batch, logs)

    model_property = GPUWatch.model

    def spied_model(self):
        model_reads.append(threading.current_thread().name)
        return model_property.fget(self)

    GPUWatch.on_train_batch_end = spied_hook
    GPUWatch.model = property(spied_model)

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    if hasattr(model, "jax_state_sync"):
        sync = model.jax_state_sync

        def spied_sync():
            syncs["total"] += 1
            syncs["from_gpu_watch"] += from_gpu_watch()
            return sync()

        model.jax_state_sync = spied_sync

    watch = GPUWatch(log_dir=log_dir, plot=True, verbose=0)

    class PlainBatchEnd(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    async_train = keras.callbacks.CallbackList([watch], model=model)._async_train
    async_control = keras.callbacks.CallbackList([watch, PlainBatchEnd()], model=model)._async_train

    rng = np.random.default_rng(0)
    x = rng.random((SAMPLES, 8), dtype=np.float32)
    y = rng.random((SAMPLES, 1), dtype=np.float32)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        history = model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0,
                            callbacks=[watch])
    fit_s = time.perf_counter() - start
    reads_in_fit = len(model_reads)
    syncs_in_fit = dict(syncs)
    _ = watch.model  # the control: the spies see a read when there is one
    reads_after = len(model_reads)

    run = load_run(watch.run_dir)  # its figures: drawn by the time this process has exited
    return {
        "backend": keras.backend.backend(),
        "run_dir": str(run.path),
        "files": sorted(p.name for p in run.path.iterdir()),
        "status": run.status,
        "verdict": run.verdict,
        "causes": [c["code"] for c in run.causes],
        "placement": run.info["placement"],
        "framework": run.info["framework"],
        "rank": run.info["rank"],
        "world_size": run.info["world_size"],
        "batches": run.batches[["epoch", "batch"]].values.tolist(),
        "batch_time_s_increasing": bool(run.batches["time_s"].is_monotonic_increasing),
        "step_s_positive": bool((run.batches["step_s"] > 0).all()),
        "epochs": run.epochs["epoch"].tolist(),
        "epoch_verdicts": run.epochs["verdict"].tolist(),
        "epoch_loss": run.epochs["loss"].notna().all().item(),
        "history_gpu": {k: v for k, v in history.history.items() if k.startswith("gpu_")},
        "warnings": run.warnings,
        "async_train": async_train,
        "async_train_control": async_control,
        "hook_threads": sorted(hook_threads),
        "model_reads_in_fit": reads_in_fit,
        "model_reads_after_control": reads_after,
        "jax_state_sync": syncs_in_fit,
        "jax_state_sync_after_control": syncs["total"],
        "tensorflow_imported": "tensorflow" in sys.modules,
        "fit_s": round(fit_s, 3),
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1])), flush=True)
