"""The live board and the supervisor controls over the WebSocket, role by role (ROLES.md)."""

from __future__ import annotations

import pytest

from bridge.calls.registry import LiveCall
from bridge.sip.supervision import NEEDS_MEDIA
from tests.api.helpers import demo_with_end_client
from tests.api.test_role_matrix import ALL_CALLS, LIVE_CALLS, STARTED, VISIBLE_CALLS
from tests.ws.conftest import WAIT, Live, LiveFactory

# Users a board lists: every role that takes calls, not suspended (the demo has none).
CALL_TAKERS = {"olivia", "sam", "alice", "bob", "carol", "dave", "erin", "frank"}
VISIBLE_AGENTS = {
    "olivia": CALL_TAKERS,
    "sam": CALL_TAKERS,
    "alice": CALL_TAKERS,  # agents read the whole directory
    "erin": CALL_TAKERS,
    "rita": CALL_TAKERS,
    "frank": {"frank"},  # own lines: only themselves
    "cleo": set(),  # an end client takes no calls
}


@pytest.fixture
async def board(make_live: LiveFactory) -> Live:
    live = await make_live(directory=demo_with_end_client())
    for call in LIVE_CALLS:
        live.ctx.calls.add(call)
    return live


@pytest.mark.parametrize("user", sorted(VISIBLE_AGENTS))
async def test_the_board_shows_what_the_role_may_see(board: Live, user: str) -> None:
    client = await board.connect(user)
    snapshot = await client.request("calls.subscribe")
    assert snapshot["type"] == "calls.board"
    expected_calls = ALL_CALLS if user == "erin" else VISIBLE_CALLS[user]
    assert {c["call_id"] for c in snapshot["calls"]} == expected_calls
    assert {a["user_id"] for a in snapshot["agents"]} == VISIBLE_AGENTS[user]
    for agent in snapshot["agents"]:
        assert set(agent) >= {"availability", "on_call", "reachable", "sessions", "status"}
    if user in ("olivia", "sam"):
        call = next(c for c in snapshot["calls"] if c["call_id"] == "call-a")
        assert call["ringing"] == ["alice", "bob"]
        assert call["started_at"] == "2026-11-23T15:00:00Z"
        mine = next(a for a in snapshot["agents"] if a["user_id"] == user)
        assert (mine["sessions"], mine["reachable"]) == (1, ["apps"])


async def test_billing_may_not_subscribe(board: Live) -> None:
    bill = await board.connect("bill")
    reply = await bill.request("calls.subscribe")
    assert (reply["type"], reply["code"]) == ("error", "forbidden")
    assert reply["message"] == "role 'billing_admin' may not see live calls"


async def test_updates_follow_calls_and_presence(board: Live) -> None:
    sam = await board.connect("sam")
    alice = await board.connect("alice")
    await sam.request("calls.subscribe")
    await alice.request("calls.subscribe")

    board.ctx.calls.add(LiveCall("call-f", "sip", "+15550100", "+15557770009", STARTED,
                                 ringing={"olivia"}))  # fmt: skip
    update = await sam.expect("calls.update", timeout=WAIT)
    assert [c["call_id"] for c in update["calls"]] == ["call-f"]
    assert update["removed"] == []

    await alice.request("presence.set", availability="busy")
    update = await sam.expect("calls.update", timeout=WAIT)
    changed = {a["user_id"]: a for a in update["agents"]}
    assert changed["alice"]["availability"] == "busy"

    board.ctx.calls.remove("call-a")
    update = await sam.expect("calls.update", timeout=WAIT, removed=["call-a"])
    assert update["calls"] == []
    # alice was rung for call-a: it leaves her board too; call-f was never on it.
    mine = await alice.expect("calls.update", timeout=WAIT, removed=["call-a"])
    assert mine["calls"] == []
    assert not [u for u in alice.received("calls.update") if u["calls"]]

    await sam.request("calls.unsubscribe")
    board.ctx.calls.remove("call-b")
    assert board.gateway.board.subscribers == 1  # only alice now


# The demo bridge has no carrier REST API: allowed controls on carrier calls get that far and
# stop there (the controls on real carrier calls are in test_controls.py); those on SIP calls
# are refused as not supported there yet.
NO_CARRIER = (
    "call controls need the carrier's REST API: set [twilio] account_sid and auth_token "
    "(or an API key)"
)
NO_MEDIA = NEEDS_MEDIA

CONTROLS = [
    # (user, frame, fields, code, message)
    ("sam", "call.monitor", {"call_id": "call-a", "mode": "barge"}, "unavailable", NO_CARRIER),
    ("olivia", "call.monitor", {"call_id": "call-d", "mode": "whisper"}, "conflict",
     NO_MEDIA),  # a SIP call
    ("alice", "call.monitor", {"call_id": "call-a", "mode": "listen"}, "forbidden",
     "user 'alice' lacks the 'barge_whisper' permission"),
    ("frank", "call.monitor", {"call_id": "call-c", "mode": "listen"}, "forbidden",
     "role 'rep' may not monitor calls"),
    ("rita", "call.monitor", {"call_id": "call-a", "mode": "listen"}, "forbidden",
     "role 'reporter' may not monitor calls"),
    ("sam", "call.recording", {"call_id": "call-b", "action": "pause"}, "unavailable",
     NO_CARRIER),
    ("alice", "call.recording", {"call_id": "call-a", "action": "pause"}, "unavailable",
     NO_CARRIER),  # her own call, with the flag
    ("erin", "call.recording", {"call_id": "call-b", "action": "resume"}, "forbidden",
     "user 'erin' lacks the 'recording_control' permission"),
    ("cleo", "call.recording", {"call_id": "call-c", "action": "stop"}, "forbidden",
     "role 'end_client' may not control recording"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("user", "kind", "fields", "code", "message"),
    CONTROLS,
    ids=[f"{u}-{k}-{f['call_id']}" for u, k, f, _, _ in CONTROLS],
)
async def test_supervisor_controls_go_through_the_control_service(
    board: Live, user: str, kind: str, fields: dict[str, str], code: str, message: str
) -> None:
    client = await board.connect(user)
    reply = await client.request(kind, **fields)
    assert (reply["type"], reply["code"], reply["message"]) == ("error", code, message)
    assert client.is_open
