"""The gateway over HTTP: an OpenAI-compatible reverse proxy that authenticates, budgets and audits.

Routes: ``POST /v1/embeddings``, ``/v1/completions`` and ``/v1/chat/completions`` (proxied),
``GET /v1/models`` (the caller's models), ``GET /metrics`` (Prometheus) and
``GET /health``. Each proxied request:

1. authenticates its API key against the database (a revoked key fails here);
2. checks the body: at most ``max_body_bytes`` of JSON, fields the endpoint knows, a
   ``model`` the key may use (another tenant's model is "not found"), and the caps on
   ``n``, ``max_tokens`` and ``logprobs``;
3. refuses with 429 if any budget it charges is spent;
4. forwards it to the model's upstream (a Unix socket into the sandbox, or a URL) and
   charges what comes back: a buffered response as a whole (withheld with 429 if it
   does not fit), a stream event by event, cut before the first event that does not fit;
5. records a ``gateway.request`` event (key, model, status, tokens, bytes, latency, a keyed
   digest and similarity sketch of the prompt) with the budget changes, in one transaction.

Errors are RFC 7807 problem+json that also carry OpenAI's ``{"error": {...}}`` shape, so
OpenAI clients raise their usual exceptions.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from weightvault.auditlog.events import AuditEvent
from weightvault.encoding import parse_json_object
from weightvault.errors import AuthenticationError, ContainedError, InvalidRequestError, ServerError
from weightvault.gateway.budgets import Unit
from weightvault.gateway.sketch import PromptFingerprint
from weightvault.gateway.state import Caller, GatewayState
from weightvault.server.http import read_json
from weightvault.server.problems import OpenAIRefusalError
from weightvault.server.problems import openai_problem as problem

__all__ = ["GatewayConfig", "Upstream", "create_gateway_app"]

_JSON: Final = "application/json"
_MAX_RESPONSE_BYTES: Final = 32 << 20
_MAX_EVENT_BYTES: Final = 1 << 20
_UPSTREAM_INVALID: Final = (
    b'data: {"error": {"message": "the model server sent an event over 1 MiB", "type": "server_error", '
    b'"code": "upstream_invalid"}}\n\n'
)

#: The request fields each endpoint accepts (OpenAI's); anything else is refused.
_FIELDS: Final = {
    "/v1/embeddings": {"model", "input", "encoding_format", "dimensions", "user"},
    "/v1/completions": {
        "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop",
        "seed", "logprobs", "echo", "best_of", "presence_penalty", "frequency_penalty", "logit_bias", "suffix",
        "user",
    },
    "/v1/chat/completions": {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
        "stream_options", "stop", "seed", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
        "logit_bias", "user", "response_format",
    },
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a model is served: ``unix:/path.sock`` (the sandbox's published socket) or an http(s) URL."""

    target: str
    #: Replaces the network (tests put an ASGI app of their own here).
    transport: httpx.AsyncBaseTransport | None = None

    def client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        timeout = httpx.Timeout(600.0, connect=10.0)
        if self.transport is not None:
            return httpx.AsyncClient(transport=self.transport, base_url="http://upstream", timeout=timeout)
        if self.target.startswith("unix:"):
            transport = httpx.AsyncHTTPTransport(uds=self.target[5:], limits=limits)
            return httpx.AsyncClient(transport=transport, base_url="http://sandbox", timeout=timeout)
        return httpx.AsyncClient(base_url=self.target, timeout=timeout, limits=limits)


@dataclass(frozen=True)
class GatewayConfig:
    routes: Mapping[str, Upstream]
    max_body_bytes: int = 1 << 20
    max_n: int = 1
    max_tokens: int = 1024
    max_logprobs: int = 0
    log_prompts: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "weightvault_gateway_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "weightvault_gateway_request_seconds", "Request latency", ["endpoint"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.bytes_out = Counter("weightvault_gateway_response_bytes", "Response bytes sent", registry=r)
        self.tokens_out = Counter("weightvault_gateway_tokens_out", "Completion tokens sent", registry=r)
        self.refused = Counter(
            "weightvault_gateway_budget_refusals", "Requests refused or cut by a budget", ["scope"], registry=r
        )
        self.alerts = Counter("weightvault_gateway_budget_alerts", "Budget alerts raised", ["threshold"], registry=r)


def _prompt_text(path: str, body: Mapping[str, Any]) -> str:
    if path == "/v1/chat/completions":
        messages = body.get("messages")
        if isinstance(messages, list):
            return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        return ""
    value = body.get("input" if path == "/v1/embeddings" else "prompt")
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value) if value is not None else ""


