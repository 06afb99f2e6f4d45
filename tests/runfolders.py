"""Synthetic run folders, written through `gpu_watch.runlog`, for tests and benchmarks.

`write_run` lays down `run.json` and the three CSVs from rows or DataFrames. `synthetic_run`
builds a consistent training timeline on top of it: batches at a given step time, NVML-like
readings every `interval_s` seconds from a utilization function of time, and per-epoch summaries
computed from those readings, so a test knows exactly what the figures should show.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gpu_watch import runlog
from gpu_watch.judging.causes import cause

Rows = pd.DataFrame | Iterable[dict[str, Any]] | None
UtilFunction = Callable[[np.ndarray, int], np.ndarray]

IDLE_THRESHOLD_PCT = 10.0


def run_info(
    name: str,
    *,
    verdict: str | None = "ok",
    status: str = runlog.STATUS_COMPLETED,
    gpus: Sequence[int] = (0,),
    causes: Sequence[str | dict[str, Any]] = (),
    started_at: str = "2026-11-26T10:00:00Z",
    duration_s: float | None = None,
    gpu_verdicts: dict[str, str] | None = None,
    mem_total_mib: float = 81559.0,
    interval_s: float = 0.5,
    rank: int = 0,
    world_size: int = 1,
    judged: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A complete `run.json` as the callback writes it.

    Args:
        name: The run name.
        verdict: The run verdict, or None for a run still going.
        status: `run.json`'s status.
        gpus: NVML indices of the watched GPUs (an empty sequence: no GPU watched).
        causes: Cause codes (filled in from the catalogue) or full cause dicts.
        started_at: ISO 8601 UTC start time; `find_runs` orders by it.
        duration_s: Seconds the run took.
        gpu_verdicts: Per-GPU verdicts keyed by NVML index as a string.
        mem_total_mib: Each GPU's total memory, MiB.
        interval_s: The sampler interval recorded in the config, seconds.
        rank: This worker's rank.
        world_size: Number of workers.
        judged: Per GPU, the judged figures (`run.json`'s "judged"); default none measured.
    """
    return {
        "schema_version": runlog.SCHEMA_VERSION,
        "gpu_watch_version": "0.0.test",
        "run_name": name,
        "rank": rank,
        "world_size": world_size,
        "writer": {"host": "test-host", "pid": 1},
        "status": status,
        "judged": judged or {},
        "started_at": started_at,
        "ended_at": None if status == runlog.STATUS_RUNNING else started_at,
        "duration_s": duration_s,
        "backend": "tensorflow",
        "devices": [
            {"nvml_index": i, "cuda_index": i, "uuid": f"GPU-test-{i}",
             "name": "NVIDIA H100 80GB HBM3", "mem_total_mib": mem_total_mib}
            for i in gpus
        ],
        "nvml": {"available": bool(gpus), "error": None if gpus else "Driver Not Loaded",
                 "driver_version": "550.54.15" if gpus else None, "cuda_driver_version": None},
        "environment": {"findings": []},
        "placement": {
            "backend": "tensorflow",
            "compute_on_gpu": verdict not in ("cpu_fallback", None),
            "op_counts": {"CPU": 3, "GPU": 120} if gpus else {"CPU": 123, "GPU": 0},
            "cpu_compute_examples": [] if gpus else ["MatMul", "Conv2D"],
            "variable_devices": ["/job:localhost/replica:0/task:0/device:GPU:0"] if gpus
            else ["/job:localhost/replica:0/task:0/device:CPU:0"],
        },
        "verdict": verdict,
        "causes": [cause(c).to_dict() if isinstance(c, str) else c for c in causes],
        "gpu_verdicts": gpu_verdicts if gpu_verdicts is not None
        else {str(i): verdict for i in gpus if verdict in ("ok", "idle")},
        "idle": {"events": []},
        "faults": [],
        "config": {"log_dir": "logs", "run_name": name, "interval_s": interval_s,
                   "idle_threshold_pct": IDLE_THRESHOLD_PCT, "idle_patience_s": 60.0,
                   "on_idle": "warn", "require_gpu": False, "check_placement": True,
                   "plot": True},
    }


