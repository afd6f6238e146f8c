"""Following a log over the tiles API: growth, partial-tile races, and every way a server can lie."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from weightvault.auditlog import AuditEvent, AuditLog, NoteSigner, TrustedState, WitnessPolicy
from weightvault.auditlog.follower import TileFollower
from weightvault.auditlog.log import LogReader
from weightvault.auditlog.note import TYPE_COSIGNATURE
from weightvault.auditlog.tiles import tile_resource
from weightvault.crypto.signing import Ed25519Signer
from weightvault.errors import CheckpointError, ConsistencyError, InclusionProofError

NOW = 1_800_000_000.0
LOG_KEY = NoteSigner("weightvault.test/audit", Ed25519Signer(b"\x11" * 32))
NO_WITNESS = WitnessPolicy({}, {}, "none")


def clock() -> float:
    return NOW


def ev(i: int) -> AuditEvent:
    return AuditEvent(type="test.event", tenant="acme", actor=f"op:{i}", resource=f"acme/r{i}")


def served(log: LogReader) -> Callable[[str], bytes | None]:
    """The tiles API of ``log`` as the HTTP server answers it (None for 404)."""

    def fetch(path: str) -> bytes | None:
        status, body, _ = tile_resource(log, path)
        return body if status == 200 else None

    return fetch


def follower(fetch: Callable[[str], bytes | None], **kw: object) -> TileFollower:
    return TileFollower(fetch, LOG_KEY.verifier, kw.pop("policy", NO_WITNESS), clock=clock, **kw)  # type: ignore[arg-type]


def fill(log: AuditLog, start: int, count: int) -> None:
    """Append ``count`` events durably (group commit) and wait until a checkpoint covering them is published."""
    for pending in [log.submit(ev(i)) for i in range(start, start + count)]:
        pending.result(timeout=30)
    log.wait_published(log.size)


def test_follows_a_growing_log_across_tiles(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as log:
        fill(log, 0, 300)
        f = follower(served(log))
        first = f.poll()
        assert (first.start, len(first.entries), first.checkpoint.checkpoint.size) == (0, 300, 300)
        assert list(first.entries) == [log.entry(i) for i in range(300)]
        fill(log, 300, 230)  # completes tile 1 and starts tile 2
        second = f.poll()
        assert (second.start, len(second.entries)) == (300, 230)
        assert second.entries[-1] == log.entry(529)
        assert f.poll().entries == ()
        assert f.size == 530


def test_a_partial_tile_gone_by_fetch_time_falls_back_to_the_full_tile(tmp_path: Path) -> None:
    """The log grows between the checkpoint and the partial tile, on a server that drops partial tiles
    once it has a larger one (ours keeps them, others may not): the full tile serves the same entries."""
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as log:
        fill(log, 0, 250)
        old = log.latest_checkpoint().to_text().encode()
        fill(log, 250, 10)
        live = served(log)
        asked: list[str] = []

        def racing(path: str) -> bytes | None:
            asked.append(path)
            if path == "tile/entries/000.p/250":
                return None
            return old if path == "checkpoint" and len(asked) == 1 else live(path)

        f = follower(racing)
        assert len(f.poll().entries) == 250
        assert asked[1:3] == ["tile/entries/000.p/250", "tile/entries/000"]
        assert len(f.poll().entries) == 10


def test_a_rewritten_entry_does_not_reproduce_the_signed_root(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditLog(path, LOG_KEY, clock=clock) as log:
        fill(log, 0, 20)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE entries SET data = replace(data, 'op:9', 'op:X') WHERE idx = 9")
    conn.commit()
    conn.close()
    reader = LogReader.open(path, LOG_KEY.name)
    with pytest.raises(ConsistencyError, match="do not hash to the root"):
        follower(served(reader)).poll()


def test_a_smaller_checkpoint_is_refused(tmp_path: Path) -> None:
    """A validly signed but older checkpoint (truncation or rollback) after a larger one."""
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as log:
        fill(log, 0, 10)
        old = log.latest_checkpoint().to_text().encode()
        fill(log, 10, 10)
        live = served(log)
        stale = {"on": False}
        f = follower(lambda p: old if p == "checkpoint" and stale["on"] else live(p))
        f.poll()
        stale["on"] = True
        with pytest.raises(CheckpointError, match="smaller than the verified size 20"):
            f.poll()
        assert f.size == 20


def _two_logs(tmp_path: Path, honest_n: int, evil_n: int) -> tuple[AuditLog, AuditLog]:
    (tmp_path / "honest").mkdir()
    (tmp_path / "evil").mkdir()
    honest = AuditLog(tmp_path / "honest" / "audit.db", LOG_KEY, clock=clock)
    evil = AuditLog(tmp_path / "evil" / "audit.db", LOG_KEY, clock=clock)
    fill(honest, 0, honest_n)
    fill(evil, 100, evil_n)
    return honest, evil


@pytest.mark.parametrize("evil_n", [4, 6], ids=["same-size", "larger"])
def test_a_split_view_is_detected(tmp_path: Path, evil_n: int) -> None:
    """The log key signed two trees: after following one, the other is refused, whatever its size."""
    honest, evil = _two_logs(tmp_path, 4, evil_n)
    with honest, evil:
        source = {"log": served(honest)}

        def fetch(path: str) -> bytes | None:
            return source["log"](path)

        f = follower(fetch)
        f.poll()
        source["log"] = served(evil)
        with pytest.raises(ConsistencyError):
            f.poll()
        assert f.size == 4


def test_a_remembered_checkpoint_pins_the_history(tmp_path: Path) -> None:
    """A fresh follower with the state another client saved refuses a history that differs from it."""
    honest, evil = _two_logs(tmp_path, 4, 6)
    with honest, evil:
        state = TrustedState(tmp_path / "state.json")
        follower(served(honest), state=state).poll()
        with pytest.raises(ConsistencyError, match="remembered checkpoint"):
            follower(served(evil), state=TrustedState(tmp_path / "state.json")).poll()
        fill(honest, 4, 3)
        assert len(follower(served(honest), state=TrustedState(tmp_path / "state.json")).poll().entries) == 7


def test_a_checkpoint_without_the_witness_quorum_is_refused(tmp_path: Path) -> None:
    witness = NoteSigner("witness0.test", Ed25519Signer(b"\x20" * 32), TYPE_COSIGNATURE)
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as log:
        fill(log, 0, 3)
        f = follower(served(log), policy=WitnessPolicy.threshold([witness.verifier], 1))
        with pytest.raises(CheckpointError):
            f.poll()
        assert f.size == 0


def test_missing_or_malformed_bundles(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as log:
        fill(log, 0, 5)
        live = served(log)
        with pytest.raises(InclusionProofError, match="truncated"):
            follower(lambda p: live(p)[:-3] if p.startswith("tile/") else live(p)).poll()  # type: ignore[index]
        with pytest.raises(InclusionProofError, match="kept growing"):
            follower(lambda p: live(p) if p == "checkpoint" else None).poll()
        with pytest.raises(InclusionProofError, match="no checkpoint"):
            follower(lambda p: None).poll()


def test_partial_tiles_of_every_published_size_stay_served(tmp_path: Path) -> None:
    """tlog-tiles: after the log grows from 300 to 344, a client holding checkpoint 300 still gets
    tile/0/001.p/44 and tile/entries/001.p/44, and they verify against that checkpoint."""
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=clock) as log:
        fill(log, 0, 300)
        old = log.served_checkpoint().to_text().encode()
        fill(log, 300, 44)
        live = served(log)
        for path in ("tile/0/001.p/44", "tile/entries/001.p/44"):
            assert live(path) is not None, path
        assert live("tile/0/001.p/44") == live("tile/0/001.p/88")[: 44 * 32]  # type: ignore[index]
        assert live("tile/0/001.p/89") is None
        asked: list[str] = []

        def holding_300(path: str) -> bytes | None:
            asked.append(path)
            return old if path == "checkpoint" else live(path)

        assert 300 == len(follower(holding_300).poll().entries)
        assert "tile/entries/001.p/44" in asked
        assert "tile/entries/001" not in asked  # no fallback was needed
