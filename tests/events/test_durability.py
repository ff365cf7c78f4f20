"""The outbox and its webhooks with real processes: `bridge run` stores the events of SIPp
trunk calls and of audited API requests while the webhook endpoint is down, is killed with
SIGKILL, started again on the same outbox, and the endpoint comes up: every stored event
arrives, each under its own id only, each signature verifies (standardwebhooks), and each
call's events arrive in the order they happened."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.events.receiver import SECRET, Receiver
from tests.sip.peers import SCENARIOS, SIPP, bridge_process, free_port

LINE = "+15550100"
EVENTS = 1000


def directory() -> dict[str, Any]:
    return {
        "timezone": "UTC",
        "users": [
            {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
            {"id": "ana", "name": "Ana", "answer_by": "apps"},
            {"id": "ben", "name": "Ben", "answer_by": "apps"},
        ],
        "ring_groups": [
            {
                "id": "sales",
                "name": "Sales",
                "layers": [{"members": ["ana", "ben"], "timeout_seconds": 20}],
                "fallback": {"action": "hangup"},
            }
        ],
        "lines": [{"number": LINE, "name": "Sales", "route_to": {"ring_group": "sales"}}],
    }


def stored(path: Path) -> list[tuple[int, str, str | None]]:
    """(seq, id, call_id) of every event in the outbox (read beside the running daemon)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT seq, id, call_id FROM events ORDER BY seq").fetchall()
    finally:
        db.close()


def sipp_calls(tmp_path: Path, port: int, calls: int) -> subprocess.Popen[str]:
    """SIPp as the trunk: `calls` calls to the line (nobody is reachable: each is routed,
    falls back and ends, a few events each)."""
    assert SIPP is not None, "sipp missing (Debian sip-tester)"
    return subprocess.Popen(
        [
            SIPP, "-sf", str(SCENARIOS / "trunk_call.xml"), "-i", "127.0.0.1",
            "-p", str(free_port()), "-m", str(calls), "-r", "50", "-l", "50", "-nostdin",
            "-timeout", "30s", "-s", LINE, "-d", "100", f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path,
    )  # fmt: skip


async def test_events_made_while_the_endpoint_is_down_survive_kill_9_and_arrive_once(
    tmp_path: Path,
) -> None:
    receiver = Receiver(port=free_port())  # down until the end
    endpoints = json.dumps([{"name": "crm", "url": receiver.url, "secret": SECRET}])
    env = {"events__endpoints": endpoints, "events__retry_max_seconds": "2"}
    outbox = tmp_path / "var" / "events.sqlite"
    with bridge_process(tmp_path, directory(), sip__trunk_allow='["127.0.0.0/8"]', **env) as bridge:
        sipp = sipp_calls(tmp_path, bridge.sip, 150)
        for n in range(EVENTS):  # audited requests, while the calls go on
            availability = {"status": "busy" if n % 2 else "available"}
            status, _ = bridge.request("PUT", "/api/v1/users/ana/availability", availability)
            assert status == 200
            if len(stored(outbox)) >= EVENTS + 300:
                break
        sipp.wait(60)
        deadline = time.monotonic() + 20
        while len(stored(outbox)) < EVENTS and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        ready = bridge.api("/readyz")
        assert ready["events"] == "ok"
        before_kill = stored(outbox)
        bridge.process.kill()  # SIGKILL: no drain, no flush
        bridge.process.wait(10)
    assert len(before_kill) >= EVENTS
    calls = {call for _, _, call in before_kill if call}
    assert len(calls) >= 100  # the SIPp calls' events are among them

    with bridge_process(tmp_path, directory(), **env) as again:
        await receiver.start()
        try:
            events = stored(outbox)
            assert len(events) >= len(before_kill)  # nothing stored before was lost
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                got_ids = {r.webhook_id for r in receiver.delivered()}
                if got_ids >= {event_id for _, event_id, _ in events}:
                    break
                await asyncio.sleep(0.25)
            received = receiver.delivered()
            by_id = {event_id: (seq, call) for seq, event_id, call in stored(outbox)}
            assert {event_id for _, event_id, _ in events} <= {r.webhook_id for r in received}
            assert all(r.verified for r in receiver.got)
            assert all(r.body["id"] == r.webhook_id for r in receiver.got)  # one id per event
            assert {r.webhook_id for r in receiver.got} <= set(by_id)  # nothing unknown
            # each call's events in the order they were stored (first delivery of each)
            first: dict[str, float] = {}
            for r in received:
                first.setdefault(r.webhook_id, r.at)
            for call in calls:
                ids = [i for _, i, c in events if c == call]
                times = [first[i] for i in ids]
                assert times == sorted(times), call
            print(
                f"\n{len(before_kill)} events stored before the kill ({len(calls)} calls), "
                f"{len(events)} after; {len(received)} delivered, {len(receiver.got)} tries"
            )
            metrics = again.metrics()
            assert "bridge_webhook_deliveries_total{" in metrics
        finally:
            await receiver.stop()
