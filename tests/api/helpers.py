"""Plain helpers for the API suite: the demo document, representative users, no-change checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from bridge.directory.model import Role
from tests.conftest import DEMO_DIRECTORY, Bridge

API = "/api/v1"
MAIN_LINE = "+15550100"  # routes to ring group "sales"
SUPPORT_LINE = "+15550200"  # routes to ring group "support"; frank's and cleo's line
MONDAY_10_NY = "2026-11-23T10:00:00-05:00"  # main line open, alice and carol working

# The demo has no end client; the suite adds this one (same line as frank the rep).
END_CLIENT: dict[str, Any] = {
    "id": "cleo",
    "name": "Cleo Client",
    "email": "cleo@example.com",
    "role": "end_client",
    "lines": [SUPPORT_LINE],
}

# One user of each role acts for that role in the matrix tests.
ACTOR: dict[Role, str] = {
    Role.ADMIN: "olivia",
    Role.SUPERVISOR: "sam",
    Role.AGENT: "alice",
    Role.REP: "frank",
    Role.BILLING_ADMIN: "bill",
    Role.REPORTER: "rita",
    Role.END_CLIENT: "cleo",
}


def demo_document() -> dict[str, Any]:
    """A fresh, mutable copy of config/directory.yaml."""
    return yaml.safe_load(DEMO_DIRECTORY.read_text(encoding="utf-8"))


def demo_with_end_client() -> dict[str, Any]:
    document = demo_document()
    document["users"].append(dict(END_CLIENT))
    return document


@dataclass(frozen=True)
class Snapshot:
    """What a refused change must leave alone: the store version and the file bytes."""

    version: int
    file: bytes
    document: dict[str, Any]


def snapshot(bridge: Bridge) -> Snapshot:
    return Snapshot(
        version=bridge.ctx.store.current.version,
        file=(bridge.config_dir / "directory.yaml").read_bytes(),
        document=bridge.ctx.store.current.to_document(),
    )


def assert_unchanged(bridge: Bridge, before: Snapshot) -> None:
    """Nothing of a refused change was applied: same version, same snapshot, same file."""
    assert bridge.ctx.store.current.version == before.version
    assert bridge.ctx.store.current.to_document() == before.document
    assert (bridge.config_dir / "directory.yaml").read_bytes() == before.file


def error_locs(response: Any) -> list[str]:
    """The `loc` of every error in a 422/409 body, as dotted strings.

    FastAPI's own validation gives lists (["body", "extension"]); the directory store gives
    paths ("ring_groups[2].layers[0].members[1]")."""
    detail = response.json()["detail"]
    assert isinstance(detail, list), detail
    return [
        ".".join(str(part) for part in item["loc"])
        if isinstance(item["loc"], list)
        else item["loc"]
        for item in detail
    ]


def error_for(response: Any, loc: str) -> dict[str, Any]:
    """The one error entry whose loc is `loc` (dotted), failing with the full body if none."""
    body = response.json()
    for item, where in zip(body["detail"], error_locs(response), strict=True):
        if where == loc:
            return item
    raise AssertionError(f"no error at {loc!r} in {body}")


def user_ids(response: Any) -> set[str]:
    return {user["id"] for user in response.json()}
