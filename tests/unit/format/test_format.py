"""The pure format codec: preamble, header table, stream nonces, key schedule and recipients region."""

from __future__ import annotations

import json

import pytest

from weightvault.crypto.aead import AEADSuite
from weightvault.errors import HeaderAuthError, HeaderError, KeyMismatchError, UnsupportedError
from weightvault.format import FileKey, Flags, HeaderKind, HeaderTable, Preamble, TensorKeys
from weightvault.format.dtypes import DTYPES, dtype_from_name
from weightvault.format.hazmat import chunk_aad, chunk_count, chunk_nonce, unlock
from weightvault.format.header import TensorEntry
from weightvault.format.recipients import KEK, Stanza, decode_recipients_region, encode_recipients_region


def _preamble(**changes: object) -> Preamble:
    fields: dict[str, object] = {
        "suite": AEADSuite.AES_256_GCM,
        "flags": Flags.NONE,
        "file_id": b"\x01" * 32,
        "key_commitment": b"\x02" * 32,
        "chunk_log2": 20,
        "header_len": 100,
        "tags_len": 32,
        "data_len": 5000,
        "recipients_len": 4000,
    }
    fields.update(changes)
    return Preamble(**fields)  # type: ignore[arg-type]


def test_preamble_round_trip_and_layout() -> None:
    """A preamble serialises to 128 bytes and parses back; regions follow each other in order."""
    p = _preamble()
    raw = p.to_bytes()
    assert 128 == len(raw)
    assert b"\x89WVLT\r\n\x1a" == raw[:8]
    assert p == Preamble.from_bytes(raw)
    assert p.header_offset == 128 + 4000
    assert p.tags_offset == p.header_offset + 100
    assert p.mac_offset == p.tags_offset + 32
    assert 0 == p.data_offset % 4096
    assert p.data_offset >= p.mac_offset + 32
    assert p.file_size == p.data_offset + 5000


def test_preamble_authenticated_core_excludes_recipients_length() -> None:
    """Changing the recipients region's size does not change the authenticated core."""
    assert _preamble().authenticated_core() == _preamble(recipients_len=8000).authenticated_core()
    assert _preamble().authenticated_core() != _preamble(chunk_log2=16).authenticated_core()
    assert _preamble().stanza_context() == _preamble(header_len=200).stanza_context()


def test_preamble_rejects_zero_file_id() -> None:
    """An all-zero file id points at a broken random source and is refused."""
    with pytest.raises(HeaderError, match="all-zero"):
        _preamble(file_id=bytes(32))


def test_preamble_parse_errors() -> None:
    """Bad magic, unknown version and suite are distinct errors."""
    raw = bytearray(_preamble().to_bytes())
    with pytest.raises(HeaderError, match="magic"):
        Preamble.from_bytes(b"\x00" + raw[1:])
    raw[8] = 3
    with pytest.raises(UnsupportedError, match="version"):
        Preamble.from_bytes(raw)
    raw[8] = 1
    with pytest.raises(UnsupportedError, match="version 1 is no longer read"):
        Preamble.from_bytes(raw)
    with pytest.raises(HeaderError, match="shorter"):
        Preamble.from_bytes(raw[:50])


def test_chunk_nonce_and_aad_layout() -> None:
    """Nonces are be64(index) ‖ final ‖ 000000; the AAD is 88 bytes with the documented fields."""
    assert bytes.fromhex("000000000000000500" + "000000") == chunk_nonce(5, final=False)
    assert bytes.fromhex("000000000000000701" + "000000") == chunk_nonce(7, final=True)
    aad = chunk_aad(b"F" * 32, b"H" * 32, 3, 4, 1000)
    assert 88 == len(aad)
    assert b"wv1\x00" + b"F" * 32 + b"H" * 32 == aad[:68]
    assert bytes.fromhex("00000003000000000000000400000000000003e8") == aad[68:]


def test_chunk_count() -> None:
    """An empty tensor has one chunk; only whole chunks plus one partial are counted."""
    assert 1 == chunk_count(0, 16)
    assert 1 == chunk_count(65536, 16)
    assert 2 == chunk_count(65537, 16)


def _entry(index: int, name: str, shape: tuple[int, ...], offset: int, dtype: str = "F32") -> TensorEntry:
    d = DTYPES[dtype]
    n = d.itemsize
    for s in shape:
        n *= s
    return TensorEntry(index, name, d, shape, offset, n, b"\x00" * 32)


def test_header_round_trip_is_canonical() -> None:
    """Serialising a table gives RFC 8785 JSON that parses back to the same table."""
    table = HeaderTable(
        kind=HeaderKind.SAFETENSORS,
        tensors=(_entry(0, "a", (3, 5), 0), _entry(1, "b", (), 4096), _entry(2, "c", (0,), 8192)),
        metadata={"k": "v"},
        safetensors_header="{}",
    )
    raw = table.to_bytes()
    assert table == HeaderTable.from_bytes(raw)
    doc = json.loads(raw)
    assert raw == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert 8192 == table.data_len


