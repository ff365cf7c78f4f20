"""The SIP path with `[media] engine = "rtpengine"`: a real rtpengine (tests/media/
rtpengine_daemon.py) relays every call's audio, the bridge asking it at each offer and answer
over the ng protocol. Real peers: a `bridge run` process, baresip callers and desk phones,
an aiortc app (sim.apps) answering over WebRTC, SIPp for a hold re-INVITE. Audio is checked
as audio: each party plays its own tone and an FFT of what each heard says who heard whom.

Also what rtpengine cannot do (no mixer): supervision is refused with the reason; and what
happens while it does not answer: INVITEs get 503, `/readyz` says so.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sim.apps.audio import WebRtcPhone

from bridge.media.ng import bdecode, bencode
from tests.media.audio import tone, tones_in
from tests.media.peers import BaresipPhone, needs_baresip
from tests.media.rtpengine_daemon import (
    HOST,
    Daemon,
    free_udp_port,
    needs_rtpengine,
    running_rtpengine,
)
from tests.sip.peers import trunk_bridge
from tests.sip.test_app_audio import LINE as APP_LINE
from tests.sip.test_app_audio import directory as app_directory
from tests.sip.test_apps_legs import app_session
from tests.sip.test_media_peers import LINE, desk_phone, wait_for
from tests.sip.test_media_peers import directory as desk_directory
from tests.sip.test_sipp_calls import directory as sipp_directory
from tests.sip.test_sipp_calls import run_trunk, start_phone, trace, wait_registered

pytestmark = needs_rtpengine

CALLER, AGENT, SUPERVISOR = 440.0, 1000.0, 2000.0
TONES = [CALLER, AGENT, SUPERVISOR]


@pytest.fixture(scope="module")
def rtpengine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_rtpengine(tmp_path_factory.mktemp("rtpengine"), ports=100) as daemon:
        yield daemon


def relayed_by(port: int) -> dict[str, str]:
    """The bridge's settings for the rtpengine whose ng socket is on `port`."""
    return {
        "media__engine": "rtpengine",
        "media__rtpengine__ng": f"{HOST}:{port}",
        "media__rtpengine__timeout_seconds": "0.3",
        "media__rtpengine__retries": "1",
    }


def rtpengine_calls(daemon: Daemon) -> list[str]:
    """The call ids rtpengine holds (its ng `list`)."""
    cookie = secrets.token_hex(4).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ng:
        ng.settimeout(2)
        ng.sendto(cookie + b" " + bencode({"command": "list"}), (HOST, daemon.ng_port))
        reply = ng.recv(65536)
    assert reply.startswith(cookie + b" ")
    answer: dict[str, Any] = bdecode(reply[len(cookie) + 1 :])
    assert answer["result"] == "ok", answer
    return [str(call) for call in answer.get("calls", [])]


def bridge_calls(daemon: Daemon) -> list[str]:
    return [call for call in rtpengine_calls(daemon) if call.startswith("bridge-")]


@needs_baresip
def test_a_trunk_caller_and_a_desk_phone_hear_each_other_through_rtpengine(
    tmp_path: Path, rtpengine: Daemon
) -> None:
    with (
        trunk_bridge(tmp_path, desk_directory(), **relayed_by(rtpengine.ng_port)) as bridge,
        desk_phone(tmp_path, bridge, "201", "pw-201", AGENT) as agent,
        BaresipPhone(tmp_path, "caller", tone=CALLER, play_seconds=60) as caller,
    ):
        agent.wait_registered(timeout=10)
        assert bridge.api("/readyz")["rtpengine"] == "answering"
        caller.dial(f"sip:{LINE}@127.0.0.1:{bridge.sip}")
        caller.wait_call_established(timeout=10)
        agent.wait_call_established(timeout=10)
        [live] = wait_for(lambda: bridge.api("/api/v1/calls"))
        assert len(bridge_calls(rtpengine)) == 1  # the call's audio is rtpengine's
        # no mixer: a supervisor is refused, and told why
        path = f"/api/v1/calls/{live['call_id']}"
        status, body = bridge.request(
            "POST", f"{path}/monitor", {"mode": "listen", "via": "ip_phone"}, user="sam"
        )
        assert status == 409 and "rtpengine" in body["detail"], body
        status, body = bridge.request("POST", f"{path}/recording", {"action": "start"}, user="sam")
        assert status == 409 and "rtpengine" in body["detail"], body
        time.sleep(3)
        caller.hangup()
        caller.wait_closed(timeout=5)
        agent.wait_closed(timeout=5)
        assert tones_in(caller.received_audio(), TONES) == {AGENT}
        assert tones_in(agent.received_audio(), TONES) == {CALLER}
        assert wait_for(lambda: not bridge_calls(rtpengine))  # deleted at the call's end
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "answered"


