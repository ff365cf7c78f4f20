"""WAV writers for call recordings (two channels) and voicemail messages (one), fed by the
mixer's 20 ms clock.

A call recording is plain 16-bit PCM at 8 kHz, two channels: the caller left, the other side
right (the mixer's `TAP_LEFT` / `TAP_RIGHT`), so a reviewer can pan to either party and speech
analytics can tell who said what. It is written with the stdlib `wave` module so that anything
that reads WAV reads it, `wave` included.

- Pause: with `skip` nothing is written while paused, so the file is shorter by the paused time
  (the card number a caller read out is not in it, and neither is the gap); with `silence` a
  silent frame is written for each tick, so the file keeps the call's timeline (offsets in the
  file are offsets in the call).
- The engine writes every tick; the writer keeps up to `flush_every` seconds in memory and then
  appends them in one write, which also updates the WAV header. So the disk sees about one
  write a second per recording, not fifty, and a file read while the call goes on (or left by a
  crash) is a valid WAV missing at most that last second.
- The file is created exclusively (an existing file is never overwritten) and missing parent
  directories are created. Whatever the OS refuses (no such directory and no right to make it,
  a directory not writable, a full disk) is a `RecordingError` naming the path and the reason:
  the control answers the error, stops the recording, and the call goes on.

Sans-I/O apart from the file itself: no clock (a tick is a call to `write`), no event loop.
"""

from __future__ import annotations

import contextlib
import os
import wave
from pathlib import Path
from typing import Final, Literal

from bridge.media.g711 import FRAME_BYTES, SAMPLE_RATE, audioop

__all__ = [
    "PauseBehavior",
    "RecordingError",
    "RecordingWriter",
    "VoicemailWriter",
]

PauseBehavior = Literal["skip", "silence"]
_BEHAVIORS: Final = ("skip", "silence")
_WIDTH: Final = 2  # 16-bit samples


