"""SDP (RFC 4566) offer/answer (RFC 3264) for the audio the bridge anchors.

The bridge never hands one peer's SDP to another: it parses each peer's offer or answer, picks
the codec it will speak with that peer, and writes its own SDP (its media address, one port per
leg). So this module parses what real phones, trunks and SIPp send, negotiates G.711 (the
bridge's codecs on the SIP side) plus telephone-event, and builds offers and answers.

Parsing keeps what the engine needs typed (addresses, ports, payload types, rtpmap, fmtp,
ptime, direction, rtcp-mux) and every attribute raw (ICE, crypto, DTLS fingerprints: the
WebRTC side reads those). Malformed input is an `SdpError` and never another exception, since
the body comes from the network.

Peers of the SIP side negotiate RTP/AVP, or SRTP keyed in the SDP (SDES, RFC 4568): an
`RTP/SAVP` stream, or an `RTP/AVP` one with `a=crypto` lines (best-effort SRTP). The stream is
chosen by `negotiate(..., protos=(RTP_AVP, RTP_SAVP), usable=...)` under the leg's SRTP policy
(media/sdes.py reads and writes the `a=crypto` lines and decides), and `build_offer` /
`build_answer` write the protocol and the `a=crypto` lines they are given. An SAVPF stream
(DTLS-SRTP) from a SIP peer has no usable codec. The WebRTC legs (apps) get
`build_webrtc_offer` and their answers are read with `negotiate(..., protos=(SAVPF,))`
(media/webrtc.py does the transport).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from bridge.text import ascii_digits

__all__ = [
    "DIRECTIONS",
    "RTP_AVP",
    "RTP_SAVP",
    "SAVPF",
    "STATIC_PAYLOAD_TYPES",
    "Connection",
    "MediaDescription",
    "Negotiated",
    "Origin",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "answer_direction",
    "build_answer",
    "build_offer",
    "build_webrtc_offer",
    "negotiate",
    "parse_sdp",
]

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_ANSWER_DIRECTION = {  # RFC 3264 section 6.1
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
RTP_AVP = "RTP/AVP"
RTP_SAVP = "RTP/SAVP"  # SRTP keyed by SDES (a=crypto), from desk phones and trunks
_PLAIN_SIP = (RTP_AVP, RTP_SAVP)  # no ICE: 0.0.0.0 is RFC 2543 hold there
SAVPF = "UDP/TLS/RTP/SAVPF"


class SdpError(ValueError):
    """A body that is not valid SDP (as far as the bridge reads it); the message says why."""


@dataclass(frozen=True, slots=True)
class RtpMap:
    encoding: str  # as written ("PCMU", "telephone-event"); compare case-insensitively
    clock_rate: int
    channels: int = 1


# RFC 3551 table 4: payload types that mean a codec without an rtpmap line (the audio ones).
STATIC_PAYLOAD_TYPES: dict[int, RtpMap] = {
    0: RtpMap("PCMU", 8000),
    3: RtpMap("GSM", 8000),
    4: RtpMap("G723", 8000),
    8: RtpMap("PCMA", 8000),
    9: RtpMap("G722", 8000),
    13: RtpMap("CN", 8000),
    18: RtpMap("G729", 8000),
}
_STATIC_BY_NAME = {"PCMU": 0, "PCMA": 8}  # what build_offer can offer


@dataclass(frozen=True, slots=True)
class Origin:
    username: str
    session_id: str
    version: str
    nettype: str
    addrtype: str
    address: str


@dataclass(frozen=True, slots=True)
class Connection:
    nettype: str  # "IN"
    addrtype: str  # "IP4" or "IP6"
    address: str  # without a multicast /ttl suffix

    @property
    def on_hold(self) -> bool:
        """RFC 2543 hold: 0.0.0.0 says "send me nothing" (RFC 3264 section 8.4)."""
        return self.address in ("0.0.0.0", "::")


Attribute = tuple[str, str | None]  # ("rtpmap", "0 PCMU/8000"), ("rtcp-mux", None)


@dataclass(frozen=True, slots=True)
class MediaDescription:
    media: str  # "audio", "video", "application", ...
    port: int  # 0: a rejected or disabled stream
    proto: str  # "RTP/AVP", "RTP/SAVP", "UDP/TLS/RTP/SAVPF", ...
    formats: tuple[str, ...]  # the m= line's formats as written
    payload_types: tuple[int, ...]  # the same, for RTP protocols (empty otherwise)
    connection: Connection | None  # the media's c=, else the session's
    rtpmap: dict[int, RtpMap] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    ptime: int | None = None
    direction: str = "sendrecv"  # the media's attribute, else the session's, else sendrecv
    rtcp_mux: bool = False
    attributes: tuple[Attribute, ...] = ()  # every a= line of the media, raw, in order

    def codec(self, payload_type: int) -> RtpMap | None:
        """What a payload type means: its rtpmap, else the static assignment, else None."""
        return self.rtpmap.get(payload_type) or STATIC_PAYLOAD_TYPES.get(payload_type)

    def attribute_values(self, name: str) -> list[str | None]:
        """The values of every `a=name` line of the media (raw; None for a flag)."""
        return [value for key, value in self.attributes if key == name]


@dataclass(frozen=True, slots=True)
class SessionDescription:
    origin: Origin
    name: str
    connection: Connection | None  # session level
    media: tuple[MediaDescription, ...]  # every m= line, in order (the answer mirrors them)
    attributes: tuple[Attribute, ...] = ()  # session-level a= lines, raw

    @property
    def audio(self) -> tuple[MediaDescription, ...]:
        return tuple(m for m in self.media if m.media == "audio")


def _number(text: str, what: str, low: int, high: int) -> int:
    # int() would take " 7", "1_000" and non-ASCII digits; SDP numbers are ASCII digits.
    if not ascii_digits(text) or len(text) > 20:
        raise SdpError(f"{what} {text!r} is not a number")
    value = int(text)
    if not low <= value <= high:
        raise SdpError(f"{what} {value} is not in {low}..{high}")
    return value


def _connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"c={value!r}: expected IN IP4|IP6 <address>")
    address = parts[2].split("/", 1)[0]
    if not address:
        raise SdpError(f"c={value!r}: empty address")
    return Connection(parts[0], parts[1], address)


def _origin(value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6:
        raise SdpError(f"o={value!r}: expected 6 fields")
    return Origin(*parts)


def _attribute(value: str) -> Attribute:
    name, sep, rest = value.partition(":")
    if not name:
        raise SdpError(f"a={value!r}: no attribute name")
    return (name, rest if sep else None)


class _MediaBuilder:
    """The lines of one m= section while parsing."""

    def __init__(self, value: str, index: int) -> None:
        parts = value.split()
        if len(parts) < 4:
            raise SdpError(f"m={value!r}: expected <media> <port> <proto> <format>...")
        self.index = index
        self.media, port, self.proto = parts[0], parts[1], parts[2]
        self.port = _number(port.split("/", 1)[0], "port", 0, 65535)
        self.formats = tuple(parts[3:])
        self.is_rtp = "RTP/" in self.proto
        self.payload_types = (
            tuple(_number(f, "payload type", 0, 127) for f in self.formats) if self.is_rtp else ()
        )
        self.connection: Connection | None = None
        self.attributes: list[Attribute] = []

    def build(
        self, session_connection: Connection | None, session_direction: str | None
    ) -> MediaDescription:
        rtpmap: dict[int, RtpMap] = {}
        fmtp: dict[int, str] = {}
        ptime: int | None = None
        direction = session_direction or "sendrecv"
        rtcp_mux = False
        for name, value in self.attributes:
            if name in DIRECTIONS:
                direction = name
            elif name == "rtcp-mux":
                rtcp_mux = True
            elif name == "ptime" and value is not None:
                # some phones write "20.0"; the bridge works in whole milliseconds
                whole = value.strip().split(".", 1)[0]
                ptime = _number(whole, "ptime", 1, 10000)
            elif self.is_rtp and name == "rtpmap" and value is not None:
                pt, codec = _rtpmap(value)
                rtpmap[pt] = codec
            elif self.is_rtp and name == "fmtp" and value is not None:
                pt_text, _, params = value.partition(" ")
                fmtp[_number(pt_text, "fmtp payload type", 0, 127)] = params.strip()
        connection = self.connection or session_connection
        if connection is None and self.port != 0:
            raise SdpError(f"m= line {self.index} has no connection address (c=)")
        return MediaDescription(
            media=self.media,
            port=self.port,
            proto=self.proto,
            formats=self.formats,
            payload_types=self.payload_types,
            connection=connection,
            rtpmap=rtpmap,
            fmtp=fmtp,
            ptime=ptime,
            direction=direction,
            rtcp_mux=rtcp_mux,
            attributes=tuple(self.attributes),
        )


def _rtpmap(value: str) -> tuple[int, RtpMap]:
    pt_text, _, codec = value.strip().partition(" ")
    pt = _number(pt_text, "rtpmap payload type", 0, 127)
    parts = codec.strip().split("/")
    if len(parts) not in (2, 3) or not parts[0]:
        raise SdpError(f"a=rtpmap:{value!r}: expected <pt> <encoding>/<clock>[/<channels>]")
    clock = _number(parts[1], "clock rate", 1, 10_000_000)
    channels = _number(parts[2], "channels", 1, 255) if len(parts) == 3 else 1
    return pt, RtpMap(parts[0], clock, channels)


def parse_sdp(body: str | bytes | bytearray) -> SessionDescription:
    """A session description from an SDP body (CRLF or bare LF lines); `SdpError` if malformed."""
    if not isinstance(body, str):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SdpError(f"not UTF-8: {exc.reason}") from None
    origin: Origin | None = None
    name = ""
    connection: Connection | None = None
    session_attributes: list[Attribute] = []
    attributes = session_attributes  # the current section's (the session's, then each m='s)
    media: list[_MediaBuilder] = []
    current: _MediaBuilder | None = None
    number = 0  # of the line, counting the non-blank ones only
    # (one pass, no intermediate lists: called twice per call on the daemon's loop)
    for raw in body.split("\n"):
        line = raw.rstrip("\r")
        if not line or line.isspace():
            continue
        number += 1
        if number == 1:
            if line.strip() != "v=0":
                raise SdpError("an SDP body starts with v=0")
            continue
        kind = line[0]
        if len(line) < 2 or line[1] != "=" or not ("a" <= kind <= "z"):
            raise SdpError(f"line {number} is not <type>=<value>: {line[:40]!r}")
        value = line[2:].strip()
        if kind == "a":
            attributes.append(_attribute(value))
        elif kind == "m":
            current = _MediaBuilder(value, len(media))
            media.append(current)
            attributes = current.attributes
        elif kind == "c":
            parsed = _connection(value)
            if current is None:
                connection = connection or parsed
            else:
                current.connection = current.connection or parsed
        elif kind == "o" and current is None:
            origin = _origin(value)
        elif kind == "s" and current is None:
            name = value
        elif kind == "v":
            raise SdpError(f"line {number}: a second v= line")
        # t=, b=, i=, u=, e=, p=, k=, r=, z=: nothing the bridge needs
    if number == 0:
        raise SdpError("an SDP body starts with v=0")
    if origin is None:
        raise SdpError("no o= line")
    session_direction = next((n for n, _ in session_attributes if n in DIRECTIONS), None)
    return SessionDescription(
        origin=origin,
        name=name,
        connection=connection,
        media=tuple(m.build(connection, session_direction) for m in media),
        attributes=tuple(session_attributes),
    )


def answer_direction(offered: str) -> str:
    """The direction that answers an offered one (RFC 3264 section 6.1)."""
    return _ANSWER_DIRECTION[offered]


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What the bridge speaks with one peer, from the peer's offer."""

    media_index: int  # which m= line of the offer (the others are rejected in the answer)
    payload_type: int  # the offer's number for the codec
    encoding: str  # "PCMU" or "PCMA"
    clock_rate: int
    telephone_event: int | None  # the offer's telephone-event payload type, if any
    address: str  # where the peer receives (its connection address)
    port: int
    ptime: int | None  # the packet time the peer asked for
    direction: str  # the bridge's direction in the answer
    rtcp_mux: bool  # the peer offered rtcp-mux (answered, so its RTCP comes on the RTP port)
    proto: str = RTP_AVP  # the stream's profile (RTP/SAVP: SRTP keyed by SDES)

    @property
    def sends(self) -> bool:
        """Whether the bridge sends to this peer (not when the peer holds the call)."""
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receives(self) -> bool:
        """Whether the peer sends to the bridge."""
        return self.direction in ("sendrecv", "recvonly")


