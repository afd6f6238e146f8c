"""read_private_file: the one gate for secret files (key files, signing keys, tokens, person keys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from weightvault.errors import ConfigError
from weightvault.files import read_private_file
from weightvault.sealing.keyfiles import read_secret_file, write_secret_file


def test_owner_only_files_are_read(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"wv1_secret\n")
    path.chmod(0o600)
    assert read_private_file(path, "token") == b"wv1_secret\n"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_group_or_other_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(b"PRIVATE+KEY+x")
    path.chmod(mode)
    with pytest.raises(ConfigError, match=r"signing key file is accessible by other users \(chmod 600 it\)"):
        read_private_file(path, "signing key")


def test_size_bound_and_missing_file(tmp_path: Path) -> None:
    big = tmp_path / "big.key"
    big.write_bytes(bytes(65))
    big.chmod(0o600)
    with pytest.raises(ConfigError, match="not a key file \\(too large\\)"):
        read_private_file(big, "key", max_bytes=64)
    with pytest.raises(ConfigError, match="cannot read key file"):
        read_private_file(tmp_path / "absent", "key")


def test_secret_files_go_through_the_same_gate(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    write_secret_file(path, "weightvault.root-key", bytes(32))
    assert read_secret_file(path, "weightvault.root-key") == bytes(32)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="accessible by other users"):
        read_secret_file(path, "weightvault.root-key")
