"""Voice webhook -> the routing plan for the dialled line -> TwiML (dial mode)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from bridge.presence.model import Availability, Channel
from tests.carrier.conftest import DIRECTORY, client_for
from tests.carrier.helpers import (
    ACCOUNT_SID,
    CLOSED,
    CLOSED_FORWARD,
    CLOSED_HANGUP,
    CONFIRMED,
    DIRECT,
    FORWARD,
    FRONT,
    PUBLIC_URL,
    Carrier,
    nouns,
    query_of,
    sid,
    verbs,
)
from tests.conftest import Bridge

LEG_EVENTS = "initiated ringing answered completed"


async def test_one_dial_for_the_first_layer_with_a_noun_per_member_kind(carrier: Carrier) -> None:
    call = await carrier.call(FRONT, caller="+14155550001")
    assert verbs(call.twiml) == ["Dial"]
    dial = call.dial
    assert dial.get("timeout") == "20"
    assert dial.get("answerOnBridge") == "true"
    assert dial.get("callerId") == "+14155550001"
    action = dial.get("action", "")
    assert action.startswith(PUBLIC_URL + "/twilio/dial-action?")
    assert query_of(action) == {"call": call.sid, "dial": "1", "layer": "0", "depth": "0"}
    assert nouns(dial) == [
        ("Client", "ana"),
        ("Sip", "sip:201@127.0.0.1:5060"),  # the bridge's [sip] address; ben's SIP username
        ("Number", "+15550003001"),
    ]
    legs = set()
    for noun in dial:
        callback = noun.get("statusCallback", "")
        assert callback.startswith(PUBLIC_URL + "/twilio/status?")
        assert query_of(callback)["call"] == call.sid
        legs.add(query_of(callback)["leg"])
        assert noun.get("statusCallbackEvent") == LEG_EVENTS
        assert noun.get("url") is None  # no confirmation on this line
    assert len(legs) == 3


async def test_the_call_is_listed_while_it_rings(carrier: Carrier) -> None:
    call = await carrier.call(FRONT)
    (listed,) = carrier.live_calls()
    assert listed["call_id"] == call.sid
    assert listed["path"] == "carrier"
    assert listed["line"] == FRONT
    assert listed["caller"] == "+14155550001"
    assert listed["state"] == "ringing"
    assert listed["ringing"] == ["ana", "ben", "cid"]
    assert carrier.sample("bridge_live_calls") == 1


async def test_a_number_without_plus_finds_the_line(carrier: Carrier) -> None:
    call = await carrier.call(FRONT.removeprefix("+"))
    assert verbs(call.twiml) == ["Dial"]
    assert carrier.live_calls()[0]["line"] == FRONT


async def test_the_sip_target_setting_replaces_the_sip_listener_address(
    make_bridge: Callable[..., Bridge],
    carrier_settings: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BRIDGE_TWILIO__SIP_TARGET", "sip.example.com:5070")
    bridge = make_bridge(directory=DIRECTORY)
    bridge.ctx.presence.endpoint_up("ben", Channel.IP_PHONE)
    async with client_for(bridge) as client:
        call = await Carrier(bridge, client).call(FRONT)
    assert nouns(call.dial) == [("Sip", "sip:201@sip.example.com:5070"), ("Number", "+15550003001")]


@pytest.mark.parametrize("caller", ["anonymous", "client:a\x0bb", "client:\x01", "client:"])
async def test_a_caller_that_is_no_caller_id_gets_none(carrier: Carrier, caller: str) -> None:
    """(A client identity with a control character went into the callerId attribute: the
    TwiML was no longer XML the carrier could read.)"""
    call = await carrier.call(FRONT, caller=caller)
    assert call.dial.get("callerId") is None


async def test_a_client_identity_is_the_caller_id(carrier: Carrier) -> None:
    call = await carrier.call(FRONT, caller="client:alice.doe_1")
    assert call.dial.get("callerId") == "client:alice.doe_1"


def test_what_xml_cannot_carry_never_reaches_the_carrier() -> None:
    """Whatever text lets such a character in (the directory refuses them in names and
    prompts now), the document we answer is XML."""
    import xml.etree.ElementTree as ElementTree

    from twilio.twiml.voice_response import VoiceResponse

    from bridge.carriers.twilio.twiml import render

    response = VoiceResponse()
    response.say("We are\x0c closed\x00.\ufffe")
    [say] = ElementTree.fromstring(render(response).encode())
    assert say.text == "We are closed."


async def test_unknown_line_is_told_politely_and_logged(carrier: Carrier) -> None:
    with capture_logs() as logs:
        call = await carrier.call("+15559999999")
    assert verbs(call.twiml) == ["Say", "Hangup"]
    assert "not in service" in (call.twiml[0].text or "")
    assert any(e["event"] == "carrier_call_no_route" for e in logs)
    assert carrier.live_calls() == []
    assert carrier.sample("bridge_calls_total", path="carrier", outcome="no_route") == 1


async def test_closed_line_voicemail(carrier: Carrier) -> None:
    call = await carrier.call(CLOSED)
    assert verbs(call.twiml) == ["Say", "Record", "Hangup"]
    assert call.twiml[0].text == "We are closed."
    record = call.twiml[1]
    assert record.get("action") == f"{PUBLIC_URL}/twilio/voicemail?call={call.sid}"
    assert record.get("recordingStatusCallback") == f"{PUBLIC_URL}/twilio/recording?call={call.sid}"
    assert record.get("playBeep") == "true" and record.get("maxLength") == "120"
    # Waiting in voicemail is still a live call, until the caller hangs up.
    assert carrier.live_calls()[0]["state"] == "voicemail"
    await carrier.caller_status(call, "completed")
    assert carrier.live_calls() == []
    assert carrier.sample("bridge_calls_total", path="carrier", outcome="closed") == 1


async def test_closed_line_hangup(carrier: Carrier) -> None:
    call = await carrier.call(CLOSED_HANGUP)
    assert verbs(call.twiml) == ["Say", "Hangup"]
    assert call.twiml[0].text == "We are closed for good."
    assert carrier.live_calls() == []
    assert carrier.sample("bridge_calls_total", path="carrier", outcome="closed") == 1


async def test_closed_line_forward(carrier: Carrier) -> None:
    call = await carrier.call(CLOSED_FORWARD)
    assert verbs(call.twiml) == ["Dial"]
    assert nouns(call.dial) == [("Number", "+15550009001")]
    assert call.dial.get("timeout") == "60"
    assert "layer" not in query_of(call.dial.get("action", ""))


async def test_nobody_can_receive_runs_the_fallback_at_once(carrier: Carrier) -> None:
    carrier.bridge.ctx.presence.set_availability("ana", Availability.BUSY)
    call = await carrier.call(FORWARD)
    assert verbs(call.twiml) == ["Say", "Dial"]
    assert call.twiml[0].text == "Forwarding you now."
    assert nouns(call.dial) == [("Number", "+15550009000")]


async def test_confirmation_is_asked_of_a_user_who_wants_it(carrier: Carrier) -> None:
    call = await carrier.call(DIRECT)
    (noun,) = call.dial
    assert (noun.tag, noun.text) == ("Number", "+15550004001")
    assert noun.get("url", "").startswith(PUBLIC_URL + "/twilio/confirm?")
    assert query_of(noun.get("url", ""))["call"] == call.sid
    assert call.dial.get("timeout") == "30"  # dee's ring_seconds


async def test_confirmation_is_asked_on_every_number_leg_of_a_line_that_wants_it(
    carrier: Carrier,
) -> None:
    call = await carrier.call(CONFIRMED)
    assert call.noun("+15550003001").get("url", "").startswith(PUBLIC_URL + "/twilio/confirm?")
    # Apps and desk phones answer with a person's click or handset: nothing to confirm.
    assert call.noun("ana").get("url") is None
    plain = await carrier.call(FRONT)
    assert plain.noun("+15550003001").get("url") is None


async def test_draining_refuses_new_calls_without_answering(carrier: Carrier) -> None:
    carrier.bridge.ctx.calls.stop_accepting()
    call = await carrier.call(FRONT)
    assert verbs(call.twiml) == ["Reject"]
    assert call.twiml[0].get("reason") == "busy"
    assert carrier.live_calls() == []


async def test_an_overloaded_bridge_sheds_new_calls_to_the_carriers_fallback_url(
    carrier: Carrier,
) -> None:
    """503 + Retry-After (bridge.sip.overload said no): the carrier fetches the number's
    fallback URL; no call is started, and a retried webhook of a call already taken is not
    refused (it gets its answer again)."""
    taken = await carrier.call(FRONT)
    service = carrier.bridge.ctx.carrier
    assert service is not None
    asked: list[int] = []
    service.gate = lambda: asked.append(1) or ("load", 6)  # type: ignore[func-returns-value]
    params = {
        "CallSid": sid(),
        "AccountSid": ACCOUNT_SID,
        "From": "+14155550001",
        "To": FRONT,
        "CallStatus": "ringing",
        "Direction": "inbound",
    }
    response = await carrier.post("/twilio/voice", params)
    assert response.status_code == 503 and response.headers["Retry-After"] == "6"
    assert "overloaded (load)" in response.json()["detail"]
    assert service.find(params["CallSid"]) is None and service.find(taken.sid) is not None
    retried = {**params, "CallSid": taken.sid}
    again = await carrier.post("/twilio/voice", retried)
    assert again.status_code == 200  # a call it has is never shed
    service.gate = lambda: None
    assert (await carrier.post("/twilio/voice", params)).status_code == 200
