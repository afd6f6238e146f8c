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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import rfc8785

from weightvault.attestation.interfaces import AttestationContext, DeviceRecord, report_data
from weightvault.attestation.policy import ReleasePolicy
from weightvault.attestation.registry import VerifierRegistry
from weightvault.auditlog.events import AuditEvent, SensitiveHasher, digest_json
from weightvault.auditlog.log import AuditSink, Receipt, write_ahead
from weightvault.broker import storage as tables
from weightvault.broker.keystore import RootKey, unwrap_file_key, unwrap_kek, wrap_file_key, wrap_kek
from weightvault.broker.storage import BrokerStore, DeviceRow, ModelRow
from weightvault.broker.tokens import ResultToken, TokenSigner
from weightvault.crypto.keywrap import HPKEKem, InvalidTag, hpke_open, hpke_seal
from weightvault.crypto.secret import random_bytes
from weightvault.errors import (
    AttestationError,
    AuthenticationError,
    ChallengeExpiredError,
    ChallengeUsedError,
    ConflictError,
    EvidenceError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PolicyViolationError,
    ReleaseDeniedError,
)
from weightvault.format.keys import FileKey
from weightvault.format.recipients import HPKEIdentity

__all__ = [
    "AttestOutcome",
    "BrokerSettings",
    "Challenge",
    "KeyBroker",
    "Principal",
    "ReleaseOutcome",
    "Role",
    "registration_info",
    "release_info",
]

_TOKEN_PREFIX: Final = "wv1_"  # noqa: S105 - the token format prefix, not a secret
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class Role(enum.Enum):
    OPERATOR = "operator"
    TENANT_ADMIN = "tenant-admin"
    PUBLISHER = "publisher"
    AUDITOR = "auditor"
    WORKLOAD = "workload"


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

    def __post_init__(self) -> None:
        if not 1 <= self.challenge_ttl_seconds <= 60:
            raise ValueError("challenges expire within 60 seconds")


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


def registration_info(tenant: str, name: str, version: str) -> bytes:
    """HPKE info binding a publisher's sealed file key to the model it registers."""
    return b"weightvault/v1 register\x00" + rfc8785.dumps({"tenant": tenant, "name": name, "version": version})


