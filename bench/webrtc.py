"""WebRTC legs bridged to RTP per core (issue 16): the embedded engine beside rtpengine.

    .venv/bin/python bench/webrtc.py [--calls 50,100,200,300] [--seconds 10] [--find-max]
                                     [--setup-window 32] [--no-rtpengine] [--profile]
                                     [--quick] [--json FILE] [--src DIR]

A call here is what a browser calling in (or an agent answering in the console) makes: one
plain RTP leg (the caller, G.711 PCMU over RTP/AVP) and one WebRTC leg (the "browser":
ICE, DTLS-SRTP, `UDP/TLS/RTP/SAVPF`, rtcp-mux, PCMU), bridged by the engine, which
unprotects and protects SRTP and relays, never decoding. It follows bench/media.py (read its
docstring first) and takes its helpers from there: the same cores and pinning (the engine
under test on --engine-core 0, the load generator on --gen-core 1, both pinned before exec,
so rtpengine's threads too), the same paced load, the same figures (loss, PDV p99, CPU per
relayed packet, other% and gother%: what the machine's other work took from the two cores),
the same pass rule (no loss, PDV p99 < --max-jitter-ms 5) and summary. Everything runs on
127.0.0.1, on ports of --ports (the first half the embedded engine's, the second
rtpengine's); every process it starts is stopped at the end, by its own process id.

Engines (each step starts from nothing):

- **embedded**: a child process (`--role engine`) runs `bridge.media.engine.EmbeddedMedia` on
  uvloop (the daemon's default; `--loops` also takes asyncio) with the daemon's garbage
  collector policy and its log lines formatted as the daemon's and written to /dev/null,
  driven through its port as the SIP path drives it: per call `answer` (the caller's offer),
  `offer(webrtc=True, like="caller")` (the app's leg: ICE-lite, DTLS actpass), `accept` with
  the browser's answer; then, once `MediaConnected` came for the leg, `bridge`.
- **rtpengine** (Debian `rtpengine-daemon`, 10.5 here), started as bench/media.py starts it
  (userspace, `--table=-1`, one worker thread, `--delete-delay=0`), on its own ports, driven
  by the bridge's own adapter, `bridge.media.rtpengine.RtpengineMedia`, over ng: per call
  `caller_offer` (the plain SDP), `offer(webrtc=True)` (an ng `offer` with the flags the adapter
  uses toward a WebRTC side: UDP/TLS/RTP/SAVPF, `ICE: force`, `DTLS: passive`, rtcp-mux offer
  and require, no SDES, PCMU/PCMA/telephone-event only) and `accept` with the browser's
  answer (an ng `answer`, RTP/AVP, ICE removed, RTCP demuxed toward the caller); `release`
  (ng `delete`) when the step ends. rtpengine is a full ICE agent: it sends checks of its own
  (answered by the generator) and its keep-alives during the step.

**The browser side is cheap on purpose**: no aiortc peer connection per leg (it decodes every
frame: ~30 legs per core, DESIGN.md "Media"). The generator is a minimal WebRTC client per leg
built of the engine's own pieces: STUN binding requests with USE-CANDIDATE, ICE-CONTROLLING
and MESSAGE-INTEGRITY (aioice.stun; a 487 role conflict, or a check of a controlling peer
with the larger tie-breaker, makes it the controlled side, as RFC 8445 says), answers to the
engine's checks, a DTLS client handshake (`bridge.media.webrtc.DtlsSrtp(server=False)` with a
`DtlsIdentity` of its own, the engine's certificate checked against the offer's
fingerprint), and SRTP with pylibsrtp. The answer SDP the engine gets is written here: the
leg's ice-ufrag/pwd, the generator's certificate fingerprint, `a=setup:active`, a host
candidate, `UDP/TLS/RTP/SAVPF`, rtcp-mux, PCMU. Every WebRTC leg uses one socket of the
generator (a browser has one per peer connection; the engine's side, one socket per leg, is
the same either way) and every caller another, as in bench/media.py. Like a browser it sends
a consent check (RFC 7675) on every leg every 5 s during the step (spread evenly); it sends
no RTCP.

Per step (N calls), in order:

1. **Signalling** (not timed against the load): the N callers' offers, the N WebRTC offers and
   the N answers. CPU per set-up counts the engine's CPU here (`sig`, ms a leg).
2. **Set-up**: the generator brings the N WebRTC legs up, --setup-window (32) at a time (a
   leg starts when one before it is done): ICE check, its response, DTLS handshake. A leg is
   up when the generator's DTLS client is (the engine, the DTLS server, is up just before:
   its Finished is the last flight); the embedded engine's `MediaConnected` events are waited
   for too (all N), then the calls are bridged. **Set-ups per second** = N / the wall time
   from the first check to the last leg up; the engine's CPU over that time per leg (`conn`,
   ms) and with the signalling (`cpu/set-up`); the p50 and p99 of one leg's set-up time
   (first check to DTLS done: it includes waiting behind the other legs in the window);
   the generator's CPU share over the set-up, so a generator-bound rate shows.
3. **The measured window** (--seconds, 10): every call's two streams, the caller's plain RTP
   and the browser's SRTP, each 50 packets a second of 172-byte PCMU (the SRTP ones 182
   bytes: the 10-byte auth tag), spread over the 20 ms frame and paced on absolute times as
   in bench/media.py, with the same tag (stream, sequence, send time taken before `protect`)
   and the kernel's arrival times (SO_TIMESTAMPNS). What comes back on the browser socket
   is logged as it came (SRTP) and unprotected after the window, so the generator's
   decryption costs nothing inside it; loss, PDV and CPU per relayed packet are then
   bench/media.py's (`_delays`, `Bench._fill`). A step passes with zero loss and PDV p99 <
   --max-jitter-ms; a failed set-up (a leg not up within --connect-timeout) fails it too.

`--find-max` steps N up (--max-steps: 50, 100, 200, 300, 400, 500, 750) for each engine, the
engines taking turns, runs a failing step once more (--retries, 1; not when the generator
saturated) and stops an engine at its first step no run passes. The summary: per engine the
largest passing N (WebRTC legs bridged to RTP on one core), the CPU per relayed packet there
and the calls per core it makes (bench/media.py's `summarize`), the set-ups per second (the
median over the steps) and the ratio embedded / rtpengine of each. Issue 16's target: at
least 300 legs per core embedded (10 x aiortc's full pipeline); its moonshot: at least
rtpengine's figure.

`--profile` samples the embedded engine with py-spy (as bench/media.py) at --profile-calls
calls during a window (its figures are not used). `--quick`: a smoke run, 2 s steps of 20
calls, no find-max (tests/media/test_bench_webrtc.py runs it with --no-rtpengine). `--src
DIR` runs the embedded engine from another copy of the package. `--json FILE` writes every
figure. No new step starts after --budget seconds (900). It prints figures; it asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import secrets
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from array import array
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from media import (
    CLK_TCK,
    FRAME,
    HOST,
    PACKET_BYTES,
    PCMU,
    RELAY_HEAD,
    RELAY_UNITS,
    SAMPLES,
    TAG_OFFSET,
    Bench,
    EngineFigures,
    RtpEngine,
    Step,
    _delays,
    _percentile,
    emit,
    fmt,
    importlib_spec,
    pinner,
    print_profile,
    proc_ticks,
    read_protocol,
    relay_row,
    rtpengine_version,
    sdp,
    sdp_port,
    summarize,
    udp_drops,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAVPF = "UDP/TLS/RTP/SAVPF"
FIND_MAX_STEPS = (50, 100, 200, 300, 400, 500, 750)
CONSENT_SECONDS = 5.0  # RFC 7675: a browser's consent check on each leg every ~5 s
CHECK_RETRY = 0.1  # s between an unanswered check and the next
SRTP_BYTES = PACKET_BYTES + 10  # AES_CM_128_HMAC_SHA1_80's tag
_SEQ_TS = struct.Struct("!HI")  # RTP sequence and timestamp, at offset 2
_TAG_REST = struct.Struct("!IQ")  # the generator's sequence and send time, at offset 16
_SRTP_REC = struct.Struct("=HH")  # the browser socket's log: source port, size (then 16 + size)


# -- SDP of the browser side ---------------------------------------------------------------------
def offer_transport(offer: str) -> dict[str, Any]:
    """What the browser needs of an engine's WebRTC offer: its port, ICE credentials and
    certificate fingerprint (media level first, then session level)."""
    from bridge.media.sdp import parse_sdp

    description = parse_sdp(offer)
    media = description.media[0]
    if media.proto != SAVPF:
        raise RuntimeError(f"not a WebRTC offer ({media.proto}): {offer!r}")

    def value(name: str) -> str:
        found = [v for v in media.attribute_values(name) if v]
        found += [v for k, v in description.attributes if k == name and v]
        if not found:
            raise RuntimeError(f"no a={name} in the offer: {offer!r}")
        return found[0]

    algorithm, _, digest = value("fingerprint").partition(" ")
    if algorithm.lower() != "sha-256":
        raise RuntimeError(f"the offer's fingerprint is {algorithm}, the bench checks sha-256")
    return {
        "port": media.port,
        "ufrag": value("ice-ufrag"),
        "pwd": value("ice-pwd"),
        "fingerprint": digest.strip().upper(),
    }


def ice_token(length: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def browser_answer(
    session: int, port: int, ufrag: str, pwd: str, fingerprint: str, ssrc: int
) -> str:
    """The browser's answer: what Chrome's would say of this leg, PCMU only."""
    lines = [
        "v=0",
        f"o=- {session} 2 IN IP4 {HOST}",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic: WMS bench",
        f"m=audio {port} {SAVPF} {PCMU}",
        f"c=IN IP4 {HOST}",
        f"a=candidate:1 1 udp 2130706431 {HOST} {port} typ host",
        "a=end-of-candidates",
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        f"a=fingerprint:sha-256 {fingerprint}",
        "a=setup:active",
        "a=mid:0",
        "a=sendrecv",
        "a=msid:bench audio",
        "a=rtcp-mux",
        f"a=rtpmap:{PCMU} PCMU/8000",
        "a=ptime:20",
        f"a=ssrc:{ssrc} cname:bench",
    ]
    return "\r\n".join(lines) + "\r\n"


# -- the browsers (inside the load generator) -----------------------------------------------------
class Browser:
    """One WebRTC leg of the generator: ICE (a full agent's few messages) and a DTLS client."""

    __slots__ = (
        "address",
        "checks",
        "conflicts",
        "controlling",
        "done",
        "dtls",
        "failed",
        "ice_ok",
        "index",
        "key",
        "next_check",
        "remote_key",
        "started",
        "transaction",
        "username",
    )

    def __init__(self, index: int, leg: dict[str, Any], identity) -> None:
        from bridge.media.webrtc import DtlsSrtp, RemoteWebRtc

        self.index = index
        self.address = (HOST, leg["port"])
        self.username = f"{leg['ufrag']}:{leg['my_ufrag']}"
        self.remote_key = leg["pwd"].encode()
        self.key = leg["my_pwd"].encode()
        remote = RemoteWebRtc(
            leg["ufrag"], leg["pwd"], (("sha-256", leg["fingerprint"]),), "passive"
        )
        self.dtls = DtlsSrtp(identity, remote, server=False)
        self.controlling = True
        self.transaction: bytes | None = None
        self.ice_ok = False
        self.next_check = 0.0
        self.checks = 0
        self.conflicts = 0
        self.started: float | None = None
        self.done: float | None = None
        self.failed: str | None = None


class Browsers:
    """All the generator's WebRTC legs on its one browser socket, told apart by the engine's
    port they talk to."""

    def __init__(self, sock: socket.socket, identity, legs: list[dict[str, Any]]) -> None:
        from aioice import stun

        self.stun = stun
        self.sock = sock
        self.legs = [Browser(i, leg, identity) for i, leg in enumerate(legs)]
        self.by_port = {b.address[1]: b for b in self.legs}
        self.tie_breaker = random.getrandbits(64)
        self.requests_in = 0  # the engine's checks (rtpengine's), answered
        self.responses_in = 0
        self.stray = 0
        self.dtls_retransmits = 0

    def send(self, b: Browser, datagrams) -> None:
        for datagram in datagrams:
            with contextlib.suppress(OSError):
                self.sock.sendto(datagram, b.address)

    def check(self, b: Browser, now: float, *, nominate: bool = True) -> None:
        stun = self.stun
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        request.attributes["USERNAME"] = b.username
        request.attributes["PRIORITY"] = 1853824767  # a peer-reflexive host's, as Chrome's
        if b.controlling:
            request.attributes["ICE-CONTROLLING"] = self.tie_breaker
            if nominate:
                request.attributes["USE-CANDIDATE"] = None
        else:
            request.attributes["ICE-CONTROLLED"] = self.tie_breaker
        request.add_message_integrity(b.remote_key)
        request.add_fingerprint()
        if nominate:
            b.transaction = request.transaction_id
            b.checks += 1
            b.next_check = now + CHECK_RETRY
        self.send(b, (bytes(request),))

    def datagram(self, data: bytes, port: int, now: float) -> None:
        """A STUN or DTLS datagram from the engine (media is handled by the caller)."""
        b = self.by_port.get(port)
        if b is None or not data:
            self.stray += 1
            return
        first = data[0]
        if first < 4:
            self._stun(b, data, now)
        elif 19 < first < 64:
            self.send(b, b.dtls.receive(data))
            if b.dtls.failed is not None and b.failed is None:
                b.failed = b.dtls.failed
            elif b.dtls.connected and b.done is None:
                b.done = time.monotonic()  # not `now`: a whole handshake can fit in one drain
        else:
            self.stray += 1

    def _stun(self, b: Browser, data: bytes, now: float) -> None:
        stun = self.stun
        try:
            message = stun.parse_message(data)
        except ValueError:
            self.stray += 1
            return
        if message.message_class == stun.Class.REQUEST:
            self.requests_in += 1
            code = self._role(b, message)
            response = stun.Message(
                message_method=stun.Method.BINDING,
                message_class=stun.Class.RESPONSE if code is None else stun.Class.ERROR,
                transaction_id=message.transaction_id,
            )
            if code is None:
                response.attributes["XOR-MAPPED-ADDRESS"] = (HOST, self.sock.getsockname()[1])
            else:
                response.attributes["ERROR-CODE"] = (487, "Role Conflict")
            response.add_message_integrity(b.key)
            response.add_fingerprint()
            self.send(b, (bytes(response),))
            return
        self.responses_in += 1
        if message.transaction_id != b.transaction:
            return  # an answer to a consent check, or to a check answered already
        if message.message_class == stun.Class.RESPONSE:
            if not b.ice_ok:
                b.ice_ok = True
                self.send(b, b.dtls.start())  # ClientHello, once the pair works
        elif message.attributes.get("ERROR-CODE", (0,))[0] == 487:
            b.controlling = not b.controlling
            b.conflicts += 1
            self.check(b, now)

    def _role(self, b: Browser, request) -> int | None:
        """RFC 8445 7.3.1.1: a check from a peer that claims our role. None: answer it."""
        attributes = request.attributes
        if b.controlling and "ICE-CONTROLLING" in attributes:
            if self.tie_breaker >= attributes["ICE-CONTROLLING"]:
                return 487
            b.controlling = False
        elif not b.controlling and "ICE-CONTROLLED" in attributes:
            if self.tie_breaker >= attributes["ICE-CONTROLLED"]:
                b.controlling = True
            else:
                return 487
        return None

    def timers(self, b: Browser, now: float) -> None:
        if not b.ice_ok:
            if now >= b.next_check:
                self.check(b, now)
            return
        remaining = b.dtls.timeout()
        if remaining is not None and remaining <= 0:
            self.dtls_retransmits += 1
            self.send(b, b.dtls.on_timeout())

    def drain(self, now: float) -> None:
        recvfrom = self.sock.recvfrom
        while True:
            try:
                data, source = recvfrom(2048)
            except BlockingIOError:
                return
            except OSError:
                continue
            if data and 127 < data[0] < 192:
                continue  # media before the step: not counted
            self.datagram(data, source[1], now)

    def connect(self, window: int, timeout: float) -> dict[str, Any]:
        """Bring every leg up, `window` at a time."""
        monotonic = time.monotonic
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        start = monotonic()
        deadline = start + timeout
        pending = deque(self.legs)
        active: list[Browser] = []
        while (pending or active) and monotonic() < deadline:
            now = monotonic()
            while pending and len(active) < window:
                b = pending.popleft()
                b.started = now
                self.check(b, now)
                active.append(b)
            self.drain(now)
            now = monotonic()
            still = []
            for b in active:
                if b.done is None and b.failed is None:
                    self.timers(b, now)
                    still.append(b)
            active = still
            if active or pending:
                select.select([self.sock], [], [], 0.002)
        end = monotonic()
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        up = [b for b in self.legs if b.done is not None]
        last = max((b.done for b in up), default=end)
        seconds = max(1e-6, last - start)
        latencies = sorted(
            (b.done - b.started) * 1000 for b in up if b.done is not None and b.started
        )
        reasons = sorted({b.failed for b in self.legs if b.failed})
        if len(up) < len(self.legs) and not reasons:
            reasons = [f"not up within {timeout:g} s"]
        cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
        return {
            "legs": len(self.legs),
            "up": len(up),
            "failed": len(self.legs) - len(up),
            "reasons": reasons[:3],
            "seconds": seconds,
            "per_second": len(up) / seconds,
            "latency_p50_ms": _percentile(latencies, 50),
            "latency_p99_ms": _percentile(latencies, 99),
            "gen_share": cpu / max(1e-6, end - start),
            "checks": sum(b.checks for b in self.legs),
            "conflicts": sum(b.conflicts for b in self.legs),
            "controlled": sum(1 for b in self.legs if not b.controlling),
            "requests_in": self.requests_in,
            "dtls_retransmits": self.dtls_retransmits,
        }

    def serve(self, stream) -> str:
        """Answer the engine's checks (and DTLS) until the next command comes on `stream`."""
        while True:
            ready, _, _ = select.select([stream, self.sock], [], [], 0.05)
            if self.sock in ready:
                self.drain(time.monotonic())
            if stream in ready:
                return stream.readline()


# -- the load generator (child process) ------------------------------------------------------------
def run_generator() -> None:
    """`--role gen`: the browsers' set-up, then the paced window; commands on stdin."""
    from bridge.media.webrtc import DtlsIdentity

    cfg = json.loads(sys.stdin.readline())
    socks = [socket.socket(fileno=fd) for fd in cfg["fds"]]  # [callers, browsers]
    for s in socks:
        s.setblocking(False)
    identity = DtlsIdentity()
    emit({"fingerprint": identity.fingerprint})
    legs = json.loads(sys.stdin.readline())["legs"]
    browsers = Browsers(socks[1], identity, legs)
    emit({"legs": len(legs)})
    command = json.loads(browsers.serve(sys.stdin))
    emit(browsers.connect(command["window"], command["timeout"]))
    window = json.loads(browsers.serve(sys.stdin))
    run_window(window, socks, browsers)


def run_window(cfg: dict[str, Any], socks: list[socket.socket], browsers: Browsers) -> None:
    """bench/media.py's paced loop, with the browser streams protected before `sendto` and
    their packets back logged as they came (unprotected after the window)."""
    streams = cfg["streams"]  # [socket index, destination port, browser index or -1]
    n_streams = len(streams)
    rounds = max(1, round(cfg["seconds"] / FRAME))
    total = n_streams * rounds
    dt = FRAME / n_streams
    seq0, ts0 = 1000, 50_000
    bufs, sends, dests, protects = [], [], [], []
    for k, (si, port, bi) in enumerate(streams):
        buf = bytearray(b"\xff" * PACKET_BYTES)  # PCMU silence after the tag
        struct.pack_into("!BBHII", buf, 0, 0x80, PCMU, seq0, ts0, 0x10000 + k)
        struct.pack_into("!I", buf, TAG_OFFSET, k)
        bufs.append(buf)
        sends.append(socks[si].sendto)
        dests.append((HOST, port))
        protects.append(browsers.legs[bi].dtls.protect if bi >= 0 else None)
    seq_ts, tag = _SEQ_TS.pack_into, _TAG_REST.pack_into
    time_ns, monotonic = time.time_ns, time.monotonic

    log = bytearray()  # the callers' socket: per packet the tag, then the arrival's timespec
    srtp_log = bytearray()  # the browsers' socket: port, size, arrival, the SRTP packet
    rx = bytearray(2048)
    rxv = memoryview(rx)
    anc_size = socket.CMSG_SPACE(16)
    received = [0, 0]
    recv_errors = 0
    rec_pack = _SRTP_REC.pack
    caller_sock, browser_sock = socks
    control = browsers.datagram

    def drain() -> None:
        nonlocal recv_errors
        recvmsg = caller_sock.recvmsg_into
        count = 0
        while True:
            try:
                size, anc, _, _ = recvmsg([rx], anc_size)
            except BlockingIOError:
                break
            except OSError:
                recv_errors += 1
                continue
            count += 1
            if size == PACKET_BYTES and anc:
                log.extend(rxv[TAG_OFFSET : TAG_OFFSET + 16])
                log.extend(anc[0][2])
        received[0] += count
        recvmsg = browser_sock.recvmsg_into
        count = 0
        while True:
            try:
                size, anc, _, source = recvmsg([rx], anc_size)
            except BlockingIOError:
                break
            except OSError:
                recv_errors += 1
                continue
            if size and 127 < rx[0] < 192:
                if anc:
                    count += 1
                    srtp_log.extend(rec_pack(source[1], size))
                    srtp_log.extend(anc[0][2])
                    srtp_log.extend(rxv[:size])
            else:  # STUN (rtpengine's keep-alives, answers to consent checks) or DTLS
                control(bytes(rxv[:size]), source[1], monotonic())
        received[1] += count

    legs = browsers.legs
    consent_every = CONSENT_SECONDS / max(1, len(legs))
    period = cfg["period"]
    sleep = time.sleep
    lags = array("d")
    send_errors = consents = 0
    start = monotonic() + cfg["start_delay"]
    while monotonic() < start - 0.002:
        drain()
        sleep(min(0.01, max(0.0, start - monotonic() - 0.002)))
    while monotonic() < start:
        pass
    next_consent, ci = start + random.random() * consent_every, 0
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = monotonic()
    print("started", flush=True)
    g = k = rnd = 0
    while g < total:
        now = monotonic()
        due = int((now - start) / dt) + 1
        if due > total:
            due = total
        if g < due:
            lags.append(now - (start + g * dt))
            while g < due:
                buf = bufs[k]
                seq_ts(buf, 2, (seq0 + rnd) & 0xFFFF, (ts0 + rnd * SAMPLES) & 0xFFFFFFFF)
                tag(buf, 16, rnd, time_ns())
                protect = protects[k]
                try:
                    if protect is None:
                        sends[k](buf, dests[k])
                    else:
                        sends[k](protect(bytes(buf)), dests[k])
                except OSError:
                    send_errors += 1
                g += 1
                k += 1
                if k == n_streams:
                    k = 0
                    rnd += 1
        while now >= next_consent and legs:
            browsers.check(legs[ci], now, nominate=False)
            ci = (ci + 1) % len(legs)
            next_consent += consent_every
            consents += 1
        drain()
        if g < total:
            after = monotonic()
            wait = max(start + g * dt - after, period - (after - now))
            if wait > 0:
                sleep(wait)
    last_send = monotonic()
    while monotonic() < last_send + cfg["signal_after"]:
        drain()
        sleep(0.005)
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    window = monotonic() - wall0
    print("stopped", flush=True)
    while monotonic() < last_send + cfg["tail"]:
        drain()
        sleep(0.005)
    drain()
    gen_cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    bad = unprotect_log(srtp_log, browsers, log)
    result: dict[str, Any] = {
        "sent": total - send_errors,
        "send_errors": send_errors,
        "received": sum(received),
        "received_per_socket": received,
        "recv_errors": recv_errors,
        "srtp_failed": bad,
        "consent_checks": consents,
        "requests_in": browsers.requests_in,
        "window": window,
        "send_seconds": last_send - wall0,
        "gen_cpu_share": gen_cpu / window,
        "gen_user_share": (usage1.ru_utime - usage0.ru_utime) / window,
        "gen_lag_p99_ms": _percentile(sorted(lags), 99) * 1000 if lags else 0.0,
        "gen_lag_max_ms": max(lags) * 1000 if lags else 0.0,
    }
    result.update(_delays(log, total - send_errors))
    emit(result)


def unprotect_log(srtp_log: bytearray, browsers: Browsers, log: bytearray) -> int:
    """The browsers' packets back, unprotected in arrival order, appended to `log` in
    bench/media.py's format; returns how many failed (authentication, unknown port)."""
    view = memoryview(srtp_log)
    offset, bad = 0, 0
    head = _SRTP_REC.size
    while offset < len(view):
        port, size = _SRTP_REC.unpack_from(view, offset)
        arrival = view[offset + head : offset + head + 16]
        packet = bytes(view[offset + head + 16 : offset + head + 16 + size])
        offset += head + 16 + size
        b = browsers.by_port.get(port)
        if b is None or 191 < packet[1] < 224:  # RTCP (rtcp-mux): not the bench's
            bad += b is None
            continue
        try:
            plain = b.dtls.unprotect(packet)
        except Exception:
            bad += 1
            continue
        if len(plain) == PACKET_BYTES:
            log.extend(plain[TAG_OFFSET : TAG_OFFSET + 16])
            log.extend(arrival)
    return bad


# -- the embedded engine (child process) ---------------------------------------------------------
def serve_embedded(args: argparse.Namespace) -> None:
    """`--role engine`: the embedded engine on one loop, commands on stdin."""
    if args.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    loop.run_until_complete(_serve_embedded(args, loop))
    loop.close()


async def _serve_embedded(args: argparse.Namespace, loop) -> None:
    import structlog

    from bridge.calls.media import MediaConnected, MediaFailed
    from bridge.daemon import tune_garbage_collector
    from bridge.media.engine import EmbeddedMedia
    from bridge.media.ports import PortPool

    # the daemon's log lines (one per leg connected) are made, and thrown away
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(open(os.devnull, "w")))  # noqa: SIM115
    media = EmbeddedMedia(
        PortPool(HOST, args.port_min, args.port_max),
        advertised_address=HOST,
        clock=loop.time,
        loop=loop,
        timeout_seconds=60.0,
        connect_timeout_seconds=args.connect_timeout,
    )
    connected: list[str] = []
    failed: dict[str, str] = {}

    def on_event(event) -> None:
        if isinstance(event, MediaConnected):
            connected.append(event.call_id)
        elif isinstance(event, MediaFailed):
            failed[event.call_id] = event.reason

    media.subscribe(on_event)
    policy = tune_garbage_collector()  # as the daemon does once started
    figures = EngineFigures(media)
    done = asyncio.Event()
    calls: list[str] = []
    tasks: set[asyncio.Task[None]] = set()

    async def handle(line: str) -> None:
        word, _, rest = line.strip().partition(" ")
        if word == "offer":
            peer, n = (int(x) for x in rest.split())
            caller_ports, offers = [], []
            for i in range(n):
                call_id = f"call-{i}"
                calls.append(call_id)
                caller_ports.append(sdp_port(media.answer(call_id, "caller", sdp(peer, 1000 + i))))
                offers.append(media.offer(call_id, "app", like="caller", webrtc=True))
            emit({"caller_ports": caller_ports, "offers": offers})
        elif word == "accept":
            for call_id, answer in zip(calls, json.loads(rest), strict=True):
                media.accept(call_id, "app", answer)
            emit({"connecting": sum(media.connecting(c, "app") for c in calls)})
        elif word == "bridge":
            deadline = loop.time() + float(rest)
            while len(connected) + len(failed) < len(calls) and loop.time() < deadline:
                await asyncio.sleep(0.002)
            for call_id in connected:
                media.bridge(call_id, "caller", "app")
            emit(
                {
                    "connected": len(connected),
                    "failed": len(calls) - len(connected),
                    "reasons": sorted(set(failed.values()))[:3],
                }
            )
        elif word in ("reset", "stats"):
            figures.command(word)
        elif word in ("quit", ""):
            done.set()

    pending = bytearray()
    stdin = sys.stdin.fileno()

    def command() -> None:
        # os.read, not readline: the loop may have made the pipe non-blocking, and an `accept`
        # line (every answer) is larger than the pipe's buffer
        chunk = os.read(stdin, 1 << 20)
        pending.extend(chunk if chunk else b"quit\n")
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            task = loop.create_task(handle(line.decode()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    loop.add_reader(stdin, command)
    emit({"pid": os.getpid()})
    await done.wait()
    loop.remove_reader(stdin)
    if policy is not None:
        policy.stop()
    media.stop()


class EmbeddedChild:
    """The embedded engine's child process for one step."""

    def __init__(self, args: argparse.Namespace, loop_name: str, core: int | None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(args.src) + os.pathsep + env.get("PYTHONPATH", "")
        lo, hi = args.embedded_ports
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--role=engine",
            f"--loop={loop_name}",
            f"--port-min={lo}",
            f"--port-max={hi}",
            f"--connect-timeout={args.connect_timeout}",
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=pinner(core, args.nice, args.rt),
        )
        self.pid = read_protocol(self.proc.stdout)["pid"]

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def ask(self, line: str) -> Any:
        self.command(line)
        return read_protocol(self.proc.stdout)

    def stats(self) -> dict[str, int]:
        return self.ask("stats")

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.command("quit")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- one step ----------------------------------------------------------------------------------
@dataclass
class WebRtcStep(Step):
    setup_up: int = 0  # legs brought up (ICE + DTLS) of `calls`
    setup_seconds: float | None = None  # first check to the last leg up
    setups_per_second: float | None = None
    signal_cpu_ms: float | None = None  # engine CPU per leg: offers and answers
    connect_cpu_ms: float | None = None  # engine CPU per leg: ICE + DTLS
    setup_cpu_ms: float | None = None  # both
    setup_p50_ms: float | None = None
    setup_p99_ms: float | None = None
    setup_gen_share: float | None = None


class WebRtcBench(Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.adapter = None  # RtpengineMedia over ng, on `self.aloop`
        self.aloop: asyncio.AbstractEventLoop | None = None

    def start_rtpengine(self, binary: str, ports: tuple[int, int]) -> None:
        from bridge.media.ng import NgClient
        from bridge.media.rtpengine import RtpengineMedia

        args = self.args
        self.rtpengine = RtpEngine(
            binary, *ports, self.engine_core, args.nice, args.rt, self.tmp / "rtpengine.log"
        )
        self.aloop = asyncio.new_event_loop()
        client = NgClient(HOST, self.rtpengine.ng_port, timeout=2.0, retries=2)
        self.adapter = RtpengineMedia(client, call_prefix="bench-")
        self.aloop.run_until_complete(self.adapter.start())

    def close(self) -> None:
        if self.adapter is not None and self.aloop is not None:
            with contextlib.suppress(Exception):
                self.aloop.run_until_complete(self.adapter.close())
            self.aloop.close()
            self.adapter = self.aloop = None
        super().close()

    def _rtpengine_signal(
        self, n: int, caller_port: int, answers_for
    ) -> tuple[list[int], list[dict[str, Any]]]:
        adapter, aloop = self.adapter, self.aloop
        assert adapter is not None and aloop is not None

        async def signal() -> tuple[list[int], list[dict[str, Any]]]:
            caller_ports, transports = [], []
            for i in range(n):
                call_id = f"{self._n}-{i}"
                adapter.caller_offer(call_id, sdp(caller_port, 1000 + i))
                offer = await adapter.offer(call_id, "app", webrtc=True)
                transport, answer = answers_for(i, offer)
                toward_caller = await adapter.accept(call_id, "app", answer)
                caller_ports.append(sdp_port(toward_caller))
                transports.append(transport)
            return caller_ports, transports

        return aloop.run_until_complete(signal())

    def _rtpengine_teardown(self) -> None:
        if self.adapter is None or self.aloop is None:
            return
        adapter = self.adapter
        for call_id in list(adapter._calls):
            with contextlib.suppress(Exception):
                self.aloop.run_until_complete(adapter.release(call_id))

    def run(  # type: ignore[override]
        self, engine: str, loop_name: str, n: int, *, profile: bool = False
    ) -> WebRtcStep:
        args = self.args
        self._n += 1
        socks = self._gen_sockets(2)  # callers, browsers
        peers = [s.getsockname() for s in socks]
        step = WebRtcStep(engine, loop_name if engine == "embedded" else "-", "relay", n)
        runner: EmbeddedChild | None = None
        gen: subprocess.Popen | None = None
        engine_ports: set[int] = set()
        try:
            gen = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--role=gen"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                pass_fds=[s.fileno() for s in socks],
                preexec_fn=pinner(self.gen_core, rt=max(0, args.rt - 1)),
            )
            assert gen.stdin is not None and gen.stdout is not None

            def tell(obj: Any) -> None:
                gen.stdin.write(json.dumps(obj) + "\n")
                gen.stdin.flush()

            tell({"fds": [s.fileno() for s in socks]})
            fingerprint = read_protocol(gen.stdout)["fingerprint"]

            def answers_for(i: int, offer: str) -> tuple[dict[str, Any], str]:
                transport = offer_transport(offer)
                transport["my_ufrag"], transport["my_pwd"] = ice_token(8), ice_token(24)
                answer = browser_answer(
                    5000 + i,
                    peers[1][1],
                    transport["my_ufrag"],
                    transport["my_pwd"],
                    fingerprint,
                    0x20000 + i,
                )
                return transport, answer

            # 1. signalling
            if engine == "embedded":
                runner = EmbeddedChild(args, loop_name, self.engine_core)
                pid = runner.pid
                sig0 = proc_ticks(pid)
                offered = runner.ask(f"offer {peers[0][1]} {n}")
                caller_ports = offered["caller_ports"]
                pairs = [answers_for(i, o) for i, o in enumerate(offered["offers"])]
                transports = [t for t, _ in pairs]
                runner.ask("accept " + json.dumps([a for _, a in pairs]))
            else:
                assert self.rtpengine is not None
                pid = self.rtpengine.pid
                sig0 = proc_ticks(pid)
                caller_ports, transports = self._rtpengine_signal(n, peers[0][1], answers_for)
            sig1 = proc_ticks(pid)
            engine_ports = set(caller_ports) | {t["port"] for t in transports}
            tell({"legs": transports})
            read_protocol(gen.stdout)
            # 2. set-up: ICE + DTLS
            tell({"window": args.setup_window, "timeout": args.connect_timeout})
            setup = read_protocol(gen.stdout)
            if runner is not None:
                bridged = runner.ask(f"bridge {args.connect_timeout}")
                if bridged["failed"]:
                    setup["failed"] = max(setup["failed"], bridged["failed"])
                    setup["reasons"] = setup["reasons"] + bridged["reasons"]
            sig2 = proc_ticks(pid)
            self._fill_setup(step, setup, sig0, sig1, sig2)
            # 3. the measured window
            streams = []
            for i in range(n):
                streams.append([0, caller_ports[i], -1])
                streams.append([1, transports[i]["port"], i])
            tell(
                {
                    "streams": streams,
                    "seconds": args.seconds,
                    "start_delay": 0.3,
                    "signal_after": 0.3,
                    "tail": 0.5 if args.quick else 1.0,
                    "period": args.gen_period / 1000,
                }
            )
            window = self.follow_window(gen, pid, runner, profile)
            sampler, result = window.sampler, window.result
            gen.wait()
            step.extra["drops_engine"] = udp_drops(engine_ports)
            step.extra["drops_generator"] = udp_drops({p[1] for p in peers})
            if result is None:
                raise RuntimeError(f"the generator failed (exit {gen.returncode})")
            if sampler is not None:
                step.extra["profile"] = self._finish_profile(*sampler)
        finally:
            if gen is not None and gen.poll() is None:
                gen.kill()
                gen.wait()
            if runner is not None:
                runner.stop()
            if engine == "rtpengine":
                self._rtpengine_teardown()
            for s in socks:
                s.close()
        self.account(step, window)
        if step.setup_up < n:
            step.passed = False
            step.note += f" set-up: {n - step.setup_up} legs not up ({setup['reasons']})"
        for key in ("srtp_failed",):
            if result.get(key):
                step.note += f" {key} {result[key]}"
        step.extra["consent_checks"] = result.get("consent_checks")
        step.extra["engine_checks_answered"] = result.get("requests_in")
        if not profile:
            self.steps.append(step)
        return step

    @staticmethod
    def _fill_setup(step: WebRtcStep, setup: dict[str, Any], sig0, sig1, sig2) -> None:
        n = step.calls
        signal = (sum(sig1) - sum(sig0)) / CLK_TCK
        connect = (sum(sig2) - sum(sig1)) / CLK_TCK
        step.setup_up = setup["up"] if not setup["failed"] else n - setup["failed"]
        step.setup_seconds = setup["seconds"]
        step.setups_per_second = setup["per_second"]
        step.signal_cpu_ms = 1000 * signal / n
        step.connect_cpu_ms = 1000 * connect / n
        step.setup_cpu_ms = 1000 * (signal + connect) / n
        step.setup_p50_ms = setup["latency_p50_ms"]
        step.setup_p99_ms = setup["latency_p99_ms"]
        step.setup_gen_share = setup["gen_share"]
        step.extra["setup"] = setup


SETUP_HEAD = (
    f"{'engine':<23} {'calls':>5} {'up':>5} {'wall s':>6} {'set-ups/s':>9} {'p50 ms':>7} "
    f"{'p99 ms':>7} {'sig ms':>6} {'conn ms':>7} {'cpu/set-up ms':>13} {'gen%':>5} "
    f"{'checks':>6} {'ctrl':>5} {'dtls rt':>7}"
)


def setup_row(s: WebRtcStep) -> str:
    setup = s.extra.get("setup", {})
    return (
        f"{s.label:<23} {s.calls:>5} {s.setup_up:>5} {fmt(s.setup_seconds, '.2f'):>6} "
        f"{fmt(s.setups_per_second, '.0f'):>9} {fmt(s.setup_p50_ms, '.1f'):>7} "
        f"{fmt(s.setup_p99_ms, '.1f'):>7} {fmt(s.signal_cpu_ms, '.2f'):>6} "
        f"{fmt(s.connect_cpu_ms, '.2f'):>7} {fmt(s.setup_cpu_ms, '.2f'):>13} "
        f"{fmt(s.setup_gen_share and 100 * s.setup_gen_share, '.0f'):>5} "
        f"{setup.get('checks', 0):>6} {setup.get('controlled', 0):>5} "
        f"{setup.get('dtls_retransmits', 0):>7}"
        + (f"  {'; '.join(setup['reasons'])}" if setup.get("reasons") else "")
    )


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=("main", "engine", "gen"), default="main", help="internal")
    p.add_argument("--calls", default="50,100,200,300", help="steps of concurrent calls")
    p.add_argument("--seconds", type=float, default=10.0, help="of packets per step")
    p.add_argument("--find-max", action="store_true", help="step N up to each engine's limit")
    p.add_argument("--max-steps", default=",".join(map(str, FIND_MAX_STEPS)))
    p.add_argument("--loops", default="uvloop", help="loops of the embedded engine")
    p.add_argument("--setup-window", type=int, default=32, help="legs set up at a time")
    p.add_argument("--connect-timeout", type=float, default=30.0, help="s for all set-ups")
    p.add_argument("--no-rtpengine", action="store_true")
    p.add_argument("--rtpengine", default="rtpengine", help="the rtpengine binary")
    p.add_argument("--max-jitter-ms", type=float, default=5.0)
    p.add_argument("--retries", type=int, default=1, help="--find-max: runs again of a failure")
    p.add_argument("--gen-limit", type=float, default=0.9, help="generator CPU share limit")
    p.add_argument("--gen-period", type=float, default=1.0, help="ms between generator passes")
    p.add_argument("--engine-core", type=int, default=0)
    p.add_argument("--gen-core", type=int, default=1)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--nice", type=int, default=0, help="niceness of the engine under test")
    p.add_argument(
        "--rt", type=int, default=0, help="SCHED_FIFO priority of the engine under test (0: no)"
    )
    p.add_argument("--ports", default="20000-29999", help="UDP ports (half each engine)")
    p.add_argument("--profile", action="store_true", help="py-spy the embedded engine")
    p.add_argument("--profile-calls", type=int, default=300)
    p.add_argument("--budget", type=float, default=900.0, help="no new step after (s)")
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument("--src", type=Path, default=REPO / "src", help="the bridge package's root")
    # --role engine
    p.add_argument("--loop", default="uvloop")
    p.add_argument("--port-min", type=int, default=20000)
    p.add_argument("--port-max", type=int, default=24999)
    return p.parse_args(argv)


def orchestrate(args: argparse.Namespace) -> int:
    if args.quick:
        args.seconds = min(args.seconds, 2.0)
        args.calls = "20"
        args.find_max = False
        args.profile = False
        args.budget = min(args.budget, 60.0)
    lo, hi = (int(x) for x in args.ports.split("-"))
    mid = (lo + hi) // 2
    args.embedded_ports = (lo, mid)
    rtp_ports = (mid + 1, hi)
    loops = [x for x in args.loops.split(",") if x]
    if importlib_spec("uvloop") is None and "uvloop" in loops:
        print("uvloop is not installed: only stock asyncio is measured")
        loops = [x for x in loops if x != "uvloop"] or ["asyncio"]
    binary = None if args.no_rtpengine else shutil.which(args.rtpengine)
    steps = [int(x) for x in (args.max_steps if args.find_max else args.calls).split(",")]
    began = time.monotonic()

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), "
        f"Linux {platform.release()}, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"embedded engine from {args.src}; loops: {', '.join(loops)}")
    if binary:
        print(f"rtpengine {rtpengine_version(binary)} ({binary}), userspace, one worker thread")
    elif not args.no_rtpengine:
        print(
            f"rtpengine: {args.rtpengine!r} not found, its column is skipped "
            "(apt-get install -y rtpengine-daemon)"
        )
    bench = WebRtcBench(args)
    print(
        (
            f"engine on core {bench.engine_core}, load generator on core {bench.gen_core}"
            if bench.pin
            else "no pinning (fewer than 2 cores or --no-pin)"
        )
        + (f"; the engine under test at nice {args.nice}" if args.nice else "")
        + (f"; SCHED_FIFO: the engine under test at priority {args.rt}" if args.rt else "")
    )
    print(
        "each call: a plain RTP caller and a WebRTC leg (ICE, DTLS-SRTP, PCMU) bridged; "
        f"2 streams x 50 packets/s ({PACKET_BYTES}-byte RTP, {SRTP_BYTES}-byte SRTP); "
        f"{args.seconds:g} s per step; set-up {args.setup_window} legs at a time; "
        f"pass = all legs up, no loss and PDV p99 < {args.max_jitter_ms:g} ms"
    )
    labels = [f"embedded/{loop}" for loop in loops] + (["rtpengine"] if binary else [])
    engines = [("embedded", loop) for loop in loops] + ([("rtpengine", "-")] if binary else [])
    try:
        if binary:
            bench.start_rtpengine(binary, rtp_ports)
            assert bench.rtpengine is not None
            print(f"rtpengine: {bench.rtpengine.command}")
        print()
        print(
            "== WebRTC legs bridged to RTP (embedded: ICE-lite + DTLS-SRTP + blind relay; "
            "rtpengine: ICE + DTLS-SRTP, userspace forwarding)"
        )
        print(
            "pdv = RFC 5481 packet delay variation; |D| = RFC 3550 transit difference; "
            "trans50 = transit p50 (the browser's side includes its protect, ~3 us); core% "
            "and us/pkt = the engine's CPU (per relayed packet, both directions), user% its "
            "share in user mode; other% = the rest of its core's busy time (other "
            "processes, interrupts); gen% = the generator's CPU; gother% = the rest of the "
            "generator's core; lag99 = its send lateness p99"
        )
        print(RELAY_HEAD)
        print(RELAY_UNITS)
        stopped: set[str] = set()
        for n in steps:
            for engine, loop_name in engines:
                label = engine if engine == "rtpengine" else f"embedded/{loop_name}"
                if label in stopped:
                    continue
                if time.monotonic() - began > args.budget:
                    print(f"{label:<23} {n:>5}  skipped: --budget {args.budget:g} s spent")
                    stopped.add(label)
                    continue
                room = (
                    args.embedded_ports[1] - args.embedded_ports[0]
                    if engine == "embedded"
                    else (rtp_ports[1] - rtp_ports[0]) // 2
                )
                if 2 * n > room:
                    print(f"{label:<23} {n:>5}  skipped: --ports too small for {n} calls")
                    stopped.add(label)
                    continue
                if engine == "rtpengine" and not bench.rtpengine.alive():
                    print(f"rtpengine exited: {bench.rtpengine.log.read_text()[-1000:]}")
                    stopped.add(label)
                    continue
                step = bench.run(engine, loop_name, n)
                print(relay_row(step), flush=True)
                for _ in range(args.retries if args.find_max else 0):
                    if step.passed or step.gen_saturated or time.monotonic() - began > args.budget:
                        break
                    step = bench.run(engine, loop_name, n)
                    step.note += " (run again)"
                    print(relay_row(step), flush=True)
                if args.find_max and not step.passed:
                    stopped.add(label)
        print()
        print(
            "== set-ups (ICE + DTLS of the WebRTC legs, before each step's window): up = legs "
            "up; wall = first check to the last leg up; set-ups/s = up / wall; p50/p99 = one "
            "leg's set-up time; sig / conn ms = the engine's CPU per leg for the offers and "
            "answers / for ICE + DTLS; gen% = the generator's CPU over the set-up; checks = "
            "ICE checks sent; ctrl = legs that ended ICE-controlled; dtls rt = DTLS flights "
            "sent again"
        )
        print(SETUP_HEAD)
        for s in bench.steps:
            print(setup_row(s))
        if args.profile:
            print()
            print(
                f"== py-spy of the embedded engine (uvloop), {args.profile_calls} calls, "
                "self and inclusive samples"
            )
            step = bench.run("embedded", "uvloop", args.profile_calls, profile=True)
            print(relay_row(step) + "  (profiled: not counted)")
            print_profile(step.extra.get("profile", {}))
    finally:
        bench.close()
    return report(args, bench, labels, steps, binary, began)


