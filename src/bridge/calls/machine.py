"""One call, as a sans-I/O state machine: it runs a `RoutePlan` by dialing legs.

`CallMachine` never reads a clock, never sleeps, never touches a socket. Each input is a
method that takes the caller's `now` (seconds on any monotonic clock) and returns the
commands and events it leads to, in order (`bridge.calls.events`). The adapter (SIP B2BUA,
carrier webhooks, WebSocket gateway) runs the commands, publishes the events, and arms one
timer at `next_deadline()` that calls `handle_timer(now)` — the shape of aioquic's
`QuicConnection` and of our SIP `TransactionLayer`.

How a plan is run:

- The line's layers, then (for a `ring_group` fallback) that group's layers, and so on, form
  one list of *stages*. A stage rings its `RingTarget`s all at once (`ring_each_seconds` is
  None) or one at a time, each for `ring_each_seconds`, within the layer timeout.
- A stage ends at its timeout, or early when every leg in it failed (or, for one at a time,
  when every target has had its turn). Its live legs are cancelled (`layer_moved_on`, or
  `timeout` when no layer follows) and the next stage with anyone to ring starts at once.
- A user is never rung twice at the same time: a leg still ringing when its stage ends keeps
  ringing into the next stage when that stage rings the same user (all at once, or first in
  turn) — no `CancelLeg`, no second `DialLeg`; its `timeout_at` already said so. A user who
  declined this call (`LegFailure.REJECTED`) is not rung again for it.
- First answer wins: `BridgeTo` the winner and `CancelLeg(answered_elsewhere)` every other
  live leg. An answer from a leg already cancelled (the CANCEL / 200 OK race) gets
  `HangupLeg` at once, never a second bridge.
- With no stage left: the plan's final fallback — voicemail (`StartFallback`), forward (a
  `DialLeg` to the number with `Diversion` info), hang up (`RejectCaller`).
- Closed lines run the closed action at once; unknown numbers get `RejectCaller(404)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from bridge.calls.events import (
    BridgeTo,
    CallAnswered,
    CallEnded,
    CallOutcome,
    CallRinging,
    CallState,
    CancelLeg,
    DialLeg,
    Diversion,
    DiversionReason,
    EndCause,
    FallbackStarted,
    HangupLeg,
    LayerExhausted,
    LegFailure,
    LegReason,
    LegRinging,
    LegState,
    MarkCallEnded,
    MarkOnCall,
    Output,
    RejectCaller,
    RingCaller,
    Side,
    StartFallback,
)
from bridge.directory.model import FallbackAction
from bridge.presence.model import Channel
from bridge.routing.model import FallbackStep, Outcome, PlannedLayer, RingTarget, RoutePlan

__all__ = [
    "DEFAULT_FORWARD_TIMEOUT",
    "CallMachine",
    "LegInfo",
    "LiveCallView",
    "Stage",
    "flatten_plan",
]

DEFAULT_FORWARD_TIMEOUT = 60.0

# SIP status and Q.850 cause for refusing the caller.
_NOT_FOUND = (404, 1)  # unallocated number
_NO_ANSWER = (480, 19)  # no answer from user (user alerted)
_ABSENT = (480, 20)  # subscriber absent: nobody could be alerted
_BUSY = (486, 17)  # user busy


@dataclass(frozen=True, slots=True)
class Stage:
    """One layer of the line's plan or of a fallback group's plan, in ringing order."""

    depth: int  # 0: the line's own plan, 1: its fallback group, ...
    layer: PlannedLayer

    @property
    def sequential(self) -> bool:
        return self.layer.ring_each_seconds is not None

    @property
    def timeout(self) -> float:
        return float(self.layer.timeout_seconds)

    def slot(self) -> float:
        """How long one target rings in a one-at-a-time stage (never beyond the timeout)."""
        each = self.layer.ring_each_seconds
        return self.timeout if each is None else min(float(each), self.timeout)


def flatten_plan(
    plan: RoutePlan,
) -> tuple[tuple[Stage, ...], tuple[FallbackStep, ...], FallbackStep | None]:
    """(stages in order, the ring_group steps that lead into depth 1, 2, ..., final step).

    The final step is the fallback that is not a ring group with a plan (None for a plan
    without any fallback). A closed line starts with its closed action."""
    stages: list[Stage] = []
    entries: list[FallbackStep] = []
    depth = 0
    layers: tuple[PlannedLayer, ...] = () if plan.outcome is Outcome.CLOSED else plan.layers
    step = plan.fallback
    while True:
        stages.extend(Stage(depth, layer) for layer in layers)
        if step is not None and step.action is FallbackAction.RING_GROUP and step.plan is not None:
            entries.append(step)
            depth += 1
            layers = step.plan.layers
            step = step.plan.fallback
            continue
        return tuple(stages), tuple(entries), step


@dataclass(slots=True)
class _Leg:
    leg_id: str
    user_id: str | None
    via: Channel
    number: str | None
    stage: int  # index into the stages; -1 for the forward leg
    timeout_at: float
    dialed_at: float
    state: LegState = LegState.DIALING
    reason: LegReason | None = None  # why we cancelled or hung it up
    failure: LegFailure | None = None
    forward: bool = False


@dataclass(frozen=True, slots=True)
class LegInfo:
    """A read-only view of one leg."""

    leg_id: str
    user_id: str | None
    via: Channel
    number: str | None
    layer_index: int | None  # None for the forward leg
    fallback_depth: int | None
    state: LegState
    reason: LegReason | None
    failure: LegFailure | None
    timeout_at: float
    dialed_at: float
    forward: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "leg_id": self.leg_id,
            "user_id": self.user_id,
            "via": self.via.value,
            "number": self.number,
            "layer_index": self.layer_index,
            "fallback_depth": self.fallback_depth,
            "state": self.state.value,
            "reason": self.reason.value if self.reason else None,
            "failure": self.failure.value if self.failure else None,
            "forward": self.forward,
        }


class LiveCallView(Protocol):
    """What `apply_to` updates (`bridge.calls.registry.LiveCall` fits)."""

    state: str
    ringing: set[str]
    answered_by: str | None


class CallMachine:
    """One call from the moment it is routed to the moment it ends. See the module docstring.

    Every input is safe at any time: inputs that do not apply in the current state (an
    unknown leg, a second answer, a timer that fired early, anything after the end) return
    commands only when something must still be cleaned up (a late answer is hung up) and
    never raise."""

    def __init__(
        self,
        call_id: str,
        plan: RoutePlan,
        now: float,
        *,
        forward_timeout_seconds: float = DEFAULT_FORWARD_TIMEOUT,
    ) -> None:
        self.call_id = call_id
        self.plan = plan
        self.created_at = now
        self.caller_leg_id = f"{call_id}/caller"
        self.forward_timeout_seconds = forward_timeout_seconds
        self._stages, self._entries, self._final = flatten_plan(plan)
        self._state = CallState.NEW
        self._legs: dict[str, _Leg] = {}
        self._count = 0
        self._stage = -1  # index of the stage ringing now (or last rung)
        self._depth = 0  # fallback depth reached (FallbackStarted emitted up to here)
        self._deadline: float | None = None  # stage timeout, or the forward leg's
        self._slot_deadline: float | None = None  # current turn in a one-at-a-time stage
        self._queue: list[RingTarget] = []  # targets still to come in that stage
        self._current: _Leg | None = None  # the leg whose turn it is in that stage
        self._declined: set[str] = set()
        self._winner: _Leg | None = None
        self._ring_relayed = False
        self._early_media_relayed = False
        self._fallback: FallbackStep | None = None  # the final fallback, once started
        self._outcome: CallOutcome | None = None
        self._cause: EndCause | None = None

    # -- read-only views -------------------------------------------------------------------
    @property
    def state(self) -> CallState:
        return self._state

    @property
    def outcome(self) -> CallOutcome | None:
        """Known once the call has ended (the `CallEnded` event carries it too)."""
        return self._outcome

    @property
    def ended(self) -> bool:
        return self._state is CallState.ENDED

    @property
    def answered_by(self) -> str | None:
        return self._winner.user_id if self._winner is not None else None

    @property
    def answered_leg(self) -> str | None:
        return self._winner.leg_id if self._winner is not None else None

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    def ringing_user_ids(self) -> tuple[str, ...]:
        return tuple(leg.user_id for leg in self._legs.values() if leg.state.live and leg.user_id)

    def legs(self) -> tuple[LegInfo, ...]:
        return tuple(self._info(leg) for leg in self._legs.values())

    def leg(self, leg_id: str) -> LegInfo | None:
        found = self._legs.get(leg_id)
        return self._info(found) if found is not None else None

    def next_deadline(self) -> float | None:
        """When `handle_timer` must be called next; None when no timer is needed."""
        if self._state is not CallState.RINGING:
            return None
        candidates = [d for d in (self._deadline, self._slot_deadline) if d is not None]
        return min(candidates) if candidates else None

    def snapshot(self) -> dict[str, Any]:
        """The call for `GET /api/v1/calls` and the live feed."""
        stage = self._stages[self._stage] if 0 <= self._stage < len(self._stages) else None
        forward = next((leg for leg in self._legs.values() if leg.forward), None)
        return {
            "call_id": self.call_id,
            "state": self._state.value,
            "outcome": self._outcome.value if self._outcome else None,
            "plan_outcome": self.plan.outcome.value,
            "line": self.plan.line,
            "layer_index": stage.layer.index if stage is not None else None,
            "fallback_depth": self._depth,
            "ringing": sorted(self.ringing_user_ids()),
            "answered_by": self.answered_by,
            "answered_leg": self.answered_leg,
            "fallback": self._fallback.action.value if self._fallback else None,
            "forwarding_to": forward.number if forward is not None else None,
            "next_deadline": self.next_deadline(),
            "legs": [info.to_dict() for info in self.legs()],
        }

    def apply_to(self, live: LiveCallView) -> None:
        """Copy state, ringing users and who answered onto a registry entry."""
        live.state = CallState.RINGING.value if self._state is CallState.NEW else self._state.value
        live.ringing = set(self.ringing_user_ids())
        live.answered_by = self.answered_by

    # -- inputs ----------------------------------------------------------------------------
    def start(self, now: float) -> list[Output]:
        """Ring the first layer (or run the fallback, closed action, refusal) right away."""
        if self._state is not CallState.NEW:
            return []
        out: list[Output] = []
        if self.plan.outcome is Outcome.NO_ROUTE:
            self._reject(out, _NOT_FOUND, "no_route", CallOutcome.NO_ROUTE)
            return out
        self._state = CallState.RINGING
        self._enter_next_stage(now, out, leaving=[])
        return out

    def leg_ringing(self, leg_id: str, now: float, *, early_media: bool = False) -> list[Output]:
        """The leg rings (SIP 180/183, an app that shows the offer, the carrier's ringing)."""
        leg = self._legs.get(leg_id)
        if leg is None or not leg.state.live:
            return []
        out: list[Output] = []
        if not self._ring_relayed or (early_media and not self._early_media_relayed):
            self._ring_relayed = True
            self._early_media_relayed = self._early_media_relayed or early_media
            out.append(RingCaller(leg_id, early_media=early_media))
        if leg.state is LegState.DIALING:
            leg.state = LegState.RINGING
            out.append(LegRinging(leg_id, leg.user_id))
        return out

    def leg_answered(self, leg_id: str, now: float) -> list[Output]:
        """The leg answered. The first live leg to answer wins; a late one is hung up."""
        leg = self._legs.get(leg_id)
        if leg is None:
            return []
        if leg.state.live and self._state is CallState.RINGING:
            return self._win(leg)
        if leg.state in (LegState.CANCELLED, LegState.FAILED) or leg.state.live:
            reason = leg.reason or self._late_reason()
            leg.state = LegState.HUNG_UP
            leg.reason = reason
            return [HangupLeg(leg_id, reason)]
        return []  # the winner again, or a leg already hung up

    def leg_failed(self, leg_id: str, status: LegFailure, now: float) -> list[Output]:
        """The leg will not answer: busy, declined, unreachable (or the bridged leg dropped)."""
        leg = self._legs.get(leg_id)
        if leg is None:
            return []
        if leg.state is LegState.BRIDGED:
            return self.hangup(Side.CALLEE, now)
        if not leg.state.live:
            return []  # e.g. the 487 that follows our CANCEL
        leg.state = LegState.FAILED
        leg.failure = status
        if status is LegFailure.REJECTED and leg.user_id is not None:
            self._declined.add(leg.user_id)
        out: list[Output] = []
        if self._state is not CallState.RINGING:
            return out
        if leg.forward:
            self._deadline = None
            code = _BUSY if status is LegFailure.BUSY else _NO_ANSWER
            self._reject(out, code, f"forward_{status.value}", CallOutcome.NO_ANSWER_FALLBACK)
            return out
        if leg.stage != self._stage:
            return out
        stage = self._stages[self._stage]
        if stage.sequential:
            if leg is self._current:
                self._current = None
                self._slot_deadline = None
                if not self._dial_next_in_turn(now, out):
                    self._move_on(now, out, timed_out=False)
        elif not self._live_in_stage():
            self._move_on(now, out, timed_out=False)
        return out

    def handle_timer(self, now: float) -> list[Output]:
        """Run every deadline that is due at `now` (a timer that fires early does nothing)."""
        out: list[Output] = []
        while self._state is CallState.RINGING:
            deadline = self.next_deadline()
            if deadline is None or deadline > now:
                break
            if self._fallback is not None:  # the forward leg rang out
                self._deadline = None
                for leg in self._live():
                    self._cancel(leg, LegReason.TIMEOUT, out)
                self._reject(out, _NO_ANSWER, "forward_no_answer", CallOutcome.NO_ANSWER_FALLBACK)
            elif self._deadline is not None and self._deadline <= now:
                self._move_on(now, out, timed_out=True)
            else:  # this target's turn is over: the next one
                self._slot_deadline = None
                if self._current is not None and self._current.state.live:
                    self._cancel(self._current, LegReason.TIMEOUT, out)
                self._current = None
                if not self._dial_next_in_turn(now, out):
                    self._move_on(now, out, timed_out=False)
        return out

    def caller_hangup(self, now: float) -> list[Output]:
        """The caller hung up (before or after an answer)."""
        if self._state in (CallState.ANSWERED, CallState.VOICEMAIL):
            return self.hangup(Side.CALLER, now)
        if self._state is CallState.ENDED:
            return []
        out: list[Output] = []
        for leg in self._live():
            self._cancel(leg, LegReason.CALLER_HANGUP, out)
        self._end(out, EndCause.CALLER_HANGUP, CallOutcome.CALLER_CANCELLED)
        return out

    def hangup(self, side: Side, now: float) -> list[Output]:
        """One side of an answered call (or of voicemail) hung up: end the other side."""
        if side is Side.CALLER and self._state in (CallState.NEW, CallState.RINGING):
            return self.caller_hangup(now)
        out: list[Output] = []
        if self._state is CallState.ANSWERED and self._winner is not None:
            winner = self._winner
            winner.state = LegState.ENDED
            if side is Side.CALLER:
                winner.reason = LegReason.CALLER_HANGUP
                out.append(HangupLeg(winner.leg_id, LegReason.CALLER_HANGUP))
            else:
                winner.reason = LegReason.CALLEE_HANGUP
                out.append(HangupLeg(self.caller_leg_id, LegReason.CALLEE_HANGUP))
            if winner.user_id is not None:
                out.append(MarkCallEnded(winner.user_id))
            outcome = CallOutcome.FORWARDED if winner.forward else CallOutcome.ANSWERED
            self._end(out, _cause_of(side), outcome)
        elif self._state is CallState.VOICEMAIL:
            if side is Side.CALLEE:
                out.append(HangupLeg(self.caller_leg_id, LegReason.CALLEE_HANGUP))
            self._end(out, _cause_of(side), CallOutcome.VOICEMAIL)
        return out

    def voicemail_unavailable(self, now: float) -> list[Output]:
        """The adapter could not take the voicemail (no media on its path) and refused the
        caller instead: the call ends as refused, its outcome still `voicemail`."""
        out: list[Output] = []
        if self._state is CallState.VOICEMAIL:
            self._end(out, EndCause.REJECTED, CallOutcome.VOICEMAIL)
        return out

    # -- internals -------------------------------------------------------------------------
    def _info(self, leg: _Leg) -> LegInfo:
        stage = self._stages[leg.stage] if leg.stage >= 0 else None
        return LegInfo(
            leg_id=leg.leg_id,
            user_id=leg.user_id,
            via=leg.via,
            number=leg.number,
            layer_index=stage.layer.index if stage is not None else None,
            fallback_depth=stage.depth if stage is not None else None,
            state=leg.state,
            reason=leg.reason,
            failure=leg.failure,
            timeout_at=leg.timeout_at,
            dialed_at=leg.dialed_at,
            forward=leg.forward,
        )

    def _live(self) -> list[_Leg]:
        return [leg for leg in self._legs.values() if leg.state.live]

    def _live_in_stage(self) -> list[_Leg]:
        return [leg for leg in self._live() if leg.stage == self._stage]

    def _late_reason(self) -> LegReason:
        if self._winner is not None:
            return LegReason.ANSWERED_ELSEWHERE
        if self._cause is EndCause.CALLER_HANGUP:
            return LegReason.CALLER_HANGUP
        if self._state is CallState.RINGING:
            return LegReason.REJECTED  # a leg that had failed cannot answer now
        return LegReason.TIMEOUT  # voicemail, or the caller was refused

    def _cancel(self, leg: _Leg, reason: LegReason, out: list[Output]) -> None:
        leg.state = LegState.CANCELLED
        leg.reason = reason
        out.append(CancelLeg(leg.leg_id, reason))

    def _end(self, out: list[Output], cause: EndCause, outcome: CallOutcome) -> None:
        if self.plan.outcome is Outcome.CLOSED:
            outcome = CallOutcome.CLOSED
        self._state = CallState.ENDED
        self._deadline = self._slot_deadline = None
        self._current = None
        self._queue = []
        self._outcome = outcome
        self._cause = cause
        out.append(CallEnded(cause, outcome))

    def _reject(
        self,
        out: list[Output],
        code: tuple[int, int],
        reason: str,
        outcome: CallOutcome,
        prompt: str | None = None,
    ) -> None:
        out.append(RejectCaller(code[0], code[1], reason, prompt))
        self._end(out, EndCause.REJECTED, outcome)

    def _win(self, leg: _Leg) -> list[Output]:
        leg.state = LegState.BRIDGED
        self._winner = leg
        out: list[Output] = [BridgeTo(leg.leg_id)]
        for other in self._live():
            self._cancel(other, LegReason.ANSWERED_ELSEWHERE, out)
        self._state = CallState.ANSWERED
        self._deadline = self._slot_deadline = None
        self._current = None
        self._queue = []
        if leg.user_id is not None:
            out.append(MarkOnCall(leg.user_id))
        out.append(CallAnswered(leg.user_id, leg.leg_id, leg.via))
        return out

    def _dial(
        self,
        out: list[Output],
        now: float,
        *,
        user_id: str | None,
        via: Channel,
        number: str | None,
        stage: int,
        timeout_at: float,
        diversion: Diversion | None = None,
    ) -> _Leg:
        self._count += 1
        leg = _Leg(
            leg_id=f"{self.call_id}/{self._count}",
            user_id=user_id,
            via=via,
            number=number,
            stage=stage,
            timeout_at=timeout_at,
            dialed_at=now,
            forward=stage < 0,
        )
        self._legs[leg.leg_id] = leg
        out.append(DialLeg(leg.leg_id, user_id, via, number, timeout_at, diversion))
        return leg

    def _dial_target(self, out: list[Output], now: float, target: RingTarget, end: float) -> _Leg:
        """Dial a member in the current stage; `end` is when this stage stops it."""
        return self._dial(
            out,
            now,
            user_id=target.user_id,
            via=target.via,
            number=target.number,
            stage=self._stage,
            timeout_at=self._projected_end(target, end),
        )

    def _turn_order(self, stage: Stage) -> list[RingTarget]:
        return [t for t in stage.layer.ring if t.user_id not in self._declined]

    def _keeps_ringing(self, stage: Stage, user_id: str | None, via: Channel) -> bool:
        """Would a leg to this user, still ringing when the stage before ends, carry on?"""
        if user_id is None:
            return False
        if stage.sequential:
            order = self._turn_order(stage)
            return bool(order) and order[0].user_id == user_id and order[0].via is via
        return any(
            t.user_id == user_id and t.via is via and user_id not in self._declined
            for t in stage.layer.ring
        )

    def _projected_end(self, target: RingTarget, end: float) -> float:
        """When the leg will be stopped if nothing else happens: the end of its turn, carried
        on through the following stages that ring the same user from their start."""
        index = self._stage
        deadline = self._deadline if self._deadline is not None else end
        while end >= deadline and index + 1 < len(self._stages):
            index += 1
            following = self._stages[index]
            if not self._turn_order(following):
                continue  # nobody to ring there: skipped at once
            if not self._keeps_ringing(following, target.user_id, target.via):
                break
            start = deadline
            deadline = start + following.timeout
            end = start + following.slot() if following.sequential else deadline
        return end

    def _dial_next_in_turn(self, now: float, out: list[Output]) -> bool:
        """One at a time: dial the next target whose turn it is. False when none is left."""
        stage = self._stages[self._stage]
        assert self._deadline is not None
        while self._queue:
            target = self._queue.pop(0)
            if target.user_id in self._declined:
                continue
            end = min(now + stage.slot(), self._deadline)
            self._current = self._dial_target(out, now, target, end)
            self._slot_deadline = end
            out.append(CallRinging(stage.layer.index, (target.user_id,), stage.depth))
            return True
        return False

    def _move_on(self, now: float, out: list[Output], *, timed_out: bool) -> None:
        stage = self._stages[self._stage]
        out.append(LayerExhausted(stage.layer.index, stage.depth, timed_out))
        leaving = self._live_in_stage()
        self._deadline = self._slot_deadline = None
        self._current = None
        self._queue = []
        self._enter_next_stage(now, out, leaving)

    def _cross_to(self, depth: int, out: list[Output]) -> None:
        """Announce each fallback group entered on the way to `depth`."""
        while self._depth < depth:
            step = self._entries[self._depth]
            self._depth += 1
            out.append(FallbackStarted(step.action, step.why))
            out.append(StartFallback(step))

    def _enter_next_stage(self, now: float, out: list[Output], leaving: list[_Leg]) -> None:
        """Start the next stage with anyone to ring, or the final fallback."""
        for index in range(self._stage + 1, len(self._stages)):
            stage = self._stages[index]
            order = self._turn_order(stage)
            carried = [leg for leg in leaving if self._keeps_ringing(stage, leg.user_id, leg.via)]
            if not order and not carried:
                continue
            for leg in leaving:
                if leg not in carried:
                    self._cancel(leg, LegReason.LAYER_MOVED_ON, out)
            self._cross_to(stage.depth, out)
            self._stage = index
            self._deadline = now + stage.timeout
            for leg in carried:
                leg.stage = index
            if stage.sequential:
                self._queue = order
                if carried:  # the first in turn was still ringing: its turn starts now
                    first = self._queue.pop(0)
                    self._current = carried[0]
                    self._slot_deadline = min(now + stage.slot(), self._deadline)
                    out.append(CallRinging(stage.layer.index, (first.user_id,), stage.depth))
                else:  # `order` is not empty: someone is dialed
                    self._dial_next_in_turn(now, out)
                return
            ringing = {leg.user_id for leg in carried}
            for target in order:
                if target.user_id not in ringing:
                    self._dial_target(out, now, target, self._deadline)
                    ringing.add(target.user_id)
            users = tuple(t.user_id for t in stage.layer.ring if t.user_id in ringing)
            out.append(CallRinging(stage.layer.index, users, stage.depth))
            return
        for leg in leaving:
            self._cancel(leg, LegReason.TIMEOUT, out)
        self._stage = len(self._stages)
        self._deadline = self._slot_deadline = None
        self._cross_to(len(self._entries), out)
        self._final_fallback(now, out)

    def _final_fallback(self, now: float, out: list[Output]) -> None:
        step: FallbackStep | None = self._final
        if step is None:
            self._reject(out, self._refusal(), "no_fallback", CallOutcome.HANGUP)
            return
        self._fallback = step
        out.append(FallbackStarted(step.action, step.why))
        out.append(StartFallback(step))
        if step.action is FallbackAction.VOICEMAIL:
            self._state = CallState.VOICEMAIL
            return
        if step.action is FallbackAction.FORWARD and step.number is not None:
            self._deadline = now + self.forward_timeout_seconds
            self._dial(
                out,
                now,
                user_id=None,
                via=Channel.PHONE_NUMBER,
                number=step.number,
                stage=-1,
                timeout_at=self._deadline,
                diversion=self._diversion(step),
            )
            return
        # hangup, a fallback loop cut short by routing, or a fallback without a target
        self._reject(out, self._refusal(), step.why, CallOutcome.HANGUP, step.prompt)

    def _refusal(self) -> tuple[int, int]:
        return _NO_ANSWER if self._legs else _ABSENT

    def _diversion(self, step: FallbackStep) -> Diversion:
        if self.plan.outcome is Outcome.CLOSED:
            reason = DiversionReason.TIME_OF_DAY
        elif self._legs:
            reason = DiversionReason.NO_ANSWER
        else:
            reason = DiversionReason.UNAVAILABLE
        return Diversion(
            reason=reason,
            line=self.plan.line,
            target_kind=self.plan.target_kind,
            target_id=self.plan.target_id,
            why=step.why,
        )


def _cause_of(side: Side) -> EndCause:
    return EndCause.CALLER_HANGUP if side is Side.CALLER else EndCause.CALLEE_HANGUP
