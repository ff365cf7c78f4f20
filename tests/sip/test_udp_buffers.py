"""The SIP endpoint asks the kernel for large UDP buffers (`sip.udp_buffer_bytes`), so bursts
and short pauses do not drop datagrams, and says so when the kernel grants less."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bridge.sip.transport import SipEndpoint


class _Quiet:
    def on_event(self, event: object, endpoint: SipEndpoint) -> None:
        pass

    def on_connection_lost(self, peer: object, transport: str, endpoint: SipEndpoint) -> None:
        pass


def _sysctl(name: str) -> int:
    return int(Path(f"/proc/sys/net/core/{name}").read_text())


async def test_the_udp_socket_gets_the_buffers_asked_for() -> None:
    asked = 1024 * 1024
    endpoint = SipEndpoint("127.0.0.1", 0, _Quiet(), udp_buffer_bytes=asked)
    await endpoint.start()
    try:
        assert endpoint._udp is not None and endpoint._udp.transport is not None
        sock = endpoint._udp.transport.get_extra_info("socket")
        # Linux reports double what it grants; the grant is capped at the sysctl maximum.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= min(
            asked, _sysctl("rmem_max")
        )
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= min(
            asked, _sysctl("wmem_max")
        )
        default = _sysctl("rmem_default")
        if _sysctl("rmem_max") >= asked:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) > default
    finally:
        await endpoint.stop()


async def test_a_grant_below_the_ask_is_logged_with_the_setting_to_raise() -> None:
    asked = 256 * 1024 * 1024  # the largest setting; above what a default kernel grants
    if 2 * _sysctl("rmem_max") >= asked:
        pytest.skip("this kernel grants 256 MiB: nothing to warn about")
    endpoint = SipEndpoint("127.0.0.1", 0, _Quiet(), udp_buffer_bytes=asked)
    with capture_logs() as logs:
        await endpoint.start()
    await endpoint.stop()
    capped = [e for e in logs if e["event"] == "sip_udp_buffer_capped"]
    assert {e["buffer"] for e in capped} >= {"receive"}
    receive = next(e for e in capped if e["buffer"] == "receive")
    assert receive["asked"] == asked and receive["granted"] < asked
    assert receive["hint"] == "raise net.core.rmem_max"
    listening = next(e for e in logs if e["event"] == "sip_listening")
    assert listening["udp_buffers"]["receive"] == receive["granted"]
