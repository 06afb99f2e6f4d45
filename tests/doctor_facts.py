"""Facts for the doctor's tests: a healthy machine to edit, recorded probe output to replay, and
FakeNVML machines like the ones the recordings came from."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from gpu_watch.doctor import ENV_VARS, ProbeResult
from gpu_watch.doctor.facts_system import cuda_wheel_status
from gpu_watch.doctor.probe import MARKER, READERS
from gpu_watch.judging.causes import Cause
from gpu_watch.testing import FakeGPU, FakeNVML

DATA = Path(__file__).parent / "data"

UUID_0 = "GPU-11111111-aaaa-4000-8000-000000000000"
UUID_1 = "GPU-22222222-bbbb-4000-8000-000000000000"
H200_UUID = "GPU-1db631d3-dae3-2732-05b2-5083b389b49c"

CUDA_BUILD = {"cuda_version": "12.5.1", "cudnn_version": "9", "is_cuda_build": True,
              "is_rocm_build": False}
REQUIRED = {  # what tensorflow 2.21.0[and-cuda] asks for, trimmed to three wheels
    "nvidia-cublas-cu12": "<13.0,>=12.5.3.2",
    "nvidia-cuda-runtime-cu12": "<13.0,>=12.5.82",
    "nvidia-cudnn-cu12": "<10.0,>=9.3.0.75",
}
INSTALLED = {"keras": "3.15.1", "tensorflow": "2.21.0", "nvidia-cublas-cu12": "12.5.3.2",
             "nvidia-cuda-runtime-cu12": "12.5.82", "nvidia-cudnn-cu12": "9.3.0.75"}
NO_DRIVER_NVML = {"available": False, "error": "NVMLError_LibraryNotFound: NVML Shared Library "
                  "Not Found", "driver_version": None, "cuda_driver_version": None, "gpus": []}


def read_data(name: str) -> str:
    return (DATA / name).read_text()


def recorded(name: str) -> ProbeResult:
    """A probe recorded on a machine: its ``GPU_WATCH_PROBE`` line and its stderr."""
    stdout = read_data(f"{name}.stdout")
    line = next(li for li in stdout.splitlines() if li.startswith(MARKER))
    stderr_path = DATA / f"{name}.stderr"
    stderr = stderr_path.read_text() if stderr_path.exists() else ""
    return ProbeResult(json.loads(line[len(MARKER):]), stderr, duration_s=1.0)


def tf_framework(gpus: int = 1, **changes) -> dict:
    """TensorFlow's facts as the probe reports them for 2.21.0 with CUDA 12.5.1."""
    facts = {
        "name": "tensorflow", "installed": True, "version": "2.21.0", "built_with_cuda": True,
        "build_info": dict(CUDA_BUILD), "import_error": None,
        "gpus": [{"name": f"/physical_device:GPU:{i}", "device_name": "NVIDIA H100 80GB HBM3",
                  "compute_capability": "9.0"} for i in range(gpus)],
    }
    facts.update(changes)
    return facts


def jax_framework(gpus: int = 1, plugin_cuda: str | None = "12.8", **changes) -> dict:
    """JAX's facts: 0.10.2, with a CUDA plugin built for `plugin_cuda` (None: no plugin)."""
    plugin = None if plugin_cuda is None else {
        "package": f"jax_cuda{plugin_cuda.split('.')[0]}_plugin", "cuda_version": plugin_cuda,
        "cudnn_version": "9.8.0"}
    facts = {
        "name": "jax", "installed": True, "import_error": None, "version": "0.10.2",
        "jaxlib_version": "0.10.2", "plugin": plugin,
        "default_backend": "gpu" if gpus else "cpu", "devices": ["gpu" if gpus else "cpu"],
        "gpus": [{"id": i, "device_kind": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                  "bytes_limit_mib": 61169.0} for i in range(gpus)],
        "init_error": None,
    }
    facts.update(changes)
    return facts


