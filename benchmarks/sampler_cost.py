"""What does the sampler cost the CPU, per GPU? Each NVML call it makes, timed one by one.

The sampler's ticks (`Sampler.tick`: one `NVML.read` per GPU) run in real time at the default
interval, in alternating rounds of two configurations side by side:

- "default": as shipped. Utilization, memory, per-process SM utilization, power, temperature,
  clocks and the energy counter at every tick; the process list, the ECC error counts and GPM
  samples once a second (`NVML.process_interval_s`, `NVML.ecc_interval_s`,
  `NVML.gpm_interval_s`); each process name once per PID.
- "every tick": the process list, the ECC counts and GPM at every tick too, as a sampler without
  slow reads.

A wrapper around the NVML bindings times every call the seam makes (CPU time of the calling
thread: `time.thread_time_ns`, user and system, so time in the driver's ioctls counts) and counts
calls per tick; the per-tick totals come from rounds without the wrapper. The result per GPU is
the sampler's share of one core: CPU seconds per second of training.

It reads this machine's NVML when there is one (every GPU it sees), else a simulated H100
(`FakeNVML`) with this process and one other on it, so every read has something to return. The
simulated figures are the Python side alone: a real driver's calls cost far more.

Usage:
    python benchmarks/sampler_cost.py              # about 30 s
    python benchmarks/sampler_cost.py --simulated  # FakeNVML even where NVML works
    python benchmarks/sampler_cost.py --rounds 5 --seconds 4
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_watch.sensing.nvml import NVML  # noqa: E402
from gpu_watch.sensing.sampler import DEFAULT_INTERVAL_S, Sampler  # noqa: E402
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess  # noqa: E402

BUDGET_PCT_OF_CORE = 1.0  # per GPU, at default settings
CONFIGS = ("default", "every tick")


class TimedLib:
    """The NVML bindings with every function call timed: CPU nanoseconds and calls by name.

    Everything else (constants, structure types, `simulated`) passes through as it is, and a
    name the bindings lack stays missing, so the seam's version fallbacks behave as without it.
    """

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self._wrapped: dict[str, Callable[..., Any]] = {}
        self.cpu_ns: defaultdict[str, int] = defaultdict(int)
        self.calls: defaultdict[str, int] = defaultdict(int)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._lib, name)
        if not name.startswith("nvml") or not callable(value):
            return value
        if name not in self._wrapped:
            def timed(*args: Any, _func: Callable[..., Any] = value, _name: str = name) -> Any:
                start = time.thread_time_ns()
                try:
                    return _func(*args)
                finally:
                    self.cpu_ns[_name] += time.thread_time_ns() - start
                    self.calls[_name] += 1
            self._wrapped[name] = timed
        return self._wrapped[name]

    def reset(self) -> None:
        """Forget what was timed so far (calls made while setting up)."""
        self.cpu_ns.clear()
        self.calls.clear()


def simulated_lib() -> FakeNVML:
    """One busy H100 (GPM, energy counter) with this process and another one on it."""
    me = FakeProcess(used_mib=lambda t: 6000.0 + t % 7, sm_util_pct=lambda t: 80 + 10 * (t % 1))
    other = FakeProcess(pid=os.getpid() + 1, used_mib=900.0, sm_util_pct=5.0)
    gpu = FakeGPU(util_pct=lambda t: 85 + 10 * (t % 1), mem_util_pct=40.0, processes=[me, other])
    return FakeNVML([gpu])


@dataclass
class Costs:
    """What the rounds measured, per configuration."""

    gpus: int = 0
    tick_us: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CONFIGS})
    call_ns: dict[str, defaultdict[str, int]] = field(
        default_factory=lambda: {c: defaultdict(int) for c in CONFIGS})
    calls: dict[str, defaultdict[str, int]] = field(
        default_factory=lambda: {c: defaultdict(int) for c in CONFIGS})
    timed_ticks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CONFIGS, 0))


def run_ticks(sampler: Sampler, seconds: float, interval_s: float) -> tuple[int, int]:
    """Tick in real time for `seconds`; return (ticks, CPU nanoseconds they took)."""
    cpu_ns = ticks = 0
    start = due = time.perf_counter()
    while time.perf_counter() - start < seconds:
        before = time.thread_time_ns()
        sampler.tick()
        cpu_ns += time.thread_time_ns() - before
        ticks += 1
        due += interval_s
        time.sleep(max(0.0, due - time.perf_counter()))
    return ticks, cpu_ns


def measure(make_lib: Callable[[], Any], rounds: int, seconds: float,
            interval_s: float) -> Costs:
    """Alternate the configurations, with and without the timing wrapper, `rounds` times;
    each run is a fresh NVML session whose first tick (allocations, first reads) is left out."""
    costs = Costs()
    for round_index in range(rounds):
        order = CONFIGS if round_index % 2 == 0 else CONFIGS[::-1]
        for config in order:
            for timed in (False, True):
                lib = TimedLib(make_lib()) if timed else make_lib()
                nvml = NVML(lib)
                if not nvml.available:
                    raise SystemExit(f"NVML is not available: {nvml.error}")
                devices = nvml.devices()
                costs.gpus = len(devices)
                if config == "every tick":
                    nvml.process_interval_s = 0.0
                    nvml.ecc_interval_s = 0.0
                    nvml.gpm_interval_s = interval_s
                sampler = Sampler(nvml, devices, sink=lambda readings: None,
                                  interval_s=interval_s, t0=time.perf_counter())
                sampler.tick()  # the first reads: GPM buffers allocated, process names read
                if timed:
                    lib.reset()
                ticks, cpu_ns = run_ticks(sampler, seconds, interval_s)
                if timed:
                    for name, ns in lib.cpu_ns.items():
                        costs.call_ns[config][name] += ns
                        costs.calls[config][name] += lib.calls[name]
                    costs.timed_ticks[config] += ticks
                else:
                    costs.tick_us[config].append(cpu_ns / 1e3 / max(ticks, 1))
                nvml.release_gpm(devices)
                nvml.shutdown()
    return costs


def report(costs: Costs, label: str, interval_s: float) -> list[str]:
    """The table of calls and the per-GPU figures, as lines."""
    gpus = max(costs.gpus, 1)
    ticks_per_s = 1 / interval_s
    lines = [f"{label}: {costs.gpus} GPU(s), a tick every {interval_s:g} s; per GPU per tick:"]
    names = sorted(set(costs.calls["default"]) | set(costs.calls["every tick"]),
                   key=lambda n: -costs.call_ns["every tick"].get(n, 0))
    header = (f"  {'NVML call':48} {'µs/call':>9} {'calls':>7} {'µs':>8}   "
              f"{'calls':>7} {'µs':>8}")
    lines += [f"  {'':48} {'':>9} {'default':>16}   {'every tick':>16}", header]
    for name in names:
        calls = costs.calls["every tick"].get(name) or costs.calls["default"].get(name, 0)
        ns = costs.call_ns["every tick"].get(name) or costs.call_ns["default"].get(name, 0)
        per_call_us = ns / 1e3 / max(calls, 1)
        cells = []
        for config in CONFIGS:
            ticks = max(costs.timed_ticks[config], 1) * gpus
            cells.append(f"{costs.calls[config].get(name, 0) / ticks:7.2f} "
                         f"{costs.call_ns[config].get(name, 0) / 1e3 / ticks:8.1f}")
        lines.append(f"  {name:48} {per_call_us:9.1f} {cells[0]}   {cells[1]}")
    for config in CONFIGS:
        per_tick_us = statistics.median(costs.tick_us[config]) / gpus
        share_pct = 100 * per_tick_us * ticks_per_s / 1e6
        verdict = "within" if share_pct <= BUDGET_PCT_OF_CORE else "OVER"
        lines.append(
            f"  {config}: {per_tick_us:,.0f} µs of CPU per tick per GPU (median of "
            f"{len(costs.tick_us[config])} rounds, timed without the wrapper), "
            f"{per_tick_us * ticks_per_s / 1e3:.2f} ms per second: {share_pct:.2f} % of one "
            f"core per GPU, {verdict} the {BUDGET_PCT_OF_CORE:g} % budget")
    every = statistics.median(costs.tick_us["every tick"])
    default = statistics.median(costs.tick_us["default"])
    lines.append(f"  default / every tick: {default / every:.2f}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per configuration (3)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="seconds of ticks per round and configuration (3)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S,
                        help=f"seconds between ticks (the default, {DEFAULT_INTERVAL_S})")
    parser.add_argument("--simulated", action="store_true",
                        help="read a simulated GPU (FakeNVML) even where NVML works")
    args = parser.parse_args(argv)
    if args.rounds < 1 or not args.seconds > 0 or not args.interval > 0:
        parser.error(f"--rounds must be at least 1 and --seconds, --interval above 0; got "
                     f"{args.rounds}, {args.seconds}, {args.interval}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import pynvml

    real = not args.simulated and NVML().available
    label = "this machine's NVML" if real else "simulated H100 (FakeNVML)"
    make_lib = (lambda: pynvml) if real else simulated_lib
    print(f"gpu-watch sampler cost: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    if real:
        nvml = NVML()
        names = sorted({d.name for d in nvml.devices()})
        print(f"driver {nvml.driver_version()}, {', '.join(names)}")
    costs = measure(make_lib, args.rounds, args.seconds, args.interval)
    for line in report(costs, label, args.interval):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
