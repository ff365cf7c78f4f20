"""The demo directory (config/directory.yaml), planned offline as `bridge route` does."""

from __future__ import annotations

from datetime import datetime

import pytest

from bridge.directory.loader import load_directory
from bridge.directory.model import Directory, FallbackAction, Strategy
from bridge.presence.model import AssumeEveryoneAvailable, Channel
from bridge.routing.engine import plan_route
from bridge.routing.model import CallRequest, Outcome, Reason, RoutePlan
from tests.conftest import DEMO_DIRECTORY

MONDAY_10 = datetime.fromisoformat("2026-11-23T10:00:00-05:00")


@pytest.fixture(scope="module")
def demo() -> Directory:
    return load_directory(DEMO_DIRECTORY)


def _plan(directory: Directory, line: str, at: datetime = MONDAY_10) -> RoutePlan:
    call = CallRequest(call_id="test-routing", line=line)
    return plan_route(directory, AssumeEveryoneAvailable(), call, at)


def _verdicts(plan: RoutePlan) -> list[list[tuple[str, Reason | None]]]:
    return [[(m.user_id, m.reason) for m in layer.members] for layer in plan.layers]


def _rings(plan: RoutePlan) -> list[list[tuple[str, Channel, str | None]]]:
    return [[(t.user_id, t.via, t.number) for t in layer.ring] for layer in plan.layers]


def test_main_line_monday_morning(demo: Directory) -> None:
    plan = _plan(demo, "+15550100")
    assert plan.outcome is Outcome.RING
    assert (plan.line, plan.line_name, plan.open) == ("+15550100", "Main line", True)
    assert (plan.target_kind, plan.target_id) == ("ring_group", "sales")
    assert [(p.strategy, p.timeout_seconds, p.ring_each_seconds) for p in plan.layers] == [
        (Strategy.ALL, 20, None),
        (Strategy.ROUND_ROBIN, 30, 15),
    ]
    assert _verdicts(plan) == [
        [("alice", None), ("bob", None), ("sam", Reason.WILL_NOT_ANSWER)],
        [("carol", None), ("dave", Reason.PAUSED), ("erin", None)],
    ]
    assert _rings(plan) == [
        [("alice", Channel.APPS, None), ("bob", Channel.IP_PHONE, None)],
        [("carol", Channel.PHONE_NUMBER, "+15550001003"), ("erin", Channel.IP_PHONE, None)],
    ]
    assert plan.rotation == {"sales/1": 1}

    step = plan.fallback
    assert step is not None
    assert (step.action, step.ring_group, step.why) == (
        FallbackAction.RING_GROUP,
        "support",
        "layers_exhausted",
    )
    support = step.plan
    assert support is not None
    assert support.outcome is Outcome.RING
    assert support.line == "+15550100"  # Frank is a rep of the support line only
    assert [(p.strategy, p.timeout_seconds, p.ring_each_seconds) for p in support.layers] == [
        (Strategy.LONGEST_IDLE, 25, 12),
        (Strategy.ALL, 20, None),
    ]
    assert _verdicts(support) == [
        [("erin", None), ("frank", Reason.ROLE_CANNOT_RECEIVE)],
        [("olivia", None), ("carol", None)],
    ]
    assert _rings(support) == [
        [("erin", Channel.IP_PHONE, None)],
        [("olivia", Channel.APPS, None), ("carol", Channel.PHONE_NUMBER, "+15550001003")],
    ]
    assert support.fallback is not None
    assert support.fallback.action is FallbackAction.VOICEMAIL
    assert support.fallback.prompt == "Support is busy. Leave a message after the tone."
    assert support.fallback.plan is None


def test_support_line_rings_its_rep(demo: Directory) -> None:
    plan = _plan(demo, "+15550200")
    assert plan.target_id == "support"
    assert plan.open is True
    assert _verdicts(plan)[0] == [("erin", None), ("frank", None)]
    assert [t.user_id for t in plan.layers[0].ring] == ["erin", "frank"]  # both never called


def test_main_line_after_hours_and_working_hours(demo: Directory) -> None:
    # 17:30 New York: the line is open until 18:00, Alice's day ended at 17:00, and Carol's
    # (Chicago, 16:30) is still on.
    plan = _plan(demo, "+15550100", datetime.fromisoformat("2026-11-23T17:30:00-05:00"))
    assert plan.outcome is Outcome.RING
    assert _verdicts(plan)[0][0] == ("alice", Reason.OUTSIDE_WORKING_HOURS)
    assert _verdicts(plan)[1][0] == ("carol", None)
    closed = _plan(demo, "+15550100", datetime.fromisoformat("2026-11-28T10:00:00-05:00"))
    assert closed.outcome is Outcome.CLOSED
    assert closed.fallback is not None
    assert closed.fallback.action is FallbackAction.VOICEMAIL
    assert closed.fallback.prompt == "We are closed. Our hours are 8 to 6, Monday to Friday."
