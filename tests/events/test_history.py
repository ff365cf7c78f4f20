"""Call history from the outbox on a running `bridge run`: `GET /api/v1/calls?state=ended`
(filters, pages, CSV) and `GET /api/v1/calls/{id}` for a finished call (its plan, layers,
every leg with how it ended and why, who answered, durations), seen as the role matrix says."""

from __future__ import annotations

import csv
import io
import urllib.request
from pathlib import Path

from tests.sip.peers import trunk_bridge
from tests.sip.test_sipp_calls import directory, run_trunk, start_phone, wait_registered


def csv_of(bridge, path: str) -> tuple[str, list[dict[str, str]]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{bridge.http}{path}",
        headers={"Authorization": f"Bearer {bridge.token()}", "Accept": "text/csv"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        kind = response.headers["Content-Type"]
        return kind, list(csv.DictReader(io.StringIO(response.read().decode())))


def test_finished_calls_are_listed_filtered_paged_and_exported(tmp_path: Path) -> None:
    with trunk_bridge(tmp_path, directory()) as bridge:
        anna = start_phone(tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "300")
        ben = start_phone(tmp_path, "phone_ring_cancelled.xml", "302", bridge.sip)
        wait_registered(bridge, 2)
        assert run_trunk(tmp_path, bridge).returncode == 0  # answered by anna
        assert anna.wait(timeout=30) == 0 and ben.wait(timeout=30) == 0
        # a second call: ben's phone (registered again) rings, nobody answers, the caller
        # gives up (the trunk's CANCEL waits for a 180: without a ringing phone it would wait
        # out the layer's timeout)
        ben = start_phone(tmp_path, "phone_ring_cancelled.xml", "302", bridge.sip)
        run_trunk(tmp_path, bridge, scenario="trunk_cancel.xml", trace_name="cancel")
        assert ben.wait(timeout=30) == 0
        bridge.wait_events("sip_call_ended", count=2)

        assert bridge.api("/api/v1/calls") == []  # live: none
        ended = bridge.api("/api/v1/calls?state=ended")
        assert len(ended) == 2
        cancelled, answered = ended  # newest first
        assert answered["outcome"] == "answered" and answered["answered_by"] == "anna"
        assert answered["line"] == "+15550100" and answered["path"] == "sip"
        assert answered["ring_group"] == "sales" and answered["state"] == "ended"
        assert answered["talk_seconds"] >= 0.2 and answered["wait_seconds"] >= 0
        assert 29 <= answered["wrap_up_seconds"] <= 30
        assert set(answered["users"]) >= {"anna", "ben"}
        assert cancelled["outcome"] != "answered" and cancelled["answered_by"] is None

        one = bridge.api(f"/api/v1/calls/{answered['call_id']}")
        legs = {leg["user_id"]: leg for leg in one["legs"]}
        assert legs["ben"]["state"] == "cancelled" and legs["ben"]["reason"] == "answered_elsewhere"
        assert legs["anna"]["answered_at"] is not None and legs["anna"]["via"] == "ip_phone"
        assert one["layers"][0]["user_ids"] == ["anna", "ben"]
        assert one["target"]["id"] == "sales"
        code, _ = bridge.request("GET", "/api/v1/calls/no-such-call")
        assert code == 404

        assert [c["call_id"] for c in bridge.api("/api/v1/calls?state=ended&outcome=answered")] == [
            answered["call_id"]
        ]
        assert len(bridge.api("/api/v1/calls?state=ended&user=anna")) >= 1
        assert bridge.api("/api/v1/calls?state=ended&line=+15550199") == []
        assert bridge.api("/api/v1/calls?state=ended&until=2000-01-01T00:00:00Z") == []
        code, page = bridge.request("GET", "/api/v1/calls?state=ended&limit=1")
        assert code == 200 and [c["call_id"] for c in page] == [cancelled["call_id"]]
        request = urllib.request.Request(
            f"http://127.0.0.1:{bridge.http}/api/v1/calls?state=ended&limit=1",
            headers={"Authorization": f"Bearer {bridge.token()}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            link = response.headers["Link"]
        assert link.endswith('rel="next"') and "before=" in link
        next_path = link[1 : link.index(">")]
        assert [c["call_id"] for c in bridge.api(next_path)] == [answered["call_id"]]

        kind, rows = csv_of(bridge, "/api/v1/calls?state=ended")
        assert kind.startswith("text/csv")
        assert [r["call_id"] for r in rows] == [cancelled["call_id"], answered["call_id"]]
        assert rows[1]["answered_by"] == "anna" and rows[1]["outcome"] == "answered"

        for query, field in [
            ("state=old", "state:"),
            ("state=ended&limit=0", "limit:"),
            ("state=ended&since=today", "since:"),
            ("state=ended&since=0001-01-01T00:00:00%2B14:00", "since:"),  # (a 500 before)
            ("state=ended&until=9999-12-31T23:59:59-14:00", "until:"),
            ("state=ended&before=x", "before:"),
        ]:
            code, body = bridge.request("GET", f"/api/v1/calls?{query}")
            assert code == 400 and body["detail"].startswith(field), (query, body)

        # agents see the calls they were rung for or took; cleo was never rung
        assert {c["call_id"] for c in bridge.api("/api/v1/calls?state=ended", user="anna")} >= {
            answered["call_id"]
        }
        assert bridge.api("/api/v1/calls?state=ended", user="cleo") == []
        code, _ = bridge.request("GET", f"/api/v1/calls/{answered['call_id']}", user="cleo")
        assert code == 404
