"""One call runner under every dial path.

`CallRunner` does everything of running a call that does not depend on how its legs are
reached: it admits the call (refused while draining), routes it with a fresh random seed
(the same `RoutingService.route` Test Routing explains), registers the live call, feeds the
call core (`CallMachine`) with the call's clock, arms the core's timer, and applies the
core's outputs: presence (on call, ended and wrap-up), the app offers over the WebSocket
gateway (`AppOffers`), metrics (`bridge_calls_total{path,outcome}`,
`bridge_call_setup_seconds{path}`), the typed call events (`CallEventRecord`, to every
subscriber) and their log lines. The leg commands go to the path's `LegDriver` (`sip/`,
`carriers/twilio/`), which keeps only protocol work and reports back through the runner's
inputs (`leg_ringing`, `leg_answered`, `leg_failed`, `hangup`, ...).

Adding a dial path is one folder with a `LegDriver` (and a settings section): admission,
routing, presence, offers, metrics and events come from here.

Clocks. Each call's core runs on the clock its path gives at admission (`CallTimers`): the
SIP path gives its endpoint's monotonic clock and timers, so every layer timeout fires from
here. The carrier's dial mode has no timer of its own to arm: the carrier's `<Dial>` times
each layer out, so its calls run on a ring clock the path moves (`timers=None`, `clock=`).
The wall clock (`wall_clock`) only stamps the live call and the events.

Nothing here blocks: every input is handled in one synchronous step on the loop.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from bridge.calls.events import (
    BridgeTo,
    CallAnswered,
    CallEnded,
    CallEventRecord,
    CallRinging,
    CallState,
    CancelLeg,
    DialLeg,
    Event,
    FallbackStarted,
    HangupLeg,
    LayerExhausted,
    LegFailure,
    LegReason,
    MarkCallEnded,
    MarkOnCall,
    Output,
    RejectCaller,
    RingCaller,
    Side,
    StartFallback,
)
from bridge.calls.machine import CallMachine
from bridge.calls.ports import Answerer, AppOffers, LegDriver
from bridge.calls.registry import CallRegistry, LiveCall, NotAcceptingCalls
from bridge.observability.logging import call_context
from bridge.observability.metrics import Metrics
from bridge.presence.model import Channel
from bridge.presence.service import PresenceService
from bridge.routing.model import CallRequest, RoutePlan
from bridge.routing.service import RoutingService

__all__ = [
    "CallEventListener",
    "CallRunner",
    "CallTimers",
    "NotAcceptingCalls",
    "RunningCall",
]

log = structlog.get_logger("bridge.calls")

CallEventListener = Callable[[CallEventRecord], None]


class CallTimers(Protocol):
    """A dial path's clock and timers (its endpoint's loop, or a fake one in tests)."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> object: ...

    def cancel(self, handle: object) -> None: ...


@dataclass(eq=False)
class RunningCall:
    """One call the runner runs: what every path shares. A path keeps its protocol state in
    its own record, keyed by `call_id`."""

    call_id: str
    path: str
    machine: CallMachine
    live: LiveCall
    driver: LegDriver
    clock: Callable[[], float]  # the call core's clock for this call
    timers: CallTimers | None  # None: the path times the legs itself (carrier's <Dial>)
    started: float  # on `clock`, when the call was admitted
    caller_sdp: str | None = None  # the caller's SDP offer, handed to apps that answer
    # The SDP offered to apps, made when the first app is rung (a path that anchors media
    # offers its own, not the caller's; awaitable when a media relay, a round trip away,
    # makes it); None: `caller_sdp`.
    app_sdp: Callable[[str], str | Awaitable[str | None] | None] | None = None
    timer: object | None = None
    setup_measured: bool = False
    # Users offered the call on their apps (user id -> leg id), the accept being decided
    # (user id, SDP answer) and the user whose app won.
    app_legs: dict[str, str] = field(default_factory=dict)
    app_answer: tuple[str, str | None] | None = None
    app_winner: str | None = None
    events: list[CallEventRecord] = field(default_factory=list)

    @property
    def now(self) -> float:
        return self.clock()

    @property
    def plan(self) -> RoutePlan:
        return self.machine.plan

    @property
    def ended(self) -> bool:
        return self.machine.ended

    def app_user_of(self, leg_id: str) -> str | None:
        return next((user for user, leg in self.app_legs.items() if leg == leg_id), None)


