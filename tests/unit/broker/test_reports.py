"""Events other processes hand to the broker: a sandbox's reports over HTTP, the gateway's outbox."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.broker.conftest import InProcess
from weightvault.auditlog import AuditEvent
from weightvault.errors import InvalidRequestError, PermissionDeniedError

BLOCKED: dict[str, Any] = {
    "type": "egress.blocked",
    "details": {"sandbox": "abc123", "family": "ipv4", "proto": "tcp", "dst": "127.0.0.1", "port": 22, "packets": 1,
                "total": 1},
}  # fmt: skip


def test_a_workload_reports_blocked_egress_in_its_own_name(in_process: InProcess) -> None:
    start = in_process.audit.size
    assert {"recorded": 1} == in_process.client("acme-workload").request("POST", "/v1/reports", {"events": [BLOCKED]})
    event = in_process.last(start, "egress.blocked")
    assert ("acme", "acme-workload", "sandbox:abc123") == (event.tenant, event.actor, event.resource)
    assert 22 == event.details["port"]


@pytest.mark.parametrize(
    "change",
    [
        {"type": "key.release.done"},  # not a report type: a sandbox cannot forge broker events
        {"details": {**BLOCKED["details"], "tenant": "globex"}},  # an extra field
        {"details": {**BLOCKED["details"], "dst": "not-an-ip"}},
        {"details": {**BLOCKED["details"], "port": 70000}},
        {"details": {**BLOCKED["details"], "packets": -1}},
        {"details": {**BLOCKED["details"], "proto": "carrier-pigeon"}},
        {"details": {k: v for k, v in BLOCKED["details"].items() if k != "total"}},
        {"extra": 1},
    ],
)
def test_malformed_reports_are_refused_whole(in_process: InProcess, change: dict[str, Any]) -> None:
    start = in_process.audit.size
    bad = {**BLOCKED, **change}
    with pytest.raises(InvalidRequestError):
        in_process.client("acme-workload").request("POST", "/v1/reports", {"events": [BLOCKED, bad]})
    in_process.last(start, "test.event")
    assert not [e for _, e in in_process.audit.events(start=start) if e.type == "egress.blocked"]


def test_only_workloads_report(in_process: InProcess) -> None:
    with pytest.raises(PermissionDeniedError):
        in_process.client("acme-admin").request("POST", "/v1/reports", {"events": [BLOCKED]})


def test_the_outbox_drains_gateway_events_in_order_and_rejects_the_rest(in_process: InProcess) -> None:
    start = in_process.audit.size
    store = in_process.broker.store
    good = [
        AuditEvent("gateway.request", "acme", "acme-workload", resource="acme/models/m@1", details={"n": i})
        for i in range(3)
    ]
    forged = AuditEvent("key.release.done", "acme", "acme-workload")
    rows = [("gateway", e.encode().decode()) for e in good]
    store.outbox.add([*rows[:2], ("gateway", forged.encode().decode()), ("gateway", "{not json"), rows[2]], 1)
    assert 5 == in_process.broker.drain_outbox()
    assert [] == store.outbox.pending()
    assert 0 == in_process.broker.drain_outbox()
    events = [e for _, e in in_process.audit.events(start=start)]
    assert [0, 1, 2] == [e.details["n"] for e in events if e.type == "gateway.request"]
    assert not [e for e in events if e.type == "key.release.done"]
    rejected = [e for e in events if e.type == "outbox.reject"]
    assert 2 == len(rejected)
    assert "may not write key.release.done" in rejected[0].details["reason"]
    assert all("outbox" in e.refs for e in events if e.type == "gateway.request")