def _is_g711(codec: RtpMap | None, supported: set[str]) -> bool:
    return (
        codec is not None
        and codec.encoding.upper() in supported
        and codec.clock_rate == 8000
        and codec.channels == 1
    )


def negotiate(
    offer: SessionDescription,
    supported: Iterable[str] = ("PCMU", "PCMA"),
    telephone_event: bool = True,
    protos: Iterable[str] = (RTP_AVP,),
    usable: Callable[[MediaDescription], bool] | None = None,
) -> Negotiated | None:
    """The codec to answer an offer with: in the first audio stream of one of `protos` (port
    not 0) that has one, the first of the offer's payload types the bridge supports (the
    offerer's order is its preference). Static 0/8 count without an rtpmap; dynamic ones by
    rtpmap name (case-insensitive) at 8000 Hz, mono. `usable`, when given, passes over the
    streams it says False of (SDES: an SRTP stream without a key we can use). None: no usable
    codec, the SIP layer answers 488. Also reads an answer to our offer the same way."""
    wanted = {name.upper() for name in supported}
    allowed = set(protos)
    for index, media in enumerate(offer.media):
        if media.media != "audio" or media.port == 0 or media.proto not in allowed:
            continue
        if usable is not None and not usable(media):
            continue
        chosen = next((pt for pt in media.payload_types if _is_g711(media.codec(pt), wanted)), None)
        if chosen is None or media.connection is None:
            continue
        codec = media.codec(chosen)
        assert codec is not None  # _is_g711 checked it
        events = None
        if telephone_event:
            events = next(
                (
                    pt
                    for pt in media.payload_types
                    if (c := media.rtpmap.get(pt)) is not None
                    and c.encoding.lower() == "telephone-event"
                    and c.clock_rate == 8000
                ),
                None,
            )
        offered = media.direction
        # (ICE peers write 0.0.0.0 and port 9 as a placeholder: no hold there)
        if media.connection.on_hold and offered == "sendrecv" and media.proto in _PLAIN_SIP:
            offered = "sendonly"  # RFC 2543 hold: it may send, it wants nothing back
        return Negotiated(
            media_index=index,
            payload_type=chosen,
            encoding=codec.encoding.upper(),
            clock_rate=8000,
            telephone_event=events,
            address=media.connection.address,
            port=media.port,
            ptime=media.ptime,
            direction=answer_direction(offered),
            rtcp_mux=media.rtcp_mux,
            proto=media.proto,
        )
    return None


