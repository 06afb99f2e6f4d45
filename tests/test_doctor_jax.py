"""The doctor on JAX: what JAX printed on a real H200 (recorded), replayed through the rules, and
each JAX rule from injected facts."""

from __future__ import annotations

import pytest
from doctor_facts import (
    codes,
    h200,
    healthy,
    jax_framework,
    nvml_gpu,
    only,
    read_data,
    recorded,
    set_framework,
)

from gpu_watch.doctor import MEMORY_LIMIT_SHARE_PCT, DoctorReport, diagnose, doctor
from gpu_watch.doctor.facts_jax import parse_messages
from gpu_watch.doctor.rules_jax import (
    check_cpu_only_jaxlib,
    check_cuda_backend_failed,
    check_driver_too_old,
    check_jax_platforms,
    check_memory_settings,
    plugin_cuda_version,
)
from gpu_watch.judging.causes import ERROR, WARNING
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

JAX_ENV = {"KERAS_BACKEND": "jax"}


def replay(name: str, nvml=None, **env) -> DoctorReport:
    """The doctor on a recorded JAX probe, on the machine it was recorded on (or `nvml`)."""
    return doctor(nvml or h200(), probes={"jax": recorded(name)}, environ={**JAX_ENV, **env})


def jax_facts(stderr: str = "", **changes) -> dict:
    return set_framework(healthy("jax"), "jax", jax_framework(**changes), stderr)


# -- what JAX printed on the H200 --------------------------------------------------------------


def test_a_working_jax_prints_nothing_the_doctor_reports():
    probe = recorded("h200-jax-0.11.2")
    assert parse_messages(probe.stderr, probe.framework) == []  # the TPU attempt is not news
    assert probe.framework["plugin"] == {"package": "jax_cuda13_plugin", "cuda_version": "13.0",
                                         "cudnn_version": "9.12.0"}
    assert probe.framework["gpus"][0]["device_kind"] == "NVIDIA H200"
    # the probe turns preallocation off, but the allocator's limit is still the 75 % default
    assert probe.framework["gpus"][0]["bytes_limit_mib"] == pytest.approx(0.75 * 143156, 0.001)
    assert probe.framework["imported"] == ["jax"]


def test_a_plugin_that_fails_is_read_once_despite_jax_logging_twice():
    messages = parse_messages(read_data("h200-jax-0.11.2-cuda-visible-devices-empty.stderr"))
    assert [m["kind"] for m in messages] == ["plugin_config_error", "no_device",
                                             "plugin_missing"]
    assert messages[1]["text"].endswith("operation cuInit(0) failed: CUDA_ERROR_NO_DEVICE")


@pytest.mark.parametrize(("name", "error"), [
    ("h200-jax-0.11.2-mem-fraction-abc", "ValueError: could not convert string to float: 'abc'"),
    ("h200-jax-0.11.2-allocator-foo", 'ValueError: XLA_PYTHON_CLIENT_ALLOCATOR env var must be '
                                      'one of "default", "platform", "bfc", "cuda_async", "vmm", '
                                      '"address", got "foo"'),
])
def test_the_exception_behind_a_plugin_error_is_read(name, error):
    messages = parse_messages(read_data(f"{name}.stderr"))
    assert [m["error"] for m in messages if m["kind"] == "plugin_exception"] == [error]


# -- the recordings through the rules ------------------------------------------------------------


def test_jax_seeing_the_h200_exits_0_and_names_it():
    report = replay("h200-jax-0.11.2")
    assert report.findings == []
    assert report.exit_code == 0 and report.gpu_usable
    text = report.render_text()
    assert text.startswith("gpu-watch doctor: JAX can use the GPU (NVIDIA H200) (exit 0)")
    assert "Findings: nothing is wrong; JAX sees the GPU" in text
    assert "CUDA plugin jax_cuda13_plugin (CUDA 13.0, cuDNN 9.12.0)" in text


def test_a_cpu_only_jax_on_a_gpu_machine_names_the_missing_plugin_and_the_right_extra():
    report = replay("h200-jax-0.11.2-no-cuda-plugin")
    found = only(report.findings, "cpu_only_build")
    assert found.evidence["backend"] == "jax"
    assert "no CUDA plugin" in found.message
    assert "An NVIDIA GPU may be present on this machine" in found.message  # JAX's own words
    assert found.remedy == 'pip install -U "jax[cuda13]==0.11.2"'  # the driver runs CUDA 13
    assert report.exit_code == 1 and codes(report.findings) == ["cpu_only_build"]
    older = replay("h200-jax-0.11.2-no-cuda-plugin", nvml=h200(cuda_driver_version=12040))
    assert only(older.findings, "cpu_only_build").remedy == 'pip install -U "jax[cuda12]==0.11.2"'


