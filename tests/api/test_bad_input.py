"""Bad input: 422 naming the field, 404 for unknown ids, 409 for duplicates and references.

Every refused change is checked for partial application: same store version, same snapshot,
same directory.yaml bytes.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.helpers import (
    API,
    MAIN_LINE,
    SUPPORT_LINE,
    assert_unchanged,
    error_for,
    error_locs,
    snapshot,
)
from tests.conftest import Bridge

# In the demo file: users[2] is alice, users[3] bob; ring_groups[0] sales, [1] support;
# lines[0] is the main line, lines[1] the support line. A new user is users[10].
ALICE, BOB, NEW_USER = "users[2]", "users[3]", "users[10]"


def refused(bridge: Bridge, status: int, method: str, url: str, **kw: Any) -> Any:
    """Send as the admin, expect `status`, and check that nothing was applied."""
    before = snapshot(bridge)
    response = bridge.as_user("olivia", method, url, **kw)
    assert response.status_code == status, response.text
    assert_unchanged(bridge, before)
    return response


# ---------------------------------------------------------------------------------------------
# 422: a malformed body, checked by the request model (POST): loc is ["body", field].
# ---------------------------------------------------------------------------------------------
NEW_USER_FIELDS = [
    ("extension", 123, "Input should be a valid string"),
    ("extension", "12a", "String should match pattern"),
    ("wrap_up_seconds", "lots", "Input should be a valid integer"),
    ("wrap_up_seconds", 99999, "less than or equal to 3600"),
    ("ring_seconds", 1, "greater than or equal to 5"),
    ("role", "janitor", "Input should be 'admin', "),
    ("answer_by", "pigeon", "Input should be 'apps', "),
    ("available_by_default", "perhaps", "Input should be a valid boolean"),
    ("permissions", ["root"], "Input should be 'barge_whisper', "),
    ("lines", "+15550100", "Input should be a valid"),
    ("shoe_size", 42, "Extra inputs are not permitted"),
    ("phone_number", "555-1234", "'555-1234' is not an E.164 number"),
    ("backup_number", "+0123456789", "'+0123456789' is not an E.164 number"),
    ("timezone", "Mars/Olympus_Mons", "unknown time zone 'Mars/Olympus_Mons'"),
    # a folder of the zone database, a name too long for a file: OSError, a 500 before
    ("timezone", "America", "unknown time zone 'America'"),
    ("timezone", "a" * 300, "unknown time zone"),
    # said in the carrier's TwiML: XML cannot carry it (every later answer was unreadable)
    ("name", "Zed\x0b", "character '\\x0b' at 3 cannot be said or shown"),
    ("voicemail_prompt", "Leave\x00 a message", "cannot be said or shown"),
    ("working_hours", {"mon": ["25:00-26:00"]}, "mon: '25:00' is not a time of day"),
    ("working_hours", {"someday": ["09:00-17:00"]}, "unknown day 'someday'"),
    ("working_hours", {"mon": ["09:00-09:00"]}, "is empty (start equals end)"),
    # "²" passes str.isdigit and int() refuses it: the same 422 as any bad time
    ("working_hours", {"mon": ["0\u00b2:00-17:00"]}, "mon: '0\u00b2:00' is not HH:MM"),
    ("email", "not-an-email", "'not-an-email' is not an email address"),
    ("id", "Not An Id!", "String should match pattern"),
    ("sip", {"username": "zed"}, "give ha1_md5 and/or ha1_sha256"),
    ("dial", ["national", "everywhere"], "Input should be 'internal', "),
    ("dial", "international", "Input should be a valid"),
]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    NEW_USER_FIELDS,
    ids=[f"{f}={v!r}" for f, v, _ in NEW_USER_FIELDS],
)
def test_create_user_with_a_bad_field(bridge: Bridge, field: str, value: Any, message: str) -> None:
    body = {"id": "zed", "name": "Zed", field: value}
    response = refused(bridge, 422, "POST", f"{API}/users", json=body)
    (loc,) = error_locs(response)  # exactly one error, on that field (or inside it)
    assert loc == f"body.{field}" or loc.startswith(f"body.{field}.")
    assert message in error_for(response, loc)["msg"]


def test_create_user_reports_every_bad_field_at_once(bridge: Bridge) -> None:
    body = {
        "name": "Zed",
        "extension": 123,
        "timezone": "Nowhere/City",
        "working_hours": {"mon": ["25:00-26:00"]},
        "shoe_size": 42,
    }
    response = refused(bridge, 422, "POST", f"{API}/users", json=body)
    assert sorted(error_locs(response)) == [
        "body.extension",
        "body.id",
        "body.shoe_size",
        "body.timezone",
        "body.working_hours",
    ]
    assert error_for(response, "body.id")["type"] == "missing"
    assert error_for(response, "body.shoe_size")["type"] == "extra_forbidden"


@pytest.mark.parametrize("body", [[], "alice", 42, None])
def test_create_user_with_a_body_that_is_not_an_object(bridge: Bridge, body: Any) -> None:
    response = refused(bridge, 422, "POST", f"{API}/users", json=body)
    assert response.json()["detail"][0]["loc"][0] == "body"


RING_GROUP_BODIES = [
    ({"id": "qa", "name": "QA", "layers": []}, "body.layers", "at least 1 item"),
    ({"id": "qa", "name": "QA"}, "body.layers", "Field required"),
    (
        {"id": "qa", "name": "QA", "layers": [{"members": ["alice", "alice"]}]},
        "body.layers.0",
        "member 'alice' is listed twice in this layer",
    ),
    (
        {"id": "qa", "name": "QA", "layers": [{"members": ["alice"], "strategy": "loudest"}]},
        "body.layers.0.strategy",
        "Input should be 'all', ",
    ),
    (
        {
            "id": "qa",
            "name": "QA",
            "layers": [{"members": ["a"]}],
            "fallback": {"action": "forward"},
        },
        "body.fallback",
        "action 'forward' needs a number",
    ),
    (
        {
            "id": "qa",
            "name": "QA",
            "layers": [{"members": ["alice"]}],
            "fallback": {"action": "voicemail", "number": "+15550001000"},
        },
        "body.fallback",
        "number is only used with action 'forward'",
    ),
]


@pytest.mark.parametrize(("body", "loc", "message"), RING_GROUP_BODIES)
def test_create_ring_group_with_a_bad_body(
    bridge: Bridge, body: dict[str, Any], loc: str, message: str
) -> None:
    response = refused(bridge, 422, "POST", f"{API}/ring-groups", json=body)
    assert loc in error_locs(response)
    assert message in error_for(response, loc)["msg"]


LINE_BODIES = [
    (
        {"number": "555-0100", "name": "x", "route_to": {"ring_group": "sales"}},
        "body.number",
        "'555-0100' is not an E.164 number",
    ),
    (
        {"number": "+15550300", "name": "x", "route_to": {"ring_group": "sales", "user": "bob"}},
        "body.route_to",
        "give exactly one of ring_group or user",
    ),
    (
        {"number": "+15550300", "name": "x", "route_to": {}},
        "body.route_to",
        "give exactly one of ring_group or user",
    ),
    (
        {
            "number": "+15550300",
            "name": "x",
            "route_to": {"ring_group": "sales"},
            "timezone": "Europe/Atlantis",
        },
        "body.timezone",
        "unknown time zone 'Europe/Atlantis'",
    ),
    (
        {
            "number": "+15550300",
            "name": "x",
            "route_to": {"ring_group": "sales"},
            "business_hours": {"fri": ["08:00-26:00"]},
        },
        "body.business_hours",
        "fri: '26:00' is not a time of day",
    ),
]


@pytest.mark.parametrize(("body", "loc", "message"), LINE_BODIES)
def test_create_line_with_a_bad_body(
    bridge: Bridge, body: dict[str, Any], loc: str, message: str
) -> None:
    response = refused(bridge, 422, "POST", f"{API}/lines", json=body)
    assert loc in error_locs(response)
    assert message in error_for(response, loc)["msg"]


# ---------------------------------------------------------------------------------------------
# 422 from the directory as a whole (references, and PUT / PATCH bodies, which are checked by
# the store): loc is the path in the directory document.
# ---------------------------------------------------------------------------------------------
def test_ring_group_with_an_unknown_member(bridge: Bridge) -> None:
    body = {
        "id": "qa",
        "name": "QA",
        "layers": [{"members": ["alice"]}, {"members": ["bob", "ghost"]}],
    }
    response = refused(bridge, 422, "POST", f"{API}/ring-groups", json=body)
    assert response.json() == {
        "detail": [
            {
                "loc": "ring_groups[2].layers[1].members[1]",
                "msg": "unknown user 'ghost'",
                "type": "reference",
            }
        ]
    }


def test_ring_group_falling_back_to_an_unknown_group(bridge: Bridge) -> None:
    body = {
        "id": "qa",
        "name": "QA",
        "layers": [{"members": ["alice"]}],
        "fallback": {"action": "ring_group", "ring_group": "nowhere"},
    }
    response = refused(bridge, 422, "POST", f"{API}/ring-groups", json=body)
    assert error_for(response, "ring_groups[2].fallback.ring_group")["msg"] == (
        "unknown ring group 'nowhere'"
    )


def test_ring_group_falling_back_to_itself(bridge: Bridge) -> None:
    body = {
        "name": "Sales",
        "layers": [{"members": ["alice"]}],
        "fallback": {"action": "ring_group", "ring_group": "sales"},
    }
    response = refused(bridge, 422, "PUT", f"{API}/ring-groups/sales", json=body)
    assert error_for(response, "ring_groups[0].fallback.ring_group")["msg"] == (
        "a group cannot fall back to itself"
    )


def test_put_ring_group_with_an_unknown_member(bridge: Bridge) -> None:
    body = {"name": "Sales", "layers": [{"members": ["alice", "ghost"]}]}
    response = refused(bridge, 422, "PUT", f"{API}/ring-groups/sales", json=body)
    assert error_locs(response) == ["ring_groups[0].layers[0].members[1]"]


@pytest.mark.parametrize(
    ("route_to", "loc", "message"),
    [
        ({"user": "ghost"}, "lines[2].route_to.user", "unknown user 'ghost'"),
        ({"ring_group": "ghost"}, "lines[2].route_to.ring_group", "unknown ring group 'ghost'"),
    ],
)
def test_line_routing_to_something_unknown(
    bridge: Bridge, route_to: dict[str, str], loc: str, message: str
) -> None:
    body = {"number": "+15550300", "name": "New", "route_to": route_to}
    response = refused(bridge, 422, "POST", f"{API}/lines", json=body)
    assert response.json()["detail"] == [{"loc": loc, "msg": message, "type": "reference"}]


PATCHES = [
    ({"timezone": "Nowhere/City"}, f"{ALICE}.timezone", "unknown time zone 'Nowhere/City'"),
    (
        {"working_hours": {"mon": ["25:00-26:00"]}},
        f"{ALICE}.working_hours",
        "mon: '25:00' is not a time of day",
    ),
    ({"phone_number": "12345"}, f"{ALICE}.phone_number", "'12345' is not an E.164 number"),
    ({"nickname": "Al"}, f"{ALICE}.nickname", "unknown field"),
    ({"wrap_up_seconds": -1}, f"{ALICE}.wrap_up_seconds", "greater than or equal to 0"),
    ({"name": ""}, f"{ALICE}.name", "at least 1 character"),
    ({"lines": ["+15559999"]}, f"{ALICE}.lines[0]", "unknown line '+15559999'"),
]


@pytest.mark.parametrize(("patch", "loc", "message"), PATCHES)
def test_patch_user_with_a_bad_field(
    bridge: Bridge, patch: dict[str, Any], loc: str, message: str
) -> None:
    response = refused(bridge, 422, "PATCH", f"{API}/users/alice", json=patch)
    assert error_locs(response) == [loc]
    assert message in error_for(response, loc)["msg"]


def test_put_user_with_wrong_types(bridge: Bridge) -> None:
    response = refused(bridge, 422, "PUT", f"{API}/users/alice", json={"name": 5, "extension": 101})
    assert sorted(error_locs(response)) == [f"{ALICE}.extension", f"{ALICE}.name"]


@pytest.mark.parametrize(
    ("method", "url", "body", "field"),
    [
        ("PUT", f"{API}/users/alice", {"id": "alicia", "name": "Alice"}, "id"),
        ("PATCH", f"{API}/users/alice", {"id": "alicia"}, "id"),
        ("PUT", f"{API}/ring-groups/sales", {"id": "deals", "name": "S", "layers": []}, "id"),
        (
            "PUT",
            f"{API}/lines/{MAIN_LINE}",
            {"number": "+15550999", "name": "x", "route_to": {"ring_group": "sales"}},
            "number",
        ),
    ],
)
def test_the_key_of_a_record_cannot_change(
    bridge: Bridge, method: str, url: str, body: dict[str, Any], field: str
) -> None:
    response = refused(bridge, 422, method, url, json=body)
    assert response.json()["detail"] == [
        {"loc": field, "msg": f"{field} cannot change", "type": "invalid"}
    ]


def test_put_line_with_bad_hours(bridge: Bridge) -> None:
    body = {
        "name": "Main line",
        "route_to": {"ring_group": "sales"},
        "business_hours": {"mon": ["25:00-26:00"]},
    }
    response = refused(bridge, 422, "PUT", f"{API}/lines/{MAIN_LINE}", json=body)
    assert error_locs(response) == ["lines[0].business_hours"]


@pytest.mark.parametrize(
    "body", [{"status": "lunch"}, {"status": 1}, {}, {"status": "busy", "x": 1}]
)
def test_bad_availability_body(bridge: Bridge, body: dict[str, Any]) -> None:
    response = bridge.as_user("alice", "PUT", f"{API}/users/alice/availability", json=body)
    assert response.status_code == 422
    assert any(loc.startswith("body") for loc in error_locs(response))
    assert bridge.as_user("alice", "GET", f"{API}/users/alice/availability").json()["status"] == (
        "available"
    )


# ---------------------------------------------------------------------------------------------
# 404: unknown ids on every route that takes one.
# ---------------------------------------------------------------------------------------------
GROUP_BODY = {"name": "G", "layers": [{"members": ["alice"]}]}
LINE_BODY = {"name": "L", "route_to": {"ring_group": "sales"}}
NOT_FOUND = [
    ("GET", "users/ghost", None, "no user 'ghost'"),
    ("PUT", "users/ghost", {"name": "Ghost"}, "no user 'ghost'"),
    ("PATCH", "users/ghost", {"name": "Ghost"}, "no user 'ghost'"),
    ("DELETE", "users/ghost", None, "no user 'ghost'"),
    ("POST", "users/ghost/pause", None, "no user 'ghost'"),
    ("POST", "users/ghost/activate", None, "no user 'ghost'"),
    ("POST", "users/ghost/suspend", None, "no user 'ghost'"),
    ("GET", "users/ghost/availability", None, "no user 'ghost'"),
    ("PUT", "users/ghost/availability", {"status": "busy"}, "no user 'ghost'"),
    ("POST", "users/ghost/login-as", None, "no user 'ghost'"),
    ("GET", "ring-groups/ghost", None, "no ring group 'ghost'"),
    ("PUT", "ring-groups/ghost", GROUP_BODY, "no ring group 'ghost'"),
    ("DELETE", "ring-groups/ghost", None, "no ring group 'ghost'"),
    ("GET", "lines/+15559999", None, "no line '+15559999'"),
    ("PUT", "lines/+15559999", LINE_BODY, "no line '+15559999'"),
    ("DELETE", "lines/+15559999", None, "no line '+15559999'"),
    ("GET", "lines/+15559999/route", None, "no line '+15559999'"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "detail"), NOT_FOUND, ids=[f"{m} {p}" for m, p, _, _ in NOT_FOUND]
)
def test_unknown_id(bridge: Bridge, method: str, path: str, body: Any, detail: str) -> None:
    kw = {} if body is None else {"json": body}
    response = refused(bridge, 404, method, f"{API}/{path}", **kw)
    assert response.json() == {"detail": detail}
    assert bridge.ctx.store.current.user("ghost") is None


def test_unknown_route(bridge: Bridge) -> None:
    response = bridge.as_user("olivia", "GET", f"{API}/no-such-thing")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


# ---------------------------------------------------------------------------------------------
# 409: duplicates, and deleting what something else still routes to.
# ---------------------------------------------------------------------------------------------
def test_duplicate_extension(bridge: Bridge) -> None:
    body = {"id": "zed", "name": "Zed", "extension": "101"}
    response = refused(bridge, 409, "POST", f"{API}/users", json=body)
    assert response.json()["detail"] == [
        {
            "loc": f"{NEW_USER}.extension",
            "msg": "duplicate extension '101' (also users[2])",
            "type": "duplicate",
        }
    ]


def test_duplicate_extension_by_patch(bridge: Bridge) -> None:
    response = refused(bridge, 409, "PATCH", f"{API}/users/alice", json={"extension": "102"})
    assert response.json()["detail"] == [
        {
            "loc": f"{BOB}.extension",
            "msg": f"duplicate extension '102' (also {ALICE})",
            "type": "duplicate",
        }
    ]


def test_duplicate_user_id(bridge: Bridge) -> None:
    response = refused(bridge, 409, "POST", f"{API}/users", json={"id": "alice", "name": "Two"})
    assert response.json()["detail"] == [
        {
            "loc": f"{NEW_USER}.id",
            "msg": "duplicate id 'alice' (also users[2])",
            "type": "duplicate",
        }
    ]
    assert bridge.ctx.store.current.user("alice").name == "Alice Doe"


def test_duplicate_line_number(bridge: Bridge) -> None:
    body = {"number": MAIN_LINE, "name": "Again", "route_to": {"ring_group": "support"}}
    response = refused(bridge, 409, "POST", f"{API}/lines", json=body)
    assert response.json()["detail"] == [
        {
            "loc": "lines[2].number",
            "msg": f"duplicate number '{MAIN_LINE}' (also lines[0])",
            "type": "duplicate",
        }
    ]


def test_duplicate_sip_username(bridge: Bridge) -> None:
    body = {"id": "zed", "name": "Zed", "sip": {"username": "102", "ha1_md5": "0" * 32}}
    response = refused(bridge, 409, "POST", f"{API}/users", json=body)
    assert response.json()["detail"] == [
        {
            "loc": f"{NEW_USER}.sip.username",
            "msg": "duplicate sip.username '102' (also users[3])",
            "type": "duplicate",
        }
    ]


def test_duplicate_ring_group_id(bridge: Bridge) -> None:
    body = {"id": "sales", "name": "Sales 2", "layers": [{"members": ["alice"]}]}
    response = refused(bridge, 409, "POST", f"{API}/ring-groups", json=body)
    assert error_for(response, "ring_groups[2].id")["type"] == "duplicate"


def test_a_duplicate_and_a_bad_reference_together_is_a_conflict(bridge: Bridge) -> None:
    body = {"id": "zed", "name": "Zed", "extension": "101", "lines": ["+15559999"]}
    response = refused(bridge, 409, "POST", f"{API}/users", json=body)
    assert {item["type"] for item in response.json()["detail"]} == {"duplicate", "reference"}


def test_delete_a_user_a_line_routes_to(bridge: Bridge) -> None:
    line = {"number": "+15550300", "name": "Alice direct", "route_to": {"user": "alice"}}
    assert bridge.as_user("olivia", "POST", f"{API}/lines", json=line).status_code == 201
    response = refused(bridge, 409, "DELETE", f"{API}/users/alice")
    assert response.json() == {
        "detail": "line +15550300 routes to 'alice': route it elsewhere first"
    }
    assert bridge.ctx.store.current.user("alice") is not None


@pytest.mark.parametrize(("group", "line"), [("sales", MAIN_LINE), ("support", SUPPORT_LINE)])
def test_delete_a_ring_group_a_line_routes_to(bridge: Bridge, group: str, line: str) -> None:
    response = refused(bridge, 409, "DELETE", f"{API}/ring-groups/{group}")
    assert response.json() == {
        "detail": f"line {line} routes to '{group}': route it elsewhere first"
    }
    assert bridge.ctx.store.current.group(group) is not None


def test_delete_a_ring_group_another_group_falls_back_to(bridge: Bridge) -> None:
    # support is routed to by a line; move that line to sales first so only the fallback
    # of sales still names support.
    moved = bridge.as_user(
        "olivia",
        "PUT",
        f"{API}/lines/{SUPPORT_LINE}",
        json={"name": "Support line", "route_to": {"ring_group": "sales"}},
    )
    assert moved.status_code == 200
    response = refused(bridge, 409, "DELETE", f"{API}/ring-groups/support")
    assert response.json() == {"detail": "ring group 'sales' falls back to 'support'"}


def test_delete_a_ring_group_a_closed_line_falls_back_to(bridge: Bridge) -> None:
    overflow = {"id": "overflow", "name": "Overflow", "layers": [{"members": ["carol"]}]}
    assert bridge.as_user("olivia", "POST", f"{API}/ring-groups", json=overflow).status_code == 201
    line = {
        "name": "Main line",
        "route_to": {"ring_group": "sales"},
        "closed_action": {"action": "ring_group", "ring_group": "overflow"},
    }
    assert bridge.as_user("olivia", "PUT", f"{API}/lines/{MAIN_LINE}", json=line).status_code == 200
    response = refused(bridge, 409, "DELETE", f"{API}/ring-groups/overflow")
    assert response.json() == {"detail": f"line {MAIN_LINE} falls back to 'overflow' when closed"}
