"""The media engine's packet path beside rtpengine: relayed G.711 calls per core, loss, jitter.

    .venv/bin/python bench/media.py [--calls 100,250,500] [--seconds 10] [--find-max]
                                    [--loops uvloop,asyncio] [--mix-calls 50] [--no-mixer]
                                    [--no-rtpengine] [--srtp-calls N] [--profile] [--quick]
                                    [--json FILE]

Everything runs on 127.0.0.1, on ports of --ports (10000-19999: the first half the embedded
engine's, the second rtpengine's), and every process it starts is stopped at the end, by its
own process id. The engine under test runs on one core (--engine-core, 0) and the load
generator on the other (--gen-core, 1), both pinned with sched_setaffinity before exec
(inherited by every thread of the child, so by rtpengine's threads too). Nothing else is
kept off those cores: other processes of the machine show up in the figures, and the script
prints how much (other%, below).

Engines (each step starts from nothing; the set-up is outside the measured window):

- **embedded**: a child process of this script (`--role engine`) runs the daemon's engine,
  `bridge.media.engine.EmbeddedMedia`, on a `PortPool`, driven through its `MediaPort`
  methods as the call runner drives it: per call `answer` (the caller's SDP offer), `offer` +
  `accept` (the agent's leg), `bridge`; so one `MediaEndpoint` per leg (add_reader +
  recvfrom_into one preallocated buffer, latched on the generator's addresses) and a
  `BlindRelay` per call. It runs on uvloop (the daemon's default) and on stock asyncio
  (--loops), with the daemon's garbage collector policy (`bridge.daemon.
  tune_garbage_collector`). `--loops` also takes `uvloop-drain1` / `asyncio-drain1`: the same
  with `bridge.media.endpoint.DRAIN_LIMIT = 1` set in the child, for sources (--src) from
  before the endpoint read one datagram per wake-up itself (a001b80 and earlier).
- **rtpengine** (Debian `rtpengine-daemon`; `apt-get install -y rtpengine-daemon`): started in
  the foreground in userspace mode (`--table=-1`, no kernel module, `--num-threads=1`, no
  config file, `--delete-delay=0`), driven over the ng protocol (a cookie, a space, a bencoded
  dict over UDP): per call an `offer` with the caller's SDP (plain RTP/AVP, PCMU) and an
  `answer` with the callee's, and a `delete` when the step ends. Its CPU is its process's (all
  its threads). Without the binary that column is skipped, with a hint.

The load generator (`--role gen`, one process, non-blocking sockets, a paced loop on absolute
times): every call has two streams, the caller's and the callee's, each 50 packets a second
of 172-byte PCMU RTP (12-byte header, 160-byte payload), spread evenly over the 20 ms frame
(stream k of S is due at start + (n x S + k) x 20 ms / S). Callers send from one socket and
callees from another (the addresses in the SDPs). The loop is woken by a timer, never by its
sockets: each pass (at most one a --gen-period, 1 ms) sends what is due and reads what has
arrived. (Woken by its sockets, it cost three times the CPU, and every packet an engine sent
paid for waking it: on loopback the sender runs the receiver's wake-up.) Each payload starts
with a tag: stream number, the generator's own sequence number, and the send time
(CLOCK_REALTIME ns, taken just before `sendto`); both engines relay the payload untouched.
The receive side reads the kernel's arrival time of every packet (SO_TIMESTAMPNS; on loopback
it is stamped when the engine's `sendto` hands the packet to the stack), so the generator's
reading delay does not count against the engine.

Per engine and number of calls N:

- packets sent, received, lost (sent minus distinct received; a packet still missing 1 s
  after the last send is lost), in % of sent; datagrams the kernel dropped at the engine's
  or the generator's sockets (/proc/net/udp) are named in the row when there are any;
- **added jitter**: the packet delay variation of RFC 5481 (PDV): each packet's transit
  through the engine (arrival minus send time) minus the smallest transit of its stream; p99
  and max over all packets of all streams. This is what a phone's jitter buffer must absorb,
  and it grows when the engine falls behind (a backlog). Also printed: the RFC 3550 transit
  difference |D(i-1, i)| of consecutive packets of a stream (p99), and the transit p50;
- the engine's CPU (utime + stime of /proc/PID/stat, read when the first packet goes out and
  0.3 s after the last), in seconds, in % of its core, and per relayed packet (CPU / packets
  received back by the generator); other% = the rest of the engine's core's busy time over
  the same window (/proc/stat: other processes, interrupts), gother% the same for the
  generator's core: what the machine's other work took from the two cores;
- the generator's own CPU (% of its core) and how late its passes were (lag99: p99 of the
  lag of the first packet due in each pass). A late pass sends a burst, which the engine then
  drains one packet after another: lag99 well above 1 ms means the generator's core was busy
  with something else and the engine was given bursts. A generator above --gen-limit (90%)
  is marked saturated;
- embedded: garbage collections in the engine (gc.callbacks), named when one took more than
  half the jitter limit.

A step passes with zero loss and PDV p99 < --max-jitter-ms (5). `--find-max` steps N up
(--max-steps: 100, 200, 250, 300, 400, 500, 750, 1000) for each engine, the engines taking
turns at each N, runs a failing step again (--retries, 1: the machine is shared; not when
the generator saturated) and stops at that engine's first step that no run passes; without
it, the steps are --calls. Calls per core: the largest passing N (measured, one core), and
1e6 / (100 x CPU us per packet) (what one core would hold doing nothing else, at 100
relayed packets a second per call: a ceiling, reached only with no jitter limit), from the
median CPU per packet of the runs at that N. Ratios embedded / rtpengine of both, and of
CPU per packet at every N both ran.

The mixer (--mix-calls N, embedded only, each loop of --loops): the same N calls three times,
relay = the blind relay as above; mix2 = the same calls recorded (`start_recording`: the
engine moves caller and agent to a `MixingSession` with the recording taps, a WAV per call in
a temporary directory); mix3 = caller, agent and a supervisor leg in barge (`offer` +
`accept` + `monitor(barge)`), recorded. For each: engine CPU per packet in (received from the
phones), per call per 20 ms frame (CPU / (N x window / 20 ms): everything, packets in, jitter
buffers, the tick, packets out, the recording), the time inside the 20 ms tick alone
(`MixingSession._tick` wrapped with `time.thread_time_ns`, the wrapper's ~0.3 us included),
ticks, late ticks (more than a frame behind).

`--profile` (needs py-spy: `.venv/bin/pip install py-spy`): samples the embedded engine on
uvloop relaying --profile-calls calls, then in mix3 with --mix-calls calls, for --seconds each
with `py-spy record --format raw --function --nonblocking`, and prints the top functions
(self and inclusive samples). The figures of those steps are not used (the sampler takes CPU).

SRTP (--srtp-calls N, embedded only, each loop of --loops; none by default): the same N calls
twice, relay = the blind relay as above, srtp = both legs SRTP keyed by SDES (the caller's offer
RTP/SAVP with an `a=crypto` line, the agent's leg `offer(srtp="required")` answered with one):
the engine unprotects each packet in its buffer, rewrites it and protects it for the other
leg, in place. The generator protects what it sends with each leg's key (pylibsrtp, 182-byte
packets: the 10-byte tag) and logs what comes back as it came, unprotected after the window
(its CPU is not in the figures). Loss, PDV and CPU per relayed packet as in the relay rows.

`--nice N` runs the engine under test (both engines) at that niceness (default 0).
`--quick` is a smoke run: 2 s steps of 20 calls, mixer steps of 10 calls on the first loop,
no find-max, no profile (about 30 s; tests/media/test_bench_media.py runs it with
--no-rtpengine). `--src DIR` runs the embedded engine from another copy of the package
(PYTHONPATH=DIR), e.g. a `git archive <commit> src | tar -x` export. `--json FILE` writes
every figure as JSON. A bound: no new step starts after --budget seconds (540).
`BENCH_MEDIA_DUMP=FILE` in the environment: the generator also writes its raw receive log
there (per packet 32 bytes: stream, sequence, send time big-endian, the arrival's struct
timespec native), for a look at when delays happened.

It prints figures; it asserts nothing. numpy (a test extra) computes the delay figures.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
PCMU = 0
FRAME = 0.020
PACKET_BYTES = 172  # 12-byte RTP header + 160 bytes of PCMU (20 ms)
SRTP_SUITE = "AES_CM_128_HMAC_SHA1_80"
SRTP_TAG = 10  # bytes of its authentication tag
SAMPLES = 160
# The generator's tag at the start of the payload: stream, its own sequence number, send time.
TAG_OFFSET = 12
_TAG_REST = struct.Struct("!IQ")  # sequence, send time (CLOCK_REALTIME ns), at offset 16
_SEQ_TS = struct.Struct("!HI")  # RTP sequence and timestamp, at offset 2
PROTOCOL = "@@ "  # prefix of the children's JSON lines on stdout (anything else is a log line)
FIND_MAX_STEPS = (100, 200, 250, 300, 400, 500, 750, 1000)
GEN_RCVBUF = 4 * 1024 * 1024
# Linux's SO_TIMESTAMPNS (struct timespec of the arrival, CLOCK_REALTIME); not in 3.11's socket
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


# -- small helpers ---------------------------------------------------------------------------
def proc_ticks(pid: int) -> tuple[int, int]:
    """utime and stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)


