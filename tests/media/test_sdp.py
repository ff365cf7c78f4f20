"""SDP offer/answer for the anchored audio: what real phones, SIPp and browsers send, codec
choice (G.711 and telephone-event, or nothing: 488), the bridge's own offers and answers, and
malformed bodies refused with SdpError only."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.media.sdp import (
    Connection,
    Negotiated,
    RtpMap,
    SdpError,
    answer_direction,
    build_answer,
    build_offer,
    negotiate,
    parse_sdp,
)


def sdp(text: str) -> str:
    """A body as phones send it: CRLF line endings."""
    return "\r\n".join(line.strip() for line in text.strip().splitlines()) + "\r\n"


YEALINK = sdp("""
    v=0
    o=- 20021 20021 IN IP4 192.168.1.50
    s=SDP data
    c=IN IP4 192.168.1.50
    t=0 0
    m=audio 11800 RTP/AVP 0 8 9 18 101
    a=rtpmap:0 PCMU/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:9 G722/8000
    a=rtpmap:18 G729/8000
    a=fmtp:18 annexb=no
    a=ptime:20
    a=sendrecv
    a=rtpmap:101 telephone-event/8000
    a=fmtp:101 0-15
""")

POLYCOM = sdp("""
    v=0
    o=- 1623847562 1623847562 IN IP4 10.0.0.23
    s=Polycom IP Phone
    c=IN IP4 10.0.0.23
    t=0 0
    a=sendrecv
    m=audio 2228 RTP/AVP 9 8 0 18 127
    a=rtpmap:9 G722/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:0 PCMU/8000
    a=rtpmap:18 G729/8000
    a=fmtp:18 annexb=no
    a=rtpmap:127 telephone-event/8000
""")

# SIPp's built-in uac scenario (sipp -sn uac): PCMU only, static, no telephone-event.
SIPP = sdp("""
    v=0
    o=user1 53655765 2353687637 IN IP4 127.0.0.1
    s=-
    c=IN IP4 127.0.0.1
    t=0 0
    m=audio 6000 RTP/AVP 0
    a=rtpmap:0 PCMU/8000
""")

G729_ONLY = sdp("""
    v=0
    o=- 77 77 IN IP4 203.0.113.9
    s=-
    c=IN IP4 203.0.113.9
    t=0 0
    m=audio 5004 RTP/AVP 18 101
    a=rtpmap:18 G729/8000
    a=fmtp:18 annexb=no
    a=rtpmap:101 telephone-event/8000
""")

IPV6 = sdp("""
    v=0
    o=- 3711 3711 IN IP6 2001:db8::10
    s=-
    c=IN IP6 2001:db8::10
    t=0 0
    m=audio 40000 RTP/AVP 96 8 101 102
    a=rtpmap:96 opus/48000/2
    a=rtpmap:8 PCMA/8000
    a=rtpmap:101 telephone-event/48000
    a=rtpmap:102 telephone-event/8000
    a=ptime:30
""")

HOLD = sdp("""
    v=0
    o=- 20021 20022 IN IP4 192.168.1.50
    s=SDP data
    c=IN IP4 192.168.1.50
    t=0 0
    m=audio 11800 RTP/AVP 0 101
    a=rtpmap:0 PCMU/8000
    a=rtpmap:101 telephone-event/8000
    a=sendonly
""")

# A browser's offer (Chrome-like): DTLS-SRTP with ICE, BUNDLE, rtcp-mux, opus first.
WEBRTC = sdp("""
    v=0
    o=- 4611731400430051336 2 IN IP4 127.0.0.1
    s=-
    t=0 0
    a=group:BUNDLE 0
    a=extmap-allow-mixed
    a=msid-semantic: WMS stream
    m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 126
    c=IN IP4 0.0.0.0
    a=rtcp:9 IN IP4 0.0.0.0
    a=candidate:842163049 1 udp 1677729535 198.51.100.4 51234 typ srflx raddr 0.0.0.0 rport 0
    a=ice-ufrag:hM2d
    a=ice-pwd:Jw9Tq4U7yl4mE9ZqS0aB3cFx
    a=ice-options:trickle
    a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35
    a=setup:actpass
    a=mid:0
    a=sendrecv
    a=rtcp-mux
    a=rtpmap:111 opus/48000/2
    a=fmtp:111 minptime=10;useinbandfec=1
    a=rtpmap:0 PCMU/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:126 telephone-event/8000