def test_header_offsets_must_be_canonical() -> None:
    """A table whose offsets leave a hole or overlap is not constructible."""
    with pytest.raises(HeaderError, match="canonical"):
        HeaderTable(HeaderKind.BLOB, (_entry(0, "a", (10,), 4096, "U8"),), {})


def test_dtype_allow_list() -> None:
    """Known dtypes resolve; sub-byte and unknown names are unsupported."""
    assert 2 == dtype_from_name("BF16").itemsize
    for name in ("F4", "object", 3):
        with pytest.raises(UnsupportedError):
            dtype_from_name(name)


def test_key_schedule_commitment_and_partial_grants() -> None:
    """FK and a partial grant unlock the same keys; other keys or files fail the commitment."""
    fk = FileKey(bytes(range(32)))
    file_id = b"\x07" * 32
    full = unlock(fk, file_id, _commitment(fk, file_id))
    grant = fk.tensor_keys(file_id, [1])
    partial = unlock(grant, file_id, _commitment(fk, file_id))
    assert full.header.mac_key == partial.header.mac_key
    assert full.tensor_aead_key(1) == partial.tensor_aead_key(1)
    assert full.tensor_aead_key(0) != full.tensor_aead_key(1)
    assert partial.is_partial
    assert not partial.has_tensor(0)
    with pytest.raises(KeyMismatchError):
        unlock(FileKey(bytes(range(1, 33))), file_id, _commitment(fk, file_id))
    with pytest.raises(KeyMismatchError, match="another file"):
        unlock(grant, b"\x08" * 32, _commitment(fk, file_id))


def _commitment(fk: FileKey, file_id: bytes) -> bytes:
    from weightvault.format.hazmat import derive_header_keys

    return derive_header_keys(fk.header_secret(file_id)).commitment


def test_tensor_keys_validate_and_redact() -> None:
    """Grants refuse wrong-sized secrets and never print them."""
    with pytest.raises(ValueError):
        TensorKeys(b"\x01" * 32, b"short", {})
    grant = TensorKeys(b"\x01" * 32, b"\x02" * 32, {0: b"\x03" * 32})
    assert "0202" not in repr(grant)
    assert frozenset({0}) == grant.indices


def test_file_keys_refuse_zero_and_print_nothing() -> None:
    """An all-zero file key is refused; repr never shows a key."""
    with pytest.raises(ValueError):
        FileKey(bytes(32))
    assert "redacted" in repr(FileKey.generate())


def test_recipients_region_round_trip_and_authentication() -> None:
    """A region decodes to its stanzas, its MAC verifies, and any edit is caught."""
    context = b"c" * 128
    mac_key = b"m" * 32
    stanzas = [Stanza("kek", {"kid": "ab", "salt": "AA==", "wrapped": "AA=="}), Stanza("x-other", {"n": 3})]
    region = encode_recipients_region(stanzas, 1024, mac_key, context)
    assert 1024 == len(region)
    parsed = decode_recipients_region(region)
    assert tuple(stanzas) == parsed.stanzas
    parsed.verify(mac_key, context)
    with pytest.raises(HeaderAuthError):
        parsed.verify(mac_key, b"d" * 128)
    edited = bytearray(region)
    edited[10] ^= 1
    with pytest.raises((HeaderAuthError, HeaderError)):
        decode_recipients_region(edited).verify(mac_key, context)
    with pytest.raises(ValueError):
        encode_recipients_region(stanzas, 40, mac_key, context)


@pytest.mark.parametrize(
    "body",
    [b"{}", b'[{"kid": "x"}]', b'[{"type": ""}]', b'[{"type": "k", "v": 1.5}]', b'[{"type": "k", "v": true}]'],
)
def test_recipients_region_rejects_malformed_stanzas(body: bytes) -> None:
    """Stanzas must be objects with a non-empty type and string or integer fields."""
    region = len(body).to_bytes(4, "little") + body + b"\x00" * 64
    with pytest.raises(HeaderError):
        decode_recipients_region(region)


def test_recipients_region_rejects_nonzero_fill() -> None:
    """Bytes after the stanzas and MAC must be zero (no hidden content)."""
    region = bytearray(encode_recipients_region([], 256, b"m" * 32, b"c" * 128))
    region[-1] = 1
    with pytest.raises(HeaderError, match="fill"):
        decode_recipients_region(region)


def test_kek_stanza_is_bound_to_its_file() -> None:
    """A KEK stanza opens for its own context only."""
    kek = KEK(b"k" * 32)
    fk = FileKey.generate()
    stanza = kek.wrap(fk, b"a" * 80)
    assert fk == kek.unwrap(stanza, b"a" * 80)
    assert kek.unwrap(stanza, b"b" * 80) is None
    assert KEK(b"j" * 32).unwrap(stanza, b"a" * 80) is None
