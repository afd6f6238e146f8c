"""The Merkle core against the transparency-dev/merkle RFC 6962 vectors and a naive model."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import shared_vectors_dir
from weightvault.auditlog.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    tile_path,
    tiles_for_size,
    verify_consistency,
    verify_inclusion,
)
from weightvault.errors import AuditLogError, ConsistencyError, InclusionProofError

RFC6962 = shared_vectors_dir() / "rfc6962" / "testdata"


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _cases(kind: str) -> list[Path]:
    return sorted((RFC6962 / kind).rglob("*.json"))


def test_vector_sets_are_present() -> None:
    """The shared RFC 6962 vector sets are where the tests expect them (98 + 98 files)."""
    assert 98 == len(_cases("inclusion"))
    assert 98 == len(_cases("consistency"))


@pytest.mark.parametrize("path", _cases("inclusion"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_inclusion_vectors(path: Path) -> None:
    """Each transparency-dev inclusion vector verifies exactly when it should."""
    case = json.loads(path.read_text())
    proof = [_b64(p) for p in case["proof"] or []]
    if case["wantErr"]:
        with pytest.raises(InclusionProofError):
            verify_inclusion(case["leafIdx"], case["treeSize"], _b64(case["leafHash"]), proof, _b64(case["root"]))
    else:
        verify_inclusion(case["leafIdx"], case["treeSize"], _b64(case["leafHash"]), proof, _b64(case["root"]))


@pytest.mark.parametrize("path", _cases("consistency"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_consistency_vectors(path: Path) -> None:
    """Each transparency-dev consistency vector verifies exactly when it should (size1 = 0 is an error)."""
    case = json.loads(path.read_text())
    proof = [_b64(p) for p in case["proof"] or []]
    args = (case["size1"], case["size2"], _b64(case["root1"]), _b64(case["root2"]), proof)
    if case["wantErr"]:
        with pytest.raises(ConsistencyError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


class _Leaves:
    """A NodeSource over a list of leaf hashes, computing perfect nodes naively."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves

    def node(self, level: int, index: int) -> bytes:
        span = 1 << level
        return root_from_leaf_hashes(self.leaves[index * span : (index + 1) * span])


def test_known_roots() -> None:
    """The empty tree and the 8-leaf reference tree of the vector README have their published roots."""
    assert EMPTY_ROOT == bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    leaves = [
        leaf_hash(bytes.fromhex(h))
        for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
    ]
    assert "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328" == root_from_leaf_hashes(leaves).hex()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=1, max_value=300), data=st.data())
def test_generated_proofs_verify_and_compact_range_matches(n: int, data: st.DataObject) -> None:
    """Proofs generated from perfect nodes verify; the compact range gives the naive root at every size."""
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    source = _Leaves(leaves)
    compact = CompactRange()
    created: dict[tuple[int, int], bytes] = {}
    for i, h in enumerate(leaves):
        for level, index, node in compact.append(h):
            created[(level, index)] = node
        assert root_from_leaf_hashes(leaves[: i + 1]) == compact.root()
    assert all(source.node(level, index) == h for (level, index), h in created.items())
    root = compact.root()
    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    verify_inclusion(index, n, leaves[index], inclusion_proof(source, index, n), root)
    old = data.draw(st.integers(min_value=1, max_value=n))
    old_root = root_from_leaf_hashes(leaves[:old])
    verify_consistency(old, n, old_root, root, consistency_proof(source, old, n))


def test_proof_with_extra_or_missing_hashes_fails() -> None:
    """Appending or dropping a hash, or flipping a bit, breaks inclusion and consistency proofs."""
    leaves = [leaf_hash(bytes([i])) for i in range(13)]
    source = _Leaves(leaves)
    root = root_from_leaf_hashes(leaves)
    proof = inclusion_proof(source, 5, 13)
    for bad in ([*proof, root], proof[:-1], [bytes(32), *proof], [proof[0][:-1] + b"\x00", *proof[1:]]):
        with pytest.raises(InclusionProofError):
            verify_inclusion(5, 13, leaves[5], bad, root)
    cproof = consistency_proof(source, 6, 13)
    old = root_from_leaf_hashes(leaves[:6])
    for bad in ([*cproof, root], cproof[:-1], []):
        with pytest.raises(ConsistencyError):
            verify_consistency(6, 13, old, root, bad)


def test_second_preimage_is_not_an_interior_node() -> None:
    """A leaf whose bytes are 0x01 ‖ L ‖ R of two nodes hashes differently from the node: domain separation."""
    left, right = leaf_hash(b"a"), leaf_hash(b"b")
    forged_leaf = b"\x01" + left + right
    assert leaf_hash(forged_leaf[1:]) != node_hash(left, right)
    assert leaf_hash(forged_leaf) != node_hash(left, right)
    with pytest.raises(InclusionProofError):
        verify_inclusion(0, 1, leaf_hash(forged_leaf), [], node_hash(left, right))


def test_tile_paths_and_coverage() -> None:
    """Tile paths follow tlog-tiles, and a 70,000-leaf tree has the documented tiles."""
    assert "tile/0/x001/x234/067" == tile_path(0, 1234067)
    assert "tile/entries/000.p/5" == tile_path("entries", 0, 5)
    assert "tile/2/000" == tile_path(2, 0)
    tiles = tiles_for_size(70_000)
    level0 = [t for t in tiles if t.level == 0]
    assert 274 == len(level0)
    assert 112 == level0[-1].width
    assert [(1, 0, 256), (1, 1, 17), (2, 0, 1)] == [(t.level, t.index, t.width) for t in tiles if t.level > 0]
    assert [(0, 0, 256), (1, 0, 1)] == [(t.level, t.index, t.width) for t in tiles_for_size(256)]


def test_errors_belong_to_the_audit_branch() -> None:
    """Proof errors are AuditLogErrors."""
    assert issubclass(InclusionProofError, AuditLogError)
