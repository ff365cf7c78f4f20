"""The shape of a plan: layers, fallbacks, lines to users, refusals, the dict and the table."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from bridge.directory.model import Directory, FallbackAction, Strategy
from bridge.presence.model import Availability, Channel
from bridge.routing.explain import render_dict
from bridge.routing.model import Outcome, Reason

from .helpers import (
    LINE,
    NOW,
    directory,
    group,
    layer,
    line,
    member,
    presence,
    rings,
    route,
    single_group,
    status,
    user,
)

BUSY = status(Availability.BUSY)


def test_members_who_cannot_receive_are_listed_but_not_rung() -> None:
    d = single_group([user("a"), user("b", status="paused"), user("c")])
    plan = route(d, presence(c=BUSY))
    (planned,) = plan.layers
    assert [m.user_id for m in planned.members] == ["a", "b", "c"]
    assert [m.can_receive for m in planned.members] == [True, False, False]
    assert [m.reason for m in planned.members] == [None, Reason.PAUSED, Reason.UNAVAILABLE]
    assert rings(planned) == ["a"]
    assert plan.outcome is Outcome.RING
    assert plan.ringable() is True


@pytest.mark.parametrize(
    ("strategy", "fields", "ring_each"),
    [
        ("all", {"timeout_seconds": 25, "ring_each_seconds": 10}, None),
        ("round_robin", {"timeout_seconds": 30, "ring_each_seconds": 15}, 15),
        ("round_robin", {"timeout_seconds": 30}, 30),
        ("longest_idle", {"timeout_seconds": 40, "ring_each_seconds": 12}, 12),
        ("longest_idle", {}, 20),  # the layer timeout's default
        ("random", {"timeout_seconds": 18}, 18),
    ],
)
def test_ring_each_seconds(strategy: str, fields: dict[str, int], ring_each: int | None) -> None:
    d = single_group([user("a"), user("b")], strategy, **fields)
    (planned,) = route(d).layers
    assert planned.strategy is Strategy(strategy)
    assert planned.ring_each_seconds == ring_each
    assert planned.timeout_seconds == fields.get("timeout_seconds", 20)
    as_dict = planned.to_dict()
    assert as_dict["simultaneous"] is (ring_each is None)
    assert as_dict["ring_each_seconds"] == ring_each


def test_layers_keep_their_index_and_order() -> None:
    users = [user(u) for u in "abcde"]
    g = group("g", layer(["a", "b"]), layer(["c"], "round_robin"), layer(["d", "e"]))
    plan = route(directory(users, [g], [line()]), presence(c=BUSY))
    assert [p.index for p in plan.layers] == [0, 1, 2]
    assert [rings(p) for p in plan.layers] == [["a", "b"], [], ["d", "e"]]
    assert plan.outcome is Outcome.RING
    assert plan.fallback is not None
    assert plan.fallback.why == "layers_exhausted"
    assert plan.fallback.action is FallbackAction.VOICEMAIL


def test_nobody_can_receive_goes_straight_to_the_fallback() -> None:
    users = [user("a"), user("b")]
    g = group(
        "g",
        layer(["a"]),
        layer(["b"], "round_robin"),
        fallback={"action": "forward", "number": "+15550009999"},
    )
    plan = route(directory(users, [g], [line()]), presence(default=BUSY), rotation={"g/1": 0})
    assert plan.outcome is Outcome.FALLBACK
    assert plan.ringable() is False
    assert [len(p.members) for p in plan.layers] == [1, 1]
    assert all(p.ring == () for p in plan.layers)
    assert plan.fallback is not None
    assert plan.fallback.why == "no_member_can_receive"
    assert plan.fallback.action is FallbackAction.FORWARD
    assert plan.fallback.number == "+15550009999"
    assert plan.rotation == {}


def _chain(fallback_of_b: dict[str, str]) -> Directory:
    users = [user("a"), user("b"), user("c")]
    groups = [
        group("a-team", layer(["a"]), fallback={"action": "ring_group", "ring_group": "b-team"}),
        group("b-team", layer(["b", "c"], "round_robin"), fallback=fallback_of_b),
    ]
    return directory(users, groups, [line(route_to={"ring_group": "a-team"})])


def test_ring_group_fallback_carries_the_nested_plan() -> None:
    d = _chain({"action": "voicemail", "prompt": "Leave a message."})
    plan = route(d)
    assert plan.target_id == "a-team"
    step = plan.fallback
    assert step is not None
    assert step.action is FallbackAction.RING_GROUP
    assert step.ring_group == "b-team"
    assert step.why == "layers_exhausted"
    nested = step.plan
    assert nested is not None
    assert (nested.target_kind, nested.target_id, nested.target_name) == (
        "ring_group",
        "b-team",
        "B-Team",
    )
    assert nested.line == LINE
    assert rings(nested.layers[0]) == ["b", "c"]
    assert nested.fallback is not None
    assert nested.fallback.action is FallbackAction.VOICEMAIL
    assert nested.fallback.prompt == "Leave a message."
    assert step.to_dict()["plan"]["target"]["id"] == "b-team"


def test_fallback_loop_ends_in_hangup() -> None:
    d = _chain({"action": "ring_group", "ring_group": "a-team"})
    plan = route(d)
    assert plan.fallback is not None and plan.fallback.plan is not None
    back = plan.fallback.plan.fallback
    assert back is not None
    assert back.action is FallbackAction.HANGUP
    assert back.why == "fallback_loop_to_a-team"
    assert back.plan is None


def test_round_robin_pointer_of_a_fallback_group_is_returned() -> None:
    d = _chain({"action": "hangup"})
    plan = route(d, rotation={"b-team/0": 1})
    assert plan.fallback is not None and plan.fallback.plan is not None
    assert rings(plan.fallback.plan.layers[0]) == ["c", "b"]
    assert plan.fallback.plan.rotation == {"b-team/0": 0}
    # Stored with the call's own pointers, so the fallback group's rotation moves on too.
    assert plan.rotation == {"b-team/0": 0}


def _user_line(**fields: object) -> Directory:
    return directory(
        [user("u", ring_seconds=45, **fields), user("other")],
        [group("g", layer(["other"]))],
        [line(route_to={"user": "u"}), line("+15550200")],
    )


def test_line_routed_to_a_user_with_backup_routing() -> None:
    d = _user_line(backup_number="+15550009999", voicemail_prompt="Hi, it's U.")
    plan = route(d)
    assert plan.outcome is Outcome.RING
    assert (plan.target_kind, plan.target_id, plan.target_name) == ("user", "u", "U")
    (planned,) = plan.layers
    assert planned.strategy is Strategy.ALL
    assert planned.timeout_seconds == 45
    assert planned.ring_each_seconds is None
    assert rings(planned) == ["u"]
    assert planned.ring[0].via is Channel.APPS
    assert plan.fallback is not None
    assert plan.fallback.action is FallbackAction.FORWARD
    assert plan.fallback.number == "+15550009999"
    assert plan.fallback.why == "backup_routing_not_answered"
    busy = route(d, presence(u=BUSY))
    assert busy.outcome is Outcome.FALLBACK
    assert busy.layers[0].ring == ()
    assert busy.fallback is not None
    assert busy.fallback.why.startswith("backup_routing")
    assert busy.fallback.why == "backup_routing_user_cannot_receive"


def test_line_routed_to_a_user_without_backup_goes_to_their_voicemail() -> None:
    d = _user_line(voicemail_prompt="Hi, it's U.")
    plan = route(d)
    assert plan.fallback is not None
    assert plan.fallback.action is FallbackAction.VOICEMAIL
    assert plan.fallback.prompt == "Hi, it's U."
    assert plan.fallback.why == "not_answered"
    paused = route(_user_line(status="paused"))
    assert paused.outcome is Outcome.FALLBACK
    assert paused.layers[0].members[0].reason is Reason.PAUSED
    assert paused.fallback is not None
    assert paused.fallback.why == "user_cannot_receive"


def test_direct_call_to_a_user() -> None:
    d = _user_line()
    plan = route(d, line_number=None, user_id="other")
    assert plan.outcome is Outcome.RING
    assert plan.line is None and plan.line_name is None
    assert plan.target_id == "other"
    assert rings(plan.layers[0]) == ["other"]
    unknown = route(d, line_number=None, user_id="nobody")
    assert unknown.outcome is Outcome.NO_ROUTE
    assert unknown.layers == () and unknown.fallback is None


@pytest.mark.parametrize("number", ["+15559999999", None])
def test_unknown_line_has_no_route(number: str | None) -> None:
    plan = route(single_group([user("a")]), line_number=number)
    assert plan.outcome is Outcome.NO_ROUTE
    assert plan.layers == ()
    assert plan.fallback is None
    assert plan.target_kind is None
    assert render_dict(plan.to_dict())[-1] == "no such line or user: the call is refused"


def test_line_lookup_normalizes_the_dialled_number() -> None:
    plan = route(single_group([user("a")]), line_number="tel:+1 555-0100")
    assert plan.outcome is Outcome.RING
    assert plan.line == LINE
    assert plan.line_name == f"Line {LINE}"


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="time-zone aware"):
        route(single_group([user("a")]), now=datetime(2026, 11, 23, 10, 0))


def test_plan_carries_call_moment_and_version() -> None:
    d = single_group([user("a")])
    plan = route(d)
    assert plan.call_id == "c1"
    assert plan.at == NOW
    assert plan.directory_version == d.version


def _explained() -> tuple[dict[str, object], list[str]]:
    users = [
        user("alice", name="Alice Doe"),
        user("sam", name="Sam Watch", answer_by="will_not_answer"),
        user("carol", name="Carol Phone", answer_by="phone_number", phone_number="+15550001003"),
        user("dave", name="Dave Paused", status="paused"),
    ]
    g = group(
        "g",
        layer(["alice", "sam"]),
        layer(["carol", "dave"], "round_robin", ring_each_seconds=15, timeout_seconds=30),
        fallback={"action": "voicemail", "prompt": "Leave a message."},
    )
    plan = route(directory(users, [g], [line(name="Main")]))
    as_dict = plan.to_dict()
    return as_dict, render_dict(as_dict)


def test_to_dict_is_json_serializable() -> None:
    as_dict, _ = _explained()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["outcome"] == "ring"
    assert as_dict["at"] == NOW.isoformat()
    assert as_dict["target"] == {"kind": "ring_group", "id": "g", "name": "G"}
    layers = as_dict["layers"]
    assert isinstance(layers, list)
    sam = layers[0]["members"][1]
    assert sam == {
        "user_id": "sam",
        "name": "Sam Watch",
        "answer_by": "will_not_answer",
        "can_receive_calls": False,
        "reason": "will_not_answer",
        "reason_text": "answer type is 'will not answer'",
        "via": None,
    }
    assert layers[1]["ring"] == [
        {"user_id": "carol", "via": "phone_number", "number": "+15550001003"}
    ]


def test_render_lists_every_member_with_verdict_and_reason() -> None:
    _, text = _explained()
    table = "\n".join(text)
    assert text[0] == f"Line {LINE} (Main) at {NOW.isoformat()}"
    assert "open: yes" in text
    assert "routes to ring_group g (G)" in text
    assert "Layer 1: all, all at once, timeout 20s" in text
    assert "Layer 2: round_robin, one at a time, 15s each, timeout 30s" in text
    rows = {
        "Alice Doe": "yes (via apps)",
        "Sam Watch": "no - will_not_answer (answer type is 'will not answer')",
        "Carol Phone": "yes (via phone_number)",
        "Dave Paused": "no - paused (account paused)",
    }
    for name, verdict in rows.items():
        (row,) = [r for r in text if r.strip().startswith(name)]
        assert row.endswith(verdict), row
    assert "  rings: alice" in text
    assert "  rings: carol" in text
    assert text[-2:] == ["then: voicemail (layers_exhausted)", "  prompt: Leave a message."]
    assert table.count("can receive calls?") == 2


def test_each_snapshot_is_planned_from_its_own_contents() -> None:
    # Snapshots come and go (API changes, reloads); old ones may still be read.
    active = single_group([user("a"), user("b")])
    paused = single_group([user("a", status="paused"), user("b")])
    for round_ in range(6):
        for _ in range(round_):  # fresh snapshots in between
            route(single_group([user("a", status="suspended"), user("b")]))
        assert member(route(active), "a").reason is None
        assert member(route(paused), "a").reason is Reason.PAUSED
        renamed = single_group([user("a", name=f"A{round_}"), user("b")])
        assert member(route(renamed), "a").name == f"A{round_}"


@pytest.mark.parametrize(
    ("dialled", "number"),
    [
        ("+15550100", "+15550100"),
        ("15550100", "+15550100"),
        ("tel:+1 555-0100", "+15550100"),
        ("+1-555-0100", "+15550100"),
        # A ported number's dip (RFC 4694) and other tel parameters are not digits of it.
        ("+15550100;npdi;rn=+15559999999", "+15550100"),
        ("+15550100;rn=+15559999999;npdi", "+15550100"),
        ("15550100;phone-context=+1", "+15550100"),
        ("+15550100;ext=22", "+15550100"),
        ("anna", "anna"),
    ],
)
def test_a_dialled_number_is_read_without_its_parameters(dialled: str, number: str) -> None:
    from bridge.directory.model import normalize_number

    assert normalize_number(dialled) == number
