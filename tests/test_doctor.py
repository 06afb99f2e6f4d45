"""`gpu-watch doctor` as a whole: which backend it diagnoses and how it knew, the rules every
backend shares, one consistent answer (first line, findings, JSON and exit code), gathering from
FakeNVML, probes that fail, in-process reading, and the real command on this machine (no driver,
CPU builds of JAX and torch, a CUDA build of TensorFlow)."""

from __future__ import annotations

import copy
import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pynvml
import pytest
from doctor_facts import (
    NO_DRIVER_NVML,
    UUID_0,
    UUID_1,
    codes,
    h200,
    healthy,
    jax_framework,
    nvml_gpu,
    only,
    read_data,
    recorded,
    set_framework,
    tf_framework,
    torch_framework,
    without_driver,
)

import gpu_watch.doctor as doctor_module
from gpu_watch.doctor import (
    CONTENTION_SHARE_PCT,
    DoctorReport,
    ProbeResult,
    diagnose,
    doctor,
    resolve_visible_gpus,
    run_doctor_command,
)
from gpu_watch.doctor.backends import BackendChoice, backends_to_check, configured_backend
from gpu_watch.doctor.probe import run_probes
from gpu_watch.doctor.rules_common import (
    check_backend_not_installed,
    check_gpu_memory_contention,
    check_gpus_hidden,
    check_no_nvidia_driver,
)
from gpu_watch.judging.causes import CATALOGUE, ERROR, WARNING, Cause
from gpu_watch.sensing.nvml import NVML
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

ROOT = Path(__file__).resolve().parent.parent
NO_DRIVER_WITH_CUDART = read_data("tf-2.21-no-driver-with-cudart.stderr")


def probes(**frameworks) -> dict[str, ProbeResult]:
    return {b: ProbeResult(fw) for b, fw in frameworks.items()}


# -- which backend, and how the doctor knew ------------------------------------------------------


def test_keras_backend_comes_from_the_variable_then_keras_json_then_the_default(tmp_path):
    home = {"KERAS_HOME": str(tmp_path)}
    assert configured_backend({**home, "KERAS_BACKEND": "jax"}) == BackendChoice(
        "jax", "KERAS_BACKEND")
    assert configured_backend(home) == BackendChoice("tensorflow", "Keras' default")
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "torch"}))
    path = str(tmp_path / "keras.json")
    assert configured_backend(home) == BackendChoice("torch", path)
    assert configured_backend({**home, "KERAS_BACKEND": ""}) == BackendChoice("torch", path)
    (tmp_path / "keras.json").write_text("{not json")
    assert configured_backend(home).name == "tensorflow"


def test_the_running_keras_is_asked_first_in_process(monkeypatch):
    class Config:
        @staticmethod
        def backend():
            return "torch"

    monkeypatch.setitem(sys.modules, "keras", type(sys)("keras"))
    sys.modules["keras"].config = Config
    assert configured_backend({"KERAS_BACKEND": "jax"}, in_process=True) == BackendChoice(
        "torch", "the running Keras")
    assert configured_backend({"KERAS_BACKEND": "jax"}).name == "jax"


def test_backends_checked():
    jax = BackendChoice("jax", "KERAS_BACKEND")
    assert backends_to_check(None, jax) == ["jax"]
    assert backends_to_check("torch", jax) == ["torch"]
    assert backends_to_check("all", jax) == ["jax", "tensorflow", "torch"]  # all installed here
    with pytest.raises(ValueError, match=r"backend='pytorch'.*tensorflow, jax, torch, all"):
        backends_to_check("pytorch", jax)


def test_bad_arguments_fail_with_the_value_and_what_is_valid():
    with pytest.raises(ValueError, match=r"backend='mxnet'"):
        doctor(FakeNVML([]), backend="mxnet", environ={})
    with pytest.raises(ValueError, match=r"timeout_s=0 must be a positive"):
        doctor(FakeNVML([]), timeout_s=0, environ={})


def test_a_keras_backend_that_never_uses_a_gpu_is_said_to(tmp_path):
    report = doctor(FakeNVML([FakeGPU()]), environ={"KERAS_BACKEND": "numpy",
                                                    "KERAS_HOME": str(tmp_path)})
    found = only(report.findings, "cpu_only_build")
    assert found.message == "Keras' numpy backend (KERAS_BACKEND=numpy) runs on the CPU only."
    assert found.remedy.startswith("export KERAS_BACKEND=jax")
    assert report.exit_code == 1 and report.facts["frameworks"]["numpy"]["probe"]["mode"] == "none"


# -- the configured backend is not there ---------------------------------------------------------


