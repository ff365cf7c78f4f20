"""Conference mode end to end: the fake carrier posts signed webhooks to a bridge served over
loopback HTTP and executes its TwiML; the bridge rings participants through the fake's REST API
(every request checked against the published spec: the `world` fixture fails a test on any
violation)."""

from __future__ import annotations

from sim.carrier import answer, busy, fail, no_answer
from structlog.testing import capture_logs

from bridge.calls.events import CallAnswered, CallEnded, CallOutcome, CallRinging, LegState
from bridge.calls.events import LegReason as Reason
from tests.carrier.helpers import BEN_SIP, CHAIN, DIRECT, FRONT, HANGUP, TURNS
from tests.carrier.live import CALLER, QUICK, World, eventually

ANA, EVE, CID = "client:ana", "client:eve", "+15550003001"


def legs_by_user(world: World, call_sid: str) -> dict[str | None, list]:
    out: dict[str | None, list] = {}
    for leg in world.call(call_sid).machine.legs():
        out.setdefault(leg.user_id, []).append(leg)
    return out


async def test_the_caller_waits_in_a_conference_named_after_the_call(world: World) -> None:
    world.carrier.set_target(ANA, no_answer())
    inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
    assert inbound.status == 200 and inbound.xml is not None
    [dial] = list(inbound.xml)
    [conference] = list(dial)
    assert conference.tag == "Conference" and conference.text == inbound.sid
    assert conference.get("startConferenceOnEnter") == "false"  # hold music until an agent
    assert conference.get("endConferenceOnExit") == "true"
    assert conference.get("statusCallback") == (
        f"https://bridge.example.com/twilio/conference?call={inbound.sid}"
    )
    creates = await eventually(lambda: len(world.requests("CreateParticipant")) == 3)
    assert creates
    sent = {p["Label"][0]: p for p in world.requests("CreateParticipant")}
    assert set(sent) == {"ana", "ben", "cid"}
    assert sent["ana"]["To"] == [ANA] and sent["ana"]["From"] == [CALLER]
    assert sent["ben"]["To"] == [BEN_SIP] and sent["ben"]["From"] == [FRONT]
    assert sent["cid"]["To"] == [CID] and sent["cid"]["From"] == [FRONT]
    for params in sent.values():
        assert params["EarlyMedia"] == ["true"] and params["Timeout"] == ["20"]
        assert params["StatusCallback"][0].startswith(
            f"https://bridge.example.com/twilio/status?call={inbound.sid}&leg="
        )
        assert params["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    conf = await eventually(lambda: world.carrier.conference(inbound.sid))
    assert conf.friendly_name == inbound.sid
    world.carrier.hangup(inbound.sid)
    ended = await world.ended(inbound.sid)
    assert ended.machine.outcome is CallOutcome.CALLER_CANCELLED


async def test_first_to_answer_wins_and_the_others_are_ended(world: World) -> None:
    world.carrier.set_target(ANA, answer(after=2))
    world.carrier.set_target(BEN_SIP, no_answer())
    world.carrier.set_target(CID, answer(after=8))
    inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
    call = await eventually(lambda: world.service.find(inbound.sid))
    await eventually(lambda: call.machine.answered_by == "ana")

    legs = legs_by_user(world, inbound.sid)
    assert legs["ana"][0].state is LegState.BRIDGED
    for loser in ("ben", "cid"):
        [leg] = legs[loser]
        assert leg.state is LegState.CANCELLED and leg.reason is Reason.ANSWERED_ELSEWHERE
    # The carrier was told to end both (completed also ends a leg that picks up meanwhile).
    loser_sids = {call.legs[legs[u][0].leg_id].sid for u in ("ben", "cid")}
    await eventually(lambda: all(world.carrier.calls[sid].is_final for sid in loser_sids))
    updates = [r for r in world.carrier.requests if r.operation_id == "UpdateCall"]
    assert {r.path.rsplit("/", 1)[1].removesuffix(".json") for r in updates} == loser_sids
    assert all(r.params == [("Status", "completed")] for r in updates)
    conf = world.carrier.conference(inbound.sid)
    assert conf is not None
    ana_sid = call.legs[legs["ana"][0].leg_id].sid
    assert {p.call_sid for p in conf.participants.values() if p.status == "connected"} == {
        inbound.sid,
        ana_sid,
    }
    answered = [e.event for e in call.events if isinstance(e.event, CallAnswered)]
    assert [(a.user_id, a.leg_id) for a in answered] == [("ana", legs["ana"][0].leg_id)]
    assert [e.leg_ref for e in call.events if isinstance(e.event, CallAnswered)] == [ana_sid]
    assert world.ctx.presence.presence_of("ana").on_call

    world.carrier.hangup(inbound.sid)
    ended = await world.ended(inbound.sid)
    assert ended.machine.outcome is CallOutcome.ANSWERED
    await eventually(lambda: world.carrier.calls[ana_sid].is_final)


async def test_the_agent_hanging_up_ends_the_caller_too(world: World) -> None:
    world.carrier.set_target(ANA, answer(after=1, hangup_after=5))
    world.carrier.set_target(BEN_SIP, no_answer())
    world.carrier.set_target(CID, no_answer())
    inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
    ended = await world.ended(inbound.sid)
    [last] = [e.event for e in ended.events if isinstance(e.event, CallEnded)]
    assert last.cause.value == "callee_hangup" and last.outcome is CallOutcome.ANSWERED
    await eventually(lambda: world.carrier.calls[inbound.sid].is_final)
    assert world.carrier.calls[inbound.sid].end_reason == "api-hangup"


async def test_a_layer_that_rings_out_moves_to_the_next_layer(world: World) -> None:
    for target in (ANA, BEN_SIP, CID):
        world.carrier.set_target(target, no_answer())
    world.carrier.set_target(EVE, answer(after=3))
    inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
    call = await eventually(lambda: world.service.find(inbound.sid))
    await eventually(lambda: call.machine.answered_by == "eve")
    rings = [e.event for e in call.events if isinstance(e.event, CallRinging)]
    assert [(r.layer_index, r.user_ids) for r in rings] == [
        (0, ("ana", "ben", "cid")),
        (1, ("eve",)),
    ]
    [eve] = [p for p in world.requests("CreateParticipant") if p["Label"] == ["eve"]]
    assert eve["Timeout"] == ["15"]  # the second layer's timeout
    world.carrier.hangup(inbound.sid)
    assert (await world.ended(inbound.sid)).machine.outcome is CallOutcome.ANSWERED


async def test_busy_and_failed_legs_move_on_without_waiting(world: World) -> None:
    world.carrier.set_target(ANA, busy())
    world.carrier.set_target(BEN_SIP, fail())
    world.carrier.set_target(CID, busy())
    world.carrier.set_target(EVE, answer(after=1))
    inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
    call = await eventually(lambda: world.service.find(inbound.sid))
    await eventually(lambda: call.machine.answered_by == "eve")
    failures = {leg.user_id: leg.failure for leg in call.machine.legs() if leg.layer_index == 0}
    assert {k: v.value if v else None for k, v in failures.items()} == {
        "ana": "busy",
        "ben": "unreachable",
        "cid": "busy",
    }
    world.carrier.hangup(inbound.sid)
    await world.ended(inbound.sid)


async def test_everyone_missing_sends_the_caller_to_voicemail(world: World) -> None:
    for target in (ANA, BEN_SIP, CID, EVE):
        world.carrier.set_target(target, no_answer())
    inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
    ended = await world.ended(inbound.sid)
    assert ended.machine.outcome is CallOutcome.VOICEMAIL
    [redirect] = world.requests("UpdateCall")
    assert set(redirect) == {"Twiml"}
    assert "<Record" in redirect["Twiml"][0]
    assert "Front desk is busy. Leave a message." in redirect["Twiml"][0]
    # The carrier ran it: the caller left a message, the voicemail action came back to us.
    [voicemail] = await eventually(
        lambda: [d for d in world.carrier.callbacks("action") if d.statuses] or None
    )
    assert voicemail.url.startswith("https://bridge.example.com/twilio/voicemail?call=")
    assert voicemail.statuses == [200]
    assert world.carrier.calls[inbound.sid].end_reason == "caller-hangup"


async def test_a_missed_direct_call_goes_to_the_backup_number(world: World) -> None:
    # dee forwards to her phone with press-1; nobody picks up, so Backup Routing dials her
    # backup number as a participant, which answers: the call is forwarded.
    world.carrier.set_target("+15550004001", no_answer())
    world.carrier.set_target("+15550004999", answer(after=2))
    inbound = await world.carrier.place_inbound_call(CALLER, DIRECT, follow=True)
    call = await eventually(lambda: world.service.find(inbound.sid))
    await eventually(lambda: call.machine.state.value == "answered")
    [dee] = world.requests("CreateCall")  # press-1 legs are calls of their own
    assert dee["To"] == ["+15550004001"] and dee["From"] == [DIRECT]
    assert dee["Url"][0].startswith("https://bridge.example.com/twilio/confirm?call=")
    [backup] = world.requests("CreateParticipant")
    assert backup["To"] == ["+15550004999"] and backup["Label"] == ["forward"]
    assert backup["Timeout"] == ["60"]
    world.carrier.hangup(inbound.sid)
    assert (await world.ended(inbound.sid)).machine.outcome is CallOutcome.FORWARDED


async def test_press_1_joins_the_conference_and_wins(world: World) -> None:
    world.carrier.set_target("+15550004001", answer(after=1, digits="1"))
    inbound = await world.carrier.place_inbound_call(CALLER, DIRECT, follow=True)
    call = await eventually(lambda: world.service.find(inbound.sid))
    await eventually(lambda: call.machine.answered_by == "dee")
    [dee_call] = world.carrier.calls_to("+15550004001")
    conf = await eventually(lambda: world.carrier.conference(inbound.sid))
    await eventually(lambda: dee_call.sid in conf.participants)
    assert conf.participants[dee_call.sid].label == "dee"
    world.carrier.hangup(inbound.sid)
    assert (await world.ended(inbound.sid)).machine.outcome is CallOutcome.ANSWERED


async def test_no_key_at_the_press_1_prompt_counts_as_no_answer(world: World) -> None:
    # A voicemail box picks up and presses nothing: the leg fails, Backup Routing follows.
    world.carrier.set_target("+15550004001", answer(after=1))
    world.carrier.set_target("+15550004999", answer(after=1))
    inbound = await world.carrier.place_inbound_call(CALLER, DIRECT, follow=True)
    call = await eventually(lambda: world.service.find(inbound.sid))
    await eventually(lambda: call.machine.state.value == "answered")
    assert call.machine.answered_by is None  # the backup number, not dee
    [dee] = [leg for leg in call.machine.legs() if leg.user_id == "dee"]
    assert dee.state is LegState.FAILED
    world.carrier.hangup(inbound.sid)
    await world.ended(inbound.sid)


async def test_a_hangup_fallback_says_goodbye_through_the_rest_api(world: World) -> None:
    world.carrier.set_target(ANA, no_answer())
    inbound = await world.carrier.place_inbound_call(CALLER, HANGUP, follow=True)
    ended = await world.ended(inbound.sid)
    assert ended.machine.outcome is CallOutcome.HANGUP
    [redirect] = await eventually(lambda: world.requests("UpdateCall"))
    assert "Sorry, we missed you." in redirect["Twiml"][0] and "<Hangup" in redirect["Twiml"][0]
    await eventually(lambda: world.carrier.calls[inbound.sid].is_final)


async def test_a_carrier_5xx_on_a_participant_is_retried_and_logged(world: World) -> None:
    world.carrier.set_target(ANA, answer(after=2))
    world.carrier.set_target(BEN_SIP, no_answer())
    world.carrier.set_target(CID, no_answer())
    fault = world.carrier.inject_fault(2, 503, operation="CreateParticipant")
    with capture_logs() as logs:
        inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
        call = await eventually(lambda: world.service.find(inbound.sid))
        await eventually(lambda: call.machine.answered_by == "ana")
    assert fault.hits == 2
    assert world.errors("CreateParticipant", "503") == 2
    failures = [e for e in logs if e["event"] == "carrier_api_error"]
    assert [(e["operation"], e["status"], e["conference"]) for e in failures] == [
        ("CreateParticipant", "503", inbound.sid),
        ("CreateParticipant", "503", inbound.sid),
    ]
    # Retried, not dropped: all three were placed in the end.
    statuses = [r.status for r in world.carrier.requests if r.operation_id == "CreateParticipant"]
    assert statuses.count(201) == 3 and statuses.count(503) == 2
    world.carrier.hangup(inbound.sid)
    await world.ended(inbound.sid)


async def test_a_participant_the_carrier_refuses_fails_that_leg_only(world: World) -> None:
    world.carrier.set_target(ANA, no_answer())
    world.carrier.set_target(BEN_SIP, no_answer())
    world.carrier.set_target(CID, answer(after=3))
    world.carrier.inject_fault(1, 400, operation="CreateParticipant")  # the first one: refused
    inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
    call = await eventually(lambda: world.service.find(inbound.sid))
    await eventually(lambda: call.machine.answered_by == "cid")
    failed = [leg for leg in call.machine.legs() if leg.state is LegState.FAILED]
    assert len(failed) == 1 and failed[0].failure is not None
    assert world.errors("CreateParticipant", "400") == 1
    world.carrier.hangup(inbound.sid)
    await world.ended(inbound.sid)


async def test_callbacks_twice_and_out_of_order_change_nothing_twice(world: World) -> None:
    world.carrier.callback_repeat = 2
    world.carrier.set_target(ANA, answer(after=2))
    world.carrier.set_target(BEN_SIP, no_answer())
    world.carrier.set_target(CID, no_answer())
    inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
    call = await eventually(lambda: world.service.find(inbound.sid))
    await eventually(lambda: call.machine.answered_by == "ana")
    world.carrier.hold_callbacks()
    world.carrier.hangup(inbound.sid)
    world.carrier.release_callbacks("reverse")
    ended = await world.ended(inbound.sid)
    await world.carrier.drain()
    assert [type(e.event).__name__ for e in ended.events].count("CallAnswered") == 1
    assert [type(e.event).__name__ for e in ended.events].count("CallEnded") == 1
    assert ended.machine.outcome is CallOutcome.ANSWERED
    # Every delivery was accepted (204), the repeats included.
    statuses = {s for d in world.carrier.deliveries if d.kind != "voice" for s in d.statuses}
    assert statuses <= {200, 204}


async def test_the_bridge_times_a_layer_out_itself(world: World) -> None:
    # The carrier rings ana for at least 5 s (its minimum Timeout, on a real-time clock here);
    # the layer lasts 1 s: the bridge's timer ends her leg and moves on to voicemail.
    world.carrier.net.time_scale = 1.0
    world.carrier.set_target(ANA, no_answer())
    with capture_logs() as logs:
        inbound = await world.carrier.place_inbound_call(CALLER, QUICK, follow=True)
        call = await eventually(lambda: world.service.find(inbound.sid))
        await eventually(lambda: call.machine.state.value == "voicemail")
    [leg] = call.machine.legs()
    assert leg.state is LegState.CANCELLED and leg.reason is Reason.TIMEOUT
    assert [e["event"] for e in logs].count("carrier_ring_timer") == 1
    [ana] = world.requests("CreateParticipant")
    assert ana["Timeout"] == ["5"]
    redirect = await eventually(
        lambda: [p for p in world.requests("UpdateCall") if "Twiml" in p] or None
    )
    assert "Quick voicemail." in redirect[0]["Twiml"][0]
    ana_sid = call.legs[leg.leg_id].sid
    await eventually(lambda: world.carrier.calls[ana_sid].is_final)
    world.carrier.hangup(inbound.sid)
    await world.ended(inbound.sid)


async def test_conference_callbacks_apply_once_and_never_backwards(world: World) -> None:
    world.carrier.set_target(ANA, no_answer())
    world.carrier.set_target(BEN_SIP, no_answer())
    world.carrier.set_target(CID, no_answer())
    inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
    call = await eventually(lambda: world.service.find(inbound.sid))
    conference_sid = await eventually(lambda: call.conference_sid)
    url = f"https://bridge.example.com/twilio/conference?call={inbound.sid}"
    member = "CA" + "9" * 32

    async def send(event: str, sequence: int, **fields: str) -> None:
        params = {
            "AccountSid": world.carrier.account_sid,
            "ConferenceSid": conference_sid,
            "FriendlyName": inbound.sid,
            "StatusCallbackEvent": event,
            "SequenceNumber": str(sequence),
            "CallSid": member,
            "ParticipantLabel": "sam",
            **fields,
        }
        signature = world.carrier.webhooks.sign(url, params)
        response = await world.http.post(
            url.removeprefix("https://bridge.example.com"),
            data=params,
            headers={"X-Twilio-Signature": signature},
        )
        assert response.status_code == 204, response.text

    await send("participant-join", 100, Muted="true")
    await send("participant-unmute", 102, Muted="false")
    await send("participant-join", 100, Muted="true")  # a retry
    await send("participant-mute", 101, Muted="true")  # late: older than the unmute
    state = call.members[member]
    assert (state.present, state.muted, state.label) == (True, False, "sam")
    await send("participant-leave", 103)
    await send("participant-join", 100)  # very late
    assert call.members[member].present is False
    world.carrier.hangup(inbound.sid)
    await world.ended(inbound.sid)


async def test_the_caller_hanging_up_ends_every_ringing_leg(world: World) -> None:
    for target in (ANA, BEN_SIP, CID):
        world.carrier.set_target(target, no_answer())
    inbound = await world.carrier.place_inbound_call(CALLER, FRONT, follow=True)
    call = await eventually(lambda: world.service.find(inbound.sid))
    await eventually(lambda: len(call.legs) == 3 and all(m.sid for m in call.legs.values()))
    world.carrier.hangup(inbound.sid)
    ended = await world.ended(inbound.sid)
    assert ended.machine.outcome is CallOutcome.CALLER_CANCELLED
    assert {leg.reason for leg in ended.machine.legs()} == {Reason.CALLER_HANGUP}
    sids = [meta.sid for meta in ended.legs.values()]
    await eventually(lambda: all(world.carrier.calls[sid].is_final for sid in sids))
    assert {world.carrier.calls[sid].status for sid in sids} == {"canceled"}
    # The conference ending under the ringing legs is not a reason to ring the next layer.
    assert [p["Label"] for p in world.requests("CreateParticipant")].count(["eve"]) == 0


async def test_one_at_a_time_turns_ring_each_member_for_their_turn(world: World) -> None:
    world.carrier.set_target(ANA, no_answer())
    world.carrier.set_target(EVE, answer(after=2))
    inbound = await world.carrier.place_inbound_call(CALLER, TURNS, follow=True)
    call = await eventually(lambda: world.service.find(inbound.sid))
    await eventually(lambda: call.machine.answered_by is not None)
    created = world.requests("CreateParticipant")
    # Round robin: who starts depends on the group's pointer; each turn is 10 s of the 30.
    assert [p["Timeout"] for p in created] in ([["10"]], [["10"], ["10"]])
    assert call.machine.answered_by == "eve"
    world.carrier.hangup(inbound.sid)
    await world.ended(inbound.sid)


async def test_a_fallback_group_rings_next_then_its_own_fallback(world: World) -> None:
    world.carrier.set_target(ANA, no_answer())
    world.carrier.set_target(EVE, no_answer())
    with capture_logs() as logs:
        inbound = await world.carrier.place_inbound_call(CALLER, CHAIN, follow=True)
        ended = await world.ended(inbound.sid)
    assert ended.machine.outcome is CallOutcome.HANGUP
    assert [p["Label"] for p in world.requests("CreateParticipant")] == [["ana"], ["eve"]]
    assert [e["action"] for e in logs if e["event"] == "carrier_prompt_not_played"] == [
        "ring_group"
    ]
    [redirect] = await eventually(lambda: world.requests("UpdateCall") or None)
    assert "Nobody is here. Goodbye." in redirect["Twiml"][0]
