"""The doctor on TensorFlow: its start-up messages (captured and assembled output) and each of
its rules, from injected facts."""

from __future__ import annotations

import pytest
from doctor_facts import (
    INSTALLED,
    REQUIRED,
    UUID_0,
    codes,
    healthy,
    only,
    read_data,
    set_framework,
    tf_framework,
    without_driver,
)

from gpu_watch.doctor import MEMORY_LIMIT_SHARE_PCT, DoctorReport, ProbeResult, diagnose, doctor
from gpu_watch.doctor.facts_system import and_cuda_requirements, cuda_wheel_status
from gpu_watch.doctor.facts_tensorflow import parse_messages
from gpu_watch.doctor.rules_tensorflow import (
    check_cpu_only_build,
    check_cuda_libs_missing,
    check_driver_too_old,
    check_gpu_allocator,
    check_gpu_memory_limited,
    check_gpu_not_supported,
    check_mixed_tensorflow_install,
    check_native_windows,
    check_visible_devices_in_process,
)
from gpu_watch.judging.causes import ERROR, WARNING
from gpu_watch.testing import FakeGPU, FakeNVML

NO_DRIVER = read_data("tf-2.21-no-driver.stderr")
NO_DRIVER_WITH_CUDART = read_data("tf-2.21-no-driver-with-cudart.stderr")
CUDNN_MISSING = read_data("assembled-tf-2.21-cudnn-missing.stderr")
GPU_TOO_OLD = read_data("assembled-tf-2.21-gpu-too-old.stderr")


def tf_facts(stderr: str = "", **changes) -> dict:
    """Healthy TensorFlow facts with `changes` to its framework record and `stderr` parsed."""
    return set_framework(healthy(), "tensorflow", tf_framework(**changes), stderr)


# -- TensorFlow's messages ---------------------------------------------------------------------


def test_real_no_driver_output_names_cudart_and_libcuda_once_each():
    messages = parse_messages(NO_DRIVER)
    # TensorFlow prints the cudart line twice (two modules load the stub): reported once.
    assert [m["kind"] for m in messages] == ["cudart_missing", "driver_dlopen_failed",
                                             "cuinit_failed"]
    assert messages[1]["library"] == "libcuda.so.1"
    assert messages[1]["error"].startswith("libcuda.so.1: cannot open shared object file")
    assert messages[2]["error"].endswith("UNKNOWN ERROR (303)")
    assert messages[0]["text"] == ("Could not find cuda drivers on your machine, GPU will not "
                                   "be used.")


def test_cudart_line_disappears_once_libcudart_loads():
    kinds = [m["kind"] for m in parse_messages(NO_DRIVER_WITH_CUDART)]
    assert kinds == ["driver_dlopen_failed", "cuinit_failed"]


def test_missing_cuda_library_and_skip_message_are_read():
    messages = parse_messages(CUDNN_MISSING)
    assert [(m["kind"], m.get("library")) for m in messages] == [
        ("dlopen_failed", "libcudnn.so.9"), ("cannot_dlopen_gpu_libraries", None)]


def test_gpu_too_old_message_gives_device_capability_and_minimum():
    (message,) = parse_messages(GPU_TOO_OLD)
    assert message["kind"] == "gpu_ignored"
    assert (message["capability"], message["minimum"]) == ("3.7", "6.0")
    assert message["device"].startswith("device: 0, name: Tesla K80")


def test_older_log_format_and_other_messages():
    stderr = "\n".join([
        "2020-08-24 11:08:28.568646: W tensorflow/stream_executor/platform/default/"
        "dso_loader.cc:59] Could not load dynamic library 'libcudart.so.11.0'; dlerror: "
        "libcudart.so.11.0: cannot open shared object file: No such file or directory",
        "E0000 00:00:1.0 12 cuda_diagnostics.cc:1] kernel driver does not appear to be running "
        "on this host (gpu1): /proc/driver/nvidia/version does not exist",
    ])
    messages = parse_messages(stderr)
    assert [m["kind"] for m in messages] == ["dlopen_failed", "kernel_driver_not_running"]
    assert messages[0]["library"] == "libcudart.so.11.0"


