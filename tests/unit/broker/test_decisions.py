"""The release decision as a pure function: each numbered check and its reason code, no I/O."""

from __future__ import annotations

from dataclasses import replace

import pytest

from weightvault.attestation.interfaces import AttestationResult
from weightvault.attestation.policy import ReleasePolicy
from weightvault.broker.decisions import ReleaseFacts, decide_release, parse_resource
from weightvault.broker.storage import DeviceRow, ModelRow, PolicyRow
from weightvault.broker.tokens import ResultToken

NOW = 1_800_000_000
POLICY = PolicyRow(
    "acme",
    "open",
    3,
    {"verifiers": ["tpm"], "resources": ["acme/models/*"], "rule": {"claim": "tpm.pcr.sha256.7", "equals": "aa"}},
    "sha256:00",
    False,
)
MODEL = ModelRow("acme", "m", "1", "open", 1, b"", [], {"tier": "gold"})
DEVICE = DeviceRow("d1", "tpm", "active", {}, {"reset_count": 4}, frozenset({"acme"}))


def _token(**changes: object) -> ResultToken:
    result = AttestationResult("tpm", {"tpm.pcr.sha256.7": "aa", "tpm.reset_count": 4}, "sha256:e", "d1")
    base = ResultToken(
        jti="j",
        tenant="acme",
        subject="d1",
        device_id="d1",
        principal="wl",
        issued_at=NOW - 10,
        expires_at=NOW + 290,
        kem="x25519",
        public=b"k" * 32,
        result=result,
        challenge_id="c",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _facts(**changes: object) -> ReleaseFacts:
    base = ReleaseFacts("acme", "wl", "acme/models/m@1", _token(), MODEL, DEVICE, POLICY, {}, NOW)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_everything_in_order_allows() -> None:
    """A valid token, model, device and policy: allowed, with the policy's version and digest."""
    decision = decide_release(_facts())
    digest = ReleasePolicy.parse("acme", "open", 3, POLICY.document).digest
    assert (True, (), 3, digest) == (
        decision.allowed,
        decision.codes,
        decision.policy_version,
        decision.policy_digest,
    )


@pytest.mark.parametrize(
    ("changes", "codes"),
    [
        ({"principal": "other"}, ("token_not_for_caller",)),
        ({"resource": "globex/models/m@1"}, ("resource_not_in_tenant",)),
        ({"resource": "garbage"}, ("resource_not_in_tenant",)),
        ({"model": None}, ("model_not_found",)),
        ({"device": None}, ("device_unknown",)),
        ({"device": replace(DEVICE, status="revoked")}, ("device_revoked",)),
        ({"device": replace(DEVICE, status="pending")}, ("device_pending",)),
        ({"device": replace(DEVICE, tenants=frozenset({"globex"}))}, ("device_not_in_tenant",)),
        ({"device": replace(DEVICE, state={"reset_count": 5})}, ("device_rebooted_since_attestation",)),
        ({"policy": None}, ("no_release_policy",)),
        ({"policy": replace(POLICY, document={"verifiers": []})}, ("release_policy_invalid",)),
        (
            {
                "resource": "acme/models/m@1",
                "policy": replace(POLICY, document={**POLICY.document, "resources": ["acme/models/x*"]}),
            },
            ("resource_not_covered",),
        ),
    ],
)
def test_each_check_has_its_code(changes: dict[str, object], codes: tuple[str, ...]) -> None:
    """Every failing check is refused with its stable reason code."""
    decision = decide_release(_facts(**changes))
    assert not decision.allowed
    assert codes == decision.codes


def test_the_verifier_and_the_rule_are_separate_codes_and_all_failures_are_reported() -> None:
    """A result from another verifier that also fails the rule reports both, and a revoked device too."""
    sample = AttestationResult("insecure-sample", {}, "sha256:e", None)
    facts = _facts(token=_token(result=sample), device=replace(DEVICE, status="revoked"))
    decision = decide_release(facts)
    assert ("device_revoked", "verifier_not_accepted", "conditions_not_met") == decision.codes
    assert "device" == decision.coarse
    assert any("tpm.pcr.sha256.7" in r for r in decision.reasons)


def test_broker_claims_cannot_be_shadowed_by_attested_ones() -> None:
    """device.kind comes from the registry for the attested device; an attested 'device.kind' does not count."""
    policy = replace(POLICY, document={**POLICY.document, "rule": {"claim": "device.kind", "equals": "tpm"}})
    forged = AttestationResult("tpm", {"device.kind": "tpm"}, "sha256:e", None)
    decision = decide_release(_facts(policy=policy, token=_token(result=forged, device_id=None), device=None))
    assert ("conditions_not_met",) == decision.codes


def test_model_signer_is_a_broker_claim_that_attested_claims_cannot_forge() -> None:
    """model.signer comes from the registration's checked signature; an attested one does not count."""
    policy = replace(POLICY, document={**POLICY.document, "rule": {"claim": "model.signer", "equals": "release"}})
    forged = AttestationResult("tpm", {**_token().result.claims, "model.signer": "release"}, "sha256:e", None)
    unsigned = decide_release(_facts(policy=policy, token=_token(result=forged)))
    assert "conditions_not_met" in unsigned.codes
    signed = decide_release(_facts(policy=policy, model=replace(MODEL, signer="release")))
    assert () == signed.codes


def test_reasons_stay_bounded_whatever_the_policy() -> None:
    """A policy with hundreds of failing conditions still yields at most 33 short reasons."""
    rule = {"allOf": [{"claim": f"tpm.x{i}", "equals": "y" * 200} for i in range(200)]}
    policy = replace(POLICY, document={**POLICY.document, "rule": rule})
    decision = decide_release(_facts(policy=policy))
    assert len(decision.reasons) == 33
    assert decision.reasons[-1] == "... and 168 more"
    assert all(len(r) <= 300 for r in decision.reasons)


def test_resources_parse_strictly() -> None:
    assert ("acme", "m", "1") == parse_resource("acme/models/m@1")
    for bad in ("acme/models/m", "acme/m@1", "/models/m@1", "acme/models/@1", "acme/models/m@"):
        assert parse_resource(bad) is None
