"""The audit log end to end: sequencing, durability, fencing, witnesses, clients, exports, monitor."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.witnessed_log import LOG_KEY, NOW, clock, witness, witnessed_log
from weightvault.auditlog import (
    AuditEvent,
    AuditLog,
    Checkpoint,
    InProcessWitness,
    LogVerifier,
    Monitor,
    NoteSigner,
    TrustedState,
    WitnessPolicy,
    parse_note,
    verify_bundle,
    write_ahead,
)
from weightvault.auditlog.checkpoint import verify_checkpoint
from weightvault.auditlog.events import SensitiveHasher, decode_event
from weightvault.auditlog.log import LogConfig, Receipt
from weightvault.auditlog.tiles import export_tiles, read_export, verify_export, write_tarball
from weightvault.auditlog.witness import encode_add_checkpoint
from weightvault.crypto.signing import Ed25519Signer
from weightvault.errors import AuditLogError, CheckpointError, ConsistencyError, InclusionProofError


def ev(i: int = 0, *, tenant: str = "acme", type: str = "test.event", **kw: object) -> AuditEvent:
    return AuditEvent(type=type, tenant=tenant, actor=f"op:{i}", resource=f"acme/r{i}", **kw)  # type: ignore[arg-type]


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as opened:
        yield opened


def test_append_is_durable_and_survives_reopening(tmp_path: Path) -> None:
    """Receipts carry consecutive indices; after reopening, the same events and root are there."""
    path = tmp_path / "audit.db"
    with AuditLog(path, LOG_KEY, clock=clock) as log:
        receipts = [log.append(ev(i)) for i in range(5)]
        root = log.root_at(5)
    assert [0, 1, 2, 3, 4] == [r.index for r in receipts]
    with AuditLog(path, LOG_KEY, clock=clock) as log:
        assert 5 == log.size
        assert root == log.root_at(5)
        assert "op:3" == log.event(3).actor
        assert 5 == log.fsck()


def test_group_commit_from_many_threads(log: AuditLog) -> None:
    """Concurrent appenders all get distinct indices and the tree contains every event."""
    results: list[Receipt] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(50):
            receipt = log.append(ev(n * 1000 + i))
            with lock:
                results.append(receipt)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.index for r in results) == list(range(400))
    assert 400 == log.fsck()


def test_an_awaited_append_commits_at_once_and_takes_queued_events_along(tmp_path: Path) -> None:
    """Queued events wait (here up to a minute) for company; an append commits them with it, now."""
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock, config=LogConfig(batch_delay_s=60)) as log:
        queued = [log.submit(ev(i)) for i in range(3)]
        receipt = log.append(ev(3), timeout_s=10)  # would raise after 10 s if it waited for the delay
        assert 4 == receipt.checkpoint_size
        assert [4, 4, 4] == [q.result(timeout=0).checkpoint_size for q in queued]


def test_queued_events_alone_commit_after_the_delay(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock, config=LogConfig(batch_delay_s=0.01)) as log:
        assert 0 == log.submit(ev(0)).result(timeout=10).index


def test_without_witnesses_the_commit_publishes_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No publisher round trip: readers of the database see each commit's checkpoint as published."""
    from weightvault.auditlog.log import LogReader
    from weightvault.auditlog.storage import LogStorage

    def no_second_write(*_: object) -> None:
        raise AssertionError("the publisher stored a checkpoint the commit had published")

    monkeypatch.setattr(LogStorage, "store_published", no_second_write)
    path = tmp_path / "audit.db"
    with AuditLog(path, LOG_KEY, clock=clock) as log:
        for i in range(3):
            log.append(ev(i))
        assert log.published_checkpoint() == log.latest_checkpoint()
        with LogReader.open(path, LOG_KEY.name) as reader:
            served = reader.served_checkpoint()
        assert 3 == Checkpoint.from_text(served.text).size
        assert served.to_text() == log.latest_checkpoint().to_text()


def test_the_watermark_is_on_disk_after_an_orderly_close(tmp_path: Path) -> None:
    """Commits between fsyncs of the watermark still reach it; closing syncs the last one."""
    from weightvault.auditlog.storage import Watermark

    path = tmp_path / "audit.db"
    with AuditLog(path, LOG_KEY, clock=clock) as log:
        for i in range(20):
            log.append(ev(i))
        root = log.root_at(20)
    mark = Watermark(path.with_name(path.name + ".watermark"), LOG_KEY.name)
    try:
        assert (20, root) == mark.read()
        mark.advance(21, b"r" * 32, durable=False)
        assert 2 == mark._conn.execute("PRAGMA synchronous").fetchone()[0]  # back to FULL after a relaxed commit
        assert 21 == (mark.read() or (0, b""))[0]
    finally:
        mark.close()


