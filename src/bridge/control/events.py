"""What a control attempt publishes on the call, allowed or refused (the audit log line says
the same for every attempt, including those on calls that do not exist)."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.calls.events import Event
from bridge.control.errors import ControlErrorKind


@dataclass(frozen=True, slots=True)
class ControlAttempted(Event):
    """Who tried which control on the call, and what came of it. The time is the
    record's `at`."""

    actor: str
    actor_role: str
    control: str  # monitor | monitor_change | monitor_stop | recording
    detail: str  # the mode (listen, whisper, barge) or the recording action
    allowed: bool  # the permission check passed
    outcome: str  # done | refused | failed
    error: ControlErrorKind | None = None  # the refusal's or failure's kind (None: done)
    reason: str | None = None
