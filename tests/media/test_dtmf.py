"""RFC 4733 telephone-events: payloads, one digit per key press whatever the retransmissions,
and the packets the bridge sends for a digit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.media.dtmf import (
    DIGITS,
    DtmfError,
    DtmfEvent,
    DtmfReceiver,
    DtmfSender,
    build_event,
    parse_event,
)


def test_parse_and_build() -> None:
    # "#" (event 11), end bit, volume 10, duration 1600 (200 ms at 8 kHz)
    payload = bytes([11, 0x80 | 10, 0x06, 0x40])
    assert parse_event(payload) == DtmfEvent(11, "#", True, 10, 1600)
    assert build_event("#", 1600, end=True) == payload
    assert build_event(11, 1600, end=True) == payload
    assert parse_event(build_event("d", 0, volume=63)) == DtmfEvent(15, "D", False, 63, 0)
    assert [parse_event(build_event(d, 160)).digit for d in DIGITS] == list(DIGITS)
    # the R bit (reserved) is ignored
    assert parse_event(bytes([1, 0x40 | 7, 0, 160])) == DtmfEvent(1, "1", False, 7, 160)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x01\x80\x00", bytes([16, 0x8A, 0, 160]), bytes([255, 0, 0, 0])],
)
def test_garbage_payloads(payload: bytes) -> None:
    with pytest.raises(DtmfError):
        parse_event(payload)


@pytest.mark.parametrize(
    ("digit", "duration", "volume"),
    [("x", 0, 10), ("12", 0, 10), (16, 0, 10), (-1, 0, 10), ("1", 70000, 10), ("1", 0, 64)],
)
def test_build_refuses_what_is_not_a_key(digit: str | int, duration: int, volume: int) -> None:
    with pytest.raises(DtmfError):
        build_event(digit, duration, volume=volume)


@settings(deadline=None, max_examples=500)
@given(st.binary(max_size=16))
def test_arbitrary_payloads_parse_or_raise_dtmf_error(payload: bytes) -> None:
    try:
        event = parse_event(payload)
    except DtmfError:
        return
    assert event.digit == DIGITS[event.event]


def press(digit: str, timestamp: int, *, updates: int = 3, ends: int = 3) -> list[tuple]:
    """What a phone sends for one key press: start, repeats, the end packet three times."""
    code = DIGITS.index(digit)
    out = [(timestamp, DtmfEvent(code, digit, False, 10, 400 * (i + 1))) for i in range(updates)]
    out += [(timestamp, DtmfEvent(code, digit, True, 10, 400 * updates))] * ends
    return out


def run(receiver: DtmfReceiver, packets: list[tuple]) -> str:
    return "".join(receiver.feed(ts, event) for ts, event in packets)


def test_retransmitted_ends_do_not_double_report() -> None:
    receiver = DtmfReceiver()
    packets = press("5", 8000)
    got = [receiver.feed(ts, event) for ts, event in packets]
    assert got == ["", "", "", "5", "", ""]  # at the first end packet, once
    assert receiver.flush() == ""


def test_same_digit_twice_is_two_presses() -> None:
    receiver = DtmfReceiver()
    assert run(receiver, press("1", 1000) + press("1", 3000)) == "11"


def test_lost_ends_reported_when_the_next_press_starts_or_on_flush() -> None:
    receiver = DtmfReceiver()
    assert run(receiver, press("2", 1000, ends=0)) == ""
    assert run(receiver, press("3", 4000, ends=0)[:1]) == "2"  # the next press began
    assert receiver.flush() == "3"  # the stream went quiet
    assert receiver.flush() == ""
    # an end arriving alone (start and repeats lost) after an unfinished press: both digits
    receiver = DtmfReceiver()
    run(receiver, press("4", 100, ends=0))
    assert run(receiver, press("#", 900, updates=0, ends=1)) == "4#"


def test_late_end_of_an_earlier_press_is_ignored() -> None:
    receiver = DtmfReceiver()
    first, second = press("7", 1000), press("8", 2000)
    assert run(receiver, first[:4] + second[:2] + first[4:] + second[2:]) == "78"


def test_sender_packets() -> None:
    sender = DtmfSender()
    packets = sender.packets("9", timestamp=2**32 + 10, duration=0.12)
    assert all(p.timestamp == 10 for p in packets)  # wrapped, one timestamp for the press
    assert [p.marker for p in packets] == [True, False, False, False, False, False]
    assert [p.end for p in packets] == [False, False, False, True, True, True]
    assert [round(p.at, 3) for p in packets] == [0.0, 0.05, 0.1, 0.12, 0.14, 0.16]
    events = [parse_event(p.payload) for p in packets]
    assert [e.duration for e in events] == [400, 800, 960, 960, 960, 960]
    assert {e.digit for e in events} == {"9"}
    receiver = DtmfReceiver()
    assert "".join(receiver.feed(p.timestamp, parse_event(p.payload)) for p in packets) == "9"
    with pytest.raises(DtmfError):
        sender.packets("9", 0, duration=9.0)  # over 65535 samples
    with pytest.raises(DtmfError):
        sender.packets("E", 0)


@settings(deadline=None, max_examples=200)
@given(
    st.lists(
        st.tuples(st.sampled_from(DIGITS), st.integers(0, 5), st.integers(0, 3)).filter(
            lambda p: p[1] + p[2] > 0  # a press some packet of which arrived
        ),
        max_size=20,
    )
)
def test_every_press_is_reported_once(presses: list[tuple[str, int, int]]) -> None:
    """Whatever was lost of each press (but not all of it), each is reported once, in order."""
    receiver = DtmfReceiver()
    packets = []
    for i, (digit, updates, ends) in enumerate(presses):
        packets += press(digit, 1000 + 1000 * i, updates=updates, ends=ends)
    assert run(receiver, packets) + receiver.flush() == "".join(d for d, _, _ in presses)
