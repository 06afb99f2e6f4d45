"""The fault matrix: NVML errors, storage failures, interruptions, concurrency, bad input and
process hygiene. GPUWatch may warn, but it never kills training (unless asked to) and never loses
what it measured."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import pynvml
import pytest
from monitors import monitor_on_gpu, run_monitor
from waiting import wait_until

from gpu_watch import GPUWatch, GPUWatchWarning, load_run
from gpu_watch.cli import main as cli_main
from gpu_watch.errors import take_swallowed
from gpu_watch.report import summary_text
from gpu_watch.runlog import CsvTable, RunFolderError, RunRecord, write_run_json
from gpu_watch.sensing.nvml import NVML
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess
from gpu_watch.training import watchdog as watchdog_module
from gpu_watch.training.watchdog import FitWatchdog

CHILD = Path(__file__).parent / "scripts" / "train_child.py"
FAILING_FITS = Path(__file__).parent / "scripts" / "failing_fits.py"
ERRORS = [
    pynvml.NVMLError_NotSupported,
    pynvml.NVMLError_Unknown,
    pynvml.NVMLError_Timeout,
    pynvml.NVMLError_GpuIsLost,
    pynvml.NVMLError_FunctionNotFound,
]
# The FakeNVML fields whose faults the NVML seam records in run.json's faults, by the same
# metric names.
FIELD_METRICS = {name: name for name in ("util", "memory", "processes", "proc_util", "power",
                                         "temperature", "sm_clock", "clock_events")}


def gpu_threads():
    return [t for t in threading.enumerate() if t.name.startswith("gpu-watch")]


def drive(cb, batches=12, pause_s=0.03, epochs=1):
    """Run GPUWatch's hooks the way fit does, without a model's cost."""
    cb.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    cb.on_train_begin()
    for epoch in range(epochs):
        cb.on_epoch_begin(epoch)
        for batch in range(batches):
            cb.on_train_batch_begin(batch)
            time.sleep(pause_s)
            cb.on_train_batch_end(batch, {"loss": 1.0})
        cb.on_epoch_end(epoch, {"loss": 1.0})
    cb.on_train_end()
    return load_run(cb.run_dir)


def quiet(**kwargs):
    kwargs.setdefault("plot", False)
    kwargs.setdefault("verbose", 0)
    kwargs.setdefault("check_placement", False)
    kwargs.setdefault("interval_s", 0.02)
    return GPUWatch(**kwargs)


# -- NVML faults ----------------------------------------------------------------------------


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_metric_failing_mid_run_is_recorded_and_the_healthy_gpu_goes_on(tmp_path, error):
    faulty = FakeGPU(util_pct=60, processes=[FakeProcess(used_mib=100)])
    for field in FIELD_METRICS:
        faulty.fail(field, error, from_s=0.15)
    healthy = FakeGPU(util_pct=40, processes=[FakeProcess(used_mib=200)])
    nvml = NVML(FakeNVML([faulty, healthy]))
    # The process list at every reading, as the other metrics: read once a second, as shipped,
    # a run of 0.4 s would never ask for it after the fault begins.
    nvml.process_interval_s = 0.0
    cb = quiet(log_dir=tmp_path, nvml=nvml)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        run = drive(cb)
    assert run.status == "completed"
    faults = run.info["faults"]
    recorded = {(f["metric"], f["error"], f["gpu"]) for f in faults}
    if error is pynvml.NVMLError_GpuIsLost:
        # the first failing query marks the GPU lost; nothing else is asked of it afterwards
        assert len(recorded) == 1 and next(iter(recorded))[1:] == ("NVMLError_GpuIsLost", 0)
        assert run.samples[run.samples.gpu == 0]["lost"].iloc[-1] == 1
    else:
        expected = {(metric, error.__name__, 0) for metric in FIELD_METRICS.values()}
        assert expected <= recorded
    assert all(f["time_s"] >= 0.1 for f in faults)
    gpu0, gpu1 = run.samples[run.samples.gpu == 0], run.samples[run.samples.gpu == 1]
    late = gpu0.time_s > 0.3
    assert gpu0[late]["util_pct"].isna().all()  # missing, not 0
    assert gpu0[~late & (gpu0.time_s < 0.1)]["util_pct"].eq(60).all()
    assert gpu1[gpu1.time_s > 0.3]["util_pct"].eq(40).all()
    assert gpu1["proc_mem_mib"].eq(200).all()


def test_transient_errors_recover_but_not_supported_stays_off(tmp_path):
    gpu = FakeGPU(util_pct=70, power_w=100)
    gpu.fail("util", pynvml.NVMLError_Timeout, from_s=0.1, until_s=0.2)
    gpu.fail("power", pynvml.NVMLError_NotSupported, from_s=0.1, until_s=0.2)
    cb = quiet(log_dir=tmp_path, nvml=FakeNVML([gpu]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        run = drive(cb, batches=15)
    late = run.samples[run.samples.time_s > 0.3]
    assert late["util_pct"].eq(70).all()
    assert late["power_w"].isna().all()


def test_nvml_init_failing_is_reported_and_training_completes(tmp_path):
    fake = FakeNVML([FakeGPU()], init_error=pynvml.NVMLError_DriverNotLoaded)
    cb = quiet(log_dir=tmp_path, nvml=fake)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        run = drive(cb)
    assert run.status == "completed"
    assert run.info["nvml"]["error"].startswith("NVMLError_DriverNotLoaded")
    assert run.verdict == "cpu_fallback"
    assert run.causes[0]["code"] == "no_nvidia_driver"


def test_an_unexpected_exception_in_the_sampler_is_contained(tmp_path):
    fake = FakeNVML([FakeGPU(util_pct=50), FakeGPU(util_pct=30)])
    original = fake.nvmlDeviceGetUtilizationRates

    def broken(handle):
        if handle.index == 0:
            raise ValueError("a corrupted reply")
        return original(handle)

    fake.nvmlDeviceGetUtilizationRates = broken
    cb = quiet(log_dir=tmp_path, nvml=fake)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        run = drive(cb)
    assert run.status == "completed"
    assert "ValueError: a corrupted reply" in run.info["sampler"]["errors"][0]
    assert {s.place for s in take_swallowed("sampler")} == {"sampler.read"}
    assert run.samples[run.samples.gpu == 1]["util_pct"].eq(30).all()
    assert run.samples[run.samples.gpu == 0]["util_pct"].isna().all()


def test_missing_utilization_is_unmonitored_not_idle(tmp_path):
    gpu = FakeGPU(util_pct=0).fail("util", pynvml.NVMLError_Unknown)
    run = run_monitor(monitor_on_gpu(tmp_path, FakeNVML([gpu])))
    assert run.verdict == "unmonitored"
    assert run.epochs["verdict"].iloc[0] == "unmonitored"
    assert run.epochs["gpu_util_mean"].isna().all()


def test_the_same_gpu_reading_is_idle_when_measured(tmp_path):
    run = run_monitor(monitor_on_gpu(tmp_path, FakeNVML([FakeGPU(util_pct=0)])))
    assert run.verdict == "idle"
    run = run_monitor(monitor_on_gpu(tmp_path, FakeNVML([FakeGPU(util_pct=90)])))
    assert run.verdict == "ok"


# -- storage --------------------------------------------------------------------------------


def test_an_impossible_log_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cb = quiet(log_dir=blocker / "logs")
    started = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            started.append(batch)

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(OSError, match="log_dir=.*a-file/logs.*on_log_error='warn'"):
        model.fit(np.zeros((8, 2)), np.zeros((8, 1)), verbose=0, callbacks=[cb, Spy()])
    assert started == []


def test_an_impossible_log_dir_can_be_a_warning(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # Not even a temporary folder can be made: training goes on unwatched, and says so.
    monkeypatch.setattr(tempfile, "tempdir", str(blocker / "tmp"))
    cb = GPUWatch(log_dir=blocker / "logs", on_log_error="warn", plot=False)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.warns(GPUWatchWarning, match="training goes on without it"):
        history = model.fit(np.zeros((8, 2)), np.zeros((8, 1)), epochs=2, verbose=0,
                            callbacks=[cb])
    assert len(history.epoch) == 2 and cb.run_dir is None
    assert capsys.readouterr().out == (
        f"gpu-watch: no verdict: this training was not watched (no run folder could be "
        f"written under {blocker / 'logs'})\n")


def test_a_full_disk_mid_run_warns_once_and_keeps_files_valid(tmp_path, monkeypatch):
    original = CsvTable._write_text
    calls = {"n": 0}

    def flaky(self, text, mode):
        calls["n"] += 1
        if calls["n"] > 4 and mode == "a":
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, text, mode)

    monkeypatch.setattr(CsvTable, "_write_text", flaky)
    cb = quiet(log_dir=tmp_path, nvml=FakeNVML([FakeGPU(util_pct=50)]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = drive(cb, batches=10, epochs=3)
    disk = [w for w in caught if "could not write" in str(w.message)]
    assert len(disk) == 1 and "No space left" in str(disk[0].message)
    assert run.status == "completed"
    assert run.info["write_errors"] >= 1


def _mount_tiny_tmpfs(path: Path, size_kib: int) -> bool:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def test_a_real_full_filesystem_leaves_only_whole_rows(tmp_path):
    mount = tmp_path / "tiny"
    if os.geteuid() != 0 or not _mount_tiny_tmpfs(mount, 64):
        pytest.skip("needs root and permission to mount a tmpfs")
    try:
        fake = FakeNVML([FakeGPU(util_pct=50, processes=[FakeProcess(used_mib=10)])] * 4)
        cb = quiet(log_dir=mount, nvml=fake, interval_s=0.02)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = drive(cb, batches=150, pause_s=0.01, epochs=2)
        assert len([w for w in caught if "could not write" in str(w.message)]) == 1
        for name in ("samples.csv", "batches.csv"):
            lines = (cb.run_dir / name).read_text().splitlines()
            widths = {line.count(",") for line in lines}
            assert len(widths) == 1, f"{name} has a torn row"
        assert len(run.samples) > 0
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_run_json_is_replaced_atomically(tmp_path, monkeypatch):
    write_run_json(tmp_path, RunRecord(status="running"))

    def fail_replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError):
        write_run_json(tmp_path, RunRecord(status="completed"))
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "running"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left


# -- interruptions --------------------------------------------------------------------------


_children: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_child_outlives_its_test():
    """A test that failed while its child trained on (a lost signal) must not leave it
    running: it would slow every test after it."""
    yield
    while _children:
        proc = _children.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def start_child(log_dir, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.Popen([sys.executable, str(CHILD), str(log_dir), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _children.append(proc)
    line = proc.stdout.readline()
    assert line.startswith("STARTED"), proc.stderr.read()
    return proc, Path(line.split(" ", 1)[1].strip())


def interrupted_child_output(proc: subprocess.Popen, timeout_s: float = 60) -> tuple[str, str]:
    """The stdout and stderr of a child sent Ctrl-C; one still training after `timeout_s` is
    killed and fails the test with its stderr, where it wrote its threads' stacks at 50 s."""
    try:
        return proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"still training {timeout_s:.0f} s after Ctrl-C:\n{stderr[-6000:]}")


