"""Storage: typed rows, tenant filters on tenant data, and duplicates as conflicts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import fresh_url
from tests.e2e.servers import free_port
from weightvault.broker.storage import BrokerStore, ChallengeRow, DeviceRow, PrincipalRow
from weightvault.broker.storage.database import engine_url
from weightvault.errors import (
    ConfigError,
    ConflictError,
    InvalidRequestError,
    StorageUnavailableError,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BrokerStore]:
    s = BrokerStore(fresh_url(tmp_path))
    s.migrate(1)
    s.tenants.create("acme", b"wrapped-kek-1", 1)
    s.tenants.create("globex", b"wrapped-kek-1", 1)
    yield s
    s.close()


def test_a_migrated_database_is_at_the_latest_version(tmp_path: Path) -> None:
    s = BrokerStore(fresh_url(tmp_path))
    assert s.migrate(1) == s.migrate(2)  # idempotent
    assert s.ping() is None
    s.close()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u@h/db",
        "postgresql+psycopg2://u@h/db",
        "postgresql+asyncpg://u@h/db",
        "oracle://u@h/db",
        "not a url",
    ],
)
def test_only_sqlite_and_postgresql_with_psycopg_are_opened(url: str) -> None:
    with pytest.raises(ConfigError):
        BrokerStore(url)


def test_plain_postgresql_urls_mean_psycopg_3() -> None:
    assert "postgresql+psycopg" == engine_url("postgresql://u@h/db").drivername
    assert "postgresql+psycopg" == engine_url("postgresql+psycopg://u@h/db").drivername


def test_a_database_that_cannot_be_reached_is_a_retryable_storage_error_without_secrets() -> None:
    """Nothing listens on the port: reads and writes raise StorageUnavailableError (503), and
    the message names neither the password nor the host's reply."""
    store = BrokerStore(f"postgresql://wv:hunter2secret@127.0.0.1:{free_port()}/nothing")
    try:
        with pytest.raises(StorageUnavailableError) as caught:
            store.tenants.names()
        with pytest.raises(StorageUnavailableError):
            store.tenants.create("acme", b"k", 1)
        assert "hunter2secret" not in str(caught.value)
        assert store.ping() is not None
    finally:
        store.close()


def test_a_read_only_sqlite_database_fails_writes_closed_and_keeps_reads(tmp_path: Path) -> None:
    """SQLite's 'attempt to write a readonly database' is an outage (503), not a bug (500)."""
    url = f"sqlite:///{tmp_path / 'b.db'}"
    writable = BrokerStore(url)
    writable.migrate(1)
    writable.tenants.create("acme", b"k", 1)
    writable.close()
    store = BrokerStore(f"sqlite:///file:{tmp_path / 'b.db'}?mode=ro&uri=true")
    try:
        with pytest.raises(StorageUnavailableError):
            store.tenants.create("globex", b"k", 2)
        assert ["acme"] == store.tenants.names()
    finally:
        store.close()


def test_a_value_too_large_for_its_column_is_an_invalid_request(store: BrokerStore) -> None:
    """PostgreSQL enforces column sizes (SQLite does not): the request is refused, nothing is written."""
    if "postgresql" != store.db.backend:
        pytest.skip("SQLite does not enforce VARCHAR sizes; names are validated before storage")
    with pytest.raises(InvalidRequestError):
        store.tenants.create("t" * 65, b"k", 1)
    assert ["acme", "globex"] == store.tenants.names()


def test_duplicates_are_conflicts_and_change_nothing(store: BrokerStore) -> None:
    with pytest.raises(ConflictError):
        store.tenants.create("acme", b"other", 2)
    assert [1] == [k.version for k in store.keys.keks("acme")]
    row = PrincipalRow("p", "acme", "workload", b"h" * 32, disabled=False)
    store.principals.create(row, 1)
    with pytest.raises(ConflictError):
        store.principals.create(row, 2)


