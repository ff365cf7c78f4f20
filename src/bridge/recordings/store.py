"""The media archive: call recordings and voicemail messages on disk, with what is known of
each in a JSON sidecar next to its WAV, so that nothing is lost at a restart.

    <root>/recordings/YYYY/MM/DD/<id>.wav    two channels (caller left, other side right)
    <root>/recordings/YYYY/MM/DD/<id>.json   its RecordingMeta
    <root>/voicemails/YYYY/MM/DD/<id>.wav    one channel (the caller)
    <root>/voicemails/YYYY/MM/DD/<id>.json   its VoicemailMeta

The day is the UTC day the recording started. Ids are `RE` (recordings) or `VM` (voicemails)
and 32 lowercase hex digits, the first 12 the start time in milliseconds since the epoch and
the rest random, so ids sort by time: the lists are newest first by id, and `before=<id>`
pages through them. An id is only ever used after matching `RECORDING_ID` / `VOICEMAIL_ID`,
and a sidecar's WAV is always the file next to it, so no id or sidecar reaches outside the
root.

Life of a recording: `new_recording` allocates the id, creates the day's folder and writes the
sidecar (`in-progress`) before the engine's `RecordingWriter` creates the WAV; each change
(`paused`, `in-progress` again, `completed` or `failed`) goes through `update_recording`. A
sidecar is replaced atomically (a temporary file, fsync, `os.replace`, fsync of the folder).
A voicemail message is allocated by `new_voicemail` (`ended_by` None while it is being left)
and finished by `save_voicemail`; the SIP path's `MessageStore` port (`new_message`,
`message_recorded`) is the same two steps.

`load()` reads every sidecar at start. One it cannot read is logged and skipped, never fatal.
A recording still `in-progress` or `paused` was cut by the daemon stopping: it becomes
`failed` ("the daemon stopped while recording") and keeps its audio, the WAV header's sizes
repaired from the file's length (the data is plain 16-bit PCM after a 44-byte header). A
voicemail left half-way becomes `ended_by: "interrupted"` with its audio, or is dropped when
no audio was written.

No event loop: plain file I/O of a few hundred bytes per change, safe from any thread.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import re
import secrets
import struct
import threading
import wave
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, get_args

import structlog

from bridge.calls.media import MediaError

log = structlog.get_logger("bridge.recordings")

__all__ = [
    "CRASHED",
    "RECORDING_ID",
    "VOICEMAIL_ID",
    "ArchiveError",
    "LoadReport",
    "MediaArchive",
    "MessageEnd",
    "RecordingMeta",
    "RecordingStatus",
    "VoicemailMeta",
    "WavInfo",
    "repair_wav",
    "wav_info",
]

RecordingStatus = Literal["in-progress", "paused", "completed", "failed"]
RecordingPath = Literal["sip", "carrier"]
# The engine's ways a message ends, and `interrupted`: the daemon stopped while it was left.
MessageEnd = Literal["pound", "silence", "hangup", "max_length", "interrupted"]

RECORDING_ID: Final = re.compile(r"RE[0-9a-f]{32}")
VOICEMAIL_ID: Final = re.compile(r"VM[0-9a-f]{32}")
LIVE: Final = frozenset({"in-progress", "paused"})
CRASHED: Final = "the daemon stopped while recording"
SAMPLE_RATE: Final = 8000
HEADER_BYTES: Final = 44
_STATUSES: Final = frozenset(get_args(RecordingStatus))
_PATHS: Final = frozenset(get_args(RecordingPath))
_ENDS: Final = frozenset(get_args(MessageEnd))
_SIDECAR_VERSION: Final = 1


class ArchiveError(Exception):
    """The archive cannot store a new recording or message (its folder cannot be made or
    written, a full disk): the control answers the reason and the call goes on."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# -- the metadata ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RecordingMeta:
    """One call recording. `file` is relative to the archive's root; `users` are the user ids
    who took part (the agent who answered, supervisors who joined)."""

    id: str
    call_id: str
    path: RecordingPath
    line: str | None
    caller: str | None
    users: tuple[str, ...]
    started_at: datetime
    file: str
    ended_at: datetime | None = None
    duration_seconds: float = 0.0
    status: RecordingStatus = "in-progress"
    pause_behavior: str | None = None
    channels: int = 2
    sample_rate: int = SAMPLE_RATE
    size_bytes: int = 0
    error: str | None = None

    @property
    def audio_url(self) -> str:
        return f"/api/v1/recordings/{self.id}/audio"

    @property
    def live(self) -> bool:
        """Still being written (`in-progress` or `paused`)."""
        return self.status in LIVE

    def to_json(self) -> dict[str, Any]:
        """The API's shape."""
        return {
            "id": self.id,
            "call_id": self.call_id,
            "path": self.path,
            "line": self.line,
            "caller": self.caller,
            "users": list(self.users),
            "started_at": self.started_at.isoformat(),
            "ended_at": _iso(self.ended_at),
            "duration_seconds": self.duration_seconds,
            "status": self.status,
            "pause_behavior": self.pause_behavior,
            "channels": self.channels,
            "sample_rate": self.sample_rate,
            "size_bytes": self.size_bytes,
            "error": self.error,
            "audio_url": self.audio_url,
        }

    def to_record(self) -> dict[str, Any]:
        """The sidecar's shape."""
        record = self.to_json()
        del record["audio_url"]
        return {"kind": "recording", "version": _SIDECAR_VERSION, **record, "file": self.file}

    @classmethod
    def from_record(cls, data: Any) -> RecordingMeta:
        """A sidecar's content; ValueError naming what is wrong."""
        r = _Record(data, "recording")
        meta = cls(
            id=r.text("id"),
            call_id=r.text("call_id"),
            path=r.choice("path", _PATHS),
            line=r.text("line", optional=True),
            caller=r.text("caller", optional=True),
            users=r.texts("users"),
            started_at=r.time("started_at"),
            file=r.text("file"),
            ended_at=r.time("ended_at", optional=True),
            duration_seconds=r.number("duration_seconds"),
            status=r.choice("status", _STATUSES),
            pause_behavior=r.text("pause_behavior", optional=True),
            channels=r.integer("channels"),
            sample_rate=r.integer("sample_rate"),
            size_bytes=r.integer("size_bytes"),
            error=r.text("error", optional=True),
        )
        if not RECORDING_ID.fullmatch(meta.id):
            raise ValueError(f"id {meta.id!r} is not a recording id")
        return meta


