"""Shamir over GF(2^8): field laws, recovery properties, Vault's share layout, and a differential oracle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightvault.custody import shamir

ORACLE = Path(__file__).resolve().parents[2] / "differential" / "shamir"


def _slow_mul(a: int, b: int) -> int:
    """Schoolbook carry-less multiplication mod 0x11b, the textbook definition."""
    product = 0
    for bit in range(8):
        if b >> bit & 1:
            product ^= a << bit
    for bit in range(14, 7, -1):
        if product >> bit & 1:
            product ^= 0x11B << (bit - 8)
    return product


def test_multiplication_matches_the_definition_for_every_pair() -> None:
    a = np.repeat(np.arange(256, dtype=np.uint8), 256)
    b = np.tile(np.arange(256, dtype=np.uint8), 256)
    fast = shamir.gf_mul(a, b)
    assert all(int(fast[i]) == _slow_mul(int(a[i]), int(b[i])) for i in range(65536))


def test_inverse_of_every_element() -> None:
    values = np.arange(256, dtype=np.uint8)
    inverse = shamir.gf_inv(values)
    assert 0 == inverse[0]
    assert all(_slow_mul(i, int(inverse[i])) == 1 for i in range(1, 256))


def test_aes_field_known_answer() -> None:
    """FIPS 197 section 4.2: {57} x {83} = {c1}."""
    assert 0xC1 == int(shamir.gf_mul(np.array([0x57], np.uint8), np.array([0x83], np.uint8))[0])


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=1, max_size=64), data=st.data())
def test_any_threshold_subset_recovers_the_secret(secret: bytes, data: st.DataObject) -> None:
    parts = data.draw(st.integers(2, 8))
    threshold = data.draw(st.integers(2, parts))
    shares = shamir.split(secret, parts, threshold)
    assert all(len(s) == len(secret) + 1 for s in shares)
    assert len({s[-1] for s in shares}) == parts
    assert 0 not in {s[-1] for s in shares}
    chosen = data.draw(st.permutations(shares))[: data.draw(st.integers(threshold, parts))]
    assert secret == shamir.combine(chosen)


def test_fewer_than_threshold_shares_give_a_wrong_value() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, 5, 3)
    for pair in combinations(shares, 2):
        assert secret != shamir.combine(list(pair))


def test_a_single_share_is_uniform() -> None:
    """For a fixed secret, a share's bytes are uniformly distributed (no bias from zero coefficients)."""
    secret = bytes(32)
    counts = np.zeros(256, dtype=np.int64)
    for _ in range(400):
        share = shamir.split(secret, 2, 2)[0]
        counts += np.bincount(np.frombuffer(share[:-1], np.uint8), minlength=256)
    expected = 400 * 32 / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 400  # 255 degrees of freedom: p ~ 1e-8 at 400


@pytest.mark.parametrize(
    ("shares", "message"),
    [
        ([b"\x01\x02"], "at least two"),
        ([b"\x01\x02", b"\x01\x02\x03"], "equal length"),
        ([b"\x01\x05", b"\x02\x05"], "duplicate"),
        ([b"\x01\x00", b"\x02\x05"], "x-coordinate 0"),
        ([b"\x01", b"\x02"], "at least two bytes"),
    ],
)
def test_malformed_share_sets(shares: list[bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        shamir.combine(shares)


@pytest.mark.parametrize(("parts", "threshold"), [(1, 1), (3, 1), (2, 3), (256, 2)])
def test_bad_parameters(parts: int, threshold: int) -> None:
    with pytest.raises(ValueError):
        shamir.split(b"secret", parts, threshold)
    with pytest.raises(ValueError):
        shamir.split(b"", 3, 2)


# -- differential test against an independent implementation ------------------------------------


@pytest.fixture(scope="module")
def oracle() -> Iterator[subprocess.Popen[str]]:
    """Privy's shamir-secret-sharing (Vault-compatible layout) under Node, installed by `make`."""
    if shutil.which("node") is None or not (ORACLE / "node_modules" / "shamir-secret-sharing").is_dir():
        message = "the Shamir oracle needs node and `npm ci --prefix tests/differential/shamir` (make does this)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    proc = subprocess.Popen(
        ["node", str(ORACLE / "oracle.js")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    yield proc
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.close()
    proc.wait(timeout=10)
    proc.stdout.close()


def _ask(proc: subprocess.Popen[str], request: dict[str, object]) -> dict[str, object]:
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(json.dumps(request) + "\n")
    proc.stdin.flush()
    answer: dict[str, object] = json.loads(proc.stdout.readline())
    assert "error" not in answer, answer
    return answer


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=1, max_size=48), data=st.data())
def test_our_shares_combine_with_theirs_and_theirs_with_ours(
    oracle: subprocess.Popen[str], secret: bytes, data: st.DataObject
) -> None:
    parts = data.draw(st.integers(2, 7))
    threshold = data.draw(st.integers(2, parts))
    ours = shamir.split(secret, parts, threshold)
    subset = data.draw(st.permutations(ours))[:threshold]
    assert secret.hex() == _ask(oracle, {"op": "combine", "shares": [s.hex() for s in subset]})["secret"]
    answer = _ask(oracle, {"op": "split", "secret": secret.hex(), "parts": parts, "threshold": threshold})
    raw_shares = answer["shares"]
    assert isinstance(raw_shares, list)
    theirs = [bytes.fromhex(str(s)) for s in raw_shares]
    assert all(len(s) == len(secret) + 1 for s in theirs)  # the same y ‖ x layout
    assert secret == shamir.combine(data.draw(st.permutations(theirs))[:threshold])
