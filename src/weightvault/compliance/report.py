"""Compliance reports built from the audit log: build, verify offline, and compare.

A report (``weightvault-compliance-report/v1``, JSON) holds:

* ``scope``: the tenant (or the whole broker), the period ``[since, until)`` in ms, and
  ``as_of`` (the time the controls are assessed at). Activity (releases, alerts, requests)
  counts within the period; state (policies, custody, devices, models, keys) counts from
  the log's start, since what is in force at the period's end may have been set before it.
  A tenant's report holds its own events and the broker-wide ones that protect every
  tenant and name none (custody, the approval policy, key rotations): never another
  tenant's, nor a name of one;
* ``log``: the signed checkpoint every proof is against (verbatim, with its witnesses'
  cosignatures) and the names of the witnesses that cosigned it;
* ``evidence``: every cited event, as the logged bytes (base64), its index and its
  inclusion proof against that checkpoint;
* ``catalogue``: the controls catalogue's name, version and digest, and ``rules``, the
  version of :mod:`.rules`;
* ``controls``: for each control of the catalogue, its status, reason and the indices of
  the events that support it;
* ``statistics``: counts over every event in scope (releases per day and verifier, devices
  by status, budget use), for charts. They are *not* proven: they summarise events the
  report does not carry.

:func:`verify_report` needs only the report, the log's public key and the witness policy:
it verifies the checkpoint and its cosignatures, each cited event's inclusion, that the
event shown is the one logged, and then assesses every control again from the cited
events (:mod:`.rules`), refusing the report if any status, reason or evidence differs.
What it cannot check is completeness (that no event was left uncited); ``build`` over the
same log prefix reproduces the report exactly, which a holder of the log can compare.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from weightvault.auditlog.checkpoint import Checkpoint, verify_checkpoint
from weightvault.auditlog.events import AuditEvent, decode_event
from weightvault.auditlog.log import LogReader
from weightvault.auditlog.merkle import leaf_hash, verify_inclusion
from weightvault.auditlog.note import NoteVerifier, parse_note
from weightvault.auditlog.policy import WitnessPolicy
from weightvault.compliance.rules import RULES, RULES_VERSION, STATUSES, Context, Selection, assess, is_state
from weightvault.encoding import canonical_json, parse_json
from weightvault.errors import AuditLogError, ConfigError, InclusionProofError, ReportError

__all__ = [
    "FORMAT",
    "Catalogue",
    "build_report",
    "diff_reports",
    "load_catalogue",
    "parse_report",
    "verify_report",
]

FORMAT: Final = "weightvault-compliance-report/v1"
MAX_REPORT_BYTES: Final = 256 << 20


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The versioned mapping of controls to the six measures and RAND's levels (controls.json)."""

    name: str
    version: str
    digest: str
    measures: Mapping[str, str]
    controls: tuple[Mapping[str, Any], ...]


def load_catalogue() -> Catalogue:
    """The catalogue shipped with weightvault.

    Raises:
        ConfigError: a control without id, title, measures or a known rule (a packaging bug).
    """
    raw = resources.files("weightvault.compliance").joinpath("controls.json").read_bytes()
    doc = json.loads(raw)  # noqa: TID251 - our own package data
    controls = tuple(doc["controls"])
    for control in controls:
        if set(control) != {"id", "title", "measures", "rand", "rule"} or control["rule"] not in RULES:
            raise ConfigError(f"controls.json: malformed control {control.get('id')!r}")
    return Catalogue(
        doc["catalogue"],
        doc["version"],
        "sha256:" + hashlib.sha256(canonical_json(doc)).hexdigest(),
        doc["measures"],
        controls,
    )


#: Broker-wide events (tenant "-") that a tenant's report cites: what protects every tenant and names
#: none. Others (a device bound to several tenants lists them all) stay out of a tenant's report.
_BROKER_WIDE: Final = ("custody.", "approval.policy.change.", "key.rotate.", "key.retire.", "broker.backup")


def _scoped(event: AuditEvent, tenant: str | None, until: int) -> bool:
    broker_wide = event.tenant == "-" and event.type.startswith(_BROKER_WIDE)
    if tenant is not None and event.tenant != tenant and not broker_wide:
        return False
    return event.ts < until


def _day(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts / 1000, datetime.UTC).strftime("%Y-%m-%d")


