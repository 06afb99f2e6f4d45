"""`gpu-watch doctor`: why the Keras backend that will train would not use the GPU, each reason
with a remedy.

Three steps, kept apart so that each can be tested on its own, one module per part:

1. Gather the facts (:func:`doctor`). :mod:`backends` says which Keras backend will train and
   how that is known; :mod:`probe` reads each checked backend in a child process of its own with
   a time limit (or from the live process during training), through :mod:`facts_tensorflow`,
   :mod:`facts_jax` or :mod:`facts_torch`, which also parse the framework's start-up messages
   (:mod:`messages`); :mod:`facts_system` reads NVML, the environment, the platform and the
   installed distributions.
2. Diagnose (:func:`diagnose`, :mod:`rules`): pure rules from facts to
   :class:`~gpu_watch.judging.causes.Cause` findings, shared ones in :mod:`rules_common`, each
   backend's in :mod:`rules_tensorflow`, :mod:`rules_jax` and :mod:`rules_torch`. No I/O.
3. Report (:class:`DoctorReport`, :mod:`report`): one status per backend, and from the deciding
   backend's status the first line, ``gpu_usable`` and the exit code a job script can gate on.

The facts are a JSON-ready dict, the same one ``--json`` prints and GPUWatch writes to
``run.json``. Its keys:

- ``doctor``: ``mode`` ("child", "in_process" or "injected"), ``pid`` (the diagnosed process),
  ``backend`` (the backend that decides the exit code), ``probe_s`` (seconds the slowest
  probe took).
- ``keras``: ``version``, ``backend`` (the one Keras will use), ``backend_source`` (how that is
  known: "KERAS_BACKEND", the ``keras.json`` path, "Keras' default", "the running Keras").
- ``frameworks``: backend name -> its facts (see its ``facts_*`` module), plus ``messages``
  (its start-up messages, parsed) and ``probe`` (``mode``, ``probe_s``, ``error``: why it could
  not be read, ``note``: why it was not read, ``stderr_tail`` when it failed).
- ``distributions``: name -> version for the frameworks, their CUDA plugins and ``nvidia-*``
  wheels.
- ``cuda_wheels``: ``required`` (the ``tensorflow[and-cuda]`` wheels, name -> version
  specifier), ``missing`` (names), ``wrong_version`` (name, installed, required).
- ``nvml``: ``available``, ``error``, ``driver_version``, ``cuda_driver_version``, ``gpus``
  (every GPU NVML sees: ``index``, ``uuid``, ``name``, ``mem_total_mib``, ``mem_used_mib``,
  ``processes``: ``pid``, ``used_mib``; None when NVML cannot list them).
- ``env``: the environment variables in :data:`ENV_VARS`, None when unset.
- ``platform``: ``system``, ``release``, ``machine``, ``python``, ``executable``, ``wsl``,
  ``container``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, TextIO

from gpu_watch.doctor.backends import (
    ALL,
    BACKENDS,
    CHOICES,
    BackendChoice,
    UnknownBackendError,
    backends_to_check,
    configured_backend,
    is_installed,
)
from gpu_watch.doctor.facts_system import (
    ENV_VARS,
    and_cuda_requirements,
    cuda_wheel_status,
    env_facts,
    installed_distributions,
    nvml_facts,
    platform_facts,
)
from gpu_watch.doctor.probe import (
    READERS,
    STDERR_TAIL_LINES,
    ProbeResult,
    in_process_probe,
    run_probes,
)
from gpu_watch.doctor.report import (
    EXIT_ERROR,
    EXIT_NO_GPU,
    EXIT_OK,
    BackendStatus,
    DoctorReport,
    backend_status,
)
from gpu_watch.doctor.rules import diagnose
from gpu_watch.doctor.rules_common import (
    CONTENTION_SHARE_PCT,
    MEMORY_LIMIT_SHARE_PCT,
    Facts,
    resolve_visible_gpus,
)
from gpu_watch.sensing.nvml import NVML

__all__ = [
    "ALL",
    "BACKENDS",
    "CHOICES",
    "CONTENTION_SHARE_PCT",
    "ENV_VARS",
    "EXIT_ERROR",
    "EXIT_NO_GPU",
    "EXIT_OK",
    "MEMORY_LIMIT_SHARE_PCT",
    "BackendChoice",
    "BackendStatus",
    "DoctorReport",
    "ProbeResult",
    "backend_status",
    "diagnose",
    "doctor",
    "during_training",
    "resolve_visible_gpus",
    "run_doctor_command",
]


def doctor(nvml: Any = None, *, backend: str | None = None, in_process: bool = False,
           timeout_s: float = 30.0, environ: Mapping[str, str] | None = None,
           probes: Mapping[str, ProbeResult] | None = None) -> DoctorReport:
    """Find out why the Keras backend would not use the GPU here.

    Args:
        nvml: An :class:`~gpu_watch.sensing.nvml.NVML` session, or the library to open one with (the
            ``pynvml`` module or a :class:`~gpu_watch.testing.FakeNVML`). Default: a new session
            on the real NVML, shut down when done; a session passed in is left open.
        backend: The backend to diagnose: None (default) for the one Keras will use
            (``KERAS_BACKEND``, else ``keras.json``, else TensorFlow), ``"tensorflow"``,
            ``"jax"``, ``"torch"``, or ``"all"`` (the one Keras will use, then every other
            installed one; the exit code stays the first one's).
        in_process: Read the framework from this process instead of a child: for GPUWatch,
            during training. A framework is read only if it is already imported (it is never
            imported here); the live memory configuration is read too. Well under a second.
        timeout_s: Seconds each child process may take to import its framework. Default 30.
        environ: The environment to diagnose (and to start the children in). Default
            `os.environ`.
        probes: Backend -> framework facts and stderr to use instead of reading them (for tests
            and replays); the backends checked are its keys, the first one deciding.

    Returns:
        A :class:`DoctorReport`.

    Raises:
        ValueError: `backend` is not one of :data:`CHOICES` or None, or `timeout_s` is not
            positive.

    Example:
        >>> report = doctor(backend="all")
        >>> print(report.headline())
        >>> for finding in report.findings:
        ...     print(finding.code, finding.message, finding.remedy, sep="\\n  ")
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be a positive number of seconds")
    environ = os.environ if environ is None else environ
    configured = configured_backend(environ, in_process)
    if probes is not None:
        checked, mode = list(probes), "injected"
        if not checked:
            raise ValueError("probes={} names no backend; give at least one, e.g. "
                             "{'tensorflow': ProbeResult(...)}")
    else:
        checked = backends_to_check(backend, configured)
        mode = "in_process" if in_process else "child"
    session, owned = _session(nvml)
    try:
        if probes is None:
            probes = _read(checked, in_process, timeout_s, environ)
        distributions = installed_distributions()
        durations = [p.duration_s for p in probes.values() if p.duration_s is not None]
        facts: Facts = {
            "doctor": {"mode": mode, "pid": os.getpid(), "backend": checked[0],
                       "probe_s": round(max(durations), 3) if durations else None},
            "keras": {"version": distributions.get("keras"), "backend": configured.name,
                      "backend_source": configured.source},
            "frameworks": {b: _framework_record(b, probes[b]) for b in checked},
            "distributions": distributions,
            "cuda_wheels": cuda_wheel_status(and_cuda_requirements(), distributions),
            "nvml": nvml_facts(session),
            "env": env_facts(environ),
            "platform": platform_facts(),
        }
    finally:
        if owned:
            session.shutdown()
    return DoctorReport(facts, diagnose(facts))


def during_training(nvml: NVML, known: Mapping[str, Any] | None) -> DoctorReport:
    """The doctor run inside a training process, on the backend Keras already imported.

    Args:
        nvml: The training's NVML session.
        known: The facts an earlier run of this in the same process gathered, or None for the
            first one. What cannot change while a process runs (the installed distributions,
            the framework's build and devices) is taken from them; the environment variables
            and what NVML says about each GPU (memory, processes) are read again.

    Returns:
        A :class:`DoctorReport`; its ``facts`` are what a later call takes as ``known``.
    """
    if known is None:
        return doctor(nvml=nvml, in_process=True)
    facts = {**known, "nvml": nvml_facts(nvml), "env": env_facts(os.environ)}
    return DoctorReport(facts, diagnose(facts))


def _read(checked: list[str], in_process: bool, timeout_s: float,
          environ: Mapping[str, str]) -> dict[str, ProbeResult]:
    """Each checked backend's facts; Keras backends the doctor has no reader for (numpy,
    openvino) are recorded as they are: installed or not, with no GPU."""
    readable = [b for b in checked if b in READERS]
    if in_process:
        found = {b: in_process_probe(b) for b in readable}
    else:
        found = run_probes(readable, timeout_s, environ)
    return {b: found.get(b) or ProbeResult({"name": b, "installed": is_installed(b),
                                            "gpus": []}, mode="none")
            for b in checked}


def _framework_record(backend: str, probe: ProbeResult) -> dict[str, Any]:
    record = dict(probe.framework) if probe.framework is not None else {"name": backend}
    reader = READERS.get(backend)
    record["messages"] = reader.parse_messages(probe.stderr, probe.framework) if reader else []
    record["probe"] = {
        "mode": probe.mode,
        "probe_s": None if probe.duration_s is None else round(probe.duration_s, 3),
        "error": probe.error,
        "note": probe.note,
    }
    if probe.error:
        record["probe"]["stderr_tail"] = probe.stderr.splitlines()[-STDERR_TAIL_LINES:]
    return record


def _session(nvml: Any) -> tuple[NVML, bool]:
    if isinstance(nvml, NVML):
        return nvml, False
    return NVML(nvml), True


def run_doctor_command(as_json: bool, timeout_s: float, out: TextIO,
                       backend: str | None = None) -> int:
    """`gpu-watch doctor`: print the report (text, or JSON with `as_json`), return the exit code.

    Args:
        as_json: Print JSON instead of text.
        timeout_s: Seconds each framework probe may take.
        out: Where to print.
        backend: None for the backend Keras will use, a backend name, or ``"all"``.

    Returns:
        0 the backend that decides can use a GPU, 1 it cannot, 2 the doctor could not tell.
    """
    try:
        report = doctor(backend=backend, timeout_s=timeout_s)
    except UnknownBackendError as exc:
        if as_json:
            out.write(json.dumps({"gpu_usable": False, "exit_code": EXIT_ERROR,
                                  "error": str(exc)}, indent=2) + "\n")
        else:
            out.write(f"gpu-watch doctor: {exc}\n")
        return EXIT_ERROR
    except Exception as exc:  # exit code 2 is the contract for "could not run"
        error = f"{type(exc).__name__}: {exc}"
        if as_json:
            out.write(json.dumps({"gpu_usable": False, "exit_code": EXIT_ERROR,
                                  "error": error}, indent=2) + "\n")
        else:
            out.write(f"gpu-watch doctor could not run: {error} (exit {EXIT_ERROR})\n")
        return EXIT_ERROR
    if as_json:
        out.write(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    else:
        out.write(report.render_text())
    return report.exit_code
