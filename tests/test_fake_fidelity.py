"""FakeNVML behaves like NVML where the kinder behaviour hid product bugs, and GPUWatch gets
each case right: a handle NVML refuses, a driver without the newest process list, a process
listed without its memory, buffered process-utilization samples, and MIG-enabled GPUs."""

from __future__ import annotations

import os

import pynvml
import pytest
from monitors import monitor_on_gpu, run_monitor

from gpu_watch.judging.timeline import Timeline
from gpu_watch.runlog import SAMPLE_COLUMNS
from gpu_watch.sensing.nvml import NVML, PROC_UTIL_QUIET_S
from gpu_watch.testing import MIG_SLOTS, PROC_SAMPLE_BUFFER, FakeGPU, FakeNVML, FakeProcess

UUIDS = [f"GPU-{i}{i}{i}{i}{i}{i}{i}{i}-aaaa-4000-8000-000000000000" for i in range(1, 4)]
MIG_UUID = "MIG-99999999-1111-5000-8000-000000000000"
OLD_DRIVER = ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2")


def three_gpus(clock=None, error=pynvml.NVMLError_NoPermission) -> FakeNVML:
    """GPUs 0, 1, 2 at 10, 20, 30 % utilization; NVML refuses a handle for GPU 1."""
    gpus = [FakeGPU(uuid=u, util_pct=10 * (i + 1)) for i, u in enumerate(UUIDS)]
    gpus[1].fail("handle", error)
    return FakeNVML(gpus, **({"clock": clock} if clock else {}))


def codes(run):
    return [c["code"] for c in run.causes]


# -- 1. a handle NVML refuses ------------------------------------------------------------------


def test_the_fake_refuses_a_handle_and_still_counts_the_gpu():
    fake = three_gpus()
    fake.nvmlInit()
    assert fake.nvmlDeviceGetCount() == 3  # nvmlDeviceGetCount_v2 counts it all the same
    with pytest.raises(pynvml.NVMLError_NoPermission):
        fake.nvmlDeviceGetHandleByIndex(1)
    assert fake.nvmlDeviceGetUUID(fake.nvmlDeviceGetHandleByIndex(2)) == UUIDS[2]
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetUUID(None)  # a handle that is not one


@pytest.mark.parametrize(
    ("visible", "expected"),
    [(None, [0, 1, 2]), ("1", [1]), ("2", [2]), ("0,1,2", [0, 1, 2]), ("2,0", [2, 0]),
     ("0,5,2", [0])],
)
def test_a_refused_handle_keeps_every_gpu_at_its_own_index(visible, expected):
    nvml = NVML(three_gpus())
    devices = nvml.devices(visible=visible)
    assert [d.nvml_index for d in devices] == expected
    assert [d.cuda_index for d in devices] == list(range(len(expected)))
    for d in devices:
        assert (d.handle is None) == (d.nvml_index == 1)
        assert d.uuid == ("" if d.nvml_index == 1 else UUIDS[d.nvml_index])
    assert ("handle", "NVMLError_NoPermission", 1) in {(f.metric, f.error, f.gpu)
                                                       for f in nvml.faults}


def test_a_gpu_without_handle_reads_as_unmeasured_and_a_lost_one_as_lost():
    nvml = NVML(three_gpus())
    refused = nvml.devices(visible="1")[0]
    r = nvml.read(refused, 0.0)
    assert (r.util_pct, r.mem_used_mib, r.procs, r.proc_util_pct, r.lost) == (
        None, None, None, None, False)
    lost_nvml = NVML(three_gpus(error=pynvml.NVMLError_GpuIsLost))
    (lost,) = lost_nvml.devices(visible="1")
    assert lost_nvml.read(lost, 0.0).lost
    assert {"metric": "*", "gpu": 1, "lost": True} in lost_nvml.switched_off