def test_cuda_visible_devices_empty_is_hidden_gpus_not_a_missing_plugin():
    report = replay("h200-jax-0.11.2-cuda-visible-devices-empty", CUDA_VISIBLE_DEVICES="")
    assert codes(report.findings) == ["gpus_hidden"]
    assert report.exit_code == 1


def test_jax_platforms_cpu_hides_the_gpu():
    report = replay("h200-jax-0.11.2-jax-platforms-cpu", JAX_PLATFORMS="cpu")
    found = only(report.findings, "gpus_hidden")
    assert found.evidence == {"backend": "jax", "jax_platforms": "cpu"}
    assert found.remedy.startswith("unset JAX_PLATFORMS")
    assert codes(report.findings) == ["gpus_hidden"] and report.exit_code == 1


@pytest.mark.parametrize(("name", "variable", "value"), [
    ("h200-jax-0.11.2-mem-fraction-abc", "XLA_PYTHON_CLIENT_MEM_FRACTION", "abc"),
    ("h200-jax-0.11.2-allocator-foo", "XLA_PYTHON_CLIENT_ALLOCATOR", "foo"),
])
def test_a_setting_that_breaks_the_plugin_is_named_with_jaxs_error(name, variable, value):
    report = replay(name, **{variable: value})
    found = only(report.findings, "allocator_misconfigured")
    assert found.severity == ERROR and f"{variable}={value!r}" in found.message
    assert found.remedy.startswith(f"unset {variable}")
    assert codes(report.findings) == ["allocator_misconfigured"]
    said = report.facts["frameworks"]["jax"]["messages"]
    assert any(m["kind"] == "plugin_exception" for m in said)
    assert report.exit_code == 1


def test_a_plugin_for_a_newer_cuda_than_the_driver_is_driver_too_old():
    probe = recorded("h200-jax-0.11.2-cuda-visible-devices-empty")  # plugin 13.0, no GPU
    probe = type(probe)(probe.framework, read_data("assembled-jax-0.11.2-driver-mismatch.stderr"))
    report = doctor(h200(driver_version="550.54.15", cuda_driver_version=12040),
                    probes={"jax": probe}, environ=JAX_ENV)
    found = only(report.findings, "driver_too_old")
    assert found.severity == ERROR
    assert "550.54.15 (CUDA 12.4) is older than the CUDA 13.0" in found.message
    assert "jax_cuda13_plugin" in found.message
    assert 'pip install -U "jax[cuda12]==0.11.2"' in found.remedy
    assert codes(report.findings) == ["driver_too_old"]  # not also "cuda_init_failed"
    said = report.facts["frameworks"]["jax"]["messages"]
    assert "driver_insufficient" in [m["kind"] for m in said]


# -- the rules from facts ----------------------------------------------------------------------


def test_an_older_minor_version_of_the_driver_is_a_warning_and_a_newer_one_nothing():
    facts = jax_facts(plugin_cuda="12.8")
    facts["nvml"]["cuda_driver_version"] = "12.6"
    found = only(check_driver_too_old(facts), "driver_too_old")
    assert found.severity == WARNING and "minor-version compatibility" in found.message
    facts["nvml"]["cuda_driver_version"] = "13.0"
    assert check_driver_too_old(facts) == []


def test_driver_says_insufficient_is_an_error_whatever_the_versions():
    facts = jax_facts("E0000 00:00:1.0 7 x.cc:1] CUDA backend failed to initialize: INTERNAL: "
                      "CUDA driver version is insufficient for CUDA runtime version", gpus=0)
    found = only(check_driver_too_old(facts), "driver_too_old")
    assert found.severity == ERROR and "it says: " in found.message


def test_the_plugin_version_falls_back_to_the_distribution_names():
    facts = jax_facts(plugin_cuda=None)
    assert plugin_cuda_version(facts) == "12.0"  # jax-cuda12-plugin in the distributions
    del facts["distributions"]["jax-cuda12-plugin"]
    facts["distributions"]["jaxlib"] = "0.4.25+cuda12.cudnn89"  # before plugins existed
    assert plugin_cuda_version(facts) == "12.0"
    facts["distributions"]["jaxlib"] = "0.10.2"
    assert plugin_cuda_version(facts) is None
    facts["frameworks"]["jax"]["gpus"] = []
    assert only(check_cpu_only_jaxlib(facts), "cpu_only_build").severity == ERROR


@pytest.mark.parametrize(("value", "hidden"), [
    ("cpu", "does not name cuda"), ("cpu,cuda", "puts 'cpu' first"), ("tpu", "does not name"),
    ("cuda", None), ("cuda,cpu", None), ("gpu", None), ("", None), (None, None),
])
def test_jax_platforms(value, hidden):
    facts = jax_facts()
    facts["env"]["JAX_PLATFORMS"] = value
    found = check_jax_platforms(facts)
    if hidden is None:
        assert found == []
    else:
        assert hidden in only(found, "gpus_hidden").message
    facts["nvml"]["gpus"] = []
    assert check_jax_platforms(facts) == []  # no GPU to hide


