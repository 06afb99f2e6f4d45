"""The rules for JAX: the CUDA plugin (missing, or built for a newer CUDA than the driver),
``JAX_PLATFORMS``, the memory and allocator settings of XLA's client, and the reason JAX gives
when its CUDA backend does not start. Pure functions from the facts to findings."""

from __future__ import annotations

import re
from typing import Any

from gpu_watch.doctor.rules_common import (
    MEMORY_LIMIT_SHARE_PCT,
    Facts,
    base_version,
    check_gpus_hidden,
    driver_missing_evidence,
    driver_older_than_build,
    framework,
    held_by_others_mib,
    jax_cuda_extra,
    major_minor,
    mib_text,
    other_processes,
    visible_gpus,
)
from gpu_watch.judging.causes import ERROR, WARNING, Cause, cause

# XLA's client reserves this share of each GPU's memory at start-up unless told otherwise
# (jax docs: "GPU memory allocation").
DEFAULT_MEM_FRACTION = 0.75
# XLA_PYTHON_CLIENT_ALLOCATOR values jaxlib accepts (xla_client.generate_pjrt_gpu_plugin_options;
# jaxlib 0.11.2 added "address").
ALLOCATORS = ("default", "platform", "bfc", "cuda_async", "vmm", "address")
# Values of XLA_PYTHON_CLIENT_PREALLOCATE that turn preallocation off.
_PREALLOCATE_OFF = ("false", "False", "0")
# The platform names under which JAX runs on an NVIDIA GPU.
_GPU_PLATFORMS = ("cuda", "gpu")


def _jax(facts: Facts) -> dict[str, Any]:
    return framework(facts, "jax")


def _messages(facts: Facts, *kinds: str) -> list[dict[str, Any]]:
    return [m for m in _jax(facts).get("messages") or [] if m["kind"] in kinds]


def plugin_distribution(facts: Facts) -> tuple[str, str] | None:
    """The installed CUDA plugin wheel (``jax-cuda12-plugin``, version), if any."""
    for name, version in sorted(facts["distributions"].items(), reverse=True):
        if re.fullmatch(r"jax-cuda\d+-plugin", name):
            return name, version
    return None


def plugin_cuda_version(facts: Facts) -> str | None:
    """The CUDA version JAX's GPU support was built for: the plugin's own build version when
    the probe read it, else the major version in the plugin's (or an old jaxlib's) name."""
    plugin = _jax(facts).get("plugin") or {}
    if plugin.get("cuda_version"):
        return plugin["cuda_version"]
    dist = plugin_distribution(facts)
    if dist is not None:
        return re.search(r"\d+", dist[0]).group(0) + ".0"
    jaxlib = facts["distributions"].get("jaxlib") or ""
    old_style = re.search(r"\+cuda(\d+)", jaxlib)
    return f"{old_style.group(1)}.0" if old_style else None


def check_cpu_only_jaxlib(facts: Facts) -> list[Cause]:
    """`cpu_only_build`: JAX has no CUDA plugin (and a jaxlib without CUDA), so it can only run
    on the CPU."""
    fw = _jax(facts)
    if not fw.get("installed") or fw.get("gpus") or plugin_cuda_version(facts) is not None:
        return []
    version = base_version(fw.get("version"))
    said = [m["text"] for m in _messages(facts, "plugin_missing")]
    extra = jax_cuda_extra(major_minor(facts["nvml"]["cuda_driver_version"]))
    return [cause(
        "cpu_only_build",
        f"JAX {fw.get('version')} with jaxlib {fw.get('jaxlib_version')} is CPU-only: no CUDA "
        "plugin (jax-cuda12-plugin or jax-cuda13-plugin) is installed, so JAX can never use a "
        "GPU" + (f"; JAX says: {said[0]}" if said else "") + ".",
        f'pip install -U "jax[{extra}]=={version}"',
        jax_version=fw.get("version"), jaxlib_version=fw.get("jaxlib_version"),
        default_backend=fw.get("default_backend"), messages=said,
    )]


def check_driver_too_old(facts: Facts) -> list[Cause]:
    """`driver_too_old`: the CUDA plugin is built for a newer CUDA than the driver supports, or
    JAX (XLA) says the driver is too old."""
    fw = _jax(facts)
    build_cuda = plugin_cuda_version(facts)
    said = [m["text"] for m in _messages(facts, "driver_insufficient")]
    driver = major_minor(facts["nvml"]["cuda_driver_version"])
    build = major_minor(build_cuda)
    alternative = ""
    if driver is not None and build is not None and driver[0] < build[0] and driver[0] >= 12:
        alternative = (f'; or install the plugin for CUDA {driver[0]}: pip uninstall -y '
                       f'jax-cuda{build[0]}-plugin jax-cuda{build[0]}-pjrt && pip install -U '
                       f'"jax[{jax_cuda_extra(driver)}]=={base_version(fw.get("version"))}"')
    built = f"JAX's CUDA plugin ({(_jax(facts).get('plugin') or {}).get('package') or 'jax'})"
    return driver_older_than_build(facts, built, build_cuda, said, alternative)


