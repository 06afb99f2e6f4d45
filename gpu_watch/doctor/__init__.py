"""`gpu-watch doctor`: why TensorFlow would not use the GPU, each reason with a remedy.

Three steps, kept apart so that each can be tested on its own:

1. Gather the facts (:func:`doctor`): the framework, read in a child process that imports
   TensorFlow with its logging turned up (so a broken driver can neither hang nor crash the
   doctor, and TensorFlow's GPU start-up messages can be read), or read from the live process
   during training; the installed distributions; NVML; environment variables; the platform.
2. Diagnose (:func:`diagnose`): pure rules from facts to :class:`~gpu_watch.causes.Cause`
   findings, one small function per check, no I/O.
3. Report (:class:`DoctorReport`): text or JSON, and an exit code a job script can gate on.

The facts are a JSON-ready dict, the same one ``--json`` prints and GPUWatch writes to
``run.json``. Its keys:

- ``doctor``: ``mode`` ("child", "in_process" or "injected"), ``pid`` (the diagnosed process),
  ``probe_s`` (seconds the probe took), ``probe_error`` (why the framework could not be read).
- ``framework``: None when it could not be read; else ``name``, ``installed``, ``version``,
  ``built_with_cuda``, ``build_info`` (``tf.sysconfig.get_build_info()``), ``gpus`` (physical GPU
  devices: ``name``, ``device_name``, ``compute_capability``), ``import_error``; in-process also
  ``logical_gpus`` and ``memory`` (per physical GPU: ``memory_limit_mib``, ``virtual_devices``,
  ``memory_growth``).
- ``framework_messages``: TensorFlow's GPU start-up messages, parsed (see
  :func:`parse_tensorflow_messages`).
- ``keras``: ``version``, ``backend``.
- ``distributions``: name -> version for TensorFlow, Keras and ``nvidia-*`` distributions.
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

import importlib.metadata
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from gpu_watch.causes import CATALOGUE, ERROR, INFO, WARNING, Cause, cause
from gpu_watch.nvml import MIB, NVML, parse_visible_devices

Facts = dict[str, Any]

# Other processes holding at least this share of a GPU's memory leave TensorFlow (which by
# default reserves most of the free memory at start-up) too little for all but small models.
CONTENTION_SHARE_PCT = 50.0
# A configured memory limit under this share of the GPU's memory wastes most of the GPU.
MEMORY_LIMIT_SHARE_PCT = 50.0

ENV_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "NVIDIA_VISIBLE_DEVICES",
    "TF_FORCE_GPU_ALLOW_GROWTH",
    "TF_GPU_ALLOCATOR",
    "TF_CPP_MIN_LOG_LEVEL",
    "KERAS_BACKEND",
    "LD_LIBRARY_PATH",
    "CUDA_HOME",
    "XLA_FLAGS",
)

EXIT_OK = 0
EXIT_NO_GPU = 1
EXIT_ERROR = 2

_PROBE_MARKER = "GPU_WATCH_PROBE "
_KILL_GRACE_S = 2.0  # after a timeout, how long to wait for the killed child to be reaped
_STDERR_TAIL_LINES = 20

# NVML init errors that mean the driver is absent or unusable (rather than, say, a permission).
_DRIVER_ERRORS = (
    "NVMLError_LibraryNotFound",
    "NVMLError_DriverNotLoaded",
    "NVMLError_LibRmVersionMismatch",
)
# CUDA library (as dlopen names it, without "lib" and the version) -> the pip wheel that ships it,
# without its "-cuXX" suffix.
_LIBRARY_WHEELS = {
    "cudart": "nvidia-cuda-runtime",
    "cublas": "nvidia-cublas",
    "cublaslt": "nvidia-cublas",
    "cufft": "nvidia-cufft",
    "curand": "nvidia-curand",
    "cusolver": "nvidia-cusolver",
    "cusparse": "nvidia-cusparse",
    "cudnn": "nvidia-cudnn",
    "cupti": "nvidia-cuda-cupti",
    "nccl": "nvidia-nccl",
    "nvrtc": "nvidia-cuda-nvrtc",
    "nvjitlink": "nvidia-nvjitlink",
}

FORCED_CPU_PLACEMENT_HELP = (
    "Code can still force the CPU, which only shows while training: `with tf.device('/CPU:0')` "
    "around model building or fit, `tf.config.set_visible_devices([], 'GPU')`, or "
    "`os.environ['CUDA_VISIBLE_DEVICES'] = '-1'` set in a script. Add GPUWatch() to "
    "model.fit(callbacks=[...]) and it reports `forced_cpu_placement` if the first training "
    "step ran on the CPU."
)


# -- TensorFlow's start-up messages ------------------------------------------------------------

# Each pattern matches one message TensorFlow prints while it looks for GPUs (texts as in
# TensorFlow 2.21's libraries; the dlopen message is logged only with TF_CPP_VMODULE=dso_loader=1).
_MESSAGE_PATTERNS = (
    # cudart_stub.cc prints this when it cannot load libcudart (the CUDA runtime), not the driver.
    ("cudart_missing", re.compile(r"Could not find cuda drivers on your machine")),
    ("driver_dlopen_failed", re.compile(
        r"Could not load dynamic library '(?P<library>(?:libcuda\.so|nvcuda\.dll)[^']*)'; "
        r"dlerror: (?P<error>[^;]*)")),
    ("dlopen_failed", re.compile(
        r"Could not load dynamic library '(?P<library>[^']+)'; dlerror: (?P<error>[^;]*)")),
    ("cannot_dlopen_gpu_libraries", re.compile(r"Cannot dlopen some GPU libraries")),
    ("cuinit_failed", re.compile(r"failed call to cuInit: (?P<error>.*)", re.IGNORECASE)),
    ("kernel_driver_not_running", re.compile(
        r"kernel driver does not appear to be running on this host")),
    ("driver_insufficient", re.compile(
        r"(CUDA driver version is insufficient for CUDA runtime version"
        r"|Possibly insufficient driver version: ?(?P<version>\S*))")),
    ("gpu_ignored", re.compile(
        r"Ignoring visible gpu device \((?P<device>.*)\) with Cuda compute capability "
        r"(?P<capability>\d+(?:\.\d+)*)\. The minimum required Cuda capability is "
        r"(?P<minimum>\d+(?:\.\d+)*)")),
    ("allow_growth_unparsed", re.compile(
        r"TF_FORCE_GPU_ALLOW_GROWTH environment variable is set but could not be parsed")),
)

# What each message means, for a reader who has seen it and been misled by it.
MESSAGE_MEANINGS = {
    "cudart_missing": "TensorFlow could not load libcudart (the CUDA runtime library); despite "
                      "the wording, this is about the CUDA libraries, not the driver",
    "driver_dlopen_failed": "the driver's CUDA library is missing: no NVIDIA driver",
    "dlopen_failed": "a CUDA library TensorFlow needs for the GPU could not be loaded",
    "cannot_dlopen_gpu_libraries": "TensorFlow skipped the GPUs because CUDA libraries are "
                                   "missing",
    "cuinit_failed": "the CUDA driver could not be initialised",
    "kernel_driver_not_running": "the NVIDIA kernel module is not loaded",
    "driver_insufficient": "the driver is older than the CUDA runtime needs",
    "gpu_ignored": "the GPU is too old for this TensorFlow build",
    "allow_growth_unparsed": "TF_FORCE_GPU_ALLOW_GROWTH was ignored",
}

# Log prefixes: "I0000 00:00:1795709988.009449    3757 cudart_stub.cc:31] " (absl logging, recent
# releases) and "2020-08-24 11:08:28.568646: W tensorflow/.../dso_loader.cc:59] " (older ones).
_LOG_PREFIX = re.compile(
    r"^(?:[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\]|\d{4}-\d\d-\d\d [\d:.]+: [IWEF] \S+:\d+\])\s*")


def parse_tensorflow_messages(stderr: str) -> list[dict[str, Any]]:
    """The GPU start-up messages in TensorFlow's stderr, in order, each once.

    Args:
        stderr: What TensorFlow printed (with ``TF_CPP_MIN_LOG_LEVEL=0``).

    Returns:
        One dict per message: ``kind`` (a key of :data:`MESSAGE_MEANINGS`), ``text`` (the
        message without its log prefix) and the parts the pattern names (``library``,
        ``error``, ...).

    >>> parse_tensorflow_messages("E0000 00:00:1.2  7 cuda_platform.cc:52] failed call to "
    ...                           "cuInit: UNKNOWN ERROR (303)")[0]["error"]
    'UNKNOWN ERROR (303)'
    """
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line in stderr.splitlines():
        text = _LOG_PREFIX.sub("", line.strip())
        for kind, pattern in _MESSAGE_PATTERNS:
            match = pattern.search(text)
            if match is None:
                continue
            if text not in seen:  # TensorFlow prints some messages once per module that loads
                seen.add(text)
                parts = {k: v.strip() for k, v in match.groupdict().items() if v is not None}
                found.append({"kind": kind, "text": text, **parts})
            break
    return found


# -- the framework probe ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    """What the framework probe found.

    Attributes:
        framework: The framework facts (see the module docstring), or None when the probe
            failed before it could report them.
        stderr: What the framework printed while it started (TensorFlow's GPU messages).
        error: Why the probe failed (a timeout, a crash), or None when it ran.
        duration_s: How long the probe took, seconds.
    """

    framework: dict[str, Any] | None
    stderr: str = ""
    error: str | None = None
    duration_s: float | None = None


def tensorflow_facts(tf: Any, live: bool = False) -> dict[str, Any]:
    """The facts about an imported TensorFlow module.

    Args:
        tf: The ``tensorflow`` module.
        live: Also read the process's runtime configuration (logical GPUs, memory limits and
            memory growth). Only for a process that trains: it creates the GPU devices.
    """
    gpus = tf.config.list_physical_devices("GPU")
    devices = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        devices.append({
            "name": gpu.name,
            "device_name": details.get("device_name"),
            "compute_capability": ".".join(map(str, capability)) if capability else None,
        })
    facts: dict[str, Any] = {
        "name": "tensorflow",
        "installed": True,
        "version": tf.__version__,
        "built_with_cuda": bool(tf.test.is_built_with_cuda()),
        "build_info": dict(tf.sysconfig.get_build_info()),
        "gpus": devices,
        "import_error": None,
    }
    if live:
        facts["logical_gpus"] = [d.name for d in tf.config.list_logical_devices("GPU")]
        facts["memory"] = [_memory_config(tf, gpu) for gpu in gpus]
    return facts


def _memory_config(tf: Any, gpu: Any) -> dict[str, Any]:
    configs = tf.config.get_logical_device_configuration(gpu) or []
    limits = [c.memory_limit for c in configs if c.memory_limit is not None]
    return {
        "gpu": gpu.name,
        "memory_limit_mib": float(sum(limits)) if limits else None,
        "virtual_devices": len(configs),
        "memory_growth": bool(tf.config.experimental.get_memory_growth(gpu)),
    }


def _probe_main() -> None:
    """Run in the child process: import TensorFlow and print its facts as one JSON line."""
    try:
        import tensorflow as tf
    except ImportError as exc:
        facts: dict[str, Any] = {"name": "tensorflow", "installed": False, "gpus": [],
                                 "import_error": f"{type(exc).__name__}: {exc}"}
    else:
        facts = tensorflow_facts(tf)
    print(_PROBE_MARKER + json.dumps(facts, default=str), flush=True)


def run_probe(timeout_s: float, environ: Mapping[str, str]) -> ProbeResult:
    """Read the framework facts in a child process (`sys.executable`) with a time limit.

    The child imports TensorFlow with ``TF_CPP_MIN_LOG_LEVEL=0`` and the library loader's
    messages on, so its stderr names what stopped the GPU; a driver that hangs or crashes the
    child only costs the timeout.

    Args:
        timeout_s: Seconds the child may take.
        environ: The environment the child runs in (the one being diagnosed).
    """
    env = dict(environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"
    vmodule = env.get("TF_CPP_VMODULE")
    env["TF_CPP_VMODULE"] = f"{vmodule},dso_loader=1" if vmodule else "dso_loader=1"
    # The child must import this very gpu_watch, even from a source checkout that is not
    # installed, without that folder shadowing anything TensorFlow imports afterwards.
    package_parent = str(Path(__file__).resolve().parent.parent)
    code = (f"import sys; sys.path.insert(0, {package_parent!r}); "
            "from gpu_watch.doctor import _probe_main; del sys.path[0]; _probe_main()")
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             errors="replace")
    try:
        stdout, stderr = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        try:
            stdout, stderr = child.communicate(timeout=_KILL_GRACE_S)
        except subprocess.TimeoutExpired:  # stuck inside the driver: leave it, do not hang too
            stdout, stderr = "", ""
        return ProbeResult(None, stderr or "", duration_s=time.perf_counter() - start,
                           error=f"the TensorFlow probe did not finish within {timeout_s:g} s "
                                 "(a hung driver or a very slow import); retry with a larger "
                                 "--timeout")
    duration_s = time.perf_counter() - start
    reported = [line for line in stdout.splitlines() if line.startswith(_PROBE_MARKER)]
    if child.returncode != 0 or not reported:
        return ProbeResult(None, stderr, duration_s=duration_s,
                           error=_probe_failure(child.returncode, stderr))
    try:
        framework = json.loads(reported[-1][len(_PROBE_MARKER):])
    except json.JSONDecodeError as exc:
        return ProbeResult(None, stderr, duration_s=duration_s,
                           error=f"the TensorFlow probe printed unreadable facts ({exc})")
    return ProbeResult(framework, stderr, duration_s=duration_s)


def _probe_failure(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"was killed by signal {-returncode}"
    else:
        how = f"exited with status {returncode}"
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    return f"the TensorFlow probe {how}" + (f": {last}" if last else "")


# -- the other facts -------------------------------------------------------------------------


def installed_distributions() -> dict[str, str]:
    """Installed TensorFlow, Keras and ``nvidia-*`` distributions: normalised name -> version."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = _normalise(dist.metadata["Name"] or "")
        if name.startswith(("tensorflow", "tf-nightly", "nvidia-")) or name == "keras":
            found.setdefault(name, dist.version)  # the first on sys.path is the one imported
    return dict(sorted(found.items()))


