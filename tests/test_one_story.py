"""One run, one story: the summary, the epoch rows, the figures and the causes agree with the
verdict, for short epochs, the compile step and small samples of sampler ticks."""

from __future__ import annotations

import inspect
import io
import json
import re
import tempfile
import threading
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from monitors import monitor_on_gpu, run_for
from pacing import Pause
from runfolders import run_info, write_run

from gpu_watch import GPUWatch, GPUWatchWarning, Run, load_run, rejudge
from gpu_watch.cli import main as cli_main
from gpu_watch.judging.assessment import epoch_row, record_judgement
from gpu_watch.judging.causes import cause
from gpu_watch.judging.timeline import Timeline
from gpu_watch.judging.verdict import CPU_FALLBACK, GPUStats, Setting, judge
from gpu_watch.report import summary_text
from gpu_watch.report.figures import plot_epochs, plot_utilization
from gpu_watch.report.view import banner_text
from gpu_watch.runlog import RunRecord
from gpu_watch.sensing.nvml import Reading
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess
from gpu_watch.training.monitor import _finish_open_runs

DATA = Path(__file__).parent / "data"
REAL_RUNS = sorted(p.parent for p in DATA.glob("**/run.json"))


# -- every real run folder -----------------------------------------------------------------


@pytest.mark.parametrize("folder", REAL_RUNS, ids=lambda p: p.name)
def test_a_real_run_s_summary_epochs_and_verdict_agree(folder):
    run = rejudge(folder)
    text = summary_text(run)
    judged = run.info["judged"]
    for gpu, figures in judged.items():
        verdict = run.info["gpu_verdicts"][gpu]
        share = figures["idle_fraction"]
        if share is not None:
            assert f"idle {round(100 * share)}% of its readings after step 0" in text
            assert (verdict == "idle") == (share > 0.5), (gpu, verdict, share)
    for row in run.epochs.to_dict("records"):
        share = row["idle_fraction"]
        if row["verdict"] in ("ok", "idle"):
            assert (row["verdict"] == "idle") == (share > 0.5), row
        assert row["verdict"] != "unmonitored"  # none of these GPUs failed to read
    before_epochs = text.split("Epochs:")[0].splitlines()
    assert len(before_epochs) == len(set(before_epochs))  # no line said twice


# -- short epochs and the compile step -------------------------------------------------------


def test_epochs_shorter_than_the_interval_take_the_reading_that_covers_them(tmp_path):
    fake = FakeNVML([FakeGPU(util_pct=80, processes=[FakeProcess(used_mib=64,
                                                                 sm_util_pct=80)])])
    monitor = monitor_on_gpu(tmp_path, fake, interval_s=0.2)
    start = monitor.elapsed_s()
    for epoch in range(3):
        monitor.begin_epoch(epoch)
        t = monitor.elapsed_s()
        monitor.timeline.add_batch(epoch, 0, 1, t, t + 0.001, None)
        if epoch == 0:
            monitor.first_step({"compute_on_gpu": True})
        row = monitor.end_epoch(epoch, {"loss": 1.0}).row
        # Ended before NVML's next sample: its figures are not known yet, so none are given.
        assert row["verdict"] is None and row["gpu_util_mean"] is None
        assert monitor.elapsed_s() - start < 0.2
    monitor.finish("completed")
    run = load_run(monitor.run_dir)
    # The sampler's next reading (or the closing one) covers each of them.
    assert set(run.epochs["verdict"]) <= {"ok"} and len(run.epochs) == 3
    assert run.epochs["gpu_util_mean"].notna().all()
    assert run.verdict == "ok"


def test_an_epoch_without_any_reading_is_unmeasured_not_unmonitored():
    setting = Setting(compute_on_gpu=True, framework_gpus=1, nvml_gpus=1, visible_gpus=1)
    assert judge(setting, [GPUStats(0, readings=0)], None).verdict == "unmeasured"
    assert judge(setting, [GPUStats(0, readings=3)], None).verdict == "unmonitored"
    assert judge(setting, [GPUStats(0, readings=0)], None).gpu_verdicts == {0: "unmeasured"}


