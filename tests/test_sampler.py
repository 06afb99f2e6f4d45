"""The sampler thread: schedule, containment, lifecycle."""

from __future__ import annotations

import threading
import time

import pytest

from gpu_watch.errors import take_swallowed
from gpu_watch.sensing.nvml import NVML
from gpu_watch.sensing.sampler import Sampler
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess


class Collect:
    def __init__(self):
        self.ticks = []

    def __call__(self, readings):
        self.ticks.append(readings)


def sampler_threads():
    return [t for t in threading.enumerate() if t.name == "gpu-watch-sampler"]


def run_ticks(sampler, sink, ticks):
    """Run the sampler's thread until `sink` has had `ticks` ticks, then stop it. With a clock
    that its `wait` moves, the schedule is exact however loaded the machine is."""
    done = threading.Event()

    def counting(readings):
        sink(readings)
        if len(sink.ticks) == ticks:
            done.set()
            sampler.stop()  # from the sampler thread: ends its loop

    sampler._sink = counting
    thread_count = len(sampler_threads())
    sampler.start()
    assert done.wait(30.0)
    for thread in sampler_threads()[thread_count:]:
        thread.join(5.0)


def test_ticks_follow_the_interval_without_drift(clock):
    sink = Collect()
    nvml = NVML(FakeNVML([FakeGPU()], clock=clock))
    sampler = Sampler(nvml, nvml.devices(), sink, interval_s=0.05, clock=clock,
                      wait=clock.advance)
    run_ticks(sampler, sink, 20)
    times = [tick[0].time_s for tick in sink.ticks]
    assert times == pytest.approx([0.05 * k for k in range(20)])  # due at start + k * interval
    assert sampler.skipped_ticks == 0
    assert not sampler_threads()


def test_tick_count_follows_the_interval_in_real_time():
    """The real wait: about 20 ticks due in one second, with room for a loaded machine."""
    sink = Collect()
    sampler = Sampler(NVML(FakeNVML([FakeGPU()])), NVML(FakeNVML([FakeGPU()])).devices(), sink,
                      interval_s=0.05)
    sampler.start()
    time.sleep(1.0)
    sampler.stop()
    assert 5 <= len(sink.ticks) <= 22
    times = [tick[0].time_s for tick in sink.ticks]
    assert times == sorted(times)
    assert not sampler_threads()


def test_two_gpus_yield_their_scripted_values(clock):
    nvml = NVML(FakeNVML([FakeGPU(util_pct=11, processes=[FakeProcess(used_mib=256)]),
                          FakeGPU(util_pct=77, mem_used_mib=5000)], clock=clock))
    sink = Collect()
    sampler = Sampler(nvml, nvml.devices(), sink, interval_s=0.02, clock=clock,
                      wait=clock.advance)
    run_ticks(sampler, sink, 10)
    assert len(sink.ticks) == 10
    for first, second in sink.ticks:
        assert (first.gpu, first.util_pct, first.proc_mem_mib) == (0, 11, 256)
        assert (second.gpu, second.util_pct, second.mem_used_mib, second.proc_mem_mib) == (
            1, 77, 5000, 0)


def test_real_nvml_without_driver_ticks_with_no_readings(clock):
    nvml = NVML()
    sink = Collect()
    sampler = Sampler(nvml, nvml.devices(), sink, interval_s=0.02, clock=clock,
                      wait=clock.advance)
    run_ticks(sampler, sink, 5)
    assert sink.ticks and all(tick == [] for tick in sink.ticks)
    assert sampler.errors == []


def test_a_slow_read_does_not_make_ticks_pile_up(clock):
    calls = []

    class SlowSink(Collect):
        def __call__(self, readings):
            calls.append(clock())
            super().__call__(readings)
            if len(calls) == 2:
                clock.advance(0.37)  # this read took 0.37 s: the ticks due up to 0.4 s are overrun

    sink = SlowSink()
    sampler = Sampler(NVML(FakeNVML([])), [], sink, interval_s=0.05, clock=clock,
                      wait=clock.advance)
    run_ticks(sampler, sink, 6)
    assert sampler.skipped_ticks == 7
    # No burst of back-to-back catch-up ticks: the schedule goes on from the next due tick.
    assert calls == pytest.approx([0.0, 0.05, 0.45, 0.5, 0.55, 0.6])


def test_start_and_stop_are_idempotent_and_restartable():
    sampler = Sampler(NVML(FakeNVML([])), [], Collect(), interval_s=0.02)
    sampler.stop()
    sampler.start()
    sampler.start()
    assert len(sampler_threads()) == 1
    sampler.stop()
    sampler.stop()
    assert not sampler.running and not sampler_threads()
    sampler.start()
    assert sampler.running
    sampler.stop()
    assert not sampler_threads()


def test_a_raising_sink_is_contained(clock):
    class Broken(Collect):
        def __call__(self, readings):
            super().__call__(readings)
            if len(self.ticks) < 3:
                raise ZeroDivisionError("boom")

    sink = Broken()
    sampler = Sampler(NVML(FakeNVML([])), [], sink, interval_s=0.02, clock=clock,
                      wait=clock.advance)
    run_ticks(sampler, sink, 4)  # the ticks after the failed ones still come
    assert len(sampler.errors) == 2 and "ZeroDivisionError" in sampler.errors[0]
    caught = take_swallowed("sampler")
    assert [s.place for s in caught] == ["sampler.tick"] * 2
    assert caught[0].error == "ZeroDivisionError: boom"


@pytest.mark.parametrize("bad", [0, 0.001, 61, -1, "0.2", None, True])
def test_interval_is_validated(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        Sampler(NVML(FakeNVML([])), [], Collect(), interval_s=bad)


def test_nvml_is_read_on_the_sampler_thread_only(clock):
    fake = FakeNVML([FakeGPU()])
    nvml = NVML(fake)
    devices = nvml.devices()
    before = fake.calls_from("MainThread")
    sink = Collect()
    run_ticks(Sampler(nvml, devices, sink, interval_s=0.02, clock=clock, wait=clock.advance),
              sink, 3)
    assert fake.calls_from("MainThread") == before
    assert fake.calls_from("gpu-watch-sampler") > 0
