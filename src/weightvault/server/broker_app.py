"""The key broker over HTTP (Starlette): the composition of the route modules, limits and lifespan.

Every request is authenticated by ``Authorization: Bearer <API token>`` except
``GET /v1/health`` (and its ``/live`` and ``/ready`` forms) and the custodians'
ceremony endpoints. Bodies must be ``application/json`` and at most
``max_body_bytes``; they are parsed strictly (unknown fields rejected). Errors are
RFC 7807 problem+json with the stable codes of :mod:`weightvault.broker.protocol`.
Requests are rate-limited per principal with a token bucket. Routes only parse,
call the broker facade and serialise: authorisation is the facade's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from weightvault.broker.protocol import ErrorCode
from weightvault.broker.service import KeyBroker
from weightvault.errors import WeightVaultError
from weightvault.server import console
from weightvault.server.http import HTTP, ServerLimits
from weightvault.server.problems import problem
from weightvault.server.routes import (
    approvals,
    audit,
    catalogue,
    custody,
    devices,
    directory,
    health,
    keys,
    sentinel,
    sessions,
)

__all__ = ["ServerLimits", "create_broker_app"]

_ROUTE_MODULES = (health, sessions, directory, devices, catalogue, keys, approvals, custody, audit, sentinel)


async def _not_found(request: Request, exc: Exception) -> Response:
    return problem(404, ErrorCode.NOT_FOUND, "Not found")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return problem(405, ErrorCode.METHOD_NOT_ALLOWED, "Method not allowed")


def create_broker_app(
    broker: KeyBroker, limits: ServerLimits | None = None, *, log_vkey: str | None = None
) -> Starlette:
    """The ASGI application of one broker; scheduled rotation runs while it serves.

    ``log_vkey`` is the verifier key of the broker's audit log, which the console hands its
    script (the browser pins it on first use and checks every checkpoint against it).
    """
    limits = limits or ServerLimits()
    http = HTTP(broker, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Jobs that run once per deployment run on the audit log's sequencer (the only broker, or
        # the replica holding the lease): two replicas must not rotate, or drain the outbox, twice.
        async def rotate_loop() -> None:
            while True:
                await asyncio.sleep(limits.rotation_check_seconds)
                if not broker.runs_singleton_jobs:
                    continue
                with contextlib.suppress(WeightVaultError):  # audited by the attempt itself; retried next round
                    await run_in_threadpool(broker.rotate_due)

        async def outbox_loop() -> None:
            # The gateway's events wait in the database's outbox until the log's sequencer
            # (this broker) appends them; a failed round is retried, never skipped.
            while True:
                await asyncio.sleep(limits.outbox_poll_seconds)
                if not broker.runs_singleton_jobs:
                    continue
                with contextlib.suppress(WeightVaultError):
                    while await run_in_threadpool(broker.drain_outbox):
                        pass

        tasks = [asyncio.create_task(rotate_loop()), asyncio.create_task(outbox_loop())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if broker.runs_singleton_jobs:
                with contextlib.suppress(WeightVaultError):
                    await run_in_threadpool(broker.drain_outbox)
            broker.custody.wipe()

    routes = [route for module in _ROUTE_MODULES for route in module.routes(http)]
    routes += console.routes(http, log_vkey)
    return Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed}, lifespan=lifespan)
