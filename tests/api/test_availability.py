"""Availability (GET/PUT) and what Test Routing makes of it; Test Routing's own parameters."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.presence.model import Availability, Channel
from tests.api.helpers import API, MAIN_LINE, MONDAY_10_NY, error_locs
from tests.conftest import Bridge

ROUTE = f"{API}/lines/{MAIN_LINE}/route"


def member(plan: dict[str, Any], user_id: str, layer: int | None = None) -> dict[str, Any]:
    layers = plan["layers"] if layer is None else [plan["layers"][layer]]
    return next(m for lay in layers for m in lay["members"] if m["user_id"] == user_id)


def explain(bridge: Bridge, **params: str) -> dict[str, Any]:
    response = bridge.as_user("olivia", "GET", ROUTE, params={"at": MONDAY_10_NY, **params})
    assert response.status_code == 200, response.text
    return response.json()


def test_get_availability_of_a_fresh_user(bridge: Bridge) -> None:
    response = bridge.as_user("alice", "GET", f"{API}/users/alice/availability")
    assert response.status_code == 200
    assert response.json() == {
        "user_id": "alice",
        "status": "available",
        "on_call": False,
        "wrap_up_until": None,
        "reachable": [],
    }


def test_availability_shows_reachability_and_wrap_up(bridge: Bridge) -> None:
    bridge.ctx.presence.endpoint_up("alice", Channel.APPS)
    bridge.ctx.presence.call_started("alice")
    body = bridge.as_user("alice", "GET", f"{API}/users/alice/availability").json()
    assert body["on_call"] is True
    assert body["reachable"] == ["apps"]
    bridge.ctx.presence.call_ended("alice")  # alice has 30 s wrap-up
    body = bridge.as_user("alice", "GET", f"{API}/users/alice/availability").json()
    assert body["on_call"] is False
    assert body["wrap_up_until"] == "2026-11-23T15:00:30+00:00"
    bridge.clock.advance(31)
    body = bridge.as_user("alice", "GET", f"{API}/users/alice/availability").json()
    assert body["wrap_up_until"] is None


@pytest.mark.parametrize("status", ["busy", "offline", "available"])
def test_put_own_availability(bridge: Bridge, status: str) -> None:
    response = bridge.as_user(
        "alice", "PUT", f"{API}/users/alice/availability", json={"status": status}
    )
    assert response.status_code == 200
    assert response.json()["status"] == status
    assert bridge.ctx.presence.presence_of("alice").availability is Availability(status)
    read = bridge.as_user("olivia", "GET", f"{API}/users/alice/availability")
    assert read.json()["status"] == status


def test_availability_is_not_a_directory_change(bridge: Bridge) -> None:
    before = (bridge.config_dir / "directory.yaml").read_bytes()
    response = bridge.as_user(
        "alice", "PUT", f"{API}/users/alice/availability", json={"status": "busy"}
    )
    assert response.status_code == 200
    assert bridge.ctx.store.current.version == 1
    assert (bridge.config_dir / "directory.yaml").read_bytes() == before


@pytest.mark.parametrize("body", [{"status": "lunch"}, {"status": None}, {"state": "busy"}])
def test_invalid_availability_is_422(bridge: Bridge, body: dict[str, Any]) -> None:
    response = bridge.as_user("alice", "PUT", f"{API}/users/alice/availability", json=body)
    assert response.status_code == 422
    assert any(loc.startswith("body.") for loc in error_locs(response)), response.json()
    assert bridge.ctx.presence.presence_of("alice").availability is Availability.AVAILABLE


def test_busy_member_shows_as_unavailable_in_test_routing(bridge: Bridge) -> None:
    before = explain(bridge)
    assert member(before, "alice", 0)["reason"] == "not_reachable"  # no app session yet
    assert member(before, "carol", 1)["can_receive_calls"] is True
    assert [t["user_id"] for t in before["layers"][1]["ring"]] == ["carol"]

    for user_id in ("alice", "carol"):
        response = bridge.as_user(
            user_id, "PUT", f"{API}/users/{user_id}/availability", json={"status": "busy"}
        )
        assert response.status_code == 200

    after = explain(bridge)
    for user_id in ("alice", "carol"):
        decision = member(after, user_id)
        assert decision["can_receive_calls"] is False
        assert decision["reason"] == "unavailable"
        assert decision["reason_text"] == "set busy / offline"
        assert decision["via"] is None
    assert after["layers"][1]["ring"] == []
    # nobody left to ring on the main line: the sales fallback (support) is planned
    assert after["fallback"]["action"] == "ring_group"
    assert after["fallback"]["ring_group"] == "support"

    # Back to available: carol rings again.
    bridge.as_user("carol", "PUT", f"{API}/users/carol/availability", json={"status": "available"})
    assert [t["user_id"] for t in explain(bridge)["layers"][1]["ring"]] == ["carol"]


def test_supervisor_sets_an_agent_offline_and_routing_follows(bridge: Bridge) -> None:
    response = bridge.as_user(
        "sam", "PUT", f"{API}/users/carol/availability", json={"status": "offline"}
    )
    assert response.status_code == 200
    assert response.json() == {
        "user_id": "carol",
        "status": "offline",
        "on_call": False,
        "wrap_up_until": None,
        "reachable": [],
    }
    assert member(explain(bridge), "carol", 1)["reason"] == "unavailable"
    refused = bridge.as_user(
        "alice", "PUT", f"{API}/users/carol/availability", json={"status": "available"}
    )
    assert refused.status_code == 403
    assert refused.json() == {"detail": "role 'agent' may not set others availability"}
    assert bridge.ctx.presence.presence_of("carol").availability is Availability.OFFLINE


def test_assume_available_ignores_live_presence(bridge: Bridge) -> None:
    bridge.as_user("alice", "PUT", f"{API}/users/alice/availability", json={"status": "busy"})
    plan = explain(bridge, presence="assume_available")
    alice = member(plan, "alice", 0)
    assert alice["can_receive_calls"] is True
    assert alice["via"] == "apps"
    # directory reasons still apply: paused dave, will-not-answer sam
    assert member(plan, "dave", 1)["reason"] == "paused"
    assert member(plan, "sam", 0)["reason"] == "will_not_answer"
    assert [t["user_id"] for t in plan["layers"][0]["ring"]] == ["alice", "bob"]
    # and the live view still sees alice busy
    assert member(explain(bridge, presence="live"), "alice", 0)["reason"] == "unavailable"


def test_test_routing_answer(bridge: Bridge) -> None:
    plan = explain(bridge)
    assert plan["call_id"] == "test-routing"
    assert plan["at"] == MONDAY_10_NY
    assert plan["line"] == MAIN_LINE
    assert plan["line_name"] == "Main line"
    assert plan["open"] is True
    assert plan["outcome"] == "ring"
    assert plan["directory_version"] == 1
    assert [[m["user_id"] for m in layer["members"]] for layer in plan["layers"]] == [
        ["alice", "bob", "sam"],
        ["carol", "dave", "erin"],
    ]


def test_test_routing_outside_business_hours(bridge: Bridge) -> None:
    response = bridge.as_user("olivia", "GET", ROUTE, params={"at": "2026-11-28T10:00:00-05:00"})
    assert response.status_code == 200
    plan = response.json()
    assert plan["open"] is False
    assert plan["outcome"] == "closed"
    assert plan["fallback"]["action"] == "voicemail"
    assert plan["fallback"]["prompt"].startswith("We are closed.")


def test_test_routing_accepts_utc_z_and_other_number_spellings(bridge: Bridge) -> None:
    for number in ("+15550100", "15550100"):
        response = bridge.as_user(
            "olivia", "GET", f"{API}/lines/{number}/route", params={"at": "2026-11-23T15:00:00Z"}
        )
        assert response.status_code == 200
        assert response.json()["line"] == MAIN_LINE
        assert response.json()["open"] is True


def test_test_routing_without_at_uses_the_clock(bridge: Bridge) -> None:
    response = bridge.as_user("olivia", "GET", ROUTE)
    assert response.status_code == 200
    assert response.json()["at"] == bridge.clock.now.isoformat()


def test_at_without_offset_is_422(bridge: Bridge) -> None:
    response = bridge.as_user("olivia", "GET", ROUTE, params={"at": "2026-11-23T10:00:00"})
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "loc": "at",
                "msg": "give a time-zone offset (e.g. -05:00, +01:00 or Z)",
                "type": "invalid",
            }
        ]
    }


@pytest.mark.parametrize("at", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_at_at_the_edges_of_time_is_422(bridge: Bridge, at: str) -> None:
    """Routing reads the moment in every zone of the directory: at either end of what a
    datetime holds that overflowed (a 500)."""
    response = bridge.as_user("olivia", "GET", ROUTE, params={"at": at})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["msg"] == f"{at!r} is out of range"


@pytest.mark.parametrize(
    ("params", "loc"),
    [({"at": "next tuesday"}, "at"), ({"presence": "psychic"}, "query.presence")],
)
def test_bad_test_routing_query_is_422(bridge: Bridge, params: dict[str, str], loc: str) -> None:
    response = bridge.as_user("olivia", "GET", ROUTE, params=params)
    assert response.status_code == 422
    assert error_locs(response) == [loc]


def test_test_routing_for_an_unknown_line_is_404(bridge: Bridge) -> None:
    response = bridge.as_user(
        "olivia", "GET", f"{API}/lines/+15559999/route", params={"at": MONDAY_10_NY}
    )
    assert response.status_code == 404
    assert response.json() == {"detail": "no line '+15559999'"}


def test_test_routing_does_not_advance_round_robin(bridge: Bridge) -> None:
    bridge.ctx.presence.endpoint_up("erin", Channel.IP_PHONE)
    first = explain(bridge)["layers"][1]["ring"]
    second = explain(bridge)["layers"][1]["ring"]
    assert [t["user_id"] for t in first] == ["carol", "erin"]
    assert first == second


def test_an_unescaped_plus_offset_is_understood(bridge: Bridge) -> None:
    # Typed in a shell or a browser, "+01:00" arrives as " 01:00": the same moment either way.
    raw = bridge.as_user("olivia", "GET", f"{ROUTE}?at=2026-11-23T16:00:00+01:00")
    encoded = bridge.as_user("olivia", "GET", ROUTE, params={"at": "2026-11-23T16:00:00+01:00"})
    assert raw.status_code == encoded.status_code == 200
    assert raw.json() == encoded.json()
    assert raw.json()["at"] == "2026-11-23T16:00:00+01:00"
    assert raw.json()["open"] is True  # 10:00 in New York
