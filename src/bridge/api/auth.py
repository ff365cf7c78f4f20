"""Bearer tokens (HS256 JWT, `sub` = user id, `exp` required) and the permission gate.

A token is only as good as the user behind it *now*: every request looks the subject up in
the current directory snapshot, so a suspended or deleted user is refused at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import structlog
from fastapi import Depends, HTTPException, Request

from bridge.directory.model import AccountStatus, User
from bridge.directory.roles import Action, Scope, allowed

log = structlog.get_logger("bridge.auth")

ISSUER = "bridge"


class TokenError(Exception):
    pass


class TokenService:
    def __init__(self, secret: str, default_ttl: int = 3600) -> None:
        self._secret = secret
        self._default_ttl = default_ttl

    def issue(
        self, user_id: str, ttl: int | None = None, now: float | None = None, **extra: Any
    ) -> str:
        issued = int(now if now is not None else time.time())
        claims = {
            "sub": user_id,
            "iat": issued,
            "exp": issued + (ttl or self._default_ttl),
            "iss": ISSUER,
        }
        claims.update(extra)
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid token: {exc}") from None


def _unauthorized(request: Request, reason: str) -> HTTPException:
    request.app.state.ctx.metrics.auth_failures.labels(reason=reason.split(":")[0]).inc()
    log.info("auth_refused", reason=reason, path=request.url.path)
    return HTTPException(
        status_code=401, detail=reason, headers={"WWW-Authenticate": 'Bearer realm="bridge"'}
    )


def current_user(request: Request) -> User:
    header = request.headers.get("authorization")
    if not header:
        raise _unauthorized(request, "missing bearer token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized(request, "authorization must be 'Bearer <token>'")
    ctx = request.app.state.ctx
    try:
        claims = ctx.tokens.verify(token.strip())
    except TokenError as exc:
        raise _unauthorized(request, str(exc)) from None
    user = ctx.store.current.user(str(claims["sub"]))
    if user is None:
        raise _unauthorized(request, "unknown user")
    if user.status is AccountStatus.SUSPENDED:
        raise _unauthorized(request, "account suspended")
    structlog.contextvars.bind_contextvars(actor=user.id)
    return user


@dataclass(frozen=True, slots=True)
class Grant:
    """Who is asking, and how far the action reaches for them."""

    user: User
    scope: Scope


def require(action: Action) -> Callable[..., Grant]:
    """A FastAPI dependency: 403 with a reason unless the caller's role allows `action`."""

    def dependency(request: Request, user: User = Depends(current_user)) -> Grant:
        granted, reason = allowed(user, action)
        if granted is Scope.NONE:
            audit(request, user, action, allowed=False, reason=reason)
            raise HTTPException(status_code=403, detail=reason)
        return Grant(user=user, scope=granted)

    return dependency


def audit(
    request: Request | None,
    actor: User,
    action: Action | str,
    *,
    allowed: bool,
    target: str | None = None,
    reason: str | None = None,
    **details: Any,
) -> None:
    """One structured line per control or change, allowed or refused."""
    log.info(
        "audit",
        actor=actor.id,
        actor_role=actor.role.value,
        action=str(action),
        target=target,
        allowed=allowed,
        reason=reason,
        path=request.url.path if request is not None else None,
        **details,
    )
