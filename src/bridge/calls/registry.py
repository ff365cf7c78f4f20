"""Live calls: what the API lists and what a graceful shutdown waits for.

Dial paths (SIP, carrier, WebSocket) register their calls here; this issue has none yet, so
the registry is empty in practice, but draining and `GET /api/v1/calls` already use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class NotAcceptingCalls(Exception):
    """The daemon is draining for shutdown: new calls are refused."""


@dataclass(slots=True)
class LiveCall:
    call_id: str
    path: str  # "sip" | "carrier" | "ws"
    line: str | None
    caller: str | None
    started_at: datetime
    state: str = "ringing"  # ringing | answered | ended
    ringing: set[str] = field(default_factory=set)  # user ids being rung now
    answered_by: str | None = None

    def involves(self, user_id: str) -> bool:
        return self.answered_by == user_id or user_id in self.ringing

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "path": self.path,
            "line": self.line,
            "caller": self.caller,
            "started_at": self.started_at.isoformat(),
            "state": self.state,
            "ringing": sorted(self.ringing),
            "answered_by": self.answered_by,
        }


class CallRegistry:
    def __init__(self, on_count: Callable[[int], None] | None = None) -> None:
        self._on_count = on_count or (lambda count: None)
        self._calls: dict[str, LiveCall] = {}
        self._accepting = True
        self._empty = asyncio.Event()
        self._empty.set()

    @property
    def accepting(self) -> bool:
        return self._accepting

    def stop_accepting(self) -> None:
        self._accepting = False

    def add(self, call: LiveCall) -> None:
        if not self._accepting:
            raise NotAcceptingCalls(call.call_id)
        self._calls[call.call_id] = call
        self._empty.clear()
        self._on_count(len(self._calls))

    def remove(self, call_id: str) -> None:
        self._calls.pop(call_id, None)
        if not self._calls:
            self._empty.set()
        self._on_count(len(self._calls))

    def get(self, call_id: str) -> LiveCall | None:
        return self._calls.get(call_id)

    def all(self) -> list[LiveCall]:
        return list(self._calls.values())

    def __len__(self) -> int:
        return len(self._calls)

    async def wait_empty(self, timeout: float) -> bool:
        """True when every call ended within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            return False
        return True
