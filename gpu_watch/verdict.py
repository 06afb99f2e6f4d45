"""Verdict rules: from what training showed to `ok`, `idle`, `cpu_fallback` or `unmonitored`,
with the causes that explain it.

Pure functions over plain records: no I/O and no framework imports, so every rule can be tested
on synthetic inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gpu_watch.causes import ERROR, Cause, RunFacts, cause, framework_name

OK = "ok"
IDLE = "idle"
CPU_FALLBACK = "cpu_fallback"
UNMONITORED = "unmonitored"
VERDICTS = (OK, IDLE, CPU_FALLBACK, UNMONITORED)

# A GPU is idle over a span when more than this share of its readings are under the threshold.
IDLE_FRACTION_LIMIT = 0.5
# Waiting for data for more than this share of the loop's wall time makes training input bound.
INPUT_BOUND_WAIT_FRACTION = 0.3
# Another process keeping a GPU this busy, while ours is not on it, is "busy, but not with us".
BUSY_UTIL_PCT = 20.0
_DRIVER_ERRORS = ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded")
# Where GPM gives SM activity (the share of SMs busy, averaged over time), a GPU judged `ok`
# (busy by utilization) has its SMs "mostly idle" when both hold. NVIDIA's DCGM guidance reads
# SM activity under 0.5 as likely ineffective use (0.8 is necessary, not sufficient, for good
# use). Utilization counts any kernel running as 100 %, so SM activity is at or under it: at or
# under half of it, fewer than half of the SMs worked while kernels ran on average. Measured on
# an H200 (benchmarks/gpu_check.py, steady epochs): large Dense layers ran at 72 % utilization
# and 62 % SM activity on JAX (ratio 0.86), 39 % and 38 % on torch (0.96); a deep, narrow MLP
# on batches of 32 ran at 13 % and 2.6 % on JAX (0.20), an LSTM(64) at 7.3 % and 1.3 % on torch.
SM_ACTIVE_LOW_PCT = 50.0  # SM activity under this: DCGM's "likely ineffective"
SM_ACTIVE_UTIL_RATIO = 0.5  # SM activity at most this share of utilization: SMs mostly idle
# Tensor-core activity under this, while non-tensor FP32 math is at least FP32_ACTIVE_PCT and
# above FP16's, is float32 training that leaves the tensor cores unused (every GPU that has GPM
# has tensor cores).
TENSOR_IDLE_PCT = 1.0
FP32_ACTIVE_PCT = 1.0


@dataclass(frozen=True)
class GPUStats:
    """What one GPU showed over a span of training (an epoch or the whole run).

    Attributes:
        gpu: NVML index.
        util_samples: Readings with a utilization value (NaN readings are not counted).
        util_mean: Mean utilization, percent; None without readings.
        util_p95: 95th percentile of utilization, percent.
        idle_fraction: Share of readings under the idle threshold, 0-1.
        mem_peak_mib: Peak memory used on the device (by everyone), MiB.
        proc_mem_peak_mib: Peak memory this process held, MiB; None when never known.
        proc_seen: This process appeared in NVML's compute process list.
        others_seen: Other processes appeared in it.
        lost: NVML reported the GPU lost.
        sm_active_mean: Mean share of SMs busy (GPM), percent; None where GPM is unsupported.
        sm_occupancy_mean, tensor_active_mean, dram_bw_mean, fp32_active_mean,
            fp16_active_mean: Means of the other GPM percentages (see `gpu_watch.nvml`).
        energy_j: Energy the whole GPU used over the span, joules (NVML has no per-process
            energy); None when neither the counter nor power readings allow it.
        energy_method: "counter" (NVML's energy counter) or "power" (power readings integrated
            over time, where the counter is unsupported or was reset).
        power_mean_w: Mean power over the span, watts (`energy_j` over the time it covers).
    """

    gpu: int
    util_samples: int = 0
    util_mean: float | None = None
    util_p95: float | None = None
    idle_fraction: float | None = None
    mem_peak_mib: float | None = None
    proc_mem_peak_mib: float | None = None
    proc_seen: bool = False
    others_seen: bool = False
    lost: bool = False
    sm_active_mean: float | None = None
    sm_occupancy_mean: float | None = None
    tensor_active_mean: float | None = None
    dram_bw_mean: float | None = None
    fp32_active_mean: float | None = None
    fp16_active_mean: float | None = None
    energy_j: float | None = None
    energy_method: str | None = None
    power_mean_w: float | None = None


@dataclass(frozen=True)
class Setting:
    """The facts of the run that do not change from epoch to epoch.

    Attributes:
        compute_on_gpu: The placement check's answer for step 0; None when unknown.
        framework_gpus: GPUs the framework sees; None when unknown.
        nvml_error: Why NVML could not be used (e.g. "NVMLError_LibraryNotFound: ..."), else None.
        nvml_gpus: GPUs NVML sees, whatever CUDA_VISIBLE_DEVICES says.
        visible_gpus: GPUs left visible to this process by CUDA_VISIBLE_DEVICES.
        cuda_visible_devices: The variable's value, None when unset.
        cuda_build: The framework was built with CUDA; None when unknown.
        cpu_compute_examples: Compute ops placed on the CPU in step 0.
        environment: The doctor's findings, used to explain a fall-back to the CPU.
        idle_threshold_pct: Utilization under this is idle, percent.
        facts: The user's setup (backend, input pipeline, distribution, device scope), which
            picks the remedies that fit it.
    """

    compute_on_gpu: bool | None = None
    framework_gpus: int | None = None
    nvml_error: str | None = None
    nvml_gpus: int = 0
    visible_gpus: int = 0
    cuda_visible_devices: str | None = None
    cuda_build: bool | None = None
    cpu_compute_examples: Sequence[str] = ()
    environment: Sequence[Cause] = ()
    idle_threshold_pct: float = 10.0
    facts: RunFacts = field(default_factory=RunFacts)


@dataclass(frozen=True)
class Judgement:
    """A verdict with its causes, and the verdict of each watched GPU (by NVML index)."""

    verdict: str
    causes: list[Cause] = field(default_factory=list)
    gpu_verdicts: dict[int, str] = field(default_factory=dict)


def on_gpu(setting: Setting) -> bool:
    """Whether training compute ran on a GPU, as far as the framework tells."""
    if setting.compute_on_gpu is not None:
        return setting.compute_on_gpu
    return bool(setting.framework_gpus)


def gpu_verdict(stats: GPUStats, nvml_error: str | None) -> str:
    """One GPU's verdict over a span, given that training ran on the GPUs."""
    if nvml_error is not None or stats.lost or not stats.util_samples:
        return UNMONITORED
    if stats.idle_fraction is not None and stats.idle_fraction > IDLE_FRACTION_LIMIT:
        return IDLE
    return OK