def test_a_backend_that_is_not_installed_is_named_with_its_import_error():
    facts = healthy("tensorflow")
    set_framework(facts, "tensorflow", json.loads(
        read_data("h200-tensorflow-absent.stdout").split(" ", 1)[1]))
    facts["keras"]["backend_source"] = "Keras' default"
    found = only(check_backend_not_installed(facts), "backend_not_installed")
    assert found.message == ("Keras is set to use the tensorflow backend (Keras' default), but "
                             "TensorFlow is not installed: ModuleNotFoundError: No module named "
                             "'tensorflow'.")
    assert found.remedy == ('pip install "tensorflow[and-cuda]" && pip install '
                            '"gpu-watch[tensorflow]"  # or train with an installed backend: '
                            'export KERAS_BACKEND=jax')
    assert found.evidence["installed_backends"] == ["jax", "torch"]


@pytest.mark.parametrize(("backend", "gpu", "remedy"), [
    ("tensorflow", False, 'pip install "gpu-watch[tensorflow]"'),
    ("jax", False, 'pip install "gpu-watch[jax]"'),
    ("torch", False, 'pip install "gpu-watch[torch]"'),
    ("jax", True, 'pip install -U "jax[cuda12]" && pip install "gpu-watch[jax]"'),
    ("torch", True, "pip install torch --index-url https://download.pytorch.org/whl/cu128 && "
                    'pip install "gpu-watch[torch]"'),
])
def test_a_missing_backend_is_installed_with_its_extra(backend, gpu, remedy):
    """Without a GPU the extra alone; with one, the framework's CUDA build for this driver first
    (installed after the extra, torch from its own index would change nothing)."""
    facts = healthy(backend)
    facts["keras"]["backend"] = "numpy"  # asked for with --backend: no "or train with" advice
    if not gpu:
        facts["nvml"]["gpus"] = []
    set_framework(facts, backend, {"name": backend, "installed": False, "gpus": [],
                                   "import_error": f"ModuleNotFoundError: No module named "
                                                   f"'{backend}'"})
    found = only(check_backend_not_installed(facts), "backend_not_installed")
    assert found.remedy == remedy


@pytest.mark.parametrize(("backend", "remedy"), [
    ("jax", 'pip install --force-reinstall -U "jax[cuda12]"'),
    ("torch", "pip install --force-reinstall torch --index-url "
              "https://download.pytorch.org/whl/cu128"),
])
def test_a_backend_that_fails_to_import_is_reinstalled(backend, remedy):
    facts = healthy(backend)
    facts["keras"]["backend"] = "tensorflow"  # asked for with --backend, not configured
    set_framework(facts, backend, {"name": backend, "installed": False, "gpus": [],
                                   "import_error": "ImportError: libcudart.so.12: cannot open "
                                                   "shared object file"})
    found = only(check_backend_not_installed(facts), "backend_not_installed")
    assert found.message.startswith(f"{'JAX' if backend == 'jax' else 'torch'} fails to import")
    assert found.remedy == remedy


def test_the_h200_without_tensorflow_no_longer_contradicts_itself():
    """What was seen on a real H200: JAX and torch see the GPU, TensorFlow is not installed."""
    recordings = {"tensorflow": recorded("h200-tensorflow-absent"),
                  "jax": recorded("h200-jax-0.11.2"),
                  "torch": recorded("h200-torch-2.11.0-cu130")}
    report = doctor(h200(), probes=recordings, environ={})
    text = report.render_text()
    assert text.startswith("gpu-watch doctor: no usable GPU for TensorFlow (exit 1)")
    assert "nothing is wrong" not in text
    assert codes(report.findings) == ["backend_not_installed"]
    assert "  [ok] JAX 0.11.2: uses NVIDIA H200" in text
    assert "  [ok] torch 2.11.0+cu130: uses NVIDIA H200" in text
    assert "  [x]  TensorFlow: not installed (backend_not_installed)" in text
    data = report.to_dict()
    assert (data["gpu_usable"], data["exit_code"], data["backend"]) == (False, 1, "tensorflow")
    assert data["backends"]["jax"]["gpu_usable"] and data["backends"]["torch"]["gpu_usable"]
    # With KERAS_BACKEND=jax the same machine is fine: JSON, findings and exit code agree.
    jax = doctor(h200(), probes={"jax": recordings["jax"]}, environ={"KERAS_BACKEND": "jax"})
    data = jax.to_dict()
    assert (data["gpu_usable"], data["exit_code"], data["findings"]) == (True, 0, [])
    assert data["backends"]["jax"]["gpus"] == ["NVIDIA H200"]


# -- driver ------------------------------------------------------------------------------------


