"""Ring order per strategy: all, round robin, longest idle, random."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

from bridge.presence.model import ALL_CHANNELS, Availability, PresenceView, UserPresence
from bridge.routing.model import rotation_key

from .helpers import NOW, presence, rings, route, single_group, status, user

BUSY = status(Availability.BUSY)
FOUR = [user("a"), user("b"), user("c"), user("d")]
KEY = rotation_key("g", 0)


def test_rotation_key_names_group_and_layer() -> None:
    assert KEY == "g/0"
    assert rotation_key("sales", 2) == "sales/2"


def test_all_rings_eligible_members_in_config_order() -> None:
    d = single_group([user("d"), user("b"), user("a"), user("c")])
    plan = route(d, presence(b=BUSY))
    assert rings(plan.layers[0]) == ["d", "a", "c"]
    assert plan.rotation == {}


@pytest.mark.parametrize(
    ("pointer", "order", "next_pointer"),
    [
        (None, ["a", "b", "c", "d"], 1),
        (0, ["a", "b", "c", "d"], 1),
        (1, ["b", "c", "d", "a"], 2),
        (2, ["c", "d", "a", "b"], 3),
        (3, ["d", "a", "b", "c"], 0),  # wraps
        (6, ["c", "d", "a", "b"], 3),  # a stale pointer past the end is taken modulo size
    ],
)
def test_round_robin_starts_at_the_pointer_and_advances_it(
    pointer: int | None, order: list[str], next_pointer: int
) -> None:
    d = single_group(FOUR, "round_robin")
    rotation = {} if pointer is None else {KEY: pointer}
    before = dict(rotation)
    plan = route(d, rotation=rotation)
    assert rings(plan.layers[0]) == order
    assert plan.rotation == {KEY: next_pointer}
    assert rotation == before  # the caller's pointers are not touched


@pytest.mark.parametrize(
    ("pointer", "busy", "order", "next_pointer"),
    [
        (1, {"b"}, ["c", "d", "a"], 3),  # the pointer's member cannot receive: next one
        (3, {"d"}, ["a", "b", "c"], 1),  # skipping wraps round to the start
        (2, {"c", "d"}, ["a", "b"], 1),
        (0, {"a", "b", "c"}, ["d"], 0),  # one eligible member: it is first, pointer after it
    ],
)
def test_round_robin_skips_members_who_cannot_receive(
    pointer: int, busy: set[str], order: list[str], next_pointer: int
) -> None:
    d = single_group(FOUR, "round_robin")
    plan = route(d, presence(**dict.fromkeys(busy, BUSY)), rotation={KEY: pointer})
    assert rings(plan.layers[0]) == order
    assert plan.rotation == {KEY: next_pointer}


def test_round_robin_with_nobody_eligible_keeps_the_pointer() -> None:
    d = single_group(FOUR, "round_robin")
    plan = route(d, presence(default=BUSY), rotation={KEY: 2})
    assert rings(plan.layers[0]) == []
    assert plan.rotation == {}


def test_round_robin_cycles_through_everyone_over_consecutive_calls() -> None:
    d = single_group(FOUR, "round_robin")
    rotation: dict[str, int] = {}
    firsts = []
    for _ in range(9):
        plan = route(d, presence(c=BUSY), rotation=rotation)
        firsts.append(plan.layers[0].ring[0].user_id)
        rotation.update(plan.rotation)
    assert firsts == ["a", "b", "d", "a", "b", "d", "a", "b", "d"]


def _idle(minutes_ago: int | None) -> UserPresence:
    ended = None if minutes_ago is None else NOW - timedelta(minutes=minutes_ago)
    return UserPresence(reachable=ALL_CHANNELS, last_call_ended_at=ended)


def test_longest_idle_never_called_first_then_oldest_call_then_listing_order() -> None:
    users = [user(u) for u in ("a", "b", "c", "d", "e", "f", "g")]
    states = {
        "a": _idle(5),
        "b": _idle(None),
        "c": _idle(60),
        "d": _idle(None),
        "e": _idle(60),  # ties with c: listing order
        "f": _idle(120),
        "g": UserPresence(availability=Availability.BUSY, last_call_ended_at=None),
    }
    plan = route(single_group(users, "longest_idle"), presence(**states))
    assert rings(plan.layers[0]) == ["b", "d", "f", "c", "e", "a"]
    assert plan.rotation == {}


def test_longest_idle_compares_instants_not_wall_clocks() -> None:
    tokyo = (NOW - timedelta(minutes=10)).astimezone(ZoneInfo("Asia/Tokyo"))
    states = {
        "a": UserPresence(reachable=ALL_CHANNELS, last_call_ended_at=NOW - timedelta(minutes=5)),
        "b": UserPresence(reachable=ALL_CHANNELS, last_call_ended_at=tokyo),
    }
    plan = route(single_group([user("a"), user("b")], "longest_idle"), presence(**states))
    assert rings(plan.layers[0]) == ["b", "a"]


def _random_order(seed: int, view: PresenceView | None = None) -> list[str]:
    users = [user(f"u{i}") for i in range(8)]
    plan = route(single_group(users, "random"), view, seed=seed)
    return rings(plan.layers[0])


def test_random_is_reproducible_for_a_seed() -> None:
    assert _random_order(42) == _random_order(42)
    assert sorted(_random_order(42)) == [f"u{i}" for i in range(8)]


def test_random_orders_differ_between_seeds() -> None:
    orders = {tuple(_random_order(seed)) for seed in range(5)}
    assert len(orders) >= 4
    assert all(sorted(order) == [f"u{i}" for i in range(8)] for order in orders)


def test_random_rings_only_eligible_members() -> None:
    view = presence(u1=BUSY, u4=UserPresence(on_call=True, reachable=ALL_CHANNELS))
    for seed in range(5):
        order = _random_order(seed, view)
        assert sorted(order) == ["u0", "u2", "u3", "u5", "u6", "u7"]
