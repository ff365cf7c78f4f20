"""The hot path's shortcuts give the same answers as the general code they skip.

Each fast path (parameter splitting, digest parameters, the Via split, the URI text memo) is
checked against the slow, general implementation on generated input, valid or not."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sip import digest, grammar, model, transaction
from bridge.sip.grammar import Params, SipUri

_TEXT = st.text(alphabet='abcAB01;=<>",@:. \t\\/', max_size=40)
_TOKEN = st.text(alphabet="abcdefXYZ0189-.!%*_+`'~", min_size=1, max_size=8)


def slow_header_params(value: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for segment in model._split_top_level(value, ";")[1:]:
        name, sep, raw = segment.partition("=")
        key = name.strip().lower()
        if key:
            params.setdefault(key, raw.strip().strip('"') if sep else None)
    return params


@st.composite
def name_addrs(draw: st.DrawFn) -> str:
    display = draw(st.sampled_from(["", "Bob ", '"A;b<c>" ', '"x\\"y" ']))
    uri = draw(st.sampled_from(["sip:a@h", "sip:a@h;transport=udp", "sip:[::1]:5060;lr"]))
    params = draw(st.lists(st.tuples(_TOKEN, st.one_of(st.none(), _TOKEN)), max_size=3))
    tail = "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)
    return f"{display}<{uri}>{tail}"


@settings(max_examples=600, deadline=None)
@given(st.one_of(_TEXT, name_addrs()))
def test_header_params_fast_path_matches_the_scan(value: str) -> None:
    # For one value (no top-level comma) the shortcut must equal the character scan.
    if "," in value:
        return
    assert model.header_params(value) == slow_header_params(value)


@st.composite
def digest_values(draw: st.DrawFn) -> str:
    pairs = draw(
        st.lists(
            st.tuples(
                _TOKEN,
                st.one_of(
                    _TOKEN,
                    st.text(alphabet='ab "\\,=\x01\x7f', max_size=6).map(lambda t: f'"{t}"'),
                ),
            ),
            max_size=5,
        )
    )
    separator = draw(st.sampled_from([",", ", ", " , ", ",,"]))
    return separator.join(f"{n}={v}" for n, v in pairs)


@settings(max_examples=200, deadline=None)
@given(digest_values())
def test_digest_regex_path_matches_the_scanner(text: str) -> None:
    fast = digest._params_fast(text, 0)
    if fast is None:
        return  # the scanner decides (and names the fault)
    assert fast == digest._params(digest._Scanner(text))


@settings(max_examples=400, deadline=None)
@given(digest_values())
def test_digest_strict_path_matches_the_general_one(text: str) -> None:
    strict = digest._params_fast(text, 0, digest._STRICT_PARAM_RE)
    if strict is None:
        return  # the general regex, then the scanner, decide
    assert strict == digest._params_fast(text, 0)
    assert strict == digest._params(digest._Scanner(text))


def test_digest_strict_path_takes_what_phones_send() -> None:
    value = (
        'username="80000", realm="r", nonce="AAAA-_x", uri="sip:127.0.0.1:5060", '
        'response="535b7e6dc29759eb4c9dce2c3f857bea", algorithm=MD5, qop=auth, '
        'nc=00000001, cnonce="03e92df3211ca19e"'
    )
    strict = digest._STRICT_PARAM_RE
    assert digest._params_fast(value, 0, strict) == digest._params_fast(value, 0)
    assert digest._params_fast('a="x\\"y"', 0, strict) is None  # an escape: the general path
    assert digest._params_fast("a = b", 0, strict) is None  # blanks around '='


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["SIP/2.0/UDP", "SIP / 2.0 / UDP", "SIP/2.0/ TCP", "SIP/2.0 /TLS"]),
    st.sampled_from(["h:5060", "h : 5060", "[::1]:5070", "example.com"]),
    st.sampled_from(["branch=z9hG4bK1;rport", "branch=x", ""]),
    st.sampled_from([" ", "\t", "  "]),
)
def test_via_split_fast_path_matches_the_regex(
    protocol: str, sent_by: str, params: str, gap: str
) -> None:
    via = f"{protocol}{gap}{sent_by}" + (f";{params}" if params else "")
    head, _, rest = via.partition(";")
    parts = transaction._LWS_IN_VIA_HEAD.sub(r"\1", head.strip()).split(None, 1)
    expected = None if len(parts) != 2 or not parts[1] else (parts[0], parts[1].strip(), rest)
    assert transaction._split_via(via) == expected


def test_equal_uris_written_differently_keep_their_own_text() -> None:
    # Params compare by first value per name; the text memo must not mix such URIs up.
    once = SipUri("sip", "a", None, "h", None, Params([("x", "1")]))
    twice = SipUri("sip", "a", None, "h", None, Params([("x", "1"), ("x", "2")]))
    assert once == twice
    assert (str(once), str(twice)) == ("sip:a@h;x=1", "sip:a@h;x=1;x=2")


@st.composite
def vias(draw: st.DrawFn) -> str:
    protocol = draw(st.sampled_from(["SIP/2.0", "SIP/2.0", "sip/2.0", "SIP / 2.0", "SIP/3.0"]))
    transport = draw(st.sampled_from(["UDP", "TCP", "TLS", "WSS", "udp", "XYZ", "SCTP", ""]))
    host = draw(
        st.sampled_from(
            ["127.0.0.1", "pc33.example.com", "h_1.-x", "[::1]", "[2001:db8::9]", "a..b", "", "é"]
        )
    )
    port = draw(st.one_of(st.none(), st.integers(0, 99999).map(str), st.just("05060")))
    params = draw(
        st.lists(
            st.tuples(
                st.one_of(_TOKEN, st.sampled_from(["branch", "rport", "ttl", "received", "TTL"])),
                st.one_of(
                    st.none(),
                    _TOKEN,
                    st.integers(0, 99999).map(str),
                    st.sampled_from(['"q;x"', "[::1]", "a b", "", "1.2.3.4"]),
                ),
            ),
            max_size=4,
        )
    )
    space = draw(st.sampled_from([" ", " ", "  ", "\t"]))
    text = f"{protocol}/{transport}{space}{host}" + (f":{port}" if port is not None else "")
    return text + "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


@settings(max_examples=1200, deadline=None)
@given(st.one_of(vias(), _TEXT))
def test_plain_via_check_only_accepts_what_parse_via_accepts(value: str) -> None:
    if not grammar.is_plain_via(value):
        return
    grammar.parse_via.cache_clear()
    grammar.parse_via(value)  # must not raise


def test_plain_via_check_takes_the_common_shapes() -> None:
    # The shortcut is only worth it if ordinary Vias take it.
    for value in (
        "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK776asdhds;rport",
        "SIP/2.0/TCP pc33.atlanta.example.com;branch=z9hG4bK-1;received=192.0.2.1",
        "SIP/2.0/UDP 10.0.0.1:65535;branch=z9hG4bKx;rport",
        # As the transaction layer stamps it before the TU validates (RFC 3581).
        "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-t1;rport=5070;received=127.0.0.1",
        "SIP/2.0/UDP h;branch=z9hG4bK1;ttl=16",
    ):
        assert grammar.is_plain_via(value), value
    for value in (
        "SIP/2.0/UDP [::1]:5060;branch=z9hG4bK1",  # IPv6: the general path
        "SIP/2.0/UDP h:5060;ttl=300;branch=z9hG4bK1",  # ttl out of range: parse_via decides
        "SIP/2.0/UDP h:70000;branch=z9hG4bK1",
        "SIP/2.0/UDP h;rport=99999",
        "SIP / 2.0 / UDP h;branch=z9hG4bK1",
    ):
        assert not grammar.is_plain_via(value), value


def slow_prepend(items: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    wanted = model.canonical_name(name)
    out = list(items)
    for index, (key, _) in enumerate(out):
        if key.lower() == wanted.lower():
            out.insert(index, (wanted, value))
            return out
    return [*out, (wanted, value)]


def slow_pop_first_value(items: list[tuple[str, str]], name: str) -> tuple[list, str | None]:
    out = list(items)
    lowered = model.canonical_name(name).lower()
    for index, (key, line) in enumerate(out):
        if key.lower() == lowered:
            parts = model.split_comma_values(line)
            if len(parts) <= 1:
                del out[index]
            else:
                out[index] = (key, ", ".join(parts[1:]))
            return out, parts[0] if parts else None
    return out, None


_NAMES = st.sampled_from(["Via", "v", "VIA", "Route", "X-Thing", "x-thing", "X-THING", "To"])


@settings(max_examples=600, deadline=None)
@given(
    st.lists(st.tuples(_NAMES, st.sampled_from(["a", "a, b", "<sip:x>, <sip:y>", ""])), max_size=6),
    _NAMES,
)
def test_prepend_and_pop_first_value_find_the_same_line_as_a_full_scan(
    lines: list[tuple[str, str]], name: str
) -> None:
    headers = model.Headers(lines)
    items = list(headers)
    prepended = headers.copy()
    prepended.prepend(name, "new")
    assert list(prepended) == slow_prepend(items, name, "new")
    popped = headers.copy()
    value = popped.pop_first_value(name)
    assert (list(popped), value) == slow_pop_first_value(items, name)


@settings(max_examples=800, deadline=None)
@given(
    vias(),
    st.sampled_from([";rport", ";rport", "", ";maddr=239.1.1.1;rport", ";rport=7;rport"]),
    st.sampled_from([("192.0.2.7", 5070), ("2001:db8::9", 6000), ("127.0.0.1", 5060)]),
)
def test_responses_straight_to_the_source_only_where_the_via_says_so(
    via: str, tail: str, source: tuple[str, int]
) -> None:
    # The shortcut taken when stamping a request must route its responses exactly as
    # response_destination does from the stamped Via.
    request = model.SipRequest("OPTIONS", "sip:x@h", model.Headers([("Via", via + tail)]))
    stamped, to_source = transaction._stamp(request, source, transaction._top_via(request))
    assert stamped == transaction._top_via(request)
    if to_source:
        assert stamped is not None
        assert transaction.response_destination(stamped, source, "udp") == source


@st.composite
def plainish_name_addrs(draw: st.DrawFn) -> str:
    # Mostly the common shape, with the faults parse_name_addr must refuse mixed in: ports out
    # of range, empty parts, escapes, brackets, blanks, stray quotes.
    scheme = draw(st.sampled_from(["sip", "sips", "tel", "SIP", ""]))
    user = draw(st.sampled_from(["", "alice@", "%41b@", "a;b@", "+15550100@", "@"]))
    host = draw(st.sampled_from(["h", "pc33.example.com", "127.0.0.1", "[::1]", "a..b", "", "é"]))
    port = draw(st.one_of(st.none(), st.integers(0, 99999).map(str), st.just("")))
    uri_params = draw(st.sampled_from(["", ";transport=udp", ";lr", ";;", ";x=%zz", ";=1"]))
    params = draw(
        st.lists(
            st.tuples(
                st.one_of(_TOKEN, st.sampled_from(["tag", ""])),
                st.one_of(st.none(), _TOKEN, st.sampled_from(['"q"', "", "a b", "[::1]"])),
            ),
            max_size=3,
        )
    )
    front = draw(st.sampled_from(["<", "<", " <", '"A" <', "<<"]))
    back = draw(st.sampled_from([">", ">", "> ", ">>", ""]))
    uri = f"{scheme}:{user}{host}" + (f":{port}" if port is not None else "") + uri_params
    tail = "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)
    return f"{front}{uri}{back}{tail}"


@settings(max_examples=1200, deadline=None)
@given(st.one_of(plainish_name_addrs(), name_addrs(), _TEXT))
def test_plain_name_addr_check_only_accepts_what_parse_name_addr_accepts(value: str) -> None:
    if not grammar.is_plain_name_addr(value):
        return
    grammar.parse_name_addr.cache_clear()
    grammar.parse_uri.cache_clear()
    grammar.parse_name_addr(value)  # must not raise


def test_plain_name_addr_check_takes_the_common_shapes() -> None:
    for value in (
        "<sip:80000@inproc.test>;tag=reg100000",
        "<sip:alice@127.0.0.1:5070;transport=udp>",
        "<sip:+15550100@trunk.example.com>;tag=a6c85cf",
        "<sips:bob@example.com>",
        "<sip:a@h>;tag",  # a valueless parameter is plain too
    ):
        assert grammar.is_plain_name_addr(value), value
    for value in (
        '"Alice" <sip:alice@h>;tag=1',  # a display name: the general path
        "<sip:a@h:70000>",
        "sip:a@h;tag=1",  # an addr-spec
        "<sip:a@[::1]>",
        "<sip:a%20b@h>",
    ):
        assert not grammar.is_plain_name_addr(value), value


def slow_get(items: list[tuple[str, str]], name: str) -> str | None:
    # Headers.get as a plain scan: the first exact match, else (only for names without one
    # canonical spelling) the first case-insensitive one.
    wanted = model.canonical_name(name)
    for key, value in items:
        if key == wanted:
            return value
    if wanted in model._KNOWN:
        return None
    return next((v for k, v in items if k.lower() == wanted.lower()), None)


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "prepend", "pop", "set", "remove", "get", "copy"]),
        _NAMES,
        st.sampled_from(["a", "a, b", "<sip:x>, <sip:y>", "", "z"]),
    ),
    max_size=12,
)


@settings(max_examples=600, deadline=None)
@given(
    st.lists(st.tuples(_NAMES, st.sampled_from(["a", "a, b", "<sip:x>, <sip:y>", ""])), max_size=6),
    _OPS,
    st.booleans(),
)
def test_header_lookups_follow_every_change(
    lines: list[tuple[str, str]], ops: list[tuple[str, str, str]], handed_over: bool
) -> None:
    # Headers keeps each name's first value between changes; after any sequence of changes a
    # lookup must give what a scan of the lines gives.
    if handed_over:  # as the parser builds them: the first values handed over with the lines
        items = [(model.canonical_name(n), v) for n, v in lines]
        headers = model.Headers.from_canonical(items, dict(reversed(items)))
    else:
        headers = model.Headers(lines)
    for op, name, value in ops:
        if op == "add":
            headers.add(name, value)
        elif op == "prepend":
            headers.prepend(name, value)
        elif op == "pop":
            headers.pop_first_value(name)
        elif op == "set":
            headers.set(name, value)
        elif op == "remove":
            headers.remove(name)
        elif op == "copy":
            headers = headers.copy()
        else:
            headers.get(name)  # builds the first values, when not there yet
        items = list(headers)
        for asked in ("Via", "v", "VIA", "Route", "X-Thing", "x-thing", "X-THING", "To"):
            assert headers.get(asked) == slow_get(items, asked), (op, name, asked)
        assert headers.first_values() == dict(reversed(items))