def flushed_batch_rows(run_dir: Path) -> int:
    """The whole rows `batches.csv` holds so far (a flush may be under way)."""
    path = run_dir / "batches.csv"
    return max(path.read_text().count("\n") - 1, 0) if path.exists() else 0


def test_ctrl_c_marks_the_run_interrupted(tmp_path):
    # 100 batches of 0.05 s an epoch: Ctrl-C lands in the middle of the first, ten batches
    # after it began.
    proc, run_dir = start_child(tmp_path, "--epochs", "50", "--batches", "100", "--sleep",
                                "0.05", "--started-after", "10", "--verbose")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = interrupted_child_output(proc)
    assert proc.returncode != 0
    run = load_run(run_dir)
    assert run.status == "interrupted"
    measured = len(run.batches)
    assert 1 < measured < 100 and run.epochs.empty
    # The traceback ends where Ctrl-C interrupted the training (most often the script's own
    # callback, asleep; else Keras or TensorFlow), never in gpu-watch, which only noted it.
    frames = [line for line in stderr.splitlines() if line.strip().startswith('File "')]
    assert "KeyboardInterrupt" in stderr and frames, stderr
    assert "gpu_watch" not in frames[-1], stderr
    # It still ends with the summary line: the verdict, the status, what was measured.
    line = stdout.strip().splitlines()[-1] if "remedy" not in stdout else next(
        text for text in stdout.splitlines() if text.startswith("gpu-watch: verdict"))
    assert line == (f"gpu-watch: verdict cpu_fallback (interrupted); measured {measured} "
                    f"batches in 0 finished epochs; run folder {run_dir}")
    assert (f"Epochs: none finished; {measured} batches measured in epoch 0, which did not "
            "finish") in summary_text(run)


