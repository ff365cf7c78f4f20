"""The audit trail (`GET /api/v1/audit`) and the live feed (`GET /api/v1/events/stream`,
Server-Sent Events, resumed by `Last-Event-ID`) on a running `bridge run`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from tests.events.test_durability import directory
from tests.sip.peers import bridge_process


def people() -> dict[str, Any]:
    data = directory()
    data["users"].append(
        {"id": "sam", "name": "Sam", "role": "supervisor", "answer_by": "will_not_answer"}
    )
    return data


def test_the_audit_trail_with_filters_and_pages(tmp_path: Path) -> None:
    with bridge_process(tmp_path, people()) as bridge:
        for status in ("busy", "available", "busy"):
            code, _ = bridge.request("PUT", "/api/v1/users/ben/availability", {"status": status})
            assert code == 200
        code, _ = bridge.request("GET", "/api/v1/webhooks", user="ana")
        assert code == 403  # denied: audited too
        code, _ = bridge.request("GET", "/api/v1/audit", user="sam")
        assert code == 403

        trail = bridge.api("/api/v1/audit?action=set_availability")
        records = trail["records"]
        assert [r["status"] for r in records] == ["busy", "available", "busy"]  # newest first
        assert all(r["actor"] == "admin" and r["allowed"] for r in records)
        assert records[0]["target"] == "user:ben" and records[0]["source"] == "127.0.0.1"
        denied = bridge.api("/api/v1/audit?allowed=false")["records"]
        assert {r["actor"] for r in denied} >= {"ana", "sam"}
        assert ("ana", "change_directory") in {(r["actor"], r["action"]) for r in denied}
        assert all(r["reason"] and r["path"] for r in denied)
        first = bridge.api("/api/v1/audit?action=set_availability&limit=2")
        assert len(first["records"]) == 2 and first["next_before"] is not None
        rest = bridge.api(
            f"/api/v1/audit?action=set_availability&limit=2&before={first['next_before']}"
        )
        assert [r["status"] for r in rest["records"]] == ["busy"] and rest["next_before"] is None
        assert bridge.api("/api/v1/audit?actor=nobody")["records"] == []
        for query, field in [
            ("limit=0", "limit:"),
            ("limit=lots", "limit:"),
            ("since=yesterday", "since:"),
            # before the first time a datetime holds once in UTC (it was a 500)
            ("since=0001-01-01T00:00:00%2B14:00", "since:"),
            ("until=9999-12-31T23:59:59-14:00", "until:"),
            ("allowed=maybe", "allowed:"),
            ("before=x", "before:"),
        ]:
            code, body = bridge.request("GET", f"/api/v1/audit?{query}")
            assert code == 400 and body["detail"].startswith(field), (query, body)


async def read_events(response: httpx.Response, count: int) -> list[dict[str, Any]]:
    """`count` events from an SSE response (id, event, data parsed)."""
    got: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            current["id"] = line[4:]
        elif line.startswith("event: "):
            current["event"] = line[7:]
        elif line.startswith("data: "):
            current["data"] = json.loads(line[6:])
        elif line == "" and current:
            got.append(current)
            current = {}
            if len(got) == count:
                return got
    return got


async def test_the_live_feed_resumes_after_the_last_event_id(tmp_path: Path) -> None:
    with bridge_process(tmp_path, people()) as bridge:
        base = f"http://127.0.0.1:{bridge.http}"
        admin = {"Authorization": f"Bearer {bridge.token('admin')}"}

        async def change(status: str) -> None:
            await asyncio.to_thread(
                bridge.request, "PUT", "/api/v1/users/ben/availability", {"status": status}
            )

        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            async with client.stream(
                "GET", "/api/v1/events/stream?types=audit.recorded", headers=admin
            ) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                await asyncio.sleep(0.3)
                await change("busy")
                [first] = await asyncio.wait_for(read_events(response, 1), 10)
            assert first["event"] == "audit.recorded"
            assert first["data"]["data"]["status"] == "busy"
            assert first["data"]["id"] == first["id"]
            # disconnected: two changes are missed, then the client comes back
            await change("available")
            await change("offline")
            resume = admin | {"Last-Event-ID": first["id"]}
            async with client.stream(
                "GET", "/api/v1/events/stream?types=audit.recorded", headers=resume
            ) as response:
                missed = await asyncio.wait_for(read_events(response, 2), 10)
            assert [e["data"]["data"]["status"] for e in missed] == ["available", "offline"]

            # the same, read as pages
            page = (await client.get(f"/api/v1/events?after={first['id']}", headers=admin)).json()
            statuses = [e["data"].get("status") for e in page["events"]]
            assert statuses[:2] == ["available", "offline"]

            # a supervisor's feed has no audit records; an agent has no feed
            sam = {"Authorization": f"Bearer {bridge.token('sam')}"}
            answer = await client.get("/api/v1/events?types=audit.recorded", headers=sam)
            assert answer.status_code == 403
            answer = await client.get("/api/v1/events", headers=sam)
            assert answer.status_code == 200
            assert all(
                e["type"].startswith(("call.", "leg.", "voicemail."))
                for e in answer.json()["events"]
            )
            ana = {"Authorization": f"Bearer {bridge.token('ana')}"}
            assert (await client.get("/api/v1/events", headers=ana)).status_code == 403
            bad = await client.get("/api/v1/events?after=nope", headers=admin)
            assert bad.status_code == 400 and bad.json()["detail"].startswith("after:")
