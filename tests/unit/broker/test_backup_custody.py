"""Backups of a broker under custody: sealed to the share set's backup key, opened only by a quorum.

The restore ceremony runs over files; these tests drive it with a fake clock and attack it:
a wrong root key, a submission for another ceremony, an oversized file, a quorum that never
comes, and a manifest whose share set names no backup key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightvault.broker.backup import (
    REQUEST_FILE,
    BackupManifest,
    KnownCheckpoint,
    RestoreQuorum,
    restore_ceremony,
    rollback_check,
)
from weightvault.broker.keystore import RootKey, backup_recipient, open_backup_key, seal_backup_key
from weightvault.crypto.keywrap import hpke_generate
from weightvault.custody.ceremony import CeremonyTerms, Submission, prepare_submission
from weightvault.custody.person import KEM, PersonKey
from weightvault.custody.shares import ShareSet, deal, open_delivered
from weightvault.errors import BackupError, CeremonyError, ConfigError, KeyAccessError, RollbackError
from weightvault.format.keys import FileKey

NOW = 1_800_000_000


@pytest.fixture(scope="module")
def people() -> list[PersonKey]:
    return [PersonKey.generate(name) for name in ("ann", "ben", "cat")]


@pytest.fixture(scope="module")
def custody(people: list[PersonKey]) -> tuple[bytes, ShareSet, dict[str, bytes]]:
    root = os.urandom(32)
    share_set, delivered = deal(root, 2, [p.public for p in people], backup_key=backup_recipient(root))
    return root, share_set, {p.id: open_delivered(p, share_set.id, delivered[p.id]) for p in people}


def _manifest(share_set: ShareSet | None, *, size: int = 7, root: bytes = b"\x01" * 32) -> BackupManifest:
    return BackupManifest(
        broker="broker-1", created_at=NOW, origin="o", log_size=size, log_root=root, checkpoint="c",
        backend="sqlite", payload_bytes=10, payload_sha256="00" * 32, wrapped_key=b"", custody=share_set,
    )  # fmt: skip


def test_the_backup_key_opens_only_under_its_root_for_its_broker_and_time() -> None:
    root = os.urandom(32)
    assert backup_recipient(root) == backup_recipient(root)  # derived, not stored
    assert backup_recipient(root) != backup_recipient(os.urandom(32))
    file_key = FileKey.generate()
    sealed = seal_backup_key(backup_recipient(root), "broker-1", NOW, file_key)
    assert file_key.reveal() == open_backup_key(RootKey(root), "broker-1", NOW, sealed).reveal()
    for key, broker, at in ((os.urandom(32), "broker-1", NOW), (root, "broker-2", NOW), (root, "broker-1", NOW + 1)):
        with pytest.raises(KeyAccessError):
            open_backup_key(RootKey(key), broker, at, sealed)
    with pytest.raises(KeyAccessError):
        open_backup_key(RootKey(root), "broker-1", NOW, sealed[:-1])


def test_a_share_set_keeps_its_backup_key_through_json(custody: tuple[bytes, ShareSet, dict[str, bytes]]) -> None:
    root, share_set, _ = custody
    assert share_set.backup_key == backup_recipient(root)
    assert share_set == ShareSet.from_json(share_set.to_json())
    older = share_set.to_json()
    del older["backup_key"]  # a set dealt before backups under custody
    assert ShareSet.from_json(older).backup_key is None


def test_a_manifest_round_trips_its_share_set_and_refuses_one_without_a_backup_key(
    custody: tuple[bytes, ShareSet, dict[str, bytes]],
) -> None:
    _, share_set, _ = custody
    manifest = _manifest(share_set)
    assert manifest == BackupManifest.from_json(manifest.to_json())
    assert "custody" not in _manifest(None).to_json()  # a root-key-file backup's manifest is unchanged
    doc = manifest.to_json()
    del doc["custody"]["backup_key"]
    with pytest.raises(BackupError, match="no backup key"):
        BackupManifest.from_json(doc)
    doc["custody"] = {"id": "x"}
    with pytest.raises(BackupError, match="malformed"):
        BackupManifest.from_json(doc)


@given(st.binary(max_size=300))
def test_a_submission_file_is_parsed_or_refused(data: bytes) -> None:
    try:
        parsed = Submission.from_bytes(data)
    except CeremonyError:
        return
    assert Submission.from_bytes(parsed.to_bytes()) == parsed


def test_a_submission_file_round_trips_and_refuses_oversized_input() -> None:
    sub = Submission("c" * 64, "ann", b"sealed", b"sig")
    assert sub == Submission.from_bytes(sub.to_bytes())
    with pytest.raises(CeremonyError, match="too large"):
        Submission.from_bytes(b" " * (64 << 10) + sub.to_bytes())


def _drop(path: Path, data: bytes) -> None:
    path.write_bytes(data)


class _Exchange:
    """Plays the custodians against restore_ceremony: each tick of the fake clock drops files."""

    def __init__(self, directory: Path, people: list[PersonKey], shares: dict[str, bytes]) -> None:
        self.dir, self.people, self.shares = directory, {p.id: p for p in people}, shares
        self.t = float(NOW)
        self.reports: list[str] = []
        self.plan: list[Callable[[CeremonyTerms], None]] = []

    def terms(self) -> CeremonyTerms:
        return CeremonyTerms.from_json(json.loads((self.dir / REQUEST_FILE).read_text()))

    def submit(self, who: str, name: str | None = None, terms: CeremonyTerms | None = None) -> None:
        t = terms or self.terms()
        sealed, signature = prepare_submission(self.people[who], t, self.shares[who])
        (self.dir / f"{name or who}.submission").write_bytes(Submission(t.id, who, sealed, signature).to_bytes())

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        if self.plan:
            self.plan.pop(0)(self.terms())

    def run(self, manifest: BackupManifest) -> RestoreQuorum:
        return restore_ceremony(
            manifest, self.dir, ttl=60, clock=lambda: self.t, sleep=self.sleep, report=self.reports.append
        )


def test_a_quorum_rebuilds_the_root_and_refused_files_do_not_count(
    tmp_path: Path, people: list[PersonKey], custody: tuple[bytes, ShareSet, dict[str, bytes]]
) -> None:
    root, share_set, shares = custody
    ex = _Exchange(tmp_path, people, shares)
    other = CeremonyTerms("broker-1", "restore", share_set.id, {}, "00" * 16, NOW + 60, hpke_generate(KEM)[1])
    ex.plan = [
        lambda t: ex.submit("ann"),
        lambda t: ex.submit("ben", "stale", terms=other),  # made for another ceremony
        lambda t: _drop(tmp_path / "big.submission", b"x" * (1 << 20)),
        lambda t: ex.submit("ann", "again"),  # ann twice is still one share
        lambda t: ex.submit("cat"),
    ]
    quorum = ex.run(_manifest(share_set))
    assert quorum.root.reveal() == root
    assert ("ann", "cat") == quorum.custodians
    refused = [r for r in ex.reports if r.startswith("refused")]
    assert 3 == len(refused), ex.reports
    assert not (tmp_path / REQUEST_FILE).exists()


def test_a_quorum_that_never_comes_expires_and_leaves_no_request(
    tmp_path: Path, people: list[PersonKey], custody: tuple[bytes, ShareSet, dict[str, bytes]]
) -> None:
    _, share_set, shares = custody
    ex = _Exchange(tmp_path, people, shares)
    ex.plan = [lambda t: ex.submit("ann")]
    with pytest.raises(CeremonyError, match="expired with 1 of 2"):
        ex.run(_manifest(share_set))
    assert not (tmp_path / REQUEST_FILE).exists()


def test_the_request_binds_the_backup_custodians_sign_for(
    tmp_path: Path, people: list[PersonKey], custody: tuple[bytes, ShareSet, dict[str, bytes]]
) -> None:
    _, share_set, shares = custody
    ex = _Exchange(tmp_path, people, shares)
    seen: list[CeremonyTerms] = []
    ex.plan = [seen.append, lambda t: ex.submit("ann"), lambda t: ex.submit("ben")]
    ex.run(_manifest(share_set, size=9))
    assert "restore" == seen[0].kind
    backup = dict(seen[0].params)["backup"]
    assert {"broker": "broker-1", "created_at": NOW, "log_size": 9, "payload_sha256": "00" * 32} == backup


def test_a_backup_not_under_custody_has_no_ceremony(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="root key file"):
        restore_ceremony(_manifest(None), tmp_path, ttl=60, clock=lambda: NOW, sleep=lambda s: None, report=print)


def test_the_manifest_alone_refuses_heads_past_or_beside_the_backup() -> None:
    manifest = _manifest(None, size=7, root=b"\x01" * 32)
    rollback_check(manifest, None, [KnownCheckpoint(3, b"\x09" * 32, "older")])  # waits for the log
    rollback_check(manifest, None, [KnownCheckpoint(7, b"\x01" * 32, "same")])
    with pytest.raises(RollbackError, match="has seen size 8"):
        rollback_check(manifest, None, [KnownCheckpoint(8, b"\x01" * 32, "newer")])
    with pytest.raises(RollbackError, match="not the history"):
        rollback_check(manifest, None, [KnownCheckpoint(7, b"\x02" * 32, "fork")])