def and_cuda_requirements() -> dict[str, str]:
    """The wheels ``tensorflow[and-cuda]`` pulls in on this platform: name -> version specifier.

    Read from the installed TensorFlow's metadata, so the list matches its release. Empty when
    no TensorFlow with that extra is installed (``tensorflow-cpu``, native Windows).
    """
    for dist_name in ("tensorflow", "tf-nightly"):
        try:
            lines = importlib.metadata.requires(dist_name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        required = {}
        for line in lines:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if (req.marker is not None and req.marker.evaluate({"extra": "and-cuda"})
                    and not req.marker.evaluate({"extra": ""})):
                required[_normalise(req.name)] = str(req.specifier)
        return dict(sorted(required.items()))
    return {}


def cuda_wheel_status(required: Mapping[str, str], installed: Mapping[str, str]
                      ) -> dict[str, Any]:
    """Which required CUDA wheels are missing or installed at a version outside the range.

    Args:
        required: Name -> version specifier, from :func:`and_cuda_requirements`.
        installed: Name -> version, from :func:`installed_distributions`.
    """
    missing, wrong = [], []
    for name, spec in required.items():
        version = installed.get(name)
        if version is None:
            missing.append(name)
            continue
        try:
            ok = Requirement(f"{name}{spec}").specifier.contains(version, prereleases=True)
        except (InvalidRequirement, InvalidVersion):
            continue
        if not ok:
            wrong.append({"name": name, "installed": version, "required": spec})
    return {"required": dict(required), "missing": missing, "wrong_version": wrong}


def nvml_facts(nvml: NVML) -> dict[str, Any]:
    """What NVML says: driver, its CUDA version, and every GPU with memory and processes."""
    if not nvml.available:
        return {"available": False, "error": nvml.error, "driver_version": None,
                "cuda_driver_version": None, "gpus": []}
    gpus = []
    for device in nvml.all_devices():
        # Not nvml.read(): it advances the per-process sample clock a sampler may depend on.
        memory = nvml.query("memory", device.nvml_index, "nvmlDeviceGetMemoryInfo", device.handle)
        processes = nvml.processes(device)
        gpus.append({
            "index": device.nvml_index,
            "uuid": device.uuid,
            "name": device.name,
            "mem_total_mib": device.mem_total_mib,
            "mem_used_mib": memory.used / MIB if memory is not None else None,
            "processes": None if processes is None else [
                {"pid": p.pid, "used_mib": p.used_mib} for p in processes
            ],
        })
    return {"available": True, "error": None, "driver_version": nvml.driver_version(),
            "cuda_driver_version": nvml.cuda_driver_version(), "gpus": gpus}


def platform_facts() -> dict[str, Any]:
    """The operating system, Python, and whether this is WSL or a container."""
    system = platform.system()
    release = platform.release()
    return {
        "system": system,
        "release": release,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "wsl": system == "Linux" and "microsoft" in release.lower(),
        "container": any(os.path.exists(p) for p in ("/.dockerenv", "/run/.containerenv")),
    }


def keras_facts(distributions: Mapping[str, str], environ: Mapping[str, str],
                in_process: bool) -> dict[str, Any]:
    """Keras's version and the backend it would use (or uses, in the live process)."""
    keras = sys.modules.get("keras") if in_process else None
    if keras is not None and hasattr(keras, "config"):
        backend = keras.config.backend()
    else:
        backend = environ.get("KERAS_BACKEND") or _keras_config_backend(environ) or "tensorflow"
    return {"version": distributions.get("keras"), "backend": backend}


def _keras_config_backend(environ: Mapping[str, str]) -> str | None:
    home = environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as f:
            return json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):
        return None


