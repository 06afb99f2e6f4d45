"""`gpu-watch doctor`: each rule from injected facts, the gathering from FakeNVML and captured
TensorFlow output, the real run on this machine (no driver), and the command line."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pynvml
import pytest

import gpu_watch.doctor as doctor_module
from gpu_watch.causes import ERROR, WARNING, Cause
from gpu_watch.doctor import (
    CONTENTION_SHARE_PCT,
    MEMORY_LIMIT_SHARE_PCT,
    DoctorReport,
    ProbeResult,
    and_cuda_requirements,
    check_cpu_only_build,
    check_cuda_libs_missing,
    check_driver_too_old,
    check_gpu_memory_contention,
    check_gpu_memory_limited,
    check_gpus_hidden,
    check_mixed_tensorflow_install,
    check_native_windows,
    check_no_nvidia_driver,
    cuda_wheel_status,
    diagnose,
    doctor,
    parse_tensorflow_messages,
    resolve_visible_gpus,
    run_doctor_command,
)
from gpu_watch.nvml import NVML
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

DATA = Path(__file__).parent / "data"
NO_DRIVER = (DATA / "tf-2.21-no-driver.stderr").read_text()
NO_DRIVER_WITH_CUDART = (DATA / "tf-2.21-no-driver-with-cudart.stderr").read_text()
CUDNN_MISSING = (DATA / "assembled-tf-2.21-cudnn-missing.stderr").read_text()

UUID_0 = "GPU-11111111-aaaa-4000-8000-000000000000"
UUID_1 = "GPU-22222222-bbbb-4000-8000-000000000000"

CUDA_BUILD = {"cuda_version": "12.5.1", "cudnn_version": "9", "is_cuda_build": True,
              "is_rocm_build": False}
REQUIRED = {  # what tensorflow 2.21.0[and-cuda] asks for, trimmed to three wheels
    "nvidia-cublas-cu12": "<13.0,>=12.5.3.2",
    "nvidia-cuda-runtime-cu12": "<13.0,>=12.5.82",
    "nvidia-cudnn-cu12": "<10.0,>=9.3.0.75",
}
INSTALLED = {"keras": "3.15.1", "tensorflow": "2.21.0", "nvidia-cublas-cu12": "12.5.3.2",
             "nvidia-cuda-runtime-cu12": "12.5.82", "nvidia-cudnn-cu12": "9.3.0.75"}


def framework(gpus: int = 1, **changes) -> dict:
    """Framework facts as the probe reports them for TensorFlow 2.21.0 with CUDA 12.5.1."""
    facts = {
        "name": "tensorflow", "installed": True, "version": "2.21.0", "built_with_cuda": True,
        "build_info": dict(CUDA_BUILD), "import_error": None,
        "gpus": [{"name": f"/physical_device:GPU:{i}", "device_name": "NVIDIA H100 80GB HBM3",
                  "compute_capability": "9.0"} for i in range(gpus)],
    }
    facts.update(changes)
    return facts


def nvml_gpu(index: int, uuid: str, total_mib: float = 81559.0, processes=(),
             used_mib: float | None = None) -> dict:
    procs = [{"pid": pid, "used_mib": mib} for pid, mib in processes]
    if used_mib is None:
        used_mib = 300.0 + sum(mib or 0 for _, mib in processes)
    return {"index": index, "uuid": uuid, "name": "NVIDIA H100 80GB HBM3",
            "mem_total_mib": total_mib, "mem_used_mib": used_mib, "processes": procs}


def healthy() -> dict:
    """The facts of a machine where everything works: a fresh copy each time, to edit."""
    return copy.deepcopy({
        "doctor": {"mode": "injected", "pid": 1000, "probe_s": 3.0, "probe_error": None},
        "framework": framework(),
        "framework_messages": [],
        "keras": {"version": "3.15.1", "backend": "tensorflow"},
        "distributions": dict(INSTALLED),
        "cuda_wheels": cuda_wheel_status(REQUIRED, INSTALLED),
        "nvml": {"available": True, "error": None, "driver_version": "560.35.03",
                 "cuda_driver_version": "12.6", "gpus": [nvml_gpu(0, UUID_0)]},
        "env": {name: None for name in doctor_module.ENV_VARS},
        "platform": {"system": "Linux", "release": "6.8.0-45-generic", "machine": "x86_64",
                     "python": "3.11.7", "executable": "/usr/bin/python3", "wsl": False,
                     "container": False},
    })


def codes(findings: list[Cause]) -> list[str]:
    return [f.code for f in findings]


def only(findings: list[Cause], code: str) -> Cause:
    matching = [f for f in findings if f.code == code]
    assert len(matching) == 1, findings
    return matching[0]


# -- TensorFlow's messages ---------------------------------------------------------------------


def test_real_no_driver_output_names_cudart_and_libcuda_once_each():
    messages = parse_tensorflow_messages(NO_DRIVER)
    # TensorFlow prints the cudart line twice (two modules load the stub): reported once.
    assert [m["kind"] for m in messages] == ["cudart_missing", "driver_dlopen_failed",
                                             "cuinit_failed"]
    assert messages[1]["library"] == "libcuda.so.1"
    assert messages[1]["error"].startswith("libcuda.so.1: cannot open shared object file")
    assert messages[2]["error"].endswith("UNKNOWN ERROR (303)")
    assert messages[0]["text"] == ("Could not find cuda drivers on your machine, GPU will not "
                                   "be used.")


def test_cudart_line_disappears_once_libcudart_loads():
    kinds = [m["kind"] for m in parse_tensorflow_messages(NO_DRIVER_WITH_CUDART)]
    assert kinds == ["driver_dlopen_failed", "cuinit_failed"]


def test_missing_cuda_library_and_skip_message_are_read():
    messages = parse_tensorflow_messages(CUDNN_MISSING)
    assert [(m["kind"], m.get("library")) for m in messages] == [
        ("dlopen_failed", "libcudnn.so.9"), ("cannot_dlopen_gpu_libraries", None)]


def test_older_log_format_and_other_messages():
    stderr = "\n".join([
        "2020-08-24 11:08:28.568646: W tensorflow/stream_executor/platform/default/"
        "dso_loader.cc:59] Could not load dynamic library 'libcudart.so.11.0'; dlerror: "
        "libcudart.so.11.0: cannot open shared object file: No such file or directory",
        "2020-08-24 11:08:28.6: I tensorflow/core/common_runtime/gpu/gpu_device.cc:1] Ignoring "
        "visible gpu device (device: 0, name: Tesla K40c, pci bus id: 0000:03:00.0) with Cuda "
        "compute capability 3.5. The minimum required Cuda capability is 6.0.",
        "E0000 00:00:1.0 12 cuda_diagnostics.cc:1] kernel driver does not appear to be running "
        "on this host (gpu1): /proc/driver/nvidia/version does not exist",
    ])
    messages = parse_tensorflow_messages(stderr)
    assert [m["kind"] for m in messages] == ["dlopen_failed", "gpu_ignored",
                                             "kernel_driver_not_running"]
    assert messages[0]["library"] == "libcudart.so.11.0"
    assert (messages[1]["capability"], messages[1]["minimum"]) == ("3.5", "6.0")


# -- install: cpu_only_build -------------------------------------------------------------------


def test_healthy_machine_has_no_findings_and_a_usable_gpu():
    facts = healthy()
    report = DoctorReport(facts, diagnose(facts))
    assert report.findings == []
    assert report.gpu_usable and report.exit_code == 0
    assert "nothing is wrong" in report.render_text()


def test_tensorflow_cpu_wheel_is_a_cpu_only_build():
    facts = healthy()
    facts["framework"] = framework(gpus=0, built_with_cuda=False, build_info={
        "is_cuda_build": False})
    facts["distributions"] = {"tensorflow-cpu": "2.21.0"}
    found = only(check_cpu_only_build(facts), "cpu_only_build")
    assert found.severity == ERROR
    assert "2.21.0" in found.message and "tensorflow-cpu" in found.message
    assert found.evidence["built_with_cuda"] is False
    assert found.evidence["distributions"] == {"tensorflow-cpu": "2.21.0"}
    assert found.remedy == ('pip uninstall -y tensorflow-cpu && '
                            'pip install "tensorflow[and-cuda]==2.21.0"')


def test_cpu_build_of_the_tensorflow_package_is_reinstalled_with_cuda():
    facts = healthy()
    facts["framework"] = framework(gpus=0, built_with_cuda=False)
    found = only(check_cpu_only_build(facts), "cpu_only_build")
    assert found.remedy == 'pip install --force-reinstall "tensorflow[and-cuda]==2.21.0"'


def test_tensorflow_cpu_alone_is_enough_when_the_probe_failed():
    facts = healthy()
    facts["framework"] = None
    facts["distributions"] = {"tensorflow-cpu": "2.20.0"}
    assert "2.20.0" in only(check_cpu_only_build(facts), "cpu_only_build").message


def test_cuda_build_is_not_cpu_only():
    assert check_cpu_only_build(healthy()) == []


def test_both_tensorflow_and_tensorflow_cpu_installed_is_a_warning():
    facts = healthy()
    facts["distributions"]["tensorflow-cpu"] = "2.21.0"
    found = only(check_mixed_tensorflow_install(facts), "cpu_only_build")
    assert found.severity == WARNING
    assert found.evidence["distributions"] == {"tensorflow": "2.21.0", "tensorflow-cpu": "2.21.0"}
    assert found.remedy == ('pip uninstall -y tensorflow tensorflow-cpu && '
                            'pip install "tensorflow[and-cuda]==2.21.0"')
    assert check_mixed_tensorflow_install(healthy()) == []


def test_both_installed_with_a_cpu_build_is_one_error_naming_both():
    facts = healthy()
    facts["distributions"]["tensorflow-cpu"] = "2.21.0"
    facts["framework"] = framework(gpus=0, built_with_cuda=False)
    found = only(diagnose(facts), "cpu_only_build")
    assert found.severity == ERROR
    assert found.remedy.startswith("pip uninstall -y tensorflow tensorflow-cpu && ")


def test_native_windows_after_2_10_needs_wsl2():
    facts = healthy()
    facts["platform"].update(system="Windows", release="10")
    facts["framework"] = framework(gpus=0, built_with_cuda=False)
    facts["nvml"]["gpus"] = [nvml_gpu(0, UUID_0)]
    found = only(diagnose(facts), "cpu_only_build")  # one finding, the Windows one
    assert "native Windows" in found.message and "2.10" in found.message
    assert found.remedy.startswith('wsl --install  # then, inside WSL2: '
                                   'pip install "tensorflow[and-cuda]==2.21.0"')
    assert found.evidence == {"windows_release": "10", "tensorflow_version": "2.21.0"}


def test_native_windows_with_tensorflow_2_10_is_fine():
    facts = healthy()
    facts["platform"].update(system="Windows", release="10")
    facts["framework"] = framework(version="2.10.1")
    assert check_native_windows(facts) == [] and check_cpu_only_build(facts) == []


# -- install: cuda_libs_missing ----------------------------------------------------------------


def test_missing_cudnn_wheel_with_a_driver_is_an_error_naming_library_and_wheel():
    facts = healthy()
    facts["framework"] = framework(gpus=0)
    facts["framework_messages"] = parse_tensorflow_messages(CUDNN_MISSING)
    del facts["distributions"]["nvidia-cudnn-cu12"]
    facts["cuda_wheels"] = cuda_wheel_status(REQUIRED, facts["distributions"])
    found = only(check_cuda_libs_missing(facts), "cuda_libs_missing")
    assert found.severity == ERROR
    assert "libcudnn.so.9" in found.message and "nvidia-cudnn-cu12" in found.message
    assert "CUDA 12.5.1 and cuDNN 9" in found.message
    assert found.evidence["missing_wheels"] == ["nvidia-cudnn-cu12"]
    assert found.evidence["unloadable_libraries"] == ["libcudnn.so.9"]
    assert found.remedy == 'pip install "tensorflow[and-cuda]==2.21.0"'


def test_installed_wheel_whose_library_does_not_load_points_at_the_loader_path():
    facts = healthy()
    facts["framework"] = framework(gpus=0)
    facts["framework_messages"] = parse_tensorflow_messages(CUDNN_MISSING)
    facts["env"]["LD_LIBRARY_PATH"] = "/usr/local/cuda-11.8/lib64"
    found = only(check_cuda_libs_missing(facts), "cuda_libs_missing")
    assert "nvidia-cudnn-cu12 is installed" in found.message
    assert found.remedy == ('pip install --force-reinstall "tensorflow[and-cuda]==2.21.0"  # and '
                            'check LD_LIBRARY_PATH=/usr/local/cuda-11.8/lib64: it may load '
                            'another CUDA')


def test_wheel_at_the_wrong_version_is_named_with_the_range_it_needs():
    installed = dict(INSTALLED, **{"nvidia-cudnn-cu12": "8.9.7.29"})
    status = cuda_wheel_status(REQUIRED, installed)
    assert status["missing"] == []
    assert status["wrong_version"] == [{"name": "nvidia-cudnn-cu12", "installed": "8.9.7.29",
                                        "required": "<10.0,>=9.3.0.75"}]
    facts = healthy()
    facts["framework"] = framework(gpus=0)
    facts["cuda_wheels"] = status
    found = only(check_cuda_libs_missing(facts), "cuda_libs_missing")
    assert "nvidia-cudnn-cu12 8.9.7.29 (needs <10.0,>=9.3.0.75)" in found.message
    assert found.remedy == 'pip install "tensorflow[and-cuda]==2.21.0"'


def test_no_cuda_libs_finding_when_tensorflow_sees_the_gpu_or_nothing_points_at_libraries():
    facts = healthy()
    facts["cuda_wheels"] = cuda_wheel_status(REQUIRED, {})  # system CUDA instead of wheels
    assert check_cuda_libs_missing(facts) == []  # TensorFlow sees the GPU: libraries load
    facts = healthy()
    facts["framework"] = framework(gpus=0)  # sees none, but wheels complete and no messages
    assert check_cuda_libs_missing(facts) == []


def test_without_a_driver_missing_libraries_are_the_next_step_not_the_cause():
    facts = healthy()
    facts["framework"] = framework(gpus=0)
    facts["framework_messages"] = parse_tensorflow_messages(NO_DRIVER)
    facts["nvml"] = {"available": False, "error": "NVMLError_LibraryNotFound: NVML Shared "
                     "Library Not Found", "driver_version": None, "cuda_driver_version": None,
                     "gpus": []}
    facts["cuda_wheels"] = cuda_wheel_status(REQUIRED, {})
    found = only(check_cuda_libs_missing(facts), "cuda_libs_missing")
    assert found.severity == WARNING
    assert found.message.startswith("Even once a driver is installed")
    # "Could not find cuda drivers" is cudart_stub failing to load the CUDA runtime.
    assert found.evidence["unloadable_libraries"] == ["libcudart (the CUDA runtime)"]
    assert found.evidence["tensorflow_messages"] == [
        "Could not find cuda drivers on your machine, GPU will not be used."]
    assert found.remedy.startswith('pip install "tensorflow[and-cuda]==2.21.0"')


def test_and_cuda_requirements_come_from_the_installed_tensorflow():
    required = and_cuda_requirements()
    assert "nvidia-cudnn-cu12" in required and "nvidia-cuda-runtime-cu12" in required
    assert all(name.startswith("nvidia-") for name in required)
    assert all(spec.strip() for spec in required.values())


# -- driver ------------------------------------------------------------------------------------


def no_driver_facts(error: str = "NVMLError_LibraryNotFound: NVML Shared Library Not Found",
                    **platform_changes) -> dict:
    facts = healthy()
    facts["framework"] = framework(gpus=0)
    facts["framework_messages"] = parse_tensorflow_messages(NO_DRIVER_WITH_CUDART)
    facts["nvml"] = {"available": False, "error": error, "driver_version": None,
                     "cuda_driver_version": None, "gpus": []}
    facts["platform"].update(platform_changes)
    return facts


def test_no_driver_names_nvml_error_and_libcuda():
    found = only(check_no_nvidia_driver(no_driver_facts()), "no_nvidia_driver")
    assert found.severity == ERROR
    assert "NVMLError_LibraryNotFound" in found.message and "libcuda.so.1" in found.message
    assert found.evidence == {
        "nvml_error": "NVMLError_LibraryNotFound: NVML Shared Library Not Found",
        "tensorflow_driver_library": "libcuda.so.1"}
    assert "sudo ubuntu-drivers install" in found.remedy
    assert found.remedy.startswith("Install the NVIDIA driver")


@pytest.mark.parametrize(("platform_changes", "remedy_part"), [
    ({"container": True}, "docker run --gpus all"),
    ({"wsl": True, "release": "5.15.153.1-microsoft-standard-WSL2"}, "/usr/lib/wsl/lib"),
    ({"system": "Windows"}, "https://www.nvidia.com/drivers"),
])
def test_no_driver_remedy_fits_the_platform(platform_changes, remedy_part):
    found = only(check_no_nvidia_driver(no_driver_facts(**platform_changes)), "no_nvidia_driver")
    assert remedy_part in found.remedy


def test_driver_library_mismatch_asks_for_a_reboot():
    facts = no_driver_facts("NVMLError_LibRmVersionMismatch: RM has detected an NVML/RM "
                            "version mismatch.")
    found = only(check_no_nvidia_driver(facts), "no_nvidia_driver")
    assert found.remedy.startswith("sudo reboot")
    assert found.evidence["nvml_error"].startswith("NVMLError_LibRmVersionMismatch")


def test_nvml_permission_error_alone_is_not_a_missing_driver():
    facts = no_driver_facts("NVMLError_NoPermission: Insufficient Permissions")
    facts["framework_messages"] = []
    assert check_no_nvidia_driver(facts) == []
    assert check_no_nvidia_driver(healthy()) == []


@pytest.mark.parametrize(("driver_cuda", "severity"), [
    (12040, WARNING),  # 12.4 < 12.5: minor-version compatibility, PTX may still fail
    (11080, ERROR),  # 11.8 < 12.5: another major version
    (12050, None),  # 12.5 == 12.5(.1): fine
    (12060, None),  # newer: fine
])
def test_driver_too_old_compares_driver_cuda_with_the_build(driver_cuda, severity):
    fake = FakeNVML([FakeGPU(uuid=UUID_0)], driver_version="550.54.15",
                    cuda_driver_version=driver_cuda)
    report = doctor(fake, probe=ProbeResult(framework(), ""), environ={})
    found = [f for f in report.findings if f.code == "driver_too_old"]
    if severity is None:
        assert found == []
        return
    (found,) = found
    driver = f"{driver_cuda // 1000}.{driver_cuda % 1000 // 10}"
    assert found.severity == severity
    assert f"550.54.15 (CUDA {driver})" in found.message and "CUDA 12.5.1" in found.message
    assert found.evidence["driver_cuda_version"] == driver
    assert found.evidence["build_cuda_version"] == "12.5.1"
    assert 'nvidia-smi` shows "CUDA Version: 12.5" or higher' in found.remedy


def test_driver_too_old_from_tensorflow_message_when_nvml_has_no_version():
    facts = healthy()
    facts["nvml"]["cuda_driver_version"] = None
    facts["framework_messages"] = parse_tensorflow_messages(
        "W0000 00:00:1.0 7 cuda_diagnostics.cc:1] Possibly insufficient driver version: 450.80.2")
    found = only(check_driver_too_old(facts), "driver_too_old")
    assert found.severity == ERROR
    assert found.evidence["tensorflow_messages"] == [
        "Possibly insufficient driver version: 450.80.2"]


# -- gpus_hidden -------------------------------------------------------------------------------


def two_gpus(**kwargs) -> FakeNVML:
    return FakeNVML([FakeGPU(uuid=UUID_0), FakeGPU(uuid=UUID_1)], **kwargs)


@pytest.mark.parametrize("value", ["", "-1", "5", "GPU-99"])
def test_cuda_visible_devices_hiding_every_gpu(value):
    report = doctor(two_gpus(), probe=ProbeResult(framework(gpus=0), ""),
                    environ={"CUDA_VISIBLE_DEVICES": value})
    found = only(report.findings, "gpus_hidden")
    assert found.severity == ERROR
    assert f"CUDA_VISIBLE_DEVICES={value!r}" in found.message
    assert "NVML sees 2 (0: NVIDIA H100 80GB HBM3, 1: NVIDIA H100 80GB HBM3)" in found.message
    assert found.evidence["cuda_visible_devices"] == value
    assert [g["uuid"] for g in found.evidence["nvml_gpus"]] == [UUID_0, UUID_1]
    assert found.remedy.startswith("unset CUDA_VISIBLE_DEVICES")
    assert report.exit_code == 1


def test_an_invalid_entry_hides_itself_and_what_follows():
    report = doctor(two_gpus(), probe=ProbeResult(framework(gpus=1), ""),
                    environ={"CUDA_VISIBLE_DEVICES": "0,7,1"})
    found = only(report.findings, "gpus_hidden")
    assert found.severity == WARNING
    assert found.evidence["invalid_entry"] == "7"
    assert found.evidence["visible_nvml_indices"] == [0]
    assert found.remedy.startswith("export CUDA_VISIBLE_DEVICES=0,1")


@pytest.mark.parametrize("value", [None, "1", "0,1", "GPU-2222", "MIG-abcd"])
def test_valid_cuda_visible_devices_hide_nothing(value):
    environ = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    report = doctor(two_gpus(), probe=ProbeResult(framework(), ""), environ=environ)
    assert "gpus_hidden" not in codes(report.findings)


def test_hidden_needs_gpus_that_nvml_sees():
    facts = no_driver_facts()
    facts["env"]["CUDA_VISIBLE_DEVICES"] = "-1"
    assert check_gpus_hidden(facts) == []


def test_set_visible_devices_in_the_live_process_hides_the_gpu():
    facts = healthy()
    facts["framework"]["logical_gpus"] = []
    found = only(check_gpus_hidden(facts), "gpus_hidden")
    assert "set_visible_devices" in found.message
    assert found.evidence["physical_gpus"] == ["/physical_device:GPU:0"]
    facts["framework"]["logical_gpus"] = ["/device:GPU:0"]
    assert check_gpus_hidden(facts) == []


def test_visible_gpus_follow_cuda_order_and_stop_at_the_first_bad_entry():
    gpus = [nvml_gpu(0, UUID_0), nvml_gpu(1, UUID_1)]
    visible, invalid = resolve_visible_gpus(gpus, "1,0")
    assert [g["index"] for g in visible] == [1, 0] and invalid is None
    visible, invalid = resolve_visible_gpus(gpus, "1,1")  # a repeat is invalid for CUDA
    assert [g["index"] for g in visible] == [1] and invalid == "1"


# -- resources ---------------------------------------------------------------------------------


def contended(other_mib: float, **kwargs) -> DoctorReport:
    busy = FakeGPU(uuid=UUID_0, mem_total_mib=16384,
                   processes=[FakeProcess(pid=4242, used_mib=other_mib)])
    free = FakeGPU(uuid=UUID_1, mem_total_mib=16384)
    return doctor(FakeNVML([busy, free]), probe=ProbeResult(framework(gpus=2), ""), **kwargs)


def test_other_processes_holding_half_the_memory_is_contention():
    report = contended(16384 * CONTENTION_SHARE_PCT / 100, environ={})
    found = only(report.findings, "gpu_memory_contention")
    assert found.severity == WARNING
    assert "8192 of GPU 0's 16384 MiB (50.0 %): PID 4242 (8192 MiB)" in found.message
    assert found.evidence["processes"] == [{"pid": 4242, "used_mib": 8192.0}]
    assert found.evidence["share_pct"] == 50.0
    assert found.evidence["threshold_pct"] == CONTENTION_SHARE_PCT
    assert "kill 4242" in found.remedy
    assert f"export CUDA_VISIBLE_DEVICES={UUID_1}" in found.remedy  # the free GPU, by UUID
    assert report.gpu_usable  # a warning: the GPU can still be used


def test_just_under_the_contention_share_is_not_contention():
    report = contended(16384 * CONTENTION_SHARE_PCT / 100 - 1, environ={})
    assert "gpu_memory_contention" not in codes(report.findings)


def test_contention_on_a_hidden_gpu_does_not_matter():
    report = contended(15000, environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert "gpu_memory_contention" not in codes(report.findings)


def test_this_process_own_memory_is_not_contention():
    mine = FakeGPU(mem_total_mib=16384, processes=[FakeProcess(used_mib=15000)])  # pid: this one
    report = doctor(FakeNVML([mine]), probe=ProbeResult(framework(), ""), environ={})
    assert "gpu_memory_contention" not in codes(report.findings)


def test_without_per_process_memory_the_device_memory_counts():
    facts = healthy()
    facts["nvml"]["gpus"] = [nvml_gpu(0, UUID_0, total_mib=16384, processes=[(77, None)],
                                      used_mib=12000)]
    found = only(check_gpu_memory_contention(facts), "gpu_memory_contention")
    assert found.evidence["held_by_others_mib"] == 12000
    assert "PID 77 (n/a)" in found.message


def live_memory(limit_mib: float | None) -> dict:
    facts = healthy()
    facts["framework"]["logical_gpus"] = ["/device:GPU:0"]
    facts["framework"]["memory"] = [{"gpu": "/physical_device:GPU:0",
                                     "memory_limit_mib": limit_mib, "virtual_devices": 1,
                                     "memory_growth": False}]
    return facts


def test_memory_limit_far_below_the_gpu_memory():
    found = only(check_gpu_memory_limited(live_memory(4096)), "gpu_memory_limited")
    assert found.severity == WARNING
    assert "only 4096 MiB of GPU 0 (NVIDIA H100 80GB HBM3, 81559 MiB, 5.0 %)" in found.message
    assert found.evidence["memory_limit_mib"] == 4096
    assert found.evidence["mem_total_mib"] == 81559
    assert found.evidence["threshold_pct"] == MEMORY_LIMIT_SHARE_PCT
    assert "tf.config.experimental.set_memory_growth(gpus[0], True)" in found.remedy
    assert "LogicalDeviceConfiguration(memory_limit=4096)" in found.remedy


def test_memory_limit_at_half_the_gpu_or_none_is_fine():
    assert check_gpu_memory_limited(live_memory(81559 * MEMORY_LIMIT_SHARE_PCT / 100)) == []
    assert check_gpu_memory_limited(live_memory(None)) == []
    assert len(check_gpu_memory_limited(live_memory(81559 * MEMORY_LIMIT_SHARE_PCT / 100 - 1))
               ) == 1


@pytest.mark.parametrize(("value", "flagged"), [("1", True), ("True", True), ("yes", True),
                                                ("true", False), ("false", False)])
def test_allow_growth_accepts_only_true_or_false(value, flagged):
    report = doctor(FakeNVML([FakeGPU()]), probe=ProbeResult(framework(), ""),
                    environ={"TF_FORCE_GPU_ALLOW_GROWTH": value})
    found = [f for f in report.findings if f.code == "gpu_memory_limited"]
    assert bool(found) is flagged
    if flagged:
        assert found[0].evidence == {"tf_force_gpu_allow_growth": value}
        assert found[0].remedy == "export TF_FORCE_GPU_ALLOW_GROWTH=true"


# -- the report --------------------------------------------------------------------------------


def test_findings_are_ordered_errors_first_and_render_with_evidence_and_remedy():
    facts = no_driver_facts()
    facts["env"]["TF_FORCE_GPU_ALLOW_GROWTH"] = "1"
    report = DoctorReport(facts, diagnose(facts))
    assert [f.severity for f in report.findings] == [ERROR, WARNING]
    text = report.render_text()
    assert text.index("Facts") < text.index("Findings (2)")
    assert "[error] no_nvidia_driver:" in text
    assert "      tensorflow_driver_library: libcuda.so.1" in text
    assert "    remedy: export TF_FORCE_GPU_ALLOW_GROWTH=true" in text
    assert report.exit_code == 1 and not report.gpu_usable


def test_forced_cpu_placement_is_explained_but_never_claimed():
    report = DoctorReport(healthy(), [])
    text = report.render_text()
    assert "Not checked here: forced_cpu_placement" in text
    assert "with tf.device('/CPU:0')" in text and "GPUWatch()" in text
    assert "forced_cpu_placement" not in codes(diagnose(healthy()))


def test_another_keras_backend_is_pointed_out():
    facts = healthy()
    facts["keras"]["backend"] = "jax"
    assert "backend jax (TensorFlow's GPU matters to Keras only with the tensorflow backend)" in (
        DoctorReport(facts, []).render_text())
    assert "backend tensorflow\n" in DoctorReport(healthy(), []).render_text()


def test_report_dict_is_json_and_findings_read_back_as_causes():
    report = DoctorReport(no_driver_facts(), diagnose(no_driver_facts()))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["gpu_usable"] is False and data["exit_code"] == 1
    assert [Cause.from_dict(f) for f in data["findings"]] == report.findings


def test_gpu_is_not_usable_when_nvml_cannot_watch_it():
    facts = healthy()
    facts["nvml"].update(available=False, error="NVMLError_NoPermission: Insufficient "
                         "Permissions", gpus=[])
    report = DoctorReport(facts, diagnose(facts))
    assert report.findings == [] and not report.gpu_usable and report.exit_code == 1


def test_nvml_session_passed_in_stays_open_and_a_library_passed_in_is_closed():
    fake = FakeNVML([FakeGPU()])
    session = NVML(fake)
    doctor(session, probe=ProbeResult(framework(), ""), environ={})
    assert session.available and fake.calls[("nvmlShutdown", "MainThread")] == 0
    doctor(fake, probe=ProbeResult(framework(), ""), environ={})
    assert fake.calls[("nvmlShutdown", "MainThread")] == 1


def test_gathered_nvml_facts_have_memory_and_processes_in_mib():
    fake = FakeNVML([FakeGPU(uuid=UUID_0, mem_total_mib=24576,
                             processes=[FakeProcess(pid=31, used_mib=1024.0)])],
                    driver_version="555.42.02", cuda_driver_version=12050)
    nvml = doctor(fake, probe=ProbeResult(framework(), ""), environ={}).facts["nvml"]
    assert (nvml["driver_version"], nvml["cuda_driver_version"]) == ("555.42.02", "12.5")
    assert nvml["gpus"] == [{"index": 0, "uuid": UUID_0, "name": "NVIDIA H100 80GB HBM3",
                             "mem_total_mib": 24576.0, "mem_used_mib": 1324.0,
                             "processes": [{"pid": 31, "used_mib": 1024.0}]}]


# -- the real machine: TensorFlow 2.21 (CUDA build), no NVIDIA driver ---------------------------


@pytest.fixture(scope="module")
def real_report() -> DoctorReport:
    return doctor()  # the real child probe and the real NVML, once for the module


@pytest.fixture(scope="module")
def tf():
    import tensorflow

    return tensorflow


def test_real_run_reports_the_missing_driver_with_the_installed_build(real_report, tf):
    facts = real_report.facts
    assert facts["doctor"]["mode"] == "child" and facts["doctor"]["probe_error"] is None
    assert facts["framework"]["version"] == tf.__version__
    assert facts["framework"]["build_info"] == json.loads(
        json.dumps(dict(tf.sysconfig.get_build_info())))
    assert facts["framework"]["built_with_cuda"] is tf.test.is_built_with_cuda()
    assert facts["framework"]["gpus"] == []
    assert facts["nvml"]["error"].startswith("NVMLError_LibraryNotFound")
    found = only(real_report.findings, "no_nvidia_driver")
    assert found.evidence["nvml_error"].startswith("NVMLError_LibraryNotFound")
    assert found.evidence["tensorflow_driver_library"] == "libcuda.so.1"  # read from its stderr
    assert found.remedy
    assert real_report.findings[0].code == "no_nvidia_driver"
    assert real_report.exit_code == 1 and not real_report.gpu_usable
    assert facts["doctor"]["probe_s"] < 20


def test_in_process_reads_the_live_tensorflow_fast(tf):
    start = time.perf_counter()
    report = doctor(FakeNVML([FakeGPU()]), in_process=True, environ={})
    assert time.perf_counter() - start < 1.0
    fw = report.facts["framework"]
    assert report.facts["doctor"]["mode"] == "in_process"
    assert fw["version"] == tf.__version__
    assert fw["build_info"] == dict(tf.sysconfig.get_build_info())
    assert fw["logical_gpus"] == [] and fw["memory"] == []
    assert report.facts["framework_messages"] == []


def test_in_process_without_tensorflow_loaded_does_not_import_it():
    code = ("import sys, time; from gpu_watch.doctor import doctor; "
            "from gpu_watch.testing import FakeNVML, FakeGPU; t = time.perf_counter(); "
            "r = doctor(FakeNVML([FakeGPU()]), in_process=True); "
            "assert time.perf_counter() - t < 1.0; "
            "assert 'tensorflow' not in sys.modules, 'imported tensorflow'; "
            "assert r.facts['framework'] is None and r.exit_code == 1; "
            "assert 'not imported in this process' in r.render_text()")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_the_doctor_does_not_import_tensorflow():
    code = "import sys, gpu_watch.doctor; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the probe failing: exit code 2, with what could still be read ------------------------------


def fake_tensorflow(tmp_path: Path, source: str) -> dict[str, str]:
    """An environment whose `import tensorflow` runs `source` instead of TensorFlow."""
    package = tmp_path / "tensorflow"
    package.mkdir()
    (package / "__init__.py").write_text(source)
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def test_probe_that_hangs_times_out_and_exits_2(tmp_path):
    environ = fake_tensorflow(tmp_path, "import time\ntime.sleep(60)\n")
    start = time.perf_counter()
    report = doctor(environ=environ, timeout_s=1.0)
    assert time.perf_counter() - start < 10
    assert "did not finish within 1 s" in report.facts["doctor"]["probe_error"]
    assert report.exit_code == 2
    assert "no_nvidia_driver" in codes(report.findings)  # NVML was still read
    assert report.render_text().startswith("gpu-watch doctor could not read the framework")


def test_probe_that_crashes_names_the_signal_and_exits_2(tmp_path):
    report = doctor(environ=fake_tensorflow(tmp_path, "import os\nos.abort()\n"))
    assert report.facts["doctor"]["probe_error"] == "the TensorFlow probe was killed by SIGABRT"
    assert report.exit_code == 2 and report.facts["framework"] is None


def test_probe_that_raises_names_the_error(tmp_path):
    environ = fake_tensorflow(tmp_path, "raise RuntimeError('CUDA_ERROR_SYSTEM_DRIVER_MISMATCH')")
    error = doctor(environ=environ).facts["doctor"]["probe_error"]
    assert error == ("the TensorFlow probe exited with status 1: RuntimeError: "
                     "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH")


def test_tensorflow_that_cannot_be_imported_is_a_fact_not_a_doctor_failure(tmp_path):
    environ = fake_tensorflow(tmp_path, "raise ImportError('libcudart.so.11.0: cannot open "
                                        "shared object file')")
    report = doctor(environ=environ)
    assert report.facts["framework"]["installed"] is False
    assert "libcudart.so.11.0" in report.facts["framework"]["import_error"]
    assert report.exit_code == 1


# -- the command line --------------------------------------------------------------------------


def test_cli_json_on_this_machine_exits_1_and_names_the_driver():
    done = subprocess.run([sys.executable, "-m", "gpu_watch", "doctor", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    assert data["exit_code"] == 1 and data["gpu_usable"] is False
    assert data["findings"][0]["code"] == "no_nvidia_driver"
    assert data["facts"]["framework"]["build_info"]["is_cuda_build"] is True


def test_cli_text_prints_facts_then_findings(monkeypatch, real_report):
    monkeypatch.setattr(doctor_module, "doctor", lambda timeout_s: real_report)
    out = io.StringIO()
    assert run_doctor_command(as_json=False, timeout_s=5.0, out=out) == 1
    text = out.getvalue()
    assert text.startswith("gpu-watch doctor: no usable GPU (exit 1)")
    assert text.index("TensorFlow    2.21") < text.index("[error] no_nvidia_driver")
    assert "NVML          unavailable: NVMLError_LibraryNotFound" in text
    assert "remedy:" in text


def test_cli_exits_2_when_the_probe_times_out(monkeypatch, tmp_path):
    for name, value in fake_tensorflow(tmp_path, "import time\ntime.sleep(60)\n").items():
        monkeypatch.setenv(name, value)
    out = io.StringIO()
    assert run_doctor_command(as_json=True, timeout_s=0.5, out=out) == 2
    data = json.loads(out.getvalue())
    assert data["exit_code"] == 2
    assert "did not finish within 0.5 s" in data["facts"]["doctor"]["probe_error"]


def test_cli_exits_2_when_the_doctor_itself_fails(monkeypatch):
    def broken(timeout_s):
        raise OSError("no such file")

    monkeypatch.setattr(doctor_module, "doctor", broken)
    out = io.StringIO()
    assert run_doctor_command(as_json=True, timeout_s=5.0, out=out) == 2
    assert json.loads(out.getvalue()) == {"gpu_usable": False, "exit_code": 2,
                                          "error": "OSError: no such file"}


def test_nvml_init_errors_from_the_fake_reach_the_finding():
    report = doctor(FakeNVML([FakeGPU()], init_error=pynvml.NVMLError_DriverNotLoaded),
                    probe=ProbeResult(framework(gpus=0), NO_DRIVER), environ={})
    found = only(report.findings, "no_nvidia_driver")
    assert found.evidence["nvml_error"].startswith("NVMLError_DriverNotLoaded")
    assert found.evidence["tensorflow_driver_library"] == "libcuda.so.1"
    assert report.exit_code == 1
