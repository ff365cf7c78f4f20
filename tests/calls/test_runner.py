"""The call runner driven through a fake leg driver, fake timers and fake app offers, over real
routing, presence, the live-call registry and metrics (a small directory: a line to ring
group g, layer 1 = a on a desk phone and b on apps, layer 2 = c on a phone number, then a
fallback)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from bridge.calls.events import (
    BridgeTo,
    CallAnswered,
    CallEnded,
    CallEventRecord,
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
    RingCaller,
    Side,
    StartFallback,
)
from bridge.calls.ports import Answerer
from bridge.calls.registry import CallRegistry
from bridge.calls.runner import CallRunner, NotAcceptingCalls, RunningCall
from bridge.directory.model import Directory, FallbackAction
from bridge.directory.store import DirectoryStore
from bridge.observability.metrics import Metrics
from bridge.presence.model import AssumeEveryoneAvailable, Channel
from bridge.presence.service import PresenceService
from bridge.routing.engine import plan_route
from bridge.routing.model import CallRequest
from bridge.routing.service import RoutingService

from .fakes import WALL_START, FakeDriver, FakeOffers, ManualTimers, WallClock
from .helpers import LINE, T0, directory, group, layer, phone_user, user

C_NUMBER = "+15557770001"
FORWARD_TO = "+15559990000"
CALLER = "+15551234567"
SDP_OFFER = "v=0\r\no=caller 1 1 IN IP4 192.0.2.1\r\n"
SDP_ANSWER = "v=0\r\no=app 2 2 IN IP4 192.0.2.2\r\n"
LAYER_1 = 20  # seconds
LAYER_2 = 15
B_WRAP_UP = 30

VOICEMAIL = {"action": "voicemail"}
FORWARD = {"action": "forward", "number": FORWARD_TO}


def two_layers(fallback: dict[str, Any]) -> Directory:
    return directory(
        [
            user("a", answer_by="ip_phone"),
            user("b", answer_by="apps", wrap_up_seconds=B_WRAP_UP),
            phone_user("c", C_NUMBER),
        ],
        [
            group(
                "g",
                layer(["a", "b"], timeout=LAYER_1),
                layer(["c"], timeout=LAYER_2),
                fallback=fallback,
            )
        ],
    )


class RingClock:
    """The carrier's ring clock: moved by the path, no timers."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Bench:
    """A runner over real routing, presence, registry and metrics, with fake everything else."""

    store: DirectoryStore
    wall: WallClock
    presence: PresenceService
    routing: RoutingService
    registry: CallRegistry
    metrics: Metrics
    offers: FakeOffers
    timers: ManualTimers
    runner: CallRunner
    requests: list[CallRequest] = field(default_factory=list)  # what routing was asked

    def ring(
        self,
        driver: FakeDriver,
        call_id: str = "c1",
        *,
        clock: Callable[[], float] | None = None,
        caller_sdp: str | None = SDP_OFFER,
    ) -> RunningCall:
        """Admit and start one call to LINE: on the fake timers, or on `clock` (carrier)."""
        request = CallRequest(call_id=call_id, line=LINE, caller=CALLER)
        if clock is None:
            run = self.runner.admit(request, driver, timers=self.timers, caller_sdp=caller_sdp)
        else:
            run = self.runner.admit(request, driver, clock=clock)
        self.runner.start(run)
        return run

    def calls_total(self, path: str, outcome: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "bridge_calls_total", {"path": path, "outcome": outcome}
        )


def make_bench(
    d: Directory | None = None,
    *,
    seeds: Iterator[int] | None = None,
    reachable: bool = True,
) -> Bench:
    d = d if d is not None else two_layers(VOICEMAIL)
    store = DirectoryStore(d)
    wall = WallClock()
    presence = PresenceService(lambda: store.current, wall)
    if reachable:
        presence.endpoint_up("a", Channel.IP_PHONE)  # a's desk phone is registered
        presence.endpoint_up("b", Channel.APPS)  # b has an app session
    metrics = Metrics()
    routing = RoutingService(store, presence, metrics, wall)
    registry = CallRegistry(on_count=metrics.live_calls.set)
    offers = FakeOffers()
    seed_source = seeds if seeds is not None else iter(range(1000, 2000))
    runner = CallRunner(
        routing=routing,
        presence=presence,
        registry=registry,
        metrics=metrics,
        wall_clock=wall,
        seed=lambda: next(seed_source),
        offers=offers,
    )
    bench = Bench(
        store, wall, presence, routing, registry, metrics, offers, ManualTimers(T0), runner
    )
    route = routing.route

    def spy(request: CallRequest) -> Any:
        bench.requests.append(request)
        return route(request)

    routing.route = spy  # type: ignore[method-assign]
    return bench


