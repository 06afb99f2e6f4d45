"""The figures and report.html are drawn by a separate process: never on the training thread,
written atomically, complete when Python exits, a failure a warning and never a lost run."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import gpu_watch.report
import gpu_watch.report.files
from gpu_watch import GPUWatch, GPUWatchWarning, load_run
from gpu_watch.report import list_runs_text, run_report_command
from gpu_watch.sensing.nvml import NVML
from gpu_watch.testing import FakeGPU, FakeNVML
from gpu_watch.training.config import Config
from gpu_watch.training.monitor import Monitor
from gpu_watch.views import drawing

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("utilization.png", "epochs.png", "report.html")
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def fit(callbacks, epochs=1):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        model.fit(np.zeros((16, 2), "float32"), np.zeros((16, 1), "float32"), batch_size=8,
                  epochs=epochs, verbose=0, callbacks=callbacks)


def played_run(log_dir: Path, plot: bool = False, epochs: int = 1) -> Monitor:
    """A run played through a Monitor (no framework): a few batches per epoch; left open."""
    monitor = Monitor(Config(log_dir=str(log_dir), plot=plot, interval_s=0.02),
                      NVML(FakeNVML([FakeGPU(util_pct=70)])), "tensorflow", (0, 1),
                      {"name": "tensorflow", "gpus": []}, None)
    for epoch in range(epochs):
        monitor.begin_epoch(epoch)
        for batch in range(3):
            start = monitor.elapsed_s()
            monitor.timeline.add_batch(epoch, batch, 1, start, start + 0.001, None)
        monitor.end_epoch(epoch, {"loss": 1.0})
    return monitor


def assert_whole_pngs(run_dir: Path) -> int:
    """Every PNG in the folder is complete; returns how many there are."""
    pngs = [p for p in run_dir.glob("*.png")]
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_START) and data.endswith(PNG_END), png
    return len(pngs)


@pytest.fixture
def own_painter():
    """A painter of this test's own, closed afterwards."""
    painter = drawing.Painter()
    yield painter
    painter.close(60.0)


