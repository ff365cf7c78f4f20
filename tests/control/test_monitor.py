"""Listen / whisper / barge end to end: the control API on the bridge, the supervisor as a
participant at the fake carrier, the conference callbacks back into the call record."""

from __future__ import annotations

from structlog.testing import capture_logs

from bridge.control.events import ControlAttempted
from tests.carrier.live import World, eventually
from tests.control.helpers import answered_by_ana, api, audits


async def test_whisper_then_barge_then_leave(world: World) -> None:
    call = await answered_by_ana(world)
    ana_sid = call.answered_sid()
    path = f"/api/v1/calls/{call.call_id}/monitor"
    with capture_logs() as logs:
        joined = await api(world, "sam", "POST", path, {"mode": "whisper"})
        assert joined.status_code == 201, joined.text
        body = joined.json()
        assert (body["user_id"], body["mode"], body["via"]) == ("sam", "whisper", "client")
        assert body["to"] == "client:sam" and body["call_id"] == call.call_id
        sam_sid = body["call_sid"]
        conf = world.carrier.conference(call.call_id)
        assert conf is not None
        await eventually(lambda: conf.participants[sam_sid].status == "connected")
        whisper = conf.participants[sam_sid]
        assert (whisper.coaching, whisper.call_sid_to_coach, whisper.muted) == (
            True,
            ana_sid,
            False,
        )
        [created] = [p for p in world.requests("CreateParticipant") if p["To"] == ["client:sam"]]
        assert created["Label"] == ["monitor-sam"] and created["Beep"] == ["false"]
        assert created["Coaching"] == ["true"] and created["CallSidToCoach"] == [ana_sid]
        assert created["StatusCallback"][0].endswith(f"call={call.call_id}&monitor=sam")
        await eventually(lambda: call.monitors["sam"].status == "in-progress")
        await eventually(lambda: sam_sid in call.members and call.members[sam_sid].present)

        switched = await api(world, "sam", "PATCH", path, {"mode": "barge"})
        assert switched.status_code == 200, switched.text
        assert switched.json()["mode"] == "barge"
        barge = conf.participants[sam_sid]
        assert (barge.coaching, barge.muted, barge.call_sid_to_coach) == (False, False, None)
        [update] = world.requests("UpdateParticipant")
        assert update == {"Muted": ["false"], "Coaching": ["false"]}
        # The carrier's participant-modify callback reaches the call record too.
        await eventually(lambda: call.members[sam_sid].coaching is False)

        left = await api(world, "sam", "DELETE", path)
        assert left.status_code == 204, left.text
        await eventually(lambda: world.carrier.calls[sam_sid].is_final)
        assert sam_sid not in conf.participants and "sam" not in call.monitors
        await eventually(lambda: not call.members[sam_sid].present)

    done = audits(logs)
    assert [(a["control"], a["detail"], a["allowed"], a["outcome"]) for a in done] == [
        ("monitor", "whisper", True, "done"),
        ("monitor_change", "barge", True, "done"),
        ("monitor_stop", "leave", True, "done"),
    ]
    assert all(a["actor"] == "sam" and a["target"] == f"call:{call.call_id}" for a in done)
    assert all(a["action"] == "monitor_calls" and a["origin"] == "http" for a in done)
    published = [e.event for e in call.events if isinstance(e.event, ControlAttempted)]
    assert [(e.actor, e.control, e.outcome) for e in published] == [
        ("sam", "monitor", "done"),
        ("sam", "monitor_change", "done"),
        ("sam", "monitor_stop", "done"),
    ]
    # The call itself goes on between the caller and ana.
    assert call.machine.state.value == "answered"
    world.carrier.hangup(call.call_id)
    await world.ended(call.call_id)


async def test_listen_on_the_supervisors_phone_is_muted(world: World) -> None:
    call = await answered_by_ana(world)
    joined = await api(
        world,
        "sam",
        "POST",
        f"/api/v1/calls/{call.call_id}/monitor",
        {"mode": "listen", "via": "phone_number"},
    )
    assert joined.status_code == 201, joined.text
    assert joined.json()["to"] == "+15550007001"
    [created] = [p for p in world.requests("CreateParticipant") if p["Label"] == ["monitor-sam"]]
    assert created["To"] == ["+15550007001"] and created["From"] == [call.machine.plan.line]
    assert created["Muted"] == ["true"] and "Coaching" not in created
    conf = world.carrier.conference(call.call_id)
    assert conf is not None
    sam_sid = joined.json()["call_sid"]
    await eventually(lambda: conf.participants[sam_sid].status == "connected")
    assert conf.participants[sam_sid].muted is True

    # Whisper from listen: unmuted, coaching the agent.
    switched = await api(
        world, "sam", "PATCH", f"/api/v1/calls/{call.call_id}/monitor", {"mode": "whisper"}
    )
    assert switched.status_code == 200, switched.text
    assert conf.participants[sam_sid].coaching is True
    assert conf.participants[sam_sid].call_sid_to_coach == call.answered_sid()
    # The supervisor hangs up on their own: the session goes with the call.
    world.carrier.hangup(sam_sid)
    await eventually(lambda: "sam" not in call.monitors)
    world.carrier.hangup(call.call_id)
    await world.ended(call.call_id)


