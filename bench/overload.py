"""Overload control (issue 18, point 1): a SIPp trunk offers the bridge a multiple of its clean
maximum call rate for a minute; how many calls still complete, how fast the admitted ones are
set up, and how soon after the burst the bridge is back to normal.

    .venv/bin/python bench/overload.py [--clean-max N] [--factor 3] [--seconds 60]
                                       [--users 100] [--recovery-seconds 15] [--no-pin]
                                       [--quick] [--json FILE]

1. **Clean maximum**: unless --clean-max is given, steps of 5 s from --start-rate up by
   --step (a new rate each, on the same bridge) until one fails; the clean maximum is the
   highest that passed (no failed call, >= 95% of the asked rate: bench/sip_cps.py's rule).
2. **Burst**: --factor x the clean maximum for --seconds, with bench/sipp/trunk_uac_shed.xml
   (bench/sipp/trunk_uac.xml, plus: a 503 is an answer, ACKed). Goodput = calls set up and
   ended normally per second of the burst; set-up p99 of those (SIPp's response times);
   refused (503) and failed calls; retransmissions (the storm RFC 6357 describes shows there);
   the bridge's admission counters (`bridge_sip_admission_total`).
3. **Recovery**: right after the burst, half the clean maximum for --recovery-seconds: per
   second, calls answered 200 / refused / failed, and the first second from which every call
   is set up (the target: within 5 s).

The stack is bench/sip_cps.py's: `bridge run` as shipped (media anchoring, events stored by
its worker), --users SIPp desk phones in one round-robin ring group (one rings per call,
answers at once), the trunk a SIPp UAC; the bridge alone on the first core, SIPp and the
events worker on the others. Targets: goodput >= 90% of the clean maximum, set-up p99 of the
admitted calls <= 100 ms, back to normal within 5 s. It prints figures and ratios and asserts
nothing. `--quick`: a smoke run (tests/sip/test_bench_overload.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import events as events_bench  # noqa: E402
import sip_cps  # noqa: E402
from sip_cps import LINE, Context, Processes, percentile, sipp_uac  # noqa: E402


def counts_503(folder: Path) -> int:
    """503s received, from SIPp's -trace_counts file (its column for the optional 503)."""
    total = 0
    for path in folder.glob("*_counts.csv"):
        with path.open(newline="") as f:
            rows = [row for row in csv.reader(f, delimiter=";") if row]
        if len(rows) < 2:
            continue
        for name, value in zip(rows[0], rows[-1], strict=False):
            if "503" in name and name.endswith("_Recv"):
                total += int(value or 0)
    return total


def admission(bridge: Any) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in bridge.metrics().splitlines():
        if line.startswith("bridge_sip_admission_total{"):
            name, value = line.rsplit(" ", 1)
            outcome = name.split('outcome="')[1].split('"')[0]
            kind = name.split('kind="')[1].split('"')[0]
            found[f"{kind}:{outcome}"] = float(value)
    return found


def settled_admission(bridge: Any, within: float = 5.0) -> dict[str, float]:
    """The admission counters once they stop moving: the daemon adds them to its metrics twice
    a second, later when its loop is busy, so a read right after a run can miss the last."""
    found = admission(bridge)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        time.sleep(0.6)
        again = admission(bridge)
        if again == found:
            break
        found = again
    return found


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0)) for k, v in after.items() if v - before.get(k, 0)}


