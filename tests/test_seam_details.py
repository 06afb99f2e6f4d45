"""The NVML seam in detail: which metric and GPU each fault is recorded under, session state,
fall-backs between versioned calls, and the values each reading carries."""

from __future__ import annotations

import types

import pynvml
import pytest

from gpu_watch.sensing.nvml import NVML, Device, parse_visible_devices
from gpu_watch.testing import FIELDS, MIG_SLOTS, FakeGPU, FakeNVML, FakeProcess

UNKNOWN = pynvml.NVMLError_Unknown
MIG_UUID = "MIG-77777777-1111-5000-8000-000000000000"


def faults(nvml):
    return {(f.metric, f.error, f.gpu) for f in nvml.faults}


def test_every_failing_field_is_recorded_under_its_metric_and_gpu(clock):
    broken = FakeGPU(util_pct=0, processes=[FakeProcess(used_mib=64, sm_util_pct=50)])
    for name in FIELDS:
        if name != "handle":
            broken.fail(name, UNKNOWN)
    nvml = NVML(FakeNVML([FakeGPU(), broken], clock=clock))
    _, device = nvml.devices()
    assert (device.uuid, device.name, device.mem_total_mib) == ("", "unknown GPU", None)
    r = nvml.read(device, 0.0)
    assert (r.util_pct, r.mem_used_mib, r.procs, r.proc_util_pct, r.power_w, r.temp_c,
            r.sm_clock_mhz, r.idle_clock_event, r.sm_active_pct, r.energy_counter_mj,
            r.others, r.others_util_pct, r.ecc_corrected_errors, r.ecc_uncorrected_errors
            ) == (None,) * 14
    metrics = ("uuid", "name", "minor_number", "memory", "util", "processes", "proc_util", "power",
               "temperature", "sm_clock", "clock_events", "gpm", "energy", "ecc")
    assert faults(nvml) == {(m, "NVMLError_Unknown", 1) for m in metrics}


def test_system_queries_are_recorded_without_a_gpu():
    lacks = ("nvmlSystemGetDriverVersion", "nvmlSystemGetCudaDriverVersion", "nvmlDeviceGetCount")
    nvml = NVML(FakeNVML([FakeGPU()], driver_lacks=lacks))
    assert (nvml.driver_version(), nvml.cuda_driver_version(), nvml.devices()) == (
        None, None, [])
    assert faults(nvml) == {(m, "NVMLError_FunctionNotFound", None)
                            for m in ("driver_version", "cuda_driver_version", "device_count")}


@pytest.mark.parametrize(("raw", "text"), [(12040, "12.4"), (13000, "13.0"), (11080, "11.8")])
def test_the_driver_s_cuda_version(raw, text):
    assert NVML(FakeNVML([FakeGPU()], cuda_driver_version=raw)).cuda_driver_version() == text


def test_a_library_that_cannot_load_is_an_error_state_and_init_runs_once():
    class Broken(FakeNVML):
        def nvmlInit(self):  # noqa: N802
            raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    nvml = NVML(Broken())
    assert (nvml.available, nvml.error) == (
        False, "OSError: libnvidia-ml.so.1: cannot open shared object file")
    fake = FakeNVML([FakeGPU()])
    nvml = NVML(fake)
    nvml.devices()
    nvml.driver_version()
    assert fake.calls[("nvmlInit", "MainThread")] == 1


def test_shutdown_releases_nvml_and_a_later_use_starts_it_again():
    fake = FakeNVML([FakeGPU()])
    nvml = NVML(fake)
    nvml.shutdown()  # never started: nothing to release
    assert fake.calls[("nvmlShutdown", "MainThread")] == 0
    assert nvml.available
    nvml.shutdown()
    assert fake.calls[("nvmlShutdown", "MainThread")] == 1

    def refuse():
        raise pynvml.NVMLError_Unknown()

    fake.nvmlShutdown = refuse
    assert nvml.available and nvml.error is None  # started again
    nvml.shutdown()  # an NVML error on shutdown is swallowed
    assert fake.calls[("nvmlInit", "MainThread")] == 2
    failed = FakeNVML([FakeGPU()], init_error=pynvml.NVMLError_DriverNotLoaded)
    down = NVML(failed)
    assert not down.available
    down.shutdown()
    assert failed.calls[("nvmlShutdown", "MainThread")] == 0
    failed.init_error = None
    assert down.available  # the error is forgotten, and init is tried anew


