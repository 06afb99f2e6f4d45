"""Mutation testing of the numbers outside functions, which mutmut leaves alone (used by
`make mutate`).

mutmut mutates function bodies only, so a threshold such as ``verdict.TENSOR_IDLE_PCT = 1.0``
or an NVML id such as ``nvml._CLOCK_SM = 1`` is never changed by `mutmut run`. This step does
it: every number written in a module-level assignment, or as a class attribute (a dataclass
field's default), of the modules mutmut mutates (``[tool.mutmut] only_mutate`` in
pyproject.toml) becomes two mutants: an integer n becomes n - 1 and n + 1, a float x becomes
0.9 x and 1.1 x. So a threshold survives unless a test pins it with values within 10 % on each
side of it (at and beside the boundary).

Each mutant runs mutmut's test selection (``pytest_add_cli_args_test_selection``), stopping at
the first failure, against a copy of the repository with the one number changed. A mutant is
killed when a test fails, when pytest cannot import the tests, or when the tests run past the
timeout; it survives when they pass. A number whose change is harmless is listed, with the
reason, in tests/mutation_equivalents.txt under its file (``gpu_watch/judging/verdict.py | <the line
as mutated> | <why>``). The exit status is 1 when a mutant survives that is not listed there,
or a listed one is not a surviving mutant, and 2 when the tests fail without any mutant.

Usage: ``python tests/mutation_constants.py [--list]``
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mutation_score import ROOT, SEPARATOR, config, equivalents

COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "mutants", "__pycache__", "*.pyc",
                                     ".pytest_cache", ".ruff_cache", ".hypothesis",
                                     "gpu_watch_logs", "*.egg-info", "build")
TARGET_PCT = 100.0  # of non-equivalent mutants, in every module (docs/mutation.md)
KILLED_RC = {1, 2, 3}  # tests failed, could not be collected (an import broke), pytest crashed


@dataclass(frozen=True)
class Mutant:
    """One number outside functions, changed."""

    path: str  # relative to the repository root
    line: int
    name: str  # the name assigned
    old: str  # the literal as written
    new: str
    start: int  # byte offsets of the literal within its line
    end: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.start} {self.name} {self.old} -> {self.new}"

    def mutated_line(self, source: str) -> str:
        """The line as the mutant has it, stripped: how the equivalents file names it."""
        return apply(source, self).splitlines()[self.line - 1].strip()


def _changed(value: int | float) -> list[str]:
    if isinstance(value, int):
        return [repr(value - 1), repr(value + 1)]
    if value == 0:
        return ["-0.1", "0.1"]
    return [repr(round(value * 0.9, 12)), repr(round(value * 1.1, 12))]


def mutants_of(path: str, root: Path = ROOT) -> list[Mutant]:
    """The mutants of every int or float literal in `path`'s module-level assignments and in
    the class attributes of its top-level classes (a dataclass field's default)."""
    source = (root / path).read_text()
    found = []
    tree = ast.parse(source)
    statements = [(node, "") for node in tree.body]
    statements += [(node, f"{cls.name}.") for cls in tree.body if isinstance(cls, ast.ClassDef)
                   for node in cls.body]  # class attributes: dataclass defaults
    for node, owner in statements:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        name = owner + ast.unparse(targets[0])
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


def number_equivalents(root: Path) -> dict[tuple[str, str], str]:
    """(module path, mutated line) -> why that changed number changes nothing: the entries of
    tests/mutation_equivalents.txt that name a file rather than a function."""
    return {key: why for key, why in equivalents(root).items() if key[0].endswith(".py")}


class TestRunner:
    """Runs mutmut's test selection in `workdir`, again and again, as mutmut does: the test
    session's imports (TensorFlow, pandas, hypothesis, ...) are made once, by collecting the
    tests here, and each run is a fork of this process that imports the repository's own
    modules afresh, so it sees the file as it is now. Its output goes to `log`."""

    def __init__(self, workdir: Path, log: Path) -> None:
        cfg = config(workdir)
        self.workdir = workdir
        self.log = log
        self.args = [*cfg.get("pytest_add_cli_args", []),
                     *cfg["pytest_add_cli_args_test_selection"]]
        os.chdir(workdir)
        sys.path.insert(0, str(workdir))
        rc = self._in_child(["--collect-only", "-q", *self.args], None, fork=False)
        if rc != 0:
            raise RuntimeError(f"pytest could not collect the tests (exit status {rc}): "
                               f"{self.output()}")
        for name, module in list(sys.modules.items()):  # the repository's own, collected
            if Path(getattr(module, "__file__", None) or "/").is_relative_to(workdir):
                del sys.modules[name]

    def run(self, timeout_s: float | None) -> tuple[int | None, float]:
        """(pytest's exit status, None on a timeout; seconds), stopping at the first failure."""
        start = time.monotonic()
        rc = self._in_child(["-x", "-q", *self.args], timeout_s, fork=True)
        return rc, time.monotonic() - start

    def output(self, chars: int = 3000) -> str:
        """The end of the last run's output."""
        return self.log.read_text(errors="replace")[-chars:]

    def _in_child(self, args: list[str], timeout_s: float | None, fork: bool) -> int | None:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = (os.dup(1), os.dup(2))
        pid = os.fork() if fork else 0
        if pid == 0:
            rc = 3
            log = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(log, 1)
            os.dup2(log, 2)
            try:
                import pytest

                rc = int(pytest.main(args))
            finally:
                if fork:
                    os._exit(rc)  # a child never goes on as the parent
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(log)
            return rc
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            if deadline is not None and time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
            time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    modules = config(root)["only_mutate"]
    mutants = [m for path in modules for m in mutants_of(path, root)]
    sources = {path: (root / path).read_text() for path in modules}
    if args.list:
        for mutant in mutants:
            line = mutant.mutated_line(sources[mutant.path])
            print(f"{mutant}\n    {mutant.path}{SEPARATOR}{line}")
        return 0
    cwd = os.getcwd()
    try:
        return _run(root, modules, mutants, sources)
    finally:
        os.chdir(cwd)


def _run(root: Path, modules: list[str], mutants: list[Mutant], sources: dict[str, str]) -> int:
    known = number_equivalents(root)
    matched = set()
    with tempfile.TemporaryDirectory(prefix="gpu-watch-constants-") as tmp:
        workdir = Path(tmp) / "repo"
        shutil.copytree(root, workdir, ignore=COPY_IGNORE)
        runner = TestRunner(workdir, Path(tmp) / "pytest.log")
        rc, clean_s = runner.run(None)
        if rc != 0:
            print(f"the tests fail without any mutant (pytest exit status {rc}):\n"
                  f"{runner.output()}", file=sys.stderr)
            return 2
        timeout_s = max(60.0, 5 * clean_s)
        print(f"{len(mutants)} mutants of numbers outside functions; the clean run took "
              f"{clean_s:.0f} s, timeout {timeout_s:.0f} s", flush=True)
        tally: dict[str, Counter] = {path: Counter() for path in modules}
        survivors = []
        for mutant in mutants:
            target = workdir / mutant.path
            original = target.read_text()
            target.write_text(apply(original, mutant))
            try:
                rc, seconds = runner.run(timeout_s)
            finally:
                target.write_text(original)
            outcome = {None: "timeout", 0: "survived"}.get(rc, "killed" if rc in KILLED_RC
                                                           else f"exit status {rc}")
            print(f"  {outcome:8s} {seconds:5.1f} s  {mutant}", flush=True)
            key = (mutant.path, mutant.mutated_line(sources[mutant.path]))
            if rc is None or rc in KILLED_RC:
                tally[mutant.path]["killed"] += 1
            elif rc == 0 and key in known:
                tally[mutant.path]["equivalent"] += 1
                matched.add(key)
            elif rc == 0:
                tally[mutant.path]["survived"] += 1
                survivors.append((mutant, key))
            else:
                print(f"pytest exit status {rc} for {mutant}: not a test result", file=sys.stderr)
                return 2
    print(f"{'module':14s} {'mutants':>7s} {'killed':>6s} {'equiv':>5s} {'survived':>8s} "
          f"{'score':>6s} {'target':>6s}")
    for path in modules:
        t = tally[path]
        total = t["killed"] + t["equivalent"] + t["survived"]
        counted = total - t["equivalent"]
        score = 100.0 * t["killed"] / counted if counted else 100.0
        print(f"{Path(path).name:14s} {total:7d} {t['killed']:6d} {t['equivalent']:5d} "
              f"{t['survived']:8d} {score:5.1f}% {TARGET_PCT:5.0f}%")
    for mutant, (path, text) in survivors:
        print(f"    survived: {mutant}\n        {path}{SEPARATOR}{text}{SEPARATOR}")
    unused = sorted(set(known) - matched)
    for path, text in unused:
        print(f"listed as equivalent, but no surviving mutant of {path} has the line: {text}")
    return 1 if survivors or unused else 0


if __name__ == "__main__":
    sys.exit(main())
