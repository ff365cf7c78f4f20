"""API tokens: HS256 JWTs whose `sub` is a user id and whose `exp` is required."""

from __future__ import annotations

import time
from typing import Any

import jwt

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
