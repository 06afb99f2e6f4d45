"""Every cause a verdict can carry, as a user reads it: the exact message, remedy, severity and
evidence; and a cause's round trip through run.json."""

from __future__ import annotations

import pytest

from gpu_watch.causes import CATALOGUE, CODES, Cause, cause
from gpu_watch.verdict import (
    CPU_FALLBACK,
    IDLE,
    OK,
    UNMONITORED,
    GPUStats,
    Setting,
    judge,
)

ON_GPU = Setting(compute_on_gpu=True, framework_gpus=4, nvml_gpus=4, visible_gpus=4,
                 cuda_build=True)
SPREAD = ("Spread training over every GPU with your framework's data parallelism "
          "(tf.distribute.MirroredStrategy, keras.distribution.DataParallel on JAX, torchrun with "
          "DistributedDataParallel on torch), or set CUDA_VISIBLE_DEVICES to the GPUs you train on")


def stakes(share, speedup):
    """What `input_bound`'s remedy adds to the catalogue's: the run's own wait and its cost."""
    return (f"{CATALOGUE['input_bound'].remedy}; {share} of training time went to waiting for "
            f"data: a pipeline that keeps up could make each epoch up to {speedup} faster")


def gpu(index, util_mean=85.0, idle_fraction=0.0, **kw):
    """A GPU this process uses alone, judged by its own figures (the device's, unless given)."""
    values = {"util_samples": 40, "util_mean": util_mean, "util_p95": 99.0,
              "idle_fraction": idle_fraction, "mem_peak_mib": 9000.0,
              "proc_mem_peak_mib": 8000.0, "proc_seen": True, "procs_max": 1,
              "proc_util_samples": 40, "proc_util_mean": util_mean,
              "proc_idle_fraction": idle_fraction}
    values.update(kw)
    return GPUStats(index, **values)


def idle(index, **kw):
    return gpu(index, util_mean=1.0, idle_fraction=1.0, **kw)


def as_dicts(judgement):
    return [c.to_dict() for c in judgement.causes]


def catalogue(code, **overrides):
    spec = CATALOGUE[code]
    record = {"code": code, "severity": spec.severity, "group": spec.group,
              "message": spec.message, "remedy": spec.remedy, "evidence": {}}
    record.update(overrides)
    return record


# -- a run on the GPUs ------------------------------------------------------------------------


def test_idle_gpus_beside_busy_ones_input_bound():
    j = judge(ON_GPU, [gpu(0), idle(1), gpu(2), idle(3)], 0.51234)
    assert j.verdict == IDLE
    assert j.gpu_verdicts == {0: OK, 1: IDLE, 2: OK, 3: IDLE}
    assert as_dicts(j) == [
        catalogue("input_bound", message="The training loop waited for data 51% of the time, "
                  "leaving GPUs 1, 3 idle.", remedy=stakes("51%", "2.0x"),
                  evidence={"wait_fraction": 0.512}),
        catalogue("process_not_on_gpu", severity="warning",
                  message="GPUs 1, 3 sat idle while GPUs 0, 2 worked: check the distribution "
                  "setup and device placement.", remedy=SPREAD,
                  evidence={"idle_gpus": [1, 3], "busy_gpus": [0, 2]}),
    ]


def test_one_idle_gpu_is_named_alone():
    j = judge(ON_GPU, [idle(2)], 0.9)
    assert as_dicts(j) == [catalogue(
        "input_bound", message="The training loop waited for data 90% of the time, leaving "
        "GPU 2 idle.", remedy=stakes("90%", "10.0x"), evidence={"wait_fraction": 0.9})]


def test_an_nvml_error_leaves_every_gpu_unmonitored_whatever_the_readings():
    setting = Setting(compute_on_gpu=True, framework_gpus=1, nvml_error="NVMLError_Unknown: x")
    j = judge(setting, [gpu(0)], None)
    assert (j.verdict, j.gpu_verdicts, j.causes) == (UNMONITORED, {0: UNMONITORED}, [])


