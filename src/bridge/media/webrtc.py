"""WebRTC legs of the media engine: ICE-lite and DTLS-SRTP on the leg's one UDP socket.

A browser (or any WebRTC app) is a peer of the engine like a desk phone, on one socket of the
port range: the engine offers `UDP/TLS/RTP/SAVPF` with `a=ice-lite`, its host candidate (the
media address and the leg's port), its DTLS certificate's fingerprint and `a=setup:actpass`;
the app answers `a=setup:active` and drives the rest.

- **ICE-lite** (RFC 8445 section 2.5): a server on a reachable address needs no candidates of
  the app, no checks of its own and no gathering. It answers the app's STUN binding requests
  that carry our ufrag and its password's MESSAGE-INTEGRITY, and sends media to the source of
  the pair the app nominated (USE-CANDIDATE), or of the first valid check until then. The
  app's consent checks (RFC 7675, every few seconds) are answered the same way.
- **DTLS-SRTP** (RFC 5763, 5764): the app's certificate must match the fingerprint of its SDP
  answer, else the leg fails; then the SRTP keys come from the handshake and every RTP packet
  is unprotected on the way in and protected on the way out (`pylibsrtp`). Nothing is decoded:
  with PCMU on both sides a packet is relayed like a plain one (DESIGN.md, "Media").
- The socket carries all three, told apart by the first byte (RFC 7983): 0-3 STUN, 20-63
  DTLS, 128-191 RTP and RTCP (RTCP is muxed, `a=rtcp-mux`, and dropped after unprotecting,
  as on plain legs).

Pieces of aiortc and aioice do the parts they do well (the certificate and its fingerprint,
the SRTP profile's key layout, STUN messages); pyOpenSSL runs the handshake on memory BIOs.
Everything here is sans-I/O: bytes and addresses in, bytes to send out. `MediaEndpoint`
(endpoint.py) owns the socket and the timers.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass

import pylibsrtp
import structlog
from aioice import stun
from aiortc.rtcdtlstransport import (
    SRTP_AES128_CM_SHA1_80,
    SRTPProtectionProfile,
    certificate_digest,
    generate_certificate,
)
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from bridge.media.sdp import MediaDescription, SdpError, SessionDescription
from bridge.media.srtp import SrtpSessions

__all__ = [
    "DtlsIdentity",
    "DtlsSrtp",
    "IceLite",
    "RemoteWebRtc",
    "WebRtcLeg",
    "read_remote",
]

log = structlog.get_logger("bridge.media")

# What we offer and take. AES-GCM would do too where libsrtp has it; the 80-bit one is what
# every browser still offers and keeps the packet path's cost the same for all.
_PROFILES: tuple[SRTPProtectionProfile, ...] = (SRTP_AES128_CM_SHA1_80,)
_DIGESTS = ("sha-256", "sha-384", "sha-512")
_ICE_CHARS = string.ascii_letters + string.digits + "+/"
_MTU = 1200  # DTLS records fit any path a browser uses


class WebRtcError(Exception):
    """The leg cannot go on (the reason is said to the app and logged)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def ice_token(length: int) -> str:
    """A random ICE ufrag or password (RFC 8445 section 5.3: ice-chars)."""
    return "".join(secrets.choice(_ICE_CHARS) for _ in range(length))


# -- the app's answer ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RemoteWebRtc:
    """What the app's SDP answer says of its transport."""

    ufrag: str
    pwd: str
    fingerprints: tuple[tuple[str, str], ...]  # (algorithm, value), the algorithms we check
    setup: str  # "active": the app starts the handshake (we are its server); "passive"


