"""DTMF as RFC 4733 telephone-events: the payload, one digit per key press, and sending a digit.

A key press is not one packet: the sender starts the event (marker bit), repeats it while the
key is held with a growing duration, then sends the end packet three times, every packet with
the event's start timestamp. Press-1 and voicemail's `#` need each press exactly once, so
`DtmfReceiver` folds that sequence into one digit; `DtmfSender` produces it.

Sans-I/O: no socket, no clock; timestamps are RTP timestamps and times are passed in.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from dataclasses import dataclass

__all__ = [
    "DIGITS",
    "DtmfError",
    "DtmfEvent",
    "DtmfPacket",
    "DtmfReceiver",
    "DtmfSender",
    "build_event",
    "parse_event",
]

# RFC 4733 section 3.2: events 0-15 are the DTMF keys, in this order.
DIGITS = "0123456789*#ABCD"
_EVENT = struct.Struct("!BBH")  # event, E/R/volume, duration


class DtmfError(ValueError):
    """A telephone-event payload that is not a DTMF key (too short, or another event)."""


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    event: int  # 0-15
    digit: str  # "0"-"9", "*", "#", "A"-"D"
    end: bool  # the E bit: the key was released
    volume: int  # 0-63, -dBm0
    duration: int  # so far, in RTP timestamp units


def parse_event(payload: bytes | bytearray | memoryview) -> DtmfEvent:
    """The DTMF event in a telephone-event payload (its first 4-byte block); `DtmfError` for a
    short payload or an event that is not a key (flash, tones of other RFC 4733 registries)."""
    if len(payload) < 4:
        raise DtmfError(f"telephone-event payload of {len(payload)} bytes, needs 4")
    event, flags, duration = _EVENT.unpack_from(payload, 0)
    if event >= len(DIGITS):
        raise DtmfError(f"event {event} is not a DTMF digit")
    return DtmfEvent(event, DIGITS[event], bool(flags & 0x80), flags & 0x3F, duration)


def _event_code(digit: str | int) -> int:
    if isinstance(digit, int):
        if 0 <= digit < len(DIGITS):
            return digit
    elif len(digit) == 1 and digit.upper() in DIGITS:
        return DIGITS.index(digit.upper())
    raise DtmfError(f"{digit!r} is not a DTMF digit")


def build_event(digit: str | int, duration: int, *, end: bool = False, volume: int = 10) -> bytes:
    """A telephone-event payload for a key ("0"-"9", "*", "#", "A"-"D", or its event code)."""
    code = _event_code(digit)
    if not 0 <= volume <= 63:
        raise DtmfError(f"volume {volume} is not in 0..63")
    if not 0 <= duration <= 0xFFFF:
        raise DtmfError(f"duration {duration} does not fit 16 bits")
    return _EVENT.pack(code, (0x80 if end else 0) | volume, duration)


class DtmfReceiver:
    """Key presses from a stream of telephone-event packets, each reported once.

    An event is identified by its RTP timestamp (and code): the start, the repeats and the
    three end packets all carry the same one. A digit is reported at its first end packet;
    repeats and retransmitted ends of a reported event are ignored. When all the end packets
    were lost, the digit is reported when the next event (another timestamp) begins, or by
    `flush` when the caller decides the stream went quiet. Two presses of the same key are two
    timestamps, so two digits.
    """

    __slots__ = ("_current", "_digit", "_done", "_reported")

    def __init__(self) -> None:
        self._current: tuple[int, int] | None = None  # (timestamp, event) of the latest event
        self._digit = ""
        self._reported = False
        # events already reported: a late end packet of one must not start it again
        self._done: deque[tuple[int, int]] = deque(maxlen=8)

    def feed(self, timestamp: int, event: DtmfEvent) -> str:
        """The digits this packet completes, in order: usually "" or one digit, two when it
        starts a new event whose predecessor lost its end packets and itself is an end."""
        key = (timestamp, event.event)
        if key == self._current:
            if event.end and not self._reported:
                self._reported = True
                self._done.append(key)
                return event.digit
            return ""
        if key in self._done:
            return ""
        out = self.flush()
        self._current, self._digit, self._reported = key, event.digit, event.end
        if event.end:
            self._done.append(key)
            out += event.digit
        return out

    def flush(self) -> str:
        """The pending digit whose end never came ("" if none); it is then reported."""
        if self._current is None or self._reported:
            return ""
        self._reported = True
        self._done.append(self._current)
        return self._digit


@dataclass(frozen=True, slots=True)
class DtmfPacket:
    at: float  # when to send it, in seconds after the key press starts
    timestamp: int  # the event's start timestamp, the same in every packet of the press
    marker: bool  # set on the first packet of the event only
    end: bool
    payload: bytes


class DtmfSender:
    """The packets of one key press (RFC 4733 section 2.5.1): the start (marker bit), an update
    every `interval` with the duration so far, then the end packet three times (`end_spacing`
    apart, so one burst of loss does not take them all), all with the event's start timestamp.

    Into a leg's outgoing stream, send each packet at its `at` with
    `StreamRewriter.stamp(te_pt, p.payload, 0, now, "dtmf", marker=p.marker)`: samples=0 keeps
    the one timestamp, and the rewriter picks it (`p.timestamp` is for a stream of one's own).
    """

    __slots__ = ("clock_rate", "end_spacing", "interval", "volume")

    def __init__(
        self,
        clock_rate: int = 8000,
        *,
        interval: float = 0.05,
        end_spacing: float = 0.02,
        volume: int = 10,
    ) -> None:
        if clock_rate <= 0 or interval <= 0 or end_spacing < 0:
            raise ValueError("clock rate and interval must be positive, end spacing not negative")
        if not 0 <= volume <= 63:
            raise DtmfError(f"volume {volume} is not in 0..63")
        self.clock_rate = clock_rate
        self.interval = interval
        self.end_spacing = end_spacing
        self.volume = volume

    def packets(self, digit: str | int, timestamp: int, duration: float = 0.1) -> list[DtmfPacket]:
        """The packets of a press of `digit` lasting `duration` seconds, starting at RTP
        timestamp `timestamp`. Each update carries the duration up to the next one (the tone
        the receiver may play until then), capped at the press's total."""
        code = _event_code(digit)
        total = round(duration * self.clock_rate)
        if not 0 < total <= 0xFFFF:
            raise DtmfError(f"duration {duration} s does not fit an event (1 to 65535 samples)")
        timestamp %= 1 << 32
        step = self.interval * self.clock_rate
        updates = max(1, math.ceil(total / step))
        out = [
            DtmfPacket(
                at=i * self.interval,
                timestamp=timestamp,
                marker=i == 0,
                end=False,
                payload=build_event(code, min(round((i + 1) * step), total), volume=self.volume),
            )
            for i in range(updates)
        ]
        end = build_event(code, total, end=True, volume=self.volume)
        out += [
            DtmfPacket(duration + i * self.end_spacing, timestamp, False, True, end)
            for i in range(3)
        ]
        return out