def test_the_compile_step_is_its_own_column_and_out_of_every_verdict(tmp_path):
    fake = FakeNVML([FakeGPU(util_pct=0, processes=[FakeProcess(used_mib=64, sm_util_pct=0)])])
    monitor = monitor_on_gpu(tmp_path, fake, interval_s=0.02)
    monitor.begin_epoch(0)
    t0 = monitor.elapsed_s()
    run_for(monitor, 0.3)  # step 0 compiles: the GPU reads 0 %
    fake.gpus[0].util_pct = 90
    fake.gpus[0].processes[0].sm_util_pct = 90
    t1 = monitor.elapsed_s()
    monitor.timeline.add_batch(0, 0, 1, t0, t1, None)
    monitor.first_step({"compute_on_gpu": True})
    for batch in range(1, 4):
        run_for(monitor, 0.1)
        t = monitor.elapsed_s()
        monitor.timeline.add_batch(0, batch, 1, t - 0.1, t, 0.0)
    monitor.end_epoch(0, {})
    monitor.finish("completed")
    run = load_run(monitor.run_dir)
    row = run.epochs.iloc[0]
    assert row["verdict"] == "ok" and row["idle_fraction"] < 0.5
    assert row["first_step_s"] == pytest.approx(0.3)
    assert row["step_s_mean"] == pytest.approx(0.1)  # step 0 left out
    assert row["batches"] == 4
    assert run.info["first_step_s"] == pytest.approx(t1 - t0, abs=1e-3)
    assert run.verdict == "ok"
    text = summary_text(run)
    assert "step 0 s" in text


# -- the wait for data -----------------------------------------------------------------------


def _demo_fit(watch, images, labels):
    from gpu_watch.demo import build_model

    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=2, batch_size=64, verbose=0, callbacks=[watch])


def test_the_demo_s_in_memory_fit_never_shows_a_false_wait():
    from gpu_watch.demo import make_images

    images, labels = make_images(640)
    shares = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        for repeat in range(20):
            watch = GPUWatch(log_dir=tempfile.mkdtemp(), plot=False, verbose=0)
            _demo_fit(watch, images, labels)
            run = load_run(watch.run_dir)
            shares += [(repeat, e, w) for e, w in zip(run.epochs["epoch"],
                                                        run.epochs["wait_fraction"],
                                                        strict=True)]
            assert "input_bound" not in [c["code"] for c in run.causes]
    assert all(w <= 0.10 for _, _, w in shares if w == w), shares


