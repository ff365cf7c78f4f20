"""Property tests: random directories, presence and moments against the routing rules."""

from __future__ import annotations

import copy
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.directory.loader import build_directory
from bridge.directory.model import (
    AccountStatus,
    AnswerBy,
    Directory,
    Line,
    Role,
    Strategy,
    User,
)
from bridge.directory.schedule import DAYS
from bridge.directory.store import DirectoryStore
from bridge.observability.metrics import Metrics
from bridge.presence.model import (
    ALL_CHANNELS,
    Availability,
    Channel,
    FixedPresence,
    UserPresence,
)
from bridge.routing.engine import plan_route
from bridge.routing.model import CallRequest, Outcome, Reason, RoutePlan, rotation_key
from bridge.routing.service import RoutingService

from .helpers import all_plans

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ZONES = [None, "UTC", "America/New_York", "Europe/London", "Asia/Tokyo", "America/St_Johns"]
NOW_ZONES = [UTC, ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata")]
CHANNEL_OF = {
    AnswerBy.APPS: Channel.APPS,
    AnswerBy.IP_PHONE: Channel.IP_PHONE,
    AnswerBy.PHONE_NUMBER: Channel.PHONE_NUMBER,
}
WEEK = 7 * 1440


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


minute_ranges = st.tuples(st.integers(0, 1439), st.integers(0, 1440)).filter(lambda r: r[0] != r[1])
range_texts = minute_ranges.map(lambda r: f"{_clock(r[0])}-{_clock(r[1])}")
weeks = st.dictionaries(st.sampled_from(DAYS), st.lists(range_texts, max_size=2), max_size=7)
moments = st.datetimes(
    min_value=datetime(2025, 1, 1),
    max_value=datetime(2028, 12, 31),
    timezones=st.sampled_from(NOW_ZONES),
)


def _mostly(draw: st.DrawFn, common: Any, others: list[Any], weight: int = 8) -> Any:
    """`common` about `weight` times in ten, else one of `others` (which may include it)."""
    return common if draw(st.integers(0, 9)) < weight else draw(st.sampled_from(others))


def _number(prefix: str, index: int) -> str:
    return f"+1555{prefix}{index:04d}"


@st.composite
def fallbacks(draw: st.DrawFn, groups: list[str], own: str | None) -> dict[str, Any]:
    targets = [g for g in groups if g != own]
    actions = ["voicemail", "forward", "hangup"] + (["ring_group"] * 3 if targets else [])
    action = draw(st.sampled_from(actions))
    result: dict[str, Any] = {"action": action}
    if action == "forward":
        result["number"] = _number("09", draw(st.integers(0, 99)))
    elif action == "ring_group":
        result["ring_group"] = draw(st.sampled_from(targets))
    if draw(st.booleans()):
        result["prompt"] = "prompt"
    return result


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    n_users = draw(st.integers(1, 10))
    n_groups = draw(st.integers(1, 4))
    n_lines = draw(st.integers(1, 3))
    user_ids = [f"u{i}" for i in range(n_users)]
    group_ids = [f"g{i}" for i in range(n_groups)]
    line_numbers = [_number("01", i) for i in range(n_lines)]
    users = []
    for uid in user_ids:
        user: dict[str, Any] = {
            "id": uid,
            "name": uid.upper(),
            "status": _mostly(draw, AccountStatus.ACTIVE, list(AccountStatus)).value,
            "role": _mostly(draw, Role.AGENT, list(Role)).value,
            "answer_by": _mostly(draw, AnswerBy.APPS, list(AnswerBy)).value,
            "wrap_up_seconds": draw(st.integers(0, 60)),
            "lines": draw(st.lists(st.sampled_from(line_numbers), unique=True)),
        }
        if _mostly(draw, True, [False]):
            user["phone_number"] = _number("10", int(uid[1:]))
        zone = draw(st.sampled_from(ZONES))
        if zone is not None:
            user["timezone"] = zone
        if _mostly(draw, False, [True], weight=7):
            user["working_hours"] = draw(weeks)
        if draw(st.booleans()):
            user["backup_number"] = _number("09", 1)
        users.append(user)
    groups = []
    for gid in group_ids:
        layers = []
        for _ in range(draw(st.integers(1, 3))):
            layer: dict[str, Any] = {
                "strategy": draw(st.sampled_from(["all", "round_robin", "longest_idle", "random"])),
                "timeout_seconds": draw(st.integers(1, 60)),
                "members": draw(st.lists(st.sampled_from(user_ids), unique=True)),
            }
            if draw(st.booleans()):
                layer["ring_each_seconds"] = draw(st.integers(1, 30))
            layers.append(layer)
        groups.append(
            {
                "id": gid,
                "name": gid.upper(),
                "layers": layers,
                "fallback": draw(fallbacks(group_ids, gid)),
            }
        )
    lines = []
    for number in line_numbers:
        if draw(st.integers(0, 3)) == 0:
            route_to = {"user": draw(st.sampled_from(user_ids))}
        else:
            route_to = {"ring_group": draw(st.sampled_from(group_ids))}
        line: dict[str, Any] = {"number": number, "name": f"L{number}", "route_to": route_to}
        if draw(st.booleans()):
            line["business_hours"] = draw(weeks)
            line["closed_action"] = draw(fallbacks(group_ids, None))
        zone = draw(st.sampled_from(ZONES))
        if zone is not None:
            line["timezone"] = zone
        lines.append(line)
    timezone = draw(st.sampled_from([z for z in ZONES if z is not None]))
    return {"timezone": timezone, "users": users, "ring_groups": groups, "lines": lines}


@st.composite
def presences(draw: st.DrawFn, user_ids: list[str], now: datetime) -> FixedPresence:
    by_user = {}
    for uid in user_ids:
        wrap = _mostly(draw, None, [draw(st.integers(-120, 120))], weight=6)
        ended = draw(st.none() | st.integers(0, 100_000))
        reachable = _mostly(draw, ALL_CHANNELS, [None], weight=6)
        if reachable is None:
            reachable = frozenset(draw(st.sets(st.sampled_from(list(Channel)))))
        by_user[uid] = UserPresence(
            availability=_mostly(draw, Availability.AVAILABLE, list(Availability)),
            on_call=_mostly(draw, False, [True]),
            wrap_up_until=None if wrap is None else now + timedelta(seconds=wrap),
            last_call_ended_at=None if ended is None else now - timedelta(seconds=ended),
            reachable=reachable,
        )
    return FixedPresence(by_user=by_user)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Directory, FixedPresence, CallRequest, datetime, dict]:
    directory = build_directory(draw(documents()), version=draw(st.integers(0, 9)))
    now = draw(moments)
    presence = draw(presences([u.id for u in directory.users], now))
    seed = draw(st.integers(0, 2**32))
    numbers = [line.number for line in directory.lines]
    pick = draw(st.integers(0, 19))
    if pick == 1:
        call = CallRequest(call_id="p", line="+15559999999", seed=seed)
    elif pick in (2, 3):
        call = CallRequest(call_id="p", user=draw(st.sampled_from([*directory.users_by_id, "x"])))
    else:
        call = CallRequest(call_id="p", line=draw(st.sampled_from(numbers)), seed=seed)
    keys = [rotation_key(g.id, i) for g in directory.ring_groups for i in range(len(g.layers))]
    rotation = draw(st.dictionaries(st.sampled_from(keys), st.integers(0, 20)))
    return directory, presence, call, now, rotation


