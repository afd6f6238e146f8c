"""Each tenant's catalogue: policies, reference sets, models, and a model key's export."""

from __future__ import annotations

import base64

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from weightvault.server import schemas
from weightvault.server.http import HTTP, b64, handler


def routes(http: HTTP) -> list[BaseRoute]:
    broker = http.broker

    @handler
    async def policies(request: Request) -> Response:
        who = await http.principal(request)
        tenant = request.path_params["tenant"]
        if request.method == "GET":
            rows = await http.call(broker.list_policies, who, tenant)
            listed = [
                {
                    "name": r.name,
                    "version": r.version,
                    "digest": r.digest,
                    "immutable": r.immutable,
                    "document": r.document,
                }
                for r in rows
            ]
            return JSONResponse({"policies": listed})
        req = await http.body(request, schemas.PolicyRequest)
        name = request.path_params["name"]
        version = await http.call(broker.put_policy, who, tenant, name, req.document, req.approval)
        return JSONResponse({"name": name, "version": version})

    @handler
    async def refset_list(request: Request) -> Response:
        who = await http.principal(request)
        sets = await http.call(broker.list_refsets, who, request.path_params["tenant"])
        return JSONResponse({"refsets": [{"name": n, "items": sorted(v)} for n, v in sorted(sets.items())]})

    @handler
    async def refsets(request: Request) -> Response:
        who = await http.principal(request)
        req = await http.body(request, schemas.RefsetRequest)
        await http.call(broker.put_refset, who, request.path_params["tenant"], request.path_params["name"], req.items)
        return JSONResponse({"name": request.path_params["name"], "items": len(set(req.items))})

    @handler
    async def models(request: Request) -> Response:
        who = await http.principal(request)
        tenant = request.path_params["tenant"]
        if request.method == "GET":
            rows = await http.call(broker.list_models, who, tenant)
            listed = [
                {"resource": m.resource, "policy": m.policy, "files": m.files, "tags": m.tags, "signer": m.signer}
                for m in rows
            ]
            return JSONResponse({"models": listed})
        req = await http.body(request, schemas.ModelRequest)
        resource = await http.call(
            broker.register_sealed_model,
            who,
            tenant,
            req.name,
            req.version,
            policy=req.policy,
            kem=req.kem,
            sealed_key=b64(req.sealed_key, "sealed_key"),
            files=req.files,
            tags=req.tags,
            signature=None if req.signature is None else b64(req.signature, "signature"),
            manifest=None if req.manifest is None else b64(req.manifest, "manifest"),
        )
        return JSONResponse({"resource": resource}, status_code=201)

    @handler
    async def export(request: Request) -> Response:
        who = await http.principal(request)
        req = await http.body(request, schemas.ExportRequest)
        p = request.path_params
        sealed = await http.call(
            broker.export_key,
            who,
            p["tenant"],
            p["name"],
            p["version"],
            kem=req.hpke.kem,
            public=b64(req.hpke.public, "hpke.public"),
            approval=req.approval,
        )
        return JSONResponse({"sealed": base64.b64encode(sealed).decode()})

    return [
        Route("/v1/tenants/{tenant}/policies", policies, methods=["GET"]),
        Route("/v1/tenants/{tenant}/policies/{name}", policies, methods=["PUT"]),
        Route("/v1/tenants/{tenant}/refsets", refset_list, methods=["GET"]),
        Route("/v1/tenants/{tenant}/refsets/{name}", refsets, methods=["PUT"]),
        Route("/v1/tenants/{tenant}/models", models, methods=["GET", "POST"]),
        Route("/v1/tenants/{tenant}/models/{name}/{version}/export", export, methods=["POST"]),
    ]