def leg_of(run: RunningCall, user_id: str | None) -> str:
    """The most recent leg of this user (None: the forward leg)."""
    found = [leg.leg_id for leg in run.machine.legs() if leg.user_id == user_id]
    assert found, f"no leg for {user_id}"
    return found[-1]


def event_types(run: RunningCall) -> list[type]:
    return [type(record.event) for record in run.events]


def sip() -> FakeDriver:
    return FakeDriver("sip", app_accept_answers=True)


def carrier() -> FakeDriver:
    return FakeDriver("carrier", app_accept_answers=False)


# -- 1. the ring race ------------------------------------------------------------------------


def test_first_answer_wins_the_others_are_cancelled_and_told_who_answered() -> None:
    bench = make_bench()
    driver = sip()
    run = bench.ring(driver)
    a_leg, b_leg = leg_of(run, "a"), leg_of(run, "b")

    # Layer 1 rings both: a's desk phone through the driver, b's apps through an offer.
    assert driver.dials == [
        DialLeg(a_leg, "a", Channel.IP_PHONE, None, T0 + LAYER_1)
    ]  # the SIP path answers app offers itself: b's offer is the leg
    [offer] = bench.offers.offers
    assert (offer.call_id, offer.user_id, offer.caller, offer.line, offer.ring_group) == (
        "c1",
        "b",
        CALLER,
        LINE,
        "g",
    )
    assert offer.expires_at == WALL_START + timedelta(seconds=LAYER_1)
    assert offer.sdp == SDP_OFFER
    assert offer.listener is bench.runner
    assert run.app_legs == {"b": b_leg}
    live = bench.registry.get("c1")
    assert live is not None
    assert (live.path, live.line, live.caller, live.state) == ("sip", LINE, CALLER, "ringing")
    assert live.ringing == {"a", "b"}

    bench.runner.leg_ringing(run, a_leg)
    assert driver.sent("ring_caller") == [RingCaller(a_leg)]

    mark = driver.mark()
    bench.timers.advance(3)
    bench.runner.leg_answered(run, a_leg)
    assert driver.since(mark) == [
        ("bridge", BridgeTo(a_leg)),
        ("cancel_leg", CancelLeg(b_leg, LegReason.ANSWERED_ELSEWHERE)),
    ]
    assert bench.offers.ended == [
        ("c1", "b", LegReason.ANSWERED_ELSEWHERE, Answerer("a", "ip_phone"))
    ]
    assert bench.presence.presence_of("a").on_call is True
    assert bench.presence.presence_of("b").on_call is False
    assert (live.state, live.answered_by, live.ringing) == ("answered", "a", set())
    assert run.app_winner is None
    assert bench.timers.pending() == []  # nothing left to time out

    # The cancelled leg answers anyway (the CANCEL / 200 OK race): hung up at once.
    mark = driver.mark()
    bench.runner.leg_answered(run, b_leg)
    assert driver.since(mark) == [("hang_up", HangupLeg(b_leg, LegReason.ANSWERED_ELSEWHERE))]
    assert bench.runner.on_accept("c1", "b", "s1", SDP_ANSWER) is False  # too late on apps
    assert driver.sent("bridge") == [BridgeTo(a_leg)]  # never a second bridge
    assert event_types(run) == [CallRinging, LegRinging, CallAnswered]

    bench.runner.hangup(run, Side.CALLEE)
    assert driver.sent("hang_up")[-1] == HangupLeg(
        run.machine.caller_leg_id, LegReason.CALLEE_HANGUP
    )
    assert run.events[-1].event == CallEnded(EndCause.CALLEE_HANGUP, CallOutcome.ANSWERED)
    assert bench.presence.presence_of("a").on_call is False
    assert bench.calls_total("sip", "answered") == 1.0
    assert bench.offers.states == []  # a desk phone answered: no app hears the end
    assert len(bench.registry) == 0 and driver.ended_calls == [run]


