"""Where did the first training step run? One probe per Keras backend.

TensorFlow: `tf.debugging.set_log_device_placement` logs nothing once the eager context exists,
so the probe switches the context's graph collection on for step 0 only and reads the device of
every node in the step's partition graphs (on a GPU, Keras 3 compiles with XLA by default and the
compute shows up as XLA cluster ops). Cheap checks back it up: the devices of the model's variables
and of the step's outputs, and TensorFlow's GPU allocator peak. JAX and torch: the devices of the
model's arrays and tensors. After step 0 a probe costs nothing.

As training begins, on the training thread (device scopes are per thread), a probe also records
what decides which remedy fits the user: the device scope fit runs in, settings that keep the
framework on the CPU and the distribution setup. (What feeds `fit` is read from Keras' private
state: `gpu_watch.training.keras_internals`.)
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from typing import Any

from gpu_watch.errors import GPUWatchWarning, swallowed
from gpu_watch.training import keras_internals

# Nodes that move or hold data rather than compute: their device says nothing about where the
# model's math ran (variables and the input pipeline live on the CPU in healthy GPU runs too).
_BOOKKEEPING_OPS = frozenset({
    "_Arg", "_Retval", "_DeviceArg", "_DeviceRetval", "Const", "NoOp", "Identity", "IdentityN",
    "Placeholder", "StopGradient", "VarHandleOp", "ReadVariableOp", "AssignVariableOp",
    "AssignAddVariableOp", "AssignSubVariableOp", "VarIsInitializedOp", "DestroyResourceOp",
    "_Send", "_Recv", "_HostSend", "_HostRecv", "Shape", "ShapeN", "Size", "Rank",
    "IteratorGetNext", "IteratorGetNextSync", "IteratorGetNextAsOptional", "OptionalGetValue",
    "OptionalHasValue", "MultiDeviceIteratorGetNextFromShard", "AnonymousIteratorV3",
    "MakeIterator", "DatasetToGraphV2", "PartitionedCall", "StatefulPartitionedCall",
})
_XLA_OPS = frozenset({"_XlaCompile", "_XlaRun", "XlaLaunch", "_XlaMerge", "XlaLaunchV2"})
_EXAMPLES = 8
_GPU_PLATFORMS = ("cuda", "gpu", "rocm")


def device_type(device: str) -> str:
    """"/job:localhost/replica:0/task:0/device:GPU:0" -> "GPU"; "" -> "unplaced"."""
    if not device:
        return "unplaced"
    tail = device.rsplit("/", 1)[-1]
    if tail.startswith("device:"):
        tail = tail[len("device:"):]
    return tail.split(":", 1)[0].upper()


def summarize_ops(nodes: list[tuple[str, str, str]]) -> dict[str, Any]:
    """Count compute ops by device type from (name, op, device) triples of a step's graphs."""
    counts: Counter[str] = Counter()
    xla: Counter[str] = Counter()
    cpu_examples: list[str] = []
    for _name, op, device in nodes:
        if op in _BOOKKEEPING_OPS:
            continue
        kind = device_type(device)
        counts[kind] += 1
        if op in _XLA_OPS:
            xla[kind] += 1
        if kind == "CPU" and op not in cpu_examples and len(cpu_examples) < _EXAMPLES:
            cpu_examples.append(op)
    return {"op_counts": dict(counts), "xla_op_counts": dict(xla),
            "cpu_compute_examples": cpu_examples}


