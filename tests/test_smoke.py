from tests.conftest import Bridge


def test_demo_bridge_answers_health_and_me(bridge: Bridge) -> None:
    assert bridge.client.get("/healthz").json()["status"] == "ok"
    assert bridge.client.get("/readyz").status_code == 200
    me = bridge.as_user("alice", "GET", "/api/v1/me")
    assert me.status_code == 200
    assert me.json()["id"] == "alice"
    assert "ha1_md5" not in str(bridge.as_user("olivia", "GET", "/api/v1/users/bob").json())
