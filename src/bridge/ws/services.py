"""The gateway: authenticates connections, keeps sessions and presence, dispatches frames.

One `Gateway` per daemon (built in plugin.py). `serve()` is a plain ASGI endpoint (mounted
at `/ws` ahead of FastAPI's middleware and router, see plugin.py): each connection runs it in
the task uvicorn gives it, and waits in the server's own `receive`, with no framework
coroutines or wrapper objects between (10,000 idle sessions keep far fewer objects alive).
Everything else — heartbeat, token expiry, presence pushes, the live board, grace periods —
runs from the heartbeat and sweeper tasks and a timer per user in grace, so an idle session
costs no task and no timer of its own.

Presence: a user is reachable on `apps` (`PresenceService.endpoint_up(user, Channel.APPS)`)
from their first session until `[ws] grace_seconds` after their last one closed; a session
that connects within the grace keeps the user reachable and receives the offers still
ringing. A suspended or deleted user is disconnected at once, without grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import structlog
from pydantic import ValidationError

from bridge.calls.registry import CallRegistry
from bridge.config import WsSettings
from bridge.directory.model import AccountStatus, Directory, User
from bridge.directory.roles import Action, Scope, allowed
from bridge.observability.audit import audit
from bridge.observability.metrics import Metrics
from bridge.presence.model import Channel, UserPresence
from bridge.presence.service import PresenceService
from bridge.text import valid_utf8
from bridge.tokens import TokenError, TokenService
from bridge.ws.board import Board
from bridge.ws.exceptions import CloseCode, CloseConnection, ErrorCode, FrameError
from bridge.ws.offers import OfferService
from bridge.ws.schemas import (
    CLIENT_FRAME,
    CLIENT_TYPES,
    Ack,
    Auth,
    AuthOk,
    CallAccept,
    CallHangup,
    CallMonitor,
    CallRecording,
    CallReject,
    CallsSubscribe,
    CallsUnsubscribe,
    ErrorFrame,
    FrameId,
    Heartbeat,
    Limits,
    MonitorAnswer,
    Ping,
    Pong,
    PresenceFrame,
    PresenceInfo,
    PresenceSet,
    ServerDraining,
    SessionUser,
)
from bridge.ws.sessions import AsgiSend, Session, TokenBucket
from bridge.ws.testcalls import TestCalls

log = structlog.get_logger("bridge.ws")

SUBPROTOCOL = "bridge.v1"
BEARER_PREFIX = "bearer."
PING_TEXT = Ping().text()
DRAINING_TEXT = ServerDraining().text()
# How long a closing handler waits for its close frame to be written.
CLOSE_FLUSH_SECONDS = 2.0
AsgiReceive = Callable[[], Awaitable[dict[str, Any]]]
HEARTBEAT_BATCH = 0.05  # seconds of due heartbeat work handled per pass
# The exact pong sim/apps and the console send: handled without JSON parsing or validation
# (it is most of what 10,000 idle sessions send).
PONG_TEXT = '{"v":1,"type":"pong"}'


class Gateway:
    def __init__(
        self,
        settings: WsSettings,
        *,
        directory: Callable[[], Directory],
        presence: PresenceService,
        calls: CallRegistry,
        tokens: TokenService,
        metrics: Metrics,
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self._directory = directory
        self._presence = presence
        self._tokens = tokens
        self._metrics = metrics
        self._sessions: dict[str, Session] = {}
        self._by_user: dict[str, dict[str, Session]] = {}
        self._up: set[str] = set()  # users we reported reachable (sessions or grace)
        self._grace: dict[str, asyncio.TimerHandle] = {}
        self._presence_sent: dict[str, UserPresence] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        # Call controls in progress, the last one per session: a session's controls run in
        # order, each after the one before, while its other frames go on being read.
        self._controls: dict[str, asyncio.Task[None]] = {}
        self._due: list[tuple[float, int, Session]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self.draining = False
        self.offers = OfferService(self, metrics, clock)
        self.test_calls = TestCalls(self.offers, clock)
        self.board = Board(calls, presence, directory, self.session_count)
        # Where call controls go: the daemon's control service (the HTTP routes' too), set
        # once at start-up (`use_control`); None: the frames are refused as unavailable.
        self.control: Any = None

    def use_control(self, control: Any) -> None:
        self.control = control

    # -- SessionHub (for the offer service) and introspection ------------------------------
    def sessions_of(self, user_id: str) -> Collection[Session]:
        sessions = self._by_user.get(user_id)
        return sessions.values() if sessions else ()

    def session_count(self, user_id: str | None = None) -> int:
        if user_id is None:
            return len(self._sessions)
        return len(self._by_user.get(user_id, ()))

    def reachable(self, user_id: str) -> bool:
        return user_id in self._up

    def user_name(self, user_id: str) -> str | None:
        user = self._directory().user(user_id)
        return user.name if user is not None else None

    async def written(self, user_ids: Collection[str], timeout: float) -> bool:
        """Wait (bounded) until every frame queued for these users' sessions has been handed
        to the transport. True when it was; for measurements (test offers)."""
        sessions = [s for user in user_ids for s in self.sessions_of(user)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Polling (not a waiter per session): the writes of a fan-out all run within a loop
        # iteration or two, and a thousand waiters would cost more than the check.
        while any(s.writing for s in sessions):
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0 if loop.time() + 0.05 > deadline else 0.001)
        return True

    # -- the connection --------------------------------------------------------------------
    async def serve(self, scope: dict[str, Any], receive: AsgiReceive, send: AsgiSend) -> None:
        """The ASGI endpoint of `/ws`: one connection from handshake to close. Nothing a
        client sends escapes."""
        self._bind_loop()
        token, device, subprotocol = _handshake_credentials(scope)
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if subprotocol is not None:
            accept["subprotocol"] = subprotocol
        try:
            if (await receive())["type"] != "websocket.connect":
                return  # the client left during the handshake
            await send(accept)
        except Exception:  # the client left during the handshake
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        s = self.settings
        session = Session(
            send,
            secrets.token_urlsafe(9),
            now,
            bucket=TokenBucket(s.rate_per_second, s.rate_burst, now),
            strikes=TokenBucket(s.rate_per_second, s.rate_flood_frames, now),
            on_out=self._count_out,
        )
        self._metrics.ws_connections.inc()
        try:
            await self._run(session, receive, token, device)
        except CloseConnection as exc:
            session.close(exc.code, exc.reason)
            if exc.code not in (CloseCode.GOING_AWAY, CloseCode.UNAUTHORIZED):
                log.info("ws_closed", session_id=session.session_id, user_id=session.user_id,
                         code=int(exc.code), reason=exc.reason)  # fmt: skip
        except Exception:
            log.exception("ws_error", session_id=session.session_id, user_id=session.user_id)
            session.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._unregister(session)
            self._metrics.ws_connections.dec()
            await session.flushed(CLOSE_FLUSH_SECONDS)

    async def _run(
        self, session: Session, receive: AsgiReceive, token: str | None, device: str | None
    ) -> None:
        if self.draining:
            session.send(DRAINING_TEXT, "server.draining")
            raise CloseConnection(CloseCode.GOING_AWAY, "server draining")
        auth_id: FrameId | None = None
        if token is None:
            frame = await self._first_frame(receive)
            if frame is None:
                return
            token, device, auth_id = frame.token, frame.device or device, frame.id
        user, expires = self._authenticate(token)
        session.device = device
        session.token_expires = expires
        self._register(session, user)
        session.send(self._auth_ok(session, user, auth_id), "auth.ok")
        self.offers.session_joined(session)
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":  # websocket.disconnect
                return
            await self._on_message(session, message)

    async def _first_frame(self, receive: AsgiReceive) -> Auth | None:
        timeout = self.settings.auth_timeout_seconds
        try:
            message = await asyncio.wait_for(receive(), timeout)
        except TimeoutError:
            raise CloseConnection(
                CloseCode.UNAUTHORIZED, f"no auth frame within {timeout:g} s"
            ) from None
        if message["type"] != "websocket.receive":  # websocket.disconnect
            return None
        self._check_size(message)
        try:
            frame = CLIENT_FRAME.validate_json(message.get("text") or message.get("bytes") or b"")
        except ValidationError:
            frame = None
        if not isinstance(frame, Auth):
            self._count_in("invalid")
            raise CloseConnection(CloseCode.UNAUTHORIZED, "the first frame must be a valid auth")
        self._count_in("auth")
        return frame

    def _authenticate(self, token: str) -> tuple[User, float]:
        """The user behind `token` now, and the token's expiry (epoch seconds)."""
        try:
            claims = self._tokens.verify(token)
        except TokenError as exc:
            reason = str(exc)
            self._refuse(reason)
            code = CloseCode.TOKEN_EXPIRED if reason == "token expired" else CloseCode.UNAUTHORIZED
            raise CloseConnection(code, reason) from None
        user = self._directory().user(str(claims["sub"]))
        if user is None:
            self._refuse("unknown user")
            raise CloseConnection(CloseCode.FORBIDDEN, "unknown user")
        if user.status is AccountStatus.SUSPENDED:
            self._refuse("account suspended")
            raise CloseConnection(CloseCode.FORBIDDEN, "account suspended")
        return user, float(claims["exp"])

    def _refuse(self, reason: str) -> None:
        self._metrics.auth_failures.labels(reason=reason.split(":")[0]).inc()
        log.info("auth_refused", reason=reason, path="/ws")

    def _auth_ok(self, session: Session, user: User, frame_id: FrameId | None) -> str:
        s = self.settings
        return AuthOk(
            id=frame_id,
            session_id=session.session_id,
            user=SessionUser(
                id=user.id, name=user.name, role=user.role.value, answer_by=user.answer_by.value
            ),
            expires_at=datetime.fromtimestamp(session.token_expires, UTC),
            heartbeat=Heartbeat(
                interval_seconds=s.ping_interval_seconds, timeout_seconds=s.ping_timeout_seconds
            ),
            limits=Limits(
                max_frame_bytes=s.max_frame_bytes,
                rate_per_second=s.rate_per_second,
                rate_burst=s.rate_burst,
            ),
            presence=self._presence_info(user.id, self._presence.presence_of(user.id)),
        ).text()

    # -- frames ----------------------------------------------------------------------------
    async def _on_message(self, session: Session, message: dict[str, Any]) -> None:
        now = asyncio.get_running_loop().time()
        session.last_seen = now
        self._check_size(message)
        if not session.bucket.take(now):
            self._count_in("rate_limited")
            if not session.strikes.take(now):
                raise CloseConnection(CloseCode.POLICY_VIOLATION, "flood: over the rate limit")
            self._error(session, None, FrameError(ErrorCode.RATE_LIMITED, "over the rate limit"))
            return
        text = message.get("text")
        if text == PONG_TEXT:
            self._count_in("pong")
            return
        if text is None:
            self._count_in("invalid")
            error = FrameError(ErrorCode.BINARY_NOT_SUPPORTED, "send JSON text frames")
            self._error(session, None, error)
            return
        frame_id: FrameId | None = None
        try:
            raw = _parse(text)
            frame_id = _frame_id(raw)
            frame = _validate(raw)
        except FrameError as exc:
            self._count_in("invalid")
            self._error(session, frame_id, exc)
            return
        self._count_in(frame.type)
        try:
            await self._dispatch(session, frame)
        except FrameError as exc:
            self._error(session, frame.id, exc)

    def _check_size(self, message: dict[str, Any]) -> None:
        limit = self.settings.max_frame_bytes
        text, data = message.get("text"), message.get("bytes")
        # A str has at most 4 UTF-8 bytes per character: encode only when it could be over.
        size = (
            len(data or b"")
            if text is None
            else (len(text) if len(text) * 4 <= limit else len(text.encode()))
        )
        if size > limit:
            raise CloseConnection(CloseCode.MESSAGE_TOO_BIG, f"frame over {limit} bytes")

    async def _dispatch(self, session: Session, frame: Any) -> None:
        if isinstance(frame, Pong):
            return
        user = self._directory().user(session.user_id or "")
        if user is None:  # deleted a moment ago; the directory listener closes it
            raise FrameError(ErrorCode.FORBIDDEN, "unknown user")
        if isinstance(frame, CallAccept):
            await self.offers.accept(session, frame)
        elif isinstance(frame, CallReject):
            self.offers.reject(session, frame)
        elif isinstance(frame, CallHangup):
            self.offers.hangup(session, frame)
        elif isinstance(frame, PresenceSet):
            self._set_presence(session, user, frame)
        elif isinstance(frame, CallsSubscribe):
            self.board.subscribe(session, user, frame.id)
        elif isinstance(frame, CallsUnsubscribe):
            self.board.unsubscribe(session)
            session.send(Ack(id=frame.id).text(), "ack")
        elif isinstance(frame, CallMonitor | CallRecording | MonitorAnswer):
            # The control service is the daemon's (`ctx.control`, as the HTTP routes find it).
            # It may wait for the carrier (up to the REST client's retry budget): run it beside
            # the session's reading, after the session's previous control (Barge then Leave
            # must reach the carrier in that order).
            control = self.control
            previous = self._controls.get(session.session_id)
            task = asyncio.get_running_loop().create_task(
                self._control(session, user, frame, control, previous)
            )
            sid = session.session_id
            self._controls[sid] = task
            task.add_done_callback(lambda done: self._control_done(sid, done))
        elif isinstance(frame, Auth):
            self._reauth(session, frame)

    async def _control(
        self,
        session: Session,
        user: User,
        frame: CallMonitor | CallRecording | MonitorAnswer,
        control: Any,
        previous: asyncio.Task[None] | None,
    ) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        try:
            ack = await self.board.control(user, frame, control)
        except FrameError as exc:
            self._error(session, frame.id, exc)
            return
        except Exception:
            log.exception("ws_control_failed", session_id=session.session_id)
            self._error(session, frame.id, FrameError(ErrorCode.CARRIER_FAILED, "control failed"))
            return
        session.send(ack.text(), "ack")

    def _control_done(self, session_id: str, task: asyncio.Task[None]) -> None:
        if self._controls.get(session_id) is task:
            del self._controls[session_id]

    def _reauth(self, session: Session, frame: Auth) -> None:
        """A fresh token for the same user extends the session."""
        try:
            user, expires = self._authenticate(frame.token)
        except CloseConnection as exc:
            if exc.code is CloseCode.FORBIDDEN:
                raise
            raise FrameError(ErrorCode.INVALID_FRAME, exc.reason, "token") from None
        if user.id != session.user_id:
            raise FrameError(ErrorCode.AUTH_MISMATCH, "the token is for another user", "token")
        session.token_expires = max(session.token_expires, expires)
        session.send(self._auth_ok(session, user, frame.id), "auth.ok")

    def _set_presence(self, session: Session, user: User, frame: PresenceSet) -> None:
        scope, reason = allowed(user, Action.SET_OWN_AVAILABILITY)
        target = f"user:{user.id}"
        if scope is Scope.NONE:
            audit(user.id, user.role.value, Action.SET_OWN_AVAILABILITY, allowed=False,
                  target=target, reason=reason, channel="ws")  # fmt: skip
            raise FrameError(ErrorCode.FORBIDDEN, reason or "not allowed")
        presence = self._presence.set_availability(user.id, frame.availability)
        audit(user.id, user.role.value, "set_availability", allowed=True, target=target,
              status=frame.availability.value, channel="ws")  # fmt: skip
        self._push_presence(user.id, presence, reply=(session, frame.id))
        self.board.refresh()

    def _error(self, session: Session, frame_id: FrameId | None, exc: FrameError) -> None:
        frame = ErrorFrame(id=frame_id, code=exc.code, message=exc.message, field=exc.field)
        session.send(frame.text(), "error")

    # -- presence --------------------------------------------------------------------------
    @staticmethod
    def _presence_info(user_id: str, presence: UserPresence) -> PresenceInfo:
        return PresenceInfo(
            user_id=user_id,
            availability=presence.availability,
            on_call=presence.on_call,
            wrap_up_until=presence.wrap_up_until,
            reachable=sorted(c.value for c in presence.reachable),
        )

    def _push_presence(
        self,
        user_id: str,
        presence: UserPresence,
        reply: tuple[Session, FrameId | None] | None = None,
    ) -> None:
        self._presence_sent[user_id] = presence
        frame = PresenceFrame(**self._presence_info(user_id, presence).model_dump())
        text = frame.text()
        for session in self.sessions_of(user_id):
            if reply is not None and session is reply[0] and reply[1] is not None:
                session.send(frame.model_copy(update={"id": reply[1]}).text(), "presence")
            else:
                session.send(text, "presence")

    def _refresh_presence(self) -> None:
        """Presence changed elsewhere (HTTP API, the call engine's on-call / wrap-up)."""
        for user_id in list(self._by_user):
            presence = self._presence.presence_of(user_id)
            sent = self._presence_sent.get(user_id)
            if presence is not sent and presence != sent:
                self._push_presence(user_id, presence)
            elif presence is not sent:
                self._presence_sent[user_id] = presence

    # -- sessions and reachability ---------------------------------------------------------
    def _register(self, session: Session, user: User) -> None:
        sessions = self._by_user.get(user.id)
        if sessions is not None and len(sessions) >= self.settings.max_sessions_per_user:
            raise CloseConnection(
                CloseCode.TOO_MANY_SESSIONS,
                f"already {len(sessions)} sessions (max_sessions_per_user)",
            )
        session.user_id = user.id
        self._sessions[session.session_id] = session
        self._by_user.setdefault(user.id, {})[session.session_id] = session
        timer = self._grace.pop(user.id, None)
        if timer is not None:
            timer.cancel()  # back within the grace period: still reachable
        if user.id not in self._up:
            self._up.add(user.id)
            self._presence.endpoint_up(user.id, Channel.APPS)
        self._presence_sent[user.id] = self._presence.presence_of(user.id)
        now, wall = asyncio.get_running_loop().time(), time.time()
        first = now + self.settings.ping_interval_seconds * session.jitter
        self._schedule(session, min(first, now + (session.token_expires - wall)))
        log.debug("ws_session_opened", session_id=session.session_id, user_id=user.id)

    def _unregister(self, session: Session, *, grace: bool = True) -> None:
        user_id = session.user_id
        if user_id is None or self._sessions.pop(session.session_id, None) is None:
            return
        self.board.unsubscribe(session)
        sessions = self._by_user.get(user_id, {})
        sessions.pop(session.session_id, None)
        log.debug("ws_session_closed", session_id=session.session_id, user_id=user_id)
        if sessions:
            return
        self._by_user.pop(user_id, None)
        self._presence_sent.pop(user_id, None)
        wait = self.settings.grace_seconds
        if grace and wait > 0 and self._loop is not None:
            self._grace[user_id] = self._loop.call_later(wait, self._gone, user_id)
        else:
            self._gone(user_id)

    def _gone(self, user_id: str) -> None:
        """The user's last session is closed and the grace period (if any) is over."""
        self._grace.pop(user_id, None)
        if user_id in self._by_user or user_id not in self._up:
            return
        self._up.discard(user_id)
        self._presence.endpoint_down(user_id, Channel.APPS)
        self.offers.user_unreachable(user_id)

    def kick_user(self, user_id: str, code: CloseCode, reason: str) -> int:
        """Close every session of a user now, without grace. Returns how many."""
        sessions = list(self.sessions_of(user_id))
        for session in sessions:
            session.close(code, reason)
            self._unregister(session, grace=False)
        timer = self._grace.pop(user_id, None)
        if timer is not None:
            timer.cancel()
        self._gone(user_id)
        if sessions:
            log.info("ws_user_disconnected", user_id=user_id, sessions=len(sessions), reason=reason)
        return len(sessions)

    # -- directory changes -----------------------------------------------------------------
    def on_directory_change(self, new: Directory, old: Directory | None) -> None:
        """DirectoryStore listener. It runs in whichever thread changed the directory (the
        API's sync routes run in a worker thread), so the work is handed to the loop."""
        loop = self._loop
        if old is None or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._apply_directory(new)
        else:
            loop.call_soon_threadsafe(self._apply_directory, new)

    def _apply_directory(self, directory: Directory) -> None:
        for user_id in list(self._by_user) + list(self._grace):
            user = directory.user(user_id)
            if user is None:
                self.kick_user(user_id, CloseCode.FORBIDDEN, "user deleted")
            elif user.status is AccountStatus.SUSPENDED:
                self.kick_user(user_id, CloseCode.FORBIDDEN, "account suspended")

    # -- background work: the heartbeat, and the sweeper (presence, board, offers) --------
    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first connection (or tests running a new loop)
            self._loop = loop
            self._due.clear()
            self._wake = asyncio.Event()  # an Event belongs to the loop that first waits on it
            self._sweeper = self._heartbeat_task = None
        if self._sweeper is None:  # (again after close_all)
            self._sweeper = loop.create_task(self._sweep(), name="ws-sweeper")
            self._heartbeat_task = loop.create_task(self._heartbeats(), name="ws-heartbeat")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_seconds)
            try:
                self.sweep_once()
            except Exception:
                log.exception("ws_sweep_failed")

    def sweep_once(self) -> None:
        self._refresh_presence()
        self.board.refresh()
        self.offers.expire()

    # The heartbeat is a heap of (when to look at a session again, seq, session), not a scan
    # of every session: with 10,000 sessions a scan every second cost more than the pings,
    # and sending a second's worth of pings in one go delayed any fan-out caught behind it.
    # Each pass handles what is due in the last HEARTBEAT_BATCH seconds. One entry per session;
    # a frame from the client only moves `last_seen`, and the entry, when it comes up,
    # reschedules from there.
    def _schedule(self, session: Session, when: float) -> None:
        session.next_check = when
        heapq.heappush(self._due, (when, next(self._seq), session))
        if self._due[0][2] is session:
            self._wake.set()  # sooner than the heartbeat task planned to look

    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delay = self._due[0][0] - loop.time() if self._due else 3600.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, delay))
            await asyncio.sleep(HEARTBEAT_BATCH)  # gather what falls due meanwhile
            try:
                self._heartbeat(loop.time(), time.time())
            except Exception:
                log.exception("ws_heartbeat_failed")

    def _heartbeat(self, now: float, wall: float) -> None:
        due = self._due
        while due and due[0][0] <= now:
            when, _, session = heapq.heappop(due)
            if when != session.next_check or self._sessions.get(session.session_id) is not session:
                continue  # stale entry, or the session is gone
            self._check(session, now, wall)

    def _check(self, session: Session, now: float, wall: float) -> None:
        interval = self.settings.ping_interval_seconds
        dead_after = interval + self.settings.ping_timeout_seconds
        silent = now - session.last_seen
        if session.dead or silent >= dead_after:
            session.close(CloseCode.HEARTBEAT_TIMEOUT, f"no frame for {silent:.0f} s")
            self._unregister(session)
            log.info("ws_peer_dead", session_id=session.session_id, user_id=session.user_id)
            return
        if session.token_expires <= wall:
            session.close(CloseCode.TOKEN_EXPIRED, "token expired")
            self._unregister(session)
            return
        if silent >= interval * session.jitter:
            if session.last_ping <= session.last_seen:
                session.last_ping = now
                session.send(PING_TEXT, "ping")
                # Look again before the next ping would be due: answered by then, it is
                # rescheduled an interval after the pong (pings stay spread over sessions).
                later = now + min(self.settings.ping_timeout_seconds, interval * session.jitter)
            else:
                later = session.last_seen + dead_after  # dead then, unless it answers
        else:
            later = session.last_seen + interval * session.jitter
        self._schedule(session, min(later, now + (session.token_expires - wall)))

    # -- shutdown --------------------------------------------------------------------------
    def begin_drain(self) -> int:
        """Tell every session the server is going away (`server.draining`); new connections
        get the same and are closed with 1001. Returns how many sessions were told."""
        self.draining = True
        for session in self._sessions.values():
            session.send(DRAINING_TEXT, "server.draining")
        log.info("ws_draining", sessions=len(self._sessions))
        return len(self._sessions)

    async def close_all(self, timeout: float = CLOSE_FLUSH_SECONDS) -> int:
        """Close every session with 1001 (after `server.draining`) and wait, bounded, for the
        close frames to be written. Call it before the HTTP listener stops."""
        if not self.draining:
            self.begin_drain()
        sessions = list(self._sessions.values())
        for session in sessions:
            session.close(CloseCode.GOING_AWAY, "server draining")
        if sessions:
            await asyncio.wait(
                [asyncio.ensure_future(s.flushed(timeout)) for s in sessions], timeout=timeout
            )
        for task in (self._sweeper, self._heartbeat_task, *self._controls.values()):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._sweeper = self._heartbeat_task = None
        self._controls.clear()
        self._due.clear()  # the heartbeat is stopped: its entries would hold closed sessions
        return len(sessions)

    async def drain(self) -> int:
        """`begin_drain()` then `close_all()`, for a caller with nothing to wait for between."""
        self.begin_drain()
        return await self.close_all()

    # -- metrics ---------------------------------------------------------------------------
    def _count_out(self, kind: str) -> None:
        self._metrics.child(self._metrics.ws_messages, "out", kind).inc()

    def _count_in(self, kind: str) -> None:
        self._metrics.child(self._metrics.ws_messages, "in", kind).inc()


