"""Overload control: new work is admitted or refused before it costs anything (RFC 3261
§21.5.4, RFC 6357; docs/sip.md, "Overload control").

**New work** is an INVITE that opens a call (no To tag) and a REGISTER. Everything else (ACK,
BYE, CANCEL, PRACK, in-dialog re-INVITE / UPDATE / INFO, responses) finishes work already
admitted and is always served: refusing it would waste what was spent on the call.

Admission, in this order (the first that says no refuses):

1. `max_calls`: the calls live in the call runner are at the limit.
2. `calls_per_second` overall, `trunk_calls_per_second` per trunk source address,
   `registrations_per_second` overall: token buckets holding one second's worth.
3. `max_transactions`: the transaction layer holds that many.
4. **Load**: how long the request waited before the daemon read it: the kernel's receive
   timestamp of the datagram (UDP), and the event loop's lag (both transports). The event
   loop reads a few dozen datagrams per turn, so its lag stays small while the socket's queue
   grows by seconds: the datagram's own age is what shows a queue. The rule is CoDel's
   (RFC 8289): once new work has waited more than `queue_delay_target` without a break for
   `interval`, new work that waited more than the target is refused, each by its own wait,
   until an `interval` passes in which none waited more. A burst is let through; a standing
   queue is not. Unlike CoDel's packets, an admitted INVITE brings more work after it (the
   phone's answer, the ACK, the BYE: 2-3 ms of CPU a call here), so one request under the
   target does not end the refusing (it did at first: each one let the next 100 ms of INVITEs
   in, a call set-up p50 of 100 ms under a 3 x burst). A refusal costs about 30 us (a parse,
   and a 503 sent without a transaction), so the queue drains and what is admitted is set up
   in time.

A refusal is `503 Service Unavailable` with `Retry-After` (spread over [n, 2n) seconds for
load, so refused senders do not all come back at once), sent statelessly with `OVERLOAD_TAG`
in its To tag: the ACK that comes back is dropped before it is parsed.

Sans-I/O: every method takes `now` (and the measured waits); nothing here reads a clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.ratelimit import TokenBucket

OVERLOAD_TAG = "ovl-503"  # the To tag of our stateless 503s
ACK_MARKER = b"tag=" + OVERLOAD_TAG.encode()
CALM_AFTER = 1.0  # seconds without a load refusal before the state is back to normal


@dataclass(frozen=True, slots=True)
class OverloadPolicy:
    max_calls: int = 0  # 0: no limit
    calls_per_second: float = 0.0
    trunk_calls_per_second: float = 0.0
    registrations_per_second: float = 0.0
    max_transactions: int = 0
    queue_delay_target: float = 0.02  # seconds; 0 turns the load rule off
    interval: float = 0.1  # seconds above the target before refusing (CoDel's interval)
    retry_after_seconds: int = 5
    # RFC 7339 loss feedback to clients whose Via carries `oc` (bridge.sip.overload_feedback)
    feedback: bool = True
    feedback_validity_ms: int = 1000


def _bucket(rate: float, now: float) -> TokenBucket:
    """`rate` per second, holding one second's worth (at least one)."""
    return TokenBucket(rate, max(1.0, rate), now)


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # max_calls | calls_per_second | trunk_calls_per_second | ... | load
    retry_after: int  # seconds


@dataclass(frozen=True, slots=True)
class StateChange:
    """Into or out of overload (for the log): what was refused meanwhile, by reason."""

    overloaded: bool
    refused: dict[str, int] = field(default_factory=dict)
    queue_delay: float = 0.0


