"""A token bucket: the rate limits of app sessions (bridge.ws) and of new SIP work
(bridge.sip.overload). Sans-I/O: `now` is passed in."""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens per second up to `capacity`; `take()` spends one if there is one."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, now: float) -> bool:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
