"""Brute-force protection for digest authentication: ban a source after repeated failures.

Pure and sans-I/O: `now` is passed in and should come from a monotonic clock (the pruning
relies on it never going backwards). A "source" is whatever the caller keys on: an IP
address, an IP and a username, a /64.

Memory is bounded: at most `max_sources` sources are tracked, counters and bans together.
Entries that can no longer matter (last failure outside the window, ban over) are dropped as
time passes; when the table is full anyway, the least recently failing counter goes first,
then the ban that ends soonest. Under a flood of (possibly spoofed) sources this forgets some
counters, which is the price of not letting that flood exhaust memory.
"""

from __future__ import annotations

from collections import OrderedDict, deque


class FailureTracker:
    """Ban a source for `ban_seconds` once it has `max_failures` failures within a sliding
    window of `window_seconds`."""

    def __init__(
        self,
        max_failures: int,
        window_seconds: float,
        ban_seconds: float,
        max_sources: int = 100_000,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if not window_seconds > 0:
            raise ValueError("window_seconds must be positive")
        if not ban_seconds > 0:
            raise ValueError("ban_seconds must be positive")
        if max_sources < 1:
            raise ValueError("max_sources must be at least 1")
        self.max_failures = max_failures
        self.window_seconds = float(window_seconds)
        self.ban_seconds = float(ban_seconds)
        self.max_sources = max_sources
        # Ordered by last failure (moved to the end on each one), so expired counters sit at
        # the front and pruning is amortized O(1). Only the last `max_failures` times matter.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        # source -> ban end. Bans all last ban_seconds, so insertion order is end order.
        self._bans: OrderedDict[str, float] = OrderedDict()
        self.version = 0  # raised when a ban starts (the state journal writes then)

    def __len__(self) -> int:
        """Sources tracked (failure counters plus bans); never above `max_sources`."""
        return len(self._failures) + len(self._bans)

    def record_failure(self, source: str, now: float) -> bool:
        """Count one failed attempt; True when it starts a ban.

        Failures from a source already banned are not counted: its requests should be refused
        before they are checked, and counting them must not stretch the ban indefinitely."""
        self._prune(now)
        if self.is_banned(source, now):
            return False
        times = self._failures.pop(source, None)
        if times is None:
            self._make_room()
            times = deque(maxlen=self.max_failures)
        cutoff = now - self.window_seconds
        while times and times[0] <= cutoff:
            times.popleft()
        times.append(now)
        if len(times) >= self.max_failures:
            # The counter is not put back: after the ban the source starts from zero.
            self._bans[source] = now + self.ban_seconds
            self.version += 1
            return True
        self._failures[source] = times
        return False

    def record_success(self, source: str, now: float) -> None:
        """A successful authentication clears the source's failure count (not a ban)."""
        self._prune(now)
        self._failures.pop(source, None)

    def is_banned(self, source: str, now: float) -> bool:
        until = self._bans.get(source)
        if until is None:
            return False
        if until <= now:
            del self._bans[source]
            return False
        return True

    def ban_expires_at(self, source: str, now: float) -> float | None:
        """When the source's ban ends (for a Retry-After), or None when it is not banned."""
        return self._bans[source] if self.is_banned(source, now) else None

    def bans(self, now: float) -> list[tuple[str, float]]:
        """(source, until) of the bans in force (the state kept across restarts)."""
        return [(source, until) for source, until in self._bans.items() if until > now]

    def restore_bans(self, bans: list[tuple[str, float]], now: float) -> None:
        """Bans read back after a restart (`until` on this clock); those over are skipped."""
        for source, until in bans:
            if until > now and until > self._bans.get(source, 0.0):
                self._make_room()
                self._bans[source] = until
        self.version += 1

    def banned_sources(self, now: float) -> list[str]:
        """Sources banned at `now`, oldest ban first (for metrics and the ops API)."""
        self._prune(now)
        return [source for source, until in self._bans.items() if until > now]

    def _prune(self, now: float) -> None:
        cutoff = now - self.window_seconds
        failures = self._failures
        while failures:
            times = failures[next(iter(failures))]
            if times[-1] > cutoff:
                break
            failures.popitem(last=False)
        bans = self._bans
        while bans and bans[next(iter(bans))] <= now:
            bans.popitem(last=False)

    def _make_room(self) -> None:
        # Called before a new source gets a counter; a counter turning into a ban keeps the
        # count the same, so this is the only place the table grows.
        while len(self) >= self.max_sources:
            if self._failures:
                self._failures.popitem(last=False)
            else:
                self._bans.popitem(last=False)
