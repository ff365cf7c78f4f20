"""Two ways a caller's requests reach us that are not what a plain call sends.

- **A BYE in the early dialog** (RFC 3261 §15: "the caller's UA MAY send a BYE for either
  confirmed or early dialogs"; some gateways hang up a ringing call so instead of with a
  CANCEL). It was answered 481 and the phones went on ringing for a caller who had gone: an
  agent picking up got silence. Now: 200 to the BYE, 487 to the INVITE (§15.1.2), the phones
  CANCELled, the call recorded as the caller's hang-up.
- **A merged request** (§8.2.2.2): the same INVITE (Call-ID, From tag, CSeq) again on another
  branch, as when a trunk's INVITE reaches us by two paths or a proxy fails over and re-sends
  it. It became a second call, and the agents were rung twice for one caller. Now: 482.

- **Why the caller left** (RFC 3326 Reason on its CANCEL or early BYE): a forking proxy
  upstream that rang us and another destination CANCELs us with `cause=200` when the other
  answered. The phones' CANCELs carried no Reason, so each desk phone logged a missed call.
  Now the Reason is copied into them (RFC 3326 §3).
- **An INVITE that expires** (its `Expires`, RFC 3261 §13.3.1; some carriers send one and
  count on our 487 rather than CANCEL): it was ignored and the phones rang on for a caller
  the carrier had given up on. Now: 487 when it expires unanswered, the phones CANCELled.

In process with a fake clock, and with SIPp as the trunk against the daemon
(tests/sip/scenarios/trunk_early_bye.xml, trunk_merged.xml, trunk_invite_expires.xml).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sim.phones.inproc import (
    DESK_ANSWER,
    DESK_PHONE,
    DESK_RINGING,
    SDP,
    TRUNK,
    InprocBridge,
    contact_uri,
    header,
    is_request,
    is_response,
    one_desk_phone_directory,
    respond,
    signalling_bridge,
    trunk_cancel,
    trunk_in_dialog,
    trunk_invite,
)
from structlog.testing import capture_logs

from tests.sip.peers import needs_sipp
from tests.sip.test_reliable_provisionals import prack
from tests.sip.test_sipp_calls import directory, run_trunk, start_phone, trace, wait_registered

LINE = "+15550100"
PHONE = DESK_PHONE

Sent = list[tuple[bytes, tuple[str, int]]]


@pytest.fixture
async def bridge() -> AsyncIterator[InprocBridge]:
    async with signalling_bridge(LINE) as bridge:
        yield bridge


def ring(bridge: InprocBridge, n: int = 1, extra: str = "") -> tuple[bytes, bytes]:
    """The trunk's INVITE; the phone rings. The phone's INVITE and the trunk's 18x."""
    bridge.feed(trunk_invite(n, LINE, bridge.address, extra), TRUNK)
    [leg] = [d for d, a in bridge.take() if a == PHONE and is_request(d, "INVITE")]
    bridge.feed(respond(leg, "180 Ringing", b"ph1", DESK_RINGING), PHONE)
    [ringing] = [d for d, a in bridge.take() if a == TRUNK and is_response(d, 180, "INVITE")]
    return leg, ringing


def early_bye(ringing: bytes, n: int = 1, cseq: int = 2, extra: str = "") -> bytes:
    """The trunk's BYE in the early dialog of our 180 (its To tag)."""
    to_ = header(ringing, "To") or ""
    return trunk_in_dialog("BYE", cseq, n, to_, contact_uri(ringing), extra)


def live(bridge: InprocBridge) -> int:
    """Calls the B2BUA holds."""
    assert bridge.ctx.sip is not None and bridge.ctx.sip.calls is not None
    return len(bridge.ctx.sip.calls)


def to(sent: Sent, where: tuple[str, int]) -> list[bytes]:
    return [d for d, a in sent if a == where]


async def test_an_early_bye_ends_the_ringing_call(bridge: InprocBridge) -> None:
    leg, ringing = ring(bridge)
    with capture_logs() as logs:
        bridge.feed(early_bye(ringing), TRUNK)
        sent = bridge.take()
    trunk = to(sent, TRUNK)
    assert [d for d in trunk if is_response(d, 200, "BYE")]
    [terminated] = [d for d in trunk if is_response(d, 487, "INVITE")]
    assert header(terminated, "To") == header(ringing, "To")  # the same early dialog
    [cancel] = [d for d in to(sent, PHONE) if is_request(d, "CANCEL")]
    assert header(cancel, "Call-ID") == header(leg, "Call-ID")
    [ended] = [e for e in logs if e["event"] == "sip_call_ended"]
    assert ended["outcome"] == "caller_cancelled"
    assert live(bridge) == 0


ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'


