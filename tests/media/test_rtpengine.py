"""`RtpengineMedia` (bridge.media.rtpengine) against a real rtpengine on loopback.

One rtpengine 10.5 for the module (tests/media/rtpengine_daemon.py):
userspace only (`--table=-1`), in the foreground, no config file, its own ng port and a small
free port range, `--delete-delay=0`, pcap recording into a temporary directory, DTMF events
logged to a UDP port of the test; stopped by the fixture (SIGTERM, then SIGKILL after 5 s).

Audio is checked as audio: plain RTP peers (tests/media/rtp_peers.py) each send their own
tone as PCMU through the call `RtpengineMedia` set up, and an FFT of what each received says
it heard the other one.
"""

from __future__ import annotations

import asyncio
import os
import struct
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.calls.media import (
    DtmfReceived,
    MediaError,
    MediaEvent,
    MediaUnavailable,
    NoCommonCodec,
    PlaybackDone,
    UnknownMedia,
)
from bridge.media.ng import NgClient
from bridge.media.rtp import build_rtp, parse_rtp
from bridge.media.rtpengine import RtpengineMedia
from tests.media.audio import level_at, tone, tones_in
from tests.media.rtp_peers import Phone, audio_of
from tests.media.rtpengine_daemon import (
    HOST,
    Daemon,
    free_udp_port,
    needs_rtpengine,
    running_rtpengine,
)

pytestmark = needs_rtpengine


@pytest.fixture(scope="module")
def rtpengine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_rtpengine(tmp_path_factory.mktemp("rtpengine")) as daemon:
        yield daemon


@pytest.fixture
async def media(rtpengine: Daemon) -> RtpengineMedia:
    client = NgClient(HOST, rtpengine.ng_port, timeout=0.5, retries=2)
    engine = RtpengineMedia(
        client,
        call_prefix=f"t{os.getpid()}-",
        recording_dir=rtpengine.recording_dir,
        dtmf_listen=(HOST, rtpengine.dtmf_port),
    )
    await engine.start()
    yield engine
    await engine.close()