# -- install: cpu_only_build -------------------------------------------------------------------


def test_healthy_machine_has_no_findings_and_a_usable_gpu():
    facts = healthy()
    report = DoctorReport(facts, diagnose(facts))
    assert report.findings == []
    assert report.gpu_usable and report.exit_code == 0
    assert "nothing is wrong" in report.render_text()


def test_tensorflow_cpu_wheel_is_a_cpu_only_build():
    facts = tf_facts(gpus=0, built_with_cuda=False, build_info={"is_cuda_build": False})
    facts["distributions"] = {"tensorflow-cpu": "2.21.0"}
    found = only(check_cpu_only_build(facts), "cpu_only_build")
    assert found.severity == ERROR
    assert "2.21.0" in found.message and "tensorflow-cpu" in found.message
    assert found.evidence["built_with_cuda"] is False
    assert found.evidence["distributions"] == {"tensorflow-cpu": "2.21.0"}
    assert found.remedy == ('pip uninstall -y tensorflow-cpu && '
                            'pip install "tensorflow[and-cuda]==2.21.0"')


def test_cpu_build_of_the_tensorflow_package_is_reinstalled_with_cuda():
    found = only(check_cpu_only_build(tf_facts(gpus=0, built_with_cuda=False)),
                 "cpu_only_build")
    assert found.remedy == 'pip install --force-reinstall "tensorflow[and-cuda]==2.21.0"'


def test_tensorflow_cpu_alone_is_enough_when_the_probe_failed():
    facts = healthy()
    facts["frameworks"]["tensorflow"] = {"name": "tensorflow", "messages": []}
    facts["distributions"] = {"tensorflow-cpu": "2.20.0"}
    assert "2.20.0" in only(check_cpu_only_build(facts), "cpu_only_build").message


def test_cuda_build_is_not_cpu_only():
    assert check_cpu_only_build(healthy()) == []


def test_both_tensorflow_and_tensorflow_cpu_installed_is_a_warning():
    facts = healthy()
    facts["distributions"]["tensorflow-cpu"] = "2.21.0"
    found = only(check_mixed_tensorflow_install(facts), "cpu_only_build")
    assert found.severity == WARNING
    assert found.evidence["distributions"] == {"tensorflow": "2.21.0", "tensorflow-cpu": "2.21.0"}
    assert found.remedy == ('pip uninstall -y tensorflow tensorflow-cpu && '
                            'pip install "tensorflow[and-cuda]==2.21.0"')
    assert check_mixed_tensorflow_install(healthy()) == []


def test_both_installed_with_a_cpu_build_is_one_error_naming_both():
    facts = tf_facts(gpus=0, built_with_cuda=False)
    facts["distributions"]["tensorflow-cpu"] = "2.21.0"
    found = only(diagnose(facts), "cpu_only_build")
    assert found.severity == ERROR
    assert found.remedy.startswith("pip uninstall -y tensorflow tensorflow-cpu && ")


def test_native_windows_after_2_10_needs_wsl2():
    facts = tf_facts(gpus=0, built_with_cuda=False)
    facts["platform"].update(system="Windows", release="10")
    found = only(diagnose(facts), "cpu_only_build")  # one finding, the Windows one
    assert "native Windows" in found.message and "2.10" in found.message
    assert found.remedy.startswith('wsl --install  # then, inside WSL2: '
                                   'pip install "tensorflow[and-cuda]==2.21.0"')
    assert found.evidence == {"backend": "tensorflow", "windows_release": "10",
                              "tensorflow_version": "2.21.0"}


def test_native_windows_with_tensorflow_2_10_is_fine():
    facts = tf_facts(version="2.10.1")
    facts["platform"].update(system="Windows", release="10")
    assert check_native_windows(facts) == [] and check_cpu_only_build(facts) == []


# -- install: cuda_libs_missing ----------------------------------------------------------------


