"""Checking a TPM 2.0 quote: a pure function of (AK, expected report data, quote, signature, PCRs, state).

Order of checks (each raises :class:`~weightvault.errors.QuoteError` with a stable
``reason`` before the next runs):

1. the AK public area is a restricted, fixedTPM, fixedParent, sensitiveDataOrigin
   signing key that cannot decrypt (``ak_not_restricted``);
2. the signature parses, uses the scheme and hash the policy requires
   (``signature_scheme``) and verifies under the AK over the exact TPMS_ATTEST bytes
   (``signature_invalid``);
3. TPMS_ATTEST: ``magic`` is TPM_GENERATED_VALUE and ``type`` is ATTEST_QUOTE
   (``not_a_quote``); ``extraData`` equals the expected report data (``report_data_mismatch``);
4. the PCR selection uses only the SHA-256 bank and covers every required PCR
   (``pcr_selection``);
5. the PCR values presented match the quoted ``pcrDigest``, recomputed in the quote's
   own selection order (``pcr_digest_mismatch``);
6. ``clockInfo.safe`` is set (``clock_unsafe``), and the reset and restart counters and
   the clock never go backwards against the last accepted quote (``tpm_clock_rollback``).

Because the AK is restricted, the TPM signs data beginning with TPM_GENERATED_VALUE
only when it produced that structure itself (TPM2_Sign refuses such digests), which
is what makes a quote evidence of the PCR state.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from weightvault.crypto.x509 import verify_tpm_signature
from weightvault.errors import QuoteError

__all__ = ["QuoteCheck", "QuoteEvidence", "ak_problems", "check_quote", "parse_public"]

TPM_GENERATED_VALUE: Final = 0xFF544347
_MAX_PCR: Final = 23


def _reason(reason: str, message: str) -> QuoteError:
    """A QuoteError whose message starts with a stable reason code (``reason: message``) for the audit log."""
    return QuoteError(f"{reason}: {message}")


def _tss() -> Any:
    import tpm2_pytss

    return tpm2_pytss


def parse_public(blob: bytes) -> Any:
    """Unmarshal a TPM2B_PUBLIC; raises QuoteError when malformed."""
    tss = _tss()
    try:
        public, used = tss.TPM2B_PUBLIC.unmarshal(blob)
    except Exception as exc:
        raise _reason("malformed", "malformed TPM2B_PUBLIC") from exc
    if used != len(blob):
        raise _reason("malformed", "trailing bytes after TPM2B_PUBLIC")
    return public


def ak_problems(public: Any) -> list[str]:
    """Everything that disqualifies a public area as an attestation key (empty when fine)."""
    tss = _tss()
    attr = tss.TPMA_OBJECT
    area = public.publicArea
    attrs = int(area.objectAttributes)
    problems = []
    for flag, name in (
        (attr.RESTRICTED, "restricted"),
        (attr.SIGN_ENCRYPT, "sign"),
        (attr.FIXEDTPM, "fixedTPM"),
        (attr.FIXEDPARENT, "fixedParent"),
        (attr.SENSITIVEDATAORIGIN, "sensitiveDataOrigin"),
    ):
        if not attrs & int(flag):
            problems.append(f"AK is not {name}")
    if attrs & int(attr.DECRYPT):
        problems.append("AK can decrypt")
    if int(area.nameAlg) != int(tss.TPM2_ALG.SHA256):
        problems.append("AK name algorithm is not SHA-256")
    if int(area.type) not in (int(tss.TPM2_ALG.ECC), int(tss.TPM2_ALG.RSA)):
        problems.append("AK is neither ECC nor RSA")
    return problems


@dataclass(frozen=True, slots=True)
class QuoteEvidence:
    """What the attester sends: the marshalled TPMS_ATTEST and TPMT_SIGNATURE, and PCR values."""

    quote: bytes
    signature: bytes
    pcrs: Mapping[int, bytes]


@dataclass(frozen=True, slots=True)
class QuoteCheck:
    """A verified quote's facts."""

    pcrs: Mapping[int, bytes]
    reset_count: int
    restart_count: int
    clock: int
    firmware_version: int
    signer_name: bytes


