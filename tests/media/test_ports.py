"""The media port pool: even ports of the range, skipping ports other processes hold, round
robin, and a clear refusal when the range is used up."""

from __future__ import annotations

import socket

import pytest

from bridge.media.ports import PortPool, PortsExhausted


def free_even_range(count: int) -> tuple[int, int]:
    """An even port with `2 * count` ports above it free right now (loopback)."""
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
        probe.close()
        base += base % 2
        holders = []
        try:
            for port in range(base, base + 2 * count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                holders.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in holders:
                s.close()
        return base, base + 2 * count - 1
    raise RuntimeError("no free port range on loopback")


def test_even_ports_round_robin_and_exhaustion() -> None:
    low, high = free_even_range(3)
    pool = PortPool("127.0.0.1", low, high)
    assert pool.size == 3
    taken = [pool.acquire() for _ in range(3)]
    assert [t.port for t in taken] == [low, low + 2, low + 4]
    assert all(t.port % 2 == 0 for t in taken)
    assert pool.in_use == 3
    with pytest.raises(PortsExhausted, match="3 even ports, 3 in use"):
        pool.acquire()
    pool.release(taken[0])
    pool.release(taken[0])  # twice: no harm, no double entry
    assert pool.in_use == 2
    again = pool.acquire()
    assert again.port == low  # the only free one
    for t in (*taken[1:], again):
        pool.release(t)
    # Released ports go to the back: the next one is the least recently used.
    order = [pool.acquire().port for _ in range(3)]
    assert order == [low + 2, low + 4, low]


def test_a_port_held_elsewhere_is_skipped_and_used_later() -> None:
    low, high = free_even_range(2)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", low))
    try:
        pool = PortPool("127.0.0.1", low, high)
        first = pool.acquire()
        assert first.port == low + 2
        with pytest.raises(PortsExhausted):
            pool.acquire()
    finally:
        squatter.close()
    assert pool.acquire().port == low  # free now


def test_sockets_are_bound_and_non_blocking() -> None:
    low, high = free_even_range(1)
    pool = PortPool("127.0.0.1", low - 1 if low > 1024 else low, high)  # odd start: rounded up
    rtp = pool.acquire()
    assert rtp.sock.getsockname() == ("127.0.0.1", low)
    assert rtp.sock.getblocking() is False
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.sendto(b"x", ("127.0.0.1", rtp.port))
    sender.close()
    pool.release(rtp)
    assert rtp.sock.fileno() == -1


def test_a_range_without_an_even_port_is_refused() -> None:
    with pytest.raises(ValueError, match="no even port"):
        PortPool("127.0.0.1", 20001, 20001)
    with pytest.raises(ValueError, match="above"):
        PortPool("127.0.0.1", 20010, 20000)
