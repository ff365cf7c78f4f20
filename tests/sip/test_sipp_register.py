"""The registrar against real peers: SIPp desk phones over UDP and TCP, on a `bridge run`."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.sip.peers import (
    REALM,
    SCENARIOS,
    SIPP,
    bridge_process,
    free_port,
    needs_sipp,
    run_sipp,
)

pytestmark = needs_sipp

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpora" / "rfc4475"


def ha1(user: str, password: str, algorithm: str = "md5") -> str:
    return hashlib.new(algorithm, f"{user}:{REALM}:{password}".encode()).hexdigest()


def directory() -> dict[str, Any]:
    return {
        "timezone": "UTC",
        "users": [
            {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
            {  # a legacy desk phone: only an MD5 hash, so only an MD5 challenge
                "id": "lena",
                "name": "Lena Legacy",
                "answer_by": "ip_phone",
                "sip": {"username": "201", "ha1_md5": ha1("201", "pw-201")},
            },
            {
                "id": "max",
                "name": "Max Modern",
                "answer_by": "ip_phone",
                "sip": {
                    "username": "202",
                    "ha1_md5": ha1("202", "pw-202"),
                    "ha1_sha256": ha1("202", "pw-202", "sha256"),
                },
            },
        ],
        "ring_groups": [
            {"id": "desk", "name": "Desk", "layers": [{"members": ["lena", "max"]}]},
        ],
        "lines": [{"number": "+15550100", "name": "Main", "route_to": {"ring_group": "desk"}}],
    }


def members(bridge: Any) -> dict[str, dict[str, Any]]:
    plan = bridge.api("/api/v1/lines/+15550100/route")
    return {m["user_id"]: m for m in plan["layers"][0]["members"]}


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_desk_phone_registers_with_digest_and_unregisters(tmp_path: Path, transport: str) -> None:
    with bridge_process(tmp_path, directory()) as bridge:
        result = run_sipp(
            tmp_path,
            "register_digest.xml",
            bridge.sip,
            "-s",
            "201",
            "-au",
            "201",
            "-ap",
            "pw-201",
            transport=transport,
        )
        assert result.returncode == 0, result.errors + result.output
        assert result.count("SIP/2.0 401 Unauthorized") == 1
        assert result.count("SIP/2.0 200 OK") == 2  # registered, then unregistered
        assert "algorithm=MD5" in result.messages and "algorithm=SHA-256" not in result.messages
        events = [e for e in bridge.log_events() if e.get("event") == "sip_register"]
        assert [e["outcome"] for e in events] == ["registered", "unregistered"]
        assert events[0]["transport"] == ("udp" if transport == "u1" else "tcp")
        assert bridge.metric("bridge_sip_registrations") == 0.0


def test_registered_phone_makes_the_user_reachable_in_test_routing(tmp_path: Path) -> None:
    with bridge_process(tmp_path, directory(), sip__keepalive_seconds="0") as bridge:
        before = members(bridge)
        assert before["lena"]["reason"] == "not_reachable"
        result = run_sipp(
            tmp_path, "register_only.xml", bridge.sip, "-s", "201", "-au", "201", "-ap", "pw-201"
        )
        assert result.returncode == 0, result.errors + result.output
        after = members(bridge)
        assert after["lena"]["can_receive_calls"] is True and after["lena"]["via"] == "ip_phone"
        assert after["max"]["reason"] == "not_reachable"  # Max's phone never registered
        assert bridge.metric("bridge_sip_registrations") == 1.0


def test_dead_phone_is_marked_not_reachable_by_keepalive(tmp_path: Path) -> None:
    # SIPp exits after registering: nobody answers the OPTIONS keepalive (timer F: 64*T1,
    # 6.4 s with T1 at 100 ms), so the contact must go unreachable. Keepalive every second.
    with bridge_process(
        tmp_path, directory(), sip__keepalive_seconds="1", sip__timer_t1_ms="100"
    ) as bridge:
        run_sipp(
            tmp_path, "register_only.xml", bridge.sip, "-s", "201", "-au", "201", "-ap", "pw-201"
        )
        assert members(bridge)["lena"]["can_receive_calls"] is True
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and members(bridge)["lena"]["can_receive_calls"]:
            time.sleep(0.5)
        assert members(bridge)["lena"]["reason"] == "not_reachable"
        assert any(e.get("event") == "sip_flow_dead" for e in bridge.log_events())


def test_wrong_password_is_refused_and_counted(tmp_path: Path) -> None:
    with bridge_process(tmp_path, directory()) as bridge:
        result = run_sipp(
            tmp_path,
            "register_wrong_password.xml",
            bridge.sip,
            "-s",
            "201",
            "-au",
            "201",
            "-ap",
            "not-the-password",
        )
        assert result.returncode == 0, result.errors + result.output
        assert result.count("SIP/2.0 200") == 0
        assert result.count("SIP/2.0 401 Unauthorized") == 2
        failed = [e for e in bridge.log_events() if e.get("event") == "sip_auth_failed"]
        assert len(failed) == 1 and failed[0]["user_id"] == "lena"
        assert bridge.metric('bridge_sip_auth_failures_total{reason="auth_failed"}') == 1.0


def test_brute_force_source_is_banned(tmp_path: Path) -> None:
    with bridge_process(tmp_path, directory(), sip__auth_max_failures="2") as bridge:
        for _ in range(2):
            run_sipp(
                tmp_path,
                "register_wrong_password.xml",
                bridge.sip,
                "-s",
                "201",
                "-au",
                "201",
                "-ap",
                "guess",
            )
        # Now even the right password is refused from this address.
        result = run_sipp(
            tmp_path, "register_digest.xml", bridge.sip, "-s", "201", "-au", "201", "-ap", "pw-201"
        )
        assert result.returncode != 0
        assert result.count("SIP/2.0 403 Forbidden") >= 1  # SIPp may log a retransmission
        assert result.count("SIP/2.0 200") == 0
        assert bridge.metric("bridge_sip_banned_sources") == 1.0
        assert any(e.get("banned") is True for e in bridge.log_events())


def _udp_exchange(port: int, data: bytes, wait: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        sock.sendto(data, ("127.0.0.1", port))
        try:
            return sock.recvfrom(65535)[0]
        except TimeoutError:
            return None


def _sha256_register(port: int, local_port_hint: str, challenge: bytes | None = None) -> bytes:
    lines = [
        "REGISTER sip:bridge.test SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port_hint};branch=z9hG4bK{time.monotonic_ns()};rport",
        "From: <sip:202@bridge.test>;tag=max1",
        "To: <sip:202@bridge.test>",
        "Call-ID: sha256-register-test",
        f"CSeq: {2 if challenge else 1} REGISTER",
        "Contact: <sip:202@127.0.0.1:5999>",
        "Expires: 120",
        "Max-Forwards: 70",
    ]
    if challenge:
        header = next(
            line
            for line in challenge.decode().split("\r\n")
            if line.startswith("WWW-Authenticate:") and "SHA-256" in line
        )
        nonce = header.split('nonce="')[1].split('"')[0]
        h = lambda s: hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
        a1, a2 = ha1("202", "pw-202", "sha256"), h("REGISTER:sip:bridge.test")
        response = h(f"{a1}:{nonce}:00000001:abc:auth:{a2}")
        lines.append(
            f'Authorization: Digest username="202", realm="{REALM}", nonce="{nonce}", '
            f'uri="sip:bridge.test", response="{response}", algorithm=SHA-256, qop=auth, '
            'nc=00000001, cnonce="abc"'
        )
    return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()


@pytest.mark.parametrize(
    ("order", "first"),
    [('["MD5", "SHA-256"]', "MD5"), ('["SHA-256", "MD5"]', "SHA-256")],  # RFC 8760's last
)
def test_sha256_digest_over_udp(tmp_path: Path, order: str | None, first: str) -> None:
    # SIPp 3.6 only computes MD5 digests, so this phone is a raw UDP client of ours that picks
    # SHA-256 wherever it is offered (as RFC 8760 lets a client that prefers it).
    env = {"sip__digest_algorithms": order}
    with bridge_process(tmp_path, directory(), **env) as bridge:
        challenge = _udp_exchange(bridge.sip, _sha256_register(bridge.sip, "5999"))
        assert challenge is not None and challenge.startswith(b"SIP/2.0 401")
        offers = [ln for ln in challenge.decode().split("\r\n") if ln.startswith("WWW-Auth")]
        second = "MD5" if first == "SHA-256" else "SHA-256"
        assert f"algorithm={first}" in offers[0] and f"algorithm={second}" in offers[1]
        answer = _udp_exchange(bridge.sip, _sha256_register(bridge.sip, "5999", challenge))
        assert answer is not None and answer.startswith(b"SIP/2.0 200 OK"), answer
        assert b"Contact: <sip:202@127.0.0.1:5999>;expires=120" in answer
        assert members(bridge)["max"]["can_receive_calls"] is True


def test_sipp_registers_a_user_with_both_hashes_by_reading_the_first_challenge(
    tmp_path: Path,
) -> None:
    """SIPp's `[authentication]`, unmodified, reads only the first challenge and computes MD5:
    with the default (MD5) a user the directory holds both hashes for registers, and so it
    does with MD5 first and SHA-256 second."""
    for order in (None, '["MD5", "SHA-256"]'):
        folder = tmp_path / ("default" if order is None else "both")
        folder.mkdir()
        env = {"sip__digest_algorithms": order} if order else {}
        with bridge_process(folder, directory(), **env) as bridge:
            result = run_sipp(
                folder,
                "register_digest.xml",
                bridge.sip,
                "-s",
                "202",
                "-au",
                "202",
                "-ap",
                "pw-202",
            )
            assert result.returncode == 0, result.errors + result.output
            assert result.count("SIP/2.0 200 OK") == 2  # registered, then unregistered
            assert ("algorithm=SHA-256" in result.messages) == (order is not None)
            events = [e for e in bridge.log_events() if e.get("event") == "sip_register"]
            assert [e["outcome"] for e in events] == ["registered", "unregistered"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("badvers.dat", b"SIP/2.0 505"),
        ("scalar02.dat", b"SIP/2.0 400"),
        ("mismatch01.dat", b"SIP/2.0 400"),
        ("unkscm.dat", b"SIP/2.0 416"),
        ("bext01.dat", b"SIP/2.0 420"),
        ("intmeth.dat", b"SIP/2.0 501"),
        ("bigcode.dat", None),  # a response: dropped, never answered
    ],
)
def test_torture_messages_over_the_wire(tmp_path: Path, name: str, expected: bytes | None) -> None:
    with bridge_process(tmp_path, directory()) as bridge:
        data = (CORPUS / name).read_bytes()
        if not data.startswith(b"SIP/"):
            # Answers go where the top Via says (RFC 3261 §18.2.2); point it back at us.
            lines = data.split(b"\r\n")
            top = next(i for i, ln in enumerate(lines) if ln.lower().startswith((b"via:", b"v:")))
            lines[top] = b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKwire1;rport"
            data = b"\r\n".join(lines)
        answer = _udp_exchange(bridge.sip, data, wait=1.5)
        if expected is None:
            assert answer is None
        else:
            assert answer is not None and answer.startswith(expected), answer
        # Still alive and answering after it.
        ping = _udp_exchange(bridge.sip, _sha256_register(bridge.sip, "5998"))
        assert ping is not None and ping.startswith(b"SIP/2.0 401")
        assert bridge.process.poll() is None


def test_ipv6_listener_registers_and_answers_over_udp_and_tcp(tmp_path: Path) -> None:
    with bridge_process(tmp_path, directory(), sip__host="::1") as bridge:
        register = (
            "REGISTER sip:bridge.test SIP/2.0\r\n"
            "Via: SIP/2.0/{t} [::1]:5999;branch=z9hG4bK{b};rport\r\n"
            "From: <sip:201@bridge.test>;tag=v6\r\nTo: <sip:201@bridge.test>\r\n"
            "Call-ID: v6-{b}\r\nCSeq: 1 REGISTER\r\nContact: <sip:201@[::1]:5999>\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
            udp.settimeout(3)
            udp.sendto(register.format(t="UDP", b="u6").encode(), ("::1", bridge.sip))
            answer = udp.recvfrom(65535)[0]
            port = udp.getsockname()[1]
        assert answer.startswith(b"SIP/2.0 401"), answer
        # RFC 3581 over IPv6: the answer came back to our real port, stamped in the Via.
        assert f";rport={port};received=::1".encode() in answer
        with socket.create_connection(("::1", bridge.sip), timeout=3) as tcp:
            tcp.sendall(register.format(t="TCP", b="t6").encode())
            answer = tcp.recv(65535)
        assert answer.startswith(b"SIP/2.0 401"), answer
        assert bridge.process.poll() is None


def _provider(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    assert SIPP is not None, "sipp missing (Debian sip-tester)"
    return subprocess.Popen(
        [
            SIPP, "-sf", str(SCENARIOS / "provider_registrar.xml"), "-i", "127.0.0.1", "-p",
            str(port), "-m", "1", "-nostdin", "-timeout", "20s",
            "-trace_msg", "-message_file", str(tmp_path / "provider.msg"), "127.0.0.1:9",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip


def _readyz(bridge: Any) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{bridge.http}/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(("password", "state"), [("trunk-secret", "registered"), ("bad", "failed")])
def test_bridge_registers_to_the_provider(tmp_path: Path, password: str, state: str) -> None:
    port = free_port()
    provider = _provider(tmp_path, port)
    env = {
        "sip__trunk_uri": f"sip:127.0.0.1:{port}", "sip__trunk_register": "true",
        "sip__trunk_username": "bridge-acct", "sip__trunk_password": password,
    }  # fmt: skip
    # readyz is not 200 while the registration failed, so start without waiting for it.
    with bridge_process(tmp_path, directory(), wait_ready=False, **env) as bridge:
        assert provider.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, body = _readyz(bridge)
            if body.get("trunk_registration", {}).get("state") == state:
                break
            time.sleep(0.1)
        assert body["trunk_registration"]["state"] == state
        messages = (tmp_path / "provider.msg").read_text(errors="replace")
        assert '\nAuthorization: Digest username="bridge-acct"' in messages
        if state == "registered":
            assert status == 200
            assert bridge.wait_events("sip_trunk_registered")[0]["expires"] == 60
        else:
            assert status == 503 and body["trunk_registration"]["error"].startswith("403")
            assert bridge.wait_events("sip_trunk_registration_failed")
