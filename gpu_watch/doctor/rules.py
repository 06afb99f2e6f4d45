"""Diagnosis: every rule, run over the facts, in one list of findings, errors first.

The rules shared by all backends (:mod:`rules_common`) always run; a backend's own rules
(:mod:`rules_tensorflow`, :mod:`rules_jax`, :mod:`rules_torch`) run when that backend was
checked, and their findings carry ``evidence["backend"]``. The last rule,
:func:`~gpu_watch.doctor.rules_common.check_no_gpu_unexplained`, runs over the findings of the
others, so a backend that sees no GPU always has an error finding that says why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from gpu_watch.doctor import rules_common, rules_jax, rules_tensorflow, rules_torch
from gpu_watch.doctor.rules_common import Facts, checked
from gpu_watch.judging.causes import ERROR, INFO, WARNING, Cause

Rule = Callable[[Facts], list[Cause]]

COMMON_RULES: tuple[Rule, ...] = (
    rules_common.check_backend_not_installed,
    rules_common.check_cpu_only_keras_backend,
    rules_common.check_no_nvidia_driver,
    rules_common.check_nvml_unavailable,
    rules_common.check_gpus_hidden,
    rules_common.check_gpu_memory_contention,
)

BACKEND_RULES: dict[str, tuple[Rule, ...]] = {
    "tensorflow": rules_tensorflow.RULES,
    "jax": rules_jax.RULES,
    "torch": rules_torch.RULES,
}

_SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}


def diagnose(facts: Facts) -> list[Cause]:
    """Every finding the rules make from `facts`, errors first. Pure: no I/O."""
    findings = [found for rule in COMMON_RULES for found in rule(facts)]
    for backend in checked(facts):
        findings += [for_backend(found, backend) for rule in BACKEND_RULES.get(backend, ())
                     for found in rule(facts)]
    findings += rules_common.check_no_gpu_unexplained(facts, findings)
    return sorted(findings, key=lambda c: _SEVERITY_ORDER.get(c.severity, len(_SEVERITY_ORDER)))


def for_backend(found: Cause, backend: str) -> Cause:
    """`found`, with the backend it is about as the first item of its evidence."""
    return dataclasses.replace(found, evidence={"backend": backend, **found.evidence})
