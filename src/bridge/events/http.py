"""The webhook endpoints' routes (admins: `change_directory` with scope `all`):

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
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict

from bridge.config import check_webhook_secret, check_webhook_url, points_at
from bridge.directory.roles import Action, Scope
from bridge.events.outbox import Endpoint
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
        after_seq = _int(after, "after", 0, 0, 2**62)
        count = _int(limit, "limit", 100, 1, 1000)
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
        since = _time(body.since, "since")
        until = _time(body.until, "until")
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


def _int(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise HTTPException(400, f"{name}: {value!r} is not a whole number") from None
    if not low <= number <= high:
        raise HTTPException(400, f"{name}: must be between {low} and {high}")
    return number


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(400, f"{name}: {value!r} is not an ISO 8601 time") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
