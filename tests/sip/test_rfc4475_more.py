"""RFC 4475 messages that ../shared/corpora/rfc4475 does not carry: §3.1.2's rebuilt from the
RFC's text (line ends made CRLF, Content-Length made to match), §3.3's made after the RFC's
descriptions; each with the verdict the RFC gives a robust element, or the choice it leaves
and ours (docs/sip-parser.md, "RFC 4475 verdicts")."""

from __future__ import annotations

import pytest

from bridge.sip.model import SipRequest
from bridge.sip.parser import SipParseError, parse_message, validate_request

SDP = (
    "v=0\no=mhandley 29739 7272939 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n"
    "m=audio 49217 RTP/AVP 0 12\nm=video 3227 RTP/AVP 31\na=rtpmap:31 LPC\n"
)


def message(head: str, body: str = "") -> bytes:
    lines = head.strip("\n").split("\n")
    if body:
        body = body.replace("\n", "\r\n")
        lines.append(f"Content-Length: {len(body)}")
    else:
        lines.append("l: 0")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


LWSRURI = message(
    """INVITE sip:user@example.com; lr SIP/2.0
To: sip:user@example.com;tag=3xfe-9921883-z9f
From: sip:caller@example.net;tag=231413434
Max-Forwards: 5
Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423
CSeq: 2130706432 INVITE
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp""",
    SDP,
)
ESCRURI = message(
    """INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=341518
Max-Forwards: 7
Contact: <sip:caller@host39923.example.net>
Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5
CSeq: 149209342 INVITE
Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw
Content-Type: application/sdp""",
    SDP,
)
REGBADCT = message(
    """REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=998332
Max-Forwards: 70
Call-ID: regbadct.k345asrl3fdbv@10.0.0.1
CSeq: 1 REGISTER
Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw
Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E"""
)
BADASPEC = message(
    """OPTIONS sip:user@example.org SIP/2.0
Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234
Max-Forwards: 70
From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423
To: "Watson, Thomas" < sip:t.watson@example.org >
Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3
Accept: application/sdp
CSeq: 3923239 OPTIONS"""
)
BADDN = message(
    """OPTIONS sip:t.watson@example.org SIP/2.0
Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards:      70
From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43
To:      Watson, Thomas <sip:t.watson@example.org>
Call-ID: baddn.31415@c.example.com
Accept: application/sdp
CSeq:    3923239 OPTIONS"""
)
MISMATCH02 = message(
    """NEWMETHOD sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch02.dj0234sxdfl3
CSeq: 8 INVITE
Contact: <sip:caller@host.example.net>
Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw
Content-Type: application/sdp""",
    SDP,
)


OPTIONS_HEAD = """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 70
Call-ID: rfc4475-3-3@host9.example.com
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234"""
NOVELSC = message(
    OPTIONS_HEAD.replace("sip:user@example.com SIP", "soap.beep://192.0.2.103:3002 SIP")
)
UNKSM2 = message(
    OPTIONS_HEAD.replace("To: sip:user@example.com", "To: isbn:2983792873").replace(
        "From: sip:caller@example.net", "From: <http://www.example.com>"
    )
    + "\nContact: <name:John_Smith>"
)
INVUT = message(
    OPTIONS_HEAD.replace("OPTIONS", "INVITE") + "\nContent-Type: application/unknownformat",
    '<audio>\n <pcmu port="443"/>\n</audio>\n',
)
MULTI01 = message(
    OPTIONS_HEAD.replace("OPTIONS", "INVITE")
    + "\nCall-ID: rfc4475-other@host9.example.com\nTo: sip:other@example.com"
    "\nFrom: sip:caller@example.net;tag=2\nMax-Forwards: 68\nCSeq: 3923424 INVITE"
)
ZEROMF = message(OPTIONS_HEAD.replace("Max-Forwards: 70", "Max-Forwards: 0"))
CPARAM01 = message(
    """REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe
To: sip:watson@example.com
Call-ID: cparam01.70710@saturn.example.com
CSeq: 2 REGISTER
Contact: sip:+19725552222@gw1.example.net;unknownparam"""
)


