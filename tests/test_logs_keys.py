"""GPUWatch's figures in Keras' own epoch logs: the progress bar, `History`, `CSVLogger` and
`TensorBoard` placed after GPUWatch all get them, and only the figures measured (never NaN).
Real Keras training with TensorFlow on this
machine's CPU; FakeNVML serves what only a GPU would show. (JAX and torch: test_backends.py.)"""

from __future__ import annotations

import contextlib
import csv
import http.server
import io
import json
import math
import threading
import warnings

import keras
import numpy as np
import pandas as pd
import pytest

from gpu_watch import GPUWatch, GPUWatchWarning, load_run
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess
from gpu_watch.training.callback import LOG_KEYS, VERDICT_CODES, log_keys, log_values

KEYS = ("gpu_util", "gpu_proc_util", "gpu_mem_peak_gib", "gpu_idle_frac", "gpu_verdict",
        "gpu_sm_active", "gpu_energy_kj")
EPOCHS = 2
STEPS = 4


def make_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


def fit(callbacks, epochs=EPOCHS, verbose=0, quiet=True):
    rng = np.random.default_rng(0)
    x = rng.random((STEPS * 8, 4), dtype=np.float32)
    y = rng.random((STEPS * 8, 1), dtype=np.float32)
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", GPUWatchWarning)  # "training runs on the CPU"
        return make_model().fit(x, y, epochs=epochs, batch_size=8, verbose=verbose,
                                callbacks=callbacks)


