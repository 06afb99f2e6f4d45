"""gpu-watch: is my Keras training actually using the GPU?

Add ``GPUWatch()`` to ``model.fit(callbacks=[...])`` and read the run folder it writes, or run
``gpu-watch doctor`` to learn why the GPU would not be used. Importing this package is cheap: it
loads neither TensorFlow nor Keras and does not touch the NVIDIA driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gpu_watch._version import __version__

if TYPE_CHECKING:
    from gpu_watch.doctor import doctor
    from gpu_watch.errors import GPUIdleError, GPUIdleWarning, GPUNotUsedError, GPUWatchWarning
    from gpu_watch.judging.assessment import rejudge
    from gpu_watch.runlog import Run, RunFolderError, load_run
    from gpu_watch.training.callback import GPUWatch

_EXPORTS = {
    "GPUWatch": "gpu_watch.training.callback",
    "doctor": "gpu_watch.doctor",
    "GPUIdleError": "gpu_watch.errors",
    "GPUIdleWarning": "gpu_watch.errors",
    "GPUNotUsedError": "gpu_watch.errors",
    "GPUWatchWarning": "gpu_watch.errors",
    "load_run": "gpu_watch.runlog",
    "rejudge": "gpu_watch.judging.assessment",
    "Run": "gpu_watch.runlog",
    "RunFolderError": "gpu_watch.runlog",
}

__all__ = [
    "GPUIdleError",
    "GPUIdleWarning",
    "GPUNotUsedError",
    "GPUWatch",
    "GPUWatchWarning",
    "Run",
    "RunFolderError",
    "__version__",
    "doctor",
    "load_run",
    "rejudge",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gpu_watch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
