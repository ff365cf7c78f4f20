"""SRTP keyed by SDES (RFC 4568) on the embedded engine's SIP legs.

- `a=crypto` lines read and written (media/sdes.py), malformed ones never anything but
  `SdpError`, and the negotiation under each policy ("off", "optional", "required");
- the engine's offers and answers, re-INVITEs that keep or change keys;
- audio as audio: SDES peers made here with pylibsrtp directly (their own keys, their own RTP
  packing from `tests.media.peers`), each playing its own tone through the engine on loopback,
  an FFT of what each heard (blind relay, plain <-> SRTP, the mixing path and its recording);
  bad packets dropped and counted;
- baresip (Debian 1.0, its own libsrtp) with `mediaenc=srtp-mand` and `mediaenc=srtp` taking
  the engine's offer and answer, over a SIP dialog driven by this file (a few lines of SIP on
  a loopback socket: the SIP stack of the daemon is not under test here).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pylibsrtp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.calls.media import NoCommonCodec
from bridge.media.engine import EmbeddedMedia
from bridge.media.ports import PortPool
from bridge.media.sdes import (
    Crypto,
    SdesRefused,
    answer_crypto,
    negotiate_srtp,
    parse_crypto,
    usable_crypto,
)
from bridge.media.sdp import SdpError, build_answer, build_offer, parse_sdp
from bridge.media.srtp import SrtpSessions, pointer
from bridge.observability.metrics import Metrics
from tests.media.audio import frames, read_wav, tone, tones_in
from tests.media.peers import (
    BaresipPhone,
    build_rtp,
    g711_encode,
    needs_baresip,
    parse_rtp,
    rtp_audio,
)

CALLER, AGENT, SUPERVISOR = 440.0, 1000.0, 2000.0
SUITE80, SUITE32 = "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"
PROFILES = {
    SUITE80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    SUITE32: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
PCMU, PCMA = 0, 8
KEY = bytes(range(30))
KEY_TEXT = base64.b64encode(KEY).decode()


def sdp(*lines: str) -> str:
    return "\r\n".join(lines) + "\r\n"


def phone_offer(proto: str = "RTP/SAVP", *crypto: str, port: int = 4000) -> str:
    return sdp(
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        f"m=audio {port} {proto} 0 101",
        "a=rtpmap:101 telephone-event/8000",
        "a=sendrecv",
        *(f"a=crypto:{value}" for value in crypto),
    )


GOOD = f"1 {SUITE80} inline:{KEY_TEXT}"


# -- a=crypto lines ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "tag", "suite"),
    [
        (GOOD, 1, SUITE80),
        (f"7 {SUITE32} inline:{KEY_TEXT}", 7, SUITE32),
        (f"1 aes_cm_128_hmac_sha1_80 inline:{KEY_TEXT}", 1, SUITE80),  # suites: any case
        (f"1 {SUITE80} inline:{KEY_TEXT}|2^31", 1, SUITE80),  # Asterisk, Snom, Yealink
        (f"1 {SUITE80} inline:{KEY_TEXT}|2^48", 1, SUITE80),  # baresip's srtp_keylifetime
        (f"1 {SUITE80} inline:{KEY_TEXT}|1048576", 1, SUITE80),  # a decimal lifetime
        (f"2 {SUITE80} inline:{KEY_TEXT} WSH=128", 2, SUITE80),  # a window hint only advises
        (f"123456789 {SUITE80}  inline:{KEY_TEXT}", 123456789, SUITE80),
    ],
)
def test_usable_crypto_lines_are_read(value: str, tag: int, suite: str) -> None:
    crypto = parse_crypto(value)
    assert (crypto.tag, crypto.suite, crypto.key) == (tag, suite, KEY)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "expected"),
        (f"1 {SUITE80}", "expected"),
        (f"x {SUITE80} inline:{KEY_TEXT}", "tag"),
        (f"1234567890 {SUITE80} inline:{KEY_TEXT}", "tag"),
        (f"\uff11 {SUITE80} inline:{KEY_TEXT}", "tag"),  # a non-ASCII digit (fullwidth 1)
        (f"1 AEAD_AES_256_GCM inline:{KEY_TEXT}", "not one we support"),
        (f"1 F8_128_HMAC_SHA1_80 inline:{KEY_TEXT}", "not one we support"),
        (f"1 {SUITE80} uri:{KEY_TEXT}", "not inline"),
        (f"1 {SUITE80} {KEY_TEXT}", "not inline"),
        (f"1 {SUITE80} inline:not*base64!", "not base64"),
        (f"1 {SUITE80} inline:{base64.b64encode(bytes(29)).decode()}", "29 bytes"),
        (f"1 {SUITE80} inline:{base64.b64encode(bytes(46)).decode()}", "46 bytes"),
        (f"1 {SUITE80} inline:{KEY_TEXT}|2^31|1:4", "MKI"),
        (f"1 {SUITE80} inline:{KEY_TEXT}|1:4", "MKI"),
        (f"1 {SUITE80} inline:{KEY_TEXT}|2^x", "lifetime"),
        (f"1 {SUITE80} inline:{KEY_TEXT}|3^20", "lifetime"),
        (f"1 {SUITE80} inline:{KEY_TEXT}|2^31|2^31|1:1", "malformed"),
        (f"1 {SUITE80} inline:{KEY_TEXT}|2^20|1:4;inline:{KEY_TEXT}|2^20|2:4", "several"),
        (f"1 {SUITE80} inline:{KEY_TEXT} UNENCRYPTED_SRTP", "session parameter"),
        (f"1 {SUITE80} inline:{KEY_TEXT} UNENCRYPTED_SRTCP", "session parameter"),
        (f"1 {SUITE80} inline:{KEY_TEXT} UNAUTHENTICATED_SRTP", "session parameter"),
        (f"1 {SUITE80} inline:{KEY_TEXT} KDR=1", "session parameter"),
        (f"1 {SUITE80} inline:{KEY_TEXT} FEC_ORDER=FEC_SRTP", "session parameter"),
        (f"1 {SUITE80} inline:{KEY_TEXT} WSH=lots", "session parameter"),
    ],
)
def test_malformed_or_unusable_crypto_lines_are_sdp_errors(value: str, why: str) -> None:
    with pytest.raises(SdpError, match=why):
        parse_crypto(value)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=120),
        st.builds(
            lambda tag, suite, key, rest: f"{tag} {suite} {key}{rest}",
            st.text(alphabet="0123456789x ", max_size=12),
            st.sampled_from([SUITE80, SUITE32, "x", ""]),
            st.text(alphabet="inlue:|^;=+/ABCDEFabc0123456789", max_size=60),
            st.text(max_size=30),
        ),
    )
)
def test_crypto_lines_from_the_network_only_ever_fail_as_sdp_errors(value: str) -> None:
    try:
        crypto = parse_crypto(value)
    except SdpError:
        return
    assert len(crypto.key) == 30 and crypto.suite in PROFILES


def test_a_crypto_line_is_written_as_baresip_and_asterisk_read_it() -> None:
    crypto = Crypto(3, SUITE80, KEY)
    assert crypto.value == f"3 {SUITE80} inline:{KEY_TEXT}"
    assert len(KEY_TEXT) == 40 and "|" not in crypto.value  # 30 bytes, no lifetime, no MKI
    assert parse_crypto(crypto.value) == crypto
    assert KEY_TEXT not in repr(crypto) and repr(KEY) not in repr(crypto)  # not in logs


def test_offers_and_answers_carry_the_protocol_and_crypto_lines() -> None:
    offer = build_offer(1, 1, "192.0.2.1", 20000, proto="RTP/SAVP", crypto=[GOOD])
    assert "m=audio 20000 RTP/SAVP 0 8 101\r\n" in offer
    assert offer.endswith(f"a=crypto:{GOOD}\r\n")
    parsed = parse_sdp(offer)
    assert usable_crypto(parsed.media[0]) == [parse_crypto(GOOD)]
    chosen, _ = negotiate_srtp(parse_sdp(phone_offer("RTP/SAVP", GOOD)))
    answer = build_answer(
        parse_sdp(phone_offer("RTP/SAVP", GOOD)).media, chosen, "192.0.2.1", 20002, 2, 1,
        proto="RTP/SAVP", crypto=[GOOD],
    )  # fmt: skip
    assert "m=audio 20002 RTP/SAVP 0 101\r\n" in answer and f"a=crypto:{GOOD}\r\n" in answer
    with pytest.raises(ValueError, match="protocol"):
        build_offer(1, 1, "192.0.2.1", 20000, proto="UDP/TLS/RTP/SAVPF")


# -- negotiation under the policy --------------------------------------------------------------
UNSUPPORTED = f"1 AEAD_AES_256_GCM inline:{base64.b64encode(bytes(44)).decode()}"
WITH_MKI = f"1 {SUITE80} inline:{KEY_TEXT}|2^31|1:4"


@pytest.mark.parametrize(
    ("proto", "crypto", "policy", "srtp"),
    [
        # RTP/SAVP: SRTP whatever the policy (a phone that insists gets it)
        ("RTP/SAVP", [GOOD], "off", True),
        ("RTP/SAVP", [GOOD], "optional", True),
        ("RTP/SAVP", [GOOD], "required", True),
        # RTP/AVP with crypto (best effort): ignored when off
        ("RTP/AVP", [GOOD], "off", False),
        ("RTP/AVP", [GOOD], "optional", True),
        ("RTP/AVP", [GOOD], "required", True),
        # RTP/AVP without (usable) crypto: plain unless required
        ("RTP/AVP", [], "off", False),
        ("RTP/AVP", [], "optional", False),
        ("RTP/AVP", [UNSUPPORTED, WITH_MKI, "1 garbage"], "optional", False),
    ],
)
def test_the_policy_decides_srtp(proto: str, crypto: list[str], policy: str, srtp: bool) -> None:
    chosen, theirs = negotiate_srtp(parse_sdp(phone_offer(proto, *crypto)), policy)
    assert chosen.payload_type == 0 and chosen.port == 4000
    assert (theirs is not None) == srtp
    if srtp:
        assert theirs == parse_crypto(GOOD)


@pytest.mark.parametrize(
    ("offer", "policy", "why"),
    [
        (phone_offer("RTP/SAVP", UNSUPPORTED), "off", "no SRTP crypto suite we support"),
        (phone_offer("RTP/SAVP", WITH_MKI), "optional", "no SRTP crypto suite we support"),
        (phone_offer("RTP/SAVP"), "required", "no SRTP crypto suite we support"),
        (phone_offer("RTP/AVP"), "required", "SRTP is required"),
        (phone_offer("RTP/AVP", UNSUPPORTED), "required", "SRTP is required"),
        (phone_offer("RTP/SAVPF", GOOD), "optional", "no PCMU or PCMA"),
        (phone_offer("RTP/SAVP", GOOD).replace(" 0 101", " 9 101"), "off", "no PCMU or PCMA"),
    ],
)
def test_offers_that_cannot_be_answered_say_why(offer: str, policy: str, why: str) -> None:
    with pytest.raises(SdesRefused, match=why):
        negotiate_srtp(parse_sdp(offer), policy)


def test_the_first_usable_line_and_stream_win() -> None:
    second = f"2 {SUITE32} inline:{base64.b64encode(bytes(30)).decode()}"
    _, theirs = negotiate_srtp(parse_sdp(phone_offer("RTP/SAVP", UNSUPPORTED, second, GOOD)))
    assert theirs is not None and (theirs.tag, theirs.suite) == (2, SUITE32)
    # an SRTP stream we cannot key, then a plain one (older phones offer both)
    both = phone_offer("RTP/SAVP", UNSUPPORTED) + "m=audio 4002 RTP/AVP 0\r\n"
    chosen, theirs = negotiate_srtp(parse_sdp(both), "optional")
    assert (chosen.media_index, chosen.port, theirs) == (1, 4002, None)


def test_an_answer_is_read_for_our_tag_and_suite() -> None:
    ours = Crypto(1, SUITE80, bytes(30))
    media = parse_sdp(phone_offer("RTP/AVP", GOOD)).media[0]
    assert answer_crypto(media, ours) == parse_crypto(GOOD)
    other_tag = parse_sdp(phone_offer("RTP/AVP", GOOD.replace("1 ", "2 ", 1))).media[0]
    assert answer_crypto(other_tag, ours) is None
    other_suite = parse_sdp(phone_offer("RTP/AVP", GOOD.replace(SUITE80, SUITE32))).media[0]
    assert answer_crypto(other_suite, ours) is None


def test_unknown_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="srtp policy"):
        negotiate_srtp(parse_sdp(phone_offer("RTP/AVP")), "maybe")


# -- the SRTP sessions (media/srtp.py) ----------------------------------------------------------
def test_sessions_protect_in_place_and_refuse_what_does_not_authenticate() -> None:
    ours, theirs = os.urandom(30), os.urandom(30)
    a, b = SrtpSessions(ours, theirs), SrtpSessions(theirs, ours)
    buffer = bytearray(256)
    ptr = pointer(buffer)
    packet = build_rtp(0, 10, 1600, 0x1234, bytes(160), False)
    buffer[: len(packet)] = packet
    size = a.protect_into(ptr, len(packet))
    assert size == len(packet) + 10 and buffer[12:172] != bytes(160)
    wire = bytes(buffer[:size])
    assert b.unprotect_into(ptr, size) == len(packet) and bytes(buffer[: len(packet)]) == packet
    buffer[:size] = wire
    assert b.unprotect_into(ptr, size) == -1  # a replay
    tampered = bytearray(a.protect(build_rtp(0, 11, 1760, 0x1234, bytes(160), False)))
    tampered[-1] ^= 1
    buffer[: len(tampered)] = tampered
    assert b.unprotect_into(ptr, len(tampered)) == -1
    assert a.protect_into(ptr, 250) == -1  # no room for the tag: refused, nothing overrun
    with pytest.raises(pylibsrtp.Error):
        b.unprotect(bytes(tampered))


# -- the engine's SDP --------------------------------------------------------------------------
CRYPTO_RE = re.compile(r"^a=crypto:(\d+) (\S+) inline:([A-Za-z0-9+/=]+)\s*$", re.MULTILINE)
MEDIA_RE = re.compile(r"^m=audio (\d+) (\S+)", re.MULTILINE)


def crypto_of(text: str) -> tuple[int, str, bytes] | None:
    """The one a=crypto line of an SDP (read with a regular expression, not bridge code)."""
    found = CRYPTO_RE.findall(text)
    assert len(found) <= 1, found
    if not found:
        return None
    tag, suite, key = found[0]
    return int(tag), suite, base64.b64decode(key)


def media_of(text: str) -> tuple[int, str]:
    port, proto = MEDIA_RE.findall(text)[0]
    return int(port), proto


@pytest.fixture
async def engine(pool: PortPool) -> AsyncIterator[EmbeddedMedia]:
    loop = asyncio.get_running_loop()
    media = EmbeddedMedia(pool, advertised_address="127.0.0.1", clock=loop.time, loop=loop)
    yield media
    media.stop()


async def test_an_savp_offer_is_answered_with_our_own_key_even_when_off(
    engine: EmbeddedMedia,
) -> None:
    answer = engine.answer("c1", "caller", phone_offer("RTP/SAVP", GOOD.replace("1 ", "5 ", 1)))
    assert media_of(answer)[1] == "RTP/SAVP"
    found = crypto_of(answer)
    assert found is not None
    tag, suite, key = found
    assert (tag, suite, len(key)) == (5, SUITE80, 30) and key != KEY
    assert engine._calls["c1"].legs["caller"].endpoint.srtp is not None


@pytest.mark.parametrize(("policy", "srtp"), [("off", False), ("optional", True)])
async def test_best_effort_crypto_on_rtp_avp_follows_the_policy(
    engine: EmbeddedMedia, policy: str, srtp: bool
) -> None:
    answer = engine.answer("c1", "caller", phone_offer("RTP/AVP", GOOD), srtp=policy)
    assert media_of(answer)[1] == "RTP/AVP"
    assert (crypto_of(answer) is not None) == srtp
    assert (engine._calls["c1"].legs["caller"].endpoint.srtp is not None) == srtp


async def test_required_without_a_key_is_488_and_takes_no_port(
    engine: EmbeddedMedia, pool: PortPool
) -> None:
    with pytest.raises(NoCommonCodec, match="SRTP is required"):
        engine.answer("c1", "caller", phone_offer("RTP/AVP"), srtp="required")
    with pytest.raises(NoCommonCodec, match="no SRTP crypto suite we support"):
        engine.answer("c1", "caller", phone_offer("RTP/SAVP", UNSUPPORTED))
    with pytest.raises(ValueError, match="srtp policy"):
        engine.answer("c1", "caller", phone_offer("RTP/AVP"), srtp="on")
    assert pool.in_use == 0 and engine.anchored_calls == 0


@pytest.mark.parametrize(
    ("policy", "proto", "crypto"),
    [("off", "RTP/AVP", False), ("optional", "RTP/AVP", True), ("required", "RTP/SAVP", True)],
)
async def test_offers_follow_the_policy(
    engine: EmbeddedMedia, policy: str, proto: str, crypto: bool
) -> None:
    offer = engine.offer("c1", "leg", srtp=policy)
    assert media_of(offer)[1] == proto
    found = crypto_of(offer)
    assert (found is not None) == crypto
    if found is not None:
        assert found[:2] == (1, SUITE80) and len(found[2]) == 30


async def test_answers_to_our_offer(engine: EmbeddedMedia) -> None:
    # optional, answered with our tag: SRTP
    engine.offer("c1", "a", srtp="optional")
    engine.accept("c1", "a", phone_offer("RTP/AVP", GOOD))
    assert engine._calls["c1"].legs["a"].endpoint.srtp is not None
    # optional, answered without crypto: plain
    engine.offer("c1", "b", srtp="optional")
    engine.accept("c1", "b", phone_offer("RTP/AVP"))
    assert engine._calls["c1"].legs["b"].endpoint.srtp is None
    # optional, answered with another tag or suite: not our key, plain
    engine.offer("c1", "c", srtp="optional")
    engine.accept("c1", "c", phone_offer("RTP/AVP", GOOD.replace(SUITE80, SUITE32)))
    assert engine._calls["c1"].legs["c"].endpoint.srtp is None
    # required, answered without: refused
    engine.offer("c1", "d", srtp="required")
    with pytest.raises(NoCommonCodec, match="no usable a=crypto"):
        engine.accept("c1", "d", phone_offer("RTP/SAVP"))
    with pytest.raises(NoCommonCodec, match="no usable a=crypto"):
        engine.accept("c1", "d", phone_offer("RTP/AVP"))
    # required, answered RTP/SAVP with our tag
    engine.accept("c1", "d", phone_offer("RTP/SAVP", GOOD))
    assert engine._calls["c1"].legs["d"].endpoint.srtp is not None
    # off: an SRTP answer to a plain offer has no stream of ours
    engine.offer("c1", "e")
    with pytest.raises(NoCommonCodec):
        engine.accept("c1", "e", phone_offer("RTP/SAVP", GOOD))


async def test_reinvites_keep_or_rekey_the_sessions(engine: EmbeddedMedia) -> None:
    first = engine.answer("c1", "caller", phone_offer("RTP/SAVP", GOOD))
    endpoint = engine._calls["c1"].legs["caller"].endpoint
    sessions = endpoint.srtp
    assert sessions is not None
    tx, rx = sessions._tx, sessions._rx
    # the same key again (a session refresh, a hold): nothing changes, our key repeated
    again = engine.answer("c1", "caller", phone_offer("RTP/SAVP", GOOD))
    assert crypto_of(again) == crypto_of(first)
    assert endpoint.srtp is sessions and (sessions._tx, sessions._rx) == (tx, rx)
    # a new key of theirs (another tag too): what we receive is re-keyed, our key stays
    rekeyed = f"2 {SUITE80} inline:{base64.b64encode(bytes(30)).decode()}"
    third = engine.answer("c1", "caller", phone_offer("RTP/SAVP", rekeyed))
    assert crypto_of(third) == (2, SUITE80, crypto_of(first)[2])  # type: ignore[index]
    assert endpoint.srtp is sessions and sessions._tx is tx and sessions._rx is not rx
    # another suite: a new pair, with a new key of ours (never a key stream twice)
    other = f"2 {SUITE32} inline:{base64.b64encode(bytes(30)).decode()}"
    fourth = engine.answer("c1", "caller", phone_offer("RTP/SAVP", other))
    assert crypto_of(fourth)[1] == SUITE32  # type: ignore[index]
    assert crypto_of(fourth)[2] != crypto_of(first)[2]  # type: ignore[index]
    assert endpoint.srtp is not sessions
    # plain again (best effort dropped), then SRTP again: a fresh key
    engine.answer("c1", "caller", phone_offer("RTP/AVP"), srtp="optional")
    assert endpoint.srtp is None
    fifth = engine.answer("c1", "caller", phone_offer("RTP/SAVP", GOOD))
    assert crypto_of(fifth)[2] not in (crypto_of(first)[2], crypto_of(fourth)[2])  # type: ignore[index]
    # our offer on a live SRTP leg keeps our key too
    assert crypto_of(engine.offer("c1", "caller", srtp="optional")) == (
        1,
        SUITE80,
        crypto_of(fifth)[2],  # type: ignore[index]
    )


@pytest.mark.parametrize(
    ("proto", "policy", "srtp"),
    [("RTP/SAVP", "off", True), ("RTP/AVP", "optional", True), ("RTP/AVP", "off", False)],
)
async def test_a_new_offer_to_a_live_leg_keeps_its_srtp(
    engine: EmbeddedMedia, proto: str, policy: str, srtp: bool
) -> None:
    """`offer_again` (the 2xx of an offerless re-INVITE) offers what the leg speaks now: its
    profile, and our key on an SDES leg; sendrecv; the codec in use first."""
    first = engine.answer("c1", "caller", phone_offer(proto, GOOD), srtp=policy)
    offer = engine.offer_again("c1", "caller")
    assert offer is not None
    assert media_of(offer)[1] == proto
    assert crypto_of(offer) == (crypto_of(first) if srtp else None)
    assert "a=sendrecv" in offer
    assert engine.offer_again("c1", "nobody") is None
    assert engine.offer_again("c9", "caller") is None


# -- audio -------------------------------------------------------------------------------------
class Peer:
    """A phone on a loopback socket with its own RTP (tests.media.peers) and, when `suite` is
    given, its own SDES key and libsrtp sessions (pylibsrtp directly, not bridge code)."""

    def __init__(
        self, ssrc: int, *, suite: str | None = SUITE80, tag: int = 1, payload_type: int = PCMU
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.ssrc, self.suite, self.tag, self.payload_type = ssrc, suite, tag, payload_type
        self.sequence, self.timestamp = secrets.randbits(15), secrets.randbits(31)
        self.rx: pylibsrtp.Session | None = None
        self.tx: pylibsrtp.Session | None = None
        self.key = b""
        if suite is not None:
            self.rekey()
        self.port = 0  # the engine's, from its SDP
        self.failed = 0  # packets from the engine that did not authenticate

    def rekey(self) -> None:
        assert self.suite is not None
        self.key = os.urandom(30)
        policy = pylibsrtp.Policy(
            key=self.key,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=PROFILES[self.suite],
        )
        self.tx = pylibsrtp.Session(policy)

    @property
    def crypto(self) -> str:
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode()}"

    def sdp(self, proto: str = "RTP/SAVP", codecs: str | None = None) -> str:
        _, port = self.sock.getsockname()
        lines = [
            "v=0",
            "o=- 7 7 IN IP4 127.0.0.1",
            "s=-",
            "c=IN IP4 127.0.0.1",
            "t=0 0",
            f"m=audio {port} {proto} {codecs or f'{self.payload_type} 101'}",
            "a=rtpmap:101 telephone-event/8000",
            "a=sendrecv",
        ]
        if self.suite is not None:
            lines.append(f"a=crypto:{self.crypto}")
        return sdp(*lines)

    def take(self, engine_sdp: str) -> None:
        """The engine's SDP: where to send, and its key for what it sends us."""
        self.port = media_of(engine_sdp)[0]
        found = crypto_of(engine_sdp)
        if self.suite is None:  # a plain phone: any a=crypto is passed over
            return
        assert found is not None and found[1] == self.suite
        self.tag = found[0]  # (an answer to our offer: the tag we offered)
        policy = pylibsrtp.Policy(
            key=found[2],
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
            srtp_profile=PROFILES[self.suite],
        )
        self.rx = pylibsrtp.Session(policy)

    def packet(self, payload: bytes, payload_type: int | None = None) -> bytes:
        packet = build_rtp(
            self.payload_type if payload_type is None else payload_type,
            self.sequence,
            self.timestamp,
            self.ssrc,
            payload,
            False,
        )
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + 160) & 0xFFFFFFFF
        return self.tx.protect(packet) if self.tx is not None else packet

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", self.port))

    async def play(self, freq: float, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, frame in enumerate(frames(tone(freq, seconds))):
            await asyncio.sleep(max(0.0, start + index * 0.02 - loop.time()))
            self.send(self.packet(g711_encode(frame, self.payload_type)))

    def received(self) -> list[bytes]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096))
            except BlockingIOError:
                return got

    def plain(self, packets: list[bytes]) -> list[bytes]:
        """The packets as RTP: unprotected (those that fail are counted in `failed`)."""
        if self.rx is None:
            return packets
        out = []
        for packet in packets:
            try:
                out.append(self.rx.unprotect(packet))
            except pylibsrtp.Error:
                self.failed += 1
        return out

    def close(self) -> None:
        self.sock.close()


