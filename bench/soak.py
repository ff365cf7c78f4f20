"""Soak (issue 18, point 7): an hour of calls at half the clean maximum, with every desk phone
re-registering every minute; the bridge's memory, file descriptors, asyncio tasks and SIP
transactions must stay flat after a warm-up, and no call may be lost.

    .venv/bin/python bench/soak.py [--seconds 3600] [--rate 150] [--users N]
                                   [--register-every 60] [--sample-every 10] [--warmup S]
                                   [--talk-ms 20] [--src DIR] [--no-pin] [--keep]
                                   [--quick] [--json FILE]

The stack is bench/sip_cps.py's (`bridge run` as shipped, on free loopback ports: media
anchored, events stored by its worker, the overload control at its defaults; a directory of
--users desk-phone users in one round-robin ring group on +15550100, so one phone rings per
call), with two differences for a long run:

- **Phones**: one SIPp per user (SIPp 3.6 can only authenticate as one user per process:
  bench/sipp/register.xml explains why), on the port the user first registered from (the
  bridge sends calls to the address a REGISTER came from). Each runs
  bench/sipp/phone_reregister.xml as a loop, `-r 1 -rp <--register-every>`: a full digest
  registration (REGISTER, 401, REGISTER, 200) every period, asking for --expires seconds (by
  default twice the period, at least the registrar's 60), the phones' phases spread over
  the period; and it answers the calls the bridge sends it as out-of-call messages with
  bench/sipp/phone_uas.xml (200 at once, ACK, BYE, 200). A refresh that fails shows in the
  phones' counts; two in a row would drop the binding (`bridge_sip_registrations` is sampled).
  --users defaults to 3 x (rate x hold time), hold = --talk-ms + 30 ms, at least 10: a user
  is rung every users/rate seconds, well after their last call ended.
- **Trunk**: one SIPp UAC (bench/sipp/trunk_uac.xml: INVITE, 200, ACK, --talk-ms, BYE, 200)
  at --rate for --seconds (`-m rate x seconds`).

Every --sample-every seconds it samples the bridge process: resident memory (VmRSS of
/proc/<pid>/status), open file descriptors (/proc/<pid>/fd), asyncio tasks (the daemon's
`bridge_event_loop_tasks` gauge), SIP transactions (`bridge_sip_transactions`), live calls,
registrations, its CPU; the events worker's RSS (the daemon's `bridge.events.worker` child);
the trunk's progress and the set-up times (INVITE -> 200, SIPp's) of the calls in the window;
the CPU of the SIPp processes, and of everything else on the machine (`other%`: other work
skews every figure, and the windows in which calls failed or were refused are listed with it).
After the trunk's last call it watches the bridge settle (live calls, transactions) for
--drain seconds.

At the end it prints the samples, then for each series after the warm-up (--warmup, 10 % of
the run by default) the least-squares slope per hour, the growth over the window (slope x
window) relative to the mean, the means of the first and the last tenth of the window, and a
verdict: **flat** when both the growth and the last tenth's change from the first tenth are
within 5 % of the series' mean (or, for small counts, within a few units: 2 fds, 3 tasks,
2 live calls, 10 transactions); otherwise GROWS or falls. Then the calls (asked, attempted,
completed, failed, unfinished: "no call lost" is failed = 0 and every call asked started and
finished), the registrations (sent, ok, failed), the bridge's admission counters (the
overload control must refuse nothing at this rate), the collector's full collections and
their pauses (`bridge_gc_full_*`, the one long pause by design) and the warnings and errors
it logged.
It asserts nothing and exits 0 unless the harness itself broke. Bounded: --seconds plus about
a minute (start, drain); every process it starts is stopped by its process group at the end.
With two cores or more the bridge runs alone on the first, SIPp, the events worker and this
script on the others (--no-pin: no affinity). `--quick`: a ~15 s smoke run at 20 calls/s
(tests/sip/test_bench_soak.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import events as events_bench  # noqa: E402  (bench/events.py: the events worker's pid)
import sip_cps  # noqa: E402
from sip_cps import (  # noqa: E402
    CLK_TCK,
    LINE,
    REG_USER,
    SIPP_DIR,
    Bridge,
    Processes,
    SippRun,
    fmt,
    percentile,
    proc_ticks,
    read_stat,
)

TOLERANCE = 0.05  # growth, and last tenth vs first tenth, as a share of the mean
# (key, label, absolute slack: what a count may move without being a trend)
SERIES: list[tuple[str, str, float]] = [
    ("rss_mib", "bridge RSS (MiB)", 0.0),
    ("worker_rss_mib", "events worker RSS (MiB)", 0.0),
    ("fds", "bridge open fds", 2.0),
    ("tasks", "asyncio tasks", 3.0),
    ("transactions", "SIP transactions", 10.0),
    ("live_calls", "live calls", 2.0),
]
# Shown with their slope, no verdict: they move with the load, not with leaks.
INFO_SERIES: list[tuple[str, str]] = [
    ("cpu_pct", "bridge CPU (% of a core)"),
    ("setup_p99_ms", "set-up p99 in the window (ms)"),
    ("outbox_mib", "outbox on disk (MiB)"),
]


# -- the phones ------------------------------------------------------------------------------
@dataclass
class Phone:
    user: tuple[str, str, str]
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None


def start_phones(
    procs: Processes,
    folder: Path,
    bridge: Bridge,
    users: list[tuple[str, str, str]],
    period: float,
    expires: int,
    refreshes: int,
) -> list[Phone]:
    """Register every user once from a port of its own (sip_cps.register_users), then start
    the user's phone there: a SIPp refreshing the registration every `period` s (its phase
    spread over the period) and answering calls (out-of-call scenario)."""
    phones = [Phone(user, sip_cps.free_port(), folder / f"phone-{user[1]}") for user in users]
    for phone in phones:
        phone.workdir.mkdir(parents=True)
    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = list(
            pool.map(
                lambda p: sip_cps.register_users(p.workdir, p.port, [p.user], bridge.sip), phones
            )
        )
    for problem in problems:
        if problem:
            raise SystemExit(problem)
    period_ms = round(period * 1000)
    for index, phone in enumerate(phones):
        _, username, password = phone.user
        phone.process = procs.start(
            [
                "sipp",
                "-sf",
                str(SIPP_DIR / "phone_reregister.xml"),
                "-oocsf",
                str(SIPP_DIR / "phone_uas.xml"),
                "-i",
                "127.0.0.1",
                "-p",
                str(phone.port),
                "-s",
                username,
                "-au",
                username,
                "-ap",
                password,
                "-key",
                "expires",
                str(expires),
                "-d",
                str(index * period_ms // len(phones)),  # the phase: the pause before REGISTER
                "-r",
                "1",
                "-rp",
                str(period_ms),
                "-m",
                str(refreshes),
                "-nostdin",
                "-trace_stat",
                "-stf",
                str(phone.workdir / "stat.csv"),
                "-fd",
                str(max(1, round(period))),
                # Every call it answers logs a line ("out-of-call INVITE"): a bounded file.
                "-trace_err",
                "-error_file",
                str(phone.workdir / "errors.log"),
                "-max_log_size",
                "1000000",
                f"127.0.0.1:{bridge.sip}",
            ],
            cwd=phone.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    time.sleep(0.5)
    for phone in phones:
        assert phone.process is not None
        if phone.process.poll() is not None:
            raise SystemExit(f"the phone on port {phone.port} exited ({phone.process.returncode})")
    return phones


def phone_counts(phones: list[Phone]) -> dict[str, Any]:
    """Sum of the phones' SIPp statistics: refreshes (the main scenario) and calls answered
    (out-of-call scenario runs, `AutoAnswered`)."""
    total = {"started": 0, "ok": 0, "failed": 0, "answered": 0}
    kinds: dict[str, int] = {}
    for phone in phones:
        stat = read_stat(phone.workdir / "stat.csv")

        def num(key: str, stat: dict[str, str] = stat) -> int:
            try:
                return int(float(stat.get(key, "0") or 0))
            except ValueError:
                return 0

        total["started"] += num("OutgoingCall(C)")
        total["ok"] += num("SuccessfulCall(C)")
        total["failed"] += num("FailedCall(C)")
        total["answered"] += num("AutoAnswered(C)")
        for key in stat:
            failure = key.startswith("Failed") and key.endswith("(C)") and key != "FailedCall(C)"
            if failure and num(key):
                name = key[len("Failed") : -3]
                kinds[name] = kinds.get(name, 0) + num(key)
    return {**total, "failure_kinds": kinds}


# -- sampling --------------------------------------------------------------------------------
def scrape(bridge: Bridge) -> dict[str, float]:
    """Every sample of one /metrics scrape, by `name{labels}`."""
    found: dict[str, float] = {}
    for line in bridge.metrics().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                found[name] = float(value)
    return found


def admission(metrics: dict[str, float]) -> dict[str, float]:
    """bridge_sip_admission_total as {"kind:outcome": count}."""
    found = {}
    for name, value in metrics.items():
        if name.startswith("bridge_sip_admission_total{"):
            kind = name.split('kind="')[1].split('"')[0]
            outcome = name.split('outcome="')[1].split('"')[0]
            found[f"{kind}:{outcome}"] = value
    return found


def vm_rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime of each process still there."""
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            found[pid] = proc_ticks(pid)
    return found