async def test_who_may_monitor_and_the_refusals(world: World) -> None:
    call = await answered_by_ana(world)
    path = f"/api/v1/calls/{call.call_id}/monitor"
    with capture_logs() as logs:
        no_flag = await api(world, "sue", "POST", path, {"mode": "listen"})
        rep = await api(world, "rex", "POST", path, {"mode": "listen"})
        on_the_call = await api(world, "ana", "POST", path, {"mode": "listen"})
        unknown = await api(world, "sam", "POST", "/api/v1/calls/CA404/monitor", {"mode": "listen"})
        no_number = await api(world, "abe", "POST", path, {"mode": "listen", "via": "phone_number"})
        not_monitoring = await api(world, "sam", "PATCH", path, {"mode": "barge"})
        bad_mode = await api(world, "sam", "POST", path, {"mode": "shout"})
    assert no_flag.status_code == 403
    assert no_flag.json()["detail"] == "user 'sue' lacks the 'barge_whisper' permission"
    assert rep.status_code == 403 and rep.json()["detail"] == "role 'rep' may not monitor calls"
    assert on_the_call.status_code == 403  # ana is an agent without the flag
    assert unknown.status_code == 404
    assert no_number.status_code == 422 and "phone_number" in no_number.json()["detail"]
    assert not_monitoring.status_code == 409
    assert bad_mode.status_code == 422  # the body's schema
    refused = audits(logs)
    # The refusal's kind (the HTTP API answers it 403, 404, 422, 409).
    assert [(a["actor"], a["allowed"], a["outcome"], a["error"]) for a in refused] == [
        ("sue", False, "refused", "not_allowed"),
        ("rex", False, "refused", "not_allowed"),
        ("ana", False, "refused", "not_allowed"),
        ("sam", True, "refused", "not_found"),
        ("abe", True, "refused", "invalid"),
        ("sam", True, "refused", "not_possible"),
    ]
    assert refused[0]["reason"] == "user 'sue' lacks the 'barge_whisper' permission"
    published = [e.event for e in call.events if isinstance(e.event, ControlAttempted)]
    assert [(e.actor, e.allowed, e.error) for e in published] == [
        ("sue", False, "not_allowed"),
        ("rex", False, "not_allowed"),
        ("ana", False, "not_allowed"),
        ("abe", True, "invalid"),
        ("sam", True, "not_possible"),
    ]

    # An agent with the flag may monitor (ROLES.md: agent = flag); twice is a conflict.
    first = await api(world, "abe", "POST", path, {"mode": "listen"})
    again = await api(world, "abe", "POST", path, {"mode": "barge"})
    assert first.status_code == 201 and again.status_code == 409
    world.carrier.hangup(call.call_id)
    await world.ended(call.call_id)
    gone = await api(world, "abe", "PATCH", path, {"mode": "barge"})
    assert gone.status_code == 404  # the call has ended


async def test_a_call_still_ringing_cannot_be_monitored(world: World) -> None:
    from sim.carrier import no_answer

    from tests.carrier.helpers import BEN_SIP, FRONT
    from tests.carrier.live import CALLER

    for target in ("client:ana", BEN_SIP, "+15550003001"):
        world.carrier.set_target(target, no_answer())
    inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
    await eventually(lambda: world.service.find(inbound.sid))
    ringing = await api(
        world, "sam", "POST", f"/api/v1/calls/{inbound.sid}/monitor", {"mode": "listen"}
    )
    assert ringing.status_code == 409
    assert ringing.json()["detail"] == f"call {inbound.sid!r} is not answered (it is ringing)"
    world.carrier.hangup(inbound.sid)
    await world.ended(inbound.sid)


async def test_the_carrier_failing_is_a_502_and_leaves_no_session(world: World) -> None:
    call = await answered_by_ana(world)
    world.carrier.inject_fault(10, 500, operation="CreateParticipant")
    with capture_logs() as logs:
        failed = await api(
            world, "sam", "POST", f"/api/v1/calls/{call.call_id}/monitor", {"mode": "barge"}
        )
    assert failed.status_code == 502 and "500" in failed.json()["detail"]
    assert "sam" not in call.monitors
    # Retried as [twilio] api_attempts says (4), each try logged, then given up.
    tries = [e for e in logs if e["event"] == "carrier_api_error"]
    assert [e["attempt"] for e in tries] == [1, 2, 3, 4]
    [entry] = audits(logs)
    assert (entry["allowed"], entry["outcome"]) == (True, "failed")
    assert entry["error"] == "upstream_failed"
    assert world.errors("CreateParticipant", "500") == 4
    world.carrier.hangup(call.call_id)
    await world.ended(call.call_id)
