"""``insecure-sample``: an evidence verifier for tests and demos only.

It checks nothing but the report data: anyone can produce such evidence. The
registry refuses to load it unless the broker's configuration enables it
explicitly, it logs a warning every time it is used, and its results can never
satisfy a policy that does not list ``insecure-sample`` among its verifiers.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from typing import Any, Final

from weightvault.attestation.interfaces import (
    AttestationContext,
    AttestationResult,
    BaseVerifier,
    ClaimValue,
    check_report_data,
    evidence_digest,
)
from weightvault.errors import EvidenceError

__all__ = ["SAMPLE_ID", "UnsafeSampleVerifier", "sample_evidence"]

SAMPLE_ID: Final = "insecure-sample"
_log = logging.getLogger(__name__)


def sample_evidence(
    report_data: bytes, claims: Mapping[str, ClaimValue] | None = None, device_id: str | None = None
) -> dict[str, Any]:
    """Build insecure-sample evidence (the attester side)."""
    evidence: dict[str, Any] = {"type": SAMPLE_ID, "report_data": base64.b64encode(report_data).decode()}
    if claims:
        evidence["claims"] = dict(claims)
    if device_id is not None:
        evidence["device_id"] = device_id
    return evidence


class UnsafeSampleVerifier(BaseVerifier):
    """Accepts any evidence that carries the right report data. Never use in production."""

    id = SAMPLE_ID
    claim_prefix = "sample."
    #: Sample evidence proves nothing, so it can only stand for devices registered as insecure-sample.
    device_kinds = frozenset({SAMPLE_ID})

    def appraise(self, evidence: Mapping[str, Any], context: AttestationContext) -> AttestationResult:
        _log.warning("insecure-sample verifier used: this evidence proves nothing about the workload")
        if set(evidence) - {"type", "report_data", "claims", "device_id"}:
            raise EvidenceError("unknown fields in insecure-sample evidence")
        try:
            committed = base64.b64decode(str(evidence.get("report_data", "")), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EvidenceError("report_data is not base64") from exc
        check_report_data(committed, context)
        raw_claims = evidence.get("claims", {})
        if not isinstance(raw_claims, dict):
            raise EvidenceError("claims must be an object")
        claims: dict[str, ClaimValue] = {}
        for key, value in raw_claims.items():
            if not isinstance(key, str) or not isinstance(value, str | int | bool):
                raise EvidenceError("sample claims must be strings, integers or booleans")
            claims[f"sample.{key}"] = value
        device = evidence.get("device_id")
        if device is not None and not isinstance(device, str):
            raise EvidenceError("device_id must be a string")
        return AttestationResult(self.id, claims, evidence_digest(evidence), device)