# -- the rules -------------------------------------------------------------------------------


def check_cpu_only_build(facts: Facts) -> list[Cause]:
    """`cpu_only_build`: TensorFlow is not built with CUDA, or only ``tensorflow-cpu`` is there."""
    if _native_windows_without_gpu(facts):
        return []  # check_native_windows says why, with the remedy that works there
    fw = facts.get("framework") or {}
    dists = facts["distributions"]
    cpu_wheel = dists.get("tensorflow-cpu")
    built_for_cpu = fw.get("installed") and fw.get("built_with_cuda") is False
    only_cpu_wheel = cpu_wheel is not None and "tensorflow" not in dists
    if not (built_for_cpu or only_cpu_wheel):
        return []
    version = fw.get("version") or cpu_wheel or dists.get("tensorflow")
    evidence = {"tensorflow_version": version, "built_with_cuda": fw.get("built_with_cuda"),
                "distributions": _tensorflow_distributions(dists)}
    if facts["platform"]["system"] == "Darwin":
        return [cause(
            "cpu_only_build",
            f"TensorFlow {version} on macOS is a CPU-only build: there is no CUDA build for macOS.",
            "Train on Linux or WSL2 with an NVIDIA GPU; on Apple silicon, "
            "`pip install tensorflow-metal` uses the Apple GPU instead.",
            **evidence,
        )]
    installed_from = f" (installed from tensorflow-cpu {cpu_wheel})" if cpu_wheel else ""
    uninstall = " ".join(n for n in ("tensorflow", "tensorflow-cpu") if n in dists)
    remedy = (f'pip uninstall -y {uninstall} && pip install "tensorflow[and-cuda]=={version}"'
              if cpu_wheel else f'pip install --force-reinstall "tensorflow[and-cuda]=={version}"')
    return [cause(
        "cpu_only_build",
        f"TensorFlow {version} is a CPU-only build{installed_from}: "
        "tf.test.is_built_with_cuda() is False, so it can never use a GPU.",
        remedy,
        **evidence,
    )]


