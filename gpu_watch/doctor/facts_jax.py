"""JAX's facts: jaxlib, the CUDA plugin it found, the devices, and why a GPU backend failed.

jaxlib itself runs on the CPU only; GPUs come from a separate plugin (``jax-cuda12-plugin`` or
``jax-cuda13-plugin``, installed by ``pip install "jax[cuda12]"``), or, before JAX 0.4.26, from a
``jaxlib`` built with CUDA (version ``...+cuda12.cudnn89``). :func:`child_facts` runs in the
probe's child process with JAX's own logging on (:func:`child_environ`): JAX says there why a
backend did not start (a failed CUDA version check, a plugin error, ``cuInit`` failing).

The record: ``name``, ``installed``, ``import_error``, ``version``, ``jaxlib_version``,
``plugin`` (``package``, ``cuda_version``, ``cudnn_version`` the plugin was built with; None
without one), ``default_backend``, ``devices`` (platforms of the default devices), ``gpus``
(``id``, ``device_kind``, ``compute_capability``, ``bytes_limit_mib``: what JAX's allocator may
use), ``init_error`` (why JAX could not start any backend).
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

from gpu_watch.doctor import messages
from gpu_watch.errors import swallowed
from gpu_watch.sensing.nvml import MIB

NAME = "jax"
MODULE = "jax"
PLUGIN_PACKAGES = ("jax_cuda13_plugin", "jax_cuda12_plugin")

# Texts from JAX's sources: jax/_src/xla_bridge.py (backend start-up and the hint for a missing
# plugin), jax_plugins/cuda/__init__.py (the CUDA version check) and XLA's CUDA start-up logs.
MESSAGE_PATTERNS = (
    ("driver_insufficient", re.compile(
        r"CUDA driver version is insufficient for CUDA runtime version"
        r"|CUDA_ERROR_SYSTEM_DRIVER_MISMATCH")),
    ("no_device", re.compile(r"CUDA_ERROR_NO_DEVICE")),
    ("plugin_missing", re.compile(
        r"An NVIDIA GPU may be present on this machine, but a CUDA-enabled jaxlib is not "
        r"installed")),
    ("cuda_check_failed", re.compile(
        r"CUDA version check failed during initialization\. CUDA backend will not be "
        r"available\. Error: (?P<error>.*)")),
    ("outdated_component", re.compile(
        r"Outdated (?P<component>\S+) installation found")),
    ("no_supported_devices", re.compile(r"no supported devices found for platform CUDA")),
    ("cuda_backend_failed", re.compile(
        r"CUDA backend failed to initialize: (?P<error>.*?)\.?\s*"
        r"(?:\(Set TF_CPP_MIN_LOG_LEVEL=0 and rerun for more info\.\))?$")),
    ("backend_init_failed", re.compile(
        r"Unable to initialize backend '(?P<platform>cuda|gpu)': (?P<error>.*)")),
    ("plugin_config_error", re.compile(r"Jax plugin configuration error: (?P<error>.*)")),
    ("cuinit_failed", re.compile(
        r"(?:failed call to cuInit|operation cuInit\(0\) failed): (?P<error>.*)")),
    # The last line of the traceback JAX logs with "Jax plugin configuration error".
    ("plugin_exception", re.compile(r"^(?P<error>[A-Z]\w*(?:Error|Exception): .+)$")),
)

MESSAGE_MEANINGS = {
    "driver_insufficient": "the NVIDIA driver is older than the CUDA that JAX's plugin needs",
    "no_device": "CUDA found no GPU (CUDA_VISIBLE_DEVICES, or no GPU in this container)",
    "plugin_missing": "JAX has no working CUDA plugin: none is installed, or it failed to "
                      "start (then the messages before this one say why)",
    "cuda_check_failed": "the CUDA plugin's version check failed, so JAX left the GPU out",
    "outdated_component": "a CUDA library is older than the one JAX's plugin was built with",
    "no_supported_devices": "XLA could not start the GPU; JAX says its memory preallocation "
                            "can leave too little for CUDA's libraries",
    "cuda_backend_failed": "JAX could not start its CUDA backend and fell back to the CPU",
    "backend_init_failed": "a JAX backend did not start",
    "plugin_config_error": "a JAX plugin failed to load",
    "cuinit_failed": "the CUDA driver could not be initialised",
    "plugin_exception": "why the CUDA plugin failed to start",
}


def parse_messages(stderr: str, record: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """JAX's GPU start-up messages in the child's stderr, and the error that stopped JAX.

    Args:
        stderr: What the child printed, JAX's logging included.
        record: The facts the child reported; its ``init_error`` is read too.
    """
    text = stderr
    if record and record.get("init_error"):
        text += "\n" + record["init_error"]
    return messages.parse(text, MESSAGE_PATTERNS)


def child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The probe child's environment: the diagnosed one, with XLA's start-up logging on.

    Preallocation is switched off: by default JAX takes 75 % of the GPU's memory as it starts,
    and listing devices must not take it from a training that shares the GPU. The rules read
    the user's own ``XLA_PYTHON_CLIENT_*`` values from the environment facts instead.
    """
    env = dict(environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return env


def child_facts() -> dict[str, Any]:
    """Import JAX with its logging on stderr, start its backends, read the facts."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    for name in ("jax", "jax_plugins"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)  # a plugin that fails quietly is logged at INFO
        logger.addHandler(handler)
        logger.propagate = False
    try:
        import jax
    except ImportError as exc:
        return not_installed(f"{type(exc).__name__}: {exc}")
    return read(jax)


def not_installed(import_error: str) -> dict[str, Any]:
    """The record of a JAX that cannot be imported."""
    return {"name": NAME, "installed": False, "gpus": [], "import_error": import_error}


def read(jax: Any) -> dict[str, Any]:
    """The facts about an imported ``jax`` module (in the child, or live during training)."""
    facts: dict[str, Any] = {
        "name": NAME,
        "installed": True,
        "import_error": None,
        "version": jax.__version__,
        "jaxlib_version": _jaxlib_version(),
        "plugin": plugin_build(),
        "default_backend": None,
        "devices": [],
        "gpus": [],
        "init_error": None,
    }
    try:
        facts["default_backend"] = jax.default_backend()
        facts["devices"] = sorted({d.platform for d in jax.devices()})
    except RuntimeError as exc:  # e.g. JAX_PLATFORMS=cuda where CUDA cannot start
        facts["init_error"] = f"{type(exc).__name__}: {exc}"
        return facts
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:  # no GPU backend: "Unknown backend gpu", or it failed to start
        gpus = []
    facts["gpus"] = [_gpu(d) for d in gpus]
    return facts


def read_live(jax: Any) -> dict[str, Any]:
    """The facts about the JAX this process trains with (its backends are already started)."""
    return read(jax)


def plugin_build() -> dict[str, Any] | None:
    """The CUDA plugin JAX would load, with the CUDA and cuDNN it was built for; None if none."""
    for package in PLUGIN_PACKAGES:
        try:
            versions = importlib.import_module(f"{package}._versions")
        except ImportError:
            continue
        return {"package": package,
                "cuda_version": _cuda_text(_call(versions, "cuda_runtime_build_version")),
                "cudnn_version": _cudnn_text(_call(versions, "cudnn_build_version"))}
    return None


def _gpu(device: Any) -> dict[str, Any]:
    limit_mib, error = None, None
    try:
        stats = device.memory_stats() or {}
        if stats.get("bytes_limit"):
            limit_mib = stats["bytes_limit"] / MIB
    except Exception as exc:  # memory_stats is optional for a PJRT device: the limit is unknown
        error = f"{type(exc).__name__}: {exc}"
    return {"id": device.id, "device_kind": device.device_kind,
            "compute_capability": getattr(device, "compute_capability", None),
            "bytes_limit_mib": limit_mib, "memory_stats_error": error}


def _jaxlib_version() -> str | None:
    try:
        return importlib.import_module("jaxlib").__version__
    except (ImportError, AttributeError):
        return None


def _call(module: Any, name: str) -> int | None:
    try:
        return int(getattr(module, name)())
    except Exception as exc:  # a helper missing from this release, or one that needs the driver
        swallowed(f"doctor.facts_jax.{name}", exc)  # the version is then unknown
        return None


def _cuda_text(version: int | None) -> str | None:
    """12080 -> "12.8" (CUDA's integer versions are 1000 * major + 10 * minor)."""
    return None if version is None else f"{version // 1000}.{version % 1000 // 10}"


def _cudnn_text(version: int | None) -> str | None:
    """91000 -> "9.10.0" (cuDNN 9's are 10000 * major + 100 * minor + patch)."""
    if version is None:
        return None
    return f"{version // 10000}.{version % 10000 // 100}.{version % 100}"
