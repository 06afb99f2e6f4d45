"""GPUWatch end to end: real Keras training with real TensorFlow on this machine's CPU, and
FakeNVML for what only a GPU would show."""

from __future__ import annotations

import threading
import time
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from pacing import Pause

from gpu_watch import GPUIdleError, GPUNotUsedError, GPUWatch, GPUWatchWarning, load_run
from gpu_watch.report.advice import cpu_banner
from gpu_watch.runlog import BATCH_COLUMNS, EPOCH_COLUMNS, SAMPLE_COLUMNS
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

SAMPLES = 256
BATCH = 32
STEPS = SAMPLES // BATCH


def make_model():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


def data(n=SAMPLES):
    rng = np.random.default_rng(0)
    return rng.random((n, 8), dtype=np.float32), rng.random((n, 1), dtype=np.float32)


def watch(tmp_path, **kwargs):
    kwargs.setdefault("plot", False)
    kwargs.setdefault("verbose", 0)
    return GPUWatch(log_dir=tmp_path / "logs", **kwargs)


def fit(model, cb, epochs=2, **kwargs):
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        return model.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=0, callbacks=[cb],
                         **kwargs)


def test_two_epochs_on_this_machine_write_the_contract(tmp_path):
    cb = watch(tmp_path)
    fit(make_model(), cb)
    run = load_run(cb.run_dir)
    for name in ("run.json", "samples.csv", "batches.csv", "epochs.csv"):
        assert (cb.run_dir / name).is_file()
    assert list(run.samples.columns) == list(SAMPLE_COLUMNS)
    assert list(run.batches.columns) == list(BATCH_COLUMNS)  # no GPU here: no GPU columns
    assert list(run.epochs.columns[: len(EPOCH_COLUMNS)]) == list(EPOCH_COLUMNS)
    assert "loss" in run.epochs.columns
    assert len(run.batches) == 2 * STEPS
    assert run.batches.groupby("epoch").size().to_dict() == {0: STEPS, 1: STEPS}
    assert list(run.batches["batch"][:STEPS]) == list(range(STEPS))
    assert (run.batches["step_s"] > 0).all()
    assert run.batches["time_s"].is_monotonic_increasing
    assert list(run.epochs["epoch"]) == [0, 1]
    assert list(run.epochs["batches"]) == [STEPS, STEPS]
    assert run.epochs["gpu_util_mean"].isna().all()  # not measured, never 0
    assert run.status == "completed"
    assert run.verdict == "cpu_fallback"
    # The driver first; then whatever else the environment check found that blocks the GPU
    # (TensorFlow without its CUDA libraries, on this machine).
    codes = [c["code"] for c in run.causes]
    environment = [f["code"] for f in run.info["environment"]["findings"]
                   if f["severity"] == "error" or f["evidence"].get("blocks_gpu")]
    assert codes[0] == "no_nvidia_driver"
    assert codes[1:] == [c for c in environment if c != "no_nvidia_driver"]
    assert list(run.epochs["verdict"]) == ["cpu_fallback", "cpu_fallback"]
    placement = run.info["placement"]
    assert placement["compute_on_gpu"] is False
    assert placement["method"] == "run_metadata"
    assert placement["op_counts"].get("CPU", 0) > 0 and placement["op_counts"].get("GPU", 0) == 0
    assert placement["cpu_compute_examples"]  # named, so a user can find them
    assert run.info["nvml"]["error"].startswith("NVMLError_LibraryNotFound")
    assert run.info["nvml"]["simulated"] is False
    assert run.info["devices"] == []
    assert (cb.run_dir / "run.json").stat().st_mode & 0o044 == 0o044  # readable by others


