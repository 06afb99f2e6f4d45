"""Every remedy fits the user's backend and input pipeline.

The choice is a pure function of the run's facts (`causes.choose_remedy`), so the remedies of
causes only a GPU shows are tested here as the line a user of each setup would paste, without
TensorFlow (these tests also kill mutants of causes.py: `make mutate`). Real training on this
machine's CPU shows that the facts the choice needs reach run.json: test_remedy_facts.py (JAX
and torch: test_backends.py).
"""

from __future__ import annotations

import pytest

from gpu_watch.judging.causes import (
    BACKENDS,
    CATALOGUE,
    DATA_SOURCES,
    RunFacts,
    cause,
    choose_remedy,
    framework_name,
)
from gpu_watch.judging.verdict import GPUStats, Setting, judge
from gpu_watch.runlog import RunRecord

WAIT = 0.62  # share of training time spent waiting for data
STAKES = "62% of training time went to waiting for data"
TWO_GPUS_ONE_IDLE = {"busy_gpus": [0], "idle_gpus": [1]}

# For each code and backend, with nothing known beyond the backend: what a user pastes.
PASTE = {
    ("cpu_only_build", "tensorflow"): 'pip install "tensorflow[and-cuda]"',
    ("cpu_only_build", "jax"): 'pip install -U "jax[cuda12]"',
    ("cpu_only_build", "torch"): "--index-url https://download.pytorch.org/whl/cu126",
    ("cuda_libs_missing", "tensorflow"): 'pip install "tensorflow[and-cuda]"',
    ("cuda_libs_missing", "jax"): 'pip install -U "jax[cuda12]"',
    ("cuda_libs_missing", "torch"): 'python -c "import torch; torch.cuda.init()"',
    ("no_nvidia_driver", "tensorflow"): "sudo apt install nvidia-driver",
    ("no_nvidia_driver", "jax"): "sudo apt install nvidia-driver",
    ("no_nvidia_driver", "torch"): "sudo apt install nvidia-driver",
    ("driver_too_old", "tensorflow"): "install an older TensorFlow",
    ("driver_too_old", "jax"): 'pip install -U "jax[cuda12]"',
    ("driver_too_old", "torch"): "--index-url https://download.pytorch.org/whl/cu",
    ("gpu_memory_contention", "tensorflow"): "CUDA_VISIBLE_DEVICES=<index>",
    ("gpu_memory_contention", "jax"): "CUDA_VISIBLE_DEVICES=<index>",
    ("gpu_memory_contention", "torch"): "CUDA_VISIBLE_DEVICES=<index>",
    ("gpu_memory_limited", "tensorflow"): "tf.config.experimental.set_memory_growth(",
    ("gpu_memory_limited", "jax"): "unset XLA_PYTHON_CLIENT_MEM_FRACTION",
    ("gpu_memory_limited", "torch"): "torch.cuda.set_per_process_memory_fraction(1.0)",
    ("forced_cpu_placement", "tensorflow"): 'with tf.device("/CPU:0")',
    ("forced_cpu_placement", "jax"): "with jax.default_device(...)",
    ("forced_cpu_placement", "torch"): 'torch.set_default_device("cpu")',
    ("gpus_hidden", "tensorflow"): "tf.config.set_visible_devices([], 'GPU')",
    ("gpus_hidden", "jax"): "unset CUDA_VISIBLE_DEVICES",
    ("gpus_hidden", "torch"): "unset CUDA_VISIBLE_DEVICES",
    ("input_bound", "tensorflow"): "keras.utils.PyDataset",
    ("input_bound", "jax"): "keras.utils.PyDataset",
    ("input_bound", "torch"): "keras.utils.PyDataset",
    ("slow_callbacks", "tensorflow"): "update_freq='epoch'",
    ("slow_callbacks", "jax"): "update_freq='epoch'",
    ("slow_callbacks", "torch"): "update_freq='epoch'",
    ("process_not_on_gpu", "tensorflow"): "tf.distribute.MirroredStrategy()",
    ("process_not_on_gpu", "jax"): "keras.distribution.DataParallel()",
    ("process_not_on_gpu", "torch"): "torchrun --nproc_per_node=<GPUs> train.py",
    ("process_not_attributable", "tensorflow"): "--pid=host",
    ("process_not_attributable", "jax"): "--pid=host",
    ("process_not_attributable", "torch"): "--pid=host",
    ("backend_not_installed", "tensorflow"): 'pip install "gpu-watch[tensorflow]"',
    ("backend_not_installed", "jax"): 'pip install "gpu-watch[jax]"',
    ("backend_not_installed", "torch"): 'whl/cu126 && pip install "gpu-watch[torch]"',
    ("gpu_not_supported", "tensorflow"): "compute capability",
    ("gpu_not_supported", "jax"): "compute capability",
    ("gpu_not_supported", "torch"): "torch.cuda.get_arch_list()",
    ("cuda_init_failed", "tensorflow"): "tf.config.list_physical_devices('GPU')",
    ("cuda_init_failed", "jax"): "jax.devices('cuda')",
    ("cuda_init_failed", "torch"): "torch.cuda.init()",
    ("allocator_misconfigured", "tensorflow"): "unset TF_GPU_ALLOCATOR",
    ("allocator_misconfigured", "jax"): "unset XLA_PYTHON_CLIENT_ALLOCATOR",
    ("allocator_misconfigured", "torch"): "unset PYTORCH_CUDA_ALLOC_CONF",
    ("nvml_unavailable", "tensorflow"): "nvidia-smi",
    ("nvml_unavailable", "jax"): "nvidia-smi",
    ("nvml_unavailable", "torch"): "nvidia-smi",
    ("low_sm_activity", "tensorflow"): "steps_per_execution=32",
    ("low_sm_activity", "jax"): "steps_per_execution=32",
    ("low_sm_activity", "torch"): "jit_compile=True",
    ("tensor_cores_unused", "tensorflow"): 'set_global_policy("mixed_bfloat16")',
    ("tensor_cores_unused", "jax"): 'set_global_policy("mixed_bfloat16")',
    ("tensor_cores_unused", "torch"): 'set_global_policy("mixed_bfloat16")',
    ("gpu_shared", "tensorflow"): "CUDA_VISIBLE_DEVICES=<index>",
    ("gpu_shared", "jax"): "CUDA_VISIBLE_DEVICES=<index>",
    ("gpu_shared", "torch"): "CUDA_VISIBLE_DEVICES=<index>",
}
# Words that only make sense to a user of one framework.
FOREIGN = {"tensorflow": ("jax", "torch."), "jax": ("tf.", "tensorflow", "torch."),
           "torch": ("tf.", "tensorflow", "jax")}


