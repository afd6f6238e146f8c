"""Detection and containment: ``/v1/sentinel/alerts`` and ``/v1/containment/holds`` (docs/sentinel.md)."""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from weightvault.broker.containment import HoldRow
from weightvault.server import schemas
from weightvault.server.http import HTTP, handler

_MAX_LIMIT: Final = 10_000


def _hold(row: HoldRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "target": row.target,
        "tenant": row.tenant,
        "alert_index": row.alert_index,
        "rule": row.rule,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "lifted_at": row.lifted_at,
        "lifted_by": row.lifted_by,
    }


def _int(value: str | None, default: int) -> int:
    return int(value) if value is not None and value.isdigit() else default


def routes(http: HTTP) -> list[BaseRoute]:
    broker = http.broker

    @handler
    async def alerts(request: Request) -> Response:
        who = await http.principal(request)
        if request.method == "GET":
            q = request.query_params
            found = await http.call(
                broker.sentinel_alerts,
                who,
                q.get("tenant"),
                since_index=_int(q.get("since_index"), 0),
                limit=min(_int(q.get("limit"), 1000), _MAX_LIMIT),
            )
            return JSONResponse({"alerts": found})
        req = await http.body(request, schemas.AlertRequest)
        index = await http.call(broker.record_alert, who, req.model_dump())
        return JSONResponse({"index": index}, status_code=201)

    @handler
    async def holds(request: Request) -> Response:
        who = await http.principal(request)
        if request.method == "GET":
            q = request.query_params
            rows = await http.call(broker.list_holds, who, q.get("tenant"), active_only=q.get("all") != "1")
            return JSONResponse({"holds": [_hold(r) for r in rows]})
        req = await http.body(request, schemas.HoldRequest)
        hold_id = await http.call(broker.hold, who, req.kind, req.target, alert_index=req.alert_index, rule=req.rule)
        return JSONResponse({"id": hold_id}, status_code=201)

    @handler
    async def lift(request: Request) -> Response:
        who = await http.principal(request)
        await http.call(broker.lift_hold, who, request.path_params["hid"])
        return JSONResponse({"id": request.path_params["hid"], "lifted": True})

    return [
        Route("/v1/sentinel/alerts", alerts, methods=["GET", "POST"]),
        Route("/v1/containment/holds", holds, methods=["GET", "POST"]),
        Route("/v1/containment/holds/{hid}/lift", lift, methods=["POST"]),
    ]