def check_quote(
    ak_public: bytes,
    expected_report_data: bytes,
    evidence: QuoteEvidence,
    *,
    required_pcrs: Sequence[int],
    previous: Mapping[str, int] | None = None,
) -> QuoteCheck:
    """Verify a quote; see the module docstring for the order of checks.

    Raises:
        QuoteError: its message starts with the first failed check's reason code.
    """
    tss = _tss()
    public = parse_public(ak_public)
    problems = ak_problems(public)
    if problems:
        raise _reason("ak_not_restricted", "; ".join(problems))
    try:
        signature, used = tss.TPMT_SIGNATURE.unmarshal(evidence.signature)
        if used != len(evidence.signature):
            raise ValueError("trailing bytes")
        attest, used = tss.TPMS_ATTEST.unmarshal(evidence.quote)
        if used != len(evidence.quote):
            raise ValueError("trailing bytes")
    except Exception as exc:
        raise _reason("malformed", "malformed quote or signature") from exc
    alg = int(signature.sigAlg)
    schemes = {int(tss.TPM2_ALG.ECDSA): "ecdsa", int(tss.TPM2_ALG.RSASSA): "rsassa", int(tss.TPM2_ALG.RSAPSS): "rsapss"}
    scheme = schemes.get(alg)
    if scheme is None:
        raise _reason("signature_scheme", "quote signature scheme is not ECDSA, RSASSA or RSAPSS")
    detail = signature.signature.ecdsa if scheme == "ecdsa" else signature.signature.rsassa
    if int(detail.hash) != int(tss.TPM2_ALG.SHA256):
        raise _reason("signature_scheme", "quote is not signed with SHA-256")
    try:
        signature_bytes = bytes(signature)
        pem = public.to_pem()
    except Exception as exc:
        raise _reason("malformed", "signature or key cannot be encoded") from exc
    if not verify_tpm_signature(pem, scheme, signature_bytes, evidence.quote):
        raise _reason("signature_invalid", "quote signature does not verify under the enrolled AK")
    if int(attest.magic) != TPM_GENERATED_VALUE or int(attest.type) != int(tss.TPM2_ST.ATTEST_QUOTE):
        raise _reason("not_a_quote", "structure is not a TPM-generated quote")
    if not hmac.compare_digest(bytes(attest.extraData), expected_report_data):
        raise _reason("report_data_mismatch", "quote is not bound to this challenge, tenant and key")
    info = attest.attested.quote
    order: list[int] = []
    for selection in info.pcrSelect:
        if int(selection.hash) != int(tss.TPM2_ALG.SHA256):
            raise _reason("pcr_selection", "quote selects a bank other than SHA-256")
        bitmap = bytes(selection.pcrSelect)[: int(selection.sizeofSelect)]
        order.extend(i for i in range(len(bitmap) * 8) if bitmap[i // 8] >> (i % 8) & 1)
    missing = sorted(set(required_pcrs) - set(order))
    if missing:
        raise _reason("pcr_selection", f"quote does not cover required PCRs {missing}")
    if set(evidence.pcrs) != set(order) or any(len(v) != 32 for v in evidence.pcrs.values()):
        raise _reason("pcr_digest_mismatch", "PCR values do not match the quoted selection")
    digest = hashlib.sha256(b"".join(evidence.pcrs[i] for i in order)).digest()
    if not hmac.compare_digest(digest, bytes(info.pcrDigest)):
        raise _reason("pcr_digest_mismatch", "PCR values do not hash to the quoted digest")
    clock = attest.clockInfo
    if not int(clock.safe):
        raise _reason("clock_unsafe", "TPM clock is not marked safe")
    reset, restart, ticks = int(clock.resetCount), int(clock.restartCount), int(clock.clock)
    if previous:
        last = (previous.get("reset_count", 0), previous.get("restart_count", 0), previous.get("clock", 0))
        if reset < last[0] or (reset == last[0] and (restart < last[1] or (restart == last[1] and ticks < last[2]))):
            raise _reason("tpm_clock_rollback", "TPM reset, restart counters or clock went backwards (state rollback)")
    return QuoteCheck(
        pcrs=dict(evidence.pcrs),
        reset_count=reset,
        restart_count=restart,
        clock=ticks,
        firmware_version=int(attest.firmwareVersion),
        signer_name=bytes(attest.qualifiedSigner),
    )
