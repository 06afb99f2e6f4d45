"""Does GPUWatch see what really happens on an NVIDIA GPU? Trainings whose answer is known, on
the JAX and torch backends, each next to what GPUWatch reported.

Scenarios, each in a child process of its own (the Keras backend and CUDA_VISIBLE_DEVICES are
fixed when a process starts):

- healthy: a few large Dense layers on random data keep the GPU busy for `--seconds` (20).
  Expected: verdict `ok`, utilization above zero, this process's GPU memory above zero and the
  first step's compute on the GPU.
- hidden: a small model with ``CUDA_VISIBLE_DEVICES=""``. Expected: `cpu_fallback` with cause
  `gpus_hidden` while NVML still sees the GPU. Without any NVIDIA GPU, `cpu_fallback` is the
  right answer too (cause `no_nvidia_driver`), so this one runs anywhere.
- starved: a slow Python generator feeds a small model, with ``on_idle="stop"`` and a short
  patience. Expected: training stopped early (status `stopped_idle`), verdict `idle`, cause
  `input_bound` with the remedy for a generator (a `keras.utils.PyDataset` with workers, not
  `tf.data`).
- forced: a small model built and fitted inside ``with keras.device("cpu")``. Expected:
  `cpu_fallback` with cause `forced_cpu_placement`, whose remedy names `keras.device` and no
  TensorFlow API; the CPU device scope recorded. Without a GPU: `cpu_fallback`
  (`no_nvidia_driver`) with the scope recorded, so this one runs anywhere too.
- shared: the starved training while a second process, started by this script, keeps the same
  GPU busy with matrix products (torch, or JAX without torch). Expected: stopped early, verdict
  `idle` with causes `input_bound` and `gpu_shared` naming the second process's PID: the
  device's utilization is the other process's, never this training's.
- contended: the healthy training beside the same second process. Expected: verdict `ok`, this
  process's own utilization above zero, and the `gpu_shared` warning naming the other PID.
- doctor: ``gpu-watch doctor --json --backend B`` for each backend checked and for TensorFlow.
  Expected: exit 0 naming the GPU; exit 1 with `backend_not_installed` for a backend that is
  not installed (TensorFlow, on the GPU machines at hand); exit 1 with `no_nvidia_driver`
  without a GPU.
- small_kernels: a tiny model on batches of 32 for `--seconds` (a deep, narrow MLP on JAX, an
  LSTM on torch): every kernel is too small to fill the GPU, and the host's per-step work keeps
  utilization low too. Expected: the under-use flagged, as `ok` with cause `low_sm_activity`
  where the GPU has GPM (Hopper and newer) and utilization stays above the idle threshold, or
  as `idle`; with GPM, SM activity at most half of utilization; without GPM, never
  `low_sm_activity`.

- ecc: NVML's ECC error counts on each GPU, read twice 1.5 s apart as GPUWatch reads them (the
  counts behind OpenTelemetry's `hw.errors`). Expected: on a GPU with ECC on (data-centre
  parts), both counts, never lower at the second read, and no NVML fault; without ECC, neither
  count and no fault either (ECC is absent, as GPM is on older GPUs).

On a GPU with GPM the healthy run must also keep its SMs busy (SM activity at least half of the
utilization, no `low_sm_activity`); on any GPU from Volta on, each epoch's energy is positive.

Run it on an otherwise idle machine: the scenarios without a second process expect the GPU to
themselves. TensorFlow
is not needed (and is never imported on these backends); keras, nvidia-ml-py, pandas and numpy
are, plus jax with its CUDA plugin and/or a CUDA build of torch. gpu-watch runs from this
checkout without being installed. Each run folder lands under OUT_DIR (see them with
``python -m gpu_watch report OUT_DIR``), and the table also goes to ``OUT_DIR/gpu_check.json``.
Exit status: 0 when every scenario that ran passed, 1 otherwise. About 2 minutes per backend.

Usage:
    python benchmarks/gpu_check.py OUT_DIR [--backend jax|torch|both] [--seconds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # gpu-watch from this checkout: installing it would pull TensorFlow

SCENARIOS = ("healthy", "hidden", "starved", "forced", "small_kernels", "shared", "contended")
ANYWHERE = ("hidden", "forced")  # scenarios with a known answer on a machine without a GPU
# Scenarios that run beside a second, busy process, and the training each of them runs.
BESIDE_BUSY = {"shared": "starved", "contended": "healthy"}
BUSY_START_TIMEOUT_S = 90
BACKENDS = ("jax", "torch")
NEEDED = ("keras", "pynvml", "pandas", "numpy")
CHILD_TIMEOUT_S = 150
STARVED_PATIENCE_S = 4.0
STARVED_DELAY_S = 0.25  # per batch from the slow generator
STARVED_EPOCHS, STARVED_STEPS = 20, 20  # 100 s of batches if nothing stopped it
DOCTOR_TIMEOUT_S = 120
# small_kernels: on JAX, XLA runs the whole step on the device, a chain of matrix products that
# each fill one or two of the GPU's SMs; on torch, eager dispatch from Python would leave the GPU
# waiting between such kernels, so cuDNN runs an LSTM's sequence on the device instead.
SMALL_DEPTH, SMALL_WIDTH, SMALL_BATCH = 32, 256, 32
SMALL_STEPS, SMALL_UNITS = 512, 64  # LSTM: timesteps and units


# -- the child: one scenario on one backend ----------------------------------------------------


def train(scenario: str, log_dir: str, seconds: float,
          run_name: str | None = None) -> dict[str, Any]:
    """Run `scenario` with the backend of KERAS_BACKEND; return what its run folder shows."""
    if scenario in BESIDE_BUSY:
        return train_beside_busy_process(scenario, log_dir, seconds)
    import keras
    import numpy as np

    from gpu_watch import GPUWatch, GPUWatchWarning, load_run

    rng = np.random.default_rng(0)
    backend = keras.backend.backend()
    name = run_name or f"{backend}-{scenario}"

    def scope():
        """The forced scenario builds, compiles and fits inside a CPU device scope: an
        optimizer compiled outside it would keep its step counter on the GPU."""
        return keras.device("cpu") if scenario == "forced" else contextlib.nullcontext()

    class StopAfter(keras.callbacks.Callback):
        """Ends training `seconds` after the first batch (a begin hook: async dispatch stays)."""

        def on_train_batch_begin(self, batch, logs=None):
            now = time.perf_counter()
            self.start = getattr(self, "start", now)
            if now - self.start > seconds:
                self._model.stop_training = True  # not self.model: on JAX it copies every weight

    if scenario == "healthy":
        features, hidden, batch = 2048, 4096, 2048
        layers = [keras.layers.Dense(hidden, activation="relu") for _ in range(4)]
        model = keras.Sequential([keras.Input((features,)), *layers, keras.layers.Dense(1)])
        x = rng.standard_normal((batch * 16, features), dtype=np.float32)
        y = rng.standard_normal((batch * 16, 1), dtype=np.float32)
        watch = GPUWatch(log_dir=log_dir, run_name=name, require_gpu=True, verbose=0)
        fit = {"x": x, "y": y, "batch_size": batch, "epochs": 100_000, "shuffle": False,
               "callbacks": [watch, StopAfter()]}
    elif scenario in ANYWHERE:
        with scope():
            model = keras.Sequential([keras.Input((32,)),
                                      keras.layers.Dense(64, activation="relu"),
                                      keras.layers.Dense(1)])
        x = rng.standard_normal((2048, 32), dtype=np.float32)
        y = rng.standard_normal((2048, 1), dtype=np.float32)
        watch = GPUWatch(log_dir=log_dir, run_name=name, verbose=0)
        fit = {"x": x, "y": y, "batch_size": 64, "epochs": 2, "callbacks": [watch]}
    elif scenario == "small_kernels":
        model, watch, fit = small_kernels(log_dir, name, StopAfter())
    else:
        model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"),
                                  keras.layers.Dense(1)])
        x = rng.standard_normal((64, 32), dtype=np.float32)
        y = rng.standard_normal((64, 1), dtype=np.float32)

        def slow_batches():
            while True:
                time.sleep(STARVED_DELAY_S)  # decoding, augmenting, reading a slow disk ...
                yield x, y

        watch = GPUWatch(log_dir=log_dir, run_name=name, on_idle="stop",
                         idle_patience_s=STARVED_PATIENCE_S, verbose=0)
        fit = {"x": slow_batches(), "steps_per_epoch": STARVED_STEPS,
               "epochs": STARVED_EPOCHS, "callbacks": [watch]}
    with scope():
        model.compile(optimizer="adam", loss="mse")

    start = time.perf_counter()
    error = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        try:
            with scope():
                model.fit(verbose=0, **fit)
        except Exception as exc:  # e.g. GPUNotUsedError: reported, not a crash of the check
            error = f"{type(exc).__name__}: {exc}"
    fit_s = time.perf_counter() - start

    run = load_run(watch.run_dir)
    placement = run.record.placement or {}
    util = run.epochs["gpu_util_mean"].dropna()
    proc_util = run.epochs["proc_util_mean"].dropna()
    proc_mem = run.samples["proc_mem_mib"].dropna()
    sm_active = run.samples["sm_active_pct"].dropna()
    tensor = run.samples["tensor_active_pct"].dropna()
    energy = run.epochs["gpu_energy_j"].dropna()
    shared_pids = sorted({p["pid"] for c in run.causes if c["code"] == "gpu_shared"
                          for p in c["evidence"].get("processes") or []})
    return {
        "run_dir": str(run.path),
        "backend": backend,
        "status": run.status,
        "verdict": run.verdict,
        "causes": [c["code"] for c in run.causes],
        "remedies": {c["code"]: c["remedy"] for c in run.causes},
        "data_source": (run.record.data or {}).get("source"),
        "device_scope": placement.get("device_scope"),
        "error": error,
        "compute_on_gpu": placement.get("compute_on_gpu"),
        "placement_devices": placement.get("variable_devices"),
        "default_backend": placement.get("default_backend"),
        "framework_gpus": (run.record.framework or {}).get("gpus"),
        "nvml_gpus_seen": run.record.nvml["gpus_seen"],
        "watched_gpus": run.gpus,
        "util_mean_pct": float(util.mean()) if len(util) else None,
        "proc_util_mean_pct": float(proc_util.mean()) if len(proc_util) else None,
        "shared_pids": shared_pids,
        "proc_mem_peak_mib": float(proc_mem.max()) if len(proc_mem) else None,
        "epochs": len(run.epochs),
        "batches": len(run.batches),
        "fit_s": round(fit_s, 1),
        "tensorflow_imported": "tensorflow" in sys.modules,
        "sm_active_mean_pct": float(sm_active.mean()) if len(sm_active) else None,
        "samples_util_mean_pct": float(run.samples["util_pct"].dropna().mean())
        if run.samples["util_pct"].notna().any() else None,
        "tensor_active_mean_pct": float(tensor.mean()) if len(tensor) else None,
        "epoch_energy_min_j": float(energy.min()) if len(energy) else None,
        "energy_total_j": (run.record.energy or {}).get("total_j"),
        "energy_method": (run.record.energy or {}).get("method"),
    }


def small_kernels(log_dir: str, name: str, stop: Any) -> tuple[Any, Any, dict[str, Any]]:
    """A tiny model on batches of 32: the GPU runs one small kernel after another, each on a
    sliver of its SMs, for as long as `stop` lets it (see SMALL_DEPTH)."""
    import keras
    import numpy as np

    from gpu_watch import GPUWatch

    rng = np.random.default_rng(1)
    if keras.backend.backend() == "torch":
        model = keras.Sequential([keras.Input((SMALL_STEPS, 32)), keras.layers.LSTM(SMALL_UNITS),
                                  keras.layers.Dense(1)])
        x = rng.standard_normal((SMALL_BATCH * 16, SMALL_STEPS, 32), dtype=np.float32)
    else:
        layers = [keras.layers.Dense(SMALL_WIDTH, activation="relu") for _ in range(SMALL_DEPTH)]
        model = keras.Sequential([keras.Input((SMALL_WIDTH,)), *layers, keras.layers.Dense(1)])
        x = rng.standard_normal((SMALL_BATCH * 64, SMALL_WIDTH), dtype=np.float32)
    y = rng.standard_normal((len(x), 1), dtype=np.float32)
    watch = GPUWatch(log_dir=log_dir, run_name=name, require_gpu=True, verbose=0)
    fit = {"x": x, "y": y, "batch_size": SMALL_BATCH, "epochs": 100_000, "shuffle": False,
           "callbacks": [watch, stop]}
    return model, watch, fit


def train_beside_busy_process(scenario: str, log_dir: str, seconds: float) -> dict[str, Any]:
    """`shared` or `contended`: start a second process that keeps the GPU busy, wait until it
    runs, train beside it (`BESIDE_BUSY` names the training), stop it; report its PID too."""
    import keras

    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # leave memory to training
    busy = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), log_dir, "--busy-process",
         str(seconds + CHILD_TIMEOUT_S)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ready = _wait_for_line(busy, "BUSY ", BUSY_START_TIMEOUT_S)
        seen = train(BESIDE_BUSY[scenario], log_dir, seconds,
                     run_name=f"{keras.backend.backend()}-{scenario}")
    finally:
        busy.terminate()
        try:
            busy.wait(10)
        except subprocess.TimeoutExpired:
            busy.kill()
    return {**seen, "busy_pid": busy.pid, "busy_with": ready.split()[1]}


def _wait_for_line(process: subprocess.Popen, prefix: str, timeout_s: float) -> str:
    """The first line of `process`'s output that starts with `prefix`; without one in time,
    a RuntimeError with its last lines. A thread keeps reading its output, so the process never
    blocks on a full pipe."""
    found: list[str] = []
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        for line in process.stdout:
            lines.append(line.rstrip())
            del lines[:-20]
            if line.startswith(prefix) and not found:
                found.append(line.strip())
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if ready.wait(timeout_s):
        return found[0]
    raise RuntimeError("the second process did not start its GPU work: "
                       + " | ".join(lines[-5:]))


def busy_process(seconds: float) -> None:
    """The second process: bf16 8192x8192 matrix products on the GPU for `seconds`, with torch
    where it has CUDA, else JAX. Prints "BUSY <library>" once the GPU is working."""
    step = None
    try:
        import torch

        if torch.cuda.is_available():
            a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

            def step() -> None:
                a @ a
                torch.cuda.synchronize()

            library = "torch"
    except ImportError:
        pass
    if step is None:
        import jax
        import jax.numpy as jnp

        a = jnp.ones((8192, 8192), jnp.bfloat16)
        product = jax.jit(lambda m: m @ m)

        def step() -> None:
            product(a).block_until_ready()

        library = f"jax-{jax.default_backend()}"
    step()
    print(f"BUSY {library}", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        step()


# -- the parent: expectations, children, the table ---------------------------------------------


@dataclass
class Row:
    """One line of the table."""

    backend: str
    scenario: str
    expected: str
    seen: str
    result: str  # "pass", "FAIL" or "skipped: <why>"
    run_dir: str | None = None


def expected_text(scenario: str, gpu: bool, gpm: bool = False) -> str:
    if scenario == "shared":
        return "stopped early; idle + input_bound + gpu_shared (other PID)"
    if scenario == "contended":
        return "ok; own util>0; gpu_shared (other PID)"
    if scenario == "healthy":
        return "ok; util>0; proc mem>0; step 0 on GPU; energy>0" + (
            "; SM>=util/2, no low_sm_activity" if gpm else "")
    if scenario == "small_kernels":
        return ("ok + low_sm_activity, or idle; SM<=util/2" if gpm
                else "ok or idle; SM unknown, no low_sm_activity")
    if scenario == "hidden":
        return ("cpu_fallback + gpus_hidden; NVML sees the GPU" if gpu
                else "cpu_fallback (no GPU: no_nvidia_driver)")
    if scenario == "forced":
        return ("cpu_fallback + forced_cpu_placement; remedy names keras.device; CPU scope" if gpu
                else "cpu_fallback (no GPU: no_nvidia_driver); CPU scope recorded")
    return "stopped early; idle + input_bound; remedy for a generator"


def judge_scenario(scenario: str, gpu: bool, seen: dict[str, Any],
                   gpm: bool = False) -> tuple[str, bool]:
    """(what was seen, in a few words; whether it is what was expected). `gpm`: the GPU
    supports GPM, so SM activity is known."""
    causes = seen["causes"]
    verdict = f"{seen['verdict']} [{', '.join(causes) or 'no cause'}]"
    checks: list[bool] = [not seen["tensorflow_imported"]]
    notes = [] if not seen["tensorflow_imported"] else ["TensorFlow was imported"]
    if seen["error"]:
        notes.append(seen["error"][:160])
    if scenario in BESIDE_BUSY:
        text, passed = judge_beside_busy(scenario, seen, verdict)
        checks.append(passed)
    elif scenario == "healthy":
        util, mem = seen["util_mean_pct"], seen["proc_mem_peak_mib"]
        where = "GPU" if seen["compute_on_gpu"] else "CPU" if seen["compute_on_gpu"] is False \
            else "unknown"
        if seen["default_backend"]:
            where += f" (jax {seen['default_backend']})"
        text = (f"{verdict}; util {_num(util, '%')}; proc mem {_num(mem, ' MiB')}; step 0 on "
                f"{where}; {seen['batches']} batches in {seen['fit_s']} s")
        checks += [seen["verdict"] == "ok", (util or 0) > 0, (mem or 0) > 0,
                   seen["compute_on_gpu"] is True, seen["error"] is None]
        text += "; " + activity_text(seen)
        checks.append((seen["epoch_energy_min_j"] or 0) > 0)
        if gpm:
            sm, util_pct = seen["sm_active_mean_pct"], seen["samples_util_mean_pct"]
            checks += [sm is not None and util_pct is not None and sm >= util_pct / 2,
                       "low_sm_activity" not in causes]
    elif scenario == "small_kernels":
        text = f"{verdict}; {activity_text(seen)}; {seen['batches']} batches in {seen['fit_s']} s"
        sm, util_pct = seen["sm_active_mean_pct"], seen["samples_util_mean_pct"]
        flagged = "low_sm_activity" in causes if seen["verdict"] == "ok" else True
        checks += [seen["verdict"] in ("ok", "idle"), seen["error"] is None,
                   (sm is not None) is gpm]
        if gpm:
            checks += [flagged, sm is not None and util_pct is not None and sm <= util_pct / 2]
        else:
            checks.append("low_sm_activity" not in causes)
    elif scenario == "hidden":
        text = (f"{verdict}; NVML sees {seen['nvml_gpus_seen']}, watched "
                f"{seen['watched_gpus'] or 'none'}; step 0 on "
                f"{'GPU' if seen['compute_on_gpu'] else 'CPU'}")
        checks += [seen["verdict"] == "cpu_fallback", seen["compute_on_gpu"] is not True]
        if gpu:
            checks += ["gpus_hidden" in causes, seen["nvml_gpus_seen"] > 0,
                       seen["watched_gpus"] == []]
        else:
            checks.append("no_nvidia_driver" in causes)
    elif scenario == "forced":
        remedy = seen["remedies"].get("forced_cpu_placement", "")
        text = (f"{verdict}; scope {seen['device_scope']}; step 0 on "
                f"{'GPU' if seen['compute_on_gpu'] else 'CPU'}")
        checks += [seen["verdict"] == "cpu_fallback", seen["compute_on_gpu"] is False,
                   "cpu" in str(seen["device_scope"]).lower()]
        if gpu:
            text += f"; remedy: {remedy[:70]}"
            checks += ["forced_cpu_placement" in causes, 'keras.device("cpu")' in remedy,
                       "tf." not in remedy]
        else:
            checks.append("no_nvidia_driver" in causes)
    else:
        total = STARVED_EPOCHS * STARVED_STEPS
        remedy = seen["remedies"].get("input_bound", "")
        text = (f"{seen['status']} after {seen['batches']} of {total} batches; {verdict}; "
                f"util {_num(seen['util_mean_pct'], '%')}; data {seen['data_source']}; "
                f"remedy: {remedy[:60]}")
        checks += [seen["status"] == "stopped_idle", seen["batches"] < total,
                   seen["verdict"] == "idle", "input_bound" in causes,
                   seen["data_source"] == "generator", "keras.utils.PyDataset" in remedy,
                   "tf." not in remedy]
    return "; ".join([text, *notes]), all(checks)


def judge_beside_busy(scenario: str, seen: dict[str, Any], verdict: str) -> tuple[str, bool]:
    """`shared` and `contended`: this training's own use decides, and the other PID is named."""
    named = seen["busy_pid"] in seen["shared_pids"]
    util = (f"util {_num(seen['proc_util_mean_pct'], '%')} own, "
            f"{_num(seen['util_mean_pct'], '%')} device")
    other = (f"other PID {seen['busy_pid']} ({seen['busy_with']}) "
             f"{'named' if named else 'NOT named'}")
    causes = seen["causes"]
    if scenario == "shared":
        total = STARVED_EPOCHS * STARVED_STEPS
        text = f"{seen['status']} after {seen['batches']} of {total} batches; {verdict}; {util}"
        checks = [seen["status"] == "stopped_idle", seen["batches"] < total,
                  seen["verdict"] == "idle", "input_bound" in causes]
    else:
        text = f"{verdict}; {util}; {seen['batches']} batches in {seen['fit_s']} s"
        checks = [seen["verdict"] == "ok", (seen["proc_util_mean_pct"] or 0) > 0,
                  seen["compute_on_gpu"] is True, seen["error"] is None]
    checks += ["gpu_shared" in causes, named]
    return f"{text}; {other}", all(checks)