class _Statistics:
    def __init__(self) -> None:
        self.releases: dict[str, dict[str, int]] = {}
        self.devices: dict[str, str] = {}
        self.budgets: dict[str, dict[str, int]] = {}
        self.counts: dict[str, int] = {}

    def add(self, event: AuditEvent) -> None:
        self.counts[event.type] = self.counts.get(event.type, 0) + 1
        if event.type in ("key.release.done", "key.release"):
            per_day = self.releases.setdefault(_day(event.ts), {})
            verifier = str(event.details.get("verifier", "?"))
            per_day[verifier] = per_day.get(verifier, 0) + 1
        elif event.type.startswith("device.") and event.resource.startswith("device:"):
            status = event.details.get("status")
            if event.type.endswith(".done") or "." not in event.type[len("device.") :]:
                self.devices[event.resource] = str(status or ("revoked" if "revoke" in event.type else "changed"))
        elif event.type == "gateway.budget.alert":
            key = f"{event.details.get('scope')}:{event.details.get('subject')}:{event.details.get('window')}"
            spent, limit = event.details.get("spent"), event.details.get("limit")
            if isinstance(spent, int) and isinstance(limit, int):
                self.budgets[key] = {
                    "spent": spent,
                    "limit": limit,
                    "unit_is_bytes": int(event.details.get("unit") == "bytes"),
                }

    def to_json(self) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for status in self.devices.values():
            by_status[status] = by_status.get(status, 0) + 1
        return {
            "releases_per_day": dict(sorted(self.releases.items())),
            "devices_by_status": dict(sorted(by_status.items())),
            "budget_use": dict(sorted(self.budgets.items())),
            "events_by_type": dict(sorted(self.counts.items())),
        }


def build_report(
    log: LogReader,
    *,
    tenant: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    now_ms: int,
    catalogue: Catalogue | None = None,
) -> dict[str, Any]:
    """Read the log up to its served checkpoint once, and assess every control (see the module doc).

    Raises:
        AuditLogError: the log cannot be read.
    """
    catalogue = catalogue or load_catalogue()
    note = log.served_checkpoint()
    checkpoint = Checkpoint.from_text(note.text)
    until = min(until_ms if until_ms is not None else now_ms, now_ms)
    stats, chosen = _Statistics(), Selection()
    for index, event in _events(log, checkpoint.size):
        if not _scoped(event, tenant, until):
            continue
        in_period = since_ms is None or event.ts >= since_ms
        if in_period:
            stats.add(event)
        if in_period or is_state(event):  # the state in force at the period's end may predate it
            chosen.add(index, event)
    entries = {i: log.entry(i) for i in chosen.indices()}
    evidence = [
        {
            "index": i,
            "entry": base64.b64encode(entry).decode(),
            "proof": [base64.b64encode(h).decode() for h in log.inclusion_proof(i, checkpoint.size)],
        }
        for i, entry in entries.items()
    ]
    witnesses = sorted({s.name for s in note.signatures if s.name != checkpoint.origin})
    cited = [(i, decode_event(entry)) for i, entry in entries.items()]
    ctx = Context(as_of_ms=until, witnesses=len(witnesses), tenant=tenant)
    return {
        "format": FORMAT,
        "catalogue": {"name": catalogue.name, "version": catalogue.version, "digest": catalogue.digest},
        "rules": RULES_VERSION,
        "scope": {"tenant": tenant, "since": since_ms, "until": until, "as_of": until},
        "log": {
            "origin": checkpoint.origin,
            "size": checkpoint.size,
            "checkpoint": note.to_text(),
            "witnesses": witnesses,
        },
        "controls": _assess_all(catalogue, cited, ctx),
        "evidence": evidence,
        "statistics": stats.to_json(),
    }


def _events(log: LogReader, size: int) -> Iterator[tuple[int, AuditEvent]]:
    for index, event in log.events():
        if index >= size:
            return
        yield index, event


def _assess_all(catalogue: Catalogue, cited: Sequence[tuple[int, AuditEvent]], ctx: Context) -> list[dict[str, Any]]:
    out = []
    for control in catalogue.controls:
        result = assess(control["rule"], cited, ctx)
        out.append(
            {
                "id": control["id"],
                "title": control["title"],
                "measures": list(control["measures"]),
                "rand": list(control["rand"]),
                "status": result.status,
                "reason": result.reason,
                "evidence": list(result.evidence),
            }
        )
    return out


def parse_report(data: bytes | str) -> dict[str, Any]:
    """A report from its JSON, or from the HTML rendering that embeds it.

    Raises:
        ReportError: not a report of this format, or too large.
    """
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if len(text) > MAX_REPORT_BYTES:
        raise ReportError("report_malformed: larger than 256 MiB")
    start = text.find('<script type="application/json" id="weightvault-report">')
    if start >= 0:
        body_start = text.index(">", start) + 1
        end = text.find("</script>", body_start)
        if end < 0:
            raise ReportError("report_malformed: the HTML's embedded report is not terminated")
        text = text[body_start:end]
    doc = parse_json(text, "report_malformed: not JSON", ReportError)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ReportError(f"report_malformed: not a {FORMAT} document")
    return doc


@dataclass(frozen=True, slots=True)
class VerifiedReport:
    origin: str
    size: int
    witnesses: tuple[str, ...]
    evidence: int
    controls: int


