"""In-memory resources of the fake carrier: calls, conferences, participants, recordings.

They hold what the simulation needs; `to_json` shapes them like Twilio's 2010 API payloads
(the property list itself comes from the spec's response schema, see `rest.render`).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

API_VERSION = "2010-04-01"
API_ORIGIN = "https://api.twilio.com"

FINAL_CALL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


def new_sid(prefix: str) -> str:
    """A Twilio-shaped sid: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc2822(moment: datetime | None) -> str | None:
    """Twilio's 2010 API writes dates as RFC 2822 ("Tue, 31 Aug 2010 20:36:28 +0000")."""
    return format_datetime(moment) if moment else None


@dataclass
class Call:
    sid: str
    account_sid: str
    from_: str
    to: str
    direction: str  # inbound | outbound-api | outbound-dial
    parent_call_sid: str | None = None
    status: str = "queued"
    created: datetime = field(default_factory=utcnow)
    updated: datetime = field(default_factory=utcnow)
    start_time: datetime | None = None
    end_time: datetime | None = None
    # Simulated seconds (loop time / time_scale) at answer and end, for durations.
    answered_at: float | None = None
    ended_at: float | None = None
    timeout: float = 60.0
    url: str | None = None
    method: str = "POST"
    twiml: str | None = None
    status_callback: str | None = None
    status_callback_method: str = "POST"
    status_callback_events: frozenset[str] = frozenset({"completed"})
    # Form parameters as the bridge sent them (CreateCall / CreateParticipant), for assertions.
    params: dict[str, list[str]] = field(default_factory=dict)
    conference_sid: str | None = None
    recording_sids: list[str] = field(default_factory=list)
    sequence: int = 0
    # TwiML documents this call executed (fetched from Url, given as Twiml, or redirects).
    twiml_log: list[str] = field(default_factory=list)
    # Why the call ended, from the carrier's point of view (caller-hangup, callee-hangup, api...).
    end_reason: str | None = None
    # What the far end does when TwiML asks it: keys pressed at a <Gather>, seconds of message
    # left at a <Record>. From the target policy for outbound legs, from the test for callers.
    digits: str | None = None
    message_seconds: float = 3.0
    # Set by the simulation: resolved with the ring outcome / when the call ends.
    decision: asyncio.Future[str] | None = field(default=None, repr=False)
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_CALL_STATUSES

    def uri(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.sid}.json"

    def duration(self) -> int | None:
        if self.answered_at is None or self.ended_at is None:
            return 0 if self.is_final else None
        return max(0, round(self.ended_at - self.answered_at))

    def to_json(self) -> dict[str, Any]:
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.sid}"
        duration = self.duration()
        return {
            "sid": self.sid,
            "date_created": rfc2822(self.created),
            "date_updated": rfc2822(self.updated),
            "parent_call_sid": self.parent_call_sid,
            "account_sid": self.account_sid,
            "to": self.to,
            "to_formatted": self.to,
            "from": self.from_,
            "from_formatted": self.from_,
            "status": self.status,
            "start_time": rfc2822(self.start_time),
            "end_time": rfc2822(self.end_time),
            "duration": None if duration is None else str(duration),
            "price_unit": "USD",
            "direction": self.direction,
            "api_version": API_VERSION,
            "queue_time": "0",
            "uri": self.uri(),
            "subresource_uris": {
                name: f"{base}/{name.title().replace('_', '')}.json"
                for name in (
                    "notifications",
                    "recordings",
                    "payments",
                    "events",
                    "siprec",
                    "streams",
                    "transcriptions",
                    "user_defined_message_subscriptions",
                    "user_defined_messages",
                )
            },
        }