def evidence_for(code: str) -> dict:
    return {"input_bound": {"wait_fraction": WAIT},
            "process_not_on_gpu": TWO_GPUS_ONE_IDLE,
            "slow_callbacks": {"callbacks": [{"name": "SlowLogger", "hook_s": 2.0}]}}.get(code, {})


def test_every_cause_has_a_remedy_for_every_backend():
    assert {code for code, _ in PASTE} == set(CATALOGUE), "a code without per-backend remedies"
    assert {backend for _, backend in PASTE} == set(BACKENDS)


@pytest.mark.parametrize(("code", "backend"), sorted(PASTE))
def test_the_remedy_fits_the_backend(code, backend):
    text = choose_remedy(code, RunFacts(backend=backend), evidence_for(code))
    assert PASTE[code, backend] in text
    if code != "input_bound":  # an unknown pipeline: the checklist names each kind, tf.data too
        assert not [w for w in FOREIGN[backend] if w in text.lower()], text


def test_the_slow_callbacks_remedy_names_the_callbacks_that_took_the_time():
    named = choose_remedy("slow_callbacks", RunFacts(backend="jax"),
                          {"callbacks": [{"name": "SlowLogger", "hook_s": 2.5},
                                         {"name": "ProgbarLogger", "hook_s": 0.25}]})
    assert named.startswith("Make the batch hooks of SlowLogger, ProgbarLogger cheap or rare")
    unnamed = choose_remedy("slow_callbacks", RunFacts(backend="jax"), {"callbacks": []})
    assert unnamed == CATALOGUE["slow_callbacks"].remedy


@pytest.mark.parametrize("code", sorted(CATALOGUE))
def test_without_facts_the_remedy_is_the_catalogue_default(code):
    assert choose_remedy(code) == CATALOGUE[code].remedy
    assert cause(code).remedy == CATALOGUE[code].remedy


# -- forced_cpu_placement: what put the CPU there --------------------------------------------


