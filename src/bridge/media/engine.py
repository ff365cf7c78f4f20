"""The embedded media engine: the `MediaPort` (`bridge.calls.ports`) inside the daemon.

One `_Call` per anchored call, one `_Leg` per media leg, each leg one UDP socket from the
`PortPool`, read on the loop (`MediaEndpoint`). What each leg's packets go through is decided
again (`_rewire`) whenever something changes on the call:

- the caller and the answered leg with nothing else going on: the blind relay (`BlindRelay`),
  nothing decoded;
- a supervisor, a recording, a prompt, a message being recorded or digits being collected on
  any leg of the call: the clocked mixing session (`MixingSession`), every leg through its
  jitter buffer and the 20 ms mixer, each one hearing what `mixer.plan_for` says (plus its own
  prompt);
- a leg in neither (ringing, or its peer's answer not known yet): its packets are read and
  dropped.

Every leg keeps one outgoing stream (`StreamRewriter`) across these, so a phone never sees
its stream jump. A SIP leg may be SRTP keyed by SDES (`a=crypto`, media/sdes.py, under the
`srtp` policy of `answer` and `offer`): its endpoint unprotects what it reads and protects
what it sends, so the relay and the mix see plain RTP from it as from any other leg.

A housekeeping tick once a second ends calls whose peers went silent
(`media.timeout_seconds`: `MediaTimeout`) and keeps the figures the metrics scrape.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from bridge.calls.media import (
    DtmfReceived,
    MediaCapabilities,
    MediaConnected,
    MediaError,
    MediaEvent,
    MediaFailed,
    MediaTimeout,
    MediaUnavailable,
    MessageEnd,
    MessageRecorded,
    NoCommonCodec,
    PlaybackDone,
    RecordingFailed,
    RecordingResult,
    UnknownMedia,
)
from bridge.media import g711
from bridge.media.dtmf import DtmfError, DtmfReceiver, DtmfSender, parse_event
from bridge.media.endpoint import BUFFER_BYTES, Latch, MediaEndpoint, resolve
from bridge.media.mixer import MixPlan, Monitor, PlanError, plan_for
from bridge.media.ports import PortPool, PortsExhausted, RtpSocket
from bridge.media.prompts import SilenceDetector
from bridge.media.recording import RecordingError, RecordingWriter, VoicemailWriter
from bridge.media.relay import BlindRelay, RelayLeg
from bridge.media.rtp import RtpHeader, StreamRewriter
from bridge.media.sdes import (
    OFFERED_SUITE,
    Crypto,
    SdesRefused,
    answer_crypto,
    check_policy,
    negotiate_srtp,
    new_key,
    offered_crypto,
)
from bridge.media.sdp import (
    RTP_AVP,
    RTP_SAVP,
    SAVPF,
    Negotiated,
    SdpError,
    SessionDescription,
    build_answer,
    build_offer,
    build_webrtc_offer,
    negotiate,
    parse_sdp,
)
from bridge.media.session import MixingSession
from bridge.media.srtp import SrtpSessions
from bridge.media.webrtc import DtlsIdentity, WebRtcLeg, check_candidates, read_remote

__all__ = ["EMBEDDED", "EmbeddedMedia", "EngineTotals"]

log = structlog.get_logger("bridge.media")

EMBEDDED = MediaCapabilities(
    "embedded",
    monitor=True,
    recording=True,
    prompts=True,
    messages=True,
    dtmf=True,
    transcoding=True,
    webrtc=True,
)
_FRAME_BYTES = 320
_HOUSEKEEPING_SECONDS = 1.0


def _drop(packet: memoryview, source: tuple[str, int]) -> None:
    """The handler of a leg that is in no relay and no mix: read and forget."""


@dataclass(eq=False)
class _Player:
    pcm: bytes
    position: int = 0

    def frame(self) -> bytes | None:
        if self.position >= len(self.pcm):
            return None
        chunk = self.pcm[self.position : self.position + _FRAME_BYTES]
        self.position += _FRAME_BYTES
        return chunk.ljust(_FRAME_BYTES, b"\x00")

    @property
    def done(self) -> bool:
        return self.position >= len(self.pcm)


@dataclass(eq=False)
class _Message:
    writer: VoicemailWriter
    silence: SilenceDetector
    stop_digits: str


@dataclass(eq=False)
class _Sdes:
    """A leg's SDES keys: ours (`local`: what we send with, in our `a=crypto`) and the peer's
    (`remote`: what it sends with). The sessions are the endpoint's `srtp`."""

    local: Crypto
    remote: Crypto


