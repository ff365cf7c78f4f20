"""rtpengine's ng protocol (`bridge.media.ng`): bencode both ways, and the UDP client against
fake ng servers on loopback (drops, errors, garbage, strays). The client against a real
rtpengine is tests/media/test_rtpengine.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.media.ng import (
    MAX_DEPTH,
    BencodeError,
    NgClient,
    NgClosed,
    NgErrorReply,
    NgProtocolError,
    NgTimeout,
    bdecode,
    bencode,
)

# -- bencode -----------------------------------------------------------------------------------
values = st.recursive(
    st.integers(-(2**63), 2**64) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=40,
)


@given(values)
def test_decode_inverts_encode(value: object) -> None:
    assert bdecode(bencode(value)) == value


@given(st.dictionaries(st.text(), st.integers(), min_size=2))
def test_dictionary_keys_are_written_sorted(value: dict[str, int]) -> None:
    encoded = bencode(value)
    assert encoded == bencode(dict(reversed(list(value.items()))))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_garbage_raises_only_the_typed_error(data: bytes) -> None:
    with contextlib.suppress(BencodeError):
        bdecode(data)


@settings(max_examples=300)
@given(values, st.data())
def test_damaged_encodings_raise_only_the_typed_error(value: object, data: st.DataObject) -> None:
    encoded = bytearray(bencode(value))
    cut = data.draw(st.integers(0, len(encoded)))
    damaged = bytes(encoded[:cut])
    if encoded:
        at = data.draw(st.integers(0, len(encoded) - 1))
        encoded[at] = data.draw(st.integers(0, 255))
    for candidate in (damaged, bytes(encoded), bytes(encoded) + b"x"):
        with contextlib.suppress(BencodeError):
            bdecode(candidate)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "empty"),
        (b"i03e", "malformed integer"),
        (b"i-0e", "malformed integer"),
        (b"ie", "malformed integer"),
        (b"i12", "unterminated"),
        (b"03:abc", "malformed string length"),
        (b"5:abc", "past the end"),
        (b"4:spamx", "after the value"),
        (b"e", "end marker"),
        (b"l", "truncated"),
        (b"di1ei2ee", "not a string"),
        (b"d1:a1:b1:ce", "without a value"),
        (b"d1:ai1e1:ai2ee", "repeated"),
        (b"x", "unexpected byte"),
        (b"99999999999999999999999999:x", "overlong"),
        (b"i" + b"1" * 5000 + b"e", "overlong"),
    ],
)
def test_malformed_inputs_say_what_is_wrong(data: bytes, says: str) -> None:
    with pytest.raises(BencodeError, match=says):
        bdecode(data)


def test_nesting_is_bounded_without_recursion() -> None:
    assert bdecode(b"l" * MAX_DEPTH + b"e" * MAX_DEPTH) is not None
    started = time.perf_counter()
    with pytest.raises(BencodeError, match="nested deeper"):
        bdecode(b"l" * 1_000_000)
    with pytest.raises(BencodeError, match="nested deeper"):
        bdecode(b"d1:a" * 100_000)
    assert time.perf_counter() - started < 1.0


def test_strings_that_are_not_utf8_stay_bytes() -> None:
    assert bdecode(b"d3:sdp2:\xff\xfee") == {"sdp": b"\xff\xfe"}
    assert bdecode(bencode({"k": b"\xff"})) == {"k": b"\xff"}


def test_what_cannot_be_encoded() -> None:
    for value in (True, None, 1.5, {1: 2}, object()):
        with pytest.raises(TypeError):
            bencode(value)


def test_the_ng_example_of_the_documentation() -> None:
    assert bencode({"command": "ping"}) == b"d7:command4:pinge"
    assert bdecode(b"d6:result4:ponge") == {"result": "pong"}


# -- the client against fake servers -------------------------------------------------------------
Handler = Callable[[int, bytes, bytes], list[bytes]]
"""(request number, cookie, body) -> the datagrams to send back"""


class FakeNg(asyncio.DatagramProtocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[tuple[bytes, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        cookie, _, body = data.partition(b" ")
        self.requests.append((cookie, body))
        assert self.transport is not None
        for reply in self.handler(len(self.requests), cookie, body):
            self.transport.sendto(reply, addr)


async def serve(handler: Handler) -> tuple[FakeNg, int]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: FakeNg(handler), local_addr=("127.0.0.1", 0)
    )
    return protocol, transport.get_extra_info("sockname")[1]


def ok(cookie: bytes, **fields: object) -> bytes:
    return cookie + b" " + bencode({"result": "ok", **fields})


async def test_a_dropped_request_is_sent_again_with_the_same_cookie() -> None:
    server, port = await serve(lambda n, cookie, body: [] if n == 1 else [ok(cookie, sdp="v=0")])
    async with NgClient("127.0.0.1", port, timeout=0.1, retries=3) as client:
        reply = await client.request("offer", call_id="c1", from_tag="a", sdp="v=0")
    assert reply == {"result": "ok", "sdp": "v=0"}
    assert len(server.requests) == 2
    (first, body1), (second, body2) = server.requests
    assert first == second and body1 == body2
    assert bdecode(body1) == {"command": "offer", "call-id": "c1", "from-tag": "a", "sdp": "v=0"}
    assert client.retransmissions == 1


async def test_each_request_has_its_own_random_cookie() -> None:
    server, port = await serve(lambda n, cookie, body: [ok(cookie)])
    async with NgClient("127.0.0.1", port, timeout=0.5) as client:
        await asyncio.gather(*(client.request("query", call_id=f"c{i}") for i in range(20)))
    cookies = [cookie for cookie, _ in server.requests]
    assert len(set(cookies)) == 20
    assert all(len(cookie) >= 16 for cookie in cookies)


async def test_an_error_reply_raises_the_typed_error_with_the_reason() -> None:
    def refuse(n: int, cookie: bytes, body: bytes) -> list[bytes]:
        return [cookie + b" " + bencode({"result": "error", "error-reason": "Unknown call-id"})]

    _, port = await serve(refuse)
    async with NgClient("127.0.0.1", port, timeout=0.5) as client:
        with pytest.raises(NgErrorReply) as caught:
            await client.request("delete", call_id="nope", from_tag="x")
    assert caught.value.reason == "Unknown call-id"
    assert caught.value.command == "delete"


@pytest.mark.parametrize("body", [b"d6:result2:ok", b"li1ee", b"d6:result5:maybee", b"\x00\xff"])
async def test_a_malformed_reply_raises_the_protocol_error(body: bytes) -> None:
    _, port = await serve(lambda n, cookie, _: [cookie + b" " + body])
    async with NgClient("127.0.0.1", port, timeout=0.5) as client:
        with pytest.raises(NgProtocolError):
            await client.request("ping")


async def test_stray_late_and_duplicate_replies_are_ignored() -> None:
    def noisy(n: int, cookie: bytes, body: bytes) -> list[bytes]:
        return [
            b"garbage without a space",
            ok(b"0123456789abcdef", sdp="not yours"),
            ok(cookie, n=n),
            ok(cookie, n=n + 100),  # a duplicate, after the request was answered
        ]

    _, port = await serve(noisy)
    async with NgClient("127.0.0.1", port, timeout=0.5) as client:
        first = await client.request("query", call_id="a")
        second = await client.request("query", call_id="b")
        await asyncio.sleep(0.05)
    assert (first["n"], second["n"]) == (1, 2)
    assert client.stray >= 5  # 2 strays before each answer, and the first one's duplicate


async def test_no_reply_times_out_after_every_retransmission() -> None:
    server, port = await serve(lambda n, cookie, body: [])
    async with NgClient("127.0.0.1", port, timeout=0.05, retries=2) as client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(NgTimeout):
            await client.request("ping")
        elapsed = asyncio.get_running_loop().time() - started
    assert len(server.requests) == 3
    assert 0.14 <= elapsed < 1.0


async def test_close_fails_the_pending_requests_and_later_ones() -> None:
    _, port = await serve(lambda n, cookie, body: [])
    client = await NgClient("127.0.0.1", port, timeout=5.0).start()
    pending = asyncio.ensure_future(client.request("ping"))
    await asyncio.sleep(0.05)
    client.close()
    with pytest.raises(NgClosed):
        await asyncio.wait_for(pending, 1.0)
    with pytest.raises(NgClosed):
        await client.request("ping")
    client.close()  # twice is fine


async def test_nobody_listening_is_a_timeout() -> None:
    server, port = await serve(lambda n, cookie, body: [])
    assert server.transport is not None
    server.transport.close()  # the port answers ICMP unreachable now
    async with NgClient("127.0.0.1", port, timeout=0.05, retries=1) as client:
        with pytest.raises(NgTimeout):
            await client.request("ping")
