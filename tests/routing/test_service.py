"""RoutingService: real calls advance round robin and are counted; Test Routing does neither."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bridge.directory.loader import load_directory
from bridge.directory.store import DirectoryStore
from bridge.observability.metrics import Metrics
from bridge.presence.model import AssumeEveryoneAvailable, Availability, PresenceView
from bridge.routing.model import CallRequest, Outcome, RoutePlan
from bridge.routing.service import RoutingService
from tests.conftest import DEMO_DIRECTORY, FakeClock

from .helpers import directory, group, layer, line, presence, rings, status, user


def _service(
    store: DirectoryStore | None = None, view: PresenceView | None = None
) -> tuple[RoutingService, Metrics, FakeClock]:
    metrics = Metrics()
    clock = FakeClock()  # Monday 10:00 in New York
    store = store or DirectoryStore(load_directory(DEMO_DIRECTORY))
    view = view if view is not None else AssumeEveryoneAvailable()
    return RoutingService(store, view, metrics, clock), metrics, clock


def _call(n: int, line_number: str = "+15550100") -> CallRequest:
    return CallRequest(call_id=f"call-{n}", line=line_number)


def _second_layer(plan: RoutePlan) -> list[str]:
    return rings(plan.layers[1])


def _decisions(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value("bridge_route_decisions_total", {"result": result})
    return value or 0.0


def test_route_advances_round_robin_between_calls() -> None:
    service, _, _ = _service()
    orders = [_second_layer(service.route(_call(n))) for n in range(4)]
    # carol, dave (paused), erin: the pointer skips Dave.
    assert orders == [["carol", "erin"], ["erin", "carol"], ["carol", "erin"], ["erin", "carol"]]


def test_explain_does_not_advance_round_robin() -> None:
    service, metrics, clock = _service()
    first = service.explain(_call(0))
    again = service.explain(_call(1), at=clock() + timedelta(minutes=5))
    assert _second_layer(first) == _second_layer(again) == ["carol", "erin"]
    assert _second_layer(service.route(_call(2))) == ["carol", "erin"]
    assert _second_layer(service.explain(_call(3))) == ["erin", "carol"]
    assert _second_layer(service.route(_call(4))) == ["erin", "carol"]
    assert _decisions(metrics, "ring") == 2  # explain() is not a routing decision


def test_explain_can_use_another_presence_and_moment() -> None:
    service, _, clock = _service()
    busy = presence(carol=status(Availability.BUSY))
    plan = service.explain(_call(0), presence=busy)
    assert _second_layer(plan) == ["erin"]
    saturday = clock() + timedelta(days=5)
    assert service.explain(_call(1), at=saturday).outcome is Outcome.CLOSED
    assert service.route(_call(2)).at == clock()


def test_route_counts_decisions_by_result_and_times_them() -> None:
    service, metrics, clock = _service()
    service.route(_call(0))
    service.route(_call(1))
    service.route(_call(2, "+15559999999"))
    clock.advance(5 * 24 * 3600)  # Saturday: the main line is closed
    service.route(_call(3))
    service.explain(_call(4))
    assert _decisions(metrics, "ring") == 2
    assert _decisions(metrics, "no_route") == 1
    assert _decisions(metrics, "closed") == 1
    assert _decisions(metrics, "fallback") == 0
    count = metrics.registry.get_sample_value("bridge_route_decision_seconds_count")
    assert count == 5  # every decision is timed, Test Routing included


@pytest.mark.parametrize("calls", [3, 4])
def test_route_advances_the_fallback_groups_round_robin(calls: int) -> None:
    d = directory(
        [user("a"), user("b"), user("c"), user("d")],
        [
            group("first", layer(["a"]), fallback={"action": "ring_group", "ring_group": "rr"}),
            group("rr", layer(["b", "c", "d"], "round_robin")),
        ],
        [line(route_to={"ring_group": "first"})],
    )
    service, _, _ = _service(DirectoryStore(d))
    firsts = []
    for n in range(calls):
        plan = service.route(_call(n))
        assert plan.fallback is not None and plan.fallback.plan is not None
        firsts.append(rings(plan.fallback.plan.layers[0])[0])
    assert firsts == ["b", "c", "d", "b"][:calls]
