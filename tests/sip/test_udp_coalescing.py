"""UDP answers leave at the end of the event-loop pass that made them, together: a peer asleep
in its poll is woken once per pass instead of once per datagram (docs/PERFORMANCE.md). They
still leave in order, all of them, before the loop waits again, and on the way out."""

from __future__ import annotations

import asyncio
import socket

from structlog.testing import capture_logs

from bridge.sip.model import make_response
from bridge.sip.transaction import NewRequest
from bridge.sip.transport import SipEndpoint


class _Answering:
    """Answers every request 200 at once (as the registrar does)."""

    def on_event(self, event: object, endpoint: SipEndpoint) -> None:
        if isinstance(event, NewRequest):
            endpoint.respond(event.transaction_id, make_response(event.request, 200, "OK"))

    def on_connection_lost(self, peer: object, transport: str, endpoint: SipEndpoint) -> None:
        pass


class _Recording:
    """Stands in for the UDP transport: what was sent, and when (which loop pass)."""

    def __init__(self, real: asyncio.DatagramTransport) -> None:
        self.real = real
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))
        self.real.sendto(data, addr)

    def close(self) -> None:
        self.real.close()

    def get_extra_info(self, name: str) -> object:
        return self.real.get_extra_info(name)


def options(n: int, port: int) -> bytes:
    return (
        f"OPTIONS sip:bridge@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-co{n};rport\r\n"
        f"From: <sip:peer@127.0.0.1>;tag=p{n}\r\n"
        "To: <sip:bridge@127.0.0.1>\r\n"
        f"Call-ID: coalesce-{n}@127.0.0.1\r\n"
        f"CSeq: {n} OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def _endpoint() -> tuple[SipEndpoint, _Recording]:
    endpoint = SipEndpoint("127.0.0.1", 0, _Answering())
    await endpoint.start()
    assert endpoint._udp is not None and endpoint._udp.transport is not None
    recording = _Recording(endpoint._udp.transport)  # type: ignore[arg-type]
    endpoint._udp.transport = recording  # type: ignore[assignment]
    return endpoint, recording


async def test_answers_of_one_loop_pass_leave_together_after_it_in_order() -> None:
    endpoint, recording = await _endpoint()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(2)
    port = peer.getsockname()[1]
    try:
        # Three requests handled in one pass (as a read of three queued datagrams is).
        for n in (1, 2, 3):
            endpoint._datagram(options(n, port), ("127.0.0.1", port))
        assert recording.sent == []  # nothing yet: the pass is not over
        await asyncio.sleep(0)
        assert [data.split(b"\r\n", 1)[0] for data, _ in recording.sent] == [b"SIP/2.0 200 OK"] * 3
        assert [addr for _, addr in recording.sent] == [("127.0.0.1", port)] * 3
        cseqs = [
            line for data, _ in recording.sent for line in data.split(b"\r\n") if b"CSeq" in line
        ]
        assert cseqs == [b"CSeq: 1 OPTIONS", b"CSeq: 2 OPTIONS", b"CSeq: 3 OPTIONS"]
        # And they reach the peer over the real socket.
        got = [peer.recv(65535) for _ in range(3)]
        assert all(d.startswith(b"SIP/2.0 200 OK") for d in got)
    finally:
        peer.close()
        await endpoint.stop()


async def test_a_real_peer_gets_its_answer_without_waiting() -> None:
    # Over real sockets end to end: the answer comes within the loop's next pass.
    endpoint = SipEndpoint("127.0.0.1", 0, _Answering())
    await endpoint.start()
    loop = asyncio.get_running_loop()
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    class _Peer(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            answers.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(_Peer, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        for n in range(1, 21):
            transport.sendto(options(n, port), ("127.0.0.1", endpoint.port))
        got = [await asyncio.wait_for(answers.get(), 2) for _ in range(20)]
        assert sorted(
            int(line.split()[1])
            for d in got
            for line in d.split(b"\r\n")
            if line.startswith(b"CSeq")
        ) == list(range(1, 21))
    finally:
        transport.close()
        await endpoint.stop()


async def test_stopping_sends_what_the_last_pass_answered() -> None:
    endpoint, recording = await _endpoint()
    endpoint._datagram(options(1, 40000), ("127.0.0.1", 40000))
    assert recording.sent == []
    await endpoint.stop()
    assert len(recording.sent) == 1 and recording.sent[0][0].startswith(b"SIP/2.0 200 OK")


async def test_without_coalescing_each_datagram_leaves_at_once() -> None:
    endpoint, recording = await _endpoint()
    endpoint.coalesce_udp = False
    try:
        endpoint._datagram(options(1, 40000), ("127.0.0.1", 40000))
        assert len(recording.sent) == 1
    finally:
        await endpoint.stop()


async def test_a_send_that_fails_is_logged_and_the_rest_still_go() -> None:
    endpoint, recording = await _endpoint()
    try:
        endpoint._udp_out.append((b"x", ("no-such-host.invalid", 5060)))  # needs DNS: refused
        endpoint._datagram(options(1, 40000), ("127.0.0.1", 40000))
        with capture_logs() as logs:
            endpoint._send_udp_batch()
        # uvloop refuses the address at once (logged here); asyncio's own loop tries and
        # reports the failure to the protocol (logged there). Either way, one line.
        assert [e["event"] for e in logs] in (["sip_send_failed"], ["sip_udp_error"])
        assert recording.sent[-1][0].startswith(b"SIP/2.0 200 OK")
    finally:
        await endpoint.stop()
