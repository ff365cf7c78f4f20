"""The HTTP application: admin API, live calls, health, metrics, on one port."""

from __future__ import annotations

import time
from typing import Any

import structlog
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from bridge import __version__
from bridge.api import directory_routes, users
from bridge.api.auth import Grant, current_user, require
from bridge.api.common import ctx_of
from bridge.carriers.twilio import http as twilio_http
from bridge.carriers.twilio import voice_token
from bridge.console import http as console_http
from bridge.context import AppContext
from bridge.control import http as control_http
from bridge.directory.model import User
from bridge.directory.roles import Action, Scope
from bridge.ws.plugin import include_routes as include_ws_routes

log = structlog.get_logger("bridge.api")


def create_app(ctx: AppContext) -> FastAPI:
    app = FastAPI(
        title="bridge",
        version=__version__,
        description="Telephony bridge: directory, routing (Test Routing), presence, live calls.",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.ctx = ctx
    app.include_router(users.router)
    app.include_router(directory_routes.router)
    app.include_router(twilio_http.router)
    app.include_router(control_http.router)
    app.include_router(voice_token.router)
    include_ws_routes(app, ctx.settings)
    app.include_router(console_http.router)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Response:
        structlog.contextvars.clear_contextvars()
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            log.exception("request_failed", path=request.url.path, method=request.method)
            response = JSONResponse({"detail": "internal error"}, status_code=500)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        ctx.metrics.http_requests.labels(
            method=request.method, route=template, status=str(response.status_code)
        ).inc()
        if response.status_code >= 500:
            log.error(
                "request_error",
                path=request.url.path,
                status=response.status_code,
                seconds=round(time.perf_counter() - started, 4),
            )
        return response

    @app.get("/healthz", tags=["operations"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["operations"], summary="Directory loaded and listeners up")
    def readyz() -> JSONResponse:
        ready, checks = ctx.ready()
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/me", tags=["users"], summary="Who the token belongs to")
    def me(request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
        return users.public_user(user)

    @app.get("/api/v1/calls", tags=["calls"], summary="Live calls the caller may see")
    def live_calls(
        request: Request, grant: Grant = Depends(require(Action.SEE_LIVE_CALLS))
    ) -> list[dict[str, Any]]:
        calls = ctx_of(request).calls.all()
        if grant.scope in (Scope.ALL, Scope.READ_ONLY):
            visible = calls
        elif grant.scope is Scope.OWN_LINES:
            visible = [c for c in calls if c.line in grant.user.lines]
        else:
            visible = [c for c in calls if c.involves(grant.user.id)]
        return [c.to_dict() for c in visible]

    return app
