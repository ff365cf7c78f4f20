"""SIP calls anchored in the media engine, heard as audio: the bridge's SIP application with its
messages on a wire the test reads and feeds (`InprocBridge`), and RTP on real loopback sockets
through the embedded engine. The caller plays 440 Hz, the agent's desk phone 1 kHz, the
supervisor's desk phone 2 kHz; an FFT of what each received says who heard whom.

Covers: each side gets the bridge's own SDP (never the other's), PCMU caller to PCMA phone,
listen / whisper / barge by `via: ip_phone` through the control service with a live switch and
a BYE at `stop`, the supervisor's own BYE, the call's recording (left caller, right agent),
an offer with no usable codec (488), a re-INVITE answered by the bridge alone, the RTP
timeout, and voicemail over SIP.
"""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sim.phones.inproc import (
    TRUNK,
    InprocBridge,
    body_of,
    contact_uri,
    desk_user,
    header,
    is_request,
    is_response,
    respond,
    start_line,
    trunk_in_dialog,
)
from structlog.testing import capture_logs

from bridge.calls.events import LegDeclined
from bridge.control.errors import ControlError, ControlErrorKind
from bridge.control.service import ControlService
from bridge.directory.model import User
from bridge.media import g711
from bridge.media.sdp import parse_sdp
from tests.media.audio import tone, tones_in
from tests.media.rtp_peers import Phone, audio_of

LINE = "+15550100"
AGENT_PHONE = ("127.0.0.1", 20001)
SUPERVISOR_PHONE = ("127.0.0.1", 20002)
CALLER, AGENT, SUPERVISOR = 440.0, 1000.0, 2000.0
TONES = [CALLER, AGENT, SUPERVISOR]


