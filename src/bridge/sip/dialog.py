"""SIP dialogs (RFC 3261 §12-§15) and session-timer bookkeeping (RFC 4028), sans-I/O.

A `Dialog` is a plain object: it builds in-dialog requests, checks the requests and responses
the peer sends, and keeps the dialog state (route set, remote target, CSeq numbers, early /
confirmed / terminated). It never reads a clock or touches a socket: the B2BUA passes messages
in and gets messages and `Verdict`s back; times for session timers are passed in as numbers.

A B2BUA call has one UAS dialog toward the caller (`Dialog.from_uas`) and UAC dialogs toward
the phones or the trunk (`Dialog.from_uac`, or a `DialogSet` when the INVITE forks). A
`DialogTable` finds the dialog of an incoming request or response, 481 when none matches.

Driving a dialog, per transaction:

- a request we send: `create_request` / `create_ack`, then `receive_response` for each
  response the transaction layer passes up;
- a request the peer sends: `receive_request` (answer with `verdict.response` when refused),
  then `response_sent(request, response)` once our answer has gone out.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import NamedTuple

from bridge.sip.grammar import (
    MAX_CSEQ,
    NameAddr,
    Params,
    SipSyntaxError,
    SipUri,
    is_token,
    parse_contacts,
    parse_cseq,
    parse_name_addr,
    parse_option_tags,
    parse_uri,
    parse_via,
    quote,
)
from bridge.sip.model import (
    Headers,
    SipMessage,
    SipRequest,
    SipResponse,
    canonical_name,
    make_response,
    param_of,
)
from bridge.sip.transaction import MAGIC_COOKIE, new_branch
from bridge.text import ascii_digits

__all__ = [
    "MAX_FORWARDS",
    "MIN_SE_FLOOR",
    "TARGET_REFRESH_METHODS",
    "Dialog",
    "DialogError",
    "DialogId",
    "DialogSet",
    "DialogState",
    "DialogTable",
    "Role",
    "SessionTimer",
    "Verdict",
    "VerdictReason",
    "ViaSpec",
    "build_cancel",
    "check_session_expires",
    "format_reason",
    "match_dialog",
    "min_se_from_422",
    "negotiate_session_timer",
    "parse_min_se",
    "parse_session_expires",
    "request_dialog_id",
    "response_dialog_id",
    "retry_after_422",
    "session_timer_answer",
]

MAX_FORWARDS = 70  # §8.1.1.6
# RFC 3261 §12.2 (and RFC 3311 §5.1): requests that may change the remote target.
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE"})
# RFC 4028 §4, §5: no session interval below 90 s; an absent Min-SE means 90.
MIN_SE_FLOOR = 90
# RFC 4028 §10: the non-refresher sends BYE this long (at most) before expiry.
_BYE_MARGIN = 32.0
# Headers the dialog writes itself; `extra_headers` may not override them.
_OWNED_HEADERS = frozenset(
    {"via", "from", "to", "call-id", "cseq", "route", "contact", "content-length", "content-type"}
)


class DialogError(ValueError):
    """A message cannot create or be used with a dialog, or the caller used one wrongly."""


class DialogState(StrEnum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Role(StrEnum):
    """User-agent role, of a dialog's creating INVITE or of one transaction."""

    UAC = "uac"
    UAS = "uas"


class DialogId(NamedTuple):
    """§12: Call-ID, local tag, remote tag (from this side's point of view). A peer without
    tags (RFC 2543) has the empty tag."""

    call_id: str
    local_tag: str
    remote_tag: str

    def peer(self) -> DialogId:
        """The same dialog seen from the other side."""
        return DialogId(self.call_id, self.remote_tag, self.local_tag)


class ViaSpec(NamedTuple):
    """Where we send from: the sent-by `host:port` and the transport of our Via (§18.1.1)."""

    sent_by: str
    transport: str = "UDP"

    @property
    def contact_params(self) -> str:
        """What a Contact of ours needs after host:port: the transport, when it is not UDP
        (a peer's in-dialog requests must come over TCP or TLS, to the TLS port)."""
        transport = self.transport.lower()
        return "" if transport == "udp" else f";transport={transport}"


