"""The doctor's answer: one status per backend, the exit code, and the report as text or JSON.

Everything a reader or a job script sees is derived from :func:`backend_status` of the backend
that decides the run (the one Keras will use, or the one asked for): the first line, the JSON's
``gpu_usable``, the exit code and whether "nothing is wrong" may be said. They cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gpu_watch.doctor import facts_jax, facts_tensorflow, facts_torch
from gpu_watch.doctor.backends import title
from gpu_watch.doctor.rules_common import Facts, framework, mib_text, shorten
from gpu_watch.errors import EXIT_ERROR, EXIT_NO_GPU, EXIT_OK
from gpu_watch.judging.causes import ERROR, Cause, blocks_gpu

USABLE = "usable"
NO_GPU = "no_gpu"
NOT_INSTALLED = "not_installed"
NOT_READ = "not_read"

_MARKS = {USABLE: "[ok]", NO_GPU: "[x] ", NOT_INSTALLED: "[x] ", NOT_READ: "[?] "}
_MEANINGS = {"tensorflow": facts_tensorflow.MESSAGE_MEANINGS, "jax": facts_jax.MESSAGE_MEANINGS,
             "torch": facts_torch.MESSAGE_MEANINGS}

# How code forces the CPU on each backend, beside the ways common to all of them.
_FORCING_THE_CPU = {
    "tensorflow": "`with tf.device('/CPU:0')`",
    "jax": "`with jax.default_device(jax.devices('cpu')[0])`",
    "torch": "a model or tensors left on the CPU",
}


def forced_cpu_placement_help(backend: str) -> str:
    """What the doctor cannot see before training, in `backend`'s own terms."""
    own = _FORCING_THE_CPU.get(backend)
    ways = (f"{own}, " if own else "") + "`with keras.device('cpu')`"
    return (f"Code can still force the CPU, which only shows while training: {ways}, or "
            "`os.environ['CUDA_VISIBLE_DEVICES'] = '-1'` set in a script. Add GPUWatch() to "
            "model.fit(callbacks=[...]) and it reports `forced_cpu_placement` if the first "
            "training step ran on the CPU.")


@dataclass(frozen=True)
class BackendStatus:
    """Whether one backend can train on a GPU, and why not.

    Attributes:
        backend: ``"tensorflow"``, ``"jax"``, ``"torch"`` (or a CPU-only Keras backend).
        state: ``"usable"``, ``"no_gpu"``, ``"not_installed"`` or ``"not_read"`` (its probe
            failed, or it is not imported in the diagnosed process).
        version: The framework's version, when read.
        gpus: The GPUs the framework sees, by name.
        codes: The findings that keep it from the GPU (`causes.blocks_gpu`: the errors, and
            those that block it once an earlier one is fixed), in the order to fix them.
        reason: Why it was not read (``"not_read"`` only).
    """

    backend: str
    state: str
    version: str | None = None
    gpus: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    reason: str | None = None

    @property
    def usable(self) -> bool:
        """The backend sees a GPU and no error stands in its way."""
        return self.state == USABLE

    def line(self) -> str:
        """One verdict line, e.g. ``[ok] jax 0.11.2: GPU NVIDIA H200``."""
        name = title(self.backend) + (f" {self.version}" if self.version else "")
        if self.state == USABLE:
            return f"{_MARKS[USABLE]} {name}: uses {', '.join(self.gpus)}"
        if self.state == NOT_READ:
            return f"{_MARKS[NOT_READ]} {name}: not read: {self.reason}"
        why = f" ({', '.join(self.codes)})" if self.codes else ""
        what = "not installed" if self.state == NOT_INSTALLED else "no usable GPU"
        return f"{_MARKS[self.state]} {name}: {what}{why}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready record."""
        return {"state": self.state, "gpu_usable": self.usable, "version": self.version,
                "gpus": self.gpus, "codes": self.codes, "reason": self.reason}


def backend_status(facts: Facts, findings: list[Cause], backend: str) -> BackendStatus:
    """The status of `backend`, from its facts and the error findings that apply to it."""
    fw = framework(facts, backend)
    probe = fw.get("probe") or {}
    version = fw.get("version")
    if probe.get("error") or probe.get("note"):
        return BackendStatus(backend, NOT_READ, version,
                             reason=probe.get("error") or probe.get("note"))
    applies = [f for f in findings if f.evidence.get("backend") in (None, backend)]
    codes = list(dict.fromkeys(f.code for f in applies if blocks_gpu(f)))
    gpus = [_gpu_name(g) for g in fw.get("gpus") or []]
    if fw.get("installed") is False:
        return BackendStatus(backend, NOT_INSTALLED, version, codes=codes)
    state = USABLE if gpus and not any(f.severity == ERROR for f in applies) else NO_GPU
    return BackendStatus(backend, state, version, gpus, codes)


