"""CPU per call and per registration inside the bridge's SIP stack, without sockets or SIPp.

    .venv/bin/python bench/sip_inproc.py [--calls 4000] [--registrations 4000]
                                         [--users 100] [--profile calls|registrations]

`bench/sip_cps.py` is the real benchmark (SIPp peers, real sockets, the whole daemon); its
figures move with whatever else runs on the two shared cores. This one is for iterating on
the hot path: it builds the same application the daemon builds (`build_context`, the
`SipService`, a `SipEndpoint` with its metrics counters, logging at warning) and feeds
datagrams straight into `SipEndpoint._datagram`, with the UDP socket's `sendto` replaced
by a list. The peers (the trunk, 100 desk phones, one registering user) are scripted here
and their work is not counted: only the time spent inside the endpoint (parsing,
transactions, dialogs, the B2BUA, routing, presence, metrics, logging, serializing; timers
that fire) is, so the figures are CPU per call of the bridge minus the `sendto` syscalls
(7-10% of the daemon's time in the py-spy profile). Same call as sip_cps.py: trunk INVITE
to a round-robin line of --users desk phones, phone answers 200 at once, ACK, BYE, 200.

`--profile calls` (or `registrations`) prints cProfile's top functions for that part,
profiled only while the bridge runs. It asserts nothing; it prints per-call figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import io
import pstats
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bridge.config import Settings
from bridge.context import build_context
from bridge.daemon import tune_garbage_collector
from bridge.directory.loader import load_directory
from bridge.observability.logging import configure_logging
from bridge.sip.digest import authorize
from bridge.sip.service import MetricsCounters
from bridge.sip.transport import SipEndpoint

REALM = "bench.test"
LINE = "+15550100"
TRUNK = ("127.0.0.1", 5070)
REG_USER = ("registrar-bench", "80000", "pw-80000")


def ha1(user: str, password: str) -> str:
    return hashlib.md5(f"{user}:{REALM}:{password}".encode()).hexdigest()


def bench_directory(users: int) -> dict[str, Any]:
    phones = [(f"ph{i:04d}", f"7{i:04d}", f"pw-7{i:04d}") for i in range(users)]

    def user(uid: str, username: str, password: str) -> dict[str, Any]:
        return {
            "id": uid,
            "name": f"Desk {username}",
            "answer_by": "ip_phone",
            "sip": {"username": username, "ha1_md5": ha1(username, password)},
        }

    return {
        "timezone": "UTC",
        "users": [
            {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
            *(user(*p) for p in phones),
            user(*REG_USER),
        ],
        "ring_groups": [
            {
                "id": "bench",
                "name": "Bench",
                "layers": [
                    {
                        "strategy": "round_robin",
                        "members": [p[0] for p in phones],
                        "timeout_seconds": 20,
                        "ring_each_seconds": 10,
                    }
                ],
                "fallback": {"action": "hangup"},
            }
        ],
        "lines": [{"number": LINE, "name": "Bench", "route_to": {"ring_group": "bench"}}],
    }


class Wire:
    """The UDP socket, as a list of (datagram, destination)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        pass

    def take(self) -> list[tuple[bytes, tuple[str, int]]]:
        sent, self.sent = self.sent, []
        return sent


