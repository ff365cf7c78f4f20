"""RFC 4028 session timers on bridged SIP calls.

Each side of a bridged call has its own session timer, as each is its own dialog: the
caller's (we are its UAS) and the answering phone's (we are its UAC). Where the peer
refreshes, we answer its refreshes (a body-less UPDATE here, a re-INVITE relayed by the
B2BUA) and end the call if none comes in time (§10); where we refresh, we send an UPDATE (or
a re-INVITE repeating our session description, to a peer that does not allow UPDATE) at half
the interval. A session that expires or cannot be refreshed ends the whole call: the B2BUA's
`end_call` sends a BYE to both sides, so no call is left "live" behind a dead peer.

`SessionTimers` works on the B2BUA's `SipCall` records (their dialogs, `session_timers`,
`session_since`, `sdp_out`) with the endpoint's clock, timers and senders passed in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from bridge.calls.events import Side
from bridge.observability.logging import call_context
from bridge.observability.metrics import Metrics
from bridge.sip.addressing import next_hop
from bridge.sip.dialog import (
    MIN_SE_FLOOR,
    Dialog,
    DialogError,
    DialogState,
    Role,
    ViaSpec,
    check_session_expires,
    parse_session_expires,
    session_timer_answer,
)
from bridge.sip.model import SipRequest, SipResponse, make_response
from bridge.sip.transaction import Address

if TYPE_CHECKING:
    from bridge.sip.b2bua import SipCall

log = structlog.get_logger("bridge.sip.calls")


@dataclass(frozen=True, slots=True)
class SessionTimerSettings:
    """RFC 4028 on our calls. `expires`: the interval we ask of the phones we ring and grant
    to a caller that supports timers but asked for none (0: no timer of our own; a caller's
    own Session-Expires is still honoured). `min_se`: shorter intervals get a 422."""

    expires: int = 1800
    min_se: int = MIN_SE_FLOOR


@dataclass(eq=False)
class _Refresh:
    """A session refresh we sent on one side of a bridged call (RFC 4028 §7.4)."""

    call: SipCall
    side: Side
    request: SipRequest
    destination: Address
    transport: str
    attempts: int = 1


class SessionTimers:
    """See the module docstring."""

    def __init__(
        self,
        settings: SessionTimerSettings,
        *,
        clock: Callable[[], float],
        schedule: Callable[[float, Callable[[], None]], object],
        cancel_timer: Callable[[object], None],
        send_request: Callable[[SipRequest, Address, str], str],
        send_stateless: Callable[[SipRequest | SipResponse, Address, str], None],
        respond: Callable[[str, SipResponse], None],
        local: Callable[[str], ViaSpec],
        metrics: Metrics,
        is_live: Callable[[SipCall], bool],
        end_call: Callable[[SipCall, Side], None],
    ) -> None:
        self.settings = settings
        self._now = clock
        self._schedule = schedule
        self._cancel_timer = cancel_timer
        self._send_request = send_request
        self._send_stateless = send_stateless
        self._respond = respond
        self._local = local
        self.metrics = metrics
        self._is_live = is_live
        self._end_call = end_call
        self.refreshes: dict[str, _Refresh] = {}  # our refresh's transaction id -> it

    # -- our refreshes' transactions -----------------------------------------------------------
    def owns(self, transaction_id: str) -> bool:
        return transaction_id in self.refreshes

    def response(self, transaction_id: str, response: SipResponse) -> None:
        """A response to one of our refreshes (a timeout is a 408)."""
        refresh = self.refreshes.get(transaction_id)
        if refresh is None or response.status < 200:
            return
        del self.refreshes[transaction_id]
        with call_context(refresh.call.call_id):
            self._refresh_answered(refresh, response)

    def cancel(self, call: SipCall) -> None:
        """The call is over: no more timers of its own."""
        for handle in call.session_timers.values():
            self._cancel_timer(handle)
        call.session_timers.clear()

    def caller_headers(self, invite: SipRequest) -> list[tuple[str, str]]:
        """Session-Expires (+ Require) for our 2xx to the caller."""
        if invite.headers.get("Session-Expires") is not None:
            return session_timer_answer(invite, prefer=Role.UAC)  # the caller's own interval
        expires = self.settings.expires
        if expires <= 0:
            return []
        if supports_timer(invite):
            return [("Session-Expires", f"{expires};refresher=uac"), ("Require", "timer")]
        # §9: a UAC without timer support is refreshed by us (it just sees re-INVITEs).
        return [("Session-Expires", f"{expires};refresher=uas")]

    def leg_headers(self, invite: SipRequest) -> list[tuple[str, str]]:
        """What our INVITE to a phone asks: the caller's interval, else ours (§7.1: no
        refresher, the phone chooses)."""
        interval = self.settings.expires
        asked = invite.headers.get("Session-Expires")
        if asked is not None:
            with contextlib.suppress(DialogError):
                interval = parse_session_expires(asked)[0]
        if interval <= 0:
            return [("Supported", "timer")]
        return [
            ("Supported", "timer"),
            ("Session-Expires", str(interval)),
            ("Min-SE", str(self.settings.min_se)),
        ]

    def answer_headers(self, request: SipRequest) -> list[tuple[str, str]]:
        try:
            return session_timer_answer(request, prefer=Role.UAC)
        except DialogError:
            return []

    def refuse_interval(self, dialog: Dialog, transaction_id: str, request: SipRequest) -> bool:
        """A refresh asking for less than our Min-SE gets a 422 (RFC 4028 §8.1)."""
        refused = check_session_expires(request, min_se=self.settings.min_se)
        if refused is None:
            return False
        extra = [(n, v) for n, v in refused.headers if n == "Min-SE"]
        response = make_response(request, refused.status, refused.reason, extra=extra)
        dialog.response_sent(request, response)
        self._respond(transaction_id, response)
        return True

    def answer_refresh(
        self, call: SipCall, dialog: Dialog, transaction_id: str, request: SipRequest
    ) -> None:
        """A body-less UPDATE only refreshes the session: answered here, not relayed (the
        other side has its own timer, and may not even allow UPDATE)."""
        side = side_of(call, dialog)
        local = self._local(call.transport if side is Side.CALLER else self._transport(call))
        extra = [
            ("Contact", f"<sip:bridge@{local.sent_by}{local.contact_params}>"),
            *self.answer_headers(request),
        ]
        response = make_response(request, 200, "OK", extra=extra)
        dialog.response_sent(request, response)
        self._respond(transaction_id, response)
        log.info("sip_session_refreshed", side=side.value, by="peer")
        self.arm(call, side)

    @staticmethod
    def _transport(call: SipCall) -> str:
        return call.winner.transport if call.winner is not None else call.transport

    def _side_dialog(self, call: SipCall, side: Side) -> tuple[Dialog, Address, str] | None:
        if side is Side.CALLER:
            dialog = call.caller_dialog
            if dialog is None:
                return None
            return dialog, next_hop(dialog, call.source), call.transport
        winner = call.winner
        if winner is None or winner.dialog is None:
            return None
        return winner.dialog, winner.destination, winner.transport

    def arm(self, call: SipCall, side: Side) -> None:
        """(Re)start one side's session timer from now, after the dialog's latest
        negotiation; nothing when that side has none."""
        pending = call.session_timers.pop(side, None)
        if pending is not None:
            self._cancel_timer(pending)
        found = self._side_dialog(call, side)
        if found is None or not self._is_live(call):
            return
        dialog = found[0]
        timer = dialog.session_timer
        if timer is None or dialog.state is DialogState.TERMINATED:
            return
        now = self._now()
        call.session_since[side] = now
        due = timer.refresh_due_at(now)
        if due is not None:
            call.session_timers[side] = self._schedule(
                due, lambda: self._session_refresh(call, side)
            )
        else:
            call.session_timers[side] = self._schedule(
                timer.bye_due_at(now), lambda: self._session_expired(call, side, "expired")
            )

    def _session_refresh(
        self, call: SipCall, side: Side, method: str | None = None, attempts: int = 1
    ) -> None:
        call.session_timers.pop(side, None)
        found = self._side_dialog(call, side)
        if found is None or not self._is_live(call):
            return
        dialog, destination, transport = found
        with call_context(call.call_id):
            if dialog.invite_in_progress:
                # A re-INVITE is under way on this side; it refreshes the session too.
                call.session_timers[side] = self._schedule(
                    self._now() + 2.0, lambda: self._session_refresh(call, side)
                )
                return
            if method is None:
                method = "UPDATE" if self._peer_allows(call, side, "UPDATE") else "INVITE"
            body = call.sdp_out.get(side, b"") if method == "INVITE" else b""
            local = self._local(transport)
            try:
                request = dialog.create_refresh(
                    method,
                    via=local,
                    contact=f"sip:bridge@{local.sent_by};transport={transport.lower()}",
                    body=body,
                    content_type="application/sdp" if body else None,
                )
            except DialogError as exc:
                log.warning("sip_session_refresh_impossible", side=side.value, error=str(exc))
                return
            transaction_id = self._send_request(request, destination, transport)
            self.refreshes[transaction_id] = _Refresh(
                call, side, request, destination, transport, attempts
            )
            log.info("sip_session_refresh_sent", side=side.value, method=method)

    def _refresh_answered(self, refresh: _Refresh, response: SipResponse) -> None:
        call, side, request = refresh.call, refresh.side, refresh.request
        found = self._side_dialog(call, side)
        if found is None or not self._is_live(call):
            return
        dialog = found[0]
        status = response.status
        if status != 408:  # a timeout is no response the dialog should see
            try:
                dialog.receive_response(response)
            except DialogError as exc:
                log.info("sip_bad_response", error=str(exc), status=status)
        if request.method == "INVITE" and 200 <= status < 300:
            number = int((request.headers.get("CSeq") or "1").split()[0])
            ack = dialog.create_ack(number, via=self._local(refresh.transport))
            self._send_stateless(ack, refresh.destination, refresh.transport)
        if 200 <= status < 300:
            log.info("sip_session_refreshed", side=side.value, by="bridge")
            self.arm(call, side)
        elif status == 422 and refresh.attempts < 2:
            # The dialog raised the interval to the 422's Min-SE: ask again, once.
            self._session_refresh(call, side, request.method, refresh.attempts + 1)
        elif status in (405, 501) and request.method == "UPDATE":
            self._session_refresh(call, side, "INVITE")  # UPDATE refused after all
        elif status == 491:
            low, high = dialog.reinvite_retry_window()
            call.session_timers[side] = self._schedule(
                self._now() + (low + high) / 2, lambda: self._session_refresh(call, side)
            )
        elif status in (408, 481) or dialog.state is DialogState.TERMINATED:
            self._session_expired(call, side, "refresh_failed")  # §10: BYE at once
        else:
            # Any other refusal: the session lasts until it expires (§10), unless refreshed.
            timer = dialog.session_timer
            since = call.session_since.get(side, self._now())
            deadline = timer.expires_at(since) if timer is not None else self._now()
            call.session_timers[side] = self._schedule(
                deadline, lambda: self._session_expired(call, side, "refresh_failed")
            )
            log.warning("sip_session_refresh_refused", side=side.value, status=status)

    def _session_expired(self, call: SipCall, side: Side, reason: str) -> None:
        """No refresh in time (or one failed): BYE to both sides (RFC 4028 §10)."""
        call.session_timers.pop(side, None)
        if not self._is_live(call):
            return
        with call_context(call.call_id):
            log.warning("sip_session_timeout", side=side.value, reason=reason)
            self.metrics.sip_session_timeouts.labels(reason=reason).inc()
            self._end_call(call, side)

    def _peer_allows(self, call: SipCall, side: Side, method: str) -> bool:
        if side is Side.CALLER:
            message: SipRequest | SipResponse | None = call.invite
        else:
            message = call.winner.answer if call.winner is not None else None
        if message is None:
            return False
        allowed = {m.upper() for m in message.headers.values("Allow")}
        return method in allowed


def side_of(call: SipCall, dialog: Dialog) -> Side:
    return Side.CALLER if dialog is call.caller_dialog else Side.CALLEE


def other_side(side: Side) -> Side:
    return Side.CALLEE if side is Side.CALLER else Side.CALLER


def supports_timer(message: SipRequest) -> bool:
    # (`k`, the compact form, was expanded to Supported by the parser.)
    return any(tag.lower() == "timer" for tag in message.headers.values("Supported"))
