"""A small jitter buffer per mixer input, played out by the mixer's 20 ms clock.

The relay forwards packets as they come; only the clocked path (monitor, recording, prompts)
needs one frame per input per tick, in order. Each input gets a `JitterBuffer`: the socket
side `push`es every audio packet (telephone-event packets are not audio and stay out), the
mixer `pop`s once a tick and mixes silence for a None (that is the concealment: 20 ms of a
G.711 phone call lost to silence is what phones do too).

Playout follows the RTP *timestamp*, not the sequence number: the playout point advances one
frame (`frame_samples`, 160 at 8 kHz) per tick and a packet plays at the tick its timestamp
says. So a sender pausing briefly (silence suppression: the timestamp jumps with real time while
the sequence does not) resumes in place, and a packet arriving after its tick is late. Sequence
numbers serve to tell duplicates, losses and the newest packet.

- The first packet (and the first after the stream went idle) primes the buffer: it plays
  `depth` ticks later, so a packet may come up to `depth` ticks late, or early, and still play
  in its place (the default 3 frames, 60 ms, covers a LAN or a carrier trunk; a larger depth
  is more delay for every listener).
- A packet more than `2 * depth` frames ahead of the playout point (a burst after the network
  held packets back, a sender's clock running fast) moves the playout point so that it is
  `depth` frames ahead again; the frames skipped are dropped and counted. The delay stays
  bounded (at most `2 * depth + 1` ticks); it never creeps up with each burst.
- A packet newer than every other yet behind the playout point means either that the sender's
  timeline fell behind ours (a delay step, a slow clock) or that it heads a burst released
  after a stall. The next tick tells: if packets on time arrived meanwhile (the burst's tail),
  it was late and the delay stays; if nothing did, the playout point is set back so that it
  plays `depth` ticks later, rather than dropping every packet from then on as late.
- A packet whose sequence number was seen already (a window of the last 128, as replay
  windows keep) is a duplicate, whether its first copy was played or is still held.
- A sequence jump beyond what reordering explains (RFC 3550's MAX_DROPOUT / MAX_MISORDER) is
  a new stream: the buffer starts over (the relay rewrites SSRC changes of its own; this is a
  peer restarting its stream).
- With nothing buffered and nothing received for `idle` seconds (hold, silence suppression),
  the buffer goes quiet: ticks return None without counting as concealment, and the next
  packet primes it again, which is also when a larger delay from a past burst is shed.

Sans-I/O: arrival and tick times are the caller's monotonic clock, in seconds. The buffer
assumes 20 ms packets (the engine's SDP asks `ptime:20`); a packet is stored whole at the tick
nearest its timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["JitterBuffer", "JitterStats"]

MAX_DROPOUT: Final = 3000
"""A sequence jump forward beyond this is a new stream (RFC 3550, A.1)."""
MAX_MISORDER: Final = 100
"""A sequence number further back than this is a new stream (RFC 3550, A.1)."""
_WINDOW: Final = 128
_WINDOW_MASK: Final = (1 << _WINDOW) - 1
_TS: Final = 0x1_0000_0000


def _seq_delta(a: int, b: int) -> int:
    """a - b for 16-bit sequence numbers, in -32768..32767."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def _ts_delta(a: int, b: int) -> int:
    """a - b for 32-bit RTP timestamps, signed."""
    return ((a - b + 0x8000_0000) & 0xFFFF_FFFF) - 0x8000_0000


@dataclass(frozen=True, slots=True)
class JitterStats:
    """Counters of one input since it started (for the media metrics and the call's log)."""

    received: int
    """Packets accepted into the buffer."""
    played: int
    """Ticks that returned a payload."""
    concealed: int
    """Ticks with nothing to play while later audio was already buffered: holes the mixer
    filled with silence (a lost or late packet). Ticks with nothing buffered at all (a stall,
    a pause, the end of the stream) are not counted: the packets of a stall show as late."""
    lost: int
    """Sequence numbers never received (RFC 3550's cumulative loss, late arrivals excluded)."""
    late: int
    """Packets that came after their tick had been played."""
    duplicates: int
    """Packets whose sequence number had been seen already."""
    dropped: int
    """Packets received but skipped to keep the delay bounded (a burst beyond the buffer)."""
    resyncs: int
    """Times the playout point was set back behind a stream that fell behind."""
    restarts: int
    """Sequence jumps taken as a new stream."""
    jitter: float
    """RFC 3550 interarrival jitter, in seconds."""


