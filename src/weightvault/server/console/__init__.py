"""The web console at ``/console``: server-rendered pages over the broker facade (docs/console.md).

Sign-in exchanges an API token for a session cookie (HttpOnly, SameSite=Strict, Secure
over TLS, path ``/console``). Every change (sign-in, sign-out) is a POST that must come
from this origin (``Origin`` and ``Sec-Fetch-Site``) and, once signed in, carry the
session's CSRF token. Pages are Jinja2 templates with autoescape; the only script is
``static/console.js`` (no inline script: the Content-Security-Policy forbids it), which
checks inclusion proofs in the browser with WebCrypto. Authorisation is the facade's,
exactly as for the API: a page calls the same methods with the session's principal.
"""

from __future__ import annotations

import base64
import logging
import shlex
import urllib.parse
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Final

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from weightvault.auditlog.events import decode_event
from weightvault.broker.console import csrf_token
from weightvault.broker.protocol import problem_of
from weightvault.broker.service import Principal, Role
from weightvault.errors import (
    AuthenticationError,
    CSRFError,
    NotFoundError,
    PermissionDeniedError,
    SessionEndedError,
    TokenExpiredError,
    WeightVaultError,
)
from weightvault.server.console import views
from weightvault.server.http import HTTP, handler, read_bounded

__all__ = ["CONTENT_SECURITY_POLICY", "routes"]

_log = logging.getLogger("weightvault.server.console")

#: No inline script or style, nothing from another origin, no framing, forms post here only.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS: Final = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)
_COOKIE: Final = "wv_console"
_SECURE_COOKIE: Final = "__Host-wv_console"  # over TLS: bound to this host, Secure, path /
_MAX_FORM_BYTES: Final = 8 << 10
#: The pseudo-tenant of broker-wide events in the log.
BROKER_WIDE: Final = "-"
#: Events shown per page of a list, and events read at most to fill one (filters skip some).
PAGE: Final = 100
SCAN: Final = 5000
#: Attestations read for the devices page's "last attestation" column (a device silent longer shows none).
ATTESTATIONS: Final = 1000

Page = Callable[[Request, Principal], Awaitable[Response]]


class _SecurityHeaders:
    """Adds the console's headers to every response under ``/console`` (pages, errors and static files)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in _HEADERS if h[0] not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("weightvault.server.console", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["shell_quote"] = _shell_quote
    env.globals["timestamp"] = views.timestamp
    return env


def _shell_quote(value: str) -> str:
    return shlex.quote(value)


def _cookie_name(request: Request) -> str:
    return _SECURE_COOKIE if request.url.scheme == "https" else _COOKIE


def _same_origin(request: Request) -> bool:
    """A POST from one of this console's own pages: Sec-Fetch-Site (sent by every current browser)
    and Origin, when present, must both say so. Cross-site forms fail here before any other check."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:  # browsers send Origin with every POST; a client without one is no cross-site form
        return True
    if origin == "null":  # an opaque origin (sandboxed frame, file:): only if the browser says same-origin
        return site == "same-origin"
    return origin == f"{request.url.scheme}://{request.url.netloc}"


