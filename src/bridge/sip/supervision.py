"""Supervision on SIP calls (the `Supervision` port, `bridge.calls.ports`).

Listen, whisper, barge and recording on a SIP call need the bridge to anchor and mix the call's
audio: that is the media engine (DESIGN.md, "Media"), not built yet. Until it is, every SIP
call answers them with `NotSupportedOnCall` and this reason (the control API's `409`, the
WebSocket's `conflict`), never a silent success.
"""

from __future__ import annotations

from bridge.calls.registry import CallRegistry
from bridge.calls.supervision import Unsupervised

NEEDS_MEDIA = (
    "listen, whisper, barge and recording on SIP calls need the media engine, "
    "which is not built yet"
)


class SipSupervision(Unsupervised):
    """Every SIP call, as the registry lists it, refusing every control with `NEEDS_MEDIA`."""

    path = "sip"

    def __init__(self, registry: CallRegistry) -> None:
        super().__init__(registry, NEEDS_MEDIA)
