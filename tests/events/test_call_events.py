"""A SIP call's events in the outbox, as `bridge run` stores them: where it came from and the
plan it got, each leg rung and how each ended (the loser with its reason), the answer, and the
end with its durations; one call's events in order, under the call's id."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from tests.sip.peers import trunk_bridge
from tests.sip.test_sipp_calls import directory, run_trunk, start_phone, wait_registered


def call_events(outbox: Path) -> list[tuple[str, str | None, dict[str, Any]]]:
    db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT type, call_id, payload FROM events ORDER BY seq").fetchall()
    finally:
        db.close()
    return [(kind, call, json.loads(payload)) for kind, call, payload in rows]


def test_an_answered_calls_events_from_received_to_ended(tmp_path: Path) -> None:
    with trunk_bridge(tmp_path, directory()) as bridge:
        anna = start_phone(tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "300")
        ben = start_phone(tmp_path, "phone_ring_cancelled.xml", "302", bridge.sip)
        wait_registered(bridge, 2)
        trunk = run_trunk(tmp_path, bridge)
        assert trunk.returncode == 0
        assert anna.wait(timeout=30) == 0 and ben.wait(timeout=30) == 0
        bridge.wait_events("sip_call_ended")
    # (stopped: the outbox was flushed at the end of the drain)
    events = [e for e in call_events(tmp_path / "var" / "events.sqlite") if e[1] is not None]
    assert len({call for _, call, _ in events}) == 1  # one call, all under its id
    kinds = [kind for kind, _, _ in events]
    assert kinds[:3] == ["call.received", "call.routed", "call.layer_ringing"]
    assert kinds.index("call.answered") < kinds.index("call.ended") == len(kinds) - 1
    by_kind = {kind: payload for kind, _, payload in events}
    assert by_kind["call.received"]["line"] == "+15550100"
    assert by_kind["call.received"]["path"] == "sip"
    assert by_kind["call.routed"]["outcome"] == "ring"
    assert by_kind["call.answered"]["user_id"] == "anna"
    ended_legs = {p["user_id"]: p for kind, _, p in events if kind == "leg.ended"}
    assert ended_legs["ben"]["state"] == "cancelled"
    assert ended_legs["ben"]["reason"] == "answered_elsewhere"
    assert ended_legs["anna"]["state"] == "ended"
    # ben's leg ended when anna answered, before the call's end
    assert kinds.index("leg.ended") > kinds.index("call.answered")
    ended = by_kind["call.ended"]
    assert ended["outcome"] == "answered" and ended["cause"] in ("caller_hangup", "callee_hangup")
    assert 0 <= ended["wait_seconds"] < 5 and ended["talk_seconds"] >= 0.2
    assert 29 <= ended["wrap_up_seconds"] <= 30  # anna's wrap_up_seconds: 30


def test_the_routed_payload_lists_each_ring_target_as_its_own_json() -> None:
    """`call.routed`'s ring list: each target as `RingTarget.to_dict` says, in ring order; the
    dict made once per target is shared by the payloads of later plans (never changed)."""
    from bridge.events.model import routed_payload
    from tests.routing.helpers import presence, route, single_group, user

    directory = single_group([user("a"), user("b"), user("c")], "round_robin")
    first, second = route(directory, presence()), route(directory, presence())
    one, two = routed_payload(first), routed_payload(second)
    for plan, payload in ((first, one), (second, two)):
        ring = payload["layers"][0]["ring"]
        assert ring == [target.to_dict() for target in plan.layers[0].ring]
        assert [t["user_id"] for t in ring] == ["a", "b", "c"]
    pairs = zip(one["layers"][0]["ring"], two["layers"][0]["ring"], strict=True)
    assert all(x is y for x, y in pairs)
