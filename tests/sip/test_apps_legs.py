"""App users on the SIP path: a trunk call offered over the WebSocket, answered by an app
(its SDP answer reaches the caller), or lost to a desk phone (`answered_elsewhere`, with who).
Real peers: SIPp as trunk and desk phone, `sim.apps.AppClient` over a real WebSocket."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sim.apps.client import AppClient

from tests.sip.peers import needs_sipp, trunk_bridge
from tests.sip.test_sipp_calls import start_phone, trunk_command, wait_registered
from tests.sip.test_sipp_register import ha1

pytestmark = needs_sipp

APP_SDP = (
    "v=0\r\no=app 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def directory() -> dict[str, Any]:
    return {
        "timezone": "UTC",
        "users": [
            {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
            {"id": "ana", "name": "Ana", "answer_by": "apps", "wrap_up_seconds": 30},
            {
                "id": "ben",
                "name": "Ben",
                "answer_by": "ip_phone",
                "sip": {"username": "302", "ha1_md5": ha1("302", "pw-302")},
            },
        ],
        "ring_groups": [
            {
                "id": "apps",
                "name": "Apps",
                "layers": [{"members": ["ana"], "timeout_seconds": 20}],
                "fallback": {"action": "hangup"},
            },
            {
                "id": "mixed",
                "name": "Mixed",
                "layers": [{"members": ["ana", "ben"], "timeout_seconds": 20}],
                "fallback": {"action": "hangup"},
            },
        ],
        "lines": [
            {"number": "+15550100", "name": "Apps", "route_to": {"ring_group": "apps"}},
            {"number": "+15550101", "name": "Mixed", "route_to": {"ring_group": "mixed"}},
        ],
    }


def token(bridge: Any, user: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", "token", user, "-c", str(bridge.config)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


async def app_session(bridge: Any, user: str) -> AppClient:
    client = AppClient(f"ws://127.0.0.1:{bridge.http}/ws", token(bridge, user), device="test")
    await client.connect()
    return client


async def run_trunk_async(tmp_path: Path, bridge: Any, number: str) -> asyncio.subprocess.Process:
    command = trunk_command(tmp_path, bridge, number=number)
    return await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path
    )


async def test_app_answers_a_trunk_call_through_the_media_engine(tmp_path: Path) -> None:
    with trunk_bridge(tmp_path, directory()) as bridge:
        ana = await app_session(bridge, "ana")
        try:
            trunk = await run_trunk_async(tmp_path, bridge, "+15550100")
            offer = await ana.expect("call.offer", timeout=15)
            assert offer["line"] == "+15550100" and offer["ring_group"] == "apps"
            # the media engine's own offer (never the caller's SDP): its address and a port
            # of the media range
            assert "m=audio" in offer["sdp"] and "o=- " in offer["sdp"]
            assert "o=trunk" not in offer["sdp"]
            await ana.accept(offer["call_id"], sdp=APP_SDP)
            state = await ana.expect("call.state", timeout=10, call_id=offer["call_id"])
            assert state["state"] == "answered"
            assert await asyncio.wait_for(trunk.wait(), 30) == 0
            trunk_trace = (tmp_path / "trunk.msg").read_text(errors="replace")
            # the caller got the engine's answer, not the app's SDP (the engine anchors it)
            assert "o=app 7 7 IN IP4" not in trunk_trace
            assert "c=IN IP4 127.0.0.1" in trunk_trace
            ended = await ana.expect("call.state", timeout=10, state="ended")
            assert ended["reason"] == "caller_hangup"
            assert ended["wrap_up_until"] is not None  # ana's wrap_up_seconds is 30
            [call_ended] = bridge.wait_events("sip_call_ended")
            assert call_ended["outcome"] == "answered"
            answered = [e for e in bridge.log_events() if e.get("event") == "sip_call_answered"]
            assert [(e["user_id"], e["via"]) for e in answered] == [("ana", "apps")]
        finally:
            await ana.close()


async def test_desk_phone_wins_and_the_app_hears_who(tmp_path: Path) -> None:
    with trunk_bridge(tmp_path, directory()) as bridge:
        ben = start_phone(tmp_path, "phone_answer.xml", "302", bridge.sip, "-d", "300")
        wait_registered(bridge, 1)
        ana = await app_session(bridge, "ana")
        try:
            trunk = await run_trunk_async(tmp_path, bridge, "+15550101")
            offer = await ana.expect("call.offer", timeout=15)
            ended = await ana.expect("call.ended", timeout=15, call_id=offer["call_id"])
            assert ended["reason"] == "answered_elsewhere"
            assert ended["answered_by"]["user_id"] == "ben"
            assert ended["answered_by"]["via"] == "ip_phone"
            # A late accept gets the same answer, never a half-connected call.
            await ana.accept(offer["call_id"], sdp=APP_SDP)
            late = await ana.expect("call.ended", timeout=10, call_id=offer["call_id"])
            assert late["reason"] == "answered_elsewhere"
            assert await asyncio.wait_for(trunk.wait(), 30) == 0
            assert ben.wait(timeout=30) == 0
        finally:
            await ana.close()


@pytest.mark.parametrize("how", ["reject", "absent"])
async def test_app_that_declines_or_is_absent_leaves_the_call_to_the_fallback(
    tmp_path: Path, how: str
) -> None:
    with trunk_bridge(tmp_path, directory()) as bridge:
        ana = await app_session(bridge, "ana") if how == "reject" else None
        try:
            command = trunk_command(tmp_path, bridge, number="+15550100")
            trunk = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                cwd=tmp_path,
            )  # fmt: skip
            if ana is not None:
                offer = await ana.expect("call.offer", timeout=15)
                await ana.reject(offer["call_id"])
            await asyncio.wait_for(trunk.wait(), 30)  # the scenario expects a 200: it fails
            messages = (tmp_path / "trunk.msg").read_text(errors="replace")
            assert "SIP/2.0 480" in messages
            [ended] = bridge.wait_events("sip_call_ended")
            assert ended["outcome"] == "hangup"
        finally:
            if ana is not None:
                await ana.close()
