"""The collector's one long pause on the SIP path: the periodic collection that walks
everything the daemon holds (issue 18, the soak's lost calls).

    .venv/bin/python bench/gc_pause.py [--rate 150] [--seconds 32] [--users 23] [--repeat 2]

bench/soak.py lost 5 calls in an hour to one such pause (about 100 ms at t = 600 s, with 23
busy desk phones). This measures the pause itself, in process, for the daemon's collector
policy and for the design before it, on the same state: `sim.phones.inproc.InprocBridge`
(bench/sip_inproc.py's bridge: the daemon's application, datagrams fed in, media anchored)
runs --rate calls/s of bench/sip_inproc.py's call on a fake clock for --seconds (32 s is
64*T1: every transaction of that window is still waiting out its timers, as in the soak at
that rate), the collector's tick run every 50 calls as the daemon runs it every 0.25 s. Then
the long collection, three times:

- **policy** (`bridge.daemon.GarbageCollectorPolicy`, today): start-up frozen for good, the
  tick collects the young generations (`gc.collect(1)`), the interpreter's own old-generation
  collections off; the long one is `collect(full=True)`: `gc.collect(2)`, what was made
  since start and is still held.
- **freeze-all** (until 2026-12-07): the tick was `gc.collect()` then `gc.freeze()`, and the
  long one a thaw: `gc.unfreeze()`, `gc.collect()`, `gc.freeze()`: start-up walked too.

Each design runs in a child process of its own (the collector's state is per process),
alternating, --repeat times each. It prints the objects each long collection walks and its
pause, the medians and their ratio; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DESIGNS = ("policy", "freeze-all")


async def measure(design: str, rate: float, seconds: float, users: int) -> dict[str, object]:
    sys.path.insert(0, str(REPO / "bench"))
    import sip_inproc
    from bridge.daemon import GC_OLD_OFF, GC_THRESHOLDS, GarbageCollectorPolicy

    sip_inproc.tune_garbage_collector = lambda: None  # (the ticks are driven below)
    bench = sip_inproc.Bench(users)
    await bench.start()
    for i in range(users):
        if not bench.register_phone(i, f"7{i:04d}", f"pw-7{i:04d}", 20000 + i):
            raise SystemExit("a phone failed to register")
    gc.collect()
    gc.freeze()  # start-up, as tune_garbage_collector does once the daemon is listening
    policy = GarbageCollectorPolicy(asyncio.get_running_loop())
    gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], GC_OLD_OFF if design == "policy" else 10)
    start_up = gc.get_freeze_count()

    def tick() -> None:
        if design == "policy":
            policy.collect()
        else:
            gc.collect()
            gc.freeze()

    failed = 0
    for n in range(int(rate * seconds)):
        failed += not bench.call(n)
        if n % 50 == 49:
            tick()
            await bench.bridge.advance(50 / rate, step=50 / rate)
    tick()
    walked = (
        len(gc.get_objects(generation=2)) + len(gc.get_objects(generation=1))
        if design == "policy"
        else gc.get_freeze_count()
    )
    pauses = []
    for _ in range(3):
        began = time.perf_counter()
        if design == "policy":
            policy.collect(full=True)
        else:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        pauses.append(time.perf_counter() - began)
    await bench.stop()
    return {
        "design": design,
        "calls": int(rate * seconds),
        "failed": failed,
        "start_up_objects": start_up,
        "walked_objects": walked,
        "pauses_ms": [round(p * 1000, 1) for p in pauses],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=150.0)
    parser.add_argument("--seconds", type=float, default=32.0)
    parser.add_argument("--users", type=int, default=23)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child", choices=DESIGNS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from bridge.observability.logging import configure_logging

        configure_logging("warning", "json", cache=True)
        result = asyncio.run(measure(args.child, args.rate, args.seconds, args.users))
        print(json.dumps(result))
        return 0
    print(
        f"state: {args.rate:g} calls/s for {args.seconds:g} s ({int(args.rate * args.seconds)}"
        f" calls, {args.users} desk phones), in process; the long collection 3 times each run"
    )
    results: dict[str, list[float]] = {d: [] for d in DESIGNS}
    for _ in range(args.repeat):
        for design in DESIGNS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", design, *_forwarded(args)],
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
            if out.returncode != 0:
                print(f"{design}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                return 1
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results[design].extend(result["pauses_ms"])
            print(
                f"  {design:10}  calls failed {result['failed']}, start-up objects"
                f" {result['start_up_objects']:,}, walked {result['walked_objects']:,}:"
                f" pauses {', '.join(f'{p:.1f}' for p in result['pauses_ms'])} ms"
            )
    medians = {d: statistics.median(v) for d, v in results.items()}
    print(
        f"median pause: policy {medians['policy']:.1f} ms, freeze-all"
        f" {medians['freeze-all']:.1f} ms -> {medians['policy'] / medians['freeze-all']:.2f} x"
    )
    return 0


def _forwarded(args: argparse.Namespace) -> list[str]:
    return [
        f"--rate={args.rate}",
        f"--seconds={args.seconds}",
        f"--users={args.users}",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
