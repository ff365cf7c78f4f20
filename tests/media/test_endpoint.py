"""A media leg's socket on the loop (real loopback sockets): latching to the signalled source or
(behind NAT) to the first one and connecting to it, foreign and oversized datagrams dropped,
sending to where the peer's packets come from, and a handler's failure not stopping the leg."""

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
        assert endpoint.peer == phone.address
        stranger.send(b"once connected", rtp_socket.port)  # the kernel drops it
        phone.send(b"third", rtp_socket.port)
        await until(lambda: len(received) == 3)
        assert received[2] == (b"third", phone.address)
        assert endpoint.stats.foreign == 2
    finally:
        endpoint.stop()
        phone.close()
        stranger.close()


async def test_a_new_address_in_the_sdp_unlatches_until_its_first_packet(
    rtp_socket: RtpSocket,
) -> None:
    old, new = Peer(), Peer()
    received: list[tuple[bytes, tuple[str, int]]] = []
    endpoint = MediaEndpoint(
        rtp_socket,
        Latch(old.address, behind_nat=False),
        lambda packet, source: received.append((bytes(packet), source)),
        clock=lambda: 0.0,
    )
    endpoint.start(asyncio.get_running_loop())
    try:
        old.send(b"before", rtp_socket.port)
        await until(lambda: endpoint.peer == old.address)
        endpoint.signal(new.address, behind_nat=False)  # a re-INVITE moved the stream
        assert endpoint.peer is None and endpoint.latch.latched is None
        old.send(b"stale", rtp_socket.port)  # not the signalled address any more
        new.send(b"after", rtp_socket.port)
        await until(lambda: len(received) == 2)
        assert received == [(b"before", old.address), (b"after", new.address)]
        assert endpoint.peer == new.address and endpoint.stats.foreign == 1
        assert endpoint.send(b"to the new one")
        assert new.sock.recvfrom(100)[0] == b"to the new one"
        endpoint.signal(new.address, behind_nat=False)  # the same address: stays latched
        assert endpoint.peer == new.address
    finally:
        endpoint.stop()
        old.close()
        new.close()


async def test_a_direct_reader_reads_while_connected_and_a_new_handler_removes_it(
    rtp_socket: RtpSocket,
) -> None:
    phone = Peer()
    generic: list[bytes] = []
    direct: list[bytes] = []
    endpoint = MediaEndpoint(
        rtp_socket,
        Latch(phone.address, behind_nat=False),
        lambda packet, source: generic.append(bytes(packet)),
        clock=lambda: 0.0,
    )

    def reader() -> None:
        size = rtp_socket.sock.recv_into(endpoint.buffer)
        direct.append(bytes(endpoint.buffer[:size]))

    endpoint.read_directly(reader)
    endpoint.start(asyncio.get_running_loop())
    try:
        phone.send(b"latches", rtp_socket.port)  # unconnected: the generic path latches
        await until(lambda: generic == [b"latches"])
        phone.send(b"direct", rtp_socket.port)
        await until(lambda: direct == [b"direct"])
        endpoint.on_packet = lambda packet, source: generic.append(b"new:" + bytes(packet))
        phone.send(b"generic", rtp_socket.port)
        await until(lambda: generic == [b"latches", b"new:generic"])
        assert direct == [b"direct"]
    finally:
        endpoint.stop()
        phone.close()


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
        assert endpoint.peer == nat_side.address  # latched: the socket is connected to it
        signalled.send(b"y", rtp_socket.port)  # dropped by the kernel now
        nat_side.send(b"z", rtp_socket.port)
        await until(lambda: len(received) == 2)
        assert received == [nat_side.address, nat_side.address]
        assert endpoint.stats.received == 2
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