@dataclass(frozen=True, slots=True)
class VoicemailMeta:
    """One voicemail message. `user_id` / `group_id`: who it was left for (the user or ring
    group the call was routed to; both None for a line's closed-hours voicemail). `ended_by`
    is None while the caller is still speaking."""

    id: str
    call_id: str
    caller: str | None
    line: str | None
    user_id: str | None
    group_id: str | None
    recorded_at: datetime
    file: str
    duration_seconds: float = 0.0
    size_bytes: int = 0
    ended_by: MessageEnd | None = None
    # Marked heard (POST .../heard): when, and by whom; None: new.
    heard_at: datetime | None = None
    heard_by: str | None = None
    # "carrier": recorded by the carrier (its recording callback); the audio is fetched from
    # `remote_url` (the carrier's media URL) when asked for, never stored here.
    source: str = "sip"
    recording_sid: str | None = None
    remote_url: str | None = None

    @property
    def audio_url(self) -> str:
        return f"/api/v1/voicemails/{self.id}/audio"

    @property
    def pending(self) -> bool:
        """Still being left (a carrier's message is listed once the carrier has it)."""
        return self.ended_by is None and self.source == "sip"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "call_id": self.call_id,
            "caller": self.caller,
            "line": self.line,
            "user_id": self.user_id,
            "group_id": self.group_id,
            "recorded_at": self.recorded_at.isoformat(),
            "duration_seconds": self.duration_seconds,
            "size_bytes": self.size_bytes,
            "ended_by": self.ended_by,
            "heard": self.heard_at is not None,
            "heard_at": _iso(self.heard_at),
            "heard_by": self.heard_by,
            "source": self.source,
            "recording_sid": self.recording_sid,
            "channels": 1,
            "sample_rate": SAMPLE_RATE,
            "audio_url": self.audio_url,
        }

    def to_record(self) -> dict[str, Any]:
        record = self.to_json()
        for key in ("audio_url", "channels", "sample_rate", "heard"):
            del record[key]
        record = {"kind": "voicemail", "version": _SIDECAR_VERSION, **record, "file": self.file}
        if self.remote_url is not None:
            record["remote_url"] = self.remote_url
        return record

    @classmethod
    def from_record(cls, data: Any) -> VoicemailMeta:
        r = _Record(data, "voicemail")
        ended_by = r.text("ended_by", optional=True)
        if ended_by is not None and ended_by not in _ENDS:
            raise ValueError(f"ended_by {ended_by!r}: one of {', '.join(sorted(_ENDS))}")
        meta = cls(
            id=r.text("id"),
            call_id=r.text("call_id"),
            caller=r.text("caller", optional=True),
            line=r.text("line", optional=True),
            user_id=r.text("user_id", optional=True),
            group_id=r.text("group_id", optional=True),
            recorded_at=r.time("recorded_at"),
            file=r.text("file"),
            duration_seconds=r.number("duration_seconds"),
            size_bytes=r.integer("size_bytes"),
            ended_by=ended_by,  # type: ignore[arg-type]
            heard_at=r.time("heard_at", optional=True) if "heard_at" in data else None,
            heard_by=r.text("heard_by", optional=True) if "heard_by" in data else None,
            source=r.text("source") if "source" in data else "sip",
            recording_sid=_optional(r, data, "recording_sid"),
            remote_url=_optional(r, data, "remote_url"),
        )
        if not VOICEMAIL_ID.fullmatch(meta.id):
            raise ValueError(f"id {meta.id!r} is not a voicemail id")
        return meta