def core_busy(core: int | None) -> tuple[int, int]:
    """(busy, total) clock ticks of one core (all cores when None) from /proc/stat."""
    name = "cpu" if core is None else f"cpu{core}"
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields[0] == name:
                values = [int(v) for v in fields[1:8]]  # user nice system idle iowait irq softirq
                return sum(values) - values[3] - values[4], sum(values)
    raise RuntimeError(f"no {name} in /proc/stat")


def udp_drops(ports: set[int]) -> int:
    """Datagrams the kernel dropped at these local UDP ports (receive buffer full), from
    /proc/net/udp (per socket, since it was opened)."""
    drops = 0
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) in ports:
                drops += int(fields[-1])
    return drops


def pinner(core: int | None, nice: int = 0, rt: int = 0):
    """A preexec_fn pinning the child (and every thread it starts) to one core, at `nice`, or
    in the SCHED_FIFO class at priority `rt` (when not 0)."""
    if core is None and not nice and not rt:
        return None

    def pin() -> None:
        if core is not None:
            os.sched_setaffinity(0, {core})
        if nice:
            os.nice(nice)
        if rt:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(rt))

    return pin


def emit(obj: Any) -> None:
    sys.stdout.write(PROTOCOL + json.dumps(obj) + "\n")
    sys.stdout.flush()


def read_protocol(stream) -> Any:
    """The next JSON line of a child (other lines, its logs, are passed to stderr)."""
    while True:
        line = stream.readline()
        if not line:
            raise RuntimeError("the child ended without an answer")
        if line.startswith(PROTOCOL):
            return json.loads(line[len(PROTOCOL) :])
        sys.stderr.write("  | " + line)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


