"""The Timeline's exact figures: batch rows, which readings describe a batch, waiting for data,
span statistics and the idle event's record."""

from __future__ import annotations

import pytest

from gpu_watch.judging.data_wait import MIN_WAIT_TICKS, Loop, LoopTotals, Wait, seen_at_work
from gpu_watch.judging.idle_watch import IdleEvent
from gpu_watch.judging.timeline import Timeline
from gpu_watch.judging.usage import SpanStats
from gpu_watch.judging.verdict import OtherUse
from gpu_watch.sensing.nvml import OtherProcess, Reading
from gpu_watch.sensing.steps import Step


def reading(t, util=None, gpu=0, **kw):
    return Reading(time_s=t, gpu=gpu, util_pct=util, **kw)


def timeline(gpus=(0,), interval_s=0.25):
    tl = Timeline(list(gpus), 10.0, 60.0, interval_s)
    tl.begin_epoch(0)
    return tl


def test_the_idle_event_record():
    event = IdleEvent(0.12345, 1.98765, {0: 3.14159, 1: 12.3456}, {0: 97.0612, 1: 12.3456})
    assert event.to_dict() == {"start_s": 0.123, "end_s": 1.988, "duration_s": 1.864,
                               "util_mean_pct": {"0": 3.1, "1": 12.3},
                               "device_util_mean_pct": {"0": 97.1, "1": 12.3}}
    assert IdleEvent(0.0, 1.0, {0: 1.0}).to_dict()["device_util_mean_pct"] == {}


def test_a_batch_row_has_every_field():
    tl = timeline(gpus=(0, 2))
    tl.add_batch(3, 7, 2, 1.25, 2.0, 0.5, compute_s=0.5, other_s=0.125)
    tl.add_readings([reading(2.0, 40.0, mem_used_mib=900.0), reading(2.0, 60.0, gpu=2)])
    _, rows = tl.drain()  # a reading exactly at the batch's end describes it
    assert rows == [{"epoch": 3, "batch": 7, "steps": 2, "time_s": 2.0, "step_s": 0.5,
                     "wait_s": 0.5, "other_s": 0.125, "gpu0_util_pct": 40.0,
                     "gpu0_mem_used_mib": 900.0, "gpu2_util_pct": 60.0,
                     "gpu2_mem_used_mib": None}]


def test_drain_hands_out_at_most_the_limit():
    tl = timeline()
    for b in range(5):
        tl.add_batch(0, b, 1, 0.1 * b, 0.1 * b + 0.05, None)
    tl.add_readings([reading(1.0, 50.0)])
    assert [r["batch"] for r in tl.drain(limit=2)[1]] == [0, 1]
    assert [r["batch"] for r in tl.drain(limit=2)[1]] == [2, 3]
    assert [r["batch"] for r in tl.drain()[1]] == [4]


def test_only_readings_inside_a_batch_describe_it():
    tl = timeline()
    tl.add_batch(0, 0, 1, 1.0, 2.0, None)
    tl.add_readings([reading(0.5, 0.0)])  # before the batch began
    tl.add_readings([reading(1.5, 90.0)])
    tl.add_readings([reading(2.0, 70.0)])
    _, rows = tl.drain()
    assert rows[0]["gpu0_util_pct"] == 80.0


@pytest.mark.parametrize(("after_s", "util"), [(0.5, 33.0), (0.75, None)])
def test_a_short_batch_takes_a_reading_up_to_two_intervals_after_it(after_s, util):
    tl = timeline(interval_s=0.25)
    tl.add_batch(0, 0, 1, 1.0, 1.125, None)
    tl.add_readings([reading(1.125 + after_s, 33.0)])
    _, rows = tl.drain()
    assert rows[0]["gpu0_util_pct"] == util


def test_readings_of_a_batch_still_running_survive_a_flush():
    tl = timeline()
    tl.add_batch(0, 0, 1, 0.0, 0.1, None)
    tl.add_readings([reading(0.25, 5.0)])
    tl.drain()
    tl.add_batch(0, 1, 1, 0.5, 1.5, None)  # pending while readings come in and rows flush
    for t, util in [(0.75, 10.0), (1.0, 20.0), (1.25, 60.0)]:
        tl.add_readings([reading(t, util)])
        tl.drain()
    tl.add_batch(0, 2, 1, 1.5, 1.6, None)  # a later batch, pending too
    tl.drain()
    tl.add_readings([reading(1.75, 0.0)])
    _, rows = tl.drain()
    assert [r["gpu0_util_pct"] for r in rows] == [30.0, 0.0]


