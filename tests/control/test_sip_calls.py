"""Listen / whisper / barge and recording on a SIP call through the HTTP API.

With `[media] engine = "none"` (no anchored audio) the call's supervision (the SIP path's
`Supervision`) refuses them as not supported on this call, which the API answers `409` with the
reason (never a 500, never a silent success), and the attempt is audited as allowed but
refused. With the engine (the default), the refusals that remain: an app (`via: client`) until
WebRTC legs, a call not answered yet, a supervisor without a registered desk phone. (The
controls that work are heard as audio in tests/sip/test_anchored_media.py and
tests/sip/test_media_peers.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sim.phones.inproc import (
    SDP,
    TRUNK,
    InprocBridge,
    desk_user,
    is_request,
    is_response,
    respond,
    trunk_invite,
)
from structlog.testing import capture_logs

from bridge.api.app import create_app
from bridge.calls.registry import LiveCall
from bridge.sip.supervision import NEEDS_MEDIA

# The in-process bridge's API secret is a short test one.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

PHONE = ("127.0.0.1", 20001)
LINE = "+15550100"
DIRECTORY: dict[str, Any] = {
    "timezone": "UTC",
    "users": [
        {
            "id": "olivia",
            "name": "Olivia",
            "role": "admin",
            "answer_by": "will_not_answer",
            "permissions": ["barge_whisper"],
        },
        {
            "id": "sam",
            "name": "Sam",
            "role": "supervisor",
            "answer_by": "will_not_answer",
            "permissions": ["barge_whisper"],
        },
        desk_user("ana", "201", "pw-201", role="agent", permissions=["recording_control"]),
        {
            "id": "abe",
            "name": "Abe",
            "role": "agent",
            "answer_by": "will_not_answer",
            "permissions": ["recording_control"],
        },
    ],
    "ring_groups": [
        {
            "id": "desk",
            "name": "Desk",
            "layers": [{"members": ["ana"], "timeout_seconds": 20}],
            "fallback": {"action": "hangup"},
        }
    ],
    "lines": [{"number": LINE, "name": "Main", "route_to": {"ring_group": "desk"}}],
}


@pytest.fixture(params=["none"])
async def bridge(request: pytest.FixtureRequest) -> AsyncIterator[InprocBridge]:
    bridge = InprocBridge(DIRECTORY, media={"engine": request.param})
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.stop()


@pytest.fixture
async def http(bridge: InprocBridge) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(bridge.ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge.internal") as c:
        yield c


def auth(bridge: InprocBridge, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {bridge.ctx.tokens.issue(user)}"}


def answered_sip_call(bridge: InprocBridge) -> LiveCall:
    """A trunk call on the line, answered by ana's desk phone."""
    assert bridge.register_phone("201", "pw-201", PHONE[1])
    bridge.feed(trunk_invite(1, LINE, bridge.address), TRUNK)
    [invite] = [d for d, a in bridge.take() if is_request(d, "INVITE") and a == PHONE]
    contact = b"Contact: <sip:201@127.0.0.1:20001>\r\nContent-Type: application/sdp"
    bridge.feed(respond(invite, "200 OK", b"ana1", contact, SDP), PHONE)
    sent = bridge.take()
    assert [d for d, a in sent if is_response(d, 200, "INVITE") and a == TRUNK]
    [call] = bridge.ctx.calls.all()
    assert (call.path, call.state, call.answered_by) == ("sip", "answered", "ana")
    return call


async def test_monitoring_a_sip_call_is_a_409_with_the_reason_and_audited(
    bridge: InprocBridge, http: httpx.AsyncClient
) -> None:
    call = answered_sip_call(bridge)
    path = f"/api/v1/calls/{call.call_id}/monitor"
    with capture_logs() as logs:
        listen = await http.post(path, json={"mode": "listen"}, headers=auth(bridge, "sam"))
        barge = await http.post(path, json={"mode": "barge"}, headers=auth(bridge, "olivia"))
        switch = await http.patch(path, json={"mode": "whisper"}, headers=auth(bridge, "sam"))
        stop = await http.delete(path, headers=auth(bridge, "sam"))
    for response in (listen, barge, switch):
        assert response.status_code == 409, response.text
        assert response.json()["detail"] == NEEDS_MEDIA
    assert "media engine" in NEEDS_MEDIA and "SIP calls" in NEEDS_MEDIA
    # Nobody can be monitoring a SIP call, so there is nothing to stop (as on a carrier call).
    assert stop.status_code == 409
    assert stop.json()["detail"] == f"user 'sam' is not monitoring call {call.call_id!r}"
    audits = [e for e in logs if e["event"] == "audit"]
    assert [(a["actor"], a["control"], a["allowed"], a["outcome"], a["error"]) for a in audits] == [
        ("sam", "monitor", True, "refused", "not_possible"),
        ("olivia", "monitor", True, "refused", "not_possible"),
        ("sam", "monitor_change", True, "refused", "not_possible"),
        ("sam", "monitor_stop", True, "refused", "not_possible"),
    ]
    assert [a["reason"] for a in audits[:3]] == [NEEDS_MEDIA] * 3
    assert all(a["target"] == f"call:{call.call_id}" for a in audits)
    # Nothing changed on the call: still answered by ana, nobody monitoring it.
    assert (call.state, call.answered_by) == ("answered", "ana")


