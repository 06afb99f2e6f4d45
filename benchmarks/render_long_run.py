"""How long `gpu-watch report` takes on a long run: 1,000,000 batches over 100 epochs.

Builds the run folder in a temporary directory (two simulated GPUs read every 0.5 s, busy while
training with a dip between epochs and occasional stalls), then times `load_run` and `render`.
The target for `render` is under 10 seconds.

Usage:
    python benchmarks/render_long_run.py [--batches N] [--epochs N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The synthetic run builder lives with the tests, which share it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from runfolders import synthetic_run  # noqa: E402

from gpu_watch.report import render  # noqa: E402
from gpu_watch.runlog import load_run  # noqa: E402

TARGET_S = 10.0


def build(log_dir: Path, batches: int, epochs: int) -> Path:
    """Write the long run under `log_dir` and return its folder."""
    rng = np.random.default_rng(0)
    per_epoch = batches // epochs
    n = per_epoch * epochs
    step_s = rng.normal(0.010, 0.0008, n).clip(0.005)
    step_s[rng.integers(0, n, 50)] = 0.4  # stalls a long run really has (checkpoints, GC)
    wait_s = rng.exponential(0.001, n)

    def util(t: np.ndarray, gpu: int) -> np.ndarray:
        # Busy near 90%, idle in the 2 s of validation at the start of each ~102 s epoch.
        phase = t % (per_epoch * 0.011 + 2.0)
        busy = 86.0 + 6.0 * np.sin(t / 900.0 + gpu) + rng.normal(0, 2, t.shape)
        return np.where(phase < 2.0, 3.0, busy).clip(0, 100)

    return synthetic_run(log_dir, "long-run", gpus=(0, 1), epochs=epochs,
                         batches_per_epoch=per_epoch, step_s=step_s, wait_s=wait_s,
                         validation_s=2.0, util=util, verdict="ok")


def main(argv: list[str] | None = None) -> int:
    """Build, load and render the long run; print the times in seconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=1_000_000, help="default: 1,000,000")
    parser.add_argument("--epochs", type=int, default=100, help="default: 100")
    parser.add_argument("--keep", type=Path, help="write the run here and keep it")
    args = parser.parse_args(argv)
    log_dir = args.keep or Path(tempfile.mkdtemp(prefix="gpu-watch-bench-"))
    try:
        start = time.perf_counter()
        run_dir = build(log_dir, args.batches, args.epochs)
        built_s = time.perf_counter() - start

        start = time.perf_counter()
        run = load_run(run_dir)
        load_s = time.perf_counter() - start

        start = time.perf_counter()
        paths = render(run)
        render_s = time.perf_counter() - start
    finally:
        if args.keep is None:
            shutil.rmtree(log_dir, ignore_errors=True)
    print(f"run: {len(run.batches):,} batches, {len(run.epochs)} epochs, "
          f"{len(run.samples):,} samples (built in {built_s:.1f} s)")
    print(f"load_run: {load_s:.2f} s")
    print(f"render:   {render_s:.2f} s (target < {TARGET_S:.0f} s): "
          + ", ".join(f"{p.name}" for p in paths))
    return 0 if render_s < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
