"""Hold, and a resume by a re-INVITE without SDP, on a call anchored in the media engine.

A PBX or a phone holds a call with a re-INVITE offering `a=sendonly` (the engine answers
`recvonly`) and may resume it with a re-INVITE that has no SDP at all (Cisco's do; RFC 3261
§14.2 lets any UA): the offer is then ours, in the 2xx, and the answer comes in the ACK. Our
2xx repeated what we last sent that leg, `recvonly`: a PBX that honours it answers
`sendonly` and drops what we send, so its caller never heard the agent again. And a desk
phone's answer in its ACK was not read at all: a phone that came back from hold on another
address (or codec) was sent nothing. Now the 2xx holds a new offer, `sendrecv`, with the
codec in use first, and the ACK's answer is taken on either side, checked by tone (FFT) over
real RTP sockets, the resumed party on a new address.

While a side holds the call (`sendonly`: the engine answers `recvonly`), nothing is sent to
it, on the blind relay or from the mixer; what it sends (its music on hold) still goes to the
other side. The engine used to send to it all the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sim.phones.inproc import (
    TRUNK,
    InprocBridge,
    body_of,
    contact_uri,
    header,
    is_request,
    is_response,
    trunk_in_dialog,
)
from structlog.testing import capture_logs

from bridge.media import g711
from bridge.media.sdp import parse_sdp
from tests.media.audio import tones_in
from tests.media.rtp_peers import Phone
from tests.sip.peers import needs_sipp, trunk_bridge
from tests.sip.test_anchored_media import (
    AGENT,
    AGENT_PHONE,
    CALLER,
    TONES,
    Call,
    answered_call,
    directory,
    sdp_for,
)
from tests.sip.test_sipp_calls import directory as sipp_directory
from tests.sip.test_sipp_calls import run_trunk, start_phone, trace, wait_registered


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[InprocBridge]:
    bridge = InprocBridge(directory(), folder=tmp_path)
    await bridge.start()
    assert bridge.register_phone("201", "pw-201", AGENT_PHONE[1])
    try:
        yield bridge
    finally:
        await bridge.stop()


def hold_sdp(call: Call, who: str, version: int) -> bytes:
    # (each side keeps its codec: the caller PCMU, the agent's phone PCMA)
    codecs, origin = ("0 101", "trunk") if who == "caller" else ("8 101", "peer")
    sdp = sdp_for(call.phones[who], codecs, origin)
    return sdp.replace(b" 1 1 IN", f" 1 {version} IN".encode()).replace(
        b"a=sendrecv", b"a=sendonly"
    )


def move(call: Call, who: str, payload_type: int) -> Phone:
    """`who` comes back from hold on a new RTP address (its old socket closed)."""
    call.phones[who].close()
    call.phones[who] = moved = Phone(payload_type, 0xC3 if who == "caller" else 0xA3)
    return moved


def direction(message: bytes) -> str:
    return parse_sdp(body_of(message)).media[0].direction


async def heard(call: Call) -> dict[str, set[float]]:
    """What each party heard while both played for a second (no packet at all: nothing)."""
    got = await call.talk(1.0, {"caller": CALLER, "agent": AGENT})
    return {who: tones_in(audio, TONES) if audio else set() for who, audio in got.items()}


class Caller:
    """The trunk's in-dialog requests on the answered call (its call 1)."""

    def __init__(self, call: Call) -> None:
        self.call, self.cseq = call, 1
        self.to, self.target = header(call.ok, "To") or "", contact_uri(call.ok)

    def send(self, method: str, body: bytes = b"") -> list[tuple[bytes, tuple[str, int]]]:
        if method != "ACK":
            self.cseq += 1
        self.call.bridge.feed(
            trunk_in_dialog(method, self.cseq, 1, self.to, self.target, body=body), TRUNK
        )
        return self.call.bridge.take()