@pytest.mark.parametrize(
    ("reasons", "passed_on"),
    [
        pytest.param([ELSEWHERE], ELSEWHERE, id="answered-elsewhere"),
        pytest.param(
            [ELSEWHERE, "Q.850;cause=16"], f"{ELSEWHERE}, Q.850;cause=16", id="two-protocols"
        ),
        pytest.param([], None, id="none"),
        pytest.param([f'SIP;cause=200;text="{"x" * 300}"'], None, id="too-long-dropped"),
    ],
)
async def test_the_callers_cancel_reason_is_passed_on_to_the_phones(
    bridge: InprocBridge, reasons: list[str], passed_on: str | None
) -> None:
    leg, _ = ring(bridge)
    extra = "\n".join(f"Reason: {reason}" for reason in reasons)
    bridge.feed(trunk_cancel(1, LINE, bridge.address, extra), TRUNK)
    sent = bridge.take()
    assert [d for d in to(sent, TRUNK) if is_response(d, 200, "CANCEL")]
    assert [d for d in to(sent, TRUNK) if is_response(d, 487, "INVITE")]
    [cancel] = [d for d in to(sent, PHONE) if is_request(d, "CANCEL")]
    assert header(cancel, "Call-ID") == header(leg, "Call-ID")
    assert header(cancel, "Reason") == passed_on
    assert live(bridge) == 0


async def test_the_reason_of_an_early_bye_is_passed_on_to_the_phones(
    bridge: InprocBridge,
) -> None:
    _, ringing = ring(bridge)
    bridge.feed(early_bye(ringing, extra=f"Reason: {ELSEWHERE}"), TRUNK)
    [cancel] = [d for d in to(bridge.take(), PHONE) if is_request(d, "CANCEL")]
    assert header(cancel, "Reason") == ELSEWHERE


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda bye: bye.replace(b"tag=trunk1", b"tag=someone"), id="other-from-tag"),
        pytest.param(lambda bye: bye.replace(b";tag=", b";tag=x"), id="other-to-tag"),
        pytest.param(lambda bye: bye.replace(b"call-1@", b"call-9@"), id="other-call-id"),
    ],
)
async def test_a_bye_of_no_early_dialog_of_ours_is_481_and_the_phone_rings_on(
    bridge: InprocBridge, change: object
) -> None:
    _, ringing = ring(bridge)
    assert callable(change)
    bridge.feed(change(early_bye(ringing)), TRUNK)
    sent = bridge.take()
    assert [d for d in to(sent, TRUNK) if is_response(d, 481, "BYE")]
    assert not [d for d, _ in sent if is_response(d, 487) or is_request(d, "CANCEL")]
    assert live(bridge) == 1


async def test_a_bye_after_the_call_was_refused_is_481(bridge: InprocBridge) -> None:
    leg, ringing = ring(bridge)
    bridge.feed(respond(leg, "486 Busy Here", b"ph1"), PHONE)
    sent = await bridge.advance(1.0, step=0.25)  # (the only phone is busy: the caller is told)
    assert [d for d in to(sent, TRUNK) if is_response(d, 480, "INVITE")]
    bridge.feed(early_bye(ringing), TRUNK)
    assert [d for d in to(bridge.take(), TRUNK) if is_response(d, 481, "BYE")]


async def test_an_early_bye_while_our_2xx_waits_for_a_prack_hangs_up_the_phone() -> None:
    """The phone answered, our 200 waits for the caller's PRACK (RFC 3262), and the caller
    sends a BYE instead: the phone that answered gets a BYE, the caller a 487."""
    bridge = InprocBridge(one_desk_phone_directory(LINE), sip={"session_expires": 0})
    await bridge.start(fake_time=True)
    try:
        assert bridge.register_phone("201", "pw-201", PHONE[1])
        leg, ringing = ring(bridge, extra="Require: 100rel")
        bridge.feed(respond(leg, "200 OK", b"ph1", DESK_ANSWER, SDP), PHONE)
        sent = bridge.take()
        assert not [d for d in to(sent, TRUNK) if is_response(d, 200, "INVITE")]  # held
        bridge.feed(early_bye(ringing), TRUNK)
        sent = bridge.take()
        assert [d for d in to(sent, TRUNK) if is_response(d, 200, "BYE")]
        assert [d for d in to(sent, TRUNK) if is_response(d, 487, "INVITE")]
        assert [d for d in to(sent, PHONE) if is_request(d, "BYE")]
        # and the PRACK that comes late names nothing we wait for
        bridge.feed(prack(ringing, cseq=3), TRUNK)
        assert [d for d in to(bridge.take(), TRUNK) if is_response(d, 481, "PRACK")]
    finally:
        await bridge.stop()


async def test_a_merged_copy_of_the_invite_is_482_and_rings_nobody(bridge: InprocBridge) -> None:
    invite = trunk_invite(1, LINE, bridge.address)
    bridge.feed(invite, TRUNK)
    [leg] = [d for d, a in bridge.take() if a == PHONE and is_request(d, "INVITE")]
    with capture_logs() as logs:
        bridge.feed(invite.replace(b"branch=z9hG4bK-t1", b"branch=z9hG4bK-t1-path2"), TRUNK)
        sent = bridge.take()
    [refused] = [d for d in to(sent, TRUNK) if is_response(d, 482, "INVITE")]
    assert "z9hG4bK-t1-path2" in (header(refused, "Via") or "")
    assert not to(sent, PHONE)  # not rung twice
    assert [e for e in logs if e["event"] == "sip_merged_request"]
    assert live(bridge) == 1
    # The same INVITE on its own branch is a retransmission, not a merged request.
    bridge.feed(invite, TRUNK)
    assert not [d for d, _ in bridge.take() if is_response(d, 482)]
    # The first call goes on: answered and bridged.
    bridge.feed(respond(leg, "200 OK", b"ph1", DESK_ANSWER, SDP), PHONE)
    assert [d for d in to(bridge.take(), TRUNK) if is_response(d, 200, "INVITE")]