@pytest.mark.parametrize(("swallow", "sleep", "started", "most_swallowed"), [
    # The first KeyboardInterrupt that lands in the callback's sleep, where it spends most of
    # each batch, is caught: the signal sent again half a second later ends training.
    ("--swallow-first-interrupt", "0.05", 10, 1),
    # Every one that lands there is caught, as Keras' `pythonify_logs` can on a loaded machine,
    # where a batch hook waits for the step most of the time: after the third, fit stops at the
    # end of its batch and raises the KeyboardInterrupt as it returns. The sleep is the batch
    # but for a millisecond or two (one that lands in the step ends training by itself).
    ("--swallow-every-interrupt", "0.2", 5, 3),
], ids=["first", "every"])
def test_a_ctrl_c_that_code_inside_fit_swallowed_still_ends_training(tmp_path, swallow, sleep,
                                                                      started, most_swallowed):
    proc, run_dir = start_child(tmp_path, "--epochs", "50", "--batches", "100", "--sleep",
                                sleep, "--started-after", str(started), swallow)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = interrupted_child_output(proc)
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr, stderr[-3000:]
    assert "DONE" not in stdout and stderr.count("SWALLOWED") <= most_swallowed, stderr[-3000:]
    run = load_run(run_dir)
    assert run.status == "interrupted" and started <= len(run.batches) < 100