def test_gpuwatch_watches_the_gpu_cuda_visible_devices_names_when_another_is_refused(
        tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    run = run_monitor(monitor_on_gpu(tmp_path / "two", three_gpus()), seconds=0.3)
    assert [d["nvml_index"] for d in run.info["devices"]] == [2]
    assert run.info["nvml"]["gpus_seen"] == 3
    assert set(run.samples["gpu"]) == {2}
    assert run.samples["util_pct"].eq(30).all()  # GPU 2's, not another's
    assert run.verdict == "ok"

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    run = run_monitor(monitor_on_gpu(tmp_path / "one", three_gpus()), seconds=0.3)
    assert [d["nvml_index"] for d in run.info["devices"]] == [1]
    assert set(run.samples["gpu"]) == {1} and run.samples["util_pct"].isna().all()
    assert run.verdict == "unmonitored"  # the GPU it trains on cannot be read: never "ok"
    assert {"metric": "handle", "error": "NVMLError_NoPermission", "gpu": 1} in [
        {k: f[k] for k in ("metric", "error", "gpu")} for f in run.info["faults"]]


# -- 2. a driver without the newest process list -------------------------------------------------


def test_the_fake_has_pynvmls_versioned_process_lists_and_their_errors():
    fake = FakeNVML([FakeGPU(processes=[FakeProcess(used_mib=64)])],
                    driver_lacks=["nvmlDeviceGetComputeRunningProcesses_v3"])
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        fake.nvmlDeviceGetComputeRunningProcesses_v3(handle)
    assert fake.nvmlDeviceGetComputeRunningProcesses_v2(handle)[0].usedGpuMemory == 64 * 2**20
    with pytest.raises(pynvml.NVMLLibraryMismatchError) as raised:
        fake.nvmlDeviceGetComputeRunningProcesses(handle)  # pynvml: _v3 behind a wrapper
    assert not isinstance(raised.value, pynvml.NVMLError)
    with pytest.raises(ValueError, match="nvmlDeviceGetNoSuchThing"):
        FakeNVML(driver_lacks=["nvmlDeviceGetNoSuchThing"])
    with pytest.raises(ValueError, match="'value'"):
        FakeNVML(driver_lacks=["value"])  # a method of the fake, not an NVML function


def test_a_driver_without_v3_falls_back_to_v2_quietly():
    fake = FakeNVML([FakeGPU(processes=[FakeProcess(used_mib=64)])], driver_lacks=OLD_DRIVER[:1])
    nvml = NVML(fake)
    (device,) = nvml.devices()
    r = nvml.read(device, 0.0)
    assert (r.proc_mem_mib, r.procs, r.proc_listed) == (64, 1, True)
    assert nvml.faults == []


def test_a_driver_without_any_versioned_process_list_loses_only_that_field():
    fake = FakeNVML([FakeGPU(util_pct=60, processes=[FakeProcess(used_mib=64)])],
                    driver_lacks=OLD_DRIVER)
    nvml = NVML(fake)
    (device,) = nvml.devices()
    r = nvml.read(device, 0.0)  # used to raise NVMLLibraryMismatchError out of the seam
    assert (r.util_pct, r.mem_used_mib) == (60, pytest.approx(364))
    assert (r.procs, r.proc_mem_mib, r.proc_listed) == (None, None, None)
    assert [(f.metric, f.error) for f in nvml.faults] == [
        ("processes", "NVMLError_FunctionNotFound")]
    assert {"metric": "processes", "gpu": 0} in nvml.switched_off


def test_the_library_mismatch_error_of_an_unversioned_binding_is_contained():
    fake = FakeNVML([FakeGPU()], driver_lacks=OLD_DRIVER[:1])
    nvml = NVML(fake)
    (device,) = nvml.devices()
    got = nvml.query("listed", 0, "nvmlDeviceGetComputeRunningProcesses", device.handle)
    assert got is None
    assert [(f.metric, f.error) for f in nvml.faults] == [("listed", "NVMLLibraryMismatchError")]
    assert nvml.query("listed", 0, "nvmlDeviceGetComputeRunningProcesses", device.handle) is None
    assert fake.calls[("nvmlDeviceGetComputeRunningProcesses_v3", "MainThread")] == 1


def test_gpuwatch_on_an_old_driver_keeps_every_other_reading(tmp_path):
    fake = FakeNVML([FakeGPU(util_pct=60, processes=[FakeProcess(used_mib=64)])],
                    driver_lacks=OLD_DRIVER)
    run = run_monitor(monitor_on_gpu(tmp_path, fake), seconds=0.3)
    assert run.info["sampler"]["errors"] == []
    assert len(run.samples) >= 5 and run.samples["util_pct"].eq(60).all()
    assert run.samples["procs"].isna().all()
    assert run.verdict == "ok"
    assert [(f["metric"], f["error"]) for f in run.info["faults"]] == [
        ("processes", "NVMLError_FunctionNotFound")]


# -- 3. a process listed without its memory ------------------------------------------------------


def test_the_fake_reports_memory_not_available_as_none():
    fake = FakeNVML([FakeGPU(processes=[FakeProcess(used_mib=None)])])
    fake.nvmlInit()
    (info,) = fake.nvmlDeviceGetComputeRunningProcesses_v3(fake.nvmlDeviceGetHandleByIndex(0))
    assert (info.pid, info.usedGpuMemory) == (os.getpid(), None)


def busy_neighbour(mine_mib):
    return FakeNVML([FakeGPU(util_pct=95, processes=[
        FakeProcess(used_mib=mine_mib, sm_util_pct=0),
        FakeProcess(pid=1, used_mib=30000, sm_util_pct=95)])])


@pytest.mark.parametrize("mine_mib", [None, 0.0])
def test_this_process_listed_without_memory_is_seen_and_so_is_the_other(mine_mib):
    nvml = NVML(busy_neighbour(mine_mib))
    (device,) = nvml.devices()
    r = nvml.read(device, 0.0)
    assert (r.procs, r.proc_listed, r.proc_mem_mib) == (2, True, mine_mib)
    tl = Timeline([0], 10.0, 60.0, 0.2)
    tl.begin_epoch(0)
    tl.add_batch(0, 0, 1, 0.0, 0.01, None)
    tl.add_readings([r])
    (stats,) = tl.run_stats()
    assert (stats.proc_seen, stats.others_seen) == (True, True)


@pytest.mark.parametrize("mine_mib", [None, 0.0])
def test_gpuwatch_never_takes_a_listed_process_for_an_unlisted_one(tmp_path, mine_mib):
    monitor = monitor_on_gpu(tmp_path, busy_neighbour(mine_mib))
    run = run_monitor(monitor, seconds=0.3)
    # Listed, but idle for less than PROC_UTIL_QUIET_S: NVML has no figure of its own yet, so
    # the busy, shared device leaves its use unknown; its PID is not said to be missing.
    assert run.verdict == "unmonitored" and codes(run) == ["process_not_attributable",
                                                           "gpu_shared"]
    assert run.causes[0]["evidence"] == {"gpus": [0], "pid_not_listed": [],
                                         "process_list_unreadable": [],
                                         "no_process_utilization": [], "no_sample_yet": [0]}
    (stats,) = monitor.timeline.run_stats()
    assert (stats.proc_seen, stats.others_seen) == (True, True)
    assert run.samples["proc_mem_mib"].isna().all() == (mine_mib is None)


def test_a_process_not_listed_is_still_unattributable(tmp_path):
    fake = FakeNVML([FakeGPU(util_pct=95, processes=[FakeProcess(pid=1, used_mib=None)])])
    run = run_monitor(monitor_on_gpu(tmp_path, fake), seconds=0.3)
    assert codes(run) == ["process_not_attributable"]


# -- 4. buffered process-utilization samples -----------------------------------------------------


@pytest.mark.parametrize("period", [0, -1.0, float("nan"), "1", True])
def test_the_fake_refuses_a_sample_period_that_is_not_a_positive_number(period):
    with pytest.raises(ValueError, match=f"proc_sample_period_s .*got {period!r}"):
        FakeGPU(proc_sample_period_s=period)


def test_the_fake_buffers_samples_at_the_driver_period_and_honours_the_timestamp(clock):
    proc = FakeProcess(used_mib=500, sm_util_pct=lambda t: 10 + int(t))  # 10, 11, 12, ... %
    fake = FakeNVML([FakeGPU(processes=[proc], proc_sample_period_s=1.0)], clock=clock)
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    buffered = fake.nvmlDeviceGetProcessUtilization(handle, 0)  # 0: the whole buffer
    assert len(buffered) == PROC_SAMPLE_BUFFER
    newest = max(s.timeStamp for s in buffered)
    not_found = 0
    for _ in range(4):  # polled 5x faster than the driver samples
        clock.advance(0.2)
        with pytest.raises(pynvml.NVMLError_NotFound):
            fake.nvmlDeviceGetProcessUtilization(handle, newest)
        not_found += 1
    clock.advance(0.2)
    (fresh,) = fake.nvmlDeviceGetProcessUtilization(handle, newest)
    assert (fresh.smUtil, fresh.timeStamp - newest, not_found) == (11, 1_000_000, 4)
    clock.advance(3.0)  # polled slower: one sample per driver period
    late = fake.nvmlDeviceGetProcessUtilization(handle, fresh.timeStamp)
    assert [s.smUtil for s in late] == [12, 13, 14]
    assert [s.timeStamp - fresh.timeStamp for s in late] == [1_000_000, 2_000_000, 3_000_000]


def test_a_busy_process_polled_faster_than_the_driver_samples_never_reads_idle(clock):
    busy = FakeProcess(used_mib=500, sm_util_pct=95)
    nvml = NVML(FakeNVML([FakeGPU(processes=[busy], proc_sample_period_s=1.0)], clock=clock))
    (device,) = nvml.devices()
    readings = []
    for _ in range(20):  # 5 s, polled every 0.25 s
        clock.advance(0.25)
        readings.append(nvml.read(device, clock.now).proc_util_pct)
    assert 0.0 not in readings
    # the first reading takes the newest buffered sample, then one in four polls finds a new one
    assert readings.count(95.0) == 6 and readings.count(None) == 14


def test_a_slow_poll_takes_the_mean_of_the_periods_since_the_last(clock):
    ramp = FakeProcess(used_mib=500, sm_util_pct=[10, 20, 30, 40, 50, 60, 70])
    nvml = NVML(FakeNVML([FakeGPU(processes=[ramp], proc_sample_period_s=1.0)], clock=clock))
    (device,) = nvml.devices()
    assert nvml.read(device, 0.0).proc_util_pct == 10  # the first: only the newest sample
    clock.advance(3.0)
    assert nvml.read(device, 3.0).proc_util_pct == pytest.approx(30)  # mean of 20, 30, 40
    clock.advance(2.0)
    assert nvml.read(device, 5.0).proc_util_pct == pytest.approx(55)  # mean of 50, 60


def test_an_idle_process_reads_zero_once_a_quiet_period_has_passed(clock):
    stops = FakeProcess(used_mib=500, sm_util_pct=lambda t: 95 if t < 2 else 0)
    seen = []
    fake = FakeNVML([FakeGPU(processes=[stops], proc_sample_period_s=0.5)], clock=clock)
    original = fake.nvmlDeviceGetProcessUtilization

    def spy(handle, timestamp):
        seen.append(timestamp)
        return original(handle, timestamp)

    fake.nvmlDeviceGetProcessUtilization = spy
    nvml = NVML(fake)
    (device,) = nvml.devices()
    got = {}
    for _ in range(24):  # 6 s, polled every 0.25 s
        clock.advance(0.25)
        got[clock.now] = nvml.read(device, clock.now).proc_util_pct
    last_busy = max(t for t, v in got.items() if v == 95)
    assert last_busy == 1.5  # the driver's last sample with work in it (at 2.0 it is 0 %)
    zeros = [t for t, v in got.items() if v == 0.0]
    assert zeros[0] == last_busy + PROC_UTIL_QUIET_S
    assert all(got[t] == 0.0 for t in got if t >= zeros[0])
    assert all(v is None for t, v in got.items() if last_busy < t < zeros[0])
    assert seen[0] == 0 and seen[-1] == fake._epoch_us + 1_500_000  # the newest stamp seen


def test_a_clock_that_goes_back_counts_no_quiet_time(clock):
    nvml = NVML(FakeNVML([FakeGPU(processes=[FakeProcess(used_mib=500)])], clock=clock))
    (device,) = nvml.devices()
    assert nvml.read(device, 5.0).proc_util_pct is None
    assert nvml.read(device, 0.0).proc_util_pct is None  # a new run: its clock starts again
    assert nvml.read(device, PROC_UTIL_QUIET_S - 0.1).proc_util_pct is None
    assert nvml.read(device, PROC_UTIL_QUIET_S).proc_util_pct == 0.0


def test_another_process_s_samples_are_not_ours(clock):
    fake = FakeNVML([FakeGPU(processes=[FakeProcess(used_mib=500),
                                        FakeProcess(pid=1, used_mib=500, sm_util_pct=90)])],
                    clock=clock)
    nvml = NVML(fake)
    (device,) = nvml.devices()
    assert nvml.read(device, 0.0).proc_util_pct is None
    clock.advance(PROC_UTIL_QUIET_S)
    assert nvml.read(device, clock.now).proc_util_pct == 0.0


def test_gpuwatch_records_no_sample_as_missing_never_as_zero(tmp_path):
    busy = FakeProcess(used_mib=500, sm_util_pct=95)
    fake = FakeNVML([FakeGPU(util_pct=95, processes=[busy], proc_sample_period_s=0.5)])
    run = run_monitor(monitor_on_gpu(tmp_path, fake, interval_s=0.1), seconds=1.2)
    proc = run.samples["proc_util_pct"]
    assert proc.eq(95).sum() >= 2 and proc.isna().sum() >= 4
    assert not proc.eq(0).any()


# -- 5. MIG ------------------------------------------------------------------------------------


def mig_parent(slot=4):
    instances = [None] * MIG_SLOTS
    instances[slot] = FakeGPU(name="NVIDIA H100 80GB HBM3 MIG 1g.10gb", uuid=MIG_UUID,
                              mem_total_mib=9984)
    return FakeGPU(uuid=UUIDS[0], util_pct=0, processes=[FakeProcess(used_mib=500,
                                                                    sm_util_pct=90)],
                   mig_devices=instances)


def test_the_fake_reports_mig_slots_and_refuses_utilization_on_the_parent():
    fake = FakeNVML([mig_parent(), FakeGPU()])
    fake.nvmlInit()
    parent, plain = fake.nvmlDeviceGetHandleByIndex(0), fake.nvmlDeviceGetHandleByIndex(1)
    assert fake.nvmlDeviceGetMaxMigDeviceCount(parent) == MIG_SLOTS
    assert fake.nvmlDeviceGetMaxMigDeviceCount(plain) == 0  # "zero if ... not enabled"
    assert (fake.nvmlDeviceGetMigMode(parent), fake.nvmlDeviceGetMigMode(plain)) == ([1, 1],
                                                                                      [0, 0])
    with pytest.raises(pynvml.NVMLError_NotFound):
        fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)  # an empty slot
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, MIG_SLOTS)
    instance = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 4)
    for handle in (parent, instance):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            fake.nvmlDeviceGetUtilizationRates(handle)
        with pytest.raises(pynvml.NVMLError_NotSupported):
            fake.nvmlDeviceGetProcessUtilization(handle, 0)
    assert fake.nvmlDeviceGetUtilizationRates(plain).gpu == 0


