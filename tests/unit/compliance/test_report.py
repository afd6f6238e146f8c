"""Compliance reports: built from a witnessed log, verified offline, and refused after any change."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import require_module
from tests.witnessed_log import LOG_KEY, NOW, clock, witness, witnessed_log
from weightvault.auditlog import (
    AuditEvent,
    AuditLog,
    NoteSigner,
    WitnessPolicy,
)
from weightvault.compliance.html import render_html
from weightvault.compliance.report import build_report, diff_reports, load_catalogue, parse_report, verify_report
from weightvault.crypto.signing import Ed25519Signer
from weightvault.errors import CheckpointError, InclusionProofError, ReportError

NOW_MS = int(NOW * 1000) + 60_000
OTHER_LOG = NoteSigner("weightvault.test/audit", Ed25519Signer(b"\x12" * 32))


def _ev(type: str, resource: str, tenant: str = "acme", **kw: Any) -> AuditEvent:
    return AuditEvent(type=type, tenant=tenant, actor=kw.pop("actor", "op"), resource=resource, **kw)


#: A broker's history, as the events it logs (docs/audit.md).
HISTORY = [
    _ev("custody.genesis", "custody:set1", "-", details={"threshold": 2, "custodians": {"a": {}, "b": {}, "c": {}}}),
    _ev("broker.backup", "broker", "-", details={"backup_id": "b1", "sealed_to": "share set set1"}),
    _ev("tenant.change.done", "tenant:acme", details={"op": "create", "kek_version": 1}),
    _ev("model.register.done", "acme/models/llama@1", details={"policy": "p", "tags": {}}),
    _ev("model.register.done", "acme/models/decoy@1", details={"policy": "p", "tags": {"honeypot": "true"}}),
    _ev("device.activate.done", "device:gpu-1", details={"status": "active"}),
    _ev("attest.pass", "challenge:c1", details={"device": "gpu-1", "verifier": "tpm"}),
    _ev("key.release.done", "acme/models/llama@1", details={"verifier": "tpm", "device": "gpu-1"}),
    _ev("sentinel.alert", "sentinel:honeypot-touch", details={"rule": "honeypot-touch"}),
    _ev("containment.hold.done", "principal:wl", details={"kind": "principal", "target": "wl"}),
    _ev("model.register.done", "acme/models/<script>alert(1)</script>@1", details={"policy": "p", "tags": {}}),
]


@pytest.fixture
def witnessed(tmp_path: Path) -> Iterator[tuple[AuditLog, WitnessPolicy]]:
    witnesses = [witness(tmp_path, i) for i in range(2)]
    log = witnessed_log(tmp_path, witnesses, 2)
    with log:
        for event in HISTORY:
            log.append(event)
        log.publish_now()
        yield log, WitnessPolicy.threshold([w.signer.verifier for w in witnesses], 2)


def _build(log: AuditLog, **kw: Any) -> dict[str, Any]:
    return build_report(log, now_ms=NOW_MS, **kw)


def _status(doc: dict[str, Any], control: str) -> str:
    return next(str(c["status"]) for c in doc["controls"] if c["id"] == control)


def test_a_report_of_a_witnessed_log_verifies_offline(witnessed: tuple[AuditLog, WitnessPolicy]) -> None:
    log, policy = witnessed
    doc = _build(log)
    verified = verify_report(doc, LOG_KEY.verifier, policy, now=int(NOW))
    assert verified.size == len(HISTORY)
    assert verified.witnesses == ("witness0.test", "witness1.test")
    assert verified.controls == len(load_catalogue().controls) == 35
    assert _status(doc, "C13") == "met"  # witnessed
    assert _status(doc, "C02") == "met"  # the release rested on a TPM quote
    assert _status(doc, "C25") == "met"  # 2-of-3 custody, and a backup today
    assert _status(doc, "C19") == "met"  # a honeypot is registered
    assert _status(doc, "C06") == "not_met"  # no approval policy
    assert _status(doc, "C34") == "not_applicable"
    cited = {item["index"] for item in doc["evidence"]}
    assert all(set(c["evidence"]) <= cited for c in doc["controls"])
    # The same log prefix gives the same report: a holder of the log can check completeness.
    assert _build(log) == doc


def test_a_release_on_the_insecure_sample_verifier_fails_c02(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as log:
        log.append(_ev("key.release.done", "acme/models/m@1", details={"verifier": "tpm"}))
        log.append(_ev("key.release.done", "acme/models/m@1", details={"verifier": "insecure-sample"}))
        doc = _build(log)
    control = next(c for c in doc["controls"] if c["id"] == "C02")
    assert control["status"] == "not_met"
    assert "insecure-sample" in control["reason"]
    assert control["evidence"] == [1]
    assert _status(doc, "C13") == "partial"  # no witness cosigned this log's checkpoint


def _refused(doc: dict[str, Any], policy: WitnessPolicy, error: type[Exception], match: str | None = None) -> None:
    with pytest.raises(error, match=match):
        verify_report(doc, LOG_KEY.verifier, policy, now=int(NOW))


def test_any_change_to_a_report_is_refused(witnessed: tuple[AuditLog, WitnessPolicy]) -> None:
    log, policy = witnessed
    doc = _build(log)

    edited = copy.deepcopy(doc)
    next(c for c in edited["controls"] if c["id"] == "C06")["status"] = "met"
    _refused(edited, policy, ReportError, "report_assessment: C06")

    reworded = copy.deepcopy(doc)
    reworded["controls"][0]["reason"] += " (and more)"
    _refused(reworded, policy, ReportError, "report_assessment")

    flipped = copy.deepcopy(doc)
    raw = bytearray(base64.b64decode(flipped["evidence"][0]["entry"]))
    raw[-2] ^= 1
    flipped["evidence"][0]["entry"] = base64.b64encode(bytes(raw)).decode()
    _refused(flipped, policy, InclusionProofError)

    moved = copy.deepcopy(doc)
    moved["evidence"][0]["index"], moved["evidence"][1]["index"] = (
        moved["evidence"][1]["index"],
        moved["evidence"][0]["index"],
    )
    _refused(moved, policy, InclusionProofError)

    dropped = copy.deepcopy(doc)
    dropped["evidence"] = [e for e in dropped["evidence"] if e["index"] != 6]  # the TPM release
    _refused(dropped, policy, ReportError, "report_assessment")

    twice = copy.deepcopy(doc)
    twice["evidence"].append(twice["evidence"][0])
    _refused(twice, policy, ReportError, "cited twice")

    for key in ("log", "scope", "evidence"):
        broken = copy.deepcopy(doc)
        del broken[key]
        _refused(broken, policy, ReportError, "report_malformed")

    later = copy.deepcopy(doc)
    later["scope"]["as_of"] += 400 * 86_400_000  # the KEK would be too old then: the assessment changes
    _refused(later, policy, ReportError, "report_assessment")


def test_witnesses_and_the_log_key_are_checked(witnessed: tuple[AuditLog, WitnessPolicy], tmp_path: Path) -> None:
    log, policy = witnessed
    doc = _build(log)
    unwitnessed = copy.deepcopy(doc)
    lines = unwitnessed["log"]["checkpoint"].splitlines(keepends=True)
    unwitnessed["log"]["checkpoint"] = "".join(line for line in lines if "witness" not in line)
    _refused(unwitnessed, policy, CheckpointError)  # the policy needs both witnesses
    # A verifier that accepts an unwitnessed log still refuses witnesses the report names but cannot show.
    _refused(unwitnessed, WitnessPolicy.threshold([], 0), ReportError, "report_witness")
    with pytest.raises(CheckpointError):
        verify_report(doc, OTHER_LOG.verifier, policy, now=int(NOW))  # another log's key
    with AuditLog(tmp_path / "other.db", OTHER_LOG, clock=clock) as other:
        for event in HISTORY:
            other.append(event)
        foreign = build_report(other, now_ms=NOW_MS)
    _refused(foreign, policy, CheckpointError)  # a checkpoint from another log


def test_the_html_page_embeds_the_report_escaped_and_verifies(witnessed: tuple[AuditLog, WitnessPolicy]) -> None:
    log, policy = witnessed
    doc = _build(log)
    page = render_html(doc)
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script") == 1  # the JSON data block only
    assert "script-src" not in page
    assert "default-src 'none'" in page
    assert parse_report(page) == doc
    assert verify_report(parse_report(page), LOG_KEY.verifier, policy, now=int(NOW)).controls == 35
    tampered = page.replace('"status":"not_met"', '"status":"met"', 1)
    assert tampered != page
    with pytest.raises(ReportError):
        verify_report(parse_report(tampered), LOG_KEY.verifier, policy, now=int(NOW))


@pytest.mark.parametrize(
    "text", ["", "{}", "[]", '{"format": "other"}', "<html>", "x" * 100, "[" * 5000, '{"format": 1, "format": 2}']
)
def test_malformed_inputs_are_refused_with_a_code(text: str) -> None:
    with pytest.raises(ReportError, match="report_malformed"):
        parse_report(text)


def test_a_diff_lists_the_controls_that_changed_and_why(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as log:
        for event in HISTORY:
            log.append(event)
        before = _build(log)
        log.append(
            _ev("approval.policy.change.done", "approval-policy", "-", policy_version=1, details={"digest": "x"})
        )
        after = _build(log)
    changes = {c["id"]: c for c in diff_reports(before, after)}
    assert set(changes) == {"C06", "C07", "C18"}
    assert (changes["C06"]["old"], changes["C06"]["new"]) == ("not_met", "met")
    assert "approval policy is in force" in changes["C06"]["why"]
    assert diff_reports(after, after) == []


def test_oscal_assessment_results_validate(witnessed: tuple[AuditLog, WitnessPolicy]) -> None:
    """The OSCAL output passes compliance-trestle's OSCAL 1.2 models (which forbid unknown fields)."""
    require_module("trestle")
    from pydantic import ValidationError
    from trestle.oscal.assessment_results import AssessmentResults

    from weightvault.compliance.oscal import to_oscal

    log, _ = witnessed
    doc = _build(log)
    oscal = to_oscal(doc)["assessment-results"]
    parsed = AssessmentResults.model_validate(oscal)
    findings = {f.target.target_id: f.target.status.state for f in parsed.results[0].findings or [] if f.target.status}
    assert findings["C02"].value == "satisfied"
    assert findings["C06"].value == "not-satisfied"
    assert "C34" not in findings  # not applicable: reviewed, no finding
    assert to_oscal(doc) == to_oscal(copy.deepcopy(doc))  # stable UUIDs
    broken = copy.deepcopy(oscal)
    broken["results"][0]["findings"][0]["target"]["status"]["state"] = "fine"
    with pytest.raises(ValidationError):
        AssessmentResults.model_validate(broken)


