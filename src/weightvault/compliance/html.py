"""A compliance report as one self-contained HTML page: no script, no fetch, charts as inline SVG.

Every value from the report (event fields, reasons, names) is HTML-escaped; the page's
Content-Security-Policy allows no script at all and no resource from anywhere. The report
itself travels inside the page as a JSON data block (never executed), with ``<``, ``>``
and ``&`` escaped so that nothing in it can close the block; ``report verify`` reads it
back from the page.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from weightvault.auditlog.events import decode_event
from weightvault.encoding import parse_json
from weightvault.errors import AuditLogError, ReportError

__all__ = ["check_page", "render_html"]

_STATUS_COLOURS: Final = {"met": "#1a7f37", "partial": "#9a6700", "not_met": "#cf222e", "not_applicable": "#6e7781"}
_STYLE: Final = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:72rem;color:#1f2328}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;
vertical-align:top}th{background:#f6f8fa}.chip{color:#fff;border-radius:1rem;padding:0 .6rem;font-size:.85em;
white-space:nowrap}.charts{display:flex;gap:2rem;flex-wrap:wrap}.chart{flex:1 1 20rem}pre{background:#f6f8fa;
padding:.6rem;overflow-x:auto;font-size:.8rem}code{font-size:.85em}.muted{color:#6e7781}
"""
_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ts(ms: object) -> str:
    if not isinstance(ms, int):
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _bars(title: str, rows: Sequence[tuple[str, float, str]], unit: str = "") -> str:
    """A horizontal bar chart in SVG: (label, value, colour) per row."""
    if not rows:
        return f'<div class="chart"><h3>{_e(title)}</h3><p class="muted">nothing in the period</p></div>'
    top = max(v for _, v, _ in rows) or 1.0
    height = 22 * len(rows) + 10
    parts = [f'<svg role="img" aria-label="{_e(title)}" width="100%" height="{height}" viewBox="0 0 420 {height}">']
    for n, (label, value, colour) in enumerate(rows):
        y = 5 + 22 * n
        width = max(1.0, 250 * value / top)
        parts.append(f'<text x="0" y="{y + 14}" font-size="12">{_e(label[:22])}</text>')
        parts.append(f'<rect x="150" y="{y}" width="{width:.1f}" height="16" fill="{_e(colour)}"></rect>')
        parts.append(f'<text x="{155 + width:.1f}" y="{y + 13}" font-size="12">{_e(f"{value:g}{unit}")}</text>')
    parts.append("</svg>")
    return f'<div class="chart"><h3>{_e(title)}</h3>{"".join(parts)}</div>'


def _charts(stats: Mapping[str, Any]) -> str:
    per_day = stats.get("releases_per_day", {})
    releases = [(day, float(sum(by.values())), "#0969da") for day, by in list(per_day.items())[-31:]]
    devices = [(status, float(n), "#8250df") for status, n in stats.get("devices_by_status", {}).items()]
    budgets = [
        (name.split(":")[1][:16] + " " + name.split(":")[-1], 100.0 * b["spent"] / max(1, b["limit"]), "#bf8700")
        for name, b in stats.get("budget_use", {}).items()
    ]
    return (
        '<div class="charts">'
        + _bars("Key releases per day", releases)
        + _bars("Devices by status", devices)
        + _bars("Budget use (highest alert)", budgets, "%")
        + "</div>"
    )


