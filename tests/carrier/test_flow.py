"""A carrier call through its webhooks: layers, fallbacks, answer, hang-up, the call record,
presence and metrics."""

from __future__ import annotations

from datetime import timedelta

from bridge.calls.events import CallAnswered, CallEnded, CallEventRecord, CallRinging, LegRinging
from bridge.carriers.twilio.events import VoicemailRecorded
from bridge.presence.model import Channel
from tests.carrier.helpers import (
    ACCOUNT_SID,
    BEN_SIP,
    CHAIN,
    FORWARD,
    FRONT,
    HANGUP,
    PUBLIC_URL,
    TURNS,
    Carrier,
    CarrierCall,
    nouns,
    query_of,
    verbs,
)


def _events(carrier: Carrier, call: CarrierCall) -> list[CallEventRecord]:
    assert carrier.bridge.ctx.carrier is not None
    found = carrier.bridge.ctx.carrier.find(call.sid)
    assert found is not None
    return found.events


def _of(carrier: Carrier, call: CarrierCall, kind: type) -> list:
    return [e.event for e in _events(carrier, call) if isinstance(e.event, kind)]


async def test_layer_timeout_rings_the_next_layer(carrier: Carrier) -> None:
    call = await carrier.call(FRONT)
    root = await carrier.dial_ended(call, "no-answer")
    assert verbs(root) == ["Dial"]
    assert nouns(call.dial) == [("Client", "eve")]
    assert call.dial.get("timeout") == "15"
    assert query_of(call.dial.get("action", "")) == {
        "call": call.sid,
        "dial": "2",
        "layer": "1",
        "depth": "0",
    }
    assert carrier.live_calls()[0]["ringing"] == ["eve"]
    rings = _of(carrier, call, CallRinging)
    assert [(r.layer_index, r.user_ids) for r in rings] == [
        (0, ("ana", "ben", "cid")),
        (1, ("eve",)),
    ]


async def test_busy_moves_on_too(carrier: Carrier) -> None:
    call = await carrier.call(FRONT)
    await carrier.dial_ended(call, "busy")
    assert nouns(call.dial) == [("Client", "eve")]
    await carrier.dial_ended(call, "failed")
    assert verbs(call.twiml) == ["Say", "Record", "Hangup"]


async def test_all_layers_missed_voicemail(carrier: Carrier) -> None:
    call = await carrier.call(FRONT)
    await carrier.dial_ended(call, "no-answer")
    root = await carrier.dial_ended(call, "no-answer")
    assert verbs(root) == ["Say", "Record", "Hangup"]
    assert root[0].text == "Front desk is busy. Leave a message."
    assert carrier.live_calls()[0]["state"] == "voicemail"
    # The <Record> action and the recording status callback.
    done = await carrier.twiml(
        root[1].get("action", ""),
        {"CallSid": call.sid, "RecordingSid": "RE1", "RecordingDuration": "7"},
    )
    assert verbs(done) == ["Hangup"]
    await carrier.caller_status(call, "completed")
    recording = {
        "CallSid": call.sid,
        "AccountSid": ACCOUNT_SID,
        "RecordingSid": "RE1",
        "RecordingStatus": "completed",
        "RecordingUrl": "https://api.example.com/Recordings/RE1",
        "RecordingDuration": "7",
    }
    for _ in range(2):  # retried: one event
        response = await carrier.post(root[1].get("recordingStatusCallback", ""), recording)
        assert response.status_code == 204
    (recorded,) = _of(carrier, call, VoicemailRecorded)
    assert recorded.recording_sid == "RE1" and recorded.duration_seconds == 7
    # listed with the SIP path's messages (once, though the callback came twice)
    archive = carrier.bridge.ctx.archive
    assert archive is not None
    (message,) = [vm for vm in archive.voicemails() if vm.call_id == call.sid]
    assert (message.source, message.recording_sid) == ("carrier", "RE1")
    assert message.duration_seconds == 7
    assert message.remote_url == "https://api.example.com/Recordings/RE1"
    assert message.line is not None and (message.group_id or message.user_id)
    assert message.to_json()["audio_url"].endswith(f"/voicemails/{message.id}/audio")
    (ended,) = _of(carrier, call, CallEnded)
    assert (ended.cause.value, ended.outcome.value) == ("caller_hangup", "voicemail")
    assert carrier.sample("bridge_calls_total", path="carrier", outcome="voicemail") == 1