def directory(
    fallback: dict[str, Any] | None = None, *, desk: Callable[..., dict[str, Any]] = desk_user
) -> dict[str, Any]:
    """Ana (a desk phone, 201) rung on the line; Sam a supervisor with a desk phone (301) and
    the barge/whisper and recording flags. `desk` builds desk users (their HA1's realm)."""
    return {
        "timezone": "UTC",
        "users": [
            {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
            desk("ana", "201", "pw-201"),
            desk(
                "sam",
                "301",
                "pw-301",
                role="supervisor",
                permissions=["barge_whisper", "recording_control"],
            ),
        ],
        "ring_groups": [
            {
                "id": "desk",
                "name": "Desk",
                "layers": [{"members": ["ana"], "timeout_seconds": 20}],
                "fallback": fallback or {"action": "hangup"},
            }
        ],
        "lines": [{"number": LINE, "name": "Main", "route_to": {"ring_group": "desk"}}],
    }


def sdp_for(phone: Phone, payload_types: str, origin: str = "peer") -> bytes:
    host, port = phone.address
    return (
        f"v=0\r\no={origin} 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP {payload_types}\r\n"
        "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    ).encode()


def invite(n: int, bridge: str, body: bytes) -> bytes:
    return (
        f"INVITE sip:{LINE}@{bridge} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {TRUNK[0]}:{TRUNK[1]};branch=z9hG4bK-a{n};rport\r\n"
        f'From: "Caller" <sip:+15551230000@{TRUNK[0]}:{TRUNK[1]}>;tag=trunk{n}\r\n'
        f"To: <sip:{LINE}@{bridge}>\r\n"
        f"Call-ID: call-{n}@{TRUNK[0]}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:+15551230000@{TRUNK[0]}:{TRUNK[1]};transport=udp>\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def media_port(message: bytes) -> int:
    return parse_sdp(body_of(message)).media[0].port


def ok_extra(username: str, port: int) -> bytes:
    return f"Contact: <sip:{username}@127.0.0.1:{port}>\r\nContent-Type: application/sdp".encode()


class Call:
    """A trunk call the agent's desk phone answered, with its three RTP phones."""

    def __init__(self, bridge: InprocBridge) -> None:
        self.bridge = bridge
        self.phones: dict[str, Phone] = {}
        self.ports: dict[str, int] = {}
        self.ok = b""  # our 200 to the trunk
        self.leg = b""  # our INVITE to the agent's phone

    def close(self) -> None:
        for phone in self.phones.values():
            phone.close()

    async def talk(self, seconds: float, tones: dict[str, float]) -> dict[str, bytes]:
        for phone in self.phones.values():
            phone.received()
        await asyncio.gather(
            *(self.phones[p].play(f, seconds, self.ports[p]) for p, f in tones.items())
        )
        await asyncio.sleep(0.15)
        return {p: audio_of(phone.received()) for p, phone in self.phones.items()}

    async def acked_and_heard(self, ok: bytes, n: int, tones: dict[str, float]) -> None:
        """The trunk ACKs our 200 (`ok`, its call `n`); then the two parties of `tones` each
        play their own and hear the other's, nothing else (of TONES and `tones`)."""
        self.bridge.feed(
            trunk_in_dialog("ACK", 1, n, header(ok, "To") or "", contact_uri(ok)), TRUNK
        )
        await self.bridge.settle()
        heard = await self.talk(1.0, tones)
        (one, one_tone), (other, other_tone) = tones.items()
        candidates = sorted({*TONES, *tones.values()})
        assert tones_in(heard[one], candidates) == {other_tone}, one
        assert tones_in(heard[other], candidates) == {one_tone}, other


async def answered_call(bridge: InprocBridge, n: int = 1) -> Call:
    call = Call(bridge)
    caller = call.phones["caller"] = Phone(g711.PCMU, 0xC1)
    bridge.feed(invite(n, bridge.address, sdp_for(caller, "0 101", "trunk")), TRUNK)
    [leg] = [d for d, a in bridge.take() if a == AGENT_PHONE and is_request(d, "INVITE")]
    offer = body_of(leg).decode()
    assert "o=trunk" not in offer  # the bridge's own offer, not the caller's SDP
    assert parse_sdp(offer).media[0].payload_types[0] == 0  # the caller's codec first
    agent = call.phones["agent"] = Phone(g711.PCMA, 0xA1)  # PCMA: transcoded by the bridge
    call.ports["agent"] = media_port(leg)
    bridge.feed(
        respond(leg, "200 OK", b"ph1", ok_extra("201", AGENT_PHONE[1]), sdp_for(agent, "8 101")),
        AGENT_PHONE,
    )
    [ok] = [d for d, a in bridge.take() if a == TRUNK and is_response(d, 200, "INVITE")]
    answer = body_of(ok).decode()
    assert "o=peer" not in answer  # the caller never sees the phone's SDP
    call.ports["caller"] = media_port(ok)
    call.ok, call.leg = ok, leg
    bridge.feed(trunk_in_dialog("ACK", 1, n, header(ok, "To") or "", contact_uri(ok)), TRUNK)
    await bridge.settle()
    return call


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[InprocBridge]:
    bridge = InprocBridge(directory(), folder=tmp_path)
    await bridge.start()
    assert bridge.register_phone("201", "pw-201", AGENT_PHONE[1])
    assert bridge.register_phone("301", "pw-301", SUPERVISOR_PHONE[1], n=1)
    try:
        yield bridge
    finally:
        await bridge.stop()


def only_call_id(bridge: InprocBridge) -> str:
    [live] = bridge.ctx.calls.all()
    return live.call_id


async def test_caller_and_agent_hear_each_other_through_the_engine(bridge: InprocBridge) -> None:
    call = await answered_call(bridge)
    try:
        heard = await call.talk(1.0, {"caller": CALLER, "agent": AGENT})
        assert tones_in(heard["caller"], TONES) == {AGENT}
        assert tones_in(heard["agent"], TONES) == {CALLER}
        # the agent's phone got PCMA (what it chose), the caller PCMU
        assert {p[1] & 0x7F for p in call.phones["agent"].received()} <= {8}
    finally:
        call.close()


def acting_supervisor(bridge: InprocBridge) -> tuple[ControlService, User]:
    """The control service, and sam (the supervisor) as it acts through it."""
    control = bridge.ctx.control
    assert control is not None
    sam = bridge.ctx.store.current.user("sam")
    assert sam is not None
    return control, sam


async def join_supervisor(bridge: InprocBridge, call: Call, mode: str) -> bytes:
    """`POST .../monitor` via ip_phone; the supervisor's phone answers the bridge's INVITE."""
    control, sam = acting_supervisor(bridge)
    joined = await control.monitor(sam, only_call_id(bridge), mode, "ip_phone", origin="test")
    assert joined["status"] == "dialing" and joined["via"] == "ip_phone"
    [leg] = [d for d, a in bridge.take() if a == SUPERVISOR_PHONE and is_request(d, "INVITE")]
    supervisor = call.phones["sup"] = Phone(g711.PCMU, 0x5A)
    call.ports["sup"] = media_port(leg)
    bridge.feed(
        respond(
            leg, "200 OK", b"sup1", ok_extra("301", SUPERVISOR_PHONE[1]), sdp_for(supervisor, "0")
        ),
        SUPERVISOR_PHONE,
    )
    sent = bridge.take()
    assert any(a == SUPERVISOR_PHONE and is_request(d, "ACK") for d, a in sent)
    return leg


HEARD = {
    "listen": {"caller": {AGENT}, "agent": {CALLER}, "sup": {CALLER, AGENT}},
    "whisper": {"caller": {AGENT}, "agent": {CALLER, SUPERVISOR}, "sup": {CALLER, AGENT}},
    "barge": {
        "caller": {AGENT, SUPERVISOR},
        "agent": {CALLER, SUPERVISOR},
        "sup": {CALLER, AGENT},
    },
}


@pytest.mark.parametrize("mode", ["listen", "whisper", "barge"])
async def test_supervisor_on_a_desk_phone_hears_as_the_mode_says(
    bridge: InprocBridge, mode: str
) -> None:
    call = await answered_call(bridge)
    try:
        await join_supervisor(bridge, call, mode)
        heard = await call.talk(1.2, {"caller": CALLER, "agent": AGENT, "sup": SUPERVISOR})
        for party, expected in HEARD[mode].items():
            assert tones_in(heard[party], TONES) == expected, party
        view = bridge.ctx.control.find(only_call_id(bridge))  # type: ignore[union-attr]
        assert view is not None and view.monitors["sam"].status == "in-progress"
    finally:
        call.close()


async def test_live_switch_then_stop_sends_bye_and_the_call_goes_on(
    bridge: InprocBridge,
) -> None:
    call = await answered_call(bridge)
    control, sam = acting_supervisor(bridge)
    try:
        await join_supervisor(bridge, call, "listen")
        heard = await call.talk(0.8, {"caller": CALLER, "agent": AGENT, "sup": SUPERVISOR})
        assert SUPERVISOR not in tones_in(heard["caller"], TONES)
        changed = await control.change_monitor(sam, only_call_id(bridge), "barge")
        assert changed["mode"] == "barge"
        assert not [d for d, a in bridge.take() if is_request(d, "INVITE")]  # no re-INVITE
        heard = await call.talk(0.8, {"caller": CALLER, "agent": AGENT, "sup": SUPERVISOR})
        assert tones_in(heard["caller"], TONES) == {AGENT, SUPERVISOR}
        await control.stop_monitor(sam, only_call_id(bridge))
        sent = bridge.take()
        assert [a for d, a in sent if is_request(d, "BYE")] == [SUPERVISOR_PHONE]
        heard = await call.talk(0.8, {"caller": CALLER, "agent": AGENT, "sup": SUPERVISOR})
        assert tones_in(heard["caller"], TONES) == {AGENT}
        assert heard["sup"] == b""
    finally:
        call.close()


async def test_supervisors_own_bye_ends_only_their_session(bridge: InprocBridge) -> None:
    call = await answered_call(bridge)
    try:
        leg = await join_supervisor(bridge, call, "barge")
        to = (header(leg, "To") or "") + ";tag=sup1"
        bye = (
            f"BYE sip:bridge@{bridge.address} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{SUPERVISOR_PHONE[1]};branch=z9hG4bK-supbye;rport\r\n"
            f"From: {to}\r\nTo: {header(leg, 'From')}\r\n"
            f"Call-ID: {header(leg, 'Call-ID')}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        bridge.feed(bye, SUPERVISOR_PHONE)
        sent = bridge.take()
        assert any(is_response(d, 200, "BYE") for d, a in sent if a == SUPERVISOR_PHONE)
        assert not [d for d, a in sent if is_request(d, "BYE")]  # nobody else is hung up
        heard = await call.talk(0.8, {"caller": CALLER, "agent": AGENT})
        assert tones_in(heard["caller"], TONES) == {AGENT}
        view = bridge.ctx.control.find(only_call_id(bridge))  # type: ignore[union-attr]
        assert view is not None and view.monitors == {}
    finally:
        call.close()


async def test_recording_holds_caller_left_and_agent_right(
    bridge: InprocBridge, tmp_path: Path
) -> None:
    call = await answered_call(bridge)
    control, sam = acting_supervisor(bridge)
    try:
        started = await control.recording(sam, only_call_id(bridge), "start")
        assert started["status"] == "in-progress"
        await call.talk(1.0, {"caller": CALLER, "agent": AGENT})
        stopped = await control.recording(sam, only_call_id(bridge), "stop")
        assert stopped["status"] == "completed" and stopped["duration_seconds"] >= 1
        [path] = list((tmp_path / "recordings").rglob("*.wav"))
        with wave.open(str(path)) as wav:
            assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 8000, 2)
            frames = wav.readframes(wav.getnframes())
        left = g711.audioop.tomono(frames, 2, 1, 0)
        right = g711.audioop.tomono(frames, 2, 0, 1)
        assert tones_in(left, TONES) == {CALLER}
        assert tones_in(right, TONES) == {AGENT}
    finally:
        call.close()


async def test_offer_without_a_usable_codec_gets_488(bridge: InprocBridge) -> None:
    caller = Phone(g711.PCMU, 1)
    try:
        bridge.feed(invite(7, bridge.address, sdp_for(caller, "9", "trunk")), TRUNK)
        sent = bridge.take()
        [refusal] = [d for d, a in sent if a == TRUNK and is_response(d, 488, "INVITE")]
        assert "305" in (header(refusal, "Warning") or "")
        assert not [d for d, a in sent if a == AGENT_PHONE]  # nobody rang
        assert bridge.ctx.calls.all() == []
    finally:
        caller.close()


async def test_reinvite_is_answered_by_the_bridge_alone(bridge: InprocBridge) -> None:
    call = await answered_call(bridge)
    try:
        await caller_moves_and_is_heard(
            call, lambda sdp, to, target: trunk_in_dialog("INVITE", 2, 1, to, target, body=sdp)
        )
    finally:
        call.close()


async def caller_moves_and_is_heard(
    call: Call, reinvite: Callable[[bytes, str, str], bytes]
) -> None:
    """The caller moves its media (a new address) with the re-INVITE `reinvite(sdp, to,
    target)` makes: the bridge answers it alone (same port, its own SDP, the agent's phone
    sees nothing) and both sides still hear each other."""
    bridge = call.bridge
    moved = Phone(g711.PCMU, 0xC2)
    call.phones["caller"].close()
    call.phones["caller"] = moved
    ok = call.ok
    bridge.feed(reinvite(sdp_for(moved, "0 101"), header(ok, "To") or "", contact_uri(ok)), TRUNK)
    sent = bridge.take()
    [answer] = [d for d, a in sent if a == TRUNK and is_response(d, 200, "INVITE")]
    assert media_port(answer) == call.ports["caller"]  # same port, the bridge's SDP
    assert not [d for d, a in sent if a == AGENT_PHONE]  # the agent's phone saw nothing
    heard = await call.talk(1.0, {"caller": CALLER, "agent": AGENT})
    assert tones_in(heard["agent"], TONES) == {CALLER}
    assert tones_in(heard["caller"], TONES) == {AGENT}


async def test_silent_call_is_ended_by_the_rtp_timeout(tmp_path: Path) -> None:
    bridge = InprocBridge(directory(), folder=tmp_path, media={"timeout_seconds": 1})
    await bridge.start()
    try:
        assert bridge.register_phone("201", "pw-201", AGENT_PHONE[1])
        call = await answered_call(bridge)
        try:
            await asyncio.sleep(2.6)
            sent = bridge.take()
            byes = sorted({a for d, a in sent if is_request(d, "BYE")})
            assert byes == sorted({TRUNK, AGENT_PHONE})
            assert bridge.ctx.calls.all() == []
        finally:
            call.close()
    finally:
        await bridge.stop()


async def test_voicemail_records_the_caller_until_pound(tmp_path: Path) -> None:
    from bridge.media.dtmf import build_event
    from bridge.media.rtp import build_rtp

    bridge = InprocBridge(directory({"action": "voicemail"}), folder=tmp_path)
    await bridge.start()
    caller = Phone(g711.PCMU, 0xC1)
    try:
        # nobody registered: the ring group has no one to ring, voicemail answers
        bridge.feed(invite(3, bridge.address, sdp_for(caller, "0 101", "trunk")), TRUNK)
        sent = await bridge.settle()
        [ok] = [d for d, a in sent if a == TRUNK and is_response(d, 200, "INVITE")]
        port = media_port(ok)
        bridge.feed(trunk_in_dialog("ACK", 1, 3, header(ok, "To") or "", contact_uri(ok)), TRUNK)
        # the greeting and the beep come first (stock prompt: several seconds of speech)
        deadline = asyncio.get_running_loop().time() + 20
        greeting: list[bytes] = []
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
            greeting += caller.received()
            recorded = [e for e in bridge.ctx.sip.calls.media._calls.values() if e.messages]  # type: ignore[union-attr]
            if recorded:
                break
        assert recorded, "the recording of the message never started"
        assert tones_in(audio_of(greeting)[-4000:], [1000.0]) == {1000.0}  # the beep
        await caller.play(CALLER, 1.5, port)
        for i, end in enumerate((False, True, True, True)):
            caller.send_raw(
                build_rtp(
                    101, caller.sequence + i, caller.timestamp, 0xC1, build_event("#", 800, end=end)
                ),
                port,
            )
        await asyncio.sleep(0.3)
        sent = bridge.take()
        assert [a for d, a in sent if is_request(d, "BYE")] == [TRUNK]  # goodbye
        [path] = list((tmp_path / "recordings").rglob("*.wav"))
        with wave.open(str(path)) as wav:
            assert wav.getnchannels() == 1
            pcm = wav.readframes(wav.getnframes())
        assert 1.2 < len(pcm) / 16000 < 2.5
        assert tones_in(pcm, TONES) == {CALLER}
    finally:
        caller.close()
        await bridge.stop()


async def test_no_free_media_port_is_503_logged_and_counted(tmp_path: Path) -> None:
    probe = Phone(g711.PCMU, 1)
    base = probe.address[1] + 3000
    probe.close()
    base -= base % 2
    bridge = InprocBridge(
        directory(), folder=tmp_path, media={"port_min": base, "port_max": base + 3}
    )
    await bridge.start()
    try:
        assert bridge.register_phone("201", "pw-201", AGENT_PHONE[1])
        call = await answered_call(bridge)  # the caller's and the agent's port: all there are
        second = Phone(g711.PCMU, 2)
        try:
            with capture_logs() as logs:
                bridge.feed(invite(2, bridge.address, sdp_for(second, "0", "trunk")), TRUNK)
                sent = bridge.take()
            [refusal] = [d for d, a in sent if a == TRUNK and is_response(d, 503, "INVITE")]
            assert header(refusal, "Retry-After") is not None
            assert any(e["event"] == "media_ports_exhausted" for e in logs)
            metrics = bridge.ctx.metrics.render().decode()
            assert 'bridge_sip_calls_refused_total{reason="media_ports"} 1.0' in metrics
            assert "bridge_media_ports_exhausted_total 1.0" in metrics
            assert 'bridge_media_ports{state="in_use"} 2.0' in metrics
            # the call that holds the ports goes on
            heard = await call.talk(0.6, {"caller": CALLER, "agent": AGENT})
            assert tones_in(heard["caller"], TONES) == {AGENT}
        finally:
            second.close()
            call.close()
    finally:
        await bridge.stop()


async def test_metrics_show_the_anchored_call_and_its_packets(bridge: InprocBridge) -> None:
    call = await answered_call(bridge)
    try:
        await call.talk(0.6, {"caller": CALLER, "agent": AGENT})
        metrics = bridge.ctx.metrics.render().decode()
        assert "bridge_media_anchored_calls 1.0" in metrics
        assert "bridge_media_legs 2.0" in metrics
        received = next(
            line for line in metrics.splitlines()
            if line.startswith('bridge_media_packets_total{direction="received"}')
        )  # fmt: skip
        assert float(received.split()[-1]) >= 50
    finally:
        call.close()


async def test_recording_that_cannot_be_stored_is_an_error_and_the_call_goes_on(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the recordings folder should be")
    bridge = InprocBridge(directory(), folder=tmp_path, media={"recordings_dir": str(blocker)})
    await bridge.start()
    try:
        assert bridge.register_phone("201", "pw-201", AGENT_PHONE[1])
        call = await answered_call(bridge)
        try:
            control, sam = acting_supervisor(bridge)
            with pytest.raises(ControlError) as refused:
                await control.recording(sam, only_call_id(bridge), "start")
            assert refused.value.kind is ControlErrorKind.UPSTREAM_FAILED
            assert "cannot be stored" in refused.value.reason
            heard = await call.talk(0.6, {"caller": CALLER, "agent": AGENT})
            assert tones_in(heard["caller"], TONES) == {AGENT}
            assert len(bridge.ctx.calls) == 1
        finally:
            call.close()
    finally:
        await bridge.stop()


PROVIDER = ("127.0.0.1", 5080)


def confirm_directory() -> dict[str, Any]:
    data = directory()
    data["users"].append(
        {
            "id": "fwd",
            "name": "Forwarded",
            "answer_by": "phone_number",
            "phone_number": "+15559990000",
            "confirm_answer": True,
        }
    )
    data["lines"][0]["route_to"] = {"user": "fwd"}
    return data


def info(ok: bytes, invite_sent: bytes, body: bytes, kind: str, cseq: int = 1) -> bytes:
    """An INFO from the provider in the dialog of its 200 (`ok`) to our INVITE."""
    return (
        f"INFO {contact_uri(invite_sent)} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PROVIDER[0]}:{PROVIDER[1]};branch=z9hG4bK-info{cseq};rport\r\n"
        f"From: {header(ok, 'To')}\r\nTo: {header(ok, 'From')}\r\n"
        f"Call-ID: {header(ok, 'Call-ID')}\r\nCSeq: {cseq} INFO\r\nMax-Forwards: 70\r\n"
        f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize(
    ("body", "kind", "answered"),
    [
        (b"Signal=1\r\nDuration=160\r\n", "application/dtmf-relay", True),
        (b"1", "application/dtmf", True),
        (b"Signal=2\r\nDuration=160\r\n", "application/dtmf-relay", False),
    ],
)
async def test_press_one_sent_as_sip_info(
    tmp_path: Path, body: bytes, kind: str, answered: bool
) -> None:
    bridge = InprocBridge(
        confirm_directory(),
        folder=tmp_path,
        sip={"trunk_uri": f"sip:{PROVIDER[0]}:{PROVIDER[1]}"},
    )
    await bridge.start()
    caller = Phone(g711.PCMU, 0xC1)
    provider = Phone(g711.PCMU, 0xF1)
    try:
        bridge.feed(invite(5, bridge.address, sdp_for(caller, "0 101", "trunk")), TRUNK)
        [leg] = [d for d, a in bridge.take() if a == PROVIDER and is_request(d, "INVITE")]
        extra = b"Contact: <sip:+15559990000@127.0.0.1:5080>\r\nContent-Type: application/sdp"
        ok = respond(leg, "200 OK", b"pv1", extra, sdp_for(provider, "0 101"))
        bridge.feed(ok, PROVIDER)
        sent = bridge.take()
        assert any(a == PROVIDER and is_request(d, "ACK") for d, a in sent)
        assert not [d for d, a in sent if a == TRUNK and is_response(d, 200, "INVITE")]
        bridge.feed(info(ok, leg, body, kind), PROVIDER)
        sent = bridge.take()
        assert any(a == PROVIDER and is_response(d, 200, "INFO") for d, a in sent)
        caller_ok = [d for d, a in sent if a == TRUNK and is_response(d, 200, "INVITE")]
        byes = [a for d, a in sent if is_request(d, "BYE")]
        run = bridge.ctx.runner.get(only_call_id(bridge))  # type: ignore[union-attr]
        assert run is not None
        declined = [r.event for r in run.events if isinstance(r.event, LegDeclined)]
        if answered:
            assert caller_ok and byes == [] and declined == []
            assert run.machine.answered_by == "fwd"
        else:
            # hung up and counted as not answered: the plan goes on (the user's voicemail)
            assert byes == [PROVIDER] and run.machine.answered_by is None
            assert [d.digits for d in declined] == ["2"]
    finally:
        caller.close()
        provider.close()
        await bridge.stop()


@pytest.mark.parametrize(("behavior", "kept"), [("skip", False), ("silence", True)])
async def test_paused_recording_skips_or_keeps_the_stretch(
    bridge: InprocBridge, tmp_path: Path, behavior: str, kept: bool
) -> None:
    call = await answered_call(bridge)
    control, sam = acting_supervisor(bridge)
    call_id = only_call_id(bridge)
    try:
        await control.recording(sam, call_id, "start")
        await call.talk(1.0, {"caller": CALLER, "agent": AGENT})
        paused = await control.recording(sam, call_id, "pause", behavior)
        assert paused["status"] == "paused" and paused["pause_behavior"] == behavior
        await call.talk(1.0, {"caller": SUPERVISOR, "agent": SUPERVISOR})  # not recorded
        resumed = await control.recording(sam, call_id, "resume")
        assert resumed["status"] == "in-progress"
        await call.talk(1.0, {"caller": CALLER, "agent": AGENT})
        stopped = await control.recording(sam, call_id, "stop")
        [path] = list((tmp_path / "recordings").rglob("*.wav"))
        with wave.open(str(path)) as wav:
            seconds = wav.getnframes() / 8000
            frames = wav.readframes(wav.getnframes())
        left = g711.audioop.tomono(frames, 2, 1, 0)
        assert SUPERVISOR not in tones_in(left, TONES)
        if kept:
            assert seconds >= 3.0, seconds
        else:
            assert 1.6 <= seconds <= 2.8, seconds
        assert abs(stopped["duration_seconds"] - seconds) <= 1
    finally:
        call.close()


async def refusing_bridge(tmp_path: Path, *, seconds: float) -> InprocBridge:
    """A started bridge whose line's fallback refuses with a prompt: a WAV of the
    supervisor's tone, `seconds` long (nobody is registered, so every call is refused)."""
    prompt = tmp_path / "closed.wav"
    with wave.open(str(prompt), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(tone(SUPERVISOR, seconds))
    bridge = InprocBridge(directory({"action": "hangup", "prompt": str(prompt)}), folder=tmp_path)
    await bridge.start()
    return bridge


async def test_a_refusals_prompt_is_played_as_early_media_before_the_refusal(
    tmp_path: Path,
) -> None:
    bridge = await refusing_bridge(tmp_path, seconds=1.0)  # a 1 s "we are closed"
    caller = Phone(g711.PCMU, 0xC1)
    try:
        # nobody registered: the fallback refuses the call, with its prompt first
        bridge.feed(invite(6, bridge.address, sdp_for(caller, "0 101", "trunk")), TRUNK)
        sent = await bridge.settle()
        [progress] = [d for d, a in sent if a == TRUNK and is_response(d, 183, "INVITE")]
        assert media_port(progress) > 0
        assert not [d for d, a in sent if a == TRUNK and is_response(d, 480)]
        heard: list[bytes] = []
        refusal: list[bytes] = []
        deadline = asyncio.get_running_loop().time() + 5
        while not refusal and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
            heard += caller.received()
            refusal = [
                d for d, a in bridge.take() if a == TRUNK and start_line(d).split()[1] >= "400"
            ]
        assert refusal, "the refusal never came"
        assert tones_in(audio_of(heard), TONES) == {SUPERVISOR}  # the prompt, before it
        assert len(audio_of(heard)) >= 0.8 * 16000
        await asyncio.sleep(0.1)
        assert bridge.ctx.calls.all() == []
        assert bridge.ctx.sip.calls.media.anchored_calls == 0  # type: ignore[union-attr]
    finally:
        caller.close()
        await bridge.stop()


async def test_a_caller_who_cancels_during_the_refusals_prompt_gets_487(tmp_path: Path) -> None:
    bridge = await refusing_bridge(tmp_path, seconds=3.0)
    caller = Phone(g711.PCMU, 0xC1)
    try:
        offer = invite(8, bridge.address, sdp_for(caller, "0 101", "trunk"))
        bridge.feed(offer, TRUNK)
        sent = await bridge.settle()
        assert [d for d, a in sent if a == TRUNK and is_response(d, 183, "INVITE")]
        await asyncio.sleep(0.5)
        head = offer.split(b"\r\nContent-Type")[0].replace(b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
        cancel = head.replace(b"INVITE sip:", b"CANCEL sip:", 1) + b"\r\nContent-Length: 0\r\n\r\n"
        bridge.feed(cancel, TRUNK)
        sent = await bridge.settle()
        assert [d for d, a in sent if is_response(d, 200, "CANCEL")]
        assert [d for d, a in sent if is_response(d, 487, "INVITE")]
        assert not [d for d, a in sent if is_response(d, 480, "INVITE")]
        assert bridge.ctx.sip.calls.media.anchored_calls == 0  # type: ignore[union-attr]
    finally:
        caller.close()
        await bridge.stop()
