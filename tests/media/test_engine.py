"""The embedded media engine over loopback sockets, through its port (SDP in, SDP out), heard
as audio: the caller plays 440 Hz, the agent 1 kHz, a supervisor 2 kHz, and an FFT of what each
phone received (or of the recording) says who heard whom."""

from __future__ import annotations

import asyncio
import itertools
import wave
from pathlib import Path

import pytest

from bridge.calls.media import (
    DtmfReceived,
    MediaError,
    MediaEvent,
    MediaTimeout,
    MediaUnavailable,
    MessageRecorded,
    NoCommonCodec,
    PlaybackDone,
)
from bridge.media import g711
from bridge.media.dtmf import build_event
from bridge.media.engine import EmbeddedMedia
from bridge.media.ports import PortPool
from bridge.media.rtp import build_rtp, parse_rtp
from bridge.media.sdp import parse_sdp
from tests.media.audio import read_wav, tone, tones_in
from tests.media.rtp_peers import Phone, audio_of

CALLER, AGENT, SUPERVISOR = 440.0, 1000.0, 2000.0


def phone_sdp(phone: Phone, codecs: str = "0 8 101") -> str:
    host, port = phone.address
    lines = [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {codecs}",
        "a=rtpmap:101 telephone-event/8000",
        "a=sendrecv",
    ]
    return "\r\n".join(lines) + "\r\n"


def port_of(sdp: str) -> int:
    return parse_sdp(sdp).media[0].port


def codec_of(sdp: str) -> int:
    return parse_sdp(sdp).media[0].payload_types[0]


class Rig:
    """An engine with a caller (PCMU) and an agent (PCMA) anchored and bridged."""

    def __init__(self, pool: PortPool, **options: float) -> None:
        loop = asyncio.get_running_loop()
        self.engine = EmbeddedMedia(
            pool, advertised_address="127.0.0.1", clock=loop.time, loop=loop, **options
        )
        self.events: list[MediaEvent] = []
        self.engine.subscribe(self.events.append)
        self.phones: dict[str, Phone] = {}
        self.ports: dict[str, int] = {}

    def caller(self, codecs: str = "0 101") -> Phone:
        phone = self.phones["caller"] = Phone(g711.PCMU, 0xC1)
        answer = self.engine.answer("c1", "caller", phone_sdp(phone, codecs), source="127.0.0.1")
        self.ports["caller"] = port_of(answer)
        return phone

    def dialled(self, leg: str, payload_type: int, ssrc: int) -> Phone:
        """A leg the bridge offers to, answered by a phone choosing `payload_type`."""
        offer = self.engine.offer("c1", leg, like="caller")
        phone = self.phones[leg] = Phone(payload_type, ssrc)
        self.engine.accept("c1", leg, phone_sdp(phone, f"{payload_type} 101"), source="127.0.0.1")
        self.ports[leg] = port_of(offer)
        return phone

    async def talk(self, seconds: float, tones: dict[str, float]) -> dict[str, bytes]:
        for phone in self.phones.values():
            phone.received()  # what came before is not this stretch
        await asyncio.gather(
            *(self.phones[p].play(f, seconds, self.ports[p]) for p, f in tones.items())
        )
        await asyncio.sleep(0.15)
        return {p: audio_of(phone.received()) for p, phone in self.phones.items()}

    def close(self) -> None:
        self.engine.stop()
        for phone in self.phones.values():
            phone.close()


@pytest.fixture
async def rig(pool: PortPool):
    rig = Rig(pool)
    yield rig
    rig.close()


async def test_bridged_call_is_relayed_both_ways_and_transcoded(rig: Rig) -> None:
    rig.caller()
    rig.dialled("leg-1", g711.PCMA, 0xA1)
    rig.engine.bridge("c1", "caller", "leg-1")
    heard = await rig.talk(1.0, {"caller": CALLER, "leg-1": AGENT})
    assert tones_in(heard["caller"], [CALLER, AGENT]) == {AGENT}
    assert tones_in(heard["leg-1"], [CALLER, AGENT]) == {CALLER}
    figures = rig.engine.live_figures()
    assert figures.received >= 90 and figures.sent >= 90


