"""The idle detector: whether this training has left every watched GPU idle for the patience.

`Timeline` feeds it each reading's judged figure (`usage.ReadingJudge`) and, after step 0, each
tick; the first stretch that lasts `idle_patience_s` becomes the run's one `IdleEvent`, which
the callback acts on (`on_idle`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gpu_watch.judging.usage import idle
from gpu_watch.sensing.nvml import Reading


@dataclass(frozen=True)
class IdleEvent:
    """This training left every watched GPU under the threshold from `start_s` to `end_s`
    (seconds since training started).

    `util_mean_pct` is each GPU's mean utilization over that stretch as judged: this process's
    own where NVML attributes it, else the device's (see `timeline.Timeline`).
    `device_util_mean_pct` is the device's, whoever used it: far above the other when another
    process kept the GPU busy meanwhile.
    """

    start_s: float
    end_s: float
    util_mean_pct: dict[int, float]
    device_util_mean_pct: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON-ready record written to `run.json` and carried by `GPUIdleError`."""
        return {
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "duration_s": round(self.end_s - self.start_s, 3),
            "util_mean_pct": {str(k): round(v, 1) for k, v in self.util_mean_pct.items()},
            "device_util_mean_pct": {str(k): round(v, 1)
                                     for k, v in self.device_util_mean_pct.items()},
        }


@dataclass(slots=True)
class _IdleSums:
    """Running sums of an idle stretch on one GPU: the judged figure and the device's."""

    judged_pct: float = 0.0
    judged_n: int = 0
    device_pct: float = 0.0
    device_n: int = 0


class IdleWatch:
    """Watches the judged readings for a stretch in which every watched GPU idled.

    Args:
        gpus: NVML indices of the watched GPUs; readings of any other GPU say nothing.
        threshold_pct: Utilization under this counts as idle, percent.
        patience_s: Seconds every GPU must stay idle before the `IdleEvent` fires.
    """

    def __init__(self, gpus: Iterable[int], threshold_pct: float, patience_s: float) -> None:
        self.gpus = frozenset(gpus)
        self.threshold = threshold_pct
        self.patience = patience_s
        self.event: IdleEvent | None = None  # the run's one event, once it fired
        self._since: float | None = None
        self._sums: dict[int, _IdleSums] = {}
        self._last_judged: dict[int, float] = {}  # each GPU's latest judged utilization

    def see(self, r: Reading) -> None:
        """Keep the latest judged figure of each watched GPU, from the run's first reading on
        (before step 0 ends too): what a GPU was last seen doing stands until the loop brings a
        new figure of it."""
        if r.judged_util_pct is not None and r.gpu in self.gpus:
            self._last_judged[r.gpu] = r.judged_util_pct

    def track(self, readings: Sequence[Reading], paused: bool) -> IdleEvent | None:
        """Take one tick of the loop (its readings already `see`n); return the `IdleEvent` the
        first time idleness lasts the patience (it fires once per run). While `paused`
        (validation compiles and loads data too) no stretch runs."""
        now = readings[0].time_s
        # A GPU without a judged value this tick (no new NVML sample of this process yet,
        # unsupported, lost, a failed read, busy with work that may be someone else's) keeps
        # its latest one (see `see`): NVML samples processes every 1/6 s to 1 s, so most ticks
        # bring no new figure of a busy training, and a GPU that last worked, even just before
        # step 0 ended, must not let the others' idleness stand for all. A GPU never judged is
        # not evidence either way; at least one GPU must have been judged idle this tick.
        measured = [r for r in readings if r.gpu in self.gpus and r.judged_util_pct is not None]
        all_idle = (not paused and bool(measured)
                    and all(idle(u, self.threshold) for u in self._last_judged.values()))
        if not all_idle:
            self._since = None
            self._sums = {}
            return None
        if self._since is None:
            self._since = now
        for r in measured:
            sums = self._sums.setdefault(r.gpu, _IdleSums())
            sums.judged_pct += r.judged_util_pct
            sums.judged_n += 1
            if r.util_pct is not None:
                sums.device_pct += r.util_pct
                sums.device_n += 1
        if self.event is None and now - self._since >= self.patience:
            means = {g: s.judged_pct / s.judged_n for g, s in self._sums.items() if s.judged_n}
            device = {g: s.device_pct / s.device_n for g, s in self._sums.items()
                      if s.device_n}
            self.event = IdleEvent(self._since, now, means, device)
            return self.event
        return None
