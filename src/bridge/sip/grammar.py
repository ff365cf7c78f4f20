"""Structured views of SIP header values, parsed on demand (RFC 3261 §25 grammar).

Sans-I/O: text in, immutable values (NamedTuples: cheap to build, hashable) or
`SipSyntaxError` out. The message parser keeps header values as text; the layers that need a
URI, a Via or a name-addr call these functions. The parsers of URIs, name-addrs, Vias and
CSeqs are memoized (bounded LRU): validation, the transaction layer, dialogs and the B2BUA
each look at the same From, To, Contact and top Via of a message, and the values are
immutable, so the second look is a dictionary hit.

Liberal where RFC 4475 says a parser must accept (folded and padded values, token display
names without LWS before `<`, `%00` in a user part, odd but legal characters), strict where it
says reject (empty parameters, unbalanced quotes, overlarge scalars, malformed escapes).

`%` escapes are decoded once (never recursively) in the user, password, URI parameters and
URI headers, and re-escaped by `str(uri)`; hosts, schemes and header parameters are taken as
written. Header parameter values keep their quotes (`unquote()` removes them), so a value
re-serializes exactly as received.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Literal, NamedTuple

from bridge.sip.model import Headers, split_comma_values
from bridge.text import ascii_digits

MAX_CSEQ = 2**32 - 1
MAX_MAX_FORWARDS = 255
# RFC 4475 §3.1.2.4: an overlarge Expires or expires parameter may be treated as the default.
DEFAULT_EXPIRES = 3600
# Digits beyond this are overlarge for every SIP scalar; checked before int() so a 5,000-digit
# value never reaches int() (Python refuses >4,300 digits with ValueError).
_MAX_SCALAR_DIGITS = 10


class SipSyntaxError(ValueError):
    """A header value or URI does not follow the grammar."""


# -- character classes (RFC 3261 §25.1) ------------------------------------------------------
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(_TOKEN)
_ALPHANUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_UNRESERVED = frozenset(_ALPHANUM + "-_.!~*'()")
# What each URI component may hold unescaped (anything else is %-escaped by str(uri)).
_USER_SAFE = _UNRESERVED | frozenset("&=+$,;?/")
_PASSWORD_SAFE = _UNRESERVED | frozenset("&=+$,")
_PARAM_SAFE = _UNRESERVED | frozenset("[]/:&+$")
_HEADER_SAFE = _UNRESERVED | frozenset("[]/?:+$")
_TEL_SAFE = _UNRESERVED | frozenset("+#&=,/:$")

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
# Never legal anywhere in a URI; `<` also catches a bracketed Request-URI (RFC 4475 ltgtruri).
_URI_FORBIDDEN_RE = re.compile(r'[\x00-\x20\x7f<>"]')
# Liberal about '_' and edge hyphens (seen in the wild), strict about anything else.
_HOSTNAME = r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*\.?"
_HOSTNAME_RE = re.compile(_HOSTNAME)
_HEX2 = frozenset("0123456789abcdefABCDEF")
# The common SIP URI (no escapes, password, IPv6 or URI headers) in one match; anything else
# takes the general path, which accepts a superset.
_PLAIN_URI_RE = re.compile(
    r"(sips?):(?:([A-Za-z0-9\-_.!~*'()&=+$,/]+)@)?(" + _HOSTNAME + r")(?::([0-9]{1,5}))?"
    r"((?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+)?)*)"
)

# A header parameter: `;name[=value]`, value a token/host (`:` allowed for an unbracketed
# IPv6 `received`), an IPv6 reference or a quoted string; LWS allowed around `;` and `=`.
# No trailing LWS in the pattern (callers strip it): that keeps every repetition boundary
# unambiguous, so a failing match backtracks linearly, not exponentially.
_QUOTED = r'"(?:[^"\\]|\\[\s\S])*"'
_PARAM_VALUE = r"[A-Za-z0-9\-.!%*_+`'~:]+|\[[0-9A-Fa-f:.]+\]|" + _QUOTED
_PARAM_RE = re.compile(r"[ \t]*;[ \t]*(" + _TOKEN + r")(?:[ \t]*=[ \t]*(" + _PARAM_VALUE + r"))?")
# The common case: no LWS, no quoted values; checked in one match, then split.
_SIMPLE_PARAMS_RE = re.compile(r"(?:;" + _TOKEN + r"(?:=[A-Za-z0-9\-.!%*_+`'~:]+)?)+")
_QUOTED_RE = re.compile(_QUOTED)
_QUOTED_PAIR_RE = re.compile(r"\\([\s\S])")
# `"display" <uri> rest` or `display <uri> rest`: greedy classes anchored at the start, so a
# failed match costs linear time.
_NAME_ADDR_RE = re.compile(
    r'[ \t]*(?:"((?:[^"\\]|\\[\s\S])*)"|([^"<>]*))[ \t]*<([^<>]*)>(.*)', re.S
)
# An unquoted display name: token-ish words; liberal about non-ASCII, strict about controls.
# An unquoted display name: tokens and spaces (RFC 3261 §25.1), liberal about UTF-8 (phones
# send it unquoted) but not about separators: RFC 4475 baddn (`Bell, Alexander <sip:...>`).
_DISPLAY_RE = re.compile(r'[^\x00-\x08\x0a-\x1f\x7f()<>@,;:\\"/\[\]?={}]*')
_VIA_RE = re.compile(
    r"[ \t]*(" + _TOKEN + r")[ \t]*/[ \t]*(" + _TOKEN + r")[ \t]*/[ \t]*(" + _TOKEN + r")"
    r"[ \t]+(\[[0-9A-Fa-f:.]+\]|" + _HOSTNAME + r")(?:[ \t]*:[ \t]*([0-9]{1,5}))?(.*)",
    re.S,
)
# The common Via (no LWS, no IPv6 reference, no quoted parameter) in one match: what
# `is_plain_via` accepts, `parse_via` accepts too (tests/sip/test_fast_paths.py).
_PLAIN_VIA_RE = re.compile(
    r"SIP/2\.0/(?:UDP|TCP|TLS|SCTP|WSS?) " + _HOSTNAME + r"(?::([0-9]{1,5}))?"
    r"((?:;" + _TOKEN + r"(?:=[A-Za-z0-9\-.!%*_+`'~:]+)?)*)"
)
_CSEQ_RE = re.compile(r"[ \t]*([0-9]+)[ \t]+(" + _TOKEN + r")[ \t]*")


# -- parameters ------------------------------------------------------------------------------
class Params(Mapping[str, str | None]):
    """Ordered parameters; names look up case-insensitively and keep their spelling.

    A valueless parameter maps to None (test presence with `in`). When a name repeats, lookups
    see the first one and `pairs` keeps them all for re-serialization. Lookups scan the pairs:
    a header has a handful of parameters, and a scan beats building an index per value."""

    __slots__ = ("_hash", "_pairs")

    def __init__(self, pairs: Iterable[tuple[str, str | None]] = ()) -> None:
        self._pairs: tuple[tuple[str, str | None], ...] = tuple(pairs)
        self._hash: int | None = None

    @property
    def pairs(self) -> tuple[tuple[str, str | None], ...]:
        return self._pairs

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        lowered = name.lower()
        for key, value in self._pairs:
            if key == lowered or key.lower() == lowered:
                return value
        return default

    def __getitem__(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self._pairs:
            if key == lowered or key.lower() == lowered:
                return value
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        lowered = name.lower()
        return any(key == lowered or key.lower() == lowered for key, _ in self._pairs)

    def _first(self) -> dict[str, str | None]:
        first: dict[str, str | None] = {}
        for key, value in self._pairs:
            first.setdefault(key.lower(), value)
        return first

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for name, _ in self._pairs:
            lowered = name.lower()
            if lowered not in seen:
                seen.add(lowered)
                yield name

    def __len__(self) -> int:
        return len({name.lower() for name, _ in self._pairs})

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Params):
            return self._first() == other._first()
        if isinstance(other, Mapping):
            return self._first() == {str(k).lower(): v for k, v in other.items()}
        return NotImplemented

    def __hash__(self) -> int:
        # Immutable, so computed once (URIs holding Params are memo keys of the parsers).
        if self._hash is None:
            self._hash = hash(frozenset(self._first().items()))
        return self._hash

    def __repr__(self) -> str:
        return f"Params({list(self._pairs)!r})"


_NO_PARAMS = Params()


def _pairs_of(params: Mapping[str, str | None]) -> Iterable[tuple[str, str | None]]:
    return params.pairs if isinstance(params, Params) else params.items()


def unquote(value: str | None) -> str | None:
    """`"a \\"b\\""` -> `a "b"`; anything not quoted is returned as is."""
    if value is None or len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    return _QUOTED_PAIR_RE.sub(r"\1", value[1:-1])


def quote(text: str) -> str:
    """A quoted-string for `text` (quotes and backslashes escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_header_params(text: str) -> Params:
    """`;a=1 ; b ;c="x;y"` -> Params. Empty parameters (`;;`) are errors (RFC 4475 badinv01)."""
    text = text.rstrip(" \t")
    if not text:
        return _NO_PARAMS
    pairs: list[tuple[str, str | None]] = []
    if _SIMPLE_PARAMS_RE.fullmatch(text) is not None:
        for part in text[1:].split(";"):
            name, equals, value = part.partition("=")
            pairs.append((name, value if equals else None))
        return Params(pairs)
    match = _PARAM_RE.match
    pos, end = 0, len(text)
    while pos < end:
        found = match(text, pos)
        if found is None:
            raise SipSyntaxError(f"malformed parameters: {text[pos : pos + 60]!r}")
        pairs.append(found.group(1, 2))
        pos = found.end()
    return Params(pairs)


def _format_params(params: Mapping[str, str | None]) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in _pairs_of(params))