# -- an independent statement of the rules, straight from docs/DESIGN.md ------------------


def _open(hours: dict[str, list[str]], local: datetime) -> bool:
    """Minute-of-week intervals; a range whose end is not after its start ends the next day."""
    at = local.weekday() * 1440 + local.hour * 60 + local.minute
    for day, ranges in hours.items():
        base = DAYS.index(day) * 1440
        for text in ranges:
            start_text, end_text = text.split("-")
            start = int(start_text[:2]) * 60 + int(start_text[3:])
            end = int(end_text[:2]) * 60 + int(end_text[3:])
            if end <= start:
                end += 1440
            if (at - (base + start)) % WEEK < end - start:
                return True
    return False


def expected_reason(
    directory: Directory, user: User, state: UserPresence, now: datetime, line: Line | None
) -> Reason | None:
    if user.status is AccountStatus.SUSPENDED:
        return Reason.SUSPENDED
    if user.status is AccountStatus.PAUSED:
        return Reason.PAUSED
    if user.role in (Role.BILLING_ADMIN, Role.REPORTER, Role.END_CLIENT):
        return Reason.ROLE_CANNOT_RECEIVE
    if user.role is Role.REP and line is not None and line.number not in user.lines:
        return Reason.ROLE_CANNOT_RECEIVE
    if user.answer_by is AnswerBy.WILL_NOT_ANSWER:
        return Reason.WILL_NOT_ANSWER
    zone = ZoneInfo(user.timezone or directory.timezone)
    if user.working_hours is not None and not _open(user.working_hours, now.astimezone(zone)):
        return Reason.OUTSIDE_WORKING_HOURS
    if state.availability is not Availability.AVAILABLE:
        return Reason.UNAVAILABLE
    if state.on_call:
        return Reason.ON_CALL
    if state.wrap_up_until is not None and now < state.wrap_up_until:
        return Reason.WRAP_UP
    if user.answer_by is AnswerBy.PHONE_NUMBER:
        return None if user.phone_number else Reason.NOT_REACHABLE
    return None if CHANNEL_OF[user.answer_by] in state.reachable else Reason.NOT_REACHABLE


