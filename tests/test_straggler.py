"""The straggler rule (`gpu_watch.judging.cluster.judge_cluster`): each threshold pinned at and
beside its boundary, and the figures it reports."""

from __future__ import annotations

import pytest

from gpu_watch.judging.cluster import (
    BALANCED,
    STRAGGLER,
    STRAGGLER_HELD_STEP_RATIO,
    STRAGGLER_MIN_WAIT_FRACTION,
    STRAGGLER_OTHERS_WAIT_RATIO,
    UNKNOWN,
    ClusterJudgement,
    RankFigures,
    judge_cluster,
)


def ranks(*figures: tuple[float | None, float | None]) -> list[RankFigures]:
    return [RankFigures(rank, wait, step) for rank, (wait, step) in enumerate(figures)]


def test_the_thresholds_are_the_documented_ones():
    assert (STRAGGLER_MIN_WAIT_FRACTION, STRAGGLER_OTHERS_WAIT_RATIO,
            STRAGGLER_HELD_STEP_RATIO) == (0.2, 0.5, 0.8)


def test_a_slow_input_that_holds_the_others_is_named():
    judgement = judge_cluster(ranks((0.02, 0.050), (0.65, 0.049), (0.01, 0.051)))
    assert judgement.verdict == STRAGGLER and judgement.straggler == 1
    assert judgement.ranks_judged == 3
    assert judgement.wait_fraction == 0.65
    assert judgement.others_wait_fraction == pytest.approx(0.015)
    assert judgement.step_ratio == pytest.approx(0.0505 / 0.049)


@pytest.mark.parametrize(("wait", "verdict"), [(0.2, STRAGGLER), (0.19999, BALANCED)])
def test_the_straggler_waits_at_least_a_fifth_of_its_time(wait, verdict):
    assert judge_cluster(ranks((0.0, 1.0), (wait, 1.0))).verdict == verdict


@pytest.mark.parametrize(("others", "verdict"), [(0.3, STRAGGLER), (0.30001, BALANCED)])
def test_the_others_wait_at_most_half_as_much(others, verdict):
    judgement = judge_cluster(ranks((others, 1.0), (0.6, 1.0)))
    assert judgement.verdict == verdict
    assert judgement.straggler == (1 if verdict == STRAGGLER else None)


@pytest.mark.parametrize(("step_s", "verdict"), [(0.8, STRAGGLER), (0.79999, BALANCED)])
def test_the_others_are_held_at_its_pace(step_s, verdict):
    # The other ranks' step time over the straggler's: at 0.8 they are held at the collective;
    # below it they run at their own pace (no collective ties them to the slow rank).
    judgement = judge_cluster(ranks((0.6, 1.0), (0.0, step_s)))
    assert judgement.verdict == verdict
    assert judgement.step_ratio == pytest.approx(step_s)


def test_others_slower_than_the_straggler_are_held_too():
    # Where the wait falls between steps (a torch DataLoader), the held ranks' steps are longer
    # than the straggler's own.
    assert judge_cluster(ranks((0.0, 0.3), (0.5, 0.1))).straggler == 1


def test_medians_of_the_others_decide():
    # One other rank that also waits a lot, one held rank that runs fast: the median of the
    # others still names rank 0.
    judgement = judge_cluster(ranks((0.8, 1.0), (0.5, 1.0), (0.1, 0.1), (0.0, 1.0)))
    assert judgement.others_wait_fraction == 0.1
    assert judgement.step_ratio == 1.0
    assert judgement.straggler == 0
    # Two of three others waiting as much as it: no single straggler.
    assert judge_cluster(ranks((0.8, 1.0), (0.5, 1.0), (0.45, 1.0), (0.0, 1.0))
                         ).verdict == BALANCED