def busy_gpu() -> FakeNVML:
    """A GPU at 42 % with 2 GiB held by this process (training itself runs on the CPU); an
    A100, which has no GPM, so no epoch measures SM activity however long it runs."""
    return FakeNVML([FakeGPU(name="NVIDIA A100-SXM4-40GB", util_pct=42, mem_used_mib=2048 + 512,
                             processes=[FakeProcess(used_mib=2048, sm_util_pct=40)])])


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One fit with GPUWatch first, then CSVLogger and TensorBoard; the progress bar printed."""
    folder = tmp_path_factory.mktemp("logs")
    watch = GPUWatch(log_dir=folder / "gpu", nvml=busy_gpu(), interval_s=0.02, plot=False,
                     verbose=0)
    csv_logger = keras.callbacks.CSVLogger(str(folder / "log.csv"))
    board = keras.callbacks.TensorBoard(log_dir=str(folder / "tb"), write_graph=False,
                                        profile_batch=0)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        history = fit([watch, csv_logger, board], verbose=1)
    return {"history": history.history, "printed": printed.getvalue(), "folder": folder,
            "run": load_run(watch.run_dir)}


# What the fake GPU measures in every epoch; never SM activity (an A100 has no GPM), so its key
# is left out. This process's own utilization depends on when NVML's first per-process sample
# came: its key is there when the first epoch measured it (`logged_keys`).
MEASURED = ("gpu_util", "gpu_mem_peak_gib", "gpu_idle_frac", "gpu_verdict", "gpu_energy_kj")


def logged_keys(run) -> set[str]:
    first = run.epochs.iloc[0]
    return set(MEASURED) | ({"gpu_proc_util"} if pd.notna(first["proc_util_mean"]) else set())


def test_the_keys_reach_history_with_the_epoch_figures(logged):
    history, run = logged["history"], logged["run"]
    assert {key for key in history if key.startswith("gpu_")} == logged_keys(run)
    assert all(len(history[key]) == EPOCHS for key in MEASURED)
    assert not any(math.isnan(v) for key in logged_keys(run) for v in history[key])
    epochs = run.epochs
    assert history["gpu_util"] == [42.0] * EPOCHS
    assert history["gpu_util"] == epochs["gpu_util_mean"].tolist()
    assert history["gpu_mem_peak_gib"] == pytest.approx(
        (epochs["gpu_mem_peak_mib"] / 1024).tolist())
    assert history["gpu_mem_peak_gib"] == pytest.approx([2.5] * EPOCHS)
    assert history["gpu_idle_frac"] == epochs["idle_fraction"].tolist() == [0.0] * EPOCHS
    assert epochs["verdict"].tolist() == ["cpu_fallback"] * EPOCHS  # the step ran on the CPU
    assert history["gpu_verdict"] == [3.0] * EPOCHS
    assert epochs["gpu_sm_active_mean"].isna().all()


def test_the_keys_are_not_written_twice_into_epochs_csv(logged):
    assert not [c for c in logged["run"].epochs.columns if c in KEYS]
    assert "loss" in logged["run"].epochs.columns


def test_the_keys_reach_the_progress_bar_epoch_line(logged):
    # The batch updates show the live readings too (test_live.py); only the epoch line has
    # the epoch's verdict.
    lines = [line for line in logged["printed"].splitlines() if "gpu_verdict:" in line]
    assert len(lines) == EPOCHS
    for line in lines:
        assert "gpu_util: 42.0000" in line
        assert "gpu_mem_peak_gib: 2.5000" in line
        assert "gpu_verdict: 3.0000" in line
        assert "loss:" in line.split("gpu_util")[0]  # after Keras' own metrics


def test_the_keys_reach_csv_logger(logged):
    with open(logged["folder"] / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == EPOCHS
    assert {key for key in rows[0] if key.startswith("gpu_")} == logged_keys(logged["run"])
    for key in MEASURED:
        assert [float(r[key]) for r in rows] == pytest.approx(logged["history"][key])


def test_the_keys_reach_tensorboard_after_gpu_watch(logged):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    events = EventAccumulator(str(logged["folder"] / "tb" / "train"),
                              size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    assert "epoch_gpu_sm_active" not in events.Tags()["tensors"] + events.Tags()["scalars"]
    for key in MEASURED:
        tag = f"epoch_{key}"
        if tag in events.Tags()["tensors"]:
            written = [(e.step, float(make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
        else:
            written = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [step for step, _ in written] == list(range(EPOCHS))
        assert [value for _, value in written] == pytest.approx(logged["history"][key],
                                                                nan_ok=True)


@pytest.mark.parametrize("verbose", [1, 2])
def test_without_readings_only_the_verdict_is_logged_and_nothing_is_nan(tmp_path, capsys,
                                                                        verbose):
    """No NVIDIA driver here: nothing measured, so no GPU key at all, in the batch logs or the
    epoch's (a NaN would read as a figure, and breaks JSON), but the verdict every epoch."""
    csv_path = tmp_path / "log.csv"
    history = fit([GPUWatch(log_dir=tmp_path, plot=False, verbose=0),
                   keras.callbacks.CSVLogger(str(csv_path))], epochs=3,
                  verbose=verbose).history
    assert [key for key in history if key.startswith("gpu_")] == ["gpu_verdict"]
    assert history["gpu_verdict"] == [3.0] * 3
    header = csv_path.read_text().splitlines()[0].split(",")
    assert [key for key in header if key.startswith("gpu_")] == ["gpu_verdict"]
    printed = capsys.readouterr().out
    assert printed.count("gpu_verdict: 3.0000") >= 3  # each epoch's last line of the bar
    assert "nan" not in printed.lower() and "gpu_util" not in printed


