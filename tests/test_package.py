"""The package: light import, the command line's help and version."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import gpu_watch
from gpu_watch.cli import main


def test_import_loads_neither_tensorflow_nor_keras_nor_nvml():
    code = ("import gpu_watch, sys; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; "
            "assert 'pynvml' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_is_fast():
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gpu_watch", "--help"], capture_output=True,
                          text=True, check=True)
    assert time.perf_counter() - start < 3.0  # a Python start-up plus argparse, nothing heavy
    for command in ("doctor", "report", "demo"):
        assert command in done.stdout


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert gpu_watch.__version__ in capsys.readouterr().out


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "gpu-watch"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and gpu_watch.__version__ in done.stdout


def test_unknown_export_is_an_attribute_error():
    try:
        gpu_watch.NotAThing  # noqa: B018
    except AttributeError as exc:
        assert "NotAThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
