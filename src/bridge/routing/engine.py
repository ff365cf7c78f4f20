"""The routing core: a pure function from (directory, presence, call, now) to a RoutePlan.

No clock, no I/O, no mutation of its inputs: the same inputs give the same plan. Real calls
and Test Routing both call `plan_route`; the explanation *is* the plan.

Speed (docs/PERFORMANCE.md): what a directory snapshot fixes about each member (account
state, role, answer type, schedule, ring target, even the `MemberDecision` values) is worked
out once per snapshot and kept in a memo stored on the snapshot (`Directory.derived`). A decision
then only reads presence and checks each distinct schedule once. The memo never changes a
result: snapshots are immutable, and every value kept is immutable too.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from datetime import UTC, datetime
from typing import cast
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
from bridge.directory.schedule import WeekRanges, is_open
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

# A member's verdict as a small int inside the hot loop: 0 = can receive, else the reason's
# position in `Reason` plus one (so the codes keep the documented order).
_REASONS: tuple[Reason | None, ...] = (None, *Reason)
_CODE = {reason: code for code, reason in enumerate(_REASONS) if reason is not None}
_OK = 0
_SUSPENDED = _CODE[Reason.SUSPENDED]
_PAUSED = _CODE[Reason.PAUSED]
_ROLE = _CODE[Reason.ROLE_CANNOT_RECEIVE]
_WILL_NOT_ANSWER = _CODE[Reason.WILL_NOT_ANSWER]
_OUTSIDE_HOURS = _CODE[Reason.OUTSIDE_WORKING_HOURS]
_UNAVAILABLE = _CODE[Reason.UNAVAILABLE]
_ON_CALL = _CODE[Reason.ON_CALL]
_WRAP_UP = _CODE[Reason.WRAP_UP]
_NOT_REACHABLE = _CODE[Reason.NOT_REACHABLE]
_REP = -1  # depends on the line: a rep is rung only on the lines listed on them
_NO_NUMBER = object()  # never in `reachable`: a phone_number user without a number


class _Member:
    """What one snapshot fixes about one user, worked out once per snapshot."""

    __slots__ = (
        "channel",
        "decisions",
        "fixed",
        "id",
        "needs",
        "rep_lines",
        "rep_rest",
        "schedule",
        "target",
        "user",
    )

    def __init__(self, user: User, schedule: int) -> None:
        self.id = user.id
        self.user = user
        # The admin-set reasons, in the product's order (1 to 4 in docs/DESIGN.md).
        wna = user.answer_by is AnswerBy.WILL_NOT_ANSWER
        self.rep_lines: frozenset[str] = frozenset()
        self.rep_rest = _WILL_NOT_ANSWER if wna else _OK
        if user.status is AccountStatus.SUSPENDED:
            self.fixed = _SUSPENDED
        elif user.status is AccountStatus.PAUSED:
            self.fixed = _PAUSED
        elif user.role not in ROLES_THAT_RECEIVE_CALLS:
            self.fixed = _ROLE
        elif user.role is Role.REP:
            self.fixed = _REP
            self.rep_lines = frozenset(user.lines)
        else:
            self.fixed = self.rep_rest
        self.schedule = schedule  # index into _Snapshot.schedules, -1: no working hours
        channel = _CHANNEL_OF.get(user.answer_by)
        self.channel = channel
        # The presence channel that must be up (None: a number is always reachable).
        needs: object = None if channel is Channel.PHONE_NUMBER else channel
        if channel is Channel.PHONE_NUMBER and user.phone_number is None:
            needs = _NO_NUMBER
        self.needs = needs
        # Only read for members who can receive, and those always have a channel.
        self.target = cast(RingTarget, _target(user, channel) if channel else None)
        self.decisions: list[MemberDecision | None] = [None] * len(_REASONS)

    def decision(self, code: int) -> MemberDecision:
        decision = self.decisions[code]
        if decision is None:
            user = self.user
            decision = self.decisions[code] = MemberDecision(
                user_id=user.id,
                name=user.name,
                answer_by=user.answer_by,
                can_receive=code == _OK,
                reason=_REASONS[code],
                via=self.channel if code == _OK else None,
            )
        return decision


class _LayerFacts:
    """One configured layer with its members' facts and its round-robin key."""

    __slots__ = ("config", "key", "members", "ring_each", "size")

    def __init__(self, snapshot: _Snapshot, group: RingGroup, index: int) -> None:
        layer = group.layers[index]
        self.config = layer
        self.key = rotation_key(group.id, index)
        self.members = tuple(snapshot.member(member_id) for member_id in layer.members)
        self.size = len(layer.members)
        sequential = layer.strategy is not Strategy.ALL
        self.ring_each = (layer.ring_each_seconds or layer.timeout_seconds) if sequential else None


