"""What happens to a desk phone's registration when its user or its connection goes away, on a
`bridge run` over loopback (README, "Desk phones"):

- suspending or deleting a user drops their phones' registrations at once: the phone is no
  longer rung (not even by a trunk INVITE for its SIP username, which rings registered phones
  without routing), and after an un-suspension it must register again;
- a TCP phone whose connection closes without unregistering is `not_reachable` in Test Routing.

The phones here are plain sockets speaking SIP (digest MD5), so no SIP peer needs installing.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.sip.peers import REALM, RunningBridge, bridge_process, trunk_bridge

LINE = "+15550100"
WAIT = 5.0  # each answer from the bridge comes within this (loopback); the bound of each wait


def ha1(user: str, password: str) -> str:
    return hashlib.md5(f"{user}:{REALM}:{password}".encode()).hexdigest()


def directory() -> dict[str, Any]:
    return {
        "timezone": "UTC",
        "users": [
            {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
            ANNA,
            {"id": "ben", "name": "Ben", "answer_by": "will_not_answer"},
        ],
        "ring_groups": [
            {"id": "desk", "name": "Desk", "layers": [{"members": ["anna", "ben"]}]},
        ],
        "lines": [{"number": LINE, "name": "Main", "route_to": {"ring_group": "desk"}}],
    }


ANNA: dict[str, Any] = {
    "id": "anna",
    "name": "Anna",
    "answer_by": "ip_phone",
    "sip": {"username": "301", "ha1_md5": ha1("301", "pw-301")},
}


# -- a phone on a socket --------------------------------------------------------------------
def _digest(challenge: str, method: str, uri: str, user: str, password: str) -> str:
    """The Authorization value answering an MD5 WWW-Authenticate (RFC 2617, qop=auth)."""
    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge.split(" ", 1)[1]))
    md5 = lambda text: hashlib.md5(text.encode()).hexdigest()  # noqa: E731
    cnonce, nc = secrets.token_hex(8), "00000001"
    a1, a2 = md5(f"{user}:{fields['realm']}:{password}"), md5(f"{method}:{uri}")
    response = md5(f"{a1}:{fields['nonce']}:{nc}:{cnonce}:auth:{a2}")
    value = (
        f'Digest username="{user}", realm="{fields["realm"]}", nonce="{fields["nonce"]}", '
        f'uri="{uri}", response="{response}", algorithm=MD5, qop=auth, nc={nc}, '
        f'cnonce="{cnonce}"'
    )
    if "opaque" in fields:
        value += f', opaque="{fields["opaque"]}"'
    return value


def _headers(message: bytes) -> dict[str, str]:
    lines = message.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}


class Phone:
    """A desk phone registering `user` from a loopback socket: UDP, TCP, or TLS (to
    `tls_port`, the bridge's certificate verified with the `tls` context)."""

    def __init__(
        self,
        bridge: RunningBridge,
        user: str,
        password: str,
        transport: str,
        *,
        tls: ssl.SSLContext | None = None,
        tls_port: int = 0,
    ) -> None:
        self.bridge, self.user, self.password, self.transport = bridge, user, password, transport
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
        elif transport == "tls":
            assert tls is not None and tls_port, "a TLS phone needs a context and the TLS port"
            raw = socket.create_connection(("127.0.0.1", tls_port), timeout=WAIT)
            self.sock = tls.wrap_socket(raw, server_hostname="127.0.0.1")
        else:
            self.sock = socket.create_connection(("127.0.0.1", bridge.sip), timeout=WAIT)
        self.sock.settimeout(WAIT)
        self.port = self.sock.getsockname()[1]
        # What it registers (a TLS phone may register a sips: URI instead).
        self.contact = f"sip:{user}@127.0.0.1:{self.port};transport={transport}"
        self.call_id = f"reg-{secrets.token_hex(4)}@127.0.0.1"
        self.cseq = 0
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, ("127.0.0.1", self.bridge.sip))
        else:
            self.sock.sendall(data)

    def receive(self, timeout: float = WAIT) -> bytes | None:
        """The next SIP message from the bridge, or None after `timeout`."""
        self.sock.settimeout(timeout)
        try:
            if self.transport == "udp":
                return self.sock.recvfrom(65535)[0]
            while b"\r\n\r\n" not in self.buffer:
                chunk = self.sock.recv(65535)
                if not chunk:
                    return None
                self.buffer += chunk
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            length = int(_headers(head + b"\r\n\r\n").get("content-length", "0"))
            while len(rest) < length:
                rest += self.sock.recv(65535)
            message, self.buffer = head + b"\r\n\r\n" + rest[:length], rest[length:]
            return message
        except TimeoutError:
            return None

    def pending(self) -> list[bytes]:
        """Every message the bridge has sent this phone and it has not read (no waiting)."""
        found = []
        while (message := self.receive(timeout=0.01)) is not None:
            found.append(message)
        return found

    def _register(self, authorization: str | None) -> bytes:
        self.cseq += 1
        uri = f"sip:{REALM}"
        t = self.transport.upper()
        lines = [
            f"REGISTER {uri} SIP/2.0",
            f"Via: SIP/2.0/{t} 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport",
            f"From: <sip:{self.user}@{REALM}>;tag={secrets.token_hex(4)}",
            f"To: <sip:{self.user}@{REALM}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <{self.contact}>",
            "Expires: 600",
            "Max-Forwards: 70",
        ]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        self.send(("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode())
        answer = self.receive()
        assert answer is not None, "no answer to REGISTER"
        return answer

    def register(self) -> bytes:
        """REGISTER, its 401, REGISTER with the digest: the bridge's final answer."""
        challenge = self._register(None)
        assert challenge.startswith(b"SIP/2.0 401"), challenge
        offer = _headers(challenge)["www-authenticate"]
        return self._register(_digest(offer, "REGISTER", f"sip:{REALM}", self.user, self.password))


def trunk_invite_for(bridge: RunningBridge, dialled: str) -> tuple[list[bytes], bytes | None]:
    """The trunk's INVITE for `dialled` (a SIP username: ring that user's phones only); the
    responses it got, up to the final one (None when none came within WAIT). A final answer
    is ACKed; a call that rings is CANCELled, so nothing is left running."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(WAIT)
        port = sock.getsockname()[1]
        tag, branch, call_id = "tr1", f"z9hG4bK{secrets.token_hex(6)}", secrets.token_hex(6)
        common = (
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
            f'From: "Caller" <sip:+15551230000@127.0.0.1:{port}>;tag={tag}\r\n'
            f"To: <sip:{dialled}@127.0.0.1:{bridge.sip}>\r\n"
            f"Call-ID: {call_id}\r\nMax-Forwards: 70\r\n"
        )
        uri = f"sip:{dialled}@127.0.0.1:{bridge.sip}"
        sdp = b"v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        sdp += b"m=audio 6000 RTP/AVP 0\r\n"
        sock.sendto(
            (
                f"INVITE {uri} SIP/2.0\r\n{common}CSeq: 1 INVITE\r\n"
                f"Contact: <sip:+15551230000@127.0.0.1:{port}>\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n"
            ).encode()
            + sdp,
            ("127.0.0.1", bridge.sip),
        )
        responses: list[bytes] = []
        final = None
        deadline = time.monotonic() + WAIT
        while final is None and time.monotonic() < deadline:
            try:
                answer = sock.recvfrom(65535)[0]
            except TimeoutError:
                break
            responses.append(answer)
            if re.match(rb"SIP/2.0 [2-6]", answer):
                final = answer
        if final is not None and not final.startswith(b"SIP/2.0 2"):
            to = _headers(final)["to"]
            sock.sendto(
                f"ACK {uri} SIP/2.0\r\n{common.replace(f'To: <{uri}>', f'To: {to}')}"
                "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n".encode(),
                ("127.0.0.1", bridge.sip),
            )
        elif final is None:
            cancel = f"CANCEL {uri} SIP/2.0\r\n{common}CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
            sock.sendto(cancel.encode(), ("127.0.0.1", bridge.sip))
        return responses, final


# -- what the bridge says -------------------------------------------------------------------
def member(bridge: RunningBridge, user: str) -> dict[str, Any]:
    plan = bridge.api(f"/api/v1/lines/{LINE}/route")
    [found] = [m for m in plan["layers"][0]["members"] if m["user_id"] == user]
    return found


def registrations(bridge: RunningBridge) -> float | None:
    return bridge.metric("bridge_sip_registrations")


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (after {timeout} s)")
        time.sleep(0.1)


def assert_not_rung(bridge: RunningBridge, phone: Phone) -> None:
    """A trunk INVITE for the user's SIP username gets a refusal and the phone gets nothing:
    the bridge has no registration left for it."""
    _, final = trunk_invite_for(bridge, phone.user)
    invites = [m for m in phone.pending() if m.startswith(b"INVITE ")]
    assert invites == [], "the phone was rung: its registration was kept"
    assert final is not None and final.startswith(b"SIP/2.0 480"), final


# -- suspending and deleting --------------------------------------------------------------
def test_suspending_a_user_drops_their_phones_at_once(tmp_path: Path) -> None:
    with trunk_bridge(tmp_path, directory()) as bridge:
        phone = Phone(bridge, "301", "pw-301", "udp")
        try:
            assert phone.register().startswith(b"SIP/2.0 200")
            assert registrations(bridge) == 1.0
            assert member(bridge, "anna")["via"] == "ip_phone"
            status, body = bridge.request("POST", "/api/v1/users/anna/suspend")
            assert status == 200 and body["status"] == "suspended", body
            # At once: no registration left when the API has answered ...
            assert registrations(bridge) == 0.0
            assert member(bridge, "anna")["reason"] == "suspended"
            # ... so nothing rings the phone any more.
            assert_not_rung(bridge, phone)

            # Lifting the suspension does not bring the old registration back: the phone
            # must register again (Test Routing says so until it does).
            status, body = bridge.request("POST", "/api/v1/users/anna/activate")
            assert status == 200 and body["status"] == "active", body
            assert registrations(bridge) == 0.0
            assert member(bridge, "anna")["reason"] == "not_reachable"
            assert_not_rung(bridge, phone)
            assert phone.register().startswith(b"SIP/2.0 200")
            assert member(bridge, "anna")["via"] == "ip_phone"
        finally:
            phone.close()


def test_deleting_a_user_drops_their_phones_at_once(tmp_path: Path) -> None:
    with trunk_bridge(tmp_path, directory()) as bridge:
        phone = Phone(bridge, "301", "pw-301", "udp")
        try:
            assert phone.register().startswith(b"SIP/2.0 200")
            assert registrations(bridge) == 1.0
            status, _ = bridge.request("DELETE", "/api/v1/users/anna")
            assert status == 204
            assert registrations(bridge) == 0.0
            # A new user with the same id and SIP username does not inherit the old phone's
            # registration: it is not rung until it registers again.
            status, body = bridge.request("POST", "/api/v1/users", ANNA)
            assert status == 201, body
            assert registrations(bridge) == 0.0
            assert_not_rung(bridge, phone)
            assert phone.register().startswith(b"SIP/2.0 200")
            assert registrations(bridge) == 1.0
        finally:
            phone.close()


# -- a TCP phone's connection ---------------------------------------------------------------
def test_a_tcp_phone_whose_connection_closes_is_not_reachable(tmp_path: Path) -> None:
    # No keepalive OPTIONS: only the closed connection can tell the bridge.
    with bridge_process(tmp_path, directory(), sip__keepalive_seconds="0") as bridge:
        assert member(bridge, "anna")["reason"] == "not_reachable"
        phone = Phone(bridge, "301", "pw-301", "tcp")
        try:
            assert phone.register().startswith(b"SIP/2.0 200")
            anna = member(bridge, "anna")
            assert anna["can_receive_calls"] is True and anna["via"] == "ip_phone"
        finally:
            phone.close()  # gone without unregistering (a crash, a pulled cable, a NAT reset)
        wait_until(
            lambda: member(bridge, "anna")["reason"] == "not_reachable",
            "the closed TCP phone is still reachable in Test Routing",
        )
        assert member(bridge, "anna")["can_receive_calls"] is False
        # Its connection is gone for good: registering again on a new one makes it reachable.
        again = Phone(bridge, "301", "pw-301", "tcp")
        try:
            assert again.register().startswith(b"SIP/2.0 200")
            assert member(bridge, "anna")["can_receive_calls"] is True
        finally:
            again.close()
