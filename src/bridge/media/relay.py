"""The blind relay: a call's two legs joined packet by packet, with nothing decoded.

A packet from one leg goes to the other rewritten onto that leg's own outgoing stream (one SSRC,
continuous sequence numbers and timestamps, `StreamRewriter`), so the phone never sees a jump
when the source behind it changes (the leg that answered, a prompt, the mixer). Payload types
are each leg's own: the negotiated codec and telephone-event numbers can differ between the two
SDPs, and PCMU <-> PCMA is transcoded by table where the two legs chose differently. Anything
else is dropped and counted: RTCP (each leg's RTP session ends at the bridge), packets that do
not parse, payload types the leg did not negotiate.

This is the path of a call with no monitor, recording or prompt active. The packet is rewritten
in the receiving endpoint's buffer and sent from there: no copy when no transcoding is needed.
Once a leg is latched (its socket connected; for a WebRTC app, its SRTP keys agreed), its
direction is one function on the socket's reader (`_reader`): read (and unprotect), check,
rewrite, send (and protect). The rest goes through `forward`. SRTP legs, a WebRTC app's (DTLS)
or a phone's (SDES), are unprotected and protected in that buffer, in place (media/srtp.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from bridge.media import g711
from bridge.media.endpoint import BUFFER_BYTES, MediaEndpoint
from bridge.media.rtp import RtpError, RtpHeader, StreamRewriter, is_rtcp, parse_rtp
from bridge.media.srtp import pointer

_FIXED = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC

__all__ = ["BlindRelay", "PacketCounts", "Reception", "RelayLeg", "RelayStats", "read_rtp"]

log = structlog.get_logger("bridge.media")


class Reception:
    """What a leg's peer sent us, RFC 3550 style (appendix A.1, A.8): packets expected from
    the sequence numbers against packets received (the loss), and the interarrival jitter in
    seconds. A few integer operations a packet, on packets already parsed."""

    __slots__ = ("_base", "_cycles", "_max", "_transit", "jitter", "received")

    def __init__(self) -> None:
        self.received = 0
        self.jitter = 0.0  # seconds
        self._base = -1
        self._max = 0
        self._cycles = 0
        self._transit: float | None = None

    def update(self, sequence: int, timestamp: int, arrival: float, clock_rate: int) -> None:
        self.received += 1
        if self._base < 0:
            self._base = self._max = sequence
        else:
            delta = (sequence - self._max) & 0xFFFF
            if 0 < delta < 3000:
                if sequence < self._max:
                    self._cycles += 1 << 16
                self._max = sequence
        transit = arrival - timestamp / clock_rate
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d < 1.0:  # a timestamp jump (another stream) is no jitter
                self.jitter += (d - self.jitter) / 16
        self._transit = transit

    @property
    def expected(self) -> int:
        return 0 if self._base < 0 else self._cycles + self._max - self._base + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.received)


@dataclass(eq=False, slots=True)
class RelayLeg:
    """One leg as the relay sends to it: its socket, its outgoing stream, and what its peer
    negotiated (the codec's payload type, telephone-event's or None), and what it receives."""

    endpoint: MediaEndpoint
    stream: StreamRewriter
    payload_type: int
    telephone_event: int | None = None
    reception: Reception = field(default_factory=Reception)
    # Whether its peer is sent anything: not while it holds the call (our answer said
    # recvonly or inactive, RFC 3264 §6.1); what it sends is still taken.
    sending: bool = True


@dataclass(slots=True)
class PacketCounts:
    """What a leg's reader dropped before any audio work (the relay's and the mixer's)."""

    rtcp: int = 0
    malformed: int = 0
    unexpected_payload: int = 0  # a payload type that leg did not negotiate


def read_rtp(packet: memoryview, counts: PacketCounts) -> RtpHeader | None:
    """The packet's RTP header, or None for RTCP (each leg's RTP session ends at the bridge)
    and packets that do not parse, counted."""
    if is_rtcp(packet):
        counts.rtcp += 1
        return None
    try:
        return parse_rtp(packet)
    except RtpError:
        counts.malformed += 1
        return None


@dataclass(slots=True)
class RelayStats(PacketCounts):
    relayed: int = 0
    transcoded: int = 0
    dtmf_dropped: int = 0  # telephone-event toward a leg that did not negotiate it
    held: int = 0  # not sent: toward a leg whose peer holds the call