def test_a_failing_data_generator_closes_the_run_as_failed(tmp_path):
    def batches():
        for i in range(100):
            if i == 7:
                raise OSError("the data share went away")
            yield np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    cb = quiet(log_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception, match="the data share went away") as raised:
            model.fit(batches(), steps_per_epoch=50, epochs=2, verbose=0, callbacks=[cb])
    run = load_run(cb.run_dir)  # closed as fit raised: nothing to wait for
    assert run.status == "failed"
    assert run.info["error"]["type"] == type(raised.value).__name__  # TensorFlow wraps it
    assert len(run.batches) == 7


def test_sigkill_leaves_a_readable_incomplete_run(tmp_path, capsys):
    proc, run_dir = start_child(tmp_path, "--epochs", "50", "--sleep", "0.05")
    wait_until(lambda: flushed_batch_rows(run_dir), "a flush of batch rows", timeout_s=60.0)
    proc.kill()
    proc.wait(timeout=30)
    run = load_run(run_dir)
    assert run.info["status"] == "running"
    assert run.status == "incomplete"
    assert len(run.batches) > 0
    assert cli_main(["report", str(run_dir), "--no-plots"]) == 0
    assert "incomplete" in capsys.readouterr().out


# -- concurrency ----------------------------------------------------------------------------


def test_two_processes_with_the_same_run_name_get_their_own_folders(tmp_path):
    children = [start_child(tmp_path, "--run-name", "same") for _ in range(2)]
    for proc, _ in children:
        proc.wait(timeout=120)
        assert proc.returncode == 0
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["same", "same-2"]
    assert {load_run(tmp_path / name).status for name in folders} == {"completed"}


# -- bad input ------------------------------------------------------------------------------


