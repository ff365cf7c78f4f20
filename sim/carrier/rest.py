"""The fake carrier's REST API: one aiohttp handler in front of the spec check and the network.

Every request goes through the same steps, in the order the real carrier would refuse it:
basic auth (401), the published description (404/405/400, each recorded as a `Violation`),
injected faults (5xx), then the operation's handler, found by the spec's `operationId`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from .models import Call, Conference, Participant, Recording
from .network import CarrierError, Network, split_events
from .spec import SpecError, TwilioSpec, Violation

log = logging.getLogger("sim.carrier.rest")

ERROR_DOCS = "https://www.twilio.com/docs/errors/"


@dataclass
class Fault:
    """Answer the next `remaining` matching requests with `status` instead of serving them."""

    remaining: int
    status: int = 503
    path: re.Pattern[str] | None = None
    method: str | None = None
    operation: str | None = None
    hits: int = 0

    def matches(self, method: str, path: str, operation_id: str) -> bool:
        return (
            self.remaining > 0
            and (self.method is None or self.method == method)
            and (self.operation is None or self.operation == operation_id)
            and (self.path is None or self.path.search(path) is not None)
        )


@dataclass
class RequestRecord:
    """One REST request the fake received, and how it answered."""

    method: str
    path: str
    operation_id: str | None
    params: list[tuple[str, str]]
    status: int = 0
    auth_user: str | None = None


class Form:
    """Form parameters with Twilio's value conventions (booleans as true/false)."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self.items = list(items)

    def get(self, name: str, default: str | None = None) -> str | None:
        return next((v for k, v in self.items if k == name), default)

    def getall(self, name: str) -> list[str]:
        return [v for k, v in self.items if k == name]

    def __contains__(self, name: str) -> bool:
        return any(k == name for k, _ in self.items)

    def bool(self, name: str, default: bool = False) -> bool:
        value = self.get(name)
        return default if value is None else value.lower() == "true"

    def int(self, name: str, default: int) -> int:
        value = self.get(name)
        return default if value is None else int(value)

    def as_dict(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for k, v in self.items:
            out.setdefault(k, []).append(v)
        return out


Handler = Callable[[dict[str, str], Form, Form, str], Awaitable[tuple[int, Any]]]


class RestApi:
    """The REST side of the fake carrier (see module docstring for the request pipeline)."""

    def __init__(
        self,
        *,
        spec: TwilioSpec,
        net: Network,
        account_sid: str,
        auth_token: str,
        api_keys: dict[str, str],
    ) -> None:
        self.spec = spec
        self.net = net
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.api_keys = api_keys
        self.violations: list[Violation] = []
        self.requests: list[RequestRecord] = []
        self.counts: Counter[str] = Counter()
        self.faults: list[Fault] = []
        self.unimplemented: list[str] = []
        self._handlers: dict[str, Handler] = {
            "CreateCall": self.create_call,
            "FetchCall": self.fetch_call,
            "UpdateCall": self.update_call,
            "DeleteCall": self.delete_call,
            "ListCall": self.list_calls,
            "FetchConference": self.fetch_conference,
            "UpdateConference": self.update_conference,
            "ListConference": self.list_conferences,
            "CreateParticipant": self.create_participant,
            "FetchParticipant": self.fetch_participant,
            "UpdateParticipant": self.update_participant,
            "DeleteParticipant": self.delete_participant,
            "ListParticipant": self.list_participants,
            "CreateCallRecording": self.create_recording,
            "FetchCallRecording": self.fetch_recording,
            "UpdateCallRecording": self.update_recording,
            "DeleteCallRecording": self.delete_recording,
            "ListCallRecording": self.list_recordings,
        }

    # -- pipeline -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        body = await request.read()
        content_type = request.headers.get("Content-Type")
        form_items: list[tuple[str, str]] = []
        if body:
            form_items = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        query_items = list(request.query.items())
        record = RequestRecord(method, path, None, form_items or query_items)
        self.requests.append(record)

        user = self._authenticate(request.headers.get("Authorization"))
        if user is None:
            record.status = 401
            response = _error(401, 20003, "Authenticate")
            response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
            return response
        record.auth_user = user

        try:
            op, args, bad = self.spec.check(method, path, query_items, form_items, content_type)
        except SpecError as exc:
            return self._refuse(record, exc.status, exc.violations)
        record.operation_id = op.operation_id
        self.counts[op.operation_id] += 1
        if bad:
            return self._refuse(record, 400, bad)
        if args.get("AccountSid") != self.account_sid:
            record.status = 404
            return _error(404, 20404, f"The requested resource {path} was not found")

        for fault in self.faults:
            if fault.matches(method, path, op.operation_id):
                fault.remaining -= 1
                fault.hits += 1
                record.status = fault.status
                return _error(fault.status, 20000 + fault.status, "Injected fault (fake carrier)")

        handler = self._handlers.get(op.operation_id)
        if handler is None:
            self.unimplemented.append(op.operation_id)
            record.status = 501
            return _error(501, 20501, f"The fake carrier does not implement {op.operation_id}")
        try:
            status, payload = await handler(args, Form(form_items), Form(query_items), path)
        except CarrierError as exc:
            record.status = exc.status
            return _error(exc.status, exc.code, exc.message)
        record.status = status
        if payload is None:
            return web.Response(status=status)
        return web.json_response(self._render(op.response_schema, payload), status=status)

    def _refuse(self, record: RequestRecord, status: int, bad: list[Violation]) -> web.Response:
        self.violations.extend(bad)
        for violation in bad:
            log.warning("out of spec: %s", violation)
        record.status = status
        code = {400: 20001, 404: 20404, 405: 20004}.get(status, 20001)
        return _error(status, code, "; ".join(v.message for v in bad))

    def _authenticate(self, header: str | None) -> str | None:
        """The user name of valid basic credentials (account sid or API key sid), else None."""
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if user == self.account_sid:
            expected: str | None = self.auth_token
        else:
            expected = self.api_keys.get(user)
        if expected is not None and hmac.compare_digest(password, expected):
            return user
        return None

    def _render(self, schema: Any, payload: dict[str, Any]) -> dict[str, Any]:
        """Exactly the properties the spec's response schema lists, null where unknown."""
        if not schema or "properties" not in schema:
            return payload
        out: dict[str, Any] = {}
        for name, prop in schema["properties"].items():
            value = payload.get(name)
            items = self.spec.resolve(prop).get("items") if prop.get("type") == "array" else None
            if items and isinstance(value, list):
                value = [self._render(items, v) if isinstance(v, dict) else v for v in value]
            out[name] = value
        return out

    def _page(
        self, path: str, key: str, items: list[dict[str, Any]], query: Form
    ) -> dict[str, Any]:
        size = query.int("PageSize", 50)
        number = query.int("Page", 0)
        chunk = items[number * size : (number + 1) * size]

        def uri(page: int) -> str:
            return f"{path}?{urlencode({'PageSize': size, 'Page': page})}"

        more = (number + 1) * size < len(items)
        return {
            key: chunk,
            "start": number * size,
            "end": number * size + max(0, len(chunk) - 1),
            "page": number,
            "page_size": size,
            "uri": uri(number),
            "first_page_uri": uri(0),
            "next_page_uri": uri(number + 1) if more else None,
            "previous_page_uri": uri(number - 1) if number > 0 else None,
        }

    # -- lookups --------------------------------------------------------------------------------

    def _call(self, sid: str, path: str) -> Call:
        call = self.net.calls.get(sid)
        if call is None:
            raise _not_found(path)
        return call

    def _conference(self, key: str, path: str) -> Conference:
        conf = self.net.conference(key)
        if conf is None:
            raise _not_found(path)
        return conf

    def _participant(self, conf: Conference, key: str, path: str) -> Participant:
        participant = self.net.participant(conf, key)
        if participant is None:
            raise _not_found(path)
        return participant

    def _recording(self, call: Call, sid: str, path: str) -> Recording:
        if sid == "Twilio.CURRENT":
            # Twilio's alias for the call's recording in progress (or paused).
            for rsid in reversed(call.recording_sids):
                if self.net.recordings[rsid].status in ("in-progress", "paused"):
                    return self.net.recordings[rsid]
            raise _not_found(path)
        recording = self.net.recordings.get(sid)
        if recording is None or recording.call_sid != call.sid:
            raise _not_found(path)
        return recording

    # -- calls ----------------------------------------------------------------------------------

    async def create_call(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        if not any(name in form for name in ("Url", "Twiml", "ApplicationSid")):
            raise CarrierError(400, 21205, "Url, Twiml or ApplicationSid is required")
        call = self.net.new_call(
            from_=form.get("From") or "",
            to=form.get("To") or "",
            direction="outbound-api",
            timeout=form.int("Timeout", 60),
            status_callback=form.get("StatusCallback"),
            status_callback_method=form.get("StatusCallbackMethod") or "POST",
            status_callback_events=split_events(form.getall("StatusCallbackEvent"), ["completed"]),
            params=form.as_dict(),
        )
        call.url = form.get("Url")
        call.method = form.get("Method") or "POST"
        call.twiml = form.get("Twiml")
        self.net.start_outbound(call)
        return 201, call.to_json()

    async def fetch_call(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        return 200, self._call(args["Sid"], path).to_json()

    async def update_call(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        call = self._call(args["Sid"], path)
        if "StatusCallback" in form:
            call.status_callback = form.get("StatusCallback")
            call.status_callback_method = form.get("StatusCallbackMethod") or "POST"
        status = form.get("Status")
        if status == "canceled":
            # Only a call that has not been answered can be cancelled; otherwise no effect.
            if call.status in ("queued", "ringing"):
                self.net.end_call(call, "canceled", "api-cancel")
        elif status == "completed":
            self.net.end_call(call, "completed", "api-hangup")
        elif "Url" in form or "Twiml" in form:
            url, twiml = form.get("Url"), form.get("Twiml")
            method = form.get("Method") or "POST"
            if call.direction != "inbound" and call.answered_at is None and not call.is_final:
                # Not answered yet: the new instructions run when it is.
                call.url, call.method, call.twiml = url, method, twiml
            else:
                self.net.redirect(call, url=url, method=method, twiml=twiml)
        return 200, call.to_json()

    async def delete_call(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        call = self._call(args["Sid"], path)
        if not call.is_final:
            raise CarrierError(400, 21220, f"Call {call.sid} is {call.status}: cannot delete")
        del self.net.calls[call.sid]
        return 204, None

    async def list_calls(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        filters = {
            "To": lambda c: c.to,
            "From": lambda c: c.from_,
            "Status": lambda c: c.status,
            "ParentCallSid": lambda c: c.parent_call_sid,
        }
        calls = [
            c
            for c in self.net.calls.values()
            if all(get(c) == query.get(name) for name, get in filters.items() if name in query)
        ]
        calls.sort(key=lambda c: c.created, reverse=True)
        return 200, self._page(path, "calls", [c.to_json() for c in calls], query)

    # -- conferences ----------------------------------------------------------------------------

    async def fetch_conference(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        return 200, self._conference(args["Sid"], path).to_json()

    async def update_conference(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        conf = self._conference(args["Sid"], path)
        if form.get("Status") == "completed":
            self.net.end_conference(conf, "conference-ended-via-api", None)
        return 200, conf.to_json()

    async def list_conferences(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        confs = [
            c
            for c in self.net.conferences.values()
            if query.get("FriendlyName") in (None, c.friendly_name)
            and query.get("Status") in (None, c.status)
        ]
        return 200, self._page(path, "conferences", [c.to_json() for c in confs], query)

    async def create_participant(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        key = args["ConferenceSid"]
        # Twilio takes the friendly name here too, creating the conference on first use.
        conf = self.net.conference(key, create=True)
        if conf is None:
            raise _not_found(path)
        if conf.status == "completed":
            raise CarrierError(400, 16009, f"Conference {conf.sid} is completed")
        label = form.get("Label")
        if label and self.net.participant(conf, label) is not None:
            raise CarrierError(400, 16025, f"Label {label!r} is already used in {conf.sid}")
        coach = form.get("CallSidToCoach")
        if coach and coach not in conf.participants:
            raise CarrierError(400, 16021, f"CallSidToCoach {coach} is not in {conf.sid}")
        if form.bool("Coaching") and not coach:
            raise CarrierError(400, 16022, "Coaching requires CallSidToCoach")
        call = self.net.new_call(
            from_=form.get("From") or "",
            to=form.get("To") or "",
            direction="outbound-api",
            timeout=form.int("Timeout", 60),
            status_callback=form.get("StatusCallback"),
            status_callback_method=form.get("StatusCallbackMethod") or "POST",
            status_callback_events=split_events(form.getall("StatusCallbackEvent"), ["completed"]),
            params=form.as_dict(),
        )
        participant = self.net.add_participant(
            conf,
            call,
            label=label,
            muted=form.bool("Muted"),
            coaching=form.bool("Coaching") or bool(coach),
            call_sid_to_coach=coach,
            start_conference_on_enter=form.bool("StartConferenceOnEnter", True),
            end_conference_on_exit=form.bool("EndConferenceOnExit"),
            early_media=form.bool("EarlyMedia", True),
            beep=form.get("Beep") or "true",
        )
        self.net.subscribe_conference(
            conf,
            form.get("ConferenceStatusCallback"),
            form.get("ConferenceStatusCallbackMethod") or "POST",
            form.getall("ConferenceStatusCallbackEvent"),
        )
        self.net.start_participant(conf, call)
        return 201, participant.to_json()

    async def fetch_participant(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        conf = self._conference(args["ConferenceSid"], path)
        return 200, self._participant(conf, args["CallSid"], path).to_json()

    async def update_participant(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        conf = self._conference(args["ConferenceSid"], path)
        participant = self._participant(conf, args["CallSid"], path)
        changes: dict[str, Any] = {}
        for param, attr in (
            ("Muted", "muted"),
            ("Hold", "hold"),
            ("Coaching", "coaching"),
            ("EndConferenceOnExit", "end_conference_on_exit"),
        ):
            if param in form:
                changes[attr] = form.bool(param)
        if "CallSidToCoach" in form:
            changes["call_sid_to_coach"] = form.get("CallSidToCoach")
        self.net.update_participant(conf, participant, changes)
        return 200, participant.to_json()

    async def delete_participant(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        conf = self._conference(args["ConferenceSid"], path)
        participant = self._participant(conf, args["CallSid"], path)
        call = self.net.calls[participant.call_sid]
        if participant.status == "connected":
            call.end_reason = "kicked"
            self.net.leave_conference(call, "kicked")
        else:
            self.net.end_call(call, "canceled", "kicked")
        return 204, None

    async def list_participants(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        conf = self._conference(args["ConferenceSid"], path)
        wanted = {
            attr: query.bool(param)
            for param, attr in (("Muted", "muted"), ("Hold", "hold"), ("Coaching", "coaching"))
            if param in query
        }
        items = [
            p.to_json()
            for p in conf.participants.values()
            if all(getattr(p, attr) == value for attr, value in wanted.items())
        ]
        return 200, self._page(path, "participants", items, query)

    # -- recordings -----------------------------------------------------------------------------

    async def create_recording(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        call = self._call(args["CallSid"], path)
        recording = self.net.start_recording(
            call,
            channels=form.get("RecordingChannels") or "mono",
            track=form.get("RecordingTrack") or "both",
            status_callback=form.get("RecordingStatusCallback"),
            status_callback_method=form.get("RecordingStatusCallbackMethod") or "POST",
            status_callback_events=split_events(
                form.getall("RecordingStatusCallbackEvent"), ["completed"]
            ),
        )
        return 201, recording.to_json()

    async def fetch_recording(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        call = self._call(args["CallSid"], path)
        return 200, self._recording(call, args["Sid"], path).to_json()

    async def update_recording(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        call = self._call(args["CallSid"], path)
        recording = self._recording(call, args["Sid"], path)
        self.net.update_recording(recording, form.get("Status") or "", form.get("PauseBehavior"))
        return 200, recording.to_json()

    async def delete_recording(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        call = self._call(args["CallSid"], path)
        recording = self._recording(call, args["Sid"], path)
        if recording.status in ("in-progress", "paused"):
            raise CarrierError(400, 21220, "Stop the recording before deleting it")
        del self.net.recordings[recording.sid]
        call.recording_sids.remove(recording.sid)
        return 204, None

    async def list_recordings(
        self, args: dict[str, str], form: Form, query: Form, path: str
    ) -> tuple[int, Any]:
        call = self._call(args["CallSid"], path)
        items = [self.net.recordings[sid].to_json() for sid in call.recording_sids]
        return 200, self._page(path, "recordings", items, query)


def _error(status: int, code: int, message: str) -> web.Response:
    """Twilio's error body: code, message, more_info, status."""
    return web.json_response(
        {"code": code, "message": message, "more_info": f"{ERROR_DOCS}{code}", "status": status},
        status=status,
    )


def _not_found(path: str) -> CarrierError:
    return CarrierError(404, 20404, f"The requested resource {path} was not found")
