"""Every tampering case of the format: each raises a specific error and releases no plaintext."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import SealedCase, forge
from weightvault import KEK, AEADSuite, FileKey, SealedFile
from weightvault.errors import (
    FormatError,
    HeaderAuthError,
    HeaderError,
    KeyMismatchError,
    NoMatchingRecipientError,
    PayloadError,
    UnsupportedError,
    WeightVaultError,
)
from weightvault.format.preamble import Preamble
from weightvault.format.wire import align_up
from weightvault.loaders import numpy as wv_numpy
from weightvault.sealing import seal_safetensors


def _load(path: Path, keys: object) -> dict[str, np.ndarray]:
    return wv_numpy.load_file(path, keys)  # type: ignore[arg-type]


def _write(case: SealedCase, data: bytes | bytearray, name: str = "tampered.wvlt") -> Path:
    out = case.sealed.with_name(name)
    out.write_bytes(bytes(data))
    return out


def _layout(case: SealedCase) -> Preamble:
    with SealedFile(case.sealed) as sealed:
        return sealed.preamble


def _positions(case: SealedCase) -> list[int]:
    """Every byte before the data area except long zero fills (strided there), and in the data
    area every byte near a chunk or tensor boundary plus a stride through the rest."""
    p = _layout(case)
    data = case.bytes()
    with SealedFile(case.sealed) as sealed:
        region_used = 4 + struct.unpack("<I", data[128:132])[0] + 32
        gaps = sealed.unlock(case.file_key).layout.gaps()
    fills = [(128 + region_used, p.header_offset), *gaps]
    out = []
    chunk = 1 << 16
    for i in range(len(data)):
        if i < p.data_offset:
            keep = not any(a <= i < b for a, b in fills) or i % 97 == 0
        else:
            rel = (i - p.data_offset) % chunk
            keep = rel < 3 or rel > chunk - 3 or i % 251 == 0 or any(abs(i - b) < 3 for _, b in gaps)
        if keep:
            out.append(i)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("identity", ["kek", "file_key"])
def test_any_flipped_byte_is_detected(sealed_case: SealedCase, identity: str) -> None:
    """Flipping any single byte of the file makes loading raise a weightvault error, with either kind of key."""
    data = sealed_case.bytes()
    keys = [sealed_case.kek] if identity == "kek" else sealed_case.file_key
    undetected = []
    for i in _positions(sealed_case):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        path = _write(sealed_case, tampered)
        try:
            _load(path, keys)
        except WeightVaultError:
            continue
        undetected.append(i)
    assert [] == undetected


def test_flipped_byte_classes(sealed_case: SealedCase) -> None:
    """A flip in each region raises the error class of that region."""
    p = _layout(sealed_case)
    cases = {
        0: HeaderError,  # magic
        8: UnsupportedError,  # version
        20: KeyMismatchError,  # file id: the key schedule changes, so the commitment no longer matches
        50: KeyMismatchError,  # the commitment itself
        84: HeaderError,  # reserved
        p.header_offset + 5: HeaderAuthError,
        p.tags_offset: HeaderAuthError,
        p.mac_offset + 31: HeaderAuthError,
        p.data_offset + 17: PayloadError,
        p.file_size - 1: PayloadError,
    }
    for offset, error in cases.items():
        tampered = sealed_case.bytes()
        tampered[offset] ^= 0x80
        with pytest.raises(error):
            _load(_write(sealed_case, tampered), sealed_case.file_key)


def test_truncation_at_any_point_is_detected(sealed_case: SealedCase) -> None:
    """Every proper prefix of the file is rejected with a format error."""
    data = sealed_case.bytes()
    p = _layout(sealed_case)
    lengths = sorted(
        {*range(0, len(data), 509), *range(p.data_offset - 40, p.data_offset + 40), *range(len(data) - 40, len(data))}
    )
    for n in lengths:
        with pytest.raises(FormatError):
            _load(_write(sealed_case, data[:n]), sealed_case.file_key)


def test_truncation_errors_name_the_region(sealed_case: SealedCase) -> None:
    """Cutting into the header region is a header error; cutting into the data area is a payload error."""
    data = sealed_case.bytes()
    p = _layout(sealed_case)
    with pytest.raises(HeaderError, match="shorter than"):
        _load(_write(sealed_case, data[:100]), sealed_case.file_key)
    with pytest.raises(HeaderError, match="truncated"):
        _load(_write(sealed_case, data[: p.header_offset + 3]), sealed_case.file_key)
    with pytest.raises(PayloadError, match="truncated"):
        _load(_write(sealed_case, data[: p.file_size - 1]), sealed_case.file_key)


@pytest.mark.parametrize("extra", [b"\x00", b"PK\x03\x04 zip", b"\x00" * 4096])
def test_appended_bytes_are_rejected(sealed_case: SealedCase, extra: bytes) -> None:
    """Bytes after the data area (zero or a polyglot payload) are rejected."""
    with pytest.raises(PayloadError, match="after the data area"):
        _load(_write(sealed_case, sealed_case.bytes() + extra), sealed_case.file_key)


def test_nonzero_gap_between_tensors_is_rejected(sealed_case: SealedCase) -> None:
    """Hidden content in the alignment padding between tensors is rejected."""
    with SealedFile(sealed_case.sealed) as sealed:
        gaps = sealed.unlock(sealed_case.file_key).layout.gaps()
    data_gaps = [g for g in gaps if g[0] >= _layout(sealed_case).data_offset]
    assert data_gaps
    tampered = sealed_case.bytes()
    tampered[data_gaps[0][0]] = 0x41
    with pytest.raises(PayloadError, match="between tensors"):
        _load(_write(sealed_case, tampered), sealed_case.file_key)


def _tensor_range(case: SealedCase, name: str) -> tuple[int, int, int, int]:
    with SealedFile(case.sealed) as sealed:
        opened = sealed.unlock(case.file_key)
        entry = opened.entry(name)
        start, stop = opened.layout.data_range(entry)
        t0, t1 = opened.layout.tag_range(entry)
        return start, stop, sealed.preamble.tags_offset + t0, sealed.preamble.tags_offset + t1


def test_swapped_chunks_within_a_tensor_fail(sealed_case: SealedCase) -> None:
    """Swapping two chunks of one tensor fails, with or without swapping their tags (header MAC covers tags)."""
    start, _, tag0, _ = _tensor_range(sealed_case, "layer.0.weight")
    chunk = 1 << 16
    data = sealed_case.bytes()
    swapped = bytearray(data)
    swapped[start : start + chunk], swapped[start + chunk : start + 2 * chunk] = (
        data[start + chunk : start + 2 * chunk],
        data[start : start + chunk],
    )
    with pytest.raises(PayloadError, match="chunk 0"):
        _load(_write(sealed_case, swapped), sealed_case.file_key)
    swapped[tag0 : tag0 + 16], swapped[tag0 + 16 : tag0 + 32] = data[tag0 + 16 : tag0 + 32], data[tag0 : tag0 + 16]
    with pytest.raises(HeaderAuthError):
        _load(_write(sealed_case, swapped), sealed_case.file_key)


def test_reordered_chunks_fail_even_with_recomputed_mac(sealed_case: SealedCase, tmp_path: Path) -> None:
    """A key holder who reorders chunks and tags and re-MACs the header still fails: nonces bind chunk indices."""
    start, _, tag0, _ = _tensor_range(sealed_case, "layer.0.weight")
    chunk = 1 << 16
    data = sealed_case.bytes()
    swapped = bytearray(data)
    swapped[start : start + chunk], swapped[start + chunk : start + 2 * chunk] = (
        data[start + chunk : start + 2 * chunk],
        data[start : start + chunk],
    )
    swapped[tag0 : tag0 + 16], swapped[tag0 + 16 : tag0 + 32] = data[tag0 + 16 : tag0 + 32], data[tag0 : tag0 + 16]
    _remac(swapped, sealed_case)
    with pytest.raises(PayloadError):
        _load(_write(sealed_case, swapped), sealed_case.file_key)


def test_dropping_the_final_chunk_fails(sealed_case: SealedCase, tmp_path: Path) -> None:
    """Presenting a tensor that ends one chunk early fails on the final-chunk flag, even when re-authenticated."""
    with SealedFile(sealed_case.sealed) as sealed:
        opened = sealed.unlock(sealed_case.file_key)
        entry = opened.entry("layer.0.weight")
        stream = opened.stream(entry)
        tags = opened.tags(entry)
        start, _ = opened.layout.data_range(entry)
    data = sealed_case.bytes()
    chunk = 1 << 16
    # Chunk 1 is not final; decrypting it as the last chunk of a two-chunk tensor must fail.
    region = bytearray(data[start + chunk : start + 2 * chunk]) + bytearray(16)
    from weightvault.format.hazmat import TensorStream

    short = TensorStream(stream.cipher, stream.aad, entry.name, 2 * chunk, 16, 2)
    with pytest.raises(PayloadError):
        short.decrypt_chunk_in_place(1, memoryview(region), tags[16:32])


def test_swapped_tensors_fail(sealed_case: SealedCase) -> None:
    """Exchanging the ciphertext and tags of two same-sized tensors fails: keys are per tensor."""
    a0, a1, at0, at1 = _tensor_range(sealed_case, "layer.0.weight")
    b0, b1, bt0, bt1 = _tensor_range(sealed_case, "layer.1.weight")
    data = sealed_case.bytes()
    swapped = bytearray(data)
    swapped[a0:a1], swapped[b0:b1] = data[b0:b1], data[a0:a1]
    with pytest.raises(PayloadError):
        _load(_write(sealed_case, swapped), sealed_case.file_key)
    swapped[at0:at1], swapped[bt0:bt1] = data[bt0:bt1], data[at0:at1]
    with pytest.raises(HeaderAuthError):
        _load(_write(sealed_case, swapped), sealed_case.file_key)


def test_chunk_spliced_from_another_file_under_the_same_key_fails(sealed_case: SealedCase, tmp_path: Path) -> None:
    """A chunk and its tag copied from another seal under the same file key fail, even after re-MACing.

    The other file has its own file id, so its tensor keys and associated data differ.
    """
    other = tmp_path / "other.wvlt"
    seal_safetensors(sealed_case.plain, other, file_key=sealed_case.file_key, recipients=[sealed_case.kek])
    start, _, tag0, _ = _tensor_range(sealed_case, "layer.0.weight")
    data = sealed_case.bytes()
    donor = other.read_bytes()
    chunk = 1 << 16
    spliced = bytearray(data)
    spliced[start : start + chunk] = donor[start : start + chunk]
    spliced[tag0 : tag0 + 16] = donor[tag0 : tag0 + 16]
    with pytest.raises(HeaderAuthError):
        _load(_write(sealed_case, spliced), sealed_case.file_key)
    _remac(spliced, sealed_case)
    with pytest.raises(PayloadError, match="chunk 0"):
        _load(_write(sealed_case, spliced), sealed_case.file_key)


def _remac(data: bytearray, case: SealedCase) -> None:
    """Recompute the header MAC as a holder of the file key would."""
    from weightvault.crypto.mac import hmac_sha256
    from weightvault.format.hazmat import derive_header_keys

    p = _layout(case)
    mac_key = derive_header_keys(case.file_key.header_secret(p.file_id)).mac_key
    header = bytes(data[p.header_offset : p.tags_offset])
    tags = bytes(data[p.tags_offset : p.mac_offset])
    data[p.mac_offset : p.mac_offset + 32] = hmac_sha256(mac_key, [p.authenticated_core(), header, tags])


def test_headers_swapped_between_two_files_fail(sealed_case: SealedCase, tmp_path: Path) -> None:
    """Moving one file's preamble, recipients, header, tags and MAC onto another file's data fails."""
    other = tmp_path / "other.wvlt"
    seal_safetensors(sealed_case.plain, other, file_key=sealed_case.file_key, recipients=[sealed_case.kek])
    p = _layout(sealed_case)
    data = sealed_case.bytes()
    donor = other.read_bytes()
    mixed = bytearray(donor[: p.data_offset]) + data[p.data_offset :]
    with pytest.raises(PayloadError):
        _load(_write(sealed_case, mixed), sealed_case.file_key)


def test_wrong_key(sealed_case: SealedCase) -> None:
    """Another file key fails the key commitment; another KEK matches no stanza."""
    with pytest.raises(KeyMismatchError):
        _load(sealed_case.sealed, FileKey.generate())
    with pytest.raises(NoMatchingRecipientError):
        _load(sealed_case.sealed, [KEK.generate()])


def test_stanza_wrapping_another_key_fails_the_commitment(sealed_case: SealedCase) -> None:
    """A stanza swapped for one that wraps a different file key (to the same KEK) is caught by the commitment."""
    from weightvault.format.hazmat import derive_header_keys
    from weightvault.format.recipients import encode_recipients_region

    p = _layout(sealed_case)
    context = p.stanza_context()
    evil_key = FileKey.generate()
    stanza = sealed_case.kek.wrap(evil_key, context)
    rmac = derive_header_keys(evil_key.header_secret(p.file_id)).recipients_mac_key
    data = sealed_case.bytes()
    data[128 : 128 + p.recipients_len] = encode_recipients_region(
        [stanza], p.recipients_len, rmac, p.recipients_mac_context()
    )
    with pytest.raises(KeyMismatchError):
        _load(_write(sealed_case, data), [sealed_case.kek])


def test_two_key_file_is_rejected_before_any_decryption(sealed_case: SealedCase, tmp_path: Path) -> None:
    """A file authenticated under FK2 but carrying FK1's commitment (one file, two keys) opens under neither.

    The forger re-encrypts every chunk and re-MACs the header under FK2, wraps FK2
    for the recipient, and keeps FK1's key commitment in the preamble. A recipient
    who unwraps FK2 is refused at the commitment check, before any decryption; a
    holder of FK1 passes the commitment but fails the header MAC.
    """
    p = _layout(sealed_case)
    fk2 = FileKey.generate()
    forged = tmp_path / "two-key.wvlt"
    forge(
        sealed_case.sealed,
        sealed_case.file_key,
        forged,
        encrypt_key=fk2,
        preamble_changes={"key_commitment": p.key_commitment},
    )
    with pytest.raises(KeyMismatchError):
        _load(forged, [sealed_case.kek])
    with pytest.raises(KeyMismatchError):
        _load(forged, fk2)
    with pytest.raises(HeaderAuthError):
        _load(forged, sealed_case.file_key)


@pytest.mark.parametrize(("offset", "fmt"), [(84, "<I"), (120, "<Q")])
def test_nonzero_reserved_fields(sealed_case: SealedCase, offset: int, fmt: str) -> None:
    """Each reserved preamble field must be zero."""
    data = sealed_case.bytes()
    data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, 1)
    with pytest.raises(HeaderError, match="reserved"):
        _load(_write(sealed_case, data), sealed_case.file_key)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("version", 3, UnsupportedError),
        ("version", 1, UnsupportedError),
        ("suite", 9, UnsupportedError),
        ("flags", 2, UnsupportedError),
        ("chunk_log2", 25, HeaderError),
        ("header_len", 2**63, HeaderError),
        ("tags_len", 2**62, HeaderError),
        ("data_len", 2**60, HeaderError),
        ("recipients_len", 2**40, HeaderError),
    ],
)
def test_absurd_or_unknown_preamble_values(sealed_case: SealedCase, field: str, value: int, error: type) -> None:
    """Unknown versions, suites and flags, and absurd lengths are rejected before any allocation."""
    offsets = {
        "version": (8, "<H"),
        "suite": (10, "<H"),
        "flags": (12, "<I"),
        "chunk_log2": (80, "<I"),
        "header_len": (88, "<Q"),
        "tags_len": (96, "<Q"),
        "data_len": (104, "<Q"),
        "recipients_len": (112, "<Q"),
    }
    at, fmt = offsets[field]
    data = sealed_case.bytes()
    data[at : at + struct.calcsize(fmt)] = struct.pack(fmt, value)
    with pytest.raises(error):
        _load(_write(sealed_case, data), sealed_case.file_key)


def _table(case: SealedCase) -> dict[str, Any]:
    with SealedFile(case.sealed) as sealed:
        doc = json.loads(sealed.unlock(case.file_key).table.to_bytes())
    assert isinstance(doc, dict)
    return doc


def test_unknown_critical_field_is_rejected_behind_a_valid_mac(sealed_case: SealedCase, tmp_path: Path) -> None:
    """A header naming an unknown critical extension is refused even though it authenticates."""
    doc = _table(sealed_case)
    doc["crit"] = ["x-future"]
    doc["x-future"] = {"mode": 1}
    out = tmp_path / "crit.wvlt"
    forge(sealed_case.sealed, sealed_case.file_key, out, header_json=json.dumps(doc).encode())
    with pytest.raises(UnsupportedError, match="critical"):
        _load(out, sealed_case.file_key)


def test_unknown_non_critical_field_is_ignored(sealed_case: SealedCase, tmp_path: Path) -> None:
    """An extra top-level field that crit does not name is tolerated."""
    doc = _table(sealed_case)
    doc["x-comment"] = "hello"
    out = tmp_path / "extra.wvlt"
    forge(sealed_case.sealed, sealed_case.file_key, out, header_json=json.dumps(doc).encode())
    assert "layer.0.weight" in _load(out, sealed_case.file_key)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["tensors"][0].__setitem__("shape", [2**40, 2**40, 2**40]), "overflow"),
        (lambda d: d["tensors"][0].__setitem__("shape", [-1, 4]), "integer"),
        (lambda d: d["tensors"][0].__setitem__("nbytes", 1), "nbytes"),
        (lambda d: d["tensors"][0].__setitem__("offset", 8192), "canonical"),
        (lambda d: d["tensors"][1].__setitem__("name", d["tensors"][0]["name"]), "duplicate"),
        (lambda d: d["tensors"][0].__setitem__("dtype", "F4"), "dtype"),
        (lambda d: d["tensors"][0].__setitem__("extra", 1), "exactly"),
        (lambda d: d.__setitem__("kind", "pickle"), "kind"),
        (lambda d: d.__setitem__("tensors", [d["tensors"][0]] * 2), "duplicate"),
    ],
)
def test_malformed_tables_are_rejected_behind_a_valid_mac(
    sealed_case: SealedCase, tmp_path: Path, mutate: object, message: str
) -> None:
    """Structural checks on the table hold even for a header that authenticates."""
    doc = _table(sealed_case)
    mutate(doc)  # type: ignore[operator]
    out = tmp_path / "bad.wvlt"
    forge(sealed_case.sealed, sealed_case.file_key, out, header_json=json.dumps(doc).encode())
    with pytest.raises(HeaderError, match=message):
        _load(out, sealed_case.file_key)


def test_deeply_nested_or_duplicate_key_header_is_rejected(sealed_case: SealedCase, tmp_path: Path) -> None:
    """JSON nested 100,000 deep, and duplicate keys, fail as header errors in bounded time."""
    out = tmp_path / "deep.wvlt"
    forge(sealed_case.sealed, sealed_case.file_key, out, header_json=b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(HeaderError, match="nested"):
        _load(out, sealed_case.file_key)
    forge(sealed_case.sealed, sealed_case.file_key, out, header_json=b'{"kind": "blob", "kind": "safetensors"}')
    with pytest.raises(HeaderError, match="duplicate"):
        _load(out, sealed_case.file_key)


def test_tampered_tensor_commitment_is_rejected(sealed_case: SealedCase, tmp_path: Path) -> None:
    """A header (validly MACed) whose per-tensor key commitment is wrong is rejected."""
    doc = _table(sealed_case)
    doc["tensors"][2]["key_commitment"] = "00" * 32
    out = tmp_path / "kc.wvlt"
    forge(sealed_case.sealed, sealed_case.file_key, out, header_json=json.dumps(doc).encode())
    with pytest.raises(HeaderAuthError, match="commitment"):
        _load(out, sealed_case.file_key)


def test_failed_load_releases_nothing_and_wipes_buffers(
    sealed_case: SealedCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the last tensor fails, load_file raises and every buffer it filled is zeroed."""
    p = _layout(sealed_case)
    data = sealed_case.bytes()
    data[p.file_size - 5000] ^= 1  # inside the last non-empty tensor
    path = _write(sealed_case, data)
    handed_out: list[memoryview] = []
    from weightvault.loaders import _host

    real = _host.host_buffer

    def spy(nbytes: int) -> bytearray:
        buf = real(nbytes)
        handed_out.append(memoryview(buf))
        return buf  # type: ignore[return-value]

    monkeypatch.setattr(wv_numpy, "host_buffer", spy)
    with pytest.raises(PayloadError):
        _load(path, sealed_case.file_key)
    assert handed_out
    assert all(not any(b) for b in handed_out)


