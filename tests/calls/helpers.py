"""Builders for call-machine tests: real plans from small directories, and a recorder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from bridge.calls.events import (
    Command,
    DialLeg,
    Event,
    Output,
)
from bridge.calls.machine import CallMachine
from bridge.directory.loader import build_directory
from bridge.directory.model import Directory
from bridge.presence.model import AssumeEveryoneAvailable, PresenceView
from bridge.routing.engine import plan_route
from bridge.routing.model import CallRequest, RoutePlan

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # a Monday
LINE = "+15550100"
T0 = 1000.0  # the loop clock when the call starts

T = TypeVar("T")


def user(uid: str, **fields: Any) -> dict[str, Any]:
    return {"id": uid, "name": fields.pop("name", uid.title()), **fields}


def phone_user(uid: str, number: str) -> dict[str, Any]:
    return user(uid, answer_by="phone_number", phone_number=number)


def layer(
    members: Sequence[str], strategy: str = "all", timeout: int = 20, **fields: Any
) -> dict[str, Any]:
    return {"strategy": strategy, "timeout_seconds": timeout, "members": list(members), **fields}


def group(
    gid: str, *layers: dict[str, Any], fallback: dict[str, Any] | None = None
) -> dict[str, Any]:
    found: dict[str, Any] = {"id": gid, "name": gid.title(), "layers": list(layers)}
    if fallback is not None:
        found["fallback"] = fallback
    return found


def directory(
    users: list[dict[str, Any]],
    groups: list[dict[str, Any]],
    **line_fields: Any,
) -> Directory:
    line = {"number": LINE, "name": "Main", "route_to": {"ring_group": groups[0]["id"]}}
    line.update(line_fields)
    return build_directory({"users": users, "ring_groups": groups, "lines": [line]})


def plan(
    d: Directory,
    presence: PresenceView | None = None,
    *,
    line: str | None = LINE,
    user_id: str | None = None,
) -> RoutePlan:
    call = CallRequest(call_id="c1", line=line, user=user_id)
    return plan_route(d, presence or AssumeEveryoneAvailable(), call, NOW)


def only(outputs: Sequence[Output], kind: type[T]) -> list[T]:
    return [o for o in outputs if isinstance(o, kind)]


def commands(outputs: Sequence[Output]) -> list[Command]:
    return [o for o in outputs if isinstance(o, Command)]


def events(outputs: Sequence[Output]) -> list[Event]:
    return [o for o in outputs if isinstance(o, Event)]


@dataclass
class Call:
    """A machine plus everything it said, with the legs found by user id."""

    machine: CallMachine
    log: list[Output] = field(default_factory=list)

    @classmethod
    def started(cls, route: RoutePlan, at: float = T0, **kwargs: Any) -> tuple[Call, list[Output]]:
        call = cls(CallMachine("c1", route, at, **kwargs))
        return call, call.record(call.machine.start(at))

    def record(self, outputs: list[Output]) -> list[Output]:
        self.log.extend(outputs)
        return outputs

    def dials(self) -> list[DialLeg]:
        return only(self.log, DialLeg)

    def leg_of(self, user_id: str | None) -> str:
        """The most recent leg dialed to this user (None: the forward leg)."""
        found = [d.leg_id for d in self.dials() if d.user_id == user_id]
        assert found, f"nobody dialed {user_id}"
        return found[-1]