class AgentPhone:
    """The agent's desk phone's in-dialog requests (it answered the bridge's INVITE `leg`)."""

    def __init__(self, call: Call, leg: bytes) -> None:
        self.call, self.leg, self.cseq = call, leg, 1

    def send(self, method: str, body: bytes = b"") -> list[tuple[bytes, tuple[str, int]]]:
        leg = self.leg
        if method != "ACK":
            self.cseq += 1
        frm = (header(leg, "To") or "") + ";tag=ph1"  # (the phone's tag in its 200)
        lines = [
            f"{method} {contact_uri(leg)} SIP/2.0",  # the bridge's Contact in its INVITE
            f"Via: SIP/2.0/UDP 127.0.0.1:{AGENT_PHONE[1]};branch=z9hG4bK-ph-{method}{self.cseq}",
            f"From: {frm}",
            f"To: {header(leg, 'From')}",
            f"Call-ID: {header(leg, 'Call-ID')}",
            f"CSeq: {self.cseq} {method}",
            f"Contact: <sip:201@127.0.0.1:{AGENT_PHONE[1]}>",
            "Max-Forwards: 70",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        self.call.bridge.feed(("\r\n".join(lines) + "\r\n\r\n").encode() + body, AGENT_PHONE)
        return self.call.bridge.take()


async def test_the_caller_holds_then_resumes_without_sdp_and_hears_the_agent_again(
    bridge: InprocBridge,
) -> None:
    call = await answered_call(bridge)
    caller = Caller(call)
    try:
        assert await heard(call) == {"caller": {AGENT}, "agent": {CALLER}}
        [held] = [d for d, a in caller.send("INVITE", hold_sdp(call, "caller", 2)) if a == TRUNK]
        assert is_response(held, 200, "INVITE") and direction(held) == "recvonly"
        caller.send("ACK")
        # held: nothing is sent to it; what it sends (its music) still reaches the agent
        assert await heard(call) == {"caller": set(), "agent": {CALLER}}

        [resumed] = [d for d, a in caller.send("INVITE") if a == TRUNK]
        assert is_response(resumed, 200, "INVITE")
        offer = parse_sdp(body_of(resumed))
        assert offer.media[0].direction == "sendrecv"  # our offer, not the hold's answer
        before = parse_sdp(body_of(held)).origin
        assert offer.origin.session_id == before.session_id
        assert int(offer.origin.version) == int(before.version) + 1  # a new description
        assert offer.media[0].port == call.ports["caller"]  # the same port
        moved = move(call, "caller", g711.PCMU)
        sent = caller.send("ACK", sdp_for(moved, "0 101", "trunk"))
        assert not [d for d, a in sent if a == AGENT_PHONE]  # the agent's phone saw nothing
        assert await heard(call) == {"caller": {AGENT}, "agent": {CALLER}}
    finally:
        call.close()


async def test_an_ack_without_the_answer_leaves_the_call_as_it_was(bridge: InprocBridge) -> None:
    call = await answered_call(bridge)
    caller = Caller(call)
    try:
        caller.send("INVITE", hold_sdp(call, "caller", 2))
        caller.send("ACK")
        caller.send("INVITE")
        with capture_logs() as logs:
            caller.send("ACK")
        assert [e for e in logs if e["event"] == "sip_reoffer_unanswered"]
        # the call goes on as it was: held
        assert await heard(call) == {"caller": set(), "agent": {CALLER}}
    finally:
        call.close()


async def test_the_agents_phone_holds_then_resumes_without_sdp(bridge: InprocBridge) -> None:
    """The same from the desk phone's side: its ACK's answer is taken on its leg."""
    call = await answered_call(bridge)
    leg = call.leg
    phone = AgentPhone(call, leg)
    try:
        [held] = [
            d for d, a in phone.send("INVITE", hold_sdp(call, "agent", 2)) if a == AGENT_PHONE
        ]
        assert is_response(held, 200, "INVITE") and direction(held) == "recvonly"
        phone.send("ACK")
        assert await heard(call) == {"caller": {AGENT}, "agent": set()}
        [resumed] = [d for d, a in phone.send("INVITE") if a == AGENT_PHONE]
        assert is_response(resumed, 200, "INVITE") and direction(resumed) == "sendrecv"
        # back on another address, PCMA as at the start: the engine goes on transcoding
        moved = move(call, "agent", g711.PCMA)
        sent = phone.send("ACK", sdp_for(moved, "8 101"))
        assert not [d for d, a in sent if a == TRUNK]  # the caller saw nothing
        assert await heard(call) == {"caller": {AGENT}, "agent": {CALLER}}
        assert not [d for d, a in sent if is_request(d, "BYE")]
    finally:
        call.close()


@needs_sipp
def test_sipp_trunk_holds_and_resumes_without_sdp_through_the_engine(tmp_path: Path) -> None:
    """SIPp as a PBX trunk: hold (its 200 must say recvonly), resume with a re-INVITE
    without SDP (its 200 must offer sendrecv: tests/sip/scenarios/trunk_hold_resume.xml),
    the answer in its ACK; the desk phone (SIPp) is never asked."""
    group = sipp_directory(first_layer=("anna",))
    with trunk_bridge(tmp_path, group) as bridge:
        anna = start_phone(tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "200")
        wait_registered(bridge, 1)
        trunk = run_trunk(tmp_path, bridge, scenario="trunk_hold_resume.xml")
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0
        assert trace(tmp_path, "phone_answer.xml", "301").count("INVITE sip:") == 1
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "answered"
        assert not [e for e in bridge.log_events() if "reoffer" in str(e.get("event"))]
