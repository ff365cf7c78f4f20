"""The control service: who may listen / whisper / barge or control the recording of which call,
and then the call's supervision (the `Supervision` port, `bridge.calls.ports`: the carrier's
conference on carrier calls; SIP calls answer "not supported" until the media engine).

Checks, in this order, each refusal a `ControlError` value with its kind:

1. the role and permission flag (`directory/roles.py`, from docs/ROLES.md): `monitor_calls`
   needs the `barge_whisper` flag (admin, supervisor, agent); `control_recording` is any call
   for admin and supervisor, only one's own calls and only with `recording_control` for agent
   and rep -> `NotAllowed` with the reason;
2. supervision is possible at all (the carrier's REST API is configured) -> `Unavailable`;
   the call exists and is live -> `CallNotFound`;
3. for the recording's own-calls rule: the user is the one who answered it -> `NotAllowed`;
4. the call can take it: its path supports it on this call (`NotSupportedOnCall` from the
   port: a carrier call in dial mode, any SIP call for now), answered, not already monitored
   by this user, a recording to pause, ... -> `NotPossible` (`Invalid` for a supervisor to be
   called on a number they do not have);
5. the supervision's command; the carrier refusing or not answering after the REST client's
   retries -> `UpstreamFailed`.

Every attempt, allowed or refused, is audited (`audit` log line: who, what, which call, allowed,
outcome, the error's kind and reason; the time is the line's) and published on the call as a
`ControlAttempted` event (through `publish`, which drops it when no call has that id). The
same methods serve the HTTP routes and the WebSocket gateway; each maps the error's kind its
own way (an HTTP status, an error frame's code).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import structlog

from bridge.calls.events import CallState, Event
from bridge.calls.ports import Supervision
from bridge.calls.supervision import (
    MONITOR_MODES,
    MONITOR_VIA,
    PAUSE_BEHAVIORS,
    AnswerUnusable,
    MonitorView,
    SupervisableCall,
    SupervisionError,
    SupervisionFailed,
    SupervisionUnavailable,
)
from bridge.control.errors import (
    CallNotFound,
    ControlError,
    Invalid,
    NotAllowed,
    NotPossible,
    Unavailable,
    UpstreamFailed,
)
from bridge.control.events import ControlAttempted
from bridge.directory.model import User
from bridge.directory.roles import Action, Scope, allowed
from bridge.observability.audit import audit
from bridge.observability.metrics import Metrics

log = structlog.get_logger("bridge.control")

RECORDING_ACTIONS = ("start", "pause", "resume", "stop")

# Publishes an event on the call with that id (nothing when there is none).
Publish = Callable[[str, Event], object]


class _Attempt:
    """One control attempt: audits and publishes it on the way out, whatever happened, and
    turns the supervision's errors into `ControlError` values."""

    def __init__(
        self,
        service: ControlService,
        user: User,
        action: Action,
        control: str,
        detail: str,
        call_id: str,
        origin: str | None,
        **extra: Any,
    ) -> None:
        self.service = service
        self.user = user
        self.action = action
        self.control = control
        self.detail = detail
        self.call_id = call_id
        self.origin = origin
        self.extra = {k: v for k, v in extra.items() if v is not None}
        self.allowed = False

    async def __aenter__(self) -> _Attempt:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failure: ControlError | None = None
        if isinstance(exc, SupervisionError):
            failure = _control_error(exc)
        elif isinstance(exc, ControlError):
            failure = exc
        elif exc is not None:
            return  # a bug of ours (or a cancellation): not an attempt's outcome
        if failure is None:
            self._record("done", None)
            return
        self._record("failed" if isinstance(failure, UpstreamFailed) else "refused", failure)
        if failure is not exc:
            raise failure from exc

    def _record(self, outcome: str, failure: ControlError | None) -> None:
        self.service.metrics_hook(self.control, outcome)
        kind = failure.kind if failure is not None else None
        reason = failure.reason if failure is not None else None
        audit(
            self.user.id,
            self.user.role.value,
            self.action,
            allowed=self.allowed,
            target=f"call:{self.call_id}",
            reason=reason,
            control=self.control,
            detail=self.detail,
            outcome=outcome,
            error=kind.value if kind is not None else None,
            origin=self.origin,
            **self.extra,
        )
        self.service.publish(
            self.call_id,
            ControlAttempted(
                actor=self.user.id,
                actor_role=self.user.role.value,
                control=self.control,
                detail=self.detail,
                allowed=self.allowed,
                outcome=outcome,
                error=kind,
                reason=reason,
            ),
        )


