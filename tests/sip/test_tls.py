"""SIP over TLS on a `bridge run` (`[sip.tls]`; docs/sip.md, "TLS and SRTP").

The phones and the trunk here are Python's `ssl` on plain sockets (Debian's SIPp is built
without TLS), with certificates the test makes (`tests.sip.certs`) and verifies:

- a phone registers over TLS with digest and is rung, answered and hung up on the connection
  it registered on;
- what is not TLS on the TLS port (plain-text SIP, garbage), a client that distrusts our
  certificate, one that never starts its handshake, and handshakes beyond the limit are
  closed and logged, and nothing else is disturbed;
- SIGHUP puts a renewed certificate in front of new connections (a bad one is refused);
- calls forwarded through a `transport=tls` trunk verify its certificate (and `verify =
  false` says so at start);
- `check-config` names the TLS file that cannot be used.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.sip.certs import Issued, issue
from tests.sip.peers import RunningBridge, free_port, trunk_bridge
from tests.sip.test_phone_lifecycle import WAIT, Phone, _digest, _headers, member
from tests.sip.test_phone_lifecycle import directory as desk_directory

LINE = "+15550100"
SDP = (
    b"v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 7000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def trusting(ca: Path) -> ssl.SSLContext:
    """A client context that verifies the peer against `ca`, name included."""
    return ssl.create_default_context(cafile=str(ca))


@contextmanager
def tls_bridge(
    tmp_path: Path, directory: dict[str, Any] | None = None, **env: str
) -> Iterator[tuple[RunningBridge, int, Issued]]:
    """`bridge run` with `[sip.tls]` on a free port, its certificate from a fresh CA."""
    issued = issue(tmp_path / "certs")
    port = free_port()
    settings = {
        "sip__tls__port": str(port),
        "sip__tls__certificate": str(issued.certificate),
        "sip__tls__private_key": str(issued.private_key),
        **env,
    }
    with trunk_bridge(tmp_path, directory or desk_directory(), **settings) as bridge:
        yield bridge, port, issued


def tls_phone(bridge: RunningBridge, port: int, ca: Path) -> Phone:
    return Phone(bridge, "301", "pw-301", "tls", tls=trusting(ca), tls_port=port)


def closed_by_peer(sock: socket.socket, within: float = 5.0) -> bool:
    """Whether the other end closes (or resets) the connection within `within` seconds."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not sock.recv(4096):  # (a TLS alert may come first)
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def response_to(request: bytes, status: str, *, tag: str, contact: str, body: bytes = b"") -> bytes:
    """A phone's answer to `request`: its Via, From, Call-ID and CSeq, To with our tag."""
    head = request.split(b"\r\n\r\n", 1)[0].decode()
    keep = [
        line
        for line in head.split("\r\n")[1:]
        if line.split(":", 1)[0].strip().lower()
        in ("via", "v", "from", "f", "call-id", "i", "cseq")
    ]
    to = _headers(request)["to"]
    if ";tag=" not in to:
        to += f";tag={tag}"
    lines = [f"SIP/2.0 {status}", *keep, f"To: {to}", f"Contact: <{contact}>"]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class UdpTrunk:
    """The carrier's side on UDP (the bridge allows the trunk from loopback): one call."""

    def __init__(self, bridge: RunningBridge) -> None:
        self.bridge = bridge
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.call_id = secrets.token_hex(6)
        self.uri = f"sip:{LINE}@127.0.0.1:{bridge.sip}"
        self.to = f"<{self.uri}>"

    def close(self) -> None:
        self.sock.close()

    def _send(self, method: str, cseq: int, extra: str = "", body: bytes = b"") -> None:
        branch = f"z9hG4bK{secrets.token_hex(6)}"
        head = (
            f"{method} {self.uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport\r\n"
            f'From: "Caller" <sip:+15551230000@127.0.0.1:{self.port}>;tag=trunk\r\n'
            f"To: {self.to}\r\nCall-ID: {self.call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Max-Forwards: 70\r\nContact: <sip:+15551230000@127.0.0.1:{self.port}>\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendto(head.encode() + body, ("127.0.0.1", self.bridge.sip))

    def invite(self) -> None:
        self._send("INVITE", 1, "Content-Type: application/sdp\r\n", SDP.replace(b"7000", b"6000"))

    def final(self, timeout: float = WAIT) -> bytes:
        """The final response to what was sent last (provisional ones skipped)."""
        self.sock.settimeout(timeout)
        while True:
            answer = self.sock.recvfrom(65535)[0]
            if re.match(rb"SIP/2.0 [2-6]", answer):
                return answer

    def ack(self, final: bytes) -> None:
        self.to = _headers(final)["to"]
        self._send("ACK", 1)

    def bye(self) -> None:
        self._send("BYE", 2)


@pytest.mark.parametrize("scheme", ["sip", "sips"])
def test_a_phone_registers_over_tls_and_is_rung_on_that_connection(
    tmp_path: Path, scheme: str
) -> None:
    """The phone registers `sip:...;transport=tls` or `sips:...`, and is rung at that URI.
    With `srtp = "optional"` (the default) it is offered SRTP best effort (RTP/AVP with
    a=crypto): a phone that answers plain RTP is connected all the same."""
    with tls_bridge(tmp_path) as (bridge, port, issued):
        phone = tls_phone(bridge, port, issued.ca)  # (the bridge's certificate verified)
        if scheme == "sips":
            phone.contact = f"sips:301@127.0.0.1:{phone.port}"
        trunk = UdpTrunk(bridge)
        try:
            ok = phone.register()
            assert ok.startswith(b"SIP/2.0 200"), ok
            [registered] = bridge.wait_events("sip_register")
            assert registered["transport"] == "tls" and registered["outcome"] == "registered"
            assert member(bridge, "anna")["can_receive_calls"] is True

            trunk.invite()
            invite = phone.receive()
            assert invite is not None, "the phone was not rung"
            assert invite.startswith(f"INVITE {phone.contact} SIP/2.0".encode()), invite
            headers = _headers(invite)
            assert headers["via"].startswith(f"SIP/2.0/TLS 127.0.0.1:{port};")
            assert f"@127.0.0.1:{port};transport=tls>" in headers["contact"]
            offer = invite.split(b"\r\n\r\n", 1)[1]
            assert re.search(rb"m=audio \d+ RTP/AVP ", offer), offer
            assert re.search(rb"a=crypto:\d+ AES_CM_128_HMAC_SHA1_80 inline:", offer), offer
            contact = f"sip:301@127.0.0.1:{phone.port};transport=tls"
            phone.send(response_to(invite, "200 OK", tag="ph1", contact=contact, body=SDP))
            ack = phone.receive()
            assert ack is not None and ack.startswith(b"ACK "), ack

            answered = trunk.final()
            assert answered.startswith(b"SIP/2.0 200"), answered
            trunk.ack(answered)
            trunk.bye()
            bye = phone.receive()  # the hang-up reaches the phone on the same connection
            assert bye is not None and bye.startswith(b"BYE "), bye
            assert _headers(bye)["via"].startswith(f"SIP/2.0/TLS 127.0.0.1:{port};")
            phone.send(response_to(bye, "200 OK", tag="ph1", contact=contact))
            assert trunk.final().startswith(b"SIP/2.0 200")
            [ended] = bridge.wait_events("sip_call_ended")
            assert ended["outcome"] == "answered"
        finally:
            trunk.close()
            phone.close()


def test_srtp_required_refuses_plain_rtp_over_tls_both_ways(tmp_path: Path) -> None:
    """`srtp = "required"`: the phone is offered RTP/SAVP; its plain answer ends its leg (ACK,
    BYE), and its own call offering plain RTP is refused 488."""
    with tls_bridge(tmp_path, sip__tls__srtp="required") as (bridge, port, issued):
        phone = tls_phone(bridge, port, issued.ca)
        trunk = UdpTrunk(bridge)
        try:
            assert phone.register().startswith(b"SIP/2.0 200")
            trunk.invite()
            invite = phone.receive()
            assert invite is not None and invite.startswith(b"INVITE "), invite
            offer = invite.split(b"\r\n\r\n", 1)[1]
            assert re.search(rb"m=audio \d+ RTP/SAVP ", offer), offer
            assert b"a=crypto:" in offer
            contact = f"sip:301@127.0.0.1:{phone.port};transport=tls"
            phone.send(response_to(invite, "200 OK", tag="ph2", contact=contact, body=SDP))
            ack, bye = phone.receive(), phone.receive()
            assert ack is not None and ack.startswith(b"ACK "), ack
            assert bye is not None and bye.startswith(b"BYE "), bye
            phone.send(response_to(bye, "200 OK", tag="ph2", contact=contact))
            [unusable] = bridge.wait_events("sip_leg_answer_unusable")
            assert "crypto" in unusable["reason"], unusable
            trunk.ack(trunk.final(timeout=10))  # (the call goes on to its fallback)

            # A call placed over TLS with plain RTP: 488 with the reason.
            def call(authorization: str | None) -> bytes:
                """One INVITE of the phone's (plain RTP), its final answer ACKed (§17.1.1.3)."""
                uri = f"sip:ben@127.0.0.1:{port}"
                cseq = phone.cseq = phone.cseq + 1
                common = [
                    f"Via: SIP/2.0/TLS 127.0.0.1:{phone.port};branch=z9hG4bKout{cseq}",
                    f"From: <sip:301@127.0.0.1>;tag=out{cseq}",
                    "Call-ID: plain-over-tls",
                    "Max-Forwards: 70",
                ]
                lines = [
                    f"INVITE {uri} SIP/2.0",
                    *common,
                    f"To: <{uri}>",
                    f"CSeq: {cseq} INVITE",
                    f"Contact: <{contact}>",
                    "Content-Type: application/sdp",
                ]
                if authorization:
                    lines.append(f"Proxy-Authorization: {authorization}")
                lines += [f"Content-Length: {len(SDP)}", "", ""]
                phone.send("\r\n".join(lines).encode() + SDP)
                while (answer := phone.receive()) is not None and answer.startswith(b"SIP/2.0 1"):
                    pass
                assert answer is not None, "no final answer"
                to = _headers(answer)["to"]
                ack = [f"ACK {uri} SIP/2.0", *common, f"To: {to}", f"CSeq: {cseq} ACK"]
                phone.send("\r\n".join([*ack, "Content-Length: 0", "", ""]).encode())
                return answer

            refused = call(None)  # (loopback is the trunk's here: no challenge; else 407)
            if refused.startswith(b"SIP/2.0 407"):
                offer_header = _headers(refused)["proxy-authenticate"]
                refused = call(
                    _digest(offer_header, "INVITE", f"sip:ben@127.0.0.1:{port}", "301", "pw-301")
                )
            assert refused.startswith(b"SIP/2.0 488"), refused
            assert b"SRTP is required" in refused
        finally:
            trunk.close()
            phone.close()


def test_what_is_not_tls_on_the_tls_port_is_closed_and_logged(tmp_path: Path) -> None:
    with tls_bridge(tmp_path, sip__tls__handshake_timeout_seconds="1") as (bridge, port, issued):
        options = b"OPTIONS sip:bridge@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n"
        for junk in (options, b"\x16\x03\x01\x00\x05" + os.urandom(300), os.urandom(300)):
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
                sock.sendall(junk)
                assert closed_by_peer(sock), junk[:20]

        stranger = issue(tmp_path / "stranger", ca_name="Another CA")
        for context, name in (
            (trusting(stranger.ca), "127.0.0.1"),
            (trusting(issued.ca), "sip.example.com"),
        ):
            with (
                socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw,
                pytest.raises(ssl.SSLCertVerificationError),
            ):
                context.wrap_socket(raw, server_hostname=name)

        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as silent:
            started = time.monotonic()
            assert closed_by_peer(silent, within=5)  # its handshake never started
            assert time.monotonic() - started > 0.7

        def refused(reason: str) -> float:
            return bridge.metric(f'bridge_sip_tls_refused_total{{reason="{reason}"}}') or 0.0

        deadline = time.monotonic() + 5
        while refused("handshake_failed") < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert refused("handshake_failed") == 5  # 3 kinds of junk, 2 clients that hung up
        assert refused("handshake_timeout") == 1
        logged = {e["reason"] for e in bridge.wait_events("sip_tls_refused", count=2)}
        assert logged == {"handshake_failed", "handshake_timeout"}

        # Nothing else was disturbed: the daemon answers over UDP, a TLS phone registers.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(WAIT)
            udp.sendto(
                b"OPTIONS sip:bridge@127.0.0.1 SIP/2.0\r\n"
                b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKtls1;rport\r\n"
                b"From: <sip:t@x>;tag=1\r\n"
                b"To: <sip:bridge@127.0.0.1>\r\nCall-ID: tls-1\r\nCSeq: 1 OPTIONS\r\n"
                b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                ("127.0.0.1", bridge.sip),
            )
            assert udp.recvfrom(65535)[0].startswith(b"SIP/2.0 200")
        phone = tls_phone(bridge, port, issued.ca)
        try:
            assert phone.register().startswith(b"SIP/2.0 200")
        finally:
            phone.close()


def test_one_source_cannot_take_every_handshake(tmp_path: Path) -> None:
    """(With one limit for all, a source holding 256 handshakes open, each for its 5 s,
    kept every other phone's TLS connection refused.)"""
    with tls_bridge(
        tmp_path,
        sip__tls__max_handshakes="8",
        sip__tls__max_handshakes_per_source="2",
        sip__tls__handshake_timeout_seconds="3",
    ) as (bridge, port, _issued):
        held = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(2)]
        try:
            time.sleep(0.3)
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as extra:
                assert closed_by_peer(extra, within=1.0)
            reason = 'bridge_sip_tls_refused_total{reason="too_many_handshakes_from_source"}'
            assert bridge.metric(reason) == 1
            # another address still gets its handshake (and its phone registers)
            other = socket.create_connection(
                ("127.0.0.1", port), timeout=WAIT, source_address=("127.0.0.2", 0)
            )
            with other:
                assert not closed_by_peer(other, within=0.5)
        finally:
            for sock in held:
                sock.close()


