"""Errors are values at the edge: each refusal carries the HTTP status and the reason sent back
(the WebSocket gateway maps the same values to its error frames)."""

from __future__ import annotations


class ControlError(Exception):
    """A control the bridge refuses or could not carry out."""

    status = 400
    code = "bad_request"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotAllowed(ControlError):
    """403: the role, the permission flag, or the call's owner says no."""

    status = 403
    code = "forbidden"


class CallNotFound(ControlError):
    """404: no live call with that id (or it has ended)."""

    status = 404
    code = "not_found"


class NotPossible(ControlError):
    """409: the call cannot take this control now (not in conference mode, not answered,
    already monitored by this user, no recording to pause, ...)."""

    status = 409
    code = "conflict"


class Invalid(ControlError):
    """422: the request itself is wrong (no phone number to call the supervisor on)."""

    status = 422
    code = "invalid"


class CarrierFailed(ControlError):
    """502: the carrier refused the command or could not be reached (after retries)."""

    status = 502
    code = "carrier_failed"


class Unavailable(ControlError):
    """503: the carrier's REST API is not configured."""

    status = 503
    code = "unavailable"
