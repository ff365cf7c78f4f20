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
sources are dropped so a stray or hostile sender cannot take over a call's audio.

Once latched, the socket is `connect`ed to the peer. The kernel then drops other sources itself
(they are answered as a closed port would be, and counted in the host's UDP `NoPorts`, not in
`foreign`), reads no longer build a source address (`recv_into`), and sends take the socket's
cached route (`send`): about 2 µs less CPU per relayed packet here (docs/PERFORMANCE.md). A new
SDP address from the peer (re-INVITE) disconnects it again until the next packet latches.

SRTP keyed by SDES (a desk phone's or trunk's `a=crypto`, `use_srtp`): the leg is otherwise a
phone's like any other, latched and connected the same way (but only on a packet that
authenticates, `_latch_srtp`); every RTP datagram it reads is
unprotected in the buffer, in place, before anything sees it (one that fails authentication or
is a replay is counted in `srtp_dropped` and dropped), and every packet it sends is protected.
(S)RTCP is handed on as it came, counted as RTCP and dropped as on a plain leg. A WebRTC leg's
SRTP (`secure`, keyed by DTLS) is the same `SrtpSessions` once connected, also in `srtp`: the
relay protects toward both kinds alike.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pylibsrtp
import structlog

from bridge.media.ports import RtpSocket
from bridge.media.srtp import SrtpSessions, pointer

if TYPE_CHECKING:
    from bridge.media.webrtc import WebRtcLeg

__all__ = ["Address", "EndpointStats", "Latch", "MediaEndpoint"]

log = structlog.get_logger("bridge.media")

Address = tuple[str, int]
# Larger than any RTP packet of an audio call (G.711 20 ms: 172 bytes); a datagram that fills
# the buffer was truncated by the kernel, so it is dropped as oversized.
BUFFER_BYTES = 2048
# connect(2) to an AF_UNSPEC address dissolves a UDP socket's association (Python's `connect`
# takes only addresses of the socket's own family)
_UNSPEC = struct.pack("@H14x", socket.AF_UNSPEC)
_libc: ctypes.CDLL | None = None


def _ignore(packet: memoryview, source: Address) -> None:
    """The packet handler of a stopped endpoint."""


def _disconnect(sock: socket.socket) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.connect(sock.fileno(), _UNSPEC, len(_UNSPEC)) != 0:
        error = ctypes.get_errno()
        raise OSError(error, errno.errorcode.get(error, str(error)))


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
    srtp_dropped: int = 0  # SDES: failed SRTP authentication, or a replay
    send_errors: int = 0
    last_received: float | None = None  # on the engine's clock


