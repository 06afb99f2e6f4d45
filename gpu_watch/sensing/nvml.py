"""The one seam to NVML.

Every NVML call in gpu-watch goes through :meth:`NVML.query`, which turns an ``NVMLError`` into
``None`` for that field, switches a metric off for a device after ``NotSupported`` and marks a
device lost after ``GpuIsLost``. NVML is initialised lazily: importing this module never touches
the driver, and a machine without one gives an "unavailable" state that names the error.

The library behind the seam is injected: the real ``pynvml`` module (from ``nvidia-ml-py``) by
default, or a :class:`gpu_watch.testing.FakeNVML` that serves the same functions.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pynvml

MIB = 1024 * 1024

# NVML constants, spelled out so a stand-in library does not have to provide them.
_TEMPERATURE_GPU = 0  # NVML_TEMPERATURE_GPU
_CLOCK_SM = 1  # NVML_CLOCK_SM
_CLOCK_EVENT_GPU_IDLE = 0x1  # nvmlClocksEventReasonGpuIdle (formerly ...ThrottleReasonGpuIdle)
_ECC_CORRECTED = 0  # NVML_MEMORY_ERROR_TYPE_CORRECTED
_ECC_UNCORRECTED = 1  # NVML_MEMORY_ERROR_TYPE_UNCORRECTED
# NVML_VOLATILE_ECC, the counts since the driver loaded: the driver keeps them while any client
# holds the GPU, and a watched training does (its NVML session, its CUDA context), so for the
# life of the process they only grow, as OpenTelemetry's counter `hw.errors` must, and they
# restart with the energy counter (`hw.energy`), at a driver load and nowhere else. The
# aggregate counts (NVML_AGGREGATE_ECC, the device's whole life) never restart, but start with
# errors from long before this training.
_ECC_VOLATILE = 0
_MAX_FAULTS = 200
# Metrics many GPUs lack by design (ECC: most GeForce cards): NotSupported switches them off
# without a fault, as GPM is where a GPU has none, so no report notes their absence.
ABSENT_WHEN_UNSUPPORTED = frozenset({"ecc"})
# NVML samples utilization every 1/6 s to 1 s, by product (nvml.h, nvmlDeviceGetUtilizationRates).
# With a process listed on a GPU, no sample of it for two of the longest periods means a whole
# period ended in which it ran no kernels: 0 %. Before that, "no new sample" is unknown, not idle.
# The rule is the same for this process and for the others on the GPU.
PROC_UTIL_QUIET_S = 2.0
# Process names come from other users' processes: untrusted text, kept short and printable.
PROCESS_NAME_MAX_CHARS = 120
_MAX_NAMES = 1024  # names remembered per session (PIDs are reused, so never a growing map)

# GPU Performance Monitoring (GPM, Hopper and newer): the metrics read, by the column they fill,
# with their NVML_GPM_METRIC_* ids from nvml.h. Percentages are 0-100; PCIe is MiB per second.
GPM_METRICS = {
    "sm_active_pct": 2,  # NVML_GPM_METRIC_SM_UTIL: share of SMs busy, averaged over time
    "sm_occupancy_pct": 3,  # NVML_GPM_METRIC_SM_OCCUPANCY: resident warps vs the maximum
    "tensor_active_pct": 5,  # NVML_GPM_METRIC_ANY_TENSOR_UTIL
    "dram_bw_pct": 10,  # NVML_GPM_METRIC_DRAM_BW_UTIL: DRAM bandwidth used vs the peak
    "fp32_active_pct": 12,  # NVML_GPM_METRIC_FP32_UTIL: non-tensor FP32 math
    "fp16_active_pct": 13,  # NVML_GPM_METRIC_FP16_UTIL: non-tensor FP16 math
    "pcie_tx_mib_s": 20,  # NVML_GPM_METRIC_PCIE_TX_PER_SEC
    "pcie_rx_mib_s": 21,  # NVML_GPM_METRIC_PCIE_RX_PER_SEC
}
GPM_METRICS_GET_VERSION = 1  # NVML_GPM_METRICS_GET_VERSION
# NVML asks for more than 100 ms between the two samples a metric is computed from.
GPM_MIN_GAP_S = 0.1
# GPM metrics are averages over the time between two samples (hardware counters), so a sample a
# second loses none of a span's mean, only detail within the second, as DCGM's default 1 Hz
# profiling does. On an H200, a sampler tick that also read GPM and the energy counter took
# 10.3 ms of CPU against 3.7 ms without them: at every 0.2 s tick GPM would almost triple the
# sampler's cost.
GPM_INTERVAL_S = 1.0
# The list of compute processes changes when a process starts or ends on the GPU, seconds or
# hours apart, yet reading it is by far the dearest call a tick makes: the driver walks every
# process with a context on the GPU (milliseconds where other NVML reads take microseconds;
# `benchmarks/sampler_cost.py` measures each call). Read once a second, the list a reading
# carries is at most a second old; the per-process utilization that decides the verdict is
# still read at every tick, from NVML's own per-process samples.
PROCESS_LIST_INTERVAL_S = 1.0
# ECC error counts change only when the GPU's memory has an error: rarely. Read once a second, a
# count is at most a second late, in a run's last export too, where an uncorrected error that
# ends the training matters most.
ECC_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Device:
    """A GPU the training process can see.

    Attributes:
        nvml_index: NVML's index (as `nvidia-smi` numbers GPUs; PCI bus order).
        cuda_index: The framework's ordinal for it (`GPU:0` is the first visible device).
        uuid: `GPU-...` or, for a MIG instance, `MIG-...`.
        name: Product name, e.g. "NVIDIA H100 80GB HBM3".
        mem_total_mib: Total memory in MiB, or None when NVML could not say.
        minor_number: The host's number of the GPU (`/dev/nvidia<N>`, `nvidia-smi -q`'s
            "Minor Number"; of the parent GPU for a MIG instance): the same inside a container
            that sees only some GPUs, whose NVML indices start from 0. None when unknown.
        parent_uuid: For a MIG instance, its parent GPU's `GPU-...` UUID; else None.
        gpu_instance_id: For a MIG instance, its GPU instance id on the parent; else None.
    """

    nvml_index: int
    cuda_index: int
    uuid: str
    name: str
    mem_total_mib: float | None
    handle: Any = field(default=None, repr=False, compare=False)
    minor_number: int | None = None
    parent_uuid: str | None = None
    gpu_instance_id: int | None = None

    def to_dict(self) -> dict:
        """The JSON-ready record written to `run.json`."""
        return {
            "nvml_index": self.nvml_index,
            "cuda_index": self.cuda_index,
            "uuid": self.uuid,
            "name": self.name,
            "mem_total_mib": self.mem_total_mib,
            "minor_number": self.minor_number,
            "parent_uuid": self.parent_uuid,
            "gpu_instance_id": self.gpu_instance_id,
        }


@dataclass
class Reading:
    """One device's readings at one sampler tick. `None` means "not measured".

    Units are in the names: percent (0-100), MiB, watts, degrees Celsius, MHz, MiB/s, mJ.
    `idle_clock_event` is True when the driver reports the GPU-idle clock event.
    `procs` is the number of compute processes NVML lists on the device, and `proc_listed`
    whether this process is among them (None when the list could not be read): NVML may list it
    without its memory (`proc_mem_mib` None), so memory cannot tell.
    The GPM fields (`sm_active_pct` ... `pcie_rx_mib_s`, see :data:`GPM_METRICS`) describe the
    time since the previous GPM sample, on GPUs that support GPM (Hopper and newer).
    `energy_counter_mj` is the whole GPU's energy counter: millijoules since the driver loaded.
    `others` are the other compute processes NVML lists, each with its SM utilization read by
    the same rule as this process's `proc_util_pct` (see :meth:`NVML.process_utilization`);
    `others_util_pct` is their summed SM utilization and `others_mem_mib` their memory, both
    None when unknown. `judged_util_pct` is not NVML's: the timeline sets it to this training's
    utilization of the GPU as the verdicts judge it (see `usage.ReadingJudge`), and
    `fetching_data` and `producing_data` to what the input pipeline was doing at that tick
    (see `data_wait.DataTick`). `ecc_corrected_errors` and `ecc_uncorrected_errors` are the whole
    GPU's ECC error counts since its driver loaded, read every `NVML.ecc_interval_s` (the
    readings between carry the last counts read); None on a GPU without ECC.
    """

    time_s: float
    gpu: int
    util_pct: float | None = None
    mem_util_pct: float | None = None
    mem_used_mib: float | None = None
    mem_total_mib: float | None = None
    proc_mem_mib: float | None = None
    proc_util_pct: float | None = None
    procs: int | None = None
    power_w: float | None = None
    temp_c: float | None = None
    sm_clock_mhz: float | None = None
    idle_clock_event: bool | None = None
    lost: bool = False
    sm_active_pct: float | None = None
    sm_occupancy_pct: float | None = None
    tensor_active_pct: float | None = None
    dram_bw_pct: float | None = None
    fp32_active_pct: float | None = None
    fp16_active_pct: float | None = None
    pcie_tx_mib_s: float | None = None
    pcie_rx_mib_s: float | None = None
    energy_counter_mj: int | None = None
    proc_listed: bool | None = None
    judged_util_pct: float | None = None
    fetching_data: bool | None = None
    producing_data: bool | None = None
    others: tuple[OtherProcess, ...] | None = None
    others_util_pct: float | None = None
    others_mem_mib: float | None = None
    ecc_corrected_errors: int | None = None
    ecc_uncorrected_errors: int | None = None


@dataclass(frozen=True)
class Fault:
    """An NVML error seen while sampling: what, when (Unix time, seconds), which GPU."""

    metric: str
    error: str
    gpu: int | None
    unix_time: float


@dataclass(frozen=True)
class GPUProcess:
    """A compute process on a GPU, as NVML lists it (`nvidia-smi --query-compute-apps`)."""

    pid: int
    used_mib: float | None


@dataclass(frozen=True)
class OtherProcess:
    """Another compute process on a GPU at one sampler tick.

    Attributes:
        pid: Its PID, as NVML reports it (a host PID when this process runs in a container).
        name: Its process name (`nvidia-smi`'s "Process name"), made printable and cut to
            :data:`PROCESS_NAME_MAX_CHARS`; None when NVML could not read it.
        used_mib: GPU memory it holds, MiB; None when NVML cannot say.
        sm_util_pct: Its SM utilization since the previous tick, percent, by the rule of
            :meth:`NVML.process_utilization`; None when unknown (no new sample yet).
    """

    pid: int
    name: str | None
    used_mib: float | None
    sm_util_pct: float | None


def error_name(exc: BaseException) -> str:
    """A readable name for an NVML error: ``NVMLError_LibraryNotFound: NVML Shared Library ...``."""
    return f"{type(exc).__name__}: {exc}"


class NVML:
    """A session with NVML: lazy init, fault containment, device discovery and readings.

    Args:
        lib: The NVML bindings to use. Default: the ``pynvml`` module from ``nvidia-ml-py``.
            Pass a :class:`gpu_watch.testing.FakeNVML` to simulate GPUs.

    Attributes:
        gpm_interval_s: Seconds between two GPM samples of a device (default
            :data:`GPM_INTERVAL_S`; never under NVML's 0.1 s). Readings between them have no
            GPM values.
        process_interval_s: Seconds between two reads of a device's process list (default
            :data:`PROCESS_LIST_INTERVAL_S`; 0 reads it at every reading). Readings between
            them carry the last list read.
        ecc_interval_s: Seconds between two reads of a device's ECC error counts (default
            :data:`ECC_INTERVAL_S`; 0 reads them at every reading). Readings between them carry
            the last counts read.

    Example:
        >>> nvml = NVML()
        >>> if nvml.available:
        ...     for device in nvml.devices():
        ...         print(device.name, nvml.read(device, 0.0).util_pct)
        ... else:
        ...     print("NVML unavailable:", nvml.error)
    """

    gpm_interval_s = GPM_INTERVAL_S
    process_interval_s = PROCESS_LIST_INTERVAL_S
    ecc_interval_s = ECC_INTERVAL_S

    def __init__(self, lib: Any = None) -> None:
        self._lib = lib if lib is not None else pynvml
        self._lock = threading.Lock()
        self._initialised = False
        self._error: str | None = None
        self._disabled: set[tuple[str, int | None]] = set()
        self._lost: set[int] = set()
        self._faults: list[Fault] = []
        self._fault_keys: set[tuple[str, str, int | None]] = set()
        self._gpm: dict[tuple[int, str], _GpmState] = {}
        # Per GPU: the newest process-utilization sample seen (NVML's microseconds), the time
        # of the last reading, and each listed PID's seconds of readings without a sample.
        self._util_seen_us: dict[int, int] = {}
        self._util_read_s: dict[int, float] = {}
        self._quiet_s: dict[int, dict[int, float]] = {}
        self._names: dict[int, str | None] = {}
        # Per device (NVML index, UUID): its process list, and its ECC error counts
        # (corrected, uncorrected), as last read (see `_recent`).
        self._listed: dict[tuple[int, str], _Kept] = {}
        self._ecc: dict[tuple[int, str], _Kept] = {}
        # Whether NVML has listed this process's PID on any GPU in this session: until it does
        # (in a container's PID namespace it never does) its PIDs cannot be told from ours.
        self._pid_listed = False
        self._all_devices: list[Device] | None = None

    # -- state -----------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether NVML could be initialised (initialises it on first use)."""
        self._ensure_init()
        return self._error is None

    @property
    def simulated(self) -> bool:
        """Whether the bindings are a stand-in (`FakeNVML`) rather than the real driver."""
        return bool(getattr(self._lib, "simulated", False))

    @property
    def error(self) -> str | None:
        """Why NVML is unavailable (e.g. ``NVMLError_LibraryNotFound: ...``), else None."""
        self._ensure_init()
        return self._error

    @property
    def faults(self) -> list[Fault]:
        """The first occurrence of each (metric, error, GPU) seen so far."""
        with self._lock:
            return list(self._faults)

    @property
    def switched_off(self) -> list[dict[str, Any]]:
        """Metrics turned off for the session (NotSupported, FunctionNotFound) and lost GPUs:
        they stay off across runs, so each run reports them."""
        return _switched_off(self._disabled, self._lost)

    def clear_faults(self) -> None:
        """Forget the faults seen so far (a new run reports its own)."""
        with self._lock:
            self._faults.clear()
            self._fault_keys.clear()

    def _ensure_init(self) -> None:
        if self._initialised:
            return
        with self._lock:
            if self._initialised:
                return
            try:
                self._lib.nvmlInit()
            except pynvml.NVMLError as exc:
                self._error = error_name(exc)
            except OSError as exc:  # a broken libnvidia-ml.so can fail to load this way
                self._error = f"{type(exc).__name__}: {exc}"
            self._initialised = True

    def shutdown(self) -> None:
        """Release NVML. The session can be initialised again afterwards."""
        with self._lock:
            if self._initialised and self._error is None:
                with contextlib.suppress(pynvml.NVMLError):
                    self._lib.nvmlShutdown()
            self._initialised = False
            self._error = None
            self._all_devices = None
            self._listed.clear()
            self._ecc.clear()

    # -- the one function every query goes through ------------------------------------------------

    def query(self, metric: str, gpu: int | None, func: str | tuple[str, ...], *args: Any,
              not_found: Any = None) -> Any:
        """Call ``lib.<func>(*args)``; return its value, or None on any ``NVMLError``.

        `func` may name several versioned calls, newest first: a driver or binding without one
        (``FunctionNotFound``) moves on to the next, as drivers differ in what they export.
        ``pynvml.NVMLLibraryMismatchError`` (a plain ``Exception``, raised by an unversioned
        binding that wraps a versioned function the driver lacks) counts as ``FunctionNotFound``.
        ``NotFound`` returns `not_found` (NVML's way of saying "nothing to report").
        ``NotSupported`` switches `metric` off for `gpu` for the rest of the session (a fault,
        unless the metric is one of `ABSENT_WHEN_UNSUPPORTED`), and ``GpuIsLost`` marks `gpu`
        lost; any other error leaves the next call free to succeed.
        """
        if not self.available:
            return None
        key = (metric, gpu)
        if key in self._disabled or (gpu is not None and gpu in self._lost):
            return None
        names = (func,) if isinstance(func, str) else func
        present = [name for name in names if hasattr(self._lib, name)]
        for position, name in enumerate(present):
            try:
                return getattr(self._lib, name)(*args)
            except (pynvml.NVMLError_FunctionNotFound, pynvml.NVMLLibraryMismatchError) as exc:
                if position + 1 < len(present):
                    continue
                self._record_fault(metric, gpu, exc)
                self._disabled.add(key)
            except pynvml.NVMLError_NotFound:
                return not_found
            except pynvml.NVMLError as exc:
                unsupported = isinstance(exc, pynvml.NVMLError_NotSupported)
                if not (unsupported and metric in ABSENT_WHEN_UNSUPPORTED):
                    self._record_fault(metric, gpu, exc)
                if unsupported:
                    self._disabled.add(key)
                elif isinstance(exc, pynvml.NVMLError_GpuIsLost) and gpu is not None:
                    self._lost.add(gpu)
            return None
        return None

    def _record_fault(self, metric: str, gpu: int | None, exc: BaseException) -> None:
        name = type(exc).__name__
        with self._lock:
            if (metric, name, gpu) in self._fault_keys or len(self._faults) >= _MAX_FAULTS:
                return
            self._fault_keys.add((metric, name, gpu))
            self._faults.append(Fault(metric, name, gpu, time.time()))

    # -- system ----------------------------------------------------------------------------------

    def driver_version(self) -> str | None:
        """The driver version, e.g. "550.54.15" (`nvidia-smi --query-gpu=driver_version`)."""
        return _text(self.query("driver_version", None, "nvmlSystemGetDriverVersion"))

    def cuda_driver_version(self) -> str | None:
        """The highest CUDA version the driver supports, e.g. "12.4" (12040 in NVML)."""
        raw = self.query("cuda_driver_version", None, "nvmlSystemGetCudaDriverVersion")
        if raw is None:
            return None
        return f"{int(raw) // 1000}.{(int(raw) % 1000) // 10}"

    # -- devices ---------------------------------------------------------------------------------

    def all_devices(self) -> list[Device]:
        """Every GPU NVML sees, in NVML order, whatever ``CUDA_VISIBLE_DEVICES`` says.

        A GPU whose handle NVML refuses (``NoPermission``, ``GpuIsLost``: nvml.h counts such a
        device in ``nvmlDeviceGetCount_v2`` all the same) keeps its place, with no handle, so
        the indices of the others stay right; it reads as unmeasured, never as idle.

        Listed once per session: NVML's devices cannot change until it is shut down (a list
        with a refused handle, or no count, is read again next time).
        """
        if self._all_devices is not None:
            return list(self._all_devices)
        count = self.query("device_count", None, "nvmlDeviceGetCount")
        complete = count is not None
        devices = []
        for index in range(count or 0):
            handle = self.query("handle", index, "nvmlDeviceGetHandleByIndex", index)
            if handle is None:
                complete = False
                devices.append(Device(index, index, "", "unknown GPU", None))
                continue
            devices.append(self._describe(index, index, handle))
        if complete:
            self._all_devices = devices
        return list(devices)

    def devices(self, visible: str | None = None) -> list[Device]:
        """The GPUs the training process can see, in the framework's order.

        Args:
            visible: A ``CUDA_VISIBLE_DEVICES`` value. Default: this process's environment.
                Devices are matched by UUID, so NVML's order never leaks into the mapping.
        """
        if visible is None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        physical = self.all_devices()
        if visible is None:
            return physical
        selected: list[Device] = []
        for cuda_index, token in enumerate(parse_visible_devices(visible)):
            match = self._match(token, physical)
            if match is None or any(d.uuid == match.uuid for d in selected):
                break  # CUDA ignores the invalid entry and everything after it
            selected.append(_with_cuda_index(match, cuda_index))
        return selected

    def _match(self, token: str, physical: list[Device]) -> Device | None:
        if token.isdigit():
            index = int(token)
            return next((d for d in physical if d.nvml_index == index), None)
        wanted = token.upper()
        if wanted.startswith("MIG-"):
            return self._match_mig(wanted, physical)
        if not wanted.startswith("GPU-"):
            wanted = "GPU-" + wanted
        candidates = [d for d in physical if d.uuid.upper().startswith(wanted)]
        return candidates[0] if len(candidates) == 1 else None

    def _match_mig(self, wanted: str, physical: list[Device]) -> Device | None:
        for parent in physical:
            if parent.handle is None:
                continue
            count = self.query("mig_count", parent.nvml_index, "nvmlDeviceGetMaxMigDeviceCount",
                               parent.handle) or 0
            for slot in range(count):
                handle = self.query("mig_handle", parent.nvml_index,
                                    "nvmlDeviceGetMigDeviceHandleByIndex", parent.handle, slot)
                if handle is None:
                    continue
                uuid = _text(self.query("uuid", parent.nvml_index, "nvmlDeviceGetUUID", handle))
                if uuid and uuid.upper().startswith(wanted):
                    return self._describe(parent.nvml_index, parent.cuda_index, handle, parent)
        return None

    def _describe(self, nvml_index: int, cuda_index: int, handle: Any,
                  parent: Device | None = None) -> Device:
        uuid = _text(self.query("uuid", nvml_index, "nvmlDeviceGetUUID", handle)) or ""
        name = _text(self.query("name", nvml_index, "nvmlDeviceGetName", handle)) or "unknown GPU"
        memory = self.query("memory", nvml_index, "nvmlDeviceGetMemoryInfo", handle)
        total = memory.total / MIB if memory is not None else None
        if parent is not None:  # a MIG instance: named as dcgm-exporter names it
            instance = self.query("mig_instance", nvml_index, "nvmlDeviceGetGpuInstanceId",
                                  handle)
            return Device(nvml_index, cuda_index, uuid, name, total, handle,
                          parent.minor_number, parent.uuid,
                          int(instance) if instance is not None else None)
        minor = self.query("minor_number", nvml_index, "nvmlDeviceGetMinorNumber", handle)
        return Device(nvml_index, cuda_index, uuid, name, total, handle,
                      int(minor) if minor is not None else None)

    def processes(self, device: Device) -> list[GPUProcess] | None:
        """Compute processes on `device` with their memory (`nvidia-smi` "Processes"), or None.

        Only the versioned calls: ``pynvml``'s unversioned one is ``_v3`` again (behind
        ``throwOnVersionMismatch``), so it can never help where ``_v3`` and ``_v2`` failed.
        """
        if device.handle is None:
            return None
        listed = self.query(
            "processes",
            device.nvml_index,
            ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2"),
            device.handle,
        )
        if listed is None:
            return None
        return [
            GPUProcess(int(p.pid), _mib(getattr(p, "usedGpuMemory", None))) for p in listed
        ]

    # -- readings --------------------------------------------------------------------------------

    def read(self, device: Device, time_s: float) -> Reading:
        """Everything this session can read from `device` now. Failed fields are None."""
        gpu = device.nvml_index
        reading = Reading(time_s=time_s, gpu=gpu)
        if gpu in self._lost:
            reading.lost = True
            return reading
        if device.handle is None:  # NVML would not open it (see `all_devices`)
            return reading
        h = device.handle
        rates = self.query("util", gpu, "nvmlDeviceGetUtilizationRates", h)
        if rates is not None:
            reading.util_pct = float(rates.gpu)
            reading.mem_util_pct = float(rates.memory)
        memory = self.query("memory", gpu, "nvmlDeviceGetMemoryInfo", h)
        if memory is not None:
            reading.mem_used_mib = memory.used / MIB
            reading.mem_total_mib = memory.total / MIB
        procs = self._recent_processes(device, time_s)
        if procs is not None:
            reading.procs = len(procs)
            mine = [p for p in procs if p.pid == os.getpid()]
            reading.proc_listed = bool(mine)
            if mine:
                used = [p.used_mib for p in mine if p.used_mib is not None]
                reading.proc_mem_mib = sum(used) if used else None
            else:
                reading.proc_mem_mib = 0.0
        listed = {p.pid for p in procs} if procs is not None else set()
        figures = self.process_utilization(device, listed, time_s)
        if figures is not None:
            reading.proc_util_pct = figures.get(os.getpid())
        self._read_sharing(reading, procs, figures)
        power_mw = self.query("power", gpu, "nvmlDeviceGetPowerUsage", h)
        reading.power_w = power_mw / 1000.0 if power_mw is not None else None
        temp = self.query("temperature", gpu, "nvmlDeviceGetTemperature", h, _TEMPERATURE_GPU)
        reading.temp_c = float(temp) if temp is not None else None
        clock = self.query("sm_clock", gpu, "nvmlDeviceGetClockInfo", h, _CLOCK_SM)
        reading.sm_clock_mhz = float(clock) if clock is not None else None
        reasons = self.query(
            "clock_events",
            gpu,
            ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"),
            h,
        )
        if reasons is not None:
            reading.idle_clock_event = bool(int(reasons) & _CLOCK_EVENT_GPU_IDLE)
        counts = _recent(self._ecc, device, time_s, self.ecc_interval_s,
                         lambda: self._ecc_errors(device))
        if counts is not None:
            reading.ecc_corrected_errors, reading.ecc_uncorrected_errors = counts
        self._read_activity(device, reading)
        reading.lost = gpu in self._lost
        return reading

    def _recent_processes(self, device: Device, time_s: float) -> list[GPUProcess] | None:
        """`device`'s process list, read anew every `process_interval_s` and reused between."""
        return _recent(self._listed, device, time_s, self.process_interval_s,
                       lambda: self.processes(device))

    def _ecc_errors(self, device: Device) -> tuple[int, int] | None:
        """The whole GPU's ECC error counts since its driver loaded, (corrected, uncorrected):
        `nvidia-smi -q`'s "ECC Errors", "Volatile", summed over the GPU's memories. None when
        NVML cannot say: a GPU without ECC, or with it disabled (most GeForce cards), answers
        ``NotSupported``, which switches the metric off, as GPM where a GPU has none (absent,
        not a fault: no report notes it); it never reads as 0 errors."""
        corrected, uncorrected = (
            self.query("ecc", device.nvml_index, "nvmlDeviceGetTotalEccErrors", device.handle,
                       error_type, _ECC_VOLATILE)
            for error_type in (_ECC_CORRECTED, _ECC_UNCORRECTED))
        if corrected is None or uncorrected is None:
            return None
        return corrected, uncorrected

    def process_utilization(self, device: Device, listed: set[int], time_s: float
                            ) -> dict[int, float | None] | None:
        """The SM utilization of the processes on `device` since its last reading, percent, by
        PID; None when NVML would not say (an error; ``NotSupported`` switches it off).

        The driver samples processes at its own period (1/6 s to 1 s, by product) and buffers
        one sample per process per period "that had some non-zero utilization";
        ``nvmlDeviceGetProcessUtilization`` returns every sample newer than the timestamp
        passed in (several per process when polled slower than the driver samples), and
        ``NotFound`` when there is none. One call per reading serves this process and the
        others alike, passing back the newest timestamp seen on the device, and one rule holds
        for every PID:

        - samples of it: their mean, each covering one driver period since the last reading
          (the first reading of a device takes only the newest: the buffer reaches back to
          before training);
        - none, for a PID in `listed` (NVML lists it on the device): 0 % once it has been
          listed for `PROC_UTIL_QUIET_S` seconds of readings without a sample, as a whole
          driver period then ended with nothing to report; before that None, since polling
          faster than the driver samples must not read as idle;
        - a PID neither sampled nor listed is left out: unknown (a container's PID namespace,
          or not on this GPU).

        `read` calls it once per reading; each call moves the device's timestamp on, so a
        call of one's own between readings takes their samples away.

        Args:
            device: The GPU.
            listed: The PIDs NVML lists on it now (empty when the list could not be read).
            time_s: The reading's time, seconds; a clock that goes back (a new run's) counts as
                no time.
        """
        gpu = device.nvml_index
        elapsed_s = max(0.0, time_s - self._util_read_s.get(gpu, time_s))
        self._util_read_s[gpu] = time_s
        # Only PIDs listed now are tracked, so the map never outgrows the process list; one
        # that drops off the list and comes back starts over.
        before = self._quiet_s.get(gpu, {})
        quiet = {pid: before[pid] + elapsed_s if pid in before else 0.0 for pid in listed}
        self._quiet_s[gpu] = quiet
        since = self._util_seen_us.get(gpu, 0)
        samples = self.query("proc_util", gpu, "nvmlDeviceGetProcessUtilization",
                             device.handle, since, not_found=())
        if samples is None:
            return None
        by_pid: dict[int, list[Any]] = {}
        for sample in samples:
            by_pid.setdefault(int(sample.pid), []).append(sample)
        if samples:
            self._util_seen_us[gpu] = max(int(s.timeStamp) for s in samples)
        figures: dict[int, float | None] = {}
        for pid, taken in by_pid.items():
            if not since:
                newest = max(int(s.timeStamp) for s in taken)
                taken = [s for s in taken if int(s.timeStamp) == newest]
            figures[pid] = sum(float(s.smUtil) for s in taken) / len(taken)
            if pid in quiet:
                quiet[pid] = 0.0
        for pid in listed - by_pid.keys():
            figures[pid] = 0.0 if quiet[pid] >= PROC_UTIL_QUIET_S else None
        return figures

    # -- GPM and energy --------------------------------------------------------------------------

    def _read_activity(self, device: Device, reading: Reading) -> None:
        """Fill `reading`'s GPM fields and the energy counter, each failure contained."""
        self._read_gpm(device, reading)
        counter = self.query("energy", device.nvml_index, "nvmlDeviceGetTotalEnergyConsumption",
                             device.handle)
        reading.energy_counter_mj = int(counter) if counter is not None else None

    def _read_gpm(self, device: Device, reading: Reading) -> None:
        """Take a GPM sample every `gpm_interval_s` and compute the metrics of the time since
        the previous one. Two buffers per device are swapped at each sample, so nothing is
        allocated per tick; `release_gpm` frees them."""
        gpu = device.nvml_index
        key = (gpu, device.uuid)
        state = self._gpm.get(key)
        if state is None:
            if ("gpm", gpu) in self._disabled or gpu in self._lost:
                return
            state = self._start_gpm(device)
            if state is None:
                return
        # A negative gap is a new time axis (a new run on this session): start over. A tick a
        # few milliseconds early still counts, or jitter would push every sample a tick late.
        gap_s = None if state.previous_s is None else reading.time_s - state.previous_s
        wait_s = max(0.95 * self.gpm_interval_s, GPM_MIN_GAP_S)
        if gap_s is not None and 0 <= gap_s < wait_s:
            return  # too soon: keep the previous sample for a later tick
        if state.instance is None:
            taken = self.query("gpm", gpu, "nvmlGpmSampleGet", state.handle, state.current)
        else:
            taken = self.query("gpm", gpu, "nvmlGpmMigSampleGet", state.handle, state.instance,
                               state.current)
        if taken is None:
            return
        if gap_s is not None and gap_s >= GPM_MIN_GAP_S:
            self._gpm_metrics(state, gpu, reading)
        state.previous, state.current = state.current, state.previous
        state.previous_s = reading.time_s

    def _start_gpm(self, device: Device) -> _GpmState | None:
        """Check that `device` supports GPM and allocate its two sample buffers; None if not.

        A MIG instance is sampled through its parent GPU and its GPU instance id, as NVML asks.
        """
        gpu = device.nvml_index
        if not hasattr(self._lib, "nvmlGpmQueryDeviceSupport"):
            self._disabled.add(("gpm", gpu))  # bindings older than GPM
            return None
        handle, instance = device.handle, None
        if device.uuid.upper().startswith("MIG-"):
            handle = self.query("gpm", gpu, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
                                device.handle)
            instance = self.query("gpm", gpu, "nvmlDeviceGetGpuInstanceId", device.handle)
            if handle is None or instance is None:
                return None
        support = self.query("gpm", gpu, "nvmlGpmQueryDeviceSupport", handle)
        if support is None:
            return None
        if not int(support.isSupportedDevice):
            self._disabled.add(("gpm", gpu))  # Ampere, Ada and older: not an error, just absent
            return None
        first = self.query("gpm", gpu, "nvmlGpmSampleAlloc")
        second = self.query("gpm", gpu, "nvmlGpmSampleAlloc") if first is not None else None
        if second is None:
            if first is not None:
                self._free_gpm_sample(first)
            return None
        struct = getattr(self._lib, "c_nvmlGpmMetricsGet_t", pynvml.c_nvmlGpmMetricsGet_t)
        state = _GpmState(handle, instance, first, second, struct())
        self._gpm[(gpu, device.uuid)] = state
        return state

    def _gpm_metrics(self, state: _GpmState, gpu: int, reading: Reading) -> None:
        wanted = tuple(name for name in GPM_METRICS if (name, gpu) not in self._disabled)
        request = state.request
        # NVML reads the version, the count, both samples and each metric id, and writes only
        # each metric's nvmlReturn and value: pynvml fills none of them.
        request.version = GPM_METRICS_GET_VERSION
        request.sample1 = state.previous
        request.sample2 = state.current
        if wanted != state.asked:
            request.numMetrics = len(wanted)
            for k, name in enumerate(wanted):
                request.metrics[k].metricId = GPM_METRICS[name]
            state.asked = wanted
        if self.query("gpm", gpu, "nvmlGpmMetricsGet", request) is None:
            return
        for k, name in enumerate(wanted):
            metric = request.metrics[k]
            code = int(metric.nvmlReturn)
            if code == 0:
                setattr(reading, name, float(metric.value))
                continue
            error = pynvml.NVMLError(code)  # the subclass for that code
            self._record_fault(name, gpu, error)
            if isinstance(error, pynvml.NVMLError_NotSupported):
                self._disabled.add((name, gpu))

    def release_gpm(self, devices: Sequence[Device]) -> None:
        """Free the GPM sample buffers of `devices` and forget their last process lists and
        ECC counts (the sampler calls it when it stops).

        The next reading of such a device starts afresh with new buffers, a new list and new
        counts.
        """
        for device in devices:
            self._listed.pop((device.nvml_index, device.uuid), None)
            self._ecc.pop((device.nvml_index, device.uuid), None)
            state = self._gpm.pop((device.nvml_index, device.uuid), None)
            if state is not None:
                for sample in (state.previous, state.current):
                    self._free_gpm_sample(sample)

    def switch_off(self, metric: str, gpu: int) -> None:
        """Stop reading `metric` (e.g. "gpm", "energy") on `gpu` for this session, as
        ``NotSupported`` does: to measure what reading it costs, or to spare a GPU the reads."""
        self._disabled.add((metric, gpu))

    def _free_gpm_sample(self, sample: Any) -> None:
        # Not tied to a GPU: a buffer is host memory, freed even after its GPU was switched off
        # or lost.
        self.query("gpm_free", None, "nvmlGpmSampleFree", sample)

    def _read_sharing(self, reading: Reading, procs: list[GPUProcess] | None,
                      figures: dict[int, float | None] | None) -> None:
        """Fill in who else uses the GPU: `others` with their names and SM utilization (from
        `figures`, see `process_utilization`), `others_util_pct`, `others_mem_mib`; and this
        process's 0 % on a GPU where it holds no context."""
        if procs is None:
            return
        self._pid_listed = self._pid_listed or bool(reading.proc_listed)
        if reading.proc_util_pct is None and not reading.proc_listed and self._pid_listed:
            # NVML lists every compute process, and lists this one on another GPU: without a
            # context here it ran no kernels here. NVML's answer is 0 %, not a gap.
            reading.proc_util_pct = 0.0
        reading.others = tuple(
            OtherProcess(p.pid, self.process_name(p.pid), p.used_mib,
                         None if figures is None else figures.get(p.pid))
            for p in procs if p.pid != os.getpid())
        used = [p.used_mib for p in reading.others if p.used_mib is not None]
        reading.others_mem_mib = sum(used) if len(used) == len(reading.others) else None
        utils = [p.sm_util_pct for p in reading.others]
        # Until NVML has listed this PID, any listed PID may be this process's (a container's
        # PID namespace): the others' share is then unknown.
        if self._pid_listed and None not in utils:
            reading.others_util_pct = min(100.0, sum(utils))

    def process_name(self, pid: int) -> str | None:
        """`pid`'s name as NVML reports it (``nvmlSystemGetProcessName``), made safe to print
        (see :func:`printable`), or None when NVML cannot read it (``NoPermission`` for
        another user's process, ``NotFound`` once it has exited). Remembered per PID."""
        if pid in self._names:
            return self._names[pid]
        raw = self.query("process_name", None, "nvmlSystemGetProcessName", pid)
        name = printable(raw, PROCESS_NAME_MAX_CHARS) if raw is not None else None
        if len(self._names) >= _MAX_NAMES:
            self._names.clear()
        self._names[pid] = name or None
        return name or None