# -- helpers -------------------------------------------------------------------------------------
def _handshake_credentials(
    scope: dict[str, Any],
) -> tuple[str | None, str | None, str | None]:
    """(token, device, subprotocol to select) from `Sec-WebSocket-Protocol` or the query."""
    offered: list[str] = list(scope.get("subprotocols") or [])
    raw_query = scope.get("query_string") or b""
    query = parse_qs(raw_query.decode("latin-1"), keep_blank_values=True) if raw_query else {}
    token = next((p[len(BEARER_PREFIX) :] for p in offered if p.startswith(BEARER_PREFIX)), None)
    if token is None:
        token = _param(query, "token")
    # A browser fails the handshake unless we select one of the protocols it offered.
    if SUBPROTOCOL in offered:
        selected: str | None = SUBPROTOCOL
    else:
        selected = next((p for p in offered if p.startswith(BEARER_PREFIX)), None)
    device = _param(query, "device")
    return token, device[:40] if device else None, selected


def _param(query: dict[str, list[str]], name: str) -> str | None:
    """A query parameter (the last one of that name, as Starlette's `query_params` gives it)."""
    values = query.get(name)
    return (values[-1] or None) if values else None


def _parse(text: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except ValueError:
        raise FrameError(ErrorCode.NOT_JSON, "not JSON") from None
    except RecursionError:  # ([[[...]]] a thousand deep fits in 2 kB: it closed with 1011)
        raise FrameError(ErrorCode.NOT_JSON, "nested too deep") from None
    if not isinstance(raw, dict):
        raise FrameError(ErrorCode.NOT_JSON, "a frame is a JSON object")
    return raw


def _frame_id(raw: dict[str, Any]) -> FrameId | None:
    """The frame's id when it is a usable one, so even a refused frame's error echoes it."""
    value = raw.get("id")
    # (a JSON string can hold a lone surrogate, "\udcff": no frame of ours can carry it back)
    if isinstance(value, str) and 0 < len(value) <= 64 and valid_utf8(value) is value:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _validate(raw: dict[str, Any]) -> Any:
    if "v" not in raw:
        raise FrameError(
            ErrorCode.INVALID_FRAME, "v: field required (the protocol version, 1)", "v"
        )
    if raw["v"] != 1 or isinstance(raw["v"], bool):
        raise FrameError(
            ErrorCode.UNSUPPORTED_VERSION, f"protocol version {raw['v']!r} is not supported", "v"
        )
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise FrameError(ErrorCode.INVALID_FRAME, "type: field required (a string)", "type")
    if kind not in CLIENT_TYPES:
        raise FrameError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {kind[:64]!r}", "type")
    try:
        return CLIENT_FRAME.validate_python(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        # loc is (type tag, field, ...): name the field, without the names pydantic gives
        # the branches of a union ("constrained-str"), which are no field of the protocol.
        parts = [str(part) for part in error["loc"][1:]]
        where = ".".join(p for p in parts if not _UNION_BRANCH.fullmatch(p)) or "frame"
        message = error["msg"]
        if where == "id":  # both branches failed: say what an id may be
            message = "a string of 1 to 64 characters or an integer >= 0"
        raise FrameError(ErrorCode.INVALID_FRAME, f"{where}: {message}", where) from None


# What pydantic puts in an error's loc for a branch of a union: "str", "constrained-int",
# "function-after[...]" and the like (field names of the protocol are snake_case).
_UNION_BRANCH = re.compile(r"(?:constrained-)?(?:str|int|float|bool|none)|.*[-\[].*")
