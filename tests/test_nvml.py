"""The NVML seam: the real library on this machine (no driver) and FakeNVML for the rest."""

from __future__ import annotations

import pynvml
import pytest

from gpu_watch.sensing.nvml import NVML, PROC_UTIL_QUIET_S, parse_visible_devices, printable
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

UUIDS = [
    "GPU-11111111-aaaa-4000-8000-000000000000",
    "GPU-22222222-bbbb-4000-8000-000000000000",
    "GPU-33333333-cccc-4000-8000-000000000000",
    "GPU-44444444-dddd-4000-8000-000000000000",
]


def four_gpus(clock=None) -> FakeNVML:
    kwargs = {"clock": clock} if clock else {}
    return FakeNVML([FakeGPU(uuid=u, util_pct=10 * (i + 1)) for i, u in enumerate(UUIDS)],
                    **kwargs)


def test_real_nvml_without_driver_is_unavailable_and_names_the_error():
    nvml = NVML()
    assert nvml.available is False
    assert nvml.error.startswith("NVMLError_LibraryNotFound")
    assert nvml.devices() == []
    assert nvml.driver_version() is None


@pytest.mark.parametrize(
    "error", [pynvml.NVMLError_DriverNotLoaded, pynvml.NVMLError_NoPermission,
              pynvml.NVMLError_LibRmVersionMismatch]
)
def test_init_failure_is_a_state_not_an_exception(error):
    nvml = NVML(FakeNVML([FakeGPU()], init_error=error))
    assert not nvml.available
    assert nvml.error.startswith(error.__name__)
    assert nvml.devices() == []


def test_readings_have_nvml_units(clock):
    mine = FakeProcess(used_mib=2048, sm_util_pct=80)
    other = FakeProcess(pid=1, used_mib=1000)
    fake = FakeNVML([FakeGPU(util_pct=93, mem_util_pct=40, mem_total_mib=16384,
                             processes=[mine, other], power_w=250.5, temp_c=61,
                             sm_clock_mhz=1410)], clock=clock)
    nvml = NVML(fake)
    (device,) = nvml.devices()
    assert device.mem_total_mib == 16384
    r = nvml.read(device, 1.5)
    assert (r.time_s, r.gpu, r.util_pct, r.mem_util_pct) == (1.5, 0, 93.0, 40.0)
    assert r.mem_used_mib == pytest.approx(300 + 2048 + 1000)
    assert r.proc_mem_mib == 2048  # only this PID, not the other process
    assert r.procs == 2
    assert r.proc_util_pct == 80
    assert r.power_w == pytest.approx(250.5, abs=1e-3)
    assert (r.temp_c, r.sm_clock_mhz, r.idle_clock_event) == (61, 1410, False)


def test_process_utilization_not_found_means_zero_for_a_process_on_the_device(clock):
    def gpus():
        return [FakeGPU(processes=[FakeProcess(used_mib=500, sm_util_pct=0)]),
                FakeGPU(processes=[FakeProcess(pid=1, used_mib=500, sm_util_pct=50)])]

    nvml = NVML(FakeNVML(gpus(), clock=clock))
    on_it, not_on_it = nvml.devices()
    assert nvml.read(not_on_it, 0).proc_util_pct is None  # no PID of ours listed yet: unknown
    assert nvml.read(on_it, 0).proc_util_pct is None  # no sample yet is not idle
    # Listed on GPU 0 and not on GPU 1: no context there, so no kernels there, a measured 0 %.
    assert nvml.read(not_on_it, 0).proc_util_pct == 0.0
    clock.advance(PROC_UTIL_QUIET_S)  # a whole driver period without a sample of ours
    assert nvml.read(on_it, clock.now).proc_util_pct == 0.0
    assert nvml.faults == []  # NotFound is NVML's "no samples", not a fault

    # A PID NVML never lists (a container's PID namespace) stays unknown, however long.
    nvml = NVML(FakeNVML(gpus()[1:], clock=clock))
    (alone,) = nvml.devices()
    assert nvml.read(alone, clock.now).proc_util_pct is None
    clock.advance(2 * PROC_UTIL_QUIET_S)
    assert nvml.read(alone, clock.now).proc_util_pct is None


