"""Verdict rules: from what training showed to `ok`, `idle`, `cpu_fallback` or `unmonitored`,
with the causes that explain it.

"Busy" and "idle" describe this training's own use of a GPU. Where NVML attributes SM
utilization to this process (`GPUStats.proc_util_samples`), that figure decides, and another
process's work on the same GPU can never make this training `ok`. Where it does not (MIG
instances, drivers without per-process figures, a container's PID namespace), the device's
utilization decides, and the causes say so (`process_not_attributable`); a busy device then
counts for this training only when no other process was listed on it, else its own use is
unknown (`unmonitored`). Other processes that used a watched GPU are named (`gpu_shared`).

Pure functions over plain records: no I/O and no framework imports, so every rule can be tested
on synthetic inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gpu_watch.judging.causes import (
    WARNING,
    Cause,
    RunFacts,
    blocks_gpu,
    cause,
    fix_rank,
    framework_name,
)

OK = "ok"
IDLE = "idle"
CPU_FALLBACK = "cpu_fallback"
UNMONITORED = "unmonitored"
# A span without a single reading (an epoch over before NVML's next sample): not a failure,
# nothing to judge by.
UNMEASURED = "unmeasured"
VERDICTS = (OK, IDLE, CPU_FALLBACK, UNMONITORED, UNMEASURED)

# A GPU is idle over a span when more than this share of its readings are under the threshold.
IDLE_FRACTION_LIMIT = 0.5
# Waiting for data for more than this share of the loop's wall time makes training input bound.
INPUT_BOUND_WAIT_FRACTION = 0.3
# Time between steps spent elsewhere (callbacks, Keras' bookkeeping) for more than this share of
# the loop's wall time makes training callback bound.
SLOW_CALLBACKS_FRACTION = 0.3
# Callbacks named in a `slow_callbacks` cause (their batch hooks took longest).
NAMED_CALLBACKS = 3
# Another process keeping a GPU this busy, while ours is not on it, is "busy, but not with us".
BUSY_UTIL_PCT = 20.0
# Judged by: this process's own SM utilization, or the device's (per-process not available).
BY_PROCESS = "process"
BY_DEVICE = "device"
# Other processes named in a cause's message (all of them are in its evidence).
NAMED_PROCESSES = 3
_DRIVER_ERRORS = ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded")
# Where GPM gives SM activity (the share of SMs busy, averaged over time), a GPU judged `ok`
# (busy by utilization) has its SMs "mostly idle" when both hold. Under 50 %: NVIDIA's DCGM
# guidance reads SM activity under 0.5 as likely ineffective use (0.8 is necessary, not
# sufficient, for good use). At most half of utilization: utilization counts any kernel running
# as 100 %, so SM activity is at or under it, and at half of it fewer than half of the SMs worked
# while kernels ran; a GPU busy only part of the time with kernels that fill it keeps the two
# close and is not flagged (its idle time is the idle rule's). On an H200, models that fill the
# GPU keep the ratio near 0.9 and small kernels launched one at a time put it near 0.2, far
# either side of 0.5 (docs/plots.md).
SM_ACTIVE_LOW_PCT = 50.0  # SM activity under this: DCGM's "likely ineffective"
SM_ACTIVE_UTIL_RATIO = 0.5  # SM activity at most this share of utilization: SMs mostly idle
# Tensor-core activity under this, while non-tensor FP32 math is at least FP32_ACTIVE_PCT and
# above FP16's, is float32 training that leaves the tensor cores unused (every GPU that has GPM
# has tensor cores).
TENSOR_IDLE_PCT = 1.0
FP32_ACTIVE_PCT = 1.0


@dataclass(frozen=True)
class OtherUse:
    """Another process's use of a GPU over a span.

    Attributes:
        pid: Its PID as NVML lists it.
        name: Its name, already made printable by the NVML seam; None when unreadable.
        util_mean_pct: Its mean SM utilization over the readings that measured it, percent.
        mem_peak_mib: The most GPU memory it held, MiB.
    """

    pid: int
    name: str | None = None
    util_mean_pct: float | None = None
    mem_peak_mib: float | None = None

    def to_dict(self) -> dict:
        """The JSON-ready record in a cause's evidence."""
        return {
            "pid": self.pid,
            "name": self.name,
            "sm_util_mean_pct": None if self.util_mean_pct is None
            else round(self.util_mean_pct, 1),
            "mem_peak_mib": None if self.mem_peak_mib is None else round(self.mem_peak_mib, 1),
        }


