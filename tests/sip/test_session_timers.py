"""RFC 4028 session timers on bridged calls, with a fake clock: minutes pass in microseconds.

The B2BUA keeps one session timer per side (the caller's dialog and the answering phone's).
Where the peer refreshes, the bridge answers and ends the call if no refresh comes in time;
where the bridge refreshes, it sends UPDATE (or a re-INVITE repeating its SDP). A session
that dies ends the whole call: BYE to both sides.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sim.phones.inproc import (
    SDP,
    TRUNK,
    TRUNK_SDP,
    InprocBridge,
    body_of,
    contact_uri,
    header,
    is_request,
    is_response,
    one_desk_phone_directory,
    respond,
    trunk_in_dialog,
    trunk_invite,
)

LINE = "+15550100"
PHONE = ("127.0.0.1", 20001)
DIRECTORY = one_desk_phone_directory(LINE)


@pytest.fixture
async def bridge() -> AsyncIterator[InprocBridge]:
    bridge = InprocBridge(DIRECTORY)
    await bridge.start(fake_time=True)
    assert bridge.register_phone("201", "pw-201", PHONE[1])
    try:
        yield bridge
    finally:
        await bridge.stop()


class Call:
    """One trunk call answered by the phone, as seen from both peers."""

    def __init__(self, bridge: InprocBridge, n: int = 1) -> None:
        self.bridge = bridge
        self.n = n
        self.cseq = 1
        self.phone_invite = b""
        self.ok = b""  # the bridge's 200 to the trunk

    def place(
        self,
        trunk_headers: str = "",
        phone_headers: str = "",
        phone_allow: str = "INVITE, ACK, CANCEL, BYE",
    ) -> None:
        bridge = self.bridge
        bridge.feed(trunk_invite(self.n, LINE, bridge.address, trunk_headers), TRUNK)
        self.phone_invite = only(bridge.take(), lambda d, a: is_request(d, "INVITE"), PHONE)
        self.answer_phone(self.phone_invite, phone_headers, phone_allow)

    def answer_phone(
        self, invite: bytes, phone_headers: str = "", allow: str = "INVITE, ACK, CANCEL, BYE"
    ) -> None:
        bridge = self.bridge
        extra = f"Contact: <sip:201@{PHONE[0]}:{PHONE[1]}>\r\nAllow: {allow}\r\n"
        extra += "".join(f"{h}\r\n" for h in phone_headers.split("\n") if h)
        extra += "Content-Type: application/sdp"
        bridge.feed(respond(invite, "200 OK", b"ph1", extra.encode(), SDP), PHONE)
        sent = bridge.take()
        assert any(is_request(d, "ACK") and a == PHONE for d, a in sent)
        self.ok = only(sent, lambda d, a: is_response(d, 200, "INVITE"), TRUNK)
        self.to, self.target = header(self.ok, "To") or "", contact_uri(self.ok)
        bridge.feed(trunk_in_dialog("ACK", 1, self.n, self.to, self.target), TRUNK)
        assert bridge.take() == []

    def trunk_request(self, method: str, extra: str = "", body: bytes = b"") -> None:
        self.cseq += 1
        self.bridge.feed(
            trunk_in_dialog(method, self.cseq, self.n, self.to, self.target, extra, body), TRUNK
        )


def unique(sent: list[tuple[bytes, tuple[str, int]]]) -> list[tuple[bytes, tuple[str, int]]]:
    """Without UDP retransmissions (byte-identical datagrams to the same peer)."""
    return list(dict.fromkeys(sent))


def only(sent: list[tuple[bytes, tuple[str, int]]], wanted, to: tuple[str, int]) -> bytes:
    found = [(d, a) for d, a in unique(sent) if wanted(d, a)]
    assert len(found) == 1, [d.split(b"\r\n", 1)[0] for d, _ in sent]
    assert found[0][1] == to
    return found[0][0]


def requests(sent: list[tuple[bytes, tuple[str, int]]], method: str) -> list[tuple[bytes, tuple]]:
    return [(d, a) for d, a in unique(sent) if is_request(d, method)]


async def test_timers_are_offered_to_the_phone_and_granted_to_the_caller(bridge) -> None:
    call = Call(bridge)
    call.place("Supported: timer\nSession-Expires: 120;refresher=uac")
    # The phone is asked for the caller's interval, refresher left to it (RFC 4028 §7.1).
    assert header(call.phone_invite, "Session-Expires") == "120"
    assert header(call.phone_invite, "Min-SE") == "90"
    assert "timer" in (header(call.phone_invite, "Supported") or "")
    # The caller keeps refreshing, and must know it (§9: Require: timer).
    assert header(call.ok, "Session-Expires") == "120;refresher=uac"
    assert header(call.ok, "Require") == "timer"


async def test_caller_refreshes_with_update_answered_by_the_bridge(bridge) -> None:
    call = Call(bridge)
    call.place("Supported: timer\nSession-Expires: 120;refresher=uac")
    sent = await bridge.advance(59)
    assert requests(sent, "UPDATE") == [] and requests(sent, "BYE") == []
    call.trunk_request("UPDATE", "Supported: timer\nSession-Expires: 120;refresher=uac")
    sent = bridge.take()
    ok = only(sent, lambda d, a: is_response(d, 200, "UPDATE"), TRUNK)
    assert header(ok, "Session-Expires") == "120;refresher=uac"
    assert [a for _, a in sent] == [TRUNK], "a body-less UPDATE is not relayed to the phone"


async def test_bridge_refreshes_a_phone_without_timer_support_with_its_own_sdp(bridge) -> None:
    call = Call(bridge)
    # The phone's 200 has no Session-Expires (and no UPDATE in Allow): the bridge, its UAC,
    # refreshes alone (§7.2) at half the interval, with a re-INVITE repeating its SDP.
    call.place("Supported: timer\nSession-Expires: 120;refresher=uac")
    call.trunk_request("UPDATE", "Supported: timer\nSession-Expires: 120;refresher=uac")
    bridge.take()
    sent = await bridge.advance(61)
    reinvite = only(sent, lambda d, a: is_request(d, "INVITE"), PHONE)
    assert body_of(reinvite) == body_of(call.phone_invite)  # the SDP it was offered
    assert header(reinvite, "CSeq") == "2 INVITE"
    assert (header(reinvite, "Session-Expires") or "").startswith("120;refresher=uac")
    bridge.feed(respond(reinvite, "200 OK", None, b"Content-Type: application/sdp", SDP), PHONE)
    ack = only(bridge.take(), lambda d, a: is_request(d, "ACK"), PHONE)
    assert header(ack, "CSeq") == "2 ACK"
    assert len(bridge.ctx.calls) == 1


async def test_no_refresh_from_the_caller_ends_the_call_on_both_sides(bridge) -> None:
    call = Call(bridge)
    call.place("Supported: timer\nSession-Expires: 120;refresher=uac")
    # The caller (refresher) never refreshes: the bridge sends BYE at expiry minus
    # min(32 s, interval/3) (§10) = 88 s, to both sides.
    sent = await bridge.advance(87)
    assert requests(sent, "BYE") == []
    sent += await bridge.advance(2)
    byes = requests(sent, "BYE")
    assert sorted(a for _, a in byes) == sorted([TRUNK, PHONE])
    assert len(bridge.ctx.calls) == 0
    timeouts = bridge.ctx.metrics.sip_session_timeouts.labels(reason="expired")
    assert timeouts._value.get() == 1


async def test_caller_without_timer_support_is_refreshed_by_the_bridge(bridge) -> None:
    call = Call(bridge)
    call.place()  # no Supported: timer, no Session-Expires: the bridge inserts its own
    assert header(call.ok, "Session-Expires") == "1800;refresher=uas"
    assert header(call.ok, "Require") is None
    sent = await bridge.advance(899)
    assert requests(sent, "INVITE") == [] or all(a == PHONE for _, a in requests(sent, "INVITE"))
    sent = await bridge.advance(2)
    reinvite = only(sent, lambda d, a: is_request(d, "INVITE") and a == TRUNK, TRUNK)
    assert body_of(reinvite) == body_of(call.ok), "the caller gets the SDP it was answered with"
    bridge.feed(
        respond(reinvite, "200 OK", None, b"Content-Type: application/sdp", TRUNK_SDP), TRUNK
    )
    assert [a for d, a in bridge.take() if is_request(d, "ACK")] == [TRUNK]
    assert len(bridge.ctx.calls) == 1


async def test_update_is_used_when_the_peer_allows_it(bridge) -> None:
    call = Call(bridge)
    call.place("Allow: INVITE, ACK, CANCEL, BYE, UPDATE")
    sent = await bridge.advance(901)
    update = only(sent, lambda d, a: is_request(d, "UPDATE") and a == TRUNK, TRUNK)
    assert body_of(update) == b""
    # We refresh and send the request: we are its UAC, so refresher=uac (§7.4).
    assert header(update, "Session-Expires") == "1800;refresher=uac"
    bridge.feed(respond(update, "200 OK", None, b"Session-Expires: 1800;refresher=uas"), TRUNK)
    assert bridge.take() == []
    assert len(bridge.ctx.calls) == 1


async def test_a_refresh_answered_481_ends_the_call(bridge) -> None:
    call = Call(bridge)
    call.place()
    sent = await bridge.advance(901)
    reinvite = only(sent, lambda d, a: is_request(d, "INVITE") and a == TRUNK, TRUNK)
    bridge.feed(respond(reinvite, "481 Call/Transaction Does Not Exist", None), TRUNK)
    sent = bridge.take()
    assert PHONE in [a for _, a in requests(sent, "BYE")]
    assert len(bridge.ctx.calls) == 0
    failed = bridge.ctx.metrics.sip_session_timeouts.labels(reason="refresh_failed")
    assert failed._value.get() == 1


async def test_phone_that_refreshes_itself_is_answered_and_watched(bridge) -> None:
    call = Call(bridge)
    call.place(
        "Supported: timer\nSession-Expires: 7200;refresher=uac",  # the caller: long, its own
        phone_headers="Session-Expires: 1800;refresher=uas\nRequire: timer",
    )
    # The phone refreshes its side; it says so in its 200. At 900 s it sends an UPDATE.
    sent = await bridge.advance(900)
    assert all(a != PHONE for d, a in sent if not is_response(d, 200))
    bridge.feed(
        b"UPDATE sip:bridge@" + bridge.address.encode() + b" SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:20001;branch=z9hG4bK-ph-up1\r\n"
        + b"From: "
        + (header(call.phone_invite, "To") or "").encode()
        + b";tag=ph1\r\n"
        + b"To: "
        + (header(call.phone_invite, "From") or "").encode()
        + b"\r\n"
        + b"Call-ID: "
        + (header(call.phone_invite, "Call-ID") or "").encode()
        + b"\r\n"
        b"CSeq: 10 UPDATE\r\nContact: <sip:201@127.0.0.1:20001>\r\n"
        # The phone sends it, as the UAC of the UPDATE: it stays the refresher (§7.4).
        b"Session-Expires: 1800;refresher=uac\r\nContent-Length: 0\r\n\r\n",
        PHONE,
    )
    sent = bridge.take()
    ok = only(sent, lambda d, a: is_response(d, 200, "UPDATE"), PHONE)
    assert header(ok, "Session-Expires") == "1800;refresher=uac"
    assert header(ok, "Require") == "timer"
    # Without a further refresh the phone's session expires (1800 - 32 s after its UPDATE).
    sent = await bridge.advance(1760)
    assert requests(sent, "BYE") == []
    sent = await bridge.advance(10)
    assert sorted(a for _, a in requests(sent, "BYE")) == sorted([TRUNK, PHONE])
    assert len(bridge.ctx.calls) == 0


async def test_too_short_an_interval_gets_422_with_our_min_se(bridge) -> None:
    bridge.feed(trunk_invite(7, LINE, bridge.address, "Session-Expires: 30"), TRUNK)
    sent = bridge.take()
    refused = only(sent, lambda d, a: is_response(d, 422), TRUNK)
    assert header(refused, "Min-SE") == "90"
    assert ";tag=" in (header(refused, "To") or "")
    assert requests(sent, "INVITE") == []


async def test_a_malformed_session_expires_gets_400_naming_it(bridge) -> None:
    bridge.feed(trunk_invite(9, LINE, bridge.address, "Session-Expires: soon"), TRUNK)
    sent = bridge.take()
    refused = only(sent, lambda d, a: is_response(d, 400), TRUNK)
    assert "Session-Expires" in refused.split(b"\r\n", 1)[0].decode()
    assert ";tag=" in (header(refused, "To") or "")
    assert requests(sent, "INVITE") == []
    assert len(bridge.ctx.calls) == 0


async def test_a_phone_asking_for_a_longer_interval_is_asked_again(bridge) -> None:
    bridge.feed(trunk_invite(8, LINE, bridge.address), TRUNK)
    invite = only(bridge.take(), lambda d, a: is_request(d, "INVITE"), PHONE)
    bridge.feed(respond(invite, "422 Session Interval Too Small", b"ph8", b"Min-SE: 3600"), PHONE)
    sent = bridge.take()
    again = only(sent, lambda d, a: is_request(d, "INVITE"), PHONE)
    assert header(again, "Session-Expires") == "3600"
    assert header(again, "CSeq") == "2 INVITE"
    assert header(again, "Via") != header(invite, "Via")
    assert [a for d, a in sent if is_response(d, 422)] == []  # not passed to the caller


@pytest.fixture
async def passthrough() -> AsyncIterator[InprocBridge]:
    """A bridge without the media engine: in-dialog re-INVITEs go to the other side."""
    bridge = InprocBridge(DIRECTORY, media={"engine": "none"})
    await bridge.start(fake_time=True)
    assert bridge.register_phone("201", "pw-201", PHONE[1])
    try:
        yield bridge
    finally:
        await bridge.stop()


async def test_relayed_reinvite_carries_each_sides_own_timer(passthrough) -> None:
    bridge = passthrough
    call = Call(bridge)
    call.place(
        "Supported: timer\nSession-Expires: 120;refresher=uac",
        phone_headers="Session-Expires: 120;refresher=uas\nRequire: timer",
    )
    hold = TRUNK_SDP.replace(b"t=0 0\r\n", b"t=0 0\r\na=sendonly\r\n")
    call.trunk_request("INVITE", "Supported: timer\nSession-Expires: 120;refresher=uac", hold)
    relayed = only(bridge.take(), lambda d, a: is_request(d, "INVITE"), PHONE)
    assert body_of(relayed) == hold
    # The phone refreshes its side: the relayed request keeps it the refresher (§7.4).
    assert header(relayed, "Session-Expires") == "120;refresher=uas"
    bridge.feed(
        respond(
            relayed,
            "200 OK",
            None,
            b"Session-Expires: 120;refresher=uas\r\nRequire: timer\r\n"
            b"Content-Type: application/sdp",
            SDP,
        ),
        PHONE,
    )
    sent = bridge.take()
    ok = only(sent, lambda d, a: is_response(d, 200, "INVITE"), TRUNK)
    assert header(ok, "Session-Expires") == "120;refresher=uac"
    # Both sides were refreshed by it: nothing expires 88 s after the call was set up.
    sent = await bridge.advance(87)
    assert requests(sent, "BYE") == []


async def test_no_timer_of_our_own_when_session_expires_is_0() -> None:
    bridge = InprocBridge(DIRECTORY, sip={"session_expires": 0})
    await bridge.start(fake_time=True)
    try:
        assert bridge.register_phone("201", "pw-201", PHONE[1])
        call = Call(bridge)
        call.place()
        assert header(call.phone_invite, "Session-Expires") is None
        assert header(call.phone_invite, "Supported") == "timer"
        assert header(call.ok, "Session-Expires") is None
        sent = await bridge.advance(7200, step=30)
        assert requests(sent, "INVITE") == [] and requests(sent, "BYE") == []
        assert len(bridge.ctx.calls) == 1
    finally:
        await bridge.stop()
