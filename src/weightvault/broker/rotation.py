"""Key rotation and export: new KEK versions, rewrapping models, retiring old keys, token signing keys.

Rotation only adds protection, so the scheduler (``actor`` "scheduler") rotates
without approvals; people need an approval where the policy asks for one. File
keys never leave the broker during a rewrap. Exporting a file key always needs
an approval (``key.export`` is refused unless a rule covers it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from weightvault.auditlog.events import AuditEvent
from weightvault.broker.approvals import ApprovalService
from weightvault.broker.keyring import Keyring
from weightvault.broker.keystore import wrap_file_key, wrap_signing_key
from weightvault.broker.protocol import export_info
from weightvault.broker.recording import AuditRecorder
from weightvault.broker.storage import BrokerStore, ModelRow
from weightvault.broker.tokens import key_id
from weightvault.crypto.keywrap import HPKEKem, hpke_seal
from weightvault.crypto.signing import Ed25519Signer
from weightvault.errors import ConflictError, InvalidRequestError, NotFoundError

__all__ = ["SCHEDULER", "RotationService"]

#: The actor name of scheduled rotations.
SCHEDULER = "scheduler"


class RotationService:
    def __init__(
        self,
        store: BrokerStore,
        recorder: AuditRecorder,
        now: Callable[[], int],
        *,
        approvals: ApprovalService,
        keyring: Keyring,
        token_ttl_seconds: int,
        kek_max_age_seconds: int = 0,
        token_key_max_age_seconds: int = 0,
    ) -> None:
        self._store = store
        self._recorder = recorder
        self._approvals = approvals
        self._keyring = keyring
        self._now = now
        self._token_ttl = token_ttl_seconds
        self._kek_max_age = kek_max_age_seconds
        self._token_key_max_age = token_key_max_age_seconds

    def rotate_kek(self, actor: str, tenant: str, *, approval: str | None = None, gated: bool = True) -> int:
        """Add a new KEK version for ``tenant``; new models use it, existing ones until rewrapped."""
        grant = None
        if gated:
            grant = self._approvals.gate(
                actor, "key.rotate", tenant, {"tenant": tenant, "key": "kek"}, approval=approval
            )
        latest = self._store.keys.latest_kek(tenant)
        if latest is None:
            raise NotFoundError("no such tenant")
        version = latest.version + 1
        wrapped = self._keyring.new_kek(tenant, version)
        intent = AuditEvent(
            type="key.rotate.intent", tenant=tenant, actor=actor, resource=f"{tenant}/kek", details={"version": version}
        )
        with self._approvals.execute(grant, actor, f"{tenant}/kek"), self._recorder.write_ahead(intent):
            self._store.keys.add_kek(tenant, version, wrapped, self._now())
        return version

    def rewrap_models(self, actor: str, tenant: str) -> list[str]:
        """Move every model of ``tenant`` to the newest KEK; file keys never leave the broker."""
        latest = self._store.keys.latest_kek(tenant)
        if latest is None:
            raise NotFoundError("no such tenant")
        new_kek = self._keyring.kek(tenant, latest.version)
        moved = []
        for model in self._store.catalogue.models(tenant):
            if model.kek_version == latest.version:
                continue
            self._rewrap(actor, model, latest.version, new_kek)
            moved.append(model.resource)
        return moved

    def _rewrap(self, actor: str, model: ModelRow, version: int, kek: bytes) -> None:
        file_key = self._keyring.file_key_of(model)
        try:
            blob = wrap_file_key(
                kek,
                tenant=model.tenant_id,
                model=model.name,
                version=model.version,
                kek_version=version,
                file_key=file_key,
            )
        finally:
            file_key.wipe()
        intent = AuditEvent(
            type="key.rewrap.intent",
            tenant=model.tenant_id,
            actor=actor,
            resource=model.resource,
            details={"from": model.kek_version, "to": version},
        )
        with self._recorder.write_ahead(intent):
            if not self._store.catalogue.rewrap_model(model, version, blob):
                raise ConflictError(f"{model.resource} changed during the rewrap")

    def retire_kek(self, actor: str, tenant: str, version: int) -> None:
        """Refuse further use of an old KEK version (min-decryption-version); no model may still use it."""
        versions = self._store.keys.keks(tenant)
        if not versions:
            raise NotFoundError("no such tenant")
        if version == versions[-1].version or version not in {k.version for k in versions}:
            raise ConflictError("only an older, existing KEK version can be retired")
        users = [m.resource for m in self._store.catalogue.models(tenant) if m.kek_version == version]
        if users:
            raise ConflictError(f"{len(users)} model(s) still use KEK v{version}: rewrap them first")
        intent = AuditEvent(
            type="key.retire.intent", tenant=tenant, actor=actor, resource=f"{tenant}/kek", details={"version": version}
        )
        with self._recorder.write_ahead(intent):
            self._store.keys.retire_kek(tenant, version, self._now())

    def rotate_token_key(self, actor: str, *, approval: str | None = None, gated: bool = True) -> str:
        """A new result-token signing key (wrapped under the root key); the old one verifies until it is retired."""
        grant = None
        if gated:
            grant = self._approvals.gate(actor, "key.rotate", "-", {"key": "token-signing"}, approval=approval)
        root = self._keyring.root()
        signer = Ed25519Signer.generate()
        kid = key_id(signer)
        now = self._now()
        intent = AuditEvent(
            type="key.rotate.intent",
            tenant="-",
            actor=actor,
            resource="token-signing",
            details={"kid": kid, "previous": self._keyring.signer.current_kid},
        )
        with self._approvals.execute(grant, actor, "token-signing"):
            with self._recorder.write_ahead(intent):
                self._store.keys.add_signing_key(
                    "token", kid, wrap_signing_key(root, "token", kid, signer.reveal_seed()), now
                )
            self._keyring.signer.add_key(signer)
        # Older keys verify for one more token lifetime, then retire.
        for old in self._store.keys.signing_keys("token"):
            if old.retired_at is None and old.kid != kid and old.created_at + self._token_ttl < now:
                retire = AuditEvent(
                    type="key.retire.intent",
                    tenant="-",
                    actor=actor,
                    resource="token-signing",
                    details={"kid": old.kid},
                )
                with self._recorder.write_ahead(retire):
                    self._store.keys.retire_signing_key("token", old.kid, now)
                self._keyring.signer.retire(old.kid)
        return kid

    def rotate_due(self) -> list[str]:
        """Scheduled rotation: KEKs and the token key older than their configured age. Returns what rotated."""
        if self._keyring.sealed:
            return []
        now = self._now()
        done = []
        if self._kek_max_age > 0:
            for tenant in self._store.tenants.names():
                latest = self._store.keys.latest_kek(tenant)
                if latest is not None and now - latest.created_at >= self._kek_max_age:
                    version = self.rotate_kek(SCHEDULER, tenant, gated=False)
                    self.rewrap_models(SCHEDULER, tenant)
                    done.append(f"{tenant}/kek v{version}")
        if self._token_key_max_age > 0:
            live = [k for k in self._store.keys.signing_keys("token") if k.retired_at is None]
            newest = live[-1].created_at if live else 0
            if now - newest >= self._token_key_max_age:
                done.append(f"token-signing {self.rotate_token_key(SCHEDULER, gated=False)}")
        return done

    def export_key(
        self,
        actor: str,
        model: ModelRow,
        *,
        kem: str,
        public: bytes,
        approval: str | None,
        facts: Mapping[str, Any],
    ) -> bytes:
        """Export a model's file key HPKE-sealed to ``public`` (escrow, migration). Always needs approval."""
        try:
            kem_kind = HPKEKem(kem)
        except ValueError as exc:
            raise InvalidRequestError(f"unknown KEM {kem!r}") from exc
        if len(public) != kem_kind.public_key_bytes:
            raise InvalidRequestError("recipient public key has the wrong length")
        tenant = model.tenant_id
        params = {"resource": model.resource, "kem": kem, "public_sha256": hashlib.sha256(public).hexdigest()}
        grant = self._approvals.gate(actor, "key.export", tenant, params, approval=approval, facts=facts)
        intent = AuditEvent(
            type="key.export.intent", tenant=tenant, actor=actor, resource=model.resource, details=dict(params)
        )
        with self._approvals.execute(grant, actor, model.resource), self._recorder.write_ahead(intent):
            file_key = self._keyring.file_key_of(model)
            try:
                return hpke_seal(kem_kind, public, file_key.reveal(), export_info(tenant, model.resource))
            finally:
                file_key.wipe()
