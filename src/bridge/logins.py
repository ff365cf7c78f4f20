"""People log in with an email and a password: short-lived access tokens, refresh sessions,
lockouts. No HTTP here (the routes are `bridge.api.login`); every decision is audited.

- **Login** checks the password (argon2id, `bridge.passwords`) and answers an access token
  (the API's JWT, `[auth] access_ttl_seconds`, with a `sid` claim naming its session) and a
  refresh session: `<session id>.<secret>`, which the HTTP layer keeps in an HttpOnly cookie.
  An unknown email, a user without a password and a wrong password are one answer (401) for
  the same work (a dummy hash is verified).
- **Refresh** exchanges the session's secret for a new access token and a new secret
  (rotation). The secret just replaced stays good for `ROTATION_GRACE_SECONDS` without being
  rotated again (two tabs refreshing at once); an older one is a stolen or replayed secret:
  the whole session ends (`refresh_reuse` in the audit).
- **Sessions** live in this process (a restart logs everyone out), at most
  `[auth] max_sessions_per_user` per user (the oldest ends), each at most
  `[auth] session_ttl_seconds` from its login. A session of a suspended or deleted user ends
  at its next refresh; an access token of an ended session is refused (TokenService).
- **Lockout**: `login_max_failures` failures for one account (or one unknown email) within
  `login_window_seconds` lock it for `login_lockout_seconds`: 429 with how long, before any
  password is checked. `login_max_failures_per_ip` failures from one client address lock
  that address the same way. Failures and lockouts are audited (`login`, `login_lockout`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from bridge.config import AuthSettings
from bridge.directory.model import AccountStatus, Directory, User
from bridge.observability.audit import audit
from bridge.passwords import Passwords, check_policy
from bridge.tokens import TokenService

log = structlog.get_logger("bridge.logins")

# The secret a refresh just replaced still gets an access token this long (not a new secret).
ROTATION_GRACE_SECONDS = 30.0
# Throttles forget the oldest keys beyond this many (an attacker's stream of made-up emails).
MAX_TRACKED_KEYS = 10000
WRONG_CREDENTIALS = "wrong email or password"


class LoginRefused(Exception):
    """A refused login, refresh or password change: the HTTP status, the reason (fit for the
    response), and for a lockout how many seconds are left."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Issued:
    """What a login or a refresh hands out. `refresh` is the cookie's new value (None: keep
    the one the client has), `refresh_max_age` its remaining lifetime in seconds."""

    user: User
    access_token: str
    expires_in: int
    session_id: str
    refresh: str | None
    refresh_max_age: int


@dataclass(slots=True)
class _Session:
    id: str
    user_id: str
    secret: bytes  # sha256 of the current secret
    created: float
    expires: float
    previous: bytes | None = None  # sha256 of the secret the last rotation replaced
    previous_until: float = 0.0


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _minutes(seconds: float) -> str:
    if seconds < 60:
        whole = max(1, math.ceil(seconds))
        return f"{whole} second{'s' if whole != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


@dataclass(slots=True)
class _Failures:
    times: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class Throttle:
    """Failures per key within a sliding window; `max_failures` of them lock the key."""

    def __init__(self, max_failures: int, window: float, lockout: float) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self._keys: OrderedDict[str, _Failures] = OrderedDict()

    def locked_for(self, key: str, now: float) -> float:
        """Seconds the key is still locked (0 when it is not)."""
        entry = self._keys.get(key)
        return max(0.0, entry.locked_until - now) if entry is not None else 0.0

    def fail(self, key: str, now: float) -> bool:
        """Count one failure; True when it locks the key."""
        entry = self._keys.pop(key, None) or _Failures()
        self._keys[key] = entry  # most recent last
        while entry.times and entry.times[0] <= now - self.window:
            entry.times.popleft()
        entry.times.append(now)
        locked = len(entry.times) >= self.max_failures
        if locked:
            entry.times.clear()
            entry.locked_until = now + self.lockout
        while len(self._keys) > MAX_TRACKED_KEYS:
            self._keys.popitem(last=False)
        return locked

    def clear(self, key: str) -> None:
        self._keys.pop(key, None)


