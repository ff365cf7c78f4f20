"""What the call layer needs of the adapters, as protocols: `calls/` imports no adapter, the
adapters (sip, carriers, ws, control) implement these and are wired together at start-up.

- `LegDriver`: how one dial path carries out the call core's leg commands (SIP: INVITE,
  CANCEL, BYE, responses to the caller; the carrier: TwiML and REST). The `CallRunner` owns
  everything else of running a call.
- `AppOffers` / `OfferListener`: ringing users who answer with apps over the WebSocket
  gateway (`bridge.ws.offers.OfferService` implements `AppOffers`; the runner is the
  listener of every offer it makes).
- `Supervision`: listen / whisper / barge and recording on a live call, for `control/`
  (the carrier's conference in `carriers/twilio/supervision.py`; `sip/supervision.py` on the
  media engine).
- `MediaPort`: the audio of SIP calls, anchored in a media engine (`bridge.media.engine`
  embedded in the daemon; rtpengine for scale), values and events in `bridge.calls.media`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from bridge.calls.events import (
    BridgeTo,
    CancelLeg,
    DialLeg,
    HangupLeg,
    LegReason,
    RejectCaller,
    RingCaller,
    StartFallback,
)
from bridge.calls.media import MediaCapabilities, MediaEvent, RecordingResult
from bridge.calls.supervision import MonitorView, RecordingView, SupervisableCall

if TYPE_CHECKING:
    from bridge.calls.runner import RunningCall

# -- dial paths ------------------------------------------------------------------------------


class LegDriver(Protocol):
    """One dial path's protocol work for the call core's commands.

    The runner calls one method per command, in the order the core gave them, after its own
    bookkeeping for that command (presence, app offers, metrics, events come from the runner,
    never from a driver). A driver reports what its legs do back through the runner
    (`CallRunner.leg_ringing`, `leg_answered`, `leg_failed`, `hangup`, ...)."""

    path: str  # "sip" | "carrier": the `path` label of metrics and events
    # True when an app's accept over the WebSocket answers the call on this path (SIP); False
    # when apps answer in a voice SDK of their own (the carrier's), so the WebSocket offer only
    # informs and an accept there cannot win.
    app_accept_answers: bool

    def dial(self, call: RunningCall, command: DialLeg) -> None:
        """Ring a desk phone or a number (app legs are offered by the runner; the driver is
        told of them too, for paths that also ring the app elsewhere)."""
        ...

    def cancel_leg(self, call: RunningCall, command: CancelLeg) -> None: ...

    def bridge(self, call: RunningCall, command: BridgeTo) -> None:
        """Connect the caller to this answered leg (answering the caller if needed)."""
        ...

    def hang_up(self, call: RunningCall, command: HangupLeg) -> None: ...

    def reject(self, call: RunningCall, command: RejectCaller) -> None: ...

    def ring_caller(self, call: RunningCall, command: RingCaller) -> None: ...

    def start_fallback(self, call: RunningCall, command: StartFallback) -> None:
        """The call left its ring groups: play the fallback (voicemail, a prompt)."""
        ...

    def app_answer_refused(self, call: RunningCall, user_id: str, sdp: str | None) -> str | None:
        """Why an app's accept (with this SDP answer) cannot answer this call, or None."""
        ...

    def app_media_ready(self, call: RunningCall, user_id: str) -> Awaitable[str | None] | None:
        """After an accepted answer: something to await while the app's audio is being set up
        (a browser's ICE and DTLS), giving None once it is up or the reason it failed; None
        when there is nothing to wait for."""
        ...

    def leg_reference(self, call: RunningCall, leg_id: str) -> str | None:
        """The path's own id of a leg (the carrier's CallSid), for published events."""
        ...

    def ended(self, call: RunningCall) -> None:
        """The call is over and forgotten by the runner: drop the path's state for it."""
        ...


# -- app offers (the WebSocket gateway) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answerer:
    """Who answered a call, for the offers that lost ("answered by Bob on desk phone")."""

    user_id: str | None
    via: str  # a `Channel` value
    device: str | None = None


CallStateName = Literal["answered", "held", "ended"]


