"""One media leg's UDP socket on the event loop, and symmetric RTP latching.

Reading is the hot path of the engine, so it is done the cheap way on either loop:
`loop.add_reader` on the socket, then `recvfrom_into` one preallocated buffer, one datagram
per wake-up (the poll is level-triggered: a leg with more queued is called again, and a
flooded leg takes its turn with the others). A
datagram endpoint (`create_datagram_endpoint`) reads every datagram into a fresh 256 KiB buffer
on stock asyncio (35-40 µs a packet here, against about 13 µs this way; DESIGN.md, "Media").

The packet handed to `on_packet` is a view into that buffer: valid until `on_packet` returns
(the next datagram overwrites it). A handler that keeps a packet copies it.

Latching (symmetric RTP, what phones behind NAT need): a leg sends to where its peer's packets
come from. `Latch` decides which source to accept: the address the peer signalled in its SDP,
or, when the peer may be behind NAT, the first source that sends anything; once latched, other
sources are dropped (counted) so a stray or hostile sender cannot take over a call's audio.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from bridge.media.ports import RtpSocket

__all__ = ["Address", "EndpointStats", "Latch", "MediaEndpoint"]

log = structlog.get_logger("bridge.media")

Address = tuple[str, int]
# Larger than any RTP packet of an audio call (G.711 20 ms: 172 bytes); a datagram that fills
# the buffer was truncated by the kernel, so it is dropped as oversized.
BUFFER_BYTES = 2048


class Latch:
    """Which source a leg accepts, and where it sends (sans-I/O)."""

    __slots__ = ("behind_nat", "latched", "signalled")

    def __init__(self, signalled: Address | None, *, behind_nat: bool) -> None:
        self.signalled = signalled  # from the peer's SDP (c= and m= port)
        self.behind_nat = behind_nat  # accept the first source, whatever it is
        self.latched: Address | None = None

    def accepts(self, source: Address) -> bool:
        if self.latched is not None:
            return source == self.latched
        if self.behind_nat or self.signalled is None or source == self.signalled:
            self.latched = source
            return True
        return False

    @property
    def remote(self) -> Address | None:
        """Where to send: the latched source, else the signalled address."""
        return self.latched or self.signalled

    def resignal(self, signalled: Address | None) -> None:
        """A new SDP from the peer (re-INVITE, hold): listen for its new address again."""
        if signalled != self.signalled:
            self.signalled = signalled
            self.latched = None


@dataclass(slots=True)
class EndpointStats:
    received: int = 0
    received_bytes: int = 0
    sent: int = 0
    sent_bytes: int = 0
    foreign: int = 0  # from a source other than the latched one
    oversized: int = 0
    send_errors: int = 0
    last_received: float | None = None  # on the engine's clock


class MediaEndpoint:
    """A leg's socket: reads datagrams into one buffer and hands the accepted ones on."""

    def __init__(
        self,
        rtp: RtpSocket,
        latch: Latch,
        on_packet: Callable[[memoryview, Address], None],
        *,
        clock: Callable[[], float],
    ) -> None:
        self.rtp = rtp
        self.latch = latch
        self.on_packet = on_packet
        self.stats = EndpointStats()
        self._clock = clock
        self._buffer = bytearray(BUFFER_BYTES)
        self._view = memoryview(self._buffer)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1

    @property
    def port(self) -> int:
        return self.rtp.port

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._fd = self.rtp.sock.fileno()
        loop.add_reader(self._fd, self._readable)

    def stop(self) -> None:
        """Stop reading (the pool closes the socket). By the number the reader was added
        with: a socket closed first would otherwise stay registered and spin the loop."""
        if self._loop is not None and self._fd >= 0 and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._loop = None
        self._fd = -1

    def _readable(self) -> None:
        # One datagram a wake-up: the loop's poll is level-triggered and calls again while
        # more are queued. Draining until `BlockingIOError` cost an exception on nearly every
        # wake-up (a leg gets 50 packets a second, one at a time): bench/media.py measured
        # 4-15 % more CPU per relayed packet that way.
        try:
            size, source = self.rtp.sock.recvfrom_into(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. ICMP port unreachable from an earlier send
            if exc.errno == errno.EBADF:  # closed under us: stop, never spin
                self.stop()
                return
            log.debug("media_receive_error", port=self.rtp.port, error=str(exc))
            return
        stats = self.stats
        if size >= BUFFER_BYTES:
            stats.oversized += 1
            return
        if len(source) != 2:
            source = (source[0], source[1])  # IPv6 gives (host, port, flow, scope)
        latch = self.latch
        latched = latch.latched
        if (source != latched) if latched is not None else not latch.accepts(source):
            stats.foreign += 1
            return
        stats.received += 1
        stats.received_bytes += size
        stats.last_received = self._clock()
        try:
            self.on_packet(self._view[:size], source)
        except Exception:  # one bad packet or handler bug must not stop the leg
            log.exception("media_packet_failed", port=self.rtp.port)

    def send(self, data: bytes | bytearray | memoryview) -> bool:
        """Send to the latched (or signalled) peer; False when there is nowhere to send yet or
        the kernel refused (counted; UDP: a lost packet, not an error of the call)."""
        latch = self.latch
        remote = latch.latched or latch.signalled
        if remote is None:
            return False
        try:
            self.rtp.sock.sendto(data, remote)
        except (BlockingIOError, InterruptedError, OSError):
            self.stats.send_errors += 1
            return False
        self.stats.sent += 1
        self.stats.sent_bytes += len(data)
        return True


def resolve(host: str, port: int) -> Address:
    """The numeric address of an SDP connection address (peers give IPs; a name is resolved
    once, at signalling time, never on the packet path)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICSERV)
    address = info[0][4]
    return str(address[0]), int(address[1])
