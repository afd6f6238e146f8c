"""The broker's custody service: genesis, unseal, verify-all and rekey ceremonies, and sealing.

Share sets and ceremony records live in storage (public data: commitments, KCV,
custodian keys, terms); shares and the ceremony's private key live only in this
process's memory and are wiped when a ceremony ends. Every step is an audit
event. A process restart forgets open ceremonies, which is the safe direction.

A rekey produces a *pending* share set. The current set stays active (it still
unseals) until a verify-all ceremony over the pending set succeeds with every new
custodian's share; only then does the pending set become active and the old one
retired, so a botched distribution never locks the root key away.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from weightvault.auditlog.events import AuditEvent
from weightvault.broker.keystore import backup_recipient
from weightvault.broker.recording import AuditRecorder
from weightvault.broker.storage import BrokerStore, ShareSetRow
from weightvault.custody.ceremony import Ceremony, CeremonyTerms, parse_rekey_params
from weightvault.custody.person import PersonPublic
from weightvault.custody.shares import ShareSet, check_parameters, deal
from weightvault.encoding import canonical_json
from weightvault.errors import AuditLogError, CeremonyError, ConfigError, ConflictError, NotFoundError, ShareError

__all__ = ["CustodyService"]


class CustodyService:
    """Thread-safe; one lock serialises ceremony state changes."""

    def __init__(
        self,
        store: BrokerStore,
        recorder: AuditRecorder,
        broker_id: str,
        now: Callable[[], int],
        *,
        install_root: Callable[[bytes], None],
        sealed: Callable[[], bool],
    ) -> None:
        self.store = store
        self._log = recorder.append
        self.broker_id = broker_id
        self._now = now
        self._install_root = install_root
        self._sealed = sealed
        self._ceremonies: dict[str, Ceremony] = {}
        self._lock = threading.Lock()

    # -- share sets ----------------------------------------------------------------------------

    def share_set(self, status: str = "active") -> ShareSet | None:
        row = self.store.custody.share_set(status)
        return None if row is None else ShareSet.from_json(row.document)

    def _set_by_id(self, set_id: str) -> tuple[str, ShareSet]:
        row = self.store.custody.share_set_by_id(set_id)
        if row is None:
            raise NotFoundError("no such share set")
        return row.status, ShareSet.from_json(row.document)

    def _store_set(self, share_set: ShareSet, status: str, deliveries: Mapping[str, bytes]) -> None:
        self.store.custody.add_share_set(
            ShareSetRow(share_set.id, status, share_set.to_json()), deliveries, self._now()
        )

    def _set_event(self, kind: str, actor: str, share_set: ShareSet, **details: Any) -> AuditEvent:
        return AuditEvent(
            type=kind,
            tenant="-",
            actor=actor,
            resource=f"custody:{share_set.id}",
            details={
                "threshold": share_set.threshold,
                "custodians": {
                    c.id: {"signing": c.person.signing.hex(), "commitment": c.commitment} for c in share_set.custodians
                },
                "kcv": share_set.kcv,
                **details,
            },
        )

    def genesis(self, actor: str, root: bytes, threshold: int, custodians: Sequence[PersonPublic]) -> ShareSet:
        """Split the root key for the first time (or again after a migration from a key file).

        Raises:
            ConflictError: a share set is already active.
            ConfigError: bad threshold or custodians.
        """
        if self.share_set("active") is not None:
            raise ConflictError("custody is already set up; change it with a rekey ceremony")
        share_set, deliveries = deal(root, threshold, custodians, backup_key=backup_recipient(root))
        self._log(self._set_event("custody.genesis", actor, share_set))
        self._store_set(share_set, "active", deliveries)
        return share_set

    def record_seal(self, actor: str) -> None:
        """Record that ``actor`` sealed the broker. Sealing only takes power away, so it happens
        first and is recorded after: a broken audit log must never keep a broker unsealed."""
        self._log(AuditEvent(type="custody.seal", tenant="-", actor=actor, resource="broker", decision="sealed"))

    def delivery(self, set_id: str, custodian: str) -> bytes:
        sealed = self.store.custody.delivery(set_id, custodian)
        if sealed is None:
            raise NotFoundError("no share of this custodian in this set")
        return sealed

    # -- ceremonies -----------------------------------------------------------------------------

    def _reap(self, now: int) -> None:
        for ceremony in list(self._ceremonies.values()):
            if ceremony.status == "open" and now >= ceremony.terms.expires_at:
                ceremony.expire()
                self._close(ceremony, now)

    def _close(self, ceremony: Ceremony, now: int) -> None:
        self._ceremonies.pop(ceremony.id, None)
        try:
            self._record_close(ceremony)
        finally:  # closing only takes power away: it happens even if the log cannot record it
            self.store.custody.close_ceremony(ceremony.id, ceremony.status, now)

    def _record_close(self, ceremony: Ceremony) -> None:
        if ceremony.status in ("expired", "cancelled"):
            self._log(
                AuditEvent(
                    type=f"custody.ceremony.{ceremony.status}",
                    tenant="-",
                    actor="-",
                    resource=f"ceremony:{ceremony.id}",
                    decision=ceremony.status,
                    details={"kind": ceremony.terms.kind, "submitted": ceremony.submitted},
                )
            )

    def open(
        self,
        actor: str,
        kind: str,
        *,
        ttl: int = 900,
        params: Mapping[str, Any] | None = None,
        set_id: str | None = None,
    ) -> CeremonyTerms:
        """Open a ceremony and log its terms.

        Raises:
            ConflictError: unseal on an unsealed broker, or no share set to work on.
            CeremonyError: bad kind, TTL or rekey parameters.
        """
        now = self._now()
        params = dict(params or {})
        if kind == "restore":  # run by 'broker restore' over files, never by a serving broker
            raise CeremonyError("a broker does not open restore ceremonies: 'weightvault broker restore' runs them")
        with self._lock:
            self._reap(now)
            if kind == "verify" and set_id is not None:
                status, share_set = self._set_by_id(set_id)
                if status == "retired":
                    raise ConflictError("that share set is retired")
            else:
                pending = self.share_set("pending") if kind == "verify" else None
                found = pending or self.share_set("active")
                if found is None:
                    raise ConflictError("custody is not set up (no share set)")
                share_set = found
            if kind == "unseal" and not self._sealed():
                raise ConflictError("the broker is not sealed")
            if kind == "rekey":
                threshold, people = parse_rekey_params(params)
                try:
                    check_parameters(threshold, people)
                except ConfigError as exc:
                    raise CeremonyError(str(exc)) from exc
            elif params:
                raise CeremonyError(f"{kind} ceremonies take no parameters")
            ceremony = Ceremony.open(self.broker_id, kind, share_set, params, now=now, ttl=ttl)
            # Recorded before the ceremony exists: shares are only ever accepted for a logged ceremony.
            self._log(
                AuditEvent(
                    type="custody.ceremony.open",
                    tenant="-",
                    actor=actor,
                    resource=f"ceremony:{ceremony.id}",
                    details={
                        "kind": kind,
                        "set": share_set.id,
                        "params_digest": hashlib.sha256(canonical_json(params)).hexdigest(),
                        "expires_at": ceremony.terms.expires_at,
                    },
                )
            )
            self.store.custody.add_ceremony(ceremony.id, kind, share_set.id, ceremony.terms.to_json(), now)
            self._ceremonies[ceremony.id] = ceremony
        return ceremony.terms

    def ceremony(self, ceremony_id: str) -> dict[str, Any]:
        """Terms and progress of a ceremony (open ones from memory, closed ones from storage)."""
        with self._lock:
            self._reap(self._now())
            live = self._ceremonies.get(ceremony_id)
            if live is not None:
                return {
                    **live.terms.to_json(),
                    "status": live.status,
                    "submitted": live.submitted,
                    "needed": live.needed,
                }
        row = self.store.custody.ceremony(ceremony_id)
        if row is None:
            raise NotFoundError("no such ceremony")
        return {**row.terms, "status": row.status}

    def submit(self, ceremony_id: str, custodian: str, sealed: bytes, signature: bytes) -> dict[str, Any]:
        """A custodian's signed, encrypted share. Completes the ceremony when enough are in.

        Raises:
            CeremonyError: no such open ceremony, or it expired.
            ShareError: the share is refused (the custodian is named in the audit event).
        """
        now = self._now()
        with self._lock:
            self._reap(now)
            ceremony = self._ceremonies.get(ceremony_id)
            if ceremony is None:
                self._reject(ceremony_id, custodian, "no such open ceremony")
                raise CeremonyError("no such open ceremony (closed, cancelled, expired or never opened)")
            try:
                complete = ceremony.submit(custodian, sealed, signature, now)
            except (ShareError, CeremonyError) as exc:
                self._reject(ceremony_id, custodian, str(exc))
                raise
            try:
                self._log(
                    AuditEvent(
                        type="custody.share.accept",
                        tenant="-",
                        actor=custodian,
                        resource=f"ceremony:{ceremony_id}",
                        decision="accept",
                        details={
                            "submitted": len(ceremony.submitted),
                            "needed": ceremony.needed,
                            "signature": signature.hex(),
                        },
                    )
                )
            except AuditLogError:
                # A share must never count unless its acceptance is on record: the ceremony ends here.
                ceremony.expire()
                self._close(ceremony, now)
                raise
            if not complete:
                return {"status": "open", "submitted": ceremony.submitted, "needed": ceremony.needed}
            return self._complete(ceremony, now)

    def _reject(self, ceremony_id: str, custodian: str, reason: str) -> None:
        self._log(
            AuditEvent(
                type="custody.share.reject",
                tenant="-",
                actor=custodian,
                resource=f"ceremony:{ceremony_id}",
                decision="reject",
                reasons=(reason[:300],),
            )
        )

    def _complete(self, ceremony: Ceremony, now: int) -> dict[str, Any]:
        kind = ceremony.terms.kind
        custodians = ceremony.submitted
        base = {"kind": kind, "set": ceremony.share_set.id, "custodians": custodians}
        try:
            root = ceremony.finish()
        except ShareError as exc:
            self._log(
                AuditEvent(
                    type=f"custody.{kind}.fail",
                    tenant="-",
                    actor="-",
                    resource=f"ceremony:{ceremony.id}",
                    decision="fail",
                    reasons=(str(exc),),
                    details=base,
                )
            )
            self._close(ceremony, now)
            raise
        result: dict[str, Any] = {"status": "done", "submitted": custodians, "kind": kind}
        if kind == "unseal":
            assert root is not None
            self._log(
                AuditEvent(
                    type="custody.unseal",
                    tenant="-",
                    actor="-",
                    resource=f"ceremony:{ceremony.id}",
                    decision="unsealed",
                    details=base,
                )
            )
            self._install_root(root)
        elif kind == "verify":
            self._log(
                AuditEvent(
                    type="custody.verify",
                    tenant="-",
                    actor="-",
                    resource=f"ceremony:{ceremony.id}",
                    decision="pass",
                    details=base,
                )
            )
            status, _ = self._set_by_id(ceremony.share_set.id)
            if status == "pending":
                self._promote(ceremony.share_set.id, now)
                result["promoted"] = ceremony.share_set.id
        else:
            assert root is not None
            threshold, people = parse_rekey_params(ceremony.terms.params)
            new_set, deliveries = deal(root, threshold, people, backup_key=backup_recipient(root))
            self._log(
                self._set_event(
                    "custody.rekey",
                    "-",
                    new_set,
                    ceremony=ceremony.id,
                    previous=ceremony.share_set.id,
                    authorised_by=custodians,
                )
            )
            self.store.custody.retire_pending(now)
            self._store_set(new_set, "pending", deliveries)
            result["new_set"] = new_set.id
        self._close(ceremony, now)
        return result

    def _promote(self, set_id: str, now: int) -> None:
        self._log(
            AuditEvent(
                type="custody.set.active", tenant="-", actor="-", resource=f"custody:{set_id}", decision="active"
            )
        )
        self.store.custody.promote(set_id, now)

    def cancel(self, ceremony_id: str, custodian: str, signature: bytes) -> None:
        """Cancel on a custodian's signature.

        Raises:
            CeremonyError: no such open ceremony, or not a custodian's signature.
        """
        now = self._now()
        with self._lock:
            self._reap(now)
            ceremony = self._ceremonies.get(ceremony_id)
            if ceremony is None:
                raise CeremonyError("no such open ceremony")
            try:
                ceremony.cancel(custodian, signature, now)
            except CeremonyError as exc:
                self._log(
                    AuditEvent(
                        type="custody.cancel.fail",
                        tenant="-",
                        actor=custodian,
                        resource=f"ceremony:{ceremony_id}",
                        decision="deny",
                        reasons=(str(exc),),
                    )
                )
                raise
            self._close(ceremony, now)

    def status(self) -> dict[str, Any]:
        with self._lock:
            self._reap(self._now())
            open_ceremonies = [
                {
                    "id": c.id,
                    "kind": c.terms.kind,
                    "submitted": c.submitted,
                    "needed": c.needed,
                    "expires_at": c.terms.expires_at,
                }
                for c in self._ceremonies.values()
            ]
        active, pending = self.share_set("active"), self.share_set("pending")

        def describe(s: ShareSet | None) -> dict[str, Any] | None:
            if s is None:
                return None
            return {"id": s.id, "threshold": s.threshold, "custodians": [c.id for c in s.custodians]}

        return {
            "sealed": self._sealed(),
            "custody": active is not None,
            "active_set": describe(active),
            "pending_set": describe(pending),
            "ceremonies": open_ceremonies,
        }

    def wipe(self) -> None:
        with self._lock:
            for ceremony in self._ceremonies.values():
                ceremony.wipe()
            self._ceremonies.clear()
