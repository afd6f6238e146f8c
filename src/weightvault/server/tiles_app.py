"""Serving a log read-only over HTTP as C2SP tlog-tiles (checkpoint, tiles, entry bundles)."""

from __future__ import annotations

import re
import sqlite3
import struct
from typing import Final

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from weightvault.auditlog.log import LogReader
from weightvault.auditlog.merkle import TILE_HEIGHT, TILE_WIDTH
from weightvault.errors import AuditLogError

__all__ = ["create_tiles_app", "tile_response"]

_TILE: Final = re.compile(r"tile/(entries|[0-9]|[1-5][0-9]|6[0-3])/((?:x\d{3}/)*\d{3})(?:\.p/(\d{1,3}))?")


def tile_response(log: LogReader, path: str) -> tuple[int, bytes, str]:
    """Status, body and content type for a tiles API path (``checkpoint`` or ``tile/...``).

    ``checkpoint`` is the newest published checkpoint, with its witness
    cosignatures. A tile is served whenever the committed log covers it: full
    tiles once full, and a partial tile of width W for *every* W up to what is
    committed, not only the current right edge. A client holding an older
    checkpoint asks for the partial tiles of its own size, and tiles only ever
    grow by appending, so those are prefixes of what is stored (tlog-tiles: logs
    MUST serve partial tiles for every published size).
    """
    if path == "checkpoint":
        return 200, log.served_checkpoint().to_text().encode(), "text/plain; charset=utf-8"
    body = _tile(log, path)
    if body is None:
        return 404, b"not found\n", "text/plain"
    return 200, body, "application/octet-stream"


def _tile(log: LogReader, path: str) -> bytes | None:
    match = _TILE.fullmatch(path)
    if match is None:
        return None
    level_text, index_text, width_text = match.groups()
    index = int(index_text.replace("x", "").replace("/", ""))
    width = int(width_text) if width_text else TILE_WIDTH
    if not 1 <= width <= TILE_WIDTH or (width_text is not None and width == TILE_WIDTH):
        return None
    level = 0 if level_text == "entries" else int(level_text)
    if log.size // TILE_WIDTH**level - index * TILE_WIDTH < width:
        return None
    start = index * TILE_WIDTH
    try:
        if level_text == "entries":
            # Events are capped at MAX_ENTRY_BYTES when appended, so every stored entry fits its u16 frame.
            return b"".join(struct.pack(">H", len(e.data)) + e.data for e in log.storage.entries(start, start + width))
        return b"".join(log.storage.nodes(level * TILE_HEIGHT, start, start + width))
    except AuditLogError:
        return None


def create_tiles_app(log: LogReader) -> Starlette:
    """GET ``/checkpoint`` and ``/tile/...`` with the caching the spec asks for."""

    async def serve(request: Request) -> Response:
        path = request.path_params["path"]
        try:
            status, body, content_type = await run_in_threadpool(tile_response, log, path)
        except (AuditLogError, sqlite3.Error):  # a locked or unreadable database: try again later
            return PlainTextResponse("the log is unavailable\n", status_code=503, headers={"Retry-After": "5"})
        if status != 200:
            return PlainTextResponse(body.decode(), status_code=status)
        cache = "no-cache, max-age=2" if path == "checkpoint" else "public, max-age=31536000, immutable"
        return Response(body, media_type=content_type, headers={"Cache-Control": cache})

    return Starlette(routes=[Route("/{path:path}", serve, methods=["GET"])])