def verify_report(doc: Mapping[str, Any], log: NoteVerifier, policy: WitnessPolicy, *, now: int) -> VerifiedReport:
    """Verify a report offline (see the module documentation).

    Raises:
        CheckpointError: the checkpoint is not the log's, or its witnesses do not meet ``policy``.
        InclusionProofError: a cited event is not in the log at its index.
        ReportError: anything else differs: the shape, a witness the report names that did not
            verify, an event shown that is not the one logged, a control's assessment.
    """
    try:
        log_part, scope = doc["log"], doc["scope"]
        note = parse_note(str(log_part["checkpoint"]))
        evidence = list(doc["evidence"])
        controls = list(doc["controls"])
        as_of, tenant = int(scope["as_of"]), scope["tenant"]
    except (KeyError, TypeError, ValueError, AuditLogError) as exc:
        raise ReportError(f"report_malformed: {exc}") from exc
    if doc.get("rules") != RULES_VERSION:
        raise ReportError(
            f"report_rules: assessed with rules {doc.get('rules')!r}; this weightvault has {RULES_VERSION}"
        )
    verified = verify_checkpoint(note, log, policy, now=now)
    checkpoint = verified.checkpoint
    named = log_part.get("witnesses")
    if not isinstance(named, list) or not set(named) <= set(verified.cosignatures):
        raise ReportError("report_witness: the report names a witness whose cosignature did not verify")
    if (log_part.get("origin"), log_part.get("size")) != (checkpoint.origin, checkpoint.size):
        raise ReportError("report_checkpoint: the origin or size stated differs from the checkpoint's")
    cited: list[tuple[int, AuditEvent]] = []
    seen: set[int] = set()
    for item in evidence:
        index, entry = _cited(item, checkpoint.size, checkpoint.root)
        if index in seen:
            raise ReportError(f"report_evidence: entry {index} is cited twice")
        seen.add(index)
        cited.append((index, decode_event(entry)))
    cited.sort(key=lambda pair: pair[0])
    catalogue = load_catalogue()
    stated = doc.get("catalogue", {})
    if stated.get("digest") != catalogue.digest:
        raise ReportError(
            f"report_catalogue: made with catalogue {stated.get('version')!r} ({stated.get('digest')}); "
            f"this weightvault has {catalogue.version}"
        )
    ctx = Context(as_of_ms=as_of, witnesses=len(named), tenant=tenant if isinstance(tenant, str) else None)
    expected = _assess_all(catalogue, cited, ctx)
    if expected != controls:
        changed = [c["id"] for c, e in zip(controls, expected, strict=False) if c != e] or ["the list of controls"]
        raise ReportError(f"report_assessment: {', '.join(map(str, changed[:5]))} differ from the cited evidence")
    return VerifiedReport(checkpoint.origin, checkpoint.size, tuple(named), len(cited), len(controls))


def _cited(item: object, size: int, root: bytes) -> tuple[int, bytes]:
    if not isinstance(item, dict) or set(item) != {"index", "entry", "proof"}:
        raise ReportError("report_malformed: an evidence item is {index, entry, proof}")
    index, proof = item["index"], item["proof"]
    if not isinstance(index, int) or isinstance(index, bool) or not isinstance(proof, list):
        raise ReportError("report_malformed: an evidence item's index or proof")
    try:
        entry = base64.b64decode(str(item["entry"]), validate=True)
        hashes = [base64.b64decode(str(h), validate=True) for h in proof]
    except (binascii.Error, ValueError) as exc:
        raise ReportError("report_malformed: evidence is not base64") from exc
    if not 0 <= index < size:
        raise InclusionProofError(f"entry {index} is outside the checkpoint of size {size}")
    verify_inclusion(index, size, leaf_hash(entry), hashes, root)
    return index, entry


def diff_reports(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The controls whose status or reason changed between two reports, with both sides."""
    before = {c["id"]: c for c in old.get("controls", [])}
    changes = []
    for control in new.get("controls", []):
        previous = before.pop(control["id"], None)
        if previous is None:
            changes.append(
                {
                    "id": control["id"],
                    "title": control["title"],
                    "old": None,
                    "new": control["status"],
                    "why": control["reason"],
                }
            )
        elif (previous["status"], previous["reason"]) != (control["status"], control["reason"]):
            changes.append(
                {
                    "id": control["id"],
                    "title": control["title"],
                    "old": previous["status"],
                    "new": control["status"],
                    "why": control["reason"],
                    "was": previous["reason"],
                }
            )
    for gone in before.values():
        changes.append(
            {"id": gone["id"], "title": gone["title"], "old": gone["status"], "new": None, "why": "not assessed"}
        )
    return changes


def summary(doc: Mapping[str, Any]) -> dict[str, int]:
    """How many controls are in each status."""
    counts = dict.fromkeys(STATUSES, 0)
    for control in doc.get("controls", []):
        counts[control["status"]] = counts.get(control["status"], 0) + 1
    return counts
