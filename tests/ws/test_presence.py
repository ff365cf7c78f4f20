"""Presence over the WebSocket: sessions, the grace period, presence.set, the heartbeat."""

from __future__ import annotations

from bridge.presence.model import Availability, Channel
from bridge.ws.offers import OfferStatus
from tests.ws.conftest import WAIT, Live, LiveFactory, eventually
from tests.ws.fakecall import FakeCallLayer


def apps_reachable(live: Live, user: str) -> bool:
    return Channel.APPS in live.ctx.presence.presence_of(user).reachable


async def test_reachable_while_one_session_is_up_then_for_the_grace(
    make_live: LiveFactory,
) -> None:
    live = await make_live(grace_seconds=30)
    assert not apps_reachable(live, "alice")
    desktop = await live.connect("alice", device="desktop")
    phone = await live.connect("alice", device="phone")
    assert apps_reachable(live, "alice")
    await desktop.close()
    await eventually(lambda: live.gateway.session_count("alice") == 1)
    assert apps_reachable(live, "alice")  # one session left
    await phone.close()
    await eventually(lambda: live.gateway.session_count("alice") == 0)
    # Within the grace the user is still reachable (its end: the next test).
    assert live.gateway.reachable("alice")
    assert apps_reachable(live, "alice")


async def test_a_reconnect_within_the_grace_keeps_a_ringing_offer(make_live: LiveFactory) -> None:
    live = await make_live(grace_seconds=5)
    layer = FakeCallLayer(live.gateway.offers, live.clock)
    first = await live.connect("alice")
    layer.ring("call-1", ["alice"])
    await first.expect("call.offer", timeout=WAIT)
    first.abort()  # the network drops: no close handshake
    await eventually(lambda: live.gateway.session_count("alice") == 0)
    assert apps_reachable(live, "alice")
    # While nobody is connected the call layer may still offer (it is pending) ...
    assert layer.ring("call-2", ["alice"]) == {"alice": OfferStatus.PENDING}
    # ... and the reconnecting session gets both, and can answer.
    again = await live.connect("alice")
    offers = {(await again.expect("call.offer", timeout=WAIT))["call_id"] for _ in range(2)}
    assert offers == {"call-1", "call-2"}
    frame_id = await again.accept("call-1")
    reply = await again.expect(timeout=WAIT, id=frame_id)
    assert (reply["type"], reply["state"]) == ("call.state", "answered")
    assert layer.unreachable == []


async def test_when_the_grace_ends_the_call_layer_hears_the_user_is_gone(live: Live) -> None:
    layer = FakeCallLayer(live.gateway.offers, live.clock)
    alice = await live.connect("alice")
    layer.ring("call-1", ["alice"])
    await alice.expect("call.offer", timeout=WAIT)
    await alice.close()  # grace 0.3 s here
    await eventually(lambda: layer.unreachable == [("call-1", "alice")])
    assert not live.gateway.reachable("alice")
    assert not apps_reachable(live, "alice")
    assert live.gateway.offers.ringing() == []


async def test_presence_set_reaches_every_session_of_the_user(live: Live) -> None:
    desktop = await live.connect("alice")
    phone = await live.connect("alice")
    bob = await live.connect("bob")
    reply = await desktop.request("presence.set", availability="busy")
    assert reply["type"] == "presence"
    assert (reply["user_id"], reply["availability"]) == ("alice", "busy")
    pushed = await phone.expect("presence", timeout=WAIT, availability="busy")
    assert "id" not in pushed
    assert live.ctx.presence.presence_of("alice").availability is Availability.BUSY
    reply = await phone.request("presence.set", availability="offline")
    await desktop.expect("presence", timeout=WAIT, availability="offline")
    # Bob's own request round trip: a frame about alice sent to him with her pushes would
    # have been queued before his reply, so it would be here by now.
    mine = await bob.request("presence.set", availability="available")
    assert (mine["type"], mine["user_id"]) == ("presence", "bob")
    assert not [f for f in bob.received("presence") if f["user_id"] == "alice"]


async def test_presence_set_follows_the_role_matrix(live: Live) -> None:
    rita = await live.connect("rita")  # a reporter may not set availability
    reply = await rita.request("presence.set", availability="busy")
    assert (reply["type"], reply["code"]) == ("error", "forbidden")
    assert reply["message"] == "role 'reporter' may not set own availability"
    assert live.ctx.presence.presence_of("rita").availability is Availability.AVAILABLE


async def test_a_change_through_the_http_api_reaches_the_sessions(live: Live) -> None:
    alice = await live.connect("alice")
    response = await live.http(
        "PUT", "/api/v1/users/alice/availability", "sam", json={"status": "offline"}
    )
    assert response.status_code == 200, response.text
    pushed = await alice.expect("presence", timeout=WAIT, availability="offline")
    assert pushed["user_id"] == "alice"


async def test_wrap_up_from_the_call_engine_reaches_the_sessions(live: Live) -> None:
    alice = await live.connect("alice")
    live.ctx.presence.call_started("alice")
    assert (await alice.expect("presence", timeout=WAIT, on_call=True))["user_id"] == "alice"
    live.ctx.presence.call_ended("alice")  # alice's wrap-up: 30 s
    pushed = await alice.expect("presence", timeout=WAIT, on_call=False)
    assert pushed["wrap_up_until"] == "2026-11-23T15:00:30Z"


async def test_the_heartbeat_closes_a_silent_peer(live: Live) -> None:
    silent = await live.connect("alice", auto_pong=False)
    code, reason = await silent.wait_closed(WAIT)
    assert code == 4008
    assert reason.startswith("no frame for")
    assert silent.received("ping")  # it was asked
    assert live.gateway.session_count("alice") == 0


async def test_the_heartbeat_keeps_a_live_peer(live: Live) -> None:
    alive = await live.connect("alice")
    # Many heartbeat windows (0.6 s each) go by: pinged each time, never closed.
    await eventually(lambda: len(alive.received("ping")) >= 6)
    assert alive.is_open
    assert live.gateway.session_count("alice") == 1


async def test_without_grace_a_drop_is_unreachable_at_once(make_live: LiveFactory) -> None:
    live = await make_live(grace_seconds=0)
    alice = await live.connect("alice")
    alice.abort()
    await eventually(lambda: not apps_reachable(live, "alice"))
    assert live.gateway.session_count() == 0