@dataclass(eq=False)
class _Leg:
    name: str
    rtp: RtpSocket
    endpoint: MediaEndpoint
    stream: StreamRewriter
    session_id: int
    version: int = 0
    negotiated: Negotiated | None = None
    local: str | None = None  # the SDP we last sent this leg
    offered_codecs: tuple[str, ...] = ("PCMU", "PCMA")
    relay: RelayLeg | None = None
    dtmf: DtmfReceiver = field(default_factory=DtmfReceiver)
    collect: bool = False
    active_since: float | None = None  # in a relay or mix since (for the RTP timeout)
    webrtc: WebRtcLeg | None = None  # offered to a WebRTC app (ICE-lite, DTLS-SRTP)
    connecting: asyncio.TimerHandle | None = None  # the WebRTC handshake's deadline
    sdes: _Sdes | None = None  # SRTP keyed by SDES, on (else plain RTP)
    offered_crypto: Crypto | None = None  # our a=crypto in our last offer to the leg
    offered_srtp: str = "off"  # the policy of that offer


@dataclass(eq=False)
class _Call:
    call_id: str
    legs: dict[str, _Leg] = field(default_factory=dict)
    pair: tuple[str, str] | None = None
    monitors: dict[str, Monitor] = field(default_factory=dict)
    recording: RecordingWriter | None = None
    players: dict[str, _Player] = field(default_factory=dict)
    messages: dict[str, _Message] = field(default_factory=dict)
    relay: BlindRelay | None = None
    mixing: MixingSession | None = None
    timed_out: bool = False


@dataclass(slots=True)
class EngineTotals:
    """Figures of legs already released (live legs are summed at scrape time)."""

    received: int = 0
    received_bytes: int = 0
    sent: int = 0
    sent_bytes: int = 0
    lost: int = 0
    foreign: int = 0
    malformed: int = 0
    srtp_dropped: int = 0  # SDES legs: SRTP packets that failed authentication, or replays
    timeouts: int = 0
    recordings: int = 0
    recording_failures: int = 0
    voicemails: int = 0
    ports_exhausted: int = 0


