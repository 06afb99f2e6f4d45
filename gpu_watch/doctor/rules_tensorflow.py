"""The rules for TensorFlow: its build, its CUDA wheels, the driver it needs, the GPUs it skips,
and its memory and allocator settings. Pure functions from the facts to findings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gpu_watch.doctor.rules_common import (
    MEMORY_LIMIT_SHARE_PCT,
    Facts,
    driver_missing_evidence,
    driver_older_than_build,
    framework,
    major_minor,
    resolve_visible_gpus,
    shorten,
)
from gpu_watch.judging.causes import ERROR, WARNING, Cause, cause

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
# TF_GPU_ALLOCATOR values TensorFlow acts on (gpu_process_state.cc); any other is ignored.
ASYNC_ALLOCATOR = "cuda_malloc_async"
DEBUG_ALLOCATORS = ("cuda_malloc", "memory_guard")


def _tf(facts: Facts) -> dict[str, Any]:
    return framework(facts, "tensorflow")


def _messages(facts: Facts, *kinds: str) -> list[dict[str, Any]]:
    return [m for m in _tf(facts).get("messages") or [] if m["kind"] in kinds]


def check_cpu_only_build(facts: Facts) -> list[Cause]:
    """`cpu_only_build`: TensorFlow is not built with CUDA, or only ``tensorflow-cpu`` is there."""
    if _native_windows_without_gpu(facts):
        return []  # check_native_windows says why, with the remedy that works there
    fw = _tf(facts)
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
    fw = _tf(facts)
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


def check_driver_too_old(facts: Facts) -> list[Cause]:
    """`driver_too_old`: the driver's CUDA version is older than the one TensorFlow was built
    with, or TensorFlow says the driver is insufficient."""
    fw = _tf(facts)
    driver_cuda = facts["nvml"]["cuda_driver_version"]
    older = (f"; or install a TensorFlow release built for CUDA {driver_cuda} or older"
             if driver_cuda else "")
    return driver_older_than_build(
        facts, f"TensorFlow {fw.get('version')}", (fw.get("build_info") or {}).get("cuda_version"),
        [m["text"] for m in _messages(facts, "driver_insufficient")], older)


def check_cuda_libs_missing(facts: Facts) -> list[Cause]:
    """`cuda_libs_missing`: a CUDA build that sees no GPU for want of its CUDA libraries.

    Evidence: the ``tensorflow[and-cuda]`` wheels that are missing or at the wrong version, and
    the libraries TensorFlow says it could not load. An error when the driver is present; a
    warning when it is not (the libraries are the next thing to fix once it is, unless CUDA is
    installed system-wide).
    """
    fw = _tf(facts)
    if not fw.get("built_with_cuda") or fw.get("gpus"):
        return []
    wheels = facts["cuda_wheels"]
    messages = fw.get("messages") or []
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
        parts.append(f"{which} ({shorten(wheels['missing'])})")
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
    driver_present = not driver_missing_evidence(facts)
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
        # Without a driver the driver comes first, but this blocks the GPU once it is there.
        blocks_gpu=True,
        missing_wheels=wheels["missing"],
        wrong_version_wheels=wheels["wrong_version"],
        unloadable_libraries=libraries,
        tensorflow_messages=[m["text"] for m in messages if m["kind"] in (
            "cudart_missing", "dlopen_failed", "cannot_dlopen_gpu_libraries")],
        build_cuda_version=cuda,
        build_cudnn_version=cudnn,
    )]


def check_gpu_not_supported(facts: Facts) -> list[Cause]:
    """`gpu_not_supported`: TensorFlow ignored a GPU whose compute capability is below what the
    build supports ("Ignoring visible gpu device ... The minimum required Cuda capability is
    ..."). An error when it leaves TensorFlow no GPU, else a warning."""
    ignored = _messages(facts, "gpu_ignored")
    if not ignored:
        return []
    fw = _tf(facts)
    version = fw.get("version")
    minimum = ignored[0]["minimum"]
    devices = "; ".join(f"{_device_name(m['device'])} (compute capability {m['capability']})"
                        for m in ignored)
    left = fw.get("gpus") or []
    consequence = (f"TensorFlow still uses the other {len(left)} GPU(s)" if left else
                   "so TensorFlow sees no GPU")
    return [cause(
        "gpu_not_supported",
        f"TensorFlow {version} ignores {devices}: this build needs compute capability "
        f"{minimum} or higher; {consequence}.",
        f"Train on a GPU with compute capability {minimum} or higher (`nvidia-smi "
        "--query-gpu=name,compute_cap --format=csv`), or build TensorFlow from source for "
        f"compute capability {ignored[0]['capability']}.",
        severity=WARNING if left else ERROR,
        ignored=[{"device": m["device"], "compute_capability": m["capability"]}
                 for m in ignored],
        minimum_compute_capability=minimum,
        tensorflow_messages=[m["text"] for m in ignored],
    )]


def check_visible_devices_in_process(facts: Facts) -> list[Cause]:
    """`gpus_hidden`: in the live process, ``tf.config.set_visible_devices()`` left no GPU."""
    fw = _tf(facts)
    if not fw.get("gpus") or fw.get("logical_gpus") != []:
        return []
    return [cause(
        "gpus_hidden",
        f"TensorFlow sees {len(fw['gpus'])} GPU(s) but made none of them a device: "
        "tf.config.set_visible_devices() left no GPU visible.",
        "Remove tf.config.set_visible_devices([], 'GPU') (or pass the GPUs to use: "
        "tf.config.set_visible_devices(tf.config.list_physical_devices('GPU'), 'GPU')).",
        physical_gpus=[g["name"] for g in fw["gpus"]], logical_gpus=[],
    )]


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
    fw = _tf(facts)
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


def check_gpu_allocator(facts: Facts) -> list[Cause]:
    """`allocator_misconfigured`: ``TF_GPU_ALLOCATOR`` names a debugging allocator, or a value
    TensorFlow ignores.

    TensorFlow acts on ``cuda_malloc_async`` (CUDA's stream-ordered allocator), and on
    ``cuda_malloc`` and ``memory_guard``, which pass every allocation to ``cudaMalloc`` (the
    latter also guards each one): tools for memory debugging that make training slow. Any other
    value is ignored silently, leaving the default BFC allocator.
    """
    value = facts["env"].get("TF_GPU_ALLOCATOR")
    if value is None or value == ASYNC_ALLOCATOR:
        return []
    if value in DEBUG_ALLOCATORS:
        message = (f"TF_GPU_ALLOCATOR={value!r} selects a debugging allocator: every GPU "
                   "allocation goes to cudaMalloc" +
                   (" and is padded and checked" if value == "memory_guard" else "") +
                   ", which makes training much slower.")
    else:
        message = (f"TF_GPU_ALLOCATOR={value!r} is ignored: TensorFlow knows only "
                   f"{ASYNC_ALLOCATOR!r} (and the debugging allocators "
                   f"{' and '.join(map(repr, DEBUG_ALLOCATORS))}), so it keeps its default "
                   "allocator.")
    return [cause(
        "allocator_misconfigured", message,
        f"unset TF_GPU_ALLOCATOR  # or export TF_GPU_ALLOCATOR={ASYNC_ALLOCATOR}",
        tf_gpu_allocator=value,
    )]


def _native_windows_without_gpu(facts: Facts) -> bool:
    if facts["platform"]["system"] != "Windows":
        return False
    version = major_minor(_tensorflow_version(facts))
    return version is not None and version > (2, 10)


def _tensorflow_version(facts: Facts) -> str | None:
    dists = facts["distributions"]
    return (_tf(facts).get("version") or dists.get("tensorflow") or dists.get("tensorflow-cpu")
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


def _device_name(description: str) -> str:
    """"device: 0, name: Tesla K80, pci bus id: ..." -> "GPU 0 (Tesla K80)"."""
    index = re.search(r"device: (\d+)", description)
    name = re.search(r"name: ([^,]+)", description)
    if index and name:
        return f"GPU {index.group(1)} ({name.group(1).strip()})"
    return description


RULES = (
    check_native_windows,
    check_cpu_only_build,
    check_mixed_tensorflow_install,
    check_driver_too_old,
    check_cuda_libs_missing,
    check_gpu_not_supported,
    check_visible_devices_in_process,
    check_gpu_memory_limited,
    check_gpu_allocator,
)
