"""Overload control's decisions (bridge.sip.overload), sans-I/O: limits, CoDel's rule on the
wait of new work, the state changes the daemon logs."""

from __future__ import annotations

import pytest

from bridge.sip.overload import Admission, OverloadPolicy


def admission(**policy: object) -> Admission:
    return Admission(OverloadPolicy(**policy), now=0.0, jitter=lambda: 0.5)  # type: ignore[arg-type]


def call(a: Admission, now: float, waited: float = 0.0, **kw: object) -> str | None:
    args = {"source": "10.0.0.5", "trunk": True, "live_calls": 0, **kw}
    refusal = a.call(now, waited, **args)  # type: ignore[arg-type]
    return None if refusal is None else refusal.reason


def test_nothing_is_refused_without_limits_or_load() -> None:
    a = admission()
    assert all(call(a, i / 1000) is None for i in range(5000))
    assert all(a.registration(i / 1000, 0.0) is None for i in range(5000))
    assert a.counts == {("call", "admitted"): 5000, ("registration", "admitted"): 5000}


def test_concurrent_calls_limit() -> None:
    a = admission(max_calls=10)
    assert call(a, 1.0, live_calls=9) is None
    refusal = a.call(1.0, 0.0, source="h", trunk=False, live_calls=10)
    assert refusal is not None and refusal.reason == "max_calls" and refusal.retry_after == 5


def test_calls_per_second_is_a_bucket_of_one_seconds_worth() -> None:
    a = admission(calls_per_second=100)
    got = [call(a, 0.0) for _ in range(150)]
    assert got.count(None) == 100 and got.count("calls_per_second") == 50
    assert call(a, 0.005) == "calls_per_second"  # half a token after 5 ms
    assert call(a, 0.0101) is None  # one after 10 ms
    assert call(a, 0.0102) == "calls_per_second"
    assert [call(a, 0.5) for _ in range(50)].count(None) == 49  # refilled at 100/s
    # An offered 300/s for 10 s: 100/s get in (and the first second's burst).
    a = admission(calls_per_second=100)
    admitted = sum(call(a, 1 + i / 300) is None for i in range(3000))
    assert 1000 <= admitted <= 1101


def test_each_trunk_source_has_its_own_rate() -> None:
    a = admission(trunk_calls_per_second=5)
    assert [call(a, 0.0, source="10.0.0.5") for _ in range(6)].count(None) == 5
    assert call(a, 0.0, source="10.0.0.5") == "trunk_calls_per_second"
    assert call(a, 0.0, source="10.0.0.6") is None  # another trunk
    assert call(a, 0.0, source="10.0.0.5", trunk=False) is None  # a phone: not a trunk's


def test_registrations_have_their_own_rate() -> None:
    a = admission(registrations_per_second=2, calls_per_second=1000)
    got = [a.registration(0.0, 0.0) for _ in range(3)]
    assert [g.reason if g else None for g in got] == [None, None, "registrations_per_second"]
    assert call(a, 0.0) is None


def test_transactions_limit() -> None:
    a = admission(max_transactions=100)
    assert call(a, 0.0, transactions=99) is None
    assert call(a, 0.0, transactions=100) == "max_transactions"
    refusal = a.registration(0.0, 0.0, transactions=100)
    assert refusal is not None and refusal.reason == "max_transactions"


def test_a_burst_over_the_target_is_let_through() -> None:
    """Waits over the target for less than the interval: a burst, admitted."""
    a = admission(queue_delay_target=0.02, interval=0.1)
    assert all(call(a, 1.0 + i / 1000, waited=0.05) is None for i in range(90))
    assert call(a, 1.095, waited=0.01) is None  # under the target: the count starts again
    assert call(a, 1.15, waited=0.05) is None
    assert call(a, 1.2, waited=0.05) is None