def release_info(tenant: str, resource: str, jti: str) -> bytes:
    """HPKE info binding a released payload to its tenant, model and token."""
    return b"weightvault/v1 release\x00" + rfc8785.dumps({"tenant": tenant, "resource": resource, "jti": jti})


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
        root_key: RootKey,
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

    def _now(self) -> int:
        return int(self._clock())

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
        secret = secrets.token_urlsafe(32)
        with self.store.write() as conn:
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
        self._log(
            AuditEvent(
                type="principal.change",
                tenant=tenant or "-",
                actor=actor,
                resource=f"principal:{principal_id}",
                decision="create",
                details={"role": role.value},
            )
        )
        return f"{_TOKEN_PREFIX}{principal_id}.{secret}"

    # -- tenants, principals ---------------------------------------------------------

    def create_tenant(self, actor: Principal, tenant: str) -> None:
        actor.require(Role.OPERATOR)
        _check_name(tenant, "tenant")
        kek = random_bytes(32)
        with self.store.write() as conn:
            if self.store.tenant_exists(tenant):
                raise ConflictError(f"tenant {tenant} exists")
            now = self._now()
            self.store.insert(conn, tables.tenants, {"id": tenant, "created_at": now})
            self.store.insert(
                conn,
                tables.keks,
                {"tenant_id": tenant, "version": 1, "wrapped": wrap_kek(self._root, tenant, 1, kek), "created_at": now},
            )
        self._log(
            AuditEvent(
                type="tenant.change", tenant=tenant, actor=actor.id, resource=f"tenant:{tenant}", decision="create"
            )
        )
        self._log(
            AuditEvent(
                type="key.create", tenant=tenant, actor=actor.id, resource=f"{tenant}/kek", details={"version": 1}
            )
        )

    def create_principal(self, actor: Principal, principal_id: str, tenant: str | None, role: Role) -> str:
        """Create a principal and return its API token (shown once)."""
        if actor.role is Role.OPERATOR:
            if role is not Role.OPERATOR and (tenant is None or not self.store.tenant_exists(tenant)):
                raise NotFoundError("no such tenant")
            if role is Role.OPERATOR:
                tenant = None
        else:
            actor.require(Role.TENANT_ADMIN)
            if tenant != actor.tenant:
                raise PermissionDeniedError("tenant admins create principals in their own tenant only")
            if role in (Role.OPERATOR, Role.TENANT_ADMIN):
                raise PermissionDeniedError("tenant admins cannot create operators or tenant admins")
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

        with self.store.write() as conn:
            conn.execute(
                sa.update(tables.principals).where(tables.principals.c.id == principal_id).values(disabled=True)
            )
        self._log(
            AuditEvent(
                type="principal.change",
                tenant=row.tenant_id or "-",
                actor=actor.id,
                resource=f"principal:{principal_id}",
                decision="disable",
            )
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
        status: str = "active",
    ) -> None:
        """Register a device known by a non-TPM identity (tokens, test devices); operators only."""
        actor.require(Role.OPERATOR)
        _check_name(device_id, "device id")
        for tenant in tenants:
            if not self.store.tenant_exists(tenant):
                raise NotFoundError(f"no tenant {tenant}")
        with self.store.write() as conn:
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
        for tenant in tenants or ["-"]:
            self._log(
                AuditEvent(
                    type="device.enrol",
                    tenant=tenant,
                    actor=actor.id,
                    resource=f"device:{device_id}",
                    decision=status,
                    details={"kind": kind},
                )
            )

    def set_device_tenants(self, actor: Principal, device_id: str, tenants: Sequence[str]) -> None:
        actor.require(Role.OPERATOR)
        import sqlalchemy as sa

        if self.store.device(device_id) is None:
            raise NotFoundError("no such device")
        for tenant in tenants:
            if not self.store.tenant_exists(tenant):
                raise NotFoundError(f"no tenant {tenant}")
        with self.store.write() as conn:
            conn.execute(sa.delete(tables.device_tenants).where(tables.device_tenants.c.device_id == device_id))
            self.store.insert_many(
                conn, tables.device_tenants, [{"device_id": device_id, "tenant_id": t} for t in tenants]
            )
        self._log(
            AuditEvent(
                type="device.change",
                tenant="-",
                actor=actor.id,
                resource=f"device:{device_id}",
                decision="bind",
                details={"tenants": sorted(tenants)},
            )
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
        with self.store.write() as conn:
            conn.execute(sa.update(tables.devices).where(tables.devices.c.id == device_id).values(**values))
        kind = "device.revoke" if status == "revoked" else "device.activate" if status == "active" else "device.change"
        for tenant in sorted(device.tenants) or ["-"]:
            self._log(
                AuditEvent(type=kind, tenant=tenant, actor=actor.id, resource=f"device:{device_id}", decision=status)
            )

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
        try:
            facts = verifier.enrol(ek_cert, ek_public, ak_public, self._now())
        except AttestationError as exc:
            for tenant in tenants or ["-"]:
                self._log(
                    AuditEvent(
                        type="device.enrol.fail",
                        tenant=tenant,
                        actor=actor.id,
                        resource=f"device:{device_id}",
                        decision="deny",
                        reasons=(str(exc)[:500],),
                    )
                )
            raise
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
        self.add_device(actor, device_id, "tpm", tenants, identity, status="pending")
        return blob, encrypted

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
            for tenant in sorted(device.tenants) or ["-"]:
                self._log(
                    AuditEvent(
                        type="device.enrol.fail",
                        tenant=tenant,
                        actor=actor.id,
                        resource=f"device:{device_id}",
                        decision="deny",
                        reasons=("credential_mismatch",),
                    )
                )
            raise PermissionDeniedError("the activation secret does not match: the AK is not on this EK's TPM")
        identity = {k: v for k, v in device.identity.items() if k != "credential_sha256"}
        with self.store.write() as conn:
            conn.execute(
                sa.update(tables.devices)
                .where(tables.devices.c.id == device_id)
                .values(status="active", identity=json.dumps(identity, sort_keys=True), updated_at=self._now())
            )
        for tenant in sorted(device.tenants) or ["-"]:
            self._log(
                AuditEvent(
                    type="device.activate",
                    tenant=tenant,
                    actor=actor.id,
                    resource=f"device:{device_id}",
                    decision="active",
                    details={"ak_name": str(identity.get("ak_name", ""))},
                )
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

    def put_policy(self, actor: Principal, tenant: str, name: str, document: Mapping[str, Any]) -> int:
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
        intent = AuditEvent(
            type="policy.change.intent",
            tenant=tenant,
            actor=actor.id,
            resource=f"{tenant}/policies/{name}",
            policy_version=version,
            details={"old_digest": old_digest, "new_digest": policy.digest},
        )
        with write_ahead(self._audit, intent), self.store.write() as conn:
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
        with self.store.write() as conn:
            conn.execute(
                sa.delete(tables.refsets).where(tables.refsets.c.tenant_id == tenant, tables.refsets.c.name == name)
            )
            self.store.insert(
                conn, tables.refsets, {"tenant_id": tenant, "name": name, "members": doc, "updated_at": self._now()}
            )
        self._log(
            AuditEvent(
                type="policy.change",
                tenant=tenant,
                actor=actor.id,
                resource=f"{tenant}/refsets/{name}",
                details={"old_digest": digest_json(sorted(old or [])), "new_digest": digest_json(sorted(set(items)))},
            )
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
        kek = unwrap_kek(self._root, tenant, kek_version, wrapped_kek)
        wrapped = wrap_file_key(
            kek, tenant=tenant, model=name, version=version, kek_version=kek_version, file_key=file_key
        )
        resource = f"{tenant}/models/{name}@{version}"
        with self.store.write() as conn:
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
        self._log(
            AuditEvent(
                type="model.register",
                tenant=tenant,
                actor=actor.id,
                resource=resource,
                details={"policy": policy, "files": [f["file_id"] for f in files], "kek_version": kek_version},
            )
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
        assert actor.tenant is not None
        if device_id is not None:
            device = self.store.device(device_id)
            if device is None or actor.tenant not in device.tenants:
                raise NotFoundError("no such device in this tenant")
            if device.status != "active":
                self._log(
                    AuditEvent(
                        type="challenge.issued",
                        tenant=actor.tenant,
                        actor=actor.id,
                        resource=f"device:{device_id}",
                        decision="deny",
                        reasons=(f"device_{device.status}",),
                    )
                )
                raise PermissionDeniedError("device is not active")
        challenge = Challenge(
            id=uuid.uuid4().hex,
            tenant=actor.tenant,
            nonce=random_bytes(32),
            expires_at=self._now() + self.settings.challenge_ttl_seconds,
            device_id=device_id,
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
            raise InvalidRequestError(f"unknown KEM {kem!r}") from None
        if len(public) != kem_kind.public_key_bytes:
            raise InvalidRequestError("ephemeral public key has the wrong length")
        challenge = self.store.challenge(challenge_id)
        if challenge is None or challenge.tenant_id != tenant or challenge.principal_id != actor.id:
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
        except AttestationError as exc:
            self._fail_attest(actor, challenge_id, f"{type(exc).__name__}: {exc}", evidence)
            raise
        device_id = result.device_id or challenge.device_id
        if challenge.device_id and result.device_id and result.device_id != challenge.device_id:
            self._fail_attest(actor, challenge_id, "device_mismatch", evidence)
            raise PermissionDeniedError("evidence is from another device")
        if device_id is not None:
            device = self.store.device(device_id)
            problem = self._device_problem(device, tenant)
            if problem:
                self._fail_attest(actor, challenge_id, problem, evidence)
                raise PermissionDeniedError("device is not allowed")
            if result.device_state:
                import sqlalchemy as sa

                with self.store.write() as conn:
                    conn.execute(
                        sa.update(tables.devices)
                        .where(tables.devices.c.id == device_id)
                        .values(state=json.dumps(dict(result.device_state), sort_keys=True), updated_at=now)
                    )
        from dataclasses import replace

        result = replace(result, device_id=device_id)
        token, parsed = self._signer.issue(
            tenant=tenant, principal=actor.id, result=result, kem=kem, public=public, challenge_id=challenge_id, now=now
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
        self._log(
            AuditEvent(
                type="attest.pass",
                tenant=tenant,
                actor=actor.id,
                resource=f"challenge:{challenge_id}",
                decision="pass",
                evidence_digest=result.evidence_digest,
                details={
                    "verifier": result.verifier,
                    "jti": parsed.jti,
                    **({"device": device_id} if device_id else {}),
                },
            )
        )
        self.stats.attests += 1
        released = None
        if release is not None:
            released = self._release(actor, parsed, release[0], release[1])
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
                resource=f"challenge:{challenge_id}",
                decision="fail",
                reasons=(reason[:500],),
                evidence_digest=digest,
            )
        )

    def _device_problem(self, device: DeviceRow | None, tenant: str) -> str | None:
        if device is None:
            return "device_unknown"
        if device.status != "active":
            return f"device_{device.status}"
        if tenant not in device.tenants:
            return "device_not_in_tenant"
        return None

    def release(
        self, actor: Principal, token: str, resource: str, tensors: Mapping[str, Sequence[int]] | None = None
    ) -> ReleaseOutcome:
        """Release a model's keys for a result token (see the module docstring for the order of checks).

        Raises:
            AuthenticationError: the result token is invalid, expired or revoked.
            PermissionDeniedError: the token belongs to another principal or tenant.
            NotFoundError: no such model in this tenant.
            ReleaseDeniedError: the device or the policy denies the release.
            AuditLogError: the intent could not be recorded; nothing is released.
        """
        actor.require(Role.WORKLOAD)
        try:
            parsed = self._signer.verify(token, now=self._now())
        except EvidenceError as exc:
            raise AuthenticationError(str(exc)) from None
        if self.store.token_revoked(parsed.jti):
            raise AuthenticationError("result token revoked")
        return self._release(actor, parsed, resource, tensors)

    def _release(
        self, actor: Principal, token: ResultToken, resource: str, tensors: Mapping[str, Sequence[int]] | None
    ) -> ReleaseOutcome:
        assert actor.tenant is not None
        tenant = actor.tenant
        tenant_of_resource, sep, rest = resource.partition("/models/")
        name, at, version = rest.partition("@")
        if not sep or not at:
            raise InvalidRequestError("resource is <tenant>/models/<name>@<version>")
        base: dict[str, Any] = {"tenant": tenant, "actor": actor.id, "resource": resource}
        if token.tenant != tenant or token.principal != actor.id or tenant_of_resource != tenant:
            self._log(
                AuditEvent(
                    type="policy.decision",
                    decision="deny",
                    reasons=("tenant_or_principal_mismatch",),
                    details={"jti": token.jti},
                    **base,
                )
            )
            self.stats.denied += 1
            raise PermissionDeniedError("this token may not release keys of this tenant's models")
        model = self.store.model(tenant, name, version)
        if model is None:
            raise NotFoundError("no such model")
        device = self.store.device(token.device_id) if token.device_id else None
        extra: dict[str, Any] = {
            "tenant": tenant,
            "resource": resource,
            "token.age_seconds": self._now() - token.issued_at,
            **{f"model.tags.{k}": v for k, v in model.tags.items()},
        }
        reasons: list[str] = []
        if token.device_id is not None:
            problem = self._device_problem(device, tenant)
            if problem:
                reasons.append(problem)
            if device is not None:
                extra["device.id"] = device.id
                extra["device.status"] = device.status
                extra["device.kind"] = device.kind
                attested_reset = token.result.claims.get("tpm.reset_count")
                if isinstance(attested_reset, int) and device.state.get("reset_count", attested_reset) > attested_reset:
                    # The TPM rebooted after this token's attestation: its PCRs are no longer the attested ones.
                    reasons.append("device_rebooted_since_attestation")
        policy_row = self.store.latest_policy(tenant, model.policy)
        policy_version = None
        policy_digest = None
        if policy_row is None:
            reasons.append(f"no release policy {model.policy}")
        else:
            try:
                policy = ReleasePolicy.parse(tenant, policy_row.name, policy_row.version, policy_row.document)
            except PolicyViolationError as exc:
                reasons.append(f"stored policy invalid: {exc}")
            else:
                decision = policy.evaluate(token.result, resource, extra, self.store.refsets(tenant))
                reasons.extend(decision.failed)
                policy_version = decision.version
                policy_digest = decision.digest
        allowed = not reasons
        details: dict[str, Any] = {"jti": token.jti, "verifier": token.result.verifier}
        if token.device_id:
            details["device"] = token.device_id
        if policy_digest:
            details["policy_digest"] = policy_digest
        decision_event = AuditEvent(
            type="policy.decision",
            decision="allow" if allowed else "deny",
            reasons=tuple(r[:300] for r in reasons),
            policy_version=policy_version,
            evidence_digest=token.result.evidence_digest,
            details=details,
            **base,
        )
        if not allowed:
            self._log(decision_event)
            self.stats.denied += 1
            coarse = "device" if any(r.startswith("device_") for r in reasons) else "policy"
            raise ReleaseDeniedError(f"release denied ({coarse})", [coarse])
        # The decision is queued, not awaited: the intent below refers to its reserved
        # index and is committed in the same or a later batch, and write_ahead waits
        # for the intent to be durable before any key is touched.
        decision_index = self._queue_event(decision_event)
        files = [f["file_id"] for f in model.files]
        if tensors is not None:
            unknown = set(tensors) - set(files)
            indices: list[object] = [i for ix in tensors.values() for i in ix]  # typed, but arrives from JSON
            if unknown or not tensors or any(not isinstance(i, int) or not 0 <= i <= 1_000_000 for i in indices):
                raise InvalidRequestError("tensors maps file ids of this model to tensor indices")
        intent = AuditEvent(
            type="key.release.intent",
            refs={"decision": decision_index},
            policy_version=policy_version,
            evidence_digest=token.result.evidence_digest,
            details={**details, "kem": token.kem, "partial": tensors is not None},
            **base,
        )
        with write_ahead(self._audit, intent, wait_done=False):
            sealed = self._seal_keys(model, token, resource, tensors)
        self.stats.releases += 1
        return ReleaseOutcome(resource, token.kem, sealed, token.jti, tuple(files), tensors is not None)

    def _seal_keys(
        self, model: ModelRow, token: ResultToken, resource: str, tensors: Mapping[str, Sequence[int]] | None
    ) -> bytes:
        wrapped_kek = self.store.kek(model.tenant_id, model.kek_version)
        if wrapped_kek is None:
            raise NotFoundError("model key-encryption key is missing")
        kek = unwrap_kek(self._root, model.tenant_id, model.kek_version, wrapped_kek)
        file_key = unwrap_file_key(
            kek,
            tenant=model.tenant_id,
            model=model.name,
            version=model.version,
            kek_version=model.kek_version,
            blob=model.wrapped_key,
        )
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
