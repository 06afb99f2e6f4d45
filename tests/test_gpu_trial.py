"""The opt-in GPU trial after a training forced onto the CPU: its "no GPU usable" answer, its
timing on the devices this machine has, and the arithmetic the impact states from it."""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import pytest
from monitors import FrameworkWithGPUs

from gpu_watch import GPUWatch, GPUWatchWarning
from gpu_watch.testing import FakeGPU, FakeNVML
from gpu_watch.training import placement as placement_module
from gpu_watch.training.gpu_trial import batch_for, gpu_trial, step_seconds, usable_gpu


def small_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_no_usable_gpu_here():
    assert usable_gpu(keras.backend.backend()) is None
    assert usable_gpu("an unknown backend") is None


def test_the_trial_says_why_nothing_was_timed_without_a_gpu():
    assert gpu_trial(small_model(), keras.backend.backend(), 8) == {
        "reason": f"no GPU is usable in this process ({keras.backend.backend()} sees none now)"}


def test_a_batch_of_the_models_shapes():
    x, y = batch_for(small_model(), 5)
    assert x.shape == (5, 4) and y.shape == (5, 1) and x.dtype == np.float32

    class Free(keras.Model):
        def call(self, x):
            return x

    assert batch_for(Free(), 5) is None


def test_steps_are_timed_on_a_copy(tmp_path):
    model = small_model()
    before = [w.copy() for w in model.get_weights()]
    seconds = step_seconds(model, *batch_for(model, 8), "cpu:0", steps=2)
    assert 0 < seconds < 5
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_measure_gpu_speedup_must_be_a_bool():
    with pytest.raises(ValueError, match="measure_gpu_speedup must be True or False, got 'yes'"):
        GPUWatch(measure_gpu_speedup="yes")


def test_a_forced_cpu_run_records_the_trial_and_its_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(placement_module, "probe_for",
                        lambda backend: FrameworkWithGPUs(variables_on="CPU"))
    watch = GPUWatch(log_dir=tmp_path, nvml=FakeNVML([FakeGPU()]), plot=False, verbose=0,
                     interval_s=0.05, measure_gpu_speedup=True)
    x = np.zeros((32, 4), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        small_model().fit(x, x[:, :1], batch_size=8, epochs=1, verbose=0, callbacks=[watch])
    info = json.loads((watch.run_dir / "run.json").read_text())
    assert info["verdict"] == "cpu_fallback"
    assert info["causes"][0]["code"] == "forced_cpu_placement"
    assert info["gpu_trial"] == {"reason": "no GPU is usable in this process (tensorflow sees "
                                           "none now)"}
    impact = info["causes"][0]["impact"]
    assert impact["speedup_measured_x"] is None and impact["wall_lost_s"] is None
    assert impact["not_measured"] == ("how fast the GPU runs this model was not measured: no "
                                      "GPU is usable in this process (tensorflow sees none now)")
    assert impact["gpu_idle_s"] == pytest.approx(info["duration_s"], abs=0.01)  # one GPU