class BlindRelay:
    """Joins legs `a` and `b`: set as both endpoints' packet handlers by `attach()`."""

    def __init__(self, a: RelayLeg, b: RelayLeg, *, clock: Callable[[], float]) -> None:
        self.a = a
        self.b = b
        self.stats = RelayStats()
        self._clock = clock

    def attach(self) -> None:
        a, b = self.a, self.b
        forward = self.forward
        a.endpoint.on_packet = lambda packet, source: forward(a, b, packet)
        b.endpoint.on_packet = lambda packet, source: forward(b, a, packet)
        a.endpoint.read_directly(self._reader(a, b))
        b.endpoint.read_directly(self._reader(b, a))

    def _reader(self, src: RelayLeg, dst: RelayLeg) -> Callable[[], None]:
        """The whole packet path of one direction in one function, for `src`'s socket once it
        is connected (a phone latched; a WebRTC app's SRTP keys agreed): read, the fast path's
        checks, rewrite, send (`_relay_one`). Every other packet, and every packet while
        `dst` is not ready yet, goes the endpoint's general way and so to `forward`. Bound to
        the sockets' own methods and the objects it updates, it touches nothing else: at
        1,000 legs this is what keeps the packet path in the cache (docs/PERFORMANCE.md,
        "Media relay")."""
        source = src.endpoint
        buffer = source.buffer
        relay = self._relay_one(src, dst)
        failed = source.receive_failed
        recv_into, deliver = source.rtp.sock.recv_into, source.deliver
        secure = source.secure
        if secure is None and source.srtp is None:

            def read() -> None:
                try:
                    size = recv_into(buffer)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    failed(exc)
                    return
                if size >= BUFFER_BYTES or not relay(size):
                    deliver(size)

            return read

        # An SRTP leg: a WebRTC app's, its socket connected to the pair its ICE nominated, or
        # a phone's keyed by SDES (the engine attaches the relay again when its keys change).
        # SRTP is unprotected into the buffer and relayed as above; the rest (STUN, DTLS,
        # (S)RTCP, oversized) goes the endpoint's way (`deliver`), as does a packet the fast
        # path does not take once it is plain (`deliver_plain`).
        plain, ptr, stats = source.deliver_plain, pointer(buffer), source.stats

        def read_secure() -> None:
            try:
                size = recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                failed(exc)
                return
            srtp = source.srtp
            if (
                size >= BUFFER_BYTES
                or not 127 < buffer[0] < 192
                or 191 < buffer[1] < 224  # RTCP: 192-223 in the second byte
                or srtp is None
            ):
                deliver(size)
                return
            size = srtp.unprotect_into(ptr, size)
            if size < 0:  # authentication failed, a replay
                if secure is not None:
                    secure.dropped += 1
                else:
                    stats.srtp_dropped += 1
                return
            if not relay(size):
                plain(size)

        return read_secure

    def _relay_one(self, src: RelayLeg, dst: RelayLeg) -> Callable[[int], bool]:
        """The fast path for the plain RTP packet of `size` bytes in `src`'s buffer: a version
        2 header of 12 bytes carrying the codec both legs negotiated, toward a `dst` that is
        ready (protected in place when `dst` is an SRTP leg). True when it was relayed (or
        lost to the kernel), False to take the general way."""
        source, target = src.endpoint, dst.endpoint
        buffer, view = source.buffer, source.view
        send = target.rtp.sock.send
        unpack = _FIXED.unpack_from
        received, sent, stats = source.stats, target.stats, self.stats
        reception, stream, clock = src.reception, dst.stream, self._clock
        ptr = pointer(buffer)  # libsrtp protects in place (room for its tag)

        def relay(size: int) -> bool:
            if size < 12:
                return False
            first, second, sequence, timestamp, ssrc = unpack(buffer, 0)
            pt = second & 0x7F
            if first != 0x80 or pt != src.payload_type or pt != dst.payload_type:
                return False
            if not dst.sending:  # (`forward` counts and drops it)
                return False
            srtp = target.srtp
            if target.peer is None:  # (a WebRTC leg's: connected once its keys are there)
                return False
            now = clock()
            received.received += 1
            received.received_bytes += size
            received.last_received = now
            try:
                reception.update(sequence, timestamp, now, 8000)
                stream.rewrite_fields(buffer, sequence, timestamp, ssrc, src, now)
                if srtp is None:
                    send(view[:size])
                else:
                    protected = srtp.protect_into(ptr, size)
                    if protected < 0:
                        sent.send_errors += 1
                        return True
                    send(view[:protected])
            except OSError:  # UDP: a lost packet, not an error of the call
                sent.send_errors += 1
                return True
            except Exception:  # a bug must not stop the leg
                log.exception("media_packet_failed", port=source.port)
                return True
            sent.sent += 1
            sent.sent_bytes += size
            stats.relayed += 1
            return True

        return relay

    def forward(self, src: RelayLeg, dst: RelayLeg, packet: memoryview) -> None:
        """One packet from `src`'s peer to `dst`'s peer."""
        stats = self.stats
        header = read_rtp(packet, stats)
        if header is None:
            return
        pt = header.payload_type
        now = self._clock()
        src.reception.update(header.sequence, header.timestamp, now, 8000)
        if not dst.sending:  # its peer holds the call
            stats.held += 1
            return
        if pt == src.payload_type:
            out_pt = dst.payload_type
            if out_pt != pt:
                payload = g711.transcode(bytes(header.payload(packet)), pt, out_pt)
                out = bytearray(packet[: header.header_length])
                out += payload
                packet = memoryview(out)
                stats.transcoded += 1
        elif pt == src.telephone_event and pt is not None:
            if dst.telephone_event is None:
                stats.dtmf_dropped += 1
                return
            out_pt = dst.telephone_event
        else:
            stats.unexpected_payload += 1
            return
        if out_pt != pt:
            packet[1] = (packet[1] & 0x80) | out_pt
        dst.stream.rewrite(packet, header, src, now)
        if dst.endpoint.send(packet):
            stats.relayed += 1
