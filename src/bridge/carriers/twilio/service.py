"""Carrier calls: signed webhooks in, the call core (`CallMachine`) in the middle, TwiML out.

`TwilioCalls` is the mode-independent part of the carrier path, and its `LegDriver`. Each
inbound call is admitted by the call runner (`bridge.calls.runner`: routing, the live call,
the call core, presence, app offers, events and metrics are the runner's, as on the SIP
path); the bridging mode (`modes.py`) turns the core's commands of each step into TwiML or
REST requests, as one batch: a carrier `<Dial>` rings up to 10 numbers in one verb, so the
driver's per-command methods only record what each command asks (the leg, the voicemail
step) and the mode acts on the step's commands together. The carrier's dial mode times the
layers out itself, so the core runs on the call's ring clock (`CarrierCall.now`). Everything
the carrier reports comes back through here:

- the caller's status callbacks (hang-up, the end of the call) and each leg's (ringing,
  answered) are applied at most once per CallSid and status, and never backwards: a `ringing`
  after `completed` changes nothing, and no callback but the voice webhook creates a call;
- answered -> the user is `on_call`; ended -> `wrap_up`, as on the SIP path;
- each step's events are published (`subscribe`) and logged with the call id bound.

Nothing here blocks or awaits: each webhook is handled in one synchronous step, so two
callbacks of the same call never interleave.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

import structlog
from twilio.twiml.voice_response import VoiceResponse

from bridge.calls.events import (
    BridgeTo,
    CallState,
    CancelLeg,
    DialLeg,
    Event,
    HangupLeg,
    Output,
    RejectCaller,
    RingCaller,
    Side,
    StartFallback,
)
from bridge.calls.registry import NotAcceptingCalls
from bridge.calls.runner import CallRunner, RunningCall
from bridge.carriers.twilio import twiml
from bridge.carriers.twilio.conference import ConferenceMode
from bridge.carriers.twilio.dial import DialMode
from bridge.carriers.twilio.errors import BadSignature, NotConfigured, Overloaded
from bridge.carriers.twilio.events import LegDeclined, VoicemailRecorded
from bridge.carriers.twilio.modes import MODES, BridgingMode
from bridge.carriers.twilio.rest import CarrierRest, RestSettings
from bridge.carriers.twilio.schemas import (
    FINAL_CALL_STATUSES,
    ConferenceCallback,
    ConfirmRequest,
    DialAction,
    RecordingCallback,
    StatusCallback,
    VoicemailDone,
    VoiceRequest,
)
from bridge.carriers.twilio.signature import WebhookValidator
from bridge.carriers.twilio.state import STATUS_RANK, CallRecording, CarrierCall, LegMeta
from bridge.config import Settings
from bridge.directory.model import Directory, FallbackAction, normalize_number
from bridge.observability.logging import call_context
from bridge.observability.metrics import Metrics
from bridge.presence.model import Channel
from bridge.routing.model import CallRequest

log = structlog.get_logger("bridge.carrier")

# Ended calls are remembered this long (by count) so that retried and late callbacks find
# their call and change nothing, instead of being mistaken for new calls.
ENDED_CALLS_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class CarrierSettings:
    """What the carrier path needs from `[twilio]`, `[http]` and `[sip]`."""

    auth_token: str | None
    account_sid: str | None
    mode: str
    public_url: str  # webhook signatures are computed on it; our callback URLs start with it
    sip_target: str  # host:port the carrier sends <Sip> legs to
    confirm_timeout_seconds: int = 5
    voicemail_max_seconds: int = twiml.VOICEMAIL_MAX_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> CarrierSettings:
        twilio = settings.twilio
        return cls(
            auth_token=twilio.auth_token,
            account_sid=twilio.account_sid,
            mode=twilio.mode,
            public_url=settings.http.base_url(),
            sip_target=twilio.sip_target or _sip_address(settings.sip.host, settings.sip.port),
            confirm_timeout_seconds=twilio.confirm_timeout_seconds,
        )


def _sip_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TwilioCalls:
    """The carrier's inbound calls, and the carrier path's `LegDriver`. See the module
    docstring."""

    path = "carrier"
    # Apps answer carrier calls in the carrier's voice SDK (<Client>): the WebSocket offer
    # only informs, an accept there cannot answer.
    app_accept_answers = False

    def __init__(
        self,
        settings: CarrierSettings,
        *,
        runner: CallRunner,
        metrics: Metrics,
        directory: Callable[[], Directory],
        rest: CarrierRest | None = None,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.metrics = metrics
        # Overload control of new calls (set by the context: the SIP service's admission,
        # bridge.sip.overload): (reason, retry-after seconds) to shed a call, None to take it.
        self.gate: Callable[[], tuple[str, int] | None] | None = None
        # The carrier's REST API (None without an account sid and credentials): conference
        # mode, listen / whisper / barge and recording controls need it; dial mode does not.
        self.rest = rest
        self._directory = directory
        self.validator = WebhookValidator(settings.auth_token) if settings.auth_token else None
        factory = MODES.get(settings.mode)
        self.mode: BridgingMode | None = factory(self) if factory is not None else None
        self._live: dict[str, CarrierCall] = {}
        self._ended: OrderedDict[str, CarrierCall] = OrderedDict()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        runner: CallRunner,
        metrics: Metrics,
        directory: Callable[[], Directory],
    ) -> TwilioCalls:
        rest_settings = RestSettings.from_settings(settings)
        return cls(
            CarrierSettings.from_settings(settings),
            runner=runner,
            metrics=metrics,
            directory=directory,
            rest=CarrierRest(rest_settings, metrics) if rest_settings is not None else None,
        )

    async def aclose(self) -> None:
        """Stop the mode's timers and requests, close the REST client (at shutdown)."""
        if self.mode is not None:
            await self.mode.aclose()
        if self.rest is not None:
            await self.rest.aclose()

    # -- configuration -----------------------------------------------------------------------
    def refusal(self) -> NotConfigured | None:
        """Why webhooks cannot be taken now (503), or None."""
        if self.validator is None:
            return NotConfigured(
                "carrier webhooks are not configured: set [twilio] auth_token "
                "(BRIDGE_TWILIO__AUTH_TOKEN)"
            )
        if self.mode is None:
            return NotConfigured(
                f"[twilio] mode {self.settings.mode!r} is not available in this build; use 'dial'"
            )
        if self.settings.mode == "conference" and self.rest is None:
            return NotConfigured(
                "[twilio] mode 'conference' drives calls through the REST API: set "
                "[twilio] account_sid (BRIDGE_TWILIO__ACCOUNT_SID)"
            )
        return None

    def url(self, path: str, **params: object) -> str:
        """An absolute callback URL under `public_url` (the carrier signs exactly this)."""
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return f"{self.settings.public_url}{path}" + (f"?{query}" if query else "")

    # -- reading -------------------------------------------------------------------------------
    def find(self, call_id: str) -> CarrierCall | None:
        """A live call, or one that ended recently (for retried and late callbacks)."""
        return self._live.get(call_id) or self._ended.get(call_id)

    @property
    def live_count(self) -> int:
        return len(self._live)

    def live_calls(self) -> list[CarrierCall]:
        return list(self._live.values())

    # -- webhooks of the caller's call ---------------------------------------------------------
    def inbound(self, request: VoiceRequest) -> str:
        """`POST /twilio/voice`: route the call and answer with the mode's TwiML.

        A retried webhook (same CallSid) gets the same answer and starts nothing."""
        with call_context(request.call_sid):
            known = self.find(request.call_sid)
            if known is not None:
                log.info("carrier_voice_retry")
                return known.answer or twiml.render(twiml.hangup())
            account = self.settings.account_sid
            if account and request.account_sid and request.account_sid != account:
                raise BadSignature(f"AccountSid {request.account_sid} is not this account")
            if not self.runner.accepting:
                log.info("carrier_call_refused_draining", to=request.to)
                return twiml.render(twiml.reject_busy())
            shed = self.gate() if self.gate is not None else None
            if shed is not None:  # the carrier's fallback URL takes the call (errors.py)
                raise Overloaded(f"overloaded ({shed[0]}): try the fallback URL", shed[1])
            return self._start(request)

    def _start(self, request: VoiceRequest) -> str:
        assert self.mode is not None
        call_id = request.call_sid
        dialled = normalize_number(request.to)
        try:
            run = self.runner.admit(
                CallRequest(call_id=call_id, line=dialled, caller=request.caller),
                self,
                clock=lambda: self._ring_clock(call_id),
            )
        except NotAcceptingCalls:
            return twiml.render(twiml.reject_busy())
        plan = run.plan
        directory = self._directory()
        call = CarrierCall(
            call_id=call_id,
            run=run,
            directory=directory,
            line=directory.line(plan.line) if plan.line else None,
            caller=request.caller,
        )
        self._live[call_id] = call
        if plan.line is None:
            log.warning("carrier_call_no_route", to=request.to, caller=request.caller)
        else:
            log.info(
                "carrier_call_in", line=plan.line, caller=request.caller, outcome=plan.outcome.value
            )
        outputs = self.runner.start(run)
        call.answer = twiml.render(self.mode.respond(call, outputs))
        return call.answer

    def call_status(self, callback: StatusCallback) -> None:
        """`POST /twilio/status`: the caller's call, one leg (`?call=&leg=`), or a
        supervisor's call into the conference (`?call=&monitor=`)."""
        if callback.monitor is not None and callback.call_id is not None:
            self._monitor_status(callback, callback.call_id)
            return
        if callback.leg_id is not None and callback.call_id is not None:
            self._leg_status(callback, callback.call_id, callback.leg_id)
            return
        with call_context(callback.call_sid):
            call = self.find(callback.call_sid)
            if call is None:
                # Never create a call from a callback: a late one for a forgotten call.
                log.info("carrier_status_unknown_call", status=callback.status)
                return
            rank = STATUS_RANK[callback.status]
            if rank <= call.caller_rank:
                log.info(
                    "carrier_status_ignored",
                    status=callback.status,
                    sequence=callback.sequence,
                    why="retry or out of order",
                )
                return
            call.caller_rank = rank
            log.info("carrier_status", status=callback.status, sequence=callback.sequence)
            if callback.status in FINAL_CALL_STATUSES:
                self._caller_gone(call)

    def _caller_gone(self, call: CarrierCall) -> None:
        machine = call.machine
        assert self.mode is not None
        self.mode.tick(call)
        if machine.state in (CallState.ANSWERED, CallState.VOICEMAIL):
            outputs = machine.hangup(Side.CALLER, call.now)
        else:
            outputs = machine.caller_hangup(call.now)
        self.run(call, outputs)
        assert self.mode is not None
        self.mode.carry_out(call, outputs)

    def _leg_status(self, callback: StatusCallback, call_id: str, leg_id: str) -> None:
        with call_context(call_id, leg_id=leg_id, leg_sid=callback.call_sid):
            call = self.find(call_id)
            meta = call.legs.get(leg_id) if call is not None else None
            if call is None or meta is None:
                log.info("carrier_leg_status_unknown", status=callback.status)
                return
            rank = STATUS_RANK[callback.status]
            if rank <= call.sid_rank.get(callback.call_sid, -1):
                log.info(
                    "carrier_leg_status_ignored",
                    status=callback.status,
                    sequence=callback.sequence,
                    why="retry or out of order",
                )
                return
            call.sid_rank[callback.call_sid] = rank
            call.leg_by_sid[callback.call_sid] = leg_id
            meta.sid = callback.call_sid
            log.info("carrier_leg_status", status=callback.status, user_id=meta.user_id)
            assert self.mode is not None
            self.mode.tick(call)
            outputs: list[Output] = []
            if callback.status == "ringing":
                outputs = call.machine.leg_ringing(leg_id, call.now)
            elif callback.status == "in-progress":
                meta.answered = True
                if meta.confirm:
                    # Picked up, but maybe by a voicemail box: the key press decides.
                    log.info("carrier_leg_awaiting_confirmation")
                else:
                    outputs = call.machine.leg_answered(leg_id, call.now)
            elif callback.status in FINAL_CALL_STATUSES:
                outputs = self.mode.leg_final(call, meta, callback.status)
            self.run(call, outputs)
            self.mode.carry_out(call, outputs)

    def _monitor_status(self, callback: StatusCallback, call_id: str) -> None:
        with call_context(call_id, monitor=callback.monitor, leg_sid=callback.call_sid):
            call = self.find(call_id)
            if call is None:
                log.info("carrier_monitor_status_unknown", status=callback.status)
                return
            rank = STATUS_RANK[callback.status]
            if rank <= call.sid_rank.get(callback.call_sid, -1):
                log.info("carrier_monitor_status_ignored", status=callback.status)
                return
            call.sid_rank[callback.call_sid] = rank
            self._conference_mode().monitor_status(call, callback)

    # -- webhooks of one mode -------------------------------------------------------------------
    def _dial_mode(self) -> DialMode:
        if not isinstance(self.mode, DialMode):
            raise NotConfigured(f"this endpoint is only used in dial mode, not {self.mode.name!r}")
        return self.mode

    def _conference_mode(self) -> ConferenceMode:
        if not isinstance(self.mode, ConferenceMode):
            name = self.mode.name if self.mode is not None else None
            raise NotConfigured(f"this endpoint is only used in conference mode, not {name!r}")
        return self.mode

    def dial_action(self, request: DialAction) -> str:
        """`POST /twilio/dial-action`: a `<Dial>` ended (see `DialMode.dial_action`)."""
        return self._dial_mode().dial_action(request)

    def confirm(self, request: ConfirmRequest) -> str:
        """`POST /twilio/confirm`: the press-1 check of a forwarded leg."""
        assert self.mode is not None
        return self.mode.confirm(request)

    def conference_status(self, callback: ConferenceCallback) -> None:
        """`POST /twilio/conference`: who joined, left, is muted or coaching."""
        self._conference_mode().conference_event(callback)

    def ask_to_confirm(
        self, call: CarrierCall, leg_id: str, *, dial: int | None = None
    ) -> VoiceResponse:
        """ "Press 1 to accept": a `<Gather>` whose action (also on no key, a voicemail box)
        comes back to `/twilio/confirm` with the digits."""
        name = call.line.name if call.line is not None else "the contact center"
        response = VoiceResponse()
        gather = response.gather(
            num_digits=1,
            timeout=self.settings.confirm_timeout_seconds,
            action=self.url(
                "/twilio/confirm", call=call.call_id, leg=leg_id, dial=dial, step="digits"
            ),
            action_on_empty_result=True,  # no key must come back to us too (a voicemail box)
        )
        gather.say(f"You have a call for {name}. Press 1 to accept it.")
        response.hangup()  # only if the carrier did not follow the Gather action
        return response

    # -- voicemail -----------------------------------------------------------------------------
    def voicemail_greeting(self, call: CarrierCall) -> str:
        """The greeting: the fallback's prompt (for a line to a user, the user's), else the
        line's voicemail prompt, else a default."""
        step = call.voicemail
        if step is not None and step.prompt:
            return step.prompt
        if call.line is not None and call.line.voicemail_prompt:
            return call.line.voicemail_prompt
        return twiml.DEFAULT_GREETING

    def voicemail_done(self, request: VoicemailDone) -> str:
        """`POST /twilio/voicemail`: the `<Record>` finished; thank the caller, hang up."""
        with call_context(request.call_sid):
            log.info(
                "carrier_voicemail_done",
                recording_sid=request.recording_sid,
                duration_seconds=request.duration_seconds,
            )
            return twiml.render(twiml.hangup())

    def recording_status(self, callback: RecordingCallback) -> None:
        """`POST /twilio/recording`: a voicemail recording is ready (or absent, or failed); or
        (`?kind=call`) the call recording's progress."""
        with call_context(callback.call_sid, recording_sid=callback.recording_sid):
            call = self.find(callback.call_sid)
            if call is None:
                log.info("carrier_recording_unknown_call", status=callback.status)
                return
            if callback.call_recording:
                self._call_recording_status(call, callback)
                return
            if call.recordings.get(callback.recording_sid) == callback.status:
                log.info("carrier_recording_ignored", status=callback.status, why="retry")
                return
            if call.recordings.get(callback.recording_sid) == "completed":
                log.info("carrier_recording_ignored", status=callback.status, why="out of order")
                return
            call.recordings[callback.recording_sid] = callback.status
            log.info("carrier_recording", status=callback.status, url=callback.recording_url)
            if callback.status == "completed":
                log.info("carrier_voicemail_recorded", recording_sid=callback.recording_sid)
                self.runner.publish_on(
                    call.run,
                    VoicemailRecorded(
                        callback.recording_sid, callback.recording_url, callback.duration_seconds
                    ),
                )

    def _call_recording_status(self, call: CarrierCall, callback: RecordingCallback) -> None:
        """The carrier's word on the call recording. Its final statuses (`completed`,
        `absent`, `failed`) are kept whatever comes after; before them, our own requests'
        answers (pause, resume) are as recent as the callbacks, so a callback only fills in
        what we do not know yet and never moves a final status back."""
        recording = call.recording
        if recording is None:
            recording = call.recording = CallRecording(sid=callback.recording_sid)
        if recording.sid is None:
            recording.sid = callback.recording_sid
        if recording.sid != callback.recording_sid:
            log.info("carrier_recording_ignored", status=callback.status, why="another recording")
            return
        if recording.status in RECORDING_FINAL:
            log.info("carrier_recording_ignored", status=callback.status, why="already final")
            return
        if callback.status in RECORDING_FINAL or recording.status == "starting":
            recording.status = callback.status
            recording.history.append(callback.status)
        recording.url = callback.recording_url or recording.url
        if callback.duration_seconds is not None:
            recording.duration_seconds = callback.duration_seconds
        log.info("carrier_call_recording", status=callback.status, url=callback.recording_url)

    # -- the call core's outputs ----------------------------------------------------------------
    def run(self, call: CarrierCall, outputs: Sequence[Output]) -> None:
        """Hand outputs the mode got from the core to the call runner (leg records, presence,
        app offers, events, the registry entry, metrics). The mode then turns the commands
        into carrier actions."""
        self.runner.apply(call.run, outputs)

    def _ring_clock(self, call_id: str) -> float:
        call = self._live.get(call_id)
        return call.now if call is not None else 0.0

    # -- LegDriver ----------------------------------------------------------------------------
    # Each method records what its command asks; the mode carries out the step's commands
    # together (`respond` for a webhook's TwiML answer, `carry_out` otherwise).
    def dial(self, run: RunningCall, command: DialLeg) -> None:
        call = self._live.get(run.call_id)
        if call is not None:
            call.legs[command.leg_id] = self._leg_meta(call, command)

    def cancel_leg(self, run: RunningCall, command: CancelLeg) -> None:
        """Done by the mode: the carrier's <Dial>, or a participant ended over REST."""

    def bridge(self, run: RunningCall, command: BridgeTo) -> None:
        """Done by the carrier (<Dial>) or the conference the caller waits in."""

    def hang_up(self, run: RunningCall, command: HangupLeg) -> None:
        """Done by the mode (`carry_out`)."""

    def reject(self, run: RunningCall, command: RejectCaller) -> None:
        """The mode's TwiML answer (`<Reject>`, a prompt and `<Hangup>`)."""

    def ring_caller(self, run: RunningCall, command: RingCaller) -> None:
        """The carrier plays its own ring-back while a <Dial> rings."""

    def start_fallback(self, run: RunningCall, command: StartFallback) -> None:
        call = self._live.get(run.call_id)
        if call is not None and command.step.action is FallbackAction.VOICEMAIL:
            call.voicemail = command.step  # the mode answers with the greeting and <Record>

    def app_answer_refused(self, run: RunningCall, user_id: str, sdp: str | None) -> str | None:
        return "apps answer carrier calls in the carrier's voice SDK"

    def app_media_ready(self, run: RunningCall, user_id: str) -> None:
        return None  # the voice SDK carries the audio

    def leg_reference(self, run: RunningCall, leg_id: str) -> str | None:
        call = self.find(run.call_id)
        return call.leg_sid(leg_id) if call is not None else None

    def ended(self, run: RunningCall) -> None:
        call = self._live.pop(run.call_id, None)
        if call is None:
            return
        self._ended[call.call_id] = call
        while len(self._ended) > ENDED_CALLS_KEPT:
            self._ended.popitem(last=False)

    def declined(self, call: CarrierCall, meta: LegMeta, digits: str) -> None:
        log.info("carrier_leg_declined", leg_id=meta.leg_id, user_id=meta.user_id)
        self.runner.publish_on(call.run, LegDeclined(meta.leg_id, meta.user_id, digits))

    def _leg_meta(self, call: CarrierCall, command: DialLeg) -> LegMeta:
        confirm = False
        if command.via is Channel.PHONE_NUMBER:
            user = call.directory.user(command.user_id) if command.user_id else None
            confirm = bool(
                (call.line is not None and call.line.confirm_answer)
                or (user is not None and user.confirm_answer)
            )
        return LegMeta(
            leg_id=command.leg_id,
            user_id=command.user_id,
            via=command.via,
            number=command.number,
            confirm=confirm,
        )

    def publish(self, call: CarrierCall, event: Event) -> None:
        """Publish an event of the call that the call core did not make (a control attempt):
        it joins the call's events and goes to every subscriber of the runner."""
        self.runner.publish_on(call.run, event)


RECORDING_FINAL = frozenset({"completed", "absent", "failed"})
