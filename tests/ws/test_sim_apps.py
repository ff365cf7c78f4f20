"""sim/apps against a real bridge: many users x sessions answering the test offers."""

from __future__ import annotations

import asyncio
import json
import sys

from sim.apps import AnswerPolicy
from sim.apps.load import AppFleet

from tests.ws.conftest import WAIT, Live, LiveFactory, eventually

AGENTS = ["alice", "olivia", "frank", "dave"]  # the demo's apps users (dave is paused)


async def test_a_fleet_answers_test_offers_first_accept_wins(live: Live) -> None:
    fleet = AppFleet(
        live.url,
        AGENTS,
        live.token,
        sessions_per_user=2,
        policy=AnswerPolicy(probability=1.0, delay_min=0.0, delay_max=0.05, seed=7),
        keep_frames=True,
    )
    report = await fleet.connect()
    try:
        assert (report.connected, report.refused) == (8, [])
        # One call offered to everyone: all eight sessions race for it.
        response = await live.http(
            "POST", "/api/v1/ws/test-offers", "olivia", json={"users": AGENTS, "one_call": True}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["offers"] == {"delivered": 4, "pending": 0, "unreachable": 0}
        assert len(set(body["calls"].values())) == 1

        def settled() -> bool:
            stats = fleet.collect().stats
            return stats.won == 1 and stats.won + stats.lost == stats.accepts

        await eventually(settled)
        stats = fleet.collect().stats
        assert stats.offers == 8
        assert stats.won == 1
        # Each of the 7 other sessions hears `answered_elsewhere` once; an accept that was
        # still on its way when its offer ended (a late accept) hears it once more.
        assert set(stats.ended) == {"answered_elsewhere"}
        assert 7 <= stats.ended["answered_elsewhere"] <= 7 + stats.lost
    finally:
        await fleet.close()


async def test_one_call_per_user_each_answered(live: Live) -> None:
    fleet = AppFleet(live.url, AGENTS, live.token, policy=AnswerPolicy(seed=1))
    await fleet.connect()
    try:
        response = await live.http(
            "POST", "/api/v1/ws/test-offers", "olivia", json={"users": AGENTS, "hold_seconds": 0.1}
        )
        assert len(set(response.json()["calls"].values())) == 4
        await eventually(lambda: fleet.collect().stats.won == 4)
        assert fleet.collect().stats.lost == 0
    finally:
        await fleet.close()


async def test_a_policy_that_never_answers_lets_offers_time_out(live: Live) -> None:
    fleet = AppFleet(live.url, ["alice"], live.token, policy=AnswerPolicy(probability=0.0))
    await fleet.connect()
    try:
        await live.http(
            "POST", "/api/v1/ws/test-offers", "olivia",
            json={"users": ["alice"], "ring_seconds": 0.2},
        )  # fmt: skip
        await eventually(lambda: fleet.collect().stats.ended == {"timeout": 1})
        assert fleet.collect().stats.accepts == 0
    finally:
        await fleet.close()


async def test_test_offers_are_admin_only(live: Live) -> None:
    response = await live.http("POST", "/api/v1/ws/test-offers", "sam", json={"users": ["alice"]})
    assert response.status_code == 403
    assert response.json()["detail"] == "role 'supervisor' may not change directory"
    unknown = await live.http(
        "POST", "/api/v1/ws/test-offers", "olivia", json={"users": ["nobody"]}
    )
    assert unknown.status_code == 404


async def test_test_offers_are_off_by_default(make_live: LiveFactory) -> None:
    live = await make_live(test_offers=False)
    response = await live.http(
        "POST", "/api/v1/ws/test-offers", "olivia", json={"users": ["alice"]}
    )
    assert response.status_code == 404


async def test_the_command_line_client(live: Live) -> None:
    secret = live.ctx.settings.auth.jwt_secret
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sim.apps", "--url", live.url, "--jwt-secret", secret,
        "--users", "alice,olivia", "--sessions", "2", "--auth", "subprotocol", "--seconds", "3",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), WAIT)
    assert line.decode().startswith("connected 4 sessions, refused 0")
    await eventually(lambda: live.gateway.session_count() == 4)
    await live.http("POST", "/api/v1/ws/test-offers", "olivia", json={"users": ["alice"]})
    out, err = await asyncio.wait_for(process.communicate(), WAIT)
    assert process.returncode == 0, err.decode()
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["sessions"] == 4
    assert (summary["offers"], summary["won"]) == (2, 1)  # alice's two sessions, one wins