class Call:
    """The engine with a caller and a leg, both peers above."""

    def __init__(self, engine: EmbeddedMedia) -> None:
        self.engine = engine
        self.peers: dict[str, Peer] = {}

    def caller(self, peer: Peer, proto: str = "RTP/SAVP", policy: str = "off") -> Peer:
        self.peers["caller"] = peer
        peer.take(
            self.engine.answer("c1", "caller", peer.sdp(proto), source="127.0.0.1", srtp=policy)
        )
        return peer

    def leg(self, name: str, peer: Peer, policy: str, proto: str = "RTP/SAVP") -> Peer:
        self.peers[name] = peer
        peer.take(self.engine.offer("c1", name, like="caller", srtp=policy))
        self.engine.accept("c1", name, peer.sdp(proto), source="127.0.0.1")
        return peer

    async def talk(self, seconds: float, tones: dict[str, float]) -> dict[str, bytes]:
        for peer in self.peers.values():
            peer.received()
        await asyncio.gather(*(self.peers[p].play(f, seconds) for p, f in tones.items()))
        await asyncio.sleep(0.15)
        return {p: rtp_audio(peer.plain(peer.received())) for p, peer in self.peers.items()}

    def close(self) -> None:
        for peer in self.peers.values():
            peer.close()


@pytest.fixture
async def call(engine: EmbeddedMedia) -> AsyncIterator[Call]:
    call = Call(engine)
    yield call
    call.close()


