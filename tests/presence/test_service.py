"""PresenceService with a fake clock: availability, reachability counting, on-call, wrap-up."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from bridge.directory.loader import build_directory
from bridge.directory.model import Directory
from bridge.presence.model import Availability, Channel
from bridge.presence.service import PresenceService
from bridge.routing.engine import plan_route
from bridge.routing.model import CallRequest, Reason
from tests.conftest import FakeClock

USERS: list[dict[str, Any]] = [
    {"id": "ada", "name": "Ada", "wrap_up_seconds": 30},
    {"id": "ben", "name": "Ben", "available_by_default": False},
    {"id": "cy", "name": "Cy", "answer_by": "ip_phone"},
]


def _directory(users: list[dict[str, Any]] = USERS) -> Directory:
    return build_directory(
        {
            "users": users,
            "ring_groups": [{"id": "g", "name": "G", "layers": [{"members": ["ada"]}]}],
            "lines": [{"number": "+15550100", "name": "L", "route_to": {"ring_group": "g"}}],
        }
    )


class Holder:
    """The current directory snapshot, swappable like DirectoryStore.current."""

    def __init__(self) -> None:
        self.current = _directory()

    def __call__(self) -> Directory:
        return self.current


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def holder() -> Holder:
    return Holder()


@pytest.fixture
def service(holder: Holder, clock: FakeClock) -> PresenceService:
    return PresenceService(holder, clock)


def test_initial_availability_follows_available_by_default(service: PresenceService) -> None:
    ada = service.presence_of("ada")
    assert ada.availability is Availability.AVAILABLE
    assert ada.reachable == frozenset()
    assert ada.on_call is False
    assert ada.wrap_up_until is None and ada.last_call_ended_at is None
    assert service.presence_of("ben").availability is Availability.OFFLINE
    assert service.presence_of("nobody").availability is Availability.AVAILABLE


def test_set_availability(service: PresenceService) -> None:
    assert service.set_availability("ada", Availability.BUSY).availability is Availability.BUSY
    assert service.presence_of("ada").availability is Availability.BUSY
    service.set_availability("ben", Availability.AVAILABLE)
    assert service.presence_of("ben").availability is Availability.AVAILABLE


def test_endpoints_are_counted_per_channel(service: PresenceService) -> None:
    service.endpoint_up("ada", Channel.APPS)
    service.endpoint_up("ada", Channel.APPS)  # a second tab
    service.endpoint_up("ada", Channel.IP_PHONE)
    assert service.presence_of("ada").reachable == {Channel.APPS, Channel.IP_PHONE}
    service.endpoint_down("ada", Channel.APPS)
    assert service.presence_of("ada").reachable == {Channel.APPS, Channel.IP_PHONE}
    service.endpoint_down("ada", Channel.APPS)
    assert service.presence_of("ada").reachable == {Channel.IP_PHONE}
    service.endpoint_down("ada", Channel.IP_PHONE)
    assert service.presence_of("ada").reachable == frozenset()


def test_endpoint_down_without_up_does_not_go_negative(service: PresenceService) -> None:
    service.endpoint_down("cy", Channel.IP_PHONE)
    service.endpoint_down("cy", Channel.IP_PHONE)
    service.endpoint_up("cy", Channel.IP_PHONE)
    assert service.presence_of("cy").reachable == {Channel.IP_PHONE}
    service.endpoint_down("cy", Channel.IP_PHONE)
    assert service.presence_of("cy").reachable == frozenset()


def test_first_app_session_makes_an_available_by_default_user_available(
    service: PresenceService,
) -> None:
    service.set_availability("ada", Availability.OFFLINE)  # logged out earlier
    service.endpoint_up("ada", Channel.APPS)
    assert service.presence_of("ada").availability is Availability.AVAILABLE
    service.set_availability("ada", Availability.BUSY)
    service.endpoint_up("ada", Channel.APPS)  # a second session is not a login
    assert service.presence_of("ada").availability is Availability.BUSY
    service.endpoint_down("ada", Channel.APPS)
    service.endpoint_down("ada", Channel.APPS)
    service.endpoint_up("ada", Channel.APPS)  # all sessions closed, then a new login
    assert service.presence_of("ada").availability is Availability.AVAILABLE


def test_app_session_does_not_change_others(service: PresenceService) -> None:
    service.endpoint_up("ben", Channel.APPS)  # not available by default: stays offline
    assert service.presence_of("ben").availability is Availability.OFFLINE
    assert service.presence_of("ben").reachable == {Channel.APPS}
    service.set_availability("cy", Availability.BUSY)
    service.endpoint_up("cy", Channel.IP_PHONE)  # a desk phone registering is not a login
    assert service.presence_of("cy").availability is Availability.BUSY


def test_call_started_and_ended_with_wrap_up(service: PresenceService, clock: FakeClock) -> None:
    service.endpoint_up("ada", Channel.APPS)
    started = service.call_started("ada")
    assert started.on_call is True
    assert started.reachable == {Channel.APPS}
    clock.advance(95)
    ended = service.call_ended("ada")
    assert ended.on_call is False
    assert ended.last_call_ended_at == clock.now
    assert ended.wrap_up_until == clock.now + timedelta(seconds=30)
    assert ended.in_wrap_up(clock.now + timedelta(seconds=29)) is True
    assert ended.in_wrap_up(clock.now + timedelta(seconds=30)) is False
    assert service.presence_of("ada") == ended


def test_no_wrap_up_when_the_user_has_none(service: PresenceService, clock: FakeClock) -> None:
    service.call_started("cy")
    ended = service.call_ended("cy")
    assert ended.wrap_up_until is None
    assert ended.last_call_ended_at == clock.now
    assert ended.in_wrap_up(clock.now) is False


def test_a_new_call_ends_the_wrap_up(service: PresenceService, clock: FakeClock) -> None:
    service.call_ended("ada")
    assert service.presence_of("ada").in_wrap_up(clock.now) is True
    again = service.call_started("ada")
    assert again.on_call is True
    assert again.wrap_up_until is None


def test_wrap_up_reads_the_current_directory(
    service: PresenceService, holder: Holder, clock: FakeClock
) -> None:
    users = [dict(USERS[0], wrap_up_seconds=120), *USERS[1:]]
    holder.current = _directory(users)
    assert service.call_ended("ada").wrap_up_until == clock.now + timedelta(seconds=120)


def test_forget_drops_state_and_endpoints(service: PresenceService) -> None:
    service.endpoint_up("ada", Channel.APPS)
    service.endpoint_up("ada", Channel.APPS)
    service.set_availability("ada", Availability.BUSY)
    service.call_started("ada")
    service.endpoint_up("cy", Channel.IP_PHONE)
    service.forget("ada")
    fresh = service.presence_of("ada")
    assert (fresh.availability, fresh.on_call, fresh.reachable) == (
        Availability.AVAILABLE,
        False,
        frozenset(),
    )
    service.endpoint_up("ada", Channel.APPS)  # counting starts again from zero
    service.endpoint_down("ada", Channel.APPS)
    assert service.presence_of("ada").reachable == frozenset()
    assert service.presence_of("cy").reachable == {Channel.IP_PHONE}  # others untouched


def test_snapshot_lists_every_directory_user(service: PresenceService) -> None:
    service.set_availability("cy", Availability.BUSY)
    snapshot = service.snapshot()
    assert list(snapshot) == ["ada", "ben", "cy"]
    assert snapshot["cy"].availability is Availability.BUSY
    assert snapshot["ben"].availability is Availability.OFFLINE


def test_routing_reads_the_service(
    service: PresenceService, holder: Holder, clock: FakeClock
) -> None:
    def reason() -> Reason | None:
        call = CallRequest(call_id="c", line="+15550100")
        plan = plan_route(holder.current, service, call, clock())
        return plan.layers[0].members[0].reason

    assert reason() is Reason.NOT_REACHABLE  # no app open yet
    service.endpoint_up("ada", Channel.APPS)
    assert reason() is None
    service.call_started("ada")
    assert reason() is Reason.ON_CALL
    service.call_ended("ada")
    assert reason() is Reason.WRAP_UP
    clock.advance(29.999)
    assert reason() is Reason.WRAP_UP
    clock.advance(0.001)
    assert reason() is None
    service.set_availability("ada", Availability.BUSY)
    assert reason() is Reason.UNAVAILABLE