def _address_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _session_lines(session_id: int, version: int, address: str) -> list[str]:
    kind = _address_type(address)
    return [
        "v=0",
        f"o=- {session_id} {version} IN {kind} {address}",
        "s=-",
        f"c=IN {kind} {address}",
        "t=0 0",
    ]


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")


def _check_proto(proto: str) -> None:
    if proto not in _PLAIN_SIP:
        raise ValueError(f"protocol {proto!r} is not {RTP_AVP} or {RTP_SAVP}")


def build_offer(
    session_id: int,
    version: int,
    address: str,
    port: int,
    codecs: Sequence[str] = ("PCMU", "PCMA"),
    telephone_event_pt: int | None = 101,
    ptime: int = 20,
    direction: str = "sendrecv",
    *,
    proto: str = RTP_AVP,
    crypto: Sequence[str] = (),
) -> str:
    """The bridge's offer: one audio stream with `codecs` (of PCMU, PCMA, in order of
    preference) and telephone-event (unless `telephone_event_pt` is None), CRLF lines.
    `proto` RTP/AVP or RTP/SAVP; `crypto`: the values of its `a=crypto` lines (SDES)."""
    _check_direction(direction)
    _check_proto(proto)
    pts = []
    for name in codecs:
        if name.upper() not in _STATIC_BY_NAME:
            raise ValueError(f"codec {name!r} is not one the bridge offers (PCMU, PCMA)")
        pts.append(_STATIC_BY_NAME[name.upper()])
    if not pts:
        raise ValueError("an offer needs at least one codec")
    if telephone_event_pt is not None and not 96 <= telephone_event_pt <= 127:
        raise ValueError(f"telephone-event payload type {telephone_event_pt} is not dynamic")
    formats = [*pts, *([telephone_event_pt] if telephone_event_pt is not None else [])]
    lines = _session_lines(session_id, version, address)
    lines.append(f"m=audio {port} {proto} {' '.join(map(str, formats))}")
    lines += [f"a=rtpmap:{pt} {STATIC_PAYLOAD_TYPES[pt].encoding}/8000" for pt in pts]
    if telephone_event_pt is not None:
        lines += [
            f"a=rtpmap:{telephone_event_pt} telephone-event/8000",
            f"a=fmtp:{telephone_event_pt} 0-16",
        ]
    lines += [f"a=ptime:{ptime}", f"a={direction}"]
    lines += [f"a=crypto:{value}" for value in crypto]
    return "\r\n".join(lines) + "\r\n"