class AnswerRefused(Exception):
    """An app's accept carried an answer that cannot be used (no SDP, an SDP the media engine
    cannot take): said to that session as an error, and its offer keeps ringing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OfferListener(Protocol):
    """The call layer's side of an offer. Every method is called on the loop."""

    def on_accept(
        self, call_id: str, user_id: str, session_id: str, sdp: str | None
    ) -> bool | Awaitable[bool | None] | None:
        """This user accepted (first session to do so). True if the accept won the call (the
        caller is bridged to this user), False otherwise. None: an accept here cannot answer
        this call (on the carrier path the app answers in the carrier's voice SDK, where it
        rings too): the offer keeps ringing and the session gets an error."""
        ...

    def on_reject(self, call_id: str, user_id: str, session_id: str) -> None:
        """The user declined the call (its offer is already ended with `rejected`)."""
        ...

    def on_unreachable(self, call_id: str, user_id: str) -> None:
        """Every session of the user is gone and the grace period is over (offer dropped)."""
        ...


class AppOffers(Protocol):
    def offer(
        self,
        call_id: str,
        user_id: str,
        *,
        caller: str | None,
        line: str | None,
        ring_group: str | None,
        expires_at: datetime,
        sdp: str | None = None,
        listener: OfferListener | None = None,
    ) -> str:
        """Ring the user's app sessions; "unreachable" when it has none (nor a grace)."""
        ...

    def end_offer(
        self,
        call_id: str,
        user_id: str | None,
        reason: LegReason,
        *,
        answerer: Answerer | None = None,
    ) -> int: ...

    def push_call_state(
        self,
        call_id: str,
        user_id: str,
        state: CallStateName,
        *,
        reason: LegReason | None = None,
        wrap_up_until: datetime | None = None,
    ) -> int: ...

    def answered(self, call_id: str, user_id: str) -> bool:
        """The user answered some other way (the carrier's voice SDK): offer over."""
        ...

    def offer_monitor(self, call_id: str, user_id: str, mode: str, sdp: str) -> int:
        """A supervisor's join on their apps (SIP path): the engine's WebRTC offer to every
        session of theirs (`monitor.offer`); how many sessions got it."""
        ...

    def end_monitor(self, call_id: str, user_id: str, reason: str) -> None:
        """That join is over (`monitor.ended`): the apps close their peer connection."""
        ...


# -- supervision (listen / whisper / barge, recording) -------------------------------------


class Supervision(Protocol):
    """Listen / whisper / barge and recording on a live call, for the control service
    (`bridge.control`), which decides beforehand who may, and checks the call through
    `call()`: answered, already monitored by this user, the user's own call, and what the view
    says cannot be done on it (`cannot_monitor`, `cannot_record`, `cannot_whisper`).

    The carrier implements it with its conference and Recordings API
    (`bridge.carriers.twilio.supervision`); SIP calls answer `NotSupportedOnCall` until the
    media engine anchors their audio (`bridge.sip.supervision`); `SupervisionByPath`
    (`bridge.calls.supervision`) picks the one of each call's dial path.

    Every command raises, from `bridge.calls.supervision`: `NotSupportedOnCall` (this call can
    never do it), `NotPossibleNow` (not in the call's present state), `SupervisionUnavailable`
    (the path cannot supervise any call now), `SupervisionFailed` (the path tried and failed;
    the call is as it was before)."""

    def call(self, call_id: str) -> SupervisableCall | None:
        """The call as supervision sees it (also a call that has just ended, while the path
        remembers it), or None. Raises `SupervisionUnavailable` first if the path cannot
        supervise at all."""
        ...

    async def join(
        self, call_id: str, user_id: str, mode: str, via: str, number: str | None
    ) -> MonitorView:
        """Bring the supervisor into the call in `mode` (listen, whisper, barge), on their
        apps (`via="client"`) or their `number` (`via="phone_number"`). The session is in
        the call's `monitors` from the start (pending), and gone again if it fails."""
        ...

    async def switch(self, call_id: str, user_id: str, mode: str) -> MonitorView:
        """The supervisor's session to another mode, live (nothing to do if it is in it)."""
        ...

    async def answer_monitor(self, call_id: str, user_id: str, sdp: str) -> MonitorView:
        """The supervisor's app answered the WebRTC offer of a `via="client"` join on the SIP
        path: in the call once its audio is up. `AnswerUnusable` for an SDP that cannot be
        used; `NotPossibleNow` when no such join waits for an answer."""
        ...

    async def leave(self, call_id: str, user_id: str) -> None:
        """End the supervisor's session (their leg leaves the call)."""
        ...

    async def start_recording(self, call_id: str) -> RecordingView: ...

    async def pause_recording(self, call_id: str, behavior: str) -> RecordingView:
        """`behavior`: `skip` leaves the paused stretch out, `silence` keeps its length."""
        ...

    async def resume_recording(self, call_id: str) -> RecordingView: ...

    async def stop_recording(self, call_id: str) -> RecordingView: ...