@pytest.mark.parametrize(("backend", "scope", "paste", "names"), [
    ("tensorflow", "CPU:0", 'with tf.device("/CPU:0")', 'keras.device("cpu")'),
    ("jax", "cpu:0", "with jax.default_device(...)", 'keras.device("cpu")'),
    ("torch", "cpu", 'with keras.device("cpu")', "Keras' torch device set to cpu"),
])
def test_a_cpu_device_scope_around_fit_is_named(backend, scope, paste, names):
    text = choose_remedy("forced_cpu_placement", RunFacts(backend=backend, device_scope=scope))
    assert text.startswith("Remove") and paste in text and names in text and scope in text
    assert not [w for w in FOREIGN[backend] if w in text.lower()]


def test_a_gpu_device_scope_is_no_evidence_for_the_cpu():
    text = choose_remedy("forced_cpu_placement", RunFacts(backend="jax", device_scope="cuda:1"))
    assert text == CATALOGUE["forced_cpu_placement"].variants["jax"]


@pytest.mark.parametrize(("backend", "settings", "paste"), [
    ("tensorflow", {"tf.config.get_visible_devices('GPU')": "[]"},
     "Remove tf.config.set_visible_devices([], 'GPU')"),
    ("jax", {"JAX_PLATFORMS": "cpu"}, "unset JAX_PLATFORMS"),
    ("torch", {"KERAS_TORCH_DEVICE": "cpu"}, "unset KERAS_TORCH_DEVICE"),
])
def test_a_setting_that_keeps_the_cpu_is_named_before_any_scope(backend, settings, paste):
    facts = RunFacts(backend=backend, device_scope="cpu:0", cpu_settings=settings)
    text = choose_remedy("forced_cpu_placement", facts)
    assert text.startswith(paste)
    if backend != "tensorflow":
        assert "'cpu'" in text


# -- input_bound: one remedy per input pipeline, with the stakes ------------------------------


def data_facts(backend: str, source: str, **settings) -> RunFacts:
    return RunFacts(backend=backend, data={"source": source, **settings})


INPUT_BOUND = [
    # (backend, data, must contain, must not contain)
    ("tensorflow", {"source": "arrays"}, ["steps_per_execution=32"], []),
    ("jax", {"source": "arrays"}, ["steps_per_execution=32"], ["tf."]),
    ("torch", {"source": "arrays"}, ["batch_size="], ["steps_per_execution", "tf."]),
    ("tensorflow", {"source": "tf_data", "transformations": ["batch", "map", "tensor_slice"]},
     ["num_parallel_calls=tf.data.AUTOTUNE", ".prefetch(tf.data.AUTOTUNE)",
      "missing from your pipeline: prefetch, num_parallel_calls"], []),
    ("jax", {"source": "tf_data", "transformations": ["prefetch", "batch", "parallel_map"]},
     [".prefetch(tf.data.AUTOTUNE)"], ["missing"]),
    ("tensorflow", {"source": "tf_data", "transformations": ["batch", "from_generator",
                                                             "tensor"]},
     ["Dataset.from_generator", "keras.utils.PyDataset", "workers=8"], []),
    ("tensorflow", {"source": "py_dataset", "workers": 1, "use_multiprocessing": False,
                    "max_queue_size": 10},
     ["super().__init__(workers=8, use_multiprocessing=True, max_queue_size=16)",
      "it ran with workers=1, use_multiprocessing=False, max_queue_size=10"], []),
    ("jax", {"source": "py_dataset", "workers": 8, "use_multiprocessing": True,
             "max_queue_size": 10},
     ["workers=16, use_multiprocessing=True, max_queue_size=32"], ["tf."]),
    ("torch", {"source": "py_dataset"}, ["workers=8"], ["it ran with", "tf."]),
    ("jax", {"source": "generator"},
     ["keras.utils.PyDataset", "workers=8, use_multiprocessing=True"], ["tf."]),
    ("tensorflow", {"source": "generator"}, ["keras.utils.PyDataset"], []),
    ("torch", {"source": "generator"}, ["keras.utils.PyDataset"], ["tf."]),
    ("torch", {"source": "torch_dataloader", "num_workers": 0, "pin_memory": False},
     ["num_workers=8", "persistent_workers=True", "pin_memory=True",
      "it ran with num_workers=0, pin_memory=False"], ["tf."]),
    ("jax", {"source": "torch_dataloader", "num_workers": 2, "pin_memory": False},
     ["num_workers=8", "it ran with num_workers=2"], ["pin_memory", "tf."]),
    ("jax", {"source": "grain"}, ["mp_prefetch(grain.MultiprocessingOptions(num_workers=8))",
                                  "worker_count=8"], ["tf."]),
    ("torch", {"source": "other", "adapter": "MyAdapter"}, ["Check how MyAdapter"], ["tf."]),
    ("jax", {"source": "unknown"}, ["a keras.utils.PyDataset", "a torch DataLoader",
                                    "a tf.data.Dataset"], []),
]


