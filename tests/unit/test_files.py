"""Atomic outputs: nothing named exists until the write is complete, and dead writers' temporaries are swept."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from weightvault import files as atomic
from weightvault.errors import ConfigError
from weightvault.files import atomic_directory, atomic_file, remove_stale_partials


def test_unnamed_until_complete(tmp_path: Path) -> None:
    """While the block runs the directory holds no new name at all; afterwards exactly the target."""
    target = tmp_path / "out.bin"
    with atomic_file(target, mode=0o600) as handle:
        handle.write(b"secret plaintext")
        assert [] == os.listdir(tmp_path)
    assert ["out.bin"] == os.listdir(tmp_path)
    assert b"secret plaintext" == target.read_bytes()
    assert 0o600 == target.stat().st_mode & 0o777


def _fail_while_writing(target: Path, **options: bool) -> None:
    with atomic_file(target, **options) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("killed")


def _write_while_another_creates(target: Path) -> None:
    with atomic_file(target) as handle:
        handle.write(b"new")
        target.write_bytes(b"someone else's")


def _fail_while_building(target: Path) -> None:
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "c").write_bytes(b"3")
        raise RuntimeError


def test_a_failed_block_leaves_nothing_and_keeps_the_old_file(tmp_path: Path) -> None:
    """An exception inside the block leaves the previous file untouched and no temporary behind."""
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        _fail_while_writing(target, overwrite=True)
    assert ["out.bin"] == os.listdir(tmp_path)
    assert b"old" == target.read_bytes()


def test_no_clobber_even_when_the_target_appears_meanwhile(tmp_path: Path) -> None:
    """Without overwrite, a target created during the write is not replaced."""
    target = tmp_path / "out.bin"
    with pytest.raises(ConfigError, match="already exists"):
        _write_while_another_creates(target)
    assert b"someone else's" == target.read_bytes()
    assert ["out.bin"] == os.listdir(tmp_path)


def _aged(path: Path, seconds: float = 60.0) -> Path:
    past = time.time() - seconds
    os.utime(path, (past, past))
    return path


def test_dead_writers_temporaries_are_swept_live_ones_kept(tmp_path: Path) -> None:
    """Unlocked, old temporaries go; locked or fresh ones, and files of other names, stay."""
    dead = tmp_path / ".m.safetensors.wv-0123456789abcdef.partial"
    dead.write_bytes(b"plaintext of a killed unseal")
    _aged(dead)
    dead_dir = tmp_path / ".model.wv-fedcba9876543210.partial"
    dead_dir.mkdir()
    (dead_dir / "model.safetensors").write_bytes(b"plaintext")
    _aged(dead_dir)
    live = tmp_path / ".n.wv-00000000000000aa.partial"
    live.write_bytes(b"x")
    _aged(live)
    fresh = tmp_path / ".o.wv-00000000000000bb.partial"
    fresh.write_bytes(b"x")
    other = tmp_path / ".user-file.partial"
    other.write_bytes(b"not ours")
    _aged(other)
    holder = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        removed = remove_stale_partials(tmp_path)
    finally:
        os.close(holder)
    assert {dead, dead_dir} == set(removed)
    assert {live.name, fresh.name, other.name} == set(os.listdir(tmp_path))


def test_without_o_tmpfile_the_fallback_is_locked_and_cleaned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the filesystem has no O_TMPFILE, the named temporary is locked while written and removed on failure."""
    monkeypatch.setattr(atomic, "_open_unnamed", lambda directory: None)
    target = tmp_path / "out.bin"
    with atomic_file(target) as handle:
        handle.write(b"data")
        (temp,) = tmp_path.iterdir()
        probe = os.open(temp, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
        assert [] == remove_stale_partials(tmp_path, now=time.time() + 3600)
    assert ["out.bin"] == os.listdir(tmp_path)
    with pytest.raises(RuntimeError):
        _fail_while_writing(tmp_path / "other.bin")
    assert ["out.bin"] == os.listdir(tmp_path)


def test_directory_replacement_leaves_only_the_new_directory(tmp_path: Path) -> None:
    """Replacing a directory removes the old one; a failed build leaves the old one and no temporary."""
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_bytes(b"1")
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "b").write_bytes(b"2")
    assert ["b"] == os.listdir(target)
    with pytest.raises(RuntimeError):
        _fail_while_building(target)
    assert ["model"] == os.listdir(tmp_path)
    assert ["b"] == os.listdir(target)
