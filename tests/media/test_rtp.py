"""RTP parsing (malformed packets refused with a reason, never another exception), RTCP
demultiplexing, and the rewriter that keeps one outgoing stream continuous over changing
sources."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.media.rtp import (
    RtpError,
    RtpHeader,
    StreamRewriter,
    build_rtp,
    is_rtcp,
    parse_rtp,
)

PCMU_20MS = bytes(range(160))


def test_build_then_parse() -> None:
    packet = build_rtp(0, 65535, 2**32 - 1, 0xDEADBEEF, PCMU_20MS, marker=True)
    assert len(packet) == 172
    header = parse_rtp(packet)
    assert header == RtpHeader(
        version=2,
        padding=False,
        extension=False,
        marker=True,
        payload_type=0,
        sequence=65535,
        timestamp=2**32 - 1,
        ssrc=0xDEADBEEF,
        csrc=(),
        header_length=12,
        payload_length=160,
    )
    assert bytes(header.payload(packet)) == PCMU_20MS
    # counters wrap; bad payload types and SSRCs are refused
    assert parse_rtp(build_rtp(8, 65536 + 3, 2**32 + 5, 1, b"")).sequence == 3
    with pytest.raises(ValueError):
        build_rtp(128, 0, 0, 1, b"")
    with pytest.raises(ValueError):
        build_rtp(0, 0, 0, 2**32, b"")


def test_csrcs_extension_and_padding() -> None:
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 8, 7, 1000, 42)
    csrcs = struct.pack("!II", 11, 22)
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xaa\x00\x00"
    payload = b"\xd5" * 160
    padding = b"\x00\x00\x03"
    packet = header + csrcs + extension + payload + padding
    parsed = parse_rtp(bytearray(packet))
    assert parsed.csrc == (11, 22)
    assert parsed.padding and parsed.extension
    assert parsed.header_length == 12 + 8 + 8
    assert parsed.payload_length == 160
    assert bytes(parsed.payload(memoryview(packet))) == payload


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter"),
        (b"\x80\x00" + b"\x00" * 9, "shorter"),
        (b"\x40" + b"\x00" * 20, "version 1"),
        (b"\x83" + b"\x00" * 19, "CSRC"),  # 3 CSRCs, room for 2
        (b"\x90" + b"\x00" * 13, "extension"),  # no room for the extension header
        (b"\x90" + b"\x00" * 13 + b"\x00\x02" + b"\x00" * 4, "extension of 2 words"),
        (b"\xa0" + b"\x00" * 11, "no room"),  # padding flag, no payload at all
        (b"\xa0" + b"\x00" * 11 + b"\x01\x02\x00", "padding count 0"),
        (b"\xa0" + b"\x00" * 11 + b"\x01\x02\x04", "padding count 4"),
    ],
)
def test_malformed_packets_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(RtpError, match=reason):
        parse_rtp(data)


@settings(deadline=None, max_examples=2000)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_rtp_error(data: bytes) -> None:
    try:
        header = parse_rtp(data)
    except RtpError:
        return
    assert 12 <= header.header_length <= len(data)
    assert 0 <= header.payload_length <= len(data) - header.header_length


@settings(deadline=None)
@given(st.binary(min_size=1, max_size=40), st.binary(max_size=200))
def test_arbitrary_bytes_after_a_valid_start(head: bytes, tail: bytes) -> None:
    """Version 2 with random flags and counts: the deeper checks, not just the version."""
    data = bytes([0x80 | (head[0] & 0x3F)]) + head[1:] + tail
    with contextlib.suppress(RtpError):
        parse_rtp(memoryview(data))


def test_rtcp_demultiplexing() -> None:
    receiver_report = struct.pack("!BBHI", 0x80, 201, 1, 0x1234)
    sender_report = struct.pack("!BBHI", 0x81, 200, 12, 0x1234) + b"\x00" * 44
    assert is_rtcp(receiver_report) and is_rtcp(sender_report)
    assert not is_rtcp(build_rtp(0, 1, 2, 3, PCMU_20MS))
    assert not is_rtcp(build_rtp(8, 1, 2, 3, PCMU_20MS, marker=True))  # 0x88: RTP
    assert not is_rtcp(build_rtp(101, 1, 2, 3, b"\x01\x00\x00\xa0", marker=True))  # 0xe5
    assert not is_rtcp(b"\x80")
    assert not is_rtcp(b"\x40\xc9\x00\x01")  # version 1


class Source:
    """A peer's RTP stream: its own SSRC, sequence and timestamp, 20 ms G.711 packets."""

    def __init__(self, ssrc: int, sequence: int, timestamp: int, step: int = 160) -> None:
        self.ssrc, self.sequence, self.timestamp, self.step = ssrc, sequence, timestamp, step

    def packet(self, *, skip: int = 0, marker: bool = False) -> bytearray:
        self.sequence = (self.sequence + skip) % 2**16
        self.timestamp = (self.timestamp + skip * self.step) % 2**32
        data = bytearray(
            build_rtp(0, self.sequence, self.timestamp, self.ssrc, PCMU_20MS, marker=marker)
        )
        self.sequence = (self.sequence + 1) % 2**16
        self.timestamp = (self.timestamp + self.step) % 2**32
        return data


