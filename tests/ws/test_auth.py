"""Authentication on /ws: the three ways to give the token, and every way to be refused."""

from __future__ import annotations

import logging

import pytest
from sim.apps import Closed

from bridge.presence.model import Channel
from bridge.tokens import TokenService
from bridge.ws.exceptions import CloseCode
from bridge.ws.plugin import _RedactTokens
from tests.api.helpers import demo_document
from tests.ws.conftest import WAIT, Live, LiveFactory, eventually


@pytest.mark.parametrize("mode", ["frame", "subprotocol", "query"])
async def test_a_valid_token_opens_a_session(live: Live, mode: str) -> None:
    client = live.client("alice", auth=mode, device="desktop")
    hello = await client.connect()
    assert hello["type"] == "auth.ok"
    assert hello["user"] == {"id": "alice", "name": "Alice Doe", "role": "agent",
                             "answer_by": "apps"}  # fmt: skip
    assert hello["presence"]["reachable"] == ["apps"]
    assert hello["heartbeat"] == {"interval_seconds": 0.3, "timeout_seconds": 1.0}
    assert live.gateway.session_count("alice") == 1
    session = next(iter(live.gateway.sessions_of("alice")))
    assert session.session_id == hello["session_id"]
    assert session.device == "desktop"
    assert Channel.APPS in live.ctx.presence.presence_of("alice").reachable
    if mode == "subprotocol":  # the protocol name is selected, never the token
        assert client._ws is not None and client._ws.subprotocol == "bridge.v1"
    if mode == "frame":
        assert hello["id"] == "c1"  # the auth frame's id is echoed


async def refused(live: Live, token: str, mode: str = "frame") -> Closed:
    client = live.client(token=token, auth=mode)
    with pytest.raises(Closed) as info:
        await client.connect()
    await client.wait_closed(WAIT)
    return info.value


def failures(live: Live, reason: str) -> float:
    value = live.ctx.metrics.registry.get_sample_value(
        "bridge_auth_failures_total", {"reason": reason}
    )
    return value or 0.0


@pytest.mark.parametrize("mode", ["frame", "subprotocol", "query"])
async def test_a_bad_token_closes_with_4001(live: Live, mode: str) -> None:
    closed = await refused(live, "not-a-jwt", mode)
    assert closed.code == CloseCode.UNAUTHORIZED == 4001
    assert closed.reason.startswith("invalid token")
    assert failures(live, "invalid token") == 1
    assert live.gateway.session_count() == 0


async def test_a_token_signed_with_another_key_closes_with_4001(live: Live) -> None:
    forged = TokenService("another-secret-0123456789abcdef-0123").issue("olivia")
    closed = await refused(live, forged)
    assert (closed.code, closed.reason) == (4001, "invalid token: Signature verification failed")


async def test_an_expired_token_closes_with_4002(live: Live) -> None:
    expired = live.ctx.tokens.issue("alice", ttl=60, now=1_000_000)
    closed = await refused(live, expired)
    assert (closed.code, closed.reason) == (4002, "token expired")
    assert failures(live, "token expired") == 1


async def test_an_unknown_user_closes_with_4003(live: Live) -> None:
    closed = await refused(live, live.token("nobody"))
    assert (closed.code, closed.reason) == (4003, "unknown user")


async def test_a_suspended_user_is_refused_with_4003(make_live: LiveFactory) -> None:
    document = demo_document()
    next(u for u in document["users"] if u["id"] == "alice")["status"] = "suspended"
    live = await make_live(directory=document)
    closed = await refused(live, live.token("alice"))
    assert (closed.code, closed.reason) == (4003, "account suspended")
    assert Channel.APPS not in live.ctx.presence.presence_of("alice").reachable


async def test_no_auth_frame_in_time_closes_with_4001(live: Live) -> None:
    client = live.client("alice", auth="none")  # connect, then say nothing
    with pytest.raises(Closed):
        await client.connect()
    assert await client.wait_closed(WAIT) == (4001, "no auth frame within 0.5 s")
    assert live.gateway.session_count() == 0


async def test_a_first_frame_other_than_auth_closes_with_4001(live: Live) -> None:
    client = live.client("alice", auth="none")
    await client.open()
    await client.send("presence.set", availability="busy")
    assert await client.wait_closed(WAIT) == (4001, "the first frame must be a valid auth")


async def test_suspending_a_user_disconnects_every_session_at_once(live: Live) -> None:
    desktop = await live.connect("alice", device="desktop")
    phone = await live.connect("alice", device="phone")
    bob = await live.connect("bob")
    response = await live.http("POST", "/api/v1/users/alice/suspend", "olivia")
    assert response.status_code == 200, response.text
    assert await desktop.wait_closed(WAIT) == (4003, "account suspended")
    assert await phone.wait_closed(WAIT) == (4003, "account suspended")
    # No grace for a suspension: unreachable at once.
    assert live.gateway.session_count("alice") == 0
    assert not live.gateway.reachable("alice")
    assert Channel.APPS not in live.ctx.presence.presence_of("alice").reachable
    # Others are untouched.
    reply = await bob.request("presence.set", availability="busy")
    assert reply["type"] == "presence"


async def test_deleting_a_user_disconnects_them(live: Live) -> None:
    carol = await live.connect("carol")
    response = await live.http("DELETE", "/api/v1/users/carol", "olivia")
    assert response.status_code == 204, response.text
    assert await carol.wait_closed(WAIT) == (4003, "user deleted")
    await eventually(lambda: live.gateway.session_count() == 0)


def short_token(live: Live) -> str:
    """A token with 1-2 s left: `exp` is whole seconds, so a 1 s token may be spent already
    when the connection authenticates."""
    return live.ctx.tokens.issue("alice", ttl=2)


async def test_a_token_that_expires_mid_session_closes_with_4002(live: Live) -> None:
    client = await live.connect("alice", token=short_token(live))
    assert await client.wait_closed(WAIT) == (4002, "token expired")


async def test_a_fresh_token_extends_the_session(live: Live) -> None:
    client = await live.connect("alice", token=short_token(live))
    first = client.session
    assert first is not None
    again = await client.request("auth", token=live.token("alice"))
    assert again["type"] == "auth.ok"
    assert again["session_id"] == first["session_id"]
    assert again["expires_at"] > first["expires_at"]
    # Pings every 0.3 s at most: ten of them is past the first token's expiry.
    await eventually(lambda: len(client.received("ping")) >= 10)
    assert client.is_open
    other = await client.request("auth", token=live.token("bob"))
    assert (other["type"], other["code"], other["field"]) == ("error", "auth_mismatch", "token")


def test_tokens_in_the_query_are_redacted_from_uvicorn_logs() -> None:
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5555", "/ws?device=x&token=eyJhbGciOi.abc.def"), None,
    )  # fmt: skip
    assert _RedactTokens().filter(record)
    assert record.getMessage() == (
        '127.0.0.1:5555 - "WebSocket /ws?device=x&token=[redacted]" [accepted]'
    )
