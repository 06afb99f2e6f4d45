"""For the fit scripts beside this file: the placement probe reports step 0 on a GPU, so that a
simulated GPU (`FakeNVML`) judges a training this CPU-only machine runs."""

from __future__ import annotations

from contextlib import contextmanager

import keras

from gpu_watch.training import placement


@contextmanager
def step_0_on_a_gpu():
    """While open, the running backend's probe says the framework sees a GPU, with a CUDA
    build, and that step 0's compute ran on it."""
    real = type(placement.probe_for(keras.backend.backend()))

    class OnGPU(real):
        def framework_gpus(self):
            return ["gpu:0"]

        def cuda_build(self):
            return True

        def after_first_step(self, model, logs):
            return {**super().after_first_step(model, logs), "compute_on_gpu": True}

    probe_for = placement.probe_for
    placement.probe_for = lambda backend: OnGPU()
    try:
        yield
    finally:
        placement.probe_for = probe_for
