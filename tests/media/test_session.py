"""The mixing session over real loopback sockets, checked as audio: the caller plays 440 Hz,
the agent 1 kHz, the supervisor 2 kHz, each paced in real time; an FFT of what each phone
received, and of the recording, says who heard whom in listen, whisper and barge, and after a
live switch."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from bridge.media import g711
from bridge.media.endpoint import Latch, MediaEndpoint
from bridge.media.mixer import Monitor, plan_for
from bridge.media.ports import PortPool
from bridge.media.recording import RecordingWriter
from bridge.media.relay import RelayLeg
from bridge.media.rtp import StreamRewriter, parse_rtp
from bridge.media.session import MixingSession
from tests.media.audio import read_wav, tones_in
from tests.media.rtp_peers import Phone, audio_of

CALLER, AGENT, SUPERVISOR = 440.0, 1000.0, 2000.0
TONES = (CALLER, AGENT, SUPERVISOR)
SECONDS = 1.0

# What each party hears in each mode (mixer.plan_for's rules).
HEARD = {
    Monitor.LISTEN: {"caller": {AGENT}, "agent": {CALLER}, "sup": {CALLER, AGENT}},
    Monitor.WHISPER: {"caller": {AGENT}, "agent": {CALLER, SUPERVISOR}, "sup": {CALLER, AGENT}},
    Monitor.BARGE: {
        "caller": {AGENT, SUPERVISOR},
        "agent": {CALLER, SUPERVISOR},
        "sup": {CALLER, AGENT},
    },
}


class Anchored:
    """Three phones, one media leg each, mixed by one session."""

    def __init__(self, pool: PortPool, mode: Monitor, *, record: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.pool = pool
        self.phones = {
            "caller": Phone(g711.PCMU, 0xA1),
            "agent": Phone(g711.PCMA, 0xA2),  # the two sides need not share a codec
            "sup": Phone(g711.PCMU, 0xA3),
        }
        self.sockets = {party: pool.acquire() for party in self.phones}
        self.legs = {
            party: RelayLeg(
                MediaEndpoint(
                    self.sockets[party],
                    Latch(phone.address, behind_nat=False),
                    lambda p, s: None,
                    clock=loop.time,
                ),
                StreamRewriter(0x100 + i, initial_sequence=100 * i, initial_timestamp=0),
                payload_type=phone.payload_type,
            )
            for i, (party, phone) in enumerate(self.phones.items())
        }
        self.session = MixingSession(
            self.legs,
            plan_for("caller", "agent", {"sup": mode}, record=record),
            clock=loop.time,
            loop=loop,
        )
        for leg in self.legs.values():
            leg.endpoint.start(loop)
        self.session.start()

    async def talk(self, seconds: float) -> None:
        freqs = {"caller": CALLER, "agent": AGENT, "sup": SUPERVISOR}
        await asyncio.gather(
            *(
                phone.play(freqs[party], seconds, self.sockets[party].port)
                for party, phone in self.phones.items()
            )
        )
        await asyncio.sleep(0.15)  # the jitter buffers' delay, then the last frames out

    def heard(self) -> dict[str, list[bytes]]:
        return {party: phone.received() for party, phone in self.phones.items()}

    def close(self) -> None:
        self.session.stop()
        for party, leg in self.legs.items():
            leg.endpoint.stop()
            self.pool.release(self.sockets[party])
        for phone in self.phones.values():
            phone.close()


@pytest.mark.parametrize("mode", [Monitor.LISTEN, Monitor.WHISPER, Monitor.BARGE])
async def test_who_hears_whom(pool: PortPool, mode: Monitor) -> None:
    call = Anchored(pool, mode)
    try:
        await call.talk(SECONDS)
        heard = call.heard()
    finally:
        call.close()
    for party, packets in heard.items():
        assert len(packets) >= 40, f"{party} got {len(packets)} frames"
        assert {parse_rtp(p).payload_type for p in packets} == {call.phones[party].payload_type}
        assert tones_in(audio_of(packets), TONES) == HEARD[mode][party], (mode, party)
    assert call.session.stats.unexpected_payload == 0


async def test_a_live_switch_from_listen_to_barge(pool: PortPool) -> None:
    call = Anchored(pool, Monitor.LISTEN)
    try:
        await call.talk(0.6)
        before = call.heard()
        call.session.set_plan(plan_for("caller", "agent", {"sup": Monitor.BARGE}))
        await call.talk(0.6)
        after = call.heard()
    finally:
        call.close()
    assert tones_in(audio_of(before["caller"]), TONES) == {AGENT}
    assert tones_in(audio_of(after["caller"]), TONES) == {AGENT, SUPERVISOR}
    assert tones_in(audio_of(after["agent"]), TONES) == {CALLER, SUPERVISOR}
    # One stream per phone across the switch: sequence numbers never jump.
    packets = before["caller"] + after["caller"]
    sequences = [parse_rtp(p).sequence for p in packets]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(sequences))


async def test_the_recording_holds_the_caller_left_and_the_other_side_right(
    pool: PortPool, tmp_path
) -> None:
    call = Anchored(pool, Monitor.BARGE, record=True)
    writer = RecordingWriter(tmp_path / "call.wav")
    call.session.record(writer)
    try:
        await call.talk(SECONDS)
    finally:
        call.session.record(None)
        writer.close()
        call.close()
    info, (left, right) = read_wav(tmp_path / "call.wav")
    assert info.channels == 2 and info.rate == 8000
    assert tones_in(left, TONES) == {CALLER}
    assert tones_in(right, TONES) == {AGENT, SUPERVISOR}  # what the caller hears
