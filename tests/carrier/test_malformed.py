"""Malformed webhooks get 400 naming the field, and change nothing."""

from __future__ import annotations

import pytest

from tests.carrier.helpers import ACCOUNT_SID, FRONT, PUBLIC_URL, Carrier, sid


async def _refused(carrier: Carrier, path: str, params: dict[str, str]) -> str:
    response = await carrier.post(path, params)
    assert response.status_code == 400, response.text
    return str(response.json()["detail"])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"From": "+14155550001", "To": FRONT}, "CallSid"),
        ({"CallSid": "CA1", "From": "+14155550001"}, "To"),
        ({"CallSid": "CA<script>", "To": FRONT}, "CallSid"),
        ({"CallSid": "CA1", "To": FRONT, "AccountSid": "AC 1"}, "AccountSid"),
    ],
)
async def test_voice_names_the_missing_or_invalid_field(
    carrier: Carrier, params: dict[str, str], field: str
) -> None:
    assert field in await _refused(carrier, "/twilio/voice", params)
    assert len(carrier.bridge.ctx.calls) == 0


async def test_status_needs_a_known_call_status(carrier: Carrier) -> None:
    detail = await _refused(carrier, "/twilio/status", {"CallSid": sid(), "CallStatus": "melted"})
    assert "CallStatus" in detail
    assert "CallStatus" in await _refused(carrier, "/twilio/status", {"CallSid": sid()})


@pytest.mark.parametrize("number", ["\u00b2", "12x", "1234567890"])
async def test_a_number_field_that_is_not_one_is_400(carrier: Carrier, number: str) -> None:
    """ "²" passes str.isdigit and int() refuses it: it was a 500."""
    call = await carrier.call(FRONT)
    params = {"CallSid": call.sid, "CallStatus": "ringing", "SequenceNumber": number}
    assert "SequenceNumber" in await _refused(carrier, "/twilio/status", params)


async def test_dial_action_needs_its_dial_and_status(carrier: Carrier) -> None:
    call = await carrier.call(FRONT)
    params = {"CallSid": call.sid, "DialCallStatus": "no-answer"}
    assert "dial" in await _refused(carrier, f"/twilio/dial-action?call={call.sid}", params)
    action = call.dial.get("action", "")
    assert "DialCallStatus" in await _refused(carrier, action, {"CallSid": call.sid})
    bogus = {"CallSid": call.sid, "DialCallStatus": "exploded"}
    assert "DialCallStatus" in await _refused(carrier, action, bogus)
    other = {"CallSid": sid(), "DialCallStatus": "no-answer"}
    assert "call" in await _refused(carrier, action, other)
    # The call is still ringing its first layer.
    assert carrier.live_calls()[0]["ringing"] == ["ana", "ben", "cid"]


async def test_a_body_that_is_not_a_form_is_400(carrier: Carrier) -> None:
    url = PUBLIC_URL + "/twilio/voice"
    response = await carrier.client.post(
        "/twilio/voice",
        content=b'{"CallSid": "CA1"}',
        headers={
            "Content-Type": "application/json",
            "X-Twilio-Signature": carrier.signer.compute_signature(url, {}),
        },
    )
    assert response.status_code == 400
    assert "x-www-form-urlencoded" in response.json()["detail"]
    response = await carrier.client.post(
        "/twilio/voice",
        content=b"CallSid=%FF%FE",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert "UTF-8" in response.json()["detail"]


async def test_an_oversized_body_is_refused(carrier: Carrier) -> None:
    params = {"CallSid": sid(), "To": FRONT, "AccountSid": ACCOUNT_SID, "Pad": "x" * 70_000}
    response = await carrier.post("/twilio/voice", params)
    assert response.status_code == 413
    assert len(carrier.bridge.ctx.calls) == 0
