"""SIP transactions (RFC 3261 §17, RFC 6026) driven by a fake clock: no sleeps, no sockets."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sip.model import Headers, SipRequest, SipResponse, make_response
from bridge.sip.transaction import (
    AckFor2xx,
    Event,
    NewRequest,
    Outgoing,
    Response,
    StrayResponse,
    Timeout,
    TimerSettings,
    TransactionError,
    TransactionKind,
    TransactionLayer,
    TransactionState,
    TransportError,
    UnknownTransaction,
    build_ack,
    is_reliable,
    new_branch,
    response_destination,
    stamp_received,
)

PEER = ("192.0.2.10", 5060)  # the phone / trunk on the other side
NAT = ("203.0.113.7", 40001)  # the same phone seen through a NAT
T1 = 0.5


def request(
    method: str = "INVITE",
    *,
    branch: str | None = None,
    sent_by: str = "192.0.2.10:5060",
    proto: str = "UDP",
    via_params: str = "",
    uri: str = "sip:100@bridge.example.com",
    call_id: str = "call-1@192.0.2.10",
    cseq: int = 1,
    from_tag: str = "caller",
    to_tag: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> SipRequest:
    """A request as a peer (or our TU) would build it; branch None = a fresh one."""
    branch = new_branch() if branch is None else branch
    via = f"SIP/2.0/{proto} {sent_by}" + (f";branch={branch}" if branch else "") + via_params
    to = "<sip:100@bridge.example.com>" + (f";tag={to_tag}" if to_tag else "")
    headers = Headers(
        [
            ("Via", via),
            ("Max-Forwards", "70"),
            ("From", f'"Alice" <sip:alice@example.com>;tag={from_tag}'),
            ("To", to),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {'INVITE' if method == 'ACK' else method}"),
            *extra,
        ]
    )
    if method == "ACK":
        headers.set("CSeq", f"{cseq} ACK")
    return SipRequest(method, uri, headers)


def answer(req: SipRequest, status: int, reason: str = "X", tag: str = "callee") -> SipResponse:
    return make_response(req, status, reason, to_tag=tag)


def branch_of(message: SipRequest | SipResponse) -> str:
    via = message.headers.values("Via")[0]
    return via.split("branch=")[1].split(";")[0]


@dataclass
class Driver:
    """A layer and a fake clock; records what was sent and when, and what the TU saw."""

    layer: TransactionLayer = field(default_factory=TransactionLayer)
    now: float = 0.0
    sent: list[tuple[float, Outgoing]] = field(default_factory=list)
    events: list[tuple[float, Event]] = field(default_factory=list)

    def _collect(self, events: list[Event]) -> list[Event]:
        self.events.extend((self.now, event) for event in events)
        self.sent.extend((self.now, out) for out in self.layer.datagrams_to_send())
        return events

    def at(self, when: float) -> Driver:
        """Run every timer due up to `when`, each at its own deadline, then stop at `when`."""
        while (deadline := self.layer.next_deadline()) is not None and deadline <= when:
            assert deadline >= self.now  # no timer is ever left in the past
            self.now = deadline
            self._collect(self.layer.handle_timers(deadline))
        self.now = max(self.now, when)
        return self

    def receive(
        self, message: SipRequest | SipResponse, source: tuple[str, int] = PEER, tp: str = "udp"
    ) -> list[Event]:
        return self._collect(self.layer.receive(message, source, tp, self.now))

    def send_request(self, req: SipRequest, tp: str = "udp", to: tuple[str, int] = PEER) -> str:
        tid = self.layer.send_request(req, to, tp, self.now)
        self._collect([])
        return tid

    def respond(self, tid: str, response: SipResponse) -> None:
        self.layer.send_response(tid, response, self.now)
        self._collect([])

    def send_times(self, predicate: type | None = None, status: int | None = None) -> list[float]:
        return [
            t
            for t, out in self.sent
            if (predicate is None or isinstance(out.message, predicate))
            and (status is None or getattr(out.message, "status", None) == status)
        ]

    def event_types(self) -> list[tuple[float, str]]:
        return [(t, type(e).__name__) for t, e in self.events]


def new_request_id(events: list[Event]) -> str:
    assert len(events) == 1 and isinstance(events[0], NewRequest), events
    return events[0].transaction_id


# --- settings ------------------------------------------------------------------------------


def test_timer_settings_rfc_defaults_per_transport() -> None:
    s = TimerSettings()
    assert (s.t1, s.t2, s.t4, s.trying_delay) == (0.5, 4.0, 5.0, 0.2)
    assert {t: s.duration(t, reliable=False) for t in "BDFHIJKLM"} == {
        "B": 32.0,
        "D": 32.0,
        "F": 32.0,
        "H": 32.0,
        "I": 5.0,
        "J": 32.0,
        "K": 5.0,
        "L": 32.0,
        "M": 32.0,
    }
    # Table 4: the retransmission-absorbing waits are zero on reliable transports.
    assert {t: s.duration(t, reliable=True) for t in "DIJK"} == dict.fromkeys("DIJK", 0.0)
    assert s.duration("B", reliable=True) == 32.0 and s.duration("H", reliable=True) == 32.0
    custom = TimerSettings(t1=0.1, timer_b=10.0, timer_d=40.0)
    assert custom.duration("B", reliable=False) == 10.0
    assert custom.duration("F", reliable=False) == pytest.approx(6.4)
    assert custom.duration("D", reliable=False) == 40.0
    with pytest.raises(ValueError):
        TimerSettings(t1=0)
    with pytest.raises(ValueError):
        s.duration("Z", reliable=False)
    assert is_reliable("TCP") and is_reliable("tls") and not is_reliable("UDP")
    assert new_branch().startswith("z9hG4bK") and new_branch() != new_branch()


# --- client INVITE (§17.1.1) ---------------------------------------------------------------


def test_client_invite_udp_no_answer_retransmits_on_timer_a_then_timer_b() -> None:
    d = Driver()
    invite = request()
    tid = d.send_request(invite)
    assert d.layer.state(tid) is TransactionState.CALLING
    assert d.layer.kind(tid) is TransactionKind.CLIENT_INVITE
    d.at(100)
    # Timer A: T1, doubling with no cap; Timer B at 64*T1.
    assert d.send_times() == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(out.message is invite and out.destination == PEER for _, out in d.sent)
    assert all(out.transport == "udp" and out.transaction_id == tid for _, out in d.sent)
    assert d.events == [(32.0, Timeout(tid, "B"))]
    assert len(d.layer) == 0 and d.layer.next_deadline() is None
    assert d.layer.stats.retransmissions == 6 and d.layer.stats.timeouts == 1


def test_client_invite_tcp_never_retransmits_but_times_out() -> None:
    d = Driver()
    tid = d.send_request(request(proto="TCP"), tp="tcp")
    d.at(100)
    assert d.send_times() == [0]
    assert d.events == [(32.0, Timeout(tid, "B"))]
    assert len(d.layer) == 0


def test_client_invite_provisional_stops_timers_a_and_b() -> None:
    d = Driver()
    invite = request()
    tid = d.send_request(invite)
    d.at(0.7)
    ringing = answer(invite, 180, "Ringing")
    assert d.receive(ringing) == [Response(tid, ringing)]
    assert d.layer.state(tid) is TransactionState.PROCEEDING
    assert d.layer.next_deadline() is None  # neither A nor B in Proceeding (figure 5)
    d.at(500)
    assert d.send_times() == [0, 0.5] and len(d.layer) == 1
    again = answer(invite, 183, "Session Progress")
    assert d.receive(again) == [Response(tid, again)]


def test_client_invite_non_2xx_acks_itself_and_waits_timer_d() -> None:
    d = Driver()
    invite = request(
        extra=[("Route", "<sip:p1.example.com;lr>"), ("Route", "<sip:p2.example.com;lr>")],
        uri="sip:bob@biloxi.example.com",
    )
    tid = d.send_request(invite, to=("198.51.100.9", 5080))
    d.at(0.2)
    busy = answer(invite, 486, "Busy Here", tag="b0b")
    assert d.receive(busy) == [Response(tid, busy)]
    assert d.layer.state(tid) is TransactionState.COMPLETED
    acks = [out for _, out in d.sent if isinstance(out.message, SipRequest)][1:]
    assert len(acks) == 1
    ack = acks[0].message
    assert isinstance(ack, SipRequest)
    # §17.1.1.3: same Request-URI, top Via (branch), Call-ID, From, CSeq number, Route set;
    # To from the response (with its tag); CSeq method ACK; same destination and transport.
    assert ack.method == "ACK" and ack.uri == "sip:bob@biloxi.example.com"
    assert ack.headers.get_all("Via") == invite.headers.get_all("Via")
    assert branch_of(ack) == branch_of(invite)
    assert ack.headers.get("Call-ID") == invite.headers.get("Call-ID")
    assert ack.headers.get("From") == invite.headers.get("From")
    assert ack.headers.get("To") == "<sip:100@bridge.example.com>;tag=b0b"
    assert ack.headers.get("CSeq") == "1 ACK"
    assert ack.headers.get_all("Route") == [
        "<sip:p1.example.com;lr>",
        "<sip:p2.example.com;lr>",
    ]
    assert ack.headers.get("Max-Forwards") == "70" and ack.body == b""
    assert acks[0].destination == ("198.51.100.9", 5080) and acks[0].transport == "udp"
    # A retransmitted final: the ACK again, nothing for the TU.
    d.at(5)
    assert d.receive(busy) == []
    assert [out.message for t, out in d.sent if t == 5] == [ack]
    assert d.layer.stats.absorbed == 1
    # Timer D: 32 s after the final on UDP.
    d.at(32.1)
    assert d.layer.state(tid) is TransactionState.COMPLETED
    d.at(32.2)
    assert len(d.layer) == 0 and d.events == [(0.2, Response(tid, busy))]
    assert d.send_times() == [0, 0.2, 5]  # Timer A stopped by the final


def test_client_invite_non_2xx_over_tcp_ends_at_once() -> None:
    d = Driver()
    invite = request(proto="TCP")
    tid = d.send_request(invite, tp="tcp")
    events = d.receive(answer(invite, 603, "Decline"), tp="tcp")
    assert [type(e) for e in events] == [Response]
    assert [out.message.method for _, out in d.sent if isinstance(out.message, SipRequest)] == [
        "INVITE",
        "ACK",
    ]
    assert d.layer.state(tid) is None and len(d.layer) == 0  # Timer D = 0


def test_client_invite_2xx_accepted_passes_retransmissions_up_until_timer_m() -> None:
    d = Driver()
    invite = request()
    tid = d.send_request(invite)
    ok = answer(invite, 200, "OK")
    d.at(1)
    assert d.receive(ok) == [Response(tid, ok)]
    assert d.layer.state(tid) is TransactionState.ACCEPTED
    # RFC 6026: the transaction neither ACKs a 2xx nor absorbs its retransmissions.
    d.at(2)
    assert d.receive(ok) == [Response(tid, ok)]
    other_fork = answer(invite, 200, "OK", tag="fork2")
    assert d.receive(other_fork) == [Response(tid, other_fork)]
    assert d.receive(answer(invite, 180, "Ringing")) == []  # late provisional: dropped
    assert d.send_times() == [0, 0.5]  # no ACK, Timer A stopped
    d.at(32.9)
    assert d.layer.state(tid) is TransactionState.ACCEPTED
    d.at(33)  # Timer M = 64*T1 after the 2xx
    assert len(d.layer) == 0
    late = d.receive(ok)
    assert late == [StrayResponse(ok, PEER)] and d.layer.stats.stray_responses == 1


def test_client_invite_cancel_gives_up_after_64_t1_without_final() -> None:
    d = Driver()
    invite = request()
    tid = d.send_request(invite)
    d.receive(answer(invite, 180, "Ringing"))
    d.at(10)
    cancel = request("CANCEL", branch=branch_of(invite))
    cancel_tid = d.send_request(cancel)
    assert cancel_tid != tid and d.layer.kind(cancel_tid) is TransactionKind.CLIENT_NON_INVITE
    ok = answer(cancel, 200, "OK")
    assert d.receive(ok) == [Response(cancel_tid, ok)]  # CSeq method picks the CANCEL
    d.at(100)
    assert (42.0, Timeout(tid, "cancel")) in d.events  # §9.1
    assert len(d.layer) == 0


def test_client_invite_cancel_guard_stops_on_final() -> None:
    d = Driver()
    invite = request()
    tid = d.send_request(invite)
    d.receive(answer(invite, 180, "Ringing"))
    d.send_request(request("CANCEL", branch=branch_of(invite)))
    terminated = answer(invite, 487, "Request Terminated")
    d.at(1)
    assert d.receive(terminated) == [Response(tid, terminated)]
    d.at(100)
    assert not [e for _, e in d.events if isinstance(e, Timeout) and e.transaction_id == tid]
    assert len(d.layer) == 0


# --- client non-INVITE (§17.1.2) -----------------------------------------------------------


def test_client_non_invite_udp_timer_e_capped_at_t2_then_timer_f() -> None:
    d = Driver()
    options = request("OPTIONS")
    tid = d.send_request(options)
    assert d.layer.state(tid) is TransactionState.TRYING
    d.at(100)
    times = d.send_times()
    assert times == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    intervals = [b - a for a, b in itertools.pairwise(times)]
    assert intervals == [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4]
    assert d.events == [(32.0, Timeout(tid, "F"))]
    assert len(d.layer) == 0


def test_client_non_invite_proceeding_retransmits_every_t2() -> None:
    d = Driver()
    bye = request("BYE")
    tid = d.send_request(bye)
    d.at(0.2)
    trying = answer(bye, 100, "Trying")
    assert d.receive(trying) == [Response(tid, trying)]
    assert d.layer.state(tid) is TransactionState.PROCEEDING
    d.at(100)
    # E armed in Trying still fires at 0.5; from then on every T2 (§17.1.2.2); F at 32.
    assert d.send_times() == [0, 0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]
    assert d.events[-1] == (32.0, Timeout(tid, "F"))


def test_client_non_invite_final_then_timer_k_absorbs_retransmissions() -> None:
    d = Driver()
    bye = request("BYE")
    tid = d.send_request(bye)
    d.at(0.6)
    ok = answer(bye, 200, "OK")
    assert d.receive(ok) == [Response(tid, ok)]
    assert d.layer.state(tid) is TransactionState.COMPLETED
    assert d.receive(ok) == []  # retransmission absorbed
    assert d.receive(answer(bye, 100, "Trying")) == []
    d.at(5.5)
    assert d.layer.state(tid) is TransactionState.COMPLETED
    d.at(5.6)  # Timer K = T4 after the final
    assert len(d.layer) == 0
    assert d.send_times() == [0, 0.5]


def test_client_non_invite_tcp_no_retransmission_and_no_wait() -> None:
    d = Driver()
    register = request("REGISTER", proto="TCP")
    tid = d.send_request(register, tp="tcp")
    d.at(10)
    assert d.send_times() == [0]
    events = d.receive(answer(register, 200, "OK"), tp="tcp")
    assert [type(e) for e in events] == [Response]
    assert d.layer.state(tid) is None and len(d.layer) == 0  # Timer K = 0


# --- server INVITE (§17.2.1) ---------------------------------------------------------------


def test_server_invite_sends_100_trying_after_200_ms() -> None:
    d = Driver()
    invite = request(extra=[("Timestamp", "54")])
    tid = new_request_id(d.receive(invite))
    assert d.layer.kind(tid) is TransactionKind.SERVER_INVITE
    assert d.layer.state(tid) is TransactionState.PROCEEDING
    d.at(0.19)
    assert d.sent == []
    d.at(0.3)
    assert len(d.sent) == 1
    when, out = d.sent[0]
    assert when == pytest.approx(0.2) and out.destination == PEER
    assert isinstance(out.message, SipResponse) and out.message.status == 100
    assert out.message.headers.get("Timestamp") == "54"  # §8.2.6.1
    assert "tag=" not in (out.message.headers.get("To") or "")
    # A retransmitted INVITE gets that 100 again, and no second NewRequest.
    assert d.receive(invite) == []
    assert [o.message.status for _, o in d.sent] == [100, 100]  # type: ignore[union-attr]


def test_server_invite_no_100_when_tu_answers_within_200_ms() -> None:
    d = Driver()
    invite = request()
    tid = new_request_id(d.receive(invite))
    d.at(0.1)
    d.respond(tid, answer(invite, 180, "Ringing"))
    assert d.layer.next_deadline() is None  # the 100 Trying timer is gone
    d.at(10)
    assert [(t, o.message.status) for t, o in d.sent] == [(0.1, 180)]  # type: ignore[union-attr]


def test_server_invite_retransmission_before_any_response_is_absorbed_silently() -> None:
    d = Driver(TransactionLayer(TimerSettings(trying_delay=None)))
    invite = request()
    new_request_id(d.receive(invite))
    assert d.receive(invite) == [] and d.receive(invite) == []
    d.at(10)
    assert d.sent == [] and d.layer.stats.absorbed == 2 and len(d.layer) == 1


def test_server_invite_non_2xx_timer_g_then_timer_h_timeout() -> None:
    d = Driver()
    invite = request()
    tid = new_request_id(d.receive(invite))
    d.at(1)
    busy = answer(invite, 486, "Busy Here")
    d.respond(tid, busy)
    assert d.layer.state(tid) is TransactionState.COMPLETED
    d.at(100)
    finals = [t for t, o in d.sent if o.message is busy]
    # Timer G: T1 doubling up to T2 (§17.2.1); Timer H at 64*T1 → Timeout for the TU.
    assert finals == [1, 1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    assert d.events[-1] == (33.0, Timeout(tid, "H"))
    assert len(d.layer) == 0


def test_server_invite_ack_confirms_then_timer_i() -> None:
    d = Driver()
    invite = request()
    tid = new_request_id(d.receive(invite))
    busy = answer(invite, 486, "Busy Here")
    d.respond(tid, busy)
    d.at(2)  # G fired at 0.5 and 1.5
    # A retransmitted INVITE in Completed is answered with the final.
    assert d.receive(invite) == []
    ack = request("ACK", branch=branch_of(invite), to_tag="callee")
    assert d.receive(ack) == []  # ACK for a non-2xx: absorbed, never passed up
    assert d.layer.state(tid) is TransactionState.CONFIRMED
    assert d.layer.next_deadline() == 2 + 5.0  # only Timer I: G and H stopped
    assert d.receive(ack) == []  # and its retransmissions too
    assert d.receive(invite) == []  # nothing owed in Confirmed
    d.at(6.9)
    assert d.layer.state(tid) is TransactionState.CONFIRMED
    d.at(7.1)  # Timer I = T4 after the ACK
    assert len(d.layer) == 0
    assert [t for t, o in d.sent if o.message is busy] == [0, 0.5, 1.5, 2]  # G stopped
    assert not any(isinstance(e, (AckFor2xx, NewRequest)) for _, e in d.events[1:])


def test_server_invite_over_tcp_no_timer_g_and_ack_ends_at_once() -> None:
    d = Driver()
    invite = request(proto="TCP", sent_by="phone.example.com")
    tid = new_request_id(d.receive(invite, source=NAT, tp="tcp"))
    d.respond(tid, answer(invite, 404, "Not Found"))
    d.at(20)
    assert [(t, o.destination) for t, o in d.sent] == [(0, NAT)]  # the connection's source
    ack = request("ACK", branch=branch_of(invite), proto="TCP", sent_by="phone.example.com")
    assert d.receive(ack, source=NAT, tp="tcp") == []
    assert len(d.layer) == 0  # Timer I = 0


def test_server_invite_tcp_timer_h_still_applies() -> None:
    d = Driver()
    invite = request(proto="TCP")
    tid = new_request_id(d.receive(invite, tp="tcp"))
    d.respond(tid, answer(invite, 480, "Temporarily Unavailable"))
    d.at(100)
    assert d.events[-1] == (32.0, Timeout(tid, "H"))
    assert len(d.sent) == 1 and len(d.layer) == 0


def test_server_invite_2xx_accepted_absorbs_invites_passes_acks_until_timer_l() -> None:
    d = Driver()
    invite = request()
    tid = new_request_id(d.receive(invite))
    ok = answer(invite, 200, "OK")
    d.respond(tid, ok)
    assert d.layer.state(tid) is TransactionState.ACCEPTED
    d.at(1)
    # RFC 6026 §7.1: INVITE retransmissions absorbed (the TU retransmits the 2xx itself) ...
    assert d.receive(invite) == []
    assert [o.message for _, o in d.sent] == [ok]
    # ... and the TU's 2xx retransmissions go out.
    d.respond(tid, ok)
    assert [t for t, o in d.sent if o.message is ok] == [0, 1]
    # An ACK for the 2xx normally has its own branch: matches nothing, goes up.
    ack = request("ACK", to_tag="callee")
    assert d.receive(ack) == [AckFor2xx(ack, PEER, "udp", None)]
    # One reusing the INVITE's branch matches the Accepted transaction: goes up too.
    same_branch_ack = request("ACK", branch=branch_of(invite), to_tag="callee")
    assert d.receive(same_branch_ack) == [AckFor2xx(same_branch_ack, PEER, "udp", tid)]
    d.at(31.9)
    assert d.layer.state(tid) is TransactionState.ACCEPTED
    d.at(32)  # Timer L = 64*T1 after the 2xx
    assert len(d.layer) == 0
    assert d.event_types() == [(0, "NewRequest"), (1, "AckFor2xx"), (1, "AckFor2xx")]


def test_server_invite_ignores_responses_it_may_no_longer_send() -> None:
    d = Driver()
    invite = request()
    tid = new_request_id(d.receive(invite))
    busy = answer(invite, 486, "Busy")
    d.respond(tid, busy)
    d.respond(tid, answer(invite, 200, "OK"))  # too late: figure 7 has no such move
    d.respond(tid, answer(invite, 180, "Ringing"))
    assert [o.message for _, o in d.sent] == [busy]
    assert d.layer.state(tid) is TransactionState.COMPLETED


# --- server non-INVITE (§17.2.2) -----------------------------------------------------------


def test_server_non_invite_retransmissions_and_timer_j() -> None:
    d = Driver()
    options = request("OPTIONS")
    tid = new_request_id(d.receive(options))
    assert d.layer.state(tid) is TransactionState.TRYING
    d.at(0.5)
    assert d.receive(options) == [] and d.sent == []  # Trying: discarded
    trying = answer(options, 100, "Trying")
    d.respond(tid, trying)
    assert d.layer.state(tid) is TransactionState.PROCEEDING
    d.at(1)
    assert d.receive(options) == []
    assert [(t, o.message) for t, o in d.sent] == [(0.5, trying), (1, trying)]
    ok = answer(options, 200, "OK")
    d.respond(tid, ok)
    d.respond(tid, answer(options, 500, "Oops"))  # §17.2.2: discarded in Completed
    d.at(2)
    assert d.receive(options) == []
    # The retransmission is the same bytes (kept serialized, not as a message).
    assert [(t, o.data) for t, o in d.sent][2:] == [(1, ok.to_bytes()), (2, ok.to_bytes())]
    assert [o.message.status for _, o in d.sent][2:] == [200, 200]
    d.at(32.9)
    assert d.layer.state(tid) is TransactionState.COMPLETED
    d.at(33)  # Timer J = 64*T1 after the final
    assert len(d.layer) == 0
    assert d.event_types() == [(0, "NewRequest")]


def test_server_non_invite_tcp_ends_with_the_final() -> None:
    d = Driver()
    register = request("REGISTER", proto="TCP")
    tid = new_request_id(d.receive(register, tp="tcp"))
    d.respond(tid, answer(register, 200, "OK"))
    assert len(d.layer) == 0 and len(d.sent) == 1  # Timer J = 0
    with pytest.raises(UnknownTransaction):
        d.respond(tid, answer(register, 200, "OK"))


# --- matching (§17.1.3, §17.2.3) -----------------------------------------------------------


def test_cancel_is_its_own_transaction_and_finds_its_invite() -> None:
    d = Driver()
    invite = request()
    invite_tid = new_request_id(d.receive(invite))
    cancel = request("CANCEL", branch=branch_of(invite))
    cancel_tid = new_request_id(d.receive(cancel))
    assert cancel_tid != invite_tid
    assert d.layer.kind(cancel_tid) is TransactionKind.SERVER_NON_INVITE
    assert d.layer.find_invite_for_cancel(cancel) == invite_tid
    assert d.layer.find_invite_for_cancel(request("CANCEL")) is None  # other branch
    other_host = request("CANCEL", branch=branch_of(invite), sent_by="192.0.2.99")
    assert d.layer.find_invite_for_cancel(other_host) is None  # sent-by differs
    # The CANCEL's retransmission matches the CANCEL, not the INVITE.
    assert d.receive(cancel) == [] and len(d.layer) == 2


def test_same_branch_other_sent_by_is_another_server_transaction() -> None:
    d = Driver()
    first = request(branch="z9hG4bKsame")
    second = request(branch="z9hG4bKsame", sent_by="192.0.2.77:5060")
    assert new_request_id(d.receive(first)) != new_request_id(d.receive(second))
    assert len(d.layer) == 2


def test_responses_match_on_branch_and_cseq_method() -> None:
    d = Driver()
    invite = request()
    tid = d.send_request(invite)
    # Same branch, another method: not this transaction (§17.1.3).
    wrong = answer(request("CANCEL", branch=branch_of(invite)), 200, "OK")
    assert d.receive(wrong) == [StrayResponse(wrong, PEER)]
    assert d.layer.state(tid) is TransactionState.CALLING
    unknown = answer(request("INVITE"), 180, "Ringing")
    assert d.receive(unknown) == [StrayResponse(unknown, PEER)]
    assert d.layer.stats.stray_responses == 2
    right = answer(invite, 180, "Ringing")
    assert d.receive(right) == [Response(tid, right)]


def test_rfc2543_requests_without_magic_cookie_use_the_fallback_key() -> None:
    d = Driver()
    old = request(branch="", via_params=";rport")  # no branch at all
    tid = new_request_id(d.receive(old, source=NAT))
    # The retransmission matches (the Via we stamped on the stored copy does not matter).
    retransmission = request(branch="", via_params=";rport")
    assert d.receive(retransmission, source=NAT) == []
    # Same everything but Call-ID / CSeq / From tag / Request-URI: new transactions.
    assert isinstance(d.receive(request(branch="", call_id="other"))[0], NewRequest)
    assert isinstance(d.receive(request(branch="", cseq=2))[0], NewRequest)
    assert isinstance(d.receive(request(branch="", from_tag="x"))[0], NewRequest)
    assert isinstance(d.receive(request(branch="", uri="sip:101@b.example"))[0], NewRequest)
    busy = answer(old, 486, "Busy", tag="uas")
    d.respond(tid, busy)
    # ACK: same fields, CSeq number (method ACK), and the To tag of our response.
    wrong_tag = request("ACK", branch="", to_tag="wrong", via_params=";rport")
    assert d.receive(wrong_tag) == [AckFor2xx(wrong_tag, PEER, "udp", None)]
    assert d.layer.state(tid) is TransactionState.COMPLETED
    assert d.receive(request("ACK", branch="", to_tag="uas", via_params=";rport"), NAT) == []
    assert d.layer.state(tid) is TransactionState.CONFIRMED
    # A CANCEL without the cookie finds its INVITE the RFC 2543 way.
    d2 = Driver()
    legacy = request(branch="1234")  # a branch, but no magic cookie
    legacy_tid = new_request_id(d2.receive(legacy))
    assert d2.layer.find_invite_for_cancel(request("CANCEL", branch="1234")) == legacy_tid
    assert d2.layer.find_invite_for_cancel(request("CANCEL", branch="1235")) is None


def test_malformed_requests_and_responses_are_dropped_and_counted() -> None:
    d = Driver()
    no_via = SipRequest("OPTIONS", "sip:x@y", Headers([("CSeq", "1 OPTIONS")]))
    assert d.receive(no_via) == []
    no_cseq = SipResponse(200, "OK", Headers([("Via", "SIP/2.0/UDP h;branch=z9hG4bKx")]))
    assert d.receive(no_cseq) == []
    assert d.layer.stats.malformed == 2 and len(d.layer) == 0 and d.sent == []


# --- Via: received / rport and where responses go (§18.2.1, §18.2.2, RFC 3581) -------------


def test_rport_stamped_and_responses_go_to_the_source() -> None:
    d = Driver()
    invite = request(sent_by="10.0.0.5:5060", via_params=";rport")
    events = d.receive(invite, source=NAT)
    assert isinstance(events[0], NewRequest)
    top = events[0].request.headers.values("Via")[0]
    assert top.endswith(";rport=40001;received=203.0.113.7")
    assert top.startswith("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK")
    d.at(1)
    d.respond(events[0].transaction_id, answer(events[0].request, 486, "Busy"))
    assert {o.destination for _, o in d.sent} == {NAT}
    final = d.sent[-1][1].message
    assert final.headers.values("Via")[0] == top  # responses carry the stamped Via


def test_received_without_rport_and_untouched_when_same_host() -> None:
    behind_nat = request(sent_by="10.0.0.5:5070")
    stamp_received(behind_nat, NAT)
    via = behind_nat.headers.values("Via")[0]
    assert via.endswith(";received=203.0.113.7") and "rport" not in via
    assert response_destination(via, NAT, "udp") == ("203.0.113.7", 5070)  # sent-by port
    direct = request(sent_by="192.0.2.10")
    before = direct.headers.get("Via")
    stamp_received(direct, PEER)
    assert direct.headers.get("Via") == before
    assert response_destination(before or "", PEER, "udp") == ("192.0.2.10", 5060)


def test_stamp_touches_only_the_top_via() -> None:
    req = request(via_params=";rport")
    first = req.headers.get("Via")
    req.headers.set("Via", f"{first} , SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp")
    stamp_received(req, NAT)
    assert req.headers.values("Via") == [
        f"{first}=40001;received=203.0.113.7",
        "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp",
    ]


def test_response_destination_rules() -> None:
    via = "SIP/2.0/UDP [2001:db8::5]:5072;branch=z9hG4bKa;received=2001:db8::9;rport=6000"
    assert response_destination(via, ("2001:db8::9", 6000), "udp") == ("2001:db8::9", 6000)
    maddr = "SIP/2.0/UDP h.example.com:5062;branch=z9hG4bKa;maddr=239.1.1.1;ttl=1"
    assert response_destination(maddr, PEER, "udp") == ("239.1.1.1", 5062)
    named = "SIP/2.0/UDP phone.example.com;branch=z9hG4bKa"
    assert response_destination(named, PEER, "udp") == ("phone.example.com", 5060)
    assert response_destination(named, NAT, "tls") == NAT


# --- TU misuse and transport errors ---------------------------------------------------------


def test_send_request_refuses_what_is_not_a_transaction() -> None:
    layer = TransactionLayer()
    with pytest.raises(TransactionError):
        layer.send_request(request("ACK"), PEER, "udp", 0)
    with pytest.raises(TransactionError, match="branch"):
        layer.send_request(request(branch=""), PEER, "udp", 0)
    bad_cseq = request()
    bad_cseq.headers.set("CSeq", "1 BYE")
    with pytest.raises(TransactionError, match="CSeq"):
        layer.send_request(bad_cseq, PEER, "udp", 0)
    invite = request()
    layer.send_request(invite, PEER, "udp", 0)
    with pytest.raises(TransactionError, match="in use"):
        layer.send_request(invite, PEER, "udp", 0)
    with pytest.raises(UnknownTransaction):
        layer.send_response("ist-999", SipResponse(200, "OK"), 0)
    server = new_request_id(layer.receive(request(), PEER, "udp", 0))
    with pytest.raises(TransactionError, match="status"):
        layer.send_response(server, SipResponse(99, "Odd"), 0)
    assert len(layer) == 2


def test_transport_error_reaches_the_tu_and_ends_the_transaction() -> None:
    d = Driver()
    tid = d.send_request(request())
    assert d.layer.transport_error(tid, "connection refused", 0.1) == [
        TransportError(tid, "connection refused")
    ]
    assert len(d.layer) == 0 and d.layer.next_deadline() is None
    assert d.layer.transport_error(tid, "again", 0.2) == []
    d.layer.send_stateless(request("ACK"), PEER, "udp")
    [out] = d.layer.datagrams_to_send()
    assert out.transaction_id is None and out.data.startswith(b"ACK sip:")


def test_build_ack_uses_only_the_top_via() -> None:
    invite = request()
    invite.headers.add("Via", "SIP/2.0/UDP second.example.com;branch=z9hG4bK2")
    ack = build_ack(invite, answer(invite, 404, "Not Found", tag="t"))
    assert len(ack.headers.values("Via")) == 1 and (ack.headers.get("To") or "").endswith(";tag=t")


# --- no leak -------------------------------------------------------------------------------


def test_many_transactions_leave_nothing_behind() -> None:
    d = Driver()
    for _ in range(1000):
        tcp_bye = request("BYE", proto="TCP")
        d.send_request(tcp_bye, tp="tcp")
        d.receive(answer(tcp_bye, 200, "OK"), tp="tcp")
    # Each left a cancelled Timer F behind; the heap is compacted, not grown.
    assert len(d.layer) == 0 and len(d.layer._heap) <= 65
    assert d.layer.next_deadline() is None and d.layer._heap == []
    for n in range(500):
        invite = request(call_id=f"c{n}")
        d.send_request(invite)
        d.receive(answer(invite, 486, "Busy"))
        tid = new_request_id(d.receive(request("OPTIONS", call_id=f"o{n}")))
        d.respond(tid, SipResponse(200, "OK"))
        tcp_bye = request("BYE", proto="TCP")
        d.send_request(tcp_bye, tp="tcp")
        d.receive(answer(tcp_bye, 200, "OK"), tp="tcp")
        d.now += 0.01
    assert len(d.layer) == 1000
    assert d.layer.counts()[TransactionKind.CLIENT_INVITE] == 500
    d.at(d.now + 64 * T1 + 5)
    assert len(d.layer) == 0 and d.layer.next_deadline() is None and d.layer._heap == []
    assert d.layer._client_index == {} and d.layer._server_index == {}
    assert d.layer.stats.created == d.layer.stats.terminated == 2500


# --- property: random interleavings ---------------------------------------------------------

ACTIONS = st.one_of(
    st.tuples(st.just("advance"), st.floats(0, 40, allow_nan=False)),
    st.tuples(st.just("late"), st.floats(0, 40, allow_nan=False)),
    st.tuples(st.just("fire"), st.just(0)),
    st.tuples(st.just("retransmit"), st.sampled_from(["invite", "options", "cancel"])),
    st.tuples(st.just("ack"), st.sampled_from(["non2xx", "2xx"])),
    st.tuples(st.just("ack"), st.just("non2xx")),  # twice: Completed is a brief state
    st.tuples(st.just("tu_invite"), st.sampled_from([100, 180, 200, 486])),
    st.tuples(st.just("tu_options"), st.sampled_from([100, 200, 404])),
    st.tuples(st.just("peer_invite"), st.sampled_from([100, 180, 200, 486, 603])),
    st.tuples(st.just("peer_bye"), st.sampled_from([100, 200, 500])),
    st.tuples(st.just("cancel"), st.just(0)),
    st.tuples(st.just("transport_error"), st.sampled_from(["ist", "nist", "ict", "nict"])),
)


@settings(max_examples=400, deadline=None)
@given(
    transport=st.sampled_from(["udp", "tcp"]),
    actions=st.lists(ACTIONS, max_size=60),
)
def test_random_interleavings_never_fail_and_leave_nothing(
    transport: str, actions: list[tuple[str, float | int | str]]
) -> None:
    d = Driver()
    proto = transport.upper()
    incoming = {
        "invite": request(proto=proto, via_params=";rport", call_id="in"),
        "options": request("OPTIONS", proto=proto, call_id="opt"),
    }
    incoming["cancel"] = request("CANCEL", branch=branch_of(incoming["invite"]), proto=proto)
    out_invite = request(proto=proto, call_id="out")
    out_bye = request("BYE", proto=proto, call_id="bye")
    server_ids: dict[str, str] = {}  # request name -> id of its latest server transaction
    new_requests: dict[str, int] = {}

    def deliver(name: str) -> None:
        before = server_ids.get(name)
        was_live = before is not None and d.layer.state(before) is not None
        original = incoming[name]  # each delivery a fresh copy, as off the wire
        copy = SipRequest(original.method, original.uri, original.headers.copy())
        events = d.receive(copy, tp=transport)
        fresh = [e for e in events if isinstance(e, NewRequest)]
        # One NewRequest per transaction: a live transaction absorbs its retransmissions.
        assert not (fresh and was_live)
        for event in fresh:
            new_requests[event.transaction_id] = new_requests.get(event.transaction_id, 0) + 1
            server_ids[name] = event.transaction_id
        assert all(count == 1 for count in new_requests.values())

    def tu(name: str, status: int) -> None:
        tid = server_ids.get(name)
        if tid is not None and d.layer.state(tid) is not None:
            d.respond(tid, answer(incoming[name], status, "X", tag="uas"))

    deliver("invite")
    deliver("options")
    ict = d.send_request(out_invite, tp=transport)
    nict = d.send_request(out_bye, tp=transport)
    cancelled = False
    for action, arg in actions:
        if action == "advance":
            d.at(d.now + float(arg))
        elif action == "late":  # one late wake-up firing everything due at once
            d.now += float(arg)
            d._collect(d.layer.handle_timers(d.now))
            deadline = d.layer.next_deadline()
            assert deadline is None or deadline > d.now
        elif action == "fire":
            deadline = d.layer.next_deadline()
            if deadline is not None:
                d.at(deadline)
        elif action == "retransmit":
            deliver(str(arg))
        elif action == "ack":
            tag_branch = branch_of(incoming["invite"]) if arg == "non2xx" else None
            ack = request("ACK", branch=tag_branch, to_tag="uas", proto=proto, call_id="in")
            d.receive(ack, tp=transport)
        elif action == "tu_invite":
            tu("invite", int(arg))
        elif action == "tu_options":
            tu("options", int(arg))
        elif action == "peer_invite":
            d.receive(answer(out_invite, int(arg)), tp=transport)
        elif action == "peer_bye":
            d.receive(answer(out_bye, int(arg)), tp=transport)
        elif action == "cancel" and not cancelled:
            cancelled = True
            cancel = request("CANCEL", branch=branch_of(out_invite), proto=proto)
            d.send_request(cancel, tp=transport)
        elif action == "transport_error":
            tid = {
                "ist": server_ids.get("invite"),
                "nist": server_ids.get("options"),
                "ict": ict,
                "nict": nict,
            }[str(arg)]
            if tid is not None:
                d.layer.transport_error(tid, "test", d.now)
    assert len(d.layer) == len(list(d.layer))
    # The TU's duties: answer every request (§8.2), CANCEL an unanswered INVITE (§9.1).
    for tid in list(d.layer):
        kind, state = d.layer.kind(tid), d.layer.state(tid)
        if kind is TransactionKind.SERVER_INVITE and state is TransactionState.PROCEEDING:
            d.respond(tid, SipResponse(486, "Busy"))
        elif kind is TransactionKind.SERVER_NON_INVITE and state in (
            TransactionState.TRYING,
            TransactionState.PROCEEDING,
        ):
            d.respond(tid, SipResponse(200, "OK"))
    if d.layer.state(ict) is TransactionState.PROCEEDING and not cancelled:
        cancel = request("CANCEL", branch=branch_of(out_invite), proto=proto)
        d.send_request(cancel, tp=transport)
    d.at(d.now + 64 * T1 + 5.0)
    assert len(d.layer) == 0 and d.layer.next_deadline() is None
    # Everything sent went to the peer (or its NAT-less Via address) over the transport used.
    assert all(out.destination == PEER and out.transport == transport for _, out in d.sent)
    assert all(isinstance(e, Event) for _, e in d.events)


def test_transactions_waiting_out_their_timers_let_go_of_the_request() -> None:
    # A busy endpoint holds tens of thousands of transactions in Completed/Accepted for up to
    # 32 s: they keep what they still need (keys, the final to re-send), not the request.
    d = Driver()
    bye = request("BYE")
    client = d.send_request(bye)
    d.receive(answer(bye, 200, "OK"))
    options = request("OPTIONS")
    server = new_request_id(d.receive(options))
    ok = answer(options, 200, "OK")
    d.respond(server, ok)
    invite = request("INVITE")
    accepted = new_request_id(d.receive(invite))
    d.respond(accepted, answer(invite, 180, "Ringing"))
    assert d.layer._transactions[accepted].provisional is not None
    d.respond(accepted, answer(invite, 200, "OK"))
    for tid in (client, server, accepted):
        txn = d.layer._transactions[tid]
        assert txn.state in (TransactionState.COMPLETED, TransactionState.ACCEPTED)
        assert txn.request is None
    # Past Proceeding the provisional is never re-sent: not kept either.
    assert d.layer._transactions[accepted].provisional is None
    d.sent.clear()
    assert d.receive(invite) == []  # a retransmitted INVITE in Accepted: absorbed, no 180
    assert d.sent == []
    # ... and still do their job: the retransmitted OPTIONS gets the same 200.
    d.sent.clear()
    assert d.receive(options) == []
    assert [o.data for _, o in d.sent] == [ok.to_bytes()]
    # Kept as its bytes only: no message objects while it waits out Timer J.
    kept = d.layer._transactions[server]
    assert kept.final is None and kept.final_data == ok.to_bytes()


@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
def test_a_stateless_answer_ends_the_transaction_at_once(method: str) -> None:
    # RFC 3261 §8.2.7: a challenge can be sent as a stateless UAS: no Timer J/G/H, nothing
    # kept, and a retransmission is a new request that is answered anew.
    d = Driver()
    req = request(method)
    tid = new_request_id(d.receive(req))
    challenge = answer(req, 401, "Unauthorized")
    d.layer.send_response_and_forget(tid, challenge)
    d._collect([])
    assert [(o.message, o.destination, o.transaction_id) for _, o in d.sent] == [
        (challenge, PEER, None)
    ]
    assert len(d.layer) == 0 and d.layer.next_deadline() is None
    assert d.layer.state(tid) is None
    again = new_request_id(d.receive(req))  # the retransmission: a new transaction
    assert again != tid
    with pytest.raises(TransactionError):
        d.layer.send_response_and_forget(again, answer(req, 100, "Trying"))
    with pytest.raises(UnknownTransaction):
        d.layer.send_response_and_forget(tid, challenge)
