"""Print the mutation score per module after `mutmut run` (used by `make mutate`).

Reads mutmut's results in ``mutants/`` and the equivalent mutants listed in
``tests/mutation_equivalents.txt`` (mutants no test can kill, because the mutated code behaves
the same, each with its reason). An equivalent is named by its function and the text of the
line mutmut changed, as the mutant has it, never by mutmut's number for it (a position within
the function, which shifts when the function changes). The score is killed / (all mutants -
equivalent ones), and "raw" is killed / all mutants; a mutant no selected test runs counts as
surviving.

The exit status is 1 when a module scores under its target (the score docs/mutation.md states)
or a listed equivalent matches no mutant, and 2 when the results are not those of a finished
run of today's code: a module without results, a mutant not tested, or results older than a
source or test file.

Usage: ``python tests/mutation_score.py [--survivors] [--root DIR]``
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import sys
from collections import Counter
from pathlib import Path

try:
    from tomllib import loads as toml_loads
except ModuleNotFoundError:  # Python 3.10: mutmut reads its settings with `toml` there
    from toml import loads as toml_loads

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = "tests/mutation_equivalents.txt"
KILLED = {1, 3, 24, -24, 36, 152, 255, 37}  # failed, pytest error, timeouts, type check
NOT_RUN = {None, 2}  # not checked yet, or the run was interrupted
TARGET_PCT = 100.0  # of non-equivalent mutants, in every module (docs/mutation.md)
SEPARATOR = " | "
LINE_BREAK = " ⏎ "  # joins the lines of a mutation that changed more than one


def config(root: Path = ROOT) -> dict:
    """mutmut's section of pyproject.toml."""
    return toml_loads((root / "pyproject.toml").read_text())["tool"]["mutmut"]


def equivalents(root: Path = ROOT) -> dict[tuple[str, str], str]:
    """(function or file, mutated line) -> why the mutant behaves as the original."""
    found = {}
    path = root / EQUIVALENTS
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        function, _, rest = line.partition(SEPARATOR)
        text, _, reason = rest.rpartition(SEPARATOR)
        if not (function and text and reason):
            raise SystemExit(f"{path.name}:{number}: expected 'function | mutated line "
                             f"| reason', got {line!r}")
        found[(function.strip(), text.strip())] = reason.strip()
    return found


def function_equivalents(root: Path = ROOT) -> dict[tuple[str, str], str]:
    """The equivalents of mutmut's mutants: those that name a function, not a file (a number
    outside any function, which tests/mutation_constants.py changes)."""
    return {key: why for key, why in equivalents(root).items() if not key[0].endswith(".py")}


def readable(module: str, mutant: str) -> str:
    """"xǁNVMLǁ_read_gpm__mutmut_6" -> "gpu_watch.sensing.nvml.NVML._read_gpm"."""
    base = mutant.rsplit("__mutmut_", 1)[0]
    if base.startswith("xǁ"):
        _, cls, method = base.split("ǁ", 2)
        return f"{module}.{cls}.{method}"
    return f"{module}.{base.removeprefix('x_')}"