def judge(setting: Setting, gpus: Sequence[GPUStats], wait_fraction: float | None) -> Judgement:
    """The verdict for a span of training (an epoch or the run) and its causes.

    Args:
        setting: The run's facts (placement, framework, NVML, environment).
        gpus: What each watched GPU showed over the span.
        wait_fraction: Share of the span's loop time spent waiting for data, 0-1.
    """
    if not on_gpu(setting):
        return Judgement(CPU_FALLBACK, cpu_fallback_causes(setting, gpus))
    per_gpu = {s.gpu: gpu_verdict(s, setting.nvml_error) for s in gpus}
    causes = attribution_causes(setting, gpus) + activity_causes(setting, gpus, per_gpu)
    if not per_gpu or all(v == UNMONITORED for v in per_gpu.values()):
        return Judgement(UNMONITORED, causes, per_gpu)
    idle = [s for s in gpus if per_gpu[s.gpu] == IDLE]
    if not idle:
        return Judgement(OK, causes, per_gpu)
    busy = [s.gpu for s in gpus if per_gpu[s.gpu] == OK]
    if wait_fraction is not None and wait_fraction > INPUT_BOUND_WAIT_FRACTION:
        causes.insert(0, cause(
            "input_bound",
            f"The training loop waited for data {wait_fraction:.0%} of the time, leaving "
            f"{_gpu_names(idle)} idle.",
            facts=setting.facts,
            wait_fraction=round(wait_fraction, 3),
        ))
    if busy:
        causes.append(cause(
            "process_not_on_gpu",
            f"{_gpu_names(idle)} sat idle while GPU {', '.join(map(str, busy))} worked: "
            "check the distribution setup and device placement.",
            severity="warning",
            facts=setting.facts,
            idle_gpus=[s.gpu for s in idle],
            busy_gpus=busy,
        ))
    return Judgement(IDLE, causes, per_gpu)


