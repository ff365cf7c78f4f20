"""What a carrier call publishes: the call core's typed events, stamped with the call, the time
and the carrier's own id of the leg concerned, plus the few facts only the carrier knows.

Ringing (`CallRinging` per layer, `LegRinging` per leg), answered (`CallAnswered`: the user,
our leg id, the channel; `leg_sid` below is the carrier's CallSid of that leg) and ended
(`CallEnded`: cause and outcome) are the call core's own events (`bridge.calls.events`), so a
consumer reads carrier and SIP calls the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bridge.calls.events import Event


@dataclass(frozen=True, slots=True)
class VoicemailRecorded(Event):
    """The carrier has a voicemail recording for the call (its recording status callback)."""

    recording_sid: str
    url: str | None
    duration_seconds: int | None


@dataclass(frozen=True, slots=True)
class LegDeclined(Event):
    """A forwarded callee asked to press 1 (confirm_answer) did not: no key (a voicemail box
    picked up, most likely) or another key. The leg counts as not answered."""

    leg_id: str
    user_id: str | None
    digits: str


@dataclass(frozen=True, slots=True)
class CarrierCallEvent:
    """One event of one carrier call, as subscribers receive it."""

    call_id: str  # the caller's CallSid
    at: datetime
    event: Event
    leg_sid: str | None = None  # the carrier's CallSid of the leg concerned, when known


EventListener = Callable[[CarrierCallEvent], None]
