"""Write `quickstart.ipynb` next to this file, without outputs.

The notebook is generated so that its source stays reviewable as Python and its JSON stays
free of outputs and execution counts. After editing the cells below, run:

    .venv/bin/python notebooks/make_quickstart.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("markdown", """\
# gpu-watch quickstart

Is your Keras training really using the GPU? This notebook walks through the whole workflow:

1. check the install and ask `doctor()` why the GPU would (not) be used,
2. train a small CNN with `GPUWatch()` and look at its plot and its run folder,
3. watch a **simulated** GPU go idle and see `GPUWatch` stop training early.

It runs in well under a minute on a laptop CPU; on a GPU machine parts 1 and 2 show your GPU."""),
    ("code", """\
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter short
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import gpu_watch

gpu_watch.__version__"""),
    ("markdown", """\
## 1. Before training: `doctor()`

`doctor()` gathers the facts (TensorFlow's build, the driver, the CUDA libraries, GPU memory,
environment variables) and names each reason the GPU would not be used, with a remedy. The same
report is printed by `gpu-watch doctor` in a terminal."""),
    ("code", """\
report = gpu_watch.doctor()
print(report.render_text())"""),
    ("markdown", """\
## 2. A real training run with `GPUWatch()`

The demo CNN trains for two epochs on shapes drawn in-process (no download). `GPUWatch()` is the
only change to an ordinary `fit` call. On a machine without a GPU it warns that training ran on
the CPU and says why."""),
    ("code", """\
from gpu_watch import GPUWatch
from gpu_watch.demo import build_model, make_images

x, y = make_images(2000)
model = build_model()
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

watch = GPUWatch()
history = model.fit(x, y, epochs=2, batch_size=64, validation_split=0.2, callbacks=[watch],
                    verbose=2)"""),
    ("markdown", """\
Each epoch line ends with GPUWatch's figures that were measured (`gpu_util`, `gpu_proc_util`,
`gpu_mem_peak_gib`, `gpu_idle_frac`, and always `gpu_verdict`: 0 `ok`, 1 `unmonitored`, 2
`idle`, 3 `cpu_fallback`; without a GPU, the verdict alone): they are in the epoch logs, so
`History`, `CSVLogger` and `TensorBoard` get them too."""),
    ("code", """\
{key: values for key, values in history.history.items() if key.startswith("gpu_")}"""),
    ("markdown", """\
The run folder holds `run.json` (environment, placement of the first step, verdict and causes),
`samples.csv`, `batches.csv`, `epochs.csv` and the plots, which another process draws right
after `fit` returns (`wait_for_report()` waits for them). The utilization timeline:"""),
    ("code", """\
from IPython.display import Image

watch.wait_for_report()
print(watch.run_dir)
Image(filename=str(watch.run_dir / "utilization.png"))"""),
    ("markdown", """\
`load_run` reads a run folder back as pandas DataFrames, on any machine (no framework needed)."""),
    ("code", """\
from gpu_watch.report import summary_text

run = gpu_watch.load_run(watch.run_dir)
print(summary_text(run))
run.epochs"""),
    ("code", """\
run.batches.head()"""),
    ("code", """\
print(f"status: {run.status}, verdict: {run.verdict}")
print("causes:", [cause["code"] for cause in run.causes])
print(f"{len(run.samples)} NVML samples, {len(run.batches)} batch rows, "
      f"{len(run.epochs)} epoch rows")"""),
    ("markdown", """\
## 3. Simulated GPU: an idle GPU caught, training stopped early

**Everything in this section is simulated.** No GPU is used: `FakeNVML` (from
`gpu_watch.testing`) stands in for NVIDIA's NVML library and serves a scripted GPU. The model
still trains for real on this machine; only the GPU readings are made up.

The script: the GPU is busy (90 %) for the first 1.5 s, then sits at 0 %, as when the input
pipeline stalls. With `on_idle="stop"` and `idle_patience_s=1`, GPUWatch ends training one second
into the idle stretch, long before the 50 epochs asked for."""),
    ("code", """\
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

print("SIMULATED GPU: the readings below come from FakeNVML, not from real hardware.")


def busy_then_idle(t):  # seconds since NVML was opened -> utilization, percent
    return 90.0 if t < 1.5 else 0.0


fake = FakeNVML([FakeGPU(name="Simulated GPU", util_pct=busy_then_idle,
                         processes=[FakeProcess(used_mib=2048, sm_util_pct=busy_then_idle)])])
watch = GPUWatch(nvml=fake, on_idle="stop", idle_patience_s=1.0, interval_s=0.05)
history = model.fit(x, y, epochs=50, batch_size=64, callbacks=[watch], verbose=0)
print(f"trained {len(history.epoch)} of 50 epochs")"""),
    ("markdown", """\
The status says why training ended: `stopped_idle`, with the idle stretch as evidence. On a
machine without a GPU the verdict stays `cpu_fallback`, and rightly so: GPUWatch checks where the
first step's ops ran, and they ran on the CPU whatever the simulated NVML says. The plot is
marked SIMULATED."""),
    ("code", """\
run = gpu_watch.load_run(watch.run_dir)
print(f"status: {run.status}, verdict: {run.verdict}")
run.info["idle"]["events"]"""),
    ("code", """\
watch.wait_for_report()
Image(filename=str(watch.run_dir / "utilization.png"))"""),
    ("markdown", """\
## Next

- `gpu-watch report gpu_watch_logs` lists the runs; `gpu-watch report <run folder>` summarises
  one and redraws its plots and `report.html`.
- `GPUWatch(require_gpu=True)` raises right after the first step when training runs on the CPU.
- `GPUWatch(on_idle="raise")` ends an idle run with a `GPUIdleError` that carries the evidence."""),
]


def build() -> nbformat.NotebookNode:
    """The notebook, outputs stripped, with stable cell ids so that regenerating it is a no-op."""
    cells = []
    for index, (kind, source) in enumerate(CELLS):
        cell = new_markdown_cell(source) if kind == "markdown" else new_code_cell(source)
        cell["id"] = f"cell-{index:02d}"
        cells.append(cell)
    notebook = new_notebook(cells=cells)
    notebook["metadata"] = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    return notebook


def main() -> None:
    path = Path(__file__).with_name("quickstart.ipynb")
    notebook = build()
    nbformat.validate(notebook)
    nbformat.write(notebook, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
