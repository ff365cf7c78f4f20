"""Wiring of the WebSocket gateway (like a Wazo plugin's `plugin.py`): what it depends on,
passed in explicitly; what the rest of the daemon uses of it, returned.

- `build_gateway(...)` in `bridge.context.build_context`: the gateway (with its offer service
  as `gateway.offers`) subscribed to directory changes, so a suspended or deleted user's
  sessions close at once;
- `include_routes(app, settings)` in `bridge.api.app.create_app`: `/ws` (the gateway's plain
  ASGI endpoint, in the app's `websocket_endpoints`: served ahead of FastAPI's middleware and
  router, see `Gateway.serve`), and the admin test offers when `[ws] test_offers` is on;
- the daemon calls `gateway.begin_drain()` when a drain starts and `await
  gateway.close_all()` before the HTTP listener stops.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import FastAPI

from bridge.calls.registry import CallRegistry
from bridge.config import Settings
from bridge.directory.store import DirectoryStore
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


def include_routes(app: FastAPI, settings: Settings) -> None:
    gateway: Gateway | None = app.state.ctx.ws
    if gateway is not None:
        endpoints: dict[str, Any] = app.websocket_endpoints  # type: ignore[attr-defined]
        endpoints["/ws"] = gateway.serve
        # Call-control frames use the daemon's control service, as the HTTP routes do.
        gateway.control = lambda: getattr(app.state.ctx, "control", None)
    if settings.ws.test_offers:
        app.include_router(http.test_router)


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
