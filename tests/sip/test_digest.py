"""SIP digest authentication: RFC vectors, a round trip with an independent client, nonces,
replay, header grammar and fuzzing."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.cli import ha1_values
from bridge.sip.digest import (
    MAX_HEADER_LENGTH,
    Algorithm,
    AuthResult,
    DigestCredentials,
    DigestError,
    NonceCounts,
    NonceIssuer,
    NonceStatus,
    answer_challenge,
    challenges,
    parse_auth_header,
    verify,
)

RFC4475 = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "rfc4475"

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "bridge.local"
USER = "alice"
PASSWORD = "correct horse"
HA1 = ha1_values(USER, REALM, PASSWORD)
T0 = 1_800_000_000.0  # wall-clock seconds; any value works, nothing reads a clock


def fixed_salt(n: int) -> bytes:
    return b"\x01" * n


# --- an independent client (shares no code with bridge.sip.digest) ------------------------

_CHALLENGE_PARAM = re.compile(r'([a-zA-Z-]+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))')


def challenge_params(challenge: str) -> dict[str, str]:
    assert challenge.startswith("Digest ")
    return {
        m.group(1).lower(): re.sub(r"\\(.)", r"\1", m.group(2))
        if m.group(2) is not None
        else m.group(3)
        for m in _CHALLENGE_PARAM.finditer(challenge[len("Digest ") :])
    }


def client_authorization(
    challenge: str,
    username: str,
    password: str,
    method: str = "REGISTER",
    uri: str = "sip:bridge.local",
    *,
    nc: int = 1,
    cnonce: str = "c0ffee42",
    qop: bool = True,
    algorithm: str | None = None,
    body: bytes = b"",
    qop_value: str = "auth",
) -> str:
    """What a phone sends back: RFC 2617 / RFC 7616 §3.4.1 computed from the password."""
    params = challenge_params(challenge)
    algo = algorithm or params["algorithm"]
    hash_name = "sha256" if algo.upper().startswith("SHA-256") else "md5"

    def h(data: str | bytes) -> str:
        raw = data.encode() if isinstance(data, str) else data
        return hashlib.new(hash_name, raw).hexdigest()

    realm, nonce = params["realm"], params["nonce"]
    ha1 = h(f"{username}:{realm}:{password}")
    if algo.lower().endswith("-sess"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    a2 = f"{method}:{uri}"
    if qop_value == "auth-int":
        a2 += ":" + h(body)
    if qop:
        response = h(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop_value}:{h(a2)}")
        extra = f', cnonce="{cnonce}", nc={nc:08x}, qop={qop_value}'
    else:
        response = h(f"{ha1}:{nonce}:{h(a2)}")
        extra = ""
    if "opaque" in params:
        extra += f', opaque="{params["opaque"]}"'
    return (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm={algo}{extra}'
    )


def parsed(value: str) -> DigestCredentials:
    creds = parse_auth_header(value)
    assert creds is not None
    return creds


# --- RFC vectors -------------------------------------------------------------------------

RFC2617_EXAMPLE = """Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41\""""

RFC7616_SHA256_EXAMPLE = """Digest username="Mufasa",
       realm="http-auth@example.org",
       uri="/dir/index.html",
       algorithm=SHA-256,
       nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
       nc=00000001,
       cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
       qop=auth,
       response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
       opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""""


def test_rfc2617_example_parses_and_verifies() -> None:
    creds = parsed(RFC2617_EXAMPLE)
    assert creds == DigestCredentials(
        username="Mufasa",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        uri="/dir/index.html",
        response="6629fae49393a05397450978507c4ef1",
        algorithm="MD5",
        cnonce="0a4f113b",
        nc="00000001",
        qop="auth",
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
    )
    ha1 = ha1_values("Mufasa", "testrealm@host.com", "Circle Of Life")
    assert ha1["ha1_md5"] == "939e7578ed9e3c518a452acee763bce9"  # RFC 2617 §3.5 H(A1)
    result = verify(creds, "GET", ha1["ha1_md5"], None, "testrealm@host.com", "ok")
    assert result is AuthResult.OK
    wrong = ha1_values("Mufasa", "testrealm@host.com", "Circle of Life")["ha1_md5"]
    assert verify(creds, "GET", wrong, None, "testrealm@host.com", "ok") is (
        AuthResult.BAD_CREDENTIALS
    )


def test_rfc7616_sha256_example_parses_and_verifies() -> None:
    creds = parsed(RFC7616_SHA256_EXAMPLE)
    assert creds.algorithm == "SHA-256"
    assert creds.known_algorithm is Algorithm.SHA256
    assert creds.nonce == "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    assert creds.cnonce == "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    assert creds.nc_value == 1
    ha1 = ha1_values("Mufasa", "http-auth@example.org", "Circle of Life")
    realm = "http-auth@example.org"
    assert verify(creds, "GET", None, ha1["ha1_sha256"], realm, "ok") is AuthResult.OK
    # The same user without a SHA-256 HA1 cannot be checked with SHA-256 credentials.
    assert verify(creds, "GET", ha1["ha1_md5"], None, realm, "ok") is (AuthResult.UNKNOWN_ALGORITHM)
    # The response covers the method: the same credentials for POST do not verify.
    assert verify(creds, "POST", None, ha1["ha1_sha256"], realm, "ok") is (
        AuthResult.BAD_CREDENTIALS
    )


def test_rfc7616_md5_example_verifies() -> None:
    # RFC 7616 §3.9.1, the MD5 response for the same request.
    creds = parsed(
        RFC7616_SHA256_EXAMPLE.replace("algorithm=SHA-256", "algorithm=MD5").replace(
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            "8ca523f5e9506fed4657c9700eebdbec",
        )
    )
    ha1 = ha1_values("Mufasa", "http-auth@example.org", "Circle of Life")
    assert verify(creds, "GET", ha1["ha1_md5"], None, "http-auth@example.org", "ok") is (
        AuthResult.OK
    )


# --- round trip: challenge -> independent client -> verify --------------------------------


def issuer(lifetime: float = 300.0) -> NonceIssuer:
    return NonceIssuer(SECRET, lifetime, token_bytes=fixed_salt)


def check(
    issue: NonceIssuer,
    header: str,
    now: float,
    *,
    body: bytes = b"",
    nonce_counts: NonceCounts | None = None,
) -> AuthResult:
    """The registrar's sequence: parse, check the nonce, verify against the stored HA1s."""
    creds = parsed(header)
    state = issue.check(creds.nonce, now)
    return verify(
        creds,
        "REGISTER",
        HA1["ha1_md5"],
        HA1["ha1_sha256"],
        REALM,
        state,
        body=body,
        nonce_counts=nonce_counts,
    )


