"""`/api/v1/webhooks` on a running `bridge run`: endpoints added, changed, listed with their
queue's figures, deliveries listed, events replayed; bad input refused with the field named;
admins only; the settings file's endpoints read-only here."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from tests.events.receiver import SECRET, Receiver
from tests.events.test_durability import directory, sipp_calls
from tests.sip.peers import bridge_process


async def wait_until(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def test_webhook_endpoints_through_the_api(tmp_path: Path) -> None:
    receiver = await Receiver().start()
    configured = json.dumps(
        [{"name": "file", "url": "http://127.0.0.1:9/never", "secret": SECRET, "types": ["x.*"]}]
    )
    try:
        with bridge_process(tmp_path, directory(), events__endpoints=configured) as bridge:
            assert bridge.api("/readyz")["events"] == "ok"
            [listed] = bridge.api("/api/v1/webhooks")
            assert listed["id"] == "config:file" and listed["source"] == "config"
            assert "secret" not in listed

            status, created = bridge.request(
                "POST", "/api/v1/webhooks", {"url": receiver.url, "types": ["audit.*"]}
            )
            assert status == 201, created
            assert created["secret"].startswith("whsec_") and created["enabled"] is True
            endpoint = created["id"]
            receiver.secret = created["secret"]  # the receiver verifies with the new secret
            status, _ = bridge.request("PUT", "/api/v1/users/ana/availability", {"status": "busy"})
            assert status == 200
            got = await receiver.wait_for(2)  # its own creation (audited), then the change
            # Deliveries are ordered per call (docs/events.md); audit records have none, so
            # two of them may be in flight at once and arrive either way: read them in the
            # order they were recorded.
            got.sort(key=lambda r: (r.body["timestamp"], r.body["id"]))
            assert all(r.verified and r.body["type"] == "audit.recorded" for r in got)
            actions = [r.body["data"]["action"] for r in got]
            assert actions == ["webhook_create", "set_availability"]
            assert got[1].body["data"]["source"] == "127.0.0.1"
            assert got[1].body["data"]["actor"] == "admin"
            shown = bridge.api(f"/api/v1/webhooks/{endpoint}")
            assert await wait_until(
                lambda: bridge.api(f"/api/v1/webhooks/{endpoint}")["deliveries"]["delivered"] >= 1
            ), shown
            rows = bridge.api(f"/api/v1/webhooks/{endpoint}/deliveries?state=delivered")
            event_id = rows["deliveries"][0]["event_id"]
            assert rows["deliveries"][0]["attempts"] == 1

            status, body = bridge.request(
                "POST", f"/api/v1/webhooks/{endpoint}/replay", {"event_id": event_id}
            )
            assert (status, body) == (202, {"queued": 1})
            await wait_until(
                lambda: [r.webhook_id for r in receiver.delivered()].count(event_id) == 2
            )
            assert [r.webhook_id for r in receiver.delivered()].count(event_id) == 2

            status, changed = bridge.request(
                "PATCH", f"/api/v1/webhooks/{endpoint}", {"enabled": False}
            )
            assert status == 200 and changed["enabled"] is False

            hooks, own = "/api/v1/webhooks", f"http://127.0.0.1:{bridge.http}/x"
            for method, path, body, field in [
                ("POST", hooks, {"url": "ftp://example.com/x"}, "url:"),
                # a host the HTTP client cannot encode: taken, then every try raised
                ("POST", hooks, {"url": "http://a..b/x"}, "url:"),
                ("POST", hooks, {"url": f"http://{'a' * 64}.example/x"}, "url:"),
                ("POST", hooks, {"url": own}, "url:"),
                ("POST", hooks, {"url": receiver.url, "secret": "nope"}, "secret:"),
                ("POST", hooks, {"url": receiver.url, "types": ["Bad Type"]}, "types:"),
                ("GET", f"/api/v1/webhooks/{endpoint}/deliveries?state=lost", None, "state:"),
                ("GET", f"/api/v1/webhooks/{endpoint}/deliveries?limit=many", None, "limit:"),
                ("POST", f"/api/v1/webhooks/{endpoint}/replay", {"since": "yesterday"}, "since:"),
                (
                    "POST",
                    f"/api/v1/webhooks/{endpoint}/replay",
                    {"since": "2020-01-01", "until": "9999-12-31T23:59:59-14:00"},
                    "until:",
                ),
                ("POST", f"/api/v1/webhooks/{endpoint}/replay", {}, "event_id"),
            ]:
                status, answer = bridge.request(method, path, body)
                assert status == 400 and field in answer["detail"], (path, body, answer)
            status, answer = bridge.request(
                "POST", f"/api/v1/webhooks/{endpoint}/replay", {"event_id": "no-such"}
            )
            assert status == 404
            status, answer = bridge.request("DELETE", "/api/v1/webhooks/config:file")
            assert status == 409 and "settings file" in answer["detail"]
            status, answer = bridge.request("GET", "/api/v1/webhooks", user="ana")
            assert status == 403
            status, _ = bridge.request("DELETE", f"/api/v1/webhooks/{endpoint}")
            assert status == 204
            assert [e["id"] for e in bridge.api("/api/v1/webhooks")] == ["config:file"]
            text = bridge.metrics()
            assert "bridge_outbox_healthy 1.0" in text
    finally:
        await receiver.stop()


def test_an_outbox_that_cannot_be_written_is_reported_and_calls_go_on(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the outbox's folder should be")
    with bridge_process(
        tmp_path,
        directory(),
        wait_ready=False,
        events__outbox_path=str(blocker / "o.sqlite"),
        sip__trunk_allow='["127.0.0.0/8"]',
    ) as bridge:
        deadline = time.monotonic() + 10
        while True:
            status, ready = bridge.request("GET", "/readyz")
            if status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 503 and "cannot open the outbox" in ready["events"], ready
        status, _ = bridge.request("PUT", "/api/v1/users/ana/availability", {"status": "busy"})
        assert status == 200  # the daemon works on
        status, answer = bridge.request("GET", "/api/v1/webhooks")
        assert status == 503 and "outbox" in answer["detail"]
        assert bridge.metric("bridge_outbox_healthy") == 0.0
        # and calls keep flowing: a trunk call is routed and ends as ever
        sipp_calls(tmp_path, bridge.sip, 1).wait(30)
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"]