@dataclass(frozen=True)
class DoctorReport:
    """What the doctor found: the facts, the findings, and each backend's status.

    Attributes:
        facts: The facts gathered (see :mod:`gpu_watch.doctor`), JSON-ready.
        findings: The findings, errors first.
    """

    facts: Facts
    findings: list[Cause] = field(default_factory=list)

    @property
    def backend(self) -> str:
        """The backend whose status decides the exit code."""
        return self.facts["doctor"]["backend"]

    @property
    def statuses(self) -> dict[str, BackendStatus]:
        """Every checked backend's status, the deciding one first."""
        return {b: backend_status(self.facts, self.findings, b)
                for b in self.facts["frameworks"]}

    @property
    def status(self) -> BackendStatus:
        """The deciding backend's status."""
        return backend_status(self.facts, self.findings, self.backend)

    @property
    def gpu_usable(self) -> bool:
        """The deciding backend sees a GPU and no error finding stands in its way."""
        return self.status.usable

    @property
    def exit_code(self) -> int:
        """0: the deciding backend can use a GPU; 1: it cannot; 2: it could not be read."""
        state = self.status.state
        if state == NOT_READ:
            return EXIT_ERROR
        return EXIT_OK if state == USABLE else EXIT_NO_GPU

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready report (``gpu-watch doctor --json``, ``run.json``'s "environment")."""
        return {
            "gpu_usable": self.gpu_usable,
            "exit_code": self.exit_code,
            "backend": self.backend,
            "backends": {b: s.to_dict() for b, s in self.statuses.items()},
            "facts": self.facts,
            "findings": [c.to_dict() for c in self.findings],
        }

    def render_text(self) -> str:
        """The report for people: the answer and one line per backend, the facts, then the
        findings with evidence and remedies."""
        lines = [self.headline(), f"  Keras backend: {self._backend_source()}"]
        lines += [f"  {s.line()}" for s in self.statuses.values()]
        lines += ["", "Facts"]
        lines += [f"  {label:<13} {value}" for label, value in self._fact_lines()]
        lines.append("")
        status = self.status
        if self.findings:
            lines.append(f"Findings ({len(self.findings)})")
            for found in self.findings:
                about = found.evidence.get("backend")
                tag = f" ({about})" if about else ""
                lines.append(f"  [{found.severity}] {found.code}{tag}: {found.message}")
                for key, value in found.evidence.items():
                    if key != "backend" and value not in (None, [], {}):
                        lines.append(f"      {key}: {_evidence_text(value)}")
                lines.append(f"    remedy: {found.remedy}")
        elif status.usable:
            lines.append(f"Findings: nothing is wrong; {title(self.backend)} sees the GPU and "
                         "gpu-watch can watch it.")
        else:
            lines.append(f"Findings: none from what could be read; {status.reason}.")
        # Nothing was found, so no remedy: only what to watch for, in this backend's words.
        lines += ["", "Not checked here: forced_cpu_placement",
                  f"  {forced_cpu_placement_help(self.backend)}"]
        return "\n".join(lines) + "\n"

    def headline(self) -> str:
        """The first line: the deciding backend's answer and the exit code."""
        status = self.status
        name = title(self.backend)
        if status.state == NOT_READ:
            return f"gpu-watch doctor could not read {name}: {status.reason} (exit {EXIT_ERROR})"
        if status.usable:
            return (f"gpu-watch doctor: {name} can use the GPU ({', '.join(status.gpus)}) "
                    f"(exit {EXIT_OK})")
        return f"gpu-watch doctor: no usable GPU for {name} (exit {EXIT_NO_GPU})"

    def _backend_source(self) -> str:
        doctor = self.facts["doctor"]
        keras = self.facts["keras"]
        source = keras.get("backend_source")
        how = (f"KERAS_BACKEND={keras['backend']}" if source == "KERAS_BACKEND" else
               f"from {source}" if source and source.endswith("keras.json") else source)
        text = f"{keras['backend']} ({how})"
        checked = list(self.facts["frameworks"])
        if checked != [keras["backend"]]:
            text += f"; checked with --backend: {', '.join(checked)}"
        if doctor["backend"] != keras["backend"]:
            text += f"; the exit code is {title(doctor['backend'])}'s"
        return text

    def _fact_lines(self) -> list[tuple[str, str]]:
        f = self.facts
        plat = f["platform"]
        where = " (WSL2)" if plat["wsl"] else " (container)" if plat["container"] else ""
        rows = [("Python", f"{plat['python']} ({plat['executable']})"),
                ("Platform", f"{plat['system']} {plat['release']} {plat['machine']}{where}")]
        keras = f["keras"]
        rows.append(("Keras", f"{keras['version'] or 'not installed'}, backend "
                              f"{keras['backend']}"))
        for backend in f["frameworks"]:
            rows += _framework_lines(f, backend)
        wheels = f.get("cuda_wheels") or {}
        if "tensorflow" in f["frameworks"] and wheels.get("required"):
            have = len(wheels["required"]) - len(wheels["missing"])
            text = f"{have} of {len(wheels['required'])} installed"
            if wheels["missing"]:
                text += f" (missing: {shorten(wheels['missing'])})"
            rows.append(("CUDA wheels", text))
        rows += _nvml_lines(f["nvml"])
        env_set = [f"{k}={v!r}" for k, v in f["env"].items() if v is not None]
        rows.append(("Environment", ", ".join(env_set) or "none of the GPU-related variables "
                                                          "is set"))
        return rows


def _framework_lines(facts: Facts, backend: str) -> list[tuple[str, str]]:
    fw = framework(facts, backend)
    probe = fw.get("probe") or {}
    name = title(backend)
    short = {"tensorflow": "TF", "jax": "JAX", "torch": "torch"}.get(backend, name)
    if probe.get("error") or probe.get("note"):
        rows = [(name, f"not read: {probe.get('error') or probe.get('note')}")]
    elif fw.get("installed") is False:
        rows = [(name, f"cannot be imported: {fw.get('import_error')}")]
    elif backend == "tensorflow":
        rows = _tensorflow_lines(fw)
    elif backend == "jax":
        rows = _jax_lines(fw)
    elif backend == "torch":
        rows = _torch_lines(fw)
    else:
        rows = [(name, "runs on the CPU only")]
    meanings = _MEANINGS.get(backend, {})
    for index, message in enumerate(fw.get("messages") or []):
        rows.append((f"{short} said" if index == 0 else "",
                     f"{message['text']}  [{meanings.get(message['kind'], message['kind'])}]"))
    return rows


def _tensorflow_lines(fw: dict[str, Any]) -> list[tuple[str, str]]:
    info = fw.get("build_info") or {}
    build = (f"built with CUDA {info.get('cuda_version')}, cuDNN {info.get('cudnn_version')}"
             if fw.get("built_with_cuda") else "CPU-only build")
    gpus = ", ".join(f"{g['name']} ({g.get('device_name')}, compute "
                     f"{g.get('compute_capability')})" for g in fw.get("gpus") or [])
    return [("TensorFlow", f"{fw.get('version')}, {build}"), ("TF sees", gpus or "no GPU")]


def _jax_lines(fw: dict[str, Any]) -> list[tuple[str, str]]:
    plugin = fw.get("plugin")
    build = (f"CUDA plugin {plugin['package']} (CUDA {plugin.get('cuda_version')}, cuDNN "
             f"{plugin.get('cudnn_version')})" if plugin else "no CUDA plugin")
    gpus = ", ".join(f"{g.get('device_kind')} (compute {g.get('compute_capability')}, "
                     f"{mib_text(g.get('bytes_limit_mib'))} for JAX)"
                     for g in fw.get("gpus") or [])
    sees = gpus or (f"no GPU; default backend {fw.get('default_backend')}"
                    if fw.get("default_backend") else "no GPU")
    rows = [("JAX", f"{fw.get('version')}, jaxlib {fw.get('jaxlib_version')}, {build}"),
            ("JAX sees", sees)]
    if fw.get("init_error"):
        rows.append(("JAX error", fw["init_error"]))
    return rows


def _torch_lines(fw: dict[str, Any]) -> list[tuple[str, str]]:
    build = (f"built with CUDA {fw['cuda_version']}" if fw.get("cuda_version") else
             "CPU-only build (torch.version.cuda is None)")
    gpus = ", ".join(f"cuda:{g['index']} {g['name']} (compute {g.get('compute_capability')}, "
                     f"{mib_text(g.get('mem_total_mib'))})" for g in fw.get("gpus") or [])
    return [("torch", f"{fw.get('version')}, {build}"),
            ("torch sees", gpus or "no GPU (torch.cuda.is_available() is False)")]


def _nvml_lines(nvml: dict[str, Any]) -> list[tuple[str, str]]:
    if not nvml["available"]:
        return [("NVML", f"unavailable: {nvml['error']}")]
    rows = [("Driver", f"{nvml['driver_version']} (CUDA {nvml['cuda_driver_version']})")]
    for gpu in nvml["gpus"] or []:
        procs = gpu["processes"]
        listed = ("processes n/a" if procs is None else
                  ", ".join(f"PID {p['pid']} {mib_text(p['used_mib'])}" for p in procs)
                  or "no processes")
        rows.append((f"GPU {gpu['index']}",
                     f"{gpu['name']}, {mib_text(gpu['mem_used_mib'])} of "
                     f"{mib_text(gpu['mem_total_mib'])} used; {listed} ({gpu['uuid']})"))
    if not nvml["gpus"]:
        rows.append(("GPUs", "NVML sees none"))
    return rows


def _gpu_name(gpu: dict[str, Any]) -> str:
    return (gpu.get("device_name") or gpu.get("device_kind") or gpu.get("name")
            or str(gpu.get("id")))


def _evidence_text(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)
