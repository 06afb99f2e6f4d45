"""GPUWatch's options, checked once when `GPUWatch` is built: a bad value fails there, with an
error that names it and what would be valid, before any training time is spent."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from gpu_watch.export import check_targets
from gpu_watch.judging.usage import DEFAULT_IDLE_THRESHOLD_PCT
from gpu_watch.sensing.job import check_job_id
from gpu_watch.sensing.sampler import DEFAULT_INTERVAL_S, check_interval

ON_IDLE = ("warn", "stop", "raise")
ON_LOG_ERROR = ("raise", "warn")


@dataclass(frozen=True)
class Config:
    """GPUWatch's options, validated on construction (see `GPUWatch` for their meaning)."""

    log_dir: str = "gpu_watch_logs"
    run_name: str | None = None
    interval_s: float = DEFAULT_INTERVAL_S
    idle_threshold_pct: float = DEFAULT_IDLE_THRESHOLD_PCT
    idle_patience_s: float = 60.0
    on_idle: str = "warn"
    require_gpu: bool = False
    check_placement: bool = True
    plot: bool = True
    on_log_error: str = "raise"
    log_metrics: bool = True
    export: tuple[Any, ...] = ()
    measure_gpu_speedup: bool = False
    job_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.log_dir, (str, os.PathLike)) or not str(self.log_dir):
            raise ValueError(f"log_dir must be a non-empty path, got {self.log_dir!r}")
        object.__setattr__(self, "log_dir", os.fspath(self.log_dir))
        if self.run_name is not None and (
            not isinstance(self.run_name, str) or not self.run_name.strip()
            or any(ch in self.run_name for ch in "/\\\0") or self.run_name in (".", "..")
        ):
            raise ValueError(
                f"run_name must be None or a folder name without '/' or '\\', "
                f"got {self.run_name!r}"
            )
        check_job_id(self.job_id)
        check_interval(self.interval_s)
        _check_number("idle_threshold_pct", self.idle_threshold_pct, 0, 100, "percent")
        _check_number("idle_patience_s", self.idle_patience_s, 0, None, "seconds")
        for name, value, allowed in (("on_idle", self.on_idle, ON_IDLE),
                                     ("on_log_error", self.on_log_error, ON_LOG_ERROR)):
            if value not in allowed:
                raise ValueError(
                    f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
                )
        for name in ("require_gpu", "check_placement", "plot", "log_metrics",
                     "measure_gpu_speedup"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        object.__setattr__(self, "export", check_targets(self.export))


def _check_number(name: str, value: Any, low: float, high: float | None, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a number ({unit}), got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {allowed} {unit}, got {value!r}")
