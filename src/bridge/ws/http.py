"""The gateway's HTTP endpoint: the admin-only test offers. (`/ws` itself is the gateway's
plain ASGI endpoint, `Gateway.serve`, mounted by plugin.py.)

Thin on purpose: the offers are the offer service's (offers.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from bridge.directory.model import Directory
from bridge.directory.roles import Action
from bridge.httpauth import Grant, HttpAuth, audit_request
from bridge.ws.services import Gateway


class TestOffersBody(BaseModel):
    __test__ = False  # not a pytest class
    model_config = ConfigDict(extra="forbid")

    users: Annotated[list[str], Field(min_length=1, max_length=20_000)]
    # One call offered to every user (they race for it), or one call per user (the default).
    one_call: bool = False
    ring_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    # After the winning accept, the call ends (`call.state ended`) this much later; 0: never.
    hold_seconds: Annotated[float, Field(ge=0, le=3600)] = 0.0
    caller: Annotated[str, Field(min_length=1, max_length=64)] = "+15550000000"
    line: Annotated[str, Field(max_length=32)] | None = None


def test_routes(gateway: Gateway, directory: Callable[[], Directory], auth: HttpAuth) -> APIRouter:
    """`POST /api/v1/ws/test-offers` ([ws] test_offers = true only)."""
    router = APIRouter(prefix="/api/v1/ws", tags=["ws"])

    @router.post("/test-offers", summary="Admin: ring app sessions with synthetic calls")
    async def test_offers(
        body: TestOffersBody,
        request: Request,
        # An admin-only tool: the matrix's admin-only row for changing the system guards it.
        grant: Grant = Depends(auth.require(Action.CHANGE_DIRECTORY)),
    ) -> dict[str, Any]:
        current = directory()
        unknown = [u for u in body.users if current.user(u) is None]
        if unknown:
            raise HTTPException(status_code=404, detail=f"no user {unknown[0]!r}")
        started = time.perf_counter()
        result = gateway.test_calls.start(
            body.users,
            one_call=body.one_call,
            ring_seconds=body.ring_seconds,
            hold_seconds=body.hold_seconds,
            caller=body.caller,
            line=body.line,
        )
        # Answer once every offer is written: the answer then says how long the fan-out took
        # on the bridge's side (bench/ws_fanout.py reports it next to what the clients saw).
        result["written"] = await gateway.written(body.users, timeout=10)
        result["written_ms"] = round((time.perf_counter() - started) * 1000, 3)
        audit_request(request, grant.user, "ws_test_offers", allowed=True, users=len(body.users))
        return result

    return router
