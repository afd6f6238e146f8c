"""Release policies: grammar, default deny, missing claims, every failed condition reported."""

from __future__ import annotations

from typing import Any

import pytest

from weightvault.attestation.interfaces import AttestationResult
from weightvault.attestation.policy import ReleasePolicy
from weightvault.errors import PolicyViolationError

RESULT = AttestationResult(
    "tpm",
    {"tpm.pcr.sha256.7": "aa", "tpm.pcr.sha256.23": "bb", "firmware": 7, "features": ["cc-on"], "debug": False},
    "sha256:00",
)


def policy(
    rule: dict[str, Any], verifiers: list[str] | None = None, resources: list[str] | None = None
) -> ReleasePolicy:
    doc = {"verifiers": verifiers or ["tpm"], "resources": resources or ["acme/models/*"], "rule": rule}
    return ReleasePolicy.parse("acme", "p", 1, doc)


def decide(
    p: ReleasePolicy, res: AttestationResult = RESULT, extra: dict[str, Any] | None = None
) -> tuple[bool, tuple[str, ...]]:
    d = p.evaluate(res, "acme/models/m@1", extra or {}, {"secureboot": frozenset({"aa", "dd"})})
    return d.allowed, d.failed


def test_conditions_and_nesting() -> None:
    """allOf/anyOf nest; every operator evaluates as documented."""
    rule = {
        "allOf": [
            {"claim": "tpm.pcr.sha256.7", "in": {"refset": "secureboot"}},
            {"claim": "firmware", "greaterOrEquals": 7},
            {"claim": "features", "contains": "cc-on"},
            {"claim": "debug", "equals": False},
            {"claim": "device.status", "equals": "active"},
            {"anyOf": [{"claim": "tpm.pcr.sha256.23", "equals": "zz"}, {"claim": "tpm.pcr.sha256.23", "in": ["bb"]}]},
            {"claim": "missing", "exists": False},
        ]
    }
    assert (True, ()) == decide(policy(rule), extra={"device.status": "active"})
    allowed, failed = decide(policy(rule), extra={"device.status": "revoked"})
    assert not allowed
    assert ['device.status equals "active"'] == list(failed)


def test_missing_claim_is_false_and_all_failures_are_reported() -> None:
    """A missing claim fails its condition; evaluation lists every failed condition."""
    rule = {
        "allOf": [
            {"claim": "nope", "equals": "x"},
            {"claim": "firmware", "less": 3},
            {"claim": "nope", "notEquals": "x"},
        ]
    }
    allowed, failed = decide(policy(rule))
    assert not allowed
    assert 3 == len(failed)


def test_type_confusion_does_not_match() -> None:
    """A string never equals an integer and booleans are not integers."""
    assert not decide(policy({"claim": "firmware", "equals": "7"}))[0]
    assert not decide(policy({"claim": "debug", "less": 1}))[0]


def test_unlisted_verifier_never_satisfies() -> None:
    """Claims from a verifier the policy does not list are refused even if every condition holds."""
    sample = AttestationResult("insecure-sample", dict(RESULT.claims), "sha256:00")
    allowed, failed = decide(policy({"claim": "firmware", "equals": 7}), sample)
    assert not allowed
    assert any("insecure-sample" in f for f in failed)
    assert decide(policy({"claim": "firmware", "equals": 7}, verifiers=["insecure-sample"]), sample)[0]