def read_remote(description: SessionDescription, media: MediaDescription) -> RemoteWebRtc:
    """The ICE credentials, DTLS fingerprints and role of an answer (media level first, then
    session level, as RFC 8839 and 8842 allow). `SdpError` when one is missing or malformed."""

    def values(name: str) -> list[str]:
        found = [v for v in media.attribute_values(name) if v]
        if not found:
            found = [v for k, v in description.attributes if k == name and v]
        return found

    ufrag = next(iter(values("ice-ufrag")), None)
    pwd = next(iter(values("ice-pwd")), None)
    if not ufrag or not 4 <= len(ufrag) <= 256 or not all(c in _ICE_CHARS for c in ufrag):
        raise SdpError("the answer has no valid a=ice-ufrag")
    if not pwd or not 22 <= len(pwd) <= 256 or not all(c in _ICE_CHARS for c in pwd):
        raise SdpError("the answer has no valid a=ice-pwd")
    fingerprints = []
    for value in values("fingerprint"):
        algorithm, _, digest = value.partition(" ")
        algorithm = algorithm.lower()
        digest = digest.strip().upper()
        if algorithm in _DIGESTS and digest:
            fingerprints.append((algorithm, digest))
    if not fingerprints:
        raise SdpError("the answer has no a=fingerprint of sha-256, sha-384 or sha-512")
    setup = next(iter(values("setup")), "active").lower()
    if setup not in ("active", "passive"):
        raise SdpError(f"a=setup:{setup} cannot answer a=setup:actpass")
    return RemoteWebRtc(ufrag, pwd, tuple(fingerprints), setup)


def check_candidates(media: MediaDescription) -> None:
    """An answer's `a=candidate` lines must parse (ICE-lite does not need them: the app's
    checks come to us); a malformed one is an error of the answer, said to the app."""
    for value in media.attribute_values("candidate"):
        fields = (value or "").split()
        if len(fields) < 8 or fields[6] != "typ":
            raise SdpError(f"malformed a=candidate: {value!r}")
        try:
            component, priority, port = int(fields[1]), int(fields[3]), int(fields[5])
        except ValueError:
            raise SdpError(f"malformed a=candidate: {value!r}") from None
        if not (1 <= component <= 256 and 0 <= priority < 2**32 and 0 <= port <= 65535):
            raise SdpError(f"malformed a=candidate: {value!r}")


# -- DTLS ---------------------------------------------------------------------------------------
class DtlsIdentity:
    """The engine's DTLS certificate (one for all its legs, as a browser has one per peer
    connection) and the SSL context built on it."""

    def __init__(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        self._certificate = generate_certificate(key)
        self.fingerprint = certificate_digest(self._certificate, "sha-256")
        context = SSL.Context(SSL.DTLS_METHOD)
        # Any certificate passes OpenSSL's check: the one that counts is the answer's
        # fingerprint, compared once the handshake is done.
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: True)
        context.use_certificate(self._certificate)
        context.use_privatekey(key)
        context.set_cipher_list(
            b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
            b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-GCM-SHA256"
        )
        context.set_tlsext_use_srtp(b":".join(p.openssl_profile for p in _PROFILES))
        self.context = context


