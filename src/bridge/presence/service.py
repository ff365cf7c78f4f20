"""In-memory presence: availability, on-call / wrap-up, and reachability reported by adapters.

This is the one place that reads the clock for presence; routing gets immutable
`UserPresence` values from it. Dial adapters (WebSocket sessions, SIP registrations) report
reachability through the `ReachabilityPort` methods.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from bridge.directory.model import Directory
from bridge.presence.model import Availability, Channel, UserPresence

log = structlog.get_logger("bridge.presence")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class ReachabilityPort(Protocol):
    """What a dial adapter tells presence: a way to reach a user appeared or went away.

    Adapters count their own endpoints (one call per app session or registered contact);
    a user is reachable on a channel while the count is above zero."""

    def endpoint_up(self, user_id: str, channel: Channel) -> None: ...

    def endpoint_down(self, user_id: str, channel: Channel) -> None: ...


class PresenceService:
    def __init__(self, directory: Callable[[], Directory], clock: Clock = utc_now) -> None:
        self._directory = directory
        self._clock = clock
        self._state: dict[str, UserPresence] = {}
        self._endpoints: Counter[tuple[str, Channel]] = Counter()

    # -- PresenceView -------------------------------------------------------------------
    def presence_of(self, user_id: str) -> UserPresence:
        state = self._state.get(user_id)
        if state is None:
            state = self._initial(user_id)
        return state

    def _initial(self, user_id: str) -> UserPresence:
        user = self._directory().user(user_id)
        default = user is None or user.available_by_default
        return UserPresence(
            availability=Availability.AVAILABLE if default else Availability.OFFLINE
        )

    def _update(self, user_id: str, **changes: object) -> UserPresence:
        new = replace(self.presence_of(user_id), **changes)  # type: ignore[arg-type]
        self._state[user_id] = new
        return new

    # -- set by users / the API ----------------------------------------------------------
    def set_availability(self, user_id: str, availability: Availability) -> UserPresence:
        log.info("availability_set", user_id=user_id, availability=availability.value)
        return self._update(user_id, availability=availability)

    # -- automatic, from the call engine -------------------------------------------------
    def call_started(self, user_id: str) -> UserPresence:
        return self._update(user_id, on_call=True, wrap_up_until=None)

    def call_ended(self, user_id: str) -> UserPresence:
        now = self._clock()
        user = self._directory().user(user_id)
        wrap_up = user.wrap_up_seconds if user is not None else 0
        return self._update(
            user_id,
            on_call=False,
            last_call_ended_at=now,
            wrap_up_until=now + timedelta(seconds=wrap_up) if wrap_up else None,
        )

    # -- ReachabilityPort ----------------------------------------------------------------
    def endpoint_up(self, user_id: str, channel: Channel) -> None:
        key = (user_id, channel)
        self._endpoints[key] += 1
        if self._endpoints[key] != 1:
            return
        current = self.presence_of(user_id)
        changes: dict[str, object] = {"reachable": current.reachable | {channel}}
        user = self._directory().user(user_id)
        first_session = channel is Channel.APPS
        if first_session and user is not None and user.available_by_default:
            changes["availability"] = Availability.AVAILABLE  # "available at login"
        self._update(user_id, **changes)

    def endpoint_down(self, user_id: str, channel: Channel) -> None:
        key = (user_id, channel)
        if self._endpoints[key] <= 0:
            return
        self._endpoints[key] -= 1
        if self._endpoints[key] == 0:
            del self._endpoints[key]
            current = self.presence_of(user_id)
            self._update(user_id, reachable=current.reachable - {channel})

    # -- directory changes ---------------------------------------------------------------
    def forget(self, user_id: str) -> None:
        """A deleted user: drop everything we knew."""
        self._state.pop(user_id, None)
        for key in [k for k in self._endpoints if k[0] == user_id]:
            del self._endpoints[key]

    def snapshot(self) -> dict[str, UserPresence]:
        directory = self._directory()
        return {user.id: self.presence_of(user.id) for user in directory.users}
