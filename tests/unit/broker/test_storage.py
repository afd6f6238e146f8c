"""Storage: typed rows, tenant filters on tenant data, and duplicates as conflicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from weightvault.broker.storage import BrokerStore, ChallengeRow, DeviceRow, PrincipalRow
from weightvault.errors import ConflictError


@pytest.fixture
def store(tmp_path: Path) -> BrokerStore:
    s = BrokerStore(f"sqlite:///{tmp_path / 'b.db'}")
    s.migrate(1)
    s.tenants.create("acme", b"wrapped-kek-1", 1)
    s.tenants.create("globex", b"wrapped-kek-1", 1)
    return s


def test_a_migrated_database_is_at_the_latest_version(tmp_path: Path) -> None:
    s = BrokerStore(f"sqlite:///{tmp_path / 'b.db'}")
    assert s.migrate(1) == s.migrate(2)  # idempotent
    assert s.ping() is None


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
    """After a challenge is stored without fsync (or that write fails), later commits are FULL again."""
    row = ChallengeRow("c1", "acme", "p", b"n" * 32, None, 100)
    store.sessions.add_challenge(row)
    if fails:
        with pytest.raises(ConflictError):
            store.sessions.add_challenge(row)
    db = store.sessions._db
    with db.engine.connect() as conn:
        assert 2 == conn.exec_driver_sql("PRAGMA synchronous").scalar()  # 2 = FULL
    with db.write() as conn:
        assert 2 == conn.exec_driver_sql("PRAGMA synchronous").scalar()
