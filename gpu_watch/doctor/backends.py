"""Which Keras backend will train, how that is known, and which backends a run checks.

Keras 3 picks its backend once per process: ``KERAS_BACKEND`` when set and not empty, else the
``backend`` in ``keras.json`` (under ``KERAS_HOME``, else ``~/.keras``, else ``/tmp/.keras``
when the home folder is not writable), else TensorFlow. The doctor follows the same order, so
it diagnoses the framework the training would use, without importing Keras (which would import
that framework).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

BACKENDS = ("tensorflow", "jax", "torch")
ALL = "all"
CHOICES = (*BACKENDS, ALL)
KERAS_DEFAULT = "tensorflow"

# How each backend is named for people.
TITLES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "torch"}
# Keras backends that never train on an NVIDIA GPU, so the doctor has nothing to check.
CPU_BACKENDS = ("numpy", "openvino")


class UnknownBackendError(ValueError):
    """The configured Keras backend is not one the doctor checks. One line for users."""


@dataclass(frozen=True)
class BackendChoice:
    """The Keras backend and how it was found.

    Attributes:
        name: The backend, e.g. ``"jax"`` (Keras also knows ``"numpy"`` and ``"openvino"``).
        source: How it was found: ``"KERAS_BACKEND"``, the ``keras.json`` path, ``"Keras'
            default"``, ``"the running Keras"`` or ``"--backend"``.
    """

    name: str
    source: str

    def to_dict(self) -> dict[str, str]:
        """The JSON-ready record."""
        return {"name": self.name, "source": self.source}


def configured_backend(environ: Mapping[str, str], in_process: bool = False) -> BackendChoice:
    """The backend Keras will use (or, in a process that trains, uses).

    Args:
        environ: The environment to read ``KERAS_BACKEND`` and ``KERAS_HOME`` from.
        in_process: Ask the Keras already imported in this process first.
    """
    keras = sys.modules.get("keras") if in_process else None
    config = getattr(keras, "config", None)
    if config is not None and hasattr(config, "backend"):
        return BackendChoice(config.backend(), "the running Keras")
    name = environ.get("KERAS_BACKEND")
    if name:
        return BackendChoice(name, "KERAS_BACKEND")
    path = keras_config_path(environ)
    try:
        with open(path, encoding="utf-8") as f:
            name = json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):
        name = None
    if isinstance(name, str) and name:
        return BackendChoice(name, path)
    return BackendChoice(KERAS_DEFAULT, "Keras' default")


def keras_config_path(environ: Mapping[str, str]) -> str:
    """Where Keras reads ``keras.json`` from, in the order Keras itself uses."""
    home = environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return os.path.join(os.path.expanduser(home), "keras.json")


def backends_to_check(requested: str | None, configured: BackendChoice) -> list[str]:
    """The backends one doctor run diagnoses, the one that decides the exit code first.

    Args:
        requested: None (the configured backend), a name from :data:`BACKENDS`, or ``"all"``
            (the configured backend, then every other one that is installed).
        configured: The backend Keras will use.

    Raises:
        ValueError: `requested` is not None, a backend, or ``"all"``.
    """
    if requested != ALL and requested not in BACKENDS:
        _check_known(configured)
    if requested is None:
        return [configured.name]
    if requested in BACKENDS:
        return [requested]
    if requested == ALL:
        _check_known(configured)
        first = [configured.name]
        return first + [b for b in BACKENDS if b != configured.name and is_installed(b)]
    raise ValueError(f"backend={requested!r} is not one the doctor checks; use one of "
                     f"{', '.join(CHOICES)}, or None for the backend Keras will use")


def _check_known(configured: BackendChoice) -> None:
    """Raise `UnknownBackendError` for a name Keras does not know (its CPU-only backends are
    known: the doctor says they never use a GPU)."""
    if configured.name in BACKENDS or configured.name in CPU_BACKENDS:
        return
    where = (f"KERAS_BACKEND={configured.name!r}" if configured.source == "KERAS_BACKEND"
             else f"backend {configured.name!r} (from {configured.source})")
    known = ", ".join(BACKENDS)
    raise UnknownBackendError(
        f"{where} is not a Keras backend: set KERAS_BACKEND to one of {known} (or unset it "
        f"for Keras' default, {KERAS_DEFAULT})")


def is_installed(module: str) -> bool:
    """Whether `module` can be found on the path, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module set to None
        return False


def install_extra(backend: str) -> str:
    """The command that installs gpu-watch's extra for `backend`: its framework as PyPI serves it.

    >>> install_extra("jax")
    'pip install "gpu-watch[jax]"'
    """
    return f'pip install "gpu-watch[{backend}]"'


def missing_framework_message(module: str, environ: Mapping[str, str]) -> str:
    """What to say when importing Keras fails because `module`, a backend's framework, is
    missing: which backend Keras was set to and how, and the extra that installs it."""
    configured = configured_backend(environ)
    how = (f"Keras is set to use the {module} backend "
           f"({source_text(configured.name, configured.source)}), but "
           if configured.name == module else "Keras needs ")
    others = [b for b in BACKENDS if b != module and is_installed(b)]
    instead = (f", or train with an installed backend: export KERAS_BACKEND={others[0]}"
               if others else "")
    return f"{how}{title(module)} is not installed: {install_extra(module)}{instead}."


def source_text(backend: str, source: str | None) -> str:
    """How the backend was chosen, for a sentence: "KERAS_BACKEND=jax", "in <path>", "Keras'
    default"."""
    if source == "KERAS_BACKEND":
        return f"KERAS_BACKEND={backend}"
    if source and source.endswith("keras.json"):
        return f"in {source}"
    return source or "Keras' default"


def title(backend: str) -> str:
    """The backend's name for people ("TensorFlow", "JAX", "torch")."""
    return TITLES.get(backend, backend)
