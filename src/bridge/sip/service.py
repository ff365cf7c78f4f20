"""The SIP application (transaction user): registrar, OPTIONS, keepalives, calls.

It receives the transaction layer's events from the endpoint and answers through it; calls
(INVITE, CANCEL, in-dialog requests) go to the B2BUA (`bridge.sip.b2bua`) when it is
enabled, else an INVITE is refused with 480 so a trunk fails over instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from bridge.calls.media import MediaError
from bridge.calls.ports import MediaPort
from bridge.calls.runner import CallRunner
from bridge.config import Settings
from bridge.config import SipSettings as SipSettingsModel
from bridge.directory.model import Directory
from bridge.media.rtpengine import RtpengineMedia
from bridge.observability.metrics import Metrics
from bridge.presence.service import ReachabilityPort
from bridge.sip.b2bua import MessageStore, Prompts, SipCalls, SipMediaOptions, TrunkSettings
from bridge.sip.bindings import BindingStore, Flow, RegistrarSettings
from bridge.sip.bodies import OFFER_ANSWER_METHODS, keep_session_description
from bridge.sip.dialog import ViaSpec
from bridge.sip.digest import Algorithm, held_ha1
from bridge.sip.ids import random_hex
from bridge.sip.model import (
    Headers,
    SipMessage,
    SipRequest,
    SipResponse,
    make_response,
    param_of,
    split_comma_values,
)
from bridge.sip.overload import OVERLOAD_TAG, Admission, OverloadPolicy
from bridge.sip.overload_feedback import LossFeedback, asks_for_feedback, with_feedback
from bridge.sip.parser import ALLOWED_METHODS, SUPPORTED_OPTIONS, validate_request
from bridge.sip.registrar import AuthPolicy, RegistrarService
from bridge.sip.session_timers import SessionTimerSettings
from bridge.sip.state import BindingJournal
from bridge.sip.transaction import (
    AckFor2xx,
    Address,
    Event,
    NewRequest,
    Response,
    Timeout,
    TransportError,
    new_branch,
)
from bridge.sip.transport import SipEndpoint
from bridge.sip.trunk import TrunkAccount, TrunkRegistration

log = structlog.get_logger("bridge.sip")


@dataclass(frozen=True, slots=True)
class SipServiceSettings:
    auth: AuthPolicy  # realm, nonce lifetime, bans, digest algorithms
    nonce_secret: bytes
    registrar: RegistrarSettings = field(default_factory=RegistrarSettings)
    keepalive_seconds: float = 30.0  # OPTIONS to every UDP flow this often; 0 = never
    trunk_account: TrunkAccount | None = None  # register the bridge at the provider
    session: SessionTimerSettings = field(default_factory=SessionTimerSettings)
    overload: OverloadPolicy | None = field(default_factory=OverloadPolicy)  # None: off
    state_path: Path | None = None  # registrations kept across restarts (bridge.sip.state)
    srtp: str = "off"  # SRTP on calls signalled over TLS ([sip.tls] srtp; off without TLS)


class MetricsCounters:
    """The transport's counters, as Prometheus metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._messages = metrics.sip_messages

    def message(self, direction: str, message: SipMessage) -> None:
        if isinstance(message, SipRequest):
            method = message.method if message.method in _COUNTED_METHODS else "other"
        else:
            method = _STATUS_CLASSES[message.status // 100]
        self._messages.inc((direction, method))

    def parse_error(self, transport: str) -> None:
        self._metrics.sip_malformed.labels(transport=transport).inc()

    def tls_refused(self, reason: str) -> None:
        self._metrics.sip_tls_refused.labels(reason=reason).inc()

    def stream_refused(self, transport: str) -> None:
        self._metrics.sip_stream_refused.labels(transport=transport).inc()


_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 7)}

_COUNTED_METHODS = frozenset(
    {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "INFO", "UPDATE", "PRACK"}
)


