"""A trunk INVITE for a user's SIP username or extension (a carrier's <Dial><Sip> leg) rings
that user's desk phones and nothing else: the sender has routed the call already."""

from __future__ import annotations

from sim.phones.inproc import (
    SDP,
    TRUNK,
    InprocBridge,
    desk_user,
    header,
    is_request,
    is_response,
    respond,
    trunk_invite,
)

PHONE = ("127.0.0.1", 20001)
DIRECTORY = {
    "timezone": "UTC",
    "users": [
        {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
        desk_user("ana", "201", "pw-201", extension="1201"),
        desk_user("bo", "202", "pw-202"),
    ],
    "ring_groups": [
        {
            "id": "desk",
            "name": "Desk",
            "layers": [{"members": ["ana", "bo"], "timeout_seconds": 20}],
            "fallback": {"action": "hangup"},
        }
    ],
    "lines": [{"number": "+15550100", "name": "Main", "route_to": {"ring_group": "desk"}}],
}


async def test_sip_username_rings_only_that_users_phones() -> None:
    bridge = InprocBridge(DIRECTORY)
    await bridge.start()
    try:
        assert bridge.register_phone("201", "pw-201", PHONE[1])
        assert bridge.register_phone("202", "pw-202", 20002, n=2)
        for n, dialled in enumerate(("201", "1201"), start=1):
            bridge.feed(trunk_invite(n, dialled, bridge.address), TRUNK)
            invites = [(d, a) for d, a in bridge.take() if is_request(d, "INVITE")]
            assert [a for _, a in invites] == [PHONE]  # ana's phone only, not bo's
            invite = invites[0][0]
            bridge.feed(
                respond(
                    invite,
                    "200 OK",
                    b"ana%d" % n,
                    b"Contact: <sip:201@127.0.0.1:20001>\r\nContent-Type: application/sdp",
                    SDP,
                ),
                PHONE,
            )
            ok = [d for d, a in bridge.take() if is_response(d, 200, "INVITE") and a == TRUNK]
            assert len(ok) == 1
            [call] = bridge.ctx.calls.all()
            assert call.line is None  # not a line's call: the sender routed it
            bridge.ctx.calls.remove(call.call_id)
            assert header(ok[0], "Session-Expires") is not None
    finally:
        await bridge.stop()


async def test_user_without_a_registered_phone_is_refused_at_once() -> None:
    bridge = InprocBridge(DIRECTORY)
    await bridge.start()
    try:
        bridge.feed(trunk_invite(1, "202", bridge.address), TRUNK)
        sent = bridge.take() + await bridge.settle()
        assert [d for d, _ in sent if is_request(d, "INVITE")] == []
        refused = [d for d, a in sent if a == TRUNK and d.startswith(b"SIP/2.0 4")]
        assert len(refused) == 1 and refused[0].startswith(b"SIP/2.0 480")
        assert len(bridge.ctx.calls) == 0
    finally:
        await bridge.stop()
