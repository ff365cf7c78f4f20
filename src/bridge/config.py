"""Settings: a TOML file (``--config`` or ``BRIDGE_CONFIG``), overridden by ``BRIDGE_*`` env vars.

Nested settings use ``__`` in env names: ``BRIDGE_HTTP__PORT=9090`` sets ``[http] port``.
Every problem is reported as ``field: reason`` (``http.port: Input should be a valid integer``)
and the CLI exits 2 on any of them, before anything starts.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from bridge.directory.loader import DirectoryError, load_directory, location
from bridge.directory.model import Directory, Problem

if TYPE_CHECKING:
    from bridge.sip.tls import TlsSettings

Port = Annotated[int, Field(ge=1, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: Port = 8080
    # The address carriers and browsers use to reach us (webhook signatures are computed on
    # it). Defaults to http://host:port.
    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


class OverloadSettings(_Section):
    """New INVITEs and REGISTERs admitted or refused with 503 + Retry-After before any work
    (bridge.sip.overload; docs/sip.md, "Overload control"). 0 turns a limit off."""

    # Calls live at once (both paths' SIP calls: the call runner's count).
    max_calls: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    # New calls per second: overall, and from each trunk source address.
    calls_per_second: Annotated[float, Field(ge=0, le=100_000)] = 0.0
    trunk_calls_per_second: Annotated[float, Field(ge=0, le=100_000)] = 0.0
    registrations_per_second: Annotated[float, Field(ge=0, le=100_000)] = 0.0
    # SIP transactions held at once (each call holds a few for up to 32 s).
    max_transactions: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    # Load: new work that waited longer than this (in the socket's queue, or for the event
    # loop) for `interval_seconds` in a row is refused until some comes in under it.
    queue_delay_target_ms: Annotated[float, Field(ge=0, le=10_000)] = 20.0
    interval_seconds: Annotated[float, Field(gt=0, le=60)] = 0.1
    retry_after_seconds: Annotated[int, Field(ge=1, le=3600)] = 5
    # RFC 7339: a client (a trunk) whose Via carries `oc` is told, in the Via of our
    # responses, what share of new calls to hold back while some are refused here, valid
    # for feedback_validity_ms (refreshed by every response).
    feedback: bool = True
    feedback_validity_ms: Annotated[int, Field(ge=100, le=60_000)] = 1000


class SipTlsSettings(_Section):
    """`[sip.tls]`: SIP over TLS for phones and the trunk, and SRTP on their audio
    (bridge.sip.tls; docs/sip.md, "TLS and SRTP"). No section: no TLS listener."""

    port: Port = 5061
    # PEM files, relative to the config file's folder: our certificate chain (leaf first)
    # and its private key. Both are read again on SIGHUP (a renewal needs no restart).
    certificate: Path
    private_key: Path
    # CA certificates the trunk's certificate is checked against (default: the system's).
    ca_bundle: Path | None = None
    # Check the trunk's certificate and name. false: anyone on the path can read and change
    # the calls (a warning at every start).
    verify: bool = True
    # A connection whose TLS handshake is not done by then is closed (a stalled client).
    handshake_timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 5.0
    # Handshakes under way at once; connections beyond it are closed before any crypto.
    max_handshakes: Annotated[int, Field(ge=1, le=100_000)] = 256
    # The same from one address: one source cannot keep everyone else's handshakes refused.
    max_handshakes_per_source: Annotated[int, Field(ge=1, le=100_000)] = 32
    # SRTP (SDES, RFC 4568) on the audio of calls signalled over TLS. optional: offered to
    # phones reached over TLS, taken from any phone that offers it. required: a call over
    # TLS without SRTP is refused (488). off: never offered (still taken when insisted on).
    srtp: Literal["off", "optional", "required"] = "optional"


class SipSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 5060
    realm: str = "bridge.local"
    # Registrar: contact lifetimes a phone may ask for (423 below the minimum).
    min_expires: Annotated[int, Field(ge=1, le=86400)] = 60
    max_expires: Annotated[int, Field(ge=1, le=86400)] = 3600
    default_expires: Annotated[int, Field(ge=1, le=86400)] = 3600
    # NAT: OPTIONS to every UDP phone this often; no answer marks it unreachable. 0 = off.
    keepalive_seconds: Annotated[float, Field(ge=0, le=3600)] = 30.0
    # Digest: the challenges offered, in this order, the same to every user. MD5 alone by
    # default: phones that read only the first challenge, or refuse any algorithm they do
    # not know, register; RFC 8760 clients take the topmost they support anyway (docs/sip.md,
    # "Digest: which algorithm comes first").
    digest_algorithms: list[Literal["SHA-256", "MD5"]] = Field(
        default_factory=lambda: ["MD5"], min_length=1
    )
    # HMAC key for nonces; default: derived from [auth] jwt_secret (stable across restarts).
    nonce_secret: str | None = Field(default=None, min_length=16, repr=False)
    nonce_lifetime_seconds: Annotated[float, Field(ge=10, le=86400)] = 300.0
    # Brute force: this many failed digests from one address within the window -> 403 ban.
    auth_max_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    auth_window_seconds: Annotated[float, Field(ge=1, le=86400)] = 60.0
    ban_seconds: Annotated[float, Field(ge=0, le=7 * 86400)] = 600.0
    # Sources allowed to send trunk INVITEs without credentials: addresses or networks,
    # optionally with a port (203.0.113.0/24, 10.0.0.5:5060, [2001:db8::5]:5060).
    trunk_allow: list[str] = Field(default_factory=list)
    trunk_uri: str | None = None
    # RFC 7339: our INVITEs to trunk_uri carry `oc` in their Via; while the trunk's answers ask
    # for it, that share of new calls to it is not sent (the leg fails as on a 503).
    trunk_overload_control: bool = True
    # Credentials for a provider that challenges our INVITEs (401/407) on trunk_uri.
    # Caller id on calls forwarded through the trunk: the original caller, or the line dialled.
    trunk_caller_id: Literal["caller", "line"] = "caller"
    # Register that account at the provider (refreshed before expiry, shown in /readyz).
    trunk_register: bool = False
    trunk_register_expires: Annotated[int, Field(ge=60, le=86400)] = 600
    trunk_username: str | None = None
    trunk_password: str | None = Field(default=None, repr=False)
    # RFC 4028 session timers on calls: the interval asked of and granted to peers (0: none of
    # our own; a peer's request is still honoured), and the shortest interval accepted (422).
    session_expires: Annotated[int, Field(ge=0, le=86400)] = 1800
    min_se: Annotated[int, Field(ge=90, le=86400)] = 90
    # Kernel buffers asked for the UDP socket (receive and send). The default 208 KiB holds
    # about a hundred datagrams: a burst or a pause of a few ms at hundreds of calls/s drops
    # some, and their retransmissions add load. The kernel caps it at net.core.rmem_max.
    udp_buffer_bytes: Annotated[int, Field(ge=65536, le=256 * 1024 * 1024)] = 4 * 1024 * 1024
    # TCP/TLS connections accepted at once, in all and from one address (an office of phones
    # behind one NAT address counts as one source), and how long an accepted connection may
    # hold part of a message, or say nothing at all, before it is closed.
    max_stream_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 4096
    max_stream_connections_per_source: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    stream_message_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # RFC 3261 T1, the round-trip estimate every retransmission and transaction timeout
    # derives from (a request with no answer is given up after 64*T1: 32 s by default).
    # Lower on a LAN to find dead phones and trunks sooner; raise on slow satellite links.
    timer_t1_ms: Annotated[int, Field(ge=50, le=5000)] = 500
    overload: OverloadSettings = OverloadSettings()
    # Registrations kept across a restart (bridge.sip.state; relative to the config file's
    # folder, like the event outbox). Empty: not kept.
    state_path: Path | None = Path("var/sip-state.sqlite")
    tls: SipTlsSettings | None = None

    @field_validator("trunk_allow")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        from bridge.sip.sources import parse_trunk_source

        for item in value:
            parse_trunk_source(item)  # (its ValueError names the entry and the form)
        return value

    @model_validator(mode="after")
    def _expires_order(self) -> SipSettings:
        if not self.min_expires <= self.default_expires <= self.max_expires:
            raise ValueError("need min_expires <= default_expires <= max_expires")
        if self.trunk_register and not (self.trunk_uri and self.trunk_username):
            raise ValueError("trunk_register needs trunk_uri and trunk_username")
        if 0 < self.session_expires < self.min_se:
            raise ValueError("session_expires must be 0 or at least min_se")
        return self

    @field_validator("trunk_uri")
    @classmethod
    def _sip_uri(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sip:", "sips:")):
            raise ValueError("must be a sip: or sips: URI")
        return value


class DirectorySettings(_Section):
    # Relative paths are read from the config file's folder.
    path: Path = Path("directory.yaml")


class AuthSettings(_Section):
    jwt_secret: Annotated[str, Field(min_length=16)] = Field(
        default="change-me-change-me-change-me", repr=False
    )
    token_ttl_seconds: Annotated[int, Field(ge=60, le=30 * 86400)] = 3600
    # Console login (POST /api/v1/auth/login): the access token's lifetime, and how long a
    # login lasts at most (its refresh session, renewed by /auth/refresh until then).
    access_ttl_seconds: Annotated[int, Field(ge=10, le=3600)] = 300
    session_ttl_seconds: Annotated[int, Field(ge=300, le=30 * 86400)] = 12 * 3600
    # Refresh sessions one user may hold at once (browsers, tabs after a log-in each); the
    # oldest is ended when one more starts.
    max_sessions_per_user: Annotated[int, Field(ge=1, le=100)] = 10
    # Shortest password accepted (the longest is fixed: 256 characters, bounding hashing cost).
    password_min_length: Annotated[int, Field(ge=8, le=128)] = 10
    # Lockout: this many failed logins for one account within the window lock it this long
    # (429 with Retry-After); login_max_failures_per_ip does the same per client address.
    login_max_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    login_window_seconds: Annotated[int, Field(ge=1, le=86400)] = 900
    login_lockout_seconds: Annotated[int, Field(ge=1, le=86400)] = 900
    login_max_failures_per_ip: Annotated[int, Field(ge=1, le=100000)] = 50

    @model_validator(mode="after")
    def _session_longer(self) -> AuthSettings:
        if self.access_ttl_seconds > self.session_ttl_seconds:
            raise ValueError("access_ttl_seconds must not exceed session_ttl_seconds")
        return self


_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


class TwilioSettings(_Section):
    account_sid: str | None = None
    auth_token: str | None = Field(default=None, repr=False)
    api_base: str | None = None
    mode: Literal["dial", "conference"] = "dial"
    api_key_sid: str | None = None
    api_key_secret: str | None = Field(default=None, repr=False)
    twiml_app_sid: str | None = None
    # Where the carrier sends `<Sip>` legs for desk phones (host[:port] of our SIP listener as
    # the carrier reaches it); default [sip] host:port.
    sip_target: str | None = None
    # How long a forwarded callee has to press 1 (confirm_answer) before the leg is dropped.
    confirm_timeout_seconds: Annotated[int, Field(ge=1, le=60)] = 5
    # REST requests: tries per request (5xx, 429 and no answer are retried, 4xx never), the
    # time one try may take, and the first backoff (doubled per retry, with jitter).
    api_attempts: Annotated[int, Field(ge=1, le=10)] = 4
    api_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    api_backoff_seconds: Annotated[float, Field(ge=0, le=10)] = 0.25
    # Lifetime of the app voice tokens (GET /api/v1/voice-token); the carrier caps it at 24 h.
    voice_token_ttl_seconds: Annotated[int, Field(ge=60, le=86400)] = 3600

    @field_validator("sip_target")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None and not _HOST_PORT.fullmatch(value):
            raise ValueError("must be host or host:port (like sip.example.com:5060)")
        return value

    @field_validator("api_base")
    @classmethod
    def _api_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value


class StateSettings(_Section):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"

    @field_validator("backend")
    @classmethod
    def _available(cls, value: str) -> str:
        # Refuse rather than silently run a second instance on private memory.
        if value == "redis":
            raise ValueError("'redis' is not available in this build yet; use 'memory'")
        return value


class WebhookEndpointSettings(_Section):
    """`[[events.endpoints]]`: a receiver of the outbox's events (Standard Webhooks)."""

    # Names the endpoint in the API, logs and metrics (`config:<name>`).
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    url: str
    # whsec_<base64 of 24 to 64 random bytes>, as the Standard Webhooks spec writes it.
    secret: str = Field(repr=False)
    # Event types it takes ("call.ended", or a prefix "call.*"); empty: every type.
    types: list[Annotated[str, Field(pattern=r"^[a-z_]+(\.[a-z_]+)*(\.\*)?$")]] = []
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_webhook_url(value)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        return check_webhook_secret(value)