""")

# Audio and video from a video phone; audio as a dynamic, lowercase PCMU and media-level c=.
VIDEO_PHONE = sdp("""
    v=0
    o=alice 2890844526 2890844526 IN IP4 198.51.100.1
    s=-
    c=IN IP4 198.51.100.1
    t=0 0
    m=video 51372 RTP/AVP 99
    a=rtpmap:99 H264/90000
    m=audio 49170 RTP/AVP 97 98
    c=IN IP4 198.51.100.2
    a=rtpmap:97 pcmu/8000
    a=rtpmap:98 TELEPHONE-EVENT/8000
    a=rtcp-mux
""")


def test_yealink_offer_parsed() -> None:
    offer = parse_sdp(YEALINK)
    assert offer.origin.session_id == "20021" and offer.origin.address == "192.168.1.50"
    assert offer.connection == Connection("IN", "IP4", "192.168.1.50")
    (audio,) = offer.audio
    assert (audio.port, audio.proto, audio.payload_types) == (11800, "RTP/AVP", (0, 8, 9, 18, 101))
    assert audio.rtpmap[101] == RtpMap("telephone-event", 8000)
    assert audio.fmtp == {18: "annexb=no", 101: "0-15"}
    assert (audio.ptime, audio.direction, audio.rtcp_mux) == (20, "sendrecv", False)
    assert audio.codec(9) == RtpMap("G722", 8000)
    assert negotiate(offer) == Negotiated(
        media_index=0,
        payload_type=0,
        encoding="PCMU",
        clock_rate=8000,
        telephone_event=101,
        address="192.168.1.50",
        port=11800,
        ptime=20,
        direction="sendrecv",
        rtcp_mux=False,
    )


def test_offerer_preference_decides_not_ours() -> None:
    chosen = negotiate(parse_sdp(POLYCOM))  # G722 first (unsupported), then PCMA
    assert chosen is not None
    assert (chosen.payload_type, chosen.encoding, chosen.telephone_event) == (8, "PCMA", 127)
    only_pcmu = negotiate(parse_sdp(POLYCOM), supported=("pcmu",), telephone_event=False)
    assert only_pcmu is not None
    assert (only_pcmu.encoding, only_pcmu.telephone_event) == ("PCMU", None)


def test_sipp_default_offer() -> None:
    chosen = negotiate(parse_sdp(SIPP))
    assert chosen is not None
    assert (chosen.payload_type, chosen.telephone_event, chosen.address, chosen.port) == (
        0,
        None,
        "127.0.0.1",
        6000,
    )


def test_static_types_need_no_rtpmap() -> None:
    bare = SIPP.replace("a=rtpmap:0 PCMU/8000\r\n", "").replace("RTP/AVP 0", "RTP/AVP 18 8")
    chosen = negotiate(parse_sdp(bare))
    assert chosen is not None and chosen.encoding == "PCMA"


def test_no_usable_codec_is_none() -> None:
    assert negotiate(parse_sdp(G729_ONLY)) is None
    assert negotiate(parse_sdp(SIPP), supported=("PCMA",)) is None
    # a stereo or wideband "PCMU" is not G.711 at 8 kHz
    odd = SIPP.replace("RTP/AVP 0", "RTP/AVP 96 97").replace(
        "a=rtpmap:0 PCMU/8000", "a=rtpmap:96 PCMU/8000/2\r\na=rtpmap:97 PCMA/16000"
    )
    assert negotiate(parse_sdp(odd)) is None
    # a disabled stream (port 0) is not one to answer
    assert negotiate(parse_sdp(SIPP.replace("m=audio 6000", "m=audio 0"))) is None


def test_ipv6_offer() -> None:
    offer = parse_sdp(IPV6)
    chosen = negotiate(offer)
    assert chosen is not None
    # opus is skipped; the 8 kHz telephone-event is the one, not the 48 kHz one
    assert (chosen.encoding, chosen.telephone_event, chosen.address, chosen.ptime) == (
        "PCMA",
        102,
        "2001:db8::10",
        30,
    )
    answer = build_answer(offer.media, chosen, "2001:db8::1", 30000, 1, 1)
    assert "c=IN IP6 2001:db8::1\r\n" in answer
    assert "o=- 1 1 IN IP6 2001:db8::1\r\n" in answer
    assert "m=audio 30000 RTP/AVP 8 102\r\n" in answer
    assert parse_sdp(answer).audio[0].connection == Connection("IN", "IP6", "2001:db8::1")


def test_hold_offers_are_answered_per_rfc_3264() -> None:
    chosen = negotiate(parse_sdp(HOLD))
    assert chosen is not None
    assert chosen.direction == "recvonly" and not chosen.sends and chosen.receives
    answer = build_answer(parse_sdp(HOLD).media, chosen, "192.0.2.1", 20000, 5, 6)
    assert "a=recvonly\r\n" in answer
    # RFC 2543 hold: c=0.0.0.0 with sendrecv means the same
    legacy_hold = HOLD.replace("c=IN IP4 192.168.1.50", "c=IN IP4 0.0.0.0")
    legacy = negotiate(parse_sdp(legacy_hold.replace("a=sendonly", "a=sendrecv")))
    assert legacy is not None and legacy.direction == "recvonly"
    inactive = negotiate(parse_sdp(HOLD.replace("a=sendonly", "a=inactive")))
    assert inactive is not None and inactive.direction == "inactive"
    assert [answer_direction(d) for d in ("sendrecv", "sendonly", "recvonly", "inactive")] == [
        "sendrecv",
        "recvonly",
        "sendonly",
        "inactive",
    ]


def test_session_level_direction_applies_to_media() -> None:
    held = YEALINK.replace("a=sendrecv\r\n", "").replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n")
    assert parse_sdp(held).audio[0].direction == "sendonly"


def test_webrtc_offer_is_not_plain_rtp() -> None:
    offer = parse_sdp(WEBRTC)
    (audio,) = offer.audio
    assert audio.proto == "UDP/TLS/RTP/SAVPF" and audio.rtcp_mux
    assert audio.payload_types == (111, 0, 8, 126)
    assert audio.attribute_values("ice-ufrag") == ["hM2d"]
    assert audio.attribute_values("fingerprint") == [
        "sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35"
    ]
    (candidate,) = audio.attribute_values("candidate")
    assert candidate is not None and candidate.startswith("842163049 1 udp 1677729535")
    assert ("group", "BUNDLE 0") in offer.attributes
    assert negotiate(offer) is None  # SRTP/DTLS answered as RTP/AVP would be wrong: 488
    srtp = SIPP.replace("RTP/AVP", "RTP/SAVP") + "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x\r\n"
    parsed = parse_sdp(srtp)
    assert parsed.audio[0].attribute_values("crypto") == ["1 AES_CM_128_HMAC_SHA1_80 inline:x"]
    assert negotiate(parsed) is None


def test_answer_rejects_other_streams_and_mirrors_the_offer() -> None:
    offer = parse_sdp(VIDEO_PHONE)
    video, audio = offer.media
    assert video.media == "video" and video.connection == Connection("IN", "IP4", "198.51.100.1")
    assert audio.connection == Connection("IN", "IP4", "198.51.100.2")  # media level wins
    chosen = negotiate(offer)
    assert chosen is not None
    assert (chosen.media_index, chosen.payload_type, chosen.encoding) == (1, 97, "PCMU")
    assert (chosen.telephone_event, chosen.address, chosen.rtcp_mux) == (98, "198.51.100.2", True)
    answer = build_answer(offer.media, chosen, "192.0.2.1", 20000, 42, 1)
    assert answer == sdp("""
        v=0
        o=- 42 1 IN IP4 192.0.2.1
        s=-
        c=IN IP4 192.0.2.1
        t=0 0
        m=video 0 RTP/AVP 99
        m=audio 20000 RTP/AVP 97 98
        a=rtpmap:97 PCMU/8000
        a=rtpmap:98 telephone-event/8000
        a=fmtp:98 0-16
        a=ptime:20
        a=sendrecv
        a=rtcp-mux
    """)
    parsed = parse_sdp(answer)
    assert [m.port for m in parsed.media] == [0, 20000]
    assert parsed.media[0].connection == Connection("IN", "IP4", "192.0.2.1")


def test_offer_round_trip() -> None:
    offer = build_offer(123, 1, "192.0.2.1", 40000, ("PCMA", "PCMU"))
    assert offer == sdp("""
        v=0
        o=- 123 1 IN IP4 192.0.2.1
        s=-
        c=IN IP4 192.0.2.1
        t=0 0
        m=audio 40000 RTP/AVP 8 0 101
        a=rtpmap:8 PCMA/8000
        a=rtpmap:0 PCMU/8000
        a=rtpmap:101 telephone-event/8000
        a=fmtp:101 0-16
        a=ptime:20
        a=sendrecv
    """)
    chosen = negotiate(parse_sdp(offer))
    assert chosen is not None
    assert (chosen.encoding, chosen.telephone_event, chosen.port) == ("PCMA", 101, 40000)
    plain = build_offer(
        1, 2, "::1", 40002, ("PCMU",), telephone_event_pt=None, direction="inactive"
    )
    parsed = parse_sdp(plain)
    assert parsed.connection == Connection("IN", "IP6", "::1")
    assert parsed.audio[0].payload_types == (0,) and parsed.audio[0].direction == "inactive"
    for bad in (
        {"codecs": ("G729",)},
        {"codecs": ()},
        {"telephone_event_pt": 8},
        {"direction": "sideways"},
    ):
        with pytest.raises(ValueError):
            build_offer(1, 1, "192.0.2.1", 40000, **bad)  # type: ignore[arg-type]


def test_bare_lf_bytes_and_blank_lines() -> None:
    body = (SIPP.replace("\r\n", "\n") + "\n\n").encode()
    assert negotiate(parse_sdp(body)) is not None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("", "v=0"),
        ("o=- 1 1 IN IP4 192.0.2.1\r\n", "v=0"),
        ("v=1\r\n", "v=0"),
        ("v=0\r\ns=-\r\n", "no o="),
        ("v=0\r\no=- 1 1 IN IP4\r\n", "6 fields"),
        (SIPP + "v=0\r\n", "second v="),
        (SIPP + "garbage\r\n", "not <type>=<value>"),
        (SIPP.replace("c=IN IP4 127.0.0.1", "c=IN IP4"), "c="),
        (SIPP.replace("c=IN IP4 127.0.0.1", "c=IN IPX 127.0.0.1"), "c="),
        (SIPP.replace("c=IN IP4 127.0.0.1\r\n", ""), "no connection address"),
        (SIPP.replace("m=audio 6000", "m=audio 70000"), "port 70000"),
        (SIPP.replace("m=audio 6000", "m=audio six"), "port"),
        (SIPP.replace("RTP/AVP 0", "RTP/AVP"), "expected <media>"),
        (SIPP.replace("RTP/AVP 0", "RTP/AVP 0 200"), "payload type 200"),
        (SIPP.replace("RTP/AVP 0", "RTP/AVP ٣"), "payload type"),  # non-ASCII digit
        (SIPP.replace("PCMU/8000", "PCMU"), "rtpmap"),
        (SIPP.replace("PCMU/8000", "PCMU/8k"), "clock rate"),
        (SIPP + "a=ptime:fast\r\n", "ptime"),
        (SIPP + "a=fmtp:x 0-16\r\n", "fmtp"),
        (b"v=0\r\n\xff\xfe", "UTF-8"),
    ],
)
def test_malformed_bodies_say_why(body: str | bytes, reason: str) -> None:
    with pytest.raises(SdpError, match=reason):
        parse_sdp(body)


@settings(deadline=None, max_examples=1000)
@given(st.text(max_size=300))
def test_random_text_parses_or_raises_sdp_error(body: str) -> None:
    with contextlib.suppress(SdpError):
        parse_sdp(body)


_LINE_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "IN IP4 192.0.2.1",
            "IN IP6 ::1",
            "- 1 1 IN IP4 192.0.2.1",
            "audio 4000 RTP/AVP 0 8 101",
            "audio 0 RTP/AVP 0",
            "video 4002 RTP/AVP 99",
            "application 9 UDP/DTLS/SCTP webrtc-datachannel",
            "rtpmap:101 telephone-event/8000",
            "rtpmap:0 PCMU/8000/1",
            "fmtp:101 0-16",
            "ptime:20.5",
            "sendonly",
            "rtcp-mux",
        ]
    ),
)
_LINES = st.lists(
    st.tuples(st.sampled_from("vocmast"), _LINE_VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
    max_size=25,
)


@settings(deadline=None, max_examples=1000)
@given(_LINES, st.booleans(), st.sampled_from(["\r\n", "\n"]))
def test_random_lines_parse_or_raise_sdp_error(
    lines: list[str], origin: bool, newline: str
) -> None:
    """Well-formed lines with random values: the deeper checks, then negotiation and the answer
    never fail on what parsed."""
    head = ["v=0", "o=- 1 1 IN IP4 192.0.2.1"] if origin else ["v=0"]
    try:
        offer = parse_sdp(newline.join([*head, *lines]))
    except SdpError:
        return
    chosen = negotiate(offer)
    if chosen is not None:
        parse_sdp(build_answer(offer.media, chosen, "192.0.2.1", 20000, 1, 1))
