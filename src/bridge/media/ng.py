"""rtpengine's ng control protocol: bencode, and a small asyncio client over UDP.

A request is `<cookie> <bencoded dict>` in one datagram; the reply repeats the cookie
(rtpengine's `docs/ng_control_protocol.md`, in 10.5 the README's "The ng Control Protocol").
rtpengine remembers the replies it sent by cookie for a while, so a request sent again with the
same cookie is answered again and done once: that is what makes retransmission safe.

- `bencode` / `bdecode`: the dictionary format. Byte strings decode to `str` (UTF-8) or, when
  they are not valid UTF-8, to `bytes`; integers to `int`; lists to `list`; dictionaries to
  `dict` with string keys. The decoder is iterative, bounded in depth (`MAX_DEPTH`), in the
  digits of an integer or a length, and never reads past its input: anything malformed raises
  `BencodeError` (a `ValueError`), nothing else.
- `NgClient`: one UDP socket toward one rtpengine, a fresh random cookie per request, the
  same datagram sent again on each `interval` without a reply (`retries` times), replies
  matched by cookie; stray, late and duplicate replies are counted (`stray`) and dropped.
  `result: error` raises `NgErrorReply` with rtpengine's `error-reason`; no reply at all
  `NgTimeout`; a reply that is not a bencoded dictionary `NgProtocolError`; a request on (or
  pending across) `close()` `NgClosed`. All are `NgError`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from typing import Any

import structlog

__all__ = [
    "MAX_DEPTH",
    "BencodeError",
    "NgClient",
    "NgClosed",
    "NgError",
    "NgErrorReply",
    "NgProtocolError",
    "NgTimeout",
    "bdecode",
    "bencode",
]

log = structlog.get_logger("bridge.media.ng")

MAX_DEPTH = 64
"""Deepest nesting of lists and dictionaries `bdecode` accepts (rtpengine's replies nest 6)."""
_MAX_DIGITS = 20  # an integer's or a length's digits (2**64 has 20)
_INTEGER = re.compile(rb"-?(?:0|[1-9][0-9]*)\Z")
_LENGTH = re.compile(rb"(?:0|[1-9][0-9]*)\Z")


class BencodeError(ValueError):
    """The bytes are not one well-formed bencoded value."""


# -- bencode -----------------------------------------------------------------------------------
def bencode(value: Any) -> bytes:
    """`str` (as UTF-8), `bytes`, `int`, lists/tuples and dicts with `str`/`bytes` keys (written
    in sorted order, as the format asks). Raises `TypeError` for anything else (`bool`, `None`,
    floats) and `ValueError` past `MAX_DEPTH`."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _encode(value: Any, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out += b"%d:" % len(raw)
        out += raw
    elif isinstance(value, bool):
        raise TypeError("cannot bencode a bool (say 0/1 or a string)")
    elif isinstance(value, int):
        out += b"i%de" % value
    elif isinstance(value, list | tuple):
        out += b"l"
        for item in value:
            _encode(item, out, depth + 1)
        out += b"e"
    elif isinstance(value, dict):
        items = []
        for key, item in value.items():
            if isinstance(key, str):
                key = key.encode()
            elif not isinstance(key, bytes):
                raise TypeError(f"cannot bencode a {type(key).__name__} key")
            items.append((key, item))
        items.sort(key=lambda pair: pair[0])
        out += b"d"
        for key, item in items:
            out += b"%d:" % len(key)
            out += key
            _encode(item, out, depth + 1)
        out += b"e"
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


_NO_KEY = object()


class _Dict:
    __slots__ = ("items", "key")

    def __init__(self) -> None:
        self.items: dict[Any, Any] = {}
        self.key: Any = _NO_KEY


def _text(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def bdecode(data: bytes | bytearray | memoryview, *, max_depth: int = MAX_DEPTH) -> Any:
    """The one bencoded value `data` holds (see the module doc); `BencodeError` otherwise."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BencodeError(f"cannot decode a {type(data).__name__}")
    data = bytes(data)
    size = len(data)
    i = 0
    stack: list[list[Any] | _Dict] = []
    while True:
        if i >= size:
            raise BencodeError("truncated" if size else "empty input")
        head = data[i]
        value: Any
        if head == 0x65:  # e: the end of the innermost list or dictionary
            if not stack:
                raise BencodeError(f"an end marker outside a list or dictionary at {i}")
            frame = stack.pop()
            if isinstance(frame, _Dict):
                if frame.key is not _NO_KEY:
                    raise BencodeError(f"a dictionary key without a value before {i}")
                value = frame.items
            else:
                value = frame
            i += 1
        elif head in (0x6C, 0x64):  # l, d
            if len(stack) >= max_depth:
                raise BencodeError(f"nested deeper than {max_depth}")
            stack.append([] if head == 0x6C else _Dict())
            i += 1
            continue
        elif head == 0x69:  # i<digits>e
            end = data.find(b"e", i + 1, i + 2 + _MAX_DIGITS + 1)
            if end < 0:
                raise BencodeError(f"an unterminated or overlong integer at {i}")
            digits = data[i + 1 : end]
            if not _INTEGER.match(digits) or digits == b"-0":
                raise BencodeError(f"a malformed integer at {i}")
            value = int(digits)
            i = end + 1
        elif 0x30 <= head <= 0x39:  # <length>:<bytes>
            colon = data.find(b":", i, i + _MAX_DIGITS + 1)
            if colon < 0:
                raise BencodeError(f"an unterminated or overlong string length at {i}")
            digits = data[i:colon]
            if not _LENGTH.match(digits):
                raise BencodeError(f"a malformed string length at {i}")
            length = int(digits)
            start = colon + 1
            if start + length > size:
                raise BencodeError(f"a string of {length} bytes runs past the end at {i}")
            value = _text(data[start : start + length])
            i = start + length
        else:
            raise BencodeError(f"unexpected byte {bytes([head])!r} at {i}")
        # a complete value: the result, a list item, a dictionary key or a dictionary value
        if not stack:
            if i != size:
                raise BencodeError(f"{size - i} bytes after the value")
            return value
        top = stack[-1]
        if isinstance(top, list):
            top.append(value)
        elif top.key is _NO_KEY:
            if not isinstance(value, str | bytes):
                raise BencodeError(f"a dictionary key that is not a string before {i}")
            if value in top.items:
                raise BencodeError(f"a repeated dictionary key {value!r}")
            top.key = value
        else:
            top.items[top.key] = value
            top.key = _NO_KEY


# -- the client --------------------------------------------------------------------------------
class NgError(Exception):
    """An ng request that did not succeed."""


class NgTimeout(NgError):
    """No reply after every retransmission."""


class NgClosed(NgError):
    """The client was closed before (or while) the request was made."""


class NgProtocolError(NgError):
    """A reply to the request that is not a bencoded dictionary with a known `result`."""


class NgErrorReply(NgError):
    """rtpengine answered `result: error` (or `load limit`): `reason` is its `error-reason`."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(f"rtpengine {command}: {reason}")
        self.command = command
        self.reason = reason


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, client: NgClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.client._received(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable (nobody listens yet, or the daemon restarts): the next
        # retransmission may find it; the request times out otherwise.
        log.debug("ng_socket_error", error=str(exc))


class NgClient:
    """One UDP socket toward one rtpengine's `--listen-ng` address (see the module doc).

    `timeout` is the wait for a reply before the request is sent again with the same cookie,
    `retries` how many times it is sent again: a request fails after `(retries + 1) *
    timeout` seconds without a reply."""

    def __init__(self, host: str, port: int, *, timeout: float = 1.0, retries: int = 2) -> None:
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be positive and retries not negative")
        self.address = (host, port)
        self.timeout = timeout
        self.retries = retries
        self.stray = 0  # datagrams that answered no pending request (late, duplicate, foreign)
        self.retransmissions = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._pending: dict[bytes, asyncio.Future[bytes]] = {}
        self._closed = False

    async def start(self) -> NgClient:
        if self._transport is None and not self._closed:
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self), remote_addr=self.address
            )
            self._transport = transport
        return self

    async def __aenter__(self) -> NgClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    async def request(self, command: str, **fields: Any) -> dict[str, Any]:
        """Send `{"command": command, **fields}`, return the reply dictionary (`result` ok or
        pong). Keyword names take `_` for `-` (`call_id` is sent as `call-id`); for keys with
        spaces, pass a dict as `message(...)`."""
        message = {"command": command} | {k.replace("_", "-"): v for k, v in fields.items()}
        return await self.send(message)

    async def send(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request dictionary as it is (it must hold `command`)."""
        if self._closed:
            raise NgClosed("the ng client is closed")
        await self.start()
        assert self._transport is not None
        command = str(message.get("command", "?"))
        body = bencode(message)
        cookie = secrets.token_hex(8).encode()
        while cookie in self._pending:  # pragma: no cover - 64 random bits
            cookie = secrets.token_hex(8).encode()
        datagram = cookie + b" " + body
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[cookie] = future
        try:
            for attempt in range(self.retries + 1):
                if self._closed:
                    raise NgClosed("the ng client was closed")
                if attempt:
                    self.retransmissions += 1
                    log.info("ng_retransmit", command=command, attempt=attempt)
                self._transport.sendto(datagram)
                done, _ = await asyncio.wait({future}, timeout=self.timeout)
                if done:
                    break
            else:
                raise NgTimeout(
                    f"rtpengine {command}: no reply from {self.address[0]}:{self.address[1]} "
                    f"in {(self.retries + 1) * self.timeout:g} s"
                )
            raw = future.result()
        finally:
            self._pending.pop(cookie, None)
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # retrieved: no "never retrieved" warning when we raised
        try:
            reply = bdecode(raw)
        except BencodeError as exc:
            raise NgProtocolError(f"rtpengine {command}: a malformed reply ({exc})") from None
        if not isinstance(reply, dict):
            raise NgProtocolError(f"rtpengine {command}: the reply is not a dictionary")
        result = reply.get("result")
        if result in ("ok", "pong"):
            if "warning" in reply:
                log.info("ng_warning", command=command, warning=reply["warning"])
            return reply
        if result in ("error", "load limit"):
            reason = reply.get("error-reason") or reply.get("message") or str(result)
            raise NgErrorReply(command, str(reason))
        raise NgProtocolError(f"rtpengine {command}: an unknown result {result!r}")

    def _received(self, data: bytes) -> None:
        cookie, space, body = data.partition(b" ")
        future = self._pending.get(cookie) if space else None
        if future is None or future.done():
            self.stray += 1
            return
        future.set_result(body)

    def close(self) -> None:
        """Close the socket; pending requests fail with `NgClosed`."""
        if self._closed:
            return
        self._closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(NgClosed("the ng client was closed"))
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()
            self._transport = None
