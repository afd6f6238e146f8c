"""Failure paths that need control over the broker's insides or its clock: audit outages, scheduled rotation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.databases import init_options
from tests.e2e.broker_fixture import wv
from tests.e2e.servers import serve_broker
from weightvault.attestation.interfaces import AttestationResult
from weightvault.auditlog.events import AuditEvent
from weightvault.auditlog.log import LogReader, Receipt
from weightvault.broker.service import Principal, Role
from weightvault.client.broker import BrokerClient
from weightvault.crypto.keywrap import HPKEKem, hpke_generate
from weightvault.custody.approvals import approval_message
from weightvault.custody.person import PersonKey
from weightvault.errors import AuditLogError
from weightvault.format.keys import FileKey
from weightvault.server.broker_main import BrokerRuntime, load_broker

pytestmark = pytest.mark.e2e


class FailingSink:
    """The real audit log, except that appends of the chosen event types fail (disk full, I/O error)."""

    def __init__(self, inner: Any, fail_on: set[str]) -> None:
        self.inner = inner
        self.fail_on = fail_on

    def append(self, event: AuditEvent) -> Receipt:
        if event.type in self.fail_on:
            raise AuditLogError("injected: the audit log cannot append")
        return self.inner.append(event)  # type: ignore[no-any-return]

    def submit(self, event: AuditEvent) -> Any:
        if event.type in self.fail_on:
            raise AuditLogError("injected: the audit log cannot append")
        return self.inner.submit(event)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[BrokerRuntime]:
    wv("broker", "init", tmp_path / "b", "--insecure-sample", *init_options())
    rt = load_broker(tmp_path / "b" / "broker.toml")
    yield rt
    rt.close()


def test_an_audit_failure_during_an_approved_release_refuses_it(runtime: BrokerRuntime) -> None:
    broker = runtime.broker
    op = Principal("operator", None, Role.OPERATOR)
    broker.create_tenant(op, "acme")
    admin = Principal("admin", "acme", Role.TENANT_ADMIN)
    workload = Principal("wl", "acme", Role.WORKLOAD)
    keys = {n: PersonKey.generate(n) for n in ("alice", "bob")}
    approvers = {
        n: {"signing": k.public.to_json()["signing"], "hpke": k.public.to_json()["hpke"]} for n, k in keys.items()
    }
    broker.put_approval_policy(
        op,
        {
            "approvers": approvers,
            "groups": {"sec": ["alice", "bob"]},
            "rules": [
                {
                    "op": "key.release",
                    "when": {"model.tags.tier": "high-value"},
                    "require": [{"group": "sec", "count": 2}],
                },
                {"op": "approval.policy.change", "require": [{"group": "sec", "count": 2}]},
            ],
        },
    )
    broker.put_policy(
        admin,
        "acme",
        "open",
        {
            "verifiers": ["insecure-sample"],
            "resources": ["acme/models/*"],
            "rule": {"claim": "tenant", "equals": "acme"},
        },
    )
    broker.register_model(
        admin, "acme", "m", "1", policy="open", file_key=FileKey.generate(), files=[], tags={"tier": "high-value"}
    )
    resource = "acme/models/m@1"
    request, _ = broker.request_approval(workload, "key.release", "acme", {"resource": resource, "principal": "wl"})
    expires = int(time.time()) + 600
    for name, key in keys.items():
        signature = key.sign(approval_message(request.digest, "approve", expires, name))
        broker.submit_approval(Principal(name, None, Role.APPROVER), request.id, "approve", expires, signature)
    assert "approved" == broker.approvals.request(request.id)[1]
    _, public = hpke_generate(HPKEKem.X25519)
    result = AttestationResult("insecure-sample", {"tenant": "acme"}, "sha256:" + "0" * 64, None)
    _, token = broker.keyring.signer.issue(
        tenant="acme",
        principal="wl",
        result=result,
        kem="x25519",
        public=public,
        challenge_id="c",
        now=int(time.time()),
    )
    real = broker.recorder.sink
    before = runtime.audit.size
    for failing in ("key.release.intent", "policy.decision"):
        broker.recorder.sink = FailingSink(real, {failing})
        with pytest.raises(AuditLogError):
            broker.releases._release(workload, token, resource, None, request.id)
        # Nothing was released and the approval was not consumed: it is still usable once.
        assert "approved" == broker.approvals.request(request.id)[1]
    broker.recorder.sink = real
    with LogReader.open(runtime.base / "data" / "audit.db", "weightvault-broker/audit") as log:
        after = [e.type for _, e in log.events(start=before)]
    assert "key.release.intent" not in after
    assert "key.release.done" not in after
    outcome = broker.releases._release(workload, token, resource, None, request.id)
    assert outcome.resource == resource
    assert "executed" == broker.approvals.request(request.id)[1]


def test_an_audit_failure_refuses_custody_and_approval_changes(runtime: BrokerRuntime) -> None:
    broker = runtime.broker
    op = Principal("operator", None, Role.OPERATOR)
    real = broker.recorder.sink
    broker.recorder.sink = FailingSink(real, {"approval.policy.change.intent", "custody.genesis"})
    key = PersonKey.generate("alice")
    doc = {
        "approvers": {"alice": {"signing": key.public.to_json()["signing"], "hpke": key.public.to_json()["hpke"]}},
        "groups": {"g": ["alice"]},
        "rules": [{"op": "approval.policy.change", "require": [{"group": "g", "count": 1}]}],
    }
    with pytest.raises(AuditLogError):
        broker.put_approval_policy(op, doc)
    assert broker.approvals.policy() is None
    with pytest.raises(AuditLogError):
        broker.custody_genesis("test", None, 2, [PersonKey.generate(n).public for n in ("a", "b", "c")])
    assert broker.custody.share_set("active") is None
    broker.recorder.sink = real


def test_scheduled_rotation_runs_in_the_server(tmp_path: Path) -> None:
    base = tmp_path / "b"
    wv("broker", "init", base, "--insecure-sample", *init_options())
    config = (base / "broker.toml").read_text()
    # KEKs older than ~1.7 s rotate; the server checks twice a second.
    (base / "broker.toml").write_text(config + "\n[rotation]\nkek_max_age_days = 0.00002\ncheck_seconds = 0.5\n")
    with (
        serve_broker(base) as url,
        BrokerClient(url, (base / "operator.token").read_text().strip()) as op,
    ):
        op.create_tenant("acme")
        deadline = time.monotonic() + 20
        while True:
            with LogReader.open(base / "data" / "audit.db", "weightvault-broker/audit") as log:
                rotations = [e for _, e in log.events() if e.type == "key.rotate.done" and e.actor == "scheduler"]
            if rotations or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    assert rotations, "the scheduler never rotated the KEK"
    assert rotations[0].details["version"] >= 2
