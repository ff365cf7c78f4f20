"""Dial mode: the call core's legs become `<Dial>` verbs that the carrier rings.

Each webhook answer shows the carrier every leg the call core has ringing right now in one
`<Dial>`: `<Client>` (identity = user id) for `apps`, `<Sip>` to the bridge's SIP address for
`ip_phone` (our registrar forks it to the registered phones), `<Number>` for `phone_number`
members and forwards. Its `timeout` is the time left to the core's next deadline (the layer
timeout; for the one-at-a-time strategies, the member's turn), so one `<Dial>` per layer, or
per turn. When it ends, the carrier requests its `action` (`/twilio/dial-action`) and the
core moves on exactly as its timer would have: the next layer or turn, a fallback group,
the final fallback (voicemail `<Record>`, a forward `<Dial><Number>`, `<Hangup/>`).

The carrier runs the ring race of one `<Dial>` itself (first to answer is bridged, the others
are hung up); the core is told of the answer by the winning leg's status callback and keeps
the record, presence and events. A `<Number>` with `confirm_answer` carries a `url`: the
callee hears "press 1" (`/twilio/confirm`) and only the key press counts as the answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog
from twilio.twiml.voice_response import Dial, VoiceResponse

from bridge.calls.events import (
    CallState,
    HangupLeg,
    LegFailure,
    Output,
    RejectCaller,
    Side,
    StartFallback,
)
from bridge.calls.machine import LegInfo
from bridge.carriers.twilio import twiml
from bridge.carriers.twilio.schemas import FINAL_CALL_STATUSES, ConfirmRequest, DialAction
from bridge.carriers.twilio.state import CarrierCall, DialRecord, LegMeta
from bridge.directory.model import FallbackAction
from bridge.observability.logging import call_context
from bridge.presence.model import Channel
from bridge.routing.model import Outcome

if TYPE_CHECKING:
    from bridge.carriers.twilio.service import TwilioCalls

log = structlog.get_logger("bridge.carrier")

# The carrier rings at most ten nouns in one <Dial>; further legs of a layer count as failed.
MAX_NOUNS = 10
LEG_EVENTS = "initiated ringing answered completed"


class DialMode:
    name = "dial"

    def __init__(self, service: TwilioCalls) -> None:
        self.service = service

    # -- BridgingMode ----------------------------------------------------------------------------
    def respond(self, call: CarrierCall, outputs: Sequence[Output]) -> VoiceResponse:
        steps = [*outputs, *self._settle(call)]
        response = VoiceResponse()
        for output in steps:
            # A fallback group or forward with a prompt: say it before ringing on.
            if (
                isinstance(output, StartFallback)
                and output.step.action in (FallbackAction.RING_GROUP, FallbackAction.FORWARD)
                and output.step.prompt
            ):
                twiml.announce(response, output.step.prompt)
        state = call.machine.state
        if state is CallState.RINGING:
            self._dial(call, response)
        elif state is CallState.VOICEMAIL:
            self._voicemail(call, response)
        else:
            reject = next((o for o in reversed(steps) if isinstance(o, RejectCaller)), None)
            prompt = reject.prompt if reject is not None else None
            if call.machine.plan.outcome is Outcome.NO_ROUTE:
                prompt = twiml.NOT_IN_SERVICE
            if prompt:
                twiml.announce(response, prompt)
            response.hangup()
        return response

    def carry_out(self, call: CarrierCall, outputs: Sequence[Output]) -> None:
        # The carrier's <Dial> rings, cancels (answered elsewhere) and bridges by itself.
        for output in outputs:
            if isinstance(output, HangupLeg) and output.leg_id != call.machine.caller_leg_id:
                log.info("carrier_late_answer", leg_id=output.leg_id, reason=output.reason.value)

    def tick(self, call: CarrierCall) -> None:
        """The ring clock moves only when a `<Dial>` rang out (see `_not_answered`)."""

    def leg_final(self, call: CarrierCall, meta: LegMeta, status: str) -> list[Output]:
        """A leg that ends changes nothing yet: its `<Dial>`'s action request moves the plan
        on, once, for all the legs of that `<Dial>`."""
        return []

    async def aclose(self) -> None:
        """Nothing of its own runs in the background."""

    # -- /twilio/dial-action ---------------------------------------------------------------------
    def dial_action(self, request: DialAction) -> str:
        """One `<Dial>` ended: the next layer or turn, the fallback, or `<Hangup/>`.

        The answer to each `<Dial>`'s action is kept and replayed: a retried request changes
        nothing twice."""
        with call_context(request.call_sid, dial=request.dial):
            call = self.service.find(request.call_sid)
            record = call.dials.get(request.dial) if call is not None else None
            if call is None or record is None:
                log.warning("carrier_dial_action_unknown", dial_status=request.dial_status)
                return twiml.render(twiml.hangup())
            if record.twiml is not None:
                log.info("carrier_dial_action_retry", dial_status=request.dial_status)
                return record.twiml
            log.info(
                "carrier_dial_ended",
                dial_status=request.dial_status,
                call_status=request.call_status,
                dial_call_sid=request.dial_call_sid,
            )
            outputs = self._dial_ended(call, record, request)
            record.twiml = twiml.render(self.respond(call, outputs))
            return record.twiml

    def _dial_ended(
        self, call: CarrierCall, record: DialRecord, request: DialAction
    ) -> list[Output]:
        machine = call.machine
        caller_gone = request.call_status in FINAL_CALL_STATUSES
        out: list[Output] = []
        if machine.ended:
            return out
        answered = request.dial_status in ("completed", "answered")
        if answered and machine.state is CallState.RINGING:
            winner = self._winner(call, record, request.dial_call_sid)
            if winner is not None:
                if request.dial_call_sid:
                    call.leg_by_sid[request.dial_call_sid] = winner
                    call.legs[winner].sid = request.dial_call_sid
                step = machine.leg_answered(winner, call.now)
                self.service.run(call, step)
                out += step
        if machine.state in (CallState.ANSWERED, CallState.VOICEMAIL):
            # The bridged call is over: whoever hung up first, the call ends.
            step = machine.hangup(Side.CALLER if caller_gone else Side.CALLEE, call.now)
        elif machine.state is not CallState.RINGING:
            step = []
        elif caller_gone:
            step = machine.caller_hangup(call.now)
        else:
            step = self._not_answered(call, record, request.dial_status)
        self.service.run(call, step)
        return out + step

    def _not_answered(self, call: CarrierCall, record: DialRecord, status: str) -> list[Output]:
        """Move the plan on from a `<Dial>` that ended without a bridge, as the core's own
        timer would have: `no-answer` means its timeout ran out."""
        machine = call.machine
        if status == "no-answer":
            call.now = max(call.now, record.deadline)
        failure = LegFailure.BUSY if status == "busy" else LegFailure.UNREACHABLE
        out: list[Output] = []
        for leg_id in record.leg_ids:
            leg = machine.leg(leg_id)
            if leg is None or not leg.state.live:
                continue
            meta = call.legs.get(leg_id)
            declined = meta is not None and meta.declined_in == record.seq
            if declined or status != "no-answer":
                out += machine.leg_failed(leg_id, failure, call.now)
        out += machine.handle_timer(call.now)
        return out

    def _winner(
        self, call: CarrierCall, record: DialRecord, dial_call_sid: str | None
    ) -> str | None:
        """Which leg of this `<Dial>` was bridged: the one whose CallSid the carrier names,
        else the only candidate (a leg waiting for its key press is no candidate)."""
        machine = call.machine

        def candidate(leg_id: str) -> bool:
            leg = machine.leg(leg_id)
            meta = call.legs.get(leg_id)
            if leg is None or not leg.state.live:
                return False
            return meta is None or not meta.confirm or meta.confirmed

        if dial_call_sid is not None:
            named = call.leg_by_sid.get(dial_call_sid)
            if named is not None:
                return named if candidate(named) else None
        found = [leg_id for leg_id in record.leg_ids if candidate(leg_id)]
        picked = [leg_id for leg_id in found if call.legs[leg_id].answered] or found
        if len(picked) > 1:
            log.warning("carrier_answer_unattributed", legs=picked, dial_call_sid=dial_call_sid)
        return picked[0] if picked else None

    # -- /twilio/confirm -----------------------------------------------------------------------
    def confirm(self, request: ConfirmRequest) -> str:
        """A forwarded callee picked up: ask for 1 (`<Gather>`); then 1 connects them and any
        other key, or none, hangs the leg up so it counts as not answered."""
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
            call.leg_by_sid[request.call_sid] = meta.leg_id
            meta.sid = request.call_sid
            leg = call.machine.leg(meta.leg_id)
            still_ringing = (
                leg is not None and leg.state.live and call.machine.state is CallState.RINGING
            )
            dial = _dial_of(call, meta.leg_id)
            if not still_ringing:
                response = twiml.hangup()
            elif not request.digits_step:
                response = self.service.ask_to_confirm(call, meta.leg_id, dial=dial)
            elif request.digits == "1":
                meta.confirmed = True
                step = call.machine.leg_answered(meta.leg_id, call.now)
                self.service.run(call, step)
                # An empty document: the carrier bridges this leg to the caller.
                won = call.machine.answered_leg == meta.leg_id
                response = VoiceResponse() if won else twiml.hangup()
            else:
                meta.declined_in = dial
                self.service.declined(call, meta, request.digits)
                response = twiml.hangup()
            call.replies[key] = twiml.render(response)
            return call.replies[key]

    # -- TwiML ---------------------------------------------------------------------------------
    def _settle(self, call: CarrierCall) -> list[Output]:
        """Fail the legs no `<Dial>` noun can reach (a desk-phone user without SIP credentials,
        the eleventh leg of a layer) until the core has legs to show or has moved on."""
        machine = call.machine
        out: list[Output] = []
        while machine.state is CallState.RINGING:
            live = [leg for leg in machine.legs() if leg.state.live]
            reachable = [leg for leg in live if self._reachable(call, leg)]
            failing = [leg for leg in live if leg not in reachable[:MAX_NOUNS]]
            if reachable and not failing:
                break
            step: list[Output] = []
            for leg in failing:
                log.warning("carrier_leg_unreachable", leg_id=leg.leg_id, user_id=leg.user_id)
                step += machine.leg_failed(leg.leg_id, LegFailure.UNREACHABLE, call.now)
            if not live:
                deadline = machine.next_deadline()
                if deadline is None:
                    break
                call.now = max(call.now, deadline)
                step += machine.handle_timer(call.now)
            self.service.run(call, step)
            out += step
        return out

    def _reachable(self, call: CarrierCall, leg: LegInfo) -> bool:
        if leg.via is Channel.IP_PHONE:
            user = call.directory.user(leg.user_id) if leg.user_id else None
            return user is not None and user.sip is not None
        if leg.via is Channel.PHONE_NUMBER:
            return bool(leg.number)
        return leg.user_id is not None

    def _dial(self, call: CarrierCall, response: VoiceResponse) -> None:
        machine = call.machine
        legs = [leg for leg in machine.legs() if leg.state.live]
        deadline = machine.next_deadline()
        assert legs and deadline is not None  # _settle leaves a ringing call with legs
        seq = len(call.dials) + 1
        first = legs[0]
        record = DialRecord(
            seq=seq,
            leg_ids=tuple(leg.leg_id for leg in legs),
            started=call.now,
            deadline=deadline,
            layer_index=first.layer_index,
            fallback_depth=first.fallback_depth,
        )
        call.dials[seq] = record
        timeout = max(1, math.ceil(deadline - call.now))
        dial = response.dial(
            action=self.service.url(
                "/twilio/dial-action",
                call=call.call_id,
                dial=seq,
                layer=first.layer_index,
                depth=first.fallback_depth,
            ),
            timeout=timeout,
            answer_on_bridge=True,
            caller_id=twiml.caller_id(call.caller),
        )
        for leg in legs:
            self._noun(call, dial, leg, seq)
        log.info(
            "carrier_dial",
            dial=seq,
            layer=first.layer_index,
            fallback_depth=first.fallback_depth,
            timeout=timeout,
            users=[leg.user_id for leg in legs],
        )

    def _noun(self, call: CarrierCall, dial: Dial, leg: LegInfo, seq: int) -> None:
        status = self.service.url("/twilio/status", call=call.call_id, leg=leg.leg_id)
        meta = call.legs[leg.leg_id]
        meta.answered = False  # a new attempt at this leg (a new carrier CallSid)
        if leg.via is Channel.APPS:
            dial.client(leg.user_id, status_callback=status, status_callback_event=LEG_EVENTS)
        elif leg.via is Channel.IP_PHONE:
            user = call.directory.user(leg.user_id or "")
            assert user is not None and user.sip is not None  # checked by _reachable
            target = self.service.settings.sip_target
            dial.sip(
                f"sip:{user.sip.username}@{target}",
                status_callback=status,
                status_callback_event=LEG_EVENTS,
            )
        else:
            confirm = None
            if meta.confirm:
                confirm = self.service.url(
                    "/twilio/confirm", call=call.call_id, leg=leg.leg_id, dial=seq
                )
            dial.number(
                leg.number,
                url=confirm,
                status_callback=status,
                status_callback_event=LEG_EVENTS,
            )

    def _voicemail(self, call: CarrierCall, response: VoiceResponse) -> None:
        settings = self.service.settings
        twiml.voicemail(
            response,
            self.service.voicemail_greeting(call),
            action=self.service.url("/twilio/voicemail", call=call.call_id),
            recording_callback=self.service.url("/twilio/recording", call=call.call_id),
            max_seconds=settings.voicemail_max_seconds,
        )


def _dial_of(call: CarrierCall, leg_id: str) -> int | None:
    """The latest `<Dial>` that rang this leg."""
    for seq in sorted(call.dials, reverse=True):
        if leg_id in call.dials[seq].leg_ids:
            return seq
    return None
