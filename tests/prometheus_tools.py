"""Prometheus' own programs for the tests: found on PATH, or a skip that says why (a failure
under CI, whose machine must have them: `.ci/run` installs Debian's packages)."""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from waiting import wait_until

DEBIAN_PACKAGES = {"prometheus": "prometheus", "promtool": "prometheus",
                   "prometheus-pushgateway": "prometheus-pushgateway"}


def program(name: str) -> str:
    """The path of Prometheus' program `name`; skip (fail under CI=true) when it is missing."""
    path = shutil.which(name)
    if path is not None:
        return path
    package = DEBIAN_PACKAGES[name]
    message = (f"{name} is not installed (Debian: apt-get install {package}; `make test` "
               f"installs it where it runs as root)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}: under CI it must be there")
    pytest.skip(message)


def library(name: str):
    """Import the Python library `name` (an exporter's extra, in the test install); skip when
    it is missing, fail under CI=true, where `make test` installs it."""
    if os.environ.get("CI", "").lower() == "true":
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"{name} is not installed: pip install -e "
                                            '".[test]" installs it')


def free_port() -> int:
    """A TCP port on the loopback address that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports_in_a_row(count: int, tries: int = 50) -> int:
    """The first of `count` consecutive loopback ports that nothing listens on right now."""
    for _ in range(tries):
        first = free_port()
        sockets = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError(f"no {count} free ports in a row in {tries} tries")


def serve(args: list[str], ready_url: str, log_path, timeout_s: float = 60.0
          ) -> subprocess.Popen:
    """Start a server and wait (bounded) until `ready_url` answers 200."""
    log = open(log_path, "wb")  # noqa: SIM115 (the server writes to it until it stops)
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def answers() -> bool:
        if process.poll() is not None:
            output = Path(log_path).read_text(errors="replace")[-2000:]
            raise AssertionError(f"{args[0]} exited with {process.returncode}: {output}")
        try:
            with urllib.request.urlopen(ready_url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_until(answers, f"{args[0]} to answer {ready_url}", timeout_s=timeout_s,
                   every_s=0.2)
    except AssertionError:
        stop(process)
        raise
    return process


def stop(process: subprocess.Popen) -> None:
    """Stop a server started by `serve` (bounded)."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
