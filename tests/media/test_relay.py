"""The blind relay between two legs over real loopback sockets, checked as audio: each phone
plays its own tone, and an FFT of what the other one received says who heard whom, through
codec changes (PCMU <-> PCMA) and a source restarting its stream; each phone sees one
continuous stream of its own; RTCP, garbage and payload types nobody negotiated are dropped."""

from __future__ import annotations

import asyncio
import itertools
import struct

import pytest

from bridge.media import g711
from bridge.media.dtmf import build_event, parse_event
from bridge.media.endpoint import Latch, MediaEndpoint
from bridge.media.ports import PortPool
from bridge.media.relay import BlindRelay, RelayLeg
from bridge.media.rtp import StreamRewriter, build_rtp, parse_rtp
from tests.media.audio import tones_in
from tests.media.rtp_peers import Phone, audio_of, settle

CALLER_TONE, AGENT_TONE = 440.0, 1000.0


class Call:
    """Two anchored legs (one port each) and the relay between them."""

    def __init__(self, pool: PortPool, caller: Phone, agent: Phone, agent_pt: int) -> None:
        self.pool = pool
        loop = asyncio.get_running_loop()
        self.sockets = [pool.acquire(), pool.acquire()]
        clock = loop.time
        self.caller_side = RelayLeg(
            MediaEndpoint(
                self.sockets[0],
                Latch(caller.address, behind_nat=False),
                lambda p, s: None,
                clock=clock,
            ),
            StreamRewriter(0x1111, initial_sequence=1, initial_timestamp=0),
            payload_type=caller.payload_type,
            telephone_event=101,
        )
        self.agent_side = RelayLeg(
            MediaEndpoint(
                self.sockets[1],
                Latch(agent.address, behind_nat=False),
                lambda p, s: None,
                clock=clock,
            ),
            StreamRewriter(0x2222, initial_sequence=60_000, initial_timestamp=2**32 - 800),
            payload_type=agent_pt,
            telephone_event=96,
        )
        self.relay = BlindRelay(self.caller_side, self.agent_side, clock=clock)
        self.relay.attach()
        for leg in (self.caller_side, self.agent_side):
            leg.endpoint.start(loop)

    @property
    def caller_port(self) -> int:
        return self.sockets[0].port

    @property
    def agent_port(self) -> int:
        return self.sockets[1].port

    def close(self) -> None:
        for leg, rtp in zip((self.caller_side, self.agent_side), self.sockets, strict=True):
            leg.endpoint.stop()
            self.pool.release(rtp)


def continuous(packets: list[bytes], ssrc: int) -> bool:
    headers = [parse_rtp(p) for p in packets]
    return all(h.ssrc == ssrc for h in headers) and all(
        (b.sequence - a.sequence) % 65536 == 1 for a, b in itertools.pairwise(headers)
    )


@pytest.mark.parametrize(
    ("caller_pt", "agent_pt"),
    [(g711.PCMU, g711.PCMU), (g711.PCMU, g711.PCMA), (g711.PCMA, g711.PCMU)],
)
async def test_each_side_hears_the_other_and_only_the_other(
    pool: PortPool, caller_pt: int, agent_pt: int
) -> None:
    caller, agent = Phone(caller_pt, 0xAAAA), Phone(agent_pt, 0xBBBB)
    call = Call(pool, caller, agent, agent_pt)
    try:
        caller.send_tone(CALLER_TONE, 0.5, call.caller_port)  # 25 packets
        agent.send_tone(AGENT_TONE, 0.5, call.agent_port)
        to_agent, to_caller = await settle([agent, caller], [25, 25])
        assert len(to_agent) == 25 and len(to_caller) == 25
        assert {parse_rtp(p).payload_type for p in to_agent} == {agent_pt}
        assert {parse_rtp(p).payload_type for p in to_caller} == {caller_pt}
        assert tones_in(audio_of(to_agent), [CALLER_TONE, AGENT_TONE]) == {CALLER_TONE}
        assert tones_in(audio_of(to_caller), [CALLER_TONE, AGENT_TONE]) == {AGENT_TONE}
        assert continuous(to_agent, 0x2222) and continuous(to_caller, 0x1111)
        transcoded = 0 if caller_pt == agent_pt else 50
        assert call.relay.stats.relayed == 50 and call.relay.stats.transcoded == transcoded
    finally:
        call.close()
        caller.close()
        agent.close()