# -- 2. the layer timeout ----------------------------------------------------------------------


def test_the_layer_times_out_on_the_paths_clock_not_a_moment_before() -> None:
    bench = make_bench()
    driver = sip()
    run = bench.ring(driver)
    a_leg, b_leg = leg_of(run, "a"), leg_of(run, "b")
    assert bench.timers.armed == [T0 + LAYER_1]  # armed once, at the layer timeout
    assert bench.timers.pending() == [T0 + LAYER_1]

    mark = driver.mark()
    bench.timers.advance(LAYER_1 - 0.5)
    assert driver.since(mark) == []
    assert bench.timers.fired == []
    assert bench.offers.ended == []
    assert bench.registry.get("c1").ringing == {"a", "b"}  # type: ignore[union-attr]

    bench.timers.advance(0.5)
    assert bench.timers.fired == [T0 + LAYER_1]
    c_leg = leg_of(run, "c")
    assert driver.since(mark) == [
        ("cancel_leg", CancelLeg(a_leg, LegReason.LAYER_MOVED_ON)),
        ("cancel_leg", CancelLeg(b_leg, LegReason.LAYER_MOVED_ON)),
        ("dial", DialLeg(c_leg, "c", Channel.PHONE_NUMBER, C_NUMBER, T0 + LAYER_1 + LAYER_2)),
    ]
    assert run.machine.leg(c_leg).dialed_at == T0 + LAYER_1  # type: ignore[union-attr]
    assert bench.offers.ended == [("c1", "b", LegReason.LAYER_MOVED_ON, None)]
    assert bench.timers.pending() == [T0 + LAYER_1 + LAYER_2]  # layer 2's own timeout
    assert bench.registry.get("c1").ringing == {"c"}  # type: ignore[union-attr]
    assert run.events[-1].event == CallRinging(1, ("c",))


# -- 3. the fallback ------------------------------------------------------------------------


def test_every_layer_timing_out_starts_the_plans_fallback() -> None:
    bench = make_bench()
    driver = sip()
    run = bench.ring(driver)
    bench.timers.advance(LAYER_1)
    c_leg = leg_of(run, "c")
    mark = driver.mark()
    bench.timers.advance(LAYER_2 - 1)
    assert driver.since(mark) == []
    bench.timers.advance(1)

    step = run.plan.fallback
    assert step is not None and step.action is FallbackAction.VOICEMAIL
    assert driver.since(mark) == [
        ("cancel_leg", CancelLeg(c_leg, LegReason.TIMEOUT)),
        ("start_fallback", StartFallback(step)),
    ]
    assert [record.event for record in run.events] == [
        CallRinging(0, ("a", "b")),
        LayerExhausted(0, 0, timed_out=True),
        CallRinging(1, ("c",)),
        LayerExhausted(1, 0, timed_out=True),
        FallbackStarted(FallbackAction.VOICEMAIL, step.why),
    ]
    assert run.machine.state is CallState.VOICEMAIL
    assert bench.timers.pending() == []  # voicemail has no deadline
    assert bench.registry.get("c1") is not None  # the caller is still in voicemail

    bench.runner.hangup(run, Side.CALLER)
    assert run.events[-1].event == CallEnded(EndCause.CALLER_HANGUP, CallOutcome.VOICEMAIL)
    assert bench.calls_total("sip", "voicemail") == 1.0
    assert len(bench.registry) == 0 and driver.ended_calls == [run]


def test_a_forward_fallback_dials_the_number_with_its_diversion() -> None:
    bench = make_bench(two_layers(FORWARD))
    driver = sip()
    run = bench.ring(driver)
    bench.timers.advance(LAYER_1 + LAYER_2)

    step = run.plan.fallback
    assert step is not None and step.action is FallbackAction.FORWARD
    forward = leg_of(run, None)
    assert driver.sent("start_fallback") == [StartFallback(step)]
    assert driver.dials[-1] == DialLeg(
        forward,
        None,
        Channel.PHONE_NUMBER,
        FORWARD_TO,
        T0 + LAYER_1 + LAYER_2 + 60,
        Diversion(DiversionReason.NO_ANSWER, LINE, "ring_group", "g", step.why),
    )
    bench.runner.leg_answered(run, forward)
    assert driver.sent("bridge") == [BridgeTo(forward)]
    bench.runner.hangup(run, Side.CALLER)
    assert bench.calls_total("sip", "forwarded") == 1.0


