"""SIP message parsing, sans-I/O: bytes in, `SipRequest`/`SipResponse` or `SipParseError` out.

- `parse_message(datagram)` for UDP: one message per datagram, body framed by Content-Length
  when present (trailing octets ignored, RFC 3261 §18.3), else the rest of the datagram.
- `StreamFramer` for TCP/TLS: messages cut out of a byte stream; Content-Length required; a
  framing error marks the framer `broken` (the connection must be closed); CRLF keep-alives
  (RFC 5626 §3.5.1) counted; header and body sizes bounded.
- `validate_request(request)`: the UAS checks of RFC 3261 §8.2, as an error value;
  `validate_response(response)` the matching checks before a response is used.

Parsing is eager only where the transport must decide: the start line, the header split
(names canonicalized, folding undone, values kept as text), Content-Length framing and CSeq.
Structured views (Via, name-addr, URI) are built on demand through `bridge.sip.grammar`;
their syntax is checked by the validate functions, which every request passes through before
it is acted on. Header bytes are decoded as UTF-8 with `surrogateescape`, the codec the model
serializes with, so any byte sequence survives a parse/serialize round trip.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from bridge.sip.grammar import (
    SipSyntaxError,
    is_plain_name_addr,
    is_plain_via,
    is_token,
    parse_contacts,
    parse_content_length,
    parse_cseq,
    parse_expires,
    parse_max_forwards,
    parse_name_addr,
    parse_option_tags,
    parse_uri,
    parse_via,
    top_via,
)
from bridge.sip.model import (
    Headers,
    SipMessage,
    SipRequest,
    SipResponse,
    canonical_name,
    make_response,
    media_type,
    split_comma_values,
)
from bridge.text import ascii_digits

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024

# Methods we answer (the registrar and the B2BUA's dialog handling). Conservative on purpose:
# a method listed in Allow is a promise to handle it: UPDATE (session refreshes, RFC 3311 /
# 4028), INFO and PRACK (RFC 3262) are handled inside calls. REFER, NOTIFY, SUBSCRIBE,
# MESSAGE and PUBLISH are known, so they get 405 with this list, not 501.
ALLOWED_METHODS: tuple[str, ...] = (
    "INVITE",
    "ACK",
    "CANCEL",
    "BYE",
    "OPTIONS",
    "REGISTER",
    "UPDATE",
    "INFO",
    "PRACK",
)
_OTHER_KNOWN = ("SUBSCRIBE", "NOTIFY", "PUBLISH", "REFER", "MESSAGE")
KNOWN_METHODS: frozenset[str] = frozenset((*ALLOWED_METHODS, *_OTHER_KNOWN))
_ALLOW = (("Allow", ", ".join(ALLOWED_METHODS)),)  # with 405 and 501
# Option tags we honour in Require. `100rel`: a caller that requires it gets its provisional
# responses reliably (RFC 3262, bridge.sip.b2bua `_provisional`; PRACK in ALLOWED_METHODS).
# Not `replaces` (RFC 3891): no call is ever replaced, so an INVITE that requires it gets 420
# (it was listed, and such an INVITE became a new call beside the one it meant to replace).
SUPPORTED_OPTIONS: frozenset[str] = frozenset({"path", "outbound", "timer", "100rel"})
SUPPORTED_URI_SCHEMES: frozenset[str] = frozenset({"sip", "sips", "tel"})

_REASONS = {
    400: "Bad Request",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    501: "Not Implemented",
    505: "Version Not Supported",
    513: "Message Too Large",
}
_MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")
_MANDATORY_SET = frozenset(_MANDATORY)
_SINGLE = frozenset({"From", "To", "Call-ID", "CSeq", "Max-Forwards"})
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_REQUEST_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\x00-\x20\x7f<>\"]+")
# Raw header name (with any LWS before the colon) -> canonical name, for names seen before.
# Bounded, so a peer inventing names cannot grow it without limit.
_NAME_CACHE: dict[str, str] = {}
_NAME_CACHE_MAX = 2048


class SipParseError(Exception):
    """What to do with a message we cannot take: `status` is the response to send (400 with a
    reason naming the fault, 505, ...), or None to drop it silently (responses, ACKs).

    `partial` is the request as far as it was readable (start line and Via/From/To/Call-ID/
    CSeq present), enough for `response()`; None when nothing can be answered. `headers` are
    extra header fields for the response (Allow, Unsupported, Warning)."""

    def __init__(
        self,
        status: int | None,
        reason: str,
        partial: SipRequest | None = None,
        headers: Iterable[tuple[str, str]] = (),
        *,
        detail: str = "",
    ) -> None:
        super().__init__(reason if not detail else f"{reason}: {detail}")
        self.status = status
        self.reason = reason
        self.partial = partial
        self.headers: tuple[tuple[str, str], ...] = tuple(headers)
        self.detail = detail

    def __repr__(self) -> str:
        return f"SipParseError({self.status!r}, {self.reason!r}, detail={self.detail!r})"

    def response(self, *, to_tag: str | None = None) -> SipResponse | None:
        """The response to send, or None when the message is to be dropped."""
        if self.status is None or self.partial is None:
            return None
        return make_response(
            self.partial, self.status, self.reason, to_tag=to_tag, extra=self.headers
        )


class _Head:
    """A parsed start line and header block, before framing decides about the body."""

    __slots__ = (
        "content_lengths",
        "error",
        "first",
        "headers",
        "is_request",
        "method",
        "reason",
        "recognized",
        "status",
        "uri",
        "version",
    )

    def __init__(self) -> None:
        self.is_request = True
        self.recognized = False  # the start line has the shape of a SIP start line
        self.method = ""
        self.uri = ""
        self.version = ""
        self.status = 0
        self.reason = ""
        self.headers = _EMPTY_HEADERS
        self.first: dict[str, str] = {}  # canonical name -> its first value
        self.content_lengths: list[str] = []
        self.error: tuple[int | None, str] | None = None

    def fail(self, status: int | None, detail: str) -> SipParseError:
        """The error for this message: answered with `status` when it is a request we can
        answer (never an ACK, never a response), else dropped."""
        if not self.is_request or self.method == "ACK" or status is None:
            kind = "Bad Request" if self.is_request else "Bad Response"
            return SipParseError(None, f"{kind} ({detail})", detail=detail)
        reason = f"Bad Request ({detail})" if status == 400 else _REASONS.get(status, "Error")
        return SipParseError(status, reason, self._partial(), detail=detail)

    def _partial(self) -> SipRequest | None:
        if not self.recognized or not all(name in self.first for name in _MANDATORY):
            return None
        return SipRequest(self.method, self.uri, self.headers, b"", self.version or "SIP/2.0")

    def build(self, body: bytes) -> SipMessage:
        if self.is_request:
            return SipRequest(self.method, self.uri, self.headers, body, self.version)
        return SipResponse(self.status, self.reason, self.headers, body, self.version)


_EMPTY_HEADERS = Headers.from_canonical([])


def _header_name(raw: str) -> str | None:
    """The canonical name for a raw name (LWS before the colon allowed), None if not a token."""
    name = raw.rstrip(" \t")
    if not is_token(name):
        return None
    canonical = canonical_name(name)
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[raw] = canonical
    return canonical


def _parse_head(text: str, newline: str) -> _Head:
    """Start line and header lines. Errors are recorded on the head, not raised, so that the
    header can still give a partial request to answer with."""
    head = _Head()
    if newline != "\r\n":
        text = text.replace("\n", "\r\n")  # bare-LF messages (checked to hold no CR)
    lines = text.split("\r\n")
    # A bare CR or LF left inside a line would let a value smuggle in a header line when the
    # message is re-serialized.
    if text.count("\n") != len(lines) - 1 or text.count("\r") != len(lines) - 1:
        head.error = (400, "bare CR or LF in the header")
    _parse_start_line(head, lines[0])
    if "\r\n " in text or "\r\n\t" in text:
        lines, line_error = _unfold(lines)
    else:
        line_error = None
    items: list[tuple[str, str]] = []
    append = items.append
    cache = _NAME_CACHE
    for index in range(1, len(lines)):
        raw, colon, value = lines[index].partition(":")
        name = cache.get(raw)
        if name is None:
            name = _header_name(raw)
            if name is None:
                line_error = line_error or "malformed header line"
                continue
        if not colon:
            line_error = line_error or "malformed header line"
            continue
        append((name, value.strip(" \t")))
    head.first = dict(reversed(items))
    head.headers = Headers.from_canonical(items, head.first)
    if "Content-Length" in head.first:
        head.content_lengths = [value for name, value in items if name == "Content-Length"]
    if head.error is None and line_error is not None:
        head.error = (400, line_error)
    return head


def _unfold(lines: list[str]) -> tuple[list[str], str | None]:
    """Join continuation lines (RFC 3261 §7.3.1) to the line they continue, with one SP."""
    out = [lines[0]]
    error: str | None = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if len(out) == 1:
                error = error or "continuation line without a header"
                continue
            more = line.strip(" \t")
            previous = out[-1].rstrip(" \t")
            has_value = bool(previous.partition(":")[2].strip(" \t"))
            out[-1] = f"{previous} {more}" if has_value and more else previous + more
        else:
            out.append(line)
    return out, error


def _parse_start_line(head: _Head, line: str) -> None:
    if line[:4].upper() == "SIP/":
        head.is_request = False
        head.recognized = True  # a status line: even a bad one does not desynchronize a stream
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        head.version, head.reason = version, reason
        if version != "SIP/2.0" and version.upper() != "SIP/2.0":
            head.error = (None, "unsupported SIP version")
        elif len(code) == 3 and ascii_digits(code) and "1" <= code[0] <= "6":
            head.status = int(code)
        else:
            head.error = (None, "status code out of range")
        return
    parts = line.split(" ")
    problem: str | None = None
    if len(parts) != 3 or "" in parts:
        # RFC 4475 lwsstart/trws: exactly one SP between the three elements and none at the
        # end. Liberal recovery only to name the fields for the 400, never to accept.
        parts = line.split()
        if len(parts) > 3 and is_token(parts[0]) and parts[-1].upper() == "SIP/2.0":
            # RFC 4475 lwsruri: whitespace inside the Request-URI. Still a request: a 400.
            head.method, head.uri, head.version = parts[0], " ".join(parts[1:-1]), parts[-1]
            head.recognized = True
            head.error = (400, "whitespace in the Request-URI")
            return
        if len(parts) != 3:
            head.error = (400, "malformed request line")
            return
        trailing = line != line.rstrip()
        problem = f"{'trailing' if trailing else 'extra'} whitespace in request line"
    method, uri, version = parts
    if not is_token(method):
        head.error = (400, "malformed method")
        return
    head.method, head.uri, head.version = method, uri, version
    head.recognized = True
    if problem is not None:
        head.error = (400, problem)
    elif version != "SIP/2.0" and version.upper() != "SIP/2.0":
        if _VERSION_RE.fullmatch(version) is None:
            head.error = (400, "malformed SIP version")
        else:
            head.error = (505, "unsupported SIP version")
    elif uri[0] == "<":
        head.error = (400, "Request-URI enclosed in <>")
    elif _REQUEST_URI_RE.fullmatch(uri) is None:
        head.error = (400, "malformed Request-URI")
    elif "?" in uri.rpartition("@")[2] and uri[:4].lower() in ("sip:", "sips"):
        # RFC 3261 §19.1.1: no headers in a Request-URI (RFC 4475 escruri); a "?" in the
        # user part is allowed (RFC 4475 intmeth).
        head.error = (400, "headers in the Request-URI")


def _check_fields(head: _Head) -> SipParseError | None:
    """CSeq, the one header value checked eagerly: a response cannot be matched to its
    transaction without it, and RFC 4475 scalar02/scalarlg/mismatch01 are refused on it."""
    first = head.first
    if not head.is_request:
        missing = [name for name in _MANDATORY if name not in first]
        if missing:
            return head.fail(None, f"missing {', '.join(missing)}")
    cseq_line = first.get("CSeq")
    if cseq_line is not None:
        try:
            cseq = parse_cseq(cseq_line)
        except SipSyntaxError as exc:
            too_large = "too large" in str(exc)
            return head.fail(400, "CSeq number too large" if too_large else "malformed CSeq")
        if head.is_request and cseq.method != head.method and head.method in KNOWN_METHODS:
            # (an unknown method gets its 501 first: RFC 4475 mismatch02)
            return head.fail(400, "CSeq method does not match the request method")
    return None


def _content_length(head: _Head) -> int | SipParseError | None:
    """The one Content-Length of the message, None if absent, or the framing error."""
    values = head.content_lengths
    if not values:
        return None
    lengths: set[int] = set()
    for value in values:
        try:
            lengths.add(parse_content_length(value))
        except SipSyntaxError:
            text = value.strip(" \t")
            negative = text.startswith("-") and ascii_digits(text[1:])
            if negative:
                return head.fail(400, "negative Content-Length")
            return head.fail(400, "invalid Content-Length")
    if len(lengths) > 1:
        return head.fail(400, "conflicting Content-Length values")
    return lengths.pop()


def parse_message(data: bytes) -> SipMessage:
    """Parse one UDP datagram. Raises SipParseError (and nothing else) when it cannot be taken."""
    data = bytes(data)
    start = 0
    # RFC 3261 §7.5: CRLFs before the start line are ignored.
    while data.startswith(b"\r\n", start):
        start += 2
    if start >= len(data):
        raise SipParseError(None, "empty datagram", detail="only CRLF")
    newline = "\r\n"
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        body_start = end + 4
    else:
        # Liberal: a message written with bare LF line ends throughout (never mixed).
        end = data.find(b"\n\n", start)
        if end >= 0 and b"\r" not in data[start:end]:
            newline, body_start = "\n", end + 2
        else:
            end, body_start = len(data.rstrip(b"\r\n")), -1
    if end - start > MAX_HEADER_BYTES:
        raise SipParseError(None, "headers too large", detail=f"over {MAX_HEADER_BYTES} bytes")
    head = _parse_head(data[start:end].decode("utf-8", "surrogateescape"), newline)
    if head.error is not None:
        raise head.fail(*head.error)
    if body_start < 0:
        raise head.fail(400, "no empty line after the header")
    length = _content_length(head)
    if isinstance(length, SipParseError):
        raise length
    available = len(data) - body_start
    if length is None:
        # No Content-Length over UDP (RFC 2543 style, RFC 4475 inv2543): the rest is the body.
        body = data[body_start:]
    elif length > available:
        raise head.fail(400, "Content-Length larger than the message")
    else:
        body = data[body_start : body_start + length]
    error = _check_fields(head)
    if error is not None:
        raise error
    return head.build(body)


class StreamFramer:
    """Cuts SIP messages out of a TCP/TLS byte stream, across any split of the bytes.

    `feed()` returns the complete messages and the per-message errors (a SipParseError for a
    message that was framed correctly but is malformed: answer it, keep the connection).
    When the framing itself fails (no, bad, negative or conflicting Content-Length; header or
    body over the limits; no recognizable start line), the error is returned once and
    `broken` is set: close the connection, nothing more is parsed.

    CRLF keep-alives between messages (RFC 5626 §3.5.1) are skipped and counted: `pings`
    (CRLFCRLF, to be answered with one CRLF) and `pongs` (a lone CRLF)."""

    def __init__(
        self, *, max_header_bytes: int = MAX_HEADER_BYTES, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.broken = False
        self.pings = 0
        self.pongs = 0
        self._buffer = bytearray()
        self._scanned = 0  # bytes already searched for the blank line (no quadratic rescans)
        self._head: _Head | None = None
        self._body_start = 0
        self._length = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[SipMessage | SipParseError]:
        if self.broken:
            return []
        self._buffer += data
        out: list[SipMessage | SipParseError] = []
        while not self.broken:
            item = self._next()
            if item is None:
                break
            out.append(item)
        if self.broken:
            self._buffer.clear()
        return out

    def _break(self, error: SipParseError) -> SipParseError:
        self.broken = True
        return error

    def _next(self) -> SipMessage | SipParseError | None:
        buffer = self._buffer
        if self._head is None:
            while buffer[:2] == b"\r\n":
                if buffer[:4] == b"\r\n\r\n":
                    self.pings += 1
                    del buffer[:4]
                elif buffer == b"\r\n\r":
                    return None  # most likely a ping still arriving
                else:
                    # A lone CRLF: a pong, or a stray CRLF before a start line (§7.5).
                    self.pongs += 1
                    del buffer[:2]
            if not buffer:
                return None
            end = buffer.find(b"\r\n\r\n", max(0, self._scanned - 3))
            if end < 0 or end > self.max_header_bytes:
                self._scanned = len(buffer)
                if len(buffer) > self.max_header_bytes:
                    limit = self.max_header_bytes
                    return self._break(
                        SipParseError(513, "Message Too Large", detail=f"header over {limit} bytes")
                    )
                return None
            self._scanned = 0
            head = _parse_head(bytes(buffer[:end]).decode("utf-8", "surrogateescape"), "\r\n")
            if not head.recognized and head.error is not None:
                return self._break(head.fail(*head.error))
            length = _content_length(head)
            if isinstance(length, SipParseError):
                return self._break(length)
            if length is None:
                # RFC 3261 §18.3: Content-Length is mandatory on streams; without it the end of
                # the message is unknowable.
                return self._break(head.fail(400, "missing Content-Length"))
            if length > self.max_body_bytes:
                return self._break(head.fail(513, f"body over {self.max_body_bytes} bytes"))
            self._head, self._body_start, self._length = head, end + 4, length
        end = self._body_start + self._length
        if len(buffer) < end:
            return None
        head, self._head = self._head, None
        body = bytes(buffer[self._body_start : end])
        del buffer[:end]
        if head.error is not None:
            return head.fail(*head.error)
        return _check_fields(head) or head.build(body)


# -- §8.2 UAS checks -------------------------------------------------------------------------
def _accepts_sdp(values: list[str]) -> bool:
    """Whether Accept values admit application/sdp. An empty Accept admits nothing (RFC 3261
    §20.1); q=0 excludes a range."""
    for value in values:
        for media_range in split_comma_values(value):
            kind, _, params = media_range.partition(";")
            kind = kind.strip(" \t").lower()
            if kind not in ("application/sdp", "application/*", "*/*"):
                continue
            q = "1"
            for param in params.split(";"):
                key, _, raw = param.partition("=")
                if key.strip(" \t").lower() == "q":
                    q = raw.strip(" \t")
            if q.rstrip("0").rstrip(".") not in ("0", ""):
                return True
    return False


def _problem(request: SipRequest) -> tuple[int, str, tuple[tuple[str, str], ...]] | None:
    """The first reason to refuse `request`, in RFC 3261 §8.2 order, or None."""
    # One pass over the headers (their names are canonical, so plain comparisons do), instead
    # of a case-insensitive Headers.get per check.
    items = list(request.headers)
    first = request.headers.first_values()
    if not first.keys() >= _MANDATORY_SET:
        missing = [name for name in _MANDATORY if name not in first]
        return 400, f"Bad Request (missing {', '.join(missing)})", ()
    if len(first) != len(items):  # some name repeats: is it one that may appear only once?
        seen: set[str] = set()
        for name, _ in items:
            if name in _SINGLE:
                if name in seen:
                    return 400, f"Bad Request (more than one {name})", ()
                seen.add(name)
    try:
        cseq = parse_cseq(first["CSeq"])
    except SipSyntaxError as exc:
        fault = "CSeq number too large" if "too large" in str(exc) else "malformed CSeq"
        return 400, f"Bad Request ({fault})", ()
    checking = "Via"
    try:
        via = split_comma_values(first["Via"])[0]
        if not is_plain_via(via):
            parse_via(via)
        checking = "From"
        if not is_plain_name_addr(first["From"]):
            parse_name_addr(first["From"])
        checking = "To"
        if not is_plain_name_addr(first["To"]):
            parse_name_addr(first["To"])
        checking = "Contact"
        if "Contact" in first:
            contacts = [("Contact", value) for name, value in items if name == "Contact"]
            parse_contacts(Headers.from_canonical(contacts))
    except (SipSyntaxError, IndexError):
        return 400, f"Bad Request (malformed {checking})", ()
    call_id = first["Call-ID"]
    if not call_id or " " in call_id or "\t" in call_id:
        return 400, "Bad Request (malformed Call-ID)", ()
    if request.method not in KNOWN_METHODS:  # before the CSeq check: RFC 4475 mismatch02
        return 501, "Not Implemented", _ALLOW
    if cseq.method != request.method:
        return 400, "Bad Request (CSeq method does not match the request method)", ()
    max_forwards = first.get("Max-Forwards")
    if max_forwards is not None:
        # RFC 4475 §3.1.2.4 allows treating an overlarge Max-Forwards as absent; we answer 400:
        # a UAS never forwards, so nothing is lost by refusing a peer that sends garbage.
        try:
            parse_max_forwards(max_forwards)
        except SipSyntaxError:
            return 400, "Bad Request (Max-Forwards out of range)", ()
    if "Expires" in first:
        try:
            for name, value in items:
                if name == "Expires":
                    parse_expires(value)  # an overlarge value is the default, not an error
        except SipSyntaxError:
            return 400, "Bad Request (malformed Expires)", ()
    if request.method not in KNOWN_METHODS:
        return 501, "Not Implemented", _ALLOW
    if request.method not in ALLOWED_METHODS:
        return 405, "Method Not Allowed", _ALLOW
    try:
        scheme = parse_uri(request.uri).scheme
    except SipSyntaxError:
        return 400, "Bad Request (malformed Request-URI)", ()
    if scheme not in SUPPORTED_URI_SCHEMES:
        return 416, "Unsupported URI Scheme", ()
    if "Require" in first and request.method not in ("ACK", "CANCEL"):
        # RFC 3261 §8.2.2.3. Proxy-Require is for proxies; a UAS ignores it.
        try:
            tags = [tag for n, line in items if n == "Require" for tag in parse_option_tags(line)]
        except SipSyntaxError:
            return 400, "Bad Request (malformed Require)", ()
        unsupported = [tag for tag in tags if tag.lower() not in SUPPORTED_OPTIONS]
        if unsupported:
            return 420, "Bad Extension", (("Unsupported", ", ".join(unsupported)),)
    # Our answer (or offer) can only be SDP (RFC 4475 sdp01).
    accept = [value for name, value in items if name == "Accept"]
    if request.method == "INVITE" and accept and not _accepts_sdp(accept):
        return 406, "Not Acceptable", ()
    if request.method in ("INVITE", "UPDATE") and request.body:
        # A body we cannot read: 415 naming what we can (RFC 3261 §8.2.3, RFC 4475 invut).
        # multipart bodies (SDP beside ISUP, from SIP-I trunks) go on: the service takes
        # their SDP part (bridge.sip.bodies, RFC 5621), or answers 415/400 for what it
        # cannot take; a missing Content-Type is taken as SDP (RFC 2543 peers).
        kind = media_type(first.get("Content-Type") or "application/sdp")
        # RFC 3261 §20.15: m-type SLASH m-subtype, both tokens; not a type at all: a bad header
        m_type, slash, m_subtype = kind.partition("/")
        if not (slash and is_token(m_type) and is_token(m_subtype)):
            return 400, "Bad Request (malformed Content-Type)", ()
        if kind != "application/sdp" and not kind.startswith("multipart/"):
            return 415, "Unsupported Media Type", (("Accept", "application/sdp"),)
        # A compressed body (gzip) we cannot read either: 415 with Accept-Encoding (§8.2.3;
        # it went on to the engine or the phone as it came).
        encoding = first.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            return 415, "Unsupported Media Type", (("Accept-Encoding", "identity"),)
    return None


def validate_request(request: SipRequest, *, warn_agent: str = "bridge") -> SipParseError | None:
    """The first §8.2 check `request` fails, as the error to answer with, or None.

    Order: mandatory and single headers, their syntax, CSeq method (400); method (501/405 +
    Allow); Request-URI scheme (416); Require (420 + Unsupported); Accept on INVITE (406 +
    Warning 399); the body's type on INVITE and UPDATE (415 + Accept), and its encoding (415 +
    Accept-Encoding). An ACK is never
    answered: its errors come back with status None."""
    problem = _problem(request)
    if problem is None:
        return None
    status, reason, extra = problem
    if request.method == "ACK":
        return SipParseError(None, reason, detail="ACK is never answered")
    if status == 406:
        extra = (("Warning", f'399 {warn_agent} "Only application/sdp is offered or answered"'),)
    return SipParseError(status, reason, request, extra)


def validate_response(response: SipResponse) -> SipParseError | None:
    """Whether a parsed response can be used: its top Via, From, To and CSeq must parse. A bad
    response is never answered, so the error always has status None (drop it)."""
    headers = response.headers
    for name, check in (
        ("Via", lambda: top_via(headers)),
        ("From", lambda: parse_name_addr(headers.get("From") or "")),
        ("To", lambda: parse_name_addr(headers.get("To") or "")),
        ("CSeq", lambda: parse_cseq(headers.get("CSeq") or "")),
    ):
        try:
            check()
        except SipSyntaxError:
            return SipParseError(None, f"Bad Response (malformed {name})")
    return None