async def test_a_restarted_source_continues_the_phones_stream(pool: PortPool) -> None:
    caller, agent = Phone(g711.PCMU, 0xAAAA), Phone(g711.PCMU, 0xBBBB)
    call = Call(pool, caller, agent, g711.PCMU)
    try:
        caller.send_tone(CALLER_TONE, 0.2, call.caller_port)
        first = (await settle([agent], [10]))[0]
        caller.ssrc, caller.sequence, caller.timestamp = 0xCCCC, 7, 123  # a new stream
        caller.send_tone(CALLER_TONE, 0.2, call.caller_port)
        second = (await settle([agent], [10]))[0]
        packets = first + second
        assert len(packets) == 20 and continuous(packets, 0x2222)
        assert parse_rtp(second[0]).marker  # the new source's first packet is marked
        assert (parse_rtp(second[0]).timestamp - parse_rtp(first[-1]).timestamp) % 2**32 > 0
    finally:
        call.close()
        caller.close()
        agent.close()


async def test_dtmf_payload_types_are_mapped_and_junk_is_dropped(pool: PortPool) -> None:
    caller, agent = Phone(g711.PCMU, 0xAAAA), Phone(g711.PCMU, 0xBBBB)
    call = Call(pool, caller, agent, g711.PCMU)
    try:
        caller.send_raw(build_rtp(101, 1, 160, 0xAAAA, build_event("5", 400)), call.caller_port)
        caller.send_raw(b"\x81\xc8" + bytes(26), call.caller_port)  # an RTCP sender report
        caller.send_raw(b"garbage that is not RTP", call.caller_port)
        caller.send_raw(build_rtp(18, 2, 320, 0xAAAA, bytes(20)), call.caller_port)  # G.729
        caller.send_tone(CALLER_TONE, 0.02, call.caller_port)  # one good packet last
        (got,) = await settle([agent], [2])
        assert len(got) == 2
        dtmf = parse_rtp(got[0])
        assert dtmf.payload_type == 96  # the agent leg's telephone-event number
        assert parse_event(bytes(dtmf.payload(got[0]))).digit == "5"
        await asyncio.sleep(0.05)
        stats = call.relay.stats
        assert (stats.rtcp, stats.malformed, stats.unexpected_payload) == (1, 1, 1)
        assert stats.relayed == 2
    finally:
        call.close()
        caller.close()
        agent.close()


def test_the_rewrite_is_in_place_on_the_receive_buffer() -> None:
    """No copy on the plain path: the relay sends the very buffer it read into."""
    sent: list[memoryview] = []

    class Endpoint:
        on_packet = None

        def send(self, data: memoryview) -> bool:
            sent.append(data)
            return True

    buffer = bytearray(build_rtp(0, 5, 800, 0xAAAA, bytes(160)))
    a = RelayLeg(Endpoint(), StreamRewriter(1, initial_sequence=1, initial_timestamp=0), 0)  # type: ignore[arg-type]
    b = RelayLeg(Endpoint(), StreamRewriter(2, initial_sequence=9, initial_timestamp=0), 0)  # type: ignore[arg-type]
    relay = BlindRelay(a, b, clock=lambda: 0.0)
    view = memoryview(buffer)
    relay.forward(a, b, view)
    assert sent[0].obj is buffer
    assert struct.unpack_from("!HII", buffer, 2) == (9, 0, 2)
