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

SCENARIOS = ("healthy", "hidden", "starved", "forced", "shared", "contended")
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
    placement = run.info.get("placement") or {}
    util = run.epochs["gpu_util_mean"].dropna()
    proc_util = run.epochs["proc_util_mean"].dropna()
    proc_mem = run.samples["proc_mem_mib"].dropna()
    shared_pids = sorted({p["pid"] for c in run.causes if c["code"] == "gpu_shared"
                          for p in c["evidence"].get("processes") or []})
    return {
        "run_dir": str(run.path),
        "backend": backend,
        "status": run.status,
        "verdict": run.verdict,
        "causes": [c["code"] for c in run.causes],
        "remedies": {c["code"]: c["remedy"] for c in run.causes},
        "data_source": (run.info.get("data") or {}).get("source"),
        "device_scope": placement.get("device_scope"),
        "error": error,
        "compute_on_gpu": placement.get("compute_on_gpu"),
        "placement_devices": placement.get("variable_devices"),
        "default_backend": placement.get("default_backend"),
        "framework_gpus": (run.info.get("framework") or {}).get("gpus"),
        "nvml_gpus_seen": run.info["nvml"]["gpus_seen"],
        "watched_gpus": run.gpus,
        "util_mean_pct": float(util.mean()) if len(util) else None,
        "proc_util_mean_pct": float(proc_util.mean()) if len(proc_util) else None,
        "shared_pids": shared_pids,
        "proc_mem_peak_mib": float(proc_mem.max()) if len(proc_mem) else None,
        "epochs": len(run.epochs),
        "batches": len(run.batches),
        "fit_s": round(fit_s, 1),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


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


def expected_text(scenario: str, gpu: bool) -> str:
    if scenario == "shared":
        return "stopped early; idle + input_bound + gpu_shared (other PID)"
    if scenario == "contended":
        return "ok; own util>0; gpu_shared (other PID)"
    if scenario == "healthy":
        return "ok; util>0; proc mem>0; step 0 on GPU"
    if scenario == "hidden":
        return ("cpu_fallback + gpus_hidden; NVML sees the GPU" if gpu
                else "cpu_fallback (no GPU: no_nvidia_driver)")
    if scenario == "forced":
        return ("cpu_fallback + forced_cpu_placement; remedy names keras.device; CPU scope" if gpu
                else "cpu_fallback (no GPU: no_nvidia_driver); CPU scope recorded")
    return "stopped early; idle + input_bound; remedy for a generator"


def judge_scenario(scenario: str, gpu: bool, seen: dict[str, Any]) -> tuple[str, bool]:
    """(what was seen, in a few words; whether it is what was expected)."""
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


def gpus_on_this_machine() -> tuple[list[str], str | None]:
    """The names of the GPUs NVML sees, and NVML's error when it sees none."""
    from gpu_watch.nvml import NVML

    nvml = NVML()
    try:
        if not nvml.available:
            return [], nvml.error
        names = [d.name for d in nvml.all_devices()]
        return names, None if names else "NVML lists no GPU"
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
    timeout_s = CHILD_TIMEOUT_S + (seconds if BESIDE_BUSY.get(scenario, scenario) == "healthy"
                                   else 0) + (BUSY_START_TIMEOUT_S if scenario in BESIDE_BUSY
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
    machine = f"{len(gpus)} GPU(s): {', '.join(gpus)}" if gpu else f"no NVIDIA GPU ({nvml_error})"
    print(f"gpu-watch GPU check on {machine}; backends: {', '.join(backends)}", flush=True)
    rows: list[Row] = []
    for backend in backends:
        installed = importlib.util.find_spec(backend) is not None
        for scenario in SCENARIOS:
            expected = expected_text(scenario, gpu)
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
                    text, passed = judge_scenario(scenario, gpu, seen)
                    rows.append(Row(backend, scenario, expected, text,
                                    "pass" if passed else "FAIL", seen["run_dir"]))
            print(f"  {backend} {scenario}: {rows[-1].result}", flush=True)
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