def test_a_standing_queue_is_refused_each_by_its_wait_until_an_interval_passes_under_it() -> None:
    a = admission(queue_delay_target=0.02, interval=0.1)
    assert call(a, 1.0, waited=0.2) is None
    assert call(a, 1.05, waited=0.2) is None
    assert call(a, 1.1, waited=0.2) == "load"
    refusal = a.registration(1.11, 0.3)
    assert refusal is not None and refusal.reason == "load"
    assert refusal.retry_after == 7  # 5 + 0.5 * 5: spread over [5, 10)
    assert call(a, 1.12, waited=0.019) is None  # under the target: admitted ...
    assert call(a, 1.13, waited=0.05) == "load"  # ... but the refusing goes on (no new grace)
    assert call(a, 1.2, waited=0.01) is None
    assert call(a, 1.22, waited=0.03) == "load"  # 90 ms after the last wait over the target
    # an interval (0.1 s) with no wait over the target: calm again, and a burst has its grace
    assert call(a, 1.33, waited=0.01) is None
    assert call(a, 1.34, waited=0.05) is None
    assert call(a, 1.43, waited=0.05) is None
    assert call(a, 1.45, waited=0.05) == "load"
    # calm again after an interval with no new work at all: the next wait over the target
    # starts a new interval (not one counted from before the refusing)
    assert call(a, 1.6, waited=0.05) is None
    assert call(a, 1.65, waited=0.05) is None
    assert call(a, 1.71, waited=0.05) == "load"


def test_while_refusing_only_calls_that_waited_under_the_target_are_admitted() -> None:
    """A flood whose waits swing around the target (a queue the refusals keep draining): once
    refusing, every call admitted had waited under the target, not a burst behind each one."""
    a = admission(queue_delay_target=0.02, interval=0.1)
    admitted = []
    for i in range(3000):
        now = 1.0 + i / 900
        # a standing queue for 0.22 s, then 30 in under the target, 30 over, and so on
        waited = 0.045 if i < 200 else 0.005 + 0.04 * ((i // 30) % 2)
        if call(a, now, waited=waited) is None:
            admitted.append((now, waited))
    late = [w for now, w in admitted if now > 1.2]
    assert len(late) > 1000 and max(late) <= 0.02


def test_a_zero_target_turns_the_load_rule_off() -> None:
    a = admission(queue_delay_target=0)
    assert all(call(a, i / 10, waited=5.0) is None for i in range(100))


def test_state_changes_are_reported_once_with_what_was_refused() -> None:
    a = admission(queue_delay_target=0.02, interval=0.1, calls_per_second=1)
    assert a.tick(0.5) is None and not a.overloaded
    call(a, 1.0, waited=0.5)
    for i in range(10):
        call(a, 1.2 + i / 100, waited=0.5)
    change = a.tick(1.3)
    assert change is not None and change.overloaded and a.overloaded
    assert change.refused == {"load": 10}
    assert a.tick(1.5) is None  # still within CALM_AFTER of the last load refusal
    back = a.tick(2.4)
    assert back is not None and not back.overloaded and not a.overloaded


@pytest.mark.parametrize("waits", [[0.0] * 50, [0.3] * 50])
def test_queue_delay_follows_the_waits(waits: list[float]) -> None:
    a = admission()
    for i, wait in enumerate(waits):
        call(a, i / 100, waited=wait)
    assert a.queue_delay == pytest.approx(waits[-1], abs=0.02)


def test_the_kernel_timestamp_gives_a_datagrams_wait_read_at_most_once_a_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`_Udp._waited` reads how long the datagram just read sat in the socket (SIOCGSTAMP),
    and within `WAIT_SAMPLE_SECONDS` of a reading gives that reading again (a flood is read a
    few dozen datagrams per loop pass)."""
    import socket
    import time

    from bridge.sip import transport

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        monkeypatch.setattr(transport, "WAIT_SAMPLE_SECONDS", 60.0)  # (a slow machine's ms)
        udp = transport._Udp(endpoint=None)  # type: ignore[arg-type]
        udp.connection_made(_SocketOnly(receiver))  # type: ignore[arg-type]
        # (its first SIOCGSTAMP turns the kernel's receive timestamps on, which the kernel may
        # do a moment later: a datagram that arrives before is stamped when it is read)
        time.sleep(0.1)
        sender.sendto(b"first", receiver.getsockname())
        time.sleep(0.06)
        receiver.recv(100)
        waited = udp._waited()
        assert 0.05 <= waited < 5.0
        sender.sendto(b"second", receiver.getsockname())
        receiver.recv(100)
        assert udp._waited() == waited  # (within the window: not read again)
        udp._sampled_at -= 60.0  # the window over
        assert udp._waited() < 0.05  # the second datagram's own wait
    finally:
        receiver.close()
        sender.close()


class _SocketOnly:
    def __init__(self, sock: object) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None