class Admission:
    """See the module doc. `call` and `registration` answer None (admitted) or a `Refusal`;
    `tick` (a few times a second) says when the state changed; the counters feed metrics."""

    def __init__(
        self,
        policy: OverloadPolicy,
        *,
        now: float = 0.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._jitter = jitter
        self._calls = _bucket(policy.calls_per_second, now)
        self._registrations = _bucket(policy.registrations_per_second, now)
        self._trunks: dict[str, TokenBucket] = {}
        self._above_since: float | None = None  # new work waiting over the target since
        # Refusing: what waited over the target is refused (no interval's grace any more)
        # until an interval passes in which nothing did.
        self._dropping = False
        self._last_above = 0.0
        self._last_load_refusal: float | None = None
        self.overloaded = False
        self.queue_delay = 0.0  # the last new work's wait (smoothed), seconds
        # (kind, outcome/reason) -> count, since start: kind "call" or "registration",
        # outcome "admitted" or the refusal's reason.
        self.counts: dict[tuple[str, str], int] = {}
        self._refused_since_change: dict[str, int] = {}

    # -- decisions ---------------------------------------------------------------------------
    def call(
        self,
        now: float,
        waited: float,
        *,
        source: str,
        trunk: bool,
        live_calls: int,
        transactions: int = 0,
    ) -> Refusal | None:
        policy = self.policy
        reason: str | None = None
        if policy.max_calls and live_calls >= policy.max_calls:
            reason = "max_calls"
        elif self._loaded(now, waited):
            reason = "load"
        elif policy.max_transactions and transactions >= policy.max_transactions:
            reason = "max_transactions"
        elif policy.calls_per_second and not self._calls.take(now):
            reason = "calls_per_second"
        elif trunk and policy.trunk_calls_per_second and not self._trunk(source, now).take(now):
            reason = "trunk_calls_per_second"
        return self._verdict("call", reason, now)

    def registration(self, now: float, waited: float, *, transactions: int = 0) -> Refusal | None:
        policy = self.policy
        reason: str | None = None
        if self._loaded(now, waited):
            reason = "load"
        elif policy.max_transactions and transactions >= policy.max_transactions:
            reason = "max_transactions"
        elif policy.registrations_per_second and not self._registrations.take(now):
            reason = "registrations_per_second"
        return self._verdict("registration", reason, now)

    def _loaded(self, now: float, waited: float) -> bool:
        """CoDel's rule on the wait of new work (see the module doc)."""
        self.queue_delay += (waited - self.queue_delay) * 0.1
        target = self.policy.queue_delay_target
        if not target:
            return False
        interval = self.policy.interval
        if self._dropping and now - self._last_above >= interval:
            # an interval without a wait over the target: calm again, and the next wait over
            # it starts a new interval (a burst has its grace again)
            self._dropping = False
            self._above_since = None
        if waited <= target:
            self._above_since = None
            return False
        self._last_above = now
        if self._dropping:
            return True
        if self._above_since is None:
            self._above_since = now
        if now - self._above_since >= interval:
            self._dropping = True
            return True
        return False

    def _trunk(self, source: str, now: float) -> TokenBucket:
        bucket = self._trunks.get(source)
        if bucket is None:  # (trunk sources only: the allowlist bounds them)
            bucket = self._trunks[source] = _bucket(self.policy.trunk_calls_per_second, now)
        return bucket

    def _verdict(self, kind: str, reason: str | None, now: float) -> Refusal | None:
        key = (kind, reason or "admitted")
        self.counts[key] = self.counts.get(key, 0) + 1
        if reason is None:
            return None
        self._refused_since_change[reason] = self._refused_since_change.get(reason, 0) + 1
        retry = self.policy.retry_after_seconds
        if reason == "load":
            self._last_load_refusal = now
            retry += int(self._jitter() * retry)
        return Refusal(reason, retry)

    # -- state -------------------------------------------------------------------------------
    def tick(self, now: float) -> StateChange | None:
        """The state as of `now`: a `StateChange` when it changed since the last tick."""
        loaded = self._last_load_refusal is not None and now - self._last_load_refusal < CALM_AFTER
        if loaded == self.overloaded:
            return None
        self.overloaded = loaded
        refused, self._refused_since_change = self._refused_since_change, {}
        return StateChange(loaded, refused, round(self.queue_delay, 4))
