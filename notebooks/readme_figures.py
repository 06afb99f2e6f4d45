"""Redraw the README's figures: a real demo run on this machine, and a simulated GPU run.

Usage: python notebooks/readme_figures.py   (writes notebooks/figures/*.png; about 40 s)

The simulated run uses FakeNVML for the GPU and plays batch timings through a Monitor whose
framework reports a GPU, so it shows what a GPU machine would; its figure says "simulated".
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from pathlib import Path

from gpu_watch.sensing.nvml import NVML
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess
from gpu_watch.training.config import Config
from gpu_watch.training.monitor import Monitor

FIGURES = Path(__file__).parent / "figures"


def demo_figure(work: Path) -> Path:
    from gpu_watch.demo import run_demo
    from gpu_watch.runlog import find_runs

    run_demo(epochs=3, log_dir=str(work / "demo"), out=io.StringIO())
    return find_runs(work / "demo")[0] / "utilization.png"


def simulated_figure(work: Path) -> Path:
    """Busy for 5 s, then the input pipeline stalls: the GPU idles while batches wait."""
    stall_s = 5.0

    def util(t: float) -> float:
        return 92.0 + 5 * ((t * 7) % 1) if t < stall_s else 3.0

    gpu = FakeGPU(util_pct=util, mem_util_pct=40,
                  processes=[FakeProcess(used_mib=6200, sm_util_pct=util)])
    framework = {"name": "tensorflow", "gpus": ["/physical_device:GPU:0"], "cuda_build": True}
    config = Config(log_dir=str(work / "simulated"), interval_s=0.1, idle_patience_s=3.0)
    monitor = Monitor(config, NVML(FakeNVML([gpu])), "tensorflow", (0, 1), framework, None)
    batch, last_end = 0, None
    for epoch in range(3):
        monitor.begin_epoch(epoch)
        epoch_end = monitor.elapsed_s() + 5.0
        batch = 0
        while monitor.elapsed_s() < epoch_end:
            stalled = monitor.elapsed_s() >= stall_s
            time.sleep(0.4 if stalled else 0.01)  # waiting for data
            begin = monitor.elapsed_s()
            wait = None if last_end is None or batch == 0 else begin - last_end
            time.sleep(0.05)  # the step
            last_end = monitor.elapsed_s()
            monitor.timeline.add_batch(epoch, batch, 1, begin, last_end, wait)
            if epoch == 0 and batch == 0:
                monitor.first_step({"backend": "tensorflow", "method": "run_metadata",
                                    "compute_on_gpu": True, "op_counts": {"GPU": 180, "CPU": 4}})
            batch += 1
        monitor.end_epoch(epoch, {"loss": 1.0 / (epoch + 1)})
    monitor.finish("completed")
    monitor.wait_for_drawing(60.0)
    return monitor.run_dir / "utilization.png"


def main() -> None:
    FIGURES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copy(demo_figure(work), FIGURES / "demo-utilization.png")
        shutil.copy(simulated_figure(work), FIGURES / "simulated-utilization.png")
    print(f"wrote {FIGURES}/demo-utilization.png and simulated-utilization.png")


if __name__ == "__main__":
    main()
