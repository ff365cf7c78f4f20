"""The SIP dial path: a B2BUA that runs the call core (`CallMachine`) over SIP legs.

An INVITE from the trunk to one of our lines is routed (the same `plan_route` Test Routing
explains); the machine's commands become SIP: an INVITE to every registered contact of a
desk-phone member, an INVITE through the trunk for a phone number, CANCEL (with RFC 3326
`Reason` when answered elsewhere), ACK/BYE for a 2xx that lost the race. The first 2xx wins
and is bridged: the caller gets a 200 with the winner's SDP, passed through unchanged.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from bridge.calls.events import (
    BridgeTo,
    CancelLeg,
    DialLeg,
    HangupLeg,
    LegDeclined,
    LegFailure,
    LegReason,
    RejectCaller,
    RingCaller,
    Side,
    StartFallback,
    VoicemailLeft,
)
from bridge.calls.machine import CallMachine
from bridge.calls.media import (
    DtmfReceived,
    MediaConnected,
    MediaError,
    MediaEvent,
    MediaFailed,
    MediaTimeout,
    MediaUnavailable,
    MessageRecorded,
    NoCommonCodec,
    PlaybackDone,
)
from bridge.calls.ports import AnswerRefused, MediaPort, RelayMediaPort
from bridge.calls.registry import NotAcceptingCalls
from bridge.calls.runner import CallRunner, RunningCall
from bridge.directory.model import Directory, FallbackAction
from bridge.observability.audit import audit
from bridge.observability.logging import call_context
from bridge.observability.metrics import Metrics
from bridge.presence.model import Channel
from bridge.routing.dialing import classify, decide
from bridge.routing.fixed import desk_leg_plan, outbound_plan
from bridge.routing.model import CallRequest
from bridge.sip.addressing import address_of, ip_address, next_hop
from bridge.sip.dialog import (
    MAX_FORWARDS,
    Dialog,
    DialogError,
    DialogSet,
    DialogTable,
    ViaSpec,
    build_cancel,
    check_session_expires,
    format_reason,
    option_tags,
    retry_after_422,
)
from bridge.sip.digest import authorize, challenge_header
from bridge.sip.grammar import (
    SipSyntaxError,
    parse_cseq,
    parse_expires,
    parse_max_forwards,
    parse_name_addr,
    parse_uri,
)
from bridge.sip.ids import random_hex
from bridge.sip.model import (
    Headers,
    SipRequest,
    SipResponse,
    make_response,
    media_type,
    param_of,
)
from bridge.sip.overload_feedback import CLIENT_PARAMS as OC_CLIENT_PARAMS
from bridge.sip.overload_feedback import PeerFeedback
from bridge.sip.registrar import RegisterOutcome, RegistrarService
from bridge.sip.session_timers import (
    SessionTimers,
    SessionTimerSettings,
    other_side,
    side_of,
)
from bridge.sip.sources import TrunkSource
from bridge.sip.transaction import Address, new_branch
from bridge.text import ascii_digits, valid_utf8

log = structlog.get_logger("bridge.sip.calls")

ANSWERED_ELSEWHERE = format_reason(200, "Call completed elsewhere")
# The caller's Reason passed on longer than this is dropped, not cut (a cut one would not
# parse): `_passed_on_reason`.
REASON_PASSED_MAX = 256
T1, T2 = 0.5, 4.0  # RFC 3261 timer values for the 2xx retransmissions of the UAS core


@dataclass(frozen=True, slots=True)
class TrunkSettings:
    allow: tuple[TrunkSource, ...] = ()  # [sip] trunk_allow (bridge.sip.sources)
    uri: str | None = None  # sip:host[:port] of the provider, for forwarded legs
    # Caller id on forwarded legs: the original caller, or the dialled line (providers that
    # refuse numbers they do not own).
    caller_id: str = "caller"
    username: str | None = None  # digest credentials, when the provider challenges INVITEs
    password: str | None = None
    # RFC 7339 toward the provider: `oc` in our INVITEs' Via, its loss feedback honoured.
    overload_control: bool = True

    def allows(self, host: str, port: int) -> bool:
        """Whether a request from host:port is the trunk's (no digest asked)."""
        address = ip_address(host)
        return address is not None and any(s.matches(address, port) for s in self.allow)

    def destination(self) -> tuple[str, Address, str] | None:
        """(host for the Request-URI, where to send, transport) of the trunk, if set."""
        if self.uri is None:
            return None
        uri = parse_uri(self.uri)
        transport = str(uri.params.get("transport") or "udp").lower()
        return uri.host, (uri.host.strip("[]"), uri.port or 5060), transport


class Prompts(Protocol):
    """The audio the SIP path plays (8 kHz 16-bit mono PCM), rendered and cached elsewhere."""

    async def voicemail_greeting(self, spec: str | None) -> bytes:
        """The greeting of a `voicemail_prompt` setting (WAV path or text; None: stock),
        followed by the beep."""
        ...

    async def confirm(self) -> bytes:
        """ "Press 1 to accept" for forwarded legs."""
        ...

    async def announcement(self, spec: str) -> bytes:
        """A prompt setting said before a call is refused (WAV path or text)."""
        ...