def test_a_lost_gpu_is_asked_nothing_more():
    fake = FakeNVML([FakeGPU().fail("*", pynvml.NVMLError_GpuIsLost, from_s=0.0)])
    nvml = NVML(fake)
    (device,) = nvml.devices()
    assert nvml.switched_off == [{"metric": "*", "gpu": 0, "lost": True}]
    asked = sum(fake.calls.values())
    assert nvml.query("power", 0, "nvmlDeviceGetPowerUsage", device.handle) is None
    assert sum(fake.calls.values()) == asked


def test_a_function_the_driver_lacks_is_recorded_for_its_gpu():
    fake = FakeNVML([FakeGPU(), FakeGPU()], driver_lacks=["nvmlDeviceGetPowerUsage"])
    nvml = NVML(fake)
    _, second = nvml.devices()
    assert nvml.read(second, 0.0).power_w is None
    assert faults(nvml) == {("power", "NVMLError_FunctionNotFound", 1)}


def test_faults_are_capped():
    nvml = NVML(FakeNVML([FakeGPU()], driver_lacks=["nvmlSystemGetDriverVersion"]))
    for i in range(250):
        nvml.query(f"metric{i}", None, "nvmlSystemGetDriverVersion")
    assert len(nvml.faults) == 200
    nvml.clear_faults()
    assert nvml.faults == []


def test_the_newest_process_list_is_used_when_only_an_older_is_missing():
    fake = FakeNVML([FakeGPU(processes=[FakeProcess(used_mib=64)])],
                    driver_lacks=["nvmlDeviceGetComputeRunningProcesses_v2"])
    nvml = NVML(fake)
    (device,) = nvml.devices()
    assert nvml.read(device, 0.0).proc_mem_mib == 64
    assert fake.calls[("nvmlDeviceGetComputeRunningProcesses_v3", "MainThread")] == 1


def test_a_process_record_without_memory_field_reads_as_unknown_memory():
    fake = FakeNVML([FakeGPU()])
    fake.nvmlDeviceGetComputeRunningProcesses_v3 = lambda handle: [types.SimpleNamespace(pid=9)]
    nvml = NVML(fake)
    (device,) = nvml.devices()
    (listed,) = nvml.processes(device)
    assert (listed.pid, listed.used_mib) == (9, None)


def test_readings_carry_nvml_s_values(clock):
    gpu = FakeGPU(util_pct=0, mem_total_mib=16384, sm_clock_mhz=1410,
                  processes=[FakeProcess(pid=1, used_mib=1000)])
    fake = FakeNVML([gpu], clock=clock,
                    driver_lacks=["nvmlDeviceGetCurrentClocksEventReasons"])
    nvml = NVML(fake)
    (device,) = nvml.devices()
    r = nvml.read(device, 0.0)
    assert (r.mem_total_mib, r.proc_mem_mib, r.proc_listed, r.procs) == (16384, 0.0, False, 1)
    assert (r.sm_clock_mhz, r.idle_clock_event) == (1410, True)  # via the older binding
    assert nvml.faults == []


def test_the_first_process_reading_takes_the_newest_buffered_sample(clock):
    ramp = FakeProcess(used_mib=500, sm_util_pct=[10, 20, 30, 40])
    nvml = NVML(FakeNVML([FakeGPU(processes=[ramp], proc_sample_period_s=1.0)], clock=clock))
    (device,) = nvml.devices()
    clock.advance(3.0)
    assert nvml.read(device, 3.0).proc_util_pct == 40


def test_devices_keep_their_names_and_records():
    fake = FakeNVML([FakeGPU(name="NVIDIA A100-SXM4-40GB", uuid="GPU-aaaa", mem_total_mib=40960),
                     FakeGPU(name="NVIDIA L4", uuid="GPU-bbbb", mem_total_mib=23034)])
    nvml = NVML(fake)
    (second, first) = nvml.devices(visible="1,0")
    assert (second.name, first.name) == ("NVIDIA L4", "NVIDIA A100-SXM4-40GB")
    assert second.to_dict() == {"nvml_index": 1, "cuda_index": 0, "uuid": "GPU-bbbb",
                                "name": "NVIDIA L4", "mem_total_mib": 23034.0,
                                "minor_number": 1, "parent_uuid": None,
                                "gpu_instance_id": None}


