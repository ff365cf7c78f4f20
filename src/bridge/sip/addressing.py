"""Where SIP peers are: IP address parsing (cached) and the address an in-dialog request goes to."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from bridge.sip.dialog import Dialog
from bridge.sip.grammar import SipSyntaxError, parse_name_addr, parse_uri
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


def next_hop(dialog: Dialog, fallback: Address) -> Address:
    """Where an in-dialog request goes (RFC 3261 §12.2.1.1, §8.1.2): to the dialog's first
    route when it has a route set (a proxy of the carrier's that Record-Routed the call; loose
    or strict, the request goes there first), else to the remote target; as `address_of`
    reads each. Sent straight to the Contact, a BYE passed by the carrier's proxy, which may
    not let it reach the far end at all, and the call went on being billed there."""
    if dialog.route_set:
        try:
            return address_of(str(parse_name_addr(dialog.route_set[0]).uri), fallback)
        except SipSyntaxError:
            return fallback
    return address_of(str(dialog.remote_target), fallback)
