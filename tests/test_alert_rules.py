"""The alert rules shipped in deploy/prometheus/ load, and pass their unit tests under
Prometheus' own `promtool test rules` (each alert fires where it must and nowhere else)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from prometheus_tools import program

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def promtool(*args: str, cwd: Path = RULES) -> subprocess.CompletedProcess:
    return subprocess.run([program("promtool"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_the_rules_file_loads():
    result = promtool("check", "rules", "gpu-watch-rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_every_alert_fires_where_it_must_and_nowhere_else():
    result = promtool("test", "rules", "gpu-watch-rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rule_tests_catch_a_wrong_threshold(tmp_path):
    """The unit tests are not vacuous: a straggler rule that waits for a 50-point gap misses
    the seeded straggler, and promtool says so."""
    for name in ("gpu-watch-rules.yml", "gpu-watch-rules.test.yml"):
        shutil.copy(RULES / name, tmp_path / name)
    rules = tmp_path / "gpu-watch-rules.yml"
    text = rules.read_text()
    assert text.count(") > 0.20\n") == 1
    rules.write_text(text.replace(") > 0.20\n", ") > 0.50\n"))
    result = promtool("test", "rules", "gpu-watch-rules.test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "GPUWatchStraggler" in result.stdout + result.stderr


def test_the_rule_tests_catch_a_straggler_rule_on_the_wait_alone(tmp_path):
    """Job y of the unit tests: two ranks whose inputs read ahead and are about as slow. A
    straggler rule that compares waits alone names rank 0 there, and promtool says so."""
    for name in ("gpu-watch-rules.yml", "gpu-watch-rules.test.yml"):
        shutil.copy(RULES / name, tmp_path / name)
    rules = tmp_path / "gpu-watch-rules.yml"
    text = rules.read_text()
    shared = "min by (job_id) (gpu_watch:input_share:ratio_rate5m)"
    assert text.count(shared) == 1
    rules.write_text(text.replace(shared, "min by (job_id) (gpu_watch:data_wait:ratio_rate5m)"))
    result = promtool("test", "rules", "gpu-watch-rules.test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "GPUWatchStraggler" in result.stdout + result.stderr
    assert "y-rank0" in result.stdout + result.stderr
