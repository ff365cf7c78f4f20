"""One WebSocket connection: its user, its rate limit, its heartbeat clock and its outbox.

A session never awaits the network on behalf of someone else. `send()` hands the frame to the
connection's ASGI `send` at once, in the caller's stack: uvicorn's `send` writes to the
transport without suspending unless the transport is paused (a slow reader). Only then does a
task finish that write and whatever is queued after it, in order; so a fan-out to a thousand
sessions is a thousand writes and no task, and one slow client only delays itself. Sessions are
many (10,000 per bridge is the target) and mostly idle, hence `__slots__` and no per-session
timer or task while idle: the gateway's one heartbeat task pings them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from bridge.ratelimit import TokenBucket

log = structlog.get_logger("bridge.ws")


Message = dict[str, Any]
AsgiSend = Callable[[Message], Awaitable[None]]


class Session:
    """A connection; `user_id` is set once it has authenticated (then it is a *session*)."""

    __slots__ = (
        "_flusher",
        "_on_out",
        "_outbox",
        "_send",
        "bucket",
        "closing",
        "dead",
        "device",
        "jitter",
        "last_ping",
        "last_seen",
        "next_check",
        "opened",
        "session_id",
        "strikes",
        "token_expires",
        "user_id",
    )

    def __init__(
        self,
        send: AsgiSend,
        session_id: str,
        now: float,
        bucket: TokenBucket,
        strikes: TokenBucket,
        on_out: Callable[[str], None],
    ) -> None:
        self._send = send  # the connection's ASGI `send`
        self.session_id = session_id
        self.user_id: str | None = None
        self.device: str | None = None
        self.token_expires = 0.0  # epoch seconds of the token's `exp`
        self.opened = now
        self.last_seen = now  # loop time of the last frame from the client
        self.last_ping = 0.0  # loop time of our last ping
        self.next_check = 0.0  # loop time the heartbeat looks at it next (its heap entry)
        # Pinged after ping_interval x jitter of silence: sessions that connected together
        # (a reconnect storm, a load run) do not all get their pings in the same pass.
        self.jitter = 0.75 + random.random() / 4
        self.bucket = bucket  # frames allowed
        self.strikes = strikes  # frames refused before the connection is closed as a flood
        self.closing = False  # a close is queued: nothing more is sent
        self.dead = False  # a write failed: the peer is gone
        self._on_out = on_out
        # Messages waiting behind a write that had to wait for the transport (else None).
        self._outbox: deque[Message] | None = None
        self._flusher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Session {self.session_id} user={self.user_id}>"

    # -- sending -----------------------------------------------------------------------------
    def send(self, text: str, kind: str) -> None:
        """Send one frame (`kind` is its type, for the metrics). Never blocks."""
        if self.closing or self.dead:
            return
        self._on_out(kind)
        self._write({"type": "websocket.send", "text": text})

    def close(self, code: int, reason: str) -> None:
        """Close after whatever is already queued (a `server.draining` first)."""
        if self.closing or self.dead:
            return
        self.closing = True
        self._write({"type": "websocket.close", "code": code, "reason": reason})

    def _write(self, message: Message) -> None:
        if self._flusher is not None:  # an earlier write waits for the transport: after it
            assert self._outbox is not None
            self._outbox.append(message)
            return
        # Step the ASGI `send` coroutine by hand: with uvicorn it runs to its end (the frame
        # is in the kernel) unless the transport is paused. Measured on a fan-out to 1,000 of
        # 10,000 sessions, this costs no task and leaves no object behind per frame (a task
        # per session and burst made the fan-out itself trigger young collections).
        coro = self._send(message)
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        except Exception as exc:  # the peer went away; its handler cleans up
            self._failed(exc)
            return
        # It waits (for the transport to drain, most likely): a task drives it to its end,
        # then writes what was queued meanwhile.
        self._outbox = deque()
        self._flusher = asyncio.get_running_loop().create_task(self._flush(coro, waiting))

    async def _flush(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        outbox = self._outbox
        try:
            await _resume(coro, waiting)
            while outbox:
                await self._send(outbox.popleft())
        except Exception as exc:  # the peer went away mid-write; its handler cleans up
            self._failed(exc)
        finally:
            self._flusher = None
            self._outbox = None  # idle sessions keep no deque

    def _failed(self, exc: BaseException) -> None:
        self.dead = True
        if self._outbox:
            self._outbox.clear()
        log.debug("ws_send_failed", session_id=self.session_id, error=repr(exc))

    @property
    def writing(self) -> bool:
        """Frames queued and not yet handed to the transport."""
        return self._flusher is not None

    async def flushed(self, timeout: float) -> None:
        """Wait (bounded) until everything queued, the close included, has been written."""
        flusher = self._flusher
        if flusher is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(flusher), timeout)


async def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Run a coroutine that was started by hand (`coro.send(None)` gave `waiting`) to its end,
    the way an asyncio task would have: wait for what it waits for, then step it again."""
    try:
        while True:
            if waiting is None:  # a bare yield (asyncio.sleep(0))
                await asyncio.sleep(0)
            else:
                # The coroutine reads the outcome from the future itself when stepped.
                with contextlib.suppress(Exception):
                    await asyncio.shield(waiting)
            waiting = coro.send(None)
    except StopIteration:
        return
    finally:
        coro.close()  # (a no-op once it has finished)
