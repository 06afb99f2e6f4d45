"""Every cause a verdict can carry, as a user reads it: the exact message, remedy, severity and
evidence; a cause's round trip through run.json; and which findings block the GPU, in the order a
user fixes them."""

from __future__ import annotations

import pytest

from gpu_watch.judging.causes import (
    CATALOGUE,
    CODES,
    FIX_ORDER,
    Cause,
    RunFacts,
    blocks_gpu,
    cause,
    fix_rank,
)
from gpu_watch.judging.verdict import (
    CPU_FALLBACK,
    IDLE,
    OK,
    UNMONITORED,
    GPUStats,
    OtherUse,
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
              "device_idle_fraction": idle_fraction, "mem_peak_mib": 9000.0,
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
        catalogue("input_bound", message="The training loop waited for data 51% of its time "
                  "after step 0, leaving GPUs 1, 3 idle.", remedy=stakes("51%", "2.0x"),
                  evidence={"wait_fraction": 0.512}),
        catalogue("process_not_on_gpu", severity="warning",
                  message="GPUs 1, 3 sat idle while GPUs 0, 2 worked: check the distribution "
                  "setup and device placement.", remedy=SPREAD,
                  evidence={"idle_gpus": [1, 3], "busy_gpus": [0, 2]}),
    ]


def test_one_idle_gpu_is_named_alone():
    j = judge(ON_GPU, [idle(2)], 0.9)
    assert as_dicts(j) == [catalogue(
        "input_bound", message="The training loop waited for data 90% of its time after step 0, "
        "leaving GPU 2 idle.", remedy=stakes("90%", "10.0x"), evidence={"wait_fraction": 0.9})]


def test_an_nvml_error_leaves_every_gpu_unmonitored_whatever_the_readings():
    setting = Setting(compute_on_gpu=True, framework_gpus=1, nvml_error="NVMLError_Unknown: x")
    j = judge(setting, [gpu(0)], None)
    assert (j.verdict, j.gpu_verdicts, j.causes) == (UNMONITORED, {0: UNMONITORED}, [])
    assert j.judged_by == {0: "process"}


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


def test_gpus_without_per_process_figures_one_of_them_shared():
    unsampled = {"proc_util_samples": 0, "proc_util_mean": None, "proc_idle_fraction": None}
    setting = Setting(compute_on_gpu=True, framework_gpus=2, nvml_gpus=2, visible_gpus=2,
                      cuda_build=True, no_process_utilization=(0, 1))
    j = judge(setting, [gpu(0, **unsampled),
                        gpu(1, **unsampled, others_seen=True, procs_max=2)], None)
    assert j.gpu_verdicts == {0: OK, 1: UNMONITORED}
    assert j.causes[0].message == (
        "GPUs 0, 1 report no per-process utilization (MIG instances and some drivers do not): "
        "the device's utilization is used instead, and on GPU 1, which other processes "
        "shared, this training's own use is unknown.")


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


# -- a GPU shared with other processes ----------------------------------------------------------

TWO_GPUS = Setting(compute_on_gpu=True, framework_gpus=2, nvml_gpus=2, visible_gpus=2,
                   cuda_build=True)
A_PY = OtherUse(11, "a.py", 59.64, 1000.06)
UNNAMED = OtherUse(12, None, None, None)
SHARED_WITH_A = "GPU 0 was shared with PID 11 (a.py) [60% SM, 1,000 MiB]: "


def beside(gpu=0, **kw):
    """A GPU on which NVML listed this process and others, busy at 97.6 %."""
    values = {"util_samples": 40, "util_mean": 97.6, "util_p95": 99.0, "device_idle_fraction": 0.0,
              "proc_seen": True, "others_seen": True, "procs_max": 3}
    values.update(kw)
    return GPUStats(gpu, **values)


def own(util_mean, idle_fraction=0.0):
    return {"proc_util_samples": 40, "proc_util_mean": util_mean,
            "proc_idle_fraction": idle_fraction}


def shared_message(stats):
    [found] = [c for c in judge(TWO_GPUS, [stats], None).causes if c.code == "gpu_shared"]
    return found.message


