"""RFC 6962 / RFC 9162 Merkle trees: hashing, proofs and tile arithmetic. Pure: no I/O.

Hashes are SHA-256. A leaf hash is ``SHA-256(0x00 ‖ data)`` and an interior node is
``SHA-256(0x01 ‖ left ‖ right)``; the domain-separation bytes stop a leaf from being
presented as an interior node (second preimages). The root of the empty tree is
``SHA-256("")``.

Proof generation reads hashes of *perfect* subtrees through a :class:`NodeSource`
(level ℓ, index i covers leaves [i·2^ℓ, (i+1)·2^ℓ)); every other subtree hash is
computed from those. Verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2 and
rejects hashes that are not 32 bytes, wrong proof lengths and out-of-range indices.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from weightvault.errors import ConsistencyError, InclusionProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_BYTES",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "CompactRange",
    "NodeSource",
    "TileCoord",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_hash",
    "root_from_leaf_hashes",
    "tile_path",
    "tiles_for_size",
    "verify_consistency",
    "verify_inclusion",
]

HASH_BYTES: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
TILE_HEIGHT: Final = 8
TILE_WIDTH: Final = 1 << TILE_HEIGHT
#: The largest entry tlog-tiles can carry: entry bundles frame each entry with a big-endian u16 length.
MAX_ENTRY_BYTES: Final = 0xFFFF
_MAX_SIZE: Final = 1 << 63


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash."""
    return hashlib.sha256(b"\x01" + left + right).digest()


