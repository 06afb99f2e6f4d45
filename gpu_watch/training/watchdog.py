"""Noticing that a `fit` ended without telling its callbacks.

Keras calls `on_train_end` only when training returns; when it raises (an error in the model,
Ctrl-C) the callbacks hear nothing. A `FitWatchdog` remembers the frame of the running `fit`
call and its thread; the sampler thread asks it on each tick whether that frame is still on the
thread's stack, so the run is closed, as `failed` or `interrupted`, within one tick of the end.
To tell those two apart it wraps the SIGINT handler of the main thread, noting a Ctrl-C before
passing it on (Python's own handler is put back and the signal delivered again, so that the
traceback ends in the code that was interrupted, not in gpu-watch). A KeyboardInterrupt that
code inside `fit` swallowed is sent again; where every one was swallowed, `fit` is stopped at
the end of its batch and the KeyboardInterrupt raised as it returns: a Ctrl-C always ends
training.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any


class FitWatchdog:
    """Watches one `fit` call: whether it left the stack, and whether Ctrl-C was pressed."""

    def __init__(self) -> None:
        self._watched: tuple[int, Any] | None = None  # (thread ident, the fit frame)
        self._previous_sigint: Any = None
        self.interrupted = False
        self._redelivery_lock = threading.Lock()
        self._redelivery_due = False  # a Ctrl-C noted, not yet delivered again
        self._stop: Callable[[], None] | None = None  # ends the watched `fit` at a batch's end

    def watch(self, frame: Any, stop: Callable[[], None] | None = None) -> None:
        """Watch `frame`, the `fit` call running on the current thread; `stop` (any thread)
        ends it at the end of its batch, where every KeyboardInterrupt sent was swallowed.
        Without a frame (hooks called directly), nothing is watched and only the end of the
        interpreter closes an unfinished run. On the main thread, SIGINT is wrapped until
        `restore_sigint`."""
        if frame is None:
            return
        self._watched = (threading.get_ident(), frame)
        self._stop = stop
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
        """Stop watching: the fit frame holds the user's data, which must not outlive the run.
        A Ctrl-C not yet delivered again is dropped: the run closes because `fit` has ended,
        by that Ctrl-C (pressed twice) or with its KeyboardInterrupt already raised."""
        self._watched = None
        self._stop = None
        self._take_redelivery()

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
        previous = self._previous_sigint
        if previous is not signal.default_int_handler:
            previous(signum, frame)  # the user's own handler, as it would have run
            return
        # Python's handler raises KeyboardInterrupt in the frame that calls it: called from
        # here, the traceback would end in gpu-watch, as if it had raised. Put it back and
        # deliver the signal again once this frame has returned, so the KeyboardInterrupt is
        # raised in the code Ctrl-C interrupted, a moment later.
        signal.signal(signal.SIGINT, previous)
        self._previous_sigint = None
        with self._redelivery_lock:
            self._redelivery_due = True
        _later(REDELIVER_S, self._redeliver)

    def deliver_pending_interrupt(self) -> None:
        """Raise the KeyboardInterrupt of a Ctrl-C not yet delivered again (`fit` ended within
        `REDELIVER_S` of it): a Ctrl-C is never lost. Call on the main thread."""
        if self._take_redelivery():
            raise KeyboardInterrupt

    def _redeliver(self) -> None:
        # A second Ctrl-C may have ended `fit` already: one KeyboardInterrupt is enough.
        if self._take_redelivery() and not self.fit_left():
            _interrupt_main()
            _later(RETRY_S, self._retry, 1)

    def _retry(self, tries: int) -> None:
        """The KeyboardInterrupt was raised `RETRY_S` ago and the same `fit` still runs: raised
        inside code that catches every exception, it was lost there. Keras' `pythonify_logs`,
        run in every batch hook, does so around turning each log value into a float, where a
        step's result is waited for (most of the time, on a loaded machine). Send it again,
        `REDELIVER_TRIES` times in all; after the last, stop `fit` at the end of its batch and
        have `deliver_pending_interrupt` raise the KeyboardInterrupt as it returns."""
        stop = self._stop
        if self._watched is None or self.fit_left():  # it ended `fit`: the run is closing
            return
        if tries < REDELIVER_TRIES:
            _interrupt_main()
            _later(RETRY_S, self._retry, tries + 1)
        elif stop is not None:
            with self._redelivery_lock:
                self._redelivery_due = True
            stop()

    def _take_redelivery(self) -> bool:
        with self._redelivery_lock:
            due, self._redelivery_due = self._redelivery_due, False
        return due


# How long after Ctrl-C the signal is delivered again (see `FitWatchdog._on_sigint`): ample
# time for the handler's frame to return, short next to a person's reaction.
REDELIVER_S = 0.05
# How long after that a `fit` that still runs has lost its KeyboardInterrupt, and how many times
# in all the signal is sent (see `FitWatchdog._retry`): a second Ctrl-C, pressed for the user.
RETRY_S = 0.5
REDELIVER_TRIES = 3


def _later(seconds: float, function: Any, *args: Any) -> None:
    """Call `function(*args)` on a daemon thread, `seconds` from now."""
    timer = threading.Timer(seconds, function, args)
    timer.daemon = True
    timer.start()


def _interrupt_main() -> None:
    """SIGINT to the main thread, as Ctrl-C sends it (it also ends a blocking call there)."""
    # When the main thread has ended, nothing is left to interrupt.
    with contextlib.suppress(OSError, ValueError):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


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
