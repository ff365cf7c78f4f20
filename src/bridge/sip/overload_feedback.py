"""RFC 7339 loss-based overload control: the `oc` Via parameters, both ways (docs/sip.md,
"Overload control").

**As a server** (a trunk that sends us INVITEs and asks for feedback with `;oc` in its top
Via): `LossFeedback` turns what the admission gate refused into the share of new calls the
trunk should not send at all (`oc=<percent>;oc-algo="loss"`), so it stops sending calls we
would only refuse, and spends its own fallback (another route, its own 503 to the caller)
instead of our 503s. The percentage is a control loop of our own (RFC 7339 leaves it to the
server): every `WINDOW` seconds, if some new calls were still refused, the share the trunk
drops grows to cover them (`1 - (1 - p)(1 - refused share)`); a window with none refused
lowers it by `CALM_STEP` points (unless new work is queueing: then it holds), so the trunk
comes back in steps, not all at once. It is
capped at `MAX_PERCENT`: some calls keep coming, and their answers carry fresh feedback.
Once back at 0 we say so for `LINGER` seconds with `oc=0;oc-validity=0` (stop now), then
add nothing again.

**As a client** (our INVITEs to the trunk carry `;oc;oc-algo="loss"`): `PeerFeedback` keeps
the newest feedback a trunk's responses carried (by `oc-seq`; older or repeated values are
ignored) until its `oc-validity` runs out, and `admits` draws against its percentage for each
new call: a call not sent fails at once as if the trunk had answered 503. In-dialog requests
are never held back.

Sans-I/O: every method takes `now` (and the random draw); nothing here reads a clock.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from bridge.text import ascii_digits

ALGORITHM = "loss"
WINDOW = 0.5  # seconds of admission counts per update of the percentage we send
CALM_STEP = 10  # points the percentage falls per window with nothing refused
MAX_PERCENT = 95
LINGER = 5.0  # seconds of "oc=0;oc-validity=0" after the percentage is back at 0
DEFAULT_VALIDITY_MS = 500  # a peer's feedback without oc-validity
CLIENT_PARAMS = f';oc;oc-algo="{ALGORITHM}"'

# One `oc` or `oc-*` Via parameter, with its value if any (quoted or a token).
_OC_PARAM = re.compile(r';\s*oc(?:-[A-Za-z]+)?\s*(?:=\s*(?:"[^"]*"|[^;,\s]*))?', re.IGNORECASE)
_PARAM = re.compile(
    r';\s*(oc(?:-[A-Za-z]+)?)\s*(?:=\s*("[^"]*"|[^;,\s]*))?(?=\s*(?:;|,|$))', re.IGNORECASE
)
_SEQ = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,5})?")
MAX_VALIDITY_MS = 60_000  # a peer's feedback holds at most this long (then we send again)


def _oc_params(via: str) -> dict[str, str | None]:
    """The `oc` and `oc-*` parameters of one Via value, names lower-cased: the first one of
    each name, but a value over none (a server that appended `oc=20` after the client's `oc`
    instead of replacing it still means 20)."""
    found: dict[str, str | None] = {}
    for name, value in _PARAM.findall(via):
        key = name.lower()
        if found.get(key) is None:
            found[key] = value if value != "" else None
    return found


def asks_for_feedback(via: str) -> bool:
    """Whether a request's top Via says its sender does loss-based overload control: an `oc`
    parameter, and `oc-algo` (absent: loss) listing "loss"."""
    if "oc" not in via.lower():
        return False  # the common case, without a regex
    params = _oc_params(via)
    if "oc" not in params:
        return False
    algorithms = params.get("oc-algo")
    if algorithms is None:
        return True
    names = {a.strip().lower() for a in algorithms.strip('"').split(",")}
    return ALGORITHM in names


def with_feedback(via: str, feedback: str) -> str:
    """`via` with its `oc` parameters replaced by ours (`feedback` starts with ';')."""
    return _OC_PARAM.sub("", via) + feedback


class LossFeedback:
    """The server's side (see the module doc). `update` once per `WINDOW` with the counts of
    new calls offered and refused since the last one; `params` for each response to a client
    that asks (None: nothing to add)."""

    def __init__(self, *, validity_ms: int = 1000) -> None:
        self.validity_ms = validity_ms
        self.percent = 0
        self._zero_since: float | None = None  # back at 0 since (None: never left it)
        self._next_update: float | None = None
        self._seen = (0, 0)  # (offered, refused) counts at the last update

    def update(self, now: float, offered: int, refused: int, *, queued: bool = False) -> bool:
        """Counts since start (the gate's); acts once a window has passed. `queued`: new work
        is waiting longer than it should though none was refused yet (the gate's load signal
        above half its target): the percentage holds rather than falls, so the client is not
        let back in while a queue builds. True when the percentage changed."""
        if self._next_update is None:
            self._next_update, self._seen = now + WINDOW, (offered, refused)
            return False
        if now < self._next_update:
            return False
        self._next_update = now + WINDOW
        new_offered, new_refused = offered - self._seen[0], refused - self._seen[1]
        self._seen = (offered, refused)
        before = self.percent
        if new_refused > 0 and new_offered > 0:
            share = min(1.0, new_refused / new_offered)
            kept = (1 - before / 100) * (1 - share)
            self.percent = min(MAX_PERCENT, math.ceil(100 * (1 - kept) - 1e-9))
        elif not (queued and new_offered > 0):  # (no calls: the load signal is stale)
            self.percent = max(0, before - CALM_STEP)
        if self.percent == 0 and before > 0:
            self._zero_since = now
        return self.percent != before

    def params(self, now: float) -> str | None:
        """The Via parameters for a response (RFC 7339 §5.2), or None: nothing to say."""
        if self.percent > 0:
            validity = self.validity_ms
        elif self._zero_since is not None and now - self._zero_since < LINGER:
            validity = 0  # "stop now"
        else:
            return None  # the common case: nothing to say
        return f';oc={self.percent};oc-validity={validity};oc-seq={now:.3f};oc-algo="{ALGORITHM}"'


@dataclass(slots=True)
class PeerFeedback:
    """The client's side: what one peer (the trunk) asked of us, as its responses said."""

    percent: int = 0
    until: float = 0.0  # the feedback holds until then
    seq: float = -1.0
    received: int = 0  # feedback values taken (for the log and metrics)

    def receive(self, now: float, via: str) -> bool:
        """The top Via of a response from the peer: True when it carried newer feedback."""
        if ";oc=" not in via.lower().replace(" ", ""):
            return False
        params = _oc_params(via)
        value, seq_text = params.get("oc"), params.get("oc-seq")
        if value is None or not ascii_digits(value) or seq_text is None:
            return False  # no value, or no sequence to order it by (RFC 7339 §5.2)
        if _SEQ.fullmatch(seq_text) is None:
            return False
        seq = float(seq_text)
        if seq <= self.seq:
            return False  # older or the same feedback: already taken
        algorithm = (params.get("oc-algo") or f'"{ALGORITHM}"').strip('"').strip().lower()
        if algorithm != ALGORITHM:
            return False
        validity_text = params.get("oc-validity")
        if validity_text is not None and not ascii_digits(validity_text):
            return False
        if validity_text is None:
            validity = DEFAULT_VALIDITY_MS
        else:  # (int() of thousands of digits raises: a long one is long anyway)
            validity = int(validity_text) if len(validity_text) <= 9 else MAX_VALIDITY_MS
        # (a feedback of 100 % for days would hold every call back with no way to hear better:
        # past this, we send again and take what the answers say)
        validity = min(validity, MAX_VALIDITY_MS)
        self.seq = seq
        self.percent = 100 if len(value) > 3 else min(100, int(value))
        self.until = now + validity / 1000
        self.received += 1
        return True

    def active(self, now: float) -> int:
        """The percentage of new calls to hold back now (0 once its validity ran out)."""
        return self.percent if now < self.until else 0

    def admits(self, now: float, draw: float) -> bool:
        """A new call toward the peer: sent (True) or held back; `draw` uniform in [0, 1)."""
        percent = self.active(now)
        return percent == 0 or draw * 100 >= percent