@dataclass(frozen=True)
class GPUStats:
    """What one GPU showed over a span of training (an epoch or the whole run).

    Attributes:
        gpu: NVML index.
        util_samples: Readings with a utilization value (NaN readings are not counted).
        util_mean: Mean utilization, percent; None without readings.
        util_p95: 95th percentile of utilization, percent.
        device_idle_fraction: Share of the device's readings under the idle threshold, 0-1
            (`judged_idle_fraction` is the share the verdict is judged by).
        mem_peak_mib: Peak memory used on the device (by everyone), MiB.
        proc_mem_peak_mib: Peak memory this process held, MiB; None when never known.
        proc_seen: This process appeared in NVML's compute process list.
        others_seen: Other processes appeared in it.
        lost: NVML reported the GPU lost.
        sm_active_mean: Mean share of SMs busy (GPM), percent; None where GPM is unsupported.
        sm_occupancy_mean, tensor_active_mean, dram_bw_mean, fp32_active_mean,
            fp16_active_mean: Means of the other GPM percentages (see `gpu_watch.sensing.nvml`).
        energy_j: Energy the whole GPU used over the span, joules (NVML has no per-process
            energy); None when neither the counter nor power readings allow it.
        energy_method: "counter" (NVML's energy counter) or "power" (power readings integrated
            over time, where the counter is unsupported or was reset).
        power_mean_w: Mean power over the span, watts (`energy_j` over the time it covers).
        proc_util_samples: Readings with this process's own SM utilization (NVML attributed
            a figure to its PID); 0 when per-process utilization is not available.
        proc_util_mean: This process's mean SM utilization, percent.
        proc_util_p95: Its 95th percentile, percent.
        proc_idle_fraction: Share of those readings under the idle threshold, 0-1.
        others_util_mean: Mean summed SM utilization of the other processes, percent; None
            when unknown.
        others_busy_fraction: Share of readings in which they were at or above the idle
            threshold, 0-1.
        contended_fraction: Share of those readings in which they and this process both
            were at or above the threshold (both ran kernels, so both were slowed), 0-1.
        others_mem_peak_mib: The most memory they held together, MiB.
        procs_max: The most compute processes NVML listed at once (this one included); None
            when the list could not be read.
        others: Each other process seen, with its use of the GPU.
        readings: Sampler readings of the GPU in the span, whatever they held; None when not
            counted (statistics built by hand).
    """

    gpu: int
    util_samples: int = 0
    util_mean: float | None = None
    util_p95: float | None = None
    device_idle_fraction: float | None = None
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
    proc_util_samples: int = 0
    proc_util_mean: float | None = None
    proc_util_p95: float | None = None
    proc_idle_fraction: float | None = None
    others_util_mean: float | None = None
    others_busy_fraction: float | None = None
    contended_fraction: float | None = None
    others_mem_peak_mib: float | None = None
    procs_max: int | None = None
    others: tuple[OtherUse, ...] = ()
    readings: int | None = None

    @property
    def judged_by(self) -> str:
        """`BY_PROCESS` when this process's own utilization was measured, else `BY_DEVICE`."""
        return judged_by(self)

    @property
    def judged_idle_fraction(self) -> float | None:
        """The idle share that decides: this process's where measured, else the device's."""
        return judged_idle_fraction(self)

    @property
    def judged_util_mean(self) -> float | None:
        """This training's mean utilization (see :func:`judged_util_mean`)."""
        return judged_util_mean(self)

    @property
    def shared(self) -> bool:
        """Whether another process was on the GPU during the span (see :func:`shared`)."""
        return shared(self)

    @property
    def others_worked(self) -> bool:
        """Whether other processes ran kernels on the GPU during the span, or may have (see
        :func:`others_worked`)."""
        return others_worked(self)


# The rules behind GPUStats' properties live in plain functions, where the mutation run reaches
# them (it does not mutate decorated functions).
def judged_by(stats: GPUStats) -> str:
    """`BY_PROCESS` when this process's own utilization was measured, else `BY_DEVICE`."""
    return BY_PROCESS if stats.proc_util_samples else BY_DEVICE


def judged_idle_fraction(stats: GPUStats) -> float | None:
    """The idle share that decides: this process's where measured, else the device's."""
    return stats.proc_idle_fraction if stats.proc_util_samples else stats.device_idle_fraction


def judged_util_mean(stats: GPUStats) -> float | None:
    """This training's mean utilization over the span, percent: its own where NVML measured
    it; else the device's, unless other processes were on the GPU, whose work the device's
    figure may be (None: unknown)."""
    if stats.proc_util_samples:
        return stats.proc_util_mean
    return None if shared(stats) else stats.util_mean


