"""The installed wheel with each extra alone: every optional feature works from ``pip install 'weightvault[x]'``.

Run by scripts/wheel-check.sh (part of ``make test``), which builds the wheel and passes its
path in ``WEIGHTVAULT_WHEEL``; other test runs skip this module. Each test makes a clean
virtual environment, installs the wheel (never the source tree) with one extra, and uses
that extra's feature through the installed console script or the public API, in a working
directory outside the checkout. One environment per extra, so an extra that forgets a
dependency another extra brings (as model_signing forgets pyOpenSSL) fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

WHEEL = os.environ.get("WEIGHTVAULT_WHEEL", "")
if not WHEEL:
    pytest.skip("scripts/wheel-check.sh runs these with the wheel it builds", allow_module_level=True)

pytestmark = pytest.mark.slow

# The CPU build of torch that lies on these machines' disk (the Makefile's TORCH_SPEC): the
# extras allow any torch in range, and pip would otherwise fetch the newest CUDA build.
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")


class Venv:
    """A clean virtual environment holding the wheel with ``extra`` and nothing else."""

    def __init__(self, root: Path, extra: str, *, with_torch: bool = False) -> None:
        self.root = root
        self.bin = root / "venv" / "bin"
        self.work = root / "work"
        self.work.mkdir()
        subprocess.run([sys.executable, "-m", "venv", root / "venv"], check=True)
        spec = f"{WHEEL}[{extra}]"
        # --no-compile: byte-compiling torch and transformers takes longer than the test itself.
        install: list[str | Path] = [self.bin / "python", "-m", "pip", "install", "--quiet", "--no-compile", spec]
        done = subprocess.run(
            [*install, *([TORCH_SPEC] if with_torch else [])],
            cwd=self.work,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"pip install {spec}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}

    def run(
        self, program: str, *args: str | Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.bin / program, *map(str, args)],
            check=False,
            cwd=self.work,
            env=self.env | (env or {}),
            capture_output=True,
            text=True,
            timeout=600,
        )

    def ok(self, program: str, *args: str | Path, env: dict[str, str] | None = None) -> str:
        done = self.run(program, *args, env=env)
        assert done.returncode == 0, f"{program} {args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def python(self, script: str, env: dict[str, str] | None = None) -> str:
        return self.ok("python", "-c", textwrap.dedent(script), env=env)


def _installed_from_wheel(venv: Venv) -> None:
    where = venv.python("import weightvault; print(weightvault.__file__)").strip()
    assert where.startswith(str(venv.root / "venv")), where


def _plain_file(path: Path) -> Path:
    from safetensors.numpy import save_file

    save_file({"w": np.arange(4096, dtype=np.float32), "b": np.ones((3, 5), dtype=np.float16)}, str(path))
    return path


def _sealed_file(venv: Venv, *extra: str) -> Path:
    _plain_file(venv.work / "model.safetensors")
    venv.ok("weightvault", "keygen", "hpke", "id.key")
    venv.ok("weightvault", "seal", "model.safetensors", "model.wvlt", "--recipient", "id.key.pub", *extra)
    return venv.work / "model.wvlt"


def test_s3_extra_reads_sealed_weights_from_an_s3_server(tmp_path: Path) -> None:
    boto3 = pytest.importorskip("boto3")
    from tests.remote_servers import moto_s3

    venv = Venv(tmp_path, "s3")
    _installed_from_wheel(venv)
    sealed = _sealed_file(venv)
    with moto_s3() as endpoint:
        client = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
        )
        client.create_bucket(Bucket="weights")
        client.put_object(Bucket="weights", Key="m/model.wvlt", Body=sealed.read_bytes())
        aws = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }
        report = json.loads(
            venv.ok("weightvault", "verify", "s3://weights/m/model.wvlt", "--identity", "id.key", "--json", env=aws)
        )
        assert report["ok"] is True
        # A flipped byte in the object is refused as on local disk.
        tampered = bytearray(sealed.read_bytes())
        tampered[-1] ^= 1
        client.put_object(Bucket="weights", Key="m/model.wvlt", Body=bytes(tampered))
        done = venv.run("weightvault", "verify", "s3://weights/m/model.wvlt", "--identity", "id.key", env=aws)
        assert done.returncode != 0
        assert "Traceback" not in done.stderr


def test_postgresql_extra_runs_a_broker_on_postgresql(tmp_path: Path) -> None:
    from tests.databases import PostgresCluster

    venv = Venv(tmp_path, "postgresql")
    _installed_from_wheel(venv)
    cluster = PostgresCluster().init().start()  # its own directory: the server's user cannot enter tmp_path
    try:
        url = cluster.create_database()
        venv.ok("weightvault", "broker", "init", "broker", "--database-url", url)
        config = venv.work / "broker" / "broker.toml"
        checks = json.loads(venv.run("weightvault", "doctor", "--config", config, "--json").stdout)
        database = [c for c in checks if c["name"] == "database"]
        assert [c["status"] for c in database] == ["ok"], checks
    finally:
        cluster.destroy()


def test_signing_extra_signs_what_the_openssf_tool_verifies(tmp_path: Path) -> None:
    from tests.helpers import ec_keypair

    venv = Venv(tmp_path, "signing")
    _installed_from_wheel(venv)
    model = venv.work / "plain"
    model.mkdir()
    _plain_file(model / "model.safetensors")
    (model / "config.json").write_text("{}")
    private, public = ec_keypair(venv.work, "signer")
    venv.ok("weightvault", "keygen", "hpke", "id.key")
    venv.ok("weightvault", "seal", model, "sealed", "--recipient", "id.key.pub", "--sign-key", private)
    sealed = venv.work / "sealed"
    verify = ("model_signing", "verify", "key", sealed, "--signature", sealed / "model.sig", "--public_key", public)
    venv.ok(*verify)
    (sealed / "extra.txt").write_text("added after signing")
    assert venv.run(*verify).returncode != 0


def test_tpm_extra_talks_to_a_tpm(tmp_path: Path, swtpm: object) -> None:
    venv = Venv(tmp_path, "tpm")
    _installed_from_wheel(venv)
    tcti = swtpm.tcti  # type: ignore[attr-defined]
    pcrs = json.loads(venv.ok("weightvault", "device", "pcrs", "--tcti", tcti, "--json"))
    assert pcrs["0"] == "00" * 32, pcrs  # a fresh software TPM: PCR 0 still all zeroes


def test_torch_extra_loads_sealed_tensors_into_torch(tmp_path: Path) -> None:
    venv = Venv(tmp_path, "torch", with_torch=True)
    _installed_from_wheel(venv)
    _sealed_file(venv)
    venv.python(
        """
        import torch
        from weightvault import read_key_file
        from weightvault.loaders.torch import load_file
        state = load_file("model.wvlt", read_key_file("id.key"))
        assert torch.equal(state["w"], torch.arange(4096, dtype=torch.float32))
        assert state["b"].dtype == torch.float16 and torch.equal(state["b"], torch.ones(3, 5, dtype=torch.float16))
        """
    )


def test_transformers_extra_loads_a_sealed_model_that_answers_like_the_plain_one(
    tmp_path: Path, minilm_dir: Path
) -> None:
    import torch

    from tests.serving_models import build_tiny_lm

    venv = Venv(tmp_path, "transformers", with_torch=True)
    _installed_from_wheel(venv)
    plain = build_tiny_lm(venv.work / "plain", minilm_dir)
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(plain)).eval()  # type: ignore[no-untyped-call]
    ids = torch.tensor([[2, 5, 7, 11, 13]])
    with torch.no_grad():
        expected = model(ids).logits.numpy()
    np.save(venv.work / "expected.npy", expected)
    venv.ok("weightvault", "keygen", "hpke", "id.key")
    venv.ok("weightvault", "seal", plain, "sealed", "--recipient", "id.key.pub")
    venv.python(
        """
        import numpy as np, torch, transformers
        from weightvault import read_key_file
        from weightvault.loaders.transformers import from_pretrained
        model = from_pretrained(transformers.AutoModelForCausalLM, "sealed", read_key_file("id.key")).eval()
        with torch.no_grad():
            logits = model(torch.tensor([[2, 5, 7, 11, 13]])).logits.numpy()
        np.testing.assert_allclose(logits, np.load("expected.npy"), rtol=1e-5, atol=1e-5)
        """
    )


def test_gpu_extra_decrypts_with_the_device_kernels(tmp_path: Path) -> None:
    """The ChaCha20-Poly1305 kernels from the wheel, under Triton's interpreter on this CPU machine."""
    venv = Venv(tmp_path, "gpu", with_torch=True)
    _installed_from_wheel(venv)
    _sealed_file(venv, "--suite", "chacha20-poly1305")
    venv.python(
        """
        import torch
        from weightvault import read_key_file
        from weightvault.loaders.torch import load_file
        keys = read_key_file("id.key")
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
        ours = load_file("model.wvlt", keys, device, kernels=True)
        reference = load_file("model.wvlt", keys, kernels=False)
        assert set(ours) == set(reference) == {"w", "b"}
        assert all(torch.equal(ours[n].cpu(), reference[n]) for n in ours)
        """,
        env={"TRITON_INTERPRET": "1"},
    )


