"""Train a tiny Keras model with GPUWatch on the backend `KERAS_BACKEND` names, and print what
the run folder and a few spies show, as one line: "RESULT {json}".

Usage: KERAS_BACKEND=jax python backend_fit.py LOG_DIR

Keras picks its backend when it is first imported, so each backend needs a process of its own.
The spies record the threads the batch-end hook runs on, every read of `GPUWatch.model` and, on
JAX, every `jax_state_sync` (the copy of all weights that reading `Callback.model` triggers)
made from gpu-watch's code.

Two short fits follow: one built and fitted inside `with keras.device("cpu")` and fed by a
`keras.utils.PyDataset`, for the facts a remedy is chosen from (the data adapter, the device
scope, the variables on the CPU); one fed by a slow Python generator while FakeNVML shows an
idle GPU and the probe reports step 0 on it, for the remedy of a starved training; and one whose
generator takes half of each step, for the share of time spent waiting for data. Then where the
CPU fall-back warning points when NVML sees a GPU the backend cannot use, and whether a fit
with every warning an error passes on this machine without a GPU.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import keras
import numpy as np
from on_gpu import step_0_on_a_gpu  # beside this script

from gpu_watch import GPUWatch, GPUWatchWarning, load_run
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

PACKAGE_DIR = str(Path(sys.modules["gpu_watch"].__file__).parent)
SAMPLES, BATCH, EPOCHS = 128, 16, 2


# The wrappers `keras_internals.on_fit_error` puts around what fit calls: they pass each call
# through (to the other callbacks too), so a frame of theirs says nothing of who asked.
PASS_THROUGH = (os.path.join(PACKAGE_DIR, "training", "keras_internals.py"), ("call", "watched"))


def from_gpu_watch() -> bool:
    """Whether gpu-watch's own code (not a pass-through wrapper) is on the call stack."""
    return any(frame.filename.startswith(PACKAGE_DIR)
               and (frame.filename, frame.name in PASS_THROUGH[1]) != (PASS_THROUGH[0], True)
               for frame in traceback.extract_stack())


class Batches(keras.utils.PyDataset):
    def __init__(self, x, y):
        super().__init__(workers=1, max_queue_size=5)
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x) // BATCH

    def __getitem__(self, index):
        batch = slice(index * BATCH, (index + 1) * BATCH)
        return self.x[batch], self.y[batch]


def build() -> keras.Model:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


def in_a_cpu_scope(log_dir: str, x, y) -> dict:
    """Build and fit inside `keras.device("cpu")`: what run.json records for the remedies."""
    watch = GPUWatch(log_dir=log_dir, plot=False, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        with keras.device("cpu"):
            build().fit(Batches(x, y), epochs=1, verbose=0, callbacks=[watch])
    info = load_run(watch.run_dir).info
    return {key: info[key] for key in ("data", "distribution", "placement", "causes")}


def starved(log_dir: str, x, y) -> dict:
    """A slow generator feeds a training whose step 0 ran on an idle (simulated) GPU."""
    def slow():
        while True:
            for i in range(0, SAMPLES, BATCH):
                time.sleep(0.03)
                yield x[i:i + BATCH], y[i:i + BATCH]

    # A starved training still runs a few kernels: NVML has a sample of it (2 %) from the
    # first reading, so its own use decides (an idle process without one reads 0 % only after
    # nvml.PROC_UTIL_QUIET_S, longer than this run).
    starving = FakeProcess(used_mib=9, sm_util_pct=2)
    watch = GPUWatch(log_dir=log_dir, plot=False, verbose=0, interval_s=0.02,
                     nvml=FakeNVML([FakeGPU(util_pct=2, processes=[starving])]))
    with warnings.catch_warnings(), step_0_on_a_gpu():
        warnings.simplefilter("ignore", GPUWatchWarning)
        build().fit(slow(), epochs=1, steps_per_epoch=24, verbose=0, callbacks=[watch])
    run = load_run(watch.run_dir)
    return {"verdict": run.verdict, "data": run.info["data"], "causes": run.causes}


def half_wait(log_dir: str) -> dict:
    """A generator that sleeps half of each step: on JAX and torch Keras pulls it on the
    training thread, between steps, so half the loop waits for it."""
    def batches():
        while True:
            time.sleep(0.03)
            yield np.zeros((BATCH, 8), "float32"), np.zeros((BATCH, 1), "float32")

    class Compute(keras.callbacks.Callback):  # the other half, inside GPUWatch's batch hooks
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(0.03)

    watch = GPUWatch(log_dir=log_dir, plot=False, verbose=0, interval_s=0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build().fit(batches(), epochs=1, steps_per_epoch=30, verbose=0,
                    callbacks=[Compute(), watch])
    return load_run(watch.run_dir).info["wait"]


def live_keys(log_dir: str, x, y) -> list[dict]:
    """The batch logs a callback after GPUWatch sees while a (simulated) busy GPU is read."""
    seen: list[dict] = []

    class Recorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.async_safe = True  # keep Keras' asynchronous batch hooks, as GPUWatch does

        def on_train_batch_end(self, batch, logs=None):
            seen.append({k: v for k, v in logs.items() if k.startswith("gpu_")})
            time.sleep(0.05)

    gpu = FakeGPU(util_pct=42, mem_used_mib=2048, processes=[FakeProcess(used_mib=1024)])
    watch = GPUWatch(log_dir=log_dir, plot=False, verbose=0, interval_s=0.02,
                     nvml=FakeNVML([gpu]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        build().fit(x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=[watch, Recorder()])
    return seen


def warned_at_the_fit_line(log_dir: str, x, y) -> dict:
    """NVML (simulated) sees a GPU that the backend cannot use: the CPU fall-back warning,
    issued by the first batch's end hook (on Keras' worker thread on JAX and torch), must name
    the line that called `fit`."""
    watch = GPUWatch(log_dir=log_dir, plot=False, verbose=0, nvml=FakeNVML([FakeGPU()]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        build().fit(x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=[watch])
    return {"fit_line": [__file__, line],
            "warnings": [[w.filename, w.lineno, str(w.message)] for w in caught
                         if issubclass(w.category, GPUWatchWarning)]}


def with_warnings_as_errors(log_dir: str, x, y) -> str | None:
    """A fit on this machine (no GPU) with every warning an error, as a project's strict test
    settings run it: what it raised, or None."""
    watch = GPUWatch(log_dir=log_dir, plot=False, verbose=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            build().fit(x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=[watch])
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


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

    model = build()
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
    GPUWatch.on_train_batch_end = hook  # the spies watched the first fit only
    GPUWatch.model = model_property
    return {
        "backend": keras.backend.backend(),
        "data": run.info["data"],
        "cpu_scope": in_a_cpu_scope(log_dir, x, y),
        "starved": starved(log_dir, x, y),
        "half_wait": half_wait(log_dir),
        "live_keys": live_keys(log_dir, x, y),
        "warned_at": warned_at_the_fit_line(log_dir, x, y),
        "strict": with_warnings_as_errors(log_dir, x, y),
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
        "step_s_nonnegative": bool((run.batches["step_s"] >= 0).all()),
        "step_s_zero": int((run.batches["step_s"] == 0).sum()),
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