async def test_offer_puts_the_callers_codec_first(rig: Rig) -> None:
    rig.caller(codecs="8 101")
    offer = rig.engine.offer("c1", "leg-1", like="caller")
    assert parse_sdp(offer).media[0].payload_types[:2] == (8, 0)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("listen", {"caller": {AGENT}, "leg-1": {CALLER}, "sup": {CALLER, AGENT}}),
        ("whisper", {"caller": {AGENT}, "leg-1": {CALLER, SUPERVISOR}, "sup": {CALLER, AGENT}}),
        (
            "barge",
            {"caller": {AGENT, SUPERVISOR}, "leg-1": {CALLER, SUPERVISOR}, "sup": {CALLER, AGENT}},
        ),
    ],
)
async def test_supervisor_modes_are_heard_as_they_should(
    rig: Rig, mode: str, expected: dict[str, set[float]]
) -> None:
    rig.caller()
    rig.dialled("leg-1", g711.PCMA, 0xA1)
    rig.engine.bridge("c1", "caller", "leg-1")
    rig.dialled("sup", g711.PCMU, 0xA3)
    rig.engine.monitor("c1", "sup", mode)
    heard = await rig.talk(1.2, {"caller": CALLER, "leg-1": AGENT, "sup": SUPERVISOR})
    for party, tones in expected.items():
        assert tones_in(heard[party], [CALLER, AGENT, SUPERVISOR]) == tones, party


async def test_live_switch_and_stop_go_back_to_the_relay(rig: Rig) -> None:
    rig.caller()
    rig.dialled("leg-1", g711.PCMA, 0xA1)
    rig.engine.bridge("c1", "caller", "leg-1")
    rig.dialled("sup", g711.PCMU, 0xA3)
    rig.engine.monitor("c1", "sup", "listen")
    heard = await rig.talk(1.0, {"caller": CALLER, "leg-1": AGENT, "sup": SUPERVISOR})
    assert SUPERVISOR not in tones_in(heard["caller"], [SUPERVISOR])
    rig.engine.monitor("c1", "sup", "barge")
    heard = await rig.talk(1.0, {"caller": CALLER, "leg-1": AGENT, "sup": SUPERVISOR})
    assert tones_in(heard["caller"], [AGENT, SUPERVISOR]) == {AGENT, SUPERVISOR}
    rig.engine.stop_monitor("c1", "sup")
    call = rig.engine._calls["c1"]
    assert call.mixing is None and call.relay is not None
    heard = await rig.talk(1.0, {"caller": CALLER, "leg-1": AGENT, "sup": SUPERVISOR})
    assert tones_in(heard["caller"], [AGENT, SUPERVISOR]) == {AGENT}
    assert heard["sup"] == b""  # out of the call: sent nothing at all


async def test_the_callers_stream_has_no_jump_across_relay_and_mix(rig: Rig) -> None:
    caller = rig.caller()
    rig.dialled("leg-1", g711.PCMA, 0xA1)
    rig.engine.bridge("c1", "caller", "leg-1")
    packets: list[bytes] = []
    for step in ("relay", "mix", "relay"):
        if step == "mix":
            rig.dialled("sup", g711.PCMU, 0xA3)
            rig.engine.monitor("c1", "sup", "barge")
        elif "sup" in rig.phones:
            rig.engine.stop_monitor("c1", "sup")
        await rig.phones["leg-1"].play(AGENT, 0.4, rig.ports["leg-1"])
        await asyncio.sleep(0.1)
        packets += caller.received()
    headers = [parse_rtp(p) for p in packets]
    assert len({h.ssrc for h in headers}) == 1
    steps = [(b.sequence - a.sequence) % 65536 for a, b in itertools.pairwise(headers)]
    assert all(step == 1 for step in steps), steps


async def test_recording_holds_caller_left_and_agent_right(rig: Rig, tmp_path: Path) -> None:
    rig.caller()
    rig.dialled("leg-1", g711.PCMA, 0xA1)
    rig.engine.bridge("c1", "caller", "leg-1")
    rig.engine.start_recording("c1", tmp_path / "r.wav")
    await rig.talk(1.0, {"caller": CALLER, "leg-1": AGENT})
    result = rig.engine.stop_recording("c1")
    assert result is not None and result.duration_seconds > 0.8
    info, channels = read_wav(tmp_path / "r.wav")
    assert info.channels == 2 and info.rate == 8000
    assert tones_in(channels[0], [CALLER, AGENT]) == {CALLER}
    assert tones_in(channels[1], [CALLER, AGENT]) == {AGENT}
    assert rig.engine._calls["c1"].mixing is None  # back to the relay


