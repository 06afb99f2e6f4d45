"""Figures, report.html and `gpu-watch report`, checked through matplotlib objects and files."""

from __future__ import annotations

import base64
import html
import io
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgba
from matplotlib.image import imread
from matplotlib.text import Text
from runfolders import run_info, synthetic_run, write_run

from gpu_watch import cli, report, runlog
from gpu_watch.judging.causes import CATALOGUE
from gpu_watch.report import figures, view
from gpu_watch.runlog import load_run

INTERVAL_S = 0.5


def gpu_util(t: np.ndarray, gpu: int) -> np.ndarray:
    """GPU 0 busy with two idle stretches and a hole in the readings; GPU 1 mostly idle."""
    if gpu == 0:
        u = np.full(t.shape, 90.0)
        u[(t > 10) & (t <= 20)] = 2.0
        u[(t > 25) & (t <= 27)] = np.nan
        u[(t > 35) & (t <= 38)] = 5.0
        return u
    u = np.full(t.shape, 80.0)
    u[t <= 8] = np.nan  # 16 readings missing
    u[(t > 8) & (t <= 28.5)] = 3.0  # 41 idle readings, of 64 measured
    return u


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def idle_run(log_dir):
    # 4 epochs x 80 batches x 0.125 s: exactly 40 s, read every 0.5 s (80 readings per GPU).
    path = synthetic_run(log_dir, "idle-gpu", gpus=(0, 1), epochs=4, batches_per_epoch=80,
                         step_s=0.125, interval_s=INTERVAL_S, util=gpu_util, verdict="idle",
                         causes=["input_bound"], gpu_verdicts={"0": "ok", "1": "idle"},
                         started_at="2026-11-26T11:00:00Z")
    return load_run(path)


@pytest.fixture(scope="module")
def cpu_run(log_dir):
    path = synthetic_run(log_dir, "cpu", gpus=(), epochs=3, batches_per_epoch=40,
                         step_s=0.2, verdict="cpu_fallback",
                         causes=["no_nvidia_driver", "gpus_hidden"],
                         started_at="2026-11-26T10:00:00Z")
    return load_run(path)


def banner(fig) -> str:
    texts = [t.get_text() for t in fig.findobj(Text) if t.get_gid() == "banner"]
    assert len(texts) == 1
    return texts[0].replace("\n", " ")


def artist(fig, gid: str):
    found = [a for a in fig.findobj() if a.get_gid() == gid]
    assert len(found) == 1, f"{gid}: {len(found)} artists"
    return found[0]


def test_cpu_fallback_banner_names_the_cause_and_tops_the_figure(cpu_run):
    fig = report.plot_utilization(cpu_run)
    # Every cause that blocks the GPU, in the order to fix them, and the first one's remedy,
    # without the code marks a figure cannot show.
    assert banner(fig) == (
        "Training ran on the CPU. First: " + CATALOGUE["no_nvidia_driver"].message.rstrip(".")
        + "; fix: Install the NVIDIA driver for your GPU (e.g. sudo apt install "
        "nvidia-driver-550), reboot, and check that nvidia-smi lists the GPU. Then: "
        + CATALOGUE["gpus_hidden"].message)
    banner_text = next(t for t in fig.findobj(Text) if t.get_gid() == "banner")
    banner_bottom = banner_text.axes.get_position().y0
    others = [ax.get_position().y1 for ax in fig.axes if ax is not banner_text.axes]
    assert others and banner_bottom >= max(others)
    title = artist(fig, "verdict-title")
    assert "CPU" in title.get_text() and title.get_color() == report.VERDICT_COLOURS[
        "cpu_fallback"]
    # With no GPU the step times still carry the figure.
    steps = np.asarray(artist(fig, "step").get_ydata(), dtype=float)
    # 120 batches less step 0 (drawn as its own span), and a break between epochs rather
    # than a line across validation.
    assert np.allclose(steps[~np.isnan(steps)], 0.2) and (~np.isnan(steps)).sum() == 119
    assert np.isnan(steps[1:]).sum() == 2 and np.isnan(steps[0])


def test_banner_prefers_a_blocking_cause_over_a_warning(log_dir):
    path = write_run(log_dir, "warning-first", run_info(
        "warning-first", verdict="cpu_fallback", gpus=(),
        causes=["input_bound", "forced_cpu_placement"]))
    assert report.banner_text(load_run(path)) == (
        "Training ran on the CPU: "
        + CATALOGUE["forced_cpu_placement"].message.rstrip(".")
        + "; fix: Remove with keras.device(\"cpu\") around model building or fit, and any "
        "device scope or setting of your framework that picks the CPU.")


