"""Pairing batches with readings, span statistics and the idle detector."""

from __future__ import annotations

import pytest

from gpu_watch.judging.data_wait import Loop, LoopTotals
from gpu_watch.judging.timeline import Timeline
from gpu_watch.sensing.nvml import Reading


def tick(t, *utils, mem=1000.0):
    return [Reading(time_s=t, gpu=g, util_pct=u, mem_used_mib=mem) for g, u in enumerate(utils)]


def test_a_batch_takes_the_mean_of_readings_inside_it():
    tl = Timeline([0], 10.0, 60.0, 0.2)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 1.0, None)
    for t, u in [(0.2, 10), (0.4, 20), (0.6, 30), (1.2, 99)]:
        tl.add_readings(tick(t, u))
    samples, rows = tl.drain()
    assert len(samples) == 4
    assert rows[0]["gpu0_util_pct"] == pytest.approx(20)
    assert rows[0]["gpu0_mem_used_mib"] == 1000
    assert rows[0]["step_s"] == 1.0


def test_a_batch_shorter_than_the_interval_takes_the_next_reading():
    tl = Timeline([0], 10.0, 60.0, 0.2)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.01, 0.02, None)
    tl.add_batch(0, 1, 1, 0.03, 0.04, 0.01)
    _, rows = tl.drain()
    assert rows == []  # not ready: no reading yet describes them
    tl.add_readings(tick(0.2, 77))
    _, rows = tl.drain()
    assert [r["gpu0_util_pct"] for r in rows] == [77, 77]
    assert rows[1]["wait_s"] == 0.01


def test_final_drain_writes_unpaired_batches_with_nan_not_zero():
    tl = Timeline([0], 10.0, 60.0, 0.2)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 0.01, None)
    _, rows = tl.drain(final=True)
    assert rows[0]["gpu0_util_pct"] is None


def test_missing_readings_do_not_count_as_idle():
    tl = Timeline([0], 10.0, 60.0, 0.2)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 0.1, None)
    for t in range(10):
        tl.add_readings(tick(0.2 + t, None))
    tl.add_readings(tick(20.0, 90))
    (stats,) = tl.end_epoch(20.0).gpu_stats()
    assert stats.util_samples == 1 and stats.device_idle_fraction == 0.0
    assert stats.util_mean == 90


def test_readings_before_the_first_step_end_are_not_counted():
    tl = Timeline([0], 10.0, 1.0, 0.2)
    tl.begin_epoch(0)
    for t in range(5):  # compilation: the GPU is idle, and that is fine
        assert tl.add_readings(tick(t * 0.5, 0)) is None
    tl.add_batch(0, 0, 1, 0.0, 2.5, None)
    tl.add_readings(tick(3.0, 50))
    (stats,) = tl.run_stats()
    assert stats.util_samples == 1


def test_statistics_mean_p95_and_threshold_edge():
    tl = Timeline([0], 10.0, 60.0, 0.2)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 0.01, None)
    for i, u in enumerate([10] * 10 + [9.6] * 10):  # 10 is not under 10; 9.6 is
        tl.add_readings(tick(0.2 * (i + 1), u))
    (stats,) = tl.end_epoch(4.0).gpu_stats()
    assert stats.device_idle_fraction == 0.5
    assert stats.util_p95 == 10
    assert stats.util_mean == pytest.approx(9.8, abs=0.11)


def test_idle_event_fires_once_after_the_patience_on_every_gpu():
    tl = Timeline([0, 1], 10.0, 1.0, 0.2)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 0.1, None)
    assert tl.add_readings(tick(0.2, 0, 50)) is None  # GPU 1 still works
    events = [tl.add_readings(tick(0.2 + 0.2 * k, 0, 2)) for k in range(1, 8)]
    fired = [e for e in events if e is not None]
    assert len(fired) == 1
    event = fired[0]
    assert event.start_s == pytest.approx(0.4)
    assert event.end_s - event.start_s >= 1.0
    assert event.util_mean_pct == {0: 0.0, 1: 2.0}
    assert tl.idle_event is event


def test_idle_stretch_resets_on_work_and_on_missing_readings():
    tl = Timeline([0], 10.0, 1.0, 0.2)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 0.1, None)
    pattern = [0, 0, 0, 0, 50, 0, 0, 0, 0, None, 0, 0, 0, 0]
    events = [tl.add_readings(tick(0.2 * (i + 1), u)) for i, u in enumerate(pattern)]
    assert all(e is None for e in events)


def test_wait_fraction_over_the_run_leaves_step_0_out():
    tl = Timeline([], 10.0, 60.0, 0.2)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 1.0, None)  # step 0: compiling, not the loop
    tl.add_batch(0, 1, 1, 4.0, 5.0, 3.0)
    assert tl.run_wait().fraction == pytest.approx(0.75)
    assert tl.end_epoch(5.0).loop == Loop(batches=1, steps=1, step_s=1.0, wait_s=3.0, timed=1)
    assert tl.first_step_s == 1.0