class CallRunner:
    """See the module docstring."""

    def __init__(
        self,
        *,
        routing: RoutingService,
        presence: PresenceService,
        registry: CallRegistry,
        metrics: Metrics,
        wall_clock: Callable[[], datetime],
        seed: Callable[[], int] = lambda: secrets.randbits(32),
        offers: AppOffers | None = None,
    ) -> None:
        self.routing = routing
        self.presence = presence
        self.registry = registry
        self.metrics = metrics
        self._wall = wall_clock
        self._seed = seed
        self.offers = offers
        self._calls: dict[str, RunningCall] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # app offers awaiting a relay's SDP
        self._listeners: list[CallEventListener] = []
        # Told after each input's outputs were applied (the outbox notes the legs that ended).
        self._watchers: list[Callable[[RunningCall], None]] = []
        # The wall-clock time of the outputs being applied: read once per input, not once
        # per event (an input's outputs happen at one moment).
        self._applying = 0
        self._stamp: datetime | None = None

    def use_offers(self, offers: AppOffers) -> None:
        """Ring app users on their WebSocket sessions (the gateway is built after us)."""
        self.offers = offers

    def subscribe(self, listener: CallEventListener) -> None:
        """Receive every event of every call, on every path (the live feed, the outbox)."""
        self._listeners.append(listener)

    def watch(self, watcher: Callable[[RunningCall], None]) -> None:
        """`watcher(call)` after each input of each call was applied (its legs' new states)."""
        self._watchers.append(watcher)

    # -- reading -------------------------------------------------------------------------------
    def get(self, call_id: str) -> RunningCall | None:
        return self._calls.get(call_id)

    def __len__(self) -> int:
        return len(self._calls)

    @property
    def accepting(self) -> bool:
        return self.registry.accepting

    # -- admission -------------------------------------------------------------------------------
    def admit(
        self,
        request: CallRequest,
        driver: LegDriver,
        *,
        plan: RoutePlan | None = None,
        timers: CallTimers | None = None,
        clock: Callable[[], float] | None = None,
        caller_sdp: str | None = None,
    ) -> RunningCall:
        """Route the call (unless the path brings a fixed `plan`) and register it live. Raises
        `NotAcceptingCalls` while the daemon drains. `start` rings it."""
        if not self.registry.accepting:
            raise NotAcceptingCalls(request.call_id)
        if plan is None:
            plan = self.routing.route(replace(request, seed=self._seed()))
        if clock is None:
            if timers is None:
                raise ValueError("a call needs a clock: its path's timers, or clock=")
            clock = timers.now
        live = LiveCall(
            call_id=request.call_id,
            path=driver.path,
            line=plan.line,
            caller=request.caller,
            started_at=self._wall(),
        )
        self.registry.add(live)
        now = clock()
        call = RunningCall(
            call_id=request.call_id,
            path=driver.path,
            machine=CallMachine(request.call_id, plan, now),
            live=live,
            driver=driver,
            clock=clock,
            timers=timers,
            started=now,
            caller_sdp=caller_sdp,
        )
        self._calls[call.call_id] = call
        return call

    def start(self, call: RunningCall) -> list[Output]:
        """Ring the first layer (or run the closed action, the refusal): the outputs, applied."""
        return self.feed(call, call.machine.start)

    # -- inputs from the dial paths ----------------------------------------------------------
    def feed(self, call: RunningCall, step: Callable[[float], list[Output]]) -> list[Output]:
        """Give the core one input at the call's `now`, apply what it returns, return it.
        (The path calls it with the call's log context bound, as it handles the call's
        message; the runner's own timers bind it themselves.)"""
        outputs = step(call.now)
        self.apply(call, outputs)
        return outputs

    def feed_later(self, call: RunningCall, step: Callable[[float], list[Output]]) -> None:
        """The same, on the next loop pass (an input that arises while applying outputs)."""
        if call.timers is None:
            self.feed(call, step)
            return
        timers = call.timers
        timers.call_at(timers.now(), lambda: self._feed_from_loop(call, step))

    def _feed_from_loop(self, call: RunningCall, step: Callable[[float], list[Output]]) -> None:
        if call.call_id in self._calls:
            with call_context(call.call_id):
                self.feed(call, step)

    def leg_ringing(self, call: RunningCall, leg_id: str, *, early_media: bool = False) -> None:
        self.feed(call, lambda now: call.machine.leg_ringing(leg_id, now, early_media=early_media))

    def leg_answered(self, call: RunningCall, leg_id: str) -> None:
        self.feed(call, lambda now: call.machine.leg_answered(leg_id, now))

    def leg_failed(self, call: RunningCall, leg_id: str, failure: LegFailure) -> None:
        self.feed(call, lambda now: call.machine.leg_failed(leg_id, failure, now))

    def caller_hangup(self, call: RunningCall) -> None:
        """The caller left before the call was answered (CANCEL, the carrier's status)."""
        self.feed(call, call.machine.caller_hangup)

    def hangup(self, call: RunningCall, side: Side) -> None:
        """One side of an answered call hung up (BYE, a session timeout)."""
        self.feed(call, lambda now: call.machine.hangup(side, now))

    def voicemail_unavailable(self, call: RunningCall) -> None:
        self.feed(call, call.machine.voicemail_unavailable)

    def setup_done(self, call: RunningCall) -> None:
        """The caller heard back (ringing or the answer): `bridge_call_setup_seconds`."""
        if not call.setup_measured:
            call.setup_measured = True
            setup = self.metrics.child(self.metrics.call_setup_seconds, call.path)
            setup.observe(call.now - call.started)

    def publish(self, call_id: str, event: Event) -> bool:
        """Publish an event of a live call that the call core did not make (a control attempt,
        a carrier's voicemail): it joins the call's events and goes to every subscriber.
        False when no such call is running."""
        call = self._calls.get(call_id)
        if call is None:
            return False
        with call_context(call_id):
            self._publish(call, event)
        return True

    def publish_on(self, call: RunningCall, event: Event) -> None:
        """`publish` for a call the path still holds (it may have ended already)."""
        with call_context(call.call_id):
            self._publish(call, event)

    # -- the core's outputs -----------------------------------------------------------------------
    def apply(self, call: RunningCall, outputs: Sequence[Output]) -> None:
        """Carry out the outputs of one input, in order; then the live entry, the timer, and
        the end of the call."""
        self._applying += 1
        try:
            for output in outputs:
                try:
                    self._apply(call, output)
                except Exception:  # one command's failure must not leave the rest undone
                    log.exception(
                        "call_output_failed", path=call.path, output=type(output).__name__
                    )
            call.machine.apply_to(call.live)
            self._arm(call)
            for watcher in self._watchers:
                try:
                    watcher(call)
                except Exception:  # a watcher's bug must not break the call
                    log.exception("call_watcher_failed")
            if call.machine.ended:
                self._finish(call)
        finally:
            self._applying -= 1
            if not self._applying:
                self._stamp = None

    def _wall_now(self) -> datetime:
        if self._stamp is None or not self._applying:
            self._stamp = self._wall()
        return self._stamp

    def _apply(self, call: RunningCall, output: Output) -> None:
        driver = call.driver
        if isinstance(output, DialLeg):
            if output.via is Channel.APPS and output.user_id is not None:
                if self.offers is not None:
                    self._offer_app(call, output, output.user_id, self.offers)
                    if driver.app_accept_answers:
                        return  # the offer is the leg
                elif driver.app_accept_answers:
                    # No gateway to ring apps through on this path.
                    self.feed_later(call, _failed(call, output.leg_id, LegFailure.UNREACHABLE))
                    return
            driver.dial(call, output)
        elif isinstance(output, CancelLeg):
            self._end_app_offer(call, output.leg_id, output.reason)
            driver.cancel_leg(call, output)
        elif isinstance(output, BridgeTo):
            app_user = call.app_user_of(output.leg_id)
            if app_user is not None:
                call.app_winner = app_user
            driver.bridge(call, output)
        elif isinstance(output, HangupLeg):
            driver.hang_up(call, output)
        elif isinstance(output, RejectCaller):
            driver.reject(call, output)
        elif isinstance(output, StartFallback):
            driver.start_fallback(call, output)
        elif isinstance(output, RingCaller):
            driver.ring_caller(call, output)
        elif isinstance(output, MarkOnCall):
            self.presence.call_started(output.user_id)
        elif isinstance(output, MarkCallEnded):
            presence = self.presence.call_ended(output.user_id)
            if output.user_id == call.app_winner and self.offers is not None:
                # The app that answered hears how the call ended, and its wrap-up.
                leg = call.machine.leg(call.app_legs[output.user_id])
                self.offers.push_call_state(
                    call.call_id,
                    output.user_id,
                    "ended",
                    reason=leg.reason if leg is not None else None,
                    wrap_up_until=presence.wrap_up_until,
                )
        if isinstance(output, Event):
            if (
                isinstance(output, CallAnswered)
                and output.via is Channel.APPS
                and output.user_id is not None
                and self.offers is not None
                and not driver.app_accept_answers
            ):
                self.offers.answered(call.call_id, output.user_id)  # the voice SDK answered
            self._publish(call, output)

    def _publish(self, call: RunningCall, event: Event) -> None:
        leg_ref = None
        leg_id = getattr(event, "leg_id", None)
        if isinstance(leg_id, str):
            leg_ref = call.driver.leg_reference(call, leg_id)
        record = CallEventRecord(call.call_id, call.path, self._wall_now(), event, leg_ref)
        call.events.append(record)
        _log_event(call.path, event, leg_ref)
        if isinstance(event, CallEnded):
            self.metrics.child(self.metrics.calls, call.path, event.outcome.value).inc()
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:  # a subscriber's bug must not break the call
                log.exception("call_event_listener_failed", event_type=type(event).__name__)

    # -- app legs (the WebSocket gateway's offers) ---------------------------------------------
    def _offer_app(
        self, call: RunningCall, command: DialLeg, user_id: str, offers: AppOffers
    ) -> None:
        sdp: str | Awaitable[str | None] | None = None
        if call.driver.app_accept_answers:
            sdp = call.app_sdp(user_id) if call.app_sdp is not None else call.caller_sdp
        if sdp is None or isinstance(sdp, str):
            self._send_app_offer(call, command, user_id, offers, sdp)
            return
        # The offer's SDP comes from a media relay (a round trip to rtpengine): the app is
        # offered the call once it is here, if the leg still rings by then.
        pending = sdp

        async def when_ready() -> None:
            ready = await pending
            leg = call.machine.leg(command.leg_id)
            if self._calls.get(call.call_id) is not call or leg is None or not leg.state.live:
                return
            with call_context(call.call_id):
                if ready is None:  # the relay could not make one (logged by the path)
                    self.feed_later(call, _failed(call, command.leg_id, LegFailure.UNREACHABLE))
                    return
                self._send_app_offer(call, command, user_id, offers, ready)

        task = asyncio.get_running_loop().create_task(when_ready())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_app_offer(
        self,
        call: RunningCall,
        command: DialLeg,
        user_id: str,
        offers: AppOffers,
        sdp: str | None,
    ) -> None:
        plan = call.machine.plan
        answers = call.driver.app_accept_answers
        rings_for = max(1.0, command.timeout_at - call.now)  # on the call's own clock
        status = offers.offer(
            call.call_id,
            user_id,
            caller=call.live.caller,
            line=plan.line,
            ring_group=plan.target_id if plan.target_kind == "ring_group" else None,
            expires_at=self._wall_now() + timedelta(seconds=rings_for),
            sdp=sdp,
            listener=self,
        )
        log.info(f"{call.path}_leg_offered", leg_id=command.leg_id, user_id=user_id, status=status)
        if status == "unreachable":
            if answers:  # (on the carrier path the voice SDK still rings)
                self.feed_later(call, _failed(call, command.leg_id, LegFailure.UNREACHABLE))
            return
        call.app_legs[user_id] = command.leg_id

    def _end_app_offer(self, call: RunningCall, leg_id: str, reason: LegReason) -> None:
        if self.offers is None:
            return
        for user_id, leg in call.app_legs.items():
            if leg == leg_id and user_id != call.app_winner:
                answerer = None
                if reason is LegReason.ANSWERED_ELSEWHERE:
                    winner = call.machine.leg(call.machine.answered_leg or "")
                    via = winner.via.value if winner is not None else Channel.APPS.value
                    answerer = Answerer(call.machine.answered_by, via)
                self.offers.end_offer(call.call_id, user_id, reason, answerer=answerer)

    # OfferListener: what the gateway tells us about our offers.
    def on_accept(
        self, call_id: str, user_id: str, session_id: str, sdp: str | None
    ) -> bool | Awaitable[bool | None] | None:
        call = self._calls.get(call_id)
        if call is None:
            return False
        if not call.driver.app_accept_answers:
            return None  # answered in the voice SDK, not here
        if not self._may_answer(call, user_id):
            return False
        with call_context(call_id):
            refused = call.driver.app_answer_refused(call, user_id, sdp)
            if refused is not None:
                log.warning(f"{call.path}_app_accept_refused", user_id=user_id, why=refused)
                return False
            ready = call.driver.app_media_ready(call, user_id)
        if ready is not None:
            # A browser: its ICE and DTLS take a moment, and the call keeps ringing meanwhile
            # (a desk phone may still win); the accept counts once its audio is up.
            return self._accept_when_ready(call, user_id, session_id, sdp, ready)
        return self._answer_app(call, user_id, session_id, sdp)

    def _may_answer(self, call: RunningCall, user_id: str) -> bool:
        leg = call.app_legs.get(user_id)
        ringing = call.machine.state is CallState.RINGING
        return leg is not None and call.app_winner is None and ringing

    def _answer_app(
        self, call: RunningCall, user_id: str, session_id: str, sdp: str | None
    ) -> bool:
        with call_context(call.call_id):
            call.app_answer = (user_id, sdp)
            self.leg_answered(call, call.app_legs[user_id])
            won = call.app_winner == user_id
            log.info(f"{call.path}_app_accept", user_id=user_id, session_id=session_id, won=won)
        return won

    async def _accept_when_ready(
        self,
        call: RunningCall,
        user_id: str,
        session_id: str,
        sdp: str | None,
        ready: Awaitable[str | None],
    ) -> bool:
        failed = await ready
        if self._calls.get(call.call_id) is not call or not self._may_answer(call, user_id):
            return False
        if failed is None:
            return self._answer_app(call, user_id, session_id, sdp)
        with call_context(call.call_id):
            log.warning(f"{call.path}_app_media_failed", user_id=user_id, why=failed)
            if self.offers is not None:  # the app hears why, then the ring race goes on
                self.offers.end_offer(call.call_id, user_id, LegReason.MEDIA_FAILED)
            self.leg_failed(call, call.app_legs[user_id], LegFailure.MEDIA_FAILED)
        return False

    def app_hangup(self, call_id: str, user_id: str) -> str | None:
        """The app user who answered the call hangs up (`call.hangup`): None when done, else
        why not (on the carrier path the voice SDK hangs up, where it answered)."""
        call = self._calls.get(call_id)
        if call is None or call.app_winner != user_id:
            return "no call with that id is answered by you"
        if not call.driver.app_accept_answers:
            return "hang up carrier calls in the carrier's voice SDK, where they were answered"
        if call.machine.state is not CallState.ANSWERED:
            return "the call is not answered"
        with call_context(call_id):
            log.info(f"{call.path}_app_hangup", user_id=user_id)
            self.hangup(call, Side.CALLEE)
        return None

    def on_reject(self, call_id: str, user_id: str, session_id: str) -> None:
        self._app_leg_failed(call_id, user_id, LegFailure.REJECTED)

    def on_unreachable(self, call_id: str, user_id: str) -> None:
        self._app_leg_failed(call_id, user_id, LegFailure.UNREACHABLE)

    def _app_leg_failed(self, call_id: str, user_id: str, failure: LegFailure) -> None:
        call = self._calls.get(call_id)
        leg = call.app_legs.get(user_id) if call is not None else None
        if call is None or leg is None:
            return
        if not call.driver.app_accept_answers:
            # The voice SDK keeps ringing until the leg's own end: only the offer stopped.
            log.info(f"{call.path}_app_offer_{failure.value}", call_id=call_id, user_id=user_id)
            return
        with call_context(call_id):
            self.leg_failed(call, leg, failure)

    # -- timers and the end -----------------------------------------------------------------------
    def _arm(self, call: RunningCall) -> None:
        timers = call.timers
        if timers is None:
            return
        if call.timer is not None:
            timers.cancel(call.timer)
            call.timer = None
        deadline = call.machine.next_deadline()
        if deadline is not None and not call.machine.ended:
            call.timer = timers.call_at(deadline, lambda: self._timer(call))

    def _timer(self, call: RunningCall) -> None:
        call.timer = None
        self._feed_from_loop(call, call.machine.handle_timer)

    def _finish(self, call: RunningCall) -> None:
        if self._calls.pop(call.call_id, None) is None:
            return
        if call.timer is not None and call.timers is not None:
            call.timers.cancel(call.timer)
            call.timer = None
        self.registry.remove(call.call_id)
        call.driver.ended(call)


def _failed(call: RunningCall, leg_id: str, failure: LegFailure) -> Callable[[float], list[Output]]:
    return lambda now: call.machine.leg_failed(leg_id, failure, now)


def _log_event(path: str, event: Event, leg_ref: str | None) -> None:
    """One log line per core event, named after the path (`sip_call_answered`, ...)."""
    if isinstance(event, CallRinging):
        log.info(
            f"{path}_call_ringing",
            layer=event.layer_index,
            fallback_depth=event.fallback_depth,
            users=list(event.user_ids),
        )
    elif isinstance(event, CallAnswered):
        log.info(
            f"{path}_call_answered",
            user_id=event.user_id,
            leg_id=event.leg_id,
            via=event.via.value,
            leg_ref=leg_ref,
        )
    elif isinstance(event, LayerExhausted):
        log.info(f"{path}_layer_exhausted", layer=event.index, timed_out=event.timed_out)
    elif isinstance(event, FallbackStarted):
        log.info(f"{path}_call_fallback", action=event.action.value, why=event.why)
    elif isinstance(event, CallEnded):
        log.info(f"{path}_call_ended", cause=event.cause.value, outcome=event.outcome.value)
