"""A media leg's socket on the loop (real loopback sockets): latching to the signalled source or
(behind NAT) to the first one, foreign and oversized datagrams dropped and counted, sending to
where the peer's packets come from, and a handler's failure not stopping the leg."""

from __future__ import annotations

import asyncio
import socket

import pytest

from bridge.media.endpoint import BUFFER_BYTES, Latch, MediaEndpoint
from bridge.media.ports import PortPool, RtpSocket


def test_latch_rules() -> None:
    signalled = ("192.0.2.10", 4000)
    strict = Latch(signalled, behind_nat=False)
    assert strict.remote == signalled
    assert not strict.accepts(("192.0.2.99", 4000))  # before latching: only the signalled one
    assert strict.accepts(signalled)
    assert strict.latched == signalled
    nat = Latch(signalled, behind_nat=True)
    assert nat.accepts(("198.51.100.7", 31000))  # the NAT's public side, whatever it is
    assert nat.remote == ("198.51.100.7", 31000)
    assert not nat.accepts(signalled)  # latched: nobody else
    nat.resignal(("192.0.2.10", 4002))  # a re-INVITE moved the stream: listen again
    assert nat.latched is None and nat.remote == ("192.0.2.10", 4002)
    unknown = Latch(None, behind_nat=False)
    assert unknown.remote is None
    assert unknown.accepts(("192.0.2.1", 5))  # no address signalled: the first source


class Peer:
    """A UDP socket playing a phone."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2.0)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return host, port

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, ("127.0.0.1", port))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def rtp_socket() -> RtpSocket:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    pool = PortPool("127.0.0.1", port - port % 2, port - port % 2 + 200)
    rtp = pool.acquire()
    yield rtp
    pool.release(rtp)


async def until(condition, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


async def test_latches_to_the_signalled_source_and_drops_others(rtp_socket: RtpSocket) -> None:
    phone, stranger = Peer(), Peer()
    received: list[tuple[bytes, tuple[str, int]]] = []
    endpoint = MediaEndpoint(
        rtp_socket,
        Latch(phone.address, behind_nat=False),
        lambda packet, source: received.append((bytes(packet), source)),
        clock=lambda: 42.0,
    )
    endpoint.start(asyncio.get_running_loop())
    try:
        stranger.send(b"first, but not the phone", rtp_socket.port)
        phone.send(b"hello", rtp_socket.port)
        stranger.send(b"after latching", rtp_socket.port)
        phone.send(b"again", rtp_socket.port)
        await until(lambda: len(received) == 2 and endpoint.stats.foreign == 2)
        assert received == [(b"hello", phone.address), (b"again", phone.address)]
        assert endpoint.stats.received == 2 and endpoint.stats.received_bytes == 10
        assert endpoint.stats.last_received == 42.0
        assert endpoint.send(b"to the phone")
        assert phone.sock.recvfrom(100) == (b"to the phone", ("127.0.0.1", rtp_socket.port))
        assert endpoint.stats.sent == 1
    finally:
        endpoint.stop()
        phone.close()
        stranger.close()


async def test_behind_nat_the_first_source_wins(rtp_socket: RtpSocket) -> None:
    nat_side, signalled = Peer(), Peer()
    received: list[tuple[str, int]] = []
    endpoint = MediaEndpoint(
        rtp_socket,
        Latch(signalled.address, behind_nat=True),
        lambda packet, source: received.append(source),
        clock=lambda: 0.0,
    )
    endpoint.start(asyncio.get_running_loop())
    try:
        nat_side.send(b"x", rtp_socket.port)
        await until(lambda: received == [nat_side.address])
        signalled.send(b"y", rtp_socket.port)
        await until(lambda: endpoint.stats.foreign == 1)
        assert endpoint.send(b"back")
        assert nat_side.sock.recvfrom(10)[0] == b"back"  # to where the packets came from
    finally:
        endpoint.stop()
        nat_side.close()
        signalled.close()


async def test_oversized_datagrams_and_handler_failures_do_not_stop_the_leg(
    rtp_socket: RtpSocket,
) -> None:
    phone = Peer()
    seen: list[bytes] = []

    def handler(packet: memoryview, source: tuple[str, int]) -> None:
        if bytes(packet) == b"boom":
            raise RuntimeError("a bug in a handler")
        seen.append(bytes(packet))

    endpoint = MediaEndpoint(
        rtp_socket, Latch(phone.address, behind_nat=False), handler, clock=lambda: 0.0
    )
    endpoint.start(asyncio.get_running_loop())
    try:
        phone.send(b"\x80" * (BUFFER_BYTES + 100), rtp_socket.port)
        phone.send(b"boom", rtp_socket.port)
        phone.send(b"fine", rtp_socket.port)
        await until(lambda: seen == [b"fine"])
        assert endpoint.stats.oversized == 1
    finally:
        endpoint.stop()
        phone.close()


async def test_a_flood_is_read_in_bounded_rounds_and_nothing_is_lost(
    rtp_socket: RtpSocket,
) -> None:
    phone = Peer()
    count = 0

    def handler(packet: memoryview, source: tuple[str, int]) -> None:
        nonlocal count
        count += 1

    endpoint = MediaEndpoint(
        rtp_socket, Latch(phone.address, behind_nat=False), handler, clock=lambda: 0.0
    )
    endpoint.start(asyncio.get_running_loop())
    try:
        for _ in range(200):  # more than three drain rounds, well within the socket buffer
            phone.send(b"\x80" * 172, rtp_socket.port)
        await until(lambda: count == 200)
    finally:
        endpoint.stop()
        phone.close()


def test_nowhere_to_send_yet() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    endpoint = MediaEndpoint(
        RtpSocket(sock, sock.getsockname()[1]),
        Latch(None, behind_nat=True),
        lambda packet, source: None,
        clock=lambda: 0.0,
    )
    assert endpoint.send(b"x") is False
    assert endpoint.stats.sent == 0
    sock.close()