def test_load_run_errors_are_one_line(tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "nope"
    (tmp_path / "empty").mkdir()
    cases["empty"] = tmp_path / "empty"
    other = tmp_path / "other-tool"
    other.mkdir()
    (other / "events.out.tfevents").write_text("x")
    cases["another tool's"] = other
    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "run.json").write_text("{not json")
    cases["invalid JSON"] = bad_json
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "run.json").write_text(json.dumps({"schema_version": 99}))
    cases["newer schema"] = newer
    garbage = tmp_path / "garbage-csv"
    garbage.mkdir()
    (garbage / "run.json").write_text(json.dumps({"schema_version": 1, "status": "completed"}))
    (garbage / "batches.csv").write_text('epoch,batch\n"unterminated,1\n')
    cases["broken CSV"] = garbage
    for label, path in cases.items():
        with pytest.raises(RunFolderError) as raised:
            load_run(path)
        message = str(raised.value)
        assert "\n" not in message and str(path) in message, label
        assert "Traceback" not in message


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path):
    cb = quiet(log_dir=tmp_path, nvml=FakeNVML([FakeGPU(util_pct=10)]))
    run = drive(cb, batches=4)
    path = cb.run_dir / "batches.csv"
    path.write_text(path.read_text() + "0,4,1,0.5")  # a row cut off mid-write
    again = load_run(cb.run_dir)
    assert len(again.batches) == len(run.batches)
    assert "batches.csv: dropped an incomplete last line" in again.warnings


