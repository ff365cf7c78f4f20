"""The call core driven by a fake clock: real plans from small directories, no I/O."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

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
from bridge.calls.machine import CallMachine, flatten_plan
from bridge.calls.registry import LiveCall
from bridge.directory.model import FallbackAction
from bridge.presence.model import (
    ALL_CHANNELS,
    Availability,
    Channel,
    FixedPresence,
    UserPresence,
)
from bridge.routing.model import FallbackStep, Outcome

from .helpers import (
    LINE,
    T0,
    Call,
    directory,
    group,
    layer,
    only,
    phone_user,
    plan,
    user,
)

APPS = Channel.APPS
PHONE = Channel.PHONE_NUMBER
FORWARD_TO = "+15559990000"
C_NUMBER = "+15557770001"
BUSY = UserPresence(availability=Availability.BUSY, reachable=ALL_CHANNELS)
CLOSED_HOURS = {"sat": ["09:00-17:00"]}  # NOW is a Monday


def three_at_once(**fallback: Any) -> Call:
    d = directory(
        [user("a"), user("b"), phone_user("c", C_NUMBER)],
        [group("g", layer(["a", "b", "c"], timeout=20), fallback=fallback or None)],
    )
    call, _ = Call.started(plan(d))
    return call


def fallback_of(call: Call) -> FallbackStep:
    step = call.machine.plan.fallback
    assert step is not None
    return step


# --- ringing everyone at once, first answer wins -----------------------------------------------


def test_start_dials_every_target_of_the_first_layer_at_once() -> None:
    d = directory(
        [user("a"), user("b"), phone_user("c", C_NUMBER)],
        [group("g", layer(["a", "b", "c"], timeout=20))],
    )
    call, out = Call.started(plan(d))
    assert out == [
        DialLeg("c1/1", "a", APPS, None, T0 + 20),
        DialLeg("c1/2", "b", APPS, None, T0 + 20),
        DialLeg("c1/3", "c", PHONE, C_NUMBER, T0 + 20),
        CallRinging(0, ("a", "b", "c"), 0),
    ]
    m = call.machine
    assert m.state is CallState.RINGING
    assert m.next_deadline() == T0 + 20
    assert m.ringing_user_ids() == ("a", "b", "c")
    assert m.start(T0) == []  # a second start does nothing


def test_first_answer_wins_and_the_others_are_cancelled_as_answered_elsewhere() -> None:
    call = three_at_once()
    m = call.machine
    assert m.leg_ringing("c1/1", T0 + 1) == [RingCaller("c1/1"), LegRinging("c1/1", "a")]
    assert m.leg_ringing("c1/2", T0 + 1.5) == [LegRinging("c1/2", "b")]  # ringing relayed once
    assert m.leg_ringing("c1/2", T0 + 1.6) == []
    out = m.leg_answered("c1/2", T0 + 5)
    assert out == [
        BridgeTo("c1/2"),
        CancelLeg("c1/1", LegReason.ANSWERED_ELSEWHERE),
        CancelLeg("c1/3", LegReason.ANSWERED_ELSEWHERE),
        MarkOnCall("b"),
        CallAnswered("b", "c1/2", APPS),
    ]
    assert m.state is CallState.ANSWERED
    assert m.answered_by == "b"
    assert m.next_deadline() is None
    assert m.handle_timer(T0 + 20) == []  # the layer timer no longer matters
    assert m.ringing_user_ids() == ()


def test_a_late_answer_after_the_win_is_hung_up_never_bridged() -> None:
    call = three_at_once()
    m = call.machine
    m.leg_answered("c1/1", T0 + 3)
    # The 200 OK crossed our CANCEL: hang that leg up at once.
    assert m.leg_answered("c1/3", T0 + 3.01) == [HangupLeg("c1/3", LegReason.ANSWERED_ELSEWHERE)]
    assert m.leg_answered("c1/3", T0 + 3.02) == []  # a retransmitted 200: already handled
    assert m.leg_answered("c1/1", T0 + 3.03) == []  # the winner again: no second bridge
    assert m.leg_failed("c1/2", LegFailure.UNREACHABLE, T0 + 3.1) == []  # the 487 after CANCEL
    assert m.leg_ringing("c1/2", T0 + 3.2) == []
    assert m.answered_by == "a"
    legs = {info.leg_id: info.state for info in m.legs()}
    assert legs == {
        "c1/1": LegState.BRIDGED,
        "c1/2": LegState.CANCELLED,
        "c1/3": LegState.HUNG_UP,
    }


def test_early_media_first_one_wins() -> None:
    call = three_at_once()
    m = call.machine
    assert m.leg_ringing("c1/1", T0) == [RingCaller("c1/1"), LegRinging("c1/1", "a")]
    assert m.leg_ringing("c1/3", T0 + 1, early_media=True) == [
        RingCaller("c1/3", early_media=True),
        LegRinging("c1/3", "c"),
    ]
    assert m.leg_ringing("c1/2", T0 + 2, early_media=True) == [LegRinging("c1/2", "b")]
    assert m.leg_ringing("c1/1", T0 + 3, early_media=True) == []


# --- layers: timeouts, early moves, one at a time ------------------------------------------------


def two_layers(*, first_timeout: int = 15, second_timeout: int = 25, **fallback: Any) -> Call:
    d = directory(
        [user("a"), user("b"), user("c")],
        [
            group(
                "g",
                layer(["a"], timeout=first_timeout),
                layer(["b", "c"], timeout=second_timeout),
                fallback=fallback or None,
            )
        ],
    )
    call, _ = Call.started(plan(d))
    return call


def test_layer_timeout_cancels_with_layer_moved_on_and_dials_the_next_at_exactly_the_timeout() -> (
    None
):
    call = two_layers()
    m = call.machine
    assert call.log == [DialLeg("c1/1", "a", APPS, None, T0 + 15), CallRinging(0, ("a",), 0)]
    assert m.next_deadline() == T0 + 15
    assert m.handle_timer(T0 + 14.999) == []  # a timer that fires early does nothing
    assert m.next_deadline() == T0 + 15
    out = m.handle_timer(T0 + 15)
    assert out == [
        LayerExhausted(0, 0, timed_out=True),
        CancelLeg("c1/1", LegReason.LAYER_MOVED_ON),
        DialLeg("c1/2", "b", APPS, None, T0 + 40),
        DialLeg("c1/3", "c", APPS, None, T0 + 40),
        CallRinging(1, ("b", "c"), 0),
    ]
    assert m.next_deadline() == T0 + 40
    assert m.snapshot()["layer_index"] == 1


def test_the_last_layer_timeout_cancels_with_timeout_and_goes_to_voicemail() -> None:
    call = two_layers()
    m = call.machine
    m.handle_timer(T0 + 15)
    out = m.handle_timer(T0 + 40)
    step = fallback_of(call)
    assert step.action is FallbackAction.VOICEMAIL
    assert out == [
        LayerExhausted(1, 0, timed_out=True),
        CancelLeg("c1/2", LegReason.TIMEOUT),
        CancelLeg("c1/3", LegReason.TIMEOUT),
        FallbackStarted(FallbackAction.VOICEMAIL, "layers_exhausted"),
        StartFallback(step),
    ]
    assert m.state is CallState.VOICEMAIL
    assert m.next_deadline() is None
    assert m.outcome is None  # still in voicemail
    assert m.caller_hangup(T0 + 70) == [CallEnded(EndCause.CALLER_HANGUP, CallOutcome.VOICEMAIL)]
    assert m.outcome is CallOutcome.VOICEMAIL
    assert m.ended


def test_voicemail_the_adapter_cannot_take_ends_as_refused() -> None:
    call = two_layers()
    m = call.machine
    m.handle_timer(T0 + 15)
    m.handle_timer(T0 + 40)
    assert m.state is CallState.VOICEMAIL
    assert m.voicemail_unavailable(T0 + 40) == [CallEnded(EndCause.REJECTED, CallOutcome.VOICEMAIL)]
    assert m.ended and m.outcome is CallOutcome.VOICEMAIL
    assert m.voicemail_unavailable(T0 + 41) == []  # only once, and only in voicemail
    ringing = two_layers().machine
    assert ringing.voicemail_unavailable(T0) == [] and not ringing.ended


def test_a_late_timer_gives_the_next_layer_its_full_timeout() -> None:
    call = two_layers()
    m = call.machine
    out = m.handle_timer(T0 + 17)
    assert only(out, DialLeg)[0].timeout_at == T0 + 17 + 25
    assert m.next_deadline() == T0 + 42


def test_when_every_leg_of_a_layer_fails_the_next_layer_rings_before_the_timeout() -> None:
    d = directory(
        [user("a"), user("b"), user("c")],
        [group("g", layer(["a", "b"], timeout=20), layer(["c"], timeout=10))],
    )
    call, _ = Call.started(plan(d))
    m = call.machine
    assert m.leg_failed("c1/1", LegFailure.UNREACHABLE, T0 + 2) == []
    assert m.next_deadline() == T0 + 20  # b still rings
    out = m.leg_failed("c1/2", LegFailure.BUSY, T0 + 3)
    assert out == [
        LayerExhausted(0, 0, timed_out=False),
        DialLeg("c1/3", "c", APPS, None, T0 + 13),
        CallRinging(1, ("c",), 0),
    ]
    assert m.next_deadline() == T0 + 13
    assert only(call.log + out, CancelLeg) == []  # failed legs are not cancelled
    out = m.leg_failed("c1/3", LegFailure.UNREACHABLE, T0 + 4)
    assert out == [
        LayerExhausted(1, 0, timed_out=False),
        FallbackStarted(FallbackAction.VOICEMAIL, "layers_exhausted"),
        StartFallback(fallback_of(call)),
    ]
    assert m.next_deadline() is None
    assert [leg.failure for leg in m.legs()] == [
        LegFailure.UNREACHABLE,
        LegFailure.BUSY,
        LegFailure.UNREACHABLE,
    ]


def sequential(timeout: int = 25, each: int = 10, strategy: str = "round_robin") -> Call:
    d = directory(
        [user("a"), user("b"), user("c")],
        [group("g", layer(["a", "b", "c"], strategy, timeout=timeout, ring_each_seconds=each))],
    )
    call, _ = Call.started(plan(d))
    return call


def test_one_at_a_time_each_for_ring_each_seconds_within_the_layer_timeout() -> None:
    call = sequential()
    m = call.machine
    assert call.log == [DialLeg("c1/1", "a", APPS, None, T0 + 10), CallRinging(0, ("a",), 0)]
    assert m.next_deadline() == T0 + 10
    assert m.handle_timer(T0 + 10) == [
        CancelLeg("c1/1", LegReason.TIMEOUT),
        DialLeg("c1/2", "b", APPS, None, T0 + 20),
        CallRinging(0, ("b",), 0),
    ]
    assert m.next_deadline() == T0 + 20
    # The last turn is cut short by the layer timeout.
    assert m.handle_timer(T0 + 20) == [
        CancelLeg("c1/2", LegReason.TIMEOUT),
        DialLeg("c1/3", "c", APPS, None, T0 + 25),
        CallRinging(0, ("c",), 0),
    ]
    assert m.next_deadline() == T0 + 25
    out = m.handle_timer(T0 + 25)
    assert out[:2] == [LayerExhausted(0, 0, timed_out=True), CancelLeg("c1/3", LegReason.TIMEOUT)]
    assert m.state is CallState.VOICEMAIL
    assert m.ringing_user_ids() == ()


def test_one_at_a_time_a_failure_rings_the_next_at_once() -> None:
    call = sequential()
    m = call.machine
    m.handle_timer(T0 + 10)
    assert m.leg_failed("c1/2", LegFailure.REJECTED, T0 + 12) == [
        DialLeg("c1/3", "c", APPS, None, T0 + 22),
        CallRinging(0, ("c",), 0),
    ]
    assert m.next_deadline() == T0 + 22


def test_one_at_a_time_moves_on_when_everyone_had_a_turn_before_the_timeout() -> None:
    call = sequential(timeout=60, each=5)
    m = call.machine
    call.record(m.handle_timer(T0 + 5))
    call.record(m.handle_timer(T0 + 10))
    assert m.next_deadline() == T0 + 15  # c's turn, long before the layer timeout (T0+60)
    out = call.record(m.handle_timer(T0 + 15))
    assert out[:2] == [CancelLeg("c1/3", LegReason.TIMEOUT), LayerExhausted(0, 0, timed_out=False)]
    assert m.state is CallState.VOICEMAIL
    assert [d.user_id for d in call.dials()] == ["a", "b", "c"]


def test_one_at_a_time_without_ring_each_rings_the_first_for_the_whole_layer() -> None:
    d = directory(
        [user("a"), user("b")], [group("g", layer(["a", "b"], "longest_idle", timeout=20))]
    )
    call, out = Call.started(plan(d))
    assert out == [DialLeg("c1/1", "a", APPS, None, T0 + 20), CallRinging(0, ("a",), 0)]
    assert call.machine.next_deadline() == T0 + 20


def test_answer_in_a_one_at_a_time_layer_stops_the_turns() -> None:
    call = sequential()
    m = call.machine
    out = m.leg_answered("c1/1", T0 + 4)
    assert out == [BridgeTo("c1/1"), MarkOnCall("a"), CallAnswered("a", "c1/1", APPS)]
    assert m.next_deadline() is None
    assert m.handle_timer(T0 + 10) == []


# --- fallbacks ----------------------------------------------------------------------------------


def test_fallback_forward_dials_the_number_with_diversion_and_counts_forwarded() -> None:
    call = three_at_once(action="forward", number=FORWARD_TO)
    m = call.machine
    out = m.handle_timer(T0 + 20)
    step = fallback_of(call)
    diversion = Diversion(DiversionReason.NO_ANSWER, LINE, "ring_group", "g", "layers_exhausted")
    assert out == [
        LayerExhausted(0, 0, timed_out=True),
        CancelLeg("c1/1", LegReason.TIMEOUT),
        CancelLeg("c1/2", LegReason.TIMEOUT),
        CancelLeg("c1/3", LegReason.TIMEOUT),
        FallbackStarted(FallbackAction.FORWARD, "layers_exhausted"),
        StartFallback(step),
        DialLeg("c1/4", None, PHONE, FORWARD_TO, T0 + 80, diversion),
    ]
    assert m.next_deadline() == T0 + 80
    assert m.snapshot()["forwarding_to"] == FORWARD_TO
    assert m.leg_ringing("c1/4", T0 + 21) == [RingCaller("c1/4"), LegRinging("c1/4", None)]
    out = m.leg_answered("c1/4", T0 + 30)
    assert out == [BridgeTo("c1/4"), CallAnswered(None, "c1/4", PHONE)]  # nobody to mark
    out = m.hangup(Side.CALLEE, T0 + 90)
    assert out == [
        HangupLeg("c1/caller", LegReason.CALLEE_HANGUP),
        CallEnded(EndCause.CALLEE_HANGUP, CallOutcome.FORWARDED),
    ]


def test_forward_that_nobody_answers_refuses_the_caller() -> None:
    d = directory(
        [user("a")],
        [
            group(
                "g", layer(["a"], timeout=20), fallback={"action": "forward", "number": FORWARD_TO}
            )
        ],
    )
    call, _ = Call.started(plan(d), forward_timeout_seconds=30)
    m = call.machine
    forward = only(m.handle_timer(T0 + 20), DialLeg)
    assert [(f.user_id, f.timeout_at) for f in forward] == [(None, T0 + 50)]
    assert m.handle_timer(T0 + 49) == []
    assert m.handle_timer(T0 + 50) == [
        CancelLeg("c1/2", LegReason.TIMEOUT),
        RejectCaller(480, 19, "forward_no_answer"),
        CallEnded(EndCause.REJECTED, CallOutcome.NO_ANSWER_FALLBACK),
    ]
    assert m.next_deadline() is None


def test_busy_forward_number_refuses_the_caller_as_busy() -> None:
    call = three_at_once(action="forward", number=FORWARD_TO)
    m = call.machine
    m.handle_timer(T0 + 20)
    assert m.leg_failed("c1/4", LegFailure.BUSY, T0 + 22) == [
        RejectCaller(486, 17, "forward_busy"),
        CallEnded(EndCause.REJECTED, CallOutcome.NO_ANSWER_FALLBACK),
    ]


def test_fallback_hangup_refuses_the_caller() -> None:
    call = three_at_once(action="hangup", prompt="We are all busy. Goodbye.")
    m = call.machine
    out = m.handle_timer(T0 + 20)
    assert out[4:] == [
        FallbackStarted(FallbackAction.HANGUP, "layers_exhausted"),
        StartFallback(fallback_of(call)),
        RejectCaller(480, 19, "layers_exhausted", "We are all busy. Goodbye."),
        CallEnded(EndCause.REJECTED, CallOutcome.HANGUP),
    ]
    assert m.ended and m.outcome is CallOutcome.HANGUP
    assert m.next_deadline() is None


def test_nobody_can_receive_goes_straight_to_the_fallback_without_dialing() -> None:
    d = directory(
        [user("a"), user("b")],
        [group("g", layer(["a", "b"]), fallback={"action": "hangup"})],
    )
    route = plan(d, FixedPresence(by_user={}, default=BUSY))
    assert route.outcome is Outcome.FALLBACK
    call, out = Call.started(route)
    assert out == [
        FallbackStarted(FallbackAction.HANGUP, "no_member_can_receive"),
        StartFallback(fallback_of(call)),
        RejectCaller(480, 20, "no_member_can_receive"),  # nobody was even alerted
        CallEnded(EndCause.REJECTED, CallOutcome.HANGUP),
    ]
    assert call.dials() == []


def test_unavailable_diversion_when_nobody_could_be_rung() -> None:
    d = directory(
        [user("a")],
        [group("g", layer(["a"]), fallback={"action": "forward", "number": FORWARD_TO})],
    )
    _, out = Call.started(plan(d, FixedPresence(by_user={}, default=BUSY)))
    (forward,) = only(out, DialLeg)
    assert forward.diversion is not None
    assert forward.diversion.reason is DiversionReason.UNAVAILABLE
    assert forward.diversion.why == "no_member_can_receive"


def nested(h_members: list[str], *, h_presence: FixedPresence | None = None) -> Call:
    d = directory(
        [user("a"), user("b"), user("c")],
        [
            group(
                "g", layer(["a"], timeout=20), fallback={"action": "ring_group", "ring_group": "h"}
            ),
            group("h", layer(h_members, timeout=30)),
        ],
    )
    call, _ = Call.started(plan(d, h_presence))
    return call


def test_fallback_ring_group_rings_the_nested_plans_layers() -> None:
    call = nested(["b", "c"])
    m = call.machine
    step = fallback_of(call)
    assert step.plan is not None
    out = m.handle_timer(T0 + 20)
    assert out == [
        LayerExhausted(0, 0, timed_out=True),
        CancelLeg("c1/1", LegReason.LAYER_MOVED_ON),
        FallbackStarted(FallbackAction.RING_GROUP, "layers_exhausted"),
        StartFallback(step),
        DialLeg("c1/2", "b", APPS, None, T0 + 50),
        DialLeg("c1/3", "c", APPS, None, T0 + 50),
        CallRinging(0, ("b", "c"), fallback_depth=1),
    ]
    assert m.next_deadline() == T0 + 50
    assert m.snapshot()["fallback_depth"] == 1
    nested_fallback = step.plan.fallback
    assert nested_fallback is not None
    assert m.handle_timer(T0 + 50) == [
        LayerExhausted(0, 1, timed_out=True),
        CancelLeg("c1/2", LegReason.TIMEOUT),
        CancelLeg("c1/3", LegReason.TIMEOUT),
        FallbackStarted(FallbackAction.VOICEMAIL, "layers_exhausted"),
        StartFallback(nested_fallback),
    ]
    assert m.state is CallState.VOICEMAIL


def test_a_member_of_the_fallback_group_answers() -> None:
    call = nested(["b", "c"])
    m = call.machine
    m.handle_timer(T0 + 20)
    out = m.leg_answered("c1/3", T0 + 25)
    assert out[:2] == [BridgeTo("c1/3"), CancelLeg("c1/2", LegReason.ANSWERED_ELSEWHERE)]
    assert m.hangup(Side.CALLER, T0 + 60)[-1] == CallEnded(
        EndCause.CALLER_HANGUP, CallOutcome.ANSWERED
    )


def test_a_member_of_both_groups_keeps_ringing_into_the_fallback_group() -> None:
    call = nested(["a", "b"])
    m = call.machine
    assert call.log[0] == DialLeg("c1/1", "a", APPS, None, T0 + 50)  # 20 s in g, 30 s in h
    out = m.handle_timer(T0 + 20)
    assert out == [
        LayerExhausted(0, 0, timed_out=True),
        FallbackStarted(FallbackAction.RING_GROUP, "layers_exhausted"),
        StartFallback(fallback_of(call)),
        DialLeg("c1/2", "b", APPS, None, T0 + 50),
        CallRinging(0, ("a", "b"), fallback_depth=1),
    ]
    assert m.leg_answered("c1/1", T0 + 30)[:2] == [
        BridgeTo("c1/1"),
        CancelLeg("c1/2", LegReason.ANSWERED_ELSEWHERE),
    ]


def test_fallback_group_where_nobody_can_receive_falls_through_to_its_own_fallback() -> None:
    call = nested(["b"], h_presence=FixedPresence(by_user={"b": BUSY}))
    m = call.machine
    step = fallback_of(call)
    assert step.plan is not None and step.plan.fallback is not None
    out = m.handle_timer(T0 + 20)
    assert out == [
        LayerExhausted(0, 0, timed_out=True),
        CancelLeg("c1/1", LegReason.TIMEOUT),
        FallbackStarted(FallbackAction.RING_GROUP, "layers_exhausted"),
        StartFallback(step),
        FallbackStarted(FallbackAction.VOICEMAIL, "no_member_can_receive"),
        StartFallback(step.plan.fallback),
    ]


# --- closed lines, unknown numbers, direct calls -----------------------------------------------


def closed_line(**closed_action: Any) -> Call:
    fields: dict[str, Any] = {"business_hours": CLOSED_HOURS}
    if closed_action:
        fields["closed_action"] = closed_action
    d = directory(
        [user("a"), user("b")],
        [group("g", layer(["a"])), group("h", layer(["b"], timeout=30))],
        **fields,
    )
    route = plan(d)
    assert route.outcome is Outcome.CLOSED
    call, _ = Call.started(route)
    return call


def test_closed_line_starts_the_closed_action_at_once() -> None:
    call = closed_line()
    m = call.machine
    assert call.log == [
        FallbackStarted(FallbackAction.VOICEMAIL, "closed"),
        StartFallback(fallback_of(call)),
    ]
    assert m.state is CallState.VOICEMAIL
    assert m.next_deadline() is None
    assert m.caller_hangup(T0 + 30) == [CallEnded(EndCause.CALLER_HANGUP, CallOutcome.CLOSED)]


def test_closed_line_forward_has_a_time_of_day_diversion() -> None:
    call = closed_line(action="forward", number=FORWARD_TO)
    m = call.machine
    diversion = Diversion(DiversionReason.TIME_OF_DAY, LINE, "ring_group", "g", "closed")
    assert call.log[2:] == [DialLeg("c1/1", None, PHONE, FORWARD_TO, T0 + 60, diversion)]
    m.leg_answered("c1/1", T0 + 5)
    assert m.hangup(Side.CALLER, T0 + 9) == [
        HangupLeg("c1/1", LegReason.CALLER_HANGUP),
        CallEnded(EndCause.CALLER_HANGUP, CallOutcome.CLOSED),
    ]


def test_closed_line_hangup_and_ring_group() -> None:
    hung_up = closed_line(action="hangup")
    assert hung_up.log[2:] == [
        RejectCaller(480, 20, "closed"),
        CallEnded(EndCause.REJECTED, CallOutcome.CLOSED),
    ]
    rings = closed_line(action="ring_group", ring_group="h")
    assert rings.log == [
        FallbackStarted(FallbackAction.RING_GROUP, "closed"),
        StartFallback(fallback_of(rings)),
        DialLeg("c1/1", "b", APPS, None, T0 + 30),
        CallRinging(0, ("b",), fallback_depth=1),
    ]
    assert rings.machine.next_deadline() == T0 + 30


def test_unknown_number_is_refused_with_404() -> None:
    d = directory([user("a")], [group("g", layer(["a"]))])
    route = plan(d, line="+15559999999")
    assert route.outcome is Outcome.NO_ROUTE
    call, out = Call.started(route)
    assert out == [
        RejectCaller(404, 1, "no_route"),
        CallEnded(EndCause.REJECTED, CallOutcome.NO_ROUTE),
    ]
    assert call.machine.outcome is CallOutcome.NO_ROUTE
    assert call.machine.next_deadline() is None


@pytest.mark.parametrize("backup", [FORWARD_TO, None])
def test_direct_call_to_a_user_then_their_backup_routing(backup: str | None) -> None:
    d = directory([user("a", ring_seconds=25, backup_number=backup)], [group("g", layer(["a"]))])
    call, out = Call.started(plan(d, line=None, user_id="a"))
    assert out == [DialLeg("c1/1", "a", APPS, None, T0 + 25), CallRinging(0, ("a",), 0)]
    out = call.machine.handle_timer(T0 + 25)
    if backup is None:
        assert only(out, StartFallback)[0].step.action is FallbackAction.VOICEMAIL
        assert call.machine.state is CallState.VOICEMAIL
    else:
        (forward,) = only(out, DialLeg)
        assert forward.number == backup
        assert forward.diversion == Diversion(
            DiversionReason.NO_ANSWER, None, "user", "a", "backup_routing_not_answered"
        )


# --- caller and callee hang-ups, presence -------------------------------------------------------


def test_caller_cancel_while_ringing_cancels_every_live_leg() -> None:
    call = three_at_once()
    m = call.machine
    m.leg_failed("c1/1", LegFailure.BUSY, T0 + 1)
    out = m.caller_hangup(T0 + 5)
    assert out == [
        CancelLeg("c1/2", LegReason.CALLER_HANGUP),
        CancelLeg("c1/3", LegReason.CALLER_HANGUP),
        CallEnded(EndCause.CALLER_HANGUP, CallOutcome.CALLER_CANCELLED),
    ]
    assert m.next_deadline() is None
    assert m.caller_hangup(T0 + 6) == []
    assert m.hangup(Side.CALLER, T0 + 6) == []
    assert m.leg_answered("c1/2", T0 + 6) == [HangupLeg("c1/2", LegReason.CALLER_HANGUP)]
    assert m.handle_timer(T0 + 20) == []
    assert only(call.log + out, MarkOnCall) == []
    assert only(call.log + out, MarkCallEnded) == []


def test_caller_cancel_while_a_sequential_layer_and_a_forward_ring() -> None:
    call = sequential()
    call.machine.handle_timer(T0 + 10)
    assert call.machine.caller_hangup(T0 + 11) == [
        CancelLeg("c1/2", LegReason.CALLER_HANGUP),
        CallEnded(EndCause.CALLER_HANGUP, CallOutcome.CALLER_CANCELLED),
    ]
    forward = three_at_once(action="forward", number=FORWARD_TO)
    forward.machine.handle_timer(T0 + 20)
    assert forward.machine.caller_hangup(T0 + 21) == [
        CancelLeg("c1/4", LegReason.CALLER_HANGUP),
        CallEnded(EndCause.CALLER_HANGUP, CallOutcome.CALLER_CANCELLED),
    ]


@pytest.mark.parametrize(
    ("side", "hangup"),
    [
        (Side.CALLER, HangupLeg("c1/2", LegReason.CALLER_HANGUP)),
        (Side.CALLEE, HangupLeg("c1/caller", LegReason.CALLEE_HANGUP)),
    ],
)
def test_hangup_after_answer_by_each_side(side: Side, hangup: HangupLeg) -> None:
    call = three_at_once()
    m = call.machine
    m.leg_answered("c1/2", T0 + 2)
    cause = EndCause.CALLER_HANGUP if side is Side.CALLER else EndCause.CALLEE_HANGUP
    assert m.hangup(side, T0 + 60) == [
        hangup,
        MarkCallEnded("b"),
        CallEnded(cause, CallOutcome.ANSWERED),
    ]
    assert m.ended and m.outcome is CallOutcome.ANSWERED
    assert m.hangup(Side.CALLER, T0 + 61) == m.hangup(Side.CALLEE, T0 + 61) == []
    assert m.caller_hangup(T0 + 61) == []


def test_caller_hangup_after_answer_is_the_caller_side_hanging_up() -> None:
    call = three_at_once()
    m = call.machine
    m.leg_answered("c1/2", T0 + 2)
    assert m.caller_hangup(T0 + 30) == [
        HangupLeg("c1/2", LegReason.CALLER_HANGUP),
        MarkCallEnded("b"),
        CallEnded(EndCause.CALLER_HANGUP, CallOutcome.ANSWERED),
    ]


def test_callee_hangup_before_answer_is_ignored() -> None:
    call = three_at_once()
    assert call.machine.hangup(Side.CALLEE, T0 + 1) == []
    assert call.machine.state is CallState.RINGING


def test_the_bridged_leg_dropping_is_a_callee_hangup() -> None:
    call = three_at_once()
    m = call.machine
    m.leg_answered("c1/1", T0 + 2)
    assert m.leg_failed("c1/1", LegFailure.UNREACHABLE, T0 + 30) == [
        HangupLeg("c1/caller", LegReason.CALLEE_HANGUP),
        MarkCallEnded("a"),
        CallEnded(EndCause.CALLEE_HANGUP, CallOutcome.ANSWERED),
    ]


def test_presence_commands_are_emitted_once_each() -> None:
    call = three_at_once()
    m = call.machine
    inputs: list[Callable[[float], list[Output]]] = [
        lambda t: m.leg_answered("c1/3", t),
        lambda t: m.leg_answered("c1/3", t),
        lambda t: m.leg_answered("c1/1", t),
        lambda t: m.hangup(Side.CALLEE, t),
        lambda t: m.hangup(Side.CALLEE, t),
        lambda t: m.hangup(Side.CALLER, t),
        lambda t: m.caller_hangup(t),
        lambda t: m.leg_failed("c1/3", LegFailure.UNREACHABLE, t),
    ]
    for second, run in enumerate(inputs):
        call.record(run(T0 + second))
    marks = [o for o in call.log if isinstance(o, MarkOnCall | MarkCallEnded)]
    assert marks == [MarkOnCall("c"), MarkCallEnded("c")]
    assert len(only(call.log, BridgeTo)) == 1
    assert len(only(call.log, CallEnded)) == 1


# --- never the same user twice ------------------------------------------------------------------


def test_a_user_in_two_layers_keeps_ringing_instead_of_being_dialed_twice() -> None:
    d = directory(
        [user("a"), user("b")],
        [group("g", layer(["a"], timeout=10), layer(["a", "b"], timeout=15))],
    )
    call, out = Call.started(plan(d))
    m = call.machine
    # a's leg is expected to carry on through the second layer: 10 s + 15 s.
    assert out == [DialLeg("c1/1", "a", APPS, None, T0 + 25), CallRinging(0, ("a",), 0)]
    out = call.record(m.handle_timer(T0 + 10))
    assert out == [
        LayerExhausted(0, 0, timed_out=True),
        DialLeg("c1/2", "b", APPS, None, T0 + 25),
        CallRinging(1, ("a", "b"), 0),
    ]
    carried = m.leg("c1/1")
    assert carried is not None and carried.layer_index == 1 and carried.state.live
    out = call.record(m.handle_timer(T0 + 25))
    assert only(out, CancelLeg) == [
        CancelLeg("c1/1", LegReason.TIMEOUT),
        CancelLeg("c1/2", LegReason.TIMEOUT),
    ]
    assert Counter(d.user_id for d in call.dials()) == {"a": 1, "b": 1}


def test_a_user_first_in_turn_of_the_next_layer_keeps_ringing() -> None:
    d = directory(
        [user("a"), user("b")],
        [
            group(
                "g",
                layer(["a"], timeout=10),
                layer(["a", "b"], "round_robin", timeout=20, ring_each_seconds=10),
            )
        ],
    )
    call, out = Call.started(plan(d))
    m = call.machine
    assert only(out, DialLeg) == [DialLeg("c1/1", "a", APPS, None, T0 + 20)]
    assert m.handle_timer(T0 + 10) == [
        LayerExhausted(0, 0, timed_out=True),
        CallRinging(1, ("a",), 0),
    ]
    assert m.next_deadline() == T0 + 20
    assert m.handle_timer(T0 + 20) == [
        CancelLeg("c1/1", LegReason.TIMEOUT),
        DialLeg("c1/2", "b", APPS, None, T0 + 30),
        CallRinging(1, ("b",), 0),
    ]


def test_a_user_who_declined_is_not_rung_again_for_this_call() -> None:
    d = directory(
        [user("a"), user("b"), user("c")],
        [
            group(
                "g",
                layer(["a", "b"], timeout=10),
                layer(["c"], timeout=10),
                layer(["a", "b"], timeout=10),
            )
        ],
    )
    call, _ = Call.started(plan(d))
    m = call.machine
    call.record(m.leg_failed("c1/1", LegFailure.REJECTED, T0 + 1))
    call.record(m.handle_timer(T0 + 10))
    out = call.record(m.handle_timer(T0 + 20))
    assert only(out, DialLeg) == [DialLeg("c1/4", "b", APPS, None, T0 + 30)]
    assert only(out, CallRinging) == [CallRinging(2, ("b",), 0)]
    assert Counter(d.user_id for d in call.dials()) == {"a": 1, "b": 2, "c": 1}
    assert len({d.leg_id for d in call.dials()}) == len(call.dials())  # leg ids never reused


# --- views, ignored inputs, next_deadline walk-through ------------------------------------------


def test_snapshot_and_live_call_follow_the_machine() -> None:
    call = three_at_once()
    m = call.machine
    m.leg_failed("c1/1", LegFailure.BUSY, T0 + 1)
    m.leg_ringing("c1/2", T0 + 2)
    snap = m.snapshot()
    assert snap["state"] == "ringing"
    assert snap["ringing"] == ["b", "c"]
    assert snap["layer_index"] == 0
    assert snap["answered_by"] is None
    assert snap["next_deadline"] == T0 + 20
    assert [(leg["user_id"], leg["state"]) for leg in snap["legs"]] == [
        ("a", "failed"),
        ("b", "ringing"),
        ("c", "dialing"),
    ]
    live = LiveCall("c1", "sip", LINE, "+15551230000", datetime(2026, 1, 1, tzinfo=UTC))
    m.apply_to(live)
    assert live.to_dict()["ringing"] == ["b", "c"]
    assert live.state == "ringing"
    assert live.involves("b") and not live.involves("a")
    m.leg_answered("c1/3", T0 + 3)
    m.apply_to(live)
    assert (live.state, live.ringing, live.answered_by) == ("answered", set(), "c")
    assert m.snapshot()["legs"][2]["state"] == "bridged"
    m.hangup(Side.CALLER, T0 + 9)
    m.apply_to(live)
    assert live.state == "ended"
    assert m.snapshot()["outcome"] == "answered"


def test_inputs_that_do_not_apply_are_ignored() -> None:
    d = directory([user("a")], [group("g", layer(["a"]))])
    m = CallMachine("c1", plan(d), T0)
    assert m.next_deadline() is None
    assert m.snapshot()["state"] == "new"
    assert m.leg_ringing("nope", T0) == []
    assert m.leg_answered("nope", T0) == []
    assert m.leg_failed("nope", LegFailure.BUSY, T0) == []
    assert m.handle_timer(T0 + 1000) == []
    assert m.hangup(Side.CALLEE, T0) == []
    assert m.state is CallState.NEW
    m.start(T0)
    assert m.leg_answered("c1/99", T0) == []
    assert m.snapshot()["state"] == "ringing"


def test_caller_gone_before_start() -> None:
    d = directory([user("a")], [group("g", layer(["a"]))])
    m = CallMachine("c1", plan(d), T0)
    assert m.caller_hangup(T0) == [CallEnded(EndCause.CALLER_HANGUP, CallOutcome.CALLER_CANCELLED)]
    assert m.start(T0) == []


def test_next_deadline_at_every_step() -> None:
    d = directory(
        [user("a"), user("b"), user("c"), user("d")],
        [
            group(
                "g",
                layer(["a", "b"], "round_robin", timeout=30, ring_each_seconds=12),
                layer(["c", "d"], timeout=20),
                fallback={"action": "forward", "number": FORWARD_TO},
            )
        ],
    )
    call, _ = Call.started(plan(d), forward_timeout_seconds=40)
    m = call.machine
    assert m.next_deadline() == T0 + 12  # a's turn
    m.leg_ringing("c1/1", T0 + 1)
    assert m.next_deadline() == T0 + 12
    m.handle_timer(T0 + 12)
    assert m.next_deadline() == T0 + 24  # b's turn
    m.leg_failed("c1/2", LegFailure.BUSY, T0 + 13)  # nobody left in turn: layer 1 at once
    assert m.next_deadline() == T0 + 33
    assert m.ringing_user_ids() == ("c", "d")
    m.leg_failed("c1/3", LegFailure.UNREACHABLE, T0 + 14)
    assert m.next_deadline() == T0 + 33  # d still rings
    m.handle_timer(T0 + 32.5)
    assert m.next_deadline() == T0 + 33
    m.handle_timer(T0 + 33)
    assert m.next_deadline() == T0 + 73  # the forward leg
    assert call.machine.leg("c1/5") is not None
    m.leg_answered("c1/5", T0 + 40)
    assert m.next_deadline() is None
    m.hangup(Side.CALLEE, T0 + 100)
    assert m.next_deadline() is None
    assert m.outcome is CallOutcome.FORWARDED


@pytest.mark.parametrize(
    ("status", "failure"),
    [
        (486, LegFailure.BUSY),
        (600, LegFailure.BUSY),
        (603, LegFailure.REJECTED),
        (480, LegFailure.UNREACHABLE),
        (404, LegFailure.UNREACHABLE),
        (408, LegFailure.UNREACHABLE),
        (487, LegFailure.UNREACHABLE),
    ],
)
def test_leg_failure_from_sip_status(status: int, failure: LegFailure) -> None:
    assert LegFailure.from_sip_status(status) is failure


def test_outputs_are_frozen_values() -> None:
    dial = DialLeg("x", "a", APPS, None, 1.0)
    with pytest.raises(AttributeError):
        dial.leg_id = "y"  # type: ignore[misc]
    assert hash(CancelLeg("x", LegReason.TIMEOUT)) == hash(CancelLeg("x", LegReason.TIMEOUT))
    assert [reason.value for reason in LegReason][:5] == [
        "answered_elsewhere",
        "caller_hangup",
        "timeout",
        "rejected",
        "layer_moved_on",
    ]


# --- properties ---------------------------------------------------------------------------------

USERS = ("u0", "u1", "u2", "u3", "u4", "u5")
STRATEGIES = ("all", "round_robin", "longest_idle", "random")
FINAL_FALLBACKS: tuple[dict[str, Any], ...] = (
    {"action": "voicemail"},
    {"action": "hangup"},
    {"action": "forward", "number": FORWARD_TO},
)


@st.composite
def layers_of(draw: st.DrawFn, count: tuple[int, int]) -> list[dict[str, Any]]:
    found = []
    for _ in range(draw(st.integers(*count))):
        members = draw(st.lists(st.sampled_from(USERS), min_size=1, max_size=4, unique=True))
        each = draw(st.none() | st.integers(1, 30))
        extra = {"ring_each_seconds": each} if each is not None else {}
        found.append(
            layer(
                members,
                draw(st.sampled_from(STRATEGIES)),
                timeout=draw(st.integers(1, 30)),
                **extra,
            )
        )
    return found


@st.composite
def scenarios(draw: st.DrawFn) -> CallMachine:
    """A real plan: a line to group g (1-3 layers), falling back to voicemail, hangup,
    forward or group h (itself falling back to one of those); some users busy; sometimes
    the line is closed."""
    users = [
        phone_user(uid, f"+1555000100{i}") if i % 3 == 2 else user(uid)
        for i, uid in enumerate(USERS)
    ]
    fallback = draw(
        st.sampled_from((*FINAL_FALLBACKS, {"action": "ring_group", "ring_group": "h"}))
    )
    groups = [
        group("g", *draw(layers_of((1, 3))), fallback=fallback),
        group("h", *draw(layers_of((1, 2))), fallback=draw(st.sampled_from(FINAL_FALLBACKS))),
    ]
    line_fields: dict[str, Any] = {}
    if draw(st.sampled_from((False, False, False, False, False, True))):
        line_fields["business_hours"] = CLOSED_HOURS
        line_fields["closed_action"] = draw(
            st.sampled_from((*FINAL_FALLBACKS, {"action": "ring_group", "ring_group": "h"}))
        )
    busy = draw(st.sets(st.sampled_from(USERS), max_size=3))
    presence = FixedPresence(by_user={uid: BUSY for uid in busy})
    route = plan(directory(users, groups, **line_fields), presence)
    forward_timeout = float(draw(st.integers(1, 60)))
    return CallMachine("c1", route, T0, forward_timeout_seconds=forward_timeout)


# Picks one of the legs dialed so far (modulo their count, plus one for an unknown leg id).
LEG = st.integers(0, 1000)
RING = st.tuples(st.just("ring"), LEG, st.booleans())
ANSWER = st.tuples(st.just("answer"), LEG)
FAIL = st.tuples(st.just("fail"), LEG, st.sampled_from(LegFailure))
DEADLINE = st.tuples(st.just("deadline"))
# Leg events and timers come more often than the caller hanging up.
OPS = st.one_of(
    RING,
    FAIL,
    DEADLINE,
    ANSWER,
    FAIL,
    DEADLINE,
    RING,
    st.tuples(st.just("wait"), st.floats(0, 40, allow_nan=False)),
    st.tuples(st.just("early_timer")),
    ANSWER,
    st.tuples(st.just("caller_hangup")),
    st.tuples(st.just("hangup"), st.sampled_from(Side)),
)


@dataclass
class Checker:
    """Runs inputs, keeps every output and checks the invariants after each step."""

    machine: CallMachine
    now: float = T0
    log: list[Output] = field(default_factory=list)
    dialed: list[str] = field(default_factory=list)
    # Per leg: what closed its ringing (BridgeTo, CancelLeg or a failure while it was live).
    settled: dict[str, list[str]] = field(default_factory=dict)
    settled_at: dict[str, int] = field(default_factory=dict)  # position in the log
    hangups: Counter[str] = field(default_factory=Counter)
    bridged: str | None = None
    ended_at: int | None = None

    def run(self, op: tuple[Any, ...]) -> None:
        m = self.machine
        kind = op[0]
        if kind in ("ring", "answer", "fail"):
            pick = op[1] % (len(self.dialed) + 1)
            leg_id = self.dialed[pick] if pick < len(self.dialed) else "c1/unknown"
            if kind == "ring":
                self.take(m.leg_ringing(leg_id, self.now, early_media=op[2]))
            elif kind == "answer":
                was = m.leg(leg_id)
                out = self.take(m.leg_answered(leg_id, self.now))
                late = only(out, HangupLeg)
                if late:  # only ever for a leg that answered after it was settled
                    assert was is not None and not was.state.live, (was, out)
                    assert late == [HangupLeg(leg_id, late[0].reason)]
            else:
                was = m.leg(leg_id)
                if was is not None and was.state.live:
                    self.settle(leg_id, "failed")
                self.take(m.leg_failed(leg_id, op[2], self.now))
        elif kind == "wait":
            self.now += op[1]
            self.timer()
        elif kind == "deadline":
            deadline = m.next_deadline()
            if deadline is not None:
                self.now = max(self.now, deadline)
            self.timer()
        elif kind == "early_timer":
            self.timer()
        elif kind == "caller_hangup":
            self.take(m.caller_hangup(self.now))
        else:
            self.take(m.hangup(op[1], self.now))

    def timer(self) -> None:
        self.take(self.machine.handle_timer(self.now))
        deadline = self.machine.next_deadline()
        assert deadline is None or deadline > self.now  # nothing due is left behind

    def settle(self, leg_id: str, how: str) -> None:
        self.settled.setdefault(leg_id, []).append(how)
        self.settled_at.setdefault(leg_id, len(self.log))
        assert len(self.settled[leg_id]) == 1, (leg_id, self.settled[leg_id])

    def take(self, out: list[Output]) -> list[Output]:
        for item in out:
            if isinstance(item, DialLeg):
                assert self.ended_at is None
                assert item.leg_id not in self.dialed
                assert item.timeout_at >= self.now
                self.dialed.append(item.leg_id)
            elif isinstance(item, BridgeTo):
                assert self.bridged is None, "a second BridgeTo"
                assert self.ended_at is None
                self.bridged = item.leg_id
                self.settle(item.leg_id, "bridged")
            elif isinstance(item, CancelLeg):
                assert self.ended_at is None or item.reason is LegReason.CALLER_HANGUP
                self.settle(item.leg_id, "cancelled")
            elif isinstance(item, HangupLeg):
                if item.leg_id != self.machine.caller_leg_id:
                    assert item.leg_id in self.settled  # never hang up a ringing leg
                    self.hangups[item.leg_id] += 1
                    assert self.hangups[item.leg_id] == 1
            elif isinstance(item, CallEnded):
                assert self.ended_at is None, "a second CallEnded"
                self.log.append(item)
                self.ended_at = len(self.log) - 1
                # Every leg dialed was settled exactly once, before the end.
                for leg_id in self.dialed:
                    assert len(self.settled.get(leg_id, [])) == 1, leg_id
                    assert self.settled_at[leg_id] < self.ended_at
                continue
            self.log.append(item)
        ringing = self.machine.ringing_user_ids()
        assert len(ringing) == len(set(ringing))  # never two legs to one user at once
        return out

    def check_presence(self) -> None:
        on = only(self.log, MarkOnCall)
        off = only(self.log, MarkCallEnded)
        assert len(on) <= 1 and len(off) <= len(on)
        if off:
            assert off[0].user_id == on[0].user_id
            assert self.log.index(on[0]) < self.log.index(off[0])
        if self.bridged is not None:
            winner = self.machine.leg(self.bridged)
            assert winner is not None
            assert [c.user_id for c in on] == ([winner.user_id] if winner.user_id else [])


def total_ring_time(m: CallMachine) -> float:
    stages, _, final = flatten_plan(m.plan)
    total = sum(stage.timeout for stage in stages)
    if final is not None and final.action is FallbackAction.FORWARD:
        total += m.forward_timeout_seconds
    return total


@settings(max_examples=400, deadline=None)
@given(machine=scenarios(), ops=st.lists(OPS, min_size=4, max_size=40))
def test_property_random_inputs_keep_every_promise(
    machine: CallMachine, ops: list[tuple[Any, ...]]
) -> None:
    check = Checker(machine)
    check.take(machine.start(T0))
    for op in ops:
        check.run(op)
        check.check_presence()
    # Whatever happened, the caller hanging up ends the call.
    check.run(("caller_hangup",))
    check.check_presence()
    assert machine.ended
    assert machine.next_deadline() is None
    assert check.ended_at is not None
    assert len(only(check.log, CallEnded)) == 1
    assert len(only(check.log, BridgeTo)) <= 1
    outcome = machine.outcome
    if check.bridged is not None:
        assert outcome in (CallOutcome.ANSWERED, CallOutcome.FORWARDED, CallOutcome.CLOSED)
        assert len(only(check.log, MarkCallEnded)) == len(only(check.log, MarkOnCall))
    else:
        assert outcome is not CallOutcome.ANSWERED and outcome is not CallOutcome.FORWARDED
    if machine.plan.outcome is Outcome.CLOSED:
        assert outcome is CallOutcome.CLOSED
    event(f"outcome={outcome}")
    event(f"legs dialed: {min(len(check.dialed), 5)}+")
    if check.hangups:
        event("a late answer was hung up")
    if any(d.user_id is None for d in only(check.log, DialLeg)):
        event("the forward number was dialed")
    if any(r.fallback_depth for r in only(check.log, CallRinging)):
        event("a fallback group rang")
    # Nothing more comes out of an ended call but hang-ups for late answers.
    for leg_id in check.dialed:
        check.take(machine.leg_answered(leg_id, check.now + 1))
        check.take(machine.leg_failed(leg_id, LegFailure.UNREACHABLE, check.now + 1))
    assert check.take(machine.handle_timer(check.now + 10_000)) == []


NO_ANSWER_OPS = st.one_of(RING, FAIL, DEADLINE, st.tuples(st.just("early_timer")))


@settings(max_examples=300, deadline=None)
@given(machine=scenarios(), ops=st.lists(NO_ANSWER_OPS, min_size=2, max_size=30))
def test_property_nobody_answers_and_the_call_is_over_within_the_sum_of_timeouts(
    machine: CallMachine, ops: list[tuple[Any, ...]]
) -> None:
    check = Checker(machine)
    check.take(machine.start(T0))
    for op in ops:
        check.run(op)  # timers run exactly at their deadlines, as the adapter runs them
    event(f"ops left it {machine.state}")
    bound = T0 + total_ring_time(machine)
    deadline = machine.next_deadline()
    while deadline is not None:
        assert deadline <= bound
        check.now = deadline
        check.timer()
        deadline = machine.next_deadline()
    assert check.now <= bound
    assert machine.state in (CallState.VOICEMAIL, CallState.ENDED)
    assert machine.ringing_user_ids() == ()
    assert only(check.log, BridgeTo) == []
    # Every leg dialed was settled (cancelled or failed); none is left ringing.
    assert set(check.settled) == set(check.dialed)
    if machine.state is CallState.ENDED:
        assert machine.outcome in (
            CallOutcome.HANGUP,
            CallOutcome.NO_ANSWER_FALLBACK,
            CallOutcome.CLOSED,
            CallOutcome.NO_ROUTE,
        )
    else:
        assert only(check.log, StartFallback)[-1].step.action is FallbackAction.VOICEMAIL