def test_waiting_for_data_adds_up_over_batches_and_ticks():
    tl = Timeline([0], 10.0, 60.0, 0.25)
    assert tl.run_wait().fraction is None
    tl.add_data_tick(True)  # before the first step: compiling, not waiting
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 0.25, None)  # step 0
    tl.add_batch(0, 1, 1, 0.375, 0.5, 0.125, other_s=0.0, measure="fetch_timed")
    tl.add_batch(0, 2, 1, 0.625, 0.75, 0.125, other_s=0.125, measure="fetch_timed")
    assert tl.run_wait().fraction == pytest.approx(0.4)  # 0.25 of 0.625
    for fetching in [True] * 19:  # every batch's wait was timed: the samples do not count
        tl.add_data_tick(fetching)
    wait = tl.run_wait()
    assert (wait.fraction, wait.measure, wait.ticks, wait.fetching_ticks) == (
        pytest.approx(0.4), "fetch_timed", 19, 19)
    assert (wait.compute_s, wait.other_s, wait.loop_s) == (0.25, 0.125, 0.625)
    assert tl.end_epoch(0.875).loop == Loop(
        batches=2, steps=2, step_s=0.25, wait_s=0.25, other_s=0.125, timed=2,
        measure="fetch_timed", ticks=19, fetching_ticks=19)
    tl.begin_epoch(1, 1.0)
    tl.add_batch(1, 0, 1, 1.0, 1.25, None, other_s=0.25)  # no wait timed: samples decide
    for fetching in [True] * 14 + [False] * 6:
        tl.add_data_tick(fetching)
    span = tl.end_epoch(1.5)
    epoch = span.loop.wait()
    assert (epoch.fraction, epoch.measure, epoch.ticks) == (0.7, "sampled_ticks", 20)
    # 0.7 of the epoch's 0.5 s loop: the whole step's 0.25 s, then 0.1 of the 0.25 s between.
    assert (epoch.wait_s, epoch.compute_s, epoch.other_s) == (
        pytest.approx(0.35), 0.0, pytest.approx(0.15))
    assert span.loop == Loop(batches=1, steps=1, step_s=0.25, other_s=0.25, ticks=20,
                             fetching_ticks=14)
    # Over the run one batch of three was not timed: the samples (33 of 39) stand for all.
    assert tl.run_wait().to_dict() == {"fraction": 0.8462, "measure": "sampled_ticks",
                                       "wait_s": 0.9519, "loop_s": 1.125, "ticks": 39,
                                       "fetching_ticks": 33, "producing_ticks": 0,
                                       "min_ticks": 20}


def test_the_time_between_steps_is_never_a_wait_for_data():
    loop = Loop(batches=2, steps=2, step_s=0.25, other_s=0.75)
    wait = loop.wait()  # no wait timed, no samples: unknown, not 75 %
    assert (wait.fraction, wait.measure, wait.loop_s, wait.other_fraction) == (
        None, None, 1.0, 0.75)
    assert wait.breakdown()["data_wait_s"] is None


@pytest.mark.parametrize(("timed", "fraction", "measure"), [
    (2, 0.25, "ready_timed"),  # every batch timed: exact
    (1, None, None),  # one batch not timed and too few samples: not measured
])
def test_a_wait_is_timed_only_where_every_batch_was(timed, fraction, measure):
    loop = Loop(batches=2, steps=2, step_s=0.5, wait_s=0.25, other_s=0.25, timed=timed,
                measure="ready_timed", ticks=19, fetching_ticks=19)
    wait = loop.wait()
    assert (wait.fraction, wait.measure, wait.loop_s) == (fraction, measure, 1.0)


def test_the_breakdown_adds_up_to_the_loop():
    wait = Loop(batches=4, steps=4, step_s=0.5, wait_s=0.3, other_s=0.2, timed=4,
                measure="fetch_timed").wait()
    assert wait.breakdown() == {"compute_s": 0.5, "data_wait_s": 0.3, "other_s": 0.2,
                                "loop_s": 1.0, "compute_fraction": 0.5,
                                "data_wait_fraction": 0.3, "other_fraction": 0.2,
                                "wait_measure": "fetch_timed"}


