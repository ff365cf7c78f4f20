"""In-dialog requests on a bridged SIP call (README, "Calls over SIP") without the media engine
(`[media] engine = "none"`): a re-INVITE, an UPDATE or an INFO from either side passes to the
other side with its body unchanged, and the other side's final response comes back to the
sender, body and all. (With the engine, INFO still passes; re-INVITE and UPDATE are answered
by the bridge for its own side: tests/sip/test_anchored_media.py.)

Driven on the wire in-process (`sim.phones.inproc`): the trunk calls a line, the desk phone
answers, then one side sends the request and the test plays the other side's answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from sim.phones.inproc import (
    SDP,
    TRUNK,
    TRUNK_SDP,
    InprocBridge,
    body_of,
    contact_uri,
    header,
    is_request,
    is_response,
    one_desk_phone_directory,
    respond,
    start_line,
    trunk_in_dialog,
    trunk_invite,
)

LINE = "+15550100"
PHONE = ("127.0.0.1", 20001)
DIRECTORY = one_desk_phone_directory(LINE)

Sent = list[tuple[bytes, tuple[str, int]]]

HOLD_CALLER = TRUNK_SDP.replace(b"t=0 0\r\n", b"t=0 0\r\na=sendonly\r\n")
DTMF = b"Signal=5\r\nDuration=160\r\n"
# What each method carries, and what the far side answers it with.
BODIES: dict[str, tuple[str, bytes, int, str, bytes]] = {
    # method: (content type, request body, answer status, answer reason, answer body)
    "INVITE": ("application/sdp", HOLD_CALLER, 200, "OK", SDP),
    "UPDATE": ("application/sdp", HOLD_CALLER, 200, "OK", SDP),
    "INFO": ("application/dtmf-relay", DTMF, 200, "OK", b""),
}


@pytest.fixture
async def bridge() -> AsyncIterator[InprocBridge]:
    bridge = InprocBridge(DIRECTORY, media={"engine": "none"})
    await bridge.start()
    assert bridge.register_phone("201", "pw-201", PHONE[1])
    try:
        yield bridge
    finally:
        await bridge.stop()


def only(sent: Sent, wanted: Callable[[bytes], bool]) -> tuple[bytes, tuple[str, int]]:
    found = [(d, a) for d, a in dict.fromkeys(sent) if wanted(d)]  # without retransmissions
    assert len(found) == 1, [start_line(d) for d, _ in sent]
    return found[0]


class BridgedCall:
    """A trunk call to LINE answered by ana's phone; both dialogs as the peers see them."""

    def __init__(self, bridge: InprocBridge) -> None:
        self.bridge = bridge
        bridge.feed(trunk_invite(1, LINE, bridge.address), TRUNK)
        invite, where = only(bridge.take(), lambda d: is_request(d, "INVITE"))
        assert where == PHONE
        self.phone_invite = invite
        extra = b"Contact: <sip:201@127.0.0.1:20001>\r\nContent-Type: application/sdp"
        bridge.feed(respond(invite, "200 OK", b"ph1", extra, SDP), PHONE)
        sent = bridge.take()
        assert any(is_request(d, "ACK") and a == PHONE for d, a in sent)
        ok, where = only(sent, lambda d: is_response(d, 200, "INVITE"))
        assert where == TRUNK
        self.trunk_to, self.trunk_target = header(ok, "To") or "", contact_uri(ok)
        bridge.feed(trunk_in_dialog("ACK", 1, 1, self.trunk_to, self.trunk_target), TRUNK)
        assert bridge.take() == []
        self.trunk_cseq = 1
        self.phone_cseq = 100

    def from_trunk(self, method: str, content_type: str, body: bytes) -> None:
        self.trunk_cseq += 1
        request = trunk_in_dialog(
            method, self.trunk_cseq, 1, self.trunk_to, self.trunk_target, body=body
        )
        if content_type != "application/sdp":
            request = request.replace(b"application/sdp", content_type.encode())
        self.bridge.feed(request, TRUNK)

    def from_phone(self, method: str, content_type: str, body: bytes) -> None:
        """The phone's own in-dialog request: its dialog is the bridge's INVITE turned round."""
        self.phone_cseq += 1
        invite = self.phone_invite
        lines = [
            f"{method} {contact_uri(invite)} SIP/2.0",
            f"Via: SIP/2.0/UDP {PHONE[0]}:{PHONE[1]};branch=z9hG4bK-ph-{method}{self.phone_cseq}",
            f"From: {header(invite, 'To')};tag=ph1",
            f"To: {header(invite, 'From')}",
            f"Call-ID: {header(invite, 'Call-ID')}",
            f"CSeq: {self.phone_cseq} {method}",
            "Max-Forwards: 70",
        ]
        if method in ("INVITE", "UPDATE"):
            lines.append(f"Contact: <sip:201@{PHONE[0]}:{PHONE[1]}>")
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        self.bridge.feed(("\r\n".join(lines) + "\r\n\r\n").encode() + body, PHONE)