async def test_two_sdes_phones_hear_each_other_through_the_blind_relay(call: Call) -> None:
    caller = call.caller(Peer(0xC1))
    agent = call.leg("agent", Peer(0xA1), "required")
    call.engine.bridge("c1", "caller", "agent")
    # what goes on the wire is SRTP: read as plain RTP it is noise, not the tone
    caller.received()
    await caller.play(CALLER, 0.3)
    await asyncio.sleep(0.1)
    wire = agent.received()
    assert len(wire) >= 12
    assert all(len(p) == 172 + 10 for p in wire)  # the 80-bit tag
    plain = agent.plain(wire)
    assert len(plain) == len(wire)
    # every payload on the wire is ciphertext (an FFT of it found the tone in noise, once)
    assert all(w[12:172] != p[12:172] for w, p in zip(wire, plain, strict=True))
    assert tones_in(rtp_audio(plain), [CALLER]) == {CALLER}
    heard = await call.talk(1.2, {"caller": CALLER, "agent": AGENT})
    assert tones_in(heard["caller"], [CALLER, AGENT]) == {AGENT}
    assert tones_in(heard["agent"], [CALLER, AGENT]) == {CALLER}
    assert caller.failed == agent.failed == 0
    relay = call.engine._calls["c1"].relay
    assert relay is not None and relay.stats.relayed >= 100 and relay.stats.transcoded == 0
    assert call.engine.live_figures().srtp_dropped == 0


