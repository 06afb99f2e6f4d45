"""Print the mutation score per module after `mutmut run` (used by `make mutate`).

Reads mutmut's results in ``mutants/`` and the equivalent mutants listed in
``tests/mutation_equivalents.txt`` (mutants no test can kill, because the mutated code behaves
the same, each with its reason). The score is killed / (all mutants - equivalent ones), and
"raw" is killed / all mutants; a mutant no selected test runs counts as surviving.

Usage: ``python tests/mutation_score.py [--survivors]``
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = Path(__file__).with_name("mutation_equivalents.txt")
KILLED = {1, 3, 24, -24, 36, 152, 255, 37}  # failed, pytest error, timeouts, type check
TARGETS = {"verdict.py": 90.0, "timeline.py": 90.0, "nvml.py": 80.0, "causes.py": 90.0,
           "cluster.py": 90.0}


def equivalents() -> dict[str, str]:
    """Mutant name -> why it behaves as the original."""
    found = {}
    for line in EQUIVALENTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition(" ")
            found[name] = reason.strip()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants")
    args = parser.parse_args(argv)
    metas = sorted((ROOT / "mutants" / "gpu_watch").glob("*.py.meta"))
    if not metas:
        print("no mutmut results under mutants/: run `mutmut run` first", file=sys.stderr)
        return 2
    known = equivalents()
    below = []
    print(f"{'module':14s} {'mutants':>7s} {'killed':>6s} {'equiv':>5s} {'survived':>8s} "
          f"{'score':>6s} {'raw':>6s} {'target':>6s}")
    for meta in metas:
        module = meta.name.removesuffix(".meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        tally = Counter()
        survivors = []
        for name, code in codes.items():
            if code in KILLED:
                tally["killed"] += 1
            elif name in known:
                tally["equivalent"] += 1
            else:
                tally["survived"] += 1
                survivors.append(name)
        counted = len(codes) - tally["equivalent"]
        score = 100.0 * tally["killed"] / counted if counted else 100.0
        target = TARGETS.get(module, 0.0)
        raw = 100.0 * tally["killed"] / len(codes) if codes else 100.0
        print(f"{module:14s} {len(codes):7d} {tally['killed']:6d} {tally['equivalent']:5d} "
              f"{tally['survived']:8d} {score:5.1f}% {raw:5.1f}% {target:5.0f}%")
        if score < target:
            below.append(module)
        if args.survivors:
            for name in survivors:
                print(f"    survived: {name}")
    stale = sorted(set(known) - {n for m in metas
                                 for n in json.loads(m.read_text())["exit_code_by_key"]})
    for name in stale:
        print(f"note: {name} is listed as equivalent but mutmut made no such mutant")
    if below:
        print(f"below target: {', '.join(below)}")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
