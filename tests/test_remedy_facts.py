"""Real training on this machine's CPU records the facts remedies are chosen from (the Keras
data adapter, a tf.data pipeline's steps), and a starved training's input_bound cause gets the
remedy for its generator. The remedy rules themselves: test_remedies.py."""

from __future__ import annotations

import time
import warnings

import keras
import numpy as np
import tensorflow as tf
from monitors import FrameworkWithGPUs

from gpu_watch import GPUWatch, GPUWatchWarning, load_run
from gpu_watch.judging.causes import RunFacts, choose_remedy
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess
from gpu_watch.training import placement
from gpu_watch.training.keras_internals import NO_FRAME, data_source, tf_data_transformations

WAIT = 0.62  # share of training time spent waiting for data


# -- real training records what feeds fit -------------------------------------------------------


X = np.random.default_rng(0).random((64, 8), dtype=np.float32)
Y = np.random.default_rng(1).random((64, 1), dtype=np.float32)


class Batches(keras.utils.PyDataset):
    def __init__(self):
        super().__init__(workers=2, use_multiprocessing=False, max_queue_size=4)

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return X[index * 16:(index + 1) * 16], Y[index * 16:(index + 1) * 16]


def generator():
    while True:
        for i in range(0, 64, 16):
            yield X[i:i + 16], Y[i:i + 16]


def test_real_fits_record_the_data_adapter(tmp_path):
    import torch

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)), batch_size=16)
    pipeline = (tf.data.Dataset.from_tensor_slices((X, Y)).map(lambda a, b: (a, b))
                .batch(16).prefetch(2))
    fits = {
        "arrays": ((X, Y), {"batch_size": 16}),
        "tf_data": ((pipeline,), {}),
        "py_dataset": ((Batches(),), {}),
        "generator": ((generator(),), {"steps_per_epoch": 4}),
        "torch_dataloader": ((loader,), {}),
    }
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    seen = {}
    for source, (args, kwargs) in fits.items():
        watch = GPUWatch(log_dir=tmp_path, plot=False, verbose=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GPUWatchWarning)
            model.fit(*args, epochs=1, verbose=0, callbacks=[watch], **kwargs)
        seen[source] = load_run(watch.run_dir).info["data"]
    assert {s: d["source"] for s, d in seen.items()} == {s: s for s in fits}
    assert seen["arrays"] == {"source": "arrays", "adapter": "ArrayDataAdapter", "batch_size": 16}
    assert seen["tf_data"]["transformations"] == ["prefetch", "batch", "map", "tensor_slice"]
    assert seen["py_dataset"] == {"source": "py_dataset", "adapter": "PyDatasetAdapter",
                                  "workers": 2, "use_multiprocessing": False,
                                  "max_queue_size": 4}
    assert (seen["torch_dataloader"]["num_workers"],
            seen["torch_dataloader"]["pin_memory"]) == (0, False)
    assert seen["generator"]["adapter"] == "GeneratorDataAdapter"
    # The remedy each would get, from what was recorded:
    facts = RunFacts(backend="tensorflow", data=seen["py_dataset"])
    assert "it ran with workers=2, use_multiprocessing=False" in \
        choose_remedy("input_bound", facts, {"wait_fraction": WAIT})


def test_hooks_called_without_fit_leave_the_source_unknown():
    found = data_source(None)
    assert found.value == {"source": "unknown", "adapter": None}
    assert found.reason == f"data_source: {NO_FRAME}"


def test_tf_data_pipelines_read_back_as_their_steps():
    base = tf.data.Dataset.from_tensor_slices((X, Y))
    parallel = base.map(lambda a, b: (a, b), num_parallel_calls=tf.data.AUTOTUNE).cache()
    assert tf_data_transformations(parallel.batch(8).prefetch(tf.data.AUTOTUNE)) == \
        ["prefetch", "batch", "cache", "parallel_map", "tensor_slice"]
    from_generator = tf.data.Dataset.from_generator(
        generator, output_signature=(tf.TensorSpec((16, 8)), tf.TensorSpec((16, 1))))
    assert tf_data_transformations(from_generator.take(4))[:2] == ["take", "from_generator"]


def test_a_starved_training_gets_the_generator_remedy(tmp_path, monkeypatch):
    """An idle GPU (FakeNVML) and a generator that sleeps: the run's input_bound cause says
    how to fix a generator, and what the wait costs."""
    def slow():
        for batch in generator():
            time.sleep(0.03)
            yield batch

    monkeypatch.setattr(placement, "probe_for", lambda backend: FrameworkWithGPUs())
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    watch = GPUWatch(log_dir=tmp_path, plot=False, verbose=0, interval_s=0.02,
                     nvml=FakeNVML([FakeGPU(util_pct=0, processes=[FakeProcess(used_mib=9)])]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        model.fit(slow(), epochs=1, steps_per_epoch=24, verbose=0, callbacks=[watch])
    run = load_run(watch.run_dir)
    [found] = [c for c in run.causes if c["code"] == "input_bound"]
    wait = found["evidence"]["wait_fraction"]
    assert found["remedy"].startswith("Rewrite the generator as a keras.utils.PyDataset")
    assert f"{wait:.0%} of training time went to waiting for data" in found["remedy"]
