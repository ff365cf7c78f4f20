"""The SIP service's background loops (registrations' expiry and state file, the overload
state, keepalives, the rtpengine check) outlive a failure of one round: it is logged and the
next round runs. Before, one exception ended such a loop for good, silently (bindings no
longer expired, the overload state froze, the state file was no longer written)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from sim.phones.inproc import InprocBridge
from structlog.testing import capture_logs

DIRECTORY: dict[str, Any] = {"timezone": "UTC", "users": [], "ring_groups": [], "lines": []}


def failing_once(tries: list[int], result: Any = None) -> Callable[..., Any]:
    def body(*_: Any) -> Any:
        tries.append(len(tries))
        if len(tries) == 1:
            raise RuntimeError("a bug")
        return result

    return body


async def _runs_again(loop: Any, tries: list[int], event: str) -> None:
    with capture_logs() as logs:
        task = asyncio.create_task(loop)
        try:
            for _ in range(1000):
                if len(tries) >= 3:
                    break
                await asyncio.sleep(0.002)
        finally:
            task.cancel()
    assert len(tries) >= 3
    assert [e["event"] for e in logs].count(event) == 1


@pytest.mark.parametrize("kind", ["state", "expiry", "overload"])
async def test_a_round_that_fails_is_logged_and_the_loop_goes_on(kind: str) -> None:
    bridge = InprocBridge(DIRECTORY)
    await bridge.start()
    sip = bridge.ctx.sip
    assert sip is not None
    tries: list[int] = []
    try:
        if kind == "state":

            async def save() -> None:
                failing_once(tries)()

            sip._save_state = save  # type: ignore[method-assign]
            await _runs_again(sip._state_loop(every=0.001), tries, "sip_state_save_failed")
        elif kind == "expiry":
            sip.registrar.expire = failing_once(tries, [])  # type: ignore[method-assign]
            await _runs_again(sip._expiry_loop(every=0.001), tries, "sip_expiry_failed")
        else:
            tick = sip._overload_tick
            step = failing_once(tries)

            def counted(*args: Any) -> int:
                step()
                return tick(*args)

            sip._overload_tick = counted  # type: ignore[method-assign]
            await _runs_again(sip._overload_loop(every=0.001), tries, "sip_overload_tick_failed")
    finally:
        await bridge.stop()
