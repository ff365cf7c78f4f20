"""Presence as the routing core sees it: plain immutable values, no clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class Availability(StrEnum):
    """Set by the user (or an admin/supervisor through the API)."""

    AVAILABLE = "available"
    BUSY = "busy"  # also do-not-disturb
    OFFLINE = "offline"


class Channel(StrEnum):
    """How a member is reached: the answer types that ring something."""

    APPS = "apps"
    IP_PHONE = "ip_phone"
    PHONE_NUMBER = "phone_number"


@dataclass(frozen=True, slots=True)
class UserPresence:
    availability: Availability = Availability.AVAILABLE
    on_call: bool = False
    wrap_up_until: datetime | None = None
    last_call_ended_at: datetime | None = None
    # Channels a dial adapter has reported as reachable right now (app sessions, registered
    # desk phones). Phone numbers are reachable whenever the user has one.
    reachable: frozenset[Channel] = frozenset()

    def in_wrap_up(self, now: datetime) -> bool:
        return self.wrap_up_until is not None and now < self.wrap_up_until


class PresenceView(Protocol):
    """What routing reads. Implementations must not change while a decision is computed
    (in asyncio that holds as long as routing is called synchronously)."""

    def presence_of(self, user_id: str) -> UserPresence: ...


ALL_CHANNELS = frozenset(Channel)
EVERYONE_AVAILABLE = UserPresence(availability=Availability.AVAILABLE, reachable=ALL_CHANNELS)


class AssumeEveryoneAvailable:
    """Offline Test Routing: everyone available and reachable; only the directory decides."""

    def presence_of(self, user_id: str) -> UserPresence:
        return EVERYONE_AVAILABLE


@dataclass(frozen=True, slots=True)
class FixedPresence:
    """A presence view from a mapping (tests, benchmarks, a live snapshot)."""

    by_user: dict[str, UserPresence]
    default: UserPresence = EVERYONE_AVAILABLE

    def presence_of(self, user_id: str) -> UserPresence:
        return self.by_user.get(user_id, self.default)
