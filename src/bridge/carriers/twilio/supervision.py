"""The carrier's implementation of the `Supervision` port (`bridge.calls.ports`): what listen,
whisper, barge and the recording actions are as REST requests. Who may use them is decided
before this (`bridge.control`, which imports nothing of the carrier); here the call is checked
only as far as the carrier alone knows it, and answered with the port's values and errors:

- listen  = a participant with `Muted=true`;
- whisper = `Coaching=true` and `CallSidToCoach` = the answering leg's CallSid (the agent hears
  the supervisor, the caller does not);
- barge   = unmuted, not coaching;
- switching is `UpdateParticipant` on the supervisor's participant, leaving is
  `DeleteParticipant` (both need the conference's `CF...` sid, which the carrier's API wants
  there instead of the name);
- recording is the Recordings API on the caller's call, dual channel (the caller on one
  channel, the other side on the other), `Twilio.CURRENT`-free: the recording's own sid.

- no REST API configured -> `SupervisionUnavailable`; a call answered in `dial` mode (no
  conference to join) -> `cannot_monitor` in its view; the agent's CallSid not known yet ->
  `cannot_whisper`; a supervisor whose participant is not created yet -> `pending`;
- the carrier refusing or not answering (`CarrierApiError`, after the client's retries) ->
  `SupervisionFailed`; the call's record is then as it was before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog

from bridge.calls.supervision import (
    MonitorView,
    NotPossibleNow,
    NotSupportedOnCall,
    RecordingView,
    SupervisableCall,
    SupervisionFailed,
    SupervisionUnavailable,
)
from bridge.carriers.twilio.conference import LEG_EVENTS, ConferenceMode
from bridge.carriers.twilio.rest import CarrierApiError, CarrierRest
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
    """Listen / whisper / barge and recording on carrier calls: the `Supervision` port of the
    carrier path (see the module docstring)."""

    path = "carrier"

    def __init__(self, service: TwilioCalls) -> None:
        self.service = service

    @property
    def rest(self) -> CarrierRest | None:
        return self.service.rest

    # -- the view ------------------------------------------------------------------------------
    def call(self, call_id: str) -> SupervisableCall | None:
        self._rest()
        call = self.service.find(call_id)
        return _view(call) if call is not None else None

    # -- listen / whisper / barge --------------------------------------------------------------
    async def join(
        self, call_id: str, user_id: str, mode: str, via: str, number: str | None
    ) -> MonitorView:
        """Dial the supervisor into the call's conference in `mode`. The session is in the
        call record from the start (a second request sees it), and removed if dialing fails."""
        if via == "ip_phone":
            raise NotSupportedOnCall(IP_PHONE_ON_CARRIER)
        rest = self._rest()
        call = self._call(call_id)
        if mode == "whisper" and call.answered_sid() is None:
            raise NotPossibleNow(WHISPER_NEEDS_AGENT)
        to = number if via == "phone_number" and number else f"client:{user_id}"
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
                with _carrier_failures():
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
        return _monitor_view(call, session)

    async def answer_monitor(self, call_id: str, user_id: str, sdp: str) -> MonitorView:
        raise NotSupportedOnCall(
            "on the carrier path the supervisor's app joins through the voice SDK, not an SDP"
        )

    async def switch(self, call_id: str, user_id: str, mode: str) -> MonitorView:
        rest = self._rest()
        call = self._call(call_id)
        session = _ready_session(call, user_id)
        if mode == session.mode:
            return _monitor_view(call, session)
        if mode == "whisper" and call.answered_sid() is None:
            raise NotPossibleNow(WHISPER_NEEDS_AGENT)
        assert call.conference_sid is not None and session.call_sid is not None
        with call_context(call.call_id, monitor=session.user_id):
            log.info("carrier_monitor_switch", mode=mode, previous=session.mode)
            with _carrier_failures():
                await rest.update_participant(
                    call.conference_sid,
                    session.call_sid,
                    **participant_flags(mode, call.answered_sid()),
                )
        session.mode = mode
        return _monitor_view(call, session)

    async def leave(self, call_id: str, user_id: str) -> None:
        rest = self._rest()
        call = self._call(call_id)
        session = _ready_session(call, user_id)
        assert call.conference_sid is not None and session.call_sid is not None
        with call_context(call.call_id, monitor=session.user_id):
            log.info("carrier_monitor_leave", mode=session.mode)
            with _carrier_failures():
                await rest.delete_participant(call.conference_sid, session.call_sid)
        session.status = "ended"
        if call.monitors.get(session.user_id) is session:
            del call.monitors[session.user_id]

    # -- recording -----------------------------------------------------------------------------
    async def start_recording(self, call_id: str) -> RecordingView:
        rest = self._rest()
        call = self._call(call_id)
        recording = CallRecording()
        call.recording = recording
        with call_context(call.call_id):
            log.info("carrier_recording_start")
            try:
                with _carrier_failures():
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
        return recording.view()

    async def pause_recording(self, call_id: str, behavior: str) -> RecordingView:
        return await self._update_recording(call_id, "paused", behavior)

    async def resume_recording(self, call_id: str) -> RecordingView:
        return await self._update_recording(call_id, "in-progress")

    async def stop_recording(self, call_id: str) -> RecordingView:
        return await self._update_recording(call_id, "stopped")

    async def _update_recording(
        self, call_id: str, status: str, pause_behavior: str | None = None
    ) -> RecordingView:
        """`paused` (with `skip` or `silence`), `in-progress` (resume) or `stopped`."""
        rest = self._rest()
        call = self._call(call_id)
        recording = call.recording
        if recording is None or not recording.active:
            raise NotPossibleNow(f"call {call_id!r} has no recording to change")
        if recording.sid is None:
            raise NotPossibleNow("the recording is still starting; try again")
        params: dict[str, Any] = {"status": status}
        if status == "paused" and pause_behavior is not None:
            params["pause_behavior"] = pause_behavior
        with call_context(call.call_id, recording_sid=recording.sid):
            log.info("carrier_recording_update", status=status, pause_behavior=pause_behavior)
            with _carrier_failures():
                updated = await rest.update_recording(call.call_id, recording.sid, **params)
        recording.pause_behavior = pause_behavior if status == "paused" else None
        self._apply(recording, updated.status or status)
        return recording.view()

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
            raise SupervisionUnavailable(
                "call controls need the carrier's REST API: set [twilio] account_sid and "
                "auth_token (or an API key)"
            )
        return rest

    def _call(self, call_id: str) -> CarrierCall:
        call = self.service.find(call_id)
        if call is None or call.machine.ended:
            raise NotPossibleNow(f"no live call {call_id!r}")
        return call


IP_PHONE_ON_CARRIER = (
    "via ip_phone reaches a supervisor's desk phone on SIP calls; on a carrier call use "
    "client or phone_number"
)
WHISPER_NEEDS_AGENT = "the answering leg's call is not known yet: whisper needs it"


@contextmanager
def _carrier_failures() -> Iterator[None]:
    """The carrier refusing or not answering, as the port's `SupervisionFailed`."""
    try:
        yield
    except CarrierApiError as exc:
        raise SupervisionFailed(f"the carrier refused or did not answer: {exc}") from exc


def _ready_session(call: CarrierCall, user_id: str) -> MonitorSession:
    session = call.monitors.get(user_id)
    if session is None:
        raise NotPossibleNow(f"user {user_id!r} is not monitoring call {call.call_id!r}")
    if session.call_sid is None or call.conference_sid is None:
        raise NotPossibleNow(f"user {user_id!r} is still being dialled into the call")
    return session


def _view(call: CarrierCall) -> SupervisableCall:
    return SupervisableCall(
        call_id=call.call_id,
        path="carrier",
        state=call.machine.state,
        answered_by=call.machine.answered_by,
        monitors={uid: _monitor_view(call, s) for uid, s in call.monitors.items()},
        recording=call.recording.view() if call.recording is not None else None,
        cannot_monitor=(
            None
            if call.mode == ConferenceMode.name
            else f"call {call.call_id!r} is in {call.mode} mode: listen, whisper and barge "
            "need [twilio] mode = 'conference'"
        ),
        cannot_whisper=None if call.answered_sid() is not None else WHISPER_NEEDS_AGENT,
    )


def _monitor_view(call: CarrierCall, session: MonitorSession) -> MonitorView:
    return session.view(pending=session.call_sid is None or call.conference_sid is None)