def test_a_process_nvml_never_lists_is_not_attributable():
    # NVML lists one process on GPUs 0 and 2, not this PID, and measures no figure of its own.
    unlisted = {"proc_seen": False, "others_seen": True, "proc_util_samples": 0,
                "proc_util_mean": None, "proc_idle_fraction": None}
    j = judge(ON_GPU, [gpu(0, **unlisted), gpu(1), gpu(2, **unlisted)], None)
    assert j.verdict == OK and j.judged_by == {0: "device", 1: "process", 2: "device"}
    assert as_dicts(j) == [catalogue(
        "process_not_attributable", message="NVML does not list this process's PID on GPUs 0, "
        "2 (in a container's PID namespace NVML reports host PIDs): the device's utilization "
        "is used instead.", evidence={"gpus": [0, 2], "pid_not_listed": [0, 2],
                                      "process_list_unreadable": [],
                                      "no_process_utilization": [], "no_sample_yet": []})]


def test_a_listed_process_without_a_figure_of_its_own_yet():
    unsampled = {"proc_util_samples": 0, "proc_util_mean": None, "proc_idle_fraction": None}
    setting = Setting(compute_on_gpu=True, framework_gpus=2, nvml_gpus=2, visible_gpus=2,
                      cuda_build=True, no_process_utilization=(1,))
    j = judge(setting, [gpu(0, **unsampled), gpu(1, **unsampled)], None)
    assert j.verdict == OK and j.judged_by == {0: "device", 1: "device"}
    assert as_dicts(j) == [catalogue(
        "process_not_attributable", message="GPU 1 reports no per-process utilization (MIG "
        "instances and some drivers do not); NVML had no sample of this process's own "
        "utilization on GPU 0 yet (a process that runs no kernels reads 0 % only after a quiet "
        "period): the device's utilization is used instead.",
        remedy="Nothing to fix in the training. For its own figures, train on a whole GPU (not "
        "a MIG instance) with a driver that reports per-process utilization (`nvidia-smi pmon "
        "-c 1` shows whether it does).",
        evidence={"gpus": [0, 1], "pid_not_listed": [], "process_list_unreadable": [],
                  "no_process_utilization": [1], "no_sample_yet": [0]})]
    j = judge(setting, [gpu(0, **unsampled)], None)
    assert j.causes[0].remedy == ("Nothing to fix: this training's own figure comes with NVML's "
                                  "next sample of it, or reads 0 % once it has run no kernels "
                                  "for a quiet period.")


# -- a run on the CPU -------------------------------------------------------------------------


def test_no_driver():
    error = "NVMLError_LibraryNotFound: NVML Shared Library Not Found"
    j = judge(Setting(framework_gpus=0, nvml_error=error), [], None)
    assert j.verdict == CPU_FALLBACK
    assert as_dicts(j) == [catalogue(
        "no_nvidia_driver", message=f"No NVIDIA driver is loaded ({error}), so training ran on "
        "the CPU.", evidence={"nvml_error": error})]


def test_hidden_gpus():
    setting = Setting(framework_gpus=0, nvml_gpus=3, visible_gpus=0, cuda_visible_devices="-1")
    assert as_dicts(judge(setting, [], None)) == [catalogue(
        "gpus_hidden", message="CUDA_VISIBLE_DEVICES='-1' hides all 3 GPU(s) NVML sees from "
        "this process.", evidence={"cuda_visible_devices": "-1", "nvml_gpus": 3})]


def test_forced_placement_names_at_most_five_ops():
    ops = ("MatMul", "Relu", "Conv2D", "BiasAdd", "Softmax", "Sum", "Mean")
    setting = Setting(compute_on_gpu=False, framework_gpus=2, cpu_compute_examples=ops)
    assert as_dicts(judge(setting, [], None)) == [catalogue(
        "forced_cpu_placement", message="The framework sees 2 GPU(s), but step 0's compute ran "
        "on the CPU (e.g. MatMul, Relu, Conv2D, BiasAdd, Softmax).",
        evidence={"cpu_compute_examples": list(ops[:5]), "cpu_variable_examples": [],
                  "device_scope": None, "cpu_settings": {}})]


