"""The SIP endpoint's TLS, in process (the daemon's side is in test_tls.py): a message over TLS
reaches the application as "tls" and its answer goes back on that connection; RFC 5626
keep-alives both ways; a connection that closes is reported with its transport."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from bridge.sip.model import SipRequest, make_response
from bridge.sip.parser import parse_message
from bridge.sip.tls import TlsContexts, TlsSettings
from bridge.sip.transaction import Event, NewRequest
from bridge.sip.transport import SipEndpoint
from tests.sip.certs import issue

OPTIONS = (
    b"OPTIONS sip:bridge@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKtlsin1\r\n"
    b"From: <sip:phone@127.0.0.1>;tag=p1\r\nTo: <sip:bridge@127.0.0.1>\r\n"
    b"Call-ID: tls-inproc-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


class Answering:
    """The application: answers every request 200, notes what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.lost: list[tuple[tuple[str, int], str]] = []

    def on_event(self, event: Event, endpoint: SipEndpoint) -> None:
        if isinstance(event, NewRequest):
            self.seen.append((event.request.method, event.transport))
            endpoint.respond(event.transaction_id, make_response(event.request, 200, "OK"))

    def on_connection_lost(
        self, peer: tuple[str, int], transport: str, endpoint: SipEndpoint
    ) -> None:
        self.lost.append((peer, transport))


def endpoint(tmp_path: Path, app: Answering, keepalive: float = 0.0) -> SipEndpoint:
    issued = issue(tmp_path / "certs")
    tls = TlsContexts(TlsSettings(issued.certificate, issued.private_key, port=0))
    (tmp_path / "ca.pem").write_bytes(issued.ca.read_bytes())
    return SipEndpoint("127.0.0.1", 0, app, tls=tls, stream_keepalive_seconds=keepalive)


def test_a_request_over_tls_is_answered_on_its_connection_and_pings_are_answered(
    tmp_path: Path,
) -> None:
    app = Answering()

    async def scenario() -> None:
        ep = endpoint(tmp_path, app)
        await ep.start()
        try:
            context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", ep.tls_port, ssl=context, server_hostname="127.0.0.1"
            )
            writer.write(OPTIONS[:40])  # split anywhere: the framer joins it
            await writer.drain()
            writer.write(OPTIONS[40:])
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"SIP/2.0 200 OK\r\n")
            assert app.seen == [("OPTIONS", "tls")]
            writer.write(b"\r\n\r\n")  # RFC 5626 ping: a CRLF comes back
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
            peer = writer.get_extra_info("sockname")
            writer.close()
            await asyncio.sleep(0.2)
            assert app.lost == [((peer[0], peer[1]), "tls")]
            assert ep.tls_connections == {}
        finally:
            await ep.stop()

    asyncio.run(scenario())


def test_connections_we_open_get_keepalive_pings(tmp_path: Path) -> None:
    app = Answering()

    async def scenario() -> None:
        received = asyncio.Queue[bytes]()

        async def trunk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                await received.put(data)

        server = await asyncio.start_server(trunk, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ep = endpoint(tmp_path, app, keepalive=0.2)
        await ep.start()
        try:
            request = parse_message(OPTIONS.replace(b"/TLS", b"/TCP"))
            assert isinstance(request, SipRequest)
            ep.request(request, ("127.0.0.1", port), "tcp")
            first = await asyncio.wait_for(received.get(), 5)
            assert first.startswith(b"OPTIONS ")
            pings = [await asyncio.wait_for(received.get(), 2) for _ in range(2)]
            assert pings == [b"\r\n\r\n", b"\r\n\r\n"]
        finally:
            await ep.stop()
            server.close()

    asyncio.run(scenario())


def test_a_client_that_sends_nothing_is_closed_at_the_deadline(tmp_path: Path) -> None:
    app = Answering()

    async def scenario() -> None:
        issued = issue(tmp_path / "certs")
        tls = TlsContexts(
            TlsSettings(issued.certificate, issued.private_key, port=0, handshake_timeout=0.3)
        )
        ep = SipEndpoint("127.0.0.1", 0, app, tls=tls, stream_keepalive_seconds=0)
        await ep.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", ep.tls_port)
            assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the bridge
            writer.close()
            assert ep._handshakes == set()
        finally:
            await ep.stop()

    asyncio.run(scenario())


def test_no_tls_section_means_no_tls_listener_and_tls_12_is_the_floor(tmp_path: Path) -> None:
    issued = issue(tmp_path / "certs")
    contexts = TlsContexts(TlsSettings(issued.certificate, issued.private_key, port=0))
    assert contexts.server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert contexts.client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert contexts.client.verify_mode == ssl.CERT_REQUIRED and contexts.client.check_hostname

    async def scenario() -> None:
        plain = SipEndpoint("127.0.0.1", 0, Answering())
        await plain.start()
        try:
            assert plain.tls_port == 0 and plain._tls_server is None
        finally:
            await plain.stop()

    asyncio.run(scenario())
