"""Supervision of live calls (listen / whisper / barge, recording) as the call layer sees it:
the values the `Supervision` port (`bridge.calls.ports`) answers with, the errors it raises,
and the one `Supervision` the control service is given, `SupervisionByPath`, which sends each
call to the implementation of its dial path.

Who may supervise which call is decided before any of this (`bridge.control`); a path's
implementation checks only what it alone knows (the carrier's conference mode, its REST API,
whether the agent's leg is known yet) and answers with these values and errors:

- `SupervisableCall`: a read-only view of one call (its state, who answered, who monitors it,
  its recording, and why it cannot be monitored / recorded / whispered into, if so);
- `MonitorView`, `RecordingView`: a supervisor's session and the call's recording, with
  `to_dict()` giving the control API's JSON;
- `NotSupportedOnCall` (this call can never do that), `NotPossibleNow` (not in this state),
  `SupervisionUnavailable` (the path cannot supervise any call now), `SupervisionFailed` (the
  path tried and failed: the carrier refused or did not answer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from bridge.calls.events import CallState
from bridge.calls.registry import CallRegistry, LiveCall

if TYPE_CHECKING:
    from bridge.calls.ports import Supervision

MonitorMode = Literal["listen", "whisper", "barge"]
# the user's apps, their phone_number, or their registered desk phone (SIP calls)
MonitorVia = Literal["client", "phone_number", "ip_phone"]
PauseBehavior = Literal["skip", "silence"]
MONITOR_MODES: tuple[MonitorMode, ...] = ("listen", "whisper", "barge")
MONITOR_VIA: tuple[MonitorVia, ...] = ("client", "phone_number", "ip_phone")
PAUSE_BEHAVIORS: tuple[PauseBehavior, ...] = ("skip", "silence")

# -- errors ----------------------------------------------------------------------------------


class SupervisionError(Exception):
    """A supervision command a path refuses or could not carry out, with the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotSupportedOnCall(SupervisionError):
    """This call can never take that command (a SIP call before the media engine, a carrier
    call answered in dial mode)."""


class NotPossibleNow(SupervisionError):
    """The call could take it, but not in its present state."""


class AnswerUnusable(SupervisionError):
    """The supervisor app's SDP answer cannot be used (not SDP, no ICE credentials or
    fingerprint, no common codec)."""


class SupervisionUnavailable(SupervisionError):
    """The path cannot supervise any call now (the carrier's REST API is not configured)."""


class SupervisionFailed(SupervisionError):
    """The path tried and failed (the carrier refused or did not answer, after its retries);
    the call is as it was before."""


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MonitorView:
    """A supervisor listening, whispering or barging into a call."""

    user_id: str
    mode: str  # a MonitorMode
    via: str  # a MonitorVia
    to: str  # what the path dialled to reach the supervisor (client:<id>, a number)
    reference: str | None  # the path's own id of the supervisor's leg (the carrier's CallSid)
    status: str  # dialing | in-progress | ended
    # Still being set up (the supervisor is being dialled in): it cannot switch or stop yet.
    pending: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "mode": self.mode,
            "via": self.via,
            "to": self.to,
            "call_sid": self.reference,
            "status": self.status,
        }


# A recording in one of these can still be paused, resumed or stopped.
RECORDING_ACTIVE = frozenset({"starting", "in-progress", "paused"})


@dataclass(frozen=True, slots=True)
class RecordingView:
    """The call's recording (the one the controls start, not a voicemail)."""

    reference: str | None  # the path's own id of the recording (the carrier's RE... sid)
    status: str  # starting | in-progress | paused | stopped | completed | absent | failed
    pause_behavior: str | None = None  # skip | silence, while paused
    url: str | None = None
    duration_seconds: int | None = None

    @property
    def active(self) -> bool:
        """Recording or paused: it can still be paused, resumed or stopped."""
        return self.status in RECORDING_ACTIVE

    def to_dict(self) -> dict[str, Any]:
        return {
            "recording_sid": self.reference,
            "status": self.status,
            "pause_behavior": self.pause_behavior,
            "url": self.url,
            "duration_seconds": self.duration_seconds,
        }


@dataclass(frozen=True, slots=True)
class SupervisableCall:
    """A live (or just ended) call as the control service checks it."""

    call_id: str
    path: str  # "sip" | "carrier"
    state: CallState
    answered_by: str | None
    monitors: Mapping[str, MonitorView] = field(default_factory=dict)  # by supervisor id
    recording: RecordingView | None = None
    # Why listen / whisper / barge, or the recording, can never be used on this call; None
    # when they can (`NotSupportedOnCall` if asked anyway).
    cannot_monitor: str | None = None
    cannot_record: str | None = None
    # Why whisper cannot be used now (the agent's leg to coach is not known yet), or None.
    cannot_whisper: str | None = None