@pytest.mark.parametrize("agent_codec", [PCMU, PCMA], ids=["relayed", "transcoded"])
async def test_a_plain_phone_and_an_sdes_phone_are_bridged(call: Call, agent_codec: int) -> None:
    # the caller's SRTP is best effort (RTP/AVP with a=crypto, 32-bit tags); the agent's phone
    # answers our best-effort offer without any
    caller = call.caller(Peer(0xC2, suite=SUITE32, tag=9), proto="RTP/AVP", policy="optional")
    call.leg("agent", Peer(0xA2, suite=None, payload_type=agent_codec), "optional", "RTP/AVP")
    call.engine.bridge("c1", "caller", "agent")
    heard = await call.talk(1.2, {"caller": CALLER, "agent": AGENT})
    assert tones_in(heard["caller"], [CALLER, AGENT]) == {AGENT}
    assert tones_in(heard["agent"], [CALLER, AGENT]) == {CALLER}
    assert caller.failed == 0
    legs = call.engine._calls["c1"].legs
    assert legs["caller"].endpoint.srtp is not None and legs["agent"].endpoint.srtp is None
    # and DTMF to the SRTP leg is protected as its audio is
    caller.received()
    call.engine.send_dtmf("c1", "caller", "5")
    await asyncio.sleep(0.4)
    events = [parse_rtp(p) for p in caller.plain(caller.received())]
    assert {p.payload_type for p in events} == {101} and caller.failed == 0


