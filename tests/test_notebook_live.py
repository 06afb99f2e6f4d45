"""In a notebook, GPUWatch keeps one live line under the cell (utilization, memory, verdict),
redrawn at most once a second from a thread other than the training thread, and leaves the
final summary in the cell's output. A real kernel runs a real fit (nbclient, as
test_notebook.py); FakeNVML serves the GPU."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time

import nbformat
import pytest
from nbclient import NotebookClient

from gpu_watch.errors import take_swallowed
from gpu_watch.views.live import NOTEBOOK_PERIOD_S, NotebookLine
from tests.test_notebook import this_python_kernel

SETUP = """
import json, os, threading, time, warnings
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np
from IPython.display import DisplayHandle
from gpu_watch import GPUWatch, GPUWatchWarning
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

updates = []  # (thread name, text) of every redraw of a display
_update = DisplayHandle.update

def spy(self, obj, **kwargs):
    updates.append((threading.current_thread().name, obj["text/plain"]))
    return _update(self, obj, **kwargs)

DisplayHandle.update = spy

class Pace(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        time.sleep(0.1)

model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
x = np.zeros((320, 4), dtype="float32")
"""

FIT = """
gpu = FakeGPU(util_pct=77, mem_used_mib=3072, processes=[FakeProcess(used_mib=2048,
                                                                     sm_util_pct=70)])
with warnings.catch_warnings():
    warnings.simplefilter("ignore", GPUWatchWarning)
    model.fit(x, x[:, :1], epochs=1, batch_size=8, verbose=0,
              callbacks=[Pace(), GPUWatch(log_dir="logs", plot=False, nvml=FakeNVML([gpu]))])
fit_thread = threading.current_thread().name
"""

REPORT = """
print("UPDATES " + json.dumps({"fit_thread": fit_thread, "updates": updates}))
"""


class Recording(NotebookClient):
    """Keeps every display message the kernel sent, with the kernel's time stamp."""

    displays: list[tuple[str, dt.datetime, str]]

    def process_message(self, msg, cell, cell_index):
        content = msg.get("content") or {}
        if msg["msg_type"] in ("display_data", "update_display_data"):
            stamp = msg["header"]["date"]
            if isinstance(stamp, str):
                stamp = dt.datetime.fromisoformat(stamp)
            self.displays.append((msg["msg_type"], stamp,
                                  content.get("data", {}).get("text/plain", "")))
        return super().process_message(msg, cell, cell_index)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("notebook")
    work = folder / "work"
    work.mkdir()
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in (SETUP, FIT, REPORT)]
    client = Recording(notebook, km=this_python_kernel(folder / "kernels"), timeout=300,
                       resources={"metadata": {"path": str(work)}})
    client.displays = []
    try:
        client.execute()
    except Exception as exc:
        pytest.fail(f"the notebook failed:\n{exc}")
    report = "".join(o.get("text", "") for o in notebook.cells[2].outputs)
    spied = json.loads(report.split("UPDATES ", 1)[1])
    return {"cell": notebook.cells[1], "displays": client.displays, "spied": spied}


def test_the_cell_keeps_the_final_line_and_the_summary(executed):
    outputs = executed["cell"].outputs
    shown = [o["data"]["text/plain"] for o in outputs if o["output_type"] == "display_data"]
    assert len(shown) == 1  # one line, redrawn in place
    assert shown[0].startswith("gpu-watch [completed, ")
    assert "GPU util 77% | this training 70% | memory 3.0 GiB | verdict cpu_fallback" in shown[0]
    printed = "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
    assert re.search(r"gpu-watch: verdict cpu_fallback \(completed\); measured \d+ batches in 1 "
                     r"finished epoch; run folder logs/", printed), printed


def test_the_line_was_redrawn_live_at_most_once_a_second(executed):
    updates = [d for d in executed["displays"] if d[0] == "update_display_data"]
    live = [d for d in updates if d[2].startswith("gpu-watch [running")]
    assert len(live) >= 2, updates  # the fit lasts more than 4 s
    assert any("GPU util 77%" in text for _, _, text in live)
    redraws = updates[:-1]  # the last one is the final line, drawn when training ends
    gaps = [(b[1] - a[1]).total_seconds() for a, b in zip(redraws, redraws[1:], strict=False)]
    assert gaps and min(gaps) >= NOTEBOOK_PERIOD_S * 0.95  # the kernel's own time stamps


def test_the_live_redraws_come_from_another_thread_than_training(executed):
    spied = executed["spied"]
    threads = [name for name, text in spied["updates"] if text.startswith("gpu-watch [running")]
    assert threads and set(threads) == {"gpu-watch-notebook"}
    assert spied["fit_thread"] != "gpu-watch-notebook"


# -- NotebookLine, without a kernel ----------------------------------------------------------


class Handle:
    def __init__(self):
        self.calls: list[tuple[float, str, str]] = []

    def update(self, obj, raw=False):
        assert raw
        self.calls.append((time.monotonic(), threading.current_thread().name,
                           obj["text/plain"]))


def test_the_line_stops_by_itself_when_the_run_was_closed_elsewhere():
    finished = threading.Event()

    class Closing(Handle):
        def update(self, obj, raw=False):
            super().update(obj, raw)
            if len(self.calls) == 2:
                finished.set()  # the run closed (an exception in fit) during this redraw

    handle = Closing()
    line = NotebookLine(handle, lambda: "x", finished.is_set, period_s=0.02)
    line._thread.join(30.0)
    assert not line._thread.is_alive()  # the thread ended with the run, by itself
    assert len(handle.calls) == 2


def test_a_failing_display_never_reaches_the_caller():
    class Broken:
        def update(self, obj, raw=False):
            raise RuntimeError("the notebook went away")

    line = NotebookLine(Broken(), lambda: "x", lambda: False, period_s=0.02)
    line.stop()  # draws the final line: no exception
    caught = take_swallowed("live")
    assert caught and {(s.place, s.error) for s in caught} == {
        ("live.draw", "RuntimeError: the notebook went away")}