def test_handshakes_beyond_the_limit_are_closed_at_once(tmp_path: Path) -> None:
    with tls_bridge(
        tmp_path, sip__tls__max_handshakes="4", sip__tls__handshake_timeout_seconds="2"
    ) as (bridge, port, issued):
        held = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(4)]
        try:
            time.sleep(0.3)  # (accepted: their handshakes wait for a ClientHello)
            for _ in range(6):
                with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as extra:
                    assert closed_by_peer(extra, within=1.0)
            too_many = bridge.metric('bridge_sip_tls_refused_total{reason="too_many_handshakes"}')
            assert too_many == 6
            [logged] = [e for e in bridge.log_events() if e.get("reason") == "too_many_handshakes"][
                :1
            ]
            assert logged["event"] == "sip_tls_refused"
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.3)  # the held ones closed: their places are free again
        phone = tls_phone(bridge, port, issued.ca)
        try:
            assert phone.register().startswith(b"SIP/2.0 200")
        finally:
            phone.close()


def test_sighup_puts_a_renewed_certificate_in_front_of_new_connections(tmp_path: Path) -> None:
    with tls_bridge(tmp_path) as (bridge, port, issued):
        live = tls_phone(bridge, port, issued.ca)  # connected before the renewal
        renewed = issue(tmp_path / "renewed", ca_name="Renewed CA")
        try:
            shutil.copy(renewed.certificate, issued.certificate)
            shutil.copy(renewed.private_key, issued.private_key)
            bridge.process.send_signal(signal.SIGHUP)
            bridge.wait_events("sip_tls_reloaded")
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
                trusting(renewed.ca).wrap_socket(raw, server_hostname="127.0.0.1").close()
            with (
                socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw,
                pytest.raises(ssl.SSLCertVerificationError),
            ):
                trusting(issued.ca).wrap_socket(raw, server_hostname="127.0.0.1")

            issued.certificate.write_text("not a certificate\n")  # a botched renewal
            bridge.process.send_signal(signal.SIGHUP)
            [failed] = bridge.wait_events("sip_tls_reload_failed")
            assert failed["field"] == "sip.tls.certificate"
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
                trusting(renewed.ca).wrap_socket(raw, server_hostname="127.0.0.1").close()
            assert bridge.process.poll() is None
            assert live.register().startswith(b"SIP/2.0 200")  # the live connection goes on
        finally:
            live.close()