@pytest.mark.parametrize(("backend", "data", "present", "absent"), INPUT_BOUND)
def test_input_bound_remedy_fits_the_pipeline_and_states_the_stakes(backend, data, present,
                                                                    absent):
    text = choose_remedy("input_bound", RunFacts(backend=backend, data=data),
                         {"wait_fraction": WAIT})
    for part in present:
        assert part in text, text
    for part in absent:
        assert part not in text, text
    assert f"{STAKES}: a pipeline that keeps up could make each epoch up to 2.6x faster" in text


def test_every_data_source_is_covered():
    assert {d["source"] for _, d, _, _ in INPUT_BOUND} == set(DATA_SOURCES)


def test_input_bound_stakes_follow_the_wait():
    facts = data_facts("jax", "generator")
    assert "up to 10.0x faster" in choose_remedy("input_bound", facts, {"wait_fraction": 0.9})
    nearly_all = choose_remedy("input_bound", facts, {"wait_fraction": 1.0})
    assert "100% of training time" in nearly_all and "x faster" not in nearly_all
    assert "training time" not in choose_remedy("input_bound", facts, {})


# -- process_not_on_gpu: spread the work the backend's way ------------------------------------


@pytest.mark.parametrize(("backend", "distribution", "paste"), [
    ("tensorflow", {"name": "MirroredStrategy", "replicas": 2},
     "tf.distribute.MirroredStrategy(devices=[...])  # your MirroredStrategy runs 2 replica"),
    ("jax", {"name": "DataParallel", "replicas": 1},
     'keras.distribution.DataParallel(devices=keras.distribution.list_devices("gpu"))'),
    ("torch", {"name": "torch.distributed", "replicas": 4},
     'torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))'),
])
def test_a_distribution_that_leaves_a_gpu_out_is_named(backend, distribution, paste):
    facts = RunFacts(backend=backend, distribution=distribution)
    text = choose_remedy("process_not_on_gpu", facts, TWO_GPUS_ONE_IDLE)
    assert text.startswith(paste)
    assert str(distribution["replicas"]) in text


def test_a_gpu_busy_with_another_process_keeps_the_default_remedy():
    for backend in BACKENDS:
        text = choose_remedy("process_not_on_gpu", RunFacts(backend=backend), {"gpu": 0})
        assert text == CATALOGUE["process_not_on_gpu"].remedy


def test_an_unknown_backend_gets_the_texts_that_say_what_to_check():
    facts = RunFacts(backend="numpy", device_scope="cpu")
    assert choose_remedy("forced_cpu_placement", facts) == \
        CATALOGUE["forced_cpu_placement"].remedy
    assert "tf.distribute.MirroredStrategy" in choose_remedy("process_not_on_gpu", facts,
                                                             TWO_GPUS_ONE_IDLE)


# -- bad input ----------------------------------------------------------------------------------


def test_bad_input_names_the_value_and_what_is_valid():
    with pytest.raises(ValueError, match=r"unknown cause code 'gpu_on_fire'.*input_bound"):
        choose_remedy("gpu_on_fire", RunFacts())
    with pytest.raises(ValueError, match=r"data source must be one of arrays, .*got 'csv'"):
        RunFacts(data={"source": "csv"})


def test_facts_are_read_back_from_run_json():
    info = {"backend": "torch",
            "data": {"source": "torch_dataloader", "num_workers": 0},
            "distribution": None,
            "placement": {"device_scope": "cpu", "cpu_settings": {},
                          "cpu_variable_examples": ["dense/kernel"]}}
    facts = RunFacts.from_run(RunRecord.from_json(info))
    assert (facts.backend, facts.data_source, facts.device_scope, facts.cpu_variables) == \
        ("torch", "torch_dataloader", "cpu", ("dense/kernel",))
    assert facts.cpu_scope
    assert RunFacts.from_run(RunRecord(backend="jax", data={"source": "sqlite"})).data_source == \
        "unknown"
    assert RunFacts.from_run(RunRecord()).data_source == "unknown"