# -- process hygiene ------------------------------------------------------------------------


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_no_thread_or_file_left_behind_after_fits_and_after_an_exception(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((32, 2), "float32"), np.zeros((32, 1), "float32")
    cb = quiet(log_dir=tmp_path, nvml=FakeNVML([FakeGPU(util_pct=50)]), plot=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
        baseline_fds = open_fds()
        for _ in range(2):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
        assert not gpu_threads()
        assert open_fds() <= baseline_fds

        class Boom(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[cb, Boom()])
    assert not gpu_threads()
    assert load_run(cb.run_dir).status == "failed"
    assert open_fds() <= baseline_fds


def test_a_failed_widen_keeps_the_header_and_rows_in_step(tmp_path, monkeypatch):
    table = CsvTable(tmp_path / "epochs.csv", ["epoch", "loss"])
    table.append([{"epoch": 0, "loss": 1.0}])

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("gpu_watch.runlog._atomic_write", full)
    with pytest.raises(OSError):
        table.widen(["epoch", "loss", "val_loss"])
    table.append([{"epoch": 1, "loss": 0.5, "val_loss": 0.7}])
    lines = (tmp_path / "epochs.csv").read_text().splitlines()
    assert lines == ["epoch,loss", "0,1.0", "1,0.5"]


def test_fit_data_is_not_kept_alive_by_the_callback(tmp_path):
    import gc
    import weakref

    class Data(np.ndarray):
        pass

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    cb = quiet(log_dir=tmp_path)
    refs = []

    def train(fail):
        x = np.zeros((16, 2), "float32").view(Data)
        refs.append(weakref.ref(x))

        class Boom(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if fail:
                    raise RuntimeError("boom")

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x, np.zeros((16, 1), "float32"), verbose=0, callbacks=[cb, Boom()])

    train(fail=False)
    with pytest.raises(RuntimeError):
        train(fail=True)
    assert cb.monitor.finished
    gc.collect()
    assert [r() is None for r in refs] == [True, True]


def test_metrics_switched_off_in_an_earlier_run_are_reported_again(tmp_path):
    gpu = FakeGPU(util_pct=50).fail("power", pynvml.NVMLError_NotSupported)
    cb = quiet(log_dir=tmp_path, nvml=FakeNVML([gpu]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        first = drive(cb, batches=3)
        second = drive(cb, batches=3)
    assert {"metric": "power", "gpu": 0} in first.info["nvml"]["switched_off"]
    assert second.info["faults"] == []  # NVML is not asked again ...
    assert {"metric": "power", "gpu": 0} in second.info["nvml"]["switched_off"]  # ... but said


def small_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


class RaiseAt(keras.callbacks.Callback):
    """Raises `error` from the hook named `hook`, placed after GPUWatch."""

    def __init__(self, hook, error):
        super().__init__()
        setattr(self, hook, self._raise)
        self.error = error

    def _raise(self, *args, **kwargs):
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("step failed"), KeyboardInterrupt()])
def test_three_fits_that_raise_each_close_their_run_at_once(tmp_path, error):
    handler = signal.getsignal(signal.SIGINT)
    x, y = np.zeros((16, 2), "float32"), np.zeros((16, 1), "float32")
    model = small_model()
    for _ in range(3):
        watch = quiet(log_dir=tmp_path, nvml=FakeNVML([FakeGPU(util_pct=50)]))
        with pytest.raises(type(error)):
            model.fit(x, y, batch_size=4, epochs=2, verbose=0,
                      callbacks=[watch, RaiseAt("on_train_batch_end", error)])
        # Checked before any sampler tick could have noticed: the run closed as fit raised.
        assert watch.monitor.finished and not watch.monitor.sampler.running
        assert signal.getsignal(signal.SIGINT) == handler
        run = load_run(watch.run_dir)
        assert run.status == ("interrupted" if isinstance(error, KeyboardInterrupt)
                              else "failed")
        assert run.info["error"]["type"] == type(error).__name__
        assert run.info["keras_probes"]["fit_errors"] == "ok"
    assert not gpu_threads()


def test_fits_that_raise_where_no_wrapper_sees_it_leave_the_sigint_handler_as_it_was(tmp_path):
    """An error in validation passes nothing `on_fit_error` wraps: the sampler's tick closes the
    run (from its own thread, which may not touch signal handlers), and the next fit on the main
    thread takes the stale wrapper off instead of stacking its own on it."""
    handler = signal.getsignal(signal.SIGINT)
    x, y = np.zeros((16, 2), "float32"), np.zeros((16, 1), "float32")
    model = small_model()
    for _ in range(3):
        watch = quiet(log_dir=tmp_path, nvml=FakeNVML([FakeGPU(util_pct=50)]), interval_s=0.02)
        with pytest.raises(RuntimeError):
            model.fit(x, y, batch_size=4, epochs=2, verbose=0, validation_data=(x, y),
                      callbacks=[watch, RaiseAt("on_test_begin", RuntimeError("validation"))])
        assert watch.monitor.wait_closed(30.0)  # the sampler's next tick
        assert load_run(watch.run_dir).status == "failed"
    last = quiet(log_dir=tmp_path, nvml=FakeNVML([FakeGPU(util_pct=50)]))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[last])
    assert load_run(last.run_dir).status == "completed"
    assert signal.getsignal(signal.SIGINT) == handler


def test_an_error_at_an_epoch_end_closes_the_run_at_once_and_nothing_stays_wrapped(tmp_path):
    x, y = np.zeros((16, 2), "float32"), np.zeros((16, 1), "float32")
    model = small_model()
    watch = quiet(log_dir=tmp_path, nvml=FakeNVML([FakeGPU(util_pct=50)]))
    callbacks = keras.callbacks.CallbackList(
        [watch, RaiseAt("on_epoch_end", RuntimeError("epoch end"))], model=model)
    with pytest.raises(RuntimeError, match="epoch end"):
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=callbacks)
    assert watch.monitor.finished and not watch.monitor.sampler.running
    assert load_run(watch.run_dir).info["error"]["type"] == "RuntimeError"
    # The callback list was the user's: it outlives fit, and holds none of GPUWatch's wrappers.
    assert not {"on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
                "on_train_batch_end"} & set(vars(callbacks))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_fits_that_raise_close_at_once_on_the_other_backends(backend):
    done = subprocess.run([sys.executable, str(FAILING_FITS)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "KERAS_BACKEND": backend})
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(r["closed_at_once"], r["status"], r["error"]) for r in runs] == [
        (True, "failed", "RuntimeError")] * 3
    assert all(r["handler_as_before"] for r in runs)


