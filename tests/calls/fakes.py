"""Fakes for driving the call runner without a dial path: a manual clock with timers, a leg
driver that records every command, and app offers that record what the runner asks of them."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.calls.events import (
    BridgeTo,
    CancelLeg,
    Command,
    DialLeg,
    HangupLeg,
    LegReason,
    RejectCaller,
    RingCaller,
    StartFallback,
)
from bridge.calls.ports import Answerer, CallStateName, OfferListener
from bridge.calls.runner import RunningCall

WALL_START = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # a Monday


class WallClock:
    """The runner's and presence's wall clock, moved by hand."""

    def __init__(self, start: datetime = WALL_START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class ManualTimers:
    """A `CallTimers` on a clock that moves only when told to (`advance`, `advance_to`).

    `armed` keeps the time of every `call_at`, `fired` the time each callback ran at."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cancelled: set[int] = set()
        self.armed: list[float] = []
        self.fired: list[float] = []

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> object:
        handle = next(self._seq)
        heapq.heappush(self._queue, (when, handle, callback))
        self.armed.append(when)
        return handle

    def cancel(self, handle: object) -> None:
        assert isinstance(handle, int)
        self._cancelled.add(handle)

    def pending(self) -> list[float]:
        """When the callbacks still to run are due, earliest first."""
        return sorted(when for when, handle, _ in self._queue if handle not in self._cancelled)

    def advance(self, seconds: float) -> None:
        self.advance_to(self._now + seconds)

    def advance_to(self, target: float) -> None:
        """Run every callback due by `target` in time order (those they schedule too), each
        with the clock at its due time; then the clock reads `target`."""
        while self._queue and self._queue[0][0] <= target:
            when, handle, callback = heapq.heappop(self._queue)
            if handle in self._cancelled:
                continue
            self._now = max(self._now, when)
            self.fired.append(self._now)
            callback()
        self._now = max(self._now, target)


class FakeDriver:
    """A `LegDriver` that records every command it gets, as (method, command) pairs."""

    def __init__(self, path: str = "sip", *, app_accept_answers: bool = True) -> None:
        self.path = path
        self.app_accept_answers = app_accept_answers
        self.refuse: str | None = None  # what `app_answer_refused` answers
        self.log: list[tuple[str, Any]] = []
        self.ended_calls: list[RunningCall] = []

    # -- reading ---------------------------------------------------------------------------
    def sent(self, method: str) -> list[Any]:
        return [command for name, command in self.log if name == method]

    @property
    def dials(self) -> list[DialLeg]:
        return self.sent("dial")

    def mark(self) -> int:
        """Where the log is now: `since(mark)` gives what came after."""
        return len(self.log)

    def since(self, mark: int) -> list[tuple[str, Any]]:
        return self.log[mark:]

    # -- LegDriver -------------------------------------------------------------------------
    def _record(self, name: str, command: Command) -> None:
        self.log.append((name, command))

    def dial(self, call: RunningCall, command: DialLeg) -> None:
        self._record("dial", command)

    def cancel_leg(self, call: RunningCall, command: CancelLeg) -> None:
        self._record("cancel_leg", command)

    def bridge(self, call: RunningCall, command: BridgeTo) -> None:
        self._record("bridge", command)

    def hang_up(self, call: RunningCall, command: HangupLeg) -> None:
        self._record("hang_up", command)

    def reject(self, call: RunningCall, command: RejectCaller) -> None:
        self._record("reject", command)

    def ring_caller(self, call: RunningCall, command: RingCaller) -> None:
        self._record("ring_caller", command)

    def start_fallback(self, call: RunningCall, command: StartFallback) -> None:
        self._record("start_fallback", command)

    def app_answer_refused(self, call: RunningCall, user_id: str, sdp: str | None) -> str | None:
        self.log.append(("app_answer_refused", (user_id, sdp)))
        return self.refuse

    def app_media_ready(self, call: RunningCall, user_id: str) -> None:
        return None

    def leg_reference(self, call: RunningCall, leg_id: str) -> str | None:
        return f"{self.path}-ref:{leg_id}"

    def ended(self, call: RunningCall) -> None:
        self.ended_calls.append(call)


@dataclass
class Offer:
    call_id: str
    user_id: str
    caller: str | None
    line: str | None
    ring_group: str | None
    expires_at: datetime
    sdp: str | None
    listener: OfferListener | None


@dataclass
class FakeOffers:
    """An `AppOffers` that records every call; `status` says what `offer` answers per user."""

    status: dict[str, str] = field(default_factory=dict)
    offers: list[Offer] = field(default_factory=list)
    ended: list[tuple[str, str | None, LegReason, Answerer | None]] = field(default_factory=list)
    states: list[tuple[str, str, str, LegReason | None, datetime | None]] = field(
        default_factory=list
    )
    answers: list[tuple[str, str]] = field(default_factory=list)

    def offer(
        self,
        call_id: str,
        user_id: str,
        *,
        caller: str | None,
        line: str | None,
        ring_group: str | None,
        expires_at: datetime,
        sdp: str | None = None,
        listener: OfferListener | None = None,
    ) -> str:
        self.offers.append(
            Offer(call_id, user_id, caller, line, ring_group, expires_at, sdp, listener)
        )
        return self.status.get(user_id, "delivered")

    def end_offer(
        self,
        call_id: str,
        user_id: str | None,
        reason: LegReason,
        *,
        answerer: Answerer | None = None,
    ) -> int:
        self.ended.append((call_id, user_id, reason, answerer))
        return 1

    def push_call_state(
        self,
        call_id: str,
        user_id: str,
        state: CallStateName,
        *,
        reason: LegReason | None = None,
        wrap_up_until: datetime | None = None,
    ) -> int:
        self.states.append((call_id, user_id, state, reason, wrap_up_until))
        return 1

    def answered(self, call_id: str, user_id: str) -> bool:
        self.answers.append((call_id, user_id))
        return True