def test_the_shared_gpu_cause_of_an_idle_training_names_them_and_its_evidence():
    stats = beside(**own(2.4, 1.0), others=(UNNAMED, A_PY), others_util_mean=60.04,
                   others_busy_fraction=0.66666, contended_fraction=0.12345,
                   others_mem_peak_mib=1000.06)
    j = judge(TWO_GPUS, [stats], None)
    assert j.verdict == IDLE
    assert as_dicts(j) == [catalogue(
        "gpu_shared", message="GPU 0 was shared with PID 11 (a.py) [60% SM, 1,000 MiB], PID 12: "
        "your training was idle (its own SM use 2%) while the GPU was 98% busy with them.",
        evidence={"gpu": 0, "processes": [
            {"pid": 11, "name": "a.py", "sm_util_mean_pct": 59.6, "mem_peak_mib": 1000.1},
            {"pid": 12, "name": None, "sm_util_mean_pct": None, "mem_peak_mib": None}],
            "others_util_mean_pct": 60.0, "others_busy_fraction": 0.667,
            "contended_fraction": 0.123, "others_mem_peak_mib": 1000.1,
            "proc_util_mean_pct": 2.4, "device_util_mean_pct": 97.6})]


@pytest.mark.parametrize(("stats", "effect"), [
    (beside(util_samples=0, util_mean=None, device_idle_fraction=None, **own(0.0, 1.0),
            others=(A_PY,)),
     "your training was idle (its own SM use 0%) while the GPU was busy with PID 11."),
    (beside(util_mean=5.0, device_idle_fraction=1.0, others=(A_PY,)),
     "your training was idle while the GPU was 5% busy with PID 11."),
    (beside(others=(A_PY,)),
     "this training's own use of the GPU cannot be told apart from theirs."),
    (beside(**own(50.0), others=(A_PY,), contended_fraction=0.25),
     "both ran kernels 25% of the time, and your steps ran slower then."),
    (beside(**own(50.0), others=(A_PY,), contended_fraction=0.0),
     "they ran while your training did not, so they did not slow your steps."),
    (beside(**own(50.0), others=(A_PY,)),
     "your steps may have run slower while they ran."),
], ids=["idle-device-unread", "idle-by-device", "unmonitored", "contended", "apart",
        "overlap-unknown"])
def test_the_shared_gpu_cause_says_what_sharing_meant_for_this_training(stats, effect):
    assert shared_message(stats) == SHARED_WITH_A + effect


@pytest.mark.parametrize(("procs_max", "names"), [(3, "2 other processes"),
                                                  (2, "another process")])
def test_where_nvml_does_not_list_this_pid_the_shared_gpu_cause_counts_them(procs_max, names):
    assert shared_message(beside(proc_seen=False, procs_max=procs_max)) == (
        f"GPU 0 was shared with {names}: NVML does not list this training's PID, so one of "
        "them may be this training: the device's utilization cannot tell whose work it was.")


def test_a_run_recorded_without_process_details_names_another_process():
    assert shared_message(beside(**own(50.0), procs_max=None)) == (
        "GPU 0 was shared with another process: your steps may have run slower while they ran.")


def test_the_shared_gpu_cause_names_three_processes_and_counts_the_rest():
    three = tuple(OtherUse(20 + i, f"p{i}", 10.0 * (i + 1), 100.0) for i in range(3))
    assert shared_message(beside(**own(50.0), others=three)) == (
        "GPU 0 was shared with PID 22 (p2) [30% SM, 100 MiB], PID 21 (p1) [20% SM, 100 MiB], "
        "PID 20 (p0) [10% SM, 100 MiB]: your steps may have run slower while they ran.")
    four = (*three, OtherUse(19, None, 5.0, None))
    assert shared_message(beside(**own(50.0), others=four)).startswith(
        "GPU 0 was shared with PID 22 (p2) [30% SM, 100 MiB], PID 21 (p1) [20% SM, 100 MiB], "
        "PID 20 (p0) [10% SM, 100 MiB] and 1 more: ")


