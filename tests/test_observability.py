"""Logs are JSON lines with the call id bound; metrics carry conventional names."""

from __future__ import annotations

import json

import pytest
import structlog

from bridge.observability.logging import call_context, configure_logging
from bridge.routing.model import CallRequest
from tests.conftest import Bridge


@pytest.fixture
def json_logs() -> None:
    configure_logging("info", "json")
    yield
    structlog.contextvars.clear_contextvars()


def _lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_json_lines_carry_the_call_id_inside_a_call(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    log = structlog.get_logger("test")
    with call_context("CA123", line="+15550100"):
        log.info("ringing", user="alice")
    log.info("idle")
    lines = _lines(capsys.readouterr().err)
    assert [entry["event"] for entry in lines] == ["ringing", "idle"]
    assert lines[0]["call_id"] == "CA123" and lines[0]["line"] == "+15550100"
    assert lines[0]["level"] == "info" and "timestamp" in lines[0]
    assert "call_id" not in lines[1]


def test_debug_is_filtered_at_info(json_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    structlog.get_logger("test").debug("noise")
    assert _lines(capsys.readouterr().err) == []


def test_routing_a_call_logs_and_counts_it(
    bridge: Bridge, json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = bridge.ctx.routing.route(CallRequest(call_id="CA42", line="+15550100"))
    assert plan.outcome.value == "ring"
    routed = [e for e in _lines(capsys.readouterr().err) if e["event"] == "call_routed"]
    assert routed and routed[0]["call_id"] == "CA42" and routed[0]["outcome"] == "ring"
    registry = bridge.ctx.metrics.registry
    assert registry.get_sample_value("bridge_route_decisions_total", {"result": "ring"}) == 1.0
    assert registry.get_sample_value("bridge_route_decision_seconds_count") == 1.0


def test_metrics_endpoint_names(bridge: Bridge) -> None:
    bridge.client.get("/healthz")
    text = bridge.client.get("/metrics").text
    for name in (
        'bridge_directory_users{status="active"} 9.0',
        'bridge_directory_users{status="paused"} 1.0',
        "bridge_directory_lines 2.0",
        "bridge_directory_ring_groups 2.0",
        "bridge_directory_version 1.0",
        'bridge_http_requests_total{method="GET",route="/healthz",status="200"} 1.0',
        "bridge_route_decision_seconds_bucket",
        "process_resident_memory_bytes",
        "python_info",
    ):
        assert name in text, name


def test_live_calls_gauge_follows_the_registry(bridge: Bridge) -> None:
    from datetime import UTC, datetime

    from bridge.calls.registry import LiveCall

    registry = bridge.ctx.metrics.registry
    assert registry.get_sample_value("bridge_live_calls") == 0.0
    bridge.ctx.calls.add(LiveCall("c1", "sip", "+15550100", None, datetime.now(UTC)))
    bridge.ctx.calls.add(LiveCall("c2", "sip", "+15550100", None, datetime.now(UTC)))
    assert registry.get_sample_value("bridge_live_calls") == 2.0
    bridge.ctx.calls.remove("c1")
    assert registry.get_sample_value("bridge_live_calls") == 1.0


def test_metric_children_are_looked_up_once_per_label_set() -> None:
    from bridge.observability.metrics import Metrics

    metrics = Metrics()
    answered = metrics.child(metrics.calls, "sip", "answered")
    assert metrics.child(metrics.calls, "sip", "answered") is answered
    assert metrics.child(metrics.calls, "sip", "no_answer") is not answered
    answered.inc()
    metrics.child(metrics.calls, "sip", "answered").inc()
    metrics.child(metrics.call_setup_seconds, "sip").observe(0.003)
    registry = metrics.registry
    assert (
        registry.get_sample_value("bridge_calls_total", {"path": "sip", "outcome": "answered"})
        == 2.0
    )
    assert registry.get_sample_value("bridge_call_setup_seconds_count", {"path": "sip"}) == 1.0
    # Another instance keeps its own children (each daemon has its own registry).
    other = Metrics()
    assert other.child(other.calls, "sip", "answered") is not answered
