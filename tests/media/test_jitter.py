"""The jitter buffer against a simulated network: packets sent every 20 ms arrive in order,
reordered, duplicated, lost, late, across the sequence and timestamp wrap, in a burst after a
stall, after a pause, from a sender whose clock is slow or fast; the mixer's clock pops one
payload per 20 ms and the test reads which frame each tick played."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from bridge.media.jitter import JitterBuffer

TICK = 0.02
FRAME = 160


class Sender:
    """A 20 ms G.711 stream whose k-th payload says k (so the test can read what played)."""

    def __init__(self, sequence: int = 1000, timestamp: int = 50_000) -> None:
        self.sequence = sequence
        self.timestamp = timestamp

    def packet(self, k: int, ts_offset: int = 0) -> tuple[int, int, bytes]:
        seq = (self.sequence + k) & 0xFFFF
        ts = (self.timestamp + k * FRAME + ts_offset) & 0xFFFF_FFFF
        return seq, ts, k.to_bytes(4, "big") * 40


def frame_number(payload: bytes | None) -> int | None:
    return None if payload is None else int.from_bytes(payload[:4], "big")


def play(
    jb: JitterBuffer,
    arrivals: Iterable[tuple[float, int]],
    ticks: int,
    sender: Sender | None = None,
    ts_offsets: dict[int, int] | None = None,
    start: float = 0.0,
) -> list[int | None]:
    """Deliver `(arrival time, k)` packets and tick every 20 ms from `start` + 0.02: what each
    tick played.

    A packet arriving before a tick's time is pushed before that tick's pop.
    """
    sender = sender or Sender()
    pending = sorted(arrivals)
    out: list[int | None] = []
    i = 0
    for n in range(1, ticks + 1):
        now = start + n * TICK
        while i < len(pending) and pending[i][0] < now:
            at, k = pending[i]
            seq, ts, payload = sender.packet(k, (ts_offsets or {}).get(k, 0))
            jb.push(seq, ts, payload, at)
            i += 1
        out.append(frame_number(jb.pop(now)))
    return out


def on_time(ks: Iterable[int], delay: float = 0.005) -> list[tuple[float, int]]:
    """Packet k sent at k * 20 ms, arriving `delay` later."""
    return [(k * TICK + delay, k) for k in ks]


def played(out: list[int | None]) -> list[int]:
    return [k for k in out if k is not None]


def lead(out: list[int | None]) -> int:
    """Ticks before the first frame played (the buffer's delay, in ticks)."""
    return next(i for i, k in enumerate(out) if k is not None)


def test_in_order_plays_every_frame_once_after_depth_ticks() -> None:
    jb = JitterBuffer(depth=3)
    out = play(jb, on_time(range(50)), 60)
    assert played(out) == list(range(50))
    first = lead(out)
    assert out[first : first + 50] == list(range(50))  # no gap once playing
    assert first == 3  # packet 0 arrived before tick 1: it plays three ticks later
    s = jb.stats()
    assert (s.received, s.played, s.lost, s.late, s.duplicates, s.concealed) == (50, 50, 0, 0, 0, 0)
    assert s.jitter == pytest.approx(0.0, abs=1e-9)
    # after the stream ends the buffer goes quiet: no concealment is counted for the hang-up
    play(jb, [], 100)
    assert jb.stats().concealed == 0


def test_depth_is_the_delay() -> None:
    for depth in (1, 2, 5):
        out = play(JitterBuffer(depth=depth), on_time(range(20)), 30)
        assert lead(out) == depth
        assert played(out) == list(range(20))


def test_reordered_packets_play_in_order() -> None:
    arrivals = on_time(range(40))
    # 5 and 6 swapped, 10 comes 50 ms late (behind 11 and 12), 20..23 arrive in reverse
    swapped = {5: 6, 6: 5, 20: 23, 21: 22, 22: 21, 23: 20}
    arrivals = [(at, swapped.get(k, k)) for at, k in arrivals]
    arrivals = [(at + 0.05 if k == 10 else at, k) for at, k in arrivals]
    jb = JitterBuffer(depth=3)
    out = play(jb, arrivals, 50)
    first = lead(out)
    assert out[first : first + 40] == list(range(40))
    s = jb.stats()
    assert (s.played, s.late, s.lost, s.concealed, s.duplicates) == (40, 0, 0, 0, 0)
    assert s.jitter > 0


def test_duplicates_are_dropped_and_counted() -> None:
    arrivals = on_time(range(30)) + on_time(range(30), delay=0.012)
    arrivals += [(0.5, 3)]  # a copy of a packet played long ago
    jb = JitterBuffer()
    out = play(jb, arrivals, 40)
    assert played(out) == list(range(30))
    s = jb.stats()
    assert s.duplicates == 31
    assert (s.received, s.late, s.lost) == (30, 0, 0)


def test_lost_packets_are_silence_and_counted() -> None:
    jb = JitterBuffer()
    lost = {7, 8, 21}
    out = play(jb, on_time(k for k in range(30) if k not in lost), 40)
    first = lead(out)
    expected = [None if k in lost else k for k in range(30)]
    assert out[first : first + 30] == expected
    s = jb.stats()
    assert (s.lost, s.concealed, s.late, s.played) == (3, 3, 0, 27)


def test_a_packet_after_its_tick_is_late_not_played() -> None:
    arrivals = [(at + 0.1 if k == 10 else at, k) for at, k in on_time(range(30))]
    jb = JitterBuffer(depth=3)
    out = play(jb, arrivals, 40)
    first = lead(out)
    assert out[first : first + 30] == [None if k == 10 else k for k in range(30)]
    s = jb.stats()
    assert (s.late, s.lost, s.concealed, s.resyncs) == (1, 0, 1, 0)
    # a copy of the late packet is a duplicate, not a second late one
    jb.push(*Sender().packet(10), 0.9)
    assert (jb.stats().late, jb.stats().duplicates) == (1, 1)


def test_sequence_and_timestamp_wrap() -> None:
    sender = Sender(sequence=65530, timestamp=0xFFFF_FFFF - 5 * FRAME)
    arrivals = on_time(k for k in range(30) if k != 9)  # 9 (sequence 3) is lost
    arrivals = [(at, {4: 6, 6: 4}.get(k, k)) for at, k in arrivals]  # 4 and 6 swap over 65535
    jb = JitterBuffer()
    out = play(jb, arrivals, 40, sender)
    first = lead(out)
    assert out[first : first + 30] == [None if k == 9 else k for k in range(30)]
    s = jb.stats()
    assert (s.lost, s.late, s.duplicates, s.restarts, s.resyncs) == (1, 0, 0, 0, 0)


def test_a_burst_after_a_stall_keeps_the_delay_bounded() -> None:
    """The network holds packets 20..29 for 200 ms and delivers them at once with 30."""
    stall = {k: 30 * TICK + 0.005 for k in range(20, 30)}
    arrivals = [(stall.get(k, at), k) for at, k in on_time(range(80))]
    jb = JitterBuffer(depth=3)
    out = play(jb, arrivals, 90)
    tick_of = {k: i for i, k in enumerate(out) if k is not None}
    # before the stall: steady, three ticks behind; after it, the same three ticks: the
    # packets whose ticks passed during the stall are late, the rest play in order
    assert all(tick_of[k] - k == 3 for k in range(20)), "unsteady before the stall"
    assert all(tick_of[k] - k == 3 for k in range(27, 80)), "the delay crept up after the burst"
    assert played(out) == [*range(20), *range(27, 80)]
    s = jb.stats()
    assert (s.lost, s.late, s.dropped, s.resyncs) == (0, 7, 0, 0)


def test_a_delay_step_is_followed_not_dropped() -> None:
    """From packet 20 on the network path is 100 ms longer: the buffer follows it (one resync)
    instead of dropping everything from then on as late."""
    arrivals = [(at + (0.1 if k >= 20 else 0), k) for at, k in on_time(range(60))]
    jb = JitterBuffer(depth=3)
    out = play(jb, arrivals, 80)
    tick_of = {k: i for i, k in enumerate(out) if k is not None}
    assert all(tick_of[k] - k == 3 for k in range(20))
    assert {tick_of[k] - k for k in range(21, 60)} == {3 + 5}  # the 100 ms, no more
    s = jb.stats()
    assert (s.resyncs, s.lost, s.dropped) == (1, 0, 0)
    assert s.played >= 59


def test_a_sender_pause_resumes_in_place() -> None:
    """Silence suppression: the timestamp jumps 2 s, the sequence does not."""
    jb = JitterBuffer()
    arrivals = on_time(range(10)) + [(2.2 + at, k) for at, k in on_time(range(10, 20))]
    pause = 2.2 / TICK * FRAME
    out = play(jb, arrivals, 150, ts_offsets={k: int(pause) for k in range(10, 20)})
    assert played(out) == list(range(20))
    s = jb.stats()
    assert (s.lost, s.late, s.concealed, s.dropped) == (0, 0, 0, 0)


@pytest.mark.parametrize("period", [0.0204, 0.0196])
def test_a_sender_clock_off_by_2_percent(period: float) -> None:
    """A slow sender is caught up with (resyncs), a fast one is trimmed (drops): the delay stays
    within 2 * depth ticks, and no stretch of packets is lost to lateness."""
    depth = 3
    jb = JitterBuffer(depth=depth)
    arrivals = [(k * period + 0.005, k) for k in range(500)]
    out = play(jb, arrivals, 520)
    tick_of = {k: i for i, k in enumerate(out) if k is not None}
    lags = [(tick_of[k] + 1) * TICK - arrivals[k][0] for k in tick_of]  # index 0 is t=0.02
    assert min(lags) >= 0
    assert max(lags) <= (2 * depth + 2) * TICK  # 2 * depth + 1 frames ahead, and the phase
    s = jb.stats()
    assert s.late == 0 and s.lost == 0
    assert s.played >= 490
    if period > TICK:
        assert s.resyncs > 0
    else:
        assert s.dropped > 0


def test_a_sequence_jump_is_a_new_stream() -> None:
    jb = JitterBuffer()
    sender = Sender()
    restarted = Sender(sequence=sender.sequence + 20_000, timestamp=9_999_999)
    first = play(jb, on_time(range(10)), 15, sender)
    rest = play(jb, [(0.3 + at, k) for at, k in on_time(range(20))], 25, restarted, start=0.3)
    assert played(first) == list(range(10))
    assert played(rest) == list(range(20))
    s = jb.stats()
    assert s.restarts == 1
    assert s.lost == 0


def test_nothing_before_the_first_packet() -> None:
    jb = JitterBuffer()
    assert [jb.pop(n * TICK) for n in range(5)] == [None] * 5
    assert jb.stats().concealed == 0
    assert jb.buffered == 0 and jb.delay == 0.0


def test_depth_must_be_a_frame_at_least() -> None:
    with pytest.raises(ValueError):
        JitterBuffer(depth=0)


def test_interarrival_jitter_is_rfc_3550s() -> None:
    """Packets alternately 0 and 10 ms late: every transit difference is 10 ms, J tends to it."""
    jb = JitterBuffer()
    play(jb, [(k * TICK + (0.01 if k % 2 else 0.0), k) for k in range(200)], 210)
    assert jb.stats().jitter == pytest.approx(0.010, rel=0.01)


def test_what_is_buffered_and_how_far_ahead() -> None:
    jb = JitterBuffer(depth=3)
    sender = Sender()
    for k in (0, 1, 2):
        jb.push(*sender.packet(k), 0.001)
    assert jb.buffered == 3
    # packet 2 plays at the sixth tick from now (three of delay, then 0 and 1 before it)
    assert jb.delay == pytest.approx(6 * TICK)
    # a second packet for the same 20 ms (another sequence number) keeps the first
    sequence_of_5, timestamp_of_1 = sender.packet(5)[0], sender.packet(1)[1]
    assert jb.push(sequence_of_5, timestamp_of_1, b"other", 0.002) is False
    assert jb.stats().duplicates == 1
    assert [frame_number(jb.pop(t * TICK)) for t in range(1, 7)] == [None, None, None, 0, 1, 2]
