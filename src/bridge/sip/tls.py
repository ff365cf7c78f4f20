"""SIP over TLS (RFC 3261 §26, RFC 5630): the contexts, their reload, and the refusals' log.

- The **server** context answers phones on `[sip.tls] port`: our certificate chain and key,
  TLS 1.2 at least, no client certificate asked (phones authenticate with digest, as over
  UDP and TCP). `reload()` loads the files again into the same context, so SIGHUP puts a
  renewed certificate in front of every new connection; live ones keep theirs. A reload that
  fails keeps the old certificate and says why.
- The **client** context is for the connections we open: to the trunk (`sips:` or
  `;transport=tls` in `trunk_uri`). The trunk's certificate is verified against the CA bundle
  (the system's by default) and its name against the URI's host; `verify = false` turns both
  off, with a warning at start.

What goes wrong on the TLS port (garbage, plain-text SIP, a handshake that does not finish, a
flood of ClientHellos) closes that connection and is logged by `TlsRefusals`: one line per
reason a second at most, with how many more it stood for, so a flood cannot fill the log.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("bridge.sip")


class TlsSetupError(Exception):
    """A certificate, key or CA bundle that cannot be used: which setting, and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """`[sip.tls]`, its paths resolved."""

    certificate: Path
    private_key: Path
    port: int = 5061
    ca_bundle: Path | None = None  # None: the system's CA certificates
    verify: bool = True  # the trunk's certificate and name
    handshake_timeout: float = 5.0
    max_handshakes: int = 256  # under way at once; more are closed at once
    max_handshakes_per_source: int = 32  # the same from one address
    srtp: str = "optional"  # off | optional | required (docs/sip.md, "TLS and SRTP")


def _readable(field: str, path: Path) -> None:
    if not path.is_file():
        raise TlsSetupError(field, f"file not found: {path}")


def load_chain(context: ssl.SSLContext, settings: TlsSettings) -> None:
    """Our certificate chain and key into `context` (TlsSetupError naming the setting)."""
    _readable("sip.tls.certificate", settings.certificate)
    _readable("sip.tls.private_key", settings.private_key)
    try:
        context.load_cert_chain(settings.certificate, settings.private_key)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        field = (
            "sip.tls.private_key"
            if "KEY" in str(reason).upper() and "CERT" not in str(reason).upper()
            else "sip.tls.certificate"
        )
        raise TlsSetupError(field, f"cannot be loaded ({reason})") from None
    except OSError as exc:
        raise TlsSetupError("sip.tls.certificate", str(exc)) from None


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_NONE  # phones authenticate with digest
    load_chain(context, settings)
    return context


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if settings.ca_bundle is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return context
    _readable("sip.tls.ca_bundle", settings.ca_bundle)
    try:
        context.load_verify_locations(cafile=settings.ca_bundle)
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError("sip.tls.ca_bundle", f"cannot be loaded ({exc})") from None
    return context


class TlsContexts:
    """The server and client contexts of the endpoint, and their reload on SIGHUP."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self.server = server_context(settings)
        self.client = client_context(settings)

    def reload(self) -> bool:
        """Load the certificate and key again (into the same context: every new connection
        gets them). False, logged, when they cannot be loaded: the old ones stay."""
        try:
            server_context(self.settings)  # checked before the live context changes
            load_chain(self.server, self.settings)
            self.client = client_context(self.settings)
        except TlsSetupError as exc:
            log.error("sip_tls_reload_failed", field=exc.field, reason=exc.reason)
            return False
        log.info("sip_tls_reloaded", certificate=str(self.settings.certificate))
        return True


class TlsRefusals:
    """Connections closed on the TLS port, logged at most once a second per reason."""

    def __init__(self, clock: Callable[[], float], count: Callable[[str], None]) -> None:
        self._clock = clock
        self._count = count
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def refused(self, reason: str, peer: tuple[str, int], detail: str = "") -> None:
        self._count(reason)
        now = self._clock()
        if now - self._last.get(reason, -1e9) < 1.0:
            self._quiet[reason] = self._quiet.get(reason, 0) + 1
            return
        self._last[reason] = now
        log.info(
            "sip_tls_refused",
            reason=reason,
            peer=f"{peer[0]}:{peer[1]}",
            detail=detail[:200],
            more_since_last=self._quiet.pop(reason, 0),
        )
