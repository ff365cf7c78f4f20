"""WebRTC legs of the embedded engine, heard as audio: an aiortc peer (the app, as a browser
would) answers the engine's ICE-lite / DTLS-SRTP offer and is bridged to a plain RTP caller;
the caller plays 440 Hz, the app 1 kHz, and an FFT of what each received says who heard whom.
Then the ways a WebRTC leg fails: no ICE check in time, a certificate that does not match the
answer's fingerprint, malformed answers."""

from __future__ import annotations

import asyncio
import re

import pytest
from sim.apps.audio import WebRtcPhone

from bridge.calls.media import MediaConnected, MediaEvent, MediaFailed, NoCommonCodec
from bridge.media import g711
from bridge.media.engine import EmbeddedMedia
from bridge.media.ports import PortPool
from bridge.media.sdp import parse_sdp
from bridge.media.webrtc import IceLite
from tests.media.audio import tone, tones_in
from tests.media.rtp_peers import Phone, audio_of
from tests.media.test_engine import phone_sdp, port_of

CALLER, APP = 440.0, 1000.0


@pytest.fixture
async def engine(pool: PortPool):
    loop = asyncio.get_running_loop()
    media = EmbeddedMedia(
        pool,
        advertised_address="127.0.0.1",
        clock=loop.time,
        loop=loop,
        connect_timeout_seconds=2.0,
    )
    events: list[MediaEvent] = []
    media.subscribe(events.append)
    media.events = events  # type: ignore[attr-defined]
    yield media
    media.release("c1")


async def wait_for(events: list[MediaEvent], kind: type, timeout: float = 5.0) -> MediaEvent:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [e for e in events if isinstance(e, kind)]
        if found:
            return found[0]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {kind.__name__} in {events}")
        await asyncio.sleep(0.02)


def test_the_offer_is_webrtc_shaped(pool: PortPool) -> None:
    loop = asyncio.new_event_loop()
    try:
        media = EmbeddedMedia(pool, advertised_address="127.0.0.1", clock=loop.time, loop=loop)
        offer = media.offer("c1", "app", webrtc=True)
        media.release("c1")
    finally:
        loop.close()
    description = parse_sdp(offer)
    audio = description.media[0]
    assert audio.proto == "UDP/TLS/RTP/SAVPF"
    assert audio.payload_types[:2] == (0, 8)
    assert ("ice-lite", None) in description.attributes
    for name in ("ice-ufrag", "ice-pwd", "fingerprint", "setup", "mid", "rtcp-mux", "candidate"):
        assert audio.attribute_values(name), name
    assert audio.attribute_values("setup") == ["actpass"]
    assert re.fullmatch(
        r"sha-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}", audio.attribute_values("fingerprint")[0]
    )
    candidate = audio.attribute_values("candidate")[0]
    assert candidate.split()[4:6] == ["127.0.0.1", str(audio.port)]


async def test_an_app_over_webrtc_and_a_plain_caller_hear_each_other(engine: EmbeddedMedia) -> None:
    caller = Phone(g711.PCMU, 0xC1)
    caller_port = port_of(
        engine.answer("c1", "caller", phone_sdp(caller, "0 101"), source="127.0.0.1")
    )
    offer = engine.offer("c1", "app", like="caller", webrtc=True)
    app = WebRtcPhone(tone(APP, 10.0))
    try:
        answer = await app.answer(offer)
        engine.accept("c1", "app", answer)
        assert engine.connecting("c1", "app")
        await wait_for(engine.events, MediaConnected)
        assert not engine.connecting("c1", "app")
        engine.bridge("c1", "caller", "app")
        await asyncio.sleep(0.3)  # the app's first frames and the caller's latch
        caller.received()
        start = app.mark()
        await caller.play(CALLER, 1.5, caller_port)
        await asyncio.sleep(0.3)
        heard_by_app = app.heard[start:]
        heard_by_caller = audio_of(caller.received())
        assert len(heard_by_app) > 8000  # more than half a second of audio
        assert tones_in(heard_by_app, [CALLER, APP]) == {CALLER}
        assert tones_in(heard_by_caller, [CALLER, APP]) == {APP}
        assert not [e for e in engine.events if isinstance(e, MediaFailed)]
        # both directions on the relay's direct readers (SRTP unprotected and protected there)
        legs = engine._calls["c1"].legs  # type: ignore[attr-defined]
        for name in ("app", "caller"):
            endpoint = legs[name].endpoint
            assert endpoint._armed is endpoint._direct is not None, name
        # the app's socket is connected to the pair its ICE nominated (read and sent without
        # an address, as a latched phone's)
        app_leg = legs["app"].endpoint
        assert app_leg.secure is not None and app_leg.secure.ice.nominated
        assert app_leg.peer == app_leg.secure.ice.selected
        assert app_leg.rtp.sock.getpeername()[:2] == app_leg.peer
    finally:
        await app.close()
        caller.close()