async def test_recording_and_a_supervisor_on_sdes_legs(call: Call, tmp_path: Path) -> None:
    call.caller(Peer(0xC3))
    call.leg("agent", Peer(0xA3, payload_type=PCMA), "required")
    call.engine.bridge("c1", "caller", "agent")
    call.leg("sup", Peer(0x53), "optional", "RTP/AVP")
    call.engine.monitor("c1", "sup", "listen")
    call.engine.start_recording("c1", tmp_path / "r.wav")
    heard = await call.talk(1.2, {"caller": CALLER, "agent": AGENT, "sup": SUPERVISOR})
    result = call.engine.stop_recording("c1")
    assert result is not None and result.duration_seconds > 1.0
    info, channels = read_wav(tmp_path / "r.wav")
    assert info.channels == 2
    assert tones_in(channels[0], [CALLER, AGENT, SUPERVISOR]) == {CALLER}
    assert tones_in(channels[1], [CALLER, AGENT, SUPERVISOR]) == {AGENT}
    everyone = [CALLER, AGENT, SUPERVISOR]
    assert tones_in(heard["caller"], everyone) == {AGENT}
    assert tones_in(heard["agent"], everyone) == {CALLER}
    assert tones_in(heard["sup"], everyone) == {CALLER, AGENT}
    assert all(peer.failed == 0 for peer in call.peers.values())


