"""Reading what a framework printed while it looked for GPUs.

Each backend names the messages it knows as ``(kind, pattern)`` pairs; :func:`parse` finds them
line by line, strips the log prefixes of absl (TensorFlow, XLA) and Python ``logging``, and
reports each distinct message once (some are printed once per module that loads).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

Patterns = Sequence[tuple[str, re.Pattern[str]]]

# "I0000 00:00:1795709988.009449    3757 cudart_stub.cc:31] " (absl, recent releases),
# "2020-08-24 11:08:28.568646: W tensorflow/.../dso_loader.cc:59] " (older releases),
# "WARNING:jax._src.xla_bridge:" (Python logging's default format), JAX's own
# "INFO:2026-11-27 06:03:19,810:jax._src.xla_bridge:849:" and
# "/path/torch/cuda/__init__.py:174: UserWarning: " (Python warnings).
_LOG_PREFIX = re.compile(
    r"^(?:[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\]"
    r"|\d{4}-\d\d-\d\d [\d:.]+: [IWEF] \S+:\d+\]"
    r"|(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):(?:[\d-]+ [\d:,]+:)?[\w.]+:(?:\d+:)?"
    r"|\S+\.py:\d+: \w*Warning:)\s*")


def parse(text: str, patterns: Patterns) -> list[dict[str, Any]]:
    """The known messages in `text`, in order, each once.

    Args:
        text: What the framework printed (its stderr, or its warnings one per line).
        patterns: ``(kind, compiled pattern)`` pairs, the most specific first; a line counts
            for the first pattern that matches it.

    Returns:
        One dict per message: ``kind``, ``text`` (the line without its log prefix) and the
        groups the pattern names (empty groups left out).
    """
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line in text.splitlines():
        stripped = _LOG_PREFIX.sub("", line.strip())
        for kind, pattern in patterns:
            match = pattern.search(stripped)
            if match is None:
                continue
            if stripped not in seen:
                seen.add(stripped)
                parts = {k: v.strip() for k, v in match.groupdict().items() if v is not None}
                found.append({"kind": kind, "text": stripped, **parts})
            break
    return found