class MediaEndpoint:
    """A leg's socket: reads datagrams into a buffer and hands the accepted ones on.

    `on_packet(packet, source)` gets every accepted datagram (plain RTP: an SRTP leg's are
    unprotected first). A handler that can do better than that on a connected socket (the
    blind relay: read, rewrite and send in one function) installs itself with
    `read_directly`; it then calls `recv_into` itself, and hands what it does not handle to
    `deliver` (a datagram as read) or `deliver_plain` (one it unprotected). Setting
    `on_packet` again, or `use_srtp`, removes it.
    """

    __slots__ = (
        "_armed",
        "_clock",
        "_direct",
        "_fd",
        "_loop",
        "_on_packet",
        "_pointer",
        "_secure_connect_failed",
        "_secure_reported",
        "_secure_timer",
        "buffer",
        "latch",
        "on_secure",
        "peer",
        "rtp",
        "secure",
        "srtp",
        "stats",
        "view",
    )

    def __init__(
        self,
        rtp: RtpSocket,
        latch: Latch,
        on_packet: Callable[[memoryview, Address], None],
        *,
        clock: Callable[[], float],
        buffer: bytearray | None = None,
    ) -> None:
        self.rtp = rtp
        self.latch = latch
        self.stats = EndpointStats()
        self._clock = clock
        # The engine gives all its endpoints one buffer (they read one at a time, on its loop):
        # a buffer per leg was 2 KiB of cache misses per packet (docs/PERFORMANCE.md).
        self.buffer = buffer if buffer is not None else bytearray(BUFFER_BYTES)
        self.view = memoryview(self.buffer)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self.peer: Address | None = None  # the address the socket is connected to
        self._on_packet = on_packet
        self._direct: Callable[[], None] | None = None
        self._armed: Callable[[], None] | None = None
        # A WebRTC leg: ICE-lite and DTLS-SRTP between the socket and `on_packet`, which sees
        # plain RTP as from any other leg. `on_secure(None)` once it is connected,
        # `on_secure(reason)` when it failed.
        self.secure: WebRtcLeg | None = None
        self.on_secure: Callable[[str | None], None] | None = None
        self._secure_reported = False
        self._secure_connect_failed = False
        self._secure_timer: asyncio.TimerHandle | None = None
        # The leg's SRTP sessions: an SDES leg's (`use_srtp`), or a WebRTC leg's once its DTLS
        # is connected. The relay protects toward either with them.
        self.srtp: SrtpSessions | None = None
        self._pointer: object = None  # cffi pointer to `buffer`, for libsrtp in place

    @property
    def port(self) -> int:
        return self.rtp.port

    @property
    def on_packet(self) -> Callable[[memoryview, Address], None]:
        return self._on_packet

    @on_packet.setter
    def on_packet(self, handler: Callable[[memoryview, Address], None]) -> None:
        self._on_packet = handler
        if self._direct is not None:
            self._direct = None
            self._arm()

    def use_srtp(self, sessions: SrtpSessions | None) -> None:
        """SDES: from now on every datagram read is unprotected with `sessions` before anything
        sees it and every packet sent is protected (None: plain RTP again). A direct reader
        installed before is dropped (it was made for the other kind of leg): the relay's
        `attach` installs its own again."""
        if sessions is self.srtp:
            return
        self.srtp = sessions
        if sessions is not None and self._pointer is None:
            self._pointer = pointer(self.buffer)
        if self._direct is not None:
            self._direct = None
            self._arm()

    def read_directly(self, reader: Callable[[], None]) -> None:
        """Let `reader` read the socket itself while it is connected to the peer."""
        self._direct = reader
        self._arm()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._fd = self.rtp.sock.fileno()
        self._arm()

    def _arm(self) -> None:
        """Register the reader the socket's state calls for."""
        if self._loop is None or self._fd < 0:
            return
        if self.secure is not None:
            # a WebRTC leg: directly once its SRTP keys are there and its socket is connected
            # to the pair its ICE nominated
            direct = self._direct if self.secure.connected and self.peer is not None else None
            reader = direct or self._readable
        elif self.peer is None:
            reader = self._readable
        else:
            reader = self._direct or self._read_peer
        if reader != self._armed:
            self._loop.add_reader(self._fd, reader)
            self._armed = reader

    def signal(self, signalled: Address | None, *, behind_nat: bool) -> None:
        """What the peer's (new) SDP says: where it sends from, or that it may be behind NAT.
        A new address unlatches the leg (and disconnects its socket) until the next packet."""
        latch = self.latch
        latch.behind_nat = behind_nat
        latch.resignal(signalled)
        if self.peer is not None and latch.latched is None:
            self.peer = None
            try:
                _disconnect(self.rtp.sock)
            except OSError as exc:
                log.debug("media_disconnect_failed", port=self.rtp.port, error=str(exc))
            self._arm()

    def stop(self) -> None:
        """Stop reading (the pool closes the socket). By the number the reader was added
        with: a socket closed first would otherwise stay registered and spin the loop."""
        if self._loop is not None and self._fd >= 0 and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._loop = None
        self._fd = -1
        self._armed = None
        # The relay's reader and handlers hold this endpoint (and the other leg's): dropped
        # here, the call's objects die by reference counting, not in a later full collection
        # (the daemon's collector freezes what lives past a quarter of a second, so cyclic
        # garbage waited for its ten-minute sweep: a pause of seconds at 150 calls/s).
        self._direct = None
        self._on_packet = _ignore
        if self._secure_timer is not None:
            self._secure_timer.cancel()
            self._secure_timer = None

    def _readable(self) -> None:
        """The reader before latching: one datagram, its source checked by the latch."""
        # One datagram a wake-up: the loop's poll is level-triggered and calls again while
        # more are queued. Draining until `BlockingIOError` cost an exception on nearly every
        # wake-up (a leg gets 50 packets a second, one at a time): bench/media.py measured
        # 4-15 % more CPU per relayed packet that way.
        try:
            size, source = self.rtp.sock.recvfrom_into(self.buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. ICMP port unreachable from an earlier send
            self.receive_failed(exc)
            return
        if len(source) != 2:
            source = (source[0], source[1])  # IPv6 gives (host, port, flow, scope)
        if self.secure is not None:
            self._read_secure(size, source)
            return
        latch = self.latch
        latched = latch.latched
        if latched is not None:
            if source != latched:  # latched, but the connect failed
                self.stats.foreign += 1
                return
            self._deliver(size, source)
        elif self.srtp is not None:
            self._latch_srtp(size, source)
        elif latch.accepts(source):
            self._deliver(size, source)
            self._connect(source)
        else:
            self.stats.foreign += 1

    def _latch_srtp(self, size: int, source: Address) -> None:
        """An SDES leg's datagram before latching: only an SRTP packet that authenticates
        latches the leg, so a stranger who knows the port cannot take its audio over (a plain
        leg behind NAT latches on any first packet). What is not RTP from an acceptable
        source is handed on unlatched (RTCP: counted and dropped there)."""
        latch = self.latch
        if not (latch.behind_nat or latch.signalled is None or source == latch.signalled):
            self.stats.foreign += 1
            return
        if size >= BUFFER_BYTES:
            self.stats.oversized += 1
            return
        buffer = self.buffer
        if size < 12 or not 127 < buffer[0] < 192 or 191 < buffer[1] < 224:
            self._hand_on(size, source)
            return
        size = self._unprotect(self.srtp, size)  # type: ignore[arg-type]
        if size < 0:
            return
        latch.accepts(source)
        self._hand_on(size, source)
        self._connect(source)

    # -- WebRTC legs ---------------------------------------------------------------------------
    def make_secure(self, leg: WebRtcLeg) -> None:
        """From now on the socket speaks ICE-lite and DTLS-SRTP (a WebRTC app's leg)."""
        if self.peer is not None:
            self.signal(None, behind_nat=True)
        self.srtp = None  # its keys come from the handshake
        self.secure = leg
        self._secure_reported = False
        self._arm()
        self._after_secure()

    def _read_secure(self, size: int, source: Address) -> None:
        secure = self.secure
        assert secure is not None
        if size >= BUFFER_BYTES:
            self.stats.oversized += 1
            return
        plain = secure.receive(bytes(self.view[:size]), source)
        if secure.outgoing or not self._secure_reported or self._secure_timer is not None:
            self._after_secure()  # (a connected leg's SRTP needs none of it)
        if plain is not None:
            length = len(plain)
            if length < BUFFER_BYTES:
                self.buffer[:length] = plain
                self._hand_on(length, source)

    def _after_secure(self) -> None:
        """Send what the WebRTC leg has to send, report its state, arm its DTLS timer."""
        secure = self.secure
        if secure is None:
            return
        sock = self.rtp.sock
        for datagram, address in secure.outgoing:
            try:
                sock.sendto(datagram, address)
            except OSError:
                self.stats.send_errors += 1
        secure.outgoing.clear()
        if self.peer is None and secure.connected and secure.ice.nominated:
            self._connect_secure(secure.ice.selected)
        if not self._secure_reported and (secure.connected or secure.failed is not None):
            self._secure_reported = True
            self._arm()  # a direct reader may take over now
            if self.on_secure is not None:
                self.on_secure(secure.failed)
        if self._secure_timer is not None:
            self._secure_timer.cancel()
            self._secure_timer = None
        delay = secure.timeout()
        if delay is not None and self._loop is not None:
            self._secure_timer = self._loop.call_later(delay, self._secure_timeout)

    def _connect_secure(self, selected: Address | None) -> None:
        """Connect a WebRTC leg's socket to the pair its ICE nominated, once its SRTP keys are
        there: the packet path then reads and sends without an address (as a latched phone's;
        bench/webrtc.py). Datagrams from the app's other candidates are dropped by the kernel
        from then on; its consent checks come on the nominated pair."""
        if selected is None or self._secure_connect_failed:
            return
        try:
            self.rtp.sock.connect(selected)
        except OSError as exc:  # stay unconnected: the general reader checks each source
            self._secure_connect_failed = True
            log.debug("media_connect_failed", port=self.rtp.port, error=str(exc))
            return
        dtls = self.secure.dtls if self.secure is not None else None
        self.srtp = dtls.srtp if dtls is not None else None  # before `peer`: the relay's test
        self.peer = selected
        self._arm()

    def _secure_timeout(self) -> None:
        self._secure_timer = None
        if self.secure is not None:
            self.secure.on_timeout()
            self._after_secure()

    def _read_peer(self) -> None:
        """The reader of a connected socket: only the latched peer's datagrams arrive."""
        try:
            size = self.rtp.sock.recv_into(self.buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.receive_failed(exc)
            return
        self._deliver(size, self.peer)  # type: ignore[arg-type]

    def deliver(self, size: int) -> None:
        """Hand the datagram of `size` bytes in the buffer, as read from the connected peer, on:
        a WebRTC leg's as STUN, DTLS or SRTP; an SDES leg's unprotected first."""
        if self.secure is not None:
            self._read_secure(size, self.peer)  # type: ignore[arg-type]
        else:
            self._deliver(size, self.peer)  # type: ignore[arg-type]

    def deliver_plain(self, size: int) -> None:
        """Hand the plain RTP packet of `size` bytes in the buffer (unprotected already), from
        the connected peer, on."""
        self._hand_on(size, self.peer)  # type: ignore[arg-type]

    def deliver_from(self, size: int, source: Address) -> None:
        """Hand the datagram of `size` bytes in the buffer, as read from `source`, on."""
        self._deliver(size, source)

    def _deliver(self, size: int, source: Address) -> None:
        """A datagram as read (a plain or SDES leg's)."""
        if size >= BUFFER_BYTES:  # the kernel truncated it: not an audio call's packet
            self.stats.oversized += 1
            return
        srtp = self.srtp
        if srtp is not None:
            size = self._unprotect(srtp, size)
            if size < 0:
                return
        self._hand_on(size, source)

    def _unprotect(self, srtp: SrtpSessions, size: int) -> int:
        """An SDES leg's datagram, unprotected in the buffer: the plain size, or -1 (dropped,
        counted). What is not SRTP is handed on as it came: (S)RTCP (second byte 192-223) is
        counted as RTCP and dropped there, anything else that is not RTP as malformed."""
        buffer = self.buffer
        if size < 12 or not 127 < buffer[0] < 192 or 191 < buffer[1] < 224:
            return size
        size = srtp.unprotect_into(self._pointer, size)
        if size < 0:
            self.stats.srtp_dropped += 1
        return size

    def _hand_on(self, size: int, source: Address) -> None:
        """A plain packet of `size` bytes in the buffer, to `on_packet`."""
        stats = self.stats
        stats.received += 1
        stats.received_bytes += size
        stats.last_received = self._clock()
        try:
            self._on_packet(self.view[:size], source)
        except Exception:  # one bad packet or handler bug must not stop the leg
            log.exception("media_packet_failed", port=self.rtp.port)

    def receive_failed(self, exc: OSError) -> None:
        """A read that raised: an error the kernel reports once (ICMP port unreachable from
        an earlier send), or the socket closed under us (stop, never spin)."""
        if exc.errno == errno.EBADF:
            self.stop()
            return
        log.debug("media_receive_error", port=self.rtp.port, error=str(exc))

    def _connect(self, peer: Address) -> None:
        """Connect to the peer just latched. What other sources queued before that is read
        (and dropped) the old way, so nothing of theirs is taken for the peer's."""
        sock = self.rtp.sock
        try:
            sock.connect(peer)
        except OSError as exc:  # stay unconnected: `_readable` keeps checking sources
            log.debug("media_connect_failed", port=self.rtp.port, error=str(exc))
            return
        self.peer = peer
        while self.peer == peer:  # the backlog from before the connect
            try:
                size, source = sock.recvfrom_into(self.buffer)
            except OSError:  # BlockingIOError: drained; anything else: the next read says
                break
            if (source[0], source[1]) != peer:
                self.stats.foreign += 1
            else:
                self._deliver(size, peer)
        self._arm()

    def send(self, data: bytes | bytearray | memoryview) -> bool:
        """Send to the latched (or signalled) peer; False when there is nowhere to send yet or
        the kernel refused (counted; UDP: a lost packet, not an error of the call)."""
        size = len(data)
        try:
            secure = self.secure
            if secure is not None:
                protected = secure.protect(bytes(data))
                if protected is None or secure.remote is None:
                    return False
                self.rtp.sock.sendto(protected, secure.remote)
            else:
                srtp = self.srtp
                if srtp is not None:  # SDES
                    data = srtp.protect(bytes(data))
                if self.peer is not None:
                    self.rtp.sock.send(data)
                else:
                    latch = self.latch
                    remote = latch.latched or latch.signalled
                    if remote is None:
                        return False
                    self.rtp.sock.sendto(data, remote)
        except (BlockingIOError, InterruptedError, OSError, pylibsrtp.Error):
            self.stats.send_errors += 1
            return False
        self.stats.sent += 1
        self.stats.sent_bytes += size
        return True


def resolve(host: str, port: int) -> Address:
    """The numeric address of an SDP connection address. Only an IP address is taken: a name
    would be looked up on the event loop, for as long as the peer's choice of name makes DNS
    take, with every call waiting (and a name the IDNA codec refuses raised UnicodeError, which
    no caller expected). Phones and trunks put addresses there. OSError for anything else."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(family, socket.inet_pton(family, host)), port
        except (OSError, ValueError):
            continue
    raise OSError(f"not an IP address: {host[:64]!r}")
