"""Attestation-gated key release: challenge, attest, release.

Order of operations of a release (each step raises before the next):

1. the result token verifies (signature, issuer, audience, lifetime, not revoked);
2. the facts are read, every lookup within the caller's tenant, and
   :func:`weightvault.broker.decisions.decide_release` decides: token of this
   principal and tenant, model of this tenant, device active and bound, policy
   (latest version) evaluated **now** against the attested claims plus the broker's own;
3. approvals are enforced where the approval policy covers the model;
4. the decision is logged (every refusal too, with its reason codes);
5. the write-ahead rule: ``key.release.intent`` is appended and durable, else refuse;
6. the file key is unwrapped (root key → tenant KEK → file key) and HPKE-sealed to
   the ephemeral public key inside the signed token, never to a key from the request;
7. ``key.release.done`` (or ``.fail``) is appended; key material is wiped.

The device a token is bound to is the one the evidence authenticated, never merely
the one the challenge named (see :meth:`ReleaseService.attest`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from weightvault.attestation.interfaces import (
    AttestationContext,
    DeviceRecord,
    check_result,
    evidence_digest,
    report_data,
)
from weightvault.attestation.registry import VerifierRegistry
from weightvault.auditlog.events import AuditEvent
from weightvault.broker.approvals import ApprovalService
from weightvault.broker.containment import held_model
from weightvault.broker.decisions import ReleaseDecision, ReleaseFacts, decide_release, parse_resource
from weightvault.broker.keyring import Keyring
from weightvault.broker.principals import Principal
from weightvault.broker.protocol import ReleasePayload, release_info
from weightvault.broker.recording import AuditRecorder
from weightvault.broker.storage import BrokerStore, ChallengeRow, DeviceRow, ModelRow
from weightvault.broker.tokens import ResultToken, TokenSigner
from weightvault.crypto.keywrap import HPKEKem, hpke_seal
from weightvault.crypto.secret import random_bytes
from weightvault.custody.approvals import HOLD_FACT
from weightvault.errors import (
    ApprovalError,
    ApprovalRequiredError,
    AttestationError,
    AuthenticationError,
    ChallengeExpiredError,
    ChallengeUsedError,
    ContainedError,
    EvidenceError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ReleaseDeniedError,
)

__all__ = ["AttestOutcome", "Challenge", "ReleaseOutcome", "ReleaseService"]

_MAX_TENSOR_INDEX: Final = 1_000_000
_MAX_REASON_CHARS: Final = 500


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


def _device_problem(device: DeviceRow | None, tenant: str) -> str | None:
    if device is None:
        return "device_unknown"
    if device.status != "active":
        return f"device_{device.status}"
    if tenant not in device.tenants:
        return "device_not_in_tenant"
    return None


class ReleaseService:
    def __init__(
        self,
        store: BrokerStore,
        recorder: AuditRecorder,
        now: Callable[[], int],
        *,
        approvals: ApprovalService,
        keyring: Keyring,
        registry: VerifierRegistry,
        signer: TokenSigner,
        challenge_ttl_seconds: int,
    ) -> None:
        self._store = store
        self._recorder = recorder
        self._approvals = approvals
        self._keyring = keyring
        self._registry = registry
        self._signer = signer
        self._now = now
        self._challenge_ttl = challenge_ttl_seconds

    # -- challenges -------------------------------------------------------------------------------

    def issue_challenge(self, actor: Principal, device_id: str | None) -> Challenge:
        """A fresh 32-byte nonce, single use, valid for the configured lifetime."""
        assert actor.tenant is not None
        self._keyring.root()  # a sealed broker issues no challenge: nothing could be released
        if device_id is not None:
            device = self._store.devices.in_tenant(actor.tenant, device_id)
            if device is None or device.status != "active":
                reason = "device_unknown" if device is None else f"device_{device.status}"
                self._recorder.append(
                    AuditEvent(
                        type="challenge.issued",
                        tenant=actor.tenant,
                        actor=actor.id,
                        resource=f"device:{device_id}"[:256],
                        decision="deny",
                        reasons=(reason,),
                    )
                )
                if device is None:
                    raise NotFoundError("no such device in this tenant")
                raise PermissionDeniedError("device is not active")
        challenge = Challenge(
            uuid.uuid4().hex, actor.tenant, random_bytes(32), self._now() + self._challenge_ttl, device_id
        )
        # Recorded first: a challenge that exists was logged (one that was logged but failed to
        # be stored can never be used, so it needs no follow-up record).
        self._recorder.append(
            AuditEvent(
                type="challenge.issued",
                tenant=actor.tenant,
                actor=actor.id,
                resource=f"challenge:{challenge.id}",
                decision="allow",
                details={"device": device_id} if device_id else {},
            )
        )
        self._store.sessions.add_challenge(
            ChallengeRow(challenge.id, challenge.tenant, actor.id, challenge.nonce, device_id, challenge.expires_at)
        )
        return challenge

    # -- attestation ------------------------------------------------------------------------------

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
            NotFoundError: unknown challenge (or another tenant's or principal's).
            ChallengeUsedError / ChallengeExpiredError: replay or late use.
            AttestationError: the evidence does not verify (details go to the audit log).
            PermissionDeniedError: the evidence does not establish an allowed device.
        """
        assert actor.tenant is not None
        tenant = actor.tenant
        try:
            kem_kind = HPKEKem(kem)
        except ValueError as exc:
            self._fail_attest(actor, challenge_id, "invalid_request: unknown KEM", evidence)
            raise InvalidRequestError(f"unknown KEM {kem!r}") from exc
        if len(public) != kem_kind.public_key_bytes:
            self._fail_attest(actor, challenge_id, "invalid_request: ephemeral key length", evidence)
            raise InvalidRequestError("ephemeral public key has the wrong length")
        challenge = self._store.sessions.challenge(tenant, challenge_id)
        if challenge is None or challenge.principal_id != actor.id:
            # Another tenant's or principal's challenge looks exactly like an unknown one.
            self._fail_attest(actor, challenge_id, "challenge_unknown", evidence)
            raise NotFoundError("no such challenge")
        now = self._now()
        if not self._store.sessions.consume_challenge(tenant, challenge_id, now):
            expired = challenge.expires_at <= now
            self._fail_attest(actor, challenge_id, "challenge_expired" if expired else "challenge_used", evidence)
            raise (
                ChallengeExpiredError("challenge expired") if expired else ChallengeUsedError("challenge already used")
            )
        verifier = self._registry.get(evidence.get("type"))
        if verifier is None:
            self._fail_attest(actor, challenge_id, "verifier_not_allowed", evidence)
            raise EvidenceError("evidence type is not accepted by this broker")
        named = self._store.devices.in_tenant(tenant, challenge.device_id) if challenge.device_id else None
        context = AttestationContext(
            tenant=tenant,
            challenge_id=challenge_id,
            nonce=challenge.nonce,
            expected_report_data=report_data(challenge_id, challenge.nonce, tenant, kem, public),
            now=now,
            device=DeviceRecord(named.id, named.kind, named.status, named.tenants, named.identity) if named else None,
            device_state=named.state if named else {},
        )
        try:
            result = verifier.verify(evidence, context)
            check_result(verifier, result)
        except AttestationError as exc:
            self._fail_attest(actor, challenge_id, f"{type(exc).__name__}: {exc}", evidence, challenge.device_id)
            raise
        # The device is the one the evidence authenticated, never merely the one the challenge named.
        device_id = result.device_id
        problem = self._device_binding(verifier.device_kinds, device_id, challenge.device_id, tenant)
        if problem:
            self._fail_attest(actor, challenge_id, problem, evidence, challenge.device_id)
            raise PermissionDeniedError(f"the evidence does not establish an allowed device ({problem})")
        if self._keyring.shared:  # another replica may have rotated or retired the signing key
            self._keyring.sync_signing_keys()
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
            self._recorder.append(passed)  # durable before the token exists anywhere else
        else:
            # One-shot: every path of the release below appends a durable event (its decision or
            # its intent), and the single writer commits in order, so this rides that commit.
            self._recorder.queue(passed)
        # Durable, and with it the challenge's consumption above: before the token leaves.
        self._store.sessions.record_attestation(
            parsed.jti, tenant, device_id, parsed.expires_at, device_state=result.device_state or None, now=now
        )
        released = None
        if release is not None:
            released = self._release(actor, parsed, release[0], release[1], approval)
        return AttestOutcome(token, parsed.expires_at, parsed.jti, result.verifier, device_id, released)

    def _fail_attest(
        self, actor: Principal, challenge_id: str, reason: str, evidence: Mapping[str, Any], device: str | None = None
    ) -> None:
        try:
            digest = evidence_digest(evidence)
        except (TypeError, ValueError):
            digest = None
        self._recorder.append(
            AuditEvent(
                type="attest.fail",
                tenant=actor.tenant or "-",
                actor=actor.id,
                resource=f"challenge:{challenge_id}"[:256],
                decision="fail",
                reasons=(reason[:_MAX_REASON_CHARS],),
                evidence_digest=digest,
                # The device the challenge named (never one the evidence merely claims): what the
                # sentinel correlates failed attempts by.
                details={"device": device[:256]} if device else {},
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
        device = self._store.devices.by_id(attested)
        problem = _device_problem(device, tenant)
        if problem is None and device is not None and device.kind not in kinds:
            return f"device_kind_{device.kind}_not_proven_by_this_verifier"
        return problem

    # -- release ----------------------------------------------------------------------------------

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
        try:
            if self._keyring.shared:  # a key another replica retired stops verifying here too
                self._keyring.sync_signing_keys()
            parsed = self._signer.verify(token, now=self._now())
            if self._store.sessions.token_revoked(parsed.jti):
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
        self._recorder.append(
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

    def _facts(self, actor: Principal, token: ResultToken, resource: str) -> ReleaseFacts:
        """Read what the decision needs, every lookup within the caller's tenant."""
        assert actor.tenant is not None
        tenant = actor.tenant
        target = parse_resource(resource)
        model = None
        if target is not None and target[0] == tenant:
            model = self._store.catalogue.model(tenant, target[1], target[2])
        # The token was signed by this broker for the device the evidence proved (or none).
        device = self._store.devices.by_id(token.device_id) if token.device_id else None
        policy = self._store.catalogue.latest_policy(tenant, model.policy) if model is not None else None
        refsets = self._store.catalogue.refsets(tenant) if policy is not None else {}
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
        facts = self._facts(actor, token, resource)
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
            if (
                unknown
                or not tensors
                or any(not isinstance(i, int) or not 0 <= i <= _MAX_TENSOR_INDEX for i in indices)
            ):
                self._deny(actor, resource, ("invalid_request",), ("tensors name no file of this model",), token=token)
                raise InvalidRequestError("tensors maps file ids of this model to tensor indices")
        if self._keyring.sealed:
            self._deny(actor, resource, ("broker_sealed",), ("broker_sealed",), token=token)
            self._keyring.root()
        targets = [("model", held_model(resource) or resource)]
        if token.device_id:
            targets.append(("device", token.device_id))
        held = self._store.holds.held_kinds(targets)
        if "device" in held:
            self._deny(actor, resource, ("device_held",), ("the device is held by containment",), token=token)
            raise ContainedError(f"device {token.device_id} is held by containment")
        gate_facts: dict[str, Any] = {f"model.tags.{k}": v for k, v in model.tags.items()}
        if "model" in held:
            gate_facts[HOLD_FACT] = "true"
        try:
            grant = self._approvals.gate(
                actor.id,
                "key.release",
                tenant,
                {"resource": resource, "principal": actor.id},
                approval=approval,
                facts=gate_facts,
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
        allowed = AuditEvent(
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
        intent = allowed.derive(
            "key.release.intent",
            decision=None,
            refs={"decision": self._recorder.queue(allowed)},
            details={
                **details,
                "kem": token.kem,
                "partial": tensors is not None,
                **({"approval": grant.request.id, "approvers": list(grant.approvers)} if grant else {}),
            },
        )
        with self._recorder.write_ahead(intent, wait_done=False):
            if grant is not None:
                self._approvals.consume(grant)
            sealed = self._seal_keys(model, token, resource, tensors)
        return ReleaseOutcome(resource, token.kem, sealed, token.jti, tuple(files), tensors is not None)

    def _seal_keys(
        self, model: ModelRow, token: ResultToken, resource: str, tensors: Mapping[str, Sequence[int]] | None
    ) -> bytes:
        """The release payload (protocol module), sealed to the token's ephemeral key."""
        file_key = self._keyring.file_key_of(model, refuse_retired=True)
        payload = ReleasePayload(model.tenant_id, resource, token.jti)
        try:
            if tensors is None:
                payload.file_key = file_key
            else:
                payload.grants = {
                    file_id: file_key.tensor_keys(bytes.fromhex(file_id), sorted(set(indices)))
                    for file_id, indices in tensors.items()
                }
            return hpke_seal(
                HPKEKem(token.kem),
                token.public,
                payload.to_bytes(),
                release_info(model.tenant_id, resource, token.jti),
            )
        finally:
            payload.wipe()
            file_key.wipe()
