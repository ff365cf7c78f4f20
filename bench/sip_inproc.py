"""CPU per call and per registration inside the bridge's SIP stack, without sockets or SIPp.

    .venv/bin/python bench/sip_inproc.py [--calls 4000] [--registrations 4000]
                                         [--users 100] [--profile calls|registrations]
                                         [--media embedded|none] [--events] [--rate N]

`bench/sip_cps.py` is the real benchmark (SIPp peers, real sockets, the whole daemon); its
figures move with whatever else runs on the two shared cores. This one is for iterating on
the hot path: `sim.phones.inproc.InprocBridge` builds the same application the daemon
builds (`build_context`, the `SipService`, a `SipEndpoint` with its metrics counters; here
with logging at warning and the daemon's garbage-collector tuning) and feeds datagrams
straight into `SipEndpoint._datagram`, with the UDP socket's `sendto` replaced by a list.
The peers (the trunk, 100 desk phones, one registering user) are scripted here and their
work is not counted: only the time spent inside the endpoint (parsing,
transactions, dialogs, the B2BUA, routing, presence, metrics, logging, serializing; timers
that fire) is, so the figures are CPU per call of the bridge minus the `sendto` syscalls
(7-10% of the daemon's time in the py-spy profile). Same call as sip_cps.py: trunk INVITE
to a round-robin line of --users desk phones, phone answers 200 at once, ACK, BYE, 200; its
audio anchored in the embedded media engine as shipped, or not (`--media none`).

`--events` starts the durable outbox and its worker process as the daemon does: the events
each call makes and hands over are counted, the worker's own CPU is not.

`--profile calls` (or `registrations`) prints cProfile's top functions for that part,
profiled only while the bridge runs. It asserts nothing; it prints per-call figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `sim` lives at the repository root

from sim.phones.inproc import (  # noqa: E402
    SDP,
    TRUNK,
    InprocBridge,
    contact_uri,
    desk_user,
    header,
    respond,
    trunk_in_dialog,
    trunk_invite,
)

from bridge.daemon import tune_garbage_collector  # noqa: E402
from bridge.observability.logging import configure_logging  # noqa: E402

LINE = "+15550100"
REG_USER = ("registrar-bench", "80000", "pw-80000")


def bench_directory(users: int) -> dict[str, Any]:
    phones = [(f"ph{i:04d}", f"7{i:04d}", f"pw-7{i:04d}") for i in range(users)]
    return {
        "timezone": "UTC",
        "users": [
            {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
            *(desk_user(*p) for p in phones),
            desk_user(*REG_USER),
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


class Bench:
    def __init__(self, users: int, media: str = "embedded", events: bool = False) -> None:
        configure_logging("warning", "json", cache=True)  # as `bridge run`
        self.bridge = InprocBridge(bench_directory(users), media={"engine": media})
        self.ctx = self.bridge.ctx
        self.meter = Meter()
        self.events = events

    async def start(self) -> None:
        bridge = self.bridge
        # A fake clock: after each round it is moved past every transaction timer (Timer J, K,
        # L, M: up to 64*T1), so the work of ending each call's transactions is counted too, as
        # the daemon pays it.
        await bridge.start(fake_time=True)
        assert bridge.endpoint is not None
        bridge.feed = self.meter.wrap(bridge.feed)  # type: ignore[method-assign]
        bridge.endpoint._fire = self.meter.wrap(bridge.endpoint._fire)  # type: ignore[method-assign]
        if self.events:  # the outbox and its worker process, as the daemon starts them
            events = self.ctx.events
            assert events is not None
            await events.start()
            # the hand-over to the worker runs on a timer of its own: counted too
            outbox = events.outbox
            outbox._send = self.meter.wrap(outbox._send)  # type: ignore[method-assign]
        tune_garbage_collector()  # as the daemon does once it is listening

    async def stop(self) -> None:
        if self.events and self.ctx.events is not None:
            await self.ctx.events.stop()
        await self.bridge.stop()

    async def drain(self) -> None:
        """Move the clock past every timer the round's transactions armed (64*T1 = 32 s)."""
        await self.bridge.advance(40.0, step=1.0)
        self.bridge.take()

    def register_phone(self, index: int, username: str, password: str, port: int) -> bool:
        return self.bridge.register_phone(username, password, port, index)

    def call(self, n: int) -> bool:
        bridge = self.bridge
        bridge.feed(trunk_invite(n, LINE, bridge.address), TRUNK)
        data, phone = next((d, a) for d, a in bridge.take() if d.startswith(b"INVITE"))
        contact = b"Contact: <sip:phone@%s:%d>" % (phone[0].encode(), phone[1])
        bridge.feed(
            respond(
                data, "200 OK", b"ph%d" % n, contact + b"\r\nContent-Type: application/sdp", SDP
            ),
            phone,
        )
        answered = [d for d, _ in bridge.take() if d.startswith(b"SIP/2.0 200")]
        if not answered:
            return False
        to, target = header(answered[0], "To") or "", contact_uri(answered[0])
        bridge.feed(trunk_in_dialog("ACK", 1, n, to, target), TRUNK)
        bridge.feed(trunk_in_dialog("BYE", 2, n, to, target), TRUNK)
        sent = bridge.take()
        bye = [d for d, _ in sent if d.startswith(b"BYE")]
        if not bye:
            return False
        bridge.feed(respond(bye[0], "200 OK"), phone)
        # The bridge answers the caller's BYE at once or after the phone's 200: either way
        # one 200 for the BYE reaches the trunk.
        sent += bridge.take()
        return any(
            a == TRUNK and d.startswith(b"SIP/2.0 200") and b" BYE\r\n" in d for d, a in sent
        )


