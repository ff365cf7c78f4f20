"""Console logins through the HTTP API: email + password, refresh sessions in a cookie, logout,
lockouts and their audit lines, passwords set by an admin or changed by their user, and the
hashes never shown."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from argon2 import PasswordHasher
from structlog.testing import capture_logs

from bridge.logins import LoginRefused
from bridge.passwords import Passwords
from tests.api.helpers import API, assert_unchanged, snapshot
from tests.conftest import Bridge

LOGIN = f"{API}/auth/login"
REFRESH = f"{API}/auth/refresh"
LOGOUT = f"{API}/auth/logout"
ALICE_EMAIL = "alice@example.com"
PASSWORD = "alice-long-password"
WRONG = {"detail": "wrong email or password"}


class Clock:
    """The login service's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingHasher(PasswordHasher):
    """argon2id at its cheapest (the tests hash a lot), counting the verifications."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified += 1
        return super().verify(hash, password)


@pytest.fixture
def login_bridge(make_bridge: Callable[..., Bridge]) -> Iterator[Callable[..., Bridge]]:
    """A demo bridge with a cheap hasher and a hand-moved clock; alice's password set."""

    def factory(**kw: Any) -> Bridge:
        bridge = make_bridge(**kw)
        logins = bridge.ctx.logins
        assert logins is not None
        logins.passwords = Passwords(CountingHasher())
        logins.clock = Clock()
        response = bridge.as_user(
            "olivia", "PUT", f"{API}/users/alice/password", json={"password": PASSWORD}
        )
        assert response.status_code == 204, response.text
        return bridge

    yield factory


@pytest.fixture
def lb(login_bridge: Callable[..., Bridge]) -> Bridge:
    return login_bridge()


def clock(bridge: Bridge) -> Clock:
    assert bridge.ctx.logins is not None
    c = bridge.ctx.logins.clock
    assert isinstance(c, Clock)
    return c


def hasher(bridge: Bridge) -> CountingHasher:
    assert bridge.ctx.logins is not None
    h = bridge.ctx.logins.passwords.hasher
    assert isinstance(h, CountingHasher)
    return h


