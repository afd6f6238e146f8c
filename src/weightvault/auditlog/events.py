"""Audit events: what the log records, as RFC 8785 canonical JSON.

Every event is an object::

    {"v": 1, "ts": <ms since epoch>, "type": "key.release.intent", "tenant": "acme",
     "actor": "wl:42", "resource": "acme/models/llama", "decision": "allow",
     "reasons": [...], "policy_version": 3, "evidence_digest": "sha256:...",
     "refs": {"intent": 17}, "details": {...}, "hmac": {"client": "hmac-sha256:<kid>:<b64>"}}

Events never carry secrets. Values that are sensitive but must be correlatable
(an IP address, a token id) are stored only as keyed hashes made by
:class:`SensitiveHasher`, under a key separate from every other key. Field names
that name secrets (``secret``, ``password``, ``private_key``, ...) are refused
outright. An encoded event is at most 65,535 bytes, the most a tlog-tiles entry
bundle can frame; events are kept far below that by design: long lists (a model's
files, an approval policy's approvers) are recorded by digest and count.
"""

from __future__ import annotations

import base64
import hashlib
import hmac as _hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import rfc8785

from weightvault.auditlog.merkle import MAX_ENTRY_BYTES
from weightvault.encoding import canonical_json, parse_json
from weightvault.errors import AuditLogError

__all__ = [
    "EVENT_TYPES",
    "MAX_EVENT_BYTES",
    "WRITE_AHEAD_ACTIONS",
    "AuditEvent",
    "SensitiveHasher",
    "bounded_list",
    "decode_event",
]

#: Entry bundles frame entries with a u16 length: a larger event could never be exported.
MAX_EVENT_BYTES: Final = MAX_ENTRY_BYTES
EVENT_VERSION: Final = 1

#: Sensitive actions recorded under the write-ahead rule: each has .intent, .done and .fail events.
WRITE_AHEAD_ACTIONS: Final = frozenset(
    {
        "key.release",
        "key.export",
        "key.rotate",
        "key.rewrap",
        "policy.change",
        "approval.execute",
        "approval.policy.change",
        "device.enrol",
        "custody.rekey",
        "model.reseal",
        "model.register",
        "tenant.change",
        "principal.change",
        "device.change",
        "device.revoke",
        "device.activate",
        "key.retire",
        "containment.hold",
        "containment.lift",
    }
)

#: The event vocabulary. Dotted names; the monitor understands these. Single events named like an
#: action above (``model.register``, ``device.revoke``...) are what releases before every state
#: change was write-ahead recorded: still readable, no longer written.
EVENT_TYPES: Final = frozenset(
    {f"{action}.{step}" for action in WRITE_AHEAD_ACTIONS for step in ("intent", "done", "fail")}
    | {
        "audit.config",
        "log.handover",
        "broker.restore",
        "broker.backup",
        "challenge.issued",
        "attest.pass",
        "attest.fail",
        "policy.decision",
        "key.create",
        "key.rotate",
        "key.rewrap",
        "policy.change",
        "device.enrol",
        "device.activate",
        "device.revoke",
        "device.change",
        "tenant.change",
        "principal.change",
        "model.register",
        "model.change",
        "key.retire",
        "approval.request",
        "approval.submit",
        "approval.granted",
        "approval.denied",
        "approval.invalid",
        "custody.genesis",
        "custody.ceremony.open",
        "custody.ceremony.expired",
        "custody.ceremony.cancelled",
        "custody.cancel.fail",
        "custody.share.accept",
        "custody.share.reject",
        "custody.unseal",
        "custody.unseal.fail",
        "custody.verify",
        "custody.verify.fail",
        "custody.rekey",
        "custody.set.active",
        "custody.seal",
        "weight.access",
        # serving (docs/serving.md): the gateway's requests, keys and budgets; the sandbox's egress
        "gateway.request",
        "gateway.key.create",
        "gateway.key.revoke",
        "gateway.budget.alert",
        "egress.blocked",
        "sandbox.start",
        "sandbox.exit",
        "outbox.reject",
        # detection (docs/sentinel.md): what the broker records for it, and what the sentinel raises
        "auth.fail",
        "rate.limit",
        "object.read",
        # the web console (docs/console.md)
        "console.signin",
        "console.signout",
        "sentinel.alert",
        "test.event",
    }
)
_FORBIDDEN_FIELD: Final = re.compile(
    r"(^|_)(secret|password|passphrase|private_key|file_key|key_material|share|seed|token_value)($|_)", re.I
)
_TYPE_RE: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