def report(args, bench: WebRtcBench, labels, steps, binary, began) -> int:
    summary = summarize(bench.steps, labels, steps[-1] if args.find_max else None)
    for label, s in summary.items():
        rates = [
            r.setups_per_second
            for r in bench.steps
            if r.label == label and r.setups_per_second and r.setup_up == r.calls
        ]
        cpus = [r.setup_cpu_ms for r in bench.steps if r.label == label and r.setup_cpu_ms]
        s["setups_per_second"] = statistics.median(rates) if rates else None
        s["setup_cpu_ms"] = statistics.median(cpus) if cpus else None
    print()
    print("== summary (WebRTC legs bridged to RTP, one core)")
    for label, s in summary.items():
        setups = (
            f"; set-ups {fmt(s['setups_per_second'], '.0f')}/s, "
            f"{fmt(s['setup_cpu_ms'], '.2f')} ms engine CPU per set-up (medians over the steps)"
        )
        if s["max_calls"]:
            limit = " (every step passed: the limit is higher)" if s["limited_by_steps"] else ""
            fail = f", first failing step {s['first_failure']}" if s["first_failure"] else ""
            if s["first_failure"] and s["first_failure"] == s["generator_bound"]:
                fail += " (the generator saturated there: a floor, not this engine's limit)"
            print(
                f"{label:<23} largest passing step {s['max_calls']} WebRTC legs on one core"
                f"{limit}{fail}; {fmt(s['cpu_us_per_packet'], '.1f')} us CPU per relayed "
                f"packet there -> {fmt(s['calls_per_core_from_cpu'], '.0f')} legs per core "
                f"from CPU{setups}"
            )
        else:
            print(f"{label:<23} no passing step{setups}")
    ratios: dict[str, Any] = {}
    if "rtpengine" in summary and summary["rtpengine"]["max_calls"]:
        ref = summary["rtpengine"]
        for label in labels[:-1]:
            mine = summary[label]
            common = sorted(
                set(mine["cpu_us_per_packet_by_calls"]) & set(ref["cpu_us_per_packet_by_calls"])
            )
            cpu_ratios = {
                n: mine["cpu_us_per_packet_by_calls"][n] / ref["cpu_us_per_packet_by_calls"][n]
                for n in common
            }
            setup_ratio = (
                mine["setups_per_second"] / ref["setups_per_second"]
                if mine["setups_per_second"] and ref["setups_per_second"]
                else None
            )
            ratios[label] = {
                "calls_ratio": mine["max_calls"] / ref["max_calls"],
                "cpu_per_packet_ratio_by_calls": cpu_ratios,
                "setups_per_second_ratio": setup_ratio,
            }
            cpu_text = ", ".join(f"{n} calls {r:.2f}" for n, r in cpu_ratios.items()) or "-"
            print(
                f"{label} / rtpengine: largest passing step "
                f"{ratios[label]['calls_ratio']:.2f} x; set-ups per second "
                f"{fmt(setup_ratio)} x; CPU per packet x rtpengine's at {cpu_text}"
            )
    print(f"load average {os.getloadavg()[0]:.2f}; {time.monotonic() - began:.0f} s in all")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "steps": [asdict(s) | {"label": s.label} for s in bench.steps],
                    "summary": summary,
                    "ratios": ratios,
                    "seconds": args.seconds,
                    "rtpengine": rtpengine_version(binary) if binary else None,
                },
                indent=1,
                default=str,
            )
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "engine":
        serve_embedded(args)
        return 0
    if args.role == "gen":
        run_generator()
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
