"""After a training that ran on the CPU with a GPU usable in the process: time a few steps of the
same model on the GPU, and on the CPU the same way, to state the speed-up it left unused.

Opt-in (`GPUWatch(measure_gpu_speedup=True)`): it costs time after `fit` (a compile and a few
steps on each device) and GPU memory (a copy of the model and one batch). The user's model is
never touched: copies of it train on random inputs of its own shapes.
"""

from __future__ import annotations

import time
from typing import Any

from gpu_watch.errors import swallowed

TRIAL_STEPS = 5  # timed steps per device, after one untimed step that compiles


def usable_gpu(backend: str) -> str | None:
    """The Keras device name of a GPU this process can use now ("gpu:0", "cuda:0"), or None:
    hidden (`set_visible_devices`, `CUDA_VISIBLE_DEVICES`), left out (`JAX_PLATFORMS=cpu`) or
    absent."""
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return "gpu:0" if tf.config.list_logical_devices("GPU") else None
        if backend == "jax":
            import jax

            return "gpu:0" if jax.devices("gpu") else None
        if backend == "torch":
            import torch

            return "cuda:0" if torch.cuda.is_available() else None
    except Exception as exc:  # a platform the framework was told to leave out raises
        swallowed("gpu_trial.gpu_device", exc)  # no GPU to time the model on, then
        return None
    return None


def batch_for(model: Any, batch_size: int) -> tuple[Any, Any] | None:
    """Random inputs and targets of the model's shapes with `batch_size` rows, or None where the
    model does not say its shapes (a subclassed model without `Input`)."""
    import numpy as np

    try:
        inputs, outputs = model.input_shape, model.output_shape
    except (AttributeError, ValueError):
        return None

    def fill(shape: Any) -> Any:
        if isinstance(shape, list):
            return [fill(s) for s in shape]
        if isinstance(shape, dict):
            return {k: fill(s) for k, s in shape.items()}
        dims = [batch_size] + [d or 1 for d in tuple(shape)[1:]]
        return np.random.default_rng(0).random(dims, dtype=np.float32)

    return fill(inputs), fill(outputs)


def step_seconds(model: Any, x: Any, y: Any, device: str, steps: int = TRIAL_STEPS) -> float:
    """Seconds per training step of a copy of `model` on `device` (a Keras device name), over
    `steps` steps after one that compiles; `train_on_batch` returns its loss as a number, so
    each step has finished when it returns."""
    import keras

    with keras.device(device):
        copy = keras.models.clone_model(model)
        optimizer = model.optimizer.__class__.from_config(model.optimizer.get_config())
        copy.compile(optimizer=optimizer, loss=model.loss)
        copy.train_on_batch(x, y)
        start = time.perf_counter()
        for _ in range(steps):
            copy.train_on_batch(x, y)
        return (time.perf_counter() - start) / steps


def gpu_trial(model: Any, backend: str, batch_size: int | None) -> dict[str, Any]:
    """The GPU and the CPU timed on copies of `model`, as `run.json` records it (``gpu_trial``):
    ``cpu_step_s``, ``gpu_step_s``, ``steps``, ``device``, ``batch_size``; or ``reason`` alone,
    saying why nothing was timed. Never raises: a failure is a reason."""
    device = usable_gpu(backend)
    if device is None:
        return {"reason": f"no GPU is usable in this process ({backend} sees none now)"}
    batch_size = batch_size or 32
    batch = batch_for(model, batch_size)
    if batch is None:
        return {"reason": "the model does not say its input shapes (build it with keras.Input)"}
    try:
        cpu = step_seconds(model, *batch, "cpu:0")
        gpu = step_seconds(model, *batch, device)
    except Exception as exc:  # an unexpected model or device must not fail the run's end
        return {"reason": f"the trial failed: {type(exc).__name__}: {exc}"[:300]}
    return {"cpu_step_s": cpu, "gpu_step_s": gpu, "steps": TRIAL_STEPS, "device": device,
            "batch_size": batch_size}
