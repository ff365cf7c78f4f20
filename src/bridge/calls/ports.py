"""What a dial path needs of the other adapters, as protocols (the adapters depend on
`calls`, never on each other).

`AppOffers` is how the SIP B2BUA (or any dial path) rings users who answer with apps: the
WebSocket gateway's `bridge.ws.offers.OfferService` implements it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Any, Protocol

from bridge.calls.events import LegReason


class OfferListener(Protocol):
    """The dial path's side of an offer: told about accepts, rejects, lost sessions."""

    def on_accept(
        self, call_id: str, user_id: str, session_id: str, sdp: str | None
    ) -> bool | Awaitable[bool | None] | None:
        """The user accepted (its first session to do so): True if that won the call; None
        if an accept there cannot answer it (it is answered in the carrier's voice SDK)."""
        ...

    def on_reject(self, call_id: str, user_id: str, session_id: str) -> None: ...

    def on_unreachable(self, call_id: str, user_id: str) -> None: ...


class AppOffers(Protocol):
    def offer(
        self,
        call_id: str,
        user_id: str,
        *,
        caller: str | None,
        line: str | None,
        ring_group: str | None,
        expires_at: datetime,
        sdp: str | None = None,
        listener: Any = None,
    ) -> str:
        """Ring the user's app sessions; "unreachable" when it has none (nor a grace)."""
        ...

    def end_offer(
        self, call_id: str, user_id: str | None, reason: LegReason, *, answered_by: Any = None
    ) -> int: ...

    def push_call_state(
        self, call_id: str, user_id: str, state: Any, *, reason: LegReason | None = None,
        wrap_up_until: datetime | None = None,
    ) -> int: ...

    def answered(self, call_id: str, user_id: str) -> bool:
        """The user answered some other way (the carrier's voice SDK): offer over."""
        ...

    def answered_by(self, user_id: str | None, via: str, device: str | None = None) -> Any: ...
