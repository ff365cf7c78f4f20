"""HTTP authentication and the permission gate, for every feature's `http.py` (the admin API,
the call controls, the WebSocket gateway's test endpoint, the carrier's voice tokens).

Bearer tokens are HS256 JWTs (`sub` = user id, `exp` required, `bridge.tokens`). A token is
only as good as the user behind it *now*: every request looks the subject up in the current
directory snapshot, so a suspended or deleted user is refused at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import Depends, HTTPException, Request

from bridge.directory.model import AccountStatus, Directory, User
from bridge.directory.roles import Action, Scope, allowed
from bridge.observability.audit import audit
from bridge.observability.metrics import Metrics
from bridge.tokens import TokenError, TokenService

log = structlog.get_logger("bridge.auth")

__all__ = ["Grant", "HttpAuth", "audit_request"]


@dataclass(frozen=True, slots=True)
class Grant:
    """Who is asking, and how far the action reaches for them."""

    user: User
    scope: Scope


class HttpAuth:
    """The bearer-token gate, built once at start-up and handed to every feature's routes:
    `Depends(auth.current_user)` for who is asking, `Depends(auth.require(action))` for a
    permission (403 with the reason, audited, otherwise)."""

    def __init__(
        self,
        tokens: TokenService,
        directory: Callable[[], Directory],
        metrics: Metrics,
    ) -> None:
        self._tokens = tokens
        self._directory = directory
        self._metrics = metrics

    def _unauthorized(self, request: Request, reason: str) -> HTTPException:
        self._metrics.auth_failures.labels(reason=reason.split(":")[0]).inc()
        log.info("auth_refused", reason=reason, path=request.url.path)
        return HTTPException(
            status_code=401, detail=reason, headers={"WWW-Authenticate": 'Bearer realm="bridge"'}
        )

    def current_user(self, request: Request) -> User:
        """A FastAPI dependency: the user behind the bearer token, as the directory has them
        now (401 otherwise)."""
        header = request.headers.get("authorization")
        if not header:
            raise self._unauthorized(request, "missing bearer token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise self._unauthorized(request, "authorization must be 'Bearer <token>'")
        try:
            claims = self._tokens.verify(token.strip())
        except TokenError as exc:
            raise self._unauthorized(request, str(exc)) from None
        user = self._directory().user(str(claims["sub"]))
        if user is None:
            raise self._unauthorized(request, "unknown user")
        if user.status is AccountStatus.SUSPENDED:
            raise self._unauthorized(request, "account suspended")
        structlog.contextvars.bind_contextvars(actor=user.id)
        return user

    def require(self, action: Action) -> Callable[..., Grant]:
        """A FastAPI dependency: 403 with a reason unless the caller's role allows `action`."""

        def dependency(request: Request, user: User = Depends(self.current_user)) -> Grant:
            granted, reason = allowed(user, action)
            if granted is Scope.NONE:
                audit_request(request, user, action, allowed=False, reason=reason)
                raise HTTPException(status_code=403, detail=reason)
            return Grant(user=user, scope=granted)

        return dependency


def audit_request(
    request: Request,
    actor: User,
    action: Action | str,
    *,
    allowed: bool,
    target: str | None = None,
    reason: str | None = None,
    **details: Any,
) -> None:
    """`bridge.observability.audit.audit` for an HTTP request: the actor and the path from
    the request's user and URL."""
    audit(
        actor.id,
        actor.role.value,
        action,
        allowed=allowed,
        target=target,
        reason=reason,
        path=request.url.path,
        **({"source": request.client.host} if request.client is not None else {}),
        **details,
    )