# -- the ng protocol (bencode/bdecode: bridge.media.ng) -----------------------------------------
class NgClient:
    """rtpengine's ng control protocol over UDP: `cookie d...e` out, `cookie d...e` back."""

    def __init__(self, port: int) -> None:
        self.address = (HOST, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(5.0)
        self._n = 0

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        # imported here, not at the top: the engine child (--role engine) may run another copy
        # of the package (--src, an older commit without bridge.media.ng)
        from bridge.media.ng import bdecode, bencode

        self._n += 1
        cookie = f"{os.getpid()}_{self._n}".encode()
        self.sock.sendto(cookie + b" " + bencode(message), self.address)
        while True:
            data = self.sock.recv(65536)
            got, _, body = data.partition(b" ")
            if got == cookie:
                reply = bdecode(body)
                if reply.get("result") not in ("ok", "pong"):
                    raise RuntimeError(f"rtpengine {message['command']}: {reply}")
                return reply

    def close(self) -> None:
        self.sock.close()


def sdp(port: int, session: int, key: bytes | None = None) -> str:
    """A peer's SDP: plain RTP/AVP, or RTP/SAVP with `key` in an `a=crypto` line (SDES)."""
    crypto = f"a=crypto:1 {SRTP_SUITE} inline:{base64.b64encode(key).decode()}\r\n" if key else ""
    return (
        "v=0\r\n"
        f"o=- {session} 1 IN IP4 {HOST}\r\n"
        "s=-\r\n"
        f"c=IN IP4 {HOST}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} {'RTP/SAVP' if key else 'RTP/AVP'} {PCMU}\r\n"
        f"a=rtpmap:{PCMU} PCMU/8000\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
        f"{crypto}"
    )


def peer_key(call: int, leg: int) -> bytes:
    """The SDES key (master key and salt) of a generator peer: call `call`'s leg `leg`."""
    return hashlib.sha256(f"bench-media-{call}-{leg}".encode()).digest()[:30]


def sdp_key(text: str) -> bytes:
    """The key of an SDP's `a=crypto` line (the engine's, in its answer or offer)."""
    for line in text.splitlines():
        if line.startswith("a=crypto:"):
            return base64.b64decode(line.split("inline:", 1)[1].split("|", 1)[0].strip())
    raise RuntimeError(f"no a=crypto line in the engine's SDP: {text!r}")


def srtp_session(key_hex: str, *, inbound: bool):
    import pylibsrtp

    policy = pylibsrtp.Policy(
        key=bytes.fromhex(key_hex),
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND
        if inbound
        else pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    )
    if inbound:
        policy.window_size = 1024
    return pylibsrtp.Session(policy)


def sdp_port(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise RuntimeError(f"no m=audio line in rtpengine's SDP: {text!r}")


def rtpengine_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return (out.stdout + out.stderr).strip().replace("Version: ", "")


class RtpEngine:
    """One rtpengine in the foreground, userspace only, pinned to the engine's core."""

    def __init__(
        self,
        binary: str,
        port_min: int,
        port_max: int,
        core: int | None,
        nice: int,
        rt: int,
        log: Path,
    ):
        self.ng_port = free_udp_port()
        self.log = log
        cmd = [
            binary,
            "--config-file=none",
            "--table=-1",  # no kernel forwarding: the userspace relay is measured
            f"--interface={HOST}",
            f"--listen-ng={HOST}:{self.ng_port}",
            f"--port-min={port_min}",
            f"--port-max={port_max}",
            "--foreground",
            "--log-stderr",
            "--log-level=4",  # warnings: no log line per call
            "--num-threads=1",
            "--delete-delay=0",  # a deleted call frees its ports at once (the next step's)
            "--timeout=120",
        ]
        self.command = " ".join(cmd)
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, preexec_fn=pinner(core, nice, rt)
        )
        self.pid = self.proc.pid
        self.ng = NgClient(self.ng_port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.ng.sock.settimeout(0.5)
                self.ng.request({"command": "ping"})
                break
            except (TimeoutError, ConnectionRefusedError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"rtpengine did not start: {log.read_text()[-2000:]}"
                    ) from None
        self.ng.sock.settimeout(5.0)
        self._calls: list[tuple[str, str]] = []

    def setup(self, n: int, step: str, peers: list[tuple[str, int]]) -> list[list[int]]:
        """N calls, caller at peers[0], callee at peers[1]: per call, the port each side
        sends to ([caller's, callee's])."""
        ports = []
        for i in range(n):
            call_id, from_tag, to_tag = f"bench-{step}-{i}", f"a{i}", f"b{i}"
            offer = self.ng.request(
                {
                    "command": "offer",
                    "call-id": call_id,
                    "from-tag": from_tag,
                    "sdp": sdp(peers[0][1], 1000 + i),
                    "replace": ["origin", "session-connection"],
                }
            )
            answer = self.ng.request(
                {
                    "command": "answer",
                    "call-id": call_id,
                    "from-tag": from_tag,
                    "to-tag": to_tag,
                    "sdp": sdp(peers[1][1], 2000 + i),
                    "replace": ["origin", "session-connection"],
                }
            )
            # the offer's SDP goes to the callee (where it sends), the answer's to the caller
            ports.append([sdp_port(answer["sdp"]), sdp_port(offer["sdp"])])
            self._calls.append((call_id, from_tag))
        return ports

    def teardown(self) -> None:
        for call_id, from_tag in self._calls:
            with contextlib.suppress(Exception):
                self.ng.request({"command": "delete", "call-id": call_id, "from-tag": from_tag})
        self._calls.clear()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.ng.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


# -- the embedded engine (child process) -----------------------------------------------------
def serve_embedded(args: argparse.Namespace) -> None:
    """`--role engine`: N calls of the embedded engine on one loop, commands on stdin."""
    loop_name, _, variant = args.loop.partition("-")
    if variant == "drain1":
        # the experiment of the fix proposed in docs/PERFORMANCE.md: one datagram per
        # wake-up (the loop's level-triggered reader calls again while more are queued),
        # instead of reading until BlockingIOError
        import bridge.media.endpoint

        if not hasattr(bridge.media.endpoint, "DRAIN_LIMIT"):
            raise SystemExit("this engine reads one datagram per wake-up already: no drain1")
        bridge.media.endpoint.DRAIN_LIMIT = 1
    elif variant:
        raise SystemExit(f"unknown variant {variant!r} of the loop {args.loop!r}")
    if loop_name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        import asyncio

        loop = asyncio.new_event_loop()
    loop.run_until_complete(_serve_embedded(args, loop))
    loop.close()


async def _serve_embedded(args: argparse.Namespace, loop) -> None:
    import asyncio

    from bridge.daemon import tune_garbage_collector
    from bridge.media.engine import EmbeddedMedia
    from bridge.media.ports import PortPool
    from bridge.media.session import MixingSession

    mode = args.mode  # relay | mix2 | mix3 | srtp
    peers = [int(p) for p in args.peers.split(",")]
    ticks = {"ns": 0, "count": 0, "late": 0}  # the sessions' 20 ms ticks

    original = MixingSession._tick

    def timed_tick(self) -> None:
        started = time.thread_time_ns()
        due = getattr(self, "_next", None)
        if due is not None and loop.time() - due > FRAME:
            ticks["late"] += 1
        original(self)
        ticks["ns"] += time.thread_time_ns() - started
        ticks["count"] += 1

    MixingSession._tick = timed_tick  # every session's ticks, the wrapper's cost included

    media = EmbeddedMedia(
        PortPool(HOST, args.port_min, args.port_max),
        advertised_address=HOST,
        clock=loop.time,
        loop=loop,
        timeout_seconds=60.0,
    )
    ports: list[list[int]] = []
    keys: list[list[str]] = []  # srtp: the engine's key of each leg (what it sends with)
    srtp = mode == "srtp"
    for i in range(args.calls):
        call_id = f"bench-{i}"
        # the caller's INVITE: its offer answered by the engine
        answer = media.answer(
            call_id, "caller", sdp(peers[0], 1000 + i, peer_key(i, 0) if srtp else None)
        )
        caller = sdp_port(answer)
        # the agent's leg: the engine's offer, the agent's answer
        if srtp:
            offer = media.offer(call_id, "agent", like="caller", srtp="required")
            keys.append([sdp_key(answer).hex(), sdp_key(offer).hex()])
        else:
            offer = media.offer(call_id, "agent", like="caller")
        agent = sdp_port(offer)
        media.accept(call_id, "agent", sdp(peers[1], 2000 + i, peer_key(i, 1) if srtp else None))
        media.bridge(call_id, "caller", "agent")
        legs = [caller, agent]
        if mode == "mix3":
            legs.append(sdp_port(media.offer(call_id, "sup")))
            media.accept(call_id, "sup", sdp(peers[2], 3000 + i))
            media.monitor(call_id, "sup", "barge")
        if mode in ("mix2", "mix3"):
            media.start_recording(call_id, Path(args.record_dir) / f"call-{i}.wav")
        ports.append(legs)
    policy = tune_garbage_collector()  # as the daemon does once started
    figures = EngineFigures(media, ticks)
    done = asyncio.Event()

    def command() -> None:
        line = sys.stdin.readline().strip()
        if line in ("quit", ""):
            done.set()
        else:
            figures.command(line)

    loop.add_reader(sys.stdin.fileno(), command)
    emit({"pid": os.getpid(), "ports": ports, "keys": keys})
    await done.wait()
    loop.remove_reader(sys.stdin.fileno())
    if policy is not None:
        policy.stop()
    media.stop()


class EngineFigures:
    """The engine child's figures for the parent: packets from the engine, the mixer's ticks,
    the garbage collector's pauses (gc.callbacks); `reset` starts a window, `stats` emits what
    changed since."""

    def __init__(self, media: Any, ticks: dict[str, int] | None = None) -> None:
        self.media = media
        self.ticks = ticks or {"ns": 0, "count": 0, "late": 0}
        self.pauses = {"count": 0, "ns": 0, "max_ns": 0, "started": 0}
        gc.callbacks.append(self._gc_watch)
        self.base = self.totals()

    def _gc_watch(self, phase: str, info: dict[str, int]) -> None:
        pauses = self.pauses
        if phase == "start":
            pauses["started"] = time.perf_counter_ns()
        else:
            took = time.perf_counter_ns() - pauses["started"]
            pauses["count"] += 1
            pauses["ns"] += took
            pauses["max_ns"] = max(pauses["max_ns"], took)

    def totals(self) -> dict[str, int]:
        figures = self.media.live_figures()
        return {
            "received": figures.received,
            "sent": figures.sent,
            "foreign": figures.foreign,
            "malformed": figures.malformed,
            "ticks": self.ticks["count"],
            "late_ticks": self.ticks["late"],
            "tick_ns": self.ticks["ns"],
            "gc_count": self.pauses["count"],
            "gc_ns": self.pauses["ns"],
        }

    def command(self, word: str) -> None:
        """`reset` or `stats` from the parent."""
        if word == "reset":
            self.base = self.totals()
            self.pauses["max_ns"] = 0
        elif word == "stats":
            now = self.totals()
            changed = {k: now[k] - self.base[k] for k in now}
            emit(changed | {"gc_max_ns": self.pauses["max_ns"]})


class Embedded:
    """The embedded engine's child process for one step."""

    def __init__(self, args, loop_name, mode, n, peers, port_range, core, record_dir):
        env = dict(os.environ)
        env["PYTHONPATH"] = str(args.src) + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--role=engine",
            f"--loop={loop_name}",
            f"--mode={mode}",
            f"--calls={n}",
            "--peers=" + ",".join(str(p[1]) for p in peers),
            f"--port-min={port_range[0]}",
            f"--port-max={port_range[1]}",
            f"--record-dir={record_dir}",
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=pinner(core, args.nice, args.rt),
        )
        hello = read_protocol(self.proc.stdout)
        self.pid = hello["pid"]
        self.ports = hello["ports"]
        self.keys = hello.get("keys") or []

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stats(self) -> dict[str, int]:
        self.command("stats")
        return read_protocol(self.proc.stdout)

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.command("quit")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the load generator (child process) ------------------------------------------------------
def run_generator() -> None:
    """`--role gen`: the paced sender and receiver; config as JSON on stdin, sockets by fd."""
    cfg = json.loads(sys.stdin.readline())
    socks = [socket.socket(fileno=fd) for fd in cfg["fds"]]
    for s in socks:
        s.setblocking(False)
    streams = cfg["streams"]  # [socket index, destination port]
    tagged = cfg["tagged"]
    n_streams = len(streams)
    rounds = max(1, round(cfg["seconds"] / FRAME))
    total = n_streams * rounds
    dt = FRAME / n_streams
    seq0, ts0 = 1000, 50_000
    srtp = cfg.get("srtp")  # SDES: each stream's key, the engine's keys by its leg's port
    bufs, sends, dests = [], [], []
    for k, (si, port) in enumerate(streams):
        buf = bytearray(b"\xff" * PACKET_BYTES)  # PCMU silence after the tag
        struct.pack_into("!BBHII", buf, 0, 0x80, PCMU, seq0, ts0, 0x10000 + k)
        struct.pack_into("!I", buf, TAG_OFFSET, k)
        bufs.append(buf)
        if srtp:
            protect = srtp_session(srtp["tx"][k], inbound=False).protect

            def send_srtp(data, dest, sendto=socks[si].sendto, protect=protect):
                return sendto(protect(bytes(data)), dest)

            sends.append(send_srtp)
        else:
            sends.append(socks[si].sendto)
        dests.append((HOST, port))
    raw: list[tuple[int, bytes, bytes]] = []  # srtp: (engine port, packet, arrival) as it came
    seq_ts, tag = _SEQ_TS.pack_into, _TAG_REST.pack_into
    time_ns, monotonic = time.time_ns, time.monotonic

    # receiving: the kernel's arrival time of each packet (SO_TIMESTAMPNS)
    log = bytearray()  # per packet: the 16-byte tag, then the arrival's struct timespec
    rx = bytearray(2048)
    rxv = memoryview(rx)
    anc_size = socket.CMSG_SPACE(16)
    received = [0] * len(socks)
    recv_errors = 0

    def drain() -> None:
        nonlocal recv_errors
        for index, s in enumerate(socks):
            count = 0
            if tagged and srtp:  # logged as it came, unprotected after the window
                recvmsg = s.recvmsg_into
                while True:
                    try:
                        size, anc, _, source = recvmsg([rx], anc_size)
                    except BlockingIOError:
                        break
                    except OSError:
                        recv_errors += 1
                        continue
                    count += 1
                    if size == PACKET_BYTES + SRTP_TAG and anc:
                        raw.append((source[1], bytes(rxv[:size]), anc[0][2]))
            elif tagged:
                recvmsg = s.recvmsg_into
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
                        log.extend(rxv[TAG_OFFSET : TAG_OFFSET + 16])  # stream, seq, send
                        log.extend(anc[0][2])
            else:
                recv_into = s.recv_into
                while True:
                    try:
                        recv_into(rx)
                    except BlockingIOError:
                        break
                    except OSError:
                        recv_errors += 1
                        continue
                    count += 1
            received[index] += count

    # Paced on absolute times, woken by a timer, never by the sockets: each pass sends what is
    # due and reads what has arrived, at most one pass a millisecond (--gen-period), so the
    # engine's sendto does not pay for waking the generator on every packet (on loopback the
    # sender does the receiver's wake-up) and the generator's cost per packet stays low.
    period = cfg["period"]
    sleep = time.sleep
    lags = array("d")
    send_errors = 0
    start = monotonic() + cfg["start_delay"]
    while monotonic() < start - 0.002:
        drain()
        sleep(min(0.01, max(0.0, start - monotonic() - 0.002)))
    while monotonic() < start:
        pass
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
                try:
                    sends[k](buf, dests[k])
                except OSError:
                    send_errors += 1
                g += 1
                k += 1
                if k == n_streams:
                    k = 0
                    rnd += 1
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
    result: dict[str, Any] = {
        "sent": total - send_errors,
        "send_errors": send_errors,
        "received": sum(received),
        "received_per_socket": received,
        "recv_errors": recv_errors,
        "window": window,
        "send_seconds": last_send - wall0,
        "gen_cpu_share": gen_cpu / window,
        "gen_user_share": (usage1.ru_utime - usage0.ru_utime) / window,
        "gen_lag_p99_ms": _percentile(sorted(lags), 99) * 1000 if lags else 0.0,
        "gen_lag_max_ms": max(lags) * 1000 if lags else 0.0,
    }
    if srtp:
        rx_sessions = {int(p): srtp_session(k, inbound=True) for p, k in srtp["rx"].items()}
        undecryptable = 0
        for port, packet, arrival in raw:
            try:
                plain = rx_sessions[port].unprotect(packet)
            except Exception:  # pylibsrtp.Error, or an unknown port
                undecryptable += 1
                continue
            log.extend(plain[TAG_OFFSET : TAG_OFFSET + 16])
            log.extend(arrival)
        result["undecryptable"] = undecryptable
    if tagged:
        result.update(_delays(log, total - send_errors))
        if os.environ.get("BENCH_MEDIA_DUMP"):
            Path(os.environ["BENCH_MEDIA_DUMP"]).write_bytes(bytes(log))
    emit(result)


def _percentile(ordered, q: float) -> float:
    if not len(ordered):
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))  # nearest rank
    return float(ordered[index])