def no_driver_facts(error: str = NO_DRIVER_NVML["error"], **platform_changes) -> dict:
    facts = set_framework(healthy(), "tensorflow", tf_framework(gpus=0), NO_DRIVER_WITH_CUDART)
    without_driver(facts)["nvml"]["error"] = error
    facts["platform"].update(platform_changes)
    return facts


def test_no_driver_names_nvml_error_and_libcuda():
    found = only(check_no_nvidia_driver(no_driver_facts()), "no_nvidia_driver")
    assert found.severity == ERROR
    assert "NVMLError_LibraryNotFound" in found.message and "libcuda.so.1" in found.message
    assert found.evidence == {
        "nvml_error": "NVMLError_LibraryNotFound: NVML Shared Library Not Found",
        "tensorflow_driver_library": "libcuda.so.1"}
    assert "sudo ubuntu-drivers install" in found.remedy
    assert found.remedy.startswith("Install the NVIDIA driver")


def test_no_driver_quotes_torch_when_torch_says_so():
    facts = without_driver(set_framework(healthy("torch"), "torch", torch_framework(
        gpus=0, init_error="RuntimeError: Found no NVIDIA driver on your system. Please check "
                           "that you have an NVIDIA GPU and installed a driver from "
                           "http://www.nvidia.com/Download/index.aspx")))
    found = only(check_no_nvidia_driver(facts), "no_nvidia_driver")
    assert "torch says: RuntimeError: Found no NVIDIA driver on your system" in found.message


@pytest.mark.parametrize(("platform_changes", "remedy_part"), [
    ({"container": True}, "docker run --gpus all"),
    ({"wsl": True, "release": "5.15.153.1-microsoft-standard-WSL2"}, "/usr/lib/wsl/lib"),
    ({"system": "Windows"}, "https://www.nvidia.com/drivers"),
    ({"system": "Darwin"}, "macOS has no NVIDIA CUDA driver"),
])
def test_no_driver_remedy_fits_the_platform(platform_changes, remedy_part):
    found = only(check_no_nvidia_driver(no_driver_facts(**platform_changes)), "no_nvidia_driver")
    assert remedy_part in found.remedy


def test_driver_library_mismatch_asks_for_a_reboot():
    facts = no_driver_facts("NVMLError_LibRmVersionMismatch: RM has detected an NVML/RM "
                            "version mismatch.")
    found = only(check_no_nvidia_driver(facts), "no_nvidia_driver")
    assert found.remedy.startswith("sudo reboot")
    assert found.evidence["nvml_error"].startswith("NVMLError_LibRmVersionMismatch")


def test_nvml_permission_error_is_not_a_missing_driver_but_is_said():
    facts = no_driver_facts("NVMLError_NoPermission: Insufficient Permissions")
    facts["frameworks"]["tensorflow"]["messages"] = []
    assert check_no_nvidia_driver(facts) == [] and check_no_nvidia_driver(healthy()) == []
    found = diagnose(facts)
    assert codes(found) == ["cuda_init_failed", "nvml_unavailable"]  # TensorFlow sees none
    # A framework that sees the GPU trains on it: exit 0, but it is not "nothing is wrong".
    facts = healthy()
    facts["nvml"].update(available=False, error="NVMLError_NoPermission: Insufficient "
                         "Permissions", gpus=[])
    report = DoctorReport(facts, diagnose(facts))
    assert codes(report.findings) == ["nvml_unavailable"] and report.exit_code == 0
    assert "nothing is wrong" not in report.render_text()


# -- gpus_hidden -------------------------------------------------------------------------------


def two_gpus(**kwargs) -> FakeNVML:
    return FakeNVML([FakeGPU(uuid=UUID_0), FakeGPU(uuid=UUID_1)], **kwargs)


@pytest.mark.parametrize("value", ["", "-1", "5", "GPU-99"])
def test_cuda_visible_devices_hiding_every_gpu(value):
    report = doctor(two_gpus(), probes=probes(tensorflow=tf_framework(gpus=0)),
                    environ={"CUDA_VISIBLE_DEVICES": value})
    found = only(report.findings, "gpus_hidden")
    assert found.severity == ERROR
    assert f"CUDA_VISIBLE_DEVICES={value!r}" in found.message
    assert "NVML sees 2 (0: NVIDIA H100 80GB HBM3, 1: NVIDIA H100 80GB HBM3)" in found.message
    assert found.evidence["cuda_visible_devices"] == value
    assert [g["uuid"] for g in found.evidence["nvml_gpus"]] == [UUID_0, UUID_1]
    assert found.remedy.startswith("unset CUDA_VISIBLE_DEVICES")
    assert report.exit_code == 1 and "gpus_hidden" in report.status.codes


