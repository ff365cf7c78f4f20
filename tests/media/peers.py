"""Real media peers for audio tests: pcaps SIPp plays, SIPp runs, and baresip softphones.

Audio is tested as audio: each party plays its own tone and an FFT of what each one received
(`tests.media.audio`) says who heard whom. This module gives the parties, independent of the
bridge: its own G.711, RTP and pcap code (numpy), none of `bridge.media`'s, so that a bug there
cannot hide itself in the test's own half too:

- `tone_pcap` / `dtmf_pcap`: pcap files (Ethernet/IPv4/UDP/RTP) of a G.711 tone or of RFC 4733
  telephone-events, for SIPp's `<exec play_pcap_audio="[pcap]"/>` (`-key pcap <file>`). SIPp
  sends a pcap from a raw socket: it needs root or CAP_NET_RAW (`needs_raw_socket`).
- `run_sipp` / `sipp_process`: SIPp with the scenarios of `tests/media/scenarios/` (or any path),
  loopback, bounded in calls and time, a port probed again if another process took it.
- `BaresipPhone`: a headless baresip (Debian's 1.0) that plays a WAV (`aufile`), writes what it
  received to a WAV (the `sndfile` filter: baresip 1.0's aufile has no player), is driven over
  `ctrl_tcp` (netstring JSON commands and events): dial, answer, hang up, send DTMF; with a
  registration to a registrar or none.

Example::

    with BaresipPhone(tmp_path, "a", tone=440) as a, BaresipPhone(
        tmp_path, "b", tone=1000, auto_answer=True
    ) as b:
        a.dial(b.uri)
        a.wait_call_established()
        time.sleep(3)
        a.hangup()
        a.wait_closed()
        b.wait_closed()
        assert tones_in(a.received_audio()) == {1000}
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import wave
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from sim.local import free_port

from tests.media.audio import AMPLITUDE, RATE
from tests.media.audio import tone as make_tone
from tests.sip.peers import SippResult, lost_its_port

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SIPP = shutil.which("sipp")
BARESIP = shutil.which("baresip")
BARESIP_MODULES = Path("/usr/lib/baresip/modules")
IN_CI = os.environ.get("CI") == "true"

PCMU, PCMA, TELEPHONE_EVENT = 0, 8, 101
PAYLOAD_TYPES = {"PCMU": PCMU, "PCMA": PCMA}
DTMF_DIGITS = "0123456789*#ABCD"  # RFC 4733 section 3.2: the events 0-15, in this order
SAMPLES_PER_PACKET = 160  # 20 ms at 8 kHz


def _raw_udp_allowed() -> bool:
    """Whether this process may open a raw UDP socket, as SIPp does to play a pcap."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP).close()
    except OSError:
        return False
    return True


needs_sipp = pytest.mark.skipif(
    SIPP is None and not IN_CI,
    reason="SIPp (Debian sip-tester) is not installed; `make test` installs it",
)
needs_baresip = pytest.mark.skipif(
    BARESIP is None and not IN_CI,
    reason="baresip (Debian baresip) is not installed; `make test` installs it",
)
needs_raw_socket = pytest.mark.skipif(
    not IN_CI and not _raw_udp_allowed(),
    reason="SIPp plays a pcap from a raw socket: needs root or CAP_NET_RAW",
)


# --- G.711, independent of bridge.media.g711 (ITU-T G.711 as in the classic Sun g711.c) ---

_ULAW_SEGMENTS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEGMENTS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _ulaw_encode(x: np.ndarray) -> np.ndarray:
    x = x >> 2  # 14 bits
    mask = np.where(x < 0, 0x7F, 0xFF)
    x = np.minimum(np.abs(x), 8159) + 0x21
    seg = np.searchsorted(_ULAW_SEGMENTS, x)
    code = (np.minimum(seg, 7) << 4) | ((x >> (np.minimum(seg, 7) + 1)) & 0x0F)
    return np.where(seg >= 8, 0x7F, code) ^ mask


def _alaw_encode(x: np.ndarray) -> np.ndarray:
    x = x >> 3  # 13 bits
    mask = np.where(x >= 0, 0xD5, 0x55)
    x = np.where(x >= 0, x, -x - 1)
    seg = np.searchsorted(_ALAW_SEGMENTS, x)
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    code = (np.minimum(seg, 7) << 4) | ((x >> shift) & 0x0F)
    return np.where(seg >= 8, 0x7F, code) ^ mask


