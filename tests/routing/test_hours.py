"""Working hours (users) and business hours (lines), in the right time zone, across DST."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from bridge.directory.model import Directory, FallbackAction
from bridge.routing.model import Outcome, Reason

from .helpers import (
    LINE,
    NOW,
    WEEKDAYS,
    directory,
    group,
    layer,
    member,
    route,
    single_group,
    user,
)

NEW_YORK = ZoneInfo("America/New_York")


def _receives(hours: dict[str, list[str]], at: datetime, **fields: str) -> bool:
    d = single_group([user("x", working_hours=hours, **fields)], timezone="UTC")
    decision = member(route(d, now=at), "x")
    assert decision.reason in (None, Reason.OUTSIDE_WORKING_HOURS)
    return decision.can_receive


def test_hours_are_read_in_the_users_own_time_zone() -> None:
    hours = {"mon": ["09:00-12:00"]}
    # NOW is Monday 15:00 UTC: 10:00 New York, 16:00 Paris, 00:00 Tuesday Tokyo.
    assert _receives(hours, NOW, timezone="America/New_York") is True
    assert _receives(hours, NOW, timezone="Europe/Paris") is False
    assert _receives({"tue": ["00:00-01:00"]}, NOW, timezone="Asia/Tokyo") is True
    assert _receives({"mon": ["00:00-01:00"]}, NOW, timezone="Asia/Tokyo") is False


def test_users_without_a_zone_use_the_directory_default() -> None:
    users = [
        user("plain", working_hours={"mon": ["09:00-12:00"]}),
        user("utc", working_hours={"mon": ["09:00-12:00"]}, timezone="UTC"),
    ]
    new_york = single_group(users, timezone="America/New_York")
    plan = route(new_york)
    assert member(plan, "plain").can_receive is True  # 10:00 in New York
    assert member(plan, "utc").reason is Reason.OUTSIDE_WORKING_HOURS  # 15:00 UTC
    utc = route(single_group(users, timezone="UTC"))
    assert member(utc, "plain").reason is Reason.OUTSIDE_WORKING_HOURS


def _ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NEW_YORK)


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


NY = {"timezone": "America/New_York"}


@pytest.mark.parametrize(
    ("hours", "at", "expected"),
    [
        # 2026-03-08 (Sunday): clocks jump from 02:00 EST to 03:00 EDT.
        ({"sat": ["08:00-09:00"]}, _utc(2026, 3, 7, 13, 30), True),  # 08:30 EST
        ({"sun": ["08:00-09:00"]}, _utc(2026, 3, 8, 12, 30), True),  # 08:30 EDT
        ({"sun": ["08:00-09:00"]}, _utc(2026, 3, 8, 13, 30), False),  # 09:30 EDT
        ({"sun": ["01:00-02:00"]}, _utc(2026, 3, 8, 6, 59), True),  # 01:59 EST
        ({"sun": ["02:00-03:00"]}, _utc(2026, 3, 8, 6, 59), False),  # 01:59 EST
        ({"sun": ["02:00-03:00"]}, _utc(2026, 3, 8, 7, 0), False),  # 03:00 EDT: hour skipped
        ({"sun": ["03:00-04:00"]}, _utc(2026, 3, 8, 7, 0), True),  # 03:00 EDT
        # 2026-11-01 (Sunday): clocks fall back from 02:00 EDT to 01:00 EST.
        ({"sun": ["01:00-02:00"]}, _utc(2026, 11, 1, 4, 59), False),  # 00:59 EDT
        ({"sun": ["01:00-02:00"]}, _utc(2026, 11, 1, 5, 30), True),  # 01:30 EDT
        ({"sun": ["01:00-02:00"]}, _utc(2026, 11, 1, 6, 30), True),  # 01:30 EST, again
        ({"sun": ["01:00-02:00"]}, _utc(2026, 11, 1, 7, 0), False),  # 02:00 EST
        ({"sun": ["08:00-09:00"]}, _utc(2026, 11, 1, 12, 30), False),  # 07:30 EST
        ({"sun": ["08:00-09:00"]}, _utc(2026, 11, 1, 13, 30), True),  # 08:30 EST
        ({"sat": ["08:00-09:00"]}, _utc(2026, 10, 31, 12, 30), True),  # 08:30 EDT
    ],
)
def test_dst_change_days_in_new_york(
    hours: dict[str, list[str]], at: datetime, expected: bool
) -> None:
    assert _receives(hours, at, **NY) is expected


SUNDAY_NIGHT = {"sun": ["22:00-06:00"]}


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (_ny(2026, 11, 21, 23, 0), False),  # Saturday night: no range on Saturday
        (_ny(2026, 11, 22, 3, 0), False),  # Sunday early: Saturday had no overnight range
        (_ny(2026, 11, 22, 21, 59), False),
        (_ny(2026, 11, 22, 22, 0), True),  # Sunday evening part
        (_ny(2026, 11, 22, 23, 59), True),
        (_ny(2026, 11, 23, 0, 0), True),  # past midnight, Sunday -> Monday wrap
        (_ny(2026, 11, 23, 5, 59), True),
        (_ny(2026, 11, 23, 6, 0), False),  # the end is exclusive
        (_ny(2026, 11, 23, 22, 30), False),  # Monday evening: no range on Monday
    ],
)
def test_overnight_range_both_sides_of_midnight(at: datetime, expected: bool) -> None:
    assert _receives(SUNDAY_NIGHT, at, **NY) is expected


def test_overnight_ranges_on_every_day() -> None:
    every_night = {day: ["22:00-06:00"] for day in (*WEEKDAYS, "sat", "sun")}
    assert _receives(every_night, _ny(2026, 11, 23, 2, 0), **NY) is True  # Monday morning
    assert _receives(every_night, _ny(2026, 11, 23, 12, 0), **NY) is False
    assert _receives(every_night, _ny(2026, 11, 29, 23, 0), **NY) is True  # Sunday night


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (_ny(2026, 11, 27, 19, 59), False),
        (_ny(2026, 11, 27, 20, 0), True),  # Friday
        (_ny(2026, 11, 27, 23, 59, 59), True),
        (_ny(2026, 11, 28, 0, 0), False),  # "24:00" ends at midnight, Saturday is closed
    ],
)
def test_24_00_ends_at_midnight(at: datetime, expected: bool) -> None:
    assert _receives({"fri": ["20:00-24:00"]}, at, **NY) is expected


def test_split_ranges_and_the_gap_between() -> None:
    split = {"mon": ["08:00-12:00", "13:00-17:00"]}
    assert _receives(split, _ny(2026, 11, 23, 11, 59), **NY) is True
    assert _receives(split, _ny(2026, 11, 23, 12, 30), **NY) is False
    assert _receives(split, _ny(2026, 11, 23, 13, 0), **NY) is True


def _line_directory(**line_fields: object) -> Directory:
    users = [user("a"), user("b")]
    return single_group(users, timezone="UTC", line_fields=line_fields)


OFFICE = {day: ["09:00-17:00"] for day in WEEKDAYS}


@pytest.mark.parametrize(
    ("closed_action", "attribute", "value"),
    [
        ({"action": "voicemail", "prompt": "We are closed."}, "prompt", "We are closed."),
        ({"action": "forward", "number": "+15550009999"}, "number", "+15550009999"),
        ({"action": "hangup"}, "action", FallbackAction.HANGUP),
    ],
)
def test_line_closed_gives_its_closed_action(
    closed_action: dict[str, str], attribute: str, value: object
) -> None:
    d = _line_directory(business_hours=OFFICE, closed_action=closed_action)
    saturday = _utc(2026, 11, 28, 12, 0)
    plan = route(d, now=saturday)
    assert plan.outcome is Outcome.CLOSED
    assert plan.open is False
    assert plan.layers == ()
    assert plan.ringable() is False
    assert (plan.target_kind, plan.target_id) == ("ring_group", "g")
    assert plan.fallback is not None
    assert plan.fallback.action is FallbackAction(closed_action["action"])
    assert plan.fallback.why == "closed"
    assert getattr(plan.fallback, attribute) == value
    assert plan.to_dict()["open"] is False
    weekday = route(d, now=_utc(2026, 11, 27, 12, 0))
    assert weekday.outcome is Outcome.RING
    assert weekday.open is True


def test_line_closed_action_can_ring_another_group() -> None:
    users = [user("a"), user("night")]
    groups = [
        group("g", layer(["a"])),
        group("night", layer(["night"]), fallback={"action": "hangup"}),
    ]
    lines = [
        {
            "number": LINE,
            "name": "Main",
            "route_to": {"ring_group": "g"},
            "business_hours": OFFICE,
            "closed_action": {"action": "ring_group", "ring_group": "night"},
        }
    ]
    plan = route(directory(users, groups, lines), now=_utc(2026, 11, 28, 12, 0))
    assert plan.outcome is Outcome.CLOSED
    assert plan.fallback is not None and plan.fallback.plan is not None
    nested = plan.fallback.plan
    assert nested.target_id == "night"
    assert [t.user_id for t in nested.layers[0].ring] == ["night"]
    assert nested.fallback is not None
    assert nested.fallback.action is FallbackAction.HANGUP


def test_line_time_zone_overrides_the_directory_default() -> None:
    hours = {"mon": ["09:00-17:00"]}
    # NOW is Monday 15:00 UTC, 07:00 in Los Angeles.
    default = route(_line_directory(business_hours=hours))
    assert default.outcome is Outcome.RING
    la = _line_directory(business_hours=hours, timezone="America/Los_Angeles")
    assert route(la).outcome is Outcome.CLOSED
    assert route(la, now=_utc(2026, 11, 23, 17, 0)).outcome is Outcome.RING  # 09:00 LA
    assert route(la, now=_utc(2026, 11, 24, 0, 59)).outcome is Outcome.RING  # 16:59 LA
    assert route(la, now=_utc(2026, 11, 24, 1, 0)).outcome is Outcome.CLOSED  # 17:00 LA


def test_line_without_business_hours_is_always_open() -> None:
    plan = route(_line_directory(), now=_utc(2026, 11, 29, 3, 0))
    assert plan.open is True
    assert plan.outcome is Outcome.RING
