"""Sentinel alerts and containment holds: the broker's side of measure 5.

The sentinel (:mod:`weightvault.sentinel`) reads the log and calls two endpoints,
with a principal of role ``sentinel``:

* :meth:`ContainmentService.record_alert` appends a ``sentinel.alert`` event: the
  detector, rule, family, severity, score, entities and the log indexes of its
  evidence, each of which must already be in the log.
* :meth:`ContainmentService.hold` places a hold, which is the only thing a sentinel
  can change. A hold on a ``principal`` makes its API token fail (``ContainedError``,
  HTTP 403 ``contained``); on a ``gateway_key``, the gateway refuses the key; on a
  ``device``, releases for it are denied; on a ``model`` (``tenant/models/name``, every
  version), each release needs an approved request (the approval policy's
  ``key.release`` rule for held models, else its rule for changing the approval
  policy; with no approval policy, releases of a held model are refused).

Safety properties, each enforced here and tested as an attack:

* **It never grants.** Holds only take access away; lifting one is an operator's act
  (:meth:`lift`), audited.
* **Only what the evidence names.** A sentinel's hold must cite a ``sentinel.alert``
  already in the log, and its target must be an entity of that alert *and* of one of
  the alert's evidence events, read from their structured fields
  (:func:`~weightvault.auditlog.entities.entities_of`). Free text in events (reasons,
  prompts, summaries) can never name a target.
* **Bounded.** A sentinel may place at most ``max_holds_per_hour`` holds (refusals are
  audited), and may not hold operators, approvers or other sentinels: an attacker who
  steers the sentinel can at worst stop a few tenant principals, keys or devices.
* **Audited.** Each hold and lift runs under its write-ahead intent
  (``containment.hold.*``, ``containment.lift.*``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from weightvault.auditlog.entities import entities_of
from weightvault.auditlog.events import AuditEvent
from weightvault.auditlog.log import LogReader
from weightvault.broker.recording import AuditRecorder
from weightvault.broker.storage import BrokerStore, HoldRow
from weightvault.errors import (
    AuditLogError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
)

__all__ = ["HOLD_KINDS", "ContainmentService", "HoldRow", "held_model"]

HOLD_KINDS: Final = ("principal", "gateway_key", "device", "model")
#: The entity kind of an alert (and of an event) that each hold kind must be found in.
_ENTITY_OF: Final = {"principal": "actors", "gateway_key": "keys", "device": "devices", "model": "resources"}
_FAMILY_RE_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz_")
_MAX_LIST: Final = 32
_MAX_EVIDENCE: Final = 64
#: Roles a sentinel may never hold (an attacker steering it must not lock out the people who answer).
PROTECTED_ROLES: Final = frozenset({"operator", "approver", "sentinel"})


def held_model(resource: str) -> str | None:
    """The hold target of a model resource: ``tenant/models/name`` (every version is held)."""
    if "/models/" not in resource:
        return None
    return resource.split("@", 1)[0]


def _strings(value: object, what: str, limit: int = _MAX_LIST) -> list[str]:
    if (
        not isinstance(value, list)
        or len(value) > limit
        or not all(isinstance(v, str) and len(v) <= 256 for v in value)
    ):
        raise InvalidRequestError(f"{what} is a list of at most {limit} strings")
    return list(value)


class ContainmentService:
    def __init__(
        self,
        store: BrokerStore,
        recorder: AuditRecorder,
        reader: LogReader | None,
        now: Callable[[], int],
        *,
        max_holds_per_hour: int = 20,
        principal_role: Callable[[str], tuple[str | None, str] | None],
    ) -> None:
        self._store = store
        self._recorder = recorder
        self._reader = reader
        self._now = now
        self.max_holds_per_hour = max_holds_per_hour
        self._principal_role = principal_role

    # -- alerts ---------------------------------------------------------------------------------

    def record_alert(self, actor: str, alert: Mapping[str, Any]) -> int:
        """Append a ``sentinel.alert`` event; returns its log index.

        Raises:
            InvalidRequestError: a malformed alert, or evidence that is not (yet) in the log.
        """
        reader = self._require_reader()
        family = alert.get("family")
        if not isinstance(family, str) or not family or set(family) - _FAMILY_RE_CHARS or len(family) > 32:
            raise InvalidRequestError("family is a short lower-case name")
        evidence = alert.get("evidence")
        size = reader.size
        if (
            not isinstance(evidence, list)
            or len(evidence) > _MAX_EVIDENCE
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < size for i in evidence)
        ):
            raise InvalidRequestError(f"evidence lists at most {_MAX_EVIDENCE} indexes of entries already in the log")
        score = alert.get("score")
        if not isinstance(score, int | float) or isinstance(score, bool) or not 0 <= score <= 1:
            raise InvalidRequestError("score is between 0 and 1")
        tenant = alert.get("tenant")
        if not isinstance(tenant, str) or not 0 < len(tenant) <= 64:
            raise InvalidRequestError("tenant is a tenant id (or * for the whole log)")
        details: dict[str, Any] = {
            "detector": str(alert.get("detector", ""))[:32],
            "rule": str(alert.get("rule", ""))[:64],
            "family": family,
            "severity": str(alert.get("severity", ""))[:16],
            "score_milli": round(float(score) * 1000),
            "alert_ts": int(alert["ts"]) if isinstance(alert.get("ts"), int) else 0,
            "evidence": sorted(set(evidence)),
            "summary": str(alert.get("summary", ""))[:300],
        }
        for kind in ("actors", "devices", "keys", "resources"):
            details[kind] = _strings(alert.get(kind, []), kind)
        event = AuditEvent(
            type="sentinel.alert",
            tenant="-" if tenant == "*" else tenant,
            actor=actor,
            resource=f"sentinel:{details['rule'] or details['detector']}",
            decision="alert",
            details=details,
        )
        return self._recorder.append(event).index

    def alerts(self, tenant: str | None, *, since_index: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """``sentinel.alert`` events of one tenant (None: all), from ``since_index``, as JSON with their index."""
        reader = self._require_reader()
        out = []
        for index, event in reader.events(tenant=tenant, start=since_index):
            if event.type == "sentinel.alert":
                out.append({"index": index, **event.to_json()})
                if len(out) >= limit:
                    break
        return out

    # -- holds ------------------------------------------------------------------------------------

    def hold(
        self,
        actor: str,
        role: str,
        *,
        kind: str,
        target: str,
        alert_index: int | None,
        rule: str,
    ) -> str:
        """Place a hold (or return the active one on the same target); returns its id.

        Raises:
            InvalidRequestError: unknown kind, or no such target.
            PermissionDeniedError: a sentinel's hold without an alert in the log that names the
                target in its evidence, or on a protected principal.
            RateLimitedError: the sentinel placed ``max_holds_per_hour`` holds in the last hour.
        """
        if kind not in HOLD_KINDS:
            raise InvalidRequestError(f"kind is one of {', '.join(HOLD_KINDS)}")
        if not target or len(target) > 256:
            raise InvalidRequestError("target names a principal, gateway key, device or model")
        if not rule or len(rule) > 64:
            raise InvalidRequestError("rule names why (at most 64 characters)")
        if kind == "model":
            named = held_model(target)
            if named is None:
                raise InvalidRequestError("a model hold names tenant/models/name")
            target = named
        tenant = self._tenant_of(kind, target)
        refused: str | None = None
        if role == "sentinel":
            refused = self._sentinel_problem(actor, kind, target, alert_index, rule)
        if refused is None:
            existing = self._store.holds.active(kind, target)
            if existing is not None:
                return existing  # already held: nothing changes, nothing to record
        if refused is not None:
            self._recorder.append(
                AuditEvent(
                    type="containment.hold.fail",
                    tenant=tenant,
                    actor=actor,
                    resource=f"{kind}:{target}",
                    decision="deny",
                    reasons=(refused,),
                    refs={"alert": alert_index} if alert_index is not None else {},
                )
            )
            if refused.startswith("rate"):
                raise RateLimitedError(refused)
            raise PermissionDeniedError(refused)
        hold_id = uuid.uuid4().hex
        intent = AuditEvent(
            type="containment.hold.intent",
            tenant=tenant,
            actor=actor,
            resource=f"{kind}:{target}",
            refs={"alert": alert_index} if alert_index is not None else {},
            details={"hold": hold_id, "kind": kind, "target": target, "rule": rule},
        )
        row = HoldRow(hold_id, kind, target, tenant, alert_index, rule, actor, self._now())
        with self._recorder.write_ahead(intent):
            return self._store.holds.add(row)

    def _sentinel_problem(  # noqa: PLR0911 - one return per check, in order
        self, actor: str, kind: str, target: str, alert_index: int | None, rule: str
    ) -> str | None:
        since = self._now() - 3600
        if self._store.holds.created_since(actor, since) >= self.max_holds_per_hour:
            return f"rate limit: at most {self.max_holds_per_hour} holds an hour"
        if kind == "principal":
            found = self._principal_role(target)
            if found is not None and found[1] in PROTECTED_ROLES:
                return f"a sentinel may not hold principals of role {found[1]}"
        if alert_index is None:
            return "a sentinel's hold cites the sentinel.alert it answers"
        reader = self._require_reader()
        if not 0 <= alert_index < reader.size:
            return "the cited alert is not in the log"
        try:
            alert = reader.event(alert_index)
        except AuditLogError:
            return "the cited alert does not decode"
        if alert.type != "sentinel.alert" or alert.actor != actor:
            return "the cited entry is not a sentinel.alert of this sentinel"
        if alert.details.get("rule") != rule:
            return "the hold names another rule than the cited alert"
        field = _ENTITY_OF[kind]
        named = alert.details.get(field, [])
        if kind == "model":
            named = [held_model(r) for r in named]
        if target not in named:
            return f"the alert does not name this {kind.replace('_', ' ')}"
        for index in alert.details.get("evidence", []):
            try:
                event = reader.event(int(index))
            except (AuditLogError, ValueError, TypeError):
                continue
            values: Sequence[str | None] = getattr(entities_of(event.to_json()), field)
            if kind == "model":
                values = [held_model(v) for v in values if v is not None]
            if target in values:
                return None
        return f"no evidence event of the alert names this {kind.replace('_', ' ')} in its structured fields"

    def lift(self, actor: str, hold_id: str) -> None:
        """Lift a hold (operators only; the facade checks).

        Raises:
            NotFoundError: no such active hold.
        """
        row = self._store.holds.get(hold_id)
        if row is None or row.lifted_at is not None:
            raise NotFoundError("no such active hold")
        intent = AuditEvent(
            type="containment.lift.intent",
            tenant=row.tenant,
            actor=actor,
            resource=f"{row.kind}:{row.target}",
            details={"hold": hold_id, "kind": row.kind, "target": row.target},
        )
        with self._recorder.write_ahead(intent):
            if not self._store.holds.lift(hold_id, actor, self._now()):
                raise NotFoundError("no such active hold")

    def holds(self, tenant: str | None, *, active_only: bool) -> list[HoldRow]:
        return self._store.holds.list(tenant, active_only=active_only)

    # -- helpers ----------------------------------------------------------------------------------

    def _tenant_of(self, kind: str, target: str) -> str:
        """The tenant a target belongs to ("-" for global principals and shared devices).

        Raises:
            InvalidRequestError: no such principal, gateway key, device or model.
        """
        if kind == "principal":
            found = self._principal_role(target)
            if found is None:
                raise InvalidRequestError("no such principal")
            return found[0] or "-"
        if kind == "gateway_key":
            key = self._store.gateway.key(target)
            if key is None:
                raise InvalidRequestError("no such gateway key")
            return key.tenant
        if kind == "device":
            if self._store.devices.by_id(target) is None:
                raise InvalidRequestError("no such device")
            return "-"
        tenant, _, name = target.partition("/models/")
        if not self._store.tenants.exists(tenant) or not any(
            m.name == name for m in self._store.catalogue.models(tenant)
        ):
            raise InvalidRequestError("no such model")
        return tenant

    def _require_reader(self) -> LogReader:
        if self._reader is None:
            raise NotFoundError("this broker has no audit log reader")
        return self._reader