def test_the_run_loop_counts_steps_across_epochs():
    """Steps (several per hook under steps_per_execution), step and wait seconds, whole run."""
    tl = Timeline([], 10.0, 60.0, 0.2)
    tl.begin_epoch(0)
    tl.add_batch(0, 3, 4, 0.0, 1.0, None)
    tl.begin_epoch(1)
    tl.add_batch(1, 0, 1, 2.0, 2.5, 1.0)
    tl.add_batch(1, 1, 1, 3.0, 3.25, 0.5)
    assert tl.run_loop() == LoopTotals(steps=6, step_s=1.75, wait_s=1.5, wait_fraction=1.5 / 2.25)
    assert tl.end_epoch(3.25).loop == Loop(batches=2, steps=2, step_s=0.75, wait_s=1.5, timed=2)


def test_a_batch_longer_than_a_flush_keeps_all_its_readings():
    tl = Timeline([0], 10.0, 60.0, 0.2)
    tl.begin_epoch(0)
    for t, u, mem in [(0.5, 90, 1000.0), (1.0, 90, 1000.0), (1.5, 0, 10.0)]:  # step 0 runs
        tl.add_readings(tick(t, u, mem=mem))
        tl.drain()  # a flush while the batch runs must not drop its readings
    tl.add_batch(0, 0, 1, 0.1, 1.8, None)
    tl.add_readings(tick(2.0, 0, mem=10.0))
    _, rows = tl.drain()
    assert rows[0]["gpu0_util_pct"] == pytest.approx(60)
    assert rows[0]["gpu0_mem_used_mib"] == 1000.0


def test_readings_during_step_0_count_for_no_span_and_the_next_one_does():
    tl = Timeline([0], 10.0, 60.0, 0.2)
    tl.begin_epoch(0)
    tl.add_readings(tick(0.2, 95))
    tl.add_readings(tick(0.4, 95))
    tl.add_batch(0, 0, 1, 0.0, 0.5, None)  # step 0 compiled while the GPU read 95 %
    (run,) = tl.run_stats()
    assert (run.readings, run.util_samples) == (0, 0)
    span = tl.end_epoch(0.55)
    assert span.readings == 0 and span.gpu_stats()[0].readings == 0
    assert not span.ready  # shorter than the interval after step 0: waits for its reading
    tl.add_readings(tick(0.6, 40))
    (ready,) = tl.ready_epochs()
    (stats,) = ready.gpu_stats()
    assert (stats.readings, stats.util_mean, ready.first_step_s) == (1, 40, 0.5)
    assert tl.run_stats()[0].util_mean == 40


def test_a_gpu_without_utilization_does_not_block_idle_detection():
    tl = Timeline([0, 1], 10.0, 0.5, 0.2)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 0.1, None)
    readings = [[Reading(time_s=0.2 * k, gpu=0, util_pct=1.0), Reading(time_s=0.2 * k, gpu=1)]
                for k in range(1, 6)]
    fired = [e for e in (tl.add_readings(r) for r in readings) if e is not None]
    assert len(fired) == 1 and fired[0].util_mean_pct == {0: 1.0}


def test_validation_does_not_count_towards_idle_patience():
    tl = Timeline([0], 10.0, 1.0, 0.2)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 0.1, None)
    tl.idle_paused = True  # validation compiles and loads data: the GPU idles meanwhile
    assert all(tl.add_readings(tick(0.2 * k, 0)) is None for k in range(1, 20))
    tl.idle_paused = False
    fired = [e for e in (tl.add_readings(tick(4.0 + 0.2 * k, 0)) for k in range(7)) if e]
    assert len(fired) == 1 and fired[0].start_s == pytest.approx(4.0)


def test_a_gpu_that_last_worked_holds_off_the_idle_event_until_a_new_figure_says_idle():
    # NVML samples a process every 1/6 s to 1 s, so most ticks bring no new figure of its own;
    # GPU 1, shared and busy, says nothing either way without one.
    tl = Timeline([0, 1], 10.0, 0.5, 0.2)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 0.1, None)

    def readings(t, own_1):
        return [Reading(time_s=t, gpu=0, util_pct=2.0, proc_util_pct=2.0, procs=1),
                Reading(time_s=t, gpu=1, util_pct=90.0, proc_util_pct=own_1, procs=2)]

    quiet = [tl.add_readings(readings(0.2 * k, 80.0 if k == 1 else None)) for k in range(1, 8)]
    assert quiet == [None] * 7  # GPU 1 last worked: GPU 0 alone idle is not the stop signal
    events = [tl.add_readings(readings(1.6 + 0.2 * k, 0.0 if k == 0 else None))
              for k in range(5)]
    fired = [e for e in events if e is not None]
    assert len(fired) == 1 and fired[0] is events[3]
    assert fired[0].start_s == pytest.approx(1.6)
    assert fired[0].util_mean_pct == {0: 2.0, 1: 0.0}  # the figures NVML gave, none repeated
    assert fired[0].device_util_mean_pct == {0: 2.0, 1: 90.0}
