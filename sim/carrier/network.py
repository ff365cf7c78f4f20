"""The simulated telephone network behind the fake REST API.

It owns every call, conference and recording, moves them through Twilio's states on an asyncio
clock scaled by `time_scale`, and reports each state change the bridge subscribed to as a status
callback (through `Webhooks`). The REST layer (`rest.py`) and the TwiML interpreter (`twiml.py`)
only call into it; neither keeps state of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .models import (
    API_VERSION,
    Call,
    Conference,
    Participant,
    Recording,
    new_sid,
    utcnow,
)
from .policy import TargetPolicy, answer
from .webhooks import Webhooks

if TYPE_CHECKING:
    from .twiml import TwimlRunner

log = logging.getLogger("sim.carrier.network")

# Call progress events (StatusCallbackEvent) and the CallStatus Twilio reports with each.
_CALL_EVENT_STATUS = {"initiated": "initiated", "ringing": "ringing", "answered": "in-progress"}

# Conference event names as subscribed (statusCallbackEvent) -> as reported.
_CONFERENCE_EVENTS = {
    "start": "conference-start",
    "end": "conference-end",
    "join": "participant-join",
    "leave": "participant-leave",
    "mute": "participant-mute",
    "unmute": "participant-unmute",
    "hold": "participant-hold",
    "unhold": "participant-unhold",
    "modify": "participant-modify",
}
# Which subscription covers a reported event ("mute" covers mute and unmute).
_SUBSCRIPTION = {"unmute": "mute", "unhold": "hold"}


class CarrierError(Exception):
    """A request the real carrier would refuse: answered with Twilio's error JSON."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def split_events(values: Iterable[str] | None, default: Iterable[str]) -> frozenset[str]:
    """Event lists arrive repeated or space-separated ("initiated ringing"); both count."""
    events = {e for v in values or () for e in v.split()}
    return frozenset(events or default)


