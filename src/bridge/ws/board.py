"""The live board (`calls.subscribe`) and the supervisor controls (`call.monitor`,
`call.recording`), which go through the same control service as the HTTP API.

What a subscriber sees follows the role matrix (docs/ROLES.md, bridge.directory.roles), looked
up again on every refresh so a role or flag change applies at once:

- calls: `see_live_calls` — all (admin, supervisor, reporter read-only, an agent with
  visibility "everything"), own (agents, reps: calls they ring for or answered), own lines
  (end clients: calls on their lines);
- agents: `read_directory` — every user who can take calls (all), or only themselves
  (own lines).

Calls come from the `CallRegistry` every dial path registers with, so the board needs no
hook in the call layer: each refresh diffs what a subscriber saw against what it may see now
and sends only the changes (`calls.update`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from bridge.calls.registry import CallRegistry, LiveCall
from bridge.control.errors import ControlError, ControlErrorKind
from bridge.control.service import ControlService
from bridge.directory.model import AccountStatus, Directory, User
from bridge.directory.roles import ROLES_THAT_RECEIVE_CALLS, Action, Scope, allowed
from bridge.observability.audit import audit
from bridge.presence.model import UserPresence
from bridge.presence.service import PresenceService
from bridge.ws.exceptions import ErrorCode, FrameError
from bridge.ws.schemas import (
    Ack,
    BoardAgent,
    BoardCall,
    CallMonitor,
    CallRecording,
    CallsBoard,
    CallsUpdate,
    ErrorFrame,
    FrameId,
    MonitorAnswer,
    MonitorMode,
)
from bridge.ws.sessions import Session

log = structlog.get_logger("bridge.ws")


def call_visible(user: User, scope: Scope, call: LiveCall) -> bool:
    """The same rule as GET /api/v1/calls."""
    if scope in (Scope.ALL, Scope.READ_ONLY):
        return True
    if scope is Scope.OWN_LINES:
        return call.line in user.lines
    if scope in (Scope.OWN, Scope.OWN_FLAG):
        return call.involves(user.id)
    return False


@dataclass(slots=True)
class _Subscriber:
    session: Session
    calls: dict[str, BoardCall] = field(default_factory=dict)
    agents: dict[str, BoardAgent] = field(default_factory=dict)


class Board:
    def __init__(
        self,
        calls: CallRegistry,
        presence: PresenceService,
        directory: Callable[[], Directory],
        sessions_of_user: Callable[[str], int],
    ) -> None:
        self._calls = calls
        self._presence = presence
        self._directory = directory
        self._sessions_of_user = sessions_of_user
        self._subscribers: dict[str, _Subscriber] = {}
        # user id -> (presence value, directory version, sessions, entry): agents are many and
        # change rarely, so an entry is only rebuilt when one of those changed.
        self._agent_cache: dict[str, tuple[UserPresence, int, int, BoardAgent]] = {}

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    # -- subscriptions ---------------------------------------------------------------------
    def subscribe(self, session: Session, user: User, frame_id: FrameId | None) -> None:
        scope, reason = allowed(user, Action.SEE_LIVE_CALLS)
        if scope is Scope.NONE:
            audit(
                user.id,
                user.role.value,
                Action.SEE_LIVE_CALLS,
                allowed=False,
                reason=reason,
                channel="ws",
            )
            raise FrameError(ErrorCode.FORBIDDEN, reason or "not allowed")
        sub = _Subscriber(session)
        self._subscribers[session.session_id] = sub
        calls, agents = self._view(user, scope, self._call_entries(), self._agent_entries())
        sub.calls, sub.agents = calls, agents
        board = CallsBoard(id=frame_id, calls=list(calls.values()), agents=list(agents.values()))
        session.send(board.text(), "calls.board")

    def unsubscribe(self, session: Session) -> None:
        self._subscribers.pop(session.session_id, None)

    def refresh(self) -> None:
        """Send each subscriber what changed in its view since the last refresh."""
        if not self._subscribers:
            return
        directory = self._directory()
        calls, agents = self._call_entries(), self._agent_entries()
        for sub in list(self._subscribers.values()):
            session = sub.session
            user = directory.user(session.user_id or "")
            scope = allowed(user, Action.SEE_LIVE_CALLS)[0] if user is not None else Scope.NONE
            if user is None or scope is Scope.NONE:
                # The role changed under the subscription: stop it and say why.
                self.unsubscribe(session)
                error = ErrorFrame(code=ErrorCode.FORBIDDEN, message="live board no longer allowed")
                session.send(error.text(), "error")
                continue
            new_calls, new_agents = self._view(user, scope, calls, agents)
            changed = [c for cid, c in new_calls.items() if sub.calls.get(cid) != c]
            removed = [cid for cid in sub.calls if cid not in new_calls]
            changed_agents = [a for uid, a in new_agents.items() if sub.agents.get(uid) != a]
            sub.calls, sub.agents = new_calls, new_agents
            if changed or removed or changed_agents:
                update = CallsUpdate(calls=changed, removed=removed, agents=changed_agents)
                session.send(update.text(), "calls.update")

    # -- supervisor controls ---------------------------------------------------------------
    async def control(
        self,
        user: User,
        frame: CallMonitor | CallRecording | MonitorAnswer,
        service: ControlService | None,
    ) -> Ack:
        """`call.monitor` / `call.recording` through the control service the HTTP API uses: the
        same permission checks, call checks, audit (`origin="ws"`) and carrier commands. The
        answer is an `ack` with what the HTTP route would answer; a refusal raises the
        `ControlError`'s kind (as an error-frame code) and reason as an `error` frame."""
        if service is None:
            raise FrameError(ErrorCode.UNAVAILABLE, "call controls are not part of this daemon")
        try:
            if isinstance(frame, MonitorAnswer):
                result: dict[str, Any] | None = await service.answer_monitor(
                    user, frame.call_id, frame.sdp
                )
            elif isinstance(frame, CallRecording):
                result = await service.recording(
                    user, frame.call_id, frame.action.value, frame.pause_behavior, origin="ws"
                )
            elif frame.mode is MonitorMode.STOP:
                await service.stop_monitor(user, frame.call_id, origin="ws")
                result = None
            elif _monitors(service, user, frame.call_id):
                # A frame per button: the same frame with another mode switches live (PATCH).
                result = await service.change_monitor(
                    user, frame.call_id, frame.mode.value, frame.via, origin="ws"
                )
            else:
                result = await service.monitor(
                    user, frame.call_id, frame.mode.value, frame.via, origin="ws"
                )
        except ControlError as exc:
            if isinstance(frame, MonitorAnswer) and exc.kind is ControlErrorKind.INVALID:
                # an unusable answer, as for `call.accept`
                raise FrameError(ErrorCode.INVALID_FRAME, exc.reason, "sdp") from None
            raise FrameError(_error_code(exc), exc.reason) from None
        return Ack(id=frame.id, result=result)

    # -- views -----------------------------------------------------------------------------
    def snapshot(self, user: User) -> tuple[list[BoardCall], list[BoardAgent]]:
        """What `user` would see on the board now (for tests and the API)."""
        scope = allowed(user, Action.SEE_LIVE_CALLS)[0]
        calls, agents = self._view(user, scope, self._call_entries(), self._agent_entries())
        return list(calls.values()), list(agents.values())

    def _view(
        self,
        user: User,
        scope: Scope,
        calls: list[tuple[LiveCall, BoardCall]],
        agents: dict[str, BoardAgent],
    ) -> tuple[dict[str, BoardCall], dict[str, BoardAgent]]:
        visible_calls = {
            entry.call_id: entry for call, entry in calls if call_visible(user, scope, call)
        }
        directory_scope = allowed(user, Action.READ_DIRECTORY)[0]
        if directory_scope is Scope.ALL:
            visible_agents = agents
        elif directory_scope is Scope.NONE:
            visible_agents = {}
        else:
            visible_agents = {user.id: agents[user.id]} if user.id in agents else {}
        return visible_calls, visible_agents

    def _call_entries(self) -> list[tuple[LiveCall, BoardCall]]:
        return [
            (
                call,
                BoardCall(
                    call_id=call.call_id,
                    path=call.path,
                    line=call.line,
                    caller=call.caller,
                    started_at=call.started_at,
                    state=call.state,
                    ringing=sorted(call.ringing),
                    answered_by=call.answered_by,
                ),
            )
            for call in self._calls.all()
        ]

    def _agent_entries(self) -> dict[str, BoardAgent]:
        directory = self._directory()
        entries: dict[str, BoardAgent] = {}
        for user in directory.users:
            if user.role not in ROLES_THAT_RECEIVE_CALLS or user.status is AccountStatus.SUSPENDED:
                continue
            presence = self._presence.presence_of(user.id)
            sessions = self._sessions_of_user(user.id)
            cached = self._agent_cache.get(user.id)
            if (
                cached is not None
                and cached[0] is presence
                and cached[1] == directory.version
                and cached[2] == sessions
            ):
                entries[user.id] = cached[3]
                continue
            entry = BoardAgent(
                user_id=user.id,
                name=user.name,
                role=user.role.value,
                answer_by=user.answer_by.value,
                status=user.status.value,
                availability=presence.availability,
                on_call=presence.on_call,
                wrap_up_until=presence.wrap_up_until,
                reachable=sorted(c.value for c in presence.reachable),
                sessions=sessions,
            )
            self._agent_cache[user.id] = (presence, directory.version, sessions, entry)
            entries[user.id] = entry
        for gone in self._agent_cache.keys() - entries.keys():
            del self._agent_cache[gone]
        return entries


def _monitors(service: ControlService, user: User, call_id: str) -> bool:
    """The user already has a monitoring session on the call."""
    call = service.find(call_id)
    return call is not None and user.id in call.monitors


# The error-frame code of each kind of control refusal (the HTTP API maps the same kinds to
# its statuses in bridge.control.http).
ERROR_CODES = {
    ControlErrorKind.INVALID: ErrorCode.INVALID,
    ControlErrorKind.NOT_ALLOWED: ErrorCode.FORBIDDEN,
    ControlErrorKind.NOT_FOUND: ErrorCode.NOT_FOUND,
    ControlErrorKind.NOT_POSSIBLE: ErrorCode.CONFLICT,
    ControlErrorKind.UPSTREAM_FAILED: ErrorCode.CARRIER_FAILED,
    ControlErrorKind.UNAVAILABLE: ErrorCode.UNAVAILABLE,
}


def _error_code(error: ControlError) -> ErrorCode:
    return ERROR_CODES.get(error.kind, ErrorCode.INVALID)
