"""The carrier path remembers ended calls so that retried and late callbacks change nothing,
but only the last `ENDED_CALLS_KEPT` of them (README, "State and retries": the last 10 000), so
a long-running bridge does not grow without bound.

The bound is made small here (monkeypatched where the carrier service reads it) so that the
oldest call is forgotten after three calls instead of ten thousand and one.
"""

from __future__ import annotations

import pytest

import bridge.carriers.twilio.service as carrier_service
from tests.carrier.helpers import ACCOUNT_SID, FRONT, Carrier, CarrierCall, nouns, verbs

KEPT = 2


def test_the_documented_bound() -> None:
    assert carrier_service.ENDED_CALLS_KEPT == 10_000


def routed(carrier: Carrier) -> float:
    return carrier.sample("bridge_route_decisions_total", result="ring")


async def retry_voice(carrier: Carrier, call: CarrierCall) -> list[tuple[str, str]]:
    """The carrier retries the call's voice webhook; the nouns of the <Dial> it gets."""
    root = await carrier.twiml(
        "/twilio/voice",
        {"CallSid": call.sid, "AccountSid": ACCOUNT_SID, "From": call.caller, "To": FRONT},
    )
    dial = root.find("Dial")
    assert dial is not None, verbs(root)
    return nouns(dial)


async def test_only_the_last_ended_calls_are_remembered(
    carrier: Carrier, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(carrier_service, "ENDED_CALLS_KEPT", KEPT)
    calls = []
    for _ in range(KEPT + 1):
        call = await carrier.call(FRONT)
        await carrier.caller_status(call, "completed")
        calls.append(call)
    oldest, *kept = calls
    assert carrier.live_calls() == []
    assert routed(carrier) == KEPT + 1

    # The last KEPT ended calls are remembered: a retried voice webhook gets the first
    # answer again and starts nothing.
    for call in kept:
        assert await retry_voice(carrier, call) == nouns(call.dial)
    assert carrier.live_calls() == []
    assert routed(carrier) == KEPT + 1

    # The oldest is forgotten. Its late callbacks still create nothing: no callback but the
    # voice webhook creates a call.
    await carrier.caller_status(oldest, "ringing")
    await carrier.leg_status(oldest, "ana", "in-progress")
    await carrier.caller_status(oldest, "completed")
    action = await carrier.post(
        oldest.dial.get("action", ""),
        {"CallSid": oldest.sid, "AccountSid": ACCOUNT_SID, "DialCallStatus": "no-answer"},
    )
    assert action.status_code == 200
    assert carrier.live_calls() == []
    assert routed(carrier) == KEPT + 1
    assert carrier.sample("bridge_calls_total", path="carrier", outcome="caller_cancelled") == (
        KEPT + 1
    )
    # ... but a voice webhook for it is a call the bridge no longer knows: routed anew.
    await retry_voice(carrier, oldest)
    assert [c["call_id"] for c in carrier.live_calls()] == [oldest.sid]
    assert routed(carrier) == KEPT + 2
