"""The hot path's shortcuts give the same answers as the general code they skip.

Each fast path (parameter splitting, digest parameters, the Via split, the URI text memo) is
checked against the slow, general implementation on generated input, valid or not."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sip import digest, model, transaction
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


@settings(max_examples=1500)
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


@settings(max_examples=400)
@given(digest_values())
def test_digest_regex_path_matches_the_scanner(text: str) -> None:
    fast = digest._params_fast(text, 0)
    if fast is None:
        return  # the scanner decides (and names the fault)
    assert fast == digest._params(digest._Scanner(text))


@settings(max_examples=300)
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