class DtlsSrtp:
    """One leg's DTLS handshake and, once it is done, its SRTP sessions (sans-I/O)."""

    def __init__(
        self, identity: DtlsIdentity, remote: RemoteWebRtc, *, server: bool | None = None
    ) -> None:
        self.remote = remote
        self.server = remote.setup == "active" if server is None else server
        self._ssl = SSL.Connection(identity.context, None)
        self._ssl.set_ciphertext_mtu(_MTU)
        if self.server:
            self._ssl.set_accept_state()
        else:
            self._ssl.set_connect_state()
        self.connected = False
        self.failed: str | None = None
        self.srtp: SrtpSessions | None = None  # once the handshake agreed the keys

    def start(self) -> list[bytes]:
        """The client's first flight (nothing for a server: it waits for the ClientHello)."""
        return [] if self.server else self._handshake()

    def receive(self, record: bytes) -> list[bytes]:
        """A DTLS datagram from the app: what to send back."""
        if self.failed is not None:
            return []
        try:
            self._ssl.bio_write(record)
        except SSL.Error:
            return []
        if not self.connected:
            return self._handshake()
        try:  # after the handshake: an alert (close_notify) or a retransmitted flight
            self._ssl.recv(1500)
        except SSL.ZeroReturnError:
            self.failed = "the app closed DTLS"
        except SSL.Error:
            pass
        return self._outgoing()

    def timeout(self) -> float | None:
        """Seconds until a handshake flight must be sent again, None when nothing waits."""
        if self.connected or self.failed is not None:
            return None
        return self._ssl.DTLSv1_get_timeout()

    def on_timeout(self) -> list[bytes]:
        if self.connected or self.failed is not None:
            return []
        self._ssl.DTLSv1_handle_timeout()
        return self._outgoing()

    def _handshake(self) -> list[bytes]:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            return self._outgoing()
        except SSL.Error as exc:
            self.failed = f"the DTLS handshake failed: {_ssl_reason(exc)}"
            return self._outgoing()
        out = self._outgoing()
        self._established()
        return out

    def _established(self) -> None:
        certificate = self._ssl.get_peer_certificate(as_cryptography=True)
        if certificate is None:
            self.failed = "the app sent no DTLS certificate"
            return
        for algorithm, value in self.remote.fingerprints:
            if certificate_digest(certificate, algorithm) != value:
                self.failed = "the app's DTLS certificate does not match its SDP fingerprint"
                return
        selected = self._ssl.get_selected_srtp_profile()
        profile = next((p for p in _PROFILES if p.openssl_profile == selected), None)
        if profile is None:
            self.failed = "no SRTP profile was agreed in the DTLS handshake"
            return
        material = self._ssl.export_keying_material(
            b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length)
        )
        # RFC 5764 section 4.2: the client's key first, then the server's
        ours, theirs = (1, 0) if self.server else (0, 1)
        self.srtp = SrtpSessions(
            profile.get_key_and_salt(material, ours),
            profile.get_key_and_salt(material, theirs),
            profile.libsrtp_profile,
        )
        self.connected = True

    def _outgoing(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self._ssl.bio_read(1500))
            except SSL.Error:  # WantReadError: nothing more to send
                return out

    # The SRTP of the leg, once connected (`srtp`: the relay works on it in place)
    def protect(self, packet: bytes) -> bytes:
        assert self.srtp is not None
        return self.srtp.protect(packet)

    def unprotect(self, packet: bytes) -> bytes:
        """The plain RTP packet; `pylibsrtp.Error` for one that fails authentication."""
        assert self.srtp is not None
        return self.srtp.unprotect(packet)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        assert self.srtp is not None
        return self.srtp.unprotect_rtcp(packet)


def _ssl_reason(exc: SSL.Error) -> str:
    try:
        return str(exc.args[0][0][2])
    except (IndexError, TypeError):
        return str(exc) or type(exc).__name__


# -- ICE-lite -----------------------------------------------------------------------------------
class IceLite:
    """Answers the app's binding requests for our ufrag, and says which address it chose."""

    def __init__(self, ufrag: str | None = None, pwd: str | None = None) -> None:
        self.ufrag = ufrag or ice_token(8)
        self.pwd = pwd or ice_token(24)
        self._key = self.pwd.encode()
        self.selected: tuple[str, int] | None = None  # where media goes
        self.nominated = False
        self.rejected = 0  # requests that were not for us or failed their integrity check

    def handle(self, data: bytes, source: tuple[str, int]) -> bytes | None:
        """The response to a STUN message from `source` (None: nothing to answer)."""
        try:
            request = stun.parse_message(data)
        except ValueError:
            self.rejected += 1
            return None
        if request.message_class != stun.Class.REQUEST:
            return None  # a response or indication: a lite agent sends no requests
        if request.message_method != stun.Method.BINDING:
            return self._error(request, source, 400, "Bad Request")
        username = request.attributes.get("USERNAME")
        if "MESSAGE-INTEGRITY" not in request.attributes or not isinstance(username, str):
            return self._error(request, source, 400, "Bad Request")
        if username.partition(":")[0] != self.ufrag:
            self.rejected += 1
            return self._error(request, source, 401, "Unauthorized")
        if not request.check_message_integrity(self._key):
            self.rejected += 1
            return self._error(request, source, 401, "Unauthorized")
        if "ICE-CONTROLLED" in request.attributes:
            # both sides controlled cannot be: we are lite, the app must control (RFC 8445
            # section 7.3.1.1); it switches role on a 487
            return self._error(request, source, 487, "Role Conflict")
        if "USE-CANDIDATE" in request.attributes:
            self.selected = source
            self.nominated = True
        elif self.selected is None:
            self.selected = source
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = source
        response.add_message_integrity(self._key)
        return bytes(response)

    def _error(
        self, request: stun.Message, source: tuple[str, int], code: int, reason: str
    ) -> bytes:
        response = stun.Message(
            message_method=request.message_method,
            message_class=stun.Class.ERROR,
            transaction_id=request.transaction_id,
        )
        response.attributes["ERROR-CODE"] = (code, reason)
        if code == 401:  # no integrity with a key the sender does not share
            response.add_fingerprint()
        else:
            response.add_message_integrity(self._key)
        return bytes(response)


