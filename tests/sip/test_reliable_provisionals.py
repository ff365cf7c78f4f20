"""Reliable provisional responses to a caller that requires them (RFC 3262, `Require: 100rel`).

Before, such an INVITE (some IMS and SIP-I interconnects, SBCs configured to require PRACK)
was refused `420 Bad Extension`: every call from that trunk failed. Now, with the media
engine, our 180/183 carries the engine's SDP answer, `Require: 100rel` and an `RSeq`, is sent
again at T1 doubling until the caller's PRACK, and our 200 (without SDP: the answer was given)
waits for that PRACK. No PRACK in 64*T1: the INVITE is refused 500 and the phones stop. With
signalling only there is no answer to put in a provisional before the phone's 2xx, so the
caller gets none (RFC 3261 §13.2.1: the first reliable one must hold it).

With a fake clock for the timers; the audio through the engine by tone (FFT). SIPp as a
SIP-I caller that requires 100rel and PRACKs: tests/sip/test_multipart_bodies.py
(tests/media/scenarios/uac_pcap_sipi_100rel.xml).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sim.phones.inproc import (
    SDP,
    TRUNK,
    InprocBridge,
    body_of,
    contact_uri,
    header,
    is_request,
    is_response,
    one_desk_phone_directory,
    respond,
    start_line,
    trunk_in_dialog,
    trunk_invite,
)
from structlog.testing import capture_logs

from bridge.media import g711
from tests.media.rtp_peers import Phone
from tests.sip.test_anchored_media import (
    AGENT,
    AGENT_PHONE,
    CALLER,
    Call,
    directory,
    invite,
    media_port,
    ok_extra,
    sdp_for,
)

LINE = "+15550100"
PHONE = ("127.0.0.1", 20001)
STEP = 0.25
REQUIRE = "Require: 100rel\nSupported: 100rel, timer"
RINGING = b"Contact: <sip:201@127.0.0.1:20001>"
ANSWER = b"Contact: <sip:201@127.0.0.1:20001>\r\nContent-Type: application/sdp"

Sent = list[tuple[bytes, tuple[str, int]]]


@pytest.fixture
async def bridge() -> AsyncIterator[InprocBridge]:
    # (rung for 60 s: longer than the 32 s a PRACK is waited for)
    bridge = InprocBridge(
        one_desk_phone_directory(LINE, ring_seconds=60), sip={"session_expires": 0}
    )
    await bridge.start(fake_time=True)
    assert bridge.register_phone("201", "pw-201", PHONE[1])
    try:
        yield bridge
    finally:
        await bridge.stop()


def to_trunk(sent: Sent, status: int) -> list[bytes]:
    return [d for d, a in sent if a == TRUNK and is_response(d, status, "INVITE")]


def prack(provisional: bytes, rseq: str | None = None, cseq: int = 2) -> bytes:
    """The trunk's PRACK of `provisional` (its RSeq, or `rseq`), in its early dialog."""
    rack = f"{rseq or header(provisional, 'RSeq')} 1 INVITE"
    return trunk_in_dialog(
        "PRACK", cseq, 1, header(provisional, "To") or "", contact_uri(provisional), f"RAck: {rack}"
    )


def ring(bridge: InprocBridge, extra: str = REQUIRE) -> tuple[bytes, Sent]:
    """The trunk's INVITE (requiring 100rel); the phone rings. Its INVITE, and what went."""
    bridge.feed(trunk_invite(1, LINE, bridge.address, extra), TRUNK)
    [leg] = [d for d, a in bridge.take() if a == PHONE and is_request(d, "INVITE")]
    bridge.feed(respond(leg, "180 Ringing", b"ph1", RINGING), PHONE)
    return leg, bridge.take()


async def advance(bridge: InprocBridge, seconds: float) -> tuple[list[float], Sent]:
    """Move the clock; when each 180 to the trunk went again, and everything sent."""
    assert bridge.time is not None
    start, times, everything = bridge.time.now, [], []
    while bridge.time.now < start + seconds:
        sent = await bridge.advance(STEP, step=STEP)
        everything += sent
        times += [bridge.time.now - start for _ in to_trunk(sent, 180)]
    return times, everything


