"""SIP dialogs (RFC 3261 §12-§15), CANCEL (§9.1) and session timers (RFC 4028), sans-I/O."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sip.dialog import (
    MAX_FORWARDS,
    Dialog,
    DialogError,
    DialogId,
    DialogSet,
    DialogState,
    DialogTable,
    Role,
    SessionTimer,
    Verdict,
    VerdictReason,
    ViaSpec,
    build_cancel,
    check_session_expires,
    format_reason,
    match_dialog,
    min_se_from_422,
    negotiate_session_timer,
    parse_session_expires,
    request_dialog_id,
    response_dialog_id,
    retry_after_422,
    session_timer_answer,
)
from bridge.sip.grammar import parse_cseq, parse_name_addr, parse_uri, top_via
from bridge.sip.model import Headers, SipRequest, SipResponse, make_response
from bridge.sip.parser import parse_message
from bridge.sip.transaction import (
    MAGIC_COOKIE,
    NewRequest,
    TransactionLayer,
)

VIA = ViaSpec("bridge.example.com:5060", "UDP")
CALL_ID = "call-1@192.0.2.10"
CALLER_CONTACT = "sip:alice@192.0.2.10:5060"
BRIDGE_CONTACT = "sip:bridge@198.51.100.1:5060"
PHONE_CONTACT = "sip:bob@203.0.113.5:5062;transport=udp"
# As a request arrives after two proxies: the one next to the UAS is listed first.
RR_IN_REQUEST = ("<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>")
SDP = b"v=0\r\no=- 1 1 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n"


# --- message builders ------------------------------------------------------------------------


def invite(
    *,
    uri: str = "sip:100@bridge.example.com",
    call_id: str = CALL_ID,
    from_tag: str = "alice-tag",
    cseq: int = 314,
    contact: str | None = CALLER_CONTACT,
    record_route: Iterable[str] = (),
    branch: str = "z9hG4bKcaller1",
    extra: Iterable[tuple[str, str]] = (),
) -> SipRequest:
    headers = Headers(
        [
            ("Via", f"SIP/2.0/UDP 192.0.2.10:5060;branch={branch}"),
            ("Max-Forwards", "70"),
            *(("Record-Route", value) for value in record_route),
            ("From", f'"Alice" <sip:alice@example.com>;tag={from_tag}'),
            ("To", "<sip:100@bridge.example.com>"),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} INVITE"),
        ]
    )
    if contact is not None:
        headers.add("Contact", f"<{contact}>")
    for name, value in extra:
        headers.add(name, value)
    return SipRequest("INVITE", uri, headers)


def reply(
    request: SipRequest,
    status: int,
    *,
    tag: str | None = "bridge-tag",
    contact: str | None = BRIDGE_CONTACT,
    record_route: Iterable[str] = (),
    extra: Iterable[tuple[str, str]] = (),
) -> SipResponse:
    """A response as the UAS sends it: Record-Route copied from the request unless given."""
    headers: list[tuple[str, str]] = [
        ("Record-Route", value)
        for value in (record_route or request.headers.values("Record-Route"))
    ]
    if contact is not None:
        headers.append(("Contact", f"<{contact}>"))
    headers.extend(extra)
    reason = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK"}.get(status, "X")
    return make_response(request, status, reason, to_tag=tag, extra=headers)


def cseq_of(message: SipRequest | SipResponse) -> tuple[int, str]:
    parsed = parse_cseq(message.headers.get("CSeq") or "")
    return parsed.number, parsed.method


def branch_of(message: SipRequest) -> str:
    branch = top_via(message.headers).branch
    assert branch is not None
    return branch


def reparsed(request: SipRequest) -> SipRequest:
    """The request as a peer would parse it off the wire."""
    message = parse_message(request.to_bytes())
    assert isinstance(message, SipRequest)
    assert message.start_line == request.start_line
    return message


def uas_dialog(**kwargs: object) -> tuple[SipRequest, SipResponse, Dialog]:
    """The bridge answering the caller's INVITE (with two proxies on the path) with 200."""
    req = invite(record_route=RR_IN_REQUEST, **kwargs)  # type: ignore[arg-type]
    ok = reply(req, 200)
    return req, ok, Dialog.from_uas(req, ok)


def our_invite(
    *, cseq: int = 7, route: Iterable[str] = (), extra: Iterable[tuple[str, str]] = ()
) -> SipRequest:
    """An INVITE the bridge sends to a phone (UAC side)."""
    headers = Headers(
        [
            ("Via", "SIP/2.0/UDP bridge.example.com:5060;branch=z9hG4bKleg1;rport"),
            ("Max-Forwards", "70"),
            *(("Route", value) for value in route),
            ("From", "<sip:100@bridge.example.com>;tag=b2b-1"),
            ("To", "<sip:bob@phone.example.com>"),
            ("Call-ID", "leg-1@bridge.example.com"),
            ("CSeq", f"{cseq} INVITE"),
            ("Contact", f"<{BRIDGE_CONTACT}>"),
            *extra,
        ]
    )
    return SipRequest("INVITE", "sip:bob@phone.example.com", headers, SDP)


def phone_reply(
    request: SipRequest,
    status: int,
    *,
    tag: str | None = "phone-a",
    contact: str | None = PHONE_CONTACT,
    record_route: Iterable[str] = (),
    extra: Iterable[tuple[str, str]] = (),
) -> SipResponse:
    return reply(request, status, tag=tag, contact=contact, record_route=record_route, extra=extra)