# -- one leg ------------------------------------------------------------------------------------
class WebRtcLeg:
    """A leg's ICE-lite agent and DTLS-SRTP, fed the datagrams of its socket (sans-I/O).

    `receive` returns the plain RTP packet for the engine (or None) and fills `outgoing` with
    (datagram, address) pairs to send; `failed` says why the leg cannot go on."""

    def __init__(self, identity: DtlsIdentity) -> None:
        self.identity = identity
        self.ice = IceLite()
        self.dtls: DtlsSrtp | None = None
        self.outgoing: list[tuple[bytes, tuple[str, int]]] = []
        self.failed: str | None = None
        self.dropped = 0  # datagrams of no use: before the answer, from elsewhere, bad SRTP
        self._early: list[tuple[bytes, tuple[str, int]]] = []  # DTLS before the answer
        self._unsent: list[bytes] = []  # our DTLS before the app's first check

    @property
    def connected(self) -> bool:
        return self.dtls is not None and self.dtls.connected and self.failed is None

    @property
    def remote(self) -> tuple[str, int] | None:
        return self.ice.selected

    def set_remote(self, remote: RemoteWebRtc) -> None:
        """The app's answer: start DTLS (as its server, or its client when it said passive)."""
        self.dtls = DtlsSrtp(self.identity, remote)
        self._send_dtls(self.dtls.start())
        early, self._early = self._early, []
        for record, source in early:
            self._dtls_from(record, source)

    def receive(self, data: bytes, source: tuple[str, int]) -> bytes | None:
        if not data:
            return None
        first = data[0]
        if first < 4:
            response = self.ice.handle(data, source)
            if response is not None:
                self.outgoing.append((response, source))
            if self._unsent and self.ice.selected is not None:
                unsent, self._unsent = self._unsent, []
                self._send_dtls(unsent)
            return None
        if source != self.ice.selected:
            self.dropped += 1  # only the pair the app checked carries DTLS and media
            return None
        if 19 < first < 64:
            if self.dtls is None:
                if len(self._early) < 8:  # the ClientHello can beat the answer here
                    self._early.append((data, source))
                return None
            self._dtls_from(data, source)
            return None
        if 127 < first < 192 and self.connected:
            assert self.dtls is not None
            try:
                if 191 < data[1] < 224:  # RTCP (payload types 200-223, RFC 5761)
                    self.dtls.unprotect_rtcp(data)
                    return None
                return self.dtls.unprotect(data)
            except pylibsrtp.Error:
                self.dropped += 1
                return None
        self.dropped += 1
        return None

    def protect(self, packet: bytes) -> bytes | None:
        """The SRTP packet to send, None before the keys are there."""
        if not self.connected:
            return None
        assert self.dtls is not None
        return self.dtls.protect(packet)

    def timeout(self) -> float | None:
        return self.dtls.timeout() if self.dtls is not None else None

    def on_timeout(self) -> None:
        if self.dtls is not None:
            self._send_dtls(self.dtls.on_timeout())

    def _dtls_from(self, record: bytes, source: tuple[str, int]) -> None:
        assert self.dtls is not None
        self._send_dtls(self.dtls.receive(record))
        if self.dtls.failed is not None and self.failed is None:
            self.failed = self.dtls.failed

    def _send_dtls(self, records: Iterable[bytes]) -> None:
        target = self.ice.selected
        if target is None:  # our client flight before the app's first check: after it
            self._unsent.extend(records)
            return
        self.outgoing.extend((record, target) for record in records)
