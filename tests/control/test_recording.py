"""Recording controls end to end: the Recordings API on the caller's call (dual channel) at the
fake carrier, its status callbacks kept in the call record, and who may do it (ROLES.md: any
call for admins and supervisors, only their own calls and only with `recording_control` for
agents and reps)."""

from __future__ import annotations

from structlog.testing import capture_logs

from tests.carrier.live import World, eventually
from tests.control.helpers import answered_by_ana, api, audits


async def test_pause_with_skip_then_resume_then_stop(world: World) -> None:
    call = await answered_by_ana(world)
    path = f"/api/v1/calls/{call.call_id}/recording"
    started = await api(world, "ana", "POST", path, {"action": "start"})
    assert started.status_code == 200, started.text
    recording_sid = started.json()["recording_sid"]
    assert started.json()["status"] == "in-progress"
    [create] = world.requests("CreateCallRecording")
    assert create["RecordingChannels"] == ["dual"]
    assert create["RecordingStatusCallbackEvent"] == ["in-progress", "completed", "absent"]
    assert create["RecordingStatusCallback"] == [
        f"https://bridge.example.com/twilio/recording?call={call.call_id}&kind=call"
    ]
    fake = world.carrier.recordings[recording_sid]
    assert fake.call_sid == call.call_id and fake.channels == 2

    paused = await api(world, "ana", "POST", path, {"action": "pause", "pause_behavior": "skip"})
    assert paused.status_code == 200, paused.text
    assert (paused.json()["status"], paused.json()["pause_behavior"]) == ("paused", "skip")
    assert fake.status == "paused" and fake.pause_behavior == "skip"

    resumed = await api(world, "ana", "POST", path, {"action": "resume"})
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "in-progress" and resumed.json()["pause_behavior"] is None
    stopped = await api(world, "ana", "POST", path, {"action": "stop"})
    assert stopped.json()["status"] == "stopped"

    updates = world.requests("UpdateCallRecording")
    assert updates == [
        {"Status": ["paused"], "PauseBehavior": ["skip"]},
        {"Status": ["in-progress"]},
        {"Status": ["stopped"]},
    ]
    await eventually(lambda: fake.status == "completed")
    assert fake.history == ["in-progress", "paused", "in-progress", "stopped", "completed"]
    # The carrier's completed callback (with the file) lands in the call record.
    await eventually(lambda: call.recording is not None and call.recording.status == "completed")
    assert call.recording is not None
    assert call.recording.url is not None and call.recording.url.endswith(recording_sid)
    assert call.recording.history == [
        "in-progress",
        "paused",
        "in-progress",
        "stopped",
        "completed",
    ]
    world.carrier.hangup(call.call_id)
    await world.ended(call.call_id)


async def test_who_may_control_the_recording(world: World) -> None:
    call = await answered_by_ana(world)
    path = f"/api/v1/calls/{call.call_id}/recording"
    with capture_logs() as logs:
        no_flag = await api(world, "eve", "POST", path, {"action": "start"})
        not_theirs = await api(world, "abe", "POST", path, {"action": "start"})
        rep = await api(world, "rex", "POST", path, {"action": "start"})
        supervisor = await api(world, "sue", "POST", path, {"action": "start"})
    assert no_flag.status_code == 403
    assert no_flag.json()["detail"] == "user 'eve' lacks the 'recording_control' permission"
    assert not_theirs.status_code == 403 and "calls they answered" in not_theirs.json()["detail"]
    assert rep.status_code == 403
    assert supervisor.status_code == 200, supervisor.text  # any call, no flag needed
    entries = audits(logs)
    assert [(a["actor"], a["allowed"], a["outcome"]) for a in entries] == [
        ("eve", False, "refused"),
        ("abe", False, "refused"),
        ("rex", False, "refused"),
        ("sue", True, "done"),
    ]
    assert all(a["action"] == "control_recording" and a["detail"] == "start" for a in entries)
    world.carrier.hangup(call.call_id)
    await world.ended(call.call_id)


async def test_recording_actions_out_of_turn_are_conflicts(world: World) -> None:
    call = await answered_by_ana(world)
    path = f"/api/v1/calls/{call.call_id}/recording"

    async def send(action: str) -> int:
        response = await api(world, "sam", "POST", path, {"action": action})
        return response.status_code

    assert await send("pause") == 409  # nothing recording yet
    assert await send("start") == 200
    assert await send("start") == 409  # already
    assert await send("resume") == 409  # not paused
    assert await send("pause") == 200
    assert await send("pause") == 409  # already paused
    assert await send("stop") == 200
    assert await send("resume") == 409  # stopped
    assert await send("start") == 200  # a new recording of the same call
    assert len(world.requests("CreateCallRecording")) == 2
    bad = await api(world, "sam", "POST", path, {"action": "pause", "pause_behavior": "mute"})
    assert bad.status_code == 422
    world.carrier.hangup(call.call_id)
    await world.ended(call.call_id)


async def test_a_carrier_503_on_pause_is_retried_and_the_pause_happens(world: World) -> None:
    call = await answered_by_ana(world)
    path = f"/api/v1/calls/{call.call_id}/recording"
    assert (await api(world, "sam", "POST", path, {"action": "start"})).status_code == 200
    fault = world.carrier.inject_fault(1, 503, operation="UpdateCallRecording")
    with capture_logs() as logs:
        paused = await api(
            world, "sam", "POST", path, {"action": "pause", "pause_behavior": "skip"}
        )
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert fault.hits == 1 and world.errors("UpdateCallRecording", "503") == 1
    [failure] = [e for e in logs if e["event"] == "carrier_api_error"]
    assert (failure["status"], failure["attempt"], failure["call_sid"]) == ("503", 1, call.call_id)
    assert failure["retry_in"] is not None
    world.carrier.hangup(call.call_id)
    await world.ended(call.call_id)
