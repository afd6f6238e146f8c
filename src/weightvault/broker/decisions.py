"""The release decision: a pure function of what the broker read, with numbered checks.

:func:`decide_release` performs no I/O and reads no clock: the service reads the
token, model, device, policy and reference sets, passes them here with ``now``,
logs the decision it gets back, and only then acts on it. The checks, in order
(every failing check is reported, except that a failure of 1-3 ends the decision):

1. the result token was issued to this principal in this tenant (``token_not_for_caller``);
2. the resource names a model of the caller's tenant (``resource_not_in_tenant``);
3. the model exists (``model_not_found``);
4. the device the token was bound to (if any) exists, is active and serves the tenant
   (``device_unknown``, ``device_revoked``, ``device_pending``, ``device_not_in_tenant``);
5. a TPM device has not rebooted since its attestation (``device_rebooted_since_attestation``);
6. the model's release policy exists and is valid (``no_release_policy``, ``release_policy_invalid``);
7. the policy accepts the verifier and covers the resource, and its rule holds over the
   attested claims plus the broker's own claims (``verifier_not_accepted``,
   ``resource_not_covered``, ``conditions_not_met``).

Codes are stable and shown to the refused workload; the detailed reasons (which
condition failed, with values) go only to the audit log.

The broker's own claims, which no verifier can emit (verifiers keep to ``tpm.*``,
``token.*``, ``sample.*``): ``tenant``, ``resource``, ``verifier``,
``result.age_seconds`` (age of the result token), ``model.tags.<k>``, ``model.signer`` (who
signed the model, when its OpenSSF signature was checked at registration), and for a
device that the evidence authenticated, ``device.id``, ``device.kind``,
``device.status`` from the broker's registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

from weightvault.attestation.interfaces import ClaimValue
from weightvault.attestation.policy import ReleasePolicy
from weightvault.broker.storage import DeviceRow, ModelRow, PolicyRow
from weightvault.broker.tokens import ResultToken
from weightvault.errors import PolicyViolationError

__all__ = ["DEVICE_CODES", "ReleaseDecision", "ReleaseFacts", "decide_release", "parse_resource"]

#: Codes that say the device, not the policy, refused (the coarse ``device`` reason).
DEVICE_CODES: Final = frozenset(
    {
        "device_unknown",
        "device_revoked",
        "device_pending",
        "device_not_in_tenant",
        "device_rebooted_since_attestation",
    }
)
#: Claim names and prefixes only the broker sets. Verifiers are held to their own namespaces
#: (attestation.interfaces.check_result); a claim here in a result token is ignored regardless.
_BROKER_CLAIMS: Final = frozenset({"tenant", "resource", "verifier"})
_BROKER_PREFIXES: Final = ("device.", "model.", "result.")
_MAX_REASONS: Final = 32
_MAX_REASON_CHARS: Final = 300


def parse_resource(resource: str) -> tuple[str, str, str] | None:
    """``<tenant>/models/<name>@<version>`` as (tenant, name, version), or None if malformed."""
    tenant, sep, rest = resource.partition("/models/")
    name, at, version = rest.partition("@")
    if not sep or not at or not tenant or not name or not version:
        return None
    return tenant, name, version


@dataclass(frozen=True, slots=True)
class ReleaseFacts:
    """Everything the decision reads, gathered by the service."""

    tenant: str
    principal: str
    resource: str
    token: ResultToken
    model: ModelRow | None
    device: DeviceRow | None
    policy: PolicyRow | None
    refsets: Mapping[str, frozenset[str]]
    now: int


@dataclass(frozen=True, slots=True)
class ReleaseDecision:
    """Allowed, or refused with stable ``codes`` and detailed ``reasons`` (for the audit log)."""

    codes: tuple[str, ...]
    reasons: tuple[str, ...]
    policy_version: int | None = None
    policy_digest: str | None = None

    @property
    def allowed(self) -> bool:
        return not self.codes

    @property
    def coarse(self) -> str:
        """``device`` or ``policy``: what the workload was told before reason codes existed."""
        return "device" if any(c in DEVICE_CODES for c in self.codes) else "policy"


def _refused(code: str, reason: str | None = None) -> ReleaseDecision:
    return ReleaseDecision((code,), (reason or code,))


def _bounded(reasons: list[str]) -> tuple[str, ...]:
    """At most 32 reasons of at most 300 characters: audit events stay small whatever the policy."""
    kept = [r[:_MAX_REASON_CHARS] for r in reasons[:_MAX_REASONS]]
    if len(reasons) > _MAX_REASONS:
        kept.append(f"... and {len(reasons) - _MAX_REASONS} more")
    return tuple(kept)


def _device_codes(facts: ReleaseFacts) -> list[str]:
    token, device = facts.token, facts.device
    if token.device_id is None:
        return []
    if device is None:
        return ["device_unknown"]
    codes = []
    if device.status != "active":
        codes.append(f"device_{device.status}" if f"device_{device.status}" in DEVICE_CODES else "device_revoked")
    if facts.tenant not in device.tenants:
        codes.append("device_not_in_tenant")
    attested_reset = token.result.claims.get("tpm.reset_count")
    if isinstance(attested_reset, int) and device.state.get("reset_count", attested_reset) > attested_reset:
        # The TPM rebooted after this token's attestation: its PCRs are no longer the attested ones.
        codes.append("device_rebooted_since_attestation")
    return codes


def broker_claims(facts: ReleaseFacts) -> dict[str, ClaimValue]:
    """The claims the broker adds from its own records (see the module docstring)."""
    assert facts.model is not None
    claims: dict[str, ClaimValue] = {
        "tenant": facts.tenant,
        "resource": facts.resource,
        "result.age_seconds": facts.now - facts.token.issued_at,
        **{f"model.tags.{k}": v for k, v in facts.model.tags.items()},
    }
    if facts.model.signer is not None:
        claims["model.signer"] = facts.model.signer
    device = facts.device
    if facts.token.device_id is not None and device is not None:
        claims.update({"device.id": device.id, "device.status": device.status, "device.kind": device.kind})
    return claims


def decide_release(facts: ReleaseFacts) -> ReleaseDecision:
    """Decide one release; see the module docstring for the checks and their codes."""
    token = facts.token
    if token.tenant != facts.tenant or token.principal != facts.principal:  # 1
        return _refused("token_not_for_caller", "tenant_or_principal_mismatch")
    parsed = parse_resource(facts.resource)
    if parsed is None or parsed[0] != facts.tenant:  # 2
        return _refused("resource_not_in_tenant", "tenant_or_principal_mismatch")
    if facts.model is None:  # 3
        return _refused("model_not_found")
    codes = _device_codes(facts)  # 4, 5
    reasons = list(codes)
    row = facts.policy
    if row is None:  # 6
        codes.append("no_release_policy")
        reasons.append(f"no release policy {facts.model.policy}")
        return ReleaseDecision(tuple(codes), _bounded(reasons))
    try:
        policy = ReleasePolicy.parse(facts.tenant, row.name, row.version, row.document)
    except PolicyViolationError as exc:
        codes.append("release_policy_invalid")
        reasons.append(f"stored policy invalid: {exc}")
        return ReleaseDecision(tuple(codes), _bounded(reasons), row.version, row.digest)
    attested = {
        k: v for k, v in token.result.claims.items() if k not in _BROKER_CLAIMS and not k.startswith(_BROKER_PREFIXES)
    }
    result = replace(token.result, claims=attested)
    outcome = policy.evaluate(result, facts.resource, broker_claims(facts), facts.refsets)  # 7
    codes.extend(outcome.codes)
    reasons.extend(outcome.failed)
    return ReleaseDecision(tuple(codes), _bounded(reasons), outcome.version, outcome.digest)