@pytest.mark.parametrize(("ticks", "fraction"), [(19, None), (20, 1.0)])
def test_a_tick_share_counts_from_20_ticks_on(ticks, fraction):
    tl = timeline()
    tl.add_batch(0, 0, 1, 0.0, 0.25, None)
    for _ in range(ticks):
        tl.add_data_tick(True)
    assert tl.end_epoch(1.0).loop.wait().fraction == fraction == tl.run_wait().fraction


@pytest.mark.parametrize(("producing", "fraction"), [(15, 0.0), (16, 0.8), (20, 1.0)])
def test_a_generator_thread_counts_only_once_it_is_the_bottleneck(producing, fraction):
    tl = timeline()
    tl.add_batch(0, 0, 1, 0.0, 0.25, None)
    for i in range(20):  # busy in under 80 % of the ticks, it runs ahead and delays nothing
        tl.add_data_tick(False, producing=i < producing)
    wait = tl.run_wait()
    assert (wait.fraction, wait.producing_ticks) == (fraction, producing)
    tl.add_data_tick(True, producing=True)  # the training thread itself waits: counted once
    assert tl.run_wait().fetching_ticks == 1 and tl.run_wait().producing_ticks == producing


def test_the_wait_record_rounds_to_four_places():
    wait = Wait(0.123456, "sampled_ticks", 1.234567, 2.345678, 20, 3, 0, 1.111111, 0.0)
    assert wait.to_dict() == {"fraction": 0.1235, "measure": "sampled_ticks", "wait_s": 1.2346,
                              "loop_s": 2.3457, "ticks": 20, "fetching_ticks": 3,
                              "producing_ticks": 0, "min_ticks": 20}


def test_the_judged_figure_is_the_process_s_own_else_the_device_s_where_it_can_tell():
    tl = Timeline([0, 1], 10.0, 60.0, 0.25)
    own = reading(0.25, 80.0, proc_util_pct=30.0, procs=1)
    assert tl.judge_reading(own) == 30.0
    # GPU 0 gave this process a figure of its own: without one, its busy device says nothing.
    assert tl.judge_reading(reading(0.5, 80.0, procs=1)) is None
    assert tl.judge_reading(reading(0.5, 10.0, procs=1)) is None  # at the threshold: not idle
    assert tl.judge_reading(reading(0.5, 9.9, procs=1)) == 9.9  # under it the device bounds it
    # GPU 1 never did: its device's work is this training's while no other process is listed.
    assert tl.judge_reading(reading(0.5, 80.0, gpu=1, procs=1)) == 80.0
    assert tl.judge_reading(reading(0.5, 80.0, gpu=1)) == 80.0
    assert tl.judge_reading(reading(0.5, 80.0, gpu=1, procs=2)) is None
    assert tl.judge_reading(reading(0.5, None, gpu=1, procs=1)) is None


def test_epoch_figures_before_step_0_ended_are_empty():
    tl = timeline()
    tl.add_readings([reading(0.25, 40.0)])
    (stats,) = tl.end_epoch(0.3).gpu_stats()
    assert (stats.readings, stats.util_samples, stats.util_mean) == (0, 0, None)


def test_an_epoch_without_readings_names_every_watched_gpu():
    tl = timeline(gpus=(0, 3))
    assert [(s.gpu, s.readings) for s in tl.end_epoch(1.0).gpu_stats()] == [(0, 0), (3, 0)]


def test_readings_during_step_0_are_written_for_every_gpu_and_judged_by_none():
    tl = timeline(gpus=(0, 3))
    tl.add_readings([reading(0.25, 20.0), reading(0.25, 40.0, gpu=3)])
    tl.add_batch(0, 0, 1, 0.0, 0.3, None)
    samples, _ = tl.drain()
    assert [(r.gpu, r.judged_util_pct) for r in samples] == [(0, 20.0), (3, 40.0)]
    assert [(s.gpu, s.readings) for s in tl.run_stats()] == [(0, 0), (3, 0)]
    tl.add_readings([reading(0.5, 60.0), reading(0.5, 80.0, gpu=3)])
    assert [(s.gpu, s.util_mean) for s in tl.run_stats()] == [(0, 60.0), (3, 80.0)]


