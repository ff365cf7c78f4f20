"""Overload control on a `bridge run`, over the wire: operator limits and the load rule refuse
new INVITEs with a stateless 503 (Retry-After, a Reason naming why), before any routing;
in-dialog requests and retransmissions are never refused; the ACK of a 503 is dropped."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from tests.sip.peers import bridge_process

LINE = "+15550100"


def directory() -> dict[str, Any]:
    return {
        "timezone": "UTC",
        "users": [
            {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
            {"id": "ana", "name": "Ana", "answer_by": "ip_phone"},
        ],
        "lines": [{"number": LINE, "name": "Main", "route_to": {"user": "ana"}}],
    }


def invite(port: int, local: int, n: int, *, to_tag: str = "") -> bytes:
    tag = f";tag={to_tag}" if to_tag else ""
    return (
        f"INVITE sip:{LINE}@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-ovl-{n};rport\r\n"
        f"From: <sip:caller@127.0.0.1>;tag=f{n}\r\nTo: <sip:{LINE}@127.0.0.1>{tag}\r\n"
        f"Call-ID: ovl-{n}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:{local}>\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def ack_for(response: bytes, port: int, local: int, n: int) -> bytes:
    to = next(ln for ln in response.decode().split("\r\n") if ln.lower().startswith("to:"))
    return (
        f"ACK sip:{LINE}@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-ovl-{n};rport\r\n"
        f"From: <sip:caller@127.0.0.1>;tag=f{n}\r\n{to}\r\n"
        f"Call-ID: ovl-{n}@test\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def responses(sock: socket.socket, wait: float) -> list[bytes]:
    """Every response that came within `wait`, provisional and final, in order (requests of
    admitted calls, such as a voicemail's BYE, are left out)."""
    got: list[bytes] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65535)
        except TimeoutError:
            break
        if data.startswith(b"SIP/2.0 "):
            got.append(data)
    return got


def finals(sock: socket.socket, wait: float) -> dict[str, bytes]:
    """The final responses that came within `wait`, by Call-ID (the last one each)."""
    return {
        header(data, "Call-ID") or "": data
        for data in responses(sock, wait)
        if int(data[8:11]) >= 200
    }


def header(message: bytes, name: str) -> str | None:
    for line in message.decode().split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    return None


def udp() -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def test_calls_over_the_rate_are_refused_statelessly_with_retry_after(tmp_path: Path) -> None:
    env = {
        "sip__trunk_allow": '["127.0.0.0/8"]',
        "sip__overload__calls_per_second": "5",
        "sip__overload__retry_after_seconds": "7",
        "sip__keepalive_seconds": "0",
    }
    with bridge_process(tmp_path, directory(), **env) as bridge:
        sock, local = udp()
        for n in range(20):
            sock.sendto(invite(bridge.sip, local, n), ("127.0.0.1", bridge.sip))
        got = finals(sock, 3.0)
        assert len(got) == 20, sorted(got)
        refused = {cid: r for cid, r in got.items() if r.startswith(b"SIP/2.0 503")}
        assert 13 <= len(refused) <= 15  # a bucket of 5 (and what refills while they come)
        for response in refused.values():
            assert header(response, "Retry-After") == "7"
            assert header(response, "Reason") == 'SIP;cause=503;text="calls_per_second"'
            assert ";tag=ovl-503" in (header(response, "To") or "")
            assert "received=127.0.0.1" in (header(response, "Via") or "")
        admitted = [r for r in got.values() if not r.startswith(b"SIP/2.0 503")]
        assert all(not r.startswith(b"SIP/2.0 503") for r in admitted)
        # The ACK of a 503 is dropped unparsed; a retransmitted refused INVITE is refused
        # again (stateless), and nothing else comes back.
        n = int(next(iter(refused)).split("-")[1].split("@")[0])
        sock.sendto(
            ack_for(refused[f"ovl-{n}@test"], bridge.sip, local, n), ("127.0.0.1", bridge.sip)
        )
        time.sleep(1.2)  # the bucket refills
        sock.sendto(invite(bridge.sip, local, n), ("127.0.0.1", bridge.sip))
        again = finals(sock, 2.0)
        assert list(again) == [f"ovl-{n}@test"] and not again[f"ovl-{n}@test"].startswith(
            b"SIP/2.0 503"
        )
        sample = 'bridge_sip_admission_total{kind="call",outcome="calls_per_second"}'
        deadline = time.monotonic() + 3
        while (bridge.metric(sample) or 0) < len(refused) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert bridge.metric(sample) == len(refused)


def test_a_standing_queue_is_refused_for_load_and_logged(tmp_path: Path) -> None:
    """The bridge stopped (SIGSTOP) while 400 INVITEs arrive: they wait in the socket's
    queue, and once it runs again those that waited too long get 503 "load" (no routing),
    the first ones are let through (a burst), and the state change is logged."""
    env = {"sip__trunk_allow": '["127.0.0.0/8"]', "sip__keepalive_seconds": "0"}
    with bridge_process(tmp_path, directory(), **env) as bridge:
        sock, local = udp()
        os.kill(bridge.process.pid, signal.SIGSTOP)
        try:
            for n in range(400):
                sock.sendto(invite(bridge.sip, local, n), ("127.0.0.1", bridge.sip))
            time.sleep(0.3)
        finally:
            os.kill(bridge.process.pid, signal.SIGCONT)
        got = finals(sock, 5.0)
        load = [r for r in got.values() if header(r, "Reason") == 'SIP;cause=503;text="load"']
        others = [r for r in got.values() if not r.startswith(b"SIP/2.0 503")]
        assert len(got) == 400
        assert load and others, (len(load), len(others))
        assert all(header(r, "Retry-After") in {str(s) for s in range(5, 10)} for r in load)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            events = [e.get("event") for e in bridge.log_events()]
            if "sip_overload_over" in events:
                break
            time.sleep(0.1)
        assert "sip_overloaded" in events and "sip_overload_over" in events
        # Back to normal: a new call is admitted at once.
        sock.sendto(invite(bridge.sip, local, 1000), ("127.0.0.1", bridge.sip))
        after = finals(sock, 2.0)
        assert not after["ovl-1000@test"].startswith(b"SIP/2.0 503")