def torch_framework(gpus: int = 1, cuda: str | None = "12.6", **changes) -> dict:
    """torch's facts: 2.13.0 built with `cuda` (None: the CPU build)."""
    facts = {
        "name": "torch", "installed": True, "import_error": None,
        "version": f"2.13.0+cu{cuda.replace('.', '')}" if cuda else "2.13.0+cpu",
        "cuda_version": cuda, "hip_version": None, "available": bool(gpus),
        "arch_list": ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"] if gpus else [],
        "gpus": [{"index": i, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                  "mem_total_mib": 81079.0} for i in range(gpus)],
        "init_error": None,
    }
    facts.update(changes)
    return facts


FRAMEWORKS = {"tensorflow": tf_framework, "jax": jax_framework, "torch": torch_framework}


def nvml_gpu(index: int, uuid: str, total_mib: float = 81559.0, processes=(),
             used_mib: float | None = None) -> dict:
    procs = [{"pid": pid, "used_mib": mib} for pid, mib in processes]
    if used_mib is None:
        used_mib = 300.0 + sum(mib or 0 for _, mib in processes)
    return {"index": index, "uuid": uuid, "name": "NVIDIA H100 80GB HBM3",
            "mem_total_mib": total_mib, "mem_used_mib": used_mib, "processes": procs}


def healthy(*backends: str) -> dict:
    """The facts of a machine where everything works, for `backends` (default TensorFlow), the
    first deciding: a fresh copy each time, to edit."""
    backends = backends or ("tensorflow",)
    return copy.deepcopy({
        "doctor": {"mode": "injected", "pid": 1000, "backend": backends[0], "probe_s": 3.0},
        "keras": {"version": "3.15.1", "backend": backends[0], "backend_source": "KERAS_BACKEND"},
        "frameworks": {b: {**FRAMEWORKS[b](), "messages": [],
                           "probe": {"mode": "injected", "probe_s": 3.0, "error": None,
                                     "note": None}} for b in backends},
        "distributions": dict(INSTALLED, jax="0.10.2", jaxlib="0.10.2", torch="2.13.0+cu126",
                              **{"jax-cuda12-plugin": "0.10.2"}),
        "cuda_wheels": cuda_wheel_status(REQUIRED, INSTALLED),
        "nvml": {"available": True, "error": None, "driver_version": "570.86.15",
                 "cuda_driver_version": "12.8", "gpus": [nvml_gpu(0, UUID_0)]},
        "env": {name: None for name in ENV_VARS},
        "platform": {"system": "Linux", "release": "6.8.0-45-generic", "machine": "x86_64",
                     "python": "3.11.7", "executable": "/usr/bin/python3", "wsl": False,
                     "container": False},
    })


def set_framework(facts: dict, backend: str, framework: dict, stderr: str = "") -> dict:
    """Put `framework` (and the messages parsed from `stderr`) in `facts` for `backend`."""
    probe = facts["frameworks"].get(backend, {}).get("probe") or {
        "mode": "injected", "probe_s": 1.0, "error": None, "note": None}
    facts["frameworks"][backend] = {
        **framework, "probe": probe,
        "messages": READERS[backend].parse_messages(stderr, framework)}
    return facts


def without_driver(facts: dict) -> dict:
    facts["nvml"] = copy.deepcopy(NO_DRIVER_NVML)
    return facts


def h200(**kwargs) -> FakeNVML:
    """The machine the H200 recordings come from: driver 580.159.04, CUDA 13.0."""
    kwargs.setdefault("driver_version", "580.159.04")
    kwargs.setdefault("cuda_driver_version", 13000)
    gpu = FakeGPU(name="NVIDIA H200", uuid=H200_UUID, mem_total_mib=143771.0,
                  processes=kwargs.pop("processes", []))
    return FakeNVML([gpu], **kwargs)


def codes(findings: list[Cause]) -> list[str]:
    return [f.code for f in findings]


def only(findings: list[Cause], code: str) -> Cause:
    matching = [f for f in findings if f.code == code]
    assert len(matching) == 1, findings
    return matching[0]
