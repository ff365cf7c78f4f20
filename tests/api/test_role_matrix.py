"""The roles x actions matrix (docs ROLES.md), cell by cell, through the HTTP API.

The parametrization is built from `roles.MATRIX`, so a new action or role shows up here by
itself; the expected outcome of each cell comes from `ROLES_MD`, a hand copy of the table in
/work/shared/docs/ROLES.md, so a wrong cell in the code table fails the test.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest

from bridge.calls.registry import LiveCall
from bridge.directory import roles
from bridge.directory.model import AccountStatus, Permission, Role, User
from bridge.directory.roles import Action, Scope
from bridge.presence.model import Availability
from tests.api.helpers import (
    ACTOR,
    API,
    END_CLIENT,
    MAIN_LINE,
    MONDAY_10_NY,
    SUPPORT_LINE,
    assert_unchanged,
    demo_document,
    snapshot,
    user_ids,
)
from tests.conftest import Bridge

# ---------------------------------------------------------------------------------------------
# ROLES.md, "What each may do on the bridge", copied by hand (columns in the document's order).
# ---------------------------------------------------------------------------------------------
ROLES_MD_COLUMNS = (
    Role.ADMIN,
    Role.SUPERVISOR,
    Role.AGENT,
    Role.REP,
    Role.BILLING_ADMIN,
    Role.REPORTER,
    Role.END_CLIENT,
)
ROLES_MD: dict[Action, tuple[str, ...]] = {
    # change directory (users, groups, lines, routing)
    Action.CHANGE_DIRECTORY: ("yes", "no", "no", "no", "no", "no", "no"),
    # pause / activate a user
    Action.PAUSE_USER: ("yes", "yes", "no", "no", "no", "no", "no"),
    # suspend / delete a user
    Action.SUSPEND_USER: ("yes", "no", "no", "no", "no", "no", "no"),
    # read directory
    Action.READ_DIRECTORY: ("yes", "yes", "yes", "own lines", "no", "yes", "own lines"),
    # be rung for inbound calls
    Action.RECEIVE_CALLS: ("yes", "yes", "yes", "own lines", "no", "no", "no"),
    # set own availability
    Action.SET_OWN_AVAILABILITY: ("yes", "yes", "yes", "yes", "no", "no", "no"),
    # Not a row of ROLES.md. Setting *someone else's* availability is managing another user's
    # state, like the "pause / activate a user" row: admin and supervisor only.
    Action.SET_OTHERS_AVAILABILITY: ("yes", "yes", "no", "no", "no", "no", "no"),
    # see live calls
    Action.SEE_LIVE_CALLS: (
        "all",
        "all",
        "own (or all: visibility)",
        "own",
        "no",
        "all, read-only",
        "own lines, read-only",
    ),
    # listen / whisper / barge
    Action.MONITOR_CALLS: ("flag", "flag", "flag", "no", "no", "no", "no"),
    # pause / resume recording
    Action.CONTROL_RECORDING: (
        "any call",
        "any call",
        "own calls (flag)",
        "own calls (flag)",
        "no",
        "no",
        "no",
    ),
    # Test Routing (explain)
    Action.TEST_ROUTING: ("yes", "yes", "no", "no", "no", "yes", "no"),
    # metrics and reports
    Action.REPORTS: ("yes", "yes", "own", "own", "billing only", "yes", "own lines"),
    # log in as another user
    Action.LOGIN_AS: ("yes", "no", "no", "no", "no", "no", "no"),
}
# What each wording of the document means as a code scope.
ROLES_MD_WORDS: dict[str, Scope] = {
    "yes": Scope.ALL,
    "all": Scope.ALL,
    "any call": Scope.ALL,
    "no": Scope.NONE,
    "own": Scope.OWN,
    "own lines": Scope.OWN_LINES,
    "own lines, read-only": Scope.OWN_LINES,  # no call-control endpoint reaches them anyway
    "own (or all: visibility)": Scope.VISIBILITY,
    "all, read-only": Scope.READ_ONLY,
    "flag": Scope.FLAG,
    "own calls (flag)": Scope.OWN_FLAG,
    "billing only": Scope.BILLING,
}
EXPECTED: dict[Action, dict[Role, Scope]] = {
    action: {role: ROLES_MD_WORDS[word] for role, word in zip(ROLES_MD_COLUMNS, row, strict=True)}
    for action, row in ROLES_MD.items()
}

CELLS = [(action, role) for action, row in roles.MATRIX.items() for role in row]


def test_code_matrix_is_the_documented_matrix() -> None:
    assert set(roles.MATRIX) == set(EXPECTED) == set(Action)
    wrong = [
        f"{action.value}/{role.value}: code {roles.MATRIX[action].get(role)}, doc {scope}"
        for action, row in EXPECTED.items()
        for role, scope in row.items()
        if roles.MATRIX[action].get(role) is not scope
    ]
    assert wrong == []
    assert all(set(row) == set(Role) for row in roles.MATRIX.values())


def test_roles_that_receive_calls_follow_the_table() -> None:
    documented = {r for r, cell in EXPECTED[Action.RECEIVE_CALLS].items() if cell is not Scope.NONE}
    assert documented == {Role.ADMIN, Role.SUPERVISOR, Role.AGENT, Role.REP}
    assert frozenset(documented) == roles.ROLES_THAT_RECEIVE_CALLS


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def refusal_reason(role: Role, action: Action) -> str:
    return f"role '{role.value}' may not {action.value.replace('_', ' ')}"


def assert_refused(response: Any, role: Role, action: Action) -> None:
    assert response.status_code == 403, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert detail == refusal_reason(role, action)


def assert_status(responses: list[Any], expected: list[int]) -> None:
    assert [r.status_code for r in responses] == expected, [r.text for r in responses]


# ---------------------------------------------------------------------------------------------
# One check per action: exercise the endpoints as `actor` and assert what the cell says.
# ---------------------------------------------------------------------------------------------
def check_change_directory(b: Bridge, actor: str, role: Role, expected: Scope) -> None:
    before = snapshot(b)
    group = {"id": "qa", "name": "QA", "layers": [{"members": ["zed", "alice"]}]}
    responses = [
        b.as_user(actor, "POST", f"{API}/users", json={"id": "zed", "name": "Zed New"}),
        b.as_user(actor, "PATCH", f"{API}/users/bob", json={"name": "Robert Stone"}),
        b.as_user(actor, "POST", f"{API}/ring-groups", json=group),
        b.as_user(actor, "PUT", f"{API}/ring-groups/qa", json={**group, "name": "QA team"}),
        b.as_user(
            actor,
            "POST",
            f"{API}/lines",
            json={"number": "+15550300", "name": "QA line", "route_to": {"ring_group": "qa"}},
        ),
        b.as_user(
            actor,
            "PUT",
            f"{API}/lines/{SUPPORT_LINE}",
            json={"name": "Support (renamed)", "route_to": {"ring_group": "support"}},
        ),
        b.as_user(actor, "DELETE", f"{API}/lines/{MAIN_LINE}"),
        b.as_user(actor, "DELETE", f"{API}/ring-groups/sales"),
        b.as_user(actor, "POST", f"{API}/directory/reload"),
    ]
    if expected is Scope.NONE:
        for response in responses:
            assert_refused(response, role, Action.CHANGE_DIRECTORY)
        assert_unchanged(b, before)
        return
    assert expected is Scope.ALL
    assert_status(responses, [201, 200, 201, 200, 201, 200, 204, 204, 200])
    assert responses[0].json()["id"] == "zed"
    assert responses[1].json()["name"] == "Robert Stone"
    assert responses[3].json()["name"] == "QA team"
    assert responses[5].json()["name"] == "Support (renamed)"
    # eight changes, then a reload of the file they were written to
    assert b.ctx.store.current.version == before.version + 9
    assert responses[8].json()["version"] == before.version + 9
    saved = b.directory_file()
    assert {g["id"] for g in saved["ring_groups"]} == {"qa", "support"}
    assert {line["number"]: line["name"] for line in saved["lines"]} == {
        SUPPORT_LINE: "Support (renamed)",
        "+15550300": "QA line",
    }
    assert next(u for u in saved["users"] if u["id"] == "bob")["name"] == "Robert Stone"


def check_pause_user(b: Bridge, actor: str, role: Role, expected: Scope) -> None:
    before = snapshot(b)
    responses = [
        b.as_user(actor, "POST", f"{API}/users/bob/pause"),
        b.as_user(actor, "POST", f"{API}/users/dave/activate"),  # paused in the demo
    ]
    if expected is Scope.NONE:
        for response in responses:
            assert_refused(response, role, Action.PAUSE_USER)
        assert_unchanged(b, before)
        assert b.ctx.store.current.user("dave").status is AccountStatus.PAUSED
        return
    assert_status(responses, [200, 200])
    assert responses[0].json()["status"] == "paused"
    assert responses[1].json()["status"] == "active"
    assert b.ctx.store.current.user("bob").status is AccountStatus.PAUSED
    assert b.ctx.store.current.user("dave").status is AccountStatus.ACTIVE
    again = b.as_user(actor, "POST", f"{API}/users/bob/activate")
    assert again.status_code == 200
    assert again.json()["status"] == "active"
    assert b.ctx.store.current.version == before.version + 3


def check_suspend_user(b: Bridge, actor: str, role: Role, expected: Scope) -> None:
    before = snapshot(b)
    responses = [
        b.as_user(actor, "POST", f"{API}/users/bob/suspend"),
        b.as_user(actor, "DELETE", f"{API}/users/carol"),
    ]
    if expected is Scope.NONE:
        for response in responses:
            assert_refused(response, role, Action.SUSPEND_USER)
        assert_unchanged(b, before)
        return
    assert_status(responses, [200, 204])
    assert responses[0].json()["status"] == "suspended"
    assert responses[1].content == b""
    assert b.ctx.store.current.user("bob").status is AccountStatus.SUSPENDED
    assert b.ctx.store.current.user("carol") is None
    assert "carol" not in {u["id"] for u in b.directory_file()["users"]}
    assert b.ctx.store.current.version == before.version + 2


def check_read_directory(b: Bridge, actor: str, role: Role, expected: Scope) -> None:
    users = b.as_user(actor, "GET", f"{API}/users")
    groups = b.as_user(actor, "GET", f"{API}/ring-groups")
    lines = b.as_user(actor, "GET", f"{API}/lines")
    if expected is Scope.NONE:
        for response in (users, groups, lines):
            assert_refused(response, role, Action.READ_DIRECTORY)
        own = b.as_user(actor, "GET", f"{API}/users/{actor}")
        assert_refused(own, role, Action.READ_DIRECTORY)
        return
    assert_status([users, groups, lines], [200, 200, 200])
    directory = b.ctx.store.current
    if expected is Scope.ALL:
        assert user_ids(users) == {u.id for u in directory.users}
        assert len(users.json()) == 11  # the demo's ten and the end client
        assert {g["id"] for g in groups.json()} == {"sales", "support"}
        assert {line["number"] for line in lines.json()} == {MAIN_LINE, SUPPORT_LINE}
        assert b.as_user(actor, "GET", f"{API}/users/bob").json()["id"] == "bob"
        assert b.as_user(actor, "GET", f"{API}/ring-groups/sales").status_code == 200
        assert b.as_user(actor, "GET", f"{API}/lines/{MAIN_LINE}").status_code == 200
        return
    assert expected is Scope.OWN_LINES
    assert directory.user(actor).lines == (SUPPORT_LINE,)
    # Only themselves, only the lines listed on them and the groups those lines route to.
    assert user_ids(users) == {actor}
    assert [g["id"] for g in groups.json()] == ["support"]
    assert [line["number"] for line in lines.json()] == [SUPPORT_LINE]
    assert b.as_user(actor, "GET", f"{API}/users/{actor}").status_code == 200
    assert b.as_user(actor, "GET", f"{API}/ring-groups/support").status_code == 200
    assert b.as_user(actor, "GET", f"{API}/lines/{SUPPORT_LINE}").status_code == 200
    for hidden in ("users/bob", "ring-groups/sales", f"lines/{MAIN_LINE}"):
        response = b.as_user(actor, "GET", f"{API}/{hidden}")
        assert response.status_code == 404, hidden
        assert response.json()["detail"].startswith("no ")


def check_receive_calls(b: Bridge, actor: str, role: Role, expected: Scope) -> None:
    # No call endpoint yet: check the table directly, then the routing engine's use of it
    # through Test Routing (a member whose role may not take the call says so).
    user = b.ctx.store.current.user(actor)
    scope, reason = roles.allowed(user, Action.RECEIVE_CALLS)
    assert scope is expected
    assert reason == (
        refusal_reason(role, Action.RECEIVE_CALLS) if expected is Scope.NONE else None
    )

    group = {"id": "probe", "name": "Probe", "layers": [{"members": [actor]}]}
    other_line = {"number": "+15550300", "name": "Probe", "route_to": {"ring_group": "probe"}}
    own_line = {"name": "Support line", "route_to": {"ring_group": "probe"}}
    assert_status(
        [
            b.as_user("olivia", "POST", f"{API}/ring-groups", json=group),
            b.as_user("olivia", "POST", f"{API}/lines", json=other_line),
            b.as_user("olivia", "PUT", f"{API}/lines/{SUPPORT_LINE}", json=own_line),
        ],
        [201, 201, 200],
    )

    def member_reason(number: str) -> str | None:
        response = b.as_user(
            "olivia",
            "GET",
            f"{API}/lines/{number}/route",
            params={"at": MONDAY_10_NY, "presence": "assume_available"},
        )
        assert response.status_code == 200, response.text
        (member,) = response.json()["layers"][0]["members"]
        assert member["user_id"] == actor
        return member["reason"]

    on_own_line, on_other_line = member_reason(SUPPORT_LINE), member_reason("+15550300")
    if expected is Scope.NONE:
        assert on_own_line == on_other_line == "role_cannot_receive"
    elif expected is Scope.OWN_LINES:
        assert on_own_line is None  # frank's own line
        assert on_other_line == "role_cannot_receive"
    else:
        # sam answers by 'will not answer': refused for that, not for his role
        assert on_own_line == on_other_line == ("will_not_answer" if actor == "sam" else None)


def check_set_own_availability(b: Bridge, actor: str, role: Role, expected: Scope) -> None:
    response = b.as_user(actor, "PUT", f"{API}/users/{actor}/availability", json={"status": "busy"})
    if expected is Scope.NONE:
        assert_refused(response, role, Action.SET_OWN_AVAILABILITY)
        assert b.ctx.presence.presence_of(actor).availability is Availability.AVAILABLE
        return
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == actor
    assert response.json()["status"] == "busy"
    assert b.ctx.presence.presence_of(actor).availability is Availability.BUSY
    read = b.as_user(actor, "GET", f"{API}/users/{actor}/availability")
    assert read.json()["status"] == "busy"


def check_set_others_availability(b: Bridge, actor: str, role: Role, expected: Scope) -> None:
    assert actor != "bob"
    response = b.as_user(actor, "PUT", f"{API}/users/bob/availability", json={"status": "offline"})
    if expected is Scope.NONE:
        assert_refused(response, role, Action.SET_OTHERS_AVAILABILITY)
        assert b.ctx.presence.presence_of("bob").availability is Availability.AVAILABLE
        return
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == "bob"
    assert response.json()["status"] == "offline"
    assert b.ctx.presence.presence_of("bob").availability is Availability.OFFLINE


STARTED = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
LIVE_CALLS = [
    LiveCall("call-a", "carrier", MAIN_LINE, "+15557770001", STARTED, ringing={"alice", "bob"}),
    LiveCall(
        "call-b", "carrier", MAIN_LINE, "+15557770002", STARTED, "answered", answered_by="carol"
    ),
    LiveCall("call-c", "sip", SUPPORT_LINE, "+15557770003", STARTED, ringing={"erin", "frank"}),
    LiveCall(
        "call-d", "sip", SUPPORT_LINE, "+15557770004", STARTED, "answered", answered_by="olivia"
    ),
    LiveCall("call-e", "ws", None, "100", STARTED, "answered", answered_by="sam"),
]
ALL_CALLS = {"call-a", "call-b", "call-c", "call-d", "call-e"}
# Which calls each actor sees, worked out by hand from the table.
VISIBLE_CALLS: dict[str, set[str]] = {
    "olivia": ALL_CALLS,  # all
    "sam": ALL_CALLS,  # all
    "alice": {"call-a"},  # own: rung for call-a (call_visibility owned_only)
    "frank": {"call-c"},  # own: rung for call-c; call-d is on his line but not his
    "rita": ALL_CALLS,  # all, read-only
    "cleo": {"call-c", "call-d"},  # the calls on her line +15550200
}


def add_live_calls(b: Bridge) -> None:
    for call in LIVE_CALLS:
        b.ctx.calls.add(call)


def check_see_live_calls(b: Bridge, actor: str, role: Role, expected: Scope) -> None:
    add_live_calls(b)
    response = b.as_user(actor, "GET", f"{API}/calls")
    if expected is Scope.NONE:
        assert_refused(response, role, Action.SEE_LIVE_CALLS)
        return
    assert response.status_code == 200, response.text
    calls = response.json()
    assert {c["call_id"] for c in calls} == VISIBLE_CALLS[actor]
    assert len(calls) == len(VISIBLE_CALLS[actor])
    for call in calls:
        assert set(call) == {
            "call_id",
            "path",
            "line",
            "caller",
            "started_at",
            "state",
            "ringing",
            "answered_by",
            "monitors",
            "recording",
        }
        assert call["started_at"] == STARTED.isoformat()
        assert call["monitors"] == {} and call["recording"] is None


def with_permissions(user: User, permissions: set[Permission]) -> User:
    """The same user with other permission flags (validated like a directory entry)."""
    return User.model_validate({**user.model_dump(), "permissions": sorted(permissions)})


def check_without_endpoint(
    b: Bridge, actor: str, role: Role, expected: Scope, action: Action
) -> None:
    # No endpoint yet: the table, resolved against the user's permission flags.
    user = b.ctx.store.current.user(actor)
    flag = roles.FLAGS.get(action)
    with_flag = with_permissions(user, {*user.permissions, *([flag] if flag else [])})
    without = with_permissions(user, set())
    if expected is Scope.NONE:
        for who in (user, with_flag, without):
            assert roles.allowed(who, action) == (Scope.NONE, refusal_reason(role, action))
        return
    if expected in (Scope.FLAG, Scope.OWN_FLAG):
        assert flag is not None, f"{action} has FLAG cells but no flag in roles.FLAGS"
        assert roles.allowed(with_flag, action) == (expected, None)
        assert roles.allowed(without, action) == (
            Scope.NONE,
            f"user '{actor}' lacks the '{flag.value}' permission",
        )
        has_flag = flag in user.permissions
        assert roles.allowed(user, action)[0] is (expected if has_flag else Scope.NONE)
        return
    # Not a flag cell: the flags change nothing.
    for who in (user, with_flag, without):
        assert roles.allowed(who, action) == (expected, None)


def check_monitor_calls(b: Bridge, actor: str, role: Role, expected: Scope) -> None:
    check_without_endpoint(b, actor, role, expected, Action.MONITOR_CALLS)


def check_control_recording(b: Bridge, actor: str, role: Role, expected: Scope) -> None:
    check_without_endpoint(b, actor, role, expected, Action.CONTROL_RECORDING)


def check_reports(b: Bridge, actor: str, role: Role, expected: Scope) -> None:
    check_without_endpoint(b, actor, role, expected, Action.REPORTS)


def check_test_routing(b: Bridge, actor: str, role: Role, expected: Scope) -> None:
    response = b.as_user(
        actor, "GET", f"{API}/lines/{MAIN_LINE}/route", params={"at": MONDAY_10_NY}
    )
    if expected is Scope.NONE:
        assert_refused(response, role, Action.TEST_ROUTING)
        return
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["line"] == MAIN_LINE
    assert plan["target"] == {"kind": "ring_group", "id": "sales", "name": "Sales"}
    assert plan["outcome"] == "ring"
    assert plan["directory_version"] == b.ctx.store.current.version


def check_login_as(b: Bridge, actor: str, role: Role, expected: Scope) -> None:
    response = b.as_user(actor, "POST", f"{API}/users/bob/login-as")
    if expected is Scope.NONE:
        assert_refused(response, role, Action.LOGIN_AS)
        assert "token" not in response.json()
        return
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == "bob"
    assert body["expires_in"] == 3600
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["sub"] == "bob"
    assert claims["act"] == {"sub": actor}
    me = b.client.get(f"{API}/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status_code == 200
    assert me.json()["id"] == "bob"
    assert me.json()["role"] == "agent"


CHECKS: dict[Action, Callable[[Bridge, str, Role, Scope], None]] = {
    Action.CHANGE_DIRECTORY: check_change_directory,
    Action.PAUSE_USER: check_pause_user,
    Action.SUSPEND_USER: check_suspend_user,
    Action.READ_DIRECTORY: check_read_directory,
    Action.RECEIVE_CALLS: check_receive_calls,
    Action.SET_OWN_AVAILABILITY: check_set_own_availability,
    Action.SET_OTHERS_AVAILABILITY: check_set_others_availability,
    Action.SEE_LIVE_CALLS: check_see_live_calls,
    Action.MONITOR_CALLS: check_monitor_calls,
    Action.CONTROL_RECORDING: check_control_recording,
    Action.TEST_ROUTING: check_test_routing,
    Action.REPORTS: check_reports,
    Action.LOGIN_AS: check_login_as,
}


def test_every_action_has_a_check_and_every_role_an_actor() -> None:
    assert set(CHECKS) == set(roles.MATRIX)
    assert set(ACTOR) == set(Role)


@pytest.mark.parametrize(("action", "role"), CELLS, ids=[f"{a.value}-{r.value}" for a, r in CELLS])
def test_matrix_cell(api: Bridge, action: Action, role: Role) -> None:
    actor = ACTOR[role]
    assert api.ctx.store.current.user(actor).role is role
    CHECKS[action](api, actor, role, EXPECTED[action][role])


# ---------------------------------------------------------------------------------------------
# Cells whose scope depends on the user, not only the role.
# ---------------------------------------------------------------------------------------------
def test_agent_with_visibility_everything_sees_all_live_calls(api: Bridge) -> None:
    add_live_calls(api)
    assert api.ctx.store.current.user("erin").call_visibility.value == "everything"
    erin = api.as_user("erin", "GET", f"{API}/calls")
    assert erin.status_code == 200
    assert {c["call_id"] for c in erin.json()} == ALL_CALLS
    bob = api.as_user("bob", "GET", f"{API}/calls")  # owned_only: rung for call-a
    assert {c["call_id"] for c in bob.json()} == {"call-a"}
    carol = api.as_user("carol", "GET", f"{API}/calls")  # owned_only: answered call-b
    assert {c["call_id"] for c in carol.json()} == {"call-b"}

    patched = api.as_user(
        "olivia", "PATCH", f"{API}/users/carol", json={"call_visibility": "everything"}
    )
    assert patched.status_code == 200
    carol = api.as_user("carol", "GET", f"{API}/calls")
    assert {c["call_id"] for c in carol.json()} == ALL_CALLS


def test_own_lines_follow_the_users_own_lines(make_bridge: Callable[..., Bridge]) -> None:
    """An end client on the main line sees the main line and sales, not frank's line."""
    document = demo_document()
    document["users"].append({**END_CLIENT, "lines": [MAIN_LINE]})
    b = make_bridge(directory=document)
    lines = b.as_user("cleo", "GET", f"{API}/lines")
    groups = b.as_user("cleo", "GET", f"{API}/ring-groups")
    assert [line["number"] for line in lines.json()] == [MAIN_LINE]
    assert [g["id"] for g in groups.json()] == ["sales"]
    assert b.as_user("cleo", "GET", f"{API}/lines/{SUPPORT_LINE}").status_code == 404
    add_live_calls(b)
    calls = b.as_user("cleo", "GET", f"{API}/calls")
    assert {c["call_id"] for c in calls.json()} == {"call-a", "call-b"}
    # frank, the rep, still only sees his support line
    frank = b.as_user("frank", "GET", f"{API}/lines")
    assert [line["number"] for line in frank.json()] == [SUPPORT_LINE]


def test_reading_someone_elses_availability_needs_full_read(api: Bridge) -> None:
    assert api.as_user("alice", "GET", f"{API}/users/bob/availability").status_code == 200
    for actor, role in (("frank", Role.REP), ("cleo", Role.END_CLIENT)):
        response = api.as_user(actor, "GET", f"{API}/users/bob/availability")
        assert response.status_code == 403, role
        assert response.json()["detail"] == "only your own availability"
        own = api.as_user(actor, "GET", f"{API}/users/{actor}/availability")
        assert own.status_code == 200
        assert own.json()["user_id"] == actor
    refused = api.as_user("bill", "GET", f"{API}/users/bob/availability")
    assert_refused(refused, Role.BILLING_ADMIN, Action.READ_DIRECTORY)
