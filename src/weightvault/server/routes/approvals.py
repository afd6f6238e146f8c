"""Approvals: ``/v1/approvals``, ``/v1/approvals/{id}``, ``/v1/approvals/{id}/sign``, ``/v1/approval-policy``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from weightvault.server import schemas
from weightvault.server.http import HTTP, b64, handler


def routes(http: HTTP) -> list[BaseRoute]:
    broker = http.broker

    @handler
    async def requests(request: Request) -> Response:
        who = await http.principal(request)
        if request.method == "POST":
            req = await http.body(request, schemas.ApprovalRequestBody)
            created, _ = await http.call(broker.request_approval, who, req.op, req.tenant, req.params)
            return JSONResponse(await http.call(broker.approval_request, who, created.id), status_code=201)
        q = request.query_params
        return JSONResponse(
            {"requests": await http.call(broker.approval_requests, who, q.get("tenant"), q.get("status"))}
        )

    @handler
    async def one(request: Request) -> Response:
        who = await http.principal(request)
        return JSONResponse(await http.call(broker.approval_request, who, request.path_params["rid"]))

    @handler
    async def sign(request: Request) -> Response:
        who = await http.principal(request)
        req = await http.body(request, schemas.ApprovalSignature)
        result = await http.call(
            broker.submit_approval,
            who,
            request.path_params["rid"],
            req.decision,
            req.expires_at,
            b64(req.signature, "signature"),
        )
        return JSONResponse({"status": result.status, "counted": list(result.counted), "needs": result.needed})

    @handler
    async def policy(request: Request) -> Response:
        who = await http.principal(request)
        if request.method == "GET":
            version, document = await http.call(broker.approval_policy, who)
            return JSONResponse({"version": version, "document": document})
        req = await http.body(request, schemas.ApprovalPolicyRequest)
        return JSONResponse({"version": await http.call(broker.put_approval_policy, who, req.document, req.approval)})

    return [
        Route("/v1/approvals", requests, methods=["GET", "POST"]),
        Route("/v1/approvals/{rid}", one, methods=["GET"]),
        Route("/v1/approvals/{rid}/sign", sign, methods=["POST"]),
        Route("/v1/approval-policy", policy, methods=["GET", "PUT"]),
    ]
