"""Fixed plans: calls whose route is not a line's, but which run through the same call core.

- `outbound_plan`: a desk phone dialling a number goes straight out through the trunk (the
  call core's forward leg), no members to ring.
- `desk_leg_plan`: the trunk asked for one user's desk phones (a carrier's `<Dial><Sip>`):
  ring them, and if nobody answers refuse, so the sender runs the rest of its own plan.

Pure functions, like the rest of `routing/`: the time is passed in.
"""

from __future__ import annotations

from datetime import datetime

from bridge.directory.model import FallbackAction, Strategy
from bridge.presence.model import Channel
from bridge.routing.model import FallbackStep, Outcome, PlannedLayer, RingTarget, RoutePlan

# How long a desk-phone leg asked for by the trunk may ring: the sender's own timer (a
# carrier's <Dial timeout>) normally ends it first with a CANCEL.
DESK_LEG_RING_SECONDS = 300


def outbound_plan(call_id: str, number: str, at: datetime) -> RoutePlan:
    """A desk phone dialling `number` (E.164): forward it through the trunk."""
    return RoutePlan(
        call_id=call_id,
        at=at,
        directory_version=0,
        outcome=Outcome.FALLBACK,
        line=None,
        line_name=None,
        open=True,
        target_kind=None,
        target_id=None,
        target_name=None,
        layers=(),
        fallback=FallbackStep(action=FallbackAction.FORWARD, number=number, why="outbound_call"),
    )


def desk_leg_plan(call_id: str, user_id: str, at: datetime) -> RoutePlan:
    """Ring `user_id`'s desk phones for `DESK_LEG_RING_SECONDS`, then refuse."""
    return RoutePlan(
        call_id=call_id,
        at=at,
        directory_version=0,
        outcome=Outcome.RING,
        line=None,
        line_name=None,
        open=True,
        target_kind="user",
        target_id=user_id,
        target_name=None,
        layers=(
            PlannedLayer(
                index=0,
                strategy=Strategy.ALL,
                timeout_seconds=DESK_LEG_RING_SECONDS,
                ring_each_seconds=None,
                members=(),
                ring=(RingTarget(user_id=user_id, via=Channel.IP_PHONE),),
            ),
        ),
        fallback=FallbackStep(action=FallbackAction.HANGUP, why="desk_leg_not_answered"),
    )
