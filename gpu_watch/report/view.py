"""The run as a reader sees it: per-GPU series, idle stretches, the verdict's words, the
banner and the epoch table, shared by the figures, the text summary and the HTML page.

Idle stretches and shares describe this training's own use of a GPU wherever NVML measured it
(`proc_util_pct`), as the verdict does; the device's utilization stays alongside. Missing
readings stay NaN, because "not measured" must not read as "idle".
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from gpu_watch import runlog
from gpu_watch.judging.impact import Impact, first_impact_line, impact_sentence, run_impacts
from gpu_watch.judging.usage import busy, idle, recorded_threshold_pct
from gpu_watch.report.advice import cpu_banner
from gpu_watch.runlog import Run

VERDICT_COLOURS = {
    "ok": "#2e7d32",
    "idle": "#e65100",
    "cpu_fallback": "#c62828",
    "unmonitored": "#6a1b9a",
    "unmeasured": "#757575",
}
NO_VERDICT_COLOUR = "#757575"
VERDICT_WORDS = {
    "ok": "OK: this training kept the GPU busy",
    "idle": "IDLE: training ran on the GPU but left it idle much of the time",
    "cpu_fallback": "CPU FALLBACK: training ran on the CPU, not the GPU",
    "unmonitored": "UNMONITORED: training uses a GPU, but its utilization could not be read",
    "unmeasured": "UNMEASURED: training ended before any GPU reading after step 0",
}

# -- reading the run -------------------------------------------------------------------------

# The wait measure of runs recorded before waits were timed that gave only a lower bound (the
# gaps between batch hooks): shown as ">=N".
GAPS_ONLY = "batch_gaps_only"


def floats(frame: pd.DataFrame | None, column: str) -> np.ndarray:
    """A column as floats, NaN where empty; all NaN when the column is absent."""
    if frame is None:
        return np.empty(0)
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)


def config_of(run: Run) -> dict[str, Any]:
    return run.record.config or {}


def threshold_pct(run: Run) -> float:
    return recorded_threshold_pct(config_of(run))


def idle_spans(time_s: np.ndarray, util_pct: np.ndarray, threshold_pct: float,
               interval_s: float) -> np.ndarray:
    """(start_s, end_s) rows where `util_pct` stayed under the threshold, for shading. A
    missing reading (NaN) is never idle. The idle *share* is not computed here: it is the
    one in `run.json`'s "judged", which the verdict was decided by."""
    if time_s.size == 0:
        return np.empty((0, 2))
    gaps = np.diff(time_s)
    typical_s = float(np.median(gaps)) if gaps.size else interval_s
    # NVML's utilization is the share of the last sample period, so a reading stands for the
    # time since the previous one; the first for one interval, but none before training began.
    starts = np.empty_like(time_s)
    starts[1:] = time_s[:-1]
    starts[0] = max(time_s[0] - typical_s, min(time_s[0], 0.0))
    under = idle(np.nan_to_num(util_pct, nan=math.inf), threshold_pct)
    edges = np.diff(np.concatenate(([0], under.astype(np.int8), [0])))
    first = np.flatnonzero(edges == 1)
    last = np.flatnonzero(edges == -1) - 1
    return np.column_stack((starts[first], time_s[last]))