# -- the verdict rules pass the facts on ------------------------------------------------------


def idle_gpu(gpu=0):
    return GPUStats(gpu, util_samples=50, util_mean=2.0, util_p95=4.0, device_idle_fraction=0.95,
                    proc_seen=True, proc_util_samples=50, proc_util_mean=2.0,
                    proc_idle_fraction=0.95)


def busy_gpu(gpu):
    return GPUStats(gpu, util_samples=50, util_mean=90.0, util_p95=99.0, device_idle_fraction=0.0,
                    proc_seen=True, proc_util_samples=50, proc_util_mean=90.0,
                    proc_idle_fraction=0.0)


ON_GPU = dict(compute_on_gpu=True, framework_gpus=2, nvml_gpus=2, visible_gpus=2,
              cuda_build=True)


def test_a_jax_training_fed_by_a_generator_gets_a_keras_remedy():
    setting = Setting(**ON_GPU, facts=data_facts("jax", "generator"))
    [found] = judge(setting, [idle_gpu()], wait_fraction=WAIT).causes
    assert found.code == "input_bound"
    assert "keras.utils.PyDataset" in found.remedy and STAKES in found.remedy
    assert "tf." not in found.remedy


def test_one_idle_gpu_on_torch_gets_torchrun():
    setting = Setting(**ON_GPU, facts=RunFacts(backend="torch"))
    [found] = judge(setting, [busy_gpu(0), idle_gpu(1)], wait_fraction=None).causes
    assert found.code == "process_not_on_gpu"
    assert found.remedy.startswith("torchrun --nproc_per_node=<GPUs> train.py")


def test_forced_cpu_placement_names_the_scope_and_the_variables_on_the_cpu():
    facts = RunFacts(backend="torch", device_scope="cpu",
                     cpu_variables=("sequential/dense/kernel", "sequential/dense/bias"))
    setting = Setting(compute_on_gpu=False, framework_gpus=1, nvml_gpus=1, visible_gpus=1,
                      cuda_build=True, facts=facts)
    [found] = judge(setting, [], None).causes
    assert found.code == "forced_cpu_placement"
    assert "variables sequential/dense/kernel, sequential/dense/bias" in found.message
    assert found.evidence["device_scope"] == "cpu"
    assert found.remedy.startswith('Remove `with keras.device("cpu")`')


def test_jax_platforms_cpu_is_forced_placement_not_missing_cuda_libraries():
    base = dict(compute_on_gpu=False, framework_gpus=0, nvml_gpus=1, visible_gpus=1,
                cuda_build=True)
    forced = Setting(**base, facts=RunFacts(backend="jax", cpu_settings={"JAX_PLATFORMS": "cpu"}))
    [found] = judge(forced, [], None).causes
    assert found.code == "forced_cpu_placement"
    assert "JAX_PLATFORMS='cpu' keeps JAX on the CPU" in found.message
    assert found.remedy.startswith("unset JAX_PLATFORMS")
    [found] = judge(Setting(**base, facts=RunFacts(backend="jax")), [], None).causes
    assert found.code == "cuda_libs_missing"
    assert found.remedy.startswith('pip install -U "jax[cuda12]"')
    no_gpu = Setting(**{**base, "nvml_gpus": 0},
                     facts=RunFacts(backend="jax", cpu_settings={"JAX_PLATFORMS": "cpu"}))
    assert [c.code for c in judge(no_gpu, [], None).causes] == []


def test_a_cpu_only_build_names_the_framework_installed():
    setting = Setting(compute_on_gpu=False, framework_gpus=0, nvml_gpus=1, visible_gpus=1,
                      cuda_build=False, facts=RunFacts(backend="torch"))
    [found] = judge(setting, [], None).causes
    assert found.message == "The installed PyTorch is a CPU-only build."
    assert "download.pytorch.org" in found.remedy


# -- each fact the remedy is chosen from, exactly ------------------------------------------------


def test_the_framework_is_named_as_its_users_write_it():
    assert [framework_name(b) for b in ("tensorflow", "jax", "torch", None, "mxnet")] == [
        "TensorFlow", "JAX", "PyTorch", "the framework", "the framework"]


