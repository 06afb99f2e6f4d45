"""A `Monitor` driven without Keras, on a fake GPU, for tests of what NVML readings become."""

from __future__ import annotations

from gpu_watch import load_run
from gpu_watch.sensing.nvml import NVML
from gpu_watch.testing import DrivenSampler, ManualClock
from gpu_watch.training.config import Config
from gpu_watch.training.monitor import Monitor
from gpu_watch.training.placement import Probe


def monitor_on_gpu(tmp_path, fake, driven=True, data_tick=None, **config):
    """A Monitor whose framework uses a GPU (TensorFlow here cannot), to reach the verdicts
    that need one. `config` overrides GPUWatch's options (sampling every 0.02 s by default).

    Driven (the default), the Monitor, its sampler and `fake` share a `ManualClock`, and the
    test moves time and ticks with `run_for` or `monitor.sampler.run_for`; otherwise a real
    sampler thread reads `fake` on the real clock. `data_tick` is the Monitor's look at the
    input pipeline (`keras_internals.data_tick`; default none)."""
    config.setdefault("interval_s", 0.02)
    framework = {"name": "tensorflow", "gpus": ["/physical_device:GPU:0"], "cuda_build": True}
    driving = {}
    if driven:
        if not isinstance(fake.clock, ManualClock):
            fake.clock = ManualClock()
        driving = {"clock": fake.clock, "sampler": DrivenSampler}
    return Monitor(Config(log_dir=str(tmp_path), plot=False, **config),
                   NVML(fake), "tensorflow", (0, 1), framework, None, data_tick=data_tick,
                   **driving)


def run_for(monitor, seconds):
    """Let `seconds` of training pass on a driven Monitor: its clock moves and its sampler
    ticks, every interval."""
    assert isinstance(monitor.sampler, DrivenSampler), "a Monitor built with driven=True"
    monitor.sampler.run_for(seconds)


def run_monitor(monitor, seconds=0.5):
    """One epoch of one batch, then `seconds` of sampling; returns the loaded run."""
    monitor.begin_epoch(0)
    monitor.timeline.add_batch(0, 0, 1, 0.0, 0.01, None)
    monitor.first_step({"compute_on_gpu": True})
    run_for(monitor, seconds)
    monitor.end_epoch(0, {})
    monitor.finish("completed")
    return load_run(monitor.run_dir)


class FrameworkWithGPUs(Probe):
    """The placement probe of a framework that sees `gpus` GPUs (TensorFlow here sees none),
    reporting step 0's variables on `variables_on`: "GPU", or "CPU" for a training a device
    scope forced onto the CPU."""

    backend = "tensorflow"

    def __init__(self, gpus: int = 1, variables_on: str = "GPU") -> None:
        super().__init__()
        self.gpus = gpus
        self.variables_on = variables_on

    def framework_gpus(self):
        return [f"/physical_device:GPU:{i}" for i in range(self.gpus)]

    def cuda_build(self):
        return True

    def after_first_step(self, model, logs):
        return self._report("variables", {self.variables_on: 2})