def test_tdx_extra_verifies_a_real_tdx_quote(tmp_path: Path) -> None:
    venv = Venv(tmp_path, "tdx")
    _installed_from_wheel(venv)
    vectors = Path(__file__).parents[1] / "vectors" / "tdx"
    for name in ("tdx_quote", "tdx_quote_collateral.json"):
        (venv.work / name).write_bytes((vectors / name).read_bytes())
    venv.python(
        """
        import datetime, json
        from pathlib import Path
        from weightvault.attestation.tdx.verifier import TDXVerifier
        quote = Path("tdx_quote").read_bytes()
        mrtd = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
        verifier = TDXVerifier([Path("tdx_quote_collateral.json").read_text()], [bytes.fromhex(mrtd)])
        when = int(datetime.datetime(2025, 7, 1, tzinfo=datetime.UTC).timestamp())
        assert verifier.appraise_quote(quote, when).claims["tdx.tcb_status"] == "UpToDate"
        """
    )


def test_nvidia_extra_verifies_a_real_h100_report_against_nvidias_rims(tmp_path: Path) -> None:
    venv = Venv(tmp_path, "nvidia")
    _installed_from_wheel(venv)
    vectors = Path(__file__).parents[1] / "vectors" / "nvidia"
    for path in vectors.iterdir():
        (venv.work / path.name).write_bytes(path.read_bytes())
    venv.python(
        """
        import base64, datetime
        from pathlib import Path
        from weightvault.attestation.interfaces import AttestationContext
        from weightvault.attestation.nvidia.verifier import NvidiaGpuVerifier
        section = {
            "device_roots": ["verifier_device_root.pem"],
            "rim_roots": ["verifier_RIM_root.pem"],
            "driver_rims": ["Driver_RIM_test_no_gpu.swidtag"],
            "vbios_rims": ["1010_0200_882_96005E0001_test_no_gpu.swidtag"],
        }
        verifier = NvidiaGpuVerifier.from_config(section, Path("."))
        report = bytes.fromhex(Path("attestationReport.txt").read_text().strip())
        chain = Path("gpuAkCertChain.txt").read_bytes()
        gpu = {"report": base64.b64encode(report).decode(), "certificates": base64.b64encode(chain).decode()}
        evidence = {"type": "nvidia-gpu", "gpus": [{**gpu, "cc_mode": "on"}]}
        when = int(datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC).timestamp())
        context = AttestationContext("acme", "c", bytes(32), bytes(32), when)
        result = verifier.appraise_bound(evidence, context, report[4:36])
        assert result.claims["gpu.driver_version"] == "545.00", result.claims
        """
    )