async def test_recording_in_a_place_that_cannot_be_written_is_an_error(
    rig: Rig, tmp_path: Path
) -> None:
    rig.caller()
    rig.dialled("leg-1", g711.PCMA, 0xA1)
    rig.engine.bridge("c1", "caller", "leg-1")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(MediaError, match="cannot write"):
        rig.engine.start_recording("c1", blocker / "r.wav")
    heard = await rig.talk(0.6, {"caller": CALLER, "leg-1": AGENT})
    assert tones_in(heard["caller"], [AGENT]) == {AGENT}  # the call goes on


async def test_prompt_and_digits_on_a_leg_alone(rig: Rig) -> None:
    rig.caller()
    leg = rig.dialled("leg-1", g711.PCMU, 0xA1)
    rig.engine.collect_digits("c1", "leg-1")
    rig.engine.play("c1", "leg-1", tone(SUPERVISOR, 0.5))
    await asyncio.sleep(0.8)
    assert tones_in(audio_of(leg.received()), [SUPERVISOR]) == {SUPERVISOR}
    assert [e for e in rig.events if isinstance(e, PlaybackDone)] == [PlaybackDone("c1", "leg-1")]
    for i, end in enumerate((False, True, True, True)):
        packet = build_rtp(101, 3000 + i, 90_000, 0xA1, build_event("1", 800, end=end))
        leg.send_raw(packet, rig.ports["leg-1"])
    await asyncio.sleep(0.1)
    assert [e for e in rig.events if isinstance(e, DtmfReceived)] == [
        DtmfReceived("c1", "leg-1", "1")
    ]


async def test_message_recorded_until_pound(rig: Rig, tmp_path: Path) -> None:
    caller = rig.caller()
    rig.engine.record_message(
        "c1", "caller", tmp_path / "vm.wav", max_seconds=10, silence_seconds=3
    )
    await caller.play(CALLER, 1.0, rig.ports["caller"])
    for i, end in enumerate((False, True, True, True)):
        packet = build_rtp(
            101, caller.sequence + i, caller.timestamp, 0xC1, build_event("#", 800, end=end)
        )
        caller.send_raw(packet, rig.ports["caller"])
    await asyncio.sleep(0.2)
    (done,) = [e for e in rig.events if isinstance(e, MessageRecorded)]
    assert done.ended_by == "pound" and 0.8 < done.duration_seconds < 1.5
    with wave.open(str(tmp_path / "vm.wav")) as wav:
        assert wav.getnchannels() == 1 and wav.getframerate() == 8000
        pcm = wav.readframes(wav.getnframes())
    assert tones_in(pcm, [CALLER, AGENT]) == {CALLER}


async def test_message_ends_on_silence_after_speech(rig: Rig, tmp_path: Path) -> None:
    caller = rig.caller()
    rig.engine.record_message(
        "c1", "caller", tmp_path / "vm.wav", max_seconds=10, silence_seconds=1
    )
    await caller.play(CALLER, 0.5, rig.ports["caller"])
    await asyncio.sleep(1.5)
    (done,) = [e for e in rig.events if isinstance(e, MessageRecorded)]
    assert done.ended_by == "silence"


async def test_silent_peer_times_out(pool: PortPool) -> None:
    rig = Rig(pool, timeout_seconds=1.0)
    try:
        rig.caller()
        rig.dialled("leg-1", g711.PCMU, 0xA1)
        rig.engine.bridge("c1", "caller", "leg-1")
        await asyncio.sleep(2.5)
        timeouts = [e for e in rig.events if isinstance(e, MediaTimeout)]
        assert len(timeouts) == 1 and timeouts[0].call_id == "c1"
    finally:
        rig.close()


@pytest.mark.parametrize("hold", ["sendonly", "inactive"])
async def test_a_leg_that_holds_the_call_is_not_timed(pool: PortPool, hold: str) -> None:
    """A phone that holds the call (a=sendonly, or inactive) may send nothing at all (many
    play their music on hold locally): the call must not end because of its silence. The
    engine timed a `sendonly` hold like a talking leg, and a hold of a minute hung up."""
    rig = Rig(pool, timeout_seconds=1.0)
    try:
        caller = rig.caller()
        rig.dialled("leg-1", g711.PCMU, 0xA1)
        rig.engine.bridge("c1", "caller", "leg-1")
        held = phone_sdp(caller, "0 101").replace("a=sendrecv", f"a={hold}")
        assert f"a={hold}" in held
        rig.engine.answer("c1", "caller", held, source="127.0.0.1")
        # the agent's leg goes on talking; the caller's sends nothing while it holds
        await rig.phones["leg-1"].play(AGENT, 2.5, rig.ports["leg-1"])
        assert not [e for e in rig.events if isinstance(e, MediaTimeout)]
    finally:
        rig.close()


