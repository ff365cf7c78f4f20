"""SIP transactions (RFC 3261 §17, with the RFC 6026 "Accepted" states), sans-I/O.

`TransactionLayer` owns every client and server transaction. It never reads a clock or
touches a socket: the caller passes messages in with the `now` of their arrival, drains
`datagrams_to_send()`, arms one timer at `next_deadline()` and calls `handle_timers(now)`
when it fires (the shape of aioquic's `QuicConnection`). Everything that the transaction user
(TU: UAC/UAS core, B2BUA) must learn comes back as typed events.

Each of the four machines is a small class; the states each may move between are written
down as a table (`TRANSITIONS`), and a move outside it is a bug that raises.
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import ClassVar, NamedTuple

from bridge.sip.ids import random_hex
from bridge.sip.model import (
    Headers,
    SerializedResponse,
    SipMessage,
    SipRequest,
    SipResponse,
    header_params,
    make_response,
    param_of,
    split_comma_values,
)
from bridge.text import ascii_digits

__all__ = [
    "MAGIC_COOKIE",
    "TRANSITIONS",
    "AckFor2xx",
    "Address",
    "Event",
    "NewRequest",
    "Outgoing",
    "Response",
    "StrayResponse",
    "Timeout",
    "TimerSettings",
    "TransactionError",
    "TransactionKind",
    "TransactionLayer",
    "TransactionState",
    "TransactionStats",
    "TransportError",
    "UnknownTransaction",
    "build_ack",
    "is_reliable",
    "new_branch",
    "response_destination",
    "stamp_received",
]

Address = tuple[str, int]

# RFC 3261 §8.1.1.7: a branch starting with this was built by an RFC 3261 element and is
# unique per transaction; anything else falls back to RFC 2543 matching (§17.2.3).
MAGIC_COOKIE = "z9hG4bK"

_UNRELIABLE = frozenset({"udp"})


def is_reliable(transport: str) -> bool:
    """TCP, TLS, SCTP, WS(S) are reliable; only UDP needs retransmissions (§17.1.1.2)."""
    return transport.lower() not in _UNRELIABLE


def new_branch() -> str:
    """A fresh Via branch: the magic cookie and 96 random bits (§8.1.1.7)."""
    return MAGIC_COOKIE + random_hex(12)


# --- settings -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """RFC 3261 timer values (Table 4, §17.1.1.1 for T1/T2/T4). `None` means the RFC default,
    64*T1 for B, F, H, J and for the RFC 6026 timers L and M."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_b: float | None = None
    timer_d: float = 32.0  # on unreliable transports; always 0 on reliable ones
    timer_f: float | None = None
    timer_h: float | None = None
    timer_j: float | None = None  # on unreliable transports; always 0 on reliable ones
    timer_l: float | None = None
    timer_m: float | None = None
    # §17.2.1: a server INVITE transaction sends 100 Trying itself when the TU has not
    # answered within 200 ms. None turns that off.
    trying_delay: float | None = 0.2
    # §9.1: if a CANCELled INVITE gets no final response within 64*T1, the client
    # transaction is given up. None means 64*T1.
    cancel_wait: float | None = None

    def __post_init__(self) -> None:
        # T1 == 0 would re-arm Timer A/E/G at `now` forever.
        if self.t1 <= 0 or self.t2 < self.t1 or self.t4 < 0:
            raise ValueError("need 0 < T1 <= T2 and T4 >= 0")

    def duration(self, timer: str, *, reliable: bool) -> float:
        """Seconds for timer B, D, F, H, I, J, K, L, M or 'cancel' on a given transport."""
        long = 64 * self.t1
        match timer:
            case "B":
                return long if self.timer_b is None else self.timer_b
            case "F":
                return long if self.timer_f is None else self.timer_f
            case "H":
                return long if self.timer_h is None else self.timer_h
            case "L":
                return long if self.timer_l is None else self.timer_l
            case "M":
                return long if self.timer_m is None else self.timer_m
            case "cancel":
                return long if self.cancel_wait is None else self.cancel_wait
            # The waits below only absorb retransmissions, which reliable transports
            # never deliver: zero there (Table 4).
            case "D":
                return 0.0 if reliable else self.timer_d
            case "I" | "K":
                return 0.0 if reliable else self.t4
            case "J":
                return 0.0 if reliable else (long if self.timer_j is None else self.timer_j)
        raise ValueError(f"no duration for timer {timer!r}")


# --- events and output ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A request that opened a server transaction; the TU answers with `send_response`."""

    transaction_id: str
    request: SipRequest
    source: Address
    transport: str


@dataclass(frozen=True, slots=True)
class Response:
    """A response for the TU from a client transaction."""

    transaction_id: str
    response: SipResponse


@dataclass(frozen=True, slots=True)
class Timeout:
    """Timer B, F or H fired (no answer / no ACK), or a CANCELled INVITE got no final
    response in time (timer 'cancel', §9.1). The transaction is gone."""

    transaction_id: str
    timer: str


