"""Why a GPU was not used: the cause codes, each with a message and a remedy a user can paste.

One type serves `gpu-watch doctor` (checks before training) and `GPUWatch` (what training showed),
so a finding reads the same wherever it appears. Each code belongs to one of the four groups of
reasons people meet in practice (the installation, the driver, GPU resources, and code that forces
the CPU), or to `other` for what none of them covers (hidden GPUs, the input pipeline, other
processes, how well the GPU was used).

A remedy is the line a user pastes, so it must fit their setup: the catalogue holds, besides each
code's default remedy, variants per Keras backend, per input pipeline and per placement finding,
and :func:`choose_remedy` picks one from a run's :class:`RunFacts`. Where the facts do not pin the
remedy down, the chosen text says what to check instead of guessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpu_watch.runlog import RunRecord

INSTALL = "install"
DRIVER = "driver"
RESOURCES = "resources"
CODE = "code"
OTHER = "other"

# The order in which a user must fix what blocks the GPU: without a driver nothing else can be
# checked, then what is installed, then code and settings, then resources.
FIX_ORDER = (DRIVER, INSTALL, CODE, RESOURCES, OTHER)

ERROR = "error"  # stops the GPU from being used
WARNING = "warning"  # the GPU is used, but poorly or not by this process's measure
INFO = "info"

BACKENDS = ("tensorflow", "jax", "torch")
FRAMEWORK_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
# What feeds `fit`, named after the Keras data adapter that reads it.
DATA_SOURCES = ("arrays", "tf_data", "py_dataset", "generator", "torch_dataloader", "grain",
                "other", "unknown")


@dataclass(frozen=True)
class CauseSpec:
    """What every instance of a cause code shares.

    Attributes:
        group: One of the four groups of reasons (or "other").
        severity: "error", "warning" or "info": the code's default, which a rule may override
            for a finding that means less (see `process_not_on_gpu`).
        message: The default one-line message.
        remedy: The default remedy: what fits when nothing more is known.
        variants: Remedies for particular setups, keyed as :func:`choose_remedy` looks them up (a
            backend, a data source, "<backend>:<finding>"); they may hold `str.format` fields
            that :func:`choose_remedy` fills from the run's facts.
    """

    group: str
    severity: str
    message: str
    remedy: str
    variants: Mapping[str, str] = field(default_factory=dict)


_CUDA_JAX = ('pip install -U "jax[cuda12]"  # "jax[cuda13]" for a CUDA 13 driver; the plugin '
             "brings its CUDA libraries")
_KERAS_CPU = '`with keras.device("cpu")`'

CATALOGUE: dict[str, CauseSpec] = {
    "cpu_only_build": CauseSpec(
        INSTALL, ERROR,
        "The installed TensorFlow is a CPU-only build.",
        'pip uninstall -y tensorflow-cpu && pip install "tensorflow[and-cuda]"',
        {
            "jax": _CUDA_JAX + ": plain `pip install jax` runs on the CPU only",
            "torch": "pip install --force-reinstall torch --index-url "
                     "https://download.pytorch.org/whl/cu126  # a CUDA build of torch; pick the "
                     "CUDA version your driver supports at pytorch.org/get-started",
        },
    ),
    "cuda_libs_missing": CauseSpec(
        INSTALL, ERROR,
        "TensorFlow was built with CUDA but cannot load the CUDA/cuDNN libraries.",
        'pip install "tensorflow[and-cuda]"',
        {
            "jax": _CUDA_JAX + "; JAX_PLATFORMS, if set, must include cuda",
            "torch": "python -c \"import torch; torch.cuda.init()\"  # prints why CUDA cannot "
                     "start (often a driver older than torch's CUDA); the CUDA wheels of torch "
                     "bring their own libraries: pip install --force-reinstall torch",
        },
    ),
    "no_nvidia_driver": CauseSpec(
        DRIVER, ERROR,
        "No NVIDIA driver is loaded on this machine, so no GPU can be used.",
        "Install the NVIDIA driver for your GPU (e.g. `sudo apt install nvidia-driver-550`), "
        "reboot, and check that `nvidia-smi` lists the GPU; on a cloud VM pick a GPU instance.",
    ),
    "driver_too_old": CauseSpec(
        DRIVER, ERROR,
        "The NVIDIA driver is too old for the CUDA version TensorFlow was built with.",
        "Upgrade the NVIDIA driver to one that supports the build's CUDA version "
        "(see `nvidia-smi` for the driver's CUDA version), or install an older TensorFlow.",
        {
            "jax": "Upgrade the NVIDIA driver to one that supports the CUDA version of the jax "
                   "CUDA plugin (`nvidia-smi` shows the driver's), or install the plugin for the "
                   'driver\'s CUDA: pip install -U "jax[cuda12]"',
            "torch": "Upgrade the NVIDIA driver (`nvidia-smi` shows the CUDA version it "
                     "supports), or install a torch built for that CUDA: pip install "
                     "--force-reinstall torch --index-url https://download.pytorch.org/whl/cu126"
                     "  # cu<version> of the driver's CUDA, e.g. cu118",
        },
    ),
    "gpu_memory_contention": CauseSpec(
        RESOURCES, WARNING,
        "Other processes hold a large share of the GPU's memory.",
        "Stop the other processes (`nvidia-smi` lists them) or pick a free GPU with "
        "`CUDA_VISIBLE_DEVICES=<index>`.",
    ),
    "gpu_memory_limited": CauseSpec(
        RESOURCES, WARNING,
        "TensorFlow's GPU memory is limited by configuration.",
        "tf.config.experimental.set_memory_growth(tf.config.list_physical_devices('GPU')[0], "
        "True)  # and remove or raise any LogicalDeviceConfiguration(memory_limit=...)",
        {
            "jax": "unset XLA_PYTHON_CLIENT_MEM_FRACTION  # or raise it, e.g. "
                   "XLA_PYTHON_CLIENT_MEM_FRACTION=.9; JAX takes 75% of the GPU's memory "
                   "by default",
            "torch": "torch.cuda.set_per_process_memory_fraction(1.0)  # or remove the call "
                     "that set a lower fraction",
        },
    ),
    "forced_cpu_placement": CauseSpec(
        CODE, ERROR,
        "The training step's compute was placed on the CPU although a GPU is visible.",
        f"Remove {_KERAS_CPU} around model building or fit, and any device scope or setting "
        "of your framework that picks the CPU.",
        {
            # Training began inside a CPU device scope (keras.device is tf.device there).
            "tensorflow:scope": f"Remove {_KERAS_CPU} or `with tf.device(\"/CPU:0\")` around "
                                "fit and model building: training began inside the device "
                                "scope {scope}",
            "tensorflow:setting": "Remove tf.config.set_visible_devices([], 'GPU'): TensorFlow "
                                  "finds the GPU but was told to use none",
            "tensorflow": f"Look for {_KERAS_CPU} or `with tf.device(\"/CPU:0\")` around model "
                          "building or fit, and for tf.config.set_visible_devices([], 'GPU') "
                          "or CUDA_VISIBLE_DEVICES set in code; remove them",
            # keras.device is jax.default_device there: one fact cannot tell them apart.
            "jax:scope": f"Remove {_KERAS_CPU} or `with jax.default_device(...)` around fit "
                         "and model building, and any jax.config.update(\"jax_default_device\", "
                         "...): training began with JAX's default device set to {scope}",
            "jax:setting": "unset JAX_PLATFORMS  # and remove any jax.config.update("
                           "\"jax_platforms\", ...): set to {setting}, it keeps JAX from "
                           "starting its GPU backend",
            "jax": f"Look for {_KERAS_CPU} or `with jax.default_device(...)` around model "
                   "building, jax.config.update(\"jax_default_device\", ...) and "
                   "JAX_PLATFORMS=cpu; remove them",
            "torch:scope": f"Remove {_KERAS_CPU} around fit and model building: training "
                           "began with Keras' torch device set to {scope}",
            "torch:setting": "unset KERAS_TORCH_DEVICE  # it is {setting}: Keras then puts "
                             "every tensor there",
            "torch": f"Look for {_KERAS_CPU} around model building, KERAS_TORCH_DEVICE=cpu, "
                     "torch.set_default_device(\"cpu\") or `with torch.device(\"cpu\")`, and "
                     "model.to(\"cpu\"); remove them",
        },
    ),
    "gpus_hidden": CauseSpec(
        OTHER, ERROR,
        "The GPUs are hidden from this process.",
        "unset CUDA_VISIBLE_DEVICES  # or set it to the GPUs to use, e.g. "
        "CUDA_VISIBLE_DEVICES=0; and remove tf.config.set_visible_devices([], 'GPU')",
        {
            "jax": "unset CUDA_VISIBLE_DEVICES  # or set it to the GPUs to use, e.g. "
                   "CUDA_VISIBLE_DEVICES=0, before JAX starts",
            "torch": "unset CUDA_VISIBLE_DEVICES  # or set it to the GPUs to use, e.g. "
                     "CUDA_VISIBLE_DEVICES=0, before torch initialises CUDA",
        },
    ),
    "input_bound": CauseSpec(
        OTHER, WARNING,
        "The training loop spent much of its time waiting for data, leaving the GPU idle.",
        "Make the input pipeline prepare batches ahead of the training step: a tf.data.Dataset "
        "wants .prefetch(tf.data.AUTOTUNE) and map(..., num_parallel_calls=tf.data.AUTOTUNE), "
        "a keras.utils.PyDataset super().__init__(workers=8, use_multiprocessing=True), a torch "
        "DataLoader num_workers=8, and a Python generator is best rewritten as a PyDataset "
        "with workers",
        {
            "tf_data": "dataset = dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)"
                       ".cache().prefetch(tf.data.AUTOTUNE)  # cache() only if the data fits "
                       "in memory{more}",
            "tf_data:generator": "Rewrite the generator behind Dataset.from_generator as a "
                                 "keras.utils.PyDataset with super().__init__(workers=8, "
                                 "use_multiprocessing=True), or build the tf.data pipeline "
                                 "from files or tensors: a generator makes one element at a "
                                 "time under Python's GIL, which prefetch cannot speed up"
                                 "{more}",
            "py_dataset": "super().__init__(workers={workers}, use_multiprocessing=True, "
                          "max_queue_size={queue})  # in your PyDataset's __init__{more}",
            "generator": "Rewrite the generator as a keras.utils.PyDataset (one batch per "
                         "__getitem__) with super().__init__(workers=8, "
                         "use_multiprocessing=True): fit pulls a generator's batches one at a "
                         "time on the training thread{more}",
            "torch_dataloader": "DataLoader(dataset, batch_size=..., num_workers={workers}, "
                                "persistent_workers=True{pin})  # worker processes make the "
                                "batches ahead of the training step{more}",
            "grain": "dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=8))"
                     "  # on a grain IterDataset; a grain.DataLoader takes worker_count=8"
                     "{more}",
            "arrays": "model.compile(..., steps_per_execution=32)  # or a larger batch_size "
                      "in fit: in-memory arrays are sliced batch by batch, and small batches "
                      "leave the GPU waiting between steps{more}",
            "torch:arrays": "model.fit(x, y, batch_size=...)  # a larger batch: in-memory "
                            "arrays are sliced batch by batch, and small batches leave the "
                            "GPU waiting between steps{more}",
            "other": "Check how {adapter} makes its batches: it should prepare them ahead of "
                     "the training step, in background workers{more}",
        },
    ),
    "slow_callbacks": CauseSpec(
        OTHER, WARNING,
        "The training loop spent much of its time between steps in callbacks and Keras' own "
        "bookkeeping, leaving the GPU idle.",
        "Make the batch hooks cheap or rare: TensorBoard(update_freq='epoch'), fit(verbose=2) "
        "instead of a progress bar per batch, and a callback of your own that works every N "
        "batches (if batch % N == 0) or in on_epoch_end",
        {
            "named": "Make the batch hooks of {callbacks} cheap or rare: work every N batches "
                     "(if batch % N == 0) or in on_epoch_end instead; Keras' own: "
                     "TensorBoard(update_freq='epoch'), fit(verbose=2) for the progress bar",
        },
    ),
    # Two findings share this code. A GPU busy with other processes while training ran on the CPU
    # is an error: this training never used it. One GPU idle while others of this training
    # worked is raised as a warning (see `verdict.judge`): training does use a GPU, and the
    # remedy spreads it over the idle ones.
    "process_not_on_gpu": CauseSpec(
        OTHER, ERROR,
        "The GPU was busy, but not with this process: this training does not use it.",
        "Check the placement report in run.json; the GPU's load comes from another process "
        "(`nvidia-smi` lists them).",
        {
            # One GPU idle while others work for this training: spread it, or hide the idle one.
            "tensorflow:spread": "strategy = tf.distribute.MirroredStrategy()  # build and "
                                 "compile the model under `with strategy.scope():` to train on "
                                 "every visible GPU; or set CUDA_VISIBLE_DEVICES to the GPUs "
                                 "you train on",
            "tensorflow:distributed": "tf.distribute.MirroredStrategy(devices=[...])  # your "
                                      "{name} runs {replicas} replica(s): list the idle GPUs "
                                      "too, or hide them with CUDA_VISIBLE_DEVICES",
            "jax:spread": "keras.distribution.set_distribution("
                          "keras.distribution.DataParallel())  # before building the model: "
                          "each batch is split over every visible GPU; or set "
                          "CUDA_VISIBLE_DEVICES to the GPUs you train on",
            "jax:distributed": "keras.distribution.DataParallel("
                               "devices=keras.distribution.list_devices(\"gpu\"))  # your "
                               "{name} spans {replicas} device(s): include the idle GPUs, or "
                               "hide them with CUDA_VISIBLE_DEVICES",
            "torch:spread": "torchrun --nproc_per_node=<GPUs> train.py  # Keras' fit on torch "
                            "trains on one GPU per process: run one process per GPU, each "
                            "with torch.cuda.set_device(local_rank) and DistributedDataParallel "
                            "(keras.io/guides/distributed_training_with_torch); or set "
                            "CUDA_VISIBLE_DEVICES to the GPU you train on",
            "torch:distributed": "torch.cuda.set_device(int(os.environ[\"LOCAL_RANK\"]))  # in "
                                 "every process, before building the model: {replicas} "
                                 "processes run, and each needs a GPU of its own",
            "spread": "Spread training over every GPU with your framework's data parallelism "
                      "(tf.distribute.MirroredStrategy, keras.distribution.DataParallel on "
                      "JAX, torchrun with DistributedDataParallel on torch), or set "
                      "CUDA_VISIBLE_DEVICES to the GPUs you train on",
        },
    ),
    "process_not_attributable": CauseSpec(
        OTHER, INFO,
        "NVML lists processes by host PID, and this process (in a container's PID namespace) "
        "is not among them: device-level figures are shown instead.",
        "Nothing to fix: run with `--pid=host` (docker) if you need per-process figures.",
    ),
    "backend_not_installed": CauseSpec(
        INSTALL, ERROR,
        "The framework of the Keras backend is not installed or cannot be imported.",
        'pip install "gpu-watch[tensorflow]"  # or gpu-watch[jax], gpu-watch[torch]; or choose '
        "an installed backend with KERAS_BACKEND",
        {
            "tensorflow": 'pip install "tensorflow[and-cuda]" && pip install '
                          '"gpu-watch[tensorflow]"  # or train with a backend that is installed: '
                          "export KERAS_BACKEND=<its name>",
            "jax": 'pip install -U "jax[cuda12]" && pip install "gpu-watch[jax]"  # '
                   '"jax[cuda13]" for a CUDA 13 driver',
            "torch": "pip install torch --index-url https://download.pytorch.org/whl/cu126 && "
                     'pip install "gpu-watch[torch]"  # cu<version> of the CUDA your driver '
                     "supports",
        },
    ),
    "gpu_not_supported": CauseSpec(
        INSTALL, ERROR,
        "The framework build has no support for this GPU's compute capability.",
        "Install a release of the framework that supports the GPU's compute capability (see "
        "its install page), or train on a GPU the build supports.",
        {
            "tensorflow": 'pip install -U "tensorflow[and-cuda]"  # a release built for this '
                          "GPU's compute capability (TensorFlow's start-up message names the "
                          "minimum it needs), or train on a newer GPU",
            "jax": 'pip install -U "jax[cuda12]"  # a plugin built for this GPU\'s compute '
                   "capability, or train on a newer GPU",
            "torch": "pip install --force-reinstall torch --index-url "
                     "https://download.pytorch.org/whl/cu126  # a build whose "
                     "torch.cuda.get_arch_list() includes this GPU's sm_XY",
        },
    ),
    "cuda_init_failed": CauseSpec(
        DRIVER, ERROR,
        "The framework's CUDA build could not start CUDA on the GPU that the driver sees.",
        "Run `nvidia-smi`; then read the framework's own message in the evidence (a driver "
        "update without a reboot, or CUDA_VISIBLE_DEVICES changed after start-up, cause this).",
        {
            "tensorflow": "python -c \"import tensorflow as tf; print(tf.config."
                          "list_physical_devices('GPU'))\"  # prints why CUDA cannot start; "
                          "then `nvidia-smi`, and reboot after a driver update",
            "jax": "python -c \"import jax; print(jax.devices('cuda'))\"  # prints why CUDA "
                   "cannot start; then `nvidia-smi`, and reboot after a driver update",
            "torch": "python -c \"import torch; torch.cuda.init()\"  # prints why CUDA cannot "
                     "start; then `nvidia-smi`, and reboot after a driver update",
        },
    ),
    "allocator_misconfigured": CauseSpec(
        RESOURCES, WARNING,
        "A GPU memory allocator setting is invalid, ignored, or meant only for debugging.",
        "unset TF_GPU_ALLOCATOR XLA_PYTHON_CLIENT_ALLOCATOR  # or set a value the framework "
        "documents",
        {
            "tensorflow": "unset TF_GPU_ALLOCATOR  # or TF_GPU_ALLOCATOR=cuda_malloc_async, the "
                          "one other value TensorFlow documents",
            "jax": "unset XLA_PYTHON_CLIENT_ALLOCATOR XLA_PYTHON_CLIENT_MEM_FRACTION  # or "
                   "values JAX documents (platform, default; a fraction between 0 and 1)",
            "torch": "unset PYTORCH_CUDA_ALLOC_CONF  # if set: torch ignores the allocator "
                     "settings of other frameworks",
        },
    ),
    "nvml_unavailable": CauseSpec(
        OTHER, WARNING,
        "NVML cannot be read, so GPU utilization and memory cannot be measured.",
        "Check that `nvidia-smi` works for this user; in a container, start it with "
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility (or `--gpus all`).",
    ),
    "low_sm_activity": CauseSpec(
        OTHER, WARNING,
        "The GPU looked busy by its utilization, but most of its SMs sat idle: each step "
        "launches kernels too small to fill the GPU (a launch-bound or too-small workload).",
        "Give each step more work: a larger batch_size; model.compile(..., "
        "steps_per_execution=32) on TensorFlow and JAX, jit_compile=True on PyTorch; "
        "preprocessing moved out of the step into the input pipeline.",
        {
            "tensorflow": "Give each step more work: a larger batch_size; model.compile(..., "
                          "steps_per_execution=32) runs several steps per call; preprocessing "
                          "moved out of the model into the tf.data pipeline (map with "
                          "num_parallel_calls=tf.data.AUTOTUNE).",
            "jax": "Give each step more work: a larger batch_size; model.compile(..., "
                   "steps_per_execution=32) runs several steps per call; preprocessing moved "
                   "out of the model into the input pipeline.",
            "torch": "Give each step more work: a larger batch_size; model.compile(..., "
                     "jit_compile=True) fuses small kernels with torch.compile (the PyTorch "
                     "backend has no steps_per_execution); preprocessing moved out of the model "
                     "into a DataLoader's workers.",
        },
    ),
    "tensor_cores_unused": CauseSpec(
        OTHER, INFO,
        "The GPU's tensor cores sat idle while float32 math ran on its other cores.",
        'keras.mixed_precision.set_global_policy("mixed_bfloat16")  # before building the '
        "model: matrix products then run on the tensor cores",
    ),
    "gpu_shared": CauseSpec(
        RESOURCES, WARNING,
        "Other processes used the GPU while this training ran.",
        "Train on a GPU no one else uses: `nvidia-smi` lists each GPU's processes; pick a "
        "free one with CUDA_VISIBLE_DEVICES=<index>, or stop the processes named here.",
    ),
}

CODES = tuple(CATALOGUE)


@dataclass(frozen=True)
class Cause:
    """One reason a GPU was not used (or not used well), with evidence and a remedy.

    Attributes:
        code: A code from :data:`CATALOGUE`, e.g. ``"no_nvidia_driver"``.
        message: One line that says what was found, with the specifics.
        remedy: What to do, as a command or a line of code a user can paste.
        severity: ``"error"``, ``"warning"`` or ``"info"``.
        group: ``"install"``, ``"driver"``, ``"resources"``, ``"code"`` or ``"other"``.
        evidence: The facts behind it (versions, PIDs, MiB, variable values, ops).
    """

    code: str
    message: str
    remedy: str
    severity: str
    group: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready record written to `run.json` and printed by `doctor --json`."""
        return {
            "code": self.code,
            "severity": self.severity,
            "group": self.group,
            "message": self.message,
            "remedy": self.remedy,
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cause:
        """Read back a record written by :meth:`to_dict`."""
        spec = CATALOGUE.get(data["code"])
        return cls(
            code=data["code"],
            message=data.get("message") or (spec.message if spec else data["code"]),
            remedy=data.get("remedy") or (spec.remedy if spec else ""),
            severity=data.get("severity") or (spec.severity if spec else WARNING),
            group=data.get("group") or (spec.group if spec else OTHER),
            evidence=dict(data.get("evidence") or {}),
        )


@dataclass(frozen=True)
class RunFacts:
    """What a run knows about the user's setup that decides which remedy fits.

    Attributes:
        backend: The Keras backend ("tensorflow", "jax", "torch"); None when unknown.
        data: What feeds `fit`, as run.json's ``data`` section records it: ``source`` (one of
            :data:`DATA_SOURCES`), ``adapter`` (the Keras data adapter's class) and the
            pipeline's settings (``workers``, ``num_workers``, ``transformations``, ...).
        distribution: The distribution setup, e.g. ``{"name": "MirroredStrategy",
            "replicas": 2}``; None without one.
        device_scope: The device scope training began in (e.g. ``"cpu:0"``); None without one.
        cpu_settings: Settings found that keep the framework on the CPU, by name, e.g.
            ``{"JAX_PLATFORMS": "cpu"}``.
        cpu_variables: Paths of model variables the placement check found on the CPU (the
            evidence a message names).
    """

    backend: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    distribution: Mapping[str, Any] | None = None
    device_scope: str | None = None
    cpu_settings: Mapping[str, str] = field(default_factory=dict)
    cpu_variables: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        source = self.data.get("source", "unknown")
        if source not in DATA_SOURCES:
            raise ValueError(f"data source must be one of {', '.join(DATA_SOURCES)}, "
                             f"got {source!r}")

    @property
    def data_source(self) -> str:
        """One of :data:`DATA_SOURCES`."""
        return _data_source(self)

    @property
    def cpu_scope(self) -> bool:
        """Training began inside a device scope that names the CPU."""
        return _cpu_scope(self)

    @classmethod
    def from_run(cls, record: RunRecord) -> RunFacts:
        """The facts recorded in a run's `run.json` (its ``backend``, ``data``,
        ``distribution`` and ``placement`` sections)."""
        placement = record.placement or {}
        data = dict(record.data or {})
        if data.get("source") not in DATA_SOURCES:
            data["source"] = "unknown"
        return cls(backend=record.backend, data=data,
                   distribution=record.distribution or None,
                   device_scope=placement.get("device_scope"),
                   cpu_settings=dict(placement.get("cpu_settings") or {}),
                   cpu_variables=tuple(placement.get("cpu_variable_examples") or ()))


# The rules behind RunFacts' properties, in plain functions where the mutation run reaches them.
def _data_source(facts: RunFacts) -> str:
    return facts.data.get("source", "unknown")


def _cpu_scope(facts: RunFacts) -> bool:
    return bool(facts.device_scope) and "cpu" in str(facts.device_scope).lower()


def framework_name(backend: str | None) -> str:
    """"jax" -> "JAX"; the framework's name as users write it ("the framework" when unknown)."""
    return FRAMEWORK_NAMES.get(backend or "", "the framework")


def choose_remedy(code: str, facts: RunFacts | None = None,
                  evidence: Mapping[str, Any] | None = None) -> str:
    """The remedy for `code` that fits the run's setup.

    A pure function of its arguments: the catalogue's variant for the backend, the input
    pipeline and what the placement check found, filled in with the run's own figures; the
    code's default remedy where no variant fits.

    Args:
        code: A code from :data:`CATALOGUE`.
        facts: The run's setup; None for the default remedy.
        evidence: The cause's evidence (``wait_fraction`` for `input_bound`, ``callbacks``
            for `slow_callbacks`, ``busy_gpus`` when other GPUs of this training worked for
            `process_not_on_gpu`).

    Raises:
        ValueError: For a code not in the catalogue.
    """
    spec = CATALOGUE.get(code)
    if spec is None:
        raise ValueError(f"unknown cause code {code!r}; known codes: {', '.join(CODES)}")
    if facts is None:
        return spec.remedy
    evidence = evidence or {}
    backend = facts.backend if facts.backend in BACKENDS else None
    if code == "forced_cpu_placement":
        return _forced_cpu_remedy(spec, backend, facts)
    if code == "input_bound":
        return _input_bound_remedy(spec, backend, facts, evidence.get("wait_fraction"))
    if code == "slow_callbacks" and evidence.get("callbacks"):
        names = [c.get("name") for c in evidence["callbacks"] if isinstance(c, Mapping)]
        return spec.variants["named"].format(callbacks=", ".join(str(n) for n in names))
    if code == "process_not_on_gpu" and evidence.get("busy_gpus"):
        return _spread_remedy(spec, backend, facts)
    return spec.variants.get(backend or "", spec.remedy)


def _forced_cpu_remedy(spec: CauseSpec, backend: str | None, facts: RunFacts) -> str:
    if backend is None:
        return spec.remedy
    if facts.cpu_settings:  # each backend has one such setting; see placement's probes
        value = next(iter(facts.cpu_settings.values()))
        return spec.variants[f"{backend}:setting"].format(setting=repr(value))
    if facts.cpu_scope:
        return spec.variants[f"{backend}:scope"].format(scope=facts.device_scope)
    return spec.variants[backend]  # where the CPU came from is unknown: say what to look for


def _input_bound_remedy(spec: CauseSpec, backend: str | None, facts: RunFacts,
                        wait_fraction: float | None) -> str:
    data = facts.data
    source = facts.data_source
    notes: list[str] = []
    fields: dict[str, Any] = {"adapter": data.get("adapter") or "the data adapter"}
    if source == "tf_data":
        steps = data.get("transformations")
        if steps and "from_generator" in steps:
            source = "tf_data:generator"
        elif steps:
            missing = [name for name, there in (("prefetch", "prefetch" in steps),
                                                ("num_parallel_calls", "map" not in steps))
                       if not there]
            if missing:
                notes.append(f"missing from your pipeline: {', '.join(missing)}")
    elif source == "py_dataset":
        workers = data.get("workers")
        fields["workers"] = _more_workers(workers)
        fields["queue"] = max(data.get("max_queue_size") or 10, 2 * fields["workers"])
        if workers is not None:
            notes.append(f"it ran with workers={workers}, use_multiprocessing="
                         f"{data.get('use_multiprocessing')}, max_queue_size="
                         f"{data.get('max_queue_size')}")
    elif source == "torch_dataloader":
        workers = data.get("num_workers")
        fields["workers"] = _more_workers(workers)
        # Pinned host memory speeds up copies to a CUDA device only torch itself makes.
        fields["pin"] = ", pin_memory=True" if backend == "torch" else ""
        if workers is not None:
            ran = f"it ran with num_workers={workers}"
            if backend == "torch":
                ran += f", pin_memory={data.get('pin_memory')}"
            notes.append(ran)
    elif source == "arrays" and backend == "torch":
        source = "torch:arrays"  # torch's trainer takes no steps_per_execution
    if wait_fraction is not None:
        notes.append(_stakes(wait_fraction))
    more = "".join(f"; {note}" for note in notes)
    template = spec.variants.get(source)
    if template is None:  # an unknown pipeline: the default lists what to check for each kind
        return spec.remedy + more
    return template.format(more=more, **fields)


def _more_workers(workers: Any) -> int:
    """More workers than now: 8, or twice as many when 8 are there already."""
    return 8 if not isinstance(workers, int) or workers < 8 else 2 * workers


def _stakes(wait_fraction: float) -> str:
    share = f"{wait_fraction:.0%} of training time went to waiting for data"
    if wait_fraction >= 0.99:
        return share + ": nearly every epoch was spent waiting"
    return (f"{share}: a pipeline that keeps up could make each epoch up to "
            f"{1 / (1 - wait_fraction):.1f}x faster")


def _spread_remedy(spec: CauseSpec, backend: str | None, facts: RunFacts) -> str:
    dist = facts.distribution
    if backend is None:
        return spec.variants["spread"]
    if dist and (dist.get("replicas") or 0) >= 1:
        return spec.variants[f"{backend}:distributed"].format(
            name=dist.get("name") or "distribution", replicas=dist.get("replicas"))
    return spec.variants[f"{backend}:spread"]


def blocks_gpu(finding: Cause) -> bool:
    """Whether a finding keeps the GPU from being used: an error, or a warning whose evidence
    says it blocks the GPU once an earlier blocker is fixed (`blocks_gpu`: CUDA libraries
    missing on a machine that has no driver yet)."""
    return finding.severity == ERROR or finding.evidence.get("blocks_gpu") is True


def fix_rank(finding: Cause) -> int:
    """Where a finding comes in `FIX_ORDER` (by its code's group)."""
    spec = CATALOGUE.get(finding.code)
    group = spec.group if spec is not None else OTHER
    return FIX_ORDER.index(group) if group in FIX_ORDER else len(FIX_ORDER)


def cause(code: str, message: str | None = None, remedy: str | None = None,
          severity: str | None = None, facts: RunFacts | None = None,
          **evidence: Any) -> Cause:
    """Build a :class:`Cause` for `code`, with the catalogue's text unless more specific text is
    given. With `facts`, the remedy is the one :func:`choose_remedy` picks for that setup.
    Other keyword arguments become the evidence."""
    spec = CATALOGUE.get(code)
    if spec is None:
        raise ValueError(f"unknown cause code {code!r}; known codes: {', '.join(CODES)}")
    return Cause(
        code=code,
        message=message or spec.message,
        remedy=remedy or choose_remedy(code, facts, evidence),
        severity=severity or spec.severity,
        group=spec.group,
        evidence=evidence,
    )
