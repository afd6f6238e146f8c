"""One repository per aggregate (the two-person controls are in :mod:`.controls`): the broker's only SQL.

Every method is one transaction and speaks in rows (:mod:`.rows`), never in SQL
types. Lookups of tenant data take the tenant and filter by it, including lookups
by id: a device, challenge, model, policy or reference set of another tenant is
simply not found. The global lookups (a principal by id for authentication, a
device by id for operators) say so in their names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import sqlalchemy as sa

from weightvault.broker.storage import schema as t
from weightvault.broker.storage.base import Repository, insert_rows, to_json
from weightvault.broker.storage.rows import (
    ChallengeRow,
    DeviceRow,
    KEKRow,
    ModelRow,
    PolicyRow,
    PrincipalRow,
    SigningKeyRow,
)

__all__ = [
    "CatalogueRepository",
    "DeviceRepository",
    "KeyRepository",
    "PrincipalRepository",
    "SessionRepository",
    "TenantRepository",
]

# Hot-path statements, built once: building SQLAlchemy expressions per call costs more
# than running them against SQLite.
_bp = sa.bindparam
#: Principals with their token's expiry (an outer join: tokens without one do not expire).
_PRINCIPALS: Final = sa.select(t.principals, t.principal_token_expiry.c.expires_at).select_from(
    t.principals.outerjoin(t.principal_token_expiry, t.principal_token_expiry.c.principal_id == t.principals.c.id)
)
_Q_PRINCIPAL: Final = _PRINCIPALS.where(t.principals.c.id == _bp("id"))
_Q_DEVICE: Final = sa.select(t.devices).where(t.devices.c.id == _bp("id"))
_Q_DEVICE_TENANTS: Final = sa.select(t.device_tenants.c.tenant_id).where(t.device_tenants.c.device_id == _bp("id"))
#: Models with their signer (an outer join: most models are unsigned).
_MODELS: Final = sa.select(t.models, t.model_signatures.c.signer).select_from(
    t.models.outerjoin(
        t.model_signatures,
        sa.and_(
            t.model_signatures.c.tenant_id == t.models.c.tenant_id,
            t.model_signatures.c.name == t.models.c.name,
            t.model_signatures.c.version == t.models.c.version,
        ),
    )
)
_Q_MODEL: Final = _MODELS.where(
    t.models.c.tenant_id == _bp("tenant"), t.models.c.name == _bp("name"), t.models.c.version == _bp("version")
)
_Q_LATEST_POLICY: Final = (
    sa.select(t.policies)
    .where(t.policies.c.tenant_id == _bp("tenant"), t.policies.c.name == _bp("name"))
    .order_by(t.policies.c.version.desc())
    .limit(1)
)
_Q_KEK: Final = sa.select(
    t.keks,
    sa.exists()
    .where(t.kek_retirements.c.tenant_id == t.keks.c.tenant_id, t.kek_retirements.c.version == t.keks.c.version)
    .label("retired"),
).where(t.keks.c.tenant_id == _bp("tenant"), t.keks.c.version == _bp("version"))
_Q_REFSETS: Final = sa.select(t.refsets.c.name, t.refsets.c.members).where(t.refsets.c.tenant_id == _bp("tenant"))
# FOR KEY SHARE (PostgreSQL; SQLite has no row locks and compiles it away): the weakest row lock,
# which blocks nothing a release or a revocation does, but which a read-only transaction refuses.
# Every release reads here first, so a broker connected to a standby or to a primary switched to
# read-only, whose revocation state may lag, fails the release closed instead of trusting it.
_Q_TOKEN_REVOKED: Final = (
    sa.select(t.tokens.c.revoked).where(t.tokens.c.jti == _bp("jti")).with_for_update(read=True, key_share=True)
)
_Q_CHALLENGE: Final = sa.select(t.challenges).where(
    t.challenges.c.id == _bp("id"), t.challenges.c.tenant_id == _bp("tenant")
)


class TenantRepository(Repository):
    """Tenants; a tenant is born with version 1 of its key-encryption key."""

    def exists(self, tenant: str) -> bool:
        with self._db.read() as conn:
            return conn.execute(sa.select(t.tenants.c.id).where(t.tenants.c.id == tenant)).first() is not None

    def names(self) -> list[str]:
        with self._db.read() as conn:
            return [r[0] for r in conn.execute(sa.select(t.tenants.c.id).order_by(t.tenants.c.id))]

    def create(self, tenant: str, wrapped_kek: bytes, now: int) -> None:
        """Raises ConflictError if the tenant exists."""
        with self._db.write() as conn:
            insert_rows(conn, t.tenants, [{"id": tenant, "created_at": now}])
            insert_rows(conn, t.keks, [{"tenant_id": tenant, "version": 1, "wrapped": wrapped_kek, "created_at": now}])


class KeyRepository(Repository):
    """Wrapped keys: tenants' KEK versions and their retirements, and result-token signing keys."""

    def kek(self, tenant: str, version: int) -> KEKRow | None:
        """One KEK version with its retirement, in one query (every release reads it)."""
        with self._db.read() as conn:
            row = conn.execute(_Q_KEK, {"tenant": tenant, "version": version}).first()
        if row is None:
            return None
        return KEKRow(row.tenant_id, row.version, bytes(row.wrapped), row.created_at, bool(row.retired))

    def latest_kek(self, tenant: str) -> KEKRow | None:
        versions = self.keks(tenant)
        return versions[-1] if versions else None

    def keks(self, tenant: str) -> list[KEKRow]:
        """Every KEK version of a tenant, oldest first, with its retirement."""
        with self._db.read() as conn:
            rows = conn.execute(sa.select(t.keks).where(t.keks.c.tenant_id == tenant).order_by(t.keks.c.version)).all()
            retired = {
                r[0]
                for r in conn.execute(
                    sa.select(t.kek_retirements.c.version).where(t.kek_retirements.c.tenant_id == tenant)
                )
            }
        return [KEKRow(r.tenant_id, r.version, bytes(r.wrapped), r.created_at, r.version in retired) for r in rows]

    def add_kek(self, tenant: str, version: int, wrapped: bytes, now: int) -> None:
        with self._db.write() as conn:
            insert_rows(
                conn, t.keks, [{"tenant_id": tenant, "version": version, "wrapped": wrapped, "created_at": now}]
            )

    def retire_kek(self, tenant: str, version: int, now: int) -> None:
        with self._db.write() as conn:
            insert_rows(conn, t.kek_retirements, [{"tenant_id": tenant, "version": version, "retired_at": now}])

    def signing_keys(self, purpose: str) -> list[SigningKeyRow]:
        """Oldest first."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(t.signing_keys)
                .where(t.signing_keys.c.purpose == purpose)
                .order_by(t.signing_keys.c.created_at, t.signing_keys.c.kid)
            ).all()
        return [SigningKeyRow(r.kid, bytes(r.wrapped), r.created_at, r.retired_at) for r in rows]

    def add_signing_key(self, purpose: str, kid: str, wrapped: bytes, now: int) -> None:
        row = {"purpose": purpose, "kid": kid, "wrapped": wrapped, "created_at": now, "retired_at": None}
        with self._db.write() as conn:
            insert_rows(conn, t.signing_keys, [row])

    def retire_signing_key(self, purpose: str, kid: str, now: int) -> None:
        with self._db.write() as conn:
            conn.execute(
                sa.update(t.signing_keys)
                .where(t.signing_keys.c.purpose == purpose, t.signing_keys.c.kid == kid)
                .values(retired_at=now)
            )


class PrincipalRepository(Repository):
    """API principals. Authentication looks a principal up by id alone (its token names it)."""

    @staticmethod
    def _row(r: Any) -> PrincipalRow:
        expires = None if r.expires_at is None else int(r.expires_at)
        return PrincipalRow(r.id, r.tenant_id, r.role, bytes(r.token_hash), bool(r.disabled), expires)

    def by_id(self, principal_id: str) -> PrincipalRow | None:
        """The global lookup, for authentication and operators."""
        with self._db.read() as conn:
            row = conn.execute(_Q_PRINCIPAL, {"id": principal_id}).first()
        return None if row is None else self._row(row)

    def list_for(self, tenant: str | None) -> list[PrincipalRow]:
        """A tenant's principals, or (None) every principal."""
        query = _PRINCIPALS.order_by(t.principals.c.id)
        if tenant is not None:
            query = query.where(t.principals.c.tenant_id == tenant)
        with self._db.read() as conn:
            return [self._row(r) for r in conn.execute(query)]

    def any_with_role(self, role: str) -> bool:
        with self._db.read() as conn:
            return conn.execute(sa.select(t.principals.c.id).where(t.principals.c.role == role)).first() is not None

    def create(self, principal: PrincipalRow, now: int) -> None:
        """Raises ConflictError if the id is taken."""
        with self._db.write() as conn:
            insert_rows(
                conn,
                t.principals,
                [
                    {
                        "id": principal.id,
                        "tenant_id": principal.tenant_id,
                        "role": principal.role,
                        "token_hash": principal.token_hash,
                        "disabled": principal.disabled,
                        "created_at": now,
                    }
                ],
            )
            self._set_expiry(conn, principal.id, principal.expires_at)

    @staticmethod
    def _set_expiry(conn: sa.Connection, principal_id: str, expires_at: int | None) -> None:
        conn.execute(sa.delete(t.principal_token_expiry).where(t.principal_token_expiry.c.principal_id == principal_id))
        if expires_at is not None:
            conn.execute(sa.insert(t.principal_token_expiry).values(principal_id=principal_id, expires_at=expires_at))

    def disable(self, principal_id: str) -> None:
        with self._db.write() as conn:
            conn.execute(sa.update(t.principals).where(t.principals.c.id == principal_id).values(disabled=True))

    def replace_token(self, principal_id: str, old_hash: bytes, new_hash: bytes, expires_at: int | None) -> bool:
        """Replace an enabled principal's token hash, if it is still ``old_hash`` (compare and swap),
        and its expiry with ``expires_at`` (None: the new token does not expire), in one transaction;
        False, changing nothing, if the principal is gone, disabled or was rotated meanwhile."""
        query = (
            sa.update(t.principals)
            .where(
                t.principals.c.id == principal_id,
                t.principals.c.disabled == sa.false(),
                t.principals.c.token_hash == old_hash,
            )
            .values(token_hash=new_hash)
        )
        with self._db.write() as conn:
            if conn.execute(query).rowcount != 1:
                return False
            self._set_expiry(conn, principal_id, expires_at)
            return True


