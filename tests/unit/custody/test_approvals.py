"""Approval policies, request digests and the counting rules, without a server."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from weightvault.custody.approvals import (
    ApprovalPolicy,
    ApprovalRequest,
    SignedApproval,
    approval_message,
    evaluate,
)
from weightvault.custody.person import PersonKey
from weightvault.errors import InvalidRequestError

NOW = 1_800_000_000
KEYS = {name: PersonKey.generate(name) for name in ("alice", "bob", "carol", "dave")}


def _entry(name: str, **extra: Any) -> dict[str, Any]:
    doc = KEYS[name].public.to_json()
    return {"signing": doc["signing"], "hpke": doc["hpke"], **extra}


def policy_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "approvers": {
            "alice": _entry("alice", principals=["alice-ops"]),
            "bob": _entry("bob"),
            "carol": _entry("carol"),
            "dave": _entry("dave"),
        },
        "groups": {"security": ["alice", "bob"], "ml": ["bob", "carol"], "all": ["alice", "bob", "carol", "dave"]},
        "rules": [
            {
                "op": "key.release",
                "when": {"model.tags.tier": "high-value"},
                "require": [{"group": "security", "count": 1}, {"group": "ml", "count": 1}],
                "ttl_seconds": 3600,
            },
            {"op": "approval.policy.change", "require": [{"group": "all", "count": 2}]},
        ],
    }
    doc.update(changes)
    return doc


POLICY = ApprovalPolicy.parse(policy_doc(), 1)
FACTS = {"model.tags.tier": "high-value"}


def _request(**changes: Any) -> ApprovalRequest:
    base = ApprovalRequest(
        id="r1",
        broker="b",
        op="key.release",
        tenant="acme",
        params={"resource": "acme/models/m@1", "principal": "wl"},
        requester="wl",
        policy_version=1,
        nonce="00" * 16,
        not_before=NOW,
        expires_at=NOW + 3600,
    )
    return dataclasses.replace(base, **changes)


def _sign(
    name: str, request: ApprovalRequest, decision: str = "approve", expires_at: int = NOW + 600
) -> SignedApproval:
    message = approval_message(request.digest, decision, expires_at, name)
    return SignedApproval(name, decision, expires_at, KEYS[name].sign(message))


def test_rule_matching_uses_facts() -> None:
    assert POLICY.rule_for("key.release", "acme", FACTS) is not None
    assert POLICY.rule_for("key.release", "acme", {"model.tags.tier": "standard"}) is None
    assert POLICY.rule_for("key.release", "acme", {}) is None


def test_two_factors_need_two_distinct_people() -> None:
    request = _request()
    assert "pending" == evaluate(POLICY, request, [_sign("alice", request)], FACTS, NOW).status
    assert (
        "approved" == evaluate(POLICY, request, [_sign("alice", request), _sign("carol", request)], FACTS, NOW).status
    )
    # bob is in both groups but fills only one slot:
    assert "pending" == evaluate(POLICY, request, [_sign("bob", request)], FACTS, NOW).status
    assert "approved" == evaluate(POLICY, request, [_sign("bob", request), _sign("alice", request)], FACTS, NOW).status
    # the same approver twice counts once:
    assert "pending" == evaluate(POLICY, request, [_sign("alice", request)] * 2, FACTS, NOW).status


def test_what_does_not_count() -> None:
    request = _request()
    other = _request(id="r2")
    cases = {
        "signature over another request": _sign("carol", other),
        "forged": SignedApproval("carol", "approve", NOW + 600, KEYS["dave"].sign(b"x")),
        "outside the groups": _sign("dave", request),
        "expired": _sign("carol", request, expires_at=NOW - 1),
        "unknown approver": SignedApproval("zed", "approve", NOW + 600, b"\x00" * 64),
        "decision swapped": dataclasses.replace(_sign("carol", request, "deny"), decision="approve"),
    }
    for label, approval in cases.items():
        result = evaluate(POLICY, request, [_sign("alice", request), approval], FACTS, NOW)
        assert "pending" == result.status, label
        assert 1 == len(result.problems), label


def test_requesters_cannot_approve_even_under_another_principal() -> None:
    request = _request(requester="alice-ops")
    result = evaluate(POLICY, request, [_sign("alice", request), _sign("carol", request)], FACTS, NOW)
    assert "pending" == result.status
    assert "requested this operation" in result.problems[0]


def test_a_deny_denies_and_expiry_expires() -> None:
    request = _request()
    assert (
        "denied"
        == evaluate(POLICY, request, [_sign("alice", request), _sign("carol", request, "deny")], FACTS, NOW).status
    )
    late = NOW + 4000
    approvals = [_sign("alice", request, expires_at=late + 10), _sign("carol", request, expires_at=late + 10)]
    assert "expired" == evaluate(POLICY, request, approvals, FACTS, late).status


def test_a_removed_approver_no_longer_counts() -> None:
    request = _request()
    approvals = [_sign("alice", request), _sign("carol", request)]
    smaller = ApprovalPolicy.parse(
        policy_doc(groups={"security": ["alice", "bob"], "ml": ["bob"], "all": ["alice", "bob"]}), 2
    )
    assert "pending" == evaluate(smaller, request, approvals, FACTS, NOW).status


def test_digest_covers_every_field() -> None:
    request = _request()
    for change in (
        {"params": {"resource": "acme/models/m@2", "principal": "wl"}},
        {"tenant": "globex"},
        {"requester": "x"},
        {"nonce": "11" * 16},
        {"expires_at": NOW + 1},
        {"broker": "other"},
    ):
        assert request.digest != dataclasses.replace(request, **change).digest
    assert request == ApprovalRequest.from_json(request.to_json())
    assert request.params_digest in request.summary()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rules": [{"op": "key.release", "require": [{"group": "security", "count": 1}]}]}, "approval.policy.change"),
        ({"rules": [{"op": "key.steal", "require": [{"group": "security", "count": 1}]}]}, "unknown operation"),
        ({"groups": {"security": ["alice", "zed"]}}, "known approvers"),
        (
            {"rules": [{"op": "approval.policy.change", "require": [{"group": "security", "count": 3}]}]},
            "cannot supply",
        ),
        ({"rules": [{"op": "approval.policy.change", "require": [{"group": "nobody", "count": 1}]}]}, "known group"),
        ({"extra": 1}, "approvers, groups, rules"),
        ({"approvers": {"alice": _entry("alice"), "bob": {**_entry("alice")}}}, "share a signing key"),
    ],
)
def test_invalid_policies(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        ApprovalPolicy.parse(policy_doc(**changes), 1)


def test_a_held_models_release_falls_back_to_the_policy_change_rule() -> None:
    """Containment (docs/sentinel.md): a release of a held model needs approvals even where no
    key.release rule matches: the policy's own change rule applies; a matching rule still wins."""
    from weightvault.custody.approvals import HOLD_FACT

    standard = {"model.tags.tier": "standard"}
    assert POLICY.rule_for("key.release", "acme", standard) is None
    held = POLICY.rule_for("key.release", "acme", {**standard, HOLD_FACT: "true"})
    assert held is not None
    assert (held.op, held.describe()) == ("key.release", "2 of all")
    high = {"model.tags.tier": "high-value"}
    assert POLICY.rule_for("key.release", "acme", {**high, HOLD_FACT: "true"}) == POLICY.rule_for(
        "key.release", "acme", high
    )
    assert POLICY.rule_for("key.rotate", "acme", {HOLD_FACT: "true"}) is None
