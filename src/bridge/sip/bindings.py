"""Registrar bindings (RFC 3261 §10.3), sans-I/O: contacts per user, expiry, flows.

The REGISTER handler authenticates and parses; this store applies §10.3 steps 6-8 to the
parsed contacts with a passed-in `now`, and reports what changed so presence can be told
(a user with `answer_by: ip_phone` is reachable while at least one binding is live).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class RegistrarSettings:
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600


@dataclass(frozen=True, slots=True)
class Flow:
    """Where a binding's REGISTER came from: responses and requests to it go back this way
    (NAT: the source address, not the Contact host)."""

    transport: str  # "udp" | "tcp"
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ContactRequest:
    """One Contact of a REGISTER, already parsed: its URI text, its `expires` parameter
    (None when absent) and its q value."""

    uri: str
    expires: int | None = None
    q: float | None = None


@dataclass(frozen=True, slots=True)
class Binding:
    user_id: str
    uri: str
    expires_at: float
    call_id: str
    cseq: int
    flow: Flow
    q: float | None = None
    reachable: bool = True

    def expires_in(self, now: float) -> int:
        return max(0, int(self.expires_at - now + 0.5))


class RegisterError(StrEnum):
    INTERVAL_TOO_BRIEF = "interval_too_brief"  # 423 with Min-Expires
    BAD_WILDCARD = "bad_wildcard"  # 400: '*' needs Expires: 0 and no other contact
    OUT_OF_ORDER = "out_of_order"  # 500: same Call-ID, CSeq not higher (§10.3 step 7)


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """What a REGISTER did: the user's bindings now (for the 200 OK), or an error, plus which
    contacts appeared and disappeared.

    The rule for presence, here and in `expire()` / `set_flow_reachable()`: a binding counts
    as one reachable endpoint while it is stored and `reachable`. So report endpoint_up for
    each `added` binding and endpoint_down for each `removed` one whose `reachable` is True."""

    bindings: tuple[Binding, ...] = ()
    error: RegisterError | None = None
    min_expires: int | None = None
    added: tuple[Binding, ...] = ()
    removed: tuple[Binding, ...] = ()


@dataclass(slots=True)
class _UserBindings:
    by_uri: dict[str, Binding] = field(default_factory=dict)


def contact_key(uri: str) -> str:
    """Contacts are compared as URIs (§10.3 step 7 via §19.1.4); comparing the text with the
    scheme and host lower-cased covers what phones send in practice."""
    scheme, sep, rest = uri.partition(":")
    if not sep:
        return uri
    user, at, hostpart = rest.rpartition("@")
    return f"{scheme.lower()}:{user}{at}{hostpart.lower()}"


class BindingStore:
    def __init__(self, settings: RegistrarSettings | None = None) -> None:
        self.settings = settings or RegistrarSettings()
        self._users: dict[str, _UserBindings] = {}
        self._count = 0  # bindings stored, kept as they change: the gauge reads it per REGISTER
        # Raised on every change: the journal (bridge.sip.state) writes when it moved.
        self.version = 0

    def __len__(self) -> int:
        return self._count

    def bindings(self, user_id: str, now: float) -> tuple[Binding, ...]:
        """The live bindings of a user (expired ones are not returned)."""
        user = self._users.get(user_id)
        if user is None:
            return ()
        return tuple(b for b in user.by_uri.values() if b.expires_at > now)

    def reachable_bindings(self, user_id: str, now: float) -> tuple[Binding, ...]:
        return tuple(b for b in self.bindings(user_id, now) if b.reachable)

    def register(
        self,
        user_id: str,
        contacts: list[ContactRequest] | str,
        expires_header: int | None,
        call_id: str,
        cseq: int,
        flow: Flow,
        now: float,
    ) -> RegisterResult:
        """Apply one REGISTER. `contacts` is the parsed Contact list, or "*" for the wildcard,
        or [] for a query. Nothing changes when an error is returned."""
        settings = self.settings
        user = self._users.setdefault(user_id, _UserBindings())
        if contacts == "*":
            if expires_header != 0:
                return RegisterResult(error=RegisterError.BAD_WILDCARD)
            removed = []
            for binding in list(user.by_uri.values()):
                if binding.call_id == call_id and cseq <= binding.cseq:
                    return RegisterResult(error=RegisterError.OUT_OF_ORDER)
                removed.append(binding)
            user.by_uri.clear()
            self._count -= len(removed)
            self.version += 1
            return RegisterResult(bindings=(), removed=tuple(removed))
        assert not isinstance(contacts, str)
        # Work out every change first: a REGISTER applies whole or not at all.
        changes: list[tuple[str, Binding | None, Binding | None]] = []
        for contact in contacts:
            asked = contact.expires if contact.expires is not None else expires_header
            expires = settings.default_expires if asked is None else asked
            if 0 < expires < settings.min_expires:
                return RegisterResult(
                    error=RegisterError.INTERVAL_TOO_BRIEF, min_expires=settings.min_expires
                )
            expires = min(expires, settings.max_expires)
            key = contact_key(contact.uri)
            existing = user.by_uri.get(key)
            if existing is not None and existing.call_id == call_id and cseq <= existing.cseq:
                return RegisterResult(error=RegisterError.OUT_OF_ORDER)
            if expires == 0:
                changes.append((key, existing, None))
            else:
                new = Binding(
                    user_id=user_id,
                    uri=contact.uri,
                    expires_at=now + expires,
                    call_id=call_id,
                    cseq=cseq,
                    flow=flow,
                    q=contact.q,
                )
                changes.append((key, existing, new))
        added: list[Binding] = []
        removed: list[Binding] = []
        before = len(user.by_uri)
        for key, old, new in changes:
            if new is None:
                if old is not None:
                    del user.by_uri[key]
                    removed.append(old)
                continue
            user.by_uri[key] = new
            if old is None or not old.reachable:
                added.append(new)
        self._count += len(user.by_uri) - before
        if changes:
            self.version += 1
        if not user.by_uri:
            del self._users[user_id]
        return RegisterResult(
            bindings=self.bindings(user_id, now), added=tuple(added), removed=tuple(removed)
        )

    def expire(self, now: float) -> list[Binding]:
        """Drop bindings whose time is up; returns them (for presence and metrics)."""
        gone: list[Binding] = []
        for user_id in list(self._users):
            user = self._users[user_id]
            for key, binding in list(user.by_uri.items()):
                if binding.expires_at <= now:
                    del user.by_uri[key]
                    gone.append(binding)
                    self._count -= 1
            if not user.by_uri:
                del self._users[user_id]
        if gone:
            self.version += 1
        return gone

    def next_expiry(self) -> float | None:
        times = [b.expires_at for u in self._users.values() for b in u.by_uri.values()]
        return min(times) if times else None

    def set_flow_reachable(self, flow: Flow, reachable: bool) -> list[Binding]:
        """A keepalive failed (or recovered) on `flow`: mark its bindings; returns the
        bindings whose reachability changed."""
        changed: list[Binding] = []
        for user in self._users.values():
            for key, binding in list(user.by_uri.items()):
                if binding.flow == flow and binding.reachable != reachable:
                    user.by_uri[key] = replace(binding, reachable=reachable)
                    changed.append(user.by_uri[key])
        if changed:
            self.version += 1
        return changed

    def remove_user(self, user_id: str) -> list[Binding]:
        """A deleted or suspended user: their phones stop ringing at once."""
        user = self._users.pop(user_id, None)
        if user is None:
            return []
        self._count -= len(user.by_uri)
        self.version += 1
        return list(user.by_uri.values())

    def all(self) -> list[Binding]:
        """Every binding stored (the journal's snapshot)."""
        return [b for u in self._users.values() for b in u.by_uri.values()]

    def restore(self, bindings: list[Binding], now: float) -> list[Binding]:
        """Bindings read back after a restart (bridge.sip.state), those not expired; a
        contact registered meanwhile is kept. Returns the ones added."""
        added = []
        for binding in bindings:
            if binding.expires_at <= now:
                continue
            user = self._users.setdefault(binding.user_id, _UserBindings())
            key = contact_key(binding.uri)
            if key in user.by_uri:
                continue
            user.by_uri[key] = binding
            self._count += 1
            added.append(binding)
        if added:
            self.version += 1
        return added

    def flows(self) -> dict[Flow, str]:
        """Every flow with a binding, and one contact URI registered on it (a keepalive
        OPTIONS goes to that URI, so the phone sees a request for one of its own lines)."""
        return {b.flow: b.uri for u in self._users.values() for b in u.by_uri.values()}
