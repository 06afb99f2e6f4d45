"""Property: another process's utilization never makes this training `ok`.

Hypothesis draws worlds in which this training runs kernels on a GPU under the idle threshold
(or not at all) while other processes do whatever they like, and NVML reports them the ways it
can: with this process's own utilization, without it (MIG, some drivers), or under a container's
PID namespace (this process listed under a PID that is not its own). Every reading goes through
the Timeline and the verdict rules, as in a run; the verdict of that GPU must never be `ok`,
nor the run's unless this training kept a second GPU busy itself, and the idle detector, when it
fires, must carry a figure under the threshold.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_watch.judging.timeline import Timeline
from gpu_watch.judging.verdict import OK, UNMONITORED, Setting, judge
from gpu_watch.sensing.nvml import OtherProcess, Reading

ON_GPU = Setting(compute_on_gpu=True, framework_gpus=2, nvml_gpus=2, visible_gpus=2,
                 cuda_build=True)
MODES = ("own", "unsupported", "namespace")


@st.composite
def worlds(draw):
    threshold = draw(st.floats(1.0, 50.0))
    mode = draw(st.sampled_from(MODES))
    others = draw(st.integers(1, 3))
    ticks = draw(st.integers(1, 40))
    readings = []
    for _ in range(ticks):
        own = draw(st.floats(0.0, threshold, exclude_max=True))
        theirs = draw(st.lists(st.floats(0.0, 100.0), min_size=others, max_size=others))
        # The device's figure is whatever NVML says: usually the busiest process or more.
        device = draw(st.one_of(st.floats(0.0, 100.0), st.just(min(100.0, max([own, *theirs])))))
        measured = mode == "own" and draw(st.booleans())  # a tick may miss its own sample
        readings.append((own if measured else None, device, theirs))
    busy_elsewhere = draw(st.booleans())  # this training also works on a second GPU
    return threshold, mode, readings, busy_elsewhere


def reading(time_s, mode, own, device, theirs):
    """One tick of the shared GPU (NVML index 0) as the NVML seam reports it."""
    listed = len(theirs) + 1  # this process holds a context too: compute runs on the GPU
    others = tuple(OtherProcess(4000 + i, "other", 1000.0,
                                None if mode == "unsupported" else util)
                   for i, util in enumerate(theirs))
    if mode == "namespace":  # this process is one of the listed PIDs, under its host PID
        others += (OtherProcess(99999, "python", 500.0, own),)
    return Reading(
        time_s=time_s, gpu=0, util_pct=device, mem_used_mib=5000.0,
        proc_mem_mib=0.0 if mode == "namespace" else 500.0,
        proc_util_pct=own, procs=listed, proc_listed=mode != "namespace",
        others=others,
        others_util_pct=None if mode != "own" else min(100.0, sum(theirs)),
    )


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_another_process_never_makes_this_training_ok(world):
    threshold, mode, readings, busy_elsewhere = world
    gpus = [0, 1] if busy_elsewhere else [0]
    timeline = Timeline(gpus, threshold, idle_patience_s=0.5, interval_s=0.2)
    timeline.begin_epoch(0)
    timeline.add_batch(0, 0, 1, 0.0, 0.1, None)
    for k, (own, device, theirs) in enumerate(readings):
        tick = [reading(0.2 * (k + 1), mode, own, device, theirs)]
        if busy_elsewhere:
            tick.append(Reading(time_s=0.2 * (k + 1), gpu=1, util_pct=95.0, proc_mem_mib=900.0,
                                proc_util_pct=95.0, procs=1, proc_listed=True, others=(),
                                others_util_pct=0.0))
        timeline.add_readings(tick)

    epoch = timeline.end_epoch(0.2 * (len(readings) + 1))
    for stats in (timeline.run_stats(), epoch.gpu_stats()):
        judgement = judge(ON_GPU, stats, wait_fraction=None)
        assert judgement.gpu_verdicts[0] != OK, (mode, readings)
        if judgement.verdict == OK:
            # Only this training's own work on the other GPU can make the run ok, while the
            # shared GPU stays "own use unknown", and the causes say so.
            assert busy_elsewhere and judgement.gpu_verdicts == {0: UNMONITORED, 1: OK}
            note = next(c for c in judgement.causes if c.code == "process_not_attributable")
            assert "own use is unknown" in note.message
    event = timeline.idle_event
    if event is not None:
        assert event.util_mean_pct[0] < threshold