def test_events_are_canonical_and_queryable(log: AuditLog) -> None:
    """Entries are canonical JSON with the log's timestamp; queries filter by tenant and time."""
    log.append(ev(1, tenant="acme"))
    log.append(ev(2, tenant="globex"))
    log.append(ev(3, tenant="acme"))
    raw = log.entry(0)
    assert raw.startswith(b'{"actor":"op:1","resource":"acme/r1","tenant":"acme","ts":1800000000000')
    assert decode_event(raw).ts == int(NOW * 1000)
    assert [0, 2] == [i for i, _ in log.events(tenant="acme")]
    assert [] == list(log.events(since_ms=int(NOW * 1000) + 1))


def test_event_limits_and_secret_fields() -> None:
    """Events over 64 KiB, unknown types, floats and fields that name secrets are refused."""
    with pytest.raises(AuditLogError, match="limit"):
        ev(details={"blob": "x" * 70_000}).encode()
    with pytest.raises(AuditLogError, match="unknown audit event type"):
        ev(type="made.up")
    with pytest.raises(AuditLogError, match="names a secret"):
        ev(details={"file_key": "abc"})
    with pytest.raises(AuditLogError, match="float"):
        ev(details={"ratio": 0.5})
    hasher = SensitiveHasher(b"k" * 32, "audit-2026")
    hashed = ev(hmac={"client_ip": hasher.hash("10.0.0.7")})
    assert "10.0.0.7" not in hashed.encode().decode()


def test_oversized_event_is_refused_before_sequencing(log: AuditLog) -> None:
    """An event larger than the limit raises at append and takes no index."""
    with pytest.raises(AuditLogError):
        log.append(ev(details={"blob": "x" * 70_000}))
    assert 0 == log.append(ev()).index


def test_second_writer_is_fenced_out(tmp_path: Path) -> None:
    """A second log instance on the same files takes the fence; the first can no longer commit."""
    path = tmp_path / "audit.db"
    first = AuditLog(path, LOG_KEY, clock=clock)
    first.append(ev(0))
    second = AuditLog(path, LOG_KEY, clock=clock)
    with pytest.raises(AuditLogError, match=r"fenced out|changed"):
        first.append(ev(1))
    assert first.failed is not None
    with pytest.raises(AuditLogError):
        first.append(ev(2))
    assert 1 == second.append(ev(3)).index
    first.close()
    second.close()


