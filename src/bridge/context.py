"""The daemon's parts, wired explicitly in one place (like a Wazo plugin's `plugin.py`)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from bridge.calls.events import Event
from bridge.calls.registry import CallRegistry
from bridge.calls.runner import CallRunner
from bridge.calls.supervision import SupervisionByPath
from bridge.carriers.twilio.service import TwilioCalls
from bridge.carriers.twilio.supervision import TwilioSupervision
from bridge.config import Settings
from bridge.control.service import ControlService
from bridge.directory.loader import DirectoryError
from bridge.directory.model import AccountStatus, Directory
from bridge.directory.store import DirectoryStore
from bridge.observability.metrics import Metrics
from bridge.presence.service import PresenceService, utc_now
from bridge.routing.service import RoutingService
from bridge.sip.b2bua import TrunkSettings
from bridge.sip.service import SipService
from bridge.sip.supervision import SipSupervision
from bridge.tokens import TokenService
from bridge.ws.plugin import build_gateway
from bridge.ws.services import Gateway

log = structlog.get_logger("bridge")


@dataclass
class AppContext:
    settings: Settings
    store: DirectoryStore
    presence: PresenceService
    routing: RoutingService
    calls: CallRegistry
    metrics: Metrics
    tokens: TokenService
    clock: Callable[[], datetime]
    # Names of listeners (HTTP, later SIP) that are up; /readyz needs all of them.
    sip: SipService | None = None
    listeners_expected: set[str] = field(default_factory=lambda: {"http"})
    listeners_up: set[str] = field(default_factory=set)
    draining: bool = False
    # The carrier path (Twilio webhooks); always built, it answers 503 until configured.
    carrier: TwilioCalls | None = None
    # The app-client WebSocket gateway (`/ws`); its offer service is `ws.offers`.
    ws: Gateway | None = None
    # The one call runner under every dial path (its `subscribe` gets every call event).
    runner: CallRunner | None = None
    # Listen / whisper / barge and recording controls (HTTP routes and WebSocket frames).
    control: ControlService | None = None

    def ready(self) -> tuple[bool, dict[str, object]]:
        checks: dict[str, object] = {
            "directory_version": self.store.current.version,
            "listeners": sorted(self.listeners_up),
            "draining": self.draining,
        }
        missing = self.listeners_expected - self.listeners_up
        if missing:
            checks["missing_listeners"] = sorted(missing)
        trunk = self.sip.trunk_registration if self.sip is not None else None
        trunk_failed = False
        if trunk is not None:
            checks["trunk_registration"] = trunk.status()
            trunk_failed = trunk.state == "failed"
        return (not missing and not self.draining and not trunk_failed), checks

    def reload_directory(self) -> Directory:
        """Re-read the directory file; a bad file is refused and logged, the old one kept."""
        try:
            directory = self.store.reload()
        except DirectoryError as exc:
            self.metrics.directory_reloads.labels(result="refused").inc()
            log.error("directory_reload_refused", problems=[str(p) for p in exc.problems])
            raise
        self.metrics.directory_reloads.labels(result="ok").inc()
        return directory


def build_context(
    settings: Settings,
    directory: Directory,
    clock: Callable[[], datetime] = utc_now,
    metrics: Metrics | None = None,
) -> AppContext:
    metrics = metrics or Metrics()
    store = DirectoryStore(directory, settings.directory_path)
    presence = PresenceService(lambda: store.current, clock)
    routing = RoutingService(store, presence, metrics, clock)
    calls = CallRegistry(on_count=metrics.live_calls.set)
    # One call runner under every dial path (SIP and the carrier).
    runner = CallRunner(
        routing=routing, presence=presence, registry=calls, metrics=metrics, wall_clock=clock
    )
    sip = (
        SipService.from_settings(settings, lambda: store.current, presence, metrics)
        if settings.sip.enabled
        else None
    )
    if sip is not None:
        sip.enable_calls(
            runner=runner,
            trunk=TrunkSettings(
                allow=tuple(
                    ipaddress.ip_network(n, strict=False) for n in settings.sip.trunk_allow
                ),
                uri=settings.sip.trunk_uri,
                caller_id=settings.sip.trunk_caller_id,
                username=settings.sip.trunk_username,
                password=settings.sip.trunk_password,
            ),
        )

    def on_change(new: Directory, old: Directory | None) -> None:
        counts = Counter(user.status for user in new.users)
        for status in AccountStatus:
            metrics.directory_users.labels(status=status.value).set(counts.get(status, 0))
        metrics.directory_ring_groups.set(len(new.ring_groups))
        metrics.directory_lines.set(len(new.lines))
        metrics.directory_version.set(new.version)
        if old is not None:
            for gone in old.users_by_id.keys() - new.users_by_id.keys():
                presence.forget(gone)
                if sip is not None:
                    sip.forget_user(gone)
            if sip is not None:
                for user in new.users:
                    if user.status is AccountStatus.SUSPENDED:
                        sip.forget_user(user.id)  # a suspended user's phones stop at once

    store.subscribe(on_change)
    carrier = TwilioCalls.from_settings(
        settings,
        runner=runner,
        metrics=metrics,
        directory=lambda: store.current,
    )
    tokens = TokenService(settings.auth.jwt_secret, settings.auth.token_ttl_seconds)
    ws = build_gateway(
        settings,
        store=store,
        presence=presence,
        calls=calls,
        tokens=tokens,
        metrics=metrics,
        clock=clock,
    )
    runner.use_offers(ws.offers)  # app users in a plan are rung on their WebSocket sessions
    return AppContext(
        settings=settings,
        store=store,
        presence=presence,
        routing=routing,
        calls=calls,
        sip=sip,
        metrics=metrics,
        tokens=tokens,
        clock=clock,
        carrier=carrier,
        runner=runner,
        ws=ws,
        control=build_control(carrier, calls, metrics),
    )


def build_control(carrier: TwilioCalls, calls: CallRegistry, metrics: Metrics) -> ControlService:
    """The call controls: one `Supervision` that sends each call to its dial path's (the
    carrier's conference; SIP calls refuse until the media engine), and the publisher of
    their `ControlAttempted` events on the call."""
    supervision = SupervisionByPath(
        calls,
        {"carrier": TwilioSupervision(carrier), "sip": SipSupervision(calls)},
        default="carrier",
    )

    def publish(call_id: str, event: Event) -> None:
        call = carrier.find(call_id)  # (only carrier calls publish events for now)
        if call is not None:
            carrier.publish(call, event)

    return ControlService(supervision, publish, metrics=metrics)
