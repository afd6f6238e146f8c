"""The tlog-witness HTTP interface over a :class:`~weightvault.auditlog.witness.Witness`."""

from __future__ import annotations

from typing import Final

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from weightvault.auditlog.witness import Witness

__all__ = ["create_witness_app"]

_MAX_BODY: Final = 128 << 10


def create_witness_app(witness: Witness) -> Starlette:
    """``POST /add-checkpoint`` with the protocol's exact status codes; ``GET /latest/<origin>``."""

    async def add_checkpoint(request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_BODY:
                return PlainTextResponse("request too large\n", status_code=400)
        result = await run_in_threadpool(witness.add_checkpoint, bytes(body))
        return Response(result.body, status_code=result.status, media_type=result.content_type)

    async def health(request: Request) -> Response:
        return PlainTextResponse(f"{witness.signer.verifier.vkey()}\n")

    async def latest(request: Request) -> Response:
        note = await run_in_threadpool(witness.latest_note, request.path_params["origin"])
        if note is None:
            return PlainTextResponse("no checkpoint of this log\n", status_code=404)
        return PlainTextResponse(note)

    return Starlette(
        routes=[
            Route("/add-checkpoint", add_checkpoint, methods=["POST"]),
            # An extension of tlog-witness: the newest checkpoint it cosigned, cosigned again now.
            Route("/latest/{origin:path}", latest, methods=["GET"]),
            Route("/", health, methods=["GET"]),
        ]
    )