async def test_an_app_that_never_checks_fails_with_a_reason(engine: EmbeddedMedia) -> None:
    offer = engine.offer("c1", "app", webrtc=True)
    app = WebRtcPhone(tone(APP, 1.0))
    try:
        answer = await app.answer(offer)
    finally:
        await app.close()  # gone before a single check reached the engine
    engine.accept("c1", "app", answer)
    failed = await wait_for(engine.events, MediaFailed, timeout=6.0)
    assert failed.leg == "app"
    assert "ICE" in failed.reason or "DTLS" in failed.reason


async def test_a_certificate_that_does_not_match_the_fingerprint_fails(
    engine: EmbeddedMedia,
) -> None:
    offer = engine.offer("c1", "app", webrtc=True)
    app = WebRtcPhone(tone(APP, 5.0))
    try:
        answer = await app.answer(offer)
        forged = re.sub(
            r"a=fingerprint:sha-256 (\S+)",
            "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
            answer,
        )
        assert forged != answer
        engine.accept("c1", "app", forged)
        failed = await wait_for(engine.events, MediaFailed, timeout=6.0)
        assert "fingerprint" in failed.reason
        assert not [e for e in engine.events if isinstance(e, MediaConnected)]
    finally:
        await app.close()


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda s: re.sub(r"a=ice-pwd:\S+\r\n", "", s), "ice-pwd"),
        (lambda s: re.sub(r"a=ice-ufrag:\S+\r\n", "", s), "ice-ufrag"),
        (lambda s: re.sub(r"a=fingerprint:[^\r]+\r\n", "", s), "fingerprint"),
        (lambda s: s.replace("a=setup:active", "a=setup:actpass"), "setup"),
        (
            lambda s: s.replace("a=mid:0", "a=mid:0\r\na=candidate:garbage udp"),
            "candidate",
        ),
    ],
)
async def test_malformed_webrtc_answers_are_refused(engine: EmbeddedMedia, edit, why: str) -> None:
    offer = engine.offer("c1", "app", webrtc=True)
    app = WebRtcPhone(tone(APP, 1.0))
    try:
        answer = await app.answer(offer)
    finally:
        await app.close()
    with pytest.raises(NoCommonCodec, match=why):
        engine.accept("c1", "app", edit(answer))


async def test_a_plain_rtp_answer_to_a_webrtc_offer_is_a_plain_leg(engine: EmbeddedMedia) -> None:
    caller = Phone(g711.PCMU, 0xC1)
    caller_port = port_of(
        engine.answer("c1", "caller", phone_sdp(caller, "0 101"), source="127.0.0.1")
    )
    app = Phone(g711.PCMU, 0xA1)
    app_port = port_of(engine.offer("c1", "app", like="caller", webrtc=True))
    engine.accept("c1", "app", phone_sdp(app, "0 101"), source="127.0.0.1")
    assert not engine.connecting("c1", "app")
    engine.bridge("c1", "caller", "app")
    try:
        await asyncio.gather(caller.play(CALLER, 1.0, caller_port), app.play(APP, 1.0, app_port))
        await asyncio.sleep(0.2)
        assert tones_in(audio_of(app.received()), [CALLER, APP]) == {CALLER}
        assert tones_in(audio_of(caller.received()), [CALLER, APP]) == {APP}
    finally:
        caller.close()
        app.close()


def test_ice_lite_answers_only_checks_for_its_ufrag_with_its_password() -> None:
    from aioice import stun

    ice = IceLite("ours", "p" * 24)

    def request(username: str, key: bytes, **extra: object) -> bytes:
        message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        message.attributes["USERNAME"] = username
        message.attributes["ICE-CONTROLLING"] = 1
        message.attributes.update(extra)
        message.add_message_integrity(key)
        return bytes(message)

    source = ("127.0.0.1", 5000)
    good = ice.handle(request("ours:theirs", b"p" * 24), source)
    assert good is not None
    response = stun.parse_message(good)
    assert response.message_class == stun.Class.RESPONSE
    assert response.attributes["XOR-MAPPED-ADDRESS"] == source
    assert response.check_message_integrity(b"p" * 24)
    assert ice.selected == source and not ice.nominated
    for username, key in (("other:theirs", b"p" * 24), ("ours:theirs", b"q" * 24)):
        bad = ice.handle(request(username, key), ("127.0.0.1", 5001))
        assert stun.parse_message(bad).attributes["ERROR-CODE"][0] == 401
    assert ice.selected == source  # a failed check moves nothing
    nominated = ice.handle(
        request("ours:theirs", b"p" * 24, **{"USE-CANDIDATE": None}), ("127.0.0.1", 5002)
    )
    assert nominated is not None and ice.selected == ("127.0.0.1", 5002) and ice.nominated
    assert ice.handle(b"\x00\x01garbage", source) is None
    assert ice.rejected == 3
