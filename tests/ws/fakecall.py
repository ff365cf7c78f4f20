"""A call layer in miniature, in-process: what a dial path does with the offer service.

One call may ring app users (offers over the WebSocket) and other legs that the fake answers
itself (a desk phone, a number). The first answer across all legs wins, exactly as the
`CallMachine` decides it; the offers of everyone else end with `answered_elsewhere`.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from bridge.calls.events import LegReason
from bridge.calls.ports import Answerer
from bridge.ws.offers import OfferService, OfferStatus
from tests.conftest import FakeClock


class FakeCallLayer:
    def __init__(self, offers: OfferService, clock: FakeClock, decide_seconds: float = 0.0):
        self.offers = offers
        self.clock = clock
        # > 0: on_accept answers later (an async call layer, e.g. one that must talk to a
        # SIP dialog first), so several users' accepts are pending at once.
        self.decide_seconds = decide_seconds
        self.winner: dict[str, tuple[str, str]] = {}  # call id -> (user id, via)
        self.accepts: list[tuple[str, str, str, str | None]] = []
        self.verdicts: list[bool] = []
        self.rejects: list[tuple[str, str, str]] = []
        self.unreachable: list[tuple[str, str]] = []

    def ring(
        self, call_id: str, users: list[str], sdp: str | None = None, seconds: float = 30
    ) -> dict[str, OfferStatus]:
        return {
            user: self.offers.offer(
                call_id,
                user,
                caller="+15557770001",
                line="+15550100",
                ring_group="sales",
                expires_at=self.clock() + timedelta(seconds=seconds),
                sdp=sdp,
                listener=self,
            )
            for user in users
        }

    # -- OfferListener ---------------------------------------------------------------------
    def on_accept(self, call_id: str, user_id: str, session_id: str, sdp: str | None):  # type: ignore[no-untyped-def]
        self.accepts.append((call_id, user_id, session_id, sdp))
        if self.decide_seconds:
            return self._decide_later(call_id, user_id)
        return self._decide(call_id, user_id, "apps")

    async def _decide_later(self, call_id: str, user_id: str) -> bool:
        await asyncio.sleep(self.decide_seconds)
        return self._decide(call_id, user_id, "apps")

    def on_reject(self, call_id: str, user_id: str, session_id: str) -> None:
        self.rejects.append((call_id, user_id, session_id))

    def on_unreachable(self, call_id: str, user_id: str) -> None:
        self.unreachable.append((call_id, user_id))

    # -- the other legs --------------------------------------------------------------------
    def phone_answers(self, call_id: str, user_id: str) -> bool:
        """A desk phone's 200 OK reaches the call layer."""
        return self._decide(call_id, user_id, "ip_phone")

    def _decide(self, call_id: str, user_id: str, via: str) -> bool:
        won = call_id not in self.winner
        if won:
            self.winner[call_id] = (user_id, via)
            by = Answerer(user_id, via)
            self.offers.end_offer(call_id, None, LegReason.ANSWERED_ELSEWHERE, answerer=by)
        if via == "apps":
            self.verdicts.append(won)
        return won
