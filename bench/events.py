"""The event outbox and its webhooks (issue 17): what the outbox persists, what it costs the
calls, what the dispatcher delivers.

    .venv/bin/python bench/events.py [--events 30000] [--repeat 3] [--members 10]
                                     [--big-members 100] [--rate 500] [--seconds 5]
                                     [--fallback-rates 200,100] [--modes off,store,on]
                                     [--users 100] [--deliveries 6000] [--concurrency 8,32]
                                     [--sections 1,2,3] [--quick] [--json FILE] [--keep]
                                     [--no-pin] [--split]

Everything runs on loopback, on free ports, bounded in time (about 3 minutes with the
defaults when events on cannot keep up with --rate, under 30 s with `--quick`; no new rate is
tried after --budget seconds of section 2), and every process it starts is stopped at the end
by its process group id. Three sections:

1. **Outbox persistence**, in this process (on uvloop, as the daemon): --events call events
   made as the daemon makes them (per answered call: `call.received`, `call.routed` of the
   plan the routing engine makes for a --members-member round-robin group, by the daemon's
   `routed_payload` (before 2026-12-07 a hand-made, heavier payload with every member's
   decision and name: 2.4 times the bytes at 10 members, 3.2 at 100), `call.layer_ringing`,
   `call.answered` and `call.ended`
   by `from_call_record` of the runner's `CallEventRecord`s, `leg.ended`; the shapes of the
   daemon's payloads), appended to a `bridge.events.outbox.Outbox` made as `EventsService`
   makes it (batches of up to 2,000, one writer thread, WAL, the call history derived in each
   batch) in chunks of 200 per loop turn, then `flush()`: events per second from the first
   append to the return of `flush`, the batches and their average size, the process's CPU
   per event, and the event loop's lag meanwhile (a ticker task sleeping 1 ms and noting how
   late it wakes; its figure on an idle loop is printed first). Once with no endpoint, once
   with one webhook endpoint (each event then also queues a delivery row in the same
   transaction), each --repeat times on a new database, after one run not counted. Then a
   paced run: one endpoint, the events appended at the rate section 2 makes them (--rate
   calls/s x 6) as they come: the batch sizes, append -> committed, the loop lag at that
   rate. Then one run with a --big-members group (section 2's directory). Also the cost of
   making an event (on the loop, on the call's path, in the daemon). Target: >= 20,000
   events/s.
2. **Call set-up with events on and off**: `bridge run` with SIP (log level warning, OPTIONS
   keepalives off, the trunk allowed from 127.0.0.0/8) and a directory of --users desk phones
   in one round-robin ring group (bench/sip_cps.py's: one phone rings per call), the phones
   being SIPp UAS processes (bench/sipp/register.xml, phone_uas.xml), the trunk a SIPp UAC
   (bench/sipp/trunk_uac.xml: INVITE, 200, ACK, 20 ms, BYE) at a rate for --seconds, each
   bridge after a warm-up of 100 calls at 50/s. Three modes, each on its own bridge and
   phones: **on**, the outbox in a file of the work folder and one `[[events.endpoints]]` (a
   small HTTP receiver in a child process that answers 200 and checks one signature in 20
   with `standardwebhooks`); **store**, the outbox and no endpoint (what the outbox alone
   costs); **off**: the same settings, but `[events] outbox_path` under a regular file, so
   the outbox cannot be opened, and the events service logs `outbox_unavailable` and stays
   off (`EventsService.start`; /readyz then says why, the SIP path does not look at it).
   There is no other "off" switch. "On" runs first at --rate, then, while it fails, at each
   lower --fallback-rates on a new bridge (a step it could not keep up with leaves a backlog
   of deliveries), until a step passes; "off" and "store" then run at that rate and at
   --rate, on one bridge each (the lower rate first). Set-up = INVITE sent -> 200 received,
   per call: from kernel timestamps of the trunk's packets (an AF_PACKET socket on `lo` with
   a BPF filter on the trunk's port; needs root or CAP_NET_RAW, otherwise SIPp's own
   response times are used, which come in steps of its clock, 4 ms here); SIPp's p50 / p99
   and the bridge's `bridge_call_setup_seconds{path="sip"}` (mean, and the bucket holding the
   p99) are printed too. Also: failed calls, retransmissions, the bridge's CPU per call, the
   events it wrote (`bridge_events_written_total`, and rows in the outbox), events per call,
   the deliveries the receiver had when the calls ended and how long the rest took. A step
   passes with zero failed calls at >= 95% of the asked rate. Target: set-up p99 on within 1
   ms of off at 500 calls/s. With two cores or more, the bridge runs alone on the first
   core; SIPp, the receiver and this script on the others (`--no-pin`: no affinity).
   `--split`: a second sniffer on the bridge's own port splits each set-up into the bridge's
   share (the trunk's INVITE in -> ours to the phone out; the phone's 200 in -> ours to the
   trunk out) and the phone's (INVITE -> 200), the legs paired by order (`SplitSniffer`).
3. **Delivery throughput**, in this process: --deliveries stored events (the same mix) of
   1,000-odd calls queued for one endpoint, then `WebhookDispatcher` (the default
   `DeliveryPolicy`, and --concurrency values: 8 is the default) delivers them to an aiohttp
   receiver in a child process (on the other core) that verifies every signature with
   `standardwebhooks`: deliveries per second, this process's CPU per delivery, the loop's
   lag, duplicates, bad signatures.

It prints figures and the ratio to each target; it asserts nothing (the machine is shared:
whatever else runs on it shows up in the figures). `--json FILE` writes every figure.
`--quick`: a smoke run (a few thousand events; on and off at 20 calls/s with 20 users; 300
deliveries) for tests/events/test_bench_events.py; section 2 is skipped with a line saying so
when `sipp` is not installed (Debian sip-tester; `make test` installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bridge.calls.events import (
    CallAnswered,
    CallEnded,
    CallEventRecord,
    CallOutcome,
    CallRinging,
    EndCause,
)
from bridge.directory.loader import build_directory
from bridge.events.model import (
    StoredEvent,
    call_event,
    from_call_record,
    new_event_id,
    plain,
)
from bridge.events.model import routed_payload as daemon_routed_payload
from bridge.events.outbox import Endpoint, Outbox
from bridge.events.webhooks import DeliveryPolicy, WebhookDispatcher
from bridge.presence.model import ALL_CHANNELS, Channel, FixedPresence, UserPresence
from bridge.routing.engine import plan_route
from bridge.routing.model import CallRequest, rotation_key

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # `sim` lives at the repository root
from sim.local import free_port  # noqa: E402

import sip_cps  # noqa: E402  (bench/sip_cps.py: its phones, SIPp files and helpers)
from sip_cps import (  # noqa: E402
    CLK_TCK,
    LINE,
    REG_USER,
    Bridge,
    Processes,
    bench_directory,
    code_line,
    fmt,
    inside_setup,
    machine_lines,
    percentile,
    phone_users,
    proc_ticks,
    start_phones,
    uvloop_line,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # (tests/events/receiver.py's)
TARGET_EVENTS_PER_S = 20_000.0
TARGET_SETUP_DIFF_MS = 1.0
TARGET_RATE = 500
EVENTS_PER_CALL = 6  # of an answered SIP call: received, routed, layer_ringing, answered, ...
PASS_RATE_SHARE = 0.95


def ms(seconds: float | None, spec: str = ".2f") -> str:
    return "-" if seconds is None else f"{seconds * 1000:{spec}} ms"


def new_loop() -> asyncio.AbstractEventLoop:
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def loop_name() -> str:
    try:
        import uvloop

        return f"uvloop {uvloop.__version__}"
    except ImportError:
        return "asyncio's default loop"


class OtherLoad:
    """The share of the machine's CPU that processes other than this one and its children
    used between `start` and `stop` (/proc/stat's busy time minus this process tree's: its
    live descendants, and the children it has reaped). Other work skews every figure."""

    def start(self) -> OtherLoad:
        self.total, self.mine, self.at = self._busy(), self._mine(), time.monotonic()
        return self

    def stop(self) -> float | None:
        elapsed = time.monotonic() - self.at
        if elapsed <= 0:
            return None
        others = (self._busy() - self.total) - (self._mine() - self.mine)
        return max(0.0, others / CLK_TCK / elapsed / (os.cpu_count() or 1))

    @staticmethod
    def _busy() -> int:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            return sum(fields[:3]) + sum(fields[5:8])  # user nice system, irq softirq steal
        return 0

    @staticmethod
    def _mine() -> int:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
            reaped = int(fields[13]) + int(fields[14])  # cutime + cstime
            return sip_cps.tree_ticks(os.getpid()) + reaped
        return 0


def other_share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


# -- the events, as the daemon makes them ------------------------------------------------------
class BenchRouting:
    """A line to a round-robin group of `members` desk-phone users, everyone available: the
    daemon's routing engine plans each call (its pointer moves on, as in the daemon) and the
    daemon's own `routed_payload` makes `call.routed` from the plan."""

    def __init__(self, members: int) -> None:
        users = [
            {"id": f"ph{n:04d}", "name": f"Desk 7{n:03d}", "answer_by": "ip_phone"}
            for n in range(members)
        ]
        self.directory = build_directory(
            {
                "timezone": "UTC",
                "users": users,
                "ring_groups": [
                    {
                        "id": "bench",
                        "name": "Bench",
                        "layers": [
                            {"strategy": "round_robin", "members": [u["id"] for u in users]}
                        ],
                    }
                ],
                "lines": [{"number": LINE, "name": "Bench", "route_to": {"ring_group": "bench"}}],
            }
        )
        self.presence = FixedPresence(by_user={}, default=UserPresence(reachable=ALL_CHANNELS))
        self.key = rotation_key("bench", 0)
        self.members = members

    def payload(self, call_id: str, at: datetime, index: int) -> dict[str, Any]:
        call = CallRequest(call_id=call_id, line=LINE, user=None, seed=index)
        plan = plan_route(self.directory, self.presence, call, at, {self.key: index % self.members})
        return daemon_routed_payload(plan)


