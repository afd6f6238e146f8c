"""Devices: registration, tenant bindings, status, and TPM 2.0 enrolment.

A device is registered with the kind of evidence that will prove it: ``tpm``
devices enrol with their EK certificate and AK (MakeCredential, then the
ActivateCredential secret), ``token`` devices are named by an attestation-token
issuer, ``insecure-sample`` devices exist for tests. Every change runs under its
write-ahead intent, one per tenant the device serves, so each tenant's auditors
see it; gated changes run inside their approval's execution.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from weightvault.attestation.registry import VerifierRegistry
from weightvault.auditlog.events import AuditEvent, bounded_list
from weightvault.broker.approvals import ApprovalService, Grant
from weightvault.broker.names import check_name
from weightvault.broker.recording import AuditRecorder
from weightvault.broker.storage import BrokerStore, DeviceRow
from weightvault.crypto.secret import random_bytes
from weightvault.encoding import canonical_json
from weightvault.errors import (
    AttestationError,
    ConflictError,
    EnrolmentError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)

__all__ = ["REGISTERED_KINDS", "DeviceService"]

#: Device kinds an operator registers (TPM devices enrol instead); each is proven by one verifier.
REGISTERED_KINDS: Final = frozenset({"token", "insecure-sample"})
#: Statuses an operator may set.
STATUS_EVENTS: Final = {"revoked": "device.revoke", "active": "device.activate"}


class DeviceService:
    def __init__(
        self,
        store: BrokerStore,
        recorder: AuditRecorder,
        now: Callable[[], int],
        *,
        approvals: ApprovalService,
        registry: VerifierRegistry,
    ) -> None:
        self._store = store
        self._recorder = recorder
        self._approvals = approvals
        self._registry = registry
        self._now = now

    def get(self, device_id: str) -> DeviceRow | None:
        return self._store.devices.by_id(device_id)

    def list_for(self, tenant: str | None) -> list[DeviceRow]:
        return self._store.devices.list_for(tenant)

    def add(
        self,
        actor: str,
        device_id: str,
        kind: str,
        tenants: Sequence[str],
        identity: Mapping[str, Any] | None,
        *,
        approval: str | None,
    ) -> None:
        """Register a device known by a non-TPM identity (gated by ``device.enrol``)."""
        if kind == "tpm":
            raise InvalidRequestError("TPM devices enrol with their EK certificate (weightvault device enroll)")
        if kind not in REGISTERED_KINDS:
            raise InvalidRequestError(
                f"device kind must be one of {sorted(REGISTERED_KINDS)}: 'token' for devices an attestation-token "
                "issuer names, 'insecure-sample' for tests"
            )
        params = {
            "device": device_id,
            "kind": kind,
            "tenants": sorted(tenants),
            "identity_sha256": hashlib.sha256(canonical_json(dict(identity or {}))).hexdigest(),
        }
        grant = self._approvals.gate(actor, "device.enrol", "-", params, approval=approval)
        self._insert(actor, DeviceRow(device_id, kind, "active", dict(identity or {}), {}, frozenset(tenants)), grant)

    def _insert(self, actor: str, device: DeviceRow, grant: Grant | None) -> None:
        check_name(device.id, "device id")
        for tenant in device.tenants:
            if not self._store.tenants.exists(tenant):
                raise NotFoundError(f"no tenant {tenant}")
        if self._store.devices.by_id(device.id) is not None:
            raise ConflictError(f"device {device.id} exists")
        intents = [
            AuditEvent(
                type="device.enrol.intent",
                tenant=tenant,
                actor=actor,
                resource=f"device:{device.id}",
                details={"kind": device.kind, "status": device.status},
            )
            for tenant in sorted(device.tenants) or ["-"]
        ]
        with self._approvals.execute(grant, actor, f"device:{device.id}"), self._recorder.write_ahead(*intents):
            self._store.devices.create(device, self._now())

    def bind(self, actor: str, device_id: str, tenants: Sequence[str]) -> None:
        """Replace the tenants a device serves."""
        if self._store.devices.by_id(device_id) is None:
            raise NotFoundError("no such device")
        for tenant in tenants:
            if not self._store.tenants.exists(tenant):
                raise NotFoundError(f"no tenant {tenant}")
        intent = AuditEvent(
            type="device.change.intent",
            tenant="-",
            actor=actor,
            resource=f"device:{device_id}",
            details={"op": "bind", "tenants": bounded_list(sorted(set(tenants)))},
        )
        with self._recorder.write_ahead(intent):
            self._store.devices.bind(device_id, tenants)

    def set_status(self, actor: str, device_id: str, status: str) -> None:
        """Activate or revoke a device; a revocation takes effect at the next release."""
        device = self._store.devices.by_id(device_id)
        if device is None:
            raise NotFoundError("no such device")
        kind = STATUS_EVENTS.get(status, "device.change")
        intents = [
            AuditEvent(
                type=f"{kind}.intent",
                tenant=tenant,
                actor=actor,
                resource=f"device:{device_id}",
                details={"status": status},
            )
            for tenant in sorted(device.tenants) or ["-"]
        ]
        with self._recorder.write_ahead(*intents):
            self._store.devices.update(device_id, self._now(), status=status)

    # -- TPM enrolment --------------------------------------------------------------------------

    def _tpm_verifier(self) -> Any:
        verifier = self._registry.get("tpm")
        if verifier is None:
            raise InvalidRequestError("this broker does not accept TPM devices (the tpm verifier is not enabled)")
        return verifier

    def enrol_tpm(
        self,
        actor: str,
        device_id: str,
        tenants: Sequence[str],
        *,
        ek_cert: bytes,
        ek_public: bytes,
        ak_public: bytes,
        approval: str | None,
    ) -> tuple[bytes, bytes]:
        """Step 1 of TPM enrolment: check EK chain, EK and AK; returns (credential blob, encrypted secret).

        The device stays ``pending`` until :meth:`activate_tpm` receives the secret that
        only ActivateCredential on the same TPM recovers.

        Raises:
            EnrolmentError: the EK certificate does not chain to a configured root, the EK
                does not match it, or the AK is not a restricted attestation key (the reason is shown).
        """
        from weightvault.attestation.tpm.enrolment import make_credential

        check_name(device_id, "device id")
        verifier = self._tpm_verifier()
        params = {
            "device": device_id,
            "kind": "tpm",
            "tenants": sorted(tenants),
            "ak_sha256": hashlib.sha256(ak_public).hexdigest(),
        }
        grant = self._approvals.gate(actor, "device.enrol", "-", params, approval=approval)
        try:
            facts = verifier.enrol(ek_cert, ek_public, ak_public, self._now())
        except AttestationError as exc:
            self._enrol_failed(actor, device_id, tenants, str(exc)[:500])
            raise EnrolmentError(f"enrolment refused: {exc}") from exc
        for other in self._store.devices.list_for(None):
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
        self._insert(actor, DeviceRow(device_id, "tpm", "pending", identity, {}, frozenset(tenants)), grant)
        return blob, encrypted

    def _enrol_failed(self, actor: str, device_id: str, tenants: Sequence[str], reason: str) -> None:
        """One ``device.enrol.fail`` per tenant the device was to serve (``-`` for none): a refusal, no intent."""
        for tenant in sorted(tenants) or ["-"]:
            self._recorder.append(
                AuditEvent(
                    type="device.enrol.fail",
                    tenant=tenant,
                    actor=actor,
                    resource=f"device:{device_id}",
                    decision="deny",
                    reasons=(reason,),
                )
            )

    def activate_tpm(self, actor: str, device_id: str, secret: bytes) -> None:
        """Step 2 of TPM enrolment: the secret recovered by ActivateCredential activates the device."""
        device = self._store.devices.by_id(device_id)
        if device is None or device.kind != "tpm":
            raise NotFoundError("no such TPM device")
        expected = str(device.identity.get("credential_sha256", ""))
        if device.status != "pending" or not expected:
            raise ConflictError("the device is not waiting for credential activation")
        if not hmac.compare_digest(hashlib.sha256(secret).hexdigest(), expected):
            self._enrol_failed(actor, device_id, sorted(device.tenants), "credential_mismatch")
            raise PermissionDeniedError("the activation secret does not match: the AK is not on this EK's TPM")
        identity = {k: v for k, v in device.identity.items() if k != "credential_sha256"}
        intents = [
            AuditEvent(
                type="device.activate.intent",
                tenant=tenant,
                actor=actor,
                resource=f"device:{device_id}",
                details={"status": "active", "ak_name": str(identity.get("ak_name", ""))},
            )
            for tenant in sorted(device.tenants) or ["-"]
        ]
        with self._recorder.write_ahead(*intents):
            self._store.devices.update(device_id, self._now(), status="active", identity=identity)

    def challenge_hints(self, tenant: str, device_id: str | None) -> dict[str, Any]:
        """What the attester needs to know beyond the nonce (the PCR selection for TPM devices)."""
        if device_id is None:
            return {}
        device = self._store.devices.in_tenant(tenant, device_id)
        verifier = self._registry.get("tpm")
        if device is None or device.kind != "tpm" or verifier is None:
            return {}
        return {"tpm": {"pcr_selection": verifier.pcr_selection}}  # type: ignore[attr-defined]