def test_span_statistics_in_full():
    span = SpanStats()
    empty = span.stats(3)
    assert (empty.gpu, empty.util_samples, empty.util_mean, empty.proc_seen, empty.others_seen,
            empty.lost, empty.proc_mem_peak_mib) == (3, 0, None, False, False, False, None)
    span.add(reading(0.25, mem_used_mib=500.0, proc_mem_mib=200.0, procs=1, proc_listed=True),
             10.0)
    no_util = span.stats(3)
    assert (no_util.gpu, no_util.util_samples, no_util.mem_peak_mib, no_util.proc_mem_peak_mib,
            no_util.proc_seen, no_util.others_seen, no_util.lost) == (
        3, 0, 500.0, 200.0, True, False, False)
    span.add(reading(0.5, 100.7, proc_mem_mib=150.0, lost=True), 10.0)  # over 100: the top
    span.add(reading(0.75, 0.0, proc_mem_mib=None), 10.0)
    full = span.stats(3)
    assert (full.gpu, full.util_samples, full.util_p95, full.proc_mem_peak_mib, full.lost) == (
        3, 2, 100.0, 200.0, True)
    assert full.util_mean == pytest.approx(50.35)


def test_span_statistics_of_the_other_processes_in_full():
    span = SpanStats()
    trainer = OtherProcess(201, "trainer", used_mib=300.0, sm_util_pct=40.0)
    span.add(reading(0.25, 80.0, proc_util_pct=50.0, procs=3, others=(trainer,),
                     others_util_pct=40.0, others_mem_mib=300.0), 10.0)  # both worked
    span.add(reading(0.5, 60.0, proc_util_pct=5.0, procs=2, others_util_pct=10.0,
                     others_mem_mib=100.0, others=(
                         OtherProcess(201, None, used_mib=100.0, sm_util_pct=10.0),
                         OtherProcess(202, "viewer", used_mib=50.0, sm_util_pct=None))), 10.0)
    span.add(reading(0.75, 20.0, proc_util_pct=12.0, procs=1, others_util_pct=9.5), 10.0)
    span.add(reading(1.0, 30.0, proc_util_pct=10.0, procs=2, others_util_pct=20.0), 10.0)
    stats = span.stats(1)
    # The others were at or above the threshold in 3 of 4 readings, in 2 of them with this
    # process at or above it too (50 % and exactly 10 %).
    assert (stats.others_util_mean, stats.others_busy_fraction, stats.contended_fraction) == (
        19.875, 0.75, 0.5)
    assert (stats.others_mem_peak_mib, stats.procs_max) == (300.0, 3)
    assert (stats.proc_util_samples, stats.proc_util_p95) == (4, 50.0)
    assert stats.others == (OtherUse(201, "trainer", 25.0, 300.0),
                            OtherUse(202, "viewer", None, 50.0))


def test_span_statistics_without_the_others_figures_leave_them_unknown():
    span = SpanStats()
    span.add(reading(0.25, 80.0, procs=1), 10.0)
    stats = span.stats(0)
    assert (stats.others_util_mean, stats.others_busy_fraction, stats.contended_fraction,
            stats.others_mem_peak_mib, stats.others) == (None, None, None, None, ())


@pytest.mark.parametrize(("proc_mem_mib", "procs", "seen"), [
    (0.0, 1, (False, True)),  # holds nothing: the one process listed is another
    (0.5, 1, (True, False)),
    (0.5, 2, (True, True)),
    (None, 2, (False, False)),  # nothing to tell by
])
def test_readings_without_the_listed_flag_infer_it_from_memory(proc_mem_mib, procs, seen):
    span = SpanStats()
    span.add(reading(0.25, 50.0, proc_mem_mib=proc_mem_mib, procs=procs), 10.0)
    stats = span.stats(0)
    assert (stats.proc_seen, stats.others_seen) == seen


@pytest.mark.parametrize(("listed", "procs", "lost"), [(False, None, True), (True, 2, False)])
def test_a_span_without_utilization_keeps_its_flags(listed, procs, lost):
    span = SpanStats()
    span.add(reading(0.25, procs=procs, proc_listed=listed, lost=lost), 10.0)
    stats = span.stats(0)
    assert (stats.util_samples, stats.proc_seen, stats.others_seen, stats.lost) == (
        0, listed, procs is not None, lost)