# -- %-escapes -------------------------------------------------------------------------------
def _unescape(text: str) -> str:
    """Decode `%XX` once. `%00` stays a NUL character; a malformed escape is an error."""
    if "%" not in text:
        return text
    raw = text.encode("utf-8", "surrogateescape")
    parts = raw.split(b"%")
    out = bytearray(parts[0])
    for part in parts[1:]:
        if len(part) < 2 or chr(part[0]) not in _HEX2 or chr(part[1]) not in _HEX2:
            raise SipSyntaxError(f"malformed %-escape in {text[:60]!r}")
        out.append(int(part[:2], 16))
        out += part[2:]
    return out.decode("utf-8", "surrogateescape")


def _escape(text: str, safe: frozenset[str]) -> str:
    if all(char in safe for char in text):
        return text
    out: list[str] = []
    for char in text:
        if char in safe:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogateescape"))
    return "".join(out)


# -- URIs ------------------------------------------------------------------------------------
class SipUri(NamedTuple):
    """A sip:, sips: or tel: URI with its parts decoded; any other scheme keeps `opaque`.

    `user`/`password` are None when absent (a tel: URI's number is its `user`); `host` keeps
    the brackets of an IPv6 reference. `str(uri)` re-serializes, escaping where needed."""

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Mapping[str, str | None] = _NO_PARAMS
    headers: Mapping[str, str | None] = _NO_PARAMS
    opaque: str | None = None

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        # Memoized on the exact parts (not on equality: URIs that compare equal may be
        # written differently): the dialogs write the same URIs into every request.
        key = (
            self.scheme, self.user, self.password, self.host, self.port, self.opaque,
            tuple(_pairs_of(self.params)), tuple(_pairs_of(self.headers)),
        )  # fmt: skip
        text = _URI_TEXT.get(key)
        if text is None:
            if len(_URI_TEXT) >= _URI_TEXT_MAX:
                _URI_TEXT.clear()
            text = _URI_TEXT[key] = _format_uri(self)
        return text


