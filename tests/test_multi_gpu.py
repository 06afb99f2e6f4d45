"""Several GPUs: GPUWatch watches the ones CUDA_VISIBLE_DEVICES leaves visible, in CUDA's order
and mapped by UUID, and names a GPU that sits idle while the others work. Real Keras training on
this machine's CPU; four GPUs from FakeNVML."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from pacing import Pause

from gpu_watch import GPUWatch, GPUWatchWarning, load_run, report
from gpu_watch.runlog import BATCH_COLUMNS, EPOCH_COLUMNS
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess
from gpu_watch.training import placement as placement_module
from gpu_watch.training.placement import Probe

UUIDS = [f"GPU-{i}{i}{i}{i}{i}{i}{i}{i}-aaaa-bbbb-cccc-dddddddddddd" for i in range(4)]
STEPS = 8
EPOCHS = 2


def four_gpus(util_pct=(30, 77, 60, 99)) -> FakeNVML:
    """GPUs 0-3 in NVML order, each with its own utilization and this process alone on it."""
    return FakeNVML([
        FakeGPU(name=f"NVIDIA A100-SXM4-80GB #{i}", uuid=UUIDS[i], util_pct=util,
                processes=[FakeProcess(used_mib=1000.0 * (i + 1), sm_util_pct=util)])
        for i, util in enumerate(util_pct)
    ])


def make_model():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def fit(callbacks, epochs=EPOCHS):
    rng = np.random.default_rng(0)
    x = rng.random((STEPS * 16, 8), dtype=np.float32)
    y = rng.random((STEPS * 16, 1), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        make_model().fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=callbacks)


def test_visible_gpus_are_watched_in_cuda_order(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    watch = GPUWatch(log_dir=tmp_path, nvml=four_gpus(), interval_s=0.02, plot=False, verbose=0)
    fit([Pause(0.03), watch])
    run = load_run(watch.run_dir)

    assert run.gpus == [2, 0]
    devices = run.info["devices"]
    assert [(d["nvml_index"], d["cuda_index"], d["uuid"]) for d in devices] == [
        (2, 0, UUIDS[2]), (0, 1, UUIDS[0])]
    assert devices[0]["name"] == "NVIDIA A100-SXM4-80GB #2"
    assert run.info["nvml"]["gpus_seen"] == 4
    assert run.info["cuda_visible_devices"] == "2,0"

    assert list(run.batches.columns) == [*BATCH_COLUMNS, "gpu2_util_pct", "gpu2_mem_used_mib",
                                         "gpu0_util_pct", "gpu0_mem_used_mib"]
    assert len(run.batches) == EPOCHS * STEPS
    assert run.batches["gpu2_util_pct"].notna().sum() >= STEPS
    assert run.batches["gpu2_util_pct"].dropna().eq(60).all()
    assert run.batches["gpu0_util_pct"].dropna().eq(30).all()
    assert run.batches["gpu2_mem_used_mib"].dropna().eq(300 + 3000).all()

    assert set(run.samples["gpu"]) == {2, 0}
    by_gpu = run.samples.groupby("gpu")
    assert by_gpu["util_pct"].mean().to_dict() == {0: 30, 2: 60}
    assert by_gpu["proc_mem_mib"].max().to_dict() == {0: 1000, 2: 3000}
    assert by_gpu.size()[0] == by_gpu.size()[2]  # both read at every tick

    epoch_gpu_columns = [c for c in run.epochs.columns if c.startswith("gpu")
                         and c not in EPOCH_COLUMNS]
    assert epoch_gpu_columns == ["gpu2_util_mean", "gpu2_proc_util_mean", "gpu2_verdict",
                                 "gpu0_util_mean", "gpu0_proc_util_mean", "gpu0_verdict",
                                 "gpu2_sm_active_mean", "gpu2_energy_j", "gpu2_power_mean_w",
                                 "gpu0_sm_active_mean", "gpu0_energy_j", "gpu0_power_mean_w"]
    assert run.epochs["gpu2_util_mean"].tolist() == pytest.approx([60] * EPOCHS)
    assert run.verdict == "cpu_fallback"  # TensorFlow here sees no GPU, whatever NVML shows


def test_uuids_in_cuda_visible_devices_map_to_nvml_indices(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-3333,GPU-11111111-aaaa")
    watch = GPUWatch(log_dir=tmp_path, nvml=four_gpus(), interval_s=0.02,
                     check_placement=False, plot=False, verbose=0)
    watch.set_model(make_model())
    watch.on_train_begin()
    watch.on_train_end()
    run = load_run(watch.run_dir)
    assert [(d["nvml_index"], d["cuda_index"]) for d in run.info["devices"]] == [(3, 0), (1, 1)]
    assert list(run.batches.columns)[len(BATCH_COLUMNS):] == [
        "gpu3_util_pct", "gpu3_mem_used_mib", "gpu1_util_pct", "gpu1_mem_used_mib"]


class GPUPlacement(Probe):
    """What a framework that trains on both visible GPUs reports after step 0."""

    backend = "tensorflow"

    def framework_gpus(self):
        return ["/physical_device:GPU:0", "/physical_device:GPU:1"]

    def cuda_build(self):
        return True

    def after_first_step(self, model, logs):
        return self._report("variables", {"GPU": 2})


@pytest.fixture(scope="module")
def idle_second_gpu(tmp_path_factory):
    """A run on NVML GPUs 2 and 0 in which GPU 2 works and GPU 0 stays idle."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
        patch.setattr(placement_module, "probe_for", lambda backend: GPUPlacement())
        watch = GPUWatch(log_dir=tmp_path_factory.mktemp("idle"),
                         nvml=four_gpus(util_pct=(2, 90, 85, 90)), interval_s=0.02,
                         idle_patience_s=0.1, plot=True, verbose=0)
        fit([Pause(0.03), watch])
    assert watch.wait_for_report(60.0)
    return load_run(watch.run_dir)


def test_an_idle_gpu_among_busy_ones_is_named_in_every_verdict(idle_second_gpu):
    run = idle_second_gpu
    assert run.info["placement"]["compute_on_gpu"] is True
    assert run.epochs["gpu2_verdict"].tolist() == ["ok"] * EPOCHS
    assert run.epochs["gpu0_verdict"].tolist() == ["idle"] * EPOCHS
    assert run.epochs["verdict"].tolist() == ["idle"] * EPOCHS
    assert run.info["gpu_verdicts"] == {"2": "ok", "0": "idle"}
    assert run.verdict == "idle"
    [flag] = [c for c in run.causes if c["code"] == "process_not_on_gpu"]
    assert "GPU 0 sat idle while GPU 2 worked" in flag["message"]
    assert flag["evidence"]["idle_gpus"] == [0] and flag["evidence"]["busy_gpus"] == [2]
    assert "input_bound" not in [c["code"] for c in run.causes]
    assert run.info["idle"]["events"] == []  # one GPU working: not the all-idle stop signal
    assert run.status == "completed"


def test_the_report_names_the_idle_gpu(idle_second_gpu):
    run = idle_second_gpu
    banner = report.banner_text(run)
    assert banner.startswith("GPU 0 idle") and "GPU 2" not in banner.split(".")[0]
    summary = report.summary_text(run)
    assert "GPU 0 (NVIDIA A100-SXM4-80GB #0) [idle]" in summary
    assert "GPU 2 (NVIDIA A100-SXM4-80GB #2) [ok]" in summary
    assert "GPU 0 sat idle while GPU 2 worked" in summary
    assert (run.path / "utilization.png").stat().st_size > 0
