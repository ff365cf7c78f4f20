"""WebSocket fan-out: 10,000 app sessions on one bridge, offers to 1,000 of them at once.

    .venv/bin/python bench/ws_fanout.py [--users 5000] [--sessions 2] [--offer-users 500]
                                        [--client-procs 2] [--rounds 5] [--compression]
                                        [--accept-delay 0.2-0.5] [--no-pin]

Everything runs on loopback, on free ports, bounded in time (about a minute), and every
process it starts is stopped at the end, by its process group id:

1. One `bridge run` (log level warning, SIP off, `[ws] test_offers = true`) with a directory
   of --users `apps` users and an admin. The file-descriptor limit is raised for this
   process (and so for the processes it starts) only: soft limit = hard limit. With two
   cores or more the bridge gets the first core to itself and the clients the others
   (`--no-pin`: no affinity), so the figures are the bridge's rather than the scheduler's.
2. --client-procs client processes (this script with `--client`), on uvloop when installed,
   each connecting its share of users x --sessions with `sim.apps.AppClient` (token in the
   first frame, no per-message compression unless --compression, 200 handshakes at a time).
   Session 0 of every user accepts every offer after --accept-delay seconds (0.2-0.5, drawn
   per offer: a person clicking; `--accept-delay 0` accepts at once, a stress test); the
   others only watch (and get `call.ended answered_elsewhere`).
3. Memory per idle connection: the bridge's RSS (VmRSS of /proc/<pid>/status) once every
   session is connected and idle, minus its RSS before the first one, divided by the number
   of sessions.
4. --rounds rounds: `POST /api/v1/ws/test-offers` with --offer-users users drawn at random
   (one synthetic call each, so --offer-users x --sessions sessions get an offer at once).
   Offer delivery: from just before the POST to each session's receipt of `call.offer`, on
   CLOCK_MONOTONIC (one clock for every process of the machine). Accept round trip: from
   session 0 sending `call.accept` to its `call.state answered`, with the other 499 accepts
   of the round arriving around it. The bridge's own side of the fan-out: the endpoint
   answers once every offer is written and says how long that took (`written_ms`: offers
   made to the last frame handed to the kernel). Per round it also shows the bridge's CPU
   time, its collections per generation (the daemon's collector policy collects the young
   generations four times a second, each of a few ms, and the old one on a schedule) and
   heartbeat pings sent (10,000 sessions are pinged about every 20 s).
   The client processes run the same collector policy once connected: each stands in
   for 5,000 devices, and its own collector's pauses are not the bridge's delivery time.

It prints p50/p99/max of both over all rounds, the memory per idle connection, and the
ratio to each target of the issue (p99 fan-out < 100 ms, < 50 KiB per idle connection).
It asserts nothing. The clients and the bridge share the machine's cores: the figures
include that contention.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECRET = "bench-secret-0123456789abcdef-0123456789"
TARGET_P99_MS = 100.0
TARGET_KIB = 50.0
GC2 = 'python_gc_collections_total{generation="2"}'
GC1 = 'python_gc_collections_total{generation="1"}'
GC0 = 'python_gc_collections_total{generation="0"}'
PINGS = 'bridge_ws_messages_total{direction="out",type="ping"}'


# -- helpers ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_fd_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def user_ids(count: int) -> list[str]:
    return [f"app{i:05d}" for i in range(count)]


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def ms(values: list[float], q: float) -> str:
    """The q-th percentile of `values` (seconds) in milliseconds."""
    value = percentile(values, q)
    return fmt(value * 1000 if value is not None else None)


# -- the bridge ------------------------------------------------------------------------------
class Bridge:
    def __init__(
        self, folder: Path, users: list[str], sessions: int, cpus: set[int] | None
    ) -> None:
        self.port = free_port()
        directory = {
            "timezone": "UTC",
            "users": [
                {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
                *({"id": u, "name": f"App {u}", "answer_by": "apps"} for u in users),
            ],
            "ring_groups": [],
            "lines": [],
        }
        (folder / "directory.yaml").write_text(yaml.safe_dump(directory, sort_keys=False))
        config = folder / "bridge.toml"
        config.write_text(
            f'[http]\nhost = "127.0.0.1"\nport = {self.port}\n'
            "[sip]\nenabled = false\n"
            f'[auth]\njwt_secret = "{SECRET}"\n'
            '[log]\nlevel = "warning"\nformat = "json"\n'
            "[daemon]\ndrain_timeout_seconds = 1\n"
            f"[ws]\ntest_offers = true\nmax_sessions_per_user = {max(sessions, 1)}\n"
        )
        self.log = (folder / "bridge.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "run", "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            start_new_session=True,
        )
        if cpus:
            os.sched_setaffinity(self.process.pid, cpus)
        self.folder = folder
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"bridge exited: {(folder / 'bridge.log').read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.base}/readyz", timeout=1) as r,
            ):
                if r.status == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("bridge not ready in 60 s")
            time.sleep(0.1)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, path: str, body: dict[str, Any], token: str) -> tuple[dict[str, Any], float]:
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        return answer, time.monotonic() - started

    def metric(self, sample: str) -> float | None:
        with urllib.request.urlopen(f"{self.base}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(sample + " "):
                    return float(line.split()[-1])
        return None

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.log.close()


# -- client processes ------------------------------------------------------------------------
class ClientProc:
    """One `--client` process; a line protocol on its stdin / stdout."""

    def __init__(
        self,
        url: str,
        users: list[str],
        sessions: int,
        compression: bool,
        accept_delay: str,
        cpus: set[int] | None,
    ) -> None:
        command = [
            sys.executable,
            str(Path(__file__)),
            "--client",
            "--url",
            url,
            "--sessions",
            str(sessions),
            "--users",
            ",".join(users),
        ]
        if compression:
            command.append("--compression")
        command += ["--accept-delay", accept_delay]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        if cpus:
            os.sched_setaffinity(self.process.pid, cpus)

    def read(self, timeout: float = 120) -> dict[str, Any]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise SystemExit(f"client process exited ({self.process.poll()})")
            if line.startswith("{"):
                return json.loads(line)
        raise SystemExit("client process silent")

    def command(self, text: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()
        return self.read()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.process.poll() is None and self.process.stdin is not None:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
                self.process.wait(timeout=20)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


async def client_main(args: argparse.Namespace) -> None:
    """A client process: connect, report ready, then answer commands on stdin."""
    from sim.apps import AnswerPolicy, AppClient

    from bridge.tokens import TokenService

    tokens = TokenService(SECRET)
    users = args.users.split(",")
    low_text, _, high_text = args.accept_delay.partition("-")
    low, high = float(low_text), float(high_text or low_text)
    clients: list[AppClient] = []
    gate = asyncio.Semaphore(200)

    async def one(user: str, index: int) -> None:
        client = AppClient(
            args.url,
            tokens.issue(user, ttl=3600),
            device=f"s{index}",
            # Session 0 accepts; the others watch.
            policy=AnswerPolicy(probability=1.0, delay_min=low, delay_max=high)
            if index == 0
            else None,
            compression=args.compression,
            keep_frames=False,
            open_timeout=60,
        )
        async with gate:
            await client.connect()
        clients.append(client)

    started = time.monotonic()
    results = await asyncio.gather(
        *(one(u, i) for u in users for i in range(args.sessions)), return_exceptions=True
    )
    failures = [repr(r) for r in results if isinstance(r, BaseException)]
    # This process stands in for thousands of devices, each with a heap of its own: its
    # collector walking all their connections at once (a million objects; full collections
    # of 0.3-0.5 s at the interpreter's defaults) would be counted as the bridge's delivery
    # time. So it runs the daemon's own collector policy (bridge.daemon).
    from bridge.daemon import tune_garbage_collector

    gc_policy = tune_garbage_collector()
    emit(
        {
            "ready": len(clients),
            "failed": len(failures),
            "first_failures": failures[:3],
            "seconds": time.monotonic() - started,
        }
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if line in ("", "quit"):
            break
        if line == "report":
            offers = [t for c in clients for t in c.stats.offer_at.values()]
            rtts = [r for c in clients for r in c.stats.accept_rtt]
            won = sum(c.stats.won for c in clients)
            lost = sum(c.stats.lost for c in clients)
            elsewhere = sum(c.stats.ended.get("answered_elsewhere", 0) for c in clients)
            open_now = sum(1 for c in clients if c.is_open)
            for client in clients:
                client.stats.offer_at.clear()
                client.stats.accept_rtt.clear()
            emit(
                {
                    "offers": offers,
                    "rtt": rtts,
                    "won": won,
                    "lost": lost,
                    "answered_elsewhere": elsewhere,
                    "open": open_now,
                }
            )
    if gc_policy is not None:
        gc_policy.stop()
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def emit(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


def run_client(args: argparse.Namespace) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(client_main(args))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(client_main(args))


# -- the benchmark ---------------------------------------------------------------------------
def main() -> None:
    if "--client" in sys.argv:  # a client process started by the benchmark
        client = argparse.ArgumentParser()
        client.add_argument("--client", action="store_true")
        client.add_argument("--users", default="")
        client.add_argument("--url", required=True)
        client.add_argument("--sessions", type=int, default=1)
        client.add_argument("--compression", action="store_true")
        client.add_argument("--accept-delay", default="0")
        run_client(client.parse_args())
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=2, help="sessions per user")
    parser.add_argument("--offer-users", type=int, default=500, help="users offered per round")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--compression",
        action="store_true",
        help="clients offer permessage-deflate (as browsers do)",
    )
    parser.add_argument(
        "--accept-delay",
        default="0.2-0.5",
        help="seconds before session 0 accepts, MIN-MAX (a person; 0: at once, a stress test)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not give the bridge a core of its own (the clients get the others)",
    )
    parser.add_argument(
        "--idle", type=float, default=3.0, help="seconds idle before the memory reading"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    total = args.users * args.sessions
    limit = raise_fd_limit(total + 1000)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before: {load}")
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} cores; RLIMIT_NOFILE {limit} (here and in the children)"
    )
    if limit < total + 500:
        raise SystemExit(f"need {total + 500} file descriptors, the hard limit allows {limit}")
    rng = random.Random(args.seed)
    users = user_ids(args.users)
    with tempfile.TemporaryDirectory(prefix="ws-fanout-") as tmp:
        cores = sorted(os.sched_getaffinity(0))
        pin = not args.no_pin and len(cores) >= 2
        bridge_cpus, client_cpus = ({cores[0]}, set(cores[1:])) if pin else (None, None)
        print(
            f"bridge on cores {sorted(bridge_cpus)}, clients on {sorted(client_cpus)}"
            if pin and bridge_cpus and client_cpus
            else "no core pinning"
        )
        bridge = Bridge(Path(tmp), users, args.sessions, bridge_cpus)
        procs: list[ClientProc] = []
        try:
            from bridge.tokens import TokenService  # the same package the bridge runs

            admin = TokenService(SECRET).issue("admin", ttl=3600)
            time.sleep(1.0)
            rss_before = rss_kib(bridge.process.pid)
            url = f"ws://127.0.0.1:{bridge.port}/ws"
            shares = [users[i :: args.client_procs] for i in range(args.client_procs)]
            started = time.monotonic()
            procs = [
                ClientProc(
                    url, share, args.sessions, args.compression, args.accept_delay, client_cpus
                )
                for share in shares
            ]
            ready = [p.read() for p in procs]
            connect_seconds = time.monotonic() - started
            connected = sum(r["ready"] for r in ready)
            failed = sum(r["failed"] for r in ready)
            print(
                f"sessions: {connected} connected, {failed} failed, "
                f"in {connect_seconds:.1f} s ({connected / connect_seconds:,.0f}/s)"
            )
            for r in ready:
                for failure in r["first_failures"]:
                    print(f"  failure: {failure}")
            time.sleep(args.idle)  # idle: handshakes done, buffers settled
            rss_idle = rss_kib(bridge.process.pid)
            gauge = bridge.metric("bridge_ws_connections")
            per_conn = (rss_idle - rss_before) / max(1, connected)
            print(
                f"bridge RSS: {rss_before / 1024:.1f} MiB before, {rss_idle / 1024:.1f} MiB "
                f"with {connected} idle sessions (gauge {gauge:.0f}): "
                f"{per_conn:.1f} KiB per connection"
            )

            deliveries: list[float] = []
            rtts: list[float] = []
            posts: list[float] = []
            written: list[float] = []  # the bridge's own fan-out time, per round
            round_p99: list[float] = []
            cpu: list[float] = []
            expected = args.offer_users * args.sessions
            for round_no in range(args.rounds):
                chosen = rng.sample(users, args.offer_users)
                cpu_before = cpu_seconds(bridge.process.pid)
                gc_before = bridge.metric(GC2) or 0.0
                gc1_before = bridge.metric(GC1) or 0.0
                gc0_before = bridge.metric(GC0) or 0.0
                pings_before = bridge.metric(PINGS) or 0.0
                t0 = time.monotonic()
                answer, post_seconds = bridge.post(
                    "/api/v1/ws/test-offers", {"users": chosen, "ring_seconds": 30}, admin
                )
                posts.append(post_seconds)
                written.append(answer["written_ms"] / 1000)
                time.sleep(2.0)  # let every offer and accept land
                cpu.append(cpu_seconds(bridge.process.pid) - cpu_before)
                full_gcs = (bridge.metric(GC2) or 0.0) - gc_before
                gen1_gcs = (bridge.metric(GC1) or 0.0) - gc1_before
                gen0_gcs = (bridge.metric(GC0) or 0.0) - gc0_before
                pings = (bridge.metric(PINGS) or 0.0) - pings_before
                reports = [p.command("report") for p in procs]
                got = [t - t0 for r in reports for t in r["offers"]]
                round_rtt = [r for rep in reports for r in rep["rtt"]]
                deliveries += got
                rtts += round_rtt
                round_p99.append(percentile(got, 99) or 0.0)
                print(
                    f"round {round_no + 1}: {answer['offers']['delivered']} users offered, "
                    f"{len(got)}/{expected} offers received, delivery p50 {ms(got, 50)} ms "
                    f"p99 {ms(got, 99)} ms; {len(round_rtt)} accepts won, round trip p99 "
                    f"{ms(round_rtt, 99)} ms; written by the bridge in {answer['written_ms']:.0f}"
                    f" ms (POST {post_seconds * 1000:.0f} ms); "
                    f"bridge CPU {cpu[-1] * 1000:.0f} ms, GCs {gen0_gcs:.0f}/{gen1_gcs:.0f}/"
                    f"{full_gcs:.0f} (gen 0/1/2), "
                    f"heartbeat pings {pings:.0f}"
                )

            print()
            print(
                f"offer delivery ({len(deliveries)} offers, {args.rounds} rounds of "
                f"{expected}): p50 {ms(deliveries, 50)} ms  p99 {ms(deliveries, 99)} ms  "
                f"max {ms(deliveries, 100)} ms"
            )
            print(
                f"  per round p99: median {ms(round_p99, 50)} ms, best {ms(round_p99, 0)} ms, "
                f"worst {ms(round_p99, 100)} ms"
            )
            print(
                f"bridge side (offers made to last frame handed to the kernel): "
                f"p50 {ms(written, 50)} ms  max {ms(written, 100)} ms per round of {expected}"
            )
            print(
                f"accept round trip ({len(rtts)} accepts): p50 {ms(rtts, 50)} ms  "
                f"p99 {ms(rtts, 99)} ms  max {ms(rtts, 100)} ms"
            )
            per_round = fmt(sum(cpu) / len(cpu) * 1000, ".0f")
            print(
                f"POST /api/v1/ws/test-offers: p50 {ms(posts, 50)} ms, max {ms(posts, 100)} "
                f"ms; bridge CPU per round: {per_round} ms"
            )
            print(f"memory per idle connection: {per_conn:.1f} KiB")
            p99 = percentile(deliveries, 99)
            if p99 is not None:
                ratio = p99 * 1000 / TARGET_P99_MS
                print(
                    f"p99 fan-out / {TARGET_P99_MS:.0f} ms target = {ratio:.2f}"
                    f" ({'met' if ratio < 1 else 'MISSED'})"
                )
            print(
                f"memory / {TARGET_KIB:.0f} KiB target = {per_conn / TARGET_KIB:.2f}"
                f" ({'met' if per_conn < TARGET_KIB else 'MISSED'})"
            )
        finally:
            for proc in procs:
                proc.stop()
            bridge.stop()


if __name__ == "__main__":
    main()
