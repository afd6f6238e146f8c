"""Tenants and principals: who may call the broker, and the namespaces they act in.

API tokens are ``wv1_<principal>.<secret>``; the broker stores SHA-256 of the secret
and compares in constant time, also for unknown principals, so timing does not tell
which ids exist. A token may carry an expiry (``expires_at``): past it, the right secret
gets :class:`~weightvault.errors.TokenExpiredError` (only after the secret matched, so
expiry tells a guesser nothing), and only a rotation gives the principal a working
token. Who may create or disable whom is decided by the facade
(:class:`weightvault.broker.service.KeyBroker`); this service performs the changes,
each under its write-ahead intent.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from weightvault.auditlog.events import AuditEvent
from weightvault.broker.keyring import Keyring
from weightvault.broker.names import check_name
from weightvault.broker.recording import AuditRecorder
from weightvault.broker.storage import BrokerStore, PrincipalRow
from weightvault.errors import (
    AuthenticationError,
    ConflictError,
    ContainedError,
    PermissionDeniedError,
    TokenExpiredError,
)

__all__ = ["TOKEN_PREFIX", "Principal", "PrincipalService", "Role"]

TOKEN_PREFIX: Final = "wv1_"  # noqa: S105 - the token format prefix, not a secret
_MAX_TOKEN_CHARS: Final = 256


class Role(enum.Enum):
    OPERATOR = "operator"
    TENANT_ADMIN = "tenant-admin"
    PUBLISHER = "publisher"
    AUDITOR = "auditor"
    WORKLOAD = "workload"
    APPROVER = "approver"
    SENTINEL = "sentinel"


#: Roles that belong to no tenant.
GLOBAL_ROLES: Final = frozenset({Role.OPERATOR, Role.APPROVER, Role.SENTINEL})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

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


def _hash_token(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _intent(actor: str, principal_id: str, tenant: str | None, **details: str | int | None) -> AuditEvent:
    """The write-ahead intent of a change to a principal (``details``: at least its ``op``)."""
    return AuditEvent(
        type="principal.change.intent",
        tenant=tenant or "-",
        actor=actor,
        resource=f"principal:{principal_id}",
        details={k: v for k, v in details.items() if v is not None},
    )


class PrincipalService:
    def __init__(
        self, store: BrokerStore, recorder: AuditRecorder, now: Callable[[], int], *, keyring: Keyring
    ) -> None:
        self._store = store
        self._recorder = recorder
        self._keyring = keyring
        self._now = now

    def authenticate(self, bearer: str | None) -> Principal:
        """Resolve an API token ``wv1_<principal>.<secret>``.

        Raises:
            AuthenticationError: missing, malformed, unknown, wrong or disabled.
            ContainedError: the principal is held by containment.
        """
        return self.credential(bearer)[0]

    def credential(self, bearer: str | None) -> tuple[Principal, bytes]:
        """:meth:`authenticate`, and the hash of the token that authenticated (what a console session
        is bound to, so that rotating or disabling the token ends the session: :meth:`admit`)."""
        if not bearer or not bearer.startswith(TOKEN_PREFIX) or "." not in bearer or len(bearer) > _MAX_TOKEN_CHARS:
            raise AuthenticationError("missing or malformed API token")
        principal_id, _, secret = bearer[len(TOKEN_PREFIX) :].partition(".")
        row = self._store.principals.by_id(principal_id)
        # Compare even for unknown principals so timing does not reveal which ids exist.
        presented = _hash_token(secret)
        ok = hmac.compare_digest(row.token_hash if row is not None else bytes(32), presented)
        if row is None or not ok:
            raise AuthenticationError("invalid API token")
        return self._admitted(row), presented

    def admit(self, principal_id: str, token_hash: bytes) -> Principal:
        """The principal again, for a credential checked earlier (a console session's): only while its
        token is still the one with ``token_hash`` and the checks of :meth:`authenticate` still pass.

        Raises:
            AuthenticationError: the principal is gone, or its token was rotated or disabled.
            ContainedError: the principal is held by containment.
        """
        row = self._store.principals.by_id(principal_id)
        if row is None or not hmac.compare_digest(row.token_hash, token_hash):
            raise AuthenticationError("the API token was rotated, or its principal removed")
        return self._admitted(row)

    def _admitted(self, row: PrincipalRow) -> Principal:
        """The one place that decides whether an authenticated principal may act now."""
        if row.disabled:
            raise AuthenticationError("invalid API token")
        if row.expires_at is not None and self._now() >= row.expires_at:
            raise TokenExpiredError(f"the API token of {row.id} expired")
        # A containment hold stops the principal at once, on every replica, until an operator lifts it.
        if self._store.holds.active("principal", row.id) is not None:
            raise ContainedError(f"principal {row.id} is held by containment")
        return Principal(row.id, row.tenant_id, Role(row.role))

    def get(self, principal_id: str) -> PrincipalRow | None:
        return self._store.principals.by_id(principal_id)

    def list_for(self, tenant: str | None) -> list[PrincipalRow]:
        return self._store.principals.list_for(tenant)

    def bootstrap_operator(self, principal_id: str = "operator") -> str:
        """Create the first operator if there is none; returns its API token (shown once)."""
        if self._store.principals.any_with_role(Role.OPERATOR.value):
            raise ConflictError("an operator already exists")
        return self.create("bootstrap", principal_id, None, Role.OPERATOR)

    def create(
        self, actor: str, principal_id: str, tenant: str | None, role: Role, *, lifetime_s: int | None = None
    ) -> str:
        """Create a principal; returns its API token, which is shown once and stored only hashed.
        ``lifetime_s``: how long the token works from now; None, for ever."""
        check_name(principal_id, "principal id")
        if self._store.principals.by_id(principal_id) is not None:
            raise ConflictError(f"principal {principal_id} exists")
        secret = secrets.token_urlsafe(32)
        expires_at = None if lifetime_s is None else self._now() + lifetime_s
        intent = _intent(actor, principal_id, tenant, op="create", role=role.value, expires_at=expires_at)
        with self._recorder.write_ahead(intent):
            row = PrincipalRow(principal_id, tenant, role.value, _hash_token(secret), False, expires_at)
            self._store.principals.create(row, self._now())
        return f"{TOKEN_PREFIX}{principal_id}.{secret}"

    def disable(self, actor: str, principal: PrincipalRow) -> None:
        """Disable a principal: its token stops authenticating at once."""
        with self._recorder.write_ahead(_intent(actor, principal.id, principal.tenant_id, op="disable")):
            self._store.principals.disable(principal.id)

    def rotate(self, actor: str, principal: PrincipalRow, *, lifetime_s: int | None = None) -> str:
        """Give a principal a new API token (shown once), working for ``lifetime_s`` from now (None:
        for ever): the old one, and the console sessions opened with it, stop working at once.

        Raises:
            ConflictError: the principal is disabled (rotation does not re-enable it).
        """
        if principal.disabled:
            raise ConflictError(f"principal {principal.id} is disabled")
        secret = secrets.token_urlsafe(32)
        expires_at = None if lifetime_s is None else self._now() + lifetime_s
        intent = _intent(actor, principal.id, principal.tenant_id, op="rotate-token", expires_at=expires_at)
        with self._recorder.write_ahead(intent):
            # Compare and swap: of two rotations at once, one fails rather than hand out a dead token.
            new_hash = _hash_token(secret)
            if not self._store.principals.replace_token(principal.id, principal.token_hash, new_hash, expires_at):
                raise ConflictError(f"principal {principal.id} was disabled, removed or rotated meanwhile")
        return f"{TOKEN_PREFIX}{principal.id}.{secret}"

    # -- tenants ----------------------------------------------------------------------------------

    def tenant_exists(self, tenant: str) -> bool:
        return self._store.tenants.exists(tenant)

    def tenants(self) -> list[str]:
        return self._store.tenants.names()

    def create_tenant(self, actor: str, tenant: str) -> None:
        """Create a tenant with version 1 of its key-encryption key (needs the root key)."""
        check_name(tenant, "tenant")
        if self._store.tenants.exists(tenant):
            raise ConflictError(f"tenant {tenant} exists")
        wrapped = self._keyring.new_kek(tenant, 1)
        intent = AuditEvent(
            type="tenant.change.intent",
            tenant=tenant,
            actor=actor,
            resource=f"tenant:{tenant}",
            details={"op": "create", "kek_version": 1},
        )
        with self._recorder.write_ahead(intent):
            self._store.tenants.create(tenant, wrapped, self._now())
