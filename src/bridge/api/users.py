"""Users: CRUD, account actions (pause / activate / suspend), availability, login-as."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict

from bridge.api.common import (
    Document,
    change_directory,
    check_key_unchanged,
    find_index,
    not_found,
    refuse,
)
from bridge.context import AppContext
from bridge.directory.model import AccountStatus, User
from bridge.directory.roles import Action, Scope, allowed
from bridge.httpauth import Grant, HttpAuth, audit_request
from bridge.presence.model import Availability


def public_user(user: User) -> dict[str, Any]:
    """A user as the API shows it: everything but the digest hashes and the password hash."""
    data = user.model_dump(mode="json", exclude={"password_hash"})
    if user.sip is not None:
        data["sip"] = {"username": user.sip.username}
    return data


def _no_password_hash(body: Document | User) -> None:
    """A password is set through its own route (hashed by the bridge), never as a field."""
    sent = body.password_hash if isinstance(body, User) else body.get("password_hash")
    if sent is not None or (isinstance(body, dict) and "password_hash" in body):
        raise HTTPException(
            status_code=422,
            detail=[
                {
                    "loc": "password_hash",
                    "msg": "set passwords with PUT /api/v1/users/{user_id}/password",
                    "type": "invalid",
                }
            ],
        )


def _visible(grant: Grant, user: User) -> bool:
    return grant.scope is Scope.ALL or user.id == grant.user.id


class AvailabilityBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Availability


class LoginAsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Default: [auth] token_ttl_seconds. Bounded to 1 minute .. 1 day.
    ttl_seconds: int | None = None


def routes(ctx: AppContext, auth: HttpAuth) -> APIRouter:
    """The routes, bound to the daemon's parts and its token gate."""
    router = APIRouter(prefix="/api/v1/users", tags=["users"])

    @router.get("", summary="List users")
    def list_users(
        request: Request, grant: Grant = Depends(auth.require(Action.READ_DIRECTORY))
    ) -> list[dict[str, Any]]:
        users = ctx.store.current.users
        return [public_user(u) for u in users if _visible(grant, u)]

    @router.get("/{user_id}", summary="One user")
    def get_user(
        user_id: str, request: Request, grant: Grant = Depends(auth.require(Action.READ_DIRECTORY))
    ) -> dict[str, Any]:
        user = ctx.store.current.user(user_id)
        if user is None or not _visible(grant, user):
            raise not_found("user", user_id)
        return public_user(user)

    @router.post("", status_code=201, summary="Create a user")
    def create_user(
        request: Request, body: User, grant: Grant = Depends(auth.require(Action.CHANGE_DIRECTORY))
    ) -> dict[str, Any]:
        _no_password_hash(body)

        def edit(doc: Document) -> None:
            doc.setdefault("users", []).append(body.model_dump(mode="json", exclude_defaults=True))

        directory = change_directory(
            ctx.store, request, grant, Action.CHANGE_DIRECTORY, f"user:{body.id}", edit
        )
        return public_user(directory.users_by_id[body.id])

    def _replace_user(
        request: Request,
        grant: Grant,
        user_id: str,
        replacement: Document | Callable[[Document], Document],
    ) -> dict[str, Any]:
        """`replacement` is the new user, or a function of the stored one (PATCH), applied to the
        document the store hands the edit, so a change that landed meanwhile is not lost."""

        def edit(doc: Document) -> None:
            users = doc.setdefault("users", [])
            index = find_index(users, "id", user_id, "user")
            new = replacement(users[index]) if callable(replacement) else replacement
            old_sip = users[index].get("sip")
            # Keep the stored hashes when a client sends back the public shape of `sip`.
            sent = new.get("sip")
            if (
                isinstance(sent, dict)
                and old_sip
                and set(sent) == {"username"}
                and sent["username"] == old_sip.get("username")
            ):
                new["sip"] = old_sip
            # The password stays what it was: it is not a field of the bodies.
            new.pop("password_hash", None)
            if users[index].get("password_hash"):
                new["password_hash"] = users[index]["password_hash"]
            users[index] = new

        directory = change_directory(
            ctx.store, request, grant, Action.CHANGE_DIRECTORY, f"user:{user_id}", edit
        )
        return public_user(directory.users_by_id[user_id])

    @router.put("/{user_id}", summary="Replace a user")
    def put_user(
        user_id: str,
        request: Request,
        body: dict[str, Any] = Body(...),
        grant: Grant = Depends(auth.require(Action.CHANGE_DIRECTORY)),
    ) -> dict[str, Any]:
        check_key_unchanged(body, "id", user_id)
        _no_password_hash(body)
        return _replace_user(request, grant, user_id, {**body, "id": user_id})

    @router.patch("/{user_id}", summary="Change some fields of a user")
    def patch_user(
        user_id: str,
        request: Request,
        body: dict[str, Any] = Body(...),
        grant: Grant = Depends(auth.require(Action.CHANGE_DIRECTORY)),
    ) -> dict[str, Any]:
        check_key_unchanged(body, "id", user_id)
        _no_password_hash(body)
        if ctx.store.current.user(user_id) is None:
            raise not_found("user", user_id)

        def merge(stored: Document) -> Document:
            merged = {**stored, **body}
            return {k: v for k, v in merged.items() if v is not None or k not in body}

        return _replace_user(request, grant, user_id, merge)

    @router.delete("/{user_id}", status_code=204, summary="Delete a user and its records")
    def delete_user(
        user_id: str, request: Request, grant: Grant = Depends(auth.require(Action.SUSPEND_USER))
    ) -> Response:
        def edit(doc: Document) -> None:
            users = doc.setdefault("users", [])
            index = find_index(users, "id", user_id, "user")
            for line in doc.get("lines", []):
                if line.get("route_to", {}).get("user") == user_id:
                    raise refuse(
                        409,
                        f"line {line['number']} routes to {user_id!r}: route it elsewhere first",
                    )
            del users[index]
            for group in doc.get("ring_groups", []):
                for layer in group.get("layers", []):
                    layer["members"] = [m for m in layer.get("members", []) if m != user_id]

        change_directory(ctx.store, request, grant, Action.SUSPEND_USER, f"user:{user_id}", edit)
        return Response(status_code=204)

    def _set_status(
        request: Request, grant: Grant, user_id: str, status: AccountStatus, action: Action
    ) -> dict[str, Any]:
        current = ctx.store.current.user(user_id)
        if current is None:
            raise not_found("user", user_id)
        # Lifting a suspension is a suspend-level action: a supervisor may activate a paused
        # user but not un-suspend one.
        if current.status is AccountStatus.SUSPENDED and action is Action.PAUSE_USER:
            scope, reason = allowed(grant.user, Action.SUSPEND_USER)
            if scope is Scope.NONE:
                audit_request(
                    request,
                    grant.user,
                    Action.SUSPEND_USER,
                    allowed=False,
                    target=f"user:{user_id}",
                    reason=reason,
                )
                raise HTTPException(status_code=403, detail=f"{reason} (the user is suspended)")

        def edit(doc: Document) -> None:
            users = doc.setdefault("users", [])
            index = find_index(users, "id", user_id, "user")
            # Again on the document being changed: a suspension may have landed since the check.
            if action is Action.PAUSE_USER and users[index].get("status") == "suspended":
                scope, reason = allowed(grant.user, Action.SUSPEND_USER)
                if scope is Scope.NONE:
                    raise refuse(403, f"{reason} (the user is suspended)")
            users[index]["status"] = status.value

        directory = change_directory(
            ctx.store, request, grant, action, f"user:{user_id}:{status.value}", edit
        )
        return public_user(directory.users_by_id[user_id])

    @router.post("/{user_id}/pause", summary="Pause: out of routing until activated")
    def pause_user(
        user_id: str, request: Request, grant: Grant = Depends(auth.require(Action.PAUSE_USER))
    ) -> dict[str, Any]:
        return _set_status(request, grant, user_id, AccountStatus.PAUSED, Action.PAUSE_USER)

    @router.post(
        "/{user_id}/activate", summary="Activate a paused (or, for admins, suspended) user"
    )
    def activate_user(
        user_id: str, request: Request, grant: Grant = Depends(auth.require(Action.PAUSE_USER))
    ) -> dict[str, Any]:
        return _set_status(request, grant, user_id, AccountStatus.ACTIVE, Action.PAUSE_USER)

    @router.post("/{user_id}/suspend", summary="Suspend: no access, no calls, data kept")
    def suspend_user(
        user_id: str, request: Request, grant: Grant = Depends(auth.require(Action.SUSPEND_USER))
    ) -> dict[str, Any]:
        return _set_status(request, grant, user_id, AccountStatus.SUSPENDED, Action.SUSPEND_USER)

    def _presence_dict(request: Request, user_id: str) -> dict[str, Any]:
        presence = ctx.presence.presence_of(user_id)
        now = ctx.clock()
        return {
            "user_id": user_id,
            "status": presence.availability.value,
            "on_call": presence.on_call,
            "wrap_up_until": presence.wrap_up_until.isoformat()
            if presence.in_wrap_up(now) and presence.wrap_up_until
            else None,
            "reachable": sorted(c.value for c in presence.reachable),
        }

    def _availability_target(
        request: Request, user: User, user_id: str, action_if_self: Action
    ) -> None:
        # Permission first: a caller who may not set it must not learn which user ids exist.
        action = action_if_self if user_id == user.id else Action.SET_OTHERS_AVAILABILITY
        scope, reason = allowed(user, action)
        if scope is Scope.NONE:
            audit_request(
                request, user, action, allowed=False, target=f"user:{user_id}", reason=reason
            )
            raise HTTPException(status_code=403, detail=reason)
        if ctx.store.current.user(user_id) is None:
            raise not_found("user", user_id)

    @router.get("/{user_id}/availability", summary="Availability and automatic presence")
    def get_availability(
        user_id: str, request: Request, user: User = Depends(auth.current_user)
    ) -> dict[str, Any]:
        if user_id != user.id:
            scope, reason = allowed(user, Action.READ_DIRECTORY)
            if scope is not Scope.ALL:
                raise HTTPException(status_code=403, detail=reason or "only your own availability")
        if ctx.store.current.user(user_id) is None:
            raise not_found("user", user_id)
        return _presence_dict(request, user_id)

    @router.put("/{user_id}/availability", summary="Set availability (available, busy, offline)")
    def put_availability(
        user_id: str,
        body: AvailabilityBody,
        request: Request,
        user: User = Depends(auth.current_user),
    ) -> dict[str, Any]:
        _availability_target(request, user, user_id, Action.SET_OWN_AVAILABILITY)
        ctx.presence.set_availability(user_id, body.status)
        audit_request(
            request,
            user,
            "set_availability",
            allowed=True,
            target=f"user:{user_id}",
            status=body.status.value,
        )
        return _presence_dict(request, user_id)

    @router.post("/{user_id}/login-as", summary="Admin: a token to act as this user")
    def login_as(
        user_id: str,
        request: Request,
        body: LoginAsBody | None = None,
        grant: Grant = Depends(auth.require(Action.LOGIN_AS)),
    ) -> dict[str, Any]:
        target = ctx.store.current.user(user_id)
        if target is None:
            raise not_found("user", user_id)
        if target.status is AccountStatus.SUSPENDED:
            raise HTTPException(status_code=409, detail=f"user {user_id!r} is suspended")
        asked = (body or LoginAsBody()).ttl_seconds
        ttl = min(max(asked or ctx.settings.auth.token_ttl_seconds, 60), 86400)
        token = ctx.tokens.issue(user_id, ttl=ttl, act={"sub": grant.user.id})
        audit_request(request, grant.user, Action.LOGIN_AS, allowed=True, target=f"user:{user_id}")
        return {"token": token, "user_id": user_id, "expires_in": ttl}

    return router
