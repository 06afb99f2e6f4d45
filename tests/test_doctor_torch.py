"""The doctor on torch: torch's warnings and errors (recorded on an H200, or in torch's own
words), replayed through the rules, and each torch rule from injected facts."""

from __future__ import annotations

import pytest
from doctor_facts import (
    codes,
    h200,
    healthy,
    only,
    read_data,
    recorded,
    set_framework,
    torch_framework,
)

from gpu_watch.doctor import DoctorReport, ProbeResult, diagnose, doctor
from gpu_watch.doctor.facts_torch import parse_messages
from gpu_watch.doctor.rules_common import torch_cuda_index
from gpu_watch.doctor.rules_torch import (
    check_cpu_only_build,
    check_cuda_unavailable,
    check_driver_too_old,
    check_gpu_not_supported,
)
from gpu_watch.judging.causes import ERROR

TORCH_ENV = {"KERAS_BACKEND": "torch"}
DRIVER_TOO_OLD = read_data("assembled-torch-driver-too-old.stderr")
GPU_UNSUPPORTED = read_data("assembled-torch-2.13-gpu-unsupported.stderr")


def torch_facts(stderr: str = "", **changes) -> dict:
    return set_framework(healthy("torch"), "torch", torch_framework(**changes), stderr)


# -- torch's words -----------------------------------------------------------------------------


def test_the_driver_too_old_warning_gives_the_drivers_version():
    (message,) = parse_messages(DRIVER_TOO_OLD)
    assert message["kind"] == "driver_too_old" and message["version"] == "12020"
    assert message["text"].startswith("CUDA initialization: The NVIDIA driver on your system")


def test_the_unsupported_gpu_warning_gives_device_and_capability():
    (message,) = parse_messages(GPU_UNSUPPORTED)
    assert (message["kind"], message["device"], message["capability"]) == (
        "gpu_unsupported", "Tesla K80", "3.7")
    older = parse_messages("x.py:1: UserWarning: \nTesla K80 with CUDA capability sm_37 is not "
                           "compatible with the current PyTorch installation.")
    assert (older[0]["kind"], older[0]["capability"]) == ("arch_incompatible", "37")


def test_the_error_init_raised_is_read_with_the_warnings():
    record = {"init_error": "RuntimeError: Found no NVIDIA driver on your system. Please check "
                            "that you have an NVIDIA GPU and installed a driver from "
                            "http://www.nvidia.com/Download/index.aspx"}
    assert [m["kind"] for m in parse_messages("", record)] == ["no_driver"]


# -- the recordings through the rules ------------------------------------------------------------


def test_torch_seeing_the_h200_exits_0_and_names_it():
    report = doctor(h200(), probes={"torch": recorded("h200-torch-2.11.0-cu130")},
                    environ=TORCH_ENV)
    assert report.findings == [] and report.exit_code == 0
    assert report.headline() == "gpu-watch doctor: torch can use the GPU (NVIDIA H200) (exit 0)"
    assert "cuda:0 NVIDIA H200 (compute 9.0, 143156 MiB)" in report.render_text()


def test_no_visible_gpu_is_hidden_gpus_and_torchs_own_error_otherwise():
    probe = recorded("h200-torch-2.11.0-cu130-cuda-visible-devices-empty")
    hidden = doctor(h200(), probes={"torch": probe},
                    environ={**TORCH_ENV, "CUDA_VISIBLE_DEVICES": ""})
    assert codes(hidden.findings) == ["gpus_hidden"] and hidden.exit_code == 1
    # The same answer from torch with nothing that explains it: torch's words are the cause.
    unexplained = doctor(h200(), probes={"torch": probe}, environ=TORCH_ENV)
    found = only(unexplained.findings, "cuda_init_failed")
    assert found.evidence["backend"] == "torch"
    assert "torch says: RuntimeError: No CUDA GPUs are available" in found.message
    assert unexplained.exit_code == 1


