"""Changes through the API land in directory.yaml and survive a restart; account actions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from bridge.directory.model import AccountStatus
from bridge.presence.model import Availability
from tests.api.helpers import API, MAIN_LINE, SUPPORT_LINE, assert_unchanged, snapshot
from tests.conftest import Bridge


def saved_user(bridge: Bridge, user_id: str) -> dict[str, Any] | None:
    return next((u for u in bridge.directory_file()["users"] if u["id"] == user_id), None)


def layers_of(document: dict[str, Any], group_id: str) -> list[list[str]]:
    group = next(g for g in document["ring_groups"] if g["id"] == group_id)
    return [layer["members"] for layer in group["layers"]]


def test_changes_are_written_and_survive_a_restart(make_bridge: Callable[..., Bridge]) -> None:
    first = make_bridge()
    assert first.ctx.store.current.version == 1
    new_user = {
        "id": "zed",
        "name": "Zed New",
        "extension": "120",
        "timezone": "Europe/Paris",
        "working_hours": {"mon": ["09:00-12:00"]},
        "permissions": ["recording_control"],
    }
    created = first.as_user("olivia", "POST", f"{API}/users", json=new_user)
    assert created.status_code == 201
    assert created.json()["extension"] == "120"
    group = {"id": "night", "name": "Night", "layers": [{"members": ["zed", "bob"]}]}
    assert first.as_user("olivia", "POST", f"{API}/ring-groups", json=group).status_code == 201
    line = {"name": "Support at night", "route_to": {"ring_group": "night"}}
    assert first.as_user("olivia", "PUT", f"{API}/lines/{SUPPORT_LINE}", json=line).status_code == (
        200
    )
    assert first.as_user("sam", "POST", f"{API}/users/alice/pause").status_code == 200
    assert first.ctx.store.current.version == 5

    # The file, parsed: every change is there.
    text = (first.config_dir / "directory.yaml").read_text()
    assert text.startswith("# Managed by bridge")
    saved = yaml.safe_load(text)
    assert "version" not in saved
    zed = next(u for u in saved["users"] if u["id"] == "zed")
    assert zed == {**new_user, "permissions": ["recording_control"]}
    assert layers_of(saved, "night") == [["zed", "bob"]]
    assert next(x for x in saved["lines"] if x["number"] == SUPPORT_LINE)["route_to"] == {
        "ring_group": "night"
    }
    assert next(u for u in saved["users"] if u["id"] == "alice")["status"] == "paused"

    # A new daemon on the same config folder reads it all back.
    second = make_bridge()
    assert second.config_dir == first.config_dir
    directory = second.ctx.store.current
    assert directory.version == 1
    assert directory.user("zed").timezone == "Europe/Paris"
    assert directory.user("alice").status is AccountStatus.PAUSED
    assert directory.line(SUPPORT_LINE).route_to.ring_group == "night"
    assert second.as_user("zed", "GET", f"{API}/me").json()["name"] == "Zed New"
    assert second.as_user("olivia", "GET", f"{API}/ring-groups/night").json()["layers"] == [
        {"members": ["zed", "bob"]}
    ]
    assert directory.to_document() == first.ctx.store.current.to_document()


def test_saving_keeps_the_sip_hashes_but_the_api_never_shows_them(bridge: Bridge) -> None:
    hashes = saved_user(bridge, "bob")["sip"]
    assert set(hashes) == {"username", "ha1_md5", "ha1_sha256"}
    patched = bridge.as_user("olivia", "PATCH", f"{API}/users/bob", json={"name": "Robert"})
    assert patched.status_code == 200
    assert patched.json()["sip"] == {"username": "102"}
    assert saved_user(bridge, "bob")["sip"] == hashes

    # Sending back the public shape of `sip` on PUT keeps the stored hashes too.
    public = bridge.as_user("olivia", "GET", f"{API}/users/bob").json()
    assert "ha1_md5" not in str(public)
    public["name"] = "Bob Again"
    put = bridge.as_user("olivia", "PUT", f"{API}/users/bob", json=public)
    assert put.status_code == 200, put.text
    assert put.json()["name"] == "Bob Again"
    assert saved_user(bridge, "bob")["sip"] == hashes
    assert saved_user(bridge, "bob")["name"] == "Bob Again"


def test_patch_null_clears_an_optional_field(bridge: Bridge) -> None:
    assert bridge.ctx.store.current.user("bob").backup_number == "+15550009999"
    response = bridge.as_user("olivia", "PATCH", f"{API}/users/bob", json={"backup_number": None})
    assert response.status_code == 200
    assert response.json()["backup_number"] is None
    assert "backup_number" not in saved_user(bridge, "bob")
    assert saved_user(bridge, "bob")["extension"] == "102"  # the rest is kept


def test_delete_user_removes_them_from_layers_store_and_file(bridge: Bridge) -> None:
    bridge.ctx.presence.set_availability("erin", Availability.BUSY)
    before = bridge.ctx.store.current.version
    assert layers_of(bridge.directory_file(), "sales")[1] == ["carol", "dave", "erin"]
    assert layers_of(bridge.directory_file(), "support")[0] == ["erin", "frank"]

    response = bridge.as_user("olivia", "DELETE", f"{API}/users/erin")
    assert response.status_code == 204
    assert response.content == b""
    assert bridge.ctx.store.current.version == before + 1
    assert bridge.ctx.store.current.user("erin") is None
    for document in (bridge.directory_file(), bridge.ctx.store.current.to_document()):
        assert "erin" not in {u["id"] for u in document["users"]}
        assert layers_of(document, "sales") == [["alice", "bob", "sam"], ["carol", "dave"]]
        assert layers_of(document, "support") == [["frank"], ["olivia", "carol"]]
    # presence forgot them, and the API no longer knows them
    assert "erin" not in bridge.ctx.presence.snapshot()
    assert bridge.ctx.presence.presence_of("erin").availability is Availability.AVAILABLE
    assert bridge.as_user("olivia", "GET", f"{API}/users/erin").status_code == 404
    assert "erin" not in {u["id"] for u in bridge.as_user("olivia", "GET", f"{API}/users").json()}
    # a second delete is a 404, not a silent success
    before = snapshot(bridge)
    again = bridge.as_user("olivia", "DELETE", f"{API}/users/erin")
    assert again.status_code == 404
    assert_unchanged(bridge, before)


def test_delete_line_removes_it_from_users_lines(bridge: Bridge) -> None:
    assert bridge.as_user("olivia", "DELETE", f"{API}/lines/{SUPPORT_LINE}").status_code == 204
    assert bridge.ctx.store.current.user("frank").lines == ()
    assert "lines" not in saved_user(bridge, "frank")
    assert [line["number"] for line in bridge.directory_file()["lines"]] == [MAIN_LINE]


def test_delete_ring_group_once_nothing_routes_to_it(bridge: Bridge) -> None:
    assert bridge.as_user("olivia", "DELETE", f"{API}/lines/{MAIN_LINE}").status_code == 204
    assert bridge.as_user("olivia", "DELETE", f"{API}/ring-groups/sales").status_code == 204
    assert [g["id"] for g in bridge.directory_file()["ring_groups"]] == ["support"]
    assert bridge.ctx.store.current.group("sales") is None


def test_supervisor_activates_a_paused_user_but_not_a_suspended_one(bridge: Bridge) -> None:
    # dave is paused in the demo: a supervisor may bring him back.
    activated = bridge.as_user("sam", "POST", f"{API}/users/dave/activate")
    assert activated.status_code == 200
    assert activated.json()["status"] == "active"
    assert saved_user(bridge, "dave").get("status", "active") == "active"

    # The supervisor may not suspend ...
    before = snapshot(bridge)
    refused = bridge.as_user("sam", "POST", f"{API}/users/bob/suspend")
    assert refused.status_code == 403
    assert refused.json() == {"detail": "role 'supervisor' may not suspend user"}
    assert_unchanged(bridge, before)

    # ... nor lift a suspension the admin made, by activating or by pausing.
    assert bridge.as_user("olivia", "POST", f"{API}/users/bob/suspend").status_code == 200
    before = snapshot(bridge)
    for verb in ("activate", "pause"):
        response = bridge.as_user("sam", "POST", f"{API}/users/bob/{verb}")
        assert response.status_code == 403
        assert response.json() == {
            "detail": "role 'supervisor' may not suspend user (the user is suspended)"
        }
    assert_unchanged(bridge, before)
    assert bridge.ctx.store.current.user("bob").status is AccountStatus.SUSPENDED
    assert saved_user(bridge, "bob")["status"] == "suspended"

    # The admin can.
    lifted = bridge.as_user("olivia", "POST", f"{API}/users/bob/activate")
    assert lifted.status_code == 200
    assert lifted.json()["status"] == "active"
    assert bridge.ctx.store.current.user("bob").status is AccountStatus.ACTIVE
    assert saved_user(bridge, "bob").get("status", "active") == "active"


def test_pause_takes_a_user_out_of_routing(bridge: Bridge) -> None:
    def alice_reason() -> str | None:
        plan = bridge.as_user(
            "olivia",
            "GET",
            f"{API}/lines/{MAIN_LINE}/route",
            params={"at": "2026-11-23T10:00:00-05:00", "presence": "assume_available"},
        ).json()
        return next(m for m in plan["layers"][0]["members"] if m["user_id"] == "alice")["reason"]

    assert alice_reason() is None
    assert bridge.as_user("sam", "POST", f"{API}/users/alice/pause").status_code == 200
    assert alice_reason() == "paused"
    assert bridge.as_user("olivia", "POST", f"{API}/users/alice/suspend").status_code == 200
    assert alice_reason() == "suspended"
    assert bridge.as_user("olivia", "POST", f"{API}/users/alice/activate").status_code == 200
    assert alice_reason() is None


def test_refused_change_leaves_the_file_for_the_next_start(
    make_bridge: Callable[..., Bridge],
) -> None:
    first = make_bridge()
    before = snapshot(first)
    response = first.as_user(
        "olivia", "POST", f"{API}/users", json={"id": "zed", "name": "Z", "extension": "101"}
    )
    assert response.status_code == 409
    assert_unchanged(first, before)
    # no temp files left next to the directory
    assert sorted(p.name for p in first.config_dir.iterdir()) == ["bridge.toml", "directory.yaml"]
    second = make_bridge()
    assert second.ctx.store.current.user("zed") is None
    assert second.ctx.store.current.to_document() == before.document


# ---------------------------------------------------------------------------------------------
# Concurrent changes. Sync endpoints run in a thread pool, so another change can land between
# an endpoint's look at `store.current` and its own edit; the edit must decide on the document
# it is given, not on the earlier look. `change_lands_first` makes that interleaving certain.
# ---------------------------------------------------------------------------------------------
def change_lands_first(bridge: Bridge, other: Callable[[dict[str, Any]], None]) -> None:
    """The next store change first applies `other` (as if another request won the lock)."""
    store = bridge.ctx.store
    original = store.change

    def change(edit: Callable[[dict[str, Any]], Any]) -> Any:
        del store.change  # once only
        original(other)
        return original(edit)

    store.change = change  # type: ignore[method-assign]


def suspend_bob(document: dict[str, Any]) -> None:
    next(u for u in document["users"] if u["id"] == "bob")["status"] = "suspended"


def test_a_suspension_made_meanwhile_is_not_lifted_by_a_supervisor(bridge: Bridge) -> None:
    assert bridge.ctx.store.current.user("bob").status is AccountStatus.ACTIVE
    change_lands_first(bridge, suspend_bob)
    response = bridge.as_user("sam", "POST", f"{API}/users/bob/pause")
    assert response.status_code == 403, response.text
    assert response.json() == {
        "detail": "role 'supervisor' may not suspend user (the user is suspended)"
    }
    assert bridge.ctx.store.current.user("bob").status is AccountStatus.SUSPENDED
    assert saved_user(bridge, "bob")["status"] == "suspended"
    assert bridge.ctx.store.current.version == 2  # only the suspension


def test_patch_keeps_a_change_made_meanwhile(bridge: Bridge) -> None:
    change_lands_first(bridge, suspend_bob)
    response = bridge.as_user("olivia", "PATCH", f"{API}/users/bob", json={"name": "Robert"})
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Robert"
    assert response.json()["status"] == "suspended"
    bob = bridge.ctx.store.current.user("bob")
    assert (bob.name, bob.status) == ("Robert", AccountStatus.SUSPENDED)
    assert saved_user(bridge, "bob")["status"] == "suspended"
    assert bridge.ctx.store.current.version == 3