class Probe:
    """The interface of a backend's placement probe (and the probe of an unknown backend)."""

    backend = "unknown"

    def framework_gpus(self) -> list[str] | None:
        """Names of the GPUs the framework sees; None when it cannot tell."""
        return None

    def cuda_build(self) -> bool | None:
        """Whether the framework was built with CUDA; None when unknown."""
        return None

    def framework_version(self) -> str | None:
        """The framework's version."""
        return None

    def rank(self) -> tuple[int, int]:
        """(this process's rank, number of processes) under multi-worker training."""
        return _tf_config_rank()

    def before_training(self, model: Any) -> dict[str, Any] | None:
        """Called as training begins, on the training thread: record the device scope and the
        settings that keep the framework on the CPU (for the step-0 report), and return the
        distribution setup (None without one)."""
        self._unread: dict[str, str] = {}
        self._scope = {"device_scope": self._device_scope(),
                       "cpu_settings": self._cpu_settings()}
        self._scope.update(self._unread)  # why a read of Keras' state found nothing
        return self.distribution(model)

    def distribution(self, model: Any) -> dict[str, Any] | None:
        """The distribution setup: its ``name`` and ``replicas`` (devices or processes)."""
        return None

    def _device_scope(self) -> str | None:
        return None

    def _cpu_settings(self) -> dict[str, str]:
        return {}

    def before_first_step(self) -> None:
        """Called right before step 0."""

    def after_first_step(self, model: Any, logs: dict | None) -> dict[str, Any]:
        """Called right after step 0; returns the placement report."""
        return self._report("variables", *variable_devices(model, self._device_of))

    def _device_of(self, variable: Any) -> str | None:
        return None

    def _report(self, method: str, variables: dict[str, int], cpu_variables: list[str] = (),
                ops: dict[str, Any] | None = None) -> dict[str, Any]:
        ops = ops or {"op_counts": {}, "xla_op_counts": {}, "cpu_compute_examples": []}
        if ops["op_counts"]:
            compute_on_gpu: bool | None = ops["op_counts"].get("GPU", 0) > 0
        elif variables:
            compute_on_gpu = any(kind == "GPU" for kind in variables)
        else:
            compute_on_gpu = None
        scope = getattr(self, "_scope", None) or {"device_scope": None, "cpu_settings": {}}
        return {"backend": self.backend, "method": method, "compute_on_gpu": compute_on_gpu,
                **ops, "variable_devices": variables, "cpu_variable_examples": list(cpu_variables),
                **scope}


def variable_devices(model: Any, device_of, values: list | None = None
                     ) -> tuple[dict[str, int], list[str]]:
    """Count the model's trainable variables by device type, and name a few on the CPU.

    Args:
        model: The model.
        device_of: Gives "GPU", "CPU" or None for a variable (or for one of `values`).
        values: What to ask `device_of` about in place of the variables (JAX's training
            state), in the variables' order.
    """
    variables = list(getattr(model, "trainable_variables", None) or [])
    counts: Counter[str] = Counter()
    on_cpu: list[str] = []
    for i, item in enumerate(variables if values is None else values):
        try:
            device = device_of(item)
        except Exception as exc:  # a variable of an unexpected kind must not end the check
            swallowed("placement.device_of", exc)  # it is left out of the counts
            device = None
        if device is None:
            continue
        counts[device] += 1
        if device == "CPU" and len(on_cpu) < _EXAMPLES and i < len(variables):
            on_cpu.append(str(getattr(variables[i], "path", None) or f"variable {i}"))
    return dict(counts), on_cpu


