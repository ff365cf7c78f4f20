"""rtpengine as the SIP path's media engine: the `MediaPort` operations over the ng protocol.

`MediaPort` (`bridge.calls.ports`) is synchronous because the embedded engine answers at once;
rtpengine is asked over the network (`bridge.media.ng`), so the operations that ask it are
coroutines here. What maps to what (docs/media.md, "rtpengine"):

- **One ng call per call** (`call-id` = `call_prefix` + the call's id), **one participant
  per media leg**, tagged with the leg's name (`"caller"`, a call-core leg id,
  `"supervisor:<user>"`). The caller is the offerer of rtpengine's model: its SDP is kept
  (`caller_offer`, no round trip; a caller without a usable codec gets `NoCommonCodec` at once,
  for the 488 before routing); each leg rung is an `offer` of that SDP with `via-branch` = the
  leg's name (`offer`), which rtpengine answers with the SDP for that leg on ports of its own
  (a branch); a leg's answer is an `answer` with `to-tag` = the leg's name and the same
  `via-branch` (`accept`), which returns the SDP for the caller (its 200) and joins the two.
  rtpengine bridges at the answer, so there is no `bridge`. The legs that lost are
  `release`d (`delete` of their branch); `release(call)` deletes the whole call.
- **The transport per side.** A plain leg gets RTP/AVP (ICE removed, RTCP demultiplexed); a
  WebRTC leg (`webrtc=True`: a browser, `sim/apps`) UDP/TLS/RTP/SAVPF with `ICE: force`,
  `DTLS: passive`, `rtcp-mux: [offer, require]`, no SDES. Every offer strips all codecs but
  PCMU, PCMA and telephone-event (`codec: {strip: [all], except: [...]}`, the offerer's order
  kept), so both sides speak G.711 and rtpengine relays without transcoding.
- **Prompts** (`play`): `play media` of a file rtpengine can read, to the leg; the leg's peer is
  blocked meanwhile (rtpengine would send both streams to the leg at once) and `PlaybackDone`
  follows the file's `duration`. **DTMF**: `play DTMF` (the ng participant is the one
  *generating* the digit, so the leg's peer is named); needs `inject_dtmf` (the `inject DTMF`
  flag on every offer and answer: rtpengine then decodes and re-encodes all audio). Digits
  *received* come as `DtmfReceived` when rtpengine is started with
  `--dtmf-log-dest=<dtmf_listen>` (one JSON datagram per key press).
- **Recording**: `start recording` / `stop recording`; rtpengine 10.5 writes one pcap per call
  (`--recording-method=pcap`, under `--recording-dir`/pcaps): the RTP as received, both
  directions, not a WAV; no pause.
- **block media / unblock media**: the packets a leg sends (or the whole call's) are dropped.
- rtpengine 10.5 has no mixer: listen, whisper and barge cannot be done with it alone;
  `capabilities()` says so, with the reason, and `monitor` raises `MediaError` with it.

Errors: rtpengine's `result: error` is `MediaError` with its `error-reason` (`MediaUnavailable`
when it ran out of ports); no reply is `MediaUnavailable`; an SDP without PCMU/PCMA is
`NoCommonCodec`; an unknown call or leg `UnknownMedia`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from bridge.calls.media import (
    SRTP_POLICIES,
    DtmfReceived,
    MediaCapabilities,
    MediaError,
    MediaEvent,
    MediaUnavailable,
    NoCommonCodec,
    PlaybackDone,
    RecordingResult,
    UnknownMedia,
)
from bridge.media.ng import NgClient, NgClosed, NgError, NgErrorReply, NgTimeout
from bridge.media.sdp import RTP_AVP, SAVPF, SdpError, negotiate, parse_sdp

__all__ = ["RTPENGINE", "RtpengineCapabilities", "RtpengineMedia"]

log = structlog.get_logger("bridge.media.rtpengine")

CALLER = "caller"
CODECS = ("PCMU", "PCMA", "telephone-event")
_DIGITS = "0123456789*#ABCD"  # RFC 4733 events 0-15


@dataclass(frozen=True, slots=True)
class RtpengineCapabilities(MediaCapabilities):
    """`MediaCapabilities` whose refusals say why (rtpengine's own reasons)."""

    reasons: tuple[tuple[str, str], ...] = ()

    def missing(self, what: str) -> str | None:
        if getattr(self, what, False):
            return None
        return dict(self.reasons).get(what) or MediaCapabilities.missing(self, what)


RTPENGINE = RtpengineCapabilities(
    "rtpengine",
    monitor=False,
    recording=False,
    prompts=True,
    messages=False,
    dtmf=True,
    transcoding=False,
    webrtc=True,
    reasons=(
        (
            "monitor",
            "the media engine 'rtpengine' (10.5) has no mixer: listen, whisper and barge "
            "need one (the embedded engine has it)",
        ),
        (
            "recording",
            "the media engine 'rtpengine' (10.5) records a call only as a pcap of its "
            "packets, without pause: no dual-channel recording",
        ),
        (
            "messages",
            "the media engine 'rtpengine' (10.5) cannot record one leg to a message "
            "(voicemail needs the embedded engine)",
        ),
        (
            "transcoding",
            "the bridge asks rtpengine for G.711 on both sides, relayed as it is: no "
            "PCMU <-> PCMA transcoding",
        ),
    ),
)


@dataclass(eq=False)
class _Leg:
    name: str
    webrtc: bool = False
    local: str | None = None  # the SDP rtpengine made for this leg (our last one to it)
    remote: str | None = None  # the leg's own last SDP (its answer, or a later offer)
    answered: bool = False
    playing: asyncio.TimerHandle | None = None
    blocked_for_prompt: str | None = None  # the peer blocked while a prompt plays to this leg


@dataclass(eq=False)
class _Call:
    call_id: str
    ng_id: str
    caller_sdp: str | None = None
    caller_source: str | None = None
    legs: dict[str, _Leg] = field(default_factory=dict)
    peer: str | None = None  # the leg that answered (the caller's other side)
    recording: Path | None = None  # the pcap being written (None: not recording)
    recording_started: float = 0.0


class _DtmfLog(asyncio.DatagramProtocol):
    def __init__(self, media: RtpengineMedia) -> None:
        self.media = media

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.media._dtmf_logged(data)


class RtpengineMedia:
    """The media operations on one rtpengine (see the module doc).

    `client`: an `NgClient` toward the daemon's `--listen-ng`. `recording_dir`: the daemon's
    `--recording-dir` as this process sees it (same host), or None: no recording.
    `dtmf_listen`: where to listen for the daemon's `--dtmf-log-dest` datagrams, or None.
    `inject_dtmf`: every call can send digits (`send_dtmf`), at the price of rtpengine
    decoding and re-encoding its audio."""

    def __init__(
        self,
        client: NgClient,
        *,
        call_prefix: str = "",
        recording_dir: Path | None = None,
        dtmf_listen: tuple[str, int] | None = None,
        inject_dtmf: bool = False,
        advertised_address: str | None = None,
    ) -> None:
        self.client = client
        self.call_prefix = call_prefix
        self.recording_dir = recording_dir
        self.dtmf_listen = dtmf_listen
        self.inject_dtmf = inject_dtmf
        self.advertised_address = advertised_address
        self._calls: dict[str, _Call] = {}
        self._by_ng_id: dict[str, _Call] = {}
        self._listeners: list[Callable[[MediaEvent], None]] = []
        self._dtmf_transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # False once rtpengine stopped answering (a request timed out), True again on the
        # next reply: `/readyz` says so.
        self.answering = True

    # -- life ----------------------------------------------------------------------------------
    async def start(self) -> RtpengineMedia:
        """Open the ng socket (and the DTMF log socket); checks that rtpengine answers."""
        await self.client.start()
        if self.dtmf_listen is not None and self._dtmf_transport is None:
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _DtmfLog(self), local_addr=self.dtmf_listen
            )
            self._dtmf_transport = transport
        await self._ask({"command": "ping"})
        return self

    async def ping(self) -> None:
        """`MediaUnavailable` when rtpengine does not answer (`answering` says it too)."""
        await self._ask({"command": "ping"})

    async def close(self) -> None:
        """Delete every call still anchored, close the sockets."""
        for call_id in list(self._calls):
            with contextlib.suppress(MediaError):
                await self.release(call_id)
        if self._dtmf_transport is not None:
            self._dtmf_transport.close()
            self._dtmf_transport = None
        self.client.close()

    # -- the port's questions -------------------------------------------------------------------
    def capabilities(self) -> MediaCapabilities:
        return RTPENGINE

    def subscribe(self, listener: Callable[[MediaEvent], None]) -> None:
        self._listeners.append(listener)

    def local_sdp(self, call_id: str, leg: str) -> str | None:
        call = self._calls.get(call_id)
        entry = call.legs.get(leg) if call is not None else None
        return entry.local if entry is not None else None

    def offer_again(self, call_id: str, leg: str) -> str | None:
        """(`MediaPort.offer_again`) The leg's last SDP made a new offer: sendrecv in each
        media section, the origin's version one more; rtpengine's ports stay. The answer in
        the ACK is not sent to rtpengine: the peer's address it already has (or latches)."""
        call = self._calls.get(call_id)
        entry = call.legs.get(leg) if call is not None else None
        if entry is None or not entry.local:
            return None
        entry.local = _next_version(_answering("a=sendrecv", entry.local))
        return entry.local

    def legs(self, call_id: str) -> list[str]:
        call = self._calls.get(call_id)
        return list(call.legs) if call is not None else []

    def peer(self, call_id: str) -> str | None:
        """The leg that answered the caller (joined to it by rtpengine), or None."""
        call = self._calls.get(call_id)
        return call.peer if call is not None else None

    # -- offer / answer -------------------------------------------------------------------------
    @staticmethod
    def check(sdp: str, *, webrtc: bool = False, what: str = "the answer") -> None:
        """`NoCommonCodec` when `sdp` has no PCMU/PCMA stream in the transport expected (a
        WebRTC app's: `UDP/TLS/RTP/SAVPF`), without asking rtpengine: an answer checked before
        its leg wins, joined (`accept`) once it does."""
        _check_codecs(sdp, webrtc, what)

    def caller_offer(
        self,
        call_id: str,
        sdp: str,
        *,
        source: str | None = None,
        webrtc: bool = False,
        srtp: str = "off",
    ) -> None:
        """The caller's SDP offer (its INVITE): kept for the legs' offers. `NoCommonCodec` when
        it has no PCMU/PCMA stream (SIP answers 488 before routing). No round trip: the
        caller's answer comes from `accept`, when a leg answers. `srtp`: see `_no_sdes`."""
        _no_sdes(srtp)
        _check_codecs(sdp, webrtc, "the offer")
        call = self._calls.get(call_id)
        if call is None:
            call = _Call(call_id, self.call_prefix + call_id)
            self._calls[call_id] = call
            self._by_ng_id[call.ng_id] = call
        call.caller_sdp = sdp
        call.caller_source = source
        caller = call.legs.setdefault(CALLER, _Leg(CALLER))
        caller.webrtc = webrtc

    async def offer(
        self, call_id: str, leg: str, *, webrtc: bool = False, srtp: str = "off"
    ) -> str:
        """rtpengine's offer toward a leg rung (its INVITE): the caller's SDP rewritten onto
        rtpengine's ports of this leg's branch, in the leg's transport. `srtp`: `_no_sdes`."""
        _no_sdes(srtp)
        call = self._call(call_id)
        if call.caller_sdp is None:
            raise MediaError("no offer from the caller yet")
        if leg == CALLER:
            raise MediaError("the caller is the offerer")
        caller = call.legs[CALLER]
        message = {
            "command": "offer",
            "call-id": call.ng_id,
            "from-tag": CALLER,
            "via-branch": leg,
            "sdp": call.caller_sdp,
            "codec": {"strip": ["all"], "except": list(CODECS)},
            **self._toward(webrtc, offerer_webrtc=caller.webrtc),
        }
        if call.caller_source is not None:
            message["received-from"] = ["IP4", call.caller_source]
        reply = await self._ask(message)
        if self._calls.get(call_id) is not call:
            # released while rtpengine was asked: its offer made the call again there
            await self._delete({"command": "delete", "call-id": call.ng_id})
            raise UnknownMedia(f"call {call_id} was released")
        entry = call.legs.setdefault(leg, _Leg(leg))
        entry.webrtc = webrtc
        entry.local = _sdp_of(reply)
        return entry.local

    async def accept(
        self, call_id: str, leg: str, answer: str, *, source: str | None = None
    ) -> str:
        """The leg's answer to rtpengine's offer (its 2xx, or the app's accept): rtpengine joins
        the leg to the caller. Returns the SDP for the caller (its 200)."""
        call = self._call(call_id)
        entry = self._leg(call, leg)
        if leg == CALLER or entry.local is None:
            raise MediaError(f"leg {leg!r} has no offer to answer")
        _check_codecs(answer, entry.webrtc, "the answer")
        caller = call.legs[CALLER]
        message: dict[str, Any] = {
            "command": "answer",
            "call-id": call.ng_id,
            "from-tag": CALLER,
            "to-tag": leg,
            "via-branch": leg,
            "sdp": answer,
            **self._toward(caller.webrtc, offerer_webrtc=entry.webrtc),
        }
        if source is not None:
            message["received-from"] = ["IP4", source]
        reply = await self._ask(message)
        caller.local = _sdp_of(reply)
        entry.answered = True
        entry.remote = answer
        call.peer = leg
        return caller.local

    async def renegotiate(
        self, call_id: str, leg: str, sdp: str, *, source: str | None = None, srtp: str = "off"
    ) -> str:
        """A new offer from a joined leg (the caller or its peer: a re-INVITE or UPDATE with
        SDP for hold, a new address, a session refresh). rtpengine takes it as an offer from
        that side, and the other side's last SDP answers it, so the other side is not asked
        again (each side of a B2BUA negotiates on its own). Returns the SDP for `leg` (the
        body of our 2xx). `srtp`: `_no_sdes`."""
        _no_sdes(srtp)
        call = self._call(call_id)
        other = self._other(call, leg)
        if other is None:
            raise MediaError(f"leg {leg!r} is not joined to another leg")
        entry, peer = self._leg(call, leg), self._leg(call, other)
        peer_sdp = call.caller_sdp if other == CALLER else peer.remote
        if peer_sdp is None:
            raise MediaError(f"no SDP of leg {other!r} to answer with")
        _check_codecs(sdp, entry.webrtc, "the offer")
        peer_sdp = _answering(sdp, peer_sdp)
        # the branch (`via-branch`) is the leg's that is not the caller: the caller's ports
        # toward each leg rung are that branch's own
        branch = other if leg == CALLER else leg
        tags = {"call-id": call.ng_id, "from-tag": leg, "to-tag": other, "via-branch": branch}
        offer: dict[str, Any] = {"command": "offer", "sdp": sdp, **tags}
        offer |= self._toward(peer.webrtc, offerer_webrtc=entry.webrtc)
        if source is not None:
            offer["received-from"] = ["IP4", source]
        await self._ask(offer)
        answer: dict[str, Any] = {"command": "answer", "sdp": peer_sdp, **tags}
        answer |= self._toward(entry.webrtc, offerer_webrtc=peer.webrtc)
        reply = await self._ask(answer)
        if leg == CALLER:
            call.caller_sdp = sdp
        else:
            entry.remote = sdp
        entry.local = _sdp_of(reply)
        return entry.local

    def _toward(self, webrtc: bool, *, offerer_webrtc: bool) -> dict[str, Any]:
        """The ng keys for an SDP going toward a side of this kind."""
        flags = ["inject DTMF"] if self.inject_dtmf else []
        out: dict[str, Any] = {
            "replace": ["origin", "session-connection", "SDP-version"],
            "SDES": ["off"],
        }
        if flags:
            out["flags"] = flags
        if self.advertised_address:
            out["media-address"] = self.advertised_address
        if webrtc:
            out |= {
                "transport-protocol": SAVPF,
                "ICE": "force",
                "DTLS": "passive",
                "rtcp-mux": ["offer", "require"],
            }
        else:
            out |= {"transport-protocol": RTP_AVP, "ICE": "remove"}
            if offerer_webrtc:
                out["rtcp-mux"] = ["demux"]
        return out

    # -- what rtpengine cannot do ---------------------------------------------------------------
    def monitor(self, call_id: str, leg: str, mode: str) -> None:
        raise MediaError(RTPENGINE.missing("monitor") or "")

    def stop_monitor(self, call_id: str, leg: str) -> None:
        """Nothing to stop: no supervisor can be joined (see `monitor`)."""

    def pause_recording(self, call_id: str, behavior: str) -> None:
        raise MediaError("rtpengine 10.5 cannot pause a recording")

    def resume_recording(self, call_id: str) -> None:
        raise MediaError("rtpengine 10.5 cannot pause a recording")

    # -- recording ------------------------------------------------------------------------------
    async def start_recording(self, call_id: str) -> Path:
        """Record the call (rtpengine's pcap of it); returns the pcap's path."""
        call = self._call(call_id)
        if self.recording_dir is None:
            raise MediaError("rtpengine records nothing without --recording-dir")
        if call.recording is not None:
            raise MediaError("the call is being recorded already")
        pcaps = self.recording_dir / "pcaps"
        before = set(pcaps.glob("*.pcap")) if pcaps.is_dir() else set()
        await self._ask({"command": "start recording", "call-id": call.ng_id})
        new = sorted(set(pcaps.glob("*.pcap")) - before) if pcaps.is_dir() else []
        if not new:
            raise MediaError(f"rtpengine wrote no pcap under {pcaps} (its --recording-method?)")
        call.recording = new[0]
        call.recording_started = asyncio.get_running_loop().time()
        return call.recording

    async def stop_recording(self, call_id: str) -> RecordingResult | None:
        call = self._calls.get(call_id)
        if call is None or call.recording is None:
            return None
        path, call.recording = call.recording, None
        await self._ask({"command": "stop recording", "call-id": call.ng_id})
        duration = asyncio.get_running_loop().time() - call.recording_started
        size = path.stat().st_size if path.exists() else 0
        return RecordingResult(path=path, duration_seconds=duration, size_bytes=size)

    # -- prompts, DTMF, blocking ----------------------------------------------------------------
    async def play(self, call_id: str, leg: str, path: Path, *, alone: bool = True) -> float:
        """Play a file (any format rtpengine's ffmpeg reads; its path as rtpengine sees it) to
        the leg; `PlaybackDone` at its end. `alone`: the leg's peer is blocked meanwhile.
        Returns the duration in seconds (0 when rtpengine did not say)."""
        call = self._call(call_id)
        entry = self._leg(call, leg)
        other = self._other(call, leg)
        if alone and other is not None:
            await self._ask(self._select("block media", call, other))
        try:
            reply = await self._ask(self._select("play media", call, leg) | {"file": str(path)})
        except MediaError:
            if alone and other is not None:
                with contextlib.suppress(MediaError):
                    await self._ask(self._select("unblock media", call, other))
            raise
        seconds = int(reply.get("duration", 0) or 0) / 1000
        if entry.playing is not None:
            entry.playing.cancel()
        entry.blocked_for_prompt = other if alone else None
        loop = asyncio.get_running_loop()
        # (the coroutine made when the timer fires: a stopped prompt leaves none unawaited)
        entry.playing = loop.call_later(seconds, lambda: self._spawn(self._played(call, entry)))
        return seconds

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _played(self, call: _Call, entry: _Leg) -> None:
        entry.playing = None
        blocked, entry.blocked_for_prompt = entry.blocked_for_prompt, None
        if blocked is not None and self._calls.get(call.call_id) is call:
            with contextlib.suppress(MediaError):
                await self._ask(self._select("unblock media", call, blocked))
        self._emit(PlaybackDone(call.call_id, entry.name))

    async def stop_playing(self, call_id: str, leg: str) -> None:
        call = self._calls.get(call_id)
        entry = call.legs.get(leg) if call is not None else None
        if call is None or entry is None or entry.playing is None:
            return
        entry.playing.cancel()
        entry.playing = None
        with contextlib.suppress(MediaError):
            await self._ask(self._select("stop media", call, leg))
        blocked, entry.blocked_for_prompt = entry.blocked_for_prompt, None
        if blocked is not None:
            with contextlib.suppress(MediaError):
                await self._ask(self._select("unblock media", call, blocked))

    async def send_dtmf(self, call_id: str, leg: str, digits: str) -> None:
        """Send RFC 4733 digits to the leg (or tones, if it has no telephone-event)."""
        if not self.inject_dtmf:
            raise MediaError("DTMF injection is off (RtpengineMedia(inject_dtmf=True))")
        call = self._call(call_id)
        self._leg(call, leg)
        other = self._other(call, leg)
        if other is None:
            raise MediaError(f"leg {leg!r} is not joined to another leg")
        for digit in digits:
            if digit.upper() not in _DIGITS:
                raise MediaError(f"not a DTMF digit: {digit!r}")
        for digit in digits:
            await self._ask(self._select("play DTMF", call, other) | {"code": digit.upper()})

    async def block(self, call_id: str, leg: str | None = None) -> None:
        """Drop what `leg` sends (None: the whole call's media)."""
        call = self._call(call_id)
        if leg is None:
            await self._ask({"command": "block media", "call-id": call.ng_id})
        else:
            self._leg(call, leg)
            await self._ask(self._select("block media", call, leg))

    async def unblock(self, call_id: str, leg: str | None = None) -> None:
        call = self._call(call_id)
        if leg is None:
            await self._ask({"command": "unblock media", "call-id": call.ng_id, "flags": ["all"]})
        else:
            self._leg(call, leg)
            await self._ask(self._select("unblock media", call, leg))

    async def query(self, call_id: str) -> dict[str, Any]:
        """rtpengine's `query` of the call (per tag: ports, endpoints, packet counts)."""
        return await self._ask({"command": "query", "call-id": self._call(call_id).ng_id})

    # -- the end --------------------------------------------------------------------------------
    async def release(self, call_id: str, leg: str | None = None) -> None:
        """Delete a leg's branch (a leg rung, or the one that answered), or the whole call
        (None, or the caller). Unknown to rtpengine already is not an error."""
        call = self._calls.get(call_id)
        if call is None:
            return
        if leg is not None and leg != CALLER:
            entry = call.legs.pop(leg, None)
            if entry is None:
                return
            if entry.playing is not None:
                entry.playing.cancel()
            if call.peer == leg:
                call.peer = None
            message: dict[str, Any] = {
                "command": "delete",
                "call-id": call.ng_id,
                "from-tag": CALLER,
                "via-branch": leg,
            }
            if entry.answered:
                message["to-tag"] = leg
            if entry.local is not None:  # rtpengine never heard of a leg without an offer
                await self._delete(message)
            return
        del self._calls[call_id]
        self._by_ng_id.pop(call.ng_id, None)
        for entry in call.legs.values():
            if entry.playing is not None:
                entry.playing.cancel()
        if any(entry.local is not None for entry in call.legs.values()):
            await self._delete({"command": "delete", "call-id": call.ng_id})

    async def _delete(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(UnknownMedia):
            await self._ask(message)

    # -- internals ------------------------------------------------------------------------------
    def _call(self, call_id: str) -> _Call:
        call = self._calls.get(call_id)
        if call is None:
            raise UnknownMedia(f"no media session for call {call_id}")
        return call

    def _leg(self, call: _Call, leg: str) -> _Leg:
        entry = call.legs.get(leg)
        if entry is None:
            raise UnknownMedia(f"no leg {leg!r} in call {call.call_id}")
        return entry

    @staticmethod
    def _other(call: _Call, leg: str) -> str | None:
        if call.peer is None:
            return None
        if leg == CALLER:
            return call.peer
        return CALLER if leg == call.peer else None

    @staticmethod
    def _select(command: str, call: _Call, leg: str) -> dict[str, Any]:
        """A command about one participant (rtpengine selects it by its tag)."""
        return {"command": command, "call-id": call.ng_id, "from-tag": leg}

    async def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        command = message["command"]
        try:
            reply = await self.client.send(message)
        except NgErrorReply as exc:
            self.answering = True
            reason = exc.reason
            lowered = reason.lower()
            if "port" in lowered and ("ran out" in lowered or "no free" in lowered):
                raise MediaUnavailable(f"rtpengine: {reason}") from None
            if "not found" in lowered or "unknown call" in lowered:
                raise UnknownMedia(f"rtpengine {command}: {reason}") from None
            raise MediaError(f"rtpengine {command}: {reason}") from None
        except (NgTimeout, NgClosed) as exc:
            self.answering = False
            raise MediaUnavailable(f"rtpengine does not answer: {exc}") from None
        except NgError as exc:
            raise MediaError(str(exc)) from None
        self.answering = True
        return reply

    def _emit(self, event: MediaEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the others
                log.exception("media_listener_failed", event=type(event).__name__)

    def _dtmf_logged(self, data: bytes) -> None:
        """One `--dtmf-log-dest` datagram: `{"callid", "source_tag", "event", ...}`."""
        try:
            info = json.loads(data)
            call = self._by_ng_id.get(str(info["callid"]))
            leg = str(info["source_tag"])
            event = int(info["event"])
        except (ValueError, KeyError, TypeError):
            log.info("rtpengine_dtmf_log_unreadable", size=len(data))
            return
        if call is None or leg not in call.legs or not 0 <= event < len(_DIGITS):
            return
        self._emit(DtmfReceived(call.call_id, leg, _DIGITS[event]))


def _no_sdes(srtp: str) -> None:
    """A SIP leg's SRTP policy (`MediaPort`'s `srtp`): SDES is not done through rtpengine yet
    (every side is plain RTP/AVP, `SDES: off`), so "required" cannot be met; "optional" and
    "off" are plain RTP, as an "optional" offer answered without `a=crypto` would be."""
    if srtp not in SRTP_POLICIES:
        raise ValueError(f"srtp policy {srtp!r} is not one of {', '.join(SRTP_POLICIES)}")
    if srtp == "required":
        raise NoCommonCodec("SRTP (SDES) is not offered through rtpengine yet")


def _check_codecs(sdp: str, webrtc: bool, what: str) -> None:
    try:
        description = parse_sdp(sdp)
    except SdpError as exc:
        raise NoCommonCodec(f"{what} is not readable SDP: {exc}") from None
    protos = (SAVPF, "RTP/SAVPF") if webrtc else (RTP_AVP,)
    if negotiate(description, protos=protos) is None:
        raise NoCommonCodec(f"no PCMU or PCMA audio stream over {'/'.join(protos)} in {what}")


_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


def _answering(offer: str, answer: str) -> str:
    """`answer` (a side's last SDP) with the direction that answers `offer`'s (RFC 3264
    §6.1: a hold's `sendonly` is answered `recvonly`), in each of its media sections."""
    offered = "sendrecv"
    for line in offer.splitlines():
        if line.startswith("a=") and line[2:].strip() in _DIRECTIONS:
            offered = line[2:].strip()  # (the media section's wins over the session's)
    direction = f"a={_ANSWER_DIRECTION[offered]}"
    out: list[str] = []
    in_media = False
    for line in answer.splitlines():
        if line.startswith("a=") and line[2:].strip() in _DIRECTIONS:
            continue
        if line.startswith("m=") and in_media:
            out.append(direction)
        in_media = in_media or line.startswith("m=")
        if line:
            out.append(line)
    if in_media:
        out.append(direction)
    return "\r\n".join(out) + "\r\n"


def _next_version(sdp: str) -> str:
    """`sdp` with its origin's version one more (RFC 3264 §8: a changed description)."""
    lines = sdp.split("\r\n")
    for index, line in enumerate(lines):
        parts = line.split(" ")
        if line.startswith("o=") and len(parts) >= 6 and parts[2].isdigit():
            parts[2] = str(int(parts[2]) + 1)
            lines[index] = " ".join(parts)
            break
    return "\r\n".join(lines)


def _sdp_of(reply: dict[str, Any]) -> str:
    sdp = reply.get("sdp")
    if not isinstance(sdp, str) or not sdp:
        raise MediaError("rtpengine's reply has no SDP")
    return sdp
