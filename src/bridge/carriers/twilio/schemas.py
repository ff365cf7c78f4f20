"""What each webhook carries, parsed and checked before the call service sees it.

Carrier webhooks are `application/x-www-form-urlencoded` forms; our own callback URLs add a
few query parameters (which call, which leg, which `<Dial>`). A missing or invalid field is a
`MalformedWebhook` naming it (400). Only fields the bridge uses are read: the carrier adds
new ones over time, and unknown fields are not errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from bridge.carriers.twilio.errors import MalformedWebhook
from bridge.text import ascii_digits

_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LEG = re.compile(r"[A-Za-z0-9_./-]{1,160}")

# Call progress (the `CallStatus` of status callbacks, voice and action requests).
FINAL_CALL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
CALL_STATUSES = frozenset({"queued", "initiated", "ringing", "in-progress"}) | FINAL_CALL_STATUSES
# How a <Dial> ended (its action request's `DialCallStatus`).
DIAL_STATUSES = frozenset({"completed", "answered", "busy", "no-answer", "failed", "canceled"})


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """The pairs of a urlencoded body, repeated keys kept (the signature covers them all)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedWebhook("the body is not UTF-8") from None
    try:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
    except UnicodeDecodeError:
        raise MalformedWebhook("the body is not UTF-8") from None
    except ValueError as exc:
        raise MalformedWebhook(f"the body is not a urlencoded form ({exc})") from None


@dataclass(frozen=True, slots=True)
class WebhookForm:
    """One signed request: its form fields (last value of a repeated key) and query."""

    fields: Mapping[str, str]
    query: Mapping[str, str]

    @classmethod
    def of(cls, pairs: Sequence[tuple[str, str]], query: str) -> WebhookForm:
        return cls(dict(pairs), dict(parse_qsl(query, keep_blank_values=True)))

    @property
    def call_sid(self) -> str | None:
        """For log lines of refused requests: the CallSid, if it looks like one."""
        value = self.fields.get("CallSid")
        return value if value and _SID.fullmatch(value) else None

    def required(self, name: str, pattern: re.Pattern[str] | None = None) -> str:
        value = self.fields.get(name)
        if not value:
            raise MalformedWebhook(f"missing field {name}", name)
        if pattern is not None and not pattern.fullmatch(value):
            raise MalformedWebhook(f"invalid field {name}: {value[:80]!r}", name)
        return value

    def optional(self, name: str, pattern: re.Pattern[str] | None = None) -> str | None:
        value = self.fields.get(name) or None
        if value is not None and pattern is not None and not pattern.fullmatch(value):
            raise MalformedWebhook(f"invalid field {name}: {value[:80]!r}", name)
        return value

    def one_of(self, name: str, allowed: frozenset[str], *, required: bool = True) -> str | None:
        value = self.required(name) if required else self.optional(name)
        if value is not None and value not in allowed:
            raise MalformedWebhook(
                f"invalid field {name}: {value[:40]!r} (one of {', '.join(sorted(allowed))})",
                name,
            )
        return value

    def integer(self, name: str) -> int | None:
        value = self.fields.get(name) or None
        if value is None:
            return None
        if not ascii_digits(value) or len(value) > 9:
            raise MalformedWebhook(f"invalid field {name}: {value[:20]!r}", name)
        return int(value)

    def param(self, name: str, pattern: re.Pattern[str] = _LEG) -> str:
        """A query parameter of one of our own callback URLs (required)."""
        value = self.query.get(name)
        if not value:
            raise MalformedWebhook(f"missing query parameter {name}", name)
        if not pattern.fullmatch(value):
            raise MalformedWebhook(f"invalid query parameter {name}: {value[:80]!r}", name)
        return value

    def sequence(self, name: str) -> int:
        value = self.param(name, re.compile(r"[0-9]{1,6}"))
        return int(value)


@dataclass(frozen=True, slots=True)
class VoiceRequest:
    """An inbound call (`POST /twilio/voice`)."""

    call_sid: str
    to: str
    caller: str | None
    account_sid: str | None

    @classmethod
    def parse(cls, form: WebhookForm) -> VoiceRequest:
        to = form.required("To")
        if len(to) > 256:
            raise MalformedWebhook("invalid field To: too long", "To")
        caller = form.optional("From")
        return cls(
            call_sid=form.required("CallSid", _SID),
            to=to,
            caller=caller[:256] if caller else None,
            account_sid=form.optional("AccountSid", _SID),
        )


@dataclass(frozen=True, slots=True)
class StatusCallback:
    """A call status callback (`POST /twilio/status`): of the caller's call (no query), or of
    one leg we dialled (`?call=<caller's CallSid>&leg=<leg id>`)."""

    call_sid: str
    status: str
    call_id: str | None  # the caller's CallSid, for a leg's or a supervisor's callback
    leg_id: str | None
    sequence: int | None
    monitor: str | None = None  # a supervisor's call into the conference (`?monitor=<user>`)

    @classmethod
    def parse(cls, form: WebhookForm) -> StatusCallback:
        call_sid = form.required("CallSid", _SID)
        leg_id = form.param("leg") if "leg" in form.query else None
        monitor = form.param("monitor") if "monitor" in form.query else None
        call_id = None
        if leg_id is not None or monitor is not None:
            call_id = form.query.get("call") or form.optional("ParentCallSid", _SID)
            if not call_id or not _SID.fullmatch(call_id):
                raise MalformedWebhook("missing query parameter call", "call")
        return cls(
            call_sid=call_sid,
            status=form.one_of("CallStatus", CALL_STATUSES) or "",
            call_id=call_id,
            leg_id=leg_id,
            sequence=form.integer("SequenceNumber"),
            monitor=monitor,
        )


