"""Carrier calls and app users: the app's audio rings in the carrier's voice SDK (<Client> /
a `client:` participant), while its WebSocket sessions get the offer's context and, when it
stops ringing, the typed reason. End to end: the fake carrier, the bridge over loopback HTTP,
a real WebSocket client (`sim.apps`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sim.apps import AppClient
from sim.carrier import answer, no_answer

from tests.carrier.helpers import BEN_SIP, FRONT
from tests.carrier.live import CALLER, World, eventually

ANA, CID = "client:ana", "+15550003001"


@pytest.fixture
async def ana(world: World) -> AsyncIterator[AppClient]:
    url = world.url.replace("http://", "ws://") + "/ws"
    client = AppClient(url, world.ctx.tokens.issue("ana"), device="browser")
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


async def test_app_answered_in_the_voice_sdk_hears_it_on_the_websocket(
    world: World, ana: AppClient
) -> None:
    world.carrier.set_target(ANA, answer(after=3))
    world.carrier.set_target(BEN_SIP, no_answer())
    world.carrier.set_target(CID, no_answer())
    inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
    offer = await ana.expect("call.offer", call_id=inbound.sid)
    assert offer["caller"] == CALLER and offer["line"] == FRONT
    assert offer["ring_group"] == "front" and offer.get("sdp") is None
    # Over the carrier the app answers in the voice SDK: an accept here is refused, and the
    # offer keeps ringing.
    refused = await ana.request("call.accept", call_id=inbound.sid)
    assert refused["type"] == "error" and refused["code"] == "conflict"
    state = await ana.expect("call.state", call_id=inbound.sid)
    assert state["state"] == "answered"
    call = await eventually(lambda: world.service.find(inbound.sid))
    assert call.machine.answered_by == "ana"
    assert not ana.received("call.ended")
    # A WebSocket accept arriving now is late: it hears who answered, never a second answer.
    await ana.accept(inbound.sid)
    late = await ana.expect("call.ended", call_id=inbound.sid)
    assert late["reason"] == "answered_elsewhere"
    assert late["answered_by"]["user_id"] == "ana" and late["answered_by"]["via"] == "apps"
    # The caller hangs up: the app hears how it ended, and until when ana is in wrap-up.
    world.carrier.hangup(inbound.sid)
    ended = await ana.expect("call.state", call_id=inbound.sid, state="ended")
    assert ended["reason"] == "caller_hangup"
    assert ended["wrap_up_until"] is not None  # ana's wrap_up_seconds is 30


async def test_answered_elsewhere_reaches_the_app_with_who(world: World, ana: AppClient) -> None:
    world.carrier.set_target(ANA, no_answer())
    world.carrier.set_target(BEN_SIP, no_answer())
    world.carrier.set_target(CID, answer(after=2))
    inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
    await ana.expect("call.offer", call_id=inbound.sid)
    ended = await ana.expect("call.ended", call_id=inbound.sid)
    assert ended["reason"] == "answered_elsewhere"
    assert ended["answered_by"]["user_id"] == "cid"
    assert ended["answered_by"]["via"] == "phone_number"