@dataclass(frozen=True, slots=True)
class TransportError:
    """The transport could not deliver a message of this transaction (§17.1.1.2, §17.2.4);
    reported through `TransactionLayer.transport_error`. The transaction is gone."""

    transaction_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class AckFor2xx:
    """An ACK for a 2xx: its own end-to-end 'transaction' (§17.1.1.3, §13.3.1.4), for the TU.
    `transaction_id` is the INVITE server transaction in the Accepted state it matched
    (RFC 6026 §7.1), or None when it matched none."""

    request: SipRequest
    source: Address
    transport: str
    transaction_id: str | None = None


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response matching no client transaction (§17.1.3). Dropped by the layer and counted;
    a UAC core may still use a 2xx (§13.2.2.4: re-ACK after the transaction is gone)."""

    response: SipResponse
    source: Address


Event = NewRequest | Response | Timeout | TransportError | AckFor2xx | StrayResponse


class Outgoing(NamedTuple):
    """One message for the transport: what, where, over which transport, for which
    transaction (None for stateless sends); the transport reports failures by that id."""

    message: SipMessage | SerializedResponse
    destination: Address
    transport: str
    transaction_id: str | None
    wire: bytes | None = None  # the message's bytes, when the sender has them already

    @property
    def data(self) -> bytes:
        return self.wire if self.wire is not None else self.message.to_bytes()


class TransactionError(Exception):
    """The TU used the layer wrongly (a bad request to send, a bad status)."""


class UnknownTransaction(TransactionError, KeyError):
    """No live transaction has this id (it terminated, or never existed)."""


@dataclass(slots=True)
class TransactionStats:
    """Counters for metrics; `len(layer)` is the live-transaction gauge."""

    created: int = 0
    terminated: int = 0
    retransmissions: int = 0  # sent by timers A, E, G
    absorbed: int = 0  # retransmitted requests/responses answered or dropped by a transaction
    stray_responses: int = 0
    malformed: int = 0  # no usable Via / CSeq: cannot be matched, dropped
    timeouts: int = 0
    transport_errors: int = 0


# --- states ---------------------------------------------------------------------------------


class TransactionKind(StrEnum):
    CLIENT_INVITE = "ict"
    CLIENT_NON_INVITE = "nict"
    SERVER_INVITE = "ist"
    SERVER_NON_INVITE = "nist"


class TransactionState(StrEnum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"  # RFC 6026
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


_S = TransactionState
_K = TransactionKind

# Allowed moves per machine: RFC 3261 figures 5-8, with RFC 6026 figures 5 and 7 for the
# INVITE machines (2xx leads to Accepted, not straight to Terminated).
TRANSITIONS: dict[TransactionKind, dict[TransactionState, frozenset[TransactionState]]] = {
    _K.CLIENT_INVITE: {
        _S.CALLING: frozenset({_S.PROCEEDING, _S.ACCEPTED, _S.COMPLETED, _S.TERMINATED}),
        _S.PROCEEDING: frozenset({_S.ACCEPTED, _S.COMPLETED, _S.TERMINATED}),
        _S.ACCEPTED: frozenset({_S.TERMINATED}),
        _S.COMPLETED: frozenset({_S.TERMINATED}),
    },
    _K.CLIENT_NON_INVITE: {
        _S.TRYING: frozenset({_S.PROCEEDING, _S.COMPLETED, _S.TERMINATED}),
        _S.PROCEEDING: frozenset({_S.COMPLETED, _S.TERMINATED}),
        _S.COMPLETED: frozenset({_S.TERMINATED}),
    },
    _K.SERVER_INVITE: {
        _S.PROCEEDING: frozenset({_S.ACCEPTED, _S.COMPLETED, _S.TERMINATED}),
        _S.ACCEPTED: frozenset({_S.TERMINATED}),
        _S.COMPLETED: frozenset({_S.CONFIRMED, _S.TERMINATED}),
        _S.CONFIRMED: frozenset({_S.TERMINATED}),
    },
    _K.SERVER_NON_INVITE: {
        _S.TRYING: frozenset({_S.PROCEEDING, _S.COMPLETED, _S.TERMINATED}),
        _S.PROCEEDING: frozenset({_S.COMPLETED, _S.TERMINATED}),
        _S.COMPLETED: frozenset({_S.TERMINATED}),
    },
}


# --- header helpers (enough for matching; bridge.sip.grammar has the full grammar) ------------

_LWS_IN_VIA_HEAD = re.compile(r"\s*([/:])\s*")


def _top_via(message: SipMessage) -> str | None:
    line = message.headers.get("Via")
    if line is None:
        return None
    first = _first_value(line)
    if first is not None:
        return first
    vias = message.headers.values("Via")  # an empty first line: the next one's first value
    return vias[0] if vias else None


@lru_cache(maxsize=4096)
def _first_value(line: str) -> str | None:
    # Cached: matching, stamping and routing each ask for the same message's top Via.
    values = split_comma_values(line)
    return values[0] if values else None


@lru_cache(maxsize=4096)
def _split_via(via: str) -> tuple[str, str, str] | None:
    """'SIP/2.0/UDP h:5060;branch=x' -> ('SIP/2.0/UDP', 'h:5060', 'branch=x') (LWS removed
    around '/' and ':', which §20.42 allows). Cached: matching, stamping and routing the
    response each need the same top Via."""
    head, _, params = via.partition(";")
    parts = head.split(None, 1)
    if (
        len(parts) != 2
        or parts[0].endswith(("/", ":"))
        or parts[1].startswith(("/", ":"))
        or len(parts[1].split()) != 1
    ):
        # LWS inside the protocol or sent-by (rare): the slow, general way.
        parts = _LWS_IN_VIA_HEAD.sub(r"\1", head.strip()).split(None, 1)
    if len(parts) != 2 or not parts[1]:
        return None
    return parts[0], parts[1].strip(), params


def _host_port(sent_by: str) -> tuple[str, int | None]:
    """'[2001:db8::1]:5070' -> ('2001:db8::1', 5070); 'example.com' -> ('example.com', None)."""
    if sent_by.startswith("["):
        host, _, rest = sent_by[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = sent_by.rpartition(":")
        if not sep:
            host, port_text = sent_by, ""
    # (at most 5 digits before int(): int() of thousands of digits raises)
    ok = ascii_digits(port_text) and len(port_text) <= 5 and int(port_text) < 65536
    port = int(port_text) if ok else None
    return host.lower(), port


def _split_params(params: str) -> list[str]:
    """Split 'a=1;b="x;y";c' at the semicolons outside quotes."""
    out: list[str] = []
    quoted = escaped = False
    start = 0
    for index, char in enumerate(params):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            out.append(params[start:index].strip())
            start = index + 1
    out.append(params[start:].strip())
    return [segment for segment in out if segment]


def _cseq(message: SipMessage) -> tuple[int, str] | None:
    value = message.headers.get("CSeq")
    parts = value.split() if value else []
    if len(parts) != 2 or not ascii_digits(parts[0]):
        return None
    digits = parts[0].lstrip("0") or "0"  # (the parser takes leading zeros: "0...01")
    if len(digits) > 10:  # (int() of thousands of digits raises; a CSeq fits in 32 bits)
        return None
    return int(digits), parts[1]


def _tag(message: SipMessage, header: str) -> str | None:
    return param_of(message.headers.get(header), "tag")


def _via_identity(via: str) -> str:
    """The top Via as compared by RFC 2543 matching: LWS-normalized, without the `received`
    and `rport` parameters that `stamp_received` adds on the way in."""
    split = _split_via(via)
    if split is None:
        return via.strip()
    protocol, sent_by, params = split
    kept = [
        segment
        for segment in _split_params(params)
        if segment.partition("=")[0].strip().lower() not in ("received", "rport")
    ]
    return ";".join([f"{protocol.upper()} {sent_by.lower()}", *kept])


_Key = tuple[str | int | None, ...]


def _server_key(request: SipRequest, method: str, via: str | None = None) -> _Key | None:
    """§17.2.3: branch + sent-by + method for RFC 3261 peers; otherwise the RFC 2543 key
    (Request-URI, From tag, Call-ID, CSeq, top Via; the To tag is checked by the caller).
    `via`: the request's top Via, when the caller has it already."""
    if via is None:
        via = _top_via(request)
    split = _split_via(via) if via is not None else None
    if via is None or split is None:
        return None
    branch = param_of(via, "branch")
    if branch and branch.startswith(MAGIC_COOKIE):
        return ("3261", branch, split[1].lower(), method)
    cseq = _cseq(request)
    return (
        "2543",
        request.uri.strip(),
        _tag(request, "From"),
        (request.headers.get("Call-ID") or "").strip(),
        cseq[0] if cseq else None,
        method,
        _via_identity(via),
    )


