"""Triton kernels for ChaCha20-Poly1305 (RFC 8439) on the sealed format's chunks.

Two kernels, run in this order on ciphertext already in the destination tensor:

* ``poly1305_kernel``: one program per chunk computes that chunk's tag (the
  Poly1305 key from ChaCha20 block 0 of the chunk's nonce; the MAC over
  ``aad ‖ pad16 ‖ ciphertext ‖ pad16 ‖ le64(len aad) ‖ le64(len ct)``);
* ``chacha20_xor_kernel``: every 64-byte block is XORed in place with its
  keystream block (counter 1 + block index within the chunk).

Nonces follow the format (section 6 of docs/format.md): ``be64(j) ‖ u8(final) ‖ 000``.
For the RFC test vectors both kernels also take an explicit nonce and initial
counter (``EXPLICIT_NONCE``), and the MAC kernel a raw one-time key and the
generic padding of RFC 8439 section 2.5 (``RAW_MAC``).

Poly1305 is a Horner evaluation; a chunk of m blocks is split over LANES lanes,
lane l handling blocks l, l + L, l + 2L, ... with multiplier r^L, and the lanes are
combined as sum_l h_l * r^(L-1-l). Zero blocks are prepended (never appended) so
every block keeps its exact power of r. Field elements mod 2^130 - 5 are five
26-bit limbs in uint64 (poly1305-donna's representation), so products of sums
stay below 2^64. Keys come from a device table that the caller zeroes after use.

No arithmetic depends on secret values for control flow or memory addresses:
masks come from public lengths and indices only.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["chacha20_xor_kernel", "poly1305_kernel"]

_MASK26 = 0x3FFFFFF


@triton.jit
def _rotl(x, n: tl.constexpr):
    return (x << n) | (x >> (32 - n))


@triton.jit
def _qr(a, b, c, d):
    a = a + b
    d = _rotl(d ^ a, 16)
    c = c + d
    b = _rotl(b ^ c, 12)
    a = a + b
    d = _rotl(d ^ a, 8)
    c = c + d
    b = _rotl(b ^ c, 7)
    return a, b, c, d


@triton.jit
def _chacha_block(k0, k1, k2, k3, k4, k5, k6, k7, counter, n0, n1, n2):
    """The 16 output words of the ChaCha20 block function (RFC 8439 section 2.3); any shapes broadcast."""
    c0 = counter * 0
    x0 = c0 + 0x61707865
    x1 = c0 + 0x3320646E
    x2 = c0 + 0x79622D32
    x3 = c0 + 0x6B206574
    x4 = c0 + k0
    x5 = c0 + k1
    x6 = c0 + k2
    x7 = c0 + k3
    x8 = c0 + k4
    x9 = c0 + k5
    x10 = c0 + k6
    x11 = c0 + k7
    x12 = c0 + counter
    x13 = c0 + n0
    x14 = c0 + n1
    x15 = c0 + n2
    i0, i1, i2, i3, i4, i5, i6, i7 = x0, x1, x2, x3, x4, x5, x6, x7
    i8, i9, i10, i11, i12, i13, i14, i15 = x8, x9, x10, x11, x12, x13, x14, x15
    for _ in tl.static_range(10):
        x0, x4, x8, x12 = _qr(x0, x4, x8, x12)
        x1, x5, x9, x13 = _qr(x1, x5, x9, x13)
        x2, x6, x10, x14 = _qr(x2, x6, x10, x14)
        x3, x7, x11, x15 = _qr(x3, x7, x11, x15)
        x0, x5, x10, x15 = _qr(x0, x5, x10, x15)
        x1, x6, x11, x12 = _qr(x1, x6, x11, x12)
        x2, x7, x8, x13 = _qr(x2, x7, x8, x13)
        x3, x4, x9, x14 = _qr(x3, x4, x9, x14)
    return (
        x0 + i0, x1 + i1, x2 + i2, x3 + i3, x4 + i4, x5 + i5, x6 + i6, x7 + i7,
        x8 + i8, x9 + i9, x10 + i10, x11 + i11, x12 + i12, x13 + i13, x14 + i14, x15 + i15,
    )  # fmt: skip


@triton.jit
def _bswap(x):
    return ((x & 0xFF) << 24) | ((x & 0xFF00) << 8) | ((x >> 8) & 0xFF00) | (x >> 24)


@triton.jit
def _format_nonce(chunk, n_chunks):
    """Nonce words of chunk ``chunk``: be64(chunk) ‖ u8(chunk == last) ‖ 00 00 00."""
    c64 = chunk.to(tl.uint64)
    n0 = _bswap((c64 >> 32).to(tl.uint32))
    n1 = _bswap((c64 & 0xFFFFFFFF).to(tl.uint32))
    n2 = (chunk == n_chunks - 1).to(tl.uint32)
    return n0, n1, n2


@triton.jit
def _load_key(key_ptr):
    k0 = tl.load(key_ptr + 0).to(tl.uint32, bitcast=True)
    k1 = tl.load(key_ptr + 1).to(tl.uint32, bitcast=True)
    k2 = tl.load(key_ptr + 2).to(tl.uint32, bitcast=True)
    k3 = tl.load(key_ptr + 3).to(tl.uint32, bitcast=True)
    k4 = tl.load(key_ptr + 4).to(tl.uint32, bitcast=True)
    k5 = tl.load(key_ptr + 5).to(tl.uint32, bitcast=True)
    k6 = tl.load(key_ptr + 6).to(tl.uint32, bitcast=True)
    k7 = tl.load(key_ptr + 7).to(tl.uint32, bitcast=True)
    return k0, k1, k2, k3, k4, k5, k6, k7


@triton.jit
def chacha20_xor_kernel(
    buf_ptr,  # uint8 data, XORed in place
    n_bytes,
    key_ptr,  # int32[8]: the tensor's key, little-endian words
    nonce_ptr,  # int32[3]: explicit nonce (EXPLICIT_NONCE only)
    first_counter,  # explicit mode: counter of block 0
    chunk_shift,  # chunk_log2 - 6: 64-byte blocks per chunk, as a shift
    n_chunks,
    BLOCKS: tl.constexpr,  # 64-byte blocks per program
    EXPLICIT_NONCE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    g = pid * BLOCKS + tl.arange(0, BLOCKS).to(tl.int64)  # global block index
    k0, k1, k2, k3, k4, k5, k6, k7 = _load_key(key_ptr)
    if EXPLICIT_NONCE:
        counter = (g + first_counter).to(tl.uint32)
        n0 = tl.load(nonce_ptr + 0).to(tl.uint32, bitcast=True) + counter * 0
        n1 = tl.load(nonce_ptr + 1).to(tl.uint32, bitcast=True) + counter * 0
        n2 = tl.load(nonce_ptr + 2).to(tl.uint32, bitcast=True) + counter * 0
    else:
        chunk = g >> chunk_shift
        counter = ((g & ((1 << chunk_shift) - 1)) + 1).to(tl.uint32)
        n0, n1, n2 = _format_nonce(chunk, n_chunks)
    w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15 = _chacha_block(
        k0, k1, k2, k3, k4, k5, k6, k7, counter, n0, n1, n2
    )
    j = tl.arange(0, 64)[None, :]
    word = j // 4
    shift = ((j % 4) * 8).to(tl.uint32)
    ks = tl.where(word == 0, w0[:, None], 0)
    ks = tl.where(word == 1, w1[:, None], ks)
    ks = tl.where(word == 2, w2[:, None], ks)
    ks = tl.where(word == 3, w3[:, None], ks)
    ks = tl.where(word == 4, w4[:, None], ks)
    ks = tl.where(word == 5, w5[:, None], ks)
    ks = tl.where(word == 6, w6[:, None], ks)
    ks = tl.where(word == 7, w7[:, None], ks)
    ks = tl.where(word == 8, w8[:, None], ks)
    ks = tl.where(word == 9, w9[:, None], ks)
    ks = tl.where(word == 10, w10[:, None], ks)
    ks = tl.where(word == 11, w11[:, None], ks)
    ks = tl.where(word == 12, w12[:, None], ks)
    ks = tl.where(word == 13, w13[:, None], ks)
    ks = tl.where(word == 14, w14[:, None], ks)
    ks = tl.where(word == 15, w15[:, None], ks)
    offsets = g[:, None] * 64 + j
    mask = offsets < n_bytes
    data = tl.load(buf_ptr + offsets, mask=mask, other=0)
    stream = ((ks.to(tl.uint32) >> shift) & 0xFF).to(tl.uint8)
    tl.store(buf_ptr + offsets, data ^ stream, mask=mask)


# -- Poly1305 ------------------------------------------------------------------------------------


@triton.jit
def _mulmod(h0, h1, h2, h3, h4, r0, r1, r2, r3, r4):
    """(h * r) mod 2^130 - 5 on 26-bit limbs (uint64), partially reduced."""
    s1 = r1 * 5
    s2 = r2 * 5
    s3 = r3 * 5
    s4 = r4 * 5
    d0 = h0 * r0 + h1 * s4 + h2 * s3 + h3 * s2 + h4 * s1
    d1 = h0 * r1 + h1 * r0 + h2 * s4 + h3 * s3 + h4 * s2
    d2 = h0 * r2 + h1 * r1 + h2 * r0 + h3 * s4 + h4 * s3
    d3 = h0 * r3 + h1 * r2 + h2 * r1 + h3 * r0 + h4 * s4
    d4 = h0 * r4 + h1 * r3 + h2 * r2 + h3 * r1 + h4 * r0
    d1 += d0 >> 26
    d2 += d1 >> 26
    d3 += d2 >> 26
    d4 += d3 >> 26
    c = d4 >> 26
    h0 = (d0 & 0x3FFFFFF) + c * 5
    h1 = (d1 & 0x3FFFFFF) + (h0 >> 26)
    return h0 & 0x3FFFFFF, h1, d2 & 0x3FFFFFF, d3 & 0x3FFFFFF, d4 & 0x3FFFFFF


@triton.jit
def _words_to_limbs(t0, t1, t2, t3, hibit):
    """A 16-byte little-endian block (four uint64-held 32-bit words) plus 2^128 * hibit, as limbs."""
    l0 = t0 & 0x3FFFFFF
    l1 = ((t0 >> 26) | (t1 << 6)) & 0x3FFFFFF
    l2 = ((t1 >> 20) | (t2 << 12)) & 0x3FFFFFF
    l3 = ((t2 >> 14) | (t3 << 18)) & 0x3FFFFFF
    l4 = (t3 >> 8) | (hibit << 24)
    return l0, l1, l2, l3, l4


@triton.jit
def _load_block_words(ptr, block, n_valid, valid, RAW_PAD: tl.constexpr):
    """Words of 16-byte blocks at ``ptr + 16 * block`` (vector), bytes at or beyond ``n_valid`` read as 0.

    With RAW_PAD, the byte at ``n_valid`` reads as 1 (RFC 8439 section 2.5: a partial last block
    of a bare Poly1305 message is padded with 0x01 then zeros, and gets no 2^128 bit).
    """
    b = tl.arange(0, 16)[None, :]
    pos = block[:, None] * 16 + b
    inside = valid[:, None] & (pos < n_valid)
    raw = tl.load(ptr + pos, mask=inside, other=0).to(tl.uint64)
    if RAW_PAD:
        raw = tl.where(valid[:, None] & (pos == n_valid), 1, raw)
    shifted = raw << ((b % 4) * 8).to(tl.uint64)
    word = b // 4
    t0 = tl.sum(tl.where(word == 0, shifted, 0), axis=1)
    t1 = tl.sum(tl.where(word == 1, shifted, 0), axis=1)
    t2 = tl.sum(tl.where(word == 2, shifted, 0), axis=1)
    t3 = tl.sum(tl.where(word == 3, shifted, 0), axis=1)
    return t0, t1, t2, t3


@triton.jit
def _powmod(r0, r1, r2, r3, r4, e, zero, BITS: tl.constexpr):
    """r^e mod 2^130 - 5 by square-and-multiply over the low BITS bits of e (public, per lane)."""
    x0, x1, x2, x3, x4 = zero + 1, zero, zero, zero, zero
    y0, y1, y2, y3, y4 = r0, r1, r2, r3, r4
    for bit in tl.static_range(BITS):
        q0, q1, q2, q3, q4 = _mulmod(x0, x1, x2, x3, x4, y0, y1, y2, y3, y4)
        take = ((e >> bit) & 1) != 0
        x0 = tl.where(take, q0, x0)
        x1 = tl.where(take, q1, x1)
        x2 = tl.where(take, q2, x2)
        x3 = tl.where(take, q3, x3)
        x4 = tl.where(take, q4, x4)
        y0, y1, y2, y3, y4 = _mulmod(y0, y1, y2, y3, y4, y0, y1, y2, y3, y4)
    return x0, x1, x2, x3, x4


@triton.jit
def _freeze(h0, h1, h2, h3, h4):
    """Full reduction to [0, 2^130 - 5) of limbs that may exceed 26 bits."""
    for _ in tl.static_range(2):
        h1 += h0 >> 26
        h0 &= 0x3FFFFFF
        h2 += h1 >> 26
        h1 &= 0x3FFFFFF
        h3 += h2 >> 26
        h2 &= 0x3FFFFFF
        h4 += h3 >> 26
        h3 &= 0x3FFFFFF
        h0 += (h4 >> 26) * 5
        h4 &= 0x3FFFFFF
    h1 += h0 >> 26
    h0 &= 0x3FFFFFF
    g0 = h0 + 5
    g1 = h1 + (g0 >> 26)
    g0 &= 0x3FFFFFF
    g2 = h2 + (g1 >> 26)
    g1 &= 0x3FFFFFF
    g3 = h3 + (g2 >> 26)
    g2 &= 0x3FFFFFF
    g4 = h4 + (g3 >> 26)
    g3 &= 0x3FFFFFF
    use_g = (g4 >> 26) != 0  # h + 5 >= 2^130, i.e. h >= p
    g4 &= 0x3FFFFFF
    return (
        tl.where(use_g, g0, h0),
        tl.where(use_g, g1, h1),
        tl.where(use_g, g2, h2),
        tl.where(use_g, g3, h3),
        tl.where(use_g, g4, h4),
    )


@triton.jit
def poly1305_kernel(
    buf_ptr,  # uint8 ciphertext of the whole tensor (or message)
    n_bytes,
    key_ptr,  # int32[8]: the tensor's ChaCha20 key (or, RAW_MAC, the one-time key r ‖ s)
    nonce_ptr,  # int32[3]: explicit nonce (EXPLICIT_NONCE only)
    aad_ptr,  # uint8 associated data
    aad_len,
    chunk_log2,
    n_chunks,
    out_ptr,  # int32[4 * n_chunks]: the computed tags
    LANES: tl.constexpr,
    LOG2_LANES: tl.constexpr,
    EXPLICIT_NONCE: tl.constexpr,
    RAW_MAC: tl.constexpr,
):
    chunk = tl.program_id(0).to(tl.int64)
    lane = tl.arange(0, LANES).to(tl.int64)
    zero = (lane * 0).to(tl.uint64)
    k0, k1, k2, k3, k4, k5, k6, k7 = _load_key(key_ptr)
    if RAW_MAC:
        z0, z1, z2, z3, z4, z5, z6, z7 = k0, k1, k2, k3, k4, k5, k6, k7
    else:
        if EXPLICIT_NONCE:
            n0 = tl.load(nonce_ptr + 0).to(tl.uint32, bitcast=True)
            n1 = tl.load(nonce_ptr + 1).to(tl.uint32, bitcast=True)
            n2 = tl.load(nonce_ptr + 2).to(tl.uint32, bitcast=True)
        else:
            n0, n1, n2 = _format_nonce(chunk, n_chunks)
        counter0 = (chunk * 0).to(tl.uint32)
        z0, z1, z2, z3, z4, z5, z6, z7, _, _, _, _, _, _, _, _ = _chacha_block(
            k0, k1, k2, k3, k4, k5, k6, k7, counter0, n0, n1, n2
        )
    # r (clamped) and s, as uint64 words, broadcast over the lanes.
    r0w = (z0 & 0x0FFFFFFF).to(tl.uint64) + zero
    r1w = (z1 & 0x0FFFFFFC).to(tl.uint64) + zero
    r2w = (z2 & 0x0FFFFFFC).to(tl.uint64) + zero
    r3w = (z3 & 0x0FFFFFFC).to(tl.uint64) + zero
    r0, r1, r2, r3, r4 = _words_to_limbs(r0w, r1w, r2w, r3w, zero)
    # Per-lane multipliers r^(L-1-l), and r^L.
    e = (LANES - 1 - lane).to(tl.uint64)
    a0, a1, a2, a3, a4 = _powmod(r0, r1, r2, r3, r4, e, zero, LOG2_LANES)
    b0, b1, b2, b3, b4 = _powmod(r0, r1, r2, r3, r4, zero + LANES, zero, LOG2_LANES + 1)
    # The chunk's bytes and its blocks, with zero blocks prepended to fill the lanes.
    start = chunk << chunk_log2
    length = tl.minimum(n_bytes - start, 1 << chunk_log2)
    length = tl.maximum(length, 0)
    m = (length + 15) // 16
    rounds = (m + LANES - 1) // LANES
    pad = rounds * LANES - m
    h0, h1, h2, h3, h4 = zero, zero, zero, zero, zero
    for k in range(0, rounds):
        real = k * LANES + lane - pad
        valid = real >= 0
        t0, t1, t2, t3 = _load_block_words(buf_ptr + start, real, length, valid, RAW_MAC)
        if RAW_MAC:
            full = (real * 16 + 16) <= length
            hibit = (valid & full).to(tl.uint64)
        else:
            hibit = valid.to(tl.uint64)
        c0, c1, c2, c3, c4 = _words_to_limbs(t0, t1, t2, t3, hibit)
        h0, h1, h2, h3, h4 = _mulmod(h0, h1, h2, h3, h4, b0, b1, b2, b3, b4)
        h0, h1, h2, h3, h4 = h0 + c0, h1 + c1, h2 + c2, h3 + c3, h4 + c4
    h0, h1, h2, h3, h4 = _mulmod(h0, h1, h2, h3, h4, a0, a1, a2, a3, a4)
    # sum over lanes (each limb < 2^27, at most 2^10 lanes), then one partial reduction
    s0 = tl.sum(h0, axis=0) + zero
    s1 = tl.sum(h1, axis=0) + zero
    s2 = tl.sum(h2, axis=0) + zero
    s3 = tl.sum(h3, axis=0) + zero
    s4 = tl.sum(h4, axis=0) + zero
    one0, one1, one2, one3, one4 = zero + 1, zero, zero, zero, zero
    cp0, cp1, cp2, cp3, cp4 = _mulmod(s0, s1, s2, s3, s4, one0, one1, one2, one3, one4)
    if RAW_MAC:
        # A bare MAC: h = sum c_j r^(m-j) = CP' * r
        t0, t1, t2, t3, t4 = _mulmod(cp0, cp1, cp2, cp3, cp4, r0, r1, r2, r3, r4)
    else:
        # AEAD: h = PA * r^(m+1) + CP' * r^2 + S * r, PA = sum_i a_i r^(A-i+1) over the padded AAD blocks.
        aad_blocks = (aad_len + 15) // 16
        p0, p1, p2, p3, p4 = zero, zero, zero, zero, zero
        for i in range(0, aad_blocks):
            blk = lane * 0 + i
            u0, u1, u2, u3 = _load_block_words(aad_ptr, blk, aad_len, lane >= 0, False)
            v0, v1, v2, v3, v4 = _words_to_limbs(u0, u1, u2, u3, zero + 1)
            p0, p1, p2, p3, p4 = _mulmod(p0 + v0, p1 + v1, p2 + v2, p3 + v3, p4 + v4, r0, r1, r2, r3, r4)
        # r^(m+1) by square-and-multiply over the bits of m + 1 (m < 2^20 for 16 MiB chunks)
        em = (m + 1).to(tl.uint64) + zero
        x0, x1, x2, x3, x4 = _powmod(r0, r1, r2, r3, r4, em, zero, 21)
        pa0, pa1, pa2, pa3, pa4 = _mulmod(p0, p1, p2, p3, p4, x0, x1, x2, x3, x4)
        w0, w1, w2, w3, w4 = _mulmod(cp0, cp1, cp2, cp3, cp4, r0, r1, r2, r3, r4)
        # length block: le64(aad_len) ‖ le64(length), plus 2^128
        len64 = length.to(tl.uint64) + zero
        al = aad_len.to(tl.uint64) + zero
        lw0, lw1, lw2, lw3, lw4 = _words_to_limbs(al & 0xFFFFFFFF, al >> 32, len64 & 0xFFFFFFFF, len64 >> 32, zero + 1)
        w0, w1, w2, w3, w4 = _mulmod(w0 + lw0, w1 + lw1, w2 + lw2, w3 + lw3, w4 + lw4, r0, r1, r2, r3, r4)
        t0, t1, t2, t3, t4 = pa0 + w0, pa1 + w1, pa2 + w2, pa3 + w3, pa4 + w4
    f0, f1, f2, f3, f4 = _freeze(t0, t1, t2, t3, t4)
    # tag = (h + s) mod 2^128
    o0 = (f0 | (f1 << 26)) & 0xFFFFFFFF
    o1 = ((f1 >> 6) | (f2 << 20)) & 0xFFFFFFFF
    o2 = ((f2 >> 12) | (f3 << 14)) & 0xFFFFFFFF
    o3 = ((f3 >> 18) | (f4 << 8)) & 0xFFFFFFFF
    q = o0 + z4.to(tl.uint64)
    g0 = q & 0xFFFFFFFF
    q = o1 + z5.to(tl.uint64) + (q >> 32)
    g1 = q & 0xFFFFFFFF
    q = o2 + z6.to(tl.uint64) + (q >> 32)
    g2 = q & 0xFFFFFFFF
    q = o3 + z7.to(tl.uint64) + (q >> 32)
    g3 = q & 0xFFFFFFFF
    first = lane == 0
    base = out_ptr + chunk * 4
    tl.store(base + 0 + lane * 0, g0.to(tl.uint32).to(tl.int32, bitcast=True), mask=first)
    tl.store(base + 1 + lane * 0, g1.to(tl.uint32).to(tl.int32, bitcast=True), mask=first)
    tl.store(base + 2 + lane * 0, g2.to(tl.uint32).to(tl.int32, bitcast=True), mask=first)
    tl.store(base + 3 + lane * 0, g3.to(tl.uint32).to(tl.int32, bitcast=True), mask=first)