def test_process_utilization_passes_back_the_last_seen_timestamp(clock):
    seen = []
    fake = FakeNVML([FakeGPU(processes=[FakeProcess(used_mib=1, sm_util_pct=30)])], clock=clock)
    original = fake.nvmlDeviceGetProcessUtilization

    def spy(handle, last_seen):
        seen.append(last_seen)
        return original(handle, last_seen)

    fake.nvmlDeviceGetProcessUtilization = spy
    nvml = NVML(fake)
    (device,) = nvml.devices()
    nvml.read(device, 0)
    clock.advance(0.5)
    nvml.read(device, 0.5)
    assert seen[0] == 0 and seen[1] > 0


def test_one_failing_field_is_none_and_the_others_are_recorded(clock):
    gpu = FakeGPU(util_pct=70, processes=[FakeProcess(used_mib=100)])
    gpu.fail("memory", pynvml.NVMLError_Timeout, from_s=0, until_s=1)
    nvml = NVML(FakeNVML([gpu], clock=clock))
    (device,) = nvml.devices()  # total memory unknown: the failure is live at t=0
    r = nvml.read(device, 0)
    assert r.mem_used_mib is None and r.mem_total_mib is None
    assert r.util_pct == 70 and r.proc_mem_mib == 100
    assert [(f.metric, f.error, f.gpu) for f in nvml.faults] == [
        ("memory", "NVMLError_Timeout", 0)
    ]
    clock.advance(2)
    assert nvml.read(device, 2).mem_used_mib == pytest.approx(400)  # a timeout is not permanent


def test_not_supported_switches_a_metric_off_for_the_session(clock):
    gpu = FakeGPU(util_pct=50).fail("power", pynvml.NVMLError_NotSupported, until_s=0.5)
    fake = FakeNVML([gpu], clock=clock)
    nvml = NVML(fake)
    (device,) = nvml.devices()
    assert nvml.read(device, 0).power_w is None
    clock.advance(1)  # the fake would answer now, but NVML said the metric does not exist
    assert nvml.read(device, 1).power_w is None
    assert fake.calls[("nvmlDeviceGetPowerUsage", "MainThread")] == 1


def test_a_lost_gpu_is_flagged_while_the_other_keeps_reporting(clock):
    lost = FakeGPU(util_pct=90).fail("*", pynvml.NVMLError_GpuIsLost, from_s=1)
    fine = FakeGPU(util_pct=60)
    nvml = NVML(FakeNVML([lost, fine], clock=clock))
    a, b = nvml.devices()
    assert nvml.read(a, 0).util_pct == 90
    clock.advance(1)
    r_lost, r_fine = nvml.read(a, 1), nvml.read(b, 1)
    assert r_lost.lost and r_lost.util_pct is None
    assert nvml.switched_off == [{"metric": "*", "gpu": 0, "lost": True}]
    assert not r_fine.lost and r_fine.util_pct == 60
    clock.advance(5)
    assert nvml.read(a, 6).lost  # stays lost


def test_versioned_calls_fall_back_when_the_driver_lacks_the_newest(clock):
    fake = FakeNVML([FakeGPU(processes=[FakeProcess(used_mib=64)])], clock=clock)

    def missing(handle):
        raise pynvml.NVMLError_FunctionNotFound()

    fake.nvmlDeviceGetComputeRunningProcesses_v3 = missing
    nvml = NVML(fake)
    (device,) = nvml.devices()
    assert nvml.read(device, 0).proc_mem_mib == 64
    assert nvml.faults == []


def test_mig_utilization_is_not_supported():
    mig = FakeGPU(name="MIG 1g.10gb", uuid="MIG-aaaaaaaa-1111-5000-8000-000000000000")
    nvml = NVML(FakeNVML([FakeGPU(uuid=UUIDS[0], mig_devices=[mig])]))
    (device,) = nvml.devices(visible="MIG-aaaaaaaa-1111-5000-8000-000000000000")
    assert device.uuid.startswith("MIG-")
    r = nvml.read(device, 0)
    assert r.util_pct is None and r.mem_used_mib is not None