async def test_bad_packets_are_dropped_and_counted(call: Call, tmp_path: Path) -> None:
    caller = call.caller(Peer(0xC4))
    agent = call.leg("agent", Peer(0xA4), "required")
    call.engine.bridge("c1", "caller", "agent")
    await caller.play(CALLER, 0.3)  # latched, connected, the relay reads directly
    await asyncio.sleep(0.1)
    agent.received()
    endpoint = call.engine._calls["c1"].legs["caller"].endpoint
    for mode in ("relay", "mix"):
        if mode == "mix":
            call.engine.start_recording("c1", tmp_path / "r.wav")
        before = endpoint.stats.srtp_dropped
        good = caller.packet(bytes(160))
        tampered = bytearray(caller.packet(bytes(160)))
        tampered[-1] ^= 0x55  # the authentication tag
        caller.send(good)
        caller.send(bytes(tampered))
        caller.send(good)  # a replay
        caller.send(bytes([0x80, 0x00]) + os.urandom(40))  # SRTP of a stranger's key
        for _ in range(5):
            caller.send(caller.packet(bytes(160)))
        await asyncio.sleep(0.3)
        assert endpoint.stats.srtp_dropped - before == 3, mode
        got = agent.plain(agent.received())
        if mode == "relay":
            assert len(got) == 6  # only the good ones went on
        assert agent.failed == 0
    assert call.engine.live_figures().srtp_dropped == 6
    metrics = Metrics()  # what an operator scrapes
    metrics.watch_media(call.engine)
    assert b"bridge_media_srtp_dropped_total 6.0" in metrics.render()


