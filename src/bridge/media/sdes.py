"""SDES (RFC 4568): SRTP keys in the SDP's `a=crypto` lines, for the SIP legs (sans-I/O).

    a=crypto:<tag> <crypto-suite> inline:<base64 of key || salt>[|<lifetime>][|<MKI>:<length>]
        [<session-params>...]

A desk phone or trunk that encrypts its audio says so in its SDP: an `RTP/SAVP` stream with
`a=crypto` lines (SRTP or nothing), or an `RTP/AVP` stream with `a=crypto` lines (best-effort
SRTP: baresip's `mediaenc=srtp`, Asterisk's and most PBXs' "SRTP if possible"). Each line
carries the offerer's own key; the answerer picks one line (the offerer's order is its
preference) and answers with the same tag and suite and a key of its own. Each side sends with
its own key and receives with the other's.

What is usable here: the suites AES_CM_128_HMAC_SHA1_80 and AES_CM_128_HMAC_SHA1_32 (libsrtp's
through `pylibsrtp`, media/srtp.py), one `inline:` key of exactly 30 bytes (16 of key, 14 of
salt), a lifetime or none (not enforced: a call does not send 2^31 packets), no MKI and no
session parameter but the advisory `WSH=`. A line that is malformed or asks for more is not
usable and is passed over (never an exception but `SdpError` from `parse_crypto`): the body
comes from the network.

`negotiate_srtp` chooses the stream and the key of an offer under the leg's policy
("off" | "optional" | "required", `POLICIES`), `answer_crypto` reads the answer to our offer.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from bridge.calls.media import SRTP_POLICIES
from bridge.media.sdp import (
    RTP_AVP,
    RTP_SAVP,
    MediaDescription,
    Negotiated,
    SdpError,
    SessionDescription,
    negotiate,
)
from bridge.media.srtp import AES128_CM_SHA1_32, AES128_CM_SHA1_80
from bridge.text import ascii_digits

__all__ = [
    "KEY_BYTES",
    "OFFERED_SUITE",
    "POLICIES",
    "SUITES",
    "Crypto",
    "SdesRefused",
    "answer_crypto",
    "check_policy",
    "negotiate_srtp",
    "new_key",
    "offered_crypto",
    "parse_crypto",
    "usable_crypto",
]

# The suites we take, by name (RFC 4568 section 6.2), to the libsrtp profile.
SUITES: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": AES128_CM_SHA1_32,
}
OFFERED_SUITE = "AES_CM_128_HMAC_SHA1_80"  # what our offers carry (every SDES phone takes it)
KEY_BYTES = 30  # master key (16) || master salt (14), for both suites
POLICIES = SRTP_POLICIES
_SUPPORTED = ", ".join(SUITES)


class SdesRefused(ValueError):
    """No stream of the offer can be answered under the policy; the message says why (the SIP
    side answers 488 with it)."""


@dataclass(frozen=True, slots=True)
class Crypto:
    """One usable `a=crypto` line: its tag, its suite (as named in `SUITES`), its key."""

    tag: int
    suite: str
    key: bytes  # master key || master salt, KEY_BYTES

    @property
    def profile(self) -> int:
        """The libsrtp profile of the suite (media/srtp.py)."""
        return SUITES[self.suite]

    @property
    def value(self) -> str:
        """The line's value, after `a=crypto:`."""
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode('ascii')}"

    def __repr__(self) -> str:  # the key stays out of logs
        return f"Crypto(tag={self.tag}, suite={self.suite!r})"


def check_policy(policy: str) -> None:
    """`ValueError` unless `policy` is one of `POLICIES`."""
    if policy not in POLICIES:
        raise ValueError(f"srtp policy {policy!r} is not one of {', '.join(POLICIES)}")


def new_key() -> bytes:
    """A fresh master key and salt (os.urandom): one per sending session, never reused."""
    return os.urandom(KEY_BYTES)


def offered_crypto(key: bytes, tag: int = 1) -> Crypto:
    """Our offer's one `a=crypto` line (AES_CM_128_HMAC_SHA1_80, the suite all SDES peers have)."""
    return Crypto(tag, OFFERED_SUITE, key)


def _lifetime(text: str) -> None:
    base, caret, exponent = text.partition("^")
    if caret:
        if base != "2" or not ascii_digits(exponent) or len(exponent) > 2:
            raise SdpError(f"a=crypto lifetime {text!r} is malformed")
    elif not ascii_digits(text) or len(text) > 20:
        raise SdpError(f"a=crypto lifetime {text!r} is malformed")