class EventsSettings(_Section):
    """The durable outbox of events, and the webhooks that push them out (docs/events.md)."""

    outbox_path: Path = Path("var/events.sqlite")
    # Where the outbox's writer and the webhook deliveries run. "process": a child process
    # (bridge.events.worker), on another core than the calls when there is one; "thread": in
    # the daemon's own process (one core, or to save the second interpreter's memory).
    writer: Literal["process", "thread"] = "process"
    # A delivery that failed is tried again after an exponential backoff with jitter, never
    # longer than this (so an endpoint back from an outage gets its backlog within it); a 408
    # or 429 waits its Retry-After.
    retry_max_seconds: Annotated[float, Field(ge=1, le=3600)] = 60.0
    # Dead-lettered after this many tries, or this long after the first one.
    max_attempts: Annotated[int, Field(ge=1, le=10000)] = 50
    dead_after_seconds: Annotated[float, Field(ge=60, le=30 * 86400)] = 86400.0
    # One try's time limit (connect, send, answer).
    timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 10.0
    # Deliveries in flight per endpoint (of different calls: one call's go in order).
    concurrency: Annotated[int, Field(ge=1, le=256)] = 8
    # Events (and their deliveries, and call history) older than this are deleted, checked
    # hourly; the prune is logged (`retention_pruned`).
    retention_days: Annotated[int, Field(ge=1, le=36500)] = 90
    endpoints: list[WebhookEndpointSettings] = []

    @field_validator("endpoints")
    @classmethod
    def _unique(cls, value: list[WebhookEndpointSettings]) -> list[WebhookEndpointSettings]:
        names = [e.name for e in value]
        if len(set(names)) != len(names):
            raise ValueError("two endpoints have the same name")
        return value


