"""A bridge in conference mode served by uvicorn on 127.0.0.1 (a free port), with the fake
carrier in front of it: the carrier posts signed webhooks to the bridge over real HTTP, and
the bridge's REST client talks to the carrier's fake API (`[twilio] api_base`).

Both run in the test's own event loop. The carrier's clock is scaled (0.01 s per simulated
second), so a 20-second layer rings out in 0.2 s; the bridge's own ring timers are real-time
backstops that these tests never reach (the carrier reports the legs' no-answer first)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from sim.carrier import FakeCarrier

from bridge.api.app import create_app
from bridge.carriers.twilio.service import TwilioCalls
from bridge.carriers.twilio.state import CarrierCall
from bridge.config import load_all
from bridge.context import AppContext, build_context
from bridge.presence.model import Channel
from tests.carrier.conftest import DIRECTORY
from tests.carrier.helpers import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL
from tests.conftest import FakeClock

CALLER = "+14155550001"

# The carrier test directory plus the people who supervise and record calls.
CONFERENCE_DIRECTORY: dict[str, Any] = copy.deepcopy(DIRECTORY)
CONFERENCE_DIRECTORY["users"] += [
    {
        "id": "sam",
        "name": "Sam Supervisor",
        "role": "supervisor",
        "answer_by": "will_not_answer",
        "phone_number": "+15550007001",
        "permissions": ["barge_whisper"],
    },
    {"id": "sue", "name": "Sue Supervisor", "role": "supervisor", "answer_by": "will_not_answer"},
    {
        "id": "abe",
        "name": "Abe Agent",
        "role": "agent",
        "answer_by": "will_not_answer",
        "permissions": ["barge_whisper", "recording_control"],
    },
    {"id": "rex", "name": "Rex Rep", "role": "rep", "answer_by": "will_not_answer"},
]
# A one-second layer, for the bridge's own ring timer (the carrier's Timeout is 5 s at least).
QUICK = "+15550110"
CONFERENCE_DIRECTORY["ring_groups"].append(
    {
        "id": "quick",
        "name": "Quick",
        "layers": [{"members": ["ana"], "timeout_seconds": 1}],
        "fallback": {"action": "voicemail", "prompt": "Quick voicemail."},
    }
)
CONFERENCE_DIRECTORY["lines"].append(
    {"number": QUICK, "name": "Quick", "route_to": {"ring_group": "quick"}}
)
# ana (the agent who answers most calls here) may control her own calls' recording.
for _user in CONFERENCE_DIRECTORY["users"]:
    if _user["id"] == "ana":
        _user["permissions"] = ["recording_control"]


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll until `predicate()` is truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.005)


@dataclass
class World:
    carrier: FakeCarrier
    ctx: AppContext
    url: str  # where the bridge listens (the carrier reaches it here)
    http: httpx.AsyncClient  # an API client on that address

    @property
    def service(self) -> TwilioCalls:
        assert self.ctx.carrier is not None
        return self.ctx.carrier

    def call(self, call_sid: str) -> CarrierCall:
        found = self.service.find(call_sid)
        assert found is not None, call_sid
        return found

    async def ended(self, call_sid: str) -> CarrierCall:
        """The bridge's record of the call, once the call is over for the bridge."""

        def over() -> CarrierCall | None:
            found = self.service.find(call_sid)
            return found if found is not None and found.machine.ended else None

        return await eventually(over)

    def auth(self, user_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ctx.tokens.issue(user_id)}"}

    def errors(self, operation: str, status: str) -> float:
        value = self.ctx.metrics.registry.get_sample_value(
            "bridge_carrier_api_errors_total", {"operation": operation, "status": status}
        )
        return value or 0.0

    def requests(self, operation: str) -> list[dict[str, list[str]]]:
        """The form parameters of every REST request of that operation the carrier served."""
        out: list[dict[str, list[str]]] = []
        for record in self.carrier.requests:
            if record.operation_id == operation:
                params: dict[str, list[str]] = {}
                for key, value in record.params:
                    params.setdefault(key, []).append(value)
                out.append(params)
        return out


@contextlib.asynccontextmanager
async def running_world(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    """The `world` fixture (tests/carrier and tests/control): a started fake carrier and a
    bridge in conference mode serving on a free loopback port."""
    carrier = FakeCarrier(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL)
    await carrier.start()
    env = {
        "BRIDGE_TWILIO__MODE": "conference",
        "BRIDGE_TWILIO__AUTH_TOKEN": AUTH_TOKEN,
        "BRIDGE_TWILIO__ACCOUNT_SID": ACCOUNT_SID,
        "BRIDGE_TWILIO__API_BASE": carrier.url,
        "BRIDGE_TWILIO__API_BACKOFF_SECONDS": "0.01",
        "BRIDGE_HTTP__PUBLIC_URL": PUBLIC_URL,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (demo_dir / "directory.yaml").write_text(yaml.safe_dump(CONFERENCE_DIRECTORY, sort_keys=False))
    settings, directory = load_all(demo_dir / "bridge.toml")
    ctx = build_context(settings, directory, clock=FakeClock())
    ctx.listeners_up.add("http")
    for user_id in ("ana", "eve"):
        ctx.presence.endpoint_up(user_id, Channel.APPS)
    ctx.presence.endpoint_up("ben", Channel.IP_PHONE)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(ctx), lifespan="off", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    await eventually(lambda: server.started or task.done())
    assert not task.done(), "uvicorn did not start"
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    carrier.set_bridge(url, PUBLIC_URL)
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        try:
            yield World(carrier, ctx, url, http)
            # Any request outside Twilio's published description fails the test.
            carrier.assert_no_violations()
        finally:
            assert ctx.carrier is not None
            await ctx.carrier.aclose()
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            await carrier.stop()
