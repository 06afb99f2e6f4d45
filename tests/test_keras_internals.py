"""The probes of Keras' private state: a real fit finds everything they look for, and each
probe that cannot read what it looks for says why in `run.json`'s "keras_probes", falls back to
"unknown" and never raises. Real Keras with TensorFlow on the CPU (this file runs against the
oldest supported Keras too: `make test-keras-oldest`)."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import warnings
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
from monitors import monitor_on_gpu, run_monitor
from pacing import Pause

from gpu_watch import GPUWatch, GPUWatchWarning, load_run
from gpu_watch.errors import take_swallowed
from gpu_watch.judging.data_wait import DataTick
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess
from gpu_watch.training import keras_internals
from gpu_watch.training.keras_internals import NO_FIT, Probed

UNKNOWN = {"source": "unknown", "adapter": None}
X = np.random.default_rng(0).random((64, 8), dtype=np.float32)
Y = np.random.default_rng(1).random((64, 1), dtype=np.float32)


def make_model():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def fake_gpu() -> FakeNVML:
    return FakeNVML([FakeGPU(util_pct=[80] * 100, processes=[FakeProcess(used_mib=700)])])


def frame_with(**local_variables):
    """A stand-in for Keras' fit frame, holding `local_variables`."""
    return SimpleNamespace(f_locals=local_variables)


def fit_frame_with_adapter(adapter):
    return frame_with(epoch_iterator=SimpleNamespace(data_adapter=adapter))


class Unreadable:
    """A frame whose locals raise when read."""

    @property
    def f_locals(self):
        raise RuntimeError("frame locals are gone")


class Failing:
    """Stands in for `sys` in keras_internals: every stack read raises, numbered."""

    def __init__(self):
        self.calls = 0

    def _fail(self, *args):
        self.calls += 1
        raise RuntimeError(f"failure {self.calls}")

    _getframe = _current_frames = _fail


# -- a real fit ----------------------------------------------------------------------------------


def test_a_real_fit_records_every_probe_as_ok(tmp_path):
    watch = GPUWatch(log_dir=tmp_path, plot=False, verbose=0, interval_s=0.02, nvml=fake_gpu())
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", GPUWatchWarning)
        # verbose=2: fit's callback list holds a progress bar for the probe to find
        make_model().fit(X, Y, batch_size=16, epochs=2, verbose=2, callbacks=[watch, Pause(0.02)])
    run = load_run(watch.run_dir)
    assert run.info["keras_probes"] == {
        "fit_frame": "ok", "data_source": "ok", "progress_bars": "ok", "fit_errors": "ok",
        "data_ticks": "ok", "loop_clock": "ok",
        # Arrays on TensorFlow are read inside the step: no fetch to time, the stacks sampled.
        "data_fetch": "data_fetch: TensorFlow reads the ArrayDataAdapter's batches inside the "
                      "step, out of Python's sight: the wait is sampled from the threads' "
                      "stacks"}
    assert run.info["data"] == {"source": "arrays", "adapter": "ArrayDataAdapter",
                                "batch_size": 16}
    assert run.samples["fetching_data"].notna().any()  # the stack probe ran on the ticks


def test_the_progress_bar_of_a_real_fit_is_found():
    found = []

    class Look(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            found.append(keras_internals.progress_bars(keras_internals.fit_frame().value))

    with contextlib.redirect_stdout(io.StringIO()):
        make_model().fit(X, Y, batch_size=32, epochs=1, verbose=2, callbacks=[Look()])
    [bars] = found
    assert bars.reason is None
    assert [type(b) for b in bars.value] == [keras.callbacks.ProgbarLogger]


# -- no fit on the stack ---------------------------------------------------------------------------


def test_hooks_called_without_fit_say_so(tmp_path):
    cb = GPUWatch(log_dir=tmp_path, plot=False, verbose=0, interval_s=0.02, nvml=fake_gpu(),
                  check_placement=False)
    cb.set_model(make_model())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)  # training runs on the CPU here
        cb.on_train_begin()
        cb.on_epoch_begin(0)
        cb.on_train_batch_begin(0)
        cb.on_train_batch_end(0, {"loss": 1.0})
        cb.on_epoch_end(0, {"loss": 1.0})
        cb.on_train_end()
    run = load_run(cb.run_dir)
    assert run.info["keras_probes"] == {
        "fit_frame": "fit_frame: no Keras fit call on the stack: the hooks were called directly, "
                     "not by fit",
        "data_source": "data_source: nothing to read without a Keras fit call",
        "progress_bars": "progress_bars: nothing to read without a Keras fit call",
        "fit_errors": "fit_errors: nothing to read without a Keras fit call",
        "data_ticks": "data_ticks: not run without a Keras fit call whose thread to watch",
        "loop_clock": "loop_clock: nothing to read without a Keras fit call",
        "data_fetch": "data_fetch: the loop clock is not attached"}
    assert run.info["data"] == UNKNOWN
    assert run.status == "completed"


