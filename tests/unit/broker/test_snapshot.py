"""Logical database snapshots: exported in one read, restored whole into an empty database, or refused."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.databases import fresh_url
from weightvault.broker.storage import BrokerStore, PrincipalRow
from weightvault.broker.storage.snapshot import export_database, restore_database
from weightvault.errors import BackupError, ConflictError


@pytest.fixture
def source(tmp_path: Path) -> Iterator[BrokerStore]:
    store = BrokerStore(fresh_url(tmp_path, "source.db"))
    store.migrate(1)
    store.tenants.create("acme", b"\x00wrapped\xff", 1)
    store.principals.create(PrincipalRow("acme-wl", "acme", "workload", bytes(range(32)), False), 2)
    store.outbox.add([("gateway", '{"type": "test.event"}'), ("gateway", '{"type": "test.event"}')], 3)
    yield store
    store.close()


@pytest.fixture
def target(tmp_path: Path) -> Iterator[BrokerStore]:
    store = BrokerStore(fresh_url(tmp_path, "target.db"))
    yield store
    store.close()


def test_a_restored_database_exports_exactly_what_was_exported(source: BrokerStore, target: BrokerStore) -> None:
    doc = export_database(source.db)
    counts = restore_database(target.db, doc, 10)
    assert (1, 1, 2) == (counts["tenants"], counts["principals"], counts["event_outbox"])
    assert doc == export_database(target.db)
    assert bytes(range(32)) == target.principals.by_id("acme-wl").token_hash  # type: ignore[union-attr]
    # New rows get ids after the restored ones (PostgreSQL's sequences were moved).
    target.outbox.add([("gateway", '{"type": "test.event"}')], 11)
    assert [1, 2, 3] == [row.id for row in target.outbox.pending()]


def test_restoring_into_a_database_with_rows_is_refused_and_changes_nothing(
    source: BrokerStore, target: BrokerStore
) -> None:
    doc = export_database(source.db)
    restore_database(target.db, doc, 10)
    with pytest.raises(ConflictError, match="not empty"):
        restore_database(target.db, doc, 11)
    assert doc == export_database(target.db)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda d: d.update(format="other"), "not a broker database export"),
        (lambda d: d.update(schema_version=99), "newer than this release"),
        (lambda d: d["tables"].update(mystery=[]), "tables this release does not know"),
        (lambda d: d["tables"]["tenants"][0].update(extra=1), "column tenants.extra"),
        (lambda d: d["tables"]["principals"][0].update(token_hash={"b64": "!!"}), "bytes expected"),
        (lambda d: d["tables"]["principals"][0].update(token_hash="plain text"), "bytes expected"),
    ],
)
def test_a_damaged_export_is_refused_and_writes_nothing(
    source: BrokerStore, target: BrokerStore, damage: Any, match: str
) -> None:
    doc = copy.deepcopy(export_database(source.db))
    damage(doc)
    with pytest.raises(BackupError, match=match):
        restore_database(target.db, doc, 10)
    target.migrate(11)  # refused before or after migrating: either way no row was written
    assert {} == {name: rows for name, rows in export_database(target.db)["tables"].items() if rows}