# -- implementations -------------------------------------------------------------------------


class Unsupervised:
    """The `Supervision` of a path whose calls cannot be supervised (yet): each call is
    read from the registry, and every command is refused with `NotSupportedOnCall(reason)`."""

    def __init__(self, registry: CallRegistry, reason: str) -> None:
        self._registry = registry
        self.reason = reason

    def call(self, call_id: str) -> SupervisableCall | None:
        live = self._registry.get(call_id)
        if live is None:
            return None
        return SupervisableCall(
            call_id=live.call_id,
            path=live.path,
            state=_state(live),
            answered_by=live.answered_by,
            cannot_monitor=self.reason,
            cannot_record=self.reason,
        )

    async def join(
        self, call_id: str, user_id: str, mode: str, via: str, number: str | None
    ) -> MonitorView:
        raise NotSupportedOnCall(self.reason)

    async def switch(self, call_id: str, user_id: str, mode: str) -> MonitorView:
        raise NotSupportedOnCall(self.reason)

    async def answer_monitor(self, call_id: str, user_id: str, sdp: str) -> MonitorView:
        raise NotSupportedOnCall(self.reason)

    async def leave(self, call_id: str, user_id: str) -> None:
        raise NotSupportedOnCall(self.reason)

    async def start_recording(self, call_id: str) -> RecordingView:
        raise NotSupportedOnCall(self.reason)

    async def pause_recording(self, call_id: str, behavior: str) -> RecordingView:
        raise NotSupportedOnCall(self.reason)

    async def resume_recording(self, call_id: str) -> RecordingView:
        raise NotSupportedOnCall(self.reason)

    async def stop_recording(self, call_id: str) -> RecordingView:
        raise NotSupportedOnCall(self.reason)


def _state(live: LiveCall) -> CallState:
    try:
        return CallState(live.state)
    except ValueError:
        return CallState.RINGING


class SupervisionByPath:
    """The `Supervision` the control service is given: each command goes to the
    implementation of the call's dial path, as the live `CallRegistry` knows it (`path`).

    A call the registry does not know (unknown, or ended and dropped from it) goes to the
    `default` path's implementation, which may still remember it (the carrier keeps ended calls
    a while) or say it cannot supervise at all; a path with no implementation answers
    `NotSupportedOnCall`."""

    def __init__(
        self, registry: CallRegistry, paths: Mapping[str, Supervision], *, default: str
    ) -> None:
        if default not in paths:
            raise ValueError(f"no supervision for the default path {default!r}")
        self._registry = registry
        self._paths = dict(paths)
        self._default = default

    def of(self, call_id: str) -> Supervision:
        """The implementation that supervises this call."""
        live = self._registry.get(call_id)
        path = live.path if live is not None else self._default
        found = self._paths.get(path)
        if found is None:
            found = self._paths[path] = Unsupervised(
                self._registry, f"calls on the {path} path cannot be supervised"
            )
        return found

    def call(self, call_id: str) -> SupervisableCall | None:
        return self.of(call_id).call(call_id)

    async def join(
        self, call_id: str, user_id: str, mode: str, via: str, number: str | None
    ) -> MonitorView:
        return await self.of(call_id).join(call_id, user_id, mode, via, number)

    async def switch(self, call_id: str, user_id: str, mode: str) -> MonitorView:
        return await self.of(call_id).switch(call_id, user_id, mode)

    async def answer_monitor(self, call_id: str, user_id: str, sdp: str) -> MonitorView:
        return await self.of(call_id).answer_monitor(call_id, user_id, sdp)

    async def leave(self, call_id: str, user_id: str) -> None:
        await self.of(call_id).leave(call_id, user_id)

    async def start_recording(self, call_id: str) -> RecordingView:
        return await self.of(call_id).start_recording(call_id)

    async def pause_recording(self, call_id: str, behavior: str) -> RecordingView:
        return await self.of(call_id).pause_recording(call_id, behavior)

    async def resume_recording(self, call_id: str) -> RecordingView:
        return await self.of(call_id).resume_recording(call_id)

    async def stop_recording(self, call_id: str) -> RecordingView:
        return await self.of(call_id).stop_recording(call_id)