def test_missing_cudnn_wheel_with_a_driver_is_an_error_naming_library_and_wheel():
    facts = tf_facts(CUDNN_MISSING, gpus=0)
    del facts["distributions"]["nvidia-cudnn-cu12"]
    facts["cuda_wheels"] = cuda_wheel_status(REQUIRED, facts["distributions"])
    found = only(check_cuda_libs_missing(facts), "cuda_libs_missing")
    assert found.severity == ERROR
    assert "libcudnn.so.9" in found.message and "nvidia-cudnn-cu12" in found.message
    assert "CUDA 12.5.1 and cuDNN 9" in found.message
    assert found.evidence["missing_wheels"] == ["nvidia-cudnn-cu12"]
    assert found.evidence["unloadable_libraries"] == ["libcudnn.so.9"]
    assert found.remedy == 'pip install "tensorflow[and-cuda]==2.21.0"'


def test_installed_wheel_whose_library_does_not_load_points_at_the_loader_path():
    facts = tf_facts(CUDNN_MISSING, gpus=0)
    facts["env"]["LD_LIBRARY_PATH"] = "/usr/local/cuda-11.8/lib64"
    found = only(check_cuda_libs_missing(facts), "cuda_libs_missing")
    assert "nvidia-cudnn-cu12 is installed" in found.message
    assert found.remedy == ('pip install --force-reinstall "tensorflow[and-cuda]==2.21.0"  # and '
                            'check LD_LIBRARY_PATH=/usr/local/cuda-11.8/lib64: it may load '
                            'another CUDA')


def test_wheel_at_the_wrong_version_is_named_with_the_range_it_needs():
    installed = dict(INSTALLED, **{"nvidia-cudnn-cu12": "8.9.7.29"})
    status = cuda_wheel_status(REQUIRED, installed)
    assert status["missing"] == []
    assert status["wrong_version"] == [{"name": "nvidia-cudnn-cu12", "installed": "8.9.7.29",
                                        "required": "<10.0,>=9.3.0.75"}]
    facts = tf_facts(gpus=0)
    facts["cuda_wheels"] = status
    found = only(check_cuda_libs_missing(facts), "cuda_libs_missing")
    assert "nvidia-cudnn-cu12 8.9.7.29 (needs <10.0,>=9.3.0.75)" in found.message
    assert found.remedy == 'pip install "tensorflow[and-cuda]==2.21.0"'


def test_no_cuda_libs_finding_when_tensorflow_sees_the_gpu_or_nothing_points_at_libraries():
    facts = healthy()
    facts["cuda_wheels"] = cuda_wheel_status(REQUIRED, {})  # system CUDA instead of wheels
    assert check_cuda_libs_missing(facts) == []  # TensorFlow sees the GPU: libraries load
    assert check_cuda_libs_missing(tf_facts(gpus=0)) == []  # wheels complete, no messages


def test_without_a_driver_missing_libraries_are_the_next_step_not_the_cause():
    facts = without_driver(tf_facts(NO_DRIVER, gpus=0))
    facts["cuda_wheels"] = cuda_wheel_status(REQUIRED, {})
    found = only(check_cuda_libs_missing(facts), "cuda_libs_missing")
    assert found.severity == WARNING
    assert found.message.startswith("Even once a driver is installed")
    # "Could not find cuda drivers" is cudart_stub failing to load the CUDA runtime.
    assert found.evidence["unloadable_libraries"] == ["libcudart (the CUDA runtime)"]
    assert found.evidence["tensorflow_messages"] == [
        "Could not find cuda drivers on your machine, GPU will not be used."]
    assert found.remedy.startswith('pip install "tensorflow[and-cuda]==2.21.0"')


def test_the_status_line_names_the_missing_libraries_after_the_driver():
    # As the JAX line names its CPU-only build: every cause between TensorFlow and the GPU,
    # in the order to fix them, although the libraries only block it once a driver is there.
    facts = without_driver(tf_facts(NO_DRIVER, gpus=0))
    facts["cuda_wheels"] = cuda_wheel_status(REQUIRED, {})
    report = DoctorReport(facts, diagnose(facts))
    line = report.statuses["tensorflow"].line()
    assert line.endswith("no usable GPU (no_nvidia_driver, cuda_libs_missing)"), line
    assert report.exit_code == 1