class VerdictReason(StrEnum):
    ACCEPTED = "accepted"
    ACK = "ack"  # the ACK for our 2xx (§13.3.1.4)
    OUT_OF_DIALOG = "out-of-dialog"  # no To tag: not a dialog's business
    UNKNOWN_DIALOG = "unknown-dialog"  # 481 (§12.2.2)
    DIALOG_TERMINATED = "dialog-terminated"  # 481
    MALFORMED = "malformed"  # 400
    CSEQ_OUT_OF_ORDER = "cseq-out-of-order"  # 500 (§12.2.2)
    GLARE = "glare"  # 491 (§14.2), sent or received
    INVITE_IN_PROGRESS = "invite-in-progress"  # 500 + Retry-After (§14.2)
    ACK_UNMATCHED = "ack-unmatched"  # retransmitted or stale ACK: dropped, never answered
    CANCEL = "cancel"  # a CANCEL for the peer's pending INVITE
    RETRANSMITTED_2XX = "retransmitted-2xx"  # §13.2.2.4: ACK it again
    STALE_RESPONSE = "stale-response"
    SESSION_INTERVAL_TOO_SMALL = "session-interval-too-small"  # 422 (RFC 4028 §6)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a dialog made of an incoming message. When `accepted` is false, `response` (if
    any) is what to answer; ACKs and responses are never answered."""

    accepted: bool
    reason: VerdictReason
    response: SipResponse | None = None
    dialog: Dialog | None = None
    target_refreshed: bool = False
    confirmed: bool = False
    terminated: bool = False


# --- dialog identification (§12, §12.2.2) -----------------------------------------------------


def _call_id(message: SipMessage) -> str | None:
    value = message.headers.get("Call-ID")
    return value.strip() if value and value.strip() else None


def request_dialog_id(request: SipRequest) -> DialogId | None:
    """The dialog an incoming request belongs to, from the receiver's side (UAS-side lookup):
    (Call-ID, To tag, From tag). None without a To tag (not in a dialog) or Call-ID."""
    call_id = _call_id(request)
    local = param_of(request.headers.get("To"), "tag")
    if call_id is None or not local:
        return None
    return DialogId(call_id, local, param_of(request.headers.get("From"), "tag") or "")


def response_dialog_id(response: SipResponse) -> DialogId | None:
    """The dialog an incoming response belongs to, from the side that sent the request
    (UAC-side lookup): (Call-ID, From tag, To tag); a missing To tag is the empty tag
    (§12.1.2)."""
    call_id = _call_id(response)
    local = param_of(response.headers.get("From"), "tag")
    if call_id is None or not local:
        return None
    return DialogId(call_id, local, param_of(response.headers.get("To"), "tag") or "")


def match_dialog(message: SipMessage) -> DialogId | None:
    """`request_dialog_id` for a received request, `response_dialog_id` for a response."""
    if isinstance(message, SipRequest):
        return request_dialog_id(message)
    return response_dialog_id(message)


# --- small parsers ----------------------------------------------------------------------------


def _cseq_of(message: SipMessage) -> tuple[int, str]:
    value = message.headers.get("CSeq")
    if value is None:
        raise DialogError("no CSeq")
    try:
        cseq = parse_cseq(value)
    except SipSyntaxError as exc:
        raise DialogError(str(exc)) from None
    return cseq.number, cseq.method


def _party(message: SipMessage, name: str) -> NameAddr:
    value = message.headers.get(name)
    if value is None:
        raise DialogError(f"no {name}")
    try:
        return parse_name_addr(value)
    except SipSyntaxError as exc:
        raise DialogError(f"bad {name}: {exc}") from None


def _without_tag(party: NameAddr) -> NameAddr:
    kept = [(n, v) for n, v in _pairs(party.params) if n.lower() != "tag"]
    return NameAddr(party.display, party.uri, Params(kept))


def _with_tag(party: NameAddr, tag: str) -> str:
    return str(NameAddr(party.display, party.uri, Params([("tag", tag)]))) if tag else str(party)


def _contact_uri(message: SipMessage) -> SipUri | None:
    """The (first) Contact URI, None when absent; a wildcard or non-SIP URI is an error
    (§8.1.1.8: one SIP or SIPS URI)."""
    if message.headers.get("Contact") is None:
        return None
    try:
        contacts = parse_contacts(message.headers)
    except SipSyntaxError as exc:
        raise DialogError(f"bad Contact: {exc}") from None
    if contacts == "*" or not contacts:
        raise DialogError("Contact must hold a SIP or SIPS URI")
    uri = contacts[0].uri
    if uri.scheme not in ("sip", "sips"):
        raise DialogError(f"Contact is not a SIP URI: {uri}")
    return uri


def _record_route(message: SipMessage) -> tuple[str, ...]:
    """Record-Route values in message order, each checked to be a name-addr (§12.1.1)."""
    values = tuple(message.headers.values("Record-Route"))
    for value in values:
        try:
            parse_name_addr(value)
        except SipSyntaxError as exc:
            raise DialogError(f"bad Record-Route: {exc}") from None
    return values


def _is_sips(uri_text: str) -> bool:
    try:
        return parse_uri(uri_text).scheme == "sips"
    except SipSyntaxError:
        return False


def _check_header_text(name: str, value: str) -> None:
    # A CR or LF in a value would start a new header line (header injection).
    if not is_token(name) or any(char in value for char in "\r\n\x00"):
        raise DialogError(f"bad header {name!r}")


def _via_line(via: ViaSpec | tuple[str, str]) -> str:
    """Our Via with a fresh branch (§8.1.1.7) and rport (RFC 3581 §3)."""
    sent_by, transport = via
    head = _via_head(sent_by, transport)
    return f"{head};branch={new_branch()};rport"


@lru_cache(maxsize=64)
def _via_head(sent_by: str, transport: str) -> str:
    """'SIP/2.0/UDP host:port', checked once per (sent-by, transport): a few per process."""
    head = f"SIP/2.0/{transport.upper()} {sent_by}"
    try:
        parse_via(f"{head};branch={MAGIC_COOKIE}check;rport")
    except SipSyntaxError:
        raise DialogError(f"bad Via sent-by or transport: {sent_by!r} {transport!r}") from None
    return head


def _refuse(
    request: SipRequest,
    reason: VerdictReason,
    status: int,
    text: str,
    *,
    dialog: Dialog | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> Verdict:
    """A refusal; ACKs are never answered (§17.1.1.3, §13.3.1.4)."""
    response = None
    if request.method != "ACK":
        response = make_response(request, status, text, extra=extra)
    return Verdict(False, reason, response, dialog)


def _in_progress(request: SipRequest, dialog: Dialog) -> Verdict:
    """500 with a Retry-After of 0-10 s: the peer's INVITE (§14.2), or its offer (RFC 3311
    §5.2), is still being answered."""
    retry = ("Retry-After", str(secrets.randbelow(11)))
    return _refuse(
        request,
        VerdictReason.INVITE_IN_PROGRESS,
        500,
        "Server Internal Error",
        dialog=dialog,
        extra=[retry],
    )


def _pairs(params: object) -> list[tuple[str, str | None]]:
    return list(params.pairs) if isinstance(params, Params) else []


# --- session timers (RFC 4028) ----------------------------------------------------------------


def parse_session_expires(value: str) -> tuple[int, Role | None]:
    """`1800;refresher=uac` -> (1800, Role.UAC) (RFC 4028 §4); below 90 s is not an error
    here (that is what 422 answers)."""
    head, _, rest = value.partition(";")
    head = head.strip()
    if not ascii_digits(head) or len(head) > 10 or int(head) > MAX_CSEQ:
        raise DialogError(f"bad Session-Expires: {value[:40]!r}")
    refresher = param_of(";" + rest, "refresher") if rest else None
    if refresher is None:
        return int(head), None
    if refresher.lower() not in ("uac", "uas"):
        raise DialogError(f"bad refresher: {refresher[:20]!r}")
    return int(head), Role(refresher.lower())


def parse_min_se(value: str) -> int:
    """`Min-SE: 120` (RFC 4028 §5); parameters are ignored."""
    head = value.partition(";")[0].strip()
    if not ascii_digits(head) or len(head) > 10 or int(head) > MAX_CSEQ:
        raise DialogError(f"bad Min-SE: {value[:40]!r}")
    return int(head)


def _min_se_of(*messages: SipMessage) -> int:
    values = [MIN_SE_FLOOR]
    for message in messages:
        raw = message.headers.get("Min-SE")
        if raw is not None:
            values.append(parse_min_se(raw))
    return max(values)


def option_tags(message: SipMessage, name: str) -> set[str]:
    """The option tags of every `name` header (Require, Supported), lower case; a malformed
    line is skipped."""
    tags: set[str] = set()
    for line in message.headers.get_all(name):
        try:
            tags.update(tag.lower() for tag in parse_option_tags(line))
        except SipSyntaxError:
            continue
    return tags


@dataclass(frozen=True, slots=True)
class SessionTimer:
    """A negotiated session interval (RFC 4028): `refresher` is the role, in the transaction
    that negotiated it, of the side that refreshes; `local_role` is ours in that transaction.
    Times are whatever clock the caller uses (seconds)."""

    interval: int
    refresher: Role
    local_role: Role
    min_se: int = MIN_SE_FLOOR

    @property
    def we_refresh(self) -> bool:
        return self.refresher is self.local_role

    def refresh_due_at(self, established_at: float) -> float | None:
        """When we send the refresh: half the interval after the 2xx (RFC 4028 §7.2, §9);
        None when the peer refreshes."""
        return established_at + self.interval / 2 if self.we_refresh else None

    def expires_at(self, established_at: float) -> float:
        """When the session expires without a refresh (RFC 4028 §10)."""
        return established_at + self.interval

    def bye_due_at(self, established_at: float) -> float:
        """When to send BYE if no refresh succeeded: the non-refresher goes min(32 s, a third
        of the interval) before expiry (RFC 4028 §10), the refresher at expiry."""
        if self.we_refresh:
            return self.expires_at(established_at)
        return self.expires_at(established_at) - min(_BYE_MARGIN, self.interval / 3)

    def header_value(self, sender_role: Role = Role.UAC) -> str:
        """Session-Expires for our next refresh, sent with us in `sender_role`: the refresher
        stays the same UA (RFC 4028 §7.4)."""
        keep = sender_role if self.we_refresh else _other(sender_role)
        return f"{self.interval};refresher={keep}"


def _other(role: Role) -> Role:
    return Role.UAS if role is Role.UAC else Role.UAC


def negotiate_session_timer(
    request: SipRequest, response: SipResponse, *, local_role: Role
) -> SessionTimer | None:
    """The session timer an INVITE/UPDATE and its 2xx agreed on, `local_role` being ours in
    that transaction. The 2xx's Session-Expires decides (RFC 4028 §7.2, §9); without one, we
    as a UAC that asked refresh alone (§7.2: the UAS does not support timers); otherwise
    there is none."""
    min_se = _min_se_of(request, response)
    answered = response.headers.get("Session-Expires")
    if answered is not None:
        interval, refresher = parse_session_expires(answered)
        # §9 makes the UAS set the refresher; a 2xx without one leaves the work to the UAC.
        return SessionTimer(interval, refresher or Role.UAC, local_role, min_se)
    asked = request.headers.get("Session-Expires")
    if (
        local_role is Role.UAC
        and asked is not None
        and "timer" not in option_tags(response, "Require")
    ):
        interval, _ = parse_session_expires(asked)
        return SessionTimer(interval, Role.UAC, local_role, min_se)
    return None


def check_session_expires(request: SipRequest, *, min_se: int = MIN_SE_FLOOR) -> SipResponse | None:
    """UAS check of a request's Session-Expires (RFC 4028 §8.1, §9): None when acceptable,
    a 422 carrying our Min-SE when too short, a 400 when malformed."""
    value = request.headers.get("Session-Expires")
    if value is None:
        return None
    try:
        interval, _ = parse_session_expires(value)
        _min_se_of(request)
    except DialogError as exc:
        return make_response(request, 400, f"Bad Request ({exc})")
    floor = max(min_se, MIN_SE_FLOOR)
    if interval < floor:
        return make_response(
            request, 422, "Session Interval Too Small", extra=[("Min-SE", str(floor))]
        )
    return None


def session_timer_answer(request: SipRequest, *, prefer: Role = Role.UAS) -> list[tuple[str, str]]:
    """Session-Expires (and Require: timer) for our 2xx to `request` (RFC 4028 §9): the
    request's interval, the request's refresher or else `prefer` (uas when the UAC does not
    support timer). Empty when the request asked for no timer. Run `check_session_expires`
    first."""
    value = request.headers.get("Session-Expires")
    if value is None:
        return []
    # §9: the UAS may not raise the interval (too short ones got a 422 already).
    interval, asked = parse_session_expires(value)
    if asked is not None:
        refresher = asked
    elif "timer" in option_tags(request, "Supported"):
        refresher = prefer
    else:
        refresher = Role.UAS
    headers = [("Session-Expires", f"{interval};refresher={refresher}")]
    if refresher is Role.UAC:
        headers.append(("Require", "timer"))  # §9: the UAC must learn it refreshes
    return headers


def min_se_from_422(response: SipResponse) -> int:
    """The Min-SE a 422 demands (RFC 4028 §6), never below 90 s."""
    value = response.headers.get("Min-SE")
    if response.status != 422 or value is None:
        raise DialogError("not a 422 with Min-SE")
    return max(parse_min_se(value), MIN_SE_FLOOR)


def retry_after_422(request: SipRequest, response: SipResponse) -> SipRequest:
    """The request again after a 422 (RFC 4028 §7.4, RFC 3261 §8.1.3.5): CSeq + 1, a new
    branch, Session-Expires raised to at least the 422's Min-SE, Min-SE set to it. For the
    initial INVITE; inside a dialog, `Dialog.receive_response` raises the interval and the
    next `create_request` carries it."""
    min_se = min_se_from_422(response)
    number, method = _cseq_of(request)
    if number >= MAX_CSEQ:
        raise DialogError("CSeq exhausted")
    old = request.headers.get("Session-Expires")
    interval, refresher = parse_session_expires(old) if old is not None else (min_se, None)
    expires = f"{max(interval, min_se)}" + (f";refresher={refresher}" if refresher else "")
    items: list[tuple[str, str]] = []
    branched = False
    for name, value in request.headers:
        if name == "Via" and not branched:
            vias = Headers([(name, value)]).values("Via")
            items.append((name, ", ".join([_rebranched(vias[0]), *vias[1:]])))
            branched = True
        elif name == "CSeq":
            items.append((name, f"{number + 1} {method}"))
        elif name == "Session-Expires":
            items.append((name, expires))
        elif name != "Min-SE":
            items.append((name, value))
    if old is None:
        items.append(("Session-Expires", expires))
    items.append(("Min-SE", str(min_se)))
    return SipRequest(request.method, request.uri, Headers(items), request.body)


def _rebranched(via_text: str) -> str:
    via = parse_via(via_text)
    pairs = [(n, v) for n, v in _pairs(via.params) if n.lower() != "branch"]
    return str(via._replace(params=Params([("branch", new_branch()), *pairs])))


# --- CANCEL (§9.1) ----------------------------------------------------------------------------


def format_reason(cause: int, text: str | None = None, protocol: str = "SIP") -> str:
    """A Reason header value (RFC 3326 §2): `SIP;cause=200;text="Call completed elsewhere"`."""
    if not is_token(protocol) or not 0 <= cause <= 9999:
        raise DialogError("bad Reason protocol or cause")
    value = f"{protocol};cause={cause}"
    return value if text is None else f"{value};text={quote(text)}"


def build_cancel(invite: SipRequest, reason: str | None = None) -> SipRequest:
    """The CANCEL for an INVITE we sent (§9.1): same Request-URI, Call-ID, From, To (as sent,
    so no tag for an initial INVITE) and CSeq number, method CANCEL; only the INVITE's top
    Via (same branch, so it matches the same server transaction); its Route headers; an
    optional Reason header value (RFC 3326); no body."""
    if invite.method != "INVITE":
        raise DialogError("only an INVITE is cancelled (§9.1)")
    vias = invite.headers.values("Via")
    if not vias:
        raise DialogError("the INVITE has no Via")
    number, _ = _cseq_of(invite)
    headers = Headers([("Via", vias[0]), ("Max-Forwards", str(MAX_FORWARDS))])
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    for name in ("From", "To", "Call-ID"):
        value = invite.headers.get(name)
        if value is None:
            raise DialogError(f"the INVITE has no {name}")
        headers.add(name, value)
    headers.add("CSeq", f"{number} CANCEL")
    if reason is not None:
        _check_header_text("Reason", reason)
        headers.add("Reason", reason)
    return SipRequest("CANCEL", invite.uri, headers)


# --- the dialog -------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Dialog:
    """One dialog's state (§12): build it with `from_uas` or `from_uac`.

    `role` is our role in the INVITE that created it. `route_set` holds the Route values in
    the order requests carry them; `remote_target` is where in-dialog requests go;
    `local_target` is our Contact. `local_cseq`/`remote_cseq` are None while empty."""

    id: DialogId
    role: Role
    state: DialogState
    local_party: NameAddr
    remote_party: NameAddr
    remote_target: SipUri
    route_set: tuple[str, ...]
    local_cseq: int | None
    remote_cseq: int | None
    secure: bool
    invite_cseq: int  # the creating INVITE's CSeq number
    local_target: SipUri | None = None
    session_timer: SessionTimer | None = None
    # INVITE transactions in progress (§14.1, §14.2) and the requests they need.
    _local_invite: SipRequest | None = field(default=None, repr=False)
    _local_invite_pending: bool = field(default=False, repr=False)
    _remote_invite: SipRequest | None = field(default=None, repr=False)
    _remote_invite_pending: bool = field(default=False, repr=False)
    _awaiting_ack: bool = field(default=False, repr=False)
    _refreshes: dict[int, SipRequest] = field(default_factory=dict, repr=False)
    _bye_sent: bool = field(default=False, repr=False)

    # --- creation (§12.1)

    @classmethod
    def from_uas(cls, invite: SipRequest, response: SipResponse, *, tls: bool = True) -> Dialog:
        """The dialog our 1xx-with-tag (early) or 2xx (confirmed) to `invite` creates
        (§12.1.1). `tls`: whether the INVITE arrived over TLS (needed with a sips
        Request-URI for the secure flag)."""
        _check_creation(invite, response)
        local_tag = param_of(response.headers.get("To"), "tag")
        if not local_tag:
            raise DialogError("our response needs a To tag to create a dialog (§12.1.1)")
        call_id = _call_id(invite)
        if call_id is None:
            raise DialogError("no Call-ID")
        remote = _party(invite, "From")
        target = _contact_uri(invite)
        if target is None:
            raise DialogError("the INVITE has no Contact (§8.1.1.8)")
        number, _ = _cseq_of(invite)
        confirmed = 200 <= response.status < 300
        dialog = cls(
            id=DialogId(call_id, local_tag, remote.tag or ""),
            role=Role.UAS,
            state=DialogState.CONFIRMED if confirmed else DialogState.EARLY,
            local_party=_without_tag(_party(response, "To")),
            remote_party=_without_tag(remote),
            remote_target=target,
            # §12.1.1: the request's Record-Route, in order.
            route_set=_record_route(invite),
            local_cseq=None,  # §12.1.1: empty; chosen on our first request
            remote_cseq=number,
            secure=tls and _is_sips(invite.uri),
            invite_cseq=number,
            local_target=_contact_uri(response),
            _remote_invite=invite,
            _remote_invite_pending=not confirmed,
            _awaiting_ack=confirmed,
        )
        if confirmed:
            dialog._negotiate(invite, response, Role.UAS)
        return dialog

    @classmethod
    def from_uac(cls, invite: SipRequest, response: SipResponse, *, tls: bool = True) -> Dialog:
        """The dialog a 1xx with a To tag (early) or a 2xx (confirmed) to our `invite`
        creates (§12.1.2). `tls`: whether the INVITE went over TLS."""
        _check_creation(invite, response)
        remote_tag = param_of(response.headers.get("To"), "tag") or ""
        confirmed = 200 <= response.status < 300
        if not confirmed and not remote_tag:
            raise DialogError("a provisional response without To tag creates no dialog")
        call_id = _call_id(invite)
        local = _party(invite, "From")
        if call_id is None or not local.tag:
            raise DialogError("our INVITE needs a Call-ID and a From tag")
        target = _contact_uri(response)
        if target is None:
            if confirmed:
                raise DialogError("a 2xx to INVITE must carry a Contact (§13.3.1.4)")
            # A 1xx without Contact: aim at the Request-URI until the 2xx says better.
            target = parse_uri(invite.uri)
        number, _ = _cseq_of(invite)
        dialog = cls(
            id=DialogId(call_id, local.tag, remote_tag),
            role=Role.UAC,
            state=DialogState.CONFIRMED if confirmed else DialogState.EARLY,
            local_party=_without_tag(local),
            remote_party=_without_tag(_party(invite, "To")),
            remote_target=target,
            # §12.1.2: the response's Record-Route, reversed.
            route_set=tuple(reversed(_record_route(response))),
            local_cseq=number,
            remote_cseq=None,
            secure=tls and _is_sips(invite.uri),
            invite_cseq=number,
            local_target=_contact_uri(invite),
            _local_invite=invite,
            _local_invite_pending=not confirmed,
        )
        if confirmed:
            dialog._negotiate(invite, response, Role.UAC)
        return dialog

    # --- views

    @property
    def call_id(self) -> str:
        return self.id.call_id

    @property
    def local_tag(self) -> str:
        return self.id.local_tag

    @property
    def remote_tag(self) -> str:
        return self.id.remote_tag

    @property
    def awaiting_ack(self) -> bool:
        """We sent a 2xx to an INVITE and no ACK came yet (§13.3.1.4; §15: no BYE before
        it, unless the server transaction timed out)."""
        return self._awaiting_ack

    @property
    def invite_in_progress(self) -> bool:
        """An INVITE transaction is in progress in either direction (§14.1)."""
        return self._local_invite_pending or self._remote_invite_pending

    def refresh_due_at(self, established_at: float) -> float | None:
        """`SessionTimer.refresh_due_at`, None without a session timer."""
        timer = self.session_timer
        return timer.refresh_due_at(established_at) if timer is not None else None

    def expires_at(self, established_at: float) -> float | None:
        """`SessionTimer.expires_at`, None without a session timer."""
        timer = self.session_timer
        return timer.expires_at(established_at) if timer is not None else None

    def reinvite_retry_window(self) -> tuple[float, float]:
        """After a 491, retry a re-INVITE after a random time in this range (§14.1): the
        Call-ID owner (the UAC of the dialog) waits 2.1-4 s, the other 0-2 s."""
        return (2.1, 4.0) if self.role is Role.UAC else (0.0, 2.0)

    # --- requests we send (§12.2.1.1)

    def create_request(
        self,
        method: str,
        *,
        via: ViaSpec | tuple[str, str],
        contact: str | SipUri | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> SipRequest:
        """An in-dialog request (§12.2.1.1). CSeq is the next local number, except ACK (the
        last INVITE's number: `create_ack`) and CANCEL (`build_cancel` of our pending
        INVITE, same branch). INVITE and UPDATE carry a Contact (`contact`, else our known
        one) and, with a session timer, Session-Expires (RFC 4028 §7.4)."""
        if not is_token(method):
            raise DialogError(f"bad method {method!r}")
        if method == "ACK":
            if self._local_invite is None:
                raise DialogError("no INVITE of ours to acknowledge")
            number, _ = _cseq_of(self._local_invite)
            return self.create_ack(
                number, via=via, body=body, content_type=content_type, extra_headers=extra_headers
            )
        if method == "CANCEL":
            if not self._local_invite_pending or self._local_invite is None:
                raise DialogError("no INVITE of ours in progress to cancel (§9.1)")
            return build_cancel(self._local_invite)
        self._check_can_send(method)
        contact_uri = self._contact_for(method, contact)
        extras = _checked_extras(extra_headers)
        number = (self.local_cseq or 0) + 1  # §12.2.1.1; an empty local CSeq starts at 1
        if number > MAX_CSEQ:
            raise DialogError("local CSeq exhausted (§8.1.1.5)")
        headers = self._base_headers(via, f"{number} {method}")
        if contact_uri is not None:
            headers.add("Contact", f"<{contact_uri}>")
        timer = self.session_timer
        extra_names = {name.lower() for name, _ in extras}
        if method in TARGET_REFRESH_METHODS and timer is not None:
            if "session-expires" not in extra_names and "x" not in extra_names:
                headers.add("Session-Expires", timer.header_value(Role.UAC))
            if "min-se" not in extra_names:
                headers.add("Min-SE", str(timer.min_se))
            if "supported" not in extra_names and "k" not in extra_names:
                headers.add("Supported", "timer")  # RFC 4028 §7.1
        _add_extras_and_body(headers, extras, body, content_type)
        request = SipRequest(method, self._request_uri(), headers, body)
        # Committed only now: a refused build consumes no CSeq number.
        self.local_cseq = number
        if contact_uri is not None:
            self.local_target = contact_uri
        if method == "INVITE":
            self._local_invite = request
            self._local_invite_pending = True
        if method in TARGET_REFRESH_METHODS:
            self._refreshes[number] = request
        if method == "BYE":
            # §15.1.1: the session ends as the BYE goes out; its response still matches.
            self.state = DialogState.TERMINATED
            self._bye_sent = True
        return request

    def create_refresh(
        self,
        method: str = "UPDATE",
        *,
        via: ViaSpec | tuple[str, str],
        contact: str | SipUri | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> SipRequest:
        """A session refresh (RFC 4028 §7.4): an UPDATE (or re-INVITE, which should carry
        the session description again) with Session-Expires keeping the same refresher."""
        if method not in TARGET_REFRESH_METHODS:
            raise DialogError("a session refresh is an UPDATE or a re-INVITE")
        if self.session_timer is None:
            raise DialogError("no session timer was negotiated")
        return self.create_request(
            method,
            via=via,
            contact=contact,
            body=body,
            content_type=content_type,
            extra_headers=extra_headers,
        )

    def create_ack(
        self,
        invite_cseq: int,
        *,
        via: ViaSpec | tuple[str, str],
        body: bytes = b"",
        content_type: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> SipRequest:
        """The ACK for a 2xx to our INVITE with CSeq `invite_cseq` (§13.2.2.4): routed like
        any in-dialog request, a new branch, CSeq `invite_cseq ACK`. Authorization headers
        the INVITE carried go in `extra_headers`."""
        if self.state is DialogState.EARLY:
            raise DialogError("an early dialog has no 2xx to acknowledge")
        if self._local_invite is None or not 0 <= invite_cseq <= (self.local_cseq or 0):
            raise DialogError(f"we sent no INVITE with CSeq {invite_cseq}")
        extras = _checked_extras(extra_headers)
        headers = self._base_headers(via, f"{invite_cseq} ACK")
        _add_extras_and_body(headers, extras, body, content_type)
        return SipRequest("ACK", self._request_uri(), headers, body)

    def _check_can_send(self, method: str) -> None:
        if self.state is DialogState.TERMINATED and not (method == "BYE" and self._bye_sent):
            raise DialogError("the dialog is terminated")
        if method == "INVITE":
            if self.state is not DialogState.CONFIRMED:
                raise DialogError("no re-INVITE on an early dialog (use UPDATE, RFC 3311)")
            if self.invite_in_progress:
                raise DialogError("an INVITE transaction is in progress (§14.1)")
        if method == "BYE" and self.role is Role.UAS and self.state is DialogState.EARLY:
            raise DialogError("the callee may not send BYE on an early dialog (§15)")

    def _contact_for(self, method: str, contact: str | SipUri | None) -> SipUri | None:
        if contact is None:
            if method not in TARGET_REFRESH_METHODS:
                return None
            if self.local_target is None:
                raise DialogError(f"{method} needs a Contact (§12.2.1.1): pass contact=")
            uri = self.local_target
        elif isinstance(contact, str):
            try:
                uri = parse_uri(contact.strip().removeprefix("<").removesuffix(">"))
            except SipSyntaxError as exc:
                raise DialogError(f"bad contact: {exc}") from None
        else:
            uri = contact
        if uri.scheme not in ("sip", "sips"):
            raise DialogError("the Contact must be a SIP or SIPS URI")
        if self.secure and uri.scheme != "sips":
            raise DialogError("a secure dialog needs a SIPS Contact (§12.1.1, §8.1.1.8)")
        return uri

    def _base_headers(self, via: ViaSpec | tuple[str, str], cseq: str) -> Headers:
        """Via, Max-Forwards, Route, From, To, Call-ID, CSeq (§12.2.1.1, §8.1.1)."""
        line = _via_line(via)
        if self.secure and via[1].upper() not in ("TLS", "WSS"):
            raise DialogError("a secure dialog is sent over TLS (§12.2.1.1, §26.2)")
        headers = Headers([("Via", line), ("Max-Forwards", str(MAX_FORWARDS))])
        for route in self._routes():
            headers.add("Route", route)
        headers.add("From", _with_tag(self.local_party, self.local_tag))
        headers.add("To", _with_tag(self.remote_party, self.remote_tag))
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", cseq)
        return headers

    def _strict_first_route(self) -> NameAddr | None:
        """The first route when it is a strict router (no `lr`, §12.2.1.1), else None."""
        if not self.route_set:
            return None
        first = parse_name_addr(self.route_set[0])
        return None if "lr" in first.uri.params else first

    def _request_uri(self) -> str:
        strict = self._strict_first_route()
        if strict is None:
            return str(self.remote_target)  # loose routing, or no route set
        # Strict routing: the first route becomes the Request-URI, minus what a Request-URI
        # may not carry (§19.1.1 table 1: the method parameter and URI headers).
        params = [(n, v) for n, v in _pairs(strict.uri.params) if n.lower() != "method"]
        return str(strict.uri._replace(params=Params(params), headers=Params()))

    def _routes(self) -> list[str]:
        if self._strict_first_route() is None:
            return list(self.route_set)
        # §12.2.1.1: the rest of the route set, then the remote target as the last Route.
        return [*self.route_set[1:], f"<{self.remote_target}>"]

    # --- requests the peer sends (§12.2.2)

    def receive_request(self, request: SipRequest) -> Verdict:
        """Check an in-dialog request from the peer and update the dialog: 481 when it is
        not this dialog's (or the dialog ended), 500 for a CSeq not above the last one,
        491/500 for a re-INVITE during another INVITE (§14.2), 400 for a missing Contact on
        a target refresh; a BYE terminates."""
        if request_dialog_id(request) != self.id:
            return _refuse(
                request, VerdictReason.UNKNOWN_DIALOG, 481, "Call/Transaction Does Not Exist"
            )
        if self.state is DialogState.TERMINATED:
            return _refuse(
                request,
                VerdictReason.DIALOG_TERMINATED,
                481,
                "Call/Transaction Does Not Exist",
                dialog=self,
            )
        try:
            number, cseq_method = _cseq_of(request)
        except DialogError:
            return _refuse(request, VerdictReason.MALFORMED, 400, "Bad CSeq", dialog=self)
        if cseq_method != request.method:
            return _refuse(request, VerdictReason.MALFORMED, 400, "CSeq Mismatch", dialog=self)
        method = request.method
        if method == "ACK":
            return self._receive_ack(number)
        if method == "CANCEL":
            # §9.2: a CANCEL targets our pending server INVITE, with its CSeq number.
            pending = self._remote_invite if self._remote_invite_pending else None
            if pending is not None and number == _cseq_of(pending)[0]:
                return Verdict(True, VerdictReason.CANCEL, dialog=self)
            return _refuse(
                request,
                VerdictReason.UNKNOWN_DIALOG,
                481,
                "Call/Transaction Does Not Exist",
                dialog=self,
            )
        # §12.2.2: lower (or equal: a repeat) than the remote CSeq is out of order.
        if self.remote_cseq is not None and number <= self.remote_cseq:
            return _refuse(
                request, VerdictReason.CSEQ_OUT_OF_ORDER, 500, "Server Internal Error", dialog=self
            )
        self.remote_cseq = number
        if method == "INVITE":
            if self._local_invite_pending:
                return _refuse(request, VerdictReason.GLARE, 491, "Request Pending", dialog=self)
            if self._remote_invite_pending:
                return _in_progress(request, self)
        if method == "UPDATE" and request.body and self.state is DialogState.CONFIRMED:
            # RFC 3311 §5.2: an offer while our re-INVITE's offer awaits its answer is glare
            # (491); one while the peer's re-INVITE offer awaits ours, 500 and a retry after
            # 0-10 s. (Early dialogs are left alone: a reliable 18x may have answered.)
            local, remote = self._local_invite, self._remote_invite
            if self._local_invite_pending and local is not None and local.body:
                return _refuse(request, VerdictReason.GLARE, 491, "Request Pending", dialog=self)
            if self._remote_invite_pending and remote is not None and remote.body:
                return _in_progress(request, self)
        refreshed = False
        if method in TARGET_REFRESH_METHODS:
            try:
                target = _contact_uri(request)
            except DialogError as exc:
                return _refuse(request, VerdictReason.MALFORMED, 400, str(exc), dialog=self)
            if target is None:
                return _refuse(
                    request, VerdictReason.MALFORMED, 400, "Missing Contact", dialog=self
                )
            # §12.2.2: a target refresh request replaces the remote target.
            refreshed = target != self.remote_target
            self.remote_target = target
            self._refreshes[number] = request
        if method == "INVITE":
            self._remote_invite = request
            self._remote_invite_pending = True
            self._awaiting_ack = False
        terminated = False
        if method == "BYE":
            self.state = DialogState.TERMINATED  # §15.1.2
            terminated = True
        return Verdict(
            True,
            VerdictReason.ACCEPTED,
            dialog=self,
            target_refreshed=refreshed,
            terminated=terminated,
        )

    def _receive_ack(self, number: int) -> Verdict:
        """The ACK for our 2xx: once per INVITE, matching its CSeq (§13.3.1.4)."""
        invite = self._remote_invite
        if self._awaiting_ack and invite is not None and number == _cseq_of(invite)[0]:
            self._awaiting_ack = False
            return Verdict(True, VerdictReason.ACK, dialog=self)
        return Verdict(False, VerdictReason.ACK_UNMATCHED, dialog=self)

    def response_sent(self, request: SipRequest, response: SipResponse) -> None:
        """We answered the peer's `request` (accepted by `receive_request`) with `response`:
        a final answer to its INVITE ends that transaction (§14.2); a 2xx to the creating
        INVITE confirms an early dialog (§12.1.1), a non-2xx ends it (§12.3); a 2xx to a
        refresh renegotiates the session timer (RFC 4028 §9)."""
        try:
            number, method = _cseq_of(response)
        except DialogError:
            return
        status = response.status
        if status < 200:
            return
        success = status < 300
        invite = self._remote_invite if self._remote_invite_pending else None
        if method == "INVITE" and invite is not None and number == _cseq_of(invite)[0]:
            self._remote_invite_pending = False
            if success:
                self._awaiting_ack = True
                if self.state is DialogState.EARLY:
                    self.state = DialogState.CONFIRMED
                    self.local_target = _safe_contact(response) or self.local_target
            elif self.state is DialogState.EARLY:
                self.state = DialogState.TERMINATED
        refresh = self._refreshes.pop(number, None)
        if success and method in TARGET_REFRESH_METHODS:
            self._negotiate(refresh or request, response, Role.UAS)

    # --- responses to requests we sent (§12.2.1.2)

    def receive_response(self, response: SipResponse) -> Verdict:
        """A response to a request we sent in this dialog: a 2xx to an INVITE confirms an
        early dialog (route set recomputed, §13.2.2.4) and, like a 2xx to UPDATE, refreshes
        the remote target (§12.2.1.2) and the session timer; 481 or 408 ends the dialog;
        a non-2xx final to the creating INVITE ends an early dialog (§13.2.2.3); a 422
        raises the session interval (RFC 4028 §7.4)."""
        rid = response_dialog_id(response)
        if rid is None or rid != self.id:
            return Verdict(False, VerdictReason.UNKNOWN_DIALOG, dialog=self)
        try:
            number, method = _cseq_of(response)
        except DialogError:
            return Verdict(False, VerdictReason.MALFORMED, dialog=self)
        status = response.status
        if status < 200:
            return Verdict(True, VerdictReason.ACCEPTED, dialog=self)
        if method == "INVITE":
            return self._invite_response(response, number)
        request = self._refreshes.pop(number, None)
        if status in (408, 481):
            self.state = DialogState.TERMINATED  # §12.2.1.2
            return Verdict(True, VerdictReason.ACCEPTED, dialog=self, terminated=True)
        if status == 422 and request is not None:
            self._raise_interval(response)
            return Verdict(True, VerdictReason.SESSION_INTERVAL_TOO_SMALL, dialog=self)
        refreshed = False
        if 200 <= status < 300 and method in TARGET_REFRESH_METHODS:
            refreshed = self._refresh_target(response)
            if request is not None:
                self._negotiate(request, response, Role.UAC)
        terminated = method == "BYE" and status not in (401, 407)
        return Verdict(
            True,
            VerdictReason.ACCEPTED,
            dialog=self,
            target_refreshed=refreshed,
            terminated=terminated,
        )

    def _invite_response(self, response: SipResponse, number: int) -> Verdict:
        invite = self._local_invite
        if invite is None or number != _cseq_of(invite)[0]:
            return Verdict(False, VerdictReason.STALE_RESPONSE, dialog=self)
        status = response.status
        pending = self._local_invite_pending
        self._local_invite_pending = False
        request = self._refreshes.pop(number, None) or invite
        if 200 <= status < 300:
            confirmed = False
            if self.state is DialogState.EARLY:
                # §13.2.2.4: confirm, and recompute the route set from the 2xx.
                self.state = DialogState.CONFIRMED
                # A malformed Record-Route keeps the early dialog's route set.
                with contextlib.suppress(DialogError):
                    self.route_set = tuple(reversed(_record_route(response)))
                confirmed = True
            refreshed = self._refresh_target(response)
            if pending:
                self._negotiate(request, response, Role.UAC)
            reason = VerdictReason.ACCEPTED if pending else VerdictReason.RETRANSMITTED_2XX
            return Verdict(
                True, reason, dialog=self, target_refreshed=refreshed, confirmed=confirmed
            )
        if not pending:
            return Verdict(False, VerdictReason.STALE_RESPONSE, dialog=self)
        if status in (408, 481) or (self.state is DialogState.EARLY and number == self.invite_cseq):
            # §12.2.1.2 (408/481), §13.2.2.3 (a failed creating INVITE ends early dialogs).
            self.state = DialogState.TERMINATED
            return Verdict(True, VerdictReason.ACCEPTED, dialog=self, terminated=True)
        if status == 491:
            return Verdict(True, VerdictReason.GLARE, dialog=self)
        if status == 422:
            self._raise_interval(response)
            return Verdict(True, VerdictReason.SESSION_INTERVAL_TOO_SMALL, dialog=self)
        return Verdict(True, VerdictReason.ACCEPTED, dialog=self)

    def _refresh_target(self, response: SipResponse) -> bool:
        target = _safe_contact(response)
        if target is None or target == self.remote_target:
            return False
        self.remote_target = target  # §12.2.1.2
        return True

    def _negotiate(self, request: SipRequest, response: SipResponse, role: Role) -> None:
        try:
            timer = negotiate_session_timer(request, response, local_role=role)
        except DialogError:
            return  # a malformed Session-Expires from the peer negotiates nothing
        if timer is not None:
            self.session_timer = timer

    def terminate(self) -> None:
        """End the dialog without a message: early dialogs once their INVITE failed or its
        transaction ended (§13.2.2.3, §13.2.2.4), or a timed-out session (RFC 4028 §10)."""
        self.state = DialogState.TERMINATED
        self._local_invite_pending = False
        self._remote_invite_pending = False

    def on_422(self, response: SipResponse) -> int:
        """A 422 to our refresh (RFC 4028 §7.4): raise the session interval and Min-SE to
        the peer's Min-SE; returns the new interval for the retried request."""
        return self._raise_interval(response)

    def _raise_interval(self, response: SipResponse) -> int:
        try:
            min_se = min_se_from_422(response)
        except DialogError:
            return self.session_timer.interval if self.session_timer else MIN_SE_FLOOR
        timer = self.session_timer or SessionTimer(min_se, Role.UAC, Role.UAC)
        interval = max(timer.interval, min_se)
        self.session_timer = SessionTimer(interval, timer.refresher, timer.local_role, min_se)
        return interval


