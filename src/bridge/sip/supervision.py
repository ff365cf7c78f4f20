"""Supervision on SIP calls (the `Supervision` port, `bridge.calls.ports`), on the media engine.

The engine anchors every SIP call's audio, so listen, whisper and barge are a change of the
call's mix (live, no re-INVITE to caller or agent) and the recording is a tap of it:

- join: the bridge INVITEs the supervisor (`via="ip_phone"`: every registered desk phone of
  theirs, first to answer wins; `"phone_number"`: their number through the trunk), and the
  engine adds their leg in `mode` when they answer. The session is listed (`dialing`) from the
  INVITE on; switch and leave work while it rings. `via="client"` (an app) waits for browser
  audio (WebRTC legs) and is refused with that reason.
- leave: BYE to the supervisor (CANCEL while it rings), their leg freed; their own BYE ends
  their session, never the call.
- recording: dual-channel WAV through the archive (`bridge.recordings`), caller left, the other
  side right; pause `skip` / `silence`; stopped by the control or when the call ends.

With `[media] engine = "none"` every control is refused with `NEEDS_MEDIA`; with
`"rtpengine"` (no mixer) with `NEEDS_MIXER`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from bridge.calls.events import CallState
from bridge.calls.media import MediaError, MediaEvent, RecordingFailed
from bridge.calls.ports import AnswerRefused
from bridge.calls.registry import CallRegistry
from bridge.calls.supervision import (
    AnswerUnusable,
    MonitorView,
    NotPossibleNow,
    NotSupportedOnCall,
    RecordingView,
    SupervisableCall,
    SupervisionFailed,
    Unsupervised,
    _state,
)
from bridge.sip.b2bua import SipCall, SipCalls, SipMonitor

log = structlog.get_logger("bridge.sip.supervision")

NEEDS_MEDIA = (
    "listen, whisper, barge and recording on SIP calls need the media engine, "
    'which this daemon does not run ([media] engine = "none")'
)
NEEDS_MIXER = (
    "listen, whisper, barge and recording on SIP calls need the embedded media engine: "
    'rtpengine (10.5, [media] engine = "rtpengine") has no mixer, and records a call only '
    "as a pcap of its packets"
)
CLIENT_NEEDS_WEBRTC = (
    "this media engine has no WebRTC legs, so a supervisor's app cannot join a SIP call: "
    "use via ip_phone (a registered desk phone) or phone_number"
)
NOT_ANSWERED = "the call is not answered yet"


class RecordingArchive(Protocol):
    """Where recordings go (`bridge.recordings.store.MediaArchive`)."""

    def new_recording(
        self,
        call_id: str,
        *,
        path: str,
        line: str | None,
        caller: str | None,
        users: tuple[str, ...],
        pause_behavior: str | None,
        now: datetime,
    ) -> tuple[Any, Any]: ...

    def update_recording(self, meta: Any) -> None: ...


@dataclasses.dataclass(eq=False)
class _Recording:
    meta: Any  # the archive's RecordingMeta (id, status, pause_behavior, ...)


class SipSupervision:
    """Listen / whisper / barge and recording on SIP calls, through the media engine."""

    path = "sip"

    def __init__(
        self,
        registry: CallRegistry,
        calls: Callable[[], SipCalls | None],
        archive: RecordingArchive | None,
        *,
        wall_clock: Callable[[], float],
    ) -> None:
        self._registry = registry
        self._calls = calls
        self._archive = archive
        self._wall = wall_clock
        self._bound: SipCalls | None = None

    # -- the port ------------------------------------------------------------------------------
    def call(self, call_id: str) -> SupervisableCall | None:
        sip = self._sip()
        if sip is None or sip.media is None:
            return Unsupervised(self._registry, _no_media(sip)).call(call_id)
        live = self._registry.get(call_id)
        call = sip.supervisable(call_id)
        if live is None or call is None:
            return None
        recording = call.recording.meta if isinstance(call.recording, _Recording) else None
        return SupervisableCall(
            call_id=call_id,
            path="sip",
            state=_state(live),
            answered_by=live.answered_by,
            monitors={uid: _monitor_view(m) for uid, m in call.monitors.items()},
            recording=_recording_view(recording) if recording is not None else None,
            cannot_monitor=sip.media.capabilities().missing("monitor"),
            cannot_record=sip.media.capabilities().missing("recording")
            or (None if self._archive is not None else "no recordings_dir"),
        )

    async def join(
        self, call_id: str, user_id: str, mode: str, via: str, number: str | None
    ) -> MonitorView:
        sip, call = self._answered(call_id)
        self._capable(sip, "monitor")
        if via == "client" and not (sip.media is not None and sip.media.capabilities().webrtc):
            raise NotSupportedOnCall(CLIENT_NEEDS_WEBRTC)
        if user_id in call.monitors:
            raise NotPossibleNow(f"user {user_id!r} already monitors this call")
        try:
            monitor = sip.dial_supervisor(call, user_id, mode, via, number)
        except MediaError as exc:
            raise NotPossibleNow(exc.reason) from None
        return _monitor_view(monitor)

    async def answer_monitor(self, call_id: str, user_id: str, sdp: str) -> MonitorView:
        sip, call = self._live(call_id)
        monitor = call.monitors.get(user_id)
        if monitor is None or monitor.via != "client" or monitor.status != "dialing":
            raise NotPossibleNow(f"no join of user {user_id!r} waits for an answer on this call")
        try:
            await sip.answer_supervisor(call, monitor, sdp)
        except AnswerRefused as exc:
            raise AnswerUnusable(exc.reason) from None
        except MediaError as exc:
            raise SupervisionFailed(exc.reason) from None
        return _monitor_view(monitor)

    async def switch(self, call_id: str, user_id: str, mode: str) -> MonitorView:
        sip, call = self._live(call_id)
        monitor = call.monitors.get(user_id)
        if monitor is None:
            raise NotPossibleNow(f"user {user_id!r} does not monitor this call")
        try:
            sip.switch_supervisor(call, monitor, mode)
        except MediaError as exc:
            raise SupervisionFailed(exc.reason) from None
        return _monitor_view(monitor)

    async def leave(self, call_id: str, user_id: str) -> None:
        sip, call = self._live(call_id)
        monitor = call.monitors.get(user_id)
        if monitor is None:
            raise NotPossibleNow(f"user {user_id!r} does not monitor this call")
        sip.drop_supervisor(call, monitor)

    async def start_recording(self, call_id: str) -> RecordingView:
        sip, call = self._answered(call_id)
        self._capable(sip, "recording")
        if self._archive is None:
            raise NotSupportedOnCall("recordings have nowhere to go (media.recordings_dir)")
        current = call.recording.meta if isinstance(call.recording, _Recording) else None
        if current is not None and current.status in ("in-progress", "paused"):
            raise NotPossibleNow("the call is being recorded already")
        live = call.run.live
        users = tuple(u for u in (live.answered_by, *call.monitors) if u)
        try:
            meta, path = self._archive.new_recording(
                call_id,
                path="sip",
                line=call.machine.plan.line,
                caller=live.caller,
                users=users,
                pause_behavior=None,
                now=self._now(),
            )
        except Exception as exc:  # the archive's error: the directory cannot be written
            log.warning("sip_recording_unavailable", call_id=call_id, reason=str(exc))
            raise SupervisionFailed(f"the recording cannot be stored: {exc}") from None
        assert sip.media is not None
        try:
            sip.media.start_recording(call_id, path)
        except MediaError as exc:
            self._archive.update_recording(
                dataclasses.replace(meta, status="failed", error=exc.reason, ended_at=self._now())
            )
            raise SupervisionFailed(exc.reason) from None
        call.recording = _Recording(meta)
        self._archive.update_recording(meta)
        log.info("sip_recording_started", call_id=call_id, recording_id=meta.id)
        return _recording_view(meta)

    async def pause_recording(self, call_id: str, behavior: str) -> RecordingView:
        sip, _, recording = self._recording(call_id)
        assert sip.media is not None
        try:
            sip.media.pause_recording(call_id, behavior)
        except MediaError as exc:
            raise NotPossibleNow(exc.reason) from None
        return self._update(recording, status="paused", pause_behavior=behavior)

    async def resume_recording(self, call_id: str) -> RecordingView:
        sip, _, recording = self._recording(call_id)
        assert sip.media is not None
        try:
            sip.media.resume_recording(call_id)
        except MediaError as exc:
            raise NotPossibleNow(exc.reason) from None
        return self._update(recording, status="in-progress", pause_behavior=None)

    async def stop_recording(self, call_id: str) -> RecordingView:
        sip, call, recording = self._recording(call_id)
        return self._finish(sip, call, recording)

    # -- internals ----------------------------------------------------------------------------
    def _sip(self) -> SipCalls | None:
        sip = self._calls()
        if sip is not None and sip is not self._bound:
            self._bound = sip
            sip.ended_listeners.append(self._call_ended)
            if sip.media is not None:
                sip.media.subscribe(self._media_event)
        return sip

    @staticmethod
    def _capable(sip: SipCalls, what: str) -> None:
        """What the media backend says it cannot do is refused with its reason (409)."""
        assert sip.media is not None
        missing = sip.media.capabilities().missing(what)
        if missing is not None:
            raise NotSupportedOnCall(missing)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._wall(), UTC)

    def _live(self, call_id: str) -> tuple[SipCalls, SipCall]:
        sip = self._sip()
        if sip is None or sip.media is None:
            raise NotSupportedOnCall(_no_media(sip))
        call = sip.supervisable(call_id)
        if call is None:
            raise NotPossibleNow("the call has ended")
        return sip, call

    def _answered(self, call_id: str) -> tuple[SipCalls, SipCall]:
        sip, call = self._live(call_id)
        if call.machine.state is not CallState.ANSWERED:
            raise NotPossibleNow(NOT_ANSWERED)
        return sip, call

    def _recording(self, call_id: str) -> tuple[SipCalls, SipCall, _Recording]:
        sip, call = self._live(call_id)
        recording = call.recording
        if not isinstance(recording, _Recording) or recording.meta.status not in (
            "in-progress",
            "paused",
        ):
            raise NotPossibleNow("the call is not being recorded")
        return sip, call, recording

    def _update(self, recording: _Recording, **changes: Any) -> RecordingView:
        recording.meta = dataclasses.replace(recording.meta, **changes)
        if self._archive is not None:
            self._archive.update_recording(recording.meta)
        return _recording_view(recording.meta)

    def _finish(
        self, sip: SipCalls, call: SipCall, recording: _Recording, error: str | None = None
    ) -> RecordingView:
        result = sip.media.stop_recording(call.call_id) if sip.media is not None else None
        changes: dict[str, Any] = {
            "status": "failed" if error else "completed",
            "ended_at": self._now(),
            "pause_behavior": None,
        }
        if error:
            changes["error"] = error
        if result is not None:
            changes["duration_seconds"] = round(result.duration_seconds, 2)
            changes["size_bytes"] = result.size_bytes
        view = self._update(recording, **changes)
        log.info(
            "sip_recording_stopped",
            call_id=call.call_id,
            recording_id=recording.meta.id,
            seconds=changes.get("duration_seconds"),
        )
        return view

    def _call_ended(self, call: SipCall) -> None:
        recording = call.recording
        sip = self._bound
        if (
            isinstance(recording, _Recording)
            and sip is not None
            and recording.meta.status in ("in-progress", "paused")
        ):
            self._finish(sip, call, recording)

    def _media_event(self, event: MediaEvent) -> None:
        if not isinstance(event, RecordingFailed) or self._bound is None:
            return
        call = self._bound.supervisable(event.call_id)
        if call is not None and isinstance(call.recording, _Recording):
            self._update(call.recording, status="failed", error=event.reason, ended_at=self._now())


def _monitor_view(monitor: SipMonitor) -> MonitorView:
    return MonitorView(
        user_id=monitor.user_id,
        mode=monitor.mode,
        via=monitor.via,
        to=monitor.to,
        reference=None,
        status=monitor.status,
    )


def _recording_view(meta: Any) -> RecordingView:
    duration = getattr(meta, "duration_seconds", None)
    return RecordingView(
        reference=meta.id,
        status=meta.status,
        pause_behavior=meta.pause_behavior,
        url=f"/api/v1/recordings/{meta.id}/audio",
        duration_seconds=round(duration) if duration is not None else None,
    )


def _no_media(sip: SipCalls | None) -> str:
    """Why SIP calls cannot be supervised here: no engine, or one without a mixer."""
    return NEEDS_MIXER if sip is not None and sip.relay is not None else NEEDS_MEDIA