def check_webhook_url(value: str) -> str:
    """An http(s) URL with a host (what else an endpoint must not be, the settings and the
    API check against the bridge's own address: `points_at`)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
    host = parts.hostname
    if ":" not in host:  # a name (or an IPv4 address): what the HTTP client will encode
        try:
            host.encode("idna")
        except UnicodeError:  # (an empty label, one over 63 characters: every try raised)
            raise ValueError(f"{value!r}: {host[:80]!r} is not a host name") from None
    return value


def check_webhook_secret(value: str) -> str:
    import base64
    import binascii

    if not value.startswith("whsec_"):
        raise ValueError("must be whsec_ followed by base64 (the Standard Webhooks form)")
    try:
        key = base64.b64decode(value[6:], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ is not base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"the key is {len(key)} bytes; 24 to 64 are accepted")
    return value


def points_at(url: str, host: str, port: int, public_url: str | None) -> bool:
    """Whether `url` is the bridge's own HTTP listener (its host:port, or its public URL's):
    an endpoint there would post the bridge's events to itself."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    target_host = (parts.hostname or "").lower()
    target_port = parts.port or (443 if parts.scheme == "https" else 80)
    own = {(host.lower(), port)}
    if host in ("0.0.0.0", "::", "127.0.0.1", "::1", "localhost"):
        own |= {(h, port) for h in ("127.0.0.1", "localhost", "::1", "0.0.0.0")}
    if public_url:
        public = urlsplit(public_url)
        default = 443 if public.scheme == "https" else 80
        own.add(((public.hostname or "").lower(), public.port or default))
    return (target_host, target_port) in own