def test_tenant_data_is_looked_up_within_its_tenant(store: BrokerStore) -> None:
    """A challenge or a device of one tenant is not found through another."""
    store.sessions.add_challenge(ChallengeRow("c1", "acme", "p", b"n" * 32, None, 100))
    assert store.sessions.challenge("acme", "c1") is not None
    assert store.sessions.challenge("globex", "c1") is None
    assert not store.sessions.consume_challenge("globex", "c1", 50)
    assert store.sessions.consume_challenge("acme", "c1", 50)
    assert not store.sessions.consume_challenge("acme", "c1", 51)  # single use
    store.devices.create(DeviceRow("d", "token", "active", {}, {}, frozenset({"acme"})), 1)
    assert store.devices.in_tenant("acme", "d") is not None
    assert store.devices.in_tenant("globex", "d") is None
    assert ["d"] == [d.id for d in store.devices.list_for("acme")]
    assert [] == store.devices.list_for("globex")


def test_a_token_this_broker_never_issued_counts_as_revoked(store: BrokerStore) -> None:
    assert store.sessions.token_revoked("never-issued")
    store.sessions.record_attestation("j", "acme", None, 100)
    assert not store.sessions.token_revoked("j")


def test_an_attestation_records_its_token_and_device_state_together(store: BrokerStore) -> None:
    """One transaction: a duplicate token id leaves the device's state as it was."""
    store.devices.create(DeviceRow("d", "tpm", "active", {}, {"reset": 1}, frozenset({"acme"})), 1)
    store.sessions.record_attestation("j", "acme", "d", 100, device_state={"reset": 2}, now=5)
    device = store.devices.by_id("d")
    assert device is not None
    assert {"reset": 2} == device.state
    with pytest.raises(ConflictError):
        store.sessions.record_attestation("j", "acme", "d", 100, device_state={"reset": 3}, now=6)
    device = store.devices.by_id("d")
    assert device is not None
    assert {"reset": 2} == device.state


@pytest.mark.parametrize("fails", [False, True])
def test_a_write_without_fsync_leaves_the_connection_durable(store: BrokerStore, fails: bool) -> None:
    """After a challenge is stored without fsync (or that write fails), later commits are durable again
    (SQLite: synchronous=FULL on the connection; PostgreSQL: the relaxation was SET LOCAL, for one
    transaction)."""
    row = ChallengeRow("c1", "acme", "p", b"n" * 32, None, 100)
    store.sessions.add_challenge(row)
    if fails:
        with pytest.raises(ConflictError):
            store.sessions.add_challenge(row)
    db = store.sessions._db
    if "postgresql" == db.backend:
        for _ in range(3):  # every pooled connection the writes may have used
            with db.write() as conn:
                assert "on" == conn.exec_driver_sql("SHOW synchronous_commit").scalar()
        with db.write(durable=False) as conn:
            assert "off" == conn.exec_driver_sql("SHOW synchronous_commit").scalar()
        return
    with db.engine.connect() as conn:
        assert 2 == conn.exec_driver_sql("PRAGMA synchronous").scalar()  # 2 = FULL
    with db.write() as conn:
        assert 2 == conn.exec_driver_sql("PRAGMA synchronous").scalar()


def test_a_claim_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    """One gateway per database: a second claimant is refused, on either engine, from another
    process too, and the claim is free again once released (or once its process dies)."""
    import subprocess
    import sys

    url = fresh_url(tmp_path)
    first, second = BrokerStore(url), BrokerStore(url)
    try:
        release = first.db.claim("gateway")
        with pytest.raises(ConflictError):
            second.db.claim("gateway")
        second.db.claim("other")()  # claims are per name
        probe = (
            "import sys; from weightvault.broker.storage import BrokerStore; from weightvault.errors import "
            "ConflictError\ntry:\n    BrokerStore(sys.argv[1]).db.claim('gateway')\nexcept ConflictError:\n"
            "    sys.exit(3)"
        )
        assert subprocess.run([sys.executable, "-c", probe, url], check=False, timeout=60).returncode == 3
        release()
        assert subprocess.run([sys.executable, "-c", probe, url], check=False, timeout=60).returncode == 0
        second.db.claim("gateway")()
    finally:
        first.close()
        second.close()


