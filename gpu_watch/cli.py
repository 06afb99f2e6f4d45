"""The `gpu-watch` command: `doctor`, `report`, `watch` and `demo`.

Each subcommand imports its module only when it runs, so `gpu-watch --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from gpu_watch._version import __version__
from gpu_watch.errors import EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for `gpu-watch` (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="gpu-watch",
        description="Is my Keras training actually using the GPU? Diagnose, watch, report.",
    )
    parser.add_argument("--version", action="version", version=f"gpu-watch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    doctor = commands.add_parser(
        "doctor",
        help="explain why the GPU would not be used (exit 0: usable GPU, 1: none, 2: error)",
        description="Check the installation, the driver, GPU memory and the environment, and "
        "say why the Keras backend that will train (KERAS_BACKEND, else keras.json, else "
        "TensorFlow) would not use the GPU, with a remedy for each finding. Exit code: 0 that "
        "backend can use a GPU, 1 it cannot, 2 the doctor could not tell.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument(
        "--backend",
        choices=("tensorflow", "jax", "torch", "all"),
        help="check this backend instead of the one Keras will use; 'all': that one and every "
        "other installed one, one verdict line each (the exit code stays that one's)",
    )
    doctor.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="limit for each framework probe, which runs in a child process (default: 30)",
    )

    report = commands.add_parser(
        "report",
        help="summarise a run folder (and redraw its plots), or list the runs in a log folder",
        description="Given a run folder: redraw utilization.png, epochs.png and report.html "
        "and print the verdict, causes and per-epoch table. Given a log folder: list its runs, "
        "newest first, with their verdicts. Exit code 2 when the folder is not a run.",
    )
    report.add_argument("path", nargs="?", default="gpu_watch_logs",
                        help="a run folder or a folder of runs (default: gpu_watch_logs, "
                        "where GPUWatch writes by default)")
    report.add_argument("--no-plots", action="store_true", help="print the summary only")
    report.add_argument(
        "--rejudge", action="store_true",
        help="judge the run again with this version's rules (runs recorded before the judged "
        "figures existed always are); the run's own files are left as they are")

    watch = commands.add_parser(
        "watch",
        help="follow a running training in the terminal: utilization, memory, verdict",
        description="Follow a run folder while its training runs: per GPU a sparkline of this "
        "training's and the device's utilization, memory, power, the current verdict and "
        "causes, the data-wait share, steps per second and the age of the last row; it ends "
        "with the final verdict when the run ends. Reads only the run folder (any process's "
        "or user's run, over ssh too), never the GPU. Plain lines when the output is not a "
        "terminal. Exit code 2 when the folder is not a run or a folder of runs, or vanishes.",
    )
    watch.add_argument("path", nargs="?", default="gpu_watch_logs",
                       help="a run folder, or a folder of runs whose newest is followed "
                       "(default: gpu_watch_logs)")
    watch.add_argument("--refresh", type=_positive_seconds, default=1.0, metavar="SECONDS",
                       help="seconds between reads of the run folder (default: 1)")
    watch.add_argument("--window", type=_positive_seconds, default=120.0, metavar="SECONDS",
                       help="seconds of readings the sparklines cover (default: 120)")

    demo = commands.add_parser(
        "demo",
        help="train a small CNN with GPUWatch and print what it found",
        description="Train a small Keras CNN on images generated in-process (no download) with "
        "GPUWatch, then print the verdict, causes with remedies, the per-epoch table and the "
        "run folder.",
    )
    demo.add_argument("--epochs", type=int, default=3, help="epochs to train (default: 3)")
    demo.add_argument("--log-dir", default="gpu_watch_logs", help="default: gpu_watch_logs")
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line with `argv` (default: ``sys.argv[1:]``), writing to `out`."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    if args.command == "doctor":
        from gpu_watch.doctor import run_doctor_command

        return run_doctor_command(as_json=args.json, timeout_s=args.timeout, out=out,
                                  backend=args.backend)
    if args.command == "report":
        from gpu_watch.report import run_report_command

        return run_report_command(args.path, plots=not args.no_plots, out=out,
                                  rejudge=args.rejudge)
    if args.command == "watch":
        from gpu_watch.views.terminal import run_watch_command

        return run_watch_command(args.path, out=out, refresh_s=args.refresh,
                                 window_s=args.window)
    if args.command == "demo":
        from gpu_watch.demo import run_demo

        return run_demo(epochs=args.epochs, log_dir=args.log_dir, out=out)
    build_parser().print_help(out)
    return EXIT_OK
