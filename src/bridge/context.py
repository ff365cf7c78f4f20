"""The daemon's parts, built once at start-up from explicit dependencies.

Each feature wires itself through its own `plugin.py` (`sip/`, `carriers/twilio/`, `ws/`,
`control/`); this module builds the shared services (directory, presence, routing, the call
registry and the one call runner) and hands them in. The HTTP application is assembled
above this module (`bridge.api.app.create_app`), so nothing here imports an HTTP route.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from bridge.calls.events import Event
from bridge.calls.registry import CallRegistry
from bridge.calls.runner import CallRunner
from bridge.carriers.twilio.plugin import build_carrier
from bridge.carriers.twilio.service import TwilioCalls
from bridge.carriers.twilio.supervision import TwilioSupervision
from bridge.config import Settings
from bridge.control.plugin import build_control
from bridge.control.service import ControlService
from bridge.directory.loader import DirectoryError
from bridge.directory.model import AccountStatus, Directory
from bridge.directory.store import DirectoryStore
from bridge.events.service import EventsService
from bridge.logins import LoginService
from bridge.observability.metrics import Metrics
from bridge.presence.service import PresenceService, utc_now
from bridge.recordings.plugin import build_archive, carrier_voicemails
from bridge.recordings.store import MediaArchive
from bridge.routing.service import RoutingService
from bridge.sip.plugin import build_sip
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
    # Recordings and voicemail messages of SIP calls (`[media] recordings_dir`).
    archive: MediaArchive | None = None
    # Console logins: passwords, refresh sessions, lockouts (`/api/v1/auth/*`).
    logins: LoginService | None = None
    # The durable outbox and its webhooks (`[events]`), started by the daemon.
    events: EventsService | None = None

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
        relay = self.sip.relay if self.sip is not None else None
        relay_down = relay is not None and not relay.answering
        if relay is not None:  # SIP calls get 503 while rtpengine does not answer
            checks["rtpengine"] = "answering" if relay.answering else "not answering"
        events_down = False
        if self.events is not None and self.events.started:
            events_ok, why = self.events.ready()
            events_down = not events_ok
            checks["events"] = why  # "ok", or why the outbox cannot be written
        ready = (
            not missing
            and not self.draining
            and not trunk_failed
            and not relay_down
            and not events_down
        )
        return ready, checks

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

    store.subscribe(on_change)
    archive = build_archive(settings, clock=clock)
    sip = build_sip(
        settings,
        store=store,
        reachability=presence,
        metrics=metrics,
        runner=runner,
        messages=archive,
    )
    carrier = build_carrier(
        settings, runner=runner, metrics=metrics, directory=lambda: store.current
    )
    if sip is not None:  # one overload control for both paths' new calls
        carrier.gate = sip.carrier_gate
    # The carrier's voicemails are listed with the SIP path's (their audio stays there).
    runner.subscribe(carrier_voicemails(archive, carrier.find, clock))
    control = build_control(
        registry=calls,
        runner=runner,
        by_path={
            "carrier": TwilioSupervision(carrier),
            "sip": SipSupervision(
                calls,
                lambda: sip.calls if sip is not None else None,
                archive,
                wall_clock=lambda: clock().timestamp(),
            ),
        },
        default_path="carrier",
        publish_ended=_publish_on_ended(carrier),
        metrics=metrics,
    )
    tokens = TokenService(settings.auth.jwt_secret, settings.auth.token_ttl_seconds)
    logins = LoginService(settings.auth, lambda: store.current, tokens)
    ws = build_gateway(
        settings,
        store=store,
        presence=presence,
        calls=calls,
        tokens=tokens,
        metrics=metrics,
        clock=clock,
    )
    ws.use_control(control)  # call-control frames use the same service as the HTTP routes
    runner.use_offers(ws.offers)  # app users in a plan are rung on their WebSocket sessions
    ws.offers.hangup_call = runner.app_hangup  # and hang up the call they answered there
    events = EventsService(
        settings,
        runner=runner,
        store=store,
        metrics=metrics,
        wall=lambda: clock().timestamp(),
        archive=archive,
        presence=presence,
    )
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
        control=control,
        archive=archive,
        logins=logins,
        events=events,
    )


def _publish_on_ended(carrier: TwilioCalls) -> Callable[[str, Event], None]:
    """A control attempt on a carrier call that has just ended still joins its events (the
    carrier remembers ended calls for late callbacks)."""

    def publish(call_id: str, event: Event) -> None:
        call = carrier.find(call_id)
        if call is not None:
            carrier.publish(call, event)

    return publish
