"""The asyncio layer of the SIP stack: sockets, one timer, nothing else.

Modelled on aioquic's `asyncio/protocol.py`: bytes come in, are parsed and handed to the
sans-I/O `TransactionLayer` with `now`; the events go to the application (the TU); whatever
the layer queued is sent; one `loop.call_at` is re-armed on the layer's next deadline.
UDP and TCP listen on the same host:port (IPv4 or IPv6), TLS on its own port when
`[sip.tls]` is set (bridge.sip.tls). Stream connections are kept by transport and peer address
and reused for requests to that peer (a phone registered over TCP or TLS is reached on the
connection it registered on). The TLS port's handshakes are run here (`_TlsServerSide`) with a
deadline, so that one that fails (garbage, plain text, a stalled or flooding client) is
closed and logged with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from bridge.sip.model import SipMessage, SipRequest, SipResponse
from bridge.sip.overload import ACK_MARKER
from bridge.sip.parser import SipParseError, StreamFramer, parse_message
from bridge.sip.tls import TlsContexts, TlsRefusals
from bridge.sip.transaction import (
    Address,
    Event,
    Outgoing,
    TimerSettings,
    TransactionLayer,
    stamp_received,
)

log = structlog.get_logger("bridge.sip")

MAX_DATAGRAM = 65535


class SipApplication(Protocol):
    """The transaction user: gets every event, answers through the endpoint."""

    def on_event(self, event: Event, endpoint: SipEndpoint) -> None: ...

    def on_connection_lost(self, peer: Address, transport: str, endpoint: SipEndpoint) -> None:
        """A TCP or TLS connection closed (`transport` "tcp" or "tls")."""
        ...


class SipCounters(Protocol):
    """What the transport counts (a Metrics adapter, or nothing)."""

    def message(self, direction: str, message: SipMessage) -> None: ...

    def parse_error(self, transport: str) -> None: ...

    def tls_refused(self, reason: str) -> None: ...

    def stream_refused(self, transport: str) -> None: ...


class _NoCounters:
    def message(self, direction: str, message: SipMessage) -> None:
        pass

    def parse_error(self, transport: str) -> None:
        pass

    def tls_refused(self, reason: str) -> None:
        pass

    def stream_refused(self, transport: str) -> None:
        pass


SIOCGSTAMP = 0x8906  # Linux: the receive time of the last datagram read from a socket
_TIMEVAL = struct.Struct("qq")
_NEW_WORK = (b"INVITE ", b"REGISTER ")
# Handled after the rest of the datagrams read in the same loop pass (see `_Udp`): new work,
# and CANCEL, which must not overtake the INVITE it cancels.
_LATER = (b"INVITE ", b"REGISTER ", b"CANCEL ")
WAIT_SAMPLE_SECONDS = 0.001


class _Udp(asyncio.DatagramProtocol):
    """The UDP socket's reader.

    **Work in hand first.** The event loop reads the datagrams queued on the socket a few
    dozen at a time (uvloop: up to 32 per pass). Those that finish work already under way
    (responses, ACK, BYE, in-dialog requests) are handled as they are read; new INVITEs and
    REGISTERs (and CANCELs, in order with them) right after the pass. After a stall (a
    collector pause, a busy host) the queue holds both: handled in arrival order, the new
    calls were routed while the users whose calls had ended in the meantime still counted
    as busy (their BYEs waited behind), and a small team could answer "nobody can receive"
    for a moment (bench/soak.py saw it). Nothing waits longer than the rest of one pass,
    and the order within each kind holds."""

    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.DatagramTransport | None = None
        self._fd = -1  # the socket, when the kernel stamps its datagrams
        self._sampled_at = -1.0  # (monotonic) when the last datagram's wait was read
        self._last_wait = 0.0
        self._later: list[tuple[bytes, Address, float]] = []  # (data, source, waited)
        self._loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        with contextlib.suppress(RuntimeError):  # (no loop: every datagram handled as read)
            self._loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        try:  # the first SIOCGSTAMP turns the kernel's receive timestamps on
            fcntl.ioctl(sock.fileno(), SIOCGSTAMP, bytes(16))
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # (ENOENT: nothing received yet, as expected)
                return
        self._fd = sock.fileno()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        waited = 0.0
        if self.endpoint.gate is not None:
            if data.startswith(_NEW_WORK):
                waited = self._waited()
            elif data.startswith(b"ACK ") and ACK_MARKER in data:
                return  # the ACK of one of our stateless 503s: nothing to do
        if self._loop is not None and data.startswith(_LATER):
            if not self._later:
                self._loop.call_soon(self._handle_later)
            self._later.append((data, (addr[0], addr[1]), waited))
            return
        self.endpoint._datagram(data, (addr[0], addr[1]), waited)

    def _handle_later(self) -> None:
        later, self._later = self._later, []
        for data, source, waited in later:
            try:
                self.endpoint._datagram(data, source, waited)
            except Exception:  # (one bad datagram must not drop the others of the pass)
                log.exception("sip_datagram_failed", source=f"{source[0]}:{source[1]}")

    def _waited(self) -> float:
        """How long the datagram just read sat in the socket's queue (overload's signal).

        Read from the kernel at most once per `WAIT_SAMPLE_SECONDS`: a flood is read a few
        dozen datagrams per loop pass, and the ones read within a millisecond of each other
        waited about as long (the `ioctl` was 3% of a registration's CPU at 2,400/s)."""
        if self._fd < 0:
            return 0.0
        now = time.monotonic()
        if now - self._sampled_at < WAIT_SAMPLE_SECONDS:
            return self._last_wait
        try:
            sec, usec = _TIMEVAL.unpack(fcntl.ioctl(self._fd, SIOCGSTAMP, bytes(16)))
        except OSError:
            return 0.0
        self._sampled_at = now
        self._last_wait = wait = max(0.0, time.time() - sec - usec / 1e6)
        return wait

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable and the like: the transaction timers notice the silence.
        log.debug("sip_udp_error", error=str(exc))


class _Tcp(asyncio.Protocol):
    """One TCP or TLS connection (over TLS, asyncio's transport gives the plain bytes)."""

    def __init__(self, endpoint: SipEndpoint, name: str = "tcp", *, opened: bool = False) -> None:
        self.endpoint = endpoint
        self.name = name  # "tcp" | "tls"
        self.opened = opened  # by us (we send its keep-alive pings), not accepted
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        self.counted = False  # an accepted connection within the limits (`_stream_admit`)
        self.messages = 0  # whole messages framed
        self.progress_at = 0.0  # when it opened, or framed its last whole message

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        endpoint = self.endpoint
        self.progress_at = endpoint.now() if endpoint._loop is not None else 0.0
        if not self.opened and not endpoint._stream_admit(self):
            transport.close()
            return
        endpoint._links(self.name)[self.peer] = self

    def data_received(self, data: bytes) -> None:
        if not self.opened and not self.counted:
            return  # (refused at connection: its bytes are not read)
        pings = self.framer.pings
        items = self.framer.feed(data)
        if self.framer.pings != pings and self.transport is not None:
            self.transport.write(b"\r\n")  # RFC 5626 §3.5.1: answer a CRLFCRLF ping
        if items:
            self.messages += len(items)
            self.progress_at = self.endpoint.now()
        for item in items:
            self.endpoint._incoming(item, self.peer, self.name)
        if self.framer.broken and self.transport is not None:
            # A framing error cannot be recovered on a stream (RFC 4475 §3.1.2.3).
            log.info(f"sip_{self.name}_framing_error", peer=f"{self.peer[0]}:{self.peer[1]}")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened and not self.counted:
            return  # refused at connection: never a flow of ours
        self.endpoint._stream_release(self)
        links = self.endpoint._links(self.name)
        if links.get(self.peer) is self:
            del links[self.peer]
        self.endpoint._lost(self.peer, self.name)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class _TlsServerSide(asyncio.Protocol):
    """A connection on the TLS port: its handshake run here on memory BIOs, under a deadline;
    then its plain bytes go to a `_Tcp` as any stream's (through `_TlsTransport`).

    Not the loop's own TLS (`create_server(ssl=...)` or `start_tls`): those say nothing of a
    handshake that fails, and on uvloop a ClientHello read before `start_tls` took the
    socket over was lost (the handshake then waited for its deadline)."""

    def __init__(self, endpoint: SipEndpoint, tls: TlsContexts) -> None:
        self.endpoint = endpoint
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = tls.server.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._timeout = tls.settings.handshake_timeout
        self.raw: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        self.app: _Tcp | None = None  # once the handshake is done
        self._deadline: asyncio.TimerHandle | None = None
        self._failed = False

    # -- from the socket ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1]) if peer else ("", 0)
        refused = self.endpoint._handshake_refusal(self)
        if refused is not None:
            self._fail(refused, "")
            return
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._timeout, self._expired)

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        self._incoming.write(data)
        if self.app is None:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except ssl.SSLError as exc:  # plain text, garbage, nothing in common, an alert
                self._flush()  # (our alert, for a client that speaks TLS)
                self._fail("handshake_failed", str(exc.reason or exc))
                return
            self._established()
        self._read()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.app is not None:
            self.app.connection_lost(exc)
        elif not self._failed:
            self._fail("closed_in_handshake", str(exc or "closed by the client"))

    # -- the handshake -------------------------------------------------------------------------
    def _established(self) -> None:
        self._flush()
        self._stop_clock()
        self.app = _Tcp(self.endpoint, "tls")
        assert self.raw is not None
        self.app.connection_made(_TlsTransport(self, self.raw))

    def _expired(self) -> None:
        self._deadline = None
        if self.app is None and not self._failed:
            self._fail("handshake_timeout", f"no handshake in {self._timeout} s")

    def _fail(self, reason: str, detail: str) -> None:
        self._failed = True
        self._stop_clock()
        self.endpoint.tls_refusals.refused(reason, self.peer, detail)
        if self.raw is not None:
            self.raw.abort()

    def _stop_clock(self) -> None:
        self.endpoint._handshake_ended(self)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    # -- after it ------------------------------------------------------------------------------
    def _read(self) -> None:
        chunks = []
        while True:
            try:
                chunk = self._ssl.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify (as some versions report it)
                self.close()
                break
            except ssl.SSLError as exc:  # a corrupt record: the stream cannot go on
                log.info("sip_tls_error", peer=f"{self.peer[0]}:{self.peer[1]}", error=str(exc))
                self._failed = True
                if self.raw is not None:
                    self.raw.abort()
                break
            if not chunk:  # close_notify: the peer is done, so are we
                self.close()
                break
            chunks.append(chunk)
        self._flush()  # (TLS 1.3 may answer a key update)
        if chunks and self.app is not None:
            self.app.data_received(b"".join(chunks))

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self.raw is not None and not self.raw.is_closing():
            self.raw.write(data)

    def write(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            log.info("sip_tls_error", peer=f"{self.peer[0]}:{self.peer[1]}", error=str(exc))
            return
        self._flush()

    def close(self) -> None:
        if self.raw is None or self.raw.is_closing():
            return
        with contextlib.suppress(ssl.SSLError):
            self._ssl.unwrap()  # close_notify (the peer's is not waited for)
        self._flush()
        self.raw.close()


class _TlsTransport(asyncio.Transport):
    """What a `_Tcp` writes to over TLS: its bytes are encrypted by the connection's
    `_TlsServerSide` and go out on the socket."""

    def __init__(self, tls: _TlsServerSide, raw: asyncio.Transport) -> None:
        super().__init__()
        self._tls = tls
        self._raw = raw

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._tls.write(bytes(data))

    def close(self) -> None:
        self._tls.close()

    def abort(self) -> None:
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._raw.is_closing()

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "ssl_object":
            return self._tls._ssl
        return self._raw.get_extra_info(name, default)


def _one_less(counts: dict[str, int], source: str) -> None:
    """One fewer under `source` (dropped at 0: the counts hold only addresses in use)."""
    left = counts.get(source, 1) - 1
    if left > 0:
        counts[source] = left
    else:
        counts.pop(source, None)


def _sendto(transport: asyncio.DatagramTransport, data: bytes, destination: Address) -> None:
    """One datagram out; a refusal (a name needing DNS, a closed socket) is logged, so the
    datagrams queued after it still go."""
    try:
        transport.sendto(data, destination)
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        log.warning("sip_send_failed", destination=str(destination), reason=str(exc))


class SipEndpoint:
    def __init__(
        self,
        host: str,
        port: int,
        application: SipApplication,
        *,
        timers: TimerSettings | None = None,
        counters: SipCounters | None = None,
        udp_buffer_bytes: int | None = None,
        tls: TlsContexts | None = None,
        stream_keepalive_seconds: float = 30.0,
        max_stream_connections: int = 4096,
        max_stream_connections_per_source: int = 256,
        stream_message_seconds: float = 30.0,
    ) -> None:
        self.host = host
        self.udp_buffer_bytes = udp_buffer_bytes
        self.port = port
        self.application = application
        self.layer = TransactionLayer(timers)
        self.counters: SipCounters = counters or _NoCounters()
        self._udp: _Udp | None = None
        self._tcp_server: asyncio.Server | None = None
        self._connections: dict[Address, _Tcp] = {}
        self._connecting: dict[tuple[str, Address], asyncio.Task[None]] = {}
        # TLS ([sip.tls]): its listener, its connections, the handshakes under way.
        self.tls = tls
        self.tls_port = tls.settings.port if tls is not None else 0
        self._tls_server: asyncio.Server | None = None
        self._tls_connections: dict[Address, _Tcp] = {}
        self._handshakes: set[_TlsServerSide] = set()
        self._handshake_sources: dict[str, int] = {}  # handshakes under way, by address
        self.tls_refusals = TlsRefusals(time.monotonic, self.counters.tls_refused)
        # RFC 5626 §4.4.1: a CRLFCRLF ping this often on the connections we opened (0: none).
        self.stream_keepalive_seconds = stream_keepalive_seconds
        self._keepalive: asyncio.TimerHandle | None = None
        # Accepted TCP/TLS connections (phones, the trunk): at most so many in all and from
        # one address, and one that holds part of a message (or has said nothing) longer than
        # `stream_message_seconds` is closed. Without them one source could open thousands,
        # each holding up to a megabyte of a message it never finishes.
        self.max_stream_connections = max_stream_connections
        self.max_stream_connections_per_source = max_stream_connections_per_source
        self.stream_message_seconds = stream_message_seconds
        self._stream_sources: dict[str, int] = {}
        self._stream_count = 0
        self._stream_refused: dict[str, int] = {}
        self._stream_sweep: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # UDP datagrams sent at the end of the loop pass that made them (see _send): under
        # load, one read pass handles many datagrams, and a peer asleep in its poll is woken
        # once for the pass's answers instead of once per datagram. False: each goes out at
        # once (the in-process harness, which reads what was sent right after feeding).
        self.coalesce_udp = True
        self._udp_out: list[tuple[bytes, Address]] = []
        # Overload control: asked about each new INVITE or REGISTER (not a retransmission)
        # before the transaction layer sees it; a response it returns is sent statelessly
        # and the request goes no further (bridge.sip.overload, set by the SIP service).
        # Its arguments: the request, its source, transport, and how long it waited unread.
        self.gate: Callable[[SipRequest, Address, str, float], SipResponse | None] | None = None
        # Called with each response the application sends (and the gate's refusals) before it
        # is serialized: the overload feedback of RFC 7339 goes into its Via.
        self.annotate: Callable[[SipResponse], None] | None = None

    # -- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        any_port = self.port == 0
        for attempt in range(5 if any_port else 1):
            _, udp = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.host, self.port), family=family
            )
            self._udp = udp
            if any_port:  # tests: take the port the OS gave UDP for TCP too
                assert udp.transport is not None
                self.port = udp.transport.get_extra_info("sockname")[1]
            try:
                self._tcp_server = await loop.create_server(
                    lambda: _Tcp(self),
                    host=self.host,
                    port=self.port,
                    family=family,
                    reuse_address=True,
                )
                break
            except OSError:
                # That port's TCP side is taken (another process): try another free port.
                assert udp.transport is not None
                udp.transport.close()
                if not any_port or attempt == 4:
                    raise
                self.port = 0
        buffers = self._size_udp_buffers()
        transports = ["udp", "tcp"]
        if (tls := self.tls) is not None:
            self._tls_server = await loop.create_server(
                lambda: _TlsServerSide(self, tls),
                host=self.host,
                port=self.tls_port,
                family=family,
                reuse_address=True,
            )
            self.tls_port = self._tls_server.sockets[0].getsockname()[1]
            transports.append("tls")
            if not self.tls.settings.verify:
                log.warning(
                    "sip_tls_not_verifying",
                    hint="the trunk's certificate is not checked: set [sip.tls] verify = true",
                )
        if self.stream_keepalive_seconds > 0:
            self._keepalive = loop.call_later(self.stream_keepalive_seconds, self._ping_opened)
        if self.stream_message_seconds > 0:
            self._stream_sweep = loop.call_later(self._sweep_every, self._sweep_streams)
        log.info(
            "sip_listening",
            host=self.host,
            port=self.port,
            tls_port=self.tls_port or None,
            transports=transports,
            udp_buffers=buffers,
        )

    def _size_udp_buffers(self) -> dict[str, int]:
        """Ask the kernel for `udp_buffer_bytes` of receive and send buffer; what it granted
        (Linux reports twice the usable size, and caps the request at net.core.rmem_max /
        wmem_max: a warning names the setting when it fell short)."""
        assert self._udp is not None and self._udp.transport is not None
        sock = self._udp.transport.get_extra_info("socket")
        granted: dict[str, int] = {}
        for name, option, sysctl in (
            ("receive", socket.SO_RCVBUF, "net.core.rmem_max"),
            ("send", socket.SO_SNDBUF, "net.core.wmem_max"),
        ):
            if self.udp_buffer_bytes is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, self.udp_buffer_bytes)
            granted[name] = sock.getsockopt(socket.SOL_SOCKET, option)
            if self.udp_buffer_bytes is not None and granted[name] < self.udp_buffer_bytes:
                log.warning(
                    "sip_udp_buffer_capped",
                    buffer=name,
                    asked=self.udp_buffer_bytes,
                    granted=granted[name],
                    hint=f"raise {sysctl}",
                )
        return granted

    async def stop(self) -> None:
        if self._udp_out:
            self._send_udp_batch()  # what the last loop pass answered still goes out
        if self._timer is not None:
            self._timer.cancel()
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._stream_sweep is not None:
            self._stream_sweep.cancel()
        for task in self._connecting.values():
            task.cancel()
        for handshake in list(self._handshakes):
            if handshake.raw is not None:
                handshake.raw.abort()
        for connection in [*self._connections.values(), *self._tls_connections.values()]:
            if connection.transport is not None:
                connection.transport.close()
        for server in (self._tcp_server, self._tls_server):
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 2)
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()

    def now(self) -> float:
        """The transaction layer's time base: the loop's monotonic clock, which `call_at`
        uses too."""
        assert self._loop is not None
        return self._loop.time()

    @property
    def connections(self) -> dict[Address, _Tcp]:
        return self._connections

    @property
    def tls_connections(self) -> dict[Address, _Tcp]:
        return self._tls_connections

    def _links(self, transport: str) -> dict[Address, _Tcp]:
        """The live connections of a stream transport, by peer address."""
        return self._tls_connections if transport == "tls" else self._connections

    def reload_tls(self) -> bool:
        """SIGHUP: the certificate and key read again for new connections."""
        return self.tls.reload() if self.tls is not None else False

    # -- TLS: accepting ----------------------------------------------------------------------
    def _handshake_refusal(self, connection: _TlsServerSide) -> str | None:
        """A connection starts its handshake: None, or why it is closed at once, when too
        many are under way in all or from its address (a ClientHello flood: closed before
        any crypto; one source alone could keep everyone else's handshakes refused)."""
        assert self.tls is not None
        settings = self.tls.settings
        if len(self._handshakes) >= settings.max_handshakes:
            return "too_many_handshakes"
        source = connection.peer[0]
        from_source = self._handshake_sources.get(source, 0)
        if from_source >= settings.max_handshakes_per_source:
            return "too_many_handshakes_from_source"
        self._handshakes.add(connection)
        self._handshake_sources[source] = from_source + 1
        return None

    def _handshake_ended(self, connection: _TlsServerSide) -> None:
        if connection not in self._handshakes:
            return
        self._handshakes.discard(connection)
        _one_less(self._handshake_sources, connection.peer[0])

    # -- stream connections we accepted: limits and deadlines ---------------------------------
    def _stream_admit(self, connection: _Tcp) -> bool:
        """An accepted TCP/TLS connection, within the limits (counted), or refused (closed
        before anything of it is read; logged when a source's refusals reach 1, 2, 4, ...)."""
        source = connection.peer[0]
        from_source = self._stream_sources.get(source, 0)
        if (
            self._stream_count < self.max_stream_connections
            and from_source < self.max_stream_connections_per_source
        ):
            self._stream_sources[source] = from_source + 1
            self._stream_count += 1
            connection.counted = True
            return True
        if len(self._stream_refused) > 10_000:
            self._stream_refused.clear()
        refused = self._stream_refused[source] = self._stream_refused.get(source, 0) + 1
        self.counters.stream_refused(connection.name)
        if refused & (refused - 1) == 0:
            log.warning(
                "sip_stream_refused",
                source=source,
                transport=connection.name,
                refused=refused,
                from_source=from_source,
                connections=self._stream_count,
            )
        return False

    def _stream_release(self, connection: _Tcp) -> None:
        if not connection.counted:
            return
        connection.counted = False
        _one_less(self._stream_sources, connection.peer[0])
        self._stream_count -= 1

    @property
    def _sweep_every(self) -> float:
        return min(5.0, max(0.05, self.stream_message_seconds / 3))

    def _sweep_streams(self) -> None:
        """Close the accepted connections that hold part of a message, or have said nothing
        at all, for longer than `stream_message_seconds` (a peer that dribbles a header a
        byte at a time, or connects and waits). A registered phone's idle connection, its
        messages whole, is kept: its CRLF keep-alives are answered as ever."""
        now = self.now()
        limit = self.stream_message_seconds
        for connection in [*self._connections.values(), *self._tls_connections.values()]:
            if not connection.counted or now - connection.progress_at <= limit:
                continue
            if connection.framer.buffered or not connection.messages:
                log.info(
                    "sip_stream_stalled",
                    peer=f"{connection.peer[0]}:{connection.peer[1]}",
                    transport=connection.name,
                    buffered=connection.framer.buffered,
                    messages=connection.messages,
                )
                if connection.transport is not None:
                    connection.transport.close()
        if self._loop is not None:
            self._stream_sweep = self._loop.call_later(self._sweep_every, self._sweep_streams)

    def _ping_opened(self) -> None:
        """RFC 5626 §4.4.1 keep-alive on the stream connections we opened (to the trunk):
        keeps NAT and firewall state, and a dead one is found by the write failing."""
        for connection in [*self._connections.values(), *self._tls_connections.values()]:
            if connection.opened:
                connection.send(b"\r\n\r\n")
        if self._loop is not None:
            self._keepalive = self._loop.call_later(
                self.stream_keepalive_seconds, self._ping_opened
            )

    # -- for the application -----------------------------------------------------------------
    def respond(self, transaction_id: str, response: SipResponse) -> None:
        if self.annotate is not None:
            self.annotate(response)
        self.layer.send_response(transaction_id, response, self.now())
        self._flush()

    def respond_and_forget(self, transaction_id: str, response: SipResponse) -> None:
        """A final response as a stateless UAS (the transaction ends at once; §8.2.7)."""
        if self.annotate is not None:
            self.annotate(response)
        self.layer.send_response_and_forget(transaction_id, response)
        self._flush()

    def request(self, request: SipRequest, destination: Address, transport: str) -> str:
        transaction_id = self.layer.send_request(request, destination, transport, self.now())
        self._flush()
        return transaction_id

    def send_stateless(self, message: SipMessage, destination: Address, transport: str) -> None:
        self.layer.send_stateless(message, destination, transport)
        self._flush()

    # -- inbound ---------------------------------------------------------------------------
    def _datagram(self, data: bytes, source: Address, waited: float = 0.0) -> None:
        if data in (b"\r\n", b"\r\n\r\n") or not data.strip():
            return  # NAT keep-alive (RFC 5626 §4.4.1 over UDP): nothing to do
        try:
            message: SipMessage | SipParseError = parse_message(data)
        except SipParseError as exc:
            message = exc
        self._incoming(message, source, "udp", waited)

    def _incoming(
        self,
        item: SipMessage | SipParseError,
        source: Address,
        transport: str,
        waited: float = 0.0,
    ) -> None:
        if isinstance(item, SipParseError):
            self.counters.parse_error(transport)
            response = item.response(to_tag="bad")
            log.info(
                "sip_malformed",
                source=f"{source[0]}:{source[1]}",
                transport=transport,
                reason=str(item),
                answered=response is not None,
            )
            if response is not None:
                # Outside any transaction: the message could not be matched to one.
                self.layer.send_stateless(response, source, transport)
                self._flush()
            return
        self.counters.message("in", item)
        gate = self.gate
        if (
            gate is not None
            and type(item) is SipRequest
            and item.method in ("INVITE", "REGISTER")
            and self.layer.is_new(item)
        ):
            refusal = gate(item, source, transport, waited)
            if refusal is not None:  # stateless: no transaction, nothing kept
                stamp_received(refusal, source)  # (its Via, copied from the request's)
                if self.annotate is not None:
                    self.annotate(refusal)
                self.layer.send_stateless(refusal, source, transport)
                self._flush()
                return
        try:
            events = self.layer.receive(item, source, transport, self.now())
            for event in events:
                self.application.on_event(event, self)
        except Exception:
            # Nothing a peer sends may take the endpoint down; the message is dropped.
            log.exception("sip_message_failed", source=f"{source[0]}:{source[1]}")
        self._flush()

    def _lost(self, peer: Address, transport: str) -> None:
        try:
            self.application.on_connection_lost(peer, transport, self)
        except Exception:
            log.exception("sip_connection_lost_failed")

    # -- outbound ----------------------------------------------------------------------------
    def _flush(self) -> None:
        for outgoing in self.layer.datagrams_to_send():
            self._send(outgoing)
        self._arm()

    def _send(self, outgoing: Outgoing) -> None:
        data = outgoing.data
        self.counters.message("out", outgoing.message)
        if outgoing.transport.lower() == "udp":
            if self._udp is None or self._udp.transport is None:
                return
            if not self.coalesce_udp or self._loop is None:
                _sendto(self._udp.transport, data, outgoing.destination)
                return
            # Waking a peer that sleeps in its poll costs the sender far more than the send
            # itself (on this benchmark's VM: 2 us of system time per datagram to a busy peer,
            # 17 us to a sleeping one), so the datagrams of one loop pass leave together,
            # right after it (call_soon: before the loop handles what its next poll brings).
            if not self._udp_out:
                self._loop.call_soon(self._send_udp_batch)
            self._udp_out.append((data, outgoing.destination))
            return
        name = "tls" if outgoing.transport.lower() == "tls" else "tcp"
        connection = self._links(name).get(outgoing.destination)
        if connection is not None:
            connection.send(data)
            return
        self._connect_and_send(outgoing, data, name)

    def _send_udp_batch(self) -> None:
        batch, self._udp_out = self._udp_out, []
        transport = self._udp.transport if self._udp is not None else None
        if transport is None:
            return
        for data, destination in batch:
            _sendto(transport, data, destination)

    def _connect_and_send(self, outgoing: Outgoing, data: bytes, name: str) -> None:
        destination = outgoing.destination
        key = (name, destination)
        links = self._links(name)

        async def connect() -> None:
            loop = asyncio.get_running_loop()
            secure: dict[str, object] = {}
            deadline = 5.0
            try:
                if name == "tls":
                    if self.tls is None:
                        raise OSError("no [sip.tls] section: cannot open a TLS connection")
                    # The URI's host is what the certificate must name (an IP address is
                    # matched against its IP entries).
                    secure = {
                        "ssl": self.tls.client,
                        "server_hostname": destination[0],
                        "ssl_handshake_timeout": self.tls.settings.handshake_timeout,
                    }
                    deadline += self.tls.settings.handshake_timeout
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Tcp(self, name, opened=True),
                        destination[0],
                        destination[1],
                        **secure,  # type: ignore[arg-type]
                    ),
                    deadline,
                )
                protocol.send(data)
            except (OSError, TimeoutError) as exc:
                self._connect_failed(outgoing, exc)
            finally:
                self._connecting.pop(key, None)

        if key in self._connecting:
            # Another message is already opening this connection: queue behind it.
            previous = self._connecting[key]

            async def after() -> None:
                with contextlib.suppress(asyncio.CancelledError):
                    await previous
                connection = links.get(destination)
                if connection is not None:
                    connection.send(data)

            asyncio.get_running_loop().create_task(after())
            return
        self._connecting[key] = asyncio.get_running_loop().create_task(connect())

    def _connect_failed(self, outgoing: Outgoing, exc: BaseException) -> None:
        """A connection we could not open (refused, unreachable, a certificate that does not
        verify): logged, and the transaction told (RFC 3261 §18.4: a transport error)."""
        destination = outgoing.destination
        log.warning(
            "sip_connect_failed",
            destination=f"{destination[0]}:{destination[1]}",
            transport=outgoing.transport.lower(),
            reason=str(exc) or type(exc).__name__,
        )
        if outgoing.transaction_id is not None:
            events = self.layer.transport_error(outgoing.transaction_id, str(exc), self.now())
            for event in events:
                self.application.on_event(event, self)
            self._flush()

    # -- the one timer -------------------------------------------------------------------------
    def _arm(self) -> None:
        deadline = self.layer.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None and (deadline is None or deadline >= self._timer_at):
            # Armed earlier than needed: let it fire and re-arm then (it finds nothing due).
            # Re-arming on every message made a timer handle per message, cancelled at once.
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            for event in self.layer.handle_timers(self.now()):
                self.application.on_event(event, self)
        except Exception:
            log.exception("sip_timer_failed")
        self._flush()