# -- 4. the caller hangs up while it rings --------------------------------------------------


def test_caller_hangup_while_ringing_cancels_everything_and_ends_the_call_once() -> None:
    bench = make_bench()
    driver = sip()
    run = bench.ring(driver)
    a_leg, b_leg = leg_of(run, "a"), leg_of(run, "b")
    bench.timers.advance(5)

    mark = driver.mark()
    bench.runner.caller_hangup(run)
    assert driver.since(mark) == [
        ("cancel_leg", CancelLeg(a_leg, LegReason.CALLER_HANGUP)),
        ("cancel_leg", CancelLeg(b_leg, LegReason.CALLER_HANGUP)),
    ]
    assert bench.offers.ended == [("c1", "b", LegReason.CALLER_HANGUP, None)]
    assert run.events[-1].event == CallEnded(EndCause.CALLER_HANGUP, CallOutcome.CALLER_CANCELLED)
    assert len(bench.registry) == 0
    assert bench.registry.get("c1") is None
    assert bench.runner.get("c1") is None and len(bench.runner) == 0
    assert driver.ended_calls == [run]
    assert bench.calls_total("sip", "caller_cancelled") == 1.0
    assert bench.calls_total("carrier", "caller_cancelled") is None
    assert bench.metrics.registry.get_sample_value("bridge_live_calls") == 0.0
    assert bench.timers.pending() == []  # the layer timer was cancelled

    # Nothing more: not the layer timeout, not a second hang-up.
    mark = driver.mark()
    bench.runner.caller_hangup(run)
    bench.timers.advance(LAYER_1 + LAYER_2)
    assert driver.since(mark) == []
    assert driver.ended_calls == [run]
    assert bench.calls_total("sip", "caller_cancelled") == 1.0
    assert bench.runner.on_accept("c1", "b", "s1", SDP_ANSWER) is False  # gone


# -- 5. app offers: win, refused, rejected, and the carrier's voice SDK ---------------------


def test_an_apps_accept_wins_the_call_and_hears_its_end_with_the_wrap_up() -> None:
    bench = make_bench()
    driver = sip()
    run = bench.ring(driver)
    a_leg, b_leg = leg_of(run, "a"), leg_of(run, "b")

    mark = driver.mark()
    assert bench.runner.on_accept("c1", "b", "s1", SDP_ANSWER) is True
    assert driver.since(mark) == [
        ("app_answer_refused", ("b", SDP_ANSWER)),
        ("bridge", BridgeTo(b_leg)),
        ("cancel_leg", CancelLeg(a_leg, LegReason.ANSWERED_ELSEWHERE)),
    ]
    assert run.app_winner == "b"
    assert run.app_answer == ("b", SDP_ANSWER)
    assert bench.offers.ended == []  # the winner's offer is not ended as lost
    assert bench.offers.answers == []  # the accept itself answered
    assert bench.presence.presence_of("b").on_call is True
    assert bench.registry.get("c1").answered_by == "b"  # type: ignore[union-attr]

    # A second accept, from the same user or another, cannot win.
    assert bench.runner.on_accept("c1", "b", "s2", SDP_ANSWER) is False
    assert bench.runner.on_accept("c1", "a", "s3", SDP_ANSWER) is False
    assert driver.sent("bridge") == [BridgeTo(b_leg)]

    bench.wall.advance(60)
    bench.runner.hangup(run, Side.CALLER)
    assert driver.sent("hang_up") == [HangupLeg(b_leg, LegReason.CALLER_HANGUP)]
    wrap_up_until = WALL_START + timedelta(seconds=60 + B_WRAP_UP)
    assert bench.offers.states == [("c1", "b", "ended", LegReason.CALLER_HANGUP, wrap_up_until)]
    assert bench.presence.presence_of("b").wrap_up_until == wrap_up_until
    assert bench.calls_total("sip", "answered") == 1.0
    assert bench.runner.on_accept("c1", "b", "s1", SDP_ANSWER) is False  # after the end


