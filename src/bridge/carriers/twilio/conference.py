"""Conference mode: the caller waits in a conference named after the call, and the bridge rings
each target of the current layer into it through the Participants API.

What the call core's commands become:

- `DialLeg` -> `CreateParticipant` in the conference (`EarlyMedia`, `Timeout` = what is left of
  the leg's ring time, `Label` = the user id, `To` = `client:<id>`, `sip:<user>@<sip_target>`
  or the number, `From` = the caller for apps, the dialled line for numbers and SIP), with a
  status callback per leg (`/twilio/status?call=&leg=`, the same as dial mode's) and the
  conference callback (`/twilio/conference?call=`).
  A `phone_number` leg with `confirm_answer` cannot be a participant: the Participants API has
  no whisper `Url` (no TwiML runs on a participant before it joins). It is a call of its own
  instead (`CreateCall` with `Url=/twilio/confirm`), asked to press 1 like in dial mode; the
  key press answers it with `<Dial><Conference>` into the caller's conference.
- `CancelLeg` / `HangupLeg` of a leg -> `UpdateCall Status=completed` on that leg's call
  (completed, not canceled: it also ends a leg that picked up at the same moment). The reason
  (`answered_elsewhere`, `layer_moved_on`, `timeout`, `caller_hangup`) is the call core's, on
  the leg's record.
- `HangupLeg` of the caller (the agent hung up) -> `UpdateCall Status=completed` on the caller.
- voicemail (`StartFallback`) or a hang-up (`RejectCaller`) once the caller is in the
  conference -> `UpdateCall Twiml=...`: the caller leaves the conference for that TwiML.

The first leg to answer wins in the call core (its `in-progress` status callback, or the press-1
for a confirmed leg); the others are ended at once. Nothing carries the ring timeouts for us
here, so each call has one timer at the call core's next deadline (the layer timeout, a turn);
the carrier's own `Timeout` (plus the 5 s it adds) is the backstop, and a leg it reports over
(`no-answer`, `busy`, `failed`) fails in the core, which moves on when a whole layer has.
The ring clock (`CarrierCall.now`) is monotonic time since the voice webhook.

REST requests run as tasks (each retried by `CarrierRest`); everything they learn comes back
through one synchronous step of the call core, like the webhooks, so nothing interleaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from twilio.twiml.voice_response import VoiceResponse

from bridge.calls.events import (
    BridgeTo,
    CallState,
    CancelLeg,
    DialLeg,
    HangupLeg,
    LegFailure,
    LegState,
    Output,
    RejectCaller,
    Side,
    StartFallback,
)
from bridge.carriers.twilio import twiml
from bridge.carriers.twilio.rest import CarrierApiError
from bridge.carriers.twilio.schemas import ConferenceCallback, ConfirmRequest, StatusCallback
from bridge.carriers.twilio.state import CarrierCall, ConferenceMember, LegMeta
from bridge.directory.model import FallbackAction
from bridge.observability.logging import call_context
from bridge.presence.model import Channel
from bridge.routing.model import Outcome

if TYPE_CHECKING:
    from bridge.carriers.twilio.service import TwilioCalls

log = structlog.get_logger("bridge.carrier")

LEG_EVENTS = ["initiated", "ringing", "answered", "completed"]
# The conference's callback is set by whoever names one first (the caller's <Conference> or
# the first participant); every join names the same URL and events.
CONFERENCE_EVENTS = ["start", "end", "join", "leave", "mute", "hold", "modify"]
CALLER_LABEL = "caller"
# The carrier's range for a participant's ring Timeout.
MIN_TIMEOUT, MAX_TIMEOUT = 5, 600


def clamp_timeout(seconds: float) -> int:
    return max(MIN_TIMEOUT, min(MAX_TIMEOUT, math.ceil(seconds)))


class ConferenceMode:
    name = "conference"

    def __init__(
        self, service: TwilioCalls, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.service = service
        self.monotonic = monotonic
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- BridgingMode ----------------------------------------------------------------------------
    def tick(self, call: CarrierCall) -> None:
        """Move the ring clock to now (it never goes back)."""
        call.now = max(call.now, self.monotonic() - call.started)

    def respond(self, call: CarrierCall, outputs: Sequence[Output]) -> VoiceResponse:
        call.mode = self.name
        call.started = self.monotonic() - call.now
        steps = [*outputs, *self._settle(call, outputs)]
        if call.machine.state is CallState.RINGING:
            response = VoiceResponse()
            for output in steps:
                if (
                    isinstance(output, StartFallback)
                    and output.step.action in (FallbackAction.RING_GROUP, FallbackAction.FORWARD)
                    and output.step.prompt
                ):
                    twiml.announce(response, output.step.prompt)
            self._join(call, response)
            self._execute(call, steps, answering=True)
        else:
            response = self._caller_twiml(call, steps)
        self._arm(call)
        return response

    def carry_out(self, call: CarrierCall, outputs: Sequence[Output]) -> None:
        steps = [*outputs, *self._settle(call, outputs)]
        self._execute(call, steps, answering=False)
        self._arm(call)

    def leg_final(self, call: CarrierCall, meta: LegMeta, status: str) -> list[Output]:
        """The carrier reports a leg's call over: a bridged leg hung up (the call ends), a
        ringing one will not answer (the core moves on once its whole layer has failed)."""
        leg = call.machine.leg(meta.leg_id)
        if leg is None:
            return []
        if leg.state is LegState.BRIDGED:
            return call.machine.hangup(Side.CALLEE, call.now)
        if leg.state.live:
            if status == "canceled":
                # Not by us (we end legs with `completed`): the conference ended under it,
                # which is the caller leaving. The caller's own status callback (often a
                # moment later) ends the call; failing the leg now would ring the next layer.
                log.info("carrier_leg_canceled_by_carrier", leg_id=meta.leg_id)
                return []
            failure = LegFailure.BUSY if status == "busy" else LegFailure.UNREACHABLE
            return call.machine.leg_failed(meta.leg_id, failure, call.now)
        return []

    async def aclose(self) -> None:
        for call in list(self.service.live_calls()):
            if call.timer is not None:
                call.timer.cancel()
                call.timer = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- /twilio/confirm -----------------------------------------------------------------------
    def confirm(self, request: ConfirmRequest) -> str:
        """A press-1 leg (a call of its own) picked up: ask for 1; on 1 it joins the caller's
        conference if it won; any other key, or none, fails the leg at once."""
        with call_context(request.call_id, leg_id=request.leg_id, leg_sid=request.call_sid):
            call = self.service.find(request.call_id)
            meta = call.legs.get(request.leg_id) if call is not None else None
            if call is None or meta is None:
                log.warning("carrier_confirm_unknown_leg")
                return twiml.render(twiml.hangup())
            key = f"confirm:{request.call_sid}:{'digits' if request.digits_step else 'prompt'}"
            replay = call.replies.get(key)
            if replay is not None:
                return replay
            self.tick(call)
            call.leg_by_sid[request.call_sid] = meta.leg_id
            meta.sid = request.call_sid
            leg = call.machine.leg(meta.leg_id)
            still_ringing = (
                leg is not None and leg.state.live and call.machine.state is CallState.RINGING
            )
            if not still_ringing:
                response = twiml.hangup()
            elif not request.digits_step:
                response = self.service.ask_to_confirm(call, meta.leg_id)
            elif request.digits == "1":
                meta.confirmed = True
                step = call.machine.leg_answered(meta.leg_id, call.now)
                self.service.run(call, step)
                self.carry_out(call, step)
                if call.machine.answered_leg == meta.leg_id:
                    response = VoiceResponse()
                    self._conference_noun(call, response, label=meta.user_id or "forward")
                else:
                    response = twiml.hangup()
            else:
                self.service.declined(call, meta, request.digits)
                step = call.machine.leg_failed(meta.leg_id, LegFailure.UNREACHABLE, call.now)
                self.service.run(call, step)
                self.carry_out(call, step)
                response = twiml.hangup()
            call.replies[key] = twiml.render(response)
            return call.replies[key]

    # -- /twilio/conference --------------------------------------------------------------------
    def conference_event(self, callback: ConferenceCallback) -> None:
        """Who is in the conference, muted or coaching: applied once per participant and
        sequence number, never backwards (a `join` that arrives after its `leave` is old)."""
        with call_context(callback.call_id, conference_sid=callback.conference_sid):
            call = self.service.find(callback.call_id)
            if call is None:
                log.info("carrier_conference_unknown_call", conference_event=callback.event)
                return
            if call.conference_sid is None:
                call.conference_sid = callback.conference_sid
            elif call.conference_sid != callback.conference_sid:
                log.warning("carrier_conference_mismatch", expected=call.conference_sid)
                return
            if callback.event == "conference-end":
                if not call.conference_ended:
                    call.conference_ended = True
                    log.info("carrier_conference_ended")
                return
            if callback.call_sid is None or not callback.event.startswith("participant-"):
                log.info("carrier_conference_event", conference_event=callback.event)
                return
            member = call.members.setdefault(callback.call_sid, ConferenceMember(callback.call_sid))
            sequence = callback.sequence if callback.sequence is not None else member.sequence + 1
            if sequence <= member.sequence:
                log.info(
                    "carrier_conference_event_ignored",
                    conference_event=callback.event,
                    sequence=callback.sequence,
                    why="retry or out of order",
                )
                return
            member.sequence = sequence
            member.label = callback.label or member.label
            if callback.muted is not None:
                member.muted = callback.muted
            if callback.coaching is not None:
                member.coaching = callback.coaching
            if callback.event == "participant-join":
                member.present = True
            elif callback.event == "participant-leave":
                member.present = False
                self._monitor_left(call, callback.call_sid)
            log.info(
                "carrier_conference_event",
                conference_event=callback.event,
                participant=callback.call_sid,
                label=member.label,
                muted=member.muted,
                coaching=member.coaching,
            )

    def monitor_status(self, call: CarrierCall, callback: StatusCallback) -> None:
        """A supervisor's own call: connected, or over (then the session is gone)."""
        user_id = callback.monitor or ""
        session = call.monitors.get(user_id)
        if session is None or (session.call_sid not in (None, callback.call_sid)):
            log.info("carrier_monitor_status_unknown", user_id=user_id, status=callback.status)
            return
        session.call_sid = callback.call_sid
        if callback.status == "in-progress":
            session.status = "in-progress"
        elif callback.status in ("completed", "busy", "failed", "no-answer", "canceled"):
            self._monitor_left(call, callback.call_sid)
        log.info("carrier_monitor_status", user_id=user_id, status=callback.status)

    def _monitor_left(self, call: CarrierCall, call_sid: str) -> None:
        for user_id, session in list(call.monitors.items()):
            if session.call_sid == call_sid:
                session.status = "ended"
                del call.monitors[user_id]
                log.info("carrier_monitor_left", user_id=user_id, mode=session.mode)

    # -- the call core's commands ---------------------------------------------------------------
    def _execute(self, call: CarrierCall, steps: Sequence[Output], *, answering: bool) -> None:
        """Turn commands into REST requests. `answering`: the caller's TwiML is the answer to
        the webhook being handled, so the caller needs no redirect."""
        for output in steps:
            if isinstance(output, DialLeg):
                leg = call.machine.leg(output.leg_id)
                if leg is not None and leg.state.live:
                    self._ring(call, output)
            elif isinstance(output, CancelLeg | HangupLeg):
                if output.leg_id == call.machine.caller_leg_id:
                    self._hang_up_caller(call)
                else:
                    self._end_leg(call, output.leg_id, output.reason.value)
            elif isinstance(output, BridgeTo):
                log.info("carrier_conference_bridged", leg_id=output.leg_id)
            elif (
                not answering
                and isinstance(output, StartFallback)
                and output.step.action in (FallbackAction.RING_GROUP, FallbackAction.FORWARD)
                and output.step.prompt
            ):
                # The caller is in the conference: saying it would mean taking them out of it
                # (a redirect) and back. They keep hearing the hold music instead.
                log.info("carrier_prompt_not_played", action=output.step.action.value)
        if answering or call.caller_redirected:
            return
        state = call.machine.state
        voicemail = state is CallState.VOICEMAIL and any(
            isinstance(o, StartFallback) and o.step.action is FallbackAction.VOICEMAIL
            for o in steps
        )
        rejected = any(isinstance(o, RejectCaller) for o in steps)
        if voicemail or rejected:
            self._redirect(call, self._caller_twiml(call, steps))

    def _settle(self, call: CarrierCall, outputs: Sequence[Output]) -> list[Output]:
        """Fail at once the legs nobody can dial (a desk-phone user without SIP credentials,
        a number leg without a number), and whatever that leads to."""
        extra: list[Output] = []
        pending = [o for o in outputs if isinstance(o, DialLeg)]
        while pending:
            command = pending.pop(0)
            leg = call.machine.leg(command.leg_id)
            if leg is None or not leg.state.live or self._target(call, command) is not None:
                continue
            log.warning("carrier_leg_unreachable", leg_id=command.leg_id, user_id=command.user_id)
            step = call.machine.leg_failed(command.leg_id, LegFailure.UNREACHABLE, call.now)
            self.service.run(call, step)
            extra += step
            pending += [o for o in step if isinstance(o, DialLeg)]
        return extra

    def _target(self, call: CarrierCall, command: DialLeg) -> str | None:
        if command.via is Channel.APPS:
            return f"client:{command.user_id}" if command.user_id else None
        if command.via is Channel.IP_PHONE:
            user = call.directory.user(command.user_id) if command.user_id else None
            if user is None or user.sip is None:
                return None
            return f"sip:{user.sip.username}@{self.service.settings.sip_target}"
        return command.number or None

    def _from(self, call: CarrierCall, via: Channel) -> str:
        """Apps show the caller; numbers and SIP need a number the carrier lets us send: the
        dialled line."""
        caller = twiml.caller_id(call.caller)
        line = call.machine.plan.line
        if via is Channel.APPS:
            return caller or line or "anonymous"
        return line or caller or "anonymous"

    def _ring(self, call: CarrierCall, command: DialLeg) -> None:
        rest = self.service.rest
        assert rest is not None  # refusal() keeps conference mode off without it
        meta = call.legs[command.leg_id]
        target = self._target(call, command)
        assert target is not None  # _settle failed the others
        timeout = clamp_timeout(command.timeout_at - call.now)
        status = self.service.url("/twilio/status", call=call.call_id, leg=command.leg_id)
        request: Coroutine[Any, Any, Any]
        if meta.confirm:
            request = rest.create_call(
                from_=self._from(call, command.via),
                to=target,
                url=self.service.url("/twilio/confirm", call=call.call_id, leg=command.leg_id),
                timeout=timeout,
                status_callback=status,
                status_callback_event=LEG_EVENTS,
            )
        else:
            request = rest.create_participant(
                call.call_id,  # the friendly name: the conference may not exist yet
                from_=self._from(call, command.via),
                to=target,
                label=command.user_id or "forward",
                early_media=True,
                timeout=timeout,
                status_callback=status,
                status_callback_event=LEG_EVENTS,
                conference_status_callback=self._conference_callback(call),
                conference_status_callback_event=CONFERENCE_EVENTS,
            )
        meta.answered = False
        meta.request = self._spawn(self._placed(call, meta, request), f"ring-{command.leg_id}")
        log.info(
            "carrier_participant_dial",
            leg_id=command.leg_id,
            user_id=command.user_id,
            to=target,
            timeout=timeout,
            confirm=meta.confirm,
        )

    async def _placed(
        self, call: CarrierCall, meta: LegMeta, request: Coroutine[Any, Any, Any]
    ) -> None:
        kind = "confirm_call" if meta.confirm else "participant"
        placed = self.service.metrics.carrier_participants
        with call_context(call.call_id, leg_id=meta.leg_id):
            try:
                made = await request
            except CarrierApiError as exc:
                # Logged and counted by the client; for the call it is a leg that failed.
                placed.labels(kind=kind, result="failed").inc()
                log.warning("carrier_leg_not_placed", status=exc.status, code=exc.code)
                self.step(
                    call,
                    lambda now: call.machine.leg_failed(meta.leg_id, LegFailure.UNREACHABLE, now),
                )
                return
            placed.labels(kind=kind, result="placed").inc()
            sid = getattr(made, "call_sid", None) or getattr(made, "sid", None)
            if sid:
                meta.sid = meta.sid or sid
                call.leg_by_sid[sid] = meta.leg_id
            conference_sid = getattr(made, "conference_sid", None)
            if conference_sid and call.conference_sid is None:
                call.conference_sid = conference_sid

    def _end_leg(self, call: CarrierCall, leg_id: str, reason: str) -> None:
        meta = call.legs.get(leg_id)
        if meta is None:
            return
        log.info(
            "carrier_leg_end", leg_id=leg_id, leg_sid=meta.sid, user_id=meta.user_id, reason=reason
        )
        self._spawn(self._end(call, meta), f"end-{leg_id}")

    async def _end(self, call: CarrierCall, meta: LegMeta) -> None:
        with call_context(call.call_id, leg_id=meta.leg_id):
            if meta.request is not None and not meta.request.done():
                await asyncio.wait({meta.request})  # its CallSid first
            if meta.sid is None or call.sid_over(meta.sid):
                return  # never placed, or already over
            rest = self.service.rest
            assert rest is not None
            # A failure is logged and counted by the client; a 4xx: it ended meanwhile.
            with contextlib.suppress(CarrierApiError):
                await rest.update_call(meta.sid, status="completed")

    def _hang_up_caller(self, call: CarrierCall) -> None:
        if call.caller_gone:
            return
        rest = self.service.rest
        assert rest is not None
        log.info("carrier_caller_hangup_sent")
        self._spawn(self._request(call, rest.update_call(call.call_id, status="completed")), "bye")

    def _redirect(self, call: CarrierCall, response: VoiceResponse) -> None:
        """Take the caller out of the conference into new TwiML (voicemail, a goodbye)."""
        if call.caller_gone:
            return
        rest = self.service.rest
        assert rest is not None
        call.caller_redirected = True
        document = twiml.render(response)
        log.info("carrier_caller_redirect", state=call.machine.state.value)
        self._spawn(self._request(call, rest.update_call(call.call_id, twiml=document)), "redirect")

    async def _request(self, call: CarrierCall, request: Coroutine[Any, Any, Any]) -> None:
        with call_context(call.call_id), contextlib.suppress(CarrierApiError):
            await request  # a failure is logged and counted by the client

    # -- TwiML ---------------------------------------------------------------------------------
    def _conference_callback(self, call: CarrierCall) -> str:
        return self.service.url("/twilio/conference", call=call.call_id)

    def _conference_noun(self, call: CarrierCall, response: VoiceResponse, *, label: str) -> None:
        """Join the call's conference: for a confirmed leg, as an agent participant."""
        dial = response.dial()
        dial.conference(
            call.call_id,
            start_conference_on_enter=True,
            end_conference_on_exit=False,
            participant_label=label,
            status_callback=self._conference_callback(call),
            status_callback_event=" ".join(CONFERENCE_EVENTS),
        )

    def _join(self, call: CarrierCall, response: VoiceResponse) -> None:
        """The caller waits in the conference (hold music) until an agent joins, and the
        conference ends when the caller leaves."""
        dial = response.dial()
        dial.conference(
            call.call_id,
            start_conference_on_enter=False,
            end_conference_on_exit=True,
            beep=False,
            participant_label=CALLER_LABEL,
            status_callback=self._conference_callback(call),
            status_callback_event=" ".join(CONFERENCE_EVENTS),
        )
        log.info("carrier_conference_join", conference=call.call_id)

    def _caller_twiml(self, call: CarrierCall, steps: Sequence[Output]) -> VoiceResponse:
        """The caller's TwiML when nobody rings (any more): voicemail, or a goodbye."""
        response = VoiceResponse()
        if call.machine.state is CallState.VOICEMAIL:
            settings = self.service.settings
            twiml.voicemail(
                response,
                self.service.voicemail_greeting(call),
                action=self.service.url("/twilio/voicemail", call=call.call_id),
                recording_callback=self.service.url("/twilio/recording", call=call.call_id),
                max_seconds=settings.voicemail_max_seconds,
            )
            return response
        reject = next((o for o in reversed(steps) if isinstance(o, RejectCaller)), None)
        prompt = reject.prompt if reject is not None else None
        if call.machine.plan.outcome is Outcome.NO_ROUTE:
            prompt = twiml.NOT_IN_SERVICE
        if prompt:
            twiml.announce(response, prompt)
        response.hangup()
        return response

    # -- the ring timer and steps ---------------------------------------------------------------
    def step(self, call: CarrierCall, advance: Callable[[float], list[Output]]) -> None:
        """One input to the call core from outside a webhook (a timer, a REST answer)."""
        if call.machine.ended:
            return
        self.tick(call)
        outputs = advance(call.now)
        self.service.run(call, outputs)
        self.carry_out(call, outputs)

    def _arm(self, call: CarrierCall) -> None:
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        deadline = call.machine.next_deadline()
        if deadline is None or call.machine.ended:
            return
        delay = max(0.0, deadline - (self.monotonic() - call.started))
        loop = asyncio.get_running_loop()
        call.timer = loop.call_later(delay, self._timer_fired, call.call_id, deadline)

    def _timer_fired(self, call_id: str, deadline: float) -> None:
        call = self.service.find(call_id)
        if call is None:
            return
        call.timer = None
        with call_context(call_id):
            # The loop may wake a hair before the deadline by the ring clock's reckoning.
            call.now = max(call.now, deadline)
            log.info("carrier_ring_timer", deadline=round(deadline, 3))
            self.step(call, call.machine.handle_timer)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        # A fresh context: the request binds its own call and leg, not those of the webhook
        # that happened to start it.
        task = asyncio.get_running_loop().create_task(
            coro, name=f"carrier-{name}", context=contextvars.Context()
        )
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("carrier_task_failed", task=task.get_name(), exc_info=task.exception())