@dataclass
class GPUSeries:
    """One watched GPU's readings, sorted by time.

    `judged_by` is "process" when this process's own utilization decided its verdict, else
    "device"; `judged_util_pct` is each reading's judged figure and `idle_spans` where it was
    under the threshold; `idle_fraction`, `judged_util_mean_pct` and `device_util_mean_pct`
    are the figures the verdict was decided by (step 0 left out), read from `run.json`.
    `others_util_pct` is the other processes' summed SM utilization (NaN where unknown), and
    `interval_s` the run's sampling interval (the time a lone reading stands for).
    """

    index: int
    name: str
    verdict: str | None
    time_s: np.ndarray
    util_pct: np.ndarray
    proc_util_pct: np.ndarray
    mem_used_mib: np.ndarray
    proc_mem_mib: np.ndarray
    mem_total_mib: float
    idle_spans: np.ndarray
    others_util_pct: np.ndarray
    judged_util_pct: np.ndarray
    sm_active_pct: np.ndarray = field(default_factory=lambda: np.empty(0))
    tensor_active_pct: np.ndarray = field(default_factory=lambda: np.empty(0))
    energy_j: float | None = None
    energy_method: str | None = None
    judged_by: str = "device"
    idle_fraction: float | None = None
    judged_util_mean_pct: float | None = None
    device_util_mean_pct: float | None = None
    interval_s: float = runlog.RECORDED_INTERVAL_S

    def others_busy_spans(self, threshold_pct: float) -> np.ndarray:
        """(start_s, end_s) rows where other processes were at or above the idle threshold."""
        others = busy(np.nan_to_num(self.others_util_pct, nan=-1.0), threshold_pct)
        # The idle finder over a series that is 0 where they were busy: same time model.
        return idle_spans(self.time_s, np.where(others, 0.0, 100.0), 50.0, self.interval_s)

    def others_busy_fraction(self, threshold_pct: float) -> float | None:
        """Share of the readings with a figure in which other processes were at or above the
        idle threshold, 0-1."""
        known = self.others_util_pct[~np.isnan(self.others_util_pct)]
        return float(busy(known, threshold_pct).mean()) if known.size else None

    @property
    def sm_active_mean_pct(self) -> float | None:
        """Mean SM activity (GPM), percent; None where the GPU has no GPM."""
        known = self.sm_active_pct[~np.isnan(self.sm_active_pct)]
        return float(known.mean()) if known.size else None

    @property
    def mem_peak_mib(self) -> float | None:
        known = self.mem_used_mib[~np.isnan(self.mem_used_mib)]
        return float(known.max()) if known.size else None

    @property
    def proc_mem_peak_mib(self) -> float | None:
        known = self.proc_mem_mib[~np.isnan(self.proc_mem_mib)]
        return float(known.max()) if known.size else None


def _others_util(columns: dict[str, np.ndarray], procs: np.ndarray) -> np.ndarray:
    """The other processes' utilization; for a run written before it was recorded, the
    device's utilization less this process's wherever NVML listed more than one process."""
    others = columns["others_util_pct"]
    if not np.isnan(others).all() or np.isnan(procs).all():
        return others
    with np.errstate(invalid="ignore"):
        estimate = np.clip(columns["util_pct"] - columns["proc_util_pct"], 0, 100)
        return np.where(procs > 1, estimate, np.nan)


def gpu_series(run: Run) -> list[GPUSeries]:
    devices = {}
    for device in run.record.devices or []:
        if isinstance(device, dict) and device.get("nvml_index") is not None:
            devices[int(device["nvml_index"])] = device
    samples = run.samples
    sample_gpu = floats(samples, "gpu")
    seen = {int(g) for g in np.unique(sample_gpu[~np.isnan(sample_gpu)])}
    verdicts = run.record.gpu_verdicts or {}
    judged_by = run.record.gpu_judged_by or {}
    judged = run.record.judged or {}
    threshold = threshold_pct(run)
    compiled_s = first_step_end_s(run)  # readings until then are not judged: not shaded
    interval_s = float(config_of(run).get("interval_s") or runlog.RECORDED_INTERVAL_S)
    gpus = []
    for index in sorted(set(devices) | seen):
        if index in seen:
            frame = samples[sample_gpu == index]
            columns = {name: floats(frame, name) for name in (
                "time_s", "util_pct", "proc_util_pct", "mem_used_mib", "proc_mem_mib",
                "mem_total_mib", "sm_active_pct", "tensor_active_pct", "others_util_pct",
                "procs", "judged_util_pct")}
        else:
            # No sampler rows for this GPU (an older run, or samples.csv lost): the readings
            # the batches carry are the next best timeline.
            batches = run.batches
            columns = {
                "time_s": floats(batches, "time_s"),
                "util_pct": floats(batches, f"gpu{index}_util_pct"),
                "mem_used_mib": floats(batches, f"gpu{index}_mem_used_mib"),
            }
            for name in ("proc_util_pct", "proc_mem_mib", "mem_total_mib", "sm_active_pct",
                         "tensor_active_pct", "others_util_pct", "procs", "judged_util_pct"):
                columns[name] = np.full(columns["time_s"].size, np.nan)
        keep = ~np.isnan(columns["time_s"])
        order = np.argsort(columns["time_s"][keep], kind="stable")
        columns = {name: values[keep][order] for name, values in columns.items()}
        device = devices.get(index, {})
        energy = energy_of(run).get(str(index)) or {}
        totals = columns.pop("mem_total_mib")
        total = device.get("mem_total_mib")
        if total is None and not np.isnan(totals).all():
            total = float(np.nanmax(totals))
        columns["others_util_pct"] = _others_util(columns, columns.pop("procs"))
        figures = judged.get(str(index)) or {}
        basis = figures.get("by") or judged_by.get(str(index)) or "device"
        gpus.append(GPUSeries(
            index=index,
            name=str(device.get("name") or "unknown GPU"),
            verdict=verdicts.get(str(index)),
            mem_total_mib=math.nan if total is None else float(total),
            idle_spans=idle_spans(columns["time_s"], np.where(
                columns["time_s"] <= compiled_s, np.nan, columns["judged_util_pct"]),
                threshold, interval_s),
            judged_by=basis,
            idle_fraction=runlog.number(figures.get("idle_fraction")),
            judged_util_mean_pct=runlog.number(figures.get("util_mean_pct")),
            device_util_mean_pct=runlog.number(figures.get("device_util_mean_pct")),
            energy_j=runlog.number(energy.get("energy_j")),
            energy_method=energy.get("method"),
            interval_s=interval_s,
            **columns,
        ))
    return gpus


