"""What the call core says: commands for the dial adapters, events for everyone else.

Both are small frozen dataclasses. `CallMachine` returns them in one ordered list per input
(causal order: a `CancelLeg` comes before the `CallEnded` it leads to), so an adapter can run
the commands and publish the events from one loop. Nothing here does I/O.

Commands (an adapter must act on them):

- `DialLeg`: ring one user on one channel (or the forward number): an offer to every app
  session, an INVITE to every registered desk-phone contact, an outbound call to a number.
- `CancelLeg`: stop ringing a leg that has not answered (`CancelReason` says why; the same
  words go to app clients over the WebSocket).
- `BridgeTo`: connect the caller and this (answered) leg; answers the caller if needed.
- `HangupLeg`: end a leg that answered (the bridged leg at the end of the call, a leg whose
  answer lost the race, or the caller's side, `CALLER_LEG`).
- `RejectCaller`: refuse the unanswered caller (SIP status and Q.850 cause for the trunk or
  carrier), optionally after playing `prompt`.
- `StartFallback`: the call leaves the ring groups for `step`. For voicemail the adapter
  connects the caller to voicemail (with `step.prompt`); for the other actions it may play
  `step.prompt` and the mechanics follow as commands (`DialLeg` for forward, `RejectCaller`
  for hangup, `DialLeg`s of the next group for ring_group).
- `RingCaller`: relay ringing (and, with `early_media`, that leg's early media) to the caller.
- `MarkOnCall` / `MarkCallEnded`: presence hooks (`PresenceService.call_started/call_ended`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from bridge.directory.model import FallbackAction
from bridge.presence.model import Channel
from bridge.routing.model import FallbackStep

__all__ = [
    "BridgeTo",
    "CallAnswered",
    "CallEnded",
    "CallEventRecord",
    "CallOutcome",
    "CallRinging",
    "CallState",
    "CancelLeg",
    "CancelReason",
    "Command",
    "DialLeg",
    "Diversion",
    "DiversionReason",
    "EndCause",
    "Event",
    "FallbackStarted",
    "HangupLeg",
    "LayerExhausted",
    "LegFailure",
    "LegReason",
    "LegRinging",
    "LegState",
    "MarkCallEnded",
    "MarkOnCall",
    "Output",
    "RejectCaller",
    "RingCaller",
    "Side",
    "StartFallback",
]


class LegReason(StrEnum):
    """Why a leg stops: the reasons of the product's WebSocket protocol, plus `callee_hangup`
    (only ever sent for the caller's side, when the answering party hangs up)."""

    ANSWERED_ELSEWHERE = "answered_elsewhere"
    CALLER_HANGUP = "caller_hangup"
    TIMEOUT = "timeout"
    REJECTED = "rejected"
    LAYER_MOVED_ON = "layer_moved_on"
    MEDIA_FAILED = "media_failed"  # the app accepted, its audio could not be set up (ICE, DTLS)
    CALLEE_HANGUP = "callee_hangup"


# The name the WebSocket protocol uses for an offer withdrawn before it was answered.
CancelReason = LegReason


class LegFailure(StrEnum):
    """How a leg failed before answering, as the adapter reports it."""

    BUSY = "busy"
    REJECTED = "rejected"  # the user declined this call
    UNREACHABLE = "unreachable"  # no endpoint answered the offer / INVITE, 4xx/5xx, timeout
    MEDIA_FAILED = "media_failed"  # answered, but its audio could not be set up (ICE, DTLS)

    @classmethod
    def from_sip_status(cls, status: int) -> LegFailure:
        """486 Busy Here / 600 Busy Everywhere: busy; 603 Decline: rejected; else unreachable."""
        if status in (486, 600):
            return cls.BUSY
        if status == 603:
            return cls.REJECTED
        return cls.UNREACHABLE


class Side(StrEnum):
    CALLER = "caller"
    CALLEE = "callee"


class CallState(StrEnum):
    NEW = "new"  # built, start() not called yet
    RINGING = "ringing"  # legs are being dialed (members, or the forward number)
    ANSWERED = "answered"  # caller bridged to a leg
    VOICEMAIL = "voicemail"  # caller handed to voicemail, waiting for them to hang up
    ENDED = "ended"


class LegState(StrEnum):
    DIALING = "dialing"  # DialLeg sent, no ringing yet
    RINGING = "ringing"
    BRIDGED = "bridged"  # the winner
    CANCELLED = "cancelled"  # CancelLeg sent
    FAILED = "failed"  # the adapter reported busy / rejected / unreachable
    HUNG_UP = "hung_up"  # answered too late (after a CancelLeg) and hung up at once
    ENDED = "ended"  # the bridged leg after the call ended

    @property
    def live(self) -> bool:
        """Still ringing: it may yet answer and win."""
        return self in (LegState.DIALING, LegState.RINGING)


class CallOutcome(StrEnum):
    """One per call, for `bridge_calls_total{outcome}`; known when `CallEnded` is emitted.

    - answered: a member (of the line's group or of a fallback group) answered
    - caller_cancelled: the caller hung up before anyone (or the forward number) answered
    - no_answer_fallback: nobody answered and the fallback could not take the call either
      (the forward number did not answer or failed)
    - voicemail / forwarded / hangup: the fallback that took the call
    - closed: the line was closed (whatever its closed action then did)
    - no_route: the number is not ours
    """

    ANSWERED = "answered"
    CALLER_CANCELLED = "caller_cancelled"
    NO_ANSWER_FALLBACK = "no_answer_fallback"
    VOICEMAIL = "voicemail"
    FORWARDED = "forwarded"
    HANGUP = "hangup"
    CLOSED = "closed"
    NO_ROUTE = "no_route"


class EndCause(StrEnum):
    """Who or what ended the call."""

    CALLER_HANGUP = "caller_hangup"
    CALLEE_HANGUP = "callee_hangup"
    REJECTED = "rejected"  # the bridge refused the caller (RejectCaller)


class DiversionReason(StrEnum):
    """RFC 5806 Diversion reasons, for a call forwarded to a number."""

    NO_ANSWER = "no-answer"  # members were rung, nobody answered
    UNAVAILABLE = "unavailable"  # nobody could be rung
    TIME_OF_DAY = "time-of-day"  # the line is closed


@dataclass(frozen=True, slots=True)
class Diversion:
    """Why and from where a forwarded call was diverted (a SIP Diversion / History-Info
    header, or the carrier's equivalent)."""

    reason: DiversionReason
    line: str | None  # the dialled line, when there is one
    target_kind: str | None  # "ring_group" | "user"
    target_id: str | None
    why: str  # the plan's words (FallbackStep.why)


# --- commands -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """Base class of everything an adapter must do."""


@dataclass(frozen=True, slots=True)
class DialLeg(Command):
    leg_id: str
    user_id: str | None  # None for a forward to a number
    via: Channel
    number: str | None  # for Channel.PHONE_NUMBER
    # When the call core will stop this leg if nothing else happens first (a deadline on the
    # caller's clock); adapters may hand it on (a carrier's ring timeout) but need not.
    timeout_at: float
    diversion: Diversion | None = None


@dataclass(frozen=True, slots=True)
class CancelLeg(Command):
    leg_id: str
    reason: LegReason


@dataclass(frozen=True, slots=True)
class BridgeTo(Command):
    leg_id: str


@dataclass(frozen=True, slots=True)
class HangupLeg(Command):
    leg_id: str
    reason: LegReason


@dataclass(frozen=True, slots=True)
class RejectCaller(Command):
    status: int  # SIP status for the trunk
    cause: int  # Q.850 cause for a carrier
    reason: str
    prompt: str | None = None


@dataclass(frozen=True, slots=True)
class StartFallback(Command):
    step: FallbackStep


@dataclass(frozen=True, slots=True)
class RingCaller(Command):
    leg_id: str  # the leg whose ringing (or early media) is relayed
    early_media: bool = False


@dataclass(frozen=True, slots=True)
class MarkOnCall(Command):
    user_id: str


@dataclass(frozen=True, slots=True)
class MarkCallEnded(Command):
    user_id: str


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of what happened, for logs, metrics, the API and the live feed."""


@dataclass(frozen=True, slots=True)
class CallRinging(Event):
    layer_index: int
    user_ids: tuple[str, ...]  # everyone being rung now, in dial order
    fallback_depth: int = 0  # 0: the line's own plan, 1: its fallback group, ...


@dataclass(frozen=True, slots=True)
class LegRinging(Event):
    leg_id: str
    user_id: str | None


@dataclass(frozen=True, slots=True)
class CallAnswered(Event):
    user_id: str | None  # None: the forward number answered
    leg_id: str
    via: Channel


@dataclass(frozen=True, slots=True)
class LayerExhausted(Event):
    index: int
    fallback_depth: int = 0
    timed_out: bool = True  # False: every leg failed before the layer timeout


@dataclass(frozen=True, slots=True)
class FallbackStarted(Event):
    action: FallbackAction
    why: str = ""


@dataclass(frozen=True, slots=True)
class CallEnded(Event):
    cause: EndCause
    outcome: CallOutcome


Output = Command | Event


@dataclass(frozen=True, slots=True)
class CallEventRecord:
    """One event of one call, as subscribers of the call runner receive it, on every path."""

    call_id: str
    path: str  # "sip" | "carrier"
    at: datetime
    event: Event
    leg_ref: str | None = None  # the path's own id of the leg concerned (a carrier CallSid)


@dataclass(frozen=True, slots=True)
class LegDeclined(Event):
    """A forwarded callee asked to press 1 (confirm_answer) did not: no key (a voicemail box
    picked up, most likely) or another key. The leg counts as not answered."""

    leg_id: str
    user_id: str | None
    digits: str


@dataclass(frozen=True, slots=True)
class VoicemailLeft(Event):
    """The caller left a voicemail message the bridge recorded itself (the SIP path)."""

    voicemail_id: str
    duration_seconds: float
    ended_by: str  # pound | silence | hangup | max_length
