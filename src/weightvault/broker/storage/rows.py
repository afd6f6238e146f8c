"""Typed rows: what storage returns. Plain frozen dataclasses, no SQL types, read by name.

Invariant: JSON columns are decoded here, once; binary columns are ``bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ApprovalRequestRow",
    "ApprovalRow",
    "CeremonyRow",
    "ChallengeRow",
    "DeviceRow",
    "KEKRow",
    "ModelRow",
    "PolicyRow",
    "PrincipalRow",
    "ShareSetRow",
    "SigningKeyRow",
]


@dataclass(frozen=True, slots=True)
class PrincipalRow:
    id: str
    tenant_id: str | None
    role: str
    token_hash: bytes
    disabled: bool
    #: When the current token stops authenticating (Unix seconds); None: it does not expire.
    expires_at: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceRow:
    id: str
    kind: str
    status: str
    identity: dict[str, Any]
    state: dict[str, int]
    tenants: frozenset[str]


@dataclass(frozen=True, slots=True)
class ModelRow:
    tenant_id: str
    name: str
    version: str
    policy: str
    kek_version: int
    wrapped_key: bytes
    files: list[dict[str, str]]
    tags: dict[str, str]
    #: Who signed the model (a name of ``[models] signers``), when its signature was checked
    #: at registration; the claim ``model.signer`` of release policies.
    signer: str | None = None
    #: With ``signer``: SHA-256 of the signature and of the manifest it covers (stored with the row).
    signature: tuple[str, str] | None = None

    @property
    def resource(self) -> str:
        return f"{self.tenant_id}/models/{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class PolicyRow:
    tenant_id: str
    name: str
    version: int
    document: dict[str, Any]
    digest: str
    immutable: bool


@dataclass(frozen=True, slots=True)
class ChallengeRow:
    id: str
    tenant_id: str
    principal_id: str
    nonce: bytes
    device_id: str | None
    expires_at: int


@dataclass(frozen=True, slots=True)
class KEKRow:
    """One version of a tenant's key-encryption key, wrapped under the root key."""

    tenant_id: str
    version: int
    wrapped: bytes
    created_at: int
    retired: bool = False


@dataclass(frozen=True, slots=True)
class SigningKeyRow:
    """A result-token signing key, wrapped under the root key."""

    kid: str
    wrapped: bytes
    created_at: int
    retired_at: int | None


@dataclass(frozen=True, slots=True)
class ShareSetRow:
    id: str
    status: str
    document: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CeremonyRow:
    id: str
    terms: dict[str, Any]
    status: str


@dataclass(frozen=True, slots=True)
class ApprovalRequestRow:
    document: dict[str, Any]
    status: str


@dataclass(frozen=True, slots=True)
class ApprovalRow:
    approver: str
    decision: str
    expires_at: int
    signature: bytes
