"""Press 1: a forwarded leg with confirm_answer is answered only by the key press."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from bridge.calls.events import CallAnswered
from bridge.carriers.twilio.events import LegDeclined
from bridge.presence.model import Channel
from tests.carrier.helpers import (
    ACCOUNT_SID,
    CONFIRMED,
    DIRECT,
    PUBLIC_URL,
    Carrier,
    CarrierCall,
    nouns,
    query_of,
    verbs,
)

DEE = "+15550004001"


def _events(carrier: Carrier, call: CarrierCall, kind: type) -> list:
    assert carrier.bridge.ctx.carrier is not None
    found = carrier.bridge.ctx.carrier.find(call.sid)
    assert found is not None
    return [e.event for e in found.events if isinstance(e.event, kind)]


async def _pick_up(carrier: Carrier, call: CarrierCall, number: str) -> ET.Element:
    """The callee answers: the carrier reports it, then fetches the noun's url."""
    await carrier.leg_status(call, number, "ringing")
    await carrier.leg_status(call, number, "in-progress")
    leg_sid = call.leg_sids[call.leg_of(number)]
    return await carrier.twiml(
        call.noun(number).get("url", ""),
        {"CallSid": leg_sid, "ParentCallSid": call.sid, "AccountSid": ACCOUNT_SID},
    )


async def _press(carrier: Carrier, call: CarrierCall, gather: ET.Element, digits: str) -> str:
    leg_sid = next(iter(call.leg_sids.values()))
    response = await carrier.post(
        gather.get("action", ""),
        {"CallSid": leg_sid, "AccountSid": ACCOUNT_SID, "Digits": digits},
    )
    assert response.status_code == 200, response.text
    return response.text


async def test_picking_up_is_not_answering_yet(carrier: Carrier) -> None:
    call = await carrier.call(DIRECT)
    root = await _pick_up(carrier, call, DEE)
    assert verbs(root) == ["Gather", "Hangup"]
    gather = root[0]
    assert gather.get("numDigits") == "1"
    assert gather.get("timeout") == "5"
    assert gather.get("actionOnEmptyResult") == "true"
    action = gather.get("action", "")
    assert action.startswith(PUBLIC_URL + "/twilio/confirm?")
    assert query_of(action)["step"] == "digits"
    assert "Press 1" in (gather.find("Say").text or "")  # type: ignore[union-attr]
    # In progress at the carrier, but nobody has answered the call.
    assert carrier.live_calls()[0]["state"] == "ringing"
    assert _events(carrier, call, CallAnswered) == []
    assert not carrier.bridge.ctx.presence.presence_of("dee").on_call


async def test_pressing_1_connects(carrier: Carrier) -> None:
    call = await carrier.call(DIRECT)
    gather = (await _pick_up(carrier, call, DEE))[0]
    text = await _press(carrier, call, gather, "1")
    assert list(ET.fromstring(text)) == []  # an empty <Response/>: the carrier bridges
    (answered,) = _events(carrier, call, CallAnswered)
    assert answered.user_id == "dee" and answered.via is Channel.PHONE_NUMBER
    assert carrier.live_calls()[0]["answered_by"] == "dee"
    assert carrier.bridge.ctx.presence.presence_of("dee").on_call
    # A retried key press replays the answer and answers nothing twice.
    assert await _press(carrier, call, gather, "1") == text
    assert len(_events(carrier, call, CallAnswered)) == 1
    root = await carrier.dial_ended(
        call, "completed", dial_call_sid=call.leg_sids[call.leg_of(DEE)]
    )
    assert verbs(root) == ["Hangup"]
    assert carrier.sample("bridge_calls_total", path="carrier", outcome="answered") == 1


async def test_no_key_hangs_up_the_leg_and_the_plan_moves_on(carrier: Carrier) -> None:
    call = await carrier.call(DIRECT)
    gather = (await _pick_up(carrier, call, DEE))[0]
    text = await _press(carrier, call, gather, "")
    assert verbs(ET.fromstring(text)) == ["Hangup"]
    (declined,) = _events(carrier, call, LegDeclined)
    assert declined.user_id == "dee" and declined.digits == ""
    assert _events(carrier, call, CallAnswered) == []
    # The carrier ends the <Dial> (the only leg hung up): dee's Backup Routing rings.
    leg_sid = call.leg_sids[call.leg_of(DEE)]
    root = await carrier.dial_ended(call, "completed", dial_call_sid=leg_sid)
    assert verbs(root) == ["Dial"]
    assert nouns(call.dial) == [("Number", "+15550004999")]
    assert call.dial[0].get("url") is None  # the line does not ask; dee's setting is dee's
    assert not carrier.bridge.ctx.presence.presence_of("dee").on_call


async def test_another_key_counts_as_no_answer_too(carrier: Carrier) -> None:
    call = await carrier.call(DIRECT)
    gather = (await _pick_up(carrier, call, DEE))[0]
    assert verbs(ET.fromstring(await _press(carrier, call, gather, "7"))) == ["Hangup"]
    root = await carrier.dial_ended(call, "no-answer")
    assert nouns(root.find("Dial")) == [("Number", "+15550004999")]  # type: ignore[arg-type]


async def test_a_line_that_asks_confirms_every_number_leg(carrier: Carrier) -> None:
    call = await carrier.call(CONFIRMED)
    await carrier.leg_status(call, "+15550003001", "in-progress")
    assert _events(carrier, call, CallAnswered) == []
    # An app user answers meanwhile and takes the call; the late key press gets hung up.
    await carrier.answer(call, "ana")
    leg_sid = call.leg_sids[call.leg_of("+15550003001")]
    url = call.noun("+15550003001").get("url", "")
    prompt = await carrier.twiml(url, {"CallSid": leg_sid, "ParentCallSid": call.sid})
    assert verbs(prompt) == ["Hangup"]
    (answered,) = _events(carrier, call, CallAnswered)
    assert answered.user_id == "ana"
