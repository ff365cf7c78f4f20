"""The UDP port pool of the media engine: one socket per media leg, from a configured range.

RTP traditionally takes even ports (RTCP on the odd one above); we bind even ports only, so an
operator's firewall range holds as many legs as half its ports, and a peer that sends RTCP to
port + 1 reaches nothing of ours rather than another leg's RTP. A port some other process holds
is skipped; the pool hands out ports round robin, so a port just released is the last to be
taken again (late packets of an ended call do not reach the next call on the same port).
"""

from __future__ import annotations

import errno
import socket
from collections import deque
from dataclasses import dataclass

__all__ = ["PortPool", "PortsExhausted", "RtpSocket"]


class PortsExhausted(Exception):
    """No free port in the range: the call cannot be anchored (the SIP layer answers 503)."""


@dataclass(eq=False, slots=True)
class RtpSocket:
    """A bound, non-blocking UDP socket of the pool."""

    sock: socket.socket
    port: int

    def fileno(self) -> int:
        return self.sock.fileno()


class PortPool:
    def __init__(
        self,
        address: str,
        port_min: int,
        port_max: int,
        *,
        receive_buffer: int = 0,
    ) -> None:
        if port_min > port_max:
            raise ValueError(f"port_min {port_min} is above port_max {port_max}")
        first = port_min + (port_min % 2)
        ports = list(range(first, port_max + 1, 2))
        if not ports:
            raise ValueError(f"no even port in {port_min}..{port_max}")
        self.address = address
        self._family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._receive_buffer = receive_buffer
        self._free: deque[int] = deque(ports)
        self._in_use: set[int] = set()
        self.size = len(ports)

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def acquire(self) -> RtpSocket:
        """A socket bound to the next free even port; `PortsExhausted` when none is left
        (ports held by other processes are skipped and stay in the pool for later)."""
        for _ in range(len(self._free)):
            port = self._free.popleft()
            sock = socket.socket(self._family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                if self._receive_buffer:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer)
                sock.bind((self.address, port))
            except OSError as exc:
                sock.close()
                self._free.append(port)  # someone else's for now: try it again later
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            self._in_use.add(port)
            return RtpSocket(sock, port)
        raise PortsExhausted(
            f"no free media port in the range ({self.size} even ports, {self.in_use} in use)"
        )

    def release(self, rtp: RtpSocket) -> None:
        """Close the socket and put its port at the back of the queue."""
        rtp.sock.close()
        if rtp.port in self._in_use:
            self._in_use.discard(rtp.port)
            self._free.append(rtp.port)
