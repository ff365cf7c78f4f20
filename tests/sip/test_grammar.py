"""Structured views of header values (bridge.sip.grammar): URIs, name-addr, Via, scalars."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sip.grammar import (
    DEFAULT_EXPIRES,
    CSeq,
    NameAddr,
    Params,
    SipSyntaxError,
    SipUri,
    Via,
    parse_contacts,
    parse_content_length,
    parse_cseq,
    parse_expires,
    parse_max_forwards,
    parse_name_addr,
    parse_option_tags,
    parse_uri,
    parse_via,
    quote,
    top_via,
    unquote,
)
from bridge.sip.model import Headers


# -- URIs ----------------------------------------------------------------------------------
def test_sip_uri_parts() -> None:
    uri = parse_uri(
        "sips:alice:secret@Example.COM:5061;transport=tcp;lr?Subject=hi&Priority=urgent"
    )
    assert uri == SipUri(
        "sips",
        "alice",
        "secret",
        "Example.COM",
        5061,
        {"transport": "tcp", "lr": None},
        {"Subject": "hi", "Priority": "urgent"},
    )
    assert uri.hostport == "Example.COM:5061"
    assert (
        str(uri) == "sips:alice:secret@Example.COM:5061;transport=tcp;lr?Subject=hi&Priority=urgent"
    )


def test_uri_without_user_and_scheme_case() -> None:
    uri = parse_uri("SIP:registrar.example.com")
    assert (uri.scheme, uri.user, uri.host, uri.port) == (
        "sip",
        None,
        "registrar.example.com",
        None,
    )
    assert str(uri) == "sip:registrar.example.com"


def test_ipv6_reference_kept_with_brackets() -> None:
    uri = parse_uri("sip:bob@[2001:db8::1]:5080;maddr=[2001:db8::2]")
    assert (uri.host, uri.port, uri.params["maddr"]) == ("[2001:db8::1]", 5080, "[2001:db8::2]")
    assert str(uri) == "sip:bob@[2001:db8::1]:5080;maddr=[2001:db8::2]"
    with pytest.raises(SipSyntaxError):
        parse_uri("sip:bob@[2001:db8::zz]")
    with pytest.raises(SipSyntaxError):
        parse_uri("sip:bob@[2001:db8::1")


def test_param_names_case_insensitive_spelling_kept() -> None:
    uri = parse_uri("sip:a@b;Transport=TCP;LR")
    assert uri.params["transport"] == "TCP" and uri.params.get("TRANSPORT") == "TCP"
    assert "lr" in uri.params and uri.params["lr"] is None
    assert list(uri.params) == ["Transport", "LR"]
    assert str(uri) == "sip:a@b;Transport=TCP;LR"


def test_escapes_decoded_once_in_user_params_headers_only() -> None:
    uri = parse_uri("sip:%61lice%2540x@host.example;n%61me=v%25%34%31?h%64r=a%20b")
    assert uri.user == "alice%40x"  # %25 -> %, and the result is not decoded again
    assert uri.params["name"] == "v%41"
    assert dict(uri.headers) == {"hdr": "a b"}
    assert str(uri) == "sip:alice%2540x@host.example;name=v%2541?hdr=a%20b"


def test_escaped_nul_is_kept_not_truncating() -> None:
    uri = parse_uri("sip:a%00b@h")
    assert uri.user == "a\x00b" and len(uri.user) == 3
    assert str(uri) == "sip:a%00b@h"


def test_non_utf8_escapes_round_trip() -> None:
    uri = parse_uri("sip:%FF%C3%A9@h")
    assert uri.user == "\udcffé"
    assert str(uri) == "sip:%FF%C3%A9@h"


def test_tel_and_unknown_schemes() -> None:
    tel = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert (tel.scheme, tel.user, tel.params["phone-context"]) == (
        "tel",
        "+1-201-555-0123",
        "example.com",
    )
    assert str(tel) == "tel:+1-201-555-0123;phone-context=example.com"
    other = parse_uri("urn:service:sos")
    assert (other.scheme, other.opaque, str(other)) == ("urn", "service:sos", "urn:service:sos")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip",
        "sip:",
        "<sip:a@b>",
        "1sip:a@b",
        "sip:a@",
        "sip:a@b:99999",
        "sip:a@b:",
        "sip:a@b:5x",
        "sip:a@b;;lr",
        "sip:a@b;=x",
        "sip:a@b?=x",
        "sip:a%4@b",
        "sip:a%zz@b",
        "sip:a b@c",
        'sip:a"@b',
        "sip:a@b c",
        "sip:a@ho$t",
        "tel:",
    ],
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(SipSyntaxError):
        parse_uri(text)


# -- name-addr -----------------------------------------------------------------------------
def test_quoted_display_with_quoted_pairs() -> None:
    na = parse_name_addr(' "A \\"B\\" \\\\ C" <sip:ab@example.com> ;tag=x1 ; q=0.5')
    assert na.display == 'A "B" \\ C'
    assert na.uri.user == "ab" and na.tag == "x1" and na.params["q"] == "0.5"
    assert str(na) == '"A \\"B\\" \\\\ C" <sip:ab@example.com>;tag=x1;q=0.5'
    assert parse_name_addr(str(na)) == na


def test_token_display_and_no_lws_before_bracket() -> None:
    assert parse_name_addr("Bob Smith <sip:bob@b>").display == "Bob Smith"
    assert parse_name_addr("Bob<sip:bob@b>").display == "Bob"
    assert parse_name_addr("<sip:bob@b>").display is None
    assert parse_name_addr("Jörg <sip:j@b>").display == "Jörg"  # liberal about UTF-8


def test_addr_spec_params_belong_to_the_header() -> None:
    na = parse_name_addr("sip:+1555@gw.example.net;user=phone;tag=9")
    assert na.uri == SipUri("sip", "+1555", host="gw.example.net")
    assert dict(na.params) == {"user": "phone", "tag": "9"}
    assert na.tag == "9"


def test_bracketed_uri_params_belong_to_the_uri() -> None:
    na = parse_name_addr("<sip:a@b;user=phone>;tag=9")
    assert dict(na.uri.params) == {"user": "phone"} and dict(na.params) == {"tag": "9"}


def test_quoted_parameter_value_kept_with_quotes() -> None:
    na = parse_name_addr(
        '<sip:a@b;ob>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    )
    raw = na.params["+sip.instance"]
    assert raw == '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    assert unquote(raw) == "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"
    assert str(na).endswith(f";+sip.instance={raw}")


@pytest.mark.parametrize(
    "text",
    [
        '"Mr. J. User <sip:j.user@example.com>',  # quotbal
        '"unterminated',
        '"name" sip:a@b',  # display without <>
        "<sip:a@b",
        "<sip:a@b>;;",
        "<sip:a@b>;tag",  # fine: valueless (checked below), so pair it with a bad one
        "<sip:a@b> junk",
        "<sip:a@b>;tag=",
        "a <b> <sip:c@d>",
        "Bob \x01 <sip:a@b>",
        "<<sip:a@b>>",
        "",
    ],
)
def test_bad_name_addrs(text: str) -> None:
    if text == "<sip:a@b>;tag":
        assert parse_name_addr(text).params == {"tag": None}
        return
    with pytest.raises(SipSyntaxError):
        parse_name_addr(text)


def test_contacts_and_the_wildcard() -> None:
    headers = Headers(
        [("m", '<sip:a@h1>;expires=60, "B, C" <sip:b@h2>'), ("Contact", "sip:c@h3;q=0.1")]
    )
    contacts = parse_contacts(headers)
    assert contacts != "*"
    assert [(c.uri.user, c.display) for c in contacts] == [("a", None), ("b", "B, C"), ("c", None)]
    assert contacts[0].params["expires"] == "60" and contacts[2].params["q"] == "0.1"
    assert parse_contacts(Headers([("Contact", "*")])) == "*"
    assert parse_contacts(Headers()) == []
    with pytest.raises(SipSyntaxError):
        parse_contacts(Headers([("Contact", "*"), ("Contact", "<sip:a@b>")]))


# -- Via -----------------------------------------------------------------------------------
def test_via_accessors() -> None:
    via = parse_via(
        "SIP/2.0/udp pc33.example.com:5066;branch=z9hG4bK776;received=192.0.2.4;rport=40123"
        ";maddr=224.2.0.1;ttl=16"
    )
    assert (via.transport, via.host, via.port, via.protocol) == (
        "UDP",
        "pc33.example.com",
        5066,
        "SIP/2.0",
    )
    assert (via.branch, via.received, via.rport, via.wants_rport) == (
        "z9hG4bK776",
        "192.0.2.4",
        40123,
        True,
    )
    assert (via.maddr, via.ttl, via.sent_by) == ("224.2.0.1", 16, "pc33.example.com:5066")


def test_via_rport_request_and_absence() -> None:
    asked = parse_via("SIP/2.0/TCP h;branch=z9hG4bK1;rport")
    assert asked.wants_rport and asked.rport is None
    plain = parse_via("SIP/2.0/TLS h")
    assert not plain.wants_rport and plain.branch is None and plain.port is None


def test_via_lws_ipv6_and_unbracketed_received() -> None:
    via = parse_via("SIP / 2.0 / UDP [2001:db8::9]:5060 ; branch = z9hG4bKx ; received=2001:db8::7")
    assert (via.host, via.port, via.branch, via.received) == (
        "[2001:db8::9]",
        5060,
        "z9hG4bKx",
        "2001:db8::7",
    )
    assert str(via) == "SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bKx;received=2001:db8::7"
    assert parse_via(str(via)) == via


def test_via_constructed_and_serialized() -> None:
    via = Via("UDP", "192.0.2.1", 5060, {"branch": "z9hG4bKabc", "rport": None})
    assert str(via) == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport"
    assert via.branch == "z9hG4bKabc" and via.wants_rport


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP 192.0.2.15;;",  # badinv01
        "SIP/2.0/UDP",
        "SIP/2.0 host",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP host;ttl=256",
        "SIP/2.0/UDP host;ttl",
        "SIP/2.0/UDP host;rport=abc",
        "SIP/2.0/UDP host junk",
        "SIP/2.0/UDP [::1",
        "SIP/2.0/UDP h@st",
        "",
    ],
)
def test_bad_vias(text: str) -> None:
    with pytest.raises(SipSyntaxError):
        parse_via(text)


def test_top_via_takes_the_first_value_of_the_first_line() -> None:
    headers = Headers(
        [("v", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b"), ("Via", "SIP/2.0/UDP c")]
    )
    assert top_via(headers).host == "a"
    with pytest.raises(SipSyntaxError):
        top_via(Headers())


# -- scalars -------------------------------------------------------------------------------
def test_cseq_bounds() -> None:
    assert parse_cseq("0009  INVITE") == CSeq(9, "INVITE")
    assert parse_cseq(f"{2**32 - 1} ACK").number == 2**32 - 1
    assert parse_cseq("00000000000000000001 BYE").number == 1  # zeros do not count
    for bad in (f"{2**32} REGISTER", "36893488147419103232 REGISTER", "9" * 5000 + " A"):
        with pytest.raises(SipSyntaxError, match="too large"):
            parse_cseq(bad)
    for bad in ("INVITE", "1", "-1 INVITE", "1 INV ITE", "x INVITE", "\u0661 INVITE"):
        with pytest.raises(SipSyntaxError):
            parse_cseq(bad)


def test_max_forwards() -> None:
    assert parse_max_forwards("0068") == 68
    assert parse_max_forwards("0") == 0 and parse_max_forwards("255") == 255
    for bad in ("256", "300", "-1", "seventy", "", "9" * 5000):
        with pytest.raises(SipSyntaxError):
            parse_max_forwards(bad)


def test_expires_overlarge_falls_back_to_the_default() -> None:
    assert parse_expires("3600") == 3600 and parse_expires(" 0 ") == 0
    assert parse_expires(str(2**32 - 1)) == 2**32 - 1
    assert parse_expires("1" + "0" * 100) == DEFAULT_EXPIRES == 3600
    assert parse_expires("280297596632815", overlarge=600) == 600
    for bad in ("soon", "-5", "Thu, 01 Dec 1994 16:00:00 GMT", ""):
        with pytest.raises(SipSyntaxError):
            parse_expires(bad)


def test_content_length() -> None:
    assert parse_content_length(" 0150 ") == 150
    for bad in ("-999", "five", "", "1 2", "9" * 11, "\u0661\u0665\u0660"):
        with pytest.raises(SipSyntaxError):
            parse_content_length(bad)


def test_option_tags() -> None:
    assert parse_option_tags("path, outbound ,timer") == ["path", "outbound", "timer"]
    assert parse_option_tags("") == []
    with pytest.raises(SipSyntaxError):
        parse_option_tags("path, out bound")


# -- Params --------------------------------------------------------------------------------
def test_params_mapping_behaviour() -> None:
    params = Params([("Tag", "a"), ("lr", None), ("tag", "b")])
    assert params["TAG"] == "a" and params.get("tag") == "a"  # the first one wins
    assert "LR" in params and "x" not in params and params.get("x", "d") == "d"
    assert len(params) == 2 and list(params) == ["Tag", "lr"]
    assert params.pairs == (("Tag", "a"), ("lr", None), ("tag", "b"))  # all kept
    assert params == {"tag": "a", "lr": None} and params == Params([("TAG", "a"), ("LR", None)])
    assert hash(params) == hash(Params([("tag", "a"), ("lr", None)]))
    with pytest.raises(KeyError):
        params["missing"]


def test_quote_and_unquote_are_inverse() -> None:
    assert quote('a "b" \\') == '"a \\"b\\" \\\\"'
    assert unquote(quote('a "b" \\')) == 'a "b" \\'
    assert unquote("token") == "token" and unquote(None) is None


# -- properties ----------------------------------------------------------------------------
_USER_CHARS = st.characters(blacklist_categories=("Cs",), max_codepoint=0x2FF)
_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)
_HOST = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_PNAME = st.text("abcdefghijklmnopqrstuvwxyzABC-_.!~*'+", min_size=1, max_size=8)
_PVALUE = st.none() | st.text(_USER_CHARS, min_size=1, max_size=10)


@settings(max_examples=200, deadline=None)
@given(
    scheme=st.sampled_from(["sip", "sips"]),
    user=st.none() | st.text(_USER_CHARS, max_size=12),
    password=st.none() | st.text(_USER_CHARS, max_size=6),
    host=_HOST,
    port=st.none() | st.integers(1, 65535),
    params=st.lists(st.tuples(_PNAME, _PVALUE), max_size=4),
    headers=st.lists(st.tuples(_PNAME, st.text(_USER_CHARS, max_size=8)), max_size=3),
)
def test_uri_serialization_round_trips(
    scheme: str,
    user: str | None,
    password: str | None,
    host: str,
    port: int | None,
    params: list[tuple[str, str | None]],
    headers: list[tuple[str, str]],
) -> None:
    uri = SipUri(
        scheme,
        user,
        password if user is not None else None,
        host,
        port,
        Params(params),
        Params(headers),
    )
    back = parse_uri(str(uri))
    assert back.user == uri.user and back.password == uri.password
    assert (back.scheme, back.host, back.port) == (scheme, host, port)
    assert back.params.pairs == tuple(params)  # type: ignore[attr-defined]
    assert back.headers.pairs == tuple(headers)  # type: ignore[attr-defined]
    assert str(back) == str(uri)


@settings(max_examples=200, deadline=None)
@given(
    display=st.none() | st.text(st.characters(blacklist_categories=("Cs",)), max_size=15),
    user=st.text("abcxyz019+-.", min_size=1, max_size=8),
    tag=st.none() | st.text("abcdef0123456789-.", min_size=1, max_size=10),
)
def test_name_addr_serialization_round_trips(
    display: str | None, user: str, tag: str | None
) -> None:
    na = NameAddr(
        display, SipUri("sip", user, host="example.com"), {} if tag is None else {"tag": tag}
    )
    back = parse_name_addr(str(na))
    assert back.display == display and back.uri == na.uri and back.tag == tag