def login(bridge: Bridge, email: str = ALICE_EMAIL, password: str = PASSWORD) -> Any:
    return bridge.client.post(LOGIN, json={"email": email, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def set_cookie(response: Any) -> str:
    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 1, cookies
    return str(cookies[0])


def refresh_with(bridge: Bridge, cookie: str) -> Any:
    """POST /auth/refresh with this cookie value only (what another tab or a thief sends)."""
    bridge.client.cookies.clear()
    return bridge.client.post(REFRESH, headers={"Cookie": f"bridge_refresh={cookie}"})


def audits(logs: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "audit" and e["action"] == action]


# -- logging in --------------------------------------------------------------------------------
def test_login_answers_an_access_token_and_a_refresh_cookie(lb: Bridge) -> None:
    with capture_logs() as logs:
        response = login(lb, "  Alice@Example.COM ")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300
    assert body["user"]["id"] == "alice" and body["password_min_length"] == 10
    assert response.headers["cache-control"] == "no-store"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 300
    assert claims["sid"] and claims["amr"] == ["pwd"]
    # The token is the API's: /api takes it like any other.
    me = lb.client.get(f"{API}/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200 and me.json()["id"] == "alice"

    cookie = set_cookie(response)
    assert cookie.startswith(f"bridge_refresh={claims['sid']}.")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/api/v1/auth", "max-age=43200"} <= flags
    assert "secure" not in flags  # http://: a browser would drop a Secure cookie
    [line] = audits(logs, "login")
    assert line["allowed"] is True and line["target"] == "user:alice"
    assert line["client"] == "testclient" and line["session"] == claims["sid"]


def test_a_body_json_cannot_answer_back_is_422_and_nothing_sent_is_echoed(lb: Bridge) -> None:
    """FastAPI's 422 repeats the value it refused: a number JSON cannot carry (1e999, NaN)
    made that answer fail, a 500 before any login, and a refused password came back in it."""
    headers = {"Content-Type": "application/json"}
    for body in ('{"email": 1e999, "password": "x"}', '{"email": "a@b.c", "password": NaN}'):
        response = lb.client.post(LOGIN, content=body, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][0] == "body"
    response = lb.client.post(LOGIN, json={"email": "a@b.c", "password": ["hunter2-secret"]})
    assert response.status_code == 422 and "hunter2" not in response.text
    assert response.json()["detail"][0]["loc"] == ["body", "password"]


def test_the_demo_users_log_in_with_the_documented_passwords(lb: Bridge) -> None:
    # config/directory.yaml's comment and the README's quick start name them.
    response = login(lb, "sam@example.com", "sam-demo-password")
    assert response.status_code == 200 and response.json()["user"]["id"] == "sam"


def test_the_cookie_is_secure_behind_https(
    login_bridge: Callable[..., Bridge], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_HTTP__PUBLIC_URL", "https://bridge.example.com")
    bridge = login_bridge()
    flags = {p.strip().lower() for p in set_cookie(login(bridge)).split(";")[1:]}
    assert "secure" in flags and "httponly" in flags and "samesite=strict" in flags


def test_wrong_password_and_unknown_email_are_one_answer_for_the_same_work(lb: Bridge) -> None:
    answers = []
    for email, password in [
        (ALICE_EMAIL, "not-alice-password"),  # wrong password
        ("nobody@example.com", PASSWORD),  # unknown email
        ("bob@example.com", PASSWORD),  # a user without a password
    ]:
        before = hasher(lb).verified
        with capture_logs() as logs:
            response = login(lb, email, password)
        # One argon2 verification each (a dummy hash when there is none to check).
        assert hasher(lb).verified == before + 1
        answers.append((response.status_code, response.json()))
        assert "set-cookie" not in response.headers
        [line] = audits(logs, "login")
        assert line["allowed"] is False
    assert answers == [(401, WRONG)] * 3


def test_a_suspended_or_deleted_user_cannot_log_in(lb: Bridge) -> None:
    assert lb.as_user("olivia", "POST", f"{API}/users/alice/suspend").status_code == 200
    response = login(lb)
    assert response.status_code == 403 and response.json() == {"detail": "account suspended"}
    assert login(lb, password="a-wrong-password").json() == WRONG  # says nothing more
    assert lb.as_user("olivia", "POST", f"{API}/users/alice/activate").status_code == 200
    assert login(lb).status_code == 200
    assert lb.as_user("olivia", "DELETE", f"{API}/users/alice").status_code == 204
    response = login(lb)
    assert response.status_code == 401 and response.json() == WRONG


def test_login_body_is_checked(lb: Bridge) -> None:
    assert lb.client.post(LOGIN, json={"email": ALICE_EMAIL}).status_code == 422
    too_long = lb.client.post(LOGIN, json={"email": ALICE_EMAIL, "password": "x" * 257})
    assert too_long.status_code == 422


# -- lockout -----------------------------------------------------------------------------------
def test_failures_lock_the_account_for_a_while_and_are_audited(lb: Bridge) -> None:
    with capture_logs() as logs:
        for _ in range(4):
            assert login(lb, password="wrong-password!").status_code == 401
        locked = login(lb, password="wrong-password!")
    assert locked.status_code == 429
    assert locked.headers["retry-after"] == "900"
    assert locked.json() == {
        "detail": "too many failed attempts: try again in 15 minutes",
        "retry_after": 900,
    }
    failures = audits(logs, "login")
    assert len(failures) == 5 and not any(line["allowed"] for line in failures)
    assert {line["target"] for line in failures} == {"user:alice"}
    assert {line["reason"] for line in failures} == {"wrong password"}
    [lockout] = audits(logs, "login_lockout")
    assert lockout["target"] == "user:alice" and lockout["allowed"] is False
    assert lockout["locked_seconds"] == 900 and lockout["client"] == "testclient"
    assert lockout["reason"] == "5 failed attempts within 900 s"

    # Locked: even the right password, and no password is checked meanwhile.
    before = hasher(lb).verified
    clock(lb).now += 840
    response = login(lb)
    assert response.status_code == 429 and response.headers["retry-after"] == "60"
    assert response.json()["detail"] == "too many failed attempts: try again in 1 minute"
    assert hasher(lb).verified == before
    # Other accounts are not locked.
    assert lb.as_user("olivia", "PUT", f"{API}/users/bob/password",
                      json={"password": "bob-long-password"}).status_code == 204  # fmt: skip
    assert login(lb, "bob@example.com", "bob-long-password").status_code == 200
    clock(lb).now += 61
    assert login(lb).status_code == 200


def test_an_attempt_checked_while_the_lock_fell_learns_nothing(
    lb: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guesses sent at once are hashed one after the other: those still hashing when the
    account locks answer 429 too, even the right one (they cannot tell it matched)."""
    logins = lb.ctx.logins
    assert logins is not None
    counting = hasher(lb)
    original = counting.verify
    others: list[int] = []

    def verify(hash: str | bytes, password: str | bytes) -> bool:
        if not others:  # meanwhile, five wrong guesses from elsewhere lock the account
            others.append(1)
            for _ in range(5):
                with contextlib.suppress(LoginRefused):
                    logins.login(ALICE_EMAIL, "someone-else-guessing", "198.51.100.7")
        return original(hash, password)

    monkeypatch.setattr(counting, "verify", verify)
    response = login(lb)
    assert response.status_code == 429 and response.headers["retry-after"] == "900"


def test_failures_outside_the_window_do_not_add_up(lb: Bridge) -> None:
    for _ in range(4):
        assert login(lb, password="wrong-password!").status_code == 401
    clock(lb).now += 901
    for _ in range(4):
        assert login(lb, password="wrong-password!").status_code == 401
    assert login(lb).status_code == 200  # and a success forgets the failures
    for _ in range(4):
        assert login(lb, password="wrong-password!").status_code == 401
    assert login(lb).status_code == 200


def test_unknown_emails_lock_too_and_so_does_an_address(
    login_bridge: Callable[..., Bridge], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_AUTH__LOGIN_MAX_FAILURES_PER_IP", "8")
    bridge = login_bridge()
    # An unknown email locks like a known one (a lockout says nothing about who exists).
    codes = [login(bridge, "ghost@example.com").status_code for _ in range(5)]
    assert codes == [401, 401, 401, 401, 429]
    with capture_logs() as logs:
        codes = [login(bridge, f"spray{i}@example.com").status_code for i in range(3)]
    assert codes == [401, 401, 429]  # the 8th failure from this address
    [lockout] = audits(logs, "login_lockout")
    assert lockout["target"] == "ip:testclient"
    assert lockout["reason"] == "8 failed attempts from this address within 900 s"
    response = login(bridge)  # the right password, from a locked address
    assert response.status_code == 429 and response.headers["retry-after"] == "900"


# -- refresh and logout -------------------------------------------------------------------------
def test_refresh_rotates_the_secret_and_a_replayed_one_ends_the_session(lb: Bridge) -> None:
    first = login(lb)
    old_cookie = lb.client.cookies["bridge_refresh"]
    clock(lb).now += 100
    refreshed = lb.client.post(REFRESH)
    assert refreshed.status_code == 200, refreshed.text
    new_cookie = lb.client.cookies["bridge_refresh"]
    assert new_cookie != old_cookie and new_cookie.split(".")[0] == old_cookie.split(".")[0]
    token = refreshed.json()["access_token"]
    assert token != first.json()["access_token"]
    assert lb.client.get(f"{API}/me", headers=bearer(token)).status_code == 200
    assert "max-age=43100" in set_cookie(refreshed).lower()  # the login's lifetime, not anew

    # Two tabs refreshing at once: the secret just replaced still gets a token (no new secret).
    concurrent = refresh_with(lb, old_cookie)
    assert concurrent.status_code == 200 and "set-cookie" not in concurrent.headers

    # Later, the replaced secret is a replay: the whole session ends.
    clock(lb).now += 31
    with capture_logs() as logs:
        replay = refresh_with(lb, old_cookie)
    assert replay.status_code == 401
    assert replay.json() == {"detail": "session ended: log in again"}
    assert "max-age=0" in set_cookie(replay).lower()  # the cookie is forgotten
    [line] = audits(logs, "refresh_reuse")
    assert line["target"] == "user:alice" and line["allowed"] is False
    assert refresh_with(lb, new_cookie).status_code == 401
    # ... and its access tokens are refused at once, everywhere tokens are checked.
    response = lb.client.get(f"{API}/me", headers=bearer(token))
    assert response.status_code == 401 and response.json() == {"detail": "session ended"}


def test_refresh_without_a_good_cookie(lb: Bridge) -> None:
    lb.client.cookies.clear()
    assert lb.client.post(REFRESH).status_code == 401
    for cookie in ["nonsense", "x.y", "."]:
        assert refresh_with(lb, cookie).status_code == 401, cookie


def test_a_session_ends_with_its_lifetime(lb: Bridge) -> None:
    login(lb)
    clock(lb).now += 43199
    response = lb.client.post(REFRESH)
    assert response.status_code == 200 and response.json()["expires_in"] == 1
    clock(lb).now += 2
    assert lb.client.post(REFRESH).status_code == 401


def test_logout_ends_the_session(lb: Bridge) -> None:
    token = login(lb).json()["access_token"]
    cookie = lb.client.cookies["bridge_refresh"]
    with capture_logs() as logs:
        response = lb.client.post(LOGOUT)
    assert response.status_code == 204
    assert "max-age=0" in set_cookie(response).lower()
    assert audits(logs, "logout")[0]["target"] == "user:alice"
    assert refresh_with(lb, cookie).status_code == 401
    assert lb.client.get(f"{API}/me", headers=bearer(token)).status_code == 401
    # Logging out again (or without a cookie) is fine.
    assert lb.client.post(LOGOUT).status_code == 204


def test_logout_by_the_access_token_alone(lb: Bridge) -> None:
    token = login(lb).json()["access_token"]
    lb.client.cookies.clear()
    assert lb.client.post(LOGOUT, headers=bearer(token)).status_code == 204
    assert lb.client.get(f"{API}/me", headers=bearer(token)).status_code == 401


def test_suspended_or_deleted_users_cannot_refresh(lb: Bridge) -> None:
    login(lb)
    assert lb.as_user("olivia", "POST", f"{API}/users/alice/suspend").status_code == 200
    response = lb.client.post(REFRESH)
    assert response.status_code == 401
    assert response.json() == {"detail": "account suspended: session ended"}
    assert lb.as_user("olivia", "POST", f"{API}/users/alice/activate").status_code == 200
    assert lb.client.post(REFRESH).status_code == 401  # that session is over for good
    login(lb)
    assert lb.as_user("olivia", "DELETE", f"{API}/users/alice").status_code == 204
    assert lb.client.post(REFRESH).status_code == 401


def test_sessions_per_user_are_bounded(
    login_bridge: Callable[..., Bridge], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_AUTH__MAX_SESSIONS_PER_USER", "2")
    bridge = login_bridge()
    cookies = []
    for _ in range(3):
        login(bridge)
        cookies.append(bridge.client.cookies["bridge_refresh"])
        clock(bridge).now += 1
    assert bridge.ctx.logins is not None and bridge.ctx.logins.sessions_of("alice") == 2
    codes = [refresh_with(bridge, c).status_code for c in cookies]
    assert codes == [401, 200, 200]  # the oldest ended


# -- setting and changing passwords -------------------------------------------------------------
def test_an_admin_sets_a_password_hashed_and_audited(lb: Bridge) -> None:
    with capture_logs() as logs:
        response = lb.as_user(
            "olivia", "PUT", f"{API}/users/bob/password", json={"password": "bob-long-password"}
        )
    assert response.status_code == 204
    stored = next(u for u in lb.directory_file()["users"] if u["id"] == "bob")
    assert stored["password_hash"].startswith("$argon2id$v=19$")
    assert "bob-long-password" not in (lb.config_dir / "directory.yaml").read_text()
    [line] = audits(logs, "set_password")
    assert line["actor"] == "olivia" and line["target"] == "user:bob" and line["allowed"]
    assert not any("$argon2" in repr(entry) for entry in logs)
    assert login(lb, "bob@example.com", "bob-long-password").status_code == 200


def test_setting_a_password_ends_the_users_sessions(lb: Bridge) -> None:
    token = login(lb).json()["access_token"]
    response = lb.as_user(
        "olivia", "PUT", f"{API}/users/alice/password", json={"password": "a-new-long-one"}
    )
    assert response.status_code == 204
    assert lb.client.post(REFRESH).status_code == 401
    assert lb.client.get(f"{API}/me", headers=bearer(token)).status_code == 401
    assert login(lb).status_code == 401
    assert login(lb, password="a-new-long-one").status_code == 200


@pytest.mark.parametrize("actor", ["sam", "alice", "frank", "bill", "rita"])
def test_only_admins_set_others_passwords(lb: Bridge, actor: str) -> None:
    before = snapshot(lb)
    with capture_logs() as logs:
        response = lb.as_user(
            actor, "PUT", f"{API}/users/bob/password", json={"password": "bob-long-password"}
        )
    assert response.status_code == 403
    assert response.json()["detail"].endswith("may not change directory")
    [line] = audits(logs, "change_directory")
    assert line["actor"] == actor and line["allowed"] is False
    assert_unchanged(lb, before)


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short", "the password must be at least 10 characters"),
        ("x" * 257, "the password must be at most 256 characters"),
        (" " * 12, "the password must not be only spaces"),
    ],
)
def test_a_password_outside_the_policy_is_refused(lb: Bridge, password: str, reason: str) -> None:
    before = snapshot(lb)
    response = lb.as_user("olivia", "PUT", f"{API}/users/bob/password", json={"password": password})
    assert response.status_code == 422
    assert response.json() == {"detail": [{"loc": "password", "msg": reason, "type": "invalid"}]}
    assert_unchanged(lb, before)


def test_set_password_of_an_unknown_user_or_a_taken_email(lb: Bridge) -> None:
    response = lb.as_user(
        "olivia", "PUT", f"{API}/users/nobody/password", json={"password": "long-enough-1"}
    )
    assert response.status_code == 404
    # bob takes alice's email: a password for him would make the email ambiguous.
    assert lb.as_user("olivia", "PATCH", f"{API}/users/bob",
                      json={"email": "ALICE@example.com"}).status_code == 200  # fmt: skip
    response = lb.as_user(
        "olivia", "PUT", f"{API}/users/bob/password", json={"password": "long-enough-1"}
    )
    assert response.status_code == 409
    assert response.json() == {"detail": "user 'alice' already logs in with 'ALICE@example.com'"}


def test_a_user_changes_their_own_password(lb: Bridge) -> None:
    mine = login(lb).json()["access_token"]
    my_cookie = lb.client.cookies["bridge_refresh"]
    lb.client.cookies.clear()
    login(lb)  # another browser
    other_cookie = lb.client.cookies["bridge_refresh"]
    lb.client.cookies.clear()
    with capture_logs() as logs:
        response = lb.client.post(
            f"{API}/me/password",
            headers=bearer(mine),
            json={"current_password": PASSWORD, "new_password": "my-own-new-password"},
        )
    assert response.status_code == 204, response.text
    [line] = audits(logs, "change_password")
    assert line["actor"] == "alice" and line["allowed"] is True
    # The other login is over; this one goes on.
    assert refresh_with(lb, other_cookie).status_code == 401
    assert refresh_with(lb, my_cookie).status_code == 200
    assert lb.client.get(f"{API}/me", headers=bearer(mine)).status_code == 200
    assert login(lb).status_code == 401
    assert login(lb, password="my-own-new-password").status_code == 200


def test_changing_ones_password_needs_the_current_one(lb: Bridge) -> None:
    token = login(lb).json()["access_token"]
    before = snapshot(lb)

    def change(current: str, new: str = "whatever-new-one") -> Any:
        return lb.client.post(
            f"{API}/me/password",
            headers=bearer(token),
            json={"current_password": current, "new_password": new},
        )

    response = change(PASSWORD, "short")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == "new_password"
    with capture_logs() as logs:
        response = change("not-the-password")
    assert response.status_code == 403
    assert response.json() == {"detail": "the current password is wrong"}
    assert audits(logs, "change_password")[0]["allowed"] is False
    # Wrong guesses count toward the lockout, like failed logins.
    codes = [change("not-the-password").status_code for _ in range(4)]
    assert codes == [403, 403, 403, 429]
    assert change(PASSWORD).status_code == 429
    assert_unchanged(lb, before)
    # Without a password of one's own there is nothing to change (an admin sets it first).
    response = lb.as_user(
        "bob", "POST", f"{API}/me/password",
        json={"current_password": "anything-at-all", "new_password": "bob-long-password"},
    )  # fmt: skip
    assert response.status_code == 409


# -- the hash is never shown --------------------------------------------------------------------
def test_the_hash_is_never_in_api_output(lb: Bridge) -> None:
    admin = lb.auth("olivia")
    outputs = [
        lb.client.get(f"{API}/users", headers=admin),
        lb.client.get(f"{API}/users/alice", headers=admin),
        lb.as_user("alice", "GET", f"{API}/me"),
        login(lb),
        lb.client.post(REFRESH),
        lb.as_user("olivia", "PATCH", f"{API}/users/alice", json={"wrap_up_seconds": 5}),
        lb.client.get("/openapi.json"),
    ]
    for response in outputs:
        assert response.status_code == 200, response.text
        assert "password_hash" not in response.text and "$argon2" not in response.text
    user = lb.ctx.store.current.user("alice")
    assert user is not None and user.password_hash and "argon2" not in repr(user)


def test_user_bodies_cannot_carry_a_hash_and_keep_the_stored_one(lb: Bridge) -> None:
    stored = lb.ctx.store.current.user("alice")
    assert stored is not None and stored.password_hash
    forged = "$argon2id$v=19$m=1024,t=1,p=1$c29tZXNhbHQ$ZmFrZWhhc2g"
    public = lb.as_user("olivia", "GET", f"{API}/users/alice").json()
    for method, body in [
        ("PUT", {**public, "password_hash": forged}),
        ("PATCH", {"password_hash": forged}),
        ("PATCH", {"password_hash": None}),
    ]:
        response = lb.as_user("olivia", method, f"{API}/users/alice", json=body)
        assert response.status_code == 422, (method, body)
        assert response.json()["detail"][0]["loc"] == "password_hash"
    response = lb.as_user(
        "olivia", "POST", f"{API}/users",
        json={"id": "zed", "name": "Zed", "password_hash": forged},
    )  # fmt: skip
    assert response.status_code == 422
    # Sending back the public shape keeps the password.
    assert lb.as_user("olivia", "PUT", f"{API}/users/alice", json=public).status_code == 200
    after = lb.ctx.store.current.user("alice")
    assert after is not None and after.password_hash == stored.password_hash
    assert login(lb).status_code == 200
