"""Offers: the race rules across sessions, users and other legs, with a fake call layer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sim.apps import AppClient

from bridge.calls.events import LegReason
from bridge.ws.offers import OfferStatus
from bridge.ws.schemas import CallStateName
from tests.ws.conftest import WAIT, Live
from tests.ws.fakecall import FakeCallLayer

CALL = "call-1"


def offers_total(live: Live, result: str) -> float:
    value = live.ctx.metrics.registry.get_sample_value("bridge_offers_total", {"result": result})
    return value or 0.0


async def sessions(live: Live, **per_user: int) -> dict[str, list[AppClient]]:
    return {
        user: [await live.connect(user, device=f"{user}-{i}") for i in range(count)]
        for user, count in per_user.items()
    }


async def offered(clients: list[AppClient], call_id: str = CALL) -> list[dict[str, Any]]:
    return [await c.expect("call.offer", timeout=WAIT, call_id=call_id) for c in clients]


async def verdict(client: AppClient, frame_id: str | int) -> dict[str, Any]:
    """The frame that answers this client's accept (call.state or call.ended, same id)."""
    return await client.expect(timeout=WAIT, id=frame_id)


@pytest.mark.parametrize("decide_seconds", [0.0, 0.05], ids=["sync-layer", "async-layer"])
async def test_first_accept_wins_across_sessions_and_users(
    live: Live, decide_seconds: float
) -> None:
    layer = FakeCallLayer(live.gateway.offers, live.clock, decide_seconds)
    users = await sessions(live, alice=2, olivia=2)
    assert layer.ring(CALL, ["alice", "olivia"]) == {
        "alice": OfferStatus.DELIVERED,
        "olivia": OfferStatus.DELIVERED,
    }
    everyone = users["alice"] + users["olivia"]
    for offer in await offered(everyone):
        assert (offer["caller"], offer["line"], offer["ring_group"]) == (
            "+15557770001", "+15550100", "sales",
        )  # fmt: skip
    # All four accept at once.
    ids = await asyncio.gather(*(c.accept(CALL) for c in everyone))
    replies = [await verdict(c, i) for c, i in zip(everyone, ids, strict=True)]

    answered = [r for r in replies if r["type"] == "call.state"]
    assert len(answered) == 1
    assert answered[0]["state"] == "answered"
    winner_user, via = layer.winner[CALL]
    assert via == "apps"
    losers = [r for r in replies if r["type"] == "call.ended"]
    assert len(losers) == 3
    assert {r["reason"] for r in losers} == {"answered_elsewhere"}
    assert {r["answered_by"]["user_id"] for r in losers} == {winner_user}
    # The call layer heard at most one accept per user and said yes exactly once.
    assert layer.verdicts.count(True) == 1
    assert len(layer.accepts) <= 2
    assert len({user for _, user, _, _ in layer.accepts}) == len(layer.accepts)
    # Every session of every user now knows the call is over for them, except the winner.
    for client in everyone:
        if client.stats.won:
            continue
        ended = client.received("call.ended")
        assert ended and ended[0]["reason"] == "answered_elsewhere"
    assert sum(c.stats.won for c in everyone) == 1
    assert live.gateway.offers.ringing() == []
    assert offers_total(live, "answered") == 1
    assert offers_total(live, "answered_elsewhere") == 1
    count = live.ctx.metrics.registry.get_sample_value("bridge_offer_to_answer_seconds_count")
    assert count == 1


async def test_a_desk_phone_answering_first_ends_every_app_offer(live: Live) -> None:
    layer = FakeCallLayer(live.gateway.offers, live.clock)
    users = await sessions(live, alice=2, olivia=1)
    layer.ring(CALL, ["alice", "olivia"])
    everyone = users["alice"] + users["olivia"]
    await offered(everyone)
    assert layer.phone_answers(CALL, "bob")
    expected_by = {"user_id": "bob", "name": "Bob Stone", "via": "ip_phone"}
    for client in everyone:
        ended = await client.expect("call.ended", timeout=WAIT, call_id=CALL)
        assert ended["reason"] == "answered_elsewhere"
        assert ended["answered_by"] == expected_by
    # A late accept: told the same, never connected, and the call layer never asked.
    late = users["alice"][0]
    frame_id = await late.accept(CALL)
    reply = await verdict(late, frame_id)
    assert (reply["type"], reply["reason"]) == ("call.ended", "answered_elsewhere")
    assert reply["answered_by"] == expected_by
    assert layer.accepts == []
    assert offers_total(live, "answered_elsewhere") == 2


async def test_a_late_accept_after_another_user_won_gets_answered_elsewhere(live: Live) -> None:
    layer = FakeCallLayer(live.gateway.offers, live.clock)
    users = await sessions(live, alice=1, olivia=1)
    layer.ring(CALL, ["alice", "olivia"])
    alice, olivia = users["alice"][0], users["olivia"][0]
    await offered([alice, olivia])
    won = await verdict(olivia, await olivia.accept(CALL))
    assert (won["type"], won["state"]) == ("call.state", "answered")
    await alice.expect("call.ended", timeout=WAIT)
    late = await verdict(alice, await alice.accept(CALL))
    assert (late["type"], late["reason"]) == ("call.ended", "answered_elsewhere")
    assert late["answered_by"]["user_id"] == "olivia"
    assert layer.verdicts == [True]


