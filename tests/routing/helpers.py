"""Small builders for routing tests: directories from dicts, presence, one-call plans."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from bridge.directory.loader import build_directory
from bridge.directory.model import Directory
from bridge.presence.model import (
    ALL_CHANNELS,
    Availability,
    Channel,
    FixedPresence,
    PresenceView,
    UserPresence,
)
from bridge.routing.engine import plan_route
from bridge.routing.model import (
    CallRequest,
    MemberDecision,
    PlannedLayer,
    RotationState,
    RoutePlan,
)

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # Monday, 10:00 in New York
LINE = "+15550100"
OTHER_LINE = "+15550200"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")

AVAILABLE = UserPresence(reachable=ALL_CHANNELS)


def user(uid: str, **fields: Any) -> dict[str, Any]:
    return {"id": uid, "name": fields.pop("name", uid.title()), **fields}


def directory(
    users: list[dict[str, Any]],
    groups: list[dict[str, Any]] | None = None,
    lines: list[dict[str, Any]] | None = None,
    timezone: str = "UTC",
) -> Directory:
    return build_directory(
        {
            "timezone": timezone,
            "users": users,
            "ring_groups": groups or [],
            "lines": lines or [],
        }
    )


def layer(members: list[str], strategy: str = "all", **fields: Any) -> dict[str, Any]:
    return {"strategy": strategy, "members": members, **fields}


def group(gid: str, *layers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": gid, "name": fields.pop("name", gid.title()), "layers": list(layers), **fields}


def line(number: str = LINE, **fields: Any) -> dict[str, Any]:
    fields.setdefault("route_to", {"ring_group": "g"})
    return {"number": number, "name": fields.pop("name", f"Line {number}"), **fields}


def single_group(
    users: list[dict[str, Any]],
    strategy: str = "all",
    *,
    timezone: str = "UTC",
    fallback: dict[str, Any] | None = None,
    line_fields: Mapping[str, Any] | None = None,
    **layer_fields: Any,
) -> Directory:
    """One line (LINE) -> ring group "g" with one layer of every user, in the given order."""
    g = group("g", layer([u["id"] for u in users], strategy, **layer_fields))
    if fallback is not None:
        g["fallback"] = fallback
    return directory(users, [g], [line(**dict(line_fields or {}))], timezone=timezone)


def presence(default: UserPresence = AVAILABLE, **by_user: UserPresence) -> FixedPresence:
    return FixedPresence(by_user=dict(by_user), default=default)


def reach(*channels: Channel, **fields: Any) -> UserPresence:
    return UserPresence(reachable=frozenset(channels), **fields)


def status(availability: Availability) -> UserPresence:
    return UserPresence(availability=availability, reachable=ALL_CHANNELS)


def route(
    d: Directory,
    view: PresenceView | None = None,
    *,
    line_number: str | None = LINE,
    user_id: str | None = None,
    now: datetime = NOW,
    rotation: RotationState | None = None,
    seed: int = 0,
) -> RoutePlan:
    call = CallRequest(call_id="c1", line=line_number, user=user_id, seed=seed)
    return plan_route(d, view if view is not None else presence(), call, now, rotation)


def member(plan_or_layer: RoutePlan | PlannedLayer, user_id: str) -> MemberDecision:
    layers = plan_or_layer.layers if isinstance(plan_or_layer, RoutePlan) else [plan_or_layer]
    for planned in layers:
        for decision in planned.members:
            if decision.user_id == user_id:
                return decision
    raise AssertionError(f"{user_id} is not a member of any layer")


def rings(planned: PlannedLayer) -> list[str]:
    return [target.user_id for target in planned.ring]


def all_plans(plan: RoutePlan) -> Iterator[RoutePlan]:
    """The plan and every nested fallback plan under it."""
    current: RoutePlan | None = plan
    while current is not None:
        yield current
        current = current.fallback.plan if current.fallback is not None else None