# -- media (the SIP path's audio) -----------------------------------------------------------


class MediaPort(Protocol):
    """A media engine: one session per call, one media leg per SIP leg (`leg`: `"caller"`, a
    call-core leg id, `"supervisor:<user>"`). SDP in and out are text; the engine never hands
    one peer's SDP to another. Every method is called on the loop and returns at once; what
    happens later comes back as `MediaEvent`s to `subscribe`d listeners.

    Raises (`bridge.calls.media`): `NoCommonCodec` (488), `MediaUnavailable` (503: no port),
    `UnknownMedia` (no such call or leg), `MediaError` for the rest.

    `srtp` is a SIP leg's SRTP policy (SDES, RFC 4568: keys in the SDP's `a=crypto` lines),
    one of `bridge.calls.media.SRTP_POLICIES`: "off" (the default) never offers SRTP and
    ignores `a=crypto` on an RTP/AVP offer, but still answers an RTP/SAVP offer with SRTP (a
    phone that insists gets it); "optional" offers RTP/AVP with `a=crypto` (best effort) and
    takes SRTP wherever a peer offers a usable key; "required" offers RTP/SAVP and refuses
    (`NoCommonCodec`) an offer or answer without a usable key. A value outside these is a
    `ValueError`."""

    def capabilities(self) -> MediaCapabilities: ...

    def subscribe(self, listener: Callable[[MediaEvent], None]) -> None: ...

    # SDP: offer/answer per leg
    def answer(
        self,
        call_id: str,
        leg: str,
        offer: str,
        *,
        source: str | None = None,
        srtp: str = "off",
    ) -> str:
        """Take the peer's offer (its INVITE or re-INVITE), return our answer. `source` is the
        signalling source host: a peer whose SDP names another address is behind NAT and is
        latched on its first packet. `srtp`: the leg's policy (above); the answer keeps the
        offer's RTP/AVP or RTP/SAVP and carries our `a=crypto` (the tag chosen, our own key)
        when SRTP is on. A re-INVITE with the peer's key unchanged keeps the SRTP sessions; a
        new key re-keys what we receive; our key stays. `NoCommonCodec` (488) when no stream
        can be answered under the policy, saying why."""
        ...

    def offer(
        self,
        call_id: str,
        leg: str,
        *,
        like: str | None = None,
        webrtc: bool = False,
        srtp: str = "off",
    ) -> str:
        """Our offer toward a leg (its INVITE, or an app's `call.offer`). `like`: a leg whose
        codec goes first (so the two sides of a bridge need no transcoding). `webrtc`: the
        leg is a WebRTC app's (ICE-lite, DTLS-SRTP, `UDP/TLS/RTP/SAVPF`); an app that answers
        plain RTP/AVP instead is taken as a plain leg. `srtp` (not for `webrtc`): "off" plain
        RTP/AVP, "optional" RTP/AVP with our `a=crypto`, "required" RTP/SAVP with it."""
        ...

    def accept(self, call_id: str, leg: str, answer: str, *, source: str | None = None) -> None:
        """The peer's answer to our offer (its 2xx, or the app's accept). When the offer
        carried our `a=crypto`: an answer line with its tag and suite turns SRTP on with the
        peer's key; none is plain RTP after an "optional" offer and `NoCommonCodec` after a
        "required" one."""
        ...

    def connecting(self, call_id: str, leg: str) -> bool:
        """Whether the leg's transport is still being set up after its answer (a WebRTC app's
        ICE and DTLS): `MediaConnected` or `MediaFailed` follows."""
        ...

    def local_sdp(self, call_id: str, leg: str) -> str | None:
        """What we last sent that leg (a session refresh repeats it)."""
        ...

    def offer_again(self, call_id: str, leg: str) -> str | None:
        """A new offer to a SIP leg already in the call, for the 2xx of its re-INVITE without
        SDP (RFC 3261 §14.2); its answer comes in the ACK (`accept`). Sendrecv whatever the
        last exchange said, the codec in use first, the leg's SRTP as it is: a phone or a PBX
        that held the call resumes it so. None: no such leg, or one that is not a plain SIP
        leg (the last SDP is repeated then)."""
        ...

    # topology
    def bridge(self, call_id: str, a: str, b: str) -> None:
        """Legs `a` (the caller) and `b` (the answered leg) hear each other."""
        ...

    def monitor(self, call_id: str, leg: str, mode: str) -> None:
        """Leg `leg` (a supervisor) joins the bridged call in `mode` (listen / whisper /
        barge), or switches to it: live, from the next 20 ms frame, no re-INVITE."""
        ...

    def stop_monitor(self, call_id: str, leg: str) -> None: ...

    # recording of the bridged call: caller left, the other side right
    def start_recording(self, call_id: str, path: Path) -> None: ...

    def pause_recording(self, call_id: str, behavior: str) -> None: ...

    def resume_recording(self, call_id: str) -> None: ...

    def stop_recording(self, call_id: str) -> RecordingResult | None: ...

    # prompts, messages, DTMF
    def play(self, call_id: str, leg: str, pcm: bytes) -> None:
        """Play 8 kHz 16-bit mono audio to the leg alone; `PlaybackDone` at its end."""
        ...

    def stop_playing(self, call_id: str, leg: str) -> None: ...

    def collect_digits(self, call_id: str, leg: str, collect: bool = True) -> None:
        """Report the leg's RFC 4733 key presses as `DtmfReceived` (and do not relay them)."""
        ...

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
        """Record the leg's audio to a mono WAV until a stop digit, silence after speech,
        `max_seconds` or the leg's release; `MessageRecorded` at the end."""
        ...

    def send_dtmf(self, call_id: str, leg: str, digits: str) -> None: ...

    # the end
    def release(self, call_id: str, leg: str | None = None) -> None:
        """Free a leg (its port), or the whole call's session (None)."""
        ...