@pytest.mark.parametrize(("generator_s", "compute_s", "low", "high"), [
    (0.01, 0.03, 0.0, 0.2),  # it keeps up: tf.data runs it ahead of the step, nothing waits
    (0.06, 0.01, 0.6, 1.0),  # it cannot: the step waits for it most of the time
])
def test_a_generator_behind_tf_data_counts_only_when_it_holds_training_up(
        tmp_path, generator_s, compute_s, low, high):
    def batches():
        while True:
            time.sleep(generator_s)
            yield np.zeros((8, 4), "float32"), np.zeros((8, 1), "float32")

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    watch = GPUWatch(log_dir=tmp_path, plot=False, verbose=0, interval_s=0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(batches(), steps_per_epoch=25, epochs=1, verbose=0,
                  callbacks=[Pause(compute_s), watch])
    wait = load_run(watch.run_dir).info["wait"]
    assert wait["measure"] == "ready_timed"  # each batch stamped as it left the generator
    assert low <= wait["fraction"] <= high, wait


@pytest.mark.parametrize(("call", "python_s", "compute_s", "low", "high"), [
    ("numpy_function", 0.01, 0.03, 0.0, 0.2),  # it keeps up: tf.data runs it ahead of the step
    # It cannot: the step waits for it, about 0.8 of the loop on a quiet machine. Beside two
    # busy processes the step itself runs slower (a `tf.py_function` read 0.597 there).
    ("numpy_function", 0.06, 0.01, 0.5, 1.0),
    ("py_function", 0.06, 0.01, 0.5, 1.0),
    ("from_generator", 0.06, 0.01, 0.5, 1.0),
])
def test_python_inside_a_tf_data_pipeline_counts_only_when_it_holds_training_up(
        tmp_path, call, python_s, compute_s, low, high):
    import tensorflow as tf

    x, y = np.zeros((200, 4), "float32"), np.zeros((200, 1), "float32")

    def slow(x, y):
        time.sleep(python_s)
        return x, y

    def mapped(x, y):
        x, y = getattr(tf, call)(slow, [x, y], (tf.float32, tf.float32))
        return tf.ensure_shape(x, (None, 4)), tf.ensure_shape(y, (None, 1))

    def batches():
        for i in range(0, 200, 8):
            yield slow(x[i:i + 8], y[i:i + 8])

    if call == "from_generator":
        data = tf.data.Dataset.from_generator(batches, output_signature=(
            tf.TensorSpec((None, 4), tf.float32), tf.TensorSpec((None, 1), tf.float32)))
    else:
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).map(mapped)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    watch = GPUWatch(log_dir=tmp_path, plot=False, verbose=0, interval_s=0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(data, epochs=2, verbose=0, callbacks=[Pause(compute_s), watch])
    info = load_run(watch.run_dir).info
    assert info["keras_probes"]["data_fetch"] == "ok"
    assert info["wait"]["measure"] == "ready_timed"  # each batch stamped as Python returned it
    assert low <= info["wait"]["fraction"] <= high, info["wait"]


def test_a_generator_that_holds_training_up_reads_so_under_steps_per_execution(tmp_path):
    def batches():
        while True:
            time.sleep(0.02)  # the step itself takes about 1 ms a batch
            yield np.zeros((8, 4), "float32"), np.zeros((8, 1), "float32")

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    watch = GPUWatch(log_dir=tmp_path, plot=False, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(batches(), steps_per_epoch=40, epochs=2, verbose=0, callbacks=[watch])
    run = load_run(watch.run_dir)
    assert set(run.batches["steps"]) == {4}  # one hook for four batches
    assert run.info["wait"]["measure"] == "ready_timed"
    assert 0.6 <= run.info["wait"]["fraction"] <= 1.0, run.info["wait"]  # not the last batch's


# -- causes, once each and in the order to fix them ------------------------------------------


def test_every_blocking_finding_is_a_cause_in_the_order_to_fix_them():
    libs = cause("cuda_libs_missing", "Even once a driver is installed, TensorFlow ...",
                 severity="warning", blocks_gpu=True)
    driver = cause("no_nvidia_driver", "No NVIDIA driver is loaded.")
    # A driver a minor CUDA version behind usually works: a warning that blocks nothing.
    minor = cause("driver_too_old", "CUDA 12.4 < 12.5", severity="warning")
    setting = Setting(framework_gpus=0, nvml_error="NVMLError_LibraryNotFound: not found",
                      environment=(libs, minor, driver))
    judgement = judge(setting, [], None)
    assert judgement.verdict == CPU_FALLBACK
    assert [c.code for c in judgement.causes] == ["no_nvidia_driver", "cuda_libs_missing"]
    hint = cause("allocator_misconfigured", severity="info")
    quiet = Setting(framework_gpus=0, nvml_error="NVMLError_LibraryNotFound: x",
                    environment=(hint,))
    assert [c.code for c in judge(quiet, [], None).causes] == ["no_nvidia_driver"]


def test_this_machine_s_run_names_every_blocker_once_without_a_warning(tmp_path, capsys):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((32, 4), "float32"), np.zeros((32, 1), "float32")
    watch = GPUWatch(log_dir=tmp_path)
    # A project whose tests turn every warning into an error keeps passing on a machine
    # without a GPU: training there on the CPU is no surprise, and the summary line says it.
    with warnings.catch_warnings():
        warnings.simplefilter("error", GPUWatchWarning)
        model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[watch])
    printed = capsys.readouterr().out
    assert printed.startswith("gpu-watch: verdict cpu_fallback (completed); measured 4 "
                              "batches in 1 finished epoch; run folder ")
    watch.wait_for_report()
    run = load_run(watch.run_dir)
    codes = [c["code"] for c in run.causes]
    assert codes[0] == "no_nvidia_driver"
    findings = [f["code"] for f in run.info["environment"]["findings"]]
    if "cuda_libs_missing" in findings:  # TensorFlow without its CUDA libraries
        assert codes[:2] == ["no_nvidia_driver", "cuda_libs_missing"]
    assert len(codes) >= 2  # the driver, and the build or its libraries: an order to tell
    for text in (summary_text(run), printed):
        for c in run.causes:
            assert text.count(c["message"]) == 1, c["message"]
        assert text.count("First: ") == 1 and text.count("Then: ") == len(codes[1:])
        first = re.search(rf"First: (\[\w+\] )?{codes[0]}:", text)
        then = re.search(rf"Then: (\[\w+\] )?{codes[-1]}:", text)
        assert first and then and first.start() < then.start(), text
    summary = summary_text(run)
    assert ".;" not in summary and "NVML: NVMLError" not in summary
    banner = banner_text(run)
    assert banner.count("Then:") == len(codes[1:]) and banner.count("First:") == 1
    assert banner.index("First:") < banner.index("Then:") and "`" not in banner
    # The banner names this backend's own framework, never another one's.
    others = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
    others.pop(keras.backend.backend())
    assert not any(name in banner for name in others.values()), banner


def test_a_cpu_fallback_beside_a_gpu_warns_once_at_the_fit_line(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((32, 4), "float32"), np.zeros((32, 1), "float32")
    # NVML sees a GPU that the framework cannot use: training on the CPU is a surprise.
    watch = GPUWatch(log_dir=tmp_path, verbose=0, plot=False, nvml=FakeNVML([FakeGPU()]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = _line() + 1  # the next line: the user's fit call
        model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[watch])
    ours = [w for w in caught if issubclass(w.category, GPUWatchWarning)]
    assert len(ours) == 1
    (warning,) = ours
    assert (warning.filename, warning.lineno) == (__file__, line)
    text = str(warning.message)
    assert "\n" not in text and str(watch.run_dir) in text
    assert load_run(watch.run_dir).verdict == CPU_FALLBACK


def _line() -> int:
    return inspect.currentframe().f_back.f_lineno


# -- Ctrl-C and the exit handler -------------------------------------------------------------


class ClosingReadHangs(FakeNVML):
    """NVML whose next utilization read blocks until released: a run being closed by another
    thread while the interpreter exits."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def nvmlDeviceGetUtilizationRates(self, handle):  # noqa: N802
        if self.armed:
            self.entered.set()
            self.release.wait(20)
        return super().nvmlDeviceGetUtilizationRates(handle)


def test_the_exit_handler_waits_for_a_run_another_thread_is_closing(tmp_path):
    fake = ClosingReadHangs([FakeGPU(util_pct=50)])
    monitor = monitor_on_gpu(tmp_path, fake, driven=False, interval_s=0.02)
    monitor.begin_epoch(0)
    monitor.timeline.add_batch(0, 0, 1, 0.0, 0.01, None)
    fake.armed = True
    assert fake.entered.wait(10)  # the sampler thread is inside a read
    closer = threading.Thread(target=monitor.finish, args=("interrupted",))
    closer.start()  # Ctrl-C noticed on another thread: it closes the run, and waits on the read
    timer = threading.Timer(0.3, fake.release.set)
    timer.start()
    _finish_open_runs()  # the interpreter exits meanwhile
    assert json.loads((monitor.run_dir / "run.json").read_text())["status"] == "interrupted"
    closer.join(10)
    timer.cancel()


def test_a_step_that_fails_while_closing_is_recorded_and_the_status_still_written(tmp_path):
    monitor = monitor_on_gpu(tmp_path, FakeNVML([FakeGPU(util_pct=50)]))

    def broken(**_):
        raise RuntimeError("the sampler would not stop")

    stop = monitor.sampler.stop
    monitor.sampler.stop = broken
    monitor.finish("interrupted")
    monitor.sampler.stop = stop
    stop()
    info = json.loads((monitor.run_dir / "run.json").read_text())
    assert info["status"] == "interrupted"
    assert len(info["close_errors"]) == 1
    assert "RuntimeError: the sampler would not stop" in info["close_errors"][0]


# -- the doctor and the figures --------------------------------------------------------------


@pytest.mark.parametrize(("name", "words"), [
    ("nonsense", "is not a Keras backend"),
    ("TensorFlow", "is not a Keras backend"),
])
def test_the_doctor_names_the_valid_backends_for_an_unknown_one(monkeypatch, name, words):
    monkeypatch.setenv("KERAS_BACKEND", name)
    out = io.StringIO()
    assert cli_main(["doctor"], out=out) == 2
    text = out.getvalue()
    assert words in text and "tensorflow, jax, torch" in text and repr(name) in text
    assert "Traceback" not in text and "KeyError" not in text and text.count("\n") == 1


def test_a_run_without_readings_draws_one_note_not_empty_panels(tmp_path):
    info = run_info("cpu", verdict="cpu_fallback", gpus=(), causes=["no_nvidia_driver"])
    run = load_run(write_run(tmp_path, "cpu", info,
                             epochs=[{"epoch": 0, "batches": 4, "step_s_mean": 0.01,
                                      "verdict": "cpu_fallback"}]))
    fig = plot_epochs(run)
    gids = {artist.get_gid() for artist in fig.findobj()}
    assert "no-readings" in gids
    # One line, not a panel: the step panel is the only one drawn.
    assert len([ax for ax in fig.axes if ax.get_ylabel()]) == 1
    assert not any(ax.get_ylabel() == "util %" for ax in fig.axes)


def test_the_step_panel_leaves_step_0_out_and_labels_it(tmp_path):
    batches = [{"epoch": 0, "batch": 0, "steps": 1, "time_s": 3.0, "step_s": 2.9},
               *({"epoch": 0, "batch": b, "steps": 1, "time_s": 3.0 + 0.01 * b,
                  "step_s": 0.01} for b in range(1, 50))]
    run = load_run(write_run(tmp_path, "steps", run_info("steps"), batches=batches))
    fig = plot_utilization(run)
    step_ax = next(ax for ax in fig.axes if ax.get_title(loc="left").startswith("step time"))
    assert step_ax.get_ylim()[1] < 0.1  # the 2.9 s compile step does not set the scale
    gids = {artist.get_gid() for artist in step_ax.get_children()}
    assert "first-step" in gids
    texts = [t.get_text() for t in step_ax.texts]
    assert any(t.startswith("step 0 (compile)") and "2.90 s" in t for t in texts)


# -- generated runs --------------------------------------------------------------------------

ON_ONE_GPU = Setting(compute_on_gpu=True, framework_gpus=1, nvml_gpus=1, visible_gpus=1,
                     cuda_build=True)


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(st.lists(st.one_of(st.none(), st.floats(0, 100)), max_size=40),
       st.lists(st.floats(0.01, 10.0), min_size=1, max_size=5))
def test_generated_runs_never_disagree_with_themselves(values, lengths):
    """Readings of this training's own use every 0.25 s, epochs of any length (many shorter
    than the interval): the summary's idle share, each epoch row and the run verdict agree."""
    tl = Timeline([0], 10.0, 60.0, 0.25)
    ends = np.cumsum(lengths) * (0.25 * (len(values) + 1) / sum(lengths))
    rows, start = [], 0.0
    tick = 0
    for epoch, end in enumerate(ends):
        tl.begin_epoch(epoch, start)
        if epoch == 0:
            tl.add_batch(0, 0, 1, 0.0, 0.001, None)
        while tick < len(values) and 0.25 * (tick + 1) <= end:
            util = values[tick]
            tl.add_readings([Reading(time_s=0.25 * (tick + 1), gpu=0, util_pct=util,
                                     proc_util_pct=util, procs=1, proc_listed=True)])
            tick += 1
        tl.end_epoch(end)
        rows += [epoch_row(span, ON_ONE_GPU)[1] for span in tl.ready_epochs()]
        start = end
    rows += [epoch_row(span, ON_ONE_GPU)[1] for span in tl.ready_epochs(final=True)]
    record = RunRecord(run_name="generated", status="completed",
                       devices=[{"nvml_index": 0, "name": "GPU"}])
    judgement = record_judgement(record, tl, ON_ONE_GPU)
    share = record.judged["0"]["idle_fraction"]
    measured = [v for v in values if v is not None]
    assert share == (None if not measured else
                     pytest.approx(sum(v < 10.0 for v in measured) / len(measured), abs=1e-4))
    if judgement.verdict in ("ok", "idle"):
        assert (judgement.verdict == "idle") == (share > 0.5)
    for row in rows:
        if row["verdict"] in ("ok", "idle"):
            assert (row["verdict"] == "idle") == (row["idle_fraction"] > 0.5)
        elif row["verdict"] == "unmeasured":
            assert row["idle_fraction"] is None and row["gpu_util_mean"] is None
    if all(row["verdict"] == "idle" for row in rows) and measured:
        assert judgement.verdict == "idle"  # idle in every epoch: idle over the run
    run = Run(Path("generated"), record, pd.DataFrame({"time_s": [], "gpu": []}),
              pd.DataFrame(), pd.DataFrame(rows))
    text = summary_text(run)
    if share is not None:
        assert f"idle {round(100 * share)}% of its readings after step 0" in text
    if None not in values:  # "unmonitored" only where a reading could not tell
        assert "unmonitored" not in text
