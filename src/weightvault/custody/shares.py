"""Share sets: the root key split M-of-N, with per-share commitments and a key-check value.

A share set is created by a genesis or a rekey (the *dealer* is the broker that
holds the root key at that moment)::

    shares          = shamir.split(RK, N, M)
    commitment_i    = SHA-256("weightvault/v1 custody-share" ‖ 0x00 ‖ JCS({set, custodian}) ‖ share_i)
    kcv             = HMAC-SHA256(RK, "weightvault/v1 custody-kcv")[:16]
    delivered_i     = HPKE(ML-KEM-768+X25519, custodian_i.hpke, share_i,
                           info = "weightvault/v1 custody-deliver" ‖ 0x00 ‖ JCS({set, custodian}))

A set also names ``backup_key``: the public key that backups of the broker are sealed
to, derived from RK (``broker.keystore.backup_recipient``), so that a broker under
custody can be backed up without its root key and restored only by a quorum.

The commitments, the KCV and the backup key are public (logged in the audit log): for M >= 2 a
single share is uniformly random, so its hash reveals nothing about the root
key, and the KCV is a PRF output that does not help an attacker who lacks RK.
They give what Vault's Shamir lacks (hashicorp/vault#2484): a corrupted or
substituted share is rejected *when it is submitted*, attributed to its
custodian, and a wrong reconstruction is caught before the key is used. Binding
the custodian id into the commitment and the delivery means shares cannot be
swapped between custodians, and binding the set id means a share of an older
set cannot stand in for one of the current set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from weightvault.crypto.keywrap import InvalidTag
from weightvault.crypto.mac import hmac_sha256
from weightvault.crypto.secret import random_bytes
from weightvault.custody import shamir
from weightvault.custody.person import PersonKey, PersonPublic
from weightvault.encoding import canonical_json
from weightvault.errors import ConfigError, ShareError

__all__ = ["CustodianSlot", "ShareSet", "check_consistent", "deal", "key_check_value", "open_delivered"]

_COMMIT: Final = b"weightvault/v1 custody-share\x00"
_DELIVER: Final = b"weightvault/v1 custody-deliver\x00"
_KCV: Final = b"weightvault/v1 custody-kcv"
SECRET_BYTES: Final = 32


def key_check_value(root: bytes) -> str:
    return hmac_sha256(root, [_KCV])[:16].hex()


def _binding(set_id: str, custodian: str) -> bytes:
    return canonical_json({"set": set_id, "custodian": custodian})


def share_commitment(set_id: str, custodian: str, share: bytes) -> str:
    return hashlib.sha256(_COMMIT + _binding(set_id, custodian) + share).hexdigest()


def delivery_info(set_id: str, custodian: str) -> bytes:
    return _DELIVER + _binding(set_id, custodian)


@dataclass(frozen=True, slots=True)
class CustodianSlot:
    person: PersonPublic
    commitment: str

    @property
    def id(self) -> str:
        return self.person.id


@dataclass(frozen=True, slots=True)
class ShareSet:
    """The public record of one split of the root key."""

    id: str
    threshold: int
    custodians: tuple[CustodianSlot, ...]
    kcv: str
    #: The public key backups are sealed to; None in sets dealt before backups under custody existed.
    backup_key: bytes | None = None

    def slot(self, custodian: str) -> CustodianSlot | None:
        return next((c for c in self.custodians if c.id == custodian), None)

    def check_share(self, custodian: str, share: bytes) -> None:
        """Raises ShareError unless ``share`` is exactly the share dealt to ``custodian``."""
        slot = self.slot(custodian)
        if slot is None:
            raise ShareError(f"{custodian} is not a custodian of share set {self.id}")
        if len(share) != SECRET_BYTES + 1 or not hmac.compare_digest(
            share_commitment(self.id, custodian, share), slot.commitment
        ):
            raise ShareError(f"the share of {custodian} does not match its commitment (corrupted or from another set)")

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "threshold": self.threshold,
            "kcv": self.kcv,
            "custodians": [{**c.person.to_json(), "commitment": c.commitment} for c in self.custodians],
        }
        if self.backup_key is not None:
            doc["backup_key"] = base64.b64encode(self.backup_key).decode()
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ShareSet:
        """Raises KeyError, TypeError or ValueError (binascii.Error included) on a malformed document."""
        slots = tuple(CustodianSlot(PersonPublic.from_json(c), str(c["commitment"])) for c in doc["custodians"])
        raw = doc.get("backup_key")
        backup_key = None if raw is None else base64.b64decode(str(raw), validate=True)
        return cls(str(doc["id"]), int(doc["threshold"]), slots, str(doc["kcv"]), backup_key)


def check_parameters(threshold: int, custodians: Sequence[PersonPublic]) -> None:
    ids = [c.id for c in custodians]
    if len(set(ids)) != len(ids):
        raise ConfigError("custodian ids must be distinct")
    if len({c.signing for c in custodians}) != len(custodians):
        raise ConfigError("custodians must have distinct signing keys")
    if not 2 <= threshold <= len(custodians) <= shamir.MAX_PARTS:
        raise ConfigError("need 2 <= threshold <= number of custodians <= 255")


def deal(
    root: bytes, threshold: int, custodians: Sequence[PersonPublic], *, backup_key: bytes | None = None
) -> tuple[ShareSet, dict[str, bytes]]:
    """Split ``root`` to ``custodians``; returns the public set and each custodian's encrypted share.
    ``backup_key`` is the public key derived from ``root`` that the set names for backups.

    Raises:
        ConfigError: bad parameters (see :func:`check_parameters`).
    """
    check_parameters(threshold, custodians)
    set_id = random_bytes(16).hex()
    shares = shamir.split(root, len(custodians), threshold)
    slots = []
    delivered = {}
    for person, share in zip(custodians, shares, strict=True):
        slots.append(CustodianSlot(person, share_commitment(set_id, person.id, share)))
        delivered[person.id] = person.seal(share, delivery_info(set_id, person.id))
    shares.clear()
    return ShareSet(set_id, threshold, tuple(slots), key_check_value(root), backup_key), delivered


def open_delivered(key: PersonKey, set_id: str, delivered: bytes) -> bytes:
    """The custodian's side: decrypt the share the dealer encrypted to them.

    Raises:
        ShareError: the blob is not this person's share of this set.
    """
    try:
        return key.open(delivered, delivery_info(set_id, key.id))
    except InvalidTag as exc:
        raise ShareError(f"this share file is not {key.id}'s share of set {set_id}") from exc


def check_consistent(threshold: int, shares: Sequence[bytes]) -> None:
    """All ``shares`` lie on one polynomial of degree ``threshold - 1``.

    Interpolates from the first ``threshold`` shares at each other share's x and
    compares in constant time; this catches a dealer that handed out shares of
    different polynomials even when every share matches its own commitment.

    Raises:
        ShareError: a share is off the polynomial.
    """
    base = list(shares[:threshold])
    for other in shares[threshold:]:
        predicted = shamir.interpolate(base, other[-1])
        if not hmac.compare_digest(predicted, other[:-1]):
            raise ShareError("the shares do not lie on one polynomial (inconsistent share set)")
