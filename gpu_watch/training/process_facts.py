"""What a training process gathers once, for every `fit` it runs.

A script that calls `fit` many times (one epoch at a time, tuners, GAN and RL loops) must not
pay for facts that cannot change while the process runs: the installed distributions, the
framework's build and devices, NVML's device list. What can change between fits is read again
every time: CUDA_VISIBLE_DEVICES and the rest of the environment variables, the memory and
processes on each GPU, the rank.
"""

from __future__ import annotations

import threading
from typing import Any

from gpu_watch.sensing.nvml import NVML
from gpu_watch.training.placement import Probe


class ProcessFacts:
    """What the first `fit` in a process gathered: its NVML session, the framework's facts per
    probe class, the doctor's facts per backend."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        """Forget them all, as in a new process."""
        self._nvml: NVML | None = None
        self._framework: dict[type, dict[str, Any]] = {}
        self._environment: dict[str, dict[str, Any]] = {}

    def nvml(self) -> NVML:
        """This process's session with the real NVML, opened once (its device list with it)."""
        with self._lock:
            if self._nvml is None:
                self._nvml = NVML()
            return self._nvml

    def framework(self, probe: Probe, keras_version: str) -> dict[str, Any]:
        """The framework's name, version, GPUs and build (`run.json`'s "framework"), read once
        per process and probe class."""
        facts = self._framework.get(type(probe))
        if facts is None:
            facts = self._framework[type(probe)] = {
                "name": probe.backend,
                "version": probe.framework_version(),
                "keras_version": keras_version,
                "gpus": probe.framework_gpus(),
                "cuda_build": probe.cuda_build(),
            }
        return dict(facts)

    def environment(self, nvml: NVML, backend: str) -> dict[str, Any]:
        """The doctor's report on this process (`run.json`'s "environment"), run in-process on
        `backend` (`doctor.during_training`); the first call per backend gathers what later
        ones reuse. A doctor that fails yields its error and no findings."""
        # Imported here: the doctor's modules are needed only once a fit begins.
        from gpu_watch.doctor import during_training

        try:
            report = during_training(nvml, self._environment.get(backend))
        except Exception as exc:  # the environment check must not keep training from starting
            return {"error": f"{type(exc).__name__}: {exc}", "findings": []}
        self._environment.setdefault(backend, report.facts)
        return report.to_dict()


PROCESS_FACTS = ProcessFacts()