class LoginService:
    """Logins, refresh sessions and lockouts over the current directory (see the module)."""

    def __init__(
        self,
        settings: AuthSettings,
        directory: Callable[[], Directory],
        tokens: TokenService,
        passwords: Passwords | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._directory = directory
        self._tokens = tokens
        self.passwords = passwords or Passwords()
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._accounts = Throttle(
            settings.login_max_failures,
            settings.login_window_seconds,
            settings.login_lockout_seconds,
        )
        self._addresses = Throttle(
            settings.login_max_failures_per_ip,
            settings.login_window_seconds,
            settings.login_lockout_seconds,
        )
        self._next_sweep = 0.0
        # Access tokens of an ended session are refused everywhere tokens are checked.
        tokens.use_session_check(self.is_live)

    # -- passwords -------------------------------------------------------------------------
    def new_hash(self, password: str) -> str:
        """The hash to store for a new password; PasswordRejected (its reason) if the policy
        refuses it."""
        check_policy(password, self.settings.password_min_length)
        return self.passwords.hash(password)

    def find_by_email(self, email: str) -> User | None:
        """The user who logs in with `email` (case does not matter): the one user with that
        email and a password. Several (the directory does not forbid shared emails) is none."""
        wanted = email.strip().lower()
        if not wanted:
            return None
        found = [
            user
            for user in self._directory().users
            if user.email is not None and user.email.lower() == wanted and user.password_hash
        ]
        if len(found) > 1:
            log.warning("login_email_ambiguous", users=[user.id for user in found])
            return None
        return found[0] if found else None

    def email_taken(self, user: User, email: str | None) -> User | None:
        """Another user who already logs in with this email (a password for `user` would make
        the email ambiguous)."""
        if not email:
            return None
        wanted = email.lower()
        for other in self._directory().users:
            if (
                other.id != user.id
                and other.password_hash
                and other.email is not None
                and other.email.lower() == wanted
            ):
                return other
        return None

    # -- logging in ------------------------------------------------------------------------
    def login(self, email: str, password: str, client: str | None) -> Issued:
        now = self.clock()
        address = f"ip:{client or 'unknown'}"
        with self._lock:
            address_locked = self._addresses.locked_for(address, now)
        if address_locked:
            raise self._locked(address_locked)
        user = self.find_by_email(email)
        account = f"user:{user.id}" if user is not None else f"email:{email.strip().lower()}"
        with self._lock:
            account_locked = self._accounts.locked_for(account, now)
        if account_locked:
            raise self._locked(account_locked)

        self.passwords.warm()  # the first attempt costs the same whoever it names
        matched = self.passwords.verify(user.password_hash if user else None, password)
        now = self.clock()
        # Attempts that were hashing while the lock fell learn nothing: not even a match.
        locked = self._locked_now(account, address, now)
        if locked:
            raise self._locked(locked)
        if not matched:
            self._failed(user, account, address, client, now, "login")
            raise LoginRefused(401, WRONG_CREDENTIALS)
        assert user is not None
        if user.status is AccountStatus.SUSPENDED:
            self._audit(user, "login", False, client, reason="account suspended")
            raise LoginRefused(403, "account suspended")
        with self._lock:
            self._accounts.clear(account)
            session, secret = self._open(user.id, now)
        self._audit(user, "login", True, client, session=session.id)
        return self._issue(user, session, f"{session.id}.{secret}", now)

    def refresh(self, cookie: str | None, client: str | None) -> Issued:
        now = self.clock()
        session_id, _, secret = (cookie or "").partition(".")
        presented = _digest(secret)
        with self._lock:
            self._sweep(now)
            session = self._sessions.get(session_id)
            if session is None or session.expires <= now or not secret:
                raise LoginRefused(401, "session ended: log in again")
            user = self._directory().user(session.user_id)
            if user is None or user.status is AccountStatus.SUSPENDED:
                del self._sessions[session.id]
                reason = "account suspended" if user is not None else "unknown user"
                raise LoginRefused(401, f"{reason}: session ended")
            reused = False
            cookie_value: str | None = None
            if hmac.compare_digest(presented, session.secret):
                fresh = secrets.token_urlsafe(32)
                session.previous = session.secret
                session.previous_until = now + ROTATION_GRACE_SECONDS
                session.secret = _digest(fresh)
                cookie_value = f"{session.id}.{fresh}"
            elif (
                session.previous is not None
                and now < session.previous_until
                and hmac.compare_digest(presented, session.previous)
            ):
                pass  # a concurrent refresh: the client already has (or gets) the new secret
            else:
                del self._sessions[session.id]
                reused = True
        if reused:
            self._audit(
                user,
                "refresh_reuse",
                False,
                client,
                session=session_id,
                reason="a replaced refresh secret was used again: the session is ended",
            )
            raise LoginRefused(401, "session ended: log in again")
        return self._issue(user, session, cookie_value, now)

    def logout(self, cookie: str | None, client: str | None) -> bool:
        """End the cookie's session (when its secret is current); True when one ended."""
        session_id, _, secret = (cookie or "").partition(".")
        presented = _digest(secret)
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or not secret:
                return False
            known = [session.secret] + ([session.previous] if session.previous else [])
            if not any(hmac.compare_digest(presented, digest) for digest in known):
                return False
            del self._sessions[session.id]
        user = self._directory().user(session.user_id)
        if user is not None:
            self._audit(user, "logout", True, client, session=session.id)
        return True

    def check_current(self, user: User, password: str, client: str | None) -> None:
        """The user's own password, before they change it: counted like a failed login
        (a stolen access token cannot be used to guess it); LoginRefused otherwise."""
        now = self.clock()
        account = f"user:{user.id}"
        with self._lock:
            locked = self._accounts.locked_for(account, now)
        if locked:
            raise self._locked(locked)
        if not user.password_hash:
            raise LoginRefused(409, "no password is set for you: ask an admin to set one")
        matched = self.passwords.verify(user.password_hash, password)
        address = f"ip:{client or 'unknown'}"
        now = self.clock()
        locked = self._locked_now(account, address, now)
        if locked:
            raise self._locked(locked)
        if not matched:
            self._failed(user, account, address, client, now, "change_password")
            raise LoginRefused(403, "the current password is wrong")

    # -- sessions --------------------------------------------------------------------------
    def is_live(self, session_id: str) -> bool:
        with self._lock:
            session = self._sessions.get(session_id)
            return session is not None and session.expires > self.clock()

    def end_session(self, session_id: str, client: str | None) -> bool:
        """End one session (a logout by its access token); True when it was live."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        user = self._directory().user(session.user_id)
        if user is not None:
            self._audit(user, "logout", True, client, session=session.id)
        return True

    def end_sessions(self, user_id: str, keep: str | None = None) -> int:
        """End every session of the user but `keep`; how many ended."""
        with self._lock:
            gone = [s.id for s in self._sessions.values() if s.user_id == user_id and s.id != keep]
            for session_id in gone:
                del self._sessions[session_id]
        if gone:
            log.info("login_sessions_ended", user_id=user_id, sessions=len(gone))
        return len(gone)

    def sessions_of(self, user_id: str) -> int:
        with self._lock:
            now = self.clock()
            return sum(
                1 for s in self._sessions.values() if s.user_id == user_id and s.expires > now
            )

    # -- inside ----------------------------------------------------------------------------
    def _open(self, user_id: str, now: float) -> tuple[_Session, str]:
        """A new session (under the lock), ending the user's oldest beyond the limit."""
        self._sweep(now)
        mine = sorted(
            (s for s in self._sessions.values() if s.user_id == user_id), key=lambda s: s.created
        )
        for old in mine[: max(0, len(mine) - self.settings.max_sessions_per_user + 1)]:
            del self._sessions[old.id]
            log.info("login_session_dropped", user_id=user_id, reason="max_sessions_per_user")
        secret = secrets.token_urlsafe(32)
        session = _Session(
            id=secrets.token_urlsafe(16),
            user_id=user_id,
            secret=_digest(secret),
            created=now,
            expires=now + self.settings.session_ttl_seconds,
        )
        self._sessions[session.id] = session
        return session, secret

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60
        for session_id in [s.id for s in self._sessions.values() if s.expires <= now]:
            del self._sessions[session_id]

    def _issue(self, user: User, session: _Session, cookie: str | None, now: float) -> Issued:
        left = max(1, int(session.expires - now))
        ttl = min(self.settings.access_ttl_seconds, left)
        token = self._tokens.issue(
            user.id, ttl=ttl, sid=session.id, amr=["pwd"], jti=secrets.token_urlsafe(9)
        )
        return Issued(
            user=user,
            access_token=token,
            expires_in=ttl,
            session_id=session.id,
            refresh=cookie,
            refresh_max_age=left,
        )

    def _locked_now(self, account: str, address: str, now: float) -> float:
        with self._lock:
            return max(
                self._accounts.locked_for(account, now), self._addresses.locked_for(address, now)
            )

    def _locked(self, seconds: float) -> LoginRefused:
        wait = max(1, math.ceil(seconds))
        return LoginRefused(
            429, f"too many failed attempts: try again in {_minutes(wait)}", retry_after=wait
        )

    def _failed(
        self,
        user: User | None,
        account: str,
        address: str,
        client: str | None,
        now: float,
        action: str,
    ) -> None:
        with self._lock:
            account_locked = self._accounts.fail(account, now)
            address_locked = self._addresses.fail(address, now)
        reason = "wrong password" if user is not None else "unknown email or no password set"
        self._audit(user, action, False, client, reason=reason)
        if account_locked:
            self._audit(
                user,
                "login_lockout",
                False,
                client,
                target=account if user is not None else "email:unknown",
                reason=(
                    f"{self.settings.login_max_failures} failed attempts within "
                    f"{self.settings.login_window_seconds} s"
                ),
                locked_seconds=self.settings.login_lockout_seconds,
            )
            raise self._locked(self.settings.login_lockout_seconds)
        if address_locked:
            self._audit(
                user,
                "login_lockout",
                False,
                client,
                target=address,
                reason=(
                    f"{self.settings.login_max_failures_per_ip} failed attempts from this "
                    f"address within {self.settings.login_window_seconds} s"
                ),
                locked_seconds=self.settings.login_lockout_seconds,
            )
            raise self._locked(self.settings.login_lockout_seconds)

    def _audit(
        self,
        user: User | None,
        action: str,
        allowed: bool,
        client: str | None,
        *,
        target: str | None = None,
        reason: str | None = None,
        **details: object,
    ) -> None:
        audit(
            user.id if user is not None else "unknown",
            user.role.value if user is not None else "none",
            action,
            allowed=allowed,
            target=target or (f"user:{user.id}" if user is not None else None),
            reason=reason,
            client=client,
            **details,
        )
