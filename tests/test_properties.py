"""Invariants that hold for any input (hypothesis): a missing reading never counts as idle;
per-epoch figures lie within the epoch's readings; epochs add up to the run."""

from __future__ import annotations

import tempfile
import warnings

import keras
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gpu_watch import GPUWatch, load_run
from gpu_watch.errors import GPUWatchWarning
from gpu_watch.judging.timeline import Timeline
from gpu_watch.judging.verdict import IDLE, UNMEASURED, UNMONITORED, Setting, judge
from gpu_watch.sensing.nvml import Reading
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

THRESHOLD = 10.0
ON_GPU = Setting(compute_on_gpu=True, framework_gpus=1, nvml_gpus=1, visible_gpus=1,
                 cuda_build=True)
# Reproducible in CI: the same examples every run, nothing stored between runs.
FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None)

utils = st.one_of(st.none(), st.floats(0, 100))
readings = st.tuples(utils, st.one_of(st.none(), st.floats(0, 81559)))  # (util %, memory MiB)


def after_step_0(patience_s=60.0):
    tl = Timeline([0], THRESHOLD, patience_s, 0.25)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 0.01, None)
    return tl


@FAST
@given(st.lists(utils, max_size=60), st.floats(0.0, 5.0))
def test_a_missing_reading_never_counts_as_idle(values, patience_s):
    tl = after_step_0(patience_s)
    events = []
    for i, util in enumerate(values):
        event = tl.add_readings([Reading(time_s=0.25 * (i + 1), gpu=0, util_pct=util)])
        events += [event] if event is not None else []
    (stats,) = tl.run_stats()
    measured = [u for u in values if u is not None]
    assert stats.util_samples == len(measured)
    if measured:
        assert stats.device_idle_fraction == sum(u < THRESHOLD for u in measured) / len(measured)
        # the same readings without the missing ones are judged the same
        alone = after_step_0(patience_s)
        for i, util in enumerate(measured):
            alone.add_readings([Reading(time_s=0.25 * (i + 1), gpu=0, util_pct=util)])
        assert judge(ON_GPU, alone.run_stats(), None) == judge(ON_GPU, [stats], None)
    else:
        # readings that could not tell: unknown; no reading at all: nothing to judge by
        assert stats.device_idle_fraction is None
        assert judge(ON_GPU, [stats], None).verdict == (UNMONITORED if values else UNMEASURED)
    # an idle stretch holds only readings measured under the threshold
    for event in events:
        inside = [u for i, u in enumerate(values) if event.start_s <= 0.25 * (i + 1) <= event.end_s]
        assert inside and all(u is not None and u < THRESHOLD for u in inside)


@FAST
@given(st.lists(readings, max_size=6), st.lists(st.lists(readings, max_size=12), min_size=1,
                                                 max_size=4))
@example(step_0=[(0.0, 5.0)], epochs=[[], []])  # no epoch borrows step 0's readings
def test_each_epoch_s_figures_lie_within_its_own_readings(step_0, epochs):
    tl = Timeline([0], THRESHOLD, 60.0, 0.25)
    t = 0.0

    def add(batch):
        nonlocal t
        for util, mem in batch:
            t += 0.25
            tl.add_readings([Reading(time_s=t, gpu=0, util_pct=util, mem_used_mib=mem)])

    for epoch, batch in enumerate(epochs):
        tl.begin_epoch(epoch)
        if epoch == 0:
            add(step_0)  # readings while step 0 compiles belong to no epoch's figures
            tl.add_batch(0, 0, 1, 0.0, t + 0.01, None)
        add(batch)
        own = batch
        own_utils = [u for u, _ in own if u is not None]
        own_mems = [m for _, m in own if m is not None]
        (stats,) = tl.end_epoch(t).gpu_stats()
        if stats.util_mean is None:
            assert stats.util_samples == 0 and stats.util_p95 is None
        else:
            assert 0 < stats.util_samples <= len(own_utils)
            assert min(own_utils) - 1e-9 <= stats.util_mean <= max(own_utils) + 1e-9
            assert stats.util_p95 in {round(u) for u in own_utils}
            assert 0.0 <= stats.device_idle_fraction <= 1.0
        assert stats.mem_peak_mib is None or stats.mem_peak_mib in own_mems
        if [m for _, m in batch if m is not None]:
            assert stats.mem_peak_mib == max(m for _, m in batch if m is not None)
        assert stats.readings == len(own)
        if not own:
            assert judge(ON_GPU, [stats], None).verdict == UNMEASURED
        elif not own_utils:
            assert judge(ON_GPU, [stats], None).verdict == UNMONITORED
        elif judge(ON_GPU, [stats], None).verdict == IDLE:
            assert any(u < THRESHOLD for u in own_utils)


@pytest.fixture(scope="module")
def watch():
    """One GPUWatch, reused across runs as a Keras callback may be, on a busy simulated GPU."""
    with tempfile.TemporaryDirectory() as log_dir:
        cb = GPUWatch(log_dir=log_dir, plot=False, verbose=0, check_placement=False,
                      interval_s=0.02, nvml=FakeNVML([FakeGPU(util_pct=60, processes=[
                          FakeProcess(used_mib=2048, sm_util_pct=60)])]))
        cb.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
        yield cb


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.integers(0, 6), min_size=1, max_size=3))
def test_epochs_add_up_to_the_run(watch, batches_per_epoch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)  # TensorFlow here sees no GPU
        watch.on_train_begin()
        for epoch, batches in enumerate(batches_per_epoch):
            watch.on_epoch_begin(epoch)
            for batch in range(batches):
                watch.on_train_batch_begin(batch)
                watch.on_train_batch_end(batch, {"loss": 1.0})
            watch.on_epoch_end(epoch, {"loss": 1.0})
        watch.on_train_end()
    run = load_run(watch.run_dir)
    epochs, rows = run.epochs, run.batches
    assert epochs["batches"].tolist() == batches_per_epoch
    assert len(rows) == sum(batches_per_epoch)
    assert rows.groupby("epoch").size().to_dict() == {
        e: n for e, n in enumerate(batches_per_epoch) if n}
    assert epochs["duration_s"].sum() <= run.info["duration_s"] + 0.0005  # run.json rounds to ms
    steps = rows.groupby("epoch")["step_s"].sum()
    first = epochs["first_step_s"].notna()
    assert first.sum() == (sum(batches_per_epoch) > 0)  # step 0 is in one epoch: the first
    for epoch, row in epochs.iterrows():
        if row["batches"]:
            assert steps[epoch] <= row["duration_s"] + 1e-6 * (row["batches"] + 1)
            # step 0 is its own column; the mean is over the others (batches.csv keeps 6
            # decimals a row)
            step_0 = row["first_step_s"] if first[epoch] else 0.0
            others = row["batches"] - first[epoch]
            mean = row["step_s_mean"] if others else 0.0
            assert mean * others + step_0 == pytest.approx(
                steps[epoch], abs=1e-6 * (row["batches"] + 1))
        else:
            assert row.isna()["step_s_mean"]
