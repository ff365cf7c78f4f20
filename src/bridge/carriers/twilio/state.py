"""The bridge's own record of each carrier call: the authoritative state, keyed by CallSid.

The query parameters we put in callback URLs (layer, dial number, leg) only say which record
a callback is about; what happens next is decided here, so a replayed, reordered or tampered
callback cannot move a call anywhere its record does not allow.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from bridge.calls.events import CallEventRecord
from bridge.calls.machine import CallMachine
from bridge.calls.registry import LiveCall
from bridge.calls.runner import RunningCall
from bridge.calls.supervision import RECORDING_ACTIVE, MonitorView, RecordingView
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
    # Conference mode: the REST request that rings it (a participant, or for press-1 legs a
    # call of its own); ending the leg waits for it, to know the CallSid to end.
    request: asyncio.Task[Any] | None = field(default=None, repr=False)


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


@dataclass(slots=True)
class ConferenceMember:
    """One participant of the call's conference, as the conference callbacks report it."""

    call_sid: str
    label: str | None = None
    present: bool = False  # joined and not left yet
    muted: bool = False
    coaching: bool = False
    sequence: int = -1  # the last conference SequenceNumber applied to it

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_sid": self.call_sid,
            "label": self.label,
            "present": self.present,
            "muted": self.muted,
            "coaching": self.coaching,
        }


@dataclass(slots=True)
class MonitorSession:
    """A supervisor listening, whispering or barging into the call's conference."""

    user_id: str
    mode: str  # listen | whisper | barge
    via: str  # client | phone_number
    to: str  # what the carrier dialled: client:<id> or the number
    call_sid: str | None = None  # the supervisor's participant call (known once created)
    status: str = "dialing"  # dialing | in-progress | ended
    started_at: float = 0.0  # the call's ring clock

    def view(self, *, pending: bool = False) -> MonitorView:
        """The session as supervision shows it (the API's JSON is the view's)."""
        return MonitorView(
            user_id=self.user_id,
            mode=self.mode,
            via=self.via,
            to=self.to,
            reference=self.call_sid,
            status=self.status,
            pending=pending,
        )

    def to_dict(self) -> dict[str, Any]:
        return self.view().to_dict()


@dataclass(slots=True)
class CallRecording:
    """The recording of the call started through the Recordings API (not a voicemail)."""

    sid: str | None = None  # RE..., once the carrier created it
    status: str = "starting"  # starting | in-progress | paused | stopped | completed | ...
    pause_behavior: str | None = None  # skip | silence, while paused
    url: str | None = None
    duration_seconds: int | None = None
    history: list[str] = field(default_factory=list)  # every status applied, in order

    @property
    def active(self) -> bool:
        """Recording or paused: it can still be paused, resumed or stopped."""
        return self.status in RECORDING_ACTIVE

    def view(self) -> RecordingView:
        """The recording as supervision shows it (the API's JSON is the view's)."""
        return RecordingView(
            reference=self.sid,
            status=self.status,
            pause_behavior=self.pause_behavior,
            url=self.url,
            duration_seconds=self.duration_seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        return self.view().to_dict()


@dataclass(eq=False, slots=True)
class CarrierCall:
    """One inbound carrier call from its voice webhook to its end (and a while after, so late
    and retried callbacks still find it)."""

    call_id: str  # the caller's CallSid
    run: RunningCall  # the call runner's side of it: the call core, the live entry, events
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
    # -- conference mode --
    mode: str = "dial"  # the bridging mode the call was answered in
    conference_sid: str | None = None  # CF...: participant updates and deletions need it
    conference_ended: bool = False
    started: float = 0.0  # monotonic time of the voice webhook: the ring clock's zero
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    members: dict[str, ConferenceMember] = field(default_factory=dict)  # by CallSid
    monitors: dict[str, MonitorSession] = field(default_factory=dict)  # by supervisor id
    recording: CallRecording | None = None  # the Recordings API one (not voicemail)
    caller_redirected: bool = False  # sent to voicemail / hang-up TwiML through the REST API

    @property
    def machine(self) -> CallMachine:
        return self.run.machine

    @property
    def live(self) -> LiveCall:
        return self.run.live

    @property
    def events(self) -> list[CallEventRecord]:
        return self.run.events

    def leg_sid(self, leg_id: str | None) -> str | None:
        meta = self.legs.get(leg_id) if leg_id is not None else None
        return meta.sid if meta is not None else None

    @property
    def caller_gone(self) -> bool:
        """The carrier reported the caller's own call over."""
        return self.caller_rank >= STATUS_RANK["completed"]

    def sid_over(self, sid: str | None) -> bool:
        """The carrier reported this call (a leg, a supervisor) over."""
        return sid is not None and self.sid_rank.get(sid, -1) >= STATUS_RANK["completed"]

    def answered_sid(self) -> str | None:
        """The CallSid of the leg that answered (the agent's, for whisper)."""
        return self.leg_sid(self.machine.answered_leg)

    def snapshot(self) -> dict[str, Any]:
        """The carrier's view of the call, for the control API and the live feed."""
        return {
            "call_id": self.call_id,
            "mode": self.mode,
            "state": self.machine.state.value,
            "answered_by": self.machine.answered_by,
            "answered_leg": self.machine.answered_leg,
            "answered_call_sid": self.answered_sid(),
            "conference_sid": self.conference_sid,
            "legs": [
                {**info.to_dict(), **_leg_extra(self.legs.get(info.leg_id))}
                for info in self.machine.legs()
            ],
            "participants": [m.to_dict() for m in self.members.values() if m.present],
            "monitors": [s.to_dict() for s in self.monitors.values()],
            "recording": self.recording.to_dict() if self.recording is not None else None,
        }


def _leg_extra(meta: LegMeta | None) -> dict[str, Any]:
    if meta is None:
        return {}
    return {"call_sid": meta.sid, "confirm": meta.confirm}
