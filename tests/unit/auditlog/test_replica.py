"""The audit log shared by broker replicas on PostgreSQL: one sequencer by lease, hand-off for the rest.

These run in the ``--database postgresql`` pass (each test gets a database of its own on
the run's PostgreSQL server); the SQLite pass skips them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest

from tests import databases
from weightvault.auditlog.checkpoint import Checkpoint
from weightvault.auditlog.events import AuditEvent
from weightvault.auditlog.log import AuditLog, LogReader
from weightvault.auditlog.merkle import verify_consistency
from weightvault.auditlog.note import NoteSigner
from weightvault.auditlog.pgstorage import PostgresLogStorage, libpq_url
from weightvault.auditlog.replica import ReplicatedAuditLog, handoff_tag
from weightvault.crypto.signing import Ed25519Signer
from weightvault.errors import AuditLogError, ConfigError

TTL = 1.0
HANDOFF_KEY = bytes(range(32))


@pytest.fixture
def url(tmp_path: Path) -> str:
    if databases.backend() != "postgresql":
        pytest.skip("needs PostgreSQL: runs in the --database postgresql pass")
    return databases.fresh_url(tmp_path)


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner("test.example/log", Ed25519Signer(os.urandom(32)))


@pytest.fixture
def replicas(url: str, signer: NoteSigner, tmp_path: Path) -> Iterator[list[ReplicatedAuditLog]]:
    """Two replicas; the first is the sequencer when the test starts."""
    with ExitStack() as stack:
        a = stack.enter_context(_replica(url, signer, tmp_path, "a"))
        assert a.wait_sequencer(10)
        b = stack.enter_context(_replica(url, signer, tmp_path, "b"))
        yield [a, b]


def _replica(url: str, signer: NoteSigner, tmp: Path, name: str) -> ReplicatedAuditLog:
    return ReplicatedAuditLog(
        PostgresLogStorage(url, signer.name),
        signer,
        replica=name,
        watermark_path=tmp / f"{name}.watermark",
        handoff_key=HANDOFF_KEY,
        lease_ttl_s=TTL,
    )


def ev(i: int, tenant: str = "acme") -> AuditEvent:
    return AuditEvent("test.event", tenant, "tester", details={"i": i})


def _reader(url: str, signer: NoteSigner) -> LogReader:
    return LogReader(PostgresLogStorage(url, signer.name))


def test_one_sequencer_and_a_follower_share_one_log(
    replicas: list[ReplicatedAuditLog], url: str, signer: NoteSigner
) -> None:
    a, b = replicas
    time.sleep(TTL)  # b has had every chance to take the lease, and must not have
    assert a.is_sequencer
    assert not b.is_sequencer
    receipts = []
    errors: list[BaseException] = []

    def work(log: ReplicatedAuditLog, base: int) -> None:
        try:
            for i in range(40):
                receipts.append((base + i, log.append(ev(base + i))))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(log, k * 1000)) for k, log in enumerate([a, b, a, b, b])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with _reader(url, signer) as reader:
        assert reader.fsck() == reader.size
        # Every receipt names the entry holding exactly its event, once.
        assert len({r.index for _, r in receipts}) == len(receipts) == 200
        for i, receipt in receipts:
            assert reader.event(receipt.index).details["i"] == i
            assert reader.size >= receipt.checkpoint_size > receipt.index
        handovers = [e for _, e in reader.events() if e.type == "log.handover"]
        assert len(handovers) == 1
        assert handovers[0].details["holder"] == a.holder
        assert handovers[0].details["previous"] == ""
        # Timestamps never go back, whoever stamped the event first.
        stamps = [e.ts for _, e in reader.events()]
        assert stamps == sorted(stamps)


def test_a_dead_sequencer_is_replaced_and_the_log_stays_append_only(
    replicas: list[ReplicatedAuditLog], url: str, signer: NoteSigner
) -> None:
    a, b = replicas
    for i in range(10):
        a.append(ev(i))
    before = a.latest_checkpoint()
    a.abandon()  # kill -9: no release of the lease, nothing more committed
    started = time.monotonic()
    receipt = b.append(ev(99))  # handed off: waits for a sequencer, then b becomes it
    took = time.monotonic() - started
    assert b.is_sequencer
    assert took < TTL * 3, took
    with _reader(url, signer) as reader:
        assert reader.event(receipt.index).details["i"] == 99
        handovers = [e for _, e in reader.events() if e.type == "log.handover"]
        assert [h.details["holder"] for h in handovers] == [a.holder, b.holder]
        assert handovers[1].details["previous"] == a.holder
        assert handovers[1].details["fence"] > handovers[0].details["fence"]
        # The new sequencer's checkpoints extend the dead one's.
        old = Checkpoint.from_text(before.text)
        new = Checkpoint.from_text(reader.latest_checkpoint().text)
        proof = reader.consistency_proof(old.size, new.size)
        verify_consistency(old.size, new.size, old.root, new.root, proof)  # raises if not
        assert reader.fsck() == new.size


def test_a_deposed_sequencer_cannot_commit_and_steps_down(
    replicas: list[ReplicatedAuditLog], url: str, signer: NoteSigner
) -> None:
    a, _b = replicas
    a.append(ev(1))
    inner = a._sequencer
    assert inner is not None
    # Another writer takes the lease as if a had paused past it: the fence moves on.
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("UPDATE audit_head SET lease_until = '-infinity'")
    intruder = PostgresLogStorage(url, signer.name)
    try:
        assert intruder.acquire("intruder", TTL) is not None
    finally:
        intruder.close()
    with _reader(url, signer) as reader:
        size = reader.size
    # a's writer still holds the old fence: its commit fails, and nothing is written.
    with pytest.raises(AuditLogError):
        inner.append(ev(2), timeout_s=5)
    with _reader(url, signer) as reader:
        assert reader.size == size
        assert all(e.details.get("i") != 2 for _, e in reader.events())
    # a steps down; once the intruder's lease expires a replica takes over, and a's appends land.
    assert not a.is_sequencer
    receipt = a.append(ev(3))
    with _reader(url, signer) as reader:
        assert reader.event(receipt.index).details["i"] == 3
        assert reader.fsck() == reader.size


def test_handoff_rows_not_tagged_by_a_replica_are_consumed_as_rejections(
    replicas: list[ReplicatedAuditLog], url: str, signer: NoteSigner
) -> None:
    """Someone with the database's credentials but not the replicas' hand-off key writes the queue:
    garbage, a well-formed event without a tag, one with a tag copied from another row, and a
    correctly tagged row inserted again after it was appended. None is appended as what it claims;
    each is recorded (by digest) as outbox.reject. A correctly tagged row is appended."""
    a, _ = replicas
    forged = ev(666, tenant="victim").with_ts(1).encode()
    genuine = ev(7).with_ts(1).encode()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:

        def insert(data: bytes, mac: bytes | None, row_id: int | None = None) -> int:
            if row_id is None:
                row = conn.execute("SELECT nextval('audit_handoff_id_seq')").fetchone()
                assert row is not None
                row_id = int(row[0])
            conn.execute(
                "INSERT INTO audit_handoff (id, replica, data, mac) VALUES (%s, 'mallory', %s, %s)",
                (row_id, data, mac),
            )
            return row_id

        insert(b'{"not":"an event"}', None)
        insert(forged, None)
        first = insert(genuine, None)
        conn.execute("DELETE FROM audit_handoff WHERE id = %s", (first,))
        copied = handoff_tag(HANDOFF_KEY, signer.name, "mallory", first, forged)  # a tag for another id
        insert(forged, copied)
        good = insert(genuine, handoff_tag(HANDOFF_KEY, signer.name, "mallory", 10_000, genuine), 10_000)
        a.append(ev(1))
        assert _wait(lambda: conn.execute("SELECT COUNT(*) FROM audit_handoff").fetchone() == (0,))
        # The correctly tagged row again, with its valid tag: a replay.
        insert(genuine, handoff_tag(HANDOFF_KEY, signer.name, "mallory", good, genuine), good)
        a.append(ev(2))
        assert _wait(lambda: conn.execute("SELECT COUNT(*) FROM audit_handoff").fetchone() == (0,))
    with _reader(url, signer) as reader:
        events = [e for _, e in reader.events()]
        assert reader.fsck() == reader.size
    rejected = [e for e in events if e.type == "outbox.reject"]
    assert len(rejected) == 4
    assert {e.actor for e in rejected} == {"replica:mallory"}
    assert all(e.details["digest"].startswith("sha256:") for e in rejected)
    assert "replayed" in rejected[-1].details["reason"]
    assert not any(e.tenant == "victim" for e in events)  # the forged event never entered the log
    assert sum(1 for e in events if e.details.get("i") == 7) == 1  # the genuine one, once


def _wait(check: Callable[[], bool], within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_handoff_waits_durably_while_no_sequencer_lives(url: str, signer: NoteSigner, tmp_path: Path) -> None:
    """A follower's event is in the queue (committed) before any sequencer exists; the one that
    takes the lease later appends it, and the follower's wait returns its entry."""
    with _replica(url, signer, tmp_path, "a") as a:
        assert a.wait_sequencer(10)
        a.abandon()
        with _replica(url, signer, tmp_path, "b") as b:
            receipt = b.append(ev(7))
            assert b.is_sequencer
            assert b.event(receipt.index).details["i"] == 7


