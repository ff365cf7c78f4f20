"""/healthz, /readyz, /metrics, /docs and /openapi.json (no token needed)."""

from __future__ import annotations

import re

from structlog.testing import capture_logs

from bridge import __version__
from tests.api.helpers import API
from tests.conftest import Bridge


def sample(text: str, name: str, labels: str = "") -> float:
    """The value of one exposition-format sample, e.g. sample(t, 'x', '{a="b"}')."""
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"no sample {name}{labels}"
    return float(match.group(1))


def test_healthz(bridge: Bridge) -> None:
    response = bridge.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": __version__}


def test_healthz_stays_up_while_not_ready(bridge: Bridge) -> None:
    bridge.ctx.listeners_up.clear()
    bridge.ctx.draining = True
    assert bridge.client.get("/healthz").status_code == 200


def test_readyz_when_ready(bridge: Bridge) -> None:
    response = bridge.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "ready": True,
        "directory_version": 1,
        "listeners": ["http"],
        "draining": False,
    }


def test_readyz_follows_the_directory_version(bridge: Bridge) -> None:
    assert bridge.as_user("olivia", "POST", f"{API}/users/bob/pause").status_code == 200
    assert bridge.client.get("/readyz").json()["directory_version"] == 2


def test_readyz_without_listeners(bridge: Bridge) -> None:
    bridge.ctx.listeners_up.clear()
    response = bridge.client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "ready": False,
        "directory_version": 1,
        "listeners": [],
        "draining": False,
        "missing_listeners": ["http"],
    }


def test_readyz_waits_for_every_expected_listener(bridge: Bridge) -> None:
    bridge.ctx.listeners_expected.add("sip")
    response = bridge.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["missing_listeners"] == ["sip"]
    bridge.ctx.listeners_up.add("sip")
    response = bridge.client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["listeners"] == ["http", "sip"]


def test_readyz_while_draining(bridge: Bridge) -> None:
    bridge.ctx.draining = True
    response = bridge.client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert body["draining"] is True
    assert "missing_listeners" not in body


def test_metrics(bridge: Bridge) -> None:
    assert bridge.client.get("/healthz").status_code == 200
    assert bridge.as_user("alice", "GET", f"{API}/users/bob").status_code == 200
    assert bridge.client.get(f"{API}/me").status_code == 401
    response = bridge.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    # the directory, by account status (dave is paused in the demo)
    assert "# TYPE bridge_directory_users gauge" in text
    assert sample(text, "bridge_directory_users", '{status="active"}') == 9
    assert sample(text, "bridge_directory_users", '{status="paused"}') == 1
    assert sample(text, "bridge_directory_users", '{status="suspended"}') == 0
    assert sample(text, "bridge_directory_ring_groups") == 2
    assert sample(text, "bridge_directory_lines") == 2
    assert sample(text, "bridge_directory_version") == 1
    # requests, by route template (not by the raw path) and status
    assert "# TYPE bridge_http_requests_total counter" in text
    requests = "bridge_http_requests_total"
    assert sample(text, requests, '{method="GET",route="/healthz",status="200"}') == 1
    assert (
        sample(text, requests, '{method="GET",route="/api/v1/users/{user_id}",status="200"}') == 1
    )
    assert sample(text, requests, '{method="GET",route="/api/v1/me",status="401"}') == 1
    assert sample(text, "bridge_auth_failures_total", '{reason="missing bearer token"}') == 1
    # the process collector
    assert re.search(r"^process_\w+ \S+$", text, re.MULTILINE)
    assert "process_cpu_seconds_total" in text


def test_unknown_paths_and_failures_are_counted(bridge: Bridge) -> None:
    def boom() -> None:
        raise RuntimeError("a bug")

    bridge.client.app.add_api_route("/boom", boom)  # type: ignore[attr-defined]
    assert bridge.client.get("/no/such/thing").status_code == 404
    with capture_logs() as logs:
        response = bridge.client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert [e["event"] for e in logs if e["log_level"] in ("error",)] == [
        "request_failed",
        "request_error",
    ]
    text = bridge.client.get("/metrics").text
    requests = "bridge_http_requests_total"
    assert sample(text, requests, '{method="GET",route="unmatched",status="404"}') == 1
    assert sample(text, requests, '{method="GET",route="/boom",status="500"}') == 1


def test_metrics_follow_directory_changes(bridge: Bridge) -> None:
    assert bridge.as_user("olivia", "POST", f"{API}/users/bob/suspend").status_code == 200
    assert bridge.as_user("olivia", "DELETE", f"{API}/users/carol").status_code == 204
    text = bridge.client.get("/metrics").text
    assert sample(text, "bridge_directory_users", '{status="active"}') == 7
    assert sample(text, "bridge_directory_users", '{status="suspended"}') == 1
    assert sample(text, "bridge_directory_version") == 3
    assert (
        sample(
            text,
            "bridge_http_requests_total",
            '{method="DELETE",route="/api/v1/users/{user_id}",status="204"}',
        )
        == 1
    )


def test_openapi_and_docs(bridge: Bridge) -> None:
    spec = bridge.client.get("/openapi.json")
    assert spec.status_code == 200
    body = spec.json()
    assert body["info"]["title"] == "bridge"
    assert body["info"]["version"] == __version__
    paths = body["paths"]
    for path, methods in {
        "/api/v1/users": {"get", "post"},
        "/api/v1/users/{user_id}": {"get", "put", "patch", "delete"},
        "/api/v1/users/{user_id}/availability": {"get", "put"},
        "/api/v1/ring-groups/{group_id}": {"get", "put", "delete"},
        "/api/v1/lines/{number}/route": {"get"},
        "/api/v1/directory/reload": {"post"},
        "/api/v1/calls": {"get"},
        "/readyz": {"get"},
    }.items():
        assert methods <= set(paths[path]), path
    docs = bridge.client.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in docs.text
    assert "/openapi.json" in docs.text