def test_a_page_edited_outside_its_embedded_report_is_refused(witnessed: tuple[AuditLog, WitnessPolicy]) -> None:
    """What a person reads must be what is proven: the page is re-rendered from its report and compared."""
    from weightvault.compliance.html import check_page

    log, _ = witnessed
    doc = _build(log)
    changes = [{"id": "C06", "title": "t", "old": "not_met", "new": "met", "why": "w"}]
    for page in (render_html(doc), render_html(doc, changes=changes)):
        check_page(page, parse_report(page))
        visible = page.replace(">not met</span>", ">met</span>", 1)
        assert visible != page
        with pytest.raises(ReportError, match="report_page"):
            check_page(visible, parse_report(visible))
        with pytest.raises(ReportError, match="report_page"):
            check_page(page + "<!-- -->", parse_report(page))


def test_a_tenants_report_holds_nothing_of_another_tenant(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as log:
        for event in HISTORY:
            log.append(event)
        log.append(_ev("tenant.change.done", "tenant:globex", "globex", details={"op": "create"}))
        log.append(_ev("model.register.done", "globex/models/secret@1", "globex", details={"tags": {}}))
        log.append(_ev("key.release.done", "globex/models/secret@1", "globex", details={"verifier": "insecure-sample"}))
        bind = {"op": "bind", "tenants": ["acme", "globex"]}  # a device shared by both: logged broker-wide
        log.append(_ev("device.change.done", "device:gpu-1", "-", details=bind))
        doc = _build(log, tenant="acme")
        whole = _build(log)
    page = render_html(doc)
    assert "globex" not in json.dumps(doc)
    assert "globex" not in page
    assert _status(doc, "C02") == "met"  # globex's weak release is not acme's
    assert _status(whole, "C02") == "not_met"
    assert verify_report(doc, LOG_KEY.verifier, WitnessPolicy.threshold([], 0), now=int(NOW)).controls == 35


def test_state_set_before_the_period_stays_in_force_and_activity_does_not(tmp_path: Path) -> None:
    """A quarter's report still sees the custody set up years ago; a release before the quarter is not its."""
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as log:
        for event in HISTORY:
            log.append(event)
        quarter = _build(log, since_ms=NOW_MS - 1)  # every event above predates the period
    assert _status(quarter, "C25") == "met"  # custody, set before the period
    assert _status(quarter, "C01") == "met"  # the models registered before it
    assert _status(quarter, "C02") == "partial"  # no release in the period
    assert _status(quarter, "C20") == "partial"  # nor any alert
    assert quarter["statistics"]["events_by_type"] == {}