def _configured(directory: Directory, plan: RoutePlan) -> list[tuple[str, ...]]:
    if plan.target_kind == "user":
        return [(plan.target_id or "",)]
    group = directory.groups_by_id[plan.target_id or ""]
    return [layer.members for layer in group.layers]


@SETTINGS
@given(scenarios())
def test_nobody_who_cannot_receive_is_rung(scenario: tuple) -> None:
    directory, presence, call, now, rotation = scenario
    plan = plan_route(directory, presence, call, now, rotation)
    line = directory.line(call.line) if call.user is None and call.line else None
    for sub in all_plans(plan):
        for layer in sub.layers:
            decisions = {m.user_id: m for m in layer.members}
            for decision in layer.members:
                user = directory.users_by_id[decision.user_id]
                state = presence.presence_of(user.id)
                assert decision.reason == expected_reason(directory, user, state, now, line)
                assert decision.can_receive is (decision.reason is None)
                assert (decision.via is None) is (decision.reason is not None)
            for target in layer.ring:
                assert decisions[target.user_id].can_receive is True
                assert target.via is decisions[target.user_id].via
                user = directory.users_by_id[target.user_id]
                assert target.via is CHANNEL_OF[user.answer_by]
                expected_number = user.phone_number if target.via is Channel.PHONE_NUMBER else None
                assert target.number == expected_number
            # ...and everyone who can receive is rung, once.
            assert sorted(t.user_id for t in layer.ring) == sorted(
                m.user_id for m in layer.members if m.can_receive
            )
        if sub.outcome is Outcome.RING:
            assert any(layer.ring for layer in sub.layers)
        if sub.outcome is Outcome.FALLBACK:
            assert not any(layer.ring for layer in sub.layers)


@SETTINGS
@given(scenarios())
def test_every_member_listed_once_in_configured_order(scenario: tuple) -> None:
    directory, presence, call, now, rotation = scenario
    plan = plan_route(directory, presence, call, now, rotation)
    for sub in all_plans(plan):
        if sub.outcome in (Outcome.NO_ROUTE, Outcome.CLOSED):
            assert sub.layers == ()
            continue
        listed = [tuple(m.user_id for m in layer.members) for layer in sub.layers]
        assert listed == _configured(directory, sub)
        assert [layer.index for layer in sub.layers] == list(range(len(sub.layers)))


_NEVER = datetime.min.replace(tzinfo=UTC)