def run_calls(
    ctx: Context, name: str, bridge: Any, rate: float, seconds: float, scenario: str
) -> dict[str, Any]:
    target = f"127.0.0.1:{bridge.sip}"
    calls = max(10, int(rate * seconds))
    before = admission(bridge)
    histogram = bridge.setup_histogram()
    ticks = sip_cps.proc_ticks(bridge.process.pid)
    port = sip_cps.free_port()
    # set-up also measured on the wire when an AF_PACKET socket can be had (root)
    sniffer = events_bench.Sniffer(port).start() if ctx.args.wire else None
    started = time.monotonic()
    run = sipp_uac(
        ctx.folder / name,
        scenario,
        target,
        rate,
        calls,
        max(1000, int(rate * 10)),
        ["-s", LINE, "-d", "20", "-trace_counts", "-fd", "1", "-rtt_freq", "10"],
        timeout=seconds + 30,
        port=port,
    )
    wall = time.monotonic() - started
    wire = [1000 * s for s in sniffer.stop()] if sniffer is not None else []
    cpu = (sip_cps.proc_ticks(bridge.process.pid) - ticks) / sip_cps.CLK_TCK
    refused = counts_503(ctx.folder / name)
    inside_mean, inside_p99 = sip_cps.inside_setup(histogram, bridge.setup_histogram())
    samples = sip_cps.read_rtt(ctx.folder / name)
    setups = [(at, ms) for at, ms, rtd in samples if rtd == 1]
    completed = run.succeeded - refused
    return {
        "rate": rate,
        "seconds": seconds,
        "asked": calls,
        "attempted": run.attempted,
        "completed": completed,
        "refused_503": refused,
        "failed": run.failed,
        "unfinished": run.unfinished,
        "retransmissions": run.retransmissions,
        "goodput": completed / seconds,
        "setup_p50_ms": percentile([ms for _, ms in setups], 50),
        "setup_p99_ms": percentile([ms for _, ms in setups], 99),
        "setup_max_ms": max((ms for _, ms in setups), default=None),
        "setups": setups,
        # INVITE sent by the trunk -> 200 sent by the bridge, from the kernel's timestamps of
        # both on lo (AF_PACKET): what SIPp's own clock and its busy core do not skew
        "wire_p50_ms": percentile(wire, 50),
        "wire_p99_ms": percentile(wire, 99),
        "wire_max_ms": max(wire, default=None),
        "wire_calls": len(wire),
        # the bridge's own INVITE in -> 200 out (bridge_call_setup_seconds): mean, p99 bucket
        "inside_mean_ms": inside_mean,
        "inside_p99_ms": inside_p99,
        "wall": wall,
        "bridge_cpu_s": cpu,
        "admission": delta(settled_admission(bridge), before),
        "failure_kinds": run.failure_kinds,
        "passed": run.passed,
    }


