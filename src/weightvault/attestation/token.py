"""``attestation-token``: accept signed results ("passports") from external verifiers.

This is how results of CoCo Trustee (EAR), Azure Attestation, Google Confidential
Space and NVIDIA NRAS reach a weightvault policy. Each trusted issuer is pinned
in configuration with its JWKS, allowed algorithms, maximum token age, and where
the token carries the session's report data. A token is accepted only if:

* its ``iss`` names a configured issuer and its signature verifies under that
  issuer's keys with an allowed algorithm (``none`` and HMAC algorithms never are);
* it has ``iat`` and ``exp``, is unexpired, and was issued at most ``max_age_seconds`` ago;
* the configured nonce claim equals this session's report data.

Claims are flattened into ``token.<path>`` (strings, integers, booleans and lists
of strings), plus ``token.issuer``: always the configured issuer name, never a claim
of the token. The device a token names (``device_claim``) is bound to the result only
for devices registered with kind ``token``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jwt

from weightvault.attestation.interfaces import (
    AttestationContext,
    AttestationResult,
    BaseVerifier,
    ClaimValue,
    evidence_digest,
)
from weightvault.encoding import parse_json_object
from weightvault.errors import ConfigError, EvidenceError

__all__ = ["TOKEN_ID", "AttestationTokenVerifier", "TokenIssuer"]

TOKEN_ID: Final = "attestation-token"  # noqa: S105 - an evidence type, not a secret
_ASYMMETRIC: Final = frozenset(
    {"ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
_MAX_TOKEN: Final = 64 << 10


@dataclass(frozen=True, slots=True)
class TokenIssuer:
    """A trusted external verifier."""

    name: str
    issuer: str
    jwks: Mapping[str, Any]
    algorithms: tuple[str, ...]
    max_age_seconds: int = 300
    nonce_claim: str = "eat_nonce"
    nonce_encoding: str = "base64url"
    audience: str | None = None
    device_claim: str | None = None
    leeway_seconds: int = 5
    _keys: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        bad = set(self.algorithms) - _ASYMMETRIC
        if not self.algorithms or bad:
            raise ConfigError(f"issuer {self.name}: algorithms must be asymmetric JWS algorithms, not {sorted(bad)}")
        if self.nonce_encoding not in ("base64url", "base64", "hex"):
            raise ConfigError(f"issuer {self.name}: nonce_encoding must be base64url, base64 or hex")
        try:
            keyset = jwt.PyJWKSet.from_dict(dict(self.jwks))
        except jwt.PyJWTError as exc:
            raise ConfigError(f"issuer {self.name}: bad JWKS ({exc})") from exc
        for key in keyset.keys:
            self._keys[key.key_id or ""] = key

    @classmethod
    def from_config(cls, raw: Mapping[str, Any], base: Path) -> TokenIssuer:
        try:
            jwks = parse_json_object((base / raw["jwks_file"]).read_bytes(), "jwks_file", ConfigError)
            return cls(
                name=str(raw["name"]),
                issuer=str(raw["issuer"]),
                jwks=jwks,
                algorithms=tuple(raw["algorithms"]),
                max_age_seconds=int(raw.get("max_age_seconds", 300)),
                nonce_claim=str(raw.get("nonce_claim", "eat_nonce")),
                nonce_encoding=str(raw.get("nonce_encoding", "base64url")),
                audience=raw.get("audience"),
                device_claim=raw.get("device_claim"),
            )
        except (KeyError, OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"attestation-token issuer configuration: {exc}") from exc

    def key_for(self, kid: str | None) -> Any:
        if kid is not None and kid in self._keys:
            return self._keys[kid]
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise EvidenceError(f"token key id {kid!r} is not in issuer {self.name}'s key set")


def _path(doc: Mapping[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _decode_nonce(value: object, encoding: str) -> bytes:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise EvidenceError("token nonce claim is missing or not a string")
    try:
        if encoding == "hex":
            return bytes.fromhex(value)
        if encoding == "base64":
            return base64.b64decode(value, validate=True)
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, binascii.Error) as exc:
        raise EvidenceError("token nonce claim is not validly encoded") from exc


def _flatten(doc: Mapping[str, Any], prefix: str, out: dict[str, ClaimValue], depth: int = 0) -> None:
    if depth > 6:
        return
    for key, value in doc.items():
        name = f"{prefix}.{key}"
        if isinstance(value, bool | int | str):
            out[name] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[name] = list(value)
        elif isinstance(value, Mapping):
            _flatten(value, name, out, depth + 1)


class AttestationTokenVerifier(BaseVerifier):
    """Verifies JWT/EAR attestation results from pinned issuers."""

    id = TOKEN_ID
    claim_prefix = "token."
    #: Devices registered with kind "token" are named by the issuer's device claim.
    device_kinds = frozenset({"token"})

    def __init__(self, issuers: Sequence[TokenIssuer]) -> None:
        if not issuers:
            raise ConfigError("attestation-token needs at least one trusted issuer")
        self._issuers = {i.issuer: i for i in issuers}

    def appraise(self, evidence: Mapping[str, Any], context: AttestationContext) -> AttestationResult:
        if set(evidence) != {"type", "token"} or not isinstance(evidence["token"], str):
            raise EvidenceError("attestation-token evidence is {type, token}")
        token = evidence["token"]
        if len(token) > _MAX_TOKEN:
            raise EvidenceError("token too large")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(
                token,
                options={"verify_signature": False, "verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.PyJWTError as exc:
            raise EvidenceError("malformed attestation token") from exc
        issuer = self._issuers.get(str(unverified.get("iss")))
        if issuer is None:
            raise EvidenceError("attestation token from an untrusted issuer")
        alg = header.get("alg")
        if alg not in issuer.algorithms:
            raise EvidenceError(f"attestation token algorithm {alg!r} is not allowed for {issuer.name}")
        key = issuer.key_for(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(issuer.algorithms),
                issuer=issuer.issuer,
                audience=issuer.audience,
                # Times are checked below against the context's clock, not the wall clock.
                options={
                    "require": ["iss", "iat", "exp"],
                    "verify_aud": issuer.audience is not None,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise EvidenceError(f"attestation token rejected ({type(exc).__name__})") from exc
        times = [claims.get("iat"), claims.get("exp"), claims.get("nbf", claims.get("iat"))]
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in times):
            raise EvidenceError("attestation token times must be integers")
        iat, exp, nbf = (int(t) for t in times)  # type: ignore[arg-type]
        leeway = issuer.leeway_seconds
        if exp <= context.now - leeway:
            raise EvidenceError("attestation token expired")
        if context.now - iat > issuer.max_age_seconds or iat > context.now + leeway or nbf > context.now + leeway:
            raise EvidenceError("attestation token is too old or from the future")
        nonce = _decode_nonce(_path(claims, issuer.nonce_claim), issuer.nonce_encoding)
        if not hmac.compare_digest(nonce, context.expected_report_data):
            raise EvidenceError("attestation token is not bound to this challenge, tenant and key")
        flat: dict[str, ClaimValue] = {}
        _flatten(claims, "token", flat)
        # Set last: a passport claim named "issuer" must not pose as the configured issuer's name.
        flat["token.issuer"] = issuer.name
        device = _path(claims, issuer.device_claim) if issuer.device_claim else None
        return AttestationResult(self.id, flat, evidence_digest(evidence), device if isinstance(device, str) else None)
