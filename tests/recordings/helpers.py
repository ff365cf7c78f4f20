"""Audio and archive helpers for the recordings tests."""

from __future__ import annotations

import math
import struct
from array import array
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bridge.media.g711 import FRAME_SAMPLES
from bridge.media.recording import RecordingWriter, VoicemailWriter

T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # Monday 10:00 New York
MAIN_LINE = "+15550100"  # ring group "sales"
SUPPORT_LINE = "+15550200"  # ring group "support"; frank's and cleo's line


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def tone(tick: int, hz: float = 1000.0, amplitude: int = 8000) -> bytes:
    """One 20 ms frame of 16-bit PCM, continuing a sine from tick to tick."""
    start = tick * FRAME_SAMPLES
    samples = array(
        "h",
        (
            int(amplitude * math.sin(2 * math.pi * hz * (start + i) / 8000))
            for i in range(FRAME_SAMPLES)
        ),
    )
    return samples.tobytes()


def record_call(path: Path, ticks: int) -> None:
    """A complete two-channel recording: a tone on the left (caller), silence on the right."""
    with RecordingWriter(path, flush_every=0.2) as writer:
        for tick in range(ticks):
            writer.write(tone(tick), None)


def record_message(path: Path, ticks: int) -> None:
    with VoicemailWriter(path, max_seconds=60, flush_every=0.2) as writer:
        for tick in range(ticks):
            writer.write(tone(tick, 440.0))


def crashed_wav(path: Path, channels: int, pcm: bytes) -> None:
    """What a writer leaves when the daemon dies: the header as created (sizes 0), then data."""
    rate, width = 8000, 2
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36,
        b"WAVE",
        b"fmt ",
        16,
        1,
        channels,
        rate,
        rate * channels * width,
        channels * width,
        8 * width,
        b"data",
        0,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + pcm)
