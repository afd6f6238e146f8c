"""Web console sign-ins (docs/console.md): an API token exchanged for a session, and the session's checks.

A session is 32 random bytes that live only in the browser's HttpOnly cookie; the broker
keeps their SHA-256 with the principal and the hash of the API token the session was
opened with. Every request re-checks the principal as an API call would (it exists, is
not disabled, is not held by containment) and that its token is still the one signed in
with: rotating or disabling the token ends its console sessions at once, on every replica.

The CSRF token is HMAC-SHA256(session secret, domain): it needs no storage, differs per
session, and cannot be derived without the cookie an attacker's page cannot read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from weightvault.auditlog.events import AuditEvent
from weightvault.broker.principals import Principal, PrincipalService, Role
from weightvault.broker.recording import AuditRecorder
from weightvault.broker.storage import BrokerStore, ConsoleSessionRow
from weightvault.errors import AuthenticationError, CSRFError, PermissionDeniedError, SessionEndedError

__all__ = ["CONSOLE_ROLES", "ConsoleService", "ConsoleSession", "check_csrf", "csrf_token"]

#: Who may sign in: the roles that read state. Workloads, publishers and sentinels are machines.
CONSOLE_ROLES: Final = frozenset({Role.OPERATOR, Role.TENANT_ADMIN, Role.AUDITOR, Role.APPROVER})
_CSRF_DOMAIN: Final = b"weightvault/console-csrf/v1"
_SECRET_BYTES: Final = 32
_MAX_SECRET_CHARS: Final = 64


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A new sign-in: the cookie's value (shown to no one but the browser), its CSRF token and expiry."""

    secret: str
    csrf: str
    expires_at: int
    principal: Principal

    def __repr__(self) -> str:
        return f"ConsoleSession(principal={self.principal.id!r}, expires_at={self.expires_at})"


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def csrf_token(secret: str) -> str:
    return hmac.new(secret.encode(), _CSRF_DOMAIN, hashlib.sha256).hexdigest()


def check_csrf(secret: str, token: str | None) -> None:
    """Raises CSRFError unless ``token`` is the session's CSRF token (compared in constant time)."""
    if not token or not hmac.compare_digest(csrf_token(secret).encode(), token.encode()):
        raise CSRFError("missing or wrong CSRF token")


class ConsoleService:
    def __init__(
        self,
        store: BrokerStore,
        recorder: AuditRecorder,
        principals: PrincipalService,
        now: Callable[[], int],
        *,
        session_seconds: int,
    ) -> None:
        self._store = store
        self._recorder = recorder
        self._principals = principals
        self._now = now
        self._ttl = session_seconds

    def sign_in(self, bearer: str) -> ConsoleSession:
        """Open a session for the API token's principal.

        Raises:
            AuthenticationError: the token does not authenticate (the caller records it).
            ContainedError: the principal is held.
            PermissionDeniedError: the role has no console.
        """
        who, token_hash = self._principals.credential(bearer)
        if who.role not in CONSOLE_ROLES:
            raise PermissionDeniedError(f"role {who.role.value} has no console")
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        now = self._now()
        session = ConsoleSessionRow(_hash(secret), who.id, token_hash, now, now + self._ttl)
        self._recorder.append(
            AuditEvent(
                type="console.signin",
                tenant=who.tenant or "-",
                actor=who.id,
                resource="console",
                decision="allow",
                details={"expires_at": session.expires_at},
            )
        )
        self._store.console_sessions.add(session, now=now)
        return ConsoleSession(secret, csrf_token(secret), session.expires_at, who)

    def principal(self, secret: str) -> Principal:
        """The principal of a live session.

        Raises:
            SessionEndedError: no such session (never opened, signed out), expired, or its principal's
                token changed or was disabled.
            ContainedError: the principal is held by containment.
        """
        if not secret or len(secret) > _MAX_SECRET_CHARS:
            raise SessionEndedError("no console session")
        row = self._store.console_sessions.get(_hash(secret))
        if row is None:
            raise SessionEndedError("no such console session (signed out, or never signed in)")
        if row.expires_at <= self._now():
            raise SessionEndedError("the console session expired")
        try:
            return self._principals.admit(row.principal_id, row.token_hash)
        except AuthenticationError as error:
            raise SessionEndedError("the API token this session was opened with is no longer valid") from error

    def sign_out(self, secret: str, csrf: str | None) -> None:
        """End a session (its cookie, replayed later, names no session).

        Raises:
            SessionEndedError: as :meth:`principal` (checked first: an ended session is said so).
            CSRFError: ``csrf`` is not the session's CSRF token.
        """
        who = self.principal(secret)
        check_csrf(secret, csrf)
        self._store.console_sessions.delete(_hash(secret))
        self._recorder.queue(
            AuditEvent(type="console.signout", tenant=who.tenant or "-", actor=who.id, resource="console")
        )
