"""The rules every backend shares: the backend itself, the driver, NVML, which GPUs are visible,
and memory held by other processes; and the helpers the backends' rules use.

A rule is a pure function from the facts (see :mod:`gpu_watch.doctor`) to a list of
:class:`~gpu_watch.judging.causes.Cause` findings: no I/O, so each one is tested from facts alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packaging.version import InvalidVersion, Version

from gpu_watch.doctor.backends import BACKENDS, install_extra, source_text, title
from gpu_watch.judging.causes import ERROR, WARNING, Cause, cause
from gpu_watch.sensing.nvml import parse_visible_devices

Facts = dict[str, Any]

# Other processes holding at least this share of a GPU's memory leave a framework (TensorFlow
# and JAX reserve most of the free memory at start-up by default) too little for all but small
# models.
CONTENTION_SHARE_PCT = 50.0
# A configured memory limit under this share of the GPU's memory wastes most of the GPU.
MEMORY_LIMIT_SHARE_PCT = 50.0

# NVML init errors that mean the driver is absent or unusable (rather than, say, a permission).
DRIVER_ERRORS = (
    "NVMLError_LibraryNotFound",
    "NVMLError_DriverNotLoaded",
    "NVMLError_LibRmVersionMismatch",
)

# Each backend's CUDA build (the remedies of backend_not_installed on a machine with a GPU).
_INSTALL = {
    "tensorflow": 'pip install "tensorflow[and-cuda]"',
    "jax": 'pip install -U "jax[{cuda}]"',
    "torch": "pip install torch --index-url https://download.pytorch.org/whl/{cu}",
}
# Keras backends that never use an NVIDIA GPU.
_CPU_ONLY_BACKENDS = ("numpy", "openvino")


def framework(facts: Facts, backend: str) -> dict[str, Any]:
    """The facts of `backend`, empty when it was not checked."""
    return (facts.get("frameworks") or {}).get(backend) or {}


def checked(facts: Facts) -> list[str]:
    """The backends this run diagnosed."""
    return list(facts.get("frameworks") or {})


def check_backend_not_installed(facts: Facts) -> list[Cause]:
    """`backend_not_installed`: a checked backend's framework cannot be imported."""
    causes = []
    keras = facts.get("keras") or {}
    for backend in checked(facts):
        fw = framework(facts, backend)
        if fw.get("installed") is not False:
            continue
        error = fw.get("import_error") or "not installed"
        missing = "No module named" in error
        configured = (f"Keras is set to use the {backend} backend ("
                      f"{_source_text(keras)}), but " if keras.get("backend") == backend else "")
        what = "is not installed" if missing else "fails to import"
        name = title(backend)
        remedy = install_remedy(backend, facts, reinstall=not missing)
        others = [b for b in BACKENDS if b != backend and b in facts["distributions"]]
        if configured and others:
            remedy += f"  # or train with an installed backend: export KERAS_BACKEND={others[0]}"
        causes.append(cause(
            "backend_not_installed",
            f"{configured}{name} {what}: {error}.",
            remedy,
            backend=backend, import_error=error, installed_backends=others,
        ))
    return causes


def check_cpu_only_keras_backend(facts: Facts) -> list[Cause]:
    """`cpu_only_build`: the Keras backend is one that never trains on an NVIDIA GPU."""
    keras = facts.get("keras") or {}
    backend = keras.get("backend")
    if backend not in _CPU_ONLY_BACKENDS or facts["doctor"].get("backend") != backend:
        return []
    return [cause(
        "cpu_only_build",
        f"Keras' {backend} backend ({_source_text(keras)}) runs on the CPU only.",
        "export KERAS_BACKEND=jax  # or torch, or tensorflow: the backends that use a GPU",
        backend=backend,
    )]


def check_no_nvidia_driver(facts: Facts) -> list[Cause]:
    """`no_nvidia_driver`: NVML finds no driver, or a framework cannot load the driver."""
    evidence = driver_missing_evidence(facts)
    if not evidence:
        return []
    nvml_error = facts["nvml"]["error"]
    if nvml_error and nvml_error.startswith("NVMLError_LibRmVersionMismatch"):
        return [cause(
            "no_nvidia_driver",
            f"The NVIDIA driver's kernel module and libraries have different versions "
            f"({nvml_error}), as after a driver update without a reboot.",
            "sudo reboot  # loads the kernel module that matches the updated libraries",
            **evidence,
        )]
    said = []
    if "nvml_error" in evidence:
        said.append(f"NVML reports {nvml_error}")
    if "tensorflow_driver_library" in evidence:
        said.append(f"TensorFlow could not load {evidence['tensorflow_driver_library']} "
                    "(the driver's CUDA library)")
    if "tensorflow_message" in evidence:
        said.append(f"TensorFlow says: {evidence['tensorflow_message']}")
    if "torch_message" in evidence:
        said.append(f"torch says: {evidence['torch_message']}")
    return [cause(
        "no_nvidia_driver",
        "No NVIDIA driver is loaded, so no GPU can be used: " + "; ".join(said) + ".",
        driver_remedy(facts["platform"]),
        **evidence,
    )]