def relay(rewriter: StreamRewriter, packet: bytearray, source: object, now: float) -> RtpHeader:
    rewriter.rewrite(packet, parse_rtp(packet), source, now)
    return parse_rtp(packet)


def test_one_source_keeps_its_gaps_and_steps_under_constant_offsets() -> None:
    out = StreamRewriter(0xABCD, initial_sequence=1000, initial_timestamp=50_000)
    leg = Source(ssrc=7, sequence=40_000, timestamp=123_456)
    first = relay(out, leg.packet(), "callee", 0.0)
    assert (first.ssrc, first.sequence, first.timestamp) == (0xABCD, 1000, 50_000)
    assert first.marker  # the stream's first packet
    second = relay(out, leg.packet(), "callee", 0.02)
    assert (second.sequence, second.timestamp, second.marker) == (1001, 50_160, False)
    lost_two = relay(out, leg.packet(skip=2), "callee", 0.08)  # two packets lost: still visible
    assert (lost_two.sequence, lost_two.timestamp) == (1004, 50_640)
    talkspurt = leg.packet(marker=True)  # the source's own marker is kept
    assert relay(out, talkspurt, "callee", 0.1).marker
    assert out.last_sequence == 1005 and out.last_timestamp == 50_800


def test_switching_sources_continues_by_elapsed_time_with_the_marker() -> None:
    out = StreamRewriter(99, initial_sequence=10, initial_timestamp=0)
    ringback = Source(ssrc=1, sequence=500, timestamp=9_000)
    callee = Source(ssrc=2, sequence=60_000, timestamp=4_000_000_000)
    for i in range(3):
        relay(out, ringback.packet(), "prompt", i * 0.02)
    assert (out.last_sequence, out.last_timestamp) == (12, 320)
    # the callee answers 100 ms after the last ring-back packet
    answered = relay(out, callee.packet(), "callee", 0.14)
    assert (answered.ssrc, answered.sequence, answered.timestamp) == (99, 13, 320 + 800)
    assert answered.marker
    following = relay(out, callee.packet(), "callee", 0.16)
    assert (following.sequence, following.timestamp, following.marker) == (14, 1280, False)
    # a packet arriving right after the switch still moves the clock by one packet's worth
    back = relay(out, ringback.packet(), "prompt", 0.161)
    assert (back.sequence, back.timestamp, back.marker) == (15, 1440, True)


def test_same_source_new_ssrc_or_restart_is_a_switch() -> None:
    out = StreamRewriter(5, initial_sequence=0, initial_timestamp=0)
    relay(out, Source(1, 100, 0).packet(), "callee", 0.0)
    renewed = relay(out, Source(2, 100, 0).packet(), "callee", 0.02)  # re-INVITE, new SSRC
    assert (renewed.sequence, renewed.timestamp, renewed.marker) == (1, 160, True)
    restarted = relay(out, Source(2, 30_000, 0).packet(), "callee", 0.04)  # no loss explains it
    assert (restarted.sequence, restarted.timestamp, restarted.marker) == (2, 320, True)


def test_late_and_duplicate_packets_keep_offsets_but_not_the_position() -> None:
    out = StreamRewriter(5, initial_sequence=0, initial_timestamp=0)
    leg = Source(1, 10, 1600)
    packets = [leg.packet() for _ in range(4)]
    for i in (0, 1, 3):
        relay(out, bytearray(packets[i]), "leg", i * 0.02)
    late = relay(out, bytearray(packets[2]), "leg", 0.07)
    assert (late.sequence, late.timestamp, late.marker) == (2, 320, False)
    duplicate = relay(out, bytearray(packets[3]), "leg", 0.08)
    assert duplicate.sequence == 3
    assert out.last_sequence == 3
    switched = relay(out, Source(2, 0, 0).packet(), "mixer", 0.1)
    assert switched.sequence == 4  # not 3 again


