"""Ring groups, lines, Test Routing, directory reload."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response

from bridge.api.common import (
    Document,
    change_directory,
    check_key_unchanged,
    find_index,
    not_found,
    refuse,
)
from bridge.context import AppContext
from bridge.directory.loader import DirectoryError
from bridge.directory.model import Directory, Line, RingGroup, normalize_number
from bridge.directory.roles import Action, Scope, allowed
from bridge.httpauth import Grant, HttpAuth, audit_request
from bridge.presence.model import AssumeEveryoneAvailable
from bridge.routing.model import CallRequest


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_defaults=True)


def _line_visible(grant: Grant, line: Line) -> bool:
    return grant.scope is Scope.ALL or line.number in grant.user.lines


def _group_visible(grant: Grant, directory: Directory, group: RingGroup) -> bool:
    if grant.scope is Scope.ALL:
        return True
    return any(
        line.route_to.ring_group == group.id and line.number in grant.user.lines
        for line in directory.lines
    )


def _parse_moment(text: str) -> datetime:
    # A '+' offset that was not percent-encoded arrives as a space: put it back.
    candidate = text.strip().replace(" ", "+")
    try:
        moment: datetime | None = datetime.fromisoformat(candidate)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        reason = (
            f"{text!r} is not an ISO 8601 time"
            if moment is None
            else "give a time-zone offset (e.g. -05:00, +01:00 or Z)"
        )
        raise HTTPException(
            status_code=422, detail=[{"loc": "at", "msg": reason, "type": "invalid"}]
        )
    # Routing reads the moment in every zone of the directory: a day from either end of what
    # a datetime holds would overflow there (OverflowError: a 500).
    try:
        in_range = _FIRST_MOMENT <= moment.astimezone(UTC) <= _LAST_MOMENT
    except OverflowError:
        in_range = False
    if not in_range:
        raise HTTPException(
            status_code=422,
            detail=[{"loc": "at", "msg": f"{text[:64]!r} is out of range", "type": "invalid"}],
        )
    return moment


_FIRST_MOMENT = datetime(2, 1, 1, tzinfo=UTC)
_LAST_MOMENT = datetime(9998, 12, 31, tzinfo=UTC)


def routes(ctx: AppContext, auth: HttpAuth) -> APIRouter:
    """The routes, bound to the daemon's parts and its token gate."""
    router = APIRouter(prefix="/api/v1", tags=["directory"])

    # -- ring groups ---------------------------------------------------------------------------
    @router.get("/ring-groups", tags=["ring groups"])
    def list_groups(
        request: Request, grant: Grant = Depends(auth.require(Action.READ_DIRECTORY))
    ) -> list[dict[str, Any]]:
        directory = ctx.store.current
        return [_dump(g) for g in directory.ring_groups if _group_visible(grant, directory, g)]

    @router.get("/ring-groups/{group_id}", tags=["ring groups"])
    def get_group(
        group_id: str, request: Request, grant: Grant = Depends(auth.require(Action.READ_DIRECTORY))
    ) -> dict[str, Any]:
        directory = ctx.store.current
        group = directory.group(group_id)
        if group is None or not _group_visible(grant, directory, group):
            raise not_found("ring group", group_id)
        return _dump(group)

    @router.post("/ring-groups", status_code=201, tags=["ring groups"])
    def create_group(
        request: Request,
        body: RingGroup,
        grant: Grant = Depends(auth.require(Action.CHANGE_DIRECTORY)),
    ) -> dict[str, Any]:
        def edit(doc: Document) -> None:
            doc.setdefault("ring_groups", []).append(_dump(body))

        directory = change_directory(
            ctx.store, request, grant, Action.CHANGE_DIRECTORY, f"ring_group:{body.id}", edit
        )
        return _dump(directory.groups_by_id[body.id])

    @router.put("/ring-groups/{group_id}", tags=["ring groups"])
    def put_group(
        group_id: str,
        request: Request,
        body: dict[str, Any] = Body(...),
        grant: Grant = Depends(auth.require(Action.CHANGE_DIRECTORY)),
    ) -> dict[str, Any]:
        check_key_unchanged(body, "id", group_id)

        def edit(doc: Document) -> None:
            groups = doc.setdefault("ring_groups", [])
            index = find_index(groups, "id", group_id, "ring group")
            groups[index] = {**body, "id": group_id}

        directory = change_directory(
            ctx.store, request, grant, Action.CHANGE_DIRECTORY, f"ring_group:{group_id}", edit
        )
        return _dump(directory.groups_by_id[group_id])

    @router.delete("/ring-groups/{group_id}", status_code=204, tags=["ring groups"])
    def delete_group(
        group_id: str,
        request: Request,
        grant: Grant = Depends(auth.require(Action.CHANGE_DIRECTORY)),
    ) -> Response:
        def edit(doc: Document) -> None:
            groups = doc.setdefault("ring_groups", [])
            index = find_index(groups, "id", group_id, "ring group")
            for line in doc.get("lines", []):
                if line.get("route_to", {}).get("ring_group") == group_id:
                    raise refuse(
                        409,
                        f"line {line['number']} routes to {group_id!r}: route it elsewhere first",
                    )
                if line.get("closed_action", {}).get("ring_group") == group_id:
                    raise refuse(
                        409, f"line {line['number']} falls back to {group_id!r} when closed"
                    )
            for other in groups:
                if (
                    other.get("fallback", {}).get("ring_group") == group_id
                    and other["id"] != group_id
                ):
                    raise refuse(409, f"ring group {other['id']!r} falls back to {group_id!r}")
            del groups[index]

        change_directory(
            ctx.store, request, grant, Action.CHANGE_DIRECTORY, f"ring_group:{group_id}", edit
        )
        return Response(status_code=204)

    # -- lines --------------------------------------------------------------------------------
    @router.get("/lines", tags=["lines"])
    def list_lines(
        request: Request, grant: Grant = Depends(auth.require(Action.READ_DIRECTORY))
    ) -> list[dict[str, Any]]:
        return [_dump(line) for line in ctx.store.current.lines if _line_visible(grant, line)]

    @router.get("/lines/{number}", tags=["lines"])
    def get_line(
        number: str, request: Request, grant: Grant = Depends(auth.require(Action.READ_DIRECTORY))
    ) -> dict[str, Any]:
        line = ctx.store.current.line(number)
        if line is None or not _line_visible(grant, line):
            raise not_found("line", number)
        return _dump(line)

    @router.post("/lines", status_code=201, tags=["lines"])
    def create_line(
        request: Request, body: Line, grant: Grant = Depends(auth.require(Action.CHANGE_DIRECTORY))
    ) -> dict[str, Any]:
        def edit(doc: Document) -> None:
            doc.setdefault("lines", []).append(_dump(body))

        directory = change_directory(
            ctx.store, request, grant, Action.CHANGE_DIRECTORY, f"line:{body.number}", edit
        )
        return _dump(directory.lines_by_number[body.number])

    @router.put("/lines/{number}", tags=["lines"])
    def put_line(
        number: str,
        request: Request,
        body: dict[str, Any] = Body(...),
        grant: Grant = Depends(auth.require(Action.CHANGE_DIRECTORY)),
    ) -> dict[str, Any]:
        number = normalize_number(number)
        if isinstance(body.get("number"), str):
            body = {**body, "number": normalize_number(body["number"])}
        check_key_unchanged(body, "number", number)

        def edit(doc: Document) -> None:
            lines = doc.setdefault("lines", [])
            index = find_index(lines, "number", number, "line")
            lines[index] = {**body, "number": number}

        directory = change_directory(
            ctx.store, request, grant, Action.CHANGE_DIRECTORY, f"line:{number}", edit
        )
        return _dump(directory.lines_by_number[number])

    @router.delete("/lines/{number}", status_code=204, tags=["lines"])
    def delete_line(
        number: str, request: Request, grant: Grant = Depends(auth.require(Action.CHANGE_DIRECTORY))
    ) -> Response:
        number = normalize_number(number)

        def edit(doc: Document) -> None:
            lines = doc.setdefault("lines", [])
            index = find_index(lines, "number", number, "line")
            del lines[index]
            for user in doc.get("users", []):
                if number in user.get("lines", []):
                    user["lines"] = [n for n in user["lines"] if n != number]

        change_directory(ctx.store, request, grant, Action.CHANGE_DIRECTORY, f"line:{number}", edit)
        return Response(status_code=204)

    # -- Test Routing ----------------------------------------------------------------------------
    @router.get(
        "/lines/{number}/route", tags=["routing"], summary="Test Routing: who would ring, and why"
    )
    def explain_route(
        number: str,
        request: Request,
        at: str | None = Query(
            default=None,
            description="ISO 8601 moment with offset (default now); an unescaped '+' is accepted",
        ),
        presence: Literal["live", "assume_available"] = Query(default="live"),
        grant: Grant = Depends(auth.require(Action.TEST_ROUTING)),
    ) -> dict[str, Any]:
        if ctx.store.current.line(number) is None:
            raise not_found("line", number)
        moment = _parse_moment(at) if at is not None else None
        view = AssumeEveryoneAvailable() if presence == "assume_available" else None
        plan = ctx.routing.explain(
            CallRequest(call_id="test-routing", line=number), at=moment, presence=view
        )
        return plan.to_dict()

    # -- directory as a whole ------------------------------------------------------------------
    @router.get("/directory", tags=["directory"], summary="Directory version and counts")
    def directory_info(
        request: Request, grant: Grant = Depends(auth.require(Action.READ_DIRECTORY))
    ) -> dict[str, Any]:
        directory = ctx.store.current
        info: dict[str, Any] = {"version": directory.version, "timezone": directory.timezone}
        if grant.scope is not Scope.ALL:
            # Own-lines readers (rep, end_client) learn nothing about the rest of the directory.
            info["lines"] = sum(1 for line in directory.lines if _line_visible(grant, line))
            return info
        info.update(
            users=len(directory.users),
            ring_groups=len(directory.ring_groups),
            lines=len(directory.lines),
        )
        if allowed(grant.user, Action.CHANGE_DIRECTORY)[0] is Scope.ALL:
            info["path"] = str(ctx.store.path)  # where API changes are written: for admins
        return info

    @router.post("/directory/reload", tags=["directory"], summary="Re-read the directory file")
    def reload_directory(
        request: Request, grant: Grant = Depends(auth.require(Action.CHANGE_DIRECTORY))
    ) -> dict[str, Any]:
        try:
            directory = ctx.reload_directory()
        except DirectoryError as exc:
            audit_request(request, grant.user, "directory_reload", allowed=False, reason=str(exc))
            raise HTTPException(
                status_code=422,
                detail=[{"loc": p.path, "msg": p.reason, "type": p.kind} for p in exc.problems],
            ) from None
        audit_request(
            request, grant.user, "directory_reload", allowed=True, version=directory.version
        )
        return {"version": directory.version, "users": len(directory.users)}

    return router
