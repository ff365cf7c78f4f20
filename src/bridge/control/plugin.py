"""Wiring of the call controls (like a Wazo plugin's `plugin.py`): what they depend on, passed
in explicitly; what the rest of the daemon uses of them, returned.

- `build_control(...)` in `bridge.context.build_context`: the `ControlService` over one
  `Supervision` that sends each call to its dial path's implementation (the carrier's
  conference; SIP calls refuse with a 409 until the media engine), publishing each attempt as
  a `ControlAttempted` event on the call through the call runner;
- `routes(...)` in `bridge.api.app.create_app`: `/api/v1/calls/{id}/monitor|recording`; the
  WebSocket gateway's call-control frames use the same service (`Gateway.use_control`).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter

from bridge.calls.events import Event
from bridge.calls.ports import Supervision
from bridge.calls.registry import CallRegistry
from bridge.calls.runner import CallRunner
from bridge.calls.supervision import SupervisionByPath
from bridge.control import http
from bridge.control.service import ControlService
from bridge.httpauth import HttpAuth
from bridge.observability.metrics import Metrics


def build_control(
    *,
    registry: CallRegistry,
    runner: CallRunner,
    by_path: dict[str, Supervision],
    default_path: str,
    publish_ended: Callable[[str, Event], object] | None = None,
    metrics: Metrics,
) -> ControlService:
    """`by_path`: each dial path's `Supervision` ("carrier", "sip"); a call the registry does
    not know goes to `default_path`'s. `publish_ended`: where an attempt on a call that has
    just ended is published (a path that remembers ended calls), else nowhere."""
    supervision = SupervisionByPath(registry, by_path, default=default_path)

    def publish(call_id: str, event: Event) -> None:
        if not runner.publish(call_id, event) and publish_ended is not None:
            publish_ended(call_id, event)

    return ControlService(supervision, publish, metrics=metrics)


def routes(service: ControlService, auth: HttpAuth) -> APIRouter:
    return http.routes(service, auth)