class TensorFlowProbe(Probe):
    """Step-0 placement from the eager context's run metadata."""

    backend = "tensorflow"

    def __init__(self) -> None:
        import tensorflow as tf
        from tensorflow.python.eager import context

        self._tf = tf
        self._context = context
        self._collecting = False

    def framework_gpus(self) -> list[str] | None:
        return [d.name for d in self._tf.config.list_physical_devices("GPU")]

    def cuda_build(self) -> bool | None:
        return bool(self._tf.test.is_built_with_cuda())

    def framework_version(self) -> str | None:
        return self._tf.__version__

    def distribution(self, model: Any) -> dict[str, Any] | None:
        strategy = getattr(model, "distribute_strategy", None)
        if strategy is None or type(strategy).__name__.startswith("_Default"):
            return None
        return {"name": type(strategy).__name__,
                "replicas": int(strategy.num_replicas_in_sync)}

    def _device_scope(self) -> str | None:
        # `keras.device` is `tf.device` on this backend: the eager context holds either.
        name = self._context.context().device_name
        return name.rsplit("device:", 1)[-1] if name else None

    def _cpu_settings(self) -> dict[str, str]:
        tf = self._tf
        if tf.config.list_physical_devices("GPU") and not tf.config.get_visible_devices("GPU"):
            return {"tf.config.get_visible_devices('GPU')": "[]"}
        return {}

    def before_first_step(self) -> None:
        self._context.context().enable_graph_collection()
        self._collecting = True

    def after_first_step(self, model: Any, logs: dict | None) -> dict[str, Any]:
        nodes: list[tuple[str, str, str]] = []
        if self._collecting:
            ctx = self._context.context()
            try:
                metadata = ctx.export_run_metadata()
            finally:
                ctx.disable_graph_collection()
                self._collecting = False
            graphs = [g for fg in metadata.function_graphs for g in fg.partition_graphs]
            graphs = graphs or list(metadata.partition_graphs)
            nodes = [(n.name, n.op, n.device) for g in graphs for n in g.node]
        ops = summarize_ops(nodes)
        report = self._report("run_metadata" if nodes else "variables",
                              *variable_devices(model, self._device_of), ops)
        report["output_devices"] = dict(Counter(
            device_type(getattr(v, "device", "") or "") for v in (logs or {}).values()
            if hasattr(v, "device")
        ))
        if not nodes and report["output_devices"]:
            report["compute_on_gpu"] = "GPU" in report["output_devices"]
            report["method"] = "outputs"
        report["gpu_peak_mib"] = self._gpu_peak_mib()
        return report

    def _device_of(self, variable: Any) -> str | None:
        return device_type(variable.value.device)

    def _gpu_peak_mib(self) -> float | None:
        if not self._tf.config.list_logical_devices("GPU"):
            return None
        try:
            return self._tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        except (ValueError, RuntimeError):
            return None


class JaxProbe(Probe):
    """Step-0 placement from the devices of the model's arrays."""

    backend = "jax"

    def __init__(self) -> None:
        import jax

        self._jax = jax

    def framework_gpus(self) -> list[str] | None:
        try:
            return [str(d) for d in self._jax.devices("gpu")]
        except RuntimeError:  # no GPU backend initialised
            return []

    def cuda_build(self) -> bool | None:
        from importlib import metadata

        names = {(d.metadata["Name"] or "").lower().replace("_", "-")
                 for d in metadata.distributions()}
        if any(n.startswith("jax-cuda") for n in names):  # the CUDA plugins (jax[cuda12])
            return True
        return "cuda" in getattr(self._jax.lib, "__version__", "")  # older "+cuda" jaxlibs

    def framework_version(self) -> str | None:
        return self._jax.__version__

    def rank(self) -> tuple[int, int]:
        count = self._jax.process_count()
        return (self._jax.process_index(), count) if count > 1 else _tf_config_rank()

    def distribution(self, model: Any) -> dict[str, Any] | None:
        import keras

        dist = keras.distribution.distribution()
        if dist is None:
            return None
        mesh = getattr(dist, "device_mesh", None)
        devices = getattr(mesh, "devices", None)
        return {"name": type(dist).__name__,
                "replicas": int(getattr(devices, "size", 0)) or None}

    def _device_scope(self) -> str | None:
        # `keras.device` is `jax.default_device` on this backend: one value holds either.
        device = self._jax.config.jax_default_device
        if device is None:
            return None
        platform = getattr(device, "platform", None)
        return f"{platform}:{device.id}" if platform else str(device)

    def _cpu_settings(self) -> dict[str, str]:
        platforms = os.environ.get("JAX_PLATFORMS") or self._jax.config.jax_platforms
        if platforms and not any(p in platforms.lower() for p in _GPU_PLATFORMS):
            return {"JAX_PLATFORMS": platforms}
        return {}

    def after_first_step(self, model: Any, logs: dict | None) -> dict[str, Any]:
        # During `fit`, Keras' JAX trainer detaches the weights from the variables and passes
        # them from step to step in a state tuple, which it hands to the model before the batch
        # hooks run: the arrays the steps return are where training really runs.
        arrays = keras_internals.jax_train_state(model)
        if arrays.value:
            report = self._report("train_state",
                                  *variable_devices(model, self._array_device, arrays.value))
        else:
            report = super().after_first_step(model, logs)
            report["train_state"] = arrays.reason  # why the variables were read instead
        report["default_backend"] = self._jax.default_backend()
        return report

    def _device_of(self, variable: Any) -> str | None:
        # Never `variable.value`: on a detached variable it initialises a new copy of the weight.
        value = getattr(variable, "_value", None)
        return None if value is None else self._array_device(value)

    @staticmethod
    def _array_device(array: Any) -> str:
        # The sharding outlives the buffer: the next step donates step 0's arrays.
        platforms = {d.platform for d in array.sharding.device_set}
        return "GPU" if platforms & {"gpu", "cuda", "rocm"} else "CPU"


