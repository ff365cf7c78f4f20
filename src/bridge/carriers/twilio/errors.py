"""Errors are values at the edge: each refusal carries the HTTP status and the reason sent back.

A webhook that is refused never reaches the call service, so nothing a peer sends can change
a call unless it is signed and well formed."""

from __future__ import annotations


class WebhookError(Exception):
    """A webhook the bridge refuses; `status` and `reason` become the HTTP answer."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedWebhook(WebhookError):
    """400: the body is not a form, or a required field is missing or invalid (`field`)."""

    status = 400

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.field = field


class BadSignature(WebhookError):
    """403: `X-Twilio-Signature` is missing, or does not match the URL and the parameters."""

    status = 403


class NotConfigured(WebhookError):
    """503: the carrier path is off (no `[twilio] auth_token`, or a mode this build lacks).

    Refusing is safer than accepting unsigned calls; the carrier then uses its fallback URL."""

    status = 503


class BodyTooLarge(WebhookError):
    """413: carrier webhooks are a few hundred bytes; a large body is not one of them."""

    status = 413


class Overloaded(WebhookError):
    """503 with `Retry-After`: the bridge sheds new calls (bridge.sip.overload). The carrier
    then fetches the number's fallback URL (`VoiceFallbackUrl`), which answers without the
    bridge: the call goes where the operator's fallback says instead of waiting on us."""

    status = 503

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
