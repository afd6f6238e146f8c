"""X.509 for TPM endorsement-key certificates, and verification of TPM signatures (pyca/cryptography).

EK certificates are not TLS certificates: they have no DNS names, often critical
TPM-specific extensions and no key usage the web PKI profile accepts, so pyca's
web verifier does not apply. :func:`verify_chain` checks what matters here, in
order: every certificate is within its validity period; each issuer is a CA
(basicConstraints ca=true) that directly signed the certificate below it; and the
chain ends at one of the configured roots, compared byte for byte.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = [
    "ChainError",
    "common_name",
    "is_ca",
    "issued_by",
    "load_certificates",
    "load_crl",
    "public_key_fingerprint",
    "verify_chain",
    "verify_ecdsa_sha384",
    "verify_tpm_signature",
]

_MAX_DEPTH = 6


class ChainError(ValueError):
    """A certificate chain does not verify (the message says why)."""


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Certificates from PEM (one or more) or a single DER certificate."""
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL in PEM or DER. Raises ValueError when it does not parse."""
    if data.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def is_ca(cert: x509.Certificate) -> bool:
    """Whether ``cert`` says it is a CA (basicConstraints ca=true)."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Whether ``parent`` is ``child``'s issuer by name and its key signed ``child``."""
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def common_name(name: x509.Name) -> str:
    """The first common name in ``name``, or ""."""
    names = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def verify_ecdsa_sha384(key: ec.EllipticCurvePublicKey, r: int, s: int, signed: bytes) -> bool:
    """Whether (r, s) is an ECDSA / SHA-384 signature of ``signed`` under ``key`` (SNP and GPU reports)."""
    try:
        key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return False
    return True


def verify_chain(
    leaf_der: bytes, intermediates: Sequence[bytes], roots: Sequence[bytes], now: datetime.datetime
) -> x509.Certificate:
    """Verify ``leaf_der`` up to a root in ``roots``; returns the parsed leaf.

    Raises:
        ChainError: malformed, expired or not yet valid certificates, a non-CA issuer,
            a bad signature, or no path to a configured root.
    """
    try:
        leaf = x509.load_der_x509_certificate(leaf_der)
        pool = [c for blob in intermediates for c in load_certificates(blob)]
        anchors = [c for blob in roots for c in load_certificates(blob)]
    except ValueError as exc:
        raise ChainError(f"malformed certificate: {exc}") from exc
    if not anchors:
        raise ChainError("no trust roots configured")
    anchor_der = {a.public_bytes(serialization.Encoding.DER) for a in anchors}
    current = leaf
    for _ in range(_MAX_DEPTH):
        if not current.not_valid_before_utc <= now <= current.not_valid_after_utc:
            raise ChainError(f"certificate {current.subject.rfc4514_string()} is outside its validity period")
        if current.public_bytes(serialization.Encoding.DER) in anchor_der and current is not leaf:
            return leaf
        candidates = [c for c in [*pool, *anchors] if c.subject == current.issuer]
        for issuer in candidates:
            if is_ca(issuer) and issued_by(current, issuer):
                current = issuer
                break
        else:
            raise ChainError(f"no trusted issuer for {current.subject.rfc4514_string()}")
    raise ChainError("certificate chain is too long")


def public_key_fingerprint(cert: x509.Certificate) -> tuple[str, int, int]:
    """(kind, a, b): ("rsa", n, e) or ("ecc", x, y) of a certificate's public key."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return "rsa", numbers.n, numbers.e
    if isinstance(key, ec.EllipticCurvePublicKey):
        point = key.public_numbers()
        return "ecc", point.x, point.y
    raise ChainError("EK certificate key is neither RSA nor ECC")


def verify_tpm_signature(public_pem: bytes, scheme: str, signature: bytes, message: bytes) -> bool:
    """Verify a TPM signature (ECDSA DER, RSASSA or RSAPSS) with SHA-256 over ``message``."""
    try:
        key = serialization.load_pem_public_key(public_pem)
        if scheme == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif scheme == "rsassa" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif scheme == "rsapss" and isinstance(key, rsa.RSAPublicKey):
            key.verify(
                signature, message, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO), hashes.SHA256()
            )
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