@pytest.mark.parametrize("method", ["INVITE", "UPDATE", "INFO"])
@pytest.mark.parametrize("origin", ["caller", "callee"])
async def test_in_dialog_request_passes_to_the_other_side_and_its_answer_comes_back(
    bridge: InprocBridge, method: str, origin: str
) -> None:
    call = BridgedCall(bridge)
    content_type, body, status, reason, answer_body = BODIES[method]
    if origin == "callee":
        body = body.replace(b"trunk", b"phone") if body != DTMF else body
        sender, receiver = PHONE, TRUNK
        call.from_phone(method, content_type, body)
    else:
        sender, receiver = TRUNK, PHONE
        call.from_trunk(method, content_type, body)
    sent = bridge.take()
    # The request reached the other side, unchanged in its body, and nothing answered it yet.
    relayed, where = only(sent, lambda d: is_request(d, method))
    assert where == receiver, start_line(relayed)
    assert body_of(relayed) == body
    assert header(relayed, "Content-Type") == content_type
    assert [d for d, a in sent if a == sender and d.startswith(b"SIP/2.0 2")] == []
    # The other side's final answer goes back to the sender, with its body.
    ct = b"Content-Type: application/sdp" if answer_body else b""
    bridge.feed(respond(relayed, f"{status} {reason}", None, ct, answer_body), receiver)
    sent = bridge.take()
    answer, where = only(sent, lambda d: is_response(d, status, method))
    assert where == sender
    assert body_of(answer) == answer_body
    assert int(header(answer, "CSeq").split()[0]) == (  # type: ignore[union-attr]
        call.phone_cseq if origin == "callee" else call.trunk_cseq
    )
    if method == "INVITE":  # the bridge ACKs the far side's 2xx itself
        assert [a for d, a in sent if is_request(d, "ACK")] == [receiver]
    assert len(bridge.ctx.calls) == 1  # the call goes on


REFUSALS = {
    "INVITE": "488 Not Acceptable Here",
    "UPDATE": "488 Not Acceptable Here",
    "INFO": "415 Unsupported Media Type",
}


@pytest.mark.parametrize("method", ["INVITE", "UPDATE", "INFO"])
@pytest.mark.parametrize("origin", ["caller", "callee"])
async def test_the_other_sides_refusal_comes_back_as_it_is(
    bridge: InprocBridge, method: str, origin: str
) -> None:
    call = BridgedCall(bridge)
    content_type, body, *_ = BODIES[method]
    if origin == "callee":
        sender, receiver = PHONE, TRUNK
        call.from_phone(method, content_type, body)
    else:
        sender, receiver = TRUNK, PHONE
        call.from_trunk(method, content_type, body)
    relayed, where = only(bridge.take(), lambda d: is_request(d, method))
    assert where == receiver
    status = REFUSALS[method]
    bridge.feed(respond(relayed, status), receiver)
    sent = bridge.take()
    refused, where = only(sent, lambda d: is_response(d, int(status[:3]), method))
    assert where == sender
    assert start_line(refused) == f"SIP/2.0 {status}"
    assert [d for d, a in sent if a == sender and d.startswith(b"SIP/2.0 2")] == []
    assert len(bridge.ctx.calls) == 1  # a refused request leaves the call as it was


