"""Signed webhooks over HTTP: 403 for a missing or wrong signature, 503 when not configured."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.carrier.helpers import ACCOUNT_SID, FRONT, PUBLIC_URL, Carrier, sid


def _voice(call_sid: str | None = None, **extra: str) -> dict[str, str]:
    return {
        "CallSid": call_sid or sid(),
        "AccountSid": ACCOUNT_SID,
        "From": "+14155550001",
        "To": FRONT,
        **extra,
    }


async def test_missing_signature_is_403_and_logged(carrier: Carrier) -> None:
    params = _voice()
    with capture_logs() as logs:
        response = await carrier.post("/twilio/voice", params, signature=None)
    assert response.status_code == 403
    assert "missing X-Twilio-Signature" in response.json()["detail"]
    refused = [e for e in logs if e["event"] == "twilio_webhook_refused"]
    assert refused and refused[0]["call_sid"] == params["CallSid"]
    assert refused[0]["endpoint"] == "voice" and refused[0]["status"] == 403
    assert len(carrier.bridge.ctx.calls) == 0
    assert carrier.sample("bridge_webhook_requests_total", endpoint="voice", status="403") == 1


async def test_wrong_signature_is_403(carrier: Carrier) -> None:
    response = await carrier.post("/twilio/voice", _voice(), signature="bm90IGEgc2lnbmF0dXJl")
    assert response.status_code == 403
    assert "does not match" in response.json()["detail"]
    assert len(carrier.bridge.ctx.calls) == 0


async def test_a_tampered_parameter_breaks_the_signature(carrier: Carrier) -> None:
    params = _voice()
    signature = carrier.signer.compute_signature(PUBLIC_URL + "/twilio/voice", params)
    response = await carrier.post(
        "/twilio/voice", {**params, "To": "+15550101"}, signature=signature
    )
    assert response.status_code == 403


async def test_the_signature_covers_the_public_url_not_the_address_used(carrier: Carrier) -> None:
    params = _voice()
    # Signed for the address the test client connects to, not [http] public_url.
    signature = carrier.signer.compute_signature("http://bridge.internal/twilio/voice", params)
    response = await carrier.post("/twilio/voice", params, signature=signature)
    assert response.status_code == 403
    assert PUBLIC_URL + "/twilio/voice" in response.json()["detail"]


async def test_the_signature_covers_the_query(carrier: Carrier) -> None:
    call = await carrier.call(FRONT)
    action = call.dial.get("action", "")
    params = {"CallSid": call.sid, "DialCallStatus": "no-answer", "CallStatus": "in-progress"}
    signature = carrier.signer.compute_signature(action, params)
    forged = action.replace("dial=1", "dial=2")
    response = await carrier.post(forged, params, signature=signature)
    assert response.status_code == 403


async def test_a_signature_for_another_endpoint_is_refused(carrier: Carrier) -> None:
    params = {"CallSid": sid(), "CallStatus": "completed"}
    signature = carrier.signer.compute_signature(PUBLIC_URL + "/twilio/status", params)
    response = await carrier.post("/twilio/voice", params, signature=signature)
    assert response.status_code == 403


async def test_hmac_sha256_when_the_settings_header_says_so(carrier: Carrier) -> None:
    params = _voice()
    url = PUBLIC_URL + "/twilio/voice"
    signature = carrier.signer.compute_signature(url, params, "HMAC_SHA256")
    header = {"X-Twilio-Webhooks-Signature-Settings": "key=k1,algorithm=HMAC_SHA256"}
    response = await carrier.post(url, params, signature=signature, headers=header)
    assert response.status_code == 200, response.text
    refused = await carrier.post(url, _voice(), signature=signature, headers=header)
    assert refused.status_code == 403


async def test_another_account_is_refused(carrier: Carrier) -> None:
    response = await carrier.post("/twilio/voice", _voice(AccountSid="AC" + "f" * 32))
    assert response.status_code == 403
    assert "not this account" in response.json()["detail"]
    assert len(carrier.bridge.ctx.calls) == 0


async def test_not_configured_is_503_for_every_endpoint(unconfigured: Carrier) -> None:
    for path in (
        "/twilio/voice",
        "/twilio/status",
        "/twilio/dial-action",
        "/twilio/confirm",
        "/twilio/voicemail",
        "/twilio/recording",
    ):
        response = await unconfigured.client.post(path, data=_voice())
        assert response.status_code == 503, path
        assert "auth_token" in response.json()["detail"]
    assert len(unconfigured.bridge.ctx.calls) == 0
    sample = unconfigured.sample("bridge_webhook_requests_total", endpoint="voice", status="503")
    assert sample == 1


async def test_conference_mode_needs_the_rest_api(
    make_bridge: Any, carrier_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_TWILIO__MODE", "conference")
    assert make_bridge().ctx.carrier.refusal() is None  # account sid + auth token: REST works

    monkeypatch.delenv("BRIDGE_TWILIO__ACCOUNT_SID")
    refusal = make_bridge().ctx.carrier.refusal()
    assert refusal is not None and refusal.status == 503
    assert "conference" in refusal.reason and "account_sid" in refusal.reason