class TorchProbe(Probe):
    """Step-0 placement from the devices of the model's tensors."""

    backend = "torch"

    def __init__(self) -> None:
        import torch

        self._torch = torch

    def framework_gpus(self) -> list[str] | None:
        cuda = self._torch.cuda
        return [cuda.get_device_name(i) for i in range(cuda.device_count())] \
            if cuda.is_available() else []

    def cuda_build(self) -> bool | None:
        return self._torch.version.cuda is not None

    def framework_version(self) -> str | None:
        return self._torch.__version__

    def rank(self) -> tuple[int, int]:
        dist = self._torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        try:  # torchrun sets these before the process group exists
            size = int(os.environ.get("WORLD_SIZE", "1"))
            if size > 1:
                return int(os.environ["RANK"]), size
        except (KeyError, ValueError):
            pass
        return _tf_config_rank()

    def distribution(self, model: Any) -> dict[str, Any] | None:
        _, size = self.rank()
        return {"name": "torch.distributed", "replicas": size} if size > 1 else None

    def _device_scope(self) -> str | None:
        scope = keras_internals.torch_device_scope()
        if scope.reason is not None:
            self._unread = {**getattr(self, "_unread", {}), "device_scope_unread": scope.reason}
        return scope.value

    def _cpu_settings(self) -> dict[str, str]:
        device = os.environ.get("KERAS_TORCH_DEVICE")
        if device and not device.lower().startswith(_GPU_PLATFORMS):
            return {"KERAS_TORCH_DEVICE": device}
        return {}

    def _device_of(self, variable: Any) -> str | None:
        return "GPU" if variable.value.device.type == "cuda" else "CPU"


def probe_for(backend: str) -> Probe:
    """The placement probe for a Keras backend name ("tensorflow", "jax", "torch")."""
    probes = {"tensorflow": TensorFlowProbe, "jax": JaxProbe, "torch": TorchProbe}
    cls = probes.get(backend)
    if cls is None:
        return Probe()
    try:
        return cls()
    except ImportError:
        return Probe()


def _tf_config_rank() -> tuple[int, int]:
    """Rank and size from TF_CONFIG (MultiWorkerMirroredStrategy); (0, 1) without it."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0, 1
    try:
        config = json.loads(raw)
        cluster = config.get("cluster", {})
        task = config.get("task", {})
        order = [kind for kind in ("chief", "worker") if kind in cluster]
        size = sum(len(cluster[kind]) for kind in order)
        offset = sum(len(cluster[kind]) for kind in order[: order.index(task["type"])])
        return offset + int(task.get("index", 0)), max(size, 1)
    except (ValueError, KeyError, TypeError, AttributeError):
        warnings.warn(f"gpu-watch: ignoring an unreadable TF_CONFIG: {raw!r}", GPUWatchWarning,
                      stacklevel=2)
        return 0, 1