def _num(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:,.0f}{unit}"


def activity_text(seen: dict[str, Any]) -> str:
    """Utilization, SM activity, tensor-core activity and energy side by side."""
    tensor = seen["tensor_active_mean_pct"]
    energy = seen["energy_total_j"]
    return (f"util {_num(seen['samples_util_mean_pct'], '%')} vs SM active "
            f"{_num(seen['sm_active_mean_pct'], '%')}, tensor "
            f"{'n/a' if tensor is None else f'{tensor:.1f}%'}; energy "
            f"{'n/a' if energy is None else f'{energy:,.0f} J'} ({seen['energy_method'] or '-'}),"
            f" min {_num(seen['epoch_energy_min_j'], ' J')}/epoch")


def gpus_on_this_machine() -> tuple[list[str], str | None]:
    """The names of the GPUs NVML sees, and NVML's error when it sees none."""
    from gpu_watch.sensing.nvml import NVML

    nvml = NVML()
    try:
        if not nvml.available:
            return [], nvml.error
        names = [d.name for d in nvml.all_devices()]
        return names, None if names else "NVML lists no GPU"
    finally:
        nvml.shutdown()


def gpm_on_this_machine() -> bool:
    """Whether the first GPU supports GPM (NVML's own answer: Hopper and newer)."""
    from gpu_watch.sensing.nvml import NVML

    nvml = NVML()
    try:
        devices = nvml.all_devices() if nvml.available else []
        if not devices:
            return False
        support = nvml.query("gpm", devices[0].nvml_index, "nvmlGpmQueryDeviceSupport",
                             devices[0].handle)
        return bool(support is not None and support.isSupportedDevice)
    finally:
        nvml.shutdown()