def test_no_fit_frame_outside_fit():
    assert keras_internals.fit_frame() == Probed(None, NO_FIT)


# -- data_source -----------------------------------------------------------------------------------


def test_a_frame_without_the_epoch_iterator_leaves_the_source_unknown():
    found = keras_internals.data_source(frame_with(callbacks=None))
    assert found == Probed(UNKNOWN, "data_source: Keras' fit frame has no local 'epoch_iterator'")


def test_an_iterator_without_a_data_adapter_leaves_the_source_unknown():
    class EpochIterator:
        pass

    found = keras_internals.data_source(frame_with(epoch_iterator=EpochIterator()))
    assert found.value == UNKNOWN
    assert found.reason == ("data_source: fit's epoch iterator (EpochIterator) has no attribute "
                            "'data_adapter'")


def test_an_adapter_of_an_unknown_class_is_other_and_named():
    class SqliteDataAdapter:
        pass

    found = keras_internals.data_source(fit_frame_with_adapter(SqliteDataAdapter()))
    assert found.value == {"source": "other", "adapter": "SqliteDataAdapter"}
    assert found.reason.startswith("data_source: the data adapter class SqliteDataAdapter is "
                                   "not one of Keras' that gpu-watch knows (ArrayDataAdapter, ")


def test_a_subclass_of_a_known_adapter_is_known():
    class Mine(ArrayDataAdapter):
        pass

    adapter = Mine(X, Y, batch_size=8)
    found = keras_internals.data_source(fit_frame_with_adapter(adapter))
    assert found == Probed({"source": "arrays", "adapter": "Mine", "batch_size": 8})


def test_an_adapter_without_its_batch_size_names_the_attribute():
    adapter = object.__new__(ArrayDataAdapter)  # as if Keras renamed `_batch_size`
    found = keras_internals.data_source(fit_frame_with_adapter(adapter))
    assert found.value == {"source": "arrays", "adapter": "ArrayDataAdapter", "batch_size": None}
    assert found.reason == "data_source: the ArrayDataAdapter has no attribute '_batch_size'"


def test_an_adapter_whose_settings_cannot_be_read_keeps_its_source():
    adapter = object.__new__(PyDatasetAdapter)  # as if Keras renamed `py_dataset`
    found = keras_internals.data_source(fit_frame_with_adapter(adapter))
    assert found.value == {"source": "py_dataset", "adapter": "PyDatasetAdapter"}
    assert found.reason.startswith("data_source: reading the settings of PyDatasetAdapter raised "
                                   "AttributeError: ")
    assert "py_dataset" in found.reason


def test_an_exception_reading_the_frame_becomes_the_reason():
    found = keras_internals.data_source(Unreadable())
    assert found == Probed(UNKNOWN, "data_source: reading fit's epoch iterator raised "
                                    "RuntimeError: frame locals are gone")


def test_a_long_exception_message_is_cut_short():
    class Loud:
        @property
        def f_locals(self):
            raise ValueError("x" * 1000)

    found = keras_internals.data_source(Loud())
    assert found.reason.endswith("ValueError: " + "x" * 157 + "...")


# -- progress_bars ---------------------------------------------------------------------------------


def test_a_frame_without_the_callback_list_has_no_bars():
    found = keras_internals.progress_bars(frame_with(epoch_iterator=None))
    assert found == Probed([], "progress_bars: Keras' fit frame has no local 'callbacks'")


def test_a_callback_list_of_another_shape_has_no_bars():
    found = keras_internals.progress_bars(frame_with(callbacks=SimpleNamespace(items=[])))
    assert found == Probed([], "progress_bars: fit's 'callbacks' (SimpleNamespace) has no "
                               "attribute 'callbacks'")


