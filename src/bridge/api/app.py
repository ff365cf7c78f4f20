"""The HTTP application: admin API, live calls, health, metrics, on one port."""

from __future__ import annotations

import csv
import io
import time
from typing import Any
from urllib.parse import urlencode

import structlog
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

from bridge import __version__
from bridge.api import directory_routes, login, users
from bridge.api.common import query_int, query_time
from bridge.carriers.twilio import plugin as carrier_plugin
from bridge.carriers.twilio.media import RecordingMedia
from bridge.carriers.twilio.rest import RestSettings
from bridge.console import http as console_http
from bridge.context import AppContext
from bridge.control import plugin as control_plugin
from bridge.directory.model import User
from bridge.directory.roles import Action, Scope
from bridge.events import history
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
        rest = RestSettings.from_settings(ctx.settings)
        app.include_router(
            recordings_plugin.routes(
                ctx.archive,
                auth,
                lambda: ctx.store.current,
                RecordingMedia(rest) if rest is not None else None,
            )
        )
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

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 as FastAPI words it, without echoing what was sent: a number JSON cannot
        carry (1e999, NaN) made the answer itself fail, a 500 before any login, and a
        refused password came back in it."""
        errors = [{k: v for k, v in e.items() if k not in ("input", "url")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})

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

    @app.get("/api/v1/calls", tags=["calls"], summary="Live calls, or finished ones (history)")
    async def list_calls(
        request: Request,
        state: str = "live",
        line: str | None = None,
        user: str | None = None,
        group: str | None = None,
        outcome: str | None = None,
        since: str | None = None,
        until: str | None = None,
        before: str | None = None,
        limit: str | None = None,
        grant: Grant = Depends(auth.require(Action.SEE_LIVE_CALLS)),
    ) -> Any:
        if state not in ("live", "ended", "all"):
            raise HTTPException(400, "state: must be live, ended or all")
        calls = ctx.calls.all()
        if grant.scope in (Scope.ALL, Scope.READ_ONLY):
            visible = calls
        elif grant.scope is Scope.OWN_LINES:
            visible = [c for c in calls if c.line in grant.user.lines]
        else:
            visible = [c for c in calls if c.involves(grant.user.id)]
        if line is not None:
            visible = [c for c in visible if c.line == line]
        if state == "live":
            return [_with_supervision(c.to_dict(), ctx) for c in visible]
        # (`all`: the live calls the filters can apply to: none has an outcome or a group yet)
        if user is not None:
            visible = [c for c in visible if c.involves(user)]
        begin, end = query_time(since, "since"), query_time(until, "until")
        if outcome is not None or group is not None or (begin is not None and begin > ctx.clock()):
            visible = []  # (a live call is still going: any `since` up to now takes it)
        if end is not None:
            visible = [c for c in visible if c.started_at < end]
        live = [_with_supervision(c.to_dict(), ctx) for c in visible]
        page, next_before = await _finished_calls(
            ctx, grant, line, user, group, outcome, since, until, before, limit
        )
        found = page if state == "ended" else [*live, *page]
        headers = {}
        if next_before is not None:
            query = dict(request.query_params) | {"before": str(next_before)}
            headers["Link"] = f'</api/v1/calls?{urlencode(query)}>; rel="next"'
        if (
            "text/csv" in request.headers.get("accept", "")
            or request.query_params.get("format") == "csv"
        ):
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(history.CSV_COLUMNS)
            for record in found:
                if "started_at" in record and "legs" in record:
                    writer.writerow(history.csv_row(record))
                else:  # a live call
                    writer.writerow(
                        history.csv_row(
                            {
                                "call_id": record["call_id"],
                                "path": record["path"],
                                "line": record["line"],
                                "caller": record["caller"],
                                "started_at": record["started_at"],
                                "outcome": "live",
                                "answered_by": record.get("answered_by"),
                            }
                        )
                    )
            return Response(
                out.getvalue(),
                media_type="text/csv; charset=utf-8",
                headers=headers | {"Content-Disposition": 'attachment; filename="calls.csv"'},
            )
        return JSONResponse(found, headers=headers)

    @app.get("/api/v1/calls/{call_id}", tags=["calls"], summary="One call, live or finished")
    async def one_call(
        call_id: str, grant: Grant = Depends(auth.require(Action.SEE_LIVE_CALLS))
    ) -> dict[str, Any]:
        live = ctx.calls.get(call_id)
        events = ctx.events
        stored: list[Any] = []
        record = None
        if events is not None and events.running:
            await events.caught_up()
            record = await events.outbox.run(lambda db: history.finished_call(db, call_id))
            if record is None:
                stored = await events.outbox.run(lambda db: history.events_of(db, call_id))
        if live is not None:
            if not _may_see_live(grant, live):
                raise HTTPException(404, f"no call {call_id!r}")
            so_far = history.summarize(call_id, stored) if stored else None
            return {**_with_supervision(live.to_dict(), ctx), "history": so_far}
        if record is None or not _may_see_record(grant, record):
            raise HTTPException(404, f"no call {call_id!r}")
        if ctx.archive is not None:
            record["recordings"] = [
                m.to_json() for m in ctx.archive.recordings(call_id=call_id, limit=20)
            ]
        return record

    return app


def _may_see_live(grant: Grant, call: Any) -> bool:
    if grant.scope in (Scope.ALL, Scope.READ_ONLY):
        return True
    if grant.scope is Scope.OWN_LINES:
        return call.line in grant.user.lines
    return bool(call.involves(grant.user.id))


def _may_see_record(grant: Grant, record: dict[str, Any]) -> bool:
    if grant.scope in (Scope.ALL, Scope.READ_ONLY):
        return True
    if grant.scope is Scope.OWN_LINES:
        return record.get("line") in grant.user.lines
    return grant.user.id in (record.get("users") or [])


async def _finished_calls(
    ctx: AppContext,
    grant: Grant,
    line: str | None,
    user: str | None,
    group: str | None,
    outcome: str | None,
    since: str | None,
    until: str | None,
    before: str | None,
    limit: str | None,
) -> tuple[list[dict[str, Any]], int | None]:
    """A page of finished calls the caller may see, newest first, and the next cursor."""
    events = ctx.events
    if events is None or not events.running:
        raise HTTPException(503, "call history needs the event outbox, which is not running")
    count = query_int(limit, "limit", 100, 1, 1000)
    cursor = query_int(before, "before", 0, 1, 2**62) if before is not None else None
    await events.caught_up()
    lines = involving = None
    if grant.scope is Scope.OWN_LINES:
        lines = tuple(grant.user.lines)
    elif grant.scope not in (Scope.ALL, Scope.READ_ONLY):
        involving = grant.user.id
    rows = await events.outbox.run(
        lambda db: history.query_calls(
            db,
            line=line,
            user=user,
            group=group,
            outcome=outcome,
            since=query_time(since, "since"),
            until=query_time(until, "until"),
            before=cursor,
            limit=count,
            lines=lines,
            involving=involving,
        )
    )
    next_before = rows[-1][0] if len(rows) == count else None
    return [record for _, record in rows], next_before


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