def write_run(log_dir: str | os.PathLike, name: str, info: dict[str, Any], *,
              samples: Rows = None, batches: Rows = None, epochs: Rows = None) -> Path:
    """Create `<log_dir>/<name>` holding `info` as `run.json` and the given tables.

    Row lists go through `runlog.CsvTable`, as the callback writes them; DataFrames (for
    benchmark-sized tables) are written in one go with the same column order and empty cells
    for NaN. A table left as None is written as its header only.
    """
    run_dir = runlog.new_run_dir(log_dir, name)
    runlog.write_run_json(run_dir, runlog.RunRecord.from_json(info))
    gpus = [int(d["nvml_index"]) for d in info.get("devices") or []]
    for file_name, columns, rows in (
        (runlog.SAMPLES_CSV, runlog.SAMPLE_COLUMNS, samples),
        (runlog.BATCHES_CSV, runlog.batch_columns(gpus), batches),
        (runlog.EPOCHS_CSV, runlog.EPOCH_COLUMNS, epochs),
    ):
        path = run_dir / file_name
        if isinstance(rows, pd.DataFrame):
            ordered = list(columns) + [c for c in rows.columns if c not in columns]
            rows.reindex(columns=ordered).to_csv(path, index=False, na_rep="",
                                                 lineterminator="\n")
            continue
        rows = list(rows or [])
        extra = [c for row in rows for c in row if c not in columns]
        table = runlog.CsvTable(path, list(columns) + list(dict.fromkeys(extra)))
        table.append(rows)
    return run_dir