class EmbeddedMedia:
    """The media engine of `[media] engine = "embedded"`."""

    def __init__(
        self,
        pool: PortPool,
        *,
        advertised_address: str,
        clock: Callable[[], float],
        loop: asyncio.AbstractEventLoop,
        timeout_seconds: float = 60.0,
        connect_timeout_seconds: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.pool = pool
        self.advertised = advertised_address
        self._clock = clock
        self._loop = loop
        self.timeout_seconds = timeout_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self._identity: DtlsIdentity | None = None  # made at the first WebRTC leg
        self._rng = rng or random.SystemRandom()
        self._calls: dict[str, _Call] = {}
        self._listeners: list[Callable[[MediaEvent], None]] = []
        self.totals = EngineTotals()
        self._housekeeping: asyncio.TimerHandle | None = None
        # every leg reads into this one (they are read one at a time, on this loop)
        self._buffer = bytearray(BUFFER_BYTES)
        self._dtmf_sender = DtmfSender()

    # -- the port ------------------------------------------------------------------------------
    def capabilities(self) -> MediaCapabilities:
        return EMBEDDED

    def subscribe(self, listener: Callable[[MediaEvent], None]) -> None:
        self._listeners.append(listener)

    def answer(
        self,
        call_id: str,
        leg: str,
        offer: str,
        *,
        source: str | None = None,
        srtp: str = "off",
    ) -> str:
        """Answer a SIP peer's offer (see `MediaPort.answer`). SRTP by SDES when the chosen
        stream is RTP/SAVP (whatever the policy), or RTP/AVP with a usable `a=crypto` line and
        `srtp` not "off"; "required" refuses a stream without one (media/sdes.py)."""
        check_policy(srtp)
        description = _parse(offer)
        try:
            chosen, theirs = negotiate_srtp(description, srtp)
        except SdesRefused as exc:
            raise NoCommonCodec(str(exc)) from None
        entry = self._leg(call_id, leg, create=True)
        crypto: tuple[str, ...] = ()
        if theirs is not None:
            ours = Crypto(theirs.tag, theirs.suite, self._sending_key(entry, theirs.suite))
            self._use_sdes(entry, ours, theirs)
            crypto = (ours.value,)
        else:
            self._plain(entry)
        self._set_remote(entry, chosen, source)
        entry.version += 1
        entry.local = build_answer(
            description.media,
            chosen,
            self.advertised,
            entry.rtp.port,
            entry.session_id,
            entry.version,
            proto=description.media[chosen.media_index].proto,
            crypto=crypto,
        )
        self._rewire(self._calls[call_id])
        return entry.local

    def offer(
        self,
        call_id: str,
        leg: str,
        *,
        like: str | None = None,
        webrtc: bool = False,
        srtp: str = "off",
    ) -> str:
        """Our offer toward a leg (see `MediaPort.offer`). `srtp` (SIP legs; a WebRTC leg's is
        DTLS-SRTP anyway): "off" plain RTP/AVP, "optional" RTP/AVP with our `a=crypto`,
        "required" RTP/SAVP with it."""
        check_policy(srtp)
        entry = self._leg(call_id, leg, create=True)
        codecs = ("PCMU", "PCMA")
        other = self._calls[call_id].legs.get(like) if like is not None else None
        if other is not None and other.negotiated is not None:
            first = other.negotiated.encoding
            codecs = (first, *(c for c in codecs if c != first))
        entry.offered_codecs = codecs
        entry.version += 1
        entry.offered_crypto, entry.offered_srtp = None, "off"
        if not webrtc:
            if srtp != "off":
                entry.offered_crypto = offered_crypto(self._sending_key(entry, OFFERED_SUITE))
                entry.offered_srtp = srtp
            entry.local = build_offer(
                entry.session_id,
                entry.version,
                self.advertised,
                entry.rtp.port,
                codecs,
                proto=RTP_SAVP if srtp == "required" else RTP_AVP,
                crypto=(entry.offered_crypto.value,) if entry.offered_crypto else (),
            )
            return entry.local
        entry.sdes = None  # (its endpoint's SRTP is DTLS's from now on)
        if entry.webrtc is None:
            if self._identity is None:
                self._identity = DtlsIdentity()
            entry.webrtc = WebRtcLeg(self._identity)
            # the app's checks can come before its answer reaches us: answer them already
            entry.endpoint.on_secure = lambda failed, c=call_id, n=leg: self._secured(c, n, failed)
            entry.endpoint.make_secure(entry.webrtc)
        entry.local = build_webrtc_offer(
            entry.session_id,
            entry.version,
            self.advertised,
            entry.rtp.port,
            ice_ufrag=entry.webrtc.ice.ufrag,
            ice_pwd=entry.webrtc.ice.pwd,
            fingerprint=entry.webrtc.identity.fingerprint,
            ssrc=entry.stream.ssrc,
            codecs=codecs,
        )
        return entry.local

    def accept(self, call_id: str, leg: str, answer: str, *, source: str | None = None) -> None:
        entry = self._leg(call_id, leg)
        description = _parse(answer)
        if entry.webrtc is None:
            offered = entry.offered_crypto
            protos = (RTP_AVP,) if offered is None else (RTP_AVP, RTP_SAVP)
            chosen = negotiate(description, supported=entry.offered_codecs, protos=protos)
            if chosen is None:
                raise NoCommonCodec("the answer has no codec of our offer")
            media = description.media[chosen.media_index]
            theirs = answer_crypto(media, offered) if offered is not None else None
            if theirs is not None:
                assert offered is not None
                self._use_sdes(entry, offered, theirs)
            elif offered is not None and (
                entry.offered_srtp == "required" or media.proto == RTP_SAVP
            ):
                raise NoCommonCodec(
                    f"the answer has no usable a=crypto for our SRTP offer (tag {offered.tag} "
                    f"{offered.suite})"
                )
            else:
                self._plain(entry)
            self._set_remote(entry, chosen, source)
        else:
            chosen = negotiate(description, supported=entry.offered_codecs, protos=(SAVPF, RTP_AVP))
            if chosen is None:
                raise NoCommonCodec("the answer has no codec of our offer")
            media = description.media[chosen.media_index]
            if media.proto == RTP_AVP:
                # An app that answers plain RTP (a native client, a test peer) is one: its
                # address is in its SDP, as a phone's
                entry.webrtc = None
                entry.endpoint.secure = None
                entry.endpoint.on_secure = None
                self._plain(entry)
                self._set_remote(entry, chosen, source)
            else:
                try:
                    remote = read_remote(description, media)
                    check_candidates(media)
                except SdpError as exc:
                    raise NoCommonCodec(f"the WebRTC answer cannot be used: {exc}") from None
                entry.webrtc.set_remote(remote)
                entry.endpoint.make_secure(entry.webrtc)  # sends what the answer started
                self._negotiated(entry, chosen)
                if not entry.webrtc.connected and entry.webrtc.failed is None:
                    entry.connecting = self._loop.call_later(
                        self.connect_timeout_seconds, self._connect_timeout, call_id, leg
                    )
        self._rewire(self._calls[call_id])

    def connecting(self, call_id: str, leg: str) -> bool:
        """Whether the leg's transport is still being set up (a WebRTC app's ICE and DTLS):
        `MediaConnected` or `MediaFailed` follows."""
        call = self._calls.get(call_id)
        entry = call.legs.get(leg) if call is not None else None
        return (
            entry is not None
            and entry.webrtc is not None
            and entry.webrtc.dtls is not None
            and not entry.webrtc.connected
            and entry.webrtc.failed is None
        )

    def _secured(self, call_id: str, leg: str, failed: str | None) -> None:
        call = self._calls.get(call_id)
        entry = call.legs.get(leg) if call is not None else None
        if entry is None:
            return
        if entry.connecting is not None:
            entry.connecting.cancel()
            entry.connecting = None
        if failed is None:
            log.info("media_webrtc_connected", call_id=call_id, leg=leg)
            self._emit(MediaConnected(call_id, leg))
        else:
            log.info("media_webrtc_failed", call_id=call_id, leg=leg, reason=failed)
            self._emit(MediaFailed(call_id, leg, failed))

    def _connect_timeout(self, call_id: str, leg: str) -> None:
        call = self._calls.get(call_id)
        entry = call.legs.get(leg) if call is not None else None
        if entry is None or entry.webrtc is None:
            return
        entry.connecting = None
        if entry.webrtc.connected or entry.webrtc.failed is not None:
            return
        seconds = self.connect_timeout_seconds
        if entry.webrtc.remote is None:
            reason = f"no ICE connectivity check from the app within {seconds:g} s"
        else:
            reason = f"the DTLS handshake did not finish within {seconds:g} s"
        entry.webrtc.failed = reason
        entry.endpoint.on_secure = None
        self._secured(call_id, leg, reason)

    def local_sdp(self, call_id: str, leg: str) -> str | None:
        call = self._calls.get(call_id)
        entry = call.legs.get(leg) if call is not None else None
        return entry.local if entry is not None else None

    def offer_again(self, call_id: str, leg: str) -> str | None:
        call = self._calls.get(call_id)
        entry = call.legs.get(leg) if call is not None else None
        if entry is None or entry.webrtc is not None or entry.negotiated is None:
            return None
        # (the leg's SRTP as negotiated: its stream's profile, and whether SDES keys it)
        srtp = "off"
        if entry.sdes is not None and entry.endpoint.srtp is not None:
            srtp = "required" if entry.negotiated.proto == RTP_SAVP else "optional"
        return self.offer(call_id, leg, like=leg, srtp=srtp)

    def bridge(self, call_id: str, a: str, b: str) -> None:
        call = self._call(call_id)
        for name in (a, b):
            if call.legs.get(name) is None or call.legs[name].relay is None:
                raise UnknownMedia(f"leg {name!r} has no negotiated media")
        call.pair = (a, b)
        self._rewire(call)

    def monitor(self, call_id: str, leg: str, mode: str) -> None:
        call = self._call(call_id)
        entry = call.legs.get(leg)
        if entry is None or entry.relay is None:
            raise UnknownMedia(f"leg {leg!r} has no negotiated media")
        if call.pair is None:
            raise MediaError("the call is not bridged")
        try:
            call.monitors[leg] = Monitor(mode)
        except ValueError:
            raise MediaError(f"unknown monitor mode {mode!r}") from None
        self._rewire(call)

    def stop_monitor(self, call_id: str, leg: str) -> None:
        call = self._calls.get(call_id)
        if call is not None and call.monitors.pop(leg, None) is not None:
            self._rewire(call)

    def start_recording(self, call_id: str, path: Path) -> None:
        call = self._call(call_id)
        if call.pair is None:
            raise MediaError("the call is not bridged")
        if call.recording is not None:
            raise MediaError("the call is being recorded already")
        try:
            call.recording = RecordingWriter(path)
        except RecordingError as exc:
            self.totals.recording_failures += 1
            raise MediaError(f"cannot write the recording: {exc.reason}") from None
        self._rewire(call)

    def pause_recording(self, call_id: str, behavior: str) -> None:
        writer = self._recording(call_id)
        try:
            writer.pause(behavior)  # type: ignore[arg-type]
        except ValueError as exc:
            raise MediaError(str(exc)) from None

    def resume_recording(self, call_id: str) -> None:
        self._recording(call_id).resume()

    def stop_recording(self, call_id: str) -> RecordingResult | None:
        call = self._calls.get(call_id)
        if call is None or call.recording is None:
            return None
        writer, call.recording = call.recording, None
        if call.mixing is not None:
            call.mixing.record(None)
        result = self._close_recording(writer)
        self._rewire(call)
        return result

    def play(self, call_id: str, leg: str, pcm: bytes) -> None:
        call = self._call(call_id)
        entry = call.legs.get(leg)
        if entry is None or entry.relay is None:
            raise UnknownMedia(f"leg {leg!r} has no negotiated media")
        call.players[leg] = _Player(pcm)
        self._rewire(call)

    def stop_playing(self, call_id: str, leg: str) -> None:
        call = self._calls.get(call_id)
        if call is not None and call.players.pop(leg, None) is not None:
            self._rewire(call)

    def collect_digits(self, call_id: str, leg: str, collect: bool = True) -> None:
        call = self._call(call_id)
        entry = call.legs.get(leg)
        if entry is None:
            raise UnknownMedia(f"no leg {leg!r}")
        entry.collect = collect
        self._rewire(call)

    def record_message(
        self,
        call_id: str,
        leg: str,
        path: Path,
        *,
        max_seconds: float,
        silence_seconds: float,
        stop_digits: str = "#",
    ) -> None:
        call = self._call(call_id)
        entry = call.legs.get(leg)
        if entry is None or entry.relay is None:
            raise UnknownMedia(f"leg {leg!r} has no negotiated media")
        try:
            writer = VoicemailWriter(path, max_seconds=max_seconds)
        except RecordingError as exc:
            raise MediaError(f"cannot write the message: {exc.reason}") from None
        silence = SilenceDetector(hold_seconds=silence_seconds, require_speech=True)
        call.messages[leg] = _Message(writer, silence, stop_digits)
        self._rewire(call)

    def send_dtmf(self, call_id: str, leg: str, digits: str) -> None:
        call = self._call(call_id)
        entry = call.legs.get(leg)
        if entry is None or entry.relay is None or entry.negotiated is None:
            raise UnknownMedia(f"leg {leg!r} has no negotiated media")
        pt = entry.negotiated.telephone_event
        if pt is None:
            raise MediaError("the peer did not negotiate telephone-event")
        start = self._clock()
        for index, digit in enumerate(digits):
            try:
                packets = self._dtmf_sender.packets(digit, 0)
            except DtmfError as exc:
                raise MediaError(str(exc)) from None
            for packet in packets:
                at = start + index * 0.25 + packet.at
                self._loop.call_at(
                    at, self._send_event, call_id, leg, pt, packet.payload, digit, packet.marker
                )

    def release(self, call_id: str, leg: str | None = None) -> None:
        call = self._calls.get(call_id)
        if call is None:
            return
        if leg is not None:
            entry = call.legs.get(leg)
            if entry is None:
                return
            call.monitors.pop(leg, None)
            call.players.pop(leg, None)
            self._end_message(call, leg, "hangup")
            if call.pair is not None and leg in call.pair:
                call.pair = None
            del call.legs[leg]
            self._rewire(call)
            self._free(entry)
            return
        del self._calls[call_id]
        for name in list(call.messages):
            self._end_message(call, name, "hangup")
        if call.recording is not None:
            writer, call.recording = call.recording, None
            self._close_recording(writer)
        if call.mixing is not None:
            call.mixing.stop()
        for entry in call.legs.values():
            self._free(entry)
        call.legs.clear()
        self._schedule_housekeeping()

    # -- figures ------------------------------------------------------------------------------
    @property
    def anchored_calls(self) -> int:
        return len(self._calls)

    @property
    def legs(self) -> int:
        return sum(len(call.legs) for call in self._calls.values())

    def live_figures(self) -> EngineTotals:
        """Totals so far: released legs plus the live ones."""
        t = self.totals
        out = EngineTotals(**{name: getattr(t, name) for name in t.__slots__})
        for call in self._calls.values():
            for entry in call.legs.values():
                _add_leg(out, entry)
        return out

    def jitter_seconds(self) -> list[float]:
        return [
            entry.relay.reception.jitter
            for call in self._calls.values()
            for entry in call.legs.values()
            if entry.relay is not None and entry.relay.reception.received
        ]

    def stop(self) -> None:
        for call_id in list(self._calls):
            self.release(call_id)
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            self._housekeeping = None

    # -- internals ----------------------------------------------------------------------------
    def _call(self, call_id: str) -> _Call:
        call = self._calls.get(call_id)
        if call is None:
            raise UnknownMedia(f"no media session for call {call_id}")
        return call

    def _recording(self, call_id: str) -> RecordingWriter:
        call = self._call(call_id)
        if call.recording is None:
            raise MediaError("the call is not being recorded")
        return call.recording

    def _leg(self, call_id: str, leg: str, *, create: bool = False) -> _Leg:
        call = self._calls.get(call_id)
        if call is None:
            if not create:
                raise UnknownMedia(f"no media session for call {call_id}")
            call = self._calls[call_id] = _Call(call_id)
            self._schedule_housekeeping()
        entry = call.legs.get(leg)
        if entry is not None:
            return entry
        if not create:
            raise UnknownMedia(f"no leg {leg!r} in call {call_id}")
        try:
            rtp = self.pool.acquire()
        except PortsExhausted:
            self.totals.ports_exhausted += 1
            log.warning("media_ports_exhausted", call_id=call_id, leg=leg, ports=self.pool.size)
            if not call.legs:
                del self._calls[call_id]
            raise MediaUnavailable("no free media port") from None
        endpoint = MediaEndpoint(
            rtp, Latch(None, behind_nat=True), _drop, clock=self._clock, buffer=self._buffer
        )
        endpoint.start(self._loop)
        # SSRC, first sequence number and timestamp, SDP session id: from one draw (the system
        # generator reads the kernel's once per draw, and a call makes two legs)
        bits = self._rng.getrandbits(111)
        entry = _Leg(
            name=leg,
            rtp=rtp,
            endpoint=endpoint,
            stream=StreamRewriter(
                bits & 0xFFFFFFFF,
                initial_sequence=(bits >> 32) & 0xFFFF,
                initial_timestamp=(bits >> 48) & 0xFFFFFFFF,
            ),
            session_id=(bits >> 80) or 1,
        )
        call.legs[leg] = entry
        return entry

    def _sending_key(self, entry: _Leg, suite: str) -> bytes:
        """Our key for the leg's `a=crypto`: the one we send with while that session goes on
        (a re-INVITE, a re-offer: same suite), else a fresh one."""
        state = entry.sdes
        if state is not None and entry.endpoint.srtp is not None and state.local.suite == suite:
            return state.local.key
        return new_key()

    def _use_sdes(self, entry: _Leg, ours: Crypto, theirs: Crypto) -> None:
        """SRTP on the leg: sending with our key, receiving with the peer's. Sessions that
        have these keys already go on (a re-INVITE that changes nothing); a new peer key
        re-keys the receiving side alone; a new key of ours (or suite) is a new pair. A sending
        session is only ever made with a fresh key, so no key stream is used twice."""
        state, sessions = entry.sdes, entry.endpoint.srtp
        if (
            sessions is None
            or state is None
            or state.local.key != ours.key
            or sessions.profile != ours.profile
        ):
            entry.endpoint.use_srtp(SrtpSessions(ours.key, theirs.key, ours.profile))
        elif state.remote.key != theirs.key:
            sessions.set_receive(theirs.key)
        entry.sdes = _Sdes(ours, theirs)

    def _plain(self, entry: _Leg) -> None:
        """Plain RTP on the leg (again)."""
        entry.sdes = None
        entry.endpoint.use_srtp(None)

    def _set_remote(self, entry: _Leg, chosen: Negotiated, source: str | None) -> None:
        try:
            address = resolve(chosen.address, chosen.port)
        except (OSError, ValueError):
            raise NoCommonCodec(
                f"the media address {chosen.address[:64]!r} is not an IP address"
            ) from None
        # The peer's SDP names the address its packets come from unless it is behind NAT: when
        # it names another one than the signalling source, latch on its first packet instead.
        behind_nat = source is not None and address[0] != source
        entry.endpoint.signal(address, behind_nat=behind_nat)
        self._negotiated(entry, chosen)

    def _negotiated(self, entry: _Leg, chosen: Negotiated) -> None:
        entry.negotiated = chosen
        if entry.relay is None:
            entry.relay = RelayLeg(
                entry.endpoint, entry.stream, chosen.payload_type, chosen.telephone_event
            )
        else:
            entry.relay.payload_type = chosen.payload_type
            entry.relay.telephone_event = chosen.telephone_event
        entry.relay.sending = chosen.sends  # (not to a peer that holds the call)

    def _rewire(self, call: _Call) -> None:
        """Put each leg of the call on the relay, the mix, or nothing (see the module doc)."""
        if (
            call.pair is None
            and call.relay is None
            and call.mixing is None
            and call.recording is None
            and not (call.monitors or call.players or call.messages)
            and not any(entry.collect for entry in call.legs.values())
        ):
            # Nothing wired before (a leg starts dropping what it reads, and the last rewire
            # that unwired anything left every leg so) and nothing to wire now: a call's
            # first offers and answers, before it is bridged, stop here.
            return
        ready = {name: e for name, e in call.legs.items() if e.relay is not None}
        pair = call.pair if call.pair and all(p in ready for p in call.pair) else None
        monitors = {s: m for s, m in call.monitors.items() if s in ready} if pair else {}
        recording = call.recording if pair else None
        special = (
            set(monitors)
            | {n for n in call.players if n in ready}
            | {n for n in call.messages if n in ready}
            | {n for n, e in ready.items() if e.collect}
        )
        now = self._clock()
        if pair is not None and not special and recording is None:
            self._stop_mixing(call)
            a, b = ready[pair[0]], ready[pair[1]]
            if call.relay is None or call.relay.a is not a.relay or call.relay.b is not b.relay:
                assert a.relay is not None and b.relay is not None
                call.relay = BlindRelay(a.relay, b.relay, clock=self._clock)
            call.relay.attach()
            active = set(pair)
        elif special or recording is not None:
            call.relay = None
            members = special | set(pair or ())
            plan = self._plan(call, pair, monitors, recording is not None)
            mixing = call.mixing
            if mixing is None:
                legs = {n: ready[n].relay for n in members}
                mixing = call.mixing = MixingSession(
                    legs,  # type: ignore[arg-type]
                    plan,
                    clock=self._clock,
                    loop=self._loop,
                )
                mixing.on_input = lambda party, frame, c=call: self._heard(c, party, frame)
                mixing.on_event = lambda party, header, packet, c=call: self._event(
                    c, party, header, packet
                )
                mixing.start()
            else:
                for gone in set(mixing.parties) - members:
                    mixing.remove_leg(gone)
                for name in members - set(mixing.parties):
                    mixing.add_leg(name, ready[name].relay)  # type: ignore[arg-type]
                mixing.set_plan(plan)
            mixing.sources = {
                f"prompt:{name}": player.frame
                for name, player in call.players.items()
                if name in members
            }
            mixing.record(recording)
            active = members
        else:
            self._stop_mixing(call)
            call.relay = None
            active = set()
        for name, entry in call.legs.items():
            if name not in active:
                entry.endpoint.on_packet = _drop
                entry.active_since = None
            elif entry.active_since is None:
                entry.active_since = now

    def _plan(
        self,
        call: _Call,
        pair: tuple[str, str] | None,
        monitors: dict[str, Monitor],
        record: bool,
    ) -> MixPlan:
        try:
            plan = (
                plan_for(pair[0], pair[1], monitors, record=record)
                if pair is not None
                else MixPlan({})
            )
        except PlanError as exc:
            raise MediaError(str(exc)) from None
        for name in call.players:
            if name in call.legs:
                plan = plan.adding(f"prompt:{name}", [name])
        return plan

    def _stop_mixing(self, call: _Call) -> None:
        if call.mixing is not None:
            call.mixing.stop()
            call.mixing = None

    def _heard(self, call: _Call, party: str, frame: bytes | None) -> None:
        """A tick of the mix: a leg's decoded input (voicemail), and the prompts' progress."""
        message = call.messages.get(party)
        if message is not None:
            writer = message.writer
            try:
                room = writer.write(frame)
            except RecordingError as exc:
                log.warning("media_message_failed", reason=exc.reason)
                self._end_message(call, party, "hangup")
                return
            if not room:
                self._end_message(call, party, "max_length")
            elif message.silence.feed(frame or g711.LINEAR_SILENCE):
                self._end_message(call, party, "silence")
        player = call.players.get(party)
        if player is not None and player.done:
            del call.players[party]
            self._loop.call_soon(self._rewire_if_live, call)
            self._emit(PlaybackDone(call.call_id, party))

    def _rewire_if_live(self, call: _Call) -> None:
        if self._calls.get(call.call_id) is call:
            self._rewire(call)

    def _event(self, call: _Call, party: str, header: RtpHeader, packet: memoryview) -> None:
        entry = call.legs.get(party)
        if entry is None:
            return
        try:
            event = parse_event(header.payload(packet))
        except DtmfError:
            return
        digits = entry.dtmf.feed(header.timestamp, event)
        for digit in digits:
            message = call.messages.get(party)
            if message is not None and digit in message.stop_digits:
                self._end_message(call, party, "pound")
                continue
            if entry.collect:
                self._emit(DtmfReceived(call.call_id, party, digit))

    def _end_message(self, call: _Call, leg: str, why: MessageEnd) -> None:
        message = call.messages.pop(leg, None)
        if message is None:
            return
        writer = message.writer
        try:
            writer.close()
        except RecordingError as exc:
            log.warning("media_message_failed", reason=exc.reason)
        self.totals.voicemails += 1
        self._loop.call_soon(self._rewire_if_live, call)
        self._emit(MessageRecorded(call.call_id, leg, writer.path, writer.duration, why))

    def _close_recording(self, writer: RecordingWriter) -> RecordingResult:
        try:
            writer.close()
        except RecordingError as exc:
            self.totals.recording_failures += 1
            log.warning("media_recording_failed", path=str(exc.path), reason=exc.reason)
        self.totals.recordings += 1
        try:
            size = writer.path.stat().st_size
        except OSError:
            size = 0
        return RecordingResult(writer.path, writer.duration, size)

    def _send_event(
        self, call_id: str, leg: str, pt: int, payload: bytes, digit: str, marker: bool
    ) -> None:
        call = self._calls.get(call_id)
        entry = call.legs.get(leg) if call is not None else None
        if entry is None:
            return
        packet = entry.stream.stamp(pt, payload, 0, self._clock(), ("dtmf", digit), marker=marker)
        entry.endpoint.send(packet)

    def _free(self, entry: _Leg) -> None:
        if entry.connecting is not None:
            entry.connecting.cancel()
            entry.connecting = None
        entry.endpoint.on_secure = None
        entry.endpoint.stop()
        _add_leg(self.totals, entry)
        self.pool.release(entry.rtp)

    def _emit(self, event: MediaEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the media
                log.exception("media_listener_failed", event_type=type(event).__name__)

    # -- housekeeping: RTP timeouts, recording failures ---------------------------------------
    def _schedule_housekeeping(self) -> None:
        if self._housekeeping is None and self._calls:
            self._housekeeping = self._loop.call_later(_HOUSEKEEPING_SECONDS, self._housekeep)

    def _housekeep(self) -> None:
        self._housekeeping = None
        now = self._clock()
        for call in list(self._calls.values()):
            mixing = call.mixing
            if call.recording is not None and mixing is not None and mixing.recording is None:
                # the session dropped a writer that failed: say so once, close it
                writer, call.recording = call.recording, None
                self.totals.recording_failures += 1
                self._close_recording(writer)
                leg = call.pair[0] if call.pair else "caller"
                self._emit(RecordingFailed(call.call_id, leg, "the recording could not be written"))
            if self.timeout_seconds <= 0 or call.timed_out:
                continue
            for name, entry in call.legs.items():
                if entry.active_since is None or entry.negotiated is None:
                    continue
                if not (entry.negotiated.receives and entry.negotiated.sends):
                    # on hold: inactive sends nothing by its own SDP, and a phone that holds
                    # with sendonly may send nothing either (its music is often its own):
                    # timed, a hold of a minute hung the call up
                    continue
                last = entry.endpoint.stats.last_received
                since = max(last or 0.0, entry.active_since)
                if now - since >= self.timeout_seconds:
                    call.timed_out = True
                    self.totals.timeouts += 1
                    log.info("media_timeout", call_id=call.call_id, leg=name)
                    self._emit(MediaTimeout(call.call_id, name, round(now - since, 1)))
                    break
        self._schedule_housekeeping()


def _parse(sdp: str) -> SessionDescription:
    try:
        return parse_sdp(sdp)
    except SdpError as exc:
        raise NoCommonCodec(f"the SDP does not parse: {exc}") from None


def _add_leg(totals: EngineTotals, entry: _Leg) -> None:
    stats = entry.endpoint.stats
    totals.received += stats.received
    totals.received_bytes += stats.received_bytes
    totals.sent += stats.sent
    totals.sent_bytes += stats.sent_bytes
    totals.foreign += stats.foreign + stats.oversized
    totals.srtp_dropped += stats.srtp_dropped
    if entry.relay is not None:
        totals.lost += entry.relay.reception.lost