def _recovers(log: AuditLog, within_s: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + within_s
    while log.failed is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_failed_commit_fails_closed_then_the_log_goes_on_once_storage_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk full for a moment: the batch and every append while it lasts are refused; once a
    commit can succeed again the log goes on by itself, with no gap and no lost entry. A commit
    that landed although it reported a failure is adopted, not written twice."""
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as log:
        log.append(ev(0))
        storage = log.storage
        real = storage.append_batch
        outcomes = ["full", "landed"]

        def flaky(*args: object, **kwargs: object) -> None:
            if outcomes:
                outcome = outcomes.pop(0)
                if outcome == "landed":
                    real(*args, **kwargs)  # type: ignore[arg-type]
                raise sqlite3.OperationalError("database or disk is full")
            real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(storage, "append_batch", flaky)
        with pytest.raises(AuditLogError, match="disk is full"):
            log.append(ev(1))
        assert log.failed is not None
        with pytest.raises(AuditLogError, match="failed"):
            log.append(ev(2))  # refused at once while failed
        assert _recovers(log)
        with pytest.raises(AuditLogError):
            log.append(ev(3))  # this commit lands, but its acknowledgement is lost
        assert _recovers(log)
        assert log.append(ev(4)).index == 2  # ev(3)'s entry, at 1, was adopted
        assert log.fsck() == 3
        assert [e.actor for _, e in log.events()] == ["op:0", "op:3", "op:4"]


def test_truncated_history_refuses_to_open(tmp_path: Path) -> None:
    """Deleting the newest rows (or restoring an older log database) makes the log refuse to open."""
    path = tmp_path / "audit.db"
    with AuditLog(path, LOG_KEY, clock=clock) as log:
        for i in range(10):
            log.append(ev(i))
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM entries WHERE idx >= 7")
    conn.commit()
    conn.close()
    with pytest.raises(AuditLogError, match="deleted"):
        AuditLog(path, LOG_KEY, clock=clock)
    # Truncating consistently (entries, nodes and head) is caught by the watermark.
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM nodes WHERE ((idx + 1) << level) > 7")
    root = next(iter(conn.execute("SELECT hash FROM nodes WHERE level = 0 AND idx = 0")))[0]
    conn.execute("UPDATE head SET size = 7, root = ?", (root,))
    conn.commit()
    conn.close()
    with pytest.raises(AuditLogError, match=r"truncated|restored"):
        AuditLog(path, LOG_KEY, clock=clock)


def test_restored_old_database_cannot_append(tmp_path: Path) -> None:
    """A backup of the log database from size 3 cannot be put back and appended to."""
    path = tmp_path / "audit.db"
    backup = tmp_path / "backup.db"
    with AuditLog(path, LOG_KEY, clock=clock) as log:
        for i in range(3):
            log.append(ev(i))
    shutil.copy(path, backup)
    with AuditLog(path, LOG_KEY, clock=clock) as log:
        for i in range(3, 8):
            log.append(ev(i))
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    shutil.copy(backup, path)
    with pytest.raises(AuditLogError, match=r"truncated|restored"):
        AuditLog(path, LOG_KEY, clock=clock)
    # Editing the restored head to claim the newer size does not help either.
    conn = sqlite3.connect(path)
    conn.execute("UPDATE head SET size = 8")
    conn.commit()
    conn.close()
    with pytest.raises(AuditLogError):
        AuditLog(path, LOG_KEY, clock=clock)


def test_rewritten_or_deleted_event_in_the_middle_is_detected(tmp_path: Path) -> None:
    """Editing or deleting a stored event is caught by fsck and by auditors' proofs."""
    path = tmp_path / "audit.db"
    with AuditLog(path, LOG_KEY, clock=clock) as log:
        for i in range(20):
            log.append(ev(i))
        note = log.latest_checkpoint()
        bundle = log.proof_bundle(9, note)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE entries SET data = replace(data, 'op:9', 'op:X') WHERE idx = 9")
    conn.commit()
    conn.close()
    with AuditLog(path, LOG_KEY, clock=clock) as log:
        with pytest.raises(AuditLogError, match="entry 9"):
            log.fsck()
        tampered = log.entry(9)
    policy = WitnessPolicy({}, {}, "none")
    with pytest.raises(InclusionProofError):
        verify_bundle(bundle, LOG_KEY.verifier, policy, now=int(NOW), entry=tampered)
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM entries WHERE idx = 4")
    conn.commit()
    conn.close()
    with pytest.raises(AuditLogError, match="deleted"):
        AuditLog(path, LOG_KEY, clock=clock)


def test_reordered_entries_are_detected(tmp_path: Path) -> None:
    """Swapping two committed entries of a batch breaks their leaf hashes and the exported tiles."""
    path = tmp_path / "audit.db"
    with AuditLog(path, LOG_KEY, clock=clock) as log:
        for i in range(6):
            log.append(ev(i))
        note = log.latest_checkpoint()
        files = export_tiles(log.storage, note)
    conn = sqlite3.connect(path)
    a, b = (bytes(r[0]) for r in conn.execute("SELECT data FROM entries WHERE idx IN (2, 3) ORDER BY idx"))
    conn.execute("UPDATE entries SET data = ? WHERE idx = 2", (b,))
    conn.execute("UPDATE entries SET data = ? WHERE idx = 3", (a,))
    conn.commit()
    conn.close()
    with AuditLog(path, LOG_KEY, clock=clock) as log:
        with pytest.raises(AuditLogError):
            log.fsck()
        swapped = export_tiles(log.storage, note)
    policy = WitnessPolicy({}, {}, "none")
    verify_export(files, LOG_KEY.verifier, policy, now=int(NOW))
    with pytest.raises(InclusionProofError):
        verify_export(swapped, LOG_KEY.verifier, policy, now=int(NOW))


def test_write_ahead_records_intent_then_done(log: AuditLog) -> None:
    """The action runs only after its intent is durable; done refers to the intent."""
    intent = ev(1, type="key.release.intent")
    ran = []
    with write_ahead(log, intent) as receipt:
        ran.append(log.size)
    assert [1] == ran
    done = log.event(1)
    assert "key.release.done" == done.type
    assert {"intent": receipt.index} == dict(done.refs)


def test_write_ahead_records_fail_when_the_action_raises(log: AuditLog) -> None:
    """A failing action leaves intent then fail in the log, and the error propagates."""
    with pytest.raises(RuntimeError), write_ahead(log, ev(1, type="key.release.intent")):
        raise RuntimeError("device gone")
    assert ["key.release.intent", "key.release.fail"] == [e.type for _, e in log.events()]


class _FailingSink:
    def append(self, event: AuditEvent) -> Receipt:
        raise AuditLogError("disk full")


def test_failed_intent_append_refuses_the_action() -> None:
    """If the intent cannot be appended, the guarded action never runs."""
    ran = []
    with pytest.raises(AuditLogError, match="disk full"), write_ahead(_FailingSink(), ev(type="key.release.intent")):
        ran.append(True)
    assert [] == ran


def test_commit_failure_fails_the_log_closed(tmp_path: Path) -> None:
    """When storage rejects a commit, appenders get errors and the log accepts nothing more."""
    path = tmp_path / "audit.db"
    log = AuditLog(path, LOG_KEY, clock=clock)
    log.append(ev(0))
    conn = sqlite3.connect(path)
    conn.execute("CREATE TRIGGER no_more BEFORE INSERT ON entries BEGIN SELECT RAISE(ABORT, 'read-only'); END")
    conn.commit()
    conn.close()
    with pytest.raises(AuditLogError, match="failed"):
        log.append(ev(1))
    with pytest.raises(AuditLogError, match="failed"), write_ahead(log, ev(2, type="key.release.intent")):
        pytest.fail("the action must not run")
    log.close()


def test_witnesses_cosign_and_clients_verify_bundles(tmp_path: Path) -> None:
    """Published checkpoints carry a quorum of cosignatures; proof bundles verify offline."""
    ws = [witness(tmp_path, i) for i in range(3)]
    policy = WitnessPolicy.threshold([w.signer.verifier for w in ws], 2)
    with witnessed_log(tmp_path, ws, 2) as log:
        for i in range(30):
            log.append(ev(i))
        published = log.publish_now()
        assert 30 == Checkpoint.from_text(published.text).size
        bundle = log.proof_bundle(17, published)
        for i in range(30, 40):
            log.append(ev(i))
        later = log.publish_now()
    verified = verify_bundle(bundle.to_text(), LOG_KEY.verifier, policy, now=int(NOW))
    assert 17 == verified.index
    assert "op:17" == decode_event(verified.entry).actor
    assert 3 == len(verified.checkpoint.cosignatures)
    assert all(w.latest(LOG_KEY.name) == (40, Checkpoint.from_text(later.text).root) for w in ws)


def test_a_witness_tells_its_newest_checkpoint_cosigned_now(tmp_path: Path) -> None:
    """latest_note: the newest checkpoint the witness accepted, the log's signature and a fresh
    cosignature that verifies under the witness's key; nothing for a log it never saw."""
    w = witness(tmp_path, 0)
    assert w.latest_note(LOG_KEY.name) is None
    with witnessed_log(tmp_path, [w], 1) as log:
        for i in range(5):
            log.append(ev(i))
        log.publish_now()
    note = parse_note(w.latest_note(LOG_KEY.name) or "")
    assert 5 == Checkpoint.from_text(note.text).size
    verified = verify_checkpoint(note, LOG_KEY.verifier, WitnessPolicy.threshold([w.signer.verifier], 1), now=int(NOW))
    assert 5 == verified.checkpoint.size
    assert w.latest_note("other.test/audit") is None


def test_client_rejects_stale_and_forked_checkpoints(tmp_path: Path) -> None:
    """A client remembers the last checkpoint: an older one, or a fork of the same size, is rejected."""
    ws = [witness(tmp_path, 0)]
    policy = WitnessPolicy.threshold([ws[0].signer.verifier], 1)
    state = TrustedState(tmp_path / "client-state.json")
    with witnessed_log(tmp_path, ws, 1) as log:
        for i in range(5):
            log.append(ev(i))
        old = log.publish_now()
        for i in range(5, 9):
            log.append(ev(i))
        new = log.publish_now()
        proof = log.consistency_proof(5, 9)
    client = LogVerifier(LOG_KEY.verifier, policy, state, clock=clock)
    client.update(old)
    client.update(new, proof)
    reloaded = LogVerifier(LOG_KEY.verifier, policy, TrustedState(tmp_path / "client-state.json"), clock=clock)
    with pytest.raises(CheckpointError, match="older"):
        reloaded.update(old)
    assert 9 == reloaded.update(new).checkpoint.size  # the same checkpoint again is fine


def test_client_rejects_a_larger_checkpoint_that_rewrote_history(tmp_path: Path) -> None:
    """A validly signed, larger checkpoint of a rewritten tree fails the consistency check."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with AuditLog(tmp_path / "a" / "audit.db", LOG_KEY, clock=clock) as honest:
        for i in range(9):
            honest.append(ev(i))
        seen = honest.latest_checkpoint()
    with AuditLog(tmp_path / "b" / "audit.db", LOG_KEY, clock=clock) as rewritten:
        for i in range(12):
            rewritten.append(ev(i if i != 4 else 99))
        forked = rewritten.latest_checkpoint()
        proof = rewritten.consistency_proof(9, 12)
    client = LogVerifier(LOG_KEY.verifier, WitnessPolicy({}, {}, "none"), clock=clock)
    client.update(seen)
    with pytest.raises(ConsistencyError):
        client.update(forked, proof)
    with pytest.raises(ConsistencyError):
        client.update(forked, [])


def test_split_view_is_refused_by_the_witness_and_detected_by_clients(tmp_path: Path) -> None:
    """The log key signs two different trees; the witness cosigns one, and a client that saw it rejects the other."""
    w = witness(tmp_path, 0)
    endpoint = InProcessWitness(w)
    honest_dir, evil_dir = tmp_path / "honest", tmp_path / "evil"
    honest_dir.mkdir()
    evil_dir.mkdir()
    with AuditLog(honest_dir / "audit.db", LOG_KEY, clock=clock) as honest:
        for i in range(4):
            honest.append(ev(i))
        honest_note = honest.latest_checkpoint()
    with AuditLog(evil_dir / "audit.db", LOG_KEY, clock=clock) as evil:
        for i in range(4):
            evil.append(ev(100 + i))
        evil_note = evil.latest_checkpoint()
    lines = endpoint.add_checkpoint(0, [], honest_note)
    cosigned = parse_note(honest_note.to_text() + "".join(lines))
    refused = w.add_checkpoint(encode_add_checkpoint(4, [], evil_note))
    assert 409 == refused.status
    assert refused.content_type.startswith("text/x.tlog.size")
    assert [(LOG_KEY.name, "same size, different root (split view)")] == w.evidence()
    policy = WitnessPolicy.threshold([w.signer.verifier], 1)
    client = LogVerifier(LOG_KEY.verifier, policy, clock=clock)
    client.update(cosigned)
    forged = evil_note.with_signatures(cosigned.signatures[1:])
    with pytest.raises(CheckpointError):
        client.update(forged)
    no_witness = LogVerifier(LOG_KEY.verifier, WitnessPolicy({}, {}, "none"), clock=clock)
    no_witness.update(cosigned)
    with pytest.raises(ConsistencyError, match="split view"):
        no_witness.update(evil_note)


def test_witness_status_codes(tmp_path: Path) -> None:
    """404 unknown origin, 403 bad signature, 400 malformed or old > new, 409 wrong old size, 422 bad proof."""
    w = witness(tmp_path, 0)
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as log:
        for i in range(3):
            log.append(ev(i))
        n3 = log.latest_checkpoint()
        for i in range(3, 7):
            log.append(ev(i))
        n7 = log.latest_checkpoint()
        good_proof = log.consistency_proof(3, 7)
    other = NoteSigner("other.test/log", Ed25519Signer(b"\x33" * 32))
    from weightvault.auditlog import sign_checkpoint

    stranger = sign_checkpoint(Checkpoint(other.name, 3, Checkpoint.from_text(n3.text).root), other)
    impostor = NoteSigner(LOG_KEY.name, Ed25519Signer(b"\x44" * 32))
    forged = sign_checkpoint(Checkpoint.from_text(n3.text), impostor)
    assert 404 == w.add_checkpoint(encode_add_checkpoint(0, [], stranger)).status
    assert 403 == w.add_checkpoint(encode_add_checkpoint(0, [], forged)).status
    assert 400 == w.add_checkpoint(b"old 01\n\n" + n3.to_text().encode()).status
    assert 400 == w.add_checkpoint(encode_add_checkpoint(9, [], n3)).status
    assert 200 == w.add_checkpoint(encode_add_checkpoint(0, [], n3)).status
    conflict = w.add_checkpoint(encode_add_checkpoint(0, [], n7))
    assert (409, b"3\n") == (conflict.status, conflict.body)
    assert 422 == w.add_checkpoint(encode_add_checkpoint(3, good_proof[:-1], n7)).status
    assert 422 == w.add_checkpoint(encode_add_checkpoint(3, [*good_proof[1:], good_proof[0]], n7)).status
    assert (3, Checkpoint.from_text(n3.text).root) == w.latest(LOG_KEY.name)
    assert 200 == w.add_checkpoint(encode_add_checkpoint(3, good_proof, n7)).status


def test_witness_never_rolls_back_under_concurrency(tmp_path: Path) -> None:
    """Concurrent add-checkpoint(N) and add-checkpoint(N+K) never leave the witness at N after cosigning N+K."""
    w = witness(tmp_path, 0)
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as log:
        log.append(ev(0))
        n1 = log.latest_checkpoint()
        for i in range(1, 9):
            log.append(ev(i))
        n9 = log.latest_checkpoint()
    assert 200 == w.add_checkpoint(encode_add_checkpoint(0, [], n1)).status
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as log:
        proof = log.consistency_proof(1, 9)
    statuses: list[int] = []

    def submit(body: bytes) -> None:
        statuses.append(w.add_checkpoint(body).status)

    bodies = [encode_add_checkpoint(1, [], n1), encode_add_checkpoint(1, proof, n9)] * 10
    threads = [threading.Thread(target=submit, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 200 in statuses
    assert 9 == w.latest(LOG_KEY.name)[0]  # type: ignore[index]


def test_tiles_export_verifies_offline_and_detects_truncation(tmp_path: Path) -> None:
    """A tarball of tiles verifies against the log key; a truncated bundle or tile does not."""
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as log:
        for i in range(600):
            log.submit(ev(i))
        log.append(ev(600))
        files = export_tiles(log.storage, log.latest_checkpoint())
    out = tmp_path / "export.tar.gz"
    write_tarball(files, out)
    policy = WitnessPolicy({}, {}, "none")
    export = verify_export(read_export(out), LOG_KEY.verifier, policy, now=int(NOW))
    assert 601 == len(export.entries)
    assert {"tile/0/000", "tile/0/001", "tile/0/002.p/89", "tile/1/000.p/2", "tile/entries/002.p/89"} <= set(files)
    broken = dict(files)
    broken["tile/entries/002.p/89"] = files["tile/entries/002.p/89"][:-5]
    with pytest.raises(InclusionProofError):
        verify_export(broken, LOG_KEY.verifier, policy, now=int(NOW))
    missing = dict(files)
    del missing["tile/0/001"]
    with pytest.raises(InclusionProofError):
        verify_export(missing, LOG_KEY.verifier, policy, now=int(NOW))


def test_monitor_invariants() -> None:
    """The monitor flags releases without intent or allow, revoked devices, digest-less policy changes, open intents."""
    m = Monitor(max_open_ms=1000)
    t = 1_000

    def e(type: str, **kw: object) -> AuditEvent:
        return AuditEvent(type=type, tenant="acme", actor="wl:1", resource="acme/m", ts=t, **kw)  # type: ignore[arg-type]

    assert [] == m.feed(0, e("policy.decision", decision="allow"))
    assert [] == m.feed(1, e("key.release.intent", refs={"decision": 0}, details={"device": "d1"}))
    assert [] == m.feed(2, e("key.release.done", refs={"intent": 1}))
    assert ["release-without-intent"] == [v.rule for v in m.feed(3, e("key.release.done", refs={"intent": 1}))]
    assert ["release-without-intent"] == [v.rule for v in m.feed(4, e("key.release.done"))]
    assert ["release-without-allow"] == [v.rule for v in m.feed(5, e("key.release.intent"))]
    m.feed(6, AuditEvent(type="device.revoke", tenant="acme", actor="op", resource="device:d1", ts=t))
    rules = [v.rule for v in m.feed(7, e("key.release.intent", refs={"decision": 0}, details={"device": "d1"}))]
    assert ["release-for-revoked-device"] == rules
    assert ["policy-change-digests"] == [v.rule for v in m.feed(8, e("policy.change", details={"new_digest": "x"}))]
    assert [] == m.feed(9, e("policy.change", details={"new_digest": "x", "old_digest": "y"}))
    assert {5, 7} == {v.index for v in m.finish(now_ms=t + 5000)}


def test_the_event_size_limit_is_what_an_entry_bundle_can_frame(tmp_path: Path) -> None:
    """An event of 65,536 bytes is refused before it gets an index; one of 65,535 is logged and exports."""
    from weightvault.auditlog.events import MAX_EVENT_BYTES

    assert 0xFFFF == MAX_EVENT_BYTES

    def sized(n: int) -> AuditEvent:
        probe = AuditEvent(type="test.event", tenant="acme", actor="a", details={"pad": ""}, ts=1_700_000_000_000)
        pad = n - len(probe.encode())
        return AuditEvent(type="test.event", tenant="acme", actor="a", details={"pad": "x" * pad})

    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=lambda: 1_700_000_000.0) as log:
        with pytest.raises(AuditLogError, match="exceeds"):
            log.append(sized(MAX_EVENT_BYTES + 1))
        assert 0 == log.size
        log.append(sized(MAX_EVENT_BYTES))
        assert MAX_EVENT_BYTES == len(log.entry(0))
        note = log.publish_now()
        files = export_tiles(log.storage, note)
    export = verify_export(files, LOG_KEY.verifier, WitnessPolicy({}, {}, "none"), now=1_700_000_000)
    assert 1 == len(export.entries)


def test_the_monitor_tells_refusals_from_orphan_completions() -> None:
    """A *.fail without refs.intent is a refusal before any intent; a *.done without one is a violation;
    a device revoked by a write-ahead record counts for the revoked-device rule."""
    m = Monitor()
    t = 1_700_000_000_000
    assert [] == m.feed(0, AuditEvent(type="policy.change.fail", tenant="acme", actor="a", resource="p", ts=t))
    found = m.feed(1, AuditEvent(type="model.register.done", tenant="acme", actor="a", resource="m", ts=t))
    assert ["completion-without-intent"] == [v.rule for v in found]
    m.feed(2, AuditEvent(type="device.revoke.intent", tenant="acme", actor="op", resource="device:d1", ts=t))
    m.feed(
        3,
        AuditEvent(
            type="device.revoke.done", tenant="acme", actor="op", resource="device:d1", refs={"intent": 2}, ts=t
        ),
    )
    m.feed(4, AuditEvent(type="policy.decision", tenant="acme", actor="w", resource="acme/m", decision="allow", ts=t))
    found = m.feed(
        5,
        AuditEvent(
            type="key.release.intent",
            tenant="acme",
            actor="w",
            resource="acme/m",
            refs={"decision": 4},
            details={"device": "d1"},
            ts=t,
        ),
    )
    assert ["release-for-revoked-device"] == [v.rule for v in found]


def test_recent_pages_newest_first_by_tenant_and_type(log: AuditLog) -> None:
    """The console's pages: a tenant's newest events first, by type prefix, before a given index."""
    for i in range(30):
        kind = "policy.decision" if i % 3 else "attest.pass"
        log.append(AuditEvent(kind, "acme" if i % 2 else "globex", "t", details={"i": i}))
    newest = log.recent(tenant="acme", type_prefix="policy.", limit=4)
    assert [e.details["i"] for _, e in newest] == [29, 25, 23, 19]
    assert all(e.tenant == "acme" and e.type == "policy.decision" for _, e in newest)
    older = log.recent(before=newest[-1][0], tenant="acme", type_prefix="policy.", limit=2)
    assert [e.details["i"] for _, e in older] == [17, 13]
    assert [e.details["i"] for _, e in log.recent(limit=2)] == [29, 28]  # every tenant
    assert [] == log.recent(tenant="nobody")
    # "policy_" is not a prefix of "policy.decision": the prefix is literal (no LIKE wildcards).
    assert [] == log.recent(tenant="acme", type_prefix="policy_")