async def test_all_layers_missed_forward_to_the_backup_number(carrier: Carrier) -> None:
    call = await carrier.call(FORWARD)
    assert nouns(call.dial) == [("Client", "ana")]
    root = await carrier.dial_ended(call, "no-answer")
    assert verbs(root) == ["Say", "Dial"]
    assert root[0].text == "Forwarding you now."
    assert nouns(call.dial) == [("Number", "+15550009000")]
    assert call.dial.get("timeout") == "60"
    assert call.dial.get("callerId") == call.caller
    # The forward is answered, talks, and the callee hangs up.
    await carrier.answer(call, "+15550009000")
    (answered,) = _of(carrier, call, CallAnswered)
    assert answered.user_id is None and answered.via is Channel.PHONE_NUMBER
    root = await carrier.dial_ended(call, "completed")
    assert verbs(root) == ["Hangup"]
    assert carrier.sample("bridge_calls_total", path="carrier", outcome="forwarded") == 1


async def test_a_forward_nobody_answers_ends_the_call(carrier: Carrier) -> None:
    call = await carrier.call(FORWARD)
    await carrier.dial_ended(call, "no-answer")
    root = await carrier.dial_ended(call, "no-answer")
    assert verbs(root) == ["Hangup"]
    assert carrier.live_calls() == []
    assert carrier.sample("bridge_calls_total", path="carrier", outcome="no_answer_fallback") == 1


async def test_all_layers_missed_another_ring_group_then_its_fallback(carrier: Carrier) -> None:
    call = await carrier.call(CHAIN)
    root = await carrier.dial_ended(call, "no-answer")
    assert verbs(root) == ["Say", "Dial"]
    assert root[0].text == "Trying the back office."
    assert nouns(call.dial) == [("Client", "eve")]
    assert call.dial.get("timeout") == "12"
    assert query_of(call.dial.get("action", ""))["depth"] == "1"
    root = await carrier.dial_ended(call, "no-answer")
    assert verbs(root) == ["Say", "Hangup"]
    assert root[0].text == "Nobody is here. Goodbye."
    assert carrier.sample("bridge_calls_total", path="carrier", outcome="hangup") == 1


async def test_all_layers_missed_hangup(carrier: Carrier) -> None:
    call = await carrier.call(HANGUP)
    root = await carrier.dial_ended(call, "no-answer")
    assert verbs(root) == ["Say", "Hangup"]
    assert root[0].text == "Sorry, we missed you."
    assert carrier.live_calls() == []


async def test_one_at_a_time_rings_each_member_for_their_turn(carrier: Carrier) -> None:
    call = await carrier.call(TURNS)
    first = nouns(call.dial)
    assert len(first) == 1 and call.dial.get("timeout") == "10"
    await carrier.dial_ended(call, "no-answer")
    second = nouns(call.dial)
    assert len(second) == 1 and second != first and call.dial.get("timeout") == "10"
    assert query_of(call.dial.get("action", ""))["layer"] == "0"
    root = await carrier.dial_ended(call, "no-answer")
    assert verbs(root) == ["Hangup"]


async def test_answered_call_record_presence_and_end(carrier: Carrier) -> None:
    bridge = carrier.bridge
    call = await carrier.call(FRONT)
    await carrier.leg_status(call, "ana", "initiated")
    await carrier.leg_status(call, "ana", "ringing")
    await carrier.leg_status(call, BEN_SIP, "ringing")
    await carrier.leg_status(call, "ana", "in-progress")
    (listed,) = carrier.live_calls()
    assert listed["state"] == "answered" and listed["answered_by"] == "ana"
    assert listed["ringing"] == []
    assert bridge.ctx.presence.presence_of("ana").on_call
    # Ana can see her own call, Eve (not involved) cannot.
    assert [c["call_id"] for c in carrier.live_calls("ana")] == [call.sid]
    (answered,) = _of(carrier, call, CallAnswered)
    assert answered.user_id == "ana" and answered.via is Channel.APPS
    assert answered.leg_id == call.leg_of("ana")
    answered_record = next(e for e in _events(carrier, call) if e.event is answered)
    assert answered_record.leg_ref == call.leg_sids[call.leg_of("ana")]
    assert {e.user_id for e in _of(carrier, call, LegRinging)} == {"ana", "ben"}
    # Ana hangs up: the carrier asks the Dial's action with the caller still there.
    root = await carrier.dial_ended(call, "completed", dial_call_sid=call.leg_sids[answered.leg_id])
    assert verbs(root) == ["Hangup"]
    assert carrier.live_calls() == []
    state = bridge.ctx.presence.presence_of("ana")
    assert not state.on_call
    assert state.wrap_up_until == bridge.clock.now + timedelta(seconds=30)
    (ended,) = _of(carrier, call, CallEnded)
    assert (ended.cause.value, ended.outcome.value) == ("callee_hangup", "answered")
    assert carrier.sample("bridge_calls_total", path="carrier", outcome="answered") == 1
    assert carrier.sample("bridge_live_calls") == 0


