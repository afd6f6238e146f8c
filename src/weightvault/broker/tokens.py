"""Attestation result tokens: short-lived JWS (EdDSA) bound to the workload's ephemeral key.

Claims::

    iss  broker id             sub  device id, or the principal id when no device
    aud  "weightvault-release" tenant, iat, exp (≤ 5 minutes), jti
    cnf  {"hpke": {"kem": ..., "public": base64}}   the key released keys are sealed to
    wv   {"verifier", "claims", "evidence_digest", "principal", "challenge_id"[, "parts"]}

The workload's HPKE public key is inside the signed token, so a stolen token is
useless: every key released for it is sealed to a private key the thief lacks.
The attested claims travel in the token so that every release re-evaluates the
current policy against them, together with current device status and token age.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt

from weightvault.attestation.interfaces import AttestationResult, ClaimValue
from weightvault.crypto.signing import Ed25519Signer
from weightvault.errors import EvidenceError

__all__ = ["AUDIENCE", "ResultToken", "TokenSigner"]

AUDIENCE: Final = "weightvault-release"


@dataclass(frozen=True, slots=True)
class ResultToken:
    """A verified token's contents."""

    jti: str
    tenant: str
    subject: str
    device_id: str | None
    principal: str
    issued_at: int
    expires_at: int
    kem: str
    public: bytes
    result: AttestationResult
    challenge_id: str


def key_id(signer: Ed25519Signer) -> str:
    """A signing key's id: the first 16 hex digits of SHA-256 of its public key."""
    return hashlib.sha256(signer.public).hexdigest()[:16]


class TokenSigner:
    """Issues and verifies result tokens with the broker's Ed25519 keys.

    Keys rotate: tokens are signed with the newest key and carry its ``kid``;
    verification accepts any key not retired, so tokens issued just before a
    rotation stay valid for their (at most five-minute) life.
    """

    def __init__(self, issuer: str, signer: Ed25519Signer, ttl_seconds: int = 300) -> None:
        if not 1 <= ttl_seconds <= 300:
            raise ValueError("result tokens live at most 5 minutes")
        self.issuer = issuer
        self.ttl_seconds = ttl_seconds
        self._keys: dict[str, tuple[bytes, bytes, bytes]] = {}
        self._lock = threading.Lock()
        self.current_kid = ""
        self.add_key(signer)

    def add_key(self, signer: Ed25519Signer, *, current: bool = True) -> str:
        kid = key_id(signer)
        with self._lock:
            self._keys[kid] = (signer.private_pem(), signer.public_pem(), signer.public)
            if current:
                self.current_kid = kid
        return kid

    def retire(self, kid: str) -> None:
        with self._lock:
            if kid == self.current_kid:
                raise ValueError("cannot retire the current signing key")
            self._keys.pop(kid, None)

    def sync(self, retired: set[str], current: str | None) -> None:
        """Drop the ``retired`` keys and make ``current`` (a key held here) the signing key."""
        with self._lock:
            if current is not None and current in self._keys:
                self.current_kid = current
            for kid in retired:
                if kid != self.current_kid:
                    self._keys.pop(kid, None)

    def public_keys(self) -> dict[str, bytes]:
        """kid -> raw Ed25519 public key of every key that verifies tokens."""
        with self._lock:
            return {kid: raw for kid, (_, _, raw) in self._keys.items()}

    def issue(
        self,
        *,
        tenant: str,
        principal: str,
        result: AttestationResult,
        kem: str,
        public: bytes,
        challenge_id: str,
        now: int,
    ) -> tuple[str, ResultToken]:
        import base64

        jti = uuid.uuid4().hex
        exp = now + self.ttl_seconds
        claims = {
            "iss": self.issuer,
            "sub": result.device_id or principal,
            "aud": AUDIENCE,
            "tenant": tenant,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": jti,
            "cnf": {"hpke": {"kem": kem, "public": base64.b64encode(public).decode()}},
            "wv": {
                "verifier": result.verifier,
                "claims": dict(result.claims),
                "evidence_digest": result.evidence_digest,
                "principal": principal,
                "device_id": result.device_id,
                "challenge_id": challenge_id,
                **({"parts": list(result.parts)} if result.parts else {}),
            },
        }
        with self._lock:
            kid = self.current_kid
            private = self._keys[kid][0]
        token = jwt.encode(claims, private, algorithm="EdDSA", headers={"typ": "wv-result+jwt", "kid": kid})
        parsed = ResultToken(
            jti, tenant, str(claims["sub"]), result.device_id, principal, now, exp, kem, public, result, challenge_id
        )
        return token, parsed

    def verify(self, token: str, *, now: int) -> ResultToken:
        """Verify signature, issuer, audience and lifetime.

        Raises:
            EvidenceError: the token is invalid or expired.
        """
        import base64

        if len(token) > 64 << 10:
            raise EvidenceError("result token too large")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise EvidenceError("invalid result token") from exc
        with self._lock:
            entry = self._keys.get(kid) if isinstance(kid, str) else None
        if entry is None:
            raise EvidenceError("result token signed by an unknown or retired key")
        try:
            claims: Mapping[str, Any] = jwt.decode(
                token,
                entry[1],
                algorithms=["EdDSA"],
                audience=AUDIENCE,
                issuer=self.issuer,
                # Times are checked below against the broker's clock, never the wall clock.
                options={
                    "require": ["iss", "aud", "iat", "exp", "jti", "tenant", "cnf", "wv"],
                    "verify_iat": False,
                    "verify_exp": False,
                    "verify_nbf": False,
                },
                leeway=0,
            )
        except jwt.PyJWTError as exc:
            raise EvidenceError("invalid result token") from exc
        times = [claims.get("exp"), claims.get("nbf", claims.get("iat"))]
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in times):
            raise EvidenceError("malformed result token")
        exp, nbf = (int(t) for t in times)
        if exp <= now:
            raise EvidenceError("result token expired")
        if nbf > now:
            raise EvidenceError("result token not yet valid")
        try:
            wv = claims["wv"]
            cnf = claims["cnf"]["hpke"]
            result_claims: dict[str, ClaimValue] = dict(wv["claims"])
            parts = wv.get("parts", [])
            if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
                raise EvidenceError("malformed result token")
            result = AttestationResult(
                wv["verifier"], result_claims, wv["evidence_digest"], wv.get("device_id"), parts=tuple(parts)
            )
            return ResultToken(
                jti=str(claims["jti"]),
                tenant=str(claims["tenant"]),
                subject=str(claims["sub"]),
                device_id=wv.get("device_id"),
                principal=str(wv["principal"]),
                issued_at=int(claims["iat"]),
                expires_at=exp,
                kem=str(cnf["kem"]),
                public=base64.b64decode(cnf["public"]),
                result=result,
                challenge_id=str(wv["challenge_id"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EvidenceError("malformed result token") from exc