def test_a_mig_instance_is_named_by_its_parent_gpu():
    """A MIG instance has no device node of its own: its host number is its parent's, and its
    parent's UUID and its GPU instance id say where it was carved (as dcgm-exporter names it)."""
    first = FakeGPU(name="MIG 1g.10gb", uuid="MIG-aaaaaaaa-1111-5000-8000-000000000000")
    second = FakeGPU(name="MIG 2g.20gb", uuid="MIG-bbbbbbbb-2222-5000-8000-000000000000")
    nvml = NVML(FakeNVML([FakeGPU(uuid=UUIDS[0]),
                          FakeGPU(uuid=UUIDS[1], minor_number=5, mig_devices=[first, second])]))
    (device,) = nvml.devices(visible="MIG-bbbbbbbb-2222-5000-8000-000000000000")
    assert (device.nvml_index, device.cuda_index, device.uuid, device.name) == (
        1, 0, "MIG-bbbbbbbb-2222-5000-8000-000000000000", "MIG 2g.20gb")
    assert (device.minor_number, device.parent_uuid, device.gpu_instance_id) == (5, UUIDS[1], 1)


def test_driver_versions():
    nvml = NVML(FakeNVML([FakeGPU()], driver_version="535.104.05", cuda_driver_version=12020))
    assert nvml.driver_version() == "535.104.05"
    assert nvml.cuda_driver_version() == "12.2"


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, [0, 1, 2, 3]),
        ("", []),
        ("-1", []),
        ("2,0", [2, 0]),
        ("1,-1,0", [1]),
        ("0,7,1", [0]),  # an index that does not exist hides the rest
        ("3, 1", [3, 1]),
        (UUIDS[2], [2]),
        ("GPU-4444", [3]),  # a unique prefix
        ("GPU-4444,GPU-1111", [3, 0]),
        ("33333333-cccc", [2]),  # without the GPU- prefix
        ("GPU-", []),  # ambiguous prefix
        ("1,1", [1]),  # a repeated device ends the list
        ("GPU-99999999", []),
    ],
)
def test_cuda_visible_devices_map_by_uuid(visible, expected):
    nvml = NVML(four_gpus())
    devices = nvml.devices(visible=visible)
    assert [d.uuid for d in devices] == [UUIDS[i] for i in expected]
    assert [d.nvml_index for d in devices] == expected
    assert [d.cuda_index for d in devices] == list(range(len(expected)))


def test_visible_devices_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert [d.nvml_index for d in NVML(four_gpus()).devices()] == [2, 0]


