"""``GET /v1/health/live``, ``/v1/health/ready`` (and ``/v1/health``): no token needed."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from weightvault.server.http import HTTP, handler


def routes(http: HTTP) -> list[BaseRoute]:
    @handler
    async def live(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @handler
    async def ready(request: Request) -> Response:
        state = await http.call(http.broker.health)
        body: dict[str, object] = {"status": "ok" if state.ready else "unavailable", "sealed": state.sealed}
        if not state.ready:
            body["problems"] = list(state.problems)
        return JSONResponse(body, status_code=200 if state.ready else 503)

    return [
        Route("/v1/health", ready, methods=["GET"]),
        Route("/v1/health/ready", ready, methods=["GET"]),
        Route("/v1/health/live", live, methods=["GET"]),
    ]
