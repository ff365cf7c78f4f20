"""The bridge's own record of each carrier call: the authoritative state, keyed by CallSid.

The query parameters we put in callback URLs (layer, dial number, leg) only say which record
a callback is about; what happens next is decided here, so a replayed, reordered or tampered
callback cannot move a call anywhere its record does not allow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.calls.machine import CallMachine
from bridge.calls.registry import LiveCall
from bridge.carriers.twilio.events import CarrierCallEvent
from bridge.directory.model import Directory, Line
from bridge.presence.model import Channel
from bridge.routing.model import FallbackStep

# Call progress only moves forward: a callback whose status ranks at or below the last one
# seen for the same CallSid is a retry or arrived late, and changes nothing.
STATUS_RANK = {
    "queued": 0,
    "initiated": 0,
    "ringing": 1,
    "in-progress": 2,
    "completed": 3,
    "busy": 3,
    "failed": 3,
    "no-answer": 3,
    "canceled": 3,
}


@dataclass(slots=True)
class LegMeta:
    """What the carrier side knows about one leg the call core dialled."""

    leg_id: str
    user_id: str | None  # None: a forward to a number (fallback, Backup Routing)
    via: Channel
    number: str | None
    confirm: bool  # the callee must press 1 before the leg counts as answered
    sid: str | None = None  # the carrier's CallSid of its latest attempt
    answered: bool = False  # the carrier reported it in progress (picked up)
    confirmed: bool = False  # pressed 1
    declined_in: int | None = None  # the <Dial> in which it was picked up but not confirmed


@dataclass(slots=True)
class DialRecord:
    """One `<Dial>` we answered with: which legs it rang and until when (ring clock)."""

    seq: int
    leg_ids: tuple[str, ...]
    started: float
    deadline: float
    layer_index: int | None  # None: the forward leg
    fallback_depth: int | None
    twiml: str | None = None  # our answer to its action request, replayed on retries


@dataclass(eq=False, slots=True)
class CarrierCall:
    """One inbound carrier call from its voice webhook to its end (and a while after, so late
    and retried callbacks still find it)."""

    call_id: str  # the caller's CallSid
    machine: CallMachine
    live: LiveCall
    directory: Directory  # the snapshot the call was routed on
    line: Line | None
    caller: str | None
    # The ring clock: seconds of ringing as the carrier's <Dial> timeouts count them. It moves
    # only when a <Dial> rang out, so the call core's deadlines match the timeouts we gave.
    now: float = 0.0
    answer: str | None = None  # the TwiML answered to the voice webhook, replayed on retries
    caller_rank: int = -1  # highest STATUS_RANK seen on the caller's own CallSid
    legs: dict[str, LegMeta] = field(default_factory=dict)
    leg_by_sid: dict[str, str] = field(default_factory=dict)
    sid_rank: dict[str, int] = field(default_factory=dict)  # per leg CallSid
    dials: dict[int, DialRecord] = field(default_factory=dict)
    replies: dict[str, str] = field(default_factory=dict)  # other replayable answers
    voicemail: FallbackStep | None = None
    recordings: dict[str, str] = field(default_factory=dict)  # RecordingSid -> status
    events: list[CarrierCallEvent] = field(default_factory=list)

    def leg_sid(self, leg_id: str | None) -> str | None:
        meta = self.legs.get(leg_id) if leg_id is not None else None
        return meta.sid if meta is not None else None
