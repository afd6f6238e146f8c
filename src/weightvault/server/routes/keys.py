"""Key rotation: ``/v1/tenants/{t}/kek/rotate|rewrap|retire`` and ``/v1/keys/token/rotate``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from weightvault.broker.protocol import ErrorCode
from weightvault.server import schemas
from weightvault.server.http import HTTP, HTTPProblemError, handler


def routes(http: HTTP) -> list[BaseRoute]:
    broker = http.broker

    @handler
    async def kek(request: Request) -> Response:
        who = await http.principal(request)
        tenant, action = request.path_params["tenant"], request.path_params["action"]
        if action == "rotate":
            req = await http.body(request, schemas.ApprovalOnly)
            version = await http.call(broker.rotate_kek, who, tenant, req.approval)
            return JSONResponse({"tenant": tenant, "version": version})
        if action == "rewrap":
            moved = await http.call(broker.rewrap_models, who, tenant)
            return JSONResponse({"tenant": tenant, "rewrapped": moved})
        if action == "retire":
            retire = await http.body(request, schemas.RetireRequest)
            await http.call(broker.retire_kek, who, tenant, retire.version)
            return JSONResponse({"tenant": tenant, "retired": retire.version})
        raise HTTPProblemError(404, ErrorCode.NOT_FOUND, "Not found")

    @handler
    async def token_key(request: Request) -> Response:
        who = await http.principal(request)
        req = await http.body(request, schemas.ApprovalOnly)
        kid = await http.call(broker.rotate_token_key, who, req.approval)
        return JSONResponse({"kid": kid})

    return [
        Route("/v1/tenants/{tenant}/kek/{action}", kek, methods=["POST"]),
        Route("/v1/keys/token/rotate", token_key, methods=["POST"]),
    ]
