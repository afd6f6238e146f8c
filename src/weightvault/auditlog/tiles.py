"""Static tiles (C2SP tlog-tiles): export a log for auditors, and verify an export offline.

An export is a directory, or a tar archive of one, holding ``checkpoint``, every
full and partial tile ``tile/<L>/<N>[.p/<W>]`` and every entry bundle
``tile/entries/<N>[.p/<W>]`` for the checkpoint's size. Verification needs only
the export, the log key and a witness policy: it checks the checkpoint, hashes
every entry into its level-0 tile, rebuilds every higher tile from the one below,
recomputes the root from the tiles, and compares it with the checkpoint.
"""

from __future__ import annotations

import io
import re
import struct
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from weightvault.auditlog.checkpoint import Checkpoint, VerifiedCheckpoint, verify_checkpoint
from weightvault.auditlog.log import LogReader
from weightvault.auditlog.merkle import (
    EMPTY_ROOT,
    HASH_BYTES,
    MAX_ENTRY_BYTES,
    TILE_HEIGHT,
    TILE_WIDTH,
    TileCoord,
    leaf_hash,
    root_from_leaf_hashes,
    tile_path,
    tiles_for_size,
)
from weightvault.auditlog.note import Note, NoteVerifier, parse_note
from weightvault.auditlog.policy import WitnessPolicy
from weightvault.auditlog.storage import LogStore
from weightvault.errors import AuditLogError, InclusionProofError
from weightvault.files import atomic_file

__all__ = [
    "TileExport",
    "export_tiles",
    "parse_entry_bundle",
    "read_export",
    "tile_resource",
    "verify_export",
    "verify_export_path",
    "write_tarball",
]


def export_tiles(storage: LogStore, checkpoint: Note) -> dict[str, bytes]:
    """Every resource of the tiles API for ``checkpoint``, as path -> bytes."""
    cp = Checkpoint.from_text(checkpoint.text)
    files: dict[str, bytes] = {"checkpoint": checkpoint.to_text().encode()}
    for tile in tiles_for_size(cp.size):
        level = tile.level * TILE_HEIGHT
        start = tile.index * TILE_WIDTH
        files[tile.path] = b"".join(storage.nodes(level, start, start + tile.width))
        if tile.level == 0:
            bundle = bytearray()
            for stored in storage.entries(start, start + tile.width):
                if len(stored.data) > MAX_ENTRY_BYTES:
                    raise AuditLogError("entry too large for an entry bundle")
                bundle += struct.pack(">H", len(stored.data)) + stored.data
            files[tile_path("entries", tile.index, tile.width)] = bytes(bundle)
    return files


def write_tarball(files: dict[str, bytes], out: Path, *, overwrite: bool = True) -> None:
    """Write an export as a tar.gz atomically (nothing is left behind if it fails or is killed)."""
    with atomic_file(Path(out), overwrite=overwrite) as handle, tarfile.open(fileobj=handle, mode="w:gz") as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mtime = 0
            tar.addfile(info, io.BytesIO(files[name]))


def read_export(source: Path) -> dict[str, bytes]:
    """Load an export from a directory or a tar archive (regular files only, no links)."""
    source = Path(source)
    files: dict[str, bytes] = {}
    if source.is_dir():
        for path in source.rglob("*"):
            if path.is_file() and not path.is_symlink():
                files[path.relative_to(source).as_posix()] = path.read_bytes()
        return files
    with tarfile.open(source, "r:*") as tar:
        for member in tar.getmembers():
            if not member.isfile() or member.name.startswith("/") or ".." in member.name.split("/"):
                continue
            extracted = tar.extractfile(member)
            if extracted is not None:
                files[member.name] = extracted.read()
    return files


@dataclass(frozen=True, slots=True)
class TileExport:
    """A verified export: its checkpoint and every entry in order."""

    checkpoint: VerifiedCheckpoint
    entries: tuple[bytes, ...]


def _hashes(data: bytes, width: int, path: str) -> list[bytes]:
    if len(data) != width * HASH_BYTES:
        raise InclusionProofError(f"{path} has {len(data)} bytes, expected {width * HASH_BYTES}")
    return [data[i : i + HASH_BYTES] for i in range(0, len(data), HASH_BYTES)]


def _bundle(data: bytes, width: int, path: str) -> Iterator[bytes]:
    at = 0
    for _ in range(width):
        if at + 2 > len(data):
            raise InclusionProofError(f"{path} is truncated")
        (n,) = struct.unpack(">H", data[at : at + 2])
        if at + 2 + n > len(data):
            raise InclusionProofError(f"{path} is truncated")
        yield data[at + 2 : at + 2 + n]
        at += 2 + n
    if at != len(data):
        raise InclusionProofError(f"{path} has trailing bytes")


def parse_entry_bundle(data: bytes, width: int, path: str) -> list[bytes]:
    """The ``width`` entries of an entry bundle (big-endian u16 length, then the entry, each).

    Raises:
        InclusionProofError: the bundle is truncated or has trailing bytes.
    """
    return list(_bundle(data, width, path))