def sdp(port: int, payload_types: str = "0 8 101", session: int = 1) -> str:
    return (
        "v=0\r\n"
        f"o=- {session} 1 IN IP4 {HOST}\r\n"
        "s=-\r\n"
        f"c=IN IP4 {HOST}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP {payload_types}\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )


def port_of(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise AssertionError(f"no m=audio in {text!r}")


def version_of(text: str) -> int:
    origin = next(line for line in text.splitlines() if line.startswith("o="))
    return int(origin.split()[2])


def report(what: str, pcm: bytes, freqs: tuple[int, ...] = (440, 1000, 2000)) -> None:
    levels = ", ".join(f"{f} Hz {level_at(pcm, f):.1f} dBFS" for f in freqs)
    print(f"\n{what}: {len(pcm) / 16000:.2f} s of audio; {levels}")


async def two_party_call(
    media: RtpengineMedia, call_id: str, leg: str = "leg-1"
) -> tuple[Phone, Phone, int, int]:
    """A caller and an agent phone joined through rtpengine: (caller, agent, the port the
    caller sends to, the port the agent sends to)."""
    caller, agent = Phone(0, 0x1111), Phone(0, 0x2222)
    media.caller_offer(call_id, sdp(caller.address[1]), source=HOST)
    offer = await media.offer(call_id, leg)
    answer = await media.accept(call_id, leg, sdp(agent.address[1], "0 101", 2), source=HOST)
    return caller, agent, port_of(answer), port_of(offer)


async def test_each_side_hears_the_others_tone(media: RtpengineMedia) -> None:
    caller, agent, to_caller_side, to_agent_side = await two_party_call(media, "tones")
    try:
        assert media.peer("tones") == "leg-1"
        await asyncio.gather(
            caller.play(440, 1.5, to_caller_side), agent.play(1000, 1.5, to_agent_side)
        )
        await asyncio.sleep(0.2)
        caller_heard = audio_of(caller.received())
        agent_heard = audio_of(agent.received())
        report("the caller heard", caller_heard)
        report("the agent heard", agent_heard)
        assert len(caller_heard) >= 16000 * 1.3 and len(agent_heard) >= 16000 * 1.3
        assert tones_in(caller_heard) == {1000}
        assert tones_in(agent_heard) == {440}
    finally:
        await media.release("tones")
        caller.close()
        agent.close()


async def test_a_new_offer_from_either_side_moves_its_audio_and_the_other_side_hears_on(
    media: RtpengineMedia,
) -> None:
    """A re-INVITE (a desk phone's new address, then the caller's) is answered by rtpengine
    with the other side's last SDP: the other side is not asked, and both hear each other
    again at the new addresses."""
    caller, agent, to_caller_side, to_agent_side = await two_party_call(media, "moves")
    moved_agent, moved_caller = Phone(0, 0x3333), Phone(0, 0x4444)
    first_to_caller = media.local_sdp("moves", "caller") or ""
    first_to_agent = media.local_sdp("moves", "leg-1") or ""
    try:
        for_agent = await media.renegotiate(
            "moves", "leg-1", sdp(moved_agent.address[1], "0 101", 2), source=HOST
        )
        assert port_of(for_agent) == to_agent_side  # rtpengine keeps its side's port
        for_caller = await media.renegotiate(
            "moves", "caller", sdp(moved_caller.address[1]), source=HOST
        )
        to_caller_side = port_of(for_caller)  # (rtpengine may open the caller a new port)
        # a changed SDP in a dialog has a higher version (RFC 3264 §8)
        assert version_of(for_caller) > version_of(first_to_caller)
        assert version_of(for_agent) > version_of(first_to_agent)
        assert media.local_sdp("moves", "caller") == for_caller
        await asyncio.gather(
            moved_caller.play(440, 1.5, to_caller_side),
            moved_agent.play(1000, 1.5, to_agent_side),
        )
        await asyncio.sleep(0.2)
        caller_heard = audio_of(moved_caller.received())
        agent_heard = audio_of(moved_agent.received())
        report("after the moves, the caller heard", caller_heard)
        report("after the moves, the agent heard", agent_heard)
        assert tones_in(caller_heard) == {1000}
        assert tones_in(agent_heard) == {440}
        assert caller.received() == [] and agent.received() == []  # the old addresses: none
        # the caller puts the call on hold: answered recvonly (RFC 3264 §6.1), then resumed
        hold = sdp(moved_caller.address[1]).replace("a=sendrecv", "a=sendonly")
        assert "a=recvonly" in await media.renegotiate("moves", "caller", hold)
        resumed = await media.renegotiate("moves", "caller", sdp(moved_caller.address[1]))
        assert "a=sendrecv" in resumed and "a=recvonly" not in resumed
        with pytest.raises(NoCommonCodec):
            await media.renegotiate("moves", "leg-1", "not SDP")
        with pytest.raises(MediaError):
            await media.renegotiate("moves", "leg-elsewhere", sdp(40000))
    finally:
        await media.release("moves")
        for phone in (caller, agent, moved_agent, moved_caller):
            phone.close()


async def test_several_legs_ring_and_the_one_that_answers_is_joined(
    media: RtpengineMedia,
) -> None:
    caller, desk, mobile = Phone(0, 1), Phone(0, 2), Phone(0, 3)
    try:
        media.caller_offer("fork", sdp(caller.address[1]))
        to_desk = await media.offer("fork", "leg-desk")
        to_mobile = await media.offer("fork", "leg-mobile", webrtc=False)
        assert port_of(to_desk) != port_of(to_mobile)  # a branch, its own ports
        assert "RTP/AVP 0 8 101" in to_desk
        to_caller = await media.accept("fork", "leg-mobile", sdp(mobile.address[1], "8 101", 3))
        assert "RTP/AVP 8 101" in to_caller.replace("\r\n", "\n")
        await media.release("fork", "leg-desk")
        assert media.legs("fork") == ["caller", "leg-mobile"]
        caller.payload_type = mobile.payload_type = 8  # PCMA, as the mobile answered
        await asyncio.gather(
            caller.play(440, 1.0, port_of(to_caller)),
            mobile.play(1000, 1.0, port_of(to_mobile)),
        )
        await asyncio.sleep(0.2)
        caller_heard, mobile_heard = audio_of(caller.received()), audio_of(mobile.received())
        report("forked call, the caller heard", caller_heard)
        report("forked call, the mobile heard", mobile_heard)
        assert tones_in(caller_heard) == {1000}
        assert tones_in(mobile_heard) == {440}
        assert desk.received() == []
    finally:
        await media.release("fork")
        for phone in (caller, desk, mobile):
            phone.close()


async def test_what_has_no_g711_is_refused_with_no_common_codec(media: RtpengineMedia) -> None:
    g729 = sdp(40000, "18").replace("a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n", "")
    with pytest.raises(NoCommonCodec):
        media.caller_offer("g729", g729)
    with pytest.raises(NoCommonCodec):
        media.caller_offer("g729", "this is not SDP")
    media.caller_offer("g729", sdp(40000))
    await media.offer("g729", "leg-1")
    with pytest.raises(NoCommonCodec):
        await media.accept("g729", "leg-1", g729)
    await media.release("g729")


async def test_rtpengine_errors_are_media_errors(media: RtpengineMedia, rtpengine: Daemon) -> None:
    caller, agent, _, _ = await two_party_call(media, "gone")
    caller.close()
    agent.close()
    # the call disappears behind our back (as on an rtpengine timeout)
    await media.client.send({"command": "delete", "call-id": media.call_prefix + "gone"})
    with pytest.raises(UnknownMedia, match="rtpengine query"):
        await media.query("gone")
    with pytest.raises(MediaError, match="rtpengine"):
        await media.play("gone", "caller", Path("/nonexistent.wav"))
    await media.release("gone")  # rtpengine forgot it: not an error
    with pytest.raises(UnknownMedia):
        await media.offer("gone", "leg-2")


async def test_no_rtpengine_is_media_unavailable() -> None:
    client = NgClient(HOST, free_udp_port(), timeout=0.05, retries=1)
    engine = RtpengineMedia(client)
    with pytest.raises(MediaUnavailable, match="does not answer"):
        await engine.start()
    await engine.close()


def test_capabilities_refuse_monitoring_with_the_reason(media: RtpengineMedia) -> None:
    capabilities = media.capabilities()
    assert capabilities.name == "rtpengine"
    assert capabilities.webrtc and capabilities.prompts and capabilities.dtmf
    reason = capabilities.missing("monitor")
    assert reason is not None and "no mixer" in reason
    assert capabilities.missing("messages") is not None
    assert capabilities.missing("recording") is not None
    assert capabilities.missing("prompts") is None
    with pytest.raises(MediaError, match="no mixer"):
        media.monitor("any", "supervisor:u1", "listen")


async def test_a_prompt_is_played_to_one_leg_alone(media: RtpengineMedia, tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.wav"
    with wave.open(str(prompt), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(tone(2000, 1.0))
    events: list[MediaEvent] = []
    media.subscribe(events.append)
    caller, agent, to_caller_side, to_agent_side = await two_party_call(media, "prompt")
    try:
        seconds = await media.play("prompt", "caller", prompt)
        assert seconds == pytest.approx(1.0, abs=0.05)
        await asyncio.gather(
            caller.play(440, 0.8, to_caller_side), agent.play(1000, 0.8, to_agent_side)
        )
        during_caller = audio_of(caller.received())
        during_agent = audio_of(agent.received())
        report("during the prompt, the caller heard", during_caller)
        assert tones_in(during_caller) == {2000}
        assert tones_in(during_agent) == {440}
        await asyncio.sleep(0.5)
        assert PlaybackDone("prompt", "caller") in events
        caller.received()
        await asyncio.gather(
            caller.play(440, 0.6, to_caller_side), agent.play(1000, 0.6, to_agent_side)
        )
        await asyncio.sleep(0.1)
        after = audio_of(caller.received())
        report("after the prompt, the caller heard", after)
        assert tones_in(after) == {1000}
    finally:
        await media.release("prompt")
        caller.close()
        agent.close()


async def test_recording_writes_a_pcap_of_both_directions(media: RtpengineMedia) -> None:
    caller, agent, to_caller_side, to_agent_side = await two_party_call(media, "rec")
    try:
        path = await media.start_recording("rec")
        assert path.parent == media.recording_dir / "pcaps"
        assert path.name.startswith(media.call_prefix + "rec-") and path.suffix == ".pcap"
        with pytest.raises(MediaError, match="pause"):
            media.pause_recording("rec", "skip")
        await asyncio.gather(
            caller.play(440, 0.5, to_caller_side), agent.play(1000, 0.5, to_agent_side)
        )
        await asyncio.sleep(0.1)
        result = await media.stop_recording("rec")
        assert result is not None and result.path == path
        assert await media.stop_recording("rec") is None
    finally:
        await media.release("rec")
        caller.close()
        agent.close()
    packets = pcap_udp_payloads(path)
    print(f"\nrecording: {path.name}, {result.size_bytes} bytes, {len(packets)} RTP packets")
    ssrcs = {parse_rtp(p).ssrc for p in packets}
    assert len(packets) >= 40
    assert len(ssrcs) >= 2  # both directions


def pcap_udp_payloads(path: Path) -> list[bytes]:
    """The UDP payloads of a pcap of raw IPv4 packets (rtpengine's --recording-format=raw)."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    assert magic in (0xA1B2C3D4, 0xA1B23C4D), hex(magic)
    linktype = struct.unpack_from("<I", data, 20)[0]
    out = []
    at = 24
    while at + 16 <= len(data):
        _, _, captured, _ = struct.unpack_from("<IIII", data, at)
        packet = data[at + 16 : at + 16 + captured]
        at += 16 + captured
        if linktype == 1:  # Ethernet
            packet = packet[14:]
        ihl = (packet[0] & 0x0F) * 4
        if packet[9] == 17:
            out.append(packet[ihl + 8 :])
    return out


def telephone_event(digit: int, end: bool) -> bytes:
    return bytes([digit, (0x80 if end else 0) | 10]) + struct.pack("!H", 800)


async def test_dtmf_both_ways(rtpengine: Daemon) -> None:
    client = NgClient(HOST, rtpengine.ng_port, timeout=0.5, retries=2)
    media = RtpengineMedia(
        client,
        call_prefix=f"d{os.getpid()}-",
        dtmf_listen=(HOST, rtpengine.dtmf_port),
        inject_dtmf=True,
    )
    await media.start()
    events: list[MediaEvent] = []
    media.subscribe(events.append)
    caller, agent, to_caller_side, to_agent_side = await two_party_call(media, "dtmf")
    try:
        with pytest.raises(MediaError, match="not a DTMF digit"):
            await media.send_dtmf("dtmf", "caller", "x")

        async def press_5_to_the_caller() -> None:
            # rtpengine sends it as the agent's side, once it has seen the agent's stream
            await asyncio.sleep(0.2)
            await media.send_dtmf("dtmf", "caller", "5")

        await asyncio.gather(
            caller.play(440, 0.8, to_caller_side),
            agent.play(1000, 0.8, to_agent_side),
            press_5_to_the_caller(),
        )
        await asyncio.sleep(0.2)
        events_to_caller = [p for p in caller.received() if parse_rtp(p).payload_type == 101]
        assert events_to_caller, "no telephone-event packet reached the caller"
        assert {parse_rtp(p).payload(p)[0] for p in events_to_caller} == {5}
        # the caller presses 7: rtpengine's DTMF log says so
        ts = caller.timestamp
        for n in range(6):
            packet = build_rtp(
                101, caller.sequence, ts, caller.ssrc, telephone_event(7, n >= 3), marker=n == 0
            )
            caller.send_raw(packet, to_caller_side)
            caller.sequence += 1
            await asyncio.sleep(0.02)
        for _ in range(50):
            if any(isinstance(e, DtmfReceived) for e in events):
                break
            await asyncio.sleep(0.02)
        assert DtmfReceived("dtmf", "caller", "7") in events
    finally:
        await media.close()
        caller.close()
        agent.close()


async def test_a_webrtc_peer_and_a_plain_peer_hear_each_other(media: RtpengineMedia) -> None:
    pytest.importorskip("aiortc", reason="aiortc is a test extra (the WebRTC peer)")
    from sim.apps.audio import WebRtcPhone

    caller = Phone(0, 0x3333)
    app = WebRtcPhone(tone(1000, 10.0))
    try:
        media.caller_offer("webrtc", sdp(caller.address[1]), source=HOST)
        offer = await media.offer("webrtc", "leg-app", webrtc=True)
        for needed in ("UDP/TLS/RTP/SAVPF", "a=ice-ufrag:", "a=fingerprint:", "a=rtcp-mux"):
            assert needed in offer
        assert "opus" not in offer.lower()
        answer = await media.accept("webrtc", "leg-app", await app.answer(offer))
        assert "RTP/AVP" in answer and "a=ice-" not in answer and "fingerprint" not in answer
        to_caller_side = port_of(answer)
        await asyncio.wait_for(app.connected.wait(), 10)
        mark = app.mark()
        caller.received()
        await caller.play(440, 2.0, to_caller_side)
        await asyncio.sleep(0.3)
        caller_heard = audio_of(caller.received())
        app_heard = app.heard[mark:]
        report("the plain caller heard (from the WebRTC app)", caller_heard)
        report("the WebRTC app heard (from the plain caller)", app_heard)
        assert len(caller_heard) >= 16000 * 1.5
        assert tones_in(caller_heard) == {1000}
        assert tones_in(app_heard) == {440}
    finally:
        await media.release("webrtc")
        await app.close()
        caller.close()


async def test_rtpengine_out_of_ports_is_media_unavailable() -> None:
    from bridge.media.ng import bdecode, bencode
    from tests.media.test_ng import serve

    def out_of_ports(n: int, cookie: bytes, body: bytes) -> list[bytes]:
        if bdecode(body)["command"] == "ping":
            return [cookie + b" " + bencode({"result": "pong"})]
        reply = {"result": "error", "error-reason": "Ran out of ports"}
        return [cookie + b" " + bencode(reply)]

    _, port = await serve(out_of_ports)
    engine = await RtpengineMedia(NgClient(HOST, port, timeout=0.5)).start()
    engine.caller_offer("full", sdp(40000))
    with pytest.raises(MediaUnavailable, match="Ran out of ports"):
        await engine.offer("full", "leg-1")
    await engine.close()
