"""Errors are values at the edge: each refusal carries its kind and the reason sent back. Only
the edges turn a kind into what they answer: `control/http.py` an HTTP status, the WebSocket
gateway (`bridge.ws.board`) an error frame's code."""

from __future__ import annotations

from enum import StrEnum


class ControlErrorKind(StrEnum):
    INVALID = "invalid"  # the request itself is wrong
    NOT_ALLOWED = "not_allowed"  # the role, the permission flag or the call's owner says no
    NOT_FOUND = "not_found"  # no live call with that id
    NOT_POSSIBLE = "not_possible"  # the call cannot take this control (now, or ever)
    UNAVAILABLE = "unavailable"  # no way to carry out any control (no carrier REST API)
    UPSTREAM_FAILED = "upstream_failed"  # the carrier refused or did not answer


class ControlError(Exception):
    """A control the bridge refuses or could not carry out."""

    kind = ControlErrorKind.INVALID

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotAllowed(ControlError):
    """The role, the permission flag, or the call's owner says no."""

    kind = ControlErrorKind.NOT_ALLOWED


class CallNotFound(ControlError):
    """No live call with that id (or it has ended)."""

    kind = ControlErrorKind.NOT_FOUND


class NotPossible(ControlError):
    """The call cannot take this control: not now (not answered, already monitored by this
    user, no recording to pause, ...) or not ever (a carrier call in dial mode, a SIP call
    until the media engine)."""

    kind = ControlErrorKind.NOT_POSSIBLE


class Invalid(ControlError):
    """The request itself is wrong (a bad mode, no phone number to call the supervisor on)."""

    kind = ControlErrorKind.INVALID


class UpstreamFailed(ControlError):
    """The carrier refused the command or could not be reached (after retries)."""

    kind = ControlErrorKind.UPSTREAM_FAILED


class Unavailable(ControlError):
    """No call can be controlled now: the carrier's REST API is not configured."""

    kind = ControlErrorKind.UNAVAILABLE
