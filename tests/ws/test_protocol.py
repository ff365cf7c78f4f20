"""The frame protocol: bad frames get an error naming the problem and the connection stays;
floods are limited, then closed; oversize frames are closed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.conftest import Bridge
from tests.ws.conftest import WAIT, Live, LiveFactory

# (frame sent, expected error code, expected field, expected words in the message)
BAD_FRAMES: list[tuple[Any, str, str | None, str]] = [
    ("not json", "not_json", None, "not JSON"),
    ("[1, 2]", "not_json", None, "a frame is a JSON object"),
    ({"type": "presence.set", "availability": "busy"}, "invalid_frame", "v", "v: field required"),
    ({"v": 2, "type": "presence.set"}, "unsupported_version", "v", "version 2"),
    ({"v": 1}, "invalid_frame", "type", "type: field required"),
    ({"v": 1, "type": "call.teleport"}, "unknown_type", "type",
     "unknown frame type 'call.teleport'"),
    ({"v": 1, "type": "presence.set"}, "invalid_frame", "availability", "Field required"),
    ({"v": 1, "type": "presence.set", "availability": "asleep"}, "invalid_frame",
     "availability", "availability: Input should be"),
    ({"v": 1, "type": "call.accept", "call_id": 7}, "invalid_frame", "call_id",
     "call_id: Input should be a valid string"),
    ({"v": 1, "type": "pong", "colour": "red"}, "invalid_frame", "colour",
     "colour: Extra inputs are not permitted"),
    ({"v": 1, "type": "call.monitor", "call_id": "x", "mode": "spy"}, "invalid_frame", "mode",
     "mode: Input should be"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("frame", "code", "field", "words"), BAD_FRAMES, ids=[f"{c}-{f}" for _, c, f, _ in BAD_FRAMES]
)
async def test_a_bad_frame_gets_an_error_naming_it_and_the_connection_stays(
    live: Live, frame: Any, code: str, field: str | None, words: str
) -> None:
    client = await live.connect("alice")
    if isinstance(frame, dict):
        frame = json.dumps({**frame, "id": "bad-1"})
    await client.send_raw(frame)
    error = await client.expect("error", timeout=WAIT)
    assert error["code"] == code
    assert error.get("field") == field
    assert words in error["message"]
    # The id is echoed whenever the frame was an object carrying one.
    assert error.get("id") == ("bad-1" if frame.startswith("{") else None)
    # Still connected, still working.
    reply = await client.request("presence.set", availability="busy")
    assert (reply["type"], reply["availability"]) == ("presence", "busy")
    assert client.is_open


async def test_text_no_frame_can_carry_gets_an_error_and_the_connection_stays(
    live: Live,
) -> None:
    """A JSON string can hold a lone surrogate ("\\udcff"), which no JSON frame of ours can
    carry back: in a field it is refused like any bad value; as the frame's id it is not
    echoed (the error frame itself could not be made, and the session was closed with 1011)."""
    client = await live.connect("alice")
    await client.send_raw(r'{"v": 1, "type": "call.accept", "call_id": "x\udcff", "id": "ok-2"}')
    error = await client.expect("error", timeout=WAIT)
    assert (error["code"], error["field"], error.get("id")) == ("invalid_frame", "call_id", "ok-2")
    await client.send_raw(
        r'{"v": 1, "type": "presence.set", "availability": "busy", "id": "a\udcff"}'
    )
    error = await client.expect("error", timeout=WAIT)
    assert error["code"] == "invalid_frame" and "id" not in error
    assert error["field"] == "id"
    reply = await client.request("presence.set", availability="busy")
    assert (reply["type"], reply["availability"]) == ("presence", "busy")
    assert client.is_open


@pytest.mark.parametrize("bad_id", ["", "x" * 65, -1, 1.5, [1]])
async def test_a_bad_id_is_named_as_the_id_with_what_an_id_may_be(live: Live, bad_id: Any) -> None:
    """The id is a union (string or integer): the error names the field, not pydantic's name
    for a branch of the union ("id.constrained-str"), and says what both branches allow."""
    client = await live.connect("alice")
    await client.send_raw(json.dumps({"v": 1, "type": "calls.unsubscribe", "id": bad_id}))
    error = await client.expect("error", timeout=WAIT)
    assert (error["code"], error["field"]) == ("invalid_frame", "id")
    assert error["message"] == "id: a string of 1 to 64 characters or an integer >= 0"
    assert "id" not in error  # (not one we could echo)
    assert (await client.request("calls.unsubscribe"))["type"] == "ack"


async def test_nesting_past_what_json_parses_is_not_json_and_the_session_stays(
    live: Live,
) -> None:
    """2 kB of brackets reach json's recursion limit: RecursionError closed the session with
    1011 "internal error"."""
    client = await live.connect("alice")
    await client.send_raw('{"v": 1, "type": "pong", "x": ' + "[" * 1000 + "]" * 1000 + "}")
    error = await client.expect("error", timeout=WAIT)
    assert (error["code"], error["message"]) == ("not_json", "nested too deep")
    assert (await client.request("calls.unsubscribe"))["type"] == "ack"
    assert client.is_open


async def test_binary_frames_get_an_error(live: Live) -> None:
    client = await live.connect("alice")
    await client.send_raw(b'{"v":1,"type":"pong"}')
    error = await client.expect("error", timeout=WAIT)
    assert error["code"] == "binary_not_supported"
    assert (await client.request("calls.unsubscribe"))["type"] == "ack"


async def test_over_the_rate_frames_are_refused_but_the_connection_stays(live: Live) -> None:
    client = await live.connect("alice")
    # burst 10, 20 refusals allowed: 25 frames at once refuse some, close nothing.
    for index in range(25):
        await client.send("calls.unsubscribe", id=index)
    acks = [await client.expect("ack", timeout=WAIT, id=i) for i in range(10)]
    assert [a["id"] for a in acks] == list(range(10))
    errors = [f for f in client.frames if f.get("type") == "error"]
    assert errors and {e["code"] for e in errors} == {"rate_limited"}
    assert client.is_open
    value = live.ctx.metrics.registry.get_sample_value(
        "bridge_ws_messages_total", {"direction": "in", "type": "rate_limited"}
    )
    assert value is not None and value >= 1


async def test_a_sustained_flood_closes_with_1008(live: Live) -> None:
    client = await live.connect("alice")
    for index in range(200):
        if not client.is_open:
            break
        try:
            await client.send("calls.unsubscribe", id=index)
        except Exception:
            break
    assert await client.wait_closed(WAIT) == (1008, "flood: over the rate limit")
    assert live.gateway.session_count() == 0


async def test_an_oversize_frame_closes_with_1009(live: Live) -> None:
    client = await live.connect("alice")
    await client.send("pong", padding="x" * 5000)  # max_frame_bytes is 4096 here
    code, _ = await client.wait_closed(WAIT)
    assert code == 1009
    assert live.gateway.session_count() == 0


async def test_a_frame_at_the_limit_is_fine(live: Live) -> None:
    client = await live.connect("alice")
    # Exactly max_frame_bytes is allowed; it is judged on its content (here, a bad field).
    frame = json.dumps({"v": 1, "type": "pong", "id": "big", "pad": ""})
    frame = frame.replace('"pad": ""', '"pad": "' + "y" * (4096 - len(frame)) + '"')
    assert len(frame.encode()) == 4096
    await client.send_raw(frame)
    error = await client.expect("error", timeout=WAIT)
    assert (error["code"], error["field"], error["id"]) == ("invalid_frame", "pad", "big")


def test_the_gateway_itself_closes_oversize_frames(bridge: Bridge) -> None:
    """Under a server without a frame limit (here Starlette's test client), the gateway's own
    check closes with 1009 (default max_frame_bytes: 65536)."""
    client: TestClient = bridge.client
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"v": 1, "type": "auth", "token": bridge.token("alice")})
        assert ws.receive_json()["type"] == "auth.ok"
        ws.send_text(json.dumps({"v": 1, "type": "pong", "pad": "é" * 40_000}))  # 80,000 bytes
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()
        assert info.value.code == 1009
        assert info.value.reason == "frame over 65536 bytes"


async def test_too_many_sessions_for_one_user_close_with_4009(make_live: LiveFactory) -> None:
    live = await make_live(max_sessions_per_user=2)
    await live.connect("alice")
    await live.connect("alice")
    third = live.client("alice")
    with pytest.raises(Exception):  # noqa: B017 - the server closes right after auth
        await third.connect()
    assert await third.wait_closed(WAIT) == (4009, "already 2 sessions (max_sessions_per_user)")
    assert live.gateway.session_count("alice") == 2
