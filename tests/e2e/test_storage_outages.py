"""Drills: the broker's database goes read-only, down, or out of disk under a running broker process.

Each time releases fail closed (503 ``storage_unavailable``, no key in any answer, no
``key.release.done`` in the log), readiness says why, and once the database is back the
same broker process serves again by itself: no restart, no lost state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.databases import PostgresCluster, require_postgres
from tests.e2e.broker_fixture import Broker, running_broker
from weightvault.auditlog.log import LogReader
from weightvault.client.broker import SampleAttester
from weightvault.errors import AuditUnavailableError, StorageUnavailableError

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.drill]

RESOURCE = "acme/models/small@1"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[PostgresCluster]:
    """A PostgreSQL server of this test's own (it is stopped and made read-only here), fsync on."""
    require_postgres()
    server = PostgresCluster(durable=True).init().start()
    yield server
    server.destroy()


def _release(broker: Broker) -> bytes:
    client = broker.client("acme-wl")
    session, _ = client.attest(SampleAttester())
    keys = client.release(session, RESOURCE)
    assert keys.file_key is not None
    return keys.file_key.reveal()


def _ready(broker: Broker) -> tuple[int, list[str]]:
    reply = httpx.get(broker.url + "/v1/health/ready", timeout=30)
    return reply.status_code, list(reply.json().get("problems", []))


def _set_read_only(cluster: PostgresCluster, on: bool) -> None:
    cluster.execute(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}")
    cluster.execute("SELECT pg_reload_conf()")


def _no_release_done_since(broker: Broker, start: int) -> None:
    types = [e.type for _, e in broker.events(start)]
    assert "key.release.done" not in types, types


def test_a_read_only_or_stopped_database_fails_releases_closed_and_the_broker_recovers(
    tmp_path: Path, cluster: PostgresCluster
) -> None:
    plain = tmp_path / "small.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32)}, str(plain))
    with running_broker(tmp_path, plain, database_url=cluster.create_database()) as b:
        expected = b.file_keys["acme"].reveal()
        assert expected == _release(b)
        assert (200, []) == _ready(b)

        # 1. Read-only: a demoted primary, or an operator stopping writes in an emergency.
        client = b.client("acme-wl")
        session, _ = client.attest(SampleAttester())
        _set_read_only(cluster, True)
        start = b.audit_size()
        with pytest.raises(StorageUnavailableError):
            client.release(session, RESOURCE)
        with pytest.raises(StorageUnavailableError):
            _release(b)
        _no_release_done_since(b, start)
        status, problems = _ready(b)
        assert 503 == status
        assert any("read-only" in p for p in problems), problems
        _set_read_only(cluster, False)
        assert expected == _release(b)
        assert (200, []) == _ready(b)

        # 2. Down: the server stops hard (kill -9 of a database host looks the same to the broker).
        cluster.stop("immediate")
        start = b.audit_size()
        with pytest.raises(StorageUnavailableError) as caught:
            _release(b)
        assert cluster.password not in str(caught.value)
        _no_release_done_since(b, start)
        status, problems = _ready(b)
        assert 503 == status
        assert any("database unavailable" in p for p in problems), problems
        cluster.start()
        assert expected == _release(b)  # pooled connections were replaced, no restart
        assert (200, []) == _ready(b)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own (root only), unmounted afterwards."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Write zeros until the disk is full; returns the filler file."""
    filler = disk / "filler"
    block = bytes(4 << 10)
    with filler.open("wb", buffering=0) as out:  # unbuffered: closing has nothing left to write
        try:
            while True:
                out.write(block)
        except OSError:
            pass
    return filler


def test_a_full_disk_under_sqlite_fails_writes_closed_and_recovers_when_space_returns(
    tmp_path: Path, small_disk: Path
) -> None:
    """The broker database's disk fills up: attests (which write) get 503 storage_unavailable with
    nothing half-done; releases of existing sessions, which only read, still work; freeing space
    brings writes back without a restart. (The audit log is on another disk here; the next test
    fills the log's disk.)"""
    plain = tmp_path / "small.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32)}, str(plain))
    with running_broker(tmp_path, plain, database_url=f"sqlite:///{small_disk / 'broker.db'}") as b:
        expected = b.file_keys["acme"].reveal()
        client = b.client("acme-wl")
        session, _ = client.attest(SampleAttester())
        filler = _fill(small_disk)
        start = b.audit_size()
        with pytest.raises(StorageUnavailableError):
            client.attest(SampleAttester())
        keys = client.release(session, RESOURCE)  # reads only: the state on disk is current
        assert keys.file_key is not None
        assert expected == keys.file_key.reveal()
        assert [] == [e.type for _, e in b.events(start) if e.type == "attest.pass"]
        filler.unlink()
        assert expected == _release(b)


def test_a_full_disk_under_the_audit_log_refuses_releases_and_recovers_when_space_returns(
    tmp_path: Path, small_disk: Path
) -> None:
    """The audit log's disk fills up: a release cannot record its intent, so it is refused (503
    audit_unavailable) and no key leaves; readiness says why. Freeing space brings the log back
    by itself within seconds, without a restart, and the log verifies with no gap."""
    plain = tmp_path / "small.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32)}, str(plain))
    with running_broker(tmp_path, plain, audit_db=small_disk / "audit.db") as b:
        expected = b.file_keys["acme"].reveal()
        client = b.client("acme-wl")
        session, _ = client.attest(SampleAttester())
        filler = _fill(small_disk)
        for _ in range(20):  # SQLite may still find room in pages it holds: write until it cannot
            try:
                client.release(session, RESOURCE)
            except AuditUnavailableError:
                break
            session, _ = client.attest(SampleAttester())
        else:
            pytest.fail("the audit log never ran out of space")
        with pytest.raises(AuditUnavailableError):
            client.release(session, RESOURCE)  # and it stays refused while the disk is full
        ready = httpx.get(f"{b.url}/v1/health/ready", timeout=10)
        assert ready.status_code == 503
        assert "audit log failed" in ready.text
        filler.unlink()
        deadline = time.monotonic() + 15
        while httpx.get(f"{b.url}/v1/health/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the audit log did not recover"
            time.sleep(0.2)
        assert expected == _release(b)
        types = [e.type for _, e in b.events(until="key.release.done")]
        with LogReader.open(b.audit_path, "weightvault-broker/audit") as log:
            assert log.fsck() == log.size  # no gap, no damaged entry
        # Every recorded intent has its outcome: a refused release recorded no intent (or, if its
        # batch landed before the failure, its fail), so no key left without a trace.
        intents = types.count("key.release.intent")
        assert intents == types.count("key.release.done") + types.count("key.release.fail")
