"""What every route shares: strict JSON bodies, API-token authentication, rate limits, problem answers.

A route parses its request, calls one method of the broker facade, and serialises
the answer. Authorisation happens in the facade, never here.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from weightvault.broker.protocol import ErrorCode
from weightvault.broker.recording import client_address
from weightvault.broker.service import KeyBroker, Principal
from weightvault.encoding import parse_json
from weightvault.errors import (
    AuthenticationError,
    InvalidRequestError,
    RateLimitedError,
    TokenExpiredError,
    WeightVaultError,
)
from weightvault.server.problems import OpenAIRefusalError, problem, problem_for

__all__ = [
    "HTTP",
    "HTTPProblemError",
    "RateLimiter",
    "ServerLimits",
    "SharedRateLimiter",
    "b64",
    "handler",
    "read_bounded",
    "read_json",
]

_log = logging.getLogger("weightvault.server")
_B = TypeVar("_B", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_body_bytes: int = 256 << 10
    rate_per_second: float = 200.0
    burst: int = 400
    rotation_check_seconds: float = 60.0
    outbox_poll_seconds: float = 0.2


class RateLimiter:
    """A token bucket per principal."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self._burst), now))
            tokens = min(float(self._burst), tokens + (now - last) * self._rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise RateLimitedError("rate limit exceeded")
            self._buckets[key] = (tokens - 1.0, now)


class SharedRateLimiter:
    """Token buckets in the broker's database, shared by its replicas (``take`` is a statement)."""

    def __init__(self, take: Callable[[str, float, int], bool], rate: float, burst: int) -> None:
        self._take = take
        self._rate = rate
        self._burst = burst

    def take(self, key: str) -> None:
        if not self._take(key, self._rate, self._burst):
            raise RateLimitedError("rate limit exceeded")


class HTTPProblemError(Exception):
    """A refusal made by the HTTP layer itself (media type, size, JSON)."""

    def __init__(self, status: int, code: ErrorCode, title: str, detail: str | None = None) -> None:
        super().__init__(title)
        self.status, self.code, self.title, self.detail = status, code, title, detail


def b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(f"{what} is not base64") from exc


def handler(func: Handler) -> Handler:
    """Map every error to problem+json: weightvault errors by the protocol's table, anything else to 500."""

    async def wrapped(request: Request) -> Response:
        try:
            return await func(request)
        except HTTPProblemError as p:
            return problem(p.status, p.code, p.title, p.detail)
        except WeightVaultError as error:
            return problem_for(error)
        except Exception:
            # A bug or an unexpected library error: the caller gets the problem format
            # with no detail, the operator the traceback.
            _log.exception("unhandled error in %s %s", request.method, request.url.path)
            return problem(500, ErrorCode.INTERNAL_ERROR, "Internal error")

    return wrapped


async def read_bounded(request: Request, limit: int) -> bytes | None:
    """The request's body, or None as soon as it is known to exceed ``limit`` bytes (by its declared
    length, before reading, or while reading): an oversized body is never buffered whole."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            return None
    return bytes(raw)


async def read_json(request: Request, limit: int) -> tuple[bytes, Any]:
    """The body of a request to the OpenAI-compatible servers, as its bytes and their JSON value:
    at most ``limit`` bytes (:func:`read_bounded`).

    Raises:
        OpenAIRefusalError: 413 ``body_too_large``, or 400 ``invalid_json``.
    """
    raw = await read_bounded(request, limit)
    if raw is None:
        raise OpenAIRefusalError(413, "body_too_large", f"bodies are at most {limit} bytes")
    try:
        return raw, parse_json(raw, "the body", InvalidRequestError)
    except InvalidRequestError as exc:
        raise OpenAIRefusalError(400, "invalid_json", "the body is not JSON") from exc


@dataclass
class HTTP:
    """The broker and the request helpers its routes share."""

    broker: KeyBroker
    limits: ServerLimits
    limiter: RateLimiter | SharedRateLimiter = field(init=False)
    auth_failures: RateLimiter | SharedRateLimiter = field(init=False)
    _noted: dict[str, tuple[float, int]] = field(init=False, default_factory=dict)
    _noted_lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        # Replicas share their buckets through the database, or each would allow the whole rate.
        shared = self.broker.shares_state
        make = (lambda r, b: SharedRateLimiter(self.broker.take_rate, r, b)) if shared else RateLimiter
        self.limiter = make(self.limits.rate_per_second, self.limits.burst)
        # Failed authentications: a burst of 20 per client address, then one a second.
        self.auth_failures = make(1.0, 20)

    async def body(self, request: Request, model: type[_B]) -> _B:
        """The request body, parsed strictly into ``model`` (unknown fields are refused)."""
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise HTTPProblemError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, "Send application/json")
        raw = await read_bounded(request, self.limits.max_body_bytes)
        if raw is None:
            raise HTTPProblemError(413, ErrorCode.PAYLOAD_TOO_LARGE, "Request body too large")
        try:
            doc = parse_json(raw, "the body", InvalidRequestError)
        except InvalidRequestError as exc:
            raise HTTPProblemError(400, ErrorCode.INVALID_JSON, "Body is not valid JSON") from exc
        try:
            return model.model_validate(doc)
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
            raise HTTPProblemError(
                422, ErrorCode.INVALID_REQUEST, "Invalid request", f"invalid or unknown fields: {fields}"
            ) from exc

    async def principal(self, request: Request) -> Principal:
        """The caller, from its API token; every principal has its own rate limit.

        A token that fails is recorded (``auth.fail``); failures are themselves rate-limited per
        client address, so guessing is slow and cannot flood the log. A caller over its limit is
        recorded (``rate.limit``) at most once a minute.
        """
        host = request.client.host if request.client else "-"
        client_address.set(host)
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer":
            credential = ""
        credential = credential.strip()
        try:
            who = await run_in_threadpool(self.broker.authenticate, credential)
        except AuthenticationError as exc:
            await self.failed_token(request, credential, expired=isinstance(exc, TokenExpiredError))
            raise
        await run_in_threadpool(self.limited, request, who, ("principal", who.id), self.limiter)
        return who

    async def failed_token(self, request: Request, credential: str, *, expired: bool = False) -> None:
        """An API token that did not authenticate (here or at the console's sign-in): taken from the
        client address's failure bucket (RateLimitedError once it is empty) and recorded as ``auth.fail``
        (``expired``: the right token, past its expiry)."""
        host = request.client.host if request.client else "-"
        await run_in_threadpool(self.limited, request, None, ("auth-fail", host), self.auth_failures)
        claimed = credential[4:].partition(".")[0] if credential.startswith("wv1_") else "-"
        await run_in_threadpool(self.broker.record_auth_failure, claimed, request.url.path, expired)

    def limited(
        self, request: Request, who: Principal | None, bucket: tuple[str, str], limiter: RateLimiter | SharedRateLimiter
    ) -> None:
        """Take from ``bucket`` (kind, subject); over the limit, record it (the kind only: the client's
        address reaches the log as the recorder's keyed hash) at most once a minute, and refuse.

        Blocking (a shared bucket is a database statement; the record is an audit append): the
        async callers run it in the thread pool."""
        key = f"{bucket[0]}:{bucket[1]}"
        try:
            limiter.take(key)
        except RateLimitedError:
            now = time.monotonic()
            with self._noted_lock:
                last, refused = self._noted.get(key, (0.0, 0))
                refused += 1
                due = now - last >= 60.0
                self._noted[key] = (now if due else last, 0 if due else refused)
                if len(self._noted) > 10_000:
                    self._noted = {k: v for k, v in self._noted.items() if now - v[0] < 60.0}
            if due:
                self.broker.record_rate_limit(who, bucket[0], request.url.path, refused)
            raise

    async def anonymous(self, request: Request) -> None:
        """Rate limiting for the endpoints custodians reach without an API token."""
        host = request.client.host if request.client else "-"
        client_address.set(host)
        await run_in_threadpool(self.limited, request, None, ("anonymous", host), self.limiter)

    @staticmethod
    def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Run a (blocking) broker method off the event loop."""
        return run_in_threadpool(fn, *args, **kwargs)