def test_the_figures_are_drawn_by_another_process_and_never_seen_half_written(tmp_path,
                                                                              monkeypatch):
    def here(*args, **kwargs):
        raise AssertionError("drawn in the training process")

    monkeypatch.setattr(gpu_watch.report, "render", here)
    monkeypatch.setattr(gpu_watch.report.files, "render", here)
    watch = GPUWatch(log_dir=tmp_path, nvml=FakeNVML([FakeGPU(util_pct=50)]), verbose=0)
    fit([watch])
    deadline = time.monotonic() + 60
    while not watch.wait_for_report(0.02) and time.monotonic() < deadline:
        assert_whole_pngs(watch.run_dir)  # looked at while they are being written
    assert watch.wait_for_report(0)
    assert assert_whole_pngs(watch.run_dir) == 2
    html = (watch.run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert not list(watch.run_dir.glob(".*.tmp"))


def test_python_waits_for_the_figures_when_it_exits(tmp_path):
    """One run ends normally, one is left open and closed at exit: both have their figures
    when the process is gone, though neither was waited for."""
    script = textwrap.dedent("""
        import sys
        from gpu_watch.views import drawing
        from gpu_watch.training.config import Config
        from gpu_watch.training.monitor import Monitor
        from gpu_watch.sensing.nvml import NVML
        from gpu_watch.testing import FakeGPU, FakeNVML

        def run(log_dir):
            monitor = Monitor(Config(log_dir=log_dir, interval_s=0.02),
                              NVML(FakeNVML([FakeGPU(util_pct=70)])), "tensorflow", (0, 1),
                              {"name": "tensorflow", "gpus": []}, None)
            monitor.begin_epoch(0)
            monitor.timeline.add_batch(0, 0, 1, 0.0, 0.001, None)
            monitor.end_epoch(0, {"loss": 1.0})
            return monitor

        drawing.DRAWING_SHARE = float("inf")  # each run pays for its figures, however short
        run(sys.argv[1] + "/ended").finish("completed")
        run(sys.argv[1] + "/open")  # never finished: the exit closes it
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    ended = next((tmp_path / "ended").iterdir())
    left_open = next((tmp_path / "open").iterdir())
    for run_dir in (ended, left_open):
        assert {p.name for p in run_dir.iterdir()} >= set(FIGURES), run_dir
        assert assert_whole_pngs(run_dir) == 2
    assert load_run(ended).status == "completed"
    assert load_run(left_open).status == "failed"


def test_a_drawing_that_fails_is_a_warning_and_the_run_folder_stays_whole(tmp_path):
    class TakeTheFigureName(keras.callbacks.Callback):
        """Runs before GPUWatch ends the run: a folder now holds the figure's file name."""

        def __init__(self, watch):
            super().__init__()
            self.watch = watch

        def on_train_end(self, logs=None):
            (self.watch.run_dir / "utilization.png").mkdir()

    watch = GPUWatch(log_dir=tmp_path, nvml=FakeNVML([FakeGPU(util_pct=50)]), verbose=0)
    fit([TakeTheFigureName(watch), watch], epochs=2)
    with pytest.warns(GPUWatchWarning, match="could not draw the figures of .*gpu-watch report"):
        assert watch.wait_for_report(60) is False
    run = load_run(watch.run_dir)
    assert run.status == "completed" and run.verdict == "cpu_fallback"
    assert len(run.epochs) == 2 and len(run.batches) == 4
    assert run.warnings == []


def test_a_drawing_process_that_dies_fails_its_drawings_and_another_one_starts(
        tmp_path, own_painter):
    run = played_run(tmp_path)
    run.finish("completed")
    run_dir = run.run_dir
    first = own_painter.request(run_dir)
    worker = own_painter._process
    os.kill(worker.pid, signal.SIGKILL)  # the worker this test started
    worker.wait(10)
    with pytest.warns(GPUWatchWarning, match="drawing process ended"):
        assert own_painter.wait([first], 10)
    assert first.error is not None and not (run_dir / "utilization.png").exists()
    second = own_painter.request(run_dir)
    assert own_painter._process.pid != worker.pid
    assert own_painter.wait([second], 60) and second.error is None
    assert assert_whole_pngs(run_dir) == 2


def test_the_drawing_process_yields_the_cpu_and_outlives_a_ctrl_c(tmp_path):
    run = played_run(tmp_path)
    run.finish("completed")
    painter = drawing.painter()
    assert painter.wait([painter.request(run.run_dir)], 60)
    worker = painter._process
    assert os.getpriority(os.PRIO_PROCESS, worker.pid) == drawing.DRAWING_NICE == 10
    # The training's session: under Linux's autogroup scheduling a session of its own would
    # weigh as much as the training, whatever the worker's priority.
    assert os.getsid(worker.pid) == os.getsid(0)
    os.kill(worker.pid, signal.SIGINT)  # as a Ctrl-C in the terminal does
    again = painter.request(run.run_dir)
    assert painter.wait([again], 60) and again.error is None
    assert painter._process is worker and worker.poll() is None


def test_where_no_drawing_process_can_start_the_figures_are_drawn_on_a_thread(
        tmp_path, monkeypatch, own_painter):
    monkeypatch.setattr(drawing, "_why_no_worker", lambda: "no interpreter to start")
    run = played_run(tmp_path)
    run.finish("completed")
    run_dir = run.run_dir
    with pytest.warns(GPUWatchWarning, match="on a thread of the training process"):
        asked = own_painter.request(run_dir)
    assert own_painter._process is None
    assert own_painter.wait([asked], 60) and asked.error is None and asked.cpu_s > 0
    assert assert_whole_pngs(run_dir) == 2


def test_when_drawing_processes_keep_ending_unanswered_the_figures_are_drawn_here(
        tmp_path, monkeypatch, own_painter):
    def start_one_that_fails():
        return subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    monkeypatch.setattr(drawing, "_start_worker", start_one_that_fails)
    run = played_run(tmp_path)
    run.finish("completed")
    for _ in range(2):
        asked = own_painter.request(run.run_dir)
        with pytest.warns(GPUWatchWarning, match=r"ended \(exit status 3\)"):
            assert own_painter.wait([asked], 30) and asked.error is not None
    with pytest.warns(GPUWatchWarning, match="ended 2 times in a row before drawing anything"):
        asked = own_painter.request(run.run_dir)
    assert own_painter.wait([asked], 60) and asked.error is None
    assert assert_whole_pngs(run.run_dir) == 2


def test_load_run_and_gpu_watch_report_do_not_depend_on_the_figures(tmp_path):
    run = played_run(tmp_path / "logs", epochs=2)
    run.finish("completed")
    run_dir = run.run_dir
    (run_dir / ".utilization.png.x1y2.tmp").write_bytes(PNG_START)  # a drawing under way

    def seen() -> tuple:
        run = load_run(run_dir)
        summary = io.StringIO()
        assert run_report_command(str(run_dir), plots=False, out=summary) == 0
        return (json.dumps(run.info, sort_keys=True), run.samples.to_csv(),
                run.batches.to_csv(), run.epochs.to_csv(), run.warnings, summary.getvalue(),
                list_runs_text(tmp_path / "logs"))

    before = seen()
    asked = drawing.painter().request(run_dir)
    assert drawing.painter().wait([asked], 60) and asked.error is None
    (run_dir / ".utilization.png.x1y2.tmp").unlink()
    assert {p.name for p in run_dir.iterdir()} >= set(FIGURES)
    assert seen() == before


def test_epoch_end_redraws_wait_for_the_last_one_and_keep_to_their_budget(tmp_path,
                                                                          monkeypatch):
    asked = []
    request = drawing.Painter.request

    def counted(self, run_dir):
        asked.append(request(self, run_dir))
        return asked[-1]

    monkeypatch.setattr(drawing.Painter, "request", counted)
    monkeypatch.setattr(drawing, "FIRST_RENDER_S", 0.0)
    monkeypatch.setattr(drawing, "DRAWING_SHARE", float("inf"))  # the final one: drawn at once
    run = played_run(tmp_path, plot=True)  # epoch 0 ended: its redraw is asked for
    assert len(asked) == 1
    run.begin_epoch(1)
    run.end_epoch(1, {"loss": 0.5})
    assert len(asked) == 1  # the first is still being drawn
    assert run.wait_for_drawing(60)
    run.begin_epoch(2)
    run.end_epoch(2, {"loss": 0.4})
    assert len(asked) == 1  # that drawing's CPU time over 2% of training is not over yet
    monkeypatch.setattr(drawing, "RENDER_SHARE", 1e9)
    run.begin_epoch(3)
    run.end_epoch(3, {"loss": 0.3})
    assert len(asked) == 2
    run.finish("completed")
    assert len(asked) == 3  # the last one is always asked for
    assert run.wait_for_drawing(60)
    assert asked[-1].done and asked[-1].error is None


def test_the_worker_answers_every_request_and_stops_at_the_end_of_its_input(tmp_path):
    run = played_run(tmp_path)
    run.finish("completed")
    run_dir = run.run_dir
    lines = [{"number": 1, "run_dir": str(run_dir)}, "not json",
             {"number": 2, "run_dir": str(tmp_path / "missing")},
             {"number": 3, "run_dir": str(run_dir)}]
    requests = io.BytesIO(b"".join(
        (line if isinstance(line, str) else json.dumps(line)).encode() + b"\n"
        for line in lines))
    answers = io.StringIO()
    drawing.serve(requests, answers)
    got = {a["number"]: a for a in map(json.loads, answers.getvalue().splitlines())}
    assert sorted(got) == [1, 2, 3]
    assert got[1]["error"] is None and got[3]["error"] is None
    assert "RunFolderError" in got[2]["error"]
    assert assert_whole_pngs(run_dir) == 2


@pytest.mark.parametrize("value", [-1, "5", True, float("nan")])
def test_wait_for_report_takes_a_number_of_seconds(value):
    with pytest.raises(ValueError, match=f"timeout_s must be a number of seconds, at least 0, "
                                         f"got {value!r}"):
        GPUWatch().wait_for_report(value)


def test_wait_for_report_with_nothing_to_draw(tmp_path):
    assert GPUWatch().wait_for_report(0) is True  # no run yet
    watch = GPUWatch(log_dir=tmp_path, plot=False, verbose=0)
    fit([watch])
    assert watch.wait_for_report(0) is True
    assert not [p for p in watch.run_dir.iterdir() if p.name in FIGURES]


# -- figures on demand for runs too short to pay for them ----------------------------------------


class CPUClock:
    """The training process's CPU time, as a test sets it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize(("run_cpu_s", "drawn_at_the_end"), [(1.6, True), (1.59, False)])
def test_the_final_figures_are_drawn_at_the_end_only_within_their_share_of_the_run(
        tmp_path, monkeypatch, run_cpu_s, drawn_at_the_end):
    asked = []
    monkeypatch.setattr(drawing.Painter, "request",
                        lambda self, run_dir: asked.append(run_dir) or drawing.Drawing(
                            Path(run_dir), len(asked)))
    monkeypatch.setattr(drawing.painter(), "_last_cpu_s", 0.4)  # one drawing: 0.4 CPU-s
    cpu = CPUClock()
    redraws = drawing.Redraws(tmp_path, cpu_clock=cpu)
    cpu.now += run_cpu_s  # 0.4 s is 25 % of 1.6 s of the run's CPU time
    redraws.ask(5.0, final=True)
    assert (asked == [tmp_path]) is drawn_at_the_end
    assert redraws.left_for_later is not drawn_at_the_end


def test_a_short_run_s_figures_are_drawn_when_asked_for(tmp_path, monkeypatch):
    asked = []
    request = drawing.Painter.request

    def counted(self, run_dir):
        asked.append(request(self, run_dir))
        return asked[-1]

    monkeypatch.setattr(drawing.Painter, "request", counted)
    monkeypatch.setattr(drawing, "DRAWING_SHARE", 0.0)  # no run is long enough
    run = played_run(tmp_path, plot=True)
    run.finish("completed")
    assert asked == [] and run.redraws.left_for_later
    assert not [p for p in run.run_dir.iterdir() if p.name in FIGURES]
    assert run.wait_for_drawing(60)  # `GPUWatch.wait_for_report`: drawn now
    assert len(asked) == 1 and not run.redraws.left_for_later
    assert {p.name for p in run.run_dir.iterdir()} >= set(FIGURES)


def test_at_exit_only_the_last_short_run_has_its_figures_drawn(tmp_path):
    """Many short fits in one process (a test suite, a tuner): their figures wait to be asked
    for, but the last run's are drawn as Python exits: the ones a script looks at."""
    script = textwrap.dedent("""
        import sys
        from gpu_watch.training.config import Config
        from gpu_watch.training.monitor import Monitor
        from gpu_watch.sensing.nvml import NVML
        from gpu_watch.testing import FakeGPU, FakeNVML

        for name in ("first", "second", "last"):
            monitor = Monitor(Config(log_dir=sys.argv[1] + "/" + name, interval_s=0.02),
                              NVML(FakeNVML([FakeGPU(util_pct=70)])), "tensorflow", (0, 1),
                              {"name": "tensorflow", "gpus": []}, None)
            monitor.begin_epoch(0)
            monitor.timeline.add_batch(0, 0, 1, 0.0, 0.001, None)
            monitor.end_epoch(0, {"loss": 1.0})
            monitor.finish("completed")
            assert monitor.redraws.left_for_later, "a run this short pays for no drawing"
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    drawn = {name: set(FIGURES) <= {p.name for p in next((tmp_path / name).iterdir()).iterdir()}
             for name in ("first", "second", "last")}
    assert drawn == {"first": False, "second": False, "last": True}