def test_a_session_lists_its_devices_once_until_shut_down(monkeypatch):
    fake = four_gpus()
    nvml = NVML(fake)

    def listings():
        return sum(n for (name, _), n in fake.calls.items() if name == "nvmlDeviceGetCount")

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert [d.nvml_index for d in nvml.devices()] == [3, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # read again: it can change between runs
    assert [d.nvml_index for d in nvml.devices()] == [0]
    assert [d.uuid for d in nvml.all_devices()] == UUIDS
    assert listings() == 1
    nvml.all_devices().clear()  # a copy: the session's list stays whole
    assert len(nvml.all_devices()) == 4
    nvml.shutdown()
    assert len(nvml.all_devices()) == 4 and listings() == 2


def test_a_device_list_with_a_refused_handle_is_read_again():
    class RefusedOnce(FakeNVML):
        refusals = 1

        def nvmlDeviceGetHandleByIndex(self, index):  # noqa: N802 (NVML's name)
            if self.refusals:
                self.refusals -= 1
                raise pynvml.NVMLError_Unknown()
            return super().nvmlDeviceGetHandleByIndex(index)

    nvml = NVML(RefusedOnce([FakeGPU(name="A"), FakeGPU(name="B")]))
    first = nvml.all_devices()  # the refused GPU keeps its place, unmeasured
    assert [(d.name, d.handle is None) for d in first] == [("unknown GPU", True), ("B", False)]
    again = nvml.all_devices()
    assert [(d.name, d.handle is None) for d in again] == [("A", False), ("B", False)]
    assert nvml.all_devices() == again


def test_a_device_count_that_fails_is_asked_again():
    fake = FakeNVML([FakeGPU()])
    nvml = NVML(fake)
    count = fake.nvmlDeviceGetCount
    fake.nvmlDeviceGetCount = lambda: (_ for _ in ()).throw(pynvml.NVMLError_Unknown())
    assert nvml.all_devices() == []
    fake.nvmlDeviceGetCount = count
    assert len(nvml.all_devices()) == 1


def test_parse_visible_devices():
    assert parse_visible_devices("0,1") == ["0", "1"]
    assert parse_visible_devices(" ") == []
    assert parse_visible_devices("MIG-abc,0") == ["MIG-abc", "0"]


def test_fake_behaves_like_nvml_before_init():
    fake = FakeNVML([FakeGPU()])
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    fake.nvmlInit()
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetHandleByIndex(1)


def test_fake_rejects_bad_scripts():
    with pytest.raises(ValueError, match="'utilisation'"):
        FakeGPU().fail("utilisation", pynvml.NVMLError_Unknown)
    with pytest.raises(ValueError, match="NVMLError subclass"):
        FakeGPU().fail("util", RuntimeError)


def test_fake_timelines_lists_and_functions(clock):
    fake = FakeNVML([FakeGPU(util_pct=[10, 20, 30], mem_used_mib=lambda t: 100 * t)],
                    clock=clock, step_s=0.5)
    nvml = NVML(fake)
    (device,) = nvml.devices()
    got = []
    for _ in range(4):
        r = nvml.read(device, clock.now)
        got.append((r.util_pct, r.mem_used_mib))
        clock.advance(0.5)
    assert got == [(10, 0), (20, 50), (30, 100), (30, 150)]


# -- other processes' SM utilization: the rule this process's figure follows ---------------------

OTHER_PID = 4242


def test_other_processes_figures_follow_the_rule_of_this_process_s(clock):
    mine = FakeProcess(used_mib=500, sm_util_pct=60)
    busy = FakeProcess(pid=OTHER_PID, used_mib=500, sm_util_pct=95)
    holds_memory = FakeProcess(pid=OTHER_PID + 1, used_mib=500, sm_util_pct=0)
    fake = FakeNVML([FakeGPU(processes=[mine, busy, holds_memory], proc_sample_period_s=1.0)],
                    clock=clock)
    nvml = NVML(fake)
    (device,) = nvml.devices()
    got = []
    for _ in range(12):  # 3 s, polled 4x faster than the driver samples
        r = nvml.read(device, clock.now)
        theirs = {o.pid: o.sm_util_pct for o in r.others}
        got.append((r.proc_util_pct, theirs[OTHER_PID], theirs[OTHER_PID + 1], r.others_util_pct))
        clock.advance(0.25)
    unknown = (None, None, None, None)
    assert got[0] == (60, 95, None, None)  # the newest buffered sample of each
    assert got[1:4] == [unknown] * 3  # no new sample: unknown, never 0
    assert got[4] == (60, 95, None, None)
    assert got[5:8] == [unknown] * 3
    # 2 s listed without a sample: a whole driver period ended with nothing to report, 0 %.
    assert got[8] == (60, 95, 0.0, 95.0)
    assert got[9:] == [(None, None, 0.0, None)] * 3
    # One call per reading serves this process and the others.
    assert fake.calls[("nvmlDeviceGetProcessUtilization", "MainThread")] == 12
    assert nvml.faults == []


def test_a_slow_poll_takes_the_mean_of_another_process_s_periods(clock):
    ramp = FakeProcess(pid=OTHER_PID, used_mib=500, sm_util_pct=[10, 20, 30, 40, 50, 60])
    fake = FakeNVML([FakeGPU(processes=[FakeProcess(used_mib=500, sm_util_pct=5), ramp],
                             proc_sample_period_s=1.0)], clock=clock)
    nvml = NVML(fake)
    (device,) = nvml.devices()
    clock.advance(1.0)
    assert nvml.read(device, 1.0).others[0].sm_util_pct == 20  # the first: only the newest
    clock.advance(3.0)
    r = nvml.read(device, 4.0)
    assert r.others[0].sm_util_pct == pytest.approx(40)  # mean of 30, 40, 50
    assert (r.proc_util_pct, r.others_util_pct) == (5, pytest.approx(40))


def test_another_process_s_quiet_time_starts_when_nvml_lists_it(clock):
    late = FakeProcess(pid=OTHER_PID, used_mib=500, sm_util_pct=0)
    gpu = FakeGPU(processes=[FakeProcess(used_mib=500, sm_util_pct=5)])
    nvml = NVML(FakeNVML([gpu], clock=clock))
    nvml.process_interval_s = 0.0  # the list at every reading: what it says is tested here
    (device,) = nvml.devices()
    assert nvml.read(device, 0.0).others == ()
    clock.advance(PROC_UTIL_QUIET_S)
    gpu.processes.append(late)  # it starts now: no sample of it yet is not idle
    assert nvml.read(device, clock.now).others[0].sm_util_pct is None
    clock.advance(PROC_UTIL_QUIET_S - 0.25)
    assert nvml.read(device, clock.now).others[0].sm_util_pct is None
    clock.advance(0.25)
    assert nvml.read(device, clock.now).others[0].sm_util_pct == 0.0
    gpu.processes.remove(late)  # gone, and back: it starts over
    assert nvml.read(device, clock.now).others == ()
    gpu.processes.append(late)
    assert nvml.read(device, clock.now).others[0].sm_util_pct is None


def test_a_process_utilization_error_leaves_every_figure_unknown(clock):
    gpu = FakeGPU(processes=[FakeProcess(used_mib=500, sm_util_pct=50),
                             FakeProcess(pid=OTHER_PID, used_mib=500, sm_util_pct=0)])
    gpu.fail("proc_util", pynvml.NVMLError_Unknown, until_s=3.0)
    nvml = NVML(FakeNVML([gpu], clock=clock))
    (device,) = nvml.devices()
    r = nvml.read(device, 0.0)
    assert (r.proc_util_pct, r.others[0].sm_util_pct, r.others_util_pct) == (None, None, None)
    clock.advance(3.0)  # quiet time ran on meanwhile: the answer covers it
    r = nvml.read(device, 3.0)
    assert (r.proc_util_pct, r.others[0].sm_util_pct, r.others_util_pct) == (50, 0.0, 0.0)


def test_this_process_s_quiet_time_starts_when_nvml_lists_it(clock):
    gpu = FakeGPU(processes=[])
    nvml = NVML(FakeNVML([gpu], clock=clock))
    (device,) = nvml.devices()
    assert nvml.read(device, 0.0).proc_util_pct is None  # no context here yet
    clock.advance(PROC_UTIL_QUIET_S)
    gpu.processes.append(FakeProcess(sm_util_pct=0))  # its CUDA context, created only now
    assert nvml.read(device, clock.now).proc_util_pct is None
    clock.advance(PROC_UTIL_QUIET_S)
    assert nvml.read(device, clock.now).proc_util_pct == 0.0


# -- other processes' names ---------------------------------------------------------------


def test_printable_text():
    assert printable(b"caf\xc3\xa9 \xff", 20) == "caf\u00e9 \ufffd"
    assert printable("a\tb\u2028c\u00a0d\u2029e", 20) == "a?b?c d?e"
    assert printable("x" * 30, 10) == "xxxxxxx..."
    assert printable("x" * 10, 10) == "x" * 10  # at the limit: whole
    # Only the first 4 x limit characters are looked at: a huge name costs no more.
    assert printable(" " * 40 + "tail", 10) == ""
    assert printable(" " * 39 + "tail", 10) == "t"


def test_names_are_read_once_per_pid_and_unreadable_names_are_none():
    other = FakeProcess(pid=OTHER_PID, used_mib=10, sm_util_pct=5, name=None)  # NoPermission
    named = FakeProcess(pid=OTHER_PID + 1, used_mib=20, sm_util_pct=5, name="train\x1b.py")
    fake = FakeNVML([FakeGPU(util_pct=5, processes=[FakeProcess(used_mib=1), other, named])])
    nvml = NVML(fake)
    (device,) = nvml.devices()
    readings = [nvml.read(device, t) for t in range(3)]
    for reading in readings:
        assert [(o.pid, o.name) for o in reading.others] == [(OTHER_PID, None),
                                                             (OTHER_PID + 1, "train?.py")]
    # This PID is listed, so the rest are the others': their share is known.
    assert readings[0].others_util_pct == 10.0
    assert fake.calls[("nvmlSystemGetProcessName", "MainThread")] == 2
    assert [(f.metric, f.error, f.gpu) for f in nvml.faults] == [
        ("process_name", "NVMLError_NoPermission", None)]


def test_names_are_remembered_for_at_most_1024_pids():
    fake = FakeNVML([FakeGPU()])
    nvml = NVML(fake)
    for pid in range(1, 1025):  # 1024 PIDs that have exited: NotFound, None, remembered
        assert nvml.process_name(pid) is None
    nvml.process_name(1)
    assert fake.calls[("nvmlSystemGetProcessName", "MainThread")] == 1024
    nvml.process_name(1025)  # one more: the memory starts over rather than grow
    nvml.process_name(1)
    assert fake.calls[("nvmlSystemGetProcessName", "MainThread")] == 1026


def test_other_processes_memory_and_summed_use():
    gpu = FakeGPU(processes=[FakeProcess(sm_util_pct=5),
                             FakeProcess(pid=OTHER_PID, used_mib=1000, sm_util_pct=60),
                             FakeProcess(pid=OTHER_PID + 1, used_mib=2000, sm_util_pct=70)])
    nvml = NVML(FakeNVML([gpu]))
    nvml.process_interval_s = 0.0  # the list at every reading: what it says is tested here
    (device,) = nvml.devices()
    r = nvml.read(device, 0.0)
    assert [(o.used_mib, o.sm_util_pct) for o in r.others] == [(1000, 60), (2000, 70)]
    assert (r.others_mem_mib, r.others_util_pct) == (3000, 100.0)  # SM use tops out at 100 %
    gpu.processes[2].used_mib = None  # NVML_VALUE_NOT_AVAILABLE: the sum is unknown
    assert nvml.read(device, 0.1).others_mem_mib is None


# -- ECC error counts ----------------------------------------------------------------------------

ECC = "nvmlDeviceGetTotalEccErrors"


def test_ecc_counts_are_each_type_s_errors_since_the_driver_loaded(clock):
    # Errors before this driver load are in the aggregate counts only: the volatile ones are read.
    gpu = FakeGPU(ecc_corrected_errors=[3, 5], ecc_uncorrected_errors=[1, 2],
                  ecc_earlier_errors=(100, 10))
    fake = FakeNVML([gpu], clock=clock)
    nvml = NVML(fake)
    (device,) = nvml.devices()
    r = nvml.read(device, 0.0)
    assert (r.ecc_corrected_errors, r.ecc_uncorrected_errors) == (3, 1)
    clock.advance(1.0)
    r = nvml.read(device, 1.0)
    assert (r.ecc_corrected_errors, r.ecc_uncorrected_errors) == (5, 2)
    assert fake.calls[(ECC, "MainThread")] == 4  # both types, at both readings
    assert nvml.faults == [] and nvml.switched_off == []


@pytest.mark.parametrize("gpu", [FakeGPU(name="NVIDIA GeForce RTX 4090"),
                                 FakeGPU(name="NVIDIA H100 80GB HBM3", ecc=False)],
                         ids=["geforce", "ecc-disabled"])
def test_a_gpu_without_ecc_has_no_counts_and_is_asked_once(clock, gpu):
    gpu.util_pct = 80
    fake = FakeNVML([gpu], clock=clock)
    nvml = NVML(fake)
    (device,) = nvml.devices()
    for t in (0.0, 1.0, 2.0, 3.0):
        clock.now = t
        r = nvml.read(device, t)
        # Not measured, never 0 errors; everything else is read as before.
        assert (r.ecc_corrected_errors, r.ecc_uncorrected_errors) == (None, None)
        assert r.util_pct == 80
    # NotSupported for the corrected count switches ECC off: the uncorrected is never asked.
    assert fake.calls[(ECC, "MainThread")] == 1
    assert {"metric": "ecc", "gpu": 0} in nvml.switched_off
    assert nvml.faults == []  # most GPUs have no ECC: absent, as GPM, not a fault to report


def test_one_failed_ecc_count_leaves_both_unknown_and_is_read_again(clock):
    fake = FakeNVML([FakeGPU(ecc_corrected_errors=4, ecc_uncorrected_errors=1)], clock=clock)
    served = fake.nvmlDeviceGetTotalEccErrors
    failures = iter([True])

    def once_failing_uncorrected(handle, error_type, counter_type):
        if error_type == 1 and next(failures, False):
            raise pynvml.NVMLError_Unknown()
        return served(handle, error_type, counter_type)

    fake.nvmlDeviceGetTotalEccErrors = once_failing_uncorrected
    nvml = NVML(fake)
    (device,) = nvml.devices()
    r = nvml.read(device, 0.0)
    assert (r.ecc_corrected_errors, r.ecc_uncorrected_errors) == (None, None)
    clock.advance(0.2)
    r = nvml.read(device, 0.2)  # within the interval, but nothing was kept to carry
    assert (r.ecc_corrected_errors, r.ecc_uncorrected_errors) == (4, 1)
    assert [(f.metric, f.error) for f in nvml.faults] == [("ecc", "NVMLError_Unknown")]