def in_dialog_request(
    method: str,
    *,
    cseq: int,
    to_tag: str = "bridge-tag",
    from_tag: str = "alice-tag",
    call_id: str = CALL_ID,
    contact: str | None = None,
) -> SipRequest:
    """A request the caller sends inside its dialog with the bridge."""
    headers = Headers(
        [
            ("Via", f"SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{method}{cseq}"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:alice@example.com>;tag={from_tag}"),
            ("To", f"<sip:100@bridge.example.com>;tag={to_tag}"),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
    )
    if contact is not None:
        headers.add("Contact", f"<{contact}>")
    return SipRequest(method, BRIDGE_CONTACT, headers)


# --- UAS dialogs (§12.1.1) -------------------------------------------------------------------


def test_uas_dialog_from_2xx_keeps_record_route_in_order() -> None:
    req, _, dialog = uas_dialog()
    assert dialog.id == DialogId(CALL_ID, "bridge-tag", "alice-tag")
    assert dialog.role is Role.UAS
    assert dialog.state is DialogState.CONFIRMED
    assert dialog.route_set == RR_IN_REQUEST
    assert str(dialog.remote_target) == CALLER_CONTACT
    assert dialog.remote_cseq == 314
    assert dialog.local_cseq is None
    assert dialog.invite_cseq == 314
    assert dialog.secure is False
    assert str(dialog.local_target) == BRIDGE_CONTACT
    assert dialog.local_party.uri == parse_uri("sip:100@bridge.example.com")
    assert dialog.remote_party.display == "Alice"
    assert "tag" not in dialog.remote_party.params
    assert dialog.awaiting_ack

    bye = dialog.create_request("BYE", via=VIA)
    assert bye.method == "BYE"
    assert bye.uri == CALLER_CONTACT  # loose routing: the remote target
    assert bye.headers.get_all("Route") == list(RR_IN_REQUEST)
    assert cseq_of(bye) == (1, "BYE")  # the local CSeq started empty
    assert bye.headers.get("Call-ID") == CALL_ID
    assert bye.headers.get("Max-Forwards") == str(MAX_FORWARDS)
    assert parse_name_addr(bye.headers.get("From") or "").tag == "bridge-tag"
    assert parse_name_addr(bye.headers.get("To") or "").tag == "alice-tag"
    assert parse_name_addr(bye.headers.get("To") or "").display == "Alice"
    assert bye.headers.get("Contact") is None  # BYE is no target refresh
    via = top_via(bye.headers)
    assert (via.transport, via.sent_by) == ("UDP", "bridge.example.com:5060")
    assert via.branch is not None and via.branch.startswith(MAGIC_COOKIE)
    assert via.wants_rport
    assert request_dialog_id(reparsed(bye)) == DialogId(CALL_ID, "alice-tag", "bridge-tag")
    assert req.headers.get("CSeq") == "314 INVITE"  # the INVITE is left alone


def test_uas_dialog_without_record_route_sends_straight_to_the_contact() -> None:
    req = invite()
    dialog = Dialog.from_uas(req, reply(req, 200))
    assert dialog.route_set == ()
    info = dialog.create_request("INFO", via=VIA, body=b"Signal=5\r\n", content_type="x/dtmf")
    assert info.uri == CALLER_CONTACT
    assert info.headers.get("Route") is None
    assert info.headers.get("Content-Type") == "x/dtmf"
    assert info.body == b"Signal=5\r\n"
    assert reparsed(info).body == b"Signal=5\r\n"


def test_uas_early_dialog_is_confirmed_by_the_2xx_with_the_same_tag() -> None:
    req = invite(record_route=RR_IN_REQUEST)
    ringing = reply(req, 180)
    dialog = Dialog.from_uas(req, ringing)
    assert dialog.state is DialogState.EARLY
    assert dialog.invite_in_progress
    # §15: the callee may not send BYE on an early dialog, nor anybody a re-INVITE.
    with pytest.raises(DialogError, match="early"):
        dialog.create_request("BYE", via=VIA)
    with pytest.raises(DialogError, match="early"):
        dialog.create_request("INVITE", via=VIA)
    dialog.response_sent(req, reply(req, 200))
    assert dialog.state is DialogState.CONFIRMED
    assert not dialog.invite_in_progress
    assert dialog.awaiting_ack
    ack = in_dialog_request("ACK", cseq=314)
    assert dialog.receive_request(ack).reason is VerdictReason.ACK
    assert not dialog.awaiting_ack


def test_uas_early_dialog_ends_when_the_invite_fails() -> None:
    req = invite()
    dialog = Dialog.from_uas(req, reply(req, 183))
    dialog.response_sent(req, reply(req, 486))
    assert dialog.state is DialogState.TERMINATED
    with pytest.raises(DialogError, match="terminated"):
        dialog.create_request("INFO", via=VIA)


def test_uas_dialog_needs_a_tagged_response_and_a_contact() -> None:
    req = invite()
    with pytest.raises(DialogError, match="To tag"):
        Dialog.from_uas(req, reply(req, 180, tag=None))
    with pytest.raises(DialogError, match="creates no dialog"):
        Dialog.from_uas(req, reply(req, 100))
    with pytest.raises(DialogError, match="creates no dialog"):
        Dialog.from_uas(req, reply(req, 404))
    with pytest.raises(DialogError, match="Contact"):
        no_contact = invite(contact=None)
        Dialog.from_uas(no_contact, reply(no_contact, 200))
    with pytest.raises(DialogError, match="Contact"):
        star = invite(contact=None, extra=[("Contact", "*")])
        Dialog.from_uas(star, reply(star, 200))


def test_uas_dialog_from_an_rfc2543_caller_without_from_tag() -> None:
    req = invite(from_tag="")
    req.headers.set("From", "<sip:alice@example.com>")
    dialog = Dialog.from_uas(req, reply(req, 200))
    assert dialog.id == DialogId(CALL_ID, "bridge-tag", "")
    info = dialog.create_request("INFO", via=VIA)
    assert info.headers.get("To") == "<sip:alice@example.com>"
    incoming = in_dialog_request("BYE", cseq=315)
    incoming.headers.set("From", "<sip:alice@example.com>")
    assert request_dialog_id(incoming) == dialog.id
    assert dialog.receive_request(incoming).terminated


def test_secure_flag_needs_sips_and_tls() -> None:
    req = invite(uri="sips:100@bridge.example.com", contact="sips:alice@192.0.2.10:5061")
    ok = reply(req, 200, contact="sips:bridge@198.51.100.1:5061")
    assert Dialog.from_uas(req, ok).secure is True
    assert Dialog.from_uas(req, ok, tls=False).secure is False
    plain = invite()
    assert Dialog.from_uas(plain, reply(plain, 200)).secure is False

    dialog = Dialog.from_uas(req, ok)
    tls = ViaSpec("bridge.example.com:5061", "TLS")
    assert top_via(dialog.create_request("INFO", via=tls).headers).transport == "TLS"
    with pytest.raises(DialogError, match="TLS"):
        dialog.create_request("INFO", via=VIA)
    with pytest.raises(DialogError, match="SIPS Contact"):
        dialog.create_request("UPDATE", via=tls, contact=BRIDGE_CONTACT)
    update = dialog.create_request("UPDATE", via=tls)
    assert update.headers.get("Contact") == "<sips:bridge@198.51.100.1:5061>"


# --- UAC dialogs (§12.1.2) -------------------------------------------------------------------


def test_uac_dialog_reverses_the_record_route_of_the_response() -> None:
    req = our_invite(route=["<sip:p1.example.com;lr>"])
    ok = phone_reply(req, 200, record_route=RR_IN_REQUEST)
    dialog = Dialog.from_uac(req, ok)
    assert dialog.id == DialogId("leg-1@bridge.example.com", "b2b-1", "phone-a")
    assert dialog.role is Role.UAC
    assert dialog.state is DialogState.CONFIRMED
    assert dialog.route_set == ("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>")
    assert dialog.remote_target == parse_uri(PHONE_CONTACT)
    assert dialog.local_cseq == 7
    assert dialog.remote_cseq is None
    assert str(dialog.local_target) == BRIDGE_CONTACT

    bye = dialog.create_request("BYE", via=VIA)
    assert bye.uri == PHONE_CONTACT
    assert bye.headers.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert cseq_of(bye) == (8, "BYE")
    assert bye.headers.get("From") == "<sip:100@bridge.example.com>;tag=b2b-1"
    assert bye.headers.get("To") == "<sip:bob@phone.example.com>;tag=phone-a"
    assert response_dialog_id(make_response(bye, 200, "OK")) == dialog.id


def test_uac_dialog_without_record_route() -> None:
    req = our_invite()
    dialog = Dialog.from_uac(req, phone_reply(req, 200))
    assert dialog.route_set == ()
    options = dialog.create_request("OPTIONS", via=VIA)
    assert options.uri == PHONE_CONTACT
    assert options.headers.get("Route") is None


def test_uac_dialog_refuses_what_cannot_create_one() -> None:
    req = our_invite()
    with pytest.raises(DialogError, match="without To tag"):
        Dialog.from_uac(req, phone_reply(req, 180, tag=None))
    with pytest.raises(DialogError, match="Contact"):
        Dialog.from_uac(req, phone_reply(req, 200, contact=None))
    # A 2xx from an RFC 2543 UAS without To tag does create one, with the empty tag.
    assert Dialog.from_uac(req, phone_reply(req, 200, tag=None)).remote_tag == ""
    # A 1xx without Contact aims at the Request-URI until the 2xx says better.
    early = Dialog.from_uac(req, phone_reply(req, 180, contact=None))
    assert early.remote_target == parse_uri("sip:bob@phone.example.com")
    early.receive_response(phone_reply(req, 200))
    assert early.remote_target == parse_uri(PHONE_CONTACT)


# --- routing (§12.2.1.1) ---------------------------------------------------------------------


def test_strict_router_first_becomes_the_request_uri_and_target_the_last_route() -> None:
    req = our_invite()
    # The proxy next to us (last in the response's Record-Route) is a strict router (no lr).
    ok = phone_reply(
        req,
        200,
        record_route=[
            "<sip:p2.example.com;lr>",
            "<sip:p1.example.com;transport=tcp;method=INVITE?Subject=x>",
        ],
    )
    dialog = Dialog.from_uac(req, ok)
    bye = dialog.create_request("BYE", via=VIA)
    # §12.2.1.1, §19.1.1: the method parameter and URI headers are not allowed there.
    assert bye.uri == "sip:p1.example.com;transport=tcp"
    assert bye.headers.get_all("Route") == ["<sip:p2.example.com;lr>", f"<{PHONE_CONTACT}>"]
    assert reparsed(bye).uri == "sip:p1.example.com;transport=tcp"


def test_loose_router_first_keeps_the_remote_target_as_request_uri() -> None:
    req = our_invite()
    ok = phone_reply(req, 200, record_route=["<sip:strict.example.com>", "<sip:loose.example;lr>"])
    dialog = Dialog.from_uac(req, ok)
    ack = dialog.create_ack(7, via=VIA)
    assert ack.uri == PHONE_CONTACT
    assert ack.headers.get_all("Route") == ["<sip:loose.example;lr>", "<sip:strict.example.com>"]


# --- CSeq rules ------------------------------------------------------------------------------


def test_local_cseq_increments_and_ack_and_cancel_reuse_the_invite_number() -> None:
    req = our_invite(cseq=41)
    dialog = Dialog.from_uac(req, phone_reply(req, 200))
    ack = dialog.create_ack(41, via=VIA)
    assert cseq_of(ack) == (41, "ACK")
    assert branch_of(ack) != branch_of(req)  # §13.2.2.4: the ACK for a 2xx is its own
    assert ack.headers.get("Contact") is None
    info = dialog.create_request("INFO", via=VIA)
    assert cseq_of(info) == (42, "INFO")
    reinvite = dialog.create_request("INVITE", via=VIA, body=SDP, content_type="application/sdp")
    assert cseq_of(reinvite) == (43, "INVITE")
    assert reinvite.headers.get("Contact") == f"<{BRIDGE_CONTACT}>"
    cancel = dialog.create_request("CANCEL", via=VIA)
    assert cseq_of(cancel) == (43, "CANCEL")
    assert branch_of(cancel) == branch_of(reinvite)  # §9.1: same transaction
    assert cancel.headers.get("To") == reinvite.headers.get("To")
    dialog.receive_response(make_response(reinvite, 200, "OK", extra=[("Contact", "<sip:b@h>")]))
    ack2 = dialog.create_request("ACK", via=VIA)
    assert cseq_of(ack2) == (43, "ACK")
    assert ack2.uri == "sip:b@h"
    assert dialog.local_cseq == 43
    assert cseq_of(dialog.create_request("BYE", via=VIA)) == (44, "BYE")


def test_a_refused_build_consumes_no_cseq_number() -> None:
    _, _, dialog = uas_dialog()
    with pytest.raises(DialogError, match="Content-Type"):
        dialog.create_request("INFO", via=VIA, body=b"x")
    with pytest.raises(DialogError, match="extra_headers"):
        dialog.create_request("INFO", via=VIA, extra_headers=[("CSeq", "9 INFO")])
    with pytest.raises(DialogError, match="bad header"):
        dialog.create_request("INFO", via=VIA, extra_headers=[("X-A", "1\r\nEvil: yes")])
    with pytest.raises(DialogError, match="Via"):
        dialog.create_request("INFO", via=ViaSpec("bad host", "UDP"))
    with pytest.raises(DialogError, match="method"):
        dialog.create_request("IN FO", via=VIA)
    with pytest.raises(DialogError, match="cancel"):
        dialog.create_request("CANCEL", via=VIA)
    assert dialog.local_cseq is None
    info = dialog.create_request("INFO", via=VIA, extra_headers=[("X-Call", "42")])
    assert cseq_of(info) == (1, "INFO")
    assert info.headers.get("X-Call") == "42"


def test_remote_cseq_out_of_order_or_repeated_gets_500() -> None:
    _, _, dialog = uas_dialog()
    accepted = dialog.receive_request(in_dialog_request("INFO", cseq=320))
    assert accepted.accepted and accepted.reason is VerdictReason.ACCEPTED
    assert accepted.dialog is dialog and accepted.response is None
    assert dialog.remote_cseq == 320
    for number in (319, 320, 314):
        late = dialog.receive_request(in_dialog_request("INFO", cseq=number))
        assert not late.accepted
        assert late.reason is VerdictReason.CSEQ_OUT_OF_ORDER
        assert late.response is not None and late.response.status == 500
        assert late.response.headers.get("CSeq") == f"{number} INFO"
    assert dialog.remote_cseq == 320
    assert dialog.receive_request(in_dialog_request("INFO", cseq=400)).accepted
    assert dialog.remote_cseq == 400


def test_uac_dialog_takes_the_peers_first_cseq_whatever_it_is() -> None:
    req = our_invite()
    dialog = Dialog.from_uac(req, phone_reply(req, 200))
    info = in_dialog_request(
        "INFO", cseq=9000, to_tag="b2b-1", from_tag="phone-a", call_id="leg-1@bridge.example.com"
    )
    assert dialog.receive_request(info).accepted
    assert dialog.remote_cseq == 9000


def test_malformed_cseq_in_dialog_gets_400() -> None:
    _, _, dialog = uas_dialog()
    bad = in_dialog_request("INFO", cseq=320)
    bad.headers.set("CSeq", "320 BYE")
    verdict = dialog.receive_request(bad)
    assert verdict.response is not None and verdict.response.status == 400
    bad.headers.set("CSeq", "x INFO")
    verdict = dialog.receive_request(bad)
    assert verdict.response is not None and verdict.response.status == 400
    assert dialog.remote_cseq == 314


# --- ACK, CANCEL and BYE received ------------------------------------------------------------


def test_ack_for_our_2xx_is_accepted_once_and_never_answered() -> None:
    _, _, dialog = uas_dialog()
    stale = dialog.receive_request(in_dialog_request("ACK", cseq=313))
    assert (stale.accepted, stale.reason, stale.response) == (
        False,
        VerdictReason.ACK_UNMATCHED,
        None,
    )
    first = dialog.receive_request(in_dialog_request("ACK", cseq=314))
    assert first.accepted and first.reason is VerdictReason.ACK
    again = dialog.receive_request(in_dialog_request("ACK", cseq=314))
    assert not again.accepted and again.response is None
    assert dialog.remote_cseq == 314  # an ACK does not move the remote CSeq


def test_bye_terminates_and_later_requests_get_481() -> None:
    _, _, dialog = uas_dialog()
    verdict = dialog.receive_request(in_dialog_request("BYE", cseq=315))
    assert verdict.accepted and verdict.terminated
    assert dialog.state is DialogState.TERMINATED
    late = dialog.receive_request(in_dialog_request("INFO", cseq=316))
    assert late.reason is VerdictReason.DIALOG_TERMINATED
    assert late.response is not None and late.response.status == 481
    with pytest.raises(DialogError, match="terminated"):
        dialog.create_request("BYE", via=VIA)


def test_our_bye_terminates_and_may_be_retried_after_a_challenge() -> None:
    req = our_invite()
    dialog = Dialog.from_uac(req, phone_reply(req, 200))
    bye = dialog.create_request("BYE", via=VIA)
    assert dialog.state is DialogState.TERMINATED  # §15.1.1
    challenged = dialog.receive_response(make_response(bye, 407, "Proxy Authentication Required"))
    assert challenged.accepted and not challenged.terminated
    retry = dialog.create_request("BYE", via=VIA, extra_headers=[("Proxy-Authorization", "x")])
    assert cseq_of(retry) == (9, "BYE")
    assert dialog.receive_response(make_response(retry, 200, "OK")).terminated
    with pytest.raises(DialogError, match="terminated"):
        dialog.create_request("INFO", via=VIA)


def test_request_for_another_dialog_gets_481() -> None:
    _, _, dialog = uas_dialog()
    verdict = dialog.receive_request(in_dialog_request("INFO", cseq=400, to_tag="other"))
    assert verdict.reason is VerdictReason.UNKNOWN_DIALOG
    assert verdict.response is not None and verdict.response.status == 481
    assert dialog.remote_cseq == 314


def test_cancel_of_a_pending_reinvite_and_of_nothing() -> None:
    _, _, dialog = uas_dialog()
    assert dialog.receive_request(in_dialog_request("ACK", cseq=314)).accepted
    nothing = dialog.receive_request(in_dialog_request("CANCEL", cseq=315))
    assert nothing.response is not None and nothing.response.status == 481
    reinvite = in_dialog_request("INVITE", cseq=315, contact=CALLER_CONTACT)
    assert dialog.receive_request(reinvite).accepted
    cancel = dialog.receive_request(in_dialog_request("CANCEL", cseq=315))
    assert cancel.accepted and cancel.reason is VerdictReason.CANCEL
    dialog.response_sent(reinvite, make_response(reinvite, 487, "Request Terminated"))
    assert not dialog.invite_in_progress
    assert dialog.state is DialogState.CONFIRMED  # a failed re-INVITE leaves the dialog


# --- target refresh (§12.2) ------------------------------------------------------------------


def test_received_reinvite_refreshes_the_remote_target() -> None:
    _, _, dialog = uas_dialog()
    dialog.receive_request(in_dialog_request("ACK", cseq=314))
    moved = "sip:alice@192.0.2.99:5070"
    reinvite = in_dialog_request("INVITE", cseq=315, contact=moved)
    verdict = dialog.receive_request(reinvite)
    assert verdict.accepted and verdict.target_refreshed
    assert str(dialog.remote_target) == moved
    dialog.response_sent(reinvite, make_response(reinvite, 200, "OK"))
    assert dialog.awaiting_ack
    assert dialog.receive_request(in_dialog_request("ACK", cseq=315)).reason is VerdictReason.ACK
    # A target refresh without Contact is refused (§8.1.1.8, RFC 3311 §5.1).
    update = dialog.receive_request(in_dialog_request("UPDATE", cseq=316))
    assert update.response is not None and update.response.status == 400
    assert str(dialog.remote_target) == moved
    assert dialog.create_request("BYE", via=VIA).uri == moved


def test_reinvite_2xx_refreshes_the_remote_target_for_the_uac() -> None:
    req = our_invite()
    dialog = Dialog.from_uac(req, phone_reply(req, 200))
    reinvite = dialog.create_request("INVITE", via=VIA, body=SDP, content_type="application/sdp")
    assert dialog.invite_in_progress
    trying = dialog.receive_response(make_response(reinvite, 100, "Trying"))
    assert trying.accepted and not trying.target_refreshed
    moved = "sip:bob@203.0.113.77:5080"
    ok = make_response(reinvite, 200, "OK", extra=[("Contact", f"<{moved}>")])
    verdict = dialog.receive_response(ok)
    assert verdict.accepted and verdict.target_refreshed and not verdict.confirmed
    assert str(dialog.remote_target) == moved
    assert not dialog.invite_in_progress
    again = dialog.receive_response(ok)
    assert again.reason is VerdictReason.RETRANSMITTED_2XX and not again.target_refreshed
    assert dialog.create_ack(8, via=VIA).uri == moved


def test_update_2xx_refreshes_the_target_and_a_failure_does_not() -> None:
    req = our_invite()
    dialog = Dialog.from_uac(req, phone_reply(req, 200))
    update = dialog.create_request("UPDATE", via=VIA, contact="<sip:bridge@198.51.100.2>")
    assert update.headers.get("Contact") == "<sip:bridge@198.51.100.2>"
    assert str(dialog.local_target) == "sip:bridge@198.51.100.2"
    failed = make_response(update, 488, "Not Acceptable Here", extra=[("Contact", "<sip:x@y>")])
    assert not dialog.receive_response(failed).target_refreshed
    assert dialog.remote_target == parse_uri(PHONE_CONTACT)
    update2 = dialog.create_request("UPDATE", via=VIA)
    ok = make_response(update2, 200, "OK", extra=[("Contact", "<sip:bob@203.0.113.9>")])
    assert dialog.receive_response(ok).target_refreshed
    assert str(dialog.remote_target) == "sip:bob@203.0.113.9"


def test_481_or_408_to_an_in_dialog_request_ends_the_dialog() -> None:
    for status in (481, 408):
        req = our_invite()
        dialog = Dialog.from_uac(req, phone_reply(req, 200))
        info = dialog.create_request("INFO", via=VIA)
        verdict = dialog.receive_response(make_response(info, status, "X"))
        assert verdict.terminated and dialog.state is DialogState.TERMINATED


def test_malformed_peer_messages_are_refused_not_raised() -> None:
    _, _, dialog = uas_dialog()
    bad_contact = in_dialog_request("INVITE", cseq=315)
    bad_contact.headers.add("Contact", "<sip:alice@[not-ipv6]>")
    verdict = dialog.receive_request(bad_contact)
    assert verdict.response is not None and verdict.response.status == 400
    assert str(dialog.remote_target) == CALLER_CONTACT

    req = timed_invite()
    early = Dialog.from_uac(req, phone_reply(req, 180, record_route=["<sip:p;lr>"]))
    ok = phone_reply(
        req, 200, record_route=["<sip:p;lr"], extra=[("Session-Expires", "soon;refresher=x")]
    )
    assert early.receive_response(ok).confirmed
    assert early.route_set == ("<sip:p;lr>",)  # kept: the 2xx's Record-Route is malformed
    assert early.session_timer is None  # a malformed Session-Expires negotiates nothing
    with pytest.raises(DialogError, match="Record-Route"):
        DialogSet(req).receive_response(ok)


# --- re-INVITE glare (§14) -------------------------------------------------------------------


def test_reinvite_glare_gets_491_and_overlap_gets_500_with_retry_after() -> None:
    req = our_invite()
    dialog = Dialog.from_uac(req, phone_reply(req, 200))
    ours = dialog.create_request("INVITE", via=VIA, body=SDP, content_type="application/sdp")
    with pytest.raises(DialogError, match="in progress"):
        dialog.create_request("INVITE", via=VIA)
    theirs = in_dialog_request(
        "INVITE",
        cseq=50,
        to_tag="b2b-1",
        from_tag="phone-a",
        call_id="leg-1@bridge.example.com",
        contact=PHONE_CONTACT,
    )
    glare = dialog.receive_request(theirs)
    assert glare.reason is VerdictReason.GLARE
    assert glare.response is not None and glare.response.status == 491
    assert dialog.remote_cseq == 50  # §12.2.2 bookkeeping happens before the 491
    lost = dialog.receive_response(make_response(ours, 491, "Request Pending"))
    assert lost.reason is VerdictReason.GLARE
    assert dialog.reinvite_retry_window() == (2.1, 4.0)  # we own the Call-ID

    # Now the peer's re-INVITE goes through; a second one overlaps it.
    theirs.headers.set("CSeq", "51 INVITE")
    assert dialog.receive_request(theirs).accepted
    theirs.headers.set("CSeq", "52 INVITE")
    overlap = dialog.receive_request(theirs)
    assert overlap.reason is VerdictReason.INVITE_IN_PROGRESS
    assert overlap.response is not None and overlap.response.status == 500
    assert 0 <= int(overlap.response.headers.get("Retry-After") or "-1") <= 10
    with pytest.raises(DialogError, match="in progress"):
        dialog.create_request("INVITE", via=VIA)
    _, _, uas = uas_dialog()
    assert uas.reinvite_retry_window() == (0.0, 2.0)


def test_an_update_offer_during_a_reinvite_offer_gets_491_or_500() -> None:
    """RFC 3311 §5.2: an UPDATE with an offer while our re-INVITE's offer waits for its
    answer is glare (491); while the peer's re-INVITE offer waits for ours, 500 with a
    Retry-After of 0-10 s. An UPDATE without a body (a session refresh) goes through."""

    def update(cseq: int, *, body: bytes = SDP, call_id: str = CALL_ID) -> SipRequest:
        request = in_dialog_request("UPDATE", cseq=cseq, call_id=call_id, contact=CALLER_CONTACT)
        if body:
            request.headers.add("Content-Type", "application/sdp")
        return dataclasses.replace(request, body=body)

    _, _, dialog = uas_dialog()
    theirs = in_dialog_request("INVITE", cseq=315, contact=CALLER_CONTACT)
    theirs = dataclasses.replace(theirs, body=SDP)
    assert dialog.receive_request(theirs).accepted
    pending = dialog.receive_request(update(316))
    assert pending.reason is VerdictReason.INVITE_IN_PROGRESS
    assert pending.response is not None and pending.response.status == 500
    assert 0 <= int(pending.response.headers.get("Retry-After") or "-1") <= 10
    assert dialog.receive_request(update(317, body=b"")).accepted  # a refresh: no offer
    dialog.response_sent(theirs, make_response(theirs, 200, "OK"))
    assert dialog.receive_request(update(318)).accepted  # answered: a new offer is fine

    req = our_invite()
    ours_dialog = Dialog.from_uac(req, phone_reply(req, 200))
    ours_dialog.create_request("INVITE", via=VIA, body=SDP, content_type="application/sdp")
    theirs_update = update(50, call_id=ours_dialog.id.call_id)
    theirs_update.headers.set("From", f"<sip:bob@example.com>;tag={ours_dialog.id.remote_tag}")
    theirs_update.headers.set("To", f"<sip:alice@example.com>;tag={ours_dialog.id.local_tag}")
    glare = ours_dialog.receive_request(theirs_update)
    assert glare.reason is VerdictReason.GLARE
    assert glare.response is not None and glare.response.status == 491


# --- forking (§12.1.2, §13.2.2.4) ------------------------------------------------------------


def test_forked_early_dialogs_and_the_one_the_2xx_confirms() -> None:
    req = our_invite()
    dialogs = DialogSet(req)
    assert dialogs.receive_response(phone_reply(req, 100, tag=None)) is None
    assert dialogs.receive_response(phone_reply(req, 180, tag=None)) is None
    a = dialogs.receive_response(phone_reply(req, 180, tag="fork-a", contact="sip:a@h1"))
    b = dialogs.receive_response(
        phone_reply(req, 183, tag="fork-b", contact="sip:b@h2", record_route=["<sip:pb;lr>"])
    )
    assert a is not None and b is not None and a is not b
    assert a.id.remote_tag == "fork-a" and b.id.remote_tag == "fork-b"
    assert a.id.local_tag == b.id.local_tag == "b2b-1"
    assert {d.state for d in (a, b)} == {DialogState.EARLY}
    assert dialogs.receive_response(phone_reply(req, 180, tag="fork-a")) is a
    assert len(dialogs) == 2
    # Early dialogs route like confirmed ones (PRACK/UPDATE); the caller's UA may BYE one.
    update = b.create_request("UPDATE", via=VIA)
    assert update.uri == "sip:b@h2" and update.headers.get_all("Route") == ["<sip:pb;lr>"]

    ok = phone_reply(req, 200, tag="fork-b", contact="sip:b@h3", record_route=["<sip:pc;lr>"])
    confirmed = dialogs.receive_response(ok)
    assert confirmed is b
    assert b.state is DialogState.CONFIRMED
    assert b.route_set == ("<sip:pc;lr>",)  # §13.2.2.4: recomputed from the 2xx
    assert str(b.remote_target) == "sip:b@h3"
    assert dialogs.confirmed == [b] and dialogs.early == [a]
    assert dialogs.final_status == 200
    assert dialogs.terminate_early() == [a]
    assert a.state is DialogState.TERMINATED


def test_two_2xx_from_two_forks_make_two_confirmed_dialogs() -> None:
    req = our_invite()
    dialogs = DialogSet(req)
    first = dialogs.receive_response(phone_reply(req, 200, tag="fork-a"))
    second = dialogs.receive_response(phone_reply(req, 200, tag="fork-b"))
    assert first is not None and second is not None
    assert [d.id.remote_tag for d in dialogs.confirmed] == ["fork-a", "fork-b"]
    # Each must be ACKed; the B2BUA keeps the first and hangs up the second.
    assert cseq_of(second.create_ack(7, via=VIA)) == (7, "ACK")
    assert cseq_of(second.create_request("BYE", via=VIA)) == (8, "BYE")


def test_a_final_failure_ends_every_early_dialog() -> None:
    req = our_invite()
    dialogs = DialogSet(req)
    a = dialogs.receive_response(phone_reply(req, 180, tag="fork-a"))
    b = dialogs.receive_response(phone_reply(req, 180, tag="fork-b"))
    assert dialogs.receive_response(phone_reply(req, 486, tag="fork-c")) is None
    assert a is not None and b is not None
    assert a.state is b.state is DialogState.TERMINATED
    assert dialogs.final_status == 486
    # Responses for another request or call are not this set's.
    other = our_invite(cseq=8)
    assert dialogs.receive_response(phone_reply(other, 200)) is None


def test_early_uac_dialog_failure_seen_by_the_dialog_itself() -> None:
    req = our_invite()
    dialog = Dialog.from_uac(req, phone_reply(req, 180))
    cancel = dialog.create_request("CANCEL", via=VIA)
    assert cancel.headers.get("To") == "<sip:bob@phone.example.com>"  # as in the INVITE
    assert branch_of(cancel) == branch_of(req)
    verdict = dialog.receive_response(phone_reply(req, 487))
    assert verdict.terminated and dialog.state is DialogState.TERMINATED


# --- CANCEL construction (§9.1, RFC 3326) ----------------------------------------------------


def test_build_cancel_is_byte_exact_with_reason() -> None:
    req = our_invite(route=["<sip:p1.example.com;lr>"])
    # Only the top Via is copied, not the values after it on its line or on later lines.
    top = req.headers.get("Via")
    req.headers.set("Via", f"{top}, SIP/2.0/UDP second.example.com;branch=z9hG4bKsecond")
    req.headers.add("Via", "SIP/2.0/TCP third.example.com;branch=z9hG4bKthird")
    reason = format_reason(200, "Call completed elsewhere")
    assert reason == 'SIP;cause=200;text="Call completed elsewhere"'
    cancel = build_cancel(req, reason)
    assert cancel.to_bytes() == (
        b"CANCEL sip:bob@phone.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP bridge.example.com:5060;branch=z9hG4bKleg1;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:p1.example.com;lr>\r\n"
        b"From: <sip:100@bridge.example.com>;tag=b2b-1\r\n"
        b"To: <sip:bob@phone.example.com>\r\n"
        b"Call-ID: leg-1@bridge.example.com\r\n"
        b"CSeq: 7 CANCEL\r\n"
        b'Reason: SIP;cause=200;text="Call completed elsewhere"\r\n'
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    plain = build_cancel(req)
    assert plain.headers.get("Reason") is None and plain.body == b""
    assert format_reason(16, protocol="Q.850") == "Q.850;cause=16"
    with pytest.raises(DialogError):
        build_cancel(req, "SIP;cause=200\r\nX-Evil: 1")
    with pytest.raises(DialogError, match="only an INVITE"):
        build_cancel(SipRequest("BYE", "sip:x@y", req.headers.copy()))


def test_cancel_matches_the_invite_server_transaction_of_the_peer() -> None:
    req = our_invite()
    client = TransactionLayer()
    client.send_request(req, ("203.0.113.5", 5062), "udp", 0.0)
    cancel = build_cancel(req, format_reason(487, "Cancelled"))
    client.send_request(cancel, ("203.0.113.5", 5062), "udp", 0.1)
    server = TransactionLayer()
    events = server.receive(reparsed(req), ("198.51.100.1", 5060), "udp", 0.0)
    assert isinstance(events[0], NewRequest)
    assert server.find_invite_for_cancel(reparsed(cancel)) == events[0].transaction_id


def test_in_dialog_requests_go_through_the_transaction_layer() -> None:
    _, _, dialog = uas_dialog()
    layer = TransactionLayer()
    bye = dialog.create_request("BYE", via=VIA)
    layer.send_request(bye, ("192.0.2.10", 5060), "udp", 0.0)
    [out] = layer.datagrams_to_send()
    assert out.data == bye.to_bytes()
    peer = TransactionLayer()
    [event] = peer.receive(reparsed(bye), ("198.51.100.1", 5060), "udp", 0.0)
    assert isinstance(event, NewRequest) and event.request.method == "BYE"


# --- session timers (RFC 4028) ---------------------------------------------------------------


def timed_invite(expires: str = "1800", min_se: str | None = "120") -> SipRequest:
    extra = [("Supported", "timer"), ("Session-Expires", expires)]
    if min_se is not None:
        extra.append(("Min-SE", min_se))
    return our_invite(extra=extra)


def test_session_timer_bookkeeping_on_both_sides() -> None:
    req = timed_invite()
    ok = phone_reply(
        req, 200, extra=[("Session-Expires", "1800;refresher=uac"), ("Require", "timer")]
    )
    uac = Dialog.from_uac(req, ok)
    assert uac.session_timer == SessionTimer(1800, Role.UAC, Role.UAC, 120)
    assert uac.session_timer.we_refresh
    assert uac.refresh_due_at(100.0) == 1000.0  # half the interval (§7.2)
    assert uac.expires_at(100.0) == 1900.0
    assert uac.session_timer.bye_due_at(100.0) == 1900.0

    uas = Dialog.from_uas(req, ok)
    assert uas.session_timer is not None and not uas.session_timer.we_refresh
    assert uas.refresh_due_at(100.0) is None
    assert uas.session_timer.bye_due_at(100.0) == 1868.0  # min(32, 1800/3) before (§10)
    short = SessionTimer(90, Role.UAS, Role.UAC)
    assert short.bye_due_at(0.0) == 60.0  # a third of 90 s is less than 32 s

    # The refresh keeps the refresher (§7.4): we refresh, and as the refresh's UAC we say uac.
    refresh = uac.create_refresh(via=VIA)
    assert refresh.method == "UPDATE" and cseq_of(refresh) == (8, "UPDATE")
    assert refresh.headers.get("Session-Expires") == "1800;refresher=uac"
    assert refresh.headers.get("Min-SE") == "120"
    assert refresh.headers.get("Supported") == "timer"
    assert refresh.headers.get("Contact") == f"<{BRIDGE_CONTACT}>"
    # The UAS side does not refresh; if it sends a re-INVITE the peer stays the refresher.
    uas.receive_request(in_dialog_request("ACK", cseq=7, to_tag="bridge-tag", from_tag="b2b-1"))
    assert uas.session_timer.header_value(Role.UAC) == "1800;refresher=uas"

    answer = make_response(refresh, 200, "OK", extra=[("Session-Expires", "900;refresher=uas")])
    assert uac.receive_response(answer).accepted
    assert uac.session_timer == SessionTimer(900, Role.UAS, Role.UAC, 120)
    assert uac.refresh_due_at(0.0) is None  # the peer took the refresher role


def test_no_session_timer_without_session_expires() -> None:
    req = our_invite()
    dialog = Dialog.from_uac(req, phone_reply(req, 200))
    assert dialog.session_timer is None
    assert dialog.refresh_due_at(0.0) is None and dialog.expires_at(0.0) is None
    with pytest.raises(DialogError, match="no session timer"):
        dialog.create_refresh(via=VIA)
    assert dialog.create_request("UPDATE", via=VIA).headers.get("Session-Expires") is None


def test_uac_refreshes_alone_when_the_uas_ignores_the_timer() -> None:
    req = timed_invite("600", None)
    ok = phone_reply(req, 200)
    assert Dialog.from_uac(req, ok).session_timer == SessionTimer(600, Role.UAC, Role.UAC)
    assert Dialog.from_uas(req, ok).session_timer is None  # we as UAS chose none
    assert negotiate_session_timer(req, ok, local_role=Role.UAS) is None


def test_received_refresh_renegotiates_through_the_2xx_we_send() -> None:
    _, _, dialog = uas_dialog()
    dialog.receive_request(in_dialog_request("ACK", cseq=314))
    update = in_dialog_request("UPDATE", cseq=315, contact=CALLER_CONTACT)
    update.headers.add("Session-Expires", "1200")
    update.headers.add("Supported", "timer")
    assert dialog.receive_request(update).accepted
    answer = session_timer_answer(update)
    assert answer == [("Session-Expires", "1200;refresher=uas")]
    dialog.response_sent(update, make_response(update, 200, "OK", extra=answer))
    assert dialog.session_timer == SessionTimer(1200, Role.UAS, Role.UAS)
    assert dialog.refresh_due_at(10.0) == 610.0
    # Our next refresh is a request of ours: we stay the refresher, as its UAC.
    refresh = dialog.create_refresh("INVITE", via=VIA, body=SDP, content_type="application/sdp")
    assert refresh.headers.get("Session-Expires") == "1200;refresher=uac"


def test_session_timer_answer_follows_the_request() -> None:
    asked = our_invite(extra=[("Session-Expires", "1800;refresher=uac")])
    assert session_timer_answer(asked) == [
        ("Session-Expires", "1800;refresher=uac"),
        ("Require", "timer"),  # §9: the UAC must learn that it refreshes
    ]
    supported = our_invite(extra=[("Session-Expires", "1800"), ("Supported", "timer")])
    assert session_timer_answer(supported, prefer=Role.UAC)[0] == (
        "Session-Expires",
        "1800;refresher=uac",
    )
    # Without Supported: timer, the UAC cannot refresh: the UAS does.
    plain = our_invite(extra=[("Session-Expires", "1800")])
    assert session_timer_answer(plain, prefer=Role.UAC) == [
        ("Session-Expires", "1800;refresher=uas")
    ]
    assert session_timer_answer(our_invite()) == []


def test_422_checks_and_retry_of_the_initial_invite() -> None:
    assert check_session_expires(timed_invite("1800")) is None
    assert check_session_expires(our_invite()) is None
    too_short = timed_invite("60", None)
    rejected = check_session_expires(too_short, min_se=300)
    assert rejected is not None and rejected.status == 422
    assert rejected.headers.get("Min-SE") == "300"
    bad = check_session_expires(timed_invite("soon"))
    assert bad is not None and bad.status == 400
    assert min_se_from_422(rejected) == 300
    with pytest.raises(DialogError):
        min_se_from_422(make_response(too_short, 200, "OK"))

    retry = retry_after_422(too_short, rejected)
    assert cseq_of(retry) == (8, "INVITE")
    assert retry.headers.get("Session-Expires") == "300"
    assert retry.headers.get("Min-SE") == "300"
    assert branch_of(retry) != branch_of(too_short)
    assert top_via(retry.headers).sent_by == "bridge.example.com:5060"
    assert retry.headers.get("Call-ID") == too_short.headers.get("Call-ID")
    assert retry.headers.get("From") == too_short.headers.get("From")
    assert retry.body == too_short.body
    assert too_short.headers.get("CSeq") == "7 INVITE"  # the original is untouched
    kept = retry_after_422(timed_invite("60;refresher=uac", "90"), rejected)
    assert kept.headers.get_all("Session-Expires") == ["300;refresher=uac"]
    assert kept.headers.get_all("Min-SE") == ["300"]


def test_422_to_an_in_dialog_refresh_raises_the_interval() -> None:
    req = timed_invite("90", None)
    ok = phone_reply(req, 200, extra=[("Session-Expires", "90;refresher=uac")])
    dialog = Dialog.from_uac(req, ok)
    refresh = dialog.create_refresh(via=VIA)
    assert refresh.headers.get("Session-Expires") == "90;refresher=uac"
    too_small = make_response(refresh, 422, "Session Interval Too Small", extra=[("Min-SE", "600")])
    verdict = dialog.receive_response(too_small)
    assert verdict.reason is VerdictReason.SESSION_INTERVAL_TOO_SMALL
    assert dialog.session_timer == SessionTimer(600, Role.UAC, Role.UAC, 600)
    again = dialog.create_refresh(via=VIA)
    assert cseq_of(again) == (9, "UPDATE")
    assert again.headers.get("Session-Expires") == "600;refresher=uac"
    assert again.headers.get("Min-SE") == "600"
    assert dialog.on_422(too_small) == 600


def test_session_expires_grammar() -> None:
    assert parse_session_expires("1800") == (1800, None)
    assert parse_session_expires("90 ; refresher=UAS") == (90, Role.UAS)
    for bad in ("", "-1", "1800;refresher=proxy", "9" * 11):
        with pytest.raises(DialogError):
            parse_session_expires(bad)


# --- lookup ----------------------------------------------------------------------------------


def test_match_dialog_for_requests_and_responses() -> None:
    incoming = in_dialog_request("INFO", cseq=1)
    assert match_dialog(incoming) == DialogId(CALL_ID, "bridge-tag", "alice-tag")
    assert match_dialog(incoming) == request_dialog_id(incoming)
    response = make_response(incoming, 200, "OK")
    assert match_dialog(response) == DialogId(CALL_ID, "alice-tag", "bridge-tag")
    assert match_dialog(response) == match_dialog(incoming).peer()  # type: ignore[union-attr]
    assert match_dialog(invite()) is None  # no To tag: not in a dialog
    no_call_id = in_dialog_request("INFO", cseq=1)
    no_call_id.headers.remove("Call-ID")
    assert match_dialog(no_call_id) is None


def test_dialog_table_finds_dialogs_and_answers_481_for_unknown() -> None:
    table = DialogTable()
    _, _, uas = uas_dialog()
    req = our_invite()
    uac = Dialog.from_uac(req, phone_reply(req, 200))
    table.add(uas)
    table.add(uac)
    table.add(uac)  # adding the same object again is harmless
    assert len(table) == 2 and uas.id in table
    with pytest.raises(DialogError, match="already exists"):
        table.add(Dialog.from_uac(req, phone_reply(req, 200)))

    info = in_dialog_request("INFO", cseq=400)
    assert table.find_for_request(info) is uas
    verdict = table.receive_request(info)
    assert verdict.accepted and verdict.dialog is uas

    bye_out = uac.create_request("BYE", via=VIA)
    assert table.find_for_response(make_response(bye_out, 200, "OK")) is uac
    assert table.by_call_id("leg-1@bridge.example.com") == [uac]

    unknown = table.receive_request(in_dialog_request("INFO", cseq=1, to_tag="gone"))
    assert unknown.reason is VerdictReason.UNKNOWN_DIALOG and unknown.dialog is None
    assert unknown.response is not None and unknown.response.status == 481
    assert unknown.response.headers.get("To") == "<sip:100@bridge.example.com>;tag=gone"
    ack = table.receive_request(in_dialog_request("ACK", cseq=1, to_tag="gone"))
    assert ack.reason is VerdictReason.UNKNOWN_DIALOG and ack.response is None
    initial = table.receive_request(invite())
    assert initial == Verdict(False, VerdictReason.OUT_OF_DIALOG)
    stray = table.receive_response(make_response(in_dialog_request("INFO", cseq=1), 200, "OK"))
    assert stray.reason is VerdictReason.UNKNOWN_DIALOG

    # Our BYE: a challenge keeps the dialog, the final answer removes it.
    assert table.receive_response(make_response(bye_out, 401, "Unauthorized")).accepted
    assert uac.id in table
    assert table.receive_response(make_response(bye_out, 200, "OK")).terminated
    assert uac.id not in table
    # The peer's BYE removes the dialog; what comes after gets 481.
    assert table.receive_request(in_dialog_request("BYE", cseq=401)).terminated
    assert len(table) == 0
    late = table.receive_request(in_dialog_request("INFO", cseq=402))
    assert late.response is not None and late.response.status == 481


def test_dialog_table_prune_and_discard() -> None:
    table = DialogTable()
    req = our_invite()
    dialogs = DialogSet(req)
    a = dialogs.receive_response(phone_reply(req, 180, tag="fork-a"))
    b = dialogs.receive_response(phone_reply(req, 180, tag="fork-b"))
    assert a is not None and b is not None
    table.add(a)
    table.add(b)
    dialogs.receive_response(phone_reply(req, 200, tag="fork-b"))
    dialogs.terminate_early()
    assert table.prune() == [a]
    assert list(table) == [b]
    assert table.get(b.id) is b
    assert table.discard(b.id) is b and table.discard(b.id) is None


# --- property: in-dialog CSeq order ----------------------------------------------------------

_METHODS = ("INFO", "OPTIONS", "UPDATE", "INVITE", "MESSAGE", "NOTIFY")
_op = st.one_of(
    st.tuples(st.just("send"), st.sampled_from(("caller", "bridge")), st.sampled_from(_METHODS)),
    st.tuples(st.just("again"), st.integers(min_value=0, max_value=1000), st.just("")),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_op, max_size=40), hang_up=st.booleans())
def test_property_requests_are_accepted_once_in_strictly_increasing_cseq(
    ops: list[tuple[str, object, str]], hang_up: bool
) -> None:
    req = invite(record_route=RR_IN_REQUEST)
    ok = reply(req, 200)
    caller = Dialog.from_uac(req, ok)  # the caller's own view of the dialog
    bridge = Dialog.from_uas(req, ok)
    assert caller.id.peer() == bridge.id
    peers = {"caller": (caller, bridge), "bridge": (bridge, caller)}
    delivered: list[tuple[Dialog, SipRequest]] = []
    last_sent = {"caller": 314, "bridge": 0}
    first_ack = caller.create_ack(314, via=VIA)
    assert bridge.receive_request(first_ack).reason is VerdictReason.ACK
    delivered.append((bridge, first_ack))

    def exchange(side: str, method: str) -> None:
        sender, receiver = peers[side]
        request = sender.create_request(method, via=VIA)
        number, _ = cseq_of(request)
        assert number == last_sent[side] + 1  # strictly increasing, by one
        last_sent[side] = number
        verdict = receiver.receive_request(reparsed(request))
        assert verdict.accepted and verdict.response is None, verdict
        delivered.append((receiver, request))
        contact = [("Contact", f"<{receiver.local_target}>")]
        response = make_response(request, 200, "OK", extra=contact)
        receiver.response_sent(request, response)
        assert sender.receive_response(response).accepted
        if method == "INVITE":
            ack = sender.create_ack(number, via=VIA)
            assert cseq_of(ack) == (number, "ACK")
            assert receiver.receive_request(ack).reason is VerdictReason.ACK
            delivered.append((receiver, ack))

    for kind, arg, method in ops:
        if kind == "send":
            exchange(str(arg), method)
        else:
            receiver, request = delivered[int(str(arg)) % len(delivered)]
            verdict = receiver.receive_request(request)
            assert not verdict.accepted  # a retransmission is never accepted again
            if request.method == "ACK":
                assert verdict.response is None
            else:
                assert verdict.response is not None and verdict.response.status == 500
    if hang_up:
        exchange("caller", "BYE")
        assert caller.state is bridge.state is DialogState.TERMINATED
        for receiver, request in delivered[:-1]:
            verdict = receiver.receive_request(request)
            assert not verdict.accepted
            if request.method != "ACK":
                assert verdict.response is not None and verdict.response.status == 481
        with pytest.raises(DialogError):
            bridge.create_request("INFO", via=VIA)
    assert caller.local_cseq == last_sent["caller"]
    assert bridge.local_cseq == (last_sent["bridge"] or None)
    assert bridge.remote_cseq == last_sent["caller"]
    assert caller.remote_cseq == (last_sent["bridge"] or None)
