"""Answers RFC 3261 asks for that were missing (found by an audit, each failing before):

- our 200 to a re-INVITE is re-sent until its ACK (§13.3.1.4), both with the media engine
  answering and with the re-INVITE relayed to the phone;
- a second 200 from another fork of a leg is ACKed in its own dialog and hung up (§13.2.2.4);
- a 200 that crosses our CANCEL, after the call is over, is ACKed and hung up (§15);
- a re-INVITE of no dialog of ours gets 481 (§12.2.2), not 480;
- a relayed re-INVITE still unanswered is CANCELled when the trunk CANCELs it (it got 481),
  and answered 487 and CANCELled when the call ends (408 after 32 s, re-sent to a phone
  already sent a BYE).
"""

from __future__ import annotations

from typing import Any

import pytest
from sim.phones.inproc import (
    SDP,
    TRUNK,
    TRUNK_SDP,
    InprocBridge,
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

LINE = "+15550100"
PHONE = ("127.0.0.1", 20001)
ANSWER = b"Contact: <sip:201@127.0.0.1:20001>\r\nContent-Type: application/sdp"


async def started(engine: str = "embedded") -> InprocBridge:
    bridge = InprocBridge(one_desk_phone_directory(LINE), media={"engine": engine})
    await bridge.start(fake_time=True)
    assert bridge.register_phone("201", "pw-201", PHONE[1])
    return bridge


def answered_call(bridge: InprocBridge) -> tuple[str, str]:
    """A trunk call the phone answered and the trunk ACKed: (the trunk's To, our Contact)."""
    bridge.feed(trunk_invite(1, LINE, bridge.address), TRUNK)
    [leg] = [data for data, _ in bridge.take() if is_request(data, "INVITE")]
    bridge.feed(respond(leg, "200 OK", b"ph1", ANSWER, SDP), PHONE)
    [ok] = [d for d, a in bridge.take() if is_response(d, 200, "INVITE") and a == TRUNK]
    to, target = header(ok, "To") or "", contact_uri(ok)
    bridge.feed(trunk_in_dialog("ACK", 1, 1, to, target), TRUNK)
    bridge.take()
    return to, target


def oks_to_trunk(sent: list[tuple[bytes, Any]]) -> int:
    return sum(1 for d, a in sent if a == TRUNK and is_response(d, 200, "INVITE"))


@pytest.mark.parametrize("engine", ["embedded", "none"])
async def test_our_200_to_a_reinvite_is_re_sent_until_its_ack(engine: str) -> None:
    bridge = await started(engine)
    try:
        to, target = answered_call(bridge)
        sdp = TRUNK_SDP.replace(b"o=trunk 1 1", b"o=trunk 1 2")
        bridge.feed(trunk_in_dialog("INVITE", 2, 1, to, target, body=sdp), TRUNK)
        sent = bridge.take()
        if engine == "none":  # relayed: the phone answers it first
            [relayed] = [d for d, a in sent if a == PHONE and is_request(d, "INVITE")]
            bridge.feed(respond(relayed, "200 OK", None, ANSWER, SDP), PHONE)
            sent = bridge.take()
        assert oks_to_trunk(sent) == 1
        again = await bridge.advance(2.0)  # re-sent at 0.5, 1.5 s (T1 doubling)
        assert oks_to_trunk(again) == 2, [start_line(d) for d, _ in again]
        bridge.feed(trunk_in_dialog("ACK", 2, 1, to, target), TRUNK)
        bridge.take()
        assert oks_to_trunk(await bridge.advance(10.0)) == 0
    finally:
        await bridge.stop()


async def test_a_second_fork_answering_is_acked_in_its_dialog_and_hung_up() -> None:
    bridge = await started()
    try:
        bridge.feed(trunk_invite(1, LINE, bridge.address), TRUNK)
        [leg] = [data for data, _ in bridge.take() if is_request(data, "INVITE")]
        bridge.feed(respond(leg, "200 OK", b"ph1", ANSWER, SDP), PHONE)
        bridge.take()
        bridge.feed(respond(leg, "200 OK", b"ph2", ANSWER, SDP), PHONE)
        sent = [d for d, a in bridge.take() if a == PHONE]
        ack = [d for d in sent if is_request(d, "ACK")]
        bye = [d for d in sent if is_request(d, "BYE")]
        assert len(ack) == 1 and (header(ack[0], "To") or "").endswith(";tag=ph2")
        assert len(bye) == 1 and (header(bye[0], "To") or "").endswith(";tag=ph2")
        # the first fork's call goes on: a retransmission of its 200 is only ACKed again
        bridge.feed(respond(leg, "200 OK", b"ph1", ANSWER, SDP), PHONE)
        again = [d for d, a in bridge.take() if a == PHONE]
        assert [start_line(d).split()[0] for d in again] == ["ACK"]
        assert (header(again[0], "To") or "").endswith(";tag=ph1")
    finally:
        await bridge.stop()


async def test_a_200_that_crosses_our_cancel_is_acked_and_hung_up() -> None:
    bridge = await started()
    try:
        invite = trunk_invite(1, LINE, bridge.address)
        bridge.feed(invite, TRUNK)
        [leg] = [data for data, _ in bridge.take() if is_request(data, "INVITE")]
        bridge.feed(respond(leg, "180 Ringing", b"ph1"), PHONE)
        bridge.take()
        cancel = (
            invite.split(b"\r\n\r\n")[0]
            .replace(b"INVITE sip:", b"CANCEL sip:", 1)
            .replace(b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
        )
        cancel = b"\r\n".join(
            line for line in cancel.split(b"\r\n") if not line.startswith((b"Content-", b"Contact"))
        )
        bridge.feed(cancel + b"\r\nContent-Length: 0\r\n\r\n", TRUNK)
        sent = bridge.take()
        assert any(a == PHONE and is_request(d, "CANCEL") for d, a in sent)
        assert len(bridge.ctx.calls) == 0
        # the phone had answered already: its 200 arrives after the call is over
        bridge.feed(respond(leg, "200 OK", b"ph1", ANSWER, SDP), PHONE)
        late = [d for d, a in bridge.take() if a == PHONE]
        assert [start_line(d).split()[0] for d in late] == ["ACK", "BYE"]
        assert all((header(d, "To") or "").endswith(";tag=ph1") for d in late)
    finally:
        await bridge.stop()


async def test_a_reinvite_of_no_dialog_gets_481() -> None:
    bridge = await started()
    try:
        _, target = answered_call(bridge)
        stranger = "<sip:+15550100@127.0.0.1>;tag=nope"
        bridge.feed(trunk_in_dialog("INVITE", 2, 1, stranger, target, body=TRUNK_SDP), TRUNK)
        answers = [start_line(d) for d, a in bridge.take() if a == TRUNK]
        assert answers == ["SIP/2.0 481 Call/Transaction Does Not Exist"]
    finally:
        await bridge.stop()


def relayed_reinvite(bridge: InprocBridge) -> tuple[str, str, bytes, bytes]:
    """Signalling only: a trunk re-INVITE relayed to the phone, which has not answered it.
    (the trunk's To, our Contact, the trunk's re-INVITE, what the phone got)"""
    to, target = answered_call(bridge)
    sdp = TRUNK_SDP.replace(b"o=trunk 1 1", b"o=trunk 1 2")
    reinvite = trunk_in_dialog("INVITE", 2, 1, to, target, body=sdp)
    bridge.feed(reinvite, TRUNK)
    [relayed] = [d for d, a in bridge.take() if a == PHONE and is_request(d, "INVITE")]
    return to, target, reinvite, relayed


async def test_a_cancel_of_a_relayed_reinvite_is_passed_on() -> None:
    bridge = await started("none")
    try:
        _, _, reinvite, relayed = relayed_reinvite(bridge)
        head = reinvite.split(b"\r\n\r\n")[0]
        head = head.replace(b"INVITE sip:", b"CANCEL sip:", 1)
        head = head.replace(b"CSeq: 2 INVITE", b"CSeq: 2 CANCEL")
        cancel = b"\r\n".join(
            line for line in head.split(b"\r\n") if not line.startswith((b"Content-", b"Contact"))
        )
        bridge.feed(cancel + b"\r\nContent-Length: 0\r\n\r\n", TRUNK)
        sent = bridge.take()
        assert [start_line(d) for d, a in sent if a == TRUNK] == ["SIP/2.0 200 OK"]
        [passed] = [d for d, a in sent if a == PHONE and is_request(d, "CANCEL")]
        assert header(passed, "Call-ID") == header(relayed, "Call-ID")
        # the phone ends its re-INVITE: the 487 goes back to the trunk's
        bridge.feed(respond(relayed, "487 Request Terminated", b"ph1"), PHONE)
        back = [d for d, a in bridge.take() if a == TRUNK]
        assert [start_line(d) for d in back] == ["SIP/2.0 487 Request Terminated"]
        assert (header(back[0], "CSeq") or "") == "2 INVITE"
    finally:
        await bridge.stop()


async def test_the_call_ending_answers_and_cancels_a_relayed_reinvite() -> None:
    bridge = await started("none")
    try:
        to, target, _, relayed = relayed_reinvite(bridge)
        bridge.feed(trunk_in_dialog("BYE", 3, 1, to, target), TRUNK)
        sent = bridge.take()
        to_trunk = sorted(f"{start_line(d)} {header(d, 'CSeq')}" for d, a in sent if a == TRUNK)
        assert to_trunk == ["SIP/2.0 200 OK 3 BYE", "SIP/2.0 487 Request Terminated 2 INVITE"]
        to_phone = [start_line(d).split()[0] for d, a in sent if a == PHONE]
        assert sorted(to_phone) == ["BYE", "CANCEL"]
        # once the phone ends it, the relayed re-INVITE is not sent again
        bridge.feed(respond(relayed, "487 Request Terminated", b"ph1"), PHONE)
        bridge.take()
        later = await bridge.advance(5.0)
        assert not [d for d, a in later if a == PHONE and is_request(d, "INVITE")]
    finally:
        await bridge.stop()
