"""Generate the sealed-format v2 known-answer vectors in tests/vectors/format/v2/.

Each scenario is a ``<name>.wvlt`` file and a ``<name>.json`` description with
its expected outcome (the ``expect`` class) and, for successes, the SHA-256 of
every tensor's plaintext. Everything is deterministic: fixed keys, file ids and
stanza salts. Files are built by an independent reference writer over
:mod:`weightvault.format.hazmat`; for the valid scenarios the library writer,
given the same ids, must produce the very same bytes.

Usage: ``python tests/vectors/format/generate.py [--check]``. With ``--check``
nothing is written and the exit status is 1 if any file would change: CI runs
this to catch drift in the format.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "src"))

from weightvault.crypto.aead import AEADSuite, seal_single_use  # noqa: E402
from weightvault.crypto.mac import hmac_sha256  # noqa: E402
from weightvault.encoding import canonical_json  # noqa: E402
from weightvault.format import FileKey, Flags, HeaderKind, HeaderTable, Preamble  # noqa: E402
from weightvault.format.dtypes import DTYPES  # noqa: E402
from weightvault.format.hazmat import TensorStream, derive_header_keys, header_digest, tensor_commitment, unlock  # noqa: E402
from weightvault.format.header import TensorEntry, canonical_offsets  # noqa: E402
from weightvault.format.recipients import KEK, Stanza, encode_recipients_region  # noqa: E402

OUT = Path(__file__).resolve().parent / "v2"
FILE_KEY = bytes(range(0x40, 0x60))
KEK_BYTES = bytes(range(0x80, 0xA0))
OTHER_KEK_BYTES = bytes(range(0xA0, 0xC0))
SALT = bytes(range(0x10, 0x30))
RECIPIENTS_LEN = 8064
CHUNK_LOG2 = 16


@dataclass
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes


def _pattern(n: int, seed: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(struct.pack(">II", seed, counter)).digest()
        counter += 1
    return bytes(out[:n])


def plain_safetensors(tensors: list[Tensor], metadata: dict[str, str]) -> bytes:
    """A plain safetensors file, written here so that vectors do not depend on a library version."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(t.data)]}
        offset += len(t.data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(t.data for t in tensors)


BASIC = [
    Tensor("embed.weight", "F32", (16, 8), _pattern(512, 1)),
    Tensor("embed.bias", "BF16", (8,), _pattern(16, 2)),
    Tensor("flags", "BOOL", (5,), bytes([1, 0, 1, 1, 0])),
]
EDGE = [
    Tensor("scalar", "F64", (), _pattern(8, 3)),
    Tensor("empty", "F16", (0, 3), b""),
    Tensor("fp8", "F8_E4M3", (4, 4), _pattern(16, 4)),
]
MULTI = [Tensor("big", "U8", (65536 + 100,), _pattern(65636, 5)), Tensor("tail", "I32", (3,), _pattern(12, 6))]


@dataclass
class Scenario:
    name: str
    description: str
    tensors: list[Tensor]
    expect: str
    suite: AEADSuite = AEADSuite.AES_256_GCM
    sealed_metadata: bool = False
    metadata: dict[str, str] = field(default_factory=lambda: {"format": "pt"})
    file_id_seed: int = 1
    open_with_kek: bytes = KEK_BYTES
    open_with_file_key: bytes = FILE_KEY
    header_mutator: Callable[[dict[str, object]], None] | None = None
    byte_mutator: Callable[[bytearray, Preamble], bytearray] | None = None


def reference_seal(s: Scenario) -> tuple[bytes, bytes]:
    """Build the sealed file for ``s``; returns (file bytes, the plain safetensors it seals)."""
    fk = FileKey(FILE_KEY)
    file_id = hashlib.sha256(b"file-id %d" % s.file_id_seed).digest()
    plain = plain_safetensors(s.tensors, s.metadata)
    (hlen,) = struct.unpack("<Q", plain[:8])
    source_header = plain[8 : 8 + hlen].decode()
    hkeys = derive_header_keys(fk.header_secret(file_id))
    grant = fk.tensor_keys(file_id, range(len(s.tensors)))
    keys = unlock(grant, file_id, hkeys.commitment)
    offsets, data_len = canonical_offsets([len(t.data) for t in s.tensors])
    entries = tuple(
        TensorEntry(
            i, t.name, DTYPES[t.dtype], t.shape, offsets[i], len(t.data), tensor_commitment(keys.tensor_secret(i))
        )
        for i, t in enumerate(s.tensors)
    )
    table = HeaderTable(HeaderKind.SAFETENSORS, entries, s.metadata, source_header)
    doc = json.loads(table.to_bytes())
    if s.header_mutator is not None:
        s.header_mutator(doc)
    header_json = canonical_json(doc)
    chunks = sum(max(1, -(-len(t.data) >> CHUNK_LOG2)) for t in s.tensors)
    p = Preamble(
        suite=s.suite,
        flags=Flags.SEALED_METADATA if s.sealed_metadata else Flags.NONE,
        file_id=file_id,
        key_commitment=hkeys.commitment,
        chunk_log2=CHUNK_LOG2,
        header_len=len(header_json) + (16 if s.sealed_metadata else 0),
        tags_len=16 * chunks,
        data_len=data_len,
        recipients_len=RECIPIENTS_LEN,
    )
    core = p.authenticated_core()
    stored = seal_single_use(s.suite, hkeys.metadata_key, header_json, core) if s.sealed_metadata else header_json
    digest = header_digest(core, stored)
    out = bytearray(p.file_size)
    out[:128] = p.to_bytes()
    context = p.stanza_context()
    stanza = KEK(KEK_BYTES)._wrap_from_parts(fk, context, SALT)
    out[128 : 128 + RECIPIENTS_LEN] = encode_recipients_region(
        [stanza], RECIPIENTS_LEN, hkeys.recipients_mac_key, p.recipients_mac_context()
    )
    out[p.header_offset : p.header_offset + len(stored)] = stored
    tags = bytearray()
    for e, t in zip(entries, s.tensors, strict=True):
        stream = TensorStream.create(
            s.suite,
            keys.tensor_aead_key(e.index),
            file_id=file_id,
            header_digest=digest,
            tensor_index=e.index,
            name=e.name,
            nbytes=e.nbytes,
            chunk_log2=CHUNK_LOG2,
        )
        for j in range(stream.count):
            c0, c1 = stream.chunk_bounds(j)
            buf = bytearray(c1 - c0 + 16)
            stream.encrypt_chunk_into(j, memoryview(t.data)[c0:c1], memoryview(buf))
            at = p.data_offset + e.offset + c0
            out[at : at + c1 - c0] = buf[: c1 - c0]
            tags += buf[c1 - c0 :]
    out[p.tags_offset : p.mac_offset] = tags
    out[p.mac_offset : p.mac_offset + 32] = hmac_sha256(hkeys.mac_key, [core, stored, bytes(tags)])
    if s.byte_mutator is not None:
        out = s.byte_mutator(out, p)
    return bytes(out), plain


def _flip(offset_of: Callable[[Preamble], int]) -> Callable[[bytearray, Preamble], bytearray]:
    def mutate(data: bytearray, p: Preamble) -> bytearray:
        data[offset_of(p)] ^= 0x01
        return data

    return mutate


def _swap_chunks(data: bytearray, p: Preamble) -> bytearray:
    a = p.data_offset
    chunk = 1 << CHUNK_LOG2
    first, second = bytes(data[a : a + 100]), bytes(data[a + chunk : a + chunk + 100])
    data[a : a + 100], data[a + chunk : a + chunk + 100] = second, first
    return data


def _grow_recipients_region(data: bytearray, p: Preamble) -> bytearray:
    """The keyless edit version 1 allowed: R grows by 4096 and zeros fill the gap, moving everything after it."""
    grown = bytearray(data[:128]) + data[128 : p.header_offset] + bytes(4096) + data[p.header_offset :]
    grown[112:120] = struct.pack("<Q", p.recipients_len + 4096)
    return grown


def _shift_header_into_padding(data: bytearray, p: Preamble) -> bytearray:
    """R grows by 16 and the header, tags and MAC move 16 bytes into the padding: same size, same data offset."""
    shift = 16
    assert p.mac_offset + 32 + shift <= p.data_offset
    moved = bytes(data[p.header_offset : p.mac_offset + 32])
    data[p.header_offset : p.header_offset + shift] = bytes(shift)
    data[p.header_offset + shift : p.mac_offset + 32 + shift] = moved
    data[112:120] = struct.pack("<Q", p.recipients_len + shift)
    return data


def _overflow_shape(doc: dict[str, object]) -> None:
    tensors = doc["tensors"]
    assert isinstance(tensors, list)
    tensors[0]["shape"] = [2**31, 2**31, 2**31]


def _set(offset: int, fmt: str, value: int) -> Callable[[bytearray, Preamble], bytearray]:
    def mutate(data: bytearray, p: Preamble) -> bytearray:
        data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
        return data

    return mutate


SCENARIOS = [
    Scenario("aes-public-valid", "AES-256-GCM, public table", BASIC, "success"),
    Scenario(
        "chacha-sealed-metadata-valid",
        "ChaCha20-Poly1305 with a sealed table",
        BASIC,
        "success",
        suite=AEADSuite.CHACHA20_POLY1305,
        sealed_metadata=True,
        file_id_seed=2,
    ),
    Scenario("edge-dtypes-valid", "0-d, empty and fp8 tensors", EDGE, "success", file_id_seed=3, metadata={}),
    Scenario("multi-chunk-valid", "a tensor of two 64 KiB chunks", MULTI, "success", file_id_seed=4),
    Scenario("no-tensors-valid", "a safetensors file with no tensors", [], "success", file_id_seed=5),
    Scenario(
        "flipped-data-byte",
        "one bit flipped in the first tensor's ciphertext",
        BASIC,
        "payload_failure",
        byte_mutator=_flip(lambda p: p.data_offset + 3),
    ),
    Scenario(
        "flipped-header-byte",
        "one bit flipped in the header JSON",
        BASIC,
        "header_auth_failure",
        byte_mutator=_flip(lambda p: p.header_offset + 40),
    ),
    Scenario(
        "flipped-tag",
        "one bit flipped in the tag table",
        BASIC,
        "header_auth_failure",
        byte_mutator=_flip(lambda p: p.tags_offset + 7),
    ),
    Scenario(
        "flipped-stanza",
        "one bit flipped in the recipient stanza",
        BASIC,
        "no_matching_recipient",
        byte_mutator=_flip(lambda p: 128 + 60),
    ),
    Scenario(
        "truncated-data",
        "the last byte of the data area removed",
        BASIC,
        "payload_failure",
        byte_mutator=lambda d, p: d[:-1],
    ),
    Scenario(
        "appended-byte",
        "one zero byte after the data area",
        BASIC,
        "payload_failure",
        byte_mutator=lambda d, p: d + b"\x00",
    ),
    Scenario(
        "swapped-chunk-prefixes",
        "bytes exchanged between chunk 0 and chunk 1",
        MULTI,
        "payload_failure",
        file_id_seed=4,
        byte_mutator=_swap_chunks,
    ),
    Scenario(
        "wrong-key",
        "a valid file opened with another file key and another KEK",
        BASIC,
        "key_mismatch",
        open_with_kek=OTHER_KEK_BYTES,
        open_with_file_key=bytes(range(0x60, 0x80)),
    ),
    Scenario(
        "reserved-nonzero",
        "the reserved word at offset 84 is 1",
        BASIC,
        "header_failure",
        byte_mutator=_set(84, "<I", 1),
    ),
    Scenario("version-3", "format version 3", BASIC, "header_failure", byte_mutator=_set(8, "<H", 3)),
    Scenario(
        "version-1",
        "format version 1 (retired: its recipients_len was unauthenticated)",
        BASIC,
        "header_failure",
        byte_mutator=_set(8, "<H", 1),
    ),
    Scenario(
        "recipients-region-grown",
        "recipients_len grown by 4096 with 4096 zero bytes inserted after the region",
        BASIC,
        "header_auth_failure",
        byte_mutator=_grow_recipients_region,
    ),
    Scenario(
        "header-shifted-into-padding",
        "recipients_len grown by 16 and the header, tags and MAC moved 16 bytes into the padding",
        BASIC,
        "header_auth_failure",
        byte_mutator=_shift_header_into_padding,
    ),
    Scenario(
        "recipients-len-flipped",
        "one bit flipped in recipients_len",
        BASIC,
        "header_failure",
        byte_mutator=_flip(lambda p: 112),
    ),
    Scenario(
        "unknown-critical-field",
        "an authenticated header naming an unknown critical extension",
        BASIC,
        "header_failure",
        header_mutator=lambda d: d.update({"crit": ["x-unknown"], "x-unknown": 1}),
    ),
    Scenario(
        "shape-overflow",
        "an authenticated header whose shape overflows 2**53 bytes",
        BASIC,
        "header_failure",
        header_mutator=_overflow_shape,
    ),
    Scenario("huge-header-length", "header_len of 2**63", BASIC, "header_failure", byte_mutator=_set(88, "<Q", 2**63)),
]


def _expected(s: Scenario, plain: bytes) -> dict[str, object]:
    doc: dict[str, object] = {
        "scenario": s.name,
        "description": s.description,
        "expect": s.expect,
        "file_key": s.open_with_file_key.hex(),
        "kek": s.open_with_kek.hex(),
    }
    if s.expect == "success":
        doc["tensors"] = {t.name: hashlib.sha256(t.data).hexdigest() for t in s.tensors}
        doc["unsealed_sha256"] = hashlib.sha256(plain).hexdigest()
    return doc


def _library_matches(s: Scenario, expected: bytes, plain: bytes) -> None:
    """The library writer, given the same id, key and salt, writes the same bytes."""
    from weightvault.sealing.safetensors_source import read_safetensors_source
    from weightvault.sealing.writer import SealOptions, _seal, _Source

    class FixedSalt:
        def wrap(self, file_key: FileKey, context: bytes) -> Stanza:
            return KEK(KEK_BYTES)._wrap_from_parts(file_key, context, SALT)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "p.safetensors", Path(tmp) / "s.wvlt"
        src.write_bytes(plain)
        source = read_safetensors_source(src)
        _seal(
            src=src,
            dst=dst,
            kind=HeaderKind.SAFETENSORS,
            sources=[_Source(t.spec, source.data_start + t.begin) for t in source.tensors],
            metadata=source.metadata,
            safetensors_header=source.header_text,
            file_key=FileKey(FILE_KEY),
            recipients=[FixedSalt()],
            options=SealOptions(s.suite, CHUNK_LOG2, s.sealed_metadata),
            overwrite=False,
            progress=None,
            _file_id=hashlib.sha256(b"file-id %d" % s.file_id_seed).digest(),
        )
        if dst.read_bytes() != expected:
            raise SystemExit(f"{s.name}: the library writer disagrees with the reference writer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if any vector would change; write nothing")
    args = parser.parse_args()
    drift = []
    wanted: set[str] = set()
    for s in SCENARIOS:
        data, plain = reference_seal(s)
        if s.expect == "success":
            _library_matches(s, data, plain)
        files = {f"{s.name}.wvlt": data, f"{s.name}.json": json.dumps(_expected(s, plain), indent=2).encode() + b"\n"}
        for name, content in files.items():
            wanted.add(name)
            path = OUT / name
            if not path.exists() or path.read_bytes() != content:
                drift.append(name)
                if not args.check:
                    OUT.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(content)
    stale = sorted(p.name for p in OUT.glob("*") if p.name not in wanted) if OUT.exists() else []
    if args.check:
        if drift or stale:
            print(f"format vectors drifted: {sorted(drift)} stale: {stale}", file=sys.stderr)
            return 1
        print(f"format vectors up to date ({len(SCENARIOS)} scenarios)")
        return 0
    for name in stale:
        (OUT / name).unlink()
    print(f"wrote {len(drift)} file(s), removed {len(stale)}, {len(SCENARIOS)} scenarios")
    return 0


if __name__ == "__main__":
    sys.exit(main())