class _Snapshot:
    """Per-snapshot memo: members, layers and the distinct (schedule, time zone) pairs."""

    __slots__ = ("_groups", "_members", "_schedule_ids", "directory", "schedules")

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self.schedules: list[tuple[WeekRanges, ZoneInfo]] = []
        self._schedule_ids: dict[tuple[WeekRanges, ZoneInfo], int] = {}
        self._members: dict[str, _Member] = {}
        self._groups: dict[str, tuple[_LayerFacts, ...]] = {}

    def member(self, user_id: str) -> _Member:
        found = self._members.get(user_id)
        if found is None:
            user = self.directory.users_by_id[user_id]
            week = user.working_week
            schedule = -1
            if week is not None:
                pair = (week, self.directory.zone_of(user.timezone))
                schedule = self._schedule_ids.get(pair, -1)
                if schedule < 0:
                    schedule = self._schedule_ids[pair] = len(self.schedules)
                    self.schedules.append(pair)
            found = self._members[user_id] = _Member(user, schedule)
        return found

    def layers(self, group: RingGroup) -> tuple[_LayerFacts, ...]:
        found = self._groups.get(group.id)
        if found is None:
            found = self._groups[group.id] = tuple(
                _LayerFacts(self, group, index) for index in range(len(group.layers))
            )
        return found


def _snapshot(directory: Directory) -> _Snapshot:
    """The memo for this snapshot, kept on the snapshot itself: it lives exactly as long."""
    memo = directory.derived.get("routing")
    if memo is None:
        memo = directory.derived.setdefault("routing", _Snapshot(directory))
    return memo


class _Decider:
    """Per-decision memo (local times per zone, open or not per schedule); discarded when
    the decision returns."""

    __slots__ = ("_local", "_open", "line", "line_number", "now", "presence", "snapshot")

    def __init__(
        self, snapshot: _Snapshot, presence: PresenceView, now: datetime, line: Line | None
    ) -> None:
        self.snapshot = snapshot
        self.presence = presence
        self.now = now
        self.line = line
        self.line_number = None if line is None else line.number
        self._local: dict[ZoneInfo, datetime] = {}
        self._open: dict[int, bool] = {}

    def local(self, zone: ZoneInfo) -> datetime:
        value = self._local.get(zone)
        if value is None:
            value = self._local[zone] = self.now.astimezone(zone)
        return value

    def _is_open(self, schedule: int) -> bool:
        week, zone = self.snapshot.schedules[schedule]
        value = self._open[schedule] = is_open(week, self.local(zone))
        return value

    def evaluate(
        self, members: tuple[_Member, ...]
    ) -> tuple[tuple[MemberDecision, ...], list[int]]:
        """Each member's decision, and the positions of those who can receive.

        The order is the product's: what an admin set, then what is live right now."""
        presence_of = self.presence.presence_of
        now = self.now
        line_number = self.line_number
        opens = self._open
        available = Availability.AVAILABLE
        decisions = []
        eligible = []
        for position, member in enumerate(members):
            code = member.fixed
            if code == _REP:
                if line_number is not None and line_number not in member.rep_lines:
                    code = _ROLE
                else:
                    code = member.rep_rest
            if code == _OK:
                schedule = member.schedule
                if schedule >= 0:
                    open_now = opens.get(schedule)
                    if open_now is None:
                        open_now = self._is_open(schedule)
                    if not open_now:
                        code = _OUTSIDE_HOURS
                if code == _OK:
                    state = presence_of(member.id)
                    wrap_up_until = state.wrap_up_until
                    needs = member.needs
                    if state.availability is not available:
                        code = _UNAVAILABLE
                    elif state.on_call:
                        code = _ON_CALL
                    elif wrap_up_until is not None and now < wrap_up_until:
                        code = _WRAP_UP
                    elif needs is not None and needs not in state.reachable:
                        code = _NOT_REACHABLE
            decision = member.decisions[code]
            if decision is None:
                decision = member.decision(code)
            decisions.append(decision)
            if code == _OK:
                eligible.append(position)
        return tuple(decisions), eligible