def test_each_shared_gpu_gets_its_own_cause_and_memory_only_neighbours_none():
    quiet = beside(0, **own(50.0), others=(OtherUse(30, "notebook", 0.0, 9000.0),))
    busy = beside(1, **own(50.0), others=(A_PY,), contended_fraction=0.5)
    j = judge(TWO_GPUS, [quiet, busy], None)
    assert [(c.code, c.evidence["gpu"]) for c in j.causes] == [("gpu_shared", 1)]
    assert j.causes[0].message.startswith("GPU 1 was shared with PID 11 (a.py)")


# -- how well a GPU judged ok was used (GPM) ------------------------------------------------------


def test_low_sm_activity_word_for_word():
    j = judge(ON_GPU, [gpu(0, util_mean=72.46, sm_active_mean=30.034)], None)
    assert as_dicts(j) == [catalogue(
        "low_sm_activity", message="GPU 0's utilization was 72%, but its SMs were active only "
        "30% of the time (42 points apart): while kernels ran, about 41% of its SMs worked. Each "
        "step launches kernels too small to fill the GPU.",
        evidence={"gpu": 0, "util_mean": 72.5, "sm_active_mean": 30.0, "gap_pct": 42.4})]
    torch = Setting(compute_on_gpu=True, framework_gpus=1, cuda_build=True,
                    facts=RunFacts(backend="torch"))
    [found] = judge(torch, [gpu(0, util_mean=72.46, sm_active_mean=30.034)], None).causes
    assert found.remedy == CATALOGUE["low_sm_activity"].variants["torch"]


@pytest.mark.parametrize(("util_mean", "sm_active_mean", "share"),
                         [(0.5, 0.2, "40%"), (0.0, 0.0, "0%")])
def test_the_share_of_sms_at_work_is_sm_activity_over_utilization(util_mean, sm_active_mean,
                                                                   share):
    [found] = judge(ON_GPU, [gpu(0, util_mean=util_mean, sm_active_mean=sm_active_mean)],
                    None).causes
    assert f"about {share} of its SMs worked" in found.message


def test_tensor_cores_unused_word_for_word():
    j = judge(ON_GPU, [gpu(0, tensor_active_mean=0.456, fp32_active_mean=1.46)], None)
    assert as_dicts(j) == [catalogue(
        "tensor_cores_unused", message="GPU 0's tensor cores were active 0.5% of the time while "
        "float32 math kept its other cores 1% busy: mixed precision would move the matrix "
        "products onto the tensor cores.",
        evidence={"gpu": 0, "tensor_active_mean": 0.46, "fp32_active_mean": 1.5})]


@pytest.mark.parametrize(("fp32", "fp16", "fires"), [
    (1.0, None, True),  # FP32 at the 1 % floor, FP16 not measured (0)
    (1.0, 1.0, False),  # as much FP16 as FP32: not float32 training
    (0.99, None, False),
])
def test_tensor_cores_unused_needs_float32_math_above_fp16(fp32, fp16, fires):
    stats = gpu(0, tensor_active_mean=0.0, fp32_active_mean=fp32, fp16_active_mean=fp16)
    assert bool(judge(ON_GPU, [stats], None).causes) is fires


def test_gpm_causes_for_each_gpu_that_qualifies():
    # GPU 0 has no GPM figures, GPU 1 is idle: neither stops GPU 2 from being looked at.
    no_gpm = gpu(0)
    idle_one = idle(1, sm_active_mean=0.5, tensor_active_mean=0.0, fp32_active_mean=5.0)
    low = gpu(2, sm_active_mean=10.0, tensor_active_mean=0.0, fp32_active_mean=5.0)
    j = judge(ON_GPU, [no_gpm, idle_one, low], None)
    assert [(c.code, c.evidence.get("gpu")) for c in j.causes] == [
        ("low_sm_activity", 2), ("tensor_cores_unused", 2), ("process_not_on_gpu", None)]


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


def test_hidden_gpus_get_the_remedy_of_the_backend():
    setting = Setting(framework_gpus=0, nvml_gpus=3, visible_gpus=0, cuda_visible_devices="",
                      facts=RunFacts(backend="jax"))
    [found] = judge(setting, [], None).causes
    assert found.remedy == ("unset CUDA_VISIBLE_DEVICES  # or set it to the GPUs to use, e.g. "
                            "CUDA_VISIBLE_DEVICES=0, before JAX starts")


