"""`FakeNVML`: a stand-in for NVML that serves scripted GPUs, for tests and demos without a GPU.

It offers the functions of ``pynvml`` that gpu-watch uses, with NVML's documented behaviour
(``nvml.h`` and the ``pynvml`` module of ``nvidia-ml-py``), never kinder than the real library:

- units: memory in bytes, power in milliwatts, utilization in percent of the last sample period;
- errors are the real ``pynvml.NVMLError_*`` classes, ``NVMLError_Uninitialized`` before
  ``nvmlInit`` and ``NVMLError_InvalidArgument`` for a handle that is not one;
- ``nvmlDeviceGetHandleByIndex`` can fail for one GPU that ``nvmlDeviceGetCount`` still counts;
- the process list comes in versions, and a driver may lack some (:class:`FakeNVML`'s
  `driver_lacks`), with the same errors as ``pynvml``;
- ``usedGpuMemory`` can be None (NVML_VALUE_NOT_AVAILABLE);
- process utilization is a buffer of samples at the driver's own period, answered by timestamp;
- MIG: a MIG-enabled GPU refuses utilization, for itself as for its instances, and its instance
  slots can be empty.
- GPU Performance Monitoring (GPM) is served on Hopper-class fakes only, through NVML's own
  structures (``c_nvmlGpmMetricsGet_t``) with a return code per metric;
- the energy counter counts millijoules since ``nvmlInit`` on Volta and newer;
- ECC error counts are unsigned and never go down, and a GPU without ECC (GeForce) or a MIG
  instance answers ``NotSupported``.

Pass it wherever gpu-watch accepts an NVML library::

    from gpu_watch import GPUWatch
    from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

    fake = FakeNVML([FakeGPU(util_pct=[90, 95, 0, 0], processes=[FakeProcess(used_mib=2048)])])
    model.fit(x, y, callbacks=[GPUWatch(nvml=fake)])

Timelines (``util_pct``, ``mem_used_mib``, ...) are a constant, a list (one value per
`step_s` seconds since ``nvmlInit``, the last value held), or a function of those seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import re
import threading
import time
import uuid as uuid_module
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pynvml

from gpu_watch.errors import take_swallowed
from gpu_watch.sensing.sampler import Sampler

Timeline = float | int | None | Sequence[float] | Callable[[float], float]

_MIB = 1024 * 1024
# The driver keeps a finite buffer of process utilization samples (nvml.h: "all the samples
# maintained by the driver's internal sample buffer"); its length is not documented.
PROC_SAMPLE_BUFFER = 100
# Slots for MIG devices on A100/H100-class GPUs (nvmlDeviceGetMaxMigDeviceCount).
MIG_SLOTS = 7
_NAME_BUFFER_BYTES = 1024  # what pynvml passes to nvmlSystemGetProcessName

# The functions each fault "field" covers, so a test can fail one reading without naming NVML;
# the fields carry the metric names the NVML seam uses (run.json's faults and switched_off).
FIELDS = {
    "handle": ("nvmlDeviceGetHandleByIndex",),
    "uuid": ("nvmlDeviceGetUUID",),
    "name": ("nvmlDeviceGetName",),
    "minor_number": ("nvmlDeviceGetMinorNumber",),
    "memory": ("nvmlDeviceGetMemoryInfo",),
    "util": ("nvmlDeviceGetUtilizationRates",),
    "processes": ("nvmlDeviceGetComputeRunningProcesses_v3",
                  "nvmlDeviceGetComputeRunningProcesses_v2"),
    "proc_util": ("nvmlDeviceGetProcessUtilization",),
    "power": ("nvmlDeviceGetPowerUsage",),
    "temperature": ("nvmlDeviceGetTemperature",),
    "sm_clock": ("nvmlDeviceGetClockInfo",),
    "clock_events": ("nvmlDeviceGetCurrentClocksEventReasons",
                     "nvmlDeviceGetCurrentClocksThrottleReasons"),
    "gpm": ("nvmlGpmQueryDeviceSupport", "nvmlGpmSampleGet", "nvmlGpmMigSampleGet",
            "nvmlGpmMetricsGet"),
    "energy": ("nvmlDeviceGetTotalEnergyConsumption",),
    "ecc": ("nvmlDeviceGetTotalEccErrors",),
    # One GPM metric: its error lands in that metric's nvmlReturn, and the call succeeds.
    "gpm_sm_active": ("nvmlGpmMetricsGet",),
    "gpm_sm_occupancy": ("nvmlGpmMetricsGet",),
    "gpm_tensor_active": ("nvmlGpmMetricsGet",),
    "gpm_dram_bw": ("nvmlGpmMetricsGet",),
    "gpm_fp32_active": ("nvmlGpmMetricsGet",),
    "gpm_fp16_active": ("nvmlGpmMetricsGet",),
    "gpm_pcie_tx": ("nvmlGpmMetricsGet",),
    "gpm_pcie_rx": ("nvmlGpmMetricsGet",),
}

# The GPM metrics a fake serves: NVML_GPM_METRIC_* id -> (FakeGPU attribute, fault field).
_GPM_SERVED = {
    2: ("sm_active_pct", "gpm_sm_active"),
    3: ("sm_occupancy_pct", "gpm_sm_occupancy"),
    5: ("tensor_active_pct", "gpm_tensor_active"),
    10: ("dram_bw_pct", "gpm_dram_bw"),
    12: ("fp32_active_pct", "gpm_fp32_active"),
    13: ("fp16_active_pct", "gpm_fp16_active"),
    20: ("pcie_tx_mib_s", "gpm_pcie_tx"),
    21: ("pcie_rx_mib_s", "gpm_pcie_rx"),
}
_NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED
ARCHITECTURES = ("kepler", "maxwell", "pascal", "volta", "turing", "ampere", "ada", "hopper",
                 "blackwell")
# Model numbers in product names, by architecture (GeForce and RTX cards by series below).
_MODELS = {
    "kepler": {"K80", "K40", "K20"},
    "maxwell": {"M60", "M40", "M10"},
    "pascal": {"P100", "P40", "P4", "P6"},
    "volta": {"V100"},
    "turing": {"T4"},
    "ampere": {"A100", "A800", "A40", "A30", "A16", "A10", "A10G", "A2", "A6000", "A5000",
               "A4000"},
    "ada": {"L40", "L40S", "L4", "L20"},
    "hopper": {"H100", "H200", "H800", "H20", "GH200"},
    "blackwell": {"B100", "B200", "B300", "GB200", "GB300"},
}
_SERIES = {"10": "pascal", "20": "turing", "30": "ampere", "40": "ada", "50": "blackwell"}


def architecture_of(name: str) -> str | None:
    """The architecture a product name implies ("NVIDIA H100 80GB HBM3" -> "hopper"), or None.

    >>> architecture_of("NVIDIA GeForce RTX 4090"), architecture_of("Tesla V100-SXM2-16GB")
    ('ada', 'volta')
    """
    words = re.split(r"[\s\-_]+", name.upper())
    for arch, models in _MODELS.items():
        if any(word in models for word in words):
            return arch
    if "TITAN" in words and "V" in words:
        return "volta"
    for before, word in zip(words, words[1:], strict=False):
        if before in ("RTX", "GTX") and re.fullmatch(r"\d{4}(TI)?", word):
            return _SERIES.get(word[:2])
    return None


@dataclass
class FakeProcess:
    """A compute process on a fake GPU.

    Attributes:
        pid: Its PID. Default None: this process (resolved at each call, so it survives forks).
        used_mib: GPU memory it holds, MiB (a timeline). Default 300: a CUDA context alone holds
            a few hundred MiB, and NVML lists a process once it has one. None: NVML cannot say
            (``usedGpuMemory`` is NVML_VALUE_NOT_AVAILABLE under Windows' WDDM, which ``pynvml``
            turns into None).
        sm_util_pct: Its SM utilization, percent (a timeline), sampled at the GPU's
            `proc_sample_period_s`. A sample exists only for a period in which it was above 0:
            NVML returns "one utilization sample structure per process running, that had some
            non-zero utilization during the last sample period".
        name: What ``nvmlSystemGetProcessName`` returns for it (as bytes, cut to NVML's
            1024-byte buffer). None: NVML may not read it (``NoPermission``, as for another
            user's process without the rights).
    """

    pid: int | None = None
    used_mib: Timeline = 300.0
    sm_util_pct: Timeline = 0.0
    name: str | None = "python"


@dataclass
class FakeGPU:
    """A scripted GPU.

    Attributes:
        name: Product name.
        uuid: ``GPU-...`` UUID. Default: a fresh random one.
        mem_total_mib: Total memory, MiB.
        util_pct: GPU utilization, percent (timeline).
        mem_util_pct: Memory-controller utilization, percent (timeline).
        mem_used_mib: Memory used on the device by everyone, MiB (timeline). Default: the sum of
            the processes' memory plus 300 MiB the driver keeps.
        processes: Compute processes on the device.
        power_w, temp_c, sm_clock_mhz: Power (W), temperature (C), SM clock (MHz) (timelines).
        mig_devices: MIG instances carved from this GPU, one per slot (each a FakeGPU with a
            ``MIG-`` UUID, or None for an empty slot). Non-empty: MIG is enabled, and NVML
            refuses this GPU's utilization and process utilization ("On MIG-enabled GPUs,
            querying device utilization rates is not currently supported", and likewise for
            process utilization), as it does for the instances.
        proc_sample_period_s: Seconds between the driver's process utilization samples. NVML
            documents 1/6 s to 1 s, by product, for its utilization sample period. Default 1/6.
        architecture: One of :data:`ARCHITECTURES`. Default None: from the name (see
            :func:`architecture_of`); a name it does not know counts as Volta to Ada.
        gpm: Whether the GPU supports GPM. Default None: Hopper and Blackwell do, as in NVML.
        sm_active_pct: Share of SMs busy, percent (timeline). Default None: as `util_pct`, a
            workload that fills the GPU while it runs.
        sm_occupancy_pct: Resident warps against the maximum, percent (timeline). Default
            None: as `sm_active_pct`.
        tensor_active_pct, dram_bw_pct, fp32_active_pct, fp16_active_pct: Tensor-core
            activity, DRAM bandwidth used, non-tensor FP32 and FP16 math, percent (timelines).
        pcie_tx_mib_s, pcie_rx_mib_s: PCIe traffic from and to the GPU, MiB/s (timelines).
        energy_mj: The energy counter, mJ (timeline; a drop is a driver reload). Default None:
            `power_w` integrated since ``nvmlInit``. Pascal and older: ``NotSupported``.
        minor_number: The host's number of the GPU (``/dev/nvidia<N>``). Default None: its
            NVML index, as on a host that sees every GPU (a container may see GPUs 2 and 3 of
            the host as its 0 and 1).
        ecc: Whether the GPU has ECC memory, enabled. Default None: every GPU but GeForce and
            TITAN cards. Without it ``nvmlDeviceGetTotalEccErrors`` raises ``NotSupported``
            (nvml.h: "Only applicable to devices with ECC. Requires ECC Mode to be enabled").
        ecc_corrected_errors, ecc_uncorrected_errors: ECC errors since the driver loaded (NVML's
            volatile counts; timelines of whole numbers that never go down, as NVML's counts
            cannot while the driver stays loaded).
        ecc_earlier_errors: (corrected, uncorrected) errors counted before the driver loaded:
            the aggregate counts (the device's life, across reboots) add them to the volatile
            ones.
    """

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = field(default_factory=lambda: f"GPU-{uuid_module.uuid4()}")
    mem_total_mib: float = 81559.0
    util_pct: Timeline = 0.0
    mem_util_pct: Timeline = 0.0
    mem_used_mib: Timeline = None
    processes: list[FakeProcess] = field(default_factory=list)
    power_w: Timeline = 70.0
    temp_c: Timeline = 35.0
    sm_clock_mhz: Timeline = 1980.0
    mig_devices: list[FakeGPU | None] = field(default_factory=list)
    proc_sample_period_s: float = 1 / 6
    _faults: list[tuple[str, type, float, float]] = field(default_factory=list, init=False,
                                                           repr=False)
    architecture: str | None = None
    gpm: bool | None = None
    sm_active_pct: Timeline = None
    sm_occupancy_pct: Timeline = None
    tensor_active_pct: Timeline = 0.0
    dram_bw_pct: Timeline = 0.0
    fp32_active_pct: Timeline = 0.0
    fp16_active_pct: Timeline = 0.0
    pcie_tx_mib_s: Timeline = 0.0
    pcie_rx_mib_s: Timeline = 0.0
    energy_mj: Timeline = None
    minor_number: int | None = None
    ecc: bool | None = None
    ecc_corrected_errors: Timeline = 0
    ecc_uncorrected_errors: Timeline = 0
    ecc_earlier_errors: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        period = self.proc_sample_period_s
        if isinstance(period, bool) or not isinstance(period, (int, float)) or not period > 0:
            raise ValueError(f"proc_sample_period_s must be a number of seconds above 0, "
                             f"got {period!r}")
        if self.architecture is not None and self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be None or one of {', '.join(ARCHITECTURES)}, "
                             f"got {self.architecture!r}")

    def fail(self, field_name: str, error: type[pynvml.NVMLError], from_s: float = 0.0,
             until_s: float = math.inf) -> FakeGPU:
        """Make `field_name` raise `error` (a ``pynvml.NVMLError_*`` class) in [from_s, until_s).

        `field_name` is one of :data:`FIELDS` or ``"*"`` for every query on this GPU (use
        ``"*"`` with ``NVMLError_GpuIsLost`` for a GPU that falls off the bus). Returns self.
        """
        if field_name != "*" and field_name not in FIELDS:
            raise ValueError(
                f"field_name must be '*' or one of {sorted(FIELDS)}, got {field_name!r}"
            )
        if not (isinstance(error, type) and issubclass(error, pynvml.NVMLError)):
            raise ValueError(f"error must be a pynvml.NVMLError subclass, got {error!r}")
        self._faults.append((field_name, error, from_s, until_s))
        return self

    @property
    def arch(self) -> str | None:
        """The architecture: `architecture`, or the one the name implies."""
        return self.architecture or architecture_of(self.name)

    def supports_gpm(self) -> bool:
        """Whether NVML offers GPM on this GPU (Hopper and newer, unless `gpm` says)."""
        return self.arch in ("hopper", "blackwell") if self.gpm is None else self.gpm

    def supports_energy(self) -> bool:
        """Whether the energy counter exists (Volta and newer; MIG instances have none)."""
        return self.arch not in ("kepler", "maxwell", "pascal")

    def supports_ecc(self) -> bool:
        """Whether NVML counts ECC errors on this GPU (`ecc`, or all but GeForce and TITAN)."""
        if self.ecc is not None:
            return self.ecc
        words = re.split(r"[\s\-_]+", self.name.upper())
        return "GEFORCE" not in words and "TITAN" not in words


@dataclass(frozen=True)
class _Memory:  # c_nvmlMemory_t: bytes
    total: int
    free: int
    used: int


@dataclass(frozen=True)
class _Utilization:  # c_nvmlUtilization_t: percent
    gpu: int
    memory: int


@dataclass(frozen=True)
class _ProcessInfo:  # c_nvmlProcessInfo_t: usedGpuMemory in bytes, None when not available
    pid: int
    usedGpuMemory: int | None  # noqa: N815 (NVML's field name)
    gpuInstanceId: int = 0xFFFFFFFF  # noqa: N815
    computeInstanceId: int = 0xFFFFFFFF  # noqa: N815


@dataclass(frozen=True)
class _ProcessUtilizationSample:  # c_nvmlProcessUtilizationSample_t: timeStamp in microseconds
    pid: int
    timeStamp: int  # noqa: N815
    smUtil: int  # noqa: N815
    memUtil: int  # noqa: N815
    encUtil: int = 0  # noqa: N815
    decUtil: int = 0  # noqa: N815


_NO_HANDLE = object()  # a call that takes no device handle


@dataclass(frozen=True)
class _Handle:
    gpu: FakeGPU
    index: int
    mig: bool = False  # a MIG device handle (an instance), not a physical GPU


class FakeNVML:
    """Scripted NVML: serves `gpus` through the same functions as ``pynvml``.

    Args:
        gpus: The devices, in NVML (PCI bus) order.
        init_error: A ``pynvml.NVMLError_*`` class that ``nvmlInit`` raises, e.g.
            ``pynvml.NVMLError_DriverNotLoaded``. Default None: init succeeds.
        driver_version: What ``nvmlSystemGetDriverVersion`` returns.
        cuda_driver_version: What ``nvmlSystemGetCudaDriverVersion`` returns (12040 is 12.4).
        step_s: Seconds per element of list timelines. Default 1.0.
        clock: Monotonic clock in seconds. Default `time.monotonic`; tests may pass a fake one.
        driver_lacks: Names of NVML C functions this driver does not export (an older
            driver), e.g. ``"nvmlDeviceGetComputeRunningProcesses_v3"``. As in ``pynvml``,
            the binding of that name raises ``NVMLError_FunctionNotFound`` (its
            ``_nvmlGetFunctionPointer`` does), and an unversioned binding that wraps it
            raises ``pynvml.NVMLLibraryMismatchError``, a plain ``Exception``.

    Attributes:
        calls: How often each function was called, by (function name, thread name).
        simulated: Always True: run folders record it, and their figures say "simulated".
    """

    simulated = True

    def __init__(
        self,
        gpus: Sequence[FakeGPU] = (),
        init_error: type[pynvml.NVMLError] | None = None,
        driver_version: str = "550.54.15",
        cuda_driver_version: int = 12040,
        step_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        driver_lacks: Sequence[str] = (),
    ) -> None:
        unknown = [name for name in driver_lacks
                   if not (name.startswith("nvml") and callable(getattr(self, name, None)))]
        if unknown:
            raise ValueError(
                f"driver_lacks must name NVML functions FakeNVML serves, such as "
                f"'nvmlDeviceGetComputeRunningProcesses_v3'; got {unknown}"
            )
        self.gpus = list(gpus)
        self.driver_lacks = frozenset(driver_lacks)
        self.init_error = init_error
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.step_s = step_s
        self.clock = clock
        self.calls: Counter[tuple[str, str]] = Counter()
        self._initialised = 0
        self._t0: float | None = None
        # Process utilization timestamps are CPU time in microseconds, as NVML's are.
        self._epoch_us = int(time.time() * 1e6)
        self._lock = threading.Lock()
        self._gpm_samples: dict[int, _GpmSample] = {}
        self._energy: dict[int, tuple[float, float]] = {}  # id(gpu) -> (at_s, mJ so far)
        self._ecc_served: dict[tuple[int, int], int] = {}  # (id(gpu), error type) -> count

    def elapsed_s(self) -> float:
        """Seconds since the first successful ``nvmlInit``: the time axis of every timeline."""
        return 0.0 if self._t0 is None else self.clock() - self._t0

    def value(self, timeline: Timeline, at_s: float | None = None) -> float | None:
        """A timeline's value at `at_s` seconds (default: now); earlier than 0 reads as 0."""
        t = max(0.0, self.elapsed_s() if at_s is None else at_s)
        if timeline is None or isinstance(timeline, (int, float)):
            return timeline
        if callable(timeline):
            return timeline(t)
        if not timeline:
            return None
        return timeline[min(int(t // self.step_s), len(timeline) - 1)]

    # -- the pynvml surface ----------------------------------------------------------------------

    def _enter(self, func: str, handle: object = _NO_HANDLE, field_name: str | None = None,
               gpu: FakeGPU | None = None) -> None:
        with self._lock:
            self.calls[(func, threading.current_thread().name)] += 1
        if func in self.driver_lacks:
            raise pynvml.NVMLError_FunctionNotFound()  # pynvml's _nvmlGetFunctionPointer
        if not self._initialised:
            raise pynvml.NVMLError_Uninitialized()
        if handle is not _NO_HANDLE:
            if not isinstance(handle, _Handle):  # NVML: "device is invalid"
                raise pynvml.NVMLError_InvalidArgument()
            gpu = handle.gpu
        if gpu is not None and field_name is not None:
            now = self.elapsed_s()
            for name, error, start, end in gpu._faults:
                if name in ("*", field_name) and start <= now < end:
                    raise error()

    def nvmlInit(self) -> None:  # noqa: N802 (NVML's names)
        with self._lock:
            self.calls[("nvmlInit", threading.current_thread().name)] += 1
        if self.init_error is not None:
            raise self.init_error()
        if self._t0 is None:
            self._t0 = self.clock()
        self._initialised += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._enter("nvmlShutdown")
        self._initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        self._enter("nvmlSystemGetCudaDriverVersion")
        return self.cuda_driver_version

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:  # noqa: N802
        """nvml.h: ``NoPermission`` "if the user doesn't have permission to talk to this
        device", ``GpuIsLost`` "if the target GPU has fallen off the bus", while
        ``nvmlDeviceGetCount_v2`` "returns count of all devices in the system even if
        nvmlDeviceGetHandleByIndex_v2 returns NVML_ERROR_NO_PERMISSION for such device".
        Script it with ``gpu.fail("handle", ...)``."""
        gpu = self.gpus[index] if 0 <= index < len(self.gpus) else None
        self._enter("nvmlDeviceGetHandleByIndex", field_name="handle", gpu=gpu)
        if gpu is None:
            raise pynvml.NVMLError_InvalidArgument()
        return _Handle(gpu, index)

    def nvmlDeviceGetMigMode(self, handle: _Handle) -> list[int]:  # noqa: N802
        """[current, pending]: 1 (NVML_DEVICE_MIG_ENABLE) on a GPU with MIG instances."""
        self._enter("nvmlDeviceGetMigMode", handle)
        enabled = int(bool(handle.gpu.mig_devices))
        return [enabled, enabled]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: _Handle) -> int:  # noqa: N802
        """The number of MIG slots, not of instances: nvml.h "Get the maximum number of MIG
        devices that can exist under a given parent NVML device. Returns zero if MIG is not
        supported or enabled"."""
        self._enter("nvmlDeviceGetMaxMigDeviceCount", handle)
        if handle.mig or not handle.gpu.mig_devices:
            return 0
        return max(MIG_SLOTS, len(handle.gpu.mig_devices))

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: _Handle, slot: int) -> _Handle:  # noqa: N802
        """``NotFound`` for an empty slot ("if no valid MIG device was found at index");
        ``InvalidArgument`` past the last slot."""
        self._enter("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if not 0 <= slot < self.nvmlDeviceGetMaxMigDeviceCount(handle):
            raise pynvml.NVMLError_InvalidArgument()
        devices = handle.gpu.mig_devices
        mig = devices[slot] if slot < len(devices) else None
        if mig is None:
            raise pynvml.NVMLError_NotFound()
        return _Handle(mig, handle.index, mig=True)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:  # noqa: N802
        self._enter("nvmlDeviceGetUUID", handle, "uuid")
        return handle.gpu.uuid

    def nvmlDeviceGetMinorNumber(self, handle: _Handle) -> int:  # noqa: N802
        """nvml.h: "the device node file, /dev/nvidia[minor number]"; a MIG instance has no
        device node of its own (``NotSupported``): its parent's is the one."""
        self._enter("nvmlDeviceGetMinorNumber", handle, "minor_number")
        if handle.mig:
            raise pynvml.NVMLError_NotSupported()
        gpu = handle.gpu
        return gpu.minor_number if gpu.minor_number is not None else handle.index

    def nvmlDeviceGetName(self, handle: _Handle) -> str:  # noqa: N802
        self._enter("nvmlDeviceGetName", handle, "name")
        return handle.gpu.name

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> _Memory:  # noqa: N802
        self._enter("nvmlDeviceGetMemoryInfo", handle, "memory")
        gpu = handle.gpu
        used_mib = self.value(gpu.mem_used_mib)
        if used_mib is None:
            used_mib = 300.0 + sum(self.value(p.used_mib) or 0.0 for p in gpu.processes)
        total = int(gpu.mem_total_mib * _MIB)
        used = min(int(used_mib * _MIB), total)
        return _Memory(total=total, free=total - used, used=used)

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> _Utilization:  # noqa: N802
        self._enter("nvmlDeviceGetUtilizationRates", handle, "util")
        if _mig_enabled(handle):
            raise pynvml.NVMLError_NotSupported()
        gpu = handle.gpu
        return _Utilization(gpu=int(round(self.value(gpu.util_pct) or 0)),
                            memory=int(round(self.value(gpu.mem_util_pct) or 0)))

    def _processes(self, func: str, handle: _Handle) -> list[_ProcessInfo]:
        self._enter(func, handle, "processes")
        listed = []
        for proc in handle.gpu.processes:
            used = self.value(proc.used_mib)
            listed.append(_ProcessInfo(pid=_pid(proc),
                                       usedGpuMemory=None if used is None else int(used * _MIB)))
        return listed

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: _Handle) -> list[_ProcessInfo]:  # noqa: N802
        """Compute processes and their memory; ``usedGpuMemory`` None where NVML reports
        NVML_VALUE_NOT_AVAILABLE ("Under WDDM, NVML_VALUE_NOT_AVAILABLE is always reported")."""
        return self._processes("nvmlDeviceGetComputeRunningProcesses_v3", handle)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: _Handle) -> list[_ProcessInfo]:  # noqa: N802
        """The same list through the older struct version."""
        return self._processes("nvmlDeviceGetComputeRunningProcesses_v2", handle)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[_ProcessInfo]:  # noqa: N802
        """As in ``pynvml``: not a function of its own but ``_v3`` behind its
        ``throwOnVersionMismatch``, so a driver without ``_v3`` gets
        ``NVMLLibraryMismatchError`` (an ``Exception``, not an ``NVMLError``)."""
        try:
            return self.nvmlDeviceGetComputeRunningProcesses_v3(handle)
        except pynvml.NVMLError_FunctionNotFound:
            raise pynvml.NVMLLibraryMismatchError(
                "Unversioned function called and the pyNVML version does not match the NVML "
                "lib version.") from None

    def nvmlDeviceGetProcessUtilization(  # noqa: N802
        self, handle: _Handle, timeStamp: int  # noqa: N803 (pynvml's name)
    ) -> list[_ProcessUtilizationSample]:
        """Every buffered sample newer than `timeStamp` (CPU time, microseconds), per process
        and per driver sample period, so a slow caller gets several per process; nvml.h: "If
        no valid sample entries are found since the lastSeenTimeStamp, NVML_ERROR_NOT_FOUND
        is returned". 0 reads the whole buffer. Samples exist only for processes with
        non-zero utilization in their period, and none on a MIG-enabled GPU."""
        self._enter("nvmlDeviceGetProcessUtilization", handle, "proc_util")
        if _mig_enabled(handle):
            raise pynvml.NVMLError_NotSupported()
        period_s = handle.gpu.proc_sample_period_s
        period_us = period_s * 1e6
        newest = math.floor(self.elapsed_s() / period_s + 1e-9)
        first = newest - PROC_SAMPLE_BUFFER + 1
        if timeStamp >= self._epoch_us:  # skip what the caller has seen
            first = max(first, math.floor((timeStamp - self._epoch_us) / period_us))
        samples = []
        for k in range(first, newest + 1):
            stamp = self._epoch_us + int(round(k * period_us))
            if stamp <= timeStamp:
                continue
            for proc in handle.gpu.processes:
                util = self.value(proc.sm_util_pct, k * period_s) or 0.0
                if util > 0:
                    samples.append(_ProcessUtilizationSample(_pid(proc), stamp,
                                                             int(round(util)), 0))
        if not samples:
            raise pynvml.NVMLError_NotFound()
        return samples

    def nvmlSystemGetProcessName(self, pid: int) -> bytes:  # noqa: N802
        self._enter("nvmlSystemGetProcessName")
        for gpu in self.gpus:
            for proc in [p for g in (gpu, *gpu.mig_devices) for p in g.processes]:
                if _pid(proc) == pid:
                    if proc.name is None:
                        raise pynvml.NVMLError_NoPermission()
                    return proc.name.encode("utf-8", "replace")[:_NAME_BUFFER_BYTES - 1]
        raise pynvml.NVMLError_NotFound()

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetPowerUsage", handle, "power")
        return int((self.value(handle.gpu.power_w) or 0.0) * 1000)  # milliwatts

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetTemperature", handle, "temperature")
        if sensor != 0:
            raise pynvml.NVMLError_InvalidArgument()
        return int(self.value(handle.gpu.temp_c) or 0)

    def nvmlDeviceGetClockInfo(self, handle: _Handle, clock_type: int) -> int:  # noqa: N802
        """The clock in MHz; `clock_type` is an nvmlClockType_t (0 graphics, 1 SM, 2 memory,
        3 video), anything else ``InvalidArgument``. Every type reads `sm_clock_mhz`."""
        self._enter("nvmlDeviceGetClockInfo", handle, "sm_clock")
        if clock_type not in (0, 1, 2, 3):
            raise pynvml.NVMLError_InvalidArgument()
        return int(self.value(handle.gpu.sm_clock_mhz) or 0)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:  # noqa: N802
        """A bit mask; 0x1 (nvmlClocksEventReasonGpuIdle) while utilization is 0."""
        self._enter("nvmlDeviceGetCurrentClocksEventReasons", handle, "clock_events")
        idle = (self.value(handle.gpu.util_pct) or 0.0) == 0.0
        return 0x1 if idle else 0x0

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: _Handle) -> int:  # noqa: N802
        """The same mask under its name before NVML 12.2 (pynvml still has both)."""
        self._enter("nvmlDeviceGetCurrentClocksThrottleReasons", handle, "clock_events")
        idle = (self.value(handle.gpu.util_pct) or 0.0) == 0.0
        return 0x1 if idle else 0x0

    def calls_from(self, thread_name: str) -> int:
        """How many calls came from the thread called `thread_name` (e.g. "MainThread")."""
        return sum(n for (_, thread), n in self.calls.items() if thread == thread_name)

    # -- GPM (Hopper and newer) and energy -------------------------------------------------------

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: _Handle) -> _Handle:  # noqa: N802
        self._enter("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", handle)
        if not handle.mig:
            raise pynvml.NVMLError_InvalidArgument()
        return _Handle(self.gpus[handle.index], handle.index)

    def nvmlDeviceGetGpuInstanceId(self, handle: _Handle) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetGpuInstanceId", handle)
        if not handle.mig:
            raise pynvml.NVMLError_InvalidArgument()
        return self.gpus[handle.index].mig_devices.index(handle.gpu)

    def nvmlGpmQueryDeviceSupport(self, handle: _Handle) -> pynvml.c_nvmlGpmSupport_t:  # noqa: N802
        self._enter("nvmlGpmQueryDeviceSupport", handle, "gpm")
        if handle.mig:
            raise pynvml.NVMLError_NotSupported()  # asked of the parent GPU, as NVML wants
        support = pynvml.c_nvmlGpmSupport_t()
        support.version = pynvml.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = int(handle.gpu.supports_gpm())
        return support

    def nvmlGpmSampleAlloc(self) -> pynvml.c_nvmlGpmSample_t:  # noqa: N802
        self._enter("nvmlGpmSampleAlloc")
        buffer = ctypes.create_string_buffer(16)  # an opaque buffer, as NVML's is to callers
        with self._lock:
            self._gpm_samples[ctypes.addressof(buffer)] = _GpmSample(buffer)
        return ctypes.cast(buffer, pynvml.c_nvmlGpmSample_t)

    def nvmlGpmSampleFree(self, sample: pynvml.c_nvmlGpmSample_t) -> None:  # noqa: N802
        self._enter("nvmlGpmSampleFree")
        with self._lock:
            if self._gpm_samples.pop(_address(sample), None) is None:
                raise pynvml.NVMLError_InvalidArgument()

    def nvmlGpmSampleGet(self, handle: _Handle, sample: pynvml.c_nvmlGpmSample_t):  # noqa: N802
        self._enter("nvmlGpmSampleGet", handle, "gpm")
        if handle.mig or not handle.gpu.supports_gpm():
            raise pynvml.NVMLError_NotSupported()  # a MIG instance: nvmlGpmMigSampleGet
        self._take_gpm_sample(handle, handle.gpu, sample)
        return sample

    def nvmlGpmMigSampleGet(self, handle: _Handle, gpu_instance_id: int,  # noqa: N802
                            sample: pynvml.c_nvmlGpmSample_t):
        self._enter("nvmlGpmMigSampleGet", handle, "gpm")
        if handle.mig or not handle.gpu.supports_gpm():
            raise pynvml.NVMLError_NotSupported()
        if not 0 <= gpu_instance_id < len(handle.gpu.mig_devices):
            raise pynvml.NVMLError_NotFound()
        self._take_gpm_sample(handle, handle.gpu.mig_devices[gpu_instance_id], sample)
        return sample

    def _take_gpm_sample(self, handle: _Handle, source: FakeGPU,
                         sample: pynvml.c_nvmlGpmSample_t) -> None:
        with self._lock:
            record = self._gpm_samples.get(_address(sample))
        if record is None:
            raise pynvml.NVMLError_InvalidArgument()
        values = {}
        for metric_id, (attribute, _) in _GPM_SERVED.items():
            values[metric_id] = self.value(getattr(source, attribute))
        active = values[2] if values[2] is not None else self.value(source.util_pct) or 0.0
        values[2] = active
        values[3] = active if values[3] is None else values[3]
        record.handle, record.source, record.values = handle, source, values

    def nvmlGpmMetricsGet(self, request: pynvml.c_nvmlGpmMetricsGet_t):  # noqa: N802
        """Fill each requested metric from the second sample's values (a sample's values stand
        for the time since the one before, as a utilization reading does), with its own return
        code: a metric this fake does not serve, or a failed `gpm_*` field, is not fatal."""
        self._enter("nvmlGpmMetricsGet")
        if request.version != 1:  # NVML_GPM_METRICS_GET_VERSION
            raise pynvml.NVMLError_ArgumentVersionMismatch()
        if request.numMetrics > len(request.metrics):
            raise pynvml.NVMLError_InvalidArgument()
        with self._lock:
            first = self._gpm_samples.get(_address(request.sample1))
            second = self._gpm_samples.get(_address(request.sample2))
        if (first is None or second is None or first.source is None or first is second
                or first.source is not second.source):
            raise pynvml.NVMLError_InvalidArgument()  # two samples of one GPU are needed
        now = self.elapsed_s()
        faults = [(name, error) for name, error, start, end in second.handle.gpu._faults
                  if start <= now < end]
        for name, error in faults:
            if name in ("*", "gpm"):
                raise error()
        failed = {name: error for name, error in faults if name.startswith("gpm_")}
        for k in range(request.numMetrics):
            metric = request.metrics[k]
            served = _GPM_SERVED.get(metric.metricId)
            error = failed.get(served[1]) if served else None
            if served is None or second.values.get(metric.metricId) is None:
                metric.nvmlReturn, metric.value = _NOT_SUPPORTED, 0.0
            elif error is not None:
                metric.nvmlReturn, metric.value = error().value, 0.0
            else:
                metric.nvmlReturn, metric.value = 0, float(second.values[metric.metricId])
        return request

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetTotalEnergyConsumption", handle, "energy")
        gpu = handle.gpu
        if handle.mig or not gpu.supports_energy():
            raise pynvml.NVMLError_NotSupported()
        if gpu.energy_mj is not None:
            return int(self.value(gpu.energy_mj))
        now = self.elapsed_s()
        with self._lock:
            at_s, total_mj = self._energy.get(id(gpu), (0.0, 0.0))
            # Trapezoids between calls over the power timeline: exact for constant power.
            power_w = (self.value(gpu.power_w, at_s) or 0.0) + (self.value(gpu.power_w) or 0.0)
            total_mj += max(now - at_s, 0.0) * power_w / 2 * 1000.0
            self._energy[id(gpu)] = (now, total_mj)
        return int(total_mj)

    def nvmlDeviceGetTotalEccErrors(self, handle: _Handle, errorType: int,  # noqa: N802, N803
                                    counterType: int) -> int:  # noqa: N803 (pynvml's names)
        """ECC errors of `errorType` (0 corrected, 1 uncorrected) summed over the GPU's
        memories, by `counterType` (0 volatile: since the driver loaded; 1 aggregate: the
        device's life); other values ``InvalidArgument``. ``NotSupported`` on a GPU without ECC
        and on a MIG instance.

        Raises:
            ValueError: A script whose count goes down or below 0: NVML's counts are unsigned
                and cannot go down while the driver stays loaded.
        """
        self._enter("nvmlDeviceGetTotalEccErrors", handle, "ecc")
        if errorType not in (0, 1) or counterType not in (0, 1):
            raise pynvml.NVMLError_InvalidArgument()
        gpu = handle.gpu
        if handle.mig or not gpu.supports_ecc():
            raise pynvml.NVMLError_NotSupported()
        timeline = gpu.ecc_uncorrected_errors if errorType else gpu.ecc_corrected_errors
        count = int(self.value(timeline) or 0)
        with self._lock:
            served = self._ecc_served.get((id(gpu), errorType), 0)
            if count < served:
                kind = ("corrected", "uncorrected")[errorType]
                raise ValueError(f"ecc_{kind}_errors went from {served} to {count}: NVML's "
                                 f"ECC counts never go down (nor below 0)")
            self._ecc_served[(id(gpu), errorType)] = count
        return count + (gpu.ecc_earlier_errors[errorType] if counterType else 0)

    @property
    def gpm_samples_allocated(self) -> int:
        """GPM sample buffers allocated and not yet freed (a leak check for tests)."""
        with self._lock:
            return len(self._gpm_samples)