async def test_the_ringing_is_reliable_and_stops_at_the_prack(bridge: InprocBridge) -> None:
    leg, sent = ring(bridge)
    [ringing] = to_trunk(sent, 180)
    assert header(ringing, "Require") == "100rel"
    rseq = header(ringing, "RSeq") or ""
    assert rseq.isdigit() and 1 <= int(rseq) < 2**31
    assert header(ringing, "Content-Type") == "application/sdp"
    assert b"m=audio" in body_of(ringing)  # the engine's answer to the caller's offer
    times, _ = await advance(bridge, 4.0)
    assert times == [0.5, 1.5, 3.5]  # T1, doubling
    bridge.feed(prack(ringing), TRUNK)
    sent = bridge.take()
    assert [d for d, a in sent if a == TRUNK and is_response(d, 200, "PRACK")]
    times, _ = await advance(bridge, 10.0)
    assert times == []  # acknowledged: no more
    bridge.feed(respond(leg, "200 OK", b"ph1", ANSWER, SDP), PHONE)
    [ok] = to_trunk(bridge.take(), 200)
    assert body_of(ok) == b"" and header(ok, "Content-Type") is None  # answered in the 180
    bridge.feed(trunk_in_dialog("ACK", 1, 1, header(ok, "To") or "", contact_uri(ok)), TRUNK)
    [live] = bridge.ctx.calls.all()
    assert live.state == "answered"


async def test_an_answer_before_the_prack_waits_for_it(bridge: InprocBridge) -> None:
    leg, sent = ring(bridge)
    [ringing] = to_trunk(sent, 180)
    bridge.feed(respond(leg, "200 OK", b"ph1", ANSWER, SDP), PHONE)
    assert to_trunk(bridge.take(), 200) == []  # §3: no 2xx before the PRACK of an SDP 18x
    bridge.feed(prack(ringing), TRUNK)
    sent = bridge.take()
    [prack_ok] = [d for d, a in sent if a == TRUNK and is_response(d, 200, "PRACK")]
    [ok] = to_trunk(sent, 200)
    assert sent.index((prack_ok, TRUNK)) < sent.index((ok, TRUNK))


async def test_no_prack_refuses_the_invite_500_and_stops_the_phone(
    bridge: InprocBridge,
) -> None:
    leg, _ = ring(bridge)
    with capture_logs() as logs:
        times, sent = await advance(bridge, 33.0)
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # then 64*T1 (32 s) has passed
    refusal = to_trunk(sent, 500)[0]  # (re-sent by its transaction until an ACK)
    assert "no PRACK" in (header(refusal, "Reason") or "")
    assert any(a == PHONE and is_request(d, "CANCEL") for d, a in sent)
    assert [e for e in logs if e["event"] == "sip_no_prack"]
    bridge.feed(respond(leg, "487 Request Terminated", b"ph1", RINGING), PHONE)
    await advance(bridge, 1.0)
    assert bridge.ctx.calls.all() == []


async def test_no_prack_after_the_phone_answered_ends_both_sides(bridge: InprocBridge) -> None:
    leg, _ = ring(bridge)
    bridge.feed(respond(leg, "200 OK", b"ph1", ANSWER, SDP), PHONE)
    bridge.take()
    _, sent = await advance(bridge, 33.0)
    assert to_trunk(sent, 500) and not to_trunk(sent, 200)
    assert any(a == PHONE and is_request(d, "BYE") for d, a in sent)


@pytest.mark.parametrize(
    "wrong", [{"rseq": "1"}, {"rseq": "99999999999999999999999"}, {"rseq": "x"}]
)
async def test_a_prack_that_names_nothing_we_wait_for_is_481(
    bridge: InprocBridge, wrong: dict[str, str]
) -> None:
    _, sent = ring(bridge)
    [ringing] = to_trunk(sent, 180)
    if wrong["rseq"] == "1" and header(ringing, "RSeq") == "1":
        wrong = {"rseq": "2"}
    bridge.feed(prack(ringing, **wrong), TRUNK)
    replies = [start_line(d) for d, a in bridge.take() if a == TRUNK]
    assert replies == ["SIP/2.0 481 Call/Transaction Does Not Exist"]
    times, _ = await advance(bridge, 1.0)
    assert times == [0.5]  # still waiting for the right one
    bridge.feed(prack(ringing, cseq=3), TRUNK)
    assert [d for d, a in bridge.take() if is_response(d, 200, "PRACK")]
    bridge.feed(prack(ringing, cseq=4), TRUNK)  # again: acknowledged already
    assert [start_line(d) for d, _ in bridge.take()] == [
        "SIP/2.0 481 Call/Transaction Does Not Exist"
    ]


