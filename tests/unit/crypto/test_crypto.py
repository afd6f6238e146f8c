"""The crypto layer: RFC 5869 HKDF vectors, secret handling, HPKE and derived-key wraps."""

from __future__ import annotations

import pickle

import pytest

from weightvault.crypto.aead import AEADSuite, InvalidTag, chunk_cipher, open_single_use, seal_single_use
from weightvault.crypto.kdf import hkdf_expand, hkdf_extract, scrypt
from weightvault.crypto.keywrap import (
    HPKEKem,
    hpke_generate,
    hpke_open,
    hpke_public_key,
    hpke_seal,
    unwrap_with_secret,
    wrap_with_secret,
)
from weightvault.crypto.secret import SecretBytes, random_bytes


def test_hkdf_rfc5869_case_1() -> None:
    """HKDF-SHA256 matches RFC 5869 appendix A.1."""
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    prk = hkdf_extract(salt, ikm)
    assert "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5" == prk.hex()
    okm = hkdf_expand(prk, info, 42)
    assert "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865" == okm.hex()


def test_hkdf_rfc5869_case_3_empty_salt_and_info() -> None:
    """HKDF-SHA256 matches RFC 5869 appendix A.3 (zero-length salt and info)."""
    prk = hkdf_extract(b"", bytes.fromhex("0b" * 22))
    assert "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04" == prk.hex()
    okm = hkdf_expand(prk, b"", 42)
    assert "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8" == okm.hex()


def test_hkdf_expand_refuses_short_prk() -> None:
    """HKDF-Expand is only used with full-length pseudorandom keys."""
    with pytest.raises(ValueError):
        hkdf_expand(b"short", b"info")


def test_secret_bytes_never_shows_its_value() -> None:
    """repr, str and pickling never reveal a secret; comparison is by value; wipe zeroes it."""
    secret = SecretBytes(b"super-secret-key-material-123456")
    assert "super" not in repr(secret)
    assert "super" not in str(secret)
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    assert secret == SecretBytes(b"super-secret-key-material-123456")
    secret.wipe()
    assert secret.wiped
    with pytest.raises(ValueError):
        secret.reveal()


def test_random_bytes_are_fresh() -> None:
    """Two draws of 32 bytes differ."""
    assert random_bytes(32) != random_bytes(32)


@pytest.mark.parametrize("suite", list(AEADSuite))
def test_single_use_aead_round_trip_and_tamper(suite: AEADSuite) -> None:
    """Single-use AEAD decrypts what it encrypted and rejects a flipped bit or other AAD."""
    key = bytes(range(32))
    sealed = seal_single_use(suite, key, b"payload", b"aad")
    assert b"payload" == open_single_use(suite, key, sealed, b"aad")
    with pytest.raises(InvalidTag):
        open_single_use(suite, key, sealed, b"other")
    flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
    with pytest.raises(InvalidTag):
        open_single_use(suite, key, flipped, b"aad")


def test_chunk_cipher_rejects_wrong_key_length() -> None:
    """AEAD keys are exactly 32 bytes."""
    with pytest.raises(ValueError):
        chunk_cipher(AEADSuite.AES_256_GCM, b"k" * 16)


def test_suite_labels_round_trip() -> None:
    """Every suite's command-line label parses back to it."""
    for suite in AEADSuite:
        assert suite == AEADSuite.from_label(suite.label)
    with pytest.raises(ValueError):
        AEADSuite.from_label("rot13")


@pytest.mark.parametrize("kem", list(HPKEKem))
def test_hpke_round_trip_and_binding(kem: HPKEKem) -> None:
    """HPKE opens with the right key and info only; public keys derive from private keys."""
    private, public = hpke_generate(kem)
    assert public == hpke_public_key(kem, private)
    assert kem.public_key_bytes == len(public)
    sealed = hpke_seal(kem, public, b"k" * 32, b"info")
    assert b"k" * 32 == hpke_open(kem, private, sealed, b"info")
    with pytest.raises(InvalidTag):
        hpke_open(kem, private, sealed, b"other info")
    other, _ = hpke_generate(kem)
    with pytest.raises(InvalidTag):
        hpke_open(kem, other, sealed, b"info")
    with pytest.raises(InvalidTag):
        hpke_open(kem, private, sealed[:10], b"info")


def test_hpke_hybrid_public_key_layout() -> None:
    """The hybrid public key is the ML-KEM-768 key (1184 bytes) then the X25519 key (32)."""
    private, public = hpke_generate(HPKEKem.MLKEM768_X25519)
    assert 1216 == len(public)
    assert 96 == len(private)


def test_derived_key_wrap_binds_secret_salt_info_and_aad() -> None:
    """The derived-key wrap opens only with the same secret, salt, info and associated data."""
    secret, salt = b"s" * 32, b"t" * 32
    wrapped = wrap_with_secret(secret, salt, b"info", b"payload", b"aad")
    assert b"payload" == unwrap_with_secret(secret, salt, b"info", wrapped, b"aad")
    for args in (
        (b"x" * 32, salt, b"info", wrapped, b"aad"),
        (secret, b"u" * 32, b"info", wrapped, b"aad"),
        (secret, salt, b"other", wrapped, b"aad"),
        (secret, salt, b"info", wrapped, b"other"),
    ):
        with pytest.raises(InvalidTag):
            unwrap_with_secret(*args)


def test_scrypt_bounds() -> None:
    """scrypt refuses work factors that would exhaust memory."""
    assert 32 == len(scrypt(b"pw", b"s" * 32, log_n=10, r=8, p=1))
    with pytest.raises(ValueError):
        scrypt(b"pw", b"s" * 32, log_n=21, r=8, p=1)
