"""The carrier's side of the supervisor and recording controls: what listen, whisper, barge and
the recording actions are as REST requests. Who may use them is decided before this
(`bridge.control`); here the call's state is checked only as far as the carrier needs it.

- listen  = a participant with `Muted=true`;
- whisper = `Coaching=true` and `CallSidToCoach` = the answering leg's CallSid (the agent hears
  the supervisor, the caller does not);
- barge   = unmuted, not coaching;
- switching is `UpdateParticipant` on the supervisor's participant, leaving is
  `DeleteParticipant` (both need the conference's `CF...` sid, which the carrier's API wants
  there instead of the name);
- recording is the Recordings API on the caller's call, dual channel (the caller on one
  channel, the other side on the other), `Twilio.CURRENT`-free: the recording's own sid.

Each method raises `CarrierApiError` when the carrier refuses or cannot be reached (after the
client's retries); the call's record is then as it was before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from bridge.carriers.twilio.conference import LEG_EVENTS, ConferenceMode
from bridge.carriers.twilio.rest import CarrierRest
from bridge.carriers.twilio.state import CallRecording, CarrierCall, MonitorSession
from bridge.observability.logging import call_context

if TYPE_CHECKING:
    from bridge.carriers.twilio.service import TwilioCalls

log = structlog.get_logger("bridge.carrier")

MONITOR_RING_SECONDS = 30
# The recording's status callback subscription: the spec allows only these three.
RECORDING_EVENTS = ["in-progress", "completed", "absent"]


def monitor_label(user_id: str) -> str:
    """A supervisor's participant label: never a user id, so never an agent's label."""
    return f"monitor-{user_id}"


def participant_flags(mode: str, agent_sid: str | None) -> dict[str, Any]:
    """The participant parameters of a monitor mode."""
    if mode == "listen":
        return {"muted": True, "coaching": False}
    if mode == "whisper":
        return {"muted": False, "coaching": True, "call_sid_to_coach": agent_sid}
    return {"muted": False, "coaching": False}  # barge


class TwilioSupervision:
    """Listen / whisper / barge and recording on carrier calls (see the module docstring)."""

    def __init__(self, service: TwilioCalls) -> None:
        self.service = service

    @property
    def rest(self) -> CarrierRest | None:
        return self.service.rest

    def supports_monitoring(self, call: CarrierCall) -> bool:
        return call.mode == ConferenceMode.name

    # -- listen / whisper / barge --------------------------------------------------------------
    async def join(
        self, call: CarrierCall, user_id: str, mode: str, via: str, to: str
    ) -> MonitorSession:
        """Dial the supervisor into the call's conference in `mode`. The session is in the
        call record from the start (a second request sees it), and removed if dialing fails."""
        rest = self._rest()
        flags = participant_flags(mode, call.answered_sid())
        if not flags.get("coaching"):
            flags.pop("coaching")  # a new participant does not coach unless told
        session = MonitorSession(user_id, mode, via, to, started_at=call.now)
        call.monitors[user_id] = session
        line = call.machine.plan.line
        caller = call.caller if via == "client" else None
        with call_context(call.call_id, monitor=user_id):
            log.info("carrier_monitor_join", mode=mode, via=via, to=to)
            try:
                made = await rest.create_participant(
                    call.conference_sid or call.call_id,
                    from_=line or caller or "anonymous",
                    to=to,
                    label=monitor_label(user_id),
                    beep="false",  # nobody hears a supervisor arrive
                    timeout=MONITOR_RING_SECONDS,
                    end_conference_on_exit=False,
                    status_callback=self.service.url(
                        "/twilio/status", call=call.call_id, monitor=user_id
                    ),
                    status_callback_event=LEG_EVENTS,
                    **flags,
                )
            except BaseException:
                self.service.metrics.carrier_participants.labels(
                    kind="monitor", result="failed"
                ).inc()
                if call.monitors.get(user_id) is session:
                    del call.monitors[user_id]
                raise
        self.service.metrics.carrier_participants.labels(kind="monitor", result="placed").inc()
        session.call_sid = session.call_sid or made.call_sid
        if call.conference_sid is None:
            call.conference_sid = made.conference_sid
        return session

    async def switch(self, call: CarrierCall, session: MonitorSession, mode: str) -> None:
        rest = self._rest()
        assert call.conference_sid is not None and session.call_sid is not None
        with call_context(call.call_id, monitor=session.user_id):
            log.info("carrier_monitor_switch", mode=mode, previous=session.mode)
            await rest.update_participant(
                call.conference_sid,
                session.call_sid,
                **participant_flags(mode, call.answered_sid()),
            )
        session.mode = mode

    async def leave(self, call: CarrierCall, session: MonitorSession) -> None:
        rest = self._rest()
        assert call.conference_sid is not None and session.call_sid is not None
        with call_context(call.call_id, monitor=session.user_id):
            log.info("carrier_monitor_leave", mode=session.mode)
            await rest.delete_participant(call.conference_sid, session.call_sid)
        session.status = "ended"
        if call.monitors.get(session.user_id) is session:
            del call.monitors[session.user_id]

    # -- recording -----------------------------------------------------------------------------
    async def start_recording(self, call: CarrierCall) -> CallRecording:
        rest = self._rest()
        recording = CallRecording()
        call.recording = recording
        with call_context(call.call_id):
            log.info("carrier_recording_start")
            try:
                made = await rest.create_recording(
                    call.call_id,
                    recording_channels="dual",
                    recording_status_callback=self.service.url(
                        "/twilio/recording", call=call.call_id, kind="call"
                    ),
                    recording_status_callback_event=RECORDING_EVENTS,
                )
            except BaseException:
                if call.recording is recording:
                    call.recording = None
                raise
        recording.sid = recording.sid or made.sid
        self._apply(recording, made.status or "in-progress")
        return recording

    async def update_recording(
        self, call: CarrierCall, status: str, pause_behavior: str | None = None
    ) -> CallRecording:
        """`paused` (with `skip` or `silence`), `in-progress` (resume) or `stopped`."""
        rest = self._rest()
        recording = call.recording
        assert recording is not None and recording.sid is not None
        params: dict[str, Any] = {"status": status}
        if status == "paused" and pause_behavior is not None:
            params["pause_behavior"] = pause_behavior
        with call_context(call.call_id, recording_sid=recording.sid):
            log.info("carrier_recording_update", status=status, pause_behavior=pause_behavior)
            updated = await rest.update_recording(call.call_id, recording.sid, **params)
        recording.pause_behavior = pause_behavior if status == "paused" else None
        self._apply(recording, updated.status or status)
        return recording

    @staticmethod
    def _apply(recording: CallRecording, status: str) -> None:
        # A status callback may already have made it final (completed, absent): keep that.
        if recording.status in ("completed", "absent", "failed"):
            return
        recording.status = status
        recording.history.append(status)

    def _rest(self) -> CarrierRest:
        rest = self.rest
        if rest is None:
            raise RuntimeError("the carrier REST API is not configured")
        return rest
