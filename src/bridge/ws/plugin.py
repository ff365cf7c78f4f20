"""Wiring of the WebSocket gateway (like a Wazo plugin's `plugin.py`): what it depends on,
passed in explicitly; what the rest of the daemon uses of it, returned.

- `build_gateway(...)` in `bridge.context.build_context`: the gateway (with its offer service
  as `gateway.offers`) subscribed to directory changes, so a suspended or deleted user's
  sessions close at once;
- `websocket_endpoints(gateway)` and `routes(...)` in `bridge.api.app.create_app`: `/ws`
  (the gateway's plain ASGI endpoint, served ahead of FastAPI's middleware and router, see
  `Gateway.serve`), and the admin test offers when `[ws] test_offers` is on;
- `gateway.use_control(control)` in `bridge.context.build_context`: call-control frames go to
  the daemon's control service, as the HTTP routes do;
- the daemon calls `gateway.begin_drain()` when a drain starts and `await
  gateway.close_all()` before the HTTP listener stops.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime

from fastapi import APIRouter
from starlette.types import ASGIApp

from bridge.calls.registry import CallRegistry
from bridge.config import Settings
from bridge.directory.model import Directory
from bridge.directory.store import DirectoryStore
from bridge.httpauth import HttpAuth
from bridge.observability.metrics import Metrics
from bridge.presence.service import PresenceService
from bridge.tokens import TokenService
from bridge.ws import http
from bridge.ws.services import Gateway


def build_gateway(
    settings: Settings,
    *,
    store: DirectoryStore,
    presence: PresenceService,
    calls: CallRegistry,
    tokens: TokenService,
    metrics: Metrics,
    clock: Callable[[], datetime],
) -> Gateway:
    gateway = Gateway(
        settings.ws,
        directory=lambda: store.current,
        presence=presence,
        calls=calls,
        tokens=tokens,
        metrics=metrics,
        clock=clock,
    )
    store.subscribe(gateway.on_directory_change)
    _redact_tokens_in_uvicorn_logs()
    return gateway


def websocket_endpoints(gateway: Gateway) -> dict[str, ASGIApp]:
    """`/ws`: the gateway's plain ASGI endpoint (served ahead of FastAPI's middleware and
    router, see `Gateway.serve` and `bridge.api.app.BridgeApp`)."""
    return {"/ws": gateway.serve}


def routes(
    gateway: Gateway, settings: Settings, directory: Callable[[], Directory], auth: HttpAuth
) -> list[APIRouter]:
    """The admin test offers, when `[ws] test_offers` is on."""
    if not settings.ws.test_offers:
        return []
    return [http.test_routes(gateway, directory, auth)]


_TOKEN_IN_QUERY = re.compile(r"(token=)[^&\s\"]+")


class _RedactTokens(logging.Filter):
    """uvicorn logs every WebSocket handshake with its query string ("WebSocket
    /ws?token=..." [accepted]): a `?token=` must not end up in the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_IN_QUERY.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        return True


def _redact_tokens_in_uvicorn_logs() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _RedactTokens) for f in logger.filters):
        logger.addFilter(_RedactTokens())