def first_step_end_s(run: Run) -> float:
    """When step 0 (compilation, the first batch) ended, seconds since training started;
    -inf without batches."""
    time_s = floats(run.batches, "time_s")
    known = time_s[~np.isnan(time_s)]
    return float(known.min()) if known.size else -math.inf


def energy_of(run: Run) -> dict[str, Any]:
    """`run.json`'s energy per GPU (NVML index as text -> energy_j, method, power_mean_w)."""
    energy = run.record.energy
    gpus = energy.get("gpus") if isinstance(energy, dict) else None
    return gpus if isinstance(gpus, dict) else {}




ENERGY_METHODS = {
    "counter": "NVML's energy counter",
    "power": "power readings integrated over time",
    "mixed": "the energy counter where supported, power readings elsewhere",
}


def energy_text(joules: float) -> str:
    """Joules in the unit that reads best: "850 J", "12.3 kJ", "4.56 MJ"."""
    unit, scale = next(((u, k) for u, k in (("MJ", 1e6), ("kJ", 1e3)) if abs(joules) >= k),
                       ("J", 1.0))
    value = joules / scale
    digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:,.{digits}f} {unit}"


def energy_line(run: Run) -> str | None:
    """The run's energy in one line, with its method and scope; None when not measured."""
    energy = run.record.energy
    total = runlog.number(energy.get("total_j")) if isinstance(energy, dict) else None
    if total is None:
        return None
    method = ENERGY_METHODS.get(str(energy.get("method")), str(energy.get("method")))
    powers = [runlog.number(g.get("power_mean_w")) for g in energy_of(run).values()
              if isinstance(g, dict)]
    known = [w for w in powers if w is not None]
    power = f", {sum(known):,.0f} W on average" if known else ""
    return (f"{energy_text(total)} over the run{power} (the whole GPU: NVML has no "
            f"per-process energy; from {method})")


def lead_cause(run: Run) -> dict[str, Any] | None:
    """The cause to name first: the first that stops the GPU from being used, else the first."""
    causes = [c for c in run.causes if isinstance(c, dict)]
    for item in causes:
        if item.get("severity") == "error":
            return item
    return causes[0] if causes else None


def cause_message(item: dict[str, Any]) -> str:
    return str(item.get("message") or item.get("code") or "unknown cause")