@pytest.fixture
def python_s_sigint_handler():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_noted_ctrl_c_is_delivered_again_once(monkeypatch, python_s_sigint_handler):
    """Driven directly (no signal sent): the wrapper notes Ctrl-C, puts Python's handler back
    and leaves the KeyboardInterrupt to a delivery from outside its frame, exactly once."""
    delivered = []
    monkeypatch.setattr(watchdog_module, "_interrupt_main", lambda: delivered.append("SIGINT"))
    monkeypatch.setattr(watchdog_module, "_later", lambda *call: None)  # no timer runs

    watchdog = FitWatchdog()
    watchdog.watch(sys._getframe())  # this test's frame stands for fit's
    assert signal.getsignal(signal.SIGINT) == watchdog._on_sigint
    watchdog._on_sigint(signal.SIGINT, None)  # returns: nothing raised from gpu-watch's frame
    assert watchdog.interrupted
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    watchdog._redeliver()
    watchdog._redeliver()  # the timer's own call, later: nothing left
    assert delivered == ["SIGINT"]
    watchdog.deliver_pending_interrupt()  # already delivered: does not raise

    # `fit` returned before the delivery: the end of training raises it, and the timer is idle.
    again = FitWatchdog()
    again.watch(sys._getframe())
    again._on_sigint(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        again.deliver_pending_interrupt()
    again._redeliver()
    assert delivered == ["SIGINT"]

    # The run closed first (a second Ctrl-C ended fit): one KeyboardInterrupt was enough.
    closed = FitWatchdog()
    closed.watch(sys._getframe())
    closed._on_sigint(signal.SIGINT, None)
    closed.release()
    closed._redeliver()
    closed.deliver_pending_interrupt()
    assert delivered == ["SIGINT"]


def test_a_keyboard_interrupt_lost_inside_fit_is_sent_again_twice_then_fit_is_stopped(
        monkeypatch, python_s_sigint_handler):
    """Driven directly: where the KeyboardInterrupt did not end `fit` (code inside it caught
    it), the signal goes again 0.5 s later, and once more, while the same `fit` runs; 0.5 s
    after the third, `fit` is stopped and the KeyboardInterrupt raised as it returns."""
    delivered, timers, stopped = [], [], []
    monkeypatch.setattr(watchdog_module, "_interrupt_main", lambda: delivered.append("SIGINT"))
    monkeypatch.setattr(watchdog_module, "_later", lambda *call: timers.append(call))
    watchdog = FitWatchdog()
    # This test's frame stands for fit's: still running.
    watchdog.watch(sys._getframe(), lambda: stopped.append("stop"))
    watchdog._on_sigint(signal.SIGINT, None)
    assert timers == [(0.05, watchdog._redeliver)]
    watchdog._redeliver()
    assert delivered == ["SIGINT"] and timers[1:] == [(0.5, watchdog._retry, 1)]
    watchdog._retry(1)
    assert delivered == ["SIGINT"] * 2 and timers[2:] == [(0.5, watchdog._retry, 2)]
    watchdog._retry(2)  # the third time in all: the last
    assert delivered == ["SIGINT"] * 3 and timers[3:] == [(0.5, watchdog._retry, 3)]
    assert stopped == []
    watchdog._retry(3)  # lost too: fit is stopped, and raises as it returns
    assert delivered == ["SIGINT"] * 3 and len(timers) == 4 and stopped == ["stop"]
    with pytest.raises(KeyboardInterrupt):
        watchdog.deliver_pending_interrupt()
    watchdog.deliver_pending_interrupt()  # once

    # The KeyboardInterrupt ended fit and the run closed: nothing more is sent.
    closed = FitWatchdog()
    closed.watch(sys._getframe())
    closed._on_sigint(signal.SIGINT, None)
    closed._redeliver()
    closed.release()
    closed._retry(1)
    assert delivered == ["SIGINT"] * 4 and len(timers) == 6

    # Fit left the stack (the frame watched is not on it) before the run closed: nothing either.
    left = FitWatchdog()
    left.watch(_finished_frame(), lambda: stopped.append("stop"))
    left._retry(1)
    left._retry(3)
    assert delivered == ["SIGINT"] * 4 and stopped == ["stop"]


def _finished_frame():
    return sys._getframe()  # returned: on no stack any more
