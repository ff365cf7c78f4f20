"""SIP digest authentication for a registrar / UAS, sans-I/O.

RFC 3261 §22 with RFC 2617 (MD5, `qop=auth`, RFC 2069 compatibility), RFC 7616 and RFC 8760
(SHA-256, the `-sess` variants). Nothing here reads a clock or a socket: `now` is passed in.

A registrar uses it like this::

    creds = parse_auth_header(value)          # None: not Digest -> challenge; DigestError -> 400
    state = issuer.check(creds.nonce, now)
    result = verify(creds, "REGISTER", user.sip.ha1_md5, user.sip.ha1_sha256, realm, state,
                    nonce_counts=counts)
    # OK -> proceed; STALE / REPLAY -> 401 with challenges(..., stale=True);
    # BAD_CREDENTIALS -> 401 with fresh challenges and FailureTracker.record_failure;
    # INVALID_NONCE (say, issued before a restart with a new secret), REALM_MISMATCH,
    # UNKNOWN_ALGORITHM -> 401 with fresh challenges.

Nonces are stateless: an issue time and a MAC (keyed BLAKE2s) under a server secret, so any
process that holds the secret can check them. Replay of a nonce count needs memory;
`NonceCounts` keeps a bounded amount of it, per process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from bridge.sip.ids import random_bytes

MAX_HEADER_LENGTH = 8192
_MAX_PARAMS = 64


class DigestError(ValueError):
    """A Digest credentials header that does not follow the grammar (answer 400)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Algorithm(StrEnum):
    MD5 = "MD5"
    MD5_SESS = "MD5-sess"
    SHA256 = "SHA-256"
    SHA256_SESS = "SHA-256-sess"


class NonceStatus(StrEnum):
    OK = "ok"
    STALE = "stale"
    INVALID = "invalid"


class AuthResult(StrEnum):
    OK = "ok"
    STALE = "stale"  # right password, nonce too old: re-challenge with stale=true
    BAD_CREDENTIALS = "bad_credentials"
    UNKNOWN_ALGORITHM = "unknown_algorithm"  # unsupported, or the user has no HA1 for it
    REALM_MISMATCH = "realm_mismatch"
    INVALID_NONCE = "invalid_nonce"  # not one of ours (or from a retired secret)
    REPLAY = "replay"  # right password, nc not above the last one seen: re-challenge stale=true


def _utf8(text: str) -> bytes:
    # surrogateescape gives back the exact bytes a SIP parser decoded that way, so a
    # non-UTF-8 username hashes as the client hashed it.
    return text.encode("utf-8", "surrogateescape")


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_HASHES: dict[Algorithm, Callable[[bytes], str]] = {
    Algorithm.MD5: _md5,
    Algorithm.MD5_SESS: _md5,
    Algorithm.SHA256: _sha256,
    Algorithm.SHA256_SESS: _sha256,
}
_SESS = frozenset({Algorithm.MD5_SESS, Algorithm.SHA256_SESS})
_BASE = {Algorithm.MD5_SESS: Algorithm.MD5, Algorithm.SHA256_SESS: Algorithm.SHA256}


def base_algorithm(algorithm: Algorithm) -> Algorithm:
    """MD5 for MD5-sess, SHA-256 for SHA-256-sess: the hash (and the HA1) it uses."""
    return _BASE.get(algorithm, algorithm)


def held_ha1(algorithm: Algorithm, ha1_md5: str | None, ha1_sha256: str | None) -> str | None:
    """The stored HA1 an answer with `algorithm` is checked against, if the user has it."""
    return ha1_sha256 if base_algorithm(algorithm) is Algorithm.SHA256 else ha1_md5


