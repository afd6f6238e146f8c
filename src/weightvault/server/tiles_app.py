"""Serving a log read-only over HTTP as C2SP tlog-tiles (checkpoint, tiles, entry bundles)."""

from __future__ import annotations

import sqlite3

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from weightvault.auditlog.log import LogReader
from weightvault.auditlog.tiles import tile_resource
from weightvault.errors import AuditLogError, AuditUnavailableError

__all__ = ["create_tiles_app"]


def create_tiles_app(log: LogReader) -> Starlette:
    """GET ``/checkpoint`` and ``/tile/...`` with the caching the spec asks for."""

    async def serve(request: Request) -> Response:
        path = request.path_params["path"]
        try:
            status, body, content_type = await run_in_threadpool(tile_resource, log, path)
        except (AuditLogError, AuditUnavailableError, sqlite3.Error):  # a locked or unreachable database
            return PlainTextResponse("the log is unavailable\n", status_code=503, headers={"Retry-After": "5"})
        if status != 200:
            return PlainTextResponse(body.decode(), status_code=status)
        cache = "no-cache, max-age=2" if path == "checkpoint" else "public, max-age=31536000, immutable"
        return Response(body, media_type=content_type, headers={"Cache-Control": cache})

    return Starlette(routes=[Route("/{path:path}", serve, methods=["GET"])])