def test_names_in_bytes_from_older_bindings_are_decoded():
    fake = FakeNVML([FakeGPU(uuid="GPU-cccc")])
    fake.nvmlDeviceGetName = lambda handle: b"Tesla V100-SXM2-16GB"
    fake.nvmlSystemGetDriverVersion = lambda: b"470.57.02"
    nvml = NVML(fake)
    (device,) = nvml.devices()
    assert (device.name, nvml.driver_version()) == ("Tesla V100-SXM2-16GB", "470.57.02")


def test_a_gpu_nvml_refuses_is_named_unknown():
    gpus = [FakeGPU().fail("handle", pynvml.NVMLError_NoPermission), FakeGPU()]
    (refused, _) = NVML(FakeNVML(gpus)).all_devices()
    assert refused == Device(0, 0, "", "unknown GPU", None)


def mig_machine(**instance):
    slots = [None] * MIG_SLOTS
    slots[3] = FakeGPU(uuid=MIG_UUID, **instance)
    refused = FakeGPU().fail("handle", pynvml.NVMLError_NoPermission)
    return [refused, FakeGPU(mig_devices=slots)]


def test_a_mig_instance_is_found_past_a_gpu_nvml_refuses():
    nvml = NVML(FakeNVML(mig_machine(name="MIG 3g.40gb")))
    (device,) = nvml.devices(visible=MIG_UUID)
    assert (device.nvml_index, device.cuda_index, device.name) == (1, 0, "MIG 3g.40gb")


