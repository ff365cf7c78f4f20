"""SIP calls per second through the B2BUA, and REGISTER-with-digest per second.

    .venv/bin/python bench/sip_cps.py [--users 100] [--steps 50,100,...] [--seconds 4]
                                      [--reg-rates 250,...] [--profile] [--no-kamailio]

Everything runs on loopback, on free ports, bounded in time (about 2.5 minutes, 3 with
`--profile`; no new step starts after --budget seconds), and every process it starts is
stopped at the end, by its process group id:

1. One `bridge run` (log level warning, OPTIONS keepalives off, the trunk allowed from
   127.0.0.0/8) with a directory of --users desk-phone users (MD5 HA1s only) in one ring
   group on line +15550100: one layer, strategy round_robin, so exactly one phone rings per
   call - the cheapest call that still goes through routing, presence (on a call / ended),
   the registrar's bindings and two full dialogs. A user on a call is skipped, so there are
   more users than calls in progress at the top rate (rate x hold time: 1,000/s x ~50 ms).
2. The "phones": --phone-procs SIPp UAS processes. Each user registers once from its
   process's port (bench/sipp/register.xml -m 1 -s/-au/-ap), then a long-lived SIPp UAS
   takes that port (bench/sipp/phone_uas.xml: 200 at once, no 180, ACK, BYE, 200) and
   answers every call to its users.
3. The trunk: SIPp UAC calls (bench/sipp/trunk_uac.xml: INVITE, optional 100/180/183, 200,
   ACK, --talk-ms pause, BYE, 200) at each rate of --steps: `-r RATE -m CALLS -l LIMIT`,
   CALLS = RATE x --seconds (within --min-calls/--max-calls), LIMIT = max(100, RATE). Per
   step: calls asked, attempted, succeeded, failed (failed + never finished + never
   started), the achieved rate, set-up p50/p99/max (INVITE sent -> 200 received: SIPp's rtd
   1 from -trace_rtt, in SIPp's clock steps), the bridge's own set-up (its
   bridge_call_setup_seconds histogram, INVITE in -> 200 out: mean, and the bucket holding
   the p99), and the bridge process's CPU ms per call (utime+stime of /proc/<pid>/stat,
   before/after). A step passes with zero failed calls at >= 95% of the asked rate; the
   steps stop after the first clearly overloaded one.
   After the call steps the bridge and its phones are started anew: calls an overloaded
   step leaves live keep their users "on a call" (the count is printed, then watched for
   --linger seconds, 45 by default, to tell calls still finishing from stuck ones).
4. REGISTER with digest: a SIPp UAC loop (register.xml: REGISTER, 401, REGISTER with
   credentials, 200) at each rate of --reg-rates, then one flat-out run (-r 100000 -l 64, a
   closed loop): registrations/s, failures, p50/p99, CPU ms per registration.
5. If `kamailio` is installed (Debian: `apt-get install -y kamailio`), the same trunk load
   through Kamailio 5.6 as a transaction-stateful record-routing proxy
   (bench/kamailio/kamailio.cfg, one UDP worker) to the first phone UAS: its max
   zero-failure CPS, CPU ms per call (all its processes), and the ratios bridge/kamailio.
   Without kamailio that column is skipped with a hint.

`--profile` (needs py-spy: `.venv/bin/pip install py-spy`) also samples the bridge with
`py-spy record --format raw --function` for --profile-seconds at the highest passing call
rate, and during flat-out registrations, and prints the top functions (self, inclusive) and
self time by file.

`--src DIR` runs the bridge from another copy of the package (PYTHONPATH=DIR), e.g. a
`git archive <commit> src | tar -x` export, to compare two versions on the same machine.

It prints figures and the ratio to each target of the issue (1,000 calls/s; set-up p99 under
10 ms at 500 calls/s; 4,000 digest registrations/s); it asserts nothing. With two cores or
more, the server under test (the bridge, then Kamailio) runs alone on the first core and the
SIPp processes on the others (`--no-pin`: no affinity). Figures are still noisy: whatever else
runs on the machine shows up in them.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib.util
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # `sim` lives at the repository root
from sim.local import MetricsScrape, free_port  # noqa: E402

SIPP_DIR = HERE / "sipp"
KAMAILIO_CFG = HERE / "kamailio" / "kamailio.cfg"
REALM = "bench.test"
LINE = "+15550100"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Targets from the issue.
TARGET_CPS = 1000.0
TARGET_P99_MS = 10.0  # call set-up p99 at 500 CPS
TARGET_P99_AT = 500
TARGET_REGS = 4000.0

PASS_RATE_SHARE = 0.95  # a step passes at >= 95% of the asked rate, with zero failures


# -- small helpers ---------------------------------------------------------------------------
def ha1(user: str, password: str) -> str:
    return hashlib.md5(f"{user}:{REALM}:{password}".encode()).hexdigest()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def proc_ticks(pid: int) -> int:
    """utime + stime of one process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def tree_ticks(root: int) -> int:
    """utime + stime of a process and all its descendants (Kamailio forks its workers)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    family, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in family:
                family.add(pid)
                frontier.append(pid)
    total = 0
    for pid in family:
        with contextlib.suppress(OSError):
            total += proc_ticks(pid)
    return total


def udp_drops() -> int:
    """RcvbufErrors of /proc/net/snmp: UDP datagrams dropped on a full receive buffer, by
    any socket in this network namespace (so other work on the machine counts too)."""
    try:
        lines = [x.split() for x in Path("/proc/net/snmp").read_text().splitlines()]
        names, values = [x for x in lines if x[0] == "Udp:"][:2]
        return int(values[names.index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return 0


def fmt(value: float | None, spec: str = ".1f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


# Core pinning (`pin_cores`): the server under test (the bridge, or Kamailio with all its
# workers) gets the first core to itself; this script and every SIPp it starts run on the
# others. Without it the scheduler moves the server and SIPp between the two cores, and the
# figures are partly the scheduler's.
SERVER_CPUS: set[int] | None = None


def pin_cores(enabled: bool) -> str:
    """Set the split (and this process's own affinity, which SIPp inherits); a line for the
    report."""
    global SERVER_CPUS
    cores = sorted(os.sched_getaffinity(0))
    if not enabled or len(cores) < 2:
        SERVER_CPUS = None
        return f"no core pinning ({'--no-pin' if not enabled else 'one core'})"
    SERVER_CPUS = {cores[0]}
    os.sched_setaffinity(0, set(cores[1:]))
    return f"server under test on core {cores[0]}, SIPp and this script on {cores[1:]}"


def _server_affinity() -> None:
    # In the child before exec: Kamailio's forked workers inherit it too.
    if SERVER_CPUS is not None:
        os.sched_setaffinity(0, SERVER_CPUS)


class Processes:
    """Every process this script starts, each in its own session, stopped by its id."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, start_new_session=True, **kwargs)
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)  # the group we created for it
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        else:  # its children (Kamailio's workers) may still be there
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.running)):
            with contextlib.suppress(Exception):
                self.stop(process)


