"""`call.monitor` / `call.recording` frames on real carrier calls: the conference-mode world of
tests/carrier (the fake carrier and the bridge over loopback HTTP), driven over `/ws` with the
same control service, checks and audit as the HTTP API (tests/control)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sim.apps import AppClient
from sim.carrier import no_answer
from structlog.testing import capture_logs

from tests.carrier.helpers import BEN_SIP, FRONT
from tests.carrier.live import CALLER, World, eventually, running_world
from tests.control.helpers import answered_by_ana, audits

Connect = Callable[[str], Awaitable[AppClient]]


@pytest.fixture
async def world(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    async with running_world(demo_dir, monkeypatch) as live:
        yield live


@pytest.fixture
async def connect(world: World) -> AsyncIterator[Connect]:
    clients: list[AppClient] = []

    async def open_session(user_id: str) -> AppClient:
        url = world.url.replace("http://", "ws://") + "/ws"
        client = AppClient(url, world.ctx.tokens.issue(user_id))
        clients.append(client)
        await client.connect()
        return client

    yield open_session
    for client in clients:
        await client.close()


async def test_barge_then_whisper_then_stop_over_the_websocket(
    world: World, connect: Connect
) -> None:
    call = await answered_by_ana(world)
    ana_sid = call.answered_sid()
    sam = await connect("sam")
    with capture_logs() as logs:
        joined = await sam.request("call.monitor", call_id=call.call_id, mode="barge")
        assert joined["type"] == "ack", joined
        result = joined["result"]
        assert (result["call_id"], result["user_id"], result["mode"]) == (
            call.call_id,
            "sam",
            "barge",
        )
        assert (result["via"], result["to"]) == ("client", "client:sam")
        [created] = [p for p in world.requests("CreateParticipant") if p["To"] == ["client:sam"]]
        assert created["Label"] == ["monitor-sam"] and created["Muted"] == ["false"]
        assert "Coaching" not in created  # a new participant does not coach unless told
        sam_sid = result["call_sid"]
        conf = world.carrier.conference(call.call_id)
        assert conf is not None
        await eventually(lambda: conf.participants[sam_sid].status == "connected")
        await eventually(lambda: call.monitors["sam"].status == "in-progress")

        # The same frame with another mode switches live (the HTTP API's PATCH).
        switched = await sam.request("call.monitor", call_id=call.call_id, mode="whisper")
        assert (switched["type"], switched["result"]["mode"]) == ("ack", "whisper")
        [update] = world.requests("UpdateParticipant")
        assert update["Coaching"] == ["true"] and update["CallSidToCoach"] == [ana_sid]

        left = await sam.request("call.monitor", call_id=call.call_id, mode="stop")
        assert left["type"] == "ack" and "result" not in left
        await eventually(lambda: world.carrier.calls[sam_sid].is_final)
        assert "sam" not in call.monitors

    done = audits(logs)
    assert [(a["control"], a["detail"], a["outcome"], a["origin"]) for a in done] == [
        ("monitor", "barge", "done", "ws"),
        ("monitor_change", "whisper", "done", "ws"),
        ("monitor_stop", "leave", "done", "ws"),
    ]
    world.carrier.hangup(call.call_id)
    await world.ended(call.call_id)


async def test_refusals_are_error_frames_with_the_controls_code(
    world: World, connect: Connect
) -> None:
    call = await answered_by_ana(world)
    cases = [
        # (user, frame, fields, code, message)
        ("sue", "call.monitor", {"mode": "listen"}, "forbidden",
         "user 'sue' lacks the 'barge_whisper' permission"),
        ("rex", "call.monitor", {"mode": "listen"}, "forbidden",
         "role 'rep' may not monitor calls"),
        ("abe", "call.monitor", {"mode": "listen", "via": "phone_number"}, "invalid",
         "user 'abe' has no phone_number to be called on"),
        ("sam", "call.monitor", {"mode": "stop"}, "conflict",
         f"user 'sam' is not monitoring call {call.call_id!r}"),
        ("abe", "call.recording", {"action": "start"}, "forbidden",
         f"role 'agent' may only control the recording of calls they answered; call "
         f"{call.call_id!r} is not theirs"),
        ("ana", "call.recording", {"action": "pause"}, "conflict",
         f"call {call.call_id!r} has no recording to pause"),
    ]  # fmt: skip
    with capture_logs() as logs:
        for user, kind, fields, code, message in cases:
            client = await connect(user)
            reply = await client.request(kind, call_id=call.call_id, **fields)
            assert (reply["type"], reply["code"], reply["message"]) == ("error", code, message)
            assert client.is_open
        sam = await connect("sam")
        unknown = await sam.request("call.monitor", call_id="CAnope", mode="listen")
        assert (unknown["code"], unknown["message"]) == ("not_found", "no live call 'CAnope'")
    refused = audits(logs)
    assert [(a["actor"], a["outcome"], a["error"], a["origin"]) for a in refused] == [
        ("sue", "refused", "not_allowed", "ws"),
        ("rex", "refused", "not_allowed", "ws"),
        ("abe", "refused", "invalid", "ws"),
        ("sam", "refused", "not_possible", "ws"),
        ("abe", "refused", "not_allowed", "ws"),
        ("ana", "refused", "not_possible", "ws"),
        ("sam", "refused", "not_found", "ws"),
    ]
    world.carrier.hangup(call.call_id)
    await world.ended(call.call_id)


async def test_recording_from_the_agents_own_session(world: World, connect: Connect) -> None:
    call = await answered_by_ana(world)
    ana = await connect("ana")
    started = await ana.request("call.recording", call_id=call.call_id, action="start")
    assert (started["type"], started["result"]["status"]) == ("ack", "in-progress")
    paused = await ana.request(
        "call.recording", call_id=call.call_id, action="pause", pause_behavior="skip"
    )
    assert (paused["result"]["status"], paused["result"]["pause_behavior"]) == ("paused", "skip")
    assert world.requests("UpdateCallRecording") == [
        {"Status": ["paused"], "PauseBehavior": ["skip"]}
    ]
    bad = await ana.request(
        "call.recording", call_id=call.call_id, action="pause", pause_behavior="loud"
    )
    assert (bad["code"], bad["field"]) == ("invalid_frame", "pause_behavior")
    world.carrier.hangup(call.call_id)
    await world.ended(call.call_id)


async def test_a_ringing_call_cannot_be_monitored(world: World, connect: Connect) -> None:
    for target in ("client:ana", BEN_SIP, "+15550003001"):
        world.carrier.set_target(target, no_answer())
    inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
    await eventually(lambda: world.service.find(inbound.sid))
    sam = await connect("sam")
    reply = await sam.request("call.monitor", call_id=inbound.sid, mode="listen")
    assert (reply["code"], reply["message"]) == (
        "conflict",
        f"call {inbound.sid!r} is not answered (it is ringing)",
    )
    world.carrier.hangup(inbound.sid)
    await world.ended(inbound.sid)


async def test_hangups_and_monitor_answers_that_cannot_be_are_error_frames(
    world: World, connect: Connect
) -> None:
    """`call.hangup` and `monitor.answer` (the SIP path's WebRTC frames) on a carrier call, on
    calls that do not exist, and malformed: each an `error` frame, the session kept."""
    call = await answered_by_ana(world)
    ana, sam = await connect("ana"), await connect("sam")
    cases = [
        (ana, "call.hangup", {"call_id": "CAnope"}, "not_found",
         "no call with that id is answered by you"),
        (sam, "call.hangup", {"call_id": call.call_id}, "not_found",
         "no call with that id is answered by you"),
        (sam, "monitor.answer", {"call_id": "CAnope", "sdp": "v=0"}, "not_found",
         "no live call 'CAnope'"),
        (sam, "monitor.answer", {"call_id": call.call_id, "sdp": "v=0"}, "conflict",
         f"user 'sam' is not monitoring call {call.call_id!r}"),
    ]  # fmt: skip
    for client, kind, fields, code, message in cases:
        reply = await client.request(kind, **fields)
        assert (reply["type"], reply["code"], reply["message"]) == ("error", code, message)
        assert client.is_open
    for client, kind, fields in (
        (sam, "monitor.answer", {"call_id": call.call_id}),  # no sdp
        (sam, "monitor.answer", {"call_id": call.call_id, "sdp": 5}),
        (ana, "call.hangup", {}),
    ):
        reply = await client.request(kind, **fields)
        assert (reply["type"], reply["code"]) == ("error", "invalid_frame"), reply
        assert client.is_open
    world.carrier.hangup(call.call_id)
    await world.ended(call.call_id)
