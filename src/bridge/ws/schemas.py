"""The WebSocket protocol, version 1: every frame as a pydantic model.

Client frames are one discriminated union on `type`, validated on input; server frames are
models too, so that the JSON Schema in docs/ws-protocol.md is generated from this file
(`python -m bridge.ws docs/ws-protocol.md` rewrites the schema blocks; a test checks they are
in sync).
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from bridge.calls.events import LegReason
from bridge.control.schemas import MonitorVia, PauseBehavior
from bridge.presence.model import Availability
from bridge.ws.exceptions import ErrorCode

VERSION = 1

# A client's request id, echoed on the answer: a short string or a non-negative integer.
FrameId = Annotated[str, Field(min_length=1, max_length=64)] | Annotated[int, Field(ge=0)]
CallId = Annotated[str, Field(min_length=1, max_length=128)]
Sdp = Annotated[str, Field(max_length=32768)]


# -- client -> server --------------------------------------------------------------------------
class _ClientFrame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1]
    id: FrameId | None = None


class Auth(_ClientFrame):
    """The first frame when the token came neither as a subprotocol nor in the query; later,
    a fresh token for the same user extends the session past the old token's expiry."""

    type: Literal["auth"]
    token: Annotated[str, Field(min_length=1, max_length=4096)]
    # What the user sees as "answered on <device>" on their other sessions.
    device: Annotated[str, Field(min_length=1, max_length=40)] | None = None


class Pong(_ClientFrame):
    """The answer to a `ping`. Any frame counts as a sign of life; this one does nothing else."""

    type: Literal["pong"]


class PresenceSet(_ClientFrame):
    type: Literal["presence.set"]
    availability: Availability


class CallAccept(_ClientFrame):
    type: Literal["call.accept"]
    call_id: CallId
    # The app's WebRTC answer to the offer's SDP, on the SIP path.
    sdp: Sdp | None = None


class CallReject(_ClientFrame):
    type: Literal["call.reject"]
    call_id: CallId


class CallHangup(_ClientFrame):
    """Hang up the call this user answered in the app (SIP path): the caller gets a BYE."""

    type: Literal["call.hangup"]
    call_id: CallId


class CallsSubscribe(_ClientFrame):
    """The live board: the calls and agents this user's role may see, then updates."""

    type: Literal["calls.subscribe"]


class CallsUnsubscribe(_ClientFrame):
    type: Literal["calls.unsubscribe"]


class MonitorMode(StrEnum):
    LISTEN = "listen"
    WHISPER = "whisper"
    BARGE = "barge"
    STOP = "stop"


class CallMonitor(_ClientFrame):
    """Listen, whisper or barge (`POST /api/v1/calls/{id}/monitor`); the same frame again with
    another mode switches live (`PATCH`); `stop` leaves (`DELETE`)."""

    type: Literal["call.monitor"]
    call_id: CallId
    mode: MonitorMode
    # Where the supervisor is called: their apps (`client:<id>`) or their phone_number.
    via: MonitorVia = "client"


class MonitorAnswer(_ClientFrame):
    """The supervisor's app answers a `monitor.offer` (its WebRTC answer SDP): once its audio
    is up the supervisor is in the call in the mode asked, and the `ack` carries the
    monitoring session."""

    type: Literal["monitor.answer"]
    call_id: CallId
    sdp: Sdp