def test_an_invalid_entry_hides_itself_and_what_follows():
    report = doctor(two_gpus(), probes=probes(jax=jax_framework(gpus=1)),
                    environ={"CUDA_VISIBLE_DEVICES": "0,7,1"})
    found = only(report.findings, "gpus_hidden")
    assert found.severity == WARNING
    assert found.evidence["invalid_entry"] == "7"
    assert found.evidence["visible_nvml_indices"] == [0]
    assert found.remedy.startswith("export CUDA_VISIBLE_DEVICES=0,1")


@pytest.mark.parametrize("value", [None, "1", "0,1", "GPU-2222", "MIG-abcd"])
def test_valid_cuda_visible_devices_hide_nothing(value):
    environ = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    report = doctor(two_gpus(), probes=probes(tensorflow=tf_framework()), environ=environ)
    assert "gpus_hidden" not in codes(report.findings)


def test_hidden_needs_gpus_that_nvml_sees():
    facts = no_driver_facts()
    facts["env"]["CUDA_VISIBLE_DEVICES"] = "-1"
    assert check_gpus_hidden(facts) == []


def test_visible_gpus_follow_cuda_order_and_stop_at_the_first_bad_entry():
    gpus = [nvml_gpu(0, UUID_0), nvml_gpu(1, UUID_1)]
    visible, invalid = resolve_visible_gpus(gpus, "1,0")
    assert [g["index"] for g in visible] == [1, 0] and invalid is None
    visible, invalid = resolve_visible_gpus(gpus, "1,1")  # a repeat is invalid for CUDA
    assert [g["index"] for g in visible] == [1] and invalid == "1"


# -- memory held by other processes --------------------------------------------------------------


def contended(other_mib: float, **kwargs) -> DoctorReport:
    busy = FakeGPU(uuid=UUID_0, mem_total_mib=16384,
                   processes=[FakeProcess(pid=4242, used_mib=other_mib)])
    free = FakeGPU(uuid=UUID_1, mem_total_mib=16384)
    return doctor(FakeNVML([busy, free]), probes=probes(tensorflow=tf_framework(gpus=2)),
                  **kwargs)


def test_other_processes_holding_half_the_memory_is_contention():
    report = contended(16384 * CONTENTION_SHARE_PCT / 100, environ={})
    found = only(report.findings, "gpu_memory_contention")
    assert found.severity == WARNING
    assert "8192 of GPU 0's 16384 MiB (50.0 %): PID 4242 (8192 MiB)" in found.message
    assert found.evidence["processes"] == [{"pid": 4242, "used_mib": 8192.0}]
    assert found.evidence["share_pct"] == 50.0
    assert found.evidence["threshold_pct"] == CONTENTION_SHARE_PCT
    assert "kill 4242" in found.remedy
    assert f"export CUDA_VISIBLE_DEVICES={UUID_1}" in found.remedy  # the free GPU, by UUID
    assert report.gpu_usable  # a warning: the GPU can still be used


def test_just_under_the_contention_share_is_not_contention():
    report = contended(16384 * CONTENTION_SHARE_PCT / 100 - 1, environ={})
    assert "gpu_memory_contention" not in codes(report.findings)