_HEX_LENGTH = {a: len(_HASHES[a](b"")) for a in Algorithm}
# Algorithm tokens are matched case-insensitively; clients vary ("md5", "SHA-256-SESS").
_BY_LOWER = {a.value.lower(): a for a in Algorithm}


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """The parameters of `Authorization: Digest ...`, unquoted.

    `algorithm` is the canonical spelling of a known algorithm (see `Algorithm`) or the token
    as sent for an unknown one (which `verify` answers with UNKNOWN_ALGORITHM). `nc` and `qop`
    are kept as sent, because the client hashed exactly those characters."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = Algorithm.MD5.value
    cnonce: str | None = None
    nc: str | None = None
    qop: str | None = None
    opaque: str | None = None

    @property
    def nc_value(self) -> int | None:
        return None if self.nc is None else int(self.nc, 16)

    @property
    def known_algorithm(self) -> Algorithm | None:
        return _BY_LOWER.get(self.algorithm.lower())


# --- parsing -------------------------------------------------------------------------------

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
# LWS = [*WSP CRLF] 1*WSP (RFC 3261 §25.1); a fold means one space.
_FOLD = re.compile(r"[ \t]*(?:\r\n|\n|\r)[ \t]+")
_HEX = re.compile(r"[0-9a-fA-F]+")
_NC = re.compile(r"[0-9a-fA-F]{8}")


# The common, well-formed case in one regex per parameter: `name = "quoted"` or `name = token`,
# then a comma or the end. Anything else (empty list elements, controls, bad escapes...) falls
# back to the character scanner, which also names the fault.
_TOKEN_RE = r"[A-Za-z0-9\-.!%*_+`'~]+"
_PARAM_RE = re.compile(
    r"[ \t]*(" + _TOKEN_RE + r")[ \t]*=[ \t]*"
    r'(?:"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*)"|(' + _TOKEN_RE + r"))"
    r"[ \t]*(?:,|$)"
)
# The strict subset of _PARAM_RE that phones send: one optional space before a name, none
# around `=`, a quoted value without escapes. What it takes, _PARAM_RE takes the same way.
_STRICT_PARAM_RE = re.compile(
    r" ?(" + _TOKEN_RE + r')=(?:"([^"\\\x00-\x08\x0a-\x1f\x7f]*)"|(' + _TOKEN_RE + r"))(?:,|$)"
)
_QUOTED_PAIR = re.compile(r"\\(.)")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _is_control(ch: str) -> bool:
    # Tabs are ordinary whitespace; other C0 controls and DEL never belong in a value we
    # hash or log (RFC 3261 qdtext excludes them; we also refuse them as quoted-pairs).
    return (ch < " " and ch != "\t") or ch == "\x7f"


class _Scanner:
    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_ws(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        self.pos = pos

    def token(self) -> str:
        text, start = self.text, self.pos
        pos = start
        while pos < len(text) and text[pos] in _TOKEN_CHARS:
            pos += 1
        self.pos = pos
        return text[start:pos]

    def quoted(self) -> str:
        text = self.text
        pos = self.pos + 1  # past the opening quote
        out: list[str] = []
        while pos < len(text):
            ch = text[pos]
            if ch == '"':
                self.pos = pos + 1
                return "".join(out)
            if ch == "\\":
                pos += 1
                if pos >= len(text):
                    break
                ch = text[pos]
            if _is_control(ch):
                raise DigestError("control character in a quoted string")
            out.append(ch)
            pos += 1
        raise DigestError("unterminated quoted string")


def parse_auth_header(value: str) -> DigestCredentials | None:
    """Parse an Authorization / Proxy-Authorization value.

    Returns None when the scheme is not Digest (the caller challenges, RFC 4475 regaut01);
    raises DigestError when a Digest value is malformed. Never raises anything else."""
    if len(value) > MAX_HEADER_LENGTH:
        raise DigestError("header value too long")
    text = value.strip(" \t\r\n")
    if "\r" in text or "\n" in text:  # (the parser unfolds header lines: rarely true here)
        text = _FOLD.sub(" ", text)
        if "\r" in text or "\n" in text:
            raise DigestError("line break in header value")
    scan = _Scanner(text)
    scheme = scan.token()
    if not scheme:
        raise DigestError("no auth scheme")
    if scheme.lower() != "digest":
        return None
    if not scan.at_end() and scan.peek() not in " \t":
        raise DigestError("no space after Digest")
    params = _params_fast(text, scan.pos, _STRICT_PARAM_RE)
    if params is None:
        params = _params_fast(text, scan.pos)
    return _credentials(params if params is not None else _params(scan))


def _params_fast(
    text: str, pos: int, pattern: re.Pattern[str] = _PARAM_RE
) -> dict[str, str] | None:
    """The parameters when every one matches `pattern` (the general regex, or the strict one
    for what phones send: half as costly), else None."""
    params: dict[str, str] = {}
    end = len(text)
    match_at = pattern.match
    while pos < end:
        match = match_at(text, pos)
        if match is None:
            return None
        name, quoted, token = match.groups()
        name = name.lower()
        if name in params or len(params) >= _MAX_PARAMS:
            return None
        if quoted is None:
            params[name] = token
        else:
            params[name] = _QUOTED_PAIR.sub(r"\1", quoted) if "\\" in quoted else quoted
        pos = match.end()
    return params or None


def _params(scan: _Scanner) -> dict[str, str]:
    params: dict[str, str] = {}
    while True:
        scan.skip_ws()
        if scan.peek() == ",":  # empty list elements are tolerated, as RFC 7230 §7 asks
            scan.pos += 1
            continue
        if scan.at_end():
            break
        name = scan.token().lower()
        if not name:
            raise DigestError("expected a parameter name")
        scan.skip_ws()
        if scan.peek() != "=":
            raise DigestError(f"expected '=' after {name}")
        scan.pos += 1
        scan.skip_ws()
        if scan.peek() == '"':
            param_value = scan.quoted()
        else:
            param_value = scan.token()
            if not param_value:
                raise DigestError(f"no value for {name}")
        if name in params:
            raise DigestError(f"duplicate parameter {name}")
        if len(params) >= _MAX_PARAMS:
            raise DigestError("too many parameters")
        params[name] = param_value
        scan.skip_ws()
        if scan.at_end():
            break
        if scan.peek() != ",":
            raise DigestError(f"expected ',' after {name}")
        scan.pos += 1
    if not params:
        raise DigestError("no parameters")
    return params


def _ext_value(raw: str) -> str:
    """RFC 8187 ext-value (`UTF-8''percent-encoded`), as RFC 7616 `username*` uses it."""
    parts = raw.split("'")
    if len(parts) != 3 or parts[0].lower() != "utf-8":
        raise DigestError("username* must be UTF-8''<percent-encoded>")
    encoded = parts[2]
    out = bytearray()
    i = 0
    while i < len(encoded):
        ch = encoded[i]
        if ch == "%":
            pair = encoded[i + 1 : i + 3]
            if len(pair) != 2 or not _HEX.fullmatch(pair):
                raise DigestError("bad percent-encoding in username*")
            out.append(int(pair, 16))
            i += 3
        else:
            out += ch.encode("ascii")  # a token: ASCII only
            i += 1
    try:
        decoded = out.decode("utf-8")
    except UnicodeDecodeError:
        raise DigestError("username* is not UTF-8") from None
    if any(_is_control(ch) for ch in decoded):
        raise DigestError("control character in username*")
    return decoded


def _credentials(params: dict[str, str]) -> DigestCredentials:
    if "username*" in params:
        if "username" in params:
            raise DigestError("both username and username*")
        params["username"] = _ext_value(params.pop("username*"))
    for required in ("username", "realm", "nonce", "uri", "response"):
        if required not in params:
            raise DigestError(f"missing {required}")
    for nonempty in ("username", "uri"):
        if not params[nonempty]:
            raise DigestError(f"empty {nonempty}")
    # We never offer userhash (RFC 7616 §3.4.4), so a hashed username cannot be looked up.
    if params.get("userhash", "false").lower() == "true":
        raise DigestError("userhash is not supported")

    raw_algorithm = params.get("algorithm", Algorithm.MD5.value)
    known = _BY_LOWER.get(raw_algorithm.lower())
    algorithm = known.value if known is not None else raw_algorithm

    response = params["response"]
    if not _HEX.fullmatch(response):
        raise DigestError("response is not hex")
    response = response.lower()
    if known is not None and len(response) != _HEX_LENGTH[known]:
        raise DigestError(f"response has the wrong length for {algorithm}")

    qop = params.get("qop")
    cnonce = params.get("cnonce")
    nc = params.get("nc")
    if qop is not None:
        if qop.lower() not in ("auth", "auth-int"):
            raise DigestError("bad qop")
        if not cnonce:
            raise DigestError("qop without cnonce")
        if nc is None or not _NC.fullmatch(nc):
            raise DigestError("nc must be 8 hex digits")
    else:
        # RFC 2617 §3.2.2: cnonce and nc MUST NOT be sent without qop.
        if cnonce is not None or nc is not None:
            raise DigestError("cnonce or nc without qop")
        # RFC 7616 §3.4: qop is mandatory there; only RFC 2069 MD5 clients may omit it.
        if known is not Algorithm.MD5 and known is not None:
            raise DigestError(f"{algorithm} requires qop")

    for name, text in params.items():
        if text.isascii():  # (nearly always: no encoding needed to know it encodes)
            continue
        try:
            _utf8(text)
        except UnicodeEncodeError:
            raise DigestError(f"{name} is not text") from None

    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=response,
        algorithm=algorithm,
        cnonce=cnonce,
        nc=nc,
        qop=qop,
        opaque=params.get("opaque"),
    )


# --- challenges ----------------------------------------------------------------------------


def _quote(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("control character in a challenge parameter")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenges(
    realm: str,
    nonce: str,
    stale: bool = False,
    opaque: str | None = None,
    *,
    algorithms: Sequence[Algorithm] = (Algorithm.SHA256, Algorithm.MD5),
) -> list[str]:
    """WWW-Authenticate / Proxy-Authenticate values, one per algorithm, preferred first.

    RFC 8760 §2.4: offer SHA-256 and MD5, SHA-256 first; clients pick the first they know.
    Pass `algorithms` to offer fewer (say, only those the user has an HA1 for)."""
    if not algorithms:
        raise ValueError("offer at least one algorithm")
    head, tails = _challenge_template(realm, opaque, tuple(algorithms), stale)
    # Our own nonces are base64url: nothing to escape (any other text is quoted properly).
    quoted = f'"{nonce}"' if _NONCE_RE.fullmatch(nonce) else _quote(nonce)
    return [f"{head}{quoted}{tail}" for tail in tails]


@lru_cache(maxsize=64)
def _challenge_template(
    realm: str, opaque: str | None, algorithms: tuple[Algorithm, ...], stale: bool
) -> tuple[str, tuple[str, ...]]:
    """What a challenge holds besides its nonce: the same for every REGISTER of a realm."""
    extra = f", opaque={_quote(opaque)}" if opaque is not None else ""
    tail = ', qop="auth"' + (", stale=true" if stale else "")
    return f"Digest realm={_quote(realm)}, nonce=", tuple(
        f"{extra}, algorithm={Algorithm(a).value}{tail}" for a in algorithms
    )


# --- nonces --------------------------------------------------------------------------------

_NONCE_DOMAIN = b"bridge-sip-nonce-v1\x00"
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, unpadded base64url
_TIME = struct.Struct(">q")  # issue time, integer milliseconds
_SALT_BYTES = 8
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_MAC_BYTES = 16


def _decode_nonce(nonce: str) -> tuple[bytes, bytes] | None:
    """(signed part, mac), or None when the text is not in our format at all."""
    if not _NONCE_RE.fullmatch(nonce):
        return None
    raw = base64.urlsafe_b64decode(nonce + "=")
    # Only the canonical spelling: the same bytes must have exactly one nonce string, since
    # NonceCounts keys on the string.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != nonce:
        return None
    signed_len = _TIME.size + _SALT_BYTES
    return raw[:signed_len], raw[signed_len:]


def _issued_at(signed: bytes) -> float:
    return _TIME.unpack_from(signed)[0] / 1000.0


def _mac_key(secret: bytes) -> bytes:
    """The nonce MAC's key for a configured secret (of any length: BLAKE2s takes 32 bytes)."""
    return hashlib.sha256(_NONCE_DOMAIN + secret).digest()


