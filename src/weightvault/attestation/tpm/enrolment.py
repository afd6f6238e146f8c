"""Enrolment checks (Keylime style): EK certificate chain, EK key match, AK attributes, credential.

The broker enrols a device in two steps:

1. ``check_enrolment``: the EK certificate chains to a configured manufacturer root
   (never skipped: tests use swtpm's local CA as the root), the EK public area holds
   the certificate's key, and the AK is a restricted signing key fixed to the TPM;
   then ``make_credential`` encrypts a random secret to the EK, bound to the AK's name;
2. the device answers with ``TPM2_ActivateCredential``, which only the TPM that holds
   both the EK and the AK can do; until then the device stays ``pending``.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from weightvault.attestation.tpm.quote import ak_problems, parse_public
from weightvault.crypto.x509 import ChainError, public_key_fingerprint, verify_chain
from weightvault.errors import QuoteError

__all__ = ["EnrolmentFacts", "check_enrolment", "make_credential"]


@dataclass(frozen=True, slots=True)
class EnrolmentFacts:
    ak_name: bytes
    ek_issuer: str


def _ek_numbers(public: Any) -> tuple[str, int, int]:
    import tpm2_pytss

    area = public.publicArea
    if int(area.type) == int(tpm2_pytss.TPM2_ALG.RSA):
        exponent = int(area.parameters.rsaDetail.exponent) or 65537
        return "rsa", int.from_bytes(bytes(area.unique.rsa), "big"), exponent
    if int(area.type) == int(tpm2_pytss.TPM2_ALG.ECC):
        return "ecc", int.from_bytes(bytes(area.unique.ecc.x), "big"), int.from_bytes(bytes(area.unique.ecc.y), "big")
    raise QuoteError("EK is neither RSA nor ECC")


def check_enrolment(
    ek_cert: bytes,
    ek_public: bytes,
    ak_public: bytes,
    *,
    roots: Sequence[bytes],
    intermediates: Sequence[bytes] = (),
    now: datetime.datetime,
) -> EnrolmentFacts:
    """Check an enrolment request.

    Raises:
        QuoteError: the EK certificate does not chain to a root, the EK does not match
            it, or the AK does not qualify as an attestation key.
    """
    try:
        leaf = verify_chain(ek_cert, intermediates, roots, now)
    except ChainError as exc:
        raise QuoteError(f"EK certificate rejected: {exc}") from exc
    ek = parse_public(ek_public)
    if public_key_fingerprint(leaf) != _ek_numbers(ek):
        raise QuoteError("EK public key does not match the EK certificate")
    ak = parse_public(ak_public)
    problems = ak_problems(ak)
    if problems:
        raise QuoteError("not an attestation key: " + "; ".join(problems))
    return EnrolmentFacts(bytes(ak.get_name()), leaf.issuer.rfc4514_string())


def make_credential(ek_public: bytes, ak_name: bytes, secret: bytes) -> tuple[bytes, bytes]:
    """TPM2_MakeCredential in software: (marshalled TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET)."""
    import tpm2_pytss
    from tpm2_pytss.utils import make_credential as tss_make_credential

    ek = parse_public(ek_public)
    blob, encrypted = tss_make_credential(ek, secret, tpm2_pytss.TPM2B_NAME(ak_name))
    return bytes(blob.marshal()), bytes(encrypted.marshal())