def test_an_outbox_event_waits_until_it_is_drained(store: BrokerStore) -> None:
    store.outbox.add([("backup", '{"a":1}'), ("gateway", '{"a":1}')], 1)
    assert store.outbox.waiting("backup", '{"a":1}')
    assert not store.outbox.waiting("backup", '{"a":2}')
    store.outbox.delete([r.id for r in store.outbox.pending() if r.source == "backup"])
    assert not store.outbox.waiting("backup", '{"a":1}')
    assert store.outbox.waiting("gateway", '{"a":1}')  # the same text from another source is another event


def test_sessions_are_found_by_their_hash_and_deleted_once(store: BrokerStore) -> None:
    from weightvault.broker.storage import ConsoleSessionRow

    row = ConsoleSessionRow(b"\x01" * 32, "p", b"\x02" * 32, 10, 20)
    store.console_sessions.add(row, now=10)
    assert row == store.console_sessions.get(b"\x01" * 32)
    assert store.console_sessions.get(b"\x03" * 32) is None
    # Adding another sweeps the expired ones.
    store.console_sessions.add(ConsoleSessionRow(b"\x04" * 32, "p", b"\x02" * 32, 30, 40), now=30)
    assert store.console_sessions.get(b"\x01" * 32) is None
    assert store.console_sessions.delete(b"\x04" * 32)
    assert not store.console_sessions.delete(b"\x04" * 32)


def test_a_token_is_replaced_only_while_it_is_the_one_expected(store: BrokerStore) -> None:
    """Compare and swap: a stale old hash (a concurrent rotation) or a disabled principal change nothing."""
    store.principals.create(PrincipalRow("wl", "acme", "workload", b"\x01" * 32, disabled=False), now=1)
    assert not store.principals.replace_token("wl", b"\x09" * 32, b"\x02" * 32, 99)
    assert store.principals.by_id("wl") == PrincipalRow("wl", "acme", "workload", b"\x01" * 32, False, None)
    assert store.principals.replace_token("wl", b"\x01" * 32, b"\x02" * 32, None)
    assert not store.principals.replace_token("wl", b"\x01" * 32, b"\x03" * 32, None)
    store.principals.disable("wl")
    assert not store.principals.replace_token("wl", b"\x02" * 32, b"\x03" * 32, None)
    assert not store.principals.replace_token("nobody", b"\x02" * 32, b"\x03" * 32, None)
    assert b"\x02" * 32 == store.principals.by_id("wl").token_hash  # type: ignore[union-attr]


def test_a_tokens_expiry_is_stored_with_it_and_replaced_with_it(store: BrokerStore) -> None:
    """The expiry lives in its own table (migration 8), read with the principal; a rotation sets or clears it."""
    store.principals.create(PrincipalRow("wl", "acme", "workload", b"\x01" * 32, False, 2_000_000_000), now=1)
    store.principals.create(PrincipalRow("pub", "acme", "publisher", b"\x05" * 32, False), now=1)
    assert store.principals.by_id("wl").expires_at == 2_000_000_000  # type: ignore[union-attr]
    assert {"wl": 2_000_000_000, "pub": None} == {r.id: r.expires_at for r in store.principals.list_for("acme")}
    assert store.principals.replace_token("wl", b"\x01" * 32, b"\x02" * 32, 2_000_000_500)
    assert store.principals.by_id("wl").expires_at == 2_000_000_500  # type: ignore[union-attr]
    assert store.principals.replace_token("wl", b"\x02" * 32, b"\x03" * 32, None)
    assert store.principals.by_id("wl").expires_at is None  # type: ignore[union-attr]
    # A refused swap leaves the expiry as it was.
    assert store.principals.replace_token("pub", b"\x05" * 32, b"\x06" * 32, 7)
    assert not store.principals.replace_token("pub", b"\x05" * 32, b"\x07" * 32, None)
    assert store.principals.by_id("pub").expires_at == 7  # type: ignore[union-attr]