def _delays(log: bytearray, sent: int) -> dict[str, Any]:
    """Loss and delay variation from the generator's receive log (numpy, a test extra)."""
    import numpy as np

    rec = np.frombuffer(
        bytes(log),
        dtype=[
            ("stream", ">u4"),
            ("seq", ">u4"),
            ("send", ">u8"),
            ("sec", "<i8"),
            ("nsec", "<i8"),
        ],
    )
    if not len(rec):
        return {"unique": 0, "lost": sent, "duplicates": 0}
    stream = rec["stream"].astype(np.int64)
    seq = rec["seq"].astype(np.int64)
    transit = rec["sec"] * 1_000_000_000 + rec["nsec"] - rec["send"].astype(np.int64)
    order = np.lexsort((seq, stream))
    stream, seq, transit = stream[order], seq[order], transit[order]
    fresh = np.ones(len(seq), dtype=bool)
    fresh[1:] = (stream[1:] != stream[:-1]) | (seq[1:] != seq[:-1])
    duplicates = int(len(seq) - fresh.sum())
    stream, seq, transit = stream[fresh], seq[fresh], transit[fresh]
    starts = np.flatnonzero(np.r_[True, stream[1:] != stream[:-1]])
    counts = np.diff(np.r_[starts, len(stream)])
    pdv = transit - np.repeat(np.minimum.reduceat(transit, starts), counts)
    consecutive = (stream[1:] == stream[:-1]) & (seq[1:] == seq[:-1] + 1)
    d = np.abs(np.diff(transit))[consecutive]
    ms = 1e-6
    return {
        "unique": len(seq),
        "lost": sent - len(seq),
        "duplicates": duplicates,
        "pdv_p99_ms": float(np.percentile(pdv, 99)) * ms,
        "pdv_max_ms": float(pdv.max()) * ms,
        "d_p99_ms": float(np.percentile(d, 99)) * ms if len(d) else None,
        "transit_p50_ms": float(np.percentile(transit, 50)) * ms,
        "transit_min_ms": float(transit.min()) * ms,
    }