def check_mixed_tensorflow_install(facts: Facts) -> list[Cause]:
    """`cpu_only_build` (warning): both ``tensorflow`` and ``tensorflow-cpu`` are installed.

    They install the same ``tensorflow`` package folder, so the build Python imports is the one
    installed last, and uninstalling either one breaks the other. When the build is CPU-only,
    :func:`check_cpu_only_build` reports it instead.
    """
    dists = facts["distributions"]
    if "tensorflow" not in dists or "tensorflow-cpu" not in dists:
        return []
    fw = facts.get("framework") or {}
    if fw.get("built_with_cuda") is False:
        return []
    return [cause(
        "cpu_only_build",
        f"Both tensorflow {dists['tensorflow']} and tensorflow-cpu {dists['tensorflow-cpu']} "
        "are installed: they share one package folder, so which build you get depends on "
        "install order, and uninstalling one breaks the other.",
        "pip uninstall -y tensorflow tensorflow-cpu && "
        f'pip install "tensorflow[and-cuda]=={dists["tensorflow"]}"',
        severity=WARNING,
        distributions=_tensorflow_distributions(dists),
        built_with_cuda=fw.get("built_with_cuda"),
    )]


def check_native_windows(facts: Facts) -> list[Cause]:
    """`cpu_only_build`: TensorFlow newer than 2.10 on native Windows, which has no GPU build."""
    if not _native_windows_without_gpu(facts):
        return []
    version = _tensorflow_version(facts)
    return [cause(
        "cpu_only_build",
        f"TensorFlow {version} on native Windows is CPU-only: GPU support on native Windows "
        "ended with TensorFlow 2.10; newer releases need WSL2.",
        f'wsl --install  # then, inside WSL2: pip install "tensorflow[and-cuda]=={version}"  '
        '(or, on native Windows: pip install "tensorflow<2.11")',
        windows_release=facts["platform"]["release"],
        tensorflow_version=version,
    )]


def check_no_nvidia_driver(facts: Facts) -> list[Cause]:
    """`no_nvidia_driver`: NVML finds no driver, or TensorFlow cannot load the driver's library."""
    evidence = _driver_missing_evidence(facts)
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
    return [cause(
        "no_nvidia_driver",
        "No NVIDIA driver is loaded, so no GPU can be used: " + "; ".join(said) + ".",
        _driver_remedy(facts["platform"]),
        **evidence,
    )]


def check_driver_too_old(facts: Facts) -> list[Cause]:
    """`driver_too_old`: the driver's CUDA version is older than the one TensorFlow was built with.

    An older major version cannot run the build at all (error). An older minor version usually
    runs through CUDA's minor-version compatibility, but code compiled to PTX by the newer
    toolkit (XLA does this) can fail to load (warning).
    """
    fw = facts.get("framework") or {}
    build_cuda = (fw.get("build_info") or {}).get("cuda_version")
    driver_cuda = facts["nvml"]["cuda_driver_version"]
    insufficient = [m["text"] for m in facts.get("framework_messages", [])
                    if m["kind"] == "driver_insufficient"]
    build, driver = _major_minor(build_cuda), _major_minor(driver_cuda)
    if build is None or driver is None or driver >= build:
        if not insufficient:
            return []
        severity, why = ERROR, f"TensorFlow says: {insufficient[0]}"
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
    older_tensorflow = (f"; or install a TensorFlow release built for CUDA {driver_cuda} or older"
                        if driver_cuda else "")
    return [cause(
        "driver_too_old",
        f"{driver_text} is older than the CUDA {build_cuda} that TensorFlow {fw.get('version')} "
        f"was built with: {why}.",
        f"Upgrade the NVIDIA driver until `nvidia-smi` shows \"CUDA Version: {target}\" or "
        f"higher (Ubuntu: `sudo ubuntu-drivers install`, then reboot){older_tensorflow}.",
        severity=severity,
        driver_version=facts["nvml"]["driver_version"],
        driver_cuda_version=driver_cuda,
        build_cuda_version=build_cuda,
        tensorflow_messages=insufficient,
    )]