@dataclass
class _GpmSample:
    """A sample buffer handed out by `nvmlGpmSampleAlloc`, and what was sampled into it."""

    buffer: ctypes.Array
    handle: _Handle | None = None
    source: FakeGPU | None = None
    values: dict[int, float | None] = field(default_factory=dict)


def _address(sample: pynvml.c_nvmlGpmSample_t) -> int | None:
    return ctypes.cast(sample, ctypes.c_void_p).value


def _pid(proc: FakeProcess) -> int:
    return os.getpid() if proc.pid is None else proc.pid


def _mig_enabled(handle: _Handle) -> bool:
    """A MIG instance, or a physical GPU with MIG enabled."""
    return handle.mig or bool(handle.gpu.mig_devices)



# Where only a bug can make an exception: the sampler's tick pipeline, the exporters' jobs, the
# live line (a closed notebook raises nothing of its own kind: it is a bug too), the stack
# sampler's look (the monitor's look turns its own failures into None).
STRICT_PLACES = ("sampler", "export", "live", "loop_clock")


class SwallowedError(AssertionError):
    """Exceptions that gpu-watch caught at `STRICT_PLACES` while `strict_catches` was on."""


@contextlib.contextmanager
def strict_catches(places: Sequence[str] = STRICT_PLACES) -> Iterator[None]:
    """Fail when gpu-watch catches an exception at `places` inside the block.

    Training goes on past such a catch, so a bug there (a formatting error in the live line, a
    wrong key in an exporter) would otherwise pass unseen. A test that provokes one on purpose
    takes it with `gpu_watch.errors.take_swallowed` before the block ends.

    Raises:
        SwallowedError: On leaving the block, naming each exception caught and where.

    Example:
        >>> with strict_catches():
        ...     model.fit(x, y, callbacks=[GPUWatch(nvml=FakeNVML([FakeGPU()]))])
    """
    take_swallowed(*places)  # what an earlier block left is not this block's
    yield
    caught = take_swallowed(*places)
    if caught:
        raise SwallowedError("gpu-watch caught exceptions that only a bug explains:\n" +
                             "\n".join(f"{s.place}: {s.trace}" for s in caught))