def test_all_of_verifiers_needs_a_result_resting_on_each() -> None:
    """``{"allOf": [...]}``: only a composite result whose parts cover every verifier satisfies it."""
    doc = {
        "verifiers": {"allOf": ["sev-snp", "nvidia-gpu"]},
        "resources": ["acme/models/*"],
        "rule": {"claim": "firmware", "equals": 7},
    }
    both = ReleasePolicy.parse("acme", "p", 1, doc)
    claims = dict(RESULT.claims)
    composite = AttestationResult("composite", claims, "sha256:00", parts=("sev-snp", "nvidia-gpu"))
    assert decide(both, composite)[0]
    for lacking in (
        AttestationResult("sev-snp", claims, "sha256:00"),
        AttestationResult("nvidia-gpu", claims, "sha256:00"),
        AttestationResult("composite", claims, "sha256:00", parts=("tpm", "nvidia-gpu")),
    ):
        allowed, failed = decide(both, lacking)
        assert not allowed
        assert any("requires evidence of every one" in f for f in failed)
    # A list accepts a composite result when one of its parts is listed: that part was fully verified.
    assert decide(policy({"claim": "firmware", "equals": 7}, verifiers=["sev-snp"]), composite)[0]
    assert not decide(policy({"claim": "firmware", "equals": 7}, verifiers=["tdx"]), composite)[0]


def test_resource_coverage() -> None:
    """A policy only covers resources matching its patterns."""
    p = policy({"claim": "firmware", "equals": 7}, resources=["acme/models/other@*"])
    assert not decide(p)[0]


@pytest.mark.parametrize(
    "doc",
    [
        {"verifiers": ["tpm"], "resources": ["globex/models/*"], "rule": {"claim": "a", "exists": True}},
        {"verifiers": [], "resources": ["acme/*"], "rule": {"claim": "a", "exists": True}},
        {"verifiers": ["tpm"], "resources": ["acme/../globex/*"], "rule": {"claim": "a", "exists": True}},
        {"verifiers": ["tpm"], "resources": ["acme/*"], "rule": {"allOf": []}},
        {"verifiers": ["tpm"], "resources": ["acme/*"], "rule": {"claim": "a", "matches": "x"}},
        {"verifiers": ["tpm"], "resources": ["acme/*"], "rule": {"claim": "a", "equals": 1, "in": [1]}},
        {"verifiers": ["tpm"], "resources": ["acme/*"], "rule": {"claim": "a", "less": "3"}},
        {
            "verifiers": ["tpm"],
            "resources": ["acme/*"],
            "rule": {"allOf": [{"claim": "a", "exists": True}], "anyOf": []},
        },
        {"verifiers": ["tpm"], "resources": ["acme/*"], "rule": {"claim": "a", "exists": True}, "extra": 1},
        {"verifiers": {"anyOf": ["tpm"]}, "resources": ["acme/*"], "rule": {"claim": "a", "exists": True}},
        {"verifiers": {"allOf": []}, "resources": ["acme/*"], "rule": {"claim": "a", "exists": True}},
        {"verifiers": ["tpm", "tpm"], "resources": ["acme/*"], "rule": {"claim": "a", "exists": True}},
        {
            "verifiers": ["tpm"],
            "resources": ["acme/*"],
            "rule": {
                "anyOf": [
                    {
                        "allOf": [
                            {
                                "anyOf": [
                                    {
                                        "allOf": [
                                            {
                                                "anyOf": [
                                                    {
                                                        "allOf": [
                                                            {
                                                                "anyOf": [
                                                                    {
                                                                        "allOf": [
                                                                            {"anyOf": [{"claim": "a", "exists": True}]}
                                                                        ]
                                                                    }
                                                                ]
                                                            }
                                                        ]
                                                    }
                                                ]
                                            }
                                        ]
                                    }
                                ]
                            }
                        ]
                    }
                ]
            },
        },
    ],
)
def test_invalid_documents(doc: dict[str, Any]) -> None:
    """Other tenants' resources, empty lists, unknown operators, mixed operators, unknown fields, deep rules."""
    with pytest.raises(PolicyViolationError):
        ReleasePolicy.parse("acme", "p", 1, doc)


def test_digest_is_stable() -> None:
    """The digest depends on the document, not on key order."""
    a = ReleasePolicy.parse(
        "acme", "p", 1, {"verifiers": ["tpm"], "resources": ["acme/*"], "rule": {"claim": "a", "exists": True}}
    )
    b = ReleasePolicy.parse(
        "acme", "p", 2, {"rule": {"exists": True, "claim": "a"}, "resources": ["acme/*"], "verifiers": ["tpm"]}
    )
    assert a.digest == b.digest
