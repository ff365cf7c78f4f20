"""One leg's SRTP (RFC 3711): a sending and a receiving libsrtp session, worked in place.

Both kinds of secure leg use it: a WebRTC app's (keys from the DTLS handshake, webrtc.py) and
a desk phone's or trunk's with SDES (keys from the SDP's `a=crypto` lines, sdes.py). The
cipher is libsrtp's, through `pylibsrtp`; nothing here encrypts anything itself.

libsrtp works in place: the packet path protects and unprotects in the engine's receive
buffer, with no copies and no Python in between (`protect_into` / `unprotect_into`, on a cffi
pointer to the buffer, `pointer()`); pylibsrtp's own calls copy in and out, about half the
cost of a secure packet here (docs/PERFORMANCE.md). When the sessions' libsrtp handles cannot
be reached (another pylibsrtp), the same calls copy through pylibsrtp instead.
"""

from __future__ import annotations

import pylibsrtp
from pylibsrtp._binding import ffi as _ffi
from pylibsrtp._binding import lib as _lib

__all__ = ["AES128_CM_SHA1_32", "AES128_CM_SHA1_80", "TRAILER", "SrtpSessions", "pointer"]

AES128_CM_SHA1_80 = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
AES128_CM_SHA1_32 = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32
# What protecting adds to an RTP packet at most: the longest authentication tag (no MKI).
TRAILER = 16
_REPLAY_WINDOW = 1024  # packets; libsrtp's default 128 is short for a jittery path


def pointer(buffer: bytearray) -> object:
    """The cffi pointer to `buffer` that `protect_into` and `unprotect_into` work on."""
    return _ffi.from_buffer(buffer)


def _session(key: bytes, profile: int, *, inbound: bool) -> tuple[pylibsrtp.Session, object]:
    policy = pylibsrtp.Policy(
        key=key,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND
        if inbound
        else pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=profile,
    )
    policy.allow_repeat_tx = True
    if inbound:
        policy.window_size = _REPLAY_WINDOW
    session = pylibsrtp.Session(policy=policy)
    try:
        context = session._srtp[0]
    except (AttributeError, TypeError):  # another pylibsrtp: its own (copying) calls only
        context = None
    return session, context


class SrtpSessions:
    """A leg's two SRTP directions: `tx` (what we send, our key) and `rx` (what the peer
    sends, its key), one profile (AES_CM_128_HMAC_SHA1_80 or _32). Any SSRC in either
    direction (a peer's SSRC may change; ours is the leg's one outgoing stream).

    The `_into` calls return -1 where the others raise `pylibsrtp.Error`: an authentication
    failure, a replay, a packet too short or too long. They never raise."""

    __slots__ = ("_length", "_rx", "_rx_context", "_tx", "_tx_context", "profile")

    def __init__(self, tx_key: bytes, rx_key: bytes, profile: int = AES128_CM_SHA1_80) -> None:
        self.profile = profile
        self._tx, self._tx_context = _session(tx_key, profile, inbound=False)
        self._rx, self._rx_context = _session(rx_key, profile, inbound=True)
        self._length = _ffi.new("int *")

    def set_receive(self, rx_key: bytes) -> None:
        """The peer's new key (an SDES re-key): a new receiving session; ours goes on."""
        self._rx, self._rx_context = _session(rx_key, self.profile, inbound=True)

    def protect_into(self, buffer: object, size: int) -> int:
        """Protect the RTP packet of `size` bytes at the start of `buffer` (a `pointer()`) in
        place: its new size, or -1 (no room for the tag, or libsrtp refused)."""
        if size + TRAILER > len(buffer):  # type: ignore[arg-type]
            return -1
        context = self._tx_context
        if context is None:
            try:
                data = self._tx.protect(bytes(_ffi.buffer(buffer, size)))
            except (pylibsrtp.Error, ValueError):
                return -1
            _ffi.memmove(buffer, data, len(data))
            return len(data)
        length = self._length
        length[0] = size
        if _lib.srtp_protect(context, buffer, length) != 0:
            return -1
        return int(length[0])

    def unprotect_into(self, buffer: object, size: int) -> int:
        """Unprotect the SRTP packet of `size` bytes at the start of `buffer` in place: the
        plain packet's size, or -1 (authentication failed, a replay, too short)."""
        context = self._rx_context
        if context is None:
            try:
                data = self._rx.unprotect(bytes(_ffi.buffer(buffer, size)))
            except (pylibsrtp.Error, ValueError):
                return -1
            _ffi.memmove(buffer, data, len(data))
            return len(data)
        length = self._length
        length[0] = size
        if _lib.srtp_unprotect(context, buffer, length) != 0:
            return -1
        return int(length[0])

    def protect(self, packet: bytes) -> bytes:
        """The SRTP packet of an RTP packet (a copy); `pylibsrtp.Error` if it cannot be."""
        try:
            return self._tx.protect(packet)
        except ValueError as exc:  # longer than pylibsrtp's buffer
            raise pylibsrtp.Error(str(exc)) from None

    def unprotect(self, packet: bytes) -> bytes:
        """The plain RTP packet (a copy); `pylibsrtp.Error` for one that fails authentication
        or is a replay."""
        try:
            return self._rx.unprotect(packet)
        except ValueError as exc:
            raise pylibsrtp.Error(str(exc)) from None

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        try:
            return self._rx.unprotect_rtcp(packet)
        except ValueError as exc:
            raise pylibsrtp.Error(str(exc)) from None