def test_an_accept_the_path_refuses_bridges_nothing() -> None:
    bench = make_bench()
    driver = sip()
    driver.refuse = "the caller made an SDP offer: an answer without SDP cannot be bridged"
    run = bench.ring(driver)
    b_leg = leg_of(run, "b")

    assert bench.runner.on_accept("c1", "b", "s1", None) is False
    assert driver.sent("bridge") == []
    assert driver.sent("cancel_leg") == []
    assert run.app_winner is None and run.app_answer is None
    assert run.machine.state is CallState.RINGING
    assert run.machine.leg(b_leg).state is LegState.DIALING  # type: ignore[union-attr]
    assert bench.registry.get("c1").ringing == {"a", "b"}  # type: ignore[union-attr]


def test_an_apps_reject_fails_its_leg_and_the_layer_moves_on_when_all_failed() -> None:
    bench = make_bench()
    driver = sip()
    run = bench.ring(driver)
    a_leg, b_leg = leg_of(run, "a"), leg_of(run, "b")
    bench.timers.advance(4)

    bench.runner.leg_failed(run, a_leg, LegFailure.BUSY)
    assert driver.dials == [DialLeg(a_leg, "a", Channel.IP_PHONE, None, T0 + LAYER_1)]

    mark = driver.mark()
    bench.runner.on_reject("c1", "b", "s1")
    b = run.machine.leg(b_leg)
    assert b is not None and (b.state, b.failure) == (LegState.FAILED, LegFailure.REJECTED)
    c_leg = leg_of(run, "c")
    assert driver.since(mark) == [
        ("dial", DialLeg(c_leg, "c", Channel.PHONE_NUMBER, C_NUMBER, T0 + 4 + LAYER_2)),
    ]
    assert run.events[-2].event == LayerExhausted(0, 0, timed_out=False)
    assert run.events[-1].event == CallRinging(1, ("c",))
    assert bench.timers.pending() == [T0 + 4 + LAYER_2]
    assert bench.offers.ended == []  # the gateway ended the declined offer itself


def test_on_the_carrier_an_apps_accept_cannot_answer_the_voice_sdk_does() -> None:
    bench = make_bench()
    driver = carrier()
    clock = RingClock()
    run = bench.ring(driver, "k1", clock=clock)
    a_leg, b_leg = leg_of(run, "a"), leg_of(run, "b")

    # The voice SDK rings b too: the driver dials the app leg, the offer carries no SDP.
    assert [dial.leg_id for dial in driver.dials] == [a_leg, b_leg]
    assert driver.dials[1].via is Channel.APPS
    [offer] = bench.offers.offers
    assert offer.sdp is None and offer.user_id == "b"

    assert bench.runner.on_accept("k1", "b", "s1", SDP_ANSWER) is None
    bench.runner.on_reject("k1", "b", "s1")  # only the offer stopped; the SDK still rings
    assert driver.sent("bridge") == [] and driver.sent("cancel_leg") == []
    assert run.machine.leg(b_leg).state is LegState.DIALING  # type: ignore[union-attr]

    clock.now += 6
    bench.runner.leg_answered(run, b_leg)
    assert driver.sent("bridge") == [BridgeTo(b_leg)]
    assert driver.sent("cancel_leg") == [CancelLeg(a_leg, LegReason.ANSWERED_ELSEWHERE)]
    assert bench.offers.answers == [("k1", "b")]
    assert run.app_winner == "b"
    assert run.events[-1].event == CallAnswered("b", b_leg, Channel.APPS)

    bench.runner.hangup(run, Side.CALLEE)
    assert bench.offers.states == [
        ("k1", "b", "ended", LegReason.CALLEE_HANGUP, WALL_START + timedelta(seconds=B_WRAP_UP))
    ]
    assert bench.calls_total("carrier", "answered") == 1.0
    assert driver.ended_calls == [run]


# -- 6. an unreachable app ------------------------------------------------------------------