def build_answer(
    offer_media: Sequence[MediaDescription],
    negotiated: Negotiated,
    address: str,
    port: int,
    session_id: int,
    version: int,
    *,
    ptime: int = 20,
    proto: str = RTP_AVP,
    crypto: Sequence[str] = (),
) -> str:
    """The bridge's answer to an offer (`offer_media`: the offer's `media`, every m= line).

    RFC 3264 section 6: as many m= lines as the offer, in its order; the negotiated stream
    with the one codec and telephone-event, the answered direction, and rtcp-mux when offered;
    every other stream rejected with port 0 (the formats of the offer kept, as the grammar
    needs at least one). `proto`: the negotiated stream's (the offer's, RTP/AVP or RTP/SAVP);
    `crypto`: the values of its `a=crypto` lines (SDES: our key for the tag chosen)."""
    _check_direction(negotiated.direction)
    _check_proto(proto)
    if not 0 <= negotiated.media_index < len(offer_media):
        raise ValueError(f"media index {negotiated.media_index} is not in the offer")
    lines = _session_lines(session_id, version, address)
    for index, media in enumerate(offer_media):
        if index != negotiated.media_index:
            lines.append(f"m={media.media} 0 {media.proto} {' '.join(media.formats)}")
            continue
        pt, events = negotiated.payload_type, negotiated.telephone_event
        formats = [pt, *([events] if events is not None else [])]
        lines.append(f"m=audio {port} {proto} {' '.join(map(str, formats))}")
        lines.append(f"a=rtpmap:{pt} {negotiated.encoding}/{negotiated.clock_rate}")
        if events is not None:
            lines += [f"a=rtpmap:{events} telephone-event/8000", f"a=fmtp:{events} 0-16"]
        lines += [f"a=ptime:{ptime}", f"a={negotiated.direction}"]
        if negotiated.rtcp_mux:
            lines.append("a=rtcp-mux")
        lines += [f"a=crypto:{value}" for value in crypto]
    return "\r\n".join(lines) + "\r\n"


