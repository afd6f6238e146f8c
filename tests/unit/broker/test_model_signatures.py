"""The broker checks a model's OpenSSF signature at registration (``[models] signers``): each way a
publisher could slip unsigned or other weights past it, and what a signed model becomes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.databases import fresh_url
from tests.helpers import ec_keypair
from tests.unit.broker.conftest import ADMIN, OPEN_POLICY, OPERATOR, PUBLISHER, Clock
from weightvault.attestation.registry import VerifierRegistry
from weightvault.attestation.unsafe import UnsafeSampleVerifier
from weightvault.auditlog import AuditLog, NoteSigner
from weightvault.broker.config import BrokerConfig
from weightvault.broker.keystore import RootKey
from weightvault.broker.service import KeyBroker, open_broker
from weightvault.broker.tokens import TokenSigner
from weightvault.client.broker import registration_files
from weightvault.crypto.keywrap import HPKEKem
from weightvault.crypto.signing import Ed25519Signer
from weightvault.errors import InvalidRequestError, ModelSignatureError
from weightvault.format.keys import FileKey
from weightvault.format.manifest import MANIFEST_NAME
from weightvault.format.recipients import HPKEIdentity
from weightvault.sealing import seal_model_dir
from weightvault.sealing.signatures import SIGNATURE_NAME, sign_model_dir

pytest.importorskip("model_signing")


@dataclass
class Signed:
    """A sealed model directory, its file key, and what a publisher sends."""

    directory: Path
    key: FileKey
    files: list[dict[str, str]]

    @property
    def signature(self) -> bytes:
        return (self.directory / SIGNATURE_NAME).read_bytes()

    @property
    def manifest(self) -> bytes:
        return (self.directory / MANIFEST_NAME).read_bytes()


def _sealed(tmp: Path, name: str, signer: Path | None) -> Signed:
    plain = tmp / f"{name}-plain"
    plain.mkdir()
    save_file({"w": np.full(64, len(name), dtype=np.float32)}, str(plain / "model.safetensors"))
    (plain / "config.json").write_text(json.dumps({"name": name}))
    key = FileKey.generate()
    result = seal_model_dir(plain, tmp / name, file_key=key)
    if signer is not None:
        sign_model_dir(tmp / name, signer)
    return Signed(tmp / name, key, registration_files(result.manifest))


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    return {n: ec_keypair(tmp_path, n) for n in ("release", "research", "stranger")}


@pytest.fixture
def broker(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> Iterator[KeyBroker]:
    clock = Clock()
    audit = AuditLog(tmp_path / "audit.db", NoteSigner("broker.test/audit", Ed25519Signer.generate()), clock=clock)
    config = BrokerConfig(
        base=tmp_path,
        broker_id="broker.test",
        model_signers={"release": str(keys["release"][1]), "research": str(keys["research"][1])},
        require_signature=True,
    )
    b = open_broker(
        fresh_url(tmp_path),
        RootKey.generate(),
        TokenSigner("broker.test", Ed25519Signer.generate()),
        VerifierRegistry({"insecure-sample": UnsafeSampleVerifier()}),
        audit,
        registration_key=HPKEIdentity.generate(HPKEKem.X25519),
        config=config,
        clock=clock,
        reader=audit,
    )
    b.bootstrap_operator()
    b.create_tenant(OPERATOR, "acme")
    b.put_policy(ADMIN, "acme", "open", OPEN_POLICY)
    yield b
    b.close()
    audit.close()


def _register(broker: KeyBroker, model: Signed, name: str, **changes: object) -> str:
    kw: dict[str, object] = {
        "policy": "open",
        "file_key": model.key,
        "files": model.files,
        "signature": model.signature if (model.directory / SIGNATURE_NAME).exists() else None,
        "manifest": model.manifest,
    }
    kw.update(changes)
    return broker.register_model(PUBLISHER, "acme", name, "1", **kw)


def test_a_model_signed_by_a_configured_signer_registers_with_that_signer(
    broker: KeyBroker, tmp_path: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    model = _sealed(tmp_path, "m", keys["research"][0])
    assert "acme/models/m@1" == _register(broker, model, "m")
    row = broker.store.catalogue.model("acme", "m", "1")
    assert row is not None
    assert "research" == row.signer  # the claim model.signer of release policies


@pytest.mark.parametrize(
    "attack",
    [
        "unsigned",
        "stranger",
        "signature only",
        "manifest of another model",
        "another model's files",
        "a file left out",
        "wrong file key",
        "garbage signature",
    ],
)
def test_every_way_around_the_signature_is_refused_and_nothing_is_registered(
    broker: KeyBroker, tmp_path: Path, keys: dict[str, tuple[Path, Path]], attack: str
) -> None:
    model = _sealed(tmp_path, "m", keys["release"][0])
    other = _sealed(tmp_path, "o", keys["release"][0])
    changes: dict[str, object] = {
        "unsigned": {"signature": None, "manifest": None},
        "stranger": {"signature": _sealed(tmp_path, "s", keys["stranger"][0]).signature},
        "signature only": {"manifest": None},
        "manifest of another model": {"manifest": other.manifest},
        "another model's files": {"files": other.files},
        "a file left out": {"files": model.files[1:] or [{"file_id": "0" * 64, "header_mac": "", "path": "x"}]},
        "wrong file key": {"file_key": FileKey.generate()},
        "garbage signature": {"signature": b'{"not": "a bundle"}'},
    }[attack]  # type: ignore[assignment]
    error = InvalidRequestError if attack == "signature only" else ModelSignatureError
    with pytest.raises(error):
        _register(broker, model, "m", **changes)
    assert broker.store.catalogue.model("acme", "m", "1") is None
