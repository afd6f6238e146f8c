"""Broker storage: a thin repository over SQLAlchemy 2 Core, SQLite by default.

The schema is created by versioned migrations (``MIGRATIONS``), recorded in
``schema_migrations``. Every query that touches tenant data takes the tenant as a
parameter and filters by it, including lookups by id, so that no code path can
reach another tenant's rows by guessing an identifier.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from weightvault.errors import ConfigError

__all__ = [
    "MIGRATIONS",
    "BrokerStore",
    "ChallengeRow",
    "DeviceRow",
    "ModelRow",
    "PolicyRow",
    "PrincipalRow",
]

metadata = sa.MetaData()

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)
principals = sa.Table(
    "principals",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=True),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)
devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("identity", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False, default="{}"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)
device_tenants = sa.Table(
    "device_tenants",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(64), primary_key=True),
)
keks = sa.Table(
    "keks",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)
models = sa.Table(
    "models",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("policy", sa.String(64), nullable=False),
    sa.Column("kek_version", sa.Integer, nullable=False),
    sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
    sa.Column("files", sa.Text, nullable=False),
    sa.Column("tags", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)
policies = sa.Table(
    "policies",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("digest", sa.String(80), nullable=False),
    sa.Column("immutable", sa.Boolean, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)
challenges = sa.Table(
    "challenges",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("principal_id", sa.String(64), nullable=False),
    sa.Column("nonce", sa.LargeBinary(32), nullable=False),
    sa.Column("device_id", sa.String(64), nullable=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("used_at", sa.BigInteger, nullable=True),
)
tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("device_id", sa.String(64), nullable=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
)
refsets = sa.Table(
    "refsets",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("members", sa.Text, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)
# -- migration 2: custody, approvals, rotation ------------------------------------------
custody_sets = sa.Table(
    "custody_sets",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),  # pending | active | retired
    sa.Column("document", sa.Text, nullable=False),  # ShareSet.to_json(): threshold, custodians, commitments, kcv
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)
custody_deliveries = sa.Table(
    "custody_deliveries",
    metadata,
    sa.Column("set_id", sa.String(32), primary_key=True),
    sa.Column("custodian_id", sa.String(64), primary_key=True),
    sa.Column("sealed", sa.LargeBinary, nullable=False),  # HPKE-encrypted to the custodian
)
custody_ceremonies = sa.Table(
    "custody_ceremonies",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("set_id", sa.String(32), nullable=False),
    sa.Column("terms", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("closed_at", sa.BigInteger, nullable=True),
)
approval_policies = sa.Table(
    "approval_policies",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("digest", sa.String(80), nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)
approval_requests = sa.Table(
    "approval_requests",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("op", sa.String(64), nullable=False),
    sa.Column("document", sa.Text, nullable=False),  # ApprovalRequest.to_json()
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | approved | executed | denied | expired
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)
approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("approver_id", sa.String(64), primary_key=True),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("signature", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)
signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("purpose", sa.String(32), primary_key=True),
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),  # under the root key
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("retired_at", sa.BigInteger, nullable=True),
)
kek_retirements = sa.Table(
    "kek_retirements",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("retired_at", sa.BigInteger, nullable=False),
)

schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.BigInteger, nullable=False),
)

#: Versioned migrations: each is (version, tables it creates). Later versions add
#: ALTERs here; a migration, once released, never changes.
MIGRATIONS: Final[tuple[tuple[int, tuple[sa.Table, ...]], ...]] = (
    (1, (tenants, principals, devices, device_tenants, keks, models, policies, challenges, tokens, refsets)),
    (
        2,
        (
            custody_sets,
            custody_deliveries,
            custody_ceremonies,
            approval_policies,
            approval_requests,
            approvals,
            signing_keys,
            kek_retirements,
        ),
    ),
)


# Hot-path statements, built once: building SQLAlchemy expressions per call costs more
# than running them against SQLite.
_bp = sa.bindparam
_Q_PRINCIPAL: Final = sa.select(principals).where(principals.c.id == _bp("id"))
_Q_DEVICE: Final = sa.select(devices).where(devices.c.id == _bp("id"))
_Q_DEVICE_TENANTS: Final = sa.select(device_tenants.c.tenant_id).where(device_tenants.c.device_id == _bp("id"))
_Q_MODEL: Final = sa.select(models).where(
    models.c.tenant_id == _bp("tenant"), models.c.name == _bp("name"), models.c.version == _bp("version")
)
_Q_LATEST_POLICY: Final = (
    sa.select(policies)
    .where(policies.c.tenant_id == _bp("tenant"), policies.c.name == _bp("name"))
    .order_by(policies.c.version.desc())
    .limit(1)
)
_Q_KEK: Final = sa.select(keks.c.wrapped).where(keks.c.tenant_id == _bp("tenant"), keks.c.version == _bp("version"))
_Q_REFSETS: Final = sa.select(refsets.c.name, refsets.c.members).where(refsets.c.tenant_id == _bp("tenant"))
_Q_TOKEN_REVOKED: Final = sa.select(tokens.c.revoked).where(tokens.c.jti == _bp("jti"))


@dataclass(frozen=True, slots=True)
class PrincipalRow:
    id: str
    tenant_id: str | None
    role: str
    token_hash: bytes
    disabled: bool


@dataclass(frozen=True, slots=True)
class DeviceRow:
    id: str
    kind: str
    status: str
    identity: dict[str, Any]
    state: dict[str, int]
    tenants: frozenset[str]


@dataclass(frozen=True, slots=True)
class ModelRow:
    tenant_id: str
    name: str
    version: str
    policy: str
    kek_version: int
    wrapped_key: bytes
    files: list[dict[str, str]]
    tags: dict[str, str]

    @property
    def resource(self) -> str:
        return f"{self.tenant_id}/models/{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class PolicyRow:
    tenant_id: str
    name: str
    version: int
    document: dict[str, Any]
    digest: str
    immutable: bool


@dataclass(frozen=True, slots=True)
class ChallengeRow:
    id: str
    tenant_id: str
    principal_id: str
    nonce: bytes
    device_id: str | None
    expires_at: int


def _enable_sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class BrokerStore:
    """All broker persistence. Thread-safe; writes are serialised for SQLite."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = sa.create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _enable_sqlite_pragmas)
        self._write_lock = threading.Lock()

    def migrate(self, now: int) -> int:
        """Apply pending migrations; returns the schema version."""
        schema_migrations.create(self.engine, checkfirst=True)
        with self.engine.begin() as conn:
            done = {row[0] for row in conn.execute(sa.select(schema_migrations.c.version))}
            for version, tables in MIGRATIONS:
                if version in done:
                    continue
                for table in tables:
                    table.create(conn, checkfirst=True)
                conn.execute(sa.insert(schema_migrations).values(version=version, applied_at=now))
        latest = max(v for v, _ in MIGRATIONS)
        with self.engine.connect() as conn:
            current = conn.execute(sa.select(sa.func.max(schema_migrations.c.version))).scalar_one()
        if current != latest:
            raise ConfigError(f"database schema is at version {current}, this release needs {latest}")
        return int(current)

    def ping(self) -> str | None:
        """None if the database answers a query, else why not (for readiness checks)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.select(sa.literal(1))).scalar_one()
        except sa.exc.SQLAlchemyError as exc:
            return f"database unavailable: {type(exc).__name__}"
        return None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._write_lock, self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    # -- tenants and principals ------------------------------------------------

    def tenant_exists(self, tenant: str) -> bool:
        with self.read() as conn:
            return conn.execute(sa.select(tenants.c.id).where(tenants.c.id == tenant)).first() is not None

    def list_tenants(self) -> list[str]:
        with self.read() as conn:
            return [r[0] for r in conn.execute(sa.select(tenants.c.id).order_by(tenants.c.id))]

    def principal(self, principal_id: str) -> PrincipalRow | None:
        with self.read() as conn:
            row = conn.execute(_Q_PRINCIPAL, {"id": principal_id}).first()
        if row is None:
            return None
        return PrincipalRow(row.id, row.tenant_id, row.role, bytes(row.token_hash), bool(row.disabled))

    def list_principals(self, tenant: str | None) -> list[PrincipalRow]:
        query = sa.select(principals).order_by(principals.c.id)
        if tenant is not None:
            query = query.where(principals.c.tenant_id == tenant)
        with self.read() as conn:
            return [
                PrincipalRow(r.id, r.tenant_id, r.role, bytes(r.token_hash), bool(r.disabled))
                for r in conn.execute(query)
            ]

    # -- devices -----------------------------------------------------------------

    def device(self, device_id: str) -> DeviceRow | None:
        with self.read() as conn:
            row = conn.execute(_Q_DEVICE, {"id": device_id}).first()
            if row is None:
                return None
            bound = frozenset(r[0] for r in conn.execute(_Q_DEVICE_TENANTS, {"id": device_id}))
        return DeviceRow(row.id, row.kind, row.status, json.loads(row.identity), json.loads(row.state), bound)

    def list_devices(self, tenant: str | None) -> list[DeviceRow]:
        with self.read() as conn:
            if tenant is None:
                ids = [r[0] for r in conn.execute(sa.select(devices.c.id).order_by(devices.c.id))]
            else:
                ids = [
                    r[0]
                    for r in conn.execute(
                        sa.select(device_tenants.c.device_id)
                        .where(device_tenants.c.tenant_id == tenant)
                        .order_by(device_tenants.c.device_id)
                    )
                ]
        out = [self.device(i) for i in ids]
        return [d for d in out if d is not None]

    # -- models, policies, keks, refsets -------------------------------------------

    def model(self, tenant: str, name: str, version: str) -> ModelRow | None:
        with self.read() as conn:
            row = conn.execute(_Q_MODEL, {"tenant": tenant, "name": name, "version": version}).first()
        if row is None:
            return None
        return ModelRow(
            row.tenant_id,
            row.name,
            row.version,
            row.policy,
            row.kek_version,
            bytes(row.wrapped_key),
            json.loads(row.files),
            json.loads(row.tags),
        )

    def list_models(self, tenant: str) -> list[ModelRow]:
        with self.read() as conn:
            rows = conn.execute(
                sa.select(models).where(models.c.tenant_id == tenant).order_by(models.c.name, models.c.version)
            ).all()
        return [
            ModelRow(
                r.tenant_id,
                r.name,
                r.version,
                r.policy,
                r.kek_version,
                bytes(r.wrapped_key),
                json.loads(r.files),
                json.loads(r.tags),
            )
            for r in rows
        ]

    def latest_policy(self, tenant: str, name: str) -> PolicyRow | None:
        with self.read() as conn:
            row = conn.execute(_Q_LATEST_POLICY, {"tenant": tenant, "name": name}).first()
        if row is None:
            return None
        return PolicyRow(
            row.tenant_id, row.name, row.version, json.loads(row.document), row.digest, bool(row.immutable)
        )

    def list_policies(self, tenant: str) -> list[PolicyRow]:
        with self.read() as conn:
            rows = conn.execute(
                sa.select(policies).where(policies.c.tenant_id == tenant).order_by(policies.c.name, policies.c.version)
            ).all()
        return [
            PolicyRow(r.tenant_id, r.name, r.version, json.loads(r.document), r.digest, bool(r.immutable)) for r in rows
        ]

    def latest_kek(self, tenant: str) -> tuple[int, bytes] | None:
        with self.read() as conn:
            row = conn.execute(
                sa.select(keks.c.version, keks.c.wrapped)
                .where(keks.c.tenant_id == tenant)
                .order_by(keks.c.version.desc())
                .limit(1)
            ).first()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def kek(self, tenant: str, version: int) -> bytes | None:
        with self.read() as conn:
            row = conn.execute(_Q_KEK, {"tenant": tenant, "version": version}).first()
        return None if row is None else bytes(row[0])

    def refsets(self, tenant: str) -> dict[str, frozenset[str]]:
        with self.read() as conn:
            rows = conn.execute(_Q_REFSETS, {"tenant": tenant}).all()
        return {r[0]: frozenset(json.loads(r[1])) for r in rows}

    # -- challenges and tokens ---------------------------------------------------------

    def challenge(self, challenge_id: str) -> ChallengeRow | None:
        with self.read() as conn:
            row = conn.execute(sa.select(challenges).where(challenges.c.id == challenge_id)).first()
        if row is None:
            return None
        return ChallengeRow(row.id, row.tenant_id, row.principal_id, bytes(row.nonce), row.device_id, row.expires_at)

    def consume_challenge(self, challenge_id: str, tenant: str, now: int) -> bool:
        """Mark a challenge used if it is unused and unexpired; exactly one caller can win."""
        with self.write() as conn:
            result = conn.execute(
                sa.update(challenges)
                .where(
                    challenges.c.id == challenge_id,
                    challenges.c.tenant_id == tenant,
                    challenges.c.used_at.is_(None),
                    challenges.c.expires_at > now,
                )
                .values(used_at=now)
            )
        return result.rowcount == 1

    def token_revoked(self, jti: str) -> bool:
        with self.read() as conn:
            row = conn.execute(_Q_TOKEN_REVOKED, {"jti": jti}).first()
        return row is None or bool(row[0])

    # -- custody -------------------------------------------------------------------------

    def custody_set(self, status: str) -> tuple[str, dict[str, Any]] | None:
        """The newest share set with ``status`` as (id, document)."""
        with self.read() as conn:
            row = conn.execute(
                sa.select(custody_sets.c.id, custody_sets.c.document)
                .where(custody_sets.c.status == status)
                .order_by(custody_sets.c.created_at.desc())
                .limit(1)
            ).first()
        return None if row is None else (row[0], json.loads(row[1]))

    def custody_set_by_id(self, set_id: str) -> tuple[str, dict[str, Any]] | None:
        """(status, document) of a share set."""
        with self.read() as conn:
            row = conn.execute(
                sa.select(custody_sets.c.status, custody_sets.c.document).where(custody_sets.c.id == set_id)
            ).first()
        return None if row is None else (row[0], json.loads(row[1]))

    def delivery(self, set_id: str, custodian: str) -> bytes | None:
        with self.read() as conn:
            row = conn.execute(
                sa.select(custody_deliveries.c.sealed).where(
                    custody_deliveries.c.set_id == set_id, custody_deliveries.c.custodian_id == custodian
                )
            ).first()
        return None if row is None else bytes(row[0])

    # -- approvals ---------------------------------------------------------------------------

    def approval_policy(self, version: int | None = None) -> tuple[int, dict[str, Any]] | None:
        """The latest (or a given) approval policy version as (version, document)."""
        query = sa.select(approval_policies.c.version, approval_policies.c.document)
        if version is None:
            query = query.order_by(approval_policies.c.version.desc()).limit(1)
        else:
            query = query.where(approval_policies.c.version == version)
        with self.read() as conn:
            row = conn.execute(query).first()
        return None if row is None else (int(row[0]), json.loads(row[1]))

    def approval_request(self, request_id: str) -> tuple[dict[str, Any], str] | None:
        """(request document, status)."""
        with self.read() as conn:
            row = conn.execute(
                sa.select(approval_requests.c.document, approval_requests.c.status).where(
                    approval_requests.c.id == request_id
                )
            ).first()
        return None if row is None else (json.loads(row[0]), str(row[1]))

    def list_approval_requests(self, tenant: str | None, status: str | None) -> list[tuple[dict[str, Any], str]]:
        query = sa.select(approval_requests.c.document, approval_requests.c.status).order_by(
            approval_requests.c.created_at
        )
        if tenant is not None:
            query = query.where(approval_requests.c.tenant_id == tenant)
        if status is not None:
            query = query.where(approval_requests.c.status == status)
        with self.read() as conn:
            return [(json.loads(r[0]), str(r[1])) for r in conn.execute(query)]

    def approvals_for(self, request_id: str) -> list[tuple[str, str, int, bytes]]:
        """(approver, decision, expires_at, signature) in submission order."""
        with self.read() as conn:
            rows = conn.execute(
                sa.select(approvals.c.approver_id, approvals.c.decision, approvals.c.expires_at, approvals.c.signature)
                .where(approvals.c.request_id == request_id)
                .order_by(approvals.c.created_at, approvals.c.approver_id)
            ).all()
        return [(r[0], r[1], int(r[2]), bytes(r[3])) for r in rows]

    def set_request_status(self, request_id: str, old: str, new: str, now: int) -> bool:
        """Compare-and-swap the status of a request; exactly one caller can win."""
        with self.write() as conn:
            result = conn.execute(
                sa.update(approval_requests)
                .where(approval_requests.c.id == request_id, approval_requests.c.status == old)
                .values(status=new, updated_at=now)
            )
        return result.rowcount == 1

    # -- rotation --------------------------------------------------------------------------

    def kek_versions(self, tenant: str) -> list[tuple[int, int, bool]]:
        """(version, created_at, retired) of a tenant's KEKs, oldest first."""
        with self.read() as conn:
            rows = conn.execute(
                sa.select(keks.c.version, keks.c.created_at).where(keks.c.tenant_id == tenant).order_by(keks.c.version)
            ).all()
            retired = {
                r[0]
                for r in conn.execute(sa.select(kek_retirements.c.version).where(kek_retirements.c.tenant_id == tenant))
            }
        return [(int(r[0]), int(r[1]), int(r[0]) in retired) for r in rows]

    def kek_retired(self, tenant: str, version: int) -> bool:
        with self.read() as conn:
            row = conn.execute(
                sa.select(kek_retirements.c.version).where(
                    kek_retirements.c.tenant_id == tenant, kek_retirements.c.version == version
                )
            ).first()
        return row is not None

    def signing_key_rows(self, purpose: str) -> list[tuple[str, bytes, int, int | None]]:
        """(kid, wrapped, created_at, retired_at), oldest first."""
        with self.read() as conn:
            rows = conn.execute(
                sa.select(
                    signing_keys.c.kid, signing_keys.c.wrapped, signing_keys.c.created_at, signing_keys.c.retired_at
                )
                .where(signing_keys.c.purpose == purpose)
                .order_by(signing_keys.c.created_at, signing_keys.c.kid)
            ).all()
        return [(r[0], bytes(r[1]), int(r[2]), None if r[3] is None else int(r[3])) for r in rows]

    def insert(self, conn: Connection, table: sa.Table, values: Mapping[str, Any]) -> None:
        conn.execute(sa.insert(table).values(**values))

    def insert_many(self, conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            conn.execute(sa.insert(table), [dict(r) for r in rows])
