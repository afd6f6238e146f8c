"""Sealing and unsealing round trips, rewrap, and model directories."""

from __future__ import annotations

import filecmp
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import SealedCase, plain_tensor_bytes
from weightvault import (
    KEK,
    AEADSuite,
    FileKey,
    HPKEIdentity,
    HPKEKem,
    Passphrase,
    SealedFile,
    SealedModel,
    rewrap_file,
    seal_model_dir,
    unseal_file,
    unseal_model_dir,
)
from weightvault.errors import ConfigError, KeyAccessError, ManifestError, NoMatchingRecipientError
from weightvault.format.manifest import MANIFEST_NAME
from weightvault.sealing import SealOptions, seal_safetensors


@pytest.mark.parametrize("suite", list(AEADSuite))
@pytest.mark.parametrize("sealed_metadata", [False, True])
def test_unseal_restores_identical_bytes(
    make_case: Callable[..., SealedCase], tmp_path: Path, suite: AEADSuite, sealed_metadata: bool
) -> None:
    """Unsealing gives back the plain safetensors file byte for byte, for each suite and header mode."""
    case: SealedCase = make_case(suite, sealed_metadata)
    out = tmp_path / "restored.safetensors"
    unseal_file(case.sealed, out, [case.kek])
    assert case.plain.read_bytes() == out.read_bytes()


def test_every_tensor_decrypts_to_its_plaintext(sealed_case: SealedCase) -> None:
    """Each tensor's decrypted bytes equal the source tensor's bytes."""
    expected = plain_tensor_bytes(sealed_case.plain)
    with SealedFile(sealed_case.sealed) as sealed, sealed.unlock(sealed_case.file_key) as opened:
        actual = {e.name: bytes(opened.read_range(e, 0, e.nbytes)) for e in opened.entries}
    assert expected == actual


def test_data_is_length_preserving_and_aligned(sealed_case: SealedCase) -> None:
    """Ciphertext of each tensor has its plaintext length and starts on a 4 KiB boundary."""
    with SealedFile(sealed_case.sealed) as sealed:
        p = sealed.preamble
        table = sealed.public_table()
    assert p.data_offset % 4096 == 0
    sizes = {k: len(v) for k, v in plain_tensor_bytes(sealed_case.plain).items()}
    for entry in table.tensors:
        assert entry.offset % 4096 == 0
        assert sizes[entry.name] == entry.nbytes


def test_sealing_twice_gives_different_ids_and_ciphertext(tmp_path: Path, plain_file: Path, file_key: FileKey) -> None:
    """Sealing the same plaintext twice under the same key yields fresh file ids and unrelated ciphertext."""
    a, b = tmp_path / "a.wvlt", tmp_path / "b.wvlt"
    ra = seal_safetensors(plain_file, a, file_key=file_key)
    rb = seal_safetensors(plain_file, b, file_key=file_key)
    assert ra.file_id != rb.file_id
    da, db = a.read_bytes(), b.read_bytes()
    start = SealedFile(a).preamble.data_offset
    assert da[start : start + 4096] != db[start : start + 4096]


@pytest.mark.parametrize("kem", list(HPKEKem))
def test_hpke_recipients_open_the_file(tmp_path: Path, plain_file: Path, file_key: FileKey, kem: HPKEKem) -> None:
    """A file sealed to an HPKE public key opens with its private key and not with another."""
    ident = HPKEIdentity.generate(kem)
    out = tmp_path / "h.wvlt"
    seal_safetensors(plain_file, out, file_key=file_key, recipients=[ident.recipient])
    with SealedFile(out) as sealed:
        assert file_key == sealed.resolve([ident])
        with pytest.raises(NoMatchingRecipientError):
            sealed.resolve([HPKEIdentity.generate(kem)])


def test_passphrase_recipient(tmp_path: Path, plain_file: Path, file_key: FileKey) -> None:
    """A passphrase stanza opens with the right passphrase only."""
    out = tmp_path / "p.wvlt"
    seal_safetensors(plain_file, out, file_key=file_key, recipients=[Passphrase("correct horse", log_n=10)])
    with SealedFile(out) as sealed:
        assert file_key == sealed.resolve([Passphrase("correct horse")])
        with pytest.raises(NoMatchingRecipientError):
            sealed.resolve([Passphrase("wrong horse")])


