"""The figures and `report.html`, drawn in a process of their own so training never waits.

Why another process: drawing a run's two figures takes matplotlib a few hundred milliseconds of
pure Python. On the training thread that is a pause at every end of `fit`; on a thread of the
training process it holds the GIL for as long, and the training loop, which needs the GIL between
its steps, slows down meanwhile. A separate process shares no GIL with training.

Why one long-lived worker: it pays the imports of matplotlib and pandas (about a second of CPU)
once per Python process, not once per `fit`, so loops that call `fit` many times (one epoch at a
time, tuners, GAN and RL loops) pay a line written to a pipe per call. The worker runs at a
low CPU priority (`DRAWING_NICE`), so it uses CPU that training leaves idle, and it ignores
Ctrl-C, which stops the training but not the drawing of what was measured. It stays in the
training's session: Linux schedules each session's processes as one group against the others
("autogroup"), and a session of its own would make the worker an equal of the training whatever
its priority.

It is started as ``python -m gpu_watch.views.drawing``, never through `multiprocessing`, whose
"spawn" start would run the user's training script again as ``__mp_main__``. It reads one request
per line on stdin, keeps them in a queue (so the training process never blocks on a full pipe),
draws each run folder with :func:`gpu_watch.report.render` (every file is replaced atomically: no
reader ever sees half a PNG) and answers each request with a line on stdout. The training process
keeps no thread for this: it reads the answers when it next asks, waits or exits, and turns a
failed drawing into a `GPUWatchWarning` then. At a normal exit it waits, up to :data:`EXIT_WAIT_S`,
for the drawings still pending. Where no worker can run (no ``sys.executable``, a frozen
application, an OS without ``select`` on pipes, an interpreter whose workers end before drawing
anything), the figures are drawn on a thread of the training process instead, with a warning.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gpu_watch.errors import GPUWatchWarning

# A normal exit waits this long for pending drawings; after that the worker finishes them on its
# own (it outlives the training process until its queue is empty).
# The drawing process's niceness: low enough to leave the training the CPU it uses, not the
# lowest: at 19 a process gets about 1.5 % of a core against one busy process, so on a machine
# whose cores are all taken a figure of a second's CPU took over a minute; at 10, about 10 %.
DRAWING_NICE = 10
EXIT_WAIT_S = 60.0
# Workers that end this many times in a row without answering (an interpreter that cannot run
# ``-m gpu_watch.views.drawing``, say) make the figures be drawn on a thread instead.
_SILENT_ENDS = 2
_READ_BYTES = 65536


@dataclass
class Drawing:
    """One request to draw a run folder's figures and `report.html`.

    Attributes:
        run_dir: The run folder.
        number: The request's number, unique in this process.
        error: Why drawing failed, once it has; None while pending or after success.
        cpu_s: CPU seconds the drawing took, once done.
    """

    run_dir: Path
    number: int
    error: str | None = None
    cpu_s: float | None = None
    _by_worker: bool = field(default=False, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def done(self) -> bool:
        """Whether drawing has ended, drawn or failed."""
        return self._done.is_set()


class Painter:
    """Sends run folders to the drawing worker and collects its answers; one per process.

    Thread-safe: training, the sampler thread (which closes runs that die) and `atexit` may all
    ask. Use :func:`painter` rather than building one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._process: subprocess.Popen | None = None
        self._owner_pid = os.getpid()
        self._pending: dict[int, Drawing] = {}
        self._partial = b""
        self._unreported: list[Drawing] = []
        self._in_process_reason: str | None = None
        self._answered = 0  # answers from the running worker
        self._silent_ends = 0  # workers in a row that ended without answering
        self._last_cpu_s: float | None = None  # CPU seconds of the last drawing done

    @property
    def drawing_cpu_s(self) -> float:
        """What one drawing costs, CPU seconds: the last one done in this process, else
        `FIRST_DRAWING_CPU_S`."""
        last = self._last_cpu_s
        return FIRST_DRAWING_CPU_S if last is None else last

    def start(self) -> None:
        """Start the worker now if it is not running, so that it has imported what it needs by
        the time the first drawing is asked for."""
        with self._lock:
            self._worker_locked()

    def request(self, run_dir: str | os.PathLike) -> Drawing:
        """Ask for `run_dir`'s figures to be drawn; return at once with the pending drawing."""
        drawing = Drawing(Path(run_dir).resolve(), next(self._numbers))
        with self._lock:
            self._collect_locked()
            process = self._worker_locked()
            drawing._by_worker = process is not None
            self._pending[drawing.number] = drawing
            if process is not None:
                line = json.dumps({"number": drawing.number, "run_dir": str(drawing.run_dir)})
                try:
                    process.stdin.write((line + "\n").encode())
                    process.stdin.flush()
                except OSError:  # the worker died: its end of the pipe is closed
                    self._collect_locked()
                    self._lost_worker_locked()
        if process is None:
            threading.Thread(target=self._draw_here, args=(drawing,), daemon=True,
                             name="gpu-watch-plot").start()
        self.report_failures()
        return drawing

    def wait(self, drawings: list[Drawing], timeout_s: float) -> bool:
        """Wait until every one of `drawings` is done, at most `timeout_s` seconds.

        Returns:
            Whether all are done (drawn or failed) in time.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            undone = [d for d in drawings if not d.done]
            if not undone or left <= 0:
                break
            process = self._process
            here = [d for d in undone if not d._by_worker]
            if here or process is None:
                (here or undone)[0]._done.wait(min(left, 0.1))
                continue
            with contextlib.suppress(OSError, ValueError):
                select.select([process.stdout], [], [], min(left, 0.5))
            with self._lock:
                self._collect_locked()
        self.report_failures()
        return all(d.done for d in drawings)

    def poll(self) -> None:
        """Take in the worker's answers so far and warn about failed drawings; never waits."""
        with self._lock:
            self._collect_locked()
        self.report_failures()

    def pending(self) -> list[Drawing]:
        """The drawings asked for that are not done yet."""
        with self._lock:
            self._collect_locked()
            return list(self._pending.values())

    def report_failures(self) -> None:
        """Turn drawings that failed since the last call into warnings (on this thread)."""
        with self._lock:
            failed, self._unreported = self._unreported, []
        for drawing in failed:
            warnings.warn(
                f"gpu-watch could not draw the figures of {drawing.run_dir}: {drawing.error}. "
                f"The run folder's data is complete; `gpu-watch report {drawing.run_dir}` "
                f"draws them.",
                GPUWatchWarning,
                stacklevel=3,
            )

    def close(self, timeout_s: float = EXIT_WAIT_S) -> None:
        """Wait for pending drawings (at most `timeout_s`), then let the worker exit."""
        pending = self.pending()
        if pending and not self.wait(pending, timeout_s):
            late = ", ".join(str(d.run_dir) for d in pending if not d.done)
            warnings.warn(f"gpu-watch is still drawing the figures of {late}; they will appear "
                          "when its drawing process is done.", GPUWatchWarning, stacklevel=2)
        with self._lock:
            process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            process.stdin.close()  # the end of the queue: the worker exits once it is empty
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1.0)

    # -- the worker, seen from here ----------------------------------------------------------

    def _worker_locked(self) -> subprocess.Popen | None:
        """The running worker, started if needed; None where figures are drawn here instead."""
        if self._owner_pid != os.getpid():  # a forked child: the worker is its parent's
            self._process, self._pending, self._owner_pid = None, {}, os.getpid()
        if self._process is not None and self._process.poll() is None:
            return self._process
        if self._process is not None:
            self._collect_locked()
            self._lost_worker_locked()
        if self._in_process_reason is not None:
            return None
        reason = _why_no_worker()
        if self._silent_ends >= _SILENT_ENDS:
            reason = (f"its drawing process ended {self._silent_ends} times in a row before "
                      f"drawing anything")
        if reason is None:
            try:
                self._process = _start_worker()
                self._partial, self._answered = b"", 0
                return self._process
            except OSError as exc:
                reason = f"its drawing process could not be started ({exc})"
        self._in_process_reason = reason
        warnings.warn(f"gpu-watch draws its figures on a thread of the training process: "
                      f"{reason}. Training may slow down while it draws.", GPUWatchWarning,
                      stacklevel=4)
        return None

    def _collect_locked(self) -> None:
        """Read the answers the worker has written so far, without waiting."""
        process = self._process
        if process is None:
            return
        ended = False
        while True:
            try:
                chunk = os.read(process.stdout.fileno(), _READ_BYTES)
            except BlockingIOError:
                break
            except (OSError, ValueError):
                chunk = b""
            if not chunk:  # end of file: the worker is gone
                ended = True
                break
            self._partial += chunk
        *lines, self._partial = self._partial.split(b"\n")
        for line in lines:
            try:
                answer = json.loads(line)
                drawing = self._pending.pop(int(answer["number"]))
            except (ValueError, KeyError, TypeError):
                continue  # not an answer to a request of ours
            self._answered += 1
            self._finish_locked(drawing, answer.get("error"), answer.get("cpu_s"))
        if ended:
            self._lost_worker_locked()

    def _lost_worker_locked(self) -> None:
        """The worker ended: fail what it still had, so nothing waits for it forever."""
        process, self._process = self._process, None
        status = None
        if process is not None:
            self._silent_ends = 0 if self._answered else self._silent_ends + 1
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = process.wait(timeout=1.0)
            for pipe in (process.stdin, process.stdout):
                with contextlib.suppress(OSError):
                    pipe.close()
        for drawing in [d for d in self._pending.values() if d._by_worker]:
            del self._pending[drawing.number]
            self._finish_locked(drawing, f"its drawing process ended (exit status {status}) "
                                         "before drawing them", None)

    def _finish_locked(self, drawing: Drawing, error: str | None, cpu_s: float | None) -> None:
        drawing.error, drawing.cpu_s = error, cpu_s
        if error is None and cpu_s is not None:
            self._last_cpu_s = cpu_s
        if error is not None:
            self._unreported.append(drawing)
        drawing._done.set()

    def _draw_here(self, drawing: Drawing) -> None:
        """Draw on a thread of this process, where no worker can run."""
        error, cpu_s = _draw(drawing.run_dir)
        with self._lock:
            self._pending.pop(drawing.number, None)
            self._finish_locked(drawing, error, cpu_s)
        _forget_thread_fonts()


