"""The events' routes. The webhook endpoints (admins: `change_directory` with scope `all`):

    GET    /api/v1/webhooks                      the endpoints, each with its queue's figures
    POST   /api/v1/webhooks                      {url, secret?, types?, enabled?} -> 201, with
                                                 the secret (generated when not given) once
    GET    /api/v1/webhooks/{id}
    PATCH  /api/v1/webhooks/{id}                 {url?, secret?, types?, enabled?}
    DELETE /api/v1/webhooks/{id}                 204 (its pending deliveries go with it)
    GET    /api/v1/webhooks/{id}/deliveries     ?state=pending|delivered|dead &after= &limit=
    POST   /api/v1/webhooks/{id}/replay          {event_id} or {since, until?} -> 202 {queued}

Endpoints of the settings file (`[[events.endpoints]]`, ids `config:<name>`) are listed and
replayable, not changed here (409: change the file). A URL that is not http(s), or that is
the bridge's own HTTP address, is refused (400 naming the field), as a bad filter is. Every
change is audited. 503 while the outbox is not running (docs/events.md).

The records (`record_routes`):

    GET /api/v1/audit            ?actor= &action= &call= &allowed= &since= &until= &before= &limit=
                                 admins; newest first, `next_before` the cursor
    GET /api/v1/events           ?after=<event id> &types= &call= &limit=   oldest first
    GET /api/v1/events/stream    Server-Sent Events as they are stored; `Last-Event-ID` (or
                                 ?after=) resumes after that event, from the outbox

Admins see every event; supervisors and reporters (who see every call) the call, leg and
voicemail events. A bad parameter is a 400 naming it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from bridge.api.common import query_int, query_time
from bridge.config import check_webhook_secret, check_webhook_url, points_at
from bridge.directory.roles import Action, Scope
from bridge.events.outbox import Endpoint, compact_json
from bridge.events.service import EventsService
from bridge.httpauth import Grant, HttpAuth, audit_request

TYPE_PATTERN = re.compile(r"^[a-z_]+(\.[a-z_]+)*(\.\*)?$")
STATES = ("pending", "delivered", "dead")


class NewEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    secret: str | None = None
    types: list[str] = []
    enabled: bool = True


class EndpointChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = None
    secret: str | None = None
    types: list[str] | None = None
    enabled: bool | None = None


class Replay(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: str | None = None
    since: str | None = None
    until: str | None = None


def routes(events: EventsService, auth: HttpAuth) -> APIRouter:
    router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])
    settings = events.settings

    def admin(request: Request, grant: Grant = Depends(auth.require(Action.CHANGE_DIRECTORY))):
        if grant.scope is not Scope.ALL:
            reason = "webhooks are managed by admins"
            audit_request(request, grant.user, "webhooks", allowed=False, reason=reason)
            raise HTTPException(status_code=403, detail=reason)
        if not events.running:
            raise HTTPException(
                status_code=503,
                detail="the event outbox is not running: " + events.ready()[1],
            )
        return grant

    def check_url(url: str) -> str:
        try:
            check_webhook_url(url)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=f"url: {exc}") from None
        http = settings.http
        if points_at(url, http.host, http.port, http.public_url):
            raise HTTPException(
                status_code=400,
                detail=f"url: {url!r} is this bridge's own HTTP address: "
                "it would post its events to itself",
            )
        return url

    def check_secret(secret: str) -> str:
        try:
            return check_webhook_secret(secret)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=f"secret: {exc}") from None

    def check_types(types: list[str]) -> tuple[str, ...]:
        for kind in types:
            if not TYPE_PATTERN.fullmatch(kind):
                raise HTTPException(
                    status_code=400,
                    detail=f"types: {kind!r} is not an event type (like call.ended, or call.*)",
                )
        return tuple(types)

    def found(endpoint_id: str) -> Endpoint:
        endpoint = events.outbox.endpoint(endpoint_id)
        if endpoint is None:
            raise HTTPException(status_code=404, detail=f"no webhook endpoint {endpoint_id!r}")
        return endpoint

    async def shown(endpoint: Endpoint) -> dict[str, Any]:
        return endpoint.public() | {"deliveries": await events.dispatcher.stats(endpoint.id)}

    @router.get("", summary="Webhook endpoints")
    async def list_endpoints(grant: Grant = Depends(admin)) -> list[dict[str, Any]]:
        return [await shown(e) for e in events.outbox.endpoints()]

    @router.post("", status_code=201, summary="Add a webhook endpoint")
    async def create(
        body: NewEndpoint, request: Request, grant: Grant = Depends(admin)
    ) -> dict[str, Any]:
        secret = check_secret(body.secret) if body.secret is not None else new_secret()
        endpoint = Endpoint(
            id=f"wh_{secrets.token_hex(6)}",
            url=check_url(body.url),
            secret=secret,
            types=check_types(body.types),
            enabled=body.enabled,
            source="api",
            created_at=_now(),
        )
        await events.outbox.save_endpoint(endpoint)
        events.dispatcher.refresh()
        audit_request(
            request, grant.user, "webhook_create", allowed=True, target=f"webhook:{endpoint.id}"
        )
        return await shown(endpoint) | {"secret": secret}

    @router.get("/{endpoint_id}", summary="One webhook endpoint")
    async def get(endpoint_id: str, grant: Grant = Depends(admin)) -> dict[str, Any]:
        return await shown(found(endpoint_id))

    @router.patch("/{endpoint_id}", summary="Change a webhook endpoint")
    async def change(
        endpoint_id: str, body: EndpointChange, request: Request, grant: Grant = Depends(admin)
    ) -> dict[str, Any]:
        endpoint = found(endpoint_id)
        if endpoint.source == "config":
            raise HTTPException(
                status_code=409,
                detail="this endpoint is configured in the settings file ([[events.endpoints]])",
            )
        changed = Endpoint(
            id=endpoint.id,
            url=check_url(body.url) if body.url is not None else endpoint.url,
            secret=check_secret(body.secret) if body.secret is not None else endpoint.secret,
            types=check_types(body.types) if body.types is not None else endpoint.types,
            enabled=body.enabled if body.enabled is not None else endpoint.enabled,
            source="api",
            created_at=endpoint.created_at,
        )
        await events.outbox.save_endpoint(changed)
        events.dispatcher.refresh()
        audit_request(
            request,
            grant.user,
            "webhook_change",
            allowed=True,
            target=f"webhook:{endpoint.id}",
            fields=sorted(body.model_dump(exclude_none=True)),
        )
        return await shown(changed)

    @router.delete("/{endpoint_id}", status_code=204, summary="Remove a webhook endpoint")
    async def delete(endpoint_id: str, request: Request, grant: Grant = Depends(admin)) -> Response:
        endpoint = found(endpoint_id)
        if endpoint.source == "config":
            raise HTTPException(
                status_code=409,
                detail="this endpoint is configured in the settings file ([[events.endpoints]])",
            )
        await events.outbox.delete_endpoint(endpoint.id)
        events.dispatcher.refresh()
        audit_request(
            request, grant.user, "webhook_delete", allowed=True, target=f"webhook:{endpoint.id}"
        )
        return Response(status_code=204)

    @router.get("/{endpoint_id}/deliveries", summary="An endpoint's deliveries")
    async def deliveries(
        endpoint_id: str,
        state: str | None = None,
        after: str | None = None,
        limit: str | None = None,
        grant: Grant = Depends(admin),
    ) -> dict[str, Any]:
        found(endpoint_id)
        if state is not None and state not in STATES:
            raise HTTPException(400, f"state: must be one of {', '.join(STATES)}")
        after_seq = query_int(after, "after", 0, 0, 2**62)
        count = query_int(limit, "limit", 100, 1, 1000)
        rows = await events.dispatcher.deliveries(
            endpoint_id, state=state, after_seq=after_seq, limit=count
        )
        return {
            "deliveries": rows,
            "next_after": rows[-1]["seq"] if len(rows) == count else None,
        }

    @router.post("/{endpoint_id}/replay", status_code=202, summary="Deliver events again")
    async def replay(
        endpoint_id: str, body: Replay, request: Request, grant: Grant = Depends(admin)
    ) -> dict[str, Any]:
        endpoint = found(endpoint_id)
        if (body.event_id is None) == (body.since is None):
            raise HTTPException(400, "give event_id, or since (and until) for a time range")
        if body.event_id is not None and await events.outbox.event(body.event_id) is None:
            raise HTTPException(404, f"event_id: no event {body.event_id!r}")
        since = query_time(body.since, "since")
        until = query_time(body.until, "until")
        queued = await events.dispatcher.replay(
            endpoint.id, event_id=body.event_id, since=since, until=until
        )
        audit_request(
            request,
            grant.user,
            "webhook_replay",
            allowed=True,
            target=f"webhook:{endpoint.id}",
            queued=queued,
        )
        return {"queued": queued}

    return router


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# -- the audit trail and the live feed ---------------------------------------------------------
AUDIT_FILTERS = ("actor", "action")
CALL_TYPES_PREFIXES = ("call.", "leg.", "voicemail.")
HEARTBEAT_SECONDS = 15.0


def record_routes(events: EventsService, auth: HttpAuth) -> APIRouter:
    """`GET /api/v1/audit` (admins), `GET /api/v1/events` and `GET /api/v1/events/stream`
    (admins, supervisors, reporters: every call; the audit and directory events to admins)."""
    router = APIRouter(tags=["events"])

    def running() -> None:
        if not events.running:
            raise HTTPException(
                status_code=503, detail="the event outbox is not running: " + events.ready()[1]
            )

    def admin(request: Request, grant: Grant = Depends(auth.require(Action.CHANGE_DIRECTORY))):
        if grant.scope is not Scope.ALL:
            reason = "the audit trail is for admins"
            audit_request(request, grant.user, "audit_read", allowed=False, reason=reason)
            raise HTTPException(status_code=403, detail=reason)
        running()
        return grant

    def watcher(request: Request, grant: Grant = Depends(auth.require(Action.SEE_LIVE_CALLS))):
        if grant.scope not in (Scope.ALL, Scope.READ_ONLY):
            reason = "the event feed shows every call: admins, supervisors and reporters"
            audit_request(request, grant.user, "events_read", allowed=False, reason=reason)
            raise HTTPException(status_code=403, detail=reason)
        running()
        return grant

    @router.get("/api/v1/audit", summary="The audit trail, newest first")
    async def audit_trail(
        actor: str | None = None,
        action: str | None = None,
        call: str | None = None,
        allowed: str | None = None,
        since: str | None = None,
        until: str | None = None,
        before: str | None = None,
        limit: str | None = None,
        grant: Grant = Depends(admin),
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if actor is not None:
            fields["actor"] = actor
        if action is not None:
            fields["action"] = action
        if allowed is not None:
            if allowed not in ("true", "false"):
                raise HTTPException(400, "allowed: must be true or false")
            fields["allowed"] = allowed == "true"
        count = query_int(limit, "limit", 100, 1, 1000)
        await events.caught_up()
        found = await events.outbox.query(
            types=("audit.recorded",),
            call_id=call,
            fields=fields,
            since=query_time(since, "since"),
            until=query_time(until, "until"),
            before_seq=query_int(before, "before", 2**62, 1, 2**62) if before is not None else None,
            limit=count,
        )
        return {
            "records": [
                {"id": e.id, "at": e.to_json()["timestamp"], "call_id": e.call_id, **e.payload}
                for e in found
            ],
            "next_before": found[-1].seq if len(found) == count else None,
        }

    def visible_types(grant: Grant, types: str | None) -> tuple[str, ...] | None:
        """The types asked for (None: all) as this user may see them."""
        wanted = tuple(t for t in (types or "").split(",") if t)
        for kind in wanted:
            if not TYPE_PATTERN.fullmatch(kind):
                raise HTTPException(400, f"types: {kind!r} is not an event type")
        if grant.scope is Scope.ALL and grant.user.role.value == "admin":
            return wanted or None
        if wanted and not all(k.startswith(CALL_TYPES_PREFIXES) for k in wanted):
            raise HTTPException(403, "types: only call, leg and voicemail events for this role")
        return wanted or ("call.*", "leg.*", "voicemail.*")

    def matches(kinds: tuple[str, ...] | None, kind: str) -> bool:
        if kinds is None:
            return True
        return any(kind == k or (k.endswith(".*") and kind.startswith(k[:-1])) for k in kinds)

    @router.get("/api/v1/events", summary="Stored events, oldest first, after a cursor")
    async def read_events(
        after: str | None = None,
        types: str | None = None,
        call: str | None = None,
        limit: str | None = None,
        grant: Grant = Depends(watcher),
    ) -> dict[str, Any]:
        kinds = visible_types(grant, types)
        count = query_int(limit, "limit", 100, 1, 1000)
        after_seq = await _cursor(events, after)
        page: list[Any] = []
        while len(page) < count:
            batch = await events.outbox.query(
                call_id=call, after_seq=after_seq, limit=count, newest_first=False
            )
            if not batch:
                break
            after_seq = batch[-1].seq
            page += [e for e in batch if matches(kinds, e.type)]
        page = page[:count]
        return {
            "events": [e.to_json() for e in page],
            "next_after": page[-1].id if len(page) == count else None,
        }

    @router.get("/api/v1/events/stream", summary="Events as they are stored (Server-Sent Events)")
    async def stream(
        request: Request,
        after: str | None = None,
        types: str | None = None,
        grant: Grant = Depends(watcher),
    ) -> StreamingResponse:
        kinds = visible_types(grant, types)
        # Resume: the id of the last event the client got (its Last-Event-ID on a reconnect).
        last = request.headers.get("last-event-id") or after
        after_seq = await _cursor(events, last) if last else None
        live = events.follow()

        async def feed() -> AsyncIterator[bytes]:
            try:
                sent = after_seq or 0
                if after_seq is not None:  # what the client missed, from the outbox
                    while True:
                        backlog = await events.outbox.query(
                            after_seq=sent, limit=500, newest_first=False
                        )
                        if not backlog:
                            break
                        for event in backlog:
                            sent = event.seq or sent
                            if matches(kinds, event.type):
                                yield _sse(event)
                yield b": live\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(live.get(), HEARTBEAT_SECONDS)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield b": keep-alive\n\n"
                        continue
                    if event is None:  # too slow: reconnect and resume by the last id
                        yield b"event: overflow\ndata: {}\n\n"
                        return
                    if (event.seq or 0) <= sent or not matches(kinds, event.type):
                        continue
                    sent = event.seq or sent
                    yield _sse(event)
            finally:
                events.unfollow(live)

        return StreamingResponse(
            feed(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router


async def _cursor(events: EventsService, event_id: str | None) -> int:
    """The `seq` of the event with this id (0 for none); 400 when it is not stored."""
    if not event_id:
        return 0
    seq = await events.outbox.seq_of(event_id)
    if seq is None:
        raise HTTPException(400, f"after: no stored event {event_id!r}")
    return seq


def _sse(event: Any) -> bytes:
    data = compact_json(event.to_json())
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n".encode()
