"""The monitor: semantic invariants over the sequence of audit events.

The Merkle tree proves that nobody rewrote history; the monitor checks that the
history itself is one a correct broker could have written:

* ``release-without-intent``: every ``key.release.done`` refers (``refs.intent``)
  to an earlier ``key.release.intent`` for the same tenant and resource, and each
  intent is completed at most once;
* ``release-without-allow``: every ``key.release.intent`` refers
  (``refs.decision``) to an earlier ``policy.decision`` that allowed the same
  tenant and resource;
* ``release-for-revoked-device``: no release intent names (``details.device``) a
  device revoked earlier (``device.revoke.done``, resource ``device:<id>``);
* ``completion-without-intent``: every other ``*.done``, and every ``*.fail`` that
  refers to an intent, closes an earlier intent of the same action, tenant and
  resource once (a ``*.fail`` with no ``refs.intent`` is a refusal made before any
  intent was recorded);
* ``policy-change-digests``: every ``policy.change`` and ``policy.change.done``
  records ``details.old_digest`` and ``details.new_digest``;
* ``intent-not-closed``: an intent with no ``done`` or ``fail`` after
  ``max_open_ms`` (checked by :meth:`Monitor.finish`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from weightvault.auditlog.events import WRITE_AHEAD_ACTIONS, AuditEvent

__all__ = ["Monitor", "Violation"]


@dataclass(frozen=True, slots=True)
class Violation:
    index: int
    rule: str
    message: str


@dataclass
class Monitor:
    """Feed events in log order; collect violations."""

    max_open_ms: int = 60_000
    violations: list[Violation] = field(default_factory=list)
    _events: dict[int, AuditEvent] = field(default_factory=dict)
    _open: dict[int, AuditEvent] = field(default_factory=dict)
    _closed: set[int] = field(default_factory=set)
    _revoked: dict[str, int] = field(default_factory=dict)
    _last_ts: int = 0
    _next: int = 0

    @property
    def entries(self) -> int:
        """How many entries have been fed (the next expected index)."""
        return self._next

    def feed(self, index: int, event: AuditEvent) -> list[Violation]:
        """Check one event; returns the violations it caused."""
        found: list[Violation] = []
        if index != self._next:
            found.append(Violation(index, "gap", f"expected entry {self._next}, got {index}"))
        self._next = index + 1
        self._last_ts = max(self._last_ts, event.ts)
        kind = event.type
        base, _, step = kind.rpartition(".")
        if kind in ("device.revoke", "device.revoke.done"):
            self._revoked.setdefault(event.resource, index)
        if kind in ("policy.change", "policy.change.done") and not (
            event.details.get("old_digest") and event.details.get("new_digest")
        ):
            found.append(Violation(index, "policy-change-digests", "policy change without old and new digests"))
        if base in WRITE_AHEAD_ACTIONS and step == "intent":
            self._open[index] = event
            if base == "key.release":
                found.extend(self._check_release_intent(index, event))
        elif base in WRITE_AHEAD_ACTIONS and step == "fail" and "intent" not in event.refs:
            pass  # refused before any intent was recorded (an immutable policy, a bad EK): nothing to close
        elif base in WRITE_AHEAD_ACTIONS and step in ("done", "fail"):
            found.extend(self._check_completion(index, event, base, step))
        self._events[index] = event
        self.violations.extend(found)
        return found

    def _check_release_intent(self, index: int, event: AuditEvent) -> list[Violation]:
        found = []
        ref = event.refs.get("decision")
        decision = self._events.get(ref) if ref is not None and ref < index else None
        if (
            decision is None
            or decision.type != "policy.decision"
            or decision.decision != "allow"
            or decision.tenant != event.tenant
            or decision.resource != event.resource
        ):
            found.append(
                Violation(index, "release-without-allow", "release intent without an earlier allowing policy decision")
            )
        device = event.details.get("device")
        if isinstance(device, str) and f"device:{device}" in self._revoked:
            found.append(
                Violation(
                    index,
                    "release-for-revoked-device",
                    f"release for device {device} revoked at entry {self._revoked[f'device:{device}']}",
                )
            )
        return found

    def _check_completion(self, index: int, event: AuditEvent, base: str, step: str) -> list[Violation]:
        ref = event.refs.get("intent")
        intent = self._events.get(ref) if ref is not None and ref < index else None
        rule = "release-without-intent" if base == "key.release" else "completion-without-intent"
        if (
            intent is None
            or intent.type != f"{base}.intent"
            or intent.tenant != event.tenant
            or intent.resource != event.resource
        ):
            return [Violation(index, rule, f"{event.type} without a matching earlier intent")]
        assert ref is not None
        if ref in self._closed:
            return [Violation(index, rule, f"intent {ref} completed twice")]
        self._closed.add(ref)
        self._open.pop(ref, None)
        del step
        return []

    def finish(self, now_ms: int | None = None) -> list[Violation]:
        """Report intents still open longer than ``max_open_ms``."""
        now = self._last_ts if now_ms is None else now_ms
        found = [
            Violation(i, "intent-not-closed", f"{e.type} open for {now - e.ts} ms")
            for i, e in sorted(self._open.items())
            if now - e.ts > self.max_open_ms
        ]
        self.violations.extend(found)
        return found
