"""401s: missing, malformed, forged, expired and orphaned tokens; suspension acts at once."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from bridge.tokens import TokenService
from tests.api.helpers import API, assert_unchanged, snapshot
from tests.conftest import Bridge

ME = f"{API}/me"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_unauthorized(response: Any, detail: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {"detail": detail}
    assert response.headers["www-authenticate"] == 'Bearer realm="bridge"'


def auth_failures(bridge: Bridge, reason: str) -> float:
    value = bridge.ctx.metrics.registry.get_sample_value(
        "bridge_auth_failures_total", {"reason": reason}
    )
    return value or 0.0


def test_a_valid_token_is_accepted(bridge: Bridge) -> None:
    response = bridge.client.get(ME, headers=bearer(bridge.token("olivia")))
    assert response.status_code == 200
    assert response.json()["id"] == "olivia"
    assert response.json()["role"] == "admin"


@pytest.mark.parametrize(
    "url",
    [ME, f"{API}/users", f"{API}/lines", f"{API}/calls", f"{API}/lines/+15550100/route"],
)
def test_no_authorization_header(bridge: Bridge, url: str) -> None:
    assert_unauthorized(bridge.client.get(url), "missing bearer token")
    assert auth_failures(bridge, "missing bearer token") == 1


def test_a_refused_change_without_token_changes_nothing(bridge: Bridge) -> None:
    before = snapshot(bridge)
    response = bridge.client.post(f"{API}/users", json={"id": "zed", "name": "Zed"})
    assert_unauthorized(response, "missing bearer token")
    assert_unchanged(bridge, before)


@pytest.mark.parametrize(
    "header",
    ["Basic b2xpdmlhOnNlY3JldA==", "Token abc", "Bearer", "Bearer    ", "bearer-token"],
)
def test_wrong_scheme(bridge: Bridge, header: str) -> None:
    response = bridge.client.get(ME, headers={"Authorization": header})
    assert_unauthorized(response, "authorization must be 'Bearer <token>'")


def test_scheme_is_case_insensitive(bridge: Bridge) -> None:
    response = bridge.client.get(ME, headers={"Authorization": f"bearer {bridge.token('sam')}"})
    assert response.status_code == 200
    assert response.json()["id"] == "sam"


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.xx"])
def test_garbage_token(bridge: Bridge, token: str) -> None:
    response = bridge.client.get(ME, headers=bearer(token))
    assert response.status_code == 401
    assert response.json()["detail"].startswith("invalid token: ")
    assert auth_failures(bridge, "invalid token") == 1


def test_token_signed_with_another_secret(bridge: Bridge) -> None:
    forged = TokenService("another-secret-of-32-characters-xx").issue("olivia")
    response = bridge.client.get(ME, headers=bearer(forged))
    assert_unauthorized(response, "invalid token: Signature verification failed")


def test_unsigned_token_is_refused(bridge: Bridge) -> None:
    unsigned = jwt.encode({"sub": "olivia", "exp": int(time.time()) + 600}, None, algorithm="none")
    response = bridge.client.get(ME, headers=bearer(unsigned))
    assert response.status_code == 401
    assert response.json()["detail"].startswith("invalid token: ")


def test_expired_token(bridge: Bridge) -> None:
    old = bridge.ctx.tokens.issue("olivia", ttl=60, now=time.time() - 7200)
    assert_unauthorized(bridge.client.get(ME, headers=bearer(old)), "token expired")
    assert auth_failures(bridge, "token expired") == 1


def test_token_without_exp(bridge: Bridge) -> None:
    secret = bridge.ctx.settings.auth.jwt_secret
    token = jwt.encode({"sub": "olivia", "iss": "bridge"}, secret, algorithm="HS256")
    assert_unauthorized(bridge.client.get(ME, headers=bearer(token)), "token lacks the 'exp' claim")


def test_token_without_sub(bridge: Bridge) -> None:
    secret = bridge.ctx.settings.auth.jwt_secret
    token = jwt.encode({"exp": int(time.time()) + 600}, secret, algorithm="HS256")
    assert_unauthorized(bridge.client.get(ME, headers=bearer(token)), "token lacks the 'sub' claim")


def test_token_for_an_unknown_user(bridge: Bridge) -> None:
    token = bridge.token("nobody")
    assert_unauthorized(bridge.client.get(ME, headers=bearer(token)), "unknown user")


def test_token_of_a_deleted_user_stops_working(bridge: Bridge) -> None:
    token = bridge.token("bob")
    assert bridge.client.get(ME, headers=bearer(token)).status_code == 200
    assert bridge.as_user("olivia", "DELETE", f"{API}/users/bob").status_code == 204
    assert_unauthorized(bridge.client.get(ME, headers=bearer(token)), "unknown user")


def test_suspension_revokes_existing_tokens_at_once(bridge: Bridge) -> None:
    token = bridge.token("bob")
    assert bridge.client.get(ME, headers=bearer(token)).json()["id"] == "bob"

    suspended = bridge.as_user("olivia", "POST", f"{API}/users/bob/suspend")
    assert suspended.status_code == 200
    assert suspended.json()["status"] == "suspended"
    for url in (ME, f"{API}/users", f"{API}/users/bob/availability"):
        assert_unauthorized(bridge.client.get(url, headers=bearer(token)), "account suspended")
    # A fresh token for the suspended account is no better.
    assert_unauthorized(
        bridge.client.get(ME, headers=bearer(bridge.token("bob"))), "account suspended"
    )

    activated = bridge.as_user("olivia", "POST", f"{API}/users/bob/activate")
    assert activated.status_code == 200
    assert activated.json()["status"] == "active"
    me = bridge.client.get(ME, headers=bearer(token))
    assert me.status_code == 200
    assert me.json()["id"] == "bob"


def test_a_paused_user_keeps_api_access(bridge: Bridge) -> None:
    """Pause only stops routing; the account may still log in (dave is paused in the demo)."""
    me = bridge.as_user("dave", "GET", ME)
    assert me.status_code == 200
    assert me.json()["status"] == "paused"


def test_login_as_token_acts_as_the_target(bridge: Bridge) -> None:
    response = bridge.as_user(
        "olivia", "POST", f"{API}/users/alice/login-as", json={"ttl_seconds": 10}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] == "alice"
    assert body["expires_in"] == 60  # clamped to at least a minute
    token = body["token"]
    assert bridge.client.get(ME, headers=bearer(token)).json()["id"] == "alice"
    # ... with alice's rights, not the admin's
    refused = bridge.client.post(f"{API}/users/bob/pause", headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json()["detail"] == "role 'agent' may not pause user"


def test_login_as_a_suspended_or_unknown_user_is_refused(bridge: Bridge) -> None:
    assert bridge.as_user("olivia", "POST", f"{API}/users/bob/suspend").status_code == 200
    suspended = bridge.as_user("olivia", "POST", f"{API}/users/bob/login-as")
    assert suspended.status_code == 409
    assert suspended.json() == {"detail": "user 'bob' is suspended"}
    unknown = bridge.as_user("olivia", "POST", f"{API}/users/ghost/login-as")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "no user 'ghost'"}
