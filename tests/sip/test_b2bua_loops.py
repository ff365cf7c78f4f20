"""A B2BUA's legs carry the caller's Max-Forwards less one (RFC 7332).

Each leg we send is a new request, and ours started at Max-Forwards 70 whatever the caller's
said: a call that comes back to us (a user forwarded to a number the provider routes to our
own line, a carrier's <Dial><Sip> to a user whose phone forwards back) looped for ever, one new
call per round, each ringing someone. Now each round spends one hop, and an INVITE that has
none left is refused 483 (the SIPp test of the count on the wire: tests/sip/test_sipp_calls.py
`test_trunk_call_answered_by_one_phone_the_other_is_cancelled_with_reason`).

A phone's 3xx (its own call forwarding) is not followed either: the leg fails as any
refusal does, so a desk phone cannot send a caller out through the trunk to a number of its
choosing (README, "Calls over SIP").
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sim.phones.inproc import (
    DESK_PHONE,
    TRUNK,
    InprocBridge,
    header,
    is_request,
    is_response,
    respond,
    signalling_bridge,
    trunk_invite,
)

LINE = "+15550100"
PHONE = DESK_PHONE


@pytest.fixture
async def bridge() -> AsyncIterator[InprocBridge]:
    async with signalling_bridge(LINE) as bridge:
        yield bridge


def with_hops(invite: bytes, hops: str | None) -> bytes:
    if hops is None:
        return invite.replace(b"Max-Forwards: 70\r\n", b"")
    return invite.replace(b"Max-Forwards: 70", f"Max-Forwards: {hops}".encode())


@pytest.mark.parametrize(
    ("received", "sent"), [("5", "4"), ("1", "0"), (None, "69"), ("70", "69"), ("255", "69")]
)
async def test_the_leg_carries_the_callers_max_forwards_less_one(
    bridge: InprocBridge, received: str | None, sent: str
) -> None:
    bridge.feed(with_hops(trunk_invite(1, LINE, bridge.address), received), TRUNK)
    [leg] = [d for d, a in bridge.take() if a == PHONE and is_request(d, "INVITE")]
    assert header(leg, "Max-Forwards") == sent


async def test_an_invite_with_no_hops_left_is_483(bridge: InprocBridge) -> None:
    bridge.feed(with_hops(trunk_invite(1, LINE, bridge.address), "0"), TRUNK)
    sent = bridge.take()
    assert [d for d, a in sent if a == TRUNK and is_response(d, 483, "INVITE")]
    assert not [d for d, a in sent if a == PHONE]


async def test_a_call_that_comes_back_to_us_stops_after_seventy_rounds(
    bridge: InprocBridge,
) -> None:
    """The leg to the phone comes back to us from the trunk (a provider that routes the
    number back, here the user's SIP username, which rings that user): round after round,
    until the hops run out."""
    bridge.feed(trunk_invite(1, LINE, bridge.address), TRUNK)
    hops: list[int] = []
    for _ in range(100):
        sent = bridge.take()
        if [d for d, a in sent if a == TRUNK and is_response(d, 483, "INVITE")]:
            break
        [leg] = [d for d, a in sent if a == PHONE and is_request(d, "INVITE")]
        hops.append(int(header(leg, "Max-Forwards") or "-1"))
        bridge.feed(leg, TRUNK)
    else:
        pytest.fail("the call went round 100 times")
    assert hops == list(range(69, -1, -1))


@pytest.mark.parametrize("status", ["301 Moved Permanently", "302 Moved Temporarily"])
async def test_a_phones_redirect_is_not_followed_and_its_leg_fails(
    bridge: InprocBridge, status: str
) -> None:
    bridge.feed(trunk_invite(1, LINE, bridge.address), TRUNK)
    [leg] = [d for d, a in bridge.take() if a == PHONE and is_request(d, "INVITE")]
    premium = b"Contact: <sip:+19005551234@127.0.0.1:5099>"
    bridge.feed(respond(leg, status, b"ph1", premium), PHONE)
    sent = bridge.take() + await bridge.advance(1.0, step=0.25)
    assert [a for d, a in sent if is_request(d, "ACK")] == [PHONE]  # the 3xx is ACKed
    assert not [d for d, _ in sent if is_request(d, "INVITE")]  # nobody else is called
    assert [d for d, a in sent if a == TRUNK and is_response(d, 480, "INVITE")]