def routes(http: HTTP, log_vkey: str | None = None) -> list[BaseRoute]:
    broker = http.broker
    env = _environment()

    def render(request: Request, template: str, http_status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("who", None)
        context.setdefault("csrf", "")
        context.setdefault("tenant", None)
        body = env.get_template(template).render(request_path=request.url.path, **context)
        return HTMLResponse(body, status_code=http_status)

    def error_page(request: Request, error: WeightVaultError, who: Principal | None = None) -> Response:
        code, status, title, detail = problem_of(error)
        if isinstance(error, SessionEndedError | AuthenticationError) and not isinstance(error, CSRFError):
            detail = detail or str(error)
        return render(
            request,
            "error.html",
            http_status=status,
            title=title,
            detail=detail or "",
            code=code.value,
            signed_in=who is not None,
            who=who,
        )

    async def session(request: Request) -> tuple[Principal, str]:
        secret = request.cookies.get(_cookie_name(request), "")
        if not secret:
            raise SessionEndedError("you are not signed in")
        who = await http.call(broker.console_principal, secret)
        await http.call(http.limited, request, who, ("principal", who.id), http.limiter)
        return who, secret

    def page(func: Page) -> Callable[[Request], Awaitable[Response]]:
        """A signed-in page: errors become an HTML page with the problem's status, never a trace."""

        async def wrapped(request: Request) -> Response:
            who: Principal | None = None
            try:
                who, secret = await session(request)
                request.state.csrf = csrf_token(secret)
                return await func(request, who)
            except SessionEndedError as error:
                if request.url.path.rstrip("/") == "/console" and not request.cookies:
                    return RedirectResponse("/console/login", status_code=303)
                return error_page(request, error)
            except WeightVaultError as error:
                return error_page(request, error, who)
            except Exception:
                _log.exception("unhandled error in %s %s", request.method, request.url.path)
                return render(
                    request,
                    "error.html",
                    http_status=500,
                    title="Internal error",
                    detail="",
                    code="internal_error",
                    signed_in=False,
                    who=None,
                )

        return wrapped

    def api(func: Page) -> Callable[[Request], Awaitable[Response]]:
        """A signed-in JSON endpoint of the console's script: errors are problem+json, as the API's."""

        async def signed_in(request: Request) -> Response:
            who, _ = await session(request)
            return await func(request, who)

        return handler(signed_in)

    def context(request: Request, who: Principal, tenant: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"who": who, "csrf": request.state.csrf, "tenant": tenant, **extra}

    async def tenant_of(request: Request, who: Principal) -> str:
        """The URL's tenant, if this principal may open it: its own, or any existing one for operators
        and approvers (whose reads the facade scopes further)."""
        tenant = str(request.path_params["tenant"])
        if who.role in (Role.OPERATOR, Role.APPROVER):
            # "-" holds the broker-wide events (custody, approval policy, devices, rotations): operators only.
            if tenant == BROKER_WIDE and who.role is Role.OPERATOR:
                return tenant
            if who.role is Role.OPERATOR and tenant not in await http.call(broker.list_tenants, who):
                raise NotFoundError(f"no tenant {tenant}")
            return tenant
        if tenant != who.tenant:
            raise PermissionDeniedError("not allowed for this tenant")
        return tenant

    # -- signing in and out ----------------------------------------------------------------------

    async def login_form(request: Request) -> Response:
        return render(request, "login.html", message=_login_message(request.query_params.get("m", "")))

    async def login(request: Request) -> Response:
        try:
            if not _same_origin(request):
                raise CSRFError("sign-in from another site")
            await http.anonymous(request)
            raw = await read_bounded(request, _MAX_FORM_BYTES)
            ctype = request.headers.get("content-type", "").split(";")[0].strip()
            if raw is None or ctype != "application/x-www-form-urlencoded":
                return render(request, "login.html", http_status=400, message="Send the sign-in form.")
            token = _field(raw, "token").strip()
            try:
                opened = await http.call(broker.console_sign_in, token)
            except AuthenticationError as exc:
                expired = isinstance(exc, TokenExpiredError)
                await http.failed_token(request, token, expired=expired)  # recorded; RateLimitedError once too many
                message = (
                    "That API token has expired: ask for a new one." if expired else "That API token was not accepted."
                )
                return render(request, "login.html", http_status=401, message=message)
        except WeightVaultError as error:
            return error_page(request, error)
        response = RedirectResponse("/console/", status_code=303)
        secure = request.url.scheme == "https"
        response.set_cookie(
            _cookie_name(request),
            opened.secret,
            max_age=broker.config.console_session_seconds,
            path="/" if secure else "/console",
            secure=secure,
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(request: Request) -> Response:
        if not _same_origin(request):
            return error_page(request, CSRFError("sign-out from another site"))
        secret = request.cookies.get(_cookie_name(request), "")
        raw = await read_bounded(request, _MAX_FORM_BYTES)
        try:
            await http.call(broker.console_sign_out, secret, _field(raw or b"", "csrf"))
        except WeightVaultError as error:
            return error_page(request, error)
        response = RedirectResponse("/console/login?m=signed-out", status_code=303)
        secure = request.url.scheme == "https"
        response.delete_cookie(
            _cookie_name(request), path="/" if secure else "/console", secure=secure, httponly=True, samesite="strict"
        )
        return response

    # -- pages -----------------------------------------------------------------------------------

    @page
    async def home(request: Request, who: Principal) -> Response:
        if who.role is Role.OPERATOR:
            tenants = await http.call(broker.list_tenants, who)
        elif who.tenant is not None:
            tenants = [who.tenant]
        else:  # approvers: their queue spans tenants
            tenants = sorted(
                {r["request"]["tenant"] for r in await http.call(broker.approval_requests, who, None, "pending")}
            )
        return render(request, "home.html", **context(request, who, tenants=tenants))

    @page
    async def tenant_home(request: Request, who: Principal) -> Response:
        tenant = await tenant_of(request, who)
        return render(request, "tenant.html", **context(request, who, tenant))

    @page
    async def models(request: Request, who: Principal) -> Response:
        tenant = await tenant_of(request, who)
        rows = await http.call(broker.list_models, who, tenant)
        return render(
            request, "models.html", **context(request, who, tenant, models=[views.model_view(r) for r in rows])
        )

    @page
    async def devices(request: Request, who: Principal) -> Response:
        tenant = await tenant_of(request, who)
        rows = await http.call(broker.list_devices, who, tenant)
        recent = await http.call(
            broker.recent_events, who, tenant, before=None, type_prefix="attest.", limit=ATTESTATIONS
        )
        last: dict[str, tuple[int, Any]] = {}
        for index, event in recent:  # newest first: the first seen per device is its latest
            device = str(event.details.get("device", ""))
            if device and device not in last:
                last[device] = (index, event)
        shown = [
            views.device_view(r, last[r.id][1] if r.id in last else None, last[r.id][0] if r.id in last else None)
            for r in rows
        ]
        by_status: dict[str, int] = {}
        for d in shown:
            by_status[d["status"]] = by_status.get(d["status"], 0) + 1
        return render(
            request, "devices.html", **context(request, who, tenant, devices=shown, by_status=sorted(by_status.items()))
        )

    @page
    async def policies(request: Request, who: Principal) -> Response:
        tenant = await tenant_of(request, who)
        rows = await http.call(broker.list_policies, who, tenant)
        return render(request, "policies.html", **context(request, who, tenant, histories=views.policy_histories(rows)))

    @page
    async def principals(request: Request, who: Principal) -> Response:
        tenant = await tenant_of(request, who)
        rows = await http.call(broker.list_principals, who, tenant)
        return render(
            request,
            "principals.html",
            **context(request, who, tenant, principals=[views.principal_view(r) for r in rows]),
        )

    async def event_page(
        request: Request, who: Principal, tenant: str, type_prefix: str | None, fields: dict[str, str]
    ) -> tuple[list[views.EventView], int | None]:
        """One page of a tenant's events, newest first, filtered; and the ``before`` of the next page."""
        before_text = request.query_params.get("before", "")
        cursor = int(before_text) if before_text.isdigit() and len(before_text) < 19 else None
        shown: list[views.EventView] = []
        scanned = 0
        size = 4 * PAGE if any(fields.values()) else PAGE
        # Read in batches until the page is full: without filters that is one batch of PAGE; with
        # filters that reject most events, at most SCAN events, and the next page goes on from there.
        while scanned < SCAN:
            batch = await http.call(
                broker.recent_events,
                who,
                tenant,
                before=cursor,
                type_prefix=type_prefix,
                limit=size,
            )
            for index, event in batch:
                scanned += 1
                cursor = index
                view = views.event_view(index, event)
                if views.matches(view, **fields):
                    shown.append(view)
                    if len(shown) == PAGE:
                        return shown, index
            if len(batch) < size:
                return shown, None  # the start of the log
        return shown, cursor

    def filters(request: Request, *names: str) -> dict[str, str]:
        return {n: request.query_params.get(n, "")[: views.MAX_FILTER_CHARS] for n in names}

    @page
    async def releases(request: Request, who: Principal) -> Response:
        tenant = await tenant_of(request, who)
        wanted = filters(request, "decision", "resource", "device", "actor")
        shown, next_before = await event_page(request, who, tenant, "policy.decision", wanted)
        return render(
            request,
            "releases.html",
            **context(request, who, tenant, events=shown, filters=wanted, next_before=next_before),
        )

    @page
    async def approvals(request: Request, who: Principal) -> Response:
        tenant = await tenant_of(request, who)
        status = request.query_params.get("status", "pending")
        if status not in ("pending", "approved", "denied", "executed"):
            status = "pending"
        found = await http.call(broker.approval_requests, who, tenant, status)
        return render(
            request,
            "approvals.html",
            **context(
                request,
                who,
                tenant,
                requests=[r for r in found if r["request"]["tenant"] == tenant],
                status=status,
            ),
        )

    @page
    async def alerts(request: Request, who: Principal) -> Response:
        tenant = await tenant_of(request, who)
        found = await http.call(
            broker.recent_events, who, tenant, before=None, type_prefix="sentinel.alert", limit=PAGE
        )
        holds = await http.call(broker.list_holds, who, tenant, active_only=False)
        shown = [views.alert_view(i, e) for i, e in found]
        return render(
            request,
            "alerts.html",
            **context(request, who, tenant, alerts=shown, holds=holds),
        )

    @page
    async def audit(request: Request, who: Principal) -> Response:
        tenant = await tenant_of(request, who)
        wanted = filters(request, "actor", "resource")
        prefix = request.query_params.get("type", "")[: views.MAX_FILTER_CHARS].strip() or None
        shown, next_before = await event_page(request, who, tenant, prefix, wanted)
        return render(
            request,
            "audit.html",
            **context(
                request, who, tenant, events=shown, filters={**wanted, "type": prefix or ""}, next_before=next_before
            ),
        )

    @page
    async def event(request: Request, who: Principal) -> Response:
        tenant = await tenant_of(request, who)
        index = int(request.path_params["index"])
        bundle = await http.call(broker.audit_proof, who, tenant, index)
        shown = views.event_view(index, decode_event(bundle["entry"]))
        # Events of this tenant that refer to this one (a decision's intent and outcome follow it closely).
        after = await http.call(broker.recent_events, who, tenant, before=index + 64, type_prefix=None, limit=64)
        referring = [views.event_view(i, e) for i, e in reversed(after) if i > index and index in e.refs.values()]
        return render(
            request,
            "event.html",
            **context(request, who, tenant, event=shown, referring=referring, log_vkey=log_vkey or ""),
        )

    @api
    async def proof(request: Request, who: Principal) -> Response:
        tenant = await tenant_of(request, who)
        bundle = await http.call(broker.audit_proof, who, tenant, int(request.path_params["index"]))
        return JSONResponse(
            {
                "index": bundle["index"],
                "entry": base64.b64encode(bundle["entry"]).decode(),
                "proof": [base64.b64encode(h).decode() for h in bundle["proof"]],
                "checkpoint": bundle["checkpoint"],
                "log_vkey": log_vkey,
            }
        )

    static = StaticFiles(directory=str(resources.files("weightvault.server.console") / "static"))
    console = Router(
        routes=[
            Route("/", home, methods=["GET"]),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/t/{tenant}/", tenant_home, methods=["GET"]),
            Route("/t/{tenant}/models", models, methods=["GET"]),
            Route("/t/{tenant}/devices", devices, methods=["GET"]),
            Route("/t/{tenant}/policies", policies, methods=["GET"]),
            Route("/t/{tenant}/principals", principals, methods=["GET"]),
            Route("/t/{tenant}/releases", releases, methods=["GET"]),
            Route("/t/{tenant}/approvals", approvals, methods=["GET"]),
            Route("/t/{tenant}/alerts", alerts, methods=["GET"]),
            Route("/t/{tenant}/audit", audit, methods=["GET"]),
            Route("/t/{tenant}/audit/{index:int}", event, methods=["GET"]),
            Route("/api/t/{tenant}/proof/{index:int}", proof, methods=["GET"]),
            Mount("/static", app=static),
        ]
    )

    async def not_found(request: Request) -> Response:
        return render(
            request,
            "error.html",
            http_status=404,
            title="Not found",
            detail="",
            code="not_found",
            signed_in=False,
            who=None,
        )

    console.default = _as_app(not_found)
    return [
        Route("/console", _to_console, methods=["GET"]),
        Mount("/console", app=_SecurityHeaders(console)),
    ]


def _as_app(func: Callable[[Request], Awaitable[Response]]) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await func(Request(scope, receive))
        await response(scope, receive, send)

    return app


async def _to_console(request: Request) -> Response:
    return RedirectResponse("/console/", status_code=303)


def _field(body: bytes, name: str) -> str:
    """One field of a url-encoded form ("" when absent, repeated, or the form has too many fields)."""
    try:
        values = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=4).get(name, [])
    except ValueError:
        return ""
    return values[0] if len(values) == 1 else ""


def _login_message(key: str) -> str:
    return {"signed-out": "You have signed out."}.get(key, "")
