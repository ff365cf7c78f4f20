"""Multipart bodies (RFC 5621): a SIP-I/SIP-T trunk's SDP beside its ISUP (RFC 3204).

Before, a trunk INVITE whose body was `multipart/mixed` (SDP and an ISUP IAM) was refused
488 ("an SDP body starts with v=0"): the whole MIME body went to the SDP parser. Now the SDP
part is taken and the rest dropped (the other side of the B2BUA speaks no ISUP), a part we
cannot read that is required is 415 with Accept, a body that cannot be read is 400.

Heard as audio: the caller plays 440 Hz, the agent's desk phone 1 kHz (the provider's phone
1.5 kHz); an FFT of what each received says who heard whom. With real peers: SIPp as the
SIP-I trunk (requiring 100rel, as SIP-I gateways often do) playing a pcap, SIPp as the
desk phone echoing it, and the call's recording.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim.phones.inproc import (
    TRUNK,
    InprocBridge,
    body_of,
    contact_uri,
    header,
    is_request,
    is_response,
    respond,
    trunk_in_dialog,
)

from bridge.media import g711
from bridge.sip.bodies import (
    ACCEPTED,
    MAX_DEPTH,
    BodyRefusal,
    keep_session_description,
    session_description,
)
from bridge.sip.model import Headers, SipRequest
from tests.media.audio import tones_in
from tests.media.peers import needs_raw_socket, needs_sipp
from tests.media.rtp_peers import Phone
from tests.sip.test_anchored_media import (
    AGENT,
    AGENT_PHONE,
    CALLER,
    PROVIDER,
    Call,
    caller_moves_and_is_heard,
    confirm_directory,
    directory,
    invite,
    media_port,
    ok_extra,
    sdp_for,
)
from tests.sip.test_media_peers import sipp_caller_is_heard_by_an_echoing_phone

BOUNDARY = "unique-boundary-1"
MIXED = f"multipart/mixed;boundary={BOUNDARY}"
# An ISUP IAM as a SIP-I trunk sends it (binary: bytes that are not text, a LF among them).
IAM = bytes.fromhex("0100600a000207048110000a0703139155500100")
ANM = bytes.fromhex("09000000")  # (an ISUP ANM: the answer)
APM = bytes.fromhex("2e0000")  # (an ISUP APM: mid-call)
OPTIONAL = "Content-Disposition: signal;handling=optional\r\n"
SDP = (
    b"v=0\r\no=trunk 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n"
)
PROVIDER_TONE = 1500.0
TONES = [CALLER, AGENT, PROVIDER_TONE]


def part(kind: str, payload: bytes, headers: str = "") -> bytes:
    return f"Content-Type: {kind}\r\n{headers}\r\n".encode() + payload


def multipart(*parts: bytes, boundary: str = BOUNDARY) -> bytes:
    dash = f"--{boundary}".encode()
    return b"".join(dash + b"\r\n" + p + b"\r\n" for p in parts) + dash + b"--\r\n"


def sip_i(sdp: bytes, isup: bytes = IAM, disposition: str = OPTIONAL) -> bytes:
    """SDP and ISUP the way RFC 3204 and ITU-T Q.1912.5 put them in one body."""
    return multipart(
        part("application/sdp", sdp), part("application/ISUP;version=itu-t92+", isup, disposition)
    )


def as_multipart(message: bytes, kind: str = MIXED) -> bytes:
    """`message` (built with an SDP body) with its top Content-Type made `kind`."""
    return message.replace(
        b"Content-Type: application/sdp\r\n", f"Content-Type: {kind}\r\n".encode(), 1
    )


# -- reading the body ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        pytest.param(MIXED, sip_i(SDP), SDP, id="sdp-and-optional-isup"),
        pytest.param(
            MIXED.upper().replace("BOUNDARY=UNIQUE-BOUNDARY-1", f"boundary={BOUNDARY}"),
            sip_i(SDP),
            SDP,
            id="type-in-capitals",
        ),
        pytest.param(
            f'multipart/mixed; boundary="{BOUNDARY}"', sip_i(SDP), SDP, id="quoted-boundary"
        ),
        pytest.param(MIXED, multipart(part("application/ISUP", IAM, OPTIONAL)), b"", id="no-sdp"),
        pytest.param(
            MIXED,
            multipart(
                part(
                    "application/sdp",
                    base64.b64encode(SDP),
                    "Content-Transfer-Encoding: base64\r\n",
                )
            ),
            SDP,
            id="base64-part",
        ),
        pytest.param(
            MIXED,
            multipart(
                part("application/sdp", SDP),
                part(
                    "application/sdp",
                    b"v=0\r\n",
                    "Content-Disposition: early-session;handling=optional\r\n",
                ),
            ),
            SDP,
            id="early-session-optional",
        ),
        pytest.param(
            "multipart/alternative;boundary=alt",
            multipart(
                part("application/sdp", SDP), part("application/x-other", b"?"), boundary="alt"
            ),
            SDP,
            id="alternative-one-read",
        ),
        pytest.param(
            MIXED,
            multipart(
                part(
                    "multipart/alternative;boundary=inner",
                    multipart(part("application/sdp", SDP), part("text/x", b"?"), boundary="inner"),
                ),
                part("application/ISUP", IAM, OPTIONAL),
            ),
            SDP,
            id="nested-alternative",
        ),
    ],
)
def test_the_sdp_part_is_taken(content_type: str, body: bytes, expected: bytes) -> None:
    assert session_description(content_type, body) == expected


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        pytest.param(MIXED, sip_i(SDP, disposition=""), 415, id="isup-default-handling-required"),
        pytest.param(
            MIXED,
            sip_i(SDP, disposition="Content-Disposition: signal;handling=required\r\n"),
            415,
            id="isup-required",
        ),
        pytest.param(
            "multipart/alternative;boundary=alt",
            multipart(part("text/x", b"?"), boundary="alt"),
            415,
            id="alternative-none-read",
        ),
        pytest.param("multipart/mixed", sip_i(SDP), 400, id="no-boundary"),
        pytest.param("multipart/mixed;boundary=other", sip_i(SDP), 400, id="boundary-not-found"),
        pytest.param(MIXED, b"", 400, id="empty"),
        pytest.param(MIXED, b"\xff\xfe\x00garbage", 400, id="garbage"),
    ],
)
def test_a_body_that_cannot_be_taken_is_refused(
    content_type: str, body: bytes, status: int
) -> None:
    refusal = session_description(content_type, body)
    assert isinstance(refusal, BodyRefusal) and refusal.status == status
    assert refusal.extra == ((("Accept", ACCEPTED),) if status == 415 else ())


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    body, kind = part("application/sdp", SDP), "application/sdp"
    for level in range(MAX_DEPTH + 1):
        body, kind = multipart(body, boundary=f"b{level}"), f"multipart/mixed;boundary=b{level}"
        body = part(kind, body) if level < MAX_DEPTH else body
    refusal = session_description(kind, body)
    assert refusal == BodyRefusal(400, "Bad Request (multipart body nested too deep)")
    one_less = session_description(
        "multipart/mixed;boundary=b0", multipart(part("application/sdp", SDP), boundary="b0")
    )
    assert one_less == SDP


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([MIXED, "multipart/alternative;boundary=x", "multipart/mixed", "multipart/"])
    | st.text(max_size=60).map(lambda rest: "multipart/" + rest),
    st.binary(max_size=400)
    | st.builds(
        lambda a, b: a + b, st.sampled_from([sip_i(SDP), b"--x\r\n"]), st.binary(max_size=60)
    ),
)
def test_no_body_raises(content_type: str, body: bytes) -> None:
    result = session_description(content_type, body)
    assert isinstance(result, bytes | BodyRefusal)


def test_a_message_keeps_only_its_sdp_or_no_body() -> None:
    headers = Headers([("Content-Type", MIXED), ("Content-Length", "1")])
    request = SipRequest("INVITE", "sip:x@y", headers, sip_i(SDP))
    assert keep_session_description(request) is None
    assert request.body == SDP and request.headers.get("Content-Type") == "application/sdp"
    assert f"Content-Length: {len(SDP)}".encode() in request.to_bytes()
    only_isup = SipRequest(
        "INVITE",
        "sip:x@y",
        Headers([("Content-Type", MIXED)]),
        multipart(part("application/ISUP", IAM, OPTIONAL)),
    )
    assert keep_session_description(only_isup) is None
    assert only_isup.body == b"" and only_isup.headers.get("Content-Type") is None
    plain = SipRequest("INVITE", "sip:x@y", Headers([("Content-Type", "application/sdp")]), SDP)
    assert keep_session_description(plain) is None and plain.body == SDP
    refused = SipRequest(
        "INVITE", "sip:x@y", Headers([("Content-Type", MIXED)]), sip_i(SDP, disposition="")
    )
    assert keep_session_description(refused) == BodyRefusal(415, "Unsupported Media Type")
    assert refused.headers.get("Content-Type") == MIXED  # left as it came


# -- through the bridge, heard -----------------------------------------------------------------
@pytest.fixture
async def bridge(tmp_path: Path) -> Any:
    bridge = InprocBridge(directory(), folder=tmp_path)
    await bridge.start()
    assert bridge.register_phone("201", "pw-201", AGENT_PHONE[1])
    try:
        yield bridge
    finally:
        await bridge.stop()


async def sip_i_call(bridge: InprocBridge, n: int = 1) -> Call:
    """A SIP-I trunk's INVITE (SDP beside an IAM) answered by the agent's desk phone."""
    call = Call(bridge)
    caller = call.phones["caller"] = Phone(g711.PCMU, 0xC1)
    message = as_multipart(invite(n, bridge.address, sip_i(sdp_for(caller, "0 101", "trunk"))))
    bridge.feed(message, TRUNK)
    [leg] = [d for d, a in bridge.take() if a == AGENT_PHONE and is_request(d, "INVITE")]
    assert header(leg, "Content-Type") == "application/sdp"
    assert b"ISUP" not in leg and IAM not in leg  # the desk phone gets no ISUP
    assert "o=trunk" not in body_of(leg).decode()  # the bridge's own offer
    agent = call.phones["agent"] = Phone(g711.PCMA, 0xA1)
    call.ports["agent"] = media_port(leg)
    answer = sdp_for(agent, "8 101")
    bridge.feed(
        respond(leg, "200 OK", b"ph1", ok_extra("201", AGENT_PHONE[1]), answer), AGENT_PHONE
    )
    [ok] = [d for d, a in bridge.take() if a == TRUNK and is_response(d, 200, "INVITE")]
    assert header(ok, "Content-Type") == "application/sdp"
    call.ports["caller"] = media_port(ok)
    call.ok = ok
    bridge.feed(trunk_in_dialog("ACK", 1, n, header(ok, "To") or "", contact_uri(ok)), TRUNK)
    await bridge.settle()
    return call


async def test_a_sip_i_invite_is_answered_and_both_sides_hear(bridge: InprocBridge) -> None:
    call = await sip_i_call(bridge)
    try:
        heard = await call.talk(1.0, {"caller": CALLER, "agent": AGENT})
        assert tones_in(heard["caller"], TONES) == {AGENT}
        assert tones_in(heard["agent"], TONES) == {CALLER}
    finally:
        call.close()


async def test_a_sip_i_reinvite_is_answered_with_sdp_not_488(bridge: InprocBridge) -> None:
    call = await sip_i_call(bridge)
    try:
        await caller_moves_and_is_heard(
            call,
            lambda sdp, to, target: as_multipart(
                trunk_in_dialog("INVITE", 2, 1, to, target, body=sip_i(sdp, APM))
            ),
        )
    finally:
        call.close()


@pytest.mark.parametrize(
    ("body", "kind", "status"),
    [
        (sip_i(SDP, disposition=""), MIXED, 415),
        (sip_i(SDP), "multipart/mixed;boundary=not-in-the-body", 400),
    ],
)
async def test_a_body_we_cannot_take_is_refused_and_nobody_rings(
    bridge: InprocBridge, body: bytes, kind: str, status: int
) -> None:
    bridge.feed(as_multipart(invite(3, bridge.address, body), kind), TRUNK)
    sent = bridge.take()
    [refusal] = [d for d, a in sent if a == TRUNK and is_response(d, status, "INVITE")]
    assert (header(refusal, "Accept") == ACCEPTED) == (status == 415)
    assert not [d for d, a in sent if a == AGENT_PHONE]
    assert bridge.ctx.calls.all() == []


async def test_a_providers_sip_i_answer_is_taken_and_both_sides_hear(tmp_path: Path) -> None:
    """Forwarded through the trunk: the provider's 200 carries its SDP beside an ISUP ANM."""
    data = confirm_directory()
    data["users"][-1]["confirm_answer"] = False  # (answered at once, no press 1)
    bridge = InprocBridge(
        data, folder=tmp_path, sip={"trunk_uri": f"sip:{PROVIDER[0]}:{PROVIDER[1]}"}
    )
    await bridge.start()
    call = Call(bridge)
    caller = call.phones["caller"] = Phone(g711.PCMU, 0xC1)
    provider = call.phones["provider"] = Phone(g711.PCMU, 0xF1)
    try:
        bridge.feed(invite(5, bridge.address, sdp_for(caller, "0 101", "trunk")), TRUNK)
        [leg] = [d for d, a in bridge.take() if a == PROVIDER and is_request(d, "INVITE")]
        call.ports["provider"] = media_port(leg)
        extra = f"Contact: <sip:+15559990000@127.0.0.1:5080>\r\nContent-Type: {MIXED}".encode()
        bridge.feed(
            respond(leg, "200 OK", b"pv1", extra, sip_i(sdp_for(provider, "0 101"), ANM)), PROVIDER
        )
        sent = bridge.take()
        assert any(a == PROVIDER and is_request(d, "ACK") for d, a in sent)
        assert not [d for d, a in sent if is_request(d, "BYE")]
        [ok] = [d for d, a in sent if a == TRUNK and is_response(d, 200, "INVITE")]
        call.ports["caller"] = media_port(ok)
        await call.acked_and_heard(ok, 5, {"caller": CALLER, "provider": PROVIDER_TONE})
    finally:
        call.close()
        await bridge.stop()


