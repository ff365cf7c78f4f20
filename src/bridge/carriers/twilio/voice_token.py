"""`GET /api/v1/voice-token`: the carrier's access token for the caller's apps (the Voice SDK in
a browser, desktop or mobile app), so that `<Client>` legs and participants (`client:<user id>`)
ring them and they can place calls through the TwiML app.

The token is the `twilio` package's `AccessToken` with one `VoiceGrant` (incoming allowed,
outgoing through `[twilio] twiml_app_sid`), identity = the user id, signed with the API key
(`api_key_sid` / `api_key_secret`) for `[twilio] account_sid`, valid for
`voice_token_ttl_seconds`. Only users who take calls or monitor them get one: the others
would have nothing to use it for.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, Depends, HTTPException
from twilio.jwt.access_token import AccessToken
from twilio.jwt.access_token.grants import VoiceGrant

from bridge.config import TwilioSettings
from bridge.directory.model import User
from bridge.directory.roles import Action, Scope, allowed
from bridge.httpauth import HttpAuth

log = structlog.get_logger("bridge.carrier")


class VoiceTokenUnavailable(Exception):
    """503: the settings to sign a token are missing (named in the reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def issue_voice_token(settings: TwilioSettings, identity: str) -> tuple[str, int]:
    """(the signed JWT, its lifetime in seconds)."""
    needed = {
        "account_sid": settings.account_sid,
        "api_key_sid": settings.api_key_sid,
        "api_key_secret": settings.api_key_secret,
        "twiml_app_sid": settings.twiml_app_sid,
    }
    missing = [f"[twilio] {name}" for name, value in needed.items() if not value]
    if missing:
        raise VoiceTokenUnavailable(f"voice tokens are not configured: set {', '.join(missing)}")
    ttl = settings.voice_token_ttl_seconds
    token = AccessToken(
        settings.account_sid,
        settings.api_key_sid,
        settings.api_key_secret,
        identity=identity,
        ttl=ttl,
    )
    token.add_grant(
        VoiceGrant(incoming_allow=True, outgoing_application_sid=settings.twiml_app_sid)
    )
    return str(token.to_jwt()), ttl


def routes(settings: TwilioSettings, auth: HttpAuth) -> APIRouter:
    """`GET /api/v1/voice-token`, with the carrier's settings and the daemon's token gate."""
    router = APIRouter(prefix="/api/v1", tags=["carrier"])

    @router.get("/voice-token", summary="An access token for the caller's apps (Voice SDK)")
    def voice_token(user: User = Depends(auth.current_user)) -> dict[str, Any]:
        receive, reason = allowed(user, Action.RECEIVE_CALLS)
        monitor, _ = allowed(user, Action.MONITOR_CALLS)
        if receive is Scope.NONE and monitor is Scope.NONE:
            raise HTTPException(
                status_code=403, detail=f"{reason}: a voice token would have no use"
            )
        try:
            token, ttl = issue_voice_token(settings, user.id)
        except VoiceTokenUnavailable as exc:
            raise HTTPException(status_code=503, detail=exc.reason) from None
        log.info("voice_token_issued", user_id=user.id, ttl_seconds=ttl)
        return {"token": token, "identity": user.id, "expires_in": ttl}

    return router