def pct_text(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{round(100 * fraction)}%"


def _idle_gpus(run: Run, gpus: Sequence[GPUSeries]) -> list[GPUSeries]:
    flagged = [g for g in gpus if g.verdict == "idle"]
    if flagged or run.verdict != "idle":
        return flagged
    return list(gpus)  # a run judged idle without per-GPU verdicts: every GPU shares the blame


def shared_text(run: Run) -> str | None:
    """One clause per GPU that other processes used (the `gpu_shared` causes), naming their
    PIDs (never their names, which are other users' text) and how long they kept it busy."""
    parts = []
    for item in run.causes:
        if not isinstance(item, dict) or item.get("code") != "gpu_shared":
            continue
        evidence = item.get("evidence") or {}
        pids = [str(p.get("pid")) for p in evidence.get("processes") or [] if isinstance(p, dict)]
        who = ("PID " + ", ".join(pids[:3])) if pids else "another process"
        text = f"GPU {evidence.get('gpu', '?')} shared with {who}"
        if len(pids) > 3:
            text += f" and {len(pids) - 3} more"
        busy = evidence.get("others_busy_fraction")
        if isinstance(busy, (int, float)):
            text += f", busy with them {round(100 * busy)}% of the time"
        parts.append(text)
    return "; ".join(parts) or None


def _sentences(*parts: str | None) -> str:
    return ". ".join(p.rstrip(". ") for p in parts if p) + "."


def banner_for(run: Run, gpus: Sequence[GPUSeries], causes: bool = True,
               with_impact: bool = True) -> str | None:
    """The banner: what went wrong (see `banner_text`; without `causes`, no cause's message is
    repeated: for a summary or a page that lists the causes below it), then, `with_impact`,
    what it cost and what a fix could buy (`impact_line`); None where nothing is left."""
    impact = impact_line(run) if with_impact else None
    # The lead cause's cost names it and says the same in figures: its message would repeat it.
    lead = lead_cause(run)
    told = bool(impact and lead and impact.startswith(f"{lead.get('code')}:")
                and run.verdict != "cpu_fallback")
    parts = [p for p in (_cause_banner(run, gpus, causes and not told), impact) if p]
    return _sentences(*parts) if len(parts) > 1 else (parts[0] if parts else None)


def impact_line(run: Run) -> str | None:
    """The costliest cause's cost and the speed-up a fix could bring at most, in one sentence
    (see `gpu_watch.judging.impact`); None where no cost was measured."""
    return first_impact_line(run_impacts(run), duration_of(run))


def cause_impact_text(item: dict[str, Any], duration_s: float | None) -> str | None:
    """A cause's ``impact`` in words: its cost and bound, or why it was not measured; None for
    a cause recorded without one."""
    record = item.get("impact")
    if not isinstance(record, dict):
        return None
    impact = Impact.from_dict(record)
    sentence = impact_sentence(str(item.get("code")), impact, duration_s)
    if sentence is None:
        return f"not measured: {impact.not_measured or 'unknown'}"
    sentence = sentence.split(": ", 1)[1]
    if impact.wall_lost_s is not None and item.get("code") != "input_bound":
        sentence = sentence.rstrip(".") + f"; {impact.wall_lost_s:.1f} s of wall time."
    return sentence + (f" (method: {impact.method})" if impact.method else "")


def _cause_banner(run: Run, gpus: Sequence[GPUSeries], causes: bool) -> str | None:
    verdict = run.verdict
    lead = lead_cause(run)
    if verdict == "cpu_fallback":
        return cpu_banner(run.causes, with_causes=causes)
    shared = shared_text(run)
    idle = _idle_gpus(run, gpus)
    if idle:
        text = "; ".join(
            f"GPU {g.index} idle {pct_text(g.idle_fraction)} of training"
            if g.idle_fraction is not None else f"GPU {g.index} idle" for g in idle)
        why = (cause_message(lead) if causes and lead and lead.get("code") != "gpu_shared"
               else None)
        return _sentences(text, why, shared) if why or shared else text
    if verdict == "unmonitored":
        error = (run.record.nvml or {}).get("error")
        if error is None and lead is not None:
            return _sentences("This training's own GPU utilization is unknown",
                              cause_message(lead) if causes else None, shared)
        return "GPU utilization unknown: NVML could not be read" + (f" ({error})" if error else "")
    if verdict == "unmeasured":
        return "No GPU reading after step 0: training ended before NVML's next sample"
    if shared:
        return _sentences(shared, "This training kept the GPU busy, but shared its time")
    return None


def nvml_error_told(run: Run) -> bool:
    """Whether a cause already names NVML's error (no driver), so no other line repeats it."""
    return any(isinstance(c, dict) and (c.get("code") == "no_nvidia_driver"
                                        or "nvml_error" in (c.get("evidence") or {}))
               for c in run.causes)


def banner_text(run: Run) -> str | None:
    """The one line a reader must see first, or None when the GPU did its work alone.

    Args:
        run: A loaded run.

    Returns:
        For CPU fallback, "Training ran on the CPU: <cause>; fix: <remedy>.", or with several
        causes "Training ran on the CPU. First: <cause>; fix: <remedy>. Then: <cause>." (see
        `gpu_watch.report.advice.cpu_banner`); "GPU <i> idle <p>% of training"
        for each idle GPU (p is the share of the measured time under the idle threshold, by
        this process's own utilization where NVML measured it, missing readings excluded),
        with the lead cause; "GPU utilization unknown: ..." when unmonitored; and, with any
        verdict, which GPUs other processes shared (their PIDs, and how long they were busy);
        else None.
    """
    return banner_for(run, gpu_series(run))


def verdict_title(run: Run) -> tuple[str, str]:
    verdict = run.verdict
    if verdict in VERDICT_WORDS:
        return VERDICT_WORDS[verdict], VERDICT_COLOURS[verdict]
    if verdict:
        return f"{verdict.upper()}: unrecognised verdict", NO_VERDICT_COLOUR
    if run.status == runlog.STATUS_RUNNING:
        return "No verdict yet: the run is still going", NO_VERDICT_COLOUR
    return f"No verdict: the run ended without one (status {run.status})", NO_VERDICT_COLOUR


def duration_of(run: Run) -> float | None:
    duration = run.record.duration_s
    if duration is not None:
        return float(duration)
    times = floats(run.batches, "time_s")
    return float(np.nanmax(times)) if times.size and not np.isnan(times).all() else None


def placement_line(run: Run) -> str:
    placement = run.record.placement or {}
    if not placement:
        return "placement: not checked"
    on_gpu = placement.get("compute_on_gpu")
    words = {True: "on the GPU", False: "on the CPU", None: "unknown"}.get(on_gpu, str(on_gpu))
    line = f"step 0 compute: {words}"
    counts = placement.get("op_counts") or {}
    if counts:
        line += " (ops: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"
    return line


def is_simulated(run: Run) -> bool:
    """Whether the readings came from a scripted NVML (`FakeNVML`), not a real GPU."""
    return bool((run.record.nvml or {}).get("simulated"))


def subtitle_for(run: Run, gpus: Sequence[GPUSeries]) -> str:
    parts = [str(run.record.run_name or run.path.name), f"status {run.status}"]
    if is_simulated(run):
        parts.insert(0, "SIMULATED GPU readings (FakeNVML)")
    duration = duration_of(run)
    if duration is not None:
        parts.append(f"{duration:,.1f} s")
    if run.record.backend:
        parts.append(f"backend {run.record.backend}")
    if gpus:
        parts.append(f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''} watched")
    else:
        error = None if nvml_error_told(run) else (run.record.nvml or {}).get("error")
        parts.append("no GPU watched" + (f" (NVML: {error})" if error else ""))
    parts.append(placement_line(run))
    return "  ·  ".join(parts)



# -- text ------------------------------------------------------------------------------------


def number_text(value: Any, digits: int = 4) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a" if value is None else str(value)
    if math.isnan(number):
        return "n/a"
    if number.is_integer() and abs(number) < 1e15:
        return f"{int(number):,}"
    return f"{number:.{digits}g}"


# How the loop's wait for data was measured (`wait_measure`), in words; a measure not listed
# here is named as it is.
WAIT_MEASURE_WORDS = {
    "sampled_ticks": "from where the sampler found the training thread",
    "batch_gaps": "from the gaps between steps",
    GAPS_ONLY: "from the gaps between steps alone, so at least this much",
}
# The loop's time, part by part: (words, seconds key, share key) in run.json's "breakdown".
_BREAKDOWN_PARTS = (("compute", "compute_s", "compute_fraction"),
                    ("waiting for data", "data_wait_s", "data_wait_fraction"),
                    ("other", "other_s", "other_fraction"))


def breakdown_text(breakdown: Any) -> str | None:
    """Where the training loop's time went, from `run.json`'s "breakdown", in one line:
    "12.3 s in the training loop: compute 8.1 s (66%), waiting for data 3.0 s (24%), other
    1.2 s (10%; the wait from the gaps between steps)". None for a run recorded without it.

    Args:
        breakdown: `run.json`'s "breakdown" record (seconds and 0-1 shares, each may be null).
    """
    if not isinstance(breakdown, dict):
        return None
    seconds = [runlog.number(breakdown.get(key)) for _, key, _ in _BREAKDOWN_PARTS]
    loop_s = runlog.number(breakdown.get("loop_s"))
    if loop_s is None and all(s is None for s in seconds):
        return None
    decimals = column_decimals([loop_s, *seconds], significant=3)
    parts = []
    for (words, _, share_key), value in zip(_BREAKDOWN_PARTS, seconds, strict=True):
        if value is None:
            continue
        share = runlog.number(breakdown.get(share_key))
        parts.append(f"{words} {value:,.{decimals}f} s"
                     + ("" if share is None else f" ({round(100 * share)}%)"))
    head = ("the training loop" if loop_s is None
            else f"{loop_s:,.{decimals}f} s in the training loop")
    text = f"{head}: {', '.join(parts)}" if parts else head
    measure = breakdown.get("wait_measure")
    if measure and breakdown.get("data_wait_s") is not None:
        text += f" (the wait {WAIT_MEASURE_WORDS.get(str(measure), f'measured by {measure}')})"
    return text


# Under an epoch table with a wait share from the gaps between steps alone (">=N").
WAIT_LOWER_BOUND_NOTE = ("wait % >=N: at least N%; too few readings in that epoch to see a "
                         "wait inside a step, only the gaps between steps")


def column_decimals(values: Sequence[Any], significant: int = 4) -> int:
    """Decimals that show a column's largest value with `significant` digits (0 for a
    column of whole numbers, at most 6), so that every cell of the column has the same."""
    numbers = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            numbers.append(number)
    if not numbers or all(n.is_integer() for n in numbers):
        return 0
    largest = max(abs(n) for n in numbers)
    if largest == 0:
        return significant - 1
    return min(6, max(0, significant - 1 - math.floor(math.log10(largest))))


def fixed_text(value: Any, decimals: int) -> str:
    """A number with `decimals` decimals and thousands separators; "n/a" when missing."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a" if value is None else str(value)
    if math.isnan(number):
        return "n/a"
    return f"{number:,.{decimals}f}"


_EPOCH_HEADINGS = {
    "epoch": "epoch",
    "batches": "batches",
    "duration_s": "time s",
    "first_step_s": "step 0 s",
    "step_s_mean": "step s",
    "wait_fraction": "wait %",
    "compute_s": "compute s",
    "data_wait_s": "wait s",
    "other_s": "other s",
    "other_fraction": "other %",
    "judged_util_mean": "util %",
    "gpu_util_mean": "device util %",
    "gpu_mem_peak_mib": "mem MiB",
    "idle_fraction": "idle %",
    "verdict": "verdict",
    "gpu_sm_active_mean": "SM active %",
    "gpu_tensor_active_mean": "tensor %",
    "gpu_dram_bw_mean": "DRAM bw %",
    "gpu_energy_j": "energy J",
    "gpu_power_mean_w": "power W",
}
# In epochs.csv, not in the table: this process's figure is "util %" wherever it decides.
_NOT_SHOWN = frozenset({"proc_util_mean", "gpu_util_p95", "wait_measure"})
# Shown only when measured: on GPUs without GPM, or without NVML, they would be columns of n/a;
# the step-time breakdown only in runs that record it;
# step 0's duration only in the epoch that ran it.
_MEASURED_ONLY = frozenset(runlog.EPOCH_ACTIVITY_COLUMNS) | {
    "first_step_s", "compute_s", "data_wait_s", "other_s", "other_fraction"}
_ROUNDED = frozenset({"judged_util_mean", "gpu_util_mean", "gpu_mem_peak_mib",
                      *runlog.EPOCH_ACTIVITY_COLUMNS})
_PER_GPU = re.compile(r"gpu\d+_((proc_)?util_mean|verdict|"
                      + "|".join(runlog.EPOCH_GPU_ACTIVITY_COLUMNS) + ")")
_PER_GPU_SHOWN = re.compile(r"gpu\d+_(util_mean|verdict)")


def epoch_table(run: Run) -> tuple[list[str], list[list[str]]]:
    """The epoch table as headings and formatted cells ("n/a" for missing values).

    Runs of several GPUs get each GPU's utilization and verdict too; the Keras logs follow.
    """
    frame = run.epochs
    columns = [c for c in _EPOCH_HEADINGS if c in frame.columns
               and (c not in _MEASURED_ONLY or frame[c].notna().any())]
    per_gpu = [c for c in frame.columns if _PER_GPU_SHOWN.fullmatch(c)]
    if len({c.split("_")[0] for c in per_gpu}) < 2:
        per_gpu = []
    logs = [c for c in frame.columns if c not in _EPOCH_HEADINGS and c not in _NOT_SHOWN
            and not _PER_GPU.fullmatch(c)]
    headings = [_EPOCH_HEADINGS[c] for c in columns]
    headings += [c.replace("_util_mean", " util %").replace("_verdict", " verdict")
                 for c in per_gpu] + logs
    records = frame.to_dict("records")
    # One precision per column of measured figures: the decimals its largest value needs.
    decimals = {column: column_decimals([r.get(column) for r in records])
                for column in columns + logs}
    rows = []
    for record in records:
        cells = []
        for column in columns + per_gpu + logs:
            value = record.get(column)
            if column in ("wait_fraction", "idle_fraction", "other_fraction"):
                value = number_text(None if pd.isna(value) else round(100 * float(value)))
                if column == "wait_fraction" and record.get("wait_measure") == GAPS_ONLY:
                    # From batch gaps alone, a lower bound: of 0 it says nothing.
                    value = "n/a" if value in ("0", "n/a") else f">={value}"
            elif column in _ROUNDED or column.endswith("_util_mean"):
                value = number_text(None if pd.isna(value) else round(float(value)))
            elif column == "verdict" or column.endswith("_verdict"):
                value = "n/a" if pd.isna(value) else str(value)
            elif column == "first_step_s" and pd.isna(value):
                value = ""
            else:
                value = fixed_text(value, decimals.get(column, 0))
            cells.append(value)
        rows.append(cells)
    return headings, rows




def util_text(gpu: GPUSeries, short: bool = False) -> str | None:
    """The GPU's mean utilization as the verdict saw it (step 0 left out): "this process 3%
    (device 99%)", or the device's alone where this process's own was not measured; None
    without a judged figure. `short` gives "own 3%, device 99%" for a figure's heading."""
    judged, device = gpu.judged_util_mean_pct, gpu.device_util_mean_pct
    if judged is None:
        return None
    if gpu.judged_by == "process":
        if device is None:
            return f"own {judged:.0f}%" if short else f"this process {judged:.0f}%"
        return (f"own {judged:.0f}%, device {device:.0f}%" if short
                else f"this process {judged:.0f}% (device {device:.0f}%)")
    return f"device {judged:.0f}%" + ("" if short else " (this process's own not measured)")


def gpu_line(gpu: GPUSeries) -> str:
    util = util_text(gpu)
    line = f"GPU {gpu.index} ({gpu.name})"
    if gpu.verdict:
        line += f" [{gpu.verdict}]"
    if util is None:
        line += ": no utilization readings after step 0"
    else:
        line += f": mean util {util}"
        if gpu.idle_fraction is not None:
            line += f", idle {pct_text(gpu.idle_fraction)} of its readings after step 0"
    if gpu.mem_peak_mib is not None:
        line += f", peak memory {gpu.mem_peak_mib:,.0f}"
        line += f" of {gpu.mem_total_mib:,.0f} MiB" if gpu.mem_total_mib > 0 else " MiB"
    if gpu.proc_mem_peak_mib is not None:
        line += f" (this process {gpu.proc_mem_peak_mib:,.0f} MiB)"
    sm = gpu.sm_active_mean_pct
    if sm is not None:
        line += f", SM activity {sm:.0f}% (share of SMs busy, from GPM)"
    if gpu.energy_j is not None:
        line += f", energy {energy_text(gpu.energy_j)} (whole GPU)"
    return line
