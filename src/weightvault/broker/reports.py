"""Events that other weightvault processes hand to the broker's log: sandbox reports and the outbox.

The broker is the audit log's only sequencer. Two kinds of process report to it:

- a sandbox (``weightvault sandbox``) on a serving host posts what its firewall
  blocked (``egress.blocked``) and when it started and stopped, over HTTP with a
  workload's API token (:meth:`ReportService.report`). The broker names the actor and
  tenant itself and accepts only those three types, each with a strict schema;
- the serving gateway, which shares the broker's database, writes its events into the
  outbox in the same transaction as the budget charges they describe, and the broker
  drains them in order (:meth:`ReportService.drain_outbox`). Only gateway event types
  are accepted from it; anything else is dropped and recorded as ``outbox.reject``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from weightvault.auditlog.events import AuditEvent, decode_event, digest
from weightvault.broker.recording import AuditRecorder
from weightvault.broker.storage import BrokerStore
from weightvault.errors import AuditLogError, InvalidRequestError

__all__ = ["OUTBOX_TYPES", "REPORT_TYPES", "ReportService"]

#: What a sandbox may report, and the fields of each event's details (name -> check).
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")
_PROTOS: Final = frozenset({"tcp", "udp", "icmp", "ipv6-icmp", "other"})
MAX_REPORT_EVENTS: Final = 256


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53


def _ip(v: object) -> bool:
    try:
        ipaddress.ip_address(str(v))
    except ValueError:
        return False
    return isinstance(v, str)


def _name(v: object) -> bool:
    return isinstance(v, str) and _NAME.fullmatch(v) is not None


_SCHEMAS: Final[dict[str, dict[str, Callable[[object], bool]]]] = {
    "egress.blocked": {
        "sandbox": _name,
        "family": lambda v: v in ("ipv4", "ipv6"),
        "proto": lambda v: v in _PROTOS,
        "dst": _ip,
        "port": lambda v: _count(v) and int(v) < 65536,  # type: ignore[call-overload]
        "packets": _count,
        "total": _count,
    },
    "sandbox.start": {"sandbox": _name, "command": _name, "isolated": lambda v: isinstance(v, bool)},
    "sandbox.exit": {"sandbox": _name, "status": lambda v: isinstance(v, int) and -256 < v < 256, "blocked": _count},
}
REPORT_TYPES: Final = frozenset(_SCHEMAS)
OUTBOX_TYPES: Final = {
    "gateway": frozenset({"gateway.request", "gateway.key.create", "gateway.key.revoke", "gateway.budget.alert"}),
    # 'weightvault broker backup' runs beside the broker, on its database: each backup it writes
    # reaches the log this way, so compliance reports can show the newest backup's age.
    "backup": frozenset({"broker.backup"}),
}


def _checked(doc: object) -> tuple[str, dict[str, Any]]:
    if not isinstance(doc, Mapping) or set(doc) != {"type", "details"}:
        raise InvalidRequestError("each report is {type, details}")
    kind, details = doc["type"], doc["details"]
    if kind not in _SCHEMAS:
        raise InvalidRequestError(f"a sandbox may report {sorted(REPORT_TYPES)} only")
    schema = _SCHEMAS[kind]
    if not isinstance(details, Mapping) or set(details) != set(schema):
        raise InvalidRequestError(f"{kind} details are exactly {sorted(schema)}")
    for field, check in schema.items():
        if not check(details[field]):
            raise InvalidRequestError(f"{kind} details.{field} is invalid")
    return str(kind), dict(details)


class ReportService:
    def __init__(self, store: BrokerStore, recorder: AuditRecorder) -> None:
        self.store, self.recorder = store, recorder

    def report(self, actor: str, tenant: str, reports: Sequence[object]) -> int:
        """Validate every report, then append them all (durably); returns how many.

        Raises:
            InvalidRequestError: a report of an unknown type, or with a field missing, extra or invalid;
                nothing of the batch is recorded.
        """
        if not 0 < len(reports) <= MAX_REPORT_EVENTS:
            raise InvalidRequestError(f"a report carries 1 to {MAX_REPORT_EVENTS} events")
        events = [
            AuditEvent(kind, tenant, actor, resource=f"sandbox:{details['sandbox']}", details=details)
            for kind, details in map(_checked, reports)
        ]
        self.recorder.append_all(events)
        return len(events)

    def drain_outbox(self, limit: int = 500) -> int:
        """Append pending outbox events in order, then delete them; returns how many were appended.

        At least once: a crash after the append and before the delete appends a batch twice
        (each event carries its outbox id in ``refs.outbox``, so readers can tell).
        """
        rows = self.store.outbox.pending(limit)
        if not rows:
            return 0
        events: list[AuditEvent] = []
        for row in rows:
            try:
                event = decode_event(row.event.encode())
                if event.type not in OUTBOX_TYPES.get(row.source, frozenset()):
                    raise AuditLogError(f"{row.source} may not write {event.type}")
                events.append(event.derive(event.type, refs={**event.refs, "outbox": row.id}))
            except (AuditLogError, UnicodeError) as exc:
                events.append(
                    AuditEvent(
                        "outbox.reject",
                        "",
                        f"outbox:{row.source}"[:64],
                        details={"outbox_id": row.id, "digest": digest(row.event), "reason": str(exc)[:200]},
                    )
                )
        self.recorder.append_all(events)
        self.store.outbox.delete([r.id for r in rows])
        return len(events)
