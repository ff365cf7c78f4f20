"""Why a member cannot receive a call: each reason, and the first that applies wins."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from bridge.presence.model import Availability, Channel, UserPresence
from bridge.routing.model import REASON_TEXT, Outcome, Reason

from .helpers import (
    AVAILABLE,
    LINE,
    NOW,
    OTHER_LINE,
    directory,
    group,
    layer,
    line,
    member,
    presence,
    reach,
    rings,
    route,
    single_group,
    status,
    user,
)

CLOSED_NOW = {"mon": ["00:00-01:00"]}  # NOW is Monday 15:00 UTC
WRAP_UNTIL = NOW + timedelta(seconds=30)

# Each reason with the user fields / presence that cause it (and nothing else).
SINGLE_CAUSE: list[tuple[Reason, dict[str, Any], UserPresence]] = [
    (Reason.SUSPENDED, {"status": "suspended"}, AVAILABLE),
    (Reason.PAUSED, {"status": "paused"}, AVAILABLE),
    (Reason.ROLE_CANNOT_RECEIVE, {"role": "reporter"}, AVAILABLE),
    (Reason.WILL_NOT_ANSWER, {"answer_by": "will_not_answer"}, AVAILABLE),
    (Reason.OUTSIDE_WORKING_HOURS, {"working_hours": CLOSED_NOW}, AVAILABLE),
    (Reason.UNAVAILABLE, {}, status(Availability.BUSY)),
    (Reason.UNAVAILABLE, {}, status(Availability.OFFLINE)),
    (Reason.ON_CALL, {}, reach(*Channel, on_call=True)),
    (Reason.WRAP_UP, {}, reach(*Channel, wrap_up_until=WRAP_UNTIL)),
    (Reason.NOT_REACHABLE, {}, reach()),
]


@pytest.mark.parametrize(("reason", "fields", "state"), SINGLE_CAUSE)
def test_each_reason_alone(reason: Reason, fields: dict[str, Any], state: UserPresence) -> None:
    d = single_group([user("x", **fields), user("ok")])
    plan = route(d, presence(x=state))
    decision = member(plan, "x")
    assert decision.can_receive is False
    assert decision.reason is reason
    assert decision.via is None
    assert decision.to_dict()["reason_text"] == REASON_TEXT[reason]
    assert rings(plan.layers[0]) == ["ok"]


# Every cause at once, then the causes removed one by one from the top of the list: the
# reason reported must always be the first cause still present.
ORDER = [
    Reason.SUSPENDED,
    Reason.PAUSED,
    Reason.ROLE_CANNOT_RECEIVE,
    Reason.WILL_NOT_ANSWER,
    Reason.OUTSIDE_WORKING_HOURS,
    Reason.UNAVAILABLE,
    Reason.ON_CALL,
    Reason.WRAP_UP,
    Reason.NOT_REACHABLE,
]


def _with_causes_from(first: int) -> tuple[dict[str, Any], UserPresence]:
    """User fields and presence with every cause in ORDER[first:] present."""
    present = set(ORDER[first:])
    fields: dict[str, Any] = {}
    if Reason.SUSPENDED in present:
        fields["status"] = "suspended"
    elif Reason.PAUSED in present:
        fields["status"] = "paused"
    if Reason.ROLE_CANNOT_RECEIVE in present:
        fields["role"] = "billing_admin"
    if Reason.WILL_NOT_ANSWER in present:
        fields["answer_by"] = "will_not_answer"
    if Reason.OUTSIDE_WORKING_HOURS in present:
        fields["working_hours"] = CLOSED_NOW
    state = UserPresence(
        availability=Availability.BUSY if Reason.UNAVAILABLE in present else Availability.AVAILABLE,
        on_call=Reason.ON_CALL in present,
        wrap_up_until=WRAP_UNTIL if Reason.WRAP_UP in present else None,
        reachable=frozenset() if Reason.NOT_REACHABLE in present else frozenset(Channel),
    )
    return fields, state


@pytest.mark.parametrize("first", range(len(ORDER) + 1))
def test_first_reason_in_order_wins(first: int) -> None:
    fields, state = _with_causes_from(first)
    d = single_group([user("x", **fields)])
    decision = member(route(d, presence(x=state)), "x")
    if first == len(ORDER):
        assert decision.can_receive is True
        assert decision.reason is None
        assert decision.via is Channel.APPS
    else:
        assert decision.can_receive is False
        assert decision.reason is ORDER[first]


def test_reason_enum_order_is_the_documented_order() -> None:
    assert list(Reason) == ORDER


@pytest.mark.parametrize("role", ["admin", "supervisor", "agent"])
def test_roles_that_are_rung(role: str) -> None:
    d = single_group([user("x", role=role)])
    assert member(route(d), "x").can_receive is True


@pytest.mark.parametrize("role", ["billing_admin", "reporter", "end_client"])
def test_roles_that_are_never_rung_even_on_their_own_lines(role: str) -> None:
    d = single_group([user("x", role=role, lines=[LINE]), user("y")])
    plan = route(d)
    assert member(plan, "x").reason is Reason.ROLE_CANNOT_RECEIVE
    assert rings(plan.layers[0]) == ["y"]
    direct = route(d, line_number=None, user_id="x")
    assert direct.outcome is Outcome.FALLBACK
    assert direct.layers[0].members[0].reason is Reason.ROLE_CANNOT_RECEIVE


def _rep_directory() -> Any:
    users = [
        user("own", role="rep", lines=[LINE]),
        user("elsewhere", role="rep", lines=[OTHER_LINE]),
        user("none", role="rep"),
    ]
    ids = [u["id"] for u in users]
    return directory(
        users,
        [group("g", layer(ids))],
        [line(LINE), line(OTHER_LINE), line("+15550300", route_to={"user": "own"})],
    )


def test_rep_rings_only_on_lines_in_its_lines() -> None:
    d = _rep_directory()
    main = route(d, line_number=LINE)
    assert rings(main.layers[0]) == ["own"]
    assert member(main, "elsewhere").reason is Reason.ROLE_CANNOT_RECEIVE
    assert member(main, "none").reason is Reason.ROLE_CANNOT_RECEIVE
    other = route(d, line_number=OTHER_LINE)
    assert rings(other.layers[0]) == ["elsewhere"]
    assert member(other, "own").reason is Reason.ROLE_CANNOT_RECEIVE


def test_rep_behind_a_line_routed_to_the_rep_needs_that_line() -> None:
    d = _rep_directory()
    plan = route(d, line_number="+15550300")
    assert plan.target_kind == "user"
    assert plan.layers[0].members[0].reason is Reason.ROLE_CANNOT_RECEIVE
    assert plan.outcome is Outcome.FALLBACK


def test_rep_is_rung_on_a_direct_extension_call() -> None:
    # No line is involved in an extension call, so the rep's line list does not apply.
    plan = route(_rep_directory(), line_number=None, user_id="none")
    assert plan.outcome is Outcome.RING
    assert rings(plan.layers[0]) == ["none"]


def test_phone_number_user_without_number_is_not_reachable() -> None:
    d = single_group(
        [
            user("nonum", answer_by="phone_number"),
            user("num", answer_by="phone_number", phone_number="+15550001003"),
        ]
    )
    plan = route(d, presence(default=reach()))  # no app session or desk phone anywhere
    assert member(plan, "nonum").reason is Reason.NOT_REACHABLE
    assert member(plan, "num").via is Channel.PHONE_NUMBER
    (target,) = plan.layers[0].ring
    assert (target.user_id, target.via, target.number) == (
        "num",
        Channel.PHONE_NUMBER,
        "+15550001003",
    )


@pytest.mark.parametrize(
    ("answer_by", "channel", "other"),
    [
        ("apps", Channel.APPS, Channel.IP_PHONE),
        ("ip_phone", Channel.IP_PHONE, Channel.APPS),
    ],
)
def test_apps_and_desk_phone_need_their_own_channel(
    answer_by: str, channel: Channel, other: Channel
) -> None:
    d = single_group([user("x", answer_by=answer_by)])
    missing = member(route(d, presence(x=reach(other, Channel.PHONE_NUMBER))), "x")
    assert missing.reason is Reason.NOT_REACHABLE
    plan = route(d, presence(x=reach(channel)))
    assert member(plan, "x").via is channel
    assert plan.layers[0].ring[0].via is channel
    assert plan.layers[0].ring[0].number is None


@pytest.mark.parametrize(
    ("offset", "in_wrap_up"),
    [
        (timedelta(seconds=-30), True),
        (timedelta(microseconds=-1), True),
        (timedelta(0), False),
        (timedelta(microseconds=1), False),
    ],
)
def test_wrap_up_ends_exactly_at_wrap_up_until(offset: timedelta, in_wrap_up: bool) -> None:
    d = single_group([user("x")])
    state = reach(Channel.APPS, wrap_up_until=WRAP_UNTIL)
    decision = member(route(d, presence(x=state), now=WRAP_UNTIL + offset), "x")
    assert decision.reason is (Reason.WRAP_UP if in_wrap_up else None)
    assert decision.can_receive is not in_wrap_up
