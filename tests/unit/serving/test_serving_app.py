"""The inference server's HTTP API in-process: OpenAI's shapes, strict parsing, limits, no logits."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from starlette.testclient import TestClient

from tests.serving_models import build_tiny_lm
from weightvault.serving.app import ServeLimits, create_serving_app
from weightvault.serving.runtime import ModelRuntime, detect_task

LM = "acme/models/tiny@1"
ENC = "acme/models/minilm@1"


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny", minilm_dir)


@pytest.fixture(scope="module")
def lm(lm_dir: Path) -> Iterator[TestClient]:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(lm_dir)).eval()  # type: ignore[no-untyped-call]
    runtime = ModelRuntime(model, transformers.AutoTokenizer.from_pretrained(str(lm_dir)), "generate", LM)
    with TestClient(create_serving_app(runtime, ServeLimits(max_tokens=64, max_logprobs=2))) as client:
        yield client


@pytest.fixture(scope="module")
def encoder(minilm_dir: Path) -> Iterator[TestClient]:
    model = transformers.AutoModel.from_pretrained(str(minilm_dir)).eval()
    runtime = ModelRuntime(model, transformers.AutoTokenizer.from_pretrained(str(minilm_dir)), "embed", ENC)
    with TestClient(create_serving_app(runtime, ServeLimits(max_input_tokens=128))) as client:
        yield client


def test_the_task_follows_the_architecture(lm_dir: Path, minilm_dir: Path) -> None:
    assert "generate" == detect_task(transformers.AutoConfig.from_pretrained(str(lm_dir)))
    assert "embed" == detect_task(transformers.AutoConfig.from_pretrained(str(minilm_dir)))


def test_greedy_completion_equals_transformers_generate(lm: TestClient, lm_dir: Path) -> None:
    body = lm.post("/v1/completions", json={"model": LM, "prompt": "hello world", "max_tokens": 10, "temperature": 0})
    doc = body.json()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(lm_dir)).eval()  # type: ignore[no-untyped-call]
    tok = transformers.AutoTokenizer.from_pretrained(str(lm_dir))
    ids = [model.config.bos_token_id, *tok("hello world", add_special_tokens=False)["input_ids"]]
    out = model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)
    assert tok.decode(out[0][len(ids) :], skip_special_tokens=True) == doc["choices"][0]["text"]
    assert {"prompt_tokens": len(ids), "completion_tokens": 10, "total_tokens": len(ids) + 10} == doc["usage"]
    assert "length" == doc["choices"][0]["finish_reason"]
    assert doc["choices"][0]["logprobs"] is None


def test_a_stream_is_one_event_per_token_and_ends_with_done(lm: TestClient) -> None:
    body = {"model": LM, "prompt": "hello", "max_tokens": 6, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    with lm.stream("POST", "/v1/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert "data: [DONE]" == events[-1]
    docs = [json.loads(e[6:]) for e in events[:-1]]
    assert 6 == sum(1 for d in docs if d["choices"] and d["choices"][0]["finish_reason"] is None)
    assert 6 == docs[-1]["usage"]["completion_tokens"]
    whole = lm.post("/v1/completions", json={**body, "stream": False, "stream_options": None}).json()
    assert whole["choices"][0]["text"] == "".join(d["choices"][0]["text"] for d in docs if d["choices"])


def test_seeded_sampling_repeats_and_stop_sequences_end_early(lm: TestClient) -> None:
    body = {"model": LM, "prompt": "a", "max_tokens": 12, "temperature": 1.0, "top_p": 0.9, "seed": 7}
    first, second = (lm.post("/v1/completions", json=body).json()["choices"][0]["text"] for _ in range(2))
    assert first == second
    greedy = lm.post("/v1/completions", json={**body, "temperature": 0}).json()["choices"][0]["text"]
    assert len(greedy) > 8
    stop = greedy[len(greedy) // 2 : len(greedy) // 2 + 3]
    stopped = lm.post("/v1/completions", json={**body, "temperature": 0, "stop": [stop]}).json()["choices"][0]
    assert stopped["finish_reason"] == "stop"
    assert stop not in stopped["text"]
    assert greedy.startswith(stopped["text"])
    assert len(stopped["text"]) < len(greedy)


def test_chat_uses_the_template_and_returns_capped_logprobs_only(lm: TestClient) -> None:
    body = {"model": LM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0,
            "logprobs": True, "top_logprobs": 2}  # fmt: skip
    doc = lm.post("/v1/chat/completions", json=body).json()
    content = doc["choices"][0]["logprobs"]["content"]
    assert 3 == len(content)
    assert all(len(c["top_logprobs"]) == 2 for c in content)
    assert all(c["logprob"] <= 0 for c in content)
    too_many = lm.post("/v1/chat/completions", json={**body, "top_logprobs": 3})
    assert 400 == too_many.status_code
    assert "limit_exceeded" == too_many.json()["code"]


def test_embeddings_are_normalised_mean_pools_in_float_or_base64(encoder: TestClient) -> None:
    floats = encoder.post("/v1/embeddings", json={"model": ENC, "input": ["one", "two words"]}).json()
    vectors = np.array([d["embedding"] for d in floats["data"]], dtype=np.float32)
    assert (2, 384) == vectors.shape
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    packed = encoder.post("/v1/embeddings", json={"model": ENC, "input": "one", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    alone = encoder.post("/v1/embeddings", json={"model": ENC, "input": "one"}).json()["data"][0]["embedding"]
    np.testing.assert_array_equal(np.array(alone, dtype=np.float32), decoded)
    assert [{"id": ENC, "task": "embed"}] == [
        {"id": m["id"], "task": m["weightvault"]["task"]} for m in encoder.get("/v1/models").json()["data"]
    ]


@pytest.mark.parametrize(
    ("client", "path", "body", "status", "code"),
    [
        ("lm", "/v1/completions", b"{", 400, "invalid_json"),
        ("lm", "/v1/completions", b'{"model": ' * 20_000, 400, "invalid_json"),
        ("lm", "/v1/completions", b'{"model": "a", "model": "b", "prompt": "x"}', 400, "invalid_json"),
        ("lm", "/v1/completions", {"model": LM, "prompt": "x", "mystery": True}, 400, "invalid_request"),
        ("lm", "/v1/completions", {"model": LM, "prompt": "x", "n": 100000}, 400, "invalid_request"),
        ("lm", "/v1/completions", {"model": LM, "prompt": "x", "max_tokens": 65}, 400, "limit_exceeded"),
        ("lm", "/v1/completions", {"model": LM, "prompt": "x", "logprobs": 3}, 400, "limit_exceeded"),
        ("lm", "/v1/completions", {"model": LM, "prompt": ["a", "b"]}, 400, "limit_exceeded"),
        ("lm", "/v1/completions", {"model": LM, "prompt": "x", "echo": True}, 400, "invalid_request"),
        ("lm", "/v1/completions", {"model": LM, "prompt": "x", "logit_bias": {"5": 100}}, 400, "unsupported"),
        ("lm", "/v1/completions", {"model": LM, "prompt": "word " * 500, "max_tokens": 20}, 400, "invalid_request"),
        ("lm", "/v1/completions", {"model": "acme/models/other@1", "prompt": "x"}, 404, "model_not_found"),
        ("lm", "/v1/embeddings", {"model": LM, "input": "x"}, 400, "unsupported_endpoint"),
        ("lm", "/v1/completions", {"model": LM, "prompt": "x" * (2 << 20)}, 413, "body_too_large"),
        ("encoder", "/v1/embeddings", {"model": ENC, "input": "word " * 200}, 400, "invalid_request"),
        ("encoder", "/v1/embeddings", {"model": ENC, "input": []}, 400, "limit_exceeded"),
        ("encoder", "/v1/embeddings", {"model": ENC, "input": ["x"] * 257}, 400, "limit_exceeded"),
        ("encoder", "/v1/embeddings", {"model": ENC, "input": "x", "dimensions": 8}, 400, "invalid_request"),
        ("encoder", "/v1/completions", {"model": ENC, "prompt": "x"}, 400, "unsupported_endpoint"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_with_a_problem(
    request: pytest.FixtureRequest, client: str, path: str, body: object, status: int, code: str
) -> None:
    http: TestClient = request.getfixturevalue(client)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = http.post(path, content=content, headers={"content-type": "application/json"})
    assert (status, code) == (r.status_code, r.json()["code"])
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["error"]["code"] == code


def test_no_answer_carries_logits_or_hidden_states(lm: TestClient, encoder: TestClient) -> None:
    answers = [
        lm.post("/v1/completions", json={"model": LM, "prompt": "x", "max_tokens": 2}).text,
        lm.post("/v1/chat/completions", json={"model": LM, "messages": [{"role": "user", "content": "x"}]}).text,
        encoder.post("/v1/embeddings", json={"model": ENC, "input": "x"}).text,
    ]
    for text in answers:
        assert "logits" not in text
        assert "hidden" not in text
    assert len(answers[0]) < 2000  # a handful of tokens, not a vocabulary-sized vector