async def test_the_caller_hangs_up_an_answered_call(carrier: Carrier) -> None:
    call = await carrier.call(FRONT)
    await carrier.answer(call, BEN_SIP)
    assert carrier.live_calls()[0]["answered_by"] == "ben"
    await carrier.caller_status(call, "completed")
    assert carrier.live_calls() == []
    # The Dial's action still comes, afterwards: it changes nothing.
    root = await carrier.dial_ended(call, "completed", call_status="completed")
    assert verbs(root) == ["Hangup"]
    (ended,) = _of(carrier, call, CallEnded)
    assert (ended.cause.value, ended.outcome.value) == ("caller_hangup", "answered")
    assert carrier.sample("bridge_calls_total", path="carrier", outcome="answered") == 1


async def test_the_caller_hangs_up_while_it_rings(carrier: Carrier) -> None:
    call = await carrier.call(FRONT)
    root = await carrier.dial_ended(call, "canceled", call_status="completed")
    assert verbs(root) == ["Hangup"]
    assert carrier.live_calls() == []
    (ended,) = _of(carrier, call, CallEnded)
    assert ended.outcome.value == "caller_cancelled"
    await carrier.caller_status(call, "completed")  # the final status callback: nothing new
    assert len(_of(carrier, call, CallEnded)) == 1


async def test_the_answer_is_known_from_the_dial_action_alone(carrier: Carrier) -> None:
    """No in-progress callback came (lost or late): the DialCallSid names the leg."""
    call = await carrier.call(FRONT)
    await carrier.leg_status(call, "+15550003001", "ringing")
    leg_sid = call.leg_sids[call.leg_of("+15550003001")]
    await carrier.dial_ended(call, "completed", dial_call_sid=leg_sid)
    (answered,) = _of(carrier, call, CallAnswered)
    assert answered.user_id == "cid" and answered.via is Channel.PHONE_NUMBER
    assert carrier.live_calls() == []
    assert carrier.sample("bridge_calls_total", path="carrier", outcome="answered") == 1
    assert carrier.bridge.ctx.presence.presence_of("cid").last_call_ended_at is not None


async def test_the_call_events_reach_subscribers(carrier: Carrier) -> None:
    seen: list[CallEventRecord] = []
    assert carrier.bridge.ctx.runner is not None
    carrier.bridge.ctx.runner.subscribe(seen.append)
    call = await carrier.call(FRONT)
    await carrier.answer(call, "ana")
    await carrier.caller_status(call, "completed")
    kinds = [type(e.event).__name__ for e in seen]
    assert kinds == ["CallRinging", "LegRinging", "CallAnswered", "CallEnded"]
    assert {e.call_id for e in seen} == {call.sid}
    assert {e.path for e in seen} == {"carrier"}


async def test_webhook_metrics(carrier: Carrier) -> None:
    call = await carrier.call(FRONT)
    await carrier.leg_status(call, "ana", "ringing")
    await carrier.dial_ended(call, "no-answer")
    await carrier.post("/twilio/voice", {"CallSid": call.sid, "To": FRONT}, signature="bad")
    sample = carrier.sample
    assert sample("bridge_webhook_requests_total", endpoint="voice", status="200") == 1
    assert sample("bridge_webhook_requests_total", endpoint="voice", status="403") == 1
    assert sample("bridge_webhook_requests_total", endpoint="status", status="204") == 1
    assert sample("bridge_webhook_requests_total", endpoint="dial-action", status="200") == 1
    assert sample("bridge_webhook_seconds_count", endpoint="voice") == 2
    assert sample("bridge_webhook_seconds_count", endpoint="dial-action") == 1
    assert sample("bridge_route_decisions_total", result="ring") == 1
    text = (await carrier.client.get("/metrics")).text
    assert "bridge_carrier_api_errors_total" in text
    assert PUBLIC_URL not in text