def run_child(backend: str, scenario: str, out_dir: Path, seconds: float,
              gpu_count: int) -> tuple[dict[str, Any] | None, str]:
    """Run one scenario in a child process; return its result (None on failure) and its log."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["KERAS_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if scenario == "hidden":
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.pop("JAX_PLATFORMS", None)  # "cuda" there would refuse to start without a GPU
    elif gpu_count > 1 and "CUDA_VISIBLE_DEVICES" not in env:
        env["CUDA_VISIBLE_DEVICES"] = "0"  # one model on one GPU: the others would sit idle
    command = [sys.executable, str(Path(__file__).resolve()), str(out_dir), "--child", scenario,
               "--seconds", str(seconds)]
    timeout_s = CHILD_TIMEOUT_S + (seconds if BESIDE_BUSY.get(scenario, scenario) in (
        "healthy", "small_kernels") else 0) + (BUSY_START_TIMEOUT_S if scenario in BESIDE_BUSY
                                               else 0)
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        log = (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) \
            else (exc.stderr or "")
        return None, f"timed out after {timeout_s:.0f} s\n{log}"
    log = done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return None, log
    return json.loads(lines[-1][len("RESULT "):]), log


def last_line(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def check(out_dir: Path, backends: list[str], seconds: float) -> list[Row]:
    """Run every scenario on every backend; print the table as rows come in."""
    gpus, nvml_error = gpus_on_this_machine()
    gpu = bool(gpus)
    gpm = gpu and gpm_on_this_machine()
    machine = f"{len(gpus)} GPU(s): {', '.join(gpus)}" if gpu else f"no NVIDIA GPU ({nvml_error})"
    print(f"gpu-watch GPU check on {machine} (GPM {'supported' if gpm else 'not supported'}); "
          f"backends: {', '.join(backends)}", flush=True)
    rows: list[Row] = []
    for backend in backends:
        installed = importlib.util.find_spec(backend) is not None
        for scenario in SCENARIOS:
            expected = expected_text(scenario, gpu, gpm)
            if not installed:
                rows.append(Row(backend, scenario, expected, "", f"skipped: {backend} is not "
                                                                   "installed"))
            elif not gpu and scenario not in ANYWHERE:
                rows.append(Row(backend, scenario, expected, "", "skipped: no NVIDIA GPU"))
            else:
                seen, log = run_child(backend, scenario, out_dir, seconds, len(gpus))
                (out_dir / f"{backend}-{scenario}.log").write_text(log)
                if seen is None:
                    rows.append(Row(backend, scenario, expected,
                                    f"child failed: {last_line(log)}", "FAIL"))
                else:
                    text, passed = judge_scenario(scenario, gpu, seen, gpm)
                    rows.append(Row(backend, scenario, expected, text,
                                    "pass" if passed else "FAIL", seen["run_dir"]))
            print(f"  {backend} {scenario}: {rows[-1].result}", flush=True)
    return rows


# -- the doctor, per backend -------------------------------------------------------------------


def run_doctor(backend: str) -> tuple[int | None, dict[str, Any] | None, str]:
    """`gpu-watch doctor --json --backend <backend>` from this checkout: (exit code, report,
    output); (None, None, why) when it did not finish."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "gpu_watch", "doctor", "--json", "--backend", backend]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=DOCTOR_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, None, f"timed out after {DOCTOR_TIMEOUT_S} s"
    try:
        return done.returncode, json.loads(done.stdout), done.stdout + done.stderr
    except json.JSONDecodeError:
        return done.returncode, None, done.stdout + done.stderr


