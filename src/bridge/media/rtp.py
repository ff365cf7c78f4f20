"""RTP packets (RFC 3550) and one continuous outgoing stream over changing sources (sans-I/O).

Parsing is what the engine does to every datagram a peer sends, so it is strict (anything
malformed is an `RtpError` with the reason, never another exception: the packet path drops and
counts it) and cheap (one `struct` read; the payload is not copied, only its bounds are given).

`StreamRewriter` is why a phone never notices the bridge: what it receives is one RTP stream
(one SSRC, sequence numbers one apart, timestamps on one clock) although the packets come from
the leg that answered, then a prompt, then the mixer when a supervisor joins, then the leg again.
A receiver that saw the SSRC change or the sequence jump would reset its jitter buffer, play a
click, or (some phones) drop audio for a second or two.

Nothing here touches a socket, the event loop or a clock: time is passed in.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable
from typing import NamedTuple

__all__ = [
    "RTP_HEADER_BYTES",
    "RtpError",
    "RtpHeader",
    "StreamRewriter",
    "build_rtp",
    "is_rtcp",
    "parse_rtp",
]

RTP_HEADER_BYTES = 12
_FIXED = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
_SEQ_TS_SSRC = struct.Struct("!HII")  # what the rewriter writes, at offset 2
_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32
# RFC 3550 A.1: a source's sequence may skip ahead this far (loss) or back this far (reordering)
# and still be the same stream; a bigger jump is a restarted stream.
MAX_DROPOUT = 3000
MAX_MISORDER = 100


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet; the message says why."""


class RtpHeader(NamedTuple):
    """A parsed RTP header: immutable, as a frozen dataclass would be, but a NamedTuple because
    one is built for every packet the engine receives, and a frozen dataclass's constructor
    (one `object.__setattr__` per field) costs about 2 µs more a packet here, a sixth of the
    relay's whole per-packet budget (DESIGN.md, "Media")."""

    version: int
    padding: bool
    extension: bool
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    csrc: tuple[int, ...]
    header_length: int  # bytes before the payload: fixed header, CSRCs and the extension
    payload_length: int  # payload bytes, without the padding

    def payload(self, data: bytes | bytearray | memoryview) -> memoryview:
        """The payload of the packet this header was parsed from (a view, no copy)."""
        return memoryview(data)[self.header_length : self.header_length + self.payload_length]


def parse_rtp(data: bytes | bytearray | memoryview) -> RtpHeader:
    """The header of an RTP packet; `RtpError` for anything malformed (and nothing else)."""
    size = len(data)
    if size < RTP_HEADER_BYTES:
        raise RtpError(f"{size} bytes, shorter than the 12-byte RTP header")
    first, second, sequence, timestamp, ssrc = _FIXED.unpack_from(data, 0)
    version = first >> 6
    if version != 2:
        raise RtpError(f"RTP version {version}, not 2")
    count = first & 0x0F
    offset = RTP_HEADER_BYTES + 4 * count
    if offset > size:
        raise RtpError(f"{count} CSRCs run past the end of a {size}-byte packet")
    csrc = struct.unpack_from(f"!{count}I", data, RTP_HEADER_BYTES) if count else ()
    extension = bool(first & 0x10)
    if extension:
        if offset + 4 > size:
            raise RtpError("header extension runs past the end of the packet")
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
        if offset > size:
            raise RtpError(f"header extension of {words} words runs past the end of the packet")
    payload_length = size - offset
    padding = bool(first & 0x20)
    if padding:
        if payload_length == 0:
            raise RtpError("padding flag set but no room for the padding count")
        pad = data[size - 1]
        if pad == 0 or pad > payload_length:
            raise RtpError(f"padding count {pad} for {payload_length} bytes after the header")
        payload_length -= pad
    return RtpHeader(  # positional: the cheapest way to build it on the packet path
        version,
        padding,
        extension,
        bool(second & 0x80),
        second & 0x7F,
        sequence,
        timestamp,
        ssrc,
        csrc,
        offset,
        payload_length,
    )


def is_rtcp(data: bytes | bytearray | memoryview) -> bool:
    """Whether a datagram on an RTP port is RTCP (RFC 5761 section 4: with rtcp-mux both share
    one port; RTCP packet types 192..223 fall where RTP's marker bit plus payload types 64..95
    would be, which no audio payload type uses)."""
    return len(data) >= 2 and data[0] >> 6 == 2 and 192 <= data[1] <= 223