def test_and_cuda_requirements_come_from_the_installed_tensorflow():
    required = and_cuda_requirements()
    assert "nvidia-cudnn-cu12" in required and "nvidia-cuda-runtime-cu12" in required
    assert all(name.startswith("nvidia-") for name in required)
    assert all(spec.strip() for spec in required.values())


# -- driver_too_old ----------------------------------------------------------------------------


@pytest.mark.parametrize(("driver_cuda", "severity"), [
    (12040, WARNING),  # 12.4 < 12.5: minor-version compatibility, PTX may still fail
    (11080, ERROR),  # 11.8 < 12.5: another major version
    (12050, None),  # 12.5 == 12.5(.1): fine
    (12060, None),  # newer: fine
])
def test_driver_too_old_compares_driver_cuda_with_the_build(driver_cuda, severity):
    fake = FakeNVML([FakeGPU(uuid=UUID_0)], driver_version="550.54.15",
                    cuda_driver_version=driver_cuda)
    report = doctor(fake, probes={"tensorflow": ProbeResult(tf_framework(), "")}, environ={})
    found = [f for f in report.findings if f.code == "driver_too_old"]
    if severity is None:
        assert found == []
        return
    (found,) = found
    driver = f"{driver_cuda // 1000}.{driver_cuda % 1000 // 10}"
    assert found.severity == severity
    assert f"550.54.15 (CUDA {driver})" in found.message and "CUDA 12.5.1" in found.message
    assert found.evidence["driver_cuda_version"] == driver
    assert found.evidence["build_cuda_version"] == "12.5.1"
    assert 'nvidia-smi` shows "CUDA Version: 12.5" or higher' in found.remedy
    assert report.exit_code == (1 if severity == ERROR else 0)


def test_driver_too_old_from_tensorflow_message_when_nvml_has_no_version():
    facts = tf_facts("W0000 00:00:1.0 7 cuda_diagnostics.cc:1] Possibly insufficient driver "
                     "version: 450.80.2")
    facts["nvml"]["cuda_driver_version"] = None
    found = only(check_driver_too_old(facts), "driver_too_old")
    assert found.severity == ERROR
    assert found.evidence["messages"] == ["Possibly insufficient driver version: 450.80.2"]


# -- gpu_not_supported -------------------------------------------------------------------------


def test_a_gpu_too_old_for_the_build_is_named_with_its_capability_and_the_minimum():
    facts = tf_facts(GPU_TOO_OLD, gpus=0)
    found = only(check_gpu_not_supported(facts), "gpu_not_supported")
    assert found.severity == ERROR
    assert "GPU 0 (Tesla K80) (compute capability 3.7)" in found.message
    assert "needs compute capability 6.0 or higher" in found.message
    assert found.evidence["ignored"] == [{"device": found.evidence["ignored"][0]["device"],
                                          "compute_capability": "3.7"}]
    assert found.evidence["minimum_compute_capability"] == "6.0"
    report = DoctorReport(facts, diagnose(facts))
    assert report.exit_code == 1 and report.status.codes == ["gpu_not_supported"]


def test_an_old_gpu_beside_a_supported_one_is_a_warning():
    found = only(check_gpu_not_supported(tf_facts(GPU_TOO_OLD, gpus=1)), "gpu_not_supported")
    assert found.severity == WARNING and "still uses the other 1 GPU" in found.message
    assert check_gpu_not_supported(tf_facts(NO_DRIVER)) == []


# -- gpus_hidden in the live process -----------------------------------------------------------


def test_set_visible_devices_in_the_live_process_hides_the_gpu():
    facts = tf_facts(logical_gpus=[])
    found = only(check_visible_devices_in_process(facts), "gpus_hidden")
    assert "set_visible_devices" in found.message
    assert found.evidence["physical_gpus"] == ["/physical_device:GPU:0"]
    assert check_visible_devices_in_process(tf_facts(logical_gpus=["/device:GPU:0"])) == []