def mutated_lines(mutated_source: Path) -> dict[str, str]:
    """Each mutant's function name -> the lines mutmut changed, as the mutant has them. Where
    the same change is made at two places in a function (the same argument of two calls), the
    line before it comes first, so each mutant keeps a text of its own."""
    lines = mutated_source.read_text().splitlines()
    bodies = {}
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name:
            bodies[node.name] = [line.strip()
                                 for line in lines[node.body[0].lineno - 1:node.end_lineno]]
    short, long = {}, {}
    for name, body in bodies.items():
        original = bodies.get(name.rsplit("__mutmut_", 1)[0] + "__mutmut_orig")
        if original is None or name.endswith("__mutmut_orig"):
            continue
        new, old, before = [], [], ""
        matcher = difflib.SequenceMatcher(None, original, body, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag != "equal":
                before = before or (body[j1 - 1] if j1 else "")
                new += body[j1:j2]
                old += original[i1:i2]
        short[name] = LINE_BREAK.join(new) if new else "deleted: " + LINE_BREAK.join(old)
        long[name] = before + LINE_BREAK + short[name]
    seen = Counter((n.rsplit("__mutmut_", 1)[0], text) for n, text in short.items())
    return {n: short[n] if seen[(n.rsplit("__mutmut_", 1)[0], short[n])] == 1 else long[n]
            for n in short}


def _newest_input(root: Path) -> tuple[float, Path]:
    """The newest of the files a mutmut run depends on: the package, the settings, the tests
    it runs and their helpers (not other tests, nor these scoring scripts)."""
    selected = {root / arg for arg in config(root)["pytest_add_cli_args_test_selection"]
                if arg.startswith("tests/")}
    files = [root / "pyproject.toml", *(root / "gpu_watch").rglob("*.py"),
             *(f for f in (root / "tests").rglob("*.py")
               if f in selected or not f.name.startswith(("test_", "mutation_")))]
    return max((f.stat().st_mtime, f) for f in files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", action="store_true",
                        help="list surviving mutants as lines for the equivalents file")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    results = root / "mutants" / "gpu_watch"
    # Each module's path under gpu_watch/ (e.g. "judging/verdict.py"), as mutmut lays out its
    # results.
    modules = [Path(path).relative_to("gpu_watch").as_posix()
               for path in config(root)["only_mutate"]]
    missing = [m for m in modules if not (results / f"{m}.meta").is_file()]
    if missing:
        print(f"no mutmut results for {', '.join(missing)} under mutants/: run `mutmut run`",
              file=sys.stderr)
        return 2
    newest_s, newest = _newest_input(root)
    stale = [m for m in modules if (results / f"{m}.meta").stat().st_mtime < newest_s]
    if stale:
        print(f"the results for {', '.join(stale)} are older than {newest.relative_to(root)}: "
              "run `make mutate` again", file=sys.stderr)
        return 2
    known = function_equivalents(root)
    matched: set[tuple[str, str]] = set()
    below, unfinished = [], []
    print(f"{'module':22s} {'mutants':>7s} {'killed':>6s} {'equiv':>5s} {'survived':>8s} "
          f"{'score':>6s} {'raw':>6s} {'target':>6s}")
    for module_file in modules:
        module = "gpu_watch." + module_file.removesuffix(".py").replace("/", ".")
        codes = json.loads((results / f"{module_file}.meta").read_text())["exit_code_by_key"]
        texts = mutated_lines(results / module_file)
        tally: Counter = Counter()
        survivors = []
        for name, code in codes.items():
            local = name.removeprefix(module + ".")
            key = (readable(module, local), texts.get(local, "?"))
            if code in NOT_RUN:
                unfinished.append(name)
            elif code in KILLED:
                tally["killed"] += 1
            elif key in known:
                tally["equivalent"] += 1
                matched.add(key)
            else:
                tally["survived"] += 1
                survivors.append((name, key))
        counted = len(codes) - tally["equivalent"]
        score = 100.0 * tally["killed"] / counted if counted else 100.0
        raw = 100.0 * tally["killed"] / len(codes) if codes else 100.0
        print(f"{module_file:22s} {len(codes):7d} {tally['killed']:6d} {tally['equivalent']:5d} "
              f"{tally['survived']:8d} {score:5.1f}% {raw:5.1f}% {TARGET_PCT:5.0f}%")
        if score < TARGET_PCT:
            below.append(module_file)
        if args.survivors:
            for name, (function, text) in survivors:
                print(f"    survived: {name}\n        {function}{SEPARATOR}{text}{SEPARATOR}")
    if unfinished:
        print(f"{len(unfinished)} mutants were not tested (e.g. {unfinished[0]}): the run did "
              "not finish", file=sys.stderr)
        return 2
    unused = sorted(set(known) - matched)
    for function, text in unused:
        print(f"listed as equivalent, but no surviving mutant of {function} has the line: {text}")
    if below:
        print(f"below the {TARGET_PCT:.0f} % target: {', '.join(below)}")
    return 1 if below or unused else 0


if __name__ == "__main__":
    sys.exit(main())
