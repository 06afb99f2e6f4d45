"""TensorFlow's facts: its build, the GPUs it registers, and its GPU start-up messages.

:func:`child_facts` runs in the probe's child process (TensorFlow imported with its logging
turned up, see :func:`child_environ`); :func:`read` also serves the live process during training.

The record: ``name``, ``installed``, ``import_error``, ``version``, ``built_with_cuda``,
``build_info`` (``tf.sysconfig.get_build_info()``), ``gpus`` (physical GPU devices: ``name``,
``device_name``, ``compute_capability``); read live also ``logical_gpus`` and ``memory`` (per
physical GPU: ``memory_limit_mib``, ``virtual_devices``, ``memory_growth``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gpu_watch.doctor import messages

NAME = "tensorflow"
MODULE = "tensorflow"

# Each pattern matches one message TensorFlow prints while it looks for GPUs (texts as in
# TensorFlow 2.21's libraries; the dlopen message is logged only with TF_CPP_VMODULE=dso_loader=1).
MESSAGE_PATTERNS = (
    # cudart_stub.cc prints this when it cannot load libcudart (the CUDA runtime), not the driver.
    ("cudart_missing", re.compile(r"Could not find cuda drivers on your machine")),
    ("driver_dlopen_failed", re.compile(
        r"Could not load dynamic library '(?P<library>(?:libcuda\.so|nvcuda\.dll)[^']*)'; "
        r"dlerror: (?P<error>[^;]*)")),
    ("dlopen_failed", re.compile(
        r"Could not load dynamic library '(?P<library>[^']+)'; dlerror: (?P<error>[^;]*)")),
    ("cannot_dlopen_gpu_libraries", re.compile(r"Cannot dlopen some GPU libraries")),
    ("cuinit_failed", re.compile(r"failed call to cuInit: (?P<error>.*)", re.IGNORECASE)),
    ("kernel_driver_not_running", re.compile(
        r"kernel driver does not appear to be running on this host")),
    ("driver_insufficient", re.compile(
        r"(CUDA driver version is insufficient for CUDA runtime version"
        r"|Possibly insufficient driver version: ?(?P<version>\S*))")),
    # gpu_device.cc: "Ignoring visible gpu device (<description>) with Cuda compute capability
    # <cc>. The minimum required Cuda capability is <min>."
    ("gpu_ignored", re.compile(
        r"Ignoring visible gpu device \((?P<device>.*)\) with Cuda compute capability "
        r"(?P<capability>\d+(?:\.\d+)*)\. The minimum required Cuda capability is "
        r"(?P<minimum>\d+(?:\.\d+)*)")),
    ("allow_growth_unparsed", re.compile(
        r"TF_FORCE_GPU_ALLOW_GROWTH environment variable is set but could not be parsed")),
)

# What each message means, for a reader who has seen it and been misled by it.
MESSAGE_MEANINGS = {
    "cudart_missing": "TensorFlow could not load libcudart (the CUDA runtime library); despite "
                      "the wording, this is about the CUDA libraries, not the driver",
    "driver_dlopen_failed": "the driver's CUDA library is missing: no NVIDIA driver",
    "dlopen_failed": "a CUDA library TensorFlow needs for the GPU could not be loaded",
    "cannot_dlopen_gpu_libraries": "TensorFlow skipped the GPUs because CUDA libraries are "
                                   "missing",
    "cuinit_failed": "the CUDA driver could not be initialised",
    "kernel_driver_not_running": "the NVIDIA kernel module is not loaded",
    "driver_insufficient": "the driver is older than the CUDA runtime needs",
    "gpu_ignored": "the GPU is too old for this TensorFlow build",
    "allow_growth_unparsed": "TF_FORCE_GPU_ALLOW_GROWTH was ignored",
}


def parse_messages(stderr: str, record: Mapping[str, Any] | None = None
                   ) -> list[dict[str, Any]]:
    """The GPU start-up messages in TensorFlow's stderr, in order, each once.

    Args:
        stderr: What TensorFlow printed (with ``TF_CPP_MIN_LOG_LEVEL=0``).
        record: The facts the child reported; TensorFlow says everything on stderr, so they
            add nothing here (the argument keeps one signature for every backend).

    Returns:
        One dict per message: ``kind`` (a key of :data:`MESSAGE_MEANINGS`), ``text`` (the
        message without its log prefix) and the parts the pattern names (``library``,
        ``error``, ...).

    >>> parse_messages("E0000 00:00:1.2  7 cuda_platform.cc:52] failed call to "
    ...                "cuInit: UNKNOWN ERROR (303)")[0]["error"]
    'UNKNOWN ERROR (303)'
    """
    return messages.parse(stderr, MESSAGE_PATTERNS)


def child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The probe child's environment: the diagnosed one, with TensorFlow's GPU logging on."""
    env = dict(environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"
    vmodule = env.get("TF_CPP_VMODULE")
    env["TF_CPP_VMODULE"] = f"{vmodule},dso_loader=1" if vmodule else "dso_loader=1"
    return env


def child_facts() -> dict[str, Any]:
    """Import TensorFlow and read its facts (in the probe's child process)."""
    try:
        import tensorflow as tf
    except ImportError as exc:
        return not_installed(f"{type(exc).__name__}: {exc}")
    return read(tf)


def not_installed(import_error: str) -> dict[str, Any]:
    """The record of a TensorFlow that cannot be imported."""
    return {"name": NAME, "installed": False, "gpus": [], "import_error": import_error}


def read(tf: Any, live: bool = False) -> dict[str, Any]:
    """The facts about an imported TensorFlow module.

    Args:
        tf: The ``tensorflow`` module.
        live: Also read the process's runtime configuration (logical GPUs, memory limits and
            memory growth). Only for a process that trains: it creates the GPU devices.
    """
    gpus = tf.config.list_physical_devices("GPU")
    devices = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        devices.append({
            "name": gpu.name,
            "device_name": details.get("device_name"),
            "compute_capability": ".".join(map(str, capability)) if capability else None,
        })
    facts: dict[str, Any] = {
        "name": NAME,
        "installed": True,
        "version": tf.__version__,
        "built_with_cuda": bool(tf.test.is_built_with_cuda()),
        "build_info": dict(tf.sysconfig.get_build_info()),
        "gpus": devices,
        "import_error": None,
    }
    if live:
        facts["logical_gpus"] = [d.name for d in tf.config.list_logical_devices("GPU")]
        facts["memory"] = [_memory_config(tf, gpu) for gpu in gpus]
    return facts


def read_live(tf: Any) -> dict[str, Any]:
    """The facts about the TensorFlow this process trains with, its memory configuration too."""
    return read(tf, live=True)


def _memory_config(tf: Any, gpu: Any) -> dict[str, Any]:
    configs = tf.config.get_logical_device_configuration(gpu) or []
    limits = [c.memory_limit for c in configs if c.memory_limit is not None]
    return {
        "gpu": gpu.name,
        "memory_limit_mib": float(sum(limits)) if limits else None,
        "virtual_devices": len(configs),
        "memory_growth": bool(tf.config.experimental.get_memory_growth(gpu)),
    }
