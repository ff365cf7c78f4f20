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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from bridge.media import g711
from bridge.media.endpoint import MediaEndpoint
from bridge.media.rtp import RtpError, RtpHeader, StreamRewriter, is_rtcp, parse_rtp

__all__ = ["BlindRelay", "PacketCounts", "RelayLeg", "RelayStats", "read_rtp"]

log = structlog.get_logger("bridge.media")


@dataclass(eq=False, slots=True)
class RelayLeg:
    """One leg as the relay sends to it: its socket, its outgoing stream, and what its peer
    negotiated (the codec's payload type, telephone-event's or None)."""

    endpoint: MediaEndpoint
    stream: StreamRewriter
    payload_type: int
    telephone_event: int | None = None


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


class BlindRelay:
    """Joins legs `a` and `b`: set as both endpoints' packet handlers by `attach()`."""

    def __init__(self, a: RelayLeg, b: RelayLeg, *, clock: Callable[[], float]) -> None:
        self.a = a
        self.b = b
        self.stats = RelayStats()
        self._clock = clock

    def attach(self) -> None:
        self.a.endpoint.on_packet = lambda packet, source: self.forward(self.a, self.b, packet)
        self.b.endpoint.on_packet = lambda packet, source: self.forward(self.b, self.a, packet)

    def forward(self, src: RelayLeg, dst: RelayLeg, packet: memoryview) -> None:
        """One packet from `src`'s peer to `dst`'s peer."""
        stats = self.stats
        header = read_rtp(packet, stats)
        if header is None:
            return
        pt = header.payload_type
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
        dst.stream.rewrite(packet, header, src, self._clock())
        if dst.endpoint.send(packet):
            stats.relayed += 1
