"""Request bodies of the control endpoints (and of the WebSocket frames that reuse them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from bridge.calls.supervision import MonitorMode, MonitorVia, PauseBehavior

__all__ = [
    "MonitorChange",
    "MonitorMode",
    "MonitorRequest",
    "MonitorVia",
    "PauseBehavior",
    "RecordingAction",
    "RecordingRequest",
]

RecordingAction = Literal["start", "pause", "resume", "stop"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MonitorRequest(_Body):
    """`POST /api/v1/calls/{call_id}/monitor`: join the call."""

    mode: MonitorMode
    via: MonitorVia = "client"


class MonitorChange(_Body):
    """`PATCH /api/v1/calls/{call_id}/monitor`: switch mode live. `via` may be repeated but
    not changed (that is a new call to the supervisor: DELETE, then POST)."""

    mode: MonitorMode
    via: MonitorVia | None = None


class RecordingRequest(_Body):
    """`POST /api/v1/calls/{call_id}/recording`. `pause_behavior` (for `pause`): `skip` leaves
    the paused stretch out of the file, `silence` (the carrier's default) keeps its length."""

    action: RecordingAction
    pause_behavior: PauseBehavior | None = None