def verdict(data: bytes) -> tuple[int | None, str]:
    """(status, reason) of the answer, or (None, "accept")."""
    try:
        request = parse_message(data)
    except SipParseError as exc:
        response = exc.response(to_tag="t")
        assert response is not None, "the error must be answerable"
        return response.status, response.reason
    assert isinstance(request, SipRequest)
    problem = validate_request(request)
    if problem is None:
        return None, "accept"
    response = problem.response(to_tag="t")
    assert response is not None
    return response.status, response.reason


@pytest.mark.parametrize(
    ("section", "data", "expected"),
    [
        # "should respond with a 400": LWS breaks the Request-URI; still a request we answer.
        ("3.1.2.8 lwsruri", LWSRURI, (400, "Bad Request (whitespace in the Request-URI)")),
        # Headers are not allowed in a Request-URI (RFC 3261 §19.1.1).
        ("3.1.2.11 escruri", ESCRURI, (400, "Bad Request (headers in the Request-URI)")),
        # Choice: the RFC lets an element infer the <> "since there is no ambiguity in this
        # example"; we do (the Contact is one URI with an escaped header).
        ("3.1.2.13 regbadct", REGBADCT, (None, "accept")),
        # Choice: rejecting is allowed; we do not repair addr-specs.
        ("3.1.2.14 badaspec", BADASPEC, (400, "Bad Request (malformed To)")),
        # "It is reasonable always to reject this kind of error with a 400."
        ("3.1.2.15 baddn", BADDN, (400, "Bad Request (malformed From)")),
        # "should respond with a 501": the unknown method first, not the CSeq mismatch.
        ("3.1.2.18 mismatch02", MISMATCH02, (501, "Not Implemented")),
        # A scheme we will never take in a Request-URI: 416.
        ("3.3.3 novelsc", NOVELSC, (416, "Unsupported URI Scheme")),
        # "Parsers must not fail": unknown schemes in To, From, Contact parse.
        ("3.3.4 unksm2", UNKSM2, (None, "accept")),
        # A body of a type we cannot read: 415 with Accept (checked below).
        ("3.3.6 invut", INVUT, (415, "Unsupported Media Type")),
        # "would respond with a 400 Bad Request".
        ("3.3.8 multi01", MULTI01, (400, "Bad Request (more than one Call-ID)")),
        # Max-Forwards 0 matters to proxies (483); a UAS answers the OPTIONS.
        ("3.3.11 zeromf", ZEROMF, (None, "accept")),
        # An unknown Contact parameter is kept, not refused.
        ("3.3.12 cparam01", CPARAM01, (None, "accept")),
    ],
)
def test_verdict(section: str, data: bytes, expected: tuple[int | None, str]) -> None:
    assert verdict(data) == expected, section


def test_a_question_mark_in_the_user_part_is_not_a_header() -> None:
    """RFC 3261's user part may hold "?" (RFC 4475 intmeth): only one after the host is."""
    data = ESCRURI.replace(
        b"sip:user@example.com?Route=%3Csip:example.com%3E", b"sip:a?b@example.com"
    )
    assert verdict(data) == (None, "accept")


def test_an_unreadable_body_is_answered_with_what_we_accept() -> None:
    request = parse_message(INVUT)
    assert isinstance(request, SipRequest)
    problem = validate_request(request)
    assert problem is not None
    response = problem.response(to_tag="t")
    assert response is not None and response.headers.get("Accept") == "application/sdp"
    # multipart bodies (SDP beside ISUP) go on: the service takes the SDP part
    # (tests/sip/test_multipart_bodies.py).
    multipart = INVUT.replace(b"application/unknownformat", b"multipart/mixed;boundary=x")
    assert verdict(multipart) == (None, "accept")
