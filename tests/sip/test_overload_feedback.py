"""RFC 7339 loss feedback, sans-I/O: which Vias ask for it, how ours is written into them,
the percentage the server sends as refusals come and go, and how the client takes and
honours a peer's (bridge.sip.overload_feedback)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from bridge.sip.grammar import parse_via
from bridge.sip.overload_feedback import (
    CALM_STEP,
    CLIENT_PARAMS,
    LINGER,
    MAX_PERCENT,
    MAX_VALIDITY_MS,
    WINDOW,
    LossFeedback,
    PeerFeedback,
    asks_for_feedback,
    with_feedback,
)

VIA = "SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK-1"
SEQ = re.compile(r"oc-seq=(\d{1,12}\.\d{1,5})")  # RFC 7339's oc-seq grammar


def test_which_vias_ask_for_feedback() -> None:
    assert asks_for_feedback(VIA + ";oc")
    assert asks_for_feedback(VIA + ";rport;oc;received=10.0.0.1")
    assert asks_for_feedback(VIA + ';oc;oc-algo="loss"')
    assert asks_for_feedback(VIA + ';oc;oc-algo="rate,loss"')
    assert asks_for_feedback(VIA + ' ; OC ; oc-algo = "LOSS"')
    assert not asks_for_feedback(VIA)
    assert not asks_for_feedback(VIA + ';oc;oc-algo="rate"')  # no algorithm in common
    assert not asks_for_feedback(VIA + ";oc-validity=500")  # not the `oc` parameter itself
    assert not asks_for_feedback(VIA + ";ocean=1")
    assert not asks_for_feedback("SIP/2.0/UDP docker.example:5060;branch=z9hG4bK-oc")


def test_our_feedback_replaces_the_clients_parameters_and_keeps_the_rest() -> None:
    via = VIA + ';rport=5070;oc;oc-algo="loss,rate";received=198.51.100.7'
    written = with_feedback(via, ';oc=40;oc-validity=1000;oc-seq=12.500;oc-algo="loss"')
    params = parse_via(written).params
    assert params["oc"] == "40" and params["oc-validity"] == "1000"
    assert params["oc-seq"] == "12.500" and params["oc-algo"] == '"loss"'
    assert params["branch"] == "z9hG4bK-1" and params["rport"] == "5070"
    assert params["received"] == "198.51.100.7"
    assert written.count(";oc=") == 1 and "rate" not in written


def test_nothing_is_said_until_calls_are_refused() -> None:
    feedback = LossFeedback()
    feedback.update(0.0, 0, 0)
    for step in range(1, 10):  # calls come, none refused
        assert not feedback.update(step * WINDOW, 100 * step, 0)
        assert feedback.params(step * WINDOW) is None


def test_the_percentage_covers_what_is_still_refused_then_falls_in_steps() -> None:
    feedback = LossFeedback(validity_ms=800)
    feedback.update(0.0, 0, 0)
    assert not feedback.update(WINDOW / 2, 100, 60)  # within the window: not yet
    assert feedback.update(WINDOW, 100, 60)
    assert feedback.percent == 60
    params = feedback.params(WINDOW)
    assert params is not None
    assert params.startswith(";oc=60;oc-validity=800;") and params.endswith(';oc-algo="loss"')
    # The client now holds back 60 %; of what still comes, a quarter is refused: the share
    # held back grows to cover it, 1 - 0.4 * 0.75 = 70 %.
    assert feedback.update(2 * WINDOW, 140, 70)
    assert feedback.percent == 70
    # Nothing refused: down by CALM_STEP a window, to 0.
    now, offered, percents = 2 * WINDOW, 140, []
    while feedback.percent:
        now += WINDOW
        offered += 10
        feedback.update(now, offered, 70)
        percents.append(feedback.percent)
    assert percents == list(range(70 - CALM_STEP, -1, -CALM_STEP))
    # Back at 0: "stop now" for LINGER seconds, then nothing.
    assert feedback.params(now) == f';oc=0;oc-validity=0;oc-seq={now:.3f};oc-algo="loss"'
    assert feedback.params(now + LINGER - 0.01) is not None
    assert feedback.params(now + LINGER) is None


def test_the_percentage_holds_while_new_work_queues_without_refusals() -> None:
    feedback = LossFeedback()
    feedback.update(0.0, 0, 0)
    feedback.update(WINDOW, 100, 50)
    assert feedback.percent == 50
    # Calls come, none refused, but they wait: the client is not let back in yet.
    assert not feedback.update(2 * WINDOW, 150, 50, queued=True)
    assert feedback.percent == 50
    # No calls at all: the wait measured last is stale, so it falls as when calm.
    assert feedback.update(3 * WINDOW, 150, 50, queued=True)
    assert feedback.percent == 50 - CALM_STEP
    assert feedback.update(4 * WINDOW, 200, 50)
    assert feedback.percent == 50 - 2 * CALM_STEP


def test_the_percentage_is_capped_so_fresh_feedback_keeps_coming() -> None:
    feedback = LossFeedback()
    feedback.update(0.0, 0, 0)
    for window in range(1, 6):
        feedback.update(window * WINDOW, 1000 * window, 1000 * window)  # all refused
    assert feedback.percent == MAX_PERCENT


def test_the_sequence_grows_with_time_in_the_rfc_grammar() -> None:
    feedback = LossFeedback()
    feedback.update(0.0, 0, 0)
    feedback.update(WINDOW, 10, 5)
    seqs = []
    for now in (WINDOW, WINDOW + 0.001, 123456.789):
        params = feedback.params(now)
        assert params is not None
        match = SEQ.search(params)
        assert match is not None
        seqs.append(float(match.group(1)))
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_the_client_takes_newer_feedback_until_its_validity_runs_out() -> None:
    peer = PeerFeedback()
    ours = VIA + ";rport=5060" + CLIENT_PARAMS
    assert not peer.receive(0.0, ours)  # our own request's Via: no value, nothing to take
    assert peer.receive(1.0, with_feedback(ours, ";oc=50;oc-validity=2000;oc-seq=10.000"))
    assert peer.active(1.0) == 50 and peer.active(2.99) == 50 and peer.active(3.0) == 0
    # An older or a repeated value (responses overtaking each other) is not taken.
    assert not peer.receive(1.5, with_feedback(ours, ";oc=90;oc-validity=2000;oc-seq=9.5"))
    assert not peer.receive(1.5, with_feedback(ours, ";oc=90;oc-validity=2000;oc-seq=10.000"))
    assert peer.active(1.5) == 50
    # oc-validity=0: stop at once.
    assert peer.receive(1.6, with_feedback(ours, ";oc=0;oc-validity=0;oc-seq=10.100"))
    assert peer.active(1.6) == 0
    # Without oc-validity the feedback holds 500 ms.
    assert peer.receive(2.0, with_feedback(ours, ";oc=30;oc-seq=11"))
    assert peer.active(2.49) == 30 and peer.active(2.5) == 0


def test_the_client_ignores_feedback_it_cannot_use() -> None:
    peer = PeerFeedback()
    for params in (
        ";oc=50;oc-validity=1000",  # no oc-seq: cannot be ordered
        ";oc=50;oc-seq=abc",
        ";oc=fifty;oc-seq=1.0",
        ";oc=50;oc-seq=1.0;oc-validity=soon",
        ';oc=50;oc-seq=1.0;oc-algo="rate"',  # not the algorithm we do
    ):
        assert not peer.receive(0.0, VIA + params), params
    assert peer.active(0.0) == 0 and peer.received == 0
    # A server that appended its value after our valueless `oc` still means it.
    assert peer.receive(0.0, VIA + CLIENT_PARAMS + ";oc=20;oc-seq=1.0;oc-validity=1000")
    assert peer.active(0.0) == 20


def test_a_peers_feedback_holds_at_most_a_minute() -> None:
    """A trunk asking for 100 % for days would hold every call back with no way to hear
    better: after MAX_VALIDITY_MS we send again and take what the answers say."""
    peer = PeerFeedback()
    assert peer.receive(0.0, VIA + ";oc=100;oc-validity=259200000;oc-seq=1.0")
    assert peer.active(MAX_VALIDITY_MS / 1000 - 0.001) == 100
    assert peer.active(MAX_VALIDITY_MS / 1000) == 0
    assert peer.receive(100.0, VIA + ";oc=100;oc-validity=" + "9" * 5000 + ";oc-seq=2.0")
    assert peer.active(100.0 + MAX_VALIDITY_MS / 1000) == 0
    assert peer.receive(200.0, VIA + ";oc=" + "7" * 5000 + ";oc-seq=3.0")
    assert peer.active(200.0) == 100


@given(st.text(max_size=200))
def test_no_via_text_makes_the_client_raise(text: str) -> None:
    """Whatever a peer puts in the Via of its answers (digits that are not ASCII, "²" among
    them, which str.isdigit takes and int refuses) is taken or ignored, never raised on."""
    peer = PeerFeedback()
    for via in (text, VIA + text, VIA + ";oc=" + text, VIA + ";oc=5;oc-seq=1;oc-validity=" + text):
        peer.receive(0.0, via)
        asks_for_feedback(via)
        with_feedback(via, ";oc=1")
    assert 0 <= peer.active(0.0) <= 100
    assert not peer.receive(1.0, VIA + ";oc=²;oc-seq=9.0")
    assert not peer.receive(1.0, VIA + ";oc=5;oc-seq=١٢.0")


def test_the_client_holds_back_the_share_asked() -> None:
    peer = PeerFeedback()
    peer.receive(0.0, VIA + ";oc=30;oc-validity=1000;oc-seq=1.0")
    draws = [i / 1000 for i in range(1000)]  # uniform over [0, 1)
    sent = sum(peer.admits(0.5, draw) for draw in draws)
    assert sent == 700
    assert all(peer.admits(1.0, draw) for draw in draws)  # expired: everything goes


@given(
    percent=st.integers(0, MAX_PERCENT),
    validity=st.integers(100, 60_000),
    now=st.floats(0, 10**9, allow_nan=False),
    extra=st.lists(st.sampled_from([";rport", ";rport=5070", ";received=10.1.2.3", ";ttl=1"])),
)
def test_what_the_server_writes_the_client_reads(
    percent: int, validity: int, now: float, extra: list[str]
) -> None:
    """The two halves agree on the wire: any feedback we send, written into any client Via
    that asked for it, parses as a Via and is read back as sent."""
    feedback = LossFeedback(validity_ms=validity)
    feedback.percent = percent
    feedback._zero_since = now  # (percent 0: the "stop now" form)
    params = feedback.params(now)
    assert params is not None
    via = with_feedback(VIA + "".join(extra) + CLIENT_PARAMS, params)
    parse_via(via)
    peer = PeerFeedback()
    assert peer.receive(0.0, via)
    assert peer.percent == percent
    assert peer.until == (validity / 1000 if percent else 0.0)
