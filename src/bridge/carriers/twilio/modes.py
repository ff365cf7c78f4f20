"""Bridging modes: how the carrier connects the caller to the legs the call core dials.

The service (`TwilioCalls`) is the same for every mode: signatures, routing, the call record,
presence, idempotent status callbacks, events and metrics. A mode only decides what the call
core's commands become at the carrier:

- `dial` (`DialMode`): the carrier pulls TwiML. Each layer (each turn, for the one-at-a-time
  strategies) is a `<Dial>` whose `action` comes back to us when it ends; the carrier runs the
  ring race itself.
- `conference` (`ConferenceMode`): the caller waits in a conference named after the call, and
  `DialLeg`/`CancelLeg` become Participants API requests through the REST client; the bridge
  runs the ring race and the layer timers. Supervisors can then listen, whisper and barge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from twilio.twiml.voice_response import VoiceResponse

from bridge.calls.events import Output
from bridge.carriers.twilio.conference import ConferenceMode
from bridge.carriers.twilio.dial import DialMode
from bridge.carriers.twilio.schemas import ConfirmRequest
from bridge.carriers.twilio.state import CarrierCall, LegMeta

if TYPE_CHECKING:
    from bridge.carriers.twilio.service import TwilioCalls


class BridgingMode(Protocol):
    name: str

    def respond(self, call: CarrierCall, outputs: Sequence[Output]) -> VoiceResponse:
        """Carry out `outputs` (already run through `TwilioCalls.run`) while answering a
        webhook of the caller's own call: the TwiML that answers it."""
        ...

    def carry_out(self, call: CarrierCall, outputs: Sequence[Output]) -> None:
        """Carry out `outputs` that arose outside a TwiML answer (a leg's status callback,
        the caller hanging up): in dial mode the carrier's `<Dial>` has already done it."""
        ...

    def tick(self, call: CarrierCall) -> None:
        """Bring the call's ring clock (`call.now`) up to date before an input to the core."""
        ...

    def leg_final(self, call: CarrierCall, meta: LegMeta, status: str) -> list[Output]:
        """The carrier reports a leg's call over (`completed`, `busy`, `no-answer`, ...): the
        core's outputs for it (already applied to the core, not yet run)."""
        ...

    def confirm(self, request: ConfirmRequest) -> str:
        """`/twilio/confirm`: the press-1 check of a forwarded leg (TwiML)."""
        ...

    async def aclose(self) -> None:
        """Stop timers and background requests (shutdown)."""
        ...


# `[twilio] mode` -> the mode's factory. A mode missing here answers 503 (not configured).
MODES: dict[str, Callable[[TwilioCalls], BridgingMode]] = {
    "dial": DialMode,
    "conference": ConferenceMode,
}