# -- time and ticks driven by the test ----------------------------------------------------------


class ManualClock:
    """A monotonic clock in seconds that moves only when told (`advance`).

    Hand the same one to `FakeNVML(clock=...)` and to `Monitor(clock=...)`, and the scripted
    GPUs, the readings and the run's time axis all follow it, whatever the machine's load.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock `seconds` forward."""
        self.now += seconds


class DrivenSampler(Sampler):
    """A `Sampler` without a thread: it reads the GPUs when the test says so.

    Pass the class as `Monitor(sampler=DrivenSampler, clock=ManualClock())`; then `run_for`
    moves the clock and ticks as the thread would, and an exception in the tick reaches the
    test. `stop(closing_tick=True)` reads once more, as the thread does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stopped = False

    @property
    def running(self) -> bool:
        """Always False: no thread runs."""
        return False

    def start(self) -> None:
        """Start the time axis (as `Sampler.start` does); no thread starts."""
        if self._t0 is None:
            self._t0 = self._clock()

    def stop(self, timeout_s: float = 5.0, closing_tick: bool = False) -> None:
        """Stop; with `closing_tick`, read every GPU once more first, on the caller's thread
        (the thread would, before it ends). Idempotent."""
        if closing_tick and not self._stopped:
            self.tick()
        self._stopped = True

    def run_for(self, seconds: float) -> None:
        """Advance the clock (a `ManualClock`) by `seconds`, ticking every `interval_s`."""
        ticks = round(seconds / self.interval_s)
        for _ in range(ticks):
            self._clock.advance(self.interval_s)
            self.tick()
