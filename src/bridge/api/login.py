"""Console login over HTTP: email + password in, a short-lived access token and a refresh
cookie out (`bridge.logins` decides everything; this module speaks HTTP).

    POST /api/v1/auth/login        {email, password} -> {access_token, expires_in, user}
    POST /api/v1/auth/refresh      refresh cookie    -> a fresh access token (and cookie)
    POST /api/v1/auth/logout       ends the cookie's session; 204
    PUT  /api/v1/users/{id}/password   admin (change_directory): set a user's password
    POST /api/v1/me/password       {current_password, new_password}: change one's own

The refresh cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page
sends it), limited to `/api/v1/auth` (no other request carries it), and Secure when
`http.public_url` is https. The access token is the API's bearer JWT, so `/api` and `/ws`
take it as they take any other.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from bridge.api.common import Document, change_directory, find_index, not_found
from bridge.api.users import public_user
from bridge.context import AppContext
from bridge.directory.model import User
from bridge.directory.roles import Action, Scope
from bridge.httpauth import Grant, HttpAuth
from bridge.logins import Issued, LoginRefused, LoginService
from bridge.passwords import MAX_LENGTH, PasswordRejected
from bridge.tokens import TokenError

REFRESH_COOKIE = "bridge_refresh"
COOKIE_PATH = "/api/v1/auth"

Password = Annotated[str, Field(max_length=MAX_LENGTH)]


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: Annotated[str, Field(max_length=320)]
    password: Password


class SetPasswordBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: Annotated[str, Field(max_length=4 * MAX_LENGTH)]


class ChangePasswordBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: Password
    new_password: Annotated[str, Field(max_length=4 * MAX_LENGTH)]


def _client(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


def _refused(refusal: LoginRefused, *, forget_cookie: bool = False) -> JSONResponse:
    body: dict[str, Any] = {"detail": refusal.reason}
    headers = {}
    if refusal.retry_after is not None:
        body["retry_after"] = refusal.retry_after
        headers["Retry-After"] = str(refusal.retry_after)
    response = JSONResponse(body, status_code=refusal.status, headers=headers)
    if forget_cookie:
        response.delete_cookie(REFRESH_COOKIE, path=COOKIE_PATH)
    return response


def _invalid_password(reason: str, field: str) -> HTTPException:
    return HTTPException(status_code=422, detail=[{"loc": field, "msg": reason, "type": "invalid"}])


def _session_of(request: Request, ctx: AppContext) -> str | None:
    """The `sid` claim of the request's bearer token (a console login's), if any."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    try:
        sid = ctx.tokens.verify(token.strip()).get("sid")
    except TokenError:
        return None
    return sid if isinstance(sid, str) else None


def routes(logins: LoginService, ctx: AppContext, auth: HttpAuth) -> APIRouter:
    """The routes, bound to the daemon's login service and its token gate."""
    secure = ctx.settings.http.base_url().startswith("https://")
    router = APIRouter(tags=["login"])

    def _answer(issued: Issued) -> JSONResponse:
        response = JSONResponse(
            {
                "access_token": issued.access_token,
                "token_type": "Bearer",
                "expires_in": issued.expires_in,
                "user": public_user(issued.user),
                "password_min_length": ctx.settings.auth.password_min_length,
            },
            headers={"Cache-Control": "no-store"},
        )
        if issued.refresh is not None:
            response.set_cookie(
                REFRESH_COOKIE,
                issued.refresh,
                max_age=issued.refresh_max_age,
                path=COOKIE_PATH,
                secure=secure,
                httponly=True,
                samesite="strict",
            )
        return response

    @router.post("/api/v1/auth/login", summary="Log in with email and password")
    def login(body: LoginBody, request: Request) -> Response:
        try:
            issued = logins.login(body.email, body.password, _client(request))
        except LoginRefused as refusal:
            ctx.metrics.auth_failures.labels(
                reason="login_locked" if refusal.status == 429 else "login_failed"
            ).inc()
            return _refused(refusal)
        return _answer(issued)

    @router.post("/api/v1/auth/refresh", summary="A fresh access token for the refresh cookie")
    def refresh(request: Request) -> Response:
        try:
            issued = logins.refresh(request.cookies.get(REFRESH_COOKIE), _client(request))
        except LoginRefused as refusal:
            ctx.metrics.auth_failures.labels(reason="refresh_refused").inc()
            return _refused(refusal, forget_cookie=True)
        return _answer(issued)

    @router.post("/api/v1/auth/logout", status_code=204, summary="End the login session")
    def logout(request: Request) -> Response:
        ended = logins.logout(request.cookies.get(REFRESH_COOKIE), _client(request))
        if not ended:
            # A script or an app without the cookie: the bearer token's own session.
            session = _session_of(request, ctx)
            if session is not None:
                logins.end_session(session, _client(request))
        response = Response(status_code=204)
        response.delete_cookie(REFRESH_COOKIE, path=COOKIE_PATH)
        return response

    @router.put(
        "/api/v1/users/{user_id}/password",
        status_code=204,
        tags=["users"],
        summary="Admin: set a user's console password",
    )
    def set_password(
        user_id: str,
        body: SetPasswordBody,
        request: Request,
        grant: Grant = Depends(auth.require(Action.CHANGE_DIRECTORY)),
    ) -> Response:
        target = ctx.store.current.user(user_id)
        if target is None:
            raise not_found("user", user_id)
        other = logins.email_taken(target, target.email)
        if other is not None:
            raise HTTPException(
                status_code=409,
                detail=f"user {other.id!r} already logs in with {target.email!r}",
            )
        try:
            hashed = logins.new_hash(body.password)
        except PasswordRejected as exc:
            raise _invalid_password(str(exc), "password") from None

        def edit(doc: Document) -> None:
            users = doc.setdefault("users", [])
            users[find_index(users, "id", user_id, "user")]["password_hash"] = hashed

        change_directory(ctx.store, request, grant, "set_password", f"user:{user_id}", edit)
        # A new password ends the user's logins (the admin's own current one excepted).
        keep = _session_of(request, ctx) if grant.user.id == user_id else None
        logins.end_sessions(user_id, keep=keep)
        return Response(status_code=204)

    @router.post(
        "/api/v1/me/password",
        status_code=204,
        tags=["users"],
        summary="Change one's own password (the current one is needed)",
    )
    def change_password(
        body: ChangePasswordBody, request: Request, user: User = Depends(auth.current_user)
    ) -> Response:
        try:
            logins.check_current(user, body.current_password, _client(request))
        except LoginRefused as refusal:
            return _refused(refusal)
        try:
            hashed = logins.new_hash(body.new_password)
        except PasswordRejected as exc:
            raise _invalid_password(str(exc), "new_password") from None

        def edit(doc: Document) -> None:
            users = doc.setdefault("users", [])
            users[find_index(users, "id", user.id, "user")]["password_hash"] = hashed

        own = Grant(user=user, scope=Scope.OWN)
        change_directory(ctx.store, request, own, "change_password", f"user:{user.id}", edit)
        logins.end_sessions(user.id, keep=_session_of(request, ctx))
        return Response(status_code=204)

    return router
