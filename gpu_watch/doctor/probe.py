"""Reading a framework's facts: in a child process with a time limit, or from the live process.

Each backend is read in a child process of its own (``sys.executable``), which imports that
framework and nothing else: a driver that hangs or crashes the import costs the time limit, not
the doctor, and the framework's start-up messages can be read from the child's stderr. The
children of one run start together, so ``--backend all`` takes as long as the slowest import.

The child prints its facts as one JSON line after :data:`MARKER`; whatever else it prints (the
framework's logging) is left for the backend's message parser.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_watch.doctor import facts_jax, facts_tensorflow, facts_torch
from gpu_watch.doctor.backends import title

MARKER = "GPU_WATCH_PROBE "
KILL_GRACE_S = 2.0  # after a timeout, how long to wait for the killed child to be reaped
STDERR_TAIL_LINES = 20

# The modules that read each backend's facts.
READERS = {"tensorflow": facts_tensorflow, "jax": facts_jax, "torch": facts_torch}
# Framework modules a probe reports as imported, to show it imported only its own.
FRAMEWORK_MODULES = ("tensorflow", "jax", "torch", "keras")


@dataclass(frozen=True)
class ProbeResult:
    """What reading one backend found.

    Attributes:
        framework: The backend's facts (see its ``facts_*`` module), or None when the probe
            failed before it could report them, or the framework was not read.
        stderr: What the framework printed while it started (its GPU messages).
        error: Why the probe failed (a timeout, a crash), or None when it ran.
        duration_s: How long the probe took, seconds.
        mode: ``"child"``, ``"in_process"`` or ``"injected"``.
        note: Why the framework was not read although nothing failed (in-process, a framework
            that this process has not imported).
    """

    framework: dict[str, Any] | None
    stderr: str = ""
    error: str | None = None
    duration_s: float | None = None
    mode: str = "injected"
    note: str | None = None


def run_probes(backends: list[str], timeout_s: float, environ: Mapping[str, str]
               ) -> dict[str, ProbeResult]:
    """Read each backend in its own child process, all at once, each within `timeout_s`.

    Args:
        backends: Names from :data:`READERS`.
        timeout_s: Seconds each child may take.
        environ: The environment the children run in (the one being diagnosed).
    """
    with ThreadPoolExecutor(max_workers=max(1, len(backends))) as pool:
        futures = {b: pool.submit(run_probe, b, timeout_s, environ) for b in backends}
        return {b: future.result() for b, future in futures.items()}


def run_probe(backend: str, timeout_s: float, environ: Mapping[str, str]) -> ProbeResult:
    """Read `backend`'s facts in a child process (``sys.executable``) with a time limit.

    Args:
        backend: A name from :data:`READERS`.
        timeout_s: Seconds the child may take.
        environ: The environment the child runs in; the backend's reader turns its logging up.
    """
    reader = READERS[backend]
    # The child must import this very gpu_watch, even from a source checkout that is not
    # installed, without that folder shadowing anything the framework imports afterwards.
    package_parent = str(Path(__file__).resolve().parents[2])
    code = (f"import sys; sys.path.insert(0, {package_parent!r}); "
            "from gpu_watch.doctor.probe import child_main; del sys.path[0]; "
            f"child_main({backend!r})")
    name = title(backend)
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code], env=reader.child_environ(environ),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, errors="replace")
    try:
        stdout, stderr = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        try:
            stdout, stderr = child.communicate(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:  # stuck inside the driver: leave it, do not hang too
            stdout, stderr = "", ""
        return ProbeResult(None, stderr or "", duration_s=time.perf_counter() - start,
                           mode="child",
                           error=f"the {name} probe did not finish within {timeout_s:g} s (a "
                                 "hung driver or a very slow import); retry with a larger "
                                 "--timeout")
    duration_s = time.perf_counter() - start
    reported = [line for line in stdout.splitlines() if line.startswith(MARKER)]
    if child.returncode != 0 or not reported:
        return ProbeResult(None, stderr, duration_s=duration_s, mode="child",
                           error=_failure(name, child.returncode, stderr))
    try:
        framework = json.loads(reported[-1][len(MARKER):])
    except json.JSONDecodeError as exc:
        return ProbeResult(None, stderr, duration_s=duration_s, mode="child",
                           error=f"the {name} probe printed unreadable facts ({exc})")
    return ProbeResult(framework, stderr, duration_s=duration_s, mode="child")


def child_main(backend: str) -> None:
    """Run in the child process: read `backend`'s facts and print them as one JSON line."""
    facts = READERS[backend].child_facts()
    facts["imported"] = [m for m in FRAMEWORK_MODULES if m in sys.modules]
    sys.stderr.flush()
    print(MARKER + json.dumps(facts, default=str), flush=True)


def in_process_probe(backend: str) -> ProbeResult:
    """Read `backend` from this process, only if it is already imported (never import it).

    For GPUWatch during training: well under a second, and the live configuration (memory
    limits, logical devices) is read too where the framework has one.
    """
    reader = READERS.get(backend)
    module = sys.modules.get(reader.MODULE) if reader else None
    if module is None:
        return ProbeResult(None, mode="in_process",
                           note=f"{title(backend)} is not imported in this process")
    start = time.perf_counter()
    try:
        framework = reader.read_live(module)
    except Exception as exc:  # a diagnosis must never break the training it watches
        return ProbeResult(None, mode="in_process", duration_s=time.perf_counter() - start,
                           error=f"reading {title(backend)}'s state failed: {exc!r}")
    return ProbeResult(framework, mode="in_process", duration_s=time.perf_counter() - start)


def _failure(name: str, returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"was killed by signal {-returncode}"
    else:
        how = f"exited with status {returncode}"
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    return f"the {name} probe {how}" + (f": {last}" if last else "")