_ROUTING: dict[int, BenchRouting] = {}


def routed_payload(call_id: str, at: datetime, members: int, first: int) -> dict[str, Any]:
    """`call.routed` as the daemon stores it (`bridge.events.model.routed_payload` of the
    plan the routing engine makes for a round-robin group of `members`)."""
    routing = _ROUTING.get(members)
    if routing is None:
        routing = _ROUTING[members] = BenchRouting(members)
    return routing.payload(call_id, at, first)


def stored(kind: str, call_id: str, at: datetime, payload: dict[str, Any]) -> StoredEvent:
    return StoredEvent(
        id=new_event_id(int(at.timestamp() * 1000)),
        type=kind,
        occurred_at=at,
        payload=plain(payload),
        call_id=call_id,
    )


def call_events(index: int, members: int, start: datetime) -> list[StoredEvent]:
    """The six events of one answered SIP call, as the daemon stores them."""
    call_id = f"sip-{index:012x}"
    at = start + timedelta(milliseconds=2 * index)
    user = f"ph{index % members:04d}"
    leg = f"{call_id}/1"
    answered = at + timedelta(milliseconds=5)
    ended = answered + timedelta(milliseconds=40)

    def record(when: datetime, event: Any) -> StoredEvent:
        return from_call_record(CallEventRecord(call_id, "sip", when, event))

    received = {"path": "sip", "line": LINE, "line_name": "Bench", "caller": "+15551230000"}
    end = record(ended, CallEnded(EndCause.CALLER_HANGUP, CallOutcome.ANSWERED))
    end.payload["wait_seconds"] = 0.005
    end.payload["talk_seconds"] = 0.04
    return [
        stored("call.received", call_id, at, received),
        call_event("call.routed", call_id, at, routed_payload(call_id, at, members, index)),
        record(at, CallRinging(0, (user,))),
        record(answered, CallAnswered(user, leg, Channel.IP_PHONE)),
        stored(
            "leg.ended",
            call_id,
            ended,
            {
                "path": "sip",
                "leg_id": leg,
                "user_id": user,
                "via": "ip_phone",
                "number": None,
                "layer_index": 0,
                "fallback_depth": 0,
                "state": "ended",
                "reason": "caller_hangup",
                "failure": None,
                "forward": False,
            },
        ),
        end,
    ]


def make_events(count: int, members: int) -> tuple[list[StoredEvent], float]:
    """`count` events (whole calls), and the seconds it took to make them."""
    start = datetime.now(UTC)
    events: list[StoredEvent] = []
    began = time.perf_counter()
    index = 0
    while len(events) < count:
        events.extend(call_events(index, members, start))
        index += 1
    return events[:count], time.perf_counter() - began


def has_history() -> bool:
    import importlib.util

    return importlib.util.find_spec("bridge.events.history") is not None


def daemon_outbox(path: Path) -> Outbox:
    """An outbox made as `EventsService` makes it: with the call history derived in each
    batch's transaction when this version has it (bridge.events.history)."""
    try:
        from bridge.events import history
    except ImportError:
        return Outbox(path)
    deriver = history.Deriver() if hasattr(history, "Deriver") else history.derive
    return Outbox(path, derive=deriver, schema=history.SCHEMA)


@contextlib.contextmanager
def daemon_gc() -> Iterator[None]:
    """The daemon's garbage collector policy (`bridge.daemon.tune_garbage_collector`: what
    exists is frozen, young collections every 5,000 allocations and four times a second, the old
    generation on a schedule) while the block runs: the events made for the run are frozen with
    the rest, as the daemon's start-up objects are, so the collector does not walk them."""
    from bridge.daemon import tune_garbage_collector

    policy = tune_garbage_collector()
    try:
        yield
    finally:
        if policy is not None:
            policy.stop()


# -- the event loop's lag -------------------------------------------------------------------
class LagTicker:
    """A task that sleeps `period` again and again and notes how late it wakes."""

    def __init__(self, period: float = 0.001) -> None:
        self.period = period
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> LagTicker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.period)
            self.lags.append(max(0.0, time.perf_counter() - before - self.period))

    async def stop(self) -> dict[str, float | None]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return {
            "ticks": len(self.lags),
            "p50": percentile(self.lags, 50),
            "p99": percentile(self.lags, 99),
            "max": max(self.lags) if self.lags else None,
        }


# -- 1. outbox persistence --------------------------------------------------------------------
async def idle_lag(seconds: float) -> dict[str, float | None]:
    ticker = LagTicker().start()
    await asyncio.sleep(seconds)
    return await ticker.stop()


async def persist_burst(
    path: Path, events: list[StoredEvent], endpoints: int, chunk: int = 200
) -> dict[str, Any]:
    """Append every event (`chunk` per loop turn), then `flush`: how long until stored."""
    outbox = await daemon_outbox(path).start()
    try:
        for n in range(endpoints):
            await outbox.save_endpoint(Endpoint(f"bench{n}", "http://127.0.0.1:9/hook", SECRET))
        ticker = LagTicker().start()
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        cpu = time.process_time()
        for i in range(0, len(events), chunk):
            for event in events[i : i + chunk]:
                outbox.append(event)
            await asyncio.sleep(0)
        appended = time.perf_counter()
        await outbox.flush()
        took = time.perf_counter() - started
        cpu = time.process_time() - cpu
        lag = await ticker.stop()
        rows = await outbox.run(
            lambda db: (
                db.execute("SELECT count(*) FROM events").fetchone()[0],
                db.execute("SELECT count(*) FROM deliveries").fetchone()[0],
            )
        )
        return {
            "endpoints": endpoints,
            "events": len(events),
            "written": outbox.written,
            "dropped": outbox.dropped,
            "rows": rows[0],
            "deliveries": rows[1],
            "seconds": took,
            "append_seconds": appended - started,
            "per_s": outbox.written / took if took else None,
            "batches": outbox.batches,
            "avg_batch": outbox.written / outbox.batches if outbox.batches else None,
            "cpu_us_per_event": cpu * 1e6 / len(events) if events else None,
            "lag": lag,
            "db_bytes": outbox.size_bytes(),
        }
    finally:
        await outbox.close()