def check_cuda_libs_missing(facts: Facts) -> list[Cause]:
    """`cuda_libs_missing`: a CUDA build that sees no GPU for want of its CUDA libraries.

    Evidence: the ``tensorflow[and-cuda]`` wheels that are missing or at the wrong version, and
    the libraries TensorFlow says it could not load. An error when the driver is present; a
    warning when it is not (the libraries are the next thing to fix once it is, unless CUDA is
    installed system-wide).
    """
    fw = facts.get("framework") or {}
    if not fw.get("built_with_cuda") or fw.get("gpus"):
        return []
    wheels = facts["cuda_wheels"]
    messages = facts.get("framework_messages", [])
    libraries = [m["library"] for m in messages if m["kind"] == "dlopen_failed"]
    if any(m["kind"] == "cudart_missing" for m in messages) and not any(
            lib.startswith(("libcudart", "cudart")) for lib in libraries):
        libraries.insert(0, "libcudart (the CUDA runtime)")
    skipped = any(m["kind"] == "cannot_dlopen_gpu_libraries" for m in messages)
    if not (wheels["missing"] or wheels["wrong_version"] or libraries or skipped):
        return []
    version = fw.get("version")
    build_info = fw.get("build_info") or {}
    parts = []
    if libraries:
        parts.append("it could not load " + ", ".join(libraries))
    elif skipped:
        parts.append("it skipped the GPUs with \"Cannot dlopen some GPU libraries\"")
    if wheels["missing"]:
        count, total = len(wheels["missing"]), len(wheels["required"])
        which = (f"the {total} wheels tensorflow[and-cuda] installs are all missing"
                 if count == total else
                 f"{count} of the {total} wheels tensorflow[and-cuda] installs are missing")
        parts.append(f"{which} ({_shorten(wheels['missing'])})")
    if wheels["wrong_version"]:
        parts.append("wrong versions: " + ", ".join(
            f"{w['name']} {w['installed']} (needs {w['required']})"
            for w in wheels["wrong_version"]))
    wrong_names = {w["name"] for w in wheels["wrong_version"]}
    shadowed = [n for n in _wheels_for(libraries, wheels["required"])
                if n not in wheels["missing"] and n not in wrong_names]
    if shadowed:
        parts.append(f"{', '.join(shadowed)} is installed, yet its library did not load (a "
                     "wheel in another site-packages, or another CUDA on LD_LIBRARY_PATH, does "
                     "this)")
    driver_present = not _driver_missing_evidence(facts)
    cuda = build_info.get("cuda_version")
    cudnn = build_info.get("cudnn_version")
    built = f"built with CUDA {cuda}" + (f" and cuDNN {cudnn}" if cudnn else "")
    message = (f"TensorFlow {version} ({built}) sees no GPU: " if driver_present else
               f"Even once a driver is installed, TensorFlow {version} ({built}) will not find "
               "a GPU: ")
    reinstall = wheels["missing"] or wheels["wrong_version"]
    remedy = (f'pip install "tensorflow[and-cuda]=={version}"' if reinstall else
              f'pip install --force-reinstall "tensorflow[and-cuda]=={version}"')
    ld_path = facts["env"].get("LD_LIBRARY_PATH")
    if ld_path and not reinstall:
        remedy += f"  # and check LD_LIBRARY_PATH={ld_path}: it may load another CUDA"
    if not driver_present:
        remedy += "  # unless CUDA and cuDNN are installed system-wide"
    return [cause(
        "cuda_libs_missing",
        message + "; ".join(parts) + ".",
        remedy,
        severity=ERROR if driver_present else WARNING,
        missing_wheels=wheels["missing"],
        wrong_version_wheels=wheels["wrong_version"],
        unloadable_libraries=libraries,
        tensorflow_messages=[m["text"] for m in messages if m["kind"] in (
            "cudart_missing", "dlopen_failed", "cannot_dlopen_gpu_libraries")],
        build_cuda_version=cuda,
        build_cudnn_version=cudnn,
    )]


def check_gpus_hidden(facts: Facts) -> list[Cause]:
    """`gpus_hidden`: ``CUDA_VISIBLE_DEVICES`` (or ``set_visible_devices``) hides GPUs NVML sees.

    An empty value or ``-1`` hides all GPUs. An entry that matches no GPU makes CUDA ignore it
    and every entry after it: an error when that leaves none, a warning when it leaves some.
    """
    nvml_gpus = facts["nvml"]["gpus"]
    if not nvml_gpus:
        return []
    seen = ", ".join(f"{g['index']}: {g['name']}" for g in nvml_gpus)
    evidence = {"nvml_gpus": [{"index": g["index"], "uuid": g["uuid"], "name": g["name"]}
                              for g in nvml_gpus]}
    value = facts["env"].get("CUDA_VISIBLE_DEVICES")
    causes = []
    if value is not None:
        visible, invalid = resolve_visible_gpus(nvml_gpus, value)
        indices = ",".join(str(g["index"]) for g in nvml_gpus)
        if visible == []:
            why = "hides every GPU" if invalid is None else \
                f"names {invalid!r} first, which matches no GPU, so it hides every GPU"
            causes.append(cause(
                "gpus_hidden",
                f"CUDA_VISIBLE_DEVICES={value!r} {why}, while NVML sees {len(nvml_gpus)} "
                f"({seen}).",
                f"unset CUDA_VISIBLE_DEVICES  # or choose GPUs: export "
                f"CUDA_VISIBLE_DEVICES={indices}",
                cuda_visible_devices=value, **evidence,
            ))
        elif invalid is not None:
            kept = ", ".join(str(g["index"]) for g in visible)
            causes.append(cause(
                "gpus_hidden",
                f"CUDA_VISIBLE_DEVICES={value!r} names {invalid!r}, which matches no GPU: CUDA "
                f"ignores it and every entry after it, so only GPU {kept} of the "
                f"{len(nvml_gpus)} NVML sees ({seen}) is visible.",
                f"export CUDA_VISIBLE_DEVICES={indices}  # indices or UUIDs from `nvidia-smi -L`",
                severity=WARNING,
                cuda_visible_devices=value, invalid_entry=invalid,
                visible_nvml_indices=[g["index"] for g in visible], **evidence,
            ))
    fw = facts.get("framework") or {}
    if fw.get("gpus") and fw.get("logical_gpus") == []:
        causes.append(cause(
            "gpus_hidden",
            f"TensorFlow sees {len(fw['gpus'])} GPU(s) but made none of them a device: "
            "tf.config.set_visible_devices() left no GPU visible.",
            "Remove tf.config.set_visible_devices([], 'GPU') (or pass the GPUs to use: "
            "tf.config.set_visible_devices(tf.config.list_physical_devices('GPU'), 'GPU')).",
            physical_gpus=[g["name"] for g in fw["gpus"]], logical_gpus=[], **evidence,
        ))
    return causes


