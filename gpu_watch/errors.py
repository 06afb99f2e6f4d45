"""The exceptions and warnings gpu-watch raises, so users can catch or filter them by type."""

from __future__ import annotations


class GPUWatchWarning(UserWarning):
    """A problem GPUWatch noticed that does not stop training (an NVML fault, a failed write)."""


class GPUIdleWarning(GPUWatchWarning):
    """Every watched GPU stayed under the idle threshold for the idle patience."""


class GPUIdleError(RuntimeError):
    """Raised by ``GPUWatch(on_idle="raise")`` when the GPUs sat idle for the patience.

    Attributes:
        evidence: What was seen: per GPU, its mean utilization over the idle stretch, and the
            stretch's start and length in seconds since training started.
    """

    def __init__(self, message: str, evidence: dict) -> None:
        super().__init__(message)
        self.evidence = evidence


class GPUNotUsedError(RuntimeError):
    """Raised by ``GPUWatch(require_gpu=True)`` after the first step when it ran on the CPU.

    Attributes:
        causes: The cause codes that explain why (e.g. ``["no_nvidia_driver"]``).
    """

    def __init__(self, message: str, causes: list[str]) -> None:
        super().__init__(message)
        self.causes = causes
