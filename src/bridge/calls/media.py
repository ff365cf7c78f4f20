"""Values of the `MediaPort` (`bridge.calls.ports`): what a media engine can do, what it
reports back, and how it refuses. Pure data: no engine, no socket.

The SIP path anchors every call's audio in a media engine (DESIGN.md, "Media"): each SIP leg
(the caller, each dialled leg, each supervisor) is one *media leg* of the call's media session,
named by the path (`"caller"`, the call core's leg id, `"supervisor:<user id>"`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

MessageEnd = Literal["pound", "silence", "hangup", "max_length"]
# A SIP leg's SRTP policy (SDES keys in the SDP), the `srtp` of `MediaPort.answer` / `offer`
SRTP_POLICIES = ("off", "optional", "required")


class MediaError(Exception):
    """A media request that could not be done; `reason` is said to the operator or peer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NoCommonCodec(MediaError):
    """The peer's SDP has no audio stream the engine can speak (SIP answers 488)."""


class MediaUnavailable(MediaError):
    """The engine cannot take a leg now: no free port (SIP answers 503)."""


class UnknownMedia(MediaError):
    """No such call or leg in the engine (it ended, or was never anchored)."""


@dataclass(frozen=True, slots=True)
class MediaCapabilities:
    """What a media backend can do; control answers 409 with `missing(...)` for the rest."""

    name: str
    monitor: bool = False  # listen / whisper / barge with live switch
    recording: bool = False  # dual-channel, pause skip/silence
    prompts: bool = False  # play audio to a leg
    messages: bool = False  # record one leg (voicemail)
    dtmf: bool = False  # RFC 4733 received as events, sent
    transcoding: bool = False  # PCMU <-> PCMA
    webrtc: bool = False  # ICE + DTLS-SRTP legs

    def missing(self, what: str) -> str | None:
        """None when `what` (a field name) is supported, else the reason to give."""
        if getattr(self, what, False):
            return None
        return f"the media engine {self.name!r} cannot do {what.replace('_', ' ')}"


@dataclass(frozen=True, slots=True)
class MediaEvent:
    """Something a media leg did, reported to the path that owns the call."""

    call_id: str
    leg: str


@dataclass(frozen=True, slots=True)
class DtmfReceived(MediaEvent):
    digit: str  # "0"-"9", "*", "#", "A"-"D"


@dataclass(frozen=True, slots=True)
class PlaybackDone(MediaEvent):
    """A prompt finished playing to the leg (not sent when it was stopped)."""


@dataclass(frozen=True, slots=True)
class MessageRecorded(MediaEvent):
    path: Path
    duration_seconds: float
    ended_by: MessageEnd


@dataclass(frozen=True, slots=True)
class MediaTimeout(MediaEvent):
    """The leg sent no RTP for the engine's timeout: its call is to be ended."""

    silent_seconds: float


@dataclass(frozen=True, slots=True)
class MediaConnected(MediaEvent):
    """A leg whose transport needs a handshake (a WebRTC app's ICE and DTLS) carries audio."""


@dataclass(frozen=True, slots=True)
class MediaFailed(MediaEvent):
    """A leg's transport could not be set up (ICE never checked in time, a DTLS certificate
    that does not match the answer's fingerprint, a failed handshake): the leg is lost."""

    reason: str


@dataclass(frozen=True, slots=True)
class RecordingFailed(MediaEvent):
    """The call's recording stopped on an error (a full disk); the call goes on."""

    reason: str


@dataclass(frozen=True, slots=True)
class RecordingResult:
    path: Path
    duration_seconds: float
    size_bytes: int