def test_an_orderly_close_hands_the_lease_over_at_once(url: str, signer: NoteSigner, tmp_path: Path) -> None:
    with _replica(url, signer, tmp_path, "a") as a:
        assert a.wait_sequencer(10)
        a.append(ev(1))
        with _replica(url, signer, tmp_path, "b") as b:
            a.close()
            assert b.wait_sequencer(TTL)  # no wait for the lease to expire
            b.append(ev(2))
            assert b.fsck() == b.size


def test_the_log_refuses_another_origin_and_a_rolled_back_database(
    url: str, signer: NoteSigner, tmp_path: Path
) -> None:
    other = NoteSigner("other.example/log", Ed25519Signer(os.urandom(32)))
    with _replica(url, signer, tmp_path, "a") as a:
        assert a.wait_sequencer(10)
        for i in range(5):
            a.append(ev(i))
    with pytest.raises(AuditLogError, match="origin"):
        PostgresLogStorage(url, other.name)
    # Entries deleted behind the log's back (a restored old snapshot): the watermark refuses.
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("DELETE FROM audit_entries WHERE idx >= 3")
        conn.execute("DELETE FROM audit_nodes WHERE idx >= 0 AND level = 0 AND idx >= 3")
        conn.execute("UPDATE audit_head SET size = 3, root = (SELECT root FROM audit_head), lease_until = '-infinity'")
    storage = PostgresLogStorage(url, signer.name)
    try:
        lease = storage.acquire("tester", 5)
        assert lease is not None
        with pytest.raises(AuditLogError):
            AuditLog(storage, signer, watermark_path=tmp_path / "a.watermark", fence=lease.head.fence)
        storage.release(lease.head.fence)
    finally:
        storage.close()
    # The replica that saw the larger log never sequences this one, and says why (readiness).
    with _replica(url, signer, tmp_path, "a") as again:
        assert not again.wait_sequencer(TTL * 2)
        assert isinstance(again.failed, AuditLogError)
        assert "truncated" in str(again.failed) or "watermark" in str(again.failed)