def test_a_mig_instance_in_a_later_slot_is_found_by_its_uuid():
    nvml = NVML(FakeNVML([mig_parent(slot=5)]))
    (device,) = nvml.devices(visible=MIG_UUID)
    assert (device.uuid, device.nvml_index, device.mem_total_mib) == (MIG_UUID, 0, 9984)
    assert nvml.faults == []  # empty slots are NotFound, not faults


def test_gpuwatch_on_a_mig_enabled_gpu_is_unmonitored_never_idle(tmp_path):
    run = run_monitor(monitor_on_gpu(tmp_path, FakeNVML([mig_parent()])), seconds=0.3)
    assert run.samples["util_pct"].isna().all() and run.samples["proc_util_pct"].isna().all()
    assert run.samples["mem_used_mib"].notna().all()
    assert run.verdict == "unmonitored"
    off = {(s["metric"], s["gpu"]) for s in run.info["nvml"]["switched_off"]}
    assert {("util", 0), ("proc_util", 0)} <= off


# -- 6. ECC error counts -----------------------------------------------------------------------

CORRECTED, UNCORRECTED = 0, 1  # NVML_MEMORY_ERROR_TYPE_*
VOLATILE, AGGREGATE = 0, 1  # NVML_VOLATILE_ECC, NVML_AGGREGATE_ECC