def _ulaw_table() -> np.ndarray:
    out = []
    for byte in range(256):
        u = ~byte & 0xFF
        t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
        out.append(0x84 - t if u & 0x80 else t - 0x84)
    return np.array(out, dtype="<i2")


def _alaw_table() -> np.ndarray:
    out = []
    for byte in range(256):
        a = byte ^ 0x55
        t, seg = (a & 0x0F) << 4, (a & 0x70) >> 4
        t = t + 8 if seg == 0 else (t + 0x108) << max(seg - 1, 0)
        out.append(t if a & 0x80 else -t)
    return np.array(out, dtype="<i2")


_DECODE = {PCMU: _ulaw_table(), PCMA: _alaw_table()}


def g711_encode(pcm: bytes, payload_type: int) -> bytes:
    """16-bit LE PCM as G.711 (payload type 0, mu-law, or 8, A-law)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    encode = {PCMU: _ulaw_encode, PCMA: _alaw_encode}[payload_type]
    return encode(x).astype(np.uint8).tobytes()


def g711_decode(payload: bytes, payload_type: int) -> bytes:
    """G.711 (payload type 0 or 8) as 16-bit LE PCM."""
    return _DECODE[payload_type][np.frombuffer(payload, dtype=np.uint8)].tobytes()


# --- RTP and pcap ---


class Rtp(NamedTuple):
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def build_rtp(
    payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes, marker: bool
) -> bytes:
    second = (0x80 if marker else 0) | payload_type
    head = struct.pack("!BBHII", 0x80, second, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
    return head + payload


def parse_rtp(packet: bytes) -> Rtp:
    """An RTP packet's header fields and payload (CSRCs, extension and padding skipped)."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        raise ValueError(f"not RTP: {packet[:12].hex()}")
    first, second, sequence, timestamp, ssrc = struct.unpack_from("!BBHII", packet)
    start = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # header extension: 4 bytes, then its length in 32-bit words
        start += 4 + 4 * struct.unpack_from("!H", packet, start + 2)[0]
    end = len(packet) - (packet[-1] if first & 0x20 else 0)
    return Rtp(second & 0x7F, bool(second & 0x80), sequence, timestamp, ssrc, packet[start:end])


def rtp_audio(packets: Iterable[bytes | Rtp]) -> bytes:
    """The G.711 packets among `packets` (by payload type 0/8; others, e.g. telephone-events,
    skipped) decoded to PCM, in sequence-number order (as a jitter buffer would)."""
    parsed = [p if isinstance(p, Rtp) else parse_rtp(p) for p in packets]
    audio = [p for p in parsed if p.payload_type in _DECODE]
    if not audio:
        return b""
    first = audio[0].sequence
    audio.sort(key=lambda p: (p.sequence - first) & 0xFFFF)
    return b"".join(g711_decode(p.payload, p.payload_type) for p in audio)


def telephone_events(packets: Iterable[bytes | Rtp], payload_type: int = TELEPHONE_EVENT) -> str:
    """The DTMF digits of the RFC 4733 packets among `packets`: one per event (an event is its
    RTP timestamp; start, updates and repeated end packets all carry the same one)."""
    digits, seen = [], set()
    for packet in packets:
        rtp = packet if isinstance(packet, Rtp) else parse_rtp(packet)
        if rtp.payload_type != payload_type or len(rtp.payload) < 4:
            continue
        key = (rtp.timestamp, rtp.payload[0])
        if key not in seen and rtp.payload[0] < len(DTMF_DIGITS):
            seen.add(key)
            digits.append(DTMF_DIGITS[rtp.payload[0]])
    return "".join(digits)


@dataclass(frozen=True)
class RtpRun:
    """What a pcap holds, and where its stream leaves off (to continue it in another pcap)."""

    packets: int
    seconds: float  # from the first packet to the last
    ssrc: int
    next_sequence: int
    next_timestamp: int


