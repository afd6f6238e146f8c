"""The verifier contract and the binding between evidence and a key-release session.

Every piece of evidence must commit to ``report_data``, the SHA-256 of the RFC
8785 form of ``{"challenge_id", "nonce", "tenant", "hpke": {"kem", "public"}}``:
the broker's fresh challenge, the tenant, and the workload's ephemeral HPKE public
key. Replaying evidence against another challenge, presenting it for another
tenant, or swapping the key to which released keys will be sealed all change
``report_data`` and fail.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

from weightvault.encoding import canonical_json
from weightvault.errors import EvidenceError

__all__ = [
    "AttestationContext",
    "AttestationResult",
    "BaseVerifier",
    "ClaimValue",
    "DeviceRecord",
    "Verifier",
    "check_result",
    "decode_b64_field",
    "evidence_digest",
    "report_data",
]

ClaimValue: TypeAlias = str | int | bool | list[str]


def report_data(challenge_id: str, nonce: bytes, tenant: str, kem: str, public: bytes) -> bytes:
    """The 32 bytes every piece of evidence must commit to."""
    doc = {
        "challenge_id": challenge_id,
        "nonce": base64.b64encode(nonce).decode(),
        "tenant": tenant,
        "hpke": {"kem": kem, "public": base64.b64encode(public).decode()},
    }
    return hashlib.sha256(canonical_json(doc)).digest()


def decode_b64_field(value: object, what: str, *, limit: int | None = None, code: str = "") -> bytes:
    """A base64 field of evidence, decoded strictly; with ``limit``, refused before decoding when longer.

    Raises:
        EvidenceError: not a string, too long, or not base64; the message starts with ``code: `` if given.
    """
    prefix = f"{code}: " if code else ""
    too_long = limit is not None and isinstance(value, str) and len(value) > 4 * (limit // 3 + 1)
    if not isinstance(value, str) or too_long:
        bound = "" if limit is None else f" of at most {limit} bytes"
        raise EvidenceError(f"{prefix}{what} must be base64{bound}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EvidenceError(f"{prefix}{what} is not base64") from exc


def evidence_digest(evidence: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical evidence, for the audit log."""
    return "sha256:" + hashlib.sha256(canonical_json(dict(evidence))).hexdigest()


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """What the broker knows about an enrolled device, as verifiers see it."""

    id: str
    kind: str
    status: str
    tenants: frozenset[str]
    identity: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AttestationContext:
    """The session a piece of evidence must belong to."""

    tenant: str
    challenge_id: str
    nonce: bytes
    expected_report_data: bytes
    now: int
    device: DeviceRecord | None = None
    #: Previous TPM clock state of the device (reset, restart counters), for rollback checks.
    device_state: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AttestationResult:
    """Normalised claims. Policies read only these, never raw vendor evidence.

    Invariant: every claim name lies in the verifier's own namespace (its
    ``claim_prefix``), and ``device_id`` is set only when the evidence itself
    authenticated that device (a quote under the device's enrolled key, a signed
    token naming it). The broker adds ``device.*`` claims from its registry only
    for such a device, and only if the device is of a kind this verifier can
    authenticate; see :func:`check_result`.
    """

    verifier: str
    claims: Mapping[str, ClaimValue]
    evidence_digest: str
    device_id: str | None = None
    #: State the broker persists for the next appraisal (TPM counters).
    device_state: Mapping[str, int] = field(default_factory=dict)
    #: For composite evidence: the verifiers whose evidence it combined (all of them passed).
    parts: tuple[str, ...] = ()

    @property
    def verified_by(self) -> frozenset[str]:
        """Every verifier whose evidence this result rests on: itself and its parts."""
        return frozenset({self.verifier, *self.parts})


class Verifier(Protocol):
    """An evidence verifier. ``id`` is also the evidence type it accepts.

    ``claim_prefix`` is the namespace of every claim it emits (``"tpm."``), or the
    namespaces of a verifier that combines others (composite evidence);
    ``device_kinds`` the kinds of enrolled device whose identity its evidence
    proves (empty: its results are never bound to a device).
    """

    id: str
    device_kinds: frozenset[str]

    @property
    def claim_prefix(self) -> str | tuple[str, ...]: ...

    def verify(self, evidence: Mapping[str, Any], context: AttestationContext) -> AttestationResult:
        """Verify evidence for ``context``; raises an AttestationError subclass when it fails."""
        ...


class BaseVerifier:
    """Checks the evidence type, then hands over to :meth:`appraise`."""

    id: str = ""
    claim_prefix: str = ""
    device_kinds: frozenset[str] = frozenset()

    def verify(self, evidence: Mapping[str, Any], context: AttestationContext) -> AttestationResult:
        if evidence.get("type") != self.id:
            raise EvidenceError(f"evidence is not of type {self.id!r}")
        return self.appraise(evidence, context)

    def appraise(self, evidence: Mapping[str, Any], context: AttestationContext) -> AttestationResult:
        raise NotImplementedError


def check_report_data(actual: bytes, context: AttestationContext) -> None:
    """Constant-time comparison of committed and expected report data."""
    if not hmac.compare_digest(actual, context.expected_report_data):
        raise EvidenceError("evidence is not bound to this challenge, tenant and key (report data mismatch)")


def check_result(verifier: Verifier, result: AttestationResult) -> None:
    """Enforce the result invariant at the seam between a verifier and the broker.

    Raises:
        EvidenceError: the result names another verifier, or a claim outside the verifier's namespace.
    """
    if result.verifier != verifier.id:
        raise EvidenceError(f"verifier {verifier.id} returned a result labelled {result.verifier!r}")
    prefixes = (verifier.claim_prefix,) if isinstance(verifier.claim_prefix, str) else verifier.claim_prefix
    if not prefixes or not all(p.endswith(".") for p in prefixes):
        raise EvidenceError(f"verifier {verifier.id} has no claim namespace")
    stray = sorted(k for k in result.claims if not k.startswith(prefixes))
    if stray:
        raise EvidenceError(f"verifier {verifier.id} emitted claims outside {', '.join(prefixes)}: {stray[:3]}")
