"""The broker's schema: every table, and the versioned migrations that create them.

A migration, once released, never changes; later versions add tables or ALTERs as
new entries of :data:`MIGRATIONS`. Only :mod:`weightvault.broker.storage` imports
this module (and SQLAlchemy).
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa

__all__ = ["MIGRATIONS", "metadata", "schema_migrations"]

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

# -- migration 3: the serving gateway (API keys, output budgets) and the event outbox -------
gateway_keys = sa.Table(
    "gateway_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("principal_id", sa.String(64), nullable=False),
    sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("models", sa.Text, nullable=False),  # JSON list of resources; [] = every model of the tenant
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("revoked_at", sa.BigInteger, nullable=True),
)
budget_buckets = sa.Table(
    "budget_buckets",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),  # scope:subject:window:unit
    sa.Column("spent", sa.Float, nullable=False),  # leaky bucket: what is spent, draining at capacity/period
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    sa.Column("alerted", sa.Integer, nullable=False),  # the highest alert threshold (percent) raised so far
)
event_outbox = sa.Table(
    "event_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("event", sa.Text, nullable=False),  # an AuditEvent's JSON, appended by the broker's sequencer
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# -- migration 4: containment holds (the sentinel's and operators' reversible stops) ------------
containment_holds = sa.Table(
    "containment_holds",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # principal | gateway_key | device | model
    sa.Column("target", sa.String(256), nullable=False),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("alert_index", sa.BigInteger, nullable=True),  # the sentinel.alert it answers, in the log
    sa.Column("rule", sa.String(64), nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("lifted_at", sa.BigInteger, nullable=True),
    sa.Column("lifted_by", sa.String(64), nullable=True),
    sa.Index("ix_containment_active", "kind", "target", "lifted_at"),
)

# -- migration 5: rate limits shared by replicas (token buckets; PostgreSQL only uses them) ------
rate_buckets = sa.Table(
    "rate_buckets",
    metadata,
    sa.Column("key", sa.String(300), primary_key=True),  # kind:subject (principal id, client address)
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),  # the database's clock
    sa.Column("allowed", sa.Boolean, nullable=False),  # whether the latest take found a token
)

# -- migration 6: who signed a model (OpenSSF model signing), checked at registration ------------
model_signatures = sa.Table(
    "model_signatures",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("signer", sa.String(64), nullable=False),  # a name of [models] signers
    sa.Column("signature_sha256", sa.String(64), nullable=False),  # the model.sig bundle that verified
    sa.Column("manifest_sha256", sa.String(64), nullable=False),  # the weightvault-model.json it covers
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# -- migration 7: web console sign-ins (docs/console.md) -------------------------------------------
console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("id_hash", sa.LargeBinary(32), primary_key=True),  # SHA-256 of the cookie's secret
    sa.Column("principal_id", sa.String(64), nullable=False),
    sa.Column("token_hash", sa.LargeBinary(32), nullable=False),  # the API token it was opened with
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Index("ix_console_sessions_principal", "principal_id"),
)

# -- migration 8: API tokens that expire (docs/operations.md, "API tokens") ------------------------
principal_token_expiry = sa.Table(
    "principal_token_expiry",
    metadata,
    sa.Column("principal_id", sa.String(64), primary_key=True),  # a principal whose current token expires
    sa.Column("expires_at", sa.BigInteger, nullable=False),  # Unix seconds; no row: the token does not expire
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
    (3, (gateway_keys, budget_buckets, event_outbox)),
    (4, (containment_holds,)),
    (5, (rate_buckets,)),
    (6, (model_signatures,)),
    (7, (console_sessions,)),
    (8, (principal_token_expiry,)),
)
