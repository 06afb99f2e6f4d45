"""The background thread that reads NVML on a fixed schedule.

The training thread never calls NVML per batch: this thread does, every `interval_s` seconds, and
hands each tick's readings to a sink as it goes, keeping nothing itself, so memory stays flat on a
run of days.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Callable, Sequence

from gpu_watch.errors import swallowed
from gpu_watch.sensing.nvml import NVML, Device, Reading

DEFAULT_INTERVAL_S = 0.2
MIN_INTERVAL_S = 0.02
MAX_INTERVAL_S = 60.0
_MAX_ERRORS = 20

_running: weakref.WeakSet[Sampler] = weakref.WeakSet()


def check_interval(interval_s: float, name: str = "interval_s") -> float:
    """Validate a sampling interval in seconds; raise ValueError naming the bad value."""
    if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, got {interval_s!r}")
    if not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
        raise ValueError(
            f"{name} must be between {MIN_INTERVAL_S} and {MAX_INTERVAL_S} seconds, "
            f"got {interval_s!r}"
        )
    return float(interval_s)


class Sampler:
    """Reads `devices` through `nvml` every `interval_s` seconds on a daemon thread.

    The schedule does not drift (tick k is due at ``start + k * interval_s``), and a slow read
    skips the ticks it overran instead of firing them back to back.

    Args:
        nvml: The NVML session to read through.
        devices: The GPUs to read. May be empty: the sampler then still ticks, with no readings.
        sink: Called on the sampler thread with each tick's readings (one per device).
            An exception from it is recorded in `errors` and the sampler carries on.
        interval_s: Seconds between ticks. Default 0.2 (NVML refreshes utilization every 1/6 s
            to 1 s, so faster polling adds nothing). Allowed: 0.02 to 60.
        clock: Monotonic clock in seconds. Default `time.perf_counter`.
        t0: Clock value that reading timestamps are relative to. Default: when `start` is called.
        wait: Waits the given seconds on the sampler thread between ticks, returning early once
            `stop` is called. Default: a real wait. A test hands one that moves its clock.

    Example:
        >>> sampler = Sampler(NVML(), [], sink=print, interval_s=0.5)
        >>> sampler.start(); sampler.stop()
    """

    def __init__(
        self,
        nvml: NVML,
        devices: Sequence[Device],
        sink: Callable[[list[Reading]], None],
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.perf_counter,
        t0: float | None = None,
        wait: Callable[[float], object] | None = None,
    ) -> None:
        self.interval_s = check_interval(interval_s)
        self._nvml = nvml
        self._devices = list(devices)
        self._sink = sink
        self._clock = clock
        self._t0 = t0
        self._stop = threading.Event()
        self._wait = wait if wait is not None else self._stop.wait
        self._closing_tick = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.ticks = 0
        self.skipped_ticks = 0
        self.errors: list[str] = []

    @property
    def running(self) -> bool:
        """Whether the sampler thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread. Calling it while running does nothing."""
        with self._lock:
            if self.running:
                return
            if self._t0 is None:
                self._t0 = self._clock()
            self._stop.clear()
            self._closing_tick = False
            self._thread = threading.Thread(target=self._run, name="gpu-watch-sampler", daemon=True)
            self._thread.start()
            _running.add(self)

    def stop(self, timeout_s: float = 5.0, closing_tick: bool = False) -> None:
        """Stop the thread and wait for it (at most `timeout_s`). Idempotent.

        With `closing_tick`, the thread reads every device once more before it ends: NVML's
        utilization describes the period before a reading, so the end of training is measured
        too (a last epoch shorter than the interval has a reading of its own)."""
        with self._lock:
            thread = self._thread
            self._closing_tick = closing_tick and thread is not None
            self._stop.set()
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout_s)
            self._thread = None
            _running.discard(self)

    def tick(self) -> list[Reading]:
        """Read every device once, now, and hand the readings to the sink. A device whose read
        fails unexpectedly gives an empty reading; the other devices still report."""
        now = self._clock() - (self._t0 or 0.0)
        readings = []
        for device in self._devices:
            try:
                readings.append(self._nvml.read(device, now))
            except Exception as exc:  # one device's failed read must not silence the others
                self._record_error("sampler.read", exc)
                readings.append(Reading(time_s=now, gpu=device.nvml_index))
        self._sink(readings)
        self.ticks += 1
        return readings

    def _record_error(self, place: str, exc: Exception) -> None:
        """Keep `exc` for `run.json` (the first `_MAX_ERRORS`) and in `errors.swallowed`."""
        record = swallowed(place, exc)
        if len(self.errors) < _MAX_ERRORS:
            self.errors.append(record.trace)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            # The thread that reads the GPM sample buffers frees them, once it is done with
            # them: a read that hangs past `stop` never has its buffers freed under it.
            try:
                self._nvml.release_gpm(self._devices)
            except Exception as exc:  # the thread is ending: nothing left to protect but it
                self._record_error("sampler.release_gpm", exc)

    def _loop(self) -> None:
        due = self._clock()
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # a bug in the tick's sink must not end the sampling
                self._record_error("sampler.tick", exc)
            due += self.interval_s
            now = self._clock()
            if now > due:
                missed = int((now - due) // self.interval_s) + 1
                self.skipped_ticks += missed
                due += missed * self.interval_s
            self._wait(due - now)
        if self._closing_tick:
            try:
                self.tick()
            except Exception as exc:  # the run still closes without its last reading
                self._record_error("sampler.tick", exc)


@atexit.register
def _stop_all() -> None:
    for sampler in list(_running):
        sampler.stop(timeout_s=1.0)
