"""`report.html` follows a running run: while `run.json` says running, the page reloads itself
every few seconds and says so; once the run has ended it is static."""

from __future__ import annotations

import json
import re
import warnings

import keras
import numpy as np

from gpu_watch import GPUWatch, GPUWatchWarning, load_run, runlog
from gpu_watch.report import report_html
from gpu_watch.report.html import RELOAD_S
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess
from tests.runfolders import synthetic_run

REFRESH = re.compile(r'<meta http-equiv="refresh" content="(\d+)">')


def set_status(run_dir, status, writer=None):
    info = json.loads((run_dir / runlog.RUN_JSON).read_text())
    info["status"] = status
    if writer is not None:
        info["writer"] = writer
    runlog.write_run_json(run_dir, runlog.RunRecord.from_json(info))


def test_a_running_run_reloads_and_says_so(tmp_path):
    run_dir = synthetic_run(tmp_path, "live")
    set_status(run_dir, runlog.STATUS_RUNNING, runlog.run_identity())  # this process writes
    page = report_html(load_run(run_dir), None, None)
    assert REFRESH.findall(page) == [str(RELOAD_S)]
    assert f"This run is still running: this page reloads every {RELOAD_S} s" in page
    assert 2 <= RELOAD_S <= 10


def test_an_ended_run_and_one_whose_writer_died_are_static(tmp_path):
    done = synthetic_run(tmp_path, "done")
    assert not REFRESH.search(report_html(load_run(done), None, None))
    dead = synthetic_run(tmp_path, "dead")
    set_status(dead, runlog.STATUS_RUNNING, {"host": "elsewhere", "pid": 1})
    run = load_run(dead)
    assert run.status == runlog.STATUS_INCOMPLETE
    page = report_html(run, None, None)
    assert not REFRESH.search(page) and "still running" not in page


def test_the_page_drawn_during_training_reloads_and_the_final_one_does_not(tmp_path):
    """A real fit: the epoch-end drawing (by the drawing process) while training runs, then the
    final one."""
    watch = GPUWatch(log_dir=tmp_path, plot=True, verbose=0, interval_s=0.05,
                     nvml=FakeNVML([FakeGPU(util_pct=80,
                                            processes=[FakeProcess(used_mib=900)])]))
    pages = []

    class DrawNow(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            watch.monitor.redraws.first_s = 0.0  # draw at the first epoch end, not after 10 s

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                assert watch.wait_for_report(timeout_s=120)
                pages.append((watch.run_dir / runlog.REPORT_HTML).read_text())

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((32, 4), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        model.fit(x, x[:, :1], epochs=2, batch_size=8, verbose=0, callbacks=[watch, DrawNow()])
    assert watch.wait_for_report(timeout_s=120)
    assert len(pages) == 1 and REFRESH.findall(pages[0]) == [str(RELOAD_S)]
    final = (watch.run_dir / runlog.REPORT_HTML).read_text()
    assert not REFRESH.search(final) and "still running" not in final
    assert "completed" in final
