"""Why a GPU was not used: the cause codes, each with a message and a remedy a user can paste.

One type serves `gpu-watch doctor` (checks before training) and `GPUWatch` (what training showed),
so a finding reads the same wherever it appears. Codes are grouped by the four reasons people
meet in practice: the installation, the driver, GPU resources, and code that forces the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

INSTALL = "install"
DRIVER = "driver"
RESOURCES = "resources"
CODE = "code"
OTHER = "other"

ERROR = "error"  # stops the GPU from being used
WARNING = "warning"  # the GPU is used, but poorly or not by this process's measure
INFO = "info"


@dataclass(frozen=True)
class CauseSpec:
    """What every instance of a cause code shares."""

    group: str
    severity: str
    message: str
    remedy: str


CATALOGUE: dict[str, CauseSpec] = {
    "cpu_only_build": CauseSpec(
        INSTALL, ERROR,
        "The installed TensorFlow is a CPU-only build.",
        'pip uninstall -y tensorflow-cpu && pip install "tensorflow[and-cuda]"',
    ),
    "cuda_libs_missing": CauseSpec(
        INSTALL, ERROR,
        "TensorFlow was built with CUDA but cannot load the CUDA/cuDNN libraries.",
        'pip install "tensorflow[and-cuda]"',
    ),
    "no_nvidia_driver": CauseSpec(
        DRIVER, ERROR,
        "No NVIDIA driver is loaded on this machine, so no GPU can be used.",
        "Install the NVIDIA driver for your GPU (e.g. `sudo apt install nvidia-driver-550`), "
        "reboot, and check that `nvidia-smi` lists the GPU; on a cloud VM pick a GPU instance.",
    ),
    "driver_too_old": CauseSpec(
        DRIVER, ERROR,
        "The NVIDIA driver is too old for the CUDA version TensorFlow was built with.",
        "Upgrade the NVIDIA driver to one that supports the build's CUDA version "
        "(see `nvidia-smi` for the driver's CUDA version), or install an older TensorFlow.",
    ),
    "gpu_memory_contention": CauseSpec(
        RESOURCES, WARNING,
        "Other processes hold a large share of the GPU's memory.",
        "Stop the other processes (`nvidia-smi` lists them) or pick a free GPU with "
        "`CUDA_VISIBLE_DEVICES=<index>`.",
    ),
    "gpu_memory_limited": CauseSpec(
        RESOURCES, WARNING,
        "TensorFlow's GPU memory is limited by configuration.",
        "tf.config.experimental.set_memory_growth(tf.config.list_physical_devices('GPU')[0], "
        "True)  # and remove or raise any LogicalDeviceConfiguration(memory_limit=...)",
    ),
    "forced_cpu_placement": CauseSpec(
        CODE, ERROR,
        "The training step's compute was placed on the CPU although a GPU is visible.",
        "Remove `with tf.device('/CPU:0')` around model building or fit, and any "
        "tf.config.set_visible_devices([], 'GPU') or CUDA_VISIBLE_DEVICES set in code.",
    ),
    "gpus_hidden": CauseSpec(
        OTHER, ERROR,
        "The GPUs are hidden from this process.",
        "unset CUDA_VISIBLE_DEVICES  # or set it to the GPUs to use, e.g. "
        "CUDA_VISIBLE_DEVICES=0; and remove tf.config.set_visible_devices([], 'GPU')",
    ),
    "input_bound": CauseSpec(
        OTHER, WARNING,
        "The training loop spent much of its time waiting for data, leaving the GPU idle.",
        "dataset = dataset.cache().prefetch(tf.data.AUTOTUNE)  # and use "
        "num_parallel_calls=tf.data.AUTOTUNE in map(); for generators use a tf.data pipeline",
    ),
    "process_not_on_gpu": CauseSpec(
        OTHER, ERROR,
        "The GPU was busy, but not with this process: this training does not use it.",
        "Check the placement report in run.json; the GPU's load comes from another process "
        "(`nvidia-smi` lists them).",
    ),
    "process_not_attributable": CauseSpec(
        OTHER, INFO,
        "NVML lists processes by host PID, and this process (in a container's PID namespace) "
        "is not among them: device-level figures are shown instead.",
        "Nothing to fix: run with `--pid=host` (docker) if you need per-process figures.",
    ),
    "gpu_shared": CauseSpec(
        RESOURCES, WARNING,
        "Other processes used the GPU while this training ran.",
        "Train on a GPU no one else uses: `nvidia-smi` lists each GPU's processes; pick a "
        "free one with CUDA_VISIBLE_DEVICES=<index>, or stop the processes named here.",
    ),
}

CODES = tuple(CATALOGUE)


@dataclass(frozen=True)
class Cause:
    """One reason a GPU was not used (or not used well), with evidence and a remedy.

    Attributes:
        code: A code from :data:`CATALOGUE`, e.g. ``"no_nvidia_driver"``.
        message: One line that says what was found, with the specifics.
        remedy: What to do, as a command or a line of code a user can paste.
        severity: ``"error"``, ``"warning"`` or ``"info"``.
        group: ``"install"``, ``"driver"``, ``"resources"``, ``"code"`` or ``"other"``.
        evidence: The facts behind it (versions, PIDs, MiB, variable values, ops).
    """

    code: str
    message: str
    remedy: str
    severity: str
    group: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready record written to `run.json` and printed by `doctor --json`."""
        return {
            "code": self.code,
            "severity": self.severity,
            "group": self.group,
            "message": self.message,
            "remedy": self.remedy,
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cause:
        """Read back a record written by :meth:`to_dict`."""
        spec = CATALOGUE.get(data["code"])
        return cls(
            code=data["code"],
            message=data.get("message") or (spec.message if spec else data["code"]),
            remedy=data.get("remedy") or (spec.remedy if spec else ""),
            severity=data.get("severity") or (spec.severity if spec else WARNING),
            group=data.get("group") or (spec.group if spec else OTHER),
            evidence=dict(data.get("evidence") or {}),
        )


def cause(code: str, message: str | None = None, remedy: str | None = None,
          severity: str | None = None, **evidence: Any) -> Cause:
    """Build a :class:`Cause` for `code`, with the catalogue's text unless more specific text is
    given. Keyword arguments become the evidence."""
    spec = CATALOGUE.get(code)
    if spec is None:
        raise ValueError(f"unknown cause code {code!r}; known codes: {', '.join(CODES)}")
    return Cause(
        code=code,
        message=message or spec.message,
        remedy=remedy or spec.remedy,
        severity=severity or spec.severity,
        group=spec.group,
        evidence=evidence,
    )
