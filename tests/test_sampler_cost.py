"""`benchmarks/sampler_cost.py` on a simulated GPU: it times the calls the seam makes, and its
two configurations differ in what they should (call counts only; the times are the
benchmark's to print, not a test's to assert)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "sampler_cost.py"
LIST = "nvmlDeviceGetComputeRunningProcesses_v3"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("sampler_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_counts_each_call_per_tick_in_both_configurations():
    bench = load_benchmark()
    costs = bench.measure(bench.simulated_lib, rounds=1, seconds=1.2, interval_s=0.2)
    assert costs.gpus == 1
    for config in bench.CONFIGS:
        ticks = costs.timed_ticks[config]
        assert ticks >= 5
        assert costs.calls[config]["nvmlDeviceGetUtilizationRates"] == ticks
        assert costs.calls[config]["nvmlDeviceGetProcessUtilization"] == ticks
        assert costs.call_ns[config]["nvmlDeviceGetUtilizationRates"] > 0
        assert len(costs.tick_us[config]) == 1 and costs.tick_us[config][0] > 0
    # The process list once a second as shipped, at every tick without slow reads.
    assert costs.calls["every tick"][LIST] == costs.timed_ticks["every tick"]
    assert 1 <= costs.calls["default"][LIST] <= 2
    # Setting up (GPM buffers, the first tick) is left out of what is counted per tick.
    assert "nvmlGpmSampleAlloc" not in costs.calls["default"]
    assert "nvmlGpmSampleFree" not in costs.calls["default"]
    lines = bench.report(costs, "simulated", 0.2)
    assert any(LIST in line for line in lines)
    assert sum("% of one core per GPU" in line for line in lines) == 2


def test_the_timing_wrapper_passes_everything_else_through():
    bench = load_benchmark()
    fake = bench.simulated_lib()
    lib = bench.TimedLib(fake)
    assert lib.simulated is True
    assert not hasattr(lib, "nvmlNoSuchFunction")
    lib.nvmlInit()
    assert lib.calls == {"nvmlInit": 1} and lib.cpu_ns["nvmlInit"] >= 0