def judge_doctor(backend: str, gpus: list[str], code: int | None,
                 report: dict[str, Any] | None) -> tuple[str, str, bool]:
    """(expected, seen, passed) for the doctor's answer about `backend` on this machine."""
    installed = importlib.util.find_spec(backend) is not None
    if not installed:
        expected = "exit 1; backend_not_installed"
    elif gpus:
        expected = f"exit 0; names {gpus[0]}"
    else:
        expected = "exit 1; no_nvidia_driver"
    if report is None or "backends" not in report:
        return expected, f"exit {code}; no report", False
    status = report["backends"][backend]
    codes = [f["code"] for f in report["findings"] if f["severity"] == "error"]
    seen = (f"exit {code}; {status['state']}; GPUs {', '.join(status['gpus']) or 'none'}; "
            f"errors {', '.join(codes) or 'none'}; {report['facts']['doctor']['probe_s']} s")
    agree = report["exit_code"] == code and report["gpu_usable"] == (code == 0)
    if not installed:
        passed = code == 1 and "backend_not_installed" in codes
    elif gpus:
        passed = code == 0 and any(gpus[0] in name for name in status["gpus"])
    else:
        passed = code == 1 and "no_nvidia_driver" in codes
    return expected, seen, passed and agree


def check_doctor(out_dir: Path, backends: list[str]) -> list[Row]:
    """Run the doctor for each backend checked, and for TensorFlow (absent on the GPU machines
    at hand: the doctor must say so, exit 1)."""
    gpus, _ = gpus_on_this_machine()
    rows = []
    for backend in dict.fromkeys([*backends, "tensorflow"]):
        code, report, log = run_doctor(backend)
        (out_dir / f"{backend}-doctor.log").write_text(log)
        expected, seen, passed = judge_doctor(backend, gpus, code, report)
        rows.append(Row(backend, "doctor", expected, seen, "pass" if passed else "FAIL"))
        print(f"  {backend} doctor: {rows[-1].result}", flush=True)
    return rows


