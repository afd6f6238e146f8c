"""The audit log: ``/v1/tenants/{t}/audit`` (a tenant's events), ``/v1/audit/...`` (tlog-tiles, operators),
and ``POST /v1/reports`` (what a sandbox reports: blocked egress, start and exit)."""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from weightvault.server import schemas
from weightvault.server.http import HTTP, handler

_DEFAULT_LIMIT: Final = 1000
_MAX_LIMIT: Final = 10_000


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def routes(http: HTTP) -> list[BaseRoute]:
    broker = http.broker

    @handler
    async def events(request: Request) -> Response:
        who = await http.principal(request)
        q = request.query_params
        found = await http.call(
            broker.audit_events,
            who,
            request.path_params["tenant"],
            since_ms=_int(q.get("since_ms")),
            until_ms=_int(q.get("until_ms")),
            limit=min(_int(q.get("limit")) or _DEFAULT_LIMIT, _MAX_LIMIT),
        )
        return JSONResponse({"events": found})

    @handler
    async def tiles(request: Request) -> Response:
        who = await http.principal(request)
        status, content, ctype = await http.call(broker.audit_resource, who, request.path_params["path"])
        return Response(content, status_code=status, media_type=ctype)

    @handler
    async def reports(request: Request) -> Response:
        who = await http.principal(request)
        req = await http.body(request, schemas.ReportRequest)
        count = await http.call(broker.report_events, who, req.events)
        return JSONResponse({"recorded": count}, status_code=201)

    return [
        Route("/v1/reports", reports, methods=["POST"]),
        Route("/v1/tenants/{tenant}/audit", events, methods=["GET"]),
        Mount("/v1/audit", routes=[Route("/{path:path}", tiles, methods=["GET"])]),
    ]