@pytest.mark.parametrize(
    ("extra", "body", "reason"),
    [
        (b"Contact: <sip:201@127.0.0.1:20001>", b"", "the 2xx holds no SDP"),
        (
            b"Contact: <sip:201@127.0.0.1:20001>\r\nContent-Type: text/plain",
            b"hello",
            "the 2xx body is text/plain, not SDP",
        ),
    ],
)
async def test_a_phones_2xx_without_sdp_is_hung_up_and_not_passed_to_the_caller(
    bridge: InprocBridge, extra: bytes, body: bytes, reason: str
) -> None:
    """End to end the caller gets the phone's SDP: a 2xx without it (our INVITE offered no
    100rel, so it had nowhere else to be) would leave the caller with an answer it
    cannot use, a silent call. The phone's leg is ACKed and hung up as a 488, and the call
    goes on to its next step (here: nobody else, the caller is refused)."""
    from structlog.testing import capture_logs

    bridge.feed(trunk_invite(1, LINE, bridge.address), TRUNK)
    invite, where = only(bridge.take(), lambda d: is_request(d, "INVITE"))
    assert where == PHONE
    with capture_logs() as logs:
        bridge.feed(respond(invite, "200 OK", b"ph1", extra, body), PHONE)
    sent = bridge.take()
    assert any(is_request(d, "ACK") and a == PHONE for d, a in sent)
    assert any(is_request(d, "BYE") and a == PHONE for d, a in sent)
    assert not [d for d, a in sent if a == TRUNK and is_response(d, 200, "INVITE")]
    assert [e["reason"] for e in logs if e["event"] == "sip_leg_answer_unusable"] == [reason]
    refused = [d for d, a in sent if a == TRUNK and start_line(d).startswith("SIP/2.0 4")]
    assert refused, [start_line(d) for d, _ in sent]  # the plan ended: the caller is told


async def test_the_callers_number_is_shown_without_its_parameters(bridge: InprocBridge) -> None:
    """An IMS trunk's From carries the calling party's category in the user part
    (`+15551230000;cpc=ordinary`, 3GPP TS 24.229): agents and the API see the number."""
    invite = trunk_invite(1, LINE, bridge.address).replace(
        b"<sip:+15551230000@", b"<sip:+15551230000;cpc=ordinary@", 1
    )
    bridge.feed(invite, TRUNK)
    ringing, where = only(bridge.take(), lambda d: is_request(d, "INVITE"))
    assert where == PHONE
    assert b"cpc=ordinary" in ringing  # the phone's leg still carries the From as it came
    [live] = bridge.ctx.calls.all()
    assert live.caller == "+15551230000"


@pytest.mark.parametrize("origin", ["caller", "callee"])
async def test_an_update_offer_while_a_relayed_reinvite_waits_is_500_and_not_relayed(
    bridge: InprocBridge, origin: str
) -> None:
    """RFC 3311 §5.2: the sender's re-INVITE offer is relayed and waits for the far side's
    answer; an UPDATE with a new offer from the same sender meanwhile gets 500 with a
    Retry-After (it used to be relayed too, two offers crossing on the far side). From the
    far side, an UPDATE offer then crosses our relayed re-INVITE's: 491 (glare)."""
    call = BridgedCall(bridge)
    send, other = (
        (call.from_trunk, call.from_phone)
        if origin == "caller"
        else (call.from_phone, call.from_trunk)
    )
    sender, receiver = (TRUNK, PHONE) if origin == "caller" else (PHONE, TRUNK)
    send("INVITE", "application/sdp", HOLD_CALLER)
    relayed, where = only(bridge.take(), lambda d: is_request(d, "INVITE"))
    assert where == receiver
    send("UPDATE", "application/sdp", HOLD_CALLER)
    sent = bridge.take()
    refused, where = only(sent, lambda d: is_response(d, 500, "UPDATE"))
    assert where == sender
    assert 0 <= int(header(refused, "Retry-After") or "-1") <= 10
    assert not [d for d, _ in sent if is_request(d, "UPDATE")]
    other("UPDATE", "application/sdp", SDP)
    _, where = only(bridge.take(), lambda d: is_response(d, 491, "UPDATE"))
    assert where == receiver
    # The re-INVITE's answer still comes back; the call goes on.
    ct = b"Content-Type: application/sdp"
    bridge.feed(respond(relayed, "200 OK", None, ct, SDP), receiver)
    _, where = only(bridge.take(), lambda d: is_response(d, 200, "INVITE"))
    assert where == sender
    assert len(bridge.ctx.calls) == 1
