"""Custody ceremonies: unseal, verify-all and rekey, as signed messages and a state machine.

A ceremony collects shares of one share set. Its *terms* are fixed when it opens
and hashed into its id::

    ceremony_id = SHA-256(JCS({"purpose": "weightvault/v1 custody-ceremony", "broker", "kind",
                               "set", "params", "nonce", "expires_at", "key"}))

``key`` is the ceremony's own ephemeral HPKE public key (ML-KEM-768 + X25519):
custodians encrypt their shares to it, so a share never crosses the network in
the clear, even inside TLS, and a share sent to one ceremony cannot be read by
another. For a rekey, ``params`` holds the new threshold and the new custodians'
public keys, so every custodian's signature covers exactly the parameters they
saw: the bait-and-switch of hashicorp/vault#844 (cancel, re-open with other
recipient keys, collect shares) needs a signature the attacker cannot make.

A submission is::

    sealed    = HPKE(ceremony key, share, info = "weightvault/v1 custody-submit" ‖ 0x00 ‖ JCS({ceremony, custodian}))
    signature = Ed25519(custodian, "weightvault/v1 custody-submit\\n" ceremony_id "\\n" custodian "\\n"
                                    SHA-256(sealed) "\\n")

and the broker checks, in order: the ceremony is open and unexpired; the
custodian belongs to the set and has not submitted; the signature; the
decryption; the share's commitment (so a corrupted share is refused *at
submission* and attributed). Only a custodian's signature over
``"weightvault/v1 custody-cancel\\n" ceremony_id "\\n" custodian "\\n"`` cancels.

A *restore* ceremony is run by ``weightvault broker restore`` itself, not by a broker:
it rebuilds the root key of a broker under custody to open that broker's backup, whose
identity (broker, time, log size, payload digest) is its ``params``, so a custodian's
signature covers exactly the backup they agreed to open. With no network between the
restoring machine and the custodians, the terms and the submissions travel as files
(:class:`Submission`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from weightvault.crypto.keywrap import InvalidTag, hpke_generate, hpke_open, hpke_seal
from weightvault.crypto.secret import SecretBytes, random_bytes
from weightvault.custody import shamir
from weightvault.custody.person import KEM, PersonKey, PersonPublic
from weightvault.custody.shares import ShareSet, check_consistent, key_check_value
from weightvault.encoding import canonical_json, parse_json_object
from weightvault.errors import CeremonyError, ShareError

__all__ = [
    "KINDS",
    "Ceremony",
    "CeremonyTerms",
    "Submission",
    "cancel_message",
    "prepare_submission",
    "rekey_params",
    "submission_message",
]

KINDS: Final = ("unseal", "verify", "rekey", "restore")
SUBMISSION_KIND: Final = "weightvault.custody-submission"
_MAX_SUBMISSION: Final = 64 << 10
MAX_TTL_SECONDS: Final = 3600
_SUBMIT: Final = b"weightvault/v1 custody-submit"
_CANCEL: Final = b"weightvault/v1 custody-cancel"


@dataclass(frozen=True, slots=True)
class CeremonyTerms:
    """Everything a custodian agrees to by signing a submission."""

    broker: str
    kind: str
    set_id: str
    params: Mapping[str, Any]
    nonce: str
    expires_at: int
    key: bytes

    def _fields(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "kind": self.kind,
            "set": self.set_id,
            "params": dict(self.params),
            "nonce": self.nonce,
            "expires_at": self.expires_at,
            "key": self.key.hex(),
        }

    @property
    def id(self) -> str:
        """SHA-256 over the canonical JSON of every term and the purpose."""
        return hashlib.sha256(
            canonical_json({"purpose": "weightvault/v1 custody-ceremony", **self._fields()})
        ).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self._fields()}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> CeremonyTerms:
        """Rebuild terms received from a broker and check that they hash to the id it claims.

        Raises:
            CeremonyError: malformed terms, or an id that does not match them.
        """
        try:
            terms = cls(
                str(doc["broker"]),
                str(doc["kind"]),
                str(doc["set"]),
                dict(doc["params"]),
                str(doc["nonce"]),
                int(doc["expires_at"]),
                bytes.fromhex(str(doc["key"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CeremonyError("malformed ceremony terms") from exc
        if terms.kind not in KINDS:
            raise CeremonyError(f"unknown ceremony kind {terms.kind!r}")
        if "id" in doc and not hmac.compare_digest(str(doc["id"]), terms.id):
            raise CeremonyError("the ceremony id does not match its terms")
        return terms


def rekey_params(threshold: int, custodians: list[PersonPublic]) -> dict[str, Any]:
    return {"threshold": threshold, "custodians": [c.to_json() for c in custodians]}


def parse_rekey_params(params: Mapping[str, Any]) -> tuple[int, list[PersonPublic]]:
    try:
        return int(params["threshold"]), [PersonPublic.from_json(c) for c in params["custodians"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CeremonyError("rekey parameters are {threshold, custodians}") from exc


def _bind(ceremony_id: str, custodian: str) -> bytes:
    return canonical_json({"ceremony": ceremony_id, "custodian": custodian})


def submission_message(ceremony_id: str, custodian: str, sealed: bytes) -> bytes:
    digest = hashlib.sha256(sealed).hexdigest()
    return b"\n".join([_SUBMIT, ceremony_id.encode(), custodian.encode(), digest.encode(), b""])


def cancel_message(ceremony_id: str, custodian: str) -> bytes:
    return b"\n".join([_CANCEL, ceremony_id.encode(), custodian.encode(), b""])


def prepare_submission(key: PersonKey, terms: CeremonyTerms, share: bytes) -> tuple[bytes, bytes]:
    """The custodian's side: (sealed share, signature) for these terms."""
    sealed = hpke_seal(KEM, terms.key, share, _SUBMIT + b"\x00" + _bind(terms.id, key.id))
    return sealed, key.sign(submission_message(terms.id, key.id, sealed))