_PCAP_HEADER = struct.Struct("<IHHiIII")  # magic, version 2.4, zone, sigfigs, snaplen, link
_PCAP_RECORD = struct.Struct("<IIII")  # seconds, microseconds, captured length, length
_PCAP_EPOCH = 1_700_000_000  # the captures' first timestamp (any fixed time will do)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(payload: bytes, src: tuple[str, int], dst: tuple[str, int], ident: int) -> bytes:
    """Ethernet II / IPv4 / UDP around `payload`, checksums computed."""
    src_ip, dst_ip = socket.inet_aton(src[0]), socket.inet_aton(dst[0])
    udp_length = 8 + len(payload)
    pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_length)
    udp = struct.pack("!HHHH", src[1], dst[1], udp_length, 0) + payload
    udp_sum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", udp_sum) + udp[8:]
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + udp_length, ident & 0xFFFF, 0x4000, 64,
        socket.IPPROTO_UDP, 0, src_ip, dst_ip,
    )  # fmt: skip
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    ethernet = bytes.fromhex("020000000002") + bytes.fromhex("020000000001")  # dst, src MAC
    ethernet += struct.pack("!H", 0x0800)  # IPv4
    return ethernet + ip + udp


def write_pcap(
    path: Path | str,
    packets: Sequence[tuple[float, bytes]],
    src: tuple[str, int] = ("192.0.2.1", 6000),
    dst: tuple[str, int] = ("192.0.2.2", 6000),
) -> Path:
    """A libpcap file (Ethernet link type) of UDP datagrams: (seconds from the start, payload)
    each. SIPp keeps only the payloads, the gaps between them and the destination port's
    offset from the capture's lowest one: it sends from its media port to the SDP's."""
    path = Path(path)
    with path.open("wb") as out:
        out.write(_PCAP_HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for index, (at, payload) in enumerate(packets):
            frame = _frame(payload, src, dst, index)
            micros = round(at * 1_000_000)
            seconds, micros = divmod(micros, 1_000_000)
            out.write(_PCAP_RECORD.pack(_PCAP_EPOCH + seconds, micros, len(frame), len(frame)))
            out.write(frame)
    return path


def read_pcap(path: Path | str) -> list[tuple[float, bytes]]:
    """The UDP payloads of a libpcap file (Ethernet, IPv4), each with its time from the first."""
    data = Path(path).read_bytes()
    magic, _, _, _, _, _, link = _PCAP_HEADER.unpack_from(data)
    if magic != 0xA1B2C3D4 or link != 1:
        raise ValueError(f"{path}: not a little-endian microsecond Ethernet pcap")
    out: list[tuple[float, bytes]] = []
    offset, start = _PCAP_HEADER.size, None
    while offset < len(data):
        seconds, micros, length, _ = _PCAP_RECORD.unpack_from(data, offset)
        frame = data[offset + _PCAP_RECORD.size : offset + _PCAP_RECORD.size + length]
        offset += _PCAP_RECORD.size + length
        if struct.unpack_from("!H", frame, 12)[0] != 0x0800 or frame[23] != socket.IPPROTO_UDP:
            continue
        udp = 14 + 4 * (frame[14] & 0x0F)
        udp_length = struct.unpack_from("!H", frame, udp + 4)[0]
        at = seconds + micros / 1_000_000
        start = at if start is None else start
        out.append((at - start, frame[udp + 8 : udp + udp_length]))
    return out


def tone_pcap(
    path: Path | str,
    freq: float,
    seconds: float,
    codec: str = "PCMU",
    *,
    amplitude: float = AMPLITUDE,
    ssrc: int = 0x5EED0001,
    sequence: int = 1000,
    timestamp: int = 0,
) -> RtpRun:
    """A pcap of a `freq` Hz tone, `seconds` long, as G.711 RTP (payload type 0 for PCMU, 8 for
    PCMA): a 20 ms packet every 20 ms, the marker bit on the first, sequence numbers +1 and
    timestamps +160 from one packet to the next, one SSRC."""
    if codec not in PAYLOAD_TYPES:
        raise ValueError(f"codec {codec!r}: PCMU or PCMA")
    payload_type = PAYLOAD_TYPES[codec]
    encoded = g711_encode(make_tone(freq, seconds, RATE, amplitude), payload_type)
    count = len(encoded) // SAMPLES_PER_PACKET
    packets = [
        (
            index * 0.02,
            build_rtp(
                payload_type, sequence + index, timestamp + index * SAMPLES_PER_PACKET, ssrc,
                encoded[index * SAMPLES_PER_PACKET : (index + 1) * SAMPLES_PER_PACKET],
                marker=index == 0,
            ),
        )
        for index in range(count)
    ]  # fmt: skip
    write_pcap(path, packets)
    return RtpRun(
        count, (count - 1) * 0.02, ssrc, sequence + count, timestamp + count * SAMPLES_PER_PACKET
    )


def dtmf_pcap(
    path: Path | str,
    digits: str,
    *,
    digit_seconds: float = 0.1,
    gap_seconds: float = 0.1,
    payload_type: int = TELEPHONE_EVENT,
    volume: int = 10,
    ssrc: int = 0x5EED0001,
    sequence: int = 1000,
    timestamp: int = 0,
) -> RtpRun:
    """A pcap of RFC 4733 telephone-events, one key press per digit ("0"-"9", "*", "#", "A"-"D"):
    the start packet (marker bit) and an update every 20 ms, the duration so far in each, then the
    end packet (E bit, the full duration) three times 20 ms apart; every packet of a press with
    its start timestamp; `gap_seconds` from a press's last packet to the next press's first.
    Each packet has its own sequence number. Continue a tone's stream with its `RtpRun` (ssrc,
    next_sequence, a next_timestamp that covers the pause between the two plays)."""
    total = round(digit_seconds * RATE)
    if not 0 < total <= 0xFFFF:
        raise ValueError(f"a press of {digit_seconds} s does not fit an event")
    packets: list[tuple[float, bytes]] = []
    at = 0.0
    for digit in digits.upper():
        if digit not in DTMF_DIGITS:
            raise ValueError(f"{digit!r} is not a DTMF digit")
        event, start = DTMF_DIGITS.index(digit), timestamp + round(at * RATE)
        updates = -(-total // SAMPLES_PER_PACKET)  # ceiling
        durations = [min((i + 1) * SAMPLES_PER_PACKET, total) for i in range(updates)]
        flags = [volume] * updates + [0x80 | volume] * 3
        for index, (flag, duration) in enumerate(zip(flags, durations + [total] * 3, strict=True)):
            payload = struct.pack("!BBH", event, flag, duration)
            rtp = build_rtp(payload_type, sequence, start, ssrc, payload, marker=index == 0)
            packets.append((at + index * 0.02, rtp))
            sequence += 1
        at += (len(flags) - 1) * 0.02 + gap_seconds
    write_pcap(path, packets)
    seconds = packets[-1][0] if packets else 0.0
    return RtpRun(len(packets), seconds, ssrc, sequence, timestamp + round(at * RATE))


def write_wav(path: Path | str, pcm: bytes, rate: int = RATE) -> Path:
    """16-bit mono PCM as a WAV file."""
    path = Path(path)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return path


# --- ports ---


def _free_port_pair() -> int:
    """A port free for TCP and UDP whose next one is free for TCP too (baresip listens for TLS
    on its SIP port + 1)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports")


# --- SIPp ---


def describe(result: SippResult) -> str:
    """A failed SIPp run, for an assertion message."""
    return f"rc={result.returncode}\n{result.output[-2000:]}\n{result.errors[-2000:]}"


class SippProcess:
    """One SIPp started in the background; `wait` for its result."""

    def __init__(self, process: subprocess.Popen[str], port: int, name: Path, output: Path):
        self.process = process
        self.port = port
        self._name = name
        self._output = output

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def result(self) -> SippResult:
        read = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
        return SippResult(
            self.process.returncode if self.process.returncode is not None else -1,
            read(self._name.with_suffix(".msg")),
            read(self._name.with_suffix(".err")),
            read(self._output),
        )

    def wait(self, timeout: float = 20) -> SippResult:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
        return self.result()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _scenario_path(scenario: str | Path) -> Path:
    path = Path(scenario)
    return path.resolve() if path.is_absolute() or path.exists() else SCENARIOS / scenario


def _start_sipp(
    workdir: Path,
    scenario: str | Path,
    remote: str | None,
    args: Sequence[str],
    port: int,
    timeout: float,
    calls: int,
) -> SippProcess:
    assert SIPP is not None, "sipp missing (Debian sip-tester)"
    path = _scenario_path(scenario)
    name = workdir / f"{path.stem}-{time.monotonic_ns()}"
    output = name.with_suffix(".out")
    command = [
        SIPP, "-sf", str(path), "-i", "127.0.0.1", "-p", str(port), "-t", "u1",
        "-m", str(calls), "-nostdin", "-timeout", f"{max(1, round(timeout))}s",
        "-trace_msg", "-message_file", str(name.with_suffix(".msg")),
        "-trace_err", "-error_file", str(name.with_suffix(".err")),
        *args,
    ]  # fmt: skip
    if remote:
        command.append(remote)
    with output.open("w") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, text=True,
            cwd=workdir,
        )  # fmt: skip
    return SippProcess(process, port, name, output)


def _bound(sipp: SippProcess, seconds: float = 0.3) -> bool:
    """False when SIPp exited at once for a SIP port taken meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sipp.process.poll() is not None:
            return not lost_its_port(sipp.result())
        time.sleep(0.02)
    return True


@contextmanager
def sipp_process(
    workdir: Path,
    scenario: str | Path,
    remote: str | None = None,
    *args: str,
    port: int | None = None,
    timeout: float = 20,
    calls: int = 1,
) -> Iterator[SippProcess]:
    """SIPp in the background (a UAS, typically: `remote` None), on `port` or a free one
    (probed again, up to three times, when another process took it first); stopped after.
    `scenario`: a file name in tests/media/scenarios/ or a path."""
    for _ in range(3):
        sipp = _start_sipp(workdir, scenario, remote, args, port or free_port(), timeout, calls)
        if port is not None or _bound(sipp):
            break
    try:
        yield sipp
    finally:
        sipp.stop()


def run_sipp(
    workdir: Path,
    scenario: str | Path,
    remote: str | None,
    *args: str,
    port: int | None = None,
    timeout: float = 20,
    calls: int = 1,
) -> SippResult:
    """Run one SIPp scenario to its end (loopback, `calls` calls, `timeout` seconds at most).
    SIPp runs in `workdir`: give it files (-key pcap ...) by absolute path."""
    for _ in range(3):
        sipp = _start_sipp(workdir, scenario, remote, args, port or free_port(), timeout, calls)
        result = sipp.wait(timeout + 15)
        if port is not None or not lost_its_port(result):
            break
    return result


_SO_TIMESTAMPNS = 35  # Linux: the kernel's receive time of each datagram, as a timespec


class RtpSink:
    """A UDP socket on loopback that collects what arrives (an RTP peer that only listens),
    with each datagram's arrival time as the kernel took it (`arrivals`, time.time() seconds;
    when the kernel gives none, the time it was read), so pacing shows even in packets that
    waited in the socket before `collect` ran."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        with suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.packets: list[bytes] = []
        self.arrivals: list[float] = []
        self.sources: set[tuple[str, int]] = set()

    def collect(self, seconds: float, until: int | None = None) -> list[bytes]:
        """Receive for `seconds` (or until `until` packets are in); all packets so far."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and (until is None or len(self.packets) < until):
            try:
                data, ancillary, _, source = self.sock.recvmsg(4096, 64)
            except TimeoutError:
                continue
            arrival = time.time()
            for level, kind, value in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, _SO_TIMESTAMPNS) and len(value) >= 16:
                    sec, nsec = struct.unpack_from("qq", value)
                    arrival = sec + nsec / 1e9
            self.packets.append(data)
            self.arrivals.append(arrival)
            self.sources.add(source)
        return self.packets

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RtpSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- baresip ---

# Debian's baresip 1.0: `ctrl_tcp` takes commands as netstring JSON ({"command", "params",
# "token"}) and sends events and responses the same way; its commands are `menu`'s (dial,
# accept, hangup, sndcode). `aufile` is only a source there (no player), so `sndfile` writes
# what is decoded (and what is encoded) to dump-<time>-dec.wav (-enc.wav) in snd_path. No
# audio_player: the received audio goes nowhere else. net_interface pins the SDP to loopback.
_CONFIG = """\
poll_method\t\tepoll
sip_listen\t\t127.0.0.1:{sip}
net_interface\t\t127.0.0.1
call_local_timeout\t120
call_max_calls\t\t4
audio_source\t\taufile,{source}
ausrc_srate\t\t8000
ausrc_channels\t\t1
module_path\t\t{modules}
module\t\t\tg711.so
module\t\t\taufile.so
module\t\t\tsndfile.so
module\t\t\tctrl_tcp.so
module_tmp\t\taccount.so
module_app\t\tmenu.so
ctrl_tcp_listen\t\t127.0.0.1:{ctrl}
snd_path\t\t{dumps}
statmode_default\toff
"""

_LOST_PORT = ("Address already in use", "ctrl_tcp: failed to listen")


class BaresipError(AssertionError):
    pass


class BaresipPhone:
    """A baresip softphone on loopback, driven over ctrl_tcp (a context manager: started on
    entry, always stopped, killed if need be, on exit).

    It plays `wav` (16-bit mono 8 kHz) or a `tone` of that many Hz, `play_seconds` long, from
    the start in each call (baresip 1.0's aufile does not loop: at the file's end baresip hangs
    up, "audio error (0,end of file)", so make it longer than the call), and records what it
    receives;
    G.711 only (PCMU and PCMA, or `codecs`), telephone-event (payload type 101) offered by
    baresip itself; SRTP with `mediaenc` (and TLS to a registrar trusted through `cafile`).
    Without `registrar` its account is sip:<name>@127.0.0.1:<its port>, no REGISTER, and it
    is called directly at `uri`; with one ("host:port"), it registers there as
    `username` (default `name`) with `password` (the realm is whatever the challenge says:
    baresip has no setting for it; libre 1.x digests with MD5 only).
    """

    def __init__(
        self,
        workdir: Path,
        name: str,
        *,
        tone: float | None = None,
        wav: Path | str | None = None,
        play_seconds: float = 30.0,
        auto_answer: bool = False,
        registrar: str | None = None,
        username: str | None = None,
        password: str | None = None,
        transport: str = "udp",
        regint: int = 60,
        codecs: Sequence[str] = ("PCMU", "PCMA"),
        lifetime: float = 60.0,
        sip_trace: bool = True,
        mediaenc: str | None = None,
        cafile: Path | None = None,
    ) -> None:
        assert BARESIP is not None, "baresip missing (Debian baresip)"
        if (tone is None) == (wav is None):
            raise ValueError("give a tone or a wav to play")
        self.name = name
        self.home = workdir / f"baresip-{name}"
        self.home.mkdir(parents=True)
        self.dumps = self.home / "heard"
        self.dumps.mkdir()
        self.source = Path(wav).resolve() if wav else self.home / f"plays-{tone:g}hz.wav"
        if tone is not None:
            write_wav(self.source, make_tone(tone, play_seconds))
        self.auto_answer = auto_answer
        self.registrar = registrar
        self.username = username or name
        self.password = password
        self.transport = transport
        self.regint = regint
        self.codecs = tuple(codecs)
        if not self.codecs or not set(self.codecs) <= set(PAYLOAD_TYPES):
            raise ValueError(f"codecs {codecs!r}: PCMU and/or PCMA")
        self.lifetime = lifetime
        self.sip_trace = sip_trace
        # SRTP: "srtp" (best effort) or "srtp-mand" (RTP/SAVP, required), its srtp module
        self.mediaenc = mediaenc
        # CA certificates for TLS (baresip 1.0 does not check the server's name)
        self.cafile = cafile
        self.log_path = self.home / "baresip.log"
        self.port = 0
        self.ctrl_port = 0
        self.process: subprocess.Popen[str] | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Condition()
        self._events: list[dict[str, Any]] = []
        self._responses: dict[str, dict[str, Any]] = {}
        self._token = 0

    # lifecycle

    @property
    def uri(self) -> str:
        """Where to call this phone directly (its account is not registered anywhere)."""
        return f"sip:{self.name}@127.0.0.1:{self.port}"

    @property
    def aor(self) -> str:
        if self.registrar:
            return f"sip:{self.username}@{self.registrar}"
        return self.uri

    def _account(self) -> str:
        params = [f"answermode={'auto' if self.auto_answer else 'manual'}"]
        params.append("audio_codecs=" + ",".join(f"{c}/8000/1" for c in self.codecs))
        if self.registrar:
            params.append(f"regint={self.regint}")
            if self.password is not None:
                params.append(f"auth_pass={self.password}")
        else:
            params.append("regint=0")
        if self.mediaenc:
            params.append(f"mediaenc={self.mediaenc}")
        return f"<{self.aor};transport={self.transport}>;" + ";".join(params) + "\n"

    def start(self) -> BaresipPhone:
        for _ in range(5):
            self.port, self.ctrl_port = _free_port_pair(), free_port()
            config = _CONFIG.format(
                sip=self.port, ctrl=self.ctrl_port, source=self.source, modules=BARESIP_MODULES,
                dumps=self.dumps,
            )  # fmt: skip
            if self.mediaenc:
                config += "module\t\t\tsrtp.so\n"
            if self.cafile is not None:
                config += f"sip_cafile\t\t{self.cafile}\n"
            (self.home / "config").write_text(config)
            (self.home / "accounts").write_text(self._account())
            command = [BARESIP, "-f", str(self.home), "-t", str(round(self.lifetime))]
            if self.sip_trace:
                command.append("-s")
            with self.log_path.open("w") as log:
                self.process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    text=True, cwd=self.home,
                )  # fmt: skip
            if self._connect():
                return self
            self._kill()
            if not any(reason in self.output() for reason in _LOST_PORT):
                break
        raise BaresipError(f"baresip {self.name} did not start:\n{self.output()[-3000:]}")

    def _connect(self, timeout: float = 5.0) -> bool:
        """Wait until baresip is ready and take its control connection."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if "baresip is ready." in self.output():
                try:
                    self._sock = socket.create_connection(("127.0.0.1", self.ctrl_port), 1)
                except OSError:
                    return False  # our control port went to another process
                self._sock.settimeout(None)
                self._reader = threading.Thread(target=self._read, daemon=True)
                self._reader.start()
                return True
            time.sleep(0.02)
        return False

    def _read(self) -> None:
        assert self._sock is not None
        buffer = b""
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                return
            buffer += chunk
            while (colon := buffer.find(b":")) > 0 and len(buffer) > colon:
                length = int(buffer[:colon])
                end = colon + 1 + length
                if len(buffer) < end + 1:
                    break
                message = json.loads(buffer[colon + 1 : end])
                buffer = buffer[end + 1 :]  # the netstring's trailing ","
                with self._lock:
                    if message.get("response"):
                        self._responses[str(message.get("token"))] = message
                    elif message.get("event"):
                        message["at"] = time.monotonic()
                        self._events.append(message)
                    self._lock.notify_all()

    def stop(self, grace: float = 2.0) -> int | None:
        """SIGTERM (baresip hangs up and unregisters), SIGKILL after `grace` seconds (it waits
        for the answer to its un-REGISTER: a registrar that is gone would hold it 32 s)."""
        if self._sock is not None:
            with suppress(OSError):
                self._sock.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._kill()
        return self.process.returncode if self.process else None

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def __enter__(self) -> BaresipPhone:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def output(self) -> str:
        """baresip's stdout and stderr so far (with -s: the SIP messages it sent and got)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # control

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> str:
        """Run one baresip command (a `menu` long command); its output. BaresipError when it
        fails or baresip does not answer."""
        if self._sock is None:
            raise BaresipError(f"baresip {self.name} is not running")
        with self._lock:
            self._token += 1
            token = f"t{self._token}"
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._sock.sendall(str(len(body)).encode() + b":" + body + b",")
        deadline = time.monotonic() + timeout
        with self._lock:
            while token not in self._responses:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BaresipError(self._failure(f"no answer to {command} {params}"))
                self._lock.wait(left)
            response = self._responses.pop(token)
        if not response.get("ok"):
            raise BaresipError(self._failure(f"{command} {params}: {response.get('data')}"))
        return str(response.get("data", ""))

    def dial(self, uri: str) -> None:
        """Call `uri` (sip:user@host:port; a bare user goes to the account's domain)."""
        self.command("dial", uri)

    def answer(self) -> None:
        """Accept the incoming call (without auto-answer)."""
        self.command("accept")

    def hangup(self) -> None:
        """Hang up (or reject, or cancel) the current call."""
        self.command("hangup")

    def send_dtmf(self, digits: str) -> None:
        """Send DTMF in the current call: RFC 4733 telephone-events (payload type 101 as
        negotiated), the presses queued one after the other."""
        self.command("sndcode", digits)

    # events

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """ctrl_tcp events so far (CALL_INCOMING, CALL_RINGING, CALL_ESTABLISHED, CALL_CLOSED,
        CALL_DTMF_START/END, REGISTER_OK, ...), each with `at` (time.monotonic())."""
        with self._lock:
            return [e for e in self._events if kind is None or e.get("type") == kind]

    def wait_event(self, kind: str, count: int = 1, timeout: float = 10.0) -> dict[str, Any]:
        """The `count`-th event of this type, once it came; BaresipError after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [e for e in self._events if e.get("type") == kind]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.process is not None and self.process.poll() is not None):
                    raise BaresipError(self._failure(f"no {kind} (#{count}) in {timeout} s"))
                self._lock.wait(min(left, 0.2))

    def wait_incoming(self, timeout: float = 10.0, count: int = 1) -> dict[str, Any]:
        """The `count`-th incoming call's CALL_INCOMING event (answer it with `answer`)."""
        return self.wait_event("CALL_INCOMING", count, timeout)

    def wait_call_established(self, timeout: float = 10.0, count: int = 1) -> dict[str, Any]:
        return self.wait_event("CALL_ESTABLISHED", count, timeout)

    def wait_closed(self, timeout: float = 10.0, count: int = 1) -> dict[str, Any]:
        """The CALL_CLOSED event (its `param` is the reason, e.g. "Connection reset by peer")."""
        return self.wait_event("CALL_CLOSED", count, timeout)

    def wait_registered(self, timeout: float = 10.0) -> None:
        """Wait for a 200 to the REGISTER (the event may come before the control connection:
        the log tells too)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.events("REGISTER_OK") or re.search(r"\b200 OK\b.*binding", self.output()):
                return
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise BaresipError(self._failure(f"not registered to {self.registrar}"))

    def dtmf_received(self) -> str:
        """The DTMF digits received so far (from RFC 4733 telephone-events or SIP INFO)."""
        return "".join(str(e.get("param", "")) for e in self.events("CALL_DTMF_START"))

    def wait_dtmf(self, digits: str, timeout: float = 10.0) -> str:
        """Wait until at least len(`digits`) digits came; the digits received."""
        deadline = time.monotonic() + timeout
        while len(self.dtmf_received()) < len(digits) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.dtmf_received()

    # audio

    def _dump(self, kind: str, timeout: float) -> Path:
        """The newest sndfile dump of this kind, once libsndfile closed it (its header then
        gives the data's true length: the call must have ended)."""
        deadline = time.monotonic() + timeout
        while True:
            dumps = sorted(self.dumps.glob(f"dump-*-{kind}.wav"))
            if dumps and _finished_wav(dumps[-1]):
                return dumps[-1]
            if time.monotonic() > deadline:
                raise BaresipError(self._failure(f"no finished {kind} WAV in {self.dumps}"))
            time.sleep(0.05)

    def received_wav(self, timeout: float = 5.0) -> Path:
        """What this phone heard in its latest call (decoded, 8 kHz mono 16-bit), after the
        call closed. The dumps are named by the second the call's audio started: two calls
        in one second share (overwrite) one file."""
        return self._dump("dec", timeout)

    def sent_wav(self, timeout: float = 5.0) -> Path:
        """What this phone sent in its latest call (before encoding), after the call closed."""
        return self._dump("enc", timeout)

    def received_audio(self, timeout: float = 5.0) -> bytes:
        """`received_wav`'s samples as 16-bit mono PCM."""
        with wave.open(str(self.received_wav(timeout)), "rb") as w:
            return w.readframes(w.getnframes())

    def _failure(self, what: str) -> str:
        return f"baresip {self.name}: {what}; it said:\n{self.output()[-3000:]}"


def _finished_wav(path: Path) -> bool:
    try:
        with wave.open(str(path), "rb") as w:
            data = w.getnframes() * w.getsampwidth() * w.getnchannels()
    except (EOFError, wave.Error):
        return False
    return data > 0 and path.stat().st_size - data <= 1024