def test_idle_banner_percentage_matches_the_readings(idle_run):
    samples = pd.read_csv(idle_run.path / runlog.SAMPLES_CSV)
    gpu1 = samples[samples.gpu == 1].util_pct
    measured = gpu1.notna().sum()
    idle = (gpu1 < 10).sum()
    expected = round(100 * idle / measured)
    assert expected == 64  # 41 of 64 measured; 16 missing readings count for nothing
    text = banner(report.plot_utilization(idle_run))
    assert text.startswith(f"GPU 1 idle {expected}% of training.")
    assert CATALOGUE["input_bound"].message in text
    assert "GPU 0" not in text  # judged ok: an idle GPU is flagged by name, alone


def test_idle_shading_matches_the_idle_stretches(idle_run):
    fig = report.plot_utilization(idle_run)
    spans = artist(fig, "idle-gpu0")
    assert isinstance(spans, PolyCollection)
    extents = sorted((p.vertices[:, 0].min(), p.vertices[:, 0].max())
                     for p in spans.get_paths())
    # A reading covers the time since the previous one (NVML's last sample period).
    assert np.allclose(extents, [(10.0, 20.0), (35.0, 38.0)])
    extents = [(p.vertices[:, 0].min(), p.vertices[:, 0].max())
               for p in artist(fig, "idle-gpu1").get_paths()]
    assert np.allclose(extents, [(8.0, 28.5)])


def test_missing_readings_are_gaps_not_zeros(idle_run):
    fig = report.plot_utilization(idle_run)
    times = np.arange(1, 81) * INTERVAL_S
    missing = (times > 25) & (times <= 27)
    for gid in ("util-gpu0", "mem-gpu0", "proc-mem-gpu0"):
        line = artist(fig, gid)
        assert np.allclose(line.get_xdata(), times)
        y = np.asarray(line.get_ydata(), dtype=float)
        assert np.array_equal(np.isnan(y), missing), gid
        assert not (y == 0).any(), gid


def test_envelope_keeps_a_single_spike_and_dip(log_dir):
    n = 50_000
    step_s = np.full(n, 0.02)
    step_s[20_000] = 3.0
    step_s[35_000] = 0.0005
    path = synthetic_run(log_dir, "spiky", gpus=(), epochs=5, batches_per_epoch=n // 5,
                         step_s=step_s, verdict="cpu_fallback")
    run = load_run(path)
    fig = report.plot_utilization(run)
    line = artist(fig, "step")
    assert len(line.get_ydata()) <= report.ENVELOPE_BUCKETS  # aggregated, not 50k points
    vertices = np.concatenate([p.vertices for p in artist(fig, "step-envelope").get_paths()])
    assert vertices[:, 1].max() == pytest.approx(3.0)
    assert vertices[:, 1].min() == pytest.approx(0.0005)
    # ... and each where it happened, within one bucket.
    bucket_s = run.batches.time_s.max() / report.ENVELOPE_BUCKETS
    for index, value in ((20_000, vertices[:, 1].max()), (35_000, vertices[:, 1].min())):
        at = vertices[vertices[:, 1] == value, 0]
        assert np.all(np.abs(at - run.batches.time_s[index]) <= bucket_s)


def test_eight_gpus_each_get_a_readable_row(log_dir):
    path = synthetic_run(log_dir, "eight", gpus=range(8), epochs=2, batches_per_epoch=40,
                         util=lambda t, g: 50 + 40 * np.sin(t + g))
    fig = report.plot_utilization(load_run(path))
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    for gpu in range(8):
        assert any(t.startswith(f"GPU {gpu} · ") for t in titles)
        util = artist(fig, f"util-gpu{gpu}")
        assert util.axes.get_position().height * fig.get_figheight() >= 1.0  # inches
    assert fig.get_figheight() <= 20


def test_epoch_bars_take_the_epoch_verdict_colour(log_dir):
    path = synthetic_run(log_dir, "mixed", gpus=(0,), epochs=3, batches_per_epoch=20,
                         epoch_verdicts=["ok", "idle", "ok"])
    run = load_run(path)
    fig = report.plot_epochs(run)
    util_ax = artist(fig, "util-p95").axes
    colours = [bar.get_facecolor() for bar in util_ax.patches]
    assert colours == [to_rgba(report.VERDICT_COLOURS[v]) for v in ("ok", "idle", "ok")]
    assert np.allclose(artist(fig, "util-p95").get_ydata(), run.epochs.gpu_util_p95)