def test_the_fake_counts_ecc_errors_by_type_and_counter_as_nvml_does(clock):
    gpu = FakeGPU(ecc_corrected_errors=[2, 9], ecc_uncorrected_errors=1,
                  ecc_earlier_errors=(40, 3))
    fake = FakeNVML([gpu], clock=clock)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetTotalEccErrors(None, CORRECTED, VOLATILE)
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    counts = {(e, c): fake.nvmlDeviceGetTotalEccErrors(handle, e, c)
              for e in (CORRECTED, UNCORRECTED) for c in (VOLATILE, AGGREGATE)}
    # Volatile: since the driver loaded; aggregate: the device's life, so never below it.
    assert counts == {(CORRECTED, VOLATILE): 2, (CORRECTED, AGGREGATE): 42,
                      (UNCORRECTED, VOLATILE): 1, (UNCORRECTED, AGGREGATE): 4}
    clock.advance(1.0)
    assert fake.nvmlDeviceGetTotalEccErrors(handle, CORRECTED, VOLATILE) == 9
    for error_type, counter_type in ((2, VOLATILE), (CORRECTED, 2), (-1, VOLATILE)):
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            fake.nvmlDeviceGetTotalEccErrors(handle, error_type, counter_type)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetTotalEccErrors("not a handle", CORRECTED, VOLATILE)


