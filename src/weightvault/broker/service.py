"""The key broker facade: every call is authorised here, then handed to the service that does the job.

Services, each over the same store, audit recorder and clock:
:class:`~weightvault.broker.principals.PrincipalService` (tenants, principals, API tokens),
:class:`~weightvault.broker.devices.DeviceService` (devices, TPM enrolment),
:class:`~weightvault.broker.catalogue.CatalogueService` (policies, reference sets, models),
:class:`~weightvault.broker.rotation.RotationService` (KEKs, token keys, export),
:class:`~weightvault.broker.release.ReleaseService` (challenge, attest, release),
:class:`~weightvault.broker.approvals.ApprovalService` and
:class:`~weightvault.broker.custody.CustodyService`. Reads are authorised like
writes: no caller sees another tenant's objects. The HTTP layer only parses and
serialises; it makes no decision of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from weightvault.attestation.registry import VerifierRegistry
from weightvault.auditlog.checkpoint import Checkpoint
from weightvault.auditlog.events import AuditEvent, SensitiveHasher, decode_event
from weightvault.auditlog.log import AuditSink, LogReader
from weightvault.auditlog.tiles import tile_resource
from weightvault.broker.approvals import ApprovalService
from weightvault.broker.catalogue import CatalogueService
from weightvault.broker.config import DEFAULTS, BrokerConfig
from weightvault.broker.console import ConsoleService, ConsoleSession
from weightvault.broker.containment import ContainmentService
from weightvault.broker.custody import CustodyService
from weightvault.broker.devices import DeviceService
from weightvault.broker.keyring import Keyring
from weightvault.broker.keystore import RootKey
from weightvault.broker.principals import GLOBAL_ROLES, Principal, PrincipalService, Role
from weightvault.broker.recording import AuditRecorder
from weightvault.broker.release import AttestOutcome, Challenge, ReleaseOutcome, ReleaseService
from weightvault.broker.reports import ReportService
from weightvault.broker.rotation import RotationService
from weightvault.broker.storage import BrokerStore, DeviceRow, HoldRow, ModelRow, PolicyRow, PrincipalRow
from weightvault.broker.storage.database import libpq_conninfo
from weightvault.broker.tokens import TokenSigner
from weightvault.custody.approvals import ApprovalRequest
from weightvault.errors import ConflictError, InvalidRequestError, NotFoundError, PermissionDeniedError
from weightvault.format.recipients import HPKEIdentity

__all__ = [
    "AttestOutcome",
    "BrokerServices",
    "Challenge",
    "ConsoleSession",
    "DeviceRow",
    "Health",
    "KeyBroker",
    "ModelRow",
    "PolicyRow",
    "Principal",
    "PrincipalRow",
    "ReleaseOutcome",
    "Role",
    "libpq_conninfo",
    "open_broker",
]

_ADMINS = (Role.OPERATOR, Role.TENANT_ADMIN)


@dataclass(frozen=True, slots=True)
class Health:
    """What ``GET /v1/health/ready`` reports."""

    ready: bool
    sealed: bool
    problems: tuple[str, ...]


def _tenant_scope(actor: Principal, wanted: str | None, *roles: Role) -> str | None:
    """The tenant whose objects ``actor`` may list: any (or all, None) for operators, else its own."""
    if actor.role is Role.OPERATOR:
        return wanted
    actor.require(*roles)
    return actor.tenant


#: The longest lifetime a caller may ask for a token when its role has no maximum: ten years.
_LONGEST_TOKEN_S: Final = 10 * 365 * 86400


def _in_tenant(actor: Principal, tenant: str, *roles: Role) -> None:
    """``actor`` has one of ``roles`` (any role when none is given) and acts in ``tenant`` (operators: any)."""
    if roles:
        actor.require(*roles)
    actor.require_tenant(tenant)


class KeyBroker:
    """Thread-safe; HTTP-free."""

    def __init__(self, services: BrokerServices) -> None:
        self.services = services
        self.store, self.recorder, self.keyring = services.store, services.recorder, services.keyring
        self.config, self.reader = services.config, services.reader
        self.approvals, self.custody, self.principals = services.approvals, services.custody, services.principals
        self.devices, self.catalogue = services.devices, services.catalogue
        self.rotation, self.releases = services.rotation, services.releases
        self.reports = services.reports
        self.containment = services.containment
        self.console = services.console

    # -- state, health, public keys ---------------------------------------------------------------

    def close(self) -> None:
        """Release the database; wipe the root key and open ceremonies."""
        self.custody.wipe()
        self.keyring.wipe()
        self.store.close()

    @property
    def sealed(self) -> bool:
        """A sealed broker holds no root key: it serves custody ceremonies and nothing that needs keys."""
        return self.keyring.sealed

    @property
    def registration_key(self) -> HPKEIdentity:
        return self.catalogue.registration_key

    def health(self) -> Health:
        """Readiness: the database answers and the audit log can still commit (it fails closed for good).

        A sealed broker is ready: it must stay reachable for the custodians who unseal it.
        """
        problems = [p for p in (self.store.ping(),) if p is not None]
        if self.recorder.failed is not None:
            problems.append(f"audit log failed: {self.recorder.failed}")
        return Health(not problems, self.sealed, tuple(problems))

    def token_keys(self) -> dict[str, bytes]:
        """Public keys that verify result tokens (kid -> raw Ed25519)."""
        return self.keyring.signer.public_keys()

    # -- reports from sandboxes and the gateway ----------------------------------------------------

    def report_events(self, actor: Principal, reports: Sequence[object]) -> int:
        """A sandbox's reports (``egress.blocked``, ``sandbox.start``/``exit``), in the workload's tenant."""
        actor.require(Role.WORKLOAD)
        assert actor.tenant is not None  # workloads always belong to a tenant
        return self.reports.report(actor.id, actor.tenant, reports)

    @property
    def shares_state(self) -> bool:
        """Whether replicas may share this broker's database (PostgreSQL): then rate limits live there."""
        return self.store.db.shared

    def take_rate(self, key: str, rate: float, burst: int) -> bool:
        """Take one request from the shared token bucket ``key``; False when it is empty."""
        return self.store.rate_limits.take(key, rate, burst)

    @property
    def runs_singleton_jobs(self) -> bool:
        """Whether this process runs the once-per-deployment jobs (outbox, scheduled rotation): the
        audit log's sequencer among replicas, or the only broker."""
        return bool(getattr(self.recorder.sink, "is_sequencer", True))

    def drain_outbox(self) -> int:
        """Append what the gateway left in the outbox (the broker's own background task calls this)."""
        return self.reports.drain_outbox()

    # -- principals and tenants -------------------------------------------------------------------

    def authenticate(self, bearer: str | None) -> Principal:
        return self.principals.authenticate(bearer)

    def bootstrap_operator(self, principal_id: str = "operator") -> str:
        return self.principals.bootstrap_operator(principal_id)

    def create_tenant(self, actor: Principal, tenant: str) -> None:
        actor.require(Role.OPERATOR)
        self.principals.create_tenant(actor.id, tenant)

    def list_tenants(self, actor: Principal) -> list[str]:
        actor.require(Role.OPERATOR)
        return self.principals.tenants()

    def create_principal(
        self,
        actor: Principal,
        principal_id: str,
        tenant: str | None,
        role: Role | str,
        *,
        expires_in: int | None = None,
    ) -> str:
        """Create a principal and return its API token (shown once); see :meth:`_token_lifetime` for
        ``expires_in``."""
        try:
            role = Role(role)
        except ValueError as exc:
            raise InvalidRequestError(f"unknown role {role!r}") from exc
        if actor.role is Role.OPERATOR:
            if role in GLOBAL_ROLES:
                tenant = None
            elif tenant is None or not self.principals.tenant_exists(tenant):
                raise NotFoundError("no such tenant")
        else:
            actor.require(Role.TENANT_ADMIN)
            if tenant != actor.tenant:
                raise PermissionDeniedError("tenant admins create principals in their own tenant only")
            if role in (Role.OPERATOR, Role.TENANT_ADMIN, Role.APPROVER):
                raise PermissionDeniedError("tenant admins cannot create operators, tenant admins or approvers")
        lifetime = self._token_lifetime(role, expires_in)
        return self.principals.create(actor.id, principal_id, tenant, role, lifetime_s=lifetime)

    def disable_principal(self, actor: Principal, principal_id: str) -> None:
        self.principals.disable(actor.id, self._managed_principal(actor, principal_id))

    def rotate_principal_token(self, actor: Principal, principal_id: str, *, expires_in: int | None = None) -> str:
        """A new API token for a principal (shown once); the old one stops at once. The new one
        expires as :meth:`_token_lifetime` says, counted from now.

        Every principal may rotate its own. Otherwise the caller would hold the other's credential:
        operators may do that for machines, tenant principals and sentinels, tenant admins for what
        they may disable, but nobody for another operator or an approver (people acting on their own
        authority: the way to stop theirs is to disable them).
        """
        if principal_id == actor.id:
            row = self.principals.get(principal_id)
            if row is None:
                raise NotFoundError("no such principal")
        else:
            row = self._managed_principal(actor, principal_id)
            if Role(row.role) in (Role.OPERATOR, Role.APPROVER):
                raise PermissionDeniedError("operators and approvers rotate their own tokens; disable theirs instead")
        lifetime = self._token_lifetime(Role(row.role), expires_in)
        return self.principals.rotate(actor.id, row, lifetime_s=lifetime)

    def token_expires_at(self, principal_id: str) -> int | None:
        """When a principal's current token expires (Unix seconds; None: never, or no such principal):
        for the answer to whoever just issued it, and to the principal itself (``GET /v1/whoami``)."""
        row = self.principals.get(principal_id)
        return None if row is None else row.expires_at

    def _token_lifetime(self, role: Role, expires_in: int | None) -> int | None:
        """How long a token issued now to a principal of ``role`` lives (seconds; None: for ever).

        ``expires_in`` (seconds) may shorten the role's ``[principals] token_max_age_days``, never
        lengthen it. Operators' tokens never expire: nothing could renew the last operator's.

        Raises:
            InvalidRequestError: ``expires_in`` for an operator, not positive, or beyond the maximum.
        """
        days = self.config.token_max_age_days.get(role.value)
        longest = None if days is None else max(1, int(days * 86400))
        if expires_in is None:
            return longest
        if role is Role.OPERATOR:
            raise InvalidRequestError("operator tokens do not expire (nothing could renew the last one)")
        limit = longest or _LONGEST_TOKEN_S
        if not 0 < expires_in <= limit:
            raise InvalidRequestError(f"expires_in is from 1 to {limit} seconds for role {role.value}")
        return expires_in

    def _managed_principal(self, actor: Principal, principal_id: str) -> PrincipalRow:
        """A principal ``actor`` may disable or re-key: operators any; tenant admins their tenant's
        publishers, auditors and workloads.

        Raises:
            PermissionDeniedError: the actor is neither.
            NotFoundError: no such principal, or one the tenant admin may not touch (it cannot see those).
        """
        row = self.principals.get(principal_id)
        if row is not None and actor.role is not Role.OPERATOR:
            actor.require(Role.TENANT_ADMIN)
            if row.tenant_id != actor.tenant or Role(row.role) in (Role.OPERATOR, Role.TENANT_ADMIN):
                row = None  # what a tenant admin may not touch, it cannot see either
        if row is None:
            raise NotFoundError("no such principal")
        return row

    def list_principals(self, actor: Principal, tenant: str | None) -> list[PrincipalRow]:
        scope = _tenant_scope(actor, tenant, Role.TENANT_ADMIN)
        self._read(actor, scope, "principals")
        return self.principals.list_for(scope)

    # -- devices ----------------------------------------------------------------------------------

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
        """Register a device known by a non-TPM identity (operators); TPM devices enrol instead."""
        actor.require(Role.OPERATOR)
        self.devices.add(actor.id, device_id, kind, tenants, identity, approval=approval)

    def enrol_tpm_device(
        self, actor: Principal, device_id: str, tenants: Sequence[str], *, approval: str | None = None, **keys: bytes
    ) -> tuple[bytes, bytes]:
        """TPM enrolment step 1 (operators): ``ek_cert``, ``ek_public``, ``ak_public``."""
        actor.require(Role.OPERATOR)
        return self.devices.enrol_tpm(actor.id, device_id, tenants, approval=approval, **keys)

    def activate_tpm_device(self, actor: Principal, device_id: str, secret: bytes) -> None:
        actor.require(Role.OPERATOR)
        self.devices.activate_tpm(actor.id, device_id, secret)

    def set_device_tenants(self, actor: Principal, device_id: str, tenants: Sequence[str]) -> None:
        actor.require(Role.OPERATOR)
        self.devices.bind(actor.id, device_id, tenants)

    def set_device_status(self, actor: Principal, device_id: str, status: str) -> None:
        actor.require(Role.OPERATOR)
        self.devices.set_status(actor.id, device_id, status)

    def list_devices(self, actor: Principal, tenant: str | None) -> list[DeviceRow]:
        scope = _tenant_scope(actor, tenant, Role.TENANT_ADMIN, Role.AUDITOR)
        self._read(actor, scope, "devices")
        return self.devices.list_for(scope)

    # -- catalogue --------------------------------------------------------------------------------

    def put_policy(
        self, actor: Principal, tenant: str, name: str, document: Mapping[str, Any], approval: str | None = None
    ) -> int:
        _in_tenant(actor, tenant, *_ADMINS)
        return self.catalogue.put_policy(actor.id, tenant, name, document, approval=approval)

    def list_policies(self, actor: Principal, tenant: str) -> list[PolicyRow]:
        _in_tenant(actor, tenant, *_ADMINS, Role.AUDITOR, Role.PUBLISHER)
        self._read(actor, tenant, "policies")
        return self.catalogue.policies(tenant)

    def put_refset(self, actor: Principal, tenant: str, name: str, items: Sequence[str]) -> None:
        _in_tenant(actor, tenant, *_ADMINS)
        self.catalogue.put_refset(actor.id, tenant, name, items)

    def list_refsets(self, actor: Principal, tenant: str) -> dict[str, frozenset[str]]:
        _in_tenant(actor, tenant, *_ADMINS, Role.AUDITOR)
        self._read(actor, tenant, "refsets")
        return self.catalogue.refsets(tenant)

    def register_model(self, actor: Principal, tenant: str, name: str, version: str, **kw: Any) -> str:
        """Register a model with its file key (``policy``, ``file_key``, ``files``, ``tags``)."""
        _in_tenant(actor, tenant, *_ADMINS, Role.PUBLISHER)
        return self.catalogue.register_model(actor.id, tenant, name, version, **kw)

    def register_sealed_model(self, actor: Principal, tenant: str, name: str, version: str, **kw: Any) -> str:
        """Register a model whose file key is sealed to the registration key (``kem``, ``sealed_key``, ...)."""
        _in_tenant(actor, tenant, *_ADMINS, Role.PUBLISHER)
        return self.catalogue.register_sealed_model(actor.id, tenant, name, version, **kw)

    def model(self, actor: Principal, tenant: str, name: str, version: str) -> ModelRow:
        _in_tenant(actor, tenant)
        return self.catalogue.model(tenant, name, version)

    def list_models(self, actor: Principal, tenant: str) -> list[ModelRow]:
        actor.require_tenant(tenant)
        self._read(actor, tenant, "models")
        return self.catalogue.models(tenant)

    # -- keys ---------------------------------------------------------------------------------------

    def rotate_kek(self, actor: Principal, tenant: str, approval: str | None = None) -> int:
        _in_tenant(actor, tenant, *_ADMINS)
        return self.rotation.rotate_kek(actor.id, tenant, approval=approval)

    def rewrap_models(self, actor: Principal, tenant: str) -> list[str]:
        _in_tenant(actor, tenant, *_ADMINS)
        return self.rotation.rewrap_models(actor.id, tenant)

    def retire_kek(self, actor: Principal, tenant: str, version: int) -> None:
        _in_tenant(actor, tenant, *_ADMINS)
        self.rotation.retire_kek(actor.id, tenant, version)

    def rotate_token_key(self, actor: Principal, approval: str | None = None) -> str:
        actor.require(Role.OPERATOR)
        return self.rotation.rotate_token_key(actor.id, approval=approval)

    def rotate_due(self) -> list[str]:
        """Scheduled rotation (the scheduler acts as itself, without approvals: rotation only adds protection)."""
        return self.rotation.rotate_due()

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
        """Export a model's file key HPKE-sealed to ``public``; always needs approval."""
        _in_tenant(actor, tenant, *_ADMINS)
        model = self.catalogue.model(tenant, name, version)
        facts = self.catalogue.facts(tenant, {"resource": model.resource})
        return self.rotation.export_key(actor.id, model, kem=kem, public=public, approval=approval, facts=facts)

    # -- the protocol -------------------------------------------------------------------------------

    def issue_challenge(self, actor: Principal, device_id: str | None = None) -> Challenge:
        actor.require(Role.WORKLOAD)
        return self.releases.issue_challenge(actor, device_id)

    def challenge_hints(self, challenge: Challenge) -> dict[str, Any]:
        return self.devices.challenge_hints(challenge.tenant, challenge.device_id)

    def attest(
        self, actor: Principal, challenge_id: str, kem: str, public: bytes, evidence: Any, **kw: Any
    ) -> AttestOutcome:
        """Attest (``release``=(resource, tensors) and ``approval`` for a one-shot release)."""
        actor.require(Role.WORKLOAD)
        return self.releases.attest(actor, challenge_id, kem, public, evidence, **kw)

    def release(
        self, actor: Principal, token: str, resource: str, tensors: Any = None, approval: str | None = None
    ) -> ReleaseOutcome:
        actor.require(Role.WORKLOAD)
        return self.releases.release(actor, token, resource, tensors, approval)

    # -- approvals ----------------------------------------------------------------------------------

    def put_approval_policy(self, actor: Principal, document: object, approval: str | None = None) -> int:
        actor.require(Role.OPERATOR)
        return self.approvals.put_policy(actor.id, document, approval=approval)

    def approval_policy(self, actor: Principal) -> tuple[int, dict[str, Any]]:
        actor.require(Role.OPERATOR, Role.APPROVER, Role.AUDITOR)
        current = self.store.approvals.policy()
        if current is None:
            raise NotFoundError("no approval policy")
        self._read(actor, None, "approval-policy")
        return current

    def request_approval(
        self, actor: Principal, op: str, tenant: str, params: Mapping[str, Any]
    ) -> tuple[ApprovalRequest, str]:
        """Open an approval request directly (for clients that build the parameters themselves)."""
        actor.require_tenant(tenant)
        return self.approvals.create_request(actor.id, op, tenant, params, self.catalogue.facts(tenant, params))

    def submit_approval(
        self, actor: Principal, request_id: str, decision: str, expires_at: int, signature: bytes
    ) -> Any:
        actor.require(Role.APPROVER)
        request, _ = self.approvals.request(request_id)
        facts = self.catalogue.facts(request.tenant, request.params)
        return self.approvals.submit(
            actor.id,
            request_id,
            approver=actor.id,
            decision=decision,
            expires_at=expires_at,
            signature=signature,
            facts=facts,
        )

    def approval_requests(self, actor: Principal, tenant: str | None, status: str | None) -> list[dict[str, Any]]:
        """Requests an actor may read: approvers and operators all (or one tenant's), others their tenant's."""
        scope = tenant if actor.role in (Role.OPERATOR, Role.APPROVER) else actor.tenant
        rows = self.store.approvals.requests(scope, status)
        return [self._view(ApprovalRequest.from_json(r.document), r.status) for r in rows]

    def approval_request(self, actor: Principal, request_id: str) -> dict[str, Any]:
        request, status = self.approvals.request(request_id)
        if actor.role is Role.AUDITOR and request.tenant != actor.tenant:
            raise PermissionDeniedError("auditors read their own tenant's requests only")
        if actor.role not in (Role.OPERATOR, Role.APPROVER, Role.AUDITOR) and request.tenant != actor.tenant:
            raise NotFoundError("no such approval request")
        return self._view(request, status)

    def _view(self, request: ApprovalRequest, status: str) -> dict[str, Any]:
        return self.approvals.view(request, status, self.catalogue.facts(request.tenant, request.params))

    # -- custody ------------------------------------------------------------------------------------

    def seal(self, actor: Principal) -> None:
        """Wipe the root key from memory; any single operator may do this (break glass)."""
        actor.require(Role.OPERATOR)
        if self.custody.share_set("active") is None:
            raise ConflictError("this broker's root key comes from a key file: set up custody before sealing")
        self.keyring.wipe()
        self.custody.record_seal(actor.id)

    def custody_genesis(self, actor: str, root: RootKey | None, threshold: int, custodians: Sequence[Any]) -> Any:
        """Split the root key to custodians: ``root`` for a new broker, None for this broker's current key."""
        key = root if root is not None else self.keyring.root()
        share_set = self.custody.genesis(actor, key.reveal(), threshold, custodians)
        if self.sealed:
            self.keyring.install(key.reveal())
        return share_set

    def open_ceremony(self, actor: Principal, kind: str, *, approval: str | None = None, **kw: Any) -> Any:
        """Open a custody ceremony (operators); a rekey also needs the ``custody.rekey`` approval."""
        actor.require(Role.OPERATOR)
        grant = None
        if kind == "rekey":
            grant = self.approvals.gate(actor.id, "custody.rekey", "-", dict(kw.get("params") or {}), approval=approval)
        with self.approvals.execute(grant, actor.id, "custody"):
            return self.custody.open(actor.id, kind, **kw)

    def custody_status(self, actor: Principal) -> dict[str, Any]:
        actor.require(Role.OPERATOR)
        self._read(actor, None, "custody")
        return self.custody.status()

    # -- audit ----------------------------------------------------------------------------------------

    def check_audit_access(self, actor: Principal, tenant: str | None) -> None:
        if actor.role is not Role.OPERATOR:
            actor.require(Role.AUDITOR, Role.TENANT_ADMIN)
            if tenant != actor.tenant:
                raise PermissionDeniedError("auditors read their own tenant's events only")

    def audit_events(
        self, actor: Principal, tenant: str, *, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[dict[str, Any]]:
        """A tenant's audit events in a time range, as JSON (at most ``limit``)."""
        self.check_audit_access(actor, tenant)
        if self.reader is None:
            raise NotFoundError("this broker has no audit log reader")
        self._read(actor, tenant, "audit")
        out = []
        for index, event in self.reader.events(tenant=tenant, since_ms=since_ms, until_ms=until_ms):
            out.append({"index": index, **event.to_json()})
            if len(out) >= limit:
                break
        return out

    def recent_events(
        self, actor: Principal, tenant: str, *, before: int | None, type_prefix: str | None, limit: int
    ) -> list[tuple[int, AuditEvent]]:
        """A tenant's events below index ``before``, newest first (the console's lists): its auditors,
        admins and operators."""
        self.check_audit_access(actor, tenant)
        if self.reader is None:
            raise NotFoundError("this broker has no audit log reader")
        self._read(actor, tenant, "audit")
        return self.reader.recent(before=before, tenant=tenant, type_prefix=type_prefix, limit=limit)

    def audit_proof(self, actor: Principal, tenant: str, index: int) -> dict[str, Any]:
        """One of a tenant's entries with its inclusion proof and the checkpoint it is proved against,
        so that the caller checks them itself (the console does, in the browser)."""
        self.check_audit_access(actor, tenant)
        if self.reader is None:
            raise NotFoundError("this broker has no audit log reader")
        if not 0 <= index < self.reader.size:
            raise NotFoundError(f"no entry {index}")
        entry = self.reader.entry(index)  # read once: its tenant is checked, then it is what is proved
        if decode_event(entry).tenant != tenant:
            raise NotFoundError(f"no entry {index} in tenant {tenant}")
        # Proofs are against the served checkpoint, which lags the head while witnesses have not yet
        # cosigned one that covers the newest entries: say so, rather than fail as if the log were broken.
        checkpoint = self.reader.served_checkpoint()
        size = Checkpoint.from_text(checkpoint.text).size
        if index >= size:
            raise ConflictError(
                f"entry {index} is not yet in a published checkpoint (it covers {size} entries); "
                "retry once the witnesses have cosigned a newer one"
            )
        return {
            "index": index,
            "entry": entry,
            "proof": self.reader.inclusion_proof(index, size),
            "checkpoint": checkpoint.to_text(),
        }

    # -- the web console's sessions (docs/console.md) --------------------------------------------------

    def console_sign_in(self, bearer: str) -> ConsoleSession:
        return self.console.sign_in(bearer)

    def console_principal(self, secret: str) -> Principal:
        return self.console.principal(secret)

    def console_sign_out(self, secret: str, csrf: str | None) -> None:
        self.console.sign_out(secret, csrf)

    def audit_resource(self, actor: Principal, path: str) -> tuple[int, bytes, str]:
        """A tlog-tiles resource of the whole log (operators and sentinels): status, body, content type."""
        actor.require(Role.OPERATOR, Role.SENTINEL)
        if self.reader is None:
            raise NotFoundError("this broker has no audit log reader")
        return tile_resource(self.reader, path)

    # -- detection and containment (docs/sentinel.md) -------------------------------------------------

    def record_alert(self, actor: Principal, alert: Mapping[str, Any]) -> int:
        """A sentinel's alert, appended as ``sentinel.alert``; returns its log index."""
        actor.require(Role.SENTINEL)
        return self.containment.record_alert(actor.id, alert)

    def sentinel_alerts(
        self, actor: Principal, tenant: str | None, *, since_index: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Alerts from the log: all for operators and sentinels, one tenant's for its auditors and admins."""
        if actor.role not in (Role.OPERATOR, Role.SENTINEL):
            self.check_audit_access(actor, tenant)
        return self.containment.alerts(tenant, since_index=since_index, limit=limit)

    def hold(self, actor: Principal, kind: str, target: str, *, alert_index: int | None, rule: str) -> str:
        """Place a containment hold (sentinels, with an alert in the log that names the target; operators)."""
        actor.require(Role.SENTINEL, Role.OPERATOR)
        return self.containment.hold(
            actor.id, actor.role.value, kind=kind, target=target, alert_index=alert_index, rule=rule
        )

    def lift_hold(self, actor: Principal, hold_id: str) -> None:
        """Lift a hold: an operator's decision, never a sentinel's."""
        actor.require(Role.OPERATOR)
        self.containment.lift(actor.id, hold_id)

    def list_holds(self, actor: Principal, tenant: str | None, *, active_only: bool) -> list[HoldRow]:
        if actor.role not in (Role.OPERATOR, Role.SENTINEL):
            actor.require(Role.TENANT_ADMIN, Role.AUDITOR)
            tenant = actor.tenant
        return self.containment.holds(tenant, active_only=active_only)

    def record_auth_failure(self, claimed: str, path: str, expired: bool = False) -> None:
        """An API token that did not authenticate: recorded (the caller's address by keyed hash, by the
        recorder). ``expired``: it was the principal's token, past its expiry."""
        principal = claimed if 0 < len(claimed) <= 64 and claimed.isprintable() else "-"
        row = self.store.principals.by_id(principal) if principal != "-" else None
        details: dict[str, object]
        if row is None:
            reason, details = "unknown principal", {"claimed": principal[:64]}
        elif expired:
            reason, details = "API token expired", {"expired": True}
        else:
            reason, details = "invalid API token", {}
        self.recorder.queue(
            AuditEvent(
                type="auth.fail",
                tenant=(row.tenant_id or "-") if row is not None else "-",
                actor=principal if row is not None else "-",
                resource=path[:128],
                decision="deny",
                reasons=(reason,),
                details=details,
            )
        )

    def record_rate_limit(self, principal: Principal | None, limiter: str, path: str, refused: int) -> None:
        """A caller over its rate limit (recorded at most once a minute per caller by the HTTP layer)."""
        self.recorder.queue(
            AuditEvent(
                type="rate.limit",
                tenant=(principal.tenant or "-") if principal is not None else "-",
                actor=principal.id if principal is not None else "-",
                resource=path[:128],
                decision="deny",
                details={"limiter": limiter[:32], "refused": refused},
            )
        )

    def _read(self, actor: Principal, tenant: str | None, what: str) -> None:
        """A read of a sensitive object list: queued, not awaited (the read does not wait for the log)."""
        self.recorder.queue(
            AuditEvent(
                type="object.read",
                tenant=tenant or actor.tenant or "-",
                actor=actor.id,
                resource=f"{tenant or actor.tenant or '*'}/{what}",
                details={"what": what},
            )
        )


@dataclass(frozen=True, slots=True)
class BrokerServices:
    """One broker's services, wired to one store, audit recorder, keyring and clock."""

    store: BrokerStore
    config: BrokerConfig
    recorder: AuditRecorder
    keyring: Keyring
    approvals: ApprovalService
    custody: CustodyService
    principals: PrincipalService
    devices: DeviceService
    catalogue: CatalogueService
    rotation: RotationService
    releases: ReleaseService
    reports: ReportService
    containment: ContainmentService
    console: ConsoleService
    reader: LogReader | None


def open_broker(
    database_url: str,
    root_key: RootKey | None,
    signer: TokenSigner,
    registry: VerifierRegistry,
    audit: AuditSink,
    *,
    registration_key: HPKEIdentity,
    config: BrokerConfig = DEFAULTS,
    clock: Callable[[], float] = time.time,
    reader: LogReader | None = None,
    hasher: SensitiveHasher | None = None,
) -> KeyBroker:
    """Open (and migrate) the broker's database, wire the services over it, the audit sink and the
    clock, and put the facade in front of them.

    ``reader`` reads the audit log back for auditors (the AuditLog itself, in a broker process).
    ``hasher`` fills the keyed hash of the caller's address (``hmac.client``) of events recorded
    while serving a request.

    Raises:
        ConfigError: the database schema is newer than this release.
    """

    def now() -> int:
        return int(clock())

    store = BrokerStore(database_url)
    try:
        store.migrate(now())
    except BaseException:
        store.close()
        raise

    recorder = AuditRecorder(audit, hasher=hasher)
    keyring = Keyring(store, root_key, signer)
    approvals = ApprovalService(store, recorder, config.broker_id, now)
    principals = PrincipalService(store, recorder, now, keyring=keyring)
    custody = CustodyService(
        store, recorder, config.broker_id, now, install_root=keyring.install, sealed=lambda: keyring.sealed
    )
    return KeyBroker(
        BrokerServices(
            store=store,
            config=config,
            recorder=recorder,
            keyring=keyring,
            approvals=approvals,
            custody=custody,
            principals=principals,
            console=ConsoleService(store, recorder, principals, now, session_seconds=config.console_session_seconds),
            devices=DeviceService(store, recorder, now, approvals=approvals, registry=registry),
            reports=ReportService(store, recorder),
            catalogue=CatalogueService(
                store,
                recorder,
                now,
                approvals=approvals,
                keyring=keyring,
                registration_key=registration_key,
                signers={name: config.path(key) for name, key in config.model_signers.items()},
                require_signature=config.require_signature,
            ),
            rotation=RotationService(
                store,
                recorder,
                now,
                approvals=approvals,
                keyring=keyring,
                token_ttl_seconds=config.token_ttl_seconds,
                kek_max_age_seconds=int(config.kek_max_age_days * 86400),
                token_key_max_age_seconds=int(config.token_key_max_age_days * 86400),
            ),
            releases=ReleaseService(
                store,
                recorder,
                now,
                approvals=approvals,
                keyring=keyring,
                registry=registry,
                signer=signer,
                challenge_ttl_seconds=config.challenge_ttl_seconds,
            ),
            containment=ContainmentService(
                store,
                recorder,
                reader,
                now,
                max_holds_per_hour=config.containment_max_holds_per_hour,
                principal_role=lambda pid: _principal_role(store, pid),
            ),
            reader=reader,
        )
    )


def _principal_role(store: BrokerStore, principal_id: str) -> tuple[str | None, str] | None:
    row = store.principals.by_id(principal_id)
    return None if row is None else (row.tenant_id, row.role)