class RtpengineSettings(_Section):
    """`[media.rtpengine]`: the rtpengine daemon that anchors SIP calls' audio when
    `[media] engine = "rtpengine"` (docs/media.md, "rtpengine")."""

    # Its ng control socket (`--listen-ng`), host:port.
    ng: str = "127.0.0.1:2223"
    # How long one ng request waits for the reply before it is sent again (same cookie), and
    # how many times: a request fails after (retries + 1) * timeout_seconds.
    timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 1.0
    retries: Annotated[int, Field(ge=0, le=10)] = 2

    @field_validator("ng")
    @classmethod
    def _ng(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
            number = int(port)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address and port (like 127.0.0.1:2223)"
            ) from None
        if not 1 <= number <= 65535:
            raise ValueError(f"port {number} is not between 1 and 65535")
        return value

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.ng.rpartition(":")
        return host.strip("[]"), int(port)


class MediaSettings(_Section):
    """The media engine that anchors the audio of SIP calls (docs/media.md)."""

    # embedded: the engine inside the daemon (nothing to install). rtpengine: an rtpengine
    # daemon ([media.rtpengine]) relays the audio and bridges browsers' WebRTC to RTP, without
    # a mixer: no listen/whisper/barge, recording, voicemail or press-1 on SIP calls. none:
    # SDP passes end to end between the SIP peers (signalling only, the same refusals).
    engine: Literal["embedded", "rtpengine", "none"] = "embedded"
    rtpengine: RtpengineSettings = RtpengineSettings()
    # Where the RTP sockets are bound, and the address put in our SDP (`c=`) when peers reach
    # us through NAT (default: `address`).
    address: str = "127.0.0.1"
    public_address: str | None = None
    # One UDP port per media leg (even ports; RTCP is not answered): the range to open in the
    # firewall. Each call takes two (caller and agent), one more per supervisor.
    port_min: Port = 20000
    port_max: Port = 29999
    # Relative to the config file's folder.
    recordings_dir: Path = Path("var/recordings")
    # Recordings and voicemail messages older than this are deleted (files and metadata),
    # checked hourly with the events' retention. 0: kept until deleted through the API.
    recordings_retention_days: Annotated[int, Field(ge=0, le=36500)] = 0
    # Voicemail messages longer than this are cut (the caller hears nothing more).
    voicemail_max_seconds: Annotated[int, Field(ge=5, le=3600)] = 120
    # Seconds of silence (after some speech) that end a voicemail message.
    voicemail_silence_seconds: Annotated[float, Field(ge=1, le=60)] = 5.0
    # An answered call whose legs send no RTP for this long is ended (BYE to both). 0: never.
    timeout_seconds: Annotated[float, Field(ge=0, le=3600)] = 60.0
    # An app (browser) that accepted must complete its ICE check and DTLS handshake within
    # this long, else its accept fails (`media_failed`) and the call rings on.
    webrtc_connect_seconds: Annotated[float, Field(gt=0, le=60)] = 10.0

    @field_validator("address", "public_address")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address (like 192.0.2.10)") from None
        return value

    @model_validator(mode="after")
    def _range(self) -> MediaSettings:
        if self.port_max - self.port_min < 3:
            raise ValueError("need port_max at least port_min + 3 (two even ports)")
        return self

    @property
    def advertised_address(self) -> str:
        return self.public_address or self.address


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: console when stderr is a terminal, JSON otherwise.
    format: Literal["json", "console", "auto"] = "auto"