@pytest.mark.parametrize(("name", "ecc", "counted"), [
    ("NVIDIA H100 80GB HBM3", None, True),
    ("Tesla T4", None, True),
    ("NVIDIA RTX A6000", None, True),
    ("NVIDIA GeForce RTX 4090", None, False),
    ("NVIDIA TITAN V", None, False),
    ("NVIDIA H100 80GB HBM3", False, False),  # ECC mode disabled
    ("NVIDIA GeForce RTX 4090", True, True),
])
def test_the_fake_refuses_ecc_counts_on_a_gpu_without_ecc(name, ecc, counted):
    fake = FakeNVML([FakeGPU(name=name, ecc=ecc)])
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    if counted:
        assert fake.nvmlDeviceGetTotalEccErrors(handle, UNCORRECTED, VOLATILE) == 0
    else:
        with pytest.raises(pynvml.NVMLError_NotSupported):
            fake.nvmlDeviceGetTotalEccErrors(handle, UNCORRECTED, VOLATILE)


def test_the_fake_refuses_ecc_counts_on_a_mig_instance():
    fake = FakeNVML([mig_parent()])
    fake.nvmlInit()
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    assert fake.nvmlDeviceGetTotalEccErrors(parent, CORRECTED, VOLATILE) == 0
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetTotalEccErrors(fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 4),
                                         CORRECTED, VOLATILE)


