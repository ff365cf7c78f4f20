"""The routing core: a pure function from (directory, presence, call, now) to a RoutePlan.

No clock, no I/O, no mutation of its inputs: the same inputs give the same plan. Real calls
and Test Routing both call `plan_route`; the explanation *is* the plan.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from bridge.directory.model import (
    AccountStatus,
    AnswerBy,
    Directory,
    Fallback,
    FallbackAction,
    Line,
    RingGroup,
    Role,
    Strategy,
    User,
)
from bridge.directory.roles import ROLES_THAT_RECEIVE_CALLS
from bridge.directory.schedule import is_open
from bridge.presence.model import Availability, Channel, PresenceView
from bridge.routing.model import (
    CallRequest,
    FallbackStep,
    MemberDecision,
    Outcome,
    PlannedLayer,
    Reason,
    RingTarget,
    RotationState,
    RoutePlan,
    rotation_key,
)

_CHANNEL_OF = {
    AnswerBy.APPS: Channel.APPS,
    AnswerBy.IP_PHONE: Channel.IP_PHONE,
    AnswerBy.PHONE_NUMBER: Channel.PHONE_NUMBER,
}
_MAX_FALLBACK_DEPTH = 5
_NEVER = datetime.min.replace(tzinfo=UTC)


class _Decider:
    """Per-decision memo (local times per zone); discarded when the decision returns."""

    __slots__ = ("_local", "line", "now", "presence")

    def __init__(self, presence: PresenceView, now: datetime, line: Line | None) -> None:
        self.presence = presence
        self.now = now
        self.line = line
        self._local: dict[ZoneInfo, datetime] = {}

    def local(self, zone: ZoneInfo) -> datetime:
        value = self._local.get(zone)
        if value is None:
            value = self._local[zone] = self.now.astimezone(zone)
        return value

    def decide(self, directory: Directory, user: User) -> MemberDecision:
        reason = self.reason(directory, user)
        via = _CHANNEL_OF.get(user.answer_by)
        return MemberDecision(
            user_id=user.id,
            name=user.name,
            answer_by=user.answer_by,
            can_receive=reason is None,
            reason=reason,
            via=via if reason is None else None,
        )

    def reason(self, directory: Directory, user: User) -> Reason | None:
        # The order is the product's: what an admin set, then what is live right now.
        if user.status is AccountStatus.SUSPENDED:
            return Reason.SUSPENDED
        if user.status is AccountStatus.PAUSED:
            return Reason.PAUSED
        if user.role not in ROLES_THAT_RECEIVE_CALLS or (
            user.role is Role.REP and self.line is not None and self.line.number not in user.lines
        ):
            return Reason.ROLE_CANNOT_RECEIVE
        if user.answer_by is AnswerBy.WILL_NOT_ANSWER:
            return Reason.WILL_NOT_ANSWER
        week = user.working_week
        if week is not None and not is_open(week, self.local(directory.zone_of(user.timezone))):
            return Reason.OUTSIDE_WORKING_HOURS
        presence = self.presence.presence_of(user.id)
        if presence.availability is not Availability.AVAILABLE:
            return Reason.UNAVAILABLE
        if presence.on_call:
            return Reason.ON_CALL
        if presence.wrap_up_until is not None and self.now < presence.wrap_up_until:
            return Reason.WRAP_UP
        if user.answer_by is AnswerBy.PHONE_NUMBER:
            if user.phone_number is None:
                return Reason.NOT_REACHABLE
        elif _CHANNEL_OF[user.answer_by] not in presence.reachable:
            return Reason.NOT_REACHABLE
        return None


def _target(user: User, via: Channel) -> RingTarget:
    number = user.phone_number if via is Channel.PHONE_NUMBER else None
    return RingTarget(user_id=user.id, via=via, number=number)


def _order(
    strategy: Strategy,
    eligible: list[User],
    all_members: tuple[str, ...],
    key: str,
    rotation: RotationState,
    presence: PresenceView,
    seed: int,
) -> tuple[list[User], int | None]:
    """Eligible members in strategy order, and the new round-robin pointer (if any)."""
    if strategy is Strategy.ALL or (len(eligible) <= 1 and strategy is not Strategy.ROUND_ROBIN):
        return eligible, None
    if strategy is Strategy.ROUND_ROBIN:
        if not eligible:
            return eligible, None
        size = len(all_members)
        start = rotation.get(key, 0) % size
        position = {member: (i - start) % size for i, member in enumerate(all_members)}
        ordered = sorted(eligible, key=lambda u: position[u.id])
        first_index = all_members.index(ordered[0].id)
        return ordered, (first_index + 1) % size
    if strategy is Strategy.LONGEST_IDLE:

        def idle_since(user: User) -> datetime:
            ended = presence.presence_of(user.id).last_call_ended_at
            return _NEVER if ended is None else ended

        return sorted(eligible, key=idle_since), None  # stable: listing order breaks ties
    shuffled = list(eligible)
    random.Random(f"{seed}:{key}").shuffle(shuffled)
    return shuffled, None


def _plan_layers(
    directory: Directory,
    group: RingGroup,
    decider: _Decider,
    rotation: RotationState,
    seed: int,
) -> tuple[tuple[PlannedLayer, ...], dict[str, int]]:
    users = directory.users_by_id
    planned = []
    new_rotation: dict[str, int] = {}
    for index, layer in enumerate(group.layers):
        decisions = []
        eligible = []
        for member_id in layer.members:
            user = users[member_id]
            decision = decider.decide(directory, user)
            decisions.append(decision)
            if decision.can_receive:
                eligible.append(user)
        key = rotation_key(group.id, index)
        ordered, pointer = _order(
            layer.strategy, eligible, layer.members, key, rotation, decider.presence, seed
        )
        if pointer is not None:
            new_rotation[key] = pointer
        sequential = layer.strategy is not Strategy.ALL
        ring_each = (layer.ring_each_seconds or layer.timeout_seconds) if sequential else None
        planned.append(
            PlannedLayer(
                index=index,
                strategy=layer.strategy,
                timeout_seconds=layer.timeout_seconds,
                ring_each_seconds=ring_each,
                members=tuple(decisions),
                ring=tuple(_target(u, _CHANNEL_OF[u.answer_by]) for u in ordered),
            )
        )
    return tuple(planned), new_rotation


def _fallback_step(
    directory: Directory,
    fallback: Fallback,
    decider: _Decider,
    call: CallRequest,
    rotation: RotationState,
    why: str,
    visited: frozenset[str],
) -> FallbackStep:
    nested = None
    if fallback.action is FallbackAction.RING_GROUP and fallback.ring_group is not None:
        target = fallback.ring_group
        if target in visited or len(visited) >= _MAX_FALLBACK_DEPTH:
            return FallbackStep(
                action=FallbackAction.HANGUP,
                why=f"fallback_loop_to_{target}",
                prompt=fallback.prompt,
            )
        group = directory.group(target)
        if group is not None:
            nested = _plan_group(directory, group, decider, call, rotation, visited | {target})
    return FallbackStep(
        action=fallback.action,
        number=fallback.number,
        ring_group=fallback.ring_group,
        prompt=fallback.prompt,
        why=why,
        plan=nested,
    )


def _plan_group(
    directory: Directory,
    group: RingGroup,
    decider: _Decider,
    call: CallRequest,
    rotation: RotationState,
    visited: frozenset[str],
) -> RoutePlan:
    layers, new_rotation = _plan_layers(directory, group, decider, rotation, call.seed)
    anyone = any(layer.ring for layer in layers)
    fallback = _fallback_step(
        directory,
        group.fallback,
        decider,
        call,
        rotation,
        "layers_exhausted" if anyone else "no_member_can_receive",
        visited,
    )
    return _plan(
        call,
        decider,
        directory,
        Outcome.RING if anyone else Outcome.FALLBACK,
        layers=layers,
        fallback=fallback,
        rotation=new_rotation,
        target=("ring_group", group.id, group.name),
    )


def _plan_user(directory: Directory, user: User, decider: _Decider, call: CallRequest) -> RoutePlan:
    """A call straight to one user: one layer with them, then their Backup Routing."""
    decision = decider.decide(directory, user)
    ring = (_target(user, decision.via),) if decision.via is not None else ()
    layer = PlannedLayer(
        index=0,
        strategy=Strategy.ALL,
        timeout_seconds=user.ring_seconds,
        ring_each_seconds=None,
        members=(decision,),
        ring=ring,
    )
    why = "not_answered" if ring else "user_cannot_receive"
    if user.backup_number is not None:
        fallback = FallbackStep(
            action=FallbackAction.FORWARD, number=user.backup_number, why=f"backup_routing_{why}"
        )
    else:
        fallback = FallbackStep(
            action=FallbackAction.VOICEMAIL, prompt=user.voicemail_prompt, why=why
        )
    return _plan(
        call,
        decider,
        directory,
        Outcome.RING if ring else Outcome.FALLBACK,
        layers=(layer,),
        fallback=fallback,
        target=("user", user.id, user.name),
    )


def _plan(
    call: CallRequest,
    decider: _Decider,
    directory: Directory,
    outcome: Outcome,
    *,
    layers: tuple[PlannedLayer, ...] = (),
    fallback: FallbackStep | None = None,
    rotation: dict[str, int] | None = None,
    target: tuple[str, str, str] | None = None,
    open_: bool = True,
) -> RoutePlan:
    line = decider.line
    return RoutePlan(
        call_id=call.call_id,
        at=decider.now,
        directory_version=directory.version,
        outcome=outcome,
        line=line.number if line else None,
        line_name=line.name if line else None,
        open=open_,
        target_kind=target[0] if target else None,
        target_id=target[1] if target else None,
        target_name=target[2] if target else None,
        layers=layers,
        fallback=fallback,
        rotation=rotation or {},
    )


def _line_target(directory: Directory, line: Line) -> tuple[str, str, str]:
    if line.route_to.user is not None:
        return ("user", line.route_to.user, directory.users_by_id[line.route_to.user].name)
    group_id = line.route_to.ring_group or ""
    return ("ring_group", group_id, directory.groups_by_id[group_id].name)


def plan_route(
    directory: Directory,
    presence: PresenceView,
    call: CallRequest,
    now: datetime,
    rotation: RotationState | None = None,
) -> RoutePlan:
    """Who rings for `call` at `now`, layer by layer, and why each member can or cannot.

    `now` must be time-zone aware. `rotation` holds the round-robin pointers (kept by the
    caller); the plan's `rotation` field holds the pointers to store if the plan is used."""
    if now.tzinfo is None:
        raise ValueError("now must be time-zone aware")
    rotation = rotation or {}
    if call.user is not None:
        user = directory.user(call.user)
        decider = _Decider(presence, now, None)
        if user is None:
            return _plan(call, decider, directory, Outcome.NO_ROUTE)
        return _plan_user(directory, user, decider, call)
    line = directory.line(call.line) if call.line is not None else None
    decider = _Decider(presence, now, line)
    if line is None:
        return _plan(call, decider, directory, Outcome.NO_ROUTE)
    week = line.business_week
    if week is not None and not is_open(week, decider.local(directory.zone_of(line.timezone))):
        closed = _fallback_step(
            directory, line.closed_action, decider, call, rotation, "closed", frozenset()
        )
        return _plan(
            call,
            decider,
            directory,
            Outcome.CLOSED,
            fallback=closed,
            open_=False,
            target=_line_target(directory, line),
        )
    if line.route_to.user is not None:
        return _plan_user(directory, directory.users_by_id[line.route_to.user], decider, call)
    group = directory.groups_by_id[line.route_to.ring_group or ""]
    return _plan_group(directory, group, decider, call, rotation, frozenset({group.id}))