def synthetic_run(
    log_dir: str | os.PathLike,
    name: str = "run",
    *,
    gpus: Sequence[int] = (0,),
    epochs: int = 3,
    batches_per_epoch: int = 50,
    step_s: float | np.ndarray = 0.1,
    wait_s: float | np.ndarray = 0.0,
    validation_s: float = 0.0,
    interval_s: float = 0.5,
    util: UtilFunction | None = None,
    proc_mem_mib: float = 2048.0,
    mem_total_mib: float = 81559.0,
    epoch_verdicts: Sequence[str] | None = None,
    **info: Any,
) -> Path:
    """Write a run whose batches, readings and epoch table agree with each other.

    Args:
        log_dir: Where to create the run folder.
        name: The run name (and folder name).
        gpus: NVML indices of the watched GPUs; empty for a run with no GPU.
        epochs: Number of epochs.
        batches_per_epoch: Batches in each epoch.
        step_s: Seconds per step, one value or one per batch (to script spikes and dips).
        wait_s: Seconds waiting for data before each batch, one value or one per batch.
        validation_s: Seconds between epochs (validation), with no batches.
        interval_s: Seconds between sampler readings.
        util: Utilization in percent as a function of (times in s, NVML index); NaN marks a
            missing reading. Default: 90% throughout.
        proc_mem_mib: This process's GPU memory, MiB.
        mem_total_mib: Each GPU's total memory, MiB.
        epoch_verdicts: Per-epoch verdicts. Default: decided from each epoch's idle fraction.
        **info: Passed to :func:`run_info` (verdict, status, causes, started_at, ...).

    Returns:
        The run folder.
    """
    util = util or (lambda t, gpu: np.full(t.shape, 90.0))
    n = epochs * batches_per_epoch
    step = np.broadcast_to(np.asarray(step_s, dtype=float), (n,))
    wait = np.broadcast_to(np.asarray(wait_s, dtype=float), (n,))
    epoch = np.repeat(np.arange(epochs), batches_per_epoch)
    # Batch ends: steps and waits accumulate, plus the validation pause before each new epoch.
    pause = np.where(np.r_[False, epoch[1:] != epoch[:-1]], validation_s, 0.0)
    time_s = np.cumsum(step + wait + pause)
    batches = pd.DataFrame({
        "epoch": epoch,
        "batch": np.tile(np.arange(batches_per_epoch), epochs),
        "steps": 1,
        "time_s": time_s,
        "step_s": step,
        "wait_s": wait,
    })
    end_s = float(time_s[-1]) if n else 0.0
    sample_t = np.arange(1, int(end_s / interval_s) + 1) * interval_s
    frames = []
    for gpu in gpus:
        gpu_util = np.asarray(util(sample_t, gpu), dtype=float)
        frames.append(pd.DataFrame({
            "time_s": sample_t,
            "gpu": gpu,
            "util_pct": gpu_util,
            "mem_util_pct": gpu_util / 3,
            "mem_used_mib": np.where(np.isnan(gpu_util), np.nan, proc_mem_mib + 300.0),
            "mem_total_mib": mem_total_mib,
            "proc_mem_mib": np.where(np.isnan(gpu_util), np.nan, proc_mem_mib),
            "proc_util_pct": gpu_util,
            "procs": 1,
            "power_w": 70.0 + 3.0 * np.nan_to_num(gpu_util),
            "temp_c": 40.0,
            "sm_clock_mhz": 1980.0,
            "idle_clock_event": (gpu_util == 0).astype(int),
            "lost": 0,
        }))
        batches[f"gpu{gpu}_util_pct"] = np.asarray(util(time_s, gpu), dtype=float)
        batches[f"gpu{gpu}_mem_used_mib"] = proc_mem_mib + 300.0
    samples = pd.concat(frames, ignore_index=True) if frames else None
    if samples is not None:
        samples["judged_util_pct"] = samples["proc_util_pct"]
    # This training's own figures decide, step 0 (the first batch) left out.
    counted = sample_t > (time_s[0] if n else 0.0)
    judged = {}
    for gpu in gpus:
        values = np.asarray(util(sample_t[counted], gpu), dtype=float)
        values = values[~np.isnan(values)]
        judged[str(gpu)] = {
            "by": "process", "readings": int(values.size),
            "util_mean_pct": float(values.mean()) if values.size else None,
            "device_util_mean_pct": float(values.mean()) if values.size else None,
            "idle_fraction": float(np.mean(values < IDLE_THRESHOLD_PCT)) if values.size
            else None,
        }
    info.setdefault("judged", judged)

    first = np.flatnonzero(np.r_[True, epoch[1:] != epoch[:-1]]) if n else np.array([], int)
    bounds = np.r_[time_s[first] - step[first] - wait[first], end_s] if n else np.array([0.0])
    rows = []
    for e in range(epochs):
        lo, hi = bounds[e], bounds[e + 1]
        in_epoch = (sample_t > lo) & (sample_t <= hi)
        readings = np.concatenate([np.asarray(util(sample_t[in_epoch], g), dtype=float)
                                   for g in gpus]) if gpus else np.array([])
        readings = readings[~np.isnan(readings)]
        idle = float(np.mean(readings < IDLE_THRESHOLD_PCT)) if readings.size else np.nan
        mask = epoch == e
        if epoch_verdicts is not None:
            verdict = epoch_verdicts[e]
        elif not gpus:
            verdict = "cpu_fallback"
        elif not readings.size:
            verdict = "unmonitored"
        else:
            verdict = "idle" if idle > 0.5 else "ok"
        rows.append({
            "epoch": e,
            "batches": int(mask.sum()),
            "duration_s": hi - lo,
            "step_s_mean": float(step[mask].mean()),
            "wait_fraction": float(wait[mask].sum() / (hi - lo)),
            "gpu_util_mean": float(readings.mean()) if readings.size else np.nan,
            "gpu_util_p95": float(np.percentile(readings, 95)) if readings.size else np.nan,
            "gpu_mem_peak_mib": proc_mem_mib + 300.0 if readings.size else np.nan,
            "idle_fraction": idle,
            "verdict": verdict,
            "loss": 1.0 / (e + 1),
            "val_loss": 1.2 / (e + 1),
        })
    info.setdefault("duration_s", end_s)
    return write_run(log_dir, name,
                     run_info(name, gpus=gpus, mem_total_mib=mem_total_mib,
                              interval_s=interval_s, **info),
                     samples=samples, batches=batches, epochs=pd.DataFrame(rows))