_URI_TEXT: dict[tuple[object, ...], str] = {}
_URI_TEXT_MAX = 4096


def _format_uri(uri: SipUri) -> str:
    if uri.scheme in ("sip", "sips"):
        out = [uri.scheme, ":"]
        if uri.user is not None:
            out.append(_escape(uri.user, _USER_SAFE))
            if uri.password is not None:
                out += (":", _escape(uri.password, _PASSWORD_SAFE))
            out.append("@")
        out.append(uri.hostport)
    elif uri.scheme == "tel":
        out = ["tel:", _escape(uri.user or "", _TEL_SAFE)]
    else:
        return f"{uri.scheme}:{uri.opaque or ''}"
    for name, value in _pairs_of(uri.params):
        out += (";", _escape(name, _PARAM_SAFE))
        if value is not None:
            out += ("=", _escape(value, _PARAM_SAFE))
    headers = list(_pairs_of(uri.headers))
    if headers:
        out.append("?")
        out.append(
            "&".join(
                f"{_escape(n, _HEADER_SAFE)}={_escape(v or '', _HEADER_SAFE)}" for n, v in headers
            )
        )
    return "".join(out)


def _parse_host(text: str) -> tuple[str, int | None]:
    """`host[:port]` with `host` a hostname, IPv4 address or `[IPv6]` reference."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise SipSyntaxError(f"unterminated IPv6 reference: {text[:60]!r}")
        host, rest = text[: close + 1], text[close + 1 :]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise SipSyntaxError(f"bad IPv6 reference: {host[:60]!r}") from None
        if rest and not rest.startswith(":"):
            raise SipSyntaxError(f"junk after IPv6 reference: {text[:60]!r}")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_ = text.partition(":")
        port_text = port_text_ if sep else None
        if _HOSTNAME_RE.fullmatch(host) is None:
            raise SipSyntaxError(f"bad host: {host[:60]!r}")
    return host, None if port_text is None else _parse_port(port_text)


def _parse_port(text: str) -> int:
    if not (0 < len(text) <= 5 and ascii_digits(text)) or int(text) > 65535:
        raise SipSyntaxError(f"bad port: {text[:20]!r}")
    return int(text)


def _parse_uri_params(text: str) -> Params:
    """`;a=b;lr` inside a URI (leading ';' removed): names and values %-decoded; `;;` is an
    error."""
    if not text:
        return _NO_PARAMS
    pairs: list[tuple[str, str | None]] = []
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if not name:
            raise SipSyntaxError(f"empty URI parameter in {text[:60]!r}")
        pairs.append((_unescape(name), _unescape(value) if sep else None))
    return Params(pairs)


def _parse_uri_headers(text: str) -> Params:
    pairs: list[tuple[str, str | None]] = []
    for part in text.split("&"):
        name, _, value = part.partition("=")
        if not name:
            raise SipSyntaxError(f"empty URI header in {text[:60]!r}")
        pairs.append((_unescape(name), _unescape(value)))
    return Params(pairs)


@lru_cache(maxsize=4096)
def parse_uri(text: str) -> SipUri:
    """Parse a URI (RFC 3261 §19.1 for sip/sips, RFC 3966 loosely for tel, opaque otherwise)."""
    plain = _PLAIN_URI_RE.fullmatch(text)
    if plain is not None:
        scheme, user, host, port, param_text = plain.groups()
        return SipUri(
            scheme,
            user,
            None,
            host,
            None if port is None else _parse_port(port),
            _parse_uri_params(param_text[1:]) if param_text else _NO_PARAMS,
        )
    scheme, colon, rest = text.partition(":")
    if not colon or _SCHEME_RE.fullmatch(scheme) is None:
        raise SipSyntaxError(f"not a URI: {text[:60]!r}")
    if not rest or _URI_FORBIDDEN_RE.search(rest) is not None:
        raise SipSyntaxError(f"bad characters in URI: {text[:60]!r}")
    scheme = scheme.lower()
    if scheme == "tel":
        number, _, params = rest.partition(";")
        if not number:
            raise SipSyntaxError("tel: URI without a number")
        return SipUri("tel", user=_unescape(number), params=_parse_uri_params(params))
    if scheme not in ("sip", "sips"):
        return SipUri(scheme, opaque=rest)
    user: str | None = None
    password: str | None = None
    # userinfo ends at the first '@' (no other part may hold one unescaped); it may itself
    # hold ';' and '?' (RFC 4475 intmeth), so it is cut off before params and headers.
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user_text, sep, password_text = userinfo.partition(":")
        user = _unescape(user_text)
        password = _unescape(password_text) if sep else None
    rest, question, header_text = rest.partition("?")
    hostport, _, param_text = rest.partition(";")
    host, port = _parse_host(hostport)
    return SipUri(
        scheme,
        user,
        password,
        host,
        port,
        _parse_uri_params(param_text),
        _parse_uri_headers(header_text) if question else _NO_PARAMS,
    )


# -- name-addr / addr-spec -------------------------------------------------------------------
class NameAddr(NamedTuple):
    """From, To, Contact, Route, Record-Route, Diversion... values: an optional display
    name (unquoted, quoted-pairs resolved), a URI and header parameters."""

    display: str | None
    uri: SipUri
    params: Mapping[str, str | None] = _NO_PARAMS

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        display = "" if self.display is None else quote(self.display) + " "
        return f"{display}<{self.uri}>{_format_params(self.params)}"


@lru_cache(maxsize=4096)
def parse_name_addr(value: str) -> NameAddr:
    """`"Alice" <sip:a@x>;tag=1`, `Bob<sip:b@y>`, `<sip:c@z>` or `sip:d@w;tag=2`."""
    match = _NAME_ADDR_RE.match(value)
    if match is None:
        text = value.strip(" \t")
        if text.startswith('"'):
            if _QUOTED_RE.match(text) is None:
                raise SipSyntaxError(f"unterminated quoted display name: {text[:60]!r}")
            raise SipSyntaxError(f"display name without <URI>: {text[:60]!r}")
        if any(char in text for char in '<>"'):
            raise SipSyntaxError(f"malformed name-addr: {text[:60]!r}")
        return _parse_addr_spec(text)
    quoted, words, uri_text, rest = match.groups()
    display: str | None
    if quoted is not None:
        display = _QUOTED_PAIR_RE.sub(r"\1", quoted) if "\\" in quoted else quoted
    else:
        words = words.strip(" \t")
        if words and _DISPLAY_RE.fullmatch(words) is None:
            raise SipSyntaxError(f"bad display name: {words[:60]!r}")
        display = words or None
    return NameAddr(
        display, parse_uri(uri_text), _parse_header_params(rest) if rest else _NO_PARAMS
    )


# The common name-addr (no display name, a plain URI, plain parameters) in one match: what
# `is_plain_name_addr` accepts, `parse_name_addr` accepts too (tests/sip/test_fast_paths.py).
_PLAIN_NAME_ADDR_RE = re.compile(
    "<" + _PLAIN_URI_RE.pattern + ">" + r"((?:;" + _TOKEN + r"(?:=[A-Za-z0-9\-.!%*_+`'~:]+)?)*)"
)


def is_plain_name_addr(value: str) -> bool:
    """Whether `value` is a well-formed name-addr of the common shape (`<sip:u@h>;tag=x`),
    checked by one match: True means `parse_name_addr` would accept it; False means "ask
    `parse_name_addr`". For validating a request's From and To without building (and
    caching) parsed values that only some requests use."""
    match = _PLAIN_NAME_ADDR_RE.fullmatch(value)
    if match is None:
        return False
    port = match.group(4)
    return port is None or int(port) <= 65535


def _parse_addr_spec(text: str) -> NameAddr:
    # RFC 3261 §20.10: without <>, every ';' parameter belongs to the header, not the URI.
    uri_text, semi, param_text = text.partition(";")
    uri = parse_uri(uri_text.rstrip(" \t"))
    return NameAddr(None, uri, _parse_header_params(semi + param_text) if semi else _NO_PARAMS)


def parse_contacts(headers: Headers) -> list[NameAddr] | Literal["*"]:
    """Every Contact value, or "*" for the wildcard (which must then stand alone)."""
    values = headers.values("Contact")
    if any(value == "*" for value in values):
        if len(values) != 1:
            raise SipSyntaxError("Contact '*' mixed with other contacts")
        return "*"
    return [parse_name_addr(value) for value in values]


# -- Via -------------------------------------------------------------------------------------
class Via(NamedTuple):
    """One Via value: `SIP/2.0/UDP host:port;branch=...`; transport upper-cased."""

    transport: str
    host: str
    port: int | None = None
    params: Mapping[str, str | None] = _NO_PARAMS
    protocol: str = "SIP/2.0"

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def wants_rport(self) -> bool:
        """The client asked for rport (RFC 3581): `;rport` present, with or without a value."""
        return "rport" in self.params

    @property
    def rport(self) -> int | None:
        value = self.params.get("rport")
        return int(value) if value else None

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def ttl(self) -> int | None:
        value = self.params.get("ttl")
        return int(value) if value else None

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{_format_params(self.params)}"


def _small_int(value: str | None, limit: int) -> bool:
    return value is not None and ascii_digits(value) and len(value) <= 5 and int(value) <= limit


def _ttl_rport_ok(ttl: str | None, rport: str | None) -> bool:
    """A Via's `ttl` (absent as "", else 0-255) and `rport` (valueless, or a port)."""
    return (ttl == "" or _small_int(ttl, 255)) and (not rport or _small_int(rport, 65535))


