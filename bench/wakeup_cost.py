"""What a wake-up costs on this machine: the same Python work, done back to back or with a
short sleep between pieces.

    .venv/bin/python bench/wakeup_cost.py [--units 20000] [--core 0]

Why: `bench/sip_cps.py` finds the bridge's CPU per call far higher at low call rates than near
its maximum (about 5.5 ms at 100 calls/s against 2.1 ms at 500 on the 2026-12-07 machine), and
Kamailio's falls the same way (0.97 ms at 300/s, 0.57 ms at 1,200/s). A daemon at a low rate
sleeps between almost every datagram; near its maximum it rarely sleeps. This prints the CPU
time (the process's, as /proc counts it for the benchmarks) of one small piece of
dictionary-and-string work, done continuously, then with a sleep after every N pieces. On a
virtual machine each sleep and wake-up also costs the guest cold caches and the hypervisor's
exits, and that cost lands on the work that follows. It asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time


def unit() -> int:
    table = {}
    for i in range(200):
        table[str(i)] = i * 2
    return sum(table.values())


def cpu_per_unit(units: int, sleep_every: int, sleep_seconds: float) -> float:
    """Microseconds of process CPU per unit of work."""
    started = time.process_time()
    for i in range(units):
        unit()
        if sleep_every and i % sleep_every == 0:
            time.sleep(sleep_seconds)
    return (time.process_time() - started) / units * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=20000)
    parser.add_argument("--core", type=int, default=0, help="pin to this core (-1: no pinning)")
    args = parser.parse_args()
    if args.core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    cpu_per_unit(args.units // 4, 0, 0)  # warm up (and let the core's clock settle)
    base = min(cpu_per_unit(args.units, 0, 0) for _ in range(3))
    print(f"continuous: {base:.1f} us of CPU per unit")
    for every, seconds in [(50, 0.005), (10, 0.002), (2, 0.001), (1, 0.0005)]:
        cost = cpu_per_unit(args.units, every, seconds)
        print(
            f"a {seconds * 1000:g} ms sleep after every {every:>2} units: {cost:.1f} us per unit"
            f" ({cost / base:.2f} x continuous)"
        )


if __name__ == "__main__":
    main()