def test_simulated_readings_are_labelled_in_the_figures(log_dir):
    info = run_info("simulated", verdict="ok")
    info["nvml"]["simulated"] = True
    run = load_run(write_run(log_dir, "simulated", info))
    for fig in (report.plot_utilization(run), report.plot_epochs(run)):
        assert artist(fig, "simulated").get_text() == "SIMULATED"
    assert "SIMULATED (FakeNVML)" in report.report_html(run, None, None)
    info["nvml"]["simulated"] = False
    real = load_run(write_run(log_dir, "real", info))
    assert not [a for a in report.plot_utilization(real).findobj() if a.get_gid() == "simulated"]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.cells: list[str] = []
        self.text: list[str] = []
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        self._in_td = tag == "td"

    def handle_endtag(self, tag):
        self._in_td = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_td:
            self.cells.append(data)


def test_render_writes_sane_pngs_and_a_self_contained_report(idle_run):
    paths = report.render(idle_run.path)
    assert [p.name for p in paths] == [runlog.UTILIZATION_PNG, runlog.EPOCHS_PNG,
                                       runlog.REPORT_HTML]
    for png in paths[:2]:
        assert 20_000 < png.stat().st_size < 5_000_000
        pixels = imread(png)[..., :3]
        assert pixels.shape[1] == figures._WIDTH_IN * report.DPI
        assert pixels.std() > 0.05  # not blank
    assert not list(idle_run.path.glob(".*.tmp"))

    page = _Page()
    page.feed(paths[2].read_text())
    page.close()
    text = " ".join(page.text)
    assert report.VERDICT_WORDS["idle"] in text
    assert "GPU 1 idle 64% of training" in text
    assert CATALOGUE["input_bound"].remedy in text
    assert len(page.images) == 2
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.cells.count("idle") + page.cells.count("ok") == 4  # one row per epoch


def test_report_html_escapes_what_the_run_recorded(log_dir):
    info = run_info("x", verdict="cpu_fallback", gpus=(), causes=[{
        "code": "forced_cpu_placement", "severity": "error", "group": "code",
        "message": "<script>alert(1)</script>", "remedy": "a & b", "evidence": {}}])
    path = write_run(log_dir, "escaped", info)
    page = report.report_html(load_run(path), None, None)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_a_run_in_progress_renders_from_a_background_thread(log_dir):
    info = run_info("live", verdict=None, status=runlog.STATUS_RUNNING)
    info["writer"] = runlog.run_identity()  # this process: the run is live
    path = write_run(log_dir, "live", info)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(report.render(path)))
    worker.start()
    worker.join(timeout=60)
    assert result and all(p.stat().st_size > 0 for p in result[0])
    assert "still going" in report.summary_text(load_run(path))