def check_nvml_unavailable(facts: Facts) -> list[Cause]:
    """`nvml_unavailable`: NVML fails for a reason other than a missing driver."""
    nvml = facts["nvml"]
    if nvml["available"] or driver_missing_evidence(facts):
        return []
    return [cause(
        "nvml_unavailable",
        f"NVML cannot be read ({nvml['error']}): a framework may still use the GPU, but "
        "GPUWatch cannot measure it (its verdict would be `unmonitored`).",
        nvml_error=nvml["error"],
    )]


def check_gpus_hidden(facts: Facts) -> list[Cause]:
    """`gpus_hidden`: ``CUDA_VISIBLE_DEVICES`` hides GPUs that NVML sees.

    An empty value or ``-1`` hides all GPUs. An entry that matches no GPU makes CUDA ignore it
    and every entry after it: an error when that leaves none, a warning when it leaves some.
    """
    nvml_gpus = facts["nvml"]["gpus"]
    value = facts["env"].get("CUDA_VISIBLE_DEVICES")
    if not nvml_gpus or value is None:
        return []
    seen = ", ".join(f"{g['index']}: {g['name']}" for g in nvml_gpus)
    evidence = {"nvml_gpus": [{"index": g["index"], "uuid": g["uuid"], "name": g["name"]}
                              for g in nvml_gpus]}
    visible, invalid = resolve_visible_gpus(nvml_gpus, value)
    indices = ",".join(str(g["index"]) for g in nvml_gpus)
    if visible == []:
        why = "hides every GPU" if invalid is None else \
            f"names {invalid!r} first, which matches no GPU, so it hides every GPU"
        return [cause(
            "gpus_hidden",
            f"CUDA_VISIBLE_DEVICES={value!r} {why}, while NVML sees {len(nvml_gpus)} ({seen}).",
            f"unset CUDA_VISIBLE_DEVICES  # or choose GPUs: export CUDA_VISIBLE_DEVICES={indices}",
            cuda_visible_devices=value, **evidence,
        )]
    if invalid is not None:
        kept = ", ".join(str(g["index"]) for g in visible)
        return [cause(
            "gpus_hidden",
            f"CUDA_VISIBLE_DEVICES={value!r} names {invalid!r}, which matches no GPU: CUDA "
            f"ignores it and every entry after it, so only GPU {kept} of the "
            f"{len(nvml_gpus)} NVML sees ({seen}) is visible.",
            f"export CUDA_VISIBLE_DEVICES={indices}  # indices or UUIDs from `nvidia-smi -L`",
            severity=WARNING,
            cuda_visible_devices=value, invalid_entry=invalid,
            visible_nvml_indices=[g["index"] for g in visible], **evidence,
        )]
    return []


def check_gpu_memory_contention(facts: Facts) -> list[Cause]:
    """`gpu_memory_contention`: other processes hold at least :data:`CONTENTION_SHARE_PCT` % of
    a visible GPU's memory.

    Memory is counted per process where NVML says how much each holds. Where it cannot (some
    Windows driver modes), the device's used memory counts instead, unless the diagnosed process
    itself is on that GPU.
    """
    nvml_gpus = facts["nvml"]["gpus"]
    pid = facts["doctor"]["pid"]
    causes = []
    for gpu in visible_gpus(facts):
        total = gpu["mem_total_mib"]
        held_mib = held_by_others_mib(gpu, pid)
        if not total or held_mib is None:
            continue
        share_pct = 100.0 * held_mib / total
        if share_pct < CONTENTION_SHARE_PCT:
            continue
        ranked = other_processes(gpu, pid)
        listed = ", ".join(f"PID {p['pid']} ({mib_text(p['used_mib'])})" for p in ranked)
        causes.append(cause(
            "gpu_memory_contention",
            f"Other processes hold {held_mib:.0f} of GPU {gpu['index']}'s {total:.0f} MiB "
            f"({share_pct:.1f} %)" + (f": {listed}." if listed else "."),
            contention_remedy(nvml_gpus, gpu, pid) + ".",
            gpu=gpu["index"], uuid=gpu["uuid"], name=gpu["name"], mem_total_mib=total,
            held_by_others_mib=round(held_mib, 1), share_pct=round(share_pct, 1),
            threshold_pct=CONTENTION_SHARE_PCT,
            processes=[{"pid": p["pid"], "used_mib": p["used_mib"]} for p in ranked],
        ))
    return causes


