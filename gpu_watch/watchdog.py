"""Noticing that a `fit` ended without telling its callbacks.

Keras calls `on_train_end` only when training returns; when it raises (an error in the model,
Ctrl-C) the callbacks hear nothing. A `FitWatchdog` remembers the frame of the running `fit`
call and its thread; the sampler thread asks it on each tick whether that frame is still on the
thread's stack, so the run is closed, as `failed` or `interrupted`, within one tick of the end.
To tell those two apart it wraps the SIGINT handler of the main thread, noting a Ctrl-C before
passing it on.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class FitWatchdog:
    """Watches one `fit` call: whether it left the stack, and whether Ctrl-C was pressed."""

    def __init__(self) -> None:
        self._watched: tuple[int, Any] | None = None  # (thread ident, the fit frame)
        self._previous_sigint: Any = None
        self.interrupted = False

    def watch(self, frame: Any) -> None:
        """Watch `frame`, the `fit` call running on the current thread. Without a frame (hooks
        called directly), nothing is watched and only the end of the interpreter closes an
        unfinished run. On the main thread, SIGINT is wrapped until `restore_sigint`."""
        if frame is None:
            return
        self._watched = (threading.get_ident(), frame)
        if threading.current_thread() is threading.main_thread():
            installed = signal.getsignal(signal.SIGINT)
            previous = _unwrapped(installed)
            if previous is not installed:
                signal.signal(signal.SIGINT, previous)
            if callable(previous):
                self._previous_sigint = previous
                signal.signal(signal.SIGINT, self._on_sigint)

    @property
    def thread(self) -> int | None:
        """The ident of the thread that runs the watched `fit`, or None."""
        watched = self._watched
        return None if watched is None else watched[0]

    def fit_left(self) -> bool:
        """Whether the watched `fit` frame is no longer on its thread's stack (False when
        nothing is watched)."""
        watched = self._watched
        if watched is None:
            return False
        ident, frame = watched
        current = sys._current_frames().get(ident)
        while current is not None:
            if current is frame:
                return False
            current = current.f_back
        return True

    def release(self) -> None:
        """Stop watching: the fit frame holds the user's data, which must not outlive the run."""
        self._watched = None

    def restore_sigint(self) -> None:
        """Put back the SIGINT handler that `watch` wrapped. Only the main thread may: a run
        closed from another thread keeps its (delegating) wrapper until the next call from
        there."""
        if self._previous_sigint is None or (
                threading.current_thread() is not threading.main_thread()):
            return
        if signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, self._previous_sigint)
        self._previous_sigint = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.interrupted = True
        self._previous_sigint(signum, frame)


def _unwrapped(handler: Any) -> Any:
    """`handler` without the wrappers of runs that closed where the handler could not be put
    back (another thread closed them): each only passes Ctrl-C on, so they are taken off here,
    on the main thread, before a new one goes on. Any number of fits leave the handler as it
    was."""
    while (isinstance(watchdog := getattr(handler, "__self__", None), FitWatchdog)
           and getattr(handler, "__func__", None) is FitWatchdog._on_sigint
           and watchdog._watched is None and watchdog._previous_sigint is not None):
        handler, watchdog._previous_sigint = watchdog._previous_sigint, None
    return handler
