"""Keyed fingerprints of prompts for the audit log: an exact-match digest and a similarity sketch.

The gateway never records prompt text (unless configured to). It records two values
computed under a secret key that never leaves the broker's host:

- ``digest``: HMAC-SHA256 of the normalised prompt. Equal prompts have equal digests;
  without the key, nobody can test a guess against it.
- ``sketch``: a 256-bit SimHash (Charikar, 2002) over the prompt's character 5-grams,
  each hashed with keyed BLAKE2b-256 (RFC 7693's MAC mode, Python's hashlib) under a
  subkey: a PRF like HMAC, at a third of its cost per shingle. The Hamming distance between two
  sketches estimates the angle between the prompts' shingle vectors, so a detector can
  find near-duplicate and templated prompts (extraction campaigns) without the text.
  Keyed, so an outsider who reads the log can neither invert sketches by dictionary
  nor craft prompts that collide with a chosen sketch.

Normalisation: Unicode NFKC, case folding, and runs of white space collapsed to one
space. Only the first 64 KiB of the normalised prompt is shingled (a bounded cost).
Both keys derive from one 32-byte key with HKDF (:mod:`weightvault.crypto.kdf`).
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from typing import Final

import numpy as np

from weightvault.crypto.kdf import hkdf_expand, hkdf_extract

__all__ = ["SKETCH_BITS", "PromptFingerprint", "sketch_distance"]

SKETCH_BITS: Final = 256
_SHINGLE: Final = 5
_MAX_CHARS: Final = 64 << 10


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


class PromptFingerprint:
    """Digest and sketch of prompts under one key (``kid`` names it in the log)."""

    def __init__(self, key: bytes, kid: str) -> None:
        if len(key) < 32:
            raise ValueError("fingerprint keys are at least 32 bytes")
        prk = hkdf_extract(b"weightvault prompt fingerprint v1", key)
        self._digest_key = hkdf_expand(prk, b"digest")
        self._sketch_prf = hashlib.blake2b(key=hkdf_expand(prk, b"simhash"), digest_size=32)
        self.kid = kid

    def digest(self, text: str) -> str:
        tag = hmac.digest(self._digest_key, normalise(text).encode(), "sha256")
        return f"hmac-sha256:{self.kid}:{tag.hex()}"

    def sketch(self, text: str) -> str:
        """``simhash256:<kid>:<64 hex digits>``."""
        data = normalise(text)[:_MAX_CHARS]
        shingles = [data[i : i + _SHINGLE] for i in range(max(1, len(data) - _SHINGLE + 1))]
        keyed = self._sketch_prf
        parts = []
        for s in shingles:
            h = keyed.copy()  # the key block is absorbed once, in __init__
            h.update(s.encode())
            parts.append(h.digest())
        raw = b"".join(parts)
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8).reshape(len(shingles), 32), axis=1)
        votes = bits.sum(axis=0, dtype=np.int64) * 2 > len(shingles)
        return f"simhash256:{self.kid}:{np.packbits(votes).tobytes().hex()}"


def sketch_distance(a: str, b: str) -> int:
    """Hamming distance of two sketches made under the same key (0 = same shingle set, ~128 = unrelated).

    Raises:
        ValueError: the sketches are malformed or made under different keys.
    """
    pa, pb = a.split(":"), b.split(":")
    if len(pa) != 3 or len(pb) != 3 or pa[0] != "simhash256" or pa[:2] != pb[:2]:
        raise ValueError("sketches of different kinds or keys are not comparable")
    x = int(pa[2], 16) ^ int(pb[2], 16)
    return x.bit_count()
