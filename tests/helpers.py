"""Test helpers: sealing fixtures and a forger that re-authenticates modified headers.

The forger models an attacker who holds the file key (a malicious publisher or a
key holder): it rebuilds a file around arbitrary header bytes with valid chunk
tags and a valid header MAC, so that tests reach the checks that sit *behind*
authentication (parser limits, unknown critical fields, key commitments).
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from weightvault import KEK, AEADSuite, FileKey
from weightvault.crypto.mac import hmac_sha256
from weightvault.format.hazmat import TensorStream, derive_header_keys, header_digest
from weightvault.format.header import HeaderTable
from weightvault.format.preamble import MAC_BYTES, Preamble
from weightvault.format.recipients import encode_recipients_region
from weightvault.format.wire import ALIGNMENT, align_up
from weightvault.sealing import SealOptions, seal_safetensors
from weightvault.sealing.reader import SealedFile


@dataclass
class SealedCase:
    plain: Path
    sealed: Path
    file_key: FileKey
    kek: KEK
    suite: AEADSuite

    def bytes(self) -> bytearray:
        return bytearray(self.sealed.read_bytes())


def make_sealed_case(
    tmp: Path,
    plain: Path,
    file_key: FileKey,
    kek: KEK,
    suite: AEADSuite,
    sealed_metadata: bool = False,
    name: str = "x",
) -> SealedCase:
    out = tmp / f"{name}-{suite.label}{'-sm' if sealed_metadata else ''}.wvlt"
    seal_safetensors(
        plain,
        out,
        file_key=file_key,
        recipients=[kek],
        options=SealOptions(suite=suite, chunk_log2=16, sealed_metadata=sealed_metadata),
    )
    return SealedCase(plain, out, file_key, kek, suite)


def plain_tensor_bytes(plain: Path) -> dict[str, bytes]:
    """Raw bytes of every tensor in a plain safetensors file."""
    import json

    data = plain.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    return {k: data[base + v["data_offsets"][0] : base + v["data_offsets"][1]] for k, v in header.items()}


def forge(
    sealed_path: Path,
    file_key: FileKey,
    out: Path,
    *,
    header_json: bytes | None = None,
    preamble_changes: dict[str, object] | None = None,
    plaintexts: dict[int, bytes] | None = None,
    encrypt_key: FileKey | None = None,
) -> None:
    """Rebuild ``sealed_path`` with new header bytes and/or preamble fields, fully re-authenticated.

    Tensor plaintexts are taken from the original file (or ``plaintexts`` by index),
    and chunks are re-encrypted under ``encrypt_key`` (the original file key by
    default) and the original file id; the one stanza wraps that key too.
    """
    writer_key = encrypt_key or file_key
    with SealedFile(sealed_path) as sealed:
        opened = sealed.unlock(file_key)
        original = {e.index: bytes(opened.read_range(e, 0, e.nbytes)) for e in opened.entries}
        entries = list(opened.entries)
        p = sealed.preamble
    if plaintexts:
        original.update(plaintexts)
    table_bytes = (
        header_json
        if header_json is not None
        else HeaderTable.from_bytes(_header_json(sealed_path, file_key)).to_bytes()
    )
    fields: dict[str, object] = {
        "suite": p.suite,
        "flags": p.flags,
        "file_id": p.file_id,
        "key_commitment": p.key_commitment,
        "chunk_log2": p.chunk_log2,
        "header_len": len(table_bytes),
        "tags_len": p.tags_len,
        "data_len": p.data_len,
        "recipients_len": p.recipients_len,
    }
    fields.update(preamble_changes or {})
    new = Preamble(**fields)  # type: ignore[arg-type]
    hs = writer_key.header_secret(p.file_id)
    hkeys = derive_header_keys(hs)
    core = new.authenticated_core()
    digest = header_digest(core, table_bytes)
    grant = writer_key.tensor_keys(p.file_id, range(len(entries)))
    from weightvault.format.keys import unlock

    unlocked = unlock(grant, p.file_id, hkeys.commitment)
    buf = bytearray(new.file_size)
    buf[0:128] = new.to_bytes()
    context = new.stanza_context()
    buf[128 : 128 + new.recipients_len] = encode_recipients_region(
        [KEK(bytes(range(1, 33))).wrap(writer_key, context)],
        new.recipients_len,
        hkeys.recipients_mac_key,
        new.recipients_mac_context(),
    )
    buf[new.header_offset : new.header_offset + len(table_bytes)] = table_bytes
    tags = bytearray()
    for e in entries:
        stream = TensorStream.create(
            new.suite,
            unlocked.tensor_aead_key(e.index),
            file_id=p.file_id,
            header_digest=digest,
            tensor_index=e.index,
            name=e.name,
            nbytes=e.nbytes,
            chunk_log2=new.chunk_log2,
        )
        plain = original[e.index]
        for j in range(stream.count):
            c0, c1 = stream.chunk_bounds(j)
            out_buf = bytearray(c1 - c0 + 16)
            stream.encrypt_chunk_into(j, memoryview(plain)[c0:c1], memoryview(out_buf))
            start = new.data_offset + e.offset + c0
            buf[start : start + c1 - c0] = out_buf[: c1 - c0]
            tags += out_buf[c1 - c0 :]
    tags = tags[: new.tags_len].ljust(new.tags_len, b"\0")
    buf[new.tags_offset : new.tags_offset + new.tags_len] = tags
    mac = hmac_sha256(hkeys.mac_key, [core, table_bytes, bytes(tags)])
    buf[new.mac_offset : new.mac_offset + MAC_BYTES] = mac
    assert new.data_offset == align_up(new.mac_offset + MAC_BYTES, ALIGNMENT)
    out.write_bytes(bytes(buf))


def _header_json(path: Path, file_key: FileKey) -> bytes:
    with SealedFile(path) as sealed:
        return sealed.unlock(file_key).table.to_bytes()


def shared_vectors_dir() -> Path:
    """The team's vendored public vectors (``../shared/vectors`` beside the checkout).

    Looked up in $WV_SHARED_VECTORS, then beside the repository, then at the
    workplace's fixed location. Missing vectors are an error, never a skip.
    """
    import os

    candidates = [
        os.environ.get("WV_SHARED_VECTORS", ""),
        str(Path(__file__).resolve().parents[2] / "shared" / "vectors"),
        "/work/shared/vectors",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "rfc6962" / "testdata").is_dir():
            return Path(candidate)
    raise RuntimeError(f"shared test vectors not found in {candidates}; set WV_SHARED_VECTORS")


def require_tpm2_pytss() -> None:
    """Skip (locally) or fail (CI=true) when tpm2-pytss is not installed."""
    import os

    import pytest

    try:
        import tpm2_pytss  # noqa: F401
    except ImportError:
        message = "needs tpm2-pytss: apt-get install libtss2-dev pkg-config; pip install -e '.[tpm]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


def require_module(name: str) -> Any:
    """Import an optional dependency, or skip (locally) / fail (CI=true) with the reason."""
    import importlib
    import os

    import pytest

    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"needs {name}: pip install -e '.[gpu]' (make installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


def kernel_device() -> Any:
    """Where the GPU kernel tests run: CUDA when ``TRITON_INTERPRET=0``, else the CPU under the interpreter.

    The kernel test modules default ``TRITON_INTERPRET`` to 1 (CI has no GPU). On a GPU
    machine, ``TRITON_INTERPRET=0 pytest tests/unit/gpu`` runs the same tests with the
    compiled kernels on the device; without CUDA that setting skips them.
    """
    import os

    import pytest
    import torch

    if os.environ.get("TRITON_INTERPRET") != "0":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("TRITON_INTERPRET=0 needs a CUDA device", allow_module_level=True)
    return torch.device("cuda:0")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files in ``directory`` (cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def ec_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """A fresh EC P-256 key pair in PEM files (the key method of OpenSSF model signing):
    ``name.pem`` (mode 0600) and ``name.pub.pem``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def make_crl(
    issuer: x509.Certificate,
    key: Any,
    revoked: Sequence[int],
    *,
    at: datetime.datetime,
    next_update: datetime.datetime | None = None,
    hash_name: str = "sha384",
    rsa_padding: Any = None,
    numbered: bool = False,
) -> x509.CertificateRevocationList:
    """A CRL that ``key`` signs for ``issuer`` (a certificate), issued a day before ``at``, next update
    30 days after (or ``next_update``), revoking ``revoked`` at ``at``; ``numbered`` adds the CRL number
    and authority key id that Intel's CRLs carry."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(at - datetime.timedelta(days=1))
        .next_update(next_update or at + datetime.timedelta(days=30))
    )
    if numbered:
        builder = builder.add_extension(x509.CRLNumber(1), critical=False).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build()
        )
    digest = hashes.SHA384() if hash_name == "sha384" else hashes.SHA256()
    if rsa_padding is not None:
        return builder.sign(key, digest, rsa_padding=rsa_padding)
    return builder.sign(key, digest)