def test_only_postgresql_urls_are_accepted() -> None:
    with pytest.raises(ConfigError):
        libpq_url("sqlite:///x.db")
    assert libpq_url("postgresql+psycopg://u@h/db") == "postgresql://u@h/db"


def test_a_followers_submit_is_durable_at_once_and_its_index_follows(
    replicas: list[ReplicatedAuditLog], url: str, signer: NoteSigner
) -> None:
    """A follower cannot reserve a log position, so ``submit`` returns once the event is in the
    hand-off queue (committed), and reading ``index`` waits for the sequencer's entry."""
    a, b = replicas
    a.abandon()  # no sequencer for now: the event can only be in the queue
    pending = b.submit(ev(41))
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        queued = conn.execute("SELECT COUNT(*) FROM audit_handoff").fetchone()
    entries = _reader(url, signer)
    try:
        in_log = any(e.details.get("i") == 41 for _, e in entries.events())
    finally:
        entries.close()
    assert queued == (1,) or in_log  # durable either way; b may already have taken the lease
    index = pending.index  # waits for b to take the lease and append it
    assert pending.result(timeout=1).index == index
    with _reader(url, signer) as reader:
        assert reader.event(index).details["i"] == 41


def test_the_audit_cli_reads_a_database_log_without_changing_it(
    replicas: list[ReplicatedAuditLog], url: str, signer: NoteSigner, tmp_path: Path
) -> None:
    """``weightvault audit show|export --db postgresql://...``: the replicas' log, read as a SQLite
    file is; a database without a log is a clear error, and nothing is created in it."""
    import json
    import subprocess
    import sys

    a, b = replicas
    a.append(ev(1, tenant="acme"))
    b.append(ev(2, tenant="globex"))

    def wv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "weightvault", *args], capture_output=True, text=True, timeout=60, check=False
        )

    shown = wv("audit", "show", "--db", url, "--tenant", "globex", "--json")
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(line)["details"]["i"] for line in shown.stdout.splitlines()] == [2]
    out = tmp_path / "log.tar"
    exported = wv("audit", "export", "--db", url, "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert out.stat().st_size > 0
    empty = databases.fresh_url(tmp_path)
    missing = wv("audit", "show", "--db", empty)
    assert missing.returncode != 0
    assert "holds no audit log" in missing.stderr
    with psycopg.connect(libpq_url(empty), autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('audit_meta')").fetchone() == (None,)


def test_a_closed_storage_refuses_reads_instead_of_reconnecting(
    replicas: list[ReplicatedAuditLog], url: str, signer: NoteSigner
) -> None:
    replicas[0].append(ev(1))
    reader = _reader(url, signer)
    assert reader.size >= 2  # the handover and ev(1)
    reader.close()
    with pytest.raises(AuditLogError, match="closed"):
        _ = reader.size


def test_a_reader_that_connects_while_the_storage_closes_leaves_no_connection_open(
    replicas: list[ReplicatedAuditLog], url: str, signer: NoteSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() running while a thread opens its reader connection: the thread gets "closed" and the
    connection is closed, not kept in the thread's local storage to leak when the thread ends."""
    storage = PostgresLogStorage(url, signer.name)
    opened: list[psycopg.Connection] = []
    connect = storage._connect

    def connect_while_closing() -> psycopg.Connection:
        conn: psycopg.Connection = connect()
        opened.append(conn)
        storage.close()  # what another thread does meanwhile
        return conn

    monkeypatch.setattr(storage, "_connect", connect_while_closing)
    failures: list[BaseException] = []

    def read() -> None:  # a fresh thread: no reader connection of its own yet
        try:
            storage.size()
        except BaseException as exc:  # handed to the test's thread
            failures.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    thread.join(30)
    assert len(failures) == 1
    assert isinstance(failures[0], AuditLogError)
    assert "closed" in str(failures[0])
    assert len(opened) == 1
    assert opened[0].closed


def test_recent_pages_newest_first_by_tenant_and_type(
    replicas: list[ReplicatedAuditLog], url: str, signer: NoteSigner
) -> None:
    """The console's pages on the database's log: the same answers as the file's (tests/unit/auditlog/test_log.py)."""
    a, _ = replicas
    for i in range(30):
        a.append(
            AuditEvent(
                "policy.decision" if i % 3 else "attest.pass", "acme" if i % 2 else "globex", "t", details={"i": i}
            )
        )
    with _reader(url, signer) as log:
        newest = log.recent(tenant="acme", type_prefix="policy.", limit=4)
        assert [e.details["i"] for _, e in newest] == [29, 25, 23, 19]
        assert all(e.tenant == "acme" and e.type == "policy.decision" for _, e in newest)
        older = log.recent(before=newest[-1][0], tenant="acme", type_prefix="policy.", limit=2)
        assert [e.details["i"] for _, e in older] == [17, 13]
        assert [] == log.recent(tenant="nobody")