class DeviceRepository(Repository):
    """Devices, bound to one or more tenants."""

    def by_id(self, device_id: str) -> DeviceRow | None:
        """The global lookup, for operators and for the device a broker-signed token names."""
        with self._db.read() as conn:
            row = conn.execute(_Q_DEVICE, {"id": device_id}).first()
            if row is None:
                return None
            bound = frozenset(r[0] for r in conn.execute(_Q_DEVICE_TENANTS, {"id": device_id}))
        return DeviceRow(row.id, row.kind, row.status, json.loads(row.identity), json.loads(row.state), bound)

    def in_tenant(self, tenant: str, device_id: str) -> DeviceRow | None:
        """A device as a tenant sees it: None unless bound to ``tenant``."""
        device = self.by_id(device_id)
        return device if device is not None and tenant in device.tenants else None

    def list_for(self, tenant: str | None) -> list[DeviceRow]:
        with self._db.read() as conn:
            if tenant is None:
                query = sa.select(t.devices.c.id).order_by(t.devices.c.id)
            else:
                query = (
                    sa.select(t.device_tenants.c.device_id)
                    .where(t.device_tenants.c.tenant_id == tenant)
                    .order_by(t.device_tenants.c.device_id)
                )
            ids = [r[0] for r in conn.execute(query)]
        found = [self.by_id(i) for i in ids]
        return [d for d in found if d is not None]

    def create(self, device: DeviceRow, now: int) -> None:
        """Raises ConflictError if the id is taken."""
        with self._db.write() as conn:
            insert_rows(
                conn,
                t.devices,
                [
                    {
                        "id": device.id,
                        "kind": device.kind,
                        "status": device.status,
                        "identity": to_json(device.identity),
                        "state": to_json(device.state),
                        "created_at": now,
                        "updated_at": now,
                    }
                ],
            )
            insert_rows(
                conn, t.device_tenants, [{"device_id": device.id, "tenant_id": x} for x in sorted(device.tenants)]
            )

    def bind(self, device_id: str, tenants: Sequence[str]) -> None:
        with self._db.write() as conn:
            conn.execute(sa.delete(t.device_tenants).where(t.device_tenants.c.device_id == device_id))
            insert_rows(
                conn, t.device_tenants, [{"device_id": device_id, "tenant_id": x} for x in sorted(set(tenants))]
            )

    def update(
        self,
        device_id: str,
        now: int,
        *,
        status: str | None = None,
        identity: Mapping[str, Any] | None = None,
        state: Mapping[str, int] | None = None,
    ) -> None:
        values: dict[str, Any] = {"updated_at": now}
        if status is not None:
            values["status"] = status
        if identity is not None:
            values["identity"] = to_json(dict(identity))
        if state is not None:
            values["state"] = to_json(dict(state))
        with self._db.write() as conn:
            conn.execute(sa.update(t.devices).where(t.devices.c.id == device_id).values(**values))