def _optional(record: _Record, data: Any, key: str) -> Any:
    """A text field that sidecars written before it existed do not have."""
    return record.text(key, optional=True) if key in data else None


class _Record:
    """Typed reads of a sidecar's JSON object; ValueError with the field on anything odd."""

    def __init__(self, data: Any, kind: str) -> None:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("kind") != kind:
            raise ValueError(f"kind {data.get('kind')!r}, expected {kind!r}")
        if data.get("version") != _SIDECAR_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {_SIDECAR_VERSION}")
        self.data = data

    def _get(self, key: str, optional: bool) -> Any:
        if key not in self.data:
            raise ValueError(f"{key}: missing")
        value = self.data[key]
        if value is None and not optional:
            raise ValueError(f"{key}: null")
        return value

    def text(self, key: str, *, optional: bool = False) -> Any:
        value = self._get(key, optional)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{key}: not a string")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self._get(key, False)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key}: not a list of strings")
        return tuple(value)

    def choice(self, key: str, choices: frozenset[str]) -> Any:
        value = self.text(key)
        if value not in choices:
            raise ValueError(f"{key} {value!r}: one of {', '.join(sorted(choices))}")
        return value

    def number(self, key: str) -> float:
        value = self._get(key, False)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{key}: not a non-negative number")
        return float(value)

    def integer(self, key: str) -> int:
        value = self._get(key, False)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key}: not a non-negative integer")
        return value

    def time(self, key: str, *, optional: bool = False) -> Any:
        value = self.text(key, optional=optional)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{key}: {value!r} is not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            raise ValueError(f"{key}: {value!r} has no time zone")
        return parsed.astimezone(UTC)


# -- WAV files ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WavInfo:
    frames: int
    channels: int
    sample_rate: int
    size_bytes: int

    @property
    def duration_seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def wav_info(path: Path) -> WavInfo | None:
    """What `wave` reads in the file, or None when it cannot be read as a WAV."""
    try:
        size = path.stat().st_size
        with wave.open(str(path), "rb") as w:
            return WavInfo(w.getnframes(), w.getnchannels(), w.getframerate(), size)
    except (OSError, EOFError, wave.Error):
        return None


_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


def repair_wav(path: Path) -> WavInfo | None:
    """Make the header of a WAV whose writer never closed it (a crash, a failed write) say how
    much audio the file holds: for the canonical 44-byte PCM header the `wave` module writes,
    the RIFF and data sizes are set from the file's length (a partial last frame is cut off).
    Then what `wave` reads, or None when the file is missing or no WAV at all."""
    try:
        with open(path, "r+b") as f:
            head = f.read(HEADER_BYTES)
            size = os.fstat(f.fileno()).st_size
            if len(head) == HEADER_BYTES:
                fields = _HEADER.unpack(head)
                riff, riff_size, wave_id, fmt, fmt_size, audio_format = fields[:6]
                block_align, data_id, data_size = fields[9], fields[11], fields[12]
                canonical = (
                    (riff, wave_id, fmt, data_id) == (b"RIFF", b"WAVE", b"fmt ", b"data")
                    and fmt_size == 16
                    and audio_format == 1
                    and block_align > 0
                )
                if canonical:
                    data = size - HEADER_BYTES
                    whole = data - data % block_align
                    if whole != data:
                        f.truncate(HEADER_BYTES + whole)
                    if data_size != whole or riff_size != 36 + whole:
                        f.seek(4)
                        f.write(struct.pack("<I", 36 + whole))
                        f.seek(40)
                        f.write(struct.pack("<I", whole))
                        log.info("wav_header_repaired", file=str(path), data_bytes=whole)
    except OSError:
        return None
    return wav_info(path)