def test_rewrap_rewrites_only_the_recipients_region(sealed_case: SealedCase) -> None:
    """Adding and removing recipients changes no byte outside the recipients region."""
    before = sealed_case.bytes()
    other = KEK.generate()
    result = rewrap_file(sealed_case.sealed, [sealed_case.kek], add=[other], remove=[sealed_case.kek.kid])
    after = sealed_case.bytes()
    assert not result.grew
    p = SealedFile(sealed_case.sealed).preamble
    assert len(before) == len(after)
    assert before[:128] == after[:128]
    assert before[p.header_offset :] == after[p.header_offset :]
    assert before[128 : p.header_offset] != after[128 : p.header_offset]
    with SealedFile(sealed_case.sealed) as sealed:
        assert sealed_case.file_key == sealed.resolve([other])
        with pytest.raises(NoMatchingRecipientError):
            sealed.resolve([sealed_case.kek])


def test_rewrap_grows_the_region_without_reencryption(sealed_case: SealedCase, tmp_path: Path) -> None:
    """Many hybrid recipients outgrow the region; the file is re-laid out and still verifies and unseals."""
    before = SealedFile(sealed_case.sealed)
    old_p, old_tags, old_mac = before.preamble, before.tag_bytes, before.header_mac
    before.close()
    idents = [HPKEIdentity.generate(HPKEKem.MLKEM768_X25519) for _ in range(8)]
    result = rewrap_file(sealed_case.sealed, [sealed_case.kek], add=[i.recipient for i in idents])
    assert result.grew
    with SealedFile(sealed_case.sealed) as sealed:
        assert sealed.preamble.recipients_len > old_p.recipients_len
        assert (old_tags, old_mac) == (sealed.tag_bytes, sealed.header_mac)
        assert sealed.preamble.authenticated_core() == old_p.authenticated_core()
        with sealed.unlock([idents[-1]]) as opened:
            opened.verify()
    out = tmp_path / "r.safetensors"
    unseal_file(sealed_case.sealed, out, [idents[3]])
    assert sealed_case.plain.read_bytes() == out.read_bytes()


def test_rewrap_refuses_to_remove_the_last_recipient(sealed_case: SealedCase) -> None:
    """Removing every recipient would lock everyone out; it is refused and the file is untouched."""
    before = sealed_case.bytes()
    with pytest.raises(ValueError, match="last recipient"):
        rewrap_file(sealed_case.sealed, [sealed_case.kek], remove=[sealed_case.kek.kid])
    assert before == sealed_case.bytes()


def test_rewrap_needs_the_whole_file_key(sealed_case: SealedCase) -> None:
    """A partial grant cannot rewrap."""
    p = SealedFile(sealed_case.sealed).preamble
    grant = sealed_case.file_key.tensor_keys(p.file_id, [0])
    with pytest.raises(KeyAccessError):
        rewrap_file(sealed_case.sealed, grant, add=[KEK.generate()])


def _sharded_model(tmp_path: Path) -> Path:
    from safetensors.numpy import save_file

    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    shard1 = {"a.weight": rng.standard_normal((64, 64), dtype=np.float32)}
    shard2 = {"b.weight": rng.standard_normal((32, 8), dtype=np.float32), "b.bias": np.zeros(8, np.float32)}
    save_file(shard1, str(src / "model-00001-of-00002.safetensors"))
    save_file(shard2, str(src / "model-00002-of-00002.safetensors"))
    index = {
        "metadata": {"total_size": 64 * 64 * 4 + 32 * 8 * 4 + 32},
        "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors",
            "b.weight": "model-00002-of-00002.safetensors",
            "b.bias": "model-00002-of-00002.safetensors",
        },
    }
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    (src / "config.json").write_text('{"model_type": "none"}')
    (src / "sub" / "tokenizer.json").write_text('{"tok": 1}')
    return src


@pytest.mark.parametrize("seal_files", [False, True])
def test_sharded_model_dir_round_trip(tmp_path: Path, kek: KEK, file_key: FileKey, seal_files: bool) -> None:
    """A sharded model directory seals and unseals byte for byte, with or without sealed side files."""
    src = _sharded_model(tmp_path)
    dst = tmp_path / "sealed"
    seal_model_dir(src, dst, file_key=file_key, recipients=[kek], seal_files=seal_files)
    assert not (dst / "model-00001-of-00002.safetensors").exists()
    assert (dst / "model-00001-of-00002.safetensors.wvlt").exists()
    assert (dst / "config.json").exists() != seal_files
    model = SealedModel.open(dst, [kek])
    model.verify()
    assert b'{"tok": 1}' == model.read_bytes("sub/tokenizer.json")
    out = tmp_path / "restored"
    unseal_model_dir(dst, out, [kek])
    cmp = filecmp.dircmp(src, out)
    assert ([], [], []) == (cmp.left_only, cmp.right_only, cmp.diff_files)
    assert [] == cmp.subdirs["sub"].diff_files