def cpu_fallback_causes(setting: Setting, gpus: Sequence[GPUStats]) -> list[Cause]:
    """Why training ran on the CPU: the most specific explanation first."""
    causes: list[Cause] = []
    facts = setting.facts
    env = {c.code: c for c in setting.environment if c.severity == ERROR}
    if setting.nvml_error is not None and setting.nvml_error.startswith(_DRIVER_ERRORS):
        causes.append(env.pop("no_nvidia_driver", None) or cause(
            "no_nvidia_driver",
            f"No NVIDIA driver is loaded ({setting.nvml_error}), so training ran on the CPU.",
            facts=facts,
            nvml_error=setting.nvml_error,
        ))
    elif setting.nvml_gpus and not setting.visible_gpus:
        causes.append(env.pop("gpus_hidden", None) or cause(
            "gpus_hidden",
            f"CUDA_VISIBLE_DEVICES={setting.cuda_visible_devices!r} hides all "
            f"{setting.nvml_gpus} GPU(s) NVML sees from this process.",
            facts=facts,
            cuda_visible_devices=setting.cuda_visible_devices,
            nvml_gpus=setting.nvml_gpus,
        ))
    elif setting.framework_gpus or (setting.nvml_gpus and facts.cpu_settings):
        causes.append(_forced_cpu(setting))
    elif setting.cuda_build is False:
        causes.append(env.pop("cpu_only_build", None) or cause(
            "cpu_only_build",
            f"The installed {framework_name(facts.backend)} is a CPU-only build."
            if facts.backend else None,
            facts=facts,
        ))
    elif setting.nvml_gpus:
        explained = [env.pop(code) for code in ("driver_too_old", "cuda_libs_missing")
                     if code in env]
        causes.extend(explained or [cause(
            "cuda_libs_missing",
            f"NVML sees {setting.nvml_gpus} GPU(s), but the framework sees none: its CUDA "
            "libraries are missing or cannot be loaded.",
            facts=facts,
        )])
    causes.extend(env.values())
    for stats in gpus:
        if stats.others_seen and not stats.proc_seen and (stats.util_mean or 0) >= BUSY_UTIL_PCT:
            causes.append(cause(
                "process_not_on_gpu",
                f"GPU {stats.gpu} was {stats.util_mean:.0f}% busy, but with other processes: "
                "this training did not use it.",
                facts=facts,
                gpu=stats.gpu,
                util_mean=round(stats.util_mean or 0, 1),
            ))
    return causes


