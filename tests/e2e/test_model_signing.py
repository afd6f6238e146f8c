"""OpenSSF model signing, both ways, with the real model_signing library and its own command line.

Outbound: ``weightvault seal --sign-key`` signs the sealed directory, and ``model_signing verify
key`` (OpenSSF's tool, knowing nothing of weightvault) accepts it, then refuses it after any
change: a sealed file, weightvault's manifest, an added file, another key, a damaged signature.
Inbound: ``weightvault seal --require-signature`` seals a plain model only when the signature
that ``model_signing sign key`` made verifies, and writes nothing otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.helpers import ec_keypair
from weightvault.errors import ConfigError, ModelSignatureError
from weightvault.format.manifest import MANIFEST_NAME
from weightvault.sealing.signatures import SIGNATURE_NAME, sign_model_dir, verify_model_dir

pytestmark = pytest.mark.e2e
pytest.importorskip("model_signing")


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=180, check=False)


def wv(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return _run("-m", "weightvault", *args)


def openssf_verify(model: Path, public: Path, signature: Path | None = None) -> subprocess.CompletedProcess[str]:
    sig = signature or model / SIGNATURE_NAME
    return _run("-m", "model_signing", "verify", "key", model, "--signature", sig, "--public_key", public)


def openssf_sign(model: Path, private: Path) -> subprocess.CompletedProcess[str]:
    sig = model / SIGNATURE_NAME
    return _run("-m", "model_signing", "sign", "key", model, "--signature", sig, "--private_key", private)


@pytest.fixture
def plain_model(tmp_path: Path) -> Path:
    model = tmp_path / "plain"
    model.mkdir()
    rng = np.random.default_rng(3)
    save_file({"w": rng.standard_normal((64, 32), dtype=np.float32)}, str(model / "model.safetensors"))
    (model / "config.json").write_text(json.dumps({"model_type": "toy", "hidden_size": 32}))
    return model


def test_a_sealed_directory_signed_by_weightvault_verifies_with_openssf_tools_until_anything_changes(
    plain_model: Path, tmp_path: Path
) -> None:
    private, public = ec_keypair(tmp_path, "publisher")
    _, other = ec_keypair(tmp_path, "someone-else")
    sealed = tmp_path / "sealed"
    done = wv("seal", plain_model, sealed, "--key-out", tmp_path / "file.key", "--sign-key", private)
    assert 0 == done.returncode, done.stderr
    assert (sealed / SIGNATURE_NAME).is_file()
    ok = openssf_verify(sealed, public)
    assert 0 == ok.returncode, ok.stderr
    assert "Verification succeeded" in ok.stdout
    # weightvault's own check of the sealed directory accepts the signature file beside its manifest.
    checked = wv("verify", sealed, "-i", tmp_path / "file.key")
    assert 0 == checked.returncode, checked.stderr
    assert 0 != openssf_verify(sealed, other).returncode  # another key
    with pytest.raises(ModelSignatureError, match="another key"):
        verify_model_dir(sealed, other)

    def refused_after(change: str) -> None:
        assert 0 != openssf_verify(sealed, public).returncode, change
        with pytest.raises(ModelSignatureError, match=change):
            verify_model_dir(sealed, public)

    sealed_file = next(p for p in sealed.iterdir() if p.name.endswith(".wvlt"))
    original = sealed_file.read_bytes()
    sealed_file.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    refused_after(f"{sealed_file.name} changed after signing")
    sealed_file.write_bytes(original)
    manifest = sealed / MANIFEST_NAME
    manifest_bytes = manifest.read_bytes()
    manifest.write_bytes(manifest_bytes + b" ")
    refused_after(f"{manifest.name} changed after signing")
    manifest.write_bytes(manifest_bytes)
    (sealed / "extra.txt").write_text("added later")
    refused_after("extra.txt added after signing")
    (sealed / "extra.txt").unlink()
    signature = (sealed / SIGNATURE_NAME).read_text()
    (sealed / SIGNATURE_NAME).write_text(signature[: len(signature) // 2])
    refused_after("damaged")
    (sealed / SIGNATURE_NAME).write_text(signature)
    assert 0 == openssf_verify(sealed, public).returncode  # restored: accepted again


def test_sealing_requires_the_plain_models_openssf_signature_when_asked(plain_model: Path, tmp_path: Path) -> None:
    private, public = ec_keypair(tmp_path, "trainer")
    _, other = ec_keypair(tmp_path, "someone-else")
    signed = openssf_sign(plain_model, private)
    assert 0 == signed.returncode, signed.stderr
    assert (plain_model / SIGNATURE_NAME).is_file()
    out = tmp_path / "sealed"
    done = wv("seal", plain_model, out, "--key-out", tmp_path / "k", "--require-signature", public)
    assert 0 == done.returncode, done.stderr
    assert "signature verified" in done.stdout
    assert not (out / SIGNATURE_NAME).exists()  # the plain model's signature is not carried over
    assert SIGNATURE_NAME not in json.dumps([p.name for p in out.iterdir()])

    def refused(*extra: str | Path, why: str) -> None:
        target = tmp_path / "refused"
        r = wv("seal", plain_model, target, "--key-out", tmp_path / "k2", "--require-signature", *extra)
        assert 17 == r.returncode, r.stderr
        lines = r.stderr.strip().splitlines()
        assert why in lines[0]  # one line says why; a second may hint at the remedy
        assert len(lines) <= 2
        assert not target.exists()  # nothing sealed

    refused(other, why="another key")
    weights = plain_model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-4] + b"\0\0\0\0")
    refused(public, why="model.safetensors changed after signing")
    weights.write_bytes(data)
    # A signature over other files: the same key signed another directory.
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(plain_model, elsewhere)
    (elsewhere / "config.json").write_text("{}")
    (elsewhere / SIGNATURE_NAME).unlink()
    assert 0 == openssf_sign(elsewhere, private).returncode
    refused(public, "--signature", elsewhere / SIGNATURE_NAME, why="config.json changed after signing")
    (plain_model / SIGNATURE_NAME).unlink()
    refused(public, why="has no OpenSSF signature")


def test_signing_failures_leave_nothing_and_the_library_is_optional(
    plain_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad_key = tmp_path / "bad.pem"
    bad_key.write_text("not a key")
    sealed = tmp_path / "sealed"
    r = wv("seal", plain_model, sealed, "--key-out", tmp_path / "k", "--sign-key", bad_key)
    assert 60 == r.returncode, r.stderr
    assert not sealed.exists()  # sealed, then removed: no unsigned result where a signed one was asked
    with pytest.raises(ConfigError, match="not a PEM public key"):
        verify_model_dir(plain_model, bad_key)
    monkeypatch.setitem(sys.modules, "model_signing", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'weightvault\[signing\]'"):
        sign_model_dir(plain_model, bad_key)


def test_a_signed_model_registers_with_its_signer_as_a_claim_and_forgeries_are_refused(
    plain_model: Path, tmp_path: Path
) -> None:
    """``[models] signers``: ``publish --sign-key`` registers a model whose signature the broker
    checked; its signer is the claim ``model.signer``, which a release policy can require (an
    unsigned model under that policy is not released). A stranger's signature, or a valid
    signature sent with another model's files, is refused. (``require_signature`` refusing
    unsigned models: tests/unit/broker/test_model_signatures.py.)"""
    from tests.e2e.broker_fixture import running_broker
    from weightvault.client.broker import BrokerClient, SampleAttester, registration_files
    from weightvault.errors import ReleaseDeniedError
    from weightvault.format.keys import FileKey
    from weightvault.sealing import read_key_file
    from weightvault.sealing.model_dir import read_manifest

    private, public = ec_keypair(tmp_path, "release")
    stranger, _ = ec_keypair(tmp_path, "stranger")
    models = f'[models]\nsigners = {{ release = "{public}" }}\n'
    weights = tmp_path / "w.safetensors"
    save_file({"w": np.zeros(16, dtype=np.float32)}, str(weights))
    with running_broker(tmp_path, weights, extra_config=models) as broker:
        pub = ["--broker", broker.url, "--token", broker.tokens["acme-pub"]]
        rule = {"allOf": [{"claim": "tenant", "equals": "acme"}, {"claim": "model.signer", "equals": "release"}]}
        policy = {"verifiers": ["insecure-sample"], "resources": ["acme/models/*"], "rule": rule}
        broker.client("acme-admin").put_policy("acme", "signed-only", policy)

        def publish(name: str, *extra: str | Path) -> subprocess.CompletedProcess[str]:
            return wv(
                "publish", plain_model, tmp_path / name, "--tenant", "acme", "--name", name, "--version", "1",
                "--policy", "signed-only", *pub, *extra,
            )  # fmt: skip

        strange = publish("strange", "--sign-key", stranger)
        assert 17 == strange.returncode, strange.stderr
        assert "no configured signer" in strange.stderr
        signed = publish("signed", "--sign-key", private)
        assert 0 == signed.returncode, signed.stderr
        assert 0 == openssf_verify(tmp_path / "signed", public).returncode
        unsigned = publish("unsigned")
        assert 0 == unsigned.returncode, unsigned.stderr  # no signature required here
        found = broker.client("acme-pub").request("GET", "/v1/tenants/acme/models")["models"]
        signers = {m["resource"]: m["signer"] for m in found}
        assert "release" == signers["acme/models/signed@1"]
        assert signers["acme/models/unsigned@1"] is None
        assert "acme/models/strange@1" not in signers
        with BrokerClient(broker.url, broker.tokens["acme-wl"]) as client:
            session, _ = client.attest(SampleAttester())
            assert client.release(session, "acme/models/signed@1").file_key is not None
            with pytest.raises(ReleaseDeniedError):
                client.release(session, "acme/models/unsigned@1")  # no model.signer claim

        # A valid signature and manifest (with their own file key), sent with another model's files.
        key_file, sealed_dir, other = tmp_path / "own.key", tmp_path / "own", tmp_path / "other"
        assert 0 == wv("seal", plain_model, sealed_dir, "--key-out", key_file, "--sign-key", private).returncode
        assert 0 == wv("seal", plain_model, other, "--key-out", tmp_path / "other.key").returncode
        own_key = read_key_file(key_file)
        assert isinstance(own_key, FileKey)
        with pytest.raises(ModelSignatureError, match="not the sealed files of the signed"):
            broker.client("acme-pub").register_model(
                "acme", "forged", "1", policy="signed-only", file_key=own_key,
                files=registration_files(read_manifest(other)),
                signature=(sealed_dir / SIGNATURE_NAME).read_bytes(),
                manifest=(sealed_dir / MANIFEST_NAME).read_bytes(),
            )  # fmt: skip