@pytest.mark.parametrize("script", [[3, 2], -1, lambda t: 5 - t])
def test_the_fake_refuses_a_script_whose_ecc_count_goes_down(clock, script):
    # NVML's counts are unsigned and cannot go down while the driver stays loaded.
    fake = FakeNVML([FakeGPU(ecc_corrected_errors=script)], clock=clock)
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(ValueError, match="never go down"):
        for _ in range(3):
            fake.nvmlDeviceGetTotalEccErrors(handle, CORRECTED, VOLATILE)
            clock.advance(1.0)


def test_gpuwatch_on_a_gpu_without_ecc_keeps_every_other_reading_and_its_columns(tmp_path):
    gpu = FakeGPU(name="NVIDIA GeForce RTX 4090", util_pct=90,
                  processes=[FakeProcess(used_mib=500, sm_util_pct=90)])
    run = run_monitor(monitor_on_gpu(tmp_path, FakeNVML([gpu])), seconds=0.3)
    assert run.verdict == "ok"
    assert run.samples["util_pct"].eq(90).all() and run.samples["power_w"].notna().all()
    off = {(s["metric"], s["gpu"]) for s in run.info["nvml"]["switched_off"]}
    assert off == {("ecc", 0), ("gpm", 0)}  # an Ada card: no GPM either
    assert list(run.samples.columns) == list(SAMPLE_COLUMNS)  # the run folder is unchanged