def check_gpu_memory_contention(facts: Facts) -> list[Cause]:
    """`gpu_memory_contention`: other processes hold at least :data:`CONTENTION_SHARE_PCT` % of
    a visible GPU's memory.

    Memory is counted per process where NVML says how much each holds. Where it cannot (some
    Windows driver modes), the device's used memory counts instead, unless the diagnosed process
    itself is on that GPU.
    """
    nvml_gpus = facts["nvml"]["gpus"]
    visible, _ = resolve_visible_gpus(nvml_gpus, facts["env"].get("CUDA_VISIBLE_DEVICES"))
    if visible is None:  # MIG instances: which GPU holds them is not in the facts
        visible = nvml_gpus
    pid = facts["doctor"]["pid"]
    causes = []
    for gpu in visible:
        total = gpu["mem_total_mib"]
        procs = gpu["processes"]
        if not total:
            continue
        others = [p for p in procs or [] if p["pid"] != pid]
        if procs is not None and all(p["used_mib"] is not None for p in others):
            held_mib = sum(p["used_mib"] for p in others)
        elif gpu["mem_used_mib"] is not None and not any(p["pid"] == pid for p in procs or []):
            held_mib = gpu["mem_used_mib"]
        else:
            continue
        share_pct = 100.0 * held_mib / total
        if share_pct < CONTENTION_SHARE_PCT:
            continue
        ranked = sorted(others, key=lambda p: -(p["used_mib"] or 0))
        listed = ", ".join(f"PID {p['pid']} ({_mib_text(p['used_mib'])})" for p in ranked)
        pids = " ".join(str(p["pid"]) for p in ranked)
        remedy = (f"Check `nvidia-smi`, then stop them (`kill {pids}`)" if pids else
                  "Stop what holds the memory (`nvidia-smi` lists it)")
        freer = _freest_other_gpu(nvml_gpus, gpu, pid)
        if freer is not None:
            remedy += (f", or use GPU {freer['index']} ({_mib_text(freer['free_mib'])} free): "
                       f"export CUDA_VISIBLE_DEVICES={freer['uuid']}")
        causes.append(cause(
            "gpu_memory_contention",
            f"Other processes hold {held_mib:.0f} of GPU {gpu['index']}'s {total:.0f} MiB "
            f"({share_pct:.1f} %)" + (f": {listed}." if listed else "."),
            remedy + ".",
            gpu=gpu["index"], uuid=gpu["uuid"], name=gpu["name"], mem_total_mib=total,
            held_by_others_mib=round(held_mib, 1), share_pct=round(share_pct, 1),
            threshold_pct=CONTENTION_SHARE_PCT,
            processes=[{"pid": p["pid"], "used_mib": p["used_mib"]} for p in ranked],
        ))
    return causes


def check_gpu_memory_limited(facts: Facts) -> list[Cause]:
    """`gpu_memory_limited`: TensorFlow may use far less GPU memory than the GPU has.

    Two ways: a logical-device ``memory_limit`` under :data:`MEMORY_LIMIT_SHARE_PCT` % of the
    GPU's memory (read from the live process), or ``TF_FORCE_GPU_ALLOW_GROWTH`` set to a value
    TensorFlow ignores (it accepts only "true" and "false").
    """
    causes = []
    growth = facts["env"].get("TF_FORCE_GPU_ALLOW_GROWTH")
    if growth is not None and growth not in ("true", "false"):
        causes.append(cause(
            "gpu_memory_limited",
            f"TF_FORCE_GPU_ALLOW_GROWTH={growth!r} is ignored: TensorFlow accepts only \"true\" "
            "or \"false\", so memory growth keeps its default (off: TensorFlow reserves most "
            "of the GPU's free memory at start-up).",
            "export TF_FORCE_GPU_ALLOW_GROWTH=true",
            severity=WARNING,
            tf_force_gpu_allow_growth=growth,
        ))
    fw = facts.get("framework") or {}
    visible, _ = resolve_visible_gpus(facts["nvml"]["gpus"],
                                      facts["env"].get("CUDA_VISIBLE_DEVICES"))
    for ordinal, memory in enumerate(fw.get("memory") or []):
        limit = memory.get("memory_limit_mib")
        gpu = visible[ordinal] if visible and ordinal < len(visible) else None
        if limit is None or gpu is None or not gpu["mem_total_mib"]:
            continue
        total = gpu["mem_total_mib"]
        share_pct = 100.0 * limit / total
        if share_pct >= MEMORY_LIMIT_SHARE_PCT:
            continue
        causes.append(cause(
            "gpu_memory_limited",
            f"TensorFlow may use only {limit:.0f} MiB of GPU {ordinal} ({gpu['name']}, "
            f"{total:.0f} MiB, {share_pct:.1f} %): a LogicalDeviceConfiguration(memory_limit="
            f"{limit:.0f}) is set for {memory['gpu']}.",
            f"gpus = tf.config.list_physical_devices('GPU'); "
            f"tf.config.experimental.set_memory_growth(gpus[{ordinal}], True)  # instead of "
            f"set_logical_device_configuration(gpus[{ordinal}], [tf.config."
            f"LogicalDeviceConfiguration(memory_limit={limit:.0f})]), or raise that limit",
            gpu=ordinal, device=memory["gpu"], memory_limit_mib=limit, mem_total_mib=total,
            share_pct=round(share_pct, 1), threshold_pct=MEMORY_LIMIT_SHARE_PCT,
            virtual_devices=memory.get("virtual_devices"),
            memory_growth=memory.get("memory_growth"),
        ))
    return causes


RULES: tuple[Callable[[Facts], list[Cause]], ...] = (
    check_native_windows,
    check_cpu_only_build,
    check_mixed_tensorflow_install,
    check_no_nvidia_driver,
    check_driver_too_old,
    check_cuda_libs_missing,
    check_gpus_hidden,
    check_gpu_memory_contention,
    check_gpu_memory_limited,
)

_SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}


def diagnose(facts: Facts) -> list[Cause]:
    """Every finding the rules make from `facts`, errors first. Pure: no I/O."""
    findings = [found for rule in RULES for found in rule(facts)]
    return sorted(findings, key=lambda c: _SEVERITY_ORDER.get(c.severity, len(_SEVERITY_ORDER)))


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


def _match_gpu(token: str, gpus: list[dict[str, Any]]) -> dict[str, Any] | None:
    if token.isdigit():
        index = int(token)
        return gpus[index] if index < len(gpus) else None
    wanted = token.upper() if token.upper().startswith("GPU-") else "GPU-" + token.upper()
    candidates = [g for g in gpus if g["uuid"].upper().startswith(wanted)]
    return candidates[0] if len(candidates) == 1 else None


def _driver_missing_evidence(facts: Facts) -> dict[str, Any]:
    """What says the driver is missing: NVML's init error, TensorFlow's messages. Empty if none."""
    nvml = facts["nvml"]
    if nvml["available"]:
        return {}
    evidence: dict[str, Any] = {}
    if nvml["error"] and nvml["error"].startswith(_DRIVER_ERRORS):
        evidence["nvml_error"] = nvml["error"]
    for message in facts.get("framework_messages", []):
        if message["kind"] == "driver_dlopen_failed":
            evidence.setdefault("tensorflow_driver_library", message["library"])
        elif message["kind"] == "kernel_driver_not_running":
            evidence.setdefault("tensorflow_message", message["text"])
    return evidence


