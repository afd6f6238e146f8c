"""Known-answer vectors of sealed format v2: every scenario gives its expected outcome, both key paths."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from weightvault import KEK, FileKey, SealedFile
from weightvault.errors import (
    HeaderAuthError,
    HeaderError,
    KeyMismatchError,
    NoMatchingRecipientError,
    PayloadError,
    WeightVaultError,
)
from weightvault.sealing.unseal import unseal_to

VECTORS = Path(__file__).resolve().parent / "format" / "v2"
EXPECT: dict[str, type[WeightVaultError] | tuple[type[WeightVaultError], ...]] = {
    "header_failure": HeaderError,
    "header_auth_failure": HeaderAuthError,
    "payload_failure": PayloadError,
    "key_mismatch": (KeyMismatchError, NoMatchingRecipientError),
    "no_matching_recipient": NoMatchingRecipientError,
}
CASES = sorted(VECTORS.glob("*.json"))


def test_vectors_exist() -> None:
    """The vector set is present (22 scenarios)."""
    assert 22 == len(CASES)


def _open_all(path: Path, keys: object) -> tuple[dict[str, str], bytes]:
    import os
    import tempfile

    with SealedFile(path) as sealed, sealed.unlock(keys) as opened:  # type: ignore[arg-type]
        digests = {e.name: hashlib.sha256(opened.read_range(e, 0, e.nbytes)).hexdigest() for e in opened.entries}
        opened.verify()
        fd, name = tempfile.mkstemp()
        try:
            unseal_to(opened, fd)
            os.lseek(fd, 0, 0)
            restored = Path(name).read_bytes()
        finally:
            os.close(fd)
            os.unlink(name)
    return digests, restored


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
@pytest.mark.parametrize("key_path", ["kek", "file_key"])
def test_vector(case: Path, key_path: str) -> None:
    """Each vector yields its expected class of outcome and, on success, the expected plaintext hashes."""
    spec = json.loads(case.read_text())
    path = case.with_suffix(".wvlt")
    keys: object = [KEK(bytes.fromhex(spec["kek"]))] if key_path == "kek" else FileKey(bytes.fromhex(spec["file_key"]))
    expect = spec["expect"]
    if expect == "success":
        digests, restored = _open_all(path, keys)
        assert spec["tensors"] == digests
        assert spec["unsealed_sha256"] == hashlib.sha256(restored).hexdigest()
        return
    if expect == "no_matching_recipient" and key_path == "file_key":
        # A stanza no identity can open does not stop a holder of the raw file key,
        # but the region MAC still reports that the file was modified.
        with pytest.raises(HeaderAuthError):
            _open_all(path, keys)
        return
    with pytest.raises(WeightVaultError) as info:
        _open_all(path, keys)
    assert isinstance(info.value, EXPECT[expect])