async def test_a_caller_that_only_supports_100rel_gets_plain_ringing(
    bridge: InprocBridge,
) -> None:
    _, sent = ring(bridge, extra="Supported: 100rel")
    [ringing] = to_trunk(sent, 180)
    assert header(ringing, "RSeq") is None and header(ringing, "Require") is None
    times, _ = await advance(bridge, 2.0)
    assert times == []


async def test_signalling_only_the_caller_gets_no_provisional_but_its_answer() -> None:
    bridge = InprocBridge(one_desk_phone_directory(LINE), media={"engine": "none"})
    await bridge.start(fake_time=True)
    try:
        assert bridge.register_phone("201", "pw-201", PHONE[1])
        leg, sent = ring(bridge)
        assert to_trunk(sent, 180) == [] and to_trunk(sent, 183) == []
        bridge.feed(respond(leg, "200 OK", b"ph1", ANSWER, SDP), PHONE)
        [ok] = to_trunk(bridge.take(), 200)
        assert body_of(ok) == SDP  # end to end, in the 2xx
    finally:
        await bridge.stop()


async def test_a_reliable_ringing_call_is_heard_both_ways(tmp_path: Path) -> None:
    """Real time, the engine's RTP: the caller PRACKs the 180 that held the answer, the agent
    answers, and each hears the other's tone."""
    bridge = InprocBridge(directory(), folder=tmp_path)
    await bridge.start()
    assert bridge.register_phone("201", "pw-201", AGENT_PHONE[1])
    call = Call(bridge)
    caller = call.phones["caller"] = Phone(g711.PCMU, 0xC1)
    try:
        message = invite(1, bridge.address, sdp_for(caller, "0 101", "trunk"))
        message = message.replace(
            b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nRequire: 100rel\r\n"
        )
        bridge.feed(message, TRUNK)
        [leg] = [d for d, a in bridge.take() if a == AGENT_PHONE and is_request(d, "INVITE")]
        bridge.feed(
            respond(leg, "180 Ringing", b"ph1", ok_extra("201", AGENT_PHONE[1])), AGENT_PHONE
        )
        [ringing] = to_trunk(bridge.take(), 180)
        call.ports["caller"] = media_port(ringing)  # the answer came in the 180
        bridge.feed(prack(ringing), TRUNK)
        agent = call.phones["agent"] = Phone(g711.PCMA, 0xA1)
        call.ports["agent"] = media_port(leg)
        answer = sdp_for(agent, "8 101")
        bridge.feed(
            respond(leg, "200 OK", b"ph1", ok_extra("201", AGENT_PHONE[1]), answer), AGENT_PHONE
        )
        [ok] = to_trunk(bridge.take(), 200)
        await call.acked_and_heard(ok, 1, {"caller": CALLER, "agent": AGENT})
    finally:
        call.close()
        await bridge.stop()


async def test_a_prack_of_no_call_or_without_rack_is_481(bridge: InprocBridge) -> None:
    stray = trunk_in_dialog("PRACK", 2, 7, "<sip:x@y>;tag=nobody", "sip:bridge@127.0.0.1")
    bridge.feed(stray, TRUNK)  # no call of ours (the To tag names none)
    assert [start_line(d) for d, _ in bridge.take()] == [
        "SIP/2.0 481 Call/Transaction Does Not Exist"
    ]
    _, sent = ring(bridge)
    [ringing] = to_trunk(sent, 180)
    no_rack = prack(ringing).replace(b"RAck: ", b"X-Not-RAck: ")
    bridge.feed(no_rack, TRUNK)
    assert [start_line(d) for d, _ in bridge.take()] == [
        "SIP/2.0 481 Call/Transaction Does Not Exist"
    ]