@SETTINGS
@given(scenarios())
def test_ring_order_follows_the_strategy(scenario: tuple) -> None:
    directory, presence, call, now, rotation = scenario
    plan = plan_route(directory, presence, call, now, rotation)
    for sub in all_plans(plan):
        assert sub.rotation.items() <= plan.rotation.items()  # nested pointers are kept too
        for layer in sub.layers:
            eligible = [m.user_id for m in layer.members if m.can_receive]
            ring = [t.user_id for t in layer.ring]
            configured = [m.user_id for m in layer.members]
            key = rotation_key(sub.target_id or "", layer.index)
            if layer.strategy is Strategy.ALL:
                assert ring == eligible
                assert layer.ring_each_seconds is None
            else:
                conf = directory.groups_by_id[sub.target_id or ""].layers[layer.index]
                assert layer.ring_each_seconds == (conf.ring_each_seconds or conf.timeout_seconds)
            if layer.strategy is Strategy.ROUND_ROBIN:
                start = rotation.get(key, 0) % len(configured) if configured else 0
                expected = sorted(
                    eligible, key=lambda u: (configured.index(u) - start) % len(configured)
                )
                assert ring == expected
                if ring:
                    assert sub.rotation[key] == (configured.index(ring[0]) + 1) % len(configured)
                else:
                    assert key not in sub.rotation
            else:
                assert key not in sub.rotation
            if layer.strategy is Strategy.LONGEST_IDLE:

                def ended(uid: str) -> datetime:
                    return presence.presence_of(uid).last_call_ended_at or _NEVER

                assert ring == sorted(eligible, key=ended)
            if layer.strategy is Strategy.RANDOM:
                assert sorted(ring) == sorted(eligible)


@SETTINGS
@given(scenarios())
def test_same_inputs_same_plan_and_inputs_untouched(scenario: tuple) -> None:
    directory, presence, call, now, rotation = scenario
    dumped = directory.model_dump()
    by_user = dict(presence.by_user)
    rotation_before = copy.deepcopy(rotation)
    first = plan_route(directory, presence, call, now, rotation)
    second = plan_route(directory, presence, call, now, rotation)
    assert first.to_dict() == second.to_dict()
    assert first.rotation == second.rotation
    # A fresh but equal snapshot (as after a reload) plans the same.
    twin = build_directory(directory.to_document(), version=directory.version)
    third = plan_route(twin, FixedPresence(by_user=dict(by_user)), call, now, dict(rotation))
    assert third.to_dict() == first.to_dict()
    assert third.rotation == first.rotation
    assert directory.model_dump() == dumped
    assert presence.by_user == by_user
    assert rotation == rotation_before


def _rr_service(n: int, unavailable: set[int]) -> tuple[RoutingService, list[str]]:
    ids = [f"m{i}" for i in range(n)]
    document = {
        "users": [{"id": uid, "name": uid} for uid in ids],
        "ring_groups": [
            {"id": "rr", "name": "RR", "layers": [{"strategy": "round_robin", "members": ids}]}
        ],
        "lines": [{"number": "+15550100", "name": "L", "route_to": {"ring_group": "rr"}}],
    }
    busy = UserPresence(availability=Availability.BUSY, reachable=ALL_CHANNELS)
    presence = FixedPresence(by_user={ids[i]: busy for i in unavailable})
    at = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    service = RoutingService(
        DirectoryStore(build_directory(document)), presence, Metrics(), lambda: at
    )
    return service, ids


def _firsts(service: RoutingService, calls: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for i in range(calls):
        plan = service.route(CallRequest(call_id=f"c{i}", line="+15550100"))
        counts[plan.layers[0].ring[0].user_id] += 1
    return counts


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(1, 5))
def test_round_robin_is_fair_when_everyone_can_receive(n: int, k: int) -> None:
    service, ids = _rr_service(n, set())
    assert _firsts(service, n * k) == dict.fromkeys(ids, k)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_round_robin_is_fair_around_members_who_cannot(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 8))
    unavailable = data.draw(st.sets(st.integers(0, n - 1), max_size=n - 1))
    calls = data.draw(st.integers(1, 40))
    service, ids = _rr_service(n, unavailable)
    counts = _firsts(service, calls)
    eligible = [uid for i, uid in enumerate(ids) if i not in unavailable]
    assert set(counts) <= set(eligible)
    assert sum(counts.values()) == calls
    firsts = [counts[uid] for uid in eligible]
    assert max(firsts) - min(firsts) <= 1