def test_ticks_outside_the_loop_count_for_nothing():
    tl = Timeline([0], 10.0, 60.0, 0.25)
    tl.add_batch(0, 0, 1, 0.0, 0.25, None)
    for _ in range(20):
        tl.add_data_tick(True)  # no epoch open: between epochs
    tl.begin_epoch(1, 1.0)
    for _ in range(20):
        tl.add_data_tick(True)  # the epoch sets up its data before its first batch
    tl.add_batch(1, 0, 1, 1.5, 1.75, None)
    tl.idle_paused = True
    for _ in range(20):
        tl.add_data_tick(True)  # validation
    tl.idle_paused = False
    assert tl.run_wait().ticks == 0
    for _ in range(20):
        tl.add_data_tick(False)
    span = tl.end_epoch(2.0)
    assert (span.loop.ticks, tl.run_wait().ticks) == (20, 20)
    assert (tl.run_wait().fraction, span.loop.wait().fraction) == (0.0, 0.0)


def test_a_gpu_last_seen_working_before_step_0_ended_keeps_the_idle_stop_away():
    """GPU 2's own figure comes every 1/6 s; the one before step 0 ended (85 %) is its latest
    when the loop starts: GPU 0 idling alone is not "every GPU idle"."""
    tl = Timeline([0, 2], 10.0, 0.1, 0.02)
    tl.begin_epoch(0, 0.0)

    def tick(t, gpu2_own):
        return tl.add_readings([reading(t, 2.0, gpu=0),
                                reading(t, 85.0, gpu=2, proc_util_pct=gpu2_own, procs=2)])

    assert tick(0.18, 85.0) is None  # step 0 still running
    tl.add_batch(0, 0, 1, 0.0, 0.19, None)  # step 0 ends
    for step in range(10):  # 0.2 s of the loop, no new figure of GPU 2's own
        assert tick(0.2 + 0.02 * step, None) is None
    assert tl.idle_event is None


def test_a_gpu_never_judged_is_no_evidence_either_way():
    tl = Timeline([0, 2], 10.0, 0.1, 0.02)
    tl.begin_epoch(0, 0.0)
    tl.add_batch(0, 0, 1, 0.0, 0.1, None)
    events = [tl.add_readings([reading(0.2 + 0.02 * step, 2.0, gpu=0),
                               reading(0.2 + 0.02 * step, 85.0, gpu=2, procs=2)])
              for step in range(7)]
    # GPU 2 is busy, but maybe with another process's work: it never gives this training a
    # figure, so GPU 0's idleness decides, and the patience (0.1 s) runs out at 0.3 s.
    assert events[:5] == [None] * 5 and events[5] is not None and events[6] is None
    assert events[5].start_s == 0.2 and events[5].end_s == pytest.approx(0.3)
    assert events[5].util_mean_pct == {0: 2.0}


def test_the_counters_start_at_zero_before_any_step():
    # They never go down (each is the largest seen so far), so a start above zero would stay.
    assert Timeline([], 10.0, 60.0, 0.2).run_loop() == LoopTotals(
        steps=0, step_s=0.0, wait_s=0.0, other_s=0.0, wait_fraction=None)


def test_the_counters_count_step_0_and_split_a_sampled_loop_by_its_share():
    timed = Timeline([], 10.0, 60.0, 0.2)
    timed.begin_epoch(0)
    timed.add_batch(0, 0, 1, 0.0, 1.0, 0.5, other_s=0.25, measure="fetch_timed")  # step 0
    timed.add_batch(0, 1, 1, 2.0, 2.5, 0.25, other_s=0.25, measure="fetch_timed")
    # Step 0 counts in the counters (not in the share: 0.25 of the loop after it).
    assert timed.run_loop() == LoopTotals(2, 1.5, 0.75, 0.5, 0.25)
    sampled = Timeline([], 10.0, 60.0, 0.2)
    sampled.begin_epoch(0)
    sampled.add_batch(0, 0, 1, 0.0, 1.0, None)
    sampled.add_batch(0, 1, 1, 1.0, 2.0, None, other_s=1.0)
    for fetching in [True] * 10 + [False] * 10:
        sampled.add_data_tick(fetching)
    # Half of the 3 s the steps took, step 0's included, went to waiting: out of the compute.
    # The input was seen at work (fetching) in half the looks: half of the 3 s loop.
    assert sampled.run_loop() == LoopTotals(2, 0.5, 1.5, 1.0, 0.5, 1.5)
    for _ in range(20):  # the share falls to a quarter: no counter goes down
        sampled.add_data_tick(False)
    assert sampled.run_loop() == LoopTotals(2, 1.25, 1.5, 1.0, 0.25, 1.5)
    for _ in range(40):  # a producer at work behind the loop: 50 of 80 looks found the input
        sampled.add_data_tick(False, producing=True)
    assert sampled.run_loop().input_s == pytest.approx(50 / 80 * 3.0)


