"""The ``tpm`` verifier: TPM 2.0 quotes from enrolled, activated devices.

Evidence: ``{"type": "tpm", "quote": b64, "signature": b64, "pcrs": {"sha256": {i: hex}}}``
and optionally ``"event_logs": [b64, ...]`` (at most four TCG crypto-agile logs, for
example the firmware's and the workload's). Each log is replayed against the quoted
PCRs (:mod:`weightvault.attestation.tpm.eventlog`); the events of every PCR that a log
extends and the quote covers become the claim ``tpm.eventlog.sha256.<pcr>``, the list
of their SHA-256 digests in order, which policies test with ``contains``.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from weightvault.attestation.interfaces import (
    AttestationContext,
    AttestationResult,
    BaseVerifier,
    ClaimValue,
    decode_b64_field,
    evidence_digest,
)
from weightvault.attestation.tpm.enrolment import EnrolmentFacts, check_enrolment
from weightvault.attestation.tpm.eventlog import check_event_logs
from weightvault.attestation.tpm.quote import QuoteEvidence, check_quote
from weightvault.errors import ConfigError, EvidenceError, QuoteError

__all__ = ["DEFAULT_PCRS", "TPMVerifier"]

DEFAULT_PCRS: Final = (0, 1, 2, 3, 4, 5, 6, 7, 23)
_MAX_LOGS: Final = 4
_FIELDS: Final = frozenset({"type", "quote", "signature", "pcrs"})


class TPMVerifier(BaseVerifier):
    """Verifies quotes against enrolled AKs; also performs enrolment checks for the broker."""

    id = "tpm"
    claim_prefix = "tpm."
    #: A quote verifies under the enrolled AK of the challenge's device, which it thereby authenticates.
    device_kinds = frozenset({"tpm"})

    def __init__(
        self, roots: Sequence[bytes], intermediates: Sequence[bytes] = (), pcrs: Sequence[int] = DEFAULT_PCRS
    ) -> None:
        if not roots:
            raise ConfigError("the tpm verifier needs EK certificate roots (ek_roots)")
        if not pcrs or any(not 0 <= p <= 23 for p in pcrs):
            raise ConfigError("tpm pcrs must be 0..23")
        self.roots = list(roots)
        self.intermediates = list(intermediates)
        self.pcrs = tuple(sorted(set(pcrs)))

    @classmethod
    def from_config(cls, section: Mapping[str, Any], base: Path) -> TPMVerifier:
        """Build from ``[verifiers.tpm]``: ``ek_roots``, ``ek_intermediates`` (PEM or DER files), ``pcrs``.

        Raises:
            ConfigError: an unknown key, a value of the wrong type, or an unreadable certificate file.
        """
        unknown = set(section) - {"ek_roots", "ek_intermediates", "pcrs"}
        if unknown:
            raise ConfigError(f"[verifiers.tpm]: unknown key(s) {sorted(unknown)}")
        paths = {k: section.get(k, []) for k in ("ek_roots", "ek_intermediates")}
        for key, value in paths.items():
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"[verifiers.tpm] {key} must be a list of certificate file paths")
        pcrs = section.get("pcrs", list(DEFAULT_PCRS))
        if not isinstance(pcrs, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in pcrs):
            raise ConfigError("[verifiers.tpm] pcrs must be a list of PCR indices 0..23")
        try:
            roots = [(base / p).read_bytes() for p in paths["ek_roots"]]
            intermediates = [(base / p).read_bytes() for p in paths["ek_intermediates"]]
        except OSError as exc:
            raise ConfigError(f"tpm verifier: cannot read {exc.filename}") from exc
        return cls(roots, intermediates, pcrs)

    @property
    def pcr_selection(self) -> str:
        return "sha256:" + ",".join(str(p) for p in self.pcrs)

    def enrol(self, ek_cert: bytes, ek_public: bytes, ak_public: bytes, now: int) -> EnrolmentFacts:
        """Check an enrolment request (raises QuoteError)."""
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
        return check_enrolment(
            ek_cert, ek_public, ak_public, roots=self.roots, intermediates=self.intermediates, now=moment
        )

    def appraise(self, evidence: Mapping[str, Any], context: AttestationContext) -> AttestationResult:
        device = context.device
        if device is None or device.kind != "tpm":
            raise EvidenceError("tpm evidence needs a challenge for an enrolled TPM device")
        if device.status == "pending":
            raise QuoteError("ak_not_activated: the device's AK was never activated")
        if device.status != "active":
            raise QuoteError(f"device_{device.status}: the device is not active")
        if not _FIELDS <= set(evidence) <= _FIELDS | {"event_logs"}:
            raise EvidenceError("tpm evidence is {type, quote, signature, pcrs} and optionally event_logs")
        raw_logs = evidence.get("event_logs", [])
        if not isinstance(raw_logs, list) or len(raw_logs) > _MAX_LOGS:
            raise EvidenceError(f"event_logs must be a list of at most {_MAX_LOGS} base64 logs")
        logs = [decode_b64_field(log, "event log") for log in raw_logs]
        raw_pcrs = evidence["pcrs"]
        if not isinstance(raw_pcrs, dict) or set(raw_pcrs) != {"sha256"} or not isinstance(raw_pcrs["sha256"], dict):
            raise EvidenceError('pcrs must be {"sha256": {index: hex}}')
        pcrs: dict[int, bytes] = {}
        for key, value in raw_pcrs["sha256"].items():
            if not (isinstance(key, str) and key.isdigit() and isinstance(value, str)) or int(key) > 23:
                raise EvidenceError("PCR indices are 0..23 with hex values")
            try:
                pcrs[int(key)] = bytes.fromhex(value)
            except ValueError as exc:
                raise EvidenceError("PCR values must be hex") from exc
        quote = QuoteEvidence(
            decode_b64_field(evidence["quote"], "quote"), decode_b64_field(evidence["signature"], "signature"), pcrs
        )
        ak = decode_b64_field(device.identity.get("ak_public"), "enrolled AK")
        check = check_quote(
            ak, context.expected_report_data, quote, required_pcrs=self.pcrs, previous=context.device_state
        )
        claims: dict[str, ClaimValue] = {f"tpm.pcr.sha256.{i}": v.hex() for i, v in check.pcrs.items()}
        # Only after the quote verified: the logs are checked against PCR values the TPM signed.
        for pcr, digests in check_event_logs(logs, check.pcrs).items():
            claims[f"tpm.eventlog.sha256.{pcr}"] = digests
        claims.update(
            {
                "tpm.reset_count": check.reset_count,
                "tpm.restart_count": check.restart_count,
                "tpm.firmware_version": check.firmware_version,
                "tpm.ak_name": str(device.identity.get("ak_name", "")),
                "tpm.ek_issuer": str(device.identity.get("ek_issuer", "")),
            }
        )
        state = {"reset_count": check.reset_count, "restart_count": check.restart_count, "clock": check.clock}
        return AttestationResult(self.id, claims, evidence_digest(evidence), device.id, state)