def _control_error(error: SupervisionError) -> ControlError:
    """The supervision's error as the control's value."""
    if isinstance(error, AnswerUnusable):
        return Invalid(error.reason)
    if isinstance(error, SupervisionFailed):
        return UpstreamFailed(error.reason)
    if isinstance(error, SupervisionUnavailable):
        return Unavailable(error.reason)
    return NotPossible(error.reason)  # NotSupportedOnCall, NotPossibleNow


class ControlService:
    """Listen / whisper / barge and recording controls (see the module docstring)."""

    def __init__(
        self,
        supervision: Supervision,
        publish: Publish,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.supervision = supervision
        self.publish = publish
        self.metrics = metrics

    # -- listen / whisper / barge --------------------------------------------------------------
    async def monitor(
        self,
        user: User,
        call_id: str,
        mode: str,
        via: str = "client",
        *,
        origin: str | None = None,
    ) -> dict[str, Any]:
        """Join the call as a supervisor: `listen` (muted), `whisper` (coaching the agent) or
        `barge` (talking to both), called on the apps (`client`) or the user's number."""
        async with _Attempt(
            self, user, Action.MONITOR_CALLS, "monitor", mode, call_id, origin, via=via
        ) as attempt:
            _check_choice("mode", mode, MONITOR_MODES)
            _check_choice("via", via, MONITOR_VIA)
            self._may(user, Action.MONITOR_CALLS)
            attempt.allowed = True
            call = self._monitorable(call_id, user)
            if user.id in call.monitors:
                raise NotPossible(
                    f"user {user.id!r} already monitors call {call_id!r}: PATCH to switch mode"
                )
            if via == "phone_number" and not user.phone_number:
                raise Invalid(f"user {user.id!r} has no phone_number to be called on")
            _whisper_possible(call, mode)
            session = await self.supervision.join(
                call_id, user.id, mode, via, user.phone_number if via == "phone_number" else None
            )
            return {"call_id": call_id, **session.to_dict()}

    async def change_monitor(
        self,
        user: User,
        call_id: str,
        mode: str,
        via: str | None = None,
        *,
        origin: str | None = None,
    ) -> dict[str, Any]:
        """Switch the user's monitoring of the call to another mode, live."""
        async with _Attempt(
            self, user, Action.MONITOR_CALLS, "monitor_change", mode, call_id, origin
        ) as attempt:
            _check_choice("mode", mode, MONITOR_MODES)
            self._may(user, Action.MONITOR_CALLS)
            attempt.allowed = True
            call = self._monitorable(call_id, user)
            session = _session(call, user)
            if via is not None and via != session.via:
                raise NotPossible(
                    f"via cannot change ({session.via} now): DELETE, then POST with via={via}"
                )
            _whisper_possible(call, mode)
            if mode != session.mode:
                session = await self.supervision.switch(call_id, user.id, mode)
            return {"call_id": call_id, **session.to_dict()}

    async def answer_monitor(
        self, user: User, call_id: str, sdp: str, *, origin: str | None = "ws"
    ) -> dict[str, Any]:
        """The supervisor's own app answers the offer of their `via="client"` join (SIP path):
        no permission beyond being that supervisor, whose join was checked and audited."""
        async with _Attempt(
            self, user, Action.MONITOR_CALLS, "monitor_answer", "answer", call_id, origin
        ) as attempt:
            attempt.allowed = True
            call = self._live_call(call_id)
            _session(call, user)
            session = await self.supervision.answer_monitor(call_id, user.id, sdp)
            return {"call_id": call_id, **session.to_dict()}

    async def stop_monitor(self, user: User, call_id: str, *, origin: str | None = None) -> None:
        """Leave the call (the supervisor's participant is removed). Leaving one's own session
        needs no permission: a supervisor whose flag was just taken away can still hang up."""
        async with _Attempt(
            self, user, Action.MONITOR_CALLS, "monitor_stop", "leave", call_id, origin
        ) as attempt:
            own = self.find(call_id)
            if own is None or user.id not in own.monitors:
                self._may(user, Action.MONITOR_CALLS)
            attempt.allowed = True
            call = self._live_call(call_id)
            _session(call, user)
            await self.supervision.leave(call_id, user.id)

    # -- recording -----------------------------------------------------------------------------
    async def recording(
        self,
        user: User,
        call_id: str,
        action: str,
        pause_behavior: str | None = None,
        *,
        origin: str | None = None,
    ) -> dict[str, Any]:
        """Start, pause (`skip` or `silence`), resume or stop the call's recording."""
        async with _Attempt(
            self,
            user,
            Action.CONTROL_RECORDING,
            "recording",
            action,
            call_id,
            origin,
            pause_behavior=pause_behavior,
        ) as attempt:
            _check_choice("action", action, RECORDING_ACTIONS)
            if pause_behavior is not None:
                _check_choice("pause_behavior", pause_behavior, PAUSE_BEHAVIORS)
            scope = self._may(user, Action.CONTROL_RECORDING)
            call = self._live_call(call_id)
            if scope in (Scope.OWN, Scope.OWN_FLAG) and call.answered_by != user.id:
                raise NotAllowed(
                    f"role {user.role.value!r} may only control the recording of calls they "
                    f"answered; call {call_id!r} is not theirs"
                )
            attempt.allowed = True
            if call.cannot_record is not None:
                raise NotPossible(call.cannot_record)
            if call.state is not CallState.ANSWERED:
                raise NotPossible(f"call {call_id!r} is not answered (it is {call.state.value})")
            recording = call.recording
            if action == "start":
                if recording is not None and recording.active:
                    raise NotPossible(f"call {call_id!r} is already being recorded")
                done = await self.supervision.start_recording(call_id)
            else:
                if recording is None or not recording.active:
                    raise NotPossible(f"call {call_id!r} has no recording to {action}")
                if recording.reference is None:
                    raise NotPossible("the recording is still starting; try again")
                wanted = {"pause": "in-progress", "resume": "paused"}.get(action)
                if wanted is not None and recording.status != wanted:
                    raise NotPossible(
                        f"the recording is {recording.status}: it cannot {action} now"
                    )
                if action == "pause":
                    done = await self.supervision.pause_recording(
                        call_id, pause_behavior or "silence"
                    )
                elif action == "resume":
                    done = await self.supervision.resume_recording(call_id)
                else:
                    done = await self.supervision.stop_recording(call_id)
            return {"call_id": call_id, **done.to_dict()}

    # -- reading -------------------------------------------------------------------------------
    def find(self, call_id: str) -> SupervisableCall | None:
        """The call as supervision sees it (None when unknown, or none can be supervised)."""
        try:
            return self.supervision.call(call_id)
        except SupervisionUnavailable:
            return None

    def metrics_hook(self, control: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.control_attempts.labels(control=control, outcome=outcome).inc()

    # -- checks --------------------------------------------------------------------------------
    @staticmethod
    def _may(user: User, action: Action) -> Scope:
        scope, reason = allowed(user, action)
        if scope is Scope.NONE:
            raise NotAllowed(reason or f"user {user.id!r} may not {action.value}")
        return scope

    def _live_call(self, call_id: str) -> SupervisableCall:
        call = self.supervision.call(call_id)  # SupervisionUnavailable -> Unavailable
        if call is None or call.state is CallState.ENDED:
            raise CallNotFound(f"no live call {call_id!r}")
        return call

    def _monitorable(self, call_id: str, user: User) -> SupervisableCall:
        call = self._live_call(call_id)
        if call.cannot_monitor is not None:
            raise NotPossible(call.cannot_monitor)
        if call.state is not CallState.ANSWERED:
            raise NotPossible(f"call {call_id!r} is not answered (it is {call.state.value})")
        if call.answered_by == user.id:
            raise NotPossible(f"user {user.id!r} is the one on call {call_id!r}")
        return call


def _session(call: SupervisableCall, user: User) -> MonitorView:
    session = call.monitors.get(user.id)
    if session is None:
        raise NotPossible(f"user {user.id!r} is not monitoring call {call.call_id!r}")
    if session.pending:
        raise NotPossible(f"user {user.id!r} is still being dialled into the call")
    return session


def _whisper_possible(call: SupervisableCall, mode: str) -> None:
    if mode == "whisper" and call.cannot_whisper is not None:
        raise NotPossible(call.cannot_whisper)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise Invalid(f"{name} must be one of {', '.join(choices)}, not {value!r}")