# -- one step --------------------------------------------------------------------------------
@dataclass
class Step:
    engine: str  # "embedded" | "rtpengine"
    loop: str  # uvloop | asyncio | "-" (rtpengine)
    mode: str  # relay | mix2 | mix3 | srtp
    calls: int
    section: str = "relay"  # relay (the engines side by side) | mixer | srtp
    sent: int = 0
    received: int = 0
    lost: int = 0
    lost_pct: float = 0.0
    pdv_p99_ms: float | None = None
    pdv_max_ms: float | None = None
    d_p99_ms: float | None = None
    transit_p50_ms: float | None = None
    window_s: float = 0.0
    cpu_s: float = 0.0
    cpu_share: float = 0.0
    cpu_us_per_packet: float | None = None  # per packet relayed (relay) or in (mixer)
    cpu_user_share: float | None = None  # of the engine's CPU, in user mode (the rest: kernel)
    engine_in: int | None = None  # packets the engine received (embedded)
    cpu_us_per_call_frame: float | None = None
    tick_us: float | None = None
    ticks: int | None = None
    late_ticks: int | None = None
    frames_sent: int | None = None
    gen_cpu_share: float = 0.0
    gen_lag_p99_ms: float = 0.0
    gen_saturated: bool = False
    core_busy_share: float = 0.0  # the engine's core, busy with anything (/proc/stat)
    others_share: float = 0.0  # of which not the engine (other processes, softirqs elsewhere)
    gen_core_others_share: float = 0.0  # the generator's core, busy with anything else
    load_average: float = 0.0
    passed: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.engine if self.engine == "rtpengine" else f"embedded/{self.loop}"