def test_a_gpu_s_ordinal_is_its_nvml_index_and_an_instance_has_its_parent_s_records(
        monkeypatch):
    """Without CUDA_VISIBLE_DEVICES the framework numbers the GPUs as NVML does; a MIG instance
    has its parent GPU's host number and UUID, and its GPU instance id (the export's labels)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = mig_machine()
    nvml = NVML(FakeNVML(gpus))
    assert [d.cuda_index for d in nvml.devices()] == [0, 1]
    (instance,) = nvml.devices(visible=MIG_UUID)
    assert (instance.minor_number, instance.parent_uuid, instance.gpu_instance_id) == (
        1, gpus[1].uuid, 3)


def test_mig_lookups_that_fail_are_recorded_for_the_parent():
    instance = FakeGPU(uuid=MIG_UUID).fail("uuid", UNKNOWN)
    unreadable = NVML(FakeNVML([FakeGPU(mig_devices=[instance])]))
    assert unreadable.devices(visible=MIG_UUID) == []
    assert faults(unreadable) == {("uuid", "NVMLError_Unknown", 0)}
    for lacks, metric in [("nvmlDeviceGetMaxMigDeviceCount", "mig_count"),
                          ("nvmlDeviceGetMigDeviceHandleByIndex", "mig_handle")]:
        nvml = NVML(FakeNVML(mig_machine(), driver_lacks=[lacks]))
        assert nvml.devices(visible=MIG_UUID) == []
        assert faults(nvml) == {("handle", "NVMLError_NoPermission", 0),
                                (metric, "NVMLError_FunctionNotFound", 1)}


def test_a_negative_index_hides_the_rest():
    assert parse_visible_devices("0,-1,1") == ["0"]
    assert parse_visible_devices("-1") == []


def test_the_current_clock_event_function_is_asked_before_its_deprecated_name():
    fake = FakeNVML([FakeGPU(util_pct=50)])
    nvml = NVML(fake)
    (device,) = nvml.devices()
    assert nvml.read(device, 0.0).idle_clock_event is False
    assert fake.calls[("nvmlDeviceGetCurrentClocksEventReasons", "MainThread")] == 1
    assert fake.calls[("nvmlDeviceGetCurrentClocksThrottleReasons", "MainThread")] == 0


# -- GPM (Hopper and newer): every call's faults, timing and buffers -----------------------------


def gpm_session(*gpus, clock, interval_s=0.2, **fake_kw):
    fake = FakeNVML(list(gpus), clock=clock, **fake_kw)
    nvml = NVML(fake)
    nvml.gpm_interval_s = interval_s
    return fake, nvml


def refused_on_mig(gpu):
    """What NVML refuses on a MIG instance as a fault, besides GPM (ECC is refused too, and
    switched off, but many GPUs lack it: not a fault)."""
    refused = ("util", "proc_util", "energy")
    return {(metric, "NVMLError_NotSupported", gpu) for metric in refused}


def read_twice(nvml, device, clock, gap_s=0.2):
    nvml.read(device, clock.now)
    clock.advance(gap_s)
    return nvml.read(device, clock.now)


@pytest.mark.parametrize("lacking", ["nvmlGpmSampleAlloc", "nvmlGpmSampleGet",
                                     "nvmlGpmMetricsGet"])
def test_a_gpm_call_the_driver_lacks_switches_gpm_off_for_that_gpu(clock, lacking):
    fake, nvml = gpm_session(FakeGPU(), FakeGPU(), clock=clock, driver_lacks=[lacking])
    _, device = nvml.devices()
    assert read_twice(nvml, device, clock).sm_active_pct is None
    assert faults(nvml) == {("gpm", "NVMLError_FunctionNotFound", 1)}
    assert {"metric": "gpm", "gpu": 1} in nvml.switched_off


@pytest.mark.parametrize("lacking", ["nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
                                     "nvmlDeviceGetGpuInstanceId"])
def test_a_mig_instance_without_its_parent_or_instance_id_has_no_gpm(clock, lacking):
    mig = FakeGPU(uuid=MIG_UUID, sm_active_pct=33.0)
    fake, nvml = gpm_session(FakeGPU(sm_active_pct=77.0, mig_devices=[mig]), clock=clock,
                             driver_lacks=[lacking])
    (device,) = nvml.devices(visible=MIG_UUID)
    assert read_twice(nvml, device, clock).sm_active_pct is None  # never the parent's 77 %
    # A driver without the instance id cannot name the instance either (its export label).
    named = ({("mig_instance", "NVMLError_FunctionNotFound", 0)}
             if lacking == "nvmlDeviceGetGpuInstanceId" else set())
    assert faults(nvml) == ({("gpm", "NVMLError_FunctionNotFound", 0)} | refused_on_mig(0)
                            | named)
    assert device.gpu_instance_id == (None if named else 0)


def test_a_mig_instance_whose_parent_cannot_be_had_now_has_no_gpm_now(clock):
    mig = FakeGPU(uuid=MIG_UUID, sm_active_pct=33.0)
    fake, nvml = gpm_session(FakeGPU(mig_devices=[mig]), clock=clock)

    def refuse(handle):
        raise UNKNOWN()

    fake.nvmlDeviceGetDeviceHandleFromMigDeviceHandle = refuse
    (device,) = nvml.devices(visible=MIG_UUID)
    assert read_twice(nvml, device, clock).sm_active_pct is None
    assert faults(nvml) == {("gpm", "NVMLError_Unknown", 0)} | refused_on_mig(0)


def test_a_failing_gpm_sample_is_recorded_under_gpm_and_its_gpu(clock):
    plain = FakeGPU().fail("gpm", UNKNOWN, from_s=0.1)
    mig = FakeGPU(uuid=MIG_UUID)
    parent = FakeGPU(mig_devices=[mig]).fail("gpm", UNKNOWN, from_s=0.1)
    fake, nvml = gpm_session(FakeGPU(), plain, parent, clock=clock)
    _, device, _ = nvml.devices()
    (instance,) = nvml.devices(visible=MIG_UUID)
    nvml.read(device, 0.0)
    nvml.read(instance, 0.0)
    clock.advance(0.2)
    nvml.read(device, 0.2)
    nvml.read(instance, 0.2)
    assert faults(nvml) == {("gpm", "NVMLError_Unknown", 1),
                            ("gpm", "NVMLError_Unknown", 2)} | refused_on_mig(2)


def test_a_failing_metric_is_recorded_under_its_own_name_and_gpu(clock):
    fake, nvml = gpm_session(FakeGPU(), FakeGPU().fail("gpm_sm_active", UNKNOWN), clock=clock)
    _, device = nvml.devices()
    r = read_twice(nvml, device, clock)
    assert r.sm_active_pct is None and r.dram_bw_pct is not None
    assert faults(nvml) == {("sm_active_pct", "NVMLError_Unknown", 1)}


def test_gpm_samples_follow_the_interval_and_nvml_s_minimum_gap(clock):
    fake, nvml = gpm_session(FakeGPU(), clock=clock, interval_s=1.0)
    (device,) = nvml.devices()
    nvml.read(device, 0.0)
    nvml.read(device, 0.0)  # the same moment again: no second sample
    assert fake.calls[("nvmlGpmSampleGet", "MainThread")] == 1
    clock.advance(0.95)
    assert nvml.read(device, 0.95).sm_active_pct is not None  # 95 % of the interval will do


def test_gpm_samples_exactly_100_ms_apart_give_metrics(clock):
    fake, nvml = gpm_session(FakeGPU(), clock=clock, interval_s=0.1)
    (device,) = nvml.devices()
    assert read_twice(nvml, device, clock, gap_s=0.1).sm_active_pct is not None


def test_bindings_older_than_gpm_switch_it_off_quietly(clock):
    class OldBindings(FakeNVML):
        def __getattribute__(self, name):
            if name == "nvmlGpmQueryDeviceSupport":
                raise AttributeError(name)
            return super().__getattribute__(name)

    nvml = NVML(OldBindings([FakeGPU()], clock=clock))
    (device,) = nvml.devices()
    assert read_twice(nvml, device, clock).sm_active_pct is None
    assert nvml.faults == [] and nvml.switched_off == [{"metric": "gpm", "gpu": 0}]


def test_a_gpu_lost_during_its_first_read_is_not_also_reported_without_gpm(clock):
    # The loss comes in the middle of the read (the utilization query), before the GPM part of
    # it: with bindings older than GPM, the lost GPU must not be asked for GPM after all.
    class OldBindings(FakeNVML):
        def __getattribute__(self, name):
            if name == "nvmlGpmQueryDeviceSupport":
                raise AttributeError(name)
            return super().__getattribute__(name)

    nvml = NVML(OldBindings([FakeGPU().fail("*", pynvml.NVMLError_GpuIsLost, from_s=1.0)],
                            clock=clock))
    (device,) = nvml.devices()
    clock.advance(1.0)
    assert nvml.read(device, 1.0).lost
    assert nvml.switched_off == [{"metric": "*", "gpu": 0, "lost": True}]


def test_the_request_structure_comes_from_the_bindings_in_use(clock):
    made = []

    class Request(pynvml.c_nvmlGpmMetricsGet_t):
        def __init__(self):
            super().__init__()
            made.append(self)

    fake, nvml = gpm_session(FakeGPU(), clock=clock)
    fake.c_nvmlGpmMetricsGet_t = Request
    (device,) = nvml.devices()
    assert read_twice(nvml, device, clock).sm_active_pct is not None
    assert len(made) == 1


def test_gpm_buffers_are_freed_when_one_cannot_be_had(clock):
    fake, nvml = gpm_session(FakeGPU(), FakeGPU(), clock=clock)
    allocate = fake.nvmlGpmSampleAlloc
    answers = iter([UNKNOWN, "ok", UNKNOWN])  # the first fails; then the second of a pair

    def flaky_alloc():
        answer = next(answers, "ok")
        if answer is UNKNOWN:
            fake.calls[("nvmlGpmSampleAlloc", "flaky")] += 1
            raise UNKNOWN()
        return allocate()

    fake.nvmlGpmSampleAlloc = flaky_alloc
    _, device = nvml.devices()
    nvml.read(device, 0.0)  # the first buffer fails: the second is not asked for
    assert fake.calls[("nvmlGpmSampleAlloc", "MainThread")] == 0
    nvml.read(device, 0.1)  # the first of the pair is had, the second fails: the first is freed
    assert fake.gpm_samples_allocated == 0
    assert faults(nvml) == {("gpm", "NVMLError_Unknown", 1)}
    nvml.read(device, 0.2)
    assert fake.gpm_samples_allocated == 2


def test_a_buffer_that_cannot_be_freed_is_a_fault_of_no_gpu(clock):
    fake, nvml = gpm_session(FakeGPU(), clock=clock)
    (device,) = nvml.devices()
    nvml.read(device, 0.0)

    def refuse(sample):
        raise UNKNOWN()

    fake.nvmlGpmSampleFree = refuse
    nvml.release_gpm([device])
    nvml.release_gpm([device])  # nothing left to release: no error
    assert faults(nvml) == {("gpm_free", "NVMLError_Unknown", None)}


def test_a_metric_switched_off_is_no_longer_read(clock):
    fake, nvml = gpm_session(FakeGPU(), FakeGPU(), clock=clock)
    _, device = nvml.devices()
    nvml.switch_off("energy", 1)
    assert nvml.read(device, 0.0).energy_counter_mj is None
    assert fake.calls[("nvmlDeviceGetTotalEnergyConsumption", "MainThread")] == 0
    assert {"metric": "energy", "gpu": 1} in nvml.switched_off
