"""Synthetic calls for `POST /api/v1/ws/test-offers` ([ws] test_offers = true).

They ring app sessions through the real offer service, with `FirstAcceptWins` standing in
for a call layer: no caller, no media, not in the call registry (so they never hold up a
drain and never show on the board). Used by bench/ws_fanout.py and to check a client.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

import structlog

from bridge.calls.events import LegReason
from bridge.ws.offers import FirstAcceptWins, OfferService, OfferStatus
from bridge.ws.schemas import CallStateName

log = structlog.get_logger("bridge.ws")


class TestCalls:
    __test__ = False  # not a pytest class

    def __init__(self, offers: OfferService, clock: Callable[[], datetime]) -> None:
        self._offers = offers
        self._clock = clock
        self._listener = _EndAfterHold(offers)

    def start(
        self,
        user_ids: list[str],
        *,
        one_call: bool,
        ring_seconds: float,
        hold_seconds: float,
        caller: str,
        line: str | None,
    ) -> dict[str, object]:
        """Offer one call per user (or one call to all of them). Returns the call ids and
        how each offer went (delivered / pending / unreachable)."""
        expires_at = self._clock() + timedelta(seconds=ring_seconds)
        shared = f"test-{secrets.token_hex(6)}"
        calls: dict[str, str] = {}
        status: dict[str, int] = {s.value: 0 for s in OfferStatus}
        self._listener.hold_seconds = hold_seconds
        for user_id in user_ids:
            call_id = shared if one_call else f"test-{secrets.token_hex(6)}"
            calls[user_id] = call_id
            result = self._offers.offer(
                call_id,
                user_id,
                caller=caller,
                line=line,
                ring_group=None,
                expires_at=expires_at,
                listener=self._listener,
            )
            status[result.value] += 1
        loop = asyncio.get_running_loop()
        for call_id in set(calls.values()):
            loop.call_later(ring_seconds, self._timeout, call_id)
        log.info("ws_test_offers", users=len(user_ids), one_call=one_call, **status)
        return {"calls": calls, "offers": status}

    def _timeout(self, call_id: str) -> None:
        self._offers.end_offer(call_id, None, LegReason.TIMEOUT)


class _EndAfterHold(FirstAcceptWins):
    """First accept wins; the answered call then ends (`call.state ended`) after the hold."""

    hold_seconds: float = 0.0

    def on_accept(self, call_id: str, user_id: str, session_id: str, sdp: str | None) -> bool:
        won = super().on_accept(call_id, user_id, session_id, sdp)
        if won and self.hold_seconds > 0:
            end = partial(
                self._offers.push_call_state,
                call_id,
                user_id,
                CallStateName.ENDED,
                reason=LegReason.CALLER_HANGUP,
            )
            asyncio.get_running_loop().call_later(self.hold_seconds, end)
        return won
