"""A real bridge app served by uvicorn on 127.0.0.1 (a free port), and app clients for it.

The server runs in the test's own event loop, on a socket bound before uvicorn starts (no
port race), with the same WebSocket implementation and frame limit as the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from sim.apps import AppClient

from bridge.api.app import create_app
from bridge.config import load_all
from bridge.context import AppContext, build_context
from bridge.ws.services import Gateway
from tests.conftest import FakeClock

# Fast heartbeat and refresh so tests are short; generous timeouts elsewhere bound them.
FAST_WS = {
    "auth_timeout_seconds": 0.5,
    "grace_seconds": 0.3,
    "ping_interval_seconds": 0.3,
    "ping_timeout_seconds": 1.0,  # a loaded CI machine may stall a client this long
    "refresh_seconds": 0.05,
    "max_frame_bytes": 4096,
    "rate_per_second": 20,
    "rate_burst": 10,
    "rate_flood_frames": 20,
    "max_sessions_per_user": 4,
    "test_offers": True,
}
WAIT = 10.0  # the bound of every wait in this suite


@dataclass
class Live:
    ctx: AppContext
    port: int
    clock: FakeClock
    config_dir: Path
    clients: list[AppClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gateway(self) -> Gateway:
        assert self.ctx.ws is not None
        return self.ctx.ws

    def token(self, user_id: str, **kw: Any) -> str:
        return self.ctx.tokens.issue(user_id, **kw)

    def client(
        self, user_id: str | None = None, *, token: str | None = None, **kw: Any
    ) -> AppClient:
        assert user_id is not None or token is not None
        client = AppClient(self.url, token or self.token(user_id or ""), **kw)
        self.clients.append(client)
        return client

    async def connect(self, user_id: str, **kw: Any) -> AppClient:
        client = self.client(user_id, **kw)
        await client.connect()
        return client

    async def http(self, method: str, path: str, user_id: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token(user_id)}"}
        async with httpx.AsyncClient(base_url=self.base, timeout=WAIT) as http:
            return await http.request(method, path, headers=headers, **kw)


async def eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait (bounded) until `check()` holds; for state the server changes on its own."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


LiveFactory = Callable[..., Awaitable[Live]]


@pytest.fixture
async def make_live(demo_dir: Path) -> AsyncIterator[LiveFactory]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[None], Live]] = []

    async def factory(directory: dict[str, Any] | None = None, **ws: Any) -> Live:
        if directory is not None:
            (demo_dir / "directory.yaml").write_text(yaml.safe_dump(directory, sort_keys=False))
        section = {**FAST_WS, **ws}
        lines = "".join(
            f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in section.items()
        )
        toml = demo_dir / "bridge.toml"
        toml.write_text(toml.read_text().split("\n[ws]\n")[0] + "\n[ws]\n" + lines)
        settings, loaded = load_all(toml)
        clock = FakeClock()
        ctx = build_context(settings, loaded, clock=clock)
        ctx.listeners_up.add("http")
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            create_app(ctx),
            ws="websockets-sansio",
            ws_max_size=settings.ws.max_frame_bytes,
            ws_ping_interval=None,
            ws_per_message_deflate=False,
            lifespan="off",
            log_config=None,
            access_log=False,
        )
        server = uvicorn.Server(config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        live = Live(ctx=ctx, port=sock.getsockname()[1], clock=clock, config_dir=demo_dir)
        servers.append((server, task, live))
        await eventually(lambda: server.started or task.done())
        assert not task.done(), "uvicorn did not start"
        return live

    yield factory
    for server, task, live in servers:
        for client in live.clients:
            with contextlib.suppress(Exception):
                await client.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(live.gateway.close_all(timeout=1), 5)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


@pytest.fixture
async def live(make_live: LiveFactory) -> Live:
    return await make_live()