def shared(stats: GPUStats) -> bool:
    """Whether another process was on the GPU during the span: one other than this process
    was listed where NVML knows this process's PID (it listed it here, or measured its
    utilization here); else, where any listed PID may be this process's own, two or more
    were listed at once."""
    if stats.proc_seen or stats.proc_util_samples:
        return stats.others_seen or bool(stats.others)
    return (stats.procs_max or 0) > 1


def others_worked(stats: GPUStats) -> bool:
    """Whether other processes ran kernels on the GPU during the span, or may have: it was
    shared, and they were not all measured running none (holding memory only)."""
    return shared(stats) and not (stats.others and
                                  all(o.util_mean_pct == 0 for o in stats.others))


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
        facts: The user's setup (backend, input pipeline, distribution, device scope), which
            picks the remedies that fit it.
        no_process_utilization: GPUs (NVML indices) on which NVML refused per-process
            utilization (``NotSupported``, or a driver without the function).
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
    facts: RunFacts = field(default_factory=RunFacts)
    no_process_utilization: Sequence[int] = ()


@dataclass(frozen=True)
class Judgement:
    """A verdict with its causes, the verdict of each watched GPU (by NVML index), and what
    each GPU's verdict was judged by (`BY_PROCESS` or `BY_DEVICE`)."""

    verdict: str
    causes: list[Cause] = field(default_factory=list)
    gpu_verdicts: dict[int, str] = field(default_factory=dict)
    judged_by: dict[int, str] = field(default_factory=dict)


def on_gpu(setting: Setting) -> bool:
    """Whether training compute ran on a GPU, as far as the framework tells."""
    if setting.compute_on_gpu is not None:
        return setting.compute_on_gpu
    return bool(setting.framework_gpus)


def gpu_verdict(stats: GPUStats, nvml_error: str | None) -> str:
    """One GPU's verdict over a span, given that training ran on the GPUs.

    This process's own utilization decides where NVML measured it. Otherwise the device's
    does: an idle device means an idle training (the device's figure bounds every process's),
    and a busy one counts as this training's work only when no other process was listed.
    """
    if nvml_error is not None or stats.lost:
        return UNMONITORED
    if stats.readings == 0:
        return UNMEASURED
    if stats.proc_util_samples:
        idle = stats.proc_idle_fraction
        return IDLE if idle is not None and idle > IDLE_FRACTION_LIMIT else OK
    if not stats.util_samples:
        return UNMONITORED
    if (stats.device_idle_fraction is not None
            and stats.device_idle_fraction > IDLE_FRACTION_LIMIT):
        return IDLE
    return UNMONITORED if stats.shared else OK


def loop_causes(setting: Setting, idle: Sequence[GPUStats], wait_fraction: float | None,
                other_fraction: float | None, hooks: Sequence[tuple[str, float]] = (),
                busy: Sequence[int] = ()) -> list[Cause]:
    """Why the training loop left idle GPUs waiting: for data (`input_bound`, from the data
    wait alone), or in the callbacks and Keras' bookkeeping between steps (`slow_callbacks`,
    naming the callbacks whose batch hooks took longest; only where no GPU of this training
    was kept busy: a loop that keeps one GPU busy does not starve the others between
    steps)."""
    causes = []
    if wait_fraction is not None and wait_fraction > INPUT_BOUND_WAIT_FRACTION:
        causes.append(cause(
            "input_bound",
            f"The training loop waited for data {wait_fraction:.0%} of its time after step 0, "
            f"leaving {_gpu_names(idle)} idle.",
            facts=setting.facts,
            wait_fraction=round(wait_fraction, 3),
        ))
    if not busy and other_fraction is not None and other_fraction > SLOW_CALLBACKS_FRACTION:
        named = [{"name": name, "hook_s": round(seconds, 3)}
                 for name, seconds in hooks[:NAMED_CALLBACKS] if seconds > 0]
        spent = (f": most in {', '.join(c['name'] for c in named)}" if named
                 else " (no callback's batch hooks were timed)")
        causes.append(cause(
            "slow_callbacks",
            f"The training loop spent {other_fraction:.0%} of its time after step 0 between "
            f"steps, in callbacks and Keras' bookkeeping{spent}, leaving {_gpu_names(idle)} "
            "idle.",
            facts=setting.facts,
            other_fraction=round(other_fraction, 3),
            callbacks=named,
        ))
    return causes


