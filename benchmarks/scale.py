"""Does GPUWatch stay flat on a long run? Drives its hooks for a million batches, no model needed.

A `GPUWatch` is handed a small model (`set_model`) and its hooks are called directly, as Keras
would call them, for 1,000,000 batches over 100 epochs, while its sampler thread reads a
simulated GPU (`gpu_watch.testing.FakeNVML`) on its normal schedule and writes the run folder.
Placement checks and plots are off during the drive (a plot at each of 100 epoch ends would
measure matplotlib, not the callback); the report is timed on its own afterwards.

Printed: the peak growth of the process's resident memory (target: under 50 MB), the hooks' cost
per batch, the run folder's size, and how long `load_run` and `gpu-watch report` take on it
(target: the report in under 10 s).

By default the hooks are called back to back, around 100,000 batches a second, far faster than
any real training step: each write to the run folder (at epoch ends and every 2 s) then carries
tens of thousands of rows, a harsh case for memory. `--rate` paces the drive instead.

Usage:
    python benchmarks/scale.py                          # under a minute on 2 cores
    python benchmarks/scale.py --rate 20000 --batches 200000 --epochs 20   # 50 µs steps
    python benchmarks/scale.py --batches 100000 --epochs 10 --keep
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pandas  # noqa: E402, F401  (imported before the baseline: load_run needs it anyway)

from gpu_watch import GPUWatch, GPUWatchWarning, load_run  # noqa: E402
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess  # noqa: E402

MIB = 2**20


def rss_kib(field: str = "VmRSS") -> int:
    """This process's resident memory (`VmRSS`) or its peak (`VmHWM`), KiB, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Start a new peak-RSS measurement (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def simulated_gpu() -> FakeNVML:
    me = FakeProcess(used_mib=lambda t: 6000.0 + t % 7, sm_util_pct=lambda t: 80 + 10 * (t % 1))
    return FakeNVML([FakeGPU(util_pct=lambda t: 85 + 10 * (t % 1), mem_util_pct=40.0,
                             processes=[me])])


def small_model() -> keras.Model:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


class NoOp(keras.callbacks.Callback):
    """The same hooks doing nothing: what the driving loop itself costs."""

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass


def drive_epoch(callback: keras.callbacks.Callback, batches: int, rate: float = 0.0) -> float:
    """Call one epoch's batch hooks, back to back or `rate` batches a second; return the
    seconds spent inside them."""
    logs = {"loss": 0.25}
    begin, end = callback.on_train_batch_begin, callback.on_train_batch_end
    clock = time.perf_counter
    inside = 0.0
    due = clock()
    for batch in range(batches):
        if rate:
            due += 1.0 / rate
            while clock() < due:
                pass
        t = clock()
        begin(batch)
        end(batch, logs)
        inside += clock() - t
    return inside


class FlushSizes:
    """Wraps a run's `batches.csv` writer to record how many rows each flush writes."""

    def __init__(self, table) -> None:
        self.sizes: list[int] = []
        self._append = table.append
        table.append = self

    def __call__(self, rows) -> None:
        rows = list(rows)
        self.sizes.append(len(rows))
        self._append(rows)