def check_no_gpu_unexplained(facts: Facts, findings: list[Cause]) -> list[Cause]:
    """`cuda_init_failed`: a backend that was read sees no GPU, and no error finding says why.

    The last rule: it keeps "no usable GPU" from ever standing without a reason. Its evidence
    is what the framework and NVML said.
    """
    causes = []
    for backend in checked(facts):
        fw = framework(facts, backend)
        if backend not in BACKENDS or not fw.get("installed") or fw.get("gpus"):
            continue
        if any(f.severity == ERROR and f.evidence.get("backend") in (None, backend)
               for f in findings):
            continue
        nvml = facts["nvml"]
        said = [m["text"] for m in fw.get("messages") or []]
        sees = (f"NVML sees {len(nvml['gpus'])} GPU(s)" if nvml["available"] else
                f"NVML cannot be read ({nvml['error']})")
        reason = f"; {title(backend)} said: {said[0]}" if said else \
            f"; {title(backend)} gave no reason"
        causes.append(cause(
            "cuda_init_failed",
            f"{title(backend)} {fw.get('version')} sees no GPU, and none of the checks explains "
            f"it: {sees}{reason}.",
            backend=backend, messages=said, nvml_error=nvml["error"],
            nvml_gpus=len(nvml["gpus"]),
        ))
    return causes


# -- helpers for the backends' rules -----------------------------------------------------------


def driver_older_than_build(facts: Facts, built: str, build_cuda: str | None, said: list[str],
                            alternative: str, minor_matters: bool = True) -> list[Cause]:
    """`driver_too_old`: the driver's CUDA version is older than the one a build needs.

    An older major version cannot run the build at all (error). An older minor version usually
    runs through CUDA's minor-version compatibility; where `minor_matters` (XLA compiles to PTX,
    which a driver older than the toolkit may refuse), a warning. A framework message that says
    the driver is insufficient is an error whatever the versions say.

    Args:
        facts: The facts.
        built: What was built, for the message ("TensorFlow 2.21.0").
        build_cuda: The CUDA version the build was made with ("12.5.1"), or None.
        said: The framework's own messages about the driver.
        alternative: The other remedy, after the driver upgrade ("; or ...").
        minor_matters: Flag an older minor version too.
    """
    driver_cuda = facts["nvml"]["cuda_driver_version"]
    build, driver = major_minor(build_cuda), major_minor(driver_cuda)
    if build is None or driver is None or driver >= build or (
            driver[0] == build[0] and not minor_matters):
        if not said:
            return []
        severity, why = ERROR, f"it says: {said[0]}"
    elif driver[0] < build[0]:
        severity, why = ERROR, "a different major version, so the build cannot run"
    else:
        severity, why = WARNING, (
            "CUDA's minor-version compatibility usually lets it run, but PTX compiled by the "
            "newer toolkit (XLA) can fail with \"the provided PTX was compiled with an "
            "unsupported toolchain\"")
    driver_text = (f"The NVIDIA driver {facts['nvml']['driver_version']} (CUDA {driver_cuda})"
                   if driver_cuda else "The NVIDIA driver")
    target = ".".join(map(str, build)) if build else build_cuda
    against = f"the CUDA {build_cuda} that {built} was built with" if build_cuda else \
        f"what {built} needs"
    until = (f" until `nvidia-smi` shows \"CUDA Version: {target}\" or higher" if target else
             " to the newest release for your GPU")
    return [cause(
        "driver_too_old",
        f"{driver_text} is older than {against}: {why}.",
        f"Upgrade the NVIDIA driver{until} (Ubuntu: `sudo ubuntu-drivers install`, then "
        f"reboot){alternative}.",
        severity=severity,
        driver_version=facts["nvml"]["driver_version"],
        driver_cuda_version=driver_cuda,
        build_cuda_version=build_cuda,
        messages=said,
    )]



