"""The mixing session: a call's legs heard through the 20 ms mixer instead of the blind relay.

While a supervisor listens, whispers or barges, or the call is recorded, every leg's audio goes
through one clocked path: each leg's packets wait in its own jitter buffer; every 20 ms the
session takes one frame from each (silence where nothing arrived in time), decodes it, mixes
what each party may hear (`mixer.plan_for`: listen, whisper, barge, the recording taps),
encodes each output in its leg's codec and sends it on that leg's own outgoing stream
(`StreamRewriter.stamp`), so a phone sees one continuous stream across blind relay, mixing and
back. A mode switch is a new plan from the next frame: no re-INVITE.

The ticks are scheduled on absolute times (start + n x 20 ms), so a late tick does not shift
the ones after it; a tick more than a few frames late skips ahead rather than bursting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from bridge.media import g711
from bridge.media.jitter import JitterBuffer
from bridge.media.mixer import TAP_LEFT, TAP_RIGHT, Mixer, MixPlan
from bridge.media.recording import RecordingError, RecordingWriter
from bridge.media.relay import PacketCounts, RelayLeg, read_rtp
from bridge.media.rtp import RtpHeader

__all__ = ["FRAME_SECONDS", "MixingSession", "SessionStats"]

log = structlog.get_logger("bridge.media")

FRAME_SECONDS = 0.020
_SAMPLES = 160
# A tick this many frames late starts the schedule again from now instead of catching up.
_MAX_BEHIND = 5


@dataclass(slots=True)
class SessionStats(PacketCounts):
    ticks: int = 0
    late_ticks: int = 0  # ticks that ran more than one frame after their time
    frames_sent: int = 0
    recording_errors: int = 0


@dataclass(eq=False, slots=True)
class _Input:
    leg: RelayLeg
    jitter: JitterBuffer = field(default_factory=JitterBuffer)


class MixingSession:
    """Mixes `legs` (party id -> leg) by `plan`; `start()` takes over the legs' endpoints."""

    def __init__(
        self,
        legs: Mapping[str, RelayLeg],
        plan: MixPlan,
        *,
        clock: Callable[[], float],
        loop: asyncio.AbstractEventLoop,
        jitter_depth: int = 3,
    ) -> None:
        self._inputs = {
            party: _Input(leg, JitterBuffer(jitter_depth)) for party, leg in legs.items()
        }
        self.mixer = Mixer(plan)
        self.stats = SessionStats()
        self.recording: RecordingWriter | None = None
        # Inputs that are not legs (a prompt): called once a tick for a linear frame or None.
        self.sources: dict[str, Callable[[], bytes | None]] = {}
        # Each tick, every leg's decoded input (None: nothing arrived), e.g. a voicemail's
        # recorder; and every telephone-event packet (party, header, packet) as it arrives.
        self.on_input: Callable[[str, bytes | None], None] | None = None
        self.on_event: Callable[[str, RtpHeader, memoryview], None] | None = None
        self._started = False
        self._clock = clock
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._next = 0.0
        self._jitter_depth = jitter_depth

    @property
    def parties(self) -> tuple[str, ...]:
        return tuple(self._inputs)

    def set_plan(self, plan: MixPlan) -> None:
        """Who hears whom, from the next frame on (a live mode switch)."""
        self.mixer.set_plan(plan)

    def record(self, writer: RecordingWriter | None) -> None:
        """Write the recording taps (caller left, what the caller hears right) to `writer`
        from the next frame; None stops writing (the caller closes the writer)."""
        self.recording = writer

    def add_leg(self, party: str, leg: RelayLeg) -> None:
        """Another leg (a supervisor) joins, heard and fed from the next tick."""
        entry = _Input(leg, JitterBuffer(self._jitter_depth))
        self._inputs[party] = entry
        if self._started:
            leg.endpoint.on_packet = self._receiver(party, entry)

    def remove_leg(self, party: str) -> RelayLeg | None:
        entry = self._inputs.pop(party, None)
        return entry.leg if entry is not None else None

    def start(self) -> None:
        self._started = True
        for party, entry in self._inputs.items():
            entry.leg.endpoint.on_packet = self._receiver(party, entry)
        self._next = self._clock() + FRAME_SECONDS
        self._timer = self._loop.call_at(self._next, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _receiver(self, party: str, entry: _Input) -> Callable[[memoryview, tuple[str, int]], None]:
        jitter, leg, stats = entry.jitter, entry.leg, self.stats

        def receive(packet: memoryview, source: tuple[str, int]) -> None:
            header = read_rtp(packet, stats)
            if header is None:
                return
            arrival = self._clock()
            leg.reception.update(header.sequence, header.timestamp, arrival, 8000)
            if header.payload_type != leg.payload_type:
                # telephone-event goes to the engine's DTMF handling, never into the mix
                if header.payload_type == leg.telephone_event and self.on_event is not None:
                    self.on_event(party, header, packet)
                else:
                    stats.unexpected_payload += 1
                return
            jitter.push(header.sequence, header.timestamp, bytes(header.payload(packet)), arrival)

        return receive

    def _tick(self) -> None:
        now = self._clock()
        stats = self.stats
        stats.ticks += 1
        if now - self._next > FRAME_SECONDS:
            stats.late_ticks += 1
        frames: dict[str, bytes | None] = {}
        for party, entry in self._inputs.items():
            payload = entry.jitter.pop(now)
            frames[party] = (
                g711.decode(payload, entry.leg.payload_type) if payload is not None else None
            )
        if self.on_input is not None:
            for party, frame in list(frames.items()):
                self.on_input(party, frame)
        for name, source in list(self.sources.items()):
            frames[name] = source()
        outputs = self.mixer.mix(frames)
        for party, entry in list(self._inputs.items()):
            leg = entry.leg
            if not leg.sending:  # its peer holds the call (RFC 3264 §6.1)
                continue
            pcm = outputs.get(party, g711.LINEAR_SILENCE)
            packet = leg.stream.stamp(
                leg.payload_type, g711.encode(pcm, leg.payload_type), _SAMPLES, now, self
            )
            if leg.endpoint.send(packet):
                stats.frames_sent += 1
        if self.recording is not None:
            try:
                self.recording.write(outputs.get(TAP_LEFT), outputs.get(TAP_RIGHT))
            except RecordingError as exc:
                stats.recording_errors += 1
                log.warning("media_recording_failed", path=str(exc.path), reason=exc.reason)
                self.recording = None  # the call goes on without it
        self._next += FRAME_SECONDS
        if now - self._next > _MAX_BEHIND * FRAME_SECONDS:
            self._next = now + FRAME_SECONDS
        self._timer = self._loop.call_at(self._next, self._tick)
