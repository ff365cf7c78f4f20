"""Routing values: what goes into a decision and the plan (with its explanation) that comes out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from bridge.directory.model import AnswerBy, FallbackAction, Strategy
from bridge.presence.model import Channel


class Reason(StrEnum):
    """Why a member cannot receive this call; the first that applies, in this order."""

    SUSPENDED = "suspended"
    PAUSED = "paused"
    ROLE_CANNOT_RECEIVE = "role_cannot_receive"
    WILL_NOT_ANSWER = "will_not_answer"
    OUTSIDE_WORKING_HOURS = "outside_working_hours"
    UNAVAILABLE = "unavailable"
    ON_CALL = "on_call"
    WRAP_UP = "wrap_up"
    NOT_REACHABLE = "not_reachable"


REASON_TEXT: dict[Reason, str] = {
    Reason.SUSPENDED: "account suspended",
    Reason.PAUSED: "account paused",
    Reason.ROLE_CANNOT_RECEIVE: "role does not take calls here",
    Reason.WILL_NOT_ANSWER: "answer type is 'will not answer'",
    Reason.OUTSIDE_WORKING_HOURS: "outside working hours",
    Reason.UNAVAILABLE: "set busy / offline",
    Reason.ON_CALL: "on a call",
    Reason.WRAP_UP: "in wrap-up",
    Reason.NOT_REACHABLE: "no app session, registered phone or number",
}


class Outcome(StrEnum):
    RING = "ring"  # at least one layer has someone to ring
    FALLBACK = "fallback"  # nobody can receive: go straight to the fallback
    CLOSED = "closed"  # outside business hours: the line's closed action
    NO_ROUTE = "no_route"  # the number is not one of our lines / users


@dataclass(frozen=True, slots=True)
class CallRequest:
    """The call as routing needs it. `line` is the dialled number; `user` a direct target
    (an extension call). `seed` makes the random strategy reproducible."""

    call_id: str
    line: str | None = None
    user: str | None = None
    caller: str | None = None
    seed: int = 0


RotationState = Mapping[str, int]


def rotation_key(group_id: str, layer_index: int) -> str:
    return f"{group_id}/{layer_index}"


@dataclass(frozen=True, slots=True)
class MemberDecision:
    user_id: str
    name: str
    answer_by: AnswerBy
    can_receive: bool
    reason: Reason | None
    via: Channel | None  # how they would ring when they can receive

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "name": self.name,
            "answer_by": self.answer_by.value,
            "can_receive_calls": self.can_receive,
            "reason": self.reason.value if self.reason else None,
            "reason_text": REASON_TEXT[self.reason] if self.reason else None,
            "via": self.via.value if self.via else None,
        }


@dataclass(frozen=True, slots=True)
class RingTarget:
    user_id: str
    via: Channel
    number: str | None = None  # for Channel.PHONE_NUMBER

    def to_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "via": self.via.value, "number": self.number}


@dataclass(frozen=True, slots=True)
class PlannedLayer:
    index: int
    strategy: Strategy
    timeout_seconds: int
    # None: everyone in `ring` rings at once. Otherwise one at a time, each this long.
    ring_each_seconds: int | None
    members: tuple[MemberDecision, ...]  # every configured member, in configured order
    ring: tuple[RingTarget, ...]  # who rings, in strategy order

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "strategy": self.strategy.value,
            "timeout_seconds": self.timeout_seconds,
            "simultaneous": self.ring_each_seconds is None,
            "ring_each_seconds": self.ring_each_seconds,
            "members": [m.to_dict() for m in self.members],
            "ring": [t.to_dict() for t in self.ring],
        }


@dataclass(frozen=True, slots=True)
class FallbackStep:
    action: FallbackAction
    number: str | None = None
    ring_group: str | None = None
    prompt: str | None = None
    why: str = "layers_exhausted"
    plan: RoutePlan | None = None  # for action ring_group: that group's plan, explained too

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "number": self.number,
            "ring_group": self.ring_group,
            "prompt": self.prompt,
            "why": self.why,
            "plan": self.plan.to_dict() if self.plan else None,
        }


@dataclass(frozen=True, slots=True)
class RoutePlan:
    call_id: str
    at: datetime
    directory_version: int
    outcome: Outcome
    line: str | None
    line_name: str | None
    open: bool
    target_kind: str | None  # "ring_group" | "user"
    target_id: str | None
    target_name: str | None
    layers: tuple[PlannedLayer, ...]
    fallback: FallbackStep | None
    # Round-robin pointers to store if this plan is used for a real call.
    rotation: dict[str, int] = field(default_factory=dict)

    def ringable(self) -> bool:
        return self.outcome is Outcome.RING

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "at": self.at.isoformat(),
            "directory_version": self.directory_version,
            "outcome": self.outcome.value,
            "line": self.line,
            "line_name": self.line_name,
            "open": self.open,
            "target": {"kind": self.target_kind, "id": self.target_id, "name": self.target_name},
            "layers": [layer.to_dict() for layer in self.layers],
            "fallback": self.fallback.to_dict() if self.fallback else None,
        }
