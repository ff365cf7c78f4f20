"""Ringing app users: offers to every session of a user, accepts, rejects, typed endings.

The service does not decide who wins a call: a call may ring app users, desk phones and
numbers at once, and only the call layer (the `CallMachine` behind a dial path) sees every
leg. So an accept is reported to the call layer's `OfferListener.on_accept`, which answers
whether this accept won; the call layer then ends the other offers with `end_offer`. What the
service does guarantee for app users:

- one user, several sessions: the first accept of a user is the only one reported; a second
  session's accept while the first is being decided gets `call.ended answered_elsewhere`;
- a winning session gets `call.state answered`; every other session of that user, and of
  every other user whose offer the call layer ends, gets `call.ended` with the typed reason;
- an accept for an offer that is over (a late accept) gets `call.ended` with the reason that
  offer ended with (`answered_elsewhere` when the call was answered elsewhere), never an
  answer: a half-connected call cannot happen.

Everything here runs on the daemon's event loop (the dial paths and the WebSocket handlers
do); call it from the loop thread only.

How the call runner (`bridge.calls.runner`, for every dial path) uses it, as the
`AppOffers` port of `bridge.calls.ports`:

    status = offers.offer(call_id, user_id, caller=..., line=..., ring_group=...,
                          expires_at=..., sdp=caller_sdp, listener=runner)
    # UNREACHABLE: no session and no grace -> machine.leg_failed(leg, UNREACHABLE)
    def on_accept(call_id, user_id, session_id, sdp):       # may be async
        outputs = machine.leg_answered(leg_of[call_id, user_id], now)
        run(outputs)   # CancelLeg(answered_elsewhere) -> offers.end_offer(call_id, other, ...)
        return the accepting user is the one bridged
    CancelLeg(leg, reason)   -> offers.end_offer(call_id, user_id, reason, answerer=...)
    MarkCallEnded            -> offers.push_call_state(call_id, user_id, "ended", ...)
"""

from __future__ import annotations

import inspect
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

import structlog

from bridge.calls.events import LegReason
from bridge.calls.ports import Answerer, AnswerRefused, OfferListener
from bridge.observability.metrics import Metrics
from bridge.ws.exceptions import ErrorCode, FrameError
from bridge.ws.schemas import (
    Ack,
    AnsweredBy,
    CallAccept,
    CallEndedFrame,
    CallHangup,
    CallOffer,
    CallReject,
    CallStateFrame,
    CallStateName,
    FrameId,
    MonitorEnded,
    MonitorOffer,
)
from bridge.ws.sessions import Session

log = structlog.get_logger("bridge.ws")

# How many ended offers are remembered to answer late accepts with their real reason.
ENDED_MEMORY = 20_000
# An offer the call layer never ended is dropped this long after its expiry (a leak guard:
# the call layer's own timer normally ends it with `timeout` first).
EXPIRY_MARGIN = timedelta(seconds=5)


class SessionHub(Protocol):
    """What the offer service needs of the gateway."""

    def sessions_of(self, user_id: str) -> Collection[Session]: ...

    def reachable(self, user_id: str) -> bool: ...

    def user_name(self, user_id: str) -> str | None: ...


class OfferStatus(StrEnum):
    DELIVERED = "delivered"  # sent to at least one session
    PENDING = "pending"  # no session right now, but within the grace period: sent on reconnect
    UNREACHABLE = "unreachable"  # no session, no grace: nothing kept


class OfferResult(StrEnum):
    """`bridge_offers_total{result}`: how each offer (one call, one user) ended."""

    ANSWERED = "answered"
    ANSWERED_ELSEWHERE = "answered_elsewhere"
    CALLER_HANGUP = "caller_hangup"
    TIMEOUT = "timeout"
    REJECTED = "rejected"
    LAYER_MOVED_ON = "layer_moved_on"
    UNREACHABLE = "unreachable"


@dataclass(slots=True)
class Offer:
    call_id: str
    user_id: str
    text: str  # the encoded `call.offer` frame, sent as is to every session
    expires_at: datetime
    started: float  # perf counter, for bridge_offer_to_answer_seconds
    listener: OfferListener | None
    accepting: str | None = None  # the session whose accept the call layer is deciding
    # Sessions owed an answer that echoes their frame's id (accepts, a reject): session id ->
    # frame id. A second session's accept while the first is decided waits here for it.
    replies: dict[str, FrameId | None] = field(default_factory=dict)
    # An end_offer that arrived while an accept was being decided: applied if it lost.
    deferred: tuple[LegReason, AnsweredBy | None] | None = None