def _target(user: User, via: Channel) -> RingTarget:
    number = user.phone_number if via is Channel.PHONE_NUMBER else None
    return RingTarget(user_id=user.id, via=via, number=number)


def _order(
    layer: _LayerFacts,
    eligible: list[int],
    rotation: RotationState,
    presence: PresenceView,
    seed: int,
) -> tuple[list[int], int | None]:
    """Eligible positions in strategy order, and the new round-robin pointer (if any)."""
    strategy = layer.config.strategy
    if strategy is Strategy.ALL or (len(eligible) <= 1 and strategy is not Strategy.ROUND_ROBIN):
        return eligible, None
    if strategy is Strategy.ROUND_ROBIN:
        if not eligible:
            return eligible, None
        # From the pointer on, wrapping round: `eligible` is in configured order already.
        split = bisect_left(eligible, rotation.get(layer.key, 0) % layer.size)
        ordered = eligible[split:] + eligible[:split]
        return ordered, (ordered[0] + 1) % layer.size
    if strategy is Strategy.LONGEST_IDLE:
        members = layer.members
        presence_of = presence.presence_of

        def idle_since(position: int) -> datetime:
            ended = presence_of(members[position].id).last_call_ended_at
            return _NEVER if ended is None else ended

        return sorted(eligible, key=idle_since), None  # stable: listing order breaks ties
    shuffled = list(eligible)
    random.Random(f"{seed}:{layer.key}").shuffle(shuffled)
    return shuffled, None


def _plan_layers(
    group: RingGroup,
    decider: _Decider,
    rotation: RotationState,
    seed: int,
) -> tuple[tuple[PlannedLayer, ...], dict[str, int]]:
    planned = []
    new_rotation: dict[str, int] = {}
    for index, layer in enumerate(decider.snapshot.layers(group)):
        decisions, eligible = decider.evaluate(layer.members)
        ordered, pointer = _order(layer, eligible, rotation, decider.presence, seed)
        if pointer is not None:
            new_rotation[layer.key] = pointer
        members = layer.members
        planned.append(
            PlannedLayer(
                index=index,
                strategy=layer.config.strategy,
                timeout_seconds=layer.config.timeout_seconds,
                ring_each_seconds=layer.ring_each,
                members=decisions,
                ring=tuple([members[position].target for position in ordered]),
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
    layers, new_rotation = _plan_layers(group, decider, rotation, call.seed)
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
    if fallback.plan is not None:
        # A real call may reach the fallback group: keep its pointers with this group's.
        new_rotation = {**fallback.plan.rotation, **new_rotation}
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
    member = decider.snapshot.member(user.id)
    (decision,), eligible = decider.evaluate((member,))
    ring = (member.target,) if eligible else ()
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
        decider = _Decider(_snapshot(directory), presence, now, None)
        if user is None:
            return _plan(call, decider, directory, Outcome.NO_ROUTE)
        return _plan_user(directory, user, decider, call)
    line = directory.line(call.line) if call.line is not None else None
    decider = _Decider(_snapshot(directory), presence, now, line)
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
            rotation=closed.plan.rotation if closed.plan is not None else None,
            open_=False,
            target=_line_target(directory, line),
        )
    if line.route_to.user is not None:
        return _plan_user(directory, directory.users_by_id[line.route_to.user], decider, call)
    group = directory.groups_by_id[line.route_to.ring_group or ""]
    return _plan_group(directory, group, decider, call, rotation, frozenset({group.id}))