@pytest.mark.parametrize("offered", ["SHA-256", "MD5"])
def test_round_trip_ok_for_each_offered_algorithm(offered: str) -> None:
    iss = issuer()
    nonce = iss.issue(T0)
    (challenge,) = [c for c in challenges(REALM, nonce) if f"algorithm={offered}," in c]
    header = client_authorization(challenge, USER, PASSWORD)
    assert parsed(header).algorithm == offered
    assert check(iss, header, T0 + 1) is AuthResult.OK


def test_wrong_password_is_bad_credentials() -> None:
    iss = issuer()
    challenge = challenges(REALM, iss.issue(T0))[0]
    header = client_authorization(challenge, USER, "wrong horse")
    assert check(iss, header, T0 + 1) is AuthResult.BAD_CREDENTIALS


def test_other_username_for_this_ha1_is_bad_credentials() -> None:
    # The registrar looks up the HA1 by username; a mismatch between them must not pass.
    iss = issuer()
    challenge = challenges(REALM, iss.issue(T0))[0]
    header = client_authorization(challenge, "mallory", PASSWORD)
    assert check(iss, header, T0 + 1) is AuthResult.BAD_CREDENTIALS


def test_stale_nonce_with_right_password_is_stale_and_rechallenged() -> None:
    iss = issuer(lifetime=30)
    nonce = iss.issue(T0)
    header = client_authorization(challenges(REALM, nonce)[0], USER, PASSWORD)
    assert iss.check(nonce, T0 + 30) is NonceStatus.OK
    assert iss.check(nonce, T0 + 30.5) is NonceStatus.STALE
    assert check(iss, header, T0 + 31) is AuthResult.STALE
    wrong = client_authorization(challenges(REALM, nonce)[0], USER, "nope")
    assert check(iss, wrong, T0 + 31) is AuthResult.BAD_CREDENTIALS
    again = challenges(REALM, iss.issue(T0 + 31), stale=True)
    assert all(c.endswith(', qop="auth", stale=true') for c in again)