def visible_gpus(facts: Facts) -> list[dict[str, Any]]:
    """The NVML GPUs that ``CUDA_VISIBLE_DEVICES`` leaves visible (all of them for MIG values,
    which the facts cannot resolve to a GPU)."""
    nvml_gpus = facts["nvml"]["gpus"]
    visible, _ = resolve_visible_gpus(nvml_gpus, facts["env"].get("CUDA_VISIBLE_DEVICES"))
    return nvml_gpus if visible is None else visible


def resolve_visible_gpus(nvml_gpus: list[dict[str, Any]], value: str | None
                         ) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The GPUs a ``CUDA_VISIBLE_DEVICES`` value leaves visible, in CUDA's order.

    Args:
        nvml_gpus: The GPUs NVML sees (``facts["nvml"]["gpus"]``).
        value: The variable's value; None when unset (every GPU is visible).

    Returns:
        ``(visible, invalid)``: the visible GPUs (None when the value names MIG instances, which
        the facts cannot resolve) and the first entry that matches no GPU (None if all match).
    """
    if value is None:
        return list(nvml_gpus), None
    visible: list[dict[str, Any]] = []
    for token in parse_visible_devices(value):
        if token.upper().startswith("MIG-"):
            return None, None
        match = _match_gpu(token, nvml_gpus)
        if match is None or any(g["uuid"] == match["uuid"] for g in visible):
            return visible, token  # CUDA ignores this entry and everything after it
        visible.append(match)
    return visible, None


def held_by_others_mib(gpu: Mapping[str, Any], pid: int) -> float | None:
    """MiB of `gpu` held by processes other than `pid`; None when NVML cannot tell."""
    procs = gpu["processes"]
    others = [p for p in procs or [] if p["pid"] != pid]
    if procs is not None and all(p["used_mib"] is not None for p in others):
        return float(sum(p["used_mib"] for p in others))
    if gpu["mem_used_mib"] is not None and not any(p["pid"] == pid for p in procs or []):
        return float(gpu["mem_used_mib"])
    return None


def other_processes(gpu: Mapping[str, Any], pid: int) -> list[dict[str, Any]]:
    """The other processes on `gpu`, the largest first."""
    others = [p for p in gpu["processes"] or [] if p["pid"] != pid]
    return sorted(others, key=lambda p: -(p["used_mib"] or 0))


def contention_remedy(nvml_gpus: list[dict[str, Any]], busy: Mapping[str, Any], pid: int) -> str:
    """Stop the processes on `busy`, or move to the GPU with the most free memory."""
    pids = " ".join(str(p["pid"]) for p in other_processes(busy, pid))
    remedy = (f"Check `nvidia-smi`, then stop them (`kill {pids}`)" if pids else
              "Stop what holds the memory (`nvidia-smi` lists it)")
    freer = _freest_other_gpu(nvml_gpus, busy)
    if freer is not None:
        remedy += (f", or use GPU {freer['index']} ({mib_text(freer['free_mib'])} free): "
                   f"export CUDA_VISIBLE_DEVICES={freer['uuid']}")
    return remedy


def driver_missing_evidence(facts: Facts) -> dict[str, Any]:
    """What says the driver is missing: NVML's init error, the frameworks' messages. Empty if
    nothing does."""
    nvml = facts["nvml"]
    if nvml["available"]:
        return {}
    evidence: dict[str, Any] = {}
    if nvml["error"] and nvml["error"].startswith(DRIVER_ERRORS):
        evidence["nvml_error"] = nvml["error"]
    for message in framework(facts, "tensorflow").get("messages") or []:
        if message["kind"] == "driver_dlopen_failed":
            evidence.setdefault("tensorflow_driver_library", message["library"])
        elif message["kind"] == "kernel_driver_not_running":
            evidence.setdefault("tensorflow_message", message["text"])
    for message in framework(facts, "torch").get("messages") or []:
        if message["kind"] == "no_driver":
            evidence.setdefault("torch_message", message["text"])
    return evidence


def driver_remedy(plat: Mapping[str, Any]) -> str:
    """How to install the NVIDIA driver on this platform."""
    if plat["wsl"]:
        return ("Install the NVIDIA driver for Windows on the Windows host (not inside WSL2); "
                "WSL2 then provides it under /usr/lib/wsl/lib. Check with `nvidia-smi` in WSL2.")
    if plat["system"] == "Windows":
        return ("Install the NVIDIA driver for your GPU from https://www.nvidia.com/drivers and "
                "check that `nvidia-smi` lists the GPU.")
    if plat["system"] == "Darwin":
        return "macOS has no NVIDIA CUDA driver: train on Linux or WSL2 with an NVIDIA GPU."
    native = ("install the NVIDIA driver (Ubuntu: `sudo ubuntu-drivers install`, then reboot) "
              "and check that `nvidia-smi` lists the GPU; on a cloud VM, choose a GPU instance.")
    if plat["container"]:
        return ("This is a container: start it with the GPUs, `docker run --gpus all ...` (needs "
                "the NVIDIA Container Toolkit on the host); if the host has no driver either, "
                + native)
    return native[0].upper() + native[1:]


def install_remedy(backend: str, facts: Facts, reinstall: bool = False) -> str:
    """The command that installs `backend`: gpu-watch's extra for it, after the framework's CUDA
    build for this machine's driver where NVML sees a GPU; a reinstall of that build when the
    framework is there but fails to import."""
    driver = major_minor(facts["nvml"]["cuda_driver_version"])
    command = _INSTALL[backend].format(cuda=jax_cuda_extra(driver),
                                       cu=torch_cuda_index(driver))
    if reinstall:
        return command.replace("pip install", "pip install --force-reinstall", 1)
    if not facts["nvml"]["gpus"]:
        return install_extra(backend)
    # The CUDA build first: installed after the extra, torch from its own index would find
    # PyPI's build already there and change nothing.
    return f"{command} && {install_extra(backend)}"


def jax_cuda_extra(driver: tuple[int, int] | None) -> str:
    """The ``jax[...]`` extra for a driver's CUDA version: cuda13 from a CUDA 13 driver on,
    else cuda12 (which runs on both)."""
    return "cuda13" if driver is not None and driver >= (13, 0) else "cuda12"


def torch_cuda_index(driver: tuple[int, int] | None) -> str:
    """The PyTorch wheel index (``cu126``, ...) whose CUDA a driver's CUDA version can run.

    The newest index at or below the driver's CUDA; a CUDA 12 driver older than 12.6 still runs
    cu126 wheels through CUDA's minor-version compatibility. Without a driver: cu126.
    """
    if driver is None:
        return "cu126"
    if driver >= (13, 0):
        return "cu130"
    if driver >= (12, 8):
        return "cu128"
    if driver >= (12, 0):
        return "cu126"
    return "cu118"


def major_minor(version: str | None) -> tuple[int, int] | None:
    """"12.4" -> (12, 4); "2.21.0" -> (2, 21); None when unreadable."""
    if not version:
        return None
    try:
        release = Version(version).release
    except InvalidVersion:
        return None
    return (release[0], release[1] if len(release) > 1 else 0)


def base_version(version: str | None) -> str | None:
    """A version without its local part: "2.13.0+cpu" -> "2.13.0"."""
    return version.split("+", 1)[0] if version else version


def mib_text(mib: float | None) -> str:
    """MiB for people; "n/a" when not measured."""
    return "n/a" if mib is None else f"{mib:.0f} MiB"


def shorten(names: list[str], shown: int = 4) -> str:
    """The first `shown` names and how many more."""
    if len(names) <= shown:
        return ", ".join(names)
    return ", ".join(names[:shown]) + f" and {len(names) - shown} more"


def _source_text(keras: Mapping[str, Any]) -> str:
    return source_text(keras.get("backend"), keras.get("backend_source"))


def _match_gpu(token: str, gpus: list[dict[str, Any]]) -> dict[str, Any] | None:
    if token.isdigit():
        index = int(token)
        return gpus[index] if index < len(gpus) else None
    wanted = token.upper() if token.upper().startswith("GPU-") else "GPU-" + token.upper()
    candidates = [g for g in gpus if g["uuid"].upper().startswith(wanted)]
    return candidates[0] if len(candidates) == 1 else None


def _freest_other_gpu(gpus: list[dict[str, Any]], busy: Mapping[str, Any]
                      ) -> dict[str, Any] | None:
    best = None
    for gpu in gpus:
        if gpu is busy or gpu["mem_total_mib"] is None or gpu["mem_used_mib"] is None:
            continue
        free_mib = gpu["mem_total_mib"] - gpu["mem_used_mib"]
        if 100.0 * gpu["mem_used_mib"] / gpu["mem_total_mib"] >= CONTENTION_SHARE_PCT:
            continue
        if best is None or free_mib > best["free_mib"]:
            best = {"index": gpu["index"], "uuid": gpu["uuid"], "free_mib": free_mib}
    return best