async def test_a_reject_ends_that_users_offer_only(live: Live) -> None:
    layer = FakeCallLayer(live.gateway.offers, live.clock)
    users = await sessions(live, alice=2, olivia=1)
    layer.ring(CALL, ["alice", "olivia"])
    desk, phone = users["alice"]
    olivia = users["olivia"][0]
    await offered([desk, phone, olivia])
    frame_id = await desk.reject(CALL)
    reply = await verdict(desk, frame_id)
    assert (reply["type"], reply["reason"]) == ("call.ended", "rejected")
    other = await phone.expect("call.ended", timeout=WAIT, call_id=CALL)
    assert other["reason"] == "rejected"
    assert [(c, u) for c, u, _ in layer.rejects] == [(CALL, "alice")]
    assert live.gateway.offers.ringing(CALL) == [(CALL, "olivia")]
    # The other user can still take the call.
    won = await verdict(olivia, await olivia.accept(CALL))
    assert won["type"] == "call.state"
    assert offers_total(live, "rejected") == 1


@pytest.mark.parametrize(
    "reason", [LegReason.CALLER_HANGUP, LegReason.TIMEOUT, LegReason.LAYER_MOVED_ON]
)
async def test_the_call_layer_ends_offers_with_typed_reasons(live: Live, reason: LegReason) -> None:
    layer = FakeCallLayer(live.gateway.offers, live.clock)
    users = await sessions(live, alice=2)
    layer.ring(CALL, ["alice"])
    await offered(users["alice"])
    assert live.gateway.offers.end_offer(CALL, "alice", reason) == 1
    for client in users["alice"]:
        ended = await client.expect("call.ended", timeout=WAIT, call_id=CALL)
        assert ended["reason"] == reason.value
        assert "answered_by" not in ended
    late = await verdict(users["alice"][0], await users["alice"][0].accept(CALL))
    assert late["reason"] == reason.value  # a late accept hears the real reason
    assert offers_total(live, reason.value) == 1
    assert live.gateway.offers.end_offer(CALL, "alice", reason) == 0  # already over


async def test_call_state_and_wrap_up_reach_every_session(live: Live) -> None:
    layer = FakeCallLayer(live.gateway.offers, live.clock)
    users = await sessions(live, alice=2)
    layer.ring(CALL, ["alice"])
    desk, phone = users["alice"]
    await offered(users["alice"])
    await verdict(desk, await desk.accept(CALL))
    offers = live.gateway.offers
    assert offers.push_call_state(CALL, "alice", CallStateName.HELD) == 2
    wrap_up = live.clock() + __import__("datetime").timedelta(seconds=30)
    offers.push_call_state(
        CALL, "alice", CallStateName.ENDED, reason=LegReason.CALLER_HANGUP, wrap_up_until=wrap_up
    )
    for client in (desk, phone):
        held = await client.expect("call.state", timeout=WAIT, state="held")
        assert held["call_id"] == CALL
        ended = await client.expect("call.state", timeout=WAIT, state="ended")
        assert ended["reason"] == "caller_hangup"
        assert ended["wrap_up_until"] == "2026-11-23T15:00:30Z"


async def test_sdp_travels_with_the_offer_and_the_answer(live: Live) -> None:
    layer = FakeCallLayer(live.gateway.offers, live.clock)
    alice = await live.connect("alice")
    caller_sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n"
    layer.ring(CALL, ["alice"], sdp=caller_sdp)
    offer = await alice.expect("call.offer", timeout=WAIT)
    assert offer["sdp"] == caller_sdp
    answer_sdp = "v=0\r\no=- 2 2 IN IP4 192.0.2.2\r\ns=-\r\n"
    frame_id = await alice.accept(CALL, sdp=answer_sdp)
    assert (await verdict(alice, frame_id))["type"] == "call.state"
    assert layer.accepts[0][3] == answer_sdp


async def test_accepting_a_call_never_offered_is_an_error(live: Live) -> None:
    alice = await live.connect("alice")
    reply = await verdict(alice, await alice.accept("no-such-call"))
    assert (reply["type"], reply["code"], reply["field"]) == ("error", "not_found", "call_id")


async def test_an_offer_to_a_user_without_sessions_is_unreachable(live: Live) -> None:
    layer = FakeCallLayer(live.gateway.offers, live.clock)
    assert layer.ring(CALL, ["alice"]) == {"alice": OfferStatus.UNREACHABLE}
    assert live.gateway.offers.ringing() == []
    assert offers_total(live, "unreachable") == 1


async def test_a_session_that_connects_while_an_offer_rings_gets_it(live: Live) -> None:
    layer = FakeCallLayer(live.gateway.offers, live.clock)
    desk = await live.connect("alice")
    layer.ring(CALL, ["alice"])
    await desk.expect("call.offer", timeout=WAIT)
    phone = await live.connect("alice")
    offer = await phone.expect("call.offer", timeout=WAIT)
    assert offer["call_id"] == CALL