def test_an_unreachable_app_fails_its_leg_on_the_next_pass_and_is_never_dialed() -> None:
    bench = make_bench()
    bench.offers.status["b"] = "unreachable"
    driver = sip()
    run = bench.ring(driver)
    a_leg, b_leg = leg_of(run, "a"), leg_of(run, "b")

    # Not failed while the start's outputs are applied: on the next loop pass.
    assert run.machine.leg(b_leg).state is LegState.DIALING  # type: ignore[union-attr]
    assert run.app_legs == {}
    assert bench.timers.pending() == [T0, T0 + LAYER_1]

    bench.timers.advance(0)
    b = run.machine.leg(b_leg)
    assert b is not None and (b.state, b.failure) == (LegState.FAILED, LegFailure.UNREACHABLE)
    assert bench.registry.get("c1").ringing == {"a"}  # type: ignore[union-attr]
    assert driver.dials == [DialLeg(a_leg, "a", Channel.IP_PHONE, None, T0 + LAYER_1)]
    assert bench.timers.pending() == [T0 + LAYER_1]  # a still rings: no layer change
    assert bench.runner.on_accept("c1", "b", "s1", SDP_ANSWER) is False  # no offer to accept


def test_an_unreachable_app_still_rings_in_the_carriers_voice_sdk() -> None:
    bench = make_bench()
    bench.offers.status["b"] = "unreachable"
    driver = carrier()
    run = bench.ring(driver, "k1", clock=RingClock())
    b_leg = leg_of(run, "b")

    assert [dial.leg_id for dial in driver.dials] == [leg_of(run, "a"), b_leg]
    assert run.machine.leg(b_leg).state is LegState.DIALING  # type: ignore[union-attr]
    assert run.app_legs == {}
    assert bench.timers.armed == []  # the carrier times its legs itself


# -- 7. the same events on both paths ------------------------------------------------------


def test_both_paths_publish_typed_events_with_their_path_and_leg_references() -> None:
    bench = make_bench()
    records: list[CallEventRecord] = []
    bench.runner.subscribe(records.append)

    runs = {
        "sip": bench.ring(sip(), "s-1"),
        "carrier": bench.ring(carrier(), "k-1", clock=RingClock()),
    }
    for run in runs.values():
        a_leg = leg_of(run, "a")
        bench.runner.leg_ringing(run, a_leg)
        bench.runner.leg_answered(run, a_leg)
        bench.wall.advance(1)
        bench.runner.hangup(run, Side.CALLER)

    for path, run in runs.items():
        a_leg = leg_of(run, "a")
        mine = [r for r in records if r.call_id == run.call_id]
        assert mine == run.events
        assert {r.path for r in mine} == {path}
        assert [r.event for r in mine] == [
            CallRinging(0, ("a", "b")),
            LegRinging(a_leg, "a"),
            CallAnswered("a", a_leg, Channel.IP_PHONE),
            CallEnded(EndCause.CALLER_HANGUP, CallOutcome.ANSWERED),
        ]
        ref = f"{path}-ref:{a_leg}"
        assert [r.leg_ref for r in mine] == [None, ref, ref, None]
        assert bench.calls_total(path, "answered") == 1.0
    # Both calls rang first, then each was answered and ended in turn.
    assert [r.call_id for r in records] == ["s-1", "k-1"] + ["s-1"] * 3 + ["k-1"] * 3
    assert records[0].at == WALL_START and records[-1].at == WALL_START + timedelta(seconds=2)


def broken_listener(record: CallEventRecord) -> None:
    raise RuntimeError("subscriber bug")


def test_a_failing_listener_does_not_break_the_call() -> None:
    bench = make_bench()
    bench.runner.subscribe(broken_listener)
    driver = sip()
    run = bench.ring(driver)
    bench.runner.caller_hangup(run)
    assert run.events[-1].event == CallEnded(EndCause.CALLER_HANGUP, CallOutcome.CALLER_CANCELLED)
    assert driver.ended_calls == [run] and len(bench.registry) == 0
    assert bench.calls_total("sip", "caller_cancelled") == 1.0


def test_a_failing_listener_does_not_keep_the_event_from_the_next_listeners() -> None:
    bench = make_bench()
    seen: list[type] = []
    bench.runner.subscribe(broken_listener)
    bench.runner.subscribe(lambda record: seen.append(type(record.event)))
    run = bench.ring(sip())
    bench.runner.caller_hangup(run)
    assert seen == [CallRinging, CallEnded]


