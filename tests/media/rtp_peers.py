"""RTP peers for the media tests: phones on loopback UDP sockets that send G.711 tones and
collect what they receive (the pool of media ports is `conftest.py`'s fixture)."""

from __future__ import annotations

import asyncio
import socket

from bridge.media import g711
from bridge.media.rtp import build_rtp, parse_rtp
from tests.media.audio import frames, tone


class Phone:
    """A peer's RTP socket: sends a tone as G.711 packets, collects what it receives."""

    def __init__(self, payload_type: int, ssrc: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.payload_type = payload_type
        self.ssrc = ssrc
        self.sequence = 1000
        self.timestamp = 50_000

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return host, port

    def send_tone(self, freq: float, seconds: float, port: int) -> None:
        for frame in frames(tone(freq, seconds)):
            payload = g711.encode(frame, self.payload_type)
            packet = build_rtp(self.payload_type, self.sequence, self.timestamp, self.ssrc, payload)
            self.sock.sendto(packet, ("127.0.0.1", port))
            self.sequence += 1
            self.timestamp += 160

    def send_raw(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, ("127.0.0.1", port))

    def received(self) -> list[bytes]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096))
            except BlockingIOError:
                return got

    def close(self) -> None:
        self.sock.close()

    async def play(self, freq: float, seconds: float, port: int) -> None:
        """Send a tone paced in real time, one 20 ms packet every 20 ms."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, frame in enumerate(frames(tone(freq, seconds))):
            await asyncio.sleep(max(0.0, start + index * 0.02 - loop.time()))
            payload = g711.encode(frame, self.payload_type)
            packet = build_rtp(self.payload_type, self.sequence, self.timestamp, self.ssrc, payload)
            self.sock.sendto(packet, ("127.0.0.1", port))
            self.sequence += 1
            self.timestamp += 160


async def settle(phones: list[Phone], counts: list[int], timeout: float = 3.0) -> list[list[bytes]]:
    """Wait until each phone has received its expected number of packets."""
    got: list[list[bytes]] = [[] for _ in phones]
    deadline = asyncio.get_running_loop().time() + timeout
    while any(len(g) < c for g, c in zip(got, counts, strict=True)):
        for g, phone in zip(got, phones, strict=True):
            g.extend(phone.received())
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.01)
    return got


def audio_of(packets: list[bytes]) -> bytes:
    pcm = b""
    for packet in packets:
        header = parse_rtp(packet)
        pcm += g711.decode(bytes(header.payload(packet)), header.payload_type)
    return pcm
