"""What changes slowly is read slowly: a GPU's process list and its ECC error counts once a
second (`NVML.process_interval_s`, `NVML.ecc_interval_s`), GPM samples once a second, each
process name once per PID; what decides the verdict (utilization, this process's own SM share)
at every reading."""

from __future__ import annotations

import pynvml
import pytest

from gpu_watch.sensing.nvml import ECC_INTERVAL_S, GPM_INTERVAL_S, NVML, PROCESS_LIST_INTERVAL_S
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

LIST = "nvmlDeviceGetComputeRunningProcesses_v3"
TICK_S = 0.2  # the sampler's default interval
OTHER_PID = 4242


def calls(fake: FakeNVML, func: str) -> int:
    return sum(n for (name, _), n in fake.calls.items() if name == func)


def session(*gpus: FakeGPU, clock=None) -> tuple[FakeNVML, NVML]:
    fake = FakeNVML(list(gpus)) if clock is None else FakeNVML(list(gpus), clock=clock)
    return fake, NVML(fake)


def test_the_rates_are_the_documented_ones():
    assert (PROCESS_LIST_INTERVAL_S, GPM_INTERVAL_S, NVML.process_interval_s) == (1.0, 1.0, 1.0)
    assert (ECC_INTERVAL_S, NVML.ecc_interval_s) == (1.0, 1.0)


def test_the_process_list_is_read_once_a_second_and_the_rest_at_every_reading():
    fake, nvml = session(FakeGPU(processes=[FakeProcess(used_mib=500, sm_util_pct=40)]))
    (device,) = nvml.devices()
    readings = [nvml.read(device, k * TICK_S) for k in range(11)]  # 0 to 2 s
    assert calls(fake, LIST) == 3  # at 0, 1 and 2 s
    for func in ("nvmlDeviceGetUtilizationRates", "nvmlDeviceGetProcessUtilization",
                 "nvmlDeviceGetPowerUsage"):
        assert calls(fake, func) == 11, func
    # Every reading carries the list: none is left without this process's memory.
    assert [r.proc_mem_mib for r in readings] == [500.0] * 11
    assert [r.procs for r in readings] == [1] * 11


def test_a_reading_a_little_early_still_reads_the_list():
    # The sampler's ticks jitter: a list due at 1.0 s is read by a tick at 0.96 s, not 1.2 s.
    fake, nvml = session(FakeGPU())
    (device,) = nvml.devices()
    for t in (0.0, 0.94, 0.96):
        nvml.read(device, t)
    assert calls(fake, LIST) == 2  # 0.94 s is under 95 % of the interval, 0.96 s is not
    nvml.read(device, 0.96 + 0.95 * PROCESS_LIST_INTERVAL_S)
    assert calls(fake, LIST) == 3


def test_a_process_that_starts_shows_within_the_interval(clock):
    gpu = FakeGPU(processes=[FakeProcess(used_mib=500)])
    fake, nvml = session(gpu, clock=clock)
    (device,) = nvml.devices()
    assert nvml.read(device, 0.0).others == ()
    gpu.processes.append(FakeProcess(pid=OTHER_PID, used_mib=1000))
    assert nvml.read(device, 0.4).others == ()  # the list of 0 s still stands
    r = nvml.read(device, 1.0)
    assert [(o.pid, o.used_mib) for o in r.others] == [(OTHER_PID, 1000.0)]
    assert (r.procs, r.others_mem_mib) == (2, 1000.0)


def test_two_readings_at_one_time_read_the_list_once():
    fake, nvml = session(FakeGPU(), FakeGPU())
    first, second = nvml.devices()
    for device in (first, first, second, second):
        nvml.read(device, 3.0)
    assert calls(fake, LIST) == 2  # once per GPU


def test_the_interval_can_be_set_and_zero_reads_it_every_time():
    fake, nvml = session(FakeGPU())
    nvml.process_interval_s = 0.0
    (device,) = nvml.devices()
    for k in range(5):
        nvml.read(device, k * TICK_S)
    assert calls(fake, LIST) == 5
    fake, nvml = session(FakeGPU())
    nvml.process_interval_s = 2.0
    (device,) = nvml.devices()
    for k in range(11):
        nvml.read(device, k * TICK_S)
    assert calls(fake, LIST) == 2  # at 0 and 2 s


def test_a_failed_list_is_read_again_at_the_next_reading(clock):
    gpu = FakeGPU(processes=[FakeProcess(used_mib=500)])
    gpu.fail("processes", pynvml.NVMLError_Unknown, from_s=0.0, until_s=0.5)
    fake, nvml = session(gpu, clock=clock)
    (device,) = nvml.devices()
    assert nvml.read(device, 0.0).procs is None  # the fault: not measured, and not kept
    clock.advance(0.6)
    r = nvml.read(device, 0.6)
    assert (r.procs, r.proc_mem_mib) == (1, 500.0)
    assert calls(fake, LIST) == 2
    assert [f.metric for f in nvml.faults] == ["processes"]  # the seam's fault handling stands