def _check_no_secrets(value: object, path: str) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if not isinstance(key, str):
                raise AuditLogError(f"event field names must be strings ({path})")
            if _FORBIDDEN_FIELD.search(key):
                raise AuditLogError(f"event field {path}.{key} names a secret; log a keyed hash instead")
            _check_no_secrets(inner, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for item in value:
            _check_no_secrets(item, path)
    elif isinstance(value, float):
        raise AuditLogError(f"event field {path} is a float; use integers or strings")
    elif value is not None and not isinstance(value, str | int | bool):
        raise AuditLogError(f"event field {path} has type {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit record. ``ts`` is set by the log when the event is appended."""

    type: str
    tenant: str
    actor: str
    resource: str = ""
    decision: str | None = None
    reasons: tuple[str, ...] = ()
    policy_version: int | None = None
    evidence_digest: str | None = None
    refs: Mapping[str, int] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    hmac: Mapping[str, str] = field(default_factory=dict)
    ts: int = 0

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES or not _TYPE_RE.fullmatch(self.type):
            raise AuditLogError(f"unknown audit event type {self.type!r}")
        for name in ("tenant", "actor", "resource"):
            value = getattr(self, name)
            if len(value) > 1024 or "\x00" in value:
                raise AuditLogError(f"event {name} must be a string of at most 1024 characters")
        if any(not isinstance(r, str) for r in self.reasons):
            raise AuditLogError("event reasons must be strings")
        refs: list[object] = list(self.refs.values())  # typed, but decoded events arrive untyped
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in refs):
            raise AuditLogError("event refs must be log indices")
        _check_no_secrets(dict(self.details), "details")
        for key, value in self.hmac.items():
            if not value.startswith("hmac-sha256:"):
                raise AuditLogError(f"event hmac.{key} must be a keyed hash from SensitiveHasher")

    def with_ts(self, ts: int) -> AuditEvent:
        return replace(self, ts=ts)

    def derive(self, type: str, **changes: Any) -> AuditEvent:
        """A follow-up event (for example ``*.done`` after ``*.intent``) with the same subject."""
        return replace(self, type=type, ts=0, **changes)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "v": EVENT_VERSION,
            "ts": self.ts,
            "type": self.type,
            "tenant": self.tenant,
            "actor": self.actor,
            "resource": self.resource,
        }
        if self.decision is not None:
            doc["decision"] = self.decision
        if self.reasons:
            doc["reasons"] = list(self.reasons)
        if self.policy_version is not None:
            doc["policy_version"] = self.policy_version
        if self.evidence_digest is not None:
            doc["evidence_digest"] = self.evidence_digest
        if self.refs:
            doc["refs"] = dict(self.refs)
        if self.details:
            doc["details"] = dict(self.details)
        if self.hmac:
            doc["hmac"] = dict(self.hmac)
        return doc

    def encode(self) -> bytes:
        """RFC 8785 canonical JSON; raises AuditLogError above :data:`MAX_EVENT_BYTES`."""
        try:
            data: bytes = canonical_json(self.to_json())
        except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
            raise AuditLogError(f"event cannot be canonicalised: {exc}") from exc
        if len(data) > MAX_EVENT_BYTES:
            raise AuditLogError(f"event of {len(data)} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")
        return data


def decode_event(data: bytes) -> AuditEvent:
    """Parse an event read back from the log (or from an auditor's export).

    Raises:
        AuditLogError: not canonical JSON of a known event.
    """
    if len(data) > MAX_EVENT_BYTES:
        raise AuditLogError("event exceeds the size limit")
    doc = parse_json(data, "event is not JSON", AuditLogError)
    if not isinstance(doc, dict) or doc.get("v") != EVENT_VERSION:
        raise AuditLogError("event has an unknown version")
    try:
        event = AuditEvent(
            type=doc["type"],
            tenant=doc["tenant"],
            actor=doc["actor"],
            resource=doc.get("resource", ""),
            decision=doc.get("decision"),
            reasons=tuple(doc.get("reasons", ())),
            policy_version=doc.get("policy_version"),
            evidence_digest=doc.get("evidence_digest"),
            refs=doc.get("refs", {}),
            details=doc.get("details", {}),
            hmac=doc.get("hmac", {}),
            ts=doc["ts"],
        )
    except (KeyError, TypeError) as exc:
        raise AuditLogError(f"event is missing a field ({exc})") from exc
    if event.encode() != data:
        raise AuditLogError("event is not in canonical form")
    return event


class SensitiveHasher:
    """Keyed hashes for values that must be correlatable but never stored in the clear."""

    def __init__(self, key: bytes, kid: str) -> None:
        if len(key) < 32:
            raise ValueError("hash keys are at least 32 bytes")
        self._key = bytes(key)
        self.kid = kid

    def hash(self, value: str | bytes) -> str:
        raw = value.encode() if isinstance(value, str) else value
        tag = _hmac.new(self._key, raw, hashlib.sha256).digest()
        return f"hmac-sha256:{self.kid}:{base64.b64encode(tag).decode()}"

    def hash_all(self, values: Mapping[str, str | bytes]) -> dict[str, str]:
        return {k: self.hash(v) for k, v in values.items()}


def digest(data: bytes | str) -> str:
    """``sha256:<hex>`` of some data (request bodies, evidence, policies)."""
    raw = data.encode() if isinstance(data, str) else data
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def digest_json(value: object) -> str:
    """``sha256:<hex>`` of the RFC 8785 form of a JSON value."""
    return digest(canonical_json(value))


def bounded_list(values: Sequence[str], limit: int = 64) -> list[str] | dict[str, Any]:
    """A list for an event: itself when short, else its count and digest (events stay small by design)."""
    if len(values) <= limit:
        return list(values)
    return {"count": len(values), "digest": digest_json(list(values))}


def event_types(prefix: str) -> Sequence[str]:
    return sorted(t for t in EVENT_TYPES if t.startswith(prefix))