def _why_no_worker() -> str | None:
    if not sys.executable or getattr(sys, "frozen", False):
        return "this Python has no interpreter to start a drawing process with"
    if os.name != "posix":
        return "a drawing process needs select() on pipes, which this OS lacks"
    return None


def _start_worker() -> subprocess.Popen:
    env = dict(os.environ)
    # The worker must import this very gpu_watch, wherever it was imported from.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "gpu_watch.views.drawing"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=env, close_fds=True,
    )
    os.set_blocking(process.stdout.fileno(), False)
    return process


def _draw(run_dir: str | os.PathLike) -> tuple[str | None, float]:
    """Draw one run folder; return (why it failed or None, CPU seconds of this thread)."""
    start = time.thread_time()
    try:
        from gpu_watch.report import render

        render(run_dir)
        error = None
    except Exception as exc:  # a figure must never cost the user their run folder
        error = f"{type(exc).__name__}: {exc}"
    return error, time.thread_time() - start


def _forget_thread_fonts() -> None:
    """matplotlib keeps open font files per drawing thread in a cache; a thread that ends would
    leave its entries, and their file handles, behind until the cache evicts them."""
    font_manager = sys.modules.get("matplotlib.font_manager")
    clear = getattr(getattr(font_manager, "_get_font", None), "cache_clear", None)
    if clear is not None:
        clear()