class OfferService:
    def __init__(
        self,
        hub: SessionHub,
        metrics: Metrics,
        clock: Callable[[], datetime],
        listener: OfferListener | None = None,
    ) -> None:
        self._hub = hub
        self._metrics = metrics
        self._clock = clock
        # Used for offers made without a listener of their own.
        self.listener: OfferListener = listener or FirstAcceptWins(self)
        self._offers: dict[tuple[str, str], Offer] = {}
        self._by_call: dict[str, set[str]] = {}
        self._ended: OrderedDict[tuple[str, str], tuple[LegReason, AnsweredBy | None]] = (
            OrderedDict()
        )
        # `call.hangup`: (call id, user id) -> None when hung up, else why not (the runner's)
        self.hangup_call: Callable[[str, str], str | None] | None = None

    # -- the call layer's API --------------------------------------------------------------
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
        listener: OfferListener | None = None,
    ) -> OfferStatus:
        """Ring `user_id` for `call_id` on every session it has (and on sessions that connect
        while it rings). Offering the same call to the same user again refreshes it."""
        if not self._hub.reachable(user_id):
            self._metrics.offers.labels(result=OfferResult.UNREACHABLE).inc()
            return OfferStatus.UNREACHABLE
        frame = CallOffer(
            call_id=call_id, caller=caller, line=line, ring_group=ring_group,
            expires_at=expires_at, sdp=sdp,
        )  # fmt: skip
        offer = Offer(
            call_id=call_id,
            user_id=user_id,
            text=frame.text(),
            expires_at=expires_at,
            started=time.perf_counter(),
            listener=listener,
        )
        self._offers[call_id, user_id] = offer
        self._by_call.setdefault(call_id, set()).add(user_id)
        self._ended.pop((call_id, user_id), None)
        sessions = self._hub.sessions_of(user_id)
        for session in sessions:
            session.send(offer.text, "call.offer")
        return OfferStatus.DELIVERED if sessions else OfferStatus.PENDING

    def offer_monitor(self, call_id: str, user_id: str, mode: str, sdp: str) -> int:
        """A supervisor's `monitor.offer` to every session of theirs; how many got it."""
        text = MonitorOffer(call_id=call_id, mode=mode, sdp=sdp).text()
        sessions = self._hub.sessions_of(user_id)
        for session in sessions:
            session.send(text, "monitor.offer")
        return len(sessions)

    def end_monitor(self, call_id: str, user_id: str, reason: str) -> None:
        text = MonitorEnded(call_id=call_id, reason=reason).text()
        for session in self._hub.sessions_of(user_id):
            session.send(text, "monitor.ended")

    def end_offer(
        self,
        call_id: str,
        user_id: str | None,
        reason: LegReason,
        *,
        answerer: Answerer | None = None,
    ) -> int:
        """Stop ringing `user_id` (None: every user still offered this call); their sessions
        get `call.ended` with `reason` (and, answered elsewhere, who answered). Returns how
        many offers ended."""
        answered_by = None
        if answerer is not None:
            answered_by = self.answered_by(answerer.user_id, answerer.via, answerer.device)
        users = [user_id] if user_id is not None else list(self._by_call.get(call_id, ()))
        ended = 0
        for user in users:
            offer = self._offers.get((call_id, user))
            if offer is None:
                continue
            if offer.accepting is not None:
                # Its accept is being decided right now: the verdict settles it.
                offer.deferred = (reason, answered_by)
                continue
            self._finish(offer, reason, answered_by)
            ended += 1
        return ended

    def push_call_state(
        self,
        call_id: str,
        user_id: str,
        state: CallStateName,
        *,
        reason: LegReason | None = None,
        wrap_up_until: datetime | None = None,
    ) -> int:
        """`call.state` (answered, held, ended; the wrap-up end) to every session of the user
        on the call. Returns how many sessions it reached."""
        text = CallStateFrame(
            call_id=call_id, state=state, reason=reason, wrap_up_until=wrap_up_until
        ).text()
        sessions = self._hub.sessions_of(user_id)
        for session in sessions:
            session.send(text, "call.state")
        return len(sessions)

    def answered(self, call_id: str, user_id: str) -> bool:
        """The user answered this call some other way than an accept here (the carrier's
        voice SDK): the offer ends as answered and the user's sessions get `call.state
        answered`. False when there was no such offer."""
        offer = self._offers.get((call_id, user_id))
        if offer is None:
            return False
        self._drop(offer, OfferResult.ANSWERED)
        self._metrics.offer_to_answer_seconds.observe(time.perf_counter() - offer.started)
        # A late accept here then hears who answered, as after a won accept (`_won`).
        self._remember(
            (call_id, user_id), LegReason.ANSWERED_ELSEWHERE, self.answered_by(user_id, "apps")
        )
        self.push_call_state(call_id, user_id, CallStateName.ANSWERED)
        return True

    def answered_by(self, user_id: str | None, via: str, device: str | None = None) -> AnsweredBy:
        """Who answered, for `end_offer(..., answered_by=...)` ("answered by Bob on desk
        phone")."""
        name = self._hub.user_name(user_id) if user_id is not None else None
        return AnsweredBy(user_id=user_id, name=name, via=via, device=device)

    def ringing(self, call_id: str | None = None) -> list[tuple[str, str]]:
        """(call id, user id) of the offers still ringing."""
        return [key for key in self._offers if call_id is None or key[0] == call_id]

    # -- from the gateway ------------------------------------------------------------------
    def session_joined(self, session: Session) -> None:
        """A new session of a user: it rings for whatever that user is being offered."""
        user_id = session.user_id
        for (_, user), offer in list(self._offers.items()):
            if user == user_id and offer.accepting is None:
                session.send(offer.text, "call.offer")

    async def accept(self, session: Session, frame: CallAccept) -> None:
        assert session.user_id is not None
        key = (frame.call_id, session.user_id)
        offer = self._offers.get(key)
        if offer is None:
            self._late(session, key, frame.id)
            return
        offer.replies[session.session_id] = frame.id
        if offer.accepting is not None:
            return  # another session of this user got there first: it hears that verdict
        offer.accepting = session.session_id
        listener = offer.listener or self.listener
        try:
            verdict = listener.on_accept(
                frame.call_id, session.user_id, session.session_id, frame.sdp
            )
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except AnswerRefused as exc:
            # the answer was unusable, not the accept: say why, and the offer keeps ringing
            offer.accepting = None
            offer.replies.pop(session.session_id, None)
            if offer.deferred is not None:  # ended while we asked: settle it now
                self._finish(offer, *offer.deferred)
            log.info("offer_answer_refused", call_id=frame.call_id, user_id=key[1], why=exc.reason)
            raise FrameError(ErrorCode.INVALID_FRAME, exc.reason, field="sdp") from None
        except Exception:
            log.exception("offer_listener_failed", call_id=frame.call_id, user_id=key[1])
            verdict = False
        offer.accepting = None
        if self._offers.get(key) is not offer:  # replaced by a new offer meanwhile
            self._late(session, key, frame.id)
            return
        if verdict is None:
            offer.replies.pop(session.session_id, None)
            if offer.deferred is not None:  # ended while we asked: settle it now
                self._finish(offer, *offer.deferred)
            raise FrameError(
                ErrorCode.CONFLICT, "this call is answered in the voice SDK, where it rings"
            )
        if verdict:
            self._won(offer, session)
            return
        reason, answered_by = offer.deferred or (LegReason.ANSWERED_ELSEWHERE, None)
        self._finish(offer, reason, answered_by)

    def hangup(self, session: Session, frame: CallHangup) -> None:
        """The user ends the call they answered in the app (the caller gets a BYE); the
        `call.state ended` that follows goes to every session of theirs."""
        assert session.user_id is not None
        refused = (
            self.hangup_call(frame.call_id, session.user_id)
            if self.hangup_call is not None
            else "calls are not hung up here"
        )
        if refused is not None:
            raise FrameError(ErrorCode.NOT_FOUND, refused)
        session.send(Ack(id=frame.id).text(), "ack")

    def reject(self, session: Session, frame: CallReject) -> None:
        assert session.user_id is not None
        key = (frame.call_id, session.user_id)
        offer = self._offers.get(key)
        if offer is None:
            self._late(session, key, frame.id)
            return
        if offer.accepting is not None:
            raise FrameError(ErrorCode.NOT_FOUND, "this call is being answered on another session")
        offer.replies[session.session_id] = frame.id
        self._finish(offer, LegReason.REJECTED, None)
        listener = offer.listener or self.listener
        try:
            listener.on_reject(frame.call_id, session.user_id, session.session_id)
        except Exception:
            log.exception("offer_listener_failed", call_id=frame.call_id, user_id=key[1])

    def user_unreachable(self, user_id: str) -> None:
        """The user's last session is gone for good (grace over, suspended, deleted)."""
        for key, offer in list(self._offers.items()):
            if key[1] != user_id or offer.accepting is not None:
                continue
            self._drop(offer, OfferResult.UNREACHABLE)
            listener = offer.listener or self.listener
            try:
                listener.on_unreachable(offer.call_id, user_id)
            except Exception:
                log.exception("offer_listener_failed", call_id=offer.call_id, user_id=user_id)

    def expire(self) -> None:
        """Leak guard: end offers well past their expiry that the call layer forgot."""
        now = self._clock()
        for offer in list(self._offers.values()):
            if offer.accepting is None and now > offer.expires_at + EXPIRY_MARGIN:
                log.warning("offer_expired_unended", call_id=offer.call_id, user_id=offer.user_id)
                self._finish(offer, LegReason.TIMEOUT, None)

    # -- internals -------------------------------------------------------------------------
    def _drop(self, offer: Offer, result: OfferResult) -> None:
        key = (offer.call_id, offer.user_id)
        del self._offers[key]
        users = self._by_call.get(offer.call_id)
        if users is not None:
            users.discard(offer.user_id)
            if not users:
                del self._by_call[offer.call_id]
        self._metrics.offers.labels(result=result.value).inc()

    def _remember(
        self, key: tuple[str, str], reason: LegReason, answered_by: AnsweredBy | None
    ) -> None:
        self._ended[key] = (reason, answered_by)
        self._ended.move_to_end(key)
        while len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)

    def _finish(self, offer: Offer, reason: LegReason, answered_by: AnsweredBy | None) -> None:
        self._drop(offer, OfferResult(reason.value) if reason.value in _RESULTS else _OTHER)
        self._remember((offer.call_id, offer.user_id), reason, answered_by)
        frame = CallEndedFrame(call_id=offer.call_id, reason=reason, answered_by=answered_by)
        self._broadcast(offer, frame, "call.ended")

    def _won(self, offer: Offer, winner: Session) -> None:
        self._drop(offer, OfferResult.ANSWERED)
        self._metrics.offer_to_answer_seconds.observe(time.perf_counter() - offer.started)
        answered_by = self.answered_by(offer.user_id, "apps", winner.device)
        self._remember((offer.call_id, offer.user_id), LegReason.ANSWERED_ELSEWHERE, answered_by)
        answered = CallStateFrame(
            id=offer.replies.pop(winner.session_id, None),
            call_id=offer.call_id,
            state=CallStateName.ANSWERED,
        )
        winner.send(answered.text(), "call.state")
        elsewhere = CallEndedFrame(
            call_id=offer.call_id, reason=LegReason.ANSWERED_ELSEWHERE, answered_by=answered_by
        )
        self._broadcast(offer, elsewhere, "call.ended", skip=winner)
        log.info(
            "offer_answered",
            call_id=offer.call_id,
            user_id=offer.user_id,
            session_id=winner.session_id,
        )

    def _broadcast(
        self,
        offer: Offer,
        frame: CallEndedFrame,
        kind: str,
        skip: Session | None = None,
    ) -> None:
        """`frame` to every session of the offer's user; those owed an answer get it with
        their frame's id."""
        text = frame.text()
        for session in self._hub.sessions_of(offer.user_id):
            if session is skip:
                continue
            frame_id = offer.replies.get(session.session_id)
            if frame_id is None:
                session.send(text, kind)
            else:
                session.send(frame.model_copy(update={"id": frame_id}).text(), kind)

    def _late(self, session: Session, key: tuple[str, str], frame_id: FrameId | None) -> None:
        known = self._ended.get(key)
        if known is None:
            raise FrameError(ErrorCode.NOT_FOUND, f"no offer of call {key[0]!r} to you", "call_id")
        self._send_ended(session, key[0], known[0], known[1], frame_id)

    @staticmethod
    def _send_ended(
        session: Session,
        call_id: str,
        reason: LegReason,
        answered_by: AnsweredBy | None,
        frame_id: FrameId | None,
    ) -> None:
        frame = CallEndedFrame(id=frame_id, call_id=call_id, reason=reason, answered_by=answered_by)
        session.send(frame.text(), "call.ended")


_RESULTS = frozenset(result.value for result in OfferResult)
_OTHER = OfferResult.TIMEOUT  # callee_hangup cannot end an unanswered offer; count as timeout


class FirstAcceptWins:
    """The listener of offers that have no call layer behind them (test offers, the default):
    the first accept of each call wins and every other offer of that call ends with
    `answered_elsewhere`."""

    def __init__(self, offers: OfferService) -> None:
        self._offers = offers
        self._won: OrderedDict[str, str] = OrderedDict()  # call id -> winning user

    def on_accept(self, call_id: str, user_id: str, session_id: str, sdp: str | None) -> bool:
        if call_id in self._won:
            return False
        self._won[call_id] = user_id
        while len(self._won) > ENDED_MEMORY:
            self._won.popitem(last=False)
        by = Answerer(user_id, "apps")
        self._offers.end_offer(call_id, None, LegReason.ANSWERED_ELSEWHERE, answerer=by)
        return True

    def on_reject(self, call_id: str, user_id: str, session_id: str) -> None:
        return None

    def on_unreachable(self, call_id: str, user_id: str) -> None:
        return None