def check_jax_platforms(facts: Facts) -> list[Cause]:
    """`gpus_hidden`: ``JAX_PLATFORMS`` (or the older ``JAX_PLATFORM_NAME``) leaves the GPU out,
    or lists the CPU first (JAX's default device is the first platform listed)."""
    if not facts["nvml"]["gpus"]:
        return []
    for variable in ("JAX_PLATFORMS", "JAX_PLATFORM_NAME"):
        value = facts["env"].get(variable)
        if not value:
            continue
        platforms = [p.strip().lower() for p in value.split(",") if p.strip()]
        gpu_listed = any(p in _GPU_PLATFORMS for p in platforms)
        if gpu_listed and platforms[0] in _GPU_PLATFORMS:
            return []
        why = (f"puts {platforms[0]!r} first, so JAX's default device is not the GPU"
               if gpu_listed else "does not name cuda (or gpu), so JAX never starts its GPU "
                                  "backend")
        return [cause(
            "gpus_hidden",
            f"{variable}={value!r} {why}, while NVML sees {len(facts['nvml']['gpus'])} GPU(s).",
            f"unset {variable}  # JAX then picks the GPU; or export JAX_PLATFORMS=cuda,cpu",
            **{variable.lower(): value},
        )]
    return []


def check_memory_settings(facts: Facts) -> list[Cause]:
    """`allocator_misconfigured` and `gpu_memory_limited`: XLA client settings that keep JAX
    off the GPU or leave it little memory.

    jaxlib reads ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (or its newer name
    ``XLA_CLIENT_MEM_FRACTION``) as a float and ``XLA_PYTHON_CLIENT_ALLOCATOR`` as one of
    :data:`ALLOCATORS` when the CUDA plugin starts; anything else raises, and JAX leaves the GPU
    out. A fraction under :data:`MEMORY_LIMIT_SHARE_PCT` % caps what training may use; the
    ``platform`` allocator allocates and frees on demand (slow, for debugging).
    """
    env = facts["env"]
    causes = []
    allocator = env.get("XLA_PYTHON_CLIENT_ALLOCATOR")
    if allocator is not None and allocator.lower() not in ALLOCATORS:
        causes.append(cause(
            "allocator_misconfigured",
            f"XLA_PYTHON_CLIENT_ALLOCATOR={allocator!r} is not one jaxlib accepts "
            f"({', '.join(ALLOCATORS)}): the CUDA plugin fails to start and JAX runs on the "
            "CPU.",
            "unset XLA_PYTHON_CLIENT_ALLOCATOR",
            severity=ERROR, xla_python_client_allocator=allocator,
        ))
    elif allocator is not None and allocator.lower() == "platform":
        causes.append(cause(
            "allocator_misconfigured",
            "XLA_PYTHON_CLIENT_ALLOCATOR='platform' allocates and frees GPU memory on demand, "
            "without a pool: JAX's documentation calls it very slow and meant for debugging.",
            "unset XLA_PYTHON_CLIENT_ALLOCATOR",
            xla_python_client_allocator=allocator,
        ))
    variable, value = _mem_fraction_setting(env)
    if value is None:
        return causes
    try:
        fraction = float(value)
    except ValueError:
        fraction = None
    if fraction is None or fraction <= 0:
        causes.append(cause(
            "allocator_misconfigured",
            f"{variable}={value!r} is not a fraction of GPU memory jaxlib can use: "
            + ("the CUDA plugin fails to start and JAX runs on the CPU." if fraction is None
               else "JAX may allocate nothing on the GPU."),
            f"unset {variable}  # or a fraction such as export {variable}=.75",
            severity=ERROR, **{variable.lower(): value},
        ))
    elif 100.0 * fraction < MEMORY_LIMIT_SHARE_PCT:
        sizes = ", ".join(f"GPU {g['index']}: {mib_text(fraction * g['mem_total_mib'])} of "
                          f"{mib_text(g['mem_total_mib'])}" for g in visible_gpus(facts)
                          if g["mem_total_mib"])
        causes.append(cause(
            "gpu_memory_limited",
            f"{variable}={value!r} lets JAX use only {100 * fraction:.0f} % of each GPU's "
            "memory" + (f" ({sizes})" if sizes else "") + ".",
            f"unset {variable}  # JAX's default is {DEFAULT_MEM_FRACTION}; or raise it, e.g. "
            f"export {variable}=.9",
            severity=WARNING, **{variable.lower(): value},
            threshold_pct=MEMORY_LIMIT_SHARE_PCT,
        ))
    return causes