def _int_field(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OpenAIRefusalError(400, "invalid_field", f"{name} must be an integer")
    return value


def _check_body(path: str, body: object, config: GatewayConfig) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise OpenAIRefusalError(400, "invalid_json", "the body must be a JSON object")
    unknown = set(body) - _FIELDS[path]
    if unknown:
        raise OpenAIRefusalError(400, "unknown_field", f"unknown fields: {', '.join(sorted(unknown))}")
    if not isinstance(body.get("model"), str):
        raise OpenAIRefusalError(400, "invalid_field", "model must be a string")
    n = _int_field(body, "n")
    if n is not None and not 1 <= n <= config.max_n:
        raise OpenAIRefusalError(400, "limit_exceeded", f"n must be between 1 and {config.max_n}")
    best_of = _int_field(body, "best_of")
    if best_of is not None and best_of != 1:
        raise OpenAIRefusalError(400, "limit_exceeded", "best_of must be 1")
    for name in ("max_tokens", "max_completion_tokens"):
        value = _int_field(body, name)
        if value is not None and not 1 <= value <= config.max_tokens:
            raise OpenAIRefusalError(400, "limit_exceeded", f"{name} must be between 1 and {config.max_tokens}")
    logprobs = body.get("logprobs")
    top = _int_field(body, "top_logprobs") or 0
    wanted = (1 if logprobs is True else 0) if path == "/v1/chat/completions" else (_int_field(body, "logprobs") or 0)
    if logprobs not in (None, False) and (wanted > config.max_logprobs or top > config.max_logprobs or wanted < 0):
        raise OpenAIRefusalError(
            400, "limit_exceeded", f"logprobs are limited to {config.max_logprobs} on this gateway"
        )
    if body.get("echo") not in (None, False):
        raise OpenAIRefusalError(400, "limit_exceeded", "echo is not served")
    return body


def create_gateway_app(
    state: GatewayState,
    config: GatewayConfig,
    fingerprint: PromptFingerprint,
) -> Starlette:
    metrics = _Metrics()
    clients: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for model, upstream in config.routes.items():
            clients[model] = upstream.client()
        try:
            yield
        finally:
            for client in clients.values():
                await client.aclose()
            state.flush()

    async def finish(
        caller: Caller | None,
        model: str,
        path: str,
        status: int,
        started: float,
        *,
        prompt: str,
        tokens_in: int,
        tokens_out: int,
        bytes_out: int,
        cut: bool = False,
        stream: bool = False,
        alerts: Sequence[AuditEvent] = (),
        refused_by: str | None = None,
    ) -> None:
        """Metrics and the request's audit event. Runs after the answer is sent (a background task; the
        stream's own end), off the request's latency; charges were made before anything was sent."""
        latency_us = int((time.perf_counter() - started) * 1e6)
        endpoint = path.rsplit("/", 1)[-1]
        metrics.requests.labels(endpoint, str(status)).inc()
        metrics.latency.labels(endpoint).observe(latency_us / 1e6)
        metrics.bytes_out.inc(bytes_out)
        metrics.tokens_out.inc(tokens_out)
        if refused_by is not None:
            metrics.refused.labels(refused_by.split(":", 1)[0]).inc()
        for a in alerts:
            metrics.alerts.labels(str(a.details["threshold_percent"])).inc()
        if caller is None:
            return
        details: dict[str, Any] = {
            "key_id": caller.key_id,
            "endpoint": path,
            "status": status,
            "stream": stream,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "bytes_out": bytes_out,
            "latency_us": latency_us,
            "prompt_chars": len(prompt),
            "prompt_sketch": fingerprint.sketch(prompt),
        }
        if cut:
            details["cut"] = True
        if refused_by is not None:
            details["budget"] = refused_by
        if config.log_prompts:
            details["prompt_text"] = prompt[:4096]
        event = AuditEvent(
            "gateway.request",
            caller.tenant,
            caller.principal,
            resource=model,
            decision="allow" if status < 400 else "deny",
            details=details,
            hmac={"prompt": fingerprint.digest(prompt)},
        )
        state.record([*alerts, event])

    def later(response: Response, *args: Any, **kwargs: Any) -> Response:
        response.background = BackgroundTask(finish, *args, **kwargs)
        return response

    async def proxy(request: Request) -> Response:  # noqa: PLR0911 - one return per refusal, in order
        started = time.perf_counter()
        path = request.url.path
        caller: Caller | None = None
        model = ""
        prompt = ""
        try:
            try:
                caller = state.authenticate(_bearer(request))
            except AuthenticationError as exc:
                # A known key that failed (revoked, wrong secret) is audited under its principal;
                # strangers' guesses are counted in the metrics only, so they cannot flood the log.
                caller = getattr(exc, "caller", None)
                raise OpenAIRefusalError(401, "invalid_api_key", str(exc)) from exc
            except ContainedError as exc:
                caller = getattr(exc, "caller", None)
                raise OpenAIRefusalError(403, "key_suspended", str(exc)) from exc
            try:
                raw, parsed = await read_json(request, config.max_body_bytes)
            except ClientDisconnect as exc:
                raise OpenAIRefusalError(400, "client_disconnected", "the request body was not completed") from exc
            body = _check_body(path, parsed, config)
            model = body["model"]
            prompt = _prompt_text(path, body)
            if model not in config.routes or not caller.may_use(model):
                model_seen, model = model, ""
                raise OpenAIRefusalError(404, "model_not_found", f"no model {model_seen[:200]!r} for this key")
            buckets = state.buckets_for(caller, model)
        except OpenAIRefusalError as refused:
            return later(
                problem(refused.status, refused.code, refused.detail, dict(refused.headers)),
                caller, model, path, refused.status, started, prompt=prompt, tokens_in=0, tokens_out=0, bytes_out=0,
            )  # fmt: skip
        now_ms = state.now_ms()
        spent = state.ledger.exhausted(buckets, now_ms)
        if spent is not None:
            alerts = state.alert_events(caller, model, state.ledger.refuse(spent, now_ms))
            return later(
                problem(429, "budget_exhausted", f"output budget {spent} is spent", {"retry-after": "60"}),
                caller, model, path, 429, started, prompt=prompt, tokens_in=0, tokens_out=0, bytes_out=0,
                alerts=alerts, refused_by=spent,
            )  # fmt: skip

        client = clients[model]
        upstream_request = client.build_request("POST", path, content=raw, headers={"content-type": _JSON})
        try:
            upstream = await client.send(upstream_request, stream=True)
        except httpx.HTTPError:
            return later(
                problem(502, "upstream_unavailable", "the model server did not answer"),
                caller, model, path, 502, started, prompt=prompt, tokens_in=0, tokens_out=0, bytes_out=0,
            )  # fmt: skip
        # Only the body leaves, and it is counted: the upstream's own headers (a channel no budget
        # would see) are dropped, its content type reduced to one of three.
        ctype = upstream.headers.get("content-type", _JSON)
        if ctype.startswith("text/event-stream"):
            return StreamingResponse(
                _stream(
                    upstream, caller=caller, model=model, path=path, started=started, prompt=prompt, buckets=buckets
                ),
                status_code=upstream.status_code,
                media_type="text/event-stream",
                headers={"cache-control": "no-store"},
            )
        try:
            content = bytearray()
            async for chunk in upstream.aiter_bytes():
                content += chunk
                if len(content) > _MAX_RESPONSE_BYTES:
                    break
        finally:
            await upstream.aclose()
        if len(content) > _MAX_RESPONSE_BYTES:
            return later(
                problem(502, "upstream_response_too_large", "the model server's answer is over the limit"),
                caller, model, path, 502, started, prompt=prompt, tokens_in=0, tokens_out=0, bytes_out=0,
            )  # fmt: skip
        usage = _usage(bytes(content))
        refused_by, raised = state.ledger.charge(
            buckets, {Unit.BYTES: len(content), Unit.TOKENS: usage[1]}, state.now_ms()
        )
        alert_events = state.alert_events(caller, model, raised)
        if refused_by is not None:
            left = state.ledger.remaining(refused_by, state.now_ms())
            detail = f"the answer ({len(content)} bytes) does not fit output budget {refused_by} ({left} left)"
            return later(
                problem(429, "budget_exhausted", detail, {"retry-after": "60"}),
                caller, model, path, 429, started, prompt=prompt, tokens_in=usage[0], tokens_out=0, bytes_out=0,
                alerts=alert_events, refused_by=refused_by,
            )  # fmt: skip
        return later(
            Response(
                bytes(content),
                status_code=upstream.status_code,
                media_type="application/problem+json" if ctype.startswith("application/problem+json") else _JSON,
            ),
            caller, model, path, upstream.status_code, started, prompt=prompt, tokens_in=usage[0],
            tokens_out=usage[1], bytes_out=len(content), alerts=alert_events,
        )  # fmt: skip

    async def _stream(
        upstream: httpx.Response,
        *,
        caller: Caller,
        model: str,
        path: str,
        started: float,
        prompt: str,
        buckets: list[str],
    ) -> AsyncIterator[bytes]:
        sent = tokens = tokens_in = 0
        cut = False
        refused_by: str | None = None
        alert_events: list[AuditEvent] = []
        pending = b""
        try:
            async for chunk in upstream.aiter_bytes():
                pending += chunk
                while b"\n\n" in pending:
                    event, pending = pending.split(b"\n\n", 1)
                    event += b"\n\n"
                    count, usage = _event_tokens(event)
                    if usage is not None:
                        tokens_in = usage[0]
                    refused_by, alerts = state.ledger.charge(
                        buckets, {Unit.BYTES: len(event), Unit.TOKENS: count}, state.now_ms()
                    )
                    alert_events += state.alert_events(caller, model, alerts)
                    if refused_by is not None:
                        cut = True
                        error = {
                            "error": {
                                "message": f"output budget {refused_by} is spent",
                                "type": "rate_limit_error",
                                "code": "budget_exhausted",
                            }
                        }
                        yield b"data: " + json.dumps(error).encode() + b"\n\n"
                        return
                    sent += len(event)
                    tokens += count
                    yield event
                if len(pending) > _MAX_EVENT_BYTES:
                    # One "event" this long is no token stream: cut, forwarding nothing of it.
                    cut = True
                    yield _UPSTREAM_INVALID
                    return
        finally:
            await upstream.aclose()
            await finish(
                caller, model, path, upstream.status_code, started, prompt=prompt, tokens_in=tokens_in,
                tokens_out=tokens, bytes_out=sent, cut=cut, stream=True, alerts=alert_events, refused_by=refused_by,
            )  # fmt: skip

    async def models(request: Request) -> Response:
        try:
            caller = state.authenticate(_bearer(request))
        except AuthenticationError as exc:
            return problem(401, "invalid_api_key", str(exc))
        data = [
            {"id": m, "object": "model", "owned_by": caller.tenant, "created": 0}
            for m in config.routes
            if caller.may_use(m)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4")

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "write_failures": state.write_failures})

    routes = [
        Route(path, proxy, methods=["POST"]) for path in _FIELDS
    ] + [
        Route("/v1/models", models, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]  # fmt: skip
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.metrics = metrics
    return app


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    return value[7:].strip() if value[:7].lower() == "bearer " else None


def _usage(content: bytes) -> tuple[int, int]:
    """(prompt tokens, completion tokens) from a JSON answer's ``usage``, 0 where absent."""
    try:
        usage = parse_json_object(content, "the model's answer", InvalidRequestError).get("usage") or {}
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (InvalidRequestError, ValueError, AttributeError, TypeError):
        return 0, 0


def _event_tokens(event: bytes) -> tuple[int, tuple[int, int] | None]:
    """Tokens one SSE event carries (one per content chunk), and its usage if it reports one."""
    if not event.startswith(b"data: ") or event.startswith(b"data: [DONE]"):
        return 0, None
    usage = None
    if b'"usage"' in event:
        got = _usage(event[6:])
        if got != (0, 0):
            usage = got
    has_content = b'"text": "' in event or b'"content": "' in event or b'"text":"' in event or b'"content":"' in event
    return (1 if has_content else 0), usage


def upstream_models(routes: Mapping[str, Upstream]) -> dict[str, int]:
    """Ask each upstream (once, at start) for its model's effective size in bytes: its parameters at 4 bits
    each (``weightvault.parameters`` in /v1/models), the least an exfiltrator must move (RAND's sizing)."""
    sizes: dict[str, int] = {}
    for model, upstream in routes.items():
        if upstream.target.startswith("unix:"):
            client = httpx.Client(transport=httpx.HTTPTransport(uds=upstream.target[5:]), base_url="http://sandbox")
        else:
            client = httpx.Client(base_url=upstream.target)
        with client:
            listed = parse_json_object(
                client.get("/v1/models", timeout=30).content, "the model's /v1/models", ServerError
            )
        for entry in listed.get("data", []):
            params = entry.get("weightvault", {}).get("parameters") if isinstance(entry, dict) else None
            if entry.get("id") == model and isinstance(params, int) and params > 0:
                sizes[model] = (params + 1) // 2
    return sizes