def test_tampered_nonce_is_invalid() -> None:
    iss = issuer()
    nonce = iss.issue(T0)
    # Move the issue time forward by one byte: the HMAC no longer matches.
    tampered = ("B" if nonce[8] != "B" else "C").join((nonce[:8], nonce[9:]))
    assert len(tampered) == len(nonce) and tampered != nonce
    assert iss.check(tampered, T0) is NonceStatus.INVALID
    # A client that is handed the tampered nonce still computes a correct response for it.
    header = client_authorization(challenges(REALM, tampered)[0], USER, PASSWORD)
    assert check(iss, header, T0 + 1) is AuthResult.INVALID_NONCE


@pytest.mark.parametrize(
    "nonce",
    ["", "dcd98b7102dd2f0e8b11d0f600bfb0c093", "x" * 43, "a" * 44, "é" * 43, "=" * 43],
)
def test_foreign_nonces_are_invalid(nonce: str) -> None:
    assert issuer().check(nonce, T0) is NonceStatus.INVALID


def test_nonce_from_another_secret_is_invalid_unless_rotated() -> None:
    old = NonceIssuer(b"an older secret, 32 bytes long..", 60)
    nonce = old.issue(T0)
    assert issuer().check(nonce, T0) is NonceStatus.INVALID
    rotated = NonceIssuer(SECRET, 60, previous_secrets=[b"an older secret, 32 bytes long.."])
    assert rotated.check(nonce, T0 + 1) is NonceStatus.OK
    assert rotated.check(rotated.issue(T0), T0 + 1) is NonceStatus.OK


def test_nonce_from_the_future_is_invalid_beyond_skew() -> None:
    iss = NonceIssuer(SECRET, 60, max_clock_skew=5)
    nonce = iss.issue(T0 + 100)
    assert iss.check(nonce, T0 + 96) is NonceStatus.OK
    assert iss.check(nonce, T0) is NonceStatus.INVALID


def test_non_canonical_base64_spelling_is_invalid() -> None:
    iss = issuer()
    nonce = iss.issue(T0)
    # The last character carries 2 unused bits; another spelling decodes to the same bytes.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    index = alphabet.index(nonce[-1])
    other = nonce[:-1] + alphabet[index ^ 1]
    assert iss.check(other, T0) is NonceStatus.INVALID


def test_nonces_are_unique_and_quotable() -> None:
    iss = NonceIssuer(SECRET, 60)
    nonces = {iss.issue(T0) for _ in range(200)}
    assert len(nonces) == 200  # same instant, different random salt
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", n) for n in nonces)


def test_nonces_remembered_by_their_issuer_check_as_their_mac_does() -> None:
    # The issuer remembers its recent nonces (no decoding, no MAC on the way back); another
    # instance with the same secret, and the issuer once a nonce is evicted, check the MAC:
    # both must say the same at every moment.
    issuing = NonceIssuer(SECRET, 30, max_clock_skew=5, recent=4)
    other = NonceIssuer(SECRET, 30, max_clock_skew=5)
    nonces = [issuing.issue(T0 + 10 * i) for i in range(3)]
    for nonce in nonces:
        for now in (T0 - 20, T0 - 1, T0, T0 + 15, T0 + 30, T0 + 40.5, T0 + 60, T0 + 100):
            assert issuing.check(nonce, now) is other.check(nonce, now), (nonce, now)
    later = [issuing.issue(T0) for _ in range(4)]  # the first three are evicted now
    assert all(issuing.check(n, T0 + 21) is NonceStatus.OK for n in nonces + later)
    assert len(issuing._recent) == 4