async def test_an_invite_with_the_same_call_id_and_another_from_tag_is_a_call(
    bridge: InprocBridge,
) -> None:
    """Only the same Call-ID, From tag and CSeq make a merged request: another caller's
    INVITE that happens to share a Call-ID is a call of its own."""
    bridge.feed(trunk_invite(1, LINE, bridge.address), TRUNK)
    bridge.take()
    other = trunk_invite(2, LINE, bridge.address).replace(b"call-2@", b"call-1@")
    bridge.feed(other, TRUNK)
    assert not [d for d, _ in bridge.take() if is_response(d, 482)]
    assert live(bridge) == 2


async def test_an_invite_that_expires_unanswered_gets_487(bridge: InprocBridge) -> None:
    leg, _ = ring(bridge, extra="Expires: 5")
    with capture_logs() as logs:
        before = await bridge.advance(4.5, step=0.5)
        assert not [d for d, _ in before if is_response(d, 487)]
        sent = await bridge.advance(1.0, step=0.5)
    assert [d for d in to(sent, TRUNK) if is_response(d, 487, "INVITE")]
    cancels = [d for d in to(sent, PHONE) if is_request(d, "CANCEL")]  # (and re-sent at T1)
    assert cancels and {header(c, "Call-ID") for c in cancels} == {header(leg, "Call-ID")}
    assert [e for e in logs if e["event"] == "sip_invite_expired"]
    [ended] = [e for e in logs if e["event"] == "sip_call_ended"]
    assert ended["outcome"] == "caller_cancelled"


async def test_an_invite_answered_before_it_expires_is_not_ended(bridge: InprocBridge) -> None:
    leg, _ = ring(bridge, extra="Expires: 5")
    bridge.feed(respond(leg, "200 OK", b"ph1", DESK_ANSWER, SDP), PHONE)
    [ok] = [d for d in to(bridge.take(), TRUNK) if is_response(d, 200, "INVITE")]
    bridge.feed(trunk_in_dialog("ACK", 1, 1, header(ok, "To") or "", contact_uri(ok)), TRUNK)
    sent = await bridge.advance(10.0, step=0.5)
    assert not [d for d, _ in sent if is_response(d, 487) or is_request(d, "BYE")]
    assert live(bridge) == 1


@needs_sipp
def test_sipp_trunk_invite_expires_while_the_phones_ring(tmp_path: Path) -> None:
    from tests.sip.peers import trunk_bridge

    with trunk_bridge(tmp_path, directory()) as bridge:
        anna = start_phone(tmp_path, "phone_ring_cancelled.xml", "301", bridge.sip)
        wait_registered(bridge, 1)
        trunk = run_trunk(tmp_path, bridge, scenario="trunk_invite_expires.xml")
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0
        assert "CANCEL sip:" in trace(tmp_path, "phone_ring_cancelled.xml", "301")
        assert bridge.wait_events("sip_invite_expired")
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "caller_cancelled"


@needs_sipp
def test_sipp_trunk_hangs_up_with_an_early_bye(tmp_path: Path) -> None:
    from tests.sip.peers import trunk_bridge

    with trunk_bridge(tmp_path, directory()) as bridge:
        anna = start_phone(tmp_path, "phone_ring_cancelled.xml", "301", bridge.sip)
        ben = start_phone(tmp_path, "phone_ring_cancelled.xml", "302", bridge.sip)
        wait_registered(bridge, 2)
        trunk = run_trunk(tmp_path, bridge, "-d", "500", scenario="trunk_early_bye.xml")
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0 and ben.wait(timeout=30) == 0
        for user in ("301", "302"):
            assert "CANCEL sip:" in trace(tmp_path, "phone_ring_cancelled.xml", user)
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "caller_cancelled"


@needs_sipp
def test_sipp_trunk_sends_its_invite_twice_on_two_branches(tmp_path: Path) -> None:
    from tests.sip.peers import trunk_bridge

    group = directory(first_layer=("anna",))
    with trunk_bridge(tmp_path, group) as bridge:
        anna = start_phone(tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "1000")
        wait_registered(bridge, 1)
        trunk = run_trunk(tmp_path, bridge, scenario="trunk_merged.xml")
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0
        bridge.wait_events("sip_call_ended")
        events = bridge.log_events()
        assert len([e for e in events if e.get("event") == "sip_call_in"]) == 1
        assert len([e for e in events if e.get("event") == "sip_merged_request"]) == 1
        assert trace(tmp_path, "phone_answer.xml", "301").count("INVITE sip:") == 1
        [ended] = [e for e in events if e.get("event") == "sip_call_ended"]
        assert ended["outcome"] == "answered"
