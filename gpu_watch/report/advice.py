"""The causes of a run in words, in the order to fix them: the one place that builds them.

The banner of `utilization.png`, the text summary, the line `GPUWatch` prints when training
ends, `report.html` and the CPU fall-back warning all say which cause to fix first and which
next from here, so no two of them can disagree or name another framework. A cause's words are
the ones its rule recorded in `run.json` (they name the backend's own framework and version),
never the catalogue's generic default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpu_watch.judging.causes import Cause, blocks_gpu

FIRST = "First"
THEN = "Then"

# A remedy marks code in prose with backticks. One without any is a command (`pip install
# ...`, `DataLoader(...)`, `unset ...`) unless it begins as a sentence does ("Make the ...").
_CODE = re.compile(r"`([^`]+)`")
_SENTENCE = re.compile(r"[A-Z][a-z]+ ")


@dataclass(frozen=True, slots=True)
class Fix:
    """One cause as a reader meets it.

    Attributes:
        code: The cause code (e.g. "no_nvidia_driver").
        severity: "error", "warning" or "info".
        message: The message the rule recorded, which names the framework it found.
        remedy: The remedy as recorded ("" when none).
        blocking: Whether it keeps the GPU from being used (`causes.blocks_gpu`).
        order: Where two or more causes keep the GPU from being used, `FIRST` for the first
            and `THEN` for each one after it (to fix in that order); None for a cause that
            does not block the GPU, or the only one that does.
        item: The cause as `run.json` holds it (with its ``impact`` and ``evidence``).
    """

    code: str
    severity: str
    message: str
    remedy: str
    blocking: bool
    order: str | None
    item: Mapping[str, Any]

    @property
    def short(self) -> str:
        """The message's first clause, up to its first colon: what a banner has room for."""
        return self.message.split(": ", 1)[0].rstrip(". ")

    @property
    def label(self) -> str:
        """"First: " / "Then: " before the message, or nothing."""
        return f"{self.order}: " if self.order else ""


def fixes(causes: Sequence[Any]) -> list[Fix]:
    """The causes, as recorded (the verdict rules list them in the order to fix them), each
    with its place in that order.

    Args:
        causes: `run.json`'s "causes" (items that are not mappings are skipped).

    Returns:
        One `Fix` per cause.
    """
    items = [item for item in causes if isinstance(item, Mapping) and item.get("code")]
    blocking = [blocks_gpu(Cause.from_dict(dict(item))) for item in items]
    ordered = sum(blocking) > 1  # "First" and "Then" need two causes to fix
    result = []
    blockers = 0
    for item, blocks in zip(items, blocking, strict=True):
        order = (FIRST if blockers == 0 else THEN) if blocks and ordered else None
        blockers += blocks
        result.append(Fix(
            code=str(item["code"]),
            severity=str(item.get("severity") or "?"),
            message=str(item.get("message") or item["code"]),
            remedy=str(item.get("remedy") or ""),
            blocking=blocks,
            order=order,
            item=item,
        ))
    return result


def remedy_parts(remedy: str) -> list[tuple[str, bool]]:
    """A remedy cut into (text, is_code) runs for a page that shows code as code: the parts
    in backticks are code, without their backticks; a remedy with no backtick is one
    command (its ``  # ...`` comment included), or prose when it begins as a sentence."""
    if "`" not in remedy:
        return [(remedy, not _SENTENCE.match(remedy))] if remedy else []
    parts = []
    last = 0
    for match in _CODE.finditer(remedy):
        if match.start() > last:
            parts.append((remedy[last:match.start()], False))
        parts.append((match.group(1), True))
        last = match.end()
    if last < len(remedy):
        parts.append((remedy[last:], False))
    return parts


def plain(text: str) -> str:
    """`text` without its code marks, for a figure's banner."""
    return text.replace("`", "")


def first_clause(text: str, limit: int = 160) -> str:
    """A remedy's first clause (up to its first "; " or its first line), at most `limit`
    characters: what a banner has room for."""
    clause = text.strip().splitlines()[0] if text.strip() else ""
    clause = clause.split("; ")[0].split("  # ")[0].rstrip(". ")
    return clause if len(clause) <= limit else clause[:limit - 3].rstrip() + "..."


def cpu_banner(causes: Sequence[Any], with_causes: bool = True) -> str:
    """The banner of a run that trained on the CPU: "Training ran on the CPU: <cause>; fix:
    <remedy>.", or with several causes "Training ran on the CPU. First: <cause>; fix:
    <remedy>. Then: <cause>." Without `with_causes` (a page that lists the causes below
    it), only how many there are to fix."""
    found = fixes(causes)
    # Without a cause that blocks the GPU, the first cause recorded is the best lead.
    blocking = [f for f in found if f.blocking] or found[:1]
    if not blocking:
        return "Training ran on the CPU."
    if not with_causes:
        if len(blocking) == 1:
            return "Training ran on the CPU: the cause and its remedy are below."
        return (f"Training ran on the CPU: {len(blocking)} causes below, to fix in the "
                "order given.")
    parts = []
    for fix in blocking:
        text = f"{fix.label}{plain(fix.short)}"
        remedy = plain(first_clause(fix.remedy))
        if fix is blocking[0] and remedy:
            text += f"; fix: {remedy}"
        parts.append(text if text.endswith(".") else text + ".")  # "..." of a cut remedy
    joint = ". " if len(blocking) > 1 else ": "
    return "Training ran on the CPU" + joint + " ".join(parts)


def cause_codes_in_order(causes: Sequence[Any]) -> str:
    """The blocking causes' codes in fix order for one line: "first a, then b"."""
    codes = [f.code for f in fixes(causes) if f.blocking]
    if not codes:
        return "cause unknown"
    return "first " + ", then ".join(codes) if len(codes) > 1 else codes[0]