def _evidence_rows(evidence: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for item in evidence:
        index = _e(item.get("index"))
        try:
            event = decode_event(base64.b64decode(str(item["entry"])))
        except (ValueError, AuditLogError):  # a page shows what it cannot decode; verify is what refuses it
            rows.append(f'<tr id="e{index}"><td>{index}</td><td colspan="6">undecodable</td></tr>')
            continue
        rows.append(
            f'<tr id="e{_e(item["index"])}"><td>{_e(item["index"])}</td><td>{_e(_ts(event.ts))}</td>'
            f"<td><code>{_e(event.type)}</code></td><td>{_e(event.tenant)}</td><td>{_e(event.actor)}</td>"
            f"<td>{_e(event.resource)}</td><td>{_e(event.decision or '')}</td></tr>"
        )
    return "".join(rows)


def _embedded(doc: object) -> str:
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render_html(doc: Mapping[str, Any], *, changes: Sequence[Mapping[str, Any]] = ()) -> str:
    """The page for ``doc``; ``changes`` (from :func:`~weightvault.compliance.report.diff_reports`) adds a section."""
    scope = doc.get("scope", {})
    log = doc.get("log", {})
    controls = doc.get("controls", [])
    counts: dict[str, int] = {}
    for control in controls:
        counts[control["status"]] = counts.get(control["status"], 0) + 1
    chips = " ".join(
        f'<span class="chip" style="background:{_STATUS_COLOURS.get(s, "#6e7781")}">{_e(s.replace("_", " "))}: '
        f"{n}</span>"
        for s, n in counts.items()
    )
    control_rows = "".join(
        f"<tr><td>{_e(c['id'])}</td><td>{_e(c['title'])}</td><td>{_e(', '.join(map(str, c['measures'])))}</td>"
        f'<td>{_e(", ".join(c["rand"]))}</td><td><span class="chip" style="background:'
        f'{_STATUS_COLOURS.get(c["status"], "#6e7781")}">{_e(c["status"].replace("_", " "))}</span></td>'
        f"<td>{_e(c['reason'])}</td><td>"
        + " ".join(f'<a href="#e{_e(i)}">{_e(i)}</a>' for i in c["evidence"])
        + "</td></tr>"
        for c in controls
    )
    diff = ""
    if changes:
        diff_rows = "".join(
            f"<tr><td>{_e(c['id'])}</td><td>{_e(c['title'])}</td><td>{_e(c.get('old'))}</td><td>{_e(c.get('new'))}</td>"
            f"<td>{_e(c.get('why', ''))}</td></tr>"
            for c in changes
        )
        diff = (
            '<h2>Changes since the previous report</h2><p class="muted">Compared with an earlier report this page '
            "does not carry; its statuses are not proven here.</p><table><tr><th>control</th><th>title</th><th>was</th>"
            f"<th>now</th><th>why</th></tr>{diff_rows}</table>"
        )
    tenant = scope.get("tenant") or "the whole broker"
    witnesses = ", ".join(log.get("witnesses", [])) or "none"
    catalogue = doc.get("catalogue", {})
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>weightvault compliance report: {_e(tenant)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Compliance report: {_e(tenant)}</h1>"
        f"<p>Period {_e(_ts(scope.get('since')) if scope.get('since') else 'from the start')} to "
        f"{_e(_ts(scope.get('until')))}; controls assessed as of {_e(_ts(scope.get('as_of')))} against catalogue "
        f"{_e(catalogue.get('name'))} {_e(catalogue.get('version'))}. Log <code>{_e(log.get('origin'))}</code> at "
        f"size {_e(log.get('size'))}, cosigned by {_e(witnesses)}.</p><p>{chips}</p>"
        '<p class="muted">Every event cited below carries its inclusion proof against the checkpoint at the end '
        "of this page; <code>weightvault report verify</code> checks them, the checkpoint's signatures, and every "
        "status, offline. The charts count every event in scope and are not proven one by one.</p>"
        f"<h2>Overview</h2>{_charts(doc.get('statistics', {}))}{diff}"
        "<h2>Controls</h2><table><tr><th>id</th><th>control</th><th>measures</th><th>RAND</th><th>status</th>"
        f"<th>why</th><th>evidence</th></tr>{control_rows}</table>"
        "<h2>Evidence</h2><table><tr><th>index</th><th>time</th><th>type</th><th>tenant</th><th>actor</th>"
        f"<th>resource</th><th>decision</th></tr>{_evidence_rows(doc.get('evidence', []))}</table>"
        f"<h2>Checkpoint</h2><pre>{_e(log.get('checkpoint', ''))}</pre>"
        f'<script type="application/json" id="weightvault-report">{_embedded(doc)}</script>'
        + (
            f'<script type="application/json" id="weightvault-changes">{_embedded(list(changes))}</script>'
            if changes
            else ""
        )
        + "</body></html>"
    )


def check_page(page: str, doc: Mapping[str, Any]) -> None:
    """Refuse a page that is not exactly the rendering of the report it embeds (with its changes).

    Raises:
        ReportError: a byte of the page differs from what :func:`render_html` makes of its report.
    """
    changes: list[dict[str, Any]] = []
    marker = '<script type="application/json" id="weightvault-changes">'
    start = page.find(marker)
    if start >= 0:
        end = page.find("</script>", start)
        listed = parse_json(page[start + len(marker) : end], "report_page: the page's list of changes", ReportError)
        if not isinstance(listed, list) or not all(isinstance(c, dict) for c in listed):
            raise ReportError("report_page: the page's list of changes is malformed")
        changes = listed
    if render_html(doc, changes=changes) != page:
        raise ReportError("report_page: the page differs from the report it embeds (edited after it was made)")