def check_ecc(lib: Any = None) -> list[Row]:
    """The ECC counts of every GPU, as the sampler reads them, twice."""
    from gpu_watch.sensing.nvml import NVML

    nvml = NVML(lib)
    if not nvml.available:
        return [Row("-", "ecc", "ECC counts", "NVML not available", "skipped: no NVIDIA driver")]
    rows = []
    try:
        for device in nvml.all_devices():
            first = nvml.read(device, 0.0)
            time.sleep(1.5)
            second = nvml.read(device, 1.5)
            counts = [(r.ecc_corrected_errors, r.ecc_uncorrected_errors) for r in (first, second)]
            faults = [f"{f.metric}: {f.error}" for f in nvml.faults if f.metric == "ecc"]
            has = counts[0][0] is not None
            expected = ("both counts, none lower later, no fault" if has
                        else "no counts (no ECC), no fault")
            passed = not faults and all((a is None) == (not has) for pair in counts
                                        for a in pair)
            if has and passed:
                passed = all(b >= a for a, b in zip(counts[0], counts[1], strict=True))
            seen = (f"{device.name}: corrected, uncorrected {counts[0]} then {counts[1]}; "
                    f"faults {', '.join(faults) or 'none'}")
            rows.append(Row("-", "ecc", expected, seen, "pass" if passed else "FAIL"))
    finally:
        nvml.shutdown()
    return rows