def recovery_seconds(result: dict[str, Any], rate: float) -> tuple[list[str], float | None]:
    """Per second of the recovery run: set up / expected; the first second from which every
    second has all its calls set up (under 100 ms each)."""
    per_second: dict[int, list[float]] = {}
    for at, ms in result["setups"]:
        per_second.setdefault(int(at // 1000), []).append(ms)
    last = int(result["seconds"])
    lines, first_ok = [], None
    for second in range(last):
        got = per_second.get(second, [])
        good = sum(1 for ms in got if ms <= 100)
        ok = good >= int(0.9 * rate)
        p99 = percentile(got, 99)
        lines.append(
            f"{second:>3}s: {len(got):>4} set up, {good:>4} within 100 ms "
            f"(p99 {sip_cps.fmt(p99, '.0f')} ms)"
        )
        if ok and first_ok is None:
            first_ok = float(second)
        elif not ok:
            first_ok = None
    return lines, first_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean-max", type=float, default=None)
    parser.add_argument("--start-rate", type=float, default=300)
    parser.add_argument("--step", type=float, default=50)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--recovery-seconds", type=float, default=15.0)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--phone-procs", type=int, default=4)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--src", type=Path, default=None)
    parser.add_argument("--budget", type=float, default=600)
    args = parser.parse_args()
    if args.quick:
        args.clean_max = args.clean_max or 20
        args.seconds, args.recovery_seconds, args.users = 3.0, 3.0, 10
    if not sip_cps.shutil.which("sipp"):
        print("sipp is not installed (Debian sip-tester): nothing to measure")
        return 0
    started = time.monotonic()
    print("\n".join(sip_cps.machine_lines()))
    print("   " + sip_cps.pin_cores(not args.no_pin))
    why_not = events_bench.sniffer_available()
    args.wire = why_not is None
    print(
        "   set-up on the wire: kernel timestamps of the trunk's packets on lo (AF_PACKET)"
        if why_not is None
        else f"   set-up on the wire: not measured (no AF_PACKET: {why_not}); SIPp's only"
    )
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        if os.environ.get("BENCH_KEEP"):
            tmp = tempfile.mkdtemp(prefix="bench-overload-kept-")
            print(f"   work folder kept: {tmp}")
        procs = Processes()
        ctx = Context(args, procs, Path(tmp), time.monotonic())
        try:
            users = sip_cps.phone_users(args.users)
            bridge, _ = sip_cps.start_stack(ctx, Path(tmp) / "stack", users)
            print("   " + events_bench.pin_worker(bridge.process.pid))
            sipp_uac(  # warm-up
                Path(tmp) / "warmup",
                "trunk_uac.xml",
                f"127.0.0.1:{bridge.sip}",
                50,
                100,
                1000,
                ["-s", LINE, "-d", "20"],
                timeout=30,
            )
            clean = args.clean_max
            if clean is None:
                print("== 1. clean maximum: 5 s steps until one fails")
                rate, best = args.start_rate, None
                while time.monotonic() - started < args.budget:
                    step = run_calls(ctx, f"clean-{rate:g}", bridge, rate, 5.0, "trunk_uac.xml")
                    print(
                        f"   {rate:>6g}/s: {step['completed']}/{step['asked']} set up, "
                        f"failed {step['failed']}, unfinished {step['unfinished']}, retrans "
                        f"{step['retransmissions']}, p99 "
                        f"{sip_cps.fmt(step['setup_p99_ms'], '.0f')} ms"
                        f" -> {'pass' if step['passed'] else 'FAIL'}"
                        + (
                            f" ({step['failure_kinds']}; bridge {step['admission']})"
                            if not step["passed"]
                            else ""
                        ),
                        flush=True,
                    )
                    if not step["passed"]:
                        break
                    best = rate
                    rate += args.step
                    sip_cps.wait_idle(bridge.process.pid, 20.0)
                if best is None:
                    print("   no rate passed")
                    return 1
                clean = best
            report["clean_max"] = clean
            print(f"   clean maximum: {clean:g} calls/s")
            sip_cps.wait_idle(bridge.process.pid, 20.0)
            offered = clean * args.factor
            print(f"== 2. burst: {offered:g} calls/s ({args.factor:g} x) for {args.seconds:g} s")
            burst = run_calls(ctx, "burst", bridge, offered, args.seconds, "trunk_uac_shed.xml")
            print(
                f"   offered {burst['asked']}, attempted {burst['attempted']}: completed "
                f"{burst['completed']}, refused 503 {burst['refused_503']}, failed "
                f"{burst['failed']} {burst['failure_kinds'] or ''}, unfinished "
                f"{burst['unfinished']}; retransmissions {burst['retransmissions']}"
            )
            print(
                f"   goodput {burst['goodput']:.1f} calls/s -> "
                f"{burst['goodput'] / clean:.2f} x the clean maximum (target >= 0.90)"
            )
            print(
                "   set-up of completed calls: p50 "
                f"{sip_cps.fmt(burst['setup_p50_ms'], '.0f')} ms, "
                f"p99 {sip_cps.fmt(burst['setup_p99_ms'], '.0f')} ms (target <= 100), max "
                f"{sip_cps.fmt(burst['setup_max_ms'], '.0f')} ms (SIPp's clock); on the wire "
                f"(kernel timestamps, {burst['wire_calls']} calls): p50 "
                f"{sip_cps.fmt(burst['wire_p50_ms'], '.1f')} ms, p99 "
                f"{sip_cps.fmt(burst['wire_p99_ms'], '.1f')} ms, max "
                f"{sip_cps.fmt(burst['wire_max_ms'], '.1f')} ms; inside the bridge (INVITE "
                f"read -> 200 sent): mean {sip_cps.fmt(burst['inside_mean_ms'], '.1f')} ms, p99 "
                f"{burst['inside_p99_ms']} ms"
            )
            print(
                f"   bridge admission: {burst['admission']}; bridge CPU "
                f"{burst['bridge_cpu_s']:.1f} s in {burst['wall']:.1f} s"
            )
            print(f"== 3. recovery: {clean / 2:g} calls/s for {args.recovery_seconds:g} s at once")
            after = run_calls(
                ctx, "recovery", bridge, clean / 2, args.recovery_seconds, "trunk_uac_shed.xml"
            )
            lines, first_ok = recovery_seconds(after, clean / 2)
            for line in lines:
                print("   " + line)
            print(
                f"   refused 503 {after['refused_503']}, failed {after['failed']}; back to "
                f"normal from second {sip_cps.fmt(first_ok, '.0f')} (target <= 5)"
            )
            for item in (burst, after):
                item.pop("setups")
            report.update(burst=burst, recovery=after, normal_from_second=first_ok)
        finally:
            procs.stop_all()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"run took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