@dataclass(frozen=True, slots=True)
class Submission:
    """One custodian's share for one ceremony, as a file: what :func:`prepare_submission` made."""

    ceremony: str
    custodian: str
    sealed: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        doc = {
            "kind": SUBMISSION_KIND,
            "version": 1,
            "ceremony": self.ceremony,
            "custodian": self.custodian,
            "sealed": base64.b64encode(self.sealed).decode(),
            "signature": base64.b64encode(self.signature).decode(),
        }
        return canonical_json(doc) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Submission:
        """Raises CeremonyError on anything but a submission file (size bounded)."""
        if len(data) > _MAX_SUBMISSION:
            raise CeremonyError("not a submission file (too large)")
        try:
            doc = parse_json_object(data, "not a submission file", CeremonyError)
            if doc.get("kind") != SUBMISSION_KIND or doc.get("version") != 1:
                raise ValueError("not a submission file")
            return cls(
                str(doc["ceremony"]),
                str(doc["custodian"]),
                base64.b64decode(str(doc["sealed"]), validate=True),
                base64.b64decode(str(doc["signature"]), validate=True),
            )
        except (KeyError, TypeError, ValueError) as exc:  # binascii.Error and JSONDecodeError are ValueErrors
            raise CeremonyError(f"not a submission file ({exc})") from exc