def test_the_breakdown_rounds_each_figure_to_four_places():
    wait = Wait(fraction=0.123456, measure="sampled_ticks", wait_s=1.234567, loop_s=4.567891,
                ticks=20, fetching_ticks=3, producing_ticks=0, compute_s=2.345678,
                other_s=0.987654)
    assert wait.breakdown() == {"compute_s": 2.3457, "data_wait_s": 1.2346, "other_s": 0.9877,
                                "loop_s": 4.5679, "compute_fraction": 0.5135,
                                "data_wait_fraction": 0.1235, "other_fraction": 0.2162,
                                "wait_measure": "sampled_ticks"}


def test_a_timed_wait_keeps_the_ticks_that_found_a_producer_busy():
    wait = Loop(batches=2, steps=2, step_s=0.5, wait_s=0.25, other_s=0.25, timed=2,
                measure="ready_timed", ticks=5, fetching_ticks=1, producing_ticks=3).wait()
    assert (wait.fraction, wait.ticks, wait.fetching_ticks, wait.producing_ticks) == (
        0.25, 5, 1, 3)
    assert wait.input_fraction is None  # 5 looks are too few to tell a share


def test_the_input_seen_at_work_is_a_share_of_enough_looks():
    assert seen_at_work(MIN_WAIT_TICKS, 3, 5) == 8 / MIN_WAIT_TICKS
    assert seen_at_work(MIN_WAIT_TICKS - 1, 3, 5) is None
    assert seen_at_work(4, 1, 1, min_ticks=4) == 0.5
    assert seen_at_work(0, 0, 0, min_ticks=0) is None
    assert seen_at_work(1, 0, 1, min_ticks=1) == 1.0  # one look, where one is enough
    wait = Loop(batches=2, steps=2, step_s=0.5, wait_s=0.0, other_s=0.0, timed=2,
                measure="ready_timed", ticks=40, fetching_ticks=2, producing_ticks=30).wait()
    assert wait.input_fraction == 0.8 and wait.fraction == 0.0


def test_an_unmeasured_wait_leaves_the_loop_to_the_steps_and_the_time_between_them():
    """One batch of two timed, too few ticks: the wait that one batch measured is no share of
    the loop, so it stays in the steps' compute, and the breakdown still adds up."""
    wait = Loop(batches=2, steps=2, step_s=0.5, wait_s=0.25, other_s=0.25, timed=1,
                measure="fetch_timed", ticks=19, fetching_ticks=19, producing_ticks=2).wait()
    assert (wait.fraction, wait.measure, wait.wait_s) == (None, None, 0.0)
    assert (wait.compute_s, wait.other_s, wait.loop_s) == (0.75, 0.25, 1.0)
    assert (wait.ticks, wait.fetching_ticks, wait.producing_ticks) == (19, 19, 2)


def test_a_sampled_wait_takes_its_seconds_from_the_steps_and_their_measured_waits():
    """One batch of two timed (0.25 s waiting), enough ticks: the sampled share (half of the
    1 s loop) comes out of the steps with their measured wait first, and the three parts
    add up to the loop."""
    wait = Loop(batches=2, steps=2, step_s=0.5, wait_s=0.25, other_s=0.25, timed=1,
                measure="fetch_timed", ticks=20, fetching_ticks=10).wait()
    assert (wait.fraction, wait.measure, wait.wait_s, wait.loop_s) == (
        0.5, "sampled_ticks", 0.5, 1.0)
    assert (wait.compute_s, wait.other_s) == (0.25, 0.25)


def test_steps_timed_on_the_training_thread_count_with_their_wait_compute_and_measure():
    tl = Timeline([], 10.0, 60.0, 0.2)
    tl.begin_epoch(0)
    step_0 = Step(0, 0, 0.0, 1.0, None, None)
    timed = Step(1, 2, 1.5, 2.5, 0.25, None, compute_s=0.75, other_s=0.25,
                 measure="fetch_timed")
    assert tl.add_steps([step_0, timed]) is step_0
    assert tl.add_steps([]) is None
    wait = tl.run_wait()
    # The step's compute as timed (0.75 s), not its 1 s from begin to end.
    assert (wait.fraction, wait.measure, wait.compute_s, wait.loop_s) == (
        0.2, "fetch_timed", 0.75, 1.25)
    assert tl.run_loop() == LoopTotals(3, 1.75, 0.25, 0.25, 0.2)


