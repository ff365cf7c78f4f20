"""Brute-force bans: sliding window, expiry, success, memory bound; checked against a model."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sip.ban import FailureTracker

IP = "198.51.100.7"


def tracker(**kw: float) -> FailureTracker:
    args: dict[str, float] = {"max_failures": 3, "window_seconds": 10, "ban_seconds": 60}
    args.update(kw)
    return FailureTracker(
        int(args["max_failures"]),
        args["window_seconds"],
        args["ban_seconds"],
        int(args.get("max_sources", 100_000)),
    )


def test_n_failures_within_window_ban() -> None:
    t = tracker()
    assert [t.record_failure(IP, now) for now in (0, 1, 2)] == [False, False, True]
    assert t.is_banned(IP, 2)
    assert t.ban_expires_at(IP, 2) == 62
    assert t.banned_sources(3) == [IP]
    assert not t.is_banned("203.0.113.1", 2)  # others are unaffected


def test_failures_spread_wider_than_window_do_not_ban() -> None:
    t = tracker()
    # One every window_seconds: the previous one has just left the window each time.
    assert not any(t.record_failure(IP, now) for now in range(0, 200, 10))
    assert not t.is_banned(IP, 200)
    assert t.banned_sources(200) == []


def test_window_is_half_open() -> None:
    # A failure exactly window_seconds ago has left the window: it covers (now - window, now].
    t = tracker(max_failures=2)
    assert not t.record_failure(IP, 0)
    assert not t.record_failure(IP, 10)
    assert t.record_failure(IP, 19.99)
    t = tracker(max_failures=3)
    assert [t.record_failure(IP, now) for now in (0, 5, 10, 14.99)] == [False] * 3 + [True]


def test_window_slides_rather_than_resetting_in_buckets() -> None:
    t = tracker()
    # 5, 11 and 14 are within 10 s of each other though they straddle a 10 s boundary.
    assert [t.record_failure(IP, now) for now in (0, 5, 11, 14)] == [False, False, False, True]
    assert t.is_banned(IP, 14)


def test_ban_expires_after_ban_seconds_and_the_count_restarts() -> None:
    t = tracker()
    for now in (0, 1, 2):
        t.record_failure(IP, now)
    assert t.is_banned(IP, 61.9)
    assert not t.is_banned(IP, 62)
    assert t.ban_expires_at(IP, 62) is None
    # Counting starts again from zero: two failures are not yet a ban.
    assert not t.record_failure(IP, 63)
    assert not t.record_failure(IP, 64)
    assert t.record_failure(IP, 65)


def test_failures_while_banned_are_not_counted_and_do_not_extend() -> None:
    t = tracker()
    for now in (0, 1, 2):
        t.record_failure(IP, now)
    assert not any(t.record_failure(IP, now) for now in range(3, 60))
    assert t.ban_expires_at(IP, 60) == 62
    assert not t.is_banned(IP, 62)


def test_success_clears_the_counter_but_not_a_ban() -> None:
    t = tracker()
    t.record_failure(IP, 0)
    t.record_failure(IP, 1)
    t.record_success(IP, 2)
    assert not t.record_failure(IP, 3)
    assert not t.record_failure(IP, 4)
    assert t.record_failure(IP, 5)
    t.record_success(IP, 6)
    assert t.is_banned(IP, 6)


def test_expired_entries_are_pruned() -> None:
    t = tracker()
    for i in range(1000):
        t.record_failure(f"10.0.{i // 256}.{i % 256}", 0)
    for now in (0, 1, 2):
        t.record_failure(IP, now)
    assert len(t) == 1001
    assert t.banned_sources(30) == [IP]
    assert len(t) == 1  # counters older than the window are gone, the ban stays
    assert t.banned_sources(62) == []
    assert len(t) == 0


def test_memory_stays_bounded_under_a_million_sources() -> None:
    cap = 1000
    t = tracker(max_sources=cap)
    for now in (0, 0, 0):
        t.record_failure(IP, now)
    peak = 0
    # A flood of distinct (say, spoofed) sources, all inside one window and one ban.
    for i in range(1_000_000):
        t.record_failure(f"s{i}", i * 1e-5)
        size = len(t)
        if size > peak:
            peak = size
    assert peak == cap
    assert len(t._failures) + len(t._bans) <= cap
    # Counters are evicted before bans, so the flood did not lift the real offender's ban.
    assert t.is_banned(IP, 10)


def test_a_full_table_of_bans_evicts_the_soonest_to_end() -> None:
    t = tracker(max_failures=1, max_sources=3)
    for i, source in enumerate("abcd"):
        assert t.record_failure(source, i)
    assert len(t) == 3
    assert t.banned_sources(4) == ["b", "c", "d"]


@pytest.mark.parametrize(
    "args",
    [(0, 10, 60, 10), (3, 0, 60, 10), (3, 10, 0, 10), (3, 10, 60, 0), (3, -1, 60, 10)],
)
def test_rejects_nonsense_settings(args: tuple[int, float, float, int]) -> None:
    with pytest.raises(ValueError):
        FailureTracker(*args)


# --- against a model that keeps everything ------------------------------------------------


@dataclass
class Model:
    max_failures: int
    window: float
    ban: float
    failures: dict[str, list[float]] = field(default_factory=dict)
    bans: dict[str, float] = field(default_factory=dict)

    def banned(self, source: str, now: float) -> bool:
        return self.bans.get(source, -1.0) > now

    def failure(self, source: str, now: float) -> bool:
        if self.banned(source, now):
            return False
        times = [t for t in self.failures.get(source, []) if t > now - self.window] + [now]
        if len(times) >= self.max_failures:
            self.bans[source] = now + self.ban
            self.failures[source] = []
            return True
        self.failures[source] = times
        return False


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["fail", "fail", "fail", "success", "check"]),
        st.sampled_from(["a", "b", "c"]),
        st.floats(min_value=0, max_value=8, allow_nan=False),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.sampled_from([5.0, 10.0]), st.sampled_from([3.0, 30.0]), EVENTS)
def test_matches_the_unbounded_model(
    max_failures: int, window: float, ban: float, events: list[tuple[str, str, float]]
) -> None:
    t = FailureTracker(max_failures, window, ban)
    model = Model(max_failures, window, ban)
    now = 0.0
    for kind, source, dt in events:
        now += dt
        if kind == "fail":
            assert t.record_failure(source, now) == model.failure(source, now)
        elif kind == "success":
            t.record_success(source, now)
            model.failures[source] = []
        assert t.is_banned(source, now) == model.banned(source, now)
        expected = [s for s in ("a", "b", "c") if model.banned(s, now)]
        assert sorted(t.banned_sources(now)) == expected