async def persist_paced(path: Path, events: list[StoredEvent], rate: float) -> dict[str, Any]:
    """One endpoint; the events appended at `rate` per second (every 2 ms, the ones due),
    each batch's commit timed from its events' append."""
    outbox = await daemon_outbox(path).start()
    try:
        await outbox.save_endpoint(Endpoint("bench", "http://127.0.0.1:9/hook", SECRET))
        ticker = LagTicker().start()
        sizes: list[int] = []
        last = 0

        def noted(_: list[str]) -> None:
            nonlocal last
            sizes.append(outbox.written - last)
            last = outbox.written

        outbox.on_stored = noted
        loop = asyncio.get_running_loop()
        began = loop.time()
        sent = 0
        commit_waits: list[float] = []
        waiters: list[asyncio.Task[None]] = []

        async def timed_flush(at: float) -> None:
            await outbox.flush()
            commit_waits.append(time.perf_counter() - at)

        while sent < len(events):
            due = min(len(events), int((loop.time() - began) * rate) + 1)
            if due > sent:
                for event in events[sent:due]:
                    outbox.append(event)
                sent = due
                waiters.append(loop.create_task(timed_flush(time.perf_counter())))
            await asyncio.sleep(0.002)
        await outbox.flush()
        await asyncio.gather(*waiters)
        took = loop.time() - began
        lag = await ticker.stop()
        return {
            "rate": rate,
            "events": len(events),
            "seconds": took,
            "written": outbox.written,
            "batches": outbox.batches,
            "avg_batch": outbox.written / outbox.batches if outbox.batches else None,
            "max_batch": max(sizes) if sizes else None,
            "commit_p50": percentile(commit_waits, 50),
            "commit_p99": percentile(commit_waits, 99),
            "lag": lag,
        }
    finally:
        await outbox.close()