class JitterBuffer:
    """Reorders one input's packets and hands the mixer one payload (or None) per tick."""

    __slots__ = (
        "_base_ext",
        "_behind",
        "_distinct",
        "_ext_max",
        "_frames",
        "_jitter",
        "_last_arrival",
        "_last_ts",
        "_lost_before",
        "_max_seq",
        "_play",
        "_primed",
        "_seen",
        "concealed",
        "depth",
        "dropped",
        "duplicates",
        "frame_samples",
        "idle",
        "late",
        "played",
        "rate",
        "received",
        "restarts",
        "resyncs",
    )

    def __init__(
        self,
        depth: int = 3,
        *,
        frame_samples: int = 160,
        rate: int = 8000,
        idle: float = 0.5,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth {depth}: at least one frame")
        self.depth = depth
        self.frame_samples = frame_samples
        self.rate = rate
        self.idle = idle
        self.received = self.played = self.concealed = 0
        self.late = self.duplicates = self.dropped = self.resyncs = self.restarts = 0
        self._lost_before = 0
        self._frames: dict[int, bytes] = {}
        self._max_seq: int | None = None  # None until the first packet
        self._ext_max = self._base_ext = self._distinct = self._seen = 0
        self._jitter = 0.0
        self._last_arrival = 0.0
        self._last_ts = 0
        self._play: int | None = None  # the timestamp of the next tick; None when quiet
        self._primed = 0
        self._behind: tuple[int, bytes] | None = None  # the newest packet, come after its tick

    # -- the socket side -------------------------------------------------------------------

    def push(self, sequence: int, timestamp: int, payload: bytes, arrival: float) -> bool:
        """Offer one received audio packet; False when it is dropped (late or duplicate)."""
        sequence &= 0xFFFF
        timestamp &= 0xFFFF_FFFF
        if self._max_seq is None:
            self._reset_sequence(sequence, timestamp, arrival)
            newest = True
        else:
            delta = _seq_delta(sequence, self._max_seq)
            if delta > MAX_DROPOUT or delta < -MAX_MISORDER:
                self.restarts += 1
                self._lost_before += self._lost_now()
                self.dropped += len(self._frames)
                self._frames.clear()
                self._play = None
                self._behind = None
                self._reset_sequence(sequence, timestamp, arrival)
                newest = True
            elif delta > 0:
                self._seen = ((self._seen << delta) | 1) & _WINDOW_MASK
                self._max_seq = sequence
                self._ext_max += delta
                newest = True
            else:
                back = -delta  # at most MAX_MISORDER, inside the window
                if self._seen >> back & 1:
                    self.duplicates += 1
                    return False
                self._seen |= 1 << back
                self._base_ext = min(self._base_ext, self._ext_max - back)
                newest = False
            self._distinct += 1
            # RFC 3550 6.4.1: D = (Rj - Ri) - (Sj - Si) in timestamp units, J += (|D| - J) / 16
            transit = (arrival - self._last_arrival) * self.rate - _ts_delta(
                timestamp, self._last_ts
            )
            self._jitter += (abs(transit) - self._jitter) / 16
        self._last_arrival = arrival
        self._last_ts = timestamp
        return self._place(timestamp, payload, newest)

    def _place(self, timestamp: int, payload: bytes, newest: bool) -> bool:
        frame = self.frame_samples
        if self._play is None:
            self._prime(timestamp)
        assert self._play is not None
        ahead = _ts_delta(timestamp, self._play)
        if ahead < 0:
            if newest:
                # Newer than all else, yet its tick has passed. Either the sender's timeline fell
                # behind ours (a delay step, a slow clock) or this is the head of a burst whose
                # tail is still on time; the next tick tells which (see `pop`).
                if self._behind is not None:
                    self.late += 1
                self._behind = (timestamp, payload)
                return True
            self.late += 1
            return False
        elif ahead > 2 * self.depth * frame:
            # too far ahead: skip to `depth` frames before it, dropping what is skipped
            self._play = (timestamp - self.depth * frame) % _TS
            for ts in [ts for ts in self._frames if _ts_delta(ts, self._play) < 0]:
                del self._frames[ts]
                self.dropped += 1
            ahead = self.depth * frame
        slot = (self._play + (ahead + frame // 2) // frame * frame) % _TS
        if slot in self._frames:
            self.duplicates += 1  # another packet for the same 20 ms: keep the first
            return False
        self._frames[slot] = payload
        self.received += 1
        return True

    def _resync(self) -> None:
        """The newest packet came after its tick and nothing on time followed it: set the
        playout point back so that it plays `depth` ticks from now."""
        assert self._behind is not None
        timestamp, payload = self._behind
        self._behind = None
        self.resyncs += 1
        self._prime(timestamp)
        self._frames[timestamp] = payload
        self.received += 1

    def _prime(self, timestamp: int) -> None:
        self._play = (timestamp - self.depth * self.frame_samples) % _TS
        self._primed = timestamp

    def _reset_sequence(self, sequence: int, timestamp: int, arrival: float) -> None:
        self._max_seq = sequence
        self._ext_max = self._base_ext = sequence
        self._seen = 1
        self._distinct = 1
        self._jitter = 0.0
        self._last_arrival = arrival
        self._last_ts = timestamp

    # -- the mixer side --------------------------------------------------------------------

    def pop(self, now: float) -> bytes | None:
        """The payload for this 20 ms tick, or None (silence; nothing arrived in time for it)."""
        if self._play is None:
            return None
        frames = self._frames
        if self._behind is not None:
            if frames:  # a burst's head: its tail is on time, keep the delay as it is
                self._behind = None
                self.late += 1
            else:
                self._resync()
        elif not frames and now - self._last_arrival >= self.idle:
            self._play = None  # idle: the next packet primes the buffer again
            return None
        slot = self._play
        self._play = (slot + self.frame_samples) % _TS
        payload = frames.pop(slot, None)
        if payload is not None:
            self.played += 1
        elif frames and _ts_delta(slot, self._primed) >= 0:
            self.concealed += 1  # a hole: later audio is here, this tick's is lost or late
        return payload

    # -- counters --------------------------------------------------------------------------

    def _lost_now(self) -> int:
        if self._max_seq is None:
            return 0
        return max(0, self._ext_max - self._base_ext + 1 - self._distinct)

    @property
    def buffered(self) -> int:
        """Packets held for the coming ticks."""
        return len(self._frames)

    @property
    def delay(self) -> float:
        """Seconds from now until the newest packet plays (0 when nothing is buffered)."""
        if self._play is None or not self._frames:
            return 0.0
        ahead = max(_ts_delta(ts, self._play) for ts in self._frames)
        return (ahead + self.frame_samples) / self.rate

    def stats(self) -> JitterStats:
        return JitterStats(
            received=self.received,
            played=self.played,
            concealed=self.concealed,
            lost=self._lost_before + self._lost_now(),
            late=self.late,
            duplicates=self.duplicates,
            dropped=self.dropped,
            resyncs=self.resyncs,
            restarts=self.restarts,
            jitter=self._jitter / self.rate,
        )
