"""Sealed weights streamed from nginx, from an S3 server (moto), and from a server that lies.

Every byte read remotely is verified exactly as on local disk, so a server that lies gets
the errors a tampered file gets; a flaky one costs retries, never correctness.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.broker_fixture import Broker, running_broker
from tests.remote_servers import lying_server, moto_s3, nginx
from weightvault.errors import FormatError, ManifestError, PayloadError, TransportError, WeightVaultError
from weightvault.format.keys import FileKey
from weightvault.loaders import numpy as wv_numpy
from weightvault.sealing import SealedModel, seal_model_dir, seal_safetensors
from weightvault.sealing import sources as src_mod

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> tuple[Path, FileKey]:
    """A directory to serve: MiniLM sealed (``minilm/``) and one multi-chunk sealed file (``one.wvlt``)."""
    root = tmp_path_factory.mktemp("served")
    key = FileKey.generate()
    seal_model_dir(minilm_dir, root / "minilm", file_key=key)
    rng = np.random.default_rng(11)
    from safetensors.numpy import save_file

    plain = tmp_path_factory.mktemp("plain") / "p.safetensors"
    save_file({"w": rng.standard_normal((256, 1024), dtype=np.float32), "b": np.arange(7)}, str(plain))
    seal_safetensors(plain, root / "one.wvlt", file_key=key)
    return root, key


@pytest.fixture(scope="module")
def http_base(served: tuple[Path, FileKey]) -> Iterator[str]:
    with nginx(served[0]) as base:
        yield base


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for name, value in a.items():
        assert value.dtype == b[name].dtype
        assert np.array_equal(value, b[name]), name


def test_a_sealed_file_over_http_loads_exactly_as_from_disk(served: tuple[Path, FileKey], http_base: str) -> None:
    root, key = served
    _same(wv_numpy.load_file(root / "one.wvlt", key), wv_numpy.load_file(f"{http_base}/one.wvlt", key))


def test_a_sealed_model_over_http_loads_into_transformers_and_verifies(
    served: tuple[Path, FileKey], http_base: str
) -> None:
    """The whole model directory, public files (config, tokenizer) included, from URLs only."""
    import torch
    import transformers

    from weightvault.loaders import torch as wv_torch
    from weightvault.loaders import transformers as wv_tf

    root, key = served
    url = f"{http_base}/minilm"
    local, remote = wv_torch.load_model(root / "minilm", key), wv_torch.load_model(url, key)
    assert set(local) == set(remote)
    assert all(torch.equal(local[n], remote[n]) for n in local)
    model = wv_tf.from_pretrained(transformers.AutoModel, url, key)
    tokenizer = wv_tf.load_tokenizer(url, key)
    with torch.no_grad():
        out = model(**tokenizer(["sealed weights over HTTP"], return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == model.config.hidden_size
    SealedModel.open(url, key).verify()


def test_a_tampered_file_fails_over_http_exactly_as_on_disk(
    served: tuple[Path, FileKey], http_base: str, tmp_path: Path
) -> None:
    root, key = served
    bad = root / "bad.wvlt"
    shutil.copy(root / "one.wvlt", bad)
    data = bytearray(bad.read_bytes())
    data[len(data) - 5000] ^= 0x40  # a byte of tensor data
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightVaultError) as on_disk:
        wv_numpy.load_file(bad, key)
    with pytest.raises(WeightVaultError) as over_http:
        wv_numpy.load_file(f"{http_base}/bad.wvlt", key)
    assert isinstance(on_disk.value, PayloadError)
    assert (type(on_disk.value), str(on_disk.value)) == (type(over_http.value), str(over_http.value))


def test_a_member_missing_on_the_server_is_a_damaged_model(served: tuple[Path, FileKey], http_base: str) -> None:
    root, key = served
    partial = root / "partial"
    shutil.copytree(root / "minilm", partial)
    (partial / "model.safetensors.wvlt").unlink()
    with pytest.raises(FileNotFoundError):  # a lone file: what a missing local path raises
        wv_numpy.load_file(f"{http_base}/partial/model.safetensors.wvlt", key)
    with pytest.raises(ManifestError, match="missing"):
        SealedModel.open(f"{http_base}/partial", key)


@pytest.mark.parametrize(
    ("mode", "error", "match"),
    [
        ("truncate", TransportError, "closed"),  # every attempt cut short: give up, retryable
        ("shift", PayloadError, "answered bytes"),  # another range, announced
        ("lie", FormatError, "magic"),  # other bytes claimed to be ours: the magic, then everything, fails
        ("flip", PayloadError, "authentication|tag"),  # altered bytes
        ("no-range", TransportError, "range requests"),  # whole file, 200
        ("grow", PayloadError, "changed size"),  # the object grew between reads
        ("swap", PayloadError, "changed while being read"),  # replaced (ETag) between reads
    ],
)
def test_a_server_that_lies_or_fails_gets_a_clear_error_and_no_tensor(
    served: tuple[Path, FileKey], mode: str, error: type[Exception], match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(src_mod, "BACKOFF_S", 0.001)
    root, key = served
    with lying_server(root) as base, pytest.raises(error, match=match):
        wv_numpy.load_file(f"{base}/{mode}/one.wvlt", key)


def test_connections_are_kept_alive_between_ranges(tmp_path: Path) -> None:
    """Ranges reuse their connections (no TCP or TLS handshake per 4 MiB) once an answer is read whole."""
    from safetensors.numpy import save_file

    root = tmp_path / "keepalive"
    root.mkdir()
    key = FileKey.generate()
    rng = np.random.default_rng(4)
    save_file({f"t{i}": rng.standard_normal(1 << 20, dtype=np.float32) for i in range(6)}, str(tmp_path / "p.st"))
    seal_safetensors(tmp_path / "p.st", root / "m.wvlt", file_key=key)
    with lying_server(root) as base:
        wv_numpy.load_file(f"{base}/ok/m.wvlt", key, workers=1)
        stats = httpx.get(f"{base}/stats").json()
    loads = stats["connections"] - 2  # less the server's readiness probe and this stats request
    assert stats["ok"] >= 6  # the header, then a range per 4 MiB run
    assert loads <= 3 < stats["ok"], stats  # one connection per loading thread, reused across ranges


def test_a_server_with_weak_etags_is_read_without_if_match(served: tuple[Path, FileKey]) -> None:
    """A weak ETag never matches If-Match (strong comparison): the loader does not send it back."""
    root, key = served
    with lying_server(root) as base:
        _same(wv_numpy.load_file(root / "one.wvlt", key), wv_numpy.load_file(f"{base}/weak/one.wvlt", key))


def test_connections_dropped_halfway_are_resumed_and_lose_nothing(
    served: tuple[Path, FileKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every range is cut off halfway the first time: the loader resumes after the bytes it has."""
    monkeypatch.setattr(src_mod, "BACKOFF_S", 0.001)
    root, key = served
    with lying_server(root) as base:
        _same(wv_numpy.load_file(root / "one.wvlt", key), wv_numpy.load_file(f"{base}/drop-once/one.wvlt", key))
        stats = httpx.get(f"{base}/stats").json()
    assert stats["drop-once"] >= 4  # the first answer of each range was cut, then resumed


