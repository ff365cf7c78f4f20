"""The fake carrier (sim/carrier), driven the way the bridge will drive it: the real `twilio`
REST client with its async HTTP client, and a stand-in bridge that receives signed webhooks.

Every test ends with `fake.assert_no_violations()` (in the fixture), so a request the spec does
not describe fails the test; the tests that send bad requests on purpose check the violations
they caused and clear them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web
from sim.carrier import FakeCarrier, answer, busy, fail, no_answer
from sim.carrier.spec import SPEC_PATH, load_spec
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

REPO = Path(__file__).resolve().parents[2]
PUBLIC = "https://bridge.example.test"  # what the bridge believes its URL is ([http] public_url)
TOKEN = "fake-carrier-test-token"
API_KEY, API_SECRET = "SK" + "5" * 32, "api-key-secret"


# -- a stand-in bridge: records signed webhooks, answers with canned TwiML ---------------------


@dataclass
class Received:
    path: str
    form: dict[str, str]
    signature: str | None
    valid: bool


@dataclass
class BridgeStub:
    url: str = ""
    requests: list[Received] = field(default_factory=list)
    # path -> TwiML text, or a function of the form fields returning it.
    routes: dict[str, str | Callable[[dict[str, str]], str]] = field(default_factory=dict)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl((await request.read()).decode(), keep_blank_values=True))
        signature = request.headers.get("X-Twilio-Signature")
        # The carrier signs the *public* URL; validate exactly as the bridge will.
        valid = RequestValidator(TOKEN).validate(PUBLIC + request.path_qs, form, signature or "")
        self.requests.append(Received(request.path, form, signature, bool(valid)))
        route = self.routes.get(request.path)
        if route is None:
            return web.Response(status=204)
        text = route(form) if callable(route) else route
        return web.Response(text=text, content_type="application/xml")


@pytest.fixture
async def bridge_stub() -> AsyncIterator[BridgeStub]:
    stub = BridgeStub()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stub.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stub.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield stub
    await runner.cleanup()
    assert all(r.valid for r in stub.requests), "a webhook failed signature validation"


@pytest.fixture
async def fake(bridge_stub: BridgeStub) -> AsyncIterator[FakeCarrier]:
    carrier = FakeCarrier(
        auth_token=TOKEN,
        api_keys={API_KEY: API_SECRET},
        bridge_url=bridge_stub.url,
        public_url=PUBLIC,
    )
    async with carrier:
        yield carrier
        # Any request outside Twilio's published description fails the test.
        carrier.assert_no_violations()


@pytest.fixture
async def client(fake: FakeCarrier) -> AsyncIterator[Client]:
    http = AsyncTwilioHttpClient()
    twilio = Client(fake.account_sid, TOKEN, http_client=http)
    # Point the SDK's 2010 API domain at the fake (what `[twilio] api_base` will do).
    twilio.api.base_url = fake.url
    yield twilio
    await http.close()


def cb(path: str) -> str:
    """A callback URL as the bridge would publish it."""
    return PUBLIC + path


CONFERENCE_TWIML = "<Response><Dial><Conference>{}</Conference></Dial></Response>"


async def live_call(fake: FakeCarrier, client: Client, room: str = "room") -> Any:
    """An answered REST call sitting in a conference, to hang things off."""
    call = await client.calls.create_async(
        to="client:caller", from_="+15550100", twiml=CONFERENCE_TWIML.format(room)
    )
    await fake.wait_for(lambda: fake.calls[call.sid].status == "in-progress")
    return call


# -- REST: calls ---------------------------------------------------------------------------------


async def test_create_fetch_list_and_hang_up_a_call(
    fake: FakeCarrier, client: Client, bridge_stub: BridgeStub
) -> None:
    call = await client.calls.create_async(
        to="client:alice",
        from_="+15550100",
        twiml="<Response><Pause length='600'/></Response>",
        status_callback=cb("/twilio/status"),
        status_callback_event=["initiated", "ringing", "answered", "completed"],
        timeout=20,
    )
    assert call.sid.startswith("CA") and len(call.sid) == 34
    assert call.status == "queued" and call.direction == "outbound-api"
    assert call.uri == f"/2010-04-01/Accounts/{fake.account_sid}/Calls/{call.sid}.json"
    assert call.date_created is not None  # RFC 2822 parsed by the SDK

    await fake.wait_for(lambda: fake.calls[call.sid].status == "in-progress")
    fetched = await client.calls(call.sid).fetch_async()
    assert fetched.status == "in-progress" and fetched.start_time is not None
    listed = await client.calls.list_async(to="client:alice")
    assert [c.sid for c in listed] == [call.sid]
    assert await client.calls.list_async(to="client:nobody") == []

    ended = await client.calls(call.sid).update_async(status="completed")
    assert ended.status == "completed" and ended.end_time is not None
    await fake.drain()
    events = [(r.form["StatusCallbackEvent"], r.form["CallStatus"]) for r in bridge_stub.requests]
    assert events == [
        ("initiated", "initiated"),
        ("ringing", "ringing"),
        ("answered", "in-progress"),
        ("completed", "completed"),
    ]
    assert {r.path for r in bridge_stub.requests} == {"/twilio/status"}
    assert [r.form["SequenceNumber"] for r in bridge_stub.requests] == ["0", "1", "2", "3"]
    assert fake.counts["CreateCall"] == 1 and fake.counts["UpdateCall"] == 1


async def test_unknown_sid_is_a_404_in_twilio_error_shape(
    fake: FakeCarrier, client: Client
) -> None:
    missing = "CA" + "f" * 32
    with pytest.raises(TwilioRestException) as caught:
        await client.calls(missing).fetch_async()
    assert caught.value.status == 404 and caught.value.code == 20404

    response = await client.request_async(
        "GET", f"{fake.url}/2010-04-01/Accounts/{fake.account_sid}/Calls/{missing}.json"
    )
    body = json.loads(response.text)
    assert set(body) == {"code", "message", "more_info", "status"}
    assert body["status"] == 404 and missing in body["message"]


async def test_basic_auth_takes_the_auth_token_or_an_api_key(fake: FakeCarrier) -> None:
    http = AsyncTwilioHttpClient()
    try:
        wrong = Client(fake.account_sid, "not-the-token", http_client=http)
        wrong.api.base_url = fake.url
        with pytest.raises(TwilioRestException) as caught:
            await wrong.calls("CA" + "0" * 32).fetch_async()
        assert caught.value.status == 401 and caught.value.code == 20003

        keyed = Client(API_KEY, API_SECRET, fake.account_sid, http_client=http)
        keyed.api.base_url = fake.url
        assert await keyed.calls.list_async() == []
    finally:
        await http.close()
    assert [r.status for r in fake.requests] == [401, 200]
    assert fake.requests[1].auth_user == API_KEY


# -- REST: conferences and participants ----------------------------------------------------------


async def test_participant_with_label_early_media_timeout_then_muted_and_coaching(
    fake: FakeCarrier, client: Client, bridge_stub: BridgeStub
) -> None:
    agent = await live_call(fake, client, "support-42")
    # The conference's friendly name stands in for its sid when adding a participant.
    supervisor = await client.conferences("support-42").participants.create_async(
        from_="+15550100",
        to="client:sam",
        label="sam",
        early_media=True,
        timeout=20,
        conference_status_callback=cb("/twilio/conference"),
        conference_status_callback_event=["join", "leave", "mute", "modify"],
    )
    conf = fake.conference("support-42")
    assert conf is not None and supervisor.conference_sid == conf.sid
    assert supervisor.label == "sam" and supervisor.status == "queued"
    sent = fake.calls[supervisor.call_sid].params
    assert sent["EarlyMedia"] == ["true"] and sent["Timeout"] == ["20"] and sent["Label"] == ["sam"]

    await fake.wait_for(lambda: conf.participants[supervisor.call_sid].status == "connected")
    listen = (
        await client.conferences(conf.sid)
        .participants(supervisor.call_sid)
        .update_async(muted=True)
    )
    assert listen.muted is True
    # Whisper: coach the agent's leg; the label works in place of the call sid.
    whisper = (
        await client.conferences(conf.sid)
        .participants("sam")
        .update_async(muted=False, coaching=True, call_sid_to_coach=agent.sid)
    )
    assert whisper.coaching is True and whisper.call_sid_to_coach == agent.sid
    fetched = await client.conferences(conf.sid).participants("sam").fetch_async()
    assert (fetched.muted, fetched.coaching) == (False, True)
    listed = await client.conferences(conf.sid).participants.list_async(coaching=True)
    assert [p.call_sid for p in listed] == [supervisor.call_sid]

    assert await client.conferences(conf.sid).participants("sam").delete_async() is True
    with pytest.raises(TwilioRestException) as caught:
        await client.conferences(conf.sid).participants("sam").fetch_async()
    assert caught.value.status == 404
    await fake.wait_for(lambda: fake.calls[supervisor.call_sid].status == "completed")

    await fake.drain()
    events = [r.form["StatusCallbackEvent"] for r in bridge_stub.at("/twilio/conference")]
    assert events == [
        "participant-join",
        "participant-mute",
        "participant-unmute",
        "participant-modify",
        "participant-leave",
    ]
    modify = bridge_stub.at("/twilio/conference")[3].form
    assert modify["Coaching"] == "true" and modify["ParticipantLabel"] == "sam"
    assert modify["ConferenceSid"] == conf.sid and modify["FriendlyName"] == "support-42"


async def test_coaching_someone_not_in_the_conference_is_refused(
    fake: FakeCarrier, client: Client
) -> None:
    await live_call(fake, client, "room-c")
    stranger = "CA" + "7" * 32
    with pytest.raises(TwilioRestException) as caught:
        await client.conferences("room-c").participants.create_async(
            from_="+15550100", to="client:sam", coaching=True, call_sid_to_coach=stranger
        )
    assert caught.value.status == 400 and stranger in caught.value.msg


async def test_ending_the_conference_hangs_up_api_participants(
    fake: FakeCarrier, client: Client
) -> None:
    caller = await live_call(fake, client, "room-e")
    leg = await client.conferences("room-e").participants.create_async(
        from_="+15550100", to="client:bob"
    )
    conf = fake.conference("room-e")
    assert conf is not None
    await fake.wait_for(lambda: conf.participants[leg.call_sid].status == "connected")
    updated = await client.conferences(conf.sid).update_async(status="completed")
    assert updated.status == "completed"
    assert updated.reason_conference_ended == "conference-ended-via-api"
    await fake.wait_for(lambda: fake.calls[leg.call_sid].status == "completed")
    # The REST call's TwiML ran out when it left the conference: Twilio hangs it up.
    await fake.wait_for(lambda: fake.calls[caller.sid].status == "completed")


# -- REST: recordings ----------------------------------------------------------------------------


async def test_recording_start_pause_skip_resume_stop(
    fake: FakeCarrier, client: Client, bridge_stub: BridgeStub
) -> None:
    call = await live_call(fake, client)
    recordings = client.calls(call.sid).recordings
    started = await recordings.create_async(
        recording_channels="dual",
        recording_status_callback=cb("/twilio/recording"),
        recording_status_callback_event=["in-progress", "completed"],
    )
    assert started.sid.startswith("RE") and started.status == "in-progress"
    assert started.channels == 2 and started.source == "StartCallRecordingAPI"

    paused = await recordings(started.sid).update_async(status="paused", pause_behavior="skip")
    assert paused.status == "paused"
    assert fake.recordings[started.sid].pause_behavior == "skip"
    # Twilio.CURRENT names the call's recording in progress.
    resumed = await recordings("Twilio.CURRENT").update_async(status="in-progress")
    assert resumed.sid == started.sid and resumed.status == "in-progress"
    stopped = await recordings(started.sid).update_async(status="stopped")
    assert stopped.status == "stopped"

    await fake.wait_for(lambda: fake.recordings[started.sid].status == "completed")
    assert fake.recordings[started.sid].history == [
        "in-progress",
        "paused",
        "in-progress",
        "stopped",
        "completed",
    ]
    fetched = await recordings(started.sid).fetch_async()
    assert fetched.status == "completed" and fetched.duration is not None
    assert [r.sid for r in await recordings.list_async()] == [started.sid]

    await fake.drain()
    statuses = [r.form["RecordingStatus"] for r in bridge_stub.at("/twilio/recording")]
    # Subscribed to in-progress and completed: start and resume report in-progress.
    assert statuses == ["in-progress", "in-progress", "completed"]
    last = bridge_stub.at("/twilio/recording")[-1].form
    assert last["RecordingSid"] == started.sid and last["CallSid"] == call.sid
    assert "RecordingDuration" in last and last["RecordingChannels"] == "2"

    with pytest.raises(TwilioRestException) as caught:
        await recordings(started.sid).update_async(status="paused")
    assert caught.value.status == 400  # a completed recording cannot change


async def test_recording_a_call_that_is_not_answered_is_refused(
    fake: FakeCarrier, client: Client
) -> None:
    fake.set_target("client:late", no_answer())
    call = await client.calls.create_async(to="client:late", from_="+15550100", twiml="<Response/>")
    with pytest.raises(TwilioRestException) as caught:
        await client.calls(call.sid).recordings.create_async()
    assert caught.value.status == 400


# -- the published description -------------------------------------------------------------------


async def test_a_misspelled_parameter_is_refused_and_recorded(
    fake: FakeCarrier, client: Client
) -> None:
    await live_call(fake, client, "room-m")
    conf = fake.conference("room-m")
    assert conf is not None
    call_sid = next(iter(conf.participants))
    uri = f"/Accounts/{fake.account_sid}/Conferences/{conf.sid}/Participants/{call_sid}.json"
    with pytest.raises(TwilioRestException) as caught:
        await client.api.v2010.update_async("POST", uri, data={"Mutedd": "true"})
    assert caught.value.status == 400 and "Mutedd" in caught.value.msg
    assert "Muted" in caught.value.msg  # the close match is suggested

    assert [(v.operation_id, v.parameter) for v in fake.violations] == [
        ("UpdateParticipant", "Mutedd")
    ]
    assert conf.participants[call_sid].muted is False  # refused before any effect
    fake.violations.clear()


async def test_values_outside_an_enum_are_refused_and_recorded(
    fake: FakeCarrier, client: Client
) -> None:
    call = await live_call(fake, client)
    recording = await client.calls(call.sid).recordings.create_async()

    # A formal enum of the spec (call_recording_enum_status).
    with pytest.raises(TwilioRestException) as caught:
        await client.calls(call.sid).recordings(recording.sid).update_async(status="pause")
    assert caught.value.status == 400 and "Status" in caught.value.msg
    # Values only the description lists ("Can be: `skip` or `silence`").
    with pytest.raises(TwilioRestException) as caught:
        await (
            client.calls(call.sid)
            .recordings(recording.sid)
            .update_async(status="paused", pause_behavior="skp")
        )
    assert "PauseBehavior" in caught.value.msg
    # call_enum_update_status takes canceled|completed only.
    with pytest.raises(TwilioRestException):
        await client.calls(call.sid).update_async(status="busy")
    # A list value is checked item by item.
    with pytest.raises(TwilioRestException):
        await client.calls.create_async(
            to="client:x", from_="+1555", twiml="<Response/>", status_callback_event=["rung"]
        )

    assert [v.parameter for v in fake.violations] == [
        "Status",
        "PauseBehavior",
        "Status",
        "StatusCallbackEvent",
    ]
    assert fake.recordings[recording.sid].status == "in-progress"
    assert fake.calls[call.sid].status == "in-progress"
    fake.violations.clear()


async def test_paths_methods_and_required_parameters_come_from_the_spec(
    fake: FakeCarrier, client: Client
) -> None:
    base = f"{fake.url}/2010-04-01/Accounts/{fake.account_sid}"
    unknown_path = await client.request_async("GET", f"{base}/Callz.json")
    wrong_method = await client.request_async("DELETE", f"{base}/Calls.json")
    missing_to = await client.request_async("POST", f"{base}/Calls.json", data={"From": "+1555"})
    # Only CreateParticipant accepts a friendly name; the other participant paths want a CF sid.
    by_name = await client.request_async(
        "POST", f"{base}/Conferences/my-room/Participants/{'CA' + '1' * 32}.json", data={}
    )
    assert [r.status_code for r in (unknown_path, wrong_method, missing_to, by_name)] == [
        404,
        405,
        400,
        400,
    ]
    messages = [v.message for v in fake.violations]
    assert "path matches no path of the spec" in messages[0]
    assert "DELETE is not described" in messages[1]
    assert messages[2] == "required form parameter 'To' is missing"
    assert "ConferenceSid='my-room'" in messages[3]
    fake.violations.clear()


def test_the_checker_is_built_from_the_spec_not_by_hand() -> None:
    spec = load_spec(SPEC_PATH)
    assert SPEC_PATH.parent.name == "twilio" and not SPEC_PATH.is_relative_to(REPO)
    create = spec.operation("CreateParticipant")
    assert {"Label", "EarlyMedia", "Timeout", "Coaching", "CallSidToCoach"} <= set(
        create.form_params
    )
    assert create.required_form == {"From", "To"} and create.success_status == 201
    assert spec.operation("UpdateCallRecording").required_form == {"Status"}
    op, _args, bad = spec.check(
        "POST",
        f"/2010-04-01/Accounts/AC{'0' * 32}/Calls.json",
        [],
        [("To", "+1"), ("From", "+2"), ("Url", "http://x/y"), ("StatusCallbackEvent", "a b")],
        "application/x-www-form-urlencoded",
    )
    # Space-separated lists are checked per item, as Twilio reads them.
    assert op.operation_id == "CreateCall" and [v.parameter for v in bad] == ["StatusCallbackEvent"]


# -- carrier -> bridge: webhooks -----------------------------------------------------------------


async def test_a_signed_voice_webhook_and_its_twiml(
    fake: FakeCarrier, bridge_stub: BridgeStub
) -> None:
    bridge_stub.routes["/twilio/voice"] = (
        '<?xml version="1.0" encoding="UTF-8"?><Response>'
        '<Dial timeout="20" answerOnBridge="true" action="/twilio/dial-action">'
        "<Client>ana</Client><Number>+15550003001</Number></Dial></Response>"
    )
    inbound = await fake.place_inbound_call("+15551234567", "+15550100")
    assert inbound.status == 200
    root = inbound.xml
    assert root is not None and [child.tag for child in root] == ["Dial"]
    dial = root[0]
    assert dial.get("timeout") == "20" and [n.tag for n in dial] == ["Client", "Number"]

    [request] = bridge_stub.at("/twilio/voice")
    assert request.form["CallSid"] == inbound.sid and request.form["AccountSid"] == fake.account_sid
    assert request.form["CallStatus"] == "ringing" and request.form["Direction"] == "inbound"
    assert request.form["From"] == "+15551234567" and request.form["To"] == "+15550100"
    assert request.form["ApiVersion"] == "2010-04-01"
    # Signed over the public URL, as twilio's RequestValidator checks it.
    validator = RequestValidator(TOKEN)
    assert validator.validate(PUBLIC + "/twilio/voice", request.form, request.signature)
    assert not validator.validate(
        bridge_stub.url + "/twilio/voice", request.form, request.signature
    )
    tampered = {**request.form, "From": "+15550000000"}
    assert not validator.validate(PUBLIC + "/twilio/voice", tampered, request.signature)


async def test_callbacks_delivered_twice_and_out_of_order(
    fake: FakeCarrier, client: Client, bridge_stub: BridgeStub
) -> None:
    fake.callback_repeat = 2  # as if every callback were retried
    fake.hold_callbacks()
    call = await client.calls.create_async(
        to="client:ana",
        from_="+15550100",
        twiml="<Response><Hangup/></Response>",
        status_callback=cb("/twilio/status"),
        status_callback_event=["initiated", "ringing", "answered", "completed"],
    )
    await fake.wait_for(lambda: fake.calls[call.sid].status == "completed")
    released = fake.release_callbacks("reverse")
    assert [d.event for d in released] == ["completed", "answered", "ringing", "initiated"]
    await fake.drain()
    received = [r.form["StatusCallbackEvent"] for r in bridge_stub.at("/twilio/status")]
    assert received == [
        "completed",
        "completed",
        "answered",
        "answered",
        "ringing",
        "ringing",
        "initiated",
        "initiated",
    ]
    assert all(d.statuses == [204, 204] for d in released)


# -- faults --------------------------------------------------------------------------------------


async def test_injected_503s_then_recovery(fake: FakeCarrier, client: Client) -> None:
    await live_call(fake, client, "room-f")
    fault = fake.inject_fault(2, 503, operation="CreateParticipant")
    for _ in range(2):
        with pytest.raises(TwilioRestException) as caught:
            await client.conferences("room-f").participants.create_async(
                from_="+15550100", to="client:eve"
            )
        assert caught.value.status == 503
    leg = await client.conferences("room-f").participants.create_async(
        from_="+15550100", to="client:eve"
    )
    assert leg.status == "queued"
    assert fault.hits == 2 and fault.remaining == 0
    assert fake.counts["CreateParticipant"] == 3
    assert [r.status for r in fake.requests if r.operation_id == "CreateParticipant"] == [
        503,
        503,
        201,
    ]
    # Only one participant was created: the faulted requests had no effect.
    conf = fake.conference("room-f")
    assert conf is not None and len(conf.participants) == 2

    by_path = fake.inject_fault(1, 500, path=r"/Calls\.json$", method="GET")
    # The SDK's list calls raise TwilioException (not ...RestException) with the response.
    with pytest.raises(TwilioException) as failed:
        await client.calls.list_async()
    assert failed.value.args[1].status_code == 500 and by_path.hits == 1
    assert len(await client.calls.list_async()) == 2


# -- per-target behaviour ------------------------------------------------------------------------


async def test_targets_answer_stay_silent_are_busy_or_fail(
    fake: FakeCarrier, client: Client
) -> None:
    fake.set_target("client:quick", answer(after=2))
    fake.set_target("client:away", no_answer())
    fake.set_target("+15550001111", busy())
    fake.set_target("sip:desk@pbx.example.test", fail())
    hold = "<Response><Pause length='600'/></Response>"
    sids = {}
    started = time.monotonic()
    for to in ("client:quick", "client:away", "+15550001111", "sip:desk@pbx.example.test"):
        call = await client.calls.create_async(to=to, from_="+15550100", twiml=hold, timeout=10)
        sids[to] = call.sid
    await fake.wait_for(
        lambda: all(fake.calls[s].status not in ("queued", "ringing") for s in sids.values())
    )
    assert {to: fake.calls[s].status for to, s in sids.items()} == {
        "client:quick": "in-progress",
        "client:away": "no-answer",  # after its 10 s Timeout, i.e. 0.1 s at time_scale 0.01
        "+15550001111": "busy",
        "sip:desk@pbx.example.test": "failed",
    }
    assert time.monotonic() - started < 1.0

    # A participant nobody answers leaves the conference when its call ends.
    await live_call(fake, client, "room-t")
    leg = await client.conferences("room-t").participants.create_async(
        from_="+15550100", to="client:away", timeout=5
    )
    await fake.wait_for(lambda: fake.calls[leg.call_sid].status == "no-answer")
    conf = fake.conference("room-t")
    assert conf is not None and leg.call_sid not in conf.participants


async def test_a_ringing_leg_can_be_answered_or_cancelled_by_hand(
    fake: FakeCarrier, client: Client
) -> None:
    fake.set_target("client:a", no_answer())
    fake.set_target("client:b", no_answer())
    hold = "<Response><Pause length='600'/></Response>"
    a = await client.calls.create_async(to="client:a", from_="+1555", twiml=hold, timeout=600)
    b = await client.calls.create_async(to="client:b", from_="+1555", twiml=hold, timeout=600)
    await fake.wait_for(lambda: fake.calls[a.sid].status == fake.calls[b.sid].status == "ringing")
    fake.answer(a.sid)  # first to answer wins ...
    await fake.wait_for(lambda: fake.calls[a.sid].status == "in-progress")
    cancelled = await client.calls(b.sid).update_async(status="canceled")  # ... the other ends
    assert cancelled.status == "canceled"


# -- TwiML follow-through ------------------------------------------------------------------------


async def test_dial_rings_each_target_and_reports_to_the_action_url(
    fake: FakeCarrier, bridge_stub: BridgeStub
) -> None:
    fake.set_target("client:ana", no_answer())
    fake.set_target("client:ben", answer(after=1, hangup_after=2))
    bridge_stub.routes["/twilio/voice"] = (
        '<Response><Dial timeout="20" answerOnBridge="true" action="/twilio/dial-action">'
        "<Client>ana</Client><Client>ben</Client></Dial></Response>"
    )
    bridge_stub.routes["/twilio/dial-action"] = "<Response><Hangup/></Response>"
    inbound = await fake.place_inbound_call("+15551234567", "+15550100", follow=True)
    call = await inbound.wait_ended()
    assert call.status == "completed"

    [action] = bridge_stub.at("/twilio/dial-action")
    [ana] = fake.calls_to("client:ana")
    [ben] = fake.calls_to("client:ben")
    assert action.form["DialCallStatus"] == "completed" and action.form["DialCallSid"] == ben.sid
    assert ana.status == "canceled" and ana.end_reason == "answered-elsewhere"
    assert ben.parent_call_sid == inbound.sid and ben.direction == "outbound-dial"
    await fake.drain()
    [final] = bridge_stub.at("/twilio/status")  # the number's status callback
    assert final.form["CallSid"] == inbound.sid and final.form["CallStatus"] == "completed"


async def test_no_answer_moves_to_voicemail_and_whisper_needs_a_key(
    fake: FakeCarrier, bridge_stub: BridgeStub
) -> None:
    fake.set_target("+15550004001", answer(after=1))  # picks up but presses nothing: voicemail
    bridge_stub.routes["/twilio/voice"] = (
        '<Response><Dial timeout="10" action="/twilio/dial-action">'
        '<Number url="/twilio/confirm">+15550004001</Number></Dial></Response>'
    )
    bridge_stub.routes["/twilio/confirm"] = (
        '<Response><Gather numDigits="1" timeout="3" action="/twilio/confirmed"/>'
        "<Hangup/></Response>"
    )
    bridge_stub.routes["/twilio/dial-action"] = (
        '<Response><Record maxLength="60" action="/twilio/voicemail"/></Response>'
    )
    inbound = await fake.place_inbound_call("+15551234567", "+15550104", follow=True)
    await inbound.wait_ended()
    [leg] = fake.calls_to("+15550004001")
    assert (
        leg.status == "completed" and leg.end_reason == "twiml-hangup"
    )  # <Hangup/> after <Gather>
    [action] = bridge_stub.at("/twilio/dial-action")
    assert action.form["DialCallStatus"] == "no-answer"
    [voicemail] = bridge_stub.at("/twilio/voicemail")
    assert voicemail.form["RecordingSid"].startswith("RE")
    assert voicemail.form["RecordingUrl"].endswith(voicemail.form["RecordingSid"])

    # The same flow with a human who presses 1: the leg is bridged.
    fake.set_target("+15550004001", answer(after=1, digits="1", hangup_after=20))
    bridge_stub.routes["/twilio/confirmed"] = "<Response/>"
    bridge_stub.requests.clear()
    inbound = await fake.place_inbound_call("+15551234567", "+15550104", follow=True)
    await inbound.wait_ended()
    assert bridge_stub.at("/twilio/confirmed")[0].form["Digits"] == "1"
    assert bridge_stub.at("/twilio/dial-action")[0].form["DialCallStatus"] == "completed"


# -- as a process --------------------------------------------------------------------------------


def test_runs_as_python_dash_m() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.carrier", "--port", "0", "--auth-token", TOKEN],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("fake carrier on http://127.0.0.1:"), line
        base = line.split()[3]
        account = line.split("account ")[1].rstrip(")\n")
        request = urllib.request.Request(f"{base}/2010-04-01/Accounts/{account}/Calls.json")
        password_mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        password_mgr.add_password(None, base, account, TOKEN)
        opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(password_mgr))
        with opener.open(request, timeout=5) as response:
            assert json.load(response)["calls"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "0 out of spec" in out


async def test_start_and_stop_leave_no_task_behind() -> None:
    before = asyncio.all_tasks()
    carrier = FakeCarrier(time_scale=0.01)
    await carrier.start()
    assert carrier.port > 0
    await carrier.stop()
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
