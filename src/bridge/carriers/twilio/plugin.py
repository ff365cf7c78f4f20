"""Wiring of the carrier path (like a Wazo plugin's `plugin.py`): what it depends on, passed
in explicitly; what the rest of the daemon uses of it, returned.

- `build_carrier(...)` in `bridge.context.build_context`: the `TwilioCalls` service (the
  carrier path's `LegDriver` on the call runner), always built: it answers 503 with the
  reason until `[twilio]` is configured;
- `routes(...)` in `bridge.api.app.create_app`: the webhooks (`/twilio/...`) and
  `GET /api/v1/voice-token`;
- the daemon calls `await service.aclose()` at shutdown.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter

from bridge.calls.runner import CallRunner
from bridge.carriers.twilio import http, voice_token
from bridge.carriers.twilio.service import TwilioCalls
from bridge.config import Settings
from bridge.directory.model import Directory
from bridge.httpauth import HttpAuth
from bridge.observability.metrics import Metrics


def build_carrier(
    settings: Settings,
    *,
    runner: CallRunner,
    metrics: Metrics,
    directory: Callable[[], Directory],
) -> TwilioCalls:
    return TwilioCalls.from_settings(settings, runner=runner, metrics=metrics, directory=directory)


def routes(service: TwilioCalls, settings: Settings, auth: HttpAuth) -> list[APIRouter]:
    return [http.routes(service), voice_token.routes(settings.twilio, auth)]