class SipService:
    def __init__(
        self,
        directory: Callable[[], Directory],
        settings: SipServiceSettings,
        reachability: ReachabilityPort | None,
        metrics: Metrics,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._directory = directory
        self._wall = wall_clock
        self.registrar = RegistrarService(
            directory=directory,
            policy=settings.auth,
            nonce_secret=settings.nonce_secret,
            bindings=BindingStore(settings.registrar),
            reachability=reachability,
            settings=settings.registrar,
        )
        # Read when scraped, not set on every REGISTER.
        metrics.sip_registrations.set_function(lambda: len(self.registrar.bindings))
        self._keepalives: dict[str, Flow] = {}  # OPTIONS transaction id -> flow probed
        self.calls: SipCalls | None = None
        self.trunk_registration: TrunkRegistration | None = None
        # Calls (the B2BUA, built when the endpoint starts): the runner and the trunk.
        self._runner: CallRunner | None = None
        self._trunk = TrunkSettings()
        # The media engine of the calls (None: SDP end to end), built on the loop at start.
        self._media_factory: Callable[[asyncio.AbstractEventLoop], MediaPort] | None = None
        self._call_options: dict[str, Any] = {}
        self.media: MediaPort | None = None
        # rtpengine instead ([media] engine = "rtpengine"): SDP rewritten in transit.
        self._relay_factory: Callable[[], RtpengineMedia] | None = None
        self.relay: RtpengineMedia | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.endpoint: SipEndpoint | None = None
        self.journal: BindingJournal | None = None  # bridge.sip.state
        # Overload control (bridge.sip.overload): the gate of new INVITEs and REGISTERs.
        self.admission: Admission | None = None
        # RFC 7339 (bridge.sip.overload_feedback): what share of new calls we ask clients
        # that do overload control to hold back.
        self.feedback: LossFeedback | None = None
        self.loop_lag = 0.0  # seconds the event loop was late, as last measured

    def enable_calls(
        self,
        *,
        runner: CallRunner,
        trunk: TrunkSettings,
        media: Callable[[asyncio.AbstractEventLoop], MediaPort] | None = None,
        media_options: SipMediaOptions | None = None,
        prompts: Prompts | None = None,
        messages: MessageStore | None = None,
        relay: Callable[[], RtpengineMedia] | None = None,
    ) -> None:
        """Take calls: INVITEs from the trunk and the phones, run by `runner` (the B2BUA is
        built when the endpoint starts), their audio anchored in the engine `media` makes,
        or relayed by the rtpengine `relay` makes."""
        self._runner = runner
        self._trunk = trunk
        self._media_factory = media
        self._relay_factory = relay
        self._call_options = {
            "media_options": media_options,
            "prompts": prompts,
            "messages": messages,
        }

    # -- life cycle ------------------------------------------------------------------------
    async def start(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint
        # Read when scraped, not set on every message.
        self.metrics.sip_transactions.set_function(lambda: len(endpoint.layer))
        loop = asyncio.get_running_loop()
        if self.settings.state_path is not None:  # before the listener: phones reachable at once
            self.journal = BindingJournal(self.settings.state_path)
            kept, bans = await asyncio.to_thread(self.journal.load, self._wall(), loop.time())
            restored = self.registrar.restore(kept, loop.time())
            self.registrar.bans.restore_bans(bans, loop.time())
            self.journal.saved_version = self._state_version()
            if kept or bans:
                log.info(
                    "sip_bindings_restored", bindings=len(restored), read=len(kept), bans=len(bans)
                )
            self._tasks.append(asyncio.create_task(self._state_loop(), name="sip-state"))
        self._warn_unusable_hashes()
        await endpoint.start()
        if self.settings.overload is not None:
            self.admission = Admission(self.settings.overload, now=endpoint.now())
            endpoint.gate = self._admit
            if self.settings.overload.feedback:
                self.feedback = LossFeedback(
                    validity_ms=self.settings.overload.feedback_validity_ms
                )
                endpoint.annotate = self._annotate
                self.metrics.sip_overload_feedback.labels(peer="clients").set_function(
                    lambda: self.feedback.percent if self.feedback is not None else 0
                )
            self._tasks.append(asyncio.create_task(self._overload_loop(), name="sip-overload"))

        def local(transport: str) -> ViaSpec:
            host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
            port = endpoint.tls_port if transport.lower() == "tls" else endpoint.port
            return ViaSpec(f"{host}:{port}", transport.upper())

        if self.settings.trunk_account is not None:
            self.trunk_registration = TrunkRegistration(
                self.settings.trunk_account,
                send_request=endpoint.request,
                local=local,
                schedule=lambda at, fn: loop.call_at(at, fn),
                clock=endpoint.now,
            )
            self.trunk_registration.start()
        if self._media_factory is not None and self.media is None:
            self.media = self._media_factory(loop)
        if self._relay_factory is not None and self.relay is None:
            self.relay = self._relay_factory()
            try:
                await self.relay.start()
                log.info("rtpengine_answering", ng=self.relay.client.address)
            except MediaError as exc:
                # Calls get 503 until it answers; the check below says when it does.
                ng = self.relay.client.address
                log.error("rtpengine_not_answering", ng=ng, reason=exc.reason)
            self._tasks.append(asyncio.create_task(self._relay_check_loop(), name="sip-rtpengine"))
        if self._runner is not None:
            self.calls = SipCalls(
                runner=self._runner,
                trunk=self._trunk,
                registrar=self.registrar,
                directory=self._directory,
                wall_clock=self._wall,
                metrics=self.metrics,
                realm=self.settings.auth.realm,
                clock=endpoint.now,
                schedule=lambda at, fn: loop.call_at(at, fn),
                cancel_timer=lambda handle: handle.cancel(),  # type: ignore[attr-defined]
                send_request=endpoint.request,
                respond=endpoint.respond,
                send_stateless=endpoint.send_stateless,
                local=local,
                session=self.settings.session,
                media=self.media,
                relay=self.relay,
                srtp=self.settings.srtp,
                **self._call_options,
            )
        self._tasks.append(asyncio.create_task(self._expiry_loop(), name="sip-expiry"))
        if self.settings.keepalive_seconds > 0:
            self._tasks.append(asyncio.create_task(self._keepalive_loop(), name="sip-keepalive"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.journal is not None:
            await self._save_state()  # (the last changes, on the way out)
        if self.endpoint is not None:
            await self.endpoint.stop()
        stop_media = getattr(self.media, "stop", None)
        if stop_media is not None:
            stop_media()
        if self.relay is not None:
            with contextlib.suppress(MediaError):
                await self.relay.close()

    async def _relay_check_loop(self, every: float = 5.0) -> None:
        """Ask rtpengine whether it answers, so that calls refused while it did not (503)
        are taken again once it is back, and `/readyz` says which."""
        relay = self.relay
        assert relay is not None
        while True:
            await asyncio.sleep(every)
            was = relay.answering
            try:
                await relay.ping()
            except MediaError:
                pass
            except Exception:  # a bug must not end the checking for good: the next try
                log.exception("rtpengine_check_failed")
            if relay.answering != was:
                event = "rtpengine_answering" if relay.answering else "rtpengine_not_answering"
                (log.info if relay.answering else log.error)(event, ng=relay.client.address)

    def forget_user(self, user_id: str) -> None:
        self.registrar.forget_user(user_id)
        self._update_gauges()

    # -- events from the transaction layer ---------------------------------------------------
    def on_event(self, event: Event, endpoint: SipEndpoint) -> None:
        calls = self.calls
        trunk = self.trunk_registration
        if (
            trunk is not None
            and isinstance(event, Response | Timeout | TransportError)
            and trunk.owns(event.transaction_id)
        ):
            if isinstance(event, Response):
                trunk.response(event.response)
            else:
                trunk.failed(type(event).__name__)
            return
        if isinstance(event, NewRequest):
            self._request(event, endpoint)
        elif isinstance(event, AckFor2xx):
            if calls is not None:
                _session_description_only(event.request)
                calls.ack(event.request)
        elif calls is not None and isinstance(event, Response) and calls.owns(event.transaction_id):
            _session_description_only(event.response)
            calls.response(event.transaction_id, event.response)
        elif (
            calls is not None
            and isinstance(event, Timeout | TransportError)
            and calls.owns(event.transaction_id)
        ):
            calls.failed(event.transaction_id, type(event).__name__)
        elif isinstance(event, Response):
            flow = self._keepalives.pop(event.transaction_id, None)
            if flow is not None and event.response.status >= 200:
                self.registrar.set_flow_reachable(flow, True)
        elif isinstance(event, Timeout | TransportError):
            flow = self._keepalives.pop(event.transaction_id, None)
            if flow is not None:
                changed = self.registrar.set_flow_reachable(flow, False)
                if changed:
                    log.info(
                        "sip_flow_dead", flow=f"{flow.host}:{flow.port}", contacts=len(changed)
                    )

    def on_connection_lost(self, peer: Address, transport: str, endpoint: SipEndpoint) -> None:
        self.registrar.set_flow_reachable(Flow(transport, peer[0], peer[1]), False)

    def _request(self, event: NewRequest, endpoint: SipEndpoint) -> None:
        request = event.request
        problem = validate_request(request)
        if problem is not None:
            response = problem.response(to_tag=_tag())
            if response is not None:
                endpoint.respond(event.transaction_id, response)
            return
        method = request.method
        if method in OFFER_ANSWER_METHODS:
            refusal = keep_session_description(request)  # (SDP beside ISUP: the SDP)
            if refusal is not None:
                log.info(
                    "sip_body_refused",
                    method=method,
                    status=refusal.status,
                    content_type=request.headers.get("Content-Type"),
                )
                response = make_response(
                    request, refusal.status, refusal.reason, to_tag=_tag(), extra=refusal.extra
                )
                endpoint.respond(event.transaction_id, response)
                return
        calls = self.calls
        if calls is not None and method != "REGISTER":
            to_tag = param_of(request.headers.get("To"), "tag")
            if method == "INVITE" and not to_tag:
                calls.new_invite(event.transaction_id, request, event.source, event.transport)
                return
            if method == "CANCEL":
                invite = endpoint.layer.find_invite_for_cancel(request)
                calls.cancel(event.transaction_id, request, invite)
                return
            if to_tag and calls.in_dialog(
                event.transaction_id, request, event.source, event.transport
            ):
                return
        if method == "REGISTER":
            outcome = self.registrar.handle(
                request, event.source, event.transport, self._wall(), endpoint.now()
            )
            failed = outcome.outcome in ("auth_failed", "banned")
            if failed:
                self.metrics.sip_auth_failures.labels(reason=outcome.outcome).inc()
            if outcome.outcome == "challenged":
                # RFC 3261 §8.2.7: challenges are answered statelessly, so unauthenticated
                # REGISTERs (a phone's first, or a flood) keep no transaction for 32 s.
                endpoint.respond_and_forget(event.transaction_id, outcome.response)
            else:
                endpoint.respond(event.transaction_id, outcome.response)
            # Bans only start on a failure (and end with time: the expiry loop recounts).
            self._update_gauges(bans=failed)
        elif method == "OPTIONS":
            endpoint.respond(event.transaction_id, self._options_ok(request))
        elif method == "INVITE" and param_of(request.headers.get("To"), "tag"):
            # A re-INVITE of no dialog of ours (RFC 3261 §12.2.2): 481, not "try later".
            endpoint.respond(
                event.transaction_id,
                make_response(request, 481, "Call/Transaction Does Not Exist"),
            )
        elif method == "INVITE":
            response = make_response(
                request,
                480,
                "Temporarily Unavailable",
                to_tag=_tag(),
                extra=[("Reason", 'SIP;cause=480;text="calls are not routed over SIP yet"')],
            )
            endpoint.respond(event.transaction_id, response)
        elif method in ("BYE", "CANCEL", "UPDATE", "INFO", "PRACK"):
            # No dialog or transaction of ours matches (calls are not handled yet).
            endpoint.respond(
                event.transaction_id,
                make_response(request, 481, "Call/Transaction Does Not Exist", to_tag=_tag()),
            )
        else:
            allow = ("Allow", ", ".join(ALLOWED_METHODS))
            endpoint.respond(
                event.transaction_id,
                make_response(request, 405, "Method Not Allowed", to_tag=_tag(), extra=[allow]),
            )

    def _warn_unusable_hashes(self) -> None:
        """Users whose phones cannot authenticate: no hash for any algorithm offered."""
        offered = set(self.settings.auth.algorithms)
        stuck = [
            user.id
            for user in self._directory().users
            if user.sip is not None
            and not any(held_ha1(a, user.sip.ha1_md5, user.sip.ha1_sha256) for a in offered)
        ]
        if stuck:
            log.warning(
                "sip_users_cannot_authenticate",
                users=stuck[:20],
                count=len(stuck),
                offered=[a.value for a in self.settings.auth.algorithms],
                hint="give them a hash for an offered algorithm, or change sip.digest_algorithms",
            )

    # -- state kept across restarts --------------------------------------------------------
    async def _state_loop(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self._save_state()
            except Exception:  # a bug must not end the saving for good: the next try
                log.exception("sip_state_save_failed")

    async def _save_state(self) -> None:
        journal, version = self.journal, self._state_version()
        if journal is None or version == journal.saved_version:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        bindings, bans = self.registrar.bindings.all(), self.registrar.bans.bans(now)
        await asyncio.to_thread(journal.save, bindings, bans, version, self._wall(), now)

    def _state_version(self) -> tuple[int, int]:
        return self.registrar.bindings.version, self.registrar.bans.version

    # -- overload control ------------------------------------------------------------------
    def _admit(
        self, request: SipRequest, source: Address, transport: str, waited: float
    ) -> SipResponse | None:
        """The endpoint's gate: None admits the request, a 503 refuses it (stateless)."""
        admission, endpoint = self.admission, self.endpoint
        assert admission is not None and endpoint is not None
        now = endpoint.now()
        if transport != "udp":  # (a datagram's own wait includes any lag of the loop)
            waited = self.loop_lag
        if request.method == "REGISTER":
            refusal = admission.registration(now, waited, transactions=len(endpoint.layer))
        elif param_of(request.headers.get("To"), "tag"):
            return None  # in-dialog: always served
        else:
            refusal = admission.call(
                now,
                waited,
                source=source[0],
                trunk=self.calls is not None and self.calls.trunk.allows(source[0], source[1]),
                live_calls=len(self._runner) if self._runner is not None else 0,
                transactions=len(endpoint.layer),
            )
        if refusal is None:
            return None
        return make_response(
            request,
            503,
            "Service Unavailable",
            to_tag=OVERLOAD_TAG,
            extra=[
                ("Retry-After", str(refusal.retry_after)),
                ("Reason", f'SIP;cause=503;text="{refusal.reason}"'),
            ],
        )

    def _annotate(self, response: SipResponse) -> None:
        """The endpoint's hook on responses: our loss feedback into the top Via of a response
        to a client that asked for it (RFC 7339 §5.2), while there is something to say."""
        feedback, endpoint = self.feedback, self.endpoint
        if feedback is None or endpoint is None:
            return
        params = feedback.params(endpoint.now())
        if params is None:
            return
        line = response.headers.get("Via")
        vias = split_comma_values(line) if line else []
        if not vias or not asks_for_feedback(vias[0]):
            return
        via = vias[0]
        response.headers.pop_first_value("Via")
        response.headers.prepend("Via", with_feedback(via, params))

    def carrier_gate(self) -> tuple[str, int] | None:
        """The carrier path's new calls, against the same limits and load (the event loop's
        lag: an HTTP request has no kernel timestamp): (reason, retry-after) or None."""
        admission, endpoint = self.admission, self.endpoint
        if admission is None or endpoint is None:
            return None
        refusal = admission.call(
            endpoint.now(),
            self.loop_lag,
            source="",
            trunk=False,
            live_calls=len(self._runner) if self._runner is not None else 0,
        )
        return None if refusal is None else (refusal.reason, refusal.retry_after)

    async def _overload_loop(self, every: float = 0.05) -> None:
        """The event loop's lag (part of the load signal), the state changes (logged), and
        the admission counts as metrics."""
        admission = self.admission
        assert admission is not None
        loop = asyncio.get_running_loop()
        reported: dict[tuple[str, str], int] = {}
        ticks = 0
        while True:
            before = loop.time()
            await asyncio.sleep(every)
            now = loop.time()
            self.loop_lag = max(0.0, now - before - every)
            try:
                ticks = self._overload_tick(admission, now, reported, ticks)
            except Exception:  # a bug must not freeze the overload state: the next tick
                log.exception("sip_overload_tick_failed")

    def _overload_tick(
        self, admission: Admission, now: float, reported: dict[tuple[str, str], int], ticks: int
    ) -> int:
        """One tick of `_overload_loop`: the state change (logged), every tenth the counts."""
        metrics = self.metrics
        change = admission.tick(now)
        feedback = self.feedback
        if feedback is not None:
            offered = sum(n for (kind, _), n in admission.counts.items() if kind == "call")
            refused = offered - admission.counts.get(("call", "admitted"), 0)
            queued = admission.queue_delay > admission.policy.queue_delay_target / 2 > 0
            if feedback.update(now, offered, refused, queued=queued):
                log.info("sip_overload_feedback", percent=feedback.percent)
        if change is not None:
            metrics.sip_overloaded.set(1 if change.overloaded else 0)
            if change.overloaded:
                log.warning(
                    "sip_overloaded",
                    queue_delay_ms=round(change.queue_delay * 1000, 1),
                    loop_lag_ms=round(self.loop_lag * 1000, 1),
                )
            else:
                log.info("sip_overload_over", refused=change.refused)
        ticks += 1
        if ticks % 10 == 0:  # twice a second: the counts, the queue's delay
            for key, count in admission.counts.items():
                if count != reported.get(key, 0):
                    kind, outcome = key
                    metrics.sip_admission.labels(kind=kind, outcome=outcome).inc(
                        count - reported.get(key, 0)
                    )
                    reported[key] = count
            metrics.sip_queue_delay.set(admission.queue_delay)
        return ticks

    def _options_ok(self, request: SipRequest) -> SipResponse:
        return make_response(
            request,
            200,
            "OK",
            to_tag=_tag(),
            extra=[
                ("Allow", ", ".join(ALLOWED_METHODS)),
                ("Accept", "application/sdp"),
                ("Supported", ", ".join(sorted(SUPPORTED_OPTIONS))),
            ],
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        directory: Callable[[], Directory],
        reachability: ReachabilityPort | None,
        metrics: Metrics,
    ) -> SipService:
        sip = settings.sip
        secret = (sip.nonce_secret or "").encode() or hmac.new(
            settings.auth.jwt_secret.encode(), b"bridge sip nonce", hashlib.sha256
        ).digest()
        return cls(
            directory,
            SipServiceSettings(
                auth=AuthPolicy(
                    realm=sip.realm,
                    nonce_lifetime=sip.nonce_lifetime_seconds,
                    max_failures=sip.auth_max_failures,
                    failure_window=sip.auth_window_seconds,
                    ban_seconds=sip.ban_seconds,
                    algorithms=tuple(Algorithm(name) for name in sip.digest_algorithms),
                ),
                nonce_secret=secret,
                registrar=RegistrarSettings(
                    min_expires=sip.min_expires,
                    max_expires=sip.max_expires,
                    default_expires=sip.default_expires,
                ),
                keepalive_seconds=sip.keepalive_seconds,
                trunk_account=_trunk_account(sip),
                session=SessionTimerSettings(expires=sip.session_expires, min_se=sip.min_se),
                state_path=settings.sip_state_file,
                srtp=tls.srtp if (tls := settings.sip_tls()) is not None else "off",
                overload=OverloadPolicy(
                    max_calls=sip.overload.max_calls,
                    calls_per_second=sip.overload.calls_per_second,
                    trunk_calls_per_second=sip.overload.trunk_calls_per_second,
                    registrations_per_second=sip.overload.registrations_per_second,
                    max_transactions=sip.overload.max_transactions,
                    queue_delay_target=sip.overload.queue_delay_target_ms / 1000,
                    interval=sip.overload.interval_seconds,
                    retry_after_seconds=sip.overload.retry_after_seconds,
                    feedback=sip.overload.feedback,
                    feedback_validity_ms=sip.overload.feedback_validity_ms,
                ),
            ),
            reachability,
            metrics,
        )

    # -- periodic work ---------------------------------------------------------------------
    async def _expiry_loop(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            if self.endpoint is None:
                continue
            try:
                gone = self.registrar.expire(self.endpoint.now())
                if gone:
                    log.info("sip_bindings_expired", count=len(gone))
                self._update_gauges()
            except Exception:  # a bug must not stop bindings expiring: the next second
                log.exception("sip_expiry_failed")

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.keepalive_seconds)
            if self.endpoint is not None:
                try:
                    self.probe_flows()
                except Exception:  # a bug must not end the keepalives: the next round
                    log.exception("sip_keepalive_failed")

    def probe_flows(self) -> int:
        """Send one OPTIONS to every UDP flow with a binding; a timeout marks it dead."""
        endpoint = self.endpoint
        if endpoint is None:
            return 0
        sent = 0
        for flow, contact in self.registrar.bindings.flows().items():
            if flow.transport != "udp" or flow in self._keepalives.values():
                continue
            transaction_id = endpoint.request(
                self._keepalive_request(flow, contact, endpoint), (flow.host, flow.port), "udp"
            )
            self._keepalives[transaction_id] = flow
            sent += 1
        return sent

    def _keepalive_request(self, flow: Flow, contact: str, endpoint: SipEndpoint) -> SipRequest:
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        headers = Headers(
            [
                ("Via", f"SIP/2.0/UDP {host}:{endpoint.port};branch={new_branch()};rport"),
                ("Max-Forwards", "70"),
                ("From", f"<sip:keepalive@{self.settings.auth.realm}>;tag={_tag()}"),
                ("To", f"<{contact}>"),
                ("Call-ID", f"ka-{random_hex(8)}"),
                ("CSeq", "1 OPTIONS"),
            ]
        )
        return SipRequest("OPTIONS", contact, headers)

    def _update_gauges(self, *, bans: bool = True) -> None:
        if bans and self.endpoint is not None:
            banned = self.registrar.banned_sources(self.endpoint.now())
            self.metrics.sip_banned_sources.set(len(banned))


def _trunk_account(sip: SipSettingsModel) -> TrunkAccount | None:
    if not (sip.trunk_register and sip.trunk_uri and sip.trunk_username):
        return None
    destination = TrunkSettings(uri=sip.trunk_uri).destination()
    assert destination is not None
    host, address, transport = destination
    return TrunkAccount(
        host=host,
        destination=address,
        transport=transport,
        username=sip.trunk_username,
        password=sip.trunk_password or "",
        expires=sip.trunk_register_expires,
    )


def _tag() -> str:
    return random_hex(5)


def _session_description_only(message: SipMessage) -> None:
    """An ACK or a response with a multipart body, reduced to its SDP: nothing can be
    answered to them, so a body that cannot be taken is dropped (the call sees no SDP)."""
    refusal = keep_session_description(message)
    if refusal is not None:
        log.info(
            "sip_body_dropped",
            status=refusal.status,
            reason=refusal.reason,
            content_type=message.headers.get("Content-Type"),
        )
        message.body = b""
        message.headers.remove("Content-Type")