def table(rows: list[Row]) -> str:
    headings = ("backend", "scenario", "expected", "seen", "result")
    cells = [[r.backend, r.scenario, r.expected, r.seen or "-", r.result] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headings)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headings, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder for the run folders (created if missing)")
    parser.add_argument("--backend", choices=(*BACKENDS, "both"), default="both")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long the healthy training keeps the GPU busy (default: 20)")
    parser.add_argument("--child", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--busy-process", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.busy_process is not None:
        busy_process(args.busy_process)
        return 0
    out_dir = Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.child:
        print("RESULT " + json.dumps(train(args.child, str(out_dir), args.seconds)), flush=True)
        return 0

    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        print(f"gpu_check needs {', '.join(missing)}: pip install keras nvidia-ml-py pandas "
              "numpy (from wheels where the machine is offline)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    backends = list(BACKENDS) if args.backend == "both" else [args.backend]
    rows = check(out_dir, backends, args.seconds)
    rows += check_doctor(out_dir, backends)
    rows += check_ecc()
    elapsed_s = time.perf_counter() - start
    print()
    print(table(rows))
    failed = [r for r in rows if r.result == "FAIL"]
    ran = [r for r in rows if r.result in ("pass", "FAIL")]
    print(f"\n{len(ran) - len(failed)} passed, {len(failed)} failed, "
          f"{len(rows) - len(ran)} skipped in {elapsed_s:.0f} s; run folders in {out_dir}")
    (out_dir / "gpu_check.json").write_text(json.dumps(
        {"elapsed_s": round(elapsed_s, 1), "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