class RecordingError(Exception):
    """A recording or voicemail file that cannot be created or written."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"recording {path}: {reason}")
        self.path = path
        self.reason = reason


class _WavFile:
    """One WAV file being written: 16-bit, `channels` channels, appended in batches."""

    def __init__(
        self, path: str | os.PathLike[str], channels: int, rate: int, flush_every: float
    ) -> None:
        self.path = Path(path)
        self.channels = channels
        self.rate = rate
        self._frame_bytes = channels * _WIDTH
        self._flush_bytes = max(1, round(flush_every * rate)) * self._frame_bytes
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._written_bytes = 0
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            raw = open(self.path, "xb")  # noqa: SIM115 (closed in close())
        except OSError as e:
            raise RecordingError(self.path, _reason(e)) from e
        self._raw = raw
        try:
            self._wav = wave.open(raw, "wb")  # noqa: SIM115 (closed in close())
            self._wav.setnchannels(channels)
            self._wav.setsampwidth(_WIDTH)
            self._wav.setframerate(rate)
            self._wav.writeframes(b"")  # the header now: an empty recording is a valid WAV
            raw.flush()
        except (OSError, wave.Error) as e:
            raw.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise RecordingError(self.path, _reason(e)) from e

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def duration(self) -> float:
        """Seconds of audio in the file, counting what is still to be flushed."""
        return (self._written_bytes + self._pending_bytes) / self._frame_bytes / self.rate

    def append(self, data: bytes) -> None:
        if self._closed:
            raise RecordingError(self.path, "already closed")
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self._flush_bytes:
            self.flush()

    def flush(self) -> None:
        """Write what is held in memory (and the header's sizes) to the file."""
        if not self._pending or self._closed:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        try:
            self._wav.writeframes(data)  # appends, then rewrites the header's sizes
            self._raw.flush()
        except OSError as e:
            self._abandon()
            raise RecordingError(self.path, _reason(e)) from e
        self._written_bytes += len(data)

    def close(self) -> None:
        """Flush and close; the file is complete. Closing twice is harmless."""
        if self._closed:
            return
        try:
            self.flush()
            self._wav.close()
            self._raw.close()
        except OSError as e:
            self._abandon()
            raise RecordingError(self.path, _reason(e)) from e
        finally:
            self._closed = True

    def _abandon(self) -> None:
        """After a failed write: release the file, keep what it holds (a WAV short of the end)."""
        self._closed = True
        with contextlib.suppress(OSError, wave.Error):
            self._wav.close()
        with contextlib.suppress(OSError):
            self._raw.close()


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


class RecordingWriter:
    """A call's recording: caller left, other side right, one `write` per 20 ms tick."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        rate: int = SAMPLE_RATE,
        flush_every: float = 1.0,
    ) -> None:
        """Create the file at `path` (under `media.recordings_dir`); RecordingError if the OS
        refuses."""
        self._file = _WavFile(path, 2, rate, flush_every)
        self._paused: PauseBehavior | None = None

    @property
    def path(self) -> Path:
        return self._file.path

    @property
    def duration(self) -> float:
        """Seconds recorded (with `skip` pauses left out, `silence` pauses counted)."""
        return self._file.duration

    @property
    def paused(self) -> PauseBehavior | None:
        """How the recording is paused, or None while it records."""
        return self._paused

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write(self, left: bytes | None, right: bytes | None) -> None:
        """One tick: the caller's frame and the other side's (16-bit linear; None is silence).

        Call it every tick, paused or not: a `silence` pause writes the tick as silence.
        """
        if self._paused == "skip":
            if self._file.closed:
                raise RecordingError(self.path, "already closed")
            return
        size = max(len(left or b""), len(right or b"")) or FRAME_BYTES
        if self._paused == "silence" or (left is None and right is None):
            self._file.append(bytes(2 * size))
            return
        left = (left or b"").ljust(size, b"\x00")
        right = (right or b"").ljust(size, b"\x00")
        stereo = audioop.add(
            audioop.tostereo(left, _WIDTH, 1, 0), audioop.tostereo(right, _WIDTH, 0, 1), _WIDTH
        )
        self._file.append(stereo)

    def pause(self, behavior: PauseBehavior = "skip") -> None:
        """Stop recording the audio until `resume`: `skip` leaves the stretch out of the file,
        `silence` keeps its length with silence. Pausing again changes the behavior."""
        if behavior not in _BEHAVIORS:
            raise ValueError(f"pause behavior {behavior!r}: one of {', '.join(_BEHAVIORS)}")
        self._paused = behavior

    def resume(self) -> None:
        self._paused = None

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        """Finish the file (it is complete and listed from now on)."""
        self._file.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class VoicemailWriter:
    """A voicemail message: the caller's audio, mono, up to `max_seconds`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_seconds: float,
        rate: int = SAMPLE_RATE,
        flush_every: float = 1.0,
    ) -> None:
        """Create the file at `path`; RecordingError if the OS refuses."""
        if max_seconds <= 0:
            raise ValueError(f"max_seconds {max_seconds}: must be positive")
        self._file = _WavFile(path, 1, rate, flush_every)
        self._room = round(max_seconds * rate) * _WIDTH  # bytes left before the limit

    @property
    def path(self) -> Path:
        return self._file.path

    @property
    def duration(self) -> float:
        return self._file.duration

    @property
    def full(self) -> bool:
        """The message reached `max_seconds`: stop recording (and say goodbye)."""
        return self._room <= 0

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write(self, frame: bytes | None) -> bool:
        """One tick of the caller's audio (None is silence); False once the message is full,
        the frame that reaches the limit being cut at it."""
        if self.full:
            return False
        if frame is None:
            frame = bytes(FRAME_BYTES)
        if len(frame) > self._room:
            frame = frame[: self._room]
        self._room -= len(frame)
        self._file.append(frame)
        return not self.full

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> VoicemailWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
