"""The insecure-sample and attestation-token verifiers, with keys the tests generate."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from weightvault.attestation.interfaces import AttestationContext, report_data
from weightvault.attestation.registry import VerifierRegistry
from weightvault.attestation.token import AttestationTokenVerifier, TokenIssuer
from weightvault.attestation.unsafe import UnsafeSampleVerifier, sample_evidence
from weightvault.errors import ConfigError, EvidenceError

NOW = 1_800_000_000
RD = report_data("c1", b"n" * 32, "acme", "x25519", b"k" * 32)
CTX = AttestationContext("acme", "c1", b"n" * 32, RD, NOW)


def test_report_data_binds_every_field() -> None:
    """Changing the challenge, nonce, tenant, KEM or key changes the report data."""
    variants = [
        report_data("c2", b"n" * 32, "acme", "x25519", b"k" * 32),
        report_data("c1", b"m" * 32, "acme", "x25519", b"k" * 32),
        report_data("c1", b"n" * 32, "globex", "x25519", b"k" * 32),
        report_data("c1", b"n" * 32, "acme", "mlkem768-x25519", b"k" * 32),
        report_data("c1", b"n" * 32, "acme", "x25519", b"j" * 32),
    ]
    assert RD not in variants
    assert 5 == len(set(variants))


def test_sample_verifier_checks_report_data_only() -> None:
    """Sample evidence with the right report data passes, namespaced under sample.*; anything else fails."""
    result = UnsafeSampleVerifier().verify(sample_evidence(RD, {"env": "demo"}, "d1"), CTX)
    assert ("insecure-sample", {"sample.env": "demo"}, "d1") == (result.verifier, dict(result.claims), result.device_id)
    with pytest.raises(EvidenceError, match="report data"):
        UnsafeSampleVerifier().verify(sample_evidence(b"x" * 32), CTX)
    with pytest.raises(EvidenceError):
        UnsafeSampleVerifier().verify({**sample_evidence(RD), "type": "tpm"}, CTX)


def test_registry_refuses_insecure_sample_unless_enabled() -> None:
    """insecure-sample loads only with the explicit switch; unknown ids never load."""
    factories = {"insecure-sample": UnsafeSampleVerifier}
    with pytest.raises(ConfigError, match="tests only"):
        VerifierRegistry.build(["insecure-sample"], factories)
    assert {"insecure-sample"} == VerifierRegistry.build(
        ["insecure-sample"], factories, insecure_sample_enabled=True
    ).ids
    with pytest.raises(ConfigError, match="unknown"):
        VerifierRegistry.build(["magic"], factories)


def _es256() -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = "k1"
    return key, jwk


def _issuer(jwks: dict[str, Any], **kw: Any) -> TokenIssuer:
    return TokenIssuer(name="as", issuer="https://as.test", jwks=jwks, algorithms=("ES256", "EdDSA"), **kw)


def _token(key: Any, alg: str = "ES256", kid: str = "k1", **claims: Any) -> str:
    body = {
        "iss": "https://as.test",
        "iat": NOW - 10,
        "exp": NOW + 300,
        "eat_nonce": base64.urlsafe_b64encode(RD).decode().rstrip("="),
        "dbgstat": "disabled",
        "submods": {"gpu": {"cc": "on"}},
    }
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture
def es256() -> tuple[Any, AttestationTokenVerifier]:
    key, jwk = _es256()
    return key, AttestationTokenVerifier([_issuer({"keys": [jwk]})])


def _verify(verifier: AttestationTokenVerifier, token: str, ctx: AttestationContext = CTX) -> Any:
    return verifier.verify({"type": "attestation-token", "token": token}, ctx)


def test_token_accepted_and_claims_flattened(es256: tuple[Any, AttestationTokenVerifier]) -> None:
    """A fresh token from the pinned issuer with the right nonce passes; claims become token.*."""
    key, verifier = es256
    result = _verify(verifier, _token(key))
    assert "disabled" == result.claims["token.dbgstat"]
    assert "on" == result.claims["token.submods.gpu.cc"]
    assert "as" == result.claims["token.issuer"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"iss": "https://evil.test"}, "untrusted issuer"),
        ({"exp": NOW - 60}, "expired"),
        ({"iat": NOW - 3600}, "too old"),
        ({"iat": None}, "rejected"),
        ({"eat_nonce": base64.urlsafe_b64encode(b"x" * 32).decode()}, "not bound"),
        ({"eat_nonce": None}, "nonce"),
    ],
)
def test_token_rejections(es256: tuple[Any, AttestationTokenVerifier], change: dict[str, Any], match: str) -> None:
    """Wrong issuer, expired, too old, missing iat, wrong or missing nonce are refused."""
    key, verifier = es256
    with pytest.raises(EvidenceError, match=match):
        _verify(verifier, _token(key, **change))


def test_token_signed_by_another_key_or_alg_none(es256: tuple[Any, AttestationTokenVerifier]) -> None:
    """A token signed by an unknown key, with alg none, or HS256 with the public key as secret is refused."""
    _, verifier = es256
    other, _ = _es256()
    with pytest.raises(EvidenceError):
        _verify(verifier, _token(other))
    unsigned = jwt.encode({"iss": "https://as.test", "iat": NOW, "exp": NOW + 60}, None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(EvidenceError, match="algorithm"):
        _verify(verifier, unsigned)
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "k1"}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps({"iss": "https://as.test"}).encode()).rstrip(b"=")
    with pytest.raises(EvidenceError):
        _verify(verifier, (header + b"." + payload + b".c2ln").decode())


def test_issuer_refuses_symmetric_algorithms() -> None:
    """Configuring HS256 for an issuer is a configuration error."""
    _, jwk = _es256()
    with pytest.raises(ConfigError):
        TokenIssuer(name="as", issuer="i", jwks={"keys": [jwk]}, algorithms=("HS256",))


def test_eddsa_issuer_and_device_claim() -> None:
    """EdDSA tokens work and the configured device claim becomes the result's device id."""
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(serialization.load_pem_public_key(pem)))  # type: ignore[arg-type]
    jwk["kid"] = "ed"
    verifier = AttestationTokenVerifier([_issuer({"keys": [jwk]}, device_claim="ueid")])
    result = _verify(verifier, _token(key, alg="EdDSA", kid="ed", ueid="gpu-0042"))
    assert "gpu-0042" == result.device_id