def _mac(key: bytes, signed: bytes) -> bytes:
    # Keyed BLAKE2s (a MAC by design, RFC 7693): a third of the cost of an OpenSSL
    # HMAC-SHA256, once per REGISTER challenged.
    return hashlib.blake2s(signed, digest_size=_MAC_BYTES, key=key).digest()


class NonceIssuer:
    """Stateless nonces: base64url(issue time ms | 8 random bytes | keyed BLAKE2s, 128 bits).

    Every process with the secret can check a nonce without storage. `now` must come from a
    clock all those processes share (wall time), since it is compared with the issue time.
    `previous_secrets` are still accepted by `check` so a secret can be rotated without
    failing the nonces already out."""

    def __init__(
        self,
        secret: bytes,
        lifetime: float,
        *,
        previous_secrets: Sequence[bytes] = (),
        max_clock_skew: float = 5.0,
        token_bytes: Callable[[int], bytes] = random_bytes,
        recent: int = 4096,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the nonce secret needs at least 16 bytes")
        if not lifetime > 0:
            raise ValueError("lifetime must be positive")
        self._keys = tuple(_mac_key(s) for s in (secret, *previous_secrets))
        self.lifetime = float(lifetime)
        self._skew = float(max_clock_skew)
        self._token_bytes = token_bytes
        # The nonces this issuer gave out lately -> issue time: most come back within seconds
        # (the phone's REGISTER with credentials), and a hit needs no decoding and no MAC.
        # Anything else (another instance's nonce, an evicted one) is checked by its MAC.
        # (An OrderedDict: dropping a plain dict's first key makes the next lookup of "the
        # first key" skip every slot deleted before it.)
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._recent_max = recent

    def issue(self, now: float) -> str:
        if not math.isfinite(now):
            raise ValueError("now must be finite")
        salt = self._token_bytes(_SALT_BYTES)
        if len(salt) != _SALT_BYTES:
            raise ValueError("token_bytes returned the wrong length")
        issued_ms = math.floor(now * 1000)
        signed = _TIME.pack(issued_ms) + salt
        raw = signed + _mac(self._keys[0], signed)
        # 32 bytes: 43 base64 characters and one '=' of padding, dropped.
        nonce = binascii.b2a_base64(raw, newline=False).translate(_URLSAFE)[:-1].decode("ascii")
        recent = self._recent
        if len(recent) >= self._recent_max:
            recent.popitem(last=False)  # the oldest
        recent[nonce] = issued_ms / 1000.0  # as _issued_at(signed) reads it back
        return nonce

    def check(self, nonce: str, now: float) -> NonceStatus:
        """OK, STALE (authentic but older than `lifetime`) or INVALID (not ours)."""
        issued = self._recent.get(nonce)
        if issued is None:
            decoded = _decode_nonce(nonce)
            if decoded is None:
                return NonceStatus.INVALID
            signed, mac = decoded
            if not any(hmac.compare_digest(mac, _mac(key, signed)) for key in self._keys):
                return NonceStatus.INVALID
            issued = _issued_at(signed)
        age = now - issued
        if age < -self._skew:
            # Authentic but from the future: a clock went wrong somewhere; do not trust it.
            return NonceStatus.INVALID
        if age > self.lifetime:
            return NonceStatus.STALE
        return NonceStatus.OK


class NonceCounts:
    """Replay memory: the highest `nc` accepted per nonce, for at most `max_nonces` nonces.

    When full, the entry first seen longest ago is evicted and its nonce's issue time raises
    a watermark: any nonce issued at or before the watermark that is not remembered is
    refused, since it may be one that was evicted. So eviction never lets a replay through;
    it only costs a client whose nonce was forgotten one more 401 (stale=true) round trip.
    Size it above the number of nonces in use within one nonce lifetime. Memory is per
    process: with several instances, a replay sent to another instance is not caught.

    Only record counts for requests whose response verified, or anyone could burn a
    client's counts; `verify(..., nonce_counts=...)` does exactly that."""

    def __init__(self, max_nonces: int = 10_000) -> None:
        if max_nonces < 1:
            raise ValueError("max_nonces must be at least 1")
        self._max = max_nonces
        self._seen: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._watermark = -math.inf

    def __len__(self) -> int:
        return len(self._seen)

    def accept(self, nonce: str, nc: int) -> bool:
        """Record `nc` for `nonce`; False when it is not above the last one (a replay)."""
        entry = self._seen.get(nonce)
        if entry is not None:
            highest, issued = entry
            if nc <= highest:
                return False
            self._seen[nonce] = (nc, issued)
            return True
        decoded = _decode_nonce(nonce)
        if decoded is None:
            return False
        issued = _issued_at(decoded[0])
        if issued <= self._watermark:
            return False
        self._seen[nonce] = (nc, issued)
        if len(self._seen) > self._max:
            _, (_, evicted_issued) = self._seen.popitem(last=False)
            self._watermark = max(self._watermark, evicted_issued)
        return True


# --- verification --------------------------------------------------------------------------


def verify(
    credentials: DigestCredentials,
    method: str,
    ha1_md5: str | None,
    ha1_sha256: str | None,
    expected_realm: str,
    nonce_check: str,
    *,
    body: bytes = b"",
    nonce_counts: NonceCounts | None = None,
) -> AuthResult:
    """Check a response against the user's stored HA1 (H(username:realm:password), hex).

    `nonce_check` is what `NonceIssuer.check` said about `credentials.nonce`. `body` is the
    message body, used only with qop=auth-int. With `nonce_counts`, a verified request whose
    nc is not above the last one for that nonce is a REPLAY; RFC 2069 requests (no qop, no
    nc) count as nc=1, which makes their nonces single-use."""
    if credentials.realm != expected_realm:
        return AuthResult.REALM_MISMATCH
    if nonce_check not in (NonceStatus.OK, NonceStatus.STALE):
        return AuthResult.INVALID_NONCE
    algorithm = credentials.known_algorithm
    if algorithm is None:
        return AuthResult.UNKNOWN_ALGORITHM
    ha1 = held_ha1(algorithm, ha1_md5, ha1_sha256)
    if ha1 is None:
        return AuthResult.UNKNOWN_ALGORITHM
    h = _HASHES[algorithm]
    nonce = credentials.nonce
    qop = credentials.qop
    ha1 = ha1.lower()
    a2 = f"{method}:{credentials.uri}"
    if qop is not None and qop.lower() == "auth-int":
        a2 += ":" + h(body)
    try:
        if algorithm in _SESS:
            ha1 = h(_utf8(f"{ha1}:{nonce}:{credentials.cnonce}"))
        ha2 = h(_utf8(a2))
        if qop is not None:
            material = f"{ha1}:{nonce}:{credentials.nc}:{credentials.cnonce}:{qop}:{ha2}"
        else:
            material = f"{ha1}:{nonce}:{ha2}"
        expected = _utf8(h(_utf8(material)))
        given = _utf8(credentials.response.lower())
    except UnicodeEncodeError:  # only for credentials built by hand, not by the parser
        return AuthResult.BAD_CREDENTIALS
    if not hmac.compare_digest(expected, given):
        return AuthResult.BAD_CREDENTIALS
    if nonce_check == NonceStatus.STALE:
        return AuthResult.STALE
    if nonce_counts is not None:
        nc = credentials.nc_value
        if not nonce_counts.accept(nonce, 1 if nc is None else nc):
            return AuthResult.REPLAY
    return AuthResult.OK


def answer_challenge(
    challenge: str,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str,
    nc: int = 1,
) -> str | None:
    """What a UAC sends back for one `WWW-Authenticate` / `Proxy-Authenticate` value (the
    bridge toward a provider that challenges its INVITEs): an Authorization value, or None
    when the scheme or algorithm is not one we can answer (the caller tries the next one)."""
    try:
        text = _FOLD.sub(" ", challenge.strip(" \t\r\n"))
        scan = _Scanner(text)
        if scan.token().lower() != "digest":
            return None
        params = _params(scan)
    except DigestError:
        return None
    realm, nonce = params.get("realm"), params.get("nonce")
    algorithm = _BY_LOWER.get(params.get("algorithm", "MD5").lower())
    if realm is None or nonce is None or algorithm is None:
        return None
    h = _HASHES[algorithm]
    ha1 = h(_utf8(f"{username}:{realm}:{password}"))
    if algorithm in _SESS:
        ha1 = h(_utf8(f"{ha1}:{nonce}:{cnonce}"))
    ha2 = h(_utf8(f"{method}:{uri}"))
    offered = {q.strip().lower() for q in params.get("qop", "").split(",") if q.strip()}
    fields = [
        f"username={_quote(username)}",
        f"realm={_quote(realm)}",
        f"nonce={_quote(nonce)}",
        f"uri={_quote(uri)}",
    ]
    if "auth" in offered:
        count = f"{nc:08x}"
        response = h(_utf8(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{ha2}"))
        fields += [f"response={_quote(response)}", f"algorithm={algorithm.value}", "qop=auth"]
        fields += [f"nc={count}", f"cnonce={_quote(cnonce)}"]
    elif offered:
        return None  # only auth-int offered: we do not hash bodies toward providers
    else:
        response = h(_utf8(f"{ha1}:{nonce}:{ha2}"))
        fields += [f"response={_quote(response)}", f"algorithm={algorithm.value}"]
    if "opaque" in params:
        fields.append(f"opaque={_quote(params['opaque'])}")
    return "Digest " + ", ".join(fields)


def authorize(
    status: int,
    offers: Sequence[str],
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
) -> tuple[str, str] | None:
    """Answer a 401 (`WWW-Authenticate` offers) or 407 (`Proxy-Authenticate` offers): the
    header to add to the retried request and its value, from the first offer we can answer;
    None when none can be."""
    name = "Proxy-Authorization" if status == 407 else "Authorization"
    for offer in offers:
        value = answer_challenge(
            offer,
            method=method,
            uri=uri,
            username=username,
            password=password,
            cnonce=secrets.token_hex(8),
        )
        if value is not None:
            return name, value
    return None


def challenge_header(status: int) -> str:
    """Where a 401 or 407 carries its challenges."""
    return "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
