"""Devices: ``/v1/devices``, TPM enrolment (``/enroll``, ``/{id}/credential``), revoke, activate, tenants."""

from __future__ import annotations

import base64
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from weightvault.broker.protocol import ErrorCode
from weightvault.server import schemas
from weightvault.server.http import HTTP, HTTPProblemError, b64, handler

_STATUS_OF: Final = {"revoke": "revoked", "activate": "active"}


def routes(http: HTTP) -> list[BaseRoute]:
    broker = http.broker

    @handler
    async def devices(request: Request) -> Response:
        who = await http.principal(request)
        if request.method == "GET":
            rows = await http.call(broker.list_devices, who, request.query_params.get("tenant"))
            listed = [{"id": d.id, "kind": d.kind, "status": d.status, "tenants": sorted(d.tenants)} for d in rows]
            return JSONResponse({"devices": listed})
        req = await http.body(request, schemas.DeviceRequest)
        await http.call(broker.add_device, who, req.id, req.kind, req.tenants, req.identity, approval=req.approval)
        return JSONResponse({"id": req.id, "status": "active"}, status_code=201)

    @handler
    async def enrol(request: Request) -> Response:
        who = await http.principal(request)
        req = await http.body(request, schemas.EnrolRequest)
        blob, secret = await http.call(
            broker.enrol_tpm_device,
            who,
            req.id,
            req.tenants,
            ek_cert=b64(req.ek_cert, "ek_cert"),
            ek_public=b64(req.ek_public, "ek_public"),
            ak_public=b64(req.ak_public, "ak_public"),
            approval=req.approval,
        )
        doc = {
            "id": req.id,
            "status": "pending",
            "credential_blob": base64.b64encode(blob).decode(),
            "encrypted_secret": base64.b64encode(secret).decode(),
        }
        return JSONResponse(doc, status_code=201)

    @handler
    async def credential(request: Request) -> Response:
        who = await http.principal(request)
        req = await http.body(request, schemas.CredentialRequest)
        await http.call(broker.activate_tpm_device, who, request.path_params["did"], b64(req.secret, "secret"))
        return JSONResponse({"id": request.path_params["did"], "status": "active"})

    @handler
    async def action(request: Request) -> Response:
        who = await http.principal(request)
        device_id, verb = request.path_params["did"], request.path_params["action"]
        if verb == "tenants":
            req = await http.body(request, schemas.DeviceTenantsRequest)
            await http.call(broker.set_device_tenants, who, device_id, req.tenants)
            return JSONResponse({"id": device_id, "tenants": sorted(req.tenants)})
        status = _STATUS_OF.get(verb)
        if status is None:
            raise HTTPProblemError(404, ErrorCode.NOT_FOUND, "Not found")
        await http.call(broker.set_device_status, who, device_id, status)
        return JSONResponse({"id": device_id, "status": status})

    return [
        Route("/v1/devices", devices, methods=["GET", "POST"]),
        Route("/v1/devices/enroll", enrol, methods=["POST"]),
        Route("/v1/devices/{did}/credential", credential, methods=["POST"]),
        Route("/v1/devices/{did}/{action}", action, methods=["POST", "PUT"]),
    ]