class RelayMediaPort(Protocol):
    """A media relay that rewrites SDP in transit (rtpengine, `[media] engine = "rtpengine"`):
    the SIP path asks it at each offer and answer, the way a proxy with rtpengine does, and it
    relays the audio (and bridges a browser's WebRTC to RTP) on ports of its own. It has no
    mixer: no supervisor, recording, prompt or message on it (`capabilities()` says why).
    Offers and answers are coroutines (a round trip to the relay).

    Legs are named as on the `MediaPort`: `"caller"`, a call-core leg id, `"apps:<user>"`.
    Raises (`bridge.calls.media`): `NoCommonCodec`, `MediaUnavailable` (no reply, no port),
    `UnknownMedia`, `MediaError`."""

    answering: bool  # False once the relay stopped answering, until it answers again

    def capabilities(self) -> MediaCapabilities: ...

    def check(self, sdp: str, *, webrtc: bool = False, what: str = "the answer") -> None:
        """`NoCommonCodec` when `sdp` cannot be relayed (no round trip)."""
        ...

    def caller_offer(
        self,
        call_id: str,
        sdp: str,
        *,
        source: str | None = None,
        webrtc: bool = False,
        srtp: str = "off",
    ) -> None:
        """The caller's offer, kept for the legs' offers (no round trip). `srtp`: the leg's
        SRTP policy as on `MediaPort`; SDES is not done through the relay yet, so "required"
        is `NoCommonCodec` and the others are plain RTP/AVP."""
        ...

    async def offer(
        self, call_id: str, leg: str, *, webrtc: bool = False, srtp: str = "off"
    ) -> str:
        """The relay's offer toward a leg rung (the caller's, on the relay's ports); `srtp` as
        for `caller_offer`."""
        ...

    async def accept(
        self, call_id: str, leg: str, answer: str, *, source: str | None = None
    ) -> str:
        """The winning leg's answer: the relay joins it to the caller; returns the caller's
        answer (our 200)."""
        ...

    async def renegotiate(
        self, call_id: str, leg: str, sdp: str, *, source: str | None = None, srtp: str = "off"
    ) -> str:
        """A joined leg's new offer (re-INVITE, UPDATE), answered by the relay with the other
        side's last SDP; returns the SDP for that leg. `srtp` as for `caller_offer`."""
        ...

    def local_sdp(self, call_id: str, leg: str) -> str | None: ...

    def offer_again(self, call_id: str, leg: str) -> str | None:
        """As `MediaPort.offer_again`, on the relay's SDP of that leg."""
        ...

    def legs(self, call_id: str) -> list[str]: ...

    async def ping(self) -> None:
        """Ask the relay whether it answers (`answering` follows); `MediaUnavailable`."""
        ...

    async def release(self, call_id: str, leg: str | None = None) -> None:
        """Free a leg's ports, or the whole call's (None)."""
        ...
