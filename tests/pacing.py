"""A Keras callback that stands for the work of a training step."""

from __future__ import annotations

import time

import keras


class Pause(keras.callbacks.Callback):
    """Sleeps `seconds` at each batch end: a step that computes for a known time.

    Placed before GPUWatch in `callbacks`, the pause ends before GPUWatch's batch end, so it
    counts as the step's time (the GPU at work), never as waiting for data. Placed after, it
    falls outside the step GPUWatch measures, and only makes the fit last long enough for the
    sampler to tick."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.seconds)