# -- resources ---------------------------------------------------------------------------------


def live_memory(limit_mib: float | None) -> dict:
    return tf_facts(logical_gpus=["/device:GPU:0"], memory=[{
        "gpu": "/physical_device:GPU:0", "memory_limit_mib": limit_mib, "virtual_devices": 1,
        "memory_growth": False}])


def test_memory_limit_far_below_the_gpu_memory():
    found = only(check_gpu_memory_limited(live_memory(4096)), "gpu_memory_limited")
    assert found.severity == WARNING
    assert "only 4096 MiB of GPU 0 (NVIDIA H100 80GB HBM3, 81559 MiB, 5.0 %)" in found.message
    assert found.evidence["memory_limit_mib"] == 4096
    assert found.evidence["mem_total_mib"] == 81559
    assert found.evidence["threshold_pct"] == MEMORY_LIMIT_SHARE_PCT
    assert "tf.config.experimental.set_memory_growth(gpus[0], True)" in found.remedy
    assert "LogicalDeviceConfiguration(memory_limit=4096)" in found.remedy


def test_memory_limit_at_half_the_gpu_or_none_is_fine():
    half = 81559 * MEMORY_LIMIT_SHARE_PCT / 100
    assert check_gpu_memory_limited(live_memory(half)) == []
    assert check_gpu_memory_limited(live_memory(None)) == []
    assert len(check_gpu_memory_limited(live_memory(half - 1))) == 1


@pytest.mark.parametrize(("value", "flagged"), [("1", True), ("True", True), ("yes", True),
                                                ("true", False), ("false", False)])
def test_allow_growth_accepts_only_true_or_false(value, flagged):
    report = doctor(FakeNVML([FakeGPU()]), probes={"tensorflow": ProbeResult(tf_framework())},
                    environ={"TF_FORCE_GPU_ALLOW_GROWTH": value})
    found = [f for f in report.findings if f.code == "gpu_memory_limited"]
    assert bool(found) is flagged
    if flagged:
        assert found[0].evidence == {"backend": "tensorflow", "tf_force_gpu_allow_growth": value}
        assert found[0].remedy == "export TF_FORCE_GPU_ALLOW_GROWTH=true"


@pytest.mark.parametrize(("value", "says"), [
    ("cuda_malloc", "debugging allocator"),
    ("memory_guard", "padded and checked"),
    ("cuda_malloc_asyn", "is ignored"),  # a typo: TensorFlow keeps its default silently
    ("cuda_malloc_async", None),
    (None, None),
])
def test_tf_gpu_allocator(value, says):
    facts = healthy()
    facts["env"]["TF_GPU_ALLOCATOR"] = value
    found = check_gpu_allocator(facts)
    if says is None:
        assert found == []
        return
    (found,) = found
    assert found.code == "allocator_misconfigured" and found.severity == WARNING
    assert says in found.message and f"TF_GPU_ALLOCATOR={value!r}" in found.message
    assert found.remedy == "unset TF_GPU_ALLOCATOR  # or export TF_GPU_ALLOCATOR=cuda_malloc_async"
    assert DoctorReport(facts, diagnose(facts)).exit_code == 0  # slow or ignored, not fatal


def test_tensorflow_rules_stay_out_of_another_backends_diagnosis():
    facts = healthy("jax")
    facts["env"]["TF_GPU_ALLOCATOR"] = "cuda_malloc"
    facts["env"]["TF_FORCE_GPU_ALLOW_GROWTH"] = "1"
    facts["distributions"]["tensorflow-cpu"] = "2.21.0"
    assert diagnose(facts) == []
    facts["frameworks"]["tensorflow"] = healthy()["frameworks"]["tensorflow"]
    assert codes(diagnose(facts)) == ["cpu_only_build", "gpu_memory_limited",
                                      "allocator_misconfigured"]