def judge(setting: Setting, gpus: Sequence[GPUStats], wait_fraction: float | None,
          other_fraction: float | None = None,
          hooks: Sequence[tuple[str, float]] = ()) -> Judgement:
    """The verdict for a span of training (an epoch or the run) and its causes.

    Args:
        setting: The run's facts (placement, framework, NVML, environment).
        gpus: What each watched GPU showed over the span.
        wait_fraction: Share of the span's loop time spent waiting for data, 0-1.
        other_fraction: Share of the span's loop time spent between steps elsewhere
            (callbacks, Keras' bookkeeping), 0-1.
        hooks: The callbacks whose batch hooks took longest: (class name, seconds), slowest
            first.
    """
    if not on_gpu(setting):
        return Judgement(CPU_FALLBACK, cpu_fallback_causes(setting, gpus))
    per_gpu = {s.gpu: gpu_verdict(s, setting.nvml_error) for s in gpus}
    bases = {s.gpu: s.judged_by for s in gpus}
    causes = attribution_causes(setting, gpus) + activity_causes(setting, gpus, per_gpu)
    sharing = shared_causes(gpus, per_gpu)
    if per_gpu and all(v == UNMEASURED for v in per_gpu.values()):
        return Judgement(UNMEASURED, causes + sharing, per_gpu, bases)
    if not per_gpu or all(v in (UNMONITORED, UNMEASURED) for v in per_gpu.values()):
        return Judgement(UNMONITORED, causes + sharing, per_gpu, bases)
    idle = [s for s in gpus if per_gpu[s.gpu] == IDLE]
    if not idle:
        return Judgement(OK, causes + sharing, per_gpu, bases)
    busy = [s.gpu for s in gpus if per_gpu[s.gpu] == OK]
    causes[:0] = loop_causes(setting, idle, wait_fraction, other_fraction, hooks, busy)
    if busy:
        causes.append(cause(
            "process_not_on_gpu",
            f"{_gpu_names(idle)} sat idle while {_gpu_list(busy)} worked: "
            "check the distribution setup and device placement.",
            severity=WARNING,
            facts=setting.facts,
            idle_gpus=[s.gpu for s in idle],
            busy_gpus=busy,
        ))
    return Judgement(IDLE, causes + sharing, per_gpu, bases)


def cpu_fallback_causes(setting: Setting, gpus: Sequence[GPUStats]) -> list[Cause]:
    """Why training ran on the CPU: the most specific explanation first, then every other
    finding of the environment check that blocks the GPU, in the order a user must fix
    them."""
    causes: list[Cause] = []
    facts = setting.facts
    env = {c.code: c for c in setting.environment if blocks_gpu(c)}
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
    causes.extend(sorted(env.values(), key=fix_rank))
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
    """GPUs judged by the device's utilization because NVML gave this process none of its own:
    its PID is not listed (a container's PID namespace, where NVML reports host PIDs), the
    process list could not be read, the GPU does not report per-process utilization (MIG
    instances, some drivers), or NVML had no sample of it yet (a process listed without running
    kernels reads 0 % only after a quiet period, see `gpu_watch.sensing.nvml.PROC_UTIL_QUIET_S`)."""
    fallback = [s for s in gpus if not s.proc_util_samples and s.util_samples and not s.lost]
    if setting.nvml_error is not None or not fallback:
        return []
    hidden = [s.gpu for s in fallback if not s.proc_seen and s.procs_max is not None]
    unlisted = [s.gpu for s in fallback if not s.proc_seen and s.procs_max is None]
    refused = set(setting.no_process_utilization)
    unsupported = [s.gpu for s in fallback if s.proc_seen and s.gpu in refused]
    unsampled = [s.gpu for s in fallback if s.proc_seen and s.gpu not in refused]
    reasons = []
    if hidden:
        reasons.append(f"NVML does not list this process's PID on {_gpu_list(hidden)} (in a "
                       "container's PID namespace NVML reports host PIDs)")
    if unlisted:
        reasons.append(f"NVML could not list the processes on {_gpu_list(unlisted)}")
    if unsupported:
        reasons.append(f"{_gpu_list(unsupported)} report{'s' if len(unsupported) == 1 else ''}"
                       " no per-process utilization (MIG instances and some drivers do not)")
    if unsampled:
        reasons.append(f"NVML had no sample of this process's own utilization on "
                       f"{_gpu_list(unsampled)} yet (a process that runs no kernels reads 0 % "
                       "only after a quiet period)")
    shared_gpus = [s.gpu for s in fallback if s.shared]
    message = "; ".join(reasons) + ": the device's utilization is used instead"
    message += (f", and on {_gpu_list(shared_gpus)}, which other processes shared, this "
                "training's own use is unknown." if shared_gpus else ".")
    if hidden or unlisted:
        remedy = None
    elif unsupported:
        remedy = ("Nothing to fix in the training. For its own figures, train on a whole GPU "
                  "(not a MIG instance) with a driver that reports per-process utilization "
                  "(`nvidia-smi pmon -c 1` shows whether it does).")
    else:
        remedy = ("Nothing to fix: this training's own figure comes with NVML's next sample "
                  "of it, or reads 0 % once it has run no kernels for a quiet period.")
    return [cause("process_not_attributable", message[0].upper() + message[1:], remedy,
                  facts=setting.facts, gpus=[s.gpu for s in fallback], pid_not_listed=hidden,
                  process_list_unreadable=unlisted, no_process_utilization=unsupported,
                  no_sample_yet=unsampled)]


