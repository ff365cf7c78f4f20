"""The stored event itself, and its id (docs/events.md, "An event"): what the outbox, the
webhooks and the events worker handle, without the call core's types (`bridge.events.model`
makes these from the call runner's events), so that the events worker starts light."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

VERSION = 1  # of every payload (bridge.events.model); a change that is not additive raises it


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: str
    type: str
    occurred_at: datetime
    payload: dict[str, Any]
    call_id: str | None = None
    version: int = VERSION
    seq: int | None = None  # its place in the outbox, once stored

    def with_seq(self, seq: int | None) -> StoredEvent:
        """This event with its place in the outbox (`dataclasses.replace` costs four times
        this, and the writer calls it for every event it stores)."""
        return StoredEvent(
            self.id, self.type, self.occurred_at, self.payload, self.call_id, self.version, seq
        )

    def to_json(self) -> dict[str, Any]:
        """The event as webhooks carry it and the API shows it."""
        return {
            "id": self.id,
            "type": self.type,
            "version": self.version,
            "timestamp": self.occurred_at.isoformat().replace("+00:00", "Z"),
            "call_id": self.call_id,
            "data": self.payload,
        }


def new_event_id(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits (version 7,
    variant 10)."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    h = f"{((ms & _MS) << 80 | _random80()) & _KEEP | _SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_MS = (1 << 48) - 1
_KEEP = ~(0xF << 76 | 0x3 << 62)  # (the version's and the variant's bits cleared ...)
_SET = 0x7 << 76 | 0x2 << 62  # (... and set)
_RANDOM_POOL = 4000  # bytes of os.urandom read at once: one system call per 400 ids
_random_pool = b""
_random_at = 0
_random_lock = threading.Lock()  # (an audit record can be made in a thread)


def _random80() -> int:
    global _random_pool, _random_at
    with _random_lock:
        at = _random_at
        if at + 10 > len(_random_pool):
            _random_pool, at = os.urandom(_RANDOM_POOL), 0
        _random_at = at + 10
        return int.from_bytes(_random_pool[at : at + 10], "big")
