"""The sampler thread: schedule, containment, lifecycle."""

from __future__ import annotations

import threading
import time

import pytest

from gpu_watch.nvml import NVML
from gpu_watch.sampler import Sampler
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess


class Collect:
    def __init__(self):
        self.ticks = []

    def __call__(self, readings):
        self.ticks.append(readings)


def sampler_threads():
    return [t for t in threading.enumerate() if t.name == "gpu-watch-sampler"]


def test_tick_count_follows_the_interval():
    sink = Collect()
    sampler = Sampler(NVML(FakeNVML([FakeGPU()])), NVML(FakeNVML([FakeGPU()])).devices(), sink,
                      interval_s=0.05)
    sampler.start()
    time.sleep(1.0)
    sampler.stop()
    assert 16 <= len(sink.ticks) <= 22  # 20 due in one second
    times = [tick[0].time_s for tick in sink.ticks]
    assert times == sorted(times)
    assert not sampler_threads()


def test_two_gpus_yield_their_scripted_values():
    nvml = NVML(FakeNVML([FakeGPU(util_pct=11, processes=[FakeProcess(used_mib=256)]),
                          FakeGPU(util_pct=77, mem_used_mib=5000)]))
    sink = Collect()
    sampler = Sampler(nvml, nvml.devices(), sink, interval_s=0.02)
    sampler.start()
    time.sleep(0.2)
    sampler.stop()
    assert sink.ticks
    for first, second in sink.ticks:
        assert (first.gpu, first.util_pct, first.proc_mem_mib) == (0, 11, 256)
        assert (second.gpu, second.util_pct, second.mem_used_mib, second.proc_mem_mib) == (
            1, 77, 5000, 0)


def test_real_nvml_without_driver_ticks_with_no_readings():
    nvml = NVML()
    sink = Collect()
    sampler = Sampler(nvml, nvml.devices(), sink, interval_s=0.02)
    sampler.start()
    time.sleep(0.15)
    sampler.stop()
    assert sink.ticks and all(tick == [] for tick in sink.ticks)
    assert sampler.errors == []


def test_a_slow_read_does_not_make_ticks_pile_up():
    calls = []

    def slow_sink(readings):
        calls.append(time.perf_counter())
        if len(calls) == 2:
            time.sleep(0.35)

    sampler = Sampler(NVML(FakeNVML([])), [], slow_sink, interval_s=0.05)
    sampler.start()
    time.sleep(0.6)
    sampler.stop()
    gaps = [b - a for a, b in zip(calls[2:], calls[3:], strict=False)]
    assert sampler.skipped_ticks >= 5
    assert min(gaps) > 0.03  # no burst of back-to-back catch-up ticks


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


def test_a_raising_sink_is_contained():
    def broken(readings):
        raise ZeroDivisionError("boom")

    sampler = Sampler(NVML(FakeNVML([])), [], broken, interval_s=0.02)
    sampler.start()
    time.sleep(0.1)
    assert sampler.running
    sampler.stop()
    assert sampler.errors and "ZeroDivisionError" in sampler.errors[0]


@pytest.mark.parametrize("bad", [0, 0.001, 61, -1, "0.2", None, True])
def test_interval_is_validated(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        Sampler(NVML(FakeNVML([])), [], Collect(), interval_s=bad)


def test_nvml_is_read_on_the_sampler_thread_only():
    fake = FakeNVML([FakeGPU()])
    nvml = NVML(fake)
    devices = nvml.devices()
    before = fake.calls_from("MainThread")
    sampler = Sampler(nvml, devices, Collect(), interval_s=0.02)
    sampler.start()
    time.sleep(0.1)
    sampler.stop()
    assert fake.calls_from("MainThread") == before
    assert fake.calls_from("gpu-watch-sampler") > 0