def test_model_dir_detects_tampered_public_file(tmp_path: Path, kek: KEK, file_key: FileKey) -> None:
    """A modified config.json carried in the clear is caught by the manifest."""
    src = _sharded_model(tmp_path)
    dst = tmp_path / "sealed"
    seal_model_dir(src, dst, file_key=file_key, recipients=[kek])
    (dst / "config.json").write_text('{"model_type": "evil"}')
    model = SealedModel.open(dst, [kek])
    with pytest.raises(ManifestError):
        model.read_bytes("config.json")
    with pytest.raises(ManifestError):
        model.verify()


def test_model_dir_detects_swapped_shard(tmp_path: Path, kek: KEK, file_key: FileKey) -> None:
    """A shard replaced by the same shard from another seal under the same key is caught."""
    src = _sharded_model(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    seal_model_dir(src, one, file_key=file_key, recipients=[kek])
    seal_model_dir(src, two, file_key=file_key, recipients=[kek])
    name = "model-00001-of-00002.safetensors.wvlt"
    (one / name).write_bytes((two / name).read_bytes())
    model = SealedModel.open(one, [kek])
    with pytest.raises(ManifestError):
        model.open_sealed(model.entry("model-00001-of-00002.safetensors"))


def test_model_dir_detects_manifest_edits_and_extra_files(tmp_path: Path, kek: KEK, file_key: FileKey) -> None:
    """Editing the manifest breaks its MAC; an unlisted file in the directory fails verification."""
    src = _sharded_model(tmp_path)
    dst = tmp_path / "sealed"
    seal_model_dir(src, dst, file_key=file_key, recipients=[kek])
    (dst / "extra.bin").write_bytes(b"x")
    with pytest.raises(ManifestError, match="not in its manifest"):
        SealedModel.open(dst, [kek]).verify()
    (dst / "extra.bin").unlink()
    doc = json.loads((dst / MANIFEST_NAME).read_text())
    public = next(f for f in doc["files"] if f["role"] == "public")
    public["size"] += 1
    (dst / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="failed authentication"):
        SealedModel.open(dst, [kek])


def test_model_dir_refuses_plaintext_pickles(tmp_path: Path, kek: KEK, file_key: FileKey) -> None:
    """A pytorch_model.bin beside the safetensors would leak weights; sealing refuses and writes nothing."""
    src = _sharded_model(tmp_path)
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    dst = tmp_path / "sealed"
    with pytest.raises(ConfigError, match="in the clear"):
        seal_model_dir(src, dst, file_key=file_key, recipients=[kek])
    assert not dst.exists()
    assert [] == [p for p in tmp_path.iterdir() if p.name.startswith(".sealed")]
    seal_model_dir(src, dst, file_key=file_key, recipients=[kek], exclude=["*.bin"])
    assert not (dst / "pytorch_model.bin").exists()


def test_unseal_needs_full_key(sealed_case: SealedCase, tmp_path: Path) -> None:
    """A partial grant cannot unseal a whole file, and no output is left behind."""
    p = SealedFile(sealed_case.sealed).preamble
    grant = sealed_case.file_key.tensor_keys(p.file_id, [0, 1])
    out = tmp_path / "o.safetensors"
    with pytest.raises(KeyAccessError):
        unseal_file(sealed_case.sealed, out, grant)
    assert not out.exists()


def test_chunk_size_option(tmp_path: Path, plain_file: Path, file_key: FileKey) -> None:
    """Different chunk sizes produce different tag counts and identical plaintext."""
    counts = {}
    for log2 in (16, 20, 24):
        out = tmp_path / f"c{log2}.wvlt"
        seal_safetensors(plain_file, out, file_key=file_key, options=SealOptions(chunk_log2=log2))
        with SealedFile(out) as sealed:
            counts[log2] = sealed.preamble.tags_len // 16
        restored = tmp_path / f"c{log2}.safetensors"
        unseal_file(out, restored, file_key)
        assert plain_file.read_bytes() == restored.read_bytes()
    assert counts[16] > counts[20] == counts[24]