@pytest.mark.parametrize(("busy", "verdict"), [(0.3, STRAGGLER), (0.30001, BALANCED)])
def test_held_ranks_whose_own_inputs_are_busy_as_long_name_none(busy, verdict):
    # Rank 0's input reads ahead: held at the collective, it finds its batch ready and waits
    # for no data, yet the sampler saw its producer at work `busy` of its loop. Up to half the
    # straggler's wait it is the straggler alone that holds the run; past it, both inputs are
    # slow and speeding up rank 1's would barely speed the run up.
    judgement = judge_cluster([RankFigures(0, 0.0, 1.0, busy), RankFigures(1, 0.6, 1.0, 0.62)])
    assert (judgement.verdict, judgement.straggler) == (
        verdict, 1 if verdict == STRAGGLER else None)
    assert judgement.others_wait_fraction == 0.0
    assert judgement.others_input_fraction == busy


def test_an_input_share_is_the_wait_or_the_time_seen_at_work_whichever_is_more():
    assert RankFigures(0, 0.4, 1.0, 0.1).input_share == 0.4
    assert RankFigures(0, 0.1, 1.0, 0.4).input_share == 0.4
    assert RankFigures(0, 0.1, 1.0).input_share == 0.1  # not sampled: the wait alone
    assert RankFigures(0, None, 1.0, 0.4).input_share is None  # no wait share: not judged
    # The others' median takes each rank's larger figure: 0.1 (wait), 0.4 (seen) and 0.2.
    judgement = judge_cluster([RankFigures(0, 0.9, 1.0), RankFigures(1, 0.1, 1.0, 0.05),
                               RankFigures(2, 0.0, 1.0, 0.4), RankFigures(3, 0.2, 1.0)])
    assert judgement.others_input_fraction == pytest.approx(0.2)
    assert judgement.others_wait_fraction == pytest.approx(0.1)


def test_every_rank_input_bound_names_none():
    judgement = judge_cluster(ranks((0.7, 0.1), (0.75, 0.1)))
    assert (judgement.verdict, judgement.straggler) == (BALANCED, None)
    assert judgement.wait_fraction == 0.75


def test_no_rank_waiting_names_none():
    assert judge_cluster(ranks((0.01, 0.02), (0.0, 0.02))).verdict == BALANCED


def test_a_tie_for_the_most_waiting_goes_to_the_lowest_rank():
    judgement = judge_cluster(ranks((0.0, 1.0), (0.6, 1.0), (0.6, 1.0), (0.0, 1.0),
                                    (0.0, 1.0)))
    assert (judgement.verdict, judgement.straggler) == (STRAGGLER, 1)
    # With only three ranks, the tied one is the others' median: they wait alike.
    judgement = judge_cluster(ranks((0.1, 1.0), (0.5, 1.0), (0.5, 1.0)))
    assert judgement.verdict == BALANCED
    assert judgement.others_wait_fraction == pytest.approx(0.3)


@pytest.mark.parametrize("missing", [(None, 1.0), (0.5, None)])
def test_ranks_without_figures_take_no_part(missing):
    assert judge_cluster(ranks((0.0, 1.0), missing)) == judge_cluster(ranks((0.0, 1.0)))
    judgement = judge_cluster(ranks((0.0, 1.0), missing, (0.6, 1.0)))
    assert (judgement.straggler, judgement.ranks_judged) == (2, 2)


def test_fewer_than_two_ranks_cannot_tell():
    assert judge_cluster([]).verdict == UNKNOWN
    judgement = judge_cluster(ranks((0.9, 1.0), (None, None)))
    assert (judgement.verdict, judgement.straggler, judgement.ranks_judged) == (UNKNOWN, None, 1)
    assert judgement.wait_fraction is None


def test_a_straggler_without_step_time_is_not_named():
    # A step time of 0 (no batch timed) gives no ratio: nothing shows the others are held.
    judgement = judge_cluster(ranks((0.0, 1.0), (0.6, 0.0)))
    assert (judgement.verdict, judgement.step_ratio) == (BALANCED, None)


def test_a_judgement_built_without_figures_judged_no_rank():
    assert ClusterJudgement(UNKNOWN) == ClusterJudgement(UNKNOWN, None, 0, None, None, None,
                                                         None)
    assert judge_cluster([]) == ClusterJudgement(UNKNOWN)
