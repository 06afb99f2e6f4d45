"""From what a run showed to what its run folder says: epoch rows and the run's judgement.

A live run (`Monitor`) and a recorded one judged again (`rejudge`) both go through here, so a
run folder written long ago reads, once judged again, exactly as a new one would: the same
rules, the same figures, the same words.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from gpu_watch import runlog
from gpu_watch._version import __version__
from gpu_watch.judging.activity import activity_row, energy_summary, known_mean
from gpu_watch.judging.causes import Cause, RunFacts
from gpu_watch.judging.data_wait import DataTick
from gpu_watch.judging.impact import with_impacts
from gpu_watch.judging.timeline import EpochSpan, Timeline
from gpu_watch.judging.usage import recorded_threshold_pct, usage_of_frames
from gpu_watch.judging.verdict import GPUStats, Judgement, Setting, judge
from gpu_watch.runlog import Run, RunRecord
from gpu_watch.sensing.nvml import Reading

# The order of a replay's events at one instant (see `rejudge`).
_BATCH, _TICK, _END, _BEGIN, _FIRST_BATCH = range(5)


def setting_of(record: RunRecord, switched_off: Sequence[dict] | None = None) -> Setting:
    """The run's facts as the verdict rules take them, from its `run.json` record.

    Args:
        record: The run's record (`Monitor.record`, or a loaded `run.json`).
        switched_off: NVML metrics switched off per GPU; default the record's own.
    """
    placement = record.placement or {}
    framework = record.framework or {}
    nvml = record.nvml or {}
    gpus = framework.get("gpus")
    off = nvml.get("switched_off") if switched_off is None else switched_off
    findings = (record.environment or {}).get("findings") or []
    return Setting(
        compute_on_gpu=placement.get("compute_on_gpu"),
        framework_gpus=None if gpus is None else len(gpus),
        nvml_error=nvml.get("error"),
        nvml_gpus=int(nvml.get("gpus_seen") or 0),
        visible_gpus=len(record.devices or []),
        cuda_visible_devices=record.cuda_visible_devices,
        cuda_build=framework.get("cuda_build"),
        cpu_compute_examples=tuple(placement.get("cpu_compute_examples") or ()),
        environment=tuple(Cause.from_dict(f) for f in findings if isinstance(f, dict)),
        facts=RunFacts.from_run(record),
        no_process_utilization=tuple(o["gpu"] for o in off or ()
                                     if isinstance(o, dict) and o.get("metric") == "proc_util"),
    )


def epoch_row(span: EpochSpan, setting: Setting, hooks: Sequence[tuple[str, float]] = ()
              ) -> tuple[Judgement, dict[str, Any]]:
    """An epoch's verdict and its `epochs.csv` row, the Keras logs included; `hooks` are the
    callbacks whose batch hooks took longest (class name, seconds), slowest first.

    Step 0 is left out of the loop figures and of the verdict; its duration is the row's
    `first_step_s`. Missing figures are None, never 0.
    """
    stats = span.gpu_stats()
    loop = span.loop
    wait = loop.wait()
    judgement = judge(setting, stats, wait.fraction, wait.other_fraction, hooks)
    with_util = [s for s in stats if s.util_mean is not None]
    row: dict[str, Any] = {
        "epoch": span.epoch,
        "batches": loop.batches + (span.first_step_s is not None),
        "duration_s": None if span.end_s is None else span.end_s - span.start_s,
        "first_step_s": span.first_step_s,
        "step_s_mean": loop.step_s / loop.batches if loop.batches else None,
        "compute_s": wait.compute_s if loop.batches else None,
        "data_wait_s": wait.wait_s if wait.fraction is not None else None,
        "other_s": wait.other_s if loop.batches else None,
        "wait_fraction": wait.fraction,
        "other_fraction": wait.other_fraction,
        "wait_measure": wait.measure,
        "gpu_util_mean": known_mean([s.util_mean for s in with_util]),
        "proc_util_mean": known_mean([s.proc_util_mean for s in stats]),
        "judged_util_mean": known_mean([s.judged_util_mean for s in stats]),
        "gpu_util_p95": max((s.util_p95 for s in with_util), default=None),
        "gpu_mem_peak_mib": max((s.mem_peak_mib for s in stats if s.mem_peak_mib is not None),
                                default=None),
        "idle_fraction": known_mean([s.judged_idle_fraction for s in stats]),
        "verdict": judgement.verdict,
    }
    for s in stats:
        row[f"gpu{s.gpu}_util_mean"] = s.util_mean
        row[f"gpu{s.gpu}_proc_util_mean"] = s.proc_util_mean
        row[f"gpu{s.gpu}_verdict"] = judgement.gpu_verdicts.get(s.gpu)
    row.update(activity_row(stats))
    for key, value in span.logs.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[key] = float(value)
    return judgement, row


def judged_record(stats: Sequence[GPUStats], judgement: Judgement) -> dict[str, Any]:
    """`run.json`'s "judged": per GPU, the figure its verdict was judged by, step 0 left out.
    The summary, the figures and the report show these; nothing computes them again."""
    return {str(s.gpu): {"by": judgement.judged_by.get(s.gpu, s.judged_by),
                         "util_mean_pct": _round(s.judged_util_mean, 2),
                         "device_util_mean_pct": _round(s.util_mean, 2),
                         "idle_fraction": _round(s.judged_idle_fraction, 4),
                         "readings": s.proc_util_samples if s.proc_util_samples
                         else s.util_samples}
            for s in stats}


def record_judgement(record: RunRecord, timeline: Timeline, setting: Setting,
                     hooks: Sequence[tuple[str, float]] = ()) -> Judgement:
    """Judge the run so far and fill the fields of `record` the judgement decides: verdict,
    causes, per-GPU verdicts and bases, the judged figures, the wait for data and where the
    loop's time went, step 0's duration, energy. `hooks`: the callbacks whose batch hooks
    took longest (class name, seconds), slowest first. Returns the judgement."""
    stats = timeline.run_stats()
    wait = timeline.run_wait()
    judgement = judge(setting, stats, wait.fraction, wait.other_fraction, hooks)
    record.verdict = judgement.verdict
    record.causes = [c.to_dict() for c in judgement.causes]
    record.gpu_verdicts = {str(k): v for k, v in judgement.gpu_verdicts.items()}
    record.gpu_judged_by = {str(k): v for k, v in judgement.judged_by.items()}
    record.judged = judged_record(stats, judgement)
    record.wait = wait.to_dict()
    record.breakdown = {**wait.breakdown(),
                        "callbacks": [{"name": name, "hook_s": round(seconds, 4)}
                                      for name, seconds in hooks]}
    record.first_step_s = _round(timeline.first_step_s, 4)
    record.energy = energy_summary(stats)
    return judgement


def rejudge(path: str | os.PathLike | Run) -> Run:
    """Judge a recorded run folder again with today's rules.

    The readings and batches are fed through a `Timeline` in the order they happened, as the
    sampler and the training thread did, and judged with the run's own facts from `run.json`.
    The run comes back as today's code would have written it: verdict, causes, the judged
    figures, each sample's `judged_util_pct`, and the epoch rows (with their Keras logs). The
    folder itself is left as it is. `run.record.rejudged` says which version judged it and
    what the recorded verdict was.

    Runs recorded before the per-tick `fetching_data` flag existed get each epoch's recorded
    wait share spread over that epoch's ticks, so that the tick measure's minimum applies.

    Args:
        path: A run folder, or a `Run` already loaded.

    Raises:
        RunFolderError: The folder cannot be read as a run (see `load_run`).
    """
    import pandas as pd

    run = path if isinstance(path, Run) else runlog.load_run(path)
    record = replace(run.record)
    config = record.config or {}
    gpus = [int(d["nvml_index"]) for d in record.devices or []
            if isinstance(d, dict) and d.get("nvml_index") is not None]
    timeline = Timeline(gpus, recorded_threshold_pct(config),
                        float(config.get("idle_patience_s", 60.0)),
                        float(config.get("interval_s") or runlog.RECORDED_INTERVAL_S))
    setting = setting_of(record)
    samples = run.samples.copy() if run.samples is not None else pd.DataFrame()
    batches = run.batches if run.batches is not None else pd.DataFrame()
    epochs = run.epochs if run.epochs is not None else pd.DataFrame()
    data = _data_ticks(samples, batches, epochs)
    events: list[_Event] = []
    bounds = {}
    # At one instant: batches and readings of the epoch ending, its end, the next epoch's
    # begin, then that epoch's batches.
    for span in _epoch_spans(batches, epochs):
        bounds[span.epoch] = span
        events.append(_Event(span.start_s, _BEGIN, span.epoch))
        events.append(_Event(span.end_s, _END, span.epoch))
    for b in batches.itertuples():  # each batch inside its own epoch, whatever its timing
        span = bounds[int(b.epoch)]
        time_s = min(max(float(b.time_s), span.start_s), span.end_s)
        events.append(_Event(time_s, _FIRST_BATCH if time_s == span.start_s else _BATCH, b))
    readings_by_row: dict[Any, Reading] = {}
    if len(samples):
        for time_s, rows in samples.groupby("time_s", sort=True):
            tick = []
            for index, r in zip(rows.index, rows.itertuples(), strict=True):
                reading = _reading(float(time_s), r)
                readings_by_row[index] = reading
                tick.append(reading)
            events.append(_Event(float(time_s), _TICK, tick))
    logs = _keras_logs(epochs)
    breakdown = record.breakdown if isinstance(record.breakdown, dict) else {}
    timed = "other_s" in batches.columns if len(batches) else False
    measure = breakdown.get("wait_measure") if timed else None
    hooks = [(str(c.get("name")), float(c.get("hook_s") or 0.0))
             for c in breakdown.get("callbacks") or () if isinstance(c, dict)]
    rows: list[dict[str, Any]] = []
    for event in sorted(events, key=lambda e: (e.time_s, e.order)):
        if event.order == _BEGIN:
            timeline.begin_epoch(event.payload, event.time_s)
        elif event.order in (_BATCH, _FIRST_BATCH):
            b = event.payload
            wait, other = runlog.number(b.wait_s), runlog.number(getattr(b, "other_s", None))
            if not timed:  # recorded before waits were timed: `wait_s` was the gap between hooks
                wait, other = None, wait
            timeline.add_batch(int(b.epoch), int(b.batch), int(runlog.number(b.steps) or 1),
                               b.time_s - b.step_s, b.time_s, wait, other_s=other,
                               measure=measure)
        elif event.order == _TICK:
            tick = data.get(event.time_s)
            if tick is not None:
                timeline.add_data_tick(tick.fetching, tick.producing)
            timeline.add_readings(event.payload, tick)
        else:
            timeline.end_epoch(event.time_s, logs.get(event.payload, {}))
        rows += [epoch_row(span, setting, hooks)[1] for span in timeline.ready_epochs()]
    rows += [epoch_row(span, setting, hooks)[1] for span in timeline.ready_epochs(final=True)]
    record_judgement(record, timeline, setting, hooks)
    if run.record.has("energy"):  # recorded from every reading
        record.energy = run.record.energy
    if len(samples):
        samples["judged_util_pct"] = [readings_by_row[i].judged_util_pct for i in samples.index]
    record.causes = with_impacts(record, usage_of_frames(record, samples, batches))
    record.rejudged = {"gpu_watch_version": __version__,
                       "recorded_verdict": run.record.verdict,
                       "recorded_causes": [c.get("code") for c in run.causes]}
    new_epochs = pd.DataFrame(rows) if rows else epochs.iloc[0:0].copy()
    return Run(run.path, record, samples, run.batches, new_epochs, list(run.warnings))


@dataclass(frozen=True, slots=True)
class _Event:
    """One thing a recorded run did, replayed in time order (see `rejudge`).

    `order` puts events of one instant in order (`_BATCH` ... `_FIRST_BATCH`); `payload` is
    a `batches.csv` row, a tick's readings, or the epoch that begins or ends.
    """

    time_s: float
    order: int
    payload: Any


@dataclass(frozen=True, slots=True)
class _EpochBounds:
    """When a recorded epoch began and ended, seconds since training started."""

    epoch: int
    start_s: float
    end_s: float


def _epoch_spans(batches: Any, epochs: Any) -> list[_EpochBounds]:
    """The bounds of each recorded epoch: from its first batch's begin, for the epoch's
    recorded duration (its end is not recorded)."""
    spans = []
    durations = {int(e): runlog.number(d) for e, d in zip(epochs.get("epoch", []),
                                                  epochs.get("duration_s", []), strict=False)}
    if not len(batches):
        return spans
    for epoch, rows in batches.groupby("epoch", sort=True):
        first = rows.iloc[0]
        start = float(first.time_s) - float(first.step_s)
        end = float(rows["time_s"].max())
        duration = durations.get(int(epoch))
        spans.append(_EpochBounds(int(epoch), start,
                                  max(end, start + duration) if duration else end))
    # Epochs follow each other: one ends before the next begins (a recorded duration starts a
    # little before the first batch, and batch hooks run on worker threads may end late).
    ordered: list[_EpochBounds] = []
    for i, span in enumerate(spans):
        start, end = span.start_s, span.end_s
        if ordered:
            start = max(start, ordered[-1].end_s)
        last_end = float(batches.loc[batches["epoch"] == span.epoch, "time_s"].max())
        if i + 1 < len(spans):
            after = spans[i + 1]
            end = max(min(end, after.start_s), min(last_end, after.end_s))
        ordered.append(_EpochBounds(span.epoch, start, max(end, start)))
    return ordered


def _data_ticks(samples: Any, batches: Any, epochs: Any) -> dict[float, DataTick | None]:
    """Per tick time, what the input pipeline was doing: as recorded, or, for runs recorded
    without it, each epoch's recorded wait share spread over its ticks after step 0."""
    if not len(samples):
        return {}
    if "fetching_data" in samples.columns and samples["fetching_data"].notna().any():
        columns = [c for c in ("fetching_data", "producing_data") if c in samples.columns]
        firsts = samples.groupby("time_s", sort=True)[columns].first()
        ticks: dict[float, DataTick | None] = {}
        for time_s, row in firsts.iterrows():
            fetching = runlog.number(row["fetching_data"])
            producing = runlog.number(row.get("producing_data"))
            ticks[float(time_s)] = None if fetching is None else DataTick(
                bool(fetching), bool(producing or 0))
        return ticks
    times = sorted({float(t) for t in samples["time_s"]})
    shares = {int(e): runlog.number(w) for e, w in zip(epochs.get("epoch", []),
                                               epochs.get("wait_fraction", []), strict=False)}
    ticks = {t: DataTick(False) for t in times}
    batch_times = batches.get("time_s")
    first_step_end_s = (float(batch_times.min()) if batch_times is not None
                        and len(batch_times) else 0.0)
    for span in _epoch_spans(batches, epochs):
        # The recorded share counted the ticks after step 0 only.
        inside = [t for t in times if max(span.start_s, first_step_end_s) < t <= span.end_s]
        share = shares.get(span.epoch) or 0.0
        for t in inside[:round(share * len(inside))]:
            ticks[t] = DataTick(True)
    return ticks


