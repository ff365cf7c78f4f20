"""Real peers for SIP tests: a `bridge run` process on loopback, and SIPp runs against it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from sim.local import MetricsScrape, free_port

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
REPO = Path(__file__).resolve().parents[2]
SIPP = shutil.which("sipp")
REALM = "bridge.test"

needs_sipp = pytest.mark.skipif(
    SIPP is None and os.environ.get("CI") != "true",
    reason="SIPp (Debian sip-tester) is not installed; `make test` installs it",
)


@dataclass
class RunningBridge(MetricsScrape):
    process: subprocess.Popen[str]
    http: int
    sip: int
    config: Path
    log_path: Path
    tokens: dict[str, str] = field(default_factory=dict, repr=False)

    def log_events(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_events(self, name: str, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The log events called `name`, once at least `count` are there (the bridge may log
        an event just after the message a peer reacted to)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.log_events() if e.get("event") == name]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def token(self, user: str = "admin") -> str:
        """An API token from `bridge token` (the CLI, once per user: a poll loop must not
        start a Python process per request)."""
        if user not in self.tokens:
            self.tokens[user] = subprocess.run(
                [sys.executable, "-m", "bridge.cli", "token", user, "-c", str(self.config)],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout.strip()
        return self.tokens[user]

    def api(self, path: str, user: str = "admin") -> Any:
        status, body = self.request("GET", path, user=user)
        assert status == 200, (status, body)
        return body

    def request(
        self, method: str, path: str, body: Any = None, user: str = "admin"
    ) -> tuple[int, Any]:
        """An API request; its status and JSON body (None when empty), errors included."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {self.token(user)}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                status, data = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, data = exc.code, exc.read()
        return status, json.loads(data) if data else None


@contextmanager
def bridge_process(
    tmp_path: Path, directory: dict[str, Any], *, wait_ready: bool = True, **env: str
) -> Iterator[RunningBridge]:
    """`bridge run` on free loopback ports with this directory; stopped (SIGTERM) after."""
    http, sip = free_port(), free_port()
    (tmp_path / "directory.yaml").write_text(yaml.safe_dump(directory, sort_keys=False))
    config = tmp_path / "bridge.toml"
    config.write_text(
        '[http]\nhost = "127.0.0.1"\n'
        f'port = {http}\n[sip]\nhost = "127.0.0.1"\nport = {sip}\nrealm = "{REALM}"\n'
        '[auth]\njwt_secret = "test-secret-0123456789abcdef"\n[log]\nformat = "json"\n'
        "[daemon]\ndrain_timeout_seconds = 1\n"
    )
    log_path = tmp_path / "bridge.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **{f"BRIDGE_{k.upper()}": v for k, v in env.items()}},
        )
    running = RunningBridge(process, http, sip, config, log_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise AssertionError(f"bridge exited: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError:
                if not wait_ready:
                    break  # it answers: good enough for a test that checks readiness itself
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"bridge not ready: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        yield running
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@dataclass
class SippResult:
    returncode: int
    messages: str
    errors: str
    output: str

    def count(self, start_line: str) -> int:
        return sum(1 for line in self.messages.splitlines() if line.startswith(start_line))


def trunk_bridge(tmp_path: Path, directory: dict[str, Any], **env: str) -> Any:
    """`bridge_process` as most call tests want it: the trunk allowed from loopback, no
    OPTIONS keepalives (SIPp phones do not answer them)."""
    return bridge_process(
        tmp_path,
        directory,
        sip__trunk_allow='["127.0.0.0/8"]',
        sip__keepalive_seconds="0",
        **env,
    )


def run_sipp(
    tmp_path: Path,
    scenario: str,
    bridge_port: int,
    *args: str,
    transport: str = "u1",
    timeout: float = 30,
    port: int | None = None,
) -> SippResult:
    """Run one SIPp scenario against the bridge (loopback, bounded calls and time). With no
    `port` given, a free one is picked, and picked again if another process took it before
    SIPp could bind it."""
    for _ in range(3):
        result = _run_sipp_once(
            tmp_path, scenario, bridge_port, *args, transport=transport, timeout=timeout,
            port=port or free_port(),
        )  # fmt: skip
        if port is not None or not lost_its_port(result):
            break
    return result


def lost_its_port(result: SippResult) -> bool:
    """SIPp could not bind its SIP port: a free port probed earlier was taken meanwhile."""
    return result.returncode != 0 and "Unable to bind main socket" in result.errors


def _run_sipp_once(
    tmp_path: Path,
    scenario: str,
    bridge_port: int,
    *args: str,
    transport: str,
    timeout: float,
    port: int,
) -> SippResult:
    assert SIPP is not None, "sipp missing"
    name = f"{scenario}-{time.monotonic_ns()}"
    messages, errors = tmp_path / f"{name}.msg", tmp_path / f"{name}.err"
    command = [
        SIPP,
        "-sf",
        str(SCENARIOS / scenario),
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-t",
        transport,
        "-m",
        "1",
        "-nostdin",
        "-timeout",
        f"{int(timeout)}s",
        "-trace_msg",
        "-message_file",
        str(messages),
        "-trace_err",
        "-error_file",
        str(errors),
        *args,
        f"127.0.0.1:{bridge_port}",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout + 15, cwd=tmp_path
    )
    read = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
    return SippResult(
        result.returncode, read(messages), read(errors), result.stdout + result.stderr
    )


def run_bench_quick(script: str, out: Path, timeout: float = 180) -> str:
    """`bench/<script> --quick --json=<out>` from the repository root: its output, once it
    exited 0 (the figures are in `out`)."""
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--quick", f"--json={out}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout
