"""The routing service: the pure core plus what it needs from the running daemon.

It reads the current directory snapshot and live presence, times the decision, counts it,
and keeps the round-robin pointers between calls (only real calls advance them; Test Routing
explains without side effects)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import structlog

from bridge.directory.store import DirectoryStore
from bridge.observability.logging import call_context
from bridge.observability.metrics import Metrics
from bridge.presence.model import PresenceView
from bridge.routing.engine import plan_route
from bridge.routing.model import CallRequest, RoutePlan

log = structlog.get_logger("bridge.routing")


class RoutingService:
    def __init__(
        self,
        store: DirectoryStore,
        presence: PresenceView,
        metrics: Metrics,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._presence = presence
        self._metrics = metrics
        self._clock = clock
        self._rotation: dict[str, int] = {}

    def _decide(self, call: CallRequest, at: datetime, presence: PresenceView) -> RoutePlan:
        started = time.perf_counter()
        plan = plan_route(self._store.current, presence, call, at, self._rotation)
        self._metrics.route_decision_seconds.observe(time.perf_counter() - started)
        return plan

    def route(self, call: CallRequest) -> RoutePlan:
        """Plan a real call now and advance the round-robin pointers it used."""
        with call_context(call.call_id):
            plan = self._decide(call, self._clock(), self._presence)
            self._rotation.update(plan.rotation)
            self._metrics.child(self._metrics.route_decisions, plan.outcome.value).inc()
            log.info("call_routed", outcome=plan.outcome.value, line=plan.line)
        return plan

    def explain(
        self, call: CallRequest, at: datetime | None = None, presence: PresenceView | None = None
    ) -> RoutePlan:
        """Test Routing: the same decision, without advancing anything."""
        return self._decide(call, at or self._clock(), presence or self._presence)