class TlsTrunkServer:
    """The provider's TLS port: takes one connection, reads one request, answers 486."""

    def __init__(self, issued: Issued) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(issued.certificate, issued.private_key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(15)
        self.port = self.listener.getsockname()[1]
        self.request: bytes | None = None
        self.failure: str | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            raw, _ = self.listener.accept()
            with self.context.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(WAIT)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65535)
                    if not chunk:
                        return
                    data += chunk
                head, rest = data.split(b"\r\n\r\n", 1)
                length = int(_headers(head + b"\r\n\r\n").get("content-length", "0"))
                while len(rest) < length:
                    rest += conn.recv(65535)
                self.request = head + b"\r\n\r\n" + rest[:length]
                conn.sendall(
                    response_to(
                        self.request, "486 Busy Here", tag="pstn", contact="sip:pstn@127.0.0.1"
                    )
                )
                time.sleep(0.5)
        except (OSError, ssl.SSLError) as exc:
            self.failure = str(exc)
        finally:
            self.listener.close()


def forwarding_directory() -> dict[str, Any]:
    data = desk_directory()
    data["users"].append(
        {
            "id": "fwd",
            "name": "Forwarded",
            "answer_by": "phone_number",
            "phone_number": "+15559990000",
        }
    )
    data["lines"][0]["route_to"] = {"user": "fwd"}
    return data