def test_a_failed_list_on_a_new_time_axis_leaves_no_older_list_to_reuse(clock):
    gpu = FakeGPU(processes=[FakeProcess(used_mib=500)])
    gpu.fail("processes", pynvml.NVMLError_Unknown, from_s=1.0, until_s=2.0)
    fake, nvml = session(gpu, clock=clock)
    (device,) = nvml.devices()
    assert nvml.read(device, 5.0).procs == 1  # the last run's list, at 5 s
    clock.advance(1.0)
    assert nvml.read(device, 0.2).procs is None  # a new run's clock, and the read fails
    gpu.processes.append(FakeProcess(pid=OTHER_PID, used_mib=1000))
    clock.advance(2.0)
    # 5.3 s into the new run, 0.3 s after the old run's list: read anew, not the old run's.
    r = nvml.read(device, 5.3)
    assert (r.procs, [o.pid for o in r.others]) == (2, [OTHER_PID])
    assert calls(fake, LIST) == 3


def test_a_new_time_axis_or_a_stopped_sampler_reads_the_list_anew():
    fake, nvml = session(FakeGPU())
    (device,) = nvml.devices()
    nvml.read(device, 5.0)
    nvml.read(device, 0.2)  # a new run's clock: earlier than the last list
    assert calls(fake, LIST) == 2
    nvml.read(device, 0.4)
    assert calls(fake, LIST) == 2
    nvml.release_gpm([device])  # the sampler stops: the next run starts with a fresh list
    nvml.read(device, 0.6)
    assert calls(fake, LIST) == 3
    nvml.shutdown()
    (device,) = nvml.devices()
    nvml.read(device, 0.8)
    assert calls(fake, LIST) == 4


def test_each_gpu_keeps_its_own_list():
    fake, nvml = session(FakeGPU(processes=[FakeProcess(used_mib=100)]),
                         FakeGPU(processes=[FakeProcess(pid=OTHER_PID, used_mib=200)]))
    first, second = nvml.devices()
    for k in range(6):
        a, b = nvml.read(first, k * TICK_S), nvml.read(second, k * TICK_S)
        assert (a.proc_mem_mib, a.others) == (100.0, ())
        assert (b.proc_mem_mib, [o.pid for o in b.others]) == (0.0, [OTHER_PID])
    assert calls(fake, LIST) == 4  # two GPUs, at 0 and 1 s


def test_process_names_are_read_once_per_pid():
    fake, nvml = session(FakeGPU(processes=[FakeProcess(pid=OTHER_PID, used_mib=100)]))
    nvml.process_interval_s = 0.0
    (device,) = nvml.devices()
    for k in range(10):
        assert nvml.read(device, k * TICK_S).others[0].name is not None
    assert calls(fake, "nvmlSystemGetProcessName") == 1


@pytest.mark.parametrize("interval_s", [TICK_S, 1.0])
def test_gpm_samples_once_a_second_whatever_the_tick(interval_s):
    fake, nvml = session(FakeGPU(util_pct=90.0))
    (device,) = nvml.devices()
    ticks = round(3.0 / interval_s) + 1  # 0 to 3 s
    readings = [nvml.read(device, k * interval_s) for k in range(ticks)]
    assert calls(fake, "nvmlGpmSampleGet") == 4  # at 0, 1, 2 and 3 s
    assert sum(r.sm_active_pct is not None for r in readings) == 3


ECC = "nvmlDeviceGetTotalEccErrors"


def test_ecc_counts_are_read_once_a_second_and_carried_between(clock):
    # An uncorrected error at 0.5 s: the readings until the next read carry the count of 0 s.
    gpu = FakeGPU(ecc_uncorrected_errors=lambda t: 0 if t < 0.5 else 1)
    fake, nvml = session(gpu, clock=clock)
    (device,) = nvml.devices()
    counts = []
    for k in range(11):  # 0 to 2 s
        clock.now = k * TICK_S
        counts.append(nvml.read(device, clock.now).ecc_uncorrected_errors)
    assert calls(fake, ECC) == 2 * 3  # both types, at 0, 1 and 2 s
    assert counts == [0] * 5 + [1] * 6


def test_ecc_counts_are_read_anew_after_the_sampler_stops_or_nvml_restarts():
    fake, nvml = session(FakeGPU())
    (device,) = nvml.devices()
    nvml.read(device, 0.0)
    nvml.read(device, 0.2)
    assert calls(fake, ECC) == 2
    nvml.release_gpm([device])  # the sampler stops: the next run reads its own counts
    nvml.read(device, 0.2)
    assert calls(fake, ECC) == 4
    nvml.shutdown()
    (device,) = nvml.devices()
    nvml.read(device, 0.2)
    assert calls(fake, ECC) == 6
    nvml.ecc_interval_s = 0.0  # zero reads them at every reading
    nvml.read(device, 0.2)
    assert calls(fake, ECC) == 8
