"""What the console's pages show, computed from the broker's rows and events: no I/O, no HTML.

Nothing here ever reads a key: model rows lose their wrapped key, principals their token
hash, devices keep their public identity only. Templates escape every value (Jinja2's
autoescape), so an event field holding markup is shown as text.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from weightvault.auditlog.events import AuditEvent
from weightvault.broker.service import DeviceRow, ModelRow, PolicyRow, PrincipalRow

__all__ = [
    "EventView",
    "PolicyHistory",
    "alert_view",
    "device_view",
    "event_view",
    "matches",
    "model_view",
    "policy_histories",
    "principal_view",
    "timestamp",
]

#: Longest text of a filter field; longer ones are cut (a filter is a substring, not a query language).
MAX_FILTER_CHARS: Final = 128


def timestamp(ms: int) -> str:
    """UTC time of an event, to the second."""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True, slots=True)
class EventView:
    index: int
    ts: str
    day: str
    type: str
    actor: str
    resource: str
    decision: str
    reasons: tuple[str, ...]
    refs: tuple[tuple[str, int], ...]
    device: str
    details: str  # indented JSON


def event_view(index: int, event: AuditEvent) -> EventView:
    details = dict(event.details)
    return EventView(
        index=index,
        ts=timestamp(event.ts),
        day=timestamp(event.ts)[:10],
        type=event.type,
        actor=event.actor,
        resource=event.resource,
        decision=event.decision or "",
        reasons=tuple(event.reasons),
        refs=tuple(sorted(event.refs.items())),
        device=str(details.get("device", "")),
        details=json.dumps(details, indent=2, sort_keys=True) if details else "",
    )


def matches(view: EventView, **wanted: str) -> bool:
    """Substring filters on the named fields (empty filters match everything)."""
    for name, needle in wanted.items():
        if needle and needle[:MAX_FILTER_CHARS] not in str(getattr(view, name)):
            return False
    return True


def alert_view(index: int, event: AuditEvent) -> dict[str, Any]:
    """A ``sentinel.alert`` as the alerts page lists it."""
    d = dict(event.details)
    subjects = [
        f"{kind}: {', '.join(map(str, d[kind]))}" for kind in ("actors", "devices", "keys", "resources") if d.get(kind)
    ]
    return {
        "index": index,
        "ts": timestamp(event.ts),
        "rule": str(d.get("rule", "")),
        "family": str(d.get("family", "")),
        "severity": str(d.get("severity", "")),
        "score": int(d.get("score_milli", 0)) / 1000,
        "subjects": "; ".join(subjects),
        "summary": str(d.get("summary", "")),
    }


def model_view(row: ModelRow) -> dict[str, Any]:
    """A model without its wrapped key."""
    return {
        "name": row.name,
        "version": row.version,
        "policy": row.policy,
        "kek_version": row.kek_version,
        "files": len(row.files),
        "signer": row.signer or "",
        "tags": ", ".join(f"{k}={v}" for k, v in sorted(row.tags.items())),
    }


def device_view(row: DeviceRow, last: AuditEvent | None, last_index: int | None) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "status": row.status,
        "tenants": ", ".join(sorted(row.tenants)),
        "identity": ", ".join(sorted(row.identity)),  # which public identities it has, not their values
        "last_type": last.type if last is not None else "",
        "last_ts": timestamp(last.ts) if last is not None else "",
        "last_index": last_index,
    }


def principal_view(row: PrincipalRow) -> dict[str, Any]:
    """A principal without its token hash; ``expires``: when its token stops working (UTC), or "never"."""
    expires = "never" if row.expires_at is None else timestamp(row.expires_at * 1000)
    return {
        "id": row.id,
        "tenant": row.tenant_id or "(broker)",
        "role": row.role,
        "disabled": row.disabled,
        "expires": expires,
    }


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    version: int
    digest: str
    immutable: bool
    document: str
    diff: tuple[str, ...]  # unified diff from the version before (empty for the first)


@dataclass(frozen=True, slots=True)
class PolicyHistory:
    name: str
    versions: tuple[PolicyVersion, ...]  # newest first


def _pretty(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True)


def policy_histories(rows: Iterable[PolicyRow]) -> list[PolicyHistory]:
    """Each policy's versions, newest first, each with its diff from the one before."""
    by_name: dict[str, list[PolicyRow]] = {}
    for row in rows:
        by_name.setdefault(row.name, []).append(row)
    out = []
    for name in sorted(by_name):
        versions = sorted(by_name[name], key=lambda r: r.version)
        shown: list[PolicyVersion] = []
        previous: Sequence[str] = ()
        for row in versions:
            text = _pretty(row.document)
            lines = text.splitlines()
            diff = (
                tuple(difflib.unified_diff(previous, lines, f"v{row.version - 1}", f"v{row.version}", lineterm="", n=2))
                if previous
                else ()
            )
            shown.append(PolicyVersion(row.version, row.digest, row.immutable, text, diff))
            previous = lines
        out.append(PolicyHistory(name, tuple(reversed(shown))))
    return out