def _driver_remedy(plat: Mapping[str, Any]) -> str:
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


def _native_windows_without_gpu(facts: Facts) -> bool:
    if facts["platform"]["system"] != "Windows":
        return False
    version = _major_minor(_tensorflow_version(facts))
    return version is not None and version > (2, 10)


def _tensorflow_version(facts: Facts) -> str | None:
    fw = facts.get("framework") or {}
    dists = facts["distributions"]
    return (fw.get("version") or dists.get("tensorflow") or dists.get("tensorflow-cpu")
            or dists.get("tensorflow-intel"))


def _tensorflow_distributions(dists: Mapping[str, str]) -> dict[str, str]:
    return {n: v for n, v in dists.items() if n in ("tensorflow", "tensorflow-cpu",
                                                     "tensorflow-gpu", "tensorflow-intel")}


def _wheels_for(libraries: list[str], required: Mapping[str, str]) -> list[str]:
    """The required wheels that ship `libraries` (e.g. libcudnn.so.9 -> nvidia-cudnn-cu12)."""
    names: list[str] = []
    for library in libraries:
        # libcudnn.so.9, libcublasLt.so.12, cudnn64_8.dll -> cudnn, cublaslt, cudnn
        stem = re.match(r"(?:lib)?([A-Za-z]+)", library)
        base = _LIBRARY_WHEELS.get(stem.group(1).lower()) if stem else None
        names += [n for n in required if base and n.startswith(base + "-") and n not in names]
    return names


