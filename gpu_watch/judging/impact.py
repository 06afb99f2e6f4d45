"""What each cause cost a run, and what fixing it could buy at most.

Pure functions over what a run folder records: `run.json` (the verdict, the causes, the wait
share, each GPU's judged idle share, the energy) and the rows of `samples.csv` and
`batches.csv`. The same code serves a run while it is written (`Monitor` feeds a
`usage.UsageMeter` the rows it writes) and a run folder read back (`run_impacts`), so a recorded
run can be re-judged and runs can be totalled across a log folder. How much the training used
each GPU (idle seconds, idle GPU-seconds, the energy drawn meanwhile) is `gpu_watch.judging.usage`'s
rule; this module only turns those sums into costs.

Each cause gets one `Impact`: the wall seconds it cost, the GPU-seconds the watched GPUs sat
idle because of it, the energy they drew meanwhile (whole GPUs: NVML measures no energy per
process), and the speed-up a fix could bring at most, each with its method. A figure nothing
measures stays None and `not_measured` says why: no cost is invented.

"At most" is meant literally. For `input_bound` the bound is the run's wall time over the wall
time with the waiting removed: a pipeline that keeps up removes the waiting and nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpu_watch.judging.usage import BasisUse, RunUsage, missing, usage_of_frames
from gpu_watch.runlog import RunRecord

# Which figure decided a GPU's verdict (run.json `gpu_judged_by`, `judged[gpu].by`), and the
# samples.csv column that holds it. "judged" is the column the verdict itself writes.
# Causes of `cpu_fallback` that leave GPUs the process could have used unused.
GPU_LEFT_UNUSED = ("forced_cpu_placement", "gpus_hidden", "cuda_libs_missing", "driver_too_old",
                   "cpu_only_build", "gpu_not_supported", "cuda_init_failed",
                   "backend_not_installed")
NOT_MEASURED_WHY = {
    "no_nvidia_driver": "no GPU could be seen (no NVIDIA driver), so no GPU time was lost "
                        "that anything measures",
    "low_sm_activity": "the GPU was busy; how much faster fuller kernels would run is not "
                       "measured",
    "tensor_cores_unused": "the GPU was busy; how much faster mixed precision would run is not "
                           "measured",
    "process_not_attributable": "not a cost: it says which figure judged the GPU",
    "gpu_memory_contention": "memory held by other processes costs no time that is measured",
    "gpu_memory_limited": "a memory limit costs no time that is measured",
    "allocator_misconfigured": "an allocator setting costs no time that is measured",
    "nvml_unavailable": "NVML could not be read, so nothing was measured",
}
_NOTHING_MEASURES = "nothing in the run measures what this cost"


@dataclass(frozen=True, slots=True)
class Impact:
    """What one cause cost a run, and what fixing it could buy.

    Attributes:
        wall_lost_s: Wall seconds the cause cost: the time a fix could save at most.
        gpu_idle_s: GPU-seconds the watched GPUs sat idle because of it (one GPU idle for
            10 s is 10; four for 10 s, 40).
        energy_lost_j: Joules the watched GPUs drew meanwhile (whole GPUs).
        energy_method: How `energy_lost_j` was found.
        speedup_bound_x: The run's wall time over the wall time with `wall_lost_s` removed: a
            fix makes it at most this much faster (a ratio, 1.7 reads "up to 1.7x").
        speedup_measured_x: A speed-up measured, not bounded (the GPU timed on the same model
            after a training that ran on the CPU).
        method: How the time figures were found.
        not_measured: Why a figure is None; None when every figure was measured.
    """

    wall_lost_s: float | None = None
    gpu_idle_s: float | None = None
    energy_lost_j: float | None = None
    energy_method: str | None = None
    speedup_bound_x: float | None = None
    speedup_measured_x: float | None = None
    method: str | None = None
    not_measured: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready record stored as a cause's ``impact`` in `run.json`."""
        def rounded(value: float | None, digits: int) -> float | None:
            return None if value is None else round(value, digits)

        return {
            "wall_lost_s": rounded(self.wall_lost_s, 3),
            "gpu_idle_s": rounded(self.gpu_idle_s, 3),
            "energy_lost_j": rounded(self.energy_lost_j, 1),
            "energy_method": self.energy_method,
            "speedup_bound_x": rounded(self.speedup_bound_x, 3),
            "speedup_measured_x": rounded(self.speedup_measured_x, 3),
            "method": self.method,
            "not_measured": self.not_measured,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Impact:
        """Read back a record written by :meth:`to_dict` (unknown keys are ignored)."""
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


# -- the rules ---------------------------------------------------------------------------------


def _judged_record(record: RunRecord, gpu: int) -> Mapping[str, Any]:
    judged = record.judged
    figures = judged.get(str(gpu)) if isinstance(judged, Mapping) else None
    return figures if isinstance(figures, Mapping) else {}


def _basis(record: RunRecord, usage: RunUsage, gpu: int) -> BasisUse | None:
    """The GPU's use by the figure that judged it: the verdict's own column where the run has
    it, else the basis `run.json` names (this process's own, or the device's)."""
    uses = usage.gpus.get(gpu) or {}
    if "judged" in uses:
        return uses["judged"]
    by = _judged_record(record, gpu).get("by") or (record.gpu_judged_by or {}).get(str(gpu))
    return uses.get(by or "device")


def _idle_seconds(record: RunRecord, usage: RunUsage, gpu: int) -> float | None:
    """Seconds after step 0 the GPU sat idle by the verdict's measure: the judged idle share
    (`run.json` `judged`) over the span, else the share of its readings' time."""
    span = usage.span_s
    share = _judged_record(record, gpu).get("idle_fraction")
    if share is None:
        use = _basis(record, usage, gpu)
        share = use.idle_fraction if use is not None else None
    if share is None or span is None:
        return None
    return float(share) * span


def _idle_power(record: RunRecord, usage: RunUsage, gpu: int) -> tuple[float | None, str]:
    """The GPU's power while idle, W, and where it came from."""
    use = _basis(record, usage, gpu)
    if use is not None and use.idle_power_w is not None:
        return use.idle_power_w, "its mean power while idle"
    energy = ((record.energy or {}).get("gpus") or {}).get(str(gpu)) or {}
    power = energy.get("power_mean_w")
    if power is not None:
        return float(power), "its mean power over the run"
    return None, "no power reading"


def _energy(record: RunRecord, usage: RunUsage, seconds: Mapping[int, float]
            ) -> tuple[float | None, str]:
    """Energy the GPUs drew over their idle seconds, and the method, in words."""
    total, sources = 0.0, set()
    for gpu, idle_s in seconds.items():
        power, source = _idle_power(record, usage, gpu)
        if power is None:
            return None, (f"not measured: GPU {gpu} has {source}")
        total += power * idle_s
        sources.add(source)
    source = " / ".join(sorted(sources))
    return total, f"idle seconds x {source} (whole GPU: NVML has no per-process energy)"


def _bound(duration_s: float | None, lost_s: float) -> float | None:
    """The run's wall time over the wall time with `lost_s` removed; None where nothing
    would be left (every second lost) or the duration is unknown."""
    if duration_s is None or duration_s <= 0 or lost_s >= duration_s:
        return None
    return duration_s / (duration_s - lost_s)


def _watched(record: RunRecord) -> list[int]:
    return [int(d["nvml_index"]) for d in record.devices or []
            if isinstance(d, Mapping) and d.get("nvml_index") is not None]


def _idle_gpus(record: RunRecord) -> list[int]:
    verdicts = record.gpu_verdicts or {}
    idle = [int(g) for g, v in verdicts.items() if v == "idle"]
    return sorted(idle) or _watched(record)


def input_bound_impact(record: RunRecord, usage: RunUsage,
                       evidence: Mapping[str, Any]) -> Impact:
    """The waiting for data: the wait share times the loop's time, the idle GPUs idle
    meanwhile, and the wall time with the waiting removed as the bound."""
    wait = record.wait if isinstance(record.wait, Mapping) else {}
    fraction = wait.get("fraction")
    if fraction is None:
        fraction = evidence.get("wait_fraction")
    loop_s = wait.get("loop_s") if wait.get("loop_s") is not None else usage.loop_s
    if fraction is None or not loop_s:
        return Impact(not_measured="no wait share was measured")
    measure = wait.get("measure")
    lost = float(fraction) * float(loop_s)
    # Batches whose wait nothing measured waited too, and a fix removes that as well: step 0's
    # (compiling hides it; never longer than step 0 took) and the first of each later epoch
    # (fetched before its hook began). Each is taken to have waited as the mean batch did.
    mean_wait = lost / usage.batches if usage.batches else 0.0
    unseen = min(mean_wait, usage.step0_end_s or 0.0) + mean_wait * usage.epoch_starts
    lost += unseen
    gpus = _idle_gpus(record)
    energy, energy_method = _energy(record, usage, {g: lost for g in gpus})
    bound = _bound(usage.duration_s, lost)
    return Impact(
        wall_lost_s=lost,
        gpu_idle_s=lost * len(gpus),
        energy_lost_j=energy,
        energy_method=energy_method,
        speedup_bound_x=bound,
        method=(f"wait share ({measure or 'recorded'}) x the loop's {float(loop_s):.1f} s after "
                f"step 0, plus {unseen:.2f} s for the batches whose wait was not measured (step "
                "0's and each epoch's first: the mean batch's wait each); the bound is the "
                "run's wall time over it with the waiting removed"),
        not_measured=None if bound is not None else
        "no bound: the run spent all its time waiting",
    )


def slow_callbacks_impact(record: RunRecord, usage: RunUsage,
                          evidence: Mapping[str, Any]) -> Impact:
    """The time between steps spent in callbacks: the named callbacks' batch hooks, timed (at
    most the loop's time between steps, which Keras' own bookkeeping shares), the idle GPUs
    idle meanwhile, and the wall time with it removed as the bound."""
    breakdown = record.breakdown if isinstance(record.breakdown, Mapping) else {}
    other = breakdown.get("other_s")
    if other is None and evidence.get("other_fraction") is not None and usage.loop_s:
        other = float(evidence["other_fraction"]) * usage.loop_s
    if other is None:
        return Impact(not_measured="the time between steps was not measured")
    hooks = sum(float(c.get("hook_s") or 0.0) for c in evidence.get("callbacks") or ()
                if isinstance(c, Mapping))
    lost = min(float(other), hooks) if hooks > 0 else float(other)
    gpus = _idle_gpus(record)
    energy, energy_method = _energy(record, usage, {g: lost for g in gpus})
    bound = _bound(usage.duration_s, lost)
    timed = ("the named callbacks' batch hooks, timed," if hooks > 0
             else "the loop's time between steps (no callback's hooks were timed),")
    return Impact(
        wall_lost_s=lost,
        gpu_idle_s=lost * len(gpus),
        energy_lost_j=energy,
        energy_method=energy_method,
        speedup_bound_x=bound,
        method=(f"{timed} at most the {float(other):.1f} s the loop spent between steps "
                "after step 0; the bound is the run's wall time over it with that time "
                "removed"),
        not_measured=None if bound is not None else
        "no bound: the run spent all its time in callbacks",
    )


def idle_gpus_impact(record: RunRecord, usage: RunUsage,
                     evidence: Mapping[str, Any]) -> Impact:
    """GPUs of a multi-GPU training left idle while others worked: their idle GPU-seconds
    and energy; the bound is linear scaling over every GPU (data parallelism at best)."""
    idle = [int(g) for g in evidence.get("idle_gpus") or []]
    busy = [int(g) for g in evidence.get("busy_gpus") or []]
    seconds = {g: _idle_seconds(record, usage, g) for g in idle}
    if not idle or any(s is None for s in seconds.values()):
        return Impact(not_measured="the idle GPUs' time was not measured")
    energy, energy_method = _energy(record, usage, seconds)
    span = usage.span_s or 0.0
    lost = span * (1 - len(busy) / (len(busy) + len(idle))) if busy else 0.0
    bound = _bound(usage.duration_s, lost) if busy else None
    return Impact(
        wall_lost_s=lost if busy else None,
        gpu_idle_s=sum(seconds.values()),
        energy_lost_j=energy,
        energy_method=energy_method,
        speedup_bound_x=bound,
        method=(f"idle GPUs' judged idle share x the {span:.1f} s after step 0; the bound "
                f"spreads the loop over all {len(busy) + len(idle)} GPUs, "
                "which data parallelism reaches at best"),
    )


def cpu_fallback_impact(record: RunRecord, usage: RunUsage) -> Impact:
    """A training on the CPU with GPUs there: every GPU's whole run unused; the speed-up only
    where the GPU was timed on the same model (`run.json` ``gpu_trial``)."""
    gpus = len(_watched(record)) or int((record.nvml or {}).get("gpus_seen") or 0)
    if not gpus or usage.duration_s is None:
        return Impact(not_measured="no GPU was seen")
    energy_total = (record.energy or {}).get("total_j")
    if energy_total is not None:
        energy, energy_method = float(energy_total), (
            "the watched GPUs' energy over the run (whole GPUs, unused by this training)")
    else:
        energy, energy_method = None, "not measured: the GPUs' energy was not read"
    trial = record.gpu_trial if isinstance(record.gpu_trial, Mapping) else {}
    speedup = measured_speedup(trial.get("cpu_step_s"), trial.get("gpu_step_s"))
    lost = usage.loop_s * (1 - 1 / speedup) if speedup is not None and speedup > 1 else None
    why = None
    if speedup is None:
        why = ("how fast the GPU runs this model was not measured: "
               + (trial.get("reason") or "GPUWatch(measure_gpu_speedup=True) times it"))
    return Impact(
        wall_lost_s=lost,
        gpu_idle_s=gpus * usage.duration_s,
        energy_lost_j=energy,
        energy_method=energy_method,
        speedup_measured_x=speedup,
        method=(f"{gpus} GPU(s) unused for the run's {usage.duration_s:.1f} s"
                + ("; the speed-up: the CPU's step time over the GPU's, both timed on copies "
                   "of the model after training" if speedup is not None else "")),
        not_measured=why,
    )


def measured_speedup(cpu_step_s: float | None, gpu_step_s: float | None) -> float | None:
    """How much faster the GPU ran a step than the CPU did: the CPU's step time over the
    GPU's; None where either is unknown or not positive."""
    if missing(cpu_step_s) or missing(gpu_step_s) or cpu_step_s <= 0 or gpu_step_s <= 0:
        return None
    return float(cpu_step_s) / float(gpu_step_s)


def shared_impact(record: RunRecord, usage: RunUsage,
                  evidence: Mapping[str, Any]) -> Impact:
    """Other processes on a GPU: the seconds they were busy on it while this training sat idle
    there, by this training's own figure."""
    gpu = evidence.get("gpu")
    if gpu is None:
        return Impact(not_measured=_NOTHING_MEASURES)
    gpu = int(gpu)
    uses = usage.gpus.get(gpu) or {}
    use = uses.get("judged")
    if use is None and _basis(record, usage, gpu) is uses.get("process"):
        use = uses.get("process")
    if use is None or not use.measured_s:
        return Impact(not_measured="NVML gave no figure of this training's own on that GPU, "
                                   "so when it was starved cannot be told")
    return Impact(
        wall_lost_s=use.starved_s,
        gpu_idle_s=use.starved_s,
        energy_lost_j=use.starved_energy_all_j,
        energy_method="power integrated over those seconds (whole GPU, their work included; "
        "seconds without a power reading at the mean of those with one)"
        if use.starved_power_s else "not measured: no power reading",
        method=(f"seconds in which other processes were busy on GPU {gpu} while this "
                "training's own use was under the idle threshold"),
        not_measured="how much faster it would run alone is not measured: their work and "
                     "this training's overlap",
    )


def cause_impacts(record: RunRecord, usage: RunUsage) -> list[Impact]:
    """One `Impact` per cause of `record.causes`, in their order.

    The GPU time of a training on the CPU is counted once, under the cause that explains the
    verdict (the first cause); the others say where it is counted, so totals never count it
    twice.
    """
    causes = [c for c in record.causes or [] if isinstance(c, Mapping)]
    impacts = []
    lead = causes[0].get("code") if causes and record.verdict == "cpu_fallback" else None
    for index, item in enumerate(causes):
        code = item.get("code")
        evidence = item.get("evidence") or {}
        if record.verdict == "cpu_fallback" and index > 0:
            impact = Impact(not_measured=f"the GPU time left unused is counted once, under "
                                         f"{lead}")
        elif lead is not None and code in GPU_LEFT_UNUSED:
            impact = cpu_fallback_impact(record, usage)
        elif code == "input_bound":
            impact = input_bound_impact(record, usage, evidence)
        elif code == "slow_callbacks":
            impact = slow_callbacks_impact(record, usage, evidence)
        elif code == "process_not_on_gpu" and evidence.get("idle_gpus"):
            impact = idle_gpus_impact(record, usage, evidence)
        elif code == "gpu_shared":
            impact = shared_impact(record, usage, evidence)
        else:
            impact = Impact(not_measured=NOT_MEASURED_WHY.get(str(code), _NOTHING_MEASURES))
        impacts.append(impact)
    return impacts


def with_impacts(record: RunRecord, usage: RunUsage) -> list[dict[str, Any]]:
    """`record.causes` with each cause's ``impact`` record set (copies; `record` is
    unchanged)."""
    causes = [c for c in record.causes or [] if isinstance(c, Mapping)]
    return [{**c, "impact": impact.to_dict()}
            for c, impact in zip(causes, cause_impacts(record, usage), strict=True)]


def run_impacts(run: Any) -> list[dict[str, Any]]:
    """Each cause of a run read back (`runlog.Run`) with its ``impact``: the one `run.json`
    stores, else computed now from the run folder (runs written before impacts existed)."""
    causes = [c for c in run.record.causes or [] if isinstance(c, Mapping)]
    if all(isinstance(c.get("impact"), Mapping) for c in causes):
        return [dict(c) for c in causes]
    return with_impacts(run.record, usage_of_frames(run.record, run.samples, run.batches))


# -- words -------------------------------------------------------------------------------------


def seconds_text(seconds: float) -> str:
    """Seconds in the unit that reads best: "5.2 s", "12 min", "3.4 h"."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.1f} s"


def joules_text(joules: float) -> str:
    """Joules in the unit that reads best: "850 J", "0.6 kJ" from 100 J, "4.6 MJ"."""
    if joules >= 1e6:
        return f"{joules / 1e6:.1f} MJ"
    if joules >= 100:
        return f"{joules / 1e3:.1f} kJ"
    return f"{joules:.0f} J"


# Causes whose cost is wall time the loop lost: what the time went to, and what would win it
# back.
_WALL_TIME_WORDS = {
    "input_bound": ("training waited for data", "a pipeline that keeps up"),
    "slow_callbacks": ("callbacks' batch hooks took", "cheaper or rarer hooks"),
}


def impact_sentence(code: str, impact: Impact, duration_s: float | None) -> str | None:
    """One sentence for a reader: what the cause cost and what a fix could buy; None when
    nothing was measured."""
    if impact.gpu_idle_s is None and impact.wall_lost_s is None:
        return None
    energy = (f", about {joules_text(impact.energy_lost_j)}"
              if impact.energy_lost_j is not None else "")
    lost = impact.wall_lost_s
    words = _WALL_TIME_WORDS.get(code)
    if words is not None and lost is not None:
        spent, fix = words
        share = (f"{lost / duration_s:.0%} of the run's time ({lost:.1f} of {duration_s:.1f} s)"
                 if duration_s else f"{lost:.1f} s")
        text = f"{spent} {share} with the GPU idle{energy}"
        if impact.speedup_bound_x is not None:
            text += f"; {fix} would make it up to {impact.speedup_bound_x:.1f}x faster"
        return f"{code}: {text}."
    text = f"{seconds_text(impact.gpu_idle_s or 0.0)} of GPU time left idle{energy}"
    if impact.speedup_measured_x is not None:
        text += f"; the GPU ran this model {impact.speedup_measured_x:.1f}x faster when timed"
    elif impact.speedup_bound_x is not None:
        text += f"; a fix would make it up to {impact.speedup_bound_x:.1f}x faster"
    return f"{code}: {text}."


def first_impact_line(causes: Sequence[Mapping[str, Any]], duration_s: float | None
                      ) -> str | None:
    """The sentence for the costliest cause (most GPU-seconds idle, then wall time lost);
    None where no cause has a measured cost."""
    best: str | None = None
    best_cost = (-math.inf, -math.inf)  # (GPU-seconds idle, wall seconds lost)
    for item in causes:
        record = item.get("impact") if isinstance(item, Mapping) else None
        if not isinstance(record, Mapping):
            continue
        impact = Impact.from_dict(record)
        sentence = impact_sentence(str(item.get("code")), impact, duration_s)
        if sentence is None:
            continue
        cost = (impact.gpu_idle_s or 0.0, impact.wall_lost_s or 0.0)
        if best is None or cost > best_cost:
            best, best_cost = sentence, cost
    return best


# -- across runs -------------------------------------------------------------------------------


@dataclass
class CauseTotal:
    """One cause's cost summed over runs.

    Attributes:
        code: The cause code.
        runs: Runs in which it was found.
        measured_runs: Of them, runs with a measured cost.
        gpu_idle_s: GPU-seconds left idle, summed over the runs that measured them; None
            when none did ("not measured" must not read as 0).
        energy_lost_j: Energy drawn meanwhile, summed likewise; None when none measured it.
        wall_lost_s: Wall seconds lost, summed likewise; None when none measured them.
    """

    code: str
    runs: int = 0
    measured_runs: int = 0
    gpu_idle_s: float | None = None
    energy_lost_j: float | None = None
    wall_lost_s: float | None = None


def run_cost(causes: Sequence[Mapping[str, Any]]) -> tuple[float | None, float | None]:
    """A run's GPU-seconds left idle and energy lost, summed over its causes' impacts; None
    for a figure none of them measured ("not measured" must not read as 0)."""
    idle = energy = None
    for item in causes:
        record = item.get("impact") if isinstance(item, Mapping) else None
        if not isinstance(record, Mapping):
            continue
        if record.get("gpu_idle_s") is not None:
            idle = (idle or 0.0) + record["gpu_idle_s"]
        if record.get("energy_lost_j") is not None:
            energy = (energy or 0.0) + record["energy_lost_j"]
    return idle, energy


def cause_totals(runs: Iterable[Sequence[Mapping[str, Any]]]) -> list[CauseTotal]:
    """Each cause's cost over runs (each run given as its causes with their impacts), the
    costliest first (GPU-seconds, then energy, then wall time)."""
    totals: dict[str, CauseTotal] = {}
    for causes in runs:
        for item in causes:
            code = str(item.get("code"))
            total = totals.setdefault(code, CauseTotal(code))
            total.runs += 1
            record = item.get("impact")
            if not isinstance(record, Mapping) or (record.get("gpu_idle_s") is None
                                                   and record.get("wall_lost_s") is None):
                continue
            total.measured_runs += 1
            for name in ("gpu_idle_s", "energy_lost_j", "wall_lost_s"):
                value = record.get(name)
                if value is not None:
                    setattr(total, name, (getattr(total, name) or 0.0) + value)
    return sorted(totals.values(),
                  key=lambda t: (-(t.gpu_idle_s or 0.0), -(t.energy_lost_j or 0.0),
                                 -(t.wall_lost_s or 0.0), t.code))