@dataclass
class Window:
    """What `Bench.follow_window` read of one step's measured window."""

    ticks0: tuple[int, int] = (0, 0)  # the engine's utime, stime at the start
    ticks1: tuple[int, int] = (0, 0)
    busy0: tuple[int, int] = (0, 0)  # the engine's core: busy, total
    busy1: tuple[int, int] = (0, 0)
    gbusy0: tuple[int, int] = (0, 0)  # the generator's core
    gbusy1: tuple[int, int] = (0, 0)
    engine_stats: dict[str, int] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    sampler: Any = None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-media-"))
        cores = sorted(os.sched_getaffinity(0))
        self.pin = not args.no_pin and len(cores) >= 2
        self.engine_core = args.engine_core if self.pin else None
        self.gen_core = args.gen_core if self.pin else None
        self.rtpengine: RtpEngine | None = None
        self.steps: list[Step] = []
        self._n = 0

    def close(self) -> None:
        if self.rtpengine is not None:
            self.rtpengine.stop()
            self.rtpengine = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    # the generator's sockets: callers, callees, supervisors
    def _gen_sockets(self, count: int) -> list[socket.socket]:
        socks = []
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, GEN_RCVBUF)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.bind((HOST, 0))
            socks.append(s)
        return socks

    def run(
        self,
        engine: str,
        loop_name: str,
        mode: str,
        n: int,
        *,
        profile: bool = False,
        section: str = "relay",
    ):
        args = self.args
        self._n += 1
        legs = 3 if mode == "mix3" else 2
        socks = self._gen_sockets(legs)
        peers = [s.getsockname() for s in socks]
        step = Step(engine, loop_name if engine == "embedded" else "-", mode, n, section)
        runner: Embedded | None = None
        try:
            if engine == "embedded":
                record_dir = self.tmp / f"rec-{self._n}"
                record_dir.mkdir()
                runner = Embedded(
                    args,
                    loop_name,
                    mode,
                    n,
                    peers,
                    args.embedded_ports,
                    self.engine_core,
                    record_dir,
                )
                pid, ports = runner.pid, runner.ports
            else:
                assert self.rtpengine is not None
                pid = self.rtpengine.pid
                ports = self.rtpengine.setup(n, str(self._n), peers)
            streams = [[j, call_ports[j]] for call_ports in ports for j in range(legs)]
            cfg = {
                "fds": [s.fileno() for s in socks],
                "streams": streams,
                "tagged": mode in ("relay", "srtp"),
                "seconds": args.seconds,
                "start_delay": 0.3,
                "signal_after": 0.3,
                "tail": 0.5 if args.quick else 1.0,
                "period": args.gen_period / 1000,
            }
            if mode == "srtp":
                assert runner is not None
                cfg["srtp"] = {
                    "tx": [peer_key(i, j).hex() for i in range(n) for j in range(legs)],
                    "rx": {
                        str(port): runner.keys[i][j]
                        for i, call_ports in enumerate(ports)
                        for j, port in enumerate(call_ports)
                    },
                }
            gen = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--role=gen"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                pass_fds=cfg["fds"],
                preexec_fn=pinner(self.gen_core, rt=max(0, args.rt - 1)),
            )
            assert gen.stdin is not None and gen.stdout is not None
            gen.stdin.write(json.dumps(cfg) + "\n")
            gen.stdin.close()
            window = self.follow_window(gen, pid, runner, profile)
            sampler, result = window.sampler, window.result
            gen.wait()
            step.extra["drops_engine"] = udp_drops({p for call in ports for p in call})
            step.extra["drops_generator"] = udp_drops({p[1] for p in peers})
            if result is None:
                raise RuntimeError(f"the generator failed (exit {gen.returncode})")
            if sampler is not None:
                step.extra["profile"] = self._finish_profile(*sampler)
        finally:
            if runner is not None:
                runner.stop()
            if engine == "rtpengine" and self.rtpengine is not None:
                self.rtpengine.teardown()
            for s in socks:
                s.close()
        self.account(step, window)
        if not profile:
            self.steps.append(step)
        return step

    def follow_window(
        self, gen: subprocess.Popen[str], pid: int, runner: Any, profile: bool
    ) -> Window:
        """Read the generator's lines: the engine's and both cores' CPU counters taken when
        the measured window starts and stops, the engine's own figures (`runner`, the
        embedded engine's child), the generator's result; a profiler around the window."""
        assert gen.stdout is not None
        window = Window()
        for line in gen.stdout:
            if line.startswith("started"):
                window.ticks0 = proc_ticks(pid)
                window.busy0 = core_busy(self.engine_core)
                window.gbusy0 = core_busy(self.gen_core)
                if runner is not None:
                    runner.command("reset")
                if profile:
                    window.sampler = self._start_profile(pid)
            elif line.startswith("stopped"):
                window.ticks1 = proc_ticks(pid)
                window.busy1 = core_busy(self.engine_core)
                window.gbusy1 = core_busy(self.gen_core)
                if runner is not None:
                    window.engine_stats = runner.stats()
            elif line.startswith(PROTOCOL):
                window.result = json.loads(line[len(PROTOCOL) :])
            else:
                sys.stderr.write("  | " + line)
        return window

    def account(self, step: Step, window: Window) -> None:
        """The step's CPU figures from the window's counters (and the generator's result)."""
        assert window.result is not None
        (u0, s0), (u1, s1) = window.ticks0, window.ticks1
        user, system = u1 - u0, s1 - s0
        self._fill(step, window.result, window.engine_stats, (user + system) / CLK_TCK)
        step.cpu_user_share = user / (user + system) if user + system else None
        busy, total = window.busy1[0] - window.busy0[0], window.busy1[1] - window.busy0[1]
        step.core_busy_share = busy / total if total else 0.0
        step.others_share = max(0.0, step.core_busy_share - step.cpu_share)
        step.load_average = os.getloadavg()[0]
        busy, total = window.gbusy1[0] - window.gbusy0[0], window.gbusy1[1] - window.gbusy0[1]
        step.gen_core_others_share = max(0.0, (busy / total if total else 0.0) - step.gen_cpu_share)

    def _fill(self, step: Step, r: dict[str, Any], es: dict[str, int], cpu: float) -> None:
        args = self.args
        step.sent, step.received = r["sent"], r["received"]
        step.window_s = r["window"]
        step.cpu_s = cpu
        step.cpu_share = cpu / r["window"]
        step.gen_cpu_share = r["gen_cpu_share"]
        step.extra["gen_user_share"] = r["gen_user_share"]
        step.gen_lag_p99_ms = r["gen_lag_p99_ms"]
        step.gen_saturated = r["gen_cpu_share"] > args.gen_limit
        if r.get("undecryptable"):
            step.note += f" undecryptable {r['undecryptable']}"
        if step.mode in ("relay", "srtp"):
            step.lost = r["lost"]
            step.lost_pct = 100.0 * r["lost"] / max(1, r["sent"])
            step.pdv_p99_ms = r.get("pdv_p99_ms")
            step.pdv_max_ms = r.get("pdv_max_ms")
            step.d_p99_ms = r.get("d_p99_ms")
            step.transit_p50_ms = r.get("transit_p50_ms")
            relayed = r["unique"]
            step.cpu_us_per_packet = cpu * 1e6 / relayed if relayed else None
            step.passed = (
                r["lost"] == 0
                and step.pdv_p99_ms is not None
                and step.pdv_p99_ms < args.max_jitter_ms
            )
            if r.get("duplicates"):
                step.note += f" duplicates {r['duplicates']}"
        frames = step.calls * r["window"] / FRAME
        step.cpu_us_per_call_frame = cpu * 1e6 / frames if frames else None
        if es:
            step.engine_in = es["received"]
            if step.mode not in ("relay", "srtp"):
                step.cpu_us_per_packet = cpu * 1e6 / es["received"] if es["received"] else None
                step.ticks, step.late_ticks = es["ticks"], es["late_ticks"]
                step.frames_sent = es["sent"]
                if es["ticks"]:
                    step.tick_us = es["tick_ns"] / es["ticks"] / 1000
            step.extra["gc"] = {
                "collections": es["gc_count"],
                "ms": es["gc_ns"] / 1e6,
                "max_ms": es["gc_max_ns"] / 1e6,
            }
            if es["gc_max_ns"] > 1e6 * args.max_jitter_ms / 2:
                step.note += f" gc pause {es['gc_max_ns'] / 1e6:.1f} ms"
            if es.get("malformed"):
                step.note += f" malformed {es['malformed']}"
            if es.get("foreign"):
                step.note += f" foreign {es['foreign']}"
        if step.gen_saturated:
            step.note += " GENERATOR SATURATED"
        for where in ("engine", "generator"):
            if step.extra.get(f"drops_{where}"):
                step.note += f" dropped at the {where}'s sockets {step.extra[f'drops_{where}']}"

    # -- py-spy
    def _start_profile(self, pid: int):
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = self.tmp / f"profile-{pid}.txt"
        proc = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, int(self.args.seconds) - 1)),
                "--rate",
                "250",
                "--format",
                "raw",
                "--function",
                "--nonblocking",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=pinner(self.gen_core),
        )
        return proc, out

    def _finish_profile(self, proc: subprocess.Popen, out: Path) -> dict[str, Any]:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not out.exists():
            return {"error": "py-spy wrote nothing (is it installed? .venv/bin/pip install py-spy)"}
        own: dict[str, int] = {}
        inclusive: dict[str, int] = {}
        total = 0
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            samples = int(count)
            frames = stack.split(";")
            total += samples
            leaf = frames[-1]
            own[leaf] = own.get(leaf, 0) + samples
            for name in set(frames):
                inclusive[name] = inclusive.get(name, 0) + samples
        top = sorted(own.items(), key=lambda kv: -kv[1])[:15]
        return {
            "samples": total,
            "self": [[name, n] for name, n in top],
            "inclusive": [
                [name, n] for name, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:15]
            ],
        }


# -- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=("main", "engine", "gen"), default="main", help="internal")
    p.add_argument("--calls", default="100,250,500", help="steps of concurrent calls")
    p.add_argument("--seconds", type=float, default=10.0, help="of packets per step")
    p.add_argument("--find-max", action="store_true", help="step N up to each engine's limit")
    p.add_argument(
        "--max-steps",
        default=",".join(map(str, FIND_MAX_STEPS)),
        help="the steps of --find-max",
    )
    p.add_argument("--loops", default="uvloop,asyncio", help="loops of the embedded engine")
    p.add_argument("--mix-calls", type=int, default=50, help="calls of the mixer steps")
    p.add_argument("--no-mixer", action="store_true")
    p.add_argument(
        "--srtp-calls", type=int, default=0, help="calls of the SDES-SRTP relay steps (0: none)"
    )
    p.add_argument("--no-rtpengine", action="store_true")
    p.add_argument("--rtpengine", default="rtpengine", help="the rtpengine binary")
    p.add_argument("--max-jitter-ms", type=float, default=5.0)
    p.add_argument(
        "--retries", type=int, default=1, help="--find-max: runs again of a failing step"
    )
    p.add_argument("--gen-limit", type=float, default=0.9, help="generator CPU share limit")
    p.add_argument(
        "--gen-period", type=float, default=1.0, help="ms between the generator's passes"
    )
    p.add_argument("--engine-core", type=int, default=0)
    p.add_argument("--gen-core", type=int, default=1)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument(
        "--nice", type=int, default=0, help="niceness of the engine under test (both engines)"
    )
    p.add_argument(
        "--rt",
        type=int,
        default=0,
        help="SCHED_FIFO priority of the engine under test (both engines; the generator one "
        "lower); 0: the default class",
    )
    p.add_argument("--ports", default="10000-19999", help="UDP ports (half each engine)")
    p.add_argument("--profile", action="store_true", help="py-spy the embedded engine")
    p.add_argument("--profile-calls", type=int, default=300)
    p.add_argument("--budget", type=float, default=540.0, help="no new step after (s)")
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument("--src", type=Path, default=REPO / "src", help="the bridge package's root")
    # --role engine
    p.add_argument("--loop", default="uvloop")
    p.add_argument("--mode", default="relay")
    p.add_argument("--peers", default="")
    p.add_argument("--port-min", type=int, default=10000)
    p.add_argument("--port-max", type=int, default=14999)
    p.add_argument("--record-dir", default="")
    args = p.parse_args(argv)
    if args.role == "engine":
        args.calls = int(args.calls)
    return args


