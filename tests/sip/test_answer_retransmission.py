"""The caller's 200 OK is sent again until its ACK comes (RFC 3261 §13.3.1.4): at T1, then
doubling up to T2; with no ACK after 64*T1 (32 s) the call ends (`sip_no_ack` in the log, BYE
to both sides). With a fake clock, so the 32 s pass in microseconds (the SIPp test of a late
ACK, in test_sipp_calls.py, cannot wait for them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sim.phones.inproc import (
    SDP,
    TRUNK,
    InprocBridge,
    contact_uri,
    header,
    is_request,
    is_response,
    one_desk_phone_directory,
    respond,
    trunk_in_dialog,
    trunk_invite,
)
from structlog.testing import capture_logs

LINE = "+15550100"
PHONE = ("127.0.0.1", 20001)
DIRECTORY = one_desk_phone_directory(LINE)
STEP = 0.25
# When the 200 goes out again after the first one: T1 = 0.5 s doubling to T2 = 4 s.
RESENT_AT = [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]

Sent = list[tuple[bytes, tuple[str, int]]]


@pytest.fixture
async def bridge() -> AsyncIterator[InprocBridge]:
    bridge = InprocBridge(DIRECTORY, sip={"session_expires": 0})  # no session timer here
    await bridge.start(fake_time=True)
    assert bridge.register_phone("201", "pw-201", PHONE[1])
    try:
        yield bridge
    finally:
        await bridge.stop()


def answered(bridge: InprocBridge) -> bytes:
    """A trunk call the phone answers; the bridge's first 200 to the caller."""
    bridge.feed(trunk_invite(1, LINE, bridge.address), TRUNK)
    [invite] = [d for d, a in bridge.take() if a == PHONE and is_request(d, "INVITE")]
    extra = b"Contact: <sip:201@127.0.0.1:20001>\r\nContent-Type: application/sdp"
    bridge.feed(respond(invite, "200 OK", b"ph1", extra, SDP), PHONE)
    [ok] = [d for d, a in bridge.take() if a == TRUNK and is_response(d, 200, "INVITE")]
    return ok


async def oks_over(bridge: InprocBridge, seconds: float) -> tuple[list[float], Sent]:
    """Advance the clock by `seconds`; when (since the start) each 200 to the caller went out,
    and everything sent."""
    assert bridge.time is not None
    start = bridge.time.now
    times: list[float] = []
    everything: Sent = []
    end = start + seconds
    while bridge.time.now < end:
        sent = await bridge.advance(STEP, step=STEP)
        everything += sent
        times += [
            bridge.time.now - start for d, a in sent if a == TRUNK and is_response(d, 200, "INVITE")
        ]
    return times, everything


def byes(sent: Sent) -> list[tuple[str, int]]:
    """Where BYEs went, without UDP retransmissions (byte-identical datagrams)."""
    return sorted(a for d, a in dict.fromkeys(sent) if is_request(d, "BYE"))


async def test_without_an_ack_the_answer_is_resent_then_the_call_ends(
    bridge: InprocBridge,
) -> None:
    answered(bridge)
    with capture_logs() as logs:
        times, sent = await oks_over(bridge, 31.75)
        assert times == RESENT_AT
        assert byes(sent) == [] and len(bridge.ctx.calls) == 1
        assert [e for e in logs if e["event"] == "sip_no_ack"] == []
        # 64*T1 after the first 200 the bridge gives up, at its next re-send at the latest
        # (T2 = 4 s on): the call ends on both sides, and the 200 is not sent again.
        times, sent = await oks_over(bridge, 4.25)
    no_ack = [e for e in logs if e["event"] == "sip_no_ack"]
    assert len(no_ack) == 1, "the call was not given up 64*T1 after the unacknowledged 200"
    assert 32 <= no_ack[0]["waited_seconds"] <= 36
    assert times == []
    assert byes(sent) == sorted([TRUNK, PHONE])
    assert len(bridge.ctx.calls) == 0
    times, _ = await oks_over(bridge, 10)
    assert times == []


async def test_the_ack_stops_the_resending_and_the_call_goes_on(bridge: InprocBridge) -> None:
    ok = answered(bridge)
    with capture_logs() as logs:
        times, _ = await oks_over(bridge, 1.25)
        assert times == [0.5]  # once, at T1
        to, target = header(ok, "To") or "", contact_uri(ok)
        bridge.feed(trunk_in_dialog("ACK", 1, 1, to, target), TRUNK)
        times, sent = await oks_over(bridge, 60)
    assert times == []
    assert byes(sent) == []
    assert len(bridge.ctx.calls) == 1
    assert [e for e in logs if e["event"] == "sip_no_ack"] == []