def profile_report(profiler: cProfile.Profile, top: int = 60) -> str:
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
    bench = Bench(args.users, args.media, args.events)
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
                if args.rate and n % 50 == 0:
                    # The clock moves as at `rate` calls/s: timers fire as they come due, and
                    # the transactions of the last 64*T1 stay live, as in the daemon.
                    await bench.bridge.advance(50 / args.rate, step=50 / args.rate)
            if not args.rate:
                await bench.drain()
            per_call.append(bench.meter.seconds / calls_per_round * 1e3)
        profile = bench.meter.profiler
        bench.meter.profiler = None
        print(f"calls: {n} in {rounds} rounds, failed {failed}; live after: {len(bench.ctx.calls)}")
        print(
            f"  CPU in the bridge per call: median {statistics.median(per_call):.3f} ms, "
            f"min {min(per_call):.3f} "
            f"(rounds {', '.join(f'{v:.3f}' for v in per_call)})"
            f" -> one core's ceiling about {1e3 / statistics.median(per_call):,.0f} calls/s"
            " before sendto"
        )
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
                if args.reg_rate and r % 50 == 0:
                    await bench.bridge.advance(50 / args.reg_rate, step=50 / args.reg_rate)
            if not args.reg_rate:
                await bench.drain()
            per_reg.append(bench.meter.seconds / regs_per_round * 1e3)
        print(
            f"registrations: {r - 100000} (REGISTER, 401, REGISTER with digest, 200), "
            f"failed {reg_failed}"
        )
        print(
            f"  CPU in the bridge per registration: median "
            f"{statistics.median(per_reg):.3f} ms, min {min(per_reg):.3f} "
            f"(rounds {', '.join(f'{v:.3f}' for v in per_reg)})"
            f" -> about {1e3 / statistics.median(per_reg):,.0f}/s before sendto"
        )
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
    parser.add_argument(
        "--rate",
        type=float,
        default=0,
        help="move the fake clock as at this many calls/s, so the daemon's live state (every "
        "transaction of the last 32 s) is there; 0 (default): drain after each round",
    )
    parser.add_argument(
        "--reg-rate",
        type=float,
        default=0,
        help="the same for registrations (registrations/s)",
    )
    parser.add_argument(
        "--media",
        choices=["embedded", "none"],
        default="embedded",
        help="the media engine: embedded (as shipped: every call's audio anchored) or none "
        "(signalling only, SDP end to end)",
    )
    parser.add_argument(
        "--events",
        action="store_true",
        help="the durable outbox on, as the daemon runs it (its worker process is not counted; "
        "the events made and handed to it are)",
    )
    parser.add_argument("--profile", choices=["calls", "registrations"])
    parser.add_argument("--no-gc", action="store_true", help="disable the garbage collector")
    args = parser.parse_args()
    if args.no_gc:
        gc.disable()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