def test_a_gpu_that_tensorflow_cannot_see_is_cpu_fallback_never_ok(tmp_path):
    other = FakeProcess(pid=1, used_mib=30000, sm_util_pct=90)
    fake = FakeNVML([FakeGPU(util_pct=95, processes=[other])])
    cb = watch(tmp_path, nvml=fake, interval_s=0.02)
    fit(make_model(), cb)
    run = load_run(cb.run_dir)
    assert run.verdict == "cpu_fallback"
    codes = [c["code"] for c in run.causes]
    assert codes[0] == "cuda_libs_missing"  # a CUDA build of TF that sees no GPU
    assert "process_not_on_gpu" in codes  # the GPU's load is another process's
    assert len(run.samples) > 0 and (run.samples["proc_mem_mib"] == 0).all()
    assert "gpu0_util_pct" in run.batches.columns
    assert run.batches["gpu0_util_pct"].dropna().eq(95).all()


def test_hidden_gpus_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    cb = watch(tmp_path, nvml=FakeNVML([FakeGPU(), FakeGPU()]))
    fit(make_model(), cb, epochs=1)
    run = load_run(cb.run_dir)
    assert run.verdict == "cpu_fallback"
    assert run.causes[0]["code"] == "gpus_hidden"
    assert run.causes[0]["evidence"]["cuda_visible_devices"] == "-1"
    assert run.info["devices"] == []


@pytest.mark.parametrize("action", ["stop", "raise"])
def test_an_idle_gpu_ends_training_early(tmp_path, action):
    fake = FakeNVML([FakeGPU(util_pct=0, processes=[FakeProcess(used_mib=500)])])
    cb = watch(tmp_path, nvml=fake, interval_s=0.02, idle_patience_s=0.3, on_idle=action)
    x, y = data()
    model = make_model()
    callbacks = [cb, Pause(0.02)]
    if action == "raise":
        with pytest.raises(GPUIdleError) as raised:
            model.fit(x, y, epochs=20, batch_size=BATCH, verbose=0, callbacks=callbacks)
        assert raised.value.evidence["duration_s"] >= 0.3
        assert raised.value.evidence["util_mean_pct"] == {"0": 0.0}
    else:
        history = model.fit(x, y, epochs=20, batch_size=BATCH, verbose=0, callbacks=callbacks)
        assert len(history.epoch) < 20
    run = load_run(cb.run_dir)
    assert run.status == "stopped_idle"
    assert run.info["idle"]["events"][0]["action"] == action
    assert 0 < len(run.batches) < 20 * STEPS
    assert len(run.samples) > 0


def test_idle_warns_once_by_default(tmp_path):
    fake = FakeNVML([FakeGPU(util_pct=0)])
    cb = GPUWatch(log_dir=tmp_path, nvml=fake, interval_s=0.02, idle_patience_s=0.2, plot=False,
                  verbose=0)
    x, y = data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_model().fit(x, y, epochs=4, batch_size=BATCH, verbose=0,
                         callbacks=[cb, Pause(0.02)])
    idle = [w for w in caught if w.category.__name__ == "GPUIdleWarning"]
    assert len(idle) == 1 and "under 10%" in str(idle[0].message)
    assert load_run(cb.run_dir).status == "completed"


def test_require_gpu_raises_after_the_first_step(tmp_path):
    cb = watch(tmp_path, require_gpu=True)
    with pytest.raises(GPUNotUsedError) as raised:
        fit(make_model(), cb, epochs=3)
    assert raised.value.causes[0] == "no_nvidia_driver"
    assert "No NVIDIA driver" in str(raised.value) and ".;" not in str(raised.value)
    # The causes in the order to fix them, worded as everywhere else (`report.advice`).
    assert str(raised.value) == (f"{cpu_banner(load_run(cb.run_dir).causes)} Run folder: "
                                 f"{cb.run_dir}")
    run = load_run(cb.run_dir)
    assert run.status == "failed"
    assert run.info["error"]["type"] == "GPUNotUsedError"
    assert len(run.batches) == 1