@dataclass
class Participant:
    call_sid: str
    conference_sid: str
    account_sid: str
    label: str | None = None
    status: str = "queued"  # queued | connecting | ringing | connected | complete | failed
    muted: bool = False
    hold: bool = False
    coaching: bool = False
    call_sid_to_coach: str | None = None
    start_conference_on_enter: bool = True
    end_conference_on_exit: bool = False
    early_media: bool = True
    beep: str = "true"
    created: datetime = field(default_factory=utcnow)
    updated: datetime = field(default_factory=utcnow)

    def uri(self) -> str:
        return (
            f"/{API_VERSION}/Accounts/{self.account_sid}/Conferences/{self.conference_sid}"
            f"/Participants/{self.call_sid}.json"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "account_sid": self.account_sid,
            "call_sid": self.call_sid,
            "label": self.label,
            "call_sid_to_coach": self.call_sid_to_coach,
            "coaching": self.coaching,
            "conference_sid": self.conference_sid,
            "date_created": rfc2822(self.created),
            "date_updated": rfc2822(self.updated),
            "end_conference_on_exit": self.end_conference_on_exit,
            "muted": self.muted,
            "hold": self.hold,
            "start_conference_on_enter": self.start_conference_on_enter,
            "status": self.status,
            "queue_time": "0",
            "uri": self.uri(),
        }


@dataclass
class Conference:
    sid: str
    account_sid: str
    friendly_name: str
    status: str = "init"  # init | in-progress | completed
    created: datetime = field(default_factory=utcnow)
    updated: datetime = field(default_factory=utcnow)
    region: str = "us1"
    reason_conference_ended: str | None = None
    call_sid_ending_conference: str | None = None
    status_callback: str | None = None
    status_callback_method: str = "POST"
    status_callback_events: frozenset[str] = frozenset({"start", "end"})
    sequence: int = 0
    # Keyed by call sid; a participant stays here while queued, ringing or connected.
    participants: dict[str, Participant] = field(default_factory=dict)

    def uri(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Conferences/{self.sid}.json"

    def to_json(self) -> dict[str, Any]:
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Conferences/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "date_created": rfc2822(self.created),
            "date_updated": rfc2822(self.updated),
            "api_version": API_VERSION,
            "friendly_name": self.friendly_name,
            "region": self.region,
            "sid": self.sid,
            "status": self.status,
            "uri": self.uri(),
            "subresource_uris": {
                "participants": f"{base}/Participants.json",
                "recordings": f"{base}/Recordings.json",
            },
            "reason_conference_ended": self.reason_conference_ended,
            "call_sid_ending_conference": self.call_sid_ending_conference,
        }


@dataclass
class Recording:
    sid: str
    account_sid: str
    call_sid: str
    status: str = "in-progress"  # in-progress | paused | stopped | processing | completed | absent
    channels: int = 1
    track: str = "both"
    source: str = "StartCallRecordingAPI"
    conference_sid: str | None = None
    pause_behavior: str | None = None  # as last given with Status=paused
    status_callback: str | None = None
    status_callback_method: str = "POST"
    status_callback_events: frozenset[str] = frozenset({"completed"})
    created: datetime = field(default_factory=utcnow)
    updated: datetime = field(default_factory=utcnow)
    start_time: datetime = field(default_factory=utcnow)
    # Simulated seconds recorded so far, and since when the current stretch runs (or None).
    recorded: float = 0.0
    running_since: float | None = None
    # Every status the recording went through, in order, for assertions.
    history: list[str] = field(default_factory=list)
    error_code: int | None = None

    def uri(self) -> str:
        return (
            f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.call_sid}"
            f"/Recordings/{self.sid}.json"
        )

    def media_url(self) -> str:
        return f"{API_ORIGIN}/{API_VERSION}/Accounts/{self.account_sid}/Recordings/{self.sid}"

    def duration(self) -> int | None:
        if self.status in ("completed", "absent"):
            return round(self.recorded)
        return None

    def to_json(self) -> dict[str, Any]:
        duration = self.duration()
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "call_sid": self.call_sid,
            "conference_sid": self.conference_sid,
            "date_created": rfc2822(self.created),
            "date_updated": rfc2822(self.updated),
            "start_time": rfc2822(self.start_time),
            "duration": None if duration is None else str(duration),
            "sid": self.sid,
            "price": None,
            "uri": self.uri(),
            "encryption_details": None,
            "price_unit": "USD",
            "status": self.status,
            "channels": self.channels,
            "source": self.source,
            "error_code": self.error_code,
            "track": self.track,
        }
