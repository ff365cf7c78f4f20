"""What the gateway answers when something is wrong: close codes and error-frame codes.

Errors are values at the edge: a bad frame becomes an `error` frame (the connection stays);
only authentication, floods, oversize frames, dead peers and shutdown close the connection,
each with its own documented code (docs/ws-protocol.md).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class CloseCode(IntEnum):
    """WebSocket close codes the gateway uses. 4000-4999 are ours (RFC 6455 section 7.4.2)."""

    GOING_AWAY = 1001  # the server drains for shutdown: reconnect (to another instance)
    POLICY_VIOLATION = 1008  # sustained flood over the rate limit
    MESSAGE_TOO_BIG = 1009  # a frame above [ws] max_frame_bytes
    INTERNAL_ERROR = 1011  # a bug on our side; the client may reconnect
    UNAUTHORIZED = 4001  # no / malformed / invalid token, or no auth frame in time
    TOKEN_EXPIRED = 4002  # the token expired (at connect or during the session): get a new one
    FORBIDDEN = 4003  # the account is suspended or deleted
    HEARTBEAT_TIMEOUT = 4008  # no frame (not even a pong) within the heartbeat window
    TOO_MANY_SESSIONS = 4009  # the user already has [ws] max_sessions_per_user sessions


class ErrorCode(StrEnum):
    """`error` frame codes. The connection stays open after every one of them."""

    NOT_JSON = "not_json"  # the frame is not a JSON object
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    UNSUPPORTED_VERSION = "unsupported_version"  # `v` is not 1
    UNKNOWN_TYPE = "unknown_type"  # `type` names no frame of the protocol
    INVALID_FRAME = "invalid_frame"  # a field is missing, unknown or of the wrong kind
    RATE_LIMITED = "rate_limited"  # over the per-connection rate: the frame was dropped
    FORBIDDEN = "forbidden"  # the user's role or flags do not allow it (ROLES.md)
    NOT_FOUND = "not_found"  # no such call (or not one this user may see)
    AUTH_MISMATCH = "auth_mismatch"  # a second `auth` for another user
    # The call controls' refusals (the kinds of bridge.control.errors, board.ERROR_CODES; the
    # HTTP API answers them 409/422/502/503):
    CONFLICT = "conflict"  # the call cannot take this control (not answered, a SIP call, ...)
    INVALID = "invalid"  # e.g. via phone_number for a user without one
    CARRIER_FAILED = "carrier_failed"  # the carrier refused or did not answer
    UNAVAILABLE = "unavailable"  # no carrier REST API configured


class CloseConnection(Exception):
    """Raised inside the gateway to end a connection with `code` and `reason`."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(f"{int(code)} {reason}")
        self.code = code
        # RFC 6455: the reason must fit in a control frame (123 bytes of UTF-8).
        self.reason = reason.encode()[:123].decode(errors="ignore")


class FrameError(Exception):
    """Raised while handling one frame: answered with an `error` frame, connection kept."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
