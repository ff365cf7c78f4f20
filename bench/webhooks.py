"""Signed carrier voice webhooks against a running bridge, at a fixed rate.

    .venv/bin/python bench/webhooks.py [--rate 300] [--seconds 10] [--warmup 2]
                                       [--connections 32] [--members 3] [--log-level info]
                                       [--src DIR]

Everything runs on loopback, on a free port, bounded in time (warm-up + seconds + a few
seconds to start and stop), and the one process it starts is stopped at the end by its process
group id:

1. One `bridge run` (carrier only: `[sip] enabled = false`; `[twilio]` with an auth token,
   `mode = "dial"`, `[daemon] drain_timeout_seconds = 0`; logs at --log-level, JSON, to a
   temporary file) with a directory of --members `phone_number` users in one ring group on
   line +15550100, so every webhook goes the whole way: body, signature (`RequestValidator`),
   routing, a new call record, the call core, TwiML with one `<Dial>` of --members `<Number>`s.
2. The load: `POST /twilio/voice` with a new CallSid each, signed over the bridge's public URL
   with the `twilio` package's `RequestValidator.compute_signature` (all signed before the
   run), sent open-loop at --rate requests/s (request i leaves at start + i / rate whether or
   not the earlier ones have been answered) by aiohttp over --connections keep-alive
   connections, on uvloop when it is installed. A warm-up at the same rate comes first and is
   not counted.

`--gc-gen0 N` starts the bridge with the daemon's young-generation GC threshold replaced by N
(the daemon sets `bridge.daemon.GC_THRESHOLDS` once started, 5,000 today): the collections
of that generation are the pauses behind this path's tail latency (see docs/PERFORMANCE.md).

`--src DIR` runs the bridge from another copy of the package (PYTHONPATH=DIR), e.g. a
`git archive <commit> src | tar -x` export's `src/`, to compare two versions back to back on
the same machine.

It prints the achieved rate, latency p50 / p99 / max (sent -> answer read, and also from the
scheduled send time so a generator that fell behind cannot hide the server's queueing), errors
(non-200 answers, and requests that failed), the bridge's CPU per request (utime + stime from
/proc), and its own `bridge_webhook_seconds{endpoint="voice"}` histogram. Target of the issue:
p99 < 10 ms at 300 requests/s. It asserts nothing: the bridge and this generator share the
machine's cores, and whatever else runs on the machine shows up in the figures.

Calls are never ended (no status callbacks are sent), so the bridge holds every call of the
run as ringing: rate x (warm-up + seconds) calls by the end, as a busy carrier number would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from twilio.request_validator import RequestValidator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `sim` lives at the repository root
from sim.local import free_port  # noqa: E402

BRIDGE = REPO / ".venv" / "bin" / "bridge"
AUTH_TOKEN = "bench-webhooks-auth-token-0123456789"
ACCOUNT_SID = "AC" + "b" * 32
LINE = "+15550100"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def proc_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def write_config(folder: Path, port: int, members: int, log_level: str) -> Path:
    users = [
        {
            "id": f"agent{n}",
            "name": f"Agent {n}",
            "answer_by": "phone_number",
            "phone_number": f"+1555000{n:04d}",
        }
        for n in range(1, members + 1)
    ]
    directory = {
        "timezone": "UTC",
        "users": users,
        "ring_groups": [
            {
                "id": "front",
                "name": "Front",
                "layers": [{"members": [u["id"] for u in users], "timeout_seconds": 20}],
                "fallback": {"action": "voicemail"},
            }
        ],
        "lines": [{"number": LINE, "name": "Front", "route_to": {"ring_group": "front"}}],
    }
    (folder / "directory.yaml").write_text(yaml.safe_dump(directory, sort_keys=False))
    toml = folder / "bridge.toml"
    toml.write_text(
        f"""[http]
host = "127.0.0.1"
port = {port}

[sip]
enabled = false

[directory]
path = "directory.yaml"

[auth]
jwt_secret = "bench-webhooks-secret-0123456789abcdef"

[twilio]
mode = "dial"
account_sid = "{ACCOUNT_SID}"
auth_token = "{AUTH_TOKEN}"

[log]
level = "{log_level}"
format = "json"

