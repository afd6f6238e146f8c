"""The pure TPM quote checks, on quotes built and signed in software.

A software "TPM" (a P-256 key wrapped in a TPM2B_PUBLIC, TPMS_ATTEST structures
marshalled by tpm2-pytss) reaches every check of ``check_quote`` one at a time;
the e2e tests repeat the important ones against swtpm.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import require_tpm2_pytss
from weightvault.errors import QuoteError

require_tpm2_pytss()

import tpm2_pytss as tss  # noqa: E402 - after the skip/fail check

from weightvault.attestation.tpm.quote import QuoteEvidence, ak_problems, check_quote, parse_public  # noqa: E402

PCRS = [0, 1, 2, 3, 4, 5, 6, 7, 23]
REPORT = hashlib.sha256(b"report data").digest()
A = tss.TPMA_OBJECT
AK_ATTRS = A.FIXEDTPM | A.FIXEDPARENT | A.SENSITIVEDATAORIGIN | A.USERWITHAUTH | A.RESTRICTED | A.SIGN_ENCRYPT


@dataclass
class SoftTPM:
    key: ec.EllipticCurvePrivateKey
    public: bytes

    @classmethod
    def make(cls, attrs: Any = AK_ATTRS) -> SoftTPM:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        public = tss.TPM2B_PUBLIC.from_pem(
            pem, objectAttributes=attrs, scheme=tss.TPMT_ASYM_SCHEME(scheme=tss.TPM2_ALG.ECDSA)
        )
        return cls(key, bytes(public.marshal()))

    def sign(self, message: bytes, hash_alg: Any = tss.TPM2_ALG.SHA256) -> bytes:
        r, s = decode_dss_signature(self.key.sign(message, ec.ECDSA(hashes.SHA256())))
        signature = tss.TPMT_SIGNATURE(sigAlg=tss.TPM2_ALG.ECDSA)
        signature.signature.ecdsa.hash = hash_alg
        signature.signature.ecdsa.signatureR = r.to_bytes(32, "big")
        signature.signature.ecdsa.signatureS = s.to_bytes(32, "big")
        return bytes(signature.marshal())


def _pcr_values(indices: list[int]) -> dict[int, bytes]:
    return {i: hashlib.sha256(b"pcr %d" % i).digest() for i in indices}


def make_quote(
    tpm: SoftTPM,
    *,
    report: bytes = REPORT,
    pcrs: dict[int, bytes] | None = None,
    selection: str = "sha256:0,1,2,3,4,5,6,7,23",
    clock: tuple[int, int, int, int] = (5000, 3, 1, 1),
    edit: Callable[[Any], None] | None = None,
) -> QuoteEvidence:
    """A TPMS_ATTEST for ``pcrs`` (default: distinct values for PCRS), signed by ``tpm``."""
    values = _pcr_values(PCRS) if pcrs is None else pcrs
    attest = tss.TPMS_ATTEST(magic=0xFF544347, type=tss.TPM2_ST.ATTEST_QUOTE)
    attest.extraData = tss.TPM2B_DATA(report)
    attest.clockInfo = tss.TPMS_CLOCK_INFO(clock=clock[0], resetCount=clock[1], restartCount=clock[2], safe=clock[3])
    attest.firmwareVersion = 0x2023
    attest.attested.quote.pcrSelect = tss.TPML_PCR_SELECTION.parse(selection)
    attest.attested.quote.pcrDigest = tss.TPM2B_DIGEST(
        hashlib.sha256(b"".join(values[i] for i in sorted(values))).digest()
    )
    if edit is not None:
        edit(attest)
    blob = bytes(attest.marshal())
    return QuoteEvidence(blob, tpm.sign(blob), values)


def test_a_good_quote_passes_and_reports_the_counters() -> None:
    tpm = SoftTPM.make()
    check = check_quote(tpm.public, REPORT, make_quote(tpm), required_pcrs=PCRS)
    assert (5000, 3, 1) == (check.clock, check.reset_count, check.restart_count)
    assert _pcr_values(PCRS) == check.pcrs
    assert 0x2023 == check.firmware_version


def _reason(tpm: SoftTPM, evidence: QuoteEvidence, **kwargs: Any) -> str:
    with pytest.raises(QuoteError) as info:
        check_quote(tpm.public, kwargs.pop("report", REPORT), evidence, required_pcrs=PCRS, **kwargs)
    return str(info.value).split(":", 1)[0]


def test_each_check_names_its_reason() -> None:
    tpm = SoftTPM.make()
    other = SoftTPM.make()
    good = make_quote(tpm)
    assert "signature_invalid" == _reason(other, good)
    assert "report_data_mismatch" == _reason(tpm, good, report=bytes(32))
    assert "not_a_quote" == _reason(tpm, make_quote(tpm, edit=lambda a: setattr(a, "magic", 0x12345678)))
    assert "not_a_quote" == _reason(tpm, make_quote(tpm, edit=lambda a: setattr(a, "type", tss.TPM2_ST.ATTEST_CERTIFY)))
    assert "pcr_selection" == _reason(tpm, make_quote(tpm, pcrs=_pcr_values([0, 7]), selection="sha256:0,7"))
    assert "pcr_selection" == _reason(tpm, make_quote(tpm, selection="sha1:0,1,2,3,4,5,6,7,23"))
    assert "clock_unsafe" == _reason(tpm, make_quote(tpm, clock=(5000, 3, 1, 0)))
    tampered = QuoteEvidence(good.quote, good.signature, {**good.pcrs, 23: bytes(32)})
    assert "pcr_digest_mismatch" == _reason(tpm, tampered)
    fewer = QuoteEvidence(good.quote, good.signature, _pcr_values(PCRS[:-1]))
    assert "pcr_digest_mismatch" == _reason(tpm, fewer)
    sha1_signed = QuoteEvidence(good.quote, tpm.sign(good.quote, tss.TPM2_ALG.SHA1), good.pcrs)
    assert "signature_scheme" == _reason(tpm, sha1_signed)


@pytest.mark.parametrize(
    ("previous", "ok"),
    [
        ({"reset_count": 3, "restart_count": 1, "clock": 4000}, True),
        ({"reset_count": 2, "restart_count": 9, "clock": 9000}, True),
        ({"reset_count": 3, "restart_count": 1, "clock": 6000}, False),
        ({"reset_count": 3, "restart_count": 2, "clock": 0}, False),
        ({"reset_count": 4, "restart_count": 0, "clock": 0}, False),
    ],
)
def test_counters_may_only_move_forward(previous: dict[str, int], ok: bool) -> None:
    tpm = SoftTPM.make()
    quote = make_quote(tpm, clock=(5000, 3, 1, 1))
    if ok:
        check_quote(tpm.public, REPORT, quote, required_pcrs=PCRS, previous=previous)
    else:
        assert "tpm_clock_rollback" == _reason(tpm, quote, previous=previous)


@pytest.mark.parametrize(
    ("drop", "add", "problem"),
    [
        (A.RESTRICTED, 0, "AK is not restricted"),
        (A.FIXEDTPM, 0, "AK is not fixedTPM"),
        (A.SENSITIVEDATAORIGIN, 0, "AK is not sensitiveDataOrigin"),
        (0, A.DECRYPT, "AK can decrypt"),
    ],
)
def test_keys_that_are_not_attestation_keys(drop: Any, add: Any, problem: str) -> None:
    """Only restricted signing keys born in the TPM may sign quotes: anything else could sign forgeries."""
    tpm = SoftTPM.make(attrs=(AK_ATTRS & ~drop) | add)
    assert problem in ak_problems(parse_public(tpm.public))
    assert "ak_not_restricted" == _reason(tpm, make_quote(tpm))


def test_rsa_keys_verify_too() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public = tss.TPM2B_PUBLIC.from_pem(
        pem, objectAttributes=AK_ATTRS, scheme=tss.TPMT_ASYM_SCHEME(scheme=tss.TPM2_ALG.RSASSA)
    )
    blob = bytes(make_quote(SoftTPM.make()).quote)
    from cryptography.hazmat.primitives.asymmetric import padding

    signature = tss.TPMT_SIGNATURE(sigAlg=tss.TPM2_ALG.RSASSA)
    signature.signature.rsassa.hash = tss.TPM2_ALG.SHA256
    signature.signature.rsassa.sig = key.sign(blob, padding.PKCS1v15(), hashes.SHA256())
    evidence = QuoteEvidence(blob, bytes(signature.marshal()), _pcr_values(PCRS))
    assert check_quote(bytes(public.marshal()), REPORT, evidence, required_pcrs=PCRS).pcrs


@settings(max_examples=200, deadline=None)
@given(quote=st.binary(max_size=300), signature=st.binary(max_size=120), cut=st.integers(0, 400))
def test_malformed_input_only_raises_quote_error(quote: bytes, signature: bytes, cut: int) -> None:
    """Random, truncated or trailing-garbage structures fail with QuoteError, never another exception."""
    tpm = SoftTPM.make()
    good = make_quote(tpm)
    for q, s in (
        (quote, signature),
        (good.quote[: cut % len(good.quote)], good.signature),
        (good.quote + (quote[:1] or b"x"), good.signature),
    ):
        with pytest.raises(QuoteError):
            check_quote(tpm.public, REPORT, QuoteEvidence(q, s, good.pcrs), required_pcrs=PCRS)
    with pytest.raises(QuoteError):
        check_quote(quote, REPORT, good, required_pcrs=PCRS)