async def test_a_stranger_cannot_latch_an_sdes_leg_behind_nat(call: Call) -> None:
    caller = Peer(0xC8)
    call.peers["caller"] = caller
    # signalled from another address than its SDP's: behind NAT, latched on a first packet
    caller.take(call.engine.answer("c1", "caller", caller.sdp(), source="192.0.2.7"))
    call.leg("agent", Peer(0xA8), "required")
    call.engine.bridge("c1", "caller", "agent")
    endpoint = call.engine._calls["c1"].legs["caller"].endpoint
    stranger = Peer(0x66)  # its own key: not the one the caller's SDP gave
    stranger.port = caller.port
    call.peers["stranger"] = stranger
    for _ in range(3):
        stranger.send(stranger.packet(bytes(160)))
    await asyncio.sleep(0.1)
    assert endpoint.latch.latched is None and endpoint.stats.srtp_dropped == 3
    heard = await call.talk(0.6, {"caller": CALLER, "agent": AGENT})
    assert endpoint.latch.latched == caller.sock.getsockname()
    assert tones_in(heard["agent"], [CALLER]) == {CALLER}
    assert tones_in(heard["caller"], [AGENT]) == {AGENT}
    assert heard["stranger"] == b""


async def test_srtcp_is_counted_as_rtcp_and_dropped(call: Call) -> None:
    caller = call.caller(Peer(0xC5))
    call.leg("agent", Peer(0xA5), "required")
    call.engine.bridge("c1", "caller", "agent")
    await caller.play(CALLER, 0.2)
    await asyncio.sleep(0.1)
    # a receiver report, protected as SRTCP would be (its index and tag after it)
    caller.send(bytes([0x81, 201, 0, 7]) + os.urandom(28) + bytes([0x80, 0, 0, 1]) + os.urandom(10))
    await asyncio.sleep(0.1)
    relay = call.engine._calls["c1"].relay
    assert relay is not None and relay.stats.rtcp == 1
    assert call.engine.live_figures().srtp_dropped == 0


async def test_a_peer_rekeyed_by_reinvite_is_still_heard(call: Call) -> None:
    caller = call.caller(Peer(0xC6))
    call.leg("agent", Peer(0xA6), "required")
    call.engine.bridge("c1", "caller", "agent")
    heard = await call.talk(0.6, {"caller": CALLER, "agent": AGENT})
    assert tones_in(heard["agent"], [CALLER]) == {CALLER}
    old = crypto_of(call.engine.local_sdp("c1", "caller") or "")
    caller.rekey()
    answer = call.engine.answer("c1", "caller", caller.sdp(), source="127.0.0.1")
    assert crypto_of(answer) == old  # ours goes on: the caller keeps its receiving session
    heard = await call.talk(0.8, {"caller": CALLER, "agent": AGENT})
    assert tones_in(heard["agent"], [CALLER, AGENT]) == {CALLER}
    assert tones_in(heard["caller"], [CALLER, AGENT]) == {AGENT}
    assert caller.failed == 0


# -- baresip (its own libsrtp) -----------------------------------------------------------------
class MiniSip:
    """Just enough SIP over a loopback UDP socket to put one call to or from baresip: INVITE,
    its 2xx and ACK, and 200 to BYE. Not the daemon's SIP stack: the engine's SDP is under test."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.tag = secrets.token_hex(4)
        self.call_id = secrets.token_hex(8)
        self.byes = 0
        self._server: asyncio.Task[None] | None = None

    @staticmethod
    def parse(data: bytes) -> tuple[str, list[tuple[str, str]], str]:
        head, _, body = data.decode().partition("\r\n\r\n")
        first, *lines = head.split("\r\n")
        compact = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact"}
        headers = []
        for line in lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            headers.append((compact.get(name, name), value.strip()))
        return first, headers, body

    @staticmethod
    def header(headers: list[tuple[str, str]], name: str) -> str:
        return next(value for key, value in headers if key == name)

    async def receive(self, timeout: float = 10.0) -> tuple[bytes, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65535), timeout)

    def send(self, text: str, address: tuple[str, int]) -> None:
        self.sock.sendto(text.encode(), address)

    def _via(self) -> str:
        return f"SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport"

    async def invite(self, uri: str, offer: str, address: tuple[str, int]) -> str:
        """Call `uri` with `offer`: the answer of its 2xx (ACKed)."""
        message = (
            f"INVITE {uri} SIP/2.0\r\nVia: {self._via()}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:bridge@127.0.0.1:{self.port}>;tag={self.tag}\r\nTo: <{uri}>\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:bridge@127.0.0.1:{self.port}>\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(offer)}\r\n\r\n{offer}"
        )
        self.send(message, address)
        while True:
            data, source = await self.receive()
            first, headers, body = self.parse(data)
            code = int(first.split()[1]) if first.startswith("SIP/2.0") else 0
            if code >= 300:
                raise AssertionError(f"baresip answered {first}")
            if 200 <= code < 300:
                break
        to = self.header(headers, "to")
        contact = self.header(headers, "contact").split("<", 1)[-1].split(">", 1)[0]
        self.send(
            f"ACK {contact} SIP/2.0\r\nVia: {self._via()}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:bridge@127.0.0.1:{self.port}>;tag={self.tag}\r\nTo: {to}\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            source,
        )
        self._serve()
        return body

    async def answer(self, answer_for: object) -> str:
        """Take baresip's INVITE, answer it 200 with `answer_for(offer)`; the offer."""
        while True:
            data, source = await self.receive()
            first, headers, offer = self.parse(data)
            if first.startswith("INVITE"):
                break
        answer = answer_for(offer)  # type: ignore[operator]
        self.send(self._response(headers, 200, "OK", answer), source)
        self._serve()
        return offer

    def _response(
        self, headers: list[tuple[str, str]], code: int, reason: str, body: str = ""
    ) -> str:
        lines = [f"SIP/2.0 {code} {reason}"]
        lines += [f"Via: {value}" for key, value in headers if key == "via"]
        lines += [f"From: {self.header(headers, 'from')}"]
        to = self.header(headers, "to")
        lines += [f"To: {to}" if "tag=" in to else f"To: {to};tag={self.tag}"]
        lines += [
            f"Call-ID: {self.header(headers, 'call-id')}",
            f"CSeq: {self.header(headers, 'cseq')}",
        ]
        lines += [f"Contact: <sip:bridge@127.0.0.1:{self.port}>"]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    def _serve(self) -> None:
        async def serve() -> None:
            while True:
                data, source = await self.receive(timeout=60)
                first, headers, _ = self.parse(data)
                if first.startswith("BYE"):
                    self.byes += 1
                    self.send(self._response(headers, 200, "OK"), source)

        self._server = asyncio.ensure_future(serve())

    def close(self) -> None:
        if self._server is not None:
            self._server.cancel()
        self.sock.close()


