"""One WebSocket connection: its user, its rate limit, its heartbeat clock and its outbox.

A session never awaits the network on behalf of someone else: `send()` appends to an outbox
and a short-lived task (only while there is something to write) drains it in order. So a
fan-out to a thousand sessions is a thousand appends, and one slow client only delays itself.
Sessions are many (10,000 per bridge is the target) and mostly idle, hence `__slots__` and no
per-session timer or task while idle: the gateway's one sweeper does the heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from starlette.websockets import WebSocket

log = structlog.get_logger("bridge.ws")


class TokenBucket:
    """`rate` tokens per second up to `capacity`; `take()` spends one if there is one."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, now: float) -> bool:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class Session:
    """A connection; `user_id` is set once it has authenticated (then it is a *session*)."""

    __slots__ = (
        "_flusher",
        "_on_out",
        "_outbox",
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
        "ws",
    )

    def __init__(
        self,
        ws: WebSocket,
        session_id: str,
        now: float,
        bucket: TokenBucket,
        strikes: TokenBucket,
        on_out: Callable[[str], None],
    ) -> None:
        self.ws = ws
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
        self._outbox: deque[str | _Close] | None = None
        self._flusher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Session {self.session_id} user={self.user_id}>"

    # -- sending -----------------------------------------------------------------------------
    def send(self, text: str, kind: str) -> None:
        """Queue one frame (`kind` is its type, for the metrics). Never blocks."""
        if self.closing or self.dead:
            return
        self._on_out(kind)
        self._queue(text)

    def close(self, code: int, reason: str) -> None:
        """Queue the close after whatever is already queued (a `server.draining` first)."""
        if self.closing or self.dead:
            return
        self.closing = True
        self._queue(_Close(code, reason))

    def _queue(self, item: str | _Close) -> None:
        # A task per burst, not a write in the caller's stack: measured on a fan-out to 1,000
        # sessions, writing each frame inline (stepping the ASGI send by hand) was slower than
        # queueing and letting one task per session write its queue (about 70 vs 40 us per
        # send), and it keeps the caller (an offer, a webhook) independent of slow sockets.
        if self._outbox is None:
            self._outbox = deque()
        self._outbox.append(item)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        outbox = self._outbox
        try:
            while outbox:
                item = outbox.popleft()
                if isinstance(item, _Close):
                    outbox.clear()
                    await self.ws.close(item.code, item.reason)
                    break
                await self.ws.send_text(item)
        except Exception as exc:  # the peer went away mid-write; its handler cleans up
            self.dead = True
            if outbox:
                outbox.clear()
            log.debug("ws_send_failed", session_id=self.session_id, error=repr(exc))
        finally:
            self._flusher = None
            if not outbox:
                self._outbox = None  # idle sessions keep no deque

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
