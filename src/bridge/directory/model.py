"""The directory: users, ring groups and lines, as immutable validated models.

A `Directory` instance is a snapshot: frozen, versioned, safe to hand to the routing core and
to read from any task while the store swaps in a new one. Field-level rules live on the models
(pydantic); rules that span the whole directory (references, duplicates) live in `problems()`,
so the loader and the API report both the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from bridge.directory.schedule import ScheduleError, WeekRanges, parse_week
from bridge.text import NOT_IN_XML

E164_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
ID_RE = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Role(StrEnum):
    ADMIN = "admin"
    SUPERVISOR = "supervisor"
    AGENT = "agent"
    REP = "rep"
    BILLING_ADMIN = "billing_admin"
    REPORTER = "reporter"
    END_CLIENT = "end_client"


class AnswerBy(StrEnum):
    APPS = "apps"
    IP_PHONE = "ip_phone"
    PHONE_NUMBER = "phone_number"
    WILL_NOT_ANSWER = "will_not_answer"


class AccountStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    SUSPENDED = "suspended"


class Permission(StrEnum):
    BARGE_WHISPER = "barge_whisper"
    RECORDING_CONTROL = "recording_control"
    BROADCAST = "broadcast"


class CallVisibility(StrEnum):
    """Which live calls an agent sees: only their own, or everything (the product's
    'communications visibility')."""

    OWNED_ONLY = "owned_only"
    EVERYTHING = "everything"


class Strategy(StrEnum):
    ALL = "all"
    ROUND_ROBIN = "round_robin"
    LONGEST_IDLE = "longest_idle"
    RANDOM = "random"


class FallbackAction(StrEnum):
    VOICEMAIL = "voicemail"
    FORWARD = "forward"
    RING_GROUP = "ring_group"
    HANGUP = "hangup"


def _e164(value: str) -> str:
    if not E164_RE.match(value):
        raise ValueError(f"{value!r} is not an E.164 number (like +15550001001)")
    return value


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # (OSError: "America" is a folder of the zone database, 300 letters a name too long)
        raise ValueError(f"unknown time zone {value[:64]!r}") from None
    return value


def _email(value: str) -> str:
    if not EMAIL_RE.match(value):
        raise ValueError(f"{value!r} is not an email address")
    return value


def _hours(value: dict[str, list[str]]) -> dict[str, list[str]]:
    try:
        parse_week(value)
    except ScheduleError as exc:
        raise ValueError(str(exc)) from None
    return value


def _spoken(value: str) -> str:
    """Names and prompts are said to callers and shown in the console: a character that XML
    cannot carry made every later TwiML answer with it unreadable to the carrier."""
    bad = NOT_IN_XML.search(value)
    if bad is not None:
        raise ValueError(f"character {bad.group()!r} at {bad.start()} cannot be said or shown")
    return value


E164 = Annotated[str, AfterValidator(_e164)]
TimeZoneName = Annotated[str, AfterValidator(_time_zone)]
Email = Annotated[str, AfterValidator(_email)]
WeeklyHours = Annotated[dict[str, list[str]], AfterValidator(_hours)]
# Sorted and without repeats, so the saved file is stable.
Permissions = Annotated[
    tuple[Permission, ...], AfterValidator(lambda v: tuple(sorted(set(v), key=lambda p: p.value)))
]
Identifier = Annotated[str, Field(pattern=ID_RE)]
HexMd5 = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
HexSha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# An argon2id hash in its PHC string form, as `bridge.passwords` makes it (never a password).
ARGON2ID_RE = r"^\$argon2id\$v=19\$m=[0-9]+,t=[0-9]+,p=[0-9]+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$"
Argon2idHash = Annotated[str, Field(pattern=ARGON2ID_RE)]


class _Frozen(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        use_enum_values=False,
        ignored_types=(cached_property,),
    )


class SipCredentials(_Frozen):
    """Desk-phone digest credentials, as HA1 values only (never a plain password)."""

    username: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.+-]+$")]
    ha1_md5: HexMd5 | None = None
    ha1_sha256: HexSha256 | None = None

    @model_validator(mode="after")
    def _one_hash(self) -> SipCredentials:
        if self.ha1_md5 is None and self.ha1_sha256 is None:
            raise ValueError("give ha1_md5 and/or ha1_sha256 (see `bridge hash-password`)")
        return self


class DialClass(StrEnum):
    """What a number dialled from a desk phone is (bridge.routing.dialing)."""

    INTERNAL = "internal"  # an extension or SIP username of the directory
    EMERGENCY = "emergency"  # always allowed
    NATIONAL = "national"
    INTERNATIONAL = "international"
    PREMIUM = "premium"


DEFAULT_DIAL = (DialClass.INTERNAL, DialClass.EMERGENCY, DialClass.NATIONAL)
DialPrefix = Annotated[str, Field(pattern=r"^\+[0-9]{1,15}$")]


class DialPlan(_Frozen):
    """Where desk phones may call (toll-fraud rules): how a dialled number becomes E.164, what
    class it is, which classes each role (or user) may call, and how many calls out a user
    may have at once. International and premium are blocked unless allowed."""

    country_code: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,2}$")] = "1"
    national_prefix: Annotated[str, Field(pattern=r"^[0-9]{0,3}$")] = "1"  # "0" in most of Europe
    international_prefix: Annotated[str, Field(pattern=r"^[0-9]{0,4}$")] = "011"  # "00"
    emergency: tuple[Annotated[str, Field(pattern=r"^[0-9]{2,6}$")], ...] = ("911", "112")
    # E.164 prefixes classed premium (charged to the caller at a high rate).
    premium: tuple[DialPrefix, ...] = ("+1900", "+1976")
    # Classes each role may call; a role not listed gets internal, emergency and national.
    allow: dict[Role, tuple[DialClass, ...]] = {}
    # Calls out (to numbers) a user may have at once; 0: no limit.
    max_outbound_per_user: Annotated[int, Field(ge=0, le=1000)] = 2

    def allowed(self, user: User) -> tuple[DialClass, ...]:
        if user.dial is not None:
            return (*user.dial, DialClass.EMERGENCY)
        return (*self.allow.get(user.role, DEFAULT_DIAL), DialClass.EMERGENCY)


class User(_Frozen):
    id: Identifier
    name: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_spoken)]
    email: Email | None = None
    role: Role = Role.AGENT
    extension: Annotated[str, Field(pattern=r"^[0-9]{2,8}$")] | None = None
    answer_by: AnswerBy = AnswerBy.APPS
    phone_number: E164 | None = None
    # Carrier path: a call forwarded to `phone_number` connects only once the callee presses 1,
    # so a voicemail box or a carrier announcement that picks up does not count as an answer.
    confirm_answer: bool = False
    sip: SipCredentials | None = None
    # The console password, as an argon2id hash (set with `PUT /api/v1/users/{id}/password`
    # or `bridge set-password`). Never shown by the API, never in a repr or a log line.
    # Not in the API's schema either: bodies may not carry it.
    password_hash: SkipJsonSchema[Argon2idHash | None] = Field(default=None, repr=False)
    working_hours: WeeklyHours | None = None
    timezone: TimeZoneName | None = None
    wrap_up_seconds: Annotated[int, Field(ge=0, le=3600)] = 0
    ring_seconds: Annotated[int, Field(ge=5, le=600)] = 30
    backup_number: E164 | None = None
    voicemail_prompt: Annotated[str, Field(max_length=1000), AfterValidator(_spoken)] | None = None
    personal_line: E164 | None = None
    available_by_default: bool = True
    permissions: Permissions = ()
    call_visibility: CallVisibility = CallVisibility.OWNED_ONLY
    status: AccountStatus = AccountStatus.ACTIVE
    lines: tuple[E164, ...] = ()
    # Where this user's desk phones may call (overrides the role's, `dialing.allow`).
    dial: tuple[DialClass, ...] | None = None

    @cached_property
    def working_week(self) -> WeekRanges | None:
        return None if self.working_hours is None else parse_week(self.working_hours)


class Layer(_Frozen):
    strategy: Strategy = Strategy.ALL
    timeout_seconds: Annotated[int, Field(ge=1, le=600)] = 20
    # Sequential strategies ring one member at a time for this long, within the layer timeout.
    ring_each_seconds: Annotated[int, Field(ge=1, le=600)] | None = None
    members: tuple[Identifier, ...]

    @model_validator(mode="after")
    def _unique_members(self) -> Layer:
        seen: set[str] = set()
        for member in self.members:
            if member in seen:
                raise ValueError(f"member {member!r} is listed twice in this layer")
            seen.add(member)
        return self


class Fallback(_Frozen):
    """What happens after the last layer (or, on a line, while it is closed)."""

    action: FallbackAction
    number: E164 | None = None
    ring_group: Identifier | None = None
    prompt: Annotated[str, Field(max_length=1000), AfterValidator(_spoken)] | None = None

    @model_validator(mode="after")
    def _target(self) -> Fallback:
        if self.action is FallbackAction.FORWARD and self.number is None:
            raise ValueError("action 'forward' needs a number")
        if self.action is FallbackAction.RING_GROUP and self.ring_group is None:
            raise ValueError("action 'ring_group' needs a ring_group id")
        if self.action is not FallbackAction.FORWARD and self.number is not None:
            raise ValueError(f"number is only used with action 'forward', not {self.action}")
        if self.action is not FallbackAction.RING_GROUP and self.ring_group is not None:
            raise ValueError(f"ring_group is only used with action 'ring_group', not {self.action}")
        return self


VOICEMAIL = Fallback(action=FallbackAction.VOICEMAIL)


class RingGroup(_Frozen):
    id: Identifier
    name: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_spoken)]
    layers: Annotated[tuple[Layer, ...], Field(min_length=1)]
    fallback: Fallback = VOICEMAIL

    def member_ids(self) -> Iterator[str]:
        for layer in self.layers:
            yield from layer.members


class RouteTarget(_Frozen):
    ring_group: Identifier | None = None
    user: Identifier | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> RouteTarget:
        if (self.ring_group is None) == (self.user is None):
            raise ValueError("give exactly one of ring_group or user")
        return self


class Line(_Frozen):
    number: E164
    name: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_spoken)]
    route_to: RouteTarget
    business_hours: WeeklyHours | None = None
    timezone: TimeZoneName | None = None
    closed_action: Fallback = VOICEMAIL
    voicemail_prompt: Annotated[str, Field(max_length=1000), AfterValidator(_spoken)] | None = None
    # Carrier path: every leg to a number on this line (members' phone numbers, forward
    # fallbacks, Backup Routing) asks the callee to press 1 before it connects.
    confirm_answer: bool = False

    @cached_property
    def business_week(self) -> WeekRanges | None:
        return None if self.business_hours is None else parse_week(self.business_hours)


class Problem(BaseModel):
    """One thing wrong with a directory: where (a dotted path) and why.

    `kind` lets the API pick the status: a duplicate is a conflict (409), anything else is an
    invalid body (422)."""

    model_config = ConfigDict(frozen=True)

    path: str
    reason: str
    kind: Literal["duplicate", "reference", "invalid"] = "invalid"

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class Directory(_Frozen):
    """One immutable snapshot of the whole directory."""

    timezone: TimeZoneName = "UTC"
    users: tuple[User, ...] = ()
    ring_groups: tuple[RingGroup, ...] = ()
    lines: tuple[Line, ...] = ()
    dialing: DialPlan = DialPlan()
    # Bumped by the store on every accepted change; not part of the YAML file.
    version: int = Field(default=0, exclude=True)

    @cached_property
    def users_by_id(self) -> dict[str, User]:
        return {user.id: user for user in self.users}

    @cached_property
    def users_by_extension(self) -> dict[str, User]:
        return {user.extension: user for user in self.users if user.extension is not None}

    @cached_property
    def users_by_sip_username(self) -> dict[str, User]:
        return {user.sip.username: user for user in self.users if user.sip is not None}

    @cached_property
    def groups_by_id(self) -> dict[str, RingGroup]:
        return {group.id: group for group in self.ring_groups}

    @cached_property
    def lines_by_number(self) -> dict[str, Line]:
        return {line.number: line for line in self.lines}

    @cached_property
    def derived(self) -> dict[str, Any]:
        """Scratch space for values other layers derive from this snapshot (routing keeps its
        per-member memo here), so they live and die with the snapshot."""
        return {}

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def user(self, user_id: str) -> User | None:
        return self.users_by_id.get(user_id)

    def group(self, group_id: str) -> RingGroup | None:
        return self.groups_by_id.get(group_id)

    def line(self, number: str) -> Line | None:
        return self.lines_by_number.get(normalize_number(number))

    def zone_of(self, name: str | None) -> ZoneInfo:
        return self.zone if name is None else _zone(name)

    def to_document(self) -> dict[str, Any]:
        """The YAML-shaped dict, omitting defaults so a saved file stays readable."""
        return self.model_dump(mode="json", exclude_defaults=True, exclude={"version"})

    def problems(self) -> list[Problem]:
        """Rules that span the directory: unknown references and duplicates."""
        found: list[Problem] = []
        found += _duplicates("users", "id", [u.id for u in self.users])
        found += _duplicates("users", "extension", [u.extension for u in self.users])
        found += _duplicates(
            "users", "sip.username", [u.sip.username if u.sip else None for u in self.users]
        )
        found += _duplicates("ring_groups", "id", [g.id for g in self.ring_groups])
        found += _duplicates("lines", "number", [line.number for line in self.lines])
        users = self.users_by_id
        groups = self.groups_by_id
        numbers = self.lines_by_number
        for i, user in enumerate(self.users):
            for j, number in enumerate(user.lines):
                if number not in numbers:
                    found.append(_ref(f"users[{i}].lines[{j}]", f"unknown line {number!r}"))
        for i, group in enumerate(self.ring_groups):
            for j, layer in enumerate(group.layers):
                for k, member in enumerate(layer.members):
                    if member not in users:
                        path = f"ring_groups[{i}].layers[{j}].members[{k}]"
                        found.append(_ref(path, f"unknown user {member!r}"))
            target = group.fallback.ring_group
            if target is not None:
                if target not in groups:
                    found.append(
                        _ref(
                            f"ring_groups[{i}].fallback.ring_group",
                            f"unknown ring group {target!r}",
                        )
                    )
                elif target == group.id:
                    found.append(
                        _ref(
                            f"ring_groups[{i}].fallback.ring_group",
                            "a group cannot fall back to itself",
                        )
                    )
        for i, line in enumerate(self.lines):
            if line.route_to.user is not None and line.route_to.user not in users:
                found.append(
                    _ref(f"lines[{i}].route_to.user", f"unknown user {line.route_to.user!r}")
                )
            if line.route_to.ring_group is not None and line.route_to.ring_group not in groups:
                found.append(
                    _ref(
                        f"lines[{i}].route_to.ring_group",
                        f"unknown ring group {line.route_to.ring_group!r}",
                    )
                )
            target = line.closed_action.ring_group
            if target is not None and target not in groups:
                found.append(
                    _ref(f"lines[{i}].closed_action.ring_group", f"unknown ring group {target!r}")
                )
        return found


_ZONES: dict[str, ZoneInfo] = {}


def _zone(name: str) -> ZoneInfo:
    zone = _ZONES.get(name)
    if zone is None:
        zone = _ZONES[name] = ZoneInfo(name)
    return zone


def normalize_number(number: str) -> str:
    """Accept '+15550100', '15550100' or 'tel:+1 555-0100' for a line lookup.

    What follows a ';' is a parameter of the number, not part of it (RFC 3966 §3, also in
    the user part of a SIP URI, RFC 3261 §19.1.6): US carriers deliver ported numbers as
    `+15550100;npdi;rn=+15559999999`, whose routing number's digits were added to the
    line's (a 404 for every such call)."""
    number_part = number.split(";", 1)[0]
    digits = "".join(ch for ch in number_part if "0" <= ch <= "9")
    return "+" + digits if digits else number


def _ref(path: str, reason: str) -> Problem:
    return Problem(path=path, reason=reason, kind="reference")


def _duplicates(collection: str, field: str, values: list[str | None]) -> list[Problem]:
    first_index: dict[str, int] = {}
    found = []
    for index, value in enumerate(values):
        if value is None:
            continue
        if value in first_index:
            found.append(
                Problem(
                    path=f"{collection}[{index}].{field}",
                    reason=f"duplicate {field} {value!r} (also {collection}[{first_index[value]}])",
                    kind="duplicate",
                )
            )
        else:
            first_index[value] = index
    return found
