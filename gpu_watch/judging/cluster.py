"""The ranks of one multi-worker run judged together: is one of them a straggler?

In synchronous data-parallel training every rank meets the others at a collective step (the
all-reduce of the gradients) once per step, so one rank whose input pipeline is slow holds all
of them back. The ranks it holds show it: they take as long per step as it does, yet wait little
for data of their own, as their time goes to waiting at the collective. The rank that holds
them waits for its data much more than they do. A run whose ranks all wait alike (all input
bound, or none) has no straggler: speeding one rank up would not speed the run up.

Nor does it where the held ranks' own inputs are nearly as slow. A pipeline that reads ahead
(tf.data's prefetch, a strategy's distributed dataset) has its next batch ready whenever its
rank is held at the collective, so that rank waits for no data of its own however busy its
producer is; of ranks whose inputs are alike, the one a hair slower then waits for all of
them. Where the sampler saw a rank's input at work, that share stands for its input's own pace.

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
# The ranks it holds wait for data, or keep their input busy, at most this share of the
# straggler's wait (the median of them): "little wait of their own". Above it the ranks' inputs
# are alike and no one rank is to blame.
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
        input_fraction: Share of its loop's time its own input was seen at work (the training
            thread fetching, or a Python producer behind tf.data running), 0-1, by the stack
            sampler's looks; None where the sampler did not judge it.
    """

    rank: int
    wait_fraction: float | None
    step_s: float | None
    input_fraction: float | None = None

    @property
    def input_share(self) -> float | None:
        """How slow its input is, as a share of its loop: its wait, or the time its input was
        seen at work where that is more (a pipeline that reads ahead works while its rank waits
        at the collective)."""
        if self.wait_fraction is None:
            return None
        return max(self.wait_fraction, self.input_fraction or 0.0)


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
        others_input_fraction: The median of the other ranks' `RankFigures.input_share`: their
            wait, or the share their inputs were seen at work where that is more.
    """

    verdict: str
    straggler: int | None = None
    ranks_judged: int = 0
    wait_fraction: float | None = None
    others_wait_fraction: float | None = None
    step_ratio: float | None = None
    others_input_fraction: float | None = None


def judge_cluster(ranks: Sequence[RankFigures]) -> ClusterJudgement:
    """Name the straggler of a multi-worker run, if there is one.

    The rank that waits for data most is the straggler when all three hold:

    - it waits at least `STRAGGLER_MIN_WAIT_FRACTION` of its loop's time;
    - the other ranks (their median) wait at most `STRAGGLER_OTHERS_WAIT_RATIO` times as much,
      or, where their inputs were seen at work longer than they waited, keep them at work at
      most that long (`RankFigures.input_share`);
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
    others_input = statistics.median(r.input_share for r in others)
    others_step = statistics.median(r.step_s for r in others)
    step_ratio = others_step / top.step_s if top.step_s > 0 else None
    named = (top.wait_fraction >= STRAGGLER_MIN_WAIT_FRACTION
             and others_input <= STRAGGLER_OTHERS_WAIT_RATIO * top.wait_fraction
             and step_ratio is not None and step_ratio >= STRAGGLER_HELD_STEP_RATIO)
    return ClusterJudgement(
        STRAGGLER if named else BALANCED,
        straggler=top.rank if named else None,
        ranks_judged=len(known),
        wait_fraction=top.wait_fraction,
        others_wait_fraction=others_wait,
        step_ratio=step_ratio,
        others_input_fraction=others_input,
    )