def _client_key(message: SipMessage, method: str) -> _Key | None:
    """§17.1.3: the top Via branch and the CSeq method."""
    via = _top_via(message)
    branch = param_of(via, "branch")
    return None if not branch else (branch, method)


# --- Via stamping and response routing (§18.2.1, §18.2.2, RFC 3581) -------------------------


def stamp_received(request: SipRequest | SipResponse, source: Address) -> None:
    """Record where a request really came from in its top Via (§18.2.1): `received` when the
    sent-by host differs from the source IP; with RFC 3581 `rport`, always `received` and
    `rport=<source port>`. The Via's other text is kept as it was."""
    _stamp(request, source, _top_via(request))


def _stamp(request: SipRequest, source: Address, via: str | None) -> tuple[str | None, bool]:
    """`stamp_received` given the top Via: returns the top Via as it now stands, and whether
    responses go straight back to `source` (the common RFC 3581 client: the port we filled
    in, no other rport parameter, no maddr), which spares `response_destination` parsing
    it again."""
    split = _split_via(via) if via is not None else None
    if via is None or split is None:
        return via, False
    host, port = source
    params = split[2]
    if params.endswith(";rport") and "received" not in params and '"' not in params:
        # The common RFC 3581 client (`...;branch=z9hG4bK..;rport`): fill the port in.
        stamped = f"{via.rstrip()[:-6]};rport={port};received={host}"
        request.headers.pop_first_value("Via")
        request.headers.prepend("Via", stamped)
        lowered = params.lower()
        return stamped, lowered.count("rport") == 1 and "maddr" not in lowered
    sent_host, _ = _host_port(split[1])
    segments = _split_params(params)
    names = [segment.partition("=")[0].strip().lower() for segment in segments]
    wants_rport = "rport" in names
    if not wants_rport and sent_host == host.lower():
        return via, False
    kept: list[str] = []
    for segment, name in zip(segments, names, strict=True):
        if name == "received":
            continue
        kept.append(f"rport={port}" if name == "rport" else segment)
    kept.append(f"received={host}")
    stamped = ";".join([via.partition(";")[0].rstrip(), *kept])
    request.headers.pop_first_value("Via")
    request.headers.prepend("Via", stamped)
    return stamped, False


