"""Mutation testing of module-level numbers, which mutmut leaves alone (used by `make mutate`).

mutmut mutates function bodies only, so a threshold such as ``verdict.TENSOR_IDLE_PCT = 1.0``
or an NVML id such as ``nvml._CLOCK_SM = 1`` is never changed by `mutmut run`. This step does
it: every number written in a module-level assignment of the modules mutmut mutates
(``[tool.mutmut] only_mutate`` in pyproject.toml) becomes two mutants, an integer n becomes
n - 1 and n + 1, a float x becomes 0.9 x and 1.1 x. So a threshold survives unless a test
pins it with values within 10 % on each side of it (at and beside the boundary).

Each mutant runs mutmut's test selection (``pytest_add_cli_args_test_selection``), stopping at
the first failure, against a copy of the repository with the one number changed. A mutant is
killed when a test fails, when pytest cannot import the tests, or when the tests run past the
timeout; it survives when they pass. Any survivor makes the exit status 1.

Usage: ``python tests/mutation_constants.py [--list]``
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

try:
    from tomllib import loads as toml_loads
except ModuleNotFoundError:  # Python 3.10: mutmut reads its settings with `toml` there
    from toml import loads as toml_loads

ROOT = Path(__file__).resolve().parent.parent
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "mutants", "__pycache__", "*.pyc",
                                     ".pytest_cache", ".ruff_cache", ".hypothesis",
                                     "gpu_watch_logs", "*.egg-info", "build")
KILLED_RC = {1, 2, 3}  # tests failed, could not be collected (an import broke), pytest crashed


@dataclass(frozen=True)
class Mutant:
    """One number of a module-level assignment, changed."""

    path: str  # relative to the repository root
    line: int
    name: str  # the name assigned
    old: str  # the literal as written
    new: str
    start: int  # byte offsets of the literal within its line
    end: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.start} {self.name} {self.old} -> {self.new}"


def config() -> dict:
    """mutmut's section of pyproject.toml."""
    return toml_loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]


def _changed(value: int | float) -> list[str]:
    if isinstance(value, int):
        return [repr(value - 1), repr(value + 1)]
    if value == 0:
        return ["-0.1", "0.1"]
    return [repr(round(value * 0.9, 12)), repr(round(value * 1.1, 12))]


def mutants_of(path: str) -> list[Mutant]:
    """The mutants of every int or float literal in `path`'s module-level assignments."""
    source = (ROOT / path).read_text()
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        name = next((t.id for t in targets if isinstance(t, ast.Name)), "?")
        for sub in ast.walk(value):
            if not (isinstance(sub, ast.Constant) and type(sub.value) in (int, float)):
                continue
            line = source.splitlines()[sub.lineno - 1].encode()
            old = line[sub.col_offset:sub.end_col_offset].decode()
            for new in _changed(sub.value):
                found.append(Mutant(path, sub.lineno, name, old, new, sub.col_offset,
                                    sub.end_col_offset))
    return found


def apply(source: str, mutant: Mutant) -> str:
    """`source` with `mutant`'s number changed."""
    lines = source.splitlines(keepends=True)
    line = lines[mutant.line - 1].encode()
    assert line[mutant.start:mutant.end].decode() == mutant.old, mutant
    lines[mutant.line - 1] = (line[:mutant.start] + mutant.new.encode()
                              + line[mutant.end:]).decode()
    return "".join(lines)


def run_tests(workdir: Path, timeout_s: float | None) -> tuple[int | None, float]:
    """(pytest's exit status, None on a timeout; seconds) of mutmut's selection in `workdir`."""
    cfg = config()
    command = [sys.executable, "-m", "pytest", "-x", "-q", *cfg.get("pytest_add_cli_args", []),
               *cfg["pytest_add_cli_args_test_selection"]]
    env = dict(os.environ, PYTHONPATH=str(workdir), PYTHONDONTWRITEBYTECODE="1")
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - start
    return done.returncode, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    args = parser.parse_args(argv)
    modules = config()["only_mutate"]
    mutants = [m for path in modules for m in mutants_of(path)]
    if args.list:
        print("\n".join(map(str, mutants)))
        return 0
    with tempfile.TemporaryDirectory(prefix="gpu-watch-constants-") as tmp:
        workdir = Path(tmp) / "repo"
        shutil.copytree(ROOT, workdir, ignore=COPY_IGNORE)
        rc, clean_s = run_tests(workdir, None)
        if rc != 0:
            print(f"the tests fail without any mutant (pytest exit status {rc})", file=sys.stderr)
            return 2
        timeout_s = max(60.0, 5 * clean_s)
        print(f"{len(mutants)} mutants of module-level numbers; the clean run took "
              f"{clean_s:.0f} s, timeout {timeout_s:.0f} s")
        tally: dict[str, Counter] = {path: Counter() for path in modules}
        survivors = []
        for mutant in mutants:
            target = workdir / mutant.path
            original = target.read_text()
            target.write_text(apply(original, mutant))
            try:
                rc, _ = run_tests(workdir, timeout_s)
            finally:
                target.write_text(original)
            if rc is None or rc in KILLED_RC:
                tally[mutant.path]["killed"] += 1
            elif rc == 0:
                tally[mutant.path]["survived"] += 1
                survivors.append(mutant)
            else:
                print(f"pytest exit status {rc} for {mutant}: not a test result", file=sys.stderr)
                return 2
    print(f"{'module':14s} {'mutants':>7s} {'killed':>6s} {'survived':>8s} {'score':>6s}")
    for path in modules:
        t = tally[path]
        total = t["killed"] + t["survived"]
        score = 100.0 * t["killed"] / total if total else 100.0
        print(f"{Path(path).name:14s} {total:7d} {t['killed']:6d} {t['survived']:8d} "
              f"{score:5.1f}%")
    for mutant in survivors:
        print(f"    survived: {mutant}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