@pytest.mark.parametrize("trust", ["trusted", "stranger", "unverified"])
def test_calls_forwarded_through_a_tls_trunk_verify_its_certificate(
    tmp_path: Path, trust: str
) -> None:
    provider = issue(
        tmp_path / "provider", name="provider", hosts=("127.0.0.1",), ca_name="Provider CA"
    )
    server = TlsTrunkServer(provider)
    env = {"sip__trunk_uri": f"sip:127.0.0.1:{server.port};transport=tls"}
    if trust == "trusted":
        env["sip__tls__ca_bundle"] = str(provider.ca)
    elif trust == "unverified":
        env["sip__tls__verify"] = "false"  # (and the default CA bundle would not know it)
    with tls_bridge(tmp_path, forwarding_directory(), **env) as (bridge, port, _):
        trunk = UdpTrunk(bridge)
        try:
            trunk.invite()
            final = trunk.final(timeout=10)  # (busy at the provider: voicemail, or a refusal)
            trunk.ack(final)
            if final.startswith(b"SIP/2.0 2"):
                trunk.bye()
        finally:
            trunk.close()
        server.thread.join(timeout=10)
        warned = [e for e in bridge.log_events() if e.get("event") == "sip_tls_not_verifying"]
        assert bool(warned) == (trust == "unverified")
        if trust == "stranger":
            assert server.request is None
            [failed] = [e for e in bridge.log_events() if e.get("event") == "sip_connect_failed"]
            assert failed["transport"] == "tls" and "certificate verify failed" in failed["reason"]
            return
        assert server.request is not None, server.failure
        request = server.request.decode()
        assert request.startswith("INVITE sip:+15559990000@127.0.0.1")
        headers = _headers(server.request)
        assert headers["via"].startswith(f"SIP/2.0/TLS 127.0.0.1:{port};")
        assert f"@127.0.0.1:{port};transport=tls>" in headers["contact"]