def test_a_failing_listener_does_not_make_publish_raise() -> None:
    bench = make_bench()
    run = bench.ring(carrier(), "k1", clock=RingClock())
    bench.runner.subscribe(broken_listener)
    # (a path's own event, e.g. a control attempt: `publish` is not inside `apply`'s guard)
    assert bench.runner.publish("k1", LegRinging(leg_of(run, "a"), "a")) is True
    assert type(run.events[-1].event) is LegRinging


def test_publish_adds_a_paths_own_event_to_a_running_call_only() -> None:
    bench = make_bench()
    records: list[CallEventRecord] = []
    bench.runner.subscribe(records.append)
    run = bench.ring(carrier(), "k1", clock=RingClock())
    a_leg = leg_of(run, "a")

    assert bench.runner.publish("k1", LegRinging(a_leg, "a")) is True
    assert records[-1] == CallEventRecord(
        "k1", "carrier", WALL_START, LegRinging(a_leg, "a"), f"carrier-ref:{a_leg}"
    )
    assert run.events[-1] == records[-1]
    assert bench.runner.publish("nope", LegRinging(a_leg, "a")) is False
    assert len(records) == 2


# -- 8. admission: draining, the seed, the setup time ---------------------------------------


def test_a_draining_runner_admits_nothing() -> None:
    bench = make_bench()
    bench.registry.stop_accepting()
    assert bench.runner.accepting is False
    driver = sip()
    with pytest.raises(NotAcceptingCalls):
        bench.runner.admit(
            CallRequest(call_id="c1", line=LINE, caller=CALLER), driver, timers=bench.timers
        )
    assert len(bench.registry) == 0 and len(bench.runner) == 0
    assert bench.requests == []  # not even routed
    assert driver.log == [] and bench.offers.offers == []
    assert (
        bench.metrics.registry.get_sample_value("bridge_route_decisions_total", {"result": "ring"})
        is None
    )


RANDOM_USERS = ["x", "y", "z", "w"]
RING_EACH = 5


def random_layer() -> Directory:
    """Phone-number users (always reachable), rung one at a time in a random order."""
    return directory(
        [phone_user(uid, f"+1555888000{i}") for i, uid in enumerate(RANDOM_USERS)],
        [
            group(
                "r",
                layer(RANDOM_USERS, strategy="random", timeout=20, ring_each_seconds=RING_EACH),
            )
        ],
    )


def shuffled(d: Directory, seed: int) -> list[str]:
    """The order routing picks for this seed, computed without the runner."""
    request = CallRequest(call_id="any", line=LINE, seed=seed)
    planned = plan_route(d, AssumeEveryoneAvailable(), request, WALL_START)
    return [target.user_id for target in planned.layers[0].ring]


def test_each_call_is_routed_with_a_seed_from_the_injected_source() -> None:
    d = random_layer()
    assert shuffled(d, 3) == ["w", "y", "x", "z"]
    assert shuffled(d, 4) == ["x", "w", "y", "z"]
    bench = make_bench(d, seeds=iter([3, 4]), reachable=False)

    first, second = sip(), sip()
    bench.ring(first, "r1")
    bench.ring(second, "r2")
    assert [(r.call_id, r.seed, r.line, r.caller) for r in bench.requests] == [
        ("r1", 3, LINE, CALLER),
        ("r2", 4, LINE, CALLER),
    ]
    assert [dial.user_id for dial in first.dials] == ["w"]
    assert [dial.user_id for dial in second.dials] == ["x"]

    bench.timers.advance(3 * RING_EACH)  # every turn of both calls
    assert [dial.user_id for dial in first.dials] == ["w", "y", "x", "z"]
    assert [dial.user_id for dial in second.dials] == ["x", "w", "y", "z"]


def test_the_setup_time_is_measured_once_per_call_on_the_paths_clock() -> None:
    bench = make_bench()
    run = bench.ring(sip())
    bench.timers.advance(0.5)
    bench.runner.setup_done(run)
    bench.timers.advance(2)
    bench.runner.setup_done(run)  # the answer after the ringing: not measured again
    sample = bench.metrics.registry.get_sample_value
    assert sample("bridge_call_setup_seconds_count", {"path": "sip"}) == 1.0
    assert sample("bridge_call_setup_seconds_sum", {"path": "sip"}) == 0.5