def parse_crypto(value: str) -> Crypto:
    """The `Crypto` of an `a=crypto` line's value, or `SdpError` saying why the line is
    malformed or not usable here (see the module doc)."""
    fields = value.split()
    if len(fields) < 3:
        raise SdpError(f"a=crypto:{value[:60]!r}: expected <tag> <suite> <key-params>")
    tag_text, suite_text, key_params = fields[0], fields[1], fields[2]
    if not ascii_digits(tag_text) or len(tag_text) > 9:
        raise SdpError(f"a=crypto tag {tag_text[:20]!r} is not 1 to 9 digits")
    tag = int(tag_text)
    suite = suite_text.upper()
    if suite not in SUITES:
        raise SdpError(f"a=crypto suite {suite_text[:40]!r} is not one we support ({_SUPPORTED})")
    if ";" in key_params:
        # several keys in one line: they would need MKIs to tell them apart (below)
        raise SdpError("a=crypto with several keys is not supported")
    method, colon, key_info = key_params.partition(":")
    if not colon or method.lower() != "inline":
        raise SdpError(f"a=crypto key method {method[:20]!r} is not inline")
    parts = key_info.split("|")
    if len(parts) > 3:
        raise SdpError("a=crypto key parameters are malformed")
    try:
        key = base64.b64decode(parts[0], validate=True)
    except (binascii.Error, ValueError):
        raise SdpError("a=crypto key is not base64") from None
    if len(key) != KEY_BYTES:
        raise SdpError(f"a=crypto key is {len(key)} bytes, {KEY_BYTES} expected for {suite}")
    for extra in parts[1:]:
        if ":" in extra:
            # An MKI: every packet would carry the key's index after the payload. pylibsrtp's
            # policy cannot set one, and a single key per direction needs none: not usable.
            raise SdpError("a=crypto with an MKI is not supported")
        _lifetime(extra)
    for param in fields[3:]:
        # Session parameters change what is protected (UNENCRYPTED_SRTP, UNENCRYPTED_SRTCP,
        # UNAUTHENTICATED_SRTP), how keys are derived (KDR) or need FEC (FEC_ORDER, FEC_KEY):
        # none of them is done here, so such a line is not usable. WSH (a replay window
        # hint) only advises.
        name, _, number = param.partition("=")
        if name.upper() != "WSH" or not ascii_digits(number):
            raise SdpError(f"a=crypto session parameter {param[:30]!r} is not supported")
    return Crypto(tag, suite, key)


def usable_crypto(media: MediaDescription) -> list[Crypto]:
    """The media's usable `a=crypto` lines in their order (the others passed over)."""
    out = []
    for value in media.attribute_values("crypto"):
        if value is None:
            continue
        try:
            out.append(parse_crypto(value))
        except SdpError:
            continue
    return out


def negotiate_srtp(
    offer: SessionDescription, policy: str = "off"
) -> tuple[Negotiated, Crypto | None]:
    """The stream to answer a SIP peer's offer with (`negotiate`'s codec choice), and the
    peer's `a=crypto` line to key SRTP with (None: plain RTP), under the leg's `policy`:

    - an `RTP/SAVP` stream is answered only with SRTP, whatever the policy (a phone that
      insists on SRTP gets it): it needs a usable `a=crypto` line;
    - an `RTP/AVP` stream with usable `a=crypto` lines is answered with SRTP unless the
      policy is "off" (which ignores them), else plain;
    - "required": a stream without a usable `a=crypto` line is passed over.

    The first audio stream (the offer's order) that can be answered so wins. `SdesRefused`
    when none can, saying why."""
    check_policy(policy)

    def usable(media: MediaDescription) -> bool:
        if media.proto == RTP_SAVP or policy == "required":
            return bool(usable_crypto(media))
        return True

    chosen = negotiate(offer, protos=(RTP_AVP, RTP_SAVP), usable=usable)
    if chosen is None:
        anyway = negotiate(offer, protos=(RTP_AVP, RTP_SAVP))
        if anyway is None:
            raise SdesRefused("no PCMU or PCMA audio stream over RTP/AVP or RTP/SAVP in the offer")
        if offer.media[anyway.media_index].proto == RTP_SAVP:
            raise SdesRefused(
                "the offer's RTP/SAVP stream has no SRTP crypto suite we support "
                f"({_SUPPORTED}, one inline key, no MKI)"
            )
        raise SdesRefused(
            f"SRTP is required and the offer has no usable a=crypto line ({_SUPPORTED})"
        )
    media = offer.media[chosen.media_index]
    if media.proto != RTP_SAVP and policy == "off":
        return chosen, None
    found = usable_crypto(media)
    return chosen, (found[0] if found else None)


def answer_crypto(media: MediaDescription, offered: Crypto) -> Crypto | None:
    """The answer's `a=crypto` line for our offered one: our tag and our suite (RFC 4568
    section 5.1.2), its key usable; None when there is none."""
    for crypto in usable_crypto(media):
        if crypto.tag == offered.tag:
            return crypto if crypto.suite == offered.suite else None
    return None
