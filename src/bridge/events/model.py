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
import re
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
from bridge.events.stored import StoredEvent, new_event_id

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
                "ring": [_ring_json(t) for t in layer.ring],
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


def _ring_json(target: Any) -> dict[str, Any]:
    """A ring target as JSON, made once per target: the routing snapshot keeps one per member
    and every plan of a round-robin group lists them all in turn (85 dicts a call for a group
    of 100 was 2.4% of the daemon's loop at 300 calls/s). Shared between payloads, never
    changed. Keyed by identity, the target held in the entry so that its id is not reused."""
    entry = _RING_JSON.get(id(target))
    if entry is not None and entry[0] is target:
        return entry[1]
    if len(_RING_JSON) >= _RING_JSON_MAX:
        _RING_JSON.clear()  # (directory versions come and go: the live ones come back)
    made: dict[str, Any] = target.to_dict()
    _RING_JSON[id(target)] = (target, made)
    return made


_RING_JSON: dict[int, tuple[Any, dict[str, Any]]] = {}
_RING_JSON_MAX = 20_000


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
