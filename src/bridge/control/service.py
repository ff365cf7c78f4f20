"""The control service: who may listen / whisper / barge or control the recording of which call,
and then the carrier's command (`bridge.carriers.twilio.supervision`).

Checks, in this order, each refusal a `ControlError` value:

1. the role and permission flag (`directory/roles.py`, from docs/ROLES.md): `monitor_calls`
   needs the `barge_whisper` flag (admin, supervisor, agent); `control_recording` is any call
   for admin and supervisor, only one's own calls and only with `recording_control` for agent
   and rep -> `NotAllowed` with the reason;
2. the call exists and is live -> `CallNotFound`;
3. for the recording's own-calls rule: the user is the one who answered it -> `NotAllowed`;
4. the call can take it now: conference mode for monitoring, answered, not already monitored
   by this user, a recording to pause, ... -> `NotPossible` (`Invalid` for a supervisor to be
   called on a number they do not have);
5. the carrier's command; a refusal or no answer after the REST client's retries ->
   `UpstreamFailed`.

Every attempt, allowed or refused, is audited (`audit` log line: who, what, which call, allowed,
outcome, the error's kind and reason; the time is the line's) and, when the call exists,
published on it as a `ControlAttempted` event. The same methods serve the HTTP routes and the
WebSocket gateway; each maps the error's kind its own way (an HTTP status, an error frame's
code).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import structlog

from bridge.calls.events import CallState
from bridge.carriers.twilio.rest import CarrierApiError
from bridge.carriers.twilio.service import TwilioCalls
from bridge.carriers.twilio.state import CarrierCall, MonitorSession
from bridge.carriers.twilio.supervision import TwilioSupervision
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

MONITOR_MODES = ("listen", "whisper", "barge")
MONITOR_VIA = ("client", "phone_number")
RECORDING_ACTIONS = ("start", "pause", "resume", "stop")
PAUSE_BEHAVIORS = ("skip", "silence")


class _Attempt:
    """One control attempt: audits and publishes it on the way out, whatever happened, and
    turns the carrier's failures into `UpstreamFailed`."""

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
        self.call: CarrierCall | None = None

    async def __aenter__(self) -> _Attempt:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failure: ControlError | None = None
        if isinstance(exc, CarrierApiError):
            failure = UpstreamFailed(f"the carrier refused or did not answer: {exc}")
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
        call = self.call or self.service.find(self.call_id)
        if call is not None and self.service.carrier is not None:
            self.service.carrier.publish(
                call,
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


class ControlService:
    """Listen / whisper / barge and recording controls (see the module docstring)."""

    def __init__(
        self,
        carrier: TwilioCalls | None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.carrier = carrier
        self.metrics = metrics
        self.supervision = TwilioSupervision(carrier) if carrier is not None else None

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
            supervision, call = self._monitorable(call_id, user)
            attempt.call = call
            if user.id in call.monitors:
                raise NotPossible(
                    f"user {user.id!r} already monitors call {call_id!r}: PATCH to switch mode"
                )
            if via == "phone_number":
                if not user.phone_number:
                    raise Invalid(f"user {user.id!r} has no phone_number to be called on")
                to = user.phone_number
            else:
                to = f"client:{user.id}"
            self._whisper_possible(call, mode)
            session = await supervision.join(call, user.id, mode, via, to)
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
            supervision, call = self._monitorable(call_id, user)
            attempt.call = call
            session = self._session(call, user)
            if via is not None and via != session.via:
                raise NotPossible(
                    f"via cannot change ({session.via} now): DELETE, then POST with via={via}"
                )
            self._whisper_possible(call, mode)
            if mode != session.mode:
                await supervision.switch(call, session, mode)
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
            supervision, call = self._live_call(call_id)
            attempt.call = call
            session = self._session(call, user)
            await supervision.leave(call, session)

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
            supervision, call = self._live_call(call_id)
            attempt.call = call
            if scope in (Scope.OWN, Scope.OWN_FLAG) and call.machine.answered_by != user.id:
                raise NotAllowed(
                    f"role {user.role.value!r} may only control the recording of calls they "
                    f"answered; call {call_id!r} is not theirs"
                )
            attempt.allowed = True
            if call.machine.state is not CallState.ANSWERED:
                raise NotPossible(f"call {call_id!r} is not answered (it is {_state(call)})")
            recording = call.recording
            if action == "start":
                if recording is not None and recording.active:
                    raise NotPossible(f"call {call_id!r} is already being recorded")
                recording = await supervision.start_recording(call)
            else:
                if recording is None or not recording.active:
                    raise NotPossible(f"call {call_id!r} has no recording to {action}")
                if recording.sid is None:
                    raise NotPossible("the recording is still starting; try again")
                wanted = {"pause": "in-progress", "resume": "paused"}.get(action)
                if wanted is not None and recording.status != wanted:
                    raise NotPossible(
                        f"the recording is {recording.status}: it cannot {action} now"
                    )
                status = {"pause": "paused", "resume": "in-progress", "stop": "stopped"}[action]
                behavior = (pause_behavior or "silence") if action == "pause" else None
                recording = await supervision.update_recording(call, status, behavior)
            return {"call_id": call_id, **recording.to_dict()}

    # -- reading -------------------------------------------------------------------------------
    def find(self, call_id: str) -> CarrierCall | None:
        if self.carrier is None:
            return None
        return self.carrier.find(call_id)

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

    def _live_call(self, call_id: str) -> tuple[TwilioSupervision, CarrierCall]:
        if self.supervision is None or self.carrier is None or self.carrier.rest is None:
            raise Unavailable(
                "call controls need the carrier's REST API: set [twilio] account_sid and "
                "auth_token (or an API key)"
            )
        call = self.carrier.find(call_id)
        if call is None or call.machine.ended:
            raise CallNotFound(f"no live call {call_id!r}")
        return self.supervision, call

    def _monitorable(self, call_id: str, user: User) -> tuple[TwilioSupervision, CarrierCall]:
        supervision, call = self._live_call(call_id)
        if not supervision.supports_monitoring(call):
            raise NotPossible(
                f"call {call_id!r} is in {call.mode} mode: listen, whisper and barge need "
                "[twilio] mode = 'conference'"
            )
        if call.machine.state is not CallState.ANSWERED:
            raise NotPossible(f"call {call_id!r} is not answered (it is {_state(call)})")
        if call.machine.answered_by == user.id:
            raise NotPossible(f"user {user.id!r} is the one on call {call_id!r}")
        return supervision, call

    @staticmethod
    def _session(call: CarrierCall, user: User) -> MonitorSession:
        session = call.monitors.get(user.id)
        if session is None:
            raise NotPossible(f"user {user.id!r} is not monitoring call {call.call_id!r}")
        if session.call_sid is None or call.conference_sid is None:
            raise NotPossible(f"user {user.id!r} is still being dialled into the call")
        return session

    @staticmethod
    def _whisper_possible(call: CarrierCall, mode: str) -> None:
        if mode == "whisper" and call.answered_sid() is None:
            raise NotPossible("the answering leg's call is not known yet: whisper needs it")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise Invalid(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _state(call: CarrierCall) -> str:
    return call.machine.state.value