# -- SIPp ------------------------------------------------------------------------------------
@dataclass
class SippRun:
    """What one bounded SIPp UAC run did, from its -stf statistics and -trace_rtt files."""

    asked: int
    rate: float
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    retransmissions: int = 0
    achieved: float | None = None  # rate of rtd-1 completions over the run
    rtd1: list[float] = field(default_factory=list)  # ms
    rtd2: list[float] = field(default_factory=list)
    cpu_ms: float = 0.0
    bridge_setup_ms: float | None = None
    bridge_setup_p99: str = "-"  # the histogram bucket that holds the p99, in ms
    live_after: int = 0  # calls the bridge still had after the step (stuck ones)
    udp_drops: int = 0  # datagrams the kernel dropped on full receive buffers (any socket)
    wall: float = 0.0
    returncode: int | None = None
    failure_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def unfinished(self) -> int:
        return max(0, self.attempted - self.succeeded - self.failed)

    @property
    def bad(self) -> int:
        return self.failed + self.unfinished + max(0, self.asked - self.attempted)

    @property
    def passed(self) -> bool:
        return (
            self.bad == 0
            and self.achieved is not None
            and self.achieved >= PASS_RATE_SHARE * self.rate
        )

    @property
    def cpu_per_call(self) -> float | None:
        return self.cpu_ms / self.attempted if self.attempted else None


