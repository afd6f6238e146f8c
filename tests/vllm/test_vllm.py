"""vLLM serves a sealed model through the ``weightvault`` load format, on vLLM's CPU build.

Runs in a virtual environment of its own (``make vllm-check``, scripts/vllm-check.sh): vLLM
pins its own transformers, numpy and FastAPI. Elsewhere it is skipped. A small Llama is built
here with random weights (its output layer scaled so that greedy decoding has clear winners),
sealed with weightvault, and served by vLLM: its greedy completion must be the one transformers
gives on the plain model. Keys come from a key file, then by attestation from a real broker
(``weightvault broker serve``) exactly as ``weightvault load`` gets them; a wrong key or a broker
that refuses makes the load fail, and vLLM serves nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("vllm")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.filterwarnings("ignore")]

PROMPT = [1, 17, 42, 99, 7]
TOKENS = 8


def wv(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "weightvault", *map(str, args)], check=False, capture_output=True, text=True, timeout=300
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """A plain small Llama and the greedy completion transformers gives for PROMPT."""
    plain = tmp_path_factory.mktemp("vllm") / "plain"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(plain, safe_serialization=True)
    with torch.no_grad():
        out = model.generate(torch.tensor([PROMPT]), max_new_tokens=TOKENS, do_sample=False)
    return plain, out[0, len(PROMPT) :].tolist()


def _vllm_complete(model_dir: Path, extra: dict[str, str]) -> list[int]:
    """One greedy completion by vLLM (in a subprocess: an engine per process, freed when it ends)."""
    script = f"""
import json, sys
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    llm = LLM(model={str(model_dir)!r}, load_format="weightvault", model_loader_extra_config={extra!r},
              skip_tokenizer_init=True, dtype="float32", enforce_eager=True, max_model_len=128, max_num_seqs=1)
    out = llm.generate([{{"prompt_token_ids": {PROMPT!r}}}], SamplingParams(max_tokens={TOKENS}, temperature=0))
    print("TOKENS " + json.dumps(list(out[0].outputs[0].token_ids)))
"""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("TOKENS ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(done.stdout + done.stderr)  # whole: vLLM logs its workers' errors to stdout
    return list(json.loads(lines[0][len("TOKENS ") :]))


def test_vllm_serves_a_sealed_model_as_transformers_serves_the_plain_one(
    models: tuple[Path, list[int]], tmp_path: Path
) -> None:
    plain, expected = models
    sealed = tmp_path / "sealed"
    wv("seal", plain, sealed, "--key-out", tmp_path / "file.key")
    assert not any(p.name.endswith(".safetensors") for p in sealed.iterdir())  # only sealed weights
    assert expected == _vllm_complete(sealed, {"identity": str(tmp_path / "file.key")})
    wv("keygen", "kek", tmp_path / "wrong.kek")
    with pytest.raises(RuntimeError, match=r"weightvault\.errors\.NoMatchingRecipientError"):
        _vllm_complete(sealed, {"identity": str(tmp_path / "wrong.kek")})
    with pytest.raises(RuntimeError, match="unknown weightvault loader option"):
        _vllm_complete(sealed, {"identity": str(tmp_path / "file.key"), "typo": "x"})
    # vLLM reads config.json itself, before the loader: a changed one is refused, and nothing is served.
    config = json.loads((sealed / "config.json").read_text())
    (sealed / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 0.5}))
    with pytest.raises(RuntimeError, match=r"weightvault\.errors\.ManifestError: config\.json does not match"):
        _vllm_complete(sealed, {"identity": str(tmp_path / "file.key")})


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real broker (insecure-sample attestation enabled): its URL and operator token."""
    import httpx

    base = tmp_path / "broker"
    wv("broker", "init", base, "--insecure-sample")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "weightvault", "broker", "serve", "--config", base / "broker.toml", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, "the broker exited"
            assert time.monotonic() < deadline, "the broker did not start"
            time.sleep(0.3)
        yield url, (base / "operator.token").read_text().strip()
    finally:
        server.terminate()
        server.wait(30)


def test_vllm_gets_the_key_by_attestation_from_the_broker_and_a_refusal_serves_nothing(
    models: tuple[Path, list[int]], broker: tuple[str, str], tmp_path: Path
) -> None:
    from weightvault.client.broker import BrokerClient

    plain, expected = models
    url, operator_token = broker
    with BrokerClient(url, operator_token) as operator:
        for tenant in ("acme", "globex"):
            operator.create_tenant(tenant)
        admin_token = operator.create_principal("acme-admin", "tenant-admin", "acme")
        publisher_token = operator.create_principal("acme-pub", "publisher", "acme")
        workload = operator.create_principal("acme-wl", "workload", "acme")
        stranger = operator.create_principal("globex-wl", "workload", "globex")
    policy = {
        "verifiers": ["insecure-sample"],
        "resources": ["acme/models/*"],
        "rule": {"claim": "tenant", "equals": "acme"},
    }
    with BrokerClient(url, admin_token) as admin:
        admin.put_policy("acme", "open", policy)
    sealed = tmp_path / "sealed"
    wv(
        "publish", plain, sealed, "--tenant", "acme", "--name", "tiny", "--version", "1", "--policy", "open",
        "--broker", url, "--token", publisher_token,
    )  # fmt: skip
    tokens = {}
    for name, value in (("workload", workload), ("stranger", stranger)):
        tokens[name] = tmp_path / f"{name}.token"
        tokens[name].write_text(value)
        tokens[name].chmod(0o600)
    options = {"broker": url, "token": f"@{tokens['workload']}", "attester": "sample"}
    assert expected == _vllm_complete(sealed, options)
    with pytest.raises(RuntimeError, match=r"weightvault\.errors\.(PermissionDeniedError|ReleaseDeniedError)"):
        _vllm_complete(sealed, {**options, "token": f"@{tokens['stranger']}"})  # another tenant's workload: no key
    with pytest.raises(RuntimeError, match="never itself: vLLM logs its arguments"):
        _vllm_complete(sealed, {**options, "token": workload})  # refused, so that nobody keeps doing it
