"""GPUWatch on the JAX and torch backends: end to end in child processes (Keras picks its
backend at import), and the backends' placement probes on stand-ins for what a GPU shows."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpu_watch.training.placement import JaxProbe, TorchProbe

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "scripts" / "backend_fit.py"
BACKENDS = ("jax", "torch")
CHILD_TIMEOUT_S = 240
STEPS = 8  # backend_fit.py: 128 samples in batches of 16
EPOCHS = 2


def child_env(**overrides: str) -> dict[str, str]:
    """This environment, with the checkout first on the path and no cluster set up."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "KERAS_BACKEND")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(overrides)
    return env


def result_line(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, "the child printed no RESULT line"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """Both backends' runs, trained in parallel child processes."""
    children = {}
    for backend in BACKENDS:
        if importlib.util.find_spec(backend) is None:
            continue
        log_dir = tmp_path_factory.mktemp(f"logs-{backend}")
        children[backend] = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(log_dir)], cwd=ROOT,
            env=child_env(KERAS_BACKEND=backend), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
    results = {}
    try:
        for backend, child in children.items():
            stdout, stderr = child.communicate(timeout=CHILD_TIMEOUT_S)
            assert child.returncode == 0, f"{backend} child failed:\n{stderr[-4000:]}"
            results[backend] = result_line(stdout)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()
    return results


@pytest.fixture(params=BACKENDS)
def run(request, runs) -> dict:
    if request.param not in runs:
        pytest.skip(f"{request.param} is not installed (pip install -e '.[{request.param}]')")
    return runs[request.param]


