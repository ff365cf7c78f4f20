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

from fastapi import APIRouter

from bridge.config import Settings
from bridge.directory.model import Directory
from bridge.httpauth import HttpAuth
from bridge.recordings import http
from bridge.recordings.store import MediaArchive


def build_archive(
    settings: Settings, *, clock: Callable[[], datetime] | None = None
) -> MediaArchive:
    """The archive under `settings.recordings_path`, loaded. Reading never fails start-up (an
    unreadable sidecar is logged and skipped); a folder that cannot be written only refuses
    new recordings (`ArchiveError`, answered by the control), so the daemon still starts."""
    archive = MediaArchive(settings.recordings_path, clock=clock)
    archive.load()
    return archive


def routes(archive: MediaArchive, auth: HttpAuth, directory: Callable[[], Directory]) -> APIRouter:
    return http.routes(archive, auth, directory)
