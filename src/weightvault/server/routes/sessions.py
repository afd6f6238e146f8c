"""The release protocol: ``GET /v1/keys``, ``POST /v1/challenges``, ``/v1/attest``, ``/v1/release``."""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from weightvault.broker.release import ReleaseOutcome
from weightvault.server import schemas
from weightvault.server.http import HTTP, b64, handler


def _release_json(outcome: ReleaseOutcome) -> dict[str, Any]:
    return {
        "resource": outcome.resource,
        "kem": outcome.kem,
        "sealed": base64.b64encode(outcome.sealed).decode(),
        "jti": outcome.jti,
        "files": list(outcome.files),
        "partial": outcome.partial,
    }


def routes(http: HTTP) -> list[BaseRoute]:
    broker = http.broker

    @handler
    async def keys(request: Request) -> Response:
        await http.principal(request)
        key = broker.registration_key.recipient
        token_keys = {kid: base64.b64encode(raw).decode() for kid, raw in broker.token_keys().items()}
        return JSONResponse(
            {
                "registration": {"kem": key.kem.value, "public": base64.b64encode(key.public).decode(), "kid": key.kid},
                "token_signing": token_keys,
            }
        )

    @handler
    async def challenge(request: Request) -> Response:
        who = await http.principal(request)
        req = await http.body(request, schemas.ChallengeRequest)
        ch = await http.call(broker.issue_challenge, who, req.device_id)
        hints = await http.call(broker.challenge_hints, ch)
        doc = {
            "challenge_id": ch.id,
            "nonce": base64.b64encode(ch.nonce).decode(),
            "expires_at": ch.expires_at,
            "tenant": ch.tenant,
            **hints,
        }
        return JSONResponse(doc, status_code=201)

    @handler
    async def attest(request: Request) -> Response:
        who = await http.principal(request)
        req = await http.body(request, schemas.AttestRequest)
        public = b64(req.hpke.public, "hpke.public")
        release = (req.release.resource, req.release.tensors) if req.release else None
        approval = req.release.approval if req.release else None
        outcome = await http.call(
            broker.attest, who, req.challenge_id, req.hpke.kem, public, req.evidence, release=release, approval=approval
        )
        doc: dict[str, Any] = {
            "token": outcome.token,
            "expires_at": outcome.expires_at,
            "jti": outcome.jti,
            "verifier": outcome.verifier,
            "device_id": outcome.device_id,
        }
        if outcome.release is not None:
            doc["release"] = _release_json(outcome.release)
        return JSONResponse(doc)

    @handler
    async def release(request: Request) -> Response:
        who = await http.principal(request)
        req = await http.body(request, schemas.ReleaseRequest)
        outcome = await http.call(broker.release, who, req.token, req.resource, req.tensors, req.approval)
        return JSONResponse(_release_json(outcome))

    return [
        Route("/v1/keys", keys, methods=["GET"]),
        Route("/v1/challenges", challenge, methods=["POST"]),
        Route("/v1/attest", attest, methods=["POST"]),
        Route("/v1/release", release, methods=["POST"]),
    ]
