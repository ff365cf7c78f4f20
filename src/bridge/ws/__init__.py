"""App-client gateway: `/ws`, its JSON protocol (docs/ws-protocol.md), sessions, offers.

The public surface for the rest of the daemon:

- `Gateway` (`ctx.ws`): `serve(websocket)`, `begin_drain()`, `close_all()`,
  `session_count()`, `kick_user()`;
- `OfferService` (`ctx.ws.offers`): `offer()`, `end_offer()`, `push_call_state()`,
  `answered_by()`, with the call layer's `OfferListener` deciding who wins;
- `CloseCode` / `ErrorCode`: what clients are told.
"""

from bridge.ws.exceptions import CloseCode, ErrorCode
from bridge.ws.offers import OfferListener, OfferResult, OfferService, OfferStatus
from bridge.ws.schemas import AnsweredBy, CallStateName
from bridge.ws.services import Gateway

__all__ = [
    "AnsweredBy",
    "CallStateName",
    "CloseCode",
    "ErrorCode",
    "Gateway",
    "OfferListener",
    "OfferResult",
    "OfferService",
    "OfferStatus",
]
