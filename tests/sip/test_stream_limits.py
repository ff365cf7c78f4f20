"""Accepted TCP connections are bounded on a `bridge run`: so many from one address and in
all (one more is closed before anything is read), and one that holds part of a message or
says nothing past `sip.stream_message_timeout_seconds` is closed; a connection whose
messages are whole stays open while idle (a registered phone is rung on it).

Before: 200 connections from one address, each holding the start of a 1 MB message, kept
190 MB and their file descriptors for good."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.sip.peers import bridge_process
from tests.sip.test_overload_wire import directory

LIMITS = {
    "sip__max_stream_connections": "4",
    "sip__max_stream_connections_per_source": "3",
    "sip__stream_message_timeout_seconds": "0.6",
    "sip__keepalive_seconds": "0",
}


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=3, source_address=(source, 0))
    sock.settimeout(3)
    return sock


def options(n: int, local: int) -> bytes:
    return (
        f"OPTIONS sip:bridge@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:{local};branch=z9hG4bK-st-{n}\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=s{n}\r\nTo: <sip:bridge@127.0.0.1>\r\n"
        f"Call-ID: st-{n}@test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def answered(sock: socket.socket, n: int) -> bool:
    """An OPTIONS on the connection gets its 200 (the connection is open and read)."""
    sock.sendall(options(n, sock.getsockname()[1]))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65535)
        if not chunk:
            return False
        data += chunk
    return data.startswith(b"SIP/2.0 200 ")


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(65535) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_connections_over_the_limits_are_closed_and_counted(tmp_path: Path) -> None:
    with bridge_process(tmp_path, directory(), **LIMITS) as bridge:
        mine = [connect(bridge.sip) for _ in range(3)]
        assert all(answered(sock, n) for n, sock in enumerate(mine))
        fourth = connect(bridge.sip)  # a fourth from the same address
        assert closed_by_peer(fourth, 2.0)
        other = connect(bridge.sip, "127.0.0.2")  # another address: within the total
        assert answered(other, 10)
        over = connect(bridge.sip, "127.0.0.2")  # the fifth in all
        assert closed_by_peer(over, 2.0)
        assert bridge.metric('bridge_sip_stream_refused_total{transport="tcp"}') == 2
        refused = bridge.wait_events("sip_stream_refused", count=2)
        assert {(e["source"], e["refused"]) for e in refused} == {
            ("127.0.0.1", 1),
            ("127.0.0.2", 1),
        }
        # One closed: its place is free again.
        mine.pop().close()
        time.sleep(0.3)
        again = connect(bridge.sip)
        assert answered(again, 20)
        for sock in [*mine, again, other, fourth, over]:
            sock.close()


def test_a_stalled_message_or_silence_is_closed_and_whole_messages_stay(tmp_path: Path) -> None:
    with bridge_process(tmp_path, directory(), **LIMITS) as bridge:
        partial = connect(bridge.sip)
        partial.sendall(options(1, partial.getsockname()[1])[:40])  # a header never finished
        silent = connect(bridge.sip)
        phone = connect(bridge.sip)
        assert answered(phone, 2)
        started = time.monotonic()
        assert closed_by_peer(partial, 5.0) and closed_by_peer(silent, 5.0)
        assert time.monotonic() - started < 5.0
        # The connection whose messages were whole is still open and read, idle past the
        # deadline, as a registered phone's is.
        time.sleep(0.8)
        assert answered(phone, 3)
        stalled = bridge.wait_events("sip_stream_stalled", count=2)
        assert sorted(e["messages"] for e in stalled) == [0, 0]
        assert sorted(e["buffered"] for e in stalled) == [0, 40]
        for sock in (partial, silent, phone):
            sock.close()