def test_the_run_folder_is_complete(run):
    assert {"run.json", "samples.csv", "batches.csv", "epochs.csv"} <= set(run["files"])
    # The figures are drawn by another process; the child's exit waited for them.
    after_exit = {p.name for p in Path(run["run_dir"]).iterdir()}
    assert {"utilization.png", "epochs.png", "report.html"} <= after_exit
    assert run["status"] == "completed"
    assert run["warnings"] == []
    assert run["batches"] == [[e, b] for e in range(EPOCHS) for b in range(STEPS)]
    assert run["batch_time_s_increasing"] and run["step_s_nonnegative"]
    # A step reads 0 s only where its outputs were seen before the step before it was stamped
    # done (that stamp, late on a busy machine, is where the device was free): rare.
    assert run["step_s_zero"] <= max(2, len(run["batches"]) // 10), run["step_s_zero"]
    assert run["epochs"] == list(range(EPOCHS))
    assert run["epoch_loss"]
    assert (run["rank"], run["world_size"]) == (0, 1)
    assert not Path(run["run_dir"]).name.endswith(("-rank0", "-rank1"))


def test_the_epoch_figures_reach_history(run):
    # No driver here: no GPU figure was measured, so only the verdict is logged (no NaN).
    assert run["history_gpu"] == {"gpu_verdict": [3.0] * EPOCHS}  # cpu_fallback


def test_the_cpu_fallback_warning_names_the_fit_line_from_keras_worker_thread(run):
    warned = run["warned_at"]
    assert [w[:2] for w in warned["warnings"]] == [warned["fit_line"]], warned
    assert "training is running on the CPU" in warned["warnings"][0][2]


def test_the_page_and_the_banner_name_the_backend_s_own_framework(run):
    from gpu_watch import load_run
    from gpu_watch.report.view import banner_text

    own = {"jax": "JAX", "torch": "torch"}[run["backend"]]
    banner = banner_text(load_run(run["run_dir"]))
    assert own in banner and "TensorFlow" not in banner, banner
    page = (Path(run["run_dir"]) / "report.html").read_text()
    assert own in page and "TensorFlow" not in page


def test_warnings_as_errors_pass_on_a_machine_without_a_gpu(run):
    assert run["strict"] is None


def test_no_driver_means_cpu_fallback(run):
    assert run["verdict"] == "cpu_fallback"
    # The doctor's in-process findings name this backend's CPU-only build (jax and torch here).
    assert run["causes"] == ["no_nvidia_driver", "cpu_only_build"]
    assert run["epoch_verdicts"] == ["cpu_fallback"] * EPOCHS


def test_placement_comes_from_the_backend(run):
    placement, framework = run["placement"], run["framework"]
    assert placement["backend"] == framework["name"] == run["backend"]
    assert placement["compute_on_gpu"] is False
    assert placement["variable_devices"] == {"CPU": 4}  # two Dense layers: kernels and biases
    assert framework["gpus"] == [] and framework["cuda_build"] is False
    if run["backend"] == "jax":
        assert placement["method"] == "train_state"
        assert placement["default_backend"] == "cpu"
    else:
        assert placement["method"] == "variables"


def test_the_data_adapter_and_the_cpu_evidence_are_recorded(run):
    assert run["data"] == {"source": "arrays", "adapter": "ArrayDataAdapter", "batch_size": 16}
    scoped = run["cpu_scope"]
    assert scoped["data"] == {"source": "py_dataset", "adapter": "PyDatasetAdapter",
                              "workers": 1, "use_multiprocessing": False, "max_queue_size": 5}
    assert scoped["distribution"] is None
    placement = scoped["placement"]
    # keras.device("cpu") is jax.default_device on JAX, Keras' own torch device on torch
    assert placement["device_scope"] == {"jax": "cpu:0", "torch": "cpu"}[run["backend"]]
    assert placement["cpu_settings"] == {}
    assert [p.rsplit("/", 1)[-1] for p in placement["cpu_variable_examples"]] == \
        ["kernel", "bias"] * 2


def test_a_generator_that_sleeps_half_of_each_step_reads_about_half(run):
    wait = run["half_wait"]
    assert wait["measure"] == "fetch_timed"  # each pull on the training thread, timed
    assert 0.35 <= wait["fraction"] <= 0.65, wait


def test_a_starved_training_gets_a_remedy_for_its_generator_not_tf_data(run):
    starved = run["starved"]
    assert starved["verdict"] == "idle"
    assert starved["data"] == {"source": "generator", "adapter": "GeneratorDataAdapter"}
    [found] = starved["causes"]
    assert found["code"] == "input_bound"
    assert found["remedy"].startswith("Rewrite the generator as a keras.utils.PyDataset")
    assert f"{found['evidence']['wait_fraction']:.0%} of training time" in found["remedy"]
    assert "tf." not in found["remedy"]


def test_the_batch_logs_carry_the_latest_reading(run):
    batches = run["live_keys"]
    assert len(batches) == STEPS
    # Only keys with a reading, never NaN.
    assert all(set(b) <= {"gpu_util", "gpu_proc_util", "gpu_mem_peak_gib", "gpu_sm_active"}
               for b in batches)
    assert not any(math.isnan(v) for b in batches for v in b.values())
    utils = [b["gpu_util"] for b in batches if "gpu_util" in b]
    assert len(utils) >= STEPS - 2 and set(utils) == {42.0}
    assert {b["gpu_mem_peak_gib"] for b in batches if "gpu_util" in b} == {2.0}


def test_keras_keeps_async_dispatch(run):
    assert run["async_train"] is True
    assert run["async_train_control"] is False  # a batch-end hook without async_safe turns it off
    assert run["hook_threads"]
    assert all(name != "MainThread" for name in run["hook_threads"])


def test_hooks_never_read_the_model_property(run):
    assert run["model_reads_in_fit"] == 0
    assert run["model_reads_after_control"] == 1
    if run["backend"] == "jax":
        syncs = run["jax_state_sync"]
        assert syncs["from_gpu_watch"] == 0
        assert run["jax_state_sync_after_control"] == syncs["total"] + 1


def test_tensorflow_is_never_imported(run):
    assert run["tensorflow_imported"] is False


# -- the probes, on stand-ins for a GPU ------------------------------------------------------


class Device:
    def __init__(self, platform: str) -> None:
        self.platform = platform


class Array:
    """A JAX array as the probe sees it: only its sharding's devices, as after donation."""

    def __init__(self, platform: str) -> None:
        self.sharding = SimpleNamespace(device_set={Device(platform)})


class Variable:
    """A Keras variable; reading `.value` of a detached one would initialise a new array."""

    def __init__(self, stored=None) -> None:
        self._value = stored

    @property
    def value(self):
        raise AssertionError("the probe read variable.value")


def jax_probe(**jax) -> JaxProbe:
    probe = JaxProbe.__new__(JaxProbe)
    defaults = {"default_backend": lambda: "gpu", "process_count": lambda: 1,
                "process_index": lambda: 0}
    probe._jax = SimpleNamespace(**{**defaults, **jax})
    return probe


def test_jax_placement_reads_the_training_state_not_the_variables():
    model = SimpleNamespace(
        _jax_state={"trainable_variables": [Array("gpu"), Array("gpu"), Array("cpu")]},
        trainable_variables=[Variable(), Variable(), Variable()],
    )
    report = jax_probe().after_first_step(model, {"loss": 0.5})
    assert report["method"] == "train_state"
    assert report["variable_devices"] == {"GPU": 2, "CPU": 1}
    assert report["compute_on_gpu"] is True
    assert report["default_backend"] == "gpu"


def test_jax_placement_without_a_training_state_skips_detached_variables():
    model = SimpleNamespace(_jax_state=None,
                            trainable_variables=[Variable(Array("cuda")), Variable(None)])
    report = jax_probe().after_first_step(model, None)
    assert report["method"] == "variables"
    assert report["variable_devices"] == {"GPU": 1}


def test_jax_multi_process_rank(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert jax_probe(process_count=lambda: 4, process_index=lambda: 2).rank() == (2, 4)
    assert jax_probe().rank() == (0, 1)


@pytest.mark.parametrize(
    ("names", "jaxlib_version", "expected"),
    [
        (["jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt"], "0.6.0", True),
        (["jax", "jaxlib", "jax_cuda13_plugin"], "0.8.0", True),
        (["jax", "jaxlib"], "0.4.1+cuda11.cudnn86", True),
        (["jax", "jaxlib", None], "0.6.0", False),
    ],
)
def test_jax_cuda_build(monkeypatch, names, jaxlib_version, expected):
    from importlib import metadata

    dists = [SimpleNamespace(metadata={"Name": name}) for name in names]
    monkeypatch.setattr(metadata, "distributions", lambda: dists)
    probe = jax_probe(lib=SimpleNamespace(__version__=jaxlib_version))
    assert probe.cuda_build() is expected


def torch_probe(rank=None) -> TorchProbe:
    initialised = rank is not None
    dist = SimpleNamespace(is_available=lambda: True, is_initialized=lambda: initialised,
                           get_rank=lambda: rank[0], get_world_size=lambda: rank[1])
    probe = TorchProbe.__new__(TorchProbe)
    probe._torch = SimpleNamespace(distributed=dist)
    return probe


def test_torch_placement_and_rank(monkeypatch):
    def tensor(kind):
        return SimpleNamespace(value=SimpleNamespace(device=SimpleNamespace(type=kind)))

    model = SimpleNamespace(trainable_variables=[tensor("cuda"), tensor("cuda"), tensor("cpu")])
    report = torch_probe().after_first_step(model, None)
    assert report["variable_devices"] == {"GPU": 2, "CPU": 1}
    assert report["compute_on_gpu"] is True
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert torch_probe().rank() == (0, 1)
    assert torch_probe(rank=(3, 8)).rank() == (3, 8)


def test_a_torch_device_scope_that_cannot_be_read_says_why_in_the_step_0_report(monkeypatch):
    from gpu_watch.training import keras_internals

    reason = "torch_device_scope: Keras' torch_device attribute raised ImportError: gone"
    monkeypatch.setattr(keras_internals, "torch_device_scope",
                        lambda: keras_internals.Probed(None, reason))
    probe = torch_probe()
    probe.before_training(SimpleNamespace())
    model = SimpleNamespace(trainable_variables=[])
    report = probe.after_first_step(model, None)
    assert report["device_scope"] is None and report["device_scope_unread"] == reason
    monkeypatch.setattr(keras_internals, "torch_device_scope",
                        lambda: keras_internals.Probed("cuda:0"))
    probe.before_training(SimpleNamespace())
    report = probe.after_first_step(model, None)
    assert report["device_scope"] == "cuda:0" and "device_scope_unread" not in report


def test_jax_placement_says_why_it_read_the_variables():
    model = SimpleNamespace(_jax_state=None, trainable_variables=[Variable(Array("cuda"))])
    report = jax_probe().after_first_step(model, None)
    assert report["train_state"] == ("jax_train_state: the model has no _jax_state "
                                     "(not inside fit)")


@pytest.mark.filterwarnings("ignore::gpu_watch.errors.GPUWatchWarning")
def test_the_batch_hook_records_batches_in_order_from_several_threads(tmp_path):
    """Keras' thread pool may run batch 1's hook before batch 0's: rows stay in batch order."""
    import keras

    from gpu_watch import GPUWatch, load_run
    from gpu_watch.testing import FakeGPU, FakeNVML

    watch = GPUWatch(log_dir=tmp_path, nvml=FakeNVML([FakeGPU(util_pct=60)]), interval_s=0.02,
                     check_placement=False, plot=False, verbose=0)
    watch.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    watch.on_train_begin()
    watch.on_epoch_begin(0)
    for batch in range(6):
        watch.on_train_batch_begin(batch)
    order = [1, 0, 3, 2, 5, 4]
    threads = [threading.Thread(target=watch.on_train_batch_end, args=(b, {"loss": 1.0}))
               for b in order]
    for thread in threads:  # one after another, in the scrambled order
        thread.start()
        thread.join()
    watch.on_epoch_end(0, {"loss": 1.0})
    watch.on_train_end()
    run = load_run(watch.run_dir)
    assert list(run.batches["batch"]) == list(range(6))
    assert run.batches["time_s"].is_monotonic_increasing
    assert list(run.epochs["batches"]) == [6]
