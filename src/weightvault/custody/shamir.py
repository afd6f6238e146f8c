"""Shamir secret sharing over GF(2^8), in the share layout of HashiCorp Vault and OpenBao.

Each secret byte gets its own random polynomial of degree ``threshold - 1`` over
GF(2^8) with the AES reduction polynomial x^8 + x^4 + x^3 + x + 1 (0x11b); its
constant term is the secret byte. A share is the polynomial values at one
x-coordinate followed by that coordinate::

    share = y_1 ‖ y_2 ‖ … ‖ y_L ‖ x        (L = len(secret), 1 <= x <= 255)

so a share is one byte longer than the secret, as in Vault's ``shamir.Split``,
and shares interoperate with Vault-compatible implementations (the test suite
checks both directions against an independent one).

Invariants:

* x-coordinates are distinct, drawn uniformly from 1..255 (never 0, which is the secret);
* every coefficient above the constant term is uniform over all 256 values, zero
  included (forcing non-zero leading coefficients biases shares; see the Cure53
  review of ``sharks``);
* 2 <= threshold <= parts <= 255.

Side channels: field arithmetic on secret values has no secret-dependent branch,
index or table lookup. Multiplication is eight rounds of shift, mask and XOR,
and inversion is a fixed chain of multiplications (a^254), all on NumPy ``uint8``
arrays whose operations take the same time for every value. Only public data
(x-coordinates, lengths, the threshold) decides control flow. Python itself
offers no constant-time guarantee; this removes the structural leaks that
tables and branches would add, which is what can be done at this level.

Shamir sharing alone does not detect a corrupted share: combining M shares of
which one is wrong yields a wrong secret. :mod:`weightvault.custody.shares` adds
per-share commitments and a key-check value around this module for that reason.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from weightvault.crypto.secret import random_bytes

__all__ = ["MAX_PARTS", "combine", "evaluate_at", "gf_inv", "gf_mul", "interpolate", "split"]

MAX_PARTS: Final = 255
_U8 = np.uint8
Bytes = npt.NDArray[np.uint8]


def gf_mul(a: Bytes, b: Bytes) -> Bytes:
    """Elementwise product in GF(2^8) mod 0x11b, without branches or tables."""
    a = np.array(a, dtype=_U8, copy=True)
    b = np.asarray(b, dtype=_U8)
    a, b = np.broadcast_arrays(a, b)
    a = a.copy()
    result = np.zeros(a.shape, dtype=_U8)
    for bit in range(8):
        # mask = 0xFF where bit `bit` of b is set, else 0x00 (two's complement of 0 or 1).
        mask = (np.uint8(0) - ((b >> _U8(bit)) & _U8(1))).astype(_U8)
        result ^= a & mask
        carry = (np.uint8(0) - (a >> _U8(7))).astype(_U8) & _U8(0x1B)
        a = ((a << _U8(1)) ^ carry).astype(_U8)
    return result


def gf_inv(a: Bytes) -> Bytes:
    """Multiplicative inverse as a^254 (maps 0 to 0), by a fixed chain of multiplications."""
    a = np.asarray(a, dtype=_U8)
    square = gf_mul(a, a)  # a^2
    result = square
    power = square
    for _ in range(6):  # a^254 = a^2 · a^4 · a^8 · a^16 · a^32 · a^64 · a^128
        power = gf_mul(power, power)
        result = gf_mul(result, power)
    return result


def _random_u8(shape: tuple[int, ...]) -> Bytes:
    count = int(np.prod(shape)) if shape else 1
    return np.frombuffer(random_bytes(count), dtype=_U8).reshape(shape).copy()


def split(secret: bytes, parts: int, threshold: int) -> list[bytes]:
    """Split ``secret`` into ``parts`` shares, any ``threshold`` of which recover it.

    Raises:
        ValueError: an empty secret, or parameters outside 2 <= threshold <= parts <= 255.
    """
    if not secret:
        raise ValueError("cannot split an empty secret")
    if not 2 <= threshold <= parts <= MAX_PARTS:
        raise ValueError("need 2 <= threshold <= parts <= 255")
    length = len(secret)
    # coefficients[k, i] is the coefficient of x^k for secret byte i.
    coefficients = _random_u8((threshold, length))
    coefficients[0] = np.frombuffer(secret, dtype=_U8)
    xs = secrets.SystemRandom().sample(range(1, 256), parts)
    shares = []
    for x in xs:
        y = evaluate_at(coefficients, x)
        shares.append(y.tobytes() + bytes([x]))
    coefficients.fill(0)
    return shares


def evaluate_at(coefficients: Bytes, x: int) -> Bytes:
    """Horner evaluation of the per-byte polynomials (rows = powers) at public ``x``."""
    xv = np.full(coefficients.shape[1], x, dtype=_U8)
    acc = np.zeros(coefficients.shape[1], dtype=_U8)
    for row in coefficients[::-1]:
        acc = gf_mul(acc, xv) ^ row
    return acc


def _parse(shares: Sequence[bytes]) -> tuple[list[int], Bytes]:
    if len(shares) < 2:
        raise ValueError("need at least two shares")
    length = len(shares[0])
    if length < 2 or any(len(s) != length for s in shares):
        raise ValueError("shares must be of equal length, at least two bytes")
    xs = [s[-1] for s in shares]
    if 0 in xs:
        raise ValueError("a share has x-coordinate 0")
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate share (two shares with the same x-coordinate)")
    ys = np.frombuffer(b"".join(s[:-1] for s in shares), dtype=_U8).reshape(len(shares), length - 1)
    return xs, ys


def interpolate(shares: Sequence[bytes], at: int) -> bytes:
    """The value at public ``at`` of the polynomials through ``shares`` (Lagrange)."""
    xs, ys = _parse(shares)
    acc = np.zeros(ys.shape[1], dtype=_U8)
    target = np.array([at], dtype=_U8)
    for i, xi in enumerate(xs):
        # basis_i(at) = prod_{j != i} (at - x_j) / (x_i - x_j); subtraction is XOR.
        num = np.array([1], dtype=_U8)
        den = np.array([1], dtype=_U8)
        for j, xj in enumerate(xs):
            if j == i:  # public: depends on the position only
                continue
            num = gf_mul(num, target ^ _U8(xj))
            den = gf_mul(den, np.array([xi ^ xj], dtype=_U8))
        basis = gf_mul(num, gf_inv(den))
        acc ^= gf_mul(ys[i], np.broadcast_to(basis, ys[i].shape))
    out = acc.tobytes()
    acc.fill(0)
    return out


def combine(shares: Sequence[bytes]) -> bytes:
    """Recover the secret from ``threshold`` (or more) shares.

    With fewer shares than the threshold, or a corrupted share, the result is a
    wrong value, not an error: check it (a key-check value) before use.

    Raises:
        ValueError: fewer than two shares, unequal lengths, or a duplicate x-coordinate.
    """
    return interpolate(shares, 0)
