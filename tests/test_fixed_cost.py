"""No fixed cost per fit: what cannot change within a process is gathered once, what can is read
at every fit. Real Keras training with TensorFlow on this machine's CPU; FakeNVML for GPUs."""

from __future__ import annotations

import importlib.metadata
import warnings

import keras
import numpy as np
import pytest

from gpu_watch import GPUWatch, GPUWatchWarning, load_run
from gpu_watch.sensing.nvml import NVML
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess
from gpu_watch.training import placement, process_facts


def fit(watch: GPUWatch) -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        model.fit(np.zeros((16, 2), "float32"), np.zeros((16, 1), "float32"), batch_size=8,
                  epochs=1, verbose=0, callbacks=[watch])


@pytest.fixture
def fresh_process():
    """Forget what this test process has gathered already, as if it had just started."""
    process_facts.PROCESS_FACTS.clear()
    yield
    process_facts.PROCESS_FACTS.clear()


def test_the_environment_check_runs_once_per_process(tmp_path, monkeypatch, fresh_process):
    calls = []
    distributions = importlib.metadata.distributions

    def counted(*args, **kwargs):
        calls.append(1)
        return distributions(*args, **kwargs)

    monkeypatch.setattr(importlib.metadata, "distributions", counted)
    first, second = (GPUWatch(log_dir=tmp_path, plot=False, verbose=0) for _ in range(2))
    fit(first)
    assert calls, "the first fit of a process reads the installed distributions"
    calls.clear()
    fit(second)
    assert calls == []
    one, two = load_run(first.run_dir), load_run(second.run_dir)
    facts_one, facts_two = one.info["environment"]["facts"], two.info["environment"]["facts"]
    assert facts_two["distributions"] == facts_one["distributions"]
    assert facts_two["distributions"].get("keras") == keras.__version__
    assert two.info["framework"] == one.info["framework"]
    assert [f["code"] for f in two.info["environment"]["findings"]] == \
        [f["code"] for f in one.info["environment"]["findings"]]
    assert second._nvml is first._nvml  # one session with the real NVML per process


def test_the_framework_is_described_once_per_process(tmp_path, monkeypatch, fresh_process):
    asked = []

    class CountingProbe(placement.TensorFlowProbe):
        def framework_gpus(self):
            asked.append("gpus")
            return super().framework_gpus()

        def cuda_build(self):
            asked.append("build")
            return super().cuda_build()

    monkeypatch.setattr(placement, "probe_for", lambda backend: CountingProbe())
    watches = [GPUWatch(log_dir=tmp_path, plot=False, verbose=0) for _ in range(2)]
    for watch in watches:
        fit(watch)
    assert asked == ["gpus", "build"]
    first, second = (load_run(w.run_dir).info["framework"] for w in watches)
    assert first == second and first["name"] == "tensorflow" and first["gpus"] == []


def test_what_can_change_between_fits_is_read_at_every_fit(tmp_path, monkeypatch,
                                                             fresh_process):
    gpu = FakeGPU(mem_total_mib=80000.0)
    session = NVML(FakeNVML([gpu, FakeGPU()]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    before = GPUWatch(log_dir=tmp_path, nvml=session, plot=False, verbose=0)
    fit(before)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    gpu.processes.append(FakeProcess(pid=4242, used_mib=60000.0))
    after = GPUWatch(log_dir=tmp_path, nvml=session, plot=False, verbose=0)
    fit(after)

    first, second = load_run(before.run_dir), load_run(after.run_dir)
    assert first.info["environment"]["facts"]["env"]["CUDA_VISIBLE_DEVICES"] is None
    assert second.info["environment"]["facts"]["env"]["CUDA_VISIBLE_DEVICES"] == "-1"
    codes = [f["code"] for f in second.info["environment"]["findings"]]
    assert "gpus_hidden" not in [f["code"] for f in first.info["environment"]["findings"]]
    assert "gpus_hidden" in codes
    pids = [p["pid"] for p in second.info["environment"]["facts"]["nvml"]["gpus"][0]["processes"]]
    assert pids == [4242]
    assert first.info["environment"]["facts"]["nvml"]["gpus"][0]["processes"] == []
    assert second.info["cuda_visible_devices"] == "-1" and second.info["devices"] == []
    assert len(first.info["devices"]) == 2


def test_nvml_lists_its_devices_once_per_session(tmp_path):
    fake = FakeNVML([FakeGPU(util_pct=30), FakeGPU(util_pct=60)])
    session = NVML(fake)
    for _ in range(2):
        fit(GPUWatch(log_dir=tmp_path, nvml=session, interval_s=0.02, plot=False, verbose=0))
    listed = sum(n for (name, _), n in fake.calls.items() if name == "nvmlDeviceGetCount")
    handles = sum(n for (name, _), n in fake.calls.items()
                  if name == "nvmlDeviceGetHandleByIndex")
    assert (listed, handles) == (1, 2)
    assert session.all_devices() == session.all_devices()
    assert len(session.all_devices()) == 2
    session.shutdown()  # a new session lists them again
    session.all_devices()
    assert sum(n for (name, _), n in fake.calls.items() if name == "nvmlDeviceGetCount") == 2