@dataclass
class Ceremony:
    """A ceremony in progress. Holds the ceremony's private key and the shares received (in memory only)."""

    terms: CeremonyTerms
    share_set: ShareSet
    _private: SecretBytes
    status: str = "open"
    _shares: dict[str, SecretBytes] = field(default_factory=dict)

    @classmethod
    def open(
        cls, broker: str, kind: str, share_set: ShareSet, params: Mapping[str, Any], *, now: int, ttl: int
    ) -> Ceremony:
        if kind not in KINDS:
            raise CeremonyError(f"unknown ceremony kind {kind!r}")
        if not 60 <= ttl <= MAX_TTL_SECONDS:
            raise CeremonyError("ceremonies last between 60 seconds and an hour")
        private, public = hpke_generate(KEM)
        terms = CeremonyTerms(broker, kind, share_set.id, dict(params), random_bytes(16).hex(), now + ttl, public)
        return cls(terms, share_set, SecretBytes(private))

    @property
    def id(self) -> str:
        return self.terms.id

    @property
    def needed(self) -> int:
        """Unseal and rekey need the threshold; verify-all needs every custodian."""
        return len(self.share_set.custodians) if self.terms.kind == "verify" else self.share_set.threshold

    @property
    def submitted(self) -> list[str]:
        return sorted(self._shares)

    def _check_open(self, now: int) -> None:
        if self.status != "open":
            raise CeremonyError(f"ceremony {self.id[:16]} is {self.status}")
        if now >= self.terms.expires_at:
            self.expire()
            raise CeremonyError(f"ceremony {self.id[:16]} expired")

    def submit(self, custodian: str, sealed: bytes, signature: bytes, now: int) -> bool:
        """Accept one custodian's share; returns True once enough shares are in.

        Raises:
            CeremonyError: the ceremony is closed or expired.
            ShareError: not a custodian of this set, a second submission, a bad
                signature, a share for another ceremony, or a corrupted share.
        """
        self._check_open(now)
        slot = self.share_set.slot(custodian)
        if slot is None:
            raise ShareError(f"{custodian} is not a custodian of share set {self.share_set.id}")
        if custodian in self._shares:
            raise ShareError(f"{custodian} already submitted a share to this ceremony")
        if not slot.person.verify(signature, submission_message(self.id, custodian, sealed)):
            raise ShareError(f"the submission of {custodian} is not signed by their key for this ceremony")
        try:
            share = hpke_open(KEM, self._private.reveal(), sealed, _SUBMIT + b"\x00" + _bind(self.id, custodian))
        except InvalidTag as exc:
            raise ShareError(f"the share of {custodian} was not encrypted to this ceremony") from exc
        self.share_set.check_share(custodian, share)
        if any(s.reveal()[-1] == share[-1] for s in self._shares.values()):
            raise ShareError("duplicate share x-coordinate")
        self._shares[custodian] = SecretBytes(share)
        return len(self._shares) >= self.needed

    def cancel(self, custodian: str, signature: bytes, now: int) -> None:
        """Cancel on a custodian's signature (of this set, or a new custodian of a rekey).

        Raises:
            CeremonyError: the ceremony is already closed, or the signature is not a custodian's.
        """
        if self.status != "open":
            raise CeremonyError(f"ceremony {self.id[:16]} is {self.status}")
        people = [c.person for c in self.share_set.custodians]
        if self.terms.kind == "rekey":
            people += parse_rekey_params(self.terms.params)[1]
        person = next((p for p in people if p.id == custodian), None)
        if person is None or not person.verify(signature, cancel_message(self.id, custodian)):
            raise CeremonyError("only a custodian's signature can cancel a ceremony")
        self.status = "cancelled"
        self.wipe()

    def expire(self) -> None:
        self.status = "expired"
        self.wipe()

    def finish(self) -> bytes | None:
        """Combine the shares; returns the root key for unseal, rekey and restore, None for verify-all.

        Raises:
            CeremonyError: not enough shares yet.
            ShareError: the shares are inconsistent or reconstruct a key whose KCV differs.
        """
        if self.status != "open" or len(self._shares) < self.needed:
            raise CeremonyError("the ceremony does not have enough shares")
        shares = [s.reveal() for s in self._shares.values()]
        try:
            if self.terms.kind == "verify":
                check_consistent(self.share_set.threshold, shares)
            root = shamir.combine(shares[: self.share_set.threshold])
            if not hmac.compare_digest(key_check_value(root), self.share_set.kcv):
                raise ShareError("the shares reconstruct a key that fails the key-check value")
        finally:
            shares.clear()
            self.status = "done"
            self.wipe()
        return None if self.terms.kind == "verify" else root

    def wipe(self) -> None:
        for share in self._shares.values():
            share.wipe()
        self._private.wipe()
