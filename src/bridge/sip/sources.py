"""Trunk sources: who may send INVITEs without digest (`[sip] trunk_allow`).

An entry is an address or a network, optionally with a port: `203.0.113.0/24`, `10.0.0.5`,
`10.0.0.5:5060`, `[2001:db8::5]:5060`, `2001:db8::/48`. With a port, only datagrams and
connections from that port are the trunk's, so a desk phone on the trunk's host (another
port) is challenged like any phone (README, "How a trunk is recognised")."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from bridge.text import ascii_digits

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class TrunkSource:
    network: Network
    port: int | None = None

    def matches(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
        return (self.port is None or self.port == port) and address in self.network

    def __str__(self) -> str:
        if self.port is None:
            return str(self.network)
        single = self.network.prefixlen == self.network.max_prefixlen
        host = str(self.network.network_address) if single else str(self.network)
        return f"[{host}]:{self.port}" if self.network.version == 6 else f"{host}:{self.port}"


def parse_trunk_source(text: str) -> TrunkSource:
    """One `trunk_allow` entry; ValueError saying what is wrong."""
    value = text.strip()
    port: int | None = None
    if value.startswith("["):  # [v6 address or network]:port
        inside, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: an IPv6 entry with a port is written [address]:port")
        value = inside
        if rest:
            port = _port(rest[1:], text)
    elif value.count(":") == 1:  # v4 address or network with a port
        value, _, raw = value.partition(":")
        port = _port(raw, text)
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address or network, with an optional port "
            "(like 203.0.113.0/24, 10.0.0.5:5060 or [2001:db8::5]:5060)"
        ) from None
    return TrunkSource(network, port)


def _port(raw: str, text: str) -> int:
    if not ascii_digits(raw) or not 1 <= int(raw) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return int(raw)
