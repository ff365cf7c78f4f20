"""What the outbox stores: one `StoredEvent` per thing that happened (docs/events.md).

An event has a stable id (a UUIDv7: time-ordered, unique without coordination), a type
(`call.answered`, `audit.recorded`, ...), a payload version, the time it happened, the call's
correlation id when it is about a call, and a JSON payload. Pure data and pure functions: the
call runner's typed events (`bridge.calls.events`) and the audit records become stored events
here, without I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.calls.events import (
    CallAnswered,
    CallEnded,
    CallEventRecord,
    CallRinging,
    Event,
    FallbackStarted,
    LayerExhausted,
    LegDeclined,
    LegRinging,
    VoicemailLeft,
)

VERSION = 1  # of every payload below; a change that is not additive raises it

# The call runner's events, by class: their stored type. Events of other features (the
# controls' `ControlAttempted`, the call core's additions) get `call.<snake_case name>`.
CALL_EVENT_TYPES: dict[type[Event], str] = {
    CallRinging: "call.layer_ringing",
    LegRinging: "leg.ringing",
    CallAnswered: "call.answered",
    LayerExhausted: "call.layer_exhausted",
    FallbackStarted: "call.fallback_started",
    CallEnded: "call.ended",
    LegDeclined: "leg.declined",
    VoicemailLeft: "voicemail.left",
}

# Events of features the call core does not import, by class name.
OTHER_EVENT_TYPES = {
    "VoicemailRecorded": "voicemail.left",  # the carrier's recording callback
    "ControlAttempted": "call.control_attempted",
}


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: str
    type: str
    occurred_at: datetime
    payload: dict[str, Any]
    call_id: str | None = None
    version: int = VERSION
    seq: int | None = None  # its place in the outbox, once stored

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


def from_call_record(record: CallEventRecord) -> StoredEvent:
    """A call event of the runner (either path) as a stored event."""
    event = record.event
    name = type(event).__name__
    kind = (
        CALL_EVENT_TYPES.get(type(event)) or OTHER_EVENT_TYPES.get(name) or f"call.{_snake(name)}"
    )
    payload = {"path": record.path, **plain(event)}
    if record.leg_ref is not None:
        payload["leg_ref"] = record.leg_ref
    return StoredEvent(
        id=new_event_id(int(record.at.timestamp() * 1000)),
        type=kind,
        occurred_at=record.at.astimezone(UTC),
        payload=payload,
        call_id=record.call_id,
    )


def call_event(kind: str, call_id: str, at: datetime, payload: dict[str, Any]) -> StoredEvent:
    """An event of a call the outbox makes itself (`call.received`, `call.routed`,
    `leg.ended`), from the call runner's state; `payload` holds JSON values already."""
    return StoredEvent(
        id=new_event_id(int(at.timestamp() * 1000)),
        type=kind,
        occurred_at=at.astimezone(UTC),
        payload=payload,
        call_id=call_id,
    )


def routed_payload(plan: Any) -> dict[str, Any]:
    """`call.routed`'s payload: the plan as a record needs it, without each member's name
    and texts (a ring group of 100 is 100 of them: `GET /api/v1/lines/{n}/route` explains
    them): per layer who rings and how, and who cannot, with the reason."""
    fallback = plan.fallback
    return {
        "outcome": plan.outcome.value,
        "line": plan.line,
        "line_name": plan.line_name,
        "open": plan.open,
        "directory_version": plan.directory_version,
        "target": {"kind": plan.target_kind, "id": plan.target_id, "name": plan.target_name},
        "layers": [
            {
                "index": layer.index,
                "strategy": layer.strategy.value,
                "timeout_seconds": layer.timeout_seconds,
                "ring_each_seconds": layer.ring_each_seconds,
                "ring": [
                    {"user_id": t.user_id, "via": t.via.value, "number": t.number}
                    for t in layer.ring
                ],
                "cannot_receive": [
                    {"user_id": m.user_id, "reason": m.reason.value if m.reason else None}
                    for m in layer.members
                    if not m.can_receive
                ],
            }
            for layer in plan.layers
        ],
        "fallback": None
        if fallback is None
        else {
            "action": fallback.action.value,
            "why": fallback.why,
            "number": fallback.number,
            "ring_group": fallback.ring_group,
        },
    }


def audit_event(fields: dict[str, Any], at: datetime) -> StoredEvent:
    """One audit record (`bridge.observability.audit.audit`) as a stored event; a call's
    control names the call (`target` = `call:<id>`)."""
    target = fields.get("target")
    call_id = target[5:] if isinstance(target, str) and target.startswith("call:") else None
    return StoredEvent(
        id=new_event_id(int(at.timestamp() * 1000)),
        type="audit.recorded",
        occurred_at=at.astimezone(UTC),
        payload=plain(fields),
        call_id=call_id,
    )


def directory_event(version: int, previous: int | None, at: datetime) -> StoredEvent:
    """The directory changed (an API change, a reload): its new version."""
    return StoredEvent(
        id=new_event_id(int(at.timestamp() * 1000)),
        type="directory.changed",
        occurred_at=at.astimezone(UTC),
        payload={"version": version, "previous_version": previous},
    )


def plain(value: Any) -> Any:
    """`value` as JSON values: dataclasses as objects, enums by value, tuples as lists."""
    cls = type(value)
    if cls is str or cls is int or cls is float or cls is bool or value is None:
        return value
    names = _FIELDS.get(cls)
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(value))
    if names is not None:
        return {name: plain(getattr(value, name)) for name in names}
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


_FIELDS: dict[type, tuple[str, ...]] = {}  # a dataclass's field names, looked up once


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