def test_the_older_jax_platform_name_counts_too():
    facts = jax_facts()
    facts["env"]["JAX_PLATFORM_NAME"] = "cpu"
    assert only(check_jax_platforms(facts), "gpus_hidden").evidence == {
        "jax_platform_name": "cpu"}


@pytest.mark.parametrize(("env", "code", "severity"), [
    ({"XLA_PYTHON_CLIENT_MEM_FRACTION": ".2"}, "gpu_memory_limited", WARNING),
    ({"XLA_PYTHON_CLIENT_MEM_FRACTION": str(MEMORY_LIMIT_SHARE_PCT / 100)}, None, None),
    ({"XLA_PYTHON_CLIENT_MEM_FRACTION": "0"}, "allocator_misconfigured", ERROR),
    ({"XLA_PYTHON_CLIENT_MEM_FRACTION": "lots"}, "allocator_misconfigured", ERROR),
    ({"XLA_CLIENT_MEM_FRACTION": ".1", "XLA_PYTHON_CLIENT_MEM_FRACTION": ".9"},
     "gpu_memory_limited", WARNING),  # the newer name wins
    ({"XLA_PYTHON_CLIENT_ALLOCATOR": "platform"}, "allocator_misconfigured", WARNING),
    ({"XLA_PYTHON_CLIENT_ALLOCATOR": "cuda_async"}, None, None),
    ({"XLA_PYTHON_CLIENT_ALLOCATOR": "BFC"}, None, None),  # jaxlib lowers the case
    ({"XLA_PYTHON_CLIENT_ALLOCATOR": "pool"}, "allocator_misconfigured", ERROR),
])
def test_memory_settings(env, code, severity):
    facts = jax_facts()
    facts["env"].update(env)
    found = check_memory_settings(facts)
    if code is None:
        assert found == []
        return
    (found,) = found
    assert (found.code, found.severity) == (code, severity)
    if code == "gpu_memory_limited":
        fraction = float(env.get("XLA_CLIENT_MEM_FRACTION")
                         or env["XLA_PYTHON_CLIENT_MEM_FRACTION"])
        assert f"GPU 0: {fraction * 81559:.0f} MiB of 81559 MiB" in found.message
    assert DoctorReport(facts, diagnose(facts)).exit_code == (1 if severity == ERROR else 0)


def contended(held_mib: float, **env) -> list:
    other = FakeProcess(pid=4242, used_mib=held_mib)
    report = doctor(FakeNVML([FakeGPU(mem_total_mib=81559, processes=[other])],
                             cuda_driver_version=12080),
                    probes={"jax": recorded("h200-jax-0.11.2")}, environ={**JAX_ENV, **env})
    return [f for f in report.findings if f.code == "gpu_memory_contention"]


def test_preallocating_more_than_the_others_leave_is_contention():
    (found,) = [f for f in contended(30000) if "preallocates" in f.message]
    assert "preallocates 75 % of GPU 0 (61169 MiB)" in found.message
    assert "leaving 51559 MiB" in found.message
    assert found.remedy.startswith("export XLA_PYTHON_CLIENT_PREALLOCATE=false")
    assert "kill 4242" in found.remedy
    assert contended(20000) == []  # 61169 MiB still fit
    assert contended(30000, XLA_PYTHON_CLIENT_PREALLOCATE="false") == []
    assert contended(30000, XLA_PYTHON_CLIENT_MEM_FRACTION=".6") == []


def test_a_plugin_that_did_not_start_for_no_known_reason_gives_jaxs_words():
    facts = jax_facts("WARNING:jax._src.xla_bridge:CUDA backend failed to initialize: "
                      "INTERNAL: no supported devices found for platform CUDA.(Set "
                      "TF_CPP_MIN_LOG_LEVEL=0 and rerun for more info.)", gpus=0,
                      plugin_cuda="12.8")
    found = only(check_cuda_backend_failed(facts), "cuda_init_failed")
    assert "no supported devices found for platform CUDA" in found.message
    assert "XLA_PYTHON_CLIENT_PREALLOCATE=false" in found.remedy
    facts["env"]["CUDA_VISIBLE_DEVICES"] = "-1"  # explained by another rule: not repeated
    assert check_cuda_backend_failed(facts) == []


def test_jax_init_error_comes_first():
    facts = jax_facts(gpus=0, init_error="RuntimeError: Unable to initialize backend 'cuda': "
                                         "INTERNAL: boom (set JAX_PLATFORMS='' ...)")
    found = only(check_cuda_backend_failed(facts), "cuda_init_failed")
    assert found.evidence["messages"][0].startswith("RuntimeError: Unable to initialize")
    facts["nvml"]["gpus"] = [nvml_gpu(0, "GPU-x")]
    assert check_cpu_only_jaxlib(facts) == []  # a plugin is there
