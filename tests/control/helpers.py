"""Calls answered by ana over the fake carrier, and the control API as each user calls it."""

from __future__ import annotations

from typing import Any

import httpx
from sim.carrier import answer, no_answer

from bridge.carriers.twilio.state import CarrierCall
from tests.carrier.helpers import BEN_SIP, FRONT
from tests.carrier.live import CALLER, World, eventually


async def answered_by_ana(world: World) -> CarrierCall:
    """A call on the front line that ana (apps) answers; ben and cid never do."""
    world.carrier.set_target("client:ana", answer(after=1))
    world.carrier.set_target(BEN_SIP, no_answer())
    world.carrier.set_target("+15550003001", no_answer())
    inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
    call = await eventually(lambda: world.service.find(inbound.sid))
    await eventually(lambda: call.machine.answered_by == "ana" and call.answered_sid())
    # The agent is in the conference (whisper coaches her there).
    conf = await eventually(lambda: world.carrier.conference(inbound.sid))
    ana_sid = call.answered_sid()
    await eventually(
        lambda: ana_sid in conf.participants and conf.participants[ana_sid].status == "connected"
    )
    return call


async def api(
    world: World, user: str, method: str, path: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    return await world.http.request(method, path, json=body, headers=world.auth(user))


def audits(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "audit"]