class Network:
    """Calls, conferences and recordings, and the clock they run on."""

    def __init__(
        self,
        *,
        account_sid: str,
        webhooks: Webhooks,
        time_scale: float = 0.01,
        default_policy: TargetPolicy | None = None,
    ) -> None:
        self.account_sid = account_sid
        self.webhooks = webhooks
        self.time_scale = time_scale
        self.default_policy = default_policy or answer()
        self.policies: dict[str, TargetPolicy] = {}
        self.calls: dict[str, Call] = {}
        self.conferences: dict[str, Conference] = {}
        self.recordings: dict[str, Recording] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Timers that outlive the call that set them (hang up after N seconds), cancelled on close.
        self._timers: list[asyncio.TimerHandle] = []
        # Call sid -> the task that drives it (ringing, TwiML); a redirect replaces it.
        self._drivers: dict[str, asyncio.Task[Any]] = {}
        # Call sid -> set when that call leaves its conference (TwiML continues after <Dial>).
        self._left: dict[str, asyncio.Event] = {}
        # Set by the carrier right after: the runner needs the network and the network it.
        self.runner: TwimlRunner

    # -- clock and tasks ------------------------------------------------------------------------

    def now(self) -> float:
        """Simulated seconds."""
        return asyncio.get_running_loop().time() / self.time_scale

    def real(self, seconds: float) -> float:
        return max(0.0, seconds * self.time_scale)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(self.real(seconds))

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def later(self, seconds: float, callback: Any, *args: Any) -> None:
        """Run `callback(*args)` after simulated `seconds` (unless the carrier stops first)."""
        loop = asyncio.get_running_loop()
        # Forget the timers that already fired, keep the pending ones.
        self._timers = [t for t in self._timers if not t.cancelled() and t.when() > loop.time()]
        self._timers.append(loop.call_later(self.real(seconds), callback, *args))

    def drive(self, call: Call, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` as what the call does now, cancelling what it did before."""
        old = self._drivers.get(call.sid)
        if old is not None and old is not asyncio.current_task():
            old.cancel()
        task = self.spawn(coro, f"call-{call.sid}")
        self._drivers[call.sid] = task
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("carrier task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def policy_for(self, to: str) -> TargetPolicy:
        return self.policies.get(to, self.default_policy)

    # -- calls ----------------------------------------------------------------------------------

    def new_call(
        self,
        *,
        from_: str,
        to: str,
        direction: str,
        parent_call_sid: str | None = None,
        timeout: float = 60.0,
        status: str = "queued",
        status_callback: str | None = None,
        status_callback_method: str = "POST",
        status_callback_events: frozenset[str] = frozenset({"completed"}),
        params: dict[str, list[str]] | None = None,
    ) -> Call:
        call = Call(
            sid=new_sid("CA"),
            account_sid=self.account_sid,
            from_=from_,
            to=to,
            direction=direction,
            parent_call_sid=parent_call_sid,
            status=status,
            timeout=timeout,
            status_callback=status_callback,
            status_callback_method=status_callback_method,
            status_callback_events=status_callback_events,
            params=params or {},
        )
        if direction != "inbound":
            policy = self.policy_for(to)
            call.digits = policy.digits
        self.calls[call.sid] = call
        return call

    def call_params(self, call: Call) -> dict[str, str]:
        """The request parameters Twilio sends about a call in every voice webhook."""
        params = {
            "AccountSid": call.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.sid,
            "CallStatus": call.status,
            "Called": call.to,
            "Caller": call.from_,
            "Direction": call.direction,
            "From": call.from_,
            "To": call.to,
        }
        if call.parent_call_sid:
            params["ParentCallSid"] = call.parent_call_sid
        return params

    def _set_status(self, call: Call, status: str) -> None:
        call.status = status
        call.updated = utcnow()
        participant = self._participant_of(call)
        if participant is not None and participant.status != "connected":
            # A participant mirrors its call while it is being dialled.
            participant.status = {"queued": "queued", "ringing": "ringing"}.get(
                status, participant.status
            )
            participant.updated = call.updated

    def _call_event(self, call: Call, event: str) -> None:
        if not call.status_callback or event not in call.status_callback_events:
            return
        call.sequence += 1
        params = self.call_params(call)
        params.update(
            CallStatus=_CALL_EVENT_STATUS.get(event, call.status),
            CallbackSource="call-progress-events",
            SequenceNumber=str(call.sequence - 1),
            Timestamp=utcnow().strftime("%a, %d %b %Y %H:%M:%S +0000"),
            StatusCallbackEvent=event,
        )
        if event == "completed":
            duration = str(call.duration() or 0)
            params.update(CallDuration=duration, Duration=duration)
            params["SipResponseCode"] = {
                "completed": "200",
                "busy": "486",
                "no-answer": "487",
                "canceled": "487",
                "failed": "500",
            }[call.status]
        self.webhooks.enqueue(
            "call-status", call.status_callback, params, call.status_callback_method
        )

    async def ring(self, call: Call) -> str:
        """Dial `call.to` per its policy; returns answer | no-answer | busy | failed | canceled."""
        if call.is_final:
            return call.status  # cancelled before its task got to dial it
        loop = asyncio.get_running_loop()
        policy = self.policy_for(call.to)
        call.decision = loop.create_future()
        self._call_event(call, "initiated")
        outcome, at = policy.resolve(call.timeout)
        timers = []
        if outcome in ("answer", "no-answer"):
            timers.append(
                loop.call_later(self.real(min(policy.ring_after, at)), self._ringing, call)
            )
        timers.append(loop.call_later(self.real(at), self._decide, call, outcome))
        try:
            return await call.decision
        finally:
            for timer in timers:
                timer.cancel()

    def _ringing(self, call: Call) -> None:
        if call.decision is not None and not call.decision.done() and call.status == "queued":
            self._set_status(call, "ringing")
            self._call_event(call, "ringing")

    def _decide(self, call: Call, outcome: str) -> None:
        if call.decision is None or call.decision.done():
            return
        if outcome == "answer":
            self._ringing(call)  # an answered call always rang first
        call.decision.set_result(outcome)

    def answer(self, call_sid: str) -> None:
        """Pick up a ringing outbound call now, whatever its policy says."""
        call = self.calls[call_sid]
        if call.decision is None or call.decision.done():
            raise RuntimeError(f"{call_sid} is not ringing ({call.status})")
        self._decide(call, "answer")

    def answer_call(self, call: Call) -> None:
        """Mark a call answered (in-progress) and start its callee's talk timer."""
        if call.is_final or call.status == "in-progress":
            return
        self._set_status(call, "in-progress")
        call.start_time = utcnow()
        call.answered_at = self.now()
        self._call_event(call, "answered")
        if call.direction != "inbound":
            policy = self.policy_for(call.to)
            if policy.hangup_after is not None:
                self.later(policy.hangup_after, self.end_call, call, "completed", "callee-hangup")

    def end_call(self, call: Call, status: str, reason: str | None = None) -> None:
        """End a call in a final status; everything attached to it follows."""
        if call.is_final:
            return
        if status == "completed" and call.answered_at is None:
            status = "canceled"  # hanging up a call nobody answered cancels it
        self._set_status(call, status)
        call.end_time = utcnow()
        call.ended_at = self.now()
        call.end_reason = reason
        if call.decision is not None and not call.decision.done():
            call.decision.set_result(status)
        for sid in list(call.recording_sids):
            recording = self.recordings[sid]
            if recording.status in ("in-progress", "paused"):
                self.stop_recording(recording)
        if call.conference_sid:
            self.leave_conference(call, reason or "hangup")
        self._call_event(call, "completed")
        call.ended.set()
        # Hanging up a parent hangs up the legs it dialled.
        for child in list(self.calls.values()):
            if child.parent_call_sid == call.sid and not child.is_final:
                self.end_call(child, "completed", "parent-hangup")

    def hangup(self, call_sid: str, reason: str = "remote-hangup") -> None:
        """The far end hangs up (the caller of an inbound call, the callee of an outbound one)."""
        self.end_call(self.calls[call_sid], "completed", reason)

    # -- REST: calls ----------------------------------------------------------------------------

    def start_outbound(self, call: Call) -> None:
        """A call created through the API: ring it, then run its Url/Twiml when answered."""
        self.drive(call, self._outbound(call))

    async def _outbound(self, call: Call) -> None:
        outcome = await self.ring(call)
        if outcome != "answer":
            self.end_call(call, outcome, "ring-" + outcome)
            return
        self.answer_call(call)
        if call.twiml is not None:
            await self.runner.execute(call, call.twiml, call.url)
        elif call.url:
            await self.runner.fetch_and_execute(call, call.url, call.method)
        # A TwiML document that runs out ends the call, as on Twilio.
        self.end_call(call, "completed", call.end_reason or "twiml-end")

    def redirect(self, call: Call, *, url: str | None, method: str, twiml: str | None) -> None:
        """UpdateCall with Url or Twiml: the call leaves what it does and runs the new document."""
        if call.is_final:
            raise CarrierError(400, 21220, "Call is not in-progress. Cannot redirect.")
        if call.conference_sid:
            self.leave_conference(call, "redirect", continue_twiml=False)
        call.url, call.method, call.twiml = url or call.url, method, twiml
        self.drive(call, self._redirected(call, url, method, twiml))

    async def _redirected(
        self, call: Call, url: str | None, method: str, twiml: str | None
    ) -> None:
        self.answer_call(call)
        if twiml is not None:
            await self.runner.execute(call, twiml, url)
        elif url:
            await self.runner.fetch_and_execute(call, url, method)
        self.end_call(call, "completed", "twiml-end")

    # -- conferences ----------------------------------------------------------------------------

    def conference(self, key: str, *, create: bool = False) -> Conference | None:
        """A conference by sid or friendly name (Twilio accepts either for participants)."""
        if key in self.conferences:
            return self.conferences[key]
        for conf in self.conferences.values():
            if conf.friendly_name == key and conf.status != "completed":
                return conf
        if not create or key.startswith("CF"):
            return None
        conf = Conference(sid=new_sid("CF"), account_sid=self.account_sid, friendly_name=key)
        self.conferences[conf.sid] = conf
        return conf

    def participant(self, conf: Conference, key: str) -> Participant | None:
        """A participant by call sid or by label."""
        if key in conf.participants:
            return conf.participants[key]
        return next((p for p in conf.participants.values() if p.label == key), None)

    def _participant_of(self, call: Call) -> Participant | None:
        if not call.conference_sid:
            return None
        conf = self.conferences.get(call.conference_sid)
        return conf.participants.get(call.sid) if conf else None

    def subscribe_conference(
        self, conf: Conference, url: str | None, method: str, events: Iterable[str] | None
    ) -> None:
        # Only the first participant that names a callback sets it (Twilio's documented rule).
        if url and not conf.status_callback:
            conf.status_callback = url
            conf.status_callback_method = method
            conf.status_callback_events = split_events(events, ("start", "end"))

    def _conference_event(
        self,
        conf: Conference,
        event: str,
        participant: Participant | None = None,
        **extra: str,
    ) -> None:
        subscription = _SUBSCRIPTION.get(event, event)
        if not conf.status_callback or subscription not in conf.status_callback_events:
            return
        conf.sequence += 1
        params = {
            "AccountSid": conf.account_sid,
            "ConferenceSid": conf.sid,
            "FriendlyName": conf.friendly_name,
            "StatusCallbackEvent": _CONFERENCE_EVENTS[event],
            "SequenceNumber": str(conf.sequence),
            "Timestamp": utcnow().strftime("%a, %d %b %Y %H:%M:%S +0000"),
        }
        if participant is not None:
            params.update(
                CallSid=participant.call_sid,
                Muted=_bool(participant.muted),
                Hold=_bool(participant.hold),
                Coaching=_bool(participant.coaching),
                EndConferenceOnExit=_bool(participant.end_conference_on_exit),
                StartConferenceOnEnter=_bool(participant.start_conference_on_enter),
            )
            if participant.label:
                params["ParticipantLabel"] = participant.label
            if participant.call_sid_to_coach:
                params["CallSidToCoach"] = participant.call_sid_to_coach
        params.update(extra)
        self.webhooks.enqueue(
            "conference-status", conf.status_callback, params, conf.status_callback_method
        )

    def add_participant(self, conf: Conference, call: Call, **options: Any) -> Participant:
        participant = Participant(
            call_sid=call.sid, conference_sid=conf.sid, account_sid=self.account_sid, **options
        )
        if participant.call_sid_to_coach and not options.get("coaching", False):
            participant.coaching = True
        conf.participants[call.sid] = participant
        call.conference_sid = conf.sid
        self._left[call.sid] = asyncio.Event()
        return participant

    def join(self, conf: Conference, call: Call) -> None:
        """The participant's call is answered: it is in the conference now."""
        participant = conf.participants[call.sid]
        participant.status = "connected"
        participant.updated = utcnow()
        if conf.status == "init" and participant.start_conference_on_enter:
            conf.status = "in-progress"
            conf.updated = utcnow()
            self._conference_event(conf, "start", participant)
        self._conference_event(conf, "join", participant)

    async def wait_left(self, call: Call) -> None:
        event = self._left.get(call.sid)
        if event is not None:
            await event.wait()

    def leave_conference(self, call: Call, reason: str, *, continue_twiml: bool = True) -> None:
        """The call leaves its conference (hung up, kicked, redirected, or conference ended)."""
        conf = self.conferences.get(call.conference_sid or "")
        call.conference_sid = None
        left = self._left.pop(call.sid, None)
        if left is not None and continue_twiml:
            left.set()
        if conf is None:
            return
        participant = conf.participants.pop(call.sid, None)
        if participant is None:
            return
        was_connected = participant.status == "connected"
        participant.status = "complete" if was_connected else "failed"
        if was_connected:
            self._conference_event(conf, "leave", participant, Reason=reason)
        if conf.status == "completed":
            return
        if was_connected and participant.end_conference_on_exit:
            self.end_conference(conf, "participant-with-end-conference-on-exit-left", call.sid)
        elif not any(p.status == "connected" for p in conf.participants.values()) and (
            conf.status == "in-progress" or not conf.participants
        ):
            self.end_conference(conf, "last-participant-left", call.sid)

    def end_conference(self, conf: Conference, reason: str, ending_call_sid: str | None) -> None:
        if conf.status == "completed":
            return
        conf.status = "completed"
        conf.updated = utcnow()
        conf.reason_conference_ended = reason
        conf.call_sid_ending_conference = ending_call_sid
        extra = {"ReasonConferenceEnded": reason}
        if ending_call_sid:
            extra["CallSidEndingConference"] = ending_call_sid
        self._conference_event(conf, "end", None, **extra)
        for sid, participant in list(conf.participants.items()):
            call = self.calls[sid]
            if participant.status == "connected":
                self.leave_conference(call, "conference-ended")
            else:
                self.end_call(call, "canceled", "conference-ended")

    def update_participant(
        self, conf: Conference, participant: Participant, changes: Mapping[str, Any]
    ) -> None:
        if changes.get("call_sid_to_coach"):
            target = changes["call_sid_to_coach"]
            if target not in conf.participants:
                raise CarrierError(
                    400, 16021, f"CallSidToCoach {target} is not a participant of {conf.sid}"
                )
        coaching = changes.get("coaching", participant.coaching)
        coach_target = changes.get("call_sid_to_coach", participant.call_sid_to_coach)
        if "call_sid_to_coach" in changes and "coaching" not in changes and coach_target:
            coaching = True
        if coaching and not coach_target:
            raise CarrierError(400, 16022, "Coaching requires CallSidToCoach")
        before = (participant.muted, participant.hold, participant.coaching)
        for name, value in changes.items():
            setattr(participant, name, value)
        participant.coaching = coaching
        participant.call_sid_to_coach = coach_target if coaching else None
        participant.updated = utcnow()
        if participant.status != "connected":
            return
        if participant.muted != before[0]:
            self._conference_event(conf, "mute" if participant.muted else "unmute", participant)
        if participant.hold != before[1]:
            self._conference_event(conf, "hold" if participant.hold else "unhold", participant)
        if participant.coaching != before[2] or "call_sid_to_coach" in changes:
            self._conference_event(conf, "modify", participant)

    def start_participant(self, conf: Conference, call: Call) -> None:
        """A participant created through the API: ring it, join when answered, leave = hang up."""
        self.drive(call, self._participant_leg(conf, call))

    async def _participant_leg(self, conf: Conference, call: Call) -> None:
        outcome = await self.ring(call)
        if outcome != "answer" or conf.status == "completed":
            self.end_call(call, "canceled" if outcome == "answer" else outcome, "ring-" + outcome)
            return
        self.answer_call(call)
        self.join(conf, call)
        await self.wait_left(call)
        self.end_call(call, "completed", call.end_reason or "left-conference")

    # -- recordings -----------------------------------------------------------------------------

    def start_recording(
        self,
        call: Call,
        *,
        channels: str,
        track: str,
        status_callback: str | None,
        status_callback_method: str,
        status_callback_events: frozenset[str],
    ) -> Recording:
        if call.status != "in-progress":
            raise CarrierError(
                400, 21220, f"Call {call.sid} is {call.status}: only in-progress calls record"
            )
        recording = Recording(
            sid=new_sid("RE"),
            account_sid=self.account_sid,
            call_sid=call.sid,
            channels=2 if channels == "dual" else 1,
            track=track,
            conference_sid=call.conference_sid,
            status_callback=status_callback,
            status_callback_method=status_callback_method,
            status_callback_events=status_callback_events,
            running_since=self.now(),
        )
        recording.history.append("in-progress")
        self.recordings[recording.sid] = recording
        call.recording_sids.append(recording.sid)
        self._recording_event(recording, "in-progress")
        return recording

    def update_recording(
        self, recording: Recording, status: str, pause_behavior: str | None
    ) -> None:
        current = recording.status
        if current in ("stopped", "processing", "completed", "absent"):
            raise CarrierError(
                400, 21220, f"Recording {recording.sid} is {current} and cannot change"
            )
        if status not in ("paused", "in-progress", "stopped"):
            raise CarrierError(400, 21220, f"Recording status cannot be set to {status}")
        if status == current:
            return
        now = self.now()
        if status == "paused":
            recording.pause_behavior = pause_behavior or "silence"
            if recording.pause_behavior == "skip" and recording.running_since is not None:
                # `skip` leaves the paused stretch out of the file; `silence` keeps its length.
                recording.recorded += now - recording.running_since
                recording.running_since = None
            self._set_recording(recording, "paused", "paused")
        elif status == "in-progress":
            if recording.running_since is None:
                recording.running_since = now
            self._set_recording(recording, "in-progress", "resumed")
        else:
            self.stop_recording(recording)

    def _set_recording(self, recording: Recording, status: str, event: str) -> None:
        recording.status = status
        recording.updated = utcnow()
        recording.history.append(status)
        self._recording_event(recording, event)

    def stop_recording(self, recording: Recording) -> None:
        if recording.running_since is not None:
            recording.recorded += self.now() - recording.running_since
            recording.running_since = None
        self._set_recording(recording, "stopped", "stopped")
        self.spawn(self._process_recording(recording), f"recording-{recording.sid}")

    async def _process_recording(self, recording: Recording) -> None:
        # The media is "processed" a moment after stopping, as on Twilio.
        await self.sleep(0.5)
        self._set_recording(recording, "completed", "completed")

    def _recording_event(self, recording: Recording, event: str) -> None:
        wanted = recording.status_callback_events
        if not recording.status_callback or not ({event, recording.status} & wanted):
            return
        params = {
            "AccountSid": recording.account_sid,
            "CallSid": recording.call_sid,
            "RecordingSid": recording.sid,
            "RecordingUrl": recording.media_url(),
            "RecordingStatus": recording.status,
            "RecordingChannels": str(recording.channels),
            "RecordingSource": recording.source,
            "RecordingTrack": recording.track,
            "RecordingStartTime": recording.start_time.strftime("%a, %d %b %Y %H:%M:%S +0000"),
        }
        if recording.conference_sid:
            params["ConferenceSid"] = recording.conference_sid
        duration = recording.duration()
        if duration is not None:
            params["RecordingDuration"] = str(duration)
        if recording.error_code is not None:
            params["ErrorCode"] = str(recording.error_code)
        self.webhooks.enqueue(
            "recording-status",
            recording.status_callback,
            params,
            recording.status_callback_method,
        )


def _bool(value: bool) -> str:
    return "true" if value else "false"
