"""The rules for torch: a CPU-only build, a CUDA build newer than the driver, a GPU the build
has no kernels for, and ``torch.cuda.is_available()`` false for another reason, in torch's own
words. Pure functions from the facts to findings."""

from __future__ import annotations

from typing import Any

from gpu_watch.doctor.rules_common import (
    Facts,
    base_version,
    check_gpus_hidden,
    driver_missing_evidence,
    driver_older_than_build,
    framework,
    major_minor,
    torch_cuda_index,
)
from gpu_watch.judging.causes import ERROR, Cause, cause

_INDEX = "https://download.pytorch.org/whl"


def _torch(facts: Facts) -> dict[str, Any]:
    return framework(facts, "torch")


def _messages(facts: Facts, *kinds: str) -> list[dict[str, Any]]:
    return [m for m in _torch(facts).get("messages") or [] if m["kind"] in kinds]


def _reinstall(facts: Facts) -> str:
    index = torch_cuda_index(major_minor(facts["nvml"]["cuda_driver_version"]))
    version = base_version(_torch(facts).get("version"))
    return f"pip install --force-reinstall torch=={version} --index-url {_INDEX}/{index}"


def check_cpu_only_build(facts: Facts) -> list[Cause]:
    """`cpu_only_build`: torch is built without CUDA (``torch.version.cuda`` is None)."""
    fw = _torch(facts)
    if not fw.get("installed") or fw.get("cuda_version"):
        return []
    version = fw.get("version")
    kind = (f"a ROCm build (HIP {fw['hip_version']}, for AMD GPUs)" if fw.get("hip_version")
            else "a CPU-only build")
    return [cause(
        "cpu_only_build",
        f"torch {version} is {kind}: torch.version.cuda is None, so it can never use an NVIDIA "
        "GPU.",
        _reinstall(facts),
        torch_version=version, cuda_version=None, hip_version=fw.get("hip_version"),
    )]


def check_driver_too_old(facts: Facts) -> list[Cause]:
    """`driver_too_old`: torch's CUDA is a newer major version than the driver supports, or
    torch says "The NVIDIA driver on your system is too old".

    A newer minor version is not flagged: torch's wheels run on any driver of the same major
    version (CUDA's minor-version compatibility)."""
    fw = _torch(facts)
    said = [m["text"] for m in _messages(facts, "driver_too_old")]
    driver = major_minor(facts["nvml"]["cuda_driver_version"])
    alternative = (f"; or install the torch build for the driver's CUDA: {_reinstall(facts)}"
                   if driver is not None else "")
    return driver_older_than_build(facts, f"torch {fw.get('version')}", fw.get("cuda_version"),
                                   said, alternative, minor_matters=False)


def check_gpu_not_supported(facts: Facts) -> list[Cause]:
    """`gpu_not_supported`: torch warns that its build has no kernels for a GPU's compute
    capability (the GPU is listed, but every operation on it would fail)."""
    said = _messages(facts, "gpu_unsupported", "arch_incompatible")
    if not said:
        return []
    fw = _torch(facts)
    first = said[0]
    capability = first["capability"]
    if "." not in capability:  # "sm_37" style: 37 -> 3.7
        capability = f"{capability[:-1]}.{capability[-1]}"
    return [cause(
        "gpu_not_supported",
        f"torch {fw.get('version')} has no kernels for {first['device']} (compute capability "
        f"{capability}): it was built for {', '.join(fw.get('arch_list') or []) or 'others'}.",
        f"{_reinstall(facts)}  # a build for this GPU; torch's warning names the index to use",
        severity=ERROR,
        device=first["device"], compute_capability=capability,
        arch_list=fw.get("arch_list") or [], messages=[m["text"] for m in said],
    )]


def check_cuda_unavailable(facts: Facts) -> list[Cause]:
    """`cuda_init_failed`: a CUDA build of torch, a driver that sees GPUs, nothing hiding them,
    and yet ``torch.cuda.is_available()`` is False; torch's own warning or error says why."""
    fw = _torch(facts)
    if (not fw.get("installed") or not fw.get("cuda_version") or fw.get("available")
            or driver_missing_evidence(facts) or not facts["nvml"]["gpus"]):
        return []
    explained = [*check_gpus_hidden(facts), *check_driver_too_old(facts)]
    if any(f.severity == ERROR for f in explained):
        return []
    said = [m["text"] for m in fw.get("messages") or []]
    if fw.get("init_error") and not said:
        said = [fw["init_error"]]
    return [cause(
        "cuda_init_failed",
        f"torch {fw.get('version')} (CUDA {fw.get('cuda_version')}) reports "
        "torch.cuda.is_available() False although NVML sees "
        f"{len(facts['nvml']['gpus'])} GPU(s)"
        + (f"; torch says: {said[0]}" if said else "; torch gave no reason") + ".",
        "Read torch's message in the evidence; `python -c \"import torch; torch.cuda.init()\"` "
        "raises it again",
        messages=said, init_error=fw.get("init_error"),
    )]


RULES = (
    check_cpu_only_build,
    check_driver_too_old,
    check_gpu_not_supported,
    check_cuda_unavailable,
)
