"""Weekly opening hours ("mon: [09:00-17:00]") parsed once, checked against a local time.

Used for a user's working hours and a line's business hours. A range whose end is not after
its start runs past midnight into the next day ("22:00-06:00"); "24:00" ends at midnight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache

from bridge.text import ascii_digits

DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

MinuteRange = tuple[int, int]
WeekRanges = tuple[tuple[MinuteRange, ...], ...]


class ScheduleError(ValueError):
    """A weekly schedule that cannot be parsed; the message names the day and the range."""


def _parse_clock(text: str, *, allow_24: bool) -> int:
    hours, sep, minutes = text.partition(":")
    if not sep or len(minutes) != 2 or not ascii_digits(hours) or not ascii_digits(minutes):
        raise ScheduleError(f"{text!r} is not HH:MM")
    h, m = int(hours), int(minutes)
    if h == 24 and m == 0 and allow_24:
        return 24 * 60
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise ScheduleError(f"{text!r} is not a time of day")
    return h * 60 + m


@lru_cache(maxsize=1024)  # a directory repeats a few ranges over and over; errors are not kept
def parse_range(text: str) -> MinuteRange:
    """'09:00-17:00' -> (540, 1020). End <= start means the range runs past midnight."""
    start_text, sep, end_text = text.strip().partition("-")
    if not sep:
        raise ScheduleError(f"{text!r} is not a range like 09:00-17:00")
    start = _parse_clock(start_text.strip(), allow_24=False)
    end = _parse_clock(end_text.strip(), allow_24=True)
    if start == end:
        raise ScheduleError(f"{text!r} is empty (start equals end)")
    return start, end


def parse_week(spec: Mapping[str, Sequence[str]]) -> WeekRanges:
    unknown = [day for day in spec if day not in DAYS]
    if unknown:
        raise ScheduleError(f"unknown day {unknown[0]!r}; use one of {', '.join(DAYS)}")
    week: list[tuple[MinuteRange, ...]] = []
    for day in DAYS:
        ranges = []
        for item in spec.get(day, ()):
            try:
                ranges.append(parse_range(item))
            except ScheduleError as exc:
                raise ScheduleError(f"{day}: {exc}") from None
        week.append(tuple(ranges))
    return tuple(week)


def is_open(week: WeekRanges, local: datetime) -> bool:
    """True when `local` (already in the schedule's time zone) falls inside an open range."""
    minute = local.hour * 60 + local.minute
    today = local.weekday()
    for start, end in week[today]:
        if start < end:
            if start <= minute < end:
                return True
        elif minute >= start:  # overnight range, evening part
            return True
    # The morning part of an overnight range that started yesterday.
    return any(end <= start and minute < end for start, end in week[(today - 1) % 7])