class NodeSource(Protocol):
    """Read access to hashes of perfect subtrees of a tree."""

    def node(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree at ``level`` covering leaves [index·2^level, (index+1)·2^level)."""
        ...


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n ≥ 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def range_hash(source: NodeSource, lo: int, hi: int) -> bytes:
    """MTH of leaves [lo, hi), where ``lo`` is aligned as RFC 6962's recursion guarantees."""
    n = hi - lo
    if n <= 0:
        raise ValueError("empty range")
    if n & (n - 1) == 0 and lo % n == 0:
        return source.node(n.bit_length() - 1, lo // n)
    k = _split(n)
    return node_hash(range_hash(source, lo, lo + k), range_hash(source, lo + k, hi))


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes (reference implementation, used in tests and small trees)."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_proof(source: NodeSource, index: int, size: int) -> list[bytes]:
    """The RFC 6962 audit path of leaf ``index`` in the tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise ValueError("leaf index outside the tree")
    proof: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            proof.append(range_hash(source, lo + k, hi))
            hi = lo + k
        else:
            proof.append(range_hash(source, lo, lo + k))
            lo = lo + k
    proof.reverse()
    return proof


def consistency_proof(source: NodeSource, old_size: int, new_size: int) -> list[bytes]:
    """The RFC 6962 consistency proof from ``old_size`` to ``new_size`` (0 < old ≤ new)."""
    if not 0 < old_size <= new_size:
        raise ValueError("consistency proofs need 0 < old_size <= new_size")
    proof: list[bytes] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                proof.append(range_hash(source, lo, hi))
            break
        k = _split(n)
        if m <= k:
            proof.append(range_hash(source, lo + k, hi))
            hi = lo + k
        else:
            proof.append(range_hash(source, lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    proof.reverse()
    return proof


def _check_hash(value: bytes, what: str, error: type[Exception]) -> None:
    if len(value) != HASH_BYTES:
        raise error(f"{what} is not a 32-byte hash")


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``proof`` takes ``leaf`` (a leaf hash) at ``index`` to ``root`` in a tree of ``size``.

    Raises:
        InclusionProofError: malformed input, a proof of the wrong length, or a root mismatch.
    """
    if not 0 <= index < size < _MAX_SIZE:
        raise InclusionProofError("leaf index outside the tree")
    _check_hash(leaf, "leaf hash", InclusionProofError)
    _check_hash(root, "root", InclusionProofError)
    for h in proof:
        _check_hash(h, "proof element", InclusionProofError)
    # RFC 9162 2.1.3.2: walk up from the leaf, consuming one proof hash per level.
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise InclusionProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InclusionProofError("inclusion proof is too short")
    if not hmac.compare_digest(r, root):
        raise InclusionProofError("inclusion proof does not lead to the root")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """Check that the tree (old_size, old_root) is a prefix of (new_size, new_root).

    ``old_size`` 0 is always an error here (RFC 9162 defines no proof from the empty
    tree); callers that accept the empty tree handle it before calling. Equal sizes
    need an empty proof and equal roots.

    Raises:
        ConsistencyError: malformed input, a proof of the wrong length, or a root mismatch.
    """
    if not 0 < old_size <= new_size < _MAX_SIZE:
        raise ConsistencyError("consistency proofs need 0 < old size <= new size")
    if old_size == new_size:
        if proof:
            raise ConsistencyError("a proof between equal sizes must be empty")
        if not hmac.compare_digest(old_root, new_root):
            raise ConsistencyError("equal sizes with different roots (fork)")
        return
    _check_hash(old_root, "old root", ConsistencyError)
    _check_hash(new_root, "new root", ConsistencyError)
    for h in proof:
        _check_hash(h, "proof element", ConsistencyError)
    if not proof:
        raise ConsistencyError("empty consistency proof")
    path = list(proof)
    # RFC 9162 2.1.4.2.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ConsistencyError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ConsistencyError("consistency proof is too short")
    if not (hmac.compare_digest(fr, old_root) and hmac.compare_digest(sr, new_root)):
        raise ConsistencyError("consistency proof does not match the roots (fork or rewrite)")


class CompactRange:
    """The right edge of a growing tree: the perfect subtrees whose concatenation is the tree.

    Appending a leaf returns the perfect-subtree hashes that became complete, so
    storage can persist every node exactly once. Invariant: ``size`` is the sum of
    2^level over ``peaks``, with levels strictly decreasing.
    """

    __slots__ = ("peaks", "size")

    def __init__(self, size: int = 0, peaks: Sequence[tuple[int, bytes]] = ()) -> None:
        self.size = size
        self.peaks: list[tuple[int, bytes]] = list(peaks)
        if sum(1 << level for level, _ in self.peaks) != size:
            raise ValueError("peaks do not add up to the size")

    @classmethod
    def from_source(cls, source: NodeSource, size: int) -> CompactRange:
        """Rebuild the right edge of a stored tree."""
        peaks = []
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                peaks.append((level, source.node(level, start >> level)))
                start += 1 << level
        return cls(size, peaks)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; returns the new perfect nodes as (level, index, hash)."""
        index = self.size
        created = [(0, index, leaf)]
        level, h = 0, leaf
        while self.peaks and self.peaks[-1][0] == level:
            _, left = self.peaks.pop()
            h = node_hash(left, h)
            level += 1
            created.append((level, index >> level, h))
        self.peaks.append((level, h))
        self.size += 1
        return created

    def root(self) -> bytes:
        """MTH of the tree."""
        if not self.peaks:
            return EMPTY_ROOT
        h = self.peaks[-1][1]
        for _, left in reversed(self.peaks[:-1]):
            h = node_hash(left, h)
        return h

    def copy(self) -> CompactRange:
        return CompactRange(self.size, list(self.peaks))


@dataclass(frozen=True, slots=True)
class TileCoord:
    """A tile of the C2SP tlog-tiles layout: level L, index N and width W (256 when full)."""

    level: int
    index: int
    width: int

    @property
    def path(self) -> str:
        return tile_path(self.level, self.index, self.width)


def _index_path(index: int) -> str:
    parts = []
    while True:
        parts.append(f"{index % 1000:03d}")
        index //= 1000
        if index == 0:
            break
    parts.reverse()
    return "/".join([*(f"x{p}" for p in parts[:-1]), parts[-1]])


def tile_path(level: int | str, index: int, width: int = TILE_WIDTH) -> str:
    """``tile/<L>/<N>[.p/<W>]`` with N in zero-padded 3-digit elements (``x001/x234/067``).

    ``level`` is an integer, or ``"entries"`` for entry bundles.
    """
    if not 1 <= width <= TILE_WIDTH:
        raise ValueError("tile width must be 1..256")
    suffix = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/{level}/{_index_path(index)}{suffix}"


def tiles_for_size(size: int) -> list[TileCoord]:
    """Every tile (full and partial) that a tree of ``size`` leaves publishes, level by level."""
    out: list[TileCoord] = []
    level = 0
    while True:
        span = TILE_WIDTH**level
        nodes = size // span
        if nodes == 0:
            break
        full, partial = divmod(nodes, TILE_WIDTH)
        out.extend(TileCoord(level, i, TILE_WIDTH) for i in range(full))
        if partial:
            out.append(TileCoord(level, full, partial))
        if nodes < TILE_WIDTH:
            break
        level += 1
    return out
