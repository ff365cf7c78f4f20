"""POST /api/v1/directory/reload: a valid file on disk is picked up, a broken one refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.api.helpers import API, demo_document
from tests.conftest import Bridge

RELOAD = f"{API}/directory/reload"


def directory_path(bridge: Bridge) -> Path:
    path = bridge.config_dir / "directory.yaml"
    assert bridge.ctx.store.path == path
    return path


def write(bridge: Bridge, document: dict[str, Any]) -> None:
    directory_path(bridge).write_text(yaml.safe_dump(document, sort_keys=False))


def reloads(bridge: Bridge, result: str) -> float:
    value = bridge.ctx.metrics.registry.get_sample_value(
        "bridge_directory_reloads_total", {"result": result}
    )
    return value or 0.0


def test_reload_picks_up_a_valid_edit(bridge: Bridge) -> None:
    document = demo_document()
    document["users"][2]["name"] = "Alice Renamed"
    document["users"].append({"id": "zed", "name": "Zed From File", "extension": "130"})
    document["ring_groups"][0]["layers"][0]["members"].append("zed")
    write(bridge, document)
    # Nothing changes until the reload is asked for.
    assert bridge.ctx.store.current.user("zed") is None
    assert bridge.ctx.store.current.version == 1

    response = bridge.as_user("olivia", "POST", RELOAD)
    assert response.status_code == 200
    assert response.json() == {"version": 2, "users": 11}
    assert bridge.ctx.store.current.version == 2
    assert bridge.as_user("olivia", "GET", f"{API}/users/alice").json()["name"] == "Alice Renamed"
    assert bridge.as_user("zed", "GET", f"{API}/me").json()["extension"] == "130"
    sales = bridge.as_user("olivia", "GET", f"{API}/ring-groups/sales").json()
    assert sales["layers"][0]["members"] == ["alice", "bob", "sam", "zed"]
    info = bridge.as_user("olivia", "GET", f"{API}/directory").json()
    assert info["version"] == 2
    assert info["users"] == 11
    assert reloads(bridge, "ok") == 1
    assert reloads(bridge, "refused") == 0


def test_reload_of_an_unchanged_file_still_bumps_the_version(bridge: Bridge) -> None:
    document = bridge.ctx.store.current.to_document()
    response = bridge.as_user("olivia", "POST", RELOAD)
    assert response.status_code == 200
    assert response.json()["version"] == 2
    assert bridge.ctx.store.current.to_document() == document


BROKEN_FILES = [
    pytest.param(
        "users: [unclosed\n",
        [("directory", "not valid YAML at line 2, column 1")],
        id="bad-yaml",
    ),
    pytest.param("- just\n- a list\n", [("directory", "the file must hold a mapping")], id="list"),
    pytest.param(
        "users:\n  - {id: alice, name: A, extension: '101'}\n"
        "  - {id: bob, name: B, extension: '101'}\n",
        [("users[1].extension", "duplicate extension '101' (also users[0])")],
        id="duplicate-extension",
    ),
    pytest.param(
        "users:\n  - {id: alice, name: A, timezone: Mars/Base}\n",
        [("users[0].timezone", "unknown time zone 'Mars/Base'")],
        id="bad-time-zone",
    ),
    pytest.param(
        "ring_groups:\n  - {id: g, name: G, layers: [{members: [ghost]}]}\n",
        [("ring_groups[0].layers[0].members[0]", "unknown user 'ghost'")],
        id="unknown-member",
    ),
]


@pytest.mark.parametrize(("text", "problems"), BROKEN_FILES)
def test_reload_refuses_a_broken_file_and_keeps_the_old_snapshot(
    bridge: Bridge, text: str, problems: list[tuple[str, str]]
) -> None:
    old = bridge.ctx.store.current
    directory_path(bridge).write_text(text)

    response = bridge.as_user("olivia", "POST", RELOAD)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert len(detail) == len(problems), detail
    for problem, (loc, message) in zip(detail, problems, strict=True):
        assert problem["loc"] == loc
        assert problem["msg"].startswith(message), problem

    assert bridge.ctx.store.current is old
    assert bridge.ctx.store.current.version == 1
    assert bridge.as_user("olivia", "GET", f"{API}/users/alice").json()["name"] == "Alice Doe"
    assert len(bridge.as_user("olivia", "GET", f"{API}/users").json()) == 10
    assert reloads(bridge, "refused") == 1
    assert reloads(bridge, "ok") == 0


def test_reload_after_a_refusal_picks_up_the_fixed_file(bridge: Bridge) -> None:
    directory_path(bridge).write_text("users: [unclosed\n")
    assert bridge.as_user("olivia", "POST", RELOAD).status_code == 422
    document = demo_document()
    document["users"][3]["name"] = "Bob Fixed"
    write(bridge, document)
    response = bridge.as_user("olivia", "POST", RELOAD)
    assert response.status_code == 200
    assert response.json()["version"] == 2  # the refused attempt did not use a version
    assert bridge.ctx.store.current.user("bob").name == "Bob Fixed"


def test_reload_of_a_missing_file(bridge: Bridge) -> None:
    directory_path(bridge).unlink()
    response = bridge.as_user("olivia", "POST", RELOAD)
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == "directory.path"
    assert problem["msg"].startswith("file not found: ")
    assert bridge.ctx.store.current.version == 1


@pytest.mark.parametrize("actor", ["sam", "alice", "frank", "bill", "rita"])
def test_only_the_admin_may_reload(bridge: Bridge, actor: str) -> None:
    document = demo_document()
    document["users"][2]["name"] = "Alice Renamed"
    write(bridge, document)
    response = bridge.as_user(actor, "POST", RELOAD)
    assert response.status_code == 403
    assert response.json()["detail"].endswith("may not change directory")
    assert bridge.ctx.store.current.version == 1
    assert bridge.ctx.store.current.user("alice").name == "Alice Doe"