def read_stat(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        rows = [row for row in csv.reader(f, delimiter=";") if row]
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def read_rtt(folder: Path) -> list[tuple[float, float, int]]:
    """(ms since start, response time ms, rtd number) of every -trace_rtt line."""
    samples: list[tuple[float, float, int]] = []
    for path in sorted(folder.glob("*_rtt.csv")):
        with path.open(newline="") as f:
            for row in csv.reader(f, delimiter=";"):
                if len(row) >= 3 and row[0] and row[0][0].isdigit():
                    samples.append((float(row[0]), float(row[1]), int(row[2])))
    return samples


def uac_command(
    workdir: Path,
    scenario: str,
    target: str,
    rate: float,
    calls: int,
    limit: int,
    extra: list[str],
    timeout: float,
    port: int | None = None,
    rtt_freq: int = 200,
) -> list[str]:
    """The command line of one bounded SIPp UAC run in `workdir` (see `sipp_uac`), from
    `port` (a free one by default); its response times written every `rtt_freq` calls."""
    return [
        "sipp",
        "-sf",
        str(SIPP_DIR / scenario),
        "-i",
        "127.0.0.1",
        "-p",
        str(port or free_port()),
        "-r",
        str(rate),
        "-rp",
        "1000",
        "-m",
        str(calls),
        "-l",
        str(limit),
        "-nostdin",
        "-recv_timeout",
        "5000",
        "-timeout",
        f"{int(timeout)}s",
        "-trace_stat",
        "-stf",
        str(workdir / "stat.csv"),
        "-fd",
        "1",
        "-trace_rtt",
        "-rtt_freq",
        str(rtt_freq),
        "-trace_err",
        "-error_file",
        str(workdir / "errors.log"),
        *extra,
        target,
    ]


def read_uac(workdir: Path, run: SippRun) -> SippRun:
    """Fill `run` from what a finished SIPp UAC run left in `workdir` (statistics, rtt)."""
    stat = read_stat(workdir / "stat.csv")

    def num(key: str) -> int:
        try:
            return int(float(stat.get(key, "0") or 0))
        except ValueError:
            return 0

    run.attempted = num("OutgoingCall(C)")
    run.succeeded = num("SuccessfulCall(C)")
    run.failed = num("FailedCall(C)")
    run.retransmissions = num("Retransmissions(C)")
    run.failure_kinds = {
        key[len("Failed") : -3]: num(key)
        for key in stat
        if key.startswith("Failed") and key.endswith("(C)") and key != "FailedCall(C)" and num(key)
    }
    samples = read_rtt(workdir)
    run.rtd1 = [ms for _, ms, rtd in samples if rtd == 1]
    run.rtd2 = [ms for _, ms, rtd in samples if rtd == 2]
    stamps = sorted(at for at, _, rtd in samples if rtd == 1)
    if len(stamps) >= 2 and stamps[-1] > stamps[0]:
        run.achieved = (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1000)
    elif run.attempted and run.wall > 0:
        run.achieved = run.attempted / run.wall
    return run


def sipp_uac(
    workdir: Path,
    scenario: str,
    target: str,
    rate: float,
    calls: int,
    limit: int,
    extra: list[str],
    timeout: float,
    port: int | None = None,
    rtt_freq: int = 200,
) -> SippRun:
    """One bounded SIPp UAC run in its own folder; returns what it did."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = uac_command(
        workdir, scenario, target, rate, calls, limit, extra, timeout, port, rtt_freq
    )
    run = SippRun(asked=calls, rate=rate)
    started = time.monotonic()
    with (workdir / "screen.txt").open("wb") as screen:
        try:
            done = subprocess.run(
                command,
                cwd=workdir,
                stdout=screen,
                stderr=subprocess.STDOUT,
                timeout=timeout + 15,
                check=False,
            )
            run.returncode = done.returncode
        except subprocess.TimeoutExpired:
            run.returncode = None
    run.wall = time.monotonic() - started
    return read_uac(workdir, run)


# -- the bridge ------------------------------------------------------------------------------
@dataclass
class Bridge(MetricsScrape):
    process: subprocess.Popen[bytes]
    http: int
    sip: int
    folder: Path

    def setup_histogram(self) -> dict[str, float]:
        """bridge_call_setup_seconds{path="sip"}: cumulative bucket counts by `le`, sum, count."""
        found: dict[str, float] = {}
        for line in self.metrics().splitlines():
            if not line.startswith("bridge_call_setup_seconds") or 'path="sip"' not in line:
                continue
            name, value = line.rsplit(" ", 1)
            le = re.search(r'le="([^"]+)"', name)
            key = le.group(1) if le else name.split("{")[0].rsplit("_", 1)[-1]
            found[key] = float(value)
        return found


def inside_setup(before: dict[str, float], after: dict[str, float]) -> tuple[float | None, str]:
    """(mean ms, p99 bucket bound) of the bridge's own set-up times between two scrapes."""
    count = after.get("count", 0.0) - before.get("count", 0.0)
    if count <= 0:
        return None, "-"
    mean = (after.get("sum", 0.0) - before.get("sum", 0.0)) / count * 1000
    bounds = sorted(
        (float(k), after[k] - before.get(k, 0.0))
        for k in after
        if k not in ("sum", "count", "created")
    )
    for bound, cumulative in bounds:
        if cumulative >= 0.99 * count:
            return mean, ("<=" + format(bound * 1000, "g")) if bound != float("inf") else ">1000"
    return mean, "-"


def sip_ping(port: int, wait: float = 0.3) -> bool:
    """One OPTIONS to 127.0.0.1:port over UDP; True when any response comes back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        probe.settimeout(wait)
        me, tag = probe.getsockname()[1], f"{time.monotonic_ns():x}"
        probe.sendto(
            (
                f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKping{tag};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:bench@127.0.0.1>;tag={tag}\r\n"
                f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: ping-{tag}@bench\r\n"
                "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", port),
        )
        try:
            return probe.recv(65535).startswith(b"SIP/2.0")
        except TimeoutError:
            return False


def wait_idle(pid: int, limit: float = 40.0) -> float:
    """Wait (up to `limit` s) until the process uses under 5% of a core: after an overloaded
    run the bridge still works off retransmissions and timers for a while."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = proc_ticks(pid)
        time.sleep(1.0)
        if proc_ticks(pid) - before < 0.05 * CLK_TCK:
            break
    return time.monotonic() - started


def phone_users(count: int) -> list[tuple[str, str, str]]:
    """(user id, SIP username, password) of the benchmark desk phones."""
    return [(f"ph{i:04d}", f"7{i:04d}", f"pw-7{i:04d}") for i in range(count)]


# The REGISTER benchmark's user: in no ring group. One user is enough (the registrar finds a
# user by a dict lookup whatever their number); every registration has a new Call-ID and
# replaces the same binding, so the binding table does not grow.
REG_USER = ("registrar-bench", "80000", "pw-80000")
REG_ARGS = ["-s", REG_USER[1], "-au", REG_USER[1], "-ap", REG_USER[2]]


def bench_directory(phones: list[tuple[str, str, str]], regs: list[tuple[str, str, str]]) -> dict:
    def user(uid: str, username: str, password: str, name: str) -> dict[str, Any]:
        return {
            "id": uid,
            "name": name,
            "answer_by": "ip_phone",
            "sip": {"username": username, "ha1_md5": ha1(username, password)},
        }

    return {
        "timezone": "UTC",
        "users": [
            {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
            *(user(u, n, p, f"Desk {n}") for u, n, p in phones),
            *(user(u, n, p, f"Reg {n}") for u, n, p in regs),
        ],
        "ring_groups": [
            {
                "id": "bench",
                "name": "Bench",
                "layers": [
                    {
                        "strategy": "round_robin",
                        "members": [u for u, _, _ in phones],
                        "timeout_seconds": 20,
                        "ring_each_seconds": 10,
                    }
                ],
                "fallback": {"action": "hangup"},
            }
        ],
        "lines": [{"number": LINE, "name": "Bench", "route_to": {"ring_group": "bench"}}],
    }


def start_bridge(
    procs: Processes,
    folder: Path,
    directory: dict,
    src: Path | None = None,
    *,
    extra_config: str = "",
    ready: Callable[[int], bool] | None = None,
) -> Bridge:
    """`bridge run` with SIP on free ports, `extra_config` appended to its settings file;
    returns once `ready(http_port)` says so (by default: its /readyz answers 200)."""
    http, sip = free_port(), free_port()
    (folder / "directory.yaml").write_text(yaml.safe_dump(directory, sort_keys=False))
    config = folder / "bridge.toml"
    config.write_text(
        f'[http]\nhost = "127.0.0.1"\nport = {http}\n'
        f'[sip]\nhost = "127.0.0.1"\nport = {sip}\nrealm = "{REALM}"\n'
        '[auth]\njwt_secret = "bench-secret-0123456789abcdef"\n'
        '[log]\nformat = "json"\n[daemon]\ndrain_timeout_seconds = 1\n' + extra_config
    )
    env = {
        **os.environ,
        "BRIDGE_LOG__LEVEL": "warning",
        "BRIDGE_SIP__KEEPALIVE_SECONDS": "0",
        "BRIDGE_SIP__TRUNK_ALLOW": '["127.0.0.0/8"]',
    }
    if src is not None:  # another copy of the package (before/after comparisons)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    log = (folder / "bridge.log").open("wb")
    process = procs.start(
        [sys.executable, "-m", "bridge.cli", "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=folder,
        preexec_fn=_server_affinity,
    )
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise SystemExit(f"bridge exited: {(folder / 'bridge.log').read_text()[-2000:]}")
        if (ready or _readyz_ok)(http):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"bridge not ready: {(folder / 'bridge.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return Bridge(process, http, sip, folder)


def _readyz_ok(http: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def register_users(
    workdir: Path, port: int, users: list[tuple[str, str, str]], sip_port: int
) -> str | None:
    """Register each user once from `port` (bench/sipp/register.xml -m 1, one run after the
    other); None, or what went wrong."""
    for _, username, password in users:
        command = [
            "sipp",
            "-sf",
            str(SIPP_DIR / "register.xml"),
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            "1",
            "-nostdin",
            "-timeout",
            "10s",
            "-s",
            username,
            "-au",
            username,
            "-ap",
            password,
            "-trace_err",
            "-error_file",
            str(workdir / "register-errors.log"),
            f"127.0.0.1:{sip_port}",
        ]
        done = subprocess.run(command, cwd=workdir, capture_output=True, timeout=30, check=False)
        if done.returncode != 0:
            return f"user {username} did not register from port {port}: " + (
                done.stdout[-1500:].decode(errors="replace")
            )
    return None


def start_phones(
    procs: Processes, folder: Path, bridge: Bridge, users: list[tuple[str, str, str]], count: int
) -> list[tuple[subprocess.Popen[bytes], int, Path]]:
    """Register each share of the users from one port (one `register.xml -m 1` run per user,
    the shares in parallel), then start a long-lived SIPp UAS on that port. SIPp maps
    messages to calls by Call-ID, so one run cannot register and then answer."""
    shares = [(index, users[index::count], free_port()) for index in range(count)]
    shares = [share for share in shares if share[1]]

    def register_share(index: int, share: list[tuple[str, str, str]], port: int) -> str | None:
        workdir = folder / f"phones-{index}"
        workdir.mkdir()
        return register_users(workdir, port, share, bridge.sip)

    with ThreadPoolExecutor(max_workers=len(shares) or 1) as pool:
        problems = list(pool.map(lambda share: register_share(*share), shares))
    for problem in problems:
        if problem:
            raise SystemExit(problem)
    phones: list[tuple[subprocess.Popen[bytes], int, Path]] = []
    for index, _, port in shares:
        workdir = folder / f"phones-{index}"
        uas = procs.start(
            [
                "sipp",
                "-sf",
                str(SIPP_DIR / "phone_uas.xml"),
                "-i",
                "127.0.0.1",
                "-p",
                str(port),
                "-nostdin",
                "-recv_timeout",
                "10000",
                "-trace_stat",
                "-stf",
                str(workdir / "uas-stat.csv"),
                "-fd",
                "1",
                "-trace_err",
                "-error_file",
                str(workdir / "uas-errors.log"),
                f"127.0.0.1:{bridge.sip}",
            ],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        phones.append((uas, port, workdir))
    time.sleep(0.5)
    for uas, port, _ in phones:
        if uas.poll() is not None:
            raise SystemExit(f"the phone UAS on port {port} exited ({uas.returncode})")
    return phones


def start_stack(
    ctx: Context, folder: Path, users: list[tuple[str, str, str]]
) -> tuple[Bridge, list[tuple[subprocess.Popen[bytes], int, Path]]]:
    """A new `bridge run` and its registered phone UAS processes."""
    folder.mkdir(parents=True)
    bridge = start_bridge(ctx.procs, folder, bench_directory(users, [REG_USER]), ctx.args.src)
    print(
        f"bridge pid {bridge.process.pid}: SIP udp 127.0.0.1:{bridge.sip}, log level warning, "
        "keepalives off"
    )
    phones = start_phones(ctx.procs, folder, bridge, users, ctx.args.phone_procs)
    deadline = time.monotonic() + 15
    while bridge.metric("bridge_sip_registrations") != len(users):
        if time.monotonic() > deadline:
            raise SystemExit("the phones did not all register")
        time.sleep(0.1)
    return bridge, phones


# -- Kamailio --------------------------------------------------------------------------------
def start_kamailio(
    procs: Processes, folder: Path, phone_port: int
) -> tuple[subprocess.Popen[bytes], int]:
    kamailio = shutil.which("kamailio") or "/usr/sbin/kamailio"
    port = free_port()
    rundir = folder / "kamailio"
    rundir.mkdir()
    process = procs.start(
        [
            kamailio,
            "-f",
            str(KAMAILIO_CFG),
            "-DD",
            "-E",
            "-l",
            f"udp:127.0.0.1:{port}",
            "-A",
            f'PHONE_URI="sip:127.0.0.1:{phone_port}"',
            "-Y",
            str(rundir),
            "-w",
            str(rundir),
            "-P",
            str(rundir / "kamailio.pid"),
            "-m",
            "256",
            "-M",
            "16",
        ],
        stdout=(rundir / "kamailio.log").open("wb"),
        stderr=subprocess.STDOUT,
        cwd=rundir,
        preexec_fn=_server_affinity,
    )
    deadline = time.monotonic() + 15
    while not sip_ping(port):
        if process.poll() is not None:
            raise RuntimeError((rundir / "kamailio.log").read_text()[-2000:])
        if time.monotonic() > deadline:
            raise RuntimeError("kamailio did not answer OPTIONS")
    return process, port


# -- the runs --------------------------------------------------------------------------------
HEADER = (
    f"{'rate':>6} {'asked':>6} {'tried':>6} {'ok':>6} {'failed':>6} {'got/s':>7} "
    f"{'p50':>5} {'p99':>5} {'max':>5} {'in:mean':>7} {'in:p99':>7} {'cpu/call':>9}  pass"
)
UNITS = (
    f"{'/s':>6} {'':>6} {'':>6} {'':>6} {'':>6} {'':>7} "
    f"{'ms':>5} {'ms':>5} {'ms':>5} {'ms':>7} {'ms':>7} {'ms':>9}"
)


def row(run: SippRun, label: str | None = None) -> str:
    failed = run.failed + run.unfinished + max(0, run.asked - run.attempted)
    rate = label or f"{run.rate:g}"
    verdict = "yes" if run.passed else "NO"
    extra = ""
    if run.failure_kinds:
        extra = "  (" + ", ".join(f"{k} {v}" for k, v in sorted(run.failure_kinds.items())) + ")"
    if run.retransmissions:
        extra += f"  retrans {run.retransmissions}"
    if run.udp_drops:
        extra += f"  udp drops {run.udp_drops}"
    if run.live_after:
        extra += f"  live after {run.live_after}"
    return (
        f"{rate:>6} {run.asked:>6} {run.attempted:>6} {run.succeeded:>6} {failed:>6} "
        f"{fmt(run.achieved, '.0f'):>7} {fmt(percentile(run.rtd1, 50), '.0f'):>5} "
        f"{fmt(percentile(run.rtd1, 99), '.0f'):>5} "
        f"{fmt(max(run.rtd1) if run.rtd1 else None, '.0f'):>5} "
        f"{fmt(run.bridge_setup_ms, '.2f'):>7} {run.bridge_setup_p99:>7} "
        f"{fmt(run.cpu_per_call, '.3f'):>9}  {verdict}{extra}"
    )


@dataclass
class Context:
    args: argparse.Namespace
    procs: Processes
    folder: Path
    started: float

    def out_of_time(self) -> bool:
        return time.monotonic() - self.started > self.args.budget


def load_step(
    ctx: Context,
    name: str,
    scenario: str,
    target: str,
    rate: float,
    count: int,
    limit: int,
    extra: list[str],
    cpu_of: Any,
    bridge: Bridge | None,
    timeout: float | None = None,
) -> SippRun:
    before, drops = cpu_of(), udp_drops()
    setup_before = bridge.setup_histogram() if bridge is not None else None
    run = sipp_uac(
        ctx.folder / name,
        scenario,
        target,
        rate,
        count,
        limit,
        extra,
        timeout=timeout or count / min(rate, 20000) + 20,
    )
    time.sleep(0.5)  # the last BYE's 200 is out; let the daemon finish what it was doing
    run.cpu_ms = (cpu_of() - before) * 1000 / CLK_TCK
    run.udp_drops = udp_drops() - drops
    if bridge is not None and setup_before is not None:
        run.bridge_setup_ms, run.bridge_setup_p99 = inside_setup(
            setup_before, bridge.setup_histogram()
        )
        run.live_after = int(bridge.metric("bridge_live_calls") or 0)
    return run


def call_steps(
    ctx: Context, label: str, target: str, cpu_of: Any, bridge: Bridge | None
) -> list[SippRun]:
    args = ctx.args
    extra = ["-s", LINE, "-d", str(args.talk_ms)]
    warm = load_step(
        ctx, f"{label}-warmup", "trunk_uac.xml", target, 50, 100, 100, extra, cpu_of, bridge
    )
    print(f"  warm-up: 100 calls at 50/s, {warm.succeeded} ok, {warm.bad} failed")
    print("  " + HEADER)
    print("  " + UNITS)
    runs: list[SippRun] = []
    for rate in args.steps:
        if ctx.out_of_time():
            print(f"  (time budget of {args.budget:g} s used up: steps from {rate}/s skipped)")
            break
        calls = max(args.min_calls, min(args.max_calls, int(rate * args.seconds)))
        run = load_step(
            ctx,
            f"{label}-{rate}",
            "trunk_uac.xml",
            target,
            rate,
            calls,
            max(100, rate),
            extra,
            cpu_of,
            bridge,
        )
        runs.append(run)
        print("  " + row(run), flush=True)
        if run.bad > 0.2 * calls or (run.achieved or 0) < 0.5 * rate:
            print("  (overloaded: higher steps skipped)")
            break
        time.sleep(1.0)
    return runs


def register_steps(ctx: Context, bridge: Bridge, cpu_of: Any) -> list[SippRun]:
    args = ctx.args
    target = f"127.0.0.1:{bridge.sip}"
    extra = REG_ARGS
    print("  " + HEADER)
    print("  " + UNITS)
    runs: list[SippRun] = []
    for rate in args.reg_rates:
        if ctx.out_of_time():
            print(f"  (time budget used up: steps from {rate}/s skipped)")
            break
        count = max(args.min_calls, min(args.max_regs, int(rate * args.reg_seconds)))
        run = load_step(
            ctx,
            f"register-{rate}",
            "register.xml",
            target,
            rate,
            count,
            max(64, rate // 4),
            extra,
            cpu_of,
            None,
        )
        runs.append(run)
        print("  " + row(run), flush=True)
        if run.bad > 0.2 * count or (run.achieved or 0) < 0.5 * rate:
            print("  (overloaded: higher steps skipped)")
            break
        time.sleep(1.0)
    if not ctx.out_of_time():
        run = load_step(
            ctx,
            "register-flat-out",
            "register.xml",
            target,
            100000,
            args.reg_flat,
            64,
            extra,
            cpu_of,
            None,
        )
        run.rate = 0  # no asked rate: closed loop, 64 at a time
        runs.append(run)
        print("  " + row(run, label="max"), flush=True)
    return runs


def best_zero_failure(runs: list[SippRun]) -> tuple[float | None, float | None]:
    """(highest asked rate passed, highest achieved rate with zero failures)."""
    passed = [r.rate for r in runs if r.passed and r.rate]
    clean = [r.achieved for r in runs if r.bad == 0 and r.achieved]
    return (max(passed) if passed else None), (max(clean) if clean else None)


def busiest(runs: list[SippRun], what: str) -> str:
    """The CPU per call of the busiest clean step and the ceiling it implies. Light steps cost
    more per call (the loop wakes for each datagram; under load one wake reads many), so
    their median says little about where one core runs out."""
    clean = [r for r in runs if r.bad == 0 and r.achieved and r.cpu_per_call]
    if not clean:
        return ""
    top = max(clean, key=lambda r: r.achieved or 0.0)
    cpu = top.cpu_per_call or 0.0
    return (
        f"; at the busiest clean step ({top.achieved:.0f}/s) {cpu:.3f} ms"
        f" -> one core's ceiling about {1000 / cpu:,.0f} {what}/s"
    )


def run_at(runs: list[SippRun], rate: float) -> SippRun | None:
    return next((r for r in runs if r.rate == rate), None)


# -- profile ---------------------------------------------------------------------------------
def py_spy_path() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def profile_under_load(
    ctx: Context, spy: str, pid: int, name: str, load: Any, label: str | None = None
) -> None:
    seconds = ctx.args.profile_seconds
    out = ctx.folder / f"py-spy-{name}.txt"
    recorder = ctx.procs.start(
        [
            spy,
            "record",
            "-d",
            str(round(seconds)),
            "-r",
            str(ctx.args.profile_rate),
            "-p",
            str(pid),
            "-o",
            str(out),
            "--format",
            "raw",
            "--function",
        ],
        stdout=(ctx.folder / f"py-spy-{name}.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    time.sleep(1.0)
    run = load()
    if label == "max":
        run.rate = 0  # closed loop: no asked rate
    try:
        recorder.wait(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        ctx.procs.stop(recorder)
    print("  load during the profile: " + row(run, label).strip())
    if not out.exists():
        print(f"  py-spy wrote nothing: {(ctx.folder / f'py-spy-{name}.log').read_text()[-500:]}")
        return
    log_text = (ctx.folder / f"py-spy-{name}.log").read_text(errors="replace")
    errors = re.search(r"Samples: (\d+) Errors: (\d+)", log_text)
    if errors:
        print(f"  py-spy: {errors.group(1)} samples, {errors.group(2)} failed reads")
    summarize_profile(out, seconds, top=ctx.args.profile_top, rate=ctx.args.profile_rate)


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> tuple[str, str]:
    """(function, short file) of one py-spy frame 'func (path:line)'."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), "?"
    path = match.group("file")
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3":
                path = "stdlib:" + path.split("/", 1)[-1]
            break
    return match.group("func"), path


_REGISTRAR = {f"bridge/sip/{n}.py" for n in ("register", "registrar", "digest", "ban")}
# Where the time goes, by area: a sample counts for an area when any of its frames is in it.
AREAS: list[tuple[str, Any]] = [
    ("parse_message (framing, start line, headers)", lambda f, p: f == "parse_message"),
    ("validate_request", lambda f, p: f == "validate_request"),
    (
        "transaction layer (bridge/sip/transaction.py)",
        lambda f, p: p == "bridge/sip/transaction.py",
    ),
    ("sending: serialize + sendto (SipEndpoint._flush)", lambda f, p: f == "SipEndpoint._flush"),
    ("  of which the sendto syscall", lambda f, p: f.endswith("DatagramTransport.sendto")),
    ("B2BUA (bridge/sip/b2bua.py)", lambda f, p: p == "bridge/sip/b2bua.py"),
    ("routing (RoutingService.route)", lambda f, p: f == "RoutingService.route"),
    ("call machine (bridge/calls/)", lambda f, p: p.startswith("bridge/calls/")),
    ("dialogs (bridge/sip/dialog.py)", lambda f, p: p == "bridge/sip/dialog.py"),
    ("presence (bridge/presence/)", lambda f, p: p.startswith("bridge/presence/")),
    ("registrar (register.py, registrar.py, digest.py, ban.py)", lambda f, p: p in _REGISTRAR),
    ("  of which digest (bridge/sip/digest.py)", lambda f, p: p == "bridge/sip/digest.py"),
    ("gauges after a REGISTER (SipService._update_gauges)", lambda f, p: f.endswith("_gauges")),
    ("header grammar (bridge/sip/grammar.py)", lambda f, p: p == "bridge/sip/grammar.py"),
    ("messages and headers (bridge/sip/model.py)", lambda f, p: p == "bridge/sip/model.py"),
    ("metrics (prometheus_client)", lambda f, p: p.startswith("prometheus_client/")),
    (
        "logging (structlog, call_context)",
        lambda f, p: p.startswith("structlog/") or p == "bridge/observability/logging.py",
    ),
    ("random ids (secrets, random)", lambda f, p: p in ("secrets.py", "random.py")),
    ("dataclass-generated methods (<string>)", lambda f, p: p == "<string>"),
    ("media engine (bridge/media/)", lambda f, p: p.startswith("bridge/media/")),
    ("events handed to the outbox (bridge/events/)", lambda f, p: p.startswith("bridge/events/")),
    ("garbage collector ticks (GarbageCollectorPolicy)", lambda f, p: "GarbageCollector" in f),
]


def summarize_profile(path: Path, seconds: float, top: int = 15, rate: int = 100) -> None:
    self_time: Counter[tuple[str, str]] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    by_file: Counter[str] = Counter()
    total = others = 0
    inclusive_stacks: list[tuple[set[tuple[str, str]], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        if frames[0][0] != "_run_module_as_main":  # another thread than the event loop's
            others += count
            continue
        total += count
        self_time[frames[-1]] += count
        by_file[frames[-1][1]] += count
        unique = set(frames)
        for frame in unique:
            inclusive[frame] += count
        inclusive_stacks.append((unique, count))
    if not total:
        print("  (no samples)")
        return
    busy = total / (seconds * rate)
    print(
        f"  {total} non-idle samples of the event loop's thread in {seconds:g} s at {rate}/s "
        f"(busy about {busy:.0%} of the time); {others} of other threads left out"
    )
    print(f"  top {top} by self time (% of busy samples):")
    for (func, file), count in self_time.most_common(top):
        print(f"    {count / total:6.1%}  {func}  ({file})")
    print(f"  top {top} by inclusive time:")
    # The event loop's own frames and the daemon's start-up frames are in every sample.
    outer = ("asyncio/", "selectors.py", "bridge/cli.py", "bridge/daemon.py", "runpy", "<frozen")
    shown = 0
    for (func, file), count in inclusive.most_common():
        if file.startswith(outer) or func in ("<module>", "_run_module_as_main", "_run_code"):
            continue
        print(f"    {count / total:6.1%}  {func}  ({file})")
        shown += 1
        if shown == top:
            break
    print("  self time by file:")
    for file, count in by_file.most_common(12):
        print(f"    {count / total:6.1%}  {file}")
    print("  inclusive time by area (areas nest and overlap):")
    for label, test in AREAS:
        count = sum(n for frame, n in inclusive_stacks if any(test(*f) for f in frame))
        if count:
            print(f"    {count / total:6.1%}  {label}")


# -- main ------------------------------------------------------------------------------------
def code_line(src: Path | None) -> str:
    """Which bridge code runs: --src, or the repository's src/ (commit, uncommitted edits)."""
    if src is not None:
        return f"bridge code: {src.resolve()} (--src)"
    repo = HERE.parent
    git = ["git", "-C", str(repo)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True
    )
    if head.returncode != 0:
        return f"bridge code: {repo / 'src'}"
    state = " with uncommitted changes in src/" if dirty.stdout.strip() else ""
    return f"bridge code: {repo / 'src'} at commit {head.stdout.strip()}{state}"


def machine_lines() -> list[str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 1024 / 1024:.0f} GB"
    sipp = subprocess.run(["sipp", "-v"], capture_output=True, text=True, check=False)
    sipp_version = next((x.strip() for x in sipp.stdout.splitlines() if "SIPp" in x), "?")
    kamailio = shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None
    )
    kam_version = "not installed"
    if kamailio:
        out = subprocess.run([kamailio, "-v"], capture_output=True, text=True, check=False)
        kam_version = out.stdout.splitlines()[0].removeprefix("version: ").strip()
    return [
        f"machine: {os.cpu_count()} cores ({model}), {memory} RAM, Linux {platform.release()}",
        f"python {platform.python_version()} ({sys.executable}), {sipp_version}, "
        f"kamailio: {kam_version}",
        f"load average at start: {os.getloadavg()[0]:.2f} (other work on the machine skews "
        "all figures)",
    ]


def uvloop_line(pid: int) -> str:
    if importlib.util.find_spec("uvloop") is None:
        return "uvloop: not installed in this Python"
    from importlib.metadata import version

    loaded = False
    with contextlib.suppress(OSError):
        loaded = "uvloop" in Path(f"/proc/{pid}/maps").read_text()
    return f"uvloop {version('uvloop')} is installed; the bridge process " + (
        "HAS loaded it" if loaded else "has not loaded it (it runs asyncio's default loop)"
    )


def clock_step(runs: list[SippRun]) -> float | None:
    """The granularity of SIPp's response times (the gcd of the values seen)."""
    values = {round(v) for run in runs for v in (*run.rtd1, *run.rtd2) if v > 0}
    return float(math.gcd(*values)) if values else None


def ms(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f} ms"


def ratio(value: float | None, target: float, *, lower_is_better: bool = False) -> str:
    if value is None:
        return "not reached"
    share = value / target
    met = value < target if lower_is_better else value >= target
    return f"{share:.2f} x target ({'met' if met else 'MISSED'})"


def parse_rates(text: str) -> list[int]:
    """Comma-separated rates, each a positive whole number (per second)."""
    try:
        rates = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not whole numbers: {text!r}") from None
    if any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError(f"rates are per second and above 0: {text!r}")
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100, help="desk-phone users (default 100)")
    parser.add_argument(
        "--phone-procs",
        type=int,
        default=2,
        help="SIPp UAS processes the users are spread over (default 2)",
    )
    parser.add_argument(
        "--steps",
        type=parse_rates,
        default=parse_rates("50,100,200,300,500,700,1000"),
        help="call rates, calls/s (default 50,...,1000)",
    )
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="calls per step = rate x this (default 4)"
    )
    parser.add_argument("--min-calls", type=int, default=200)
    parser.add_argument("--max-calls", type=int, default=4000)
    parser.add_argument(
        "--talk-ms", type=int, default=20, help="pause between ACK and BYE (default 20 ms)"
    )
    parser.add_argument(
        "--reg-rates",
        type=parse_rates,
        default=parse_rates("250,500,1000,2000,4000"),
        help="REGISTER rates, registrations/s",
    )
    parser.add_argument("--reg-seconds", type=float, default=3.0)
    parser.add_argument("--max-regs", type=int, default=8000)
    parser.add_argument(
        "--reg-flat",
        type=int,
        default=3000,
        help="registrations in the flat-out run (default 3000)",
    )
    parser.add_argument("--no-kamailio", action="store_true")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="no core pinning (default: the bridge or Kamailio on the first core, SIPp on the "
        "others)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the bridge at the highest passing call rate and during flat-out registrations",
    )
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    parser.add_argument("--profile-top", type=int, default=15, help="functions listed")
    parser.add_argument(
        "--budget",
        type=float,
        default=270.0,
        help="seconds after which no new step starts (default 270)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    parser.add_argument(
        "--src",
        type=Path,
        help="run the bridge from this folder (one holding the `bridge` package, e.g. a "
        "`git archive` export of another commit's src/) instead of the installed one",
    )
    parser.add_argument(
        "--linger",
        type=float,
        default=45.0,
        help="seconds to watch calls left live after the call steps (0: do not wait)",
    )
    args = parser.parse_args()

    if shutil.which("sipp") is None:
        print("sipp is not installed: apt-get install sip-tester", file=sys.stderr)
        return 2
    kamailio = shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None
    )
    folder = Path(tempfile.mkdtemp(prefix="sip-cps-"))
    procs = Processes()
    ctx = Context(args, procs, folder, time.monotonic())
    for line in machine_lines():
        print(line)
    print(pin_cores(not args.no_pin))
    print(code_line(args.src))
    phones_users = phone_users(args.users)
    try:
        bridge, phones = start_stack(ctx, folder / "stack-1", phones_users)
        pid = bridge.process.pid
        print(uvloop_line(pid))
        print(
            f"{len(phones_users)} desk-phone users registered from {len(phones)} SIPp UAS "
            f"ports; ring group round_robin (one phone per call); talk {args.talk_ms} ms; "
            f"{args.seconds:g} s of calls per step ({args.min_calls}-{args.max_calls})"
        )
        print()

        def bridge_cpu() -> int:
            # Its processes, as Kamailio's: the daemon and its events worker (which writes the
            # outbox on its own core when nothing is pinned; here it shares the daemon's).
            return tree_ticks(bridge.process.pid)

        print(f"== calls through the bridge (B2BUA), trunk -> 127.0.0.1:{bridge.sip}")
        print(
            "   (p50/p99/max: SIPp, INVITE sent -> 200 received; in:mean, in:p99: the bridge's "
            "own INVITE in -> 200 out, p99 as its histogram bucket; cpu/call: all the bridge's "
            "processes, its events worker included, as Kamailio's)"
        )
        loop_before, tree_before = proc_ticks(bridge.process.pid), bridge_cpu()
        bridge_runs = call_steps(ctx, "bridge", f"127.0.0.1:{bridge.sip}", bridge_cpu, bridge)
        tree_used = bridge_cpu() - tree_before
        if tree_used > 0:
            loop_share = (proc_ticks(bridge.process.pid) - loop_before) / tree_used
            print(
                f"   of the bridge's CPU in these steps: the daemon's process {loop_share:.0%}, "
                f"its events worker {1 - loop_share:.0%}"
            )
        bridge_pass, bridge_clean = best_zero_failure(bridge_runs)
        print()

        spy = py_spy_path() if args.profile else None
        # Calls left live by the overloaded steps keep their users "on a call": the rest runs
        # on a new bridge (and phones), so the profile and the registrations start clean.
        stuck = bridge.metric("bridge_live_calls") or 0.0
        print(f"calls still live in the bridge after the steps: {stuck:.0f}")
        if stuck and args.linger > 0:
            # Are they stuck, or still finishing (ringing legs waiting for Timer B or the
            # layer timeout, 2xx re-sent until 64*T1)? Watch them for a while.
            counts = []
            started = time.monotonic()
            while time.monotonic() - started < args.linger and stuck:
                time.sleep(5.0)
                stuck = bridge.metric("bridge_live_calls") or 0.0
                counts.append(f"{time.monotonic() - started:.0f}s: {stuck:.0f}")
            print(f"  live calls afterwards: {', '.join(counts)}")
        for uas, _, _ in phones:
            procs.stop(uas)
        procs.stop(bridge.process)
        bridge, phones = start_stack(ctx, folder / "stack-2", phones_users)
        pid = bridge.process.pid
        print()
        if args.profile and spy is None:
            print("(--profile: py-spy not found; .venv/bin/pip install py-spy)")
        if spy is not None:
            rate = bridge_pass or (args.steps[0] if args.steps else 50)
            calls = int(rate * (args.profile_seconds + 2))
            print(f"== profile of the bridge: py-spy, {args.profile_seconds:g} s at {rate} calls/s")
            profile_under_load(
                ctx,
                spy,
                pid,
                "calls",
                lambda: load_step(
                    ctx,
                    "profile-calls",
                    "trunk_uac.xml",
                    f"127.0.0.1:{bridge.sip}",
                    rate,
                    calls,
                    max(100, rate),
                    ["-s", LINE, "-d", str(args.talk_ms)],
                    bridge_cpu,
                    bridge,
                ),
            )
            print()

        print(
            f"== REGISTER with digest (MD5, qop=auth) as user {REG_USER[1]}, from one SIPp: "
            "each registration = REGISTER, 401, REGISTER, 200"
        )
        print("   (p50/p99/max: the whole registration, whole ms)")
        wait_idle(bridge.process.pid)
        reg_runs = register_steps(ctx, bridge, bridge_cpu)
        reg_best = max((r.achieved for r in reg_runs if r.bad == 0 and r.achieved), default=None)
        print()
        if spy is not None:
            print(
                f"== profile of the bridge: py-spy, {args.profile_seconds:g} s of flat-out "
                "registrations"
            )
            count = int((args.profile_seconds + 2) * (reg_best or 1000))
            profile_under_load(
                ctx,
                spy,
                pid,
                "register",
                lambda: load_step(
                    ctx,
                    "profile-register",
                    "register.xml",
                    f"127.0.0.1:{bridge.sip}",
                    100000,
                    count,
                    64,
                    REG_ARGS,
                    bridge_cpu,
                    None,
                    timeout=3 * args.profile_seconds + 20,
                ),
                label="max",
            )
            print()

        kam_runs: list[SippRun] = []
        if args.no_kamailio:
            print("== Kamailio column skipped (--no-kamailio)")
        elif kamailio is None:
            print(
                "== Kamailio column skipped: kamailio is not installed "
                "(Debian: apt-get install -y kamailio)"
            )
        else:
            wait_idle(bridge.process.pid)
            kam, kport = start_kamailio(procs, folder, phones[0][1])
            print(
                f"== calls through Kamailio (stateful record-routing proxy, children=1), "
                f"trunk -> 127.0.0.1:{kport} -> phone UAS 127.0.0.1:{phones[0][1]}"
            )
            kam_runs = call_steps(
                ctx, "kamailio", f"127.0.0.1:{kport}", lambda: tree_ticks(kam.pid), None
            )
            procs.stop(kam)
            print()

        for _uas, port, workdir in phones:
            stat = read_stat(workdir / "uas-stat.csv")
            print(
                f"phone UAS :{port}: {stat.get('IncomingCall(C)', '?')} calls in, "
                f"{stat.get('SuccessfulCall(C)', '?')} ok, {stat.get('FailedCall(C)', '?')} "
                f"failed"
            )
        print()

        print("== summary")
        p99 = {
            rate: (percentile(r.rtd1, 99) if (r := run_at(bridge_runs, rate)) else None)
            for rate in (100, TARGET_P99_AT)
        }
        at_target = run_at(bridge_runs, TARGET_P99_AT)
        how = (
            f" (asked {TARGET_P99_AT}/s, got {fmt(at_target.achieved, '.0f')}/s, "
            f"{at_target.bad} failed)"
            if at_target is not None and not at_target.passed
            else ""
        )
        print(
            f"bridge: max zero-failure CPS (step reached): {fmt(bridge_pass, 'g', 'none')}"
            f"   -> {ratio(bridge_pass, TARGET_CPS)} ({TARGET_CPS:g} calls/s)"
        )
        print(
            f"        best zero-failure throughput achieved: {fmt(bridge_clean, '.0f', 'none')}"
            " calls/s"
        )
        print(
            f"        setup p99 at 100 CPS: {ms(p99[100])}; "
            f"at {TARGET_P99_AT} CPS: {ms(p99[TARGET_P99_AT])}{how}"
            f"   -> {ratio(p99[TARGET_P99_AT], TARGET_P99_MS, lower_is_better=True)} "
            f"(< {TARGET_P99_MS:g} ms at {TARGET_P99_AT} CPS)"
        )
        cpu = [r.cpu_per_call for r in bridge_runs if r.cpu_per_call]
        if cpu:
            print(
                f"        CPU per call: {min(cpu):.2f}-{max(cpu):.2f} ms "
                f"(median {statistics.median(cpu):.2f}){busiest(bridge_runs, 'calls')}"
            )
        print(
            f"registrations: max zero-failure {fmt(reg_best, '.0f', 'none')}/s"
            f"   -> {ratio(reg_best, TARGET_REGS)} ({TARGET_REGS:g}/s)"
        )
        reg_cpu = [r.cpu_per_call for r in reg_runs if r.cpu_per_call]
        if reg_cpu:
            print(
                f"        CPU per registration: median {statistics.median(reg_cpu):.2f} ms"
                f"{busiest(reg_runs, 'registrations')}"
            )
        if kam_runs:
            kam_pass, kam_clean = best_zero_failure(kam_runs)
            kcpu = [r.cpu_per_call for r in kam_runs if r.cpu_per_call]
            print(
                f"kamailio: max zero-failure CPS (step reached): {fmt(kam_pass, 'g', 'none')}; "
                f"best achieved {fmt(kam_clean, '.0f', 'none')}/s; CPU per call median "
                f"{fmt(statistics.median(kcpu) if kcpu else None, '.3f')} ms"
            )
            if kam_pass is not None and kam_pass == max(args.steps):
                print("          (Kamailio passed the highest step: its real maximum is higher)")
            if bridge_pass and kam_pass:
                print(f"bridge/kamailio max CPS: {bridge_pass / kam_pass:.2f}")
            pairs = [
                (b.cpu_per_call, k.cpu_per_call)
                for b in bridge_runs
                if (k := run_at(kam_runs, b.rate)) and b.cpu_per_call and k.cpu_per_call
            ]
            if pairs:
                ratios = [b / k for b, k in pairs]
                print(
                    f"bridge/kamailio CPU per call (same steps): median "
                    f"{statistics.median(ratios):.1f} x (range {min(ratios):.1f}-"
                    f"{max(ratios):.1f})"
                )
        step = clock_step([*bridge_runs, *reg_runs, *kam_runs])
        if step:
            print(
                f"SIPp's response times came in steps of {step:g} ms here (its clock), "
                "so its p50/p99 are to that step"
            )
        print(uvloop_line(pid))
        print(
            f"load average at end: {os.getloadavg()[0]:.2f}; "
            f"run took {time.monotonic() - ctx.started:.0f} s"
        )
        if args.keep:
            print(f"work folder kept: {folder}")
        return 0
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