async def test_signalling_only_the_phone_gets_the_callers_sdp_without_the_isup(
    tmp_path: Path,
) -> None:
    bridge = InprocBridge(directory(), folder=tmp_path, media={"engine": "none"})
    await bridge.start()
    try:
        assert bridge.register_phone("201", "pw-201", AGENT_PHONE[1])
        caller = Phone(g711.PCMU, 1)
        sdp = sdp_for(caller, "0 101", "trunk")
        caller.close()
        bridge.feed(as_multipart(invite(9, bridge.address, sip_i(sdp))), TRUNK)
        [leg] = [d for d, a in bridge.take() if a == AGENT_PHONE and is_request(d, "INVITE")]
        assert header(leg, "Content-Type") == "application/sdp"
        assert body_of(leg) == sdp  # end to end, the SDP part alone
    finally:
        await bridge.stop()


@needs_sipp
@needs_raw_socket
def test_sipp_as_a_sip_i_trunk_requiring_100rel_is_heard_through_the_bridge(
    tmp_path: Path,
) -> None:
    """SIPp on the trunk sends the multipart INVITE with `Require: 100rel`, as SIP-I gateways
    often do (tests/media/scenarios/uac_pcap_sipi_100rel.xml): it PRACKs our reliable 180,
    gets the 200 and plays 440 Hz; the desk phone is SIPp with `-rtp_echo`. The call's
    recording holds the caller's tone on the left and the phone's echo of it on the right
    (tests/sip/test_reliable_provisionals.py covers 100rel alone)."""
    sipp_caller_is_heard_by_an_echoing_phone(tmp_path, "uac_pcap_sipi_100rel.xml")