async def test_talking_call_does_not_time_out(pool: PortPool) -> None:
    rig = Rig(pool, timeout_seconds=1.0)
    try:
        rig.caller()
        rig.dialled("leg-1", g711.PCMU, 0xA1)
        rig.engine.bridge("c1", "caller", "leg-1")
        await rig.talk(2.5, {"caller": CALLER, "leg-1": AGENT})
        assert not [e for e in rig.events if isinstance(e, MediaTimeout)]
    finally:
        rig.close()


async def test_offer_without_a_usable_codec_is_refused(rig: Rig) -> None:
    phone = rig.phones["caller"] = Phone(g711.PCMU, 1)
    with pytest.raises(NoCommonCodec):
        rig.engine.answer("c1", "caller", phone_sdp(phone, "9 101"))
    with pytest.raises(NoCommonCodec):
        rig.engine.answer("c1", "caller", "not sdp at all")


async def test_exhausted_ports_refuse_the_leg_and_free_nothing_else(tmp_path: Path) -> None:
    probe = Phone(0, 1)
    base = probe.address[1] + 2000
    probe.close()
    base -= base % 2
    small = PortPool("127.0.0.1", base, base + 3)  # two even ports
    rig = Rig(small)
    try:
        rig.caller()
        rig.dialled("leg-1", g711.PCMU, 0xA1)
        with pytest.raises(MediaUnavailable):
            rig.engine.offer("c2", "caller")
        assert rig.engine.totals.ports_exhausted == 1
        assert "c2" not in rig.engine._calls
        rig.engine.bridge("c1", "caller", "leg-1")
        heard = await rig.talk(0.6, {"caller": CALLER, "leg-1": AGENT})
        assert tones_in(heard["caller"], [AGENT]) == {AGENT}
        rig.engine.release("c1")
        assert small.in_use == 0
    finally:
        rig.close()


async def test_garbage_and_foreign_packets_do_not_disturb_the_call(rig: Rig) -> None:
    rig.caller()
    rig.dialled("leg-1", g711.PCMA, 0xA1)
    rig.engine.bridge("c1", "caller", "leg-1")
    stranger = Phone(g711.PCMU, 0xBAD)
    try:
        stranger.send_tone(SUPERVISOR, 0.5, rig.ports["leg-1"])  # not the signalled source
        rig.phones["caller"].send_raw(b"\x00" * 7, rig.ports["caller"])  # too short
        rig.phones["caller"].send_raw(b"\x80" + bytes(3000), rig.ports["caller"])  # oversized
        heard = await rig.talk(0.8, {"caller": CALLER, "leg-1": AGENT})
        assert tones_in(heard["caller"], [AGENT, SUPERVISOR]) == {AGENT}
        figures = rig.engine.live_figures()
        assert figures.foreign >= 25
    finally:
        stranger.close()


async def test_dtmf_is_sent_as_rfc4733(rig: Rig) -> None:
    rig.caller()
    leg = rig.dialled("leg-1", g711.PCMU, 0xA1)
    rig.engine.send_dtmf("c1", "leg-1", "5")
    await asyncio.sleep(0.4)
    events = [parse_rtp(p) for p in leg.received()]
    assert {h.payload_type for h in events} == {101}
    assert any(h.marker for h in events)


async def test_sdp_advertises_the_public_address(pool: PortPool) -> None:
    loop = asyncio.get_running_loop()
    engine = EmbeddedMedia(pool, advertised_address="192.0.2.10", clock=loop.time, loop=loop)
    phone = Phone(g711.PCMU, 1)
    try:
        answer = parse_sdp(engine.answer("c1", "caller", phone_sdp(phone)))
        offer = parse_sdp(engine.offer("c1", "leg-1"))
        for sdp in (answer, offer):
            assert sdp.media[0].connection is not None
            assert sdp.media[0].connection.address == "192.0.2.10"
            assert sdp.origin.address == "192.0.2.10"
        assert pool.in_use == 2
        engine.release("c1")
        assert pool.in_use == 0
    finally:
        phone.close()
        engine.stop()
