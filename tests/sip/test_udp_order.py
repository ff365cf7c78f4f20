"""Work in hand first (bridge.sip.transport._Udp): of the datagrams read in one loop pass,
those that finish work under way (responses, BYE, ACK, other requests) are handled as read,
new INVITEs and REGISTERs (and CANCELs, in order with them) right after the pass. After a
stall the BYEs queued behind new calls then free their users before the new calls are
routed."""

from __future__ import annotations

import asyncio
import socket
import time

import uvloop

from bridge.sip.model import SipRequest
from bridge.sip.transaction import NewRequest
from bridge.sip.transport import SipEndpoint


class _Seen:
    """Records the requests the transaction layer hands up, in order; answers nothing."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def on_event(self, event: object, endpoint: SipEndpoint) -> None:
        if isinstance(event, NewRequest):
            request: SipRequest = event.request
            seen = f"{request.method} {request.headers.get('Call-ID')}"
            if request.method == "CANCEL":  # does it find the INVITE it cancels?
                found = endpoint.layer.find_invite_for_cancel(request) is not None
                seen += " (its INVITE found)" if found else " (no INVITE)"
            self.methods.append(seen)

    def on_connection_lost(self, peer: object, transport: str, endpoint: SipEndpoint) -> None:
        pass


def request(method: str, n: int, port: int, *, to_tag: str = "", call: str = "") -> bytes:
    tag = f";tag={to_tag}" if to_tag else ""
    return (
        f"{method} sip:bridge@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-order{n};rport\r\n"
        f"From: <sip:peer@127.0.0.1>;tag=p{n}\r\n"
        f"To: <sip:bridge@127.0.0.1>{tag}\r\n"
        f"Call-ID: {call or f'c{n}'}\r\n"
        f"CSeq: 1 {method}\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_datagrams_read_together_finish_work_before_taking_new_work() -> None:
    """On uvloop, the daemon's loop: it reads up to 32 queued datagrams in one pass.
    (asyncio's own loop reads one per pass, so there every datagram is handled in arrival
    order, as before.)"""
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(_stalled_reads())
    finally:
        loop.close()


async def _stalled_reads() -> None:
    seen = _Seen()
    endpoint = SipEndpoint("127.0.0.1", 0, seen)
    await endpoint.start()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    port = peer.getsockname()[1]
    try:
        sent = [
            request("INVITE", 1, port),
            request("BYE", 2, port, to_tag="b2"),
            request("REGISTER", 3, port),
            request("OPTIONS", 4, port),
            request("BYE", 5, port, to_tag="b5"),
            request("INVITE", 6, port),
        ]
        # The loop is held while they arrive (a stall): they are read in one pass.
        for data in sent:
            peer.sendto(data, ("127.0.0.1", endpoint.port))
        time.sleep(0.1)
        deadline = time.monotonic() + 5
        while len(seen.methods) < len(sent):
            assert time.monotonic() < deadline, seen.methods
            await asyncio.sleep(0.01)
        assert seen.methods == [
            "BYE c2",
            "OPTIONS c4",
            "BYE c5",
            "INVITE c1",
            "REGISTER c3",
            "INVITE c6",
        ]
    finally:
        peer.close()
        await endpoint.stop()


async def test_a_cancel_keeps_its_place_behind_the_invite_it_cancels() -> None:
    seen = _Seen()
    endpoint = SipEndpoint("127.0.0.1", 0, seen)
    await endpoint.start()
    assert endpoint._udp is not None
    try:
        invite = request("INVITE", 1, 40000, call="same")
        cancel = invite.replace(b"INVITE sip:", b"CANCEL sip:").replace(
            b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL"
        )
        # One pass: the INVITE, a BYE of another call, the INVITE's CANCEL.
        endpoint._udp.datagram_received(invite, ("127.0.0.1", 40000))
        endpoint._udp.datagram_received(request("BYE", 2, 40000, to_tag="x"), ("127.0.0.1", 40000))
        endpoint._udp.datagram_received(cancel, ("127.0.0.1", 40000))
        assert seen.methods == ["BYE c2"]
        await asyncio.sleep(0)
        assert seen.methods == ["BYE c2", "INVITE same", "CANCEL same (its INVITE found)"]
    finally:
        await endpoint.stop()


def test_a_malformed_request_put_off_to_the_end_of_the_pass_is_still_answered_400() -> None:
    """New INVITEs wait for the end of the pass before they are parsed: one that does not
    parse (here a line that is not a header) is answered 400 there as it would be at once,
    a datagram that
    only starts like an INVITE is dropped, and neither stops what comes after (on uvloop, where
    a pass reads several datagrams)."""
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(_malformed_reads())
    finally:
        loop.close()


async def _malformed_reads() -> None:
    seen = _Seen()
    endpoint = SipEndpoint("127.0.0.1", 0, seen)
    await endpoint.start()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    port = peer.getsockname()[1]
    try:
        malformed = request("INVITE", 1, port).replace(
            b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nnot a header line\r\n"
        )
        for data in (
            malformed,
            b"INVITE \x00\xff not a request at all",
            request("OPTIONS", 2, port),
            request("INVITE", 3, port),
        ):
            peer.sendto(data, ("127.0.0.1", endpoint.port))
        time.sleep(0.1)  # the loop is held: one pass reads them all
        deadline = time.monotonic() + 5
        while len(seen.methods) < 2:
            assert time.monotonic() < deadline, seen.methods
            await asyncio.sleep(0.01)
        assert seen.methods == ["OPTIONS c2", "INVITE c3"]
        answer = await asyncio.get_running_loop().run_in_executor(None, peer.recv, 65535)
        assert answer.startswith(b"SIP/2.0 400 ")
        assert b"branch=z9hG4bK-order1" in answer and b"Call-ID: c1" in answer
    finally:
        peer.close()
        await endpoint.stop()
