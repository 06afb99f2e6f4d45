"""The exceptions and warnings gpu-watch raises, so users can catch or filter them by type."""

from __future__ import annotations

import os
import sys
import threading
import traceback
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any

# The exit codes of every `gpu-watch` command: 0 done (for `doctor`, a GPU is usable), 1 no
# usable GPU (`doctor`), 2 the command could not do its work (a bad folder, a bad argument).
EXIT_OK = 0
EXIT_NO_GPU = 1
EXIT_ERROR = 2


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


# gpu-watch's own modules that call `fit` as a user would.
_USER_MODULES = ("demo.py",)


@dataclass(frozen=True, slots=True)
class Site:
    """A line of the user's code: the one that called `fit`.

    Attributes:
        filename: Its file.
        lineno: Its line number.
        module_globals: Its module's globals (the registry of warnings already shown there,
            and the source lines a warning quotes).
        thread: The ident of the thread it runs on (the training thread).
    """

    filename: str
    lineno: int
    module_globals: dict[str, Any]
    thread: int


def user_site() -> Site | None:
    """The first frame of the current thread's stack outside gpu-watch and Keras (the user's
    line that called `fit`, when called from a hook on the training thread), or None."""
    frame = _user_frame()
    if frame is None:
        return None
    return Site(frame.f_code.co_filename, frame.f_lineno, frame.f_globals,
                threading.get_ident())


def warn(message: str, category: type[Warning] = GPUWatchWarning,
         site: Site | None = None) -> None:
    """Issue a warning attributed to the user's code, so that the warning shows the user's
    line and the user's warning filters apply: the first frame of the stack outside gpu-watch
    and Keras (the line that called `fit`). On any other thread than the one that began
    training (JAX and torch run batch hooks on Keras' worker threads), `site` is named: the
    line that called `fit`, read when training began (`user_site`)."""
    if site is not None and threading.get_ident() != site.thread:
        # A worker thread's stack holds the thread pool, not the user's code.
        registry = site.module_globals.setdefault("__warningregistry__", {})
        warnings.warn_explicit(message, category, site.filename, site.lineno,
                               module=site.module_globals.get("__name__"), registry=registry,
                               module_globals=site.module_globals)
        return
    frame = _user_frame()
    level = 1
    current = sys._getframe(0)
    while current is not None and current is not frame:
        current, level = current.f_back, level + 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)


def _user_frame() -> Any:
    """The first frame of this thread's stack outside gpu-watch and Keras, or None."""
    skip = (_package_dir(__name__), _package_dir("keras"))
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(skip) \
            and not frame.f_code.co_filename.endswith(_USER_MODULES):
        frame = frame.f_back
    return frame


def _package_dir(module: str) -> str:
    """The folder of the top-level package of `module` (with a trailing separator), or a
    string no file name starts with when it is not imported."""
    top = sys.modules.get(module.split(".")[0])
    path = getattr(top, "__file__", None)
    return os.path.dirname(path) + os.sep if path else "\0"


# -- exceptions caught so that training goes on ---------------------------------------------
#
# Every broad `except Exception` sits where a fault must not reach training (the sampler's tick,
# the exporters, the live line, a probe of the framework). The ones that would otherwise leave
# no trace hand what they caught to `swallowed`, so that it can still be found: a test (see
# `gpu_watch.testing.strict_catches`) turns one caught where only a bug could cause it into a
# failure.

_MAX_SWALLOWED = 100  # the most recent ones kept: a fault on every tick must not grow memory


@dataclass(frozen=True, slots=True)
class Swallowed:
    """An exception caught so that training goes on.

    Attributes:
        place: Where it was caught, "module.what" (e.g. "sampler.tick").
        error: Its type and message.
        trace: The last frames of its traceback.
    """

    place: str
    error: str
    trace: str


_swallowed: deque[Swallowed] = deque(maxlen=_MAX_SWALLOWED)
_swallowed_lock = threading.Lock()


def swallowed(place: str, exc: BaseException) -> Swallowed:
    """Record `exc`, caught at `place` so that training goes on, and return the record."""
    record = Swallowed(place, f"{type(exc).__name__}: {exc}",
                       "".join(traceback.format_exception(exc, limit=-3)).strip())
    with _swallowed_lock:
        _swallowed.append(record)
    return record


def take_swallowed(*places: str) -> list[Swallowed]:
    """Remove and return the recorded exceptions caught at `places` (a place matches when it
    is one of them or starts with one of them and a dot); with no `places`, all of them."""
    with _swallowed_lock:
        taken = [s for s in _swallowed if not places or any(
            s.place == p or s.place.startswith(p + ".") for p in places)]
        for record in taken:
            _swallowed.remove(record)
    return taken