def build_rtp(
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes | bytearray | memoryview,
    *,
    marker: bool = False,
) -> bytes:
    """A version 2 RTP packet without padding, CSRCs or extension. Sequence and timestamp are
    taken modulo 2**16 and 2**32 (they are counters that wrap)."""
    if not 0 <= payload_type <= 127:
        raise ValueError(f"payload type {payload_type} is not in 0..127")
    if not 0 <= ssrc < _TS_MOD:
        raise ValueError(f"SSRC {ssrc} is not a 32-bit unsigned integer")
    head = _FIXED.pack(
        0x80,
        (0x80 if marker else 0) | payload_type,
        sequence % _SEQ_MOD,
        timestamp % _TS_MOD,
        ssrc,
    )
    return head + bytes(payload)


_GENERATED = -1  # the "SSRC" of packets the bridge makes itself (`stamp`), never a real one


class StreamRewriter:
    """One outgoing RTP stream, continuous whatever feeds it.

    Every packet sent to a peer goes through its leg's rewriter, either relayed (`rewrite`, in
    place) or generated by the bridge (`stamp`). A *source* is whatever the caller says feeds
    the stream (a hashable key: the other leg, "prompt", "mixer"); a source plus the SSRC its
    packets carry is one input stream.

    - While the input stream stays the same, its packets keep their own sequence gaps (loss
      stays visible to the phone's jitter buffer and its statistics) and timestamp steps
      (silence suppression, packet size): the rewriter only adds constant offsets.
    - When the input stream changes (another source, or the same source with another SSRC, or
      a sequence jump too large to be loss or reordering: a restarted stream), the next packet
      goes out with sequence = last + 1 and timestamp = last + the wall time elapsed since the
      last packet, in samples, and at least one packet's worth (the last step seen, 20 ms at
      first), so the phone's playout neither overlaps nor leaves a hole it would stretch. That
      packet gets the marker bit: RFC 3551 marks the start of a talkspurt, and receivers resync
      their playout there.
    - Sequence and timestamp wrap modulo 2**16 and 2**32. Late or duplicated packets of the
      current input are rewritten with the same offsets and do not move the stream's position.

    The first packet of the stream carries `initial_sequence` and `initial_timestamp` (random
    ones, RFC 3550 section 5.1: the caller picks them, this class draws no randomness).
    """

    __slots__ = (
        "_last_input_seq",
        "_last_samples",
        "_last_seq",
        "_last_time",
        "_last_ts",
        "_seq_offset",
        "_source",
        "_source_ssrc",
        "_started",
        "_step",
        "_ts_offset",
        "clock_rate",
        "ssrc",
    )

    def __init__(
        self,
        ssrc: int,
        clock_rate: int = 8000,
        *,
        initial_sequence: int,
        initial_timestamp: int,
    ) -> None:
        if not 0 <= ssrc < _TS_MOD:
            raise ValueError(f"SSRC {ssrc} is not a 32-bit unsigned integer")
        if clock_rate <= 0:
            raise ValueError(f"clock rate {clock_rate} must be positive")
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self._started = False
        self._last_seq = (initial_sequence - 1) % _SEQ_MOD
        self._last_ts = initial_timestamp % _TS_MOD
        self._last_time = 0.0
        self._step = clock_rate // 50  # one 20 ms packet until a source shows its own step
        self._source: Hashable | None = None
        self._source_ssrc = _GENERATED
        self._seq_offset = 0
        self._ts_offset = 0
        self._last_input_seq = 0
        self._last_samples = 0

    @property
    def last_sequence(self) -> int | None:
        """The sequence number of the last packet out (None before the first)."""
        return self._last_seq if self._started else None

    @property
    def last_timestamp(self) -> int | None:
        """The timestamp of the last packet out (None before the first)."""
        return self._last_ts if self._started else None

    def _continue(self, now: float) -> tuple[int, int]:
        """Sequence and timestamp of the first packet after a change of input."""
        if not self._started:
            self._started = True
            return (self._last_seq + 1) % _SEQ_MOD, self._last_ts
        elapsed = round((now - self._last_time) * self.clock_rate)
        return (self._last_seq + 1) % _SEQ_MOD, (self._last_ts + max(elapsed, self._step)) % _TS_MOD

    def _advance(self, sequence: int, timestamp: int, now: float) -> None:
        step = (timestamp - self._last_ts) % _TS_MOD
        if (sequence - self._last_seq) % _SEQ_MOD == 1 and 0 < step <= self.clock_rate // 5:
            self._step = step  # a packet's worth (up to 200 ms; more is a silence gap)
        self._last_seq, self._last_ts, self._last_time = sequence, timestamp, now

    def rewrite(
        self,
        packet: bytearray | memoryview,
        header: RtpHeader,
        source: Hashable,
        now: float,
    ) -> None:
        """Rewrite a relayed packet's SSRC, sequence and timestamp in place (and set its marker
        bit when it starts a new input; see the class docstring). `header` is the packet's
        parsed header (`parse_rtp`), `now` the engine's clock in seconds. The packet is changed:
        a caller sending one packet into two streams rewrites a copy for each."""
        self.rewrite_fields(packet, header.sequence, header.timestamp, header.ssrc, source, now)

    def rewrite_fields(
        self,
        packet: bytearray | memoryview,
        in_sequence: int,
        in_timestamp: int,
        in_ssrc: int,
        source: Hashable,
        now: float,
    ) -> None:
        """`rewrite` from the packet's own sequence, timestamp and SSRC (the relay's fast path
        reads them without building an `RtpHeader`)."""
        if source == self._source and in_ssrc == self._source_ssrc:
            ahead = (in_sequence - self._last_input_seq) % _SEQ_MOD
            if 0 < ahead < MAX_DROPOUT:  # in order, maybe after some loss
                sequence = (in_sequence + self._seq_offset) % _SEQ_MOD
                timestamp = (in_timestamp + self._ts_offset) % _TS_MOD
                _SEQ_TS_SSRC.pack_into(packet, 2, sequence, timestamp, self.ssrc)
                self._last_input_seq = in_sequence
                # `_advance`, inline: this is every relayed packet
                step = (timestamp - self._last_ts) % _TS_MOD
                if ahead == 1 and 0 < step <= self.clock_rate // 5:
                    self._step = step
                self._last_seq, self._last_ts, self._last_time = sequence, timestamp, now
                return
            if ahead == 0 or ahead >= _SEQ_MOD - MAX_MISORDER:  # duplicate or late
                _SEQ_TS_SSRC.pack_into(
                    packet,
                    2,
                    (in_sequence + self._seq_offset) % _SEQ_MOD,
                    (in_timestamp + self._ts_offset) % _TS_MOD,
                    self.ssrc,
                )
                return
            # a jump no loss explains: the source restarted its stream; continue from here
        sequence, timestamp = self._continue(now)
        self._source, self._source_ssrc = source, in_ssrc
        self._seq_offset = (sequence - in_sequence) % _SEQ_MOD
        self._ts_offset = (timestamp - in_timestamp) % _TS_MOD
        self._last_input_seq = in_sequence
        _SEQ_TS_SSRC.pack_into(packet, 2, sequence, timestamp, self.ssrc)
        packet[1] |= 0x80
        self._last_seq, self._last_ts, self._last_time = sequence, timestamp, now

    def stamp(
        self,
        payload_type: int,
        payload: bytes | bytearray | memoryview,
        samples: int,
        now: float,
        source: Hashable,
        *,
        marker: bool = False,
    ) -> bytes:
        """A packet the bridge generates (mixer frame, prompt, DTMF), continuing the stream.

        `samples` is how much audio the payload holds, in clock units (160 for 20 ms of G.711):
        the next packet of the same source is stamped that much later, so a generated stream
        is clocked by its content, not by when the timer fired. Packets with `samples=0` share
        their timestamp (RFC 4733 events: every packet of one key press has the event's start
        timestamp). The first packet after another source gets sequence = last + 1, the
        timestamp of the elapsed wall time, and the marker bit, as in `rewrite`.
        """
        if self._started and source == self._source and self._source_ssrc == _GENERATED:
            sequence = (self._last_seq + 1) % _SEQ_MOD
            timestamp = (self._last_ts + self._last_samples) % _TS_MOD
            self._advance(sequence, timestamp, now)
        else:
            sequence, timestamp = self._continue(now)
            self._source, self._source_ssrc = source, _GENERATED
            self._last_seq, self._last_ts, self._last_time = sequence, timestamp, now
            marker = True
        self._last_samples = samples
        if 0 < samples <= self.clock_rate // 5:
            self._step = samples
        return build_rtp(payload_type, sequence, timestamp, self.ssrc, payload, marker=marker)
