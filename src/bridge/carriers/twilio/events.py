"""The few facts only the carrier knows, as typed events published on the call (through the
call runner, stamped like every event with the call, the time and the carrier's CallSid of
the leg concerned as `CallEventRecord.leg_ref`).

Ringing (`CallRinging` per layer, `LegRinging` per leg), answered (`CallAnswered`: the user,
our leg id, the channel; the record's `leg_ref` is the carrier's CallSid of that leg) and ended
(`CallEnded`: cause and outcome) are the call core's own events (`bridge.calls.events`), so a
consumer reads carrier and SIP calls the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.calls.events import Event, LegDeclined

__all__ = ["LegDeclined", "VoicemailRecorded"]


@dataclass(frozen=True, slots=True)
class VoicemailRecorded(Event):
    """The carrier has a voicemail recording for the call (its recording status callback)."""

    recording_sid: str
    url: str | None
    duration_seconds: int | None
