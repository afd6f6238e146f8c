"""The gateway in process, in front of a model server that misbehaves: nothing leaves uncounted.

A compromised server might hide data in headers, send one endless stream event, or answer
with more than the gateway will buffer. The gateway forwards bodies only, counts every
byte it forwards, and stops what it cannot count.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.databases import fresh_url
from weightvault.broker.storage import BrokerStore, PrincipalRow
from weightvault.gateway.app import GatewayConfig, Upstream, create_gateway_app
from weightvault.gateway.budgets import Budget, Scope, Unit
from weightvault.gateway.sketch import PromptFingerprint
from weightvault.gateway.state import GatewayState, KeyAdmin

MODEL = "acme/models/m@1"
LIMIT = 50_000


async def _embeddings(request: Request) -> Response:
    body = json.dumps({"object": "list", "data": [], "usage": {"prompt_tokens": 3, "total_tokens": 3}})
    return Response(body, headers={"x-exfil": "c2VjcmV0IHdlaWdodHM=", "content-type": "application/json; exfil=AAAA"})


async def _completions(request: Request) -> Response:
    async def endless() -> AsyncIterator[bytes]:
        yield b'data: {"choices": [{"text": "ok"}]}\n\n'
        yield b"data: " + b"A" * (2 << 20)  # no end of event, ever

    return StreamingResponse(endless(), media_type="text/event-stream")


async def _chat(request: Request) -> Response:
    return Response(b"x" * (33 << 20), media_type="application/json")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[TestClient, str, GatewayState]]:
    store = BrokerStore(fresh_url(tmp_path))
    store.migrate(0)
    store.tenants.create("acme", b"", 0)
    store.principals.create(PrincipalRow("acme-wl", "acme", "workload", bytes(32), False), 0)
    token, _ = KeyAdmin(store).create("test", "acme", "acme-wl")
    state = GatewayState(store, [Budget(Scope.KEY, "hour", Unit.BYTES, LIMIT)], {})
    upstream_app = Starlette(
        routes=[
            Route("/v1/embeddings", _embeddings, methods=["POST"]),
            Route("/v1/completions", _completions, methods=["POST"]),
            Route("/v1/chat/completions", _chat, methods=["POST"]),
        ]
    )
    upstream = Upstream("asgi", transport=httpx.ASGITransport(app=upstream_app))
    app = create_gateway_app(state, GatewayConfig(routes={MODEL: upstream}), PromptFingerprint(bytes(32), "t"))
    with TestClient(app, headers={"authorization": f"Bearer {token}"}) as client:
        yield client, token, state
    state.close()
    store.close()


def _spent(state: GatewayState) -> int:
    bucket = next(i for i in state.ledger.buckets if i.startswith("key:"))
    return LIMIT - state.ledger.remaining(bucket, state.now_ms())


def test_upstream_headers_never_reach_the_client_and_the_body_is_counted(
    gateway: tuple[TestClient, str, GatewayState],
) -> None:
    client, _, state = gateway
    r = client.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
    assert 200 == r.status_code
    assert "x-exfil" not in r.headers
    assert "application/json" == r.headers["content-type"]
    assert len(r.content) == _spent(state)


def test_a_stream_event_without_end_is_cut_and_none_of_it_forwarded(
    gateway: tuple[TestClient, str, GatewayState],
) -> None:
    client, _, state = gateway
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True})
    events = r.content.split(b"\n\n")
    assert b'"text": "ok"' in events[0]
    assert b"upstream_invalid" in events[1]
    assert b"AAAA" not in r.content
    assert len(events[0]) + 2 == _spent(state)


def test_an_answer_over_the_buffer_limit_is_refused_uncharged(gateway: tuple[TestClient, str, GatewayState]) -> None:
    client, _, state = gateway
    r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert 502 == r.status_code
    assert "upstream_response_too_large" == r.json()["code"]
    assert 0 == _spent(state)


def test_unknown_and_revoked_keys_and_other_tenants_get_nothing(gateway: tuple[TestClient, str, GatewayState]) -> None:
    client, token, state = gateway
    for bearer in ("", "wvk_0000000000000000_" + "A" * 43, token[:-1] + ("B" if token[-1] != "B" else "C")):
        r = client.post(
            "/v1/embeddings", json={"model": MODEL, "input": "x"}, headers={"authorization": f"Bearer {bearer}"}
        )
        assert 401 == r.status_code
    r = client.post("/v1/embeddings", json={"model": "globex/models/m@1", "input": "x"})
    assert 404 == r.status_code
    assert 0 == _spent(state) if state.ledger.buckets else True