async def test_the_recording_of_a_sip_call_is_a_409_with_the_reason_and_audited(
    bridge: InprocBridge, http: httpx.AsyncClient
) -> None:
    call = answered_sip_call(bridge)
    path = f"/api/v1/calls/{call.call_id}/recording"
    with capture_logs() as logs:
        start = await http.post(path, json={"action": "start"}, headers=auth(bridge, "olivia"))
        # ana answered it and has the flag: her own call, so past the permission checks too.
        pause = await http.post(
            path, json={"action": "pause", "pause_behavior": "skip"}, headers=auth(bridge, "ana")
        )
        # Permissions come first, as on every call: abe did not answer it.
        abe = await http.post(path, json={"action": "stop"}, headers=auth(bridge, "abe"))
    for response in (start, pause):
        assert response.status_code == 409, response.text
        assert response.json()["detail"] == NEEDS_MEDIA
    assert abe.status_code == 403
    assert abe.json()["detail"] == (
        "role 'agent' may only control the recording of calls they answered; "
        f"call {call.call_id!r} is not theirs"
    )
    audits = [e for e in logs if e["event"] == "audit"]
    assert [(a["actor"], a["detail"], a["allowed"], a["outcome"], a["error"]) for a in audits] == [
        ("olivia", "start", True, "refused", "not_possible"),
        ("ana", "pause", True, "refused", "not_possible"),
        ("abe", "stop", False, "refused", "not_allowed"),
    ]
    assert [a["reason"] for a in audits[:2]] == [NEEDS_MEDIA, NEEDS_MEDIA]


async def test_a_ringing_sip_call_is_refused_the_same_way(
    bridge: InprocBridge, http: httpx.AsyncClient
) -> None:
    """Not supported on this call comes before the call's state (as dial mode does on the
    carrier path): a ringing SIP call gets the same answer."""
    assert bridge.register_phone("201", "pw-201", PHONE[1])
    bridge.feed(trunk_invite(1, LINE, bridge.address), TRUNK)
    bridge.take()
    [call] = bridge.ctx.calls.all()
    assert call.state == "ringing"
    ringing = await http.post(
        f"/api/v1/calls/{call.call_id}/monitor",
        json={"mode": "listen"},
        headers=auth(bridge, "sam"),
    )
    assert (ringing.status_code, ringing.json()["detail"]) == (409, NEEDS_MEDIA)


@pytest.mark.parametrize("bridge", ["embedded"], indirect=True)
async def test_with_the_engine_what_cannot_be_done_is_a_409_with_the_reason(
    bridge: InprocBridge, http: httpx.AsyncClient
) -> None:
    assert bridge.register_phone("201", "pw-201", PHONE[1])
    bridge.feed(trunk_invite(1, LINE, bridge.address), TRUNK)
    bridge.take()
    [call] = bridge.ctx.calls.all()
    path = f"/api/v1/calls/{call.call_id}/monitor"
    ringing = await http.post(
        path, json={"mode": "listen", "via": "ip_phone"}, headers=auth(bridge, "sam")
    )
    assert ringing.status_code == 409
    assert "is not answered" in ringing.json()["detail"]


@pytest.mark.parametrize("bridge", ["embedded"], indirect=True)
async def test_with_the_engine_a_sessionless_or_phoneless_supervisor_is_refused(
    bridge: InprocBridge, http: httpx.AsyncClient
) -> None:
    call = answered_sip_call(bridge)
    path = f"/api/v1/calls/{call.call_id}/monitor"
    client = await http.post(path, json={"mode": "listen"}, headers=auth(bridge, "sam"))
    assert client.status_code == 409  # on the app (WebRTC), but sam has no app session
    assert client.json()["detail"] == "the supervisor has no app session connected"
    phoneless = await http.post(
        path, json={"mode": "listen", "via": "ip_phone"}, headers=auth(bridge, "sam")
    )
    assert phoneless.status_code == 409
    assert phoneless.json()["detail"] == "the supervisor has no registered desk phone"
    listed = await http.get("/api/v1/calls", headers=auth(bridge, "sam"))
    assert listed.json()[0]["monitors"] == {} and listed.json()[0]["recording"] is None
