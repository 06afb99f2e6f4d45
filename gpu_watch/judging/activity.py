"""What the watched GPUs did as a whole, as the records show it.

Over several GPUs a figure is the mean of those that measured it (`known_mean`), never a mean
that counts a missing one as 0. The GPM activity and energy cells of an `epochs.csv` row
(`activity_row`) and `run.json`'s energy (`energy_summary`) describe the whole GPUs, whoever
used them: NVML measures neither per process. This training's own use is `usage`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gpu_watch.judging.verdict import GPUStats


def known_mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are known (not None); None when none is."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def activity_row(stats: Sequence[GPUStats]) -> dict[str, Any]:
    """The GPM and energy cells of an `epochs.csv` row (see `runlog.EPOCH_ACTIVITY_COLUMNS`):
    percentages averaged over the GPUs that have them, energy and power summed, each GPU's own;
    None where no GPU measured it."""
    def total(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    row: dict[str, Any] = {
        "gpu_sm_active_mean": known_mean([s.sm_active_mean for s in stats]),
        "gpu_tensor_active_mean": known_mean([s.tensor_active_mean for s in stats]),
        "gpu_dram_bw_mean": known_mean([s.dram_bw_mean for s in stats]),
        "gpu_energy_j": total([s.energy_j for s in stats]),
        "gpu_power_mean_w": total([s.power_mean_w for s in stats]),
    }
    for s in stats:
        row[f"gpu{s.gpu}_sm_active_mean"] = s.sm_active_mean
        row[f"gpu{s.gpu}_energy_j"] = s.energy_j
        row[f"gpu{s.gpu}_power_mean_w"] = s.power_mean_w
    return row


def energy_summary(stats: Sequence[GPUStats]) -> dict[str, Any]:
    """The run's energy as `run.json` records it: the total over the watched GPUs, how it was
    measured, and each GPU's share. It is the whole GPUs' energy, whoever used them."""
    known = [s for s in stats if s.energy_j is not None]
    methods = sorted({s.energy_method for s in known})
    return {
        "total_j": round(sum(s.energy_j for s in known), 3) if known else None,
        "method": None if not methods else methods[0] if len(methods) == 1 else "mixed",
        "scope": "whole GPU: NVML does not measure energy per process",
        "gpus": {str(s.gpu): {"energy_j": None if s.energy_j is None else round(s.energy_j, 3),
                              "method": s.energy_method,
                              "power_mean_w": None if s.power_mean_w is None
                              else round(s.power_mean_w, 2)}
                 for s in stats},
    }
