"""The daemon for real: a `bridge run` process on loopback, signals, drain, live Test Routing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sim.local import free_port

from bridge.calls.registry import LiveCall, NotAcceptingCalls
from bridge.cli import main
from bridge.config import load_all
from bridge.daemon import Daemon

STARTUP_SECONDS = 20


def get(url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}"} if token else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_ready(base: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"daemon exited early: {process.stderr.read() if process.stderr else ''}"
            )
        try:
            if get(f"{base}/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("daemon not ready in time")


class Running:
    def __init__(self, process: subprocess.Popen[str], base: str, config: Path) -> None:
        self.process = process
        self.base = base
        self.config = config

    def token(self, user: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "bridge.cli", "token", user, "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout.strip()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, str]:
        self.process.send_signal(sig)
        _, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, err


@pytest.fixture
def daemon(demo_dir: Path) -> Iterator[Running]:
    port = free_port()
    env = {
        **os.environ,
        "BRIDGE_HTTP__PORT": str(port),
        "BRIDGE_SIP__PORT": str(free_port()),
        "BRIDGE_LOG__FORMAT": "json",
        "BRIDGE_DAEMON__DRAIN_TIMEOUT_SECONDS": "2",
    }
    config = demo_dir / "bridge.toml"
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = Running(process, f"http://127.0.0.1:{port}", config)
    try:
        wait_ready(running.base, process)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def test_sigterm_exits_zero_and_logs_json(daemon: Running) -> None:
    status, body = get(f"{daemon.base}/healthz")
    assert status == 200 and body["status"] == "ok"
    code, err = daemon.stop(signal.SIGTERM)
    assert code == 0
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    names = [e.get("event") for e in events]
    assert "started" in names and "shutdown_requested" in names and "stopped" in names
    assert all("timestamp" in e and "level" in e for e in events)


def test_sighup_reloads_the_directory_and_keeps_it_on_a_bad_file(
    daemon: Running, demo_dir: Path
) -> None:
    token = daemon.token("olivia")
    directory = demo_dir / "directory.yaml"
    document = yaml.safe_load(directory.read_text())
    document["users"][2]["name"] = "Alice Reloaded"
    directory.write_text(yaml.safe_dump(document, sort_keys=False))
    daemon.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if get(f"{daemon.base}/api/v1/users/alice", token)[1]["name"] == "Alice Reloaded":
            break
        time.sleep(0.1)
    status, info = get(f"{daemon.base}/api/v1/directory", token)
    assert status == 200 and info["version"] == 2
    assert get(f"{daemon.base}/api/v1/users/alice", token)[1]["name"] == "Alice Reloaded"

    directory.write_text("users: [ {id: broken\n")
    daemon.process.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert daemon.process.poll() is None  # still running
    status, info = get(f"{daemon.base}/api/v1/directory", token)
    assert info["version"] == 2
    assert get(f"{daemon.base}/api/v1/users/alice", token)[1]["name"] == "Alice Reloaded"
    code, err = daemon.stop()
    assert code == 0
    assert "directory_reload_refused" in err


def test_route_live_asks_the_daemon(daemon: Running, capsys: pytest.CaptureFixture[str]) -> None:
    token = daemon.token("olivia")
    request = urllib.request.Request(
        f"{daemon.base}/api/v1/users/alice/availability",
        method="PUT",
        data=json.dumps({"status": "busy"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
    args = [
        "route",
        "-c",
        str(daemon.config),
        "--line",
        "+15550100",
        "--at",
        "2026-11-23T10:00:00-05:00",
        "--live",
        "--url",
        daemon.base,
        "--json",
    ]
    assert main(args) == 0
    plan = json.loads(capsys.readouterr().out)
    members = {m["user_id"]: m for m in plan["layers"][0]["members"]}
    assert members["alice"]["reason"] == "unavailable"  # live presence, not assumed
    # Offline, the same moment assumes everyone available.
    assert main([a for a in args if a not in ("--live", "--url", daemon.base)]) == 0
    offline = json.loads(capsys.readouterr().out)
    assert {m["user_id"]: m for m in offline["layers"][0]["members"]}["alice"]["can_receive_calls"]
    # Live, without --as: asks as an admin; as a user who may not run Test Routing: refused.
    assert main([*args[:-1], "--as", "alice"]) == 1
    assert "403" in capsys.readouterr().err


def test_port_in_use_fails_start(demo_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "BRIDGE_HTTP__PORT": str(port),
            "BRIDGE_SIP__PORT": str(free_port()),
            "BRIDGE_LOG__FORMAT": "json",
        }
        result = subprocess.run(
            [sys.executable, "-m", "bridge.cli", "run", "--config", str(demo_dir / "bridge.toml")],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert "http_listener_stopped" in result.stderr


async def _start_in_process(demo_dir: Path, drain: float) -> tuple[Daemon, asyncio.Task[int], str]:
    os.environ["BRIDGE_DAEMON__DRAIN_TIMEOUT_SECONDS"] = str(drain)
    port = free_port()
    os.environ["BRIDGE_HTTP__PORT"] = str(port)
    os.environ["BRIDGE_SIP__PORT"] = str(free_port())
    try:
        settings, directory = load_all(demo_dir / "bridge.toml")
    finally:
        del os.environ["BRIDGE_DAEMON__DRAIN_TIMEOUT_SECONDS"], os.environ["BRIDGE_HTTP__PORT"]
        del os.environ["BRIDGE_SIP__PORT"]
    daemon = Daemon(settings, directory)
    task = asyncio.create_task(daemon.run())
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        if {"http", "sip"} <= daemon.ctx.listeners_up:
            break
        await asyncio.sleep(0.02)
    return daemon, task, base


def _live_call(call_id: str) -> LiveCall:
    return LiveCall(
        call_id=call_id,
        path="sip",
        line="+15550100",
        caller="+15551230000",
        started_at=datetime.now(UTC),
    )


async def test_drain_waits_for_live_calls_then_exits_zero(demo_dir: Path) -> None:
    daemon, task, base = await _start_in_process(demo_dir, drain=30)
    daemon.ctx.calls.add(_live_call("c1"))
    daemon.request_stop()
    await asyncio.sleep(0.3)
    assert not task.done()  # waiting for the live call
    status, body = await asyncio.to_thread(get, f"{base}/readyz")
    assert status == 503 and body["draining"] is True
    with pytest.raises(NotAcceptingCalls):
        daemon.ctx.calls.add(_live_call("c2"))
    daemon.ctx.calls.remove("c1")
    assert await asyncio.wait_for(task, 10) == 0


async def test_drain_timeout_bounds_the_wait(demo_dir: Path) -> None:
    daemon, task, _ = await _start_in_process(demo_dir, drain=0.5)
    daemon.ctx.calls.add(_live_call("stuck"))
    started = time.monotonic()
    daemon.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert time.monotonic() - started >= 0.5


def test_sip_port_in_use_fails_start(demo_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "BRIDGE_HTTP__PORT": str(free_port()),
            "BRIDGE_SIP__PORT": str(port),
            "BRIDGE_LOG__FORMAT": "json",
        }
        result = subprocess.run(
            [sys.executable, "-m", "bridge.cli", "run", "--config", str(demo_dir / "bridge.toml")],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert "sip_listener_failed" in result.stderr


def test_readyz_lists_both_listeners(daemon: Running) -> None:
    status, body = get(f"{daemon.base}/readyz")
    assert status == 200 and body["listeners"] == ["http", "sip"]


def test_metrics_count_the_event_loops_tasks(daemon: Running) -> None:
    # bridge_event_loop_tasks is read at scrape time (bench/soak.py watches it for leaks).
    with urllib.request.urlopen(f"{daemon.base}/metrics", timeout=5) as response:
        text = response.read().decode()
    tasks = [line for line in text.splitlines() if line.startswith("bridge_event_loop_tasks ")]
    assert len(tasks) == 1
    assert float(tasks[0].split()[1]) >= 1  # at least the HTTP server's own task
