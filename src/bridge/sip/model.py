"""SIP messages as values: requests, responses, headers; serialization to bytes.

The parser (`bridge.sip.parser`) builds these from bytes; transactions, dialogs, the
registrar and the B2BUA read and build them. Header values are kept as text exactly as
received (after unfolding), so a message passes through unchanged unless a layer rewrites a
header on purpose; structured views (Via, name-addr, URI) are parsed on demand by
`bridge.sip.grammar`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

SIP_VERSION = "SIP/2.0"

# RFC 3261 §7.3.3 and later RFCs: compact forms -> canonical names.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

# Canonical spelling for the headers we write or compare often (others keep their spelling).
_CANONICAL: dict[str, str] = {
    name.lower(): name
    for name in (
        *COMPACT_FORMS.values(),
        "Accept",
        "Allow",
        "Authorization",
        "CSeq",
        "Date",
        "Diversion",
        "Expires",
        "Max-Forwards",
        "Min-Expires",
        "Min-SE",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "RAck",
        "Reason",
        "Record-Route",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "Server",
        "Unsupported",
        "User-Agent",
        "Warning",
        "WWW-Authenticate",
    )
}


def _canonical(name: str) -> str:
    lowered = name.lower()
    if len(lowered) == 1 and lowered in COMPACT_FORMS:
        return COMPACT_FORMS[lowered]
    return _CANONICAL.get(lowered, name)


# Every spelling seen so far -> its canonical name. Header lookups by name are the commonest
# operation of the stack; the names asked for are a small set of literals, so this stays
# small (bounded anyway: a peer sending endless new names only fills it up to the cap).
_NAME_CACHE: dict[str, str] = {}
_NAME_CACHE_MAX = 4096


def media_type(content_type: str) -> str:
    """The `type/subtype` of a Content-Type value, lower case, without its parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def canonical_name(name: str) -> str:
    """'v' -> 'Via', 'call-id' -> 'Call-ID', 'X-Custom' stays 'X-Custom'."""
    canonical = _NAME_CACHE.get(name)
    if canonical is None:
        canonical = _canonical(name)
        if len(_NAME_CACHE) < _NAME_CACHE_MAX:
            _NAME_CACHE[name] = canonical
    return canonical


# Names with one canonical spelling: every stored line of such a header is spelled exactly so.
_KNOWN = frozenset(_CANONICAL.values())


