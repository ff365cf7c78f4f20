"""Prometheus metrics, one registry per daemon (tests build as many daemons as they like)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)
from prometheus_client.core import CounterMetricFamily, Metric


class LabelledCounts:
    """A counter family for the hottest path (every SIP message in and out): plain integers in
    a dict, turned into samples only when Prometheus scrapes. A `Counter` child's `inc()` takes
    a lock and checks observability on every call, several times per call set-up; the daemon's
    counting all happens on the event loop's thread, and the scrape runs there too."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        *,
        registry: CollectorRegistry,
    ) -> None:
        self.name = name  # without `_total`, as `CounterMetricFamily` wants it
        self.documentation = documentation
        self.labelnames = labelnames
        self.counts: dict[tuple[str, ...], int] = {}
        registry.register(self)

    def inc(self, labels: tuple[str, ...], amount: int = 1) -> None:
        counts = self.counts
        counts[labels] = counts.get(labels, 0) + amount

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, count in list(self.counts.items()):
            family.add_metric(labels, count)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Children of this instance's metrics (they live as long as it does: ids stay unique).
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        process_collector.ProcessCollector(registry=self.registry)
        platform_collector.PlatformCollector(registry=self.registry)
        gc_collector.GCCollector(registry=self.registry)
        r = self.registry
        self.directory_users = Gauge(
            "bridge_directory_users",
            "Users in the directory, by account status",
            ["status"],
            registry=r,
        )
        self.directory_ring_groups = Gauge(
            "bridge_directory_ring_groups", "Ring groups in the directory", registry=r
        )
        self.directory_lines = Gauge("bridge_directory_lines", "Lines in the directory", registry=r)
        self.directory_version = Gauge(
            "bridge_directory_version", "Version of the directory snapshot in use", registry=r
        )
        self.directory_reloads = Counter(
            "bridge_directory_reloads_total", "Directory reloads from file", ["result"], registry=r
        )
        self.route_decisions = Counter(
            "bridge_route_decisions_total", "Routing decisions, by outcome", ["result"], registry=r
        )
        self.route_decision_seconds = Histogram(
            "bridge_route_decision_seconds",
            "Time to compute one routing decision",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
            registry=r,
        )
        self.http_requests = Counter(
            "bridge_http_requests_total",
            "HTTP API requests, by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.auth_failures = Counter(
            "bridge_auth_failures_total", "Refused API credentials", ["reason"], registry=r
        )
        self.sip_messages = LabelledCounts(
            "bridge_sip_messages",
            "SIP messages by direction and method (responses as 1xx..6xx)",
            ("direction", "method"),
            registry=r,
        )
        self.sip_malformed = Counter(
            "bridge_sip_malformed_total",
            "SIP messages that could not be parsed (answered 4xx/505 or dropped)",
            ["transport"],
            registry=r,
        )
        self.sip_tls_refused = Counter(
            "bridge_sip_tls_refused_total",
            "Connections closed on the SIP TLS port before any SIP, by reason (handshake_failed,"
            " handshake_timeout, closed_in_handshake, too_many_handshakes,"
            " too_many_handshakes_from_source)",
            ["reason"],
            registry=r,
        )
        self.sip_stream_refused = Counter(
            "bridge_sip_stream_refused_total",
            "TCP/TLS connections closed at once: over sip.max_stream_connections in all or"
            " sip.max_stream_connections_per_source from one address",
            ["transport"],
            registry=r,
        )
        self.sip_auth_failures = Counter(
            "bridge_sip_auth_failures_total",
            "Failed SIP digest authentications, and requests refused from banned sources",
            ["reason"],
            registry=r,
        )
        self.sip_registrations = Gauge(
            "bridge_sip_registrations", "Registered desk-phone contacts (bindings)", registry=r
        )
        self.sip_banned_sources = Gauge(
            "bridge_sip_banned_sources", "Sources banned after repeated failed digests", registry=r
        )
        self.sip_transactions = Gauge(
            "bridge_sip_transactions", "Live SIP transactions", registry=r
        )
        self.event_loop_tasks = Gauge(
            "bridge_event_loop_tasks",
            "Tasks not done yet on the daemon's asyncio event loop (read at scrape time)",
            registry=r,
        )
        self.gc_full_collections = Counter(
            "bridge_gc_full_collections_total",
            "The collector policy's scheduled full collections (log line gc_full)",
            registry=r,
        )
        self.gc_full_seconds = Gauge(
            "bridge_gc_full_last_seconds",
            "How long the last scheduled full collection paused the event loop",
            registry=r,
        )
        self.sip_admission = Counter(
            "bridge_sip_admission_total",
            "New INVITEs (kind=call) and REGISTERs (kind=registration) by outcome: admitted, or"
            " the reason they were refused with 503 (load, max_calls, calls_per_second, ...)",
            ["kind", "outcome"],
            registry=r,
        )
        self.sip_overloaded = Gauge(
            "bridge_sip_overloaded",
            "1 while new work is being refused for load (until a second without such a refusal)",
            registry=r,
        )
        self.sip_overload_feedback = Gauge(
            "bridge_sip_overload_feedback_percent",
            "RFC 7339 loss feedback: the share of new calls we ask clients that do overload"
            " control to hold back (peer=clients), and the share the trunk asks of us"
            " (peer=trunk), while valid",
            ["peer"],
            registry=r,
        )
        self.sip_trunk_held_back = Counter(
            "bridge_sip_trunk_held_back_total",
            "New calls to the trunk not sent because its RFC 7339 feedback asked us to hold"
            " that share back (each leg failed as on a 503)",
            registry=r,
        )
        self.sip_queue_delay = Gauge(
            "bridge_sip_queue_delay_seconds",
            "How long new INVITEs and REGISTERs waited unread (smoothed): the load signal",
            registry=r,
        )
        self.sip_session_timeouts = Counter(
            "bridge_sip_session_timeouts_total",
            "Calls ended by an RFC 4028 session timer: no refresh came (expired) or ours failed",
            ["reason"],
            registry=r,
        )
        self.calls = Counter(
            "bridge_calls_total",
            "Calls by dial path and outcome (answered, caller_cancelled, voicemail, ...)",
            ["path", "outcome"],
            registry=r,
        )
        self.call_setup_seconds = Histogram(
            "bridge_call_setup_seconds",
            "From the caller's INVITE to the first ringing sent back to the caller",
            ["path"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.live_calls = Gauge("bridge_live_calls", "Calls in progress", registry=r)
        # The durable outbox and its webhooks (bridge.events; read every 5 s, not per scrape).
        self.events_written = Counter(
            "bridge_events_written_total", "Events stored in the outbox", registry=r
        )
        self.events_dropped = Counter(
            "bridge_events_dropped_total",
            "Events that could not be stored (the outbox not writable, or its queue full)",
            registry=r,
        )
        self.outbox_healthy = Gauge(
            "bridge_outbox_healthy", "1 while the outbox can be written, 0 otherwise", registry=r
        )
        self.outbox_healthy.set(1)
        self.outbox_bytes = Gauge(
            "bridge_outbox_bytes", "Size of the outbox database and its WAL", registry=r
        )
        self.outbox_queued = Gauge(
            "bridge_outbox_queued_events", "Events waiting in memory for the writer", registry=r
        )
        self.outbox_pending = Gauge(
            "bridge_outbox_pending_deliveries", "Webhook deliveries not done yet", registry=r
        )
        self.outbox_oldest_pending_seconds = Gauge(
            "bridge_outbox_oldest_pending_seconds",
            "Age of the oldest webhook delivery not done yet (0: none)",
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "bridge_webhook_deliveries_total",
            "Webhook delivery tries, by endpoint and outcome (delivered, retry, dead)",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.webhook_dead_letters = Counter(
            "bridge_webhook_dead_letters_total",
            "Webhook deliveries given up on (dead-lettered), by endpoint",
            ["endpoint"],
            registry=r,
        )
        self.webhook_delivery_seconds = Histogram(
            "bridge_webhook_delivery_seconds",
            "From an event to its delivery (2xx) to an endpoint",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=r,
        )
        self.draining = Gauge(
            "bridge_draining", "1 while the daemon drains for shutdown", registry=r
        )
        # Carrier path (Twilio webhooks). Calls themselves count in `calls` with path="carrier".
        self.webhook_requests = Counter(
            "bridge_webhook_requests_total",
            "Carrier webhook requests, by endpoint and HTTP status (403: bad signature)",
            ["endpoint", "status"],
            registry=r,
        )
        self.webhook_seconds = Histogram(
            "bridge_webhook_seconds",
            "Time to answer one carrier webhook (signature check, routing, TwiML)",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.carrier_api_errors = Counter(
            "bridge_carrier_api_errors_total",
            "Failed REST requests to the carrier, by operation and HTTP status ('error': none)",
            ["operation", "status"],
            registry=r,
        )
        # App-client WebSocket gateway (bridge.ws).
        self.ws_connections = Gauge(
            "bridge_ws_connections", "Open WebSocket connections on /ws", registry=r
        )
        self.ws_messages = Counter(
            "bridge_ws_messages_total",
            "WebSocket frames by direction (in, out) and frame type ('invalid': unparsable)",
            ["direction", "type"],
            registry=r,
        )
        self.offers = Counter(
            "bridge_offers_total",
            "Call offers to app users, by how each ended (answered, answered_elsewhere, ...)",
            ["result"],
            registry=r,
        )
        self.offer_to_answer_seconds = Histogram(
            "bridge_offer_to_answer_seconds",
            "From a call offer to the app user's winning accept",
            buckets=(0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0),
            registry=r,
        )
        # Carrier conference mode and call controls (bridge.carriers.twilio, bridge.control).
        self.carrier_participants = Counter(
            "bridge_carrier_participants_total",
            "Conference-mode legs the bridge asked the carrier to dial, by kind (participant, "
            "confirm_call: a press-1 leg, monitor: a supervisor) and result (placed, failed)",
            ["kind", "result"],
            registry=r,
        )
        self.control_attempts = Counter(
            "bridge_control_attempts_total",
            "Listen/whisper/barge and recording control attempts, by control (monitor, "
            "monitor_change, monitor_stop, recording) and outcome (done, refused, failed)",
            ["control", "outcome"],
            registry=r,
        )

        # SIP calls refused before they were admitted, and the media engine (bridge.media).
        self.sip_calls_refused = Counter(
            "bridge_sip_calls_refused_total",
            "INVITEs refused before routing, by reason (no_codec: 488, media_ports: 503)",
            ["reason"],
            registry=r,
        )
        self.sip_media_timeouts = Counter(
            "bridge_sip_media_timeouts_total",
            "SIP calls ended because a leg sent no RTP for media.timeout_seconds",
            registry=r,
        )

    def watch_media(self, figures: Any) -> None:
        """Export the media engine's figures, read when scraped (nothing on the packet path):
        `figures` has `anchored_calls`, `legs`, `pool.size`, `pool.in_use`, `live_figures()`
        and `jitter_seconds()` (`bridge.media.engine.EmbeddedMedia`)."""
        self.registry.register(_MediaCollector(figures))

    def child(self, metric: Any, *labelvalues: str) -> Any:
        """`metric.labels(*labelvalues)`, looked up once per label set: `labels()` builds and
        locks on every call and costs more than the `inc()` or `observe()` that follows, on
        paths that run for every call."""
        key = (id(metric), labelvalues)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labelvalues)
        return child

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _MediaCollector:
    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        engine = self.engine
        totals = engine.live_figures()
        yield GaugeMetricFamily(
            "bridge_media_anchored_calls",
            "Calls whose audio the media engine holds",
            value=engine.anchored_calls,
        )
        yield GaugeMetricFamily(
            "bridge_media_legs", "Media legs (one UDP port each)", value=engine.legs
        )
        ports = GaugeMetricFamily(
            "bridge_media_ports", "The media port range: size and in use", labels=["state"]
        )
        ports.add_metric(["size"], engine.pool.size)
        ports.add_metric(["in_use"], engine.pool.in_use)
        yield ports
        packets = CounterMetricFamily(
            "bridge_media_packets", "RTP packets through the engine", labels=["direction"]
        )
        packets.add_metric(["received"], totals.received)
        packets.add_metric(["sent"], totals.sent)
        yield packets
        octets = CounterMetricFamily(
            "bridge_media_bytes", "RTP bytes through the engine", labels=["direction"]
        )
        octets.add_metric(["received"], totals.received_bytes)
        octets.add_metric(["sent"], totals.sent_bytes)
        yield octets
        yield CounterMetricFamily(
            "bridge_media_packets_lost",
            "RTP packets peers sent that never arrived (sequence gaps, RFC 3550)",
            value=totals.lost,
        )
        yield CounterMetricFamily(
            "bridge_media_packets_dropped",
            "Datagrams dropped: from a source other than the latched peer, or oversized",
            value=totals.foreign,
        )
        yield CounterMetricFamily(
            "bridge_media_srtp_dropped",
            "SRTP packets of SDES legs dropped: failed authentication (a wrong key, a forged or"
            " corrupted packet) or replayed",
            value=totals.srtp_dropped,
        )
        jitter = engine.jitter_seconds()
        yield GaugeMetricFamily(
            "bridge_media_jitter_seconds_max",
            "The largest interarrival jitter (RFC 3550) among live legs",
            value=max(jitter, default=0.0),
        )
        for name, doc, value in (
            ("bridge_media_timeouts", "Calls ended for RTP inactivity", totals.timeouts),
            ("bridge_media_recordings", "Call recordings written", totals.recordings),
            (
                "bridge_media_recording_failures",
                "Recordings that could not be written",
                totals.recording_failures,
            ),
            ("bridge_media_voicemails", "Voicemail messages written", totals.voicemails),
            (
                "bridge_media_ports_exhausted",
                "Legs refused for want of a free port (the call got 503)",
                totals.ports_exhausted,
            ),
        ):
            yield CounterMetricFamily(name, doc, value=value)
