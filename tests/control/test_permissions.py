"""Who may use the controls, cell by cell against docs/ROLES.md (not against roles.py, which
the service asks), through the plain async API the WebSocket gateway uses; and the one call
mode that cannot be monitored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from bridge.api.app import create_app
from bridge.control.errors import CallNotFound, NotAllowed
from bridge.control.service import ControlService
from bridge.directory.model import Permission, Role, User
from bridge.presence.model import Channel
from tests.carrier.conftest import DIRECTORY
from tests.carrier.helpers import ACCOUNT_SID, AUTH_TOKEN, FRONT, PUBLIC_URL, Carrier
from tests.conftest import Bridge

# docs/ROLES.md, "What each may do on the bridge":
#   listen / whisper / barge: admin, supervisor, agent with the flag; no one else.
#   pause / resume recording: admin, supervisor any call; agent, rep own calls with the flag.
MONITOR = {
    Role.ADMIN: "flag",
    Role.SUPERVISOR: "flag",
    Role.AGENT: "flag",
    Role.REP: "no",
    Role.BILLING_ADMIN: "no",
    Role.REPORTER: "no",
    Role.END_CLIENT: "no",
}
RECORDING = {
    Role.ADMIN: "any call",
    Role.SUPERVISOR: "any call",
    Role.AGENT: "own calls (flag)",
    Role.REP: "own calls (flag)",
    Role.BILLING_ADMIN: "no",
    Role.REPORTER: "no",
    Role.END_CLIENT: "no",
}
CELLS = [(role, flag) for role in Role for flag in (False, True)]


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """[twilio] with REST credentials, the API base on a closed loopback port: nothing in
    these tests may reach the carrier."""
    monkeypatch.setenv("BRIDGE_TWILIO__AUTH_TOKEN", AUTH_TOKEN)
    monkeypatch.setenv("BRIDGE_TWILIO__ACCOUNT_SID", ACCOUNT_SID)
    monkeypatch.setenv("BRIDGE_TWILIO__API_BASE", "http://127.0.0.1:9")
    monkeypatch.setenv("BRIDGE_HTTP__PUBLIC_URL", PUBLIC_URL)


def person(role: Role, flag: Permission | None) -> User:
    return User(
        id=f"{role.value.replace('_', '-')}-x",
        name="Someone",
        role=role,
        permissions=(flag,) if flag else (),
    )


@pytest.mark.parametrize(("role", "flag"), CELLS, ids=[f"{r.value}-{f}" for r, f in CELLS])
async def test_monitor_cell(
    make_bridge: Callable[..., Bridge], configured: None, role: Role, flag: bool
) -> None:
    control = make_bridge().ctx.control
    assert isinstance(control, ControlService)
    user = person(role, Permission.BARGE_WHISPER if flag else None)
    expected_allowed = MONITOR[role] == "flag" and flag
    # Allowed users get past the permission check to the call lookup (an unknown call).
    expected = CallNotFound if expected_allowed else NotAllowed
    with pytest.raises(expected):
        await control.monitor(user, "CA-unknown", "listen")


@pytest.mark.parametrize(("role", "flag"), CELLS, ids=[f"{r.value}-{f}" for r, f in CELLS])
async def test_recording_cell(
    make_bridge: Callable[..., Bridge], configured: None, role: Role, flag: bool
) -> None:
    control = make_bridge().ctx.control
    assert isinstance(control, ControlService)
    user = person(role, Permission.RECORDING_CONTROL if flag else None)
    cell = RECORDING[role]
    expected_allowed = cell == "any call" or (cell == "own calls (flag)" and flag)
    expected = CallNotFound if expected_allowed else NotAllowed
    with pytest.raises(expected):
        await control.recording(user, "CA-unknown", "pause", "skip")


async def test_a_dial_mode_call_cannot_be_monitored(
    make_bridge: Callable[..., Bridge], configured: None
) -> None:
    directory: dict[str, Any] = {
        **DIRECTORY,
        "users": [
            *DIRECTORY["users"],
            {
                "id": "sam",
                "name": "Sam",
                "role": "supervisor",
                "answer_by": "will_not_answer",
                "permissions": ["barge_whisper"],
            },
        ],
    }
    bridge = make_bridge(directory=directory)
    bridge.ctx.presence.endpoint_up("ana", Channel.APPS)
    transport = httpx.ASGITransport(app=create_app(bridge.ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge.internal") as http:
        carrier = Carrier(bridge, http)
        call = await carrier.call(FRONT)
        await carrier.answer(call, "ana")
        response = await http.post(
            f"/api/v1/calls/{call.sid}/monitor",
            json={"mode": "listen"},
            headers=bridge.auth("sam"),
        )
    assert response.status_code == 409
    assert "dial mode" in response.json()["detail"]
