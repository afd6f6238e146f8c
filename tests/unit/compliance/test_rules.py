"""Each assessment rule on the events it reads: the statuses, reasons and evidence it gives."""

from __future__ import annotations

from typing import Any

import pytest

from weightvault.auditlog import AuditEvent
from weightvault.compliance.report import load_catalogue
from weightvault.compliance.rules import RULES, STATUSES, Context, Selection, assess

DAY = 86_400_000
NOW = 2_000_000_000_000


def ev(type: str, resource: str = "acme/r", *, ts: int = NOW - DAY, tenant: str = "acme", **kw: Any) -> AuditEvent:
    return AuditEvent(type=type, tenant=tenant, actor="op", resource=resource, ts=ts, **kw)


CTX = Context(as_of_ms=NOW, witnesses=0, tenant=None)


def _cited(*events: AuditEvent) -> list[tuple[int, AuditEvent]]:
    return list(enumerate(events))


@pytest.mark.parametrize(
    ("rule", "events", "status", "words"),
    [
        (
            "custody",
            [ev("custody.genesis", details={"threshold": 1, "custodians": {"a": {}}})],
            "partial",
            "one person",
        ),
        ("custody", [], "not_met", "not under M-of-N"),
        ("egress", [ev("sandbox.start", details={"isolated": False})], "not_met", "without network isolation"),
        ("egress", [], "not_applicable", "no serving sandbox"),
        ("budgets", [ev("gateway.key.create")], "partial", "no budget alert"),
        ("budgets", [], "not_applicable", "no gateway key"),
        ("provenance", [ev("model.register.done", details={"signer": "acme-release"})], "met", "verified signature"),
        ("provenance", [ev("model.register.done", details={})], "partial", "carry no signature"),
        ("device_identity", [], "not_met", "no device is enrolled"),
        (
            "device_identity",
            [ev("device.enrol.done", "device:d1", details={"status": "pending"})],
            "partial",
            "none active",
        ),
        ("attested_release", [], "partial", "no key was released"),
        ("containment", [], "partial", "not exercised"),
        ("detection", [], "partial", "no sentinel alert"),
        ("honeypots", [ev("model.register.done", details={"tags": {}})], "not_met", "no honeypot"),
        ("two_party", [], "not_met", "no approval policy"),
    ],
)
def test_rules_give_their_status_and_say_why(rule: str, events: list[AuditEvent], status: str, words: str) -> None:
    result = assess(rule, _cited(*events), CTX)
    assert result.status == status
    assert words in result.reason


def test_an_old_kek_makes_encryption_partial_and_a_rotation_restores_it() -> None:
    created = ev("tenant.change.done", "tenant:acme", ts=NOW - 400 * DAY, details={"op": "create"})
    model = ev("model.register.done", "acme/models/m@1", details={})
    stale = assess("encryption", _cited(created, model), CTX)
    assert stale.status == "partial"
    assert "acme" in stale.reason
    rotated = ev("key.rotate.done", "acme/kek", ts=NOW - 10 * DAY, details={"version": 2})
    fresh = assess("encryption", _cited(created, model, rotated), CTX)
    assert fresh.status == "met"
    assert fresh.evidence == (1, 2)


def test_custody_follows_the_share_set_in_force() -> None:
    three: dict[str, dict[str, str]] = {"a": {}, "b": {}, "c": {}}
    genesis = ev("custody.genesis", "custody:s1", tenant="-", details={"threshold": 2, "custodians": three})
    rekey = ev("custody.rekey", "custody:s2", tenant="-", details={"threshold": 1, "custodians": {"a": {}}})
    active = ev("custody.set.active", "custody:s2", tenant="-")
    backup = ev("broker.backup", "broker", tenant="-", details={"backup_id": "b1", "sealed_to": "share set s1"})
    assert assess("custody", _cited(genesis, backup), CTX).status == "met"
    assert assess("custody", _cited(genesis, rekey, backup), CTX).status == "met"  # a pending set is not in force
    promoted = assess("custody", _cited(genesis, rekey, active), CTX)
    assert promoted.status == "partial"
    assert promoted.evidence == (1, 2)
    assert "1-of-1" not in promoted.reason
    assert "one person can unseal" in promoted.reason


def test_c25_needs_a_recent_backup_in_the_log() -> None:
    genesis = ev(
        "custody.genesis", "custody:s1", tenant="-", details={"threshold": 2, "custodians": {"a": {}, "b": {}}}
    )
    none = assess("custody", _cited(genesis), CTX)
    assert ("partial", "no backup is recorded in the log") == (none.status, none.reason.split("; ")[1])
    old = ev(
        "broker.backup",
        "broker",
        tenant="-",
        ts=NOW - 30 * DAY,
        details={"backup_id": "b2", "sealed_to": "share set s1"},
    )
    stale = assess("custody", _cited(genesis, old), CTX)
    assert "partial" == stale.status
    assert "30 days old" in stale.reason
    fresh = ev(
        "broker.backup",
        "broker",
        tenant="-",
        ts=NOW - DAY // 2,
        details={"backup_id": "b3", "sealed_to": "the root key"},
    )
    met = assess("custody", _cited(genesis, old, fresh), CTX)
    assert "met" == met.status
    assert "0.5 days old, sealed to the root key, and holds the log up to its own record (entry 2)" in met.reason
    assert (0, 2) == met.evidence


def test_a_device_bound_after_activation_stays_active() -> None:
    selection = Selection()
    selection.add(0, ev("device.activate.done", "device:d1", tenant="acme", details={"status": "active"}))
    selection.add(1, ev("device.change.done", "device:d1", tenant="-", details={"op": "bind", "tenants": ["acme"]}))
    assert selection.indices() == [0]


def test_witnesses_decide_c13() -> None:
    assert assess("audit_log", [], Context(NOW, 0, None)).status == "partial"
    assert assess("audit_log", [], Context(NOW, 2, None)).status == "met"


def test_the_selection_keeps_the_latest_state_and_caps_lists() -> None:
    selection = Selection()
    selection.add(0, ev("policy.change.done", "acme/policies/p", details={"new_digest": "a"}))
    selection.add(1, ev("policy.change.done", "acme/policies/p", details={"new_digest": "b"}))
    for i in range(2, 100):
        selection.add(i, ev("key.release.done", "acme/models/m@1", details={"verifier": "tpm"}))
    selection.add(100, ev("key.release.done", "acme/models/m@1", details={"verifier": "insecure-sample"}))
    chosen = selection.indices()
    assert 0 not in chosen  # superseded by the newer policy version
    assert 1 in chosen
    assert 100 in chosen  # every weak release is cited
    assert len([i for i in chosen if 2 <= i < 100]) == 19  # the newest releases, capped
    assert 99 in chosen


def test_the_catalogue_maps_every_control_to_a_known_rule_and_measure() -> None:
    catalogue = load_catalogue()
    assert [c["id"] for c in catalogue.controls] == [f"C{n:02d}" for n in range(1, 36)]
    for control in catalogue.controls:
        assert control["rule"] in RULES
        assert set(control["measures"]) <= {1, 2, 3, 4, 5, 6}
        assert set(control["rand"]) <= {"SL1", "SL2", "SL3", "SL4", "SL5"}
    assert all(assess(c["rule"], [], CTX).status in STATUSES for c in catalogue.controls)