def test_the_counters_split_a_sampled_loop_with_a_measured_wait_by_the_share():
    """Step 0, a batch whose wait was timed and one whose was not, then ticks that found the
    loop fetching half the time: half of all the loop's seconds are the wait, the steps and
    their measured wait give up what it takes, the time between steps keeps the rest."""
    tl = Timeline([], 10.0, 60.0, 0.2)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 1.0, None)
    tl.add_batch(0, 1, 1, 1.0, 2.0, 0.5, other_s=0.25, measure="fetch_timed")
    tl.add_batch(0, 2, 1, 2.5, 3.0, None, other_s=0.25)
    for fetching in [True] * 10 + [False] * 10:
        tl.add_data_tick(fetching)
    # The loop: 2.5 s of steps, 0.5 s measured waiting, 0.5 s between: 3.5 s, 1.75 s waiting,
    # and as long with the input seen at work.
    assert tl.run_loop() == LoopTotals(3, 1.25, 1.75, 0.5, 0.5, 1.75)


def test_a_bunch_of_steps_counts_as_each_of_them_would_alone():
    """The loop clock hands steps on in bunches: every figure is what the same steps added one
    at a time give (rows, last end, the epoch's loop, the run's, every step's)."""
    steps = [Step(0, 0, 0.0, 1.0, 0.125, None, compute_s=0.5, other_s=0.375),
             Step(1, 1, 1.5, 2.5, 0.25, None, compute_s=0.75, other_s=0.25,
                  measure="fetch_timed"),
             Step(2, 3, 2.75, 3.0, None, None, other_s=None),
             Step(4, 4, 3.0, 3.5, 0.125, None, compute_s=0.25, other_s=0.5,
                  measure="ready_timed")]
    bunched, alone = timeline(interval_s=0.2), timeline(interval_s=0.2)
    assert bunched.add_steps(steps) is steps[0]
    for step in steps:
        alone.add_batch(0, step.last_batch, step.steps, step.begin_s, step.end_s,
                        step.wait_s, step.compute_s, step.other_s, step.measure)
    # Every step's counts take step 0's timed compute, wait and time elsewhere.
    assert bunched.run_loop() == alone.run_loop() == LoopTotals(5, 1.75, 0.5, 1.125, None)
    assert bunched.run_wait() == alone.run_wait()
    assert bunched.end_epoch(4.0).loop == alone.end_epoch(4.0).loop == Loop(
        batches=3, steps=4, step_s=1.25, wait_s=0.375, other_s=0.75, timed=2,
        measure="ready_timed")
    # Readings at distinct moments: each row's utilization is that of its own span.
    for t, util in ((0.5, 10.0), (2.0, 20.0), (2.9, 30.0), (3.25, 40.0)):
        bunched.add_readings([reading(t, util)])
        alone.add_readings([reading(t, util)])
    rows = bunched.drain(final=True)[1]
    assert rows == alone.drain(final=True)[1]
    assert [r["gpu0_util_pct"] for r in rows] == [10.0, 20.0, 30.0, 40.0]
    assert [r["step_s"] for r in rows] == [0.5, 0.75, 0.25, 0.25]
    assert bunched._last_batch_end_s == alone._last_batch_end_s == 3.5


def test_a_loop_adds_another_s_counts_and_keeps_its_measure_where_the_other_has_none():
    loop = Loop(batches=1, steps=2, step_s=0.5, wait_s=0.25, other_s=0.125, timed=1,
                measure="fetch_timed", ticks=3)
    loop.add_loop(Loop(batches=2, steps=3, step_s=1.0, wait_s=0.5, other_s=0.25, timed=1,
                       ticks=7))
    assert loop == Loop(batches=3, steps=5, step_s=1.5, wait_s=0.75, other_s=0.375, timed=2,
                        measure="fetch_timed", ticks=3)
    loop.add_loop(Loop(measure="ready_timed"))
    assert loop.measure == "ready_timed"