def response_destination(via: str, source: Address, transport: str) -> Address:
    """Where responses to a request go (§18.2.2 with RFC 3581 §4), from its (stamped) top Via.

    Reliable transports answer on the connection the request came in on, i.e. the source.
    A host name (no `received`) is returned as is: resolving it (RFC 3263 §5) is the
    transport's job."""
    if is_reliable(transport):
        return source
    split = _split_via(via)
    if split is None:
        return source
    host, port = _host_port(split[1])
    params = header_params(via)
    default_port = port if port is not None else 5060
    maddr = params.get("maddr")
    if maddr:
        return (maddr, default_port)
    rport = params.get("rport")
    received = params.get("received")
    if rport and ascii_digits(rport):
        return (received or source[0], int(rport))
    if received:
        return (received, default_port)
    return (host, default_port)


def build_ack(invite: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK a client INVITE transaction sends for a 300-699 response (§17.1.1.3): the
    INVITE's Request-URI, top Via (same branch), Call-ID, From, CSeq number and Route set,
    the response's To (with its tag), CSeq method ACK, no body."""
    headers = Headers()
    top_via = _top_via(invite)
    if top_via is not None:
        headers.add("Via", top_via)
    headers.add("Max-Forwards", invite.headers.get("Max-Forwards") or "70")
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    for name in ("From", "To", "Call-ID"):
        source = response if name == "To" else invite
        value = source.headers.get(name) or invite.headers.get(name)
        if value is not None:
            headers.add(name, value)
    cseq = _cseq(invite)
    headers.add("CSeq", f"{cseq[0] if cseq else 1} ACK")
    return SipRequest(method="ACK", uri=invite.uri, headers=headers)


# --- the four machines ----------------------------------------------------------------------


class _Transaction:
    """What every machine has: identity, the request, where it talks to, its timers."""

    kind: ClassVar[TransactionKind]
    initial: ClassVar[TransactionState]
    # Slots: no per-instance dict. Tens of thousands of these wait out their last timer at
    # once, and every object they hold is one more for the garbage collector to walk.
    __slots__ = (
        "ack",
        "final",
        "final_data",
        "id",
        "interval",
        "key",
        "layer",
        "peer",
        "provisional",
        "reliable",
        "request",
        "request_to_tag",
        "settings",
        "state",
        "timers",
        "transport",
    )

    def __init__(
        self,
        layer: TransactionLayer,
        transaction_id: str,
        request: SipRequest,
        peer: Address,
        transport: str,
    ) -> None:
        self.layer = layer
        self.id = transaction_id
        # The request while the machine may still send or answer it; released (None) once
        # only absorbing retransmissions is left, so the tens of thousands of transactions
        # waiting out Timers D/I/J/K/L/M do not keep whole messages alive (memory, and the
        # garbage collector's work: see docs/PERFORMANCE.md).
        self.request: SipRequest | None = request
        self.request_to_tag: str | None = _tag(request, "To")  # RFC 2543 matching (§17.2.3)
        self.peer = peer  # client: where requests go; server: where responses go
        self.transport = transport
        self.reliable = is_reliable(transport)
        self.settings = layer.settings
        self.state = self.initial
        self.interval = self.settings.t1  # current Timer A / E / G interval
        self.timers: dict[str, int] = {}  # timer name -> token of its live heap entry
        # Its entry in the layer's server or client index, dropped at the end. A key, not a
        # list of (index, key): one object fewer per transaction for the collector to walk.
        self.key: _Key | None = None
        # Client INVITE: the ACK for a non-2xx final, built once and re-sent for each
        # retransmission of that final. Servers: the last provisional and the non-2xx final
        # sent, for retransmitted requests.
        self.ack: SipRequest | None = None
        self.provisional: SipResponse | None = None
        self.final: SipResponse | None = None
        # Non-INVITE servers keep their final only as bytes (see _ServerNonInvite).
        self.final_data: bytes | None = None

    def send(self, message: SipMessage | SerializedResponse, wire: bytes | None = None) -> None:
        self.layer._output.append(Outgoing(message, self.peer, self.transport, self.id, wire))

    def arm(self, timer: str, delay: float, now: float) -> None:
        self.layer._arm(self, timer, now + delay)

    def cancel(self, *timers: str) -> None:
        for timer in timers:
            self.layer._disarm(self, timer)

    def enter(self, state: TransactionState) -> None:
        if state is self.state:
            return
        if state not in TRANSITIONS[self.kind].get(self.state, frozenset()):
            raise AssertionError(f"{self.kind} cannot go from {self.state} to {state}")
        self.state = state
        if state in _RELEASING:
            self.release()
        if state is _S.TERMINATED:
            self.layer._retire(self)

    def release(self) -> None:
        """Only absorbing retransmissions is left: drop what no longer can be sent."""
        self.request = None

    def wait_then_end(self, timer: str, now: float) -> None:
        """Arm the state's last wait; a zero wait (reliable transport) ends at once."""
        delay = self.settings.duration(timer, reliable=self.reliable)
        if delay <= 0:
            self.enter(_S.TERMINATED)
        else:
            self.arm(timer, delay, now)

    def timeout(self, timer: str) -> list[Event]:
        self.layer.stats.timeouts += 1
        self.enter(_S.TERMINATED)
        return [Timeout(self.id, timer)]

    def absorbed(self) -> list[Event]:
        self.layer.stats.absorbed += 1
        return []

    def fire(self, timer: str, now: float) -> list[Event]:
        raise NotImplementedError


# States in which a machine never sends or answers its request again: only absorbing
# retransmissions (and, for a server INVITE, matching the ACK by the keys) is left.
_RELEASING = frozenset({_S.ACCEPTED, _S.COMPLETED, _S.CONFIRMED})


class _ClientInvite(_Transaction):
    """§17.1.1, figure 5 (RFC 6026 figure 5)."""

    kind = _K.CLIENT_INVITE
    initial = _S.CALLING
    __slots__ = ()

    def start(self, now: float) -> None:
        assert self.request is not None
        self.send(self.request)
        if not self.reliable:
            self.arm("A", self.interval, now)
        self.arm("B", self.settings.duration("B", reliable=self.reliable), now)

    def cancelled(self, now: float) -> None:
        """The TU sent a CANCEL for this INVITE: give up after 64*T1 without a final (§9.1)."""
        if self.state in (_S.CALLING, _S.PROCEEDING):
            self.arm("cancel", self.settings.duration("cancel", reliable=self.reliable), now)

    def on_response(self, response: SipResponse, now: float) -> list[Event]:
        status = response.status
        if self.state in (_S.CALLING, _S.PROCEEDING):
            if status < 200:
                # Provisional: stop retransmitting; no Timer B in Proceeding (figure 5).
                self.cancel("A", "B")
                self.enter(_S.PROCEEDING)
                return [Response(self.id, response)]
            self.cancel("A", "B", "cancel")
            if status < 300:
                # RFC 6026 §7.2: stay to pass 2xx retransmissions (and other forks' 2xx)
                # up, so the TU can ACK each; the TU itself sends the ACK end to end.
                self.enter(_S.ACCEPTED)
                self.arm("M", self.settings.duration("M", reliable=self.reliable), now)
                return [Response(self.id, response)]
            assert self.request is not None
            self.ack = build_ack(self.request, response)
            self.send(self.ack)
            self.enter(_S.COMPLETED)
            self.wait_then_end("D", now)
            return [Response(self.id, response)]
        if self.state is _S.COMPLETED and status >= 300:
            # §17.1.1.2: a retransmitted final means our ACK was lost; re-send it.
            if self.ack is not None:
                self.send(self.ack)
            return self.absorbed()
        if 200 <= status < 300:
            # Accepted (RFC 6026 §7.2), or a 2xx of another fork after a failure: the TU
            # must ACK it (and may BYE it), so it goes up.
            return [Response(self.id, response)]
        return self.absorbed()

    def fire(self, timer: str, now: float) -> list[Event]:
        if timer == "A" and self.state is _S.CALLING and self.request is not None:
            self.layer.stats.retransmissions += 1
            self.send(self.request)
            self.interval *= 2  # §17.1.1.2: doubles each time, no cap for INVITE
            self.arm("A", self.interval, now)
            return []
        if timer == "B" and self.state is _S.CALLING:
            return self.timeout("B")
        if timer == "cancel" and self.state in (_S.CALLING, _S.PROCEEDING):
            return self.timeout("cancel")
        if timer in ("D", "M"):
            self.enter(_S.TERMINATED)
        return []


class _ClientNonInvite(_Transaction):
    """§17.1.2, figure 6."""

    kind = _K.CLIENT_NON_INVITE
    initial = _S.TRYING
    __slots__ = ()

    def start(self, now: float) -> None:
        assert self.request is not None
        self.send(self.request)
        if not self.reliable:
            self.arm("E", self.interval, now)
        self.arm("F", self.settings.duration("F", reliable=self.reliable), now)

    def on_response(self, response: SipResponse, now: float) -> list[Event]:
        if self.state is _S.COMPLETED:
            return self.absorbed()  # retransmitted final: Timer K is there to eat these
        if response.status < 200:
            self.enter(_S.PROCEEDING)
            return [Response(self.id, response)]
        self.cancel("E", "F")
        self.enter(_S.COMPLETED)
        self.wait_then_end("K", now)
        return [Response(self.id, response)]

    def fire(self, timer: str, now: float) -> list[Event]:
        if timer == "E" and self.state in (_S.TRYING, _S.PROCEEDING) and self.request:
            self.layer.stats.retransmissions += 1
            self.send(self.request)
            # §17.1.2.2: doubling capped at T2 while Trying; every T2 once Proceeding.
            if self.state is _S.TRYING:
                self.interval = min(2 * self.interval, self.settings.t2)
            else:
                self.interval = self.settings.t2
            self.arm("E", self.interval, now)
            return []
        if timer == "F" and self.state in (_S.TRYING, _S.PROCEEDING):
            return self.timeout("F")
        if timer == "K":
            self.enter(_S.TERMINATED)
        return []


class _ServerTransaction(_Transaction):
    """What both server machines share: the last responses, for retransmitted requests."""

    __slots__ = ()

    def release(self) -> None:
        # Past Proceeding a retransmitted request gets the final, or nothing (Accepted: the
        # TU re-sends its 2xx itself), never the provisional again.
        self.request = None
        self.provisional = None

    # RFC 2543 matching also compares To tags (§17.2.3): the request's for
    # retransmissions (`request_to_tag`, kept from the start), that of our final response for
    # the ACK.
    @property
    def response_to_tag(self) -> str | None:
        return _tag(self.final, "To") if self.final is not None else None

    def start(self, now: float) -> None:
        raise NotImplementedError

    def on_request(
        self, request: SipRequest, source: Address, transport: str, now: float
    ) -> list[Event]:
        raise NotImplementedError

    def on_tu_response(self, response: SipResponse, now: float) -> None:
        raise NotImplementedError


class _ServerInvite(_ServerTransaction):
    """§17.2.1, figure 7 (RFC 6026 figure 7)."""

    kind = _K.SERVER_INVITE
    initial = _S.PROCEEDING
    __slots__ = ()

    def start(self, now: float) -> None:
        if self.settings.trying_delay is not None:
            self.arm("trying", self.settings.trying_delay, now)

    def on_request(
        self, request: SipRequest, source: Address, transport: str, now: float
    ) -> list[Event]:
        if request.method == "ACK":
            if self.state is _S.COMPLETED:
                # §17.2.1: the ACK for our non-2xx final; absorbed, never passed up.
                self.cancel("G", "H")
                self.enter(_S.CONFIRMED)
                self.wait_then_end("I", now)
                self.layer.stats.absorbed += 1
                return []
            if self.state is _S.ACCEPTED:
                # RFC 6026 §7.1: an ACK matching in Accepted is for the 2xx: TU's business.
                return [AckFor2xx(request, source, transport, self.id)]
            return self.absorbed()
        # A retransmitted INVITE: answer with the last response (§17.2.1); in Accepted the
        # TU retransmits the 2xx itself (RFC 6026 §7.1), in Confirmed nothing is owed.
        if self.state is _S.PROCEEDING and self.provisional is not None:
            self.send(self.provisional)
        elif self.state is _S.COMPLETED and self.final is not None:
            self.send(self.final)
        return self.absorbed()

    def on_tu_response(self, response: SipResponse, now: float) -> None:
        status = response.status
        if self.state is _S.ACCEPTED and 200 <= status < 300:
            self.send(response)  # RFC 6026 §7.1: TU's 2xx retransmissions go out
            return
        if self.state is not _S.PROCEEDING:
            self.layer.stats.absorbed += 1  # nothing more may be sent (figure 7)
            return
        self.cancel("trying")
        self.send(response)
        if status < 200:
            self.provisional = response
        elif status < 300:
            self.enter(_S.ACCEPTED)
            self.arm("L", self.settings.duration("L", reliable=self.reliable), now)
        else:
            self.final = response
            self.enter(_S.COMPLETED)
            if not self.reliable:
                self.arm("G", self.interval, now)
            self.arm("H", self.settings.duration("H", reliable=self.reliable), now)

    def fire(self, timer: str, now: float) -> list[Event]:
        if (
            timer == "trying"
            and self.state is _S.PROCEEDING
            and self.provisional is None
            and self.request is not None
        ):
            # §8.2.6.1: a Timestamp in the request is copied into the 100 Trying.
            stamp = self.request.headers.get("Timestamp")
            extra = [("Timestamp", stamp)] if stamp is not None else []
            self.provisional = make_response(self.request, 100, "Trying", extra=extra)
            self.send(self.provisional)
        elif timer == "G" and self.state is _S.COMPLETED and self.final is not None:
            self.layer.stats.retransmissions += 1
            self.send(self.final)
            self.interval = min(2 * self.interval, self.settings.t2)
            self.arm("G", self.interval, now)
        elif timer == "H" and self.state is _S.COMPLETED:
            return self.timeout("H")  # §17.2.1: no ACK ever came
        elif timer in ("I", "L"):
            self.enter(_S.TERMINATED)
        return []


class _ServerNonInvite(_ServerTransaction):
    """§17.2.2, figure 8."""

    kind = _K.SERVER_NON_INVITE
    initial = _S.TRYING
    __slots__ = ()

    def start(self, now: float) -> None:
        return None

    def on_request(
        self, request: SipRequest, source: Address, transport: str, now: float
    ) -> list[Event]:
        # §17.2.2: retransmissions are discarded while Trying, answered with the last
        # response afterwards.
        if self.state is _S.PROCEEDING and self.provisional is not None:
            self.send(self.provisional)
        elif self.state is _S.COMPLETED and self.final_data is not None:
            self.send(SerializedResponse.of(self.final_data), self.final_data)
        return self.absorbed()

    def on_tu_response(self, response: SipResponse, now: float) -> None:
        if self.state is _S.COMPLETED:
            self.layer.stats.absorbed += 1  # §17.2.2: further finals are discarded
            return
        if response.status < 200:
            self.send(response)
            self.provisional = response
            self.enter(_S.PROCEEDING)
        else:
            # Kept as bytes, serialized once for both sends: the tens of thousands of these
            # waiting out Timer J then hold no message objects for the collector to walk.
            self.final_data = response.to_bytes()
            self.send(response, self.final_data)
            self.enter(_S.COMPLETED)
            self.wait_then_end("J", now)

    def fire(self, timer: str, now: float) -> list[Event]:
        if timer == "J":
            self.enter(_S.TERMINATED)
        return []


# --- the layer ------------------------------------------------------------------------------


class TransactionLayer:
    """All transactions of one SIP endpoint: matching, timers, output queue.

    Drive it like aioquic's connection: after `receive`, `send_request`, `send_response`,
    `handle_timers` or `transport_error`, send `datagrams_to_send()` and re-arm one timer at
    `next_deadline()`."""

    def __init__(self, settings: TimerSettings | None = None) -> None:
        self.settings = settings or TimerSettings()
        self.stats = TransactionStats()
        self._transactions: dict[str, _Transaction] = {}
        self._client_index: dict[_Key, str] = {}
        self._server_index: dict[_Key, str] = {}
        self._output: list[Outgoing] = []
        # Min-heap of (deadline, token, transaction id, timer); an entry is live while the
        # transaction still maps that timer to that token (lazy deletion on cancel/end).
        self._heap: list[tuple[float, int, str, str]] = []
        self._armed = 0
        self._tokens = itertools.count(1)
        self._ids = itertools.count(1)

    # --- introspection

    def __len__(self) -> int:
        return len(self._transactions)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._transactions))

    def state(self, transaction_id: str) -> TransactionState | None:
        """The transaction's state, None once it is gone (terminated transactions are
        removed at once)."""
        txn = self._transactions.get(transaction_id)
        return txn.state if txn is not None else None

    def kind(self, transaction_id: str) -> TransactionKind | None:
        txn = self._transactions.get(transaction_id)
        return txn.kind if txn is not None else None

    def counts(self) -> dict[TransactionKind, int]:
        """Live transactions per kind (for a labelled `bridge_sip_transactions` gauge)."""
        out = dict.fromkeys(TransactionKind, 0)
        for txn in self._transactions.values():
            out[txn.kind] += 1
        return out

    # --- input

    def receive(
        self, message: SipMessage, source: Address, transport: str, now: float
    ) -> list[Event]:
        """A message from the network (already parsed)."""
        if isinstance(message, SipResponse):
            return self._receive_response(message, source, transport, now)
        return self._receive_request(message, source, transport, now)

    def _receive_response(
        self, response: SipResponse, source: Address, transport: str, now: float
    ) -> list[Event]:
        cseq = _cseq(response)
        key = _client_key(response, cseq[1]) if cseq else None
        if key is None:
            self.stats.malformed += 1
            return []
        tid = self._client_index.get(key)
        txn = self._transactions.get(tid) if tid is not None else None
        if not isinstance(txn, _ClientInvite | _ClientNonInvite):
            # §17.1.3 / §18.1.2: matches nothing; the core may still want a 2xx.
            self.stats.stray_responses += 1
            return [StrayResponse(response, source)]
        return txn.on_response(response, now)

    def _receive_request(
        self, request: SipRequest, source: Address, transport: str, now: float
    ) -> list[Event]:
        method = request.method
        via = _top_via(request)
        # §17.2.3: an ACK matches the INVITE transaction it acknowledges.
        key = _server_key(request, "INVITE" if method == "ACK" else method, via)
        txn = self._match_server(request, key)
        if txn is not None:
            return txn.on_request(request, source, transport, now)
        if method == "ACK":
            # §17.2.3: an ACK for a 2xx has its own branch and matches no transaction.
            if via is None:
                self.stats.malformed += 1
                return []
            _stamp(request, source, via)
            return [AckFor2xx(request, source, transport)]
        if key is None:
            # Without a Via there is nowhere to send even a 400 (§18.2.2).
            self.stats.malformed += 1
            return []
        stamped, to_source = _stamp(request, source, via)
        assert stamped is not None
        if to_source or is_reliable(transport):
            destination = source
        else:
            destination = response_destination(stamped, source, transport)
        cls = _ServerInvite if request.method == "INVITE" else _ServerNonInvite
        server = cls(self, self._new_id(cls.kind), request, destination, transport)
        self._register(server, self._server_index, key)
        server.start(now)
        return [NewRequest(server.id, request, source, transport)]

    def is_new(self, request: SipRequest) -> bool:
        """Whether `request` would start a server transaction (not a retransmission of one
        we have): what the overload gate judges."""
        key = _server_key(request, request.method, _top_via(request))
        return key is not None and self._match_server(request, key) is None

    def _match_server(self, request: SipRequest, key: _Key | None) -> _ServerTransaction | None:
        tid = self._server_index.get(key) if key is not None else None
        txn = self._transactions.get(tid) if tid is not None else None
        if not isinstance(txn, _ServerTransaction) or key is None:
            return None
        if key[0] == "2543":
            wanted = txn.response_to_tag if request.method == "ACK" else txn.request_to_tag
            if request.method == "ACK" and txn.state is _S.ACCEPTED:
                return txn  # RFC 2543 ACK for our 2xx: same key, 2xx's tag; pass it up
            if _tag(request, "To") != wanted:
                return None
        return txn

    def find_invite_for_cancel(self, cancel: SipRequest) -> str | None:
        """The INVITE server transaction a CANCEL targets (§9.2: matched like a request to a
        transaction, §17.2.3, with the method taken as INVITE), or None."""
        key = _server_key(cancel, "INVITE")
        tid = self._server_index.get(key) if key is not None else None
        txn = self._transactions.get(tid) if tid is not None else None
        if not isinstance(txn, _ServerInvite) or key is None:
            return None
        if key[0] == "2543" and _tag(cancel, "To") != txn.request_to_tag:
            return None
        return txn.id

    # --- TU output

    def send_request(
        self, request: SipRequest, destination: Address, transport: str, now: float
    ) -> str:
        """Start a client transaction. The request must carry its own top Via with a fresh
        branch (`new_branch()`); nothing is added to it. Returns the transaction id."""
        if request.method == "ACK":
            raise TransactionError("an ACK is not a transaction: use send_stateless")
        cseq = _cseq(request)
        if cseq is None or cseq[1] != request.method:
            raise TransactionError("CSeq missing or not matching the method")
        key = _client_key(request, request.method)
        if key is None:
            raise TransactionError("the top Via needs a branch (see new_branch())")
        if key in self._client_index:
            raise TransactionError(f"branch already in use by {self._client_index[key]}")
        cls = _ClientInvite if request.method == "INVITE" else _ClientNonInvite
        client = cls(self, self._new_id(cls.kind), request, destination, transport)
        self._register(client, self._client_index, key)
        client.start(now)
        if request.method == "CANCEL":
            # §9.1: the CANCEL has the INVITE's branch.
            invite_id = self._client_index.get((key[0], "INVITE"))
            invite = self._transactions.get(invite_id) if invite_id is not None else None
            if isinstance(invite, _ClientInvite):
                invite.cancelled(now)
        return client.id

    def send_response(self, transaction_id: str, response: SipResponse, now: float) -> None:
        """Answer through a server transaction; it is sent to the top Via's address
        (§18.2.2, RFC 3581) and retransmitted as the state machine requires."""
        if not 100 <= response.status <= 699:
            raise TransactionError(f"bad status {response.status}")
        txn = self._transactions.get(transaction_id)
        if not isinstance(txn, _ServerTransaction):
            raise UnknownTransaction(transaction_id)
        txn.on_tu_response(response, now)

    def send_response_and_forget(self, transaction_id: str, response: SipResponse) -> None:
        """Answer as a stateless UAS (RFC 3261 §8.2.7): the final `response` goes where the
        request's responses go, and the server transaction ends at once. No Timer J/G/H, no
        retransmission: a retransmitted request is a new request, answered anew. For
        challenges to unauthenticated requests, so that a flood of them leaves no state
        behind (§26.1.5)."""
        if not 200 <= response.status <= 699:
            raise TransactionError("only a final response can be sent statelessly")
        txn = self._transactions.get(transaction_id)
        if not isinstance(txn, _ServerTransaction):
            raise UnknownTransaction(transaction_id)
        self._output.append(Outgoing(response, txn.peer, txn.transport, None))
        txn.enter(_S.TERMINATED)

    def send_stateless(self, message: SipMessage, destination: Address, transport: str) -> None:
        """Queue a message outside any transaction: the ACK for a 2xx, a 2xx retransmission
        after the transaction ended (RFC 6026 §8.9), a stateless response."""
        self._output.append(Outgoing(message, destination, transport, None))

    def transport_error(self, transaction_id: str, reason: str, now: float) -> list[Event]:
        """The transport failed to send a message of this transaction: the TU is told and
        the transaction ends (§17.1.1.2, §17.1.2.2, §17.2.4). Unknown ids are ignored (a
        late failure of a finished transaction)."""
        txn = self._transactions.get(transaction_id)
        if txn is None:
            return []
        self.stats.transport_errors += 1
        txn.enter(_S.TERMINATED)
        return [TransportError(transaction_id, reason)]

    def datagrams_to_send(self) -> list[Outgoing]:
        """Everything queued since the last call, in order (drains the queue)."""
        out, self._output = self._output, []
        return out

    # --- timers

    def next_deadline(self) -> float | None:
        """The earliest live timer of any transaction, or None."""
        heap = self._heap
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timers(self, now: float) -> list[Event]:
        """Fire every timer due at `now`, in deadline order."""
        events: list[Event] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if not self._live(entry):
                continue
            _, _, tid, timer = entry
            txn = self._transactions[tid]
            del txn.timers[timer]
            self._armed -= 1
            events.extend(txn.fire(timer, now))
        return events

    def _live(self, entry: tuple[float, int, str, str]) -> bool:
        _, token, tid, timer = entry
        txn = self._transactions.get(tid)
        return txn is not None and txn.timers.get(timer) == token

    def _arm(self, txn: _Transaction, timer: str, deadline: float) -> None:
        if timer not in txn.timers:
            self._armed += 1
        token = next(self._tokens)
        txn.timers[timer] = token
        heapq.heappush(self._heap, (deadline, token, txn.id, timer))
        # Cancelled timers stay in the heap until they surface; rebuild it when they
        # outnumber the live ones, so that early-ending transactions leave nothing behind.
        if len(self._heap) > 64 and len(self._heap) > 4 * self._armed:
            self._heap = [entry for entry in self._heap if self._live(entry)]
            heapq.heapify(self._heap)

    def _disarm(self, txn: _Transaction, timer: str) -> None:
        if txn.timers.pop(timer, None) is not None:
            self._armed -= 1

    # --- bookkeeping

    def _new_id(self, kind: TransactionKind) -> str:
        return f"{kind}-{next(self._ids)}"

    def _register(self, txn: _Transaction, index: dict[_Key, str], key: _Key) -> None:
        assert txn.key is None and index is self._index_of(txn)
        self._transactions[txn.id] = txn
        index[key] = txn.id
        txn.key = key
        self.stats.created += 1

    def _index_of(self, txn: _Transaction) -> dict[_Key, str]:
        return self._server_index if isinstance(txn, _ServerTransaction) else self._client_index

    def _retire(self, txn: _Transaction) -> None:
        """A transaction reached Terminated: forget it and its timers (no leak)."""
        self._armed -= len(txn.timers)
        txn.timers.clear()
        key = txn.key
        if key is not None:
            index = self._index_of(txn)
            if index.get(key) == txn.id:
                del index[key]
        self._transactions.pop(txn.id, None)
        self.stats.terminated += 1