def test_stock_safetensors_refuses_a_sealed_file(sealed_case: SealedCase) -> None:
    """safetensors' loaders raise on a sealed file and never return ciphertext as tensors."""
    import safetensors
    import safetensors.numpy
    import safetensors.torch

    for loader in (
        lambda: safetensors.numpy.load_file(str(sealed_case.sealed)),
        lambda: safetensors.torch.load_file(str(sealed_case.sealed)),
        lambda: safetensors.safe_open(str(sealed_case.sealed), framework="np"),
        lambda: safetensors.numpy.load(sealed_case.sealed.read_bytes()),
    ):
        with pytest.raises(Exception, match=r"(?i)header"):
            loader()


def test_stock_torch_load_refuses_a_sealed_file(sealed_case: SealedCase) -> None:
    """torch.load raises on a sealed file."""
    import torch

    with pytest.raises(Exception):  # noqa: B017 - any refusal is acceptable; returning data is not
        torch.load(str(sealed_case.sealed), weights_only=True)


@pytest.mark.parametrize("suite", list(AEADSuite))
def test_tampering_fails_identically_for_both_suites(make_case: Callable[..., SealedCase], suite: AEADSuite) -> None:
    """The same data flip raises the same error class under each suite."""
    case: SealedCase = make_case(suite)
    start, _, _, _ = _tensor_range(case, "layer.1.weight")
    data = case.bytes()
    data[start + 100] ^= 4
    with pytest.raises(PayloadError, match="failed authentication"):
        _load(_write(case, data), case.file_key)


