"""Routing decisions per second, and their latency, on a large ring group.

    python bench/routing.py [--iterations N] [--warmup N] [--members N] [--profile]

One line -> one ring group with 1,000 members in 3 layers (round robin, longest idle, all at
once), with a directory default time zone and users in a few other zones, some with working
hours (one overnight), some paused / suspended / of roles that take no calls, and a mixed
presence: available, busy, offline, on a call, in wrap-up (running and expired), not
reachable. Every iteration is one `plan_route` call as the daemon makes it for a real call:
`now` moves on by a second, the round-robin pointers of the previous plan are stored, and the
random seed changes. The target is p99 below 1 ms per decision.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import platform
import pstats
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.directory.loader import build_directory
from bridge.directory.model import Directory
from bridge.presence.model import ALL_CHANNELS, Availability, Channel, FixedPresence, UserPresence
from bridge.routing.engine import plan_route
from bridge.routing.model import CallRequest, Outcome

TARGET_MS = 1.0
LINE = "+15550100"
START = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # a Monday, 10:00 in New York
ZONES = (None, "America/New_York", "America/Chicago", "Europe/London", "Asia/Tokyo")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")


def _hours(rng: random.Random) -> dict[str, list[str]] | None:
    pick = rng.random()
    if pick < 0.5:
        return None
    if pick < 0.8:
        return {day: ["09:00-17:00"] for day in WEEKDAYS}
    if pick < 0.9:
        return {day: ["08:00-12:00", "13:00-17:00"] for day in WEEKDAYS}
    return {day: ["22:00-06:00"] for day in (*WEEKDAYS, "sat", "sun")}  # night shift


def build_bench_directory(members: int = 1000, seed: int = 7) -> Directory:
    rng = random.Random(seed)
    users: list[dict[str, Any]] = []
    for i in range(members):
        user: dict[str, Any] = {"id": f"u{i:04d}", "name": f"Agent {i:04d}"}
        roll = rng.random()
        if roll < 0.03:
            user["status"] = "paused"
        elif roll < 0.05:
            user["status"] = "suspended"
        roll = rng.random()
        if roll < 0.02:
            user["role"] = "reporter"
        elif roll < 0.05:
            user["role"] = "rep"
            user["lines"] = [LINE] if rng.random() < 0.5 else ["+15550200"]
        elif roll < 0.08:
            user["role"] = "supervisor"
        answer_by = rng.choices(
            ["apps", "ip_phone", "phone_number", "will_not_answer"], weights=[60, 25, 12, 3]
        )[0]
        user["answer_by"] = answer_by
        if answer_by == "phone_number" and rng.random() < 0.9:
            user["phone_number"] = f"+1555{i:07d}"
        zone = rng.choice(ZONES)
        if zone is not None:
            user["timezone"] = zone
        hours = _hours(rng)
        if hours is not None:
            user["working_hours"] = hours
        user["wrap_up_seconds"] = rng.choice([0, 15, 30, 60])
        users.append(user)
    ids = [u["id"] for u in users]
    first, second = members // 5, members // 2
    document = {
        "timezone": "America/New_York",
        "users": users,
        "ring_groups": [
            {
                "id": "big",
                "name": "Big group",
                "layers": [
                    {"strategy": "round_robin", "ring_each_seconds": 10, "members": ids[:first]},
                    {"strategy": "longest_idle", "members": ids[first:second]},
                    {"strategy": "all", "timeout_seconds": 30, "members": ids[second:]},
                ],
                "fallback": {"action": "voicemail"},
            },
            {"id": "other", "name": "Other", "layers": [{"members": ids[:2]}]},
        ],
        "lines": [
            {
                "number": LINE,
                "name": "Main line",
                "route_to": {"ring_group": "big"},
                "business_hours": {day: ["07:00-20:00"] for day in WEEKDAYS},
            },
            {"number": "+15550200", "name": "Other line", "route_to": {"ring_group": "other"}},
        ],
    }
    return build_directory(document, version=1)


def build_bench_presence(directory: Directory, seed: int = 11) -> FixedPresence:
    rng = random.Random(seed)
    by_user: dict[str, UserPresence] = {}
    for user in directory.users:
        roll = rng.random()
        ended = START - timedelta(seconds=rng.randrange(30, 7200)) if rng.random() < 0.7 else None
        if roll < 0.10:
            state = UserPresence(availability=Availability.BUSY, reachable=ALL_CHANNELS)
        elif roll < 0.15:
            state = UserPresence(availability=Availability.OFFLINE)
        elif roll < 0.25:
            state = UserPresence(on_call=True, reachable=ALL_CHANNELS)
        elif roll < 0.32:  # in wrap-up, long after the whole run
            until = START + timedelta(hours=1)
            state = UserPresence(
                wrap_up_until=until, last_call_ended_at=ended, reachable=ALL_CHANNELS
            )
        elif roll < 0.37:  # wrap-up already over
            state = UserPresence(
                wrap_up_until=START - timedelta(seconds=5),
                last_call_ended_at=ended,
                reachable=ALL_CHANNELS,
            )
        elif roll < 0.45:  # logged in nowhere
            state = UserPresence(last_call_ended_at=ended)
        elif roll < 0.50:  # apps open, no desk phone registered
            state = UserPresence(last_call_ended_at=ended, reachable=frozenset({Channel.APPS}))
        else:
            state = UserPresence(last_call_ended_at=ended, reachable=ALL_CHANNELS)
        by_user[user.id] = state
    return FixedPresence(by_user=by_user)


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def run(iterations: int, warmup: int, members: int, profile: bool) -> int:
    directory = build_bench_directory(members)
    presence = build_bench_presence(directory)
    rotation: dict[str, int] = {}

    def decide(i: int) -> Any:
        call = CallRequest(call_id=f"bench-{i}", line=LINE, seed=i)
        plan = plan_route(directory, presence, call, START + timedelta(seconds=i % 3600), rotation)
        rotation.update(plan.rotation)
        return plan

    for i in range(warmup):
        decide(i)
    sample = decide(0)
    if sample.outcome is not Outcome.RING:
        print(f"unexpected outcome {sample.outcome}", file=sys.stderr)
        return 1
    members_seen = sum(len(layer.members) for layer in sample.layers)
    ringing = [len(layer.ring) for layer in sample.layers]

    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(iterations):
            decide(i)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        return 0

    clock = time.perf_counter_ns
    timings: list[float] = []
    gc.collect()
    wall_start = clock()
    for i in range(iterations):
        started = clock()
        decide(i)
        timings.append((clock() - started) / 1e6)
    wall = (clock() - wall_start) / 1e9
    # The first decision on a new snapshot (after a reload or an API change) builds the
    # engine's per-snapshot memo: measure that too, on a few fresh but equal snapshots.
    cold: list[float] = []
    for i in range(5):
        fresh = build_bench_directory(members)
        started = clock()
        plan_route(fresh, presence, CallRequest(call_id=f"cold-{i}", line=LINE), START, {})
        cold.append((clock() - started) / 1e6)
    timings.sort()
    p50 = statistics.median(timings)
    p99 = _percentile(timings, 0.99)
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{members_seen} members in {len(sample.layers)} layers, rings per layer {ringing}"
    )
    print(f"iterations {iterations} (after {warmup} warm-up)")
    print(f"decisions/s {iterations / wall:,.0f}")
    print(f"p50 {p50:.3f} ms  p99 {p99:.3f} ms  max {timings[-1]:.3f} ms")
    print(f"first decision on a new snapshot: median {statistics.median(cold):.3f} ms")
    verdict = "met" if p99 < TARGET_MS else "MISSED"
    print(f"p99 / {TARGET_MS:g} ms target = {p99 / TARGET_MS:.2f} ({verdict})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--profile", action="store_true", help="cProfile instead of timing")
    args = parser.parse_args(argv)
    return run(args.iterations, args.warmup, args.members, args.profile)


if __name__ == "__main__":
    sys.exit(main())