class Headers:
    """Ordered header fields; names compare case-insensitively and compact forms are expanded.

    Each entry is one header line as received; a line may hold several comma-separated values
    (Via, Contact, Route...). `values(name)` splits those where the grammar allows it."""

    # `_first`: each stored name's first value, built at the first lookup (or handed over by
    # the parser, which has it anyway) and kept up to date by the changes that are cheap to
    # follow (add, prepend, pop_first_value); the others drop it. Lookups are the commonest
    # operation of the stack: several per layer per message.
    __slots__ = ("_first", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(canonical_name(n), v) for n, v in items]
        self._first: dict[str, str] | None = None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    @classmethod
    def from_canonical(
        cls, items: list[tuple[str, str]], first: dict[str, str] | None = None
    ) -> Headers:
        """Headers over `items` whose names are already canonical (the parser's fast path: it
        canonicalizes each name once through a cache). The list is taken over, not copied;
        so is `first`, when given: `dict(reversed(items))`, which the parser has built."""
        headers = cls.__new__(cls)
        headers._items = items
        headers._first = first
        return headers

    def copy(self) -> Headers:
        copied = Headers()
        copied._items = list(self._items)
        return copied

    def first_values(self) -> dict[str, str]:
        """Each stored (canonical) name's first value. The caller must not change it."""
        first = self._first
        if first is None:
            first = self._first = dict(reversed(self._items))
        return first

    def get(self, name: str) -> str | None:
        """The first line's value for `name`, or None."""
        wanted = _NAME_CACHE.get(name) or canonical_name(name)
        first = self._first
        if first is None:
            first = self.first_values()
        # Stored names are canonical (every way in canonicalizes), so a known name compares
        # exactly; only other names need the case-insensitive pass.
        value = first.get(wanted)
        if value is not None or wanted in _KNOWN:
            return value
        lowered = wanted.lower()
        for key, value in self._items:
            if key.lower() == lowered:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every line's value for `name`, in order (not split on commas)."""
        wanted = _NAME_CACHE.get(name) or canonical_name(name)
        if wanted in _KNOWN:
            return [value for key, value in self._items if key == wanted]
        lowered = wanted.lower()
        return [value for key, value in self._items if key.lower() == lowered]

    def values(self, name: str) -> list[str]:
        """Every value for `name`, comma-separated lines split (quotes and <> respected)."""
        out: list[str] = []
        for line in self.get_all(name):
            out.extend(split_comma_values(line))
        return out

    def add(self, name: str, value: str) -> None:
        wanted = canonical_name(name)
        self._items.append((wanted, value))
        first = self._first
        if first is not None and wanted not in first:
            first[wanted] = value

    def _index_of(self, wanted: str) -> int:
        """Where the first line of canonical name `wanted` is, or -1."""
        items = self._items
        if wanted in _KNOWN:  # stored exactly so: no case-insensitive pass needed
            for index, (key, _) in enumerate(items):
                if key == wanted:
                    return index
            return -1
        lowered = wanted.lower()
        for index, (key, _) in enumerate(items):
            if key.lower() == lowered:
                return index
        return -1

    def prepend(self, name: str, value: str) -> None:
        """Add before every other line of the same name (a new top Via, Record-Route)."""
        wanted = canonical_name(name)
        index = self._index_of(wanted)
        if index < 0:
            self._items.append((wanted, value))
        else:
            self._items.insert(index, (wanted, value))
        if self._first is not None:
            self._first[wanted] = value  # now the first line spelled exactly so

    def set(self, name: str, value: str) -> None:
        """Replace every line of `name` with one line (in the first one's place)."""
        wanted = canonical_name(name)
        lowered = wanted.lower()
        out: list[tuple[str, str]] = []
        placed = False
        for key, existing in self._items:
            if key.lower() == lowered:
                if not placed:
                    out.append((wanted, value))
                    placed = True
                continue
            out.append((key, existing))
        if not placed:
            out.append((wanted, value))
        self._items = out
        self._first = None

    def remove(self, name: str) -> None:
        lowered = canonical_name(name).lower()
        self._items = [(k, v) for k, v in self._items if k.lower() != lowered]
        self._first = None

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first value of a multi-value header (e.g. the top Via)."""
        index = self._index_of(canonical_name(name))
        if index < 0:
            return None
        items = self._items
        key, line = items[index]
        parts = split_comma_values(line)
        if len(parts) <= 1:
            del items[index]
        else:
            items[index] = (key, ", ".join(parts[1:]))
        first = self._first
        if first is not None:
            # The line's own rest, or the next line spelled exactly as this one, if any.
            following = next((v for k, v in items[index:] if k == key), None)
            if following is None:
                del first[key]
            else:
                first[key] = following
        return parts[0] if parts else None


def split_comma_values(line: str) -> list[str]:
    """Split 'a, "x,y" <sip:b>, <sip:c;p=1,2>' at top-level commas."""
    # Fast paths, same result as the scan below: no comma at all (most lines), or nothing
    # that can hide one (most Via lines).
    if "," not in line:
        stripped = line.strip()
        return [stripped] if stripped else []
    if '"' not in line and "<" not in line:
        return [part for part in (piece.strip() for piece in line.split(",")) if part]
    parts = [part.strip() for part in _split_top_level(line, ",")]
    return [part for part in parts if part]


@dataclass(slots=True)
class SipRequest:
    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    @property
    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def to_bytes(self) -> bytes:
        return _serialize(self.start_line, self.headers, self.body)


@dataclass(slots=True)
class SipResponse:
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    @property
    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def to_bytes(self) -> bytes:
        return _serialize(self.start_line, self.headers, self.body)


SipMessage = SipRequest | SipResponse


@dataclass(frozen=True, slots=True)
class SerializedResponse:
    """A response as sent: its bytes, and the status the metrics count it by. What a server
    transaction re-sends for a retransmitted request, once it keeps no message objects."""

    status: int
    data: bytes

    @classmethod
    def of(cls, data: bytes) -> SerializedResponse:
        # Built from `SipResponse.to_bytes()`: `<version> <status> <reason>...`.
        return cls(int(data.split(b" ", 2)[1]), data)

    def to_bytes(self) -> bytes:
        return self.data


def _serialize(start_line: str, headers: Headers, body: bytes) -> bytes:
    """Start line, headers (Content-Length always written, last, from the real body), body."""
    lines = [start_line]
    lines.extend(f"{name}: {value}" for name, value in headers if name != "Content-Length")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


# Headers copied from a request into its responses (RFC 3261 §8.2.6.2).
_COPIED_TO_RESPONSE = ("Via", "From", "To", "Call-ID", "CSeq")


def make_response(
    request: SipRequest,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> SipResponse:
    """A response to `request`: Via/From/To/Call-ID/CSeq copied, To tag added when given and
    absent (never for 100 Trying)."""
    # One pass over the request's lines (stored names are canonical, and these five are
    # known names, so an exact match finds them), grouped in the order above.
    copied: dict[str, list[str]] = {name: [] for name in _COPIED_TO_RESPONSE}
    for name, value in request.headers._items:
        lines = copied.get(name)
        if lines is not None:
            lines.append(value)
    if to_tag and status > 100:
        copied["To"] = [
            value if "tag" in _params(value) else f"{value};tag={to_tag}" for value in copied["To"]
        ]
    items = [(name, value) for name, lines in copied.items() for value in lines]
    items.extend((canonical_name(name), value) for name, value in extra)
    return SipResponse(status, reason, Headers.from_canonical(items), body)


def _split_top_level(text: str, separator: str) -> list[str]:
    """`text` cut at every `separator` outside double quotes (with backslash escapes) and
    outside <...>; the pieces are returned as they are (not stripped)."""
    pieces: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    start = 0
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "<":
            depth += 1
        elif char == ">":
            depth = max(0, depth - 1)
        elif char == separator and depth == 0:
            pieces.append(text[start:index])
            start = index + 1
    pieces.append(text[start:])
    return pieces


def header_params(value: str) -> dict[str, str | None]:
    """The ';name=value' parameters of a header value outside <...> and quotes, names
    lower-cased: 'SIP/2.0/UDP h;branch=z9hG4bK1;rport' -> {'branch': 'z9hG4bK1', 'rport': None}.

    Enough for transaction matching (Via branch, To tag); `bridge.sip.grammar` has the full
    parsers."""
    return dict(_params(value))


@lru_cache(maxsize=4096)
def _params(value: str) -> dict[str, str | None]:
    # Cached: every layer asks for the same top Via's branch and the same tags of a message
    # (transaction, dialog, B2BUA), several times each. Callers must not change the result.
    params: dict[str, str | None] = {}
    # What precedes the first ';' is no parameter. Fast paths, same result as the scan for a
    # single well-formed value: nothing quoted or bracketed (a Via), or one name-addr with
    # nothing quoted after its '>' (From, To, Contact; a quoted display name is fine).
    if "<" not in value:
        segments = value.split(";")[1:] if '"' not in value else _split_top_level(value, ";")[1:]
    else:
        opening, closing = value.find("<"), value.rfind(">")
        semicolon = value.find(";")
        quotes = value.count('"')
        if (
            closing > opening
            and value.count("<") == 1
            and value.count(">") == 1  # another '>' after it would not close anything
            and not 0 <= semicolon < opening  # a ';' before the name-addr: the scan decides
            # No quotes, or one plain quoted display name before the '<'.
            and (quotes == 0 or (quotes == 2 and "\\" not in value and value.rfind('"') < opening))
        ):
            segments = value[closing + 1 :].split(";")[1:]
        else:
            segments = _split_top_level(value, ";")[1:]
    for segment in segments:
        name, sep, raw = segment.partition("=")
        key = name.strip().lower()
        if key:
            params.setdefault(key, raw.strip().strip('"') if sep else None)
    return params


def param_of(value: str | None, name: str) -> str | None:
    """One parameter of a header value (None when absent or valueless)."""
    return None if value is None else _params(value).get(name.lower())
