"""Graceful shutdown: every session hears `server.draining`, then the close is 1001."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sim.apps import AppClient, Closed
from sim.local import free_port

from bridge.calls.registry import LiveCall
from bridge.tokens import TokenService
from tests.ws.conftest import WAIT, Live


async def test_drain_tells_every_session_then_closes_with_1001(live: Live) -> None:
    clients = [await live.connect(u) for u in ("alice", "alice", "olivia")]
    assert live.gateway.begin_drain() == 3
    for client in clients:
        await client.expect("server.draining", timeout=WAIT)
        assert client.is_open  # still connected while calls finish
    assert await live.gateway.close_all() == 3
    for client in clients:
        assert await client.wait_closed(WAIT) == (1001, "server draining")
        # server.draining came before the close, and carries the hint to reconnect.
        assert client.received("server.draining") == [
            {"v": 1, "type": "server.draining", "reconnect": True}
        ]
    assert live.gateway.session_count() == 0


async def test_a_connection_during_the_drain_is_told_and_closed(live: Live) -> None:
    live.gateway.begin_drain()
    late = live.client("alice")
    with pytest.raises(Closed):
        await late.connect()
    assert await late.wait_closed(WAIT) == (1001, "server draining")
    assert late.received("server.draining")
    assert live.gateway.session_count() == 0


async def test_sigterm_on_the_daemon_drains_app_sessions(demo_dir: Path) -> None:
    """`bridge run` for real: SIGTERM sends server.draining at once, and the 1001 close once
    the live calls are over (here: the drain timeout, with a call left up)."""
    port = free_port()
    env = {
        **os.environ,
        "BRIDGE_HTTP__PORT": str(port),
        "BRIDGE_SIP__ENABLED": "false",
        "BRIDGE_LOG__FORMAT": "json",
        "BRIDGE_DAEMON__DRAIN_TIMEOUT_SECONDS": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "run", "--config", str(demo_dir / "bridge.toml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "daemon not ready"
            await asyncio.sleep(0.1)
        secret = "demo-only-secret-change-me-0123456789"  # config/bridge.toml
        client = AppClient(f"ws://127.0.0.1:{port}/ws", TokenService(secret).issue("alice"))
        await client.connect()
        process.send_signal(signal.SIGTERM)
        draining = await client.expect("server.draining", timeout=WAIT)
        assert draining["reconnect"] is True
        assert await client.wait_closed(WAIT) == (1001, "server draining")
        returncode = await asyncio.get_running_loop().run_in_executor(
            None, lambda: process.wait(timeout=20)
        )
        assert returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


async def test_sessions_stay_while_calls_drain(live: Live) -> None:
    """The daemon's order: begin_drain, wait for live calls, close_all."""
    alice = await live.connect("alice")
    live.ctx.calls.add(
        LiveCall("call-1", "sip", "+15550100", "+1555", datetime(2026, 1, 1, tzinfo=UTC))
    )
    live.gateway.begin_drain()
    await alice.expect("server.draining", timeout=WAIT)
    live.ctx.calls.stop_accepting()
    assert not await live.ctx.calls.wait_empty(0.2)
    assert alice.is_open  # a ringing offer could still be answered
    live.ctx.calls.remove("call-1")
    assert await live.ctx.calls.wait_empty(WAIT)
    await live.gateway.close_all()
    assert await alice.wait_closed(WAIT) == (1001, "server draining")
