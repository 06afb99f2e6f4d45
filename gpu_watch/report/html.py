"""`report.html`: one self-contained page per run, every value from the run escaped."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from typing import Any

from gpu_watch.judging.impact import run_impacts
from gpu_watch.report.advice import fixes, remedy_parts
from gpu_watch.report.cluster import CLUSTER_HEADINGS, ClusterView, cluster_table, verdict_line
from gpu_watch.report.view import (
    WAIT_LOWER_BOUND_NOTE,
    banner_for,
    breakdown_text,
    cause_impact_text,
    duration_of,
    energy_line,
    epoch_table,
    gpu_line,
    gpu_series,
    is_simulated,
    nvml_error_told,
    placement_line,
    verdict_title,
)
from gpu_watch.runlog import STATUS_RUNNING, Run

# While its run is running, the page reloads itself this often (seconds), so a browser left on
# it follows the training: the figures are redrawn at epoch ends (see `drawing.RENDER_SHARE`).
RELOAD_S = 5

# -- HTML ------------------------------------------------------------------------------------


_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1450px;
       padding: 0 1em; color: #212121; }
h1 { font-size: 1.6em; margin: 0.2em 0; }
.banner { color: #fff; font-weight: bold; font-size: 1.25em; padding: 0.6em 0.9em;
          border-radius: 4px; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.15em 1em; }
dl.facts dt { color: #616161; }
dl.facts dd { margin: 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.2em 0.6em; border-bottom: 1px solid #e0e0e0; text-align: right; }
th { background: #f5f5f5; white-space: nowrap; }
code, pre { background: #f5f5f5; padding: 0.1em 0.3em; border-radius: 3px; }
pre { padding: 0.6em; overflow-x: auto; }
img { max-width: 100%; border: 1px solid #e0e0e0; }
li { margin-bottom: 0.6em; }
.order { font-weight: bold; }
.remedy code { white-space: pre-wrap; }
.muted { color: #757575; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _facts(pairs: Sequence[tuple[str, Any]]) -> str:
    body = "".join(
        f"<dt>{_e(k)}</dt><dd>{_e(('yes' if v else 'no') if isinstance(v, bool) else v)}</dd>"
        for k, v in pairs if v is not None and v != "")
    return f'<dl class="facts">{body}</dl>'


def _html_list(items: Sequence[Any] | dict[str, Any]) -> str:
    if isinstance(items, dict):
        items = [f"{key}: {value}" for key, value in items.items()]
    if not items:
        return '<p class="muted">none</p>'
    cells = "".join(
        f"<li>{_e(json.dumps(i, sort_keys=True) if isinstance(i, (dict, list)) else i)}</li>"
        for i in items)
    return f"<ul>{cells}</ul>"


def _html_remedy(remedy: str) -> str:
    """A remedy with its code as code: the parts in backticks, or the whole remedy when it is
    one command; never the backticks themselves."""
    return "".join(f"<code>{_e(text)}</code>" if code else _e(text)
                   for text, code in remedy_parts(remedy))


def _html_causes(causes: Sequence[Any], duration_s: float | None = None) -> str:
    """The causes as one ordered list, each once: its place in the order to fix them, its
    message, its remedy, its cost and its evidence."""
    found = fixes(causes)
    if not found:
        return '<p class="muted">No cause found.</p>'
    items = []
    for fix in found:
        order = f'<span class="order">{_e(fix.order)}:</span> ' if fix.order else ""
        text = (f'<li id="cause-{_e(fix.code)}">{order}<strong>{_e(fix.code)}</strong> '
                f'<span class="muted">[{_e(fix.severity)}]</span>: {_e(fix.message)}')
        if fix.remedy:
            text += f'<br><span class="remedy">Remedy: {_html_remedy(fix.remedy)}</span>'
        cost = cause_impact_text(dict(fix.item), duration_s)
        if cost:
            text += f'<br><span class="cost">Cost: {_e(cost)}</span>'
        if fix.item.get("evidence"):
            text += (f"<details><summary>evidence</summary><pre>"
                     f"{_e(json.dumps(fix.item['evidence'], indent=2, default=str))}</pre>"
                     "</details>")
        items.append(text + "</li>")
    return f'<ol class="causes">{"".join(items)}</ol>'


def _html_table(headings: Sequence[str], rows: Sequence[Sequence[str]], table_id: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{_e(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _html_image(png: bytes | None, alt: str) -> str:
    """An embedded PNG; the figures come without their header (the page has said it)."""
    if not png:
        return '<p class="muted">not drawn</p>'
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def report_html(run: Run, utilization_png: bytes | None, epochs_png: bytes | None,
                cluster: ClusterView | None = None) -> str:
    """`report.html`: one self-contained page with one headline (the verdict), one banner,
    one list of causes in the order to fix them (each with its remedy and cost), GPUs, both
    figures (embedded as base64 PNG), the epoch table and the placement report; for a rank of
    a multi-worker run, the table of all its ranks and the run's straggler verdict. What the
    doctor found before training is listed only where no cause already says it.

    Args:
        run: A loaded run.
        utilization_png: The timeline PNG's bytes, or None to leave it out: drawn without
            its banner, title and subtitle (`figures.png_pair`), which
            the page states once above it.
        epochs_png: The epoch figure's bytes, or None to leave it out, likewise.
        cluster: The multi-worker run `run` is a rank of, or None.

    Returns:
        The page as text; every value from the run is HTML-escaped.
    """
    gpus = gpu_series(run)
    title, colour = verdict_title(run)
    # The causes are listed below the banner: it says what happened, not the causes again.
    banner = banner_for(run, gpus, causes=False)
    record = run.record
    name = record.run_name or run.path.name
    nvml = record.nvml or {}
    writer = record.writer or {}
    running = run.status == STATUS_RUNNING
    parts = [
        f'<p class="muted" id="live">This run is still running: this page reloads every '
        f'{RELOAD_S} s, and its figures are redrawn at epoch ends.</p>' if running else "",
        f'<header><p class="muted">gpu-watch run {_e(name)}</p>'
        f'<h1 id="verdict" style="color:{colour}">{_e(title)}</h1>',
        f'<p class="banner" id="banner" style="background:{colour}">{_e(banner)}</p>'
        if banner else "",
        _facts([
            ("status", run.status),
            ("started", record.started_at),
            ("ended", record.ended_at),
            ("duration", None if duration_of(run) is None else f"{duration_of(run):,.1f} s"),
            ("time", breakdown_text(record.breakdown)),
            ("backend", record.backend),
            ("worker", f"rank {record.rank} of {record.world_size}"
             if (record.world_size or 1) > 1 else None),
            ("host", writer.get("host")),
            ("readings", "SIMULATED (FakeNVML), not from a real GPU"
             if is_simulated(run) else None),
            ("energy", energy_line(run)),
            ("NVML", "available, driver " + str(nvml.get("driver_version"))
             if nvml.get("available") else None if nvml_error_told(run)
             else f"not available ({nvml.get('error')})" if nvml else None),
            ("run folder", run.path),
        ]),
        "</header>",
    ]
    error = record.error or {}
    if error:
        parts.append(f"<h2>Error</h2><p><code>{_e(error.get('type', ''))}</code>: "
                     f"{_e(error.get('message', ''))}</p>")
    causes = run_impacts(run)
    ordered = any(fix.order for fix in fixes(causes))
    parts.append(f"<h2>Causes{', in the order to fix them' if ordered else ''}</h2>"
                 + _html_causes(causes, duration_of(run)))
    if cluster is not None:
        parts.append(f'<h2>All ranks of this run</h2><p id="cluster-verdict">'
                     f"{_e(verdict_line(cluster))}</p>"
                     + _html_table(CLUSTER_HEADINGS, cluster_table(cluster), "cluster"))
    if gpus:
        parts.append("<h2>GPUs</h2><ul>" + "".join(f"<li>{_e(gpu_line(g))}</li>" for g in gpus)
                     + "</ul>")
    else:
        parts.append('<h2>GPUs</h2><p class="muted">No GPU was watched.</p>')
    parts.append("<h2>Timeline</h2>" + _html_image(
        utilization_png, "GPU utilization, SM activity, memory, step time and data wait "
        "against time"))
    headings, rows = epoch_table(run)
    parts.append("<h2>Per epoch</h2>" + _html_image(
        epochs_png, "per-epoch summary: utilization, SM activity, memory, step time, energy"))
    parts.append(_html_table(headings, rows, "epochs") if rows
                 else '<p class="muted">No epoch finished.</p>')
    if any(str(cell).startswith(">=") for row in rows for cell in row):
        parts.append(f'<p class="muted">{_e(WAIT_LOWER_BOUND_NOTE)}</p>')
    placement = record.placement or {}
    parts.append("<h2>Where the training step ran</h2>")
    if placement:
        parts.append(_facts([
            ("summary", placement_line(run)),
            ("backend", placement.get("backend")),
            ("compute on GPU", placement.get("compute_on_gpu")),
        ]))
        parts.append("<h3>CPU compute ops (examples)</h3>"
                     + _html_list(placement.get("cpu_compute_examples") or []))
        parts.append("<h3>Variable devices</h3>"
                     + _html_list(placement.get("variable_devices") or []))
        parts.append("<details><summary>full placement report</summary><pre>"
                     f"{_e(json.dumps(placement, indent=2, default=str))}</pre></details>")
    else:
        parts.append('<p class="muted">Not checked.</p>')
    told = {c.get("code") for c in causes}
    findings = [f for f in (record.environment or {}).get("findings") or []
                if isinstance(f, dict) and f.get("code") not in told]
    if findings:
        parts.append("<h2>Also found before training</h2>" + _html_causes(findings))
    notes = [*run.warnings]
    notes += [f"idle event: {json.dumps(e, default=str)}"
              for e in (record.idle or {}).get("events") or []]
    notes += [f"NVML fault: {json.dumps(f, default=str)}" for f in record.faults or []]
    if notes:
        parts.append("<h2>Notes</h2>" + _html_list(notes))
    parts.append(f'<p class="muted">gpu-watch {_e(record.gpu_watch_version or "")}, '
                 f"schema {_e(record.schema_version)}</p>")
    reload = f'<meta http-equiv="refresh" content="{RELOAD_S}">' if running else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{reload}'
            f"<title>gpu-watch: {_e(name)}: {_e(run.verdict or 'no verdict')}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")
