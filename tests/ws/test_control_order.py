"""Call controls over `/ws` run beside the session's reading: a control waiting for the
carrier does not hold up the session's other frames, and a session's controls reach the
carrier in the order it sent them (Barge, then Leave)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.ws.conftest import Live


class SlowControls:
    """A control service whose carrier answers when the test says so, logging the order."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.done: list[str] = []

    def find(self, call_id: str) -> None:
        return None

    async def monitor(self, user: Any, call_id: str, mode: str, via: Any, **kw: Any) -> dict:
        await self.release.wait()
        self.done.append(f"monitor {mode}")
        return {"mode": mode}

    async def stop_monitor(self, user: Any, call_id: str, **kw: Any) -> None:
        self.done.append("stop")


async def test_a_slow_control_does_not_hold_up_the_session_and_keeps_its_order(
    live: Live,
) -> None:
    controls = SlowControls()
    assert live.ctx.ws is not None
    live.ctx.ws.use_control(controls)
    sam = await live.connect("olivia")
    barge = await sam.send("call.monitor", call_id="CA1", mode="barge")
    leave = await sam.send("call.monitor", call_id="CA1", mode="stop")
    # Meanwhile the session is still served.
    presence = await sam.request("presence.set", availability="busy")
    assert presence["type"] in ("ack", "presence")
    assert controls.done == []  # the carrier has not answered the barge yet
    controls.release.set()
    acks = [await sam.expect("ack", id=barge), await sam.expect("ack", id=leave)]
    assert acks[0]["result"] == {"mode": "barge"}
    assert controls.done == ["monitor barge", "stop"]  # in the order sent
