"""The key broker: who may do what, and attestation-gated key release.

Order of operations of a release (each step raises before the next):

1. the caller's API token authenticates a workload principal of one tenant;
2. the result token verifies (signature, issuer, audience, lifetime, not revoked)
   and belongs to this principal and tenant;
3. the model is looked up *within that tenant*;
4. the device named by the attestation (if any) exists, is active and is bound to the tenant;
5. the model's release policy (latest version) is evaluated **now** against the
   attested claims plus current broker claims; the decision is logged;
6. the write-ahead rule: ``key.release.intent`` is appended and durable, else refuse;
7. the model key is unwrapped (root key → tenant KEK → file key) and HPKE-sealed to
   the ephemeral public key inside the signed token, never to a key from the request;
8. ``key.release.done`` (or ``.fail``) is appended; key material is wiped.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import rfc8785

from weightvault.attestation.interfaces import AttestationContext, DeviceRecord, check_result, report_data
from weightvault.attestation.policy import ReleasePolicy
from weightvault.attestation.registry import VerifierRegistry
from weightvault.auditlog.events import AuditEvent, SensitiveHasher, bounded_list, digest_json
from weightvault.auditlog.log import AuditSink, Receipt, write_ahead
from weightvault.broker import storage as tables
from weightvault.broker.approvals import ApprovalService, Grant
from weightvault.broker.bindings import export_info, registration_info, release_info
from weightvault.broker.custody import CustodyService
from weightvault.broker.decisions import ReleaseDecision, ReleaseFacts, decide_release, parse_resource
from weightvault.broker.keystore import (
    RootKey,
    unwrap_file_key,
    unwrap_kek,
    unwrap_signing_key,
    wrap_file_key,
    wrap_kek,
    wrap_signing_key,
)
from weightvault.broker.storage import BrokerStore, DeviceRow, ModelRow
from weightvault.broker.tokens import ResultToken, TokenSigner, key_id
from weightvault.crypto.keywrap import HPKEKem, InvalidTag, hpke_open, hpke_seal
from weightvault.crypto.secret import random_bytes
from weightvault.crypto.signing import Ed25519Signer
from weightvault.errors import (
    ApprovalError,
    ApprovalRequiredError,
    AttestationError,
    AuthenticationError,
    ChallengeExpiredError,
    ChallengeUsedError,
    ConflictError,
    EnrolmentError,
    EvidenceError,
    InvalidRequestError,
    KeyAccessError,
    NotFoundError,
    PermissionDeniedError,
    ReleaseDeniedError,
    SealedError,
)
from weightvault.format.keys import FileKey
from weightvault.format.recipients import HPKEIdentity

__all__ = [
    "AttestOutcome",
    "BrokerSettings",
    "Challenge",
    "Health",
    "KeyBroker",
    "Principal",
    "ReleaseOutcome",
    "Role",
]

_TOKEN_PREFIX: Final = "wv1_"  # noqa: S105 - the token format prefix, not a secret
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")
#: Device kinds registered by an operator (TPM devices enrol instead); each is proven by one verifier.
_REGISTERED_KINDS: Final = frozenset({"token", "insecure-sample"})


class Role(enum.Enum):
    OPERATOR = "operator"
    TENANT_ADMIN = "tenant-admin"
    PUBLISHER = "publisher"
    AUDITOR = "auditor"
    WORKLOAD = "workload"
    APPROVER = "approver"


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    tenant: str | None
    role: Role

    def require(self, *roles: Role) -> None:
        if self.role not in roles:
            raise PermissionDeniedError(f"role {self.role.value} may not do this")

    def require_tenant(self, tenant: str) -> None:
        """Operators act on any tenant; everyone else only on their own."""
        if self.role is not Role.OPERATOR and self.tenant != tenant:
            raise PermissionDeniedError("not allowed for this tenant")


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    broker_id: str = "weightvault-broker"
    challenge_ttl_seconds: int = 60
    token_ttl_seconds: int = 300
    kek_max_age_seconds: int = 0  # scheduled KEK rotation; 0 = off
    token_key_max_age_seconds: int = 0  # scheduled token signing key rotation; 0 = off

    def __post_init__(self) -> None:
        if not 1 <= self.challenge_ttl_seconds <= 60:
            raise ValueError("challenges expire within 60 seconds")


@dataclass(frozen=True, slots=True)
class Health:
    """What ``GET /v1/health/ready`` reports."""

    ready: bool
    sealed: bool
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Challenge:
    id: str
    tenant: str
    nonce: bytes
    expires_at: int
    device_id: str | None


@dataclass(frozen=True, slots=True)
class ReleaseOutcome:
    resource: str
    kem: str
    sealed: bytes
    jti: str
    files: tuple[str, ...]
    partial: bool


@dataclass(frozen=True, slots=True)
class AttestOutcome:
    token: str
    expires_at: int
    jti: str
    verifier: str
    device_id: str | None
    release: ReleaseOutcome | None = None


DEFAULT_SETTINGS: Final = BrokerSettings()


def _check_name(value: str, what: str, max_len: int = 64) -> str:
    if not value or len(value) > max_len or not set(value) <= _NAME_CHARS or value[0] in "-_.":
        raise InvalidRequestError(f"{what} must be 1-{max_len} characters of a-z, 0-9, '-', '_' or '.'")
    return value


def _hash_token(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass
class _Stats:
    releases: int = 0
    denied: int = 0
    attests: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class KeyBroker:
    """The broker's domain service. Thread-safe; HTTP-free."""

    def __init__(
        self,
        store: BrokerStore,
        root_key: RootKey | None,
        signer: TokenSigner,
        registry: VerifierRegistry,
        audit: AuditSink,
        *,
        hasher: SensitiveHasher,
        registration_key: HPKEIdentity,
        settings: BrokerSettings = DEFAULT_SETTINGS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.registration_key = registration_key
        self._root = root_key
        self._signer = signer
        self._registry = registry
        self._audit = audit
        self._hasher = hasher
        self.settings = settings
        self._clock = clock
        self.stats = _Stats()
        self.approvals = ApprovalService(store, self._log, settings.broker_id, self._now)
        self.custody = CustodyService(
            store, self._log, settings.broker_id, self._now, install_root=self.unseal_with, sealed=lambda: self.sealed
        )
        if root_key is not None:
            self._load_signing_keys()

    # -- sealing ------------------------------------------------------------------------------------

    @property
    def sealed(self) -> bool:
        """A sealed broker holds no root key: it serves custody ceremonies and nothing that needs keys."""
        return self._root is None

    def _root_key(self) -> RootKey:
        root = self._root
        if root is None:
            raise SealedError(
                "the broker is sealed: an operator opens an unseal ceremony (weightvault custody open unseal) "
                "and custodians submit their shares (weightvault custody submit)"
            )
        return root

    def unseal_with(self, raw: bytes) -> None:
        """Install the root key an unseal ceremony reconstructed (its KCV was checked)."""
        self._root = RootKey(raw)
        self._load_signing_keys()

    def seal(self, actor: Principal) -> None:
        """Wipe the root key from memory; any single operator may do this (break glass)."""
        actor.require(Role.OPERATOR)
        if self.custody.share_set("active") is None:
            raise ConflictError("this broker's root key comes from a key file: set up custody before sealing")
        root, self._root = self._root, None
        if root is not None:
            root.wipe()
        self._log(AuditEvent(type="custody.seal", tenant="-", actor=actor.id, resource="broker", decision="sealed"))

    def _load_signing_keys(self) -> None:
        root = self._root_key()
        rows = self.store.signing_key_rows("token")
        for kid, wrapped, _created, retired in rows:
            if retired is None:
                self._signer.add_key(Ed25519Signer(unwrap_signing_key(root, "token", kid, wrapped)))
        live = [r for r in rows if r[3] is None]
        if live:
            self._signer.current_kid = live[-1][0]

    def health(self) -> Health:
        """Readiness: the database answers and the audit log can still commit (it fails closed for good).

        A sealed broker is ready: it must stay reachable for the custodians who unseal it.
        """
        problems = []
        db = self.store.ping()
        if db is not None:
            problems.append(db)
        failed = getattr(self._audit, "failed", None)
        if failed is not None:
            problems.append(f"audit log failed: {failed}")
        return Health(not problems, self.sealed, tuple(problems))

    def token_keys(self) -> dict[str, bytes]:
        """Public keys that verify result tokens (kid -> raw Ed25519), for GET /v1/keys."""
        return self._signer.public_keys()

    # -- approvals ---------------------------------------------------------------------------------

    def _gate(
        self,
        actor: Principal,
        op: str,
        tenant: str,
        params: Mapping[str, Any],
        *,
        approval: str | None,
        facts: Mapping[str, Any] | None = None,
    ) -> Grant | None:
        """Enforce the approval policy for one operation (``approval="new"`` opens a request).

        Raises:
            ApprovalRequiredError: a rule applies and no approved request was named
                (with the new request attached when one was asked for).
            ApprovalInvalidError: the named request does not match or is not approved.
        """
        facts = facts or {}
        if approval == "new":
            request, needs = self.approvals.create_request(actor.id, op, tenant, params, facts)
            raise ApprovalRequiredError(
                f"approval request {request.id} opened; it needs {needs}",
                {**request.to_json(), "digest": request.digest, "needs": needs, "summary": request.summary()},
            )
        return self.approvals.require(actor.id, op, tenant, params, facts=facts, approval=approval)

    @contextmanager
    def _execute(self, grant: Grant | None, actor: Principal, target: str) -> Iterator[None]:
        """Run an approved operation: the execution intent must be durable, then the request is consumed once."""
        if grant is None:
            yield
            return
        intent = AuditEvent(
            type="approval.execute.intent",
            tenant=grant.request.tenant,
            actor=actor.id,
            resource=f"approval:{grant.request.id}",
            details={
                "op": grant.request.op,
                "digest": grant.request.digest,
                "approvers": list(grant.approvers),
                "target": target,
            },
        )
        with write_ahead(self._audit, intent):
            self.approvals.consume(grant)
            yield

    def request_approval(self, actor: Principal, op: str, tenant: str, params: Mapping[str, Any]) -> Any:
        """Open an approval request directly (for clients that build the parameters themselves)."""
        if actor.role is not Role.OPERATOR:
            actor.require_tenant(tenant)
        return self.approvals.create_request(actor.id, op, tenant, params, self.facts(tenant, params))

    def facts(self, tenant: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Facts approval rules may test: the tags of the model an operation names."""
        resource = params.get("resource")
        if not isinstance(resource, str) or "/models/" not in resource or "@" not in resource:
            return {}
        _, _, rest = resource.partition("/models/")
        name, _, version = rest.partition("@")
        model = self.store.model(tenant, name, version)
        return {} if model is None else {f"model.tags.{k}": v for k, v in model.tags.items()}

    def submit_approval(
        self, actor: Principal, request_id: str, decision: str, expires_at: int, signature: bytes
    ) -> Any:
        actor.require(Role.APPROVER)
        request, _ = self.approvals.request(request_id)
        return self.approvals.submit(
            actor.id,
            request_id,
            approver=actor.id,
            decision=decision,
            expires_at=expires_at,
            signature=signature,
            facts=self.facts(request.tenant, request.params),
        )

    def put_approval_policy(self, actor: Principal, document: object, approval: str | None = None) -> int:
        """Store a new approval policy version; after the first, only through approval.

        Raises:
            InvalidRequestError: the document is invalid.
            ApprovalRequiredError / ApprovalInvalidError: see :meth:`_gate`.
        """
        actor.require(Role.OPERATOR)
        policy = self.approvals.validate_policy(document)
        digest = policy.digest
        grant = None
        if policy.version > 1:
            grant = self._gate(actor, "approval.policy.change", "-", {"document_digest": digest}, approval=approval)
        intent = AuditEvent(
            type="approval.policy.change.intent",
            tenant="-",
            actor=actor.id,
            resource="approval-policy",
            policy_version=policy.version,
            details={
                "digest": digest,
                "bootstrap": policy.version == 1,
                "approvers": {a: x.person.signing.hex() for a, x in policy.approvers.items()},
                "groups": {g: sorted(m) for g, m in policy.groups.items()},
            },
        )
        with self._execute(grant, actor, "approval-policy"), write_ahead(self._audit, intent):
            self.approvals.store_policy(actor.id, policy)
        return policy.version

    # -- custody ---------------------------------------------------------------------------------

    def custody_genesis(self, actor: str, root: RootKey | None, threshold: int, custodians: Sequence[Any]) -> Any:
        """Split the root key to custodians: ``root`` for a new broker, None for this broker's current key."""
        key = root if root is not None else self._root_key()
        share_set = self.custody.genesis(actor, key.reveal(), threshold, custodians)
        if self._root is None:
            self.unseal_with(key.reveal())
        return share_set

    def open_ceremony(
        self,
        actor: Principal,
        kind: str,
        *,
        ttl: int = 900,
        params: Mapping[str, Any] | None = None,
        set_id: str | None = None,
        approval: str | None = None,
    ) -> Any:
        """Open a custody ceremony (operators); a rekey also needs the ``custody.rekey`` approval."""
        actor.require(Role.OPERATOR)
        if kind == "rekey":
            grant = self._gate(actor, "custody.rekey", "-", dict(params or {}), approval=approval)
            with self._execute(grant, actor, "custody"):
                return self.custody.open(actor.id, kind, ttl=ttl, params=params, set_id=set_id)
        return self.custody.open(actor.id, kind, ttl=ttl, params=params, set_id=set_id)

    # -- rotation -------------------------------------------------------------------------------

    def rotate_kek(self, actor: Principal | None, tenant: str, approval: str | None = None) -> int:
        """Add a new KEK version for ``tenant``; new models use it, existing ones until rewrapped.

        ``actor`` None is the rotation scheduler (no approval: rotation only adds protection).
        """
        who = "scheduler"
        grant = None
        if actor is not None:
            actor.require(Role.OPERATOR, Role.TENANT_ADMIN)
            actor.require_tenant(tenant)
            who = actor.id
            grant = self._gate(actor, "key.rotate", tenant, {"tenant": tenant, "key": "kek"}, approval=approval)
        root = self._root_key()
        latest = self.store.latest_kek(tenant)
        if latest is None:
            raise NotFoundError("no such tenant")
        version = latest[0] + 1
        kek = random_bytes(32)
        intent = AuditEvent(
            type="key.rotate.intent", tenant=tenant, actor=who, resource=f"{tenant}/kek", details={"version": version}
        )
        with (
            self._execute(grant, actor or Principal(who, None, Role.OPERATOR), f"{tenant}/kek"),
            self._write_ahead(intent),
            self.store.write() as conn,
        ):
            self.store.insert(
                conn,
                tables.keks,
                {
                    "tenant_id": tenant,
                    "version": version,
                    "wrapped": wrap_kek(root, tenant, version, kek),
                    "created_at": self._now(),
                },
            )
        return version

    def rewrap_models(self, actor: Principal | None, tenant: str) -> list[str]:
        """Move every model of ``tenant`` to the newest KEK; file keys never leave the broker."""
        who = "scheduler"
        if actor is not None:
            actor.require(Role.OPERATOR, Role.TENANT_ADMIN)
            actor.require_tenant(tenant)
            who = actor.id
        import sqlalchemy as sa

        root = self._root_key()
        latest = self.store.latest_kek(tenant)
        if latest is None:
            raise NotFoundError("no such tenant")
        new_version, new_wrapped = latest
        new_kek = unwrap_kek(root, tenant, new_version, new_wrapped)
        moved = []
        for model in self.store.list_models(tenant):
            if model.kek_version == new_version:
                continue
            old_wrapped = self.store.kek(tenant, model.kek_version)
            if old_wrapped is None:
                raise KeyAccessError(f"KEK v{model.kek_version} of {tenant} is missing")
            old_kek = unwrap_kek(root, tenant, model.kek_version, old_wrapped)
            fk = unwrap_file_key(
                old_kek,
                tenant=tenant,
                model=model.name,
                version=model.version,
                kek_version=model.kek_version,
                blob=model.wrapped_key,
            )
            try:
                blob = wrap_file_key(
                    new_kek,
                    tenant=tenant,
                    model=model.name,
                    version=model.version,
                    kek_version=new_version,
                    file_key=fk,
                )
            finally:
                fk.wipe()
            intent = AuditEvent(
                type="key.rewrap.intent",
                tenant=tenant,
                actor=who,
                resource=model.resource,
                details={"from": model.kek_version, "to": new_version},
            )
            with self._write_ahead(intent), self.store.write() as conn:
                conn.execute(
                    sa.update(tables.models)
                    .where(
                        tables.models.c.tenant_id == tenant,
                        tables.models.c.name == model.name,
                        tables.models.c.version == model.version,
                        tables.models.c.kek_version == model.kek_version,
                    )
                    .values(kek_version=new_version, wrapped_key=blob)
                )
            moved.append(model.resource)
        return moved

    def retire_kek(self, actor: Principal, tenant: str, version: int) -> None:
        """Refuse further use of an old KEK version (min-decryption-version); no model may still use it."""
        actor.require(Role.OPERATOR, Role.TENANT_ADMIN)
        actor.require_tenant(tenant)
        versions = self.store.kek_versions(tenant)
        if not versions:
            raise NotFoundError("no such tenant")
        if version == versions[-1][0] or version not in {v for v, _, _ in versions}:
            raise ConflictError("only an older, existing KEK version can be retired")
        users = [m.resource for m in self.store.list_models(tenant) if m.kek_version == version]
        if users:
            raise ConflictError(f"{len(users)} model(s) still use KEK v{version}: rewrap them first")
        intent = AuditEvent(
            type="key.retire.intent",
            tenant=tenant,
            actor=actor.id,
            resource=f"{tenant}/kek",
            details={"version": version},
        )
        with self._write_ahead(intent), self.store.write() as conn:
            self.store.insert(
                conn, tables.kek_retirements, {"tenant_id": tenant, "version": version, "retired_at": self._now()}
            )

    def rotate_token_key(self, actor: Principal | None, approval: str | None = None) -> str:
        """A new result-token signing key (wrapped under the root key); the old one verifies until it is retired."""
        import sqlalchemy as sa

        who = "scheduler"
        grant = None
        if actor is not None:
            actor.require(Role.OPERATOR)
            who = actor.id
            grant = self._gate(actor, "key.rotate", "-", {"key": "token-signing"}, approval=approval)
        root = self._root_key()
        signer = Ed25519Signer.generate()
        kid = key_id(signer)
        now = self._now()
        intent = AuditEvent(
            type="key.rotate.intent",
            tenant="-",
            actor=who,
            resource="token-signing",
            details={"kid": kid, "previous": self._signer.current_kid},
        )
        with self._execute(grant, actor or Principal(who, None, Role.OPERATOR), "token-signing"):
            with self._write_ahead(intent), self.store.write() as conn:
                self.store.insert(
                    conn,
                    tables.signing_keys,
                    {
                        "purpose": "token",
                        "kid": kid,
                        "wrapped": wrap_signing_key(root, "token", kid, signer.reveal_seed()),
                        "created_at": now,
                        "retired_at": None,
                    },
                )
            self._signer.add_key(signer)
        # Older keys verify for one more token lifetime, then retire.
        for old_kid, _, created, retired in self.store.signing_key_rows("token"):
            if retired is None and old_kid != kid and created + self.settings.token_ttl_seconds < now:
                retire = AuditEvent(
                    type="key.retire.intent", tenant="-", actor=who, resource="token-signing", details={"kid": old_kid}
                )
                with self._write_ahead(retire), self.store.write() as conn:
                    conn.execute(
                        sa.update(tables.signing_keys)
                        .where(tables.signing_keys.c.purpose == "token", tables.signing_keys.c.kid == old_kid)
                        .values(retired_at=now)
                    )
                self._signer.retire(old_kid)
        return kid

    def rotate_due(self) -> list[str]:
        """Scheduled rotation: KEKs and the token key older than their configured age. Returns what rotated."""
        if self.sealed:
            return []
        now = self._now()
        done = []
        if self.settings.kek_max_age_seconds > 0:
            for tenant in self.store.list_tenants():
                versions = self.store.kek_versions(tenant)
                if versions and now - versions[-1][1] >= self.settings.kek_max_age_seconds:
                    version = self.rotate_kek(None, tenant)
                    self.rewrap_models(None, tenant)
                    done.append(f"{tenant}/kek v{version}")
        if self.settings.token_key_max_age_seconds > 0:
            rows = [r for r in self.store.signing_key_rows("token") if r[3] is None]
            newest = rows[-1][2] if rows else 0
            if now - newest >= self.settings.token_key_max_age_seconds:
                done.append(f"token-signing {self.rotate_token_key(None)}")
        return done

    def export_key(
        self,
        actor: Principal,
        tenant: str,
        name: str,
        version: str,
        *,
        kem: str,
        public: bytes,
        approval: str | None = None,
    ) -> bytes:
        """Export a model's file key HPKE-sealed to ``public`` (escrow, migration). Always needs approval."""
        actor.require(Role.OPERATOR, Role.TENANT_ADMIN)
        actor.require_tenant(tenant)
        model = self.store.model(tenant, name, version)
        if model is None:
            raise NotFoundError("no such model")
        try:
            kem_kind = HPKEKem(kem)
        except ValueError:
            raise InvalidRequestError(f"unknown KEM {kem!r}") from None
        if len(public) != kem_kind.public_key_bytes:
            raise InvalidRequestError("recipient public key has the wrong length")
        params = {"resource": model.resource, "kem": kem, "public_sha256": hashlib.sha256(public).hexdigest()}
        grant = self._gate(actor, "key.export", tenant, params, approval=approval, facts=self.facts(tenant, params))
        intent = AuditEvent(
            type="key.export.intent", tenant=tenant, actor=actor.id, resource=model.resource, details=dict(params)
        )
        with self._execute(grant, actor, model.resource), write_ahead(self._audit, intent):
            file_key = self._file_key_of(model)
            try:
                return hpke_seal(kem_kind, public, file_key.reveal(), export_info(tenant, model.resource))
            finally:
                file_key.wipe()

    def _now(self) -> int:
        return int(self._clock())

    @contextmanager
    def _write_ahead(self, *intents: AuditEvent) -> Iterator[None]:
        """The write-ahead rule for one change: every intent is durable before the block runs;
        afterwards each gets its ``.done``, or ``.fail`` if the block raised. If an intent cannot be
        appended, the block never runs (AuditLogError): nothing changes without its record."""
        with ExitStack() as stack:
            for intent in intents:
                stack.enter_context(write_ahead(self._audit, intent))
            yield

    def _log(self, event: AuditEvent) -> Receipt:
        return self._audit.append(event)

    def _queue_event(self, event: AuditEvent) -> int:
        """Queue an event without waiting when the sink can; returns its index."""
        submit = getattr(self._audit, "submit", None)
        if submit is not None:
            return int(submit(event).index)
        return self._audit.append(event).index

    # -- authentication ----------------------------------------------------------

    def authenticate(self, bearer: str | None) -> Principal:
        """Resolve an API token ``wv1_<principal>.<secret>``.

        Raises:
            AuthenticationError: missing, malformed, unknown, wrong or disabled.
        """
        if not bearer or not bearer.startswith(_TOKEN_PREFIX) or "." not in bearer or len(bearer) > 256:
            raise AuthenticationError("missing or malformed API token")
        principal_id, _, secret = bearer[len(_TOKEN_PREFIX) :].partition(".")
        row = self.store.principal(principal_id)
        expected = row.token_hash if row is not None else bytes(32)
        # Compare even for unknown principals so timing does not reveal which ids exist.
        ok = hmac.compare_digest(expected, _hash_token(secret))
        if row is None or not ok or row.disabled:
            raise AuthenticationError("invalid API token")
        return Principal(row.id, row.tenant_id, Role(row.role))

    def bootstrap_operator(self, principal_id: str = "operator") -> str:
        """Create the first operator if there is none; returns its API token (shown once)."""
        if any(p.role == Role.OPERATOR.value for p in self.store.list_principals(None)):
            raise ConflictError("an operator already exists")
        return self._new_principal(principal_id, None, Role.OPERATOR, actor="bootstrap")

    def _new_principal(self, principal_id: str, tenant: str | None, role: Role, actor: str) -> str:
        _check_name(principal_id, "principal id")
        if self.store.principal(principal_id) is not None:
            raise ConflictError(f"principal {principal_id} exists")
        secret = secrets.token_urlsafe(32)
        intent = AuditEvent(
            type="principal.change.intent",
            tenant=tenant or "-",
            actor=actor,
            resource=f"principal:{principal_id}",
            details={"op": "create", "role": role.value},
        )
        with self._write_ahead(intent), self.store.write() as conn:
            if self.store.principal(principal_id) is not None:
                raise ConflictError(f"principal {principal_id} exists")
            self.store.insert(
                conn,
                tables.principals,
                {
                    "id": principal_id,
                    "tenant_id": tenant,
                    "role": role.value,
                    "token_hash": _hash_token(secret),
                    "disabled": False,
                    "created_at": self._now(),
                },
            )
        return f"{_TOKEN_PREFIX}{principal_id}.{secret}"

    # -- tenants, principals ---------------------------------------------------------

    def create_tenant(self, actor: Principal, tenant: str) -> None:
        actor.require(Role.OPERATOR)
        _check_name(tenant, "tenant")
        if self.store.tenant_exists(tenant):
            raise ConflictError(f"tenant {tenant} exists")
        kek = random_bytes(32)
        intent = AuditEvent(
            type="tenant.change.intent",
            tenant=tenant,
            actor=actor.id,
            resource=f"tenant:{tenant}",
            details={"op": "create", "kek_version": 1},
        )
        with self._write_ahead(intent), self.store.write() as conn:
            if self.store.tenant_exists(tenant):
                raise ConflictError(f"tenant {tenant} exists")
            now = self._now()
            self.store.insert(conn, tables.tenants, {"id": tenant, "created_at": now})
            self.store.insert(
                conn,
                tables.keks,
                {
                    "tenant_id": tenant,
                    "version": 1,
                    "wrapped": wrap_kek(self._root_key(), tenant, 1, kek),
                    "created_at": now,
                },
            )

    def create_principal(self, actor: Principal, principal_id: str, tenant: str | None, role: Role) -> str:
        """Create a principal and return its API token (shown once)."""
        if actor.role is Role.OPERATOR:
            global_role = role in (Role.OPERATOR, Role.APPROVER)
            if not global_role and (tenant is None or not self.store.tenant_exists(tenant)):
                raise NotFoundError("no such tenant")
            if global_role:
                tenant = None
        else:
            actor.require(Role.TENANT_ADMIN)
            if tenant != actor.tenant:
                raise PermissionDeniedError("tenant admins create principals in their own tenant only")
            if role in (Role.OPERATOR, Role.TENANT_ADMIN, Role.APPROVER):
                raise PermissionDeniedError("tenant admins cannot create operators, tenant admins or approvers")
        return self._new_principal(principal_id, tenant, role, actor.id)

    def disable_principal(self, actor: Principal, principal_id: str) -> None:
        row = self.store.principal(principal_id)
        if row is None:
            raise NotFoundError("no such principal")
        if actor.role is not Role.OPERATOR:
            actor.require(Role.TENANT_ADMIN)
            if row.tenant_id != actor.tenant or row.role in (Role.OPERATOR.value, Role.TENANT_ADMIN.value):
                raise NotFoundError("no such principal")
        import sqlalchemy as sa

        intent = AuditEvent(
            type="principal.change.intent",
            tenant=row.tenant_id or "-",
            actor=actor.id,
            resource=f"principal:{principal_id}",
            details={"op": "disable"},
        )
        with self._write_ahead(intent), self.store.write() as conn:
            conn.execute(
                sa.update(tables.principals).where(tables.principals.c.id == principal_id).values(disabled=True)
            )

    # -- devices -------------------------------------------------------------------------

    def add_device(
        self,
        actor: Principal,
        device_id: str,
        kind: str,
        tenants: Sequence[str],
        identity: Mapping[str, Any] | None = None,
        *,
        approval: str | None = None,
    ) -> None:
        """Register a device known by a non-TPM identity (tokens, test devices); operators only.

        TPM devices enrol through :meth:`enrol_tpm_device`, which checks their EK and AK.
        """
        actor.require(Role.OPERATOR)
        if kind == "tpm":
            raise InvalidRequestError("TPM devices enrol with their EK certificate (weightvault device enroll)")
        if kind not in _REGISTERED_KINDS:
            raise InvalidRequestError(
                f"device kind must be one of {sorted(_REGISTERED_KINDS)}: 'token' for devices an attestation-token "
                "issuer names, 'insecure-sample' for tests"
            )
        params = {
            "device": device_id,
            "kind": kind,
            "tenants": sorted(tenants),
            "identity_sha256": hashlib.sha256(rfc8785.dumps(dict(identity or {}))).hexdigest(),
        }
        grant = self._gate(actor, "device.enrol", "-", params, approval=approval)
        self._insert_device(actor, device_id, kind, tenants, identity=identity, status="active", grant=grant)

    def _insert_device(
        self,
        actor: Principal,
        device_id: str,
        kind: str,
        tenants: Sequence[str],
        *,
        identity: Mapping[str, Any] | None,
        status: str,
        grant: Grant | None,
    ) -> None:
        _check_name(device_id, "device id")
        for tenant in tenants:
            if not self.store.tenant_exists(tenant):
                raise NotFoundError(f"no tenant {tenant}")
        if self.store.device(device_id) is not None:
            raise ConflictError(f"device {device_id} exists")
        intents = [
            AuditEvent(
                type="device.enrol.intent",
                tenant=tenant,
                actor=actor.id,
                resource=f"device:{device_id}",
                details={"kind": kind, "status": status},
            )
            for tenant in tenants or ["-"]
        ]
        with (
            self._execute(grant, actor, f"device:{device_id}"),
            self._write_ahead(*intents),
            self.store.write() as conn,
        ):
            if self.store.device(device_id) is not None:
                raise ConflictError(f"device {device_id} exists")
            now = self._now()
            self.store.insert(
                conn,
                tables.devices,
                {
                    "id": device_id,
                    "kind": kind,
                    "status": status,
                    "identity": json.dumps(dict(identity or {}), sort_keys=True),
                    "state": "{}",
                    "created_at": now,
                    "updated_at": now,
                },
            )
            self.store.insert_many(
                conn, tables.device_tenants, [{"device_id": device_id, "tenant_id": t} for t in tenants]
            )

    def set_device_tenants(self, actor: Principal, device_id: str, tenants: Sequence[str]) -> None:
        actor.require(Role.OPERATOR)
        import sqlalchemy as sa

        if self.store.device(device_id) is None:
            raise NotFoundError("no such device")
        for tenant in tenants:
            if not self.store.tenant_exists(tenant):
                raise NotFoundError(f"no tenant {tenant}")
        intent = AuditEvent(
            type="device.change.intent",
            tenant="-",
            actor=actor.id,
            resource=f"device:{device_id}",
            details={"op": "bind", "tenants": bounded_list(sorted(set(tenants)))},
        )
        with self._write_ahead(intent), self.store.write() as conn:
            conn.execute(sa.delete(tables.device_tenants).where(tables.device_tenants.c.device_id == device_id))
            self.store.insert_many(
                conn, tables.device_tenants, [{"device_id": device_id, "tenant_id": t} for t in tenants]
            )

    def set_device_status(
        self, actor: Principal, device_id: str, status: str, state: Mapping[str, int] | None = None
    ) -> None:
        """Activate or revoke a device; a revocation takes effect at the next release."""
        actor.require(Role.OPERATOR)
        import sqlalchemy as sa

        device = self.store.device(device_id)
        if device is None:
            raise NotFoundError("no such device")
        values: dict[str, Any] = {"status": status, "updated_at": self._now()}
        if state is not None:
            values["state"] = json.dumps(dict(state), sort_keys=True)
        kind = "device.revoke" if status == "revoked" else "device.activate" if status == "active" else "device.change"
        intents = [
            AuditEvent(
                type=f"{kind}.intent",
                tenant=tenant,
                actor=actor.id,
                resource=f"device:{device_id}",
                details={"status": status},
            )
            for tenant in sorted(device.tenants) or ["-"]
        ]
        with self._write_ahead(*intents), self.store.write() as conn:
            conn.execute(sa.update(tables.devices).where(tables.devices.c.id == device_id).values(**values))

    def _tpm_verifier(self) -> Any:
        verifier = self._registry.get("tpm")
        if verifier is None:
            raise InvalidRequestError("this broker does not accept TPM devices (the tpm verifier is not enabled)")
        return verifier

    def enrol_tpm_device(
        self,
        actor: Principal,
        device_id: str,
        tenants: Sequence[str],
        *,
        ek_cert: bytes,
        ek_public: bytes,
        ak_public: bytes,
        approval: str | None = None,
    ) -> tuple[bytes, bytes]:
        """Step 1 of TPM enrolment: check EK chain, EK and AK; returns (credential blob, encrypted secret).

        The device stays ``pending`` until :meth:`activate_tpm_device` receives the secret
        that only ActivateCredential on the same TPM recovers.

        Raises:
            QuoteError: the EK certificate does not chain to a configured root, the EK does
                not match it, or the AK is not a restricted attestation key.
        """
        from weightvault.attestation.tpm.enrolment import make_credential

        actor.require(Role.OPERATOR)
        _check_name(device_id, "device id")
        verifier = self._tpm_verifier()
        params = {
            "device": device_id,
            "kind": "tpm",
            "tenants": sorted(tenants),
            "ak_sha256": hashlib.sha256(ak_public).hexdigest(),
        }
        grant = self._gate(actor, "device.enrol", "-", params, approval=approval)
        try:
            facts = verifier.enrol(ek_cert, ek_public, ak_public, self._now())
        except AttestationError as exc:
            self._log_enrol_failure(actor, device_id, tenants, str(exc)[:500])
            raise EnrolmentError(f"enrolment refused: {exc}") from exc
        for other in self.store.list_devices(None):
            if other.status != "revoked" and other.identity.get("ak_name") == facts.ak_name.hex():
                raise ConflictError(f"this TPM is already enrolled as {other.id}; revoke that device first")
        secret = random_bytes(32)
        blob, encrypted = make_credential(ek_public, facts.ak_name, secret)
        identity = {
            "ek_cert": base64.b64encode(ek_cert).decode(),
            "ek_public": base64.b64encode(ek_public).decode(),
            "ak_public": base64.b64encode(ak_public).decode(),
            "ak_name": facts.ak_name.hex(),
            "ek_issuer": facts.ek_issuer,
            "credential_sha256": hashlib.sha256(secret).hexdigest(),
        }
        self._insert_device(actor, device_id, "tpm", tenants, identity=identity, status="pending", grant=grant)
        return blob, encrypted

    def _log_enrol_failure(self, actor: Principal, device_id: str, tenants: Sequence[str], reason: str) -> None:
        """One ``device.enrol.fail`` per tenant the device was to serve (``-`` for none)."""
        for tenant in tenants or ["-"]:
            self._log(
                AuditEvent(
                    type="device.enrol.fail",
                    tenant=tenant,
                    actor=actor.id,
                    resource=f"device:{device_id}",
                    decision="deny",
                    reasons=(reason,),
                )
            )

    def activate_tpm_device(self, actor: Principal, device_id: str, secret: bytes) -> None:
        """Step 2 of TPM enrolment: the secret recovered by ActivateCredential activates the device."""
        import sqlalchemy as sa

        actor.require(Role.OPERATOR)
        device = self.store.device(device_id)
        if device is None or device.kind != "tpm":
            raise NotFoundError("no such TPM device")
        expected = str(device.identity.get("credential_sha256", ""))
        if device.status != "pending" or not expected:
            raise ConflictError("the device is not waiting for credential activation")
        if not hmac.compare_digest(hashlib.sha256(secret).hexdigest(), expected):
            self._log_enrol_failure(actor, device_id, sorted(device.tenants), "credential_mismatch")
            raise PermissionDeniedError("the activation secret does not match: the AK is not on this EK's TPM")
        identity = {k: v for k, v in device.identity.items() if k != "credential_sha256"}
        intents = [
            AuditEvent(
                type="device.activate.intent",
                tenant=tenant,
                actor=actor.id,
                resource=f"device:{device_id}",
                details={"status": "active", "ak_name": str(identity.get("ak_name", ""))},
            )
            for tenant in sorted(device.tenants) or ["-"]
        ]
        with self._write_ahead(*intents), self.store.write() as conn:
            conn.execute(
                sa.update(tables.devices)
                .where(tables.devices.c.id == device_id)
                .values(status="active", identity=json.dumps(identity, sort_keys=True), updated_at=self._now())
            )

    def challenge_hints(self, challenge: Challenge) -> dict[str, Any]:
        """What the attester needs to know beyond the nonce (the PCR selection for TPM devices)."""
        if challenge.device_id is None:
            return {}
        device = self.store.device(challenge.device_id)
        verifier = self._registry.get("tpm")
        if device is None or device.kind != "tpm" or verifier is None:
            return {}
        return {"tpm": {"pcr_selection": verifier.pcr_selection}}  # type: ignore[attr-defined]

    def _device_record(self, row: DeviceRow) -> DeviceRecord:
        return DeviceRecord(row.id, row.kind, row.status, row.tenants, row.identity)

    # -- policies and reference values ----------------------------------------------------

    def put_policy(
        self, actor: Principal, tenant: str, name: str, document: Mapping[str, Any], approval: str | None = None
    ) -> int:
        """Store a new version of a release policy; returns the version.

        Raises:
            PermissionDeniedError: not a tenant admin of ``tenant`` (or an operator).
            ConflictError: the policy is immutable.
            PolicyViolationError: the document is invalid, or covers another tenant's resources.
        """
        actor.require(Role.OPERATOR, Role.TENANT_ADMIN)
        actor.require_tenant(tenant)
        _check_name(name, "policy name")
        if not self.store.tenant_exists(tenant):
            raise NotFoundError("no such tenant")
        current = self.store.latest_policy(tenant, name)
        version = 1 if current is None else current.version + 1
        policy = ReleasePolicy.parse(tenant, name, version, document)
        if current is not None and current.immutable:
            self._log(
                AuditEvent(
                    type="policy.change.fail",
                    tenant=tenant,
                    actor=actor.id,
                    resource=f"{tenant}/policies/{name}",
                    decision="deny",
                    reasons=("immutable",),
                    policy_version=current.version,
                )
            )
            raise ConflictError(f"policy {name} is immutable")
        old_digest = current.digest if current is not None else "none"
        params = {"tenant": tenant, "name": name, "document_digest": policy.digest}
        grant = self._gate(actor, "policy.change", tenant, params, approval=approval)
        intent = AuditEvent(
            type="policy.change.intent",
            tenant=tenant,
            actor=actor.id,
            resource=f"{tenant}/policies/{name}",
            policy_version=version,
            details={"old_digest": old_digest, "new_digest": policy.digest},
        )
        with (
            self._execute(grant, actor, f"{tenant}/policies/{name}"),
            write_ahead(self._audit, intent),
            self.store.write() as conn,
        ):
            self.store.insert(
                conn,
                tables.policies,
                {
                    "tenant_id": tenant,
                    "name": name,
                    "version": version,
                    "document": json.dumps(dict(document), sort_keys=True),
                    "digest": policy.digest,
                    "immutable": policy.immutable,
                    "created_by": actor.id,
                    "created_at": self._now(),
                },
            )
        return version

    def put_refset(self, actor: Principal, tenant: str, name: str, items: Sequence[str]) -> None:
        """Replace a named set of approved values (for example PCR digests)."""
        actor.require(Role.OPERATOR, Role.TENANT_ADMIN)
        actor.require_tenant(tenant)
        _check_name(name, "reference set name")
        values: list[object] = list(items)  # typed, but arrives from JSON
        if not all(isinstance(i, str) and len(i) <= 256 for i in values) or len(values) > 10_000:
            raise InvalidRequestError("reference values are strings")
        import sqlalchemy as sa

        doc = json.dumps(sorted(set(items)))
        old = self.store.refsets(tenant).get(name)
        intent = AuditEvent(
            type="policy.change.intent",
            tenant=tenant,
            actor=actor.id,
            resource=f"{tenant}/refsets/{name}",
            details={"old_digest": digest_json(sorted(old or [])), "new_digest": digest_json(sorted(set(items)))},
        )
        with self._write_ahead(intent), self.store.write() as conn:
            conn.execute(
                sa.delete(tables.refsets).where(tables.refsets.c.tenant_id == tenant, tables.refsets.c.name == name)
            )
            self.store.insert(
                conn, tables.refsets, {"tenant_id": tenant, "name": name, "members": doc, "updated_at": self._now()}
            )

    # -- models ----------------------------------------------------------------------------

    def register_model(
        self,
        actor: Principal,
        tenant: str,
        name: str,
        version: str,
        *,
        policy: str,
        file_key: FileKey,
        files: Sequence[Mapping[str, str]],
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Store a model's file key wrapped under the tenant's newest KEK; returns its resource name."""
        actor.require(Role.OPERATOR, Role.TENANT_ADMIN, Role.PUBLISHER)
        actor.require_tenant(tenant)
        _check_name(name, "model name", 128)
        _check_name(version, "model version")
        if not self.store.tenant_exists(tenant):
            raise NotFoundError("no such tenant")
        _check_name(policy, "policy name")
        for f in files:
            if set(f) - {"file_id", "header_mac", "path"} or len(f.get("file_id", "")) != 64:
                raise InvalidRequestError("files are {file_id, header_mac, path}")
        latest = self.store.latest_kek(tenant)
        assert latest is not None
        kek_version, wrapped_kek = latest
        kek = unwrap_kek(self._root_key(), tenant, kek_version, wrapped_kek)
        wrapped = wrap_file_key(
            kek, tenant=tenant, model=name, version=version, kek_version=kek_version, file_key=file_key
        )
        resource = f"{tenant}/models/{name}@{version}"
        if self.store.model(tenant, name, version) is not None:
            raise ConflictError(f"model {name}@{version} exists")
        # A model may have thousands of files: the event names them by digest, so it stays small.
        file_ids = sorted(f["file_id"] for f in files)
        intent = AuditEvent(
            type="model.register.intent",
            tenant=tenant,
            actor=actor.id,
            resource=resource,
            details={
                "policy": policy,
                "kek_version": kek_version,
                "file_count": len(file_ids),
                "files_digest": digest_json(file_ids),
                "tags_digest": digest_json(dict(tags or {})),
            },
        )
        with self._write_ahead(intent), self.store.write() as conn:
            if self.store.model(tenant, name, version) is not None:
                raise ConflictError(f"model {name}@{version} exists")
            self.store.insert(
                conn,
                tables.models,
                {
                    "tenant_id": tenant,
                    "name": name,
                    "version": version,
                    "policy": policy,
                    "kek_version": kek_version,
                    "wrapped_key": wrapped,
                    "files": json.dumps([dict(f) for f in files], sort_keys=True),
                    "tags": json.dumps(dict(tags or {}), sort_keys=True),
                    "created_at": self._now(),
                },
            )
        return resource

    def register_sealed_model(
        self,
        actor: Principal,
        tenant: str,
        name: str,
        version: str,
        *,
        policy: str,
        kem: str,
        sealed_key: bytes,
        files: Sequence[Mapping[str, str]],
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Register a model whose file key the publisher sealed to the broker's registration key."""
        actor.require(Role.OPERATOR, Role.TENANT_ADMIN, Role.PUBLISHER)
        actor.require_tenant(tenant)
        if kem != self.registration_key.kem.value:
            raise InvalidRequestError(f"the registration key uses {self.registration_key.kem.value}")
        try:
            raw = hpke_open(
                self.registration_key.kem,
                self.registration_key.reveal(),
                sealed_key,
                registration_info(tenant, name, version),
            )
            file_key = FileKey(raw)
        except (InvalidTag, ValueError):
            raise InvalidRequestError("the sealed file key does not open for this tenant, model and version") from None
        try:
            return self.register_model(
                actor, tenant, name, version, policy=policy, file_key=file_key, files=files, tags=tags
            )
        finally:
            file_key.wipe()

    def model(self, actor: Principal, tenant: str, name: str, version: str) -> ModelRow:
        actor.require_tenant(tenant)
        row = self.store.model(tenant, name, version)
        if row is None:
            raise NotFoundError("no such model")
        return row

    # -- the protocol ------------------------------------------------------------------------

    def issue_challenge(self, actor: Principal, device_id: str | None = None) -> Challenge:
        actor.require(Role.WORKLOAD)
        self._root_key()
        assert actor.tenant is not None
        if device_id is not None:
            device = self.store.device(device_id)
            known = device is not None and actor.tenant in device.tenants
            if device is None or not known or device.status != "active":
                self._log(
                    AuditEvent(
                        type="challenge.issued",
                        tenant=actor.tenant,
                        actor=actor.id,
                        resource=f"device:{device_id}"[:256],
                        decision="deny",
                        reasons=(f"device_{device.status}" if device is not None and known else "device_unknown",),
                    )
                )
                if device is None or not known:
                    raise NotFoundError("no such device in this tenant")
                raise PermissionDeniedError("device is not active")
        challenge = Challenge(
            id=uuid.uuid4().hex,
            tenant=actor.tenant,
            nonce=random_bytes(32),
            expires_at=self._now() + self.settings.challenge_ttl_seconds,
            device_id=device_id,
        )
        # Recorded first: a challenge that exists was logged (one that was logged but failed to
        # be stored can never be used, so it needs no follow-up record).
        self._log(
            AuditEvent(
                type="challenge.issued",
                tenant=actor.tenant,
                actor=actor.id,
                resource=f"challenge:{challenge.id}",
                decision="allow",
                details={"device": device_id} if device_id else {},
            )
        )
        with self.store.write() as conn:
            self.store.insert(
                conn,
                tables.challenges,
                {
                    "id": challenge.id,
                    "tenant_id": challenge.tenant,
                    "principal_id": actor.id,
                    "nonce": challenge.nonce,
                    "device_id": device_id,
                    "expires_at": challenge.expires_at,
                    "used_at": None,
                },
            )
        return challenge

    def attest(
        self,
        actor: Principal,
        challenge_id: str,
        kem: str,
        public: bytes,
        evidence: Mapping[str, Any],
        *,
        release: tuple[str, Mapping[str, Sequence[int]] | None] | None = None,
        approval: str | None = None,
    ) -> AttestOutcome:
        """Consume the challenge, verify the evidence, issue a result token (and optionally release).

        Raises:
            NotFoundError: unknown challenge (or another tenant's).
            ChallengeUsedError / ChallengeExpiredError: replay or late use.
            AttestationError: the evidence does not verify (details go to the audit log).
            PermissionDeniedError: the attested device is unknown, inactive or not in this tenant.
        """
        actor.require(Role.WORKLOAD)
        assert actor.tenant is not None
        tenant = actor.tenant
        try:
            kem_kind = HPKEKem(kem)
        except ValueError:
            self._fail_attest(actor, challenge_id, "invalid_request: unknown KEM", evidence)
            raise InvalidRequestError(f"unknown KEM {kem!r}") from None
        if len(public) != kem_kind.public_key_bytes:
            self._fail_attest(actor, challenge_id, "invalid_request: ephemeral key length", evidence)
            raise InvalidRequestError("ephemeral public key has the wrong length")
        challenge = self.store.challenge(challenge_id)
        if challenge is None or challenge.tenant_id != tenant or challenge.principal_id != actor.id:
            # Another tenant's or principal's challenge looks exactly like an unknown one.
            self._fail_attest(actor, challenge_id, "challenge_unknown", evidence)
            raise NotFoundError("no such challenge")
        now = self._now()
        if not self.store.consume_challenge(challenge_id, tenant, now):
            fresh = self.store.challenge(challenge_id)
            reason = "challenge_expired" if fresh is not None and fresh.expires_at <= now else "challenge_used"
            self._fail_attest(actor, challenge_id, reason, evidence)
            raise (
                ChallengeExpiredError("challenge expired")
                if reason == "challenge_expired"
                else ChallengeUsedError("challenge already used")
            )
        expected = report_data(challenge_id, challenge.nonce, tenant, kem, public)
        verifier = self._registry.get(evidence.get("type"))
        if verifier is None:
            self._fail_attest(actor, challenge_id, "verifier_not_allowed", evidence)
            raise EvidenceError("evidence type is not accepted by this broker")
        device_row = self.store.device(challenge.device_id) if challenge.device_id else None
        context = AttestationContext(
            tenant=tenant,
            challenge_id=challenge_id,
            nonce=challenge.nonce,
            expected_report_data=expected,
            now=now,
            device=self._device_record(device_row) if device_row else None,
            device_state=device_row.state if device_row else {},
        )
        try:
            result = verifier.verify(evidence, context)
            check_result(verifier, result)
        except AttestationError as exc:
            self._fail_attest(actor, challenge_id, f"{type(exc).__name__}: {exc}", evidence)
            raise
        # The device is the one the evidence authenticated, never merely the one the challenge named.
        device_id = result.device_id
        problem = self._device_binding(verifier.device_kinds, device_id, challenge.device_id, tenant)
        if problem:
            self._fail_attest(actor, challenge_id, problem, evidence)
            raise PermissionDeniedError(f"the evidence does not establish an allowed device ({problem})")
        token, parsed = self._signer.issue(
            tenant=tenant, principal=actor.id, result=result, kem=kem, public=public, challenge_id=challenge_id, now=now
        )
        passed = AuditEvent(
            type="attest.pass",
            tenant=tenant,
            actor=actor.id,
            resource=f"challenge:{challenge_id}",
            decision="pass",
            evidence_digest=result.evidence_digest,
            details={"verifier": result.verifier, "jti": parsed.jti, **({"device": device_id} if device_id else {})},
        )
        if release is None:
            self._log(passed)  # durable before the token exists anywhere else
        else:
            # One-shot: every path of the release below appends a durable event (its decision or
            # its intent), and the single writer commits in order, so this rides that commit.
            self._queue_event(passed)
        if device_id is not None and result.device_state:
            import sqlalchemy as sa

            with self.store.write() as conn:
                conn.execute(
                    sa.update(tables.devices)
                    .where(tables.devices.c.id == device_id)
                    .values(state=json.dumps(dict(result.device_state), sort_keys=True), updated_at=now)
                )
        with self.store.write() as conn:
            self.store.insert(
                conn,
                tables.tokens,
                {
                    "jti": parsed.jti,
                    "tenant_id": tenant,
                    "device_id": device_id,
                    "expires_at": parsed.expires_at,
                    "revoked": False,
                },
            )
        self.stats.attests += 1
        released = None
        if release is not None:
            released = self._release(actor, parsed, release[0], release[1], approval)
        return AttestOutcome(token, parsed.expires_at, parsed.jti, result.verifier, device_id, released)

    def _fail_attest(self, actor: Principal, challenge_id: str, reason: str, evidence: Mapping[str, Any]) -> None:
        from weightvault.attestation.interfaces import evidence_digest

        try:
            digest = evidence_digest(evidence)
        except (TypeError, ValueError):
            digest = None
        self._log(
            AuditEvent(
                type="attest.fail",
                tenant=actor.tenant or "-",
                actor=actor.id,
                resource=f"challenge:{challenge_id}"[:256],
                decision="fail",
                reasons=(reason[:500],),
                evidence_digest=digest,
            )
        )

    def _device_binding(
        self, kinds: frozenset[str], attested: str | None, named: str | None, tenant: str
    ) -> str | None:
        """Why the device a verifier authenticated may not stand behind a result token (None: it may).

        A challenge that names a device needs evidence that proves that very device;
        and a device is bound only if its kind is one the verifier can prove (a
        TPM device only by a TPM quote), so its ``device.*`` claims always rest on
        evidence of that kind.
        """
        if named is not None and attested is None:
            return "device_not_attested"
        if named is not None and attested != named:
            return "device_mismatch"
        if attested is None:
            return None
        device = self.store.device(attested)
        problem = self._device_problem(device, tenant)
        if problem is None and device is not None and device.kind not in kinds:
            return f"device_kind_{device.kind}_not_proven_by_this_verifier"
        return problem

    def _device_problem(self, device: DeviceRow | None, tenant: str) -> str | None:
        if device is None:
            return "device_unknown"
        if device.status != "active":
            return f"device_{device.status}"
        if tenant not in device.tenants:
            return "device_not_in_tenant"
        return None

    def release(
        self,
        actor: Principal,
        token: str,
        resource: str,
        tensors: Mapping[str, Sequence[int]] | None = None,
        approval: str | None = None,
    ) -> ReleaseOutcome:
        """Release a model's keys for a result token (see the module docstring for the order of checks).

        Every refusal, an invalid or expired result token included, is logged as a
        ``policy.decision`` deny before the error is raised.

        Raises:
            AuthenticationError: the result token is invalid, expired or revoked.
            PermissionDeniedError: the token belongs to another principal or tenant.
            NotFoundError: no such model in this tenant.
            ReleaseDeniedError: the device or the policy denies the release (with reason codes).
            AuditLogError: the intent could not be recorded; nothing is released.
        """
        actor.require(Role.WORKLOAD)
        try:
            parsed = self._signer.verify(token, now=self._now())
            if self.store.token_revoked(parsed.jti):
                raise EvidenceError("result token revoked")
        except EvidenceError as exc:
            self._deny(actor, resource, ("result_token_invalid",), (f"result token: {exc}"[:300],))
            raise AuthenticationError(str(exc)) from exc
        return self._release(actor, parsed, resource, tensors, approval)

    def _deny(
        self,
        actor: Principal,
        resource: str,
        codes: Sequence[str],
        reasons: Sequence[str],
        *,
        token: ResultToken | None = None,
        decision: ReleaseDecision | None = None,
    ) -> None:
        """Log one refused release (``policy.decision`` deny) with its codes and full reasons."""
        details: dict[str, Any] = {"codes": list(codes)}
        if token is not None:
            details.update({"jti": token.jti, "verifier": token.result.verifier})
            if token.device_id:
                details["device"] = token.device_id
        if decision is not None and decision.policy_digest:
            details["policy_digest"] = decision.policy_digest
        self._log(
            AuditEvent(
                type="policy.decision",
                tenant=actor.tenant or "-",
                actor=actor.id,
                resource=resource[:256],
                decision="deny",
                reasons=tuple(reasons),
                policy_version=decision.policy_version if decision is not None else None,
                evidence_digest=token.result.evidence_digest if token is not None else None,
                details=details,
            )
        )
        self.stats.denied += 1

    def _release_facts(self, actor: Principal, token: ResultToken, resource: str) -> ReleaseFacts:
        """Read what the decision needs, every lookup within the caller's tenant."""
        assert actor.tenant is not None
        tenant = actor.tenant
        target = parse_resource(resource)
        model = None
        if target is not None and target[0] == tenant:
            model = self.store.model(tenant, target[1], target[2])
        device = self.store.device(token.device_id) if token.device_id else None
        policy = self.store.latest_policy(tenant, model.policy) if model is not None else None
        refsets = self.store.refsets(tenant) if policy is not None else {}
        return ReleaseFacts(tenant, actor.id, resource, token, model, device, policy, refsets, self._now())

    def _release(
        self,
        actor: Principal,
        token: ResultToken,
        resource: str,
        tensors: Mapping[str, Sequence[int]] | None,
        approval: str | None = None,
    ) -> ReleaseOutcome:
        assert actor.tenant is not None
        tenant = actor.tenant
        if parse_resource(resource) is None:
            self._deny(actor, resource, ("invalid_request",), ("malformed resource",), token=token)
            raise InvalidRequestError("resource is <tenant>/models/<name>@<version>")
        facts = self._release_facts(actor, token, resource)
        decision = decide_release(facts)
        if decision.codes and decision.codes[0] in ("token_not_for_caller", "resource_not_in_tenant"):
            self._deny(actor, resource, decision.codes, decision.reasons, token=token)
            raise PermissionDeniedError("this token may not release keys of this tenant's models")
        model = facts.model
        if model is None:
            self._deny(actor, resource, decision.codes, decision.reasons, token=token)
            raise NotFoundError("no such model")
        files = [f["file_id"] for f in model.files]
        if tensors is not None:
            unknown = set(tensors) - set(files)
            indices: list[object] = [i for ix in tensors.values() for i in ix]  # typed, but arrives from JSON
            if unknown or not tensors or any(not isinstance(i, int) or not 0 <= i <= 1_000_000 for i in indices):
                self._deny(actor, resource, ("invalid_request",), ("tensors name no file of this model",), token=token)
                raise InvalidRequestError("tensors maps file ids of this model to tensor indices")
        if self.sealed:
            self._deny(actor, resource, ("broker_sealed",), ("broker_sealed",), token=token)
            self._root_key()
        try:
            grant = self._gate(
                actor,
                "key.release",
                tenant,
                {"resource": resource, "principal": actor.id},
                approval=approval,
                facts={f"model.tags.{k}": v for k, v in model.tags.items()},
            )
        except ApprovalError as exc:
            code = "approval_required" if isinstance(exc, ApprovalRequiredError) else "approval_invalid"
            self._deny(actor, resource, (code,), (f"approval: {exc}"[:300],), token=token)
            raise
        if not decision.allowed:
            self._deny(actor, resource, decision.codes, decision.reasons, token=token, decision=decision)
            raise ReleaseDeniedError(f"release denied ({decision.coarse})", [decision.coarse], decision.codes)
        details: dict[str, Any] = {"jti": token.jti, "verifier": token.result.verifier}
        if token.device_id:
            details["device"] = token.device_id
        if decision.policy_digest:
            details["policy_digest"] = decision.policy_digest
        decision_event = AuditEvent(
            type="policy.decision",
            tenant=tenant,
            actor=actor.id,
            resource=resource,
            decision="allow",
            policy_version=decision.policy_version,
            evidence_digest=token.result.evidence_digest,
            details=details,
        )
        # The decision is queued, not awaited: the intent below refers to its reserved
        # index and is committed in the same or a later batch, and write_ahead waits
        # for the intent to be durable before any key is touched.
        decision_index = self._queue_event(decision_event)
        intent = decision_event.derive(
            "key.release.intent",
            decision=None,
            refs={"decision": decision_index},
            details={
                **details,
                "kem": token.kem,
                "partial": tensors is not None,
                **({"approval": grant.request.id, "approvers": list(grant.approvers)} if grant else {}),
            },
        )
        with write_ahead(self._audit, intent, wait_done=False):
            if grant is not None:
                self.approvals.consume(grant)
            sealed = self._seal_keys(model, token, resource, tensors)
        self.stats.releases += 1
        return ReleaseOutcome(resource, token.kem, sealed, token.jti, tuple(files), tensors is not None)

    def _file_key_of(self, model: ModelRow, *, refuse_retired: bool = False) -> FileKey:
        """Unwrap a model's file key: root key -> the tenant's KEK of the model's version -> file key.

        Raises:
            NotFoundError: the KEK version is missing.
            KeyAccessError: ``refuse_retired`` and the KEK version is retired (the model needs a rewrap).
        """
        wrapped_kek = self.store.kek(model.tenant_id, model.kek_version)
        if wrapped_kek is None:
            raise NotFoundError("model key-encryption key is missing")
        if refuse_retired and self.store.kek_retired(model.tenant_id, model.kek_version):
            raise KeyAccessError(f"KEK v{model.kek_version} of {model.tenant_id} is retired; rewrap the model")
        kek = unwrap_kek(self._root_key(), model.tenant_id, model.kek_version, wrapped_kek)
        return unwrap_file_key(
            kek,
            tenant=model.tenant_id,
            model=model.name,
            version=model.version,
            kek_version=model.kek_version,
            blob=model.wrapped_key,
        )

    def _seal_keys(
        self, model: ModelRow, token: ResultToken, resource: str, tensors: Mapping[str, Sequence[int]] | None
    ) -> bytes:
        file_key = self._file_key_of(model, refuse_retired=True)
        try:
            payload: dict[str, Any] = {"v": 1, "tenant": model.tenant_id, "resource": resource, "jti": token.jti}
            if tensors is None:
                payload["file_key"] = base64.b64encode(file_key.reveal()).decode()
            else:
                grants = []
                for file_id, indices in sorted(tensors.items()):
                    grant = file_key.tensor_keys(bytes.fromhex(file_id), sorted(set(indices)))
                    grants.append(
                        {
                            "file_id": file_id,
                            "header_secret": base64.b64encode(grant.header_secret()).decode(),
                            "tensors": {
                                str(i): base64.b64encode(grant.tensor_secret(i) or b"").decode() for i in grant.indices
                            },
                        }
                    )
                    grant.wipe()
                payload["grants"] = grants
            plaintext = rfc8785.dumps(payload)
            return hpke_seal(
                HPKEKem(token.kem), token.public, plaintext, release_info(model.tenant_id, resource, token.jti)
            )
        finally:
            file_key.wipe()

    # -- audit ------------------------------------------------------------------------------

    def check_audit_access(self, actor: Principal, tenant: str | None) -> None:
        if actor.role is Role.OPERATOR:
            return
        actor.require(Role.AUDITOR, Role.TENANT_ADMIN)
        if tenant != actor.tenant:
            raise PermissionDeniedError("auditors read their own tenant's events only")
