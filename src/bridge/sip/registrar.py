"""The REGISTER handler: digest authentication, brute-force bans, bindings, presence.

Sans-I/O: a parsed REGISTER, its source and two clocks in (wall time for nonces, which any
process must agree on; monotonic time for expiries and bans), a response out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import lru_cache

import structlog

from bridge.directory.model import AccountStatus, Directory, User
from bridge.presence.model import Channel
from bridge.presence.service import ReachabilityPort
from bridge.sip.ban import FailureTracker
from bridge.sip.bindings import (
    Binding,
    BindingStore,
    ContactRequest,
    Flow,
    RegisterError,
    RegisterResult,
    RegistrarSettings,
)
from bridge.sip.digest import (
    Algorithm,
    AuthResult,
    DigestError,
    NonceCounts,
    NonceIssuer,
    NonceStatus,
    base_algorithm,
    challenges,
    held_ha1,
    parse_auth_header,
    verify,
)
from bridge.sip.grammar import (
    SipSyntaxError,
    parse_contacts,
    parse_expires,
    parse_name_addr,
    parse_qvalue,
)
from bridge.sip.ids import random_hex
from bridge.sip.model import SipRequest, SipResponse, make_response

log = structlog.get_logger("bridge.sip.registrar")


@dataclass(frozen=True, slots=True)
class _AuthKind:
    """How to challenge: as a registrar / UAS (401) or as the proxy a phone calls through
    (407), RFC 3261 §22.2 and §22.3."""

    status: int
    phrase: str
    challenge: str
    credentials: str


_REGISTRAR = _AuthKind(401, "Unauthorized", "WWW-Authenticate", "Authorization")
_PROXY = _AuthKind(
    407, "Proxy Authentication Required", "Proxy-Authenticate", "Proxy-Authorization"
)


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    realm: str
    nonce_lifetime: float = 300.0
    max_failures: int = 5  # failed digests from one source ...
    failure_window: float = 60.0  # ... within this many seconds ...
    ban_seconds: float = 600.0  # ... ban it (403) for this long
    algorithms: Sequence[Algorithm] = (Algorithm.MD5,)


@dataclass(frozen=True, slots=True)
class RegisterOutcome:
    """The response to send and what happened, for logs and metrics."""

    response: SipResponse
    outcome: str  # registered | unregistered | query | challenged | auth_failed | banned | refused
    user_id: str | None = None
    added: tuple[Binding, ...] = ()
    removed: tuple[Binding, ...] = ()


@dataclass
class RegistrarService:
    directory: Callable[[], Directory]
    policy: AuthPolicy
    nonce_secret: bytes
    bindings: BindingStore = field(default_factory=BindingStore)
    reachability: ReachabilityPort | None = None
    settings: RegistrarSettings = field(default_factory=RegistrarSettings)

    def __post_init__(self) -> None:
        self.bindings.settings = self.settings
        self._nonces = NonceIssuer(self.nonce_secret, self.policy.nonce_lifetime)
        # A key of its own for challenge To tags (BLAKE2s takes at most 32 bytes).
        self._tag_key = hashlib.sha256(b"bridge-sip-challenge-tag\x00" + self.nonce_secret).digest()
        self._counts = NonceCounts()
        self._failures = FailureTracker(
            self.policy.max_failures, self.policy.failure_window, self.policy.ban_seconds
        )

    # -- REGISTER ------------------------------------------------------------------------
    def handle(
        self,
        request: SipRequest,
        source: tuple[str, int],
        transport: str,
        wall_now: float,
        now: float,
    ) -> RegisterOutcome:
        """A REGISTER: the AOR is the To user; answered 401 with `WWW-Authenticate`."""
        checked = self._authenticate(request, source, wall_now, now, _REGISTRAR, "To")
        if isinstance(checked, RegisterOutcome):
            return checked
        return self._apply(request, checked, source, transport, wall_now, now)

    def authenticate_call(
        self, request: SipRequest, source: tuple[str, int], wall_now: float, now: float
    ) -> User | RegisterOutcome:
        """An INVITE from a desk phone: the caller is the From user, challenged like a proxy
        (407 with `Proxy-Authenticate`). Returns the user, or the response to send."""
        return self._authenticate(request, source, wall_now, now, _PROXY, "From")

    def _authenticate(
        self,
        request: SipRequest,
        source: tuple[str, int],
        wall_now: float,
        now: float,
        kind: _AuthKind,
        identity_header: str,
    ) -> User | RegisterOutcome:
        host = source[0]
        if self._failures.is_banned(host, now):
            until = self._failures.ban_expires_at(host, now)
            extra = [("Retry-After", str(max(1, int((until or now) - now))))]
            return RegisterOutcome(self._reply(request, 403, "Forbidden", extra), "banned")
        try:
            aor = parse_name_addr(request.headers.get(identity_header) or "")
        except SipSyntaxError as exc:
            return self._refuse(request, 400, f"Bad Request ({identity_header}: {exc})")
        username = aor.uri.user or ""
        user = self.directory().users_by_sip_username.get(username)
        authorization = request.headers.get(kind.credentials)
        if authorization is None:
            return self._challenge(request, user, wall_now, stale=False, kind=kind)
        try:
            credentials = parse_auth_header(authorization)
        except DigestError as exc:
            return self._refuse(request, 400, f"Bad Request ({kind.credentials}: {exc.reason})")
        if credentials is None:  # a scheme we do not speak (RFC 4475 regaut01)
            return self._challenge(request, user, wall_now, stale=False, kind=kind)
        if (credentials.qop or "").lower() == "auth-int":
            # Never offered (our challenges say qop="auth"): refused the same way for every
            # user, before the user is looked at, and not counted as a wrong password.
            return self._refuse(request, 400, "Bad Request (qop=auth-int was not offered)")
        nonce = self._nonces.check(credentials.nonce, wall_now)
        algorithm = credentials.known_algorithm
        if (
            credentials.realm != self.policy.realm
            or nonce not in (NonceStatus.OK, NonceStatus.STALE)
            or algorithm is None
            or base_algorithm(algorithm) not in self.policy.algorithms
        ):
            # Not an answer to a challenge of ours: a new one. Checked before the user is
            # looked at, so the answer says nothing about whether the user exists.
            return self._challenge(request, user, wall_now, stale=False, kind=kind)
        held = (
            held_ha1(algorithm, user.sip.ha1_md5, user.sip.ha1_sha256)
            if user and user.sip
            else None
        )
        if user is None or held is None or credentials.username != username:
            # Unknown users (or one without a hash for this algorithm) fail exactly like a
            # wrong password, after the same hashing: no probing of usernames.
            verify(credentials, request.method, _DECOY, _DECOY_256, self.policy.realm, nonce)
            why = "unknown_user" if user is None or user.sip is None else "no_hash_for_algorithm"
            return self._failed(request, host, now, wall_now, user, why, kind)
        assert user.sip is not None
        result = verify(
            credentials,
            request.method,
            user.sip.ha1_md5,
            user.sip.ha1_sha256,
            self.policy.realm,
            nonce,
            nonce_counts=self._counts,
        )
        if result in (AuthResult.STALE, AuthResult.REPLAY):
            return self._challenge(request, user, wall_now, stale=True, kind=kind)
        if result is AuthResult.BAD_CREDENTIALS:
            return self._failed(request, host, now, wall_now, user, "bad_credentials", kind)
        if result is not AuthResult.OK:
            return self._challenge(request, user, wall_now, stale=False, kind=kind)
        self._failures.record_success(host, now)
        if user.status is AccountStatus.SUSPENDED:
            return self._refuse(request, 403, "Forbidden (account suspended)", user.id)
        return user

    def _apply(
        self,
        request: SipRequest,
        user: User,
        source: tuple[str, int],
        transport: str,
        wall_now: float,
        now: float,
    ) -> RegisterOutcome:
        headers = request.headers
        try:
            parsed = parse_contacts(headers)
            expires_text = headers.get("Expires")
            expires = parse_expires(expires_text) if expires_text is not None else None
            contacts: list[ContactRequest] | str
            if parsed == "*":
                contacts = "*"
            else:
                contacts = []
                for contact in parsed:
                    raw_expires = contact.params.get("expires")
                    raw_q = contact.params.get("q")
                    contacts.append(
                        ContactRequest(
                            uri=str(contact.uri),
                            expires=parse_expires(raw_expires) if raw_expires else None,
                            q=parse_qvalue(raw_q) if raw_q else None,
                        )
                    )
            cseq = int((headers.get("CSeq") or "0").split()[0])
        except (SipSyntaxError, ValueError) as exc:
            return self._refuse(request, 400, f"Bad Request ({exc})", user.id)
        flow = Flow(transport.lower(), source[0], source[1])
        result = self.bindings.register(
            user.id, contacts, expires, headers.get("Call-ID") or "", cseq, flow, now
        )
        if result.error is RegisterError.INTERVAL_TOO_BRIEF:
            extra = [("Min-Expires", str(result.min_expires))]
            return RegisterOutcome(
                self._reply(request, 423, "Interval Too Brief", extra), "refused", user.id
            )
        if result.error is RegisterError.BAD_WILDCARD:
            return self._refuse(request, 400, "Bad Request (Contact: * needs Expires: 0)", user.id)
        if result.error is RegisterError.OUT_OF_ORDER:
            return self._refuse(request, 500, "Server Internal Error (CSeq out of order)", user.id)
        self._report(result)
        extra = [("Contact", f"<{b.uri}>;expires={b.expires_in(now)}") for b in result.bindings]
        extra.append(("Date", _http_date(int(wall_now))))
        if contacts == []:
            outcome = "query"
        elif result.bindings:
            outcome = "registered"
        else:
            outcome = "unregistered"
        log.info(
            "sip_register",
            user_id=user.id,
            outcome=outcome,
            contacts=len(result.bindings),
            source=f"{source[0]}:{source[1]}",
            transport=transport,
        )
        return RegisterOutcome(
            self._reply(request, 200, "OK", extra),
            outcome,
            user.id,
            added=result.added,
            removed=result.removed,
        )

    # -- bindings over time ------------------------------------------------------------------
    def expire(self, now: float) -> list[Binding]:
        gone = self.bindings.expire(now)
        self._report(RegisterResult(removed=tuple(gone)))
        return gone

    def set_flow_reachable(self, flow: Flow, reachable: bool) -> list[Binding]:
        """A keepalive on `flow` failed (False) or came back (True)."""
        changed = self.bindings.set_flow_reachable(flow, reachable)
        if self.reachability is not None:
            for binding in changed:
                if binding.reachable:
                    self.reachability.endpoint_up(binding.user_id, Channel.IP_PHONE)
                else:
                    self.reachability.endpoint_down(binding.user_id, Channel.IP_PHONE)
        return changed

    def restore(self, bindings: list[Binding], now: float) -> list[Binding]:
        """Bindings kept across a restart (bridge.sip.state): stored, and their users made
        reachable again as a REGISTER would."""
        users = self.directory().users_by_id
        known = [
            b
            for b in bindings
            if b.user_id in users and users[b.user_id].status is not AccountStatus.SUSPENDED
        ]
        added = self.bindings.restore(known, now)
        self._report(RegisterResult(added=tuple(b for b in added if b.reachable)))
        return added

    def forget_user(self, user_id: str) -> list[Binding]:
        """A suspended or deleted user: drop their phones' bindings at once."""
        gone = self.bindings.remove_user(user_id)
        self._report(RegisterResult(removed=tuple(gone)))
        return gone

    def banned_sources(self, now: float) -> list[str]:
        return self._failures.banned_sources(now)

    @property
    def bans(self) -> FailureTracker:
        """The sources banned for failed digests (kept across restarts by bridge.sip.state)."""
        return self._failures

    def _report(self, result: RegisterResult) -> None:
        # See RegisterResult: one endpoint per stored reachable binding.
        if self.reachability is None:
            return
        for binding in result.added:
            self.reachability.endpoint_up(binding.user_id, Channel.IP_PHONE)
        for binding in result.removed:
            if binding.reachable:
                self.reachability.endpoint_down(binding.user_id, Channel.IP_PHONE)

    # -- responses ---------------------------------------------------------------------------
    def _reply(
        self, request: SipRequest, status: int, reason: str, extra: list[tuple[str, str]] = ()
    ) -> SipResponse:
        return make_response(request, status, reason, to_tag=random_hex(5), extra=extra)

    def _refuse(
        self, request: SipRequest, status: int, reason: str, user_id: str | None = None
    ) -> RegisterOutcome:
        return RegisterOutcome(self._reply(request, status, reason), "refused", user_id)

    def _challenge(
        self,
        request: SipRequest,
        user: User | None,
        wall_now: float,
        *,
        stale: bool,
        kind: _AuthKind = _REGISTRAR,
    ) -> RegisterOutcome:
        # The same algorithms for every user, known or not (no probing of usernames by the
        # challenges offered); a user without the hash a phone picks fails like a wrong
        # password (docs/sip.md, "Digest: which algorithm comes first").
        algorithms = list(self.policy.algorithms)
        values = challenges(
            self.policy.realm, self._nonces.issue(wall_now), stale=stale, algorithms=algorithms
        )
        extra = [(kind.challenge, value) for value in values]
        response = make_response(
            request, kind.status, kind.phrase, to_tag=self._stateless_tag(request), extra=extra
        )
        return RegisterOutcome(response, "challenged", user.id if user else None)

    def _stateless_tag(self, request: SipRequest) -> str:
        """The To tag of a challenge: the same for the same request (a retransmission), as
        RFC 3261 §8.2.7 asks of a stateless UAS, and unguessable (keyed by our secret)."""
        headers = request.headers
        material = "\n".join(
            (headers.get("Call-ID") or "", headers.get("From") or "", headers.get("CSeq") or "")
        )
        # Keyed BLAKE2s: one call, a third of an HMAC-SHA256's cost.
        return hashlib.blake2s(
            material.encode("utf-8", "surrogateescape"), digest_size=5, key=self._tag_key
        ).hexdigest()

    def _failed(
        self,
        request: SipRequest,
        host: str,
        now: float,
        wall_now: float,
        user: User | None,
        reason: str,
        kind: _AuthKind,
    ) -> RegisterOutcome:
        banned = self._failures.record_failure(host, now)
        log.warning(
            "sip_auth_failed",
            source=host,
            user_id=user.id if user else None,
            reason=reason,
            banned=banned,
        )
        challenge = self._challenge(request, user, wall_now, stale=False, kind=kind)
        return RegisterOutcome(challenge.response, "auth_failed", challenge.user_id)


# What an unknown user's credentials are checked against: the same work as a real check.
_DECOY = "0" * 32
_DECOY_256 = "0" * 64


@lru_cache(maxsize=4)
def _http_date(second: int) -> str:
    # The Date header has whole seconds: formatted once per second, not per REGISTER.
    return formatdate(second, usegmt=True)