def test_issuer_rejects_weak_settings() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        NonceIssuer(b"short", 60)
    with pytest.raises(ValueError, match="lifetime"):
        NonceIssuer(SECRET, 0)
    with pytest.raises(ValueError, match="finite"):
        issuer().issue(float("nan"))


# --- replay ------------------------------------------------------------------------------


def test_replayed_nc_is_refused_and_higher_nc_accepted() -> None:
    iss, counts = issuer(), NonceCounts()
    challenge = challenges(REALM, iss.issue(T0))[0]
    first = client_authorization(challenge, USER, PASSWORD, nc=1)
    assert check(iss, first, T0 + 1, nonce_counts=counts) is AuthResult.OK
    assert check(iss, first, T0 + 2, nonce_counts=counts) is AuthResult.REPLAY
    second = client_authorization(challenge, USER, PASSWORD, nc=2)
    assert check(iss, second, T0 + 3, nonce_counts=counts) is AuthResult.OK
    assert check(iss, first, T0 + 4, nonce_counts=counts) is AuthResult.REPLAY
    assert len(counts) == 1


def test_failed_attempts_do_not_burn_the_clients_counts() -> None:
    iss, counts = issuer(), NonceCounts()
    challenge = challenges(REALM, iss.issue(T0))[0]
    forged = client_authorization(challenge, USER, "guess", nc=0xFFFFFFFF)
    assert check(iss, forged, T0 + 1, nonce_counts=counts) is AuthResult.BAD_CREDENTIALS
    genuine = client_authorization(challenge, USER, PASSWORD, nc=1)
    assert check(iss, genuine, T0 + 2, nonce_counts=counts) is AuthResult.OK


def test_rfc2069_requests_make_the_nonce_single_use() -> None:
    iss, counts = issuer(), NonceCounts()
    challenge = challenges(REALM, iss.issue(T0), algorithms=[Algorithm.MD5])[0]
    header = client_authorization(challenge, USER, PASSWORD, qop=False)
    assert parsed(header).qop is None
    assert check(iss, header, T0 + 1) is AuthResult.OK
    assert check(iss, header, T0 + 1, nonce_counts=counts) is AuthResult.OK
    assert check(iss, header, T0 + 2, nonce_counts=counts) is AuthResult.REPLAY


def test_nonce_counts_stay_bounded_and_never_let_an_evicted_nonce_replay() -> None:
    iss, counts = issuer(), NonceCounts(max_nonces=2)
    n1, n2, n3 = (iss.issue(T0 + i) for i in (1, 2, 3))
    assert counts.accept(n1, 1) and counts.accept(n2, 1) and counts.accept(n3, 1)
    assert len(counts) == 2
    # n1 was forgotten; any nc on it is refused rather than trusted.
    assert not counts.accept(n1, 99)
    assert counts.accept(n3, 2)
    assert counts.accept(iss.issue(T0 + 4), 1)  # newer nonces are still fine
    assert len(counts) == 2
    assert not counts.accept("not a nonce", 1)
    with pytest.raises(ValueError):
        NonceCounts(0)


def test_nonce_counts_under_many_nonces() -> None:
    iss, counts = issuer(), NonceCounts(max_nonces=100)
    nonces = [iss.issue(T0 + i / 10) for i in range(5000)]
    assert all(counts.accept(n, 1) for n in nonces)
    assert len(counts) == 100
    assert not any(counts.accept(n, 1) for n in nonces)  # replays: remembered or watermarked


# --- result precedence and algorithms ------------------------------------------------------


