"""Wiring of the media archive (like a Wazo plugin's `plugin.py`).

- `build_archive(settings)` in `bridge.context.build_context`: the `MediaArchive` under
  `[media] recordings_dir`, loaded from disk (recordings cut by a stop marked failed, their
  WAV headers repaired). The SIP path records into it (`SipSupervision(..., archive)`, and
  `build_sip(..., messages=archive)` for voicemail: it is the b2bua's `MessageStore`).
- `routes(...)` in `bridge.api.app.create_app`: `/api/v1/recordings...`, `/api/v1/voicemails...`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from fastapi import APIRouter

from bridge.calls.events import CallEventRecord
from bridge.config import Settings
from bridge.directory.model import Directory
from bridge.httpauth import HttpAuth
from bridge.recordings import http
from bridge.recordings.store import ArchiveError, MediaArchive

log = structlog.get_logger("bridge.recordings")


def build_archive(
    settings: Settings, *, clock: Callable[[], datetime] | None = None
) -> MediaArchive:
    """The archive under `settings.recordings_path`, loaded. Reading never fails start-up (an
    unreadable sidecar is logged and skipped); a folder that cannot be written only refuses
    new recordings (`ArchiveError`, answered by the control), so the daemon still starts."""
    archive = MediaArchive(settings.recordings_path, clock=clock)
    archive.load()
    return archive


def routes(
    archive: MediaArchive,
    auth: HttpAuth,
    directory: Callable[[], Directory],
    carrier_media: http.CarrierMedia | None = None,
) -> APIRouter:
    return http.routes(archive, auth, directory, carrier_media)


def carrier_voicemails(
    archive: MediaArchive, carrier_call: Callable[[str], Any], clock: Callable[[], datetime]
) -> Callable[[CallEventRecord], None]:
    """A call runner listener: each voicemail the carrier recorded (`VoicemailRecorded`)
    listed in the archive beside the SIP path's, for the user or ring group the call was
    routed to."""

    def on_event(record: CallEventRecord) -> None:
        event = record.event
        if type(event).__name__ != "VoicemailRecorded" or record.path != "carrier":
            return
        call = carrier_call(record.call_id)
        run = getattr(call, "run", None)
        plan = run.machine.plan if run is not None else None
        kind = plan.target_kind if plan is not None else None
        try:
            archive.carrier_voicemail(
                record.call_id,
                recording_sid=event.recording_sid,  # type: ignore[attr-defined]
                url=event.url,  # type: ignore[attr-defined]
                duration_seconds=event.duration_seconds,  # type: ignore[attr-defined]
                caller=run.live.caller if run is not None else None,
                line=plan.line if plan is not None else None,
                user_id=plan.target_id if kind == "user" and plan is not None else None,
                group_id=plan.target_id if kind == "ring_group" and plan is not None else None,
                now=clock(),
            )
        except ArchiveError as exc:
            log.error("voicemail_from_carrier_unsaved", call_id=record.call_id, reason=str(exc))

    return on_event