def test_an_exception_mid_epoch_closes_the_run_as_failed(tmp_path):
    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 5:
                raise ZeroDivisionError("data went wrong")

    cb = watch(tmp_path)
    x, y = data()
    with pytest.raises(ZeroDivisionError):
        make_model().fit(x, y, epochs=2, batch_size=BATCH, verbose=0, callbacks=[cb, Boom()])
    run = load_run(cb.run_dir)  # closed as fit raised: nothing to wait for
    assert run.status == "failed"
    assert len(run.batches) == 6  # batches 0..5 were measured before the error
    assert run.verdict == "cpu_fallback"
    assert not [t for t in threading.enumerate() if t.name.startswith("gpu-watch")]


def test_reuse_across_two_fits_gives_two_complete_runs(tmp_path):
    cb = watch(tmp_path)
    model = make_model()
    fit(model, cb, epochs=1)
    first = cb.run_dir
    fit(model, cb, epochs=2)
    second = cb.run_dir
    assert first != second
    assert [len(load_run(p).epochs) for p in (first, second)] == [1, 2]
    assert {load_run(p).status for p in (first, second)} == {"completed"}


def test_validation_and_initial_epoch(tmp_path):
    cb = watch(tmp_path)
    x, y = data()
    make_model().fit(x, y, epochs=4, initial_epoch=2, batch_size=BATCH, verbose=0,
                     validation_data=data(64), callbacks=[cb])
    run = load_run(cb.run_dir)
    assert list(run.epochs["epoch"]) == [2, 3]
    assert run.epochs["val_loss"].notna().all()
    assert set(run.batches["epoch"]) == {2, 3}


def test_tf_data_and_python_generators(tmp_path):
    x, y = data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    cb = watch(tmp_path)
    make_model().fit(dataset, epochs=1, verbose=0, callbacks=[cb])
    assert len(load_run(cb.run_dir).batches) == STEPS

    def batches():
        for i in range(0, SAMPLES, BATCH):
            yield x[i:i + BATCH], y[i:i + BATCH]

    cb = watch(tmp_path)
    make_model().fit(batches(), epochs=1, steps_per_epoch=STEPS, verbose=0, callbacks=[cb])
    run = load_run(cb.run_dir)
    assert len(run.batches) == STEPS
    assert run.batches["wait_s"].iloc[1:].notna().all()


def test_steps_per_execution_rows_cover_several_steps(tmp_path):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    cb = watch(tmp_path)
    fit(model, cb, epochs=1)
    run = load_run(cb.run_dir)
    assert list(run.batches["steps"]) == [4, 4]
    assert list(run.batches["batch"]) == [3, 7]
    assert run.epochs["batches"].iloc[0] == 2