def test_sha256_credentials_for_md5_only_user_are_unknown_algorithm() -> None:
    iss = issuer()
    challenge = challenges(REALM, iss.issue(T0))[0]
    assert "algorithm=SHA-256" in challenge
    creds = parsed(client_authorization(challenge, USER, PASSWORD))
    state = iss.check(creds.nonce, T0)
    result = verify(creds, "REGISTER", HA1["ha1_md5"], None, REALM, state)
    assert result is AuthResult.UNKNOWN_ALGORITHM


def test_unsupported_algorithm_is_unknown_algorithm() -> None:
    iss = issuer()
    nonce = iss.issue(T0)
    creds = parsed(
        f'Digest username="{USER}", realm="{REALM}", nonce="{nonce}", uri="sip:x", '
        f'response="{"ab" * 32}", algorithm=SHA-512-256, qop=auth, nc=00000001, cnonce="c"'
    )
    assert creds.algorithm == "SHA-512-256" and creds.known_algorithm is None
    result = verify(creds, "REGISTER", HA1["ha1_md5"], HA1["ha1_sha256"], REALM, "ok")
    assert result is AuthResult.UNKNOWN_ALGORITHM


def test_realm_mismatch_comes_first() -> None:
    iss = issuer()
    challenge = challenges("other.example", iss.issue(T0))[0]
    creds = parsed(client_authorization(challenge, USER, PASSWORD))
    assert verify(creds, "REGISTER", None, None, REALM, "invalid") is AuthResult.REALM_MISMATCH


@pytest.mark.parametrize("algorithm", ["MD5-sess", "SHA-256-sess", "md5-SESS"])
def test_sess_variants_verify(algorithm: str) -> None:
    iss = issuer()
    challenge = challenges(REALM, iss.issue(T0))[0]
    header = client_authorization(challenge, USER, PASSWORD, algorithm=algorithm)
    assert parsed(header).algorithm in ("MD5-sess", "SHA-256-sess")
    assert check(iss, header, T0 + 1) is AuthResult.OK
    wrong = client_authorization(challenge, USER, "x", algorithm=algorithm)
    assert check(iss, wrong, T0 + 1) is AuthResult.BAD_CREDENTIALS


def test_auth_int_covers_the_body() -> None:
    iss = issuer()
    challenge = challenges(REALM, iss.issue(T0))[0]
    header = client_authorization(challenge, USER, PASSWORD, qop_value="auth-int", body=b"v=0\r\n")
    assert check(iss, header, T0 + 1, body=b"v=0\r\n") is AuthResult.OK
    assert check(iss, header, T0 + 1, body=b"v=1\r\n") is AuthResult.BAD_CREDENTIALS


def test_uppercase_response_hex_is_accepted() -> None:
    iss = issuer()
    header = client_authorization(challenges(REALM, iss.issue(T0))[1], USER, PASSWORD)
    upper = re.sub(r'response="([0-9a-f]+)"', lambda m: f'response="{m[1].upper()}"', header)
    assert upper != header
    assert check(iss, upper, T0 + 1) is AuthResult.OK


# --- challenges --------------------------------------------------------------------------


def test_challenges_offer_sha256_then_md5() -> None:
    assert challenges("bridge.local", "abc") == [
        'Digest realm="bridge.local", nonce="abc", algorithm=SHA-256, qop="auth"',
        'Digest realm="bridge.local", nonce="abc", algorithm=MD5, qop="auth"',
    ]
    assert challenges("r", "n", stale=True, opaque="o", algorithms=[Algorithm.MD5]) == [
        'Digest realm="r", nonce="n", opaque="o", algorithm=MD5, qop="auth", stale=true'
    ]


def test_challenge_quotes_the_realm_and_refuses_header_injection() -> None:
    (challenge,) = challenges('a "quoted" \\ realm', "n", algorithms=[Algorithm.MD5])
    assert challenge.startswith('Digest realm="a \\"quoted\\" \\\\ realm", ')
    assert challenge_params(challenge)["realm"] == 'a "quoted" \\ realm'
    with pytest.raises(ValueError):
        challenges("evil\r\nX-Injected: 1", "n")
    with pytest.raises(ValueError):
        challenges("r", "n", algorithms=[])


