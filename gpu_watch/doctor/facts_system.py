"""The facts every backend shares: NVML, the environment, the platform, what is installed.

None of these import a framework: distributions are read from their metadata, NVML through
:class:`~gpu_watch.sensing.nvml.NVML`, the rest from the environment and the standard library.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys
from collections.abc import Mapping
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion

from gpu_watch.sensing.nvml import MIB, NVML

# The environment variables the rules read, and that the report shows when they are set.
ENV_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "NVIDIA_VISIBLE_DEVICES",
    "KERAS_BACKEND",
    "KERAS_HOME",
    "TF_FORCE_GPU_ALLOW_GROWTH",
    "TF_GPU_ALLOCATOR",
    "TF_CPP_MIN_LOG_LEVEL",
    "JAX_PLATFORMS",
    "JAX_PLATFORM_NAME",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_ALLOCATOR",
    "XLA_FLAGS",
    "PYTORCH_CUDA_ALLOC_CONF",
    "LD_LIBRARY_PATH",
    "CUDA_HOME",
)

# Distributions worth showing: the frameworks, their CUDA plugins and NVIDIA's CUDA wheels.
_DISTRIBUTION_NAMES = ("keras", "jax", "jaxlib", "torch")
_DISTRIBUTION_PREFIXES = ("tensorflow", "tf-nightly", "nvidia-", "jax-cuda")


def installed_distributions() -> dict[str, str]:
    """Installed frameworks, CUDA plugins and ``nvidia-*`` wheels: normalised name -> version."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = normalise(dist.metadata["Name"] or "")
        if name in _DISTRIBUTION_NAMES or name.startswith(_DISTRIBUTION_PREFIXES):
            found.setdefault(name, dist.version)  # the first on sys.path is the one imported
    return dict(sorted(found.items()))


def and_cuda_requirements() -> dict[str, str]:
    """The wheels ``tensorflow[and-cuda]`` pulls in on this platform: name -> version specifier.

    Read from the installed TensorFlow's metadata, so the list matches its release. Empty when
    no TensorFlow with that extra is installed (``tensorflow-cpu``, native Windows).
    """
    for dist_name in ("tensorflow", "tf-nightly"):
        try:
            lines = importlib.metadata.requires(dist_name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        required = {}
        for line in lines:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if (req.marker is not None and req.marker.evaluate({"extra": "and-cuda"})
                    and not req.marker.evaluate({"extra": ""})):
                required[normalise(req.name)] = str(req.specifier)
        return dict(sorted(required.items()))
    return {}


def cuda_wheel_status(required: Mapping[str, str], installed: Mapping[str, str]
                      ) -> dict[str, Any]:
    """Which required CUDA wheels are missing or installed at a version outside the range.

    Args:
        required: Name -> version specifier, from :func:`and_cuda_requirements`.
        installed: Name -> version, from :func:`installed_distributions`.
    """
    missing, wrong = [], []
    for name, spec in required.items():
        version = installed.get(name)
        if version is None:
            missing.append(name)
            continue
        try:
            ok = Requirement(f"{name}{spec}").specifier.contains(version, prereleases=True)
        except (InvalidRequirement, InvalidVersion):
            continue
        if not ok:
            wrong.append({"name": name, "installed": version, "required": spec})
    return {"required": dict(required), "missing": missing, "wrong_version": wrong}


def nvml_facts(nvml: NVML) -> dict[str, Any]:
    """What NVML says: driver, its CUDA version, and every GPU with memory and processes."""
    if not nvml.available:
        return {"available": False, "error": nvml.error, "driver_version": None,
                "cuda_driver_version": None, "gpus": []}
    gpus = []
    for device in nvml.all_devices():
        # Not nvml.read(): it advances the per-process sample clock a sampler may depend on.
        memory = nvml.query("memory", device.nvml_index, "nvmlDeviceGetMemoryInfo", device.handle)
        processes = nvml.processes(device)
        gpus.append({
            "index": device.nvml_index,
            "uuid": device.uuid,
            "name": device.name,
            "mem_total_mib": device.mem_total_mib,
            "mem_used_mib": memory.used / MIB if memory is not None else None,
            "processes": None if processes is None else [
                {"pid": p.pid, "used_mib": p.used_mib} for p in processes
            ],
        })
    return {"available": True, "error": None, "driver_version": nvml.driver_version(),
            "cuda_driver_version": nvml.cuda_driver_version(), "gpus": gpus}


def platform_facts() -> dict[str, Any]:
    """The operating system, Python, and whether this is WSL or a container."""
    system = platform.system()
    release = platform.release()
    return {
        "system": system,
        "release": release,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "wsl": system == "Linux" and "microsoft" in release.lower(),
        "container": any(os.path.exists(p) for p in ("/.dockerenv", "/run/.containerenv")),
    }


def env_facts(environ: Mapping[str, str]) -> dict[str, str | None]:
    """The variables in :data:`ENV_VARS`, None when unset."""
    return {name: environ.get(name) for name in ENV_VARS}


def normalise(name: str) -> str:
    """A distribution name as pip compares them (``Jax_CUDA12.Plugin`` -> ``jax-cuda12-plugin``)."""
    return re.sub(r"[-_.]+", "-", name).lower()
