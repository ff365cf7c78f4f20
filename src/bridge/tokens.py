"""API tokens: HS256 JWTs whose `sub` is a user id and whose `exp` is required."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt

ISSUER = "bridge"


class TokenError(Exception):
    pass


class TokenService:
    def __init__(self, secret: str, default_ttl: int = 3600) -> None:
        self._secret = secret
        self._default_ttl = default_ttl
        self._session_live: Callable[[str], bool] | None = None

    def use_session_check(self, live: Callable[[str], bool]) -> None:
        """Tokens with a `sid` claim (from a console login, `bridge.logins`) are good only
        while `live(sid)` says their session goes on (not logged out, not ended)."""
        self._session_live = live

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
            claims: dict[str, Any] = jwt.decode(
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
        session = claims.get("sid")
        if (
            session is not None
            and self._session_live is not None
            and (not isinstance(session, str) or not self._session_live(session))
        ):
            raise TokenError("session ended")
        return claims
