"""Console passwords: argon2id hashes (argon2-cffi), the length policy, and a verify that costs
the same whether or not there is a hash to check.

Only hashes are ever stored (`User.password_hash`, in the directory file). Hashing costs about
a tenth of a second of CPU and 64 MiB (RFC 9106's second recommended profile, argon2-cffi's
default): callers run it off the event loop (FastAPI's thread pool for sync routes), and at
most `MAX_CONCURRENT` hashes run at once so a burst of logins cannot take every core.
"""

from __future__ import annotations

import secrets
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# The longest password accepted: argon2 pre-hashes its input, but a bound keeps request
# bodies and the work per attempt small. The shortest is a setting ([auth] password_min_length).
MAX_LENGTH = 256
MAX_CONCURRENT = 2


class PasswordRejected(ValueError):
    """A new password that breaks the policy; the message says why, fit for a 422 or stderr."""


def check_policy(password: str, min_length: int) -> None:
    if len(password) < min_length:
        raise PasswordRejected(f"the password must be at least {min_length} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordRejected(f"the password must be at most {MAX_LENGTH} characters")
    if password.strip() == "":
        raise PasswordRejected("the password must not be only spaces")


class Passwords:
    """Hash and verify. `hasher` is argon2-cffi's (its defaults unless a test passes a cheaper
    one); hashes made with other parameters still verify."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        # Verified against when there is no hash to check (unknown email, no password set),
        # so such an attempt takes as long as a wrong password. Made on first use: building
        # the daemon's parts stays cheap.
        self._dummy: str | None = None

    def hash(self, password: str) -> str:
        with self._slots:
            return self.hasher.hash(password)

    def warm(self) -> None:
        """Make the dummy hash now (the first login pays for it, whoever it names)."""
        if self._dummy is None:
            self._dummy = self.hash(secrets.token_urlsafe(24))

    def verify(self, stored: str | None, password: str) -> bool:
        """True when `password` matches `stored`; None (no hash) costs the same and is False."""
        if stored is None:
            self.warm()
        with self._slots:
            try:
                return self.hasher.verify(stored or self._dummy, password) and stored is not None
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False
