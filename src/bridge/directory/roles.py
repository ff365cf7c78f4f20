"""Roles x actions: the one place that says who may do what (from docs/ROLES.md).

Every API route and WebSocket frame asks `scope(role, action)` or `allowed(user, action)`;
nothing else in the code compares role names. The test suite walks this table cell by cell
through the HTTP API.
"""

from __future__ import annotations

from enum import StrEnum

from bridge.directory.model import Permission, Role, User


class Action(StrEnum):
    CHANGE_DIRECTORY = "change_directory"  # users, groups, lines, routing
    PAUSE_USER = "pause_user"  # pause / activate
    SUSPEND_USER = "suspend_user"  # suspend / delete
    READ_DIRECTORY = "read_directory"
    RECEIVE_CALLS = "receive_calls"
    SET_OWN_AVAILABILITY = "set_own_availability"
    SET_OTHERS_AVAILABILITY = "set_others_availability"
    SEE_LIVE_CALLS = "see_live_calls"
    MONITOR_CALLS = "monitor_calls"  # listen / whisper / barge
    CONTROL_RECORDING = "control_recording"  # pause / resume recording
    TEST_ROUTING = "test_routing"
    REPORTS = "reports"
    LOGIN_AS = "login_as"


class Scope(StrEnum):
    """How far an allowed action reaches."""

    NONE = "none"  # not allowed
    ALL = "all"  # anything
    OWN = "own"  # the user's own calls / data
    OWN_LINES = "own_lines"  # only the lines listed on the user (rep, end_client)
    VISIBILITY = "visibility"  # own, or all when the user's call_visibility is 'everything'
    FLAG = "flag"  # only with the user's permission flag (see FLAGS)
    OWN_FLAG = "own_flag"  # own calls, and only with the permission flag
    READ_ONLY = "read_only"  # see everything, change nothing
    BILLING = "billing"  # billing reports only


# Which permission flag a FLAG / OWN_FLAG cell needs.
FLAGS: dict[Action, Permission] = {
    Action.MONITOR_CALLS: Permission.BARGE_WHISPER,
    Action.CONTROL_RECORDING: Permission.RECORDING_CONTROL,
}

_A, _S, _AG, _R, _B, _RP, _E = (
    Role.ADMIN,
    Role.SUPERVISOR,
    Role.AGENT,
    Role.REP,
    Role.BILLING_ADMIN,
    Role.REPORTER,
    Role.END_CLIENT,
)
N, ALL, OWN, LINES = Scope.NONE, Scope.ALL, Scope.OWN, Scope.OWN_LINES

# Columns: admin, supervisor, agent, rep, billing_admin, reporter, end_client
_TABLE: dict[Action, tuple[Scope, ...]] = {
    Action.CHANGE_DIRECTORY: (ALL, N, N, N, N, N, N),
    Action.PAUSE_USER: (ALL, ALL, N, N, N, N, N),
    Action.SUSPEND_USER: (ALL, N, N, N, N, N, N),
    Action.READ_DIRECTORY: (ALL, ALL, ALL, LINES, N, ALL, LINES),
    Action.RECEIVE_CALLS: (ALL, ALL, ALL, LINES, N, N, N),
    Action.SET_OWN_AVAILABILITY: (ALL, ALL, ALL, ALL, N, N, N),
    Action.SET_OTHERS_AVAILABILITY: (ALL, ALL, N, N, N, N, N),
    Action.SEE_LIVE_CALLS: (ALL, ALL, Scope.VISIBILITY, OWN, N, Scope.READ_ONLY, LINES),
    Action.MONITOR_CALLS: (Scope.FLAG, Scope.FLAG, Scope.FLAG, N, N, N, N),
    Action.CONTROL_RECORDING: (ALL, ALL, Scope.OWN_FLAG, Scope.OWN_FLAG, N, N, N),
    Action.TEST_ROUTING: (ALL, ALL, N, N, N, ALL, N),
    Action.REPORTS: (ALL, ALL, OWN, OWN, Scope.BILLING, ALL, LINES),
    Action.LOGIN_AS: (ALL, N, N, N, N, N, N),
}
_COLUMNS: tuple[Role, ...] = (_A, _S, _AG, _R, _B, _RP, _E)

MATRIX: dict[Action, dict[Role, Scope]] = {
    action: dict(zip(_COLUMNS, row, strict=True)) for action, row in _TABLE.items()
}


def scope(role: Role, action: Action) -> Scope:
    return MATRIX[action][role]


def allowed(user: User, action: Action) -> tuple[Scope, str | None]:
    """The scope this user has for `action`, and when refused, a reason fit for a 403 body.

    FLAG cells resolve here against the user's permission flags; a user without the flag is
    refused with the flag named."""
    cell = scope(user.role, action)
    if cell is Scope.NONE:
        return cell, f"role {user.role.value!r} may not {action.value.replace('_', ' ')}"
    flag = FLAGS.get(action)
    if cell in (Scope.FLAG, Scope.OWN_FLAG) and flag is not None and flag not in user.permissions:
        return Scope.NONE, f"user {user.id!r} lacks the {flag.value!r} permission"
    if cell is Scope.VISIBILITY:
        return (Scope.ALL if user.call_visibility.value == "everything" else Scope.OWN), None
    return cell, None


ROLES_THAT_RECEIVE_CALLS = frozenset(r for r in Role if scope(r, Action.RECEIVE_CALLS) is not N)