def test_an_unknown_code_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"known codes: cpu_only_build, cuda_libs_missing, "):
        choose_remedy("gpu_on_fire")


@pytest.mark.parametrize(("backend", "data", "remedy"), [
    ("jax", {"source": "torch_dataloader", "num_workers": 8, "pin_memory": False},
     "DataLoader(dataset, batch_size=..., num_workers=16, persistent_workers=True)  # worker "
     "processes make the batches ahead of the training step; it ran with num_workers=8; "
     "50% of training time went to waiting for data: a pipeline that keeps up could make each "
     "epoch up to 2.0x faster"),
    ("torch", {"source": "torch_dataloader", "num_workers": 2, "pin_memory": False},
     "DataLoader(dataset, batch_size=..., num_workers=8, persistent_workers=True, "
     "pin_memory=True)  # worker processes make the batches ahead of the training step; it "
     "ran with num_workers=2, pin_memory=False; 50% of training time went to waiting for data: "
     "a pipeline that keeps up could make each epoch up to 2.0x faster"),
    ("tensorflow", {"source": "py_dataset", "workers": 1, "use_multiprocessing": False,
                    "max_queue_size": 32},
     "super().__init__(workers=8, use_multiprocessing=True, max_queue_size=32)  # in your "
     "PyDataset's __init__; it ran with workers=1, use_multiprocessing=False, "
     "max_queue_size=32; 50% of training time went to waiting for data: a pipeline that keeps "
     "up could make each epoch up to 2.0x faster"),
    ("jax", {"source": "generator"},
     "Rewrite the generator as a keras.utils.PyDataset (one batch per __getitem__) with "
     "super().__init__(workers=8, use_multiprocessing=True): fit pulls a generator's batches "
     "one at a time on the training thread; 50% of training time went to waiting for data: a "
     "pipeline that keeps up could make each epoch up to 2.0x faster"),
])
def test_the_input_bound_remedy_word_for_word(backend, data, remedy):
    facts = RunFacts(backend=backend, data=data)
    assert choose_remedy("input_bound", facts, {"wait_fraction": 0.5}) == remedy


def test_an_adapter_without_a_name_is_the_data_adapter():
    facts = RunFacts(backend="tensorflow", data={"source": "other"})
    assert choose_remedy("input_bound", facts, {}) == (
        "Check how the data adapter makes its batches: it should prepare them ahead of the "
        "training step, in background workers")


@pytest.mark.parametrize(("wait", "stakes"), [
    (0.99, "99% of training time went to waiting for data: nearly every epoch was spent "
           "waiting"),
    (0.98, "98% of training time went to waiting for data: a pipeline that keeps up could make "
           "each epoch up to 50.0x faster"),
])
def test_nearly_all_the_time_waiting_is_said_so_from_99_percent(wait, stakes):
    text = choose_remedy("input_bound", data_facts("jax", "generator"), {"wait_fraction": wait})
    assert text.endswith("on the training thread; " + stakes)


@pytest.mark.parametrize(("distribution", "start"), [
    ({"replicas": 2}, "tf.distribute.MirroredStrategy(devices=[...])  # your distribution "
                      "runs 2 replica(s): list the idle GPUs too"),
    ({"name": "MirroredStrategy", "replicas": 0}, "strategy = tf.distribute.MirroredStrategy()"),
    ({"name": "MirroredStrategy"}, "strategy = tf.distribute.MirroredStrategy()"),
])
def test_the_spread_remedy_names_a_distribution_only_with_its_replicas(distribution, start):
    facts = RunFacts(backend="tensorflow", distribution=distribution)
    assert choose_remedy("process_not_on_gpu", facts, TWO_GPUS_ONE_IDLE).startswith(start)


def test_the_distribution_and_the_settings_that_keep_the_cpu_are_read_back():
    info = {"backend": "tensorflow", "distribution": {"name": "MirroredStrategy", "replicas": 2},
            "placement": {"cpu_settings": {"CUDA_VISIBLE_DEVICES": "-1"}}}
    facts = RunFacts.from_run(RunRecord.from_json(info))
    assert facts.distribution == {"name": "MirroredStrategy", "replicas": 2}
    assert facts.cpu_settings == {"CUDA_VISIBLE_DEVICES": "-1"}
    assert RunFacts.from_run(RunRecord(distribution={})).distribution is None
