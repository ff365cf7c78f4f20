"""A desk phone or softphone that moves during a call (Wi-Fi to mobile data, a NAT binding
that changed) sends a re-INVITE (or UPDATE) from its new address with a new Contact (RFC 3261
§12.2: a target refresh). Our requests on its leg went on to the address it was rung at (its
REGISTER's flow), so the BYE when the caller hung up never reached it and the agent's phone
stayed in the call. Now they go where the phone sends from, as its REGISTER's flow did.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sim.phones.inproc import (
    DESK_ANSWER,
    DESK_PHONE,
    SDP,
    TRUNK,
    InprocBridge,
    contact_uri,
    header,
    is_request,
    is_response,
    one_desk_phone_directory,
    respond,
    signalling_bridge,
    trunk_in_dialog,
    trunk_invite,
)
from structlog.testing import capture_logs

LINE = "+15550100"
MOVED = ("127.0.0.1", 20009)


@pytest.fixture
async def bridge() -> AsyncIterator[InprocBridge]:
    async with signalling_bridge(LINE) as bridge:
        yield bridge


def answered(bridge: InprocBridge) -> tuple[bytes, bytes]:
    """The trunk's call, answered by the desk phone and ACKed: our INVITE to it, our 200."""
    bridge.feed(trunk_invite(1, LINE, bridge.address), TRUNK)
    [leg] = [d for d, a in bridge.take() if a == DESK_PHONE and is_request(d, "INVITE")]
    bridge.feed(respond(leg, "200 OK", b"ph1", DESK_ANSWER, SDP), DESK_PHONE)
    [ok] = [d for d, a in bridge.take() if a == TRUNK and is_response(d, 200, "INVITE")]
    bridge.feed(trunk_in_dialog("ACK", 1, 1, header(ok, "To") or "", contact_uri(ok)), TRUNK)
    bridge.take()
    return leg, ok


def phone_request(leg: bytes, method: str, cseq: int, at: tuple[str, int]) -> bytes:
    """The phone's target refresh from `at`, naming `at` as its Contact."""
    body = SDP.replace(b"o=phone 1 1", f"o=phone 1 {cseq}".encode())
    return (
        f"{method} {contact_uri(leg)} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {at[0]}:{at[1]};branch=z9hG4bK-mv{cseq};rport\r\n"
        f"From: {header(leg, 'To')};tag=ph1\r\nTo: {header(leg, 'From')}\r\n"
        f"Call-ID: {header(leg, 'Call-ID')}\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: <sip:201@{at[0]}:{at[1]}>\r\nMax-Forwards: 70\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize("method", ["INVITE", "UPDATE"])
async def test_after_the_phone_moves_our_bye_follows_it(bridge: InprocBridge, method: str) -> None:
    leg, ok = answered(bridge)
    with capture_logs() as logs:
        bridge.feed(phone_request(leg, method, 2, MOVED), MOVED)
        relayed = [d for d, a in bridge.take() if a == TRUNK and is_request(d, method)]
    assert [e for e in logs if e["event"] == "sip_leg_moved"]
    # (signalling only: the re-INVITE or UPDATE goes on to the trunk; its 200 comes back)
    [out] = relayed
    bridge.feed(respond(out, "200 OK", None, b"Content-Type: application/sdp", SDP), TRUNK)
    bridge.take()
    bridge.feed(trunk_in_dialog("BYE", 2, 1, header(ok, "To") or "", contact_uri(ok)), TRUNK)
    [(bye, where)] = [(d, a) for d, a in bridge.take() if is_request(d, "BYE")]
    assert where == MOVED
    assert bye.startswith(f"BYE sip:201@{MOVED[0]}:{MOVED[1]}".encode())


async def test_a_refresh_from_where_it_was_changes_nothing(bridge: InprocBridge) -> None:
    leg, _ = answered(bridge)
    with capture_logs() as logs:
        bridge.feed(phone_request(leg, "INVITE", 2, DESK_PHONE), DESK_PHONE)
        bridge.take()
    assert not [e for e in logs if e["event"] == "sip_leg_moved"]


async def test_with_the_engine_the_moved_phone_gets_the_bye_too() -> None:
    """Anchored (the default): the engine answers the phone's re-INVITE itself."""
    bridge = InprocBridge(one_desk_phone_directory(LINE), sip={"session_expires": 0})
    await bridge.start(fake_time=True)
    try:
        assert bridge.register_phone("201", "pw-201", DESK_PHONE[1])
        leg, ok = answered(bridge)
        bridge.feed(phone_request(leg, "INVITE", 2, MOVED), MOVED)
        [answer] = [d for d, a in bridge.take() if a == MOVED and is_response(d, 200, "INVITE")]
        bridge.feed(trunk_in_dialog("BYE", 2, 1, header(ok, "To") or "", contact_uri(ok)), TRUNK)
        assert [a for d, a in bridge.take() if is_request(d, "BYE")] == [MOVED]
        assert b"m=audio" in answer  # (the engine's own answer, the same port)
    finally:
        await bridge.stop()
