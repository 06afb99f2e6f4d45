"""The quickstart notebook runs from top to bottom, and is stored without outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"
KERNEL = "gpu-watch-test"


def this_python_kernel(folder: Path) -> KernelManager:
    """A kernel manager for a kernel running this interpreter (the project's venv), whatever
    kernel specs the machine has installed or lacks."""
    spec_dir = folder / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "gpu-watch tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(folder)], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


def test_the_stored_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], cell.source
        assert cell.execution_count is None, cell.source


def test_the_notebook_runs_without_errors(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    work = tmp_path / "work"
    work.mkdir()
    client = NotebookClient(
        notebook,
        km=this_python_kernel(tmp_path / "kernels"),
        timeout=300,
        resources={"metadata": {"path": str(work)}},  # the kernel's working directory
    )
    try:
        client.execute()
    except Exception as exc:  # nbclient's CellExecutionError names the cell and its traceback
        pytest.fail(f"the quickstart notebook failed:\n{exc}")
    text = "\n".join(
        output.get("text", "") + json.dumps(output.get("data", {}))
        for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "SIMULATED GPU" in text
    assert "status: stopped_idle" in text
    assert "image/png" in text
    runs = list((work / "gpu_watch_logs").iterdir())
    assert len(runs) == 2
