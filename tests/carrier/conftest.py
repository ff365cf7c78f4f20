"""Fixtures for the carrier path: a bridge with `[twilio]` configured and a signing carrier."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from bridge.api.app import create_app
from bridge.presence.model import Channel
from tests.carrier.helpers import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, Carrier
from tests.conftest import Bridge

if TYPE_CHECKING:
    from tests.carrier.live import World

BEN_HA1 = "f7916c987550c27f650447b90bdda47d"


def _user(uid: str, answer_by: str, **fields: Any) -> dict[str, Any]:
    return {"id": uid, "name": uid.title(), "answer_by": answer_by, **fields}


def _group(gid: str, layers: list[dict[str, Any]], fallback: dict[str, Any]) -> dict[str, Any]:
    return {"id": gid, "name": gid.title(), "layers": layers, "fallback": fallback}


NEVER_OPEN: dict[str, list[str]] = {}

DIRECTORY: dict[str, Any] = {
    "timezone": "America/New_York",
    "users": [
        _user("olivia", "will_not_answer", role="admin"),
        _user("ana", "apps", wrap_up_seconds=30),
        _user("ben", "ip_phone", sip={"username": "201", "ha1_md5": BEN_HA1}),
        _user("cid", "phone_number", phone_number="+15550003001"),
        _user(
            "dee",
            "phone_number",
            phone_number="+15550004001",
            confirm_answer=True,
            backup_number="+15550004999",
        ),
        _user("eve", "apps"),
    ],
    "ring_groups": [
        _group(
            "front",
            [
                {"members": ["ana", "ben", "cid"], "timeout_seconds": 20},
                {"members": ["eve"], "timeout_seconds": 15},
            ],
            {"action": "voicemail", "prompt": "Front desk is busy. Leave a message."},
        ),
        _group(
            "fwd",
            [{"members": ["ana"], "timeout_seconds": 10}],
            {"action": "forward", "number": "+15550009000", "prompt": "Forwarding you now."},
        ),
        _group(
            "chain",
            [{"members": ["ana"], "timeout_seconds": 10}],
            {"action": "ring_group", "ring_group": "back", "prompt": "Trying the back office."},
        ),
        _group(
            "back",
            [{"members": ["eve"], "timeout_seconds": 12}],
            {"action": "hangup", "prompt": "Nobody is here. Goodbye."},
        ),
        _group(
            "turns",
            [
                {
                    "members": ["ana", "eve"],
                    "strategy": "round_robin",
                    "timeout_seconds": 30,
                    "ring_each_seconds": 10,
                }
            ],
            {"action": "hangup"},
        ),
        _group(
            "gone",
            [{"members": ["ana"], "timeout_seconds": 10}],
            {"action": "hangup", "prompt": "Sorry, we missed you."},
        ),
    ],
    "lines": [
        {"number": "+15550100", "name": "Front", "route_to": {"ring_group": "front"}},
        {"number": "+15550101", "name": "Forwarded", "route_to": {"ring_group": "fwd"}},
        {"number": "+15550102", "name": "Chain", "route_to": {"ring_group": "chain"}},
        {
            "number": "+15550103",
            "name": "Closed",
            "route_to": {"ring_group": "front"},
            "business_hours": NEVER_OPEN,
            "closed_action": {"action": "voicemail", "prompt": "We are closed."},
        },
        {"number": "+15550104", "name": "Dee direct", "route_to": {"user": "dee"}},
        {"number": "+15550105", "name": "Turns", "route_to": {"ring_group": "turns"}},
        {
            "number": "+15550106",
            "name": "Confirmed",
            "route_to": {"ring_group": "front"},
            "confirm_answer": True,
        },
        {
            "number": "+15550107",
            "name": "Closed hangup",
            "route_to": {"ring_group": "front"},
            "business_hours": NEVER_OPEN,
            "closed_action": {"action": "hangup", "prompt": "We are closed for good."},
        },
        {
            "number": "+15550108",
            "name": "Closed forward",
            "route_to": {"ring_group": "front"},
            "business_hours": NEVER_OPEN,
            "closed_action": {"action": "forward", "number": "+15550009001"},
        },
        {
            "number": "+15550109",
            "name": "Gone",
            "route_to": {"ring_group": "gone"},
            "voicemail_prompt": "Unused here.",
        },
    ],
}


@pytest.fixture
def carrier_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """`[twilio]` configured through the environment, on a public URL the carrier signs."""
    monkeypatch.setenv("BRIDGE_TWILIO__AUTH_TOKEN", AUTH_TOKEN)
    monkeypatch.setenv("BRIDGE_TWILIO__ACCOUNT_SID", ACCOUNT_SID)
    monkeypatch.setenv("BRIDGE_HTTP__PUBLIC_URL", PUBLIC_URL)


@pytest.fixture
def carrier_bridge(make_bridge: Callable[..., Bridge], carrier_settings: None) -> Bridge:
    """The carrier test directory; apps users have an app session, ben a registered phone."""
    bridge = make_bridge(directory=DIRECTORY)
    presence = bridge.ctx.presence
    for user_id in ("ana", "eve"):
        presence.endpoint_up(user_id, Channel.APPS)
    presence.endpoint_up("ben", Channel.IP_PHONE)
    return bridge


def client_for(bridge: Bridge) -> httpx.AsyncClient:
    """An HTTP client on the bridge's app in-process (httpx's ASGI transport); the address it
    uses is not the public URL, as behind a reverse proxy."""
    transport = httpx.ASGITransport(app=create_app(bridge.ctx))
    return httpx.AsyncClient(transport=transport, base_url="http://bridge.internal")


@pytest.fixture
async def carrier(carrier_bridge: Bridge) -> AsyncIterator[Carrier]:
    async with client_for(carrier_bridge) as client:
        yield Carrier(carrier_bridge, client)


@pytest.fixture
async def unconfigured(make_bridge: Callable[..., Bridge]) -> AsyncIterator[Carrier]:
    """The demo bridge with no `[twilio] auth_token`."""
    bridge = make_bridge()
    async with client_for(bridge) as client:
        yield Carrier(bridge, client)


@pytest.fixture
async def world(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    """Conference mode end to end: the fake carrier and the bridge over real loopback HTTP."""
    from tests.carrier.live import running_world  # it builds on DIRECTORY above

    async with running_world(demo_dir, monkeypatch) as live:
        yield live