RELAY_HEAD = (
    f"{'engine':<23} {'calls':>5} {'sent':>8} {'recv':>8} {'lost':>6} {'lost%':>6} "
    f"{'pdv99':>6} {'pdvmax':>7} {'|D|99':>6} {'trans50':>7} {'cpu s':>6} {'core%':>6} "
    f"{'us/pkt':>6} {'user%':>5} {'other%':>6} {'gen%':>5} {'gother%':>7} {'lag99':>6}  pass"
)
RELAY_UNITS = (
    f"{'':<23} {'':>5} {'':>8} {'':>8} {'':>6} {'':>6} "
    f"{'ms':>6} {'ms':>7} {'ms':>6} {'ms':>7} {'':>6} {'':>6} {'':>6} {'':>5} {'':>6} {'':>5} "
    f"{'':>7} {'ms':>6}"
)
MIX_HEAD = (
    f"{'engine':<23} {'mode':<5} {'calls':>5} {'in':>8} {'out':>8} {'cpu s':>6} {'core%':>6} "
    f"{'us/pkt in':>9} {'us/call/20ms':>12} {'us/tick':>7} {'ticks':>7} {'late':>5} "
    f"{'other%':>6} {'gen%':>5}"
)


def relay_row(s: Step) -> str:
    verdict = "-" if s.passed is None else ("yes" if s.passed else "NO")
    return (
        f"{s.label:<23} {s.calls:>5} {s.sent:>8} {s.received:>8} {s.lost:>6} "
        f"{s.lost_pct:>6.2f} {fmt(s.pdv_p99_ms):>6} {fmt(s.pdv_max_ms):>7} "
        f"{fmt(s.d_p99_ms):>6} {fmt(s.transit_p50_ms, '.3f'):>7} {s.cpu_s:>6.2f} "
        f"{100 * s.cpu_share:>6.1f} {fmt(s.cpu_us_per_packet, '.1f'):>6} "
        f"{fmt(s.cpu_user_share and 100 * s.cpu_user_share, '.0f'):>5} "
        f"{100 * s.others_share:>6.1f} {100 * s.gen_cpu_share:>5.0f} "
        f"{100 * s.gen_core_others_share:>7.1f} {s.gen_lag_p99_ms:>6.2f}  {verdict}{s.note}"
    )


def mix_row(s: Step) -> str:
    return (
        f"{s.label:<23} {s.mode:<5} {s.calls:>5} {fmt(s.engine_in, 'd'):>8} {s.received:>8} "
        f"{s.cpu_s:>6.2f} {100 * s.cpu_share:>6.1f} {fmt(s.cpu_us_per_packet, '.1f'):>9} "
        f"{fmt(s.cpu_us_per_call_frame, '.1f'):>12} {fmt(s.tick_us, '.1f'):>7} "
        f"{fmt(s.ticks, 'd'):>7} {fmt(s.late_ticks, 'd'):>5} {100 * s.others_share:>6.1f} "
        f"{100 * s.gen_cpu_share:>5.0f}"
        f"{s.note}"
    )


def summarize(steps: list[Step], labels: list[str], top_step: int | None) -> dict[str, Any]:
    """Per engine: the largest N with a passing run, the median CPU per packet of the runs
    there, calls per core from it (1e6 / (100 packets/s x CPU per packet))."""
    out: dict[str, Any] = {}
    relay = [s for s in steps if s.section == "relay"]
    for label in labels:
        runs: dict[int, list[Step]] = {}
        for s in relay:
            if s.label == label:
                runs.setdefault(s.calls, []).append(s)
        passed = [n for n, rs in runs.items() if any(r.passed for r in rs)]
        failed = [n for n, rs in runs.items() if not any(r.passed for r in rs)]
        generator_bound = [n for n in failed if all(r.gen_saturated for r in runs[n])]
        cpu_by_calls = {
            n: statistics.median(r.cpu_us_per_packet for r in rs if r.cpu_us_per_packet)
            for n, rs in runs.items()
            if any(r.cpu_us_per_packet for r in rs)
        }
        best = max(passed, default=0)
        cpu = cpu_by_calls.get(best)
        out[label] = {
            "max_calls": best,
            "limited_by_steps": bool(best and not failed and best == top_step),
            "first_failure": min(failed, default=None),
            "generator_bound": min(generator_bound, default=None),
            "cpu_us_per_packet": cpu,
            "calls_per_core_from_cpu": 1e6 / (100 * cpu) if cpu else None,
            "cpu_us_per_packet_by_calls": cpu_by_calls,
            "runs_by_calls": {n: len(rs) for n, rs in runs.items()},
        }
    return out


