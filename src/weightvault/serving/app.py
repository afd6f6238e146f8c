"""``weightvault serve`` over HTTP: OpenAI's embeddings, completions and chat completions for one sealed model.

Requests are parsed strictly (pydantic, unknown fields refused) and bounded: the body
size, the number of inputs, ``n`` (1), ``max_tokens``, the prompt's length (refused, never
truncated) and ``logprobs`` (none unless the server was started with
``--max-logprobs``). Nothing returns weights, hidden states or logits. Streams are
server-sent events, one token per event, ending with ``data: [DONE]``.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from weightvault.errors import InvalidRequestError
from weightvault.server.http import read_json
from weightvault.server.problems import OpenAIRefusalError, openai_problem
from weightvault.serving.runtime import Generated, ModelRuntime, Step

__all__ = ["ServeLimits", "create_serving_app"]

_STRICT = ConfigDict(extra="forbid", strict=True)
_Text = Annotated[str, Field(max_length=1 << 20)]


@dataclass(frozen=True, slots=True)
class ServeLimits:
    max_body_bytes: int = 1 << 20
    max_inputs: int = 256
    max_input_tokens: int = 512
    max_tokens: int = 1024
    max_logprobs: int = 0


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class EmbeddingsRequest(BaseModel):
    model_config = _STRICT
    model: str
    input: _Text | list[_Text]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class _Generation(BaseModel):
    model_config = _STRICT
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None


class CompletionRequest(_Generation):
    prompt: _Text | list[_Text]
    logprobs: int | None = Field(default=None, ge=0)
    echo: Literal[False] = False
    best_of: Literal[1] | None = None
    logit_bias: dict[str, float] | None = None
    suffix: None = None


class Message(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: _Text | list[dict[str, str]]
    name: str | None = None


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0)
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, str] | None = None


async def _parse(request: Request, model: type[BaseModel], limits: ServeLimits) -> Any:
    _, doc = await read_json(request, limits.max_body_bytes)
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise OpenAIRefusalError(400, "invalid_request", f"{where}: {first['msg']}") from exc


def create_serving_app(runtime: ModelRuntime, limits: ServeLimits | None = None) -> Starlette:
    limits = limits or ServeLimits()

    def check_model(name: str) -> None:
        if name != runtime.name:
            raise OpenAIRefusalError(404, "model_not_found", f"this server serves {runtime.name!r}")

    def check_task(task: str) -> None:
        if runtime.task != task:
            raise OpenAIRefusalError(400, "unsupported_endpoint", f"{runtime.name} does not support this endpoint")

    def max_new(req: _Generation, override: int | None = None) -> int:
        wanted = override or req.max_tokens or 16
        if wanted > limits.max_tokens:
            raise OpenAIRefusalError(400, "limit_exceeded", f"max_tokens is at most {limits.max_tokens}")
        return wanted

    def check_logprobs(n: int | None) -> None:
        if n is not None and n > limits.max_logprobs:
            raise OpenAIRefusalError(
                400, "limit_exceeded", f"logprobs are limited to {limits.max_logprobs} on this server"
            )

    async def guarded(request: Request, body: Any) -> Response:
        try:
            answer: Response = await body(request)
            return answer
        except OpenAIRefusalError as r:
            return openai_problem(r.status, r.code, r.detail)
        except InvalidRequestError as exc:
            return openai_problem(400, "invalid_request", str(exc))

    async def embeddings(request: Request) -> Response:
        async def run(request: Request) -> Response:
            req: EmbeddingsRequest = await _parse(request, EmbeddingsRequest, limits)
            check_model(req.model)
            check_task("embed")
            texts = [req.input] if isinstance(req.input, str) else req.input
            if not 1 <= len(texts) <= limits.max_inputs:
                raise OpenAIRefusalError(400, "limit_exceeded", f"input takes 1 to {limits.max_inputs} strings")
            if any(not t for t in texts):
                raise OpenAIRefusalError(400, "invalid_request", "inputs must not be empty")
            vectors, tokens = await run_in_threadpool(runtime.embed, texts, limits.max_input_tokens)
            if req.dimensions is not None and req.dimensions != len(vectors[0]):
                raise OpenAIRefusalError(
                    400, "invalid_request", f"this model's embeddings have {len(vectors[0])} dimensions"
                )
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
                    if req.encoding_format == "base64"
                    else v,
                }
                for i, v in enumerate(vectors)
            ]
            usage = {"prompt_tokens": tokens, "total_tokens": tokens}
            return JSONResponse({"object": "list", "data": data, "model": runtime.name, "usage": usage})

        return await guarded(request, run)

    def stops(value: str | list[str] | None) -> list[str]:
        listed = [value] if isinstance(value, str) else list(value or [])
        if len(listed) > 4:
            raise OpenAIRefusalError(400, "limit_exceeded", "at most 4 stop sequences")
        return listed

    async def completions(request: Request) -> Response:
        async def run(request: Request) -> Response:
            req: CompletionRequest = await _parse(request, CompletionRequest, limits)
            check_model(req.model)
            check_task("generate")
            check_logprobs(req.logprobs)
            if req.logit_bias:
                raise OpenAIRefusalError(400, "unsupported", "logit_bias is not supported")
            prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
            if len(prompts) != 1:
                raise OpenAIRefusalError(400, "limit_exceeded", "one prompt per request")
            new = max_new(req)
            ids = await run_in_threadpool(runtime.encode, prompts[0], new)
            return _answer(runtime, req, ids=ids, new=new, stop=stops(req.stop), logprobs=req.logprobs, chat=False)

        return await guarded(request, run)

    async def chat(request: Request) -> Response:
        async def run(request: Request) -> Response:
            req: ChatRequest = await _parse(request, ChatRequest, limits)
            check_model(req.model)
            check_task("generate")
            wanted = (req.top_logprobs or 0) if req.logprobs else None
            check_logprobs(wanted if req.logprobs else None)
            if req.logit_bias:
                raise OpenAIRefusalError(400, "unsupported", "logit_bias is not supported")
            if req.response_format not in (None, {"type": "text"}):
                raise OpenAIRefusalError(400, "unsupported", "only text responses are supported")
            messages = []
            for m in req.messages:
                content = m.content if isinstance(m.content, str) else "".join(p.get("text", "") for p in m.content)
                messages.append(("system" if m.role == "developer" else m.role, content))
            new = max_new(req, req.max_completion_tokens)
            prompt = runtime.chat_prompt(messages)
            ids = await run_in_threadpool(runtime.encode, prompt, new)
            return _answer(runtime, req, ids=ids, new=new, stop=stops(req.stop), logprobs=wanted, chat=True)

        return await guarded(request, run)

    async def models(request: Request) -> Response:
        entry = {
            "id": runtime.name,
            "object": "model",
            "created": 0,
            "owned_by": runtime.name.split("/", 1)[0],
            "weightvault": {"task": runtime.task, "bytes": runtime.bytes, "parameters": runtime.parameters},
        }
        return JSONResponse({"object": "list", "data": [entry]})

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "model": runtime.name})

    return Starlette(
        routes=[
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


def _answer(
    runtime: ModelRuntime,
    req: _Generation,
    *,
    ids: list[int],
    new: int,
    stop: list[str],
    logprobs: int | None,
    chat: bool,
) -> Response:
    result = Generated(prompt_tokens=len(ids))
    steps = runtime.generate(
        ids,
        result,
        max_tokens=new,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=req.seed,
        stop=stop,
        logprobs=logprobs,
    )
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    kind = "chat.completion" if chat else "text_completion"
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def usage() -> dict[str, int]:
        return {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }

    if not req.stream:

        async def whole() -> Response:
            collected: list[Step] = await run_in_threadpool(list, steps)
            text = "".join(s.text for s in collected)
            choice: dict[str, Any] = {"index": 0, "finish_reason": result.finish_reason}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
                choice["logprobs"] = _chat_logprobs(collected) if logprobs is not None else None
            else:
                choice["text"] = text
                choice["logprobs"] = _completion_logprobs(collected) if logprobs is not None else None
            body = {"id": ident, "object": kind, "created": created, "model": runtime.name, "choices": [choice]}
            body["usage"] = usage()
            return JSONResponse(body)

        return _Deferred(whole)

    def event(doc: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"

    def chunk(choice: dict[str, Any]) -> bytes:
        doc = {"id": ident, "object": kind + ".chunk" if chat else kind, "created": created, "model": runtime.name}
        doc["choices"] = [choice]
        return event(doc)

    def produce() -> Generator[bytes, None, None]:
        try:
            if chat:
                yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
            for step in steps:
                if chat:
                    choice: dict[str, Any] = {"index": 0, "delta": {"content": step.text}, "finish_reason": None}
                    if logprobs is not None:
                        choice["logprobs"] = _chat_logprobs([step])
                else:
                    choice = {"index": 0, "text": step.text, "finish_reason": None}
                    if logprobs is not None:
                        choice["logprobs"] = _completion_logprobs([step])
                yield chunk(choice)
            last: dict[str, Any] = {"index": 0, "finish_reason": result.finish_reason}
            if chat:
                last["delta"] = {}
            else:
                last["text"] = ""
            yield chunk(last)
            if include_usage:
                doc = {"id": ident, "object": kind + ".chunk" if chat else kind, "created": created}
                yield event({**doc, "model": runtime.name, "choices": [], "usage": usage()})
            yield b"data: [DONE]\n\n"
        finally:
            steps.close()  # releases the model's lock when a client leaves mid-stream

    async def stream() -> AsyncIterator[bytes]:
        iterator = produce()
        try:
            async for data in iterate_in_threadpool(iterator):
                yield data
        finally:
            await run_in_threadpool(iterator.close)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"cache-control": "no-store"})


class _Deferred(Response):
    """A response computed when sent (the model runs off the event loop)."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self._make = make

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        response = await self._make()
        await response(scope, receive, send)


def _completion_logprobs(steps: list[Step]) -> dict[str, Any]:
    return {
        "tokens": [s.token for s in steps],
        "token_logprobs": [s.logprob for s in steps],
        "top_logprobs": [dict(s.top) for s in steps],
    }


def _chat_logprobs(steps: list[Step]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": s.token,
                "logprob": s.logprob,
                "bytes": list(s.token.encode()),
                "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in s.top],
            }
            for s in steps
        ]
    }