def test_wrap_around() -> None:
    out = StreamRewriter(5, initial_sequence=65534, initial_timestamp=2**32 - 200)
    leg = Source(1, 0, 0)
    got = [relay(out, leg.packet(), "leg", i * 0.02) for i in range(4)]
    assert [h.sequence for h in got] == [65534, 65535, 0, 1]
    assert [h.timestamp for h in got] == [2**32 - 200, 2**32 - 40, 120, 280]
    # a source whose own counters wrap
    out = StreamRewriter(5, initial_sequence=100, initial_timestamp=0)
    leg = Source(1, 65535, 2**32 - 160)
    got = [relay(out, leg.packet(), "leg", i * 0.02) for i in range(3)]
    assert [(h.sequence, h.timestamp, h.marker) for h in got] == [
        (100, 0, True),
        (101, 160, False),
        (102, 320, False),
    ]


def test_rewrite_in_place_on_a_memoryview() -> None:
    buffer = bytearray(2048)
    packet = build_rtp(8, 1, 2, 3, PCMU_20MS)
    buffer[: len(packet)] = packet
    view = memoryview(buffer)[: len(packet)]
    out = StreamRewriter(77, initial_sequence=9, initial_timestamp=90)
    out.rewrite(view, parse_rtp(view), "leg", 0.0)
    header = parse_rtp(buffer[: len(packet)])
    assert (header.ssrc, header.sequence, header.timestamp, header.payload_type) == (77, 9, 90, 8)
    assert bytes(buffer[12:172]) == PCMU_20MS


def test_stamp_continues_the_stream_by_content() -> None:
    out = StreamRewriter(42, initial_sequence=200, initial_timestamp=1000)
    leg = Source(1, 5, 5)
    relay(out, leg.packet(), "caller", 0.0)
    # the mixer takes over 30 ms later; its ticks are late but its timestamps follow the audio
    frames = [parse_rtp(out.stamp(0, PCMU_20MS, 160, 0.03 + i * 0.025, "mixer")) for i in range(3)]
    assert [(h.sequence, h.timestamp, h.marker, h.ssrc) for h in frames] == [
        (201, 1240, True, 42),
        (202, 1400, False, 42),
        (203, 1560, False, 42),
    ]
    # DTMF packets of one press share a timestamp (samples=0)
    event = [parse_rtp(out.stamp(101, b"\x01\x00\x00\xa0", 0, 0.1, "dtmf")) for _ in range(3)]
    assert [(h.sequence, h.timestamp, h.marker) for h in event] == [
        (204, 1720, True),
        (205, 1720, False),
        (206, 1720, False),
    ]
    # and the caller's audio comes back on the same stream
    back = relay(out, leg.packet(), "caller", 0.2)
    assert (back.sequence, back.timestamp, back.marker) == (207, 1720 + 800, True)


@settings(deadline=None, max_examples=300)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.floats(0.0, 0.5), st.booleans()),
        min_size=1,
        max_size=200,
    ),
    st.integers(0, 2**16 - 1),
    st.integers(0, 2**32 - 1),
    st.lists(st.tuples(st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1)), min_size=4),
)
def test_any_interleaving_is_one_continuous_stream(
    steps: list[tuple[int, float, bool]],
    first_sequence: int,
    first_timestamp: int,
    starts: list[tuple[int, int]],
) -> None:
    """Sequence +1 mod 2**16 per packet whatever feeds the stream, timestamps advancing by the
    source's step or, on a change of source, by the elapsed time, and every change marked."""
    out = StreamRewriter(0x5EED, initial_sequence=first_sequence, initial_timestamp=first_timestamp)
    sources = [Source(ssrc=1000 + i, sequence=s, timestamp=t) for i, (s, t) in enumerate(starts)]
    now, previous, previous_source = 0.0, None, None
    for which, gap, generated in steps:
        now += gap
        if which == 3 and generated:
            header = parse_rtp(out.stamp(0, PCMU_20MS, 160, now, "mixer"))
            key: object = "mixer"
        else:
            packet = sources[which].packet()
            header = relay(out, packet, which, now)
            key = which
        assert header.ssrc == 0x5EED
        if previous is None:
            assert (header.sequence, header.timestamp) == (first_sequence, first_timestamp)
        else:
            assert header.sequence == (previous.sequence + 1) % 2**16
            advance = (header.timestamp - previous.timestamp) % 2**32
            if key == previous_source:
                assert advance == 160  # the source's own step
            else:  # the elapsed time, at least a packet's worth (float rounding aside)
                assert abs(advance - max(round(gap * 8000), 160)) <= 1
        if key != previous_source:
            assert header.marker
        previous, previous_source = header, key
