"""The audit trail: one structured `audit` log line per change or control, allowed or refused.

Plain values in (who, in which role, did what, to what, allowed or not and why, from where),
so every feature can audit without knowing HTTP: the API's routes, the control service (for
the HTTP routes and the WebSocket frames alike) and the WebSocket gateway call it.

    {"event": "audit", "actor": "olivia", "actor_role": "admin", "action": "directory_reload",
     "target": null, "allowed": true, "reason": null, "path": "/api/v1/directory/reload",
     "version": 2, ...}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("bridge.audit")

# Who else hears of each audit record (the durable outbox), as the line's fields.
_sinks: list[Callable[[dict[str, Any]], None]] = []


def add_audit_sink(sink: Callable[[dict[str, Any]], None]) -> None:
    _sinks.append(sink)


def remove_audit_sink(sink: Callable[[dict[str, Any]], None]) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def audit(
    actor: str,
    actor_role: str,
    action: str,
    *,
    allowed: bool,
    target: str | None = None,
    reason: str | None = None,
    path: str | None = None,
    **details: Any,
) -> None:
    """Log one `audit` line. `action` is a role-matrix action (`Action`, a str) or a word of
    its own (`directory_reload`, `set_availability`); `target` like `user:alice` or
    `call:CA...`; `path` the HTTP path when the attempt came over HTTP; `details` any other
    fields of the line (`origin`, `channel`, `outcome`, `version`, ...)."""
    fields = {
        "actor": actor,
        "actor_role": actor_role,
        "action": str(action),
        "target": target,
        "allowed": allowed,
        "reason": reason,
        "path": path,
        **details,
    }
    log.info("audit", **fields)
    for sink in list(_sinks):
        try:
            sink(fields)
        except Exception:  # a sink's bug must not fail the audited request
            log.exception("audit_sink_failed")