def test_lazy_access_fetches_only_the_chunks_it_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """safe_open over HTTP reads the header, then only the ranges of the tensor asked for."""
    from safetensors.numpy import save_file

    root = tmp_path / "lazy"
    root.mkdir()
    key = FileKey.generate()
    rng = np.random.default_rng(2)
    big = {f"big{i}": rng.standard_normal(1 << 20, dtype=np.float32) for i in range(4)}  # 4 x 4 MiB
    plain = tmp_path / "p.safetensors"
    save_file({**big, "small": np.arange(1000, dtype=np.float32)}, str(plain))
    seal_safetensors(plain, root / "m.wvlt", file_key=key)
    size = (root / "m.wvlt").stat().st_size
    with lying_server(root) as base:
        with wv_numpy.safe_open(f"{base}/ok/m.wvlt", key) as f:
            assert np.array_equal(np.arange(1000, dtype=np.float32), f.get_tensor("small"))
            rows = f.get_slice("big2")[1000:1010]
        served_bytes = httpx.get(f"{base}/stats").json()["bytes:ok"]
    assert np.array_equal(big["big2"][1000:1010], rows)
    assert served_bytes < size // 10, (served_bytes, size)


def test_https_certificates_are_verified(
    served: tuple[Path, FileKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose certificate no trusted CA signed is refused at once (no retries); trusting it
    through SSL_CERT_FILE, as for any TLS client here, makes the same load work."""
    from tests.helpers import self_signed

    root, key = served
    cert, tls_key = self_signed(tmp_path)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with nginx(root, tls=(cert, tls_key)) as base:
        assert base.startswith("https://")
        with pytest.raises(TransportError, match="certificate verify failed"):
            wv_numpy.load_file(f"{base}/one.wvlt", key)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        _same(wv_numpy.load_file(root / "one.wvlt", key), wv_numpy.load_file(f"{base}/one.wvlt", key))


@pytest.fixture(scope="module")
def s3(served: tuple[Path, FileKey]) -> Iterator[str]:
    """moto's S3 server holding ``served`` under s3://weights/models/; yields the endpoint."""
    boto3 = pytest.importorskip("boto3")
    with moto_s3() as endpoint:
        client = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
        )
        client.create_bucket(Bucket="weights")
        root = served[0]
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            client.put_object(
                Bucket="weights", Key=f"models/{path.relative_to(root).as_posix()}", Body=path.read_bytes()
            )
        yield endpoint


@pytest.fixture
def s3_env(s3: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in {
        "AWS_ENDPOINT_URL": s3,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(name, value)
    return s3


def test_a_sealed_model_in_s3_loads_exactly_as_from_disk(served: tuple[Path, FileKey], s3_env: str) -> None:
    import torch

    from weightvault.loaders import torch as wv_torch

    root, key = served
    local, remote = wv_torch.load_model(root / "minilm", key), wv_torch.load_model("s3://weights/models/minilm", key)
    assert set(local) == set(remote)
    assert all(torch.equal(local[n], remote[n]) for n in local)
    _same(wv_numpy.load_file(root / "one.wvlt", key), wv_numpy.load_file("s3://weights/models/one.wvlt", key))
    SealedModel.open("s3://weights/models/minilm", key).verify()


def test_a_tampered_or_missing_object_in_s3_is_refused(served: tuple[Path, FileKey], s3_env: str) -> None:
    import boto3

    root, key = served
    client = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")
    data = bytearray((root / "one.wvlt").read_bytes())
    data[len(data) - 5000] ^= 0x40
    client.put_object(Bucket="weights", Key="tampered/one.wvlt", Body=bytes(data))
    with pytest.raises(PayloadError):
        wv_numpy.load_file("s3://weights/tampered/one.wvlt", key)
    with pytest.raises(ManifestError, match="not a sealed model directory"):
        SealedModel.open("s3://weights/nothing-here", key)


def test_weightvault_verify_checks_a_remote_model_and_names_a_tampered_one(
    served: tuple[Path, FileKey], http_base: str, tmp_path: Path
) -> None:
    """The CLI over HTTP: exit 0 for the intact model, 14 (data authentication) for the changed file."""
    from weightvault.sealing import write_key_file

    root, key = served
    key_file = tmp_path / "model.key"
    write_key_file(key_file, key)
    ok = _wv("verify", f"{http_base}/minilm", "-i", key_file, "--json")
    assert 0 == ok.returncode, ok.stderr
    assert {"ok": True, "files": len(SealedModel.open(root / "minilm", key).manifest.files)}.items() <= json.loads(
        ok.stdout
    ).items()
    bad = root / "bad-cli.wvlt"
    data = bytearray((root / "one.wvlt").read_bytes())
    data[len(data) - 5000] ^= 0x40
    bad.write_bytes(bytes(data))
    refused = _wv("verify", f"{http_base}/bad-cli.wvlt", "-i", key_file)
    assert 14 == refused.returncode, refused.stderr
    assert 1 <= len(refused.stderr.strip().splitlines()) <= 2


def _wv(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightvault", *map(str, args)], check=False, capture_output=True, text=True, timeout=120
    )


def test_weightvault_load_takes_a_url_and_gets_the_key_by_attestation(tmp_path: Path) -> None:
    """The CLI end to end: a broker releases the key of a model that nginx serves."""
    from safetensors.numpy import save_file

    plain = tmp_path / "p.safetensors"
    save_file({"w": np.arange(50_000, dtype=np.float32)}, str(plain))
    with running_broker(tmp_path, plain) as broker:
        model: Path = broker.models["acme"]
        with nginx(model.parent) as base:
            url = f"{base}/{model.name}"
            out = _wv_load(broker, url)
    report = json.loads(out)
    assert (1, url) == (report["tensors"], report["path"])


def _wv_load(broker: Broker, url: str) -> str:
    broker_options = ["--broker", broker.url, "--token", broker.tokens["acme-wl"]]
    result = subprocess.run(
        [sys.executable, "-m", "weightvault", "load", url, "--attester", "sample", "--json", *broker_options],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == result.returncode, result.stderr
    return result.stdout
