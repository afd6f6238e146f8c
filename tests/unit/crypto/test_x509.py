"""EK certificate chain verification: each way a chain can be wrong is refused."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from weightvault.crypto.x509 import ChainError, public_key_fingerprint, verify_chain, verify_tpm_signature

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_name: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    valid: tuple[datetime.datetime, datetime.datetime] = (NOW - DAY, NOW + 365 * DAY),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class PKI:
    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.mid_key = ec.generate_private_key(ec.SECP256R1())
        self.ek_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert("Root", self.root_key, "Root", self.root_key, ca=True)
        self.mid = _cert("Mid", self.mid_key, "Root", self.root_key, ca=True)
        self.ek = _cert("EK", self.ek_key, "Mid", self.mid_key, ca=False)


def test_a_good_chain_verifies_through_an_intermediate() -> None:
    pki = PKI()
    leaf = verify_chain(_der(pki.ek), [_pem(pki.mid)], [_pem(pki.root)], NOW)
    assert "ecc" == public_key_fingerprint(leaf)[0]


def test_missing_intermediate_or_foreign_root() -> None:
    pki, other = PKI(), PKI()
    with pytest.raises(ChainError, match="no trusted issuer"):
        verify_chain(_der(pki.ek), [], [_pem(pki.root)], NOW)
    with pytest.raises(ChainError, match="no trusted issuer"):
        verify_chain(_der(pki.ek), [_pem(pki.mid)], [_pem(other.root)], NOW)
    with pytest.raises(ChainError, match="no trust roots"):
        verify_chain(_der(pki.ek), [_pem(pki.mid)], [], NOW)


def test_same_names_other_keys_do_not_verify() -> None:
    """An impostor intermediate named like the real one (but with another key) is not an issuer."""
    pki = PKI()
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    impostor = _cert("Mid", impostor_key, "Root", impostor_key, ca=True)  # self-signed, not by Root
    ek = _cert("EK", pki.ek_key, "Mid", impostor_key, ca=False)
    with pytest.raises(ChainError):
        verify_chain(_der(ek), [_pem(impostor)], [_pem(pki.root)], NOW)


def test_a_leaf_cannot_issue() -> None:
    """A non-CA certificate in the middle breaks the chain even when its signature is good."""
    pki = PKI()
    not_ca = _cert("Mid", pki.mid_key, "Root", pki.root_key, ca=False)
    with pytest.raises(ChainError, match="no trusted issuer"):
        verify_chain(_der(pki.ek), [_pem(not_ca)], [_pem(pki.root)], NOW)


@pytest.mark.parametrize("which", ["ek", "mid"])
@pytest.mark.parametrize("window", [(NOW - 10 * DAY, NOW - DAY), (NOW + DAY, NOW + 10 * DAY)])
def test_certificates_outside_their_validity(which: str, window: tuple[datetime.datetime, datetime.datetime]) -> None:
    pki = PKI()
    mid = _cert("Mid", pki.mid_key, "Root", pki.root_key, ca=True, valid=window) if which == "mid" else pki.mid
    ek = _cert("EK", pki.ek_key, "Mid", pki.mid_key, ca=False, valid=window) if which == "ek" else pki.ek
    with pytest.raises(ChainError, match="validity"):
        verify_chain(_der(ek), [_pem(mid)], [_pem(pki.root)], NOW)


def test_malformed_certificates() -> None:
    pki = PKI()
    with pytest.raises(ChainError, match="malformed"):
        verify_chain(_der(pki.ek)[:-10], [_pem(pki.mid)], [_pem(pki.root)], NOW)
    with pytest.raises(ChainError, match="malformed"):
        verify_chain(_der(pki.ek), [b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"], [], NOW)


def test_a_long_loop_ends() -> None:
    """Two CAs that certify each other never reach the root: the depth limit stops the walk."""
    a_key, b_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    a = _cert("A", a_key, "B", b_key, ca=True)
    b = _cert("B", b_key, "A", a_key, ca=True)
    ek = _cert("EK", a_key, "A", a_key, ca=False)
    root_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ChainError, match="too long"):
        verify_chain(_der(ek), [_pem(a), _pem(b)], [_pem(_cert("R", root_key, "R", root_key, ca=True))], NOW)


def test_signature_schemes() -> None:
    message = b"quote"
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pem = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = ec_key.sign(message, ec.ECDSA(hashes.SHA256()))
    assert verify_tpm_signature(ec_pem, "ecdsa", signature, message)
    assert not verify_tpm_signature(ec_pem, "ecdsa", signature, message + b"!")
    assert not verify_tpm_signature(ec_pem, "rsassa", signature, message)  # scheme and key type must agree
    assert not verify_tpm_signature(b"not a key", "ecdsa", signature, message)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    from cryptography.hazmat.primitives.asymmetric import padding

    pss = rsa_key.sign(message, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    assert verify_tpm_signature(rsa_pem, "rsapss", pss, message)
    assert not verify_tpm_signature(rsa_pem, "rsassa", pss, message)