class DaemonSettings(_Section):
    # SIGTERM: how long live calls may go on before the daemon exits anyway.
    drain_timeout_seconds: Annotated[float, Field(ge=0, le=3600)] = 30.0
    # auto: uvloop when it is installed (it comes with uvicorn[standard]), else asyncio's.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"


class WsSettings(_Section):
    """The app-client WebSocket gateway (`/ws`, docs/ws-protocol.md)."""

    # A connection that has not authenticated by then is closed (4001).
    auth_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    # After a user's last session drops they stay reachable this long, so a reconnect (a page
    # reload, a network change) keeps a ringing offer. 0: unreachable at once.
    grace_seconds: Annotated[float, Field(ge=0, le=600)] = 10.0
    # Heartbeat: a `ping` frame to every session silent for this long; a session silent for
    # ping_interval_seconds + ping_timeout_seconds is dead and closed (4008).
    ping_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 20.0
    ping_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 20.0
    # Bigger frames close the connection with 1009 (also the listener's own limit).
    max_frame_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 65536
    # Token bucket per connection: frames per second and burst. Frames over it get an error
    # frame; rate_flood_frames refused frames (refilled at the same rate) close it with 1008.
    rate_per_second: Annotated[float, Field(gt=0, le=10000)] = 20.0
    rate_burst: Annotated[int, Field(ge=1, le=100000)] = 40
    rate_flood_frames: Annotated[int, Field(ge=1, le=100000)] = 100
    max_sessions_per_user: Annotated[int, Field(ge=1, le=1000)] = 10
    # How often presence changes made elsewhere (the HTTP API, the call engine) and the live
    # board reach the sessions.
    refresh_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    # POST /api/v1/ws/test-offers (admin): ring app sessions with a synthetic call, for load
    # runs (bench/ws_fanout.py) and for checking a client. Off in production.
    test_offers: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    http: HttpSettings = HttpSettings()
    sip: SipSettings = SipSettings()
    directory: DirectorySettings = DirectorySettings()
    auth: AuthSettings = AuthSettings()
    twilio: TwilioSettings = TwilioSettings()
    state: StateSettings = StateSettings()
    events: EventsSettings = EventsSettings()
    media: MediaSettings = MediaSettings()
    log: LogSettings = LogSettings()
    daemon: DaemonSettings = DaemonSettings()
    ws: WsSettings = WsSettings()

    # Where the file was read from (not a setting): relative paths resolve against it.
    config_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _endpoints_elsewhere(self) -> Settings:
        for index, endpoint in enumerate(self.events.endpoints):
            if points_at(endpoint.url, self.http.host, self.http.port, self.http.public_url):
                raise ValueError(
                    f"events.endpoints[{index}].url: {endpoint.url!r} is this bridge's own HTTP "
                    "address: it would post its events to itself"
                )
        return self

    @property
    def outbox_file(self) -> Path:
        return self.resolve(self.events.outbox_path)

    def sip_tls(self) -> TlsSettings | None:
        """`[sip.tls]` with its paths resolved, for bridge.sip.tls."""
        from bridge.sip.tls import TlsSettings

        tls = self.sip.tls
        if tls is None:
            return None
        return TlsSettings(
            certificate=self.resolve(tls.certificate),
            private_key=self.resolve(tls.private_key),
            port=tls.port,
            ca_bundle=self.resolve(tls.ca_bundle) if tls.ca_bundle is not None else None,
            verify=tls.verify,
            handshake_timeout=tls.handshake_timeout_seconds,
            max_handshakes=tls.max_handshakes,
            max_handshakes_per_source=tls.max_handshakes_per_source,
            srtp=tls.srtp,
        )

    @property
    def sip_state_file(self) -> Path | None:
        path = self.sip.state_path
        return None if path is None or str(path) in ("", ".") else self.resolve(path)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest priority first: explicit init values, then BRIDGE_* env, then the file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.config_dir / path)

    @property
    def recordings_path(self) -> Path:
        return self.resolve(self.media.recordings_dir)

    @property
    def directory_path(self) -> Path:
        return self.resolve(self.directory.path)

    def summary(self) -> str:
        return (
            f"http {self.http.host}:{self.http.port}, sip {self.sip.host}:{self.sip.port} "
            f"realm {self.sip.realm}, state {self.state.backend}, directory {self.directory_path}"
        )