@pytest.fixture
def sip() -> Iterator[MiniSip]:
    ua = MiniSip()
    yield ua
    ua.close()


async def hang_up(phone: BaresipPhone, sip: MiniSip) -> bytes:
    """baresip hangs up (its BYE answered); what it heard. Its own libsrtp said it keyed SRTP,
    and never that a packet failed."""
    await asyncio.to_thread(phone.hangup)
    await asyncio.to_thread(phone.wait_closed)
    heard = await asyncio.to_thread(phone.received_audio)
    log = phone.output()
    assert "SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)" in log, log[-3000:]
    assert "failed to decrypt" not in log and "failed to encrypt" not in log
    return heard


@needs_baresip
@pytest.mark.parametrize(("mediaenc", "policy"), [("srtp-mand", "required"), ("srtp", "optional")])
async def test_baresip_takes_our_srtp_offer(
    call: Call, sip: MiniSip, tmp_path: Path, mediaenc: str, policy: str
) -> None:
    caller = call.caller(Peer(0xC7, suite=None), proto="RTP/AVP")
    with BaresipPhone(
        tmp_path, "b", tone=AGENT, auto_answer=True, mediaenc=mediaenc, play_seconds=20
    ) as phone:
        offer = call.engine.offer("c1", "b", like="caller", srtp=policy)
        answer = await sip.invite(phone.uri, offer, ("127.0.0.1", phone.port))
        assert media_of(answer)[1] == media_of(offer)[1]
        found = crypto_of(answer)
        assert found is not None and found[:2] == (1, SUITE80), answer
        call.engine.accept("c1", "b", answer, source="127.0.0.1")
        call.engine.bridge("c1", "caller", "b")
        caller.received()
        await caller.play(CALLER, 2.0)
        await asyncio.sleep(0.2)
        heard_by_caller = rtp_audio(caller.received())
        heard_by_phone = await hang_up(phone, sip)
    assert tones_in(heard_by_caller, [CALLER, AGENT]) == {AGENT}
    assert tones_in(heard_by_phone[8000:], [CALLER, AGENT]) == {CALLER}  # (after the setup)
    assert call.engine._calls["c1"].legs["b"].endpoint.srtp is not None
    assert call.engine.live_figures().srtp_dropped == 0


@needs_baresip
@pytest.mark.parametrize(("mediaenc", "policy"), [("srtp-mand", "off"), ("srtp", "optional")])
async def test_baresip_takes_our_srtp_answer(
    call: Call, sip: MiniSip, tmp_path: Path, mediaenc: str, policy: str
) -> None:
    agent = Peer(0xA7, suite=None)
    call.peers["agent"] = agent
    with BaresipPhone(tmp_path, "a", tone=CALLER, mediaenc=mediaenc, play_seconds=20) as phone:
        answers: list[str] = []

        def answer_for(offer: str) -> str:
            answers.append(
                call.engine.answer("c1", "caller", offer, source="127.0.0.1", srtp=policy)
            )
            return answers[-1]

        await asyncio.to_thread(phone.dial, f"sip:bridge@127.0.0.1:{sip.port}")
        offer = await sip.answer(answer_for)
        proto = "RTP/SAVP" if mediaenc == "srtp-mand" else "RTP/AVP"
        assert media_of(offer)[1] == media_of(answers[0])[1] == proto
        assert crypto_of(offer) is not None and crypto_of(answers[0]) is not None
        call.leg("agent", agent, "off", "RTP/AVP")
        call.engine.bridge("c1", "caller", "agent")
        await asyncio.to_thread(phone.wait_call_established)
        agent.received()
        await agent.play(AGENT, 2.0)
        await asyncio.sleep(0.2)
        heard_by_agent = rtp_audio(agent.received())
        heard_by_phone = await hang_up(phone, sip)
    assert tones_in(heard_by_agent, [CALLER, AGENT]) == {CALLER}
    assert tones_in(heard_by_phone[8000:], [CALLER, AGENT]) == {AGENT}
    assert call.engine.live_figures().srtp_dropped == 0
