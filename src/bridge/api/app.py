"""The HTTP application: admin API, live calls, health, metrics, on one port."""

from __future__ import annotations

import time
from typing import Any

import structlog
from fastapi import Depends, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

from bridge import __version__
from bridge.api import directory_routes, login, users
from bridge.carriers.twilio import plugin as carrier_plugin
from bridge.console import http as console_http
from bridge.context import AppContext
from bridge.control import plugin as control_plugin
from bridge.directory.model import User
from bridge.directory.roles import Action, Scope
from bridge.events import http as events_http
from bridge.httpauth import Grant, HttpAuth
from bridge.recordings import plugin as recordings_plugin
from bridge.ws import plugin as ws_plugin

log = structlog.get_logger("bridge.api")

_INTERNAL_ERROR = b'{"detail":"internal error"}'


class RequestMetrics:
    """Counts every HTTP request (method, route template, status), logs 5xx and answers an
    unhandled exception with a 500. A plain ASGI middleware: `@app.middleware("http")` ran
    each request through an extra task and memory stream (a good part of the webhooks' CPU
    per request, docs/PERFORMANCE.md)."""

    def __init__(self, app: ASGIApp, ctx: AppContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        structlog.contextvars.clear_contextvars()
        started = time.perf_counter()
        status = 0

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception:
            log.exception("request_failed", path=scope["path"], method=scope["method"])
            if status:
                raise  # the response had started: nothing sensible can be sent any more
            status = 500
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": _INTERNAL_ERROR})
        template = getattr(scope.get("route"), "path", "unmatched")
        self.ctx.metrics.http_requests.labels(
            method=scope["method"], route=template, status=str(status)
        ).inc()
        if status >= 500:
            log.error(
                "request_error",
                path=scope["path"],
                status=status,
                seconds=round(time.perf_counter() - started, 4),
            )


class BridgeApp(FastAPI):
    """FastAPI, with plain ASGI endpoints for WebSocket paths (`/ws`, bridge.ws.plugin): such a
    connection goes straight to its endpoint, without the middleware stack, the router and
    Starlette's WebSocket wrapper. An idle connection waits in its endpoint for as long as it
    is connected; the frameworks' coroutines and wrappers waiting with it were about a third of
    an idle app session's memory (docs/PERFORMANCE.md, "App clients: WebSocket fan-out")."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.websocket_endpoints: dict[str, ASGIApp] = {}

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            path, root = scope["path"], scope.get("root_path")
            if root and path.startswith(root + "/"):  # as Starlette's router matches it
                path = path[len(root) :]
            endpoint = self.websocket_endpoints.get(path)
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(ctx: AppContext) -> BridgeApp:
    """The HTTP application over the daemon's parts (`bridge.context.build_context`): each
    feature's routes, built by its plugin with what they need, behind one token gate."""
    auth = HttpAuth(ctx.tokens, lambda: ctx.store.current, ctx.metrics)
    app = BridgeApp(
        title="bridge",
        version=__version__,
        description="Telephony bridge: directory, routing (Test Routing), presence, live calls.",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.include_router(users.routes(ctx, auth))
    app.include_router(directory_routes.routes(ctx, auth))
    if ctx.logins is not None:
        app.include_router(login.routes(ctx.logins, ctx, auth))
    if ctx.archive is not None:
        app.include_router(recordings_plugin.routes(ctx.archive, auth, lambda: ctx.store.current))
    if ctx.carrier is not None:
        for router in carrier_plugin.routes(ctx.carrier, ctx.settings, auth):
            app.include_router(router)
    if ctx.control is not None:
        app.include_router(control_plugin.routes(ctx.control, auth))
    if ctx.ws is not None:
        app.websocket_endpoints.update(ws_plugin.websocket_endpoints(ctx.ws))
        for router in ws_plugin.routes(ctx.ws, ctx.settings, lambda: ctx.store.current, auth):
            app.include_router(router)
    if ctx.events is not None:
        app.include_router(events_http.routes(ctx.events, auth))
        app.include_router(events_http.record_routes(ctx.events, auth))
    app.include_router(console_http.router)

    app.add_middleware(RequestMetrics, ctx=ctx)

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
    def me(user: User = Depends(auth.current_user)) -> dict[str, Any]:
        return users.public_user(user)

    @app.get("/api/v1/calls", tags=["calls"], summary="Live calls the caller may see")
    def live_calls(
        grant: Grant = Depends(auth.require(Action.SEE_LIVE_CALLS)),
    ) -> list[dict[str, Any]]:
        calls = ctx.calls.all()
        if grant.scope in (Scope.ALL, Scope.READ_ONLY):
            visible = calls
        elif grant.scope is Scope.OWN_LINES:
            visible = [c for c in calls if c.line in grant.user.lines]
        else:
            visible = [c for c in calls if c.involves(grant.user.id)]
        return [_with_supervision(c.to_dict(), ctx) for c in visible]

    return app


def _with_supervision(call: dict[str, Any], ctx: AppContext) -> dict[str, Any]:
    """A live call's JSON with who monitors it and its recording, on every path that can say
    (the carrier's conference, the SIP path's media engine)."""
    monitors: dict[str, Any] = {}
    recording = None
    if ctx.control is not None:
        try:
            view = ctx.control.find(call["call_id"])
        except Exception:  # a path that cannot supervise now lists the call without it
            view = None
        if view is not None:
            monitors = {uid: m.to_dict() for uid, m in view.monitors.items()}
            recording = view.recording.to_dict() if view.recording is not None else None
    return {**call, "monitors": monitors, "recording": recording}