def _safe_contact(message: SipMessage) -> SipUri | None:
    try:
        return _contact_uri(message)
    except DialogError:
        return None


def _check_creation(invite: SipRequest, response: SipResponse) -> None:
    if invite.method != "INVITE":
        raise DialogError("only an INVITE creates a dialog here")
    if not 101 <= response.status <= 299:
        raise DialogError(f"a {response.status} creates no dialog (§12.1)")
    if _call_id(response) not in (None, _call_id(invite)):
        raise DialogError("the response is for another call")


def _checked_extras(extra_headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    extras = list(extra_headers)
    for name, value in extras:
        _check_header_text(name, value)
        if canonical_name(name).lower() in _OWNED_HEADERS:
            raise DialogError(f"{canonical_name(name)} is set by the dialog, not extra_headers")
    return extras


def _add_extras_and_body(
    headers: Headers, extras: list[tuple[str, str]], body: bytes, content_type: str | None
) -> None:
    for name, value in extras:
        headers.add(name, value)
    if content_type is not None:
        _check_header_text("Content-Type", content_type)
        headers.add("Content-Type", content_type)
    elif body:
        raise DialogError("a body needs a Content-Type (§20.15)")


# --- forking (§12.1.2, §13.2.2.4) -------------------------------------------------------------


class DialogSet:
    """The dialogs one INVITE of ours creates: one per To tag, early or confirmed. Forking
    proxies may return several early dialogs, and more than one 2xx (§13.2.2.4: each must
    be ACKed; a B2BUA keeps one and sends BYE on the others)."""

    def __init__(self, invite: SipRequest, *, tls: bool = True) -> None:
        if invite.method != "INVITE":
            raise DialogError("a dialog set belongs to an INVITE")
        self.invite = invite
        self.tls = tls
        self.dialogs: dict[DialogId, Dialog] = {}
        self.final_status: int | None = None
        self._key = (_call_id(invite), param_of(invite.headers.get("From"), "tag"))
        self._cseq = _cseq_of(invite)[0]

    def __iter__(self) -> Iterator[Dialog]:
        return iter(list(self.dialogs.values()))

    def __len__(self) -> int:
        return len(self.dialogs)

    @property
    def early(self) -> list[Dialog]:
        return [d for d in self.dialogs.values() if d.state is DialogState.EARLY]

    @property
    def confirmed(self) -> list[Dialog]:
        return [d for d in self.dialogs.values() if d.state is DialogState.CONFIRMED]

    def receive_response(self, response: SipResponse) -> Dialog | None:
        """A response to our INVITE: the dialog it creates or updates, or None (100, 1xx
        without tag, a failure, or a response to another request). Raises `DialogError`
        when a response cannot create a dialog (a 2xx without Contact, a malformed
        Record-Route): a 2xx must still be ACKed and may be hung up."""
        rid = response_dialog_id(response)
        try:
            number, method = _cseq_of(response)
        except DialogError:
            return None
        if rid is None or (rid.call_id, rid.local_tag) != self._key:
            return None
        if method != "INVITE" or number != self._cseq:
            return None
        status = response.status
        if status >= 300:
            if self.final_status is None:
                self.final_status = status
            for dialog in self.early:
                dialog.terminate()  # §13.2.2.3: a non-2xx final ends every early dialog
            return None
        if status < 101 or (status < 200 and not rid.remote_tag):
            return None
        if 200 <= status < 300 and self.final_status is None:
            self.final_status = status
        dialog = self.dialogs.get(rid)
        if dialog is None:
            dialog = Dialog.from_uac(self.invite, response, tls=self.tls)
            self.dialogs[rid] = dialog
        else:
            dialog.receive_response(response)
        return dialog

    def terminate_early(self) -> list[Dialog]:
        """End the early dialogs no 2xx confirmed, once the INVITE transaction is over
        (§13.2.2.4); returns them."""
        ended = self.early
        for dialog in ended:
            dialog.terminate()
        return ended


# --- lookup -----------------------------------------------------------------------------------


class DialogTable:
    """Every live dialog, by `DialogId`; finds the dialog for an incoming message."""

    def __init__(self) -> None:
        self._dialogs: dict[DialogId, Dialog] = {}

    def __len__(self) -> int:
        return len(self._dialogs)

    def __iter__(self) -> Iterator[Dialog]:
        return iter(list(self._dialogs.values()))

    def __contains__(self, dialog_id: object) -> bool:
        return dialog_id in self._dialogs

    def add(self, dialog: Dialog) -> None:
        if dialog.id in self._dialogs and self._dialogs[dialog.id] is not dialog:
            raise DialogError(f"dialog {dialog.id} already exists")
        self._dialogs[dialog.id] = dialog

    def get(self, dialog_id: DialogId) -> Dialog | None:
        return self._dialogs.get(dialog_id)

    def discard(self, dialog_id: DialogId) -> Dialog | None:
        return self._dialogs.pop(dialog_id, None)

    def by_call_id(self, call_id: str) -> list[Dialog]:
        return [d for d in self._dialogs.values() if d.call_id == call_id]

    def find_for_request(self, request: SipRequest) -> Dialog | None:
        dialog_id = request_dialog_id(request)
        return self._dialogs.get(dialog_id) if dialog_id is not None else None

    def find_for_response(self, response: SipResponse) -> Dialog | None:
        dialog_id = response_dialog_id(response)
        return self._dialogs.get(dialog_id) if dialog_id is not None else None

    def receive_request(self, request: SipRequest) -> Verdict:
        """Route an incoming request to its dialog (§12.2.2): a request without To tag is
        out of dialog (no response: not ours to answer), an unknown dialog gets 481 (an ACK
        gets nothing). A dialog the peer's BYE ended leaves the table."""
        if request_dialog_id(request) is None:
            return Verdict(False, VerdictReason.OUT_OF_DIALOG)
        dialog = self.find_for_request(request)
        if dialog is None:
            return _refuse(
                request, VerdictReason.UNKNOWN_DIALOG, 481, "Call/Transaction Does Not Exist"
            )
        verdict = dialog.receive_request(request)
        if verdict.terminated:
            self._dialogs.pop(dialog.id, None)
        return verdict

    def receive_response(self, response: SipResponse) -> Verdict:
        """Route a response to a request we sent in a dialog; a final answer to our BYE
        (other than an auth challenge) removes the dialog."""
        dialog = self.find_for_response(response)
        if dialog is None:
            return Verdict(False, VerdictReason.UNKNOWN_DIALOG)
        verdict = dialog.receive_response(response)
        if verdict.terminated:
            self._dialogs.pop(dialog.id, None)
        return verdict

    def prune(self) -> list[Dialog]:
        """Remove and return every terminated dialog."""
        ended = [d for d in self._dialogs.values() if d.state is DialogState.TERMINATED]
        for dialog in ended:
            del self._dialogs[dialog.id]
        return ended