@lru_cache(maxsize=4096)
def parse_via(value: str) -> Via:
    """One Via value (a header line may hold several: split it with `Headers.values`)."""
    match = _VIA_RE.fullmatch(value)
    if match is None:
        raise SipSyntaxError(f"malformed Via: {value[:80]!r}")
    name, version, transport, host, port_text, param_text = match.groups()
    if host[0] == "[":
        host, _ = _parse_host(host)
    params = _parse_header_params(param_text) if param_text else _NO_PARAMS
    lowered = param_text.lower()
    if ("ttl" in lowered or "rport" in lowered) and not _ttl_rport_ok(
        params.get("ttl", ""), params.get("rport", "")
    ):
        raise SipSyntaxError(f"bad Via ttl or rport: {value[:80]!r}")
    return Via(
        transport.upper(),
        host,
        None if port_text is None else _parse_port(port_text),
        params,
        "SIP/2.0" if name == "SIP" and version == "2.0" else f"{name.upper()}/{version}",
    )


def is_plain_via(value: str) -> bool:
    """Whether `value` is a well-formed Via of the common shape, checked by one match: True
    means `parse_via` would accept it; False means "ask `parse_via`" (it may still be valid).
    For validating a request's Via without building the parsed value nobody asks for."""
    match = _PLAIN_VIA_RE.fullmatch(value)
    if match is None:
        return False
    port, params = match.groups()
    if port is not None and int(port) > 65535:
        return False
    lowered = params.lower()
    if "ttl" not in lowered:
        if "rport=" not in lowered:
            return True
        # As the transaction layer stamps it (RFC 3581): one `;rport=<port>` and no other
        # rport before it, so it is the one parse_via checks.
        before, _, after = lowered.rpartition(";rport=")
        if "rport" not in before:
            return _small_int(after.partition(";")[0], 65535)
    # A stamped request has rport=<port> (RFC 3581): the checks parse_via makes, on the first
    # occurrence of each name as `Params.get` sees it.
    first: dict[str, str | None] = {}
    for part in lowered.split(";")[1:]:
        name, equals, raw = part.partition("=")
        first.setdefault(name, raw if equals else None)
    return _ttl_rport_ok(first.get("ttl", ""), first.get("rport", ""))


