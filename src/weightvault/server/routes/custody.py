"""Custody: status, seal, ceremonies. Custodians reach ceremonies with their signatures alone (no token)."""

from __future__ import annotations

import base64

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from weightvault.server import schemas
from weightvault.server.http import HTTP, b64, handler


def routes(http: HTTP) -> list[BaseRoute]:
    broker = http.broker
    custody = broker.custody  # the anonymous endpoints: each step is authenticated by a custodian's signature

    @handler
    async def status(request: Request) -> Response:
        who = await http.principal(request)
        return JSONResponse(await http.call(broker.custody_status, who))

    @handler
    async def seal(request: Request) -> Response:
        who = await http.principal(request)
        await http.call(broker.seal, who)
        return JSONResponse({"sealed": True})

    @handler
    async def open_ceremony(request: Request) -> Response:
        who = await http.principal(request)
        req = await http.body(request, schemas.CeremonyRequest)
        terms = await http.call(
            broker.open_ceremony,
            who,
            req.kind,
            ttl=req.ttl_seconds,
            params=req.params,
            set_id=req.set,
            approval=req.approval,
        )
        return JSONResponse(terms.to_json(), status_code=201)

    @handler
    async def ceremony(request: Request) -> Response:
        await http.anonymous(request)
        return JSONResponse(await http.call(custody.ceremony, request.path_params["cid"]))

    @handler
    async def submit(request: Request) -> Response:
        await http.anonymous(request)
        req = await http.body(request, schemas.ShareSubmission)
        result = await http.call(
            custody.submit,
            request.path_params["cid"],
            req.custodian,
            b64(req.sealed, "sealed"),
            b64(req.signature, "signature"),
        )
        return JSONResponse(result)

    @handler
    async def cancel(request: Request) -> Response:
        await http.anonymous(request)
        req = await http.body(request, schemas.CeremonyCancel)
        await http.call(custody.cancel, request.path_params["cid"], req.custodian, b64(req.signature, "signature"))
        return JSONResponse({"id": request.path_params["cid"], "status": "cancelled"})

    @handler
    async def delivery(request: Request) -> Response:
        await http.anonymous(request)
        sealed = await http.call(custody.delivery, request.path_params["sid"], request.path_params["custodian"])
        return JSONResponse({"set": request.path_params["sid"], "sealed": base64.b64encode(sealed).decode()})

    return [
        Route("/v1/custody", status, methods=["GET"]),
        Route("/v1/custody/seal", seal, methods=["POST"]),
        Route("/v1/custody/ceremonies", open_ceremony, methods=["POST"]),
        Route("/v1/custody/ceremonies/{cid}", ceremony, methods=["GET"]),
        Route("/v1/custody/ceremonies/{cid}/shares", submit, methods=["POST"]),
        Route("/v1/custody/ceremonies/{cid}/cancel", cancel, methods=["POST"]),
        Route("/v1/custody/sets/{sid}/shares/{custodian}", delivery, methods=["GET"]),
    ]