def test_a_cuda_build_newer_than_the_driver_is_driver_too_old_in_torchs_words():
    framework = torch_framework(gpus=0, cuda="13.0")
    report = doctor(h200(driver_version="535.54.03", cuda_driver_version=12020),
                    probes={"torch": ProbeResult(framework, DRIVER_TOO_OLD)}, environ=TORCH_ENV)
    found = only(report.findings, "driver_too_old")
    assert found.severity == ERROR
    assert "535.54.03 (CUDA 12.2) is older than the CUDA 13.0 that torch 2.13.0+cu130" in (
        found.message)
    assert found.evidence["messages"][0].startswith("CUDA initialization: The NVIDIA driver")
    assert found.remedy.endswith("pip install --force-reinstall torch==2.13.0 --index-url "
                                 "https://download.pytorch.org/whl/cu126.")
    assert codes(report.findings) == ["driver_too_old"]  # not also cuda_init_failed


def test_torchs_warning_alone_makes_driver_too_old():
    facts = torch_facts(DRIVER_TOO_OLD, gpus=0, cuda="12.8")  # versions alone would pass
    assert only(check_driver_too_old(facts), "driver_too_old").severity == ERROR


def test_an_older_minor_version_of_the_driver_is_fine_for_torch():
    facts = torch_facts(cuda="12.8")
    facts["nvml"]["cuda_driver_version"] = "12.2"
    assert check_driver_too_old(facts) == []
    facts["nvml"]["cuda_driver_version"] = "11.8"
    assert only(check_driver_too_old(facts), "driver_too_old").severity == ERROR


def test_a_gpu_the_build_has_no_kernels_for_is_not_usable():
    facts = torch_facts(GPU_UNSUPPORTED)
    found = only(check_gpu_not_supported(facts), "gpu_not_supported")
    assert "no kernels for Tesla K80 (compute capability 3.7)" in found.message
    assert "sm_75" in found.message
    report = DoctorReport(facts, diagnose(facts))
    assert report.exit_code == 1 and not report.gpu_usable  # torch lists the GPU all the same
    older = torch_facts("x.py:1: UserWarning: \nTesla K80 with CUDA capability sm_37 is not "
                        "compatible with the current PyTorch installation.")  # torch < 2.8
    assert "(compute capability 3.7)" in only(check_gpu_not_supported(older),
                                              "gpu_not_supported").message


# -- the rules from facts ----------------------------------------------------------------------


def test_cpu_build_is_named_and_reinstalled_from_the_index_for_the_driver():
    facts = torch_facts(gpus=0, cuda=None)
    found = only(check_cpu_only_build(facts), "cpu_only_build")
    assert "torch 2.13.0+cpu is a CPU-only build: torch.version.cuda is None" in found.message
    assert found.remedy == ("pip install --force-reinstall torch==2.13.0 --index-url "
                            "https://download.pytorch.org/whl/cu128")
    facts["frameworks"]["torch"]["hip_version"] = "6.2.41133"
    assert "a ROCm build (HIP 6.2.41133" in only(check_cpu_only_build(facts),
                                                 "cpu_only_build").message
    assert check_cpu_only_build(torch_facts()) == []


@pytest.mark.parametrize(("driver", "index"), [
    (None, "cu126"), ((13, 0), "cu130"), ((12, 9), "cu128"), ((12, 8), "cu128"),
    ((12, 7), "cu126"), ((12, 4), "cu126"), ((11, 8), "cu118"),
])
def test_the_wheel_index_follows_the_drivers_cuda(driver, index):
    assert torch_cuda_index(driver) == index


def test_unavailable_for_no_known_reason_says_so():
    facts = torch_facts(gpus=0, cuda="12.6")
    found = only(check_cuda_unavailable(facts), "cuda_init_failed")
    assert "torch gave no reason" in found.message
    facts["env"]["CUDA_VISIBLE_DEVICES"] = ""
    assert check_cuda_unavailable(facts) == []  # gpus_hidden explains it
