"""How a simulated callee behaves when the carrier rings it.

A policy is keyed by the dialled `To` value (`client:alice`, `sip:alice@...`, `+15551230001`) and
applies to every leg the carrier places towards it: calls created through the REST API,
conference participants, and `<Dial>` legs of an inbound call.

All durations are in *simulated* seconds, the unit of Twilio's own `Timeout` parameter; the
carrier multiplies them by its `time_scale` (0.01 by default, so a 20 s ring timeout lasts
0.2 s of wall time), which keeps tests fast without changing the numbers the bridge sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Outcome = Literal["answer", "no-answer", "busy", "failed"]


@dataclass(frozen=True)
class TargetPolicy:
    """What the callee does: `outcome` after `after` seconds of ringing.

    - `answer`: picks up after `after` seconds (no-answer instead if the ring timeout is
      shorter); hangs up by itself after `hangup_after` seconds of talk when set.
    - `no-answer`: rings until the caller's timeout (a test may still `answer()` it by hand).
    - `busy` / `failed`: refused after `after` seconds (SIP 486 / 5xx on the real network).
    `digits` are pressed when the callee meets a `<Gather>` (human-answer confirmation).
    """

    outcome: Outcome = "answer"
    after: float = 1.0
    ring_after: float = 0.2
    hangup_after: float | None = None
    digits: str | None = None

    def resolve(self, timeout: float) -> tuple[str, float]:
        """The ring outcome and when it happens, given the caller's ring timeout."""
        if self.outcome == "no-answer" or self.after >= timeout:
            return "no-answer", timeout
        return self.outcome, self.after


def answer(
    after: float = 1.0, *, hangup_after: float | None = None, digits: str | None = None
) -> TargetPolicy:
    return TargetPolicy("answer", after, hangup_after=hangup_after, digits=digits)


def no_answer() -> TargetPolicy:
    return TargetPolicy("no-answer", after=float("inf"))


def busy(after: float = 0.5) -> TargetPolicy:
    return TargetPolicy("busy", after)


def fail(after: float = 0.1) -> TargetPolicy:
    return TargetPolicy("failed", after, ring_after=after)