class RecordingAction(StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"


class CallRecording(_ClientFrame):
    """`POST /api/v1/calls/{id}/recording`."""

    type: Literal["call.recording"]
    call_id: CallId
    action: RecordingAction
    # For `pause`: `skip` leaves the paused stretch out of the file, `silence` (default) keeps it.
    pause_behavior: PauseBehavior | None = None


ClientFrame = Annotated[
    Auth
    | Pong
    | PresenceSet
    | CallAccept
    | CallReject
    | CallHangup
    | CallsSubscribe
    | CallsUnsubscribe
    | CallMonitor
    | MonitorAnswer
    | CallRecording,
    Field(discriminator="type"),
]
CLIENT_FRAME: TypeAdapter[Any] = TypeAdapter(ClientFrame)
CLIENT_MODELS: tuple[type[_ClientFrame], ...] = (
    Auth,
    Pong,
    PresenceSet,
    CallAccept,
    CallReject,
    CallHangup,
    CallsSubscribe,
    CallsUnsubscribe,
    CallMonitor,
    MonitorAnswer,
    CallRecording,
)
# The `type` of every client frame (metrics label only these, never what a client sent).
CLIENT_TYPES: frozenset[str] = frozenset(
    get_args(model.model_fields["type"].annotation)[0] for model in CLIENT_MODELS
)


# -- server -> client --------------------------------------------------------------------------
class _ServerFrame(BaseModel):
    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    # The `id` of the client frame this answers, when it had one.
    id: FrameId | None = None

    def text(self) -> str:
        return self.model_dump_json(exclude_none=True)


class SessionUser(BaseModel):
    id: str
    name: str
    role: str
    answer_by: str


class Heartbeat(BaseModel):
    interval_seconds: float
    timeout_seconds: float


class Limits(BaseModel):
    max_frame_bytes: int
    rate_per_second: float
    rate_burst: int


class PresenceInfo(BaseModel):
    user_id: str
    availability: Availability
    on_call: bool
    wrap_up_until: datetime | None = None  # the end of the wrap-up (compare with now)
    reachable: list[str]  # channels: apps, ip_phone, phone_number


class PresenceFrame(_ServerFrame, PresenceInfo):
    """A user's presence; every session of the user gets it when it changes."""

    type: Literal["presence"] = "presence"


class AuthOk(_ServerFrame):
    type: Literal["auth.ok"] = "auth.ok"
    session_id: str
    user: SessionUser
    expires_at: datetime  # the token's expiry: send a fresh `auth` before it
    heartbeat: Heartbeat
    limits: Limits
    presence: PresenceInfo


class Ping(_ServerFrame):
    type: Literal["ping"] = "ping"


class CallOffer(_ServerFrame):
    type: Literal["call.offer"] = "call.offer"
    call_id: str
    caller: str | None = None
    line: str | None = None
    ring_group: str | None = None
    expires_at: datetime
    sdp: str | None = None  # the bridge's WebRTC offer for this user, on the SIP path


class CallStateName(StrEnum):
    ANSWERED = "answered"
    HELD = "held"
    ENDED = "ended"


class CallStateFrame(_ServerFrame):
    type: Literal["call.state"] = "call.state"
    call_id: str
    state: CallStateName
    reason: LegReason | None = None
    wrap_up_until: datetime | None = None  # after `ended`: the wrap-up countdown's end


class AnsweredBy(BaseModel):
    user_id: str | None = None  # none: a forward number answered
    name: str | None = None
    via: str | None = None  # apps, ip_phone, phone_number
    device: str | None = None  # the app session's device label, when it gave one


class CallEndedFrame(_ServerFrame):
    """The offer is over for this user: why, and who answered when someone did."""

    type: Literal["call.ended"] = "call.ended"
    call_id: str
    reason: LegReason
    answered_by: AnsweredBy | None = None


class MonitorOffer(_ServerFrame):
    """A supervisor joins a SIP call on their app (`via: client`): the bridge's WebRTC offer,
    to answer with `monitor.answer` (every session of the user gets it; the first answer
    counts)."""

    type: Literal["monitor.offer"] = "monitor.offer"
    call_id: str
    mode: str  # listen, whisper, barge
    sdp: str


class MonitorEnded(_ServerFrame):
    """The supervisor's session on the call is over (they left, the call ended, or its audio
    could not be set up): close the peer connection."""

    type: Literal["monitor.ended"] = "monitor.ended"
    call_id: str
    reason: str


class BoardCall(BaseModel):
    call_id: str
    path: str
    line: str | None = None
    caller: str | None = None
    started_at: datetime
    state: str
    ringing: list[str]
    answered_by: str | None = None


class BoardAgent(BaseModel):
    user_id: str
    name: str
    role: str
    answer_by: str
    status: str  # account state: active, paused
    availability: Availability
    on_call: bool
    wrap_up_until: datetime | None = None
    reachable: list[str]
    sessions: int  # app sessions connected to this bridge


class CallsBoard(_ServerFrame):
    type: Literal["calls.board"] = "calls.board"
    calls: list[BoardCall]
    agents: list[BoardAgent]


class CallsUpdate(_ServerFrame):
    type: Literal["calls.update"] = "calls.update"
    calls: list[BoardCall] = Field(default_factory=list)  # new or changed
    removed: list[str] = Field(default_factory=list)  # call ids that ended (or left view)
    agents: list[BoardAgent] = Field(default_factory=list)  # changed


class Ack(_ServerFrame):
    type: Literal["ack"] = "ack"
    # A control's outcome, as the HTTP API answers it: the monitoring session or the recording.
    result: dict[str, Any] | None = None


class ErrorFrame(_ServerFrame):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    field: str | None = None  # the offending field (dotted), or "type" / "v"


class ServerDraining(_ServerFrame):
    """The server is shutting down: the connection closes with 1001 once its calls are done;
    reconnect (to another instance behind the same address)."""

    type: Literal["server.draining"] = "server.draining"
    reconnect: bool = True


ServerFrame = Annotated[
    AuthOk
    | Ping
    | PresenceFrame
    | CallOffer
    | CallStateFrame
    | CallEndedFrame
    | MonitorOffer
    | MonitorEnded
    | CallsBoard
    | CallsUpdate
    | Ack
    | ErrorFrame
    | ServerDraining,
    Field(discriminator="type"),
]


# -- JSON Schema for docs/ws-protocol.md -------------------------------------------------------
def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema (draft 2020-12) of each direction."""
    out = {}
    # Client frames as they must be sent; server frames as they are written.
    for name, frame, mode in (
        ("client", ClientFrame, "validation"),
        ("server", ServerFrame, "serialization"),
    ):
        schema = TypeAdapter(frame).json_schema(mode=mode)  # type: ignore[arg-type]
        out[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"bridge WebSocket protocol v{VERSION}: {name} frames",
            **schema,
        }
    return out


def _block(name: str, schema: dict[str, Any]) -> str:
    body = json.dumps(schema, indent=2, sort_keys=True)
    return f"<!-- schema:{name} -->\n```json\n{body}\n```\n<!-- /schema:{name} -->"


def render_doc(text: str) -> str:
    """`text` with each `<!-- schema:NAME -->` ... `<!-- /schema:NAME -->` block regenerated."""
    for name, schema in json_schemas().items():
        start, end = f"<!-- schema:{name} -->", f"<!-- /schema:{name} -->"
        head, found, rest = text.partition(start)
        if not found:
            raise ValueError(f"{start} marker missing")
        _, found, tail = rest.partition(end)
        if not found:
            raise ValueError(f"{end} marker missing")
        text = head + _block(name, schema) + tail
    return text
