"""Live figures during an epoch: the batch `logs` carry the latest reading, which Keras'
progress bar shows as it is (not averaged over the epoch) and `TensorBoard(update_freq="batch")`
writes per batch. Real Keras training with TensorFlow on the CPU; FakeNVML serves a GPU whose
utilization climbs, so the latest reading and a running mean of readings differ.
(JAX and torch: test_backends.py.)"""

from __future__ import annotations

import contextlib
import io
import math
import re
import threading
import warnings

import keras
import numpy as np
import pytest
from pacing import Pause

from gpu_watch import GPUWatch, GPUWatchWarning, load_run
from gpu_watch.sensing.nvml import Reading
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess
from gpu_watch.training import keras_internals
from gpu_watch.views.live import HOLD_S, LIVE_KEYS, LiveFigures, live_line

STEPS = 10
BATCH_S = 0.1
CLIMB = [10, 20, 30, 40, 50, 60, 70, 80, 90]  # percent, one value per 0.2 s


def climbing_gpu() -> FakeNVML:
    return FakeNVML([FakeGPU(util_pct=CLIMB, mem_used_mib=[1024, 2048, 3072, 4096],
                             processes=[FakeProcess(used_mib=1000,
                                                    sm_util_pct=[u - 5 for u in CLIMB])])],
                    step_s=0.2)


class Recorder(keras.callbacks.Callback):
    """Keeps what the batch logs held for the callbacks after GPUWatch."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[dict[str, float]] = []

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append({k: logs[k] for k in LIVE_KEYS if k in logs})


def fit(callbacks, verbose=0, epochs=1):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((STEPS * 8, 4), dtype=np.float32)
    y = np.zeros((STEPS * 8, 1), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)  # "training runs on the CPU"
        return model.fit(x, y, batch_size=8, epochs=epochs, verbose=verbose,
                         callbacks=callbacks)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("live")
    watch = GPUWatch(log_dir=folder / "gpu", nvml=climbing_gpu(), interval_s=0.05, plot=False,
                     verbose=0)
    recorder = Recorder()
    board = keras.callbacks.TensorBoard(log_dir=str(folder / "tb"), update_freq="batch",
                                        write_graph=False, profile_batch=0)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        history = fit([watch, recorder, board, Pause(BATCH_S)], verbose=1)
    return {"batches": recorder.batches, "printed": printed.getvalue(), "folder": folder,
            "history": history.history, "run": load_run(watch.run_dir)}


def test_every_batch_carries_the_live_keys_that_have_a_reading(trained):
    batches = trained["batches"]
    assert len(batches) == STEPS
    assert list(LIVE_KEYS) == ["gpu_util", "gpu_proc_util", "gpu_mem_peak_gib", "gpu_sm_active"]
    # A key without a reading (the first batches, SM activity between GPM's once-a-second
    # reads) is left out rather than NaN.
    assert all(set(b) <= set(LIVE_KEYS) for b in batches)
    assert not any(math.isnan(v) for b in batches for v in b.values())
    assert sum("gpu_util" in b for b in batches) >= STEPS - 2


def test_each_value_is_a_reading_and_they_follow_the_gpu(trained):
    readings = set(trained["run"].samples["util_pct"].dropna())
    measured = [b["gpu_util"] for b in trained["batches"] if "gpu_util" in b]
    assert len(measured) >= STEPS - 2  # only the first batch or two may come before a reading
    assert set(measured) <= readings
    assert measured == sorted(measured)  # the GPU's utilization climbs, and so do they
    assert len(set(measured)) >= 3 and measured[-1] > sum(measured) / len(measured)
    own = [b["gpu_proc_util"] for b in trained["batches"] if "gpu_proc_util" in b]
    assert own and set(own) <= set(trained["run"].samples["proc_util_pct"].dropna())
    assert own == sorted(own)
    memory = [b["gpu_mem_peak_gib"] for b in trained["batches"] if "gpu_util" in b]
    assert set(memory) <= {1.0, 2.0, 3.0, 4.0} and memory[-1] == 4.0


def test_the_progress_bar_shows_the_latest_reading_not_a_running_mean(trained):
    """Keras 3's ProgbarLogger averages what it is not told is stateful; from 3.15 it shows
    every logs value as it is. Each update of the bar must show that batch's reading."""
    updates = {}
    for chunk in re.split(r"[\r\n]", trained["printed"]):
        step = re.search(rf"(\d+)/{STEPS}", chunk)
        value = re.search(r"gpu_util: ([0-9.]+)", chunk)
        if step and value and "gpu_verdict" not in chunk:  # the epoch's final line: its mean
            updates[int(step.group(1))] = float(value.group(1))
    assert len(updates) >= STEPS // 2
    batches = trained["batches"]
    for step, shown in updates.items():
        assert shown == pytest.approx(batches[step - 1]["gpu_util"])
    measured = [batches[s - 1]["gpu_util"] for s in sorted(updates)]
    assert "nan" not in trained["printed"]
    running_mean = sum(measured) / len(measured)
    assert updates[max(updates)] > running_mean  # what an averaging bar would have shown


