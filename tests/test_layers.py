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
    assert {"gpu_watch.training.callback", "gpu_watch.training.monitor",
            "gpu_watch.sensing.sampler"} <= set(IMPORTS)
    # The reader sees imports, and lazy ones.
    assert "gpu_watch.sensing.sampler" in IMPORTS["gpu_watch.training.monitor"]
    assert "gpu_watch.doctor.during_training" in IMPORTS["gpu_watch.training.process_facts"]


# The package's parts, lowest first: a part imports only parts below it, never one beside it.
LAYERS = (
    ("gpu_watch._version", "gpu_watch.errors"),
    ("gpu_watch.runlog", "gpu_watch.sensing"),
    ("gpu_watch.judging",),
    ("gpu_watch.report", "gpu_watch.export", "gpu_watch.doctor"),
    ("gpu_watch.views",),
    ("gpu_watch.training",),
    ("gpu_watch.demo", "gpu_watch.testing"),
    ("gpu_watch.cli",),
    ("gpu_watch.__main__", "gpu_watch"),
)
LEVEL = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """The part of the package `module` belongs to: a sub-package, or a module at the top."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def test_every_part_of_the_package_has_its_layer():
    assert {part_of(name) for name in MODULES} == set(LEVEL)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    here = LEVEL[part_of(module)]
    # `from gpu_watch import runlog` names the package too, whose lazy exports import nothing.
    upward = sorted(name for name in IMPORTS[module] - {"gpu_watch"}
                    if part_of(name) in LEVEL and part_of(name) != part_of(module)
                    and LEVEL[part_of(name)] >= here)
    assert not upward, f"{module} imports {upward}, which are not below it"


@pytest.mark.parametrize(("module", "forbidden", "why"), [
    ("gpu_watch.training.monitor", "gpu_watch.training.keras_internals",
     "one run's lifecycle is independent of Keras: the callback hands it its probes"),
    ("gpu_watch.training.callback", "gpu_watch.sensing.sampler",
     "the callback is glue: the Monitor owns its sampler"),
    ("gpu_watch.training.callback", "gpu_watch.judging.timeline",
     "the callback is glue: the Monitor owns the timeline (and hands out its idle events)"),
    *[(module, layer, "what presents a run reads its records, never the layers that make them")
      for module in ("gpu_watch.report", "gpu_watch.report.view", "gpu_watch.report.figures",
                     "gpu_watch.report.text", "gpu_watch.report.html", "gpu_watch.views.live",
                     "gpu_watch.views.follow", "gpu_watch.views.terminal")
      for layer in ("gpu_watch.sensing.sampler", "gpu_watch.judging.timeline",
                    "gpu_watch.judging.data_wait", "gpu_watch.judging.idle_watch")],
    *[(module, "gpu_watch.judging.timeline", "the timeline feeds its parts: they sit below it")
      for module in ("gpu_watch.judging.data_wait", "gpu_watch.judging.idle_watch",
                     "gpu_watch.judging.activity")],
])
def test_a_layer_does_not_import_what_it_must_not(module, forbidden, why):
    offending = {name for name in IMPORTS[module]
                 if name == forbidden or name.startswith(forbidden + ".")}
    assert not offending, f"{module} imports {sorted(offending)}: {why}"