class CatalogueRepository(Repository):
    """Each tenant's models, release policies (versioned) and reference sets."""

    @staticmethod
    def _model(r: Any) -> ModelRow:
        return ModelRow(
            r.tenant_id,
            r.name,
            r.version,
            r.policy,
            r.kek_version,
            bytes(r.wrapped_key),
            json.loads(r.files),
            json.loads(r.tags),
            r.signer,
        )

    @staticmethod
    def _policy(r: Any) -> PolicyRow:
        return PolicyRow(r.tenant_id, r.name, r.version, json.loads(r.document), r.digest, bool(r.immutable))

    def model(self, tenant: str, name: str, version: str) -> ModelRow | None:
        with self._db.read() as conn:
            row = conn.execute(_Q_MODEL, {"tenant": tenant, "name": name, "version": version}).first()
        return None if row is None else self._model(row)

    def models(self, tenant: str) -> list[ModelRow]:
        with self._db.read() as conn:
            rows = conn.execute(
                _MODELS.where(t.models.c.tenant_id == tenant).order_by(t.models.c.name, t.models.c.version)
            ).all()
        return [self._model(r) for r in rows]

    def add_model(self, model: ModelRow, now: int) -> None:
        """Raises ConflictError if the model version exists."""
        with self._db.write() as conn:
            insert_rows(
                conn,
                t.models,
                [
                    {
                        "tenant_id": model.tenant_id,
                        "name": model.name,
                        "version": model.version,
                        "policy": model.policy,
                        "kek_version": model.kek_version,
                        "wrapped_key": model.wrapped_key,
                        "files": to_json(model.files),
                        "tags": to_json(model.tags),
                        "created_at": now,
                    }
                ],
            )
            if model.signer is not None:  # in the same transaction: a model is never stored half-signed
                assert model.signature is not None
                insert_rows(
                    conn,
                    t.model_signatures,
                    [
                        {
                            "tenant_id": model.tenant_id,
                            "name": model.name,
                            "version": model.version,
                            "signer": model.signer,
                            "signature_sha256": model.signature[0],
                            "manifest_sha256": model.signature[1],
                            "created_at": now,
                        }
                    ],
                )

    def rewrap_model(self, model: ModelRow, kek_version: int, wrapped_key: bytes) -> bool:
        """Move a model to another KEK version, if it is still on the one ``model`` names."""
        with self._db.write() as conn:
            result = conn.execute(
                sa.update(t.models)
                .where(
                    t.models.c.tenant_id == model.tenant_id,
                    t.models.c.name == model.name,
                    t.models.c.version == model.version,
                    t.models.c.kek_version == model.kek_version,
                )
                .values(kek_version=kek_version, wrapped_key=wrapped_key)
            )
        return result.rowcount == 1

    def latest_policy(self, tenant: str, name: str) -> PolicyRow | None:
        with self._db.read() as conn:
            row = conn.execute(_Q_LATEST_POLICY, {"tenant": tenant, "name": name}).first()
        return None if row is None else self._policy(row)

    def policies(self, tenant: str) -> list[PolicyRow]:
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(t.policies)
                .where(t.policies.c.tenant_id == tenant)
                .order_by(t.policies.c.name, t.policies.c.version)
            ).all()
        return [self._policy(r) for r in rows]

    def add_policy(self, policy: PolicyRow, created_by: str, now: int) -> None:
        """Raises ConflictError if that version exists (a concurrent change won)."""
        with self._db.write() as conn:
            insert_rows(
                conn,
                t.policies,
                [
                    {
                        "tenant_id": policy.tenant_id,
                        "name": policy.name,
                        "version": policy.version,
                        "document": to_json(policy.document),
                        "digest": policy.digest,
                        "immutable": policy.immutable,
                        "created_by": created_by,
                        "created_at": now,
                    }
                ],
            )

    def refsets(self, tenant: str) -> dict[str, frozenset[str]]:
        with self._db.read() as conn:
            rows = conn.execute(_Q_REFSETS, {"tenant": tenant}).all()
        return {r[0]: frozenset(json.loads(r[1])) for r in rows}

    def put_refset(self, tenant: str, name: str, members: Sequence[str], now: int) -> None:
        with self._db.write() as conn:
            conn.execute(sa.delete(t.refsets).where(t.refsets.c.tenant_id == tenant, t.refsets.c.name == name))
            row = {"tenant_id": tenant, "name": name, "members": json.dumps(sorted(set(members))), "updated_at": now}
            insert_rows(conn, t.refsets, [row])


