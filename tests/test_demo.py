"""`gpu-watch demo` prints what it found and none of TensorFlow's native start-up log; the
callback names the extra that installs a missing backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gpu_watch import load_run

ROOT = Path(__file__).resolve().parent.parent
# What TensorFlow's C++ code writes to standard error while it starts on a machine without a
# GPU, whatever TF_CPP_MIN_LOG_LEVEL says.
TENSORFLOW_START_UP = ("absl::InitializeLog", "cudart_stub.cc", "cuInit", "I0000", "E0000")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python with `env`; the caller's warning filters (PYTHONWARNINGS)
    stay out: these tests check what a user with Python's defaults sees."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS", *env)}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
        "PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**environ, **env}, cwd=ROOT, timeout=300)


def test_the_demo_prints_its_verdict_and_no_tensorflow_start_up_log(tmp_path):
    done = run_python("from gpu_watch.cli import main; import sys; "
                      f"sys.exit(main(['demo', '--epochs', '1', '--log-dir', {str(tmp_path)!r}]))",
                      KERAS_BACKEND="tensorflow")
    assert done.returncode == 0, done.stderr
    assert "Verdict: CPU FALLBACK" in done.stdout
    assert not [line for line in done.stderr.splitlines()
                if any(mark in line for mark in TENSORFLOW_START_UP)], done.stderr
    # One message per fact: each cause once, in the summary; no warning repeats it.
    run = load_run(next(tmp_path.iterdir()))
    assert [c["code"] for c in run.causes][0] == "no_nvidia_driver"
    for cause in run.causes:
        assert done.stdout.count(cause["message"]) == 1, cause["code"]
    assert "GPUWatchWarning" not in done.stderr, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        f"Open {run.path / 'report.html'} in a browser for the figures, or run "
        f"`gpu-watch report {run.path}` for this summary again.")


HELD_BACK = """
import os, sys, warnings
from gpu_watch.demo import native_logs_held_back
with native_logs_held_back():
    os.write(2, b"native line\\n")
    warnings.warn("python warning")
    print("python line", file=sys.stderr)
os.write(2, b"native after\\n")
with native_logs_held_back():
    os.write(2, b"native before the failure\\n")
    raise SystemExit("failed")
"""


def test_native_output_is_held_back_and_written_out_when_the_block_fails():
    done = run_python(HELD_BACK)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert "native line" not in lines
    assert "python line" in lines and any("UserWarning: python warning" in x for x in lines)
    assert lines.index("native after") < lines.index("native before the failure")
    assert lines[-1] == "failed"


def test_a_missing_backend_framework_names_the_extra_to_install():
    # `None` in sys.modules makes `import jax` fail as it does where JAX is not installed.
    done = run_python("import sys; sys.modules['jax'] = None; "
                      "from gpu_watch.training.callback import GPUWatch", KERAS_BACKEND="jax")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "ModuleNotFoundError: Keras is set to use the jax backend (KERAS_BACKEND=jax), but JAX "
        'is not installed: pip install "gpu-watch[jax]", or train with an installed backend: '
        "export KERAS_BACKEND=tensorflow.")


def test_another_missing_module_is_left_as_python_said_it():
    done = run_python("import sys; sys.modules['ml_dtypes'] = None; "
                      "from gpu_watch.training.callback import GPUWatch",
                      KERAS_BACKEND="tensorflow")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "ModuleNotFoundError: import of ml_dtypes halted; None in sys.modules")


def test_the_demo_without_its_framework_says_which_extra_to_install(tmp_path):
    done = run_python("import sys; sys.modules['tensorflow'] = None; "
                      "from gpu_watch.cli import main; "
                      f"sys.exit(main(['demo', '--log-dir', {str(tmp_path)!r}]))",
                      KERAS_BACKEND="tensorflow")
    assert done.returncode == 2, done.stderr
    assert done.stdout == (
        "gpu-watch demo: Keras is set to use the tensorflow backend (KERAS_BACKEND=tensorflow), "
        'but TensorFlow is not installed: pip install "gpu-watch[tensorflow]", or train with an '
        "installed backend: export KERAS_BACKEND=jax.\n")
