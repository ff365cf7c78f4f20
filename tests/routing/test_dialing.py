"""Dial rules (bridge.routing.dialing): dialled digits to E.164, their class, and who may call
what. International and premium are blocked unless a role or user is allowed them; emergency
numbers always go through; a user has at most `max_outbound_per_user` calls out at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bridge.directory.loader import DirectoryError, load_directory
from bridge.directory.model import DialClass, DialPlan, Role, User
from bridge.routing.dialing import classify, decide

US = DialPlan()
UK = DialPlan(
    country_code="44",
    national_prefix="0",
    international_prefix="00",
    emergency=("999", "112"),
    premium=("+4490", "+4491"),
)


@pytest.mark.parametrize(
    ("plan", "digits", "number", "kind"),
    [
        (US, "2125550100", "+12125550100", DialClass.NATIONAL),
        (US, "12125550100", "+12125550100", DialClass.NATIONAL),
        (US, "+12125550100", "+12125550100", DialClass.NATIONAL),
        (US, "011442079460000", "+442079460000", DialClass.INTERNATIONAL),
        (US, "+442079460000", "+442079460000", DialClass.INTERNATIONAL),
        (US, "19005550100", "+19005550100", DialClass.PREMIUM),
        (US, "+19765550100", "+19765550100", DialClass.PREMIUM),
        (US, "911", "911", DialClass.EMERGENCY),
        (UK, "02079460000", "+442079460000", DialClass.NATIONAL),
        (UK, "0012125550100", "+12125550100", DialClass.INTERNATIONAL),
        (UK, "09098790000", "+449098790000", DialClass.PREMIUM),
        (UK, "999", "999", DialClass.EMERGENCY),
    ],
)
def test_classify(plan: DialPlan, digits: str, number: str, kind: DialClass) -> None:
    dialled = classify(digits, plan)
    assert (dialled.number, dialled.kind) == (number, kind)


def user(role: Role = Role.AGENT, dial: tuple[DialClass, ...] | None = None) -> User:
    return User(id="ana", name="Ana", role=role, dial=dial)


def test_international_and_premium_are_blocked_by_default() -> None:
    for digits in ("011442079460000", "19005550100"):
        decision = decide(user(), digits, US, 0)
        assert not decision.allowed
        assert decision.reason == f"{decision.dialled.kind.value} calls are not allowed"
    assert decide(user(), "2125550100", US, 0).allowed
    assert decide(user(Role.ADMIN), "011442079460000", US, 0).allowed is False  # roles too


def test_a_role_or_a_user_may_be_allowed_more_and_emergency_always_goes() -> None:
    plan = DialPlan(
        allow={Role.SUPERVISOR: (DialClass.INTERNAL, DialClass.NATIONAL, DialClass.INTERNATIONAL)}
    )
    assert decide(user(Role.SUPERVISOR), "011442079460000", plan, 0).allowed
    assert not decide(user(Role.AGENT), "011442079460000", plan, 0).allowed
    ana = user(dial=(DialClass.INTERNAL,))  # internal only: not even national ...
    assert not decide(ana, "2125550100", plan, 0).allowed
    assert decide(ana, "911", plan, 99).allowed  # ... but emergency, whatever the limit


def test_calls_out_at_once_are_limited_per_user() -> None:
    assert decide(user(), "2125550100", US, 1).allowed
    decision = decide(user(), "2125550100", US, 2)
    assert not decision.allowed and decision.reason == "at most 2 calls out at once"
    assert decide(user(), "2125550100", DialPlan(max_outbound_per_user=0), 50).allowed


@pytest.mark.parametrize(
    ("dialing", "where"),
    [
        ({"country_code": "one"}, "dialing.country_code"),
        ({"premium": ["1900"]}, "dialing.premium[0]"),
        ({"allow": {"janitor": ["national"]}}, "dialing.allow"),
        ({"allow": {"agent": ["everywhere"]}}, "dialing.allow"),
        ({"max_outbound_per_user": -1}, "dialing.max_outbound_per_user"),
        ({"emergency": ["9-1-1"]}, "dialing.emergency[0]"),
    ],
)
def test_a_bad_dial_plan_in_the_directory_file_is_refused_naming_the_field(
    tmp_path: Path, dialing: dict[str, object], where: str
) -> None:
    path = tmp_path / "directory.yaml"
    path.write_text(yaml.safe_dump({"timezone": "UTC", "dialing": dialing}))
    with pytest.raises(DirectoryError) as caught:
        load_directory(path)
    assert any(problem.path.startswith(where) for problem in caught.value.problems), [
        (p.path, p.reason) for p in caught.value.problems
    ]
