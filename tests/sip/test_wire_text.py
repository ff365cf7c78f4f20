"""Bytes that are not UTF-8 in a trunk INVITE (here the From user part): the SIP legs carry
them as they came (escaped in the URI), and everything past the SIP layer (the live call the
API lists and the apps are offered, the event outbox) gets valid text, U+FFFD in their place.
Before, the live call's caller could not be sent as JSON (`GET /api/v1/calls` answered 500).
Digits that are not ASCII ("²": `str.isdigit` takes it, `int()` refuses it) are malformed
like any other wrong character."""

from __future__ import annotations

from sim.phones.inproc import (
    TRUNK,
    InprocBridge,
    is_request,
    one_desk_phone_directory,
    trunk_invite,
)
from starlette.responses import JSONResponse

from bridge.text import ascii_digits, valid_utf8

PHONE = ("127.0.0.1", 20001)
DIRECTORY = one_desk_phone_directory("+15550100")


async def test_a_caller_that_is_not_utf8_is_carried_as_it_came_and_shown_as_valid_text() -> None:
    bridge = InprocBridge(DIRECTORY)
    await bridge.start()
    try:
        assert bridge.register_phone("201", "pw-201", PHONE[1])
        invite = trunk_invite(1, "+15550100", bridge.address).replace(
            b"sip:+15551230000@", b"sip:+1555\xff\xfe@", 1
        )
        bridge.feed(invite, TRUNK)
        legs = [(d, a) for d, a in bridge.take() if is_request(d, "INVITE")]
        assert [a for _, a in legs] == [PHONE]
        # the phone sees the caller's own bytes, escaped as a SIP URI's user part wants
        assert b"<sip:+1555%FF%FE@" in legs[0][0]
        [call] = bridge.ctx.calls.all()
        assert call.caller == "+1555\ufffd\ufffd"
        JSONResponse(call.to_dict())  # encodes as UTF-8 (it raised UnicodeEncodeError)
    finally:
        await bridge.stop()


def test_valid_utf8_leaves_valid_text_alone_and_replaces_what_is_not() -> None:
    assert valid_utf8("+15551230000") == "+15551230000"
    assert valid_utf8("Zoë 😀") == "Zoë 😀"
    assert valid_utf8(b"a\xff\xc3b".decode("utf-8", "surrogateescape")) == "a\ufffd\ufffdb"
    assert valid_utf8(b"\xc3\xa9".decode("utf-8", "surrogateescape")) == "é"
    assert valid_utf8("x\ud800y") == "x?y"  # a surrogate no byte made


async def test_a_via_port_with_a_digit_that_is_not_ascii_gets_400() -> None:
    """`5²5070` as the Via's port (no rport): the transaction layer read it with isdigit and
    int() raised, so the INVITE was dropped unanswered (`sip_message_failed`)."""
    bridge = InprocBridge(DIRECTORY)
    await bridge.start()
    try:
        invite = trunk_invite(1, "+15550100", bridge.address)
        via = invite.split(b"\r\n")[1]
        bad = via.replace(b"127.0.0.1:", "127.0.0.1:5\u00b2".encode(), 1).replace(b";rport", b"")
        bridge.feed(invite.replace(via, bad, 1), TRUNK)
        answers = [data.split(b"\r\n")[0] for data, _ in bridge.take()]
        assert answers == [b"SIP/2.0 400 Bad Request (malformed Via)"]
    finally:
        await bridge.stop()


def test_ascii_digits_takes_only_what_int_takes() -> None:
    for text in ("0", "5060", "007"):
        assert ascii_digits(text) and int(text) >= 0
    for text in ("", "\u00b2", "5\u00b2", "\u0661\u0662", "\u2460", "-1", "+1", " 1", "1.0"):
        assert not ascii_digits(text), text
