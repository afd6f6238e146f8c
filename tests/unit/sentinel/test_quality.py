"""Simulator, evaluator and a quality floor on scenarios of the held-out profile.

The thresholds are the issue's (recall at least 0.9, false alerts at most 1% of benign
entity-days); the scenario is of the ``holdout`` profile, whose parameters differ from
the ``tune`` profile the detectors were tuned on. Not timed.
"""

from __future__ import annotations

from weightvault.sentinel.engine import Sentinel, default_config
from weightvault.sentinel.evaluate import Incident, benign_entity_days, evaluate, parse_alerts, parse_labels
from weightvault.sentinel.simulate import FAMILIES, simulate


def test_simulation_is_deterministic_and_covers_every_family() -> None:
    a = simulate(3, days=14)
    assert a.events_jsonl() == simulate(3, days=14).events_jsonl()
    assert a.labels_jsonl() == simulate(3, days=14).labels_jsonl()
    assert a.events_jsonl() != simulate(4, days=14).events_jsonl()
    assert {x["family"] for x in a.labels} == set(FAMILIES)
    indexes = [e["index"] for e in a.events]
    assert indexes == sorted(indexes)  # removed lines (log tampering) leave gaps, never disorder


def _inc(family: str = "bulk_release", tenant: str = "acme", **ents: list[str]) -> Incident:
    entities = frozenset((k, v) for k, vs in ents.items() for v in vs)
    return Incident("inc-1", family, 1000, 2000, tenant, entities)


def test_matching_definitions() -> None:
    inc = _inc(actors=["eve"])
    hit = {"ts": 1500, "tenant": "acme", "actors": ["eve"], "family": "bulk_release"}
    late = {**hit, "ts": 2000 + 3_600_001}
    other = {**hit, "actors": ["bob"]}
    wrong_tenant = {**hit, "tenant": "globex"}
    tenant_wide = {"ts": 1500, "tenant": "*", "family": "log_tamper"}
    report = evaluate([hit, late, other, wrong_tenant, tenant_wide], [inc], entity_days=1000).to_json()
    assert report["detected"] == 1
    assert report["false_alerts"] == 3  # late, another actor, another tenant; "*" with no entities matches
    assert report["false_alerts_per_1000_entity_days"] == 3.0
    assert report["families"]["bulk_release"]["ttd_p50_s"] == 0.5
    alerts, bad = parse_alerts(["{}", "nonsense", '{"ts": 5}', ""])
    assert (len(alerts), bad) == (1, 2)
    labels, bad = parse_labels(['{"incident": "x"}', '{"incident": "x", "family": "f", "start_ms": 1, "end_ms": 2}'])
    assert (len(labels), bad) == (1, 1)


def test_benign_entity_days_exclude_the_incidents_own_windows() -> None:
    lines = [
        '{"ts": 1500, "type": "object.read", "tenant": "acme", "actor": "eve", "resource": ""}',
        '{"ts": 90000000, "type": "object.read", "tenant": "acme", "actor": "eve", "resource": ""}',
        '{"ts": 1500, "type": "object.read", "tenant": "acme", "actor": "bob", "resource": ""}',
        "garbage",
    ]
    days, bad = benign_entity_days(lines, [_inc(actors=["eve"])])
    assert (days, bad) == (2, 1)  # eve on day 1, bob on day 0; eve's day 0 only inside the incident


def test_quality_on_a_held_out_scenario() -> None:
    scenario = simulate(7, days=21, profile="holdout")
    engine = Sentinel(default_config())
    alerts = [a.to_json() for line in scenario.events_jsonl().splitlines() for a in engine.feed_line(line)]
    alerts += [a.to_json() for a in engine.finish()]
    incidents, _ = parse_labels(scenario.labels_jsonl().splitlines())
    days, _ = benign_entity_days(scenario.events_jsonl().splitlines(), incidents)
    report = evaluate(alerts, incidents, days).to_json()
    assert report["recall"] >= 0.9, report["missed"]
    assert report["false_alerts_per_1000_entity_days"] <= 10.0
    assert report["families"]["honeypot"]["recall"] == 1.0
