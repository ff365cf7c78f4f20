"""What limited readers may learn: no probing of ids, no view of the whole directory."""

from __future__ import annotations

from tests.conftest import Bridge


def test_directory_info_is_scoped_to_the_caller(api: Bridge) -> None:
    admin = api.as_user("olivia", "GET", "/api/v1/directory").json()
    assert admin["users"] == 11 and admin["lines"] == 2 and admin["ring_groups"] == 2
    assert admin["path"].endswith("directory.yaml")
    supervisor = api.as_user("sam", "GET", "/api/v1/directory").json()
    assert supervisor["users"] == 11 and "path" not in supervisor
    for limited in ("frank", "cleo"):  # rep and end client: own lines only
        body = api.as_user(limited, "GET", "/api/v1/directory").json()
        assert body == {"version": 1, "timezone": "America/New_York", "lines": 1}
    assert api.as_user("bill", "GET", "/api/v1/directory").status_code == 403


def test_availability_refusal_does_not_reveal_which_users_exist(api: Bridge) -> None:
    for who in ("bill", "frank", "cleo", "alice"):
        real = api.as_user(who, "PUT", "/api/v1/users/bob/availability", json={"status": "busy"})
        ghost = api.as_user(who, "PUT", "/api/v1/users/ghost/availability", json={"status": "busy"})
        assert real.status_code == ghost.status_code == 403, who
    # Someone allowed to set others' availability does get the 404.
    ghost = api.as_user("sam", "PUT", "/api/v1/users/ghost/availability", json={"status": "busy"})
    assert ghost.status_code == 404


def test_put_line_accepts_the_number_without_plus(api: Bridge) -> None:
    line = api.as_user("olivia", "GET", "/api/v1/lines/+15550100").json()
    line.update(number="15550100", name="Main line (renamed)")
    response = api.as_user("olivia", "PUT", "/api/v1/lines/15550100", json=line)
    assert response.status_code == 200, response.text
    assert response.json()["number"] == "+15550100"
    assert api.ctx.store.current.line("+15550100").name == "Main line (renamed)"
    line["number"] = "+15550999"
    response = api.as_user("olivia", "PUT", "/api/v1/lines/15550100", json=line)
    assert response.status_code == 422