def test_the_first_epoch_decides_the_keys_for_the_run():
    measured = {"gpu_util": 40.0, "gpu_proc_util": None, "gpu_mem_peak_gib": 1.0,
                "gpu_idle_frac": 0.0, "gpu_verdict": 0.0, "gpu_sm_active": 12.0,
                "gpu_energy_kj": None}
    # A watched GPU: its core figures always (an epoch without its reading leaves them out,
    # CSVLogger writes its empty-cell mark there); the others where the first epoch had them.
    assert list(log_keys(measured, watching_gpus=True)) == [
        "gpu_util", "gpu_mem_peak_gib", "gpu_idle_frac", "gpu_verdict", "gpu_sm_active"]
    assert list(log_keys(dict.fromkeys(measured), watching_gpus=True)) == [
        "gpu_util", "gpu_mem_peak_gib", "gpu_idle_frac", "gpu_verdict"]
    assert list(log_keys(measured, watching_gpus=False)) == ["gpu_verdict"]


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (the name http.server calls)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_remote_monitor_with_json_gets_every_epoch_with_gpu_watch_first(tmp_path):
    """Keras' RemoteMonitor sends each epoch's logs as JSON, which has no NaN: a NaN from
    GPUWatch would make it drop the epoch ("Could not reach server")."""
    _Collector.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        remote = keras.callbacks.RemoteMonitor(
            root=f"http://127.0.0.1:{server.server_address[1]}", path="/epochs",
            send_as_json=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # "Could not reach server" fails
            fit([GPUWatch(log_dir=tmp_path, plot=False, verbose=0), remote], epochs=3)
    finally:
        server.shutdown()
        server.server_close()
    assert [r["epoch"] for r in _Collector.received] == [0, 1, 2]
    assert all(r["gpu_verdict"] == 3.0 and "loss" in r for r in _Collector.received)


def test_a_key_already_in_the_logs_is_left_alone(tmp_path):
    class Earlier(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["gpu_util"] = -1.0

    fake = busy_gpu()
    history = fit([Earlier(), GPUWatch(log_dir=tmp_path, nvml=fake, plot=False, verbose=0)])
    assert history.history["gpu_util"] == [-1.0] * EPOCHS
    assert history.history["gpu_verdict"] == [3.0] * EPOCHS


def test_log_metrics_false_adds_nothing(tmp_path):
    history = fit([GPUWatch(log_dir=tmp_path, nvml=busy_gpu(), plot=False, verbose=0,
                            log_metrics=False)], epochs=1)
    assert not [key for key in history.history if key.startswith("gpu_")]
    assert load_run(next(tmp_path.iterdir())).epochs["gpu_util_mean"].notna().all()


def test_a_run_folder_that_cannot_be_made_is_made_elsewhere_and_still_judged(tmp_path,
                                                                             capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    watch = GPUWatch(log_dir=blocker / "logs", on_log_error="warn", plot=False)
    with pytest.warns(GPUWatchWarning, match="this run is logged in .* instead") as caught:
        history = fit([watch], epochs=1, quiet=False)
    assert str(watch.run_dir) in str(caught[0].message)
    assert not watch.run_dir.is_relative_to(tmp_path)
    assert load_run(watch.run_dir).verdict == "cpu_fallback"
    assert history.history["gpu_verdict"] == [3.0]
    # It still ends with the summary line: the verdict, the status, what was measured.
    assert capsys.readouterr().out.startswith(
        f"gpu-watch: verdict cpu_fallback (completed); measured {STEPS} batches in 1 finished "
        f"epoch; run folder {watch.run_dir}\n")


@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_log_metrics_must_be_a_bool(value):
    with pytest.raises(ValueError, match=f"log_metrics must be True or False, got {value!r}"):
        GPUWatch(log_metrics=value)


def test_log_values_converts_units_and_codes_the_verdict():
    row = {"gpu_util_mean": 55.5, "proc_util_mean": 40.0, "gpu_mem_peak_mib": 3072.0,
           "idle_fraction": 0.25, "verdict": "idle", "gpu_sm_active_mean": 12.5,
           "gpu_energy_j": 840.0}
    assert log_values(row) == {"gpu_util": 55.5, "gpu_proc_util": 40.0,
                               "gpu_mem_peak_gib": 3.0, "gpu_idle_frac": 0.25,
                               "gpu_verdict": 2.0, "gpu_sm_active": 12.5, "gpu_energy_kj": 0.84}
    assert list(LOG_KEYS) == list(KEYS)
    codes = {verdict: log_values({"verdict": verdict})["gpu_verdict"]
             for verdict in ("ok", "unmonitored", "idle", "cpu_fallback")}
    assert codes == {"ok": 0.0, "unmonitored": 1.0, "idle": 2.0, "cpu_fallback": 3.0}
    assert codes == {k: float(v) for k, v in VERDICT_CODES.items()}
    empty = log_values({"verdict": None, "gpu_util_mean": math.nan})
    assert list(empty) == list(KEYS) and all(v is None for v in empty.values())
    assert log_values({"verdict": "something new"})["gpu_verdict"] is None
