"""Registering the bridge to the SIP provider (outbound REGISTER), kept fresh.

Some providers only send inbound calls to a registered account. The registration answers one
digest challenge per attempt, is refreshed before it expires, and its state is shown in
`/readyz`; a failure is logged and retried.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from bridge.sip.dialog import ViaSpec
from bridge.sip.digest import authorize, challenge_header
from bridge.sip.grammar import SipSyntaxError, parse_expires
from bridge.sip.model import Headers, SipRequest, SipResponse, header_params
from bridge.sip.transaction import Address, new_branch

log = structlog.get_logger("bridge.sip.trunk")

RETRY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class TrunkAccount:
    host: str  # the provider's domain, for the Request-URI and the AOR
    destination: Address
    transport: str
    username: str
    password: str
    expires: int


class TrunkRegistration:
    """One account at the provider. `state`: pending, registered or failed."""

    def __init__(
        self,
        account: TrunkAccount,
        *,
        send_request: Callable[[SipRequest, Address, str], str],
        local: Callable[[str], ViaSpec],
        schedule: Callable[[float, Callable[[], None]], object],
        clock: Callable[[], float],
    ) -> None:
        self.account = account
        self._send = send_request
        self._local = local
        self._schedule = schedule
        self._clock = clock
        self.state = "pending"
        self.expires_at: float | None = None
        self.last_error: str | None = None
        self._call_id = f"{secrets.token_hex(10)}@bridge"
        self._tag = secrets.token_hex(5)
        self._cseq = 0
        self._pending: str | None = None  # transaction id of the REGISTER in flight
        self._answered = False  # this attempt already answered a challenge
        self._last_request: SipRequest | None = None

    def owns(self, transaction_id: str) -> bool:
        return transaction_id == self._pending

    def start(self) -> None:
        self._answered = False
        self._register(None)

    def _register(self, authorization: tuple[str, str] | None) -> None:
        account = self.account
        local = self._local(account.transport)
        self._cseq += 1
        aor = f"sip:{account.username}@{account.host}"
        via = f"SIP/2.0/{account.transport.upper()} {local.sent_by}"
        headers = Headers(
            [
                ("Via", f"{via};branch={new_branch()};rport"),
                ("Max-Forwards", "70"),
                ("From", f"<{aor}>;tag={self._tag}"),
                ("To", f"<{aor}>"),
                ("Call-ID", self._call_id),
                ("CSeq", f"{self._cseq} REGISTER"),
                ("Contact", f"<sip:{account.username}@{local.sent_by}{local.contact_params}>"),
                ("Expires", str(account.expires)),
            ]
        )
        if authorization is not None:
            headers.add(*authorization)
        request = SipRequest("REGISTER", f"sip:{account.host}", headers)
        self._last_request = request
        self._pending = self._send(request, account.destination, account.transport)

    def response(self, response: SipResponse) -> None:
        if response.status < 200:
            return
        self._pending = None
        if response.status in (401, 407) and not self._answered:
            answer = authorize(
                response.status,
                response.headers.get_all(challenge_header(response.status)),
                method="REGISTER",
                uri=self._last_request.uri if self._last_request else f"sip:{self.account.host}",
                username=self.account.username,
                password=self.account.password,
            )
            if answer is not None:
                self._answered = True
                self._register(answer)
                return
        if 200 <= response.status < 300:
            granted = self._granted(response)
            if granted <= 0:  # (refreshing at once would send REGISTERs in a tight loop)
                self._fail(f"{response.status} {response.reason}, but no time granted")
                return
            now = self._clock()
            self.state, self.expires_at, self.last_error = "registered", now + granted, None
            log.info("sip_trunk_registered", host=self.account.host, expires=granted)
            # Refresh well before expiry (RFC 3261 §10.2.4 leaves the margin to the UA).
            self._schedule(now + max(granted * 0.8, min(granted, 5)), self.start)
            return
        self._fail(f"{response.status} {response.reason}")

    def failed(self, reason: str) -> None:
        self._pending = None
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        self.state, self.last_error = "failed", reason
        log.error("sip_trunk_registration_failed", host=self.account.host, reason=reason)
        self._schedule(self._clock() + RETRY_SECONDS, self.start)

    def _granted(self, response: SipResponse) -> int:
        ours = f"sip:{self.account.username}@"
        for contact in response.headers.values("Contact"):
            if ours in contact:
                value = header_params(contact).get("expires")
                if value and re.fullmatch(r"[0-9]+", value):
                    # (an overlarge value, thousands of digits, is taken as what we asked)
                    return parse_expires(value, overlarge=self.account.expires)
        try:
            expires = response.headers.get("Expires")
            return parse_expires(expires) if expires else self.account.expires
        except SipSyntaxError:
            return self.account.expires

    def status(self) -> dict[str, object]:
        return {"state": self.state, "host": self.account.host, "error": self.last_error}