def _freest_other_gpu(gpus: list[dict[str, Any]], busy: dict[str, Any], pid: int
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


def _major_minor(version: str | None) -> tuple[int, int] | None:
    if not version:
        return None
    try:
        release = Version(version).release
    except InvalidVersion:
        return None
    return (release[0], release[1] if len(release) > 1 else 0)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _mib_text(mib: float | None) -> str:
    return "n/a" if mib is None else f"{mib:.0f} MiB"


def _shorten(names: list[str], shown: int = 4) -> str:
    if len(names) <= shown:
        return ", ".join(names)
    return ", ".join(names[:shown]) + f" and {len(names) - shown} more"


# -- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DoctorReport:
    """What the doctor found: the facts, the findings, and whether a GPU is usable.

    Attributes:
        facts: The facts gathered (see the module docstring), JSON-ready.
        findings: The findings, errors first.
    """

    facts: Facts
    findings: list[Cause] = field(default_factory=list)

    @property
    def gpu_usable(self) -> bool:
        """TensorFlow sees at least one GPU, NVML works, and no error-severity finding stands."""
        fw = self.facts.get("framework") or {}
        return (bool(fw.get("gpus")) and self.facts["nvml"]["available"]
                and not any(c.severity == ERROR for c in self.findings))

    @property
    def exit_code(self) -> int:
        """0: a usable GPU; 1: none; 2: the doctor could not read the framework."""
        if self.facts["doctor"]["probe_error"]:
            return EXIT_ERROR
        return EXIT_OK if self.gpu_usable else EXIT_NO_GPU

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready report (``gpu-watch doctor --json``, ``run.json``'s "environment")."""
        return {
            "gpu_usable": self.gpu_usable,
            "exit_code": self.exit_code,
            "facts": self.facts,
            "findings": [c.to_dict() for c in self.findings],
        }

    def render_text(self) -> str:
        """The report for people: facts first, then findings with evidence and remedies."""
        lines = [self._headline(), "", "Facts"]
        lines += [f"  {label:<13} {value}" for label, value in self._fact_lines()]
        lines.append("")
        if self.findings:
            lines.append(f"Findings ({len(self.findings)})")
            for found in self.findings:
                lines.append(f"  [{found.severity}] {found.code}: {found.message}")
                for key, value in found.evidence.items():
                    if value not in (None, [], {}):  # an empty list is no evidence to read
                        lines.append(f"      {key}: {_evidence_text(value)}")
                lines.append(f"    remedy: {found.remedy}")
        elif self.facts["doctor"]["probe_error"]:
            lines.append("Findings: none from what could be read; the framework probe failed.")
        else:
            lines.append("Findings: nothing is wrong; TensorFlow sees the GPU and gpu-watch can "
                         "watch it.")
        lines += ["", "Not checked here: forced_cpu_placement", f"  {FORCED_CPU_PLACEMENT_HELP}",
                  f"    remedy: {CATALOGUE['forced_cpu_placement'].remedy}"]
        return "\n".join(lines) + "\n"

    def _headline(self) -> str:
        error = self.facts["doctor"]["probe_error"]
        if error:
            return f"gpu-watch doctor could not read the framework: {error} (exit 2)"
        if self.gpu_usable:
            fw = self.facts["framework"]
            names = ", ".join(g.get("device_name") or g["name"] for g in fw["gpus"])
            return f"gpu-watch doctor: TensorFlow can use the GPU ({names}) (exit 0)"
        return "gpu-watch doctor: no usable GPU (exit 1)"

    def _fact_lines(self) -> list[tuple[str, str]]:
        f = self.facts
        plat = f["platform"]
        where = " (WSL2)" if plat["wsl"] else " (container)" if plat["container"] else ""
        rows = [("Python", f"{plat['python']} ({plat['executable']})"),
                ("Platform", f"{plat['system']} {plat['release']} {plat['machine']}{where}")]
        rows += self._framework_lines()
        keras = f["keras"]
        other_backend = (" (TensorFlow's GPU matters to Keras only with the tensorflow "
                         "backend)" if keras["backend"] != "tensorflow" else "")
        rows.append(("Keras", f"{keras['version'] or 'not installed'}, backend "
                              f"{keras['backend']}{other_backend}"))
        wheels = f["cuda_wheels"]
        if wheels["required"]:
            have = len(wheels["required"]) - len(wheels["missing"])
            text = f"{have} of {len(wheels['required'])} installed"
            if wheels["missing"]:
                text += f" (missing: {_shorten(wheels['missing'])})"
            rows.append(("CUDA wheels", text))
        rows += self._nvml_lines()
        env_set = [f"{k}={v!r}" for k, v in f["env"].items() if v is not None]
        rows.append(("Environment", ", ".join(env_set) or "none of the GPU-related variables "
                                                          "is set"))
        return rows

    def _framework_lines(self) -> list[tuple[str, str]]:
        f = self.facts
        fw = f["framework"]
        rows = []
        if fw is None:
            not_imported = f["doctor"]["mode"] == "in_process" and not f["doctor"]["probe_error"]
            rows.append(("TensorFlow", "not imported in this process" if not_imported else
                         "could not be read"))
        elif not fw.get("installed"):
            rows.append(("TensorFlow", f"cannot be imported: {fw.get('import_error')}"))
        else:
            info = fw.get("build_info") or {}
            build = (f"built with CUDA {info.get('cuda_version')}, cuDNN "
                     f"{info.get('cudnn_version')}" if fw.get("built_with_cuda") else
                     "CPU-only build")
            rows.append(("TensorFlow", f"{fw['version']}, {build}"))
            gpus = fw.get("gpus") or []
            rows.append(("TF sees", ", ".join(
                f"{g['name']} ({g.get('device_name')}, compute {g.get('compute_capability')})"
                for g in gpus) or "no GPU"))
        for index, message in enumerate(f.get("framework_messages", [])):
            rows.append(("TF said" if index == 0 else "",
                         f"{message['text']}  [{MESSAGE_MEANINGS[message['kind']]}]"))
        return rows

    def _nvml_lines(self) -> list[tuple[str, str]]:
        nvml = self.facts["nvml"]
        if not nvml["available"]:
            return [("NVML", f"unavailable: {nvml['error']}")]
        rows = [("Driver", f"{nvml['driver_version']} (CUDA {nvml['cuda_driver_version']})")]
        for gpu in nvml["gpus"] or []:
            procs = gpu["processes"]
            listed = ("processes n/a" if procs is None else
                      ", ".join(f"PID {p['pid']} {_mib_text(p['used_mib'])}" for p in procs)
                      or "no processes")
            rows.append((f"GPU {gpu['index']}",
                         f"{gpu['name']}, {_mib_text(gpu['mem_used_mib'])} of "
                         f"{_mib_text(gpu['mem_total_mib'])} used; {listed} ({gpu['uuid']})"))
        if not nvml["gpus"]:
            rows.append(("GPUs", "NVML sees none"))
        return rows


def _evidence_text(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


# -- entry points ----------------------------------------------------------------------------


def doctor(nvml: Any = None, *, in_process: bool = False, timeout_s: float = 30.0,
           environ: Mapping[str, str] | None = None, probe: ProbeResult | None = None
           ) -> DoctorReport:
    """Find out why TensorFlow would not use the GPU here.

    Args:
        nvml: An :class:`~gpu_watch.nvml.NVML` session, or the library to open one with (the
            ``pynvml`` module or a :class:`~gpu_watch.testing.FakeNVML`). Default: a new session
            on the real NVML, shut down when done; a session passed in is left open.
        in_process: Read the framework from this process instead of a child: for GPUWatch,
            during training. TensorFlow is read only if it is already imported (it is never
            imported here); the live memory configuration is read too. Well under a second.
        timeout_s: Seconds the child process may take to import TensorFlow. Default 30.
        environ: The environment to diagnose (and to start the child in). Default `os.environ`.
        probe: Framework facts and TensorFlow's stderr to use instead of running a child
            (for tests and replays).

    Returns:
        A :class:`DoctorReport`.

    Example:
        >>> report = doctor()
        >>> for finding in report.findings:
        ...     print(finding.code, finding.message, finding.remedy, sep="\\n  ")
    """
    environ = os.environ if environ is None else environ
    session, owned = _session(nvml)
    try:
        if probe is not None:
            mode = "injected"
        elif in_process:
            mode, probe = "in_process", _in_process_probe()
        else:
            mode, probe = "child", run_probe(timeout_s, environ)
        distributions = installed_distributions()
        facts: Facts = {
            "doctor": {
                "mode": mode,
                "pid": os.getpid(),
                "probe_s": None if probe.duration_s is None else round(probe.duration_s, 3),
                "probe_error": probe.error,
            },
            "framework": probe.framework,
            "framework_messages": parse_tensorflow_messages(probe.stderr),
            "keras": keras_facts(distributions, environ, in_process),
            "distributions": distributions,
            "cuda_wheels": cuda_wheel_status(and_cuda_requirements(), distributions),
            "nvml": nvml_facts(session),
            "env": {name: environ.get(name) for name in ENV_VARS},
            "platform": platform_facts(),
        }
        if probe.error:
            facts["doctor"]["probe_stderr_tail"] = probe.stderr.splitlines()[-_STDERR_TAIL_LINES:]
    finally:
        if owned:
            session.shutdown()
    return DoctorReport(facts, diagnose(facts))


def _session(nvml: Any) -> tuple[NVML, bool]:
    if isinstance(nvml, NVML):
        return nvml, False
    return NVML(nvml), True


def _in_process_probe() -> ProbeResult:
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return ProbeResult(None)
    start = time.perf_counter()
    try:
        framework = tensorflow_facts(tf, live=True)
    except Exception as exc:  # a diagnosis must never break the training it watches
        return ProbeResult(None, error=f"reading TensorFlow's state failed: {exc!r}",
                           duration_s=time.perf_counter() - start)
    return ProbeResult(framework, duration_s=time.perf_counter() - start)


def run_doctor_command(as_json: bool, timeout_s: float, out: TextIO) -> int:
    """`gpu-watch doctor`: print the report (text, or JSON with `as_json`), return the exit code.

    Args:
        as_json: Print JSON instead of text.
        timeout_s: Seconds the framework probe may take.
        out: Where to print.

    Returns:
        0 a usable GPU was found, 1 none was, 2 the doctor could not run.
    """
    try:
        report = doctor(timeout_s=timeout_s)
    except Exception as exc:  # exit code 2 is the contract for "could not run"
        error = f"{type(exc).__name__}: {exc}"
        if as_json:
            out.write(json.dumps({"gpu_usable": False, "exit_code": EXIT_ERROR,
                                  "error": error}, indent=2) + "\n")
        else:
            out.write(f"gpu-watch doctor could not run: {error}\n")
        return EXIT_ERROR
    if as_json:
        out.write(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    else:
        out.write(report.render_text())
    return report.exit_code