# --- header grammar ----------------------------------------------------------------------

BASE = 'username="u", realm="r", nonce="n", uri="sip:r", response="' + "0" * 32 + '"'


def test_quoted_strings_with_escaped_quotes_and_commas() -> None:
    creds = parsed(
        r'Digest username="a\"b,c\\d", realm="r, with comma", nonce="n=1,2", uri="sip:r",'
        f' response="{"0" * 32}", opaque="\\x"'
    )
    assert creds.username == 'a"b,c\\d'
    assert creds.realm == "r, with comma"
    assert creds.nonce == "n=1,2"
    assert creds.opaque == "x"  # a quoted-pair stands for the character itself


def test_lws_and_line_folding() -> None:
    creds = parsed(
        'Digest\r\n  username = "u" ,\r\n\trealm="two\r\n words" ,nonce="n",'
        f'   uri="sip:r",response="{"0" * 32}"\r\n'
    )
    assert creds.username == "u"
    assert creds.realm == "two words"  # a fold inside a quoted string is one space
    assert parsed("Digest " + BASE.replace(", ", ",\n ")).uri == "sip:r"


def test_names_and_scheme_are_case_insensitive() -> None:
    creds = parsed(
        'dIGEST USERNAME="u", Realm="r", NONCE="n", Uri="sip:r", '
        f'Response="{"0" * 32}", ALGORITHM=md5, QOP=auth, NC=0000000A, CNonce="c"'
    )
    assert creds.username == "u" and creds.realm == "r" and creds.algorithm == "MD5"
    assert creds.nc == "0000000A" and creds.nc_value == 10 and creds.cnonce == "c"


def test_unquoted_values_and_empty_list_elements_are_tolerated() -> None:
    creds = parsed(
        f"Digest ,username=u,, realm=r, nonce=n, uri=sip, response={'0' * 64}, "
        'algorithm="SHA-256", qop="auth", nc="00000001", cnonce=c,'
    )
    assert (creds.username, creds.uri, creds.algorithm, creds.qop) == (
        "u",
        "sip",
        "SHA-256",
        "auth",
    )


def test_username_star_extended_notation() -> None:
    value = "Digest username*=UTF-8''J%C3%A4s%C3%B8n%20Doe, " + BASE.split(", ", 1)[1]
    assert parsed(value).username == "Jäsøn Doe"
    with pytest.raises(DigestError, match="both"):
        parse_auth_header(value + ', username="x"')


@pytest.mark.parametrize(
    "value",
    [
        "NoOp opaque-data=here",
        "NoOneKnowsThisScheme opaque-data=here",
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        'Bearer realm="x"',
        "DigestX " + BASE,
    ],
)
def test_other_schemes_are_not_ours(value: str) -> None:
    assert parse_auth_header(value) is None