class SessionRepository(Repository):
    """Challenges and result tokens of attestation sessions.

    Challenges are written without waiting for the disk (``durable=False``): a
    challenge lost to a power failure is refused as unknown, and its consumption
    becomes durable, before any token exists, with the attestation's record.
    """

    def add_challenge(self, challenge: ChallengeRow) -> None:
        row = {
            "id": challenge.id,
            "tenant_id": challenge.tenant_id,
            "principal_id": challenge.principal_id,
            "nonce": challenge.nonce,
            "device_id": challenge.device_id,
            "expires_at": challenge.expires_at,
            "used_at": None,
        }
        with self._db.write(durable=False) as conn:
            insert_rows(conn, t.challenges, [row])

    def challenge(self, tenant: str, challenge_id: str) -> ChallengeRow | None:
        with self._db.read() as conn:
            row = conn.execute(_Q_CHALLENGE, {"id": challenge_id, "tenant": tenant}).first()
        if row is None:
            return None
        return ChallengeRow(row.id, row.tenant_id, row.principal_id, bytes(row.nonce), row.device_id, row.expires_at)

    def consume_challenge(self, tenant: str, challenge_id: str, now: int) -> bool:
        """Mark a challenge used if it is unused and unexpired; exactly one caller can win.

        Not durable by itself: :meth:`record_attestation` (durable) commits after it
        and before a token leaves, so a challenge that produced a token stays used.
        """
        with self._db.write(durable=False) as conn:
            result = conn.execute(
                sa.update(t.challenges)
                .where(
                    t.challenges.c.id == challenge_id,
                    t.challenges.c.tenant_id == tenant,
                    t.challenges.c.used_at.is_(None),
                    t.challenges.c.expires_at > now,
                )
                .values(used_at=now)
            )
        return result.rowcount == 1

    def record_attestation(
        self,
        jti: str,
        tenant: str,
        device_id: str | None,
        expires_at: int,
        *,
        device_state: Mapping[str, int] | None = None,
        now: int | None = None,
    ) -> None:
        """A passed attestation, in one durable transaction: the result token's id and the
        state the evidence advanced on its device (a TPM's counters), if any."""
        row = {"jti": jti, "tenant_id": tenant, "device_id": device_id, "expires_at": expires_at, "revoked": False}
        with self._db.write() as conn:
            if device_id is not None and device_state is not None:
                assert now is not None
                conn.execute(
                    sa.update(t.devices)
                    .where(t.devices.c.id == device_id)
                    .values(state=to_json(dict(device_state)), updated_at=now)
                )
            insert_rows(conn, t.tokens, [row])

    def token_revoked(self, jti: str) -> bool:
        """True for a revoked token and for one this broker never issued.

        Raises:
            StorageUnavailableError: the database is down or read-only (see ``_Q_TOKEN_REVOKED``).
        """
        with self._db.read() as conn:
            row = conn.execute(_Q_TOKEN_REVOKED, {"jti": jti}).first()
        return row is None or bool(row[0])