@dataclass
class _GpmState:
    """One device's GPM session: the handle samples are taken from (the parent GPU of a MIG
    instance, with its GPU instance id), two sample buffers, when the previous sample was
    taken (the reading's `time_s`), and the request structure, allocated once: its size grows
    with the bindings' version."""

    handle: Any
    instance: int | None
    previous: Any
    current: Any
    request: Any
    previous_s: float | None = None
    asked: tuple[str, ...] = ()


def printable(value: Any, limit: int) -> str:
    """`value` as one line of plain text: bytes decoded (bad bytes replaced), every control,
    format or unassigned character (escape sequences, newlines, bidirectional overrides)
    replaced by "?", other spaces by " ", surrounding space stripped, and cut to `limit`
    characters ("..." ends a cut). For text from outside the program, such as other users'
    process names, before it reaches a terminal, a JSON file or a page; HTML escaping still
    happens where HTML is made.
    """
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = text[: 4 * limit]  # a 10,000-character name is cut before it is scanned
    text = "".join(_printable_char(ch) for ch in text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _printable_char(ch: str) -> str:
    category = unicodedata.category(ch)
    if category == "Zs":
        return " "
    return "?" if category[0] == "C" or category in ("Zl", "Zp") else ch


def parse_visible_devices(value: str) -> list[str]:
    """Split a ``CUDA_VISIBLE_DEVICES`` value into device tokens, as CUDA reads it.

    Tokens are indices, ``GPU-`` UUIDs (full or a unique prefix) or ``MIG-`` UUIDs. An empty value
    hides every device, and a negative index hides itself and everything after it.

    >>> parse_visible_devices("2,0")
    ['2', '0']
    >>> parse_visible_devices("0,-1,1")
    ['0']
    """
    tokens = []
    for raw in value.split(","):
        token = raw.strip()
        if not token or token.startswith("-"):
            break
        tokens.append(token)
    return tokens


def _switched_off(disabled: set[tuple[str, int | None]],
                  lost: set[int]) -> list[dict[str, Any]]:
    """`NVML.switched_off`'s records, in a plain function where the mutation run reaches them:
    session-wide metrics first, then by GPU and metric, then the lost GPUs."""
    off = [{"metric": metric, "gpu": gpu} for metric, gpu in sorted(
        disabled, key=lambda key: (key[1] if key[1] is not None else -1, key[0]))]
    return off + [{"metric": "*", "gpu": gpu, "lost": True} for gpu in sorted(lost)]


@dataclass(frozen=True, slots=True)
class _Kept:
    """A slow read's last value (see `_recent`) and the reading's time it was read at."""

    time_s: float
    value: Any


def _recent(kept: dict[tuple[int, str], _Kept], device: Device, time_s: float,
            interval_s: float, read: Callable[[], Any]) -> Any:
    """A slow read of `device`: `read()` anew every `interval_s` seconds, its last value, kept
    in `kept` by device, reused between (None when it failed).

    A failed read (None) is not kept (the next reading tries again), and a time before the last
    read (a new run's time axis) reads anew. A reading a few milliseconds early counts as on
    time, as for GPM, or jitter would push every read a tick late.
    """
    key = (device.nvml_index, device.uuid)
    last = kept.get(key)
    if last is not None and 0 <= time_s - last.time_s < 0.95 * interval_s:
        return last.value
    value = read()
    if value is None:
        kept.pop(key, None)
    else:
        kept[key] = _Kept(time_s, value)
    return value


def _with_cuda_index(device: Device, cuda_index: int) -> Device:
    return replace(device, cuda_index=cuda_index)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _mib(value: Any) -> float | None:
    return None if value is None else int(value) / MIB
