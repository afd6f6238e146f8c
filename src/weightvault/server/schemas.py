"""Request bodies of the broker API: pydantic models in strict mode that forbid unknown fields."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AlertRequest",
    "ApprovalOnly",
    "ApprovalPolicyRequest",
    "ApprovalRequestBody",
    "ApprovalSignature",
    "AttestRequest",
    "CeremonyCancel",
    "CeremonyRequest",
    "ChallengeRequest",
    "CredentialRequest",
    "DeviceRequest",
    "DeviceTenantsRequest",
    "EnrolRequest",
    "ExportRequest",
    "HPKEKey",
    "HoldRequest",
    "ModelRequest",
    "PolicyRequest",
    "PrincipalRequest",
    "RefsetRequest",
    "ReleaseRequest",
    "ReleaseSpec",
    "ReportRequest",
    "RetireRequest",
    "ShareSubmission",
    "TenantRequest",
]

_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)


class HPKEKey(BaseModel):
    model_config = _STRICT
    kem: str = Field(max_length=32)
    public: str = Field(max_length=4096)


class ReleaseSpec(BaseModel):
    model_config = _STRICT
    resource: str = Field(max_length=256)
    tensors: dict[str, list[int]] | None = None
    approval: str | None = Field(default=None, max_length=64)


class ChallengeRequest(BaseModel):
    model_config = _STRICT
    device_id: str | None = Field(default=None, max_length=64)


class AttestRequest(BaseModel):
    model_config = _STRICT
    challenge_id: str = Field(max_length=64)
    hpke: HPKEKey
    evidence: dict[str, Any]
    release: ReleaseSpec | None = None


class ReleaseRequest(BaseModel):
    model_config = _STRICT
    token: str = Field(max_length=65536)
    resource: str = Field(max_length=256)
    tensors: dict[str, list[int]] | None = None
    approval: str | None = Field(default=None, max_length=64)


class ReportRequest(BaseModel):
    """A sandbox's reports; each event's own schema is checked by the broker (broker.reports)."""

    model_config = _STRICT
    events: list[dict[str, Any]] = Field(min_length=1, max_length=256)


class AlertRequest(BaseModel):
    """A sentinel's alert (docs/sentinel.md): the broker checks the evidence is in the log."""

    model_config = ConfigDict(strict=False, extra="forbid", frozen=True)
    ts: int = Field(ge=0)
    detector: str = Field(min_length=1, max_length=32)
    rule: str = Field(min_length=1, max_length=64)
    family: str = Field(min_length=1, max_length=32, pattern=r"^[a-z_]+$")
    severity: str = Field(pattern=r"^(low|medium|high|critical)$")
    score: float = Field(ge=0, le=1)
    tenant: str = Field(min_length=1, max_length=64)
    actors: list[str] = Field(default_factory=list, max_length=32)
    devices: list[str] = Field(default_factory=list, max_length=32)
    keys: list[str] = Field(default_factory=list, max_length=32)
    resources: list[str] = Field(default_factory=list, max_length=32)
    evidence: list[int] = Field(max_length=64)
    summary: str = Field(default="", max_length=300)


class HoldRequest(BaseModel):
    """A containment hold: a sentinel cites the alert (by log index) whose evidence names the target."""

    model_config = _STRICT
    kind: str = Field(pattern=r"^(principal|gateway_key|device|model)$")
    target: str = Field(min_length=1, max_length=256)
    alert_index: int | None = Field(default=None, ge=0)
    rule: str = Field(min_length=1, max_length=64)


class TenantRequest(BaseModel):
    model_config = _STRICT
    id: str = Field(max_length=64)


class PrincipalRequest(BaseModel):
    model_config = _STRICT
    id: str = Field(max_length=64)
    role: str = Field(max_length=32)
    tenant: str | None = Field(default=None, max_length=64)
    #: Seconds the token works (at most the role's [principals] token_max_age_days); none: that maximum.
    expires_in: int | None = Field(default=None, ge=1, le=10 * 365 * 86400)


class TokenRequest(BaseModel):
    model_config = _STRICT
    expires_in: int | None = Field(default=None, ge=1, le=10 * 365 * 86400)


class DeviceRequest(BaseModel):
    model_config = _STRICT
    id: str = Field(max_length=64)
    kind: str = Field(max_length=32)
    tenants: list[str] = Field(max_length=64)
    identity: dict[str, Any] = Field(default_factory=dict)
    approval: str | None = Field(default=None, max_length=64)


class EnrolRequest(BaseModel):
    model_config = _STRICT
    id: str = Field(max_length=64)
    tenants: list[str] = Field(max_length=64)
    ek_cert: str = Field(max_length=16384)
    ek_public: str = Field(max_length=4096)
    ak_public: str = Field(max_length=4096)
    approval: str | None = Field(default=None, max_length=64)


class CredentialRequest(BaseModel):
    model_config = _STRICT
    secret: str = Field(max_length=1024)


class DeviceTenantsRequest(BaseModel):
    model_config = _STRICT
    tenants: list[str] = Field(max_length=64)


class PolicyRequest(BaseModel):
    model_config = _STRICT
    document: dict[str, Any]
    approval: str | None = Field(default=None, max_length=64)


class RefsetRequest(BaseModel):
    model_config = _STRICT
    items: list[str] = Field(max_length=10000)


class ModelRequest(BaseModel):
    model_config = _STRICT
    name: str = Field(max_length=128)
    version: str = Field(max_length=64)
    policy: str = Field(max_length=64)
    sealed_key: str = Field(max_length=8192)
    kem: str = Field(max_length=32)
    files: list[dict[str, str]] = Field(max_length=10000)
    tags: dict[str, str] = Field(default_factory=dict)
    #: The OpenSSF model signature (model.sig) and the manifest it covers, base64; both or neither.
    signature: str | None = Field(default=None, max_length=1_400_000)
    manifest: str | None = Field(default=None, max_length=22_400_000)


class ApprovalRequestBody(BaseModel):
    model_config = _STRICT
    op: str = Field(max_length=64)
    tenant: str = Field(max_length=64)
    params: dict[str, Any]


class ApprovalSignature(BaseModel):
    model_config = _STRICT
    decision: str = Field(max_length=16)
    expires_at: int
    signature: str = Field(max_length=256)


class ApprovalPolicyRequest(BaseModel):
    model_config = _STRICT
    document: dict[str, Any]
    approval: str | None = Field(default=None, max_length=64)


class CeremonyRequest(BaseModel):
    model_config = _STRICT
    kind: str = Field(max_length=16)
    ttl_seconds: int = 900
    params: dict[str, Any] = Field(default_factory=dict)
    set: str | None = Field(default=None, max_length=64)
    approval: str | None = Field(default=None, max_length=64)


class ShareSubmission(BaseModel):
    model_config = _STRICT
    custodian: str = Field(max_length=64)
    sealed: str = Field(max_length=8192)
    signature: str = Field(max_length=256)


class CeremonyCancel(BaseModel):
    model_config = _STRICT
    custodian: str = Field(max_length=64)
    signature: str = Field(max_length=256)


class ApprovalOnly(BaseModel):
    model_config = _STRICT
    approval: str | None = Field(default=None, max_length=64)


class RetireRequest(BaseModel):
    model_config = _STRICT
    version: int


class ExportRequest(BaseModel):
    model_config = _STRICT
    hpke: HPKEKey
    approval: str | None = Field(default=None, max_length=64)