def used(now: dict[int, int], before: dict[int, int]) -> int:
    """Ticks processes used between two `ticks` (a process gone or new is left out)."""
    return sum(count - before[pid] for pid, count in now.items() if pid in before)


def cpu_pct(now: dict[int, int], before: dict[int, int], wall: float) -> float:
    """CPU of processes between two `ticks`, % of one core."""
    return round(used(now, before) / CLK_TCK / wall * 100, 1)


def machine_busy() -> int:
    """Busy ticks of all the machine's CPUs (/proc/stat: all but idle and iowait)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:9]]
        return sum(values) - values[3] - values[4]
    return 0


@dataclass
class Sampler:
    """Takes the samples: the bridge's process and metrics, the trunk's progress, and the
    set-up times SIPp wrote since the last sample (its -trace_rtt file, read as it grows)."""

    bridge: Bridge
    trunk_dir: Path
    sipp_pids: list[int]
    started: float
    last_at: float = 0.0
    last_ticks: dict[int, int] = field(default_factory=dict)
    last_sipp_ticks: dict[int, int] = field(default_factory=dict)
    last_ours: dict[int, int] = field(default_factory=dict)  # every process of the soak's
    last_busy: int = 0
    rtt_offset: int = 0
    setups_ms: list[float] = field(default_factory=list)  # every set-up, in order
    worker: int | None = None
    workers_seen: list[int] = field(default_factory=list)
    # The collector policy's full collections seen: (t, pause in ms) from its metrics.
    gc_full: list[tuple[float, float | None]] = field(default_factory=list)
    gc_full_seen: float = 0.0

    def __post_init__(self) -> None:
        self.last_at = time.monotonic()
        self.last_ticks = ticks([self.bridge.process.pid])
        self.last_sipp_ticks = ticks(self.sipp_pids)
        self.last_ours, self.last_busy = ticks(self.ours()), machine_busy()

    def ours(self) -> list[int]:
        worker = events_bench.events_worker(self.bridge.process.pid)
        extra = [worker] if worker is not None else []
        return [self.bridge.process.pid, os.getpid(), *self.sipp_pids, *extra]

    def new_setups(self) -> list[float]:
        files = sorted(self.trunk_dir.glob("*_rtt.csv"))
        if not files:
            return []
        with files[0].open("rb") as f:
            f.seek(self.rtt_offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.rtt_offset += end
        found = []
        for line in data[:end].decode(errors="replace").splitlines():
            parts = line.split(";")
            if len(parts) >= 3 and parts[0][:1].isdigit() and parts[2].strip() == "1":
                with contextlib.suppress(ValueError):
                    found.append(float(parts[1]))
        self.setups_ms.extend(found)
        return found

    def take(self) -> dict[str, Any]:
        pid = self.bridge.process.pid
        now = time.monotonic()
        sample: dict[str, Any] = {"t": round(now - self.started, 1)}
        try:
            metrics = scrape(self.bridge)
        except OSError:
            metrics = {}
        worker = events_bench.events_worker(pid)
        if worker is not None and worker not in self.workers_seen:
            self.workers_seen.append(worker)
        self.worker = worker
        bridge_ticks, sipp_ticks = ticks([pid]), ticks(self.sipp_pids)
        ours, busy = ticks(self.ours()), machine_busy()
        others = (busy - self.last_busy) - used(ours, self.last_ours)
        wall = max(now - self.last_at, 1e-6)
        trunk = read_stat(self.trunk_dir / "stat.csv")
        window = self.new_setups()

        def trunk_num(key: str) -> int | None:
            with contextlib.suppress(ValueError, TypeError):
                return int(float(trunk[key]))
            return None

        refused = sum(v for k, v in admission(metrics).items() if not k.endswith(":admitted"))
        outbox = metrics.get("bridge_outbox_bytes")
        full = metrics.get("bridge_gc_full_collections_total")
        if full is not None and full > self.gc_full_seen:
            # (at most one a window: they come 10 minutes apart or more)
            self.gc_full_seen = full
            pause = metrics.get("bridge_gc_full_last_seconds")
            self.gc_full.append((sample["t"], pause * 1000 if pause is not None else None))
        full = metrics.get("bridge_gc_full_collections_total")
        if full is not None and full > self.gc_full_seen:
            # (at most one a window: they come 10 minutes apart or more)
            self.gc_full_seen = full
            pause = metrics.get("bridge_gc_full_last_seconds")
            self.gc_full.append((sample["t"], pause * 1000 if pause is not None else None))
        sample.update(
            rss_mib=vm_rss_mib(pid),
            worker_rss_mib=vm_rss_mib(worker),
            fds=open_fds(pid),
            tasks=metrics.get("bridge_event_loop_tasks"),
            transactions=metrics.get("bridge_sip_transactions"),
            live_calls=metrics.get("bridge_live_calls"),
            registrations=metrics.get("bridge_sip_registrations"),
            refused=refused if metrics else None,
            cpu_pct=cpu_pct(bridge_ticks, self.last_ticks, wall),
            sipp_cpu_pct=cpu_pct(sipp_ticks, self.last_sipp_ticks, wall),
            # CPU the rest of the machine used (other work skews every figure), and the load
            others_pct=round(max(0, others) / CLK_TCK / wall * 100, 1),
            load1=os.getloadavg()[0],
            outbox_mib=outbox / 2**20 if outbox is not None else None,
            calls_attempted=trunk_num("OutgoingCall(C)"),
            calls_ok=trunk_num("SuccessfulCall(C)"),
            calls_failed=trunk_num("FailedCall(C)"),
            setups=len(window),
            setup_p50_ms=percentile(window, 50),
            setup_p99_ms=percentile(window, 99),
        )
        self.last_at, self.last_ticks, self.last_sipp_ticks = now, bridge_ticks, sipp_ticks
        self.last_ours, self.last_busy = ours, busy
        return sample


# -- analysis --------------------------------------------------------------------------------
def trend(points: list[tuple[float, float]], slack: float) -> dict[str, Any] | None:
    """Least-squares slope per hour of (seconds, value) points, the growth over their window
    relative to the mean, first and last tenth, and the verdict (module docstring)."""
    if len(points) < 3:
        return None
    hours = [t / 3600 for t, _ in points]
    values = [v for _, v in points]
    mean_h, mean_v = statistics.fmean(hours), statistics.fmean(values)
    spread = sum((h - mean_h) ** 2 for h in hours)
    if spread == 0:
        return None
    slope = sum((h - mean_h) * (v - mean_v) for h, v in zip(hours, values, strict=True)) / spread
    window = hours[-1] - hours[0]
    growth = slope * window
    tenth = max(1, len(values) // 10)
    first, last = statistics.fmean(values[:tenth]), statistics.fmean(values[-tenth:])
    allowed = max(TOLERANCE * abs(mean_v), slack)
    flat = abs(growth) <= allowed and abs(last - first) <= allowed
    return {
        "samples": len(values),
        "window_s": round(window * 3600),
        "mean": mean_v,
        "min": min(values),
        "max": max(values),
        "slope_per_hour": slope,
        "growth": growth,
        "relative": growth / mean_v if mean_v else None,
        "first_tenth": first,
        "last_tenth": last,
        "allowed": allowed,
        "verdict": "flat" if flat else ("GROWS" if max(growth, last - first) > 0 else "falls"),
    }


def trends(samples: list[dict[str, Any]], warmup: float) -> dict[str, dict[str, Any] | None]:
    after = [s for s in samples if s["t"] >= warmup]
    found: dict[str, dict[str, Any] | None] = {}
    for key, _, slack in SERIES:
        found[key] = trend([(s["t"], s[key]) for s in after if s.get(key) is not None], slack)
    for key, _ in INFO_SERIES:
        found[key] = trend([(s["t"], s[key]) for s in after if s.get(key) is not None], 0.0)
        if found[key] is not None:
            found[key]["verdict"] = "-"  # type: ignore[index]
    return found


def trouble_windows(samples: list[dict[str, Any]]) -> list[str]:
    """The sample windows in which calls failed or were refused, with the machine's other
    work in them."""
    lines = []
    previous = {"calls_failed": 0, "refused": 0}
    for sample in samples:
        failed = (sample.get("calls_failed") or 0) - (previous.get("calls_failed") or 0)
        refused = (sample.get("refused") or 0) - (previous.get("refused") or 0)
        if failed > 0 or refused > 0:
            lines.append(
                f"t={sample['t']:.0f}s: {failed:.0f} calls failed, {refused:.0f} refused by the "
                f"bridge; other work {fmt(sample.get('others_pct'), '.0f')}% of a core, set-up "
                f"p99 {fmt(sample.get('setup_p99_ms'), '.0f')} ms"
            )
        previous = sample
    return lines


def log_levels(path: Path) -> dict[str, Any]:
    """Warnings and errors the bridge logged (JSON lines), by event."""
    levels: dict[str, int] = {}
    events: dict[str, int] = {}
    with contextlib.suppress(OSError), path.open(errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                levels["(not json)"] = levels.get("(not json)", 0) + 1
                continue
            level = str(entry.get("level", "?"))
            levels[level] = levels.get(level, 0) + 1
            if level in ("warning", "error", "critical"):
                key = f"{level}:{entry.get('event', '?')}"
                events[key] = events.get(key, 0) + 1
    return {"levels": levels, "events": dict(sorted(events.items(), key=lambda x: -x[1]))}


# -- printing --------------------------------------------------------------------------------
def sample_table(samples: list[dict[str, Any]]) -> list[str]:
    head = (
        f"{'t s':>7} {'rss':>7} {'worker':>7} {'fds':>5} {'tasks':>6} {'trans':>6} "
        f"{'live':>5} {'regs':>5} {'cpu%':>5} {'sipp%':>6} {'other%':>6} {'p50':>5} {'p99':>5} "
        f"{'calls ok':>9} {'failed':>6} {'refused':>7}"
    )
    units = (
        f"{'':>7} {'MiB':>7} {'MiB':>7} {'':>5} {'':>6} {'':>6} {'':>5} {'':>5} {'':>5} "
        f"{'':>6} {'':>6} {'ms':>5} {'ms':>5}"
    )
    lines = [head, units]
    for s in samples:
        lines.append(
            f"{s['t']:>7.0f} {fmt(s['rss_mib']):>7} {fmt(s['worker_rss_mib']):>7} "
            f"{fmt(s['fds'], '.0f'):>5} {fmt(s['tasks'], '.0f'):>6} "
            f"{fmt(s['transactions'], '.0f'):>6} {fmt(s['live_calls'], '.0f'):>5} "
            f"{fmt(s['registrations'], '.0f'):>5} {fmt(s['cpu_pct'], '.0f'):>5} "
            f"{fmt(s['sipp_cpu_pct'], '.0f'):>6} {fmt(s['others_pct'], '.0f'):>6} "
            f"{fmt(s['setup_p50_ms'], '.0f'):>5} "
            f"{fmt(s['setup_p99_ms'], '.0f'):>5} {fmt(s['calls_ok'], '.0f'):>9} "
            f"{fmt(s['calls_failed'], '.0f'):>6} {fmt(s['refused'], '.0f'):>7}"
        )
    return lines


def trend_table(found: dict[str, dict[str, Any] | None]) -> list[str]:
    lines = [
        f"{'series':<30} {'mean':>9} {'min':>9} {'max':>9} {'slope/h':>9} {'growth':>9} "
        f"{'rel':>7} {'1st 10%':>9} {'last 10%':>9}  verdict"
    ]
    labels = [(k, label) for k, label, _ in SERIES] + INFO_SERIES
    for key, label in labels:
        t = found.get(key)
        if t is None:
            lines.append(f"{label:<30} (no samples)")
            continue
        rel = "-" if t["relative"] is None else f"{t['relative'] * 100:+.1f}%"
        lines.append(
            f"{label:<30} {t['mean']:>9.1f} {t['min']:>9.1f} {t['max']:>9.1f} "
            f"{t['slope_per_hour']:>+9.2f} {t['growth']:>+9.2f} {rel:>7} "
            f"{t['first_tenth']:>9.1f} {t['last_tenth']:>9.1f}  {t['verdict']}"
        )
    return lines


# -- main ------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3600.0, help="length (default 1 h)")
    parser.add_argument(
        "--rate", type=float, default=150.0, help="calls/s (default 150: half of 300)"
    )
    parser.add_argument("--users", type=int, default=None, help="desk phones (default: derived)")
    parser.add_argument("--talk-ms", type=int, default=20, help="ACK to BYE (default 20 ms)")
    parser.add_argument(
        "--register-every", type=float, default=60.0, help="refresh period, s (default 60)"
    )
    parser.add_argument(
        "--expires", type=int, default=None, help="Expires asked (default 2 x period, >= 60)"
    )
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds left out of the slopes (10%%)"
    )
    parser.add_argument(
        "--drain", type=float, default=40.0, help="seconds to watch the bridge settle after"
    )
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    parser.add_argument("--src", type=Path, default=None, help="run the bridge from this folder")
    parser.add_argument("--quick", action="store_true", help="a ~15 s smoke run")
    parser.add_argument("--json", type=Path, default=None, help="write samples and results")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rate, args.users = 7.0, 20.0, args.users or 6
        args.register_every, args.sample_every, args.drain = 2.5, 1.0, 2.0
    if args.users is None:
        hold = (args.talk_ms + 30) / 1000
        args.users = max(10, math.ceil(3 * args.rate * hold))
    if args.expires is None:
        args.expires = max(60, round(2 * args.register_every))
    if args.warmup is None:
        args.warmup = 0.1 * args.seconds
    return args


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM too stops every process started (the finally below)


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupted)
    args = parse_args()
    if shutil.which("sipp") is None:
        print("sipp is not installed (Debian sip-tester): nothing to measure", file=sys.stderr)
        return 2
    begun = time.monotonic()
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    report["machine"] = sip_cps.machine_lines()
    for line in report["machine"]:
        print(line)
    print(sip_cps.pin_cores(not args.no_pin))
    print(sip_cps.code_line(args.src))
    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    procs = Processes()
    try:
        stack = folder / "stack"
        stack.mkdir()
        users = sip_cps.phone_users(args.users)
        bridge = sip_cps.start_bridge(
            procs, stack, sip_cps.bench_directory(users, [REG_USER]), args.src
        )
        pid = bridge.process.pid
        print(f"bridge pid {pid}: SIP udp 127.0.0.1:{bridge.sip}, http 127.0.0.1:{bridge.http}")
        print(sip_cps.uvloop_line(pid))
        print(events_bench.pin_worker(pid))
        refreshes = int((args.seconds + 600) / args.register_every) + 2
        phones = start_phones(
            procs, folder, bridge, users, args.register_every, args.expires, refreshes
        )
        deadline = time.monotonic() + 15
        while bridge.metric("bridge_sip_registrations") != len(users):
            if time.monotonic() > deadline:
                raise SystemExit("the phones did not all register")
            time.sleep(0.1)
        calls = round(args.rate * args.seconds)
        print(
            f"{len(users)} desk phones (one SIPp each), re-registering every "
            f"{args.register_every:g} s (Expires {args.expires}); trunk: {calls} calls at "
            f"{args.rate:g}/s for {args.seconds:g} s, talk {args.talk_ms} ms; a sample every "
            f"{args.sample_every:g} s; warm-up {args.warmup:g} s",
            flush=True,
        )
        before = scrape(bridge)
        drops = sip_cps.udp_drops()
        trunk_dir = folder / "trunk"
        trunk_dir.mkdir()
        command = sip_cps.uac_command(
            trunk_dir,
            "trunk_uac.xml",
            f"127.0.0.1:{bridge.sip}",
            args.rate,
            calls,
            max(1000, int(args.rate * 10)),
            ["-s", LINE, "-d", str(args.talk_ms), "-fd", str(max(1, round(args.sample_every)))],
            timeout=args.seconds + 30,
        )
        started = time.monotonic()
        with (trunk_dir / "screen.txt").open("wb") as screen:
            trunk = procs.start(command, cwd=trunk_dir, stdout=screen, stderr=subprocess.STDOUT)
        sipp_pids = [trunk.pid, *(p.process.pid for p in phones if p.process is not None)]
        sampler = Sampler(bridge, trunk_dir, sipp_pids, started)
        samples: list[dict[str, Any]] = []
        notes: list[str] = []
        next_at = started + args.sample_every
        limit = started + args.seconds + 60
        while trunk.poll() is None:
            now = time.monotonic()
            if bridge.process.poll() is not None:
                notes.append(
                    f"the bridge EXITED ({bridge.process.returncode}) at t={now - started:.0f} s"
                )
                break
            if now >= limit:
                notes.append("the trunk was stopped at the harness's deadline")
                break
            if now >= next_at:
                sample = sampler.take()
                samples.append(sample)
                next_at += args.sample_every
                if len(samples) % max(1, round(60 / args.sample_every)) == 0:
                    print(
                        f"  t={sample['t']:.0f}s rss {fmt(sample['rss_mib'])} MiB, fds "
                        f"{sample['fds']}, tasks {fmt(sample['tasks'], '.0f')}, transactions "
                        f"{fmt(sample['transactions'], '.0f')}, calls ok "
                        f"{sample['calls_ok']}, failed {sample['calls_failed']}",
                        flush=True,
                    )
            time.sleep(max(0.05, min(0.5, next_at - time.monotonic())))
        procs.stop(trunk)
        wall = time.monotonic() - started
        # After the last call: does the bridge settle (no live call; transactions wound down)?
        # These samples are shown, not part of the slopes (the load has stopped).
        drain: list[dict[str, Any]] = []
        if bridge.process.poll() is None:
            drain.append(sampler.take())
        drain_started = time.monotonic()
        while bridge.process.poll() is None and time.monotonic() - drain_started < args.drain:
            time.sleep(min(5.0, args.drain))
            drain.append(sampler.take())
            if drain[-1]["live_calls"] == 0 and (drain[-1]["transactions"] or 0) <= len(users):
                break
        after = scrape(bridge) if bridge.process.poll() is None else {}
        for phone in phones:  # SIGTERM: SIPp writes its last statistics line and exits
            if phone.process is not None:
                procs.stop(phone.process)
        run = sip_cps.read_uac(trunk_dir, SippRun(asked=calls, rate=args.rate, wall=wall))
        refreshes_done = phone_counts(phones)
        bridge_log = log_levels(stack / "bridge.log")
        admitted = {
            k: int(v - admission(before).get(k, 0))
            for k, v in admission(after).items()
            if v - admission(before).get(k, 0)
        }
        outcomes: dict[str, int] = {}
        for name, value in after.items():
            if name.startswith("bridge_calls_total{") and value - before.get(name, 0):
                outcome = name.split('outcome="')[1].split('"')[0]
                outcomes[outcome] = outcomes.get(outcome, 0) + int(value - before.get(name, 0))
        udp = sip_cps.udp_drops() - drops

        # -- the report ----------------------------------------------------------------------
        print()
        print(f"== samples (t: seconds since the trunk started; warm-up until {args.warmup:g} s)")
        for line in sample_table(samples):
            print("  " + line)
        if drain:
            print(f"== after the last call (watched up to {args.drain:g} s)")
            for line in sample_table(drain)[2:]:
                print("  " + line)
        found = trends(samples, args.warmup)
        print()
        window = next((t for t in found.values() if t), None)
        print(
            f"== after the warm-up ({window['samples'] if window else 0} samples over "
            f"{window['window_s'] if window else 0} s): least-squares slope per hour, growth over "
            f"the window (slope x window), relative to the mean; flat = growth and "
            f"last-vs-first tenth within {TOLERANCE:.0%} of the mean (or a few units)"
        )
        for line in trend_table(found):
            print("  " + line)
        leaks = [k for k, _, _ in SERIES if (found.get(k) or {}).get("verdict") == "GROWS"]
        print()
        lost = run.failed + run.unfinished + max(0, run.asked - run.attempted)
        print(
            f"== calls: asked {run.asked}, attempted {run.attempted}, completed "
            f"{run.succeeded}, failed {run.failed}"
            + (f" {run.failure_kinds}" if run.failure_kinds else "")
            + f", unfinished {run.unfinished}; retransmissions {run.retransmissions}; "
            f"achieved {fmt(run.achieved)}/s over {wall:.0f} s"
        )
        print(
            f"   no call lost: {'yes' if lost == 0 else f'NO ({lost} lost)'}; set-up (SIPp, "
            f"INVITE -> 200) p50 {fmt(percentile(run.rtd1, 50), '.0f')} ms, p99 "
            f"{fmt(percentile(run.rtd1, 99), '.0f')} ms, max "
            f"{fmt(max(run.rtd1) if run.rtd1 else None, '.0f')} ms; phones answered "
            f"{refreshes_done['answered']}; bridge call outcomes {outcomes}"
        )
        sent = len(users) + refreshes_done["started"]
        under_way = refreshes_done["started"] - refreshes_done["ok"] - refreshes_done["failed"]
        print(
            f"== registrations: {sent} sent ({len(users)} at start + {refreshes_done['started']} "
            f"refreshes), ok {len(users) + refreshes_done['ok']}, failed "
            f"{refreshes_done['failed']}"
            + (f" {refreshes_done['failure_kinds']}" if refreshes_done["failure_kinds"] else "")
            + f", under way at the end {under_way}; bindings sampled: "
            f"{sorted({s['registrations'] for s in samples})}"
        )
        refused = {k: v for k, v in admitted.items() if not k.endswith(":admitted")}
        print(
            f"== overload control (bridge_sip_admission_total during the run): {admitted}; "
            f"refusals: {sum(refused.values()) if refused else 'none'}"
        )
        print(
            f"== bridge log (level warning and up): {bridge_log['levels']}; events: "
            f"{dict(list(bridge_log['events'].items())[:8])}"
        )
        print(
            "== the collector's full collections (bridge_gc_full_*; the one long pause, 10 min"
            " after start, then every 20-60 min while they find little): "
            + (", ".join(f"t={t:.0f}s {fmt(ms, '.1f')} ms" for t, ms in sampler.gc_full) or "none")
        )
        print(
            f"== events worker pids seen: {sampler.workers_seen or 'none'}; UDP receive-buffer "
            f"drops (whole machine): {udp}"
        )
        others = [x["others_pct"] for x in samples if x.get("others_pct") is not None]
        if others:
            print(
                f"== other work on the machine (CPU outside the soak's processes, % of one core): "
                f"mean {statistics.fmean(others):.0f}, max {max(others):.0f}, over 25 in "
                f"{sum(1 for x in others if x > 25)} of {len(others)} samples; load average max "
                f"{max(x['load1'] for x in samples):.2f}"
            )
        troubles = trouble_windows(samples)
        for line in troubles[:15]:
            print("   " + line)
        if len(troubles) > 15:
            print(f"   ... {len(troubles) - 15} more windows with failed or refused calls")
        for note in notes:
            print(f"!! {note}")
        print(
            "== verdict: "
            + (f"series growing: {', '.join(leaks)}" if leaks else "every series flat")
            + f"; {'no call lost' if lost == 0 else f'{lost} calls lost'}; "
            f"{refreshes_done['failed']} registration refreshes failed"
        )
        print(
            f"load average at end: {os.getloadavg()[0]:.2f}; run took "
            f"{time.monotonic() - begun:.0f} s"
        )
        report.update(
            code=sip_cps.code_line(args.src),
            users=len(users),
            rate=args.rate,
            samples=samples,
            drain=drain,
            trends=found,
            calls={
                "asked": run.asked,
                "attempted": run.attempted,
                "completed": run.succeeded,
                "failed": run.failed,
                "unfinished": run.unfinished,
                "lost": lost,
                "failure_kinds": run.failure_kinds,
                "retransmissions": run.retransmissions,
                "achieved_per_s": run.achieved,
                "wall_s": wall,
                "setup_p50_ms": percentile(run.rtd1, 50),
                "setup_p99_ms": percentile(run.rtd1, 99),
                "setup_max_ms": max(run.rtd1) if run.rtd1 else None,
                "phones_answered": refreshes_done["answered"],
                "bridge_outcomes": outcomes,
            },
            registrations={
                "sent": sent,
                "initial": len(users),
                "refreshes_started": refreshes_done["started"],
                "ok": len(users) + refreshes_done["ok"],
                "failed": refreshes_done["failed"],
                "under_way_at_end": under_way,
                "failure_kinds": refreshes_done["failure_kinds"],
            },
            admission=admitted,
            refused=refused,
            bridge_log=bridge_log,
            udp_drops=udp,
            workers_seen=sampler.workers_seen,
            gc_full=[{"t": t, "pause_ms": ms} for t, ms in sampler.gc_full],
            trouble_windows=troubles,
            notes=notes,
            growing=leaks,
            run_s=time.monotonic() - begun,
        )
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str))
        if args.keep:
            print(f"work folder kept: {folder}")
        return 0
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