@needs_baresip
async def test_an_app_over_webrtc_and_a_trunk_caller_hear_each_other_through_rtpengine(
    tmp_path: Path, rtpengine: Daemon
) -> None:
    with (
        trunk_bridge(tmp_path, app_directory(), **relayed_by(rtpengine.ng_port)) as bridge,
        BaresipPhone(tmp_path, "caller", tone=CALLER, play_seconds=60) as caller,
    ):
        ana = await app_session(bridge, "ana")
        phone = WebRtcPhone(tone(AGENT, 60.0))
        try:
            caller.dial(f"sip:{APP_LINE}@127.0.0.1:{bridge.sip}")
            offer = await ana.expect("call.offer", timeout=15)
            # rtpengine's WebRTC offer (ICE, DTLS-SRTP), not the caller's plain RTP
            assert "UDP/TLS/RTP/SAVPF" in offer["sdp"] and "a=fingerprint:" in offer["sdp"]
            assert "a=ice-lite" not in offer["sdp"]  # (the embedded engine's is ICE-lite)
            await ana.accept(offer["call_id"], sdp=await phone.answer(offer["sdp"]))
            await ana.expect("call.state", timeout=15, call_id=offer["call_id"], state="answered")
            await asyncio.to_thread(caller.wait_call_established, timeout=10)
            await asyncio.wait_for(phone.connected.wait(), 10)
            await asyncio.sleep(1.0)  # the first packets of both sides
            start = phone.mark()
            await asyncio.sleep(3.0)
            heard_by_app = phone.heard[start:]
            assert len(bridge_calls(rtpengine)) == 1
            caller.hangup()
            await asyncio.to_thread(caller.wait_closed, timeout=5)
            ended = await ana.expect("call.state", timeout=10, state="ended")
            assert ended["reason"] == "caller_hangup"
            assert len(heard_by_app) > 2 * 8000 * 2  # more than two seconds of audio
            assert tones_in(heard_by_app, TONES) == {CALLER}
            assert tones_in(caller.received_audio(), TONES) == {AGENT}
        finally:
            await phone.close()
            await ana.close()
        assert wait_for(lambda: not bridge_calls(rtpengine))


def test_a_hold_re_invite_is_answered_by_rtpengine_without_asking_the_phone(
    tmp_path: Path, rtpengine: Daemon
) -> None:
    with trunk_bridge(tmp_path, sipp_directory(), **relayed_by(rtpengine.ng_port)) as bridge:
        anna = start_phone(tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "1500")
        wait_registered(bridge, 1)
        trunk = run_trunk(tmp_path, bridge, scenario="trunk_reinvite.xml")
        # (the scenario checks its hold's 200 says a=recvonly)
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0
        phone = trace(tmp_path, "phone_answer.xml", "301")
        assert phone.count("INVITE sip:") == 1 and "a=sendonly" not in phone
        assert "a=recvonly" in (tmp_path / "trunk.msg").read_text(errors="replace")
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "answered"
        assert not [e for e in bridge.log_events() if e.get("event") == "sip_relayed"]


def test_a_resume_without_sdp_gets_a_sendrecv_offer_from_the_relay(
    tmp_path: Path, rtpengine: Daemon
) -> None:
    """Held (sendonly), then resumed by a re-INVITE without SDP: our 2xx offers sendrecv on
    rtpengine's same port (it repeated the hold's recvonly answer), the phone never asked."""
    with trunk_bridge(tmp_path, sipp_directory(), **relayed_by(rtpengine.ng_port)) as bridge:
        anna = start_phone(tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "200")
        wait_registered(bridge, 1)
        trunk = run_trunk(tmp_path, bridge, scenario="trunk_hold_resume.xml")
        # (the scenario checks the hold's 200 says a=recvonly and the resume's a=sendrecv)
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0
        assert trace(tmp_path, "phone_answer.xml", "301").count("INVITE sip:") == 1
        # our three 200s with SDP (the answer, the hold's, the resume's offer): one port
        blocks = (tmp_path / "trunk.msg").read_text(errors="replace").split("\n----")
        ports = [
            m.group(1)
            for block in blocks
            if "SIP/2.0 200 OK" in block and (m := re.search(r"m=audio (\d+) ", block))
        ]
        assert len(ports) == 3 and len(set(ports)) == 1, ports
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "answered"


@needs_baresip
def test_while_rtpengine_does_not_answer_calls_get_503_and_readyz_says_so(
    tmp_path: Path,
) -> None:
    nobody = free_udp_port()
    with (
        trunk_bridge(tmp_path, desk_directory(), wait_ready=False, **relayed_by(nobody)) as bridge,
        BaresipPhone(tmp_path, "caller", tone=CALLER, play_seconds=10) as caller,
    ):
        status, ready = wait_for(lambda: bridge.request("GET", "/readyz"))
        assert status == 503 and ready["rtpengine"] == "not answering", ready
        caller.dial(f"sip:{LINE}@127.0.0.1:{bridge.sip}")
        closed = caller.wait_closed(timeout=10)
        assert "503" in str(closed.get("param")), closed
        [refused] = bridge.wait_events("sip_call_refused_media")
        assert "rtpengine" in refused["reason"]
        assert bridge.metric('bridge_sip_calls_refused_total{reason="media_ports"}') == 1