def check_config(tmp_path: Path, tls: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "directory.yaml").write_text("users: []\n")
    config = tmp_path / "bridge.toml"
    config.write_text(f'[auth]\njwt_secret = "test-secret-0123456789abcdef"\n[sip.tls]\n{tls}')
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_names_the_tls_file_that_cannot_be_used(tmp_path: Path) -> None:
    issued = issue(tmp_path / "certs")
    other = issue(tmp_path / "other", name="other")
    cases = {
        'certificate = "missing.crt"\nprivate_key = "missing.key"\n': (
            "sip.tls.certificate",
            "file not found",
        ),
        f'certificate = "{issued.certificate}"\nprivate_key = "{other.private_key}"\n': (
            "sip.tls.private_key",
            "cannot be loaded",
        ),
        f'certificate = "{issued.private_key}"\nprivate_key = "{issued.private_key}"\n': (
            "sip.tls.certificate",
            "cannot be loaded",
        ),
        f'certificate = "{issued.certificate}"\nprivate_key = "{issued.private_key}"\n'
        'ca_bundle = "nowhere.pem"\n': ("sip.tls.ca_bundle", "file not found"),
        f'certificate = "{issued.certificate}"\n': ("sip.tls.private_key", "Field required"),
    }
    for tls, (field, reason) in cases.items():
        result = check_config(tmp_path, tls)
        assert result.returncode == 2, (tls, result.stdout, result.stderr)
        assert field in result.stderr and reason in result.stderr, (tls, result.stderr)
    good = f'certificate = "{issued.certificate}"\nprivate_key = "{issued.private_key}"\n'
    assert check_config(tmp_path, good).returncode == 0