@pytest.mark.parametrize("grow", [16, 4096])
def test_moving_the_header_without_the_key_is_detected(sealed_case: SealedCase, grow: int) -> None:
    """Growing recipients_len and moving everything after the region (zeros inserted, or a shift into the
    padding when it fits) is a keyless edit that every reader refuses, whatever key opens the file."""
    p = _layout(sealed_case)
    data = sealed_case.bytes()
    grown = bytearray(data)
    grown[112:120] = struct.pack("<Q", p.recipients_len + grow)
    if p.mac_offset + 32 + grow <= p.data_offset:  # same size: shift into the zero padding before the data area
        tail = bytes(data[p.header_offset : p.mac_offset + 32])
        grown[p.header_offset : p.header_offset + grow] = bytes(grow)
        grown[p.header_offset + grow : p.mac_offset + 32 + grow] = tail
    else:  # insert zeros after the region: every later offset moves
        grown = grown[: p.header_offset] + bytearray(grow) + grown[p.header_offset :]
        grown = grown[: align_up(len(grown) - p.data_len, 4096) + p.data_len]
    path = _write(sealed_case, grown)
    for keys in ([sealed_case.kek], sealed_case.file_key):
        with pytest.raises(HeaderAuthError, match="recipients region"):
            _load(path, keys)
        with SealedFile(path) as sealed, pytest.raises(HeaderAuthError):
            sealed.unlock(keys).verify()
