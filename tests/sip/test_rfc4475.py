"""RFC 4475 torture messages: one verdict per file, read byte-exact from the shared corpus.

The verdict table below is ours; it is checked against the corpus's EXPECTED.md (same set of
files, compatible verdict class, same status where EXPECTED.md names one in bold), so a new
file or a changed verdict cannot slip by.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.sip.grammar import (
    parse_contacts,
    parse_cseq,
    parse_max_forwards,
    parse_name_addr,
    parse_uri,
    parse_via,
    top_via,
)
from bridge.sip.model import SipRequest, SipResponse
from bridge.sip.parser import (
    ALLOWED_METHODS,
    SipParseError,
    StreamFramer,
    parse_message,
    validate_request,
    validate_response,
)

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpora" / "rfc4475"
ROW_RE = re.compile(r"^\| (?P<file>[\w-]+\.dat) \|[^|]*\|[^|]*\| (?P<verdict>[^|]*)\|", re.M)


@dataclass(frozen=True)
class Verdict:
    """stage: 'accept' (parses; a request also passes validate_request), 'parse' (parse_message
    raises), 'validate' (parses, validate_request refuses). status: what is answered (None:
    dropped)."""

    stage: str
    status: int | None = None


ACCEPT = Verdict("accept")
VERDICTS: dict[str, Verdict] = {
    # 3.1.1 valid messages
    "wsinv": ACCEPT,
    "intmeth": Verdict("validate", 501),  # unknown method: an endpoint answers 501 + Allow
    "esc01": ACCEPT,
    "escnull": ACCEPT,
    "esc02": Verdict("validate", 501),  # RE%47IST%45R is not REGISTER
    "lwsdisp": ACCEPT,
    "longreq": ACCEPT,
    "dblreq": ACCEPT,
    "mpart01": Verdict("validate", 405),  # parses; MESSAGE is not a method we handle
    "noreason": ACCEPT,
    # 3.1.2 invalid messages
    "badinv01": Verdict("validate", 400),  # empty Via parameters: the Via syntax check
    "clerr": Verdict("parse", 400),
    "ncl": Verdict("parse", 400),
    "scalar02": Verdict("parse", 400),
    "scalarlg": Verdict("parse", None),
    "quotbal": Verdict("validate", 400),  # the To syntax check
    "ltgtruri": Verdict("parse", 400),
    "lwsstart": Verdict("parse", 400),
    "trws": Verdict("parse", 400),
    "baddate": ACCEPT,  # RFC 4475 advises against rejecting; Date means nothing to us
    "badvers": Verdict("parse", 505),
    "mismatch01": Verdict("parse", 400),
    "bigcode": Verdict("parse", None),
    # 3.3 application-layer semantics
    "insuf": Verdict("validate", 400),
    "unkscm": Verdict("validate", 416),
    "bext01": Verdict("validate", 420),
    "regaut01": ACCEPT,  # the registrar (not the parser) challenges the unknown scheme
    "mcl01": Verdict("parse", 400),
    "bcast": ACCEPT,
    "cparam02": ACCEPT,
    "regescrt": ACCEPT,
    "sdp01": Verdict("validate", 406),
    # 3.4 backward compatibility
    "inv2543": ACCEPT,
}
# REJECT rows where RFC 4475 also allows accepting, and we do (docs/sip-parser.md).
ACCEPTED_REJECTS = {"baddate"}


def _expected_rows() -> dict[str, str]:
    text = (CORPUS / "EXPECTED.md").read_text(encoding="utf-8")
    return {m["file"].removesuffix(".dat"): m["verdict"].strip() for m in ROW_RE.finditer(text)}


ROWS = _expected_rows()
FILES = sorted(path.stem for path in CORPUS.glob("*.dat"))


def load(name: str) -> bytes:
    return (CORPUS / f"{name}.dat").read_bytes()


def parsed(name: str) -> SipRequest | SipResponse:
    message = parse_message(load(name))
    assert isinstance(message, SipRequest | SipResponse)
    return message


def request(name: str) -> SipRequest:
    message = parsed(name)
    assert isinstance(message, SipRequest)
    return message


# -- the corpus and the verdict table agree ------------------------------------------------
def test_corpus_is_there_and_complete() -> None:
    assert len(FILES) >= 30, f"RFC 4475 corpus missing or truncated at {CORPUS}"
    assert set(FILES) == set(ROWS), "a .dat file and EXPECTED.md disagree"
    assert set(VERDICTS) == set(FILES), "every corpus file needs a verdict here"


@pytest.mark.parametrize("name", FILES)
def test_verdict_class_matches_expected_md(name: str) -> None:
    row = ROWS[name]
    verdict = VERDICTS[name]
    found = re.match(r"ACCEPT|REJECT|SEMANTIC", row)
    assert found is not None, f"EXPECTED.md verdict not understood: {row!r}"
    word = found[0]
    if word == "ACCEPT":
        assert verdict.stage in ("accept", "validate"), "must at least parse"
    elif word == "REJECT":
        assert verdict.stage != "accept" or name in ACCEPTED_REJECTS
    else:
        assert word == "SEMANTIC" and verdict.stage == "validate"
    named = {int(code) for code in re.findall(r"\*\*(\d{3})\*\*", row)}
    if named and word != "ACCEPT":
        assert verdict.status in named, f"EXPECTED.md names {named}"


# -- one verdict per file ------------------------------------------------------------------
@pytest.mark.parametrize("name", FILES)
def test_verdict(name: str) -> None:
    data = load(name)
    verdict = VERDICTS[name]
    if verdict.stage == "parse":
        with pytest.raises(SipParseError) as caught:
            parse_message(data)
        error = caught.value
        assert error.status == verdict.status
        if verdict.status is None:
            assert error.partial is None and error.response() is None
            return
        assert error.partial is not None, "the error must be answerable"
    else:
        message = parse_message(data)
        if isinstance(message, SipResponse):
            assert verdict.stage == "accept"
            assert validate_response(message) is None
            return
        problem = validate_request(message)
        if verdict.stage == "accept":
            assert problem is None, problem
            return
        assert problem is not None, "validate_request let it through"
        error = problem
        assert error.status == verdict.status
        assert error.partial is message
    response = error.response(to_tag="t1")
    assert response is not None
    wire = response.to_bytes()
    assert wire.startswith(f"SIP/2.0 {verdict.status} {error.reason}\r\n".encode())
    source = error.partial
    assert source is not None
    assert response.headers.get_all("Via") == source.headers.get_all("Via")
    if name not in ECHOES_BAD_FIELDS:
        # The error response is a real message: it parses back.
        back = parse_message(wire)
        assert isinstance(back, SipResponse) and back.status == verdict.status
        assert back.headers.get("Call-ID") == source.headers.get("Call-ID")
    if verdict.status == 400:
        assert error.reason.startswith("Bad Request (") and error.reason.endswith(")")


# The answer copies From/To/Call-ID/CSeq as received (RFC 3261 §8.2.6.2), so when those are
# what is wrong (absent, overlarge) the answer carries the same fault; it is still sent, the
# client matches it by its Via branch.
ECHOES_BAD_FIELDS = {"insuf", "scalar02"}


# -- the details EXPECTED.md names ---------------------------------------------------------
def test_wsinv_unfolds_and_keeps_odd_values() -> None:
    message = request("wsinv")
    headers = message.headers
    assert headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert headers.get("Subject") == ""  # `s :` with an empty value
    assert parse_max_forwards(headers.get("Max-Forwards") or "") == 68
    assert parse_cseq(headers.get("CSeq") or "") == (9, "INVITE")
    to = parse_name_addr(headers.get("To") or "")
    assert to.tag == "1918181833n" and to.uri.host == "chair-dnrc.example.com"
    sender = parse_name_addr(headers.get("From") or "")
    assert sender.display == 'J Rosenberg \\"' and sender.tag == "98asjd8"
    vias = [parse_via(value) for value in headers.values("Via")]
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    contacts = parse_contacts(headers)
    assert contacts != "*"
    assert contacts[0].display == 'Quoted string ""'
    assert dict(contacts[0].params) == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    route = parse_name_addr(headers.get("Route") or "")
    assert "lr" in route.uri.params and route.uri.params["unknownwith"] == "value"
    assert len(message.body) == 150


def test_intmeth_keeps_the_method_and_gets_501_with_allow() -> None:
    message = request("intmeth")
    assert message.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = parse_uri(message.uri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert str(uri) == message.uri
    to = parse_name_addr(message.headers.get("To") or "")
    assert to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    sender = parse_name_addr(message.headers.get("From") or "")
    assert sender.display == "token1~` token2'+_ token3*%!.-"
    assert sender.tag == "_token~1'+`*%!-."
    assert top_via(message.headers).branch == "z9hG4bK-.!%66*_+`'~"
    problem = validate_request(message)
    assert problem is not None and problem.status == 501
    assert dict(problem.headers)["Allow"] == ", ".join(ALLOWED_METHODS)
    response = problem.response()
    assert response is not None and response.headers.get("Allow") == ", ".join(ALLOWED_METHODS)


def test_esc01_unescapes_once_and_only_where_allowed() -> None:
    message = request("esc01")
    uri = parse_uri(message.uri)
    assert uri.user == "sips:user@example.com" and uri.host == "example.net"
    assert str(uri) == message.uri  # re-escaped exactly
    assert parse_name_addr(message.headers.get("To") or "").uri.user == "user"
    assert parse_name_addr(message.headers.get("From") or "").uri.user == "I have spaces"
    contacts = parse_contacts(message.headers)
    assert contacts != "*"
    contact = contacts[0].uri
    assert contact.user == "caller"
    assert "lr" in contact.params
    assert contact.params["name"] == "value%41"  # not valueA: no recursive unescaping
    assert str(contact) == "sip:caller@host5.example.net;lr;name=value%2541"


def test_escnull_has_two_distinct_contacts_and_a_whole_aor() -> None:
    message = request("escnull")
    contacts = parse_contacts(message.headers)
    assert contacts != "*"
    assert [c.uri.user for c in contacts] == ["\x00", "\x00\x00"]
    assert len({str(c.uri) for c in contacts}) == 2
    to = parse_name_addr(message.headers.get("To") or "")
    assert to.uri.user == "null-\x00-null"  # %00 does not cut the user short
    assert str(to.uri) == "sip:null-%00-null@example.com"


def test_esc02_is_not_register_and_has_two_contacts() -> None:
    message = request("esc02")
    assert message.method == "RE%47IST%45R" and message.method != "REGISTER"
    contacts = parse_contacts(message.headers)
    assert contacts != "*"
    assert [c.uri.host for c in contacts] == ["host1.example.com", "host3.example.com"]
    assert message.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert parse_name_addr(message.headers.get("To") or "").display == "%Z%45"
    problem = validate_request(message)
    assert problem is not None and problem.status == 501


def test_lwsdisp_display_name_without_lws() -> None:
    sender = parse_name_addr(request("lwsdisp").headers.get("From") or "")
    assert sender.display == "caller" and sender.uri.user == "caller" and sender.tag == "323"


def test_longreq_keeps_every_long_field() -> None:
    message = request("longreq")
    headers = message.headers
    raw = load("longreq").decode()
    to = parse_name_addr(headers.get("To") or "")
    assert to.display is not None and to.display.startswith("I have a user name of extreme")
    assert to.uri.port == 6000
    found = re.search(r";(verylong\w+ParameterNameWithNoValue)>", raw)
    assert found is not None
    long_param = found[1]
    assert long_param in to.uri.params and to.uri.params[long_param] is None
    sender = parse_name_addr(headers.get("From") or "")
    assert sender.tag is not None and len(sender.tag) == 155 and f";tag={sender.tag};" in raw
    unknown_param = re.search(r";(unknownheaderparam\w+)=(\w+);", raw)
    assert unknown_param is not None
    assert sender.params[unknown_param[1]] == unknown_param[2]
    call_id = headers.get("Call-ID") or ""
    assert call_id.startswith("longreq.one") and call_id.endswith("longcallid")
    assert f"Call-ID: {call_id}\r\n" in raw
    vias = headers.values("Via")
    assert len(vias) == 34
    branch = parse_via(vias[-1]).branch
    assert branch is not None and branch.endswith("branchvalue") and f"branch={branch}" in raw
    assert str(parse_via(vias[-1])) == vias[-1]
    unknown = [name for name, _ in headers if name.startswith("Unknown-LongLong")]
    assert len(unknown) == 1 and (headers.get(unknown[0]) or "").startswith("unknown-longlong")
    assert len(message.body) == 150


def test_dblreq_ignores_the_trailing_invite() -> None:
    message = request("dblreq")
    assert message.method == "REGISTER"
    assert message.body == b""
    assert b"INVITE sip:joe@example.com" in load("dblreq")
    assert message.headers.get("Call-ID") == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"


def test_mpart01_binary_body_framed_by_content_length() -> None:
    message = request("mpart01")
    length = int(message.headers.get("Content-Length") or "")
    assert len(message.body) == length == 553
    assert b"\x00" in message.body
    assert message.body.startswith(b"--7a9cbec02ceef655\r\n")
    assert message.body.rstrip(b"\r\n").endswith(b"--7a9cbec02ceef655--")


def test_noreason_has_an_empty_reason() -> None:
    message = parsed("noreason")
    assert isinstance(message, SipResponse)
    assert (message.status, message.reason) == (100, "")


def test_regaut01_keeps_the_unknown_authorization_scheme() -> None:
    message = request("regaut01")
    assert message.method == "REGISTER"
    assert message.headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"


def test_cparam02_keeps_the_contact_uri_parameter() -> None:
    contacts = parse_contacts(request("cparam02").headers)
    assert contacts != "*"
    uri = contacts[0].uri
    assert "unknownparam" in uri.params and uri.params["unknownparam"] is None
    assert not contacts[0].params  # a URI parameter, not a header parameter
    assert str(uri) == "sip:+19725552222@gw1.example.net;unknownparam"


def test_regescrt_keeps_the_escaped_route_header() -> None:
    contacts = parse_contacts(request("regescrt").headers)
    assert contacts != "*"
    uri = contacts[0].uri
    assert dict(uri.headers) == {"Route": "<sip:sip.example.com>"}
    assert str(uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def test_inv2543_body_runs_to_the_end_of_the_datagram() -> None:
    message = request("inv2543")
    data = load("inv2543")
    assert "Content-Length" not in message.headers
    assert message.body == data[data.index(b"\r\n\r\n") + 4 :]
    assert message.body.startswith(b"v=0")
    assert top_via(message.headers).branch is None


def test_bcast_parses_with_the_broadcast_via() -> None:
    message = parsed("bcast")
    assert isinstance(message, SipResponse) and message.status == 200
    assert [parse_via(v).host for v in message.headers.values("Via")][1] == "255.255.255.255"


def test_bext01_lists_only_the_require_tags() -> None:
    problem = validate_request(request("bext01"))
    assert problem is not None and problem.status == 420
    # A UAS ignores Proxy-Require: only Require's tags are unsupported.
    assert dict(problem.headers) == {
        "Unsupported": "nothingSupportsThis, nothingSupportsThisEither"
    }


def test_sdp01_is_406_with_a_warning() -> None:
    problem = validate_request(request("sdp01"))
    assert problem is not None and (problem.status, problem.reason) == (406, "Not Acceptable")
    assert dict(problem.headers)["Warning"].startswith("399 bridge ")


def test_insuf_names_the_missing_headers() -> None:
    problem = validate_request(request("insuf"))
    assert problem is not None
    assert problem.reason == "Bad Request (missing From, To, Call-ID)"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("scalar02", "Bad Request (CSeq number too large)"),
        ("ncl", "Bad Request (negative Content-Length)"),
        ("mcl01", "Bad Request (conflicting Content-Length values)"),
        ("clerr", "Bad Request (Content-Length larger than the message)"),
        ("ltgtruri", "Bad Request (Request-URI enclosed in <>)"),
        ("lwsstart", "Bad Request (extra whitespace in request line)"),
        ("trws", "Bad Request (trailing whitespace in request line)"),
        ("mismatch01", "Bad Request (CSeq method does not match the request method)"),
        ("badvers", "Version Not Supported"),
    ],
)
def test_parse_errors_name_the_fault(name: str, reason: str) -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(load(name))
    assert caught.value.reason == reason


@pytest.mark.parametrize(("name", "reason"), [("badinv01", "Via"), ("quotbal", "To")])
def test_syntax_errors_found_by_validation(name: str, reason: str) -> None:
    problem = validate_request(request(name))
    assert problem is not None and problem.reason == f"Bad Request (malformed {reason})"


def test_mismatch01_is_also_caught_by_validation() -> None:
    # validate_request does not rely on the parser's check (requests may be built in code).
    with pytest.raises(SipParseError) as caught:
        parse_message(load("mismatch01"))
    partial = caught.value.partial
    assert partial is not None
    problem = validate_request(partial)
    assert problem is not None and problem.status == 400


def test_scalar02_overlarge_scalars_other_than_cseq() -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(load("scalar02"))
    partial = caught.value.partial
    assert partial is not None
    # The Expires values fall back to the default (3600); Max-Forwards 300 is refused.
    from bridge.sip.grammar import parse_expires

    assert parse_expires(partial.headers.get("Expires") or "") == 3600
    contacts = parse_contacts(partial.headers)
    assert contacts != "*"
    assert parse_expires(contacts[0].params["expires"] or "") == 3600


# -- the same corpus over a stream ---------------------------------------------------------
# What a TCP connection makes of each file: the first item is a 'message' or an 'error'
# (answered or dropped, the connection kept unless broken), or nothing yet ('wait'); and
# whether the framing is lost (`broken`: close the connection).
STREAM: dict[str, tuple[str, bool]] = {name: ("message", False) for name in FILES}
STREAM.update(
    {
        "scalarlg": ("error", False),
        "bigcode": ("error", False),
        "scalar02": ("error", False),
        "ltgtruri": ("error", False),
        "lwsstart": ("error", False),
        "trws": ("error", False),
        "badvers": ("error", False),
        "mismatch01": ("error", False),
        "ncl": ("error", True),
        "mcl01": ("error", True),
        "inv2543": ("error", True),  # no Content-Length: mandatory on streams
        "clerr": ("wait", False),  # 9999 announced, fewer sent: the transport times out
        # The REGISTER, then the trailing INVITE, whose body is longer than its
        # Content-Length: the leftover is no start line, so the framing is lost.
        "dblreq": ("message", True),
    }
)


@pytest.mark.parametrize("name", FILES)
def test_stream_verdict(name: str) -> None:
    data = load(name)
    framer = StreamFramer()
    items = framer.feed(data)
    kind, broken = STREAM[name]
    assert framer.broken == broken
    if kind == "wait":
        assert items == [] and framer.buffered == len(data)
        return
    assert items, "nothing came out"
    first = items[0]
    if kind == "message":
        assert not isinstance(first, SipParseError)
        udp = parse_message(data)
        assert (first.start_line, first.headers, first.body) == (
            udp.start_line,
            udp.headers,
            udp.body,
        )
    else:
        assert isinstance(first, SipParseError)
        if not broken:
            with pytest.raises(SipParseError) as caught:
                parse_message(data)
            assert (first.status, first.reason) == (caught.value.status, caught.value.reason)
    if broken:
        assert isinstance(items[-1], SipParseError)
        assert framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n") == []  # nothing more is read