@dataclass(frozen=True, slots=True)
class DialAction:
    """The end of one `<Dial>` (`POST /twilio/dial-action?call=..&dial=N&layer=..`)."""

    call_sid: str
    dial: int  # which <Dial> of the call this is (our sequence number)
    dial_status: str
    dial_call_sid: str | None  # the leg that answered, when one did
    call_status: str | None  # the caller's call: `completed` when the caller hung up

    @classmethod
    def parse(cls, form: WebhookForm) -> DialAction:
        call_sid = form.required("CallSid", _SID)
        if form.query.get("call") not in (None, call_sid):
            raise MalformedWebhook("query parameter call does not match CallSid", "call")
        return cls(
            call_sid=call_sid,
            dial=form.sequence("dial"),
            dial_status=form.one_of("DialCallStatus", DIAL_STATUSES) or "",
            dial_call_sid=form.optional("DialCallSid", _SID),
            call_status=form.one_of("CallStatus", CALL_STATUSES, required=False),
        )


@dataclass(frozen=True, slots=True)
class ConfirmRequest:
    """The forwarded callee answered (`POST /twilio/confirm?call=..&leg=..`): ask for a key;
    or, with `step=digits`, the key they pressed (`Digits`, empty when none)."""

    call_sid: str  # the leg's own CallSid
    call_id: str  # the caller's CallSid
    leg_id: str
    digits_step: bool
    digits: str

    @classmethod
    def parse(cls, form: WebhookForm) -> ConfirmRequest:
        step = form.query.get("step", "prompt")
        if step not in ("prompt", "digits"):
            raise MalformedWebhook(f"invalid query parameter step: {step[:20]!r}", "step")
        return cls(
            call_sid=form.required("CallSid", _SID),
            call_id=form.param("call", _SID),
            leg_id=form.param("leg"),
            digits_step=step == "digits",
            digits=(form.fields.get("Digits") or "")[:32],
        )


@dataclass(frozen=True, slots=True)
class VoicemailDone:
    """The `<Record>` of a voicemail finished (its `action`: `POST /twilio/voicemail`)."""

    call_sid: str
    recording_sid: str | None
    recording_url: str | None
    duration_seconds: int | None

    @classmethod
    def parse(cls, form: WebhookForm) -> VoicemailDone:
        return cls(
            call_sid=form.required("CallSid", _SID),
            recording_sid=form.optional("RecordingSid", _SID),
            recording_url=form.optional("RecordingUrl"),
            duration_seconds=form.integer("RecordingDuration"),
        )


RECORDING_STATUSES = frozenset(
    {"in-progress", "paused", "stopped", "processing", "completed", "absent", "failed"}
)


@dataclass(frozen=True, slots=True)
class RecordingCallback:
    """A recording status callback (`POST /twilio/recording`): of a voicemail `<Record>`, or
    with `?kind=call` of a call recording started through the Recordings API."""

    call_sid: str
    recording_sid: str
    status: str
    recording_url: str | None
    duration_seconds: int | None
    call_recording: bool = False

    @classmethod
    def parse(cls, form: WebhookForm) -> RecordingCallback:
        kind = form.query.get("kind", "voicemail")
        if kind not in ("voicemail", "call"):
            raise MalformedWebhook(f"invalid query parameter kind: {kind[:20]!r}", "kind")
        return cls(
            call_sid=form.required("CallSid", _SID),
            recording_sid=form.required("RecordingSid", _SID),
            status=form.one_of("RecordingStatus", RECORDING_STATUSES) or "",
            recording_url=form.optional("RecordingUrl"),
            duration_seconds=form.integer("RecordingDuration"),
            call_recording=kind == "call",
        )


# Conference status callback events (`StatusCallbackEvent`) the bridge acts on; the others
# (speaker, announcement, ...) are accepted and ignored.
CONFERENCE_EVENTS = frozenset(
    {
        "conference-start",
        "conference-end",
        "participant-join",
        "participant-leave",
        "participant-mute",
        "participant-unmute",
        "participant-hold",
        "participant-unhold",
        "participant-modify",
    }
)


@dataclass(frozen=True, slots=True)
class ConferenceCallback:
    """A conference status callback (`POST /twilio/conference?call=<the caller's CallSid>`)."""

    call_id: str  # the call the conference belongs to (its friendly name)
    conference_sid: str
    event: str
    call_sid: str | None  # the participant concerned (participant-* events)
    label: str | None
    muted: bool | None
    coaching: bool | None
    sequence: int | None

    @classmethod
    def parse(cls, form: WebhookForm) -> ConferenceCallback:
        call_id = form.query.get("call") or form.optional("FriendlyName", _SID)
        if not call_id or not _SID.fullmatch(call_id):
            raise MalformedWebhook("missing query parameter call", "call")
        event = form.required("StatusCallbackEvent")
        if len(event) > 64:
            raise MalformedWebhook(
                "invalid field StatusCallbackEvent: too long", "StatusCallbackEvent"
            )
        return cls(
            call_id=call_id,
            conference_sid=form.required("ConferenceSid", _SID),
            event=event,
            call_sid=form.optional("CallSid", _SID),
            label=(form.optional("ParticipantLabel") or "")[:128] or None,
            muted=_flag(form, "Muted"),
            coaching=_flag(form, "Coaching"),
            sequence=form.integer("SequenceNumber"),
        )


def _flag(form: WebhookForm, name: str) -> bool | None:
    value = form.fields.get(name)
    if not value:
        return None
    if value not in ("true", "false"):
        raise MalformedWebhook(f"invalid field {name}: {value[:20]!r}", name)
    return value == "true"
