"""torch's facts: its CUDA build, the GPUs it sees, and what it said when CUDA did not start.

``torch.cuda.is_available()`` never raises: it returns False and, when the driver is there but
unusable, issues a ``UserWarning`` ("CUDA initialization: The NVIDIA driver on your system is
too old ..."). With no driver at all it stays silent; ``torch.cuda.init()`` then raises with
torch's own reason ("Found no NVIDIA driver on your system ..."). :func:`child_facts` shows every
warning on stderr and asks ``init()`` for that reason.

The record: ``name``, ``installed``, ``import_error``, ``version``, ``cuda_version``
(``torch.version.cuda``, None for a CPU-only build), ``hip_version``, ``available``
(``torch.cuda.is_available()``), ``arch_list`` (the compute capabilities the build has
kernels for), ``gpus`` (``index``, ``name``, ``compute_capability``, ``mem_total_mib``),
``init_error`` (what ``torch.cuda.init()`` raised).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

from gpu_watch.doctor import messages
from gpu_watch.sensing.nvml import MIB

NAME = "torch"
MODULE = "torch"

# Texts from torch's sources: c10/cuda/CUDAFunctions.cpp (driver checks, as "CUDA
# initialization: ..." warnings or errors) and torch/cuda/__init__.py (capability checks).
MESSAGE_PATTERNS = (
    ("driver_too_old", re.compile(
        r"The NVIDIA driver on your system is too old \(found version (?P<version>\d+)\)")),
    ("no_driver", re.compile(r"Found no NVIDIA driver on your system")),
    ("gpu_unsupported", re.compile(
        r"Found GPU(?P<index>\d+) (?P<device>.+?) which is of (?:cuda|compute) capability "
        r"(?:\(CC\) )?(?P<capability>\d+\.\d+)")),
    ("arch_incompatible", re.compile(
        r"(?P<device>.+) with CUDA capability sm_(?P<capability>\d+) is not compatible with "
        r"the current PyTorch installation")),
    ("init_failed", re.compile(r"CUDA driver initialization failed")),
    ("unknown_error", re.compile(r"CUDA unknown error")),
    ("no_gpus", re.compile(r"No CUDA GPUs are available")),
    ("not_compiled", re.compile(r"Torch not compiled with CUDA enabled")),
    ("cuda_initialization", re.compile(r"CUDA initialization: (?P<error>.*)")),
)

MESSAGE_MEANINGS = {
    "driver_too_old": "the NVIDIA driver is older than the CUDA this torch build needs",
    "no_driver": "no NVIDIA driver is loaded",
    "gpu_unsupported": "this torch build has no kernels for the GPU's compute capability",
    "arch_incompatible": "this torch build has no kernels for the GPU's compute capability",
    "init_failed": "the CUDA driver could not be initialised",
    "unknown_error": "CUDA failed in an unexpected way (often CUDA_VISIBLE_DEVICES changed "
                     "after start-up, or a driver update without a reboot)",
    "no_gpus": "CUDA found no GPU (CUDA_VISIBLE_DEVICES, or no GPU in this container)",
    "not_compiled": "this torch build has no CUDA support",
    "cuda_initialization": "torch could not start CUDA",
}


def parse_messages(stderr: str, record: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """torch's CUDA warnings in the child's stderr, and the error ``torch.cuda.init()`` raised.

    Args:
        stderr: What the child printed (Python's warnings, one per line or more).
        record: The facts the child reported; its ``init_error`` is read too.
    """
    text = stderr
    if record and record.get("init_error"):
        text += "\n" + record["init_error"]
    return messages.parse(text, MESSAGE_PATTERNS)


def child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The probe child's environment: the diagnosed one, unchanged."""
    return dict(environ)


def child_facts() -> dict[str, Any]:
    """Import torch and read its facts, every warning shown on stderr (in the probe's child)."""
    warnings.simplefilter("always")  # torch's CUDA warnings must reach stderr, even repeated
    try:
        import torch
    except ImportError as exc:
        return not_installed(f"{type(exc).__name__}: {exc}")
    return read(torch, live=False)


def not_installed(import_error: str) -> dict[str, Any]:
    """The record of a torch that cannot be imported."""
    return {"name": NAME, "installed": False, "gpus": [], "import_error": import_error}


def read(torch: Any, live: bool = True) -> dict[str, Any]:
    """The facts about an imported ``torch`` module.

    Args:
        torch: The ``torch`` module.
        live: This process trains: do not call ``torch.cuda.init()`` to learn why CUDA is
            unavailable (the child probe does).
    """
    version = getattr(torch, "version", None)
    facts: dict[str, Any] = {
        "name": NAME,
        "installed": True,
        "import_error": None,
        "version": torch.__version__,
        "cuda_version": getattr(version, "cuda", None),
        "hip_version": getattr(version, "hip", None),
        "available": False,
        "arch_list": [],
        "gpus": [],
        "init_error": None,
    }
    try:
        facts["available"] = bool(torch.cuda.is_available())
        if facts["available"]:
            facts["arch_list"] = list(torch.cuda.get_arch_list())
            facts["gpus"] = [_gpu(torch, i) for i in range(torch.cuda.device_count())]
        elif facts["cuda_version"] and not live:
            torch.cuda.init()  # raises with torch's reason; is_available() only says False
    except Exception as exc:  # a CUDA error is a fact about this machine
        facts["init_error"] = f"{type(exc).__name__}: {exc}"
    return facts


def read_live(torch: Any) -> dict[str, Any]:
    """The facts about the torch this process trains with."""
    return read(torch, live=True)


def _gpu(torch: Any, index: int) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(index)
    return {"index": index, "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "mem_total_mib": props.total_memory / MIB}