class Meter:
    """Time spent inside the endpoint (and, with a profiler, a profile of only that)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.profiler: cProfile.Profile | None = None

    def wrap(self, fn: Callable[..., None]) -> Callable[..., None]:
        def timed(*args: Any) -> None:
            profiler = self.profiler
            if profiler is not None:
                profiler.enable()
            started = time.process_time()
            fn(*args)
            self.seconds += time.process_time() - started
            if profiler is not None:
                profiler.disable()

        return timed


_BRANCH = re.compile(rb"branch=([^;,\s]+)")


def header_lines(data: bytes, name: bytes) -> list[bytes]:
    prefix = name.lower() + b":"
    return [line for line in data.split(b"\r\n") if line.lower().startswith(prefix)]


def respond(data: bytes, status: str, to_tag: bytes | None, extra: bytes = b"",
            body: bytes = b"") -> bytes:
    """A UAS's response to a request, as SIPp's [last_*] would build it."""
    lines = [b"SIP/2.0 " + status.encode()]
    lines += header_lines(data, b"Via")
    lines += header_lines(data, b"From")
    to = header_lines(data, b"To")[0]
    if to_tag is not None and b";tag=" not in to:
        to += b";tag=" + to_tag
    lines.append(to)
    lines += header_lines(data, b"Call-ID")
    lines += header_lines(data, b"CSeq")
    if extra:
        lines.append(extra)
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


SDP = (
    b"v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def trunk_invite(n: int, bridge: str) -> bytes:
    body = SDP.replace(b"phone", b"trunk")
    return (
        f"INVITE sip:{LINE}@{bridge} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-t{n};rport\r\n"
        f'From: "Caller" <sip:+15551230000@127.0.0.1:5070>;tag=trunk{n}\r\n'
        f"To: <sip:{LINE}@{bridge}>\r\n"
        f"Call-ID: call-{n}@127.0.0.1\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:+15551230000@127.0.0.1:5070;transport=udp>\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def trunk_in_dialog(method: str, cseq: int, n: int, to: bytes, target: str) -> bytes:
    return (
        f"{method} {target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-t{n}-{method.lower()};rport\r\n"
        f'From: "Caller" <sip:+15551230000@127.0.0.1:5070>;tag=trunk{n}\r\n'
    ).encode() + to + (
        f"\r\nCall-ID: call-{n}@127.0.0.1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def register(username: str, port: int, n: int, bridge: str, auth: bytes = b"",
             cseq: int = 1) -> bytes:
    return (
        f"REGISTER sip:{bridge} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-r{n}-{cseq};rport\r\n"
        f"From: <sip:{username}@{REALM}>;tag=reg{n}\r\n"
        f"To: <sip:{username}@{REALM}>\r\n"
        f"Call-ID: reg-{n}@127.0.0.1\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{username}@127.0.0.1:{port}>\r\n"
        "Expires: 3600\r\n"
        "Max-Forwards: 70\r\n"
    ).encode() + auth + b"Content-Length: 0\r\n\r\n"


class Bench:
    def __init__(self, users: int, folder: Path) -> None:
        (folder / "directory.yaml").write_text(yaml.safe_dump(bench_directory(users)))
        settings = Settings(
            sip={"host": "127.0.0.1", "port": 5060, "realm": REALM, "keepalive_seconds": 0,
                 "trunk_allow": ["127.0.0.0/8"]},
            auth={"jwt_secret": "bench-secret-0123456789abcdef"},
            directory={"path": str(folder / "directory.yaml")},
            log={"level": "warning", "format": "json"},
        )
        configure_logging("warning", "json", cache=True)  # as `bridge run`
        self.users = users
        self.ctx = build_context(settings, load_directory(settings.directory_path))
        self.meter = Meter()
        self.wire = Wire()

    async def start(self) -> None:
        sip = self.ctx.sip
        assert sip is not None
        self.endpoint = SipEndpoint("127.0.0.1", 0, sip,
                                    counters=MetricsCounters(self.ctx.metrics))
        await sip.start(self.endpoint)
        udp = self.endpoint._udp
        assert udp is not None and udp.transport is not None
        udp.transport.close()
        udp.transport = self.wire  # type: ignore[assignment]
        self.address = f"127.0.0.1:{self.endpoint.port}"
        self.feed = self.meter.wrap(self.endpoint._datagram)
        self.endpoint._fire = self.meter.wrap(self.endpoint._fire)  # type: ignore[method-assign]
        tune_garbage_collector()  # as the daemon does once it is listening

    async def stop(self) -> None:
        assert self.ctx.sip is not None
        await self.ctx.sip.stop()

    def register_phone(self, index: int, username: str, password: str, port: int) -> bool:
        self.feed(register(username, port, index, self.address), ("127.0.0.1", port))
        (challenge, _), = self.wire.take()
        offers = [v.decode() for v in header_lines(challenge, b"WWW-Authenticate")]
        offers = [v.split(":", 1)[1].strip() for v in offers]
        answer = authorize(401, offers, method="REGISTER", uri=f"sip:{self.address}",
                           username=username, password=password)
        assert answer is not None, challenge
        auth = f"{answer[0]}: {answer[1]}\r\n".encode()
        self.feed(register(username, port, index, self.address, auth, 2), ("127.0.0.1", port))
        (ok, _), = self.wire.take()
        return ok.startswith(b"SIP/2.0 200")

    def call(self, n: int) -> bool:
        feed, wire = self.feed, self.wire
        feed(trunk_invite(n, self.address), TRUNK)
        invite = next((d, a) for d, a in wire.take() if d.startswith(b"INVITE"))
        data, phone = invite
        feed(respond(data, "200 OK", b"ph%d" % n,
                     b"Contact: <sip:phone@%s:%d>" % (phone[0].encode(), phone[1])
                     + b"\r\nContent-Type: application/sdp", SDP), phone)
        answered = [d for d, _ in wire.take() if d.startswith(b"SIP/2.0 200")]
        if not answered:
            return False
        to = header_lines(answered[0], b"To")[0]
        contact = re.search(rb"<([^>]+)>", header_lines(answered[0], b"Contact")[0])
        assert contact is not None
        target = contact.group(1).decode()
        feed(trunk_in_dialog("ACK", 1, n, to, target), TRUNK)
        feed(trunk_in_dialog("BYE", 2, n, to, target), TRUNK)
        sent = wire.take()
        bye = [d for d, _ in sent if d.startswith(b"BYE")]
        if not bye:
            return False
        feed(respond(bye[0], "200 OK", None), phone)
        # The bridge answers the caller's BYE at once or after the phone's 200: either way
        # one 200 for the BYE reaches the trunk.
        sent += wire.take()
        return any(a == TRUNK and d.startswith(b"SIP/2.0 200") and b" BYE\r\n" in d
                   for d, a in sent)


def profile_report(profiler: cProfile.Profile, top: int = 30) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    by_file: dict[str, float] = {}
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        name = filename.split("/src/")[-1] if "/src/" in filename else Path(filename).name
        by_file[name] = by_file.get(name, 0.0) + tottime
    total = sum(by_file.values()) or 1.0
    out.write("self time by file:\n")
    for name, seconds in sorted(by_file.items(), key=lambda item: -item[1])[:25]:
        out.write(f"  {100 * seconds / total:5.1f}%  {name}\n")
    return out.getvalue()


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args.users, Path(tmp))
        await bench.start()
        try:
            for i in range(args.users):
                if not bench.register_phone(i, f"7{i:04d}", f"pw-7{i:04d}", 20000 + i):
                    print("a phone failed to register", file=sys.stderr)
                    return 1
            gc.collect()
            # Calls: warm up (the routing memo, first-call imports), then measure in rounds.
            for n in range(200):
                bench.call(-1 - n)
            per_call: list[float] = []
            failed = 0
            rounds = 7
            calls_per_round = max(1, args.calls // rounds)
            if args.profile == "calls":
                bench.meter.profiler = cProfile.Profile()
            n = 0
            for _ in range(rounds):
                bench.meter.seconds = 0.0
                for _ in range(calls_per_round):
                    failed += not bench.call(n)
                    n += 1
                    if n % 64 == 0:
                        await asyncio.sleep(0)  # let due timers run, as the loop would
                per_call.append(bench.meter.seconds / calls_per_round * 1e3)
            profile = bench.meter.profiler
            bench.meter.profiler = None
            print(f"calls: {n} in {rounds} rounds, failed {failed}; "
                  f"live after: {len(bench.ctx.calls)}")
            print(f"  CPU in the bridge per call: median {statistics.median(per_call):.3f} ms, "
                  f"min {min(per_call):.3f} "
                  f"(rounds {', '.join(f'{v:.3f}' for v in per_call)})"
                  f" -> one core's ceiling about {1e3 / statistics.median(per_call):,.0f} calls/s"
                  " before sendto")
            if profile is not None:
                print(profile_report(profile))

            # Registrations: one user, a new Call-ID each (as sip_cps.py's SIPp loop).
            if args.profile == "registrations":
                bench.meter.profiler = cProfile.Profile()
            per_reg: list[float] = []
            reg_failed = 0
            regs_per_round = max(1, args.registrations // rounds)
            r = 100000
            for _ in range(rounds):
                bench.meter.seconds = 0.0
                for _ in range(regs_per_round):
                    reg_failed += not bench.register_phone(r, REG_USER[1], REG_USER[2], 30000)
                    r += 1
                per_reg.append(bench.meter.seconds / regs_per_round * 1e3)
            print(f"registrations: {r - 100000} (REGISTER, 401, REGISTER with digest, 200), "
                  f"failed {reg_failed}")
            print(f"  CPU in the bridge per registration: median "
                  f"{statistics.median(per_reg):.3f} ms, min {min(per_reg):.3f} "
                  f"(rounds {', '.join(f'{v:.3f}' for v in per_reg)})"
                  f" -> about {1e3 / statistics.median(per_reg):,.0f}/s before sendto")
            if bench.meter.profiler is not None:
                print(profile_report(bench.meter.profiler))
        finally:
            await bench.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--registrations", type=int, default=4000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--profile", choices=["calls", "registrations"])
    parser.add_argument("--no-gc", action="store_true", help="disable the garbage collector")
    args = parser.parse_args()
    if args.no_gc:
        gc.disable()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