def check_preallocation_contention(facts: Facts) -> list[Cause]:
    """`gpu_memory_contention`: JAX would preallocate more than other processes leave free.

    With preallocation on (the default), JAX reserves its memory fraction of each visible GPU as
    it starts; when other processes hold more than the rest, the reservation cannot be met and
    JAX's CUDA backend fails ("no supported devices found for platform CUDA"), or runs short.
    """
    env = facts["env"]
    if env.get("XLA_PYTHON_CLIENT_PREALLOCATE") in _PREALLOCATE_OFF:
        return []
    variable, value = _mem_fraction_setting(env)
    try:
        fraction = DEFAULT_MEM_FRACTION if value is None else float(value)
    except ValueError:
        return []  # check_memory_settings reports the value
    pid = facts["doctor"]["pid"]
    causes = []
    for gpu in visible_gpus(facts):
        total = gpu["mem_total_mib"]
        held_mib = held_by_others_mib(gpu, pid)
        if not total or held_mib is None:
            continue
        wanted_mib, free_mib = fraction * total, total - held_mib
        if wanted_mib <= free_mib:
            continue
        pids = " ".join(str(p["pid"]) for p in other_processes(gpu, pid))
        causes.append(cause(
            "gpu_memory_contention",
            f"JAX preallocates {100 * fraction:.0f} % of GPU {gpu['index']} "
            f"({mib_text(wanted_mib)}) as it starts, but other processes hold "
            f"{mib_text(held_mib)} of its {mib_text(total)}, leaving {mib_text(free_mib)}.",
            "export XLA_PYTHON_CLIENT_PREALLOCATE=false  # allocate as needed; or stop the other "
            "processes" + (f" (`kill {pids}`)" if pids else ""),
            gpu=gpu["index"], uuid=gpu["uuid"], preallocate_mib=round(wanted_mib, 1),
            held_by_others_mib=round(held_mib, 1), mem_total_mib=total,
            mem_fraction=fraction,
        ))
    return causes


def check_cuda_backend_failed(facts: Facts) -> list[Cause]:
    """`cuda_init_failed`: JAX has a CUDA plugin and the driver sees a GPU, yet JAX's CUDA
    backend did not start; JAX's own message says why."""
    fw = _jax(facts)
    if (not fw.get("installed") or fw.get("gpus") or plugin_cuda_version(facts) is None
            or driver_missing_evidence(facts) or not facts["nvml"]["gpus"]):
        return []
    explained = [*check_gpus_hidden(facts), *check_driver_too_old(facts),
                 *check_jax_platforms(facts), *check_memory_settings(facts)]
    if any(f.severity == ERROR for f in explained):
        return []
    said = [m["text"] for m in fw.get("messages") or [] if m["kind"] not in ("plugin_missing",)]
    if fw.get("init_error"):
        said = [fw["init_error"], *[s for s in said if s != fw["init_error"]]]
    hint = ""
    if any(m["kind"] == "no_supported_devices" for m in fw.get("messages") or []):
        hint = "  # JAX suggests: export XLA_PYTHON_CLIENT_PREALLOCATE=false"
    return [cause(
        "cuda_init_failed",
        f"JAX {fw.get('version')} has a CUDA plugin and NVML sees "
        f"{len(facts['nvml']['gpus'])} GPU(s), but JAX's CUDA backend did not start"
        + (f": {said[0]}" if said else "; JAX gave no reason") + ".",
        "Read JAX's message in the evidence; `python -c \"import jax; print(jax.devices())\"` "
        "shows it again" + hint,
        messages=said, default_backend=fw.get("default_backend"),
    )]


def _mem_fraction_setting(env: dict[str, str | None]) -> tuple[str, str | None]:
    for variable in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION"):
        if env.get(variable):
            return variable, env[variable]
    return "XLA_PYTHON_CLIENT_MEM_FRACTION", None


RULES = (
    check_cpu_only_jaxlib,
    check_driver_too_old,
    check_jax_platforms,
    check_memory_settings,
    check_preallocation_contention,
    check_cuda_backend_failed,
)