def test_forced_placement_without_examples():
    setting = Setting(compute_on_gpu=False, framework_gpus=1)
    assert as_dicts(judge(setting, [], None)) == [catalogue(
        "forced_cpu_placement", message="The framework sees 1 GPU(s), but step 0's compute ran "
        "on the CPU.", evidence={"cpu_compute_examples": [], "cpu_variable_examples": [],
                                 "device_scope": None, "cpu_settings": {}})]


def test_cpu_only_build():
    setting = Setting(framework_gpus=0, nvml_gpus=1, visible_gpus=1, cuda_build=False)
    assert as_dicts(judge(setting, [], None)) == [catalogue("cpu_only_build")]


def test_missing_cuda_libraries():
    setting = Setting(framework_gpus=0, nvml_gpus=2, visible_gpus=2, cuda_build=True)
    assert as_dicts(judge(setting, [], None)) == [catalogue(
        "cuda_libs_missing", message="NVML sees 2 GPU(s), but the framework sees none: its "
        "CUDA libraries are missing or cannot be loaded.")]


@pytest.mark.parametrize("order", [("cuda_libs_missing",), ("gpus_hidden", "cuda_libs_missing")])
def test_the_doctor_s_missing_libraries_replace_the_generic_one(order):
    findings = tuple(cause(code, f"doctor: {code}") for code in order)
    setting = Setting(framework_gpus=0, nvml_gpus=1, visible_gpus=1, cuda_build=True,
                      environment=findings)
    j = judge(setting, [], None)
    assert [(c.code, c.message) for c in j.causes] == [
        ("cuda_libs_missing", "doctor: cuda_libs_missing")] + [
        (code, f"doctor: {code}") for code in order if code != "cuda_libs_missing"]


def test_a_gpu_busy_with_others_while_training_ran_on_the_cpu():
    others = gpu(1, util_mean=95.55, proc_seen=False, others_seen=True)
    j = judge(Setting(framework_gpus=0), [others], None)
    assert as_dicts(j) == [catalogue(
        "process_not_on_gpu", message="GPU 1 was 96% busy, but with other processes: this "
        "training did not use it.", evidence={"gpu": 1, "util_mean": 95.5})]


# -- causes.py: the record in run.json ----------------------------------------------------------


def test_a_cause_round_trips_through_its_record():
    original = cause("gpu_memory_contention", "GPU 0: PID 7 holds 30,000 MiB", severity="error",
                     pids=[7], used_mib=30000.0)
    record = original.to_dict()
    assert record == {"code": "gpu_memory_contention", "severity": "error",
                      "group": "resources", "message": "GPU 0: PID 7 holds 30,000 MiB",
                      "remedy": CATALOGUE["gpu_memory_contention"].remedy,
                      "evidence": {"pids": [7], "used_mib": 30000.0}}
    assert Cause.from_dict(record) == original


def test_a_sparse_record_is_completed_from_the_catalogue():
    spec = CATALOGUE["driver_too_old"]
    assert Cause.from_dict({"code": "driver_too_old"}) == Cause(
        "driver_too_old", spec.message, spec.remedy, spec.severity, spec.group, {})
    empty = {"code": "driver_too_old", "message": "", "remedy": None, "severity": "",
             "group": None, "evidence": None}
    assert Cause.from_dict(empty) == Cause.from_dict({"code": "driver_too_old"})


def test_a_record_of_an_unknown_code_reads_back_with_neutral_defaults():
    assert Cause.from_dict({"code": "from_a_newer_version"}) == Cause(
        "from_a_newer_version", "from_a_newer_version", "", "warning", "other", {})
    kept = {"code": "x", "message": "m", "remedy": "r", "severity": "info", "group": "driver",
            "evidence": {"k": 1}}
    assert Cause.from_dict(kept).to_dict() == {**kept}


def test_an_unknown_code_is_refused_with_the_known_ones():
    with pytest.raises(ValueError) as raised:
        cause("no_such_code")
    assert str(raised.value) == (f"unknown cause code 'no_such_code'; known codes: "
                                 f"{', '.join(CODES)}")
