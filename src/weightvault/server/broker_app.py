"""The key broker over HTTP (Starlette): authentication, limits, problem+json, routes.

Every request is authenticated by ``Authorization: Bearer <API token>`` except
``GET /v1/health`` (and its ``/live`` and ``/ready`` forms). Bodies must be ``application/json`` and at most
``max_body_bytes``; they are parsed strictly (unknown fields rejected). Errors are
RFC 7807 problem+json with stable codes (:mod:`weightvault.server.problems`).
Requests are rate-limited per principal with a token bucket.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from weightvault.auditlog.log import LogReader
from weightvault.broker.service import KeyBroker, Principal, Role
from weightvault.errors import (
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    WeightVaultError,
)
from weightvault.server import schemas
from weightvault.server.problems import problem, problem_for
from weightvault.server.tiles_app import tile_response

_log = logging.getLogger(__name__)

__all__ = ["ServerLimits", "create_broker_app"]

_B = TypeVar("_B", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_body_bytes: int = 256 << 10
    rate_per_second: float = 200.0
    burst: int = 400
    rotation_check_seconds: float = 60.0


class _RateLimiter:
    """A token bucket per principal."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self._burst), now))
            tokens = min(float(self._burst), tokens + (now - last) * self._rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise RateLimitedError("rate limit exceeded")
            self._buckets[key] = (tokens - 1.0, now)


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(f"{what} is not base64") from None


def create_broker_app(
    broker: KeyBroker, audit: LogReader | None = None, limits: ServerLimits = ServerLimits()
) -> Starlette:
    limiter = _RateLimiter(limits.rate_per_second, limits.burst)

    async def body(request: Request, model: type[_B]) -> _B:
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise _HTTPProblemError(415, "unsupported_media_type", "Send application/json")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limits.max_body_bytes):
            raise _HTTPProblemError(413, "payload_too_large", "Request body too large")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limits.max_body_bytes:
                raise _HTTPProblemError(413, "payload_too_large", "Request body too large")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise _HTTPProblemError(400, "invalid_json", "Body is not valid JSON") from None
        try:
            return model.model_validate(doc)
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
            raise _HTTPProblemError(
                422, "invalid_request", "Invalid request", f"invalid or unknown fields: {fields}"
            ) from None

    async def principal(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer":
            credential = ""
        who = await run_in_threadpool(broker.authenticate, credential.strip())
        limiter.take(who.id)
        return who

    def handler(func: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await func(request)
            except _HTTPProblemError as p:
                return problem(p.status, p.code, p.title, p.detail)
            except WeightVaultError as error:
                return problem_for(error)
            except Exception:
                # A bug or an unexpected library error: the caller gets the problem format
                # with no detail, the operator the traceback.
                _log.exception("unhandled error in %s %s", request.method, request.url.path)
                return problem(500, "internal_error", "Internal error")

        return wrapped

    def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return run_in_threadpool(fn, *args, **kwargs)

    def anonymous(request: Request) -> None:
        """Rate limiting for the endpoints custodians reach without an API token."""
        limiter.take("anonymous:" + (request.client.host if request.client else "-"))

    @handler
    async def live(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @handler
    async def ready(request: Request) -> Response:
        state = await call(broker.health)
        body = {"status": "ok" if state.ready else "unavailable", "sealed": state.sealed}
        if not state.ready:
            body["problems"] = list(state.problems)
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @handler
    async def keys(request: Request) -> Response:
        await principal(request)
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
        who = await principal(request)
        req = await body(request, schemas.ChallengeRequest)
        ch = await call(broker.issue_challenge, who, req.device_id)
        hints = await call(broker.challenge_hints, ch)
        return JSONResponse(
            {
                "challenge_id": ch.id,
                "nonce": base64.b64encode(ch.nonce).decode(),
                "expires_at": ch.expires_at,
                "tenant": ch.tenant,
                **hints,
            },
            status_code=201,
        )

    def release_json(outcome: Any) -> dict[str, Any]:
        return {
            "resource": outcome.resource,
            "kem": outcome.kem,
            "sealed": base64.b64encode(outcome.sealed).decode(),
            "jti": outcome.jti,
            "files": list(outcome.files),
            "partial": outcome.partial,
        }

    @handler
    async def attest(request: Request) -> Response:
        who = await principal(request)
        req = await body(request, schemas.AttestRequest)
        public = _b64(req.hpke.public, "hpke.public")
        release = (req.release.resource, req.release.tensors) if req.release else None
        approval = req.release.approval if req.release else None
        outcome = await call(
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
            doc["release"] = release_json(outcome.release)
        return JSONResponse(doc)

    @handler
    async def release(request: Request) -> Response:
        who = await principal(request)
        req = await body(request, schemas.ReleaseRequest)
        outcome = await call(broker.release, who, req.token, req.resource, req.tensors, req.approval)
        return JSONResponse(release_json(outcome))

    @handler
    async def tenants(request: Request) -> Response:
        who = await principal(request)
        if request.method == "GET":
            who.require(Role.OPERATOR)
            return JSONResponse({"tenants": await call(broker.store.list_tenants)})
        req = await body(request, schemas.TenantRequest)
        await call(broker.create_tenant, who, req.id)
        return JSONResponse({"id": req.id}, status_code=201)

    @handler
    async def principals(request: Request) -> Response:
        who = await principal(request)
        if request.method == "GET":
            tenant = request.query_params.get("tenant")
            if who.role is not Role.OPERATOR:
                who.require(Role.TENANT_ADMIN)
                tenant = who.tenant
            rows = await call(broker.store.list_principals, tenant)
            return JSONResponse(
                {
                    "principals": [
                        {"id": r.id, "tenant": r.tenant_id, "role": r.role, "disabled": r.disabled} for r in rows
                    ]
                }
            )
        req = await body(request, schemas.PrincipalRequest)
        try:
            role = Role(req.role)
        except ValueError:
            raise InvalidRequestError(f"unknown role {req.role!r}") from None
        token = await call(broker.create_principal, who, req.id, req.tenant, role)
        return JSONResponse({"id": req.id, "role": role.value, "tenant": req.tenant, "token": token}, status_code=201)

    @handler
    async def principal_disable(request: Request) -> Response:
        who = await principal(request)
        await call(broker.disable_principal, who, request.path_params["pid"])
        return JSONResponse({"id": request.path_params["pid"], "disabled": True})

    @handler
    async def devices(request: Request) -> Response:
        who = await principal(request)
        if request.method == "GET":
            tenant = request.query_params.get("tenant")
            if who.role is not Role.OPERATOR:
                who.require(Role.TENANT_ADMIN, Role.AUDITOR)
                tenant = who.tenant
            rows = await call(broker.store.list_devices, tenant)
            return JSONResponse(
                {
                    "devices": [
                        {"id": d.id, "kind": d.kind, "status": d.status, "tenants": sorted(d.tenants)} for d in rows
                    ]
                }
            )
        req = await body(request, schemas.DeviceRequest)
        await call(broker.add_device, who, req.id, req.kind, req.tenants, req.identity, approval=req.approval)
        return JSONResponse({"id": req.id, "status": "active"}, status_code=201)

    @handler
    async def device_enrol(request: Request) -> Response:
        who = await principal(request)
        req = await body(request, schemas.EnrolRequest)
        blob, secret = await call(
            broker.enrol_tpm_device,
            who,
            req.id,
            req.tenants,
            ek_cert=_b64(req.ek_cert, "ek_cert"),
            ek_public=_b64(req.ek_public, "ek_public"),
            ak_public=_b64(req.ak_public, "ak_public"),
            approval=req.approval,
        )
        return JSONResponse(
            {
                "id": req.id,
                "status": "pending",
                "credential_blob": base64.b64encode(blob).decode(),
                "encrypted_secret": base64.b64encode(secret).decode(),
            },
            status_code=201,
        )

    @handler
    async def device_credential(request: Request) -> Response:
        who = await principal(request)
        req = await body(request, schemas.CredentialRequest)
        await call(broker.activate_tpm_device, who, request.path_params["did"], _b64(req.secret, "secret"))
        return JSONResponse({"id": request.path_params["did"], "status": "active"})

    @handler
    async def device_action(request: Request) -> Response:
        who = await principal(request)
        device_id, action = request.path_params["did"], request.path_params["action"]
        if action == "tenants":
            req = await body(request, schemas.DeviceTenantsRequest)
            await call(broker.set_device_tenants, who, device_id, req.tenants)
            return JSONResponse({"id": device_id, "tenants": sorted(req.tenants)})
        status = {"revoke": "revoked", "activate": "active"}.get(action)
        if status is None:
            raise _HTTPProblemError(404, "not_found", "Not found")
        await call(broker.set_device_status, who, device_id, status)
        return JSONResponse({"id": device_id, "status": status})

    @handler
    async def policies(request: Request) -> Response:
        who = await principal(request)
        tenant = request.path_params["tenant"]
        if request.method == "GET":
            who.require(Role.OPERATOR, Role.TENANT_ADMIN, Role.AUDITOR, Role.PUBLISHER)
            who.require_tenant(tenant)
            rows = await call(broker.store.list_policies, tenant)
            return JSONResponse(
                {
                    "policies": [
                        {
                            "name": r.name,
                            "version": r.version,
                            "digest": r.digest,
                            "immutable": r.immutable,
                            "document": r.document,
                        }
                        for r in rows
                    ]
                }
            )
        req = await body(request, schemas.PolicyRequest)
        version = await call(broker.put_policy, who, tenant, request.path_params["name"], req.document, req.approval)
        return JSONResponse({"name": request.path_params["name"], "version": version})

    @handler
    async def refset_list(request: Request) -> Response:
        who = await principal(request)
        tenant = request.path_params["tenant"]
        who.require(Role.OPERATOR, Role.TENANT_ADMIN, Role.AUDITOR)
        who.require_tenant(tenant)
        sets = await call(broker.store.refsets, tenant)
        return JSONResponse({"refsets": [{"name": n, "items": sorted(v)} for n, v in sorted(sets.items())]})

    @handler
    async def refsets(request: Request) -> Response:
        who = await principal(request)
        req = await body(request, schemas.RefsetRequest)
        await call(broker.put_refset, who, request.path_params["tenant"], request.path_params["name"], req.items)
        return JSONResponse({"name": request.path_params["name"], "items": len(set(req.items))})

    @handler
    async def models(request: Request) -> Response:
        who = await principal(request)
        tenant = request.path_params["tenant"]
        if request.method == "GET":
            who.require_tenant(tenant)
            rows = await call(broker.store.list_models, tenant)
            return JSONResponse(
                {
                    "models": [
                        {"resource": m.resource, "policy": m.policy, "files": m.files, "tags": m.tags} for m in rows
                    ]
                }
            )
        req = await body(request, schemas.ModelRequest)
        resource = await call(
            broker.register_sealed_model,
            who,
            tenant,
            req.name,
            req.version,
            policy=req.policy,
            kem=req.kem,
            sealed_key=_b64(req.sealed_key, "sealed_key"),
            files=req.files,
            tags=req.tags,
        )
        return JSONResponse({"resource": resource}, status_code=201)

    @handler
    async def audit_events(request: Request) -> Response:
        who = await principal(request)
        tenant = request.path_params["tenant"]
        broker.check_audit_access(who, tenant)
        if audit is None:
            raise _HTTPProblemError(404, "not_found", "No audit log")

        def query() -> list[dict[str, Any]]:
            params = request.query_params
            since = int(params["since_ms"]) if params.get("since_ms", "").isdigit() else None
            until = int(params["until_ms"]) if params.get("until_ms", "").isdigit() else None
            limit = min(int(params.get("limit", "1000")) if params.get("limit", "").isdigit() else 1000, 10_000)
            out = []
            for index, event in audit.events(tenant=tenant, since_ms=since, until_ms=until):
                out.append({"index": index, **event.to_json()})
                if len(out) >= limit:
                    break
            return out

        return JSONResponse({"events": await run_in_threadpool(query)})

    @handler
    async def audit_tiles(request: Request) -> Response:
        who = await principal(request)
        who.require(Role.OPERATOR)
        if audit is None:
            raise _HTTPProblemError(404, "not_found", "No audit log")
        status, content, ctype = await run_in_threadpool(tile_response, audit, request.path_params["path"])
        return Response(content, status_code=status, media_type=ctype)

    # -- approvals -----------------------------------------------------------------------------

    def request_json(request_doc: Any, status: str) -> dict[str, Any]:
        from weightvault.custody.approvals import ApprovalRequest

        req = ApprovalRequest.from_json(request_doc)
        approvals = [
            {"approver": a, "decision": d, "expires_at": e, "signature": base64.b64encode(sig).decode()}
            for a, d, e, sig in broker.store.approvals_for(req.id)
        ]
        evaluation = broker.approvals.evaluate(req, broker.facts(req.tenant, req.params))
        return {
            "request": req.to_json(),
            "digest": req.digest,
            "params_digest": req.params_digest,
            "status": status,
            "summary": req.summary(),
            "needs": evaluation.needed,
            "counted": list(evaluation.counted),
            "approvals": approvals,
        }

    def can_read_requests(who: Principal, tenant: str | None) -> None:
        if who.role in (Role.OPERATOR, Role.APPROVER, Role.AUDITOR):
            if who.role is Role.AUDITOR and tenant != who.tenant:
                raise PermissionDeniedError("auditors read their own tenant's requests only")
            return
        if tenant != who.tenant:
            raise NotFoundError("no such approval request")

    @handler
    async def approval_list(request: Request) -> Response:
        who = await principal(request)
        if request.method == "POST":
            req = await body(request, schemas.ApprovalRequestBody)
            created, _ = await call(broker.request_approval, who, req.op, req.tenant, req.params)
            doc = await call(request_json, created.to_json(), "pending")
            return JSONResponse(doc, status_code=201)
        tenant = request.query_params.get("tenant")
        if who.role not in (Role.OPERATOR, Role.APPROVER):
            tenant = who.tenant
        rows = await call(broker.store.list_approval_requests, tenant, request.query_params.get("status"))
        docs = [await call(request_json, doc, status) for doc, status in rows]
        return JSONResponse({"requests": docs})

    @handler
    async def approval_one(request: Request) -> Response:
        who = await principal(request)
        found = await call(broker.store.approval_request, request.path_params["rid"])
        if found is None:
            raise NotFoundError("no such approval request")
        can_read_requests(who, str(found[0].get("tenant")))
        return JSONResponse(await call(request_json, *found))

    @handler
    async def approval_sign(request: Request) -> Response:
        who = await principal(request)
        req = await body(request, schemas.ApprovalSignature)
        result = await call(
            broker.submit_approval,
            who,
            request.path_params["rid"],
            req.decision,
            req.expires_at,
            _b64(req.signature, "signature"),
        )
        return JSONResponse({"status": result.status, "counted": list(result.counted), "needs": result.needed})

    @handler
    async def approval_policy(request: Request) -> Response:
        who = await principal(request)
        if request.method == "GET":
            who.require(Role.OPERATOR, Role.APPROVER, Role.AUDITOR)
            current = await call(broker.store.approval_policy)
            if current is None:
                raise NotFoundError("no approval policy")
            return JSONResponse({"version": current[0], "document": current[1]})
        req = await body(request, schemas.ApprovalPolicyRequest)
        version = await call(broker.put_approval_policy, who, req.document, req.approval)
        return JSONResponse({"version": version})

    # -- custody ---------------------------------------------------------------------------------

    @handler
    async def custody_status(request: Request) -> Response:
        who = await principal(request)
        who.require(Role.OPERATOR)
        return JSONResponse(await call(broker.custody.status))

    @handler
    async def custody_open(request: Request) -> Response:
        who = await principal(request)
        req = await body(request, schemas.CeremonyRequest)
        terms = await call(
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
    async def custody_ceremony(request: Request) -> Response:
        anonymous(request)
        return JSONResponse(await call(broker.custody.ceremony, request.path_params["cid"]))

    @handler
    async def custody_submit(request: Request) -> Response:
        anonymous(request)
        req = await body(request, schemas.ShareSubmission)
        result = await call(
            broker.custody.submit,
            request.path_params["cid"],
            req.custodian,
            _b64(req.sealed, "sealed"),
            _b64(req.signature, "signature"),
        )
        return JSONResponse(result)

    @handler
    async def custody_cancel(request: Request) -> Response:
        anonymous(request)
        req = await body(request, schemas.CeremonyCancel)
        await call(broker.custody.cancel, request.path_params["cid"], req.custodian, _b64(req.signature, "signature"))
        return JSONResponse({"id": request.path_params["cid"], "status": "cancelled"})

    @handler
    async def custody_delivery(request: Request) -> Response:
        anonymous(request)
        sealed = await call(broker.custody.delivery, request.path_params["sid"], request.path_params["custodian"])
        return JSONResponse({"set": request.path_params["sid"], "sealed": base64.b64encode(sealed).decode()})

    @handler
    async def custody_seal(request: Request) -> Response:
        who = await principal(request)
        await call(broker.seal, who)
        return JSONResponse({"sealed": True})

    # -- rotation and export ------------------------------------------------------------------------

    @handler
    async def kek_action(request: Request) -> Response:
        who = await principal(request)
        tenant, action = request.path_params["tenant"], request.path_params["action"]
        if action == "rotate":
            req = await body(request, schemas.ApprovalOnly)
            version = await call(broker.rotate_kek, who, tenant, req.approval)
            return JSONResponse({"tenant": tenant, "version": version})
        if action == "rewrap":
            moved = await call(broker.rewrap_models, who, tenant)
            return JSONResponse({"tenant": tenant, "rewrapped": moved})
        if action == "retire":
            retire = await body(request, schemas.RetireRequest)
            await call(broker.retire_kek, who, tenant, retire.version)
            return JSONResponse({"tenant": tenant, "retired": retire.version})
        raise _HTTPProblemError(404, "not_found", "Not found")

    @handler
    async def token_key_rotate(request: Request) -> Response:
        who = await principal(request)
        req = await body(request, schemas.ApprovalOnly)
        kid = await call(broker.rotate_token_key, who, req.approval)
        return JSONResponse({"kid": kid})

    @handler
    async def model_export(request: Request) -> Response:
        who = await principal(request)
        req = await body(request, schemas.ExportRequest)
        p = request.path_params
        sealed = await call(
            broker.export_key,
            who,
            p["tenant"],
            p["name"],
            p["version"],
            kem=req.hpke.kem,
            public=_b64(req.hpke.public, "hpke.public"),
            approval=req.approval,
        )
        return JSONResponse({"sealed": base64.b64encode(sealed).decode()})

    routes = [
        Route("/v1/health", ready, methods=["GET"]),
        Route("/v1/health/ready", ready, methods=["GET"]),
        Route("/v1/health/live", live, methods=["GET"]),
        Route("/v1/keys", keys, methods=["GET"]),
        Route("/v1/challenges", challenge, methods=["POST"]),
        Route("/v1/attest", attest, methods=["POST"]),
        Route("/v1/release", release, methods=["POST"]),
        Route("/v1/tenants", tenants, methods=["GET", "POST"]),
        Route("/v1/principals", principals, methods=["GET", "POST"]),
        Route("/v1/principals/{pid}/disable", principal_disable, methods=["POST"]),
        Route("/v1/devices", devices, methods=["GET", "POST"]),
        Route("/v1/devices/enroll", device_enrol, methods=["POST"]),
        Route("/v1/devices/{did}/credential", device_credential, methods=["POST"]),
        Route("/v1/devices/{did}/{action}", device_action, methods=["POST", "PUT"]),
        Route("/v1/tenants/{tenant}/policies", policies, methods=["GET"]),
        Route("/v1/tenants/{tenant}/policies/{name}", policies, methods=["PUT"]),
        Route("/v1/tenants/{tenant}/refsets", refset_list, methods=["GET"]),
        Route("/v1/tenants/{tenant}/refsets/{name}", refsets, methods=["PUT"]),
        Route("/v1/tenants/{tenant}/models", models, methods=["GET", "POST"]),
        Route("/v1/tenants/{tenant}/audit", audit_events, methods=["GET"]),
        Route("/v1/tenants/{tenant}/kek/{action}", kek_action, methods=["POST"]),
        Route("/v1/tenants/{tenant}/models/{name}/{version}/export", model_export, methods=["POST"]),
        Route("/v1/keys/token/rotate", token_key_rotate, methods=["POST"]),
        Route("/v1/approvals", approval_list, methods=["GET", "POST"]),
        Route("/v1/approvals/{rid}", approval_one, methods=["GET"]),
        Route("/v1/approvals/{rid}/sign", approval_sign, methods=["POST"]),
        Route("/v1/approval-policy", approval_policy, methods=["GET", "PUT"]),
        Route("/v1/custody", custody_status, methods=["GET"]),
        Route("/v1/custody/seal", custody_seal, methods=["POST"]),
        Route("/v1/custody/ceremonies", custody_open, methods=["POST"]),
        Route("/v1/custody/ceremonies/{cid}", custody_ceremony, methods=["GET"]),
        Route("/v1/custody/ceremonies/{cid}/shares", custody_submit, methods=["POST"]),
        Route("/v1/custody/ceremonies/{cid}/cancel", custody_cancel, methods=["POST"]),
        Route("/v1/custody/sets/{sid}/shares/{custodian}", custody_delivery, methods=["GET"]),
        Mount("/v1/audit", routes=[Route("/{path:path}", audit_tiles, methods=["GET"])]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def rotate_loop() -> None:
            while True:
                await asyncio.sleep(limits.rotation_check_seconds)
                try:
                    await run_in_threadpool(broker.rotate_due)
                except WeightVaultError:  # logged by the audit events of the attempt; retried next round
                    continue

        task = asyncio.create_task(rotate_loop())
        try:
            yield
        finally:
            task.cancel()
            broker.custody.wipe()

    return Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed}, lifespan=lifespan)


class _HTTPProblemError(Exception):
    def __init__(self, status: int, code: str, title: str, detail: str | None = None) -> None:
        super().__init__(title)
        self.status, self.code, self.title, self.detail = status, code, title, detail


async def _not_found(request: Request, exc: Exception) -> Response:
    return problem(404, "not_found", "Not found")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return problem(405, "method_not_allowed", "Method not allowed")
