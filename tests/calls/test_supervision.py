"""`SupervisionByPath`: each call's supervision is its dial path's, as the live registry says."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bridge.calls.events import CallState
from bridge.calls.registry import CallRegistry, LiveCall
from bridge.calls.supervision import (
    MonitorView,
    NotSupportedOnCall,
    RecordingView,
    SupervisableCall,
    SupervisionByPath,
)
from bridge.sip.supervision import NEEDS_MEDIA, SipSupervision

STARTED = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


class Carrierish:
    """A path's supervision that knows one call of its own (and remembers it ended)."""

    def __init__(self) -> None:
        self.joined: list[tuple[str, str]] = []

    def call(self, call_id: str) -> SupervisableCall | None:
        if call_id != "CA1":
            return None
        return SupervisableCall("CA1", "carrier", CallState.ENDED, "ana")

    async def join(
        self, call_id: str, user_id: str, mode: str, via: str, number: str | None
    ) -> MonitorView:
        self.joined.append((call_id, user_id))
        return MonitorView(user_id, mode, via, f"client:{user_id}", "CAsup", "dialing")

    async def start_recording(self, call_id: str) -> RecordingView:
        return RecordingView("RE1", "in-progress")


@pytest.fixture
def registry() -> CallRegistry:
    registry = CallRegistry()
    registry.add(LiveCall("sip-1", "sip", "+15550100", "+1555", STARTED, "answered", set(), "bo"))
    registry.add(LiveCall("CA2", "carrier", "+15550100", "+1555", STARTED))
    registry.add(LiveCall("ws-1", "ws", None, "100", STARTED, "answered", answered_by="sam"))
    return registry


def dispatcher(registry: CallRegistry, carrier: Carrierish) -> SupervisionByPath:
    paths = {
        "carrier": carrier,
        "sip": SipSupervision(registry, lambda: None, None, wall_clock=lambda: 0.0),
    }
    return SupervisionByPath(registry, paths, default="carrier")  # type: ignore[dict-item]


async def test_a_sip_call_is_seen_and_refused_with_the_media_reason(
    registry: CallRegistry,
) -> None:
    supervision = dispatcher(registry, Carrierish())
    view = supervision.call("sip-1")
    assert view == SupervisableCall(
        "sip-1",
        "sip",
        CallState.ANSWERED,
        "bo",
        cannot_monitor=NEEDS_MEDIA,
        cannot_record=NEEDS_MEDIA,
    )
    with pytest.raises(NotSupportedOnCall) as refused:
        await supervision.join("sip-1", "sam", "listen", "client", None)
    assert refused.value.reason == NEEDS_MEDIA
    for command in (
        supervision.switch("sip-1", "sam", "barge"),
        supervision.leave("sip-1", "sam"),
        supervision.start_recording("sip-1"),
        supervision.pause_recording("sip-1", "skip"),
        supervision.resume_recording("sip-1"),
        supervision.stop_recording("sip-1"),
    ):
        with pytest.raises(NotSupportedOnCall):
            await command


async def test_carrier_calls_and_unknown_calls_go_to_the_default_path(
    registry: CallRegistry,
) -> None:
    carrier = Carrierish()
    supervision = dispatcher(registry, carrier)
    # Not in the registry (ended): the carrier still remembers it.
    assert supervision.call("CA1") == SupervisableCall("CA1", "carrier", CallState.ENDED, "ana")
    assert supervision.call("nope") is None
    view = await supervision.join("CA2", "sam", "listen", "client", None)
    assert carrier.joined == [("CA2", "sam")]
    assert view.to_dict() == {
        "user_id": "sam",
        "mode": "listen",
        "via": "client",
        "to": "client:sam",
        "call_sid": "CAsup",
        "status": "dialing",
    }
    recording = await supervision.start_recording("CA2")
    assert recording.active and recording.to_dict() == {
        "recording_sid": "RE1",
        "status": "in-progress",
        "pause_behavior": None,
        "url": None,
        "duration_seconds": None,
    }


async def test_a_path_without_supervision_refuses_as_not_supported(
    registry: CallRegistry,
) -> None:
    supervision = dispatcher(registry, Carrierish())
    view = supervision.call("ws-1")
    assert view is not None and view.cannot_monitor == "calls on the ws path cannot be supervised"
    with pytest.raises(NotSupportedOnCall):
        await supervision.start_recording("ws-1")


def test_the_default_path_must_have_a_supervision(registry: CallRegistry) -> None:
    with pytest.raises(ValueError):
        SupervisionByPath(
            registry,
            {"sip": SipSupervision(registry, lambda: None, None, wall_clock=lambda: 0.0)},
            default="carrier",
        )
