"""Values from peers that once crashed a handler, each answered now as what it is.

- an SDP connection address that is not an IP address (a name the IDNA codec refuses, or
  any name: it was looked up on the event loop): 488, and the media leg it had taken freed;
- a Via port or a CSeq number of thousands of digits (`int()` refuses more than 4,300):
  400, or matched as its value;
- the provider granting our registration a lifetime of thousands of digits, or none.
"""

from __future__ import annotations

from typing import Any

import pytest
from sim.phones.inproc import (
    SDP,
    TRUNK,
    TRUNK_SDP,
    InprocBridge,
    is_request,
    one_desk_phone_directory,
    respond,
    trunk_invite,
)

from bridge.media.endpoint import resolve
from bridge.sip.dialog import ViaSpec
from bridge.sip.model import Headers, SipResponse
from bridge.sip.trunk import RETRY_SECONDS, TrunkAccount, TrunkRegistration

LINE = "+15550100"
PHONE = ("127.0.0.1", 20001)


def with_sdp(invite: bytes, old: bytes, new: bytes) -> bytes:
    length = f"Content-Length: {len(old)}".encode()
    return invite.replace(old, new).replace(length, f"Content-Length: {len(new)}".encode())


async def started() -> InprocBridge:
    bridge = InprocBridge(one_desk_phone_directory(LINE))
    await bridge.start()
    assert bridge.register_phone("201", "pw-201", PHONE[1])
    return bridge


def firsts(sent: list[tuple[bytes, Any]]) -> list[bytes]:
    return [data.split(b"\r\n")[0] for data, _ in sent]


@pytest.mark.parametrize("host", [b"a" * 64, b"a..b", b".", b"pbx.example.com"])
async def test_a_media_address_that_is_not_an_ip_gets_488_and_frees_its_leg(host: bytes) -> None:
    bridge = await started()
    try:
        media = bridge.ctx.sip.media
        for n in range(3):  # (a leg a refusal kept would pile up, one per call)
            sdp = TRUNK_SDP.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 " + host)
            invite = with_sdp(trunk_invite(n + 1, LINE, bridge.address), TRUNK_SDP, sdp)
            bridge.feed(invite, TRUNK)
            assert firsts(bridge.take()) == [b"SIP/2.0 488 Not Acceptable Here"]
        assert media.anchored_calls == 0 and media.legs == 0
        assert len(bridge.ctx.calls) == 0
    finally:
        await bridge.stop()


async def test_a_phone_answering_with_a_name_as_its_media_address_is_hung_up() -> None:
    bridge = await started()
    try:
        bridge.feed(trunk_invite(1, LINE, bridge.address), TRUNK)
        [leg] = [data for data, _ in bridge.take() if is_request(data, "INVITE")]
        sdp = SDP.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 " + b"a" * 64)
        contact = f"Contact: <sip:201@{PHONE[0]}:{PHONE[1]}>\r\nContent-Type: application/sdp"
        bridge.feed(respond(leg, "200 OK", b"ph1", contact.encode(), sdp), PHONE)
        sent = firsts(bridge.take())
        # the phone's answer is ACKed and hung up; the caller is not left waiting
        phone = b" sip:201@127.0.0.1:20001 SIP/2.0"
        assert sent[:2] == [b"ACK" + phone, b"BYE" + phone]
        assert any(line.startswith(b"SIP/2.0 4") for line in sent[2:]), sent
        assert len(bridge.ctx.calls) == 0
    finally:
        await bridge.stop()


def test_resolve_takes_addresses_only() -> None:
    assert resolve("127.0.0.1", 4000) == ("127.0.0.1", 4000)
    assert resolve("::1", 4000) == ("::1", 4000)
    for host in ("localhost", "a" * 64, "a..b", ".", "pbx.example.com"):
        with pytest.raises(OSError, match="not an IP address"):
            resolve(host, 4000)


async def test_thousands_of_digits_in_a_via_port_or_a_cseq_are_answered() -> None:
    bridge = await started()
    try:
        invite = trunk_invite(1, LINE, bridge.address)
        via = invite.split(b"\r\n")[1]
        # A Via port of 5,000 digits (no rport): 400, it was dropped with a traceback.
        port = via.replace(b"127.0.0.1:5070", b"127.0.0.1:" + b"9" * 5000).replace(b";rport", b"")
        bridge.feed(invite.replace(via, port, 1), TRUNK)
        assert firsts(bridge.take()) == [b"SIP/2.0 400 Bad Request (malformed Via)"]
        # A CSeq of 5,000 leading zeros and an RFC 2543 branch (matched by its CSeq): the
        # number it stands for, the call goes on. It raised before the gate.
        old = invite.replace(b"CSeq: 1 INVITE", b"CSeq: " + b"0" * 5000 + b"1 INVITE")
        old = old.replace(b"branch=z9hG4bK-t1", b"branch=old-style-1")
        bridge.feed(old, TRUNK)
        [leg] = [data for data, _ in bridge.take() if is_request(data, "INVITE")]
        # The phone's response with such a CSeq is matched too (it was dropped).
        ringing = respond(leg, "180 Ringing", b"ph1")
        number = ringing.split(b"CSeq: ", 1)[1].split(b" ", 1)[0]
        bridge.feed(ringing.replace(b"CSeq: " + number, b"CSeq: " + b"0" * 5000 + number), PHONE)
        assert b"SIP/2.0 180 Ringing" in firsts(bridge.take())
    finally:
        await bridge.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.scheduled: list[tuple[float, Any]] = []

    def schedule(self, when: float, callback: Any) -> object:
        self.scheduled.append((when, callback))
        return object()


def registration(clock: Clock, sent: list[Any]) -> TrunkRegistration:
    account = TrunkAccount(
        "provider.example", ("192.0.2.1", 5060), "udp", "acct", "secret", expires=600
    )
    return TrunkRegistration(
        account,
        send_request=lambda request, destination, transport: sent.append(request) or "t1",
        local=lambda transport: ViaSpec("192.0.2.9:5060", "UDP"),
        schedule=clock.schedule,
        clock=lambda: clock.now,
    )


def ok(request: Any, contact_expires: str) -> SipResponse:
    headers = Headers(
        [(name, request.headers.get(name)) for name in ("Via", "From", "To", "Call-ID", "CSeq")]
    )
    headers.add("Contact", f"<sip:acct@192.0.2.9:5060>;expires={contact_expires}")
    return SipResponse(200, "OK", headers)


@pytest.mark.parametrize("granted", ["9" * 5000, "9" * 400])
def test_a_huge_lifetime_from_the_provider_is_taken_as_what_we_asked(granted: str) -> None:
    """5,000 digits raised ValueError, 400 made `now + granted` overflow: either way the
    registration stayed pending and was never refreshed or retried."""
    clock, sent = Clock(), []
    trunk = registration(clock, sent)
    trunk.start()
    trunk.response(ok(sent[-1], granted))
    assert trunk.state == "registered" and trunk.expires_at == clock.now + 600
    assert [when for when, _ in clock.scheduled] == [clock.now + 480]  # refreshed at 80 %


def test_no_lifetime_granted_is_a_failure_retried_later() -> None:
    """expires=0 would refresh at once, in a tight loop of REGISTERs."""
    clock, sent = Clock(), []
    trunk = registration(clock, sent)
    trunk.start()
    trunk.response(ok(sent[-1], "0"))
    assert trunk.state == "failed" and "no time granted" in (trunk.last_error or "")
    assert [when for when, _ in clock.scheduled] == [clock.now + RETRY_SECONDS]