def test_nvml_is_never_called_from_the_training_thread_per_batch(tmp_path):
    fake = FakeNVML([FakeGPU(util_pct=50, processes=[FakeProcess(used_mib=10)])])
    counts = {}

    class Count(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            counts.setdefault("first", fake.calls_from("MainThread"))

        def on_epoch_end(self, epoch, logs=None):
            counts["last"] = fake.calls_from("MainThread")

    cb = watch(tmp_path, nvml=fake, interval_s=0.02)
    x, y = data()
    make_model().fit(x, y, epochs=2, batch_size=BATCH, verbose=0, callbacks=[cb, Count()])
    assert counts["first"] > 0  # set-up reads devices once
    assert counts["last"] == counts["first"]
    assert fake.calls_from("gpu-watch-sampler") > 0


def test_batch_hooks_never_read_self_model(tmp_path, monkeypatch):
    cb = watch(tmp_path, nvml=FakeNVML([FakeGPU(util_pct=50)]))
    model = make_model()
    reads = []
    original = type(cb).model

    def guarded(self):
        reads.append(True)
        return original.fget(self)

    monkeypatch.setattr(type(cb), "model", property(guarded))
    fit(model, cb, epochs=1)
    assert reads == []
    assert cb.async_safe is True


def test_hooks_without_fit(tmp_path):
    fake = FakeNVML([FakeGPU(util_pct=[80] * 100, processes=[FakeProcess(used_mib=700)])])
    cb = watch(tmp_path, nvml=fake, interval_s=0.02, check_placement=False)
    cb.set_model(make_model())
    cb.on_train_begin()
    cb.on_epoch_begin(0)
    for batch in range(3):
        cb.on_train_batch_begin(batch)
        cb.on_train_batch_end(batch, {"loss": 1.0})
    cb.on_epoch_end(0, {"loss": 0.5})
    cb.on_train_end()
    run = load_run(cb.run_dir)
    assert list(run.batches["batch"]) == [0, 1, 2]
    assert run.batches["gpu0_util_pct"].eq(80).all()
    assert run.epochs["gpu_util_mean"].iloc[0] == pytest.approx(80)
    assert run.epochs["gpu_mem_peak_mib"].iloc[0] == pytest.approx(1000)
    assert run.epochs["loss"].iloc[0] == 0.5
    assert (run.samples["proc_mem_mib"] == 700).all()
    assert run.status == "completed"
    assert run.info["nvml"]["simulated"] is True
    assert run.verdict == "cpu_fallback"  # TensorFlow sees no GPU here, whatever NVML says


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"interval_s": 0}, "interval_s .* got 0"),
        ({"idle_threshold_pct": 101}, "idle_threshold_pct .* got 101"),
        ({"idle_threshold_pct": "10"}, "idle_threshold_pct .* got '10'"),
        ({"idle_patience_s": -1}, "idle_patience_s .* got -1"),
        ({"on_idle": "halt"}, "on_idle must be one of 'warn', 'stop', 'raise', got 'halt'"),
        ({"require_gpu": "yes"}, "require_gpu must be True or False, got 'yes'"),
        ({"plot": 1}, "plot must be True or False, got 1"),
        ({"run_name": "a/b"}, "run_name .* got 'a/b'"),
        ({"log_dir": ""}, "log_dir must be a non-empty path, got ''"),
        ({"nvml": "pynvml"}, "nvml must be None, .* got 'pynvml'"),
        ({"verbose": 2}, "verbose must be 0 or 1, got 2"),
        ({"on_log_error": "ignore"}, "on_log_error must be one of 'raise', 'warn', got 'ignore'"),
    ],
)
def test_bad_arguments_fail_in_init_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPUWatch(**kwargs)


def test_time_spent_in_a_slow_generator_counts_as_waiting_for_data(tmp_path):
    x, y = data()

    def slow():
        while True:
            for i in range(0, SAMPLES, BATCH):
                time.sleep(0.03)  # a starved input pipeline
                yield x[i:i + BATCH], y[i:i + BATCH]

    starved = watch(tmp_path, interval_s=0.02)
    make_model().fit(slow(), epochs=2, steps_per_epoch=3 * STEPS, verbose=0,
                     callbacks=[starved])
    fed = watch(tmp_path, interval_s=0.02)
    fit(make_model(), fed, epochs=2)
    # TensorFlow pulls the batch inside the step, and runs the generator on a thread of its
    # own: each batch is stamped as it leaves the generator, against the step that took it.
    last = load_run(starved.run_dir).epochs.iloc[-1]
    assert last["wait_fraction"] > 0.5 and last["wait_measure"] == "ready_timed"
    # Arrays: a low share where enough stack samples came, else not measured (NaN): never high.
    assert not load_run(fed.run_dir).epochs["wait_fraction"].iloc[-1] >= 0.3


def test_the_verdict_is_there_for_code_that_checks_it(tmp_path):
    cb = watch(tmp_path)
    assert cb.verdict is None  # no run yet
    fit(make_model(), cb, epochs=1)
    assert cb.verdict == "cpu_fallback" == load_run(cb.run_dir).verdict
