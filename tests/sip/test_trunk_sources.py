"""Trunk sources (`[sip] trunk_allow`): addresses or networks with an optional port. A trunk is
told apart from a desk phone on the same host by its port; a REGISTER is challenged from
anywhere, the trunk's address included."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.config import Settings
from bridge.sip.b2bua import TrunkSettings
from bridge.sip.sources import TrunkSource, parse_trunk_source
from tests.sip.peers import bridge_process


@pytest.mark.parametrize(
    ("text", "network", "port"),
    [
        ("203.0.113.0/24", "203.0.113.0/24", None),
        ("10.0.0.5", "10.0.0.5/32", None),
        ("10.0.0.5:5060", "10.0.0.5/32", 5060),
        ("10.0.0.0/29:5080", "10.0.0.0/29", 5080),
        ("2001:db8::/48", "2001:db8::/48", None),
        ("[2001:db8::5]:5060", "2001:db8::5/128", 5060),
        ("[2001:db8::5]", "2001:db8::5/128", None),
    ],
)
def test_entries(text: str, network: str, port: int | None) -> None:
    assert parse_trunk_source(text) == TrunkSource(ipaddress.ip_network(network), port)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("10.0.0.5:0", "port must be a number from 1 to 65535"),
        ("10.0.0.5:70000", "port must be a number from 1 to 65535"),
        ("10.0.0.5:sip", "port must be a number"),
        ("[2001:db8::5:5060", r"written \[address\]:port"),
        ("trunk.example.com", "is not an IP address or network"),
        ("2001:db8::5:5060:x", "is not an IP address or network"),
    ],
)
def test_bad_entries_name_the_entry_and_the_form(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_trunk_source(text)
    with pytest.raises(ValidationError) as caught:
        Settings(sip={"trunk_allow": [text]})
    assert "trunk_allow" in str(caught.value) and repr(text) in str(caught.value)


def test_a_port_tells_the_trunk_from_a_phone_on_its_host() -> None:
    trunk = TrunkSettings(
        allow=(parse_trunk_source("10.0.0.5:5060"), parse_trunk_source("192.0.2.0/24"))
    )
    assert trunk.allows("10.0.0.5", 5060)
    assert not trunk.allows("10.0.0.5", 5062)  # a desk phone on the trunk's host
    assert not trunk.allows("10.0.0.6", 5060)
    assert trunk.allows("192.0.2.77", 40000)  # no port: any
    assert not trunk.allows("not-an-address", 5060)


def directory() -> dict[str, Any]:
    return {
        "timezone": "UTC",
        "users": [
            {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
            {"id": "ana", "name": "Ana", "answer_by": "ip_phone", "extension": "201"},
        ],
        "lines": [{"number": "+15550100", "name": "Main", "route_to": {"user": "ana"}}],
    }


def request(method: str, port: int, local: int, n: int) -> bytes:
    uri = f"sip:+15550100@127.0.0.1:{port}" if method == "INVITE" else "sip:127.0.0.1"
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-src-{n};rport\r\n"
        f"From: <sip:201@127.0.0.1>;tag=s{n}\r\nTo: <sip:+15550100@127.0.0.1>\r\n"
        f"Call-ID: src-{n}@test\r\nCSeq: 1 {method}\r\nContact: <sip:201@127.0.0.1:{local}>\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def first_final(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    while True:
        data = sock.recv(65535)
        if data.startswith(b"SIP/2.0 ") and int(data[8:11]) >= 200:
            return data


def test_over_the_wire_only_the_trunks_port_skips_digest(tmp_path: Path) -> None:
    trunk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    trunk.bind(("127.0.0.1", 0))
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    trunk_port, phone_port = trunk.getsockname()[1], phone.getsockname()[1]
    env = {"sip__trunk_allow": f'["127.0.0.1:{trunk_port}"]', "sip__keepalive_seconds": "0"}
    with bridge_process(tmp_path, directory(), **env) as bridge:
        to = ("127.0.0.1", bridge.sip)
        phone.sendto(request("INVITE", bridge.sip, phone_port, 1), to)
        assert first_final(phone).startswith(b"SIP/2.0 407")  # a phone: digest first
        trunk.sendto(request("INVITE", bridge.sip, trunk_port, 2), to)
        answer = first_final(trunk)
        assert not answer.startswith((b"SIP/2.0 401", b"SIP/2.0 407")), answer[:40]
        # A REGISTER is challenged wherever it comes from, the trunk's address and port too.
        trunk.sendto(request("REGISTER", bridge.sip, trunk_port, 3), to)
        assert first_final(trunk).startswith(b"SIP/2.0 401")