def top_via(headers: Headers) -> Via:
    """The first Via value of a message (where its response goes, its transaction's branch)."""
    line = headers.get("Via")
    values = [] if line is None else split_comma_values(line)
    if not values:
        raise SipSyntaxError("no Via")
    return parse_via(values[0])


# -- scalars ---------------------------------------------------------------------------------
class CSeq(NamedTuple):
    number: int
    method: str


def _digits(value: str, what: str) -> str:
    text = value.strip(" \t")
    if not ascii_digits(text):
        raise SipSyntaxError(f"{what} is not a number: {value[:30]!r}")
    return text.lstrip("0") or "0"


@lru_cache(maxsize=4096)
def parse_cseq(value: str) -> CSeq:
    """`0009 INVITE` -> CSeq(9, "INVITE"); the number must fit in 32 bits (RFC 3261 §8.1.1.5)."""
    match = _CSEQ_RE.fullmatch(value)
    if match is None:
        raise SipSyntaxError(f"malformed CSeq: {value[:60]!r}")
    digits, method = match.groups()
    if len(digits) > _MAX_SCALAR_DIGITS:
        digits = digits.lstrip("0") or "0"
        if len(digits) > _MAX_SCALAR_DIGITS:
            raise SipSyntaxError("CSeq number too large")
    number = int(digits)
    if number > MAX_CSEQ:
        raise SipSyntaxError("CSeq number too large")
    return CSeq(number, method)