def test_a_logger_without_its_bar_is_kept_and_named():
    logger = object.__new__(keras.callbacks.ProgbarLogger)  # as if Keras renamed `progbar`
    found = keras_internals.progress_bars(
        frame_with(callbacks=SimpleNamespace(callbacks=[keras.callbacks.History(), logger])))
    assert found == Probed([logger], "progress_bars: a ProgbarLogger has no attribute 'progbar'")


def test_an_exception_reading_the_callback_list_becomes_the_reason():
    found = keras_internals.progress_bars(Unreadable())
    assert found == Probed([], "progress_bars: reading fit's callback list raised "
                               "RuntimeError: frame locals are gone")


# -- fit_frame and data_tick -----------------------------------------------------------------------


def test_an_exception_walking_the_stack_becomes_the_reason(monkeypatch):
    monkeypatch.setattr(keras_internals, "sys", Failing())
    assert keras_internals.fit_frame() == Probed(
        None, "fit_frame: walking the stack for Keras' fit raised RuntimeError: failure 1")
    assert keras_internals.data_tick(threading.get_ident()) == Probed(
        None, "data_ticks: looking for Keras' data adapters in the threads' stacks raised "
              "RuntimeError: failure 2")


def test_the_training_thread_fetches_while_it_runs_a_data_adapter():
    ident = threading.get_ident()
    assert keras_internals.data_tick(ident) == Probed(DataTick(False, False))
    adapter_file = os.path.join(os.sep, "keras", "src", "trainers", "data_adapters", "fake.py")
    code = compile("def fetch(probe, ident):\n    return probe(ident)\n", adapter_file, "exec")
    space: dict = {}
    exec(code, space)
    assert space["fetch"](keras_internals.data_tick, ident) == Probed(DataTick(True, False))


def test_the_first_failure_of_the_stack_probe_reaches_run_json(tmp_path, monkeypatch):
    failing = Failing()
    monkeypatch.setattr(keras_internals, "sys", failing)
    monitor = monitor_on_gpu(tmp_path, fake_gpu(), data_tick=keras_internals.data_tick)
    monitor.watch_thread(sys._getframe())
    run = run_monitor(monitor, seconds=0.3)
    assert failing.calls > 1
    assert run.info["keras_probes"] == {
        "data_ticks": "data_ticks: looking for Keras' data adapters in the threads' stacks "
                      "raised RuntimeError: failure 1"}
    assert run.status == "completed"
    assert len(run.samples) > 1 and run.samples["fetching_data"].isna().all()


@pytest.mark.parametrize("probe", [keras_internals.data_source, keras_internals.progress_bars])
def test_probes_of_a_frame_never_raise(probe):
    class Hostile:
        def __getattr__(self, name):
            raise KeyError(name)

    found = probe(Hostile())
    assert found.reason is not None and "KeyError: 'f_locals'" in found.reason


# -- the trainers' state -------------------------------------------------------------------------


def test_the_jax_train_state_gives_the_arrays_that_training_carries():
    arrays = ["w", "b"]
    probed = keras_internals.jax_train_state(
        SimpleNamespace(_jax_state={"trainable_variables": tuple(arrays)}))
    assert probed == Probed(arrays)


@pytest.mark.parametrize("model, reason", [
    (SimpleNamespace(), "the model has no _jax_state (not inside fit)"),
    (SimpleNamespace(_jax_state=None), "the model has no _jax_state (not inside fit)"),
    (SimpleNamespace(_jax_state={"trainable_variables": []}),
     "model._jax_state has no trainable_variables"),
    (SimpleNamespace(_jax_state=("a", "tuple")), "model._jax_state raised AttributeError"),
])
def test_a_jax_train_state_that_cannot_be_read_says_why(model, reason):
    probed = keras_internals.jax_train_state(model)
    assert probed.value is None and probed.reason.startswith("jax_train_state: ")
    assert reason in probed.reason


def test_the_torch_device_scope_is_keras_own_attribute():
    from keras.src.backend.common import global_state

    assert keras_internals.torch_device_scope() == Probed(None)  # no scope open
    global_state.set_global_attribute("torch_device", "cpu")
    try:
        assert keras_internals.torch_device_scope() == Probed("cpu")
    finally:
        global_state.set_global_attribute("torch_device", None)


# -- on_fit_error ------------------------------------------------------------------------------


class Iterator:
    """Stands in for fit's epoch iterator: the block ends the epoch when the data runs out."""

    @contextlib.contextmanager
    def catch_stop_iteration(self):
        with contextlib.suppress(StopIteration):
            yield