_painter: Painter | None = None
_painter_lock = threading.Lock()


def painter() -> Painter:
    """This process's painter."""
    global _painter
    with _painter_lock:
        if _painter is None:
            _painter = Painter()
        return _painter



# Redrawing costs the drawing process CPU (a few hundred milliseconds per redraw), which training
# may be short of: redraws during training take at most this share of its time, and none
# happens in its first seconds.
RENDER_SHARE = 0.02
FIRST_RENDER_S = 10.0
# A run's final figures are drawn when it ends only if that costs at most this share of the CPU
# time the training process spent on the run; a shorter run's are drawn when asked for
# (`Redraws.wait`: `GPUWatch.wait_for_report`; `gpu-watch report` draws them itself), and the
# last run of a process left so at its exit. A suite of many small fits (a framework's own
# tests, a tuner's trials) would otherwise spend more CPU drawing than training.
DRAWING_SHARE = 0.25
# What one drawing costs before this process has timed one, CPU seconds (a small run's two
# figures and report.html, measured on the development machine: docs/performance.md).
FIRST_DRAWING_CPU_S = 0.4

_left_for_later: Redraws | None = None  # the last run whose final figures wait to be asked for
_left_lock = threading.Lock()


class Redraws:
    """When one run's figures are asked for: at the end of the run when they cost at most
    `DRAWING_SHARE` of the run's CPU time (else when `wait` asks for them, or at the exit of
    the process for its last run); at an epoch end only once `FIRST_RENDER_S` have passed, the
    last drawing is done and the redraw budget (`RENDER_SHARE` of the training time) allows.

    Args:
        run_dir: The run folder to draw.
        cpu_clock: The training process's CPU time, seconds. Default `time.process_time`.
    """

    def __init__(self, run_dir: str | os.PathLike,
                 cpu_clock: Callable[[], float] = time.process_time) -> None:
        self.run_dir = Path(run_dir)
        self.first_s = FIRST_RENDER_S
        self._last: Drawing | None = None
        self._asked_s = 0.0
        self._cpu_clock = cpu_clock
        self._cpu0 = cpu_clock()
        self.left_for_later = False  # the final figures wait until they are asked for

    def ask(self, now_s: float, final: bool) -> None:
        """Ask for the figures `now_s` seconds into training, if the budget allows (`final`:
        the run has ended; its figures are drawn now, or left for later when the run was too
        short to pay for them)."""
        global _left_for_later
        the_painter = painter()
        the_painter.poll()
        last = self._last
        if final and the_painter.drawing_cpu_s > DRAWING_SHARE * (
                self._cpu_clock() - self._cpu0):
            self.left_for_later = True
            with _left_lock:
                _left_for_later = self
            return
        if not final:
            if now_s < self.first_s:
                return
            if last is not None and not last.done:
                return  # the last one is still being drawn; a later epoch catches up
            if last is not None and last.cpu_s is not None and (
                    now_s < self._asked_s + last.cpu_s / RENDER_SHARE):
                return
        self._asked_s = now_s
        if final:
            with _left_lock:  # the process's last run is drawn now: none is left for its exit
                _left_for_later = None
        self._request(the_painter)

    def _request(self, the_painter: Painter) -> None:
        global _left_for_later
        self.left_for_later = False
        with _left_lock:
            if _left_for_later is self:
                _left_for_later = None
        self._last = the_painter.request(self.run_dir)

    def wait(self, timeout_s: float) -> bool:
        """Wait until the last figures asked for are drawn, at most `timeout_s` seconds; final
        figures left for later are asked for now.

        Returns:
            True when they are drawn, or none were asked for; False when drawing failed (a
            `GPUWatchWarning` says why) or is still going on.
        """
        if self.left_for_later:
            self._request(painter())
        last = self._last
        if last is None:
            return True
        return painter().wait([last], timeout_s) and last.error is None