class MessageStore(Protocol):
    """Where voicemail messages go (the recordings archive)."""

    def new_message(
        self,
        call_id: str,
        *,
        caller: str | None,
        line: str | None,
        user_id: str | None,
        group_id: str | None,
    ) -> tuple[str, Path]:
        """A new message's id and the WAV path to record it to (raises OSError-like
        `MediaError` when it cannot be stored)."""
        ...

    def message_recorded(self, message_id: str, duration_seconds: float, ended_by: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SipMediaOptions:
    """What the SIP path does with the media engine (from `[media]` and the confirmation
    setting shared with the carrier path)."""

    voicemail_max_seconds: float = 120.0
    voicemail_silence_seconds: float = 5.0
    confirm_timeout_seconds: float = 5.0
    # How long a supervisor's phone may ring before the join is given up.
    monitor_ring_seconds: float = 30.0


CALLER_LEG = "caller"
# The longest a refusal waits for its prompt to play before it is sent anyway.
_ANNOUNCEMENT_MAX_SECONDS = 60.0


def app_leg(user_id: str) -> str:
    """The media leg of an app user offered the call (each gets its own WebRTC offer: two
    users' handshakes can be under way at once, the first to connect and win is bridged)."""
    return f"apps:{user_id}"


def supervisor_leg(user_id: str) -> str:
    return f"supervisor:{user_id}"


@dataclass(eq=False)
class SipMonitor:
    """A supervisor on a SIP call: their leg, dialled by the bridge."""

    user_id: str
    mode: str
    via: str
    to: str
    status: str = "dialing"  # dialing | in-progress | ended
    dialog: Dialog | None = None
    destination: Address | None = None
    transport: str = "udp"
    timer: object | None = None

    @property
    def leg(self) -> str:
        return supervisor_leg(self.user_id)


@dataclass(eq=False)
class _Branch:
    """One INVITE we sent for a leg: to one registered contact, or through the trunk."""

    leg_id: str
    invite: SipRequest
    transaction_id: str
    destination: Address
    transport: str
    dialogs: DialogSet
    provisional: bool = False  # a 1xx arrived: a CANCEL may now be sent (§9.1)
    cancel_reason: str | None = None  # a CANCEL is wanted (sent once provisional is True)
    cancelled: bool = False
    trunk: bool = False  # sent to the provider (may be challenged)
    authenticated: bool = False  # our INVITE already answered a challenge
    interval_raised: bool = False  # our INVITE was retried after a 422 (RFC 4028 §6)
    final: int | None = None
    answer: SipResponse | None = None
    dialog: Dialog | None = None
    confirm: bool = False  # a forwarded leg that must press 1 before it counts as answered
    confirming: bool = False  # answered, waiting for the key press
    confirm_timer: object | None = None
    supervisor: str | None = None  # a supervisor's leg (user id), not one of the call core's


_RELAYED = frozenset({"INVITE", "UPDATE", "INFO"})
_REFRESHES = frozenset({"INVITE", "UPDATE"})  # target refresh requests (RFC 3261 §12.2)


@dataclass(eq=False)
class _Relay:
    """An in-dialog request passed to the other side, waiting for its final response."""

    call: SipCall
    dialog: Dialog  # where it came from (the response goes back there)
    transaction_id_in: str
    request: SipRequest
    other: Dialog  # where it went
    destination: Address
    transport: str
    transaction_id_out: str = ""
    outgoing: SipRequest | None = None  # what went to the other side (a CANCEL needs it)


@dataclass(eq=False)
class SipCall:
    """The SIP side of one running call (the runner's `RunningCall` is `run`)."""

    call_id: str
    run: RunningCall
    invite: SipRequest
    transaction_id: str
    source: Address
    transport: str
    to_tag: str
    branches: dict[str, _Branch] = field(default_factory=dict)  # by transaction id
    caller_dialog: Dialog | None = None
    winner: _Branch | None = None
    answered: bool = False  # the caller got a final response (2xx or error)
    caller_id: str | None = None  # E.164 shown on outbound legs (a phone's call out)
    placed_by: str | None = None  # the user whose desk phone called a number out
    # Our 2xx to the caller, re-sent until the ACK arrives (RFC 3261 §13.3.1.4).
    ok: _PendingOk | None = None
    # Session timers, per side of the bridged call: the pending timer (our refresh, or the
    # expiry if the peer refreshes), when the session was last refreshed, and the session
    # description we last sent on that side (a re-INVITE refresh repeats it).
    session_timers: dict[Side, object] = field(default_factory=dict)
    session_since: dict[Side, float] = field(default_factory=dict)
    sdp_out: dict[Side, bytes] = field(default_factory=dict)
    # The media engine's answer to the caller's offer (None: SDP passes end to end, or the
    # caller made no offer and gets ours in the 200).
    caller_answer: str | None = None
    # Its audio relayed by a `RelayMediaPort` (rtpengine): each SDP is rewritten in transit.
    anchored: bool = False
    dialing: set[str] = field(default_factory=set)  # legs whose relay offer is awaited
    monitors: dict[str, SipMonitor] = field(default_factory=dict)  # by supervisor id
    voicemail_id: str | None = None
    voicemail_path: Path | None = None
    finished: bool = False  # its SIP state is being dropped
    # A refusal held back while its prompt plays to the caller as early media (183): the
    # final response, and the timer that sends it anyway.
    refusal: SipResponse | None = None
    refusal_timer: object | None = None
    recording: Any = None  # the SIP supervision's record of the call's recording
    # Our 2xx to in-dialog INVITEs (re-INVITEs), re-sent until their ACK, by dialog.
    reinvite_oks: dict[object, _PendingOk] = field(default_factory=dict)
    # RFC 3262, when the caller's INVITE requires 100rel: our provisional response re-sent
    # until its PRACK, the last RSeq used, whether our SDP answer went in one already, and
    # our 2xx held until that one's PRACK (§3: no 2xx before it when it carried SDP).
    reliable_required: bool = False
    reliable: _Reliable | None = None
    rseq: int = 0
    answer_in_provisional: bool = False
    held_ok: tuple[bytes, str | None] | None = None
    # The caller's INVITE `Expires` (RFC 3261 §13.3.1): unanswered by then, it gets 487.
    expiry_timer: object | None = None
    # The Reason of the caller's CANCEL (or early BYE), copied into the CANCELs it causes
    # (RFC 3326 §3): "answered elsewhere" upstream is then no missed call on the phones.
    gone_reason: str | None = None

    @property
    def final_sent(self) -> bool:
        """Our final response to the caller's INVITE went (a 2xx held for a PRACK has not):
        its early dialog is over, an early BYE or the INVITE's expiry has nothing to end."""
        return self.answered and self.held_ok is None

    @property
    def machine(self) -> CallMachine:
        return self.run.machine

    @property
    def app_winner(self) -> str | None:
        return self.run.app_winner


@dataclass(slots=True)
class _PendingOk:
    """Our 2xx to an INVITE, re-sent (T1 doubling up to T2) until its ACK or 64*T1
    (RFC 3261 §13.3.1.4): the caller's (no ACK ends the call), or a re-INVITE's on either
    side (over UDP one lost 200 failed the peer's re-INVITE, and §14.1 has it end the call
    then; a retransmitted re-INVITE is absorbed by its transaction, RFC 6026, so these
    re-sends are what answer it)."""

    transaction_id: str
    response: SipResponse
    cseq: int
    sent_at: float
    interval: float = T1
    timer: object | None = None
    offer_to: str | None = None  # the leg our 2xx made an offer to: its ACK holds the answer


@dataclass(frozen=True, slots=True)
class _Timers:
    """The endpoint's clock and loop timers, as the call runner takes them."""

    now: Callable[[], float]
    schedule: Callable[[float, Callable[[], None]], object]
    cancel_timer: Callable[[object], None]

    def call_at(self, when: float, callback: Callable[[], None]) -> object:
        return self.schedule(when, callback)

    def cancel(self, handle: object) -> None:
        self.cancel_timer(handle)


@dataclass(slots=True)
class _Reliable:
    """A reliable provisional response to the caller (RFC 3262 §3): re-sent at T1, doubling,
    until the PRACK that names its RSeq; after 64*T1 without one the INVITE is refused."""

    rseq: int
    response: SipResponse
    sent_at: float
    interval: float = T1
    timer: object | None = None


class SipCalls:
    """Calls over SIP: the SIP path's `LegDriver`. The endpoint hands it INVITE/CANCEL/BYE/ACK
    and the responses and timeouts of the transactions it started; the call runner (routing,
    the call core, presence, app offers, events, metrics) hands it the leg commands."""

    path = "sip"
    app_accept_answers = True  # an app's accept over the WebSocket answers a SIP call

    def __init__(
        self,
        *,
        runner: CallRunner,
        registrar: RegistrarService,
        directory: Callable[[], Directory],
        wall_clock: Callable[[], float],
        metrics: Metrics,
        trunk: TrunkSettings,
        realm: str,
        clock: Callable[[], float],
        schedule: Callable[[float, Callable[[], None]], object],
        cancel_timer: Callable[[object], None],
        send_request: Callable[[SipRequest, Address, str], str],
        respond: Callable[[str, SipResponse], None],
        send_stateless: Callable[[SipRequest | SipResponse, Address, str], None],
        local: Callable[[str], ViaSpec],
        session: SessionTimerSettings | None = None,
        media: MediaPort | None = None,
        media_options: SipMediaOptions | None = None,
        prompts: Prompts | None = None,
        messages: MessageStore | None = None,
        spawn: Callable[[Coroutine[Any, Any, None]], object] | None = None,
        relay: RelayMediaPort | None = None,
        srtp: str = "off",
    ) -> None:
        self.runner = runner
        # SRTP (SDES) on the legs signalled over TLS: off | optional | required
        # ([sip.tls] srtp; the engine takes an RTP/SAVP offer from anyone regardless).
        self.srtp = srtp
        # None: signalling only, SDP passes end to end ([media] engine = "none"), or
        # rewritten in transit by `relay` ([media] engine = "rtpengine").
        self.media = media
        self.relay = relay if media is None else None
        self.media_options = media_options or SipMediaOptions()
        self.prompts = prompts
        self.messages = messages
        self._spawn = spawn or _spawn_task
        # Told when a call's SIP state is dropped, before its media is released (the
        # supervision closes the call's recording there).
        self.ended_listeners: list[Callable[[SipCall], None]] = []
        self.registrar = registrar
        self.bindings = registrar.bindings
        self.directory = directory
        self._wall = wall_clock
        self.metrics = metrics
        self.trunk = trunk
        self.realm = realm
        self._now = clock
        self._schedule = schedule
        self._cancel_timer = cancel_timer
        self._send_request = send_request
        self._respond = respond
        self._send_stateless = send_stateless
        self._local = local
        self._timers = _Timers(clock, schedule, cancel_timer)
        self._calls: dict[str, SipCall] = {}
        # accepted apps whose WebRTC handshake is under way: the runner awaits these
        self._connecting: dict[tuple[str, str], asyncio.Future[str | None]] = {}
        self._by_invite: dict[str, SipCall] = {}  # caller INVITE transaction id -> call
        # (Call-ID, our To tag) -> call, until it ends: a PRACK, or the caller's BYE, in the
        # early dialog of our provisional responses
        self._early: dict[tuple[str, str], SipCall] = {}
        # (Call-ID, From tag, CSeq) of each caller's INVITE -> call: a copy of it that came
        # another way (another branch) is a merged request (RFC 3261 §8.2.2.2)
        self._origins: dict[tuple[str, str, int], SipCall] = {}
        self._by_branch: dict[str, tuple[SipCall, _Branch]] = {}
        self._dialogs = DialogTable()
        self._dialog_calls: dict[object, SipCall] = {}  # DialogId -> call
        self._relays: dict[str, _Relay] = {}  # our relayed request's transaction -> relay
        # Legs of ended calls still unanswered, by INVITE transaction: a late 2xx is hung up.
        self._unanswered: dict[str, _Branch] = {}
        # What the trunk's responses asked of us (RFC 7339), and the draw against it.
        self.trunk_feedback = PeerFeedback()
        self._draw: Callable[[], float] = random.random
        metrics.sip_overload_feedback.labels(peer="trunk").set_function(
            lambda: self.trunk_feedback.active(self._now())
        )
        self.sessions = SessionTimers(
            session or SessionTimerSettings(),
            clock=clock,
            schedule=schedule,
            cancel_timer=cancel_timer,
            send_request=send_request,
            send_stateless=send_stateless,
            respond=respond,
            local=local,
            metrics=metrics,
            is_live=lambda call: call.call_id in self._calls,
            end_call=self._end_after_session_timeout,
        )
        if media is not None:
            media.subscribe(self._media_event)

    def __len__(self) -> int:
        return len(self._calls)

    # -- requests from the network ---------------------------------------------------------
    def new_invite(
        self, transaction_id: str, invite: SipRequest, source: Address, transport: str
    ) -> None:
        """An INVITE that opens a call (no To tag): from the trunk to a line, or from an
        authenticated desk phone to an extension or a number."""
        merged = self._origins.get(_origin(invite))
        if merged is not None and merged.transaction_id != transaction_id:
            # RFC 3261 §8.2.2.2: the same INVITE again on another branch (forked to us by
            # two paths, or re-sent by a proxy that failed over) is not a second call: the
            # agents would ring twice for one caller.
            with call_context(merged.call_id):
                log.info("sip_merged_request", transaction=transaction_id)
            self._respond(transaction_id, _reply(invite, 482, "Loop Detected"))
            return
        if _hops_left(invite) == 0:
            # RFC 7332: our legs carry the caller's Max-Forwards less one (they started at 70,
            # and a call forwarded to a number that routes back here looped for ever); one
            # that arrives with none left goes no further.
            self._respond(transaction_id, _reply(invite, 483, "Too Many Hops"))
            return
        try:
            # (for routing, the runner, the API, the apps, the records: text that is not
            # UTF-8 from the wire is made valid here; the SIP legs carry the From as it came)
            dialled = valid_utf8(parse_uri(invite.uri).user or "")
            caller = parse_name_addr(invite.headers.get("From") or "").uri.user
            # The number without its parameters (an IMS trunk's `+15551230000;cpc=ordinary`,
            # RFC 3966 §3): what agents, the API and the records show as the caller.
            caller = valid_utf8(caller.split(";", 1)[0]) if caller is not None else None
        except SipSyntaxError as exc:
            self._respond(transaction_id, _reply(invite, 400, f"Bad Request ({exc})"))
            return
        refused = check_session_expires(invite, min_se=self.sessions.settings.min_se)
        if refused is not None:  # RFC 4028 §8.1: 422 with our Min-SE (or 400 if malformed)
            min_se = [(n, v) for n, v in refused.headers if n == "Min-SE"]
            self._respond(transaction_id, _reply(invite, refused.status, refused.reason, min_se))
            return
        call_id = f"sip-{random_hex(6)}"
        caller_id: str | None = None
        desk_leg: str | None = None
        placed_by: str | None = None  # a desk phone's call to a number (dial rules)
        if self.trunk.allows(source[0], source[1]):
            if self.trunk.username and dialled == self.trunk.username:
                # A provider we register with (`trunk_register`) sends its calls to the
                # Contact we registered: the Request-URI names our account, and the number
                # dialled is in To (they were refused 404, "no_route").
                try:
                    to_user = parse_name_addr(invite.headers.get("To") or "").uri.user
                except SipSyntaxError:
                    to_user = None
                dialled = valid_utf8(to_user) if to_user else dialled
            directory = self.directory()
            user = None
            if directory.line(dialled) is None:
                # Not a line: the SIP username or extension of a user is a leg the sender has
                # already routed (a carrier's <Dial><Sip>): ring that user's phones, no more.
                user = directory.users_by_sip_username.get(
                    dialled
                ) or directory.users_by_extension.get(dialled)
                if user is None:
                    dialled = _line_dialled_nationally(directory, dialled)
            if user is not None:
                request = CallRequest(call_id=call_id, user=user.id, caller=caller)
                desk_leg = user.id
            else:
                request = CallRequest(call_id=call_id, line=dialled, caller=caller)
        else:
            checked = self.registrar.authenticate_call(invite, source, self._wall(), self._now())
            if isinstance(checked, RegisterOutcome):
                if checked.outcome in ("auth_failed", "banned"):
                    self.metrics.sip_auth_failures.labels(reason=checked.outcome).inc()
                self._respond(transaction_id, checked.response)
                return
            caller = checked.id
            directory = self.directory()
            # Phones dial extensions; a SIP username (often the same digits) works too.
            target = directory.users_by_extension.get(
                dialled
            ) or directory.users_by_sip_username.get(dialled)
            if target is not None:
                request = CallRequest(call_id=call_id, user=target.id, caller=caller)
            elif _DIALLABLE.fullmatch(dialled):
                out = sum(1 for c in self._calls.values() if c.placed_by == checked.id)
                decision = decide(checked, dialled, directory.dialing, out)
                if decision.kind_is_emergency or not decision.allowed:
                    audit(
                        checked.id,
                        checked.role.value,
                        "dial",
                        allowed=decision.allowed,
                        target=f"number:{decision.dialled.number}",
                        reason=decision.reason,
                        source=source[0],
                        kind=decision.dialled.kind.value,
                    )
                if not decision.allowed:
                    self.metrics.sip_calls_refused.labels(reason="dial_rules").inc()
                    forbidden = f"Forbidden ({decision.reason})"
                    self._respond(transaction_id, _reply(invite, 403, forbidden))
                    return
                request = CallRequest(call_id=call_id, caller=caller)
                caller_id = checked.personal_line or checked.phone_number
                dialled = decision.dialled.number
                placed_by = checked.id
            else:
                self._respond(transaction_id, _reply(invite, 404, "Not Found"))
                return
        self._start_call(
            transaction_id, invite, source, transport, request, dialled, caller_id, desk_leg
        )
        if placed_by is not None and call_id in self._calls:
            self._calls[call_id].placed_by = placed_by

    def _start_call(
        self,
        transaction_id: str,
        invite: SipRequest,
        source: Address,
        transport: str,
        request: CallRequest,
        dialled: str,
        caller_id: str | None,
        desk_leg: str | None = None,
    ) -> None:
        call_id = request.call_id
        with call_context(call_id):
            caller_answer = None
            anchored = False
            if (self.media is not None or self.relay is not None) and invite.body:
                offer = invite.body.decode("utf-8", "replace")
                try:
                    if self.media is not None:
                        caller_answer = self.media.answer(
                            call_id,
                            CALLER_LEG,
                            offer,
                            source=source[0],
                            srtp=self._srtp_over((transport,)),
                        )
                    elif self.relay is not None:
                        if not self.relay.answering:
                            raise MediaUnavailable("rtpengine does not answer")
                        self.relay.caller_offer(call_id, offer, source=source[0])
                        anchored = True
                except NoCommonCodec as exc:
                    if self.media is not None:  # (a leg it allocated before refusing)
                        self.media.release(call_id)
                    log.info("sip_call_refused_sdp", reason=exc.reason)
                    self.metrics.sip_calls_refused.labels(reason="no_codec").inc()
                    self._respond(
                        transaction_id,
                        _reply(invite, 488, "Not Acceptable Here", [("Warning", _warning(exc))]),
                    )
                    return
                except MediaUnavailable as exc:
                    if self.media is not None:
                        self.media.release(call_id)
                    log.warning("sip_call_refused_media", reason=exc.reason)
                    self.metrics.sip_calls_refused.labels(reason="media_ports").inc()
                    self._respond(
                        transaction_id,
                        _reply(invite, 503, "Service Unavailable", [("Retry-After", "5")]),
                    )
                    return
            plan = None
            at = datetime.fromtimestamp(self._wall(), UTC)
            if request.line is None and request.user is None:
                plan = outbound_plan(call_id, dialled, at)
            elif desk_leg is not None:
                plan = desk_leg_plan(call_id, desk_leg, at)
            try:
                run = self.runner.admit(
                    request,
                    self,
                    plan=plan,
                    timers=self._timers,
                    caller_sdp=invite.body.decode("utf-8", "replace") if invite.body else None,
                )
            except NotAcceptingCalls:
                if self.media is not None:
                    self.media.release(call_id)
                if anchored:
                    self._release_relayed(call_id)
                self._respond(
                    transaction_id,
                    _reply(invite, 503, "Service Unavailable", [("Retry-After", "30")]),
                )
                return
            call = SipCall(
                call_id=call_id,
                run=run,
                invite=invite,
                transaction_id=transaction_id,
                source=source,
                transport=transport,
                to_tag=random_hex(5),
                caller_id=caller_id,
                caller_answer=caller_answer,
                anchored=anchored,
                reliable_required="100rel" in option_tags(invite, "Require"),
            )
            if self.media is not None:
                run.app_sdp = lambda user_id: self._app_offer(call, user_id)
            elif anchored:
                run.app_sdp = lambda user_id: self._relayed_app_offer(call, user_id)
            self._calls[call_id] = call
            self._by_invite[transaction_id] = call
            self._early[_early_key(call)] = call
            self._origins[_origin(invite)] = call
            self._arm_expiry(call)
            log.info(
                "sip_call_in",
                line=run.plan.line,
                caller=request.caller,
                outcome=run.plan.outcome.value,
                source=f"{source[0]}:{source[1]}",
            )
            self.runner.start(run)

    def cancel(
        self, transaction_id: str, cancel: SipRequest, invite_transaction: str | None
    ) -> None:
        """The caller's CANCEL (§9.2): 200 to it; 487 to the INVITE if still unanswered. A
        CANCEL of a re-INVITE we relayed is passed on: the other side's 487 comes back."""
        call = self._by_invite.get(invite_transaction or "")
        relay = self._pending_relay(invite_transaction) if call is None else None
        if relay is not None and relay.outgoing is not None:
            self._respond(transaction_id, _reply(cancel, 200, "OK"))
            with call_context(relay.call.call_id):
                self._send_request(build_cancel(relay.outgoing), relay.destination, relay.transport)
            return
        if call is None:
            self._respond(transaction_id, _reply(cancel, 481, "Call/Transaction Does Not Exist"))
            return
        self._respond(transaction_id, _reply(cancel, 200, "OK"))
        with call_context(call.call_id):
            call.gone_reason = _passed_on_reason(cancel)
            self._caller_left(call)

    def _caller_left(self, call: SipCall) -> None:
        """The caller gave up before our 2xx (a CANCEL, or a BYE in the early dialog): 487 to
        its INVITE if still unanswered, and the call ends."""
        if call.refusal is not None:  # gone while its refusal's prompt played
            call.refusal = None
            self._respond(call.transaction_id, self._caller_reply(call, 487, "Request Terminated"))
            self._refuse_now(call)
            return
        held, call.held_ok = call.held_ok, None
        if not call.answered:
            call.answered = True
            self._respond(call.transaction_id, self._caller_reply(call, 487, "Request Terminated"))
        if held is not None:  # the callee answered while our 2xx waited for the PRACK
            self.runner.hangup(call.run, Side.CALLER)
            return
        self.runner.caller_hangup(call.run)

    def _arm_expiry(self, call: SipCall) -> None:
        """An INVITE with `Expires` (some carriers send one) is answered 487 when that many
        seconds pass without a final response (RFC 3261 §13.3.1), and the call ends as on a
        CANCEL: the caller's side has given up by then, and the phones would ring for nobody.
        An Expires that does not read as delta-seconds is ignored."""
        value = call.invite.headers.get("Expires")
        if value is None:
            return
        try:
            seconds = parse_expires(value)
        except SipSyntaxError:
            return
        call.expiry_timer = self._schedule(self._now() + seconds, lambda: self._expired(call))

    def _expired(self, call: SipCall) -> None:
        call.expiry_timer = None
        if call.finished or self._calls.get(call.call_id) is not call:
            return
        if call.final_sent:
            return
        with call_context(call.call_id):
            log.info("sip_invite_expired", expires=call.invite.headers.get("Expires"))
            self._caller_left(call)

    def _pending_relay(self, transaction_id_in: str | None) -> _Relay | None:
        """The re-INVITE relayed for this incoming transaction, while unanswered."""
        if not transaction_id_in:
            return None
        for relay in self._relays.values():
            if relay.transaction_id_in == transaction_id_in and relay.request.method == "INVITE":
                return relay
        return None

    def _end_relays(self, call: SipCall) -> None:
        """The call is over: what was relayed and not answered yet is answered 487 on the
        side it came from, and a relayed re-INVITE CANCELled on the other (it was re-sent to
        a phone already sent a BYE, and answered 408 only after 32 s)."""
        for out_id, relay in [(k, r) for k, r in self._relays.items() if r.call is call]:
            del self._relays[out_id]
            if relay.request.method == "INVITE" and relay.outgoing is not None:
                self._send_request(build_cancel(relay.outgoing), relay.destination, relay.transport)
            try:
                self._respond(
                    relay.transaction_id_in, _reply(relay.request, 487, "Request Terminated")
                )
            except Exception:  # (its transaction is over: nothing to answer)
                log.debug("sip_relay_answer_gone", method=relay.request.method)

    def in_dialog(
        self,
        transaction_id: str,
        request: SipRequest,
        source: Address | None = None,
        transport: str | None = None,
    ) -> bool:
        """A request with a To tag (from `source` over `transport`, when known). Returns
        False when it is not one of our calls' dialogs."""
        if request.method == "PRACK":  # (in the early dialog of our reliable provisional)
            return self._prack(transaction_id, request)
        dialog = self._dialogs.find_for_request(request)
        if dialog is None:
            return request.method == "BYE" and self._early_bye(transaction_id, request)
        call = self._dialog_calls.get(dialog.id)
        verdict = dialog.receive_request(request)
        if verdict.response is not None:
            self._respond(transaction_id, verdict.response)
            return True
        if call is None:
            self._respond(transaction_id, _reply(request, 481, "Call/Transaction Does Not Exist"))
            return True
        with call_context(call.call_id):
            if source is not None and transport is not None and request.method in _REFRESHES:
                self._follow_callee(call, dialog, source, transport)
            monitor = self._monitor_of(call, dialog)
            if monitor is not None:
                self._monitor_request(call, monitor, dialog, transaction_id, request)
                return True
            if request.method == "INFO" and call.branches:
                # a key press sent as SIP INFO by a forwarded leg asked to press 1
                branch = next(
                    (b for b in call.branches.values() if b.dialog is dialog and b.confirming),
                    None,
                )
                digit = _info_digit(request) if branch is not None else None
                if branch is not None and digit:
                    response = _reply(request, 200, "OK")
                    dialog.response_sent(request, response)
                    self._respond(transaction_id, response)
                    self._confirmation(call, branch, digit)
                    return True
            if request.method == "BYE":
                response = _reply(request, 200, "OK")
                dialog.response_sent(request, response)
                self._respond(transaction_id, response)
                side = Side.CALLER if dialog is call.caller_dialog else Side.CALLEE
                log.info("sip_call_bye", side=side.value)
                self._forget_dialog(dialog)
                self.runner.hangup(call.run, side)
            elif request.method in ("INVITE", "UPDATE") and self.sessions.refuse_interval(
                dialog, transaction_id, request
            ):
                pass
            elif request.method == "UPDATE" and not request.body:
                self.sessions.answer_refresh(call, dialog, transaction_id, request)
            elif request.method in ("INVITE", "UPDATE") and self.media is not None:
                leg = CALLER_LEG if dialog is call.caller_dialog else self._leg_of(call, dialog)
                self._answer_locally(call, leg, dialog, transaction_id, request)
            elif request.method in ("INVITE", "UPDATE") and call.anchored:
                leg = CALLER_LEG if dialog is call.caller_dialog else self._leg_of(call, dialog)
                self._spawn(self._answer_relayed(call, leg, dialog, transaction_id, request))
            elif request.method in _RELAYED and self._relay(call, dialog, transaction_id, request):
                pass
            elif request.method == "INVITE" and call.app_winner is not None:
                # No SIP far side to relay to (an app answered): repeat our answer.
                body = call.sdp_out.get(Side.CALLER, b"")
                extra = [("Content-Type", "application/sdp")] if body else []
                extra += self.sessions.answer_headers(request)
                response = make_response(request, 200, "OK", extra=extra, body=body)
                dialog.response_sent(request, response)
                self._respond(transaction_id, response)
                self.sessions.arm(call, Side.CALLER)
            else:
                response = _reply(request, 200, "OK")
                dialog.response_sent(request, response)
                self._respond(transaction_id, response)
        return True

    def _follow_callee(
        self, call: SipCall, dialog: Dialog, source: Address, transport: str
    ) -> None:
        """A callee leg's target refresh (re-INVITE, UPDATE) from another address than we
        send to: the phone moved (a softphone from Wi-Fi to mobile data, a NAT binding that
        changed). Our requests on that leg go where it now sends from, as they went to the
        flow its REGISTER came from; they went on to the old address, and the BYE when the
        caller hung up never reached the phone, which stayed in the call."""
        for branch in call.branches.values():
            if branch.dialog is dialog and (branch.destination, branch.transport) != (
                source,
                transport,
            ):
                log.info(
                    "sip_leg_moved",
                    leg_id=branch.leg_id,
                    source=f"{source[0]}:{source[1]}",
                    transport=transport,
                )
                branch.destination, branch.transport = source, transport

    def _relay(
        self, call: SipCall, dialog: Dialog, transaction_id: str, request: SipRequest
    ) -> bool:
        """Pass a re-INVITE / UPDATE / INFO to the other side of a bridged call, unchanged in
        its body; its final response comes back the same way (`_relayed_response`)."""
        winner = call.winner
        if winner is None or winner.dialog is None or call.caller_dialog is None:
            return False
        if dialog is call.caller_dialog:
            other, destination, transport = winner.dialog, winner.destination, winner.transport
        else:
            other = call.caller_dialog
            transport = call.transport
            destination = next_hop(other, call.source)
        local = self._local(transport)
        # Session-Expires is not copied: each side has its own session timer (the dialog
        # puts the other side's own on the relayed request).
        outgoing = other.create_request(
            request.method,
            via=local,
            contact=f"sip:bridge@{local.sent_by};transport={transport.lower()}",
            body=request.body,
            content_type=request.headers.get("Content-Type"),
        )
        relayed = self._send_request(outgoing, destination, transport)
        self._relays[relayed] = _Relay(
            call, dialog, transaction_id, request, other, destination, transport, relayed, outgoing
        )
        log.info("sip_relayed", method=request.method)
        return True

    def _relayed_response(self, relay: _Relay, response: SipResponse) -> None:
        if response.status < 200:
            return
        self._relays.pop(relay.transaction_id_out, None)
        try:
            relay.other.receive_response(response)
        except DialogError as exc:
            log.info("sip_bad_response", error=str(exc), status=response.status)
        if relay.request.method == "INVITE" and response.status < 300:
            ack = relay.other.create_ack(relay.other.local_cseq, via=self._local(relay.transport))
            self._send_stateless(ack, relay.destination, relay.transport)
        extra: list[tuple[str, str]] = []
        for name in ("Content-Type", "Retry-After"):
            value = response.headers.get(name)
            if value is not None:
                extra.append((name, value))
        ok = response.status < 300
        refreshing = relay.request.method in ("INVITE", "UPDATE")
        if ok and refreshing:
            local = self._local(relay.transport)
            extra.insert(0, ("Contact", f"<sip:bridge@{local.sent_by}{local.contact_params}>"))
            extra += self.sessions.answer_headers(relay.request)
        answer = make_response(
            relay.request, response.status, response.reason, extra=extra, body=response.body
        )
        relay.dialog.response_sent(relay.request, answer)
        self._respond(relay.transaction_id_in, answer)
        if relay.request.method == "INVITE" and ok:
            self._await_reinvite_ack(
                relay.call, relay.dialog, relay.transaction_id_in, relay.request, answer
            )
        if ok and refreshing:
            # A successful re-INVITE/UPDATE refreshed the session on both sides (RFC 4028 §7.4).
            origin = side_of(relay.call, relay.dialog)
            if relay.request.body:
                relay.call.sdp_out[other_side(origin)] = relay.request.body
            if response.body:
                relay.call.sdp_out[origin] = response.body
            self.sessions.arm(relay.call, Side.CALLER)
            self.sessions.arm(relay.call, Side.CALLEE)

    # -- anchored media: re-offers, supervisors, press 1, voicemail ---------------------------
    def _leg_of(self, call: SipCall, dialog: Dialog) -> str:
        for branch in call.branches.values():
            if branch.dialog is dialog:
                return branch.leg_id
        return app_leg(call.run.app_winner or "")

    def _answer_locally(
        self, call: SipCall, leg: str, dialog: Dialog, transaction_id: str, request: SipRequest
    ) -> None:
        """A re-INVITE or UPDATE on an anchored call is the engine's business alone (the other
        side never sees it): a new offer gets the engine's answer (hold, a new address), one
        without SDP a new offer, sendrecv (`offer_again`), whose answer comes in the ACK. It
        got what we last sent that leg: after a hold that was `recvonly`, and a PBX that
        resumes with an offerless re-INVITE (Cisco's do) was never sent the agent's voice."""
        assert self.media is not None
        body, offered = b"", False
        if request.body:
            try:
                body = self.media.answer(
                    call.call_id,
                    leg,
                    request.body.decode("utf-8", "replace"),
                    source=address_of(str(dialog.remote_target), call.source)[0],
                    srtp=self._leg_srtp(call, leg),
                ).encode()
            except MediaError as exc:
                log.info("sip_reoffer_refused", leg=leg, reason=exc.reason)
                response = _reply(request, 488, "Not Acceptable Here", [("Warning", _warning(exc))])
                dialog.response_sent(request, response)
                self._respond(transaction_id, response)
                return
        elif request.method == "INVITE":
            offer = self.media.offer_again(call.call_id, leg)
            offered = offer is not None
            body = (offer or self.media.local_sdp(call.call_id, leg) or "").encode()
        self._local_answer(call, dialog, transaction_id, request, body)
        pending = call.reinvite_oks.get(dialog.id)
        if offered and pending is not None:
            pending.offer_to = leg

    async def _answer_relayed(
        self, call: SipCall, leg: str, dialog: Dialog, transaction_id: str, request: SipRequest
    ) -> None:
        """`_answer_locally` on a relayed call: a new offer is rtpengine's to answer (with the
        other side's last SDP, so that side is not asked), one without SDP a new offer
        (sendrecv, `offer_again`)."""
        relay = self.relay
        assert relay is not None
        body = b""
        if request.body:
            try:
                body = (
                    await relay.renegotiate(
                        call.call_id,
                        leg,
                        request.body.decode("utf-8", "replace"),
                        source=address_of(str(dialog.remote_target), call.source)[0],
                    )
                ).encode()
            except MediaError as exc:
                with call_context(call.call_id):
                    log.info("sip_reoffer_refused", leg=leg, reason=exc.reason)
                status = 500 if isinstance(exc, MediaUnavailable) else 488
                phrase = "Server Internal Error" if status == 500 else "Not Acceptable Here"
                extra = [("Warning", _warning(exc))]
                if status == 500:
                    extra.append(("Retry-After", "5"))
                response = _reply(request, status, phrase, extra)
                dialog.response_sent(request, response)
                self._respond(transaction_id, response)
                return
        elif request.method == "INVITE":
            offer = relay.offer_again(call.call_id, leg)
            body = (offer or relay.local_sdp(call.call_id, leg) or "").encode()
        if self._calls.get(call.call_id) is not call:
            response = _reply(request, 481, "Call/Transaction Does Not Exist")
            self._respond(transaction_id, response)
            return
        with call_context(call.call_id):
            self._local_answer(call, dialog, transaction_id, request, body)

    def _local_answer(
        self,
        call: SipCall,
        dialog: Dialog,
        transaction_id: str,
        request: SipRequest,
        body: bytes,
    ) -> None:
        """Our 2xx to an in-dialog INVITE or UPDATE answered by the media engine."""
        local = self._local(call.transport)
        extra = [("Contact", f"<sip:bridge@{local.sent_by}{local.contact_params}>")]
        if body:
            extra.append(("Content-Type", "application/sdp"))
        extra += self.sessions.answer_headers(request)
        response = make_response(request, 200, "OK", extra=extra, body=body)
        dialog.response_sent(request, response)
        self._respond(transaction_id, response)
        if request.method == "INVITE":
            self._await_reinvite_ack(call, dialog, transaction_id, request, response)
        if body:
            call.sdp_out[side_of(call, dialog)] = body
        self.sessions.arm(call, side_of(call, dialog))

    def _needs_confirmation(self, call: SipCall, command: DialLeg) -> bool:
        """A forwarded leg presses 1 first when its line or its user says so (the carrier
        path's `confirm_answer`): a voicemail box that picks up must not take the call."""
        if command.via is not Channel.PHONE_NUMBER:
            return False
        directory = self.directory()
        line = directory.line(call.machine.plan.line) if call.machine.plan.line else None
        user = directory.user(command.user_id) if command.user_id else None
        return bool((line is not None and line.confirm_answer) or (user and user.confirm_answer))

    def _ask_to_confirm(self, call: SipCall, branch: _Branch) -> None:
        """Play "press 1" to the forwarded leg alone; the caller keeps ringing."""
        assert self.media is not None
        branch.confirming = True
        log.info("sip_leg_awaiting_confirmation", leg_id=branch.leg_id)
        self.media.collect_digits(call.call_id, branch.leg_id)
        timeout = self.media_options.confirm_timeout_seconds

        # The timer starts when the prompt ends (PlaybackDone); a cap covers a prompt that
        # never ends (a lost leg).
        self._arm_confirm(call, branch, timeout + 30.0)
        self._play_when_ready(
            call,
            branch.leg_id,
            self.prompts.confirm() if self.prompts is not None else _no_audio(),
            wanted=lambda: branch.confirming,
            failed=lambda: self._arm_confirm(call, branch, timeout),
            event="sip_confirm_prompt_failed",
        )

    def _play_when_ready(
        self,
        call: SipCall,
        leg: str,
        render: Coroutine[Any, Any, bytes],
        *,
        wanted: Callable[[], bool],
        failed: Callable[[], None],
        event: str,
    ) -> None:
        """Render a prompt (a task: espeak-ng may run for it), then play it to the leg if the
        call still wants it; `failed` when the engine cannot play it (logged as `event`)."""

        async def play() -> None:
            pcm = await render
            if not wanted() or call.call_id not in self._calls or self.media is None:
                return
            try:
                # a frame of silence after it, so the prompt's last word is not cut
                self.media.play(call.call_id, leg, pcm + bytes(320))
            except MediaError as exc:
                log.warning(event, reason=exc.reason)
                failed()

        self._spawn(play())

    def _arm_confirm(self, call: SipCall, branch: _Branch, seconds: float) -> None:
        if branch.confirm_timer is not None:
            self._cancel_timer(branch.confirm_timer)
        branch.confirm_timer = self._schedule(
            self._now() + seconds, lambda: self._confirmation(call, branch, "")
        )

    def _confirmation(self, call: SipCall, branch: _Branch, digit: str) -> None:
        """The forwarded leg pressed `digit` ("" : none in time): 1 answers it, anything else
        hangs it up, counted as not answered, and the plan goes on."""
        if not branch.confirming or call.call_id not in self._calls:
            return
        branch.confirming = False
        if branch.confirm_timer is not None:
            self._cancel_timer(branch.confirm_timer)
            branch.confirm_timer = None
        with call_context(call.call_id, leg_id=branch.leg_id):
            if self.media is not None:
                self.media.stop_playing(call.call_id, branch.leg_id)
                self.media.collect_digits(call.call_id, branch.leg_id, False)
            if digit == "1" and call.winner is None and branch.cancel_reason is None:
                log.info("sip_leg_confirmed")
                self.runner.leg_answered(call.run, branch.leg_id)
                return
            log.info("sip_leg_declined", digits=digit)
            leg = call.machine.leg(branch.leg_id)
            self.runner.publish_on(
                call.run, LegDeclined(branch.leg_id, leg.user_id if leg else None, digit)
            )
            self._bye(branch)
            branch.final = 603 if digit else 408
            self._leg_maybe_failed(call, branch, 480)

    def _media_event(self, event: MediaEvent) -> None:
        call = self._calls.get(event.call_id)
        if call is None:
            return
        with call_context(call.call_id):
            if isinstance(event, DtmfReceived):
                branch = self._confirming_branch(call, event.leg)
                if branch is not None:
                    self._confirmation(call, branch, event.digit)
            elif isinstance(event, PlaybackDone) and call.refusal is not None:
                self._refuse_now(call)
            elif isinstance(event, PlaybackDone):
                branch = self._confirming_branch(call, event.leg)
                if branch is not None:
                    self._arm_confirm(call, branch, self.media_options.confirm_timeout_seconds)
                elif event.leg == CALLER_LEG and call.voicemail_id is not None:
                    self._record_voicemail(call)
            elif isinstance(event, MessageRecorded):
                self._voicemail_recorded(call, event)
            elif isinstance(event, MediaConnected | MediaFailed):
                future = self._connecting.pop((call.call_id, event.leg), None)
                reason = event.reason if isinstance(event, MediaFailed) else None
                if future is not None and not future.done():
                    future.set_result(reason)
                    if reason is not None and self.media is not None:
                        self.media.release(call.call_id, event.leg)  # that app lost its turn
                elif (
                    reason is not None
                    and call.answered
                    and event.leg == app_leg(call.run.app_winner or "")
                ):
                    # lost after it was bridged (a DTLS close): the call cannot go on
                    log.warning("sip_app_media_failed", leg=event.leg, reason=reason)
                    self._end_after_session_timeout(call, Side.CALLEE)
            elif isinstance(event, MediaTimeout):
                log.warning("sip_media_timeout", leg=event.leg, silent=event.silent_seconds)
                self.metrics.sip_media_timeouts.inc()
                side = Side.CALLER if event.leg == CALLER_LEG else Side.CALLEE
                self._end_after_session_timeout(call, side)

    def _confirming_branch(self, call: SipCall, leg: str) -> _Branch | None:
        return next((b for b in call.branches.values() if b.leg_id == leg and b.confirming), None)

    # voicemail: answer, greeting + beep, record until #, silence, hang-up or the limit
    def _start_voicemail(self, call: SipCall, command: StartFallback) -> bool:
        """Take the message ourselves; False when it cannot be (no store, no caller media)."""
        media, store = self.media, self.messages
        if media is None or store is None or call.answered:
            return False
        plan = call.machine.plan
        user_id = plan.target_id if plan.target_kind == "user" else None
        group_id = plan.target_id if plan.target_kind == "ring_group" else None
        try:
            message_id, path = store.new_message(
                call.call_id,
                caller=call.run.live.caller,
                line=plan.line,
                user_id=user_id,
                group_id=group_id,
            )
        except Exception as exc:  # the store's own error: its folder cannot be written
            log.warning("sip_voicemail_unavailable", reason=str(exc))
            return False
        call.voicemail_id = message_id
        call.voicemail_path = path
        self._answer_caller(call, self._caller_body(call), "application/sdp")
        log.info("sip_voicemail_answered", voicemail_id=message_id)
        spec = command.step.prompt or self._voicemail_prompt(call)
        self._play_when_ready(
            call,
            CALLER_LEG,
            self.prompts.voicemail_greeting(spec) if self.prompts else _no_audio(),
            wanted=lambda: call.voicemail_id is not None,
            failed=lambda: self._record_voicemail(call),
            event="sip_voicemail_greeting_failed",
        )
        return True

    def _voicemail_prompt(self, call: SipCall) -> str | None:
        directory = self.directory()
        plan = call.machine.plan
        if plan.target_kind == "user" and plan.target_id:
            user = directory.user(plan.target_id)
            if user is not None and user.voicemail_prompt:
                return user.voicemail_prompt
        line = directory.line(plan.line) if plan.line else None
        return line.voicemail_prompt if line is not None else None

    def _record_voicemail(self, call: SipCall) -> None:
        if self.media is None or call.voicemail_id is None or call.voicemail_path is None:
            return
        options = self.media_options
        try:
            self.media.record_message(
                call.call_id,
                CALLER_LEG,
                call.voicemail_path,
                max_seconds=options.voicemail_max_seconds,
                silence_seconds=options.voicemail_silence_seconds,
            )
        except MediaError as exc:
            log.warning("sip_voicemail_record_failed", reason=exc.reason)
            self.runner.hangup(call.run, Side.CALLEE)

    def _voicemail_recorded(self, call: SipCall, event: MessageRecorded) -> None:
        if call.voicemail_id is None or event.leg != CALLER_LEG:
            return
        message_id, call.voicemail_id = call.voicemail_id, None
        log.info(
            "sip_voicemail_recorded",
            voicemail_id=message_id,
            seconds=round(event.duration_seconds, 1),
            ended_by=event.ended_by,
        )
        if self.messages is not None:
            self.messages.message_recorded(message_id, event.duration_seconds, event.ended_by)
        self.runner.publish_on(
            call.run, VoicemailLeft(message_id, round(event.duration_seconds, 2), event.ended_by)
        )
        if event.ended_by != "hangup":  # the caller is still there: goodbye (the call core's
            self.runner.hangup(call.run, Side.CALLEE)  # HangupLeg sends the BYE)

    # supervisors: an INVITE from the bridge to their desk phone or number
    def supervisable(self, call_id: str) -> SipCall | None:
        return self._calls.get(call_id)

    def dial_supervisor(
        self, call: SipCall, user_id: str, mode: str, via: str, number: str | None
    ) -> SipMonitor:
        """Ring the supervisor; they join in `mode` when they answer."""
        if self.media is None:
            raise MediaError("no media engine")
        if via == "client":
            return self._offer_supervisor_app(call, user_id, mode)
        targets: list[tuple[str, Address, str]] = []
        if via == "ip_phone":
            for binding in self.bindings.reachable_bindings(user_id, self._now()):
                flow = binding.flow
                targets.append((binding.uri, (flow.host, flow.port), flow.transport))
            if not targets:
                raise MediaError("the supervisor has no registered desk phone")
            to = f"ip_phone:{user_id}"
        else:
            trunk = self.trunk.destination()
            if trunk is None or not number:
                raise MediaError("no trunk to reach the supervisor's number (sip.trunk_uri)")
            host, destination, transport = trunk
            targets.append((f"sip:{number}@{host}", destination, transport))
            to = number
        leg = supervisor_leg(user_id)
        srtp = self._srtp_over([transport for _, _, transport in targets])
        offer = self.media.offer(call.call_id, leg, like=CALLER_LEG, srtp=srtp).encode()
        monitor = SipMonitor(user_id, mode, via, to)
        call.monitors[user_id] = monitor
        for uri, destination, transport in targets:
            invite = self._leg_invite(call, uri, transport, [], body=offer)
            # the supervisor sees the line, not the caller, as who is calling
            line = call.machine.plan.line or "bridge"
            invite.headers.set("From", f"<sip:{line}@{self.realm}>;tag={random_hex(5)}")
            transaction_id = self._send_request(invite, destination, transport)
            branch = _Branch(
                leg_id=leg,
                invite=invite,
                transaction_id=transaction_id,
                destination=destination,
                transport=transport,
                dialogs=DialogSet(invite, tls=False),
                supervisor=user_id,
            )
            call.branches[transaction_id] = branch
            self._by_branch[transaction_id] = (call, branch)
        monitor.timer = self._schedule(
            self._now() + self.media_options.monitor_ring_seconds,
            lambda: self._monitor_ring_timeout(call, monitor),
        )
        log.info("sip_monitor_dialed", user_id=user_id, mode=mode, via=via)
        return monitor

    def _offer_supervisor_app(self, call: SipCall, user_id: str, mode: str) -> SipMonitor:
        """`via="client"`: the engine's WebRTC offer to every app session of the supervisor
        (`monitor.offer`); they join once an app answers (`answer_supervisor`) and its audio
        is up."""
        assert self.media is not None
        offers = self.runner.offers
        if offers is None:
            raise MediaError("this daemon has no app sessions (WebSocket) to reach the supervisor")
        leg = supervisor_leg(user_id)
        sdp = self.media.offer(call.call_id, leg, like=CALLER_LEG, webrtc=True)
        if not offers.offer_monitor(call.call_id, user_id, mode, sdp):
            self.media.release(call.call_id, leg)
            raise MediaError("the supervisor has no app session connected")
        monitor = SipMonitor(user_id, mode, "client", f"client:{user_id}")
        call.monitors[user_id] = monitor
        monitor.timer = self._schedule(
            self._now() + self.media_options.monitor_ring_seconds,
            lambda: self._monitor_ring_timeout(call, monitor),
        )
        log.info("sip_monitor_offered", user_id=user_id, mode=mode, via="client")
        return monitor

    async def answer_supervisor(self, call: SipCall, monitor: SipMonitor, sdp: str) -> None:
        """The supervisor's app answered its `monitor.offer`: in the call in its mode once
        the audio is up. `AnswerRefused` for an unusable answer (the offer still waits),
        `MediaError` when the audio could not be set up (the join is over)."""
        media = self.media
        assert media is not None
        try:
            media.accept(call.call_id, monitor.leg, sdp)
        except MediaError as exc:
            raise AnswerRefused(f"the SDP answer cannot be used: {exc.reason}") from None
        if media.connecting(call.call_id, monitor.leg):
            future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            self._connecting[(call.call_id, monitor.leg)] = future
            failed = await future
            if failed is not None:
                self._end_monitor(call, monitor, bye=False, why=failed)
                raise MediaError(failed)
        if call.monitors.get(monitor.user_id) is not monitor or monitor.status != "dialing":
            raise MediaError("the join was given up meanwhile")
        media.monitor(call.call_id, monitor.leg, monitor.mode)
        monitor.status = "in-progress"
        if monitor.timer is not None:
            self._cancel_timer(monitor.timer)
            monitor.timer = None
        log.info("sip_monitor_joined", user_id=monitor.user_id, mode=monitor.mode, via="client")

    def _monitor_ring_timeout(self, call: SipCall, monitor: SipMonitor) -> None:
        monitor.timer = None
        if monitor.status == "dialing":
            self._end_monitor(call, monitor, bye=True, why="no answer")

    def _supervisor_answered(self, call: SipCall, branch: _Branch, response: SipResponse) -> None:
        monitor = call.monitors.get(branch.supervisor or "")
        if monitor is None or monitor.status != "dialing" or self.media is None:
            self._bye(branch)  # joined already on another phone, or given up
            return
        try:
            self.media.accept(
                call.call_id,
                monitor.leg,
                response.body.decode("utf-8", "replace"),
                source=branch.destination[0],
            )
            self.media.monitor(call.call_id, monitor.leg, monitor.mode)
        except MediaError as exc:
            log.warning("sip_monitor_media_failed", reason=exc.reason)
            self._bye(branch)
            self._end_monitor(call, monitor, bye=True, why=exc.reason)
            return
        monitor.status = "in-progress"
        monitor.dialog = branch.dialog
        monitor.destination, monitor.transport = branch.destination, branch.transport
        for other in call.branches.values():  # their other phones stop ringing
            if other.supervisor == monitor.user_id and other is not branch and other.final is None:
                other.cancel_reason = ANSWERED_ELSEWHERE
                if other.provisional:
                    self._send_cancel(other)
        if monitor.timer is not None:
            self._cancel_timer(monitor.timer)
            monitor.timer = None
        log.info("sip_monitor_joined", user_id=monitor.user_id, mode=monitor.mode)

    def _supervisor_failed(self, call: SipCall, branch: _Branch, status: int) -> None:
        monitor = call.monitors.get(branch.supervisor or "")
        if monitor is None or monitor.status != "dialing":
            return
        siblings = [b for b in call.branches.values() if b.supervisor == monitor.user_id]
        if any(b.final is None for b in siblings):
            return
        self._end_monitor(call, monitor, bye=False, why=f"their phone answered {status}")

    def switch_supervisor(self, call: SipCall, monitor: SipMonitor, mode: str) -> None:
        monitor.mode = mode
        if monitor.status == "in-progress" and self.media is not None:
            self.media.monitor(call.call_id, monitor.leg, mode)
        log.info("sip_monitor_switched", user_id=monitor.user_id, mode=mode)

    def _end_monitor(
        self, call: SipCall, monitor: SipMonitor, *, bye: bool, why: str = "stopped"
    ) -> None:
        """The supervisor's leg leaves the call: BYE (or CANCEL while it rings), media freed."""
        if call.monitors.get(monitor.user_id) is not monitor:
            return
        del call.monitors[monitor.user_id]
        previous, monitor.status = monitor.status, "ended"
        if monitor.timer is not None:
            self._cancel_timer(monitor.timer)
            monitor.timer = None
        for branch in call.branches.values():
            if branch.supervisor != monitor.user_id:
                continue
            if branch.final is None and branch.cancel_reason is None:
                branch.cancel_reason = ""
                if branch.provisional:
                    self._send_cancel(branch)
            elif bye and branch.dialog is not None and branch.final and branch.final < 300:
                try:
                    self._bye(branch)
                except DialogError as exc:
                    log.info("sip_monitor_bye_skipped", error=str(exc))
        if self.media is not None:
            self.media.release(call.call_id, monitor.leg)
        future = self._connecting.pop((call.call_id, monitor.leg), None)
        if future is not None and not future.done():
            future.set_result(why)
        if monitor.via == "client" and self.runner.offers is not None:
            self.runner.offers.end_monitor(call.call_id, monitor.user_id, why)
        log.info("sip_monitor_left", user_id=monitor.user_id, was=previous, why=why)

    def drop_supervisor(self, call: SipCall, monitor: SipMonitor) -> None:
        self._end_monitor(call, monitor, bye=True)

    def _monitor_of(self, call: SipCall, dialog: Dialog) -> SipMonitor | None:
        if not call.monitors:
            return None
        return next((m for m in call.monitors.values() if m.dialog is dialog), None)

    def _monitor_request(
        self,
        call: SipCall,
        monitor: SipMonitor,
        dialog: Dialog,
        transaction_id: str,
        request: SipRequest,
    ) -> None:
        """A request on a supervisor's dialog: their BYE ends their session only."""
        if request.method in ("INVITE", "UPDATE"):
            self._answer_locally(call, monitor.leg, dialog, transaction_id, request)
            return
        response = _reply(request, 200, "OK")
        dialog.response_sent(request, response)
        self._respond(transaction_id, response)
        if request.method == "BYE":
            self._forget_dialog(dialog)
            for branch in call.branches.values():
                if branch.dialog is dialog:
                    branch.dialog = None
            self._end_monitor(call, monitor, bye=False, why="the supervisor hung up")

    # -- responses and timeouts of our INVITEs ------------------------------------------------
    def owns(self, transaction_id: str) -> bool:
        return (
            transaction_id in self._by_branch
            or transaction_id in self._relays
            or self.sessions.owns(transaction_id)
            or transaction_id in self._unanswered
        )

    def response(self, transaction_id: str, response: SipResponse) -> None:
        if self.sessions.owns(transaction_id):
            self.sessions.response(transaction_id, response)
            return
        relay = self._relays.get(transaction_id)
        if relay is not None:
            with call_context(relay.call.call_id):
                self._relayed_response(relay, response)
            return
        found = self._by_branch.get(transaction_id)
        if found is None:
            late = self._unanswered.get(transaction_id)
            if late is not None and 200 <= response.status < 300:
                self._hang_up_late_answer(late, response)
            return
        call, branch = found
        if branch.trunk and self.trunk.overload_control:
            self._trunk_feedback(response)
        with call_context(call.call_id):
            self._branch_response(call, branch, response)

    def _hang_up_late_answer(self, branch: _Branch, response: SipResponse) -> None:
        """A 2xx to a leg of a call already over (it crossed our CANCEL): ACKed and hung up.
        Before, nothing was sent: the phone re-sent its 200 for 32 s and held the call."""
        try:
            dialog = branch.dialogs.receive_response(response)
        except DialogError:
            return
        if dialog is None:
            return
        self._ack(branch, dialog)
        if branch.final is None:  # (its retransmissions are only ACKed)
            branch.final = response.status
            log.info("sip_late_answer_hung_up", leg_id=branch.leg_id)
            self._bye(branch, dialog)

    def _trunk_feedback(self, response: SipResponse) -> None:
        """RFC 7339 §5.3: newer loss feedback in the trunk's response is taken."""
        line = response.headers.get("Via")
        if line is None or "oc" not in line:
            return
        feedback, now = self.trunk_feedback, self._now()
        before = feedback.active(now)
        if feedback.receive(now, line) and feedback.percent != before:
            log.info(
                "sip_trunk_overload_feedback",
                percent=feedback.percent,
                validity_ms=round((feedback.until - now) * 1000),
            )

    def _trunk_admits(self) -> bool:
        """A new call to the trunk, against its loss feedback (RFC 7339 §6): sent, or held
        back (the leg fails as if the trunk had answered 503)."""
        if not self.trunk.overload_control:
            return True
        now = self._now()
        if self.trunk_feedback.admits(now, self._draw()):
            return True
        self.metrics.sip_trunk_held_back.inc()
        log.info("sip_trunk_call_held_back", percent=self.trunk_feedback.active(now))
        return False

    def failed(self, transaction_id: str, reason: str) -> None:
        """Timer B or a transport error on one of our INVITEs: like a 408 from the phone."""
        if self.sessions.owns(transaction_id):
            self.sessions.response(transaction_id, SipResponse(408, "Request Timeout"))
            return
        relay = self._relays.get(transaction_id)
        if relay is not None:
            timeout = SipResponse(408, "Request Timeout")
            with call_context(relay.call.call_id):
                self._relayed_response(relay, timeout)
            return
        found = self._by_branch.pop(transaction_id, None)
        if found is None:
            return
        call, branch = found
        with call_context(call.call_id):
            log.info("sip_leg_no_answer", leg_id=branch.leg_id, reason=reason)
            branch.final = 408
            self._leg_maybe_failed(call, branch, 408)

    def _branch_response(self, call: SipCall, branch: _Branch, response: SipResponse) -> None:
        status = response.status
        try:
            dialog = branch.dialogs.receive_response(response)
        except DialogError as exc:
            log.info("sip_bad_response", error=str(exc), status=status)
            dialog = None
        if status < 200:
            if status == 100:
                return
            branch.provisional = True
            if branch.cancel_reason is not None and not branch.cancelled:
                self._send_cancel(branch)
                return
            if branch.supervisor is not None:
                return
            # Anchored calls take no early media from a leg: the caller hears its own ring-back
            # until a leg answers (and a forwarded leg's announcements are not the caller's).
            early = bool(response.body) and status == 183 and self.media is None
            if early:
                branch.answer = response  # the SDP the caller hears while it rings
            self.runner.leg_ringing(call.run, branch.leg_id, early_media=early)
            return
        if 200 <= status < 300:
            if dialog is None:
                return
            if branch.final is not None and branch.final >= 200 and branch.dialog is not None:
                self._ack(branch, dialog)  # (§13.2.2.4: every 2xx is ACKed, in its dialog)
                if dialog is not branch.dialog:
                    # Another fork answered too (another To tag): that dialog is not ours to
                    # keep; hung up (it was ACKed in the first one's name and left up).
                    log.info("sip_second_answer_hung_up", leg_id=branch.leg_id)
                    self._bye(branch, dialog)
                return
            branch.final = status
            branch.answer = response
            branch.dialog = dialog
            self._dialogs.add(dialog)
            self._dialog_calls[dialog.id] = call
            self._ack(branch, dialog)
            if branch.supervisor is not None:
                self._supervisor_answered(call, branch, response)
                return
            if branch.cancelled or branch.cancel_reason is not None or call.winner is not None:
                # The CANCEL/200 race: this phone answered after someone else won.
                log.info("sip_late_answer_hung_up", leg_id=branch.leg_id)
                self._bye(branch)
                return
            if self.media is not None:
                try:
                    self.media.accept(
                        call.call_id,
                        branch.leg_id,
                        response.body.decode("utf-8", "replace"),
                        source=branch.destination[0],
                    )
                except MediaError as exc:
                    self._answer_unusable(call, branch, exc.reason)
                    return
                if branch.confirm:
                    self._ask_to_confirm(call, branch)
                    return
            elif call.anchored and self.relay is not None:
                try:  # joined by rtpengine if it wins (`_bridge`): checked now
                    self.relay.check(response.body.decode("utf-8", "replace"))
                except MediaError as exc:
                    self._answer_unusable(call, branch, exc.reason)
                    return
            else:
                # End to end, the caller gets this body. Our INVITEs offer no 100rel, so no
                # reliable provisional can have held the SDP: the 2xx must (RFC 3261 §13.2.1),
                # the answer to the caller's offer, or the offer of an offerless INVITE.
                problem = _unrelayable_answer(response)
                if problem is not None:
                    self._answer_unusable(call, branch, problem)
                    return
            self.runner.leg_answered(call.run, branch.leg_id)
            return
        if status in (401, 407) and self._answer_challenge(call, branch, response):
            return
        if status == 422 and self._raise_interval(call, branch, response):
            return
        branch.final = status
        self._by_branch.pop(branch.transaction_id, None)
        self._leg_maybe_failed(call, branch, status)

    def _answer_challenge(self, call: SipCall, branch: _Branch, response: SipResponse) -> bool:
        """The provider challenged our INVITE: send it again with credentials, once."""
        trunk = self.trunk
        if not branch.trunk or branch.authenticated or not trunk.username or branch.cancelled:
            return False
        invite = branch.invite
        answer = authorize(
            response.status,
            response.headers.get_all(challenge_header(response.status)),
            method="INVITE",
            uri=invite.uri,
            username=trunk.username,
            password=trunk.password or "",
        )
        if answer is None:
            log.warning("sip_trunk_challenge_unanswerable", status=response.status)
            return False
        headers = invite.headers.copy()
        number, _, _ = (headers.get("CSeq") or "1 INVITE").partition(" ")
        headers.set("CSeq", f"{int(number) + 1} INVITE")
        headers.set(*answer)
        branch.authenticated = True
        self._resend_branch(call, branch, SipRequest("INVITE", invite.uri, headers, invite.body))
        log.info("sip_trunk_challenge_answered", status=response.status)
        return True

    def _raise_interval(self, call: SipCall, branch: _Branch, response: SipResponse) -> bool:
        """The phone wants a longer session interval (422, RFC 4028 §6): ask again, once."""
        if branch.interval_raised or branch.cancelled or branch.cancel_reason is not None:
            return False
        try:
            again = retry_after_422(branch.invite, response)
        except DialogError:
            return False
        branch.interval_raised = True
        self._resend_branch(call, branch, again)
        log.info("sip_leg_interval_raised", leg_id=branch.leg_id)
        return True

    def _resend_branch(self, call: SipCall, branch: _Branch, again: SipRequest) -> None:
        """Send a branch's INVITE again (after a challenge or a 422), in its place: a new
        transaction, so a fresh Via branch."""
        local = self._local(branch.transport)
        via = f"SIP/2.0/{branch.transport.upper()} {local.sent_by};branch={new_branch()};rport"
        if branch.trunk and self.trunk.overload_control:
            via += OC_CLIENT_PARAMS
        again.headers.set("Via", via)
        self._by_branch.pop(branch.transaction_id, None)
        del call.branches[branch.transaction_id]
        transaction_id = self._send_request(again, branch.destination, branch.transport)
        branch.invite, branch.transaction_id = again, transaction_id
        branch.dialogs = DialogSet(again, tls=False)
        call.branches[transaction_id] = branch
        self._by_branch[transaction_id] = (call, branch)

    def _answer_unusable(self, call: SipCall, branch: _Branch, reason: str) -> None:
        """A phone's (or the provider's) 2xx whose SDP cannot be used: the leg is hung up and
        fails as a 488 would, so the call goes on to its next leg or step."""
        log.warning("sip_leg_answer_unusable", leg_id=branch.leg_id, reason=reason)
        self._bye(branch)
        branch.final = 488
        self._leg_maybe_failed(call, branch, 488)

    def _leg_maybe_failed(self, call: SipCall, branch: _Branch, status: int) -> None:
        if branch.supervisor is not None:
            self._supervisor_failed(call, branch, status)
            return
        siblings = [b for b in call.branches.values() if b.leg_id == branch.leg_id]
        if any(b.final is None or 200 <= b.final < 300 for b in siblings):
            return  # another contact of the same user is still ringing (or answered)
        if any(b.cancel_reason is not None or b.cancelled for b in siblings):
            return  # we stopped this leg ourselves; the machine knows
        self.runner.leg_failed(call.run, branch.leg_id, LegFailure.from_sip_status(status))

    # -- LegDriver: the call core's commands, from the runner ----------------------------------
    def dial(self, run: RunningCall, command: DialLeg) -> None:
        call = self._calls.get(run.call_id)
        if call is not None:
            self._dial(call, command)

    def cancel_leg(self, run: RunningCall, command: CancelLeg) -> None:
        call = self._calls.get(run.call_id)
        if call is None:
            return
        reason = (
            ANSWERED_ELSEWHERE
            if command.reason is LegReason.ANSWERED_ELSEWHERE
            else call.gone_reason
        )
        call.dialing.discard(command.leg_id)  # not INVITEd yet: it never will be
        for branch in self._branches(call, command.leg_id):
            if branch.confirming:  # answered, still asked to press 1: hang it up
                branch.confirming = False
                if branch.confirm_timer is not None:
                    self._cancel_timer(branch.confirm_timer)
                    branch.confirm_timer = None
                branch.cancel_reason = reason or ""
                self._bye(branch)
                continue
            if branch.final is None and branch.cancel_reason is None:
                branch.cancel_reason = reason or ""
                if branch.provisional:
                    self._send_cancel(branch)

    def bridge(self, run: RunningCall, command: BridgeTo) -> None:
        call = self._calls.get(run.call_id)
        if call is not None:
            self._bridge(call, command.leg_id)

    def hang_up(self, run: RunningCall, command: HangupLeg) -> None:
        call = self._calls.get(run.call_id)
        if call is None:
            return
        if command.leg_id == run.machine.caller_leg_id:
            self._hangup_caller(call)
        elif run.app_winner is not None:
            pass  # no SIP far side: the app hears `call.state ended` from the runner
        else:
            for branch in self._branches(call, command.leg_id):
                if branch.dialog is not None and branch.final and branch.final < 300:
                    self._bye(branch)

    def reject(self, run: RunningCall, command: RejectCaller) -> None:
        call = self._calls.get(run.call_id)
        if call is None or call.answered:
            return
        call.answered = True
        extra = [("Reason", format_reason(command.status, command.reason))]
        phrase = _REASON_PHRASES.get(command.status, command.reason)
        refusal = self._caller_reply(call, command.status, phrase, extra)
        if command.prompt and self._announce_then_refuse(call, command.prompt, refusal):
            return
        self._respond(call.transaction_id, refusal)

    def _announce_then_refuse(self, call: SipCall, spec: str, refusal: SipResponse) -> bool:
        """The refusal's prompt ("we are closed") played to the caller as early media (183
        with the engine's SDP), then the refusal itself; False when it cannot be played."""
        if self.media is None or self.prompts is None or call.caller_answer is None:
            return False
        sdp = [("Content-Type", "application/sdp")]
        if not self._provisional(call, 183, "Session Progress", sdp, call.caller_answer.encode()):
            return False
        call.refusal = refusal
        # a prompt that never ends (a lost caller) still gets its refusal
        call.refusal_timer = self._schedule(
            self._now() + _ANNOUNCEMENT_MAX_SECONDS, lambda: self._refuse_now(call)
        )
        log.info("sip_refusal_announced", status=refusal.status)
        self._play_when_ready(
            call,
            CALLER_LEG,
            self.prompts.announcement(spec),
            wanted=lambda: call.refusal is not None,
            failed=lambda: self._refuse_now(call),
            event="sip_announcement_failed",
        )
        return True

    def _refuse_now(self, call: SipCall) -> None:
        """Send the held refusal (the prompt ended, or the caller went away), then forget the
        call."""
        refusal, call.refusal = call.refusal, None
        if call.refusal_timer is not None:
            self._cancel_timer(call.refusal_timer)
            call.refusal_timer = None
        if call.expiry_timer is not None:
            self._cancel_timer(call.expiry_timer)
            call.expiry_timer = None
        if refusal is not None:
            try:
                self._respond(call.transaction_id, refusal)
            except Exception:  # the INVITE transaction is gone (the caller gave up)
                log.info("sip_refusal_not_sent")
        self._finish(call)

    def start_fallback(self, run: RunningCall, command: StartFallback) -> None:
        call = self._calls.get(run.call_id)
        if call is None:
            return
        if command.step.action is FallbackAction.VOICEMAIL and self._start_voicemail(call, command):
            return
        if command.step.action is FallbackAction.VOICEMAIL and not call.answered:
            # No media engine (or nowhere to store the message): refuse, and say why.
            call.answered = True
            extra = [("Reason", format_reason(480, "voicemail"))]
            self._respond(
                call.transaction_id,
                self._caller_reply(call, 480, "Temporarily Unavailable", extra),
            )
            self.runner.feed_later(run, run.machine.voicemail_unavailable)

    def ring_caller(self, run: RunningCall, command: RingCaller) -> None:
        call = self._calls.get(run.call_id)
        if call is not None:
            self._ring_caller(call, command)

    def app_answer_refused(self, run: RunningCall, user_id: str, sdp: str | None) -> str | None:
        call = self._calls.get(run.call_id)
        if call is None or call.answered or call.winner is not None:
            return "the call is answered already"
        if self.media is not None:
            if not sdp:
                raise AnswerRefused("an accept on the SIP path needs the SDP answer (sdp)")
            try:
                self.media.accept(call.call_id, app_leg(user_id), sdp)
            except MediaError as exc:
                raise AnswerRefused(f"the SDP answer cannot be used: {exc.reason}") from None
            return None
        if call.anchored and self.relay is not None:
            if not sdp:
                raise AnswerRefused("an accept on the SIP path needs the SDP answer (sdp)")
            try:  # rtpengine joins the app if it wins (`_bridge_app`)
                self.relay.check(sdp, webrtc=True)
            except MediaError as exc:
                raise AnswerRefused(f"the SDP answer cannot be used: {exc.reason}") from None
            return None
        if call.invite.body and not sdp:
            return "the caller made an SDP offer: an answer without SDP cannot be bridged"
        return None

    def app_media_ready(self, run: RunningCall, user_id: str) -> asyncio.Future[str | None] | None:
        """For an accepted app whose transport is still being set up (a browser's ICE and
        DTLS): a future of None once it carries audio, or of the reason it failed. None when
        there is nothing to wait for."""
        media = self.media
        leg = app_leg(user_id)
        if media is None or not media.connecting(run.call_id, leg):
            return None
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._connecting[(run.call_id, leg)] = future
        return future

    def _release_app_legs(self, call: SipCall, *, but: str | None = None) -> None:
        """The other app users' media legs, once the call is answered (their offers end)."""
        if call.anchored:
            for user_id in call.run.app_legs:
                if user_id != but:
                    self._release_relayed(call.call_id, app_leg(user_id))
            return
        if self.media is None:
            return
        for user_id in call.run.app_legs:
            if user_id != but:
                self.media.release(call.call_id, app_leg(user_id))
                future = self._connecting.pop((call.call_id, app_leg(user_id)), None)
                if future is not None and not future.done():
                    future.set_result("the call was answered elsewhere")

    def _app_offer(self, call: SipCall, user_id: str) -> str | None:
        """The SDP an app user is offered: the media engine's WebRTC offer, on a leg of theirs."""
        if self.media is None:
            return call.run.caller_sdp
        try:
            return self.media.offer(call.call_id, app_leg(user_id), like=CALLER_LEG, webrtc=True)
        except MediaError as exc:
            log.warning("sip_app_offer_failed", reason=exc.reason)
            return None

    async def _relayed_app_offer(self, call: SipCall, user_id: str) -> str | None:
        """`_app_offer` on a relayed call: rtpengine's WebRTC offer (ICE, DTLS-SRTP) of the
        caller's audio, on a branch of the app user's."""
        assert self.relay is not None
        try:
            return await self.relay.offer(call.call_id, app_leg(user_id), webrtc=True)
        except MediaError as exc:
            log.warning("sip_app_offer_failed", reason=exc.reason)
            return None

    def _release_relayed(self, call_id: str, leg: str | None = None) -> None:
        """Free a leg's ports on rtpengine, or the whole call's (None), in the background."""
        relay = self.relay
        if relay is None:
            return

        async def release() -> None:
            try:
                await relay.release(call_id, leg)
            except MediaError as exc:
                log.warning("sip_relay_release_failed", call_id=call_id, leg=leg, reason=exc.reason)

        self._spawn(release())

    def leg_reference(self, run: RunningCall, leg_id: str) -> str | None:
        return None

    def ended(self, run: RunningCall) -> None:
        call = self._calls.get(run.call_id)
        if call is not None and call.refusal is None:
            self._finish(call)
        # else: kept until its refusal's prompt has played (`_refuse_now`)

    def _srtp_over(self, transports: Iterable[str]) -> str:
        """The SRTP policy of a leg signalled over these transports (a user's phones get one
        offer): the setting when every one is TLS, best effort ("optional") when only some
        are, none over UDP and TCP, where the keys would travel in clear."""
        over_tls = [t.lower() == "tls" for t in transports]
        if self.srtp == "off" or not any(over_tls):
            return "off"
        return self.srtp if all(over_tls) else "optional"

    def _leg_srtp(self, call: SipCall, leg: str) -> str:
        """The SRTP policy of one of the call's legs, for its re-INVITEs."""
        if leg == CALLER_LEG:
            return self._srtp_over((call.transport,))
        winner = call.winner
        if winner is not None and winner.leg_id == leg:
            return self._srtp_over((winner.transport,))
        for monitor in call.monitors.values():
            if monitor.leg == leg:
                return self._srtp_over((monitor.transport,))
        return "off"

    def _dial(self, call: SipCall, command: DialLeg) -> None:
        now = self._now()
        targets: list[tuple[str, Address, str, list[tuple[str, str]]]] = []
        if command.via is Channel.IP_PHONE and command.user_id is not None:
            for binding in self.bindings.reachable_bindings(command.user_id, now):
                flow = binding.flow
                targets.append((binding.uri, (flow.host, flow.port), flow.transport, []))
        elif command.via is Channel.PHONE_NUMBER and command.number:
            trunk = self.trunk.destination()
            if trunk is not None and self._trunk_admits():
                host, destination, transport = trunk
                extra = []
                if command.diversion is not None and command.diversion.line:
                    extra.append(
                        (
                            "Diversion",
                            f"<sip:{command.diversion.line}@{self.realm}>;reason={command.diversion.reason.value}",
                        )
                    )
                elif call.machine.plan.line:
                    extra.append(
                        (
                            "Diversion",
                            f"<sip:{call.machine.plan.line}@{self.realm}>;reason=no-answer",
                        )
                    )
                targets.append((f"sip:{command.number}@{host}", destination, transport, extra))
        if not targets:
            # No registered phone, no trunk (or its RFC 7339 feedback held this call back),
            # or an app user (the WebSocket path comes later).
            leg_id = command.leg_id
            self.runner.feed_later(
                call.run, lambda now: call.machine.leg_failed(leg_id, LegFailure.UNREACHABLE, now)
            )
            return
        if call.anchored:
            call.dialing.add(command.leg_id)
            self._spawn(self._dial_relayed(call, command, targets))
            return
        offer: bytes | None = None
        if self.media is not None:
            try:
                srtp = self._srtp_over([transport for _, _, transport, _ in targets])
                offer = self.media.offer(
                    call.call_id, command.leg_id, like=CALLER_LEG, srtp=srtp
                ).encode()
            except MediaError as exc:
                log.warning("sip_leg_media_failed", leg_id=command.leg_id, reason=exc.reason)
                leg_id = command.leg_id
                self.runner.feed_later(
                    call.run,
                    lambda now: call.machine.leg_failed(leg_id, LegFailure.UNREACHABLE, now),
                )
                return
        confirm = self.media is not None and self._needs_confirmation(call, command)
        self._send_leg_invites(call, command, targets, offer, confirm=confirm)

    async def _dial_relayed(
        self,
        call: SipCall,
        command: DialLeg,
        targets: list[tuple[str, Address, str, list[tuple[str, str]]]],
    ) -> None:
        """`_dial` on a relayed call: rtpengine's offer for the leg first (a round trip), then
        the INVITEs, unless the leg was cancelled meanwhile."""
        assert self.relay is not None
        leg_id = command.leg_id
        try:
            offer = await self.relay.offer(call.call_id, leg_id)
        except MediaError as exc:
            if leg_id in call.dialing and self._calls.get(call.call_id) is call:
                call.dialing.discard(leg_id)
                with call_context(call.call_id, leg_id=leg_id):
                    log.warning("sip_leg_media_failed", leg_id=leg_id, reason=exc.reason)
                self.runner.feed_later(
                    call.run,
                    lambda now: call.machine.leg_failed(leg_id, LegFailure.UNREACHABLE, now),
                )
            return
        if leg_id not in call.dialing or self._calls.get(call.call_id) is not call:
            self._release_relayed(call.call_id, leg_id)  # cancelled while rtpengine was asked
            return
        call.dialing.discard(leg_id)
        with call_context(call.call_id):
            self._send_leg_invites(call, command, targets, offer.encode(), confirm=False)

    def _send_leg_invites(
        self,
        call: SipCall,
        command: DialLeg,
        targets: list[tuple[str, Address, str, list[tuple[str, str]]]],
        offer: bytes | None,
        *,
        confirm: bool,
    ) -> None:
        for uri, destination, transport, extra in targets:
            trunk_leg = command.via is Channel.PHONE_NUMBER
            invite = self._leg_invite(call, uri, transport, extra, trunk_leg=trunk_leg, body=offer)
            transaction_id = self._send_request(invite, destination, transport)
            branch = _Branch(
                leg_id=command.leg_id,
                invite=invite,
                transaction_id=transaction_id,
                destination=destination,
                transport=transport,
                dialogs=DialogSet(invite, tls=False),
                trunk=command.via is Channel.PHONE_NUMBER,
                confirm=confirm,
            )
            call.branches[transaction_id] = branch
            self._by_branch[transaction_id] = (call, branch)
            log.info("sip_leg_dialed", leg_id=command.leg_id, user_id=command.user_id, uri=uri)

    def _leg_invite(
        self,
        call: SipCall,
        uri: str,
        transport: str,
        extra: list[tuple[str, str]],
        *,
        trunk_leg: bool = False,
        body: bytes | None = None,
    ) -> SipRequest:
        local = self._local(transport)
        caller = call.invite.headers.get("From") or "<sip:anonymous@anonymous.invalid>"
        try:
            caller_addr = parse_name_addr(caller)
            display = f'"{caller_addr.display}" ' if caller_addr.display else ""
            from_value = f"{display}<{caller_addr.uri}>"
        except SipSyntaxError:
            from_value = "<sip:anonymous@anonymous.invalid>"
        if trunk_leg and call.caller_id is not None:
            # A desk phone calling out: the provider sees the user's own number.
            from_value = f"<sip:{call.caller_id}@{self.realm}>"
        elif trunk_leg and self.trunk.caller_id == "line" and call.machine.plan.line:
            # Providers that only accept their own numbers as caller id: show the line.
            from_value = f"<sip:{call.machine.plan.line}@{self.realm}>"
        via = f"SIP/2.0/{transport.upper()} {local.sent_by};branch={new_branch()};rport"
        if trunk_leg and self.trunk.overload_control:
            via += OC_CLIENT_PARAMS  # RFC 7339 §5.1: we do loss-based overload control
        headers = Headers(
            [
                ("Via", via),
                ("Max-Forwards", str(min(_hops_left(call.invite), MAX_FORWARDS) - 1)),
                ("From", f"{from_value};tag={random_hex(5)}"),
                ("To", f"<{uri}>"),
                ("Call-ID", f"{random_hex(10)}@{self.realm}"),
                ("CSeq", "1 INVITE"),
                ("Contact", f"<sip:bridge@{local.sent_by};transport={transport.lower()}>"),
                ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"),
                *self.sessions.leg_headers(call.invite),
                *extra,
            ]
        )
        if body is not None:
            headers.add("Content-Type", "application/sdp")
            return SipRequest("INVITE", uri, headers, body)
        content_type = call.invite.headers.get("Content-Type")
        if call.invite.body and content_type:
            headers.add("Content-Type", content_type)
        return SipRequest("INVITE", uri, headers, call.invite.body)

    def _send_cancel(self, branch: _Branch) -> None:
        branch.cancelled = True
        cancel = build_cancel(branch.invite, branch.cancel_reason or None)
        self._send_request(cancel, branch.destination, branch.transport)

    def _ack(self, branch: _Branch, dialog: Dialog) -> None:
        ack = dialog.create_ack(1, via=self._local(branch.transport))
        self._send_stateless(ack, branch.destination, branch.transport)

    def _bye(self, branch: _Branch, dialog: Dialog | None = None) -> None:
        """BYE on the branch's dialog, or on `dialog` (another the branch's INVITE made)."""
        dialog = dialog or branch.dialog
        if dialog is None:
            return
        bye = dialog.create_request("BYE", via=self._local(branch.transport))
        self._forget_dialog(dialog)
        self._send_request(bye, branch.destination, branch.transport)

    def _bridge(self, call: SipCall, leg_id: str) -> None:
        app_user = call.run.app_user_of(leg_id)
        if app_user is not None:
            self._bridge_app(call, app_user)
            return
        winner = next(
            (
                b
                for b in self._branches(call, leg_id)
                if b.final is not None and 200 <= b.final < 300
            ),
            None,
        )
        if winner is None or winner.answer is None:
            return
        call.winner = winner
        for branch in self._branches(call, leg_id):  # the user's other phones stop ringing
            if branch is not winner and branch.final is None and branch.cancel_reason is None:
                branch.cancel_reason = ANSWERED_ELSEWHERE
                if branch.provisional:
                    self._send_cancel(branch)
        if self.media is not None:
            try:
                self.media.bridge(call.call_id, CALLER_LEG, leg_id)
            except MediaError as exc:
                log.warning("sip_bridge_failed", reason=exc.reason)
            self._answer_caller(call, self._caller_body(call), "application/sdp")
        elif call.anchored:
            answer = winner.answer.body.decode("utf-8", "replace")
            self._spawn(self._join_relayed(call, leg_id, answer, winner.destination[0]))
            return
        else:
            self._answer_caller(call, winner.answer.body, winner.answer.headers.get("Content-Type"))
        call.sdp_out[Side.CALLEE] = winner.invite.body
        self.sessions.arm(call, Side.CALLEE)

    def _bridge_app(self, call: SipCall, user_id: str) -> None:
        """An app session's accept won: the caller gets the app's SDP answer (media goes
        end to end until the bridge anchors it)."""
        answer = call.run.app_answer
        if answer is None or answer[0] != user_id:
            return
        if self.media is not None:
            try:
                self.media.bridge(call.call_id, CALLER_LEG, app_leg(user_id))
            except MediaError as exc:
                log.warning("sip_bridge_failed", reason=exc.reason)
            self._release_app_legs(call, but=user_id)
            self._answer_caller(call, self._caller_body(call), "application/sdp")
            return
        if call.anchored:
            self._spawn(self._join_relayed(call, app_leg(user_id), answer[1] or "", None))
            return
        body = (answer[1] or "").encode()
        self._answer_caller(call, body, "application/sdp" if body else None)

    async def _join_relayed(self, call: SipCall, leg: str, answer: str, source: str | None) -> None:
        """The winner of a relayed call: rtpengine joins it to the caller (its answer), the
        caller gets rtpengine's answer in our 200, the legs that lost free their ports. A
        join that fails ends the call (the winner's BYE, the caller's refusal)."""
        assert self.relay is not None
        try:
            body = (await self.relay.accept(call.call_id, leg, answer, source=source)).encode()
        except MediaError as exc:
            if self._calls.get(call.call_id) is call and not call.answered:
                with call_context(call.call_id):
                    log.warning("sip_bridge_failed", leg=leg, reason=exc.reason)
                    self._end_after_session_timeout(call, Side.CALLEE)
            return
        if self._calls.get(call.call_id) is not call or call.answered:
            return  # the caller went away meanwhile (its release frees rtpengine's call)
        with call_context(call.call_id):
            for other in self.relay.legs(call.call_id):
                if other not in (CALLER_LEG, leg):
                    self._release_relayed(call.call_id, other)
            self._answer_caller(call, body, "application/sdp")
            if call.winner is not None:
                call.sdp_out[Side.CALLEE] = call.winner.invite.body
                self.sessions.arm(call, Side.CALLEE)

    def _caller_body(self, call: SipCall) -> bytes:
        """The SDP of our 2xx to the caller: the engine's answer to its offer, or (an INVITE
        without SDP) the engine's offer, answered in the ACK."""
        if self.media is None:
            return b""
        if call.caller_answer is None:
            try:
                call.caller_answer = self.media.offer(call.call_id, CALLER_LEG)
            except MediaError as exc:
                log.warning("sip_caller_offer_failed", reason=exc.reason)
                return b""
        return call.caller_answer.encode()

    def _answer_caller(self, call: SipCall, body: bytes, content_type: str | None) -> None:
        """Our 200 to the caller (re-sent until its ACK), the caller's dialog, its timer.
        Held while our reliable provisional with the SDP answer waits for its PRACK (RFC 3262
        §3); once that answer was given, the 200 carries no SDP (RFC 6337 §3.1)."""
        if call.reliable is not None and call.answer_in_provisional:
            call.held_ok = (body, content_type)
            return
        described = body  # (what the caller has as our SDP, for a session refresh)
        if call.answer_in_provisional:
            body, content_type = b"", None
        extra: list[tuple[str, str]] = []
        if content_type:
            extra.append(("Content-Type", content_type))
        extra += self.sessions.caller_headers(call.invite)
        response = self._caller_reply(call, 200, "OK", extra, body=body)
        call.answered = True
        self.runner.setup_done(call.run)
        self._respond(call.transaction_id, response)
        now = self._now()
        call.ok = _PendingOk(call.transaction_id, response, _cseq_number(call.invite), now)
        call.ok.timer = self._schedule(now + T1, lambda: self._resend_ok(call))
        try:
            dialog = Dialog.from_uas(call.invite, response, tls=False)
            dialog.response_sent(call.invite, response)
            call.caller_dialog = dialog
            self._dialogs.add(dialog)
            self._dialog_calls[dialog.id] = call
        except DialogError as exc:
            log.warning("sip_caller_dialog_failed", error=str(exc))
        call.sdp_out[Side.CALLER] = described
        self.sessions.arm(call, Side.CALLER)

    def ack(self, ack: SipRequest) -> None:
        """An ACK for a 2xx (end to end): stops our 2xx retransmissions to the caller."""
        dialog = self._dialogs.find_for_request(ack)
        call = self._dialog_calls.get(dialog.id) if dialog is not None else None
        if dialog is None or call is None:
            return
        dialog.receive_request(ack)
        if (
            dialog is call.caller_dialog
            and ack.body
            and self.media is not None
            and _cseq_number(ack) == _cseq_number(call.invite)
        ):
            # the answer to the offer of our 2xx (the caller's INVITE had no SDP)
            try:
                self.media.accept(call.call_id, CALLER_LEG, ack.body.decode("utf-8", "replace"))
            except MediaError as exc:
                log.warning("sip_ack_answer_unusable", reason=exc.reason)
        if dialog is call.caller_dialog and call.ok is not None:
            ok, call.ok = call.ok, None
            if ok.timer is not None:
                self._cancel_timer(ok.timer)
        pending = call.reinvite_oks.get(dialog.id)
        if pending is not None and _cseq_number(ack) == pending.cseq:
            del call.reinvite_oks[dialog.id]
            if pending.timer is not None:
                self._cancel_timer(pending.timer)
            if pending.offer_to is not None and self.media is not None:
                self._reoffer_answered(call, dialog, pending.offer_to, ack)

    def _reoffer_answered(self, call: SipCall, dialog: Dialog, leg: str, ack: SipRequest) -> None:
        """The ACK of our 2xx that offered (to an offerless re-INVITE) holds the answer (RFC
        3261 §13.2.1). Without one, or with one we cannot use, the leg stays as it was: the
        session goes on as before the re-INVITE."""
        assert self.media is not None
        if not ack.body:
            log.info("sip_reoffer_unanswered", leg=leg)
            return
        try:
            self.media.accept(
                call.call_id,
                leg,
                ack.body.decode("utf-8", "replace"),
                source=address_of(str(dialog.remote_target), call.source)[0],
            )
        except MediaError as exc:
            log.warning("sip_reoffer_answer_unusable", leg=leg, reason=exc.reason)

    def _await_reinvite_ack(
        self,
        call: SipCall,
        dialog: Dialog,
        transaction_id: str,
        request: SipRequest,
        response: SipResponse,
    ) -> None:
        """Re-send our 2xx to this re-INVITE until its ACK (`_PendingOk`)."""
        old = call.reinvite_oks.pop(dialog.id, None)
        if old is not None and old.timer is not None:
            self._cancel_timer(old.timer)
        now = self._now()
        pending = _PendingOk(transaction_id, response, _cseq_number(request), now)
        call.reinvite_oks[dialog.id] = pending
        key = dialog.id
        pending.timer = self._schedule(now + T1, lambda: self._resend_reinvite_ok(call, key))

    def _resend_reinvite_ok(self, call: SipCall, key: object) -> None:
        pending = call.reinvite_oks.get(key)
        if pending is None or call.call_id not in self._calls:
            return
        pending.timer = None
        now = self._now()
        if now - pending.sent_at >= 64 * T1:
            del call.reinvite_oks[key]
            with call_context(call.call_id):
                log.warning("sip_reinvite_no_ack", waited_seconds=round(now - pending.sent_at, 1))
            return
        try:
            self._respond(pending.transaction_id, pending.response)
        except Exception:  # its transaction is over (it outlives this by RFC 6026): done
            del call.reinvite_oks[key]
            return
        pending.interval = min(pending.interval * 2, T2)
        pending.timer = self._schedule(
            now + pending.interval, lambda: self._resend_reinvite_ok(call, key)
        )

    def _resend_ok(self, call: SipCall) -> None:
        ok = call.ok
        if ok is None or call.call_id not in self._calls:
            return
        ok.timer = None
        now = self._now()
        with call_context(call.call_id):
            if now - ok.sent_at >= 64 * T1:
                # No ACK: the caller never got our answer. End the call (§13.3.1.4).
                log.warning("sip_no_ack", waited_seconds=round(now - ok.sent_at, 1))
                call.ok = None
                self._hangup_caller(call)
                self.runner.hangup(call.run, Side.CALLER)
                return
            try:
                self._respond(ok.transaction_id, ok.response)
            except Exception:  # the INVITE transaction is gone: re-send outside it
                self._send_stateless(ok.response, call.source, call.transport)
            ok.interval = min(ok.interval * 2, T2)
            ok.timer = self._schedule(now + ok.interval, lambda: self._resend_ok(call))

    def _ring_caller(self, call: SipCall, command: RingCaller) -> None:
        if call.answered:
            return
        body = b""
        extra: list[tuple[str, str]] = []
        status, phrase = 180, "Ringing"
        if command.early_media:
            branch = next(
                (b for b in self._branches(call, command.leg_id) if b.answer is not None), None
            )
            if branch is not None and branch.answer is not None and branch.answer.body:
                status, phrase, body = 183, "Session Progress", branch.answer.body
                content_type = branch.answer.headers.get("Content-Type")
                if content_type:
                    extra.append(("Content-Type", content_type))
        if self._provisional(call, status, phrase, extra, body):
            self.runner.setup_done(call.run)

    def _provisional(
        self, call: SipCall, status: int, phrase: str, extra: list[tuple[str, str]], body: bytes
    ) -> bool:
        """A provisional response to the caller; reliable (RFC 3262) when its INVITE requires
        100rel. False when none can be sent: one reliable at a time (§3), and the first must
        hold our answer to the caller's offer (RFC 3261 §13.2.1), which only the engine has
        before the 2xx (signalling only, or no offer to answer: the caller gets none)."""
        if not call.reliable_required:
            reply = self._caller_reply(call, status, phrase, extra, body=body)
            self._respond(call.transaction_id, reply)
            return True
        if call.reliable is not None or call.caller_answer is None or call.answered:
            return False
        headers = [(name, value) for name, value in extra if name != "Content-Type"]
        body = b""
        if not call.answer_in_provisional:  # (later ones carry no SDP: the answer was given)
            body = call.caller_answer.encode()
            headers.append(("Content-Type", "application/sdp"))
            call.answer_in_provisional = True
        # §3: the first RSeq is random in 1..2**31-1, each next one more by exactly one
        call.rseq = call.rseq + 1 if call.rseq else secrets.randbelow(2**31 - 1) + 1
        headers += [("Require", "100rel"), ("RSeq", str(call.rseq))]
        response = self._caller_reply(call, status, phrase, headers, body=body)
        self._respond(call.transaction_id, response)
        now = self._now()
        call.reliable = _Reliable(call.rseq, response, now)
        call.reliable.timer = self._schedule(now + T1, lambda: self._resend_reliable(call))
        return True

    def _resend_reliable(self, call: SipCall) -> None:
        reliable = call.reliable
        if reliable is None or call.finished or self._calls.get(call.call_id) is not call:
            return
        reliable.timer = None
        if call.answered:  # a final response went (a refusal, a CANCEL's 487): nothing to ack
            call.reliable = None
            return
        now = self._now()
        with call_context(call.call_id):
            if now - reliable.sent_at >= 64 * T1:
                # §3: no PRACK in 64*T1, the INVITE is refused with a 5xx; a call the callee
                # answered meanwhile (its 2xx held for the PRACK) ends on that side too.
                log.warning("sip_no_prack", waited_seconds=round(now - reliable.sent_at, 1))
                call.reliable = None
                held, call.held_ok = call.held_ok, None
                call.answered = True
                reason = [("Reason", format_reason(500, "no PRACK for a reliable provisional"))]
                self._respond(
                    call.transaction_id,
                    self._caller_reply(call, 500, "Server Internal Error", reason),
                )
                if held is not None:
                    self.runner.hangup(call.run, Side.CALLER)
                else:
                    self.runner.caller_hangup(call.run)
                return
            self._respond(call.transaction_id, reliable.response)
            reliable.interval *= 2  # (§3: doubling, no T2 cap; the refusal at 64*T1 sharp)
            due = min(now + reliable.interval, reliable.sent_at + 64 * T1)
            reliable.timer = self._schedule(due, lambda: self._resend_reliable(call))

    def _prack(self, transaction_id: str, prack: SipRequest) -> bool:
        """The caller's PRACK (RFC 3262 §3): 200 when it names our unacknowledged reliable
        provisional (its RSeq, the INVITE's CSeq), and the 2xx held for it goes; 481 when it
        names nothing we wait for. False: not a call of ours."""
        to_tag = param_of(prack.headers.get("To"), "tag") or ""
        call = self._early.get((prack.headers.get("Call-ID") or "", to_tag))
        if call is None or call.finished:
            return False
        reliable = call.reliable
        with call_context(call.call_id):
            if reliable is None or not _rack_names(
                prack.headers.get("RAck"), reliable.rseq, _cseq_number(call.invite)
            ):
                self._respond(transaction_id, _reply(prack, 481, "Call/Transaction Does Not Exist"))
                return True
            if prack.body:  # an offer in a PRACK (§5): we make no answers there
                self._respond(transaction_id, _reply(prack, 488, "Not Acceptable Here"))
                return True
            call.reliable = None
            if reliable.timer is not None:
                self._cancel_timer(reliable.timer)
            self._respond(transaction_id, make_response(prack, 200, "OK"))
            held, call.held_ok = call.held_ok, None
            if held is not None and not call.answered:
                self._answer_caller(call, *held)
        return True

    def _early_bye(self, transaction_id: str, bye: SipRequest) -> bool:
        """The caller's BYE before our 2xx, in the early dialog of our provisional response
        (RFC 3261 §15: a caller may end an early dialog so; some gateways do instead of a
        CANCEL): 200 to it, 487 to its INVITE (§15.1.2), and the call ends as on a CANCEL.
        Before, it was answered 481 and the agents went on ringing for nobody. False: no
        early dialog of ours (the caller gets 481)."""
        to_tag = param_of(bye.headers.get("To"), "tag") or ""
        call = self._early.get((bye.headers.get("Call-ID") or "", to_tag))
        if (
            call is None
            or call.finished
            or call.final_sent
            or param_of(bye.headers.get("From"), "tag")
            != param_of(call.invite.headers.get("From"), "tag")
        ):
            return False
        self._respond(transaction_id, _reply(bye, 200, "OK"))
        with call_context(call.call_id):
            log.info("sip_call_bye", side=Side.CALLER.value, early=True)
            call.gone_reason = _passed_on_reason(bye)
            self._caller_left(call)
        return True

    def _hangup_caller(self, call: SipCall) -> None:
        if call.caller_dialog is not None:
            dialog = call.caller_dialog
            bye = dialog.create_request("BYE", via=self._local(call.transport))
            self._forget_dialog(dialog)
            destination = next_hop(dialog, call.source)
            self._send_request(bye, destination, call.transport)
        elif not call.answered:
            call.answered = True
            self._respond(
                call.transaction_id, self._caller_reply(call, 480, "Temporarily Unavailable")
            )

    def _caller_reply(
        self,
        call: SipCall,
        status: int,
        phrase: str,
        extra: list[tuple[str, str]] | None = None,
        *,
        body: bytes = b"",
    ) -> SipResponse:
        headers = list(extra or [])
        if status < 300:
            local = self._local(call.transport)
            headers.insert(
                0, ("Contact", f"<sip:bridge@{local.sent_by};transport={call.transport.lower()}>")
            )
            # §12.1.1: a response that makes a dialog copies the INVITE's Record-Route, in
            # order, so the caller's side routes its ACK and BYE through the same proxies.
            headers += [(n, v) for n, v in call.invite.headers if n == "Record-Route"]
        return make_response(
            call.invite, status, phrase, to_tag=call.to_tag, extra=headers, body=body
        )

    def _end_after_session_timeout(self, call: SipCall, side: Side) -> None:
        """A session expired or could not be refreshed: BYE to both sides (RFC 4028 §10)."""
        try:  # the silent side gets a BYE too, unless its dialog is gone already
            if side is Side.CALLER:
                self._hangup_caller(call)
            elif call.winner is not None:
                self._bye(call.winner)
        except DialogError as exc:
            log.info("sip_session_bye_skipped", side=side.value, error=str(exc))
        self.runner.hangup(call.run, side)

    # -- timers and clean-up ----------------------------------------------------------------------
    def _finish(self, call: SipCall) -> None:
        """The runner is done with the call: drop its SIP state. The call stays known until
        its media is released, so that what the release ends (a voicemail message cut by the
        caller's hang-up) is still stored."""
        if call.finished or self._calls.get(call.call_id) is not call:
            return
        call.finished = True
        # (its app-offer callback holds the call: a cycle the collector would have to find)
        call.run.app_sdp = None
        if call.refusal_timer is not None:
            self._cancel_timer(call.refusal_timer)
            call.refusal_timer = None
        if call.ok is not None and call.ok.timer is not None:
            self._cancel_timer(call.ok.timer)
            call.ok.timer = None
        if call.reliable is not None and call.reliable.timer is not None:
            self._cancel_timer(call.reliable.timer)
        call.reliable = None
        self._early.pop(_early_key(call), None)
        if self._origins.get(origin := _origin(call.invite)) is call:
            del self._origins[origin]
        for pending in call.reinvite_oks.values():
            if pending.timer is not None:
                self._cancel_timer(pending.timer)
        call.reinvite_oks.clear()
        self.sessions.cancel(call)
        for branch in call.branches.values():
            if branch.confirm_timer is not None:
                self._cancel_timer(branch.confirm_timer)
                branch.confirm_timer = None
        for monitor in list(call.monitors.values()):
            self._end_monitor(call, monitor, bye=True)
        for listener in self.ended_listeners:
            try:
                listener(call)
            except Exception:
                log.exception("sip_call_end_listener_failed")
        if self.media is not None:
            self.media.release(call.call_id)
        if call.anchored:
            self._release_relayed(call.call_id)
        for key in [k for k in self._connecting if k[0] == call.call_id]:
            future = self._connecting.pop(key)
            if not future.done():
                future.set_result("the call ended")
        self._end_relays(call)
        del self._calls[call.call_id]
        self._by_invite.pop(call.transaction_id, None)
        for transaction_id, branch in call.branches.items():
            if self._by_branch.pop(transaction_id, None) is not None and branch.final is None:
                # Still unanswered (CANCELled, or the call ended first): a 2xx may yet come
                # (the CANCEL/200 race), and must be ACKed and hung up (§15), until the
                # INVITE's transaction is over (64*T1).
                self._unanswered[transaction_id] = branch
                self._schedule(
                    self._now() + 64 * T1,
                    lambda t=transaction_id: self._unanswered.pop(t, None),
                )
        for dialog in (call.caller_dialog, *(b.dialog for b in call.branches.values())):
            if dialog is not None:
                self._dialog_calls.pop(dialog.id, None)

    def _forget_dialog(self, dialog: Dialog) -> None:
        self._dialogs.discard(dialog.id)

    @staticmethod
    def _branches(call: SipCall, leg_id: str) -> list[_Branch]:
        return [b for b in call.branches.values() if b.leg_id == leg_id]


_REASON_PHRASES = {
    403: "Forbidden",
    404: "Not Found",
    480: "Temporarily Unavailable",
    486: "Busy Here",
    487: "Request Terminated",
    503: "Service Unavailable",
    603: "Decline",
}


_DIALLABLE = re.compile(r"\+?[0-9]{3,15}")


_DTMF_RELAY = re.compile(r"^\s*Signal\s*=\s*([0-9*#A-Da-d])", re.MULTILINE)


def _cseq_number(message: SipRequest) -> int:
    """The CSeq number (-1 when there is none to read): an ACK matches its INVITE by it."""
    try:
        return parse_cseq(message.headers.get("CSeq") or "").number
    except SipSyntaxError:
        return -1


def _line_dialled_nationally(directory: Directory, dialled: str) -> str:
    """The line a carrier names in its national form (a US carrier's ten digits `4155550100`,
    a UK one's `02079460000`; lines are E.164), read with the directory's dial plan (its
    country code and national prefix, as for desk phones' calls out): that line's number, or
    `dialled` as it came when no line has that number (then 404, as before). Those calls were
    all refused 404 (`no_route`). A number with `+` was looked up as it is."""
    if not _DIALLABLE.fullmatch(dialled) or dialled.startswith("+"):
        return dialled
    number = classify(dialled, directory.dialing).number
    return number if directory.line(number) is not None else dialled


def _passed_on_reason(request: SipRequest) -> str | None:
    """The Reason header values of the caller's CANCEL or early BYE as one value to copy into
    the CANCELs toward the phones (RFC 3326 §3: a proxy SHOULD; a B2BUA ending legs for the
    caller is that proxy here). The values came through our parser (no line breaks), so they
    are copied as sent; None when there is none, or when they are implausibly long."""
    values = [value.strip() for value in request.headers.get_all("Reason") if value.strip()]
    joined = ", ".join(values)
    if not joined or len(joined) > REASON_PASSED_MAX:
        return None
    return joined


def _info_digit(request: SipRequest) -> str | None:
    """The key of an INFO carrying DTMF (`application/dtmf-relay`: `Signal=1`, or
    `application/dtmf`: the key alone), else None."""
    kind = media_type(request.headers.get("Content-Type") or "")
    body = request.body.decode("ascii", "replace")
    if kind == "application/dtmf-relay":
        found = _DTMF_RELAY.search(body)
        return found.group(1).upper() if found else None
    if kind == "application/dtmf":
        key = body.strip().upper()
        return key if len(key) == 1 and key in "0123456789*#ABCD" else None
    return None


def _warning(exc: MediaError) -> str:
    """A `Warning` header (RFC 3261 20.43): 305 incompatible media format."""
    reason = exc.reason.replace('"', "'")
    return f'305 bridge "{reason}"'


async def _no_audio() -> bytes:
    return b""


def _spawn_task(coroutine: Coroutine[Any, Any, None]) -> object:
    task = asyncio.ensure_future(coroutine)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return task


_TASKS: set[asyncio.Future[None]] = set()


def _reply(
    request: SipRequest, status: int, phrase: str, extra: list[tuple[str, str]] | None = None
) -> SipResponse:
    return make_response(request, status, phrase, to_tag=random_hex(5), extra=extra or [])


def _unrelayable_answer(response: SipResponse) -> str | None:
    """Why a 2xx to our INVITE cannot be passed to the caller as its SDP, or None."""
    if not response.body:
        return "the 2xx holds no SDP"
    kind = media_type(response.headers.get("Content-Type") or "application/sdp")
    if kind != "application/sdp":
        return f"the 2xx body is {kind[:60]}, not SDP"
    return None


def _rack_names(rack: str | None, rseq: int, cseq: int) -> bool:
    """Whether a PRACK's `RAck: <rseq> <cseq> INVITE` names this reliable provisional."""
    parts = (rack or "").split()
    return (
        len(parts) == 3
        and all(ascii_digits(n) and len(n) <= 20 for n in parts[:2])
        and (int(parts[0]), int(parts[1]), parts[2]) == (rseq, cseq, "INVITE")
    )


def _early_key(call: SipCall) -> tuple[str, str]:
    """How a PRACK or an early BYE finds its call: the Call-ID and our To tag."""
    return (call.invite.headers.get("Call-ID") or "", call.to_tag)


def _hops_left(invite: SipRequest) -> int:
    """The caller's Max-Forwards (the parser checked it; absent: the usual 70)."""
    value = invite.headers.get("Max-Forwards")
    if value is None:
        return MAX_FORWARDS
    try:
        return parse_max_forwards(value)
    except SipSyntaxError:
        return MAX_FORWARDS


def _origin(invite: SipRequest) -> tuple[str, str, int]:
    """What a merged copy of a caller's INVITE has in common with it (RFC 3261 §8.2.2.2)."""
    return (
        invite.headers.get("Call-ID") or "",
        param_of(invite.headers.get("From"), "tag") or "",
        _cseq_number(invite),
    )