# -- the archive ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LoadReport:
    recordings: int = 0
    voicemails: int = 0
    recovered: int = 0  # cut by a stop: marked failed / interrupted, audio kept
    skipped: int = 0  # sidecars that could not be read


def _utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(when: datetime) -> datetime:
    """`when` in UTC (a time without a zone is taken as UTC)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def _new_id(prefix: str, now: datetime) -> str:
    millis = max(0, int(now.timestamp() * 1000)) & 0xFFFF_FFFF_FFFF
    return f"{prefix}{millis:012x}{secrets.token_hex(10)}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class _Index:
    """Metadata by id, and the ids in order (ascending = oldest first)."""

    def __init__(self) -> None:
        self.by_id: dict[str, Any] = {}
        self.order: list[str] = []

    def put(self, meta: Any) -> None:
        if meta.id not in self.by_id:
            bisect.insort(self.order, meta.id)
        self.by_id[meta.id] = meta

    def remove(self, item_id: str) -> None:
        if self.by_id.pop(item_id, None) is not None:
            index = bisect.bisect_left(self.order, item_id)
            if index < len(self.order) and self.order[index] == item_id:
                del self.order[index]

    def newest_first(self, before: str | None) -> Iterable[Any]:
        end = len(self.order) if before is None else bisect.bisect_left(self.order, before)
        for index in range(end - 1, -1, -1):
            yield self.by_id[self.order[index]]

    def select(
        self,
        *,
        before: str | None,
        limit: int,
        since: datetime | None,
        until: datetime | None,
        when: Callable[[Any], datetime],
        keep: Callable[[Any], bool],
    ) -> list[Any]:
        """Newest first: at most `limit` items older than the id `before`, whose time
        (`when`) is in [since, until), for which `keep` holds."""
        since = None if since is None else as_utc(since)
        until = None if until is None else as_utc(until)
        found: list[Any] = []
        if limit <= 0:
            return found
        for meta in self.newest_first(before):
            at = when(meta)
            if since is not None and at < since:
                continue
            if until is not None and at >= until:
                continue
            if not keep(meta):
                continue
            found.append(meta)
            if len(found) >= limit:
                break
        return found


class MediaArchive:
    """Recordings and voicemail messages under `root` (see the module docstring).

    `clock` dates what the SIP path's `MessageStore` port allocates (it passes no time) and
    the end of a recording updated without one; `durable=False` skips the fsyncs (tests)."""

    def __init__(
        self,
        root: Path | str,
        *,
        clock: Callable[[], datetime] | None = None,
        durable: bool = True,
    ) -> None:
        self.root = Path(root)
        self._clock = clock or _utcnow
        self._durable = durable
        self._lock = threading.RLock()
        self._recordings = _Index()
        self._voicemails = _Index()

    # -- start-up ----------------------------------------------------------------------------
    def load(self) -> LoadReport:
        """Read every sidecar under the root (replacing what is in memory). Never raises for
        what is on disk: an unreadable sidecar is logged (`recording_sidecar_unreadable`) and
        skipped; a recording cut by a stop is marked failed, its WAV header repaired."""
        recordings, voicemails = _Index(), _Index()
        recovered = skipped = 0
        for sidecar in self._sidecars("recordings"):
            try:
                meta = self._read_recording(sidecar)
            except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
                skipped += 1
                log.warning("recording_sidecar_unreadable", file=str(sidecar), reason=str(exc))
                continue
            if meta.id in recordings.by_id:
                skipped += 1
                log.warning("recording_sidecar_duplicate", file=str(sidecar), id=meta.id)
                continue
            if meta.live:
                meta = self._recover_recording(meta)
                recovered += 1
            elif meta.status == "failed":
                repair_wav(self.root / meta.file)
            recordings.put(meta)
        for sidecar in self._sidecars("voicemails"):
            try:
                vm = self._read_voicemail(sidecar)
            except (OSError, ValueError) as exc:
                skipped += 1
                log.warning("voicemail_sidecar_unreadable", file=str(sidecar), reason=str(exc))
                continue
            if vm.id in voicemails.by_id:
                skipped += 1
                log.warning("voicemail_sidecar_duplicate", file=str(sidecar), id=vm.id)
                continue
            if vm.pending:
                recovered_vm = self._recover_voicemail(vm, sidecar)
                if recovered_vm is None:
                    continue
                vm = recovered_vm
                recovered += 1
            voicemails.put(vm)
        with self._lock:
            self._recordings, self._voicemails = recordings, voicemails
        report = LoadReport(len(recordings.by_id), len(voicemails.by_id), recovered, skipped)
        log.info(
            "media_archive_loaded",
            root=str(self.root),
            recordings=report.recordings,
            voicemails=report.voicemails,
            recovered=report.recovered,
            skipped=report.skipped,
        )
        return report

    def _sidecars(self, kind: str) -> list[Path]:
        folder = self.root / kind
        found: list[Path] = []
        if not folder.is_dir():
            return found
        for dirpath, _dirs, names in os.walk(folder):
            for name in names:
                path = Path(dirpath) / name
                if name.startswith(".") and name.endswith(".tmp"):  # a write cut by a stop
                    with contextlib.suppress(OSError):
                        path.unlink()
                elif name.endswith(".json"):
                    found.append(path)
        return sorted(found)

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _read_recording(self, sidecar: Path) -> RecordingMeta:
        meta = RecordingMeta.from_record(json.loads(sidecar.read_text(encoding="utf-8")))
        if meta.id != sidecar.stem:
            raise ValueError(f"id {meta.id!r} is not the file's name")
        # The audio is the WAV next to the sidecar, whatever the sidecar says.
        return replace(meta, file=self._relative(sidecar.with_suffix(".wav")))

    def _read_voicemail(self, sidecar: Path) -> VoicemailMeta:
        vm = VoicemailMeta.from_record(json.loads(sidecar.read_text(encoding="utf-8")))
        if vm.id != sidecar.stem:
            raise ValueError(f"id {vm.id!r} is not the file's name")
        return replace(vm, file=self._relative(sidecar.with_suffix(".wav")))

    def _recover_recording(self, meta: RecordingMeta) -> RecordingMeta:
        wav = self.root / meta.file
        info = repair_wav(wav)
        ended = meta.started_at
        with contextlib.suppress(OSError):
            ended = max(ended, datetime.fromtimestamp(wav.stat().st_mtime, UTC))
        meta = replace(
            meta,
            status="failed",
            error=CRASHED,
            pause_behavior=None,
            ended_at=ended,
            duration_seconds=round(info.duration_seconds, 2) if info else 0.0,
            size_bytes=info.size_bytes if info else 0,
        )
        log.warning(
            "recording_cut_by_stop",
            recording_id=meta.id,
            call_id=meta.call_id,
            audio=info is not None,
            seconds=meta.duration_seconds,
        )
        self._persist(self.root / meta.file, meta.to_record(), meta.id)
        return meta

    def _recover_voicemail(self, vm: VoicemailMeta, sidecar: Path) -> VoicemailMeta | None:
        wav = self.root / vm.file
        info = repair_wav(wav)
        if info is None or info.frames == 0:
            log.warning("voicemail_without_audio_dropped", voicemail_id=vm.id, call_id=vm.call_id)
            for path in (wav, sidecar):
                with contextlib.suppress(OSError):
                    path.unlink()
            return None
        vm = replace(
            vm,
            ended_by="interrupted",
            duration_seconds=round(info.duration_seconds, 2),
            size_bytes=info.size_bytes,
        )
        log.warning("voicemail_cut_by_stop", voicemail_id=vm.id, seconds=vm.duration_seconds)
        self._persist(wav, vm.to_record(), vm.id)
        return vm

    # -- files -------------------------------------------------------------------------------
    def _folder(self, kind: str, now: datetime) -> Path:
        folder = self.root / kind / f"{now:%Y}" / f"{now:%m}" / f"{now:%d}"
        try:
            folder.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveError(folder, _reason(exc)) from exc
        if not folder.is_dir():  # a symlink to a file, say
            raise ArchiveError(folder, "not a directory")
        return folder

    def _write_json(self, target: Path, record: dict[str, Any]) -> None:
        """Replace `target` atomically with the record (OSError when it cannot be)."""
        payload = json.dumps(record, ensure_ascii=False, sort_keys=True, indent=1).encode()
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                if self._durable:
                    os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        if self._durable:
            with contextlib.suppress(OSError):
                dir_fd = os.open(target.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)

    def _persist(self, wav: Path, record: dict[str, Any], item_id: str) -> None:
        """Write a sidecar for an update: a failure is logged, the memory keeps the change."""
        try:
            self._write_json(wav.with_suffix(".json"), record)
        except OSError as exc:
            log.error("media_sidecar_unwritten", id=item_id, file=str(wav), reason=_reason(exc))

    # -- recordings --------------------------------------------------------------------------
    def new_recording(
        self,
        call_id: str,
        *,
        path: str,
        line: str | None,
        caller: str | None,
        users: Iterable[str],
        pause_behavior: str | None = None,
        now: datetime,
    ) -> tuple[RecordingMeta, Path]:
        """A new recording (`in-progress`, its sidecar written) and the WAV path for the
        engine's `RecordingWriter`, which creates the file. ArchiveError when the day's folder
        cannot be made or written."""
        if path not in _PATHS:
            raise ValueError(f"path {path!r}: one of {', '.join(sorted(_PATHS))}")
        now = as_utc(now)
        recording_id = _new_id("RE", now)
        wav = self._folder("recordings", now) / f"{recording_id}.wav"
        meta = RecordingMeta(
            id=recording_id,
            call_id=call_id,
            path=path,  # type: ignore[arg-type]
            line=line,
            caller=caller,
            users=tuple(dict.fromkeys(u for u in users if u)),
            started_at=now,
            file=self._relative(wav),
            pause_behavior=pause_behavior,
        )
        try:
            self._write_json(wav.with_suffix(".json"), meta.to_record())
        except OSError as exc:
            raise ArchiveError(wav.parent, _reason(exc)) from exc
        with self._lock:
            self._recordings.put(meta)
        log.info("recording_allocated", recording_id=recording_id, call_id=call_id, path=path)
        return meta, wav

    def update_recording(self, meta: RecordingMeta) -> RecordingMeta:
        """Store a change of a recording (status, pause, users, end) and return what is stored.

        When it ends (`completed` / `failed`), the size and (unless given) the duration come
        from the WAV on disk, the header of a failed one repaired first, and `ended_at` is set
        if missing. Never raises for I/O: a sidecar that cannot be written is logged and the
        change kept in memory (lost at a restart)."""
        with self._lock:
            known = self._recordings.by_id.get(meta.id)
        if known is None:
            log.error("recording_unknown", recording_id=meta.id, call_id=meta.call_id)
            return meta
        meta = replace(
            meta,
            file=known.file,
            started_at=as_utc(meta.started_at),
            ended_at=None if meta.ended_at is None else as_utc(meta.ended_at),
            users=tuple(dict.fromkeys(meta.users)),
        )
        wav = self.root / meta.file
        if not meta.live:
            info = repair_wav(wav) if meta.status == "failed" else wav_info(wav)
            changes: dict[str, Any] = {}
            if info is not None:
                changes["size_bytes"] = info.size_bytes
                if not meta.duration_seconds:
                    changes["duration_seconds"] = round(info.duration_seconds, 2)
            elif not wav.exists():
                changes["size_bytes"] = 0
            if meta.ended_at is None:
                changes["ended_at"] = as_utc(self._clock())
            if meta.pause_behavior is not None:
                changes["pause_behavior"] = None
            meta = replace(meta, **changes)
        with self._lock:
            self._recordings.put(meta)
        self._persist(wav, meta.to_record(), meta.id)
        return meta

    def recording(self, recording_id: str) -> RecordingMeta | None:
        if not RECORDING_ID.fullmatch(recording_id):
            return None
        with self._lock:
            return self._recordings.by_id.get(recording_id)

    def audio_path(self, recording_id: str) -> Path | None:
        """The recording's WAV, when it has one (whatever its status)."""
        return self._wav_of(self.recording(recording_id))

    def _wav_of(self, meta: RecordingMeta | VoicemailMeta | None) -> Path | None:
        if meta is None:
            return None
        wav = self.root / meta.file
        return wav if wav.is_file() else None

    def recordings(
        self,
        *,
        call_id: str | None = None,
        line: str | None = None,
        user: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        before: str | None = None,
        where: Callable[[RecordingMeta], bool] | None = None,
    ) -> list[RecordingMeta]:
        """Newest first: at most `limit` recordings started in [since, until), of that call,
        line or participant, older than the recording `before` (an id, for paging), and for
        which `where` (the caller's visibility) holds."""

        def keep(meta: RecordingMeta) -> bool:
            return (
                (call_id is None or meta.call_id == call_id)
                and (line is None or meta.line == line)
                and (user is None or user in meta.users)
                and (where is None or where(meta))
            )

        with self._lock:
            return self._recordings.select(
                before=before,
                limit=limit,
                since=since,
                until=until,
                when=lambda meta: meta.started_at,
                keep=keep,
            )

    # -- voicemails --------------------------------------------------------------------------
    def new_voicemail(
        self,
        call_id: str,
        *,
        caller: str | None,
        line: str | None,
        user_id: str | None,
        group_id: str | None,
        now: datetime,
    ) -> tuple[VoicemailMeta, Path]:
        """A new message being left (`ended_by` None, not listed yet) and the WAV path for
        the engine's `VoicemailWriter`. ArchiveError when it cannot be stored."""
        vm, wav = self._add_voicemail(
            call_id, caller=caller, line=line, user_id=user_id, group_id=group_id, now=now
        )
        log.info("voicemail_allocated", voicemail_id=vm.id, call_id=call_id)
        return vm, wav

    def _add_voicemail(
        self,
        call_id: str,
        *,
        caller: str | None,
        line: str | None,
        user_id: str | None,
        group_id: str | None,
        now: datetime,
        **more: Any,
    ) -> tuple[VoicemailMeta, Path]:
        """A message's metadata (`more`: its other fields), its sidecar written and it
        indexed; its WAV's path. ArchiveError when the sidecar cannot be written."""
        now = as_utc(now)
        message_id = _new_id("VM", now)
        wav = self._folder("voicemails", now) / f"{message_id}.wav"
        vm = VoicemailMeta(
            id=message_id,
            call_id=call_id,
            caller=caller,
            line=line,
            user_id=user_id,
            group_id=group_id,
            recorded_at=now,
            file=self._relative(wav),
            **more,
        )
        try:
            self._write_json(wav.with_suffix(".json"), vm.to_record())
        except OSError as exc:
            raise ArchiveError(wav.parent, _reason(exc)) from exc
        with self._lock:
            self._voicemails.put(vm)
        return vm, wav

    def save_voicemail(self, meta: VoicemailMeta) -> VoicemailMeta:
        """Store a message (once left: `ended_by` set); the size and, unless given, the
        duration come from the WAV. Never raises for I/O (logged, kept in memory)."""
        with self._lock:
            known = self._voicemails.by_id.get(meta.id)
        if known is None:
            log.error("voicemail_unknown", voicemail_id=meta.id, call_id=meta.call_id)
            return meta
        meta = replace(meta, file=known.file, recorded_at=as_utc(meta.recorded_at))
        wav = self.root / meta.file
        if not meta.pending:
            info = wav_info(wav)
            if info is None:
                info = repair_wav(wav)
            if info is not None:
                meta = replace(
                    meta,
                    size_bytes=info.size_bytes,
                    duration_seconds=meta.duration_seconds or round(info.duration_seconds, 2),
                )
        with self._lock:
            self._voicemails.put(meta)
        self._persist(wav, meta.to_record(), meta.id)
        return meta

    def voicemail(self, voicemail_id: str) -> VoicemailMeta | None:
        if not VOICEMAIL_ID.fullmatch(voicemail_id):
            return None
        with self._lock:
            return self._voicemails.by_id.get(voicemail_id)

    def voicemail_audio_path(self, voicemail_id: str) -> Path | None:
        return self._wav_of(self.voicemail(voicemail_id))

    def voicemails(
        self,
        *,
        call_id: str | None = None,
        line: str | None = None,
        user: str | None = None,
        group: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        before: str | None = None,
        where: Callable[[VoicemailMeta], bool] | None = None,
        include_pending: bool = False,
    ) -> list[VoicemailMeta]:
        """Newest first, as `recordings` (`user` / `group`: left for that user / ring group);
        messages still being left only with `include_pending`."""

        def keep(vm: VoicemailMeta) -> bool:
            return (
                (include_pending or not vm.pending)
                and (call_id is None or vm.call_id == call_id)
                and (line is None or vm.line == line)
                and (user is None or vm.user_id == user)
                and (group is None or vm.group_id == group)
                and (where is None or where(vm))
            )

        with self._lock:
            return self._voicemails.select(
                before=before,
                limit=limit,
                since=since,
                until=until,
                when=lambda vm: vm.recorded_at,
                keep=keep,
            )

    def delete_voicemail(self, voicemail_id: str) -> bool:
        """Remove the message's WAV and sidecar; False when there is no such message.
        ArchiveError when its audio cannot be removed (it stays listed)."""
        vm = self.voicemail(voicemail_id)
        if vm is None:
            return False
        wav = self.root / vm.file
        try:
            wav.unlink(missing_ok=True)
        except OSError as exc:
            raise ArchiveError(wav, _reason(exc)) from exc
        with self._lock:
            self._voicemails.remove(voicemail_id)
        try:
            wav.with_suffix(".json").unlink(missing_ok=True)
        except OSError as exc:
            log.error("voicemail_sidecar_undeleted", voicemail_id=voicemail_id, reason=_reason(exc))
        log.info("voicemail_deleted", voicemail_id=voicemail_id)
        return True

    def carrier_voicemail(
        self,
        call_id: str,
        *,
        recording_sid: str,
        url: str | None,
        duration_seconds: float | None,
        caller: str | None,
        line: str | None,
        user_id: str | None,
        group_id: str | None,
        now: datetime,
    ) -> VoicemailMeta:
        """A message the carrier recorded (its recording callback), listed beside the SIP
        path's; the same recording twice is one message. ArchiveError when it cannot be
        stored."""
        with self._lock:
            for known in self._voicemails.by_id.values():
                if known.recording_sid == recording_sid:
                    return known
        vm, _ = self._add_voicemail(  # (its WAV is never written: the carrier has it)
            call_id,
            caller=caller,
            line=line,
            user_id=user_id,
            group_id=group_id,
            now=now,
            duration_seconds=float(duration_seconds or 0.0),
            source="carrier",
            recording_sid=recording_sid,
            remote_url=url,
        )
        log.info("voicemail_from_carrier", voicemail_id=vm.id, recording_sid=recording_sid)
        return vm

    def mark_heard(self, voicemail_id: str, by: str | None, at: datetime) -> VoicemailMeta | None:
        """Mark the message heard (or new again, `by` None); None when there is no such one."""
        with self._lock:  # (a prune or a delete in another thread must not be undone)
            vm = self._voicemails.by_id.get(voicemail_id)
            if vm is None:
                return None
            vm = replace(vm, heard_at=as_utc(at) if by else None, heard_by=by)
            self._voicemails.put(vm)
            self._persist(self.root / vm.file, vm.to_record(), vm.id)
        return vm

    # -- retention ----------------------------------------------------------------------------
    def prune(self, before: datetime) -> tuple[int, int]:
        """Delete the recordings and voicemail messages that started before `before` (their
        WAVs and sidecars), except those still being written. Returns how many of each."""
        cutoff = as_utc(before)
        with self._lock:
            recordings = [
                m
                for m in self._recordings.by_id.values()
                if as_utc(m.started_at) < cutoff and not m.live
            ]
            voicemails = [
                v
                for v in self._voicemails.by_id.values()
                if as_utc(v.recorded_at) < cutoff and not v.pending
            ]
        removed_recordings = 0
        for meta in recordings:
            wav = self.root / meta.file
            try:
                wav.unlink(missing_ok=True)
                wav.with_suffix(".json").unlink(missing_ok=True)
            except OSError as exc:
                log.error("recording_undeleted", recording_id=meta.id, reason=_reason(exc))
                continue
            with self._lock:
                self._recordings.remove(meta.id)
            removed_recordings += 1
        removed_voicemails = 0
        for vm in voicemails:
            try:
                if self.delete_voicemail(vm.id):
                    removed_voicemails += 1
            except ArchiveError as exc:
                log.error("voicemail_undeleted", voicemail_id=vm.id, reason=str(exc))
        return removed_recordings, removed_voicemails

    # -- the SIP path's MessageStore port (bridge.sip.b2bua) ---------------------------------
    def new_message(
        self,
        call_id: str,
        *,
        caller: str | None,
        line: str | None,
        user_id: str | None,
        group_id: str | None,
    ) -> tuple[str, Path]:
        """`new_voicemail` now (the archive's clock); MediaError when it cannot be stored."""
        try:
            vm, wav = self.new_voicemail(
                call_id,
                caller=caller,
                line=line,
                user_id=user_id,
                group_id=group_id,
                now=self._clock(),
            )
        except ArchiveError as exc:
            raise MediaError(f"voicemail cannot be stored in {exc.path}: {exc.reason}") from exc
        return vm.id, wav

    def message_recorded(self, message_id: str, duration_seconds: float, ended_by: str) -> None:
        """The message is complete: how long, and what ended it."""
        vm = self.voicemail(message_id)
        if vm is None:
            log.error("voicemail_unknown", voicemail_id=message_id)
            return
        if ended_by not in _ENDS:
            log.warning("voicemail_end_unknown", voicemail_id=message_id, ended_by=ended_by)
            ended_by = "hangup"
        self.save_voicemail(
            replace(vm, duration_seconds=round(duration_seconds, 2), ended_by=ended_by)  # type: ignore[arg-type]
        )
