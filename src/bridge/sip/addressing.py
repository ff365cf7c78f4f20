"""Where SIP peers are: IP address parsing (cached) and the address an in-dialog request goes to."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from bridge.sip.grammar import SipSyntaxError, parse_uri
from bridge.sip.transaction import Address


@lru_cache(maxsize=1024)
def ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`host` as an IP address, or None for a name. Cached: `ipaddress` parses a string in
    pure Python (several µs), and a call asks about the same few peer addresses over and
    over (the trunk, the phones' Contacts)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def address_of(uri: str, fallback: Address) -> Address:
    """Where to send an in-dialog request: the Request-URI's host and port when it is an IP
    address (our peers' Contacts), else where the dialog's first request came from."""
    try:
        parsed = parse_uri(uri)
    except SipSyntaxError:
        return fallback
    host = parsed.host.strip("[]")
    if ip_address(host) is None:
        return fallback
    return host, parsed.port or 5060
