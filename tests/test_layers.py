"""The layering rules, read from the source: which gpu_watch module may import which.

Every import counts, at the top of a module or inside a function: a lazy import is still a
dependency a reader has to know about."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gpu_watch"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The gpu_watch modules `path` imports (a `from gpu_watch import x` names gpu_watch.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "gpu_watch" or name.startswith("gpu_watch.")}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
IMPORTS = {name: imported(path) for name, path in MODULES.items()}


def test_the_import_graph_is_read_from_every_module():
    assert {"gpu_watch.callback", "gpu_watch.monitor", "gpu_watch.sampler"} <= set(IMPORTS)
    assert "gpu_watch.sampler" in IMPORTS["gpu_watch.monitor"]  # the reader sees imports
    assert "gpu_watch.doctor.during_training" in IMPORTS["gpu_watch.process_facts"]  # lazy ones


@pytest.mark.parametrize(("module", "forbidden", "why"), [
    ("gpu_watch.monitor", "gpu_watch.keras_internals",
     "one run's lifecycle is independent of Keras: the callback hands it its probes"),
    ("gpu_watch.callback", "gpu_watch.sampler",
     "the callback is glue: the Monitor owns its sampler"),
    ("gpu_watch.callback", "gpu_watch.timeline",
     "the callback is glue: the Monitor owns the timeline (and hands out its idle events)"),
    *[(module, layer, "what presents a run reads its records, never the layers that make them")
      for module in ("gpu_watch.report", "gpu_watch.report.view", "gpu_watch.report.figures",
                     "gpu_watch.report.text", "gpu_watch.report.html", "gpu_watch.live",
                     "gpu_watch.follow", "gpu_watch.terminal")
      for layer in ("gpu_watch.sampler", "gpu_watch.timeline", "gpu_watch.data_wait",
                    "gpu_watch.idle_watch")],
    *[(module, "gpu_watch.timeline", "the timeline feeds its parts: they sit below it")
      for module in ("gpu_watch.data_wait", "gpu_watch.idle_watch", "gpu_watch.activity")],
])
def test_a_layer_does_not_import_what_it_must_not(module, forbidden, why):
    offending = {name for name in IMPORTS[module]
                 if name == forbidden or name.startswith(forbidden + ".")}
    assert not offending, f"{module} imports {sorted(offending)}: {why}"