def test_rfc4475_regaut01_unknown_scheme_is_not_digest() -> None:
    text = (RFC4475 / "regaut01.dat").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("Authorization:")]
    value = line.split(":", 1)[1]
    assert value.strip() == "NoOneKnowsThisScheme opaque-data=here"
    assert parse_auth_header(value) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "no auth scheme"),
        ("   ", "no auth scheme"),
        ('"Digest" ' + BASE, "no auth scheme"),
        ("Digest", "no parameters"),
        ("Digest ,,, ", "no parameters"),
        ('Digest,username="u"', "no space after Digest"),
        ("Digest " + BASE.replace('username="u", ', ""), "missing username"),
        ("Digest " + BASE.replace('realm="r", ', ""), "missing realm"),
        ("Digest " + BASE.replace('nonce="n", ', ""), "missing nonce"),
        ("Digest " + BASE.replace('uri="sip:r", ', ""), "missing uri"),
        ("Digest " + BASE.split(", response")[0], "missing response"),
        ("Digest " + BASE + ', Realm="r"', "duplicate parameter realm"),
        ("Digest " + BASE.replace('"u"', '""'), "empty username"),
        ("Digest " + BASE + ", qop=auth-conf, nc=00000001, cnonce=c", "bad qop"),
        ("Digest " + BASE + ', qop="auth,auth-int", nc=00000001, cnonce=c', "bad qop"),
        ("Digest " + BASE + ", qop=auth, nc=1, cnonce=c", "nc must be 8 hex"),
        ("Digest " + BASE + ", qop=auth, nc=0000000g, cnonce=c", "nc must be 8 hex"),
        ("Digest " + BASE + ", qop=auth, nc=000000001, cnonce=c", "nc must be 8 hex"),
        ("Digest " + BASE + ", qop=auth, cnonce=c", "nc must be 8 hex"),
        ("Digest " + BASE + ", qop=auth, nc=00000001", "qop without cnonce"),
        ("Digest " + BASE + ', qop=auth, nc=00000001, cnonce=""', "qop without cnonce"),
        ("Digest " + BASE + ", nc=00000001", "without qop"),
        ("Digest " + BASE + ", cnonce=c", "without qop"),
        ("Digest " + BASE.replace("0" * 32, "0" * 64) + ", algorithm=SHA-256", "requires qop"),
        ("Digest " + BASE + ", algorithm=MD5-sess", "requires qop"),
        ("Digest " + BASE.replace("0" * 32, "z" * 32), "not hex"),
        ("Digest " + BASE.replace("0" * 32, "0" * 31), "wrong length"),
        ("Digest " + BASE + ", algorithm=SHA-256, qop=auth, nc=00000001, cnonce=c", "length"),
        ("Digest " + BASE + ", userhash=true", "userhash"),
        ("Digest " + BASE + ', opaque="unterminated', "unterminated"),
        ("Digest " + BASE + ', opaque="ends in backslash\\', "unterminated"),
        ("Digest " + BASE + ', opaque="nul\x00"', "control character"),
        ("Digest " + BASE + ', opaque="esc\\\x01"', "control character"),
        ("Digest " + BASE + ", opaque=", "no value for opaque"),
        ("Digest " + BASE + ", opaque", "expected '='"),
        ("Digest " + BASE + " opaque=x", "expected ','"),
        ("Digest " + BASE + ", =x", "expected a parameter name"),
        ("Digest " + BASE + ',\r\nopaque="x"', "line break"),
        ("Digest " + BASE + ', opaque="a\rb"', "line break"),
        ("Digest username*=latin1''x, " + BASE.split(", ", 1)[1], "must be UTF-8"),
        ("Digest username*=UTF-8''%ZZ, " + BASE.split(", ", 1)[1], "percent"),
        ("Digest " + BASE + ", " + ", ".join(f"p{i}=x" for i in range(70)), "too many"),
        ("Digest " + BASE + ', opaque="' + "x" * MAX_HEADER_LENGTH + '"', "too long"),
        ("Digest " + BASE + ', opaque="\ud800"', "not text"),
    ],
)
def test_malformed_digest_raises_digest_error(value: str, reason: str) -> None:
    with pytest.raises(DigestError) as caught:
        parse_auth_header(value)
    assert reason in caught.value.reason
    assert isinstance(caught.value, ValueError)


def test_username_star_must_decode_as_utf8() -> None:
    value = "Digest username*=UTF-8''%FF, " + BASE.split(", ", 1)[1]
    with pytest.raises(DigestError, match="not UTF-8"):
        parse_auth_header(value)


# --- properties --------------------------------------------------------------------------


def _outcome(value: str) -> str:
    try:
        result = parse_auth_header(value)
    except DigestError as exc:
        assert exc.reason  # every refusal says why
        return "error"
    assert result is None or isinstance(result, DigestCredentials)
    return "none" if result is None else "creds"


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_random_text_never_raises_anything_but_digest_error(text: str) -> None:
    assert _outcome(text) in ("error", "none", "creds")
    assert _outcome("Digest " + text) in ("error", "creds")


_GRAMMAR_BITS = st.sampled_from(
    ['"', "\\", ",", "=", " ", "\t", "\r\n ", "\n", "username", "qop", "auth", "nc", "x", "é"]
)


