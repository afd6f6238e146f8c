"""Tenants and principals: ``/v1/tenants``, ``/v1/principals``, ``/v1/principals/{id}/disable``,
``/v1/principals/{id}/token`` (a new API token), ``/v1/whoami`` (the caller, and when its token expires)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from weightvault.server import schemas
from weightvault.server.http import HTTP, handler


def routes(http: HTTP) -> list[BaseRoute]:
    broker = http.broker

    @handler
    async def tenants(request: Request) -> Response:
        who = await http.principal(request)
        if request.method == "GET":
            return JSONResponse({"tenants": await http.call(broker.list_tenants, who)})
        req = await http.body(request, schemas.TenantRequest)
        await http.call(broker.create_tenant, who, req.id)
        return JSONResponse({"id": req.id}, status_code=201)

    @handler
    async def principals(request: Request) -> Response:
        who = await http.principal(request)
        if request.method == "GET":
            rows = await http.call(broker.list_principals, who, request.query_params.get("tenant"))
            listed = [
                {"id": r.id, "tenant": r.tenant_id, "role": r.role, "disabled": r.disabled, "expires_at": r.expires_at}
                for r in rows
            ]
            return JSONResponse({"principals": listed})
        req = await http.body(request, schemas.PrincipalRequest)
        token = await http.call(broker.create_principal, who, req.id, req.tenant, req.role, expires_in=req.expires_in)
        expires_at = await http.call(broker.token_expires_at, req.id)
        answer = {"id": req.id, "role": req.role, "tenant": req.tenant, "token": token, "expires_at": expires_at}
        return JSONResponse(answer, status_code=201)

    @handler
    async def disable(request: Request) -> Response:
        who = await http.principal(request)
        await http.call(broker.disable_principal, who, request.path_params["pid"])
        return JSONResponse({"id": request.path_params["pid"], "disabled": True})

    @handler
    async def rotate(request: Request) -> Response:
        who = await http.principal(request)
        req = await http.body(request, schemas.TokenRequest)
        pid = request.path_params["pid"]
        token = await http.call(broker.rotate_principal_token, who, pid, expires_in=req.expires_in)
        expires_at = await http.call(broker.token_expires_at, pid)
        return JSONResponse({"id": pid, "token": token, "expires_at": expires_at})

    @handler
    async def whoami(request: Request) -> Response:
        who = await http.principal(request)
        expires_at = await http.call(broker.token_expires_at, who.id)
        return JSONResponse({"id": who.id, "tenant": who.tenant, "role": who.role.value, "expires_at": expires_at})

    return [
        Route("/v1/whoami", whoami, methods=["GET"]),
        Route("/v1/tenants", tenants, methods=["GET", "POST"]),
        Route("/v1/principals", principals, methods=["GET", "POST"]),
        Route("/v1/principals/{pid}/disable", disable, methods=["POST"]),
        Route("/v1/principals/{pid}/token", rotate, methods=["POST"]),
    ]