def folder_size(path: Path) -> tuple[int, dict[str, int]]:
    sizes = {p.name: p.stat().st_size for p in path.iterdir() if p.is_file()}
    return sum(sizes.values()), sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=1_000_000,
                        help="batches in all (default: 1,000,000)")
    parser.add_argument("--epochs", type=int, default=100, help="epochs (default: 100)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="batches per second (default: 0, as fast as the hooks go)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run folder (default: delete it at the end)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batches < args.epochs:
        parser.error(f"need at least one batch per epoch and one epoch, got --batches "
                     f"{args.batches} --epochs {args.epochs}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("ignore", GPUWatchWarning)  # "training runs on the CPU": known here
    per_epoch = args.batches // args.epochs
    total = per_epoch * args.epochs
    log_dir = Path(tempfile.mkdtemp(prefix="gpu-watch-scale-"))
    model = small_model()

    noop = NoOp()
    noop.set_model(model)
    loop_s = min(drive_epoch(noop, per_epoch) for _ in range(3))

    watch = GPUWatch(log_dir=log_dir, run_name="scale", check_placement=False, plot=False,
                     nvml=simulated_gpu(), verbose=0)
    watch.set_model(model)
    rss_before = rss_kib()
    peak_is_reset = reset_peak_rss()
    rss_by_epoch: dict[int, int] = {}
    blocks_before = sys.getallocatedblocks()
    blocks_by_epoch: dict[int, int] = {}
    hooks_s: list[float] = []
    epoch_hooks_s: list[float] = []

    start = time.perf_counter()
    t = time.perf_counter()
    watch.on_train_begin()
    begin_s = time.perf_counter() - t
    flushes = FlushSizes(watch.monitor.batches)
    for epoch in range(args.epochs):
        t = time.perf_counter()
        watch.on_epoch_begin(epoch)
        epoch_hooks_s.append(time.perf_counter() - t)
        hooks_s.append(drive_epoch(watch, per_epoch, args.rate))
        t = time.perf_counter()
        watch.on_epoch_end(epoch, {"loss": 0.25})
        epoch_hooks_s[-1] += time.perf_counter() - t
        if epoch in (0, 9, args.epochs // 2 - 1, args.epochs - 1):
            rss_by_epoch[epoch + 1] = rss_kib()
            blocks_by_epoch[epoch + 1] = sys.getallocatedblocks()
    t = time.perf_counter()
    watch.on_train_end()
    end_s = time.perf_counter() - t
    drive_s = time.perf_counter() - start
    peak_kib = rss_kib("VmHWM") if peak_is_reset else max(rss_by_epoch.values())

    run_dir = watch.run_dir
    size, sizes = folder_size(run_dir)
    t = time.perf_counter()
    run = load_run(run_dir)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    report = subprocess.run([sys.executable, "-m", "gpu_watch", "report", str(run_dir)],
                            capture_output=True, text=True)
    report_s = time.perf_counter() - t
    rss_after_load = rss_kib("VmHWM") if peak_is_reset else rss_kib()

    per_batch_us = 1e6 * sum(hooks_s) / total
    loop_us = 1e6 * loop_s / per_epoch
    print("gpu-watch scale benchmark: GPUWatch's hooks driven directly, simulated GPU "
          "(FakeNVML), check_placement=False, plot=False")
    print(f"python {sys.version.split()[0]}, keras {keras.__version__}, "
          f"{os.cpu_count()} cores")
    print(f"batches: {total:,} over {args.epochs} epochs ({per_epoch:,} per epoch); "
          f"drive took {drive_s:.1f} s ({total / drive_s:,.0f} batches/s"
          f"{', paced' if args.rate else ', as fast as the hooks go'})")
    print()
    rows = [
        ("peak RSS growth during the drive",
         f"{(peak_kib - rss_before) / 1024:.1f} MB",
         "< 50 MB" + ("" if peak_is_reset else " (peak not resettable: sampled at epoch ends)")),
        ("RSS growth at epoch " + ", ".join(str(e) for e in rss_by_epoch),
         ", ".join(f"{(v - rss_before) / 1024:.1f}" for v in rss_by_epoch.values()) + " MB", ""),
        ("Python memory blocks held, change",
         ", ".join(f"{v - blocks_before:+,}" for v in blocks_by_epoch.values()),
         "at the same epochs: RSS above is the heap's high-water mark, these are live objects"),
        ("batch rows per flush to disk", f"{max(flushes.sizes, default=0):,} max",
         f"median {statistics.median(flushes.sizes or [0]):,.0f} over {len(flushes.sizes)} "
         f"flushes: the rows a flush holds in memory at once"),
        ("hook cost per batch (begin + end)", f"{per_batch_us:.2f} µs",
         f"the driving loop alone: {loop_us:.2f} µs"),
        ("hook cost per batch, slowest epoch",
         f"{1e6 * max(hooks_s) / per_epoch:.2f} µs",
         f"median epoch {1e6 * statistics.median(hooks_s) / per_epoch:.2f} µs"),
        ("on_epoch_begin + on_epoch_end", f"{1e3 * statistics.median(epoch_hooks_s):.1f} ms",
         f"median; max {1e3 * max(epoch_hooks_s):.1f} ms"),
        ("on_train_begin / on_train_end", f"{1e3 * begin_s:.0f} / {1e3 * end_s:.0f} ms", ""),
        ("run folder size", f"{size / MIB:.1f} MiB",
         ", ".join(f"{name} {n / MIB:.1f}" for name, n in sorted(sizes.items()))),
        ("rows written",
         f"{len(run.batches):,} batches", f"{len(run.samples):,} samples, "
         f"{len(run.epochs)} epochs"),
        ("load_run", f"{load_s:.2f} s", f"peak RSS growth incl. it "
         f"{(rss_after_load - rss_before) / 1024:.0f} MB"),
        ("gpu-watch report (new process)", f"{report_s:.2f} s",
         f"< 10 s; exit {report.returncode}"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>16}  {note}")
    if report.returncode != 0:
        print("\ngpu-watch report failed:\n" + report.stdout + report.stderr)
    if len(run.batches) != total:
        print(f"\nWARNING: batches.csv holds {len(run.batches):,} rows, expected {total:,}")
    if args.keep:
        print(f"\nrun folder kept: {run_dir}")
    else:
        with contextlib.suppress(OSError):
            shutil.rmtree(log_dir)
    return 0 if report.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
