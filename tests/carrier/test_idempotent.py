"""Retried and out-of-order callbacks change nothing twice, and never resurrect a call."""

from __future__ import annotations

from bridge.calls.events import CallAnswered, CallEnded
from tests.carrier.helpers import BEN_SIP, FRONT, Carrier, CarrierCall, element, nouns, verbs


def _kinds(carrier: Carrier, call: CarrierCall) -> list[str]:
    assert carrier.bridge.ctx.carrier is not None
    found = carrier.bridge.ctx.carrier.find(call.sid)
    assert found is not None
    return [type(e.event).__name__ for e in found.events]


async def test_a_retried_voice_webhook_gets_the_same_answer_and_routes_once(
    carrier: Carrier,
) -> None:
    call = await carrier.call(FRONT)
    again = await carrier.twiml(
        "/twilio/voice", {"CallSid": call.sid, "From": call.caller, "To": FRONT}
    )
    assert nouns(again.find("Dial")) == nouns(call.dial)  # type: ignore[arg-type]
    assert again.find("Dial").get("action") == call.dial.get("action")  # type: ignore[union-attr]
    assert carrier.sample("bridge_route_decisions_total", result="ring") == 1
    assert len(carrier.live_calls()) == 1


async def test_a_retried_dial_action_replays_its_answer(carrier: Carrier) -> None:
    call = await carrier.call(FRONT)
    first_action = call.dial.get("action", "")
    params = {"CallSid": call.sid, "DialCallStatus": "no-answer", "CallStatus": "in-progress"}
    first = (await carrier.post(first_action, params)).text
    second = (await carrier.post(first_action, params)).text
    assert first == second
    assert "dial=2" in first and "dial=3" not in first
    assert _kinds(carrier, call).count("CallRinging") == 2  # layer 0, layer 1: not layer 2
    assert carrier.live_calls()[0]["ringing"] == ["eve"]


async def test_a_retried_answer_callback_answers_once(carrier: Carrier) -> None:
    call = await carrier.call(FRONT)
    await carrier.answer(call, "ana")
    await carrier.leg_status(call, "ana", "in-progress")
    await carrier.leg_status(call, "ana", "ringing")  # late: after in-progress
    assert _kinds(carrier, call).count("CallAnswered") == 1
    assert _kinds(carrier, call).count("LegRinging") == 1
    assert carrier.live_calls()[0]["answered_by"] == "ana"


async def test_a_second_leg_answering_late_does_not_take_the_call(carrier: Carrier) -> None:
    call = await carrier.call(FRONT)
    await carrier.answer(call, "ana")
    await carrier.answer(call, "+15550003001")
    assert carrier.live_calls()[0]["answered_by"] == "ana"
    assert _kinds(carrier, call).count("CallAnswered") == 1
    assert not carrier.bridge.ctx.presence.presence_of("cid").on_call


async def test_ringing_after_completed_does_not_resurrect_the_call(carrier: Carrier) -> None:
    call = await carrier.call(FRONT)
    await carrier.answer(call, "ana")
    await carrier.caller_status(call, "completed")
    before = _kinds(carrier, call)
    await carrier.caller_status(call, "ringing")
    await carrier.caller_status(call, "in-progress")
    await carrier.caller_status(call, "completed")
    await carrier.leg_status(call, BEN_SIP, "ringing")
    await carrier.leg_status(call, BEN_SIP, "in-progress")
    assert _kinds(carrier, call) == before
    assert carrier.live_calls() == []
    assert not carrier.bridge.ctx.presence.presence_of("ben").on_call
    assert carrier.sample("bridge_calls_total", path="carrier", outcome="answered") == 1


async def test_callbacks_for_an_unknown_call_create_nothing(carrier: Carrier) -> None:
    ghost = CarrierCall("CA" + "e" * 32, FRONT, "+14155550001", element("<Response/>"))
    await carrier.caller_status(ghost, "ringing")
    await carrier.caller_status(ghost, "completed")
    response = await carrier.post(
        f"/twilio/dial-action?call={ghost.sid}&dial=1",
        {"CallSid": ghost.sid, "DialCallStatus": "no-answer"},
    )
    assert response.status_code == 200 and verbs(element(response.text)) == ["Hangup"]
    assert carrier.live_calls() == []
    assert carrier.bridge.ctx.carrier is not None
    assert carrier.bridge.ctx.carrier.find(ghost.sid) is None


async def test_a_voice_retry_after_the_end_starts_nothing(carrier: Carrier) -> None:
    call = await carrier.call(FRONT)
    await carrier.caller_status(call, "completed")
    again = await carrier.twiml(
        "/twilio/voice", {"CallSid": call.sid, "From": call.caller, "To": FRONT}
    )
    assert again.find("Dial") is not None  # the same first answer, replayed
    assert carrier.live_calls() == []
    assert carrier.sample("bridge_route_decisions_total", result="ring") == 1
    assert _kinds(carrier, call).count("CallEnded") == 1


async def test_status_with_sequence_numbers_out_of_order(carrier: Carrier) -> None:
    call = await carrier.call(FRONT)
    await carrier.leg_status(call, "ana", "in-progress", sequence=2)
    await carrier.leg_status(call, "ana", "ringing", sequence=1)
    await carrier.leg_status(call, "ana", "initiated", sequence=0)
    kinds = _kinds(carrier, call)
    assert kinds.count(CallAnswered.__name__) == 1
    assert "LegRinging" not in kinds and CallEnded.__name__ not in kinds
    assert carrier.live_calls()[0]["answered_by"] == "ana"