async def section_persist(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    print(
        f"== 1. outbox persistence (in this process, {loop_name()}; the Outbox as the daemon "
        "makes it: batches of up to 2,000, one writer thread, WAL, synchronous=NORMAL"
        + (", call history derived in each batch" if has_history() else "")
        + ")"
    )
    others = OtherLoad().start()
    with daemon_gc():
        figures = await persist_figures(args, folder)
    figures["other_processes_share"] = share = others.stop()
    print(f"   (other processes took {other_share(share)} of the machine's CPU meanwhile)")
    print()
    return figures


async def persist_figures(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    events, made = make_events(args.events, args.members)
    await asyncio.sleep(0.3)  # (a tick of the collector policy: the events are long-lived, old)
    sizes = [len(json.dumps(e.payload, separators=(",", ":"))) for e in events[:600]]
    print(
        f"   {len(events)} events of {len(events) // EVENTS_PER_CALL} answered calls (6 each; "
        f"call.routed with a {args.members}-member group), payload JSON "
        f"{statistics.mean(sizes):.0f} bytes on average (call.routed "
        f"{sizes[1]:,} bytes); making them took {made * 1e6 / len(events):.1f} us per event"
    )
    idle = await idle_lag(1.0 if not args.quick else 0.3)
    print(
        f"   loop lag with nothing to do (the 1 ms ticker's floor): p99 {ms(idle['p99'])}, "
        f"max {ms(idle['max'])}"
    )
    print(
        f"   {'endpoints':>9} {'events':>7} {'events/s':>9} {'batches':>7} {'avg':>6} "
        f"{'cpu/ev':>7} {'lag p99':>9} {'lag max':>9}  {'db':>8}"
    )
    await persist_burst(folder / "persist-warmup.sqlite", events[:4000], 1)  # (not counted)
    runs = []
    for endpoints in (0, 1):
        for n in range(args.repeat):
            run = await persist_burst(folder / f"persist-{endpoints}-{n}.sqlite", events, endpoints)
            runs.append(run)
            print(
                f"   {endpoints:>9} {run['written']:>7} {run['per_s']:>9,.0f} "
                f"{run['batches']:>7} {run['avg_batch']:>6.0f} "
                f"{run['cpu_us_per_event']:>5.1f}us {ms(run['lag']['p99']):>9} "
                f"{ms(run['lag']['max']):>9}  {run['db_bytes'] / 1e6:>5.1f} MB"
                + (f"  dropped {run['dropped']}" if run["dropped"] else ""),
                flush=True,
            )
    summary: dict[str, Any] = {}
    for endpoints in (0, 1):
        rates = [r["per_s"] for r in runs if r["endpoints"] == endpoints]
        summary[endpoints] = statistics.median(rates)
        share = summary[endpoints] / TARGET_EVENTS_PER_S
        print(
            f"   {endpoints} endpoint{'s' if endpoints != 1 else ''}: median "
            f"{summary[endpoints]:,.0f} events/s -> {share:.2f} x target "
            f"({'met' if share >= 1 else 'MISSED'}: >= {TARGET_EVENTS_PER_S:,.0f} events/s)"
        )
    rate = args.rate * EVENTS_PER_CALL
    paced_events = events[: int(rate * args.paced_seconds)]
    paced = await persist_paced(folder / "paced.sqlite", paced_events, rate)
    print(
        f"   paced, 1 endpoint, {rate:,.0f} events/s ({args.rate} calls/s x {EVENTS_PER_CALL}) "
        f"for {paced['seconds']:.1f} s: {paced['batches']} batches, average "
        f"{fmt(paced['avg_batch'])} events (max {paced['max_batch']}), append -> committed "
        f"p50 {ms(paced['commit_p50'])} p99 {ms(paced['commit_p99'])}; loop lag p99 "
        f"{ms(paced['lag']['p99'])}, max {ms(paced['lag']['max'])}"
    )
    big: dict[str, Any] | None = None
    if args.big_members:
        big_events, big_made = make_events(max(600, args.events // 5), args.big_members)
        big_routed = len(json.dumps(big_events[1].payload, separators=(",", ":")))
        big = await persist_burst(folder / "persist-big.sqlite", big_events, 1)
        big["members"], big["made_us_per_event"] = (
            args.big_members,
            big_made * 1e6 / len(big_events),
        )
        print(
            f"   with a {args.big_members}-member group (section 2's directory; call.routed "
            f"{big_routed:,} bytes), 1 endpoint: {big['per_s']:,.0f} events/s, "
            f"{big['cpu_us_per_event']:.1f} us of CPU per event stored, making them "
            f"{big['made_us_per_event']:.1f} us per event (on the loop, in the daemon); "
            f"loop lag p99 {ms(big['lag']['p99'])}, max {ms(big['lag']['max'])}"
        )
    return {
        "big_group": big,
        "made_us_per_event": made * 1e6 / len(events),
        "payload_bytes_avg": statistics.mean(sizes),
        "idle_lag": idle,
        "bursts": runs,
        "median_per_s": {str(k): v for k, v in summary.items()},
        "paced": paced,
    }


# -- the webhook receivers (a child process) -----------------------------------------------------
class ReceiverStats:
    def __init__(self, secret: str, verify_every: int) -> None:
        from standardwebhooks import Webhook

        self.hook = Webhook(secret)
        self.verify_every = verify_every
        self.received = 0
        self.verified = 0
        self.bad = 0
        self.ids: set[str] = set()

    def got(self, body: bytes, headers: dict[str, str]) -> None:
        self.received += 1
        self.ids.add(headers.get("webhook-id", ""))
        if self.received % self.verify_every == 0 or self.received == 1:
            try:
                self.hook.verify(body, headers)
                self.verified += 1
            except Exception:
                self.bad += 1

    def as_json(self) -> bytes:
        return json.dumps(
            {
                "received": self.received,
                "unique": len(self.ids),
                "verified": self.verified,
                "bad": self.bad,
            }
        ).encode()


class RawHook(asyncio.Protocol):
    """HTTP/1.1 keep-alive, just enough of it: a POST's body by its Content-Length, 200 back."""

    def __init__(self, stats: ReceiverStats) -> None:
        self.stats = stats
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            total = end + 4 + int(headers.get("content-length", "0"))
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            assert self.transport is not None
            if lines[0].startswith("GET /stats"):
                payload = self.stats.as_json()
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
                )
                continue
            self.stats.got(body, headers)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


async def serve_receiver(kind: str, verify_every: int) -> None:
    stats = ReceiverStats(SECRET, verify_every)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if kind == "raw":
        server = await loop.create_server(lambda: RawHook(stats), "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        print(f"port {port}", flush=True)
        await stop.wait()
        server.close()
        return
    from aiohttp import web

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        stats.got(raw, {k.lower(): v for k, v in request.headers.items()})
        return web.Response(text="ok")

    async def show(_: web.Request) -> web.Response:
        return web.Response(body=stats.as_json(), content_type="application/json")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", show)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(f"port {site._server.sockets[0].getsockname()[1]}", flush=True)  # type: ignore[union-attr]
    await stop.wait()
    await runner.cleanup()


@dataclass
class Receiver:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as r:
            return json.loads(r.read())


def start_receiver(
    procs: Processes, kind: str, verify_every: int, cpus: set[int] | None
) -> Receiver:
    def affinity() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    process = procs.start(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--role",
            "receiver",
            "--receiver-kind",
            kind,
            "--verify-every",
            str(verify_every),
        ],
        stdout=subprocess.PIPE,
        preexec_fn=affinity,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode().split()
    if len(line) != 2 or line[0] != "port":
        raise SystemExit(f"the webhook receiver did not start ({process.poll()})")
    return Receiver(process, int(line[1]))


# -- 2. call set-up, events on and off -----------------------------------------------------------
class Sniffer:
    """Kernel timestamps of the SIP datagrams sent from or to one UDP port on `lo` (AF_PACKET
    with a BPF filter: the outgoing copy of each, IPv4, UDP, that port, a payload starting
    with `I` or `S`): per Call-ID, the first INVITE and the first 200 to it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.invites: dict[bytes, float] = {}
        self.answers: dict[bytes, float] = {}
        self.packets = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        self.sock.bind(("lo", 0))
        self._filter = self._program(port)
        prog = struct.pack("HL", len(self._filter) // 8, ctypes.addressof(self._filter))
        self.sock.setsockopt(socket.SOL_SOCKET, 26, prog)  # SO_ATTACH_FILTER
        self.sock.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.settimeout(0.2)

    @staticmethod
    def _program(port: int) -> Any:
        """Classic BPF; a jump's offsets count from the next instruction."""

        def op(code: int, jt: int, jf: int, k: int) -> bytes:
            return struct.pack("HBBI", code, jt, jf, k)

        code = [
            op(0x20, 0, 0, 0xFFFFF004),  # 0 A = packet type (SKF_AD_PKTTYPE)
            op(0x15, 0, 15, 4),  # 1 outgoing? else drop
            op(0x28, 0, 0, 12),  # 2 A = ethertype
            op(0x15, 0, 13, 0x800),  # 3 IPv4? else drop
            op(0x30, 0, 0, 23),  # 4 A = IP protocol
            op(0x15, 0, 11, 17),  # 5 UDP? else drop
            op(0x28, 0, 0, 20),  # 6 A = flags and fragment offset
            op(0x45, 9, 0, 0x1FFF),  # 7 a fragment: drop
            op(0xB1, 0, 0, 14),  # 8 X = IP header length
            op(0x48, 0, 0, 14),  # 9 A = source port
            op(0x15, 2, 0, port),  # 10 ours: to 13
            op(0x48, 0, 0, 16),  # 11 A = destination port
            op(0x15, 0, 4, port),  # 12 ours? else drop
            op(0x50, 0, 0, 22),  # 13 A = the payload's first byte
            op(0x15, 1, 0, ord("I")),  # 14 INVITE: accept
            op(0x15, 0, 1, ord("S")),  # 15 SIP/2.0 (a response)? else drop
            op(0x06, 0, 0, 0x40000),  # 16 accept
            op(0x06, 0, 0, 0),  # 17 drop
        ]
        return ctypes.create_string_buffer(b"".join(code), len(code) * 8)

    def start(self) -> Sniffer:
        self._thread = threading.Thread(target=self._run, name="sniffer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, ancillary, _, _ = self.sock.recvmsg(65535, 64)
            except TimeoutError:
                continue
            except OSError:
                return
            stamp = _kernel_stamp(ancillary)
            if stamp is not None:
                self.packets += 1
                self._packet(data, stamp)

    def _packet(self, data: bytes, stamp: float) -> None:
        payload = data[14 + (data[14] & 0x0F) * 4 + 8 :]
        if payload.startswith(b"INVITE "):
            table = self.invites
        elif payload.startswith(b"SIP/2.0 200"):
            table = self.answers
        else:
            return
        head = payload.split(b"\r\n\r\n", 1)[0].lower()
        cseq = _header(head, (b"cseq",))
        if cseq is None or not cseq.endswith(b"invite"):
            return
        call_id = _header(head, (b"call-id", b"i"))
        if call_id is not None and call_id not in table:
            table[call_id] = stamp

    def _close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.sock.close()

    def stop(self) -> list[float]:
        """Set-up times (seconds) of the calls with both an INVITE and its 200."""
        self._close()
        return [self.answers[c] - t for c, t in self.invites.items() if c in self.answers]


def _kernel_stamp(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    """The packet's kernel timestamp (SCM_TIMESTAMPNS), in seconds."""
    for _, kind, value in ancillary:
        if kind == 35:
            sec, nsec = struct.unpack("qq", value[:16])
            return sec + nsec / 1e9
    return None


class SplitSniffer(Sniffer):
    """`--split`: the same kernel timestamps on the bridge's own port, to split a call's
    set-up into the bridge's share and the phone's: the trunk's INVITE in -> the bridge's
    INVITE to the phone out, the phone's 200 in -> the bridge's 200 to the trunk out, and the
    phone's INVITE -> 200 between them. The legs have Call-IDs of their own and nothing in
    them names the other, so they are paired by order: the k-th INVITE that came in (the
    refused ones left out) rang the k-th INVITE that went out (one phone rings per call, and
    one event loop handles them in the order they came)."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.incoming: dict[bytes, float] = {}  # the trunk's INVITEs, by Call-ID
        self.outgoing: dict[bytes, float] = {}  # ours to the phones
        self.answered_in: dict[bytes, float] = {}  # the phones' 200s
        self.answered_out: dict[bytes, float] = {}  # ours to the trunk
        self.refused: set[bytes] = set()  # trunk calls we answered >= 300

    def _packet(self, data: bytes, stamp: float) -> None:
        header_length = (data[14] & 0x0F) * 4
        ours = struct.unpack("!H", data[14 + header_length : 16 + header_length])[0]
        sent = ours == self.port  # (else: sent to us)
        payload = data[14 + header_length + 8 :]
        head = payload.split(b"\r\n\r\n", 1)[0].lower()
        cseq = _header(head, (b"cseq",))
        call_id = _header(head, (b"call-id", b"i"))
        if cseq is None or call_id is None or not cseq.endswith(b"invite"):
            return
        if payload.startswith(b"INVITE "):
            table = self.outgoing if sent else self.incoming
        elif payload.startswith(b"SIP/2.0 200"):
            table = self.answered_out if sent else self.answered_in
        else:
            if (
                sent
                and payload.startswith(b"SIP/2.0 ")
                and payload[8:9] in (b"3", b"4", b"5", b"6")
            ):
                self.refused.add(call_id)
            return
        table.setdefault(call_id, stamp)

    def split(self) -> dict[str, list[float]]:
        """Seconds per call paired: "bridge_invite", "bridge_answer", "phone"."""
        self._close()
        trunk = [c for c in self.incoming if c not in self.refused]  # (in the order they came)
        shares: dict[str, list[float]] = {"bridge_invite": [], "bridge_answer": [], "phone": []}
        for a_leg, b_leg in zip(trunk, self.outgoing, strict=False):
            if a_leg in self.answered_out and b_leg in self.answered_in:
                shares["bridge_invite"].append(self.outgoing[b_leg] - self.incoming[a_leg])
                shares["bridge_answer"].append(self.answered_out[a_leg] - self.answered_in[b_leg])
                shares["phone"].append(self.answered_in[b_leg] - self.outgoing[b_leg])
        return shares


def _header(head: bytes, names: tuple[bytes, ...]) -> bytes | None:
    for name in names:
        at = head.find(b"\n" + name + b":")
        if at >= 0:
            end = head.find(b"\r", at + 1)
            return head[at + len(name) + 2 : end if end >= 0 else None].strip()
    return None


def sniffer_available() -> str | None:
    """None when an AF_PACKET socket can be opened on lo, else why not."""
    try:
        Sniffer(free_port()).stop()
    except (OSError, AttributeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass
class CallRun:
    mode: str
    rate: float
    asked: int
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    achieved: float | None = None
    retransmissions: int = 0
    sipp_rtd: list[float] = field(default_factory=list)  # ms
    wire: list[float] = field(default_factory=list)  # seconds, from kernel timestamps
    split: dict[str, list[float]] = field(default_factory=dict)  # --split: SplitSniffer's
    packets: int = 0
    cpu_ms_per_call: float | None = None
    bridge_mean_ms: float | None = None
    bridge_p99: str = "-"
    events_written: float | None = None  # bridge_events_written_total, all of the run's
    events_rows: int | None = None  # events in the outbox, of the measured calls
    delivered_at_end: int | None = None
    delivered_after: int | None = None
    drain_seconds: float | None = None
    waited: float | None = None
    cpu_ms_with_delivery: float | None = None  # the bridge's CPU until the deliveries ended
    worker_cpu_ms_per_call: float | None = None  # the events worker's (a process of its own)
    others: float | None = None  # other processes' share of the machine during the calls
    receiver: dict[str, int] = field(default_factory=dict)
    live_after: int = 0
    wall: float = 0.0

    @property
    def bad(self) -> int:
        return (
            self.failed
            + max(0, self.attempted - self.succeeded - self.failed)
            + max(0, self.asked - self.attempted)
        )

    @property
    def passed(self) -> bool:
        return (
            self.bad == 0
            and self.achieved is not None
            and self.achieved >= PASS_RATE_SHARE * self.rate
        )

    def setup(self) -> list[float]:
        """Set-up times in seconds: the wire's, else SIPp's."""
        return self.wire if self.wire else [v / 1000 for v in self.sipp_rtd]


def trunk_calls(
    workdir: Path, target: str, rate: float, calls: int, port: int, talk_ms: int
) -> CallRun:
    """One bounded SIPp trunk run (bench/sipp/trunk_uac.xml) from `port`, by sip_cps.py's
    `sipp_uac`."""
    sipp = sip_cps.sipp_uac(
        workdir,
        "trunk_uac.xml",
        target,
        rate,
        calls,
        max(100, int(rate)),
        ["-s", LINE, "-d", str(talk_ms)],
        calls / rate + 20,
        port,
        rtt_freq=min(200, max(1, calls // 10)),
    )
    return CallRun(
        mode="",
        rate=rate,
        asked=calls,
        attempted=sipp.attempted,
        succeeded=sipp.succeeded,
        failed=sipp.failed,
        achieved=sipp.achieved,
        retransmissions=sipp.retransmissions,
        sipp_rtd=sipp.rtd1,
        wall=sipp.wall,
    )


def start_bridge(
    procs: Processes, folder: Path, directory: dict[str, Any], outbox: str, hook: str | None
) -> tuple[Bridge, dict[str, Any]]:
    """`bridge run` (SIP on, events configured: sip_cps.py's `start_bridge`); ready once every
    listener is up (its /readyz may still say 503 for the events alone: that is the "off"
    mode). Also returns that /readyz body."""
    events = f'[events]\noutbox_path = "{outbox}"\n' + (
        f'[[events.endpoints]]\nname = "bench"\nurl = "{hook}"\nsecret = "{SECRET}"\n'
        if hook
        else ""
    )
    seen: dict[str, Any] = {}

    def listening(http: int) -> bool:
        body: dict[str, Any] | None = None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=1) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            with contextlib.suppress(ValueError):
                body = json.loads(exc.read())
        except OSError:
            pass
        if body is None or body.get("missing_listeners") or "events" not in body:
            return False
        seen.update(body)
        return True

    bridge = sip_cps.start_bridge(procs, folder, directory, extra_config=events, ready=listening)
    return bridge, seen


def events_worker(pid: int) -> int | None:
    """The bridge's events worker (`bridge.events.worker`, a child process), if it has one."""
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    if b"bridge.events.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                        return int(child)
    return None


def pin_worker(pid: int) -> str:
    """The events worker on this script's cores (not the call path's): where the system puts
    it when nothing is pinned, since the call path's core is the busy one."""
    worker = events_worker(pid)
    if worker is None:
        return "no events worker (writer in the daemon's process)"
    if sip_cps.SERVER_CPUS is None:
        return f"events worker pid {worker}"
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(worker, cores)
    return f"events worker pid {worker} on {sorted(cores)}"


def outbox_rows(path: Path) -> int | None:
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return None
    finally:
        db.close()


def events_metric(bridge: Bridge) -> float | None:
    return bridge.metric("bridge_events_written_total")


class Stack:
    """A new `bridge run` with events `mode` (off: the outbox cannot be opened; store: the
    outbox, no endpoint; on: the outbox and one endpoint), its registered phones, a warm-up;
    then `step(rate)` as many times as asked. `close` stops its processes."""

    def __init__(self, ctx: Ctx, mode: str, receiver: Receiver) -> None:
        self.ctx, self.mode, self.receiver = ctx, mode, receiver
        args = ctx.args
        ctx.stacks += 1
        self.folder = ctx.folder / f"calls-{ctx.stacks}-{mode}"
        self.folder.mkdir(parents=True)
        if mode == "off":
            blocker = self.folder / "not-a-folder"
            blocker.write_text("a file: the outbox cannot be made under it\n")
            self.outbox = blocker / "events.sqlite"
        else:
            self.outbox = self.folder / "var" / "events.sqlite"
        users = phone_users(args.users)
        self.bridge, readyz = start_bridge(
            ctx.procs,
            self.folder,
            bench_directory(users, [REG_USER]),
            str(self.outbox),
            receiver.url if mode == "on" else None,
        )
        self.phones: list[tuple[subprocess.Popen[bytes], int, Path]] = []
        try:
            self.phones = start_phones(ctx.procs, self.folder, self.bridge, users, args.phone_procs)
            deadline = time.monotonic() + 15
            while self.bridge.metric("bridge_sip_registrations") != len(users):
                if time.monotonic() > deadline:
                    raise SystemExit("the phones did not all register")
                time.sleep(0.1)
            warm = trunk_calls(
                self.folder / "warmup", self.target, 50, args.warmup_calls, free_port(), 20
            )
        except BaseException:
            self.close()
            raise
        pid = self.bridge.process.pid
        worker = pin_worker(pid) if mode != "off" else ""
        self.worker = events_worker(pid)
        where = (
            f"unopenable (/readyz events: {readyz.get('events')!r})"
            if mode == "off"
            else f"{self.outbox.relative_to(ctx.folder)}, "
            + ("1 endpoint" if mode == "on" else "no endpoint")
            + (f", {worker}" if worker else "")
        )
        print(
            f"   {mode}: bridge pid {pid}, outbox {where}; warm-up {warm.succeeded}/"
            f"{warm.asked} ok; {uvloop_line(pid)}",
            flush=True,
        )
        self.steps = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.bridge.sip}"

    def step(self, rate: float) -> CallRun:
        """--seconds of calls at `rate`, and what followed them."""
        args, bridge, receiver, mode = self.ctx.args, self.bridge, self.receiver, self.mode
        if self.steps:
            sip_cps.wait_idle(bridge.process.pid, 20.0)
        self.steps += 1
        time.sleep(0.5)
        rows_before = outbox_rows(self.outbox) or 0
        received_before = receiver.stats()["received"]
        setup_before = bridge.setup_histogram()
        ticks = proc_ticks(bridge.process.pid)
        worker_ticks = proc_ticks(self.worker) if self.worker else None
        calls = max(20, int(rate * args.seconds))
        port = free_port()
        sniffer = Sniffer(port).start() if self.ctx.wire else None
        splitter = SplitSniffer(bridge.sip).start() if self.ctx.wire and args.split else None
        others = OtherLoad().start()
        run = trunk_calls(
            self.folder / f"calls-{rate:g}", self.target, rate, calls, port, args.talk_ms
        )
        ended = time.monotonic()
        run.others = others.stop()
        delivered_now = receiver.stats()["received"] - received_before
        if sniffer is not None:
            time.sleep(0.2)
            run.wire = sniffer.stop()
            run.packets = sniffer.packets
        if splitter is not None:
            run.split = splitter.split()
        run.mode = mode
        time.sleep(0.3)
        run.cpu_ms_per_call = (
            (proc_ticks(bridge.process.pid) - ticks) * 1000 / CLK_TCK / run.attempted
            if run.attempted
            else None
        )
        if worker_ticks is not None and self.worker and run.attempted:
            run.worker_cpu_ms_per_call = (
                (proc_ticks(self.worker) - worker_ticks) * 1000 / CLK_TCK / run.attempted
            )
        run.bridge_mean_ms, run.bridge_p99 = inside_setup(setup_before, bridge.setup_histogram())
        run.live_after = int(bridge.metric("bridge_live_calls") or 0)
        if mode != "off":
            # Until every event of the run was delivered ("on") and bridge_events_written_total
            # (read by the daemon every 5 s) has caught up with the outbox's rows.
            run.delivered_at_end = delivered_now if mode == "on" else None
            wait = args.drain_wait if run.passed else args.drain_wait_failed
            deadline = ended + max(wait if mode == "on" else 0.0, 7.0)
            while True:
                rows = outbox_rows(self.outbox) or 0
                got = receiver.stats()["received"] - received_before
                written = events_metric(bridge)
                drained = mode == "store" or got >= rows - rows_before
                if run.drain_seconds is None and drained and mode == "on":
                    run.drain_seconds = time.monotonic() - ended
                if drained and written is not None and written >= rows:
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            run.events_written, run.events_rows = written, rows - rows_before
            if mode == "on":
                run.delivered_after = got
                run.waited = time.monotonic() - ended
                run.cpu_ms_with_delivery = (
                    (proc_ticks(bridge.process.pid) - ticks) * 1000 / CLK_TCK / run.attempted
                    if run.attempted
                    else None
                )
        run.receiver = receiver.stats()
        if self.steps == 1:
            print(HEAD)
        print(call_row(run), flush=True)
        for line in detail_lines(run, args):
            print(line, flush=True)
        return run

    def close(self) -> None:
        for uas, _, _ in self.phones:
            self.ctx.procs.stop(uas)
        self.ctx.procs.stop(self.bridge.process)


def detail_lines(run: CallRun, args: argparse.Namespace) -> list[str]:
    lines = []
    if run.mode == "on" and run.events_rows:
        delivered = (
            f"all {run.drain_seconds:.1f} s after the calls ended"
            if run.drain_seconds is not None
            else f"{run.delivered_after} by {fmt(run.waited, '.0f')} s after (not all)"
        )
        lines.append(
            f"        deliveries: {run.delivered_at_end} of the step's {run.events_rows} when "
            f"the calls ended, {delivered}; bridge CPU until then "
            f"{fmt(run.cpu_ms_with_delivery, '.3f')} ms per call; receiver {run.receiver}"
        )
    if run.wire and len(run.wire) < run.succeeded:
        lines.append(
            f"        set-up seen on the wire for {len(run.wire)} of {run.succeeded} calls"
        )
    if run.split.get("phone"):
        shares = " / ".join(
            f"{label} p50 {ms(percentile(run.split[key], 50))} p99 "
            f"{ms(percentile(run.split[key], 99))}"
            for key, label in (
                ("bridge_invite", "the bridge: INVITE in -> out"),
                ("bridge_answer", "200 in -> out"),
                ("phone", "the phone: INVITE -> 200"),
            )
        )
        lines.append(f"        {shares} ({len(run.split['phone'])} calls paired)")
    if run.worker_cpu_ms_per_call is not None:
        lines.append(
            f"        events worker CPU {run.worker_cpu_ms_per_call:.3f} ms per call during the "
            "calls (cpu/call is the call path's process alone)"
        )
    if run.mode != "off":
        lines.append(
            f"        bridge_events_written_total {fmt(run.events_written, '.0f')} "
            "(since the bridge started: warm-up and earlier steps included)"
        )
    return lines


HEAD = (
    f"   {'mode':>4} {'rate':>5} {'ok':>6} {'bad':>4} {'got/s':>6} {'p50':>7} {'p99':>7} "
    f"{'p99.9':>7} {'max':>7} {'mean':>7} {'sipp p50/p99':>12} {'in:mean':>8} {'in:p99':>7} "
    f"{'cpu/call':>8} {'events':>7} {'/call':>5} {'other':>5}"
)


def call_row(run: CallRun) -> str:
    setup = run.setup()
    mean = statistics.mean(setup) if setup else None
    sipp = f"{fmt(percentile(run.sipp_rtd, 50), '.0f')}/{fmt(percentile(run.sipp_rtd, 99), '.0f')}"
    per_call = run.events_rows / run.succeeded if run.events_rows and run.succeeded else None
    extra = ""
    if run.retransmissions:
        extra += f"  retrans {run.retransmissions}"
    if run.live_after:
        extra += f"  live after {run.live_after}"
    return (
        f"   {run.mode:>4} {run.rate:>5g} {run.succeeded:>6} {run.bad:>4} "
        f"{fmt(run.achieved, '.0f'):>6} {ms(percentile(setup, 50)):>7} "
        f"{ms(percentile(setup, 99)):>7} {ms(percentile(setup, 99.9)):>7} "
        f"{ms(max(setup) if setup else None):>7} {ms(mean):>7} {sipp:>12} "
        f"{fmt(run.bridge_mean_ms, '.2f'):>5} ms {run.bridge_p99:>7} "
        f"{fmt(run.cpu_ms_per_call, '.3f'):>5} ms {fmt(run.events_rows, 'd'):>7} "
        f"{fmt(per_call, '.1f'):>5} {other_share(run.others):>5}  "
        f"{'pass' if run.passed else 'FAIL'}{extra}"
    ).replace(" ms ms", " ms")


@dataclass
class Ctx:
    args: argparse.Namespace
    procs: Processes
    folder: Path
    started: float
    wire: bool = False
    stacks: int = 0

    def out_of_time(self) -> bool:
        return time.monotonic() - self.started > self.args.budget


def section_calls(ctx: Ctx) -> dict[str, Any]:
    args = ctx.args
    print(
        f"== 2. call set-up with events on and off: SIPp trunk -> bridge (B2BUA) -> "
        f"{args.users} SIPp desk phones (round robin, one rings per call), talk "
        f"{args.talk_ms} ms"
    )
    if shutil.which("sipp") is None:
        print("   skipped: sipp is not installed (Debian: apt-get install sip-tester)")
        print()
        return {"skipped": "sipp is not installed"}
    print("   " + sip_cps.pin_cores(not args.no_pin))
    why_not = sniffer_available()
    ctx.wire = why_not is None
    print(
        "   set-up = INVITE sent -> 200 received, "
        + (
            "from kernel timestamps of the trunk's packets on lo (AF_PACKET)"
            if ctx.wire
            else f"from SIPp's response times (in steps of its clock; no AF_PACKET: {why_not})"
        )
    )
    print(
        '   (in:mean, in:p99: the bridge\'s bridge_call_setup_seconds{path="sip"}, its p99 as '
        "a histogram bucket; cpu/call: the bridge's; events: rows the calls added to the outbox; "
        "other: the machine's CPU other processes took meanwhile)"
    )
    cores = sorted(os.sched_getaffinity(0))
    receiver = start_receiver(ctx.procs, "raw", 20, set(cores))
    print(
        f"   webhook receiver: pid {receiver.process.pid}, {receiver.url} (raw HTTP/1.1, "
        "200 to each POST, every 20th signature checked with standardwebhooks)"
    )
    rates = [args.rate, *[r for r in args.fallback_rates if r < args.rate]]
    runs: list[CallRun] = []
    chosen: float | None = None
    # "on": a new bridge per rate (a step it could not keep up with leaves it a backlog of
    # deliveries), from --rate down until a step passes.
    if "on" in args.modes:
        print("   -- events on: from the top rate down until a step passes (a new bridge each)")
        for n, rate in enumerate(rates):
            if n and ctx.out_of_time():
                print(
                    f"   (time budget of {args.budget:g} s used up: {rate:g}/s and below skipped)"
                )
                break
            stack = Stack(ctx, "on", receiver)
            try:
                run = stack.step(rate)
            finally:
                stack.close()
            runs.append(run)
            if run.passed:
                chosen = rate
                break
    else:
        chosen = args.rate
    # "off" and "store": one bridge each, the lower rate first, then --rate.
    lowest = min(r.rate for r in runs) if runs else args.rate
    compare_at = sorted({args.rate, chosen if chosen is not None else lowest})
    for mode in [m for m in ("off", "store") if m in args.modes]:
        print(f"   -- events {mode}: {', '.join(f'{r:g}' for r in compare_at)} calls/s")
        stack = Stack(ctx, mode, receiver)
        try:
            for rate in compare_at:
                runs.append(stack.step(rate))
        finally:
            stack.close()
    print()
    summary = summarize_calls(runs, chosen)
    print()
    return {"wire": ctx.wire, "runs": [call_json(r) for r in runs], "summary": summary}


def compare(runs: list[CallRun], rate: float) -> dict[str, Any]:
    """Per mode at `rate`: set-up p50/p99/mean, CPU per call, passed."""
    out: dict[str, Any] = {}
    for mode in ("off", "store", "on"):
        at = [r for r in runs if r.rate == rate and r.mode == mode]
        values = [x for r in at for x in r.setup()]
        if not at or not values:
            continue
        cpu = [r.cpu_ms_per_call for r in at if r.cpu_ms_per_call]
        out[mode] = {
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
            "mean": statistics.mean(values),
            "cpu_ms_per_call": statistics.mean(cpu) if cpu else None,
            "passed": all(r.passed for r in at),
        }
    return out


def summarize_calls(runs: list[CallRun], chosen: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {"chosen_rate": chosen, "rates": {}}
    for rate in sorted({r.rate for r in runs}, reverse=True):
        figures = compare(runs, rate)
        out["rates"][f"{rate:g}"] = figures
        off = figures.get("off")
        if off is None:
            continue
        for mode in ("store", "on"):
            other = figures.get(mode)
            if other is None:
                continue
            diff50 = (other["p50"] - off["p50"]) * 1000
            diff99 = (other["p99"] - off["p99"]) * 1000
            other["diff_p50_ms"], other["diff_p99_ms"] = diff50, diff99
            cpu = ""
            if other["cpu_ms_per_call"] and off["cpu_ms_per_call"]:
                extra = other["cpu_ms_per_call"] - off["cpu_ms_per_call"]
                cpu = f"; bridge CPU per call {extra:+.3f} ms"
            verdicts = "" if other["passed"] and off["passed"] else " (a run FAILED)"
            print(
                f"   {rate:g} calls/s, {mode} - off{verdicts}: set-up p50 "
                f"{ms(off['p50'])} -> {ms(other['p50'])} ({diff50:+.2f} ms), p99 "
                f"{ms(off['p99'])} -> {ms(other['p99'])} ({diff99:+.2f} ms){cpu}"
            )
    top = out["rates"].get(f"{TARGET_RATE:g}")
    on = (top or {}).get("on")
    off = (top or {}).get("off")
    if on is not None and off is not None:
        diff = on["diff_p99_ms"]
        met = abs(diff) <= TARGET_SETUP_DIFF_MS and on["passed"] and off["passed"]
        print(
            f"   target: set-up p99 with events on within {TARGET_SETUP_DIFF_MS:g} ms of off at "
            f"{TARGET_RATE} calls/s: {diff:+.2f} ms -> {abs(diff) / TARGET_SETUP_DIFF_MS:.2f} x "
            f"the allowance ({'met' if met else 'MISSED'}"
            + ("" if on["passed"] and off["passed"] else "; not every call set up at the rate")
            + ")"
        )
    else:
        print(f"   target (at {TARGET_RATE} calls/s, on and off): not measured in this run")
    if chosen is not None and chosen != TARGET_RATE:
        print(
            f"   events on: the highest rate tried at which every call was set up at the rate: "
            f"{chosen:g} calls/s"
        )
    elif chosen is None:
        print("   events on: no rate tried passed")
    return out


def call_json(run: CallRun) -> dict[str, Any]:
    setup = run.setup()
    return {
        "mode": run.mode,
        "rate": run.rate,
        "asked": run.asked,
        "attempted": run.attempted,
        "succeeded": run.succeeded,
        "bad": run.bad,
        "passed": run.passed,
        "achieved": run.achieved,
        "retransmissions": run.retransmissions,
        "setup_source": "wire" if run.wire else "sipp",
        "setup_p50_ms": (percentile(setup, 50) or 0) * 1000 if setup else None,
        "setup_p99_ms": (percentile(setup, 99) or 0) * 1000 if setup else None,
        "setup_p999_ms": (percentile(setup, 99.9) or 0) * 1000 if setup else None,
        "setup_max_ms": max(setup) * 1000 if setup else None,
        "setup_mean_ms": statistics.mean(setup) * 1000 if setup else None,
        "sipp_p50_ms": percentile(run.sipp_rtd, 50),
        "sipp_p99_ms": percentile(run.sipp_rtd, 99),
        "bridge_setup_mean_ms": run.bridge_mean_ms,
        "split_ms": {  # --split: the bridge's shares and the phone's, p50 and p99
            key: [(percentile(values, q) or 0) * 1000 for q in (50, 99)]
            for key, values in run.split.items()
            if values
        },
        "bridge_setup_p99_bucket": run.bridge_p99,
        "cpu_ms_per_call": run.cpu_ms_per_call,
        "worker_cpu_ms_per_call": run.worker_cpu_ms_per_call,
        "events_written_total": run.events_written,
        "events_rows": run.events_rows,
        "delivered_at_end": run.delivered_at_end,
        "delivered_after": run.delivered_after,
        "drain_seconds": run.drain_seconds,
        "receiver": run.receiver,
        "live_after": run.live_after,
        "packets": run.packets,
        "other_processes_share": run.others,
    }


# -- 3. delivery throughput --------------------------------------------------------------------
async def deliver_run(
    path: Path, receiver: Receiver, events: list[StoredEvent], concurrency: int, limit: float
) -> dict[str, Any]:
    outbox = await daemon_outbox(path).start()
    await outbox.save_endpoint(Endpoint("bench", receiver.url, SECRET))
    for event in events:
        outbox.append(event)
    await outbox.flush()  # stored, each with its delivery queued; nothing sent yet
    before = receiver.stats()
    outcomes: dict[str, int] = {}
    done = asyncio.Event()

    def attempted(_: str, outcome: str, __: float | None) -> None:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcomes.get("delivered", 0) >= len(events):
            done.set()

    dispatcher = WebhookDispatcher(
        outbox, DeliveryPolicy(concurrency=concurrency), on_attempt=attempted
    )
    outbox.on_stored = dispatcher.wake
    ticker = LagTicker().start()
    cpu = time.process_time()
    started = time.perf_counter()
    await dispatcher.start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), limit)
    took = time.perf_counter() - started
    cpu = time.process_time() - cpu
    lag = await ticker.stop()
    await dispatcher.stop()
    await outbox.close()
    after = receiver.stats()
    delivered = outcomes.get("delivered", 0)
    return {
        "concurrency": concurrency,
        "events": len(events),
        "delivered": delivered,
        "outcomes": outcomes,
        "seconds": took,
        "per_s": delivered / took if took else None,
        "cpu_us_per_delivery": cpu * 1e6 / delivered if delivered else None,
        "received": after["received"] - before["received"],
        "unique": after["unique"] - before["unique"],
        "bad": after["bad"] - before["bad"],
        "verified": after["verified"] - before["verified"],
        "lag": lag,
        "complete": delivered >= len(events),
    }


async def section_deliver(
    args: argparse.Namespace, folder: Path, receiver: Receiver
) -> dict[str, Any]:
    others = OtherLoad().start()
    with daemon_gc():
        figures = await deliver_figures(args, folder, receiver)
    figures["other_processes_share"] = share = others.stop()
    print(f"   (other processes took {other_share(share)} of the machine's CPU meanwhile)")
    print()
    return figures


async def deliver_figures(
    args: argparse.Namespace, folder: Path, receiver: Receiver
) -> dict[str, Any]:
    events, _ = make_events(args.deliveries, args.members)  # (new ones for each run)
    calls = len({e.call_id for e in events})
    print(
        f"== 3. delivery throughput: {len(events)} stored events of {calls} calls queued for one "
        f"endpoint, then WebhookDispatcher (default DeliveryPolicy) -> aiohttp receiver "
        f"{receiver.url} (child process pid {receiver.process.pid}, every signature verified "
        "with standardwebhooks)"
    )
    print(
        f"   {'concurrency':>11} {'delivered':>9} {'seconds':>8} {'per s':>7} {'cpu/del':>9} "
        f"{'lag p99':>9} {'lag max':>9}  receiver"
    )
    runs = []
    for n, concurrency in enumerate(args.concurrency):
        if n:
            events, _ = make_events(args.deliveries, args.members)
        run = await deliver_run(
            folder / f"deliver-{concurrency}.sqlite",
            receiver,
            events,
            concurrency,
            args.deliver_limit,
        )
        runs.append(run)
        print(
            f"   {concurrency:>11} {run['delivered']:>9} {run['seconds']:>8.2f} "
            f"{run['per_s']:>7,.0f} {fmt(run['cpu_us_per_delivery'], '.0f'):>6} us "
            f"{ms(run['lag']['p99']):>9} {ms(run['lag']['max']):>9}  {run['received']} POSTs, "
            f"{run['unique']} ids, {run['verified']} verified, {run['bad']} bad"
            + ("" if run["complete"] else f"  (NOT all within {args.deliver_limit:g} s)"),
            flush=True,
        )
    if len(runs) >= 2 and runs[0]["per_s"]:
        for run in runs[1:]:
            print(
                f"   concurrency {run['concurrency']} / {runs[0]['concurrency']}: "
                f"{run['per_s'] / runs[0]['per_s']:.2f} x the deliveries per second"
            )
    return {"runs": runs}


# -- main --------------------------------------------------------------------------------------
def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000, help="section 1's events")
    parser.add_argument("--repeat", type=int, default=3, help="section 1's runs of each kind")
    parser.add_argument("--members", type=int, default=10, help="ring group size in call.routed")
    parser.add_argument(
        "--big-members",
        type=int,
        default=100,
        help="section 1's extra run with this group size (section 2's); 0: none",
    )
    parser.add_argument("--paced-seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=int, default=TARGET_RATE, help="section 2's calls/s")
    parser.add_argument(
        "--fallback-rates",
        type=parse_ints,
        default=parse_ints("200,100"),
        help="lower rates tried (off and the failed modes) when a mode fails at --rate",
    )
    parser.add_argument(
        "--modes",
        type=lambda text: [m for m in text.split(",") if m],
        default=["off", "store", "on"],
        help="off (outbox unopenable), store (outbox, no endpoint), on (outbox, 1 endpoint)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="section 2's seconds of calls")
    parser.add_argument("--users", type=int, default=100, help="section 2's desk phones")
    parser.add_argument("--phone-procs", type=int, default=2)
    parser.add_argument("--talk-ms", type=int, default=20)
    parser.add_argument("--warmup-calls", type=int, default=100)
    parser.add_argument(
        "--drain-wait", type=float, default=20.0, help="seconds to wait for the deliveries"
    )
    parser.add_argument(
        "--drain-wait-failed",
        type=float,
        default=5.0,
        help="the same after a run that failed (the bridge is behind: it would not catch up)",
    )
    parser.add_argument("--deliveries", type=int, default=6000, help="section 3's events")
    parser.add_argument("--concurrency", type=parse_ints, default=parse_ints("8,32"))
    parser.add_argument("--deliver-limit", type=float, default=60.0)
    parser.add_argument("--budget", type=float, default=150.0, help="no new rate after this")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument(
        "--split",
        action="store_true",
        help="section 2: also split each call's set-up into the bridge's share and the phone's"
        " (a second sniffer, on the bridge's port: more work on the SIPp core)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--sections", type=parse_ints, default=[1, 2, 3], help="which sections to run (1,2,3)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--role", default="bench", choices=["bench", "receiver"])
    parser.add_argument("--receiver-kind", default="aiohttp", choices=["aiohttp", "raw"])
    parser.add_argument("--verify-every", type=int, default=1)
    args = parser.parse_args()

    if args.role == "receiver":
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(serve_receiver(args.receiver_kind, args.verify_every))
        return 0
    if args.quick:
        args.events, args.repeat, args.paced_seconds = 3000, 1, 0.5
        args.rate, args.fallback_rates, args.seconds = 20, [], 2.0
        args.users, args.phone_procs, args.warmup_calls = 20, 1, 10
        args.modes = [m for m in args.modes if m != "store"]
        args.drain_wait, args.deliveries, args.deliver_limit = 10.0, 300, 20.0

    started = time.monotonic()
    for line in machine_lines():
        print(line)
    print(code_line(None))
    print()
    folder = Path(tempfile.mkdtemp(prefix="bench-events-"))
    procs = Processes()
    cores = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cores) >= 2
    results: dict[str, Any] = {"quick": args.quick}
    try:
        if pin:  # in-process sections: this process on one core, as the daemon
            os.sched_setaffinity(0, {cores[0]})
        if 1 in args.sections:
            with asyncio.Runner(loop_factory=new_loop) as runner:
                results["persist"] = runner.run(section_persist(args, folder))
        if pin:
            os.sched_setaffinity(0, set(cores))
        if 2 in args.sections:
            results["calls"] = section_calls(Ctx(args, procs, folder, time.monotonic()))
            for process in list(procs.running):
                procs.stop(process)
        if 3 in args.sections:
            if pin:
                os.sched_setaffinity(0, {cores[0]})
            receiver = start_receiver(procs, "aiohttp", 1, set(cores[1:]) if pin else None)
            with asyncio.Runner(loop_factory=new_loop) as runner:
                results["deliver"] = runner.run(section_deliver(args, folder, receiver))
            procs.stop(receiver.process)
        print(
            f"load average at end: {os.getloadavg()[0]:.2f}; run took "
            f"{time.monotonic() - started:.0f} s"
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
        if args.keep:
            print(f"work folder kept: {folder}")
        return 0
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
