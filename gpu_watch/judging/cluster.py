"""The ranks of one multi-worker run judged together: is one of them a straggler?

In synchronous data-parallel training every rank meets the others at a collective step (the
all-reduce of the gradients) once per step, so one rank whose input pipeline is slow holds all
of them back. The ranks it holds show it: they take as long per step as it does, yet wait little
for data of their own, as their time goes to waiting at the collective. The rank that holds
them waits for its data much more than they do. A run whose ranks all wait alike (all input
bound, or none) has no straggler: speeding one rank up would not speed the run up.

A pure function over plain records, like `gpu_watch.judging.verdict`: no I/O, so every boundary
can be pinned by a test.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

STRAGGLER = "straggler"
BALANCED = "balanced"
UNKNOWN = "unknown"
CLUSTER_VERDICTS = (STRAGGLER, BALANCED, UNKNOWN)

# A straggler waits for data at least this share of its loop's time: less cannot hold the
# others back by much (the share the `input_bound` cause starts from is 0.3).
STRAGGLER_MIN_WAIT_FRACTION = 0.2
# The ranks it holds wait for data at most this share of the straggler's wait (the median of
# them): "little wait of their own". Above it the ranks wait alike and no one rank is to blame.
STRAGGLER_OTHERS_WAIT_RATIO = 0.5
# The ranks it holds take at least this share of its time per step (the median of them): held
# at the collective, they move at its pace. Ranks that do not meet at a collective (separate
# trainings) run at their own pace, and a slow one among them holds no one.
STRAGGLER_HELD_STEP_RATIO = 0.8


@dataclass(frozen=True, slots=True)
class RankFigures:
    """What one rank's run folder shows, as the straggler rule reads it.

    Attributes:
        rank: The worker's rank (0-based).
        wait_fraction: Share of its loop's time spent waiting for data, 0-1; None when unknown.
        step_s: Its time per training step, seconds (the loop's pace: the wait between steps
            included, the compile step left out); None when unknown.
    """

    rank: int
    wait_fraction: float | None
    step_s: float | None


@dataclass(frozen=True, slots=True)
class ClusterJudgement:
    """The run-level verdict of a multi-worker run.

    Attributes:
        verdict: `straggler` (one rank's input holds the others), `balanced` (none does), or
            `unknown` (fewer than two ranks with both figures).
        straggler: The straggler's rank, or None.
        ranks_judged: How many ranks had both figures.
        wait_fraction: The rank that waits most: its wait share (None when `unknown`).
        others_wait_fraction: The median wait share of the other ranks.
        step_ratio: The other ranks' median time per step over that rank's.
    """

    verdict: str
    straggler: int | None = None
    ranks_judged: int = 0
    wait_fraction: float | None = None
    others_wait_fraction: float | None = None
    step_ratio: float | None = None


def judge_cluster(ranks: Sequence[RankFigures]) -> ClusterJudgement:
    """Name the straggler of a multi-worker run, if there is one.

    The rank that waits for data most is the straggler when all three hold:

    - it waits at least `STRAGGLER_MIN_WAIT_FRACTION` of its loop's time;
    - the other ranks (their median) wait at most `STRAGGLER_OTHERS_WAIT_RATIO` times as much;
    - the other ranks (their median) take at least `STRAGGLER_HELD_STEP_RATIO` times its time
      per step: they are held at the collective step.

    Ranks without a wait share or a step time are left out; with fewer than two left, the
    verdict is `unknown`. Ties for the most waiting go to the lowest rank.

    Args:
        ranks: One record per rank of the run.

    Returns:
        The verdict, with the figures that decided it.
    """
    known = sorted((r for r in ranks if r.wait_fraction is not None and r.step_s is not None),
                   key=lambda r: r.rank)
    if len(known) < 2:
        return ClusterJudgement(UNKNOWN, ranks_judged=len(known))
    top = max(known, key=lambda r: r.wait_fraction)
    others = [r for r in known if r is not top]
    others_wait = statistics.median(r.wait_fraction for r in others)
    others_step = statistics.median(r.step_s for r in others)
    step_ratio = others_step / top.step_s if top.step_s > 0 else None
    named = (top.wait_fraction >= STRAGGLER_MIN_WAIT_FRACTION
             and others_wait <= STRAGGLER_OTHERS_WAIT_RATIO * top.wait_fraction
             and step_ratio is not None and step_ratio >= STRAGGLER_HELD_STEP_RATIO)
    return ClusterJudgement(
        STRAGGLER if named else BALANCED,
        straggler=top.rank if named else None,
        ranks_judged=len(known),
        wait_fraction=top.wait_fraction,
        others_wait_fraction=others_wait,
        step_ratio=step_ratio,
    )