def _forced_cpu(setting: Setting) -> Cause:
    """Compute on the CPU while a GPU was there for the framework: named with what the
    placement check found there (ops, variables) and what put it there (a setting, a scope)."""
    facts = setting.facts
    examples = list(setting.cpu_compute_examples)[:5]
    variables = list(facts.cpu_variables)[:5]
    found = [f"e.g. {', '.join(examples)}"] if examples else []
    if variables:
        found.append(f"variables {', '.join(variables)}")
    where = f" ({'; '.join(found)})" if found else ""
    if setting.framework_gpus:
        message = (f"The framework sees {setting.framework_gpus} GPU(s), but step 0's compute "
                   f"ran on the CPU{where}.")
    else:
        settings = ", ".join(f"{k}={v!r}" for k, v in facts.cpu_settings.items())
        message = (f"NVML sees {setting.nvml_gpus} GPU(s), but {settings} keeps "
                   f"{framework_name(facts.backend)} on the CPU{where}.")
    return cause("forced_cpu_placement", message, facts=facts, cpu_compute_examples=examples,
                 cpu_variable_examples=variables, device_scope=facts.device_scope,
                 cpu_settings=dict(facts.cpu_settings))


def attribution_causes(setting: Setting, gpus: Sequence[GPUStats]) -> list[Cause]:
    """Training ran on a GPU, yet NVML never listed this process: in a container's PID
    namespace NVML reports host PIDs, so per-process figures fall back to device-level ones."""
    unattributed = [s.gpu for s in gpus if s.others_seen and not s.proc_seen]
    if not unattributed:
        return []
    return [cause("process_not_attributable", facts=setting.facts, gpus=unattributed)]


def activity_causes(setting: Setting, gpus: Sequence[GPUStats],
                    per_gpu: dict[int, str]) -> list[Cause]:
    """How well a GPU judged `ok` was used, where GPM tells (Hopper and newer): SMs mostly idle
    under a busy utilization (a warning), tensor cores idle in float32 training (a hint).
    Neither changes the verdict; a GPU without GPM readings gets neither."""
    causes = []
    for s in gpus:
        if per_gpu.get(s.gpu) != OK or s.sm_active_mean is None or s.util_mean is None:
            continue
        if (s.sm_active_mean < SM_ACTIVE_LOW_PCT
                and s.sm_active_mean <= SM_ACTIVE_UTIL_RATIO * s.util_mean):
            share = s.sm_active_mean / s.util_mean if s.util_mean > 0 else 0.0
            causes.append(cause(
                "low_sm_activity",
                f"GPU {s.gpu}'s utilization was {s.util_mean:.0f}%, but its SMs were active "
                f"only {s.sm_active_mean:.0f}% of the time "
                f"({s.util_mean - s.sm_active_mean:.0f} points apart): while kernels ran, about "
                f"{share:.0%} of its SMs worked. Each step launches kernels too small to fill "
                "the GPU.",
                facts=setting.facts,
                gpu=s.gpu,
                util_mean=round(s.util_mean, 1),
                sm_active_mean=round(s.sm_active_mean, 1),
                gap_pct=round(s.util_mean - s.sm_active_mean, 1),
            ))
    for s in gpus:
        if per_gpu.get(s.gpu) != OK or s.tensor_active_mean is None \
                or s.fp32_active_mean is None:
            continue
        fp16 = s.fp16_active_mean or 0.0
        if (s.tensor_active_mean < TENSOR_IDLE_PCT and s.fp32_active_mean >= FP32_ACTIVE_PCT
                and s.fp32_active_mean > fp16):
            causes.append(cause(
                "tensor_cores_unused",
                f"GPU {s.gpu}'s tensor cores were active {s.tensor_active_mean:.1f}% of the "
                f"time while float32 math kept its other cores {s.fp32_active_mean:.0f}% busy: "
                "mixed precision would move the matrix products onto the tensor cores.",
                facts=setting.facts,
                gpu=s.gpu,
                tensor_active_mean=round(s.tensor_active_mean, 2),
                fp32_active_mean=round(s.fp32_active_mean, 1),
            ))
    return causes


def _gpu_names(stats: Sequence[GPUStats]) -> str:
    names = ", ".join(str(s.gpu) for s in stats)
    return f"GPU {names}" if len(stats) == 1 else f"GPUs {names}"