class ConfigError(Exception):
    """Settings that cannot be used; each problem is one ``field: reason`` line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


ENV_FILE_VAR = "BRIDGE_CONFIG"


def load_settings(path: Path | str | None = None) -> Settings:
    """Read the TOML file and BRIDGE_* overrides from the environment. Raises ConfigError."""
    if not path and os.environ.get(ENV_FILE_VAR):
        path = os.environ[ENV_FILE_VAR]
    file = Path(path) if path else None
    if file is not None:
        if not file.is_file():
            raise ConfigError([Problem(path="config", reason=f"file not found: {file}")])
        try:
            with file.open("rb") as handle:
                tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([Problem(path="config", reason=f"not valid TOML: {exc}")]) from None

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=file)

    try:
        return FileSettings(config_dir=file.parent if file is not None else Path("."))
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None
    except SettingsError as exc:
        # A BRIDGE_* value that should be JSON (a list, a table) and is not.
        raise ConfigError([_env_problem(exc)]) from None


def _check_tls_files(settings: Settings) -> None:
    """The certificate, key and CA bundle of `[sip.tls]` load (a bad one: exit 2 naming it)."""
    from bridge.sip.tls import TlsContexts, TlsSetupError

    tls = settings.sip_tls()
    if tls is None or not settings.sip.enabled:
        return
    try:
        TlsContexts(tls)
    except TlsSetupError as exc:
        raise ConfigError([Problem(path=exc.field, reason=exc.reason)]) from None


def _env_problem(exc: SettingsError) -> Problem:
    match = re.search(r'field "(\w+)"', str(exc))
    section = match.group(1) if match else "env"
    return Problem(
        path=section,
        reason=(
            f"a BRIDGE_{section.upper()}__* variable is not valid: lists and tables are JSON, "
            f"e.g. BRIDGE_SIP__TRUNK_ALLOW='[\"10.0.0.0/8\"]' ({exc})"
        ),
    )


def _problems(exc: ValidationError) -> list[Problem]:
    found = []
    for error in exc.errors(include_url=False):
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            reason = "unknown setting"
        path = location(error["loc"])
        named = re.match(r"([a-z_]+(?:\.[a-z0-9_]+|\[\d+\])+): (.*)", reason, re.S)
        if not path and named:  # a check across sections names its field itself
            path, reason = named.group(1), named.group(2)
        found.append(Problem(path=path or "config", reason=reason))
    return found


def load_all(path: Path | str | None = None) -> tuple[Settings, Directory]:
    """Settings plus the directory they name: everything `check-config` and `run` validate."""
    settings = load_settings(path)
    _check_tls_files(settings)
    try:
        directory = load_directory(settings.directory_path)
    except DirectoryError as exc:
        raise ConfigError(
            [
                p
                if p.path.startswith("directory.")
                else Problem(
                    path=f"{settings.directory_path}: {p.path}", reason=p.reason, kind=p.kind
                )
                for p in exc.problems
            ]
        ) from None
    return settings, directory