@settings(max_examples=500, deadline=None)
@given(
    # After "Digest ", so the scheme stays ours and every mutation reaches the parameters.
    st.integers(min_value=len("Digest "), max_value=len(RFC2617_EXAMPLE)),
    st.lists(st.one_of(_GRAMMAR_BITS, st.text(max_size=3)), max_size=6),
)
def test_mutated_valid_header_never_raises_anything_but_digest_error(
    at: int, bits: list[str]
) -> None:
    value = RFC2617_EXAMPLE[:at] + "".join(bits) + RFC2617_EXAMPLE[at:]
    assert _outcome(value) in ("error", "creds")


_VALUE = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f"),
    min_size=1,
    max_size=40,
)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@settings(max_examples=300, deadline=None)
@given(_VALUE, _VALUE, _VALUE, _VALUE, st.booleans())
def test_quoted_values_round_trip(
    username: str, realm: str, nonce: str, uri: str, folded: bool
) -> None:
    sep = ",\r\n " if folded else ", "
    value = sep.join(
        [
            f"Digest username={_quote(username)}",
            f"realm={_quote(realm)}",
            f"nonce={_quote(nonce)}",
            f"uri={_quote(uri)}",
            f'response="{"a" * 32}"',
        ]
    )
    creds = parsed(value)
    assert (creds.username, creds.realm, creds.nonce, creds.uri) == (username, realm, nonce, uri)


# -- the client side: answering a provider's challenge ---------------------------------------


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_our_answer_verifies_against_our_own_challenge(algorithm: str) -> None:
    issuer = NonceIssuer(b"0123456789abcdef", 300)
    nonce = issuer.issue(1000.0)
    [offer] = [c for c in challenges("pstn.example", nonce, opaque="op1") if algorithm in c]
    answer = answer_challenge(
        offer, method="INVITE", uri="sip:+15559990000@pstn.example", username="acct",
        password="s3cret", cnonce="abc123",
    )  # fmt: skip
    assert answer is not None and 'opaque="op1"' in answer
    credentials = parse_auth_header(answer)
    assert credentials is not None and credentials.algorithm == algorithm
    sha = algorithm == "SHA-256"
    ha1 = hashlib.new("sha256" if sha else "md5", b"acct:pstn.example:s3cret").hexdigest()
    result = verify(
        credentials, "INVITE", None if sha else ha1, ha1 if sha else None, "pstn.example",
        issuer.check(nonce, 1001.0),
    )  # fmt: skip
    assert result is AuthResult.OK
    wrong = answer_challenge(
        offer, method="INVITE", uri="sip:+15559990000@pstn.example", username="acct",
        password="nope", cnonce="abc123",
    )  # fmt: skip
    assert wrong is not None
    result = verify(
        parse_auth_header(wrong), "INVITE", None if sha else ha1, ha1 if sha else None,  # type: ignore[arg-type]
        "pstn.example", issuer.check(nonce, 1001.0),
    )  # fmt: skip
    assert result is AuthResult.BAD_CREDENTIALS


def test_answer_matches_the_rfc_2617_example() -> None:
    answer = answer_challenge(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"',
        method="GET", uri="/dir/index.html", username="Mufasa", password="Circle Of Life",
        cnonce="0a4f113b",
    )  # fmt: skip
    assert answer is not None
    assert 'response="6629fae49393a05397450978507c4ef1"' in answer
    assert "nc=00000001" in answer and 'cnonce="0a4f113b"' in answer


@pytest.mark.parametrize(
    "challenge",
    ["Basic realm=x", 'Digest realm="r", nonce="n", algorithm=SHA-512-256', 'Digest nonce="n"',
     'Digest realm="r", nonce="n", qop="auth-int"', "Digest realm=", ""],
)  # fmt: skip
def test_challenges_we_cannot_answer_give_none(challenge: str) -> None:
    assert (
        answer_challenge(
            challenge, method="INVITE", uri="sip:x@y", username="u", password="p", cnonce="c"
        )
        is None
    )
