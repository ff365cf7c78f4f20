"""Shared pieces of the HTTP API: directory changes with their error mapping, and query
parameters read as the API reads them (a bad one is a 400 naming it)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, Request

from bridge.directory.loader import DirectoryError
from bridge.directory.model import Directory
from bridge.directory.roles import Action
from bridge.directory.store import DirectoryStore
from bridge.httpauth import Grant, audit_request

Document = dict[str, Any]


def not_found(kind: str, key: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"no {kind} {key!r}")


def check_key_unchanged(body: Document, key: str, value: str) -> None:
    """PUT/PATCH bodies may repeat the resource's key, but not change it (422)."""
    if body.get(key, value) != value:
        raise HTTPException(
            status_code=422, detail=[{"loc": key, "msg": f"{key} cannot change", "type": "invalid"}]
        )


def change_directory(
    store: DirectoryStore,
    request: Request,
    grant: Grant,
    action: Action | str,
    target: str,
    edit: Callable[[Document], Document | None],
) -> Directory:
    """Apply one change through the store; 409 for duplicates, 422 for other problems.

    The store validates the whole resulting directory before writing anything, so a refused
    change leaves the file and the snapshot untouched."""
    try:
        directory = store.change(edit)
    except DirectoryError as exc:
        status = 409 if any(p.kind == "duplicate" for p in exc.problems) else 422
        audit_request(request, grant.user, action, allowed=False, target=target, reason=str(exc))
        raise HTTPException(
            status_code=status,
            detail=[{"loc": p.path, "msg": p.reason, "type": p.kind} for p in exc.problems],
        ) from None
    except _EditRefused as exc:
        audit_request(request, grant.user, action, allowed=False, target=target, reason=exc.reason)
        raise HTTPException(status_code=exc.status, detail=exc.reason) from None
    audit_request(
        request, grant.user, action, allowed=True, target=target, version=directory.version
    )
    return directory


class _EditRefused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


def refuse(status: int, reason: str) -> _EditRefused:
    """Raise from inside an edit to abort it with an HTTP status (404, 409)."""
    return _EditRefused(status, reason)


def find_index(items: list[Document], key: str, value: str, kind: str) -> int:
    """The position of the item whose `key` is `value`; inside an edit, 404 when absent."""
    for index, item in enumerate(items):
        if item.get(key) == value:
            return index
    raise refuse(404, f"no {kind} {value!r}")


def query_int(value: str | None, name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter in [low, high]; 400 naming it otherwise."""
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise HTTPException(400, f"{name}: {value!r} is not a whole number") from None
    if not low <= number <= high:
        raise HTTPException(400, f"{name}: must be between {low} and {high}")
    return number


def query_time(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time query parameter (UTC when it has no zone); 400 naming it otherwise."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        # In UTC here: 0001-01-01T00:00+14:00 is before the first time a datetime holds, and
        # converting it later (every store compares in UTC) raised OverflowError: a 500.
        return at.astimezone(UTC) if at.tzinfo is not None else at.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise HTTPException(400, f"{name}: {value[:64]!r} is not an ISO 8601 time") from None