# Registered when this module is imported, which `gpu_watch.training.monitor` does before it
# registers its own handler: handlers run last-registered first, so runs that die are closed (and
# their drawings asked for) before this waits for the drawings.
@atexit.register
def _finish_drawings() -> None:
    last = _left_for_later  # a script's last run: the one its figures are looked for in
    if last is not None and last.left_for_later:
        last._request(painter())
    if _painter is not None:
        _painter.close(EXIT_WAIT_S)


# -- the worker's side ---------------------------------------------------------------------------


def serve(requests: IO[bytes], answers: IO[str]) -> None:
    """The worker's loop: draw each requested run folder, answer each request, until EOF.

    Requests for the same folder that are waiting together are drawn once: the drawing shows the
    folder as it is when drawn, which is what every one of them asked for.
    """
    waiting: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def read() -> None:
        for line in requests:
            with contextlib.suppress(ValueError):
                waiting.put(json.loads(line))
        waiting.put(None)

    threading.Thread(target=read, daemon=True).start()
    ended = False
    while not ended:
        batch = [waiting.get()]
        while True:
            try:
                batch.append(waiting.get_nowait())
            except queue.Empty:
                break
        ended = None in batch
        by_folder: dict[str, list[int]] = {}
        for request in batch:
            if isinstance(request, dict) and "number" in request:
                by_folder.setdefault(str(request.get("run_dir")), []).append(request["number"])
        for run_dir, numbers in by_folder.items():
            error, cpu_s = _draw(run_dir)
            for number in numbers:
                answers.write(json.dumps({"number": number, "error": error, "cpu_s": cpu_s})
                              + "\n")
            answers.flush()


def _main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the training; EOF ends this
    with contextlib.suppress(OSError, AttributeError):
        os.nice(DRAWING_NICE)
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a library that prints must not garble the answers
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    _main()