_READING_FIELDS = ("util_pct", "mem_util_pct", "mem_used_mib", "mem_total_mib", "proc_mem_mib",
                   "proc_util_pct", "procs", "power_w", "temp_c", "sm_clock_mhz",
                   "sm_active_pct", "sm_occupancy_pct", "tensor_active_pct", "dram_bw_pct",
                   "fp32_active_pct", "fp16_active_pct", "energy_counter_mj",
                   "others_util_pct", "others_mem_mib")


def _reading(time_s: float, row: Any) -> Reading:
    values = {name: runlog.number(getattr(row, name, None)) for name in _READING_FIELDS}
    for name in ("procs", "energy_counter_mj"):
        if values[name] is not None:
            values[name] = int(values[name])
    return Reading(time_s=time_s, gpu=int(row.gpu), lost=bool(runlog.number(row.lost) or 0),
                   **values)


def _keras_logs(epochs: Any) -> dict[int, dict[str, float]]:
    """Each recorded epoch's Keras logs: the columns GPUWatch does not write itself."""
    ours = set(runlog.EPOCH_COLUMNS)
    columns = [c for c in epochs.columns if c not in ours and not c.startswith("gpu")]
    return {int(r["epoch"]): {c: r[c] for c in columns if runlog.number(r[c]) is not None}
            for r in epochs.to_dict("records")}



def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)