def verify_export(
    files: dict[str, bytes], log: NoteVerifier, policy: WitnessPolicy, *, now: int, max_age_seconds: int | None = None
) -> TileExport:
    """Verify a tiles export completely, offline.

    Raises:
        CheckpointError: the checkpoint fails its signature or witness quorum.
        InclusionProofError: a tile or bundle is missing, malformed, or does not hash to the checkpoint root.
    """
    if "checkpoint" not in files:
        raise InclusionProofError("export has no checkpoint")
    verified = verify_checkpoint(parse_note(files["checkpoint"]), log, policy, now=now, max_age_seconds=max_age_seconds)
    size = verified.checkpoint.size
    coords = tiles_for_size(size)
    levels: dict[int, list[TileCoord]] = {}
    for coord in coords:
        levels.setdefault(coord.level, []).append(coord)
    entries: list[bytes] = []
    # Level 0: entries hash to leaves.
    level_hashes: dict[int, list[bytes]] = {}
    for coord in levels.get(0, []):
        tile = files.get(coord.path)
        bundle = files.get(tile_path("entries", coord.index, coord.width))
        if tile is None or bundle is None:
            raise InclusionProofError(f"export lacks {coord.path} or its entry bundle")
        hashes = _hashes(tile, coord.width, coord.path)
        for i, entry in enumerate(_bundle(bundle, coord.width, coord.path)):
            if leaf_hash(entry) != hashes[i]:
                raise InclusionProofError(f"entry {coord.index * TILE_WIDTH + i} does not match its leaf hash")
            entries.append(entry)
        level_hashes.setdefault(0, []).extend(hashes)
    # Higher levels: each hash is the root of a full tile below.
    for level in sorted(levels)[1:]:
        below = level_hashes[level - 1]
        for coord in levels[level]:
            tile = files.get(coord.path)
            if tile is None:
                raise InclusionProofError(f"export lacks {coord.path}")
            hashes = _hashes(tile, coord.width, coord.path)
            for i, h in enumerate(hashes):
                start = (coord.index * TILE_WIDTH + i) * TILE_WIDTH
                if root_from_leaf_hashes(below[start : start + TILE_WIDTH]) != h:
                    raise InclusionProofError(f"{coord.path} hash {i} does not match the tile below")
            level_hashes.setdefault(level, []).extend(hashes)
    root = _root_from_tiles(level_hashes, size)
    if root != verified.checkpoint.root:
        raise InclusionProofError("tiles do not hash to the checkpoint root")
    return TileExport(verified, tuple(entries))


def _root_from_tiles(level_hashes: dict[int, list[bytes]], size: int) -> bytes:
    """The root of a tree of ``size`` leaves from its tile hashes (all leaves are at level 0)."""
    if size == 0:
        return EMPTY_ROOT
    return root_from_leaf_hashes(level_hashes[0][:size])


def verify_export_path(
    source: Path, log: NoteVerifier, policy: WitnessPolicy, *, clock: Callable[[], float]
) -> TileExport:
    return verify_export(read_export(source), log, policy, now=int(clock()))


_TILE_PATH: Final = re.compile(r"tile/(entries|[0-9]|[1-5][0-9]|6[0-3])/((?:x\d{3}/)*\d{3})(?:\.p/(\d{1,3}))?")


def tile_resource(log: LogReader, path: str) -> tuple[int, bytes, str]:
    """Status, body and content type for a tiles API path (``checkpoint`` or ``tile/...``).

    ``checkpoint`` is the newest published checkpoint, with its witness
    cosignatures. A tile is served whenever the committed log covers it: full
    tiles once full, and a partial tile of width W for *every* W up to what is
    committed, not only the current right edge. A client holding an older
    checkpoint asks for the partial tiles of its own size, and tiles only ever
    grow by appending, so those are prefixes of what is stored (tlog-tiles: logs
    MUST serve partial tiles for every published size).
    """
    if path == "checkpoint":
        return 200, log.served_checkpoint().to_text().encode(), "text/plain; charset=utf-8"
    body = _tile(log, path)
    if body is None:
        return 404, b"not found\n", "text/plain"
    return 200, body, "application/octet-stream"


def _tile(log: LogReader, path: str) -> bytes | None:
    match = _TILE_PATH.fullmatch(path)
    if match is None:
        return None
    level_text, index_text, width_text = match.groups()
    index = int(index_text.replace("x", "").replace("/", ""))
    width = int(width_text) if width_text else TILE_WIDTH
    if not 1 <= width <= TILE_WIDTH or (width_text is not None and width == TILE_WIDTH):
        return None
    level = 0 if level_text == "entries" else int(level_text)
    if log.size // TILE_WIDTH**level - index * TILE_WIDTH < width:
        return None
    start = index * TILE_WIDTH
    try:
        if level_text == "entries":
            # Events are capped at MAX_ENTRY_BYTES when appended, so every stored entry fits its u16 frame.
            return b"".join(struct.pack(">H", len(e.data)) + e.data for e in log.storage.entries(start, start + width))
        return b"".join(log.storage.nodes(level * TILE_HEIGHT, start, start + width))
    except AuditLogError:
        return None