def test_report_without_a_path_lists_the_default_log_folder(cpu_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    assert cli.main(["report"], out=out) == 2  # no gpu_watch_logs here: said, not a usage error
    assert "gpu_watch_logs" in out.getvalue()
    (tmp_path / "gpu_watch_logs").symlink_to(cpu_run.path.parent)
    out = io.StringIO()
    assert cli.main(["report", "--no-plots"], out=out) == 0
    count = len(runlog.find_runs(cpu_run.path.parent))
    noun = "run" if count == 1 else "runs"
    assert out.getvalue().startswith(f"{count} {noun} in gpu_watch_logs, newest first:")
    assert cpu_run.path.name in out.getvalue()


def test_report_command_summarises_a_run_and_redraws_it(cpu_run):
    for name in (runlog.UTILIZATION_PNG, runlog.EPOCHS_PNG, runlog.REPORT_HTML):
        (cpu_run.path / name).unlink(missing_ok=True)
    out = io.StringIO()
    assert cli.main(["report", "--no-plots", str(cpu_run.path)], out=out) == 0
    assert not (cpu_run.path / runlog.UTILIZATION_PNG).exists()
    out = io.StringIO()
    assert cli.main(["report", str(cpu_run.path)], out=out) == 0
    text = out.getvalue()
    assert "Verdict: " + report.VERDICT_WORDS["cpu_fallback"] in text
    assert CATALOGUE["no_nvidia_driver"].remedy in text
    epoch_lines = [line.split() for line in text.splitlines()
                   if line.strip().split(" ")[0] in ("0", "1", "2")]
    assert [row[0] for row in epoch_lines] == ["0", "1", "2"]
    assert all("cpu_fallback" in row for row in epoch_lines)
    for name in (runlog.UTILIZATION_PNG, runlog.EPOCHS_PNG, runlog.REPORT_HTML):
        assert (cpu_run.path / name).stat().st_size > 0


def test_report_command_lists_runs_newest_first_with_workers_grouped(tmp_path):
    for name, started, verdict in (("b-old", "2026-11-20T09:00:00Z", "ok"),
                                   ("a-new", "2026-11-26T09:00:00Z", "cpu_fallback")):
        write_run(tmp_path, name, run_info(name, verdict=verdict, started_at=started))
    for rank, verdict in ((1, "idle"), (0, "ok")):
        write_run(tmp_path, f"job-rank{rank}", run_info(
            "job", verdict=verdict, started_at="2026-11-23T09:00:00Z", rank=rank, world_size=2))
    out = io.StringIO()
    assert report.run_report_command(str(tmp_path), plots=True, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("4 runs in")
    order = [next(i for i, line in enumerate(lines) if key in line)
             for key in ("a-new", "job (2 workers)", "rank0", "rank1", "b-old")]
    assert order == sorted(order)
    assert "cpu_fallback" in lines[order[0]] and "idle" in lines[order[3]]


def test_workers_with_default_names_are_grouped_by_start_time(tmp_path):
    for name, rank, started in (("20261126-090000-aaaaaa-rank0", 0, "2026-11-26T09:00:00Z"),
                                ("20261126-090004-bbbbbb-rank1", 1, "2026-11-26T09:00:04Z"),
                                ("20261126-120000-cccccc-rank0", 0, "2026-11-26T12:00:00Z")):
        write_run(tmp_path, name, run_info(name, started_at=started, rank=rank, world_size=2))
    text = report.list_runs_text(tmp_path)
    assert "20261126-090000-aaaaaa (2 workers)" in text
    assert "20261126-120000-cccccc (1 worker)" in text  # hours later: another job


def test_report_command_refuses_missing_and_non_run_folders(tmp_path):
    out = io.StringIO()
    assert cli.main(["report", str(tmp_path / "nope")], out=out) == 2
    assert out.getvalue().count("\n") == 1 and "no such folder" in out.getvalue()
    (tmp_path / "notes.txt").write_text("not a run")
    out = io.StringIO()
    assert report.run_report_command(str(tmp_path), plots=True, out=out) == 2
    assert out.getvalue().count("\n") == 1 and "not a gpu-watch run folder" in out.getvalue()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / runlog.RUN_JSON).write_text("{")
    out = io.StringIO()
    assert report.run_report_command(str(broken), plots=True, out=out) == 2
    assert out.getvalue().count("\n") == 1 and "not valid JSON" in out.getvalue()


def test_importing_report_loads_no_framework():
    code = ("import sys, gpu_watch.report; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.strip() == "[]"


# -- epochs.png for one or a few epochs -------------------------------------------------------


def epoch_axis(run):
    fig = report.plot_epochs(run)
    fig.canvas.draw()
    [ax] = [a for a in fig.axes if a.get_xlabel() == "epoch"]
    return ax


@pytest.mark.parametrize(("epochs", "initial", "ticks"), [
    (1, 0, ["0"]), (3, 0, ["0", "1", "2"]), (2, 5, ["5", "6"]),
])
def test_few_epochs_get_whole_epoch_ticks_and_narrow_bars(tmp_path, epochs, initial, ticks):
    path = synthetic_run(tmp_path, "few", epochs=epochs, batches_per_epoch=5)
    run = load_run(path)
    run.epochs["epoch"] += initial
    ax = epoch_axis(run)
    visible = [t.get_text() for t in ax.get_xticklabels()
               if ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
    assert visible == ticks
    low, high = ax.get_xlim()
    assert low < initial and high > initial + epochs - 1
    assert high - low >= 4  # one bar is a sixth of the axis, not all of it
    assert all(bar.get_width() / (high - low) <= 0.2 for bar in ax.patches)


def test_many_epochs_keep_integer_ticks_over_the_epochs_run(tmp_path):
    run = load_run(synthetic_run(tmp_path, "many", epochs=30, batches_per_epoch=2))
    ax = epoch_axis(run)
    low, high = ax.get_xlim()
    assert -1 < low < 0 and 29 < high < 30  # half a bar's room either side, no empty epochs
    positions = [t.get_position()[0] for t in ax.get_xticklabels() if low <= t.get_position()[0]
                 <= high]
    assert len(positions) >= 5 and all(float(p).is_integer() for p in positions)


def test_the_epoch_figure_explains_its_bar_colours_beside_the_first_panel(idle_run, cpu_run):
    from matplotlib.legend import Legend

    for run, verdicts in ((idle_run, {"ok", "idle"}), (cpu_run, {"cpu_fallback"})):
        fig = report.plot_epochs(run)
        first = fig.axes[0]
        legends = list({id(a): a for a in first.findobj(Legend)
                        if a.get_title().get_text() == "bar colour: the epoch's verdict"}
                       .values())
        assert len(legends) == 1, run.path.name
        assert {t.get_text() for t in legends[0].get_texts()} == verdicts


def test_the_summary_counts_the_batches_of_an_epoch_that_did_not_finish(tmp_path):
    batches = [{"epoch": e, "batch": b, "steps": 1, "time_s": 1.0 + e + 0.01 * b,
                "step_s": 0.01} for e, count in ((0, 10), (1, 1_234)) for b in range(count)]
    info = run_info("stopped", verdict="cpu_fallback", gpus=(), status=runlog.STATUS_INTERRUPTED)
    run = load_run(write_run(tmp_path, "stopped", info, batches=batches, epochs=[
        {"epoch": 0, "batches": 10, "step_s_mean": 0.01, "verdict": "cpu_fallback"}]))
    lines = report.summary_text(run).splitlines()
    epochs = lines.index("Epochs:")
    assert lines[epochs + 3] == "  and 1,234 batches measured in epoch 1, which did not finish"
    none = load_run(write_run(tmp_path, "none", info, batches=batches[10:11]))
    assert ("Epochs: none finished; 1 batch measured in epoch 1, which did not finish"
            in report.summary_text(none).splitlines())


BREAKDOWN = {"compute_s": 8.1, "data_wait_s": 3.0, "other_s": 1.2, "loop_s": 12.3,
             "compute_fraction": 0.66, "data_wait_fraction": 0.24, "other_fraction": 0.1,
             "wait_measure": "sampled_ticks"}


@pytest.fixture(scope="module")
def split_run(log_dir):
    """A run that records where its loop's time went (run.json and epochs.csv)."""
    info = run_info("split", verdict="idle", causes=["input_bound"])
    info["breakdown"] = BREAKDOWN
    epochs = [{"epoch": e, "batches": 40, "step_s_mean": 0.2, "verdict": "idle",
               "wait_fraction": 0.25, "wait_measure": "sampled_ticks", "compute_s": 4.0 + e,
               "data_wait_s": 1.5, "other_s": 0.6 if e else None, "other_fraction": 0.1}
              for e in range(2)]
    return load_run(write_run(log_dir, "split", info, epochs=epochs))


def test_the_loop_s_time_is_told_where_the_run_records_it(split_run, cpu_run):
    line = ("12.3 s in the training loop: compute 8.1 s (66%), waiting for data 3.0 s (24%), "
            "other 1.2 s (10%) (the wait from where the sampler found the training thread)")
    assert f"Time: {line}" in report.summary_text(split_run).splitlines()
    assert html.escape(line, quote=True) in report.report_html(split_run, None, None)
    from gpu_watch.report.text import summary_line

    assert summary_line(split_run.record, split_run.path).splitlines()[1] == f"  time: {line}"
    # An older run (or one recorded without it) says nothing about it.
    assert "Time:" not in report.summary_text(cpu_run)
    assert "time:" not in summary_line(cpu_run.record, cpu_run.path)


def test_the_epoch_table_and_figure_split_each_epoch_s_time(split_run, cpu_run):
    headings, rows = view.epoch_table(split_run)
    cells = [dict(zip(headings, row, strict=True)) for row in rows]
    assert [(c["compute s"], c["wait s"], c["other s"], c["other %"]) for c in cells] == [
        ("4", "1.500", "n/a", "10"), ("5", "1.500", "0.6000", "10")]  # one precision a column
    assert "compute s" not in view.epoch_table(cpu_run)[0]
    fig = report.plot_epochs(split_run)
    gids = {a.get_gid() for a in fig.findobj()}
    assert {"loop-compute_s", "loop-data_wait_s", "loop-other_s"} <= gids
    # Epoch 0 has no "other" figure: no bar for it, rather than a bar of 0 s.
    other = {id(a) for a in fig.findobj() if a.get_gid() == "loop-other_s"}
    assert len(other) == 1
    assert not {g for g in (a.get_gid() for a in report.plot_epochs(cpu_run).findobj())
                if g and g.startswith("loop-")}
