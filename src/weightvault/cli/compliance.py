"""``weightvault report``: compliance reports built from the audit log, verified offline, compared.

``build`` reads the log up to its served checkpoint and writes the report as JSON, a
self-contained HTML page, or OSCAL assessment results (docs/compliance.md); ``verify``
checks a report (JSON or HTML) with only the log's public key and the witness keys;
``diff`` says which controls changed between two reports, and why; ``render`` turns a
JSON report into HTML or OSCAL.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from weightvault.cli.options import json_option, open_reader, parse_ms, read_policy, read_vkey, report
from weightvault.errors import ConfigError, ReportError
from weightvault.files import atomic_file

__all__ = ["compliance_report"]

_FORMATS = click.Choice(["json", "html", "oscal", "pdf"])


def _read(path: Path, *, whole_page: bool = False) -> dict[str, Any]:
    """A report from its JSON or its HTML page; with ``whole_page``, a page must be exactly its report's rendering."""
    from weightvault.compliance.html import check_page
    from weightvault.compliance.report import MAX_REPORT_BYTES, parse_report

    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            raise ReportError(f"report_malformed: {path} is larger than 256 MiB")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the report ({exc.strerror})") from exc
    doc = parse_report(data)
    if whole_page and data.lstrip()[:1] == b"<":
        check_page(data.decode("utf-8", "replace"), doc)
    return doc


def _write(doc: dict[str, Any], fmt: str, out: Path, force: bool, changes: list[dict[str, Any]] | None = None) -> None:
    if fmt in ("html", "pdf"):
        from weightvault.compliance.html import render_html

        data = render_html(doc, changes=changes or []).encode()
        if fmt == "pdf":
            from weightvault.compliance.pdf import html_to_pdf

            html_to_pdf(data.decode(), out, overwrite=force)
            return
    elif fmt == "oscal":
        from weightvault.compliance.oscal import to_oscal

        data = json.dumps(to_oscal(doc), indent=1, sort_keys=True).encode() + b"\n"
    else:
        data = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
    with atomic_file(out, overwrite=force) as handle:
        handle.write(data)


@click.group("report")
def compliance_report() -> None:
    """Compliance reports from the audit log: controls, their status and proven evidence."""


@compliance_report.command("build")
@click.option("--db", required=True, help="The log database: a SQLite file, or postgresql://... (replicated brokers).")
@click.option("--tenant", help="Only this tenant (and the broker-wide events that protect it); default: the broker.")
@click.option("--since", help="Start of the period (ISO 8601); default: the log's start.")
@click.option("--until", help="End of the period (ISO 8601, exclusive); default: now.")
@click.option("--format", "fmt", type=_FORMATS, default="json", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output file.")
@click.option(
    "--previous",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="An earlier report: the HTML page then lists the controls that changed since.",
)
@click.option("--force", is_flag=True, help="Replace OUT.")
@json_option
def report_build(
    db: str,
    tenant: str | None,
    since: str | None,
    until: str | None,
    fmt: str,
    out: Path,
    previous: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    """Assess every control of the catalogue from the log, citing events with their inclusion proofs."""
    from weightvault.compliance.report import build_report, diff_reports, summary

    if out.exists() and not force:
        raise ConfigError(f"{out} already exists (pass --force to replace it)")
    with open_reader(db) as log:
        doc = build_report(
            log, tenant=tenant, since_ms=parse_ms(since), until_ms=parse_ms(until), now_ms=int(time.time() * 1000)
        )
    changes = diff_reports(_read(previous), doc) if previous is not None else None
    _write(doc, fmt, out, force, changes)
    counts = summary(doc)
    text = (
        f"wrote the {fmt} report of {tenant or 'the broker'} to {out}: "
        + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items())
        + f"; {len(doc['evidence'])} events cited at log size {doc['log']['size']}"
    )
    report(as_json, text, {"out": out, "format": fmt, "controls": counts, "evidence": len(doc["evidence"])})


@compliance_report.command("verify")
@click.argument("source", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--log-key", required=True, help="The log's verifier key (vkey text or file).")
@click.option("--policy", "policy_file", type=click.Path(path_type=Path), help="A tlog-policy file.")
@click.option("--witness", "witnesses", multiple=True, help="A witness vkey (text or file). Repeatable.")
@click.option("--quorum", type=int, default=1, show_default=True, help="Cosignatures needed from --witness keys.")
@click.option(
    "--allow-unwitnessed",
    is_flag=True,
    help="Accept a checkpoint no witness cosigned (a log without witnesses); refused otherwise.",
)
@json_option
def report_verify(
    source: Path,
    log_key: str,
    policy_file: Path | None,
    witnesses: tuple[str, ...],
    quorum: int,
    allow_unwitnessed: bool,
    as_json: bool,
) -> None:
    """Re-check a report offline: checkpoint, witnesses, every proof, and every control's status."""
    from weightvault.compliance.report import verify_report

    if not witnesses and policy_file is None and not allow_unwitnessed:
        raise ConfigError(
            "report verify needs the witnesses' keys (--witness, --policy): a report proven only against the "
            "log's own signature needs --allow-unwitnessed"
        )
    doc = _read(source, whole_page=True)
    verified = verify_report(doc, read_vkey(log_key), read_policy(policy_file, witnesses, quorum), now=int(time.time()))
    text = (
        f"OK: {verified.controls} controls and {verified.evidence} cited events verified against "
        f"{verified.origin} at size {verified.size}, cosigned by {', '.join(verified.witnesses) or 'no witness'}"
    )
    doc_out = {
        "ok": True,
        "origin": verified.origin,
        "size": verified.size,
        "witnesses": list(verified.witnesses),
        "evidence": verified.evidence,
        "controls": verified.controls,
    }
    report(as_json, text, doc_out)


@compliance_report.command("diff")
@click.argument("old", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.argument("new", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@json_option
def report_diff(old: Path, new: Path, as_json: bool) -> None:
    """The controls whose status or reason changed between two reports, and why."""
    from weightvault.compliance.report import diff_reports

    changes = diff_reports(_read(old), _read(new))
    lines = [f"{c['id']} {c['old']} -> {c['new']}: {c['why']}" for c in changes] or ["no control changed"]
    report(as_json, lines, {"changes": changes})


@compliance_report.command("render")
@click.argument("source", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--format", "fmt", type=_FORMATS, required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output file.")
@click.option("--force", is_flag=True, help="Replace OUT.")
@json_option
def report_render(source: Path, fmt: str, out: Path, force: bool, as_json: bool) -> None:
    """Turn a report (JSON or HTML) into HTML, PDF (printed by Chromium), OSCAL assessment results or JSON."""
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists (pass --force to replace it)")
    _write(_read(source), fmt, out, force)
    report(as_json, f"wrote {out}", {"out": out, "format": fmt})