[daemon]
drain_timeout_seconds = 0
"""
    )
    return toml


# `bridge run` with the daemon's young-generation GC threshold replaced (the daemon sets
# bridge.daemon.GC_THRESHOLDS once started): for --gc-gen0, an experiment, not a setting.
_PATCHED_RUN = (
    "import sys, bridge.daemon as d; d.GC_THRESHOLDS = ({gen0}, *d.GC_THRESHOLDS[1:]); "
    "from bridge.cli import main; sys.exit(main(['run', '-c', sys.argv[1]]))"
)


def start_bridge(
    toml: Path, log_file: Path, gen0: int | None, src: Path | None = None
) -> subprocess.Popen[bytes]:
    command = [str(BRIDGE), "run", "-c", str(toml)]
    env = dict(os.environ)
    if src is not None:  # another copy of the package (before/after comparisons)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    if gen0 is not None:
        python = str(BRIDGE.parent / "python")
        command = [python, "-c", _PATCHED_RUN.format(gen0=gen0), str(toml)]
    with log_file.open("wb") as sink:
        return subprocess.Popen(
            command,
            stdout=sink,
            stderr=sink,
            env=env,
            start_new_session=True,  # its own process group: stopped by group id below
        )


def stop_bridge(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bridge exited with {process.returncode} before it was ready")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{base}/readyz", timeout=1) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.05)
    raise SystemExit("bridge not ready in time")


def histogram(base: str, name: str, labels: str) -> dict[float, float]:
    """Cumulative bucket counts of one histogram series from /metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        text = response.read().decode()
    buckets: dict[float, float] = {}
    pattern = re.compile(rf"^{name}_bucket\{{(.*)\}} (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match and labels in match.group(1):
            le = re.search(r'le="([^"]+)"', match.group(1))
            if le:
                buckets[float(le.group(1))] = float(match.group(2))
    return buckets


def bucket_of(buckets: dict[float, float], before: dict[float, float], q: float) -> float | None:
    """The upper bound of the bucket holding quantile q of the observations made between
    two scrapes."""
    diff = {le: buckets[le] - before.get(le, 0.0) for le in sorted(buckets)}
    total = diff.get(float("inf"), 0.0)
    if not total:
        return None
    for le, count in diff.items():
        if count >= q * total:
            return le
    return None


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)  # sent -> answer read
    from_schedule: list[float] = field(default_factory=list)  # scheduled -> answer read
    statuses: dict[int, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    late: float = 0.0  # the most a request left after its scheduled time


def signed_requests(public: str, count: int, start: int) -> list[tuple[dict[str, str], str]]:
    validator = RequestValidator(AUTH_TOKEN)
    url = f"{public}/twilio/voice"
    out = []
    for n in range(start, start + count):
        params = {
            "AccountSid": ACCOUNT_SID,
            "ApiVersion": "2010-04-01",
            "CallSid": f"CA{n:032x}",
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": f"+1415{n % 10_000_000:07d}",
            "To": LINE,
            "Called": LINE,
            "Caller": f"+1415{n % 10_000_000:07d}",
        }
        out.append((params, validator.compute_signature(url, params)))
    return out


async def fire(
    session: aiohttp.ClientSession,
    url: str,
    requests: list[tuple[dict[str, str], str]],
    rate: float,
    run: Run | None,
) -> None:
    """Send `requests` open-loop at `rate`; record into `run` (None: warm-up)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    tasks = []

    async def one(index: int, params: dict[str, str], signature: str) -> None:
        scheduled = start + index / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        sent = loop.time()
        sent_precise = time.perf_counter()
        try:
            async with session.post(
                url, data=params, headers={"X-Twilio-Signature": signature}
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            if run is not None:
                name = type(exc).__name__
                run.failures[name] = run.failures.get(name, 0) + 1
            return
        took = time.perf_counter() - sent_precise
        if run is None:
            return
        lateness = max(0.0, sent - scheduled)
        run.late = max(run.late, lateness)
        run.statuses[status] = run.statuses.get(status, 0) + 1
        if status == 200:
            run.latencies.append(took)
            run.from_schedule.append(took + lateness)

    for index, (params, signature) in enumerate(requests):
        tasks.append(asyncio.create_task(one(index, params, signature)))
    await asyncio.gather(*tasks)


async def load(base: str, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    warm = int(args.rate * args.warmup)
    count = int(args.rate * args.seconds)
    warmup_requests = signed_requests(base, warm, 0)
    measured_requests = signed_requests(base, count, warm)
    url = f"{base}/twilio/voice"
    connector = aiohttp.TCPConnector(limit=args.connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if warm:
            await fire(session, url, warmup_requests, args.rate, None)
        before = histogram(base, "bridge_webhook_seconds", 'endpoint="voice"')
        ticks = proc_ticks(pid)
        run = Run()
        started = time.perf_counter()
        await fire(session, url, measured_requests, args.rate, run)
        elapsed = time.perf_counter() - started
        cpu = (proc_ticks(pid) - ticks) / os.sysconf("SC_CLK_TCK")
        after = histogram(base, "bridge_webhook_seconds", 'endpoint="voice"')
    ok = len(run.latencies)
    return {
        "asked": count,
        "ok": ok,
        "rate": ok / elapsed if elapsed else 0.0,
        "elapsed": elapsed,
        "p50": percentile(run.latencies, 50),
        "p99": percentile(run.latencies, 99),
        "max": max(run.latencies) if run.latencies else None,
        "p99_sched": percentile(run.from_schedule, 99),
        "late": run.late,
        "statuses": run.statuses,
        "failures": run.failures,
        "cpu_ms_per_request": cpu * 1000 / ok if ok else None,
        "server_p50_bucket": bucket_of(after, before, 0.50),
        "server_p99_bucket": bucket_of(after, before, 0.99),
    }


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds, not counted")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--members", type=int, default=3, help="<Number>s in each <Dial>")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument(
        "--gc-gen0",
        type=int,
        default=None,
        help="run the bridge with this young-generation GC threshold instead of the daemon's",
    )
    parser.add_argument(
        "--src",
        type=Path,
        default=None,
        help="run the bridge from this copy of the package (PYTHONPATH), e.g. a "
        "`git archive <commit> src | tar -x` export's src/, to compare two versions",
    )
    args = parser.parse_args()
    if args.src is not None and not (args.src / "bridge" / "__init__.py").exists():
        print(f"--src {args.src}: no bridge package there", file=sys.stderr)
        return 2
    print(
        f"bridge code: {args.src.resolve()} (--src)" if args.src else f"bridge code: {REPO / 'src'}"
    )
    if not BRIDGE.exists():
        print(f"{BRIDGE} is missing: run `make run` (or pip install -e .) first", file=sys.stderr)
        return 2
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop  # installed with uvicorn[standard]

        loop_factory = uvloop.new_event_loop
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
        folder = Path(tmp)
        port = free_port()
        toml = write_config(folder, port, args.members, args.log_level)
        log_file = folder / "bridge.log"
        process = start_bridge(toml, log_file, args.gc_gen0, args.src)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, process)
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                result = runner.run(load(base, args, process.pid))
        finally:
            stop_bridge(process)
        log_lines = sum(1 for _ in log_file.open("rb"))

    errors = sum(n for status, n in result["statuses"].items() if status != 200)
    errors += sum(result["failures"].values())
    print(
        f"signed voice webhooks: {result['asked']} asked at {args.rate:.0f}/s over "
        f"{args.seconds:.0f} s (after {args.warmup:.0f} s of warm-up), "
        f"{args.connections} connections, {args.members} <Number>s per <Dial>, "
        f"bridge log level {args.log_level} ({log_lines} log lines)"
        + (f", GC gen0 threshold {args.gc_gen0}" if args.gc_gen0 else "")
    )
    print(f"  achieved        {result['rate']:.1f} req/s ({result['ok']} answered 200)")
    print(
        f"  latency         p50 {ms(result['p50'])}   p99 {ms(result['p99'])}   "
        f"max {ms(result['max'])}"
    )
    print(
        f"  from schedule   p99 {ms(result['p99_sched'])}   "
        f"(generator at most {ms(result['late'])} late)"
    )
    print(f"  errors          {errors}  statuses {result['statuses']}  {result['failures']}")
    cpu = result["cpu_ms_per_request"]
    print(f"  bridge CPU      {cpu:.2f} ms per request" if cpu else "  bridge CPU      -")
    print(
        f"  bridge_webhook_seconds (in the bridge): p50 <= {ms(result['server_p50_bucket'])}, "
        f"p99 <= {ms(result['server_p99_bucket'])} (bucket bounds)"
    )
    target = result["p99"] is not None and result["p99"] < 0.010 and errors == 0
    print(f"  target p99 < 10 ms at {args.rate:.0f} req/s: {'met' if target else 'missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