def build_webrtc_offer(
    session_id: int,
    version: int,
    address: str,
    port: int,
    *,
    ice_ufrag: str,
    ice_pwd: str,
    fingerprint: str,
    ssrc: int,
    codecs: Sequence[str] = ("PCMU", "PCMA"),
    telephone_event_pt: int | None = 101,
) -> str:
    """The bridge's offer to a WebRTC app: one `UDP/TLS/RTP/SAVPF` audio stream, bundled and
    rtcp-muxed (browsers require both), ICE-lite with our one host candidate, DTLS `actpass`
    with our certificate's sha-256 fingerprint, G.711 and telephone-event."""
    pts = [_STATIC_BY_NAME[name.upper()] for name in codecs if name.upper() in _STATIC_BY_NAME]
    if not pts:
        raise ValueError("an offer needs at least one codec")
    formats = [*pts, *([telephone_event_pt] if telephone_event_pt is not None else [])]
    kind = _address_type(address)
    lines = [
        "v=0",
        f"o=- {session_id} {version} IN {kind} {address}",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=ice-lite",
        "a=msid-semantic: WMS bridge",
        f"m=audio {port} {SAVPF} {' '.join(map(str, formats))}",
        f"c=IN {kind} {address}",
        f"a=candidate:1 1 udp 2130706431 {address} {port} typ host",
        "a=end-of-candidates",
        f"a=ice-ufrag:{ice_ufrag}",
        f"a=ice-pwd:{ice_pwd}",
        f"a=fingerprint:sha-256 {fingerprint}",
        "a=setup:actpass",
        "a=mid:0",
        "a=sendrecv",
        "a=msid:bridge audio",
        "a=rtcp-mux",
    ]
    lines += [f"a=rtpmap:{pt} {STATIC_PAYLOAD_TYPES[pt].encoding}/8000" for pt in pts]
    if telephone_event_pt is not None:
        lines += [
            f"a=rtpmap:{telephone_event_pt} telephone-event/8000",
            f"a=fmtp:{telephone_event_pt} 0-16",
        ]
    lines += ["a=ptime:20", f"a=ssrc:{ssrc} cname:bridge", f"a=ssrc:{ssrc} msid:bridge audio"]
    return "\r\n".join(lines) + "\r\n"