class Hooks:
    """Stands in for fit's callback list."""

    def __init__(self, fail_at=None):
        self.fail_at = fail_at

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        if self.fail_at == "on_epoch_end":
            raise KeyError("a callback's bug")

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass


def test_on_fit_error_passes_on_what_leaves_the_batch_loop_and_only_that():
    """A stand-in for fit's frame: a function with fit's locals and the block."""
    seen = []

    def fit(raise_inside, callbacks):
        epoch_iterator = Iterator()
        armed = keras_internals.on_fit_error(sys._getframe(), seen.append)
        for error in raise_inside:
            with epoch_iterator.catch_stop_iteration():
                raise error
        callbacks.on_epoch_end(0)
        return armed, epoch_iterator

    hooks = Hooks()
    armed, iterator = fit([StopIteration()], hooks)
    assert armed.reason is None and seen == []  # the data ran out: no error
    assert "catch_stop_iteration" in vars(iterator) and "on_epoch_end" in vars(hooks)
    armed.value()  # the run closed: every wrapper comes off
    assert "catch_stop_iteration" not in vars(iterator) and vars(hooks) == {"fail_at": None}
    boom = ValueError("boom")
    with pytest.raises(ValueError):
        fit([boom], Hooks())
    assert seen == [boom]
    with pytest.raises(KeyError):
        fit([], Hooks(fail_at="on_epoch_end"))  # an epoch's end: the callback list sees it
    assert type(seen[-1]) is KeyError and len(seen) == 2


def test_on_fit_error_wraps_the_train_function_where_fit_has_no_block():
    """The torch trainer: no catch_stop_iteration block, so the model's train_function (an
    attribute of the model, which outlives fit) is wrapped, and put back after."""
    seen = []

    class Model:
        def __init__(self):
            self.train_function = self.step

        def step(self, data):
            if data == "bad":
                raise RuntimeError("shapes differ")
            return {"loss": 1.0}

    model = Model()
    original = model.train_function

    def fit(self, batches, callbacks):
        armed = keras_internals.on_fit_error(sys._getframe(), seen.append)
        try:
            for data in batches:
                self.train_function(data)
        finally:
            armed.value()
        return armed

    armed = fit(model, ["good"], Hooks())
    assert "no catch_stop_iteration block" in armed.reason
    assert model.train_function == original
    with pytest.raises(RuntimeError, match="shapes differ"):
        fit(model, ["good", "bad"], Hooks())
    assert [str(e) for e in seen] == ["shapes differ"]
    assert model.train_function == original


def test_a_wrapper_left_by_an_earlier_run_is_not_stacked():
    seen = []
    hooks = Hooks(fail_at="on_epoch_end")

    def fit(callbacks):
        epoch_iterator = Iterator()
        armed = keras_internals.on_fit_error(sys._getframe(), seen.append)
        with epoch_iterator.catch_stop_iteration():
            return armed

    fit(hooks)  # never taken off: its run closed some other way
    fit(hooks)
    with pytest.raises(KeyError):
        hooks.on_epoch_end(0)
    assert len(seen) == 1  # one wrapper, not two


def test_on_fit_error_says_why_it_is_not_armed():
    assert keras_internals.on_fit_error(None, print) == Probed(
        None, "fit_errors: nothing to read without a Keras fit call")

    def fit():  # no callback list to wrap
        epoch_iterator = Iterator()  # noqa: F841 - fit's local, read through the frame
        with epoch_iterator.catch_stop_iteration():
            pass
        return keras_internals.on_fit_error(sys._getframe(), print)

    probed = fit()
    assert probed.value is None
    assert probed.reason.startswith("fit_errors: wrapping what fit's errors pass through "
                                    "raised AttributeError")


def test_a_failing_reaction_leaves_the_users_exception_as_it_is():
    def react(error):
        raise RuntimeError("our own bug")

    def fit(callbacks):
        epoch_iterator = Iterator()
        keras_internals.on_fit_error(sys._getframe(), react)
        with epoch_iterator.catch_stop_iteration():
            raise KeyError("the user's")

    with pytest.raises(KeyError, match="the user's"):
        fit(Hooks())
    caught = take_swallowed("keras_internals")
    assert [(s.place, s.error) for s in caught] == [
        ("keras_internals.on_fit_error", "RuntimeError: our own bug")]