def test_forced_placement_names_the_ops_and_at_most_five_variables():
    variables = tuple(f"dense_{i}/kernel" for i in range(6))
    setting = Setting(compute_on_gpu=False, framework_gpus=1, cpu_compute_examples=("MatMul",
                      "Relu"), facts=RunFacts(backend="torch", cpu_variables=variables))
    [found] = judge(setting, [], None).causes
    assert found.message == (
        "The framework sees 1 GPU(s), but step 0's compute ran on the CPU (e.g. MatMul, Relu; "
        "variables dense_0/kernel, dense_1/kernel, dense_2/kernel, dense_3/kernel, "
        "dense_4/kernel).")
    assert found.evidence["cpu_variable_examples"] == list(variables[:5])


def test_forced_placement_names_every_setting_that_keeps_the_cpu():
    facts = RunFacts(backend="jax", cpu_settings={"JAX_PLATFORMS": "cpu",
                                                  "CUDA_VISIBLE_DEVICES": ""})
    setting = Setting(compute_on_gpu=False, framework_gpus=0, nvml_gpus=1, visible_gpus=1,
                      cuda_build=True, facts=facts)
    [found] = judge(setting, [], None).causes
    assert found.message == ("NVML sees 1 GPU(s), but JAX_PLATFORMS='cpu', "
                             "CUDA_VISIBLE_DEVICES='' keeps JAX on the CPU.")


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


# -- causes.py: which findings block the GPU, and the order they are fixed in -------------------


def test_errors_and_warnings_marked_as_blocking_block_the_gpu():
    assert blocks_gpu(cause("driver_too_old")) is True
    assert blocks_gpu(cause("gpu_memory_contention", severity="error")) is True
    # CUDA libraries missing on a machine without a driver: a warning until the driver is in.
    assert blocks_gpu(cause("cuda_libs_missing", severity="warning", blocks_gpu=True)) is True
    assert blocks_gpu(cause("cuda_libs_missing", severity="warning")) is False
    assert blocks_gpu(cause("cuda_libs_missing", severity="warning", blocks_gpu=False)) is False


def test_every_group_of_the_catalogue_has_its_place_in_the_fix_order():
    assert {spec.group for spec in CATALOGUE.values()} == set(FIX_ORDER)
    assert FIX_ORDER == ("driver", "install", "code", "resources", "other")


@pytest.mark.parametrize(("code", "rank"), [
    ("no_nvidia_driver", 0), ("cuda_init_failed", 0), ("cpu_only_build", 1),
    ("cuda_libs_missing", 1), ("forced_cpu_placement", 2), ("allocator_misconfigured", 3),
    ("gpus_hidden", 4), ("input_bound", 4)])
def test_a_finding_s_rank_is_its_group_s_place_in_the_fix_order(code, rank):
    assert fix_rank(cause(code)) == rank


def test_a_finding_of_an_unknown_code_is_fixed_last_whatever_group_its_record_names():
    record = {"code": "from_a_newer_version", "severity": "error", "group": "driver"}
    assert fix_rank(Cause.from_dict(record)) == 4


def test_the_findings_that_block_the_gpu_follow_in_the_order_they_are_fixed_in():
    newer = Cause.from_dict({"code": "from_a_newer_version", "severity": "error"})
    findings = (cause("gpus_hidden", "doctor: gpus_hidden"), newer,
                cause("allocator_misconfigured", blocks_gpu=True),
                cause("gpu_memory_limited"),  # a warning that does not block the GPU
                cause("forced_cpu_placement"), cause("cpu_only_build"),
                cause("cuda_init_failed"))
    j = judge(Setting(framework_gpus=0, environment=findings), [], None)
    assert j.verdict == CPU_FALLBACK
    assert [c.code for c in j.causes] == [
        "cuda_init_failed", "cpu_only_build", "forced_cpu_placement", "allocator_misconfigured",
        "gpus_hidden", "from_a_newer_version"]