def shared_causes(gpus: Sequence[GPUStats], per_gpu: dict[int, str]) -> list[Cause]:
    """`gpu_shared` for each watched GPU that other processes used while this training ran:
    they ran kernels on it, or their use cannot be measured (processes measured holding memory
    without running kernels do not count). Their PIDs, names, SM share and memory are the
    evidence; the message says what it meant for this training."""
    causes = []
    for stats in gpus:
        if not stats.others_worked:
            continue
        others = sorted(stats.others, key=lambda o: -(o.util_mean_pct or 0.0))
        if others:
            names = ", ".join(_process_text(o) for o in others[:NAMED_PROCESSES])
            if len(others) > NAMED_PROCESSES:
                names += f" and {len(others) - NAMED_PROCESSES} more"
            them = "them" if len(others) > 1 else f"PID {others[0].pid}"
        else:  # a run recorded without per-process details: only the count is known
            count = max(1, (stats.procs_max or 2) - 1)
            names = them = "another process" if count == 1 else f"{count} other processes"
        verdict = per_gpu.get(stats.gpu)
        device = "" if stats.util_mean is None else f" {stats.util_mean:.0f}%"
        if not stats.proc_seen and not stats.proc_util_samples:
            effect = ("NVML does not list this training's PID, so one of them may be this "
                      "training: the device's utilization cannot tell whose work it was.")
        elif verdict == IDLE:
            own = "" if stats.proc_util_mean is None else \
                f" (its own SM use {stats.proc_util_mean:.0f}%)"
            effect = f"your training was idle{own} while the GPU was{device} busy with {them}."
        elif verdict == UNMONITORED:
            effect = "this training's own use of the GPU cannot be told apart from theirs."
        elif stats.contended_fraction:
            effect = (f"both ran kernels {stats.contended_fraction:.0%} of the time, and your "
                      "steps ran slower then.")
        elif stats.contended_fraction == 0:
            effect = "they ran while your training did not, so they did not slow your steps."
        else:
            effect = "your steps may have run slower while they ran."
        causes.append(cause(
            "gpu_shared",
            f"GPU {stats.gpu} was shared with {names}: {effect}",
            gpu=stats.gpu,
            processes=[o.to_dict() for o in others],
            others_util_mean_pct=_round(stats.others_util_mean),
            others_busy_fraction=_round(stats.others_busy_fraction, 3),
            contended_fraction=_round(stats.contended_fraction, 3),
            others_mem_peak_mib=_round(stats.others_mem_peak_mib),
            proc_util_mean_pct=_round(stats.proc_util_mean),
            device_util_mean_pct=_round(stats.util_mean),
        ))
    return causes


def _process_text(other: OtherUse) -> str:
    text = f"PID {other.pid}"
    if other.name:
        text += f" ({other.name})"
    details = []
    if other.util_mean_pct is not None:
        details.append(f"{other.util_mean_pct:.0f}% SM")
    if other.mem_peak_mib is not None:
        details.append(f"{other.mem_peak_mib:,.0f} MiB")
    return text + (f" [{', '.join(details)}]" if details else "")


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _gpu_list(gpus: Sequence[int]) -> str:
    return ("GPU " if len(gpus) == 1 else "GPUs ") + ", ".join(map(str, gpus))


def activity_causes(setting: Setting, gpus: Sequence[GPUStats],
                    per_gpu: dict[int, str]) -> list[Cause]:
    """How well a GPU judged `ok` was used, where GPM tells (Hopper and newer): SMs mostly idle
    under a busy utilization (a warning), tensor cores idle in float32 training (a hint).
    Neither changes the verdict; a GPU without GPM readings gets neither, and so does a GPU
    other processes worked on: GPM measures the whole GPU, so its figures there are not this
    training's."""
    causes = []
    gpus = [s for s in gpus if not s.others_worked]
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
