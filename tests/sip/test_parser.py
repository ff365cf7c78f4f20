"""Message parsing (bridge.sip.parser): datagrams, streams, §8.2 validation, and properties."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.sip.grammar import (
    SipSyntaxError,
    parse_contacts,
    parse_cseq,
    parse_name_addr,
    parse_uri,
    parse_via,
)
from bridge.sip.model import Headers, SipRequest, SipResponse
from bridge.sip.parser import (
    ALLOWED_METHODS,
    MAX_HEADER_BYTES,
    SUPPORTED_OPTIONS,
    SipParseError,
    StreamFramer,
    parse_message,
    validate_request,
    validate_response,
)

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpora" / "rfc4475"
SDP = (
    b"v=0\r\no=- 2890844526 2890844526 IN IP4 203.0.113.10\r\ns=-\r\n"
    b"c=IN IP4 203.0.113.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\n"
)


def invite(body: bytes = SDP, *, extra: str = "", method: str = "INVITE") -> bytes:
    head = (
        f"{method} sip:+15550100@bridge.example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
        "Max-Forwards: 70\r\n"
        "To: <sip:+15550100@bridge.example.com>\r\n"
        'From: "Alice" <sip:+15551234567@carrier.example.net>;tag=1928301774\r\n'
        "Call-ID: a84b4c76e66710@carrier.example.net\r\n"
        f"CSeq: 314159 {method}\r\n"
        "Contact: <sip:+15551234567@203.0.113.10:5060>\r\n"
        f"{extra}"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("utf-8", "surrogateescape") + body


def request_with(extra: str = "", method: str = "INVITE", body: bytes = SDP) -> SipRequest:
    message = parse_message(invite(body, extra=extra, method=method))
    assert isinstance(message, SipRequest)
    return message


def error_of(data: bytes) -> SipParseError:
    with pytest.raises(SipParseError) as caught:
        parse_message(data)
    return caught.value


# -- datagrams -----------------------------------------------------------------------------
def test_typical_invite() -> None:
    message = parse_message(invite())
    assert isinstance(message, SipRequest)
    assert (message.method, message.uri, message.version) == (
        "INVITE",
        "sip:+15550100@bridge.example.com",
        "SIP/2.0",
    )
    assert message.body == SDP
    assert message.headers.get("call-id") == "a84b4c76e66710@carrier.example.net"
    assert validate_request(message) is None
    assert message.to_bytes() == invite()  # nothing rewritten on the way through


def test_compact_forms_and_lws_around_the_colon() -> None:
    data = (
        b"OPTIONS sip:a@b SIP/2.0\r\nv : SIP/2.0/UDP h;branch=z9hG4bK1\r\nf:<sip:c@d>;tag=1\r\n"
        b"t\t: <sip:a@b>\r\ni:x@y\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n"
    )
    message = parse_message(data)
    assert [name for name, _ in message.headers] == [
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Content-Length",
    ]
    assert message.headers.get("To") == "<sip:a@b>"


def test_folded_lines_are_unfolded() -> None:
    data = invite(extra="Subject: one\r\n  two\r\n\tthree\r\nX-Empty:\r\n after\r\n")
    message = parse_message(data)
    assert message.headers.get("Subject") == "one two three"
    assert message.headers.get("X-Empty") == "after"


def test_leading_crlf_is_ignored_and_lf_only_messages_are_accepted() -> None:
    assert isinstance(parse_message(b"\r\n\r\n" + invite()), SipRequest)
    body = b"v=0\no=- 1 1 IN IP4 192.0.2.1\n"
    lf = invite(body).replace(b"\r\n", b"\n")
    message = parse_message(lf)
    assert isinstance(message, SipRequest) and message.body == body
    assert message.headers.get("Max-Forwards") == "70"


@pytest.mark.parametrize(
    ("data", "status", "fault"),
    [
        (b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\nBad Line\r\n\r\n", 400, "malformed header line"),
        (b"INVITE sip:a@b SIP/2.0\r\n folded first\r\n\r\n", 400, "continuation line"),
        (b"INVITE sip:a@b SIP/2.0\r\nX: a\nY: b\r\n\r\n", 400, "bare CR or LF"),
        (b"INVITE sip:a@b SIP/2.0\r\nX: a\rY: b\r\n\r\n", 400, "bare CR or LF"),
        (b"INVITE sip:a@b HTTP/1.1\r\n\r\n", 400, "malformed SIP version"),
        (b"INVITE sip:a@b\r\n\r\n", 400, "malformed request line"),
        (b"INV(ITE sip:a@b SIP/2.0\r\n\r\n", 400, "malformed method"),
        (b"INVITE a@b SIP/2.0\r\n\r\n", 400, "malformed Request-URI"),
        (b"INVITE sip:a@b SIP/2.0\r\nCSeq: 1 INVITE\r\nl: 5\r\n", 400, "no empty line"),
        (b"INVITE sip:a@b SIP/2.0\r\nl: five\r\n\r\n", 400, "invalid Content-Length"),
        (b"INVITE sip:a@b SIP/2.0\r\nl: 1e3\r\n\r\n", 400, "invalid Content-Length"),
        (b"INVITE sip:a@b SIP/2.0\r\nCSeq: x INVITE\r\n\r\n", 400, "malformed CSeq"),
    ],
)
def test_request_parse_errors(data: bytes, status: int, fault: str) -> None:
    error = error_of(data)
    assert error.status == status and fault in error.reason
    assert error.partial is None  # no Via/From/To/Call-ID/CSeq: nothing to answer with


def test_partial_request_is_answerable() -> None:
    data = invite().replace(b"Content-Length: ", b"Content-Length: -")
    error = error_of(data)
    assert (error.status, error.reason) == (400, "Bad Request (negative Content-Length)")
    assert error.partial is not None and error.partial.method == "INVITE"
    response = error.response(to_tag="abc")
    assert response is not None
    back = parse_message(response.to_bytes())
    assert isinstance(back, SipResponse) and back.status == 400
    assert parse_name_addr(back.headers.get("To") or "").tag == "abc"
    assert back.headers.get("Via") == "SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK776asdhds;rport"


def test_an_ack_is_never_answered() -> None:
    data = invite(b"", method="ACK").replace(b"CSeq: 314159 ACK", b"CSeq: 99999999999 ACK")
    error = error_of(data)
    assert error.status is None and error.response() is None


def test_responses() -> None:
    base = (
        b"Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n"
        b"Call-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    ok = parse_message(b"SIP/2.0 180 Ringing\r\n" + base)
    assert isinstance(ok, SipResponse) and (ok.status, ok.reason) == (180, "Ringing")
    assert validate_response(ok) is None
    bare = parse_message(b"SIP/2.0 200\r\n" + base)  # no SP, no reason: taken liberally
    assert isinstance(bare, SipResponse) and (bare.status, bare.reason) == (200, "")
    for start in (b"SIP/2.0 099 Low", b"SIP/2.0 700 High", b"SIP/2.0 2000 OK", b"SIP/3.0 200 OK"):
        error = error_of(start + b"\r\n" + base)
        assert error.status is None and error.response() is None
    missing = error_of(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert missing.status is None and "missing Via" in missing.reason
    broken_to = parse_message(b"SIP/2.0 200 OK\r\n" + base.replace(b"To: <sip:c@d>", b'To: "x'))
    assert isinstance(broken_to, SipResponse)
    dropped = validate_response(broken_to)
    assert dropped is not None and dropped.status is None and "To" in dropped.reason


def test_empty_datagrams_are_dropped() -> None:
    for data in (b"", b"\r\n", b"\r\n\r\n"):
        error = error_of(data)
        assert error.status is None


def test_header_limit_on_datagrams() -> None:
    data = b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n"
    assert error_of(data).status is None


def test_non_utf8_header_bytes_survive_a_round_trip() -> None:
    data = invite(extra="X-Raw: caf\udce9 \udcff\udcfe\r\n")
    assert b"caf\xe9 \xff\xfe" in data
    message = parse_message(data)
    assert message.headers.get("X-Raw") == "caf\udce9 \udcff\udcfe"
    assert message.to_bytes() == data


def test_identical_content_length_repeated_is_accepted() -> None:
    data = invite().replace(b"Content-Type", f"l: {len(SDP)}\r\nContent-Type".encode())
    assert parse_message(data).body == SDP


# -- streams -------------------------------------------------------------------------------
def same(a: SipRequest | SipResponse, b: SipRequest | SipResponse) -> bool:
    return (a.start_line, a.headers, a.body) == (b.start_line, b.headers, b.body)


def test_stream_split_at_every_byte_boundary() -> None:
    data = invite()
    want = parse_message(data)
    for cut in range(len(data) + 1):
        framer = StreamFramer()
        items = framer.feed(data[:cut]) + framer.feed(data[cut:])
        assert len(items) == 1, cut
        item = items[0]
        assert not isinstance(item, SipParseError) and same(item, want), cut
        assert framer.buffered == 0 and not framer.broken


def test_stream_fed_byte_by_byte() -> None:
    data = invite() * 2
    framer = StreamFramer()
    items = [item for byte in range(len(data)) for item in framer.feed(data[byte : byte + 1])]
    assert len(items) == 2 and all(isinstance(item, SipRequest) for item in items)


def test_several_messages_and_keepalives_in_one_feed() -> None:
    options = invite(b"", method="OPTIONS")
    framer = StreamFramer()
    items = framer.feed(b"\r\n\r\n" + invite() + b"\r\n\r\n" + options + b"\r\n" + invite())
    assert [item.start_line.split()[0] for item in items if isinstance(item, SipRequest)] == [
        "INVITE",
        "OPTIONS",
        "INVITE",
    ]
    assert len(items) == 3 and (framer.pings, framer.pongs) == (2, 1)


def test_keepalives() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [] and framer.pings == 1
    assert framer.feed(b"\r\n") == [] and framer.pongs == 1
    assert framer.feed(b"\r\n\r") == [] and framer.pings == 1  # a ping still arriving
    assert framer.feed(b"\n") == [] and framer.pings == 2
    assert not framer.broken and framer.buffered == 0


def test_body_waits_for_the_rest() -> None:
    data = invite()
    framer = StreamFramer()
    assert framer.feed(data[:-10]) == [] and framer.buffered == len(data) - 10
    items = framer.feed(data[-10:])
    assert len(items) == 1 and isinstance(items[0], SipRequest) and items[0].body == SDP


def test_oversize_header_breaks_the_stream() -> None:
    framer = StreamFramer(max_header_bytes=1024)
    assert framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"a" * 900) == []
    items = framer.feed(b"a" * 200)
    assert len(items) == 1 and isinstance(items[0], SipParseError)
    assert items[0].status == 513 and framer.broken and framer.buffered == 0
    assert framer.feed(invite()) == []


def test_default_header_limit_is_64k() -> None:
    framer = StreamFramer()
    assert framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"a" * (MAX_HEADER_BYTES - 40)) == []
    assert not framer.broken
    items = framer.feed(b"a" * 100)
    assert framer.broken and isinstance(items[0], SipParseError)


def test_oversize_body_breaks_the_stream_without_waiting() -> None:
    framer = StreamFramer(max_body_bytes=1000)
    items = framer.feed(invite(b"").replace(b"Content-Length: 0", b"Content-Length: 5000"))
    assert len(items) == 1 and framer.broken
    error = items[0]
    assert isinstance(error, SipParseError) and error.status == 513
    assert error.partial is not None  # the 513 can be sent before closing


@pytest.mark.parametrize(
    ("change", "fault"),
    [
        ((b"Content-Length: 0\r\n", b""), "missing Content-Length"),
        ((b"Content-Length: 0", b"Content-Length: -1"), "negative Content-Length"),
        ((b"Content-Length: 0", b"Content-Length: zero"), "invalid Content-Length"),
        ((b"Content-Length: 0", b"Content-Length: 0\r\nl: 3"), "conflicting"),
        ((b" SIP/2.0\r\n", b"\r\n"), "malformed request line"),
    ],
)
def test_framing_errors_break_the_stream(change: tuple[bytes, bytes], fault: str) -> None:
    data = invite(b"", method="OPTIONS").replace(*change)
    framer = StreamFramer()
    items = framer.feed(data + invite())
    assert len(items) == 1 and framer.broken
    assert isinstance(items[0], SipParseError) and fault in items[0].reason


def test_a_malformed_but_framed_message_keeps_the_stream() -> None:
    bad = invite().replace(b"CSeq: 314159", b"CSeq: 99999999999")
    framer = StreamFramer()
    items = framer.feed(bad + invite())
    assert len(items) == 2 and not framer.broken
    assert isinstance(items[0], SipParseError) and items[0].status == 400
    assert isinstance(items[1], SipRequest)


# -- §8.2 validation -----------------------------------------------------------------------
def status_of(message: SipRequest) -> tuple[int | None, str] | None:
    problem = validate_request(message)
    return None if problem is None else (problem.status, problem.reason)


def test_validation_order_and_answers() -> None:
    assert status_of(request_with("Max-Forwards: 300\r\n")) == (
        400,
        "Bad Request (more than one Max-Forwards)",
    )
    one = request_with()
    one.headers.set("Max-Forwards", "300")
    assert status_of(one) == (400, "Bad Request (Max-Forwards out of range)")
    one.headers.set("Max-Forwards", "0")
    assert status_of(one) is None  # a UAS takes Max-Forwards 0
    assert status_of(request_with("From: <sip:x@y>\r\n")) == (
        400,
        "Bad Request (more than one From)",
    )
    assert status_of(request_with("Contact: <sip:a@b>;;\r\n")) == (
        400,
        "Bad Request (malformed Contact)",
    )
    assert status_of(request_with("Expires: soon\r\n")) == (400, "Bad Request (malformed Expires)")
    assert status_of(request_with("Expires: 99999999999999\r\n")) is None  # overlarge: default
    message = request_with()
    message.headers.set("Call-ID", "a b")
    assert status_of(message) == (400, "Bad Request (malformed Call-ID)")


def test_methods_and_allow() -> None:
    allow = ", ".join(ALLOWED_METHODS)
    for method in ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER"):
        assert method in ALLOWED_METHODS
    problem = validate_request(request_with(method="SUBSCRIBE", body=b""))
    assert problem is not None and (problem.status, dict(problem.headers)) == (
        405,
        {"Allow": allow},
    )
    problem = validate_request(request_with(method="FROB", body=b""))
    assert problem is not None and (problem.status, problem.reason) == (501, "Not Implemented")
    assert dict(problem.headers) == {"Allow": allow}
    assert validate_request(request_with(method="invite", body=b"")) is not None  # case matters


def test_request_uri_schemes() -> None:
    tel = request_with()
    tel.uri = "tel:+15550100"
    assert status_of(tel) is None
    mailto = request_with()
    mailto.uri = "mailto:a@b"
    assert status_of(mailto) == (416, "Unsupported URI Scheme")
    broken = request_with()
    broken.uri = "sip:a@b:99999"
    assert status_of(broken) == (400, "Bad Request (malformed Request-URI)")


def test_a_compressed_body_is_415_with_accept_encoding() -> None:
    gzip = validate_request(request_with("Content-Encoding: gzip\r\n"))
    assert gzip is not None and gzip.status == 415
    assert dict(gzip.headers)["Accept-Encoding"] == "identity"
    assert status_of(request_with("Content-Encoding: identity\r\n")) is None
    assert status_of(request_with("e: GZIP\r\n")) == (415, "Unsupported Media Type")


def test_require() -> None:
    supported = ", ".join(sorted(SUPPORTED_OPTIONS))
    assert status_of(request_with(f"Require: {supported}\r\n")) is None
    assert "100rel" in SUPPORTED_OPTIONS  # (RFC 3262: tests/sip/test_reliable_provisionals.py)
    # RFC 3891: no call is replaced here, so an INVITE that requires it must not be taken
    problem = validate_request(
        request_with("Require: replaces\r\nReplaces: a@b;to-tag=1;from-tag=2\r\n")
    )
    assert problem is not None and problem.status == 420
    assert dict(problem.headers) == {"Unsupported": "replaces"}
    problem = validate_request(
        request_with("Require: Timer, 100REL, precondition\r\nRequire: foo\r\n")
    )
    assert problem is not None and problem.status == 420
    # tags compare any case; only what we do not support is named
    assert dict(problem.headers) == {"Unsupported": "precondition, foo"}
    assert status_of(request_with("Proxy-Require: foo\r\n")) is None  # for proxies only
    cancel = request_with("Require: foo\r\n", method="CANCEL", body=b"")
    assert status_of(cancel) is None  # never 420 on CANCEL (nor ACK)
    assert status_of(request_with("Require: a b\r\n")) == (400, "Bad Request (malformed Require)")


@pytest.mark.parametrize(
    ("accept", "ok"),
    [
        ("application/sdp", True),
        ("text/plain, Application/SDP;level=1", True),
        ("application/*", True),
        ("*/*;q=0.1", True),
        ("text/nobodyKnowsThis", False),
        ("application/sdp;q=0", False),
        ("application/sdp;q=0.000, text/plain", False),
        ("", False),  # an empty Accept means nothing is acceptable (RFC 3261 §20.1)
    ],
)
def test_accept_on_invite(accept: str, ok: bool) -> None:
    problem = validate_request(request_with(f"Accept: {accept}\r\n"))
    if ok:
        assert problem is None
    else:
        assert problem is not None and problem.status == 406
        assert dict(problem.headers)["Warning"].startswith('399 bridge "')
    # Only an INVITE needs SDP back.
    assert validate_request(request_with(f"Accept: {accept}\r\n", method="OPTIONS")) is None


def test_ack_problems_are_dropped_not_answered() -> None:
    ack = request_with("Require: foo\r\n", method="ACK", body=b"")
    assert validate_request(ack) is None
    ack.headers.remove("From")
    problem = validate_request(ack)
    assert problem is not None and problem.status is None and problem.response() is None


# -- properties ----------------------------------------------------------------------------
TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=12,
)
VALUE = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.just("\t"), max_size=40).map(
    lambda text: text.strip(" \t")
)
RESERVED = {"content-length", "l", "cseq", "via", "v", "from", "f", "to", "t", "call-id", "i"}
HEADER_NAME = TOKEN.filter(lambda name: name.lower() not in RESERVED)
CORE = st.fixed_dictionaries(
    {
        "branch": TOKEN,
        "tag": TOKEN,
        "call_id": TOKEN,
        "cseq": st.integers(0, 2**32 - 1),
    }
)


def core_headers(core: dict[str, object], method: str) -> list[tuple[str, str]]:
    return [
        ("Via", f"SIP/2.0/UDP host.example.com;branch={core['branch']}"),
        ("From", f"<sip:a@example.com>;tag={core['tag']}"),
        ("To", "<sip:b@example.com>"),
        ("Call-ID", str(core["call_id"])),
        ("CSeq", f"{core['cseq']} {method}"),
    ]


@settings(max_examples=300, deadline=None)
@given(
    method=TOKEN,
    uri=st.builds(
        lambda user, host: f"sip:{user}@{host}",
        TOKEN,
        TOKEN.map(lambda t: "h" + t.strip(".!%*_+`'~") or "h"),
    ),
    core=CORE,
    extra=st.lists(st.tuples(HEADER_NAME, VALUE), max_size=8),
    body=st.binary(max_size=300),
)
def test_requests_round_trip(
    method: str, uri: str, core: dict[str, object], extra: list[tuple[str, str]], body: bytes
) -> None:
    original = SipRequest(method, uri, Headers(core_headers(core, method) + extra), body)
    back = parse_message(original.to_bytes())
    assert isinstance(back, SipRequest)
    assert back.start_line == original.start_line
    assert back.body == body
    assert back.headers.get("Content-Length") == str(len(body))
    back.headers.remove("Content-Length")
    assert back.headers == original.headers


@settings(max_examples=300, deadline=None)
@given(
    status=st.integers(100, 699),
    reason=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30),
    core=CORE,
    method=TOKEN,
    extra=st.lists(st.tuples(HEADER_NAME, VALUE), max_size=8),
    body=st.binary(max_size=300),
)
def test_responses_round_trip(
    status: int,
    reason: str,
    core: dict[str, object],
    method: str,
    extra: list[tuple[str, str]],
    body: bytes,
) -> None:
    original = SipResponse(status, reason, Headers(core_headers(core, method) + extra), body)
    back = parse_message(original.to_bytes())
    assert isinstance(back, SipResponse)
    assert back.start_line == original.start_line
    assert (back.status, back.reason, back.body) == (status, reason, body)
    back.headers.remove("Content-Length")
    assert back.headers == original.headers


CORPUS_MESSAGES = [path.read_bytes() for path in sorted(CORPUS.glob("*.dat"))] + [invite()]
INTERESTING = [
    b"\r\n",
    b"\r\n ",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b'"',
    b"\\",
    b"%",
    b"%0",
    b"\x00",
    b"\xff",
    b"@",
    b"=",
    b"SIP/2.0",
    b"9" * 12,
    b"-1",
    b"*",
    b"\r\n\r\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS_MESSAGES)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        if kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(INTERESTING) | st.binary(max_size=4))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
    return bytes(data)


def check_error(error: SipParseError) -> None:
    assert error.status in (None, 400, 505, 513)
    response = error.response(to_tag="x")
    assert (response is None) == (error.status is None or error.partial is None)
    if response is not None:
        assert response.to_bytes().startswith(f"SIP/2.0 {error.status} ".encode())


def exercise(data: bytes) -> None:
    """Everything a peer's bytes reach must end in a value or a SipParseError / SipSyntaxError,
    and whatever is accepted must re-serialize to a message that parses the same."""
    try:
        message = parse_message(data)
    except SipParseError as error:
        check_error(error)
        return
    again = parse_message(message.to_bytes())
    assert (again.start_line, again.body) == (message.start_line, message.body)
    assert [h for h in again.headers if h[0] != "Content-Length"] == [
        h for h in message.headers if h[0] != "Content-Length"
    ]
    if isinstance(message, SipRequest):
        problem = validate_request(message)
        if problem is not None:
            # (415: a body type that is well formed and not ours, "application/sdx")
            assert problem.status in (None, 400, 405, 406, 415, 416, 420, 501)
            assert problem.partial is message or problem.status is None
        else:
            # Validated: the views the registrar and B2BUA use must now parse.
            assert parse_via(message.headers.values("Via")[0]).transport
            assert parse_name_addr(message.headers.get("From") or "").uri.scheme
            assert parse_contacts(message.headers) is not None
            assert parse_uri(message.uri).scheme in ("sip", "sips", "tel")
    else:
        problem = validate_response(message)
        assert problem is None or problem.status is None
    for _, value in message.headers:
        for parser in (parse_via, parse_name_addr, parse_uri, parse_cseq):
            with contextlib.suppress(SipSyntaxError):
                parser(value)


def exercise_stream(data: bytes, cuts: list[int]) -> None:
    framer = StreamFramer(max_header_bytes=2048, max_body_bytes=4096)
    last = 0
    for cut in [*sorted(cuts), len(data)]:
        for item in framer.feed(data[last:cut]):
            if isinstance(item, SipParseError):
                check_error(item)
            else:
                assert isinstance(item, SipRequest | SipResponse)
                assert len(item.body) == int(item.headers.get("Content-Length") or "-1")
        last = cut
    assert framer.buffered <= (0 if framer.broken else len(data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=5))
def test_random_bytes_never_crash(data: bytes, cuts: list[int]) -> None:
    exercise(data)
    exercise_stream(data, [cut for cut in cuts if cut <= len(data)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated(), cuts=st.lists(st.integers(0, 4000), max_size=5))
def test_mutated_corpus_never_crashes(data: bytes, cuts: list[int]) -> None:
    exercise(data)
    exercise_stream(data + data, [cut for cut in cuts if cut <= 2 * len(data)])


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (b"application/sdx", 415),  # well formed, not ours: 415 naming what we take
        (b"\x00application/sdp", 400),  # not a media type at all: the header is bad
        (b"application", 400),
        (b"application/sdp;charset=x", None),
        (b"multipart/mixed;boundary=b", None),
    ],
)
def test_a_body_type_that_is_not_a_type_is_a_bad_request(
    content_type: bytes, status: int | None
) -> None:
    data = invite().replace(b"Content-Type: application/sdp", b"Content-Type: " + content_type)
    request = parse_message(data)
    assert isinstance(request, SipRequest)
    problem = validate_request(request)
    assert (problem.status if problem is not None else None) == status
    if status == 415:
        assert problem is not None and ("Accept", "application/sdp") in problem.headers
