"""`GET /api/v1/voice-token`: an AccessToken with a VoiceGrant for the caller's apps, checked by
decoding it with PyJWT as the carrier would (HS256 with the API key's secret)."""

from __future__ import annotations

from collections.abc import Callable

import jwt
import pytest

from tests.conftest import Bridge

ACCOUNT = "AC" + "a" * 32
KEY_SID = "SK" + "b" * 32
KEY_SECRET = "voice-token-test-secret-0123456789abcdef"
APP_SID = "AP" + "c" * 32


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_TWILIO__ACCOUNT_SID", ACCOUNT)
    monkeypatch.setenv("BRIDGE_TWILIO__API_KEY_SID", KEY_SID)
    monkeypatch.setenv("BRIDGE_TWILIO__API_KEY_SECRET", KEY_SECRET)
    monkeypatch.setenv("BRIDGE_TWILIO__TWIML_APP_SID", APP_SID)
    monkeypatch.setenv("BRIDGE_TWILIO__VOICE_TOKEN_TTL_SECONDS", "900")


def test_the_token_grants_incoming_and_outgoing_voice_to_the_user(
    make_bridge: Callable[..., Bridge], configured: None
) -> None:
    bridge = make_bridge()
    response = bridge.as_user("alice", "GET", "/api/v1/voice-token")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["identity"] == "alice" and body["expires_in"] == 900
    token = body["token"]
    assert jwt.get_unverified_header(token) == {
        "alg": "HS256",
        "cty": "twilio-fpa;v=1",
        "typ": "JWT",
    }
    claims = jwt.decode(token, KEY_SECRET, algorithms=["HS256"])
    assert claims["iss"] == KEY_SID and claims["sub"] == ACCOUNT
    assert claims["exp"] - claims["nbf"] == 900
    assert claims["grants"] == {
        "identity": "alice",
        "voice": {"incoming": {"allow": True}, "outgoing": {"application_sid": APP_SID}},
    }
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-of-enough-length-000000", algorithms=["HS256"])


def test_a_supervisor_who_monitors_gets_one_a_reporter_does_not(
    make_bridge: Callable[..., Bridge], configured: None
) -> None:
    bridge = make_bridge()
    users = {u.id: u for u in bridge.ctx.store.current.users}
    reporter = next(u for u in users.values() if u.role.value == "reporter")
    supervisor = next(u for u in users.values() if u.role.value == "supervisor")
    assert bridge.as_user(supervisor.id, "GET", "/api/v1/voice-token").status_code == 200
    refused = bridge.as_user(reporter.id, "GET", "/api/v1/voice-token")
    assert refused.status_code == 403
    assert refused.json()["detail"] == (
        "role 'reporter' may not receive calls: a voice token would have no use"
    )
    assert bridge.client.get("/api/v1/voice-token").status_code == 401


def test_not_configured_is_503_naming_what_is_missing(
    make_bridge: Callable[..., Bridge], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_TWILIO__ACCOUNT_SID", ACCOUNT)
    monkeypatch.setenv("BRIDGE_TWILIO__API_KEY_SID", KEY_SID)
    response = make_bridge().as_user("alice", "GET", "/api/v1/voice-token")
    assert response.status_code == 503
    assert response.json()["detail"] == (
        "voice tokens are not configured: set [twilio] api_key_secret, [twilio] twiml_app_sid"
    )
