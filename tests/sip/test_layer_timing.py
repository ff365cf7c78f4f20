"""A ring group's layer timeouts are honoured in time on the SIP path, with a fake clock: the
next layer rings when the layer's `timeout_seconds` is up, not before and not much later,
and the fallback starts when the last layer's is up (README, "Ring groups").

The event loop's clock only moves when the test says so (`InprocBridge(fake_time=True)`),
so the bounds below are exact to a quarter second whatever the machine's load.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sim.phones.inproc import (
    TRUNK,
    InprocBridge,
    desk_user,
    header,
    is_request,
    respond,
    start_line,
    trunk_invite,
)

LINE = "+15550100"
ANA = ("127.0.0.1", 20001)
BO = ("127.0.0.1", 20002)
FIRST, SECOND = 20, 30  # the layers' timeouts, seconds
DIRECTORY = {
    "timezone": "UTC",
    "users": [
        {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
        desk_user("ana", "201", "pw-201"),
        desk_user("bo", "202", "pw-202"),
    ],
    "ring_groups": [
        {
            "id": "desk",
            "name": "Desk",
            "layers": [
                {"members": ["ana"], "timeout_seconds": FIRST},
                {"members": ["bo"], "timeout_seconds": SECOND},
            ],
            "fallback": {"action": "hangup"},
        }
    ],
    "lines": [{"number": LINE, "name": "Main", "route_to": {"ring_group": "desk"}}],
}
STEP = 0.25  # how far the fake clock moves at a time

Sent = list[tuple[bytes, tuple[str, int]]]


@pytest.fixture
async def bridge() -> AsyncIterator[InprocBridge]:
    bridge = InprocBridge(DIRECTORY)
    await bridge.start(fake_time=True)
    assert bridge.register_phone("201", "pw-201", ANA[1], n=1)
    assert bridge.register_phone("202", "pw-202", BO[1], n=2)
    try:
        yield bridge
    finally:
        await bridge.stop()


def sent_to(sent: Sent, where: tuple[str, int], method: str) -> list[bytes]:
    """The requests sent there, without UDP retransmissions (byte-identical datagrams)."""
    return list(dict.fromkeys(d for d, a in sent if a == where and is_request(d, method)))


def finals_to_caller(sent: Sent) -> list[str]:
    return [
        start_line(d)
        for d, a in sent
        if a == TRUNK and d.startswith(b"SIP/2.0 ") and not d.startswith(b"SIP/2.0 1")
    ]


def ring(bridge: InprocBridge, invite: bytes, phone: tuple[str, int], tag: bytes) -> None:
    """The phone rings (180): from then on it may be CANCELled."""
    contact = f"Contact: <sip:{phone[0]}:{phone[1]}>".encode()
    bridge.feed(respond(invite, "180 Ringing", tag, contact), phone)


async def test_the_second_layer_rings_when_the_first_layers_timeout_is_up(
    bridge: InprocBridge,
) -> None:
    bridge.feed(trunk_invite(1, LINE, bridge.address), TRUNK)
    sent = bridge.take()
    [invite] = sent_to(sent, ANA, "INVITE")
    assert sent_to(sent, BO, "INVITE") == []
    ring(bridge, invite, ANA, b"ana1")
    # Not a quarter second before the timeout: still only ana rings.
    sent = await bridge.advance(FIRST - STEP, step=STEP)
    assert sent_to(sent, BO, "INVITE") == [], f"layer two rang before {FIRST} s"
    assert sent_to(sent, ANA, "CANCEL") == []
    assert finals_to_caller(sent) == []
    # By the timeout (one step on): ana is cancelled and bo rings.
    sent = await bridge.advance(2 * STEP, step=STEP)
    assert len(sent_to(sent, BO, "INVITE")) == 1, f"layer two did not ring at {FIRST} s"
    [cancel] = sent_to(sent, ANA, "CANCEL")
    assert header(cancel, "Call-ID") == header(invite, "Call-ID")
    assert finals_to_caller(sent) == []
    assert len(bridge.ctx.calls) == 1


async def test_the_fallback_starts_when_the_last_layers_timeout_is_up(
    bridge: InprocBridge,
) -> None:
    bridge.feed(trunk_invite(2, LINE, bridge.address), TRUNK)
    [invite] = sent_to(bridge.take(), ANA, "INVITE")
    ring(bridge, invite, ANA, b"ana2")
    sent = await bridge.advance(FIRST + STEP, step=STEP)
    invites = sent_to(sent, BO, "INVITE")
    assert len(invites) == 1, f"layer two did not start at {FIRST} s: {len(invites)} INVITEs"
    invite = invites[0]
    ring(bridge, invite, BO, b"bo2")
    # Layer two started at FIRST (give or take a step): it rings SECOND seconds.
    sent = await bridge.advance(SECOND - 2 * STEP, step=STEP)
    assert finals_to_caller(sent) == [], f"the fallback started before {FIRST + SECOND} s"
    assert sent_to(sent, BO, "CANCEL") == []
    sent = await bridge.advance(2 * STEP, step=STEP)
    # The fallback (hang up): bo is cancelled and the caller refused.
    assert len(sent_to(sent, BO, "CANCEL")) == 1, f"layer two still rang at {FIRST + SECOND} s"
    finals = finals_to_caller(sent)
    assert len(finals) >= 1 and finals[0].startswith("SIP/2.0 4"), finals
