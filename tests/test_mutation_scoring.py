"""`make mutate`'s scoring: mutmut's results read by the mutated line, only from a finished run
of today's code, and the mutation step for numbers outside functions, on small repositories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mutation_constants
import mutation_score

ORIGINAL = "def over(v):\n    return v > LIMIT\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def scored_repo(root: Path, mutants: dict[int, tuple[str, int | None]],
                equivalents: str = "") -> Path:
    """A repository with mutmut's results for `gpu_watch/limits.py`: mutant number -> (its
    body line, exit status)."""
    write(root / "pyproject.toml", """
        [tool.mutmut]
        only_mutate = ["gpu_watch/limits.py"]
        pytest_add_cli_args_test_selection = ["tests/test_limits.py"]
    """)
    write(root / "gpu_watch/limits.py", "LIMIT = 5\n" + ORIGINAL)
    write(root / "tests/test_limits.py", "")
    write(root / "tests/mutation_equivalents.txt", "# equivalents\n" + equivalents)
    functions = ["def x_over__mutmut_orig(v):\n    return v > LIMIT\n"]
    functions += [f"def x_over__mutmut_{n}(v):\n    {line}\n" for n, (line, _) in mutants.items()]
    write(root / "mutants/gpu_watch/limits.py", "LIMIT = 5\n" + "\n".join(functions))
    codes = {f"gpu_watch.limits.x_over__mutmut_{n}": code for n, (_, code) in mutants.items()}
    write(root / "mutants/gpu_watch/limits.py.meta", json.dumps({"exit_code_by_key": codes}))
    return root


def test_equivalents_are_matched_by_the_mutated_line_whatever_mutmut_numbers_them(tmp_path,
                                                                                  capsys):
    listed = "gpu_watch.limits.over | return v >= LIMIT | at the limit both are the same\n"
    for number in (1, 7):  # the same mutant under another number, after the function changed
        root = scored_repo(tmp_path / str(number), {number: ("return v >= LIMIT", 0),
                                                    number + 1: ("return v > None", 1)}, listed)
        assert mutation_score.main(["--root", str(root)]) == 0
        assert "limits.py                    2      1     1        0 100.0%  50.0%   100%" \
            in capsys.readouterr().out


def test_a_survivor_scores_under_the_target_and_is_printed_for_the_list(tmp_path, capsys):
    root = scored_repo(tmp_path, {1: ("return v >= LIMIT", 0), 2: ("return v > None", 1)})
    assert mutation_score.main(["--root", str(root), "--survivors"]) == 1
    out = capsys.readouterr().out
    assert " 50.0%" in out and "below the 100 % target: limits.py" in out
    assert "gpu_watch.limits.over | return v >= LIMIT | " in out


def test_a_listed_equivalent_that_tests_now_kill_fails(tmp_path, capsys):
    listed = "gpu_watch.limits.over | return v >= LIMIT | at the limit both are the same\n"
    root = scored_repo(tmp_path, {1: ("return v >= LIMIT", 1)}, listed)
    assert mutation_score.main(["--root", str(root)]) == 1
    assert "no surviving mutant of gpu_watch.limits.over has the line: return v >= LIMIT" \
        in capsys.readouterr().out


def test_the_same_change_at_two_places_is_named_with_the_line_before_it(tmp_path):
    root = tmp_path
    write(root / "mutants/gpu_watch/limits.py", """
        def x_pick__mutmut_orig(a, b):
            first = f(a,
                      facts=facts)
            second = f(b,
                       facts=facts)
        def x_pick__mutmut_1(a, b):
            first = f(a,
                      facts=facts)
            second = f(b,
                       facts=None)
        def x_pick__mutmut_2(a, b):
            first = f(a,
                      facts=None)
            second = f(b,
                       facts=facts)
        def x_pick__mutmut_3(a, b):
            first = f(a,
                      facts=facts)
            second = f(None,
                       facts=facts)
    """)
    lines = mutation_score.mutated_lines(root / "mutants/gpu_watch/limits.py")
    assert lines == {"x_pick__mutmut_1": "second = f(b, ⏎ facts=None)",
                     "x_pick__mutmut_2": "first = f(a, ⏎ facts=None)",
                     "x_pick__mutmut_3": "second = f(None,"}


def test_an_unfinished_run_is_not_scored(tmp_path, capsys):
    root = scored_repo(tmp_path, {1: ("return v >= LIMIT", 1), 2: ("return v > None", None)})
    assert mutation_score.main(["--root", str(root)]) == 2
    assert "1 mutants were not tested" in capsys.readouterr().err


def test_results_older_than_the_code_or_the_tests_they_ran_are_not_scored(tmp_path, capsys):
    root = scored_repo(tmp_path, {1: ("return v > None", 1)})
    meta = root / "mutants/gpu_watch/limits.py.meta"
    then = meta.stat().st_mtime
    other_test = write(root / "tests/test_other.py", "")  # not in mutmut's selection
    os.utime(other_test, (then + 10, then + 10))
    assert mutation_score.main(["--root", str(root)]) == 0
    for changed in ("gpu_watch/limits.py", "tests/test_limits.py", "pyproject.toml"):
        os.utime(root / changed, (then + 10, then + 10))
        assert mutation_score.main(["--root", str(root)]) == 2
        assert f"older than {changed}" in capsys.readouterr().err
        os.utime(root / changed, (then - 10, then - 10))


def test_a_module_without_results_is_not_scored(tmp_path, capsys):
    root = scored_repo(tmp_path, {1: ("return v > None", 1)})
    (root / "mutants/gpu_watch/limits.py.meta").unlink()
    assert mutation_score.main(["--root", str(root)]) == 2
    assert "no mutmut results for limits.py" in capsys.readouterr().err


# -- numbers outside functions -------------------------------------------------------------------


def constants_repo(root: Path, equivalents: str) -> Path:
    write(root / "pyproject.toml", """
        [tool.mutmut]
        only_mutate = ["pkg/limits.py"]
        pytest_add_cli_args_test_selection = ["tests/test_limits.py"]
        pytest_add_cli_args = ["-p", "no:cacheprovider"]
    """)
    write(root / "pkg/__init__.py", "")
    write(root / "pkg/limits.py", """
        LIMIT = 0x5  # a comment: ünïcode before nothing
        RATIO, FLAG = 0.5, True


        def over(value):
            return value > LIMIT * 2


        class Defaults:
            count: int = 3
    """)
    write(root / "tests/test_limits.py", """
        from pkg.limits import Defaults, over


        def test_over_ten():
            assert not over(10) and over(11)


        def test_three():
            assert Defaults.count == 3
    """)
    write(root / "tests/mutation_equivalents.txt", equivalents)
    return root


def test_numbers_outside_functions_become_two_mutants_each(tmp_path):
    root = constants_repo(tmp_path, "")
    found = mutation_constants.mutants_of("pkg/limits.py", root)
    assert [(m.name, m.old, m.new) for m in found] == [
        ("LIMIT", "0x5", "4"), ("LIMIT", "0x5", "6"), ("(RATIO, FLAG)", "0.5", "0.45"),
        ("(RATIO, FLAG)", "0.5", "0.55"), ("Defaults.count", "3", "2"),
        ("Defaults.count", "3", "4")]
    source = (root / "pkg/limits.py").read_text()
    assert found[1].mutated_line(source) == "LIMIT = 6  # a comment: ünïcode before nothing"
    assert mutation_constants.apply(source, found[3]).count("0.55") == 1


def test_each_number_mutant_runs_the_tests_and_unpinned_ones_survive(tmp_path):
    listed = ("pkg/limits.py | RATIO, FLAG = 0.45, True | RATIO is read nowhere\n"
              "pkg/limits.py | LIMIT = 7 | a stale entry\n")
    root = constants_repo(tmp_path, listed)
    done = subprocess.run([sys.executable, mutation_constants.__file__, "--root", str(root)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 1, done.stderr
    out = done.stdout
    assert "limits.py            6      4     1        1  80.0%   100%" in out
    assert "pkg/limits.py | RATIO, FLAG = 0.55, True | " in out
    assert "no surviving mutant of pkg/limits.py has the line: LIMIT = 7" in out
    assert not (root / "mutants").exists() and "LIMIT = 0x5" in (root / "pkg/limits.py").read_text()