def parse_max_forwards(value: str) -> int:
    """0-255; leading zeros allowed (`0068` is 68)."""
    digits = _digits(value, "Max-Forwards")
    if len(digits) > 3 or int(digits) > MAX_MAX_FORWARDS:
        raise SipSyntaxError("Max-Forwards out of range")
    return int(digits)


def parse_content_length(value: str) -> int:
    """A non-negative decimal; `-999` and `five` are errors, never used as a count."""
    digits = _digits(value, "Content-Length")
    if len(digits) > _MAX_SCALAR_DIGITS:
        raise SipSyntaxError("Content-Length too large")
    return int(digits)


def parse_expires(value: str, *, overlarge: int = DEFAULT_EXPIRES) -> int:
    """delta-seconds from Expires or a Contact `expires` parameter. A value above 2**32-1 is
    taken as `overlarge` (RFC 4475 §3.1.2.4: the default, 3600), not an error."""
    digits = _digits(value, "Expires")
    if len(digits) > _MAX_SCALAR_DIGITS or int(digits) > MAX_CSEQ:
        return overlarge
    return int(digits)


_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")


def parse_qvalue(value: str) -> float:
    """A Contact's `q` (RFC 3261 §25.1 qvalue: 0 to 1, at most three decimals). float() alone
    took "nan", "inf" and "2", and a NaN orders nothing."""
    text = value.strip()
    if _QVALUE.fullmatch(text) is None:
        raise SipSyntaxError(f"bad q value {value[:20]!r} (0 to 1, at most three decimals)")
    return float(text)


def parse_option_tags(value: str) -> list[str]:
    """`Require`/`Supported`/`Unsupported` values: comma-separated tokens."""
    tags = [tag.strip(" \t") for tag in value.split(",")]
    tags = [tag for tag in tags if tag]
    for tag in tags:
        if _TOKEN_RE.fullmatch(tag) is None:
            raise SipSyntaxError(f"bad option tag: {tag[:40]!r}")
    return tags


def is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None
