"""The witness and the tiles endpoint as real processes on loopback, and the audit CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.servers import free_port, serve
from weightvault.auditlog import AuditEvent, AuditLog, NoteSigner, WitnessPolicy, parse_note
from weightvault.auditlog.checkpoint import Checkpoint
from weightvault.auditlog.log import LogConfig
from weightvault.auditlog.witness import HTTPWitness, encode_add_checkpoint

pytestmark = pytest.mark.e2e


def wv(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "weightvault", *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    out = {"log": tmp_path / "log.key", "w1": tmp_path / "w1.key", "w2": tmp_path / "w2.key"}
    wv("audit", "keygen", "weightvault.test/audit", out["log"])
    wv("witness", "keygen", "w1.test", out["w1"])
    wv("witness", "keygen", "w2.test", out["w2"])
    return out


def _event(i: int, type: str = "test.event") -> AuditEvent:
    return AuditEvent(type=type, tenant="acme", actor=f"op:{i}", resource=f"acme/r{i}")


def test_log_publishes_through_two_http_witnesses(tmp_path: Path, keys: dict[str, Path]) -> None:
    """A log gets a 2-of-2 cosigned checkpoint from two witness processes; the CLI verifies its exports."""
    log_key = NoteSigner.from_skey(keys["log"].read_text())
    ports = [free_port(), free_port()]
    args = [
        [
            "witness",
            "serve",
            "--key",
            str(keys[w]),
            "--state",
            str(tmp_path / f"{w}.db"),
            "--log",
            str(keys["log"]) + ".vkey",
            "--port",
            str(p),
        ]
        for w, p in zip(("w1", "w2"), ports, strict=True)
    ]
    with serve(args[0], ports[0]) as url1, serve(args[1], ports[1]) as url2:
        witnesses = [HTTPWitness("w1.test", url1), HTTPWitness("w2.test", url2)]
        vkeys = [keys[w].with_name(keys[w].name + ".vkey").read_text().strip() for w in ("w1", "w2")]
        from weightvault.auditlog.note import NoteVerifier

        policy = WitnessPolicy.threshold([NoteVerifier.from_vkey(v) for v in vkeys], 2)
        with AuditLog(
            tmp_path / "audit.db", log_key, witnesses=witnesses, policy=policy, config=LogConfig(batch_delay_s=0)
        ) as log:
            for i in range(40):
                log.append(_event(i))
            published = log.publish_now()
            assert 40 == Checkpoint.from_text(published.text).size
            for i in range(40, 45):
                log.append(_event(i))
            later = log.publish_now()
            assert 2 + 1 == len(later.signatures)
        for w in witnesses:
            w.close()
        # A split view sent straight to a witness is refused with the protocol's code.
        other_dir = tmp_path / "fork"
        other_dir.mkdir()
        with AuditLog(other_dir / "audit.db", log_key) as fork:
            for i in range(45):
                fork.append(_event(1000 + i))
            forked = fork.latest_checkpoint()
        reply = httpx.post(url1 + "/add-checkpoint", content=encode_add_checkpoint(45, [], forked))
        assert 409 == reply.status_code
        assert reply.headers["content-type"].startswith("text/x.tlog.size")
        assert "45\n" == reply.text
        bad = httpx.post(url1 + "/add-checkpoint", content=b"old x\n\n")
        assert 400 == bad.status_code
    policy_file = tmp_path / "policy.txt"
    policy_file.write_text(policy.to_text())
    export = tmp_path / "export.tar.gz"
    wv("audit", "export", "--db", tmp_path / "audit.db", "--out", export)
    bundle = tmp_path / "entry7.tlog-proof"
    wv("audit", "export", "--db", tmp_path / "audit.db", "--index", "7", "--out", bundle)
    vkey = str(keys["log"]) + ".vkey"
    report = json.loads(wv("audit", "verify", bundle, "--log-key", vkey, "--policy", policy_file, "--json").stdout)
    assert (7, 45, ["w1.test", "w2.test"]) == (report["index"], report["size"], report["cosigned_by"])
    report = json.loads(wv("audit", "verify", export, "--log-key", vkey, "--json").stdout)
    assert 45 == report["entries"]
    # Exports and the served checkpoint carry the witnesses' cosignatures (the README's commands).
    witnessed = ["--witness", vkeys[0], "--witness", vkeys[1], "--quorum", "2"]
    report = json.loads(wv("audit", "verify", export, "--log-key", vkey, *witnessed, "--json").stdout)
    assert 45 == report["entries"]
    port = free_port()
    with serve(
        ["audit", "serve", "--db", str(tmp_path / "audit.db"), "--port", str(port)], port, ready_path="/checkpoint"
    ) as url:
        assert 3 == len(parse_note(httpx.get(url + "/checkpoint").text).signatures)
        followed = wv("audit", "monitor", "--url", url, "--log-key", vkey, *witnessed)
        assert "OK: 45 entries" in followed.stdout
    from weightvault.auditlog import ProofBundle

    original = ProofBundle.from_text(bundle.read_text())
    assert original.extra is not None
    tampered = ProofBundle(
        original.index, original.proof, original.checkpoint, original.extra.replace(b"op:7", b"op:8")
    )
    (tmp_path / "bad.tlog-proof").write_text(tampered.to_text())
    failed = wv("audit", "verify", tmp_path / "bad.tlog-proof", "--log-key", vkey, check=False)
    assert 41 == failed.returncode
    quorum = wv(
        "audit",
        "verify",
        bundle,
        "--log-key",
        vkey,
        "--witness",
        vkeys[0],
        "--witness",
        str(tmp_path / "nope"),
        check=False,
    )
    assert quorum.returncode != 0


def test_tiles_endpoint_serves_the_spec_paths(tmp_path: Path, keys: dict[str, Path]) -> None:
    """audit serve answers checkpoint, full and partial tiles, and entry bundles, and 404s the rest."""
    log_key = NoteSigner.from_skey(keys["log"].read_text())
    with AuditLog(tmp_path / "audit.db", log_key) as log:
        for i in range(300):
            log.submit(_event(i))
        log.append(_event(300))
    port = free_port()
    with serve(
        ["audit", "serve", "--db", str(tmp_path / "audit.db"), "--port", str(port)], port, ready_path="/checkpoint"
    ) as url:
        note = parse_note(httpx.get(url + "/checkpoint").text)
        assert 301 == Checkpoint.from_text(note.text).size
        assert 256 * 32 == len(httpx.get(url + "/tile/0/000").content)
        assert 45 * 32 == len(httpx.get(url + "/tile/0/001.p/45").content)
        assert 32 == len(httpx.get(url + "/tile/1/000.p/1").content)
        assert httpx.get(url + "/tile/entries/001.p/45").content.startswith(b"\x00")
        assert 404 == httpx.get(url + "/tile/0/001.p/46").status_code
        assert 404 == httpx.get(url + "/tile/0/002").status_code
        assert 404 == httpx.get(url + "/../audit.db").status_code


def test_audit_show_and_monitor_cli(tmp_path: Path, keys: dict[str, Path]) -> None:
    """audit show filters by tenant; audit monitor exits 40 when a release has no intent."""
    log_key = NoteSigner.from_skey(keys["log"].read_text())
    db = tmp_path / "audit.db"
    with AuditLog(db, log_key) as log:
        log.append(AuditEvent(type="policy.decision", tenant="acme", actor="wl", resource="acme/m", decision="allow"))
        log.append(
            AuditEvent(type="key.release.intent", tenant="acme", actor="wl", resource="acme/m", refs={"decision": 0})
        )
        log.append(
            AuditEvent(type="key.release.done", tenant="acme", actor="wl", resource="acme/m", refs={"intent": 1})
        )
        log.append(AuditEvent(type="test.event", tenant="globex", actor="op", resource="x"))
    lines = wv("audit", "show", "--db", db, "--tenant", "acme", "--json").stdout.splitlines()
    assert [0, 1, 2] == [json.loads(line)["index"] for line in lines]
    assert "OK" in wv("audit", "monitor", "--db", db).stdout
    with AuditLog(db, log_key) as log:
        log.append(AuditEvent(type="key.release.done", tenant="acme", actor="wl", resource="acme/m"))
    failed = wv("audit", "monitor", "--db", db, check=False)
    assert 40 == failed.returncode
    assert "release-without-intent" in failed.stdout


def test_audit_monitor_follows_a_served_log_and_stops_on_a_rewrite(tmp_path: Path, keys: dict[str, Path]) -> None:
    """monitor --url verifies every entry against the signed root; it reports violations, and a rewritten
    history stops it with an error instead of a clean report."""
    import sqlite3

    log_key = NoteSigner.from_skey(keys["log"].read_text())
    db = tmp_path / "audit.db"
    with AuditLog(db, log_key) as log:
        for i in range(300):
            log.submit(_event(i))
        log.append(AuditEvent(type="policy.decision", tenant="acme", actor="wl", resource="acme/m", decision="allow"))
        log.append(
            AuditEvent(type="key.release.intent", tenant="acme", actor="wl", resource="acme/m", refs={"decision": 300})
        )
        log.append(
            AuditEvent(type="key.release.done", tenant="acme", actor="wl", resource="acme/m", refs={"intent": 301})
        )
    port = free_port()
    vkey = str(keys["log"]) + ".vkey"
    with serve(["audit", "serve", "--db", str(db), "--port", str(port)], port, ready_path="/checkpoint") as url:
        state = tmp_path / "seen.json"
        ok = wv("audit", "monitor", "--url", url, "--log-key", vkey, "--state", state)
        assert "OK: 303 entries, no violations" in ok.stdout
        assert json.loads(state.read_text())[log_key.name]["size"] == 303
        with AuditLog(db, log_key) as log:
            log.append(AuditEvent(type="key.release.done", tenant="acme", actor="wl", resource="acme/m"))
        failed = wv("audit", "monitor", "--url", url, "--log-key", vkey, "--state", state, check=False)
        assert 40 == failed.returncode
        assert "release-without-intent at entry 303" in failed.stdout
        conn = sqlite3.connect(db)
        conn.execute("UPDATE entries SET data = replace(data, 'op:7', 'op:X') WHERE idx = 7")
        conn.commit()
        conn.close()
        forged = wv("audit", "monitor", "--url", url, "--log-key", vkey, check=False)
        assert forged.returncode not in (0, 40)
        assert "do not hash to the root" in forged.stderr
        assert 1 == len(forged.stderr.strip().splitlines())
        unsigned = wv("audit", "monitor", "--url", url, "--log-key", str(keys["w1"]) + ".vkey", check=False)
        assert unsigned.returncode not in (0, 40)