def test_the_epoch_logs_still_carry_the_epoch_figures(trained):
    history, epochs = trained["history"], trained["run"].epochs
    assert history["gpu_util"] == pytest.approx(epochs["gpu_util_mean"].tolist())
    final = [line for line in re.split(r"[\r\n]", trained["printed"]) if "gpu_verdict" in line]
    assert f"gpu_util: {history['gpu_util'][0]:.4f}" in final[-1]


def test_tensorboard_writes_the_readings_per_batch(trained):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    events = EventAccumulator(str(trained["folder"] / "tb" / "train"),
                              size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    tag = "batch_gpu_util"
    if tag in events.Tags()["tensors"]:
        written = [float(make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
    else:
        written = [e.value for e in events.Scalars(tag)]
    assert written == pytest.approx([b["gpu_util"] for b in trained["batches"]], nan_ok=True)


def test_log_metrics_false_adds_no_batch_keys(tmp_path):
    recorder = Recorder()
    fit([GPUWatch(log_dir=tmp_path, nvml=climbing_gpu(), interval_s=0.05, plot=False,
                  verbose=0, log_metrics=False), recorder, Pause(BATCH_S)])
    assert recorder.batches == [{}] * STEPS


def test_a_batch_key_already_in_the_logs_is_left_alone(tmp_path):
    class Earlier(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            logs["gpu_util"] = -1.0

    recorder = Recorder()
    fit([Earlier(), GPUWatch(log_dir=tmp_path, nvml=climbing_gpu(), interval_s=0.05,
                             plot=False, verbose=0), recorder])
    assert [b["gpu_util"] for b in recorder.batches] == [-1.0] * STEPS
    assert all("gpu_proc_util" in b for b in recorder.batches)


def test_the_batch_hook_never_calls_nvml_on_the_training_thread(tmp_path):
    """Every NVML call during a batch hook, by any thread, is recorded; none may come from the
    thread that runs the hook."""
    fake = climbing_gpu()
    calls: list[tuple[str, int]] = []

    class Spy:
        def __getattr__(self, name):
            attr = getattr(fake, name)
            if not callable(attr) or not name.startswith("nvml"):
                return attr

            def call(*args, **kwargs):
                calls.append((name, threading.get_ident()))
                return attr(*args, **kwargs)

            return call

    in_hook: list[tuple[int, int, int]] = []

    class Watched(GPUWatch):
        def on_train_batch_end(self, batch, logs=None):
            start = len(calls)
            super().on_train_batch_end(batch, logs)
            in_hook.append((threading.get_ident(), start, len(calls)))

    recorder = Recorder()
    fit([Watched(log_dir=tmp_path, nvml=Spy(), interval_s=0.02, plot=False, verbose=0),
         recorder, Pause(BATCH_S)])
    assert any(not math.isnan(b["gpu_util"]) for b in recorder.batches)
    assert any(ident != in_hook[0][0] for _, ident in calls)  # the sampler thread reads NVML
    for ident, start, end in in_hook:
        assert [c for c in calls[start:end] if c[1] == ident] == []


# -- LiveFigures, without Keras --------------------------------------------------------------


def reading(t, gpu=0, **fields):
    return Reading(time_s=t, gpu=gpu, **fields)


def test_live_figures_start_empty_and_take_each_tick():
    live = LiveFigures(interval_s=0.2)
    assert live.values == {}
    live.add([reading(0.2, util_pct=30, proc_util_pct=20, mem_used_mib=2048, sm_active_pct=7)])
    assert live.values == {"gpu_util": 30.0, "gpu_proc_util": 20.0, "gpu_mem_peak_gib": 2.0,
                           "gpu_sm_active": 7.0}
    live.add([reading(0.4, util_pct=80, proc_util_pct=70, mem_used_mib=1024, sm_active_pct=9)])
    assert live.values["gpu_util"] == 80.0 and live.values["gpu_mem_peak_gib"] == 1.0
    assert live.time_s == 0.4


def test_a_missing_value_holds_the_last_one_for_hold_s_then_its_key_goes():
    live = LiveFigures(interval_s=0.2)
    live.add([reading(1.0, util_pct=50, proc_util_pct=40)])
    live.add([reading(1.0 + HOLD_S, util_pct=55)])  # no per-process sample this tick
    assert live.values["gpu_proc_util"] == 40.0
    live.add([reading(1.01 + HOLD_S, util_pct=55)])
    assert "gpu_proc_util" not in live.values and live.values["gpu_util"] == 55.0
    slow = LiveFigures(interval_s=10.0)  # slower ticks hold their value for 2.5 of them
    assert slow.hold_s == 25.0


def test_a_lost_gpu_loses_its_key_not_keeps_its_last_value():
    live = LiveFigures(interval_s=0.2)
    live.add([reading(0.2, util_pct=50)])
    live.add([reading(0.4, util_pct=None, lost=True)])
    assert live.values["gpu_util"] == 50.0  # within the hold: the GPU may answer again
    live.add([reading(0.4 + HOLD_S + 0.01, util_pct=None, lost=True)])
    assert "gpu_util" not in live.values


def test_several_gpus_mean_utilization_and_peak_memory():
    live = LiveFigures(interval_s=0.2)
    live.add([reading(0.2, gpu=0, util_pct=20, mem_used_mib=1024),
              reading(0.2, gpu=3, util_pct=60, mem_used_mib=3072, proc_util_pct=10)])
    assert live.values["gpu_util"] == 40.0
    assert live.values["gpu_mem_peak_gib"] == 3.0
    assert live.values["gpu_proc_util"] == 10.0  # the GPU that has a figure
    assert "gpu_sm_active" not in live.values


def test_the_notebook_line_says_what_was_not_measured_as_n_a():
    assert live_line({}, None, "running", 3.2) == (
        "gpu-watch [running, 3 s]: GPU util n/a | this training n/a | memory n/a | "
        "verdict not judged yet")
    values = {"gpu_util": 42.4, "gpu_proc_util": 40.0, "gpu_mem_peak_gib": 2.5}
    # A run that watches no GPU says so once, not "n/a" three times.
    assert live_line({}, "cpu_fallback", "running", 3.2, gpus=0) == (
        "gpu-watch [running, 3 s]: no GPU watched | verdict cpu_fallback")
    assert live_line(values, "ok", "completed", 61) == (
        "gpu-watch [completed, 61 s]: GPU util 42% | this training 40% | memory 2.5 GiB | "
        "verdict ok")


# -- Keras' progress bar ---------------------------------------------------------------------


def logger_with(bar):
    logger = keras.callbacks.ProgbarLogger()
    logger.progbar = bar
    return logger


def shown(bar, steps):
    """What the bar displays for gpu_util after each of `steps` updates."""
    out = []
    for step, value in enumerate(steps, start=1):
        bar.update(step, [("gpu_util", value)])
        total, count = bar._values["gpu_util"]
        out.append(total / count)
    return out


def test_a_bar_that_averages_is_told_the_live_keys_are_readings():
    """Keras <= 3.14 made each epoch's bar as `Progbar(target)`, which averages every value."""
    averaging = keras.utils.Progbar(target=10, verbose=0)
    assert shown(averaging, [10.0, 20.0, 90.0]) == pytest.approx([10.0, 15.0, 40.0])
    bar = keras.utils.Progbar(target=10, verbose=0)
    logger = logger_with(bar)
    assert keras_internals.show_as_is([logger], LIVE_KEYS) == [logger]  # a new bar comes each epoch
    assert set(LIVE_KEYS) <= bar.stateful_metrics
    assert shown(bar, [10.0, 20.0, 90.0]) == [10.0, 20.0, 90.0]


def test_a_bar_that_shows_values_as_they_are_is_left_alone():
    """Keras >= 3.15: `stateless_metrics=set()`; and no bar yet: asked again next batch."""
    as_is = logger_with(keras.utils.Progbar(target=10, verbose=0, stateless_metrics=set()))
    not_yet = logger_with(None)
    assert keras_internals.show_as_is([as_is, not_yet], LIVE_KEYS) == [not_yet]
    assert as_is.progbar.stateful_metrics is None


def test_the_bars_of_the_running_fit_are_found():
    found = []

    class Look(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            bars = keras_internals.progress_bars(keras_internals.fit_frame().value)
            assert bars.reason is None
            found.extend(bars.value)

    with contextlib.redirect_stdout(io.StringIO()):
        fit([Look()], verbose=1)
    assert len(found) == 1 and isinstance(found[0], keras.callbacks.ProgbarLogger)
    assert keras_internals.progress_bars(None).value == []