def test_contention_on_a_hidden_gpu_does_not_matter():
    report = contended(15000, environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert "gpu_memory_contention" not in codes(report.findings)


def test_this_process_own_memory_is_not_contention():
    mine = FakeGPU(mem_total_mib=16384, processes=[FakeProcess(used_mib=15000)])  # pid: this one
    report = doctor(FakeNVML([mine]), probes=probes(tensorflow=tf_framework()), environ={})
    assert "gpu_memory_contention" not in codes(report.findings)


def test_without_per_process_memory_the_device_memory_counts():
    facts = healthy()
    facts["nvml"]["gpus"] = [nvml_gpu(0, UUID_0, total_mib=16384, processes=[(77, None)],
                                      used_mib=12000)]
    found = only(check_gpu_memory_contention(facts), "gpu_memory_contention")
    assert found.evidence["held_by_others_mib"] == 12000
    assert "PID 77 (n/a)" in found.message


# -- one truth per run -------------------------------------------------------------------------


def sampled_machines(count: int, seed: int = 0):
    """`count` machines drawn (with a fixed seed) from every combination of a framework record,
    its output, the driver, CUDA_VISIBLE_DEVICES, a failed probe and risky settings."""
    frameworks = [
        *(tf_framework(gpus=g, built_with_cuda=c) for g in (0, 1, 2) for c in (True, False)),
        *(jax_framework(gpus=g, plugin_cuda=p) for g in (0, 1) for p in (None, "12.8", "13.0")),
        *(torch_framework(gpus=g, cuda=c) for g in (0, 1) for c in (None, "12.6", "13.0")),
        *({"name": b, "installed": False, "gpus": [], "import_error": "No module named x"}
          for b in ("tensorflow", "jax", "torch")),
    ]
    outputs = ["", NO_DRIVER_WITH_CUDART, read_data("assembled-tf-2.21-gpu-too-old.stderr"),
               read_data("assembled-torch-driver-too-old.stderr"),
               read_data("h200-jax-0.11.2-cuda-visible-devices-empty.stderr")]
    settings = [{}, {"JAX_PLATFORMS": "cpu"}, {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.2"},
                {"XLA_PYTHON_CLIENT_ALLOCATOR": "x"}, {"TF_GPU_ALLOCATOR": "cuda_malloc"},
                {"TF_FORCE_GPU_ALLOW_GROWTH": "1", "JAX_PLATFORMS": "cpu,cuda"}]
    rng = random.Random(seed)
    for _ in range(count):
        yield (copy.deepcopy(rng.choice(frameworks)), rng.choice(outputs),
               rng.choice([None, "11.8", "12.4", "13.0"]), rng.choice([None, "", "0", "1"]),
               rng.random() < 0.2, rng.choice(settings))


def test_first_line_findings_json_and_exit_code_always_agree():
    for framework, stderr, driver, cuda_visible, probe_error, env in sampled_machines(300):
        backend = framework["name"]
        facts = set_framework(healthy(backend), backend, framework, stderr)
        if driver is None:
            without_driver(facts)
        else:
            facts["nvml"]["cuda_driver_version"] = driver
        facts["env"].update(env, CUDA_VISIBLE_DEVICES=cuda_visible)
        if probe_error:
            facts["frameworks"][backend]["probe"]["error"] = "the probe was killed by SIGKILL"
        report = DoctorReport(facts, diagnose(facts))
        data = json.loads(json.dumps(report.to_dict()))
        text = report.render_text()
        first = text.splitlines()[0]
        case = (framework, driver, cuda_visible, probe_error, env)
        assert data["gpu_usable"] is report.gpu_usable, case
        assert data["backends"][backend]["gpu_usable"] is report.gpu_usable, case
        assert data["exit_code"] == report.exit_code and first.endswith(
            f"(exit {report.exit_code})"), case
        assert ("can use the GPU" in first) is report.gpu_usable is (report.exit_code == 0), case
        assert ("nothing is wrong" in text) is (report.gpu_usable and not report.findings), case
        if report.exit_code == 1:  # "no usable GPU" never stands without an error saying why
            assert any(f.severity == ERROR and f.evidence.get("backend") in (None, backend)
                       for f in report.findings), case
        if report.exit_code == 2:
            assert first.startswith("gpu-watch doctor could not read"), case


def test_findings_are_ordered_errors_first_and_render_with_evidence_and_remedy():
    facts = no_driver_facts()
    facts["env"]["TF_FORCE_GPU_ALLOW_GROWTH"] = "1"
    report = DoctorReport(facts, diagnose(facts))
    assert [f.severity for f in report.findings] == [ERROR, WARNING]
    text = report.render_text()
    assert text.index("Facts") < text.index("Findings (2)")
    assert "[error] no_nvidia_driver:" in text
    assert "[warning] gpu_memory_limited (tensorflow):" in text
    assert "      tensorflow_driver_library: libcuda.so.1" in text
    assert "    remedy: export TF_FORCE_GPU_ALLOW_GROWTH=true" in text
    assert report.exit_code == 1 and not report.gpu_usable


def test_forced_cpu_placement_is_explained_but_never_claimed():
    text = DoctorReport(healthy(), []).render_text()
    assert "Not checked here: forced_cpu_placement" in text
    assert "with tf.device('/CPU:0')" in text and "GPUWatch()" in text
    # Nothing was found, so no remedy is given, and no other backend's way is named.
    assert CATALOGUE["forced_cpu_placement"].remedy not in text and "remedy:" not in text
    assert "jax.default_device" not in text
    assert "forced_cpu_placement" not in codes(diagnose(healthy()))
    jax = healthy("jax")
    jax_text = DoctorReport(jax, diagnose(jax)).render_text()
    assert "jax.default_device" in jax_text and "tf.device" not in jax_text


def test_the_backend_and_how_it_was_chosen_are_shown():
    facts = healthy("jax", "tensorflow")
    text = DoctorReport(facts, diagnose(facts)).render_text()
    assert "  Keras backend: jax (KERAS_BACKEND=jax); checked with --backend: jax, tensorflow" in (
        text)
    facts = healthy("torch")
    facts["keras"].update(backend="tensorflow", backend_source="/home/me/.keras/keras.json")
    text = DoctorReport(facts, diagnose(facts)).render_text()
    assert ("  Keras backend: tensorflow (from /home/me/.keras/keras.json); checked with "
            "--backend: torch; the exit code is torch's") in text


def test_report_dict_is_json_and_findings_read_back_as_causes():
    report = DoctorReport(no_driver_facts(), diagnose(no_driver_facts()))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["gpu_usable"] is False and data["exit_code"] == 1
    assert data["backends"]["tensorflow"]["codes"] == ["no_nvidia_driver"]
    assert [Cause.from_dict(f) for f in data["findings"]] == report.findings


# -- gathering ---------------------------------------------------------------------------------


def test_nvml_session_passed_in_stays_open_and_a_library_passed_in_is_closed():
    fake = FakeNVML([FakeGPU()])
    session = NVML(fake)
    doctor(session, probes=probes(tensorflow=tf_framework()), environ={})
    assert session.available and fake.calls[("nvmlShutdown", "MainThread")] == 0
    doctor(fake, probes=probes(tensorflow=tf_framework()), environ={})
    assert fake.calls[("nvmlShutdown", "MainThread")] == 1


def test_gathered_nvml_facts_have_memory_and_processes_in_mib():
    fake = FakeNVML([FakeGPU(uuid=UUID_0, mem_total_mib=24576,
                             processes=[FakeProcess(pid=31, used_mib=1024.0)])],
                    driver_version="555.42.02", cuda_driver_version=12050)
    nvml = doctor(fake, probes=probes(tensorflow=tf_framework()), environ={}).facts["nvml"]
    assert (nvml["driver_version"], nvml["cuda_driver_version"]) == ("555.42.02", "12.5")
    assert nvml["gpus"] == [{"index": 0, "uuid": UUID_0, "name": "NVIDIA H100 80GB HBM3",
                             "mem_total_mib": 24576.0, "mem_used_mib": 1324.0,
                             "processes": [{"pid": 31, "used_mib": 1024.0}]}]


def test_nvml_init_errors_from_the_fake_reach_the_finding():
    report = doctor(FakeNVML([FakeGPU()], init_error=pynvml.NVMLError_DriverNotLoaded),
                    probes={"tensorflow": ProbeResult(tf_framework(gpus=0),
                                                      read_data("tf-2.21-no-driver.stderr"))},
                    environ={})
    found = only(report.findings, "no_nvidia_driver")
    assert found.evidence["nvml_error"].startswith("NVMLError_DriverNotLoaded")
    assert found.evidence["tensorflow_driver_library"] == "libcuda.so.1"
    assert report.exit_code == 1


# -- probes that fail: exit code 2, with what could still be read --------------------------------


def fake_framework(tmp_path: Path, source: str, name: str = "tensorflow") -> dict[str, str]:
    """An environment whose `import <name>` runs `source` instead of the framework."""
    package = tmp_path / name
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text(source)
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def test_probe_that_hangs_times_out_and_exits_2(tmp_path):
    environ = fake_framework(tmp_path, "import time\ntime.sleep(60)\n")
    start = time.perf_counter()
    report = doctor(backend="tensorflow", environ=environ, timeout_s=1.0)
    assert time.perf_counter() - start < 10
    probe = report.facts["frameworks"]["tensorflow"]["probe"]
    assert "did not finish within 1 s" in probe["error"]
    assert report.exit_code == 2
    assert "no_nvidia_driver" in codes(report.findings)  # NVML was still read
    text = report.render_text()
    assert text.startswith("gpu-watch doctor could not read TensorFlow: the TensorFlow probe did "
                           "not finish within 1 s")
    assert "nothing is wrong" not in text


def test_probe_that_crashes_names_the_signal_and_exits_2(tmp_path):
    report = doctor(backend="jax", environ=fake_framework(tmp_path, "import os\nos.abort()\n",
                                                          "jax"))
    assert report.facts["frameworks"]["jax"]["probe"]["error"] == (
        "the JAX probe was killed by SIGABRT")
    assert report.exit_code == 2 and report.status.state == "not_read"


def test_probe_that_raises_names_the_error(tmp_path):
    environ = fake_framework(tmp_path, "raise RuntimeError('CUDA_ERROR_SYSTEM_DRIVER_MISMATCH')",
                             "torch")
    error = doctor(backend="torch", environ=environ).facts["frameworks"]["torch"]["probe"][
        "error"]
    assert error == ("the torch probe exited with status 1: RuntimeError: "
                     "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH")


def test_probes_run_side_by_side(tmp_path):
    source = "import time\ntime.sleep(1.5)\nraise ImportError('slow and absent')\n"
    fake_framework(tmp_path, source, "torch")
    environ = fake_framework(tmp_path, source, "jax")
    start = time.perf_counter()
    found = run_probes(["jax", "torch"], 20.0, environ)
    elapsed_s = time.perf_counter() - start
    assert [found[b].framework["import_error"] for b in ("jax", "torch")] == [
        "ImportError: slow and absent"] * 2
    assert elapsed_s < 2.9, elapsed_s  # one after the other would take over 3 s


# -- in process (GPUWatch, during training) ------------------------------------------------------


def test_in_process_reads_the_live_tensorflow_fast():
    import tensorflow as tf

    start = time.perf_counter()
    report = doctor(FakeNVML([FakeGPU()]), in_process=True,
                    environ={"KERAS_BACKEND": "tensorflow"})
    assert time.perf_counter() - start < 1.0
    fw = report.facts["frameworks"]["tensorflow"]
    assert fw["probe"]["mode"] == "in_process" == report.facts["doctor"]["mode"]
    assert fw["version"] == tf.__version__
    assert fw["build_info"] == dict(tf.sysconfig.get_build_info())
    assert fw["logical_gpus"] == [] and fw["memory"] == []
    assert fw["messages"] == []


def test_in_process_reads_jax_and_torch_and_never_imports_tensorflow():
    code = """if True:
        import sys, time
        import jax, torch
        from gpu_watch.doctor import doctor
        from gpu_watch.testing import FakeNVML, FakeGPU
        start = time.perf_counter()
        report = doctor(FakeNVML([FakeGPU()]), backend="all", in_process=True,
                        environ={"KERAS_BACKEND": "jax"})
        assert time.perf_counter() - start < 1.0, time.perf_counter() - start
        assert 'tensorflow' not in sys.modules, 'imported tensorflow'
        states = {b: s.state for b, s in report.statuses.items()}
        assert states == {"jax": "no_gpu", "tensorflow": "not_read", "torch": "no_gpu"}, states
        assert report.facts["frameworks"]["jax"]["default_backend"] == "cpu"
        assert [(f.code, f.evidence.get("backend")) for f in report.findings] == [
            ("cpu_only_build", "jax"), ("cpu_only_build", "torch")], report.findings
        assert "TensorFlow is not imported in this process" in report.render_text()
        assert report.exit_code == 1
    """
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_importing_the_doctor_imports_no_framework():
    code = ("import sys, gpu_watch.doctor; "
            "assert not {'tensorflow', 'jax', 'torch', 'keras'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- the real command on this machine ------------------------------------------------------------


def cli(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    environ.update(KERAS_HOME=str(tmp_path), **env)  # an empty Keras home: no keras.json
    return subprocess.run([sys.executable, "-m", "gpu_watch", "doctor", *args], env=environ,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def all_backends(tmp_path_factory) -> dict:
    """`gpu-watch doctor --backend all --json` here, once for the module."""
    done = cli("--backend", "all", "--json", tmp_path=tmp_path_factory.mktemp("keras"))
    assert done.returncode == 1, done.stderr
    return json.loads(done.stdout)


def test_real_jax_names_the_missing_driver_and_the_cpu_only_jaxlib(tmp_path):
    done = cli(tmp_path=tmp_path, KERAS_BACKEND="jax")
    assert done.returncode == 1, done.stderr
    text = done.stdout
    assert text.startswith("gpu-watch doctor: no usable GPU for JAX (exit 1)\n"
                           "  Keras backend: jax (KERAS_BACKEND=jax)\n")
    assert "[error] no_nvidia_driver: No NVIDIA driver is loaded" in text
    assert "[error] cpu_only_build (jax): JAX " in text and "no CUDA plugin" in text
    assert 'remedy: pip install -U "jax[cuda12]==' in text
    assert "nothing is wrong" not in text


def test_real_torch_names_the_missing_driver_and_the_cpu_build(tmp_path):
    import torch

    done = cli("--json", tmp_path=tmp_path, KERAS_BACKEND="torch")
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    assert (data["gpu_usable"], data["exit_code"], data["backend"]) == (False, 1, "torch")
    assert [(f["code"], f["evidence"].get("backend")) for f in data["findings"]] == [
        ("no_nvidia_driver", None), ("cpu_only_build", "torch")]
    assert data["facts"]["frameworks"]["torch"]["version"] == torch.__version__
    assert data["facts"]["keras"]["backend_source"] == "KERAS_BACKEND"


def test_real_tensorflow_that_cannot_be_imported(tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    environ = fake_framework(shadow, "raise ImportError(\"No module named 'tensorflow'\")")
    done = cli("--json", tmp_path=tmp_path, PYTHONPATH=environ["PYTHONPATH"])
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    found = [f for f in data["findings"] if f["code"] == "backend_not_installed"]
    assert found and found[0]["evidence"]["import_error"] == (
        "ImportError: No module named 'tensorflow'")
    assert "TensorFlow is not installed" in found[0]["message"]
    assert data["backends"]["tensorflow"]["state"] == "not_installed"
    assert data["facts"]["keras"]["backend_source"] == "Keras' default"


def test_real_all_backends_one_verdict_each_and_each_probe_imports_only_its_own(all_backends):
    import tensorflow as tf

    data = all_backends
    assert list(data["backends"]) == ["tensorflow", "jax", "torch"]
    # Each line names every cause between its framework and the GPU, in the order to fix them:
    # TensorFlow's CUDA libraries too, missing on this machine (its CPU build is JAX's and
    # torch's second cause).
    assert {b: s["codes"] for b, s in data["backends"].items()} == {
        "tensorflow": ["no_nvidia_driver", "cuda_libs_missing"],
        "jax": ["no_nvidia_driver", "cpu_only_build"],
        "torch": ["no_nvidia_driver", "cpu_only_build"]}
    frameworks = data["facts"]["frameworks"]
    for backend in ("jax", "torch"):
        assert frameworks[backend]["imported"] == [backend]  # no other framework, nor Keras
    # TensorFlow 2.21 itself imports Keras, and JAX when it is installed (for tf.lite).
    assert "torch" not in frameworks["tensorflow"]["imported"]
    assert all(fw["probe"]["mode"] == "child" for fw in frameworks.values())
    tf_facts = data["facts"]["frameworks"]["tensorflow"]
    assert tf_facts["version"] == tf.__version__
    assert tf_facts["build_info"] == json.loads(json.dumps(dict(tf.sysconfig.get_build_info())))
    assert tf_facts["built_with_cuda"] is tf.test.is_built_with_cuda() and tf_facts["gpus"] == []
    assert data["facts"]["nvml"]["error"].startswith("NVMLError_LibraryNotFound")
    (driver,) = [f for f in data["findings"] if f["code"] == "no_nvidia_driver"]
    assert driver["evidence"]["tensorflow_driver_library"] == "libcuda.so.1"  # from its stderr


def test_cli_text_shows_one_line_per_backend(monkeypatch, all_backends):
    report = DoctorReport(all_backends["facts"],
                          [Cause.from_dict(f) for f in all_backends["findings"]])
    monkeypatch.setattr(doctor_module, "doctor", lambda backend, timeout_s: report)
    out = io.StringIO()
    assert run_doctor_command(as_json=False, timeout_s=5.0, out=out, backend="all") == 1
    lines = out.getvalue().splitlines()
    assert lines[0] == "gpu-watch doctor: no usable GPU for TensorFlow (exit 1)"
    assert lines[2].startswith("  [x]  TensorFlow 2.")
    assert lines[3].startswith("  [x]  JAX ") and "(no_nvidia_driver, cpu_only_build)" in lines[3]
    assert lines[4].startswith("  [x]  torch ")
    assert "NVML          unavailable: NVMLError_LibraryNotFound" in out.getvalue()


def test_cli_exits_2_when_the_probe_times_out(monkeypatch, tmp_path):
    for name, value in fake_framework(tmp_path, "import time\ntime.sleep(60)\n").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    out = io.StringIO()
    assert run_doctor_command(as_json=True, timeout_s=0.5, out=out) == 2
    data = json.loads(out.getvalue())
    assert data["exit_code"] == 2 and data["gpu_usable"] is False
    assert "did not finish within 0.5 s" in data["backends"]["tensorflow"]["reason"]


def test_cli_exits_2_when_the_doctor_itself_fails(monkeypatch):
    def broken(backend, timeout_s):
        raise OSError("no such file")

    monkeypatch.setattr(doctor_module, "doctor", broken)
    out = io.StringIO()
    assert run_doctor_command(as_json=True, timeout_s=5.0, out=out) == 2
    assert json.loads(out.getvalue()) == {"gpu_usable": False, "exit_code": 2,
                                          "error": "OSError: no such file"}
    out = io.StringIO()
    assert run_doctor_command(as_json=False, timeout_s=5.0, out=out) == 2
    assert out.getvalue() == "gpu-watch doctor could not run: OSError: no such file (exit 2)\n"


def test_cli_rejects_a_timeout_that_is_not_positive(capsys):
    from gpu_watch.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["doctor", "--timeout", "0"])
    assert exited.value.code == 2
    assert "'0' is not a positive number of seconds" in capsys.readouterr().err


def test_cli_offers_the_backends_the_doctor_knows():
    from gpu_watch.cli import build_parser
    from gpu_watch.doctor import CHOICES

    commands = next(a for a in build_parser()._actions if a.dest == "command")
    backend = next(a for a in commands.choices["doctor"]._actions if a.dest == "backend")
    assert tuple(backend.choices) == CHOICES
