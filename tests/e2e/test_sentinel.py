"""The sentinel against a real broker process: detection, recorded alerts, containment, its limits.

``weightvault sentinel run`` runs as its own process with a principal of role sentinel,
following the broker's tiles API (every checkpoint verified) with the packaged rules,
baselines and learned model. An attack (a workload touching a honeypot model) must end
with the principal frozen (its next release refused), the model held for approval, an
alert in the log whose evidence is provable, and nothing the sentinel cannot do: it
cannot lift, cannot hold what its evidence does not name, cannot hold operators.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.broker_fixture import Broker, running_broker
from weightvault.auditlog.bundle import verify_bundle
from weightvault.auditlog.log import LogReader
from weightvault.auditlog.note import NoteVerifier
from weightvault.auditlog.policy import WitnessPolicy
from weightvault.client.broker import SampleAttester
from weightvault.errors import ApprovalRequiredError, ContainedError, PermissionDeniedError
from weightvault.format.keys import FileKey
from weightvault.sealing import seal_safetensors


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    import numpy as np
    from safetensors.numpy import save_file

    tmp = tmp_path_factory.mktemp("sentinel")
    plain = tmp / "small.safetensors"
    save_file({"a": np.arange(64, dtype=np.float32)}, str(plain))
    with running_broker(tmp, plain) as running:
        op = running.client("operator")
        running.tokens["sentinel"] = op.create_principal("sentinel-1", "sentinel")
        running.tokens["acme-wl3"] = op.create_principal("acme-wl3", "workload", "acme")
        # A decoy: registered like any model, tagged so the sentinel knows nobody should touch it.
        fk = FileKey.generate()
        out = tmp / "decoy.wvlt"
        result = seal_safetensors(plain, out, file_key=fk)
        files = [{"file_id": result.file_id.hex(), "header_mac": result.header_mac.hex(), "path": out.name}]
        pub = running.client("acme-pub")
        pub.register_model("acme", "decoy", "1", policy="open", file_key=fk, files=files, tags={"honeypot": "true"})
        yield running


def _release(broker: Broker, who: str, resource: str) -> None:
    client = broker.client(who)
    session, _ = client.attest(SampleAttester())
    client.release(session, resource).wipe()


@pytest.fixture(scope="module")
def sentinel_process(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("sentinel-run")
    token_file = tmp / "sentinel.token"
    token_file.write_text(broker.tokens["sentinel"])
    token_file.chmod(0o600)
    state = tmp / "state.json"
    args = [
        sys.executable,
        "-m",
        "weightvault",
        "sentinel",
        "run",
        "--broker",
        broker.url,
        "--token",
        f"@{token_file}",
        "--log-key",
        str(broker.base / "keys" / "audit-log.key.vkey"),
        "--state",
        str(state),
        "--interval",
        "0.2",
    ]
    log = (tmp / "sentinel.out").open("w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield {"proc": proc, "args": args, "state": state, "out": tmp / "sentinel.out"}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=20)
        log.close()


def _wait(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_honeypot_touch_is_contained_and_the_frozen_principals_next_release_is_refused(
    broker: Broker, sentinel_process: dict[str, Any]
) -> None:
    op = broker.client("operator")
    _release(broker, "acme-wl", "acme/models/small@1")  # ordinary traffic first
    _release(broker, "acme-wl2", "acme/models/decoy@1")  # the attack: nobody uses a decoy

    holds = _wait(lambda: [h for h in op.holds() if h["target"] == "acme-wl2"])
    hold = holds[0]
    assert hold["kind"] == "principal"
    assert hold["created_by"] == "sentinel-1"
    assert hold["rule"] == "honeypot-touch"

    # The frozen principal's next release is refused, with the contained code.
    with pytest.raises(ContainedError):
        _release(broker, "acme-wl2", "acme/models/small@1")
    # The decoy itself is held: another workload's release of it now needs an approval.
    models = _wait(lambda: [h for h in op.holds() if h["kind"] == "model"])
    assert models[0]["target"] == "acme/models/decoy"
    with pytest.raises(ApprovalRequiredError):
        _release(broker, "acme-wl3", "acme/models/decoy@1")
    # That attempt touched the decoy too: another actor, so another alert (not suppressed as a
    # repeat of the first). Waiting for it also means the sentinel has read that far before the
    # restart test stops it: otherwise the restarted sentinel raises it, rightly, and the count
    # there would be off.
    _wait(lambda: [a for a in op.sentinel_alerts("acme") if "acme-wl3" in a["details"]["actors"]])
    # Everyone else is untouched.
    _release(broker, "acme-wl", "acme/models/small@1")

    # The alert is in the log; its evidence is provable with the log's inclusion proofs.
    alerts = op.sentinel_alerts("acme")
    alert = next(a for a in alerts if a["index"] == hold["alert_index"])
    assert alert["type"] == "sentinel.alert"
    assert alert["details"]["family"] == "honeypot"
    assert "acme-wl2" in alert["details"]["actors"]
    verifier = NoteVerifier.from_vkey((broker.base / "keys" / "audit-log.key.vkey").read_text().strip())
    with LogReader.open(broker.base / "data" / "audit.db", "weightvault-broker/audit") as log:
        for index in alert["details"]["evidence"]:
            bundle = log.proof_bundle(index)
            verified = verify_bundle(bundle, verifier, WitnessPolicy({}, {}, "none"), now=int(time.time()))
            event = json.loads(verified.entry)
            assert event["actor"] == "acme-wl2"
            assert event["resource"].startswith("acme/models/decoy")
        holds_done = [e for _, e in log.events() if e.type == "containment.hold.done"]
    assert len(holds_done) >= 2

    # Lifting is an operator's act, audited; afterwards the principal works again.
    with pytest.raises(PermissionDeniedError):
        broker.client("sentinel").lift(hold["id"])
    op.lift(hold["id"])
    _release(broker, "acme-wl2", "acme/models/small@1")


def test_the_sentinel_cannot_hold_what_its_evidence_does_not_name(
    broker: Broker, sentinel_process: dict[str, Any]
) -> None:
    op = broker.client("operator")
    alert = _wait(lambda: [a for a in op.sentinel_alerts("acme") if a["details"]["family"] == "honeypot"])[0]
    sentinel = broker.client("sentinel")
    # A principal the alert's evidence does not name (text in an event cannot steer this).
    with pytest.raises(PermissionDeniedError):
        sentinel.hold("principal", "acme-wl", rule="honeypot-touch", alert_index=alert["index"])
    # The right target under another rule than the alert's.
    with pytest.raises(PermissionDeniedError):
        sentinel.hold("principal", "acme-wl2", rule="bulk-release", alert_index=alert["index"])
    # An entry that is not a sentinel alert, and no alert at all.
    with pytest.raises(PermissionDeniedError):
        sentinel.hold("principal", "acme-wl2", rule="x", alert_index=0)
    with pytest.raises(PermissionDeniedError):
        sentinel.hold("principal", "acme-wl2", rule="x")
    # Operators are never the sentinel's to hold.
    with pytest.raises(PermissionDeniedError):
        sentinel.hold("principal", "operator", rule="x", alert_index=alert["index"])
    # Every refusal is in the log, with its reason (the caller sees only "not allowed").
    reasons = [e.reasons[0] for _, e in broker.events() if e.type == "containment.hold.fail"]
    assert any("does not name this principal" in r for r in reasons)
    assert any("not a sentinel.alert" in r for r in reasons)
    assert any("cites the sentinel.alert" in r for r in reasons)
    assert any("role operator" in r for r in reasons)
    assert any("another rule" in r for r in reasons)
    # A sentinel cannot record an alert about evidence that is not (yet) in the log.
    with pytest.raises(Exception, match="evidence"):
        sentinel.post_alert(
            {
                "ts": 1,
                "detector": "rules",
                "rule": "r",
                "family": "honeypot",
                "severity": "low",
                "score": 0.1,
                "tenant": "acme",
                "evidence": [10**9],
            }
        )


def test_detection_events_and_state_survive_a_restart(broker: Broker, sentinel_process: dict[str, Any]) -> None:
    # The broker records what detection needs: failed authentications, sensitive reads, client hashes.
    bad = httpx.get(broker.url + "/v1/devices", headers={"authorization": "Bearer wv1_acme-wl.wrong"})
    assert bad.status_code == 401
    httpx.get(
        broker.url + "/v1/tenants/acme/policies", headers={"authorization": f"Bearer {broker.tokens['acme-admin']}"}
    ).raise_for_status()
    events = broker.events(0, until="object.read")
    fails = [e for _, e in events if e.type == "auth.fail"]
    assert fails
    assert fails[-1].actor == "acme-wl"
    assert fails[-1].hmac["client"].startswith("hmac-sha256:")
    reads = [e for _, e in events if e.type == "object.read" and e.actor == "acme-admin"]
    assert reads
    assert reads[-1].resource == "acme/policies"
    assert "127.0.0.1" not in json.dumps([e.to_json() for _, e in events])

    # The sentinel ran every detector kind on the live stream, and its state is on disk once it
    # stops (while running it writes at most every 30 s).
    proc: subprocess.Popen[bytes] = sentinel_process["proc"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    state = json.loads(Path(sentinel_process["state"]).read_text())
    assert state["rates"]  # per-entity baselines
    assert state["learned"]["windows"] or state["learned"]["train"]  # the learned model's windows
    assert state["watchlists"]["honeypot"] == ["acme/models/decoy"]
    before = len(broker.client("operator").sentinel_alerts())
    # Restarted on the same state, it re-verifies the log but raises nothing twice.
    again = subprocess.run(
        [*sentinel_process["args"], "--once"], check=False, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert len(broker.client("operator").sentinel_alerts()) == before
    assert "verification failures" in again.stdout


def _wv(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightvault", *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )


def test_cli_simulate_scan_eval_and_export(broker: Broker, tmp_path: Path) -> None:
    sim = _wv("sentinel", "simulate", "--out", tmp_path, "--seed", "3", "--days", "14")
    assert sim.returncode == 0, sim.stderr
    events = tmp_path / "events.jsonl"
    with events.open("a") as handle:
        handle.write('{"broken": \n')
    scan = _wv("sentinel", "scan", "--events", events, "--alerts-out", tmp_path / "alerts.jsonl", "--jobs", "2")
    assert scan.returncode == 0, scan.stderr
    assert "1 malformed" in scan.stdout
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert {"ts", "score", "detector", "family", "tenant", "actors", "devices", "keys", "resources", "evidence"} <= set(
        alerts[0]
    )
    report = _wv("sentinel", "eval", "--events", events, "--labels", tmp_path / "labels.jsonl", "--json",
                 "--alerts", tmp_path / "alerts.jsonl")  # fmt: skip
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    assert doc["incidents"] == 22
    assert doc["families"]["honeypot"]["recall"] == 1.0
    assert doc["bad_lines"]["events"] == 1
    table = _wv("sentinel", "eval", "--events", events, "--labels", tmp_path / "labels.jsonl", "--no-learned")
    assert table.returncode == 0, table.stderr
    assert "false alerts over" in table.stdout
    # A rule file that does not compile: one line, exit 62.
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [{id: x, detection: {s: {type: a}, condition: t}}]\n")
    refused = _wv("sentinel", "rules", "--check", bad)
    assert refused.returncode == 62
    assert refused.stderr.count("\n") <= 2
    # The broker's own log, exported as the interchange format, scans cleanly.
    out = tmp_path / "broker.jsonl"
    export = _wv("audit", "export", "--db", broker.base / "data" / "audit.db", "--format", "jsonl", "--out", out)
    assert export.returncode == 0, export.stderr
    lines = out.read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(len(lines)))
    rescan = _wv("sentinel", "scan", "--events", out, "--alerts-out", tmp_path / "broker-alerts.jsonl")
    assert rescan.returncode == 0, rescan.stderr
    assert "0 malformed, 0 of unknown type" in rescan.stdout
    honeypot = [json.loads(x) for x in (tmp_path / "broker-alerts.jsonl").read_text().splitlines()]
    assert any(a["rule"] == "honeypot-touch" and "acme-wl2" in a["actors"] for a in honeypot)
