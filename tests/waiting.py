"""Waiting in real time for something another thread or process does: a bounded poll."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], what: str, timeout_s: float = 30.0,
               every_s: float = 0.1) -> T:
    """Call `predicate` every `every_s` seconds until it returns something truthy, and return
    that. An event-driven wait: a loaded machine makes it slower, never wrong; `timeout_s`
    only bounds a wait for what never comes, which fails naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)