def orchestrate(args: argparse.Namespace) -> int:
    if args.quick:
        args.seconds = min(args.seconds, 2.0)
        args.calls = "20"
        args.mix_calls = min(args.mix_calls, 10)
        args.find_max = False
        args.profile = False
        args.budget = min(args.budget, 60.0)
    lo, hi = (int(x) for x in args.ports.split("-"))
    mid = (lo + hi) // 2
    args.embedded_ports = (lo, mid)
    rtp_ports = (mid + 1, hi)
    loops = [x for x in args.loops.split(",") if x]
    if importlib_spec("uvloop") is None and any(x.startswith("uvloop") for x in loops):
        print("uvloop is not installed: only stock asyncio is measured")
        loops = [x for x in loops if not x.startswith("uvloop")]
    mix_loops = [x for x in loops if "-" not in x]  # the variants are relay experiments
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
    bench = Bench(args)
    print(
        (
            f"engine on core {bench.engine_core}, load generator on core {bench.gen_core}"
            if bench.pin
            else "no pinning (fewer than 2 cores or --no-pin)"
        )
        + (f"; the engine under test at nice {args.nice}" if args.nice else "")
        + (
            f"; SCHED_FIFO: the engine under test at priority {args.rt}, the generator at "
            f"{max(0, args.rt - 1) or 'the default class'}"
            if args.rt
            else ""
        )
    )
    print(
        f"each call: 2 streams x 50 packets/s of {PACKET_BYTES}-byte PCMU RTP; "
        f"{args.seconds:g} s per step; pass = no loss and PDV p99 < {args.max_jitter_ms:g} ms"
    )
    labels = [f"embedded/{loop}" for loop in loops] + (["rtpengine"] if binary else [])
    engines = [("embedded", loop) for loop in loops] + ([("rtpengine", "-")] if binary else [])
    try:
        if binary:
            bench.rtpengine = RtpEngine(
                binary,
                *rtp_ports,
                bench.engine_core,
                args.nice,
                args.rt,
                bench.tmp / "rtpengine.log",
            )
            print(f"rtpengine: {bench.rtpengine.command}")
        print()
        print("== relayed calls (blind relay; rtpengine: offer/answer, userspace forwarding)")
        print(
            "pdv = RFC 5481 packet delay variation (transit - the stream's smallest transit); "
            "|D| = RFC 3550 transit difference of consecutive packets; trans50 = transit p50; "
            "core% and us/pkt = the engine's CPU, user% its share in user mode (the rest in "
            "the kernel); other% = the rest of its core's busy time "
            "(other processes, interrupts); gen% = the generator's CPU; gother% = the rest of "
            "the generator's core's busy time; lag99 = its send lateness p99"
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
                    (args.embedded_ports[1] - args.embedded_ports[0]) // 2
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
                step = bench.run(engine, loop_name, "relay", n)
                print(relay_row(step), flush=True)
                for _ in range(args.retries if args.find_max else 0):
                    if step.passed or step.gen_saturated or time.monotonic() - began > args.budget:
                        break
                    step = bench.run(engine, loop_name, "relay", n)
                    step.note += " (run again)"
                    print(relay_row(step), flush=True)
                if args.find_max and not step.passed:
                    stopped.add(label)
        if args.srtp_calls > 0:
            print()
            print(
                f"== SRTP relay, embedded engine, {args.srtp_calls} calls: the blind relay, "
                "then the same calls with both legs SRTP keyed by SDES (unprotect, rewrite, "
                f"protect in place; {PACKET_BYTES + SRTP_TAG}-byte packets)"
            )
            print(RELAY_HEAD)
            print(RELAY_UNITS)
            for loop_name in mix_loops:
                for mode in ("relay", "srtp"):
                    if time.monotonic() - began > args.budget:
                        print(f"skipped: --budget {args.budget:g} s spent")
                        break
                    step = bench.run("embedded", loop_name, mode, args.srtp_calls, section="srtp")
                    step.note = f" [{mode}]" + step.note
                    print(relay_row(step), flush=True)
        if not args.no_mixer and args.mix_calls > 0:
            print()
            print(
                f"== the mixer, embedded engine, {args.mix_calls} calls: relay = blind relay "
                "(2 legs); mix2 = caller + agent through a MixingSession with the recording "
                "taps; mix3 = caller, agent and a barging supervisor (3 legs) + recording"
            )
            print(
                "in = packets the engine received, out = packets the generator got back; "
                "us/call/20ms = engine CPU per call per frame; us/tick = inside the 20 ms tick"
            )
            print(MIX_HEAD)
            for loop_name in mix_loops[:1] if args.quick else mix_loops:
                for mode in ("relay", "mix2", "mix3"):
                    if time.monotonic() - began > args.budget:
                        print(f"skipped: --budget {args.budget:g} s spent")
                        break
                    step = bench.run("embedded", loop_name, mode, args.mix_calls, section="mixer")
                    print(mix_row(step), flush=True)
        if args.profile:
            print()
            print(
                f"== py-spy of the embedded engine (uvloop), {args.profile_calls} calls, "
                "self and inclusive samples"
            )
            step = bench.run("embedded", "uvloop", "relay", args.profile_calls, profile=True)
            print_profile(step.extra.get("profile", {}))
            if not args.no_mixer and args.mix_calls > 0:
                print()
                print(
                    f"== py-spy of the embedded engine (uvloop), mix3, {args.mix_calls} calls, "
                    "self and inclusive samples"
                )
                step = bench.run("embedded", "uvloop", "mix3", args.mix_calls, profile=True)
                print_profile(step.extra.get("profile", {}))
    finally:
        bench.close()

    summary = summarize(bench.steps, labels, steps[-1] if args.find_max else None)
    print()
    print("== summary (relay)")
    for label, s in summary.items():
        if s["max_calls"]:
            limit = " (every step passed: the limit is higher)" if s["limited_by_steps"] else ""
            fail = f", first failing step {s['first_failure']}" if s["first_failure"] else ""
            if s["first_failure"] and s["first_failure"] == s["generator_bound"]:
                fail += " (the generator saturated there: a floor, not this engine's limit)"
            print(
                f"{label:<23} largest passing step {s['max_calls']} calls on one core{limit}"
                f"{fail}; {fmt(s['cpu_us_per_packet'], '.1f')} us CPU per relayed packet "
                f"there -> {fmt(s['calls_per_core_from_cpu'], '.0f')} calls per core "
                "from CPU"
            )
        else:
            print(f"{label:<23} no passing step")
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
            calls_ratio = mine["max_calls"] / ref["max_calls"]
            core_ratio = (
                mine["calls_per_core_from_cpu"] / ref["calls_per_core_from_cpu"]
                if mine["calls_per_core_from_cpu"] and ref["calls_per_core_from_cpu"]
                else None
            )
            ratios[label] = {
                "calls_ratio": calls_ratio,
                "calls_per_core_from_cpu_ratio": core_ratio,
                "cpu_per_packet_ratio_by_calls": cpu_ratios,
            }
            cpu_text = (
                "CPU per packet x rtpengine's at "
                + ", ".join(f"{n} calls {r:.2f}" for n, r in cpu_ratios.items())
                if cpu_ratios
                else "no common step for CPU per packet"
            )
            print(
                f"{label} / rtpengine: largest passing step {calls_ratio:.2f} x; "
                f"calls per core from CPU {fmt(core_ratio)} x; {cpu_text}"
            )
    mixer = [s for s in bench.steps if s.section == "mixer"]
    if not args.no_mixer:
        for loop_name in mix_loops:
            by_mode = {s.mode: s for s in mixer if s.loop == loop_name}
            blind, mix2, mix3 = (by_mode.get(m) for m in ("relay", "mix2", "mix3"))
            if blind and mix3 and blind.cpu_us_per_packet and mix3.cpu_us_per_packet:
                print(
                    f"mixer ({loop_name}, {args.mix_calls} calls): per call per 20 ms "
                    f"{fmt(blind.cpu_us_per_call_frame, '.1f')} us blind, "
                    f"{fmt(mix2 and mix2.cpu_us_per_call_frame, '.1f')} us mix2, "
                    f"{fmt(mix3.cpu_us_per_call_frame, '.1f')} us mix3 (tick alone "
                    f"{fmt(mix3.tick_us, '.1f')} us); per packet in "
                    f"{blind.cpu_us_per_packet:.1f} us blind, "
                    f"{fmt(mix2 and mix2.cpu_us_per_packet, '.1f')} us mix2, "
                    f"{mix3.cpu_us_per_packet:.1f} us mix3 "
                    f"({mix3.cpu_us_per_packet / blind.cpu_us_per_packet:.2f} x)"
                )
    for loop_name in mix_loops:
        by_mode = {s.mode: s for s in bench.steps if s.section == "srtp" and s.loop == loop_name}
        plain, secure = by_mode.get("relay"), by_mode.get("srtp")
        if plain and secure and plain.cpu_us_per_packet and secure.cpu_us_per_packet:
            print(
                f"srtp relay ({loop_name}, {args.srtp_calls} calls): "
                f"{secure.cpu_us_per_packet:.1f} us CPU per relayed packet with SDES-SRTP on "
                f"both legs, {plain.cpu_us_per_packet:.1f} us plain "
                f"({secure.cpu_us_per_packet / plain.cpu_us_per_packet:.2f} x)"
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
            )
        )
    return 0


def print_profile(profile: dict[str, Any]) -> None:
    if "error" in profile or not profile:
        print(profile.get("error", "no profile"))
        return
    total = profile["samples"] or 1
    print(f"{profile['samples']} samples (idle excluded)")
    print("self:")
    for name, n in profile["self"]:
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("inclusive:")
    for name, n in profile["inclusive"]:
        print(f"  {100 * n / total:5.1f}%  {name}")


def importlib_spec(name: str):
    import importlib.util

    return importlib.util.find_spec(name)


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
